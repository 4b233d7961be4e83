//! Polling for a moment while a commit waits for its acks
//! (`shoal node --spin-us N`).
//!
//! A lone writer's commit waits about one round trip to a client. When the
//! node's runtime thread has nothing else to do, it sleeps in the kernel,
//! and the ack that answers the commit first has to wake it. On a virtual
//! machine whose CPUs halt when idle, that wake-up costs more than the
//! round trip itself. [`Spin`] keeps one runtime thread busy instead: a
//! task that yields in a loop, and tokio polls the sockets (with a zero
//! timeout) between its turns, so the ack is read as soon as it lands.
//!
//! It runs only after a frame that must be acknowledged left this node
//! (a PERMANENT record: [`Spin::frame_sent`]) and stops `N` µs after the
//! last such frame, so an idle node does not spin. The polling thread must
//! be the one that reads the sockets: it works best with
//! `--worker-threads 1`.

use shoal_core::wire::{Envelope, Flags};
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
    /// When the last frame awaiting an ack left, µs after `origin` plus
    /// one (0: never).
    last: AtomicU64,
    wake: Notify,
    /// Turns the polling task has taken (for tests and curiosity).
    turns: AtomicU64,
}

impl Spin {
    /// A spinner polling for up to `budget` after each frame awaiting an
    /// ack; a zero budget never polls.
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

    /// A frame left for a peer: poll if it carries a record that must be
    /// acknowledged.
    pub fn frame_sent(&self, frame: &[u8]) {
        if self.budget.is_zero() || !awaits_ack(frame) {
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

    /// The polling task: sleeps until a frame awaiting an ack leaves, then
    /// yields in a loop until `budget` has passed since the last one.
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
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Does this frame carry a record its receiver must acknowledge?
fn awaits_ack(frame: &[u8]) -> bool {
    frame
        .get(2..)
        .and_then(|b| postcard::take_from_bytes::<Envelope>(b).ok())
        .is_some_and(|(env, _)| env.flags.contains(Flags::PERMANENT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::config::Limits;
    use shoal_core::wire::{encode_frame, Message};
    use shoal_core::{ElectionGen, Generation, Lsn, SiteId};

    fn frame(flags: Flags) -> Vec<u8> {
        let env = Envelope {
            from: SiteId(1),
            generation: Generation(1),
            egen: ElectionGen(1),
            lsn: Lsn::new(1, 64),
            flags,
        };
        let mut out = Vec::new();
        encode_frame(&env, &Message::Heartbeat, &mut out, &Limits::default()).unwrap();
        out
    }

    #[test]
    fn only_frames_awaiting_an_ack_count() {
        assert!(awaits_ack(&frame(Flags::PERMANENT)));
        assert!(awaits_ack(&frame(Flags::PERMANENT.with(Flags::NO_SYNC))));
        assert!(!awaits_ack(&frame(Flags::NONE)));
        assert!(!awaits_ack(b"\x04"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn it_polls_after_a_frame_awaiting_an_ack_and_then_stops() {
        let spin = Spin::new(Duration::from_millis(5));
        tokio::spawn(spin.clone().run());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(spin.turns(), 0, "no frame: no polling");
        spin.frame_sent(&frame(Flags::NONE));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(spin.turns(), 0, "a frame no ack answers: no polling");
        spin.frame_sent(&frame(Flags::PERMANENT));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let after = spin.turns();
        assert!(after > 0, "a frame awaiting an ack starts the polling");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(spin.turns(), after, "the polling stops after its budget");
        spin.frame_sent(&frame(Flags::PERMANENT));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(spin.turns() > after, "and starts again with the next one");
    }

    #[tokio::test]
    async fn a_zero_budget_never_polls() {
        let spin = Spin::new(Duration::ZERO);
        let task = tokio::spawn(spin.clone().run());
        spin.frame_sent(&frame(Flags::PERMANENT));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends at once")
            .unwrap();
        assert_eq!(spin.turns(), 0);
    }
}
