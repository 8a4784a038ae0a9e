//! Kernel `TCP_*` state numbers (include/net/tcp_states.h), stable since Linux 2.x.
pub const ESTABLISHED: u8 = 1;
pub const SYN_SENT: u8 = 2;
pub const SYN_RECV: u8 = 3;
pub const FIN_WAIT1: u8 = 4;
pub const FIN_WAIT2: u8 = 5;
pub const TIME_WAIT: u8 = 6;
pub const CLOSE: u8 = 7;
pub const CLOSE_WAIT: u8 = 8;
pub const LAST_ACK: u8 = 9;
pub const LISTEN: u8 = 10;
pub const CLOSING: u8 = 11;
pub const NEW_SYN_RECV: u8 = 12;

/// Transitions that begin a socket's life: connect(), listen(), and a new passive
/// socket cloned from its listener. Whatever the tables remember about the socket's
/// address belongs to an earlier socket (its last transitions were missed). Both
/// the kernel's table and userspace's rely on this.
#[inline(always)]
pub const fn starts_life(old_state: u8, new_state: u8) -> bool {
    matches!(
        (old_state, new_state),
        (CLOSE, SYN_SENT) | (CLOSE, LISTEN) | (LISTEN, SYN_RECV)
    )
}
