//! Every TCP socket on the host, from the kernel's sock_diag interface (NETLINK_INET_DIAG,
//! what `ss` uses): one dump per address family, all states, with `tcp_info`.
use std::{collections::HashSet, io, net::IpAddr};

use netlink_packet_core::{
    NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    Parseable as _,
};
use netlink_packet_sock_diag::{
    AF_INET, AF_INET6, IPPROTO_TCP, SockDiagMessage,
    inet::nlas::Nla,
    inet::{
        ExtensionFlags, InetRequest, InetResponse, SocketId, SocketIdBuffer, StateFlags, Timer,
    },
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use crate::{event::Family, tcp_state::TcpState};

/// One TCP socket as the kernel reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiagSocket {
    /// The network namespace it was dumped in (sock_diag lists the caller's only).
    pub netns: u32,
    pub family: Family,
    pub state: TcpState,
    /// Local address; IPv4-mapped IPv6 addresses come out as IPv4 (family stays Ipv6).
    pub saddr: IpAddr,
    pub sport: u16,
    pub daddr: IpAddr,
    pub dport: u16,
    /// The socket's inode in sockfs, as in `/proc/<pid>/fd/N -> socket:[inode]`. 0 when no
    /// file refers to it: TIME_WAIT, connections not yet accepted, sockets closed by their
    /// owner.
    pub inode: u64,
    /// The kernel's socket cookie (`SO_COOKIE`, `bpf_get_socket_cookie`): unique per
    /// socket for the life of the boot, unlike addresses and inodes.
    pub cookie: u64,
    pub uid: u32,
    /// tcp_info.tcpi_last_ack_recv in ms when the kernel reported it
    pub last_ack_recv_ms: Option<u32>,
    /// the socket timer (retransmit/keepalive/time-wait...) and when it expires, if any
    pub timer: Option<(DiagTimer, u32)>,
}

/// The kernel timer pending on a socket (`idiag_timer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DiagTimer {
    /// Retransmission, reordering or tail-loss probe.
    Retransmit,
    /// Keepalive, SYN-ACK or FIN_WAIT2 timeout (the socket's `sk_timer`).
    KeepAlive,
    /// The end of TIME_WAIT (or of an orphaned FIN_WAIT2).
    TimeWait,
    /// Zero-window probe.
    ZeroWindowProbe,
}

#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error("opening a NETLINK_SOCK_DIAG socket")]
    Open(#[source] io::Error),
    #[error("sending the dump request")]
    Send(#[source] io::Error),
    #[error("receiving the dump")]
    Receive(#[source] io::Error),
    #[error("the kernel refused the dump")]
    Refused(#[source] io::Error),
    #[error(
        "this kernel has no TCP socket diagnostics (CONFIG_INET_DIAG and CONFIG_INET_TCP_DIAG); \
         try `modprobe tcp_diag`"
    )]
    Unsupported,
    #[error("a {len}-byte reply did not fit the {capacity}-byte receive buffer")]
    Truncated { len: usize, capacity: usize },
    #[error("the kernel dropped part of the dump (netlink overrun)")]
    Overrun,
    #[error("undecodable sock_diag reply: {0}")]
    Decode(String),
}

/// Every TCP socket of the calling thread's network namespace in one of `states`, IPv4
/// then IPv6, with `netns` 0 (the caller knows which namespace it is in).
pub fn dump_tcp_sockets(states: &[TcpState]) -> anyhow::Result<Vec<DiagSocket>> {
    use anyhow::Context as _;
    let socket = open().context("listing TCP sockets with sock_diag")?;
    let mut sockets = Vec::new();
    let mut buffer = Vec::with_capacity(RECEIVE_BUFFER);
    for (sequence, family) in [(1, Family::Ipv4), (2, Family::Ipv6)] {
        dump_family(&socket, family, sequence, states, &mut buffer, &mut sockets).with_context(
            || format!("listing {} TCP sockets with sock_diag", family_name(family)),
        )?;
    }
    // A dump that spans several batches resumes by position in the kernel's hash
    // chains, so a socket can be listed twice while connections come and go. The cookie
    // names a socket uniquely; keep its first listing.
    let mut seen = HashSet::with_capacity(sockets.len());
    sockets.retain(|socket| seen.insert(socket.cookie));
    Ok(sockets)
}

/// Large enough for any dump batch: the kernel sizes a batch to at most the largest
/// buffer the reader has offered and 32 KiB, so nothing is truncated.
const RECEIVE_BUFFER: usize = 64 << 10;

fn open() -> Result<Socket, DiagError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(DiagError::Open)?;
    socket.bind_auto().map_err(DiagError::Open)?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(DiagError::Open)?;
    Ok(socket)
}

fn family_name(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    }
}

fn dump_family(
    socket: &Socket,
    family: Family,
    sequence: u32,
    states: &[TcpState],
    buffer: &mut Vec<u8>,
    out: &mut Vec<DiagSocket>,
) -> Result<(), DiagError> {
    let request = dump_request(family, sequence, states);
    socket.send(&request, 0).map_err(DiagError::Send)?;
    loop {
        buffer.clear();
        // MSG_TRUNC makes recv return the datagram's real length, so truncation shows.
        let len = socket
            .recv(buffer, libc::MSG_TRUNC)
            .map_err(DiagError::Receive)?;
        if len > buffer.len() {
            return Err(DiagError::Truncated {
                len,
                capacity: buffer.capacity(),
            });
        }
        if parse_batch(buffer, sequence, out)? == Batch::Done {
            return Ok(());
        }
    }
}

/// A dump request for every TCP socket of `family`, with tcp_info.
fn dump_request(family: Family, sequence: u32, states: &[TcpState]) -> Vec<u8> {
    let (af, socket_id) = match family {
        Family::Ipv4 => (AF_INET, SocketId::new_v4()),
        Family::Ipv6 => (AF_INET6, SocketId::new_v6()),
    };
    // A mask of state numbers, NEW_SYN_RECV included (StateFlags::all() stops at
    // CLOSING), so half-open connections (SYN received) can be listed too.
    let states = states
        .iter()
        .fold(0u32, |mask, state| mask | 1 << state.number());
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family: af,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::INFO,
            states: StateFlags::from_bits_retain(states),
            socket_id,
        })
        .into(),
    );
    message.finalize();
    let mut bytes = vec![0; message.buffer_len()];
    message.serialize(&mut bytes);
    bytes
}

/// Whether a dump goes on after a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Batch {
    More,
    Done,
}

/// Decodes one datagram of a dump: zero or more sockets, then possibly NLMSG_DONE or
/// NLMSG_ERROR. Messages for another request (another sequence number) are skipped.
/// Public for the fuzz target (`portwatch::fuzz::sock_diag`): the bytes are the kernel's.
pub fn parse_batch(
    mut bytes: &[u8],
    sequence: u32,
    out: &mut Vec<DiagSocket>,
) -> Result<Batch, DiagError> {
    while !bytes.is_empty() {
        let buffer = NetlinkBuffer::new_checked(&bytes).map_err(decode_error)?;
        let len = buffer.length() as usize;
        let message = NetlinkMessage::<SockDiagMessage>::parse(&buffer).map_err(decode_error)?;
        if message.header.sequence_number == sequence {
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(response)) => {
                    if let Some(socket) = decode(&response, expires_ms(buffer.payload())) {
                        out.push(socket);
                    }
                }
                NetlinkPayload::Done(done) if done.code < 0 => {
                    return Err(refused(os_error(done.code)));
                }
                NetlinkPayload::Done(_) => return Ok(Batch::Done),
                NetlinkPayload::Error(error) if error.code.is_some() => {
                    return Err(refused(os_error(error.raw_code())));
                }
                NetlinkPayload::Overrun(_) => return Err(DiagError::Overrun),
                // An ACK (an error message with code 0), a no-op, or a reply that is not
                // about an IP socket: nothing to keep.
                _ => {}
            }
        }
        // Messages are padded to 4 bytes; the last one of a datagram may not be.
        bytes = bytes.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(Batch::More)
}

/// The errno a netlink error or done code carries (a negative errno). Not `-code`, nor
/// `ErrorMessage::to_io` (`code.abs()`): both overflow on i32::MIN, which no kernel
/// sends but a corrupt reply can hold (found by fuzzing); that panics where overflow
/// is checked.
fn os_error(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code.saturating_abs())
}

/// ENOENT is how sock_diag says no handler is registered for the request: the kernel
/// was built without inet_diag/tcp_diag, or the modules could not be loaded.
fn refused(err: io::Error) -> DiagError {
    if err.raw_os_error() == Some(libc::ENOENT) {
        DiagError::Unsupported
    } else {
        DiagError::Refused(err)
    }
}

fn decode_error(err: netlink_packet_core::DecodeError) -> DiagError {
    DiagError::Decode(err.to_string())
}

/// `idiag_expires` straight from the `struct inet_diag_msg` at the start of `payload`:
/// the crate drops it for TIME_WAIT sockets (`Timer::TimeWait` has no duration), and the
/// time-wait timer is what bounds a TIME_WAIT socket's age. The layout is uapi
/// (linux/inet_diag.h): four u8 fields, the 48-byte `inet_diag_sockid`, then the u32.
fn expires_ms(payload: &[u8]) -> u32 {
    const OFFSET: usize = 4 + size_of::<SocketIdBuffer>();
    payload
        .get(OFFSET..OFFSET + 4)
        .and_then(|bytes| bytes.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

/// One socket, or None for what portwatch cannot name: a state newer than it knows (a
/// later kernel's), or a family other than IPv4/IPv6.
fn decode(response: &InetResponse, time_wait_expires_ms: u32) -> Option<DiagSocket> {
    let header = &response.header;
    let family = match header.family {
        AF_INET => Family::Ipv4,
        AF_INET6 => Family::Ipv6,
        _ => return None,
    };
    let state = TcpState::try_from(header.state).ok()?;
    let id = &header.socket_id;
    let millis = |d: std::time::Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    let timer = header.timer.as_ref().map(|timer| match timer {
        Timer::Retransmit(expires, _) => (DiagTimer::Retransmit, millis(*expires)),
        Timer::KeepAlive(expires) => (DiagTimer::KeepAlive, millis(*expires)),
        Timer::TimeWait => (DiagTimer::TimeWait, time_wait_expires_ms),
        Timer::Probe(expires) => (DiagTimer::ZeroWindowProbe, millis(*expires)),
    });
    Some(DiagSocket {
        netns: 0,
        family,
        state,
        saddr: unmapped(id.source_address),
        sport: id.source_port,
        daddr: unmapped(id.destination_address),
        dport: id.destination_port,
        inode: u64::from(header.inode),
        cookie: cookie(&id.cookie),
        uid: header.uid,
        last_ack_recv_ms: response.nlas.iter().find_map(|nla| match nla {
            Nla::TcpInfo(info) => last_ack_recv_ms(info),
            _ => None,
        }),
        timer,
    })
}

fn unmapped(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => crate::event::ipv6(&v6.octets()),
        v4 => v4,
    }
}

/// The kernel splits the 64-bit cookie into two native-endian u32 halves, low first
/// (`sock_diag_save_cookie`).
fn cookie(bytes: &[u8; 8]) -> u64 {
    let half = |range: std::ops::Range<usize>| {
        u64::from(u32::from_ne_bytes(
            bytes[range].try_into().unwrap_or_default(),
        ))
    };
    half(0..4) | half(4..8) << 32
}

/// `tcpi_last_ack_recv` from the raw `struct tcp_info`. Read by offset rather than through
/// the crate's `rich_nlas` struct, which rejects the shorter tcp_info of older kernels;
/// the field has been at this offset since tcp_info first appeared.
fn last_ack_recv_ms(info: &[u8]) -> Option<u32> {
    const OFFSET: usize = std::mem::offset_of!(libc::tcp_info, tcpi_last_ack_recv);
    let bytes = info.get(OFFSET..OFFSET + 4)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv6Addr, time::Duration};

    use netlink_packet_core::{DoneMessage, ErrorMessage};
    use netlink_packet_sock_diag::inet::InetResponseHeader;

    use super::*;

    fn response(family: u8, state: TcpState, source: IpAddr, dest: IpAddr) -> InetResponse {
        InetResponse {
            header: InetResponseHeader {
                family,
                state: state.number(),
                timer: None,
                socket_id: SocketId {
                    source_port: 8080,
                    destination_port: 51000,
                    source_address: source,
                    destination_address: dest,
                    interface_id: 0,
                    cookie: [0x11, 0x22, 0x33, 0x44, 0x01, 0, 0, 0],
                },
                recv_queue: 0,
                send_queue: 0,
                uid: 1000,
                inode: 424242,
            },
            nlas: Default::default(),
        }
    }

    fn v4(state: TcpState) -> InetResponse {
        let ip = "127.0.0.1".parse().unwrap();
        response(AF_INET, state, ip, ip)
    }

    fn serialize(sequence: u32, payload: NetlinkPayload<SockDiagMessage>) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = sequence;
        let mut message = NetlinkMessage::new(header, payload);
        message.finalize();
        let mut bytes = vec![0; message.buffer_len()];
        message.serialize(&mut bytes);
        bytes
    }

    fn inet(sequence: u32, response: InetResponse) -> Vec<u8> {
        serialize(
            sequence,
            SockDiagMessage::InetResponse(Box::new(response)).into(),
        )
    }

    fn done(sequence: u32, code: i32) -> Vec<u8> {
        let mut done = DoneMessage::default();
        done.code = code;
        serialize(sequence, NetlinkPayload::Done(done))
    }

    fn tcp_info(last_ack_recv: u32) -> Vec<u8> {
        let mut info = vec![0u8; size_of::<libc::tcp_info>()];
        let offset = std::mem::offset_of!(libc::tcp_info, tcpi_last_ack_recv);
        info[offset..offset + 4].copy_from_slice(&last_ack_recv.to_ne_bytes());
        info
    }

    #[test]
    fn decodes_a_multipart_dump() {
        let mut sockets = Vec::new();
        let mut first = inet(7, v4(TcpState::Listen));
        first.extend(inet(7, v4(TcpState::Established)));
        assert_eq!(parse_batch(&first, 7, &mut sockets).unwrap(), Batch::More);
        let mut second = inet(7, v4(TcpState::CloseWait));
        second.extend(done(7, 0));
        assert_eq!(parse_batch(&second, 7, &mut sockets).unwrap(), Batch::Done);
        let states: Vec<TcpState> = sockets.iter().map(|s| s.state).collect();
        assert_eq!(
            states,
            [TcpState::Listen, TcpState::Established, TcpState::CloseWait]
        );
        let socket = &sockets[0];
        assert_eq!(socket.family, Family::Ipv4);
        assert_eq!(socket.saddr, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!((socket.sport, socket.dport), (8080, 51000));
        assert_eq!((socket.inode, socket.uid), (424242, 1000));
        assert_eq!(socket.cookie, 0x1_4433_2211);
        assert_eq!(socket.last_ack_recv_ms, None);
        assert_eq!(socket.timer, None);
    }

    #[test]
    fn ipv4_mapped_addresses_come_out_as_ipv4() {
        let mapped = IpAddr::V6("::ffff:192.0.2.7".parse().unwrap());
        let plain = IpAddr::V6("2001:db8::1".parse().unwrap());
        let bytes = inet(1, response(AF_INET6, TcpState::CloseWait, mapped, plain));
        let mut sockets = Vec::new();
        parse_batch(&bytes, 1, &mut sockets).unwrap();
        assert_eq!(sockets[0].family, Family::Ipv6);
        assert_eq!(sockets[0].saddr, "192.0.2.7".parse::<IpAddr>().unwrap());
        assert_eq!(sockets[0].daddr, plain);
        let loopback = IpAddr::V6(Ipv6Addr::LOCALHOST);
        let bytes = inet(1, response(AF_INET6, TcpState::Listen, loopback, loopback));
        parse_batch(&bytes, 1, &mut sockets).unwrap();
        assert_eq!(sockets[1].saddr, loopback);
    }

    #[test]
    fn reads_last_ack_recv_from_tcp_info() {
        let mut with_info = v4(TcpState::CloseWait);
        with_info.nlas.push(Nla::TcpInfo(tcp_info(40_123)));
        let mut sockets = Vec::new();
        parse_batch(&inet(1, with_info), 1, &mut sockets).unwrap();
        assert_eq!(sockets[0].last_ack_recv_ms, Some(40_123));
        // A tcp_info too short to hold the field is not a reading.
        assert_eq!(last_ack_recv_ms(&[0; 20]), None);
    }

    #[test]
    fn timers_and_the_time_wait_expiry() {
        let mut retransmit = v4(TcpState::Established);
        retransmit.header.timer = Some(Timer::Retransmit(Duration::from_millis(200), 1));
        let mut time_wait = v4(TcpState::TimeWait);
        time_wait.header.timer = Some(Timer::TimeWait);
        let mut time_wait_bytes = inet(1, time_wait);
        // The crate writes 0 for a TIME_WAIT expiry; the kernel writes the time left.
        let offset = 16 + 4 + size_of::<SocketIdBuffer>();
        time_wait_bytes[offset..offset + 4].copy_from_slice(&45_000u32.to_ne_bytes());
        let mut bytes = inet(1, retransmit);
        bytes.extend(time_wait_bytes);
        let mut sockets = Vec::new();
        parse_batch(&bytes, 1, &mut sockets).unwrap();
        assert_eq!(sockets[0].timer, Some((DiagTimer::Retransmit, 200)));
        assert_eq!(sockets[1].timer, Some((DiagTimer::TimeWait, 45_000)));
    }

    #[test]
    fn errors_end_the_dump_with_the_kernel_reason() {
        let mut error = ErrorMessage::default();
        error.code = std::num::NonZeroI32::new(-libc::EPERM);
        let bytes = serialize(3, NetlinkPayload::Error(error));
        let err = parse_batch(&bytes, 3, &mut Vec::new()).unwrap_err();
        let DiagError::Refused(io) = err else {
            panic!("{err:?}")
        };
        assert_eq!(io.raw_os_error(), Some(libc::EPERM));
        let err = parse_batch(&done(3, -libc::EINTR), 3, &mut Vec::new()).unwrap_err();
        assert!(matches!(err, DiagError::Refused(_)), "{err:?}");
        let mut missing = ErrorMessage::default();
        missing.code = std::num::NonZeroI32::new(-libc::ENOENT);
        let bytes = serialize(3, NetlinkPayload::Error(missing));
        let err = parse_batch(&bytes, 3, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("modprobe tcp_diag"), "{err}");
    }

    #[test]
    fn skips_other_requests_and_unknown_states() {
        let mut bytes = inet(99, v4(TcpState::Established));
        let mut unknown = v4(TcpState::Established);
        unknown.header.state = 13; // TCP_BOUND_INACTIVE, Linux 6.5+
        bytes.extend(inet(1, unknown));
        bytes.extend(done(99, 0));
        let mut sockets = Vec::new();
        assert_eq!(parse_batch(&bytes, 1, &mut sockets).unwrap(), Batch::More);
        assert!(sockets.is_empty());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let good = inet(1, v4(TcpState::Established));
        for len in 1..good.len() {
            // Any prefix either decodes or fails cleanly.
            let _ = parse_batch(&good[..len], 1, &mut Vec::new());
        }
        let mut lying = good.clone();
        lying[..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(matches!(
            parse_batch(&lying, 1, &mut Vec::new()),
            Err(DiagError::Decode(_))
        ));
        let mut tiny = good;
        tiny[..4].copy_from_slice(&4u32.to_ne_bytes());
        assert!(parse_batch(&tiny, 1, &mut Vec::new()).is_err());
    }

    #[test]
    fn request_asks_for_every_state_and_tcp_info() {
        let bytes = dump_request(Family::Ipv6, 5, &TcpState::ALL);
        // The crate parses requests as responses, so check the raw fields.
        let buffer = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(buffer.flags(), NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(buffer.sequence_number(), 5);
        let payload = buffer.payload();
        assert_eq!(payload[0], AF_INET6);
        assert_eq!(payload[1], IPPROTO_TCP);
        assert_eq!(payload[2], ExtensionFlags::INFO.bits());
        let states = u32::from_ne_bytes(payload[4..8].try_into().unwrap());
        assert_eq!(
            states, 0b1_1111_1111_1110,
            "TCP_ESTABLISHED (1) to TCP_NEW_SYN_RECV (12)"
        );
    }
}
