//! The screen's loop, on a thread of its own: take a frame every interval, draw, and
//! between frames wait for keys. It never runs where the ring buffer is drained; it
//! takes the model's lock only while a frame copies numbers out.
//!
//! Redraws happen when a frame is taken, a key is pressed or the terminal is resized:
//! never per kernel event.
use std::{
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use ratatui::{
    Terminal,
    backend::Backend,
    crossterm::event::{self, Event},
};
use rustc_hash::FxHashMap;

use super::bell::Bell;
use crate::{
    process::Process,
    top::{
        draw,
        frame::{Frame, Request},
        history::History,
        keys,
        screen::{Clock, Screen},
        state::{State, View},
    },
};

/// Where frames come from: the live model, or a recording being played.
pub trait Source {
    /// The model's start, when every count was zero.
    fn start_ns(&self) -> u64;
    /// A frame now (a replay: at its clock).
    fn frame(&mut self, request: Request) -> (Frame, Clock);
    /// The screen was paused or resumed: a replay's clock stops and goes on.
    fn set_paused(&mut self, _paused: bool) {}
    /// One interval forward while paused (a replay).
    fn step(&mut self, _by: Duration) {}
    /// The container or unit of a process, None for the host. Called only for
    /// processes alive in the last frame, once each.
    fn workload(&mut self, pid: u32) -> Option<String>;
}

pub struct Options {
    pub state: State,
    /// `--pid`: only these in the table.
    pub pids: Vec<u32>,
}

/// Runs until the user quits or `stop` is set.
pub fn run<B: Backend>(
    terminal: &mut Terminal<B>,
    source: &mut dyn Source,
    options: Options,
    bell: &Bell,
) -> Result<()>
where
    B::Error: Send + Sync + 'static,
{
    let Options { mut state, pids } = options;
    let mut history = History::new(source.start_ns());
    let mut workloads: FxHashMap<Process, Option<String>> = FxHashMap::default();
    let mut taken: Option<(Frame, Clock)> = None;
    let mut request = Request::default();
    let mut due = Instant::now();
    let mut redraw = true;
    // The rows on screen, in order, for the keys that move the selection.
    let mut rows = Vec::new();
    while !bell.stopped() {
        let now = Instant::now();
        let wanted = Request {
            focus: match state.view {
                View::Detail(process) => Some(process),
                View::Table => None,
            },
            port: state.active_filter().port(),
        };
        let fresh = taken.is_none() || wanted != request || (!state.paused && now >= due);
        if fresh {
            request = wanted;
            let (frame, clock) = source.frame(request);
            history.observe(&frame.sample);
            // Names of workloads: looked up once per process, outside the lock.
            workloads.retain(|p, _| frame.sample.processes.iter().any(|s| s.process == *p));
            for p in frame.sample.processes.iter().filter(|p| p.alive) {
                workloads
                    .entry(p.process)
                    .or_insert_with(|| source.workload(p.process.pid));
            }
            taken = Some((frame, clock));
            if !state.paused && now >= due {
                due = now + state.interval;
            }
            redraw = true;
        }
        if redraw && let Some((frame, clock)) = &taken {
            let workload_of = |p: &Process| workloads.get(p).cloned().flatten();
            // The selection stays on a shown row: settled before drawing, so the
            // highlight is never a redraw late.
            let shown =
                Screen::new(frame, &history, &state, clock.clone(), &workload_of, &pids).rows;
            state.settle(&shown);
            let screen = Screen::new(frame, &history, &state, clock.clone(), &workload_of, &pids);
            let mut drawn = draw::DrawnLayout::default();
            terminal
                .draw(|f| drawn = draw::draw(f, &screen))
                .context("drawing")?;
            rows = screen.rows;
            state.page = drawn.table_rows.max(1);
            redraw = false;
        }

        // Until the next frame; while paused, until a key, a resize or a stop rings.
        let wait = (!state.paused).then(|| due.saturating_duration_since(Instant::now()));
        // The wait is ours, not crossterm's: once the terminal hangs up (the SSH
        // session, the tmux server went away), crossterm's poll rereads the closed
        // terminal in a loop and never returns, at full speed on one CPU.
        if wait_for_terminal(wait, bell) == Tty::HungUp {
            return Ok(());
        }
        // Whatever woke the wait, crossterm has what there is to read: typed keys, or a
        // resize, which reaches it as a signal rather than as input.
        if !event::poll(Duration::ZERO).context("reading the terminal")? {
            continue;
        }
        match event::read().context("reading the terminal")? {
            Event::Key(key) => {
                let Some(action) = keys::action(key, state.editing.is_some()) else {
                    continue;
                };
                let was_paused = state.paused;
                let interval = state.interval;
                let effect = state.apply(action, &rows);
                if effect.quit {
                    return Ok(());
                }
                if state.paused != was_paused {
                    source.set_paused(state.paused);
                    // Resuming shows what accumulated meanwhile at once.
                    due = Instant::now();
                }
                if effect.step {
                    source.step(state.interval);
                    taken = None;
                }
                if state.interval != interval {
                    due = Instant::now() + state.interval;
                }
                redraw = true;
            }
            Event::Resize(..) => redraw = true,
            _ => {}
        }
    }
    Ok(())
}

/// The terminal after a wait.
#[derive(PartialEq, Eq)]
enum Tty {
    /// Typed into, or not: the wait ended, the bell rang or a signal came.
    Open,
    /// Its other end closed: nothing can be shown or typed any more.
    HungUp,
}

/// Waits up to `wait` (None: for as long as it takes) for input on the terminal
/// (standard input), its hanging up, or `bell`.
fn wait_for_terminal(wait: Option<Duration>, bell: &Bell) -> Tty {
    let watch = |fd: BorrowedFd<'_>| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let mut fds = [watch(std::io::stdin().as_fd()), watch(bell.fd())];
    // Rounded up, so a frame due in under a millisecond is not waited for in a spin
    // of zero-length polls.
    let millis = wait.map_or(-1, |wait| {
        wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
    });
    // SAFETY: two valid pollfds, living across the call.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, millis) };
    if fds[1].revents != 0 {
        bell.quiet();
    }
    // Not ready: timed out, or interrupted by a signal (a resize).
    if ready > 0 && fds[0].revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        Tty::HungUp
    } else {
        Tty::Open
    }
}
