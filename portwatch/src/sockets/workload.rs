//! Which container or systemd unit a process belongs to, from its cgroup path
//! (`/proc/<pid>/cgroup`). A PID alone means little on a host running containers; the
//! container id or unit name says whose code leaks.
use std::fmt;

/// What a process runs as, as far as its cgroup path tells.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// A container. `runtime` is `docker`, `containerd`, `cri-o`, `podman`, `kubepods`
    /// (a Kubernetes pod whose runtime the path does not name) or `container` (a
    /// container id under a parent portwatch does not know). `id` is the full id.
    Container { runtime: &'static str, id: String },
    /// A systemd unit: a service (`nginx.service`) or a scope (`session-3.scope`).
    Unit(String),
}

/// Displayed ids are shortened to this many characters, as `docker ps` does.
const SHORT_ID: usize = 12;

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Container { runtime, id } => {
                let short = id.get(..SHORT_ID).unwrap_or(id);
                f.pad(&format!("{runtime}:{short}"))
            }
            Workload::Unit(unit) => f.pad(unit),
        }
    }
}

/// The workload named by one cgroup path, e.g. `/system.slice/docker-<id>.scope` or
/// `/system.slice/nginx.service`. A container anywhere in the path wins over a unit (a
/// container runs inside its runtime's units and may run systemd itself); among several,
/// the deepest wins.
pub fn workload_from_cgroup(path: &str) -> Option<Workload> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let container = (0..components.len())
        .rev()
        .find_map(|depth| container_at(&components, depth));
    container.or_else(|| {
        components
            .iter()
            .rev()
            .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
            .map(|unit| Workload::Unit((*unit).to_owned()))
    })
}

/// The workload of a process from all the paths of its `/proc/<pid>/cgroup`: the cgroup
/// v2 path first, then the v1 hierarchies in order. A container found in any of them wins
/// over a unit, because on hybrid hosts the systemd hierarchy can show the runtime's unit
/// while a v1 controller hierarchy shows the container.
pub fn workload_from_cgroups<'a>(paths: impl IntoIterator<Item = &'a str>) -> Option<Workload> {
    let mut unit = None;
    for path in paths {
        match workload_from_cgroup(path) {
            Some(container @ Workload::Container { .. }) => return Some(container),
            Some(found @ Workload::Unit(_)) => {
                unit.get_or_insert(found);
            }
            None => {}
        }
    }
    unit
}

/// A container named by the path component at `depth`, using the components above it to
/// tell a bare id's runtime.
fn container_at(components: &[&str], depth: usize) -> Option<Workload> {
    let component = components[depth];
    // systemd cgroup driver: the runtime names a scope after the container.
    const SCOPES: [(&str, &str); 4] = [
        ("docker-", "docker"),
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("libpod-", "podman"),
    ];
    if let Some(stem) = component.strip_suffix(".scope") {
        return SCOPES.iter().find_map(|(prefix, runtime)| {
            let id = stem.strip_prefix(prefix)?;
            // `crio-conmon-<id>.scope` and `libpod-conmon-<id>.scope` hold the container
            // monitor, not the container: is_container_id rejects them.
            is_container_id(id).then(|| container(runtime, id))
        });
    }
    // cgroupfs driver: the bare id under a directory named after the runtime.
    if !is_container_id(component) {
        return None;
    }
    let ancestors = &components[..depth];
    let runtime = if ancestors.last() == Some(&"docker") {
        "docker"
    } else if ancestors.contains(&"libpod_parent") {
        "podman"
    } else if ancestors.iter().any(|c| c.starts_with("kubepods")) {
        "kubepods"
    } else {
        "container"
    };
    Some(container(runtime, component))
}

fn container(runtime: &'static str, id: &str) -> Workload {
    Workload::Container {
        runtime,
        id: id.to_owned(),
    }
}

/// Docker, containerd, CRI-O and podman all name containers by 64 lowercase hex digits.
fn is_container_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c1b7d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeef";

    fn container_of(runtime: &'static str) -> Option<Workload> {
        Some(container(runtime, ID))
    }

    fn unit(name: &str) -> Option<Workload> {
        Some(Workload::Unit(name.to_owned()))
    }

    #[test]
    fn docker_with_systemd_driver() {
        assert_eq!(
            workload_from_cgroup(&format!("/system.slice/docker-{ID}.scope")),
            container_of("docker")
        );
    }

    #[test]
    fn docker_with_cgroupfs_driver() {
        assert_eq!(
            workload_from_cgroup(&format!("/docker/{ID}")),
            container_of("docker")
        );
    }

    #[test]
    fn kubernetes_containerd_with_systemd_driver() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/\
             kubepods-burstable-pod0f3c1a2b_4d5e_6f70_8192_a3b4c5d6e7f8.slice/\
             cri-containerd-{ID}.scope"
        );
        assert_eq!(workload_from_cgroup(&path), container_of("containerd"));
    }

    #[test]
    fn kubernetes_with_cgroupfs_driver() {
        let path = format!("/kubepods/burstable/pod0f3c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8/{ID}");
        assert_eq!(workload_from_cgroup(&path), container_of("kubepods"));
        let guaranteed = format!("/kubepods/pod0f3c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8/{ID}");
        assert_eq!(workload_from_cgroup(&guaranteed), container_of("kubepods"));
    }

    #[test]
    fn cri_o() {
        let path = format!("/kubepods.slice/kubepods-pod1.slice/crio-{ID}.scope");
        assert_eq!(workload_from_cgroup(&path), container_of("cri-o"));
    }

    #[test]
    fn podman() {
        let path =
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope");
        assert_eq!(workload_from_cgroup(&path), container_of("podman"));
        let cgroupfs = format!("/libpod_parent/{ID}");
        assert_eq!(workload_from_cgroup(&cgroupfs), container_of("podman"));
    }

    #[test]
    fn container_monitors_are_not_containers() {
        let path = format!("/machine.slice/libpod-conmon-{ID}.scope");
        assert_eq!(
            workload_from_cgroup(&path),
            unit(&format!("libpod-conmon-{ID}.scope"))
        );
    }

    #[test]
    fn systemd_service() {
        assert_eq!(
            workload_from_cgroup("/system.slice/nginx.service"),
            unit("nginx.service")
        );
    }

    #[test]
    fn login_session_scope() {
        assert_eq!(
            workload_from_cgroup("/user.slice/user-1000.slice/session-3.scope"),
            unit("session-3.scope")
        );
    }

    #[test]
    fn deepest_unit_wins() {
        assert_eq!(
            workload_from_cgroup(
                "/user.slice/user-1000.slice/user@1000.service/app.slice/app.service"
            ),
            unit("app.service")
        );
    }

    #[test]
    fn container_wins_over_units_inside_it() {
        let path = format!("/system.slice/docker-{ID}.scope/system.slice/nginx.service");
        assert_eq!(workload_from_cgroup(&path), container_of("docker"));
    }

    #[test]
    fn nothing_recognisable() {
        for path in [
            "/",
            "",
            "/user.slice",
            "/init",
            "/docker/not-an-id",
            "/docker/ABCDEF",
        ] {
            assert_eq!(workload_from_cgroup(path), None, "{path:?}");
        }
        // 63 hex digits are not an id.
        assert_eq!(workload_from_cgroup(&format!("/docker/{}", &ID[1..])), None);
    }

    #[test]
    fn unknown_parent_of_a_container_id() {
        assert_eq!(
            workload_from_cgroup(&format!("/lxc.payload/{ID}")),
            container_of("container")
        );
    }

    #[test]
    fn v1_hierarchies_prefer_a_container() {
        let docker = format!("/docker/{ID}");
        let paths = ["/system.slice/containerd.service", docker.as_str(), "/"];
        assert_eq!(workload_from_cgroups(paths), container_of("docker"));
        assert_eq!(
            workload_from_cgroups([
                "/",
                "/system.slice/sshd.service",
                "/system.slice/cron.service"
            ]),
            unit("sshd.service")
        );
        assert_eq!(workload_from_cgroups(["/"]), None);
    }

    #[test]
    fn display_shortens_container_ids() {
        assert_eq!(container("docker", ID).to_string(), "docker:3f2a9c1b7d4e");
        assert_eq!(
            Workload::Unit("nginx.service".into()).to_string(),
            "nginx.service"
        );
        assert_eq!(
            format!("{:<20}|", container("docker", ID)),
            "docker:3f2a9c1b7d4e |"
        );
    }

    #[test]
    fn json_keeps_the_full_id() {
        assert_eq!(
            serde_json::to_value(container("docker", ID)).unwrap(),
            serde_json::json!({"container": {"runtime": "docker", "id": ID}})
        );
        assert_eq!(
            serde_json::to_value(Workload::Unit("nginx.service".into())).unwrap(),
            serde_json::json!({"unit": "nginx.service"})
        );
    }
}
