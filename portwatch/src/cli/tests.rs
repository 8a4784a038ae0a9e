use clap::CommandFactory;

use super::*;

#[test]
fn cli_is_well_formed() {
    Cli::command().debug_assert();
}

#[test]
fn sizes() {
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("512K"), Ok(512 << 10));
    assert_eq!(parse_size("8M"), Ok(8 << 20));
    assert_eq!(parse_size("16MiB"), Ok(16 << 20));
    assert_eq!(parse_size("1g"), Ok(1 << 30));
    // Would wrap to 1G with a plain shift.
    assert_eq!(
        parse_size("17179869185G"),
        Err("17179869185G is larger than 4G".to_string())
    );
    assert!(parse_size("18446744073709551615K").is_err());
    assert!(parse_size("8X").is_err());
    assert!(parse_size("8G").is_err());
    assert_eq!(parse_ring_buffer_size("16M"), Ok(16 << 20));
    assert!(
        parse_ring_buffer_size("3M")
            .unwrap_err()
            .contains("power of two")
    );
    assert!(parse_ring_buffer_size("2K").is_err());
}

#[test]
fn durations() {
    assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert!(parse_duration("10").unwrap_err().contains("e.g. 10s"));
    assert!(parse_duration("0s").is_err());
}

#[test]
fn stream_options_parse() {
    let cli = Cli::try_parse_from([
        "portwatch",
        "stream",
        "--format",
        "json",
        "--pid",
        "1",
        "--pid",
        "2",
        "--port",
        "80",
        "--state",
        "close-wait",
        "--duration",
        "5s",
    ])
    .unwrap();
    let Command::Stream(args) = cli.command else {
        panic!("parsed as {:?}", cli.command);
    };
    assert_eq!(args.format, Format::Json);
    assert_eq!(args.pids, [1, 2]);
    assert_eq!(args.ports, [80]);
    assert_eq!(args.states, [TcpState::CloseWait]);
    assert_eq!(args.duration, Some(Duration::from_secs(5)));
    assert_eq!(args.kernel.ring_buffer_size, 8 << 20);
}

#[test]
fn limits_parse_with_defaults_and_refuse_zero() {
    let report = |args: &[&str]| {
        let cli = Cli::try_parse_from(["portwatch", "report"].iter().chain(args))?;
        match cli.command {
            Command::Report(args) => Ok::<_, clap::Error>(args.summary.limits()),
            other => panic!("parsed as {other:?}"),
        }
    };
    assert_eq!(report(&[]).unwrap(), Limits::default());
    let limits = report(&[
        "--max-sockets",
        "256",
        "--max-processes",
        "8",
        "--max-destinations",
        "4",
    ])
    .unwrap();
    assert_eq!(
        limits,
        Limits {
            max_sockets: 256,
            max_processes: 8,
            max_destinations: 4
        }
    );
    for flag in ["--max-sockets", "--max-processes", "--max-destinations"] {
        assert!(report(&[flag, "0"]).is_err(), "{flag} 0");
    }
}

#[test]
fn snapshot_options_parse() {
    let cli = Cli::try_parse_from([
        "portwatch",
        "snapshot",
        "--format",
        "json",
        "--state",
        "close-wait",
        "--state",
        "TIME_WAIT",
    ])
    .unwrap();
    let Command::Snapshot(args) = cli.command else {
        panic!("parsed as another command")
    };
    assert_eq!(args.format, Format::Json);
    assert_eq!(args.states, [TcpState::CloseWait, TcpState::TimeWait]);
    let cli = Cli::try_parse_from(["portwatch", "snapshot"]).unwrap();
    let Command::Snapshot(args) = cli.command else {
        panic!("parsed as another command")
    };
    assert_eq!(args.format, Format::Text);
    assert!(args.states.is_empty());
}

#[test]
fn bad_state_is_a_usage_error() {
    let err = Cli::try_parse_from(["portwatch", "stream", "--state", "OPEN"]).unwrap_err();
    assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
}

#[test]
fn top_options_parse() {
    let cli = Cli::try_parse_from([
        "portwatch",
        "top",
        "--interval",
        "500ms",
        "--sort",
        "connections",
        "--pid",
        "7",
        "--replay",
        "w.pwrec",
    ])
    .unwrap();
    let Command::Top(args) = cli.command else {
        panic!("parsed as {:?}", cli.command);
    };
    assert_eq!(args.interval, Duration::from_millis(500));
    assert_eq!(args.sort, crate::top::sort::SortKey::Connections);
    assert_eq!(args.pids, [7]);
    assert_eq!(args.replay, Some("w.pwrec".into()));
    let Command::Top(args) = Cli::try_parse_from(["portwatch", "top"]).unwrap().command else {
        panic!("not top");
    };
    assert_eq!(args.interval, Duration::from_secs(1));
    assert_eq!(args.sort, crate::top::sort::SortKey::CloseWait);
    for bad in [
        &["--interval", "10ms"][..],
        &["--interval", "2h"],
        &["--sort", "nope"],
    ] {
        let parsed = Cli::try_parse_from(["portwatch", "top"].iter().chain(bad));
        assert!(parsed.is_err(), "{bad:?} parsed");
    }
}

#[test]
fn actor_is_hidden_from_help() {
    let help = Cli::command().render_help().to_string();
    assert!(!help.contains("actor"), "{help}");
}

fn actor(args: &[&str]) -> ActorArgs {
    let cli = Cli::try_parse_from(["portwatch", "actor"].iter().chain(args))
        .unwrap_or_else(|err| panic!("{args:?}: {err}"));
    let Command::Actor(actor) = cli.command else {
        panic!("parsed as {:?}", cli.command);
    };
    actor
}

#[test]
fn actor_roles_parse() {
    let args = actor(&[
        "churn-client",
        "--connect",
        "[::1]:8080",
        "--rate",
        "0.5",
        "--count",
        "10",
        "--duration",
        "2s",
        "--threads",
        "4",
        "--until-stdin-eof",
    ]);
    assert!(args.until_stdin_eof);
    let ActorRole::ChurnClient(churn) = args.role else {
        panic!("parsed as {:?}", args.role);
    };
    assert_eq!(churn.connect, "[::1]:8080".parse().unwrap());
    assert_eq!(churn.rate, 0.5);
    assert_eq!(churn.count, Some(10));
    assert_eq!(churn.duration, Some(Duration::from_secs(2)));
    assert_eq!(churn.threads, 4);

    let args = actor(&[
        "--until-stdin-eof",
        "leak-server",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert!(args.until_stdin_eof);
    let ActorRole::LeakServer(leak) = args.role else {
        panic!("parsed as {:?}", args.role);
    };
    assert_eq!(leak.listen, "127.0.0.1:0".parse().unwrap());
    assert_eq!(leak.leak, None);

    let args = actor(&[
        "keepalive-client",
        "--connect",
        "127.0.0.1:80",
        "--interval",
        "100ms",
    ]);
    assert!(!args.until_stdin_eof);
    let ActorRole::KeepaliveClient(keepalive) = args.role else {
        panic!("parsed as {:?}", args.role);
    };
    assert_eq!(keepalive.interval, Duration::from_millis(100));
    assert_eq!(keepalive.duration, None);
}

#[test]
fn bad_actor_arguments_are_usage_errors() {
    let bad: [&[&str]; 8] = [
        // Benchmark and test roles are portwatch-workload's, not the product's.
        &["hold-server", "--listen", "127.0.0.1:0"],
        &["prefork-server", "--listen", "127.0.0.1:0", "--leak", "1"],
        &["leak-server", "--listen", "localhost:80"],
        &[
            "leak-server",
            "--listen",
            "127.0.0.1:0",
            "--leak",
            "3",
            "--leak-all",
        ],
        &["leak-server", "--listen", "127.0.0.1:0", "--leak", "0"],
        &["churn-client", "--connect", "127.0.0.1:80", "--rate", "-1"],
        &["churn-client", "--connect", "127.0.0.1:80", "--rate", "NaN"],
        &[
            "keepalive-client",
            "--connect",
            "127.0.0.1:80",
            "--interval",
            "0s",
        ],
    ];
    for args in bad {
        let parsed = Cli::try_parse_from(["portwatch", "actor"].iter().chain(args));
        assert!(parsed.is_err(), "{args:?} parsed");
    }
}
