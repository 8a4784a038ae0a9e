//! PRIVILEGED: the counting path's kernel counts, read as `report` reads them: every
//! connection counted exactly once, before and after its flows are deleted as idle.
mod common;

use std::time::{Duration, Instant};

use common::{connect_and_close, start_tracer};
use portwatch::bpf::{CountReader, TracerOptions};
use portwatch_common::Collect;

/// This process's connections as the flows count them: (opened, closed, TIME_WAIT).
#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
struct Sums {
    opened: u64,
    closed: u64,
    time_wait: u64,
}

/// Reads until this process's flows add up to `expected` (or fails at a deadline),
/// adding each reading's differences.
fn read_until(reader: &mut CountReader, expected: Sums) -> Sums {
    let pid = std::process::id();
    let mut sums = Sums::default();
    let mut readings = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sums != expected {
        assert!(
            Instant::now() < deadline,
            "counted {sums:?}, expected {expected:?}"
        );
        reader.read_flows(&mut readings).unwrap();
        for (key, now, before) in &readings {
            if key.tgid == pid {
                sums.opened += now.opened - before.opened;
                sums.closed += now.closed - before.closed;
                sums.time_wait += now.time_wait - before.time_wait;
            }
        }
        // The last transitions run in softirq context just after close() returns.
        std::thread::sleep(Duration::from_millis(20));
    }
    sums
}

#[tokio::test]
async fn idle_flows_are_deleted_without_losing_a_count() {
    let (mut tracer, _events) = start_tracer(&TracerOptions {
        collect: Collect::Counts,
        ..TracerOptions::default()
    });
    let reader = tracer.counts().expect("the counting path has its maps");
    reader.set_idle_readings(1);
    // One server address for every connection, so that the second round's
    // connections are the first round's flows, made anew after their deletion.
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let localhost = server.local_addr().unwrap();
    drop(server);

    // Each connection: the client's side and the server's are two connections to the
    // kernel, both this process's; the client closes first (one TIME_WAIT).
    for _ in 0..10 {
        connect_and_close(localhost);
    }
    let first = Sums {
        opened: 20,
        closed: 20,
        time_wait: 10,
    };
    assert_eq!(read_until(reader, first), first);

    // Unchanged for a reading: deleted from the kernel's map, with nothing left over.
    let mut readings = Vec::new();
    reader.read_flows(&mut readings).unwrap();
    reader.read_flows(&mut readings).unwrap();
    assert!(
        reader.deletes_idle_flows(),
        "5.14 and newer delete idle flows"
    );
    let pid = std::process::id();
    assert!(
        readings.iter().all(|(key, _, _)| key.tgid != pid),
        "{readings:?}"
    );
    assert_eq!(
        reader.kernel_flows_of(pid),
        0,
        "idle flows left in the kernel"
    );

    // Made anew from zero: counted exactly again.
    for _ in 0..5 {
        connect_and_close(localhost);
    }
    let second = Sums {
        opened: 10,
        closed: 10,
        time_wait: 5,
    };
    assert_eq!(read_until(reader, second), second);
}
