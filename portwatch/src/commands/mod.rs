//! One module per subcommand: each wires the tracer, the model and an output together.
pub mod snapshot;
pub mod stream;

use std::time::Duration;

/// Resolves when the user asks portwatch to stop (Ctrl-C, SIGTERM) or `duration` passes.
pub async fn stop_requested(duration: Option<Duration>) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let deadline = async {
        match duration {
            Some(duration) => tokio::time::sleep(duration).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
        () = deadline => {}
    }
    Ok(())
}
