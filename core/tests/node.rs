//! The async `Node` driver: three nodes on one thread, wired by an
//! in-test mailbox transport, with a manual clock and timer. The test loop
//! runs every task until all are stalled, then moves the clock to the
//! earliest sleeping timer, so time passes only when nothing else can
//! happen, deterministically. A scenario that never finishes fails the test
//! instead of hanging it.

// The std critical-section implementation embassy-sync needs when a node
// uses `CriticalSectionRawMutex`.
use critical_section as _;

use core::future::{poll_fn, Future};
use core::task::{Poll, Waker};
use embassy_sync::blocking_mutex::raw::{CriticalSectionRawMutex, NoopRawMutex};
use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;
use shoal_core::config::{Config, Durability, Limits};
use shoal_core::log::Op;
use shoal_core::mem::MemStorage;
use shoal_core::node::{InqueueFull, Node, NodeLimits, NodeTransport, SyncFuture, Timer};
use shoal_core::site::{CommitError, Event, ReadError, Role, Site, WaitError};
use shoal_core::traits::{Clock, SendError, Transport};
use shoal_core::{CommitToken, Instant, Lsn, SiteId};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

// ----- manual time ---------------------------------------------------------

#[derive(Default)]
struct Time {
    now: Cell<u64>,
    sleepers: RefCell<Vec<(u64, Waker)>>,
}

#[derive(Clone, Default)]
struct ManualClock(Rc<Time>);

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        Instant(self.0.now.get())
    }
}

impl Timer for ManualClock {
    fn sleep_until(&self, at: Instant) -> impl Future<Output = ()> {
        let t = self.0.clone();
        poll_fn(move |cx| {
            if t.now.get() >= at.0 {
                Poll::Ready(())
            } else {
                t.sleepers.borrow_mut().push((at.0, cx.waker().clone()));
                Poll::Pending
            }
        })
    }
}

impl ManualClock {
    /// Move to the earliest sleeper's deadline and wake every sleeper due.
    /// False when nobody sleeps.
    fn advance(&self) -> bool {
        let mut sl = self.0.sleepers.borrow_mut();
        let Some(at) = sl.iter().map(|(t, _)| *t).min() else {
            return false;
        };
        self.0.now.set(self.0.now.get().max(at));
        let now = self.0.now.get();
        let (due, rest): (Vec<_>, Vec<_>) = sl.drain(..).partition(|(t, _)| *t <= now);
        *sl = rest;
        drop(sl);
        for (_, w) in due {
            w.wake();
        }
        true
    }
}

// ----- mailbox transport ---------------------------------------------------

#[derive(Default)]
struct Net {
    addresses: Vec<String>,
    /// Learned from the envelopes of frames each node sends.
    ids: RefCell<BTreeMap<SiteId, usize>>,
    mail: RefCell<VecDeque<(usize, Vec<u8>)>>,
    pump: RefCell<Option<Waker>>,
    /// Drop VERIFY answers to this node (holds it in synchronisation).
    drop_verify_to: Cell<Option<usize>>,
    /// Drop every frame (a network that stopped).
    blackhole: Cell<bool>,
    /// Refuse every send to a site (no connections).
    refuse: Cell<bool>,
}

impl Net {
    fn post(&self, to: usize, frame: &[u8]) {
        if self.blackhole.get() {
            return;
        }
        self.mail.borrow_mut().push_back((to, frame.to_vec()));
        if let Some(w) = self.pump.borrow_mut().take() {
            w.wake();
        }
    }
}

struct MailTransport {
    me: usize,
    net: Rc<Net>,
    limits: Limits,
}

impl MailTransport {
    fn learn(&self, frame: &[u8]) {
        if let Ok((env, _)) = shoal_core::wire::decode_frame(frame, &self.limits) {
            if env.from.0 != 0 {
                self.net.ids.borrow_mut().insert(env.from, self.me);
            }
        }
    }
}

impl MailTransport {
    fn is_verify(&self, frame: &[u8]) -> bool {
        matches!(
            shoal_core::wire::decode_frame(frame, &self.limits),
            Ok((_, shoal_core::wire::Message::Verify(_)))
        )
    }
}

impl Transport for MailTransport {
    fn send(&mut self, to: SiteId, frame: &[u8]) -> Result<(), SendError> {
        self.learn(frame);
        if self.net.refuse.get() {
            return Err(SendError::Disconnected);
        }
        let target = self.net.ids.borrow().get(&to).copied();
        match target {
            Some(t) if self.net.drop_verify_to.get() == Some(t) && self.is_verify(frame) => Ok(()),
            Some(t) => {
                self.net.post(t, frame);
                Ok(())
            }
            None => Err(SendError::UnknownSite(to)),
        }
    }
}

impl NodeTransport for MailTransport {
    fn send_to_address(&mut self, address: &str, frame: &[u8]) -> Result<(), SendError> {
        self.learn(frame);
        match self.net.addresses.iter().position(|a| a == address) {
            Some(t) => {
                self.net.post(t, frame);
                Ok(())
            }
            None => Err(SendError::Disconnected),
        }
    }
}

type TestNode = Node<MemStorage, MailTransport, ManualClock, NoopRawMutex>;

/// A test's fsync: node index to the future of one sync.
type Syncer = Arc<dyn Fn(usize) -> SyncFuture + Send + Sync>;

struct World {
    pool: LocalPool,
    clock: ManualClock,
    net: Rc<Net>,
    nodes: Vec<Rc<TestNode>>,
}

impl World {
    fn new(n: usize, cfg: Config, node_limits: NodeLimits) -> World {
        Self::build(vec![cfg; n], node_limits, None)
    }

    /// One node per configuration.
    fn with_configs(cfgs: Vec<Config>) -> World {
        Self::build(cfgs, NodeLimits::default(), None)
    }

    /// Nodes that sync through `sync` (called with the node's index)
    /// instead of `Storage::sync`, at once.
    fn with_syncer(n: usize, cfg: Config, sync: Arc<dyn Fn(usize) -> bool + Send + Sync>) -> World {
        let sync: Syncer = Arc::new(move |i| {
            let ok = sync(i);
            Box::pin(async move { ok }) as SyncFuture
        });
        Self::build(vec![cfg; n], NodeLimits::default(), Some(sync))
    }

    /// Nodes that sync through the futures `sync` returns (called with the
    /// node's index).
    fn with_sync_futures(cfgs: Vec<Config>, sync: Syncer) -> World {
        Self::build(cfgs, NodeLimits::default(), Some(sync))
    }

    fn build(cfgs: Vec<Config>, node_limits: NodeLimits, sync: Option<Syncer>) -> World {
        let n = cfgs.len();
        let clock = ManualClock::default();
        let net = Rc::new(Net {
            addresses: (0..n).map(|i| format!("s{i}")).collect(),
            ..Net::default()
        });
        let nodes: Vec<Rc<TestNode>> = (0..n)
            .map(|i| {
                let cfg = &cfgs[i];
                let site = Site::open(
                    cfg.clone(),
                    &format!("s{i}"),
                    MemStorage::new(16 << 20),
                    clock.now(),
                )
                .expect("open");
                let t = MailTransport {
                    me: i,
                    net: net.clone(),
                    limits: cfg.limits,
                };
                let node = Node::with_limits(site, t, clock.clone(), node_limits);
                Rc::new(match &sync {
                    Some(f) => {
                        let f = f.clone();
                        node.with_syncer(move || f(i))
                    }
                    None => node,
                })
            })
            .collect();
        let pool = LocalPool::new();
        let sp = pool.spawner();
        for node in &nodes {
            let node = node.clone();
            let timer = clock.clone();
            sp.spawn_local(async move { node.run(&timer).await })
                .expect("spawn driver");
        }
        // The pump: mail to `deliver`.
        let pump_nodes = nodes.clone();
        let pump_net = net.clone();
        sp.spawn_local(async move {
            loop {
                let batch: Vec<(usize, Vec<u8>)> = poll_fn(|cx| {
                    let mut m = pump_net.mail.borrow_mut();
                    if m.is_empty() {
                        *pump_net.pump.borrow_mut() = Some(cx.waker().clone());
                        Poll::Pending
                    } else {
                        Poll::Ready(m.drain(..).collect())
                    }
                })
                .await;
                for (to, frame) in batch {
                    // A full inqueue is the node's business (R13).
                    let _ = pump_nodes[to].deliver(frame);
                }
            }
        })
        .expect("spawn pump");
        World {
            pool,
            clock,
            net,
            nodes,
        }
    }

    /// Run `body` to completion, letting simulated time pass only while
    /// every task waits; fail if it needs more than `limit` of it.
    fn run<F: Future<Output = R> + 'static, R: 'static>(&mut self, limit: Duration, body: F) -> R {
        let out: Rc<RefCell<Option<R>>> = Rc::new(RefCell::new(None));
        let o = out.clone();
        self.pool
            .spawner()
            .spawn_local(async move {
                let r = body.await;
                *o.borrow_mut() = Some(r);
            })
            .expect("spawn body");
        let end = self.clock.now().0 + limit.as_micros() as u64;
        loop {
            self.pool.run_until_stalled();
            if let Some(r) = out.borrow_mut().take() {
                return r;
            }
            let before = self.clock.now().0;
            assert!(self.clock.advance(), "deadlock: no task can make progress");
            assert!(
                self.clock.now().0 <= end,
                "scenario did not finish within {limit:?} of simulated time (at {} us, from {before})",
                self.clock.now().0
            );
        }
    }

    /// Every event node `i` has queued so far.
    fn events(&self, i: usize) -> Vec<Event> {
        std::iter::from_fn(|| self.nodes[i].try_next_event()).collect()
    }
}

/// `want` appears in `got` in this order (other events may be between).
fn assert_subsequence(got: &[Event], want: &[Event]) {
    let mut it = got.iter();
    for w in want {
        assert!(
            it.any(|g| g == w),
            "expected {want:?} in order within {got:?}; missing {w:?}"
        );
    }
}

/// Create the group on node 0 and join nodes 1..n through it; wait until
/// every client has caught up (StartupDone). Returns the joiners' ids and
/// every node's events so far.
fn form_group(w: &mut World) -> (Vec<SiteId>, Vec<Vec<Event>>) {
    let nodes = w.nodes.clone();
    let (ids, mut clients) = w.run(Duration::from_secs(10), async move {
        nodes[0].create_group().await.expect("create group");
        let mut ids = Vec::new();
        let mut clients = Vec::new();
        for n in &nodes[1..] {
            ids.push(n.join("s0").await.expect("join"));
            let mut evs = Vec::new();
            loop {
                let e = n.next_event().await;
                let done = e == Event::StartupDone;
                evs.push(e);
                if done {
                    break;
                }
            }
            clients.push(evs);
        }
        (ids, clients)
    });
    let mut events = vec![w.events(0)];
    for (k, c) in clients.iter_mut().enumerate() {
        c.extend(w.events(k + 1));
        events.push(core::mem::take(c));
    }
    (ids, events)
}

#[test]
fn three_nodes_form_a_group_commit_and_replicate() {
    let mut w = World::new(3, Config::default(), NodeLimits::default());
    let (ids, events) = form_group(&mut w);
    assert_eq!(ids.len(), 2);
    assert!(!ids.contains(&SiteId(1)) && ids[0] != ids[1], "{ids:?}");

    // Events, in order (R6).
    assert_subsequence(
        &events[0],
        &[
            Event::Master,
            Event::SiteAdded(SiteId(1)),
            Event::SiteAdded(ids[0]),
            Event::SiteAdded(ids[1]),
        ],
    );
    for c in &events[1..] {
        assert_subsequence(
            c,
            &[
                Event::Client,
                Event::NewMaster(SiteId(1)),
                Event::StartupDone,
            ],
        );
    }

    let nodes = w.nodes.clone();
    let (outcome, reads, applied, not_master) = w.run(Duration::from_secs(10), async move {
        let outcome = nodes[0].put("db", b"k", b"v1").await.expect("commit");
        let mut applied = Vec::new();
        let mut reads = Vec::new();
        for n in &nodes[1..] {
            applied.push(n.txn_applied(outcome.token, Duration::from_secs(5)).await);
        }
        for n in &nodes {
            reads.push(n.get("db", b"k").await);
        }
        let not_master = nodes[1].put("db", b"k", b"v2").await;
        (outcome, reads, applied, not_master)
    });
    assert!(outcome.permanent, "{outcome:?}");
    assert!(outcome.flushed, "{outcome:?}");
    assert!(
        outcome.acks >= outcome.needed && outcome.needed >= 1,
        "{outcome:?}"
    );
    assert_eq!(applied, vec![Ok(()), Ok(())]);
    for r in reads {
        assert_eq!(r, Ok(Some(b"v1".to_vec())));
    }
    assert_eq!(not_master, Err(CommitError::NotMaster(Some(SiteId(1)))));

    // Roles and logs agree.
    let nodes = w.nodes.clone();
    let views = w.run(Duration::from_secs(1), async move {
        let mut v = Vec::new();
        for n in &nodes {
            v.push(
                n.with_site(|s| (s.role(), s.master(), s.last_lsn(), s.members().len()))
                    .await,
            );
        }
        v
    });
    assert_eq!(views[0].0, Role::Master);
    for v in &views[1..] {
        assert_eq!((v.0, v.1), (Role::Client, Some(SiteId(1))));
        assert_eq!(v.2, views[0].2, "client log ends where the master's does");
    }
    for v in &views {
        assert_eq!(v.3, 3);
    }
    for n in &w.nodes {
        assert!(n.stats().flushes >= 1);
        assert_eq!(n.stats().frames_dropped, 0);
    }
}

#[test]
fn many_concurrent_commits_share_flushes_and_all_replicate() {
    let mut w = World::new(3, Config::default(), NodeLimits::default());
    form_group(&mut w);
    let flushes_before = w.nodes[0].stats().flushes;
    let nodes = w.nodes.clone();
    let outcomes = w.run(Duration::from_secs(10), async move {
        let futs = (0..20).map(|k| {
            let n = nodes[0].clone();
            async move {
                let key = format!("k{k}");
                n.put("db", key.as_bytes(), b"x").await
            }
        });
        futures::future::join_all(futs).await
    });
    assert_eq!(outcomes.len(), 20);
    let mut last = CommitToken {
        lsn: Lsn::ZERO,
        generation: Default::default(),
    };
    for o in &outcomes {
        let o = o.as_ref().expect("commit");
        assert!(o.permanent && o.flushed, "{o:?}");
        last = if o.token.lsn > last.lsn {
            o.token
        } else {
            last
        };
    }
    // Twenty commits queued together: far fewer syncs than commits.
    let flushes = w.nodes[0].stats().flushes - flushes_before;
    assert!(flushes < 20, "{flushes} syncs for 20 commits");
    let nodes = w.nodes.clone();
    let reads = w.run(Duration::from_secs(10), async move {
        let mut r = Vec::new();
        for n in &nodes[1..] {
            n.txn_applied(last, Duration::from_secs(5))
                .await
                .expect("applied");
            for k in 0..20 {
                r.push(n.get("db", format!("k{k}").as_bytes()).await);
            }
        }
        r
    });
    assert_eq!(reads.len(), 40);
    assert!(reads.iter().all(|r| *r == Ok(Some(b"x".to_vec()))));
}

/// With a syncer (`Node::with_syncer`) the driver syncs through it, not
/// `Storage::sync`, and commits are answered flushed and permanent as
/// before; a failed sync is retried and the commits still finish.
#[test]
fn a_syncer_makes_the_log_durable_and_a_failed_sync_is_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    // The master's first sync fails.
    let sync = Arc::new(move |i: usize| {
        let n = c.fetch_add(1, Ordering::Relaxed);
        !(i == 0 && n == 0)
    });
    let mut w = World::with_syncer(3, Config::default(), sync);
    let nodes = w.nodes.clone();
    w.run(Duration::from_secs(10), async move {
        nodes[0].create_group().await.expect("create group");
    });
    for i in 1..3 {
        let nodes = w.nodes.clone();
        w.run(Duration::from_secs(10), async move {
            nodes[i].join("s0").await.expect("join");
        });
    }
    let nodes = w.nodes.clone();
    let outcomes = w.run(Duration::from_secs(10), async move {
        let futs = (0..10).map(|k| {
            let n = nodes[0].clone();
            async move { n.put("db", format!("k{k}").as_bytes(), b"x").await }
        });
        futures::future::join_all(futs).await
    });
    for o in &outcomes {
        let o = o.as_ref().expect("commit");
        assert!(o.permanent && o.flushed, "{o:?}");
    }
    let st = w.nodes[0].stats();
    assert!(st.flush_failures >= 1, "the failed sync was not counted");
    assert!(st.flushes >= 1);
    assert!(calls.load(Ordering::Relaxed) as u64 >= st.flushes + st.flush_failures);
}

/// An fsync the test holds until it lets go (`Node::with_syncer`).
#[derive(Default)]
struct HeldSync {
    held: std::sync::atomic::AtomicBool,
    /// Syncs started while held.
    started_held: AtomicUsize,
    waker: std::sync::Mutex<Option<Waker>>,
}

impl HeldSync {
    fn future(self: &Arc<Self>) -> SyncFuture {
        let me = self.clone();
        if me.held.load(Ordering::SeqCst) {
            me.started_held.fetch_add(1, Ordering::SeqCst);
        }
        Box::pin(poll_fn(move |cx| {
            if !me.held.load(Ordering::SeqCst) {
                return Poll::Ready(true);
            }
            *me.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }))
    }

    fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
    }
}

/// A host's fsync runs beside the driver (`Node::with_syncer`): while the
/// master's hangs for ten seconds of simulated time, the commit that asked
/// for it waits, and nothing else does: the driver keeps sending
/// heartbeats and handling frames, so the clients (heartbeat monitor 1 s)
/// hold no election and the master stays master. Once the fsync ends the
/// commit is answered, flushed and permanent. (With the fsync inside the
/// driver's step, or under the core lock, the clients elect a new master.)
#[test]
fn a_hanging_fsync_holds_its_commit_and_nothing_else() {
    let held = Arc::new(HeldSync::default());
    let h = held.clone();
    let sync: Syncer = Arc::new(move |i| {
        if i == 0 {
            h.future()
        } else {
            Box::pin(async { true })
        }
    });
    let mut cfg = Config::default();
    cfg.timeouts.heartbeat_send = Duration::from_millis(200);
    cfg.timeouts.heartbeat_monitor = Duration::from_secs(1);
    let mut w = World::with_sync_futures(vec![cfg; 3], sync);
    form_group(&mut w);
    let nodes = w.nodes.clone();
    let before = w.run(Duration::from_secs(1), async move {
        nodes[0].with_site(|s| s.generation()).await
    });
    held.held.store(true, Ordering::SeqCst);
    let nodes = w.nodes.clone();
    let clock = w.clock.clone();
    let h = held.clone();
    let (early, during, outcome) = w.run(Duration::from_secs(60), async move {
        let mut commit = core::pin::pin!(nodes[0].put("db", b"k", b"v"));
        let at = Instant(clock.now().0 + 10_000_000);
        let sleep = core::pin::pin!(clock.sleep_until(at));
        let early = matches!(
            futures::future::select(commit.as_mut(), sleep).await,
            futures::future::Either::Left(_)
        );
        let mut during = Vec::new();
        for n in &nodes {
            during.push(
                n.with_site(|s| (s.role(), s.generation(), s.stats().elections))
                    .await,
            );
        }
        h.release();
        (early, during, commit.await)
    });
    assert!(
        held.started_held.load(Ordering::SeqCst) >= 1,
        "the master's sync was never started while held"
    );
    assert!(!early, "the commit was answered before its fsync ended");
    assert_eq!(during[0], (Role::Master, before, 0), "the master changed");
    for d in &during[1..] {
        assert_eq!(*d, (Role::Client, before, 0), "a client held an election");
    }
    let o = outcome.expect("commit");
    assert!(o.permanent && o.flushed, "{o:?}");
}

#[test]
fn txn_applied_times_out_through_the_timer_and_waiters_are_bounded() {
    let limits = NodeLimits {
        waiters: 1,
        ..NodeLimits::default()
    };
    let mut w = World::new(2, Config::default(), limits);
    form_group(&mut w);
    let nodes = w.nodes.clone();
    let clock = w.clock.clone();
    let (first, busy, after, elapsed) = w.run(Duration::from_secs(10), async move {
        // A commit that does not exist (yet): far beyond the log.
        let token = CommitToken {
            lsn: Lsn::new(99, 0),
            generation: Default::default(),
        };
        let start = clock.now();
        let n = &nodes[1];
        let (first, busy) =
            futures::future::join(n.txn_applied(token, Duration::from_millis(500)), async {
                // The one slot is taken by the first call by now.
                n.txn_applied(token, Duration::from_millis(500)).await
            })
            .await;
        let elapsed = clock.now().0 - start.0;
        // The slot was freed: a new wait is accepted.
        let after = n.txn_applied(token, Duration::from_millis(100)).await;
        (first, busy, after, elapsed)
    });
    assert_eq!(first, Err(WaitError::Timeout));
    assert_eq!(busy, Err(WaitError::Busy));
    assert_eq!(after, Err(WaitError::Timeout));
    assert!(elapsed >= 500_000, "timed out after {elapsed} us");
}

#[test]
fn a_dropped_wait_frees_its_slot() {
    let limits = NodeLimits {
        waiters: 1,
        ..NodeLimits::default()
    };
    let mut w = World::new(2, Config::default(), limits);
    form_group(&mut w);
    let nodes = w.nodes.clone();
    let r = w.run(Duration::from_secs(10), async move {
        let token = CommitToken {
            lsn: Lsn::new(99, 0),
            generation: Default::default(),
        };
        let n = &nodes[1];
        {
            // Poll the wait once (it takes the slot), then drop it.
            let mut f = Box::pin(n.txn_applied(token, Duration::from_secs(60)));
            let polled = poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx).is_pending())).await;
            assert!(polled, "the wait is pending");
            assert_eq!(
                n.txn_applied(token, Duration::from_secs(1)).await,
                Err(WaitError::Busy)
            );
        }
        n.txn_applied(token, Duration::from_millis(10)).await
    });
    assert_eq!(r, Err(WaitError::Timeout));
}

#[test]
fn a_full_inqueue_drops_frames_and_raises_inqueue_full() {
    let mut cfg = Config::default();
    cfg.limits.max_inqueue_bytes = 1000;
    let mut w = World::new(1, cfg, NodeLimits::default());
    let nodes = w.nodes.clone();
    w.run(Duration::from_secs(1), async move {
        nodes[0].create_group().await.expect("create group");
    });
    let before = w.events(0);
    assert!(!before.contains(&Event::InqueueFull));
    // The driver has not run since: the queue fills. Each 100-byte frame
    // is charged 164 bytes against 1000.
    let node = &w.nodes[0];
    let mut accepted = 0;
    let mut refused = 0;
    for _ in 0..10 {
        match node.deliver(vec![0xAB; 100]) {
            Ok(()) => accepted += 1,
            Err(InqueueFull) => refused += 1,
        }
    }
    assert_eq!(accepted, 6);
    assert_eq!(refused, 4);
    assert_eq!(node.stats().frames_dropped, 4);
    // The driver runs: the garbage is dropped by the site, and the overflow
    // is reported once.
    w.run(Duration::from_secs(1), async {});
    let after = w.events(0);
    assert_eq!(
        after.iter().filter(|e| **e == Event::InqueueFull).count(),
        1,
        "{after:?}"
    );
    let nodes = w.nodes.clone();
    let malformed = w.run(Duration::from_secs(1), async move {
        nodes[0].with_site(|s| s.stats().dropped_malformed).await
    });
    assert_eq!(malformed, 6);
    // The queue is empty again.
    assert_eq!(w.nodes[0].deliver(vec![0; 100]), Ok(()));
}

#[test]
fn events_are_never_dropped_the_driver_pauses_instead() {
    let limits = NodeLimits {
        events: 1,
        ..NodeLimits::default()
    };
    let mut w = World::new(1, Config::default(), limits);
    let nodes = w.nodes.clone();
    // create_group raises Master and SiteAdded(1); a commit then needs the
    // driver, which is paused until the events are taken.
    let (events, outcome) = w.run(Duration::from_secs(5), async move {
        nodes[0].create_group().await.expect("create group");
        let n = nodes[0].clone();
        let commit = async move { n.put("db", b"k", b"v").await };
        let n = nodes[0].clone();
        let consume = async move {
            let a = n.next_event().await;
            let b = n.next_event().await;
            vec![a, b]
        };
        futures::future::join(consume, commit).await
    });
    assert_eq!(events, vec![Event::Master, Event::SiteAdded(SiteId(1))]);
    let o = outcome.expect("commit");
    assert!(o.flushed);
}

#[test]
fn connection_changes_reach_the_site_coalesced_but_not_lost() {
    let mut w = World::new(2, Config::default(), NodeLimits::default());
    let (ids, _) = form_group(&mut w);
    let peer = ids[0];
    let node = &w.nodes[0];
    node.connection(peer, true).unwrap();
    w.run(Duration::from_secs(1), async {});
    assert_eq!(w.events(0), vec![Event::ConnectEstablished(peer)]);
    // Down and up again before the driver runs: the site sees both.
    let node = &w.nodes[0];
    node.connection(peer, false).unwrap();
    node.connection(peer, true).unwrap();
    w.run(Duration::from_secs(1), async {});
    assert_eq!(
        w.events(0),
        vec![Event::ConnectBroken(peer), Event::ConnectEstablished(peer)]
    );
    // Down, up, down: the blip is kept, and the final state wins.
    let node = &w.nodes[0];
    for up in [false, true, false, false] {
        node.connection(peer, up).unwrap();
    }
    w.run(Duration::from_secs(1), async {});
    assert_eq!(
        w.events(0),
        vec![
            Event::ConnectBroken(peer),
            Event::ConnectEstablished(peer),
            Event::ConnectBroken(peer)
        ]
    );
    let nodes = w.nodes.clone();
    let connected = w.run(Duration::from_secs(1), async move {
        nodes[0]
            .with_site(|s| s.members().get(peer).map(|m| m.connected))
            .await
    });
    assert_eq!(connected, Some(false));
    // A failed attempt, reported twice before the driver runs: one event.
    w.nodes[0].connect_failed(peer).unwrap();
    w.nodes[0].connect_failed(peer).unwrap();
    w.run(Duration::from_secs(1), async {});
    assert_eq!(w.events(0), vec![Event::ConnectTryFailed(peer)]);
}

/// Commit `k = v` on node 0, then restart node 1 as a client while the
/// master's VERIFY answers to it are lost, so it stays synchronising.
async fn hold_client_in_sync(nodes: &[Rc<TestNode>], net_block: impl FnOnce()) {
    let o = nodes[0].put("db", b"k", b"v").await.expect("commit");
    nodes[1]
        .txn_applied(o.token, Duration::from_secs(1))
        .await
        .expect("applied");
    net_block();
    nodes[1].rep_start_client().await;
}

#[test]
fn s5_reads_wait_while_a_client_synchronizes() {
    let mut w = World::new(2, Config::default(), NodeLimits::default());
    form_group(&mut w);
    let nodes = w.nodes.clone();
    let net = w.net.clone();
    let clock = w.clock.clone();
    let (read, waited, was_syncing) = w.run(Duration::from_secs(20), async move {
        let n = net.clone();
        hold_client_in_sync(&nodes, move || n.drop_verify_to.set(Some(1))).await;
        let start = clock.now();
        clock.sleep_until(Instant(start.0 + 100_000)).await;
        let was_syncing = nodes[1].with_site(|s| s.is_synchronizing()).await;
        let done = Cell::new(false);
        let read = async {
            let r = nodes[1].get("db", b"k").await;
            done.set(true);
            r
        };
        let release = async {
            clock.sleep_until(Instant(start.0 + 500_000)).await;
            assert!(!done.get(), "the read waited while synchronising");
            net.drop_verify_to.set(None);
        };
        let (read, ()) = futures::future::join(read, release).await;
        (read, clock.now().0 - start.0, was_syncing)
    });
    assert!(was_syncing, "the client is synchronising");
    assert_eq!(read, Ok(Some(b"v".to_vec())));
    assert!(waited >= 500_000, "{waited}");
}

/// R12: a read of a database a partial view does not replicate fails at
/// once with NotReplicated, even while the view synchronises (a read of
/// its own database would wait, S5): waiting could never make it answer.
#[test]
fn r12_a_view_refuses_a_read_of_another_database_without_waiting() {
    let view = Config {
        view: true,
        priority: 0,
        view_databases: vec!["db".into()],
        ..Config::default()
    };
    let mut w = World::with_configs(vec![Config::default(), view]);
    form_group(&mut w);
    let nodes = w.nodes.clone();
    let net = w.net.clone();
    let clock = w.clock.clone();
    let (other, was_syncing) = w.run(Duration::from_secs(20), async move {
        let n = net.clone();
        hold_client_in_sync(&nodes, move || n.drop_verify_to.set(Some(1))).await;
        clock.sleep_until(Instant(clock.now().0 + 100_000)).await;
        let was_syncing = nodes[1].with_site(|s| s.is_synchronizing()).await;
        let other = nodes[1].get("other", b"k").await;
        net.drop_verify_to.set(None);
        (other, was_syncing)
    });
    assert!(was_syncing, "the view is synchronising");
    assert_eq!(other, Err(ReadError::NotReplicated));
}

#[test]
fn s5_nowait_reads_fail_with_lockout_while_synchronizing() {
    let cfg = Config {
        nowait: true,
        ..Config::default()
    };
    let mut w = World::new(2, cfg, NodeLimits::default());
    form_group(&mut w);
    let nodes = w.nodes.clone();
    let net = w.net.clone();
    let clock = w.clock.clone();
    let (during, after) = w.run(Duration::from_secs(20), async move {
        let n = net.clone();
        hold_client_in_sync(&nodes, move || n.drop_verify_to.set(Some(1))).await;
        clock.sleep_until(Instant(clock.now().0 + 100_000)).await;
        assert!(nodes[1].with_site(|s| s.is_synchronizing()).await);
        let during = nodes[1].get("db", b"k").await;
        net.drop_verify_to.set(None);
        // Wait until the client is done.
        while nodes[1].with_site(|s| s.is_synchronizing()).await {
            clock.sleep_until(Instant(clock.now().0 + 100_000)).await;
        }
        (during, nodes[1].get("db", b"k").await)
    });
    assert_eq!(during, Err(ReadError::Lockout));
    assert_eq!(after, Ok(Some(b"v".to_vec())));
}

#[test]
fn remove_site_answers_and_both_sides_learn_it() {
    let mut w = World::new(3, Config::default(), NodeLimits::default());
    let (ids, _) = form_group(&mut w);
    let gone = ids[1];
    let nodes = w.nodes.clone();
    let r = w.run(Duration::from_secs(5), async move {
        nodes[0].remove_site(gone).await
    });
    assert_eq!(r, Ok(()));
    // Let the record reach the clients.
    let nodes = w.nodes.clone();
    w.run(Duration::from_secs(5), async move {
        let o = nodes[0].put("db", b"after", b"1").await.expect("commit");
        nodes[1]
            .txn_applied(o.token, Duration::from_secs(1))
            .await
            .expect("applied");
    });
    assert!(w.events(0).contains(&Event::SiteRemoved(gone)));
    assert!(w.events(2).contains(&Event::LocalSiteRemoved));
}

// ----- Send / Sync for multi-threaded executors --------------------------------

struct NullTransport;

impl Transport for NullTransport {
    fn send(&mut self, _: SiteId, _: &[u8]) -> Result<(), SendError> {
        Ok(())
    }
}

impl NodeTransport for NullTransport {
    fn send_to_address(&mut self, _: &str, _: &[u8]) -> Result<(), SendError> {
        Ok(())
    }
}

struct FixedClock;

impl Clock for FixedClock {
    fn now(&self) -> Instant {
        Instant(1)
    }
}

/// Never fires: the single-node scenario below needs no deadline.
struct NeverTimer;

impl Timer for NeverTimer {
    fn sleep_until(&self, _: Instant) -> impl Future<Output = ()> {
        core::future::pending()
    }
}

fn assert_send<T: Send>(_: &T) {}
fn assert_sync<T: Sync>() {}

#[test]
fn a_critical_section_node_is_sync_with_send_futures_and_runs() {
    type SyncNode = Node<MemStorage, NullTransport, FixedClock, CriticalSectionRawMutex>;
    assert_sync::<SyncNode>();
    let site = Site::open(
        Config::default(),
        "solo",
        MemStorage::new(1 << 20),
        Instant(0),
    )
    .expect("open");
    let node: SyncNode = Node::new(site, NullTransport, FixedClock);
    let ops = [Op::Put {
        db: "db",
        key: b"k",
        value: b"v",
    }];
    let timer = NeverTimer;
    {
        let f = node.commit(&ops, Durability::Sync);
        assert_send(&f);
        let g = node.run(&timer);
        assert_send(&g);
        let h = node.get("db", b"k");
        assert_send(&h);
    }
    let r = futures::executor::block_on(async {
        let body = async {
            node.create_group().await.expect("create group");
            let o = node.commit(&ops, Durability::Sync).await;
            let v = node.get("db", b"k").await;
            node.stop();
            (o, v)
        };
        let (_, r) = futures::future::join(node.run(&timer), body).await;
        r
    });
    let (o, v) = r;
    let o = o.expect("commit");
    assert!(o.flushed && o.permanent, "{o:?}");
    assert_eq!(v, Ok(Some(b"v".to_vec())));
}

/// A commit hands its record to the transport itself and does not always
/// wake the driver; the driver must still wake for the commit's ack
/// timeout, which is earlier than anything else it waits for here. With
/// the network gone, the commit is answered (not permanent) at the ack
/// timeout, not at the next heartbeat ten seconds later.
#[test]
fn a_commit_nobody_acks_is_answered_at_its_ack_timeout() {
    let mut cfg = Config::default();
    cfg.timeouts.ack = Duration::from_millis(100);
    cfg.timeouts.heartbeat_send = Duration::from_secs(10);
    cfg.timeouts.heartbeat_monitor = Duration::from_secs(30);
    let mut w = World::new(3, cfg, NodeLimits::default());
    form_group(&mut w);
    // Let the joins' traffic settle, then cut the network.
    let nodes = w.nodes.clone();
    w.run(Duration::from_secs(10), async move {
        nodes[0].put("db", b"settle", b"1").await.expect("commit")
    });
    w.net.blackhole.set(true);
    let nodes = w.nodes.clone();
    let clock = w.clock.clone();
    let (o, took) = w.run(Duration::from_secs(20), async move {
        let start = clock.now().0;
        let o = nodes[0]
            .commit(
                &[Op::Put {
                    db: "db",
                    key: b"k",
                    value: b"v",
                }],
                Durability::NoSync,
            )
            .await;
        (o, clock.now().0 - start)
    });
    let o = o.expect("answered");
    assert!(!o.permanent, "{o:?}");
    assert!(
        (100_000..1_000_000).contains(&took),
        "answered after {took} us; the ack timeout is 100 ms"
    );
}

/// A message a dispatch kept: its sender and parts.
type Seen = (SiteId, Vec<Vec<u8>>);

/// W2 through the Node: a dispatch task takes messages with
/// `next_message` and answers with `channel_respond`; a client's request
/// to the master is answered, the master's request to the master is
/// answered by its own dispatch, a plain message arrives, a request to a
/// node without a dispatch gets NoDispatch, one nobody answers times out
/// through the timer, and one the transport cannot take fails at once
/// with Unreachable.
#[test]
fn channel_requests_are_answered_through_the_dispatch() {
    use shoal_core::site::{ChannelRequestError, ChannelSendError, ChannelTarget};
    let mut w = World::new(3, Config::default(), NodeLimits::default());
    let (ids, _) = form_group(&mut w);
    let (id1, id2) = (ids[0], ids[1]);
    let nodes = w.nodes.clone();
    let clock = w.clock.clone();
    let net = w.net.clone();
    let sp = w.pool.spawner();
    let r = w.run(Duration::from_secs(30), async move {
        nodes[0].set_channel_dispatch(true).await;
        nodes[2].set_channel_dispatch(true).await;
        // Node 0's dispatch: answer "pong <first part>", keep messages.
        let seen: Rc<RefCell<Vec<Seen>>> = Rc::default();
        let (d, log) = (nodes[0].clone(), seen.clone());
        sp.spawn_local(async move {
            loop {
                let m = d.next_message().await;
                match m.reply {
                    Some(r) => {
                        let mut part = b"pong ".to_vec();
                        part.extend_from_slice(&m.parts[0]);
                        d.channel_respond(r, &part).await.expect("respond");
                    }
                    None => log.borrow_mut().push((m.from, m.parts)),
                }
            }
        })
        .expect("spawn dispatch");
        let to_master = nodes[2]
            .channel_request(ChannelTarget::Master, &[b"from 2"], None)
            .await;
        let own = nodes[0]
            .channel_request(ChannelTarget::Master, &[b"self"], None)
            .await;
        let sent = nodes[1]
            .channel_send(ChannelTarget::Master, &[b"a", b"b"])
            .await;
        let no_dispatch = nodes[0]
            .channel_request(ChannelTarget::Site(id1), &[b"x"], None)
            .await;
        // Node 2 has a dispatch nobody takes messages from.
        let start = clock.now();
        let timeout = nodes[1]
            .channel_request(
                ChannelTarget::Site(id2),
                &[b"x"],
                Some(Duration::from_millis(300)),
            )
            .await;
        let waited = clock.now().0 - start.0;
        net.refuse.set(true);
        let unreachable = nodes[1]
            .channel_request(ChannelTarget::Master, &[b"x"], None)
            .await;
        let unreachable_msg = nodes[1].channel_send(ChannelTarget::Master, &[b"x"]).await;
        net.refuse.set(false);
        // Let the plain message reach the dispatch task.
        while seen.borrow().is_empty() {
            yield_once().await;
        }
        let seen = seen.borrow().clone();
        (
            to_master,
            own,
            sent,
            seen,
            no_dispatch,
            timeout,
            waited,
            unreachable,
            unreachable_msg,
        )
    });
    let (to_master, own, sent, seen, no_dispatch, timeout, waited, unreachable, unreachable_msg) =
        r;
    assert_eq!(to_master, Ok(b"pong from 2".to_vec()));
    assert_eq!(own, Ok(b"pong self".to_vec()), "the master's own dispatch");
    assert_eq!(sent, Ok(SiteId(1)));
    assert_eq!(seen, vec![(ids[0], vec![b"a".to_vec(), b"b".to_vec()])]);
    assert_eq!(no_dispatch, Err(ChannelRequestError::NoDispatch));
    assert_eq!(timeout, Err(ChannelRequestError::Timeout));
    assert!(waited >= 300_000, "timed out after {waited} us");
    assert_eq!(
        unreachable,
        Err(ChannelRequestError::Send(ChannelSendError::Unreachable(
            SiteId(1)
        )))
    );
    assert_eq!(
        unreachable_msg,
        Err(ChannelSendError::Unreachable(SiteId(1)))
    );
}

/// Let every other task run once.
async fn yield_once() {
    let mut yielded = false;
    poll_fn(|cx| {
        if yielded {
            Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    })
    .await
}

/// W2: the dispatch's message queue is bounded by `NodeLimits::events`:
/// a request that finds it full is answered NoResponse at once; turning
/// the dispatch off refuses the requests still queued (NoDispatch).
#[test]
fn a_full_message_queue_answers_noresponse_and_dispatch_off_refuses_the_queued() {
    use shoal_core::site::{ChannelRequestError, ChannelTarget};
    const QUEUE: u64 = 16;
    let limits = NodeLimits {
        events: QUEUE as usize,
        ..NodeLimits::default()
    };
    let mut w = World::new(2, Config::default(), limits);
    form_group(&mut w);
    let nodes = w.nodes.clone();
    let (full, queued, dropped) = w.run(Duration::from_secs(30), async move {
        let received = |n: Rc<TestNode>| async move {
            // Events are taken too, so the driver never pauses.
            while n.try_next_event().is_some() {}
            n.with_site(|s| s.stats().channel_received).await
        };
        nodes[0].set_channel_dispatch(true).await;
        // Nobody takes messages at node 0: fill its queue.
        for _ in 0..QUEUE {
            nodes[1]
                .channel_send(ChannelTarget::Master, &[b"filler"])
                .await
                .expect("sent");
        }
        while received(nodes[0].clone()).await < QUEUE {
            yield_once().await;
        }
        let full = nodes[1]
            .channel_request(ChannelTarget::Master, &[b"two"], None)
            .await;
        // Room for one: a request waits in the queue until the dispatch
        // is turned off.
        assert!(nodes[0].try_next_message().is_some());
        let (queued, ()) = futures::future::join(
            nodes[1].channel_request(ChannelTarget::Master, &[b"three"], None),
            async {
                while received(nodes[0].clone()).await < QUEUE + 2 {
                    yield_once().await;
                }
                nodes[0].set_channel_dispatch(false).await;
            },
        )
        .await;
        (full, queued, nodes[0].stats().messages_dropped)
    });
    assert_eq!(full, Err(ChannelRequestError::NoResponse));
    assert_eq!(queued, Err(ChannelRequestError::NoDispatch));
    assert_eq!(dropped, 1);
}
