//! `portwatch record` files: the raw kernel records of a window, with what the report
//! needs besides them, so `report --replay` gives the same report offline.
//!
//! Layout (version 1): the 8-byte magic `PWREC\0\0\x01`, then frames of
//! `[tag: u8][length: u32 little-endian][payload]`:
//! - tag 1, header (JSON, first): start time, port settings, startup snapshot seeds, and
//!   the records' layout version (`portwatch_common::RECORD_LAYOUT_VERSION`);
//! - tag 2, one ring-buffer record, byte for byte as the kernel wrote it (decoded by
//!   `event::decode`, so a replay runs the same code as a live run);
//! - tag 3, trailer (JSON, last): end time, loss counters, and what /proc said at the end
//!   (holders of sockets, each process's workload), so a replay never asks the replaying
//!   machine's /proc about the recording machine's processes.
//!
//! Records are native-endian like the kernel's; a file is for the architecture that
//! wrote it (checked by the header's `endian`).
use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, BufWriter, Read, Write},
    net::IpAddr,
    path::Path,
};

use anyhow::{Context as _, Result, bail};
use bytes::{Buf as _, Bytes};
use portwatch_common::RECORD_LAYOUT_VERSION;
use serde::{Deserialize, Serialize};

use crate::{
    detect::ports::{PortBudget, PortSettings},
    event::Comm,
    sockets::{table::Seed, tuple::Tuple},
    tcp_state::TcpState,
};

const MAGIC: &[u8; 8] = b"PWREC\0\0\x01";
const TAG_HEADER: u8 = 1;
const TAG_RECORD: u8 = 2;
const TAG_TRAILER: u8 = 3;
/// No frame is larger; a longer length means a corrupt file.
const MAX_FRAME: u32 = 64 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub start_ns: u64,
    pub settings: PortSettings,
    pub seeds: Vec<RecordedSeed>,
    pub endian: String,
    /// The records' layout version; absent in recordings made before it was written
    /// (their records are decoded as this version's, and any that do not fit are counted
    /// as undecodable).
    #[serde(default)]
    pub layout: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trailer {
    pub end_ns: u64,
    pub dropped: u64,
    pub untracked: u64,
    /// Runs of portwatch's programs the kernel skipped, where it counts them (6.7+);
    /// absent in files from before it was recorded.
    #[serde(default)]
    pub skipped: Option<u64>,
    /// Who held each connected socket at the end (from /proc), for sockets whose owner
    /// the kernel could not learn.
    #[serde(default)]
    pub holders: Vec<RecordedHolder>,
    /// The container or unit of each process the records name that was alive at the
    /// end, as the report shows it.
    #[serde(default)]
    pub workloads: BTreeMap<u32, String>,
    /// Each network namespace's port settings, by inode, read at the start and again
    /// at the end (a namespace gone by then keeps what the start read): the report
    /// counts a destination against its own namespace's. Absent in files from before
    /// namespaces.
    #[serde(default)]
    pub netns_settings: BTreeMap<u32, PortSettings>,
}

impl Recording {
    /// The port budget the recorded host had: its own settings and each namespace's.
    pub fn budget(&self) -> PortBudget {
        PortBudget {
            host: self.header.settings.clone(),
            by_netns: self.trailer.netns_settings.clone(),
            host_netns: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedHolder {
    /// Network namespace inode; absent (0) in files from before namespaces.
    #[serde(default)]
    pub netns: u32,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub pid: u32,
    pub comm: String,
}

impl Trailer {
    pub fn holders(&self) -> std::collections::HashMap<Tuple, (u32, Comm)> {
        self.holders
            .iter()
            .map(|h| {
                let tuple = Tuple {
                    netns: h.netns,
                    saddr: h.saddr,
                    sport: h.sport,
                    daddr: h.daddr,
                    dport: h.dport,
                };
                (tuple, (h.pid, Comm::new(&h.comm)))
            })
            .collect()
    }
}

/// A [`Seed`] in a form JSON can carry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedSeed {
    /// Network namespace inode; absent (0) in files from before namespaces.
    #[serde(default)]
    pub netns: u32,
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    pub state: String,
    pub holders: Vec<(u32, String)>,
    pub in_state_at_least_ns: Option<u64>,
    pub taken_ns: u64,
}

impl From<&Seed> for RecordedSeed {
    fn from(seed: &Seed) -> Self {
        RecordedSeed {
            netns: seed.tuple.netns,
            saddr: seed.tuple.saddr,
            sport: seed.tuple.sport,
            daddr: seed.tuple.daddr,
            dport: seed.tuple.dport,
            state: seed.state.name().to_owned(),
            holders: seed
                .holders
                .iter()
                .map(|(pid, comm)| (*pid, comm.to_string()))
                .collect(),
            in_state_at_least_ns: seed.in_state_at_least_ns,
            taken_ns: seed.taken_ns,
        }
    }
}

impl TryFrom<&RecordedSeed> for Seed {
    type Error = anyhow::Error;

    fn try_from(recorded: &RecordedSeed) -> Result<Self> {
        Ok(Seed {
            tuple: Tuple {
                netns: recorded.netns,
                saddr: recorded.saddr,
                sport: recorded.sport,
                daddr: recorded.daddr,
                dport: recorded.dport,
            },
            state: recorded.state.parse::<TcpState>()?,
            holders: recorded
                .holders
                .iter()
                .map(|(pid, comm)| (*pid, Comm::new(comm)))
                .collect(),
            in_state_at_least_ns: recorded.in_state_at_least_ns,
            taken_ns: recorded.taken_ns,
        })
    }
}

pub fn native_endian() -> String {
    if cfg!(target_endian = "little") {
        "little"
    } else {
        "big"
    }
    .to_owned()
}

pub struct Writer {
    out: BufWriter<File>,
}

impl Writer {
    pub fn create(path: &Path, header: &Header) -> Result<Self> {
        let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut writer = Writer {
            out: BufWriter::with_capacity(1 << 16, file),
        };
        writer.out.write_all(MAGIC)?;
        writer.frame(TAG_HEADER, &serde_json::to_vec(header)?)?;
        Ok(writer)
    }

    pub fn record(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.frame(TAG_RECORD, bytes)
    }

    pub fn finish(mut self, trailer: &Trailer) -> Result<()> {
        self.frame(TAG_TRAILER, &serde_json::to_vec(trailer)?)?;
        self.out.flush()?;
        Ok(())
    }

    fn frame(&mut self, tag: u8, payload: &[u8]) -> io::Result<()> {
        let len = u32::try_from(payload.len()).map_err(io::Error::other)?;
        self.out.write_all(&[tag])?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(payload)
    }
}

/// A recording read back: header, raw records in order, trailer.
#[derive(Debug)]
pub struct Recording {
    pub header: Header,
    /// Each a slice of the one buffer the file was read into: no copy per record.
    pub records: Vec<Bytes>,
    pub trailer: Trailer,
}

pub fn read(path: &Path) -> Result<Recording> {
    let file = fs::read(path).with_context(|| format!("opening {}", path.display()))?;
    parse(Bytes::from(file)).with_context(|| format!("reading recording {}", path.display()))
}

pub fn read_from(mut input: impl Read) -> Result<Recording> {
    let mut file = Vec::new();
    input.read_to_end(&mut file)?;
    parse(Bytes::from(file))
}

/// Splits a whole recording into its frames.
fn parse(mut input: Bytes) -> Result<Recording> {
    if input.len() < MAGIC.len() {
        bail!("the file is too short to be a recording");
    }
    let magic = input.split_to(MAGIC.len());
    if magic[..5] != *b"PWREC" {
        bail!("not a portwatch recording (made with `portwatch record`)");
    }
    if magic != MAGIC[..] {
        bail!(
            "recording format version {} is not supported (this portwatch reads version 1)",
            magic[7]
        );
    }
    let mut header: Option<Header> = None;
    let mut records = Vec::new();
    loop {
        if !input.has_remaining() {
            bail!("the recording ends without its trailer: was `portwatch record` interrupted?")
        }
        let tag = input.get_u8();
        let len = input.try_get_u32_le().context("truncated frame")?;
        if len > MAX_FRAME {
            bail!("corrupt recording: a frame claims {len} bytes");
        }
        if input.remaining() < len as usize {
            bail!("truncated frame");
        }
        let payload = input.split_to(len as usize);
        match (tag, &header) {
            (TAG_HEADER, None) => {
                let parsed: Header = serde_json::from_slice(&payload).context("bad header")?;
                if parsed.endian != native_endian() {
                    bail!(
                        "the recording was made on a {}-endian machine",
                        parsed.endian
                    );
                }
                match parsed.layout {
                    Some(layout) if layout > RECORD_LAYOUT_VERSION => bail!(
                        "its records have layout version {layout}, newer than this portwatch \
                         reads ({RECORD_LAYOUT_VERSION}): replay it with the portwatch that \
                         recorded it, or a newer one"
                    ),
                    Some(layout) if layout < RECORD_LAYOUT_VERSION => bail!(
                        "its records have layout version {layout}, older than this portwatch \
                         reads ({RECORD_LAYOUT_VERSION}): replay it with the portwatch that \
                         recorded it"
                    ),
                    _ => {}
                }
                header = Some(parsed);
            }
            (TAG_RECORD, Some(_)) => records.push(payload),
            (TAG_TRAILER, Some(_)) => {
                let trailer: Trailer = serde_json::from_slice(&payload).context("bad trailer")?;
                let header = header.take().expect("matched Some above");
                return Ok(Recording {
                    header,
                    records,
                    trailer,
                });
            }
            (tag, _) => bail!("corrupt recording: unexpected frame {tag}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            start_ns: 5,
            settings: PortSettings::default(),
            seeds: vec![RecordedSeed {
                netns: 4026532000,
                saddr: "127.0.0.1".parse().unwrap(),
                sport: 80,
                daddr: "::1".parse().unwrap(),
                dport: 4000,
                state: "CLOSE_WAIT".into(),
                holders: vec![(12, "nginx".into())],
                in_state_at_least_ns: Some(40),
                taken_ns: 3,
            }],
            endian: native_endian(),
            layout: Some(RECORD_LAYOUT_VERSION),
        }
    }

    #[test]
    fn round_trip() {
        let path =
            std::env::temp_dir().join(format!("portwatch-record-{}.pwrec", std::process::id()));
        let mut writer = Writer::create(&path, &header()).unwrap();
        writer.record(&[1, 2, 3]).unwrap();
        writer.record(&[]).unwrap();
        let trailer = Trailer {
            end_ns: 99,
            dropped: 1,
            untracked: 0,
            skipped: Some(2),
            holders: vec![RecordedHolder {
                netns: 4026532000,
                saddr: "127.0.0.1".parse().unwrap(),
                sport: 80,
                daddr: "127.0.0.1".parse().unwrap(),
                dport: 5000,
                pid: 7,
                comm: "worker".into(),
            }],
            workloads: [(7, "nginx.service".to_owned())].into(),
            netns_settings: [(
                4026532000,
                PortSettings {
                    range: (40000, 40003),
                    ..PortSettings::default()
                },
            )]
            .into(),
        };
        writer.finish(&trailer).unwrap();
        let recording = read(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(recording.header, header());
        assert_eq!(recording.records, [vec![1, 2, 3], vec![]]);
        assert_eq!(recording.trailer, trailer);
        assert_eq!(
            recording.trailer.holders().values().next(),
            Some(&(7, Comm::new("worker")))
        );
        let seed = Seed::try_from(&recording.header.seeds[0]).unwrap();
        assert_eq!(seed.state, TcpState::CloseWait);
        assert_eq!(seed.holders, [(12, Comm::new("nginx"))]);
    }

    fn file_with_header(header: &Header) -> Vec<u8> {
        let mut file = MAGIC.to_vec();
        let header = serde_json::to_vec(header).unwrap();
        file.push(TAG_HEADER);
        file.extend(u32::try_from(header.len()).unwrap().to_le_bytes());
        file.extend(header);
        file
    }

    #[test]
    fn records_of_another_layout_are_refused_by_name() {
        for (layout, says) in [
            (RECORD_LAYOUT_VERSION + 1, "newer than this portwatch reads"),
            (RECORD_LAYOUT_VERSION - 1, "older than this portwatch reads"),
        ] {
            let file = file_with_header(&Header {
                layout: Some(layout),
                ..header()
            });
            let err = format!("{:#}", read_from(&file[..]).unwrap_err());
            assert!(err.contains(&format!("layout version {layout}")), "{err}");
            assert!(err.contains(says), "{err}");
        }
    }

    #[test]
    fn a_header_from_before_layout_versions_is_read() {
        let mut json: serde_json::Value = serde_json::to_value(header()).unwrap();
        json.as_object_mut().unwrap().remove("layout");
        let header: Header = serde_json::from_value(json).unwrap();
        assert_eq!(header.layout, None);
        let trailer: Trailer =
            serde_json::from_str(r#"{"end_ns":1,"dropped":0,"untracked":0}"#).unwrap();
        assert!(trailer.workloads.is_empty() && trailer.holders.is_empty());
    }

    #[test]
    fn rejects_other_files_clearly() {
        let err = read_from(&b"hello world, not a recording"[..]).unwrap_err();
        assert!(format!("{err:#}").contains("not a portwatch recording"));
        let err = read_from(&b"PWREC\0\0\x09"[..]).unwrap_err();
        assert!(format!("{err:#}").contains("version 9"));
        let mut truncated = MAGIC.to_vec();
        truncated.push(TAG_HEADER);
        truncated.extend(2u32.to_le_bytes());
        truncated.extend(b"{}");
        assert!(read_from(&truncated[..]).is_err());
        let mut huge = MAGIC.to_vec();
        huge.push(TAG_HEADER);
        huge.extend(u32::MAX.to_le_bytes());
        assert!(format!("{:#}", read_from(&huge[..]).unwrap_err()).contains("corrupt"));
        let mut cut = MAGIC.to_vec();
        let header = serde_json::to_vec(&header()).unwrap();
        cut.push(TAG_HEADER);
        cut.extend(u32::try_from(header.len()).unwrap().to_le_bytes());
        cut.extend(header);
        cut.push(TAG_RECORD);
        cut.extend(10u32.to_le_bytes());
        cut.extend([1, 2, 3]);
        assert!(format!("{:#}", read_from(&cut[..]).unwrap_err()).contains("truncated frame"));
        cut.truncate(cut.len() - 5);
        assert!(format!("{:#}", read_from(&cut[..]).unwrap_err()).contains("truncated frame"));
    }
}
