//! Polling for a moment while an answer is due
//! (`shoal node --spin-us N`).
//!
//! A lone writer's commit waits about one round trip to a client, and a
//! client that just acknowledged a record waits about as long for the
//! next. When a node's runtime thread has nothing else to do it sleeps in
//! the kernel, and the frame that ends the wait first has to wake it. On a
//! virtual machine whose CPUs halt when idle, that wake-up costs more than
//! the round trip itself. [`Spin`] keeps one runtime thread busy instead:
//! a task that yields in a loop, and tokio polls the sockets (with a zero
//! timeout) between its turns, so the frame is read as soon as it lands.
//!
//! It starts when this node sends a frame after which an answer is due
//! ([`Spin::frame_sent`]): a record that must be acknowledged (a master)
//! or an ack (a client, to which a writing master sends the next record a
//! round trip later). It stops `N` µs after the last such frame, so an
//! idle node does not poll. Each turn also yields the CPU to any other
//! runnable thread (`sched_yield`), so the polling never holds up work
//! that is ready, such as another site's process on the same core. The
//! polling thread must be the one that reads the sockets: it works best
//! with `--worker-threads 1`.

use crate::node::FrameHead;
use shoal_core::wire::{Flags, MessageKind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Most `--spin-us` a node may ask for: longer than a round trip on any
/// network where polling would pay.
pub const MAX_SPIN_US: u64 = 10_000;

/// See the module documentation.
#[derive(Debug)]
pub struct Spin {
    budget: Duration,
    origin: Instant,
    /// When the last frame after which an answer is due left, µs after
    /// `origin` plus one (0: never).
    last: AtomicU64,
    wake: Notify,
    /// Turns the polling task has taken (for tests and curiosity).
    turns: AtomicU64,
}

impl Spin {
    /// A spinner polling for up to `budget` after each frame after which
    /// an answer is due; a zero budget never polls.
    pub fn new(budget: Duration) -> Arc<Spin> {
        Arc::new(Spin {
            budget,
            origin: Instant::now(),
            last: AtomicU64::new(0),
            wake: Notify::new(),
            turns: AtomicU64::new(0),
        })
    }

    fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64 + 1
    }

    fn budget_us(&self) -> u64 {
        self.budget.as_micros() as u64
    }

    /// A frame left for a peer: poll if an answer is due after it.
    pub fn frame_sent(&self, head: FrameHead) {
        if self.budget.is_zero() || !answer_due(head) {
            return;
        }
        let now = self.now_us();
        let prev = self.last.swap(now, Ordering::AcqRel);
        if now.saturating_sub(prev) >= self.budget_us() {
            // The polling task has stopped (or is about to): start it.
            self.wake.notify_one();
        }
    }

    /// Turns taken so far.
    pub fn turns(&self) -> u64 {
        self.turns.load(Ordering::Relaxed)
    }

    /// The polling task: sleeps until a frame after which an answer is due
    /// leaves, then yields in a loop (to tokio, which polls the sockets,
    /// and to the OS, which runs any other ready thread first) until
    /// `budget` has passed since the last such frame.
    pub async fn run(self: Arc<Self>) {
        if self.budget.is_zero() {
            return;
        }
        loop {
            self.wake.notified().await;
            while self
                .now_us()
                .saturating_sub(self.last.load(Ordering::Acquire))
                < self.budget_us()
            {
                self.turns.fetch_add(1, Ordering::Relaxed);
                std::thread::yield_now();
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Is an answer due after this frame: a record its receiver must
/// acknowledge, or an ack (the next record follows it when a master is
/// writing)?
fn answer_due(head: FrameHead) -> bool {
    head.flags.contains(Flags::PERMANENT) || head.kind == Some(MessageKind::Ack)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::frame_head;
    use shoal_core::config::Limits;
    use shoal_core::wire::{encode_frame, Envelope, Message};
    use shoal_core::{ElectionGen, Generation, Lsn, SiteId};

    fn frame_of(flags: Flags, msg: &Message<'_>) -> Vec<u8> {
        let env = Envelope {
            from: SiteId(1),
            generation: Generation(1),
            egen: ElectionGen(1),
            lsn: Lsn::new(1, 64),
            flags,
        };
        let mut out = Vec::new();
        encode_frame(&env, msg, &mut out, &Limits::default()).unwrap();
        out
    }

    fn frame(flags: Flags) -> Vec<u8> {
        frame_of(flags, &Message::Heartbeat)
    }

    fn head(frame: &[u8]) -> FrameHead {
        frame_head(frame).unwrap()
    }

    /// As the node's transport decides: a frame whose head does not
    /// decode starts nothing.
    fn due(frame: &[u8]) -> bool {
        frame_head(frame).is_some_and(answer_due)
    }

    #[test]
    fn only_frames_an_answer_follows_count() {
        assert!(due(&frame(Flags::PERMANENT)));
        assert!(due(&frame(Flags::PERMANENT.with(Flags::NO_SYNC))));
        let ack = Message::Ack {
            lsn: Lsn::new(1, 64),
        };
        assert!(due(&frame_of(Flags::NONE, &ack)));
        assert!(!due(&frame(Flags::NONE)));
        assert!(!due(&frame_of(Flags::NONE, &Message::AliveReq)));
        assert!(!due(b"\x04"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn it_polls_after_a_frame_awaiting_an_ack_and_then_stops() {
        let spin = Spin::new(Duration::from_millis(5));
        tokio::spawn(spin.clone().run());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(spin.turns(), 0, "no frame: no polling");
        spin.frame_sent(head(&frame(Flags::NONE)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(spin.turns(), 0, "a frame nothing answers: no polling");
        spin.frame_sent(head(&frame(Flags::PERMANENT)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let after = spin.turns();
        assert!(after > 0, "a frame awaiting an ack starts the polling");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(spin.turns(), after, "the polling stops after its budget");
        spin.frame_sent(head(&frame(Flags::PERMANENT)));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(spin.turns() > after, "and starts again with the next one");
    }

    #[tokio::test]
    async fn a_zero_budget_never_polls() {
        let spin = Spin::new(Duration::ZERO);
        let task = tokio::spawn(spin.clone().run());
        spin.frame_sent(head(&frame(Flags::PERMANENT)));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends at once")
            .unwrap();
        assert_eq!(spin.turns(), 0);
    }
}
