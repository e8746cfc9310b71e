//! A connection's bounded outbound queue and its kill switch. Frames for a
//! peer are queued without waiting; a peer whose queue is full (it stopped
//! reading) is disconnected, so relay memory per connection stays bounded.
//! Also the liveness probe (a WebSocket ping, answered by anything the peer
//! sends) used before a code's connection is replaced by its owner's new one.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Notify};

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
    sender: mpsc::Sender<Outbound>,
    queued_bytes: AtomicUsize,
    byte_budget: usize,
    killed: AtomicBool,
    kill: Notify,
    /// Notified whenever the peer sends anything (see [`Outbox::heard`]).
    heard: Notify,
    /// Set once the connection is paired or in a call by another
    /// connection's doing (see [`Outbox::engage`]).
    engaged: AtomicBool,
    engage: Notify,
    metrics: Arc<Metrics>,
}

impl Outbox {
    pub fn new(
        id: u64,
        frames: usize,
        byte_budget: usize,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, mpsc::Receiver<Outbound>) {
        let (sender, receiver) = mpsc::channel(frames.max(1));
        (
            Arc::new(Self {
                id,
                sender,
                queued_bytes: AtomicUsize::new(0),
                byte_budget,
                killed: AtomicBool::new(false),
                kill: Notify::new(),
                heard: Notify::new(),
                engaged: AtomicBool::new(false),
                engage: Notify::new(),
                metrics,
            }),
            receiver,
        )
    }

    /// Queues `text` for this peer without waiting. A full queue (frames or
    /// bytes) disconnects the peer; returns whether the frame was queued.
    pub fn deliver(&self, text: String) -> bool {
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
        match self.sender.try_send(Outbound::Text(text)) {
            Ok(()) => true,
            Err(_) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                self.kill_slow();
                false
            }
        }
    }

    /// Another connection paired with this one or called it: its session
    /// may now hand out TURN credentials (`crate::ice`). Call before
    /// delivering the frame that says so, so the session sees it first.
    pub fn engage(&self) {
        self.engaged.store(true, Ordering::Release);
        self.engage.notify_one();
    }

    /// Returns once [`Self::engage`] was called.
    pub async fn engaged(&self) {
        while !self.engaged.load(Ordering::Acquire) {
            self.engage.notified().await;
        }
    }

    /// Queues a reply to this connection's own frame, waiting for room (the
    /// caller bounds the wait). Returns false if the connection is gone.
    pub async fn reply(&self, text: String) -> bool {
        let len = text.len();
        self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if self.sender.send(Outbound::Text(text)).await.is_err() {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Queues a close frame without waiting; false if there is no room.
    pub fn close(&self, code: u16, reason: &'static str) -> bool {
        self.sender.try_send(Outbound::Close(code, reason)).is_ok()
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
            self.kill.notify_one();
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
        if self.sender.try_send(Outbound::Ping).is_err() {
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
            self.kill.notify_one();
        }
    }

    /// Whether the connection was told to stop.
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// Completes once the connection is killed for being slow.
    pub async fn killed(&self) {
        if self.is_killed() {
            return;
        }
        self.kill.notified().await;
    }
}
