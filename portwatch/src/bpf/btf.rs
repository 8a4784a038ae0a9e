//! Field offsets from the running kernel's BTF (/sys/kernel/btf/vmlinux), for the
//! network namespace the eBPF programs read (`NetnsOffsets`).
//!
//! aya-ebpf 0.2 has no CO-RE relocations, and aya 0.14's `Btf` keeps type lookup by id
//! crate-private (only `id_by_type_name_kind` is public), so it cannot walk a struct's
//! members. btf-rs (retis-org) can, but is LGPL-2.1, which deny.toml does not allow.
//! What is needed is small: find a struct by name and add up member offsets along a
//! path, through typedefs, qualifiers and anonymous structs/unions. So this is a
//! ~150-line reader of the format (Documentation/bpf/btf.rst), tested on the host's BTF.
use std::{fs, path::Path};

use portwatch_common::{NetnsOffsets, SockCommonHead, SockLayout};

const BTF_MAGIC: u16 = 0xeb9f;

// Kinds (include/uapi/linux/btf.h).
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF data (bad magic or header)")]
    BadHeader,
    #[error("BTF data is truncated")]
    Truncated,
    #[error("unknown BTF kind {0}")]
    UnknownKind(u32),
    #[error("no struct {0} in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {0} has no member {1}")]
    NoMember(String, String),
    #[error("struct sock's {0} is at offset {1} in this kernel, not {2}")]
    Moved(String, u32, usize),
}

#[derive(Clone, Copy, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Bits from the start of the struct.
    offset_bits: u32,
}

#[derive(Clone, Debug)]
struct Type {
    name_off: u32,
    kind: u32,
    /// `size` or `type`, depending on the kind.
    size_or_type: u32,
    members: Vec<Member>,
}

/// The types of one BTF blob, indexed by id (id 0 is void).
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
}

impl Btf {
    pub fn from_sys_fs() -> std::io::Result<Result<Btf, BtfError>> {
        Ok(Btf::parse(&fs::read(Path::new("/sys/kernel/btf/vmlinux"))?))
    }

    /// Parses native-endian BTF (the kernel's own).
    pub fn parse(data: &[u8]) -> Result<Btf, BtfError> {
        let u32_at = |at: usize| -> Result<u32, BtfError> {
            data.get(at..at + 4)
                .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
                .ok_or(BtfError::Truncated)
        };
        let magic = data
            .get(..2)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or(BtfError::BadHeader)?;
        if magic != BTF_MAGIC {
            return Err(BtfError::BadHeader);
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let types_bytes = data
            .get(hdr_len + type_off..hdr_len + type_off + type_len)
            .ok_or(BtfError::Truncated)?;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Truncated)?
            .to_vec();
        let word = |at: usize| -> Result<u32, BtfError> {
            types_bytes
                .get(at..at + 4)
                .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
                .ok_or(BtfError::Truncated)
        };
        let mut types = vec![Type {
            name_off: 0,
            kind: 0,
            size_or_type: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < types_bytes.len() {
            let name_off = word(at)?;
            let info = word(at + 4)?;
            let size_or_type = word(at + 8)?;
            at += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => at += 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => {}
                KIND_ARRAY => at += 12,
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        let offset = word(at + 8)?;
                        members.push(Member {
                            name_off: word(at)?,
                            type_id: word(at + 4)?,
                            // With kind_flag, the high 8 bits are a bitfield's size.
                            offset_bits: if kind_flag {
                                offset & 0x00ff_ffff
                            } else {
                                offset
                            },
                        });
                        at += 12;
                    }
                }
                KIND_ENUM | KIND_FUNC_PROTO => at += 8 * vlen,
                KIND_DATASEC | KIND_ENUM64 => at += 12 * vlen,
                other => return Err(BtfError::UnknownKind(other)),
            }
            types.push(Type {
                name_off,
                kind,
                size_or_type,
                members,
            });
        }
        Ok(Btf { types, strings })
    }

    fn name(&self, offset: u32) -> &[u8] {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())]
    }

    fn struct_id(&self, name: &str) -> Option<u32> {
        self.types
            .iter()
            .position(|t| {
                t.kind == KIND_STRUCT
                    && !t.members.is_empty()
                    && self.name(t.name_off) == name.as_bytes()
            })
            .map(|id| id as u32)
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.types.get(id as usize)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// The bit offset of member `name` in `ty` (searching anonymous structs and unions
    /// too) and the member's type id.
    fn member(&self, ty: &Type, name: &str) -> Option<(u32, u32)> {
        for member in &ty.members {
            let member_name = self.name(member.name_off);
            if member_name == name.as_bytes() {
                return Some((member.offset_bits, member.type_id));
            }
            if member_name.is_empty() {
                let inner = self.resolve(member.type_id)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some((bits, id)) = self.member(inner, name)
                {
                    return Some((member.offset_bits + bits, id));
                }
            }
        }
        None
    }

    /// The byte offset of `path` (member names, each inside the previous) in struct
    /// `name`: `offset_of(sock, __sk_common.skc_net.net)`.
    pub fn offset_of(&self, name: &str, path: &[&str]) -> Result<u32, BtfError> {
        let id = self
            .struct_id(name)
            .ok_or_else(|| BtfError::NoStruct(name.to_owned()))?;
        let mut ty = &self.types[id as usize];
        let mut bits = 0;
        for (i, field) in path.iter().enumerate() {
            let no_member = || BtfError::NoMember(name.to_owned(), path[..=i].join("."));
            let (offset, type_id) = self.member(ty, field).ok_or_else(no_member)?;
            bits += offset;
            if i + 1 < path.len() {
                ty = self
                    .resolve(type_id)
                    .filter(|t| matches!(t.kind, KIND_STRUCT | KIND_UNION))
                    .ok_or_else(no_member)?;
            }
        }
        if bits % 8 != 0 {
            return Err(BtfError::NoMember(name.to_owned(), path.join(".")));
        }
        Ok(bits / 8)
    }

    /// Whether `struct sock` starts as [`SockCommonHead`] says (what the BTF-typed state
    /// program copies in one read), and where its `sk_protocol` is, for `SOCK_LAYOUT`.
    pub fn sock_layout(&self) -> Result<SockLayout, BtfError> {
        for (path, expected, _size) in SockCommonHead::FIELDS {
            let path: Vec<&str> = path.split('.').collect();
            let found = self.offset_of("sock", &path)?;
            if found as usize != expected {
                return Err(BtfError::Moved(path.join("."), found, expected));
            }
        }
        Ok(SockLayout {
            protocol: self.offset_of("sock", &["sk_protocol"])?,
            inet_sport: self.offset_of("inet_sock", &["inet_sport"])?,
        })
    }

    /// Where the programs find network namespace inodes, for `NETNS_OFFSETS`.
    pub fn netns_offsets(&self) -> Result<NetnsOffsets, BtfError> {
        Ok(NetnsOffsets {
            enabled: 1,
            // possible_net_t has `net` only with CONFIG_NET_NS: without it there is one
            // namespace, and this fails (the documented degraded mode).
            sock_net: self.offset_of("sock", &["__sk_common", "skc_net", "net"])?,
            net_inum: self.offset_of("net", &["ns", "inum"])?,
            task_nsproxy: self.offset_of("task_struct", &["nsproxy"])?,
            nsproxy_net: self.offset_of("nsproxy", &["net_ns"])?,
            _pad: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_is_not_btf() {
        assert_eq!(Btf::parse(b"").err(), Some(BtfError::BadHeader));
        assert_eq!(Btf::parse(&[0u8; 24]).err(), Some(BtfError::BadHeader));
        let mut header = vec![0x9f, 0xeb, 1, 0];
        header.extend_from_slice(&24u32.to_ne_bytes());
        header.extend_from_slice(&[0; 16]);
        header[12..16].copy_from_slice(&100u32.to_ne_bytes());
        assert_eq!(Btf::parse(&header).err(), Some(BtfError::Truncated));
    }

    /// The host's own BTF (every kernel portwatch is tested on has it): the offsets
    /// exist, are plausible, and the path through anonymous members works.
    #[test]
    fn finds_the_netns_offsets_in_the_host_btf() {
        let Ok(btf) = Btf::from_sys_fs() else {
            panic!("no /sys/kernel/btf/vmlinux on this machine: the test needs kernel BTF");
        };
        let btf = btf.unwrap();
        let offsets = btf.netns_offsets().unwrap();
        assert_eq!(offsets.enabled, 1);
        // sock_common begins with addresses and ports; skc_net comes after them.
        assert!((16..256).contains(&offsets.sock_net), "{offsets:?}");
        assert!(
            offsets.net_inum > 0 && offsets.net_inum < 4096,
            "{offsets:?}"
        );
        assert!(
            offsets.task_nsproxy > 0 && offsets.nsproxy_net > 0,
            "{offsets:?}"
        );
        // 5.8 through 6.18 lay out sock_common's head alike: the BTF-typed program's.
        let layout = btf.sock_layout().unwrap();
        assert!(layout.protocol > 88, "{layout:?}");
        assert!(layout.inet_sport > layout.protocol, "{layout:?}");
        assert!(matches!(
            btf.offset_of("sock", &["no_such_member"]),
            Err(BtfError::NoMember(..))
        ));
        assert!(matches!(
            btf.offset_of("no_such_struct_here", &["x"]),
            Err(BtfError::NoStruct(_))
        ));
    }
}
