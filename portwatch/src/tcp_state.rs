//! TCP states by their kernel numbers and names.
use std::{fmt, str::FromStr};

use portwatch_common::tcp_state as raw;
use serde::{Serialize, Serializer};

/// A TCP socket state as the kernel numbers it (include/net/tcp_states.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown TCP state number {0}")]
pub struct UnknownState(pub u8);

impl TcpState {
    pub const ALL: [TcpState; 12] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
    ];

    /// The kernel's name without the `TCP_` prefix, as `ss` and tcpstates print it.
    pub const fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
        }
    }

    pub const fn number(self) -> u8 {
        match self {
            TcpState::Established => raw::ESTABLISHED,
            TcpState::SynSent => raw::SYN_SENT,
            TcpState::SynRecv => raw::SYN_RECV,
            TcpState::FinWait1 => raw::FIN_WAIT1,
            TcpState::FinWait2 => raw::FIN_WAIT2,
            TcpState::TimeWait => raw::TIME_WAIT,
            TcpState::Close => raw::CLOSE,
            TcpState::CloseWait => raw::CLOSE_WAIT,
            TcpState::LastAck => raw::LAST_ACK,
            TcpState::Listen => raw::LISTEN,
            TcpState::Closing => raw::CLOSING,
            TcpState::NewSynRecv => raw::NEW_SYN_RECV,
        }
    }
}

impl TryFrom<u8> for TcpState {
    type Error = UnknownState;

    fn try_from(number: u8) -> Result<Self, Self::Error> {
        TcpState::ALL
            .into_iter()
            .find(|state| state.number() == number)
            .ok_or(UnknownState(number))
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

impl Serialize for TcpState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown TCP state {0:?}; expected one of: {names}", names = state_names())]
pub struct ParseStateError(String);

fn state_names() -> String {
    TcpState::ALL.map(TcpState::name).join(", ")
}

impl FromStr for TcpState {
    type Err = ParseStateError;

    /// Accepts the kernel name in any case, with or without `TCP_`, and with `-` for `_`
    /// (`close-wait`, `CLOSE_WAIT`, `TCP_CLOSE_WAIT`).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wanted = text.trim().to_ascii_uppercase().replace('-', "_");
        let wanted = wanted.strip_prefix("TCP_").unwrap_or(&wanted);
        TcpState::ALL
            .into_iter()
            .find(|state| state.name() == wanted)
            .ok_or_else(|| ParseStateError(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip_and_match_the_kernel() {
        for state in TcpState::ALL {
            assert_eq!(TcpState::try_from(state.number()), Ok(state));
        }
        assert_eq!(TcpState::try_from(1), Ok(TcpState::Established));
        assert_eq!(TcpState::try_from(8), Ok(TcpState::CloseWait));
        assert_eq!(TcpState::try_from(10), Ok(TcpState::Listen));
        assert_eq!(TcpState::try_from(0), Err(UnknownState(0)));
        assert_eq!(TcpState::try_from(13), Err(UnknownState(13)));
    }

    #[test]
    fn names_are_the_kernel_names_without_prefix() {
        assert_eq!(TcpState::CloseWait.name(), "CLOSE_WAIT");
        assert_eq!(TcpState::SynSent.to_string(), "SYN_SENT");
        assert_eq!(
            serde_json::to_string(&TcpState::TimeWait).unwrap(),
            "\"TIME_WAIT\""
        );
    }

    #[test]
    fn parses_user_spellings() {
        for text in ["CLOSE_WAIT", "close_wait", "close-wait", "TCP_CLOSE_WAIT"] {
            assert_eq!(text.parse::<TcpState>(), Ok(TcpState::CloseWait), "{text}");
        }
        let err = "CLOSED".parse::<TcpState>().unwrap_err().to_string();
        assert!(
            err.contains("CLOSE_WAIT"),
            "error lists the valid names: {err}"
        );
    }
}
