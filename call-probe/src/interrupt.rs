//! Ctrl-C and SIGTERM as a value the call steps await: [`Interrupt`] says whether (and by which
//! signal) the person at the terminal asked to stop, so `call` hangs up with `call_hangup` and
//! prints its report, and `answer` hangs up the call in progress, instead of the process dying
//! mid-call. [`Interrupt::from_signals`] listens to the process's signals (a second one exits
//! at once with [`exit::INTERRUPTED`](discovery_client::exit::INTERRUPTED)); [`Interrupt::manual`]
//! is the same thing fired by hand (tests); [`Interrupt::never`] is the default.
//!
//! [`Progress`] is the other direction: one line for the person at the terminal each time a
//! run reaches a step worth knowing while it runs (connected, hanging up), so a run printing
//! `--json` at its end still says what it is doing.

use std::sync::Arc;

use tokio::sync::watch;

/// Whether the run was asked to stop, and by what (`"SIGINT"`, `"SIGTERM"`, a test's name).
#[derive(Clone)]
pub struct Interrupt(Option<watch::Receiver<Option<&'static str>>>);

/// Fires a [`Interrupt::manual`].
pub struct InterruptTrigger(watch::Sender<Option<&'static str>>);

impl InterruptTrigger {
    /// Asks the run to stop, naming why.
    pub fn fire(&self, why: &'static str) {
        let _ = self.0.send(Some(why));
    }
}

impl std::fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Interrupt").field(&self.fired_by()).finish()
    }
}

impl Default for Interrupt {
    fn default() -> Self {
        Self::never()
    }
}

impl Interrupt {
    /// An interrupt that never fires.
    pub fn never() -> Self {
        Self(None)
    }

    /// An interrupt fired through the returned trigger.
    pub fn manual() -> (InterruptTrigger, Self) {
        let (sender, receiver) = watch::channel(None);
        (InterruptTrigger(sender), Self(Some(receiver)))
    }

    /// Fires on SIGINT (Ctrl-C) or SIGTERM; a second signal exits the process at once with
    /// exit code 130. Must be called inside a Tokio runtime. The handlers are installed before
    /// this returns, so a signal sent once the caller says it is running is never lost (nor
    /// ignored, when the process inherited SIGINT ignored, as from a non-interactive shell's
    /// background job).
    pub fn from_signals() -> Self {
        let (trigger, interrupt) = Self::manual();
        let mut signals = Signals::install();
        tokio::spawn(async move {
            let mut count = 0;
            loop {
                let why = signals.next().await;
                count += 1;
                if count > 1 {
                    eprintln!("{why} again: exiting without waiting");
                    std::process::exit(i32::from(discovery_client::exit::INTERRUPTED));
                }
                eprintln!("{why}: hanging up (again to exit at once)");
                trigger.fire(why);
            }
        });
        interrupt
    }

    /// The signal that fired, if one did.
    pub fn fired_by(&self) -> Option<&'static str> {
        self.0.as_ref().and_then(|receiver| *receiver.borrow())
    }

    /// Waits until the interrupt fires; returns what fired it.
    pub async fn fired(&mut self) -> &'static str {
        let Some(receiver) = &mut self.0 else {
            return std::future::pending().await;
        };
        loop {
            if let Some(why) = *receiver.borrow_and_update() {
                return why;
            }
            if receiver.changed().await.is_err() {
                // The trigger is gone without firing: never fires.
                return std::future::pending().await;
            }
        }
    }
}

/// The process's stop signals, listened to from the moment they are installed.
#[cfg(unix)]
struct Signals {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
}

#[cfg(unix)]
impl Signals {
    fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        Self {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
        }
    }

    /// The next SIGINT or SIGTERM (never, if neither could be installed).
    async fn next(&mut self) -> &'static str {
        async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    if signal.recv().await.is_none() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = recv(&mut self.interrupt) => "SIGINT",
            _ = recv(&mut self.terminate) => "SIGTERM",
        }
    }
}

#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> Self {
        Self
    }

    async fn next(&mut self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}

/// Hears one progress line.
type Say = dyn Fn(&str) + Send + Sync;

/// Where a run says what it is doing while it runs (nowhere by default).
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<Say>>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress(on)"
        } else {
            "Progress(off)"
        })
    }
}

impl Progress {
    /// Hands each line to `say`.
    pub fn to(say: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(say)))
    }

    /// Each line on stderr, prefixed `call-probe: `.
    pub fn stderr() -> Self {
        Self::to(|line| eprintln!("call-probe: {line}"))
    }

    /// Says `line` (if anyone listens).
    pub fn say(&self, line: &str) {
        if let Some(say) = &self.0 {
            say(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_interrupt_fires_once_fired_and_never_one_does_not() {
        let (trigger, mut interrupt) = Interrupt::manual();
        assert_eq!(interrupt.fired_by(), None);
        let mut waiting = interrupt.clone();
        let waiter = tokio::spawn(async move { waiting.fired().await });
        trigger.fire("test");
        assert_eq!(waiter.await.unwrap(), "test");
        assert_eq!(interrupt.fired().await, "test");
        assert_eq!(interrupt.fired_by(), Some("test"));

        let mut never = Interrupt::never();
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(20), never.fired()).await;
        assert!(waited.is_err(), "never fired");
    }

    #[test]
    fn progress_hands_each_line_over() {
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = lines.clone();
        let progress = Progress::to(move |line| seen.lock().unwrap().push(line.to_string()));
        progress.say("connected");
        Progress::default().say("nobody hears this");
        assert_eq!(*lines.lock().unwrap(), ["connected"]);
    }
}
