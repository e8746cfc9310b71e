//! A child process of a test (the `relay-lite` binary, coturn, its client):
//! started in a process group of its own and killed with the whole group when
//! dropped, also when the test panics, or by the kernel when the test process
//! dies. Its stdout and stderr lines can be awaited, and are all kept for
//! failure messages. relay-lite cannot dev-depend on the `tests` crate (which
//! depends on relay-lite), so its suites have this small one of their own.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What the child has printed so far, and how many of its two streams are still open.
struct Printed {
    lines: Vec<String>,
    open_streams: usize,
}

/// The printed lines, and the signal that another line (or an end of stream) arrived.
type SharedPrinted = Arc<(Mutex<Printed>, Condvar)>;

/// A running child process; dropping it kills its process group.
pub struct ChildProcess {
    name: String,
    child: Child,
    printed: SharedPrinted,
    /// The first line `wait_for` has not looked at yet.
    next_line: usize,
}

impl ChildProcess {
    /// Starts `command` in a new process group, reading its stdout and stderr by line.
    pub fn spawn(name: &str, mut command: Command) -> Result<Self, String> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; it only sets a flag on the new process.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .map_err(|error| format!("cannot start {name}: {error}"))?;
        let printed: SharedPrinted = Arc::new((
            Mutex::new(Printed {
                lines: Vec::new(),
                open_streams: 2,
            }),
            Condvar::new(),
        ));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        read_lines(stdout, printed.clone());
        read_lines(stderr, printed.clone());
        Ok(Self {
            name: name.to_string(),
            child,
            printed,
            next_line: 0,
        })
    }

    /// Waits up to `timeout` for a line (one not offered before) for which
    /// `matcher` returns something, and returns that.
    pub fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut matcher: impl FnMut(&str) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        let (lock, arrived) = &*self.printed;
        let mut printed = lock.lock().map_err(|_| "a line reader panicked")?;
        loop {
            while let Some(line) = printed.lines.get(self.next_line) {
                self.next_line += 1;
                if let Some(found) = matcher(line) {
                    return Ok(found);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if printed.open_streams == 0 || left.is_zero() {
                break;
            }
            printed = arrived
                .wait_timeout(printed, left)
                .map_err(|_| "a line reader panicked")?
                .0;
        }
        let ended = printed.open_streams == 0;
        drop(printed);
        if ended {
            let status = self.child.wait().ok();
            Err(format!(
                "{} exited ({status:?}) before becoming ready; its output:\n{}",
                self.name,
                self.output()
            ))
        } else {
            Err(format!(
                "{} did not become ready within {timeout:?}; its output:\n{}",
                self.name,
                self.output()
            ))
        }
    }

    /// Everything the process printed so far (stdout and stderr interleaved by line).
    pub fn output(&self) -> String {
        let Ok(printed) = self.printed.0.lock() else {
            return String::new();
        };
        printed
            .lines
            .iter()
            .map(|line| format!("{line}\n"))
            .collect()
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the process alone (not its group).
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits up to `timeout` for the process to exit (after a signal, or by itself).
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not exit within {timeout:?}", self.name));
            }
            // exit has no event to await here but SIGCHLD; a short poll.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        // SAFETY: the group id is the child's pid (process_group(0)); SIGKILL to the whole group.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

/// Reads `stream` by line into `printed` on a thread of its own, until it ends.
fn read_lines(stream: impl Read + Send + 'static, printed: SharedPrinted) {
    std::thread::spawn(move || {
        let (lock, arrived) = &*printed;
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if let Ok(mut printed) = lock.lock() {
                printed.lines.push(line);
            }
            arrived.notify_all();
        }
        if let Ok(mut printed) = lock.lock() {
            printed.open_streams -= 1;
        }
        arrived.notify_all();
    });
}
