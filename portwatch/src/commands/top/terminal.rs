//! The terminal while `top` owns it: raw mode and the alternate screen, given back on
//! every way out. A guard's `Drop` restores it (normal exit, errors, SIGTERM ending the
//! loop), and a panic hook restores it before the panic message is printed, so the
//! message lands on a usable screen.
//!
//! While the screen is drawn, portwatch's own stderr (a warning from the tracing loop,
//! say) would scribble over it. If stderr is this terminal, it goes to an anonymous
//! file instead, which is written to the real stderr once the terminal is restored: the
//! warnings are kept, after the screen they would have broken.
use std::{
    fs::File,
    io::{self, IsTerminal as _, Read as _, Seek as _, Stdout, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{Mutex, Once, PoisonError},
};

use anyhow::{Context as _, Result};
use ratatui::{
    Terminal,
    backend::CrosstermBackend,
    crossterm::{
        cursor, execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
};

/// Set while the terminal is in raw mode with the alternate screen; taken by whoever
/// restores first (the guard or the panic hook), so restoring happens once.
static ENTERED: Mutex<Option<Captured>> = Mutex::new(None);
static PANIC_HOOK: Once = Once::new();

/// Stderr, diverted while the screen is drawn.
struct Captured {
    /// The real stderr, to put back.
    saved: Option<OwnedFd>,
    file: Option<File>,
}

pub struct TerminalGuard {
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl TerminalGuard {
    pub fn enter() -> Result<TerminalGuard> {
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
        });
        let captured = Captured {
            saved: None,
            file: None,
        };
        // Registered before anything changes, so a failure below is undone too.
        *ENTERED.lock().unwrap_or_else(PoisonError::into_inner) = Some(captured);
        let entered = (|| -> Result<Terminal<CrosstermBackend<Stdout>>> {
            divert_stderr()?;
            terminal::enable_raw_mode().context("switching the terminal to raw mode")?;
            let mut stdout = io::stdout();
            execute!(stdout, EnterAlternateScreen, cursor::Hide)
                .context("switching to the terminal's alternate screen")?;
            let mut terminal =
                Terminal::new(CrosstermBackend::new(stdout)).context("setting up the terminal")?;
            terminal.clear().context("clearing the terminal")?;
            Ok(terminal)
        })();
        match entered {
            Ok(terminal) => Ok(TerminalGuard { terminal }),
            Err(err) => {
                restore();
                Err(err)
            }
        }
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Gives the terminal back as it was, then the diverted stderr's text. Safe to call
/// more than once and from a panic: errors are ignored (a terminal that went away, on
/// SIGHUP, cannot be restored and needs not be).
pub fn restore() {
    let Some(captured) = ENTERED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    else {
        return;
    };
    let mut stdout = io::stdout();
    let _ = execute!(stdout, LeaveAlternateScreen, cursor::Show);
    let _ = terminal::disable_raw_mode();
    let _ = stdout.flush();
    if let (Some(saved), Some(mut file)) = (captured.saved, captured.file) {
        // SAFETY: both are open descriptors this process owns; dup2 replaces fd 2.
        unsafe { libc::dup2(saved.as_raw_fd(), libc::STDERR_FILENO) };
        let mut text = Vec::new();
        if file.rewind().is_ok() && file.read_to_end(&mut text).is_ok() {
            let _ = io::stderr().write_all(&text);
        }
    }
}

/// Points fd 2 at an anonymous file when it is the terminal, keeping the real one.
fn divert_stderr() -> Result<()> {
    if !io::stderr().is_terminal() {
        return Ok(());
    }
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd
    // or -1.
    let fd = unsafe { libc::memfd_create(c"portwatch-top-stderr".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("creating a file for stderr");
    }
    // SAFETY: fd was just created and nothing else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    // SAFETY: dup has no preconditions; it returns a new fd or -1.
    let saved = unsafe { libc::fcntl(libc::STDERR_FILENO, libc::F_DUPFD_CLOEXEC, 3) };
    if saved < 0 {
        return Err(io::Error::last_os_error()).context("duplicating stderr");
    }
    // SAFETY: saved was just created and nothing else owns it.
    let saved = unsafe { OwnedFd::from_raw_fd(saved) };
    let _ = io::stderr().flush();
    // SAFETY: both descriptors are open; dup2 atomically replaces fd 2.
    if unsafe { libc::dup2(file.as_raw_fd(), libc::STDERR_FILENO) } < 0 {
        return Err(io::Error::last_os_error()).context("diverting stderr");
    }
    if let Some(captured) = ENTERED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_mut()
    {
        captured.saved = Some(saved);
        captured.file = Some(file);
    }
    Ok(())
}
