//! The ephemeral-port budget: how many local ports connect() can pick from, and how
//! long each one stays taken.
use std::{collections::BTreeMap, fs, io, path::Path};

use serde::Serialize;

/// The sysctls that decide how many connections a host can open toward one destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct PortSettings {
    /// net.ipv4.ip_local_port_range (inclusive); also used for IPv6.
    pub range: (u16, u16),
    /// net.ipv4.ip_local_reserved_ports, as inclusive ranges.
    pub reserved: Vec<(u16, u16)>,
    /// net.ipv4.tcp_tw_reuse: 0 off, 1 on, 2 loopback only (the default since 5.x).
    pub tw_reuse: u8,
}

impl Default for PortSettings {
    /// Linux's defaults.
    fn default() -> Self {
        PortSettings {
            range: (32768, 60999),
            reserved: Vec::new(),
            tw_reuse: 2,
        }
    }
}

impl PortSettings {
    /// Reads the settings of the network namespace portwatch runs in.
    pub fn read() -> io::Result<Self> {
        Self::read_from(Path::new("/proc/sys/net/ipv4"))
    }

    pub fn read_from(dir: &Path) -> io::Result<Self> {
        let range = parse_range(&fs::read_to_string(dir.join("ip_local_port_range"))?)
            .ok_or_else(|| io::Error::other("cannot parse ip_local_port_range"))?;
        let reserved = fs::read_to_string(dir.join("ip_local_reserved_ports"))
            .map(|text| parse_reserved(&text))
            .unwrap_or_default();
        let tw_reuse = fs::read_to_string(dir.join("tcp_tw_reuse"))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(2);
        Ok(PortSettings {
            range,
            reserved,
            tw_reuse,
        })
    }

    /// Ports connect() can use toward one destination from one local address: the
    /// range minus the reserved ports inside it.
    pub fn capacity(&self) -> u32 {
        let (low, high) = self.range;
        let total = u32::from(high.saturating_sub(low)) + 1;
        let reserved: u32 = self
            .reserved
            .iter()
            .map(|&(a, b)| {
                let (a, b) = (a.max(low), b.min(high));
                if a <= b { u32::from(b - a) + 1 } else { 0 }
            })
            .sum();
        total.saturating_sub(reserved)
    }

    /// Whether connect() may take over a TIME_WAIT port toward `daddr` (tcp_tw_reuse:
    /// 1 for every destination, 2 for loopback only; needs TCP timestamps, on by
    /// default, and a TIME_WAIT socket at least 1 s old).
    pub fn reuses_time_wait(&self, daddr: std::net::IpAddr) -> bool {
        match self.tw_reuse {
            1 => true,
            2 => daddr.is_loopback(),
            _ => false,
        }
    }
}

/// The port settings of every network namespace: each has its own range, reserved
/// ports and tcp_tw_reuse, and its own ports, so a destination's budget is its
/// namespace's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortBudget {
    /// portwatch's own namespace's; also for a namespace whose settings were not read
    /// (it was gone before portwatch looked) and for netns 0 (unknown).
    pub host: PortSettings,
    /// By namespace inode.
    pub by_netns: BTreeMap<u32, PortSettings>,
    /// portwatch's own namespace, whose settings `host` are (0: unknown, as in a
    /// recording).
    pub host_netns: u32,
}

impl PortBudget {
    /// Only portwatch's own namespace's settings.
    pub fn host_only(host: PortSettings) -> Self {
        PortBudget {
            host,
            by_netns: BTreeMap::new(),
            host_netns: 0,
        }
    }

    /// The settings destinations in namespace `netns` are counted against.
    pub fn of(&self, netns: u32) -> &PortSettings {
        self.by_netns.get(&netns).unwrap_or(&self.host)
    }

    /// Reads the host's settings and those of every network namespace portwatch can
    /// enter (each from a thread inside it: /proc/sys/net shows the reader's
    /// namespace). A namespace that cannot be read keeps the host's settings.
    pub fn read() -> io::Result<Self> {
        let mut budget = PortBudget::host_only(PortSettings::read()?);
        budget.host_netns = crate::sockets::netns::own().unwrap_or(0);
        budget.read_namespaces();
        Ok(budget)
    }

    /// Reads (again) the settings of every namespace there is now, keeping those
    /// already read of namespaces that are gone.
    pub fn read_namespaces(&mut self) {
        self.read_where(|_| true);
    }

    /// Reads the settings of those of `wanted` not read yet (namespaces that appeared
    /// since), if they can be found and entered; the others are left as they are.
    /// Returns how many were read.
    pub fn read_missing(&mut self, wanted: impl IntoIterator<Item = u32>) -> usize {
        let missing: std::collections::BTreeSet<u32> = wanted
            .into_iter()
            .filter(|netns| *netns != 0 && !self.by_netns.contains_key(netns))
            .collect();
        if missing.is_empty() {
            return 0;
        }
        self.read_where(|inode| missing.contains(&inode))
    }

    fn read_where(&mut self, wanted: impl Fn(u32) -> bool) -> usize {
        let mut read = 0;
        for ns in crate::sockets::netns::all() {
            if !wanted(ns.inode) {
                continue;
            }
            if let Ok(Ok(settings)) = crate::sockets::netns::run_in(&ns, PortSettings::read) {
                self.by_netns.insert(ns.inode, settings);
                read += 1;
            }
        }
        read
    }
}

fn parse_range(text: &str) -> Option<(u16, u16)> {
    let mut numbers = text.split_whitespace().map(str::parse::<u16>);
    let low = numbers.next()?.ok()?;
    let high = numbers.next()?.ok()?;
    (low <= high).then_some((low, high))
}

/// "1000-1002,8080" -> [(1000, 1002), (8080, 8080)]
fn parse_reserved(text: &str) -> Vec<(u16, u16)> {
    text.trim()
        .split(',')
        .filter(|part| !part.is_empty())
        .filter_map(|part| match part.split_once('-') {
            Some((a, b)) => Some((a.trim().parse().ok()?, b.trim().parse().ok()?)),
            None => {
                let port = part.trim().parse().ok()?;
                Some((port, port))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_range_has_28232_ports() {
        let settings = PortSettings::default();
        assert_eq!(settings.capacity(), 28232);
        // 28,232 ports held 60 s each: about 470 new connections a second.
        assert_eq!(settings.capacity() / 60, 470);
    }

    #[test]
    fn reserved_ports_inside_the_range_are_subtracted() {
        let settings = PortSettings {
            range: (40000, 40009),
            reserved: parse_reserved("39990-40001,40005,50000\n"),
            tw_reuse: 0,
        };
        assert_eq!(
            settings.reserved,
            [(39990, 40001), (40005, 40005), (50000, 50000)]
        );
        assert_eq!(settings.capacity(), 10 - 2 - 1);
    }

    #[test]
    fn parses_the_sysctl_files() {
        assert_eq!(parse_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_range("5 4"), None);
        assert_eq!(parse_reserved("\n"), []);
        let dir = std::env::temp_dir().join(format!("portwatch-sysctl-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("ip_local_port_range"), "40000 40099\n").unwrap();
        fs::write(dir.join("ip_local_reserved_ports"), "40050\n").unwrap();
        fs::write(dir.join("tcp_tw_reuse"), "1\n").unwrap();
        let settings = PortSettings::read_from(&dir).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(settings.capacity(), 99);
        assert_eq!(settings.tw_reuse, 1);
    }

    #[test]
    fn each_namespace_has_its_own_budget() {
        let narrow = PortSettings {
            range: (40000, 40003),
            ..PortSettings::default()
        };
        let mut budget = PortBudget::host_only(PortSettings::default());
        budget.by_netns.insert(4026532000, narrow);
        assert_eq!(budget.of(4026532000).capacity(), 4);
        assert_eq!(budget.of(4026531840).capacity(), 28232);
        assert_eq!(budget.of(0).capacity(), 28232);
    }

    #[test]
    fn reads_only_namespaces_not_read_yet() {
        let own = crate::sockets::netns::own().unwrap();
        let mut budget = PortBudget::host_only(PortSettings::default());
        // 0 (unknown) is never read; portwatch's own namespace is, once.
        assert_eq!(budget.read_missing([0, own]), 1);
        assert_eq!(budget.of(own), &PortSettings::read().unwrap());
        assert_eq!(budget.read_missing([own]), 0);
        assert_eq!(budget.read_missing([]), 0);
    }

    #[test]
    fn tw_reuse_modes() {
        let loopback: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let remote: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let mode = |tw_reuse| PortSettings {
            tw_reuse,
            ..PortSettings::default()
        };
        assert!(!mode(0).reuses_time_wait(loopback));
        assert!(mode(1).reuses_time_wait(remote));
        assert!(mode(2).reuses_time_wait(loopback));
        assert!(!mode(2).reuses_time_wait(remote));
    }
}
