//! Which container or systemd unit a process belongs to, from its cgroup path
//! (`/proc/<pid>/cgroup`). A PID alone means little on a host running containers; the
//! container id or unit name says whose code leaks.
use std::fmt;

/// What a process runs as, as far as its cgroup path tells.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Workload {
    /// A container. `runtime` is `docker`, `containerd`, `cri-o`, `podman`, `kubepods`
    /// (a Kubernetes pod whose runtime the path does not name) or `container` (a
    /// container id under a parent portwatch does not know). `id` is the full id.
    Container { runtime: &'static str, id: String },
    /// A Kubernetes pod (a kubepods cgroup): its UID, the container in it when the path
    /// names one, and its name where it could be read locally (a pod's UTS hostname is
    /// its name).
    Pod(Pod),
    /// A systemd unit: a service (`nginx.service`) or a scope (`session-3.scope`).
    Unit(String),
}

/// A Kubernetes pod, from its kubepods cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pod {
    /// The pod's UID, with dashes (`kubectl get pod -o jsonpath={.metadata.uid}`).
    pub uid: String,
    /// Its name: the hostname of its UTS namespace, when that differs from the host's.
    pub name: Option<String>,
    /// The container in the pod: runtime (as in [`Workload::Container`]) and full id.
    /// None for a process in the pod's own cgroup.
    pub container: Option<(&'static str, String)>,
}

/// `{"container":{"runtime":…,"id":…}}`, `{"unit":…}`, or for a pod
/// `{"pod":{"uid":…,"name":…},"container":{…}}`: a pod's container keeps the
/// `container` key it had before pods were told apart, so readers of it still work.
impl serde::Serialize for Workload {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        #[derive(serde::Serialize)]
        struct Container<'a> {
            runtime: &'a str,
            id: &'a str,
        }
        #[derive(serde::Serialize)]
        struct PodFields<'a> {
            uid: &'a str,
            name: Option<&'a str>,
        }
        let mut map = serializer.serialize_map(None)?;
        match self {
            Workload::Container { runtime, id } => {
                map.serialize_entry("container", &Container { runtime, id })?;
            }
            Workload::Pod(pod) => {
                map.serialize_entry(
                    "pod",
                    &PodFields {
                        uid: &pod.uid,
                        name: pod.name.as_deref(),
                    },
                )?;
                if let Some((runtime, id)) = &pod.container {
                    map.serialize_entry("container", &Container { runtime, id })?;
                }
            }
            Workload::Unit(unit) => map.serialize_entry("unit", unit)?,
        }
        map.end()
    }
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
            Workload::Pod(pod) => {
                let name = pod.name.as_deref().unwrap_or(&pod.uid);
                match &pod.container {
                    Some((_, id)) => {
                        let short = id.get(..SHORT_ID).unwrap_or(id);
                        f.pad(&format!("pod:{name}/{short}"))
                    }
                    None => f.pad(&format!("pod:{name}")),
                }
            }
            Workload::Unit(unit) => f.pad(unit),
        }
    }
}

/// The workload named by one cgroup path, e.g. `/system.slice/docker-<id>.scope` or
/// `/system.slice/nginx.service`. A Kubernetes pod (a `kubepods` path) wins, with the
/// container inside it if the path goes that deep; then a container anywhere in the
/// path wins over a unit (a container runs inside its runtime's units and may run
/// systemd itself); among several, the deepest wins.
pub fn workload_from_cgroup(path: &str) -> Option<Workload> {
    let components: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let container = (0..components.len())
        .rev()
        .find_map(|depth| container_at(&components, depth));
    if let Some((depth, uid)) = (0..components.len())
        .rev()
        .find_map(|depth| Some((depth, pod_uid_at(&components, depth)?)))
    {
        // Only a container below the pod's own cgroup is one of its containers.
        let container = (depth + 1..components.len())
            .rev()
            .find_map(|d| container_at(&components, d))
            .and_then(|found| match found {
                Workload::Container { runtime, id } => Some((runtime, id)),
                _ => None,
            });
        return Some(Workload::Pod(Pod {
            uid,
            name: None,
            container,
        }));
    }
    container.or_else(|| {
        components
            .iter()
            .rev()
            .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
            .map(|unit| Workload::Unit((*unit).to_owned()))
    })
}

/// The workload of a process from all the paths of its `/proc/<pid>/cgroup`: the cgroup
/// v2 path first, then the v1 hierarchies in order. A pod found in any of them wins,
/// then a container, over a unit, because on hybrid hosts the systemd hierarchy can
/// show the runtime's unit while a v1 controller hierarchy shows the container.
pub fn workload_from_cgroups<'a>(paths: impl IntoIterator<Item = &'a str>) -> Option<Workload> {
    let mut container = None;
    let mut unit = None;
    for path in paths {
        match workload_from_cgroup(path) {
            Some(pod @ Workload::Pod(_)) => return Some(pod),
            Some(found @ Workload::Container { .. }) => {
                container.get_or_insert(found);
            }
            Some(found @ Workload::Unit(_)) => {
                unit.get_or_insert(found);
            }
            None => {}
        }
    }
    container.or(unit)
}

/// The pod UID named by the path component at `depth`, with dashes: the systemd driver's
/// `kubepods[-QOS]-pod<uid with _>.slice`, or the cgroupfs driver's `pod<uid>` below a
/// `kubepods` directory (`/kubepods/besteffort/pod<uid>`, `/kubepods/pod<uid>`).
fn pod_uid_at(components: &[&str], depth: usize) -> Option<String> {
    let component = components[depth];
    let stem = component.strip_suffix(".slice").unwrap_or(component);
    let at = stem.rfind("pod")?;
    let (prefix, uid) = (&stem[..at], &stem[at + 3..]);
    let named_by_kubepods = if prefix.is_empty() {
        components[..depth].iter().any(|c| c.contains("kubepods"))
    } else {
        // kind and some installs put the kubelet's own slice in front: kubelet-kubepods-…
        prefix.ends_with('-') && prefix.contains("kubepods")
    };
    (named_by_kubepods && is_pod_uid(uid)).then(|| uid.replace('_', "-"))
}

/// 8-4-4-4-12 lowercase hex digits, separated by `-` (cgroupfs) or `_` (systemd, where
/// a dash would mean a parent slice).
fn is_pod_uid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-' || b == b'_',
            _ => matches!(b, b'0'..=b'9' | b'a'..=b'f'),
        })
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
    // cgroupfs driver with CRI-O or docker under Kubernetes: `crio-<id>`, `docker-<id>`.
    if let Some(found) = SCOPES.iter().find_map(|(prefix, runtime)| {
        let id = component.strip_prefix(prefix)?;
        is_container_id(id).then(|| container(runtime, id))
    }) {
        return Some(found);
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

    const UID: &str = "0f3c1a2b-4d5e-6f70-8192-a3b4c5d6e7f8";

    fn pod_of(runtime: Option<&'static str>) -> Option<Workload> {
        Some(Workload::Pod(Pod {
            uid: UID.to_owned(),
            name: None,
            container: runtime.map(|runtime| (runtime, ID.to_owned())),
        }))
    }

    #[test]
    fn kubernetes_containerd_with_systemd_driver() {
        let path = format!(
            "/kubepods.slice/kubepods-burstable.slice/\
             kubepods-burstable-pod0f3c1a2b_4d5e_6f70_8192_a3b4c5d6e7f8.slice/\
             cri-containerd-{ID}.scope"
        );
        assert_eq!(workload_from_cgroup(&path), pod_of(Some("containerd")));
        // Guaranteed pods have no QoS slice.
        let guaranteed = format!(
            "/kubepods.slice/kubepods-pod0f3c1a2b_4d5e_6f70_8192_a3b4c5d6e7f8.slice/\
             cri-containerd-{ID}.scope"
        );
        assert_eq!(
            workload_from_cgroup(&guaranteed),
            pod_of(Some("containerd"))
        );
    }

    #[test]
    fn kubernetes_with_cgroupfs_driver() {
        let path = format!("/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(workload_from_cgroup(&path), pod_of(Some("kubepods")));
        let guaranteed = format!("/kubepods/pod{UID}/{ID}");
        assert_eq!(workload_from_cgroup(&guaranteed), pod_of(Some("kubepods")));
        let besteffort_crio = format!("/kubepods/besteffort/pod{UID}/crio-{ID}");
        assert_eq!(
            workload_from_cgroup(&besteffort_crio),
            pod_of(Some("cri-o"))
        );
    }

    #[test]
    fn kubernetes_pod_without_a_container() {
        // A process in the pod's own cgroup (what the privileged test makes).
        let slice = "/kubepods.slice/kubepods-besteffort.slice/\
                     kubepods-besteffort-pod0f3c1a2b_4d5e_6f70_8192_a3b4c5d6e7f8.slice";
        assert_eq!(workload_from_cgroup(slice), pod_of(None));
        assert_eq!(
            workload_from_cgroup(&format!("/kubepods/besteffort/pod{UID}")),
            pod_of(None)
        );
    }

    #[test]
    fn kubernetes_cri_o_and_docker_with_systemd_driver() {
        let crio = format!(
            "/kubepods.slice/kubepods-besteffort.slice/\
             kubepods-besteffort-pod0f3c1a2b_4d5e_6f70_8192_a3b4c5d6e7f8.slice/crio-{ID}.scope"
        );
        assert_eq!(workload_from_cgroup(&crio), pod_of(Some("cri-o")));
        let docker = format!(
            "/kubepods.slice/kubepods-burstable.slice/\
             kubepods-burstable-pod0f3c1a2b_4d5e_6f70_8192_a3b4c5d6e7f8.slice/docker-{ID}.scope"
        );
        assert_eq!(workload_from_cgroup(&docker), pod_of(Some("docker")));
    }

    #[test]
    fn kubernetes_under_the_kubelet_slice_and_in_v1_hierarchies() {
        // kind: the kubelet's cgroup root in front.
        let kind = format!(
            "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/\
             kubelet-kubepods-besteffort-pod0f3c1a2b_4d5e_6f70_8192_a3b4c5d6e7f8.slice/\
             cri-containerd-{ID}.scope"
        );
        assert_eq!(workload_from_cgroup(&kind), pod_of(Some("containerd")));
        // cgroup v1: the pod in a controller hierarchy, the runtime's unit in systemd's.
        let memory = format!("/kubepods/burstable/pod{UID}/{ID}");
        assert_eq!(
            workload_from_cgroups(["/system.slice/containerd.service", memory.as_str()]),
            pod_of(Some("kubepods"))
        );
        // The pod wins over a container id in another hierarchy.
        let docker = format!("/docker/{ID}");
        assert_eq!(
            workload_from_cgroups([docker.as_str(), memory.as_str()]),
            pod_of(Some("kubepods"))
        );
    }

    #[test]
    fn not_pods() {
        for path in [
            // No kubepods above a pod-like directory.
            format!("/system.slice/pod{UID}"),
            // Not a UID: too short, upper case, wrong separators.
            "/kubepods/burstable/pod0f3c1a2b".to_owned(),
            "/kubepods/burstable/pod0F3C1A2B-4D5E-6F70-8192-A3B4C5D6E7F8".to_owned(),
            "/kubepods/burstable/pod0f3c1a2b44d5e46f70481924a3b4c5d6e7f8".to_owned(),
            // A slice whose prefix is not kubepods.
            "/system.slice/system-pod0f3c1a2b_4d5e_6f70_8192_a3b4c5d6e7f8.slice".to_owned(),
        ] {
            assert!(
                !matches!(workload_from_cgroup(&path), Some(Workload::Pod(_))),
                "{path}"
            );
        }
    }

    #[test]
    fn pods_display_and_json() {
        let mut pod = Pod {
            uid: UID.to_owned(),
            name: None,
            container: Some(("containerd", ID.to_owned())),
        };
        assert_eq!(
            Workload::Pod(pod.clone()).to_string(),
            format!("pod:{UID}/3f2a9c1b7d4e")
        );
        pod.name = Some("web-7d9f".into());
        assert_eq!(
            Workload::Pod(pod.clone()).to_string(),
            "pod:web-7d9f/3f2a9c1b7d4e"
        );
        assert_eq!(
            serde_json::to_value(Workload::Pod(pod.clone())).unwrap(),
            serde_json::json!({
                "pod": {"uid": UID, "name": "web-7d9f"},
                "container": {"runtime": "containerd", "id": ID},
            })
        );
        pod.container = None;
        pod.name = None;
        assert_eq!(Workload::Pod(pod.clone()).to_string(), format!("pod:{UID}"));
        assert_eq!(
            serde_json::to_value(Workload::Pod(pod)).unwrap(),
            serde_json::json!({"pod": {"uid": UID, "name": null}})
        );
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
