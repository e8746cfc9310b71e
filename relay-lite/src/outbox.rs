//! A connection's bounded outbound queue and its kill switch. Frames for a
//! peer are queued without waiting; a peer whose queue is full (it stopped
//! reading) is disconnected, so relay memory per connection stays bounded.
//! Also the liveness probe (a WebSocket ping, answered by anything the peer
//! sends) used before a code's connection is replaced by its owner's new one.
//!
//! The queue is a `VecDeque` under a mutex inside the [`Outbox`] itself, not
//! a channel: it allocates nothing while empty (an idle connection holds no
//! queue block) and gives its memory back once drained after a burst.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::metrics::{Metrics, Refusal};

/// A frame waiting to be written.
#[derive(Debug)]
pub(crate) enum Outbound {
    Text(String),
    /// A WebSocket ping (the liveness probe).
    Ping,
    /// Close with this code and reason, then stop.
    Close(u16, &'static str),
}

/// The sending side of one connection, shared with the directory.
#[derive(Debug)]
pub(crate) struct Outbox {
    pub id: u64,
    queue: Mutex<VecDeque<Outbound>>,
    /// Most frames queued at once.
    frames: usize,
    /// Wakes the writer ([`Receiver`]) when a frame is queued.
    queued: Notify,
    /// Wakes a reply waiting for room when the writer takes a frame.
    room: Notify,
    /// The writer is gone: nothing more can be queued.
    closed: AtomicBool,
    queued_bytes: AtomicUsize,
    byte_budget: usize,
    killed: AtomicBool,
    /// Notified whenever the peer sends anything (see [`Outbox::heard`]).
    heard: Notify,
    /// Set once the connection is paired or in a call by another
    /// connection's doing (see [`Outbox::deliver_engaging`]).
    engaged: AtomicBool,
    /// Wakes the session when the connection is killed or engaged (one
    /// wait for both: each waiter is room in every session).
    attention: Notify,
    metrics: Arc<Metrics>,
}

/// Why a frame was not queued.
enum NotQueued {
    Full(Outbound),
    Closed,
}

/// Queues above this capacity are freed once drained: none is kept, so an
/// idle connection holds no queue block (a few frames' block costs one
/// allocation per burst, far less than the frames themselves).
const KEPT_QUEUE_CAPACITY: usize = 0;

/// The writer's end of an [`Outbox`]: takes the queued frames in order.
/// Dropping it closes the outbox (further frames are refused).
#[derive(Debug)]
pub(crate) struct Receiver {
    outbox: Arc<Outbox>,
}

impl Receiver {
    /// The next frame, waiting for one.
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            let queued = self.outbox.queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            if let Ok(frame) = self.try_recv() {
                return Some(frame);
            }
            queued.await;
        }
    }

    /// The next frame if one is queued.
    pub fn try_recv(&self) -> Result<Outbound, Empty> {
        let frame = {
            let mut queue = self.outbox.lock();
            let frame = queue.pop_front();
            if queue.is_empty() && queue.capacity() > KEPT_QUEUE_CAPACITY {
                *queue = VecDeque::new();
            }
            frame
        };
        match frame {
            Some(frame) => {
                self.outbox.room.notify_one();
                Ok(frame)
            }
            None => Err(Empty),
        }
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.outbox.lock().is_empty()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.outbox.closed.store(true, Ordering::Release);
        self.outbox.room.notify_waiters();
    }
}

/// [`Receiver::try_recv`] found nothing queued.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Empty;

impl Outbox {
    pub fn new(
        id: u64,
        frames: usize,
        byte_budget: usize,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, Receiver) {
        let outbox = Arc::new(Self {
            id,
            queue: Mutex::new(VecDeque::new()),
            frames: frames.max(1),
            queued: Notify::new(),
            room: Notify::new(),
            closed: AtomicBool::new(false),
            queued_bytes: AtomicUsize::new(0),
            byte_budget,
            killed: AtomicBool::new(false),
            heard: Notify::new(),
            engaged: AtomicBool::new(false),
            attention: Notify::new(),
            metrics,
        });
        let receiver = Receiver {
            outbox: outbox.clone(),
        };
        (outbox, receiver)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Outbound>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `frame` if there is room and the writer is there.
    fn try_push(&self, frame: Outbound) -> Result<(), NotQueued> {
        self.push(frame, false)
    }

    /// [`Self::try_push`]; with `engaging`, the connection is marked engaged
    /// (see [`Self::engage`]) under the queue's lock, right after the frame is
    /// queued.
    fn push(&self, frame: Outbound, engaging: bool) -> Result<(), NotQueued> {
        if self.closed.load(Ordering::Acquire) {
            return Err(NotQueued::Closed);
        }
        {
            let mut queue = self.lock();
            if queue.len() >= self.frames {
                return Err(NotQueued::Full(frame));
            }
            queue.push_back(frame);
            if engaging {
                self.engaged.store(true, Ordering::Release);
            }
        }
        self.queued.notify_one();
        if engaging {
            self.attention.notify_one();
        }
        Ok(())
    }

    /// Queues `text` for this peer without waiting. A full queue (frames or
    /// bytes) disconnects the peer; returns whether the frame was queued.
    pub fn deliver(&self, text: String) -> bool {
        self.deliver_as(text, false)
    }

    /// [`Self::deliver`] for the frame that pairs this connection or calls
    /// it (`pair_matched`, `call_offer`): the connection is engaged — its
    /// session may hand out TURN credentials (`crate::ice`) — in the same
    /// step as the frame is queued. So the session's `ice_servers` always
    /// comes after that frame (it queues under the same lock, after seeing
    /// the mark), and before its reply to anything the client sends once it
    /// has read that frame (the session looks at the mark first).
    pub fn deliver_engaging(&self, text: String) -> bool {
        self.deliver_as(text, true)
    }

    fn deliver_as(&self, text: String, engaging: bool) -> bool {
        if self.is_killed() {
            return false;
        }
        let len = text.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before + len > self.byte_budget && before > 0 {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.kill_slow();
            return false;
        }
        match self.push(Outbound::Text(text), engaging) {
            Ok(()) => true,
            Err(_) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                self.kill_slow();
                false
            }
        }
    }

    /// Whether the connection was engaged ([`Self::deliver_engaging`]).
    pub fn is_engaged(&self) -> bool {
        self.engaged.load(Ordering::Acquire)
    }

    /// Completes when the connection may have been killed or engaged since
    /// this was last awaited ([`Self::is_killed`], [`Self::is_engaged`]).
    pub async fn attention(&self) {
        self.attention.notified().await;
    }

    /// Queues a reply to this connection's own frame, waiting for room (the
    /// caller bounds the wait). Returns false if the connection is gone.
    pub async fn reply(&self, text: String) -> bool {
        let len = text.len();
        self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        let mut frame = Outbound::Text(text);
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_push(frame) {
                Ok(()) => return true,
                Err(NotQueued::Closed) => break,
                Err(NotQueued::Full(back)) => frame = back,
            }
            room.await;
        }
        self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
        false
    }

    /// Queues a reply to this connection's own frame if there is room now:
    /// `Ok(false)` if the connection is gone, `Err(text)` back when the
    /// queue is full (then [`Self::reply`] waits for room).
    pub fn try_reply(&self, text: String) -> Result<bool, String> {
        let len = text.len();
        self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        match self.try_push(Outbound::Text(text)) {
            Ok(()) => Ok(true),
            Err(error) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                match error {
                    NotQueued::Full(Outbound::Text(text)) => Err(text),
                    _ => Ok(false),
                }
            }
        }
    }

    /// Queues a close frame without waiting; false if there is no room.
    pub fn close(&self, code: u16, reason: &'static str) -> bool {
        self.try_push(Outbound::Close(code, reason)).is_ok()
    }

    /// The writer took a frame of `len` bytes off the queue.
    pub fn dequeued(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
    }

    /// Disconnects the peer because another connection took its code over.
    pub fn kill_replaced(&self) {
        if !self.killed.swap(true, Ordering::AcqRel) {
            tracing::info!(
                connection = self.id,
                "its code was taken back by a new connection with the same key: disconnecting it"
            );
            self.attention.notify_one();
        }
    }

    /// The peer sent a frame (any frame, pongs included).
    pub fn heard(&self) {
        self.heard.notify_waiters();
    }

    /// Whether the peer shows it is alive: pings it and waits up to `limit`
    /// for any frame from it. False at once if it is gone or not reading.
    pub async fn probe(&self, limit: Duration) -> bool {
        if self.is_killed() {
            return false;
        }
        let heard = self.heard.notified();
        tokio::pin!(heard);
        heard.as_mut().enable();
        if self.try_push(Outbound::Ping).is_err() {
            return false;
        }
        tokio::time::timeout(limit, heard).await.is_ok()
    }

    fn kill_slow(&self) {
        if !self.killed.swap(true, Ordering::AcqRel) {
            self.metrics.refused(Refusal::SlowConsumer);
            tracing::info!(
                connection = self.id,
                "peer stopped reading: disconnecting it"
            );
            self.attention.notify_one();
        }
    }

    /// Whether the connection was told to stop.
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(frames: usize, bytes: usize) -> (Arc<Outbox>, Receiver) {
        Outbox::new(1, frames, bytes, Metrics::new())
    }

    fn text(frame: Outbound) -> String {
        match frame {
            Outbound::Text(text) => text,
            other => panic!("not text: {other:?}"),
        }
    }

    #[tokio::test]
    async fn frames_come_out_in_order_and_a_full_queue_drops_the_peer() {
        let (outbox, mut receiver) = outbox(2, 1 << 20);
        assert!(outbox.deliver("one".into()));
        assert!(outbox.deliver("two".into()));
        assert!(!outbox.is_killed());
        // A third frame finds the queue full: the peer stopped reading.
        assert!(!outbox.deliver("three".into()));
        assert!(outbox.is_killed());
        assert_eq!(text(receiver.recv().await.unwrap()), "one");
        assert_eq!(text(receiver.recv().await.unwrap()), "two");
        assert!(matches!(receiver.try_recv(), Err(Empty)));
        assert!(receiver.is_empty());
    }

    #[tokio::test]
    async fn the_byte_budget_drops_the_peer_too() {
        let (outbox, _receiver) = outbox(100, 10);
        assert!(outbox.deliver("12345678".into()));
        assert!(!outbox.deliver("12345678".into()));
        assert!(outbox.is_killed());
    }

    #[tokio::test]
    async fn a_reply_waits_for_room_and_fails_once_the_writer_is_gone() {
        let (outbox, receiver) = outbox(1, 1 << 20);
        assert_eq!(outbox.try_reply("first".into()), Ok(true));
        // Full: try_reply hands the frame back, reply waits for room.
        assert_eq!(outbox.try_reply("second".into()), Err("second".into()));
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.reply("second".into()).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(text(receiver.try_recv().unwrap()), "first");
        assert!(
            waiting.await.unwrap(),
            "queued once the writer took a frame"
        );
        assert_eq!(text(receiver.try_recv().unwrap()), "second");

        assert_eq!(outbox.try_reply("third".into()), Ok(true));
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.reply("fourth".into()).await }
        });
        tokio::task::yield_now().await;
        drop(receiver);
        assert!(!waiting.await.unwrap(), "no writer: the reply is refused");
        assert_eq!(outbox.try_reply("fifth".into()), Ok(false));
        assert!(!outbox.close(1000, "bye"));
    }

    #[tokio::test]
    async fn a_drained_queue_gives_its_memory_back() {
        let (outbox, receiver) = outbox(256, 1 << 20);
        for n in 0..100 {
            assert!(outbox.deliver(n.to_string()));
        }
        assert!(outbox.lock().capacity() >= 100);
        while receiver.try_recv().is_ok() {}
        assert_eq!(outbox.lock().capacity(), 0);
        // An idle connection's queue holds nothing.
        let (idle, _receiver) = Outbox::new(2, 256, 1 << 20, Metrics::new());
        assert_eq!(idle.lock().capacity(), 0);
    }
}
