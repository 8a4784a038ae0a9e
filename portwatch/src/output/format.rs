//! Small formatting helpers shared by the outputs.
use std::{fmt, net::IpAddr};

use super::json_line::ShownOwner;

/// `addr:port`, with IPv6 addresses in brackets as in URLs: `[::1]:80`.
pub struct Endpoint(pub IpAddr, pub u16);

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Render into a stack buffer first so width and alignment apply to the whole.
        let mut buffer = [0u8; 64];
        let mut cursor = std::io::Cursor::new(&mut buffer[..]);
        let written = match self.0 {
            IpAddr::V4(ip) => {
                std::io::Write::write_fmt(&mut cursor, format_args!("{ip}:{}", self.1))
            }
            IpAddr::V6(ip) => {
                std::io::Write::write_fmt(&mut cursor, format_args!("[{ip}]:{}", self.1))
            }
        };
        written.map_err(|_| fmt::Error)?;
        let len = cursor.position() as usize;
        f.pad(std::str::from_utf8(&buffer[..len]).map_err(|_| fmt::Error)?)
    }
}

/// A duration in the unit that reads best: `850us`, `12.3ms`, `4.20s`, `3m12s`, `2h05m`.
pub struct HumanDuration(pub u64);

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0;
        let text = if ns < 1_000_000 {
            format!("{}us", ns / 1_000)
        } else if ns < 1_000_000_000 {
            format!("{:.1}ms", ns as f64 / 1e6)
        } else if ns < 60_000_000_000 {
            format!("{:.2}s", ns as f64 / 1e9)
        } else {
            let secs = ns / 1_000_000_000;
            if secs < 3600 {
                format!("{}m{:02}s", secs / 60, secs % 60)
            } else {
                format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
            }
        };
        f.pad(&text)
    }
}

/// The owner's PID, or `-` when unknown.
pub struct OwnerPid<'a>(pub Option<&'a ShownOwner>);

impl std::fmt::Display for OwnerPid<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(shown) => shown.owner.process.pid.fmt(f),
            None => f.pad("-"),
        }
    }
}

/// The owner's comm; `?` when unknown, a dagger suffix when it has exited.
pub struct OwnerComm<'a>(pub Option<&'a ShownOwner>);

impl std::fmt::Display for OwnerComm<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(shown) if shown.alive => shown.owner.comm.fmt(f),
            Some(shown) => f.pad(&format!("{}\u{2020}", shown.owner.comm)),
            None => f.pad("?"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint("127.0.0.1".parse().unwrap(), 80).to_string(),
            "127.0.0.1:80"
        );
        assert_eq!(
            Endpoint("::1".parse().unwrap(), 8080).to_string(),
            "[::1]:8080"
        );
        assert_eq!(
            Endpoint("2001:db8::7".parse().unwrap(), 443).to_string(),
            "[2001:db8::7]:443"
        );
        assert_eq!(
            format!("{:<14}|", Endpoint("10.0.0.1".parse().unwrap(), 1)),
            "10.0.0.1:1    |"
        );
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe".parse().unwrap();
        assert_eq!(Endpoint(longest, 65535).to_string().len(), 47);
    }

    #[test]
    fn human_durations() {
        assert_eq!(HumanDuration(850_000).to_string(), "850us");
        assert_eq!(HumanDuration(12_340_000).to_string(), "12.3ms");
        assert_eq!(HumanDuration(4_200_000_000).to_string(), "4.20s");
        assert_eq!(HumanDuration(192_000_000_000).to_string(), "3m12s");
        assert_eq!(HumanDuration(7_500_000_000_000).to_string(), "2h05m");
    }
}
