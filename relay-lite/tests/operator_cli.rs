//! relay-lite as an operator runs it: configured from the environment alone (as the systemd
//! unit in deploy/ does), logs without ANSI colour codes when stderr is not a terminal, JSON log
//! lines on request, and a port below 1024 refused to an unprivileged user with what to do.

mod common;

use std::process::Command;
use std::time::Duration;

use common::child_process::ChildProcess;

const WAIT: Duration = Duration::from_secs(20);

fn relay_lite() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_relay-lite"));
    // Only what each test sets: no RELAY_LITE_* from the developer's shell.
    for (name, _) in std::env::vars() {
        if name.starts_with("RELAY_LITE_") {
            command.env_remove(name);
        }
    }
    command.env("RUST_LOG", "relay_lite=info");
    command
}

/// The lines that are log lines (stdout carries only "server id" and "listening on").
fn log_lines(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|line| !line.starts_with("server id ") && !line.starts_with("listening on "))
        .collect()
}

#[test]
fn configured_from_the_environment_alone_with_json_log_lines() {
    let mut command = relay_lite();
    command
        .env("RELAY_LITE_LISTEN", "127.0.0.1:0")
        .env("RELAY_LITE_PUBLIC_ENDPOINT", "ws://relay.test:8080")
        .env("RELAY_LITE_REGION", "env-region")
        .env("RELAY_LITE_LOG_FORMAT", "json");
    let mut relay = ChildProcess::spawn("relay-lite", command).expect("start relay-lite");
    // stdout ("listening on") and stderr (the log) are read by two threads, so the two lines
    // arrive in either order: wait for both in one pass.
    let mut listening = false;
    let mut started = None;
    relay
        .wait_for(WAIT, |line| {
            listening |= line.starts_with("listening on ws://127.0.0.1:");
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(line) {
                if json["fields"]["message"] == "relay started" {
                    started = Some(json);
                }
            }
            (listening && started.is_some()).then_some(())
        })
        .expect("listening on the address from RELAY_LITE_LISTEN, and a JSON 'relay started' line");
    let started = started.unwrap();
    assert_eq!(
        started["fields"]["endpoint"], "ws://relay.test:8080",
        "{started}"
    );
    assert_eq!(started["level"], "INFO", "{started}");
    let output = relay.output();
    for line in log_lines(&output) {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "not a JSON log line: {line:?}");
    }
    assert!(!output.contains('\u{1b}'), "{output}");
}

#[test]
fn text_logs_into_a_pipe_carry_no_colour_codes() {
    let mut command = relay_lite();
    command.args(["--listen", "127.0.0.1:0"]);
    let mut relay = ChildProcess::spawn("relay-lite", command).expect("start relay-lite");
    relay
        .wait_for(WAIT, |line| line.contains("relay started").then_some(()))
        .expect("a 'relay started' log line");
    let output = relay.output();
    assert!(
        log_lines(&output)
            .iter()
            .any(|line| line.contains(" INFO ")),
        "{output}"
    );
    assert!(
        !output.contains('\u{1b}'),
        "ANSI codes in a pipe: {output:?}"
    );
}

#[test]
fn a_privileged_port_refused_says_what_to_do() {
    let unprivileged_start: u16 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(1024);
    if unprivileged_start <= 443 {
        eprintln!("this kernel lets anyone bind port 443 (ip_unprivileged_port_start {unprivileged_start}): nothing to refuse");
        return;
    }
    // As root, become nobody for the child (setpriv, util-linux); as anyone else, run as is.
    let root = unsafe { libc::geteuid() } == 0;
    let mut command = if root {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(env!("CARGO_BIN_EXE_relay-lite"));
        command
    } else {
        Command::new(env!("CARGO_BIN_EXE_relay-lite"))
    };
    command.args(["--listen", "127.0.0.1:443"]);
    let output = command.output().expect("run relay-lite");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot listen on 127.0.0.1:443"),
        "{stderr}"
    );
    assert!(stderr.contains("CAP_NET_BIND_SERVICE"), "{stderr}");
}
