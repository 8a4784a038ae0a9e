//! A pseudo-terminal for an agent that draws a full screen: `portwatch top` refuses to
//! run unless its standard output is a terminal.
//!
//! The agent is started directly on the terminal's slave side (stdin and stdout; its
//! stderr stays whatever the caller makes it, a pipe for the agent's messages), so the
//! process measured is the agent itself, not a wrapper such as `script`. It runs in a
//! session of its own with the terminal as its controlling one: its terminal handling
//! (raw mode, `/dev/tty`) touches this terminal and never the benchmark's, and should
//! the benchmark die, the terminal hangs up and the agent gets SIGHUP.
//!
//! On the master side a thread plays the terminal's part: it reads what the agent draws
//! and throws it away, so that a full terminal buffer never blocks it, and answers the
//! one question top asks its terminal, where the cursor is (ratatui asks when it clears
//! the screen, and gives up with an error when no answer comes in 2 s).
use std::{
    fs::File,
    io::{self, Read as _, Write as _},
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    process::{Command, Stdio},
    thread,
};

use anyhow::{Context as _, Result};

/// Both sides of a new pseudo-terminal.
pub struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

impl Pty {
    /// Opens a terminal of `columns` x `rows`.
    pub fn open(columns: u16, rows: u16) -> Result<Pty> {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: the out-pointers are valid; a null name and termios are allowed (no
        // name wanted, default settings); `size` outlives the call.
        let opened = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        if opened != 0 {
            return Err(io::Error::last_os_error()).context("opening a pseudo-terminal");
        }
        // SAFETY: openpty succeeded, so both are open descriptors that nothing else owns.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        // Other children (the workload, dd) must not inherit either side: a stray copy
        // of the slave would keep the master from seeing the agent's exit.
        close_on_exec(&master)?;
        close_on_exec(&slave)?;
        Ok(Pty { master, slave })
    }

    /// Makes `command` run on this terminal: its stdout here, and in a session of its
    /// own whose controlling terminal this is. Returns its stdin, this terminal too.
    pub fn attach(&self, command: &mut Command) -> Result<Stdio> {
        let copy = || {
            self.slave
                .try_clone()
                .context("duplicating the terminal's descriptor")
        };
        command.stdout(Stdio::from(copy()?));
        // SAFETY: the closure runs in the child between fork and exec, after its stdin
        // became the slave side; it calls only setsid and ioctl, which are
        // async-signal-safe, and allocates nothing.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::ioctl(libc::STDIN_FILENO, libc::TIOCSCTTY, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(Stdio::from(copy()?))
    }

    /// Once the agent runs: closes our slave side and plays the terminal on a thread of
    /// its own until the agent's last descriptor of the terminal closes, at its exit (the
    /// read then fails with EIO and the thread ends).
    pub fn play_terminal(self) -> Result<()> {
        let Pty { master, slave } = self;
        drop(slave);
        thread::Builder::new()
            .name("bench-pty".into())
            .spawn(move || play(&File::from(master)))
            .context("starting the terminal's thread")?;
        Ok(())
    }
}

fn close_on_exec(fd: &OwnedFd) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: fcntl on a descriptor we own, with an int argument.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error()).context("marking the terminal close-on-exec");
    }
    Ok(())
}

/// Device Status Report, "where is the cursor?" (crossterm's `cursor::position`).
const CURSOR_QUERY: &[u8] = b"\x1b[6n";
/// The answer: row 1, column 1. Where the cursor really is does not matter to top,
/// which asks only to put it back after clearing a screen it then redraws whole.
const CURSOR_ANSWER: &[u8] = b"\x1b[1;1R";

/// Reads the agent's output until it exits, answering its cursor queries.
fn play(mut master: &File) {
    let mut buffer = [0u8; 16 * 1024];
    let mut queries = QueryScanner::default();
    loop {
        match master.read(&mut buffer) {
            Ok(0) => return,
            Ok(read) => {
                for _ in 0..queries.count(&buffer[..read]) {
                    // A failed write means the agent is gone; the next read says so.
                    let _ = master.write_all(CURSOR_ANSWER);
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            // EIO: every slave descriptor is closed, the agent has exited.
            Err(_) => return,
        }
    }
}

/// Counts cursor queries in a stream read in pieces, one split across two reads
/// included.
#[derive(Default)]
struct QueryScanner {
    /// The end of the last piece: perhaps the start of a query.
    carry: Vec<u8>,
}

impl QueryScanner {
    fn count(&mut self, piece: &[u8]) -> usize {
        let window = [self.carry.as_slice(), piece].concat();
        let found = window
            .windows(CURSOR_QUERY.len())
            .filter(|w| *w == CURSOR_QUERY)
            .count();
        // Shorter than a query, so no query found here is counted twice.
        let keep = window.len().min(CURSOR_QUERY.len() - 1);
        self.carry = window[window.len() - keep..].to_vec();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A program on the terminal sees a terminal of the size asked for, and its exit
    /// ends the reader.
    #[test]
    fn runs_a_program_on_a_terminal() {
        let pty = Pty::open(120, 40).unwrap();
        let mut command = Command::new("sh");
        command.args([
            "-c",
            "test -t 0 && test -t 1 && stty size | grep -qx '40 120'",
        ]);
        let stdin = pty.attach(&mut command).unwrap();
        let mut child = command.stdin(stdin).spawn().unwrap();
        drop(command);
        pty.play_terminal().unwrap();
        assert!(child.wait().unwrap().success());
    }

    /// What top needs of a terminal: an answer when it asks where the cursor is.
    #[test]
    fn answers_where_the_cursor_is() {
        let pty = Pty::open(80, 24).unwrap();
        let mut command = Command::new("sh");
        // Raw mode, so the answer is not echoed back; dd reads the 6-byte answer.
        command.args([
            "-c",
            r#"stty raw -echo && printf '\033[6n' && test "$(timeout --foreground 5 dd bs=6 count=1 2>/dev/null)" = "$(printf '\033[1;1R')""#,
        ]);
        let stdin = pty.attach(&mut command).unwrap();
        let mut child = command.stdin(stdin).spawn().unwrap();
        drop(command);
        pty.play_terminal().unwrap();
        assert!(child.wait().unwrap().success());
    }

    #[test]
    fn finds_queries_split_across_reads() {
        let mut scanner = QueryScanner::default();
        assert_eq!(scanner.count(b"abc\x1b[6nxyz\x1b["), 1);
        assert_eq!(scanner.count(b"6n\x1b[6n"), 2);
        assert_eq!(scanner.count(b"[6n"), 0);
        assert_eq!(scanner.count(b""), 0);
    }
}
