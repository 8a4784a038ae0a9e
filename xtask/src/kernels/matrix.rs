//! The kernels portwatch is tested on: Debian's cloud kernels, which is what the
//! production hosts run.
//!
//! Packages are pinned to exact ABI names so every run tests the same kernels and a
//! cached kernel stays valid. Debian drops old ABIs from its indexes now and then; the
//! download then fails with the names currently available, and the pin is bumped here.
use anyhow::{Result, bail};

/// One apt source, used through a temporary sources list (the machine's own lists are
/// never touched, and need not carry these suites).
#[derive(Clone, Copy, Debug)]
pub struct Suite {
    /// Names its directory under target/kernels/apt/.
    pub id: &'static str,
    /// A sources.list line.
    pub source: &'static str,
}

#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// Short name, for `--kernel` and the summary.
    pub name: &'static str,
    /// Where production hosts get it.
    pub distribution: &'static str,
    pub package: &'static str,
    pub suite: Suite,
}

const BULLSEYE: Suite = Suite {
    id: "bullseye",
    source: "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://deb.debian.org/debian bullseye main",
};
const BOOKWORM: Suite = Suite {
    id: "bookworm",
    source: "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://deb.debian.org/debian bookworm main",
};
/// Debian 12 ships Linux 6.12 (`+deb12`) through its security suite; bookworm-backports
/// carries older builds of the same series.
const BOOKWORM_SECURITY: Suite = Suite {
    id: "bookworm-security",
    source: "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://deb.debian.org/debian-security bookworm-security main",
};

pub const MATRIX: [Kernel; 3] = [
    Kernel {
        name: "5.10",
        distribution: "Debian 11 bullseye",
        package: "linux-image-5.10.0-32-cloud-amd64",
        suite: BULLSEYE,
    },
    Kernel {
        name: "6.1",
        distribution: "Debian 12 bookworm",
        package: "linux-image-6.1.0-50-cloud-amd64",
        suite: BOOKWORM,
    },
    Kernel {
        name: "6.12",
        distribution: "Debian 12 bookworm (linux-6.12)",
        package: "linux-image-6.12.117+deb12-cloud-amd64",
        suite: BOOKWORM_SECURITY,
    },
];

/// The kernels `wanted` names (by short name or package), or all when it is empty.
pub fn select(wanted: &[String]) -> Result<Vec<Kernel>> {
    if wanted.is_empty() {
        return Ok(MATRIX.to_vec());
    }
    let mut selected = Vec::new();
    for name in wanted {
        let Some(kernel) = MATRIX
            .iter()
            .find(|k| k.name == name.as_str() || k.package == name.as_str())
        else {
            let known: Vec<&str> = MATRIX.iter().map(|k| k.name).collect();
            bail!(
                "no kernel {name:?} in the matrix; known: {}",
                known.join(", ")
            );
        };
        selected.push(*kernel);
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_use_the_debian_keyring() {
        for kernel in MATRIX {
            assert!(
                kernel
                    .suite
                    .source
                    .contains("signed-by=/usr/share/keyrings/debian-archive-keyring.gpg"),
                "{}",
                kernel.name
            );
            assert!(kernel.package.starts_with("linux-image-"));
        }
    }

    #[test]
    fn selection_by_name_or_package() {
        assert_eq!(select(&[]).unwrap().len(), MATRIX.len());
        let picked = select(&["6.1".into(), "linux-image-5.10.0-32-cloud-amd64".into()]).unwrap();
        let names: Vec<&str> = picked.iter().map(|k| k.name).collect();
        assert_eq!(names, ["6.1", "5.10"]);
        let err = select(&["4.19".into()]).unwrap_err().to_string();
        assert!(err.contains("known: 5.10, 6.1, 6.12"), "{err}");
    }
}
