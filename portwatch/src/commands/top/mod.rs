//! `portwatch top`: a full-screen view of the live model (see docs/top.md).
//!
//! Two threads, as in `serve`: the tracing loop (this runtime) drains the ring buffer
//! into the [`LiveModel`](crate::live::LiveModel) under a mutex, and the screen runs on
//! a thread of its own (`ui`), taking a frame under that lock once per interval and
//! drawing outside it. A replay plays a recording into the same model on the screen's
//! thread, and this runtime only waits for signals.
//!
//! Every way out restores the terminal: `q` or Ctrl-C end the screen's loop, whose
//! guard restores it, and this side drops the tracer (detaching the programs); SIGTERM,
//! SIGINT and SIGHUP end the tracing loop (or the replay's wait), which tells the
//! screen to stop (its [`bell::Bell`]); a panic on either thread runs the restoring
//! panic hook first.
mod bell;
mod live;
mod replay;
mod terminal;
mod ui;

use std::{
    io::{self, IsTerminal as _},
    path::Path,
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use anyhow::{Context as _, Result, anyhow, bail};
use bell::Bell;
use tokio::sync::oneshot;
use ui::Source as _;

use crate::{
    cli::TopArgs,
    commands::{StopSignal, live_feed::LiveFeed, trace},
    detect::ports::PortBudget,
    live::{LiveModel, NamespaceSettings},
    record,
    top::state::State,
};

pub async fn run(args: TopArgs) -> Result<()> {
    require_terminal()?;
    let mut state = State::new(args.sort, args.interval);
    state.paused = args.paused;
    let options = ui::Options {
        state,
        pids: args.pids.clone(),
    };
    match &args.replay {
        Some(path) => replay(path, &args, options).await,
        None => live(&args, options).await,
    }
}

/// A full-screen view written into a pipe or a file is garbage: say what to use instead.
fn require_terminal() -> Result<()> {
    if io::stdout().is_terminal() {
        return Ok(());
    }
    bail!(
        "top draws a full-screen view and needs a terminal, but its standard output is a \
         pipe or a file. For scripts and files use `portwatch report` (trace a window, then \
         name leakers and churners; --format json), `portwatch stream` (every TCP state \
         change as it happens; --format json) or `portwatch serve` (Prometheus metrics)."
    )
}

/// The screen's thread. `done` is dropped when it ends, however it ends, which wakes
/// the runtime.
fn spawn_screen(
    mut source: Box<dyn ui::Source + Send>,
    options: ui::Options,
    bell: Arc<Bell>,
    done: oneshot::Sender<()>,
) -> Result<JoinHandle<Result<()>>> {
    std::thread::Builder::new()
        .name("top-screen".to_owned())
        .spawn(move || {
            let _done = done;
            let mut guard = terminal::TerminalGuard::enter()?;
            ui::run(&mut guard.terminal, &mut *source, options, &bell)
        })
        .context("starting the screen's thread")
}

/// Waits for the screen's thread, which its bell has told to end, and passes on its
/// error.
fn join_screen(screen: Option<JoinHandle<Result<()>>>) -> Result<()> {
    match screen.map(JoinHandle::join) {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(err))) => Err(err),
        // The panic hook restored the terminal and printed the panic.
        Some(Err(_)) => Err(anyhow!("the screen's thread panicked (see above)")),
    }
}

async fn live(args: &TopArgs, options: ui::Options) -> Result<()> {
    let settings = PortBudget::read().context("reading net.ipv4.ip_local_port_range")?;
    let shared = Arc::new(live::Shared {
        live: Mutex::new(LiveModel::new(0, args.summary.limits())),
        settings: Mutex::new(NamespaceSettings::new(settings)),
        thresholds: args.summary.thresholds(),
    });
    let bell = Arc::new(Bell::new().context("making the screen's wakeup socket")?);
    let resizes = bell::ring_on_resize(bell.clone()).context("watching for resizes")?;
    let (done, screen_done) = oneshot::channel();
    let screen: Arc<Mutex<Option<JoinHandle<Result<()>>>>> = Arc::default();
    let start_screen = {
        let (shared, bell, screen) = (shared.clone(), bell.clone(), screen.clone());
        move || {
            let start_ns = shared.live.lock().map_or(0, |live| live.model.start_ns);
            let source = live::LiveSource { shared, start_ns };
            let handle = spawn_screen(Box::new(source), options, bell, done)?;
            *screen.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
            Ok(())
        }
    };
    let mut sink = live::TopSink {
        feed: LiveFeed {
            collect: args.summary.collect.kernel(),
            netns: args.netns,
        },
        shared,
        start_screen: Some(Box::new(start_screen)),
        failed: None,
    };
    let traced = tokio::select! {
        traced = trace::trace(&args.summary.kernel, None, "tracing for top", &mut sink) => traced.map(drop),
        // The user quit: dropping the tracing loop detaches the programs.
        _ = screen_done => Ok(()),
    };
    bell.stop();
    resizes.abort();
    let handle = screen.lock().unwrap_or_else(|e| e.into_inner()).take();
    let shown = join_screen(handle);
    if let Some(err) = sink.failed.take() {
        return Err(err);
    }
    traced?;
    shown
}

async fn replay(path: &Path, args: &TopArgs, options: ui::Options) -> Result<()> {
    let recording = record::read(path)?;
    let mut source = replay::ReplaySource::new(
        recording,
        args.summary.limits(),
        args.summary.thresholds(),
        args.netns,
    )
    .with_context(|| format!("replaying {}", path.display()))?;
    source.set_paused(args.paused);
    let mut signals = StopSignal::install(None).context("installing signal handlers")?;
    let bell = Arc::new(Bell::new().context("making the screen's wakeup socket")?);
    let resizes = bell::ring_on_resize(bell.clone()).context("watching for resizes")?;
    let (done, screen_done) = oneshot::channel();
    let screen = spawn_screen(Box::new(source), options, bell.clone(), done)?;
    tokio::select! {
        () = signals.requested() => {}
        _ = screen_done => {}
    }
    bell.stop();
    resizes.abort();
    join_screen(Some(screen))
}
