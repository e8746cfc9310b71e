//! A degraded path (delay and loss) in the censor namespace, for kernels
//! without `sch_netem` (this project's CI kernel has none: `tc qdisc add …
//! netem` answers "Specified qdisc kind is unknown").
//!
//! Every forwarded packet is queued to user space with the kernel's
//! NFQUEUE target (`iptables-legacy`, since the kernel has no nftables
//! `queue` expression), held for the configured delay and then accepted,
//! or dropped. Real packets of real connections take the detour; only the
//! timing and the drops are ours. Loss is deterministic, every `n`th packet
//! in each direction (counted per incoming interface), so a test sees the
//! same loss rate on every run and both directions lose alike.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nfq::{Queue, Verdict};

use crate::netns::Namespace;

/// What the emulator did so far.
#[derive(Debug, Default)]
pub struct PathCounters {
    pub delayed: AtomicU64,
    pub dropped: AtomicU64,
}

/// Delay and loss applied to every packet the censor forwards. Removed
/// (rule and thread) when dropped.
pub struct PathEmulator {
    namespace: String,
    rule: Vec<String>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Option<Result<(), String>>>>,
    counters: Arc<PathCounters>,
}

/// The NFQUEUE number (namespaces have their own queues).
const QUEUE: u16 = 7;

impl PathEmulator {
    /// Delays every packet forwarded by `censor` by `delay`, and drops
    /// every `drop_every`th one of each direction (none when `None`).
    pub fn start(
        censor: &Namespace,
        delay: Duration,
        drop_every: Option<u64>,
    ) -> Result<Self, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(PathCounters::default());
        let (bound, bound_result) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            let counters = counters.clone();
            censor.spawn(move || pump(delay, drop_every, &stop, &counters, bound))?
        };
        bound_result
            .recv()
            .map_err(|_| "the path emulator thread died".to_string())??;
        // Bound first, then the rule: no packet is ever queued to nobody.
        let rule: Vec<String> = [
            "FORWARD",
            "-j",
            "NFQUEUE",
            "--queue-num",
            &QUEUE.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut add = vec!["-A".to_string()];
        add.extend(rule.iter().cloned());
        censor
            .exec(
                "iptables-legacy",
                &add.iter().map(String::as_str).collect::<Vec<_>>(),
            )
            .map_err(|error| format!("{error}\n(scripts/test installs the iptables package)"))?;
        Ok(Self {
            namespace: censor.name().to_string(),
            rule,
            stop,
            thread: Some(thread),
            counters,
        })
    }

    /// Packets delayed and dropped so far.
    pub fn counters(&self) -> &PathCounters {
        &self.counters
    }
}

impl Drop for PathEmulator {
    fn drop(&mut self) {
        let mut delete = vec!["netns", "exec", &self.namespace, "iptables-legacy", "-D"];
        delete.extend(self.rule.iter().map(String::as_str));
        let _ = std::process::Command::new("ip").args(&delete).output();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Receives queued packets and gives each its verdict when it is due.
fn pump(
    delay: Duration,
    drop_every: Option<u64>,
    stop: &AtomicBool,
    counters: &PathCounters,
    bound: std::sync::mpsc::Sender<Result<(), String>>,
) -> Result<(), String> {
    let setup = || -> std::io::Result<Queue> {
        let mut queue = Queue::open()?;
        queue.bind(QUEUE)?;
        queue.set_queue_max_len(QUEUE, 4096)?;
        // Should this thread ever stop answering, packets flow on unharmed.
        queue.set_fail_open(QUEUE, true)?;
        queue.set_nonblocking(true);
        Ok(queue)
    };
    let mut queue = match setup() {
        Ok(queue) => {
            let _ = bound.send(Ok(()));
            queue
        }
        Err(error) => {
            let message = format!("NFQUEUE {QUEUE}: {error}");
            let _ = bound.send(Err(message.clone()));
            return Err(message);
        }
    };
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    // Packets seen per incoming interface (one per direction).
    let mut seen: std::collections::HashMap<u32, u64> = std::collections::HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        loop {
            match queue.recv() {
                Ok(mut message) => {
                    let count = seen.entry(message.get_indev()).or_default();
                    *count += 1;
                    let count = *count;
                    if drop_every.is_some_and(|n| n > 0 && count.is_multiple_of(n)) {
                        message.set_verdict(Verdict::Drop);
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        queue.verdict(message).map_err(|e| e.to_string())?;
                    } else {
                        held.push_back((Instant::now() + delay, message));
                    }
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(format!("NFQUEUE receive: {error}")),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, mut message) = held.pop_front().expect("front exists");
            message.set_verdict(Verdict::Accept);
            counters.delayed.fetch_add(1, Ordering::Relaxed);
            queue.verdict(message).map_err(|e| e.to_string())?;
        }
        // The packet clock: 1 ms resolution is plenty for audio paths.
        std::thread::sleep(Duration::from_millis(1));
    }
    for (_, mut message) in held {
        message.set_verdict(Verdict::Accept);
        let _ = queue.verdict(message);
    }
    Ok(())
}
