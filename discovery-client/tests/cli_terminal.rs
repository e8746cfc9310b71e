//! `zajel-discover` at the terminal, as a child process: a stdout closed before anything is
//! printed (`… | head`) ends quietly with the files written; `--help` shows the exit codes
//! both CLIs share; mistyped URLs and missing files are usage errors (exit 2, with a hint).

use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_zajel-discover");

/// Runs the binary with a stdout pipe whose reading end is already closed (every write to it
/// fails with EPIPE, as after `| head` has read its lines).
fn run_into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("zajel-discover runs")
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("zajel-discover runs")
}

fn assert_quiet_success(output: &Output, what: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{what}: {stderr}");
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    assert!(!stderr.contains("Broken pipe"), "{what}: {stderr}");
}

#[test]
fn a_closed_stdout_ends_quietly_after_the_files_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("code.png");
    let svg = dir.path().join("code.svg");
    let output = run_into_closed_pipe(&[
        "qr",
        "encode",
        "--code",
        "ABC234",
        "--server",
        "wss://relay.example",
        "--png",
        png.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    assert_quiet_success(&output, "qr encode");
    assert!(std::fs::metadata(&png).unwrap().len() > 0, "no PNG");
    assert!(std::fs::metadata(&svg).unwrap().len() > 0, "no SVG");

    let cache = dir.path().join("cache.json");
    let cache = cache.to_str().unwrap();
    let added = run(&[
        "referral",
        "add",
        "zajel://REF234?server=wss%3A%2F%2Frelay.example",
        "--cache-file",
        cache,
    ]);
    assert_eq!(added.status.code(), Some(0), "{added:?}");
    for args in [
        &["referral", "list", "--json", "--cache-file", cache][..],
        &["referral", "list", "--cache-file", cache],
        &["cache", "list", "--cache-file", cache],
        &["qr", "decode", "zajel://ABC234", "--json"],
    ] {
        assert_quiet_success(&run_into_closed_pipe(args), &args.join(" "));
    }
}

#[test]
fn every_help_shows_the_shared_exit_codes() {
    for args in [&["--help"][..], &["discover", "--help"], &["txt", "--help"]] {
        let output = run(args);
        let help = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        assert!(
            help.contains(discovery_client::exit::HELP),
            "{args:?}: {help}"
        );
    }
    assert!(discovery_client::exit::HELP.contains("7    only unverified servers found"));
    assert!(discovery_client::exit::HELP.contains("3    no server found"));
}

#[test]
fn mistyped_urls_and_missing_files_exit_2_with_a_hint() {
    for (args, hint) in [
        (
            &[
                "discover",
                "--registry",
                "htp://registry.example",
                "--no-cache",
            ][..],
            "https://registry.example",
        ),
        (
            &["discover", "--server", "ftp://relay.example", "--no-cache"],
            "wss://relay.example",
        ),
        (
            &["discover", "--ca-file", "/nonexistent/ca.pem", "--no-cache"],
            "/nonexistent/ca.pem",
        ),
        (
            &[
                "txt",
                "publish",
                "--registry",
                "htp://r.example",
                "--key-file",
                "/nonexistent.key",
                "--domain",
                "example.org",
            ],
            "--registry",
        ),
        (&["qr", "decode", "--image", "/nonexistent.png"], "--image"),
    ] {
        let output = run(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(hint), "{args:?}: {stderr}");
    }
}

#[test]
fn tables_show_times_as_dates_with_how_long_ago_and_json_keeps_epoch_ms() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache.json");
    let cache = cache.to_str().unwrap();
    let added = run(&[
        "referral",
        "add",
        "--code",
        "REF234",
        "--server",
        "wss://relay.example",
        "--cache-file",
        cache,
    ]);
    assert_eq!(added.status.code(), Some(0), "{added:?}");
    let listed = run(&["referral", "list", "--json", "--cache-file", cache]);
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    let added_ms = json[0]["added_ms"].as_u64().expect("added_ms in JSON");
    let table = run(&["referral", "list", "--cache-file", cache]);
    let table = String::from_utf8_lossy(&table.stdout);
    let date = zajel_client_net::terminal::utc(added_ms);
    assert!(table.contains(&format!("(added {date} (")), "{table}");
    assert!(
        table.contains(" ago)") || table.contains("(just now)"),
        "{table}"
    );
    assert!(
        !table.contains(&added_ms.to_string()),
        "raw epoch ms: {table}"
    );
}
