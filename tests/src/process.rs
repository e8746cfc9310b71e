//! Child processes for tests: started in their own process group, killed
//! with the group when dropped (also when a test fails), killed by the kernel
//! if the test process dies, with their output kept for failure reports.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Sets `command` up as every child of the harness runs: no stdin, stdout and stderr piped,
/// in a process group of its own (so the whole group can be killed), and killed by the kernel
/// if the test process dies first.
pub fn contain(command: &mut Command) {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; it only sets a flag on the child.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A running child process and everything it has printed so far.
pub struct ChildProcess {
    name: String,
    child: Child,
    lines: Mutex<Receiver<String>>,
    output: Arc<Mutex<String>>,
}

impl ChildProcess {
    /// Starts `command` in a new process group, capturing stdout and stderr.
    pub fn spawn(name: &str, mut command: Command) -> Result<Self, String> {
        contain(&mut command);
        let mut child = command
            .spawn()
            .map_err(|error| format!("cannot start {name}: {error}"))?;
        let (sender, lines) = mpsc::channel();
        let output = Arc::new(Mutex::new(String::new()));
        let stdout = child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>);
        for stream in [stdout, stderr].into_iter().flatten() {
            let sender = sender.clone();
            let output = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut all) = output.lock() {
                        all.push_str(&line);
                        all.push('\n');
                    }
                    let _ = sender.send(line);
                }
            });
        }
        Ok(Self {
            name: name.to_string(),
            child,
            lines: Mutex::new(lines),
            output,
        })
    }

    /// Waits for a line for which `matcher` returns something, and returns it.
    pub fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut matcher: impl FnMut(&str) -> Option<T>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let received = self
                .lines
                .lock()
                .map_err(|_| "output reader poisoned".to_string())?
                .recv_timeout(left);
            match received {
                Ok(line) => {
                    if let Some(found) = matcher(&line) {
                        return Ok(found);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{} did not become ready within {timeout:?}; its output:\n{}",
                        self.name,
                        self.output()
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    return Err(format!(
                        "{} exited ({status:?}) before becoming ready; its output:\n{}",
                        self.name,
                        self.output()
                    ));
                }
            }
        }
    }

    /// Everything the process printed so far (stdout and stderr interleaved by line).
    pub fn output(&self) -> String {
        self.output
            .lock()
            .map(|all| all.clone())
            .unwrap_or_default()
    }

    /// The exit status, if the process has exited.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to the process alone.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// Waits for the process to exit (after a signal).
    pub fn wait(&mut self, timeout: Duration) -> Result<std::process::ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("{} did not exit within {timeout:?}", self.name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the whole process group at once (SIGKILL) and reaps the child.
    pub fn kill(&mut self) {
        // SAFETY: the group id is the child's pid (process_group(0)).
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
