//! The suites' child-process guard (`common::child_process`) itself: a test
//! that panics still leaves no process behind, grandchildren included, and a
//! child that exits before printing what is awaited is reported at once.

mod common;

use std::panic::AssertUnwindSafe;
use std::process::Command;
use std::time::{Duration, Instant};

use common::child_process::ChildProcess;

const WAIT: Duration = Duration::from_secs(10);

/// Whether `pid` still runs (a zombie waiting to be reaped has stopped running).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state != 'Z' && state != 'X')
        })
        .unwrap_or(false)
}

#[test]
fn a_panicking_test_kills_the_childs_whole_process_group() {
    let mut command = Command::new("sh");
    command.args(["-c", "sleep 600 & echo grandchild $!; wait"]);
    let mut child = ChildProcess::spawn("sh", command).expect("start sh");
    let grandchild: i32 = child
        .wait_for(WAIT, |line| line.strip_prefix("grandchild ")?.parse().ok())
        .expect("the grandchild's pid");
    let shell = child.id() as i32;
    assert!(running(grandchild));

    let test = std::panic::catch_unwind(AssertUnwindSafe(move || {
        let _child = child;
        panic!("a failing test");
    }));
    assert!(test.is_err());

    // SIGKILL is delivered asynchronously: poll /proc until both are gone.
    let deadline = Instant::now() + WAIT;
    while running(shell) || running(grandchild) {
        assert!(
            Instant::now() < deadline,
            "the process group outlived its guard"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_child_that_exits_before_the_awaited_line_is_reported_with_its_output() {
    let mut command = Command::new("sh");
    command.args(["-c", "echo starting; echo no config >&2; exit 3"]);
    let mut child = ChildProcess::spawn("sh", command).expect("start sh");
    let started = Instant::now();
    let error = child
        .wait_for(WAIT, |line| {
            line.strip_prefix("listening on ").map(str::to_string)
        })
        .expect_err("it never listens");
    assert!(started.elapsed() < WAIT, "waited for the timeout: {error}");
    assert!(error.contains("exited"), "{error}");
    assert!(error.contains("starting\n"), "{error}");
    assert!(error.contains("no config\n"), "{error}");
}
