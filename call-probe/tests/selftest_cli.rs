//! The `call-probe selftest` command end to end: one loopback call between two in-process
//! engines, its JSON report, and its refusals of bad flags.

use std::process::Command;

fn call_probe() -> Command {
    Command::new(env!("CARGO_BIN_EXE_call-probe"))
}

#[test]
fn selftest_prints_both_reports_as_json() {
    // The command bounds itself: every step has --step-timeout.
    let output = call_probe()
        .args([
            "selftest",
            "--json",
            "--caller-hz",
            "500",
            "--callee-hz",
            "1200",
        ])
        .args(["--step-timeout", "20"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reports: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for (side, end, heard) in [
        ("caller", "hangup_local", 1200.0),
        ("callee", "hangup_remote", 500.0),
    ] {
        let report = &reports[side];
        assert_eq!(report["role"], side);
        assert_eq!(report["end"]["kind"], end);
        assert_eq!(report["dtls"]["srtp_profile_is_aes_gcm"], true);
        assert_eq!(report["ice"]["selected_pair"]["local"]["kind"], "host");
        assert_eq!(
            report["ice"]["selected_pair"]["remote"]["address"],
            "127.0.0.1"
        );
        let detected = report["tone"]["detected"]["frequency_hz"].as_f64().unwrap();
        assert!((detected - heard).abs() <= 3.0, "{side}: {detected}");
        assert!(report["rtp"]["rtt_ms"].as_f64().unwrap() > 0.0);
        assert!(report["timeline"]["first_rtp_ms"].as_f64().is_some());
    }
    assert_eq!(reports["caller"]["call_id"], reports["callee"]["call_id"]);
}

#[test]
fn selftest_prints_tables_by_default() {
    let output = call_probe()
        .args(["selftest", "--no-rtt", "--step-timeout", "20"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    for needle in [
        "== caller ==",
        "== callee ==",
        "SRTP_AEAD_AES_128_GCM",
        "host udp 127.0.0.1:",
    ] {
        assert!(stdout.contains(needle), "{needle} missing in\n{stdout}");
    }
}

#[test]
fn selftest_with_an_echoing_callee() {
    let output = call_probe()
        .args([
            "selftest",
            "--json",
            "--echo",
            "--no-rtt",
            "--caller-hz",
            "700",
        ])
        .args(["--step-timeout", "20"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let reports: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    for side in ["caller", "callee"] {
        let heard = reports[side]["tone"]["detected"]["frequency_hz"]
            .as_f64()
            .unwrap();
        assert!((heard - 700.0).abs() <= 3.0, "{side}: {heard}");
    }
    assert_eq!(
        reports["callee"]["tone"]["sent_hz"],
        serde_json::Value::Null
    );
}

#[test]
fn bad_flags_are_refused_clearly() {
    for (args, expect) in [
        (
            vec!["selftest", "--caller-hz", "20"],
            "--caller-hz must be between 100 and 4000 Hz",
        ),
        (
            vec!["selftest", "--step-timeout", "0"],
            "--step-timeout must be at least 1 second",
        ),
        (
            vec!["selftest", "--caller-hz", "loud"],
            "invalid value 'loud'",
        ),
        (vec!["dial"], "unrecognized subcommand"),
    ] {
        let output = call_probe().args(&args).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
    }
}

#[test]
fn a_closed_stdout_ends_quietly_with_the_commands_own_exit_code() {
    // `check` against a port nothing listens on prints its report and exits 3 (no server):
    // into a pipe whose reader is gone (`| head`), the same exit code and no panic.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}", closed.local_addr().unwrap());
    drop(closed);
    for json in [true, false] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut command = call_probe();
        command.args([
            "check",
            "--server",
            &url,
            "--allow-private",
            "--no-cache",
            "--layer-timeout-ms",
            "1000",
        ]);
        if json {
            command.arg("--json");
        }
        let output = command
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "json {json}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!stderr.contains("Broken pipe"), "{stderr}");
    }
}

#[test]
fn every_help_lists_the_shared_exit_codes() {
    for args in [
        &["--help"][..],
        &["call", "--help"],
        &["answer", "--help"],
        &["check", "--help"],
    ] {
        let output = call_probe().args(args).output().unwrap();
        let help = String::from_utf8_lossy(&output.stdout);
        assert!(help.contains("3    no server found"), "{args:?}: {help}");
        assert!(help.contains("130  interrupted"), "{args:?}: {help}");
    }
}
