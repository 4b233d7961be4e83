//! The async driver over a [`Site`]: a [`Node`] owns the
//! site (with its [`Storage`]), a [`NodeTransport`] and a [`Clock`], runs the
//! site's inputs and outputs in one loop ([`Node::run`]) and offers the
//! application API as `async fn`s.
//!
//! # Runtime independence
//!
//! Everything is built on `embassy-sync` and `core::future`: no executor, no
//! timer and no thread is assumed. The host supplies time twice: a
//! [`Clock`] (what time is it) and a [`Timer`] (wake me at that time), which
//! must share one time base. A tokio host implements `Timer` with
//! `tokio::time::sleep_until`, a browser with a `setTimeout` promise, an
//! embassy firmware with `embassy_time::Timer::at`:
//!
//! ```ignore
//! struct TokioTimer(tokio::time::Instant); // the origin of shoal's Instant(0)
//! impl shoal_core::node::Timer for TokioTimer {
//!     fn sleep_until(&self, at: shoal_core::Instant) -> impl core::future::Future<Output = ()> {
//!         tokio::time::sleep_until(self.0 + std::time::Duration::from_micros(at.0))
//!     }
//! }
//! ```
//!
//! The mutex flavour `M` is the host's choice:
//! [`NoopRawMutex`](embassy_sync::blocking_mutex::raw::NoopRawMutex) when
//! the node, its driver and the application share one executor (a browser,
//! a single-executor firmware, a current-thread runtime);
//! [`CriticalSectionRawMutex`](embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex)
//! when they run on several threads (tokio's multi-thread runtime: the node
//! is then `Sync` and its futures `Send` when `S`, `T` and `C` are `Send`).
//! Any final binary then needs a `critical-section` implementation (see
//! `TOOLCHAIN.md`).
//!
//! # Design
//!
//! - **Two locks, never nested the wrong way.** The site, the transport and
//!   the pending flush live behind an async
//!   [`embassy_sync::mutex::Mutex`] ("the core lock"); the small queues the
//!   application and the transport touch (incoming frames, connection
//!   changes, events, answer slots, wakers, counters) live behind a blocking
//!   [`embassy_sync::blocking_mutex::Mutex`] ("the shared lock"). The site
//!   does real work under its lock (decoding, log reads and appends, the
//!   `Storage::sync` of a flush), and with `CriticalSectionRawMutex` a
//!   blocking lock is a critical section: on a microcontroller it masks
//!   interrupts, on std it is one process-wide lock. So the site is never
//!   behind a blocking lock; only O(1) bookkeeping is. The shared lock is
//!   only ever taken inside the core lock, never the other way round, and
//!   no lock is held across an `.await`. Tasks queue for the core lock in
//!   turn behind a fair semaphore, so a release wakes exactly the next
//!   waiter (embassy's async mutex alone keeps one waker: many waiters
//!   would wake one another in a loop, eating the CPU the holder needs).
//! - **Application calls run on the caller's task.** `commit`, `join`,
//!   `txn_applied`, … take the core lock, call the site directly (so a
//!   refusal such as NotMaster is returned at once), register interest in
//!   the answer by request id, signal the driver, and wait. `commit` also
//!   drains the site's outputs itself (its records go to the transport at
//!   once) and signals the driver only when a flush or a parked event needs
//!   it. Answers are
//!   routed to a bounded table of slots ([`NodeLimits::waiters`]), each with
//!   its own waker: no polling. When every slot is taken the call fails at
//!   once with `Busy`. A call's slot is reserved *before* the site is asked
//!   and armed with the request id while the core lock is still held; the
//!   driver drains the site's outputs only under that lock, so an answer can
//!   never arrive before its slot is armed. Dropping a waiting future frees
//!   its slot (the request itself goes on; its answer is discarded).
//! - **The driver** ([`Node::run`]) waits for the earliest of: a signal (a
//!   frame or connection change delivered, an application call queued work,
//!   an event consumed after the event queue was full), or the site's next
//!   deadline ([`Site::poll_timeout`]) through the [`Timer`]. Each step it
//!   drains the site's pending outputs, feeds connection changes, the
//!   INQUEUE_FULL notice and the frames queued when the step began (a flood
//!   cannot starve the rest), fires deadlines, and drains outputs after
//!   every input (after every 64 frames, for frames, so a client sends one
//!   ack for a batch of records): `Send` to the transport (a failed send is dropped and
//!   counted; the protocol re-requests what is lost), `Event` to the event
//!   queue, `Answer` to its slot, `Flush` only noted.
//! - **Group commit.** Flush requests are merged (the highest LSN wins) and
//!   served once at the end of a step: one `Storage::sync` then
//!   [`Site::handle_flushed`], whose outputs are drained in turn. Every
//!   commit queued before the step, by any number of tasks, shares that one
//!   sync. A failed sync is counted and retried after [`FLUSH_RETRY`]; the
//!   commits it holds stay unanswered until a sync succeeds. A host whose
//!   fsync can wait on its own ([`Node::with_syncer`]) has it run beside
//!   the driver instead, one at a time, serving every flush asked for
//!   before it started: the driver never waits for a disk, so a slow
//!   fsync delays the commits that asked for it and nothing else.
//! - **Events are never dropped.** The event queue holds
//!   [`NodeLimits::events`] events; when it is full the driver parks the
//!   next event and pauses (no frames, timeouts or flushes are processed,
//!   so later answers wait too) until the application takes one with
//!   [`Node::next_event`]. The application must therefore consume events
//!   (one task looping on `next_event` is the usual shape) or the node
//!   stops. Frames that arrive meanwhile fill the incoming queue and are
//!   then dropped with INQUEUE_FULL, as for any slow consumer (R13).
//! - **Incoming frames** ([`Node::deliver`]) are queued without blocking,
//!   bounded in bytes by [`Limits::max_inqueue_bytes`] (each frame is
//!   charged its length plus [`FRAME_CHARGE`], so empty frames are bounded
//!   too). When a frame does not fit it is dropped, `Err(InqueueFull)` is
//!   returned, and the driver calls [`Site::handle_inqueue_full`] once per
//!   overflow episode, which raises [`Event::InqueueFull`] (R13). Frames
//!   longer than [`Limits::max_frame`] are dropped (and counted) at once:
//!   the site would refuse them anyway.
//! - **Connection changes** ([`Node::connection`]) are coalesced per site
//!   (at most `2 × max_sites` sites pending): the driver replays the first
//!   reported state, and the final one, with a blip in between when the
//!   state flipped and came back. So a break followed by a reconnect is
//!   never lost, and the table cannot grow. Failed connection attempts
//!   ([`Node::connect_failed`]) are deduplicated the same way.
//! - **Address sends.** [`Output::Send`] to a [`Dest::Address`] (a joiner,
//!   or the helper a site joins through) goes to
//!   [`NodeTransport::send_to_address`], a trait that extends
//!   [`Transport`] so `traits.rs` stays as it is for hosts that drive a
//!   `Site` by hand.
//! - **Reads** ([`Node::get`]) wait while the site is synchronising with its
//!   master (S5), woken by the driver once it is not; with NOWAIT configured
//!   they fail with [`ReadError::Lockout`] at once instead.
//! - **Stopping.** [`Node::stop`] makes `run` return at its next wake; `run`
//!   may be called again later, and dropping the `run` future is safe too
//!   (a parked event and a pending flush are kept in the node). Run one
//!   driver per node.

use crate::config::{Durability, Limits};
use crate::ids::{CommitToken, Instant, Lsn, SiteId};
use crate::log::Op;
use crate::site::{
    Answer, ChannelRequestError, ChannelSendError, ChannelTarget, CommitError, CommitOutcome, Dest,
    Event, Incoming, JoinError, Output, ReadError, ReplyTo, RequestId, Site, WaitError,
};
use crate::traits::{Clock, SendError, Storage, Transport};
use crate::wire::ChannelError;
use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;
use core::future::{poll_fn, Future};
use core::pin::{pin, Pin};
use core::task::{Poll, Waker};
use core::time::Duration;
use embassy_sync::blocking_mutex::raw::RawMutex;
use embassy_sync::blocking_mutex::Mutex as BlockingMutex;
use embassy_sync::mutex::{Mutex as AsyncMutex, MutexGuard as AsyncGuard};
use embassy_sync::semaphore::{FairSemaphore, Semaphore, SemaphoreReleaser};
use embassy_sync::signal::Signal;
use embassy_sync::waitqueue::{MultiWakerRegistration, WakerRegistration};

/// Bytes each queued incoming frame is charged on top of its length.
pub const FRAME_CHARGE: usize = 64;

/// Wait before retrying a failed `Storage::sync`.
pub const FLUSH_RETRY: Duration = Duration::from_millis(100);

/// When a deadline is still due right after the site handled it, the
/// driver sleeps this long instead of spinning.
/// Tasks that can queue for the core lock in turn (see [`Node::lock_core`]);
/// more wait on the lock itself.
const GATE_QUEUE: usize = 128;

/// Frames the driver hands the site between two drains of its outputs.
const DRAIN_EVERY: usize = 64;

const MIN_SLEEP: Duration = Duration::from_millis(1);

/// Tasks that may wait on one multi-waiter condition before they are all
/// woken to re-register (a bound, not a limit on waiters).
const WAKERS: usize = 8;

/// Time in async form: the driver's way to wait for the site's next
/// deadline without knowing the runtime.
pub trait Timer {
    /// A future that completes at or after `at`, measured on the same time
    /// base as the node's [`Clock`]. Completing early is harmless (the
    /// driver just waits again); completing late delays timeouts.
    fn sleep_until(&self, at: Instant) -> impl Future<Output = ()>;
}

/// A [`Transport`] that can also reach a site known only by address (a
/// site asking to join, or the helper this site joins through).
pub trait NodeTransport: Transport {
    /// Queue one frame for the site at `address`. Must never block.
    fn send_to_address(&mut self, address: &str, frame: &[u8]) -> Result<(), SendError>;
}

/// Sizes of the node's own queues (the site's are in [`Limits`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NodeLimits {
    /// Events queued for the application before the driver pauses; also
    /// the channel messages queued for the dispatch ([`Node::next_message`],
    /// W2), past which a message is dropped and a request answered
    /// NoResponse.
    pub events: usize,
    /// Application calls that may wait for an answer at once (commits,
    /// `txn_applied`, `remove_site`); past it they fail with `Busy`.
    pub waiters: usize,
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            events: 64,
            waiters: 64,
        }
    }
}

/// The incoming queue is full: the frame (or connection change) was not
/// taken. For frames the site raises [`Event::InqueueFull`] (R13).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct InqueueFull;

impl fmt::Display for InqueueFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "incoming queue full")
    }
}

/// The driver's counters.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct NodeStats {
    /// Frames accepted by [`Node::deliver`].
    pub frames_queued: u64,
    /// Frames dropped because the incoming queue was full.
    pub frames_dropped: u64,
    /// Frames dropped for exceeding [`Limits::max_frame`].
    pub frames_oversized: u64,
    /// Frames the transport refused (full, disconnected, unknown).
    pub send_failures: u64,
    /// Successful `Storage::sync` calls.
    pub flushes: u64,
    /// Failed `Storage::sync` calls.
    pub flush_failures: u64,
    /// Events handed to the application.
    pub events: u64,
    /// Driver steps.
    pub steps: u64,
    /// Channel messages dropped because the message queue was full (a
    /// request among them was answered NoResponse, W2).
    pub messages_dropped: u64,
}

#[derive(Debug)]
enum SlotState {
    Free,
    Reserved,
    Waiting(RequestId),
    Done(Answer),
}

#[derive(Debug)]
struct Slot {
    state: SlotState,
    waker: WakerRegistration,
}

/// Pending connection changes of one site, coalesced.
#[derive(Clone, Copy, Debug)]
struct ConnChange {
    site: SiteId,
    first: bool,
    last: bool,
    flips: u8,
}

struct JoinState {
    /// Bumped at every `Answer::Join`.
    epoch: u64,
    result: Option<Result<SiteId, JoinError>>,
    wakers: MultiWakerRegistration<WAKERS>,
}

/// Everything behind the shared (blocking) lock.
struct Shared {
    inq: VecDeque<Vec<u8>>,
    inq_bytes: usize,
    inq_overflow: bool,
    conns: Vec<ConnChange>,
    /// Sites the host failed to connect to (deduplicated).
    failed: Vec<SiteId>,
    events: VecDeque<Event>,
    /// An event that did not fit; the driver is paused until it does.
    parked: Option<Event>,
    event_wakers: MultiWakerRegistration<WAKERS>,
    /// Channel messages for the application's dispatch (W2), at most
    /// [`NodeLimits::events`].
    messages: VecDeque<Incoming>,
    message_wakers: MultiWakerRegistration<WAKERS>,
    slots: Vec<Slot>,
    join: JoinState,
    /// Bumped after each step that ends with the site not synchronising.
    progress: u64,
    readers: MultiWakerRegistration<WAKERS>,
    /// The deadline the driver waits for after its last step (None: only a
    /// signal wakes it).
    driver_wake: Option<Instant>,
    stop: bool,
    stats: NodeStats,
}

/// Everything behind the core (async) lock.
struct Core<S: Storage, T> {
    site: Site<S>,
    transport: T,
    /// Highest LSN a flush was asked for and not yet done.
    flush: Option<Lsn>,
    /// After a failed sync: not before this time.
    flush_retry: Option<Instant>,
}

/// The core lock, held; its place in the queue is given up after it.
struct CoreGuard<'a, M: RawMutex, S: Storage, T> {
    guard: AsyncGuard<'a, M, Core<S, T>>,
    _pass: Option<SemaphoreReleaser<'a, FairSemaphore<M, GATE_QUEUE>>>,
}

impl<M: RawMutex, S: Storage, T> core::ops::Deref for CoreGuard<'_, M, S, T> {
    type Target = Core<S, T>;
    fn deref(&self) -> &Core<S, T> {
        &self.guard
    }
}

impl<M: RawMutex, S: Storage, T> core::ops::DerefMut for CoreGuard<'_, M, S, T> {
    fn deref_mut(&mut self) -> &mut Core<S, T> {
        &mut self.guard
    }
}

/// Counters the driver gathers under the core lock, added to the shared
/// ones at the end of a step.
#[derive(Default)]
struct StepStats {
    send_failures: u64,
    flushes: u64,
    flush_failures: u64,
    /// The last site a send to failed (an application call's own frame is
    /// the last one it drains: its channel message, W2).
    failed_to: Option<SiteId>,
}

/// The async driver of one site. See the module documentation.
pub struct Node<S: Storage, T, C, M: RawMutex> {
    core: AsyncMutex<M, Core<S, T>>,
    /// The queue in front of the core lock (see [`Node::lock_core`]).
    gate: FairSemaphore<M, GATE_QUEUE>,
    shared: BlockingMutex<M, RefCell<Shared>>,
    kick: Signal<M, ()>,
    /// Wakes the sync loop: a flush was asked for ([`Node::with_syncer`]).
    sync_kick: Signal<M, ()>,
    clock: C,
    limits: Limits,
    node_limits: NodeLimits,
    nowait: bool,
    /// Makes what the storage wrote out durable without the core lock
    /// ([`Node::with_syncer`]); `None`: [`Storage::sync`] under the lock.
    syncer: Option<Syncer>,
}

/// A reserved answer slot; dropping it frees the slot.
struct SlotGuard<'a, M: RawMutex> {
    shared: &'a BlockingMutex<M, RefCell<Shared>>,
    index: usize,
}

impl<M: RawMutex> SlotGuard<'_, M> {
    fn arm(&self, id: RequestId) {
        self.shared.lock(|s| {
            if let Some(slot) = s.borrow_mut().slots.get_mut(self.index) {
                slot.state = SlotState::Waiting(id);
            }
        });
    }

    async fn wait(&self) -> Answer {
        poll_fn(|cx| {
            self.shared.lock(|s| {
                let mut s = s.borrow_mut();
                let Some(slot) = s.slots.get_mut(self.index) else {
                    return Poll::Pending;
                };
                if matches!(slot.state, SlotState::Done(_)) {
                    if let SlotState::Done(a) =
                        core::mem::replace(&mut slot.state, SlotState::Reserved)
                    {
                        return Poll::Ready(a);
                    }
                }
                slot.waker.register(cx.waker());
                Poll::Pending
            })
        })
        .await
    }
}

impl<M: RawMutex> Drop for SlotGuard<'_, M> {
    fn drop(&mut self) {
        self.shared.lock(|s| {
            if let Some(slot) = s.borrow_mut().slots.get_mut(self.index) {
                slot.state = SlotState::Free;
                slot.waker = WakerRegistration::new();
            }
        });
    }
}

/// One fsync of the host's, under way (see [`Node::with_syncer`]): true
/// once everything written out before it started is durable, false if it
/// failed.
pub type SyncFuture = Pin<Box<dyn Future<Output = bool> + Send>>;

/// The host's fsync for [`Node::with_syncer`].
type Syncer = Box<dyn Fn() -> SyncFuture + Send + Sync>;

/// Complete when either future completes.
async fn either<A: Future, B: Future>(a: A, b: B) {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if a.as_mut().poll(cx).is_ready() || b.as_mut().poll(cx).is_ready() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

fn answer_id(a: &Answer) -> Option<RequestId> {
    match a {
        Answer::Commit { id, .. }
        | Answer::TxnApplied { id, .. }
        | Answer::Remove { id, .. }
        | Answer::Channel { id, .. } => Some(*id),
        Answer::Join { .. } => None,
    }
}

impl<S, T, C, M> Node<S, T, C, M>
where
    S: Storage,
    T: NodeTransport,
    C: Clock,
    M: RawMutex,
{
    /// A node over an opened site, with default [`NodeLimits`].
    pub fn new(site: Site<S>, transport: T, clock: C) -> Self {
        Self::with_limits(site, transport, clock, NodeLimits::default())
    }

    /// A node over an opened site. Zero limits are raised to one.
    pub fn with_limits(site: Site<S>, transport: T, clock: C, node_limits: NodeLimits) -> Self {
        let node_limits = NodeLimits {
            events: node_limits.events.max(1),
            waiters: node_limits.waiters.max(1),
        };
        let limits = site.config().limits;
        let nowait = site.config().nowait;
        let slots = (0..node_limits.waiters)
            .map(|_| Slot {
                state: SlotState::Free,
                waker: WakerRegistration::new(),
            })
            .collect();
        let shared = Shared {
            inq: VecDeque::new(),
            inq_bytes: 0,
            inq_overflow: false,
            conns: Vec::new(),
            failed: Vec::new(),
            events: VecDeque::new(),
            parked: None,
            event_wakers: MultiWakerRegistration::new(),
            messages: VecDeque::new(),
            message_wakers: MultiWakerRegistration::new(),
            slots,
            join: JoinState {
                epoch: 0,
                result: None,
                wakers: MultiWakerRegistration::new(),
            },
            progress: 0,
            readers: MultiWakerRegistration::new(),
            driver_wake: None,
            stop: false,
            stats: NodeStats::default(),
        };
        Node {
            gate: FairSemaphore::new(1),
            core: AsyncMutex::new(Core {
                site,
                transport,
                flush: None,
                flush_retry: None,
            }),
            shared: BlockingMutex::new(RefCell::new(shared)),
            kick: Signal::new(),
            sync_kick: Signal::new(),
            clock,
            limits,
            node_limits,
            nowait,
            syncer: None,
        }
    }

    /// Sync the log with `sync` instead of [`Storage::sync`], beside the
    /// driver rather than inside its step: [`Node::run`] then also runs a
    /// sync loop that hands the records to the operating system with
    /// [`Storage::write_out`] under the core lock and awaits the future
    /// `sync` returns without it. Meanwhile the driver goes on handling
    /// frames, deadlines (heartbeats: a slow disk does not make a master
    /// look gone) and application calls, and the next sync serves every
    /// flush asked for during this one (group commit). The future must
    /// make durable everything written out before `sync` was called, must
    /// not block the executor (a tokio host runs the fsync with
    /// `spawn_blocking`), and returns false when it failed (the flush is
    /// retried like a failed [`Storage::sync`], after [`FLUSH_RETRY`]).
    pub fn with_syncer<F>(mut self, sync: impl Fn() -> F + Send + Sync + 'static) -> Self
    where
        F: Future<Output = bool> + Send + 'static,
    {
        self.syncer = Some(Box::new(move || Box::pin(sync()) as SyncFuture));
        self
    }

    /// Take the node apart (shutdown, or a simulated crash). Queued frames,
    /// events and answers are dropped.
    pub fn into_parts(self) -> (Site<S>, T, C) {
        let core = self.core.into_inner();
        (core.site, core.transport, self.clock)
    }

    /// The node's clock.
    pub fn clock(&self) -> &C {
        &self.clock
    }

    /// The driver's counters.
    pub fn stats(&self) -> NodeStats {
        self.shared.lock(|s| s.borrow().stats)
    }

    fn with_shared<R>(&self, f: impl FnOnce(&mut Shared) -> R) -> R {
        self.shared.lock(|s| f(&mut s.borrow_mut()))
    }

    /// Take the core lock, queueing in turn. embassy's async mutex keeps
    /// one waker: each new waiter wakes the one before, so many tasks
    /// waiting for it (a busy server's requests while the driver syncs the
    /// log) wake one another in a loop that eats the CPU the holder needs.
    /// A fair semaphore in front lets one task at a time wait on the lock
    /// and wakes exactly the next one; past `GATE_QUEUE` waiting tasks,
    /// the rest wait on the lock directly.
    async fn lock_core(&self) -> CoreGuard<'_, M, S, T> {
        let pass = self.gate.acquire(1).await.ok();
        let guard = self.core.lock().await;
        CoreGuard { guard, _pass: pass }
    }

    // ----- inputs from the host ----------------------------------------------

    /// A frame arrived from a peer. Never blocks. When the incoming queue
    /// (bounded by [`Limits::max_inqueue_bytes`]) is full, the frame is
    /// dropped, `Err(InqueueFull)` returned, and the site raises
    /// [`Event::InqueueFull`]; lost records are re-requested later.
    pub fn deliver(&self, frame: Vec<u8>) -> Result<(), InqueueFull> {
        if frame.len() > self.limits.max_frame as usize {
            self.with_shared(|s| s.stats.frames_oversized += 1);
            return Ok(());
        }
        let charge = frame.len().saturating_add(FRAME_CHARGE);
        let cap = self.limits.max_inqueue_bytes as usize;
        let r = self.with_shared(|s| {
            if s.inq_bytes.saturating_add(charge) > cap {
                s.stats.frames_dropped += 1;
                s.inq_overflow = true;
                Err(InqueueFull)
            } else {
                s.inq_bytes += charge;
                s.inq.push_back(frame);
                s.stats.frames_queued += 1;
                Ok(())
            }
        });
        self.kick.signal(());
        r
    }

    /// The host's connection to `site` opened (`up`) or broke. Never
    /// blocks; fails only when changes for `2 × max_sites` different sites
    /// are already pending.
    pub fn connection(&self, site: SiteId, up: bool) -> Result<(), InqueueFull> {
        let cap = 2 * self.limits.max_sites as usize;
        let r = self.with_shared(|s| {
            if let Some(c) = s.conns.iter_mut().find(|c| c.site == site) {
                if c.last != up {
                    c.last = up;
                    c.flips = c.flips.saturating_add(1);
                }
                Ok(())
            } else if s.conns.len() < cap {
                s.conns.push(ConnChange {
                    site,
                    first: up,
                    last: up,
                    flips: 0,
                });
                Ok(())
            } else {
                Err(InqueueFull)
            }
        });
        if r.is_ok() {
            self.kick.signal(());
        }
        r
    }

    /// The host's attempt to connect to `site` failed. Never blocks;
    /// repeats before the driver runs count once, and it fails only when
    /// `2 × max_sites` different sites are already pending.
    pub fn connect_failed(&self, site: SiteId) -> Result<(), InqueueFull> {
        let cap = 2 * self.limits.max_sites as usize;
        let r = self.with_shared(|s| {
            if s.failed.contains(&site) {
                Ok(())
            } else if s.failed.len() < cap {
                s.failed.push(site);
                Ok(())
            } else {
                Err(InqueueFull)
            }
        });
        if r.is_ok() {
            self.kick.signal(());
        }
        r
    }

    /// Make [`Node::run`] return at its next wake.
    pub fn stop(&self) {
        self.with_shared(|s| s.stop = true);
        self.kick.signal(());
    }

    // ----- the driver ----------------------------------------------------------

    /// The driver loop: runs until [`Node::stop`]. See the module
    /// documentation for what one step does.
    pub async fn run(&self, timer: &impl Timer) {
        match &self.syncer {
            None => self.drive(timer).await,
            // The sync loop never ends: `drive` returning ends both.
            Some(sync) => either(self.drive(timer), self.sync_loop(sync)).await,
        }
    }

    /// The driver's loop (see [`Node::run`]).
    async fn drive(&self, timer: &impl Timer) {
        loop {
            if self.with_shared(|s| core::mem::take(&mut s.stop)) {
                return;
            }
            match self.step().await {
                None => self.kick.wait().await,
                Some(at) => either(self.kick.wait(), timer.sleep_until(at)).await,
            }
        }
    }

    /// One step. Returns the deadline to wait for (None: only a signal).
    async fn step(&self) -> Option<Instant> {
        // A parked event goes first; while it does not fit, the node pauses.
        let paused = self.with_shared(|s| {
            s.stats.steps += 1;
            match s.parked.take() {
                Some(e) if s.events.len() >= self.node_limits.events => {
                    s.parked = Some(e);
                    true
                }
                Some(e) => {
                    s.events.push_back(e);
                    s.stats.events += 1;
                    s.event_wakers.wake();
                    false
                }
                None => false,
            }
        });
        if paused {
            return None;
        }
        let mut guard = self.lock_core().await;
        let core = &mut *guard;
        let now = self.clock.now();
        let mut st = StepStats::default();
        // Outputs of application calls made since the last step.
        let mut paused = self.drain(core, &mut st);
        let (conns, failed, overflow, frames) = self.with_shared(|s| {
            (
                core::mem::take(&mut s.conns),
                core::mem::take(&mut s.failed),
                core::mem::take(&mut s.inq_overflow),
                s.inq.len(),
            )
        });
        for c in conns {
            let mut states: heapless::Vec<bool, 3> = heapless::Vec::new();
            let _ = states.push(c.first);
            if c.first == c.last && c.flips >= 2 {
                let _ = states.push(!c.first);
                let _ = states.push(c.first);
            } else if c.first != c.last {
                let _ = states.push(c.last);
            }
            for up in states {
                core.site.handle_connection(now, c.site, up);
            }
        }
        for site in failed {
            core.site.handle_connect_failed(now, site);
        }
        if overflow {
            core.site.handle_inqueue_full(now);
        }
        if !paused {
            paused = self.drain(core, &mut st);
        }
        let mut handled = 0usize;
        for _ in 0..frames {
            if paused {
                break;
            }
            let frame = self.with_shared(|s| {
                let f = s.inq.pop_front();
                if let Some(f) = &f {
                    s.inq_bytes = s.inq_bytes.saturating_sub(f.len() + FRAME_CHARGE);
                }
                f
            });
            let Some(frame) = frame else { break };
            // A frame the site cannot use is counted by the site; never fatal.
            let _ = core.site.handle_frame(now, &frame);
            // Outputs are taken every few frames rather than after each, so
            // what the site coalesces (a client's acks) goes out once per
            // batch; the site's output queue stays bounded by the batch.
            handled += 1;
            if handled % DRAIN_EVERY == 0 {
                paused = self.drain(core, &mut st);
            }
        }
        if !paused {
            paused = self.drain(core, &mut st);
        }
        if !paused && core.site.poll_timeout().is_some_and(|t| t <= now) {
            core.site.handle_timeout(now);
            paused = self.drain(core, &mut st);
        }
        // Group commit: one sync for every flush asked for so far, by the
        // sync loop beside this one when the host gave a syncer, else here.
        if self.syncer.is_some() {
            if core.flush.is_some() && core.flush_retry.is_none_or(|t| t <= now) {
                self.sync_kick.signal(());
            }
        } else {
            paused = self.sync_inline(core, now, paused, &mut st);
        }
        let synchronizing = core.site.is_synchronizing();
        let mut next = core.site.poll_timeout();
        if core.flush.is_some() {
            if let Some(t) = core.flush_retry {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        }
        let next = if paused {
            None
        } else {
            next.map(|t| if t <= now { now + MIN_SLEEP } else { t })
        };
        // Still the shared lock inside the core lock: readers that checked
        // the site before this point see the bump.
        self.with_shared(|s| {
            s.stats.send_failures += st.send_failures;
            s.stats.flushes += st.flushes;
            s.stats.flush_failures += st.flush_failures;
            s.driver_wake = next;
            if !synchronizing {
                s.progress += 1;
                s.readers.wake();
            }
        });
        drop(guard);
        next
    }

    /// Group commit under the core lock, when the host gave no syncer: one
    /// [`Storage::sync`] for every flush asked for so far. Returns whether
    /// the node must pause.
    fn sync_inline(
        &self,
        core: &mut Core<S, T>,
        now: Instant,
        mut paused: bool,
        st: &mut StepStats,
    ) -> bool {
        while let Some(lsn) = core.flush {
            if core.flush_retry.is_some_and(|t| t > now) {
                break;
            }
            match core.site.storage_mut().sync() {
                Ok(()) => {
                    st.flushes += 1;
                    core.flush = None;
                    core.flush_retry = None;
                    core.site.handle_flushed(self.clock.now(), lsn);
                    if paused {
                        break;
                    }
                    paused = self.drain(core, st);
                }
                Err(_) => {
                    st.flush_failures += 1;
                    core.flush_retry = Some(now + FLUSH_RETRY);
                    break;
                }
            }
        }
        paused
    }

    /// Group commit beside the driver (see [`Node::with_syncer`]): woken
    /// when a flush is asked for, it writes the log out under the core
    /// lock, awaits the host's sync without it, and hands the site what is
    /// now durable. One sync at a time; the flush asked for stays noted
    /// until its sync succeeded, so a `run` dropped mid-sync loses nothing.
    /// Never returns.
    async fn sync_loop(&self, sync: &Syncer) {
        loop {
            self.sync_kick.wait().await;
            while let Some(lsn) = self.write_out_for_sync().await {
                let synced = sync().await;
                if !self.synced(lsn, synced).await {
                    break;
                }
            }
        }
    }

    /// Write the log out for a sync, if a flush is due and the node is not
    /// paused (a parked event: the driver moves it first, then wakes this
    /// loop again). Returns the LSN the sync will make durable.
    async fn write_out_for_sync(&self) -> Option<Lsn> {
        let mut guard = self.lock_core().await;
        let core = &mut *guard;
        let lsn = core.flush?;
        let now = self.clock.now();
        if core.flush_retry.is_some_and(|t| t > now) || self.with_shared(|s| s.parked.is_some()) {
            return None;
        }
        if core.site.storage_mut().write_out().is_err() {
            self.sync_failed(core, lsn, now);
            return None;
        }
        Some(lsn)
    }

    /// A sync up to `lsn` ended. Returns whether to look for the next one.
    async fn synced(&self, lsn: Lsn, ok: bool) -> bool {
        let mut guard = self.lock_core().await;
        let core = &mut *guard;
        let now = self.clock.now();
        if !ok {
            self.sync_failed(core, lsn, now);
            return false;
        }
        // What was asked for during the sync stays for the next one.
        if core.flush.is_some_and(|f| f <= lsn) {
            core.flush = None;
        }
        core.flush_retry = None;
        core.site.handle_flushed(now, lsn);
        let mut st = StepStats {
            flushes: 1,
            ..StepStats::default()
        };
        let paused = self.drain(core, &mut st);
        let wake_driver = self.needs_driver(core, paused);
        self.with_shared(|s| {
            s.stats.flushes += st.flushes;
            s.stats.send_failures += st.send_failures;
        });
        drop(guard);
        if wake_driver {
            self.kick.signal(());
        }
        !paused
    }

    /// A write-out or sync up to `lsn` failed: counted, and retried after
    /// [`FLUSH_RETRY`] by the driver, which wakes for it.
    fn sync_failed(&self, core: &mut Core<S, T>, lsn: Lsn, now: Instant) {
        core.flush = Some(core.flush.map_or(lsn, |f| f.max(lsn)));
        core.flush_retry = Some(now + FLUSH_RETRY);
        self.with_shared(|s| s.stats.flush_failures += 1);
        self.kick.signal(());
    }

    /// Hand the site's outputs to their destinations. Returns true when an
    /// event did not fit and the node must pause.
    fn drain(&self, core: &mut Core<S, T>, st: &mut StepStats) -> bool {
        // An event waits for room: nothing more leaves until it is taken
        // (the driver's step moves it first), so events stay in order and
        // a parked one is never overwritten by the next.
        if self.with_shared(|s| s.parked.is_some()) {
            return true;
        }
        while let Some(o) = core.site.poll_output() {
            match o {
                Output::Send { to, frame, urgent } => {
                    let r = match &to {
                        Dest::Site(id) if urgent => core.transport.send_urgent(*id, &frame),
                        Dest::Site(id) => core.transport.send(*id, &frame),
                        Dest::Address(a) => core.transport.send_to_address(a, &frame),
                    };
                    if r.is_err() {
                        st.send_failures += 1;
                        if let Dest::Site(id) = to {
                            st.failed_to = Some(id);
                        }
                    } else if st.failed_to
                        == Some(match to {
                            Dest::Site(id) => id,
                            Dest::Address(_) => SiteId(0),
                        })
                    {
                        st.failed_to = None;
                    }
                }
                Output::Flush { lsn } => {
                    core.flush = Some(core.flush.map_or(lsn, |f| f.max(lsn)));
                    if self.syncer.is_some() {
                        self.sync_kick.signal(());
                    }
                }
                Output::Event(e) => {
                    let fits = self.with_shared(|s| {
                        if s.events.len() < self.node_limits.events {
                            s.events.push_back(e);
                            s.stats.events += 1;
                            s.event_wakers.wake();
                            true
                        } else {
                            s.parked = Some(e);
                            false
                        }
                    });
                    if !fits {
                        return true;
                    }
                }
                Output::Answer(a) => self.route(a),
                Output::Message(m) => {
                    let reply = m.reply;
                    let taken = self.with_shared(|s| {
                        if s.messages.len() < self.node_limits.events {
                            s.messages.push_back(m);
                            s.message_wakers.wake();
                            true
                        } else {
                            s.stats.messages_dropped += 1;
                            false
                        }
                    });
                    if let (false, Some(r)) = (taken, reply) {
                        core.site
                            .channel_refuse(self.clock.now(), r, ChannelError::NoResponse);
                    }
                }
            }
        }
        false
    }

    fn route(&self, a: Answer) {
        self.with_shared(|s| match answer_id(&a) {
            Some(id) => {
                let slot = s
                    .slots
                    .iter_mut()
                    .find(|x| matches!(x.state, SlotState::Waiting(w) if w == id));
                // No slot: the caller gave up; the answer is discarded.
                if let Some(slot) = slot {
                    slot.state = SlotState::Done(a);
                    slot.waker.wake();
                }
            }
            None => {
                if let Answer::Join { result } = a {
                    s.join.epoch += 1;
                    s.join.result = Some(result);
                    s.join.wakers.wake();
                }
            }
        });
    }

    // ----- the application API ------------------------------------------------

    fn reserve(&self) -> Option<SlotGuard<'_, M>> {
        let index = self.with_shared(|s| {
            let i = s
                .slots
                .iter()
                .position(|x| matches!(x.state, SlotState::Free))?;
            s.slots[i].state = SlotState::Reserved;
            Some(i)
        })?;
        Some(SlotGuard {
            shared: &self.shared,
            index,
        })
    }

    /// Commit a transaction (R3) with the given local durability (R4), and
    /// wait for its outcome: permanent or not per the ack policy (R5).
    /// Refused at once on a client ([`CommitError::NotMaster`], or
    /// [`CommitError::NotForwardable`] when it forwards writes) and when
    /// [`NodeLimits::waiters`] calls already wait ([`CommitError::Busy`]).
    /// Dropping the future does not undo the commit.
    pub async fn commit(
        &self,
        ops: &[Op<'_>],
        durability: Durability,
    ) -> Result<CommitOutcome, CommitError> {
        self.submit(|site, now| site.commit(now, ops, durability))
            .await
    }

    /// Put or delete one key outside a transaction and wait for the
    /// outcome: on the master a one-operation commit, on a client with
    /// `forward_writes` a write forwarded to the master (W1).
    pub async fn write(
        &self,
        op: Op<'_>,
        durability: Durability,
    ) -> Result<CommitOutcome, CommitError> {
        self.submit(|site, now| site.write(now, op, durability))
            .await
    }

    /// Start a commit-like request with `start` and wait for its answer.
    async fn submit(
        &self,
        start: impl FnOnce(&mut Site<S>, Instant) -> Result<RequestId, CommitError>,
    ) -> Result<CommitOutcome, CommitError> {
        let slot = self.reserve().ok_or(CommitError::Busy)?;
        let wake_driver = {
            let mut guard = self.lock_core().await;
            let core = &mut *guard;
            let id = start(&mut core.site, self.clock.now())?;
            slot.arm(id);
            self.hand_over(core)
        };
        if wake_driver {
            self.kick.signal(());
        }
        match slot.wait().await {
            Answer::Commit { result, .. } => result,
            // Ids are unique across kinds; not reached.
            _ => Err(CommitError::Unavailable),
        }
    }

    /// Hand what an application call produced to the transport now, on the
    /// caller's task, rather than after the driver's next wake-up: one task
    /// switch less per call. Returns whether the driver is still needed
    /// (a flush, a parked event, or a deadline before the one it sleeps
    /// until).
    fn hand_over(&self, core: &mut Core<S, T>) -> bool {
        self.hand_over_to(core).0
    }

    /// [`Node::hand_over`], also saying to which site the last failed send
    /// went, if the last send to it failed.
    fn hand_over_to(&self, core: &mut Core<S, T>) -> (bool, Option<SiteId>) {
        let mut st = StepStats::default();
        let paused = self.drain(core, &mut st);
        self.with_shared(|s| s.stats.send_failures += st.send_failures);
        // A deadline the call added (an ack timeout, a request's timeout)
        // before the one the driver sleeps until needs the driver to look
        // again.
        // Paused, the call's own frame may still be queued in the site.
        let failed = if paused { None } else { st.failed_to };
        (self.needs_driver(core, paused), failed)
    }

    /// Does the driver need a step now, after work done outside it: paused
    /// (it moves the parked event), a flush it serves itself (no syncer),
    /// or a deadline before the one it sleeps until?
    fn needs_driver(&self, core: &mut Core<S, T>, paused: bool) -> bool {
        let due = core.site.poll_timeout();
        let sleeps_until = self.with_shared(|s| s.driver_wake);
        let earlier = due.is_some_and(|d| sleeps_until.is_none_or(|w| d < w));
        paused || (core.flush.is_some() && self.syncer.is_none()) || earlier
    }

    /// Run a channel call on the site and hand its outputs over.
    async fn channel_call<R>(&self, call: impl FnOnce(&mut Site<S>, Instant) -> R) -> R {
        let (r, wake) = {
            let mut guard = self.lock_core().await;
            let core = &mut *guard;
            let r = call(&mut core.site, self.clock.now());
            (r, self.hand_over(core))
        };
        if wake {
            self.kick.signal(());
        }
        r
    }

    /// Say whether the application has a dispatch for channel messages
    /// (W2) and takes them with [`Node::next_message`]. Without one, a
    /// request from another site is answered NoDispatch.
    pub async fn set_channel_dispatch(&self, on: bool) {
        let mut core = self.lock_core().await;
        core.site.set_channel_dispatch(on);
        if !on {
            // Messages already queued will not be taken: refuse the
            // requests among them.
            let queued: Vec<Incoming> = self.with_shared(|s| s.messages.drain(..).collect());
            for r in queued.into_iter().filter_map(|m| m.reply) {
                core.site
                    .channel_refuse(self.clock.now(), r, ChannelError::NoDispatch);
            }
            drop(core);
            self.kick.signal(());
        }
    }

    /// Send a message on a channel, fire-and-forget (`send_msg`, W2).
    /// Returns the site it went to (this site itself for a master sending
    /// to the master: its own dispatch receives it).
    /// Fails with `Unreachable` when the transport could not take the
    /// message (no connection to the site now).
    pub async fn channel_send(
        &self,
        target: ChannelTarget,
        parts: &[&[u8]],
    ) -> Result<SiteId, ChannelSendError> {
        let (r, wake) = {
            let mut guard = self.lock_core().await;
            let core = &mut *guard;
            let r = core.site.channel_send(self.clock.now(), target, parts);
            let (wake, failed) = self.hand_over_to(core);
            match r {
                Ok(to) if failed == Some(to) => (Err(ChannelSendError::Unreachable(to)), wake),
                r => (r, wake),
            }
        };
        if wake {
            self.kick.signal(());
        }
        r
    }

    /// Send a request on a channel and wait for its one response part
    /// (`send_request`, W2), for `timeout` or the configured
    /// `channel_request` timeout. Ends early when the connection to the
    /// site breaks or, on a channel to the master, when the master changes,
    /// and at once with `Send(Unreachable)` when the transport could not
    /// take the request.
    /// Fails at once with `Send(Busy)` when [`NodeLimits::waiters`] calls
    /// already wait. Dropping the future abandons the request (its answer
    /// is discarded).
    pub async fn channel_request(
        &self,
        target: ChannelTarget,
        parts: &[&[u8]],
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, ChannelRequestError> {
        let slot = self
            .reserve()
            .ok_or(ChannelRequestError::Send(ChannelSendError::Busy))?;
        let wake = {
            let mut guard = self.lock_core().await;
            let core = &mut *guard;
            let id = core
                .site
                .channel_request(self.clock.now(), target, parts, timeout)?;
            slot.arm(id);
            let (wake, failed) = self.hand_over_to(core);
            if let Some(to) = failed {
                // The request's own frame did not leave: end it now.
                if core.site.channel_unreachable(self.clock.now(), id, to) {
                    self.hand_over(core);
                }
            }
            wake
        };
        if wake {
            self.kick.signal(());
        }
        match slot.wait().await {
            Answer::Channel { result, .. } => result,
            // Ids are unique across kinds; not reached.
            _ => Err(ChannelRequestError::NoResponse),
        }
    }

    /// Answer a request the dispatch received with one part (W2).
    /// Fails with `Unreachable` when the transport could not take the
    /// response (no connection to the asker now).
    pub async fn channel_respond(
        &self,
        reply: ReplyTo,
        part: &[u8],
    ) -> Result<(), ChannelSendError> {
        let (r, wake) = {
            let mut guard = self.lock_core().await;
            let core = &mut *guard;
            let r = core.site.channel_respond(self.clock.now(), reply, part);
            let (wake, failed) = self.hand_over_to(core);
            match r {
                Ok(()) if failed == Some(reply.site) => {
                    (Err(ChannelSendError::Unreachable(reply.site)), wake)
                }
                r => (r, wake),
            }
        };
        if wake {
            self.kick.signal(());
        }
        r
    }

    /// Refuse a request the dispatch received (W2); the asker gets `error`
    /// (NoResponse: the dispatch has no answer).
    pub async fn channel_refuse(&self, reply: ReplyTo, error: ChannelError) {
        self.channel_call(|site, now| site.channel_refuse(now, reply, error))
            .await
    }

    /// The next channel message for the application's dispatch (W2), in
    /// the order they came. At most [`NodeLimits::events`] wait; past it
    /// a message is dropped (a request answered NoResponse), so take them
    /// promptly. Meant for one consumer.
    pub async fn next_message(&self) -> Incoming {
        poll_fn(|cx| {
            self.with_shared(|s| match s.messages.pop_front() {
                Some(m) => Poll::Ready(m),
                None => {
                    s.message_wakers.register(cx.waker());
                    Poll::Pending
                }
            })
        })
        .await
    }

    /// The next channel message if one is queued.
    pub fn try_next_message(&self) -> Option<Incoming> {
        self.with_shared(|s| s.messages.pop_front())
    }

    /// Put one key ([`Node::write`] with [`Durability::Sync`]).
    pub async fn put(
        &self,
        db: &str,
        key: &[u8],
        value: &[u8],
    ) -> Result<CommitOutcome, CommitError> {
        self.write(Op::Put { db, key, value }, Durability::Sync)
            .await
    }

    /// Delete one key ([`Node::write`] with [`Durability::Sync`]).
    pub async fn delete(&self, db: &str, key: &[u8]) -> Result<CommitOutcome, CommitError> {
        self.write(Op::Delete { db, key }, Durability::Sync).await
    }

    /// Read a key. While the site synchronises with its master the read
    /// waits (S5), or fails at once with [`ReadError::Lockout`] when NOWAIT
    /// is configured.
    pub async fn get(&self, db: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        loop {
            let seen = {
                let core = self.lock_core().await;
                // A view's read of a database it does not replicate fails
                // at once (R12): no synchronisation makes it answerable.
                if self.nowait
                    || !core.site.is_synchronizing()
                    || !core.site.config().replicates(db)
                {
                    return core.site.get(db, key).map(|v| v.map(<[u8]>::to_vec));
                }
                self.with_shared(|s| s.progress)
            };
            poll_fn(|cx| {
                self.with_shared(|s| {
                    if s.progress != seen {
                        Poll::Ready(())
                    } else {
                        s.readers.register(cx.waker());
                        Poll::Pending
                    }
                })
            })
            .await;
        }
    }

    /// Wait until this site has applied the commit `token` names, for at
    /// most `timeout` (R3: read-your-writes on a client).
    pub async fn txn_applied(
        &self,
        token: CommitToken,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let slot = self.reserve().ok_or(WaitError::Busy)?;
        {
            let mut core = self.lock_core().await;
            let id = core.site.txn_applied(self.clock.now(), token, timeout);
            slot.arm(id);
        }
        self.kick.signal(());
        match slot.wait().await {
            Answer::TxnApplied { result, .. } => result,
            _ => Err(WaitError::Busy),
        }
    }

    /// Create a new group with this site as its first member and master
    /// (R7).
    pub async fn create_group(&self) -> Result<(), CommitError> {
        let r = {
            let mut core = self.lock_core().await;
            core.site.create_group(self.clock.now())
        };
        self.kick.signal(());
        r
    }

    /// Join a group through the site at `helper` (R7) and wait for the
    /// master's answer; the site then starts as a client. The site keeps
    /// asking until it is answered: bound the wait by dropping the future
    /// (the join goes on in the background). Concurrent joins share the
    /// answer.
    pub async fn join(&self, helper: &str) -> Result<SiteId, JoinError> {
        let epoch = {
            let mut core = self.lock_core().await;
            let epoch = self.with_shared(|s| s.join.epoch);
            core.site.join(self.clock.now(), helper);
            epoch
        };
        self.kick.signal(());
        poll_fn(|cx| {
            self.with_shared(|s| {
                if s.join.epoch != epoch {
                    Poll::Ready(s.join.result.unwrap_or(Err(JoinError::Unavailable)))
                } else {
                    s.join.wakers.register(cx.waker());
                    Poll::Pending
                }
            })
        })
        .await
    }

    /// Become master (R1).
    pub async fn rep_start_master(&self) -> Result<(), CommitError> {
        let r = {
            let mut core = self.lock_core().await;
            core.site.rep_start_master(self.clock.now())
        };
        self.kick.signal(());
        r
    }

    /// Become a client and look for the master (R1).
    pub async fn rep_start_client(&self) {
        {
            let mut core = self.lock_core().await;
            core.site.rep_start_client(self.clock.now());
        }
        self.kick.signal(());
    }

    /// With DELAYCLIENT, start synchronising with the known master (S2).
    pub async fn rep_sync(&self) {
        {
            let mut core = self.lock_core().await;
            core.site.rep_sync(self.clock.now());
        }
        self.kick.signal(());
    }

    /// The peer clients to ask for the log before the master (S3); see
    /// [`Site::set_peers`].
    pub async fn set_peers(&self, addresses: &[&str]) {
        let mut core = self.lock_core().await;
        core.site.set_peers(addresses);
    }

    /// Hold an election (`rep_elect`, E1).
    pub async fn rep_elect(&self) {
        {
            let mut core = self.lock_core().await;
            core.site.rep_elect(self.clock.now());
        }
        self.kick.signal(());
    }

    /// Hand mastership to `to` (E7; master only). Returns once the hand-over
    /// has started; the new master announces itself with NEWMASTER.
    pub async fn transfer_master(&self, to: SiteId) -> Result<(), CommitError> {
        let r = {
            let mut core = self.lock_core().await;
            core.site.transfer_master(self.clock.now(), to)
        };
        self.kick.signal(());
        r
    }

    /// Read a key with the lease check of R10 at the current time: refused
    /// with LEASE_EXPIRED on a master without a majority of grants. Waits
    /// while the site synchronises, like [`Node::get`].
    pub async fn read(&self, db: &str, key: &[u8]) -> Result<Option<Vec<u8>>, ReadError> {
        {
            let core = self.lock_core().await;
            if let Err(ReadError::LeaseExpired) = core.site.read(self.clock.now(), db, key) {
                return Err(ReadError::LeaseExpired);
            }
        }
        self.get(db, key).await
    }

    /// Remove a site from the group (master only) and wait until the
    /// change is done.
    pub async fn remove_site(&self, site: SiteId) -> Result<(), CommitError> {
        let slot = self.reserve().ok_or(CommitError::Busy)?;
        {
            let mut core = self.lock_core().await;
            let id = core.site.remove_site(self.clock.now(), site)?;
            slot.arm(id);
        }
        self.kick.signal(());
        match slot.wait().await {
            Answer::Remove { result, .. } => result,
            _ => Err(CommitError::Unavailable),
        }
    }

    /// The next application event (R6), in order. Events are never
    /// dropped: while the queue is full the driver pauses, so some task must
    /// keep calling this. Meant for one consumer (several each get some).
    pub async fn next_event(&self) -> Event {
        poll_fn(|cx| match self.take_event(Some(cx.waker())) {
            Some(e) => Poll::Ready(e),
            None => Poll::Pending,
        })
        .await
    }

    /// The next event if one is queued.
    pub fn try_next_event(&self) -> Option<Event> {
        self.take_event(None)
    }

    /// Pop an event (registering `waker` when there is none); a parked
    /// event moves into the freed place and the driver resumes.
    fn take_event(&self, waker: Option<&Waker>) -> Option<Event> {
        let (e, unpause) = self.with_shared(|s| {
            let Some(e) = s.events.pop_front() else {
                if let Some(w) = waker {
                    s.event_wakers.register(w);
                }
                return (None, false);
            };
            let unpause = match s.parked.take() {
                Some(p) => {
                    s.events.push_back(p);
                    s.stats.events += 1;
                    true
                }
                None => false,
            };
            (Some(e), unpause)
        });
        if unpause {
            self.kick.signal(());
        }
        e
    }

    /// Look at the site (role, master, LSNs, members, stats) under its
    /// lock.
    pub async fn with_site<R>(&self, f: impl FnOnce(&Site<S>) -> R) -> R {
        let core = self.lock_core().await;
        f(&core.site)
    }
}
