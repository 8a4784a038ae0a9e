//! The namespace pass's assertions: two servers on 127.0.0.1:8080, each in its own
//! network namespace, told apart in events and in the report.
use serde_json::Value;

use super::checks::{Outcome, Skipped, process};

/// The namespace pass's two servers: (pid, netns inode) each.
pub struct NetnsServers {
    pub leaker: (u32, u64),
    pub echo: (u32, u64),
    /// Connections made to each.
    pub connections: usize,
}

/// Every transition of a server-side socket on port 8080 carries its server's
/// namespace and is charged to that namespace's server; each namespace's accepted
/// connections are all there.
pub fn netns_events(events: &[Value], servers: &NetnsServers, skipped: Skipped) -> Outcome {
    if servers.leaker.1 == servers.echo.1 {
        return Err(format!("the two servers share netns {}", servers.leaker.1));
    }
    let mut detail = Vec::new();
    for (name, (pid, netns), new_state) in [
        ("leaker", servers.leaker, "CLOSE_WAIT"),
        ("echo", servers.echo, "ESTABLISHED"),
    ] {
        let server_side: Vec<&Value> = events
            .iter()
            .filter(|e| e["sport"] == 8080 && e["netns"] == netns)
            .collect();
        if let Some(wrong) = server_side
            .iter()
            .find(|e| e["pid"] != pid && e["old_state"] != "LISTEN")
        {
            return Err(format!("{name} (pid {pid}, netns {netns}): {wrong}"));
        }
        let reached = server_side
            .iter()
            .filter(|e| e["new_state"] == new_state)
            .count();
        if !skipped.allows(servers.connections, reached) {
            return Err(format!(
                "{name} (netns {netns}): {reached} sockets reached {new_state}, expected {}{}",
                servers.connections,
                skipped.note()
            ));
        }
        detail.push(format!(
            "{name}: {reached} {new_state} in netns {netns}, pid {pid}"
        ));
    }
    let unstamped = events.iter().filter(|e| e["netns"] == 0).count();
    if unstamped > 0 {
        return Err(format!("{unstamped} events with netns 0"));
    }
    Ok(detail.join("; "))
}

/// The report charges each server with its own namespace's connections only.
pub fn netns_report(report: &Value, servers: &NetnsServers) -> Outcome {
    let (leaker, echo) = (
        process(report, servers.leaker.0).ok_or("no leaker in the report")?,
        process(report, servers.echo.0).ok_or("no echo server in the report")?,
    );
    let close_waits = leaker["states"]["CLOSE_WAIT"].as_u64().unwrap_or(0);
    let echo_close_waits = echo["states"]["CLOSE_WAIT"].as_u64().unwrap_or(0);
    let (leaker_opened, echo_opened) = (
        leaker["opened_passive"].as_u64(),
        echo["opened_passive"].as_u64(),
    );
    let expected = Some(servers.connections as u64);
    if close_waits != servers.connections as u64
        || echo_close_waits != 0
        || leaker_opened != expected
        || echo_opened != expected
    {
        return Err(format!(
            "leaker: {close_waits} CLOSE_WAIT, {leaker_opened:?} accepted; echo: \
             {echo_close_waits} CLOSE_WAIT, {echo_opened:?} accepted; expected {} each",
            servers.connections
        ));
    }
    Ok(format!(
        "leaker {close_waits} CLOSE_WAIT, echo {} accepted, each its own",
        servers.connections
    ))
}
