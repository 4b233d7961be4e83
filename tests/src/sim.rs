//! `Sim`: N sites, a simulated clock, a [`SimNet`] and one [`SimDisk`] per
//! site, driven through one event queue (issue 3, B3).
//!
//! The simulator is the host: it delivers `Send` outputs through the
//! network (resolving `Dest::Address` by address), completes `Flush`
//! outputs after a simulated fsync latency (sync the disk, then
//! `handle_flushed`; one flush at a time per site, so concurrent commits
//! share one), calls `handle_timeout` at each site's `poll_timeout`
//! deadline, and reports connections up and down as partitions, crashes
//! and restarts change who can reach whom. It also plays the operator, who
//! promotes a master (elections do not exist yet).
//!
//! Every step is recorded in a [`Trace`], and after every step the
//! invariant checks of [`crate::check`] run. Any failure panics with the
//! seed and the command that replays it.
//!
//! The methods double as the scenario language: `start_group`, `write`,
//! `partition`, `crash`, `restart`, `heal`, `converge`, and assertions.

use crate::check::Checker;
use crate::disk::{CrashMode, SimDisk};
use crate::net::{EventQueue, LinkConfig, SimNet};
use crate::rng::Rng;
use crate::trace::{Input, MsgSum, Out, Step, Trace};
use shoal_core::config::{Config, Durability};
use shoal_core::log::Op;
use shoal_core::meta::Meta;
use shoal_core::site::{
    Answer, ChannelRequestError, ChannelSendError, ChannelTarget, CommitError, CommitOutcome, Dest,
    Drop, Event, Incoming, IndexEntry, Output, ReplyTo, RequestId, Role, Site, WaitError,
};
use shoal_core::traits::Storage;
use shoal_core::{CommitToken, ElectionGen, Generation, Instant, Lsn, SiteId};
use std::collections::BTreeMap;
use std::time::Duration;

/// How to build a simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The test binary (for the replay hint), e.g. "scenarios".
    pub test: String,
    /// The test name (for the replay hint).
    pub name: String,
    /// The seed every random choice comes from.
    pub seed: u64,
    /// Number of sites (addresses "s0", "s1", ...).
    pub sites: usize,
    /// Every site's configuration (see [`Sim::set_site_config`] for one).
    pub site: Config,
    /// How every link behaves.
    pub link: LinkConfig,
    /// Shortest simulated fsync.
    pub fsync_min: Duration,
    /// Longest simulated fsync.
    pub fsync_max: Duration,
    /// Keep only the last this many steps of the trace (None: all).
    pub trace_tail: Option<usize>,
}

/// The seed from `SHOAL_SEED`, or `default`.
pub fn seed_from_env(default: u64) -> u64 {
    match std::env::var("SHOAL_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SHOAL_SEED={s:?} is not a number")),
        Err(_) => default,
    }
}

impl SimConfig {
    /// A configuration for test `name` in test binary `test`, with the
    /// seed from `SHOAL_SEED` (default 1), default sites, a reliable
    /// network of 1-5 ms links and 0.2-2 ms fsyncs, and a full trace.
    pub fn new(test: &str, name: &str, sites: usize) -> SimConfig {
        SimConfig {
            test: test.into(),
            name: name.into(),
            seed: seed_from_env(1),
            sites,
            site: Config::default(),
            link: LinkConfig::default(),
            fsync_min: Duration::from_micros(200),
            fsync_max: Duration::from_millis(2),
            trace_tail: None,
        }
    }
}

/// How a restarted site starts.
#[derive(Clone, Debug)]
pub enum Start {
    /// `rep_start_client`.
    Client,
    /// `join` through the helper at this address.
    Join(String),
    /// Nothing: the site stays idle until told.
    Idle,
    /// What an application does at every start: `join` through a helper
    /// (the running master if there is one, else the first other running
    /// site), which restarts a site that knows its group as a client and
    /// re-joins one that does not (it crashed before its join was durable).
    Rejoin,
}

/// Something the event queue holds.
#[derive(Clone, Debug)]
enum Ev {
    Deliver {
        from: usize,
        from_inc: u32,
        to: usize,
        to_inc: u32,
        frame: Vec<u8>,
        msg: MsgSum,
    },
    FlushDone {
        site: usize,
        inc: u32,
        lsn: Lsn,
    },
    /// A site with an incoming queue is free to take its next frame.
    Take {
        site: usize,
        inc: u32,
    },
}

/// What a site's incoming queue did (see [`Sim::set_inqueue`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct InqueueStats {
    /// Frames that waited in the queue.
    pub queued: u64,
    /// Frames dropped because the queue was full (R13), as
    /// `NodeStats::frames_dropped` counts them in a host.
    pub dropped: u64,
    /// The most bytes the queue held (each frame charged its length plus
    /// `FRAME_CHARGE`, as `Node` charges it).
    pub peak_bytes: usize,
}

/// A site's incoming queue, modelled on the one `Node::deliver` keeps: a
/// frame that arrives while the site is busy with an earlier one waits,
/// bounded by the site's `max_inqueue_bytes`; one that does not fit is
/// dropped and the site told (`handle_inqueue_full`, once per overflow
/// episode). The site takes `ns_per_byte` nanoseconds per byte of each
/// frame (at least a microsecond per frame): a slow device.
#[derive(Clone, Debug)]
struct Inqueue {
    ns_per_byte: u64,
    busy_until: Instant,
    frames: std::collections::VecDeque<(usize, Vec<u8>, MsgSum)>,
    bytes: usize,
    overflow: bool,
    stats: InqueueStats,
}

impl Inqueue {
    fn cost(&self, len: usize) -> u64 {
        (len as u64 * self.ns_per_byte).div_ceil(1000).max(1)
    }
}

/// One site's seat in the simulator.
pub(crate) struct Slot {
    pub(crate) site: Option<Site<SimDisk>>,
    pub(crate) disk: Option<SimDisk>,
    pub(crate) cfg: Config,
    pub(crate) address: String,
    /// Peers the site asks for the log before the master (S3), set again
    /// at every reopen as a host would.
    pub(crate) peers: Vec<String>,
    /// Last id the site had (kept while it is down).
    pub(crate) id: SiteId,
    /// Bumped at every crash.
    pub(crate) inc: u32,
    pub(crate) events: Vec<(Instant, Event)>,
    pub(crate) answers: Vec<(Instant, u32, Answer)>,
    /// Channel messages the site's dispatch received (W2): time,
    /// incarnation, message.
    pub(crate) messages: Vec<(Instant, u32, Incoming)>,
    /// The application's dispatch (W2): None, no dispatch; Some(part), it
    /// answers every request with `part` (set again at every reopen).
    pub(crate) channel_reply: Option<Vec<u8>>,
    /// The dispatch takes requests but does not answer them.
    pub(crate) channel_silent: bool,
    reported: BTreeMap<SiteId, bool>,
    /// The incoming queue, when the site has one ([`Sim::set_inqueue`]).
    inq: Option<Inqueue>,
    flush_busy: bool,
    flush_want: Lsn,
    members_len: usize,
    // Checker state.
    pub(crate) mirror: Vec<IndexEntry>,
    pub(crate) was_master: bool,
    pub(crate) rolled_back: bool,
    pub(crate) opened: bool,
    /// Snapshots the site had installed at its last check (S6): a new one
    /// replaces its log, as a restart does.
    pub(crate) installs: u64,
    pub(crate) last_generation: Generation,
}

/// The deterministic simulator.
pub struct Sim {
    pub(crate) cfg: SimConfig,
    pub(crate) now: Instant,
    pub(crate) slots: Vec<Slot>,
    net: SimNet,
    queue: EventQueue<Ev>,
    rng: Rng,
    pub(crate) trace: Trace,
    pub(crate) check: Checker,
    /// txn_applied calls waiting for their answer: (site, incarnation,
    /// request) -> token.
    waits: BTreeMap<(usize, u32, RequestId), CommitToken>,
    /// Commits not yet answered: (site, incarnation, request) -> the
    /// durability asked, which decides what the checker holds them to.
    durabilities: BTreeMap<(usize, u32, RequestId), (Durability, Instant)>,
    /// The durability of the commit being made right now (its answer can
    /// come before its request id is known).
    committing: Option<(Durability, Instant)>,
    conn_dirty: bool,
    conn_epoch: u64,
    in_conn_sync: bool,
    /// Channel requests the dispatches owe a response: (site, incarnation,
    /// reply).
    replies: Vec<(usize, u32, ReplyTo)>,
    in_replies: bool,
    timer_spin: (Instant, usize, u32),
}

/// Milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

impl Sim {
    /// Open `cfg.sites` sites over empty disks (nothing started).
    pub fn new(cfg: SimConfig) -> Sim {
        let seed = cfg.seed;
        let mut site_cfg = cfg.site.clone();
        site_cfg.seed = seed;
        let slots = (0..cfg.sites)
            .map(|i| {
                let address = format!("s{i}");
                let mut c = site_cfg.clone();
                c.seed = seed.wrapping_add(i as u64);
                let site = Site::open(c.clone(), &address, SimDisk::new(), Instant(0))
                    .unwrap_or_else(|e| panic!("seed {seed}: site {i} does not open: {e}"));
                Slot {
                    site: Some(site),
                    disk: None,
                    cfg: c,
                    address,
                    peers: Vec::new(),
                    id: SiteId(0),
                    inc: 0,
                    events: Vec::new(),
                    answers: Vec::new(),
                    messages: Vec::new(),
                    channel_reply: None,
                    channel_silent: false,
                    reported: BTreeMap::new(),
                    inq: None,
                    flush_busy: false,
                    flush_want: Lsn::ZERO,
                    members_len: 0,
                    mirror: Vec::new(),
                    was_master: false,
                    rolled_back: false,
                    opened: true,
                    installs: 0,
                    last_generation: Generation(0),
                }
            })
            .collect();
        let trace = match cfg.trace_tail {
            Some(n) => Trace::tail(n),
            None => Trace::full(),
        };
        let check = Checker::new(cfg.sites, &cfg.site);
        Sim {
            net: SimNet::new(cfg.link, Rng::fork(seed, 1)),
            rng: Rng::fork(seed, 2),
            queue: EventQueue::new(),
            now: Instant(0),
            slots,
            trace,
            check,
            waits: BTreeMap::new(),
            durabilities: BTreeMap::new(),
            committing: None,
            conn_dirty: true,
            conn_epoch: 0,
            in_conn_sync: false,
            replies: Vec::new(),
            in_replies: false,
            timer_spin: (Instant(0), usize::MAX, 0),
            cfg,
        }
    }

    /// Site `i` asks these sites (by index) for the log before the master
    /// (S3), now and after every restart.
    pub fn set_peers(&mut self, i: usize, peers: &[usize]) {
        let addrs: Vec<String> = peers.iter().map(|&p| format!("s{p}")).collect();
        if let Some(site) = self.slots[i].site.as_mut() {
            site.set_peers(&peer_refs(&addrs));
        }
        self.slots[i].peers = addrs;
    }

    /// Give site `i` an incoming queue, as a host has (`Node`): it takes
    /// `ns_per_byte` nanoseconds per byte of each frame, frames that arrive
    /// meanwhile wait, and those that would take the queue past the site's
    /// `max_inqueue_bytes` are dropped (counted in [`Sim::inqueue_stats`])
    /// and the site is told (INQUEUE_FULL, R13). Without one (the default)
    /// a site takes every frame the moment it arrives.
    pub fn set_inqueue(&mut self, i: usize, ns_per_byte: u64) {
        self.slots[i].inq = Some(Inqueue {
            ns_per_byte,
            busy_until: self.now,
            frames: Default::default(),
            bytes: 0,
            overflow: false,
            stats: InqueueStats::default(),
        });
    }

    /// What site `i`'s incoming queue did (across restarts); zeros when it
    /// has none.
    pub fn inqueue_stats(&self, i: usize) -> InqueueStats {
        self.slots[i]
            .inq
            .as_ref()
            .map(|q| q.stats)
            .unwrap_or_default()
    }

    /// A frame for `to` arrived: true if the site takes it now; false if
    /// it waits in the site's incoming queue or is dropped there.
    fn enqueue(&mut self, from: usize, to: usize, frame: &[u8], msg: MsgSum) -> bool {
        let now = self.now;
        let cap = self.slots[to].cfg.limits.max_inqueue_bytes as usize;
        let inc = self.slots[to].inc;
        let Some(q) = self.slots[to].inq.as_mut() else {
            return true;
        };
        if q.frames.is_empty() && q.busy_until <= now {
            q.busy_until = Instant(now.0 + q.cost(frame.len()));
            return true;
        }
        let charge = frame.len() + shoal_core::node::FRAME_CHARGE;
        if q.bytes + charge > cap {
            q.stats.dropped += 1;
            if !q.overflow {
                q.overflow = true;
                self.step(
                    to,
                    Input::App("host: incoming queue full".into()),
                    |s, now| {
                        s.handle_inqueue_full(now);
                        ((), None)
                    },
                );
            }
            return false;
        }
        if q.frames.is_empty() {
            self.queue.push(q.busy_until, Ev::Take { site: to, inc });
        }
        q.bytes += charge;
        q.stats.queued += 1;
        q.stats.peak_bytes = q.stats.peak_bytes.max(q.bytes);
        q.frames.push_back((from, frame.to_vec(), msg));
        false
    }

    /// Site `i` takes the next frame of its incoming queue.
    fn take_queued(&mut self, i: usize, inc: u32) {
        if self.slots[i].inc != inc || !self.is_up(i) {
            return;
        }
        let now = self.now;
        let Some(q) = self.slots[i].inq.as_mut() else {
            return;
        };
        let Some((from, frame, msg)) = q.frames.pop_front() else {
            return;
        };
        q.bytes -= frame.len() + shoal_core::node::FRAME_CHARGE;
        q.busy_until = Instant(now.0 + q.cost(frame.len()));
        if q.frames.is_empty() {
            q.overflow = false;
        } else {
            self.queue.push(q.busy_until, Ev::Take { site: i, inc });
        }
        self.step(i, Input::Frame { from, msg }, |s, now| {
            ((), s.handle_frame(now, &frame).err())
        });
    }

    /// A crash or restart empties site `i`'s incoming queue.
    fn clear_inqueue(&mut self, i: usize) {
        if let Some(q) = self.slots[i].inq.as_mut() {
            q.frames.clear();
            q.bytes = 0;
            q.overflow = false;
            q.busy_until = self.now;
        }
    }

    /// Site `i`'s configuration (what it opens with).
    pub fn site_config(&self, i: usize) -> Config {
        self.slots[i].cfg.clone()
    }

    /// Replace one site's configuration (before it is started or
    /// restarted: takes effect at its next open). The site is reopened now
    /// if it is up and idle with an empty log.
    pub fn set_site_config(&mut self, i: usize, cfg: Config) {
        self.check.set_view(i, cfg.view);
        self.slots[i].cfg = cfg.clone();
        let reopen = self.slots[i]
            .site
            .as_ref()
            .is_some_and(|s| s.role() == Role::Idle && s.log_index().is_empty());
        if reopen {
            let s = self.slots[i].site.take().expect("up");
            let disk = s.into_storage();
            let addr = self.slots[i].address.clone();
            let mut site = Site::open(cfg, &addr, disk, self.now)
                .unwrap_or_else(|e| self.fail(&format!("site {i} does not reopen: {e}")));
            site.set_peers(&peer_refs(&self.slots[i].peers));
            site.set_channel_dispatch(self.slots[i].channel_reply.is_some());
            self.slots[i].site = Some(site);
        }
    }

    // ----- accessors ---------------------------------------------------------

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.cfg.seed
    }

    /// Simulated time.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Number of sites.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Never: a simulation has sites.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The site at index `i` (panics if it is down).
    pub fn site(&self, i: usize) -> &Site<SimDisk> {
        self.slots[i]
            .site
            .as_ref()
            .unwrap_or_else(|| self.fail(&format!("site s{i} is down")))
    }

    /// The site at index `i`, mutably. Calls on it bypass the trace; use
    /// [`Sim::act`] to call the site as the application would.
    pub fn site_mut(&mut self, i: usize) -> &mut Site<SimDisk> {
        if self.slots[i].site.is_none() {
            self.fail(&format!("site s{i} is down"));
        }
        self.slots[i].site.as_mut().expect("up")
    }

    /// The disk of site `i` while it is down (a scenario may shape what a
    /// crash left on it).
    pub fn disk_mut(&mut self, i: usize) -> Option<&mut SimDisk> {
        self.slots[i].disk.as_mut()
    }

    /// Is site `i` running?
    pub fn is_up(&self, i: usize) -> bool {
        self.slots[i].site.is_some()
    }

    /// Indexes of running sites.
    pub fn up(&self) -> Vec<usize> {
        (0..self.slots.len()).filter(|&i| self.is_up(i)).collect()
    }

    /// The site id of index `i` (its last known one when down).
    pub fn id(&self, i: usize) -> SiteId {
        self.slots[i].id
    }

    /// The index of the site with this id.
    pub fn index_of(&self, id: SiteId) -> Option<usize> {
        if id.0 == 0 {
            return None;
        }
        self.slots.iter().position(|s| s.id == id)
    }

    /// The index of the running master, if exactly one site is master.
    pub fn master(&self) -> Option<usize> {
        let m: Vec<usize> = self
            .up()
            .into_iter()
            .filter(|&i| self.site(i).role() == Role::Master)
            .collect();
        (m.len() == 1).then(|| m[0])
    }

    /// Events site `i` raised (across restarts), with their times.
    pub fn events(&self, i: usize) -> &[(Instant, Event)] {
        &self.slots[i].events
    }

    /// Answers site `i` gave (time, incarnation, answer).
    pub fn answers(&self, i: usize) -> &[(Instant, u32, Answer)] {
        &self.slots[i].answers
    }

    /// The trace.
    pub fn trace(&self) -> &Trace {
        &self.trace
    }

    /// The network (to cut, clog, or change links).
    pub fn net(&mut self) -> &mut SimNet {
        &mut self.net
    }

    /// The network, read-only.
    pub fn net_ref(&self) -> &SimNet {
        &self.net
    }

    /// The checker (promises, permanent commits).
    pub fn checker(&self) -> &Checker {
        &self.check
    }

    /// The harness's random stream (for scripted random choices).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.trace.total()
    }

    // ----- failure -------------------------------------------------------------

    /// Panic with `msg`, the seed, how to replay, each site's state, and
    /// the end of the trace.
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{}", self.report(msg))
    }

    /// The failure report `fail` panics with.
    pub fn report(&self, msg: &str) -> String {
        let seed = self.cfg.seed;
        let mut s = format!(
            "shoal simulator failure at {} (seed {seed}): {msg}\n  replay: SHOAL_SEED={seed} cargo test -p shoal-tests --test {} {} -- --nocapture\n",
            fmt_time(self.now),
            self.cfg.test,
            self.cfg.name
        );
        s.push_str(&self.status());
        if std::env::var("SHOAL_TRACE").is_ok() {
            let path =
                std::env::temp_dir().join(format!("shoal-sim-{}-{seed}.trace", self.cfg.name));
            match std::fs::write(&path, self.trace.render()) {
                Ok(()) => s.push_str(&format!("  trace written to {}\n", path.display())),
                Err(e) => s.push_str(&format!("  trace not written: {e}\n")),
            }
        } else {
            s.push_str("  (SHOAL_TRACE=1 writes the whole trace to a file)\n");
        }
        s.push_str("last steps:\n");
        s.push_str(&self.trace.render_tail(60));
        s
    }

    /// One line per site: role, master, generation, LSNs, digest.
    pub fn status(&self) -> String {
        let mut s = String::new();
        for (i, slot) in self.slots.iter().enumerate() {
            match &slot.site {
                Some(site) => s.push_str(&format!(
                    "  s{i} id {} {:?}{} master {:?} gen {} last {:?} flushed {:?} records {} members {} digest {:08x}{}\n",
                    site.id().0,
                    site.role(),
                    match (site.is_view(), site.view_databases()) {
                        (false, _) => String::new(),
                        (true, []) => " (view)".to_string(),
                        (true, dbs) => format!(" (view of {})", dbs.join(",")),
                    },
                    site.master().map(|m| m.0),
                    site.generation().0,
                    site.last_lsn(),
                    site.flushed_lsn(),
                    site.log_index().len(),
                    site.members().len(),
                    site.store().digest(),
                    if site.is_synchronizing() { " (synchronizing)" } else { "" }
                )),
                None => s.push_str(&format!("  s{i} id {} DOWN\n", slot.id.0)),
            }
        }
        s
    }

    // ----- the engine: steps ---------------------------------------------------

    /// Feed site `i` one input through `act`, then drain and route its
    /// outputs, record the step, and check every invariant.
    pub(crate) fn step<R>(
        &mut self,
        i: usize,
        input: Input,
        act: impl FnOnce(&mut Site<SimDisk>, Instant) -> (R, Option<Drop>),
    ) -> R {
        let now = self.now;
        self.slots[i].rolled_back = false;
        let site = self.slots[i].site.as_mut().expect("step on a live site");
        let (r, dropped) = act(site, now);
        let outputs = self.drain(i);
        self.trace.push(Step {
            time: now,
            site: i,
            input,
            dropped,
            outputs,
        });
        self.after_step(i);
        self.answer_requests();
        r
    }

    /// Play each dispatch: answer the channel requests it received.
    fn answer_requests(&mut self) {
        if self.in_replies {
            return;
        }
        self.in_replies = true;
        while !self.replies.is_empty() {
            let (i, inc, reply) = self.replies.remove(0);
            if !self.is_up(i) || self.slots[i].inc != inc {
                continue;
            }
            let Some(part) = self.slots[i].channel_reply.clone() else {
                continue;
            };
            if self.slots[i].channel_silent {
                continue;
            }
            let what = format!("channel_respond to {} #{}", reply.site.0, reply.request);
            let r = self.act(i, &what, |s, now| s.channel_respond(now, reply, &part));
            if let Err(e) = r {
                self.fail(&format!("s{i} could not respond: {e}"));
            }
        }
        self.in_replies = false;
    }

    fn resolve(&self, d: &Dest) -> Option<usize> {
        match d {
            Dest::Site(id) => self.index_of(*id),
            Dest::Address(a) => self.slots.iter().position(|s| s.address == *a),
        }
    }

    fn drain(&mut self, i: usize) -> Vec<Out> {
        let mut outs = Vec::new();
        while let Some(o) = self.slots[i].site.as_mut().and_then(|s| s.poll_output()) {
            match o {
                Output::Send { to, frame, .. } => {
                    let target = self.resolve(&to);
                    let msg = MsgSum::of(&frame, &self.slots[i].cfg.limits);
                    if let Some(kind) = msg.kind {
                        if let Err(e) = self.check.on_send(i, kind, msg.a) {
                            self.fail(&e);
                        }
                    }
                    let mut copies = 0u8;
                    if let Some(t) = target {
                        let times = self.net.route(self.now, i, t);
                        copies = times.len() as u8;
                        let (from_inc, to_inc) = (self.slots[i].inc, self.slots[t].inc);
                        for at in times {
                            self.queue.push(
                                at,
                                Ev::Deliver {
                                    from: i,
                                    from_inc,
                                    to: t,
                                    to_inc,
                                    frame: frame.clone(),
                                    msg,
                                },
                            );
                        }
                    }
                    outs.push(Out::Send {
                        to: target,
                        msg,
                        copies,
                    });
                }
                Output::Flush { lsn } => {
                    let slot = &mut self.slots[i];
                    slot.flush_want = slot.flush_want.max(lsn);
                    if !slot.flush_busy {
                        self.start_flush(i);
                    }
                    outs.push(Out::Flush(lsn));
                }
                Output::Event(e) => {
                    if let Event::Rollback(rb) = &e {
                        self.slots[i].rolled_back = true;
                        self.check_rollback(i, rb);
                    }
                    self.slots[i].events.push((self.now, e.clone()));
                    outs.push(Out::Event(e));
                }
                Output::Answer(a) => {
                    if let Answer::Commit { id, result } = &a {
                        let d = self
                            .durabilities
                            .remove(&(i, self.slots[i].inc, *id))
                            .or(self.committing);
                        if let Ok(o) = result {
                            let (d, made) = d.unwrap_or((Durability::Sync, Instant(0)));
                            self.check_commit_answer(i, o, d, made);
                        }
                    }
                    if let Answer::TxnApplied { id, result } = &a {
                        let key = (i, self.slots[i].inc, *id);
                        if let Some(token) = self.waits.remove(&key) {
                            self.check_txn_answer(i, token, *result);
                        }
                    }
                    let inc = self.slots[i].inc;
                    self.slots[i].answers.push((self.now, inc, a.clone()));
                    outs.push(Out::Answer(a));
                }
                Output::Message(m) => {
                    let inc = self.slots[i].inc;
                    if let Some(r) = m.reply {
                        self.replies.push((i, inc, r));
                    }
                    self.slots[i].messages.push((self.now, inc, m.clone()));
                    outs.push(Out::Message(m));
                }
            }
        }
        outs
    }

    fn start_flush(&mut self, i: usize) {
        let lat = self.rng.range(
            self.cfg.fsync_min.as_micros() as u64,
            self.cfg.fsync_max.as_micros() as u64,
        );
        let slot = &mut self.slots[i];
        slot.flush_busy = true;
        let ev = Ev::FlushDone {
            site: i,
            inc: slot.inc,
            lsn: slot.flush_want,
        };
        self.queue.push(Instant(self.now.0 + lat), ev);
    }

    fn after_step(&mut self, i: usize) {
        if let Some(site) = self.slots[i].site.as_ref() {
            let id = site.id();
            let n = site.members().len();
            let slot = &mut self.slots[i];
            if slot.id != id || slot.members_len != n {
                slot.id = id;
                slot.members_len = n;
                self.conn_dirty = true;
            }
        }
        self.check_site(i);
        if self.net.epoch() != self.conn_epoch {
            self.conn_epoch = self.net.epoch();
            self.conn_dirty = true;
        }
        if self.conn_dirty && !self.in_conn_sync {
            self.sync_connections();
        }
    }

    /// Tell every site about connections that opened or broke: a peer is
    /// connected when it is up and both directions of the link deliver.
    fn sync_connections(&mut self) {
        self.in_conn_sync = true;
        while self.conn_dirty {
            self.conn_dirty = false;
            for i in 0..self.slots.len() {
                let Some(site) = self.slots[i].site.as_ref() else {
                    continue;
                };
                let me = site.id();
                let peers: Vec<SiteId> = site
                    .members()
                    .iter()
                    .map(|m| m.id)
                    .filter(|&id| id != me)
                    .collect();
                for peer in peers {
                    let up = self
                        .index_of(peer)
                        .is_some_and(|t| self.is_up(t) && self.net.connected(i, t));
                    if self.slots[i].reported.get(&peer).copied().unwrap_or(false) == up {
                        continue;
                    }
                    if self.slots[i].site.is_none() {
                        break;
                    }
                    self.slots[i].reported.insert(peer, up);
                    self.step(i, Input::Connection { peer, up }, |s, now| {
                        s.handle_connection(now, peer, up);
                        ((), None)
                    });
                }
            }
        }
        self.in_conn_sync = false;
    }

    fn next_timer(&self) -> Option<(Instant, usize)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.site.as_ref()?.poll_timeout().map(|t| (t, i)))
            .min()
    }

    /// Take the next step due at or before `end`; false if there is none.
    pub fn step_once(&mut self, end: Instant) -> bool {
        let ev = self.queue.peek_time();
        let timer = self.next_timer();
        match (timer, ev) {
            (Some((t, i)), ev) if t <= end && ev.is_none_or(|e| t <= e) => {
                self.now = self.now.max(t);
                self.fire_timeout(i);
                true
            }
            (_, Some(e)) if e <= end => {
                let (at, ev) = self.queue.pop().expect("peeked");
                if at < self.now {
                    self.fail("the event queue went back in time");
                }
                self.now = at;
                self.handle_event(ev);
                true
            }
            _ => false,
        }
    }

    fn fire_timeout(&mut self, i: usize) {
        let (t, s, n) = self.timer_spin;
        if t == self.now && s == i {
            self.timer_spin.2 = n + 1;
            if n + 1 > 1000 {
                let deadline = self.site(i).poll_timeout();
                self.fail(&format!(
                    "site s{i} spins: handle_timeout({}) leaves poll_timeout at {:?}, \
                     so a host calling it at each deadline never advances",
                    fmt_time(self.now),
                    deadline
                ));
            }
        } else {
            self.timer_spin = (self.now, i, 1);
        }
        self.step(i, Input::Timeout, |s, now| {
            s.handle_timeout(now);
            ((), None)
        });
    }

    fn handle_event(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver {
                from,
                from_inc,
                to,
                to_inc,
                frame,
                msg,
            } => {
                // A crash breaks the connection: what was in flight to or
                // from the crashed incarnation is gone.
                if self.slots[from].inc != from_inc
                    || self.slots[to].inc != to_inc
                    || !self.is_up(to)
                    || !self.net.arrives(from, to)
                {
                    return;
                }
                if !self.enqueue(from, to, &frame, msg) {
                    return;
                }
                self.step(to, Input::Frame { from, msg }, |s, now| {
                    ((), s.handle_frame(now, &frame).err())
                });
            }
            Ev::Take { site, inc } => self.take_queued(site, inc),
            Ev::FlushDone { site, inc, lsn } => {
                if self.slots[site].inc != inc || !self.is_up(site) {
                    return;
                }
                self.slots[site].flush_busy = false;
                self.step(site, Input::Flushed(lsn), |s, now| {
                    if let Err(e) = s.storage_mut().sync() {
                        panic!("SimDisk sync failed: {e}");
                    }
                    s.handle_flushed(now, lsn);
                    ((), None)
                });
                let slot = &self.slots[site];
                if slot.site.is_some() && !slot.flush_busy && slot.flush_want > lsn {
                    self.start_flush(site);
                }
            }
        }
    }

    // ----- running time ----------------------------------------------------------

    /// Run every step due up to `end`, then set the clock to `end`.
    pub fn run_until(&mut self, end: Instant) {
        while self.step_once(end) {}
        self.now = self.now.max(end);
    }

    /// Run for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        self.run_until(end);
    }

    /// Run until `pred` holds (checked after every step), failing with
    /// `what` if it does not within `bound`. Returns the time it took.
    pub fn run_until_true(
        &mut self,
        bound: Duration,
        what: &str,
        mut pred: impl FnMut(&Sim) -> bool,
    ) -> Duration {
        let start = self.now;
        let end = self.now + bound;
        loop {
            if pred(self) {
                return self.now.since(start);
            }
            if !self.step_once(end) {
                self.now = self.now.max(end);
                if pred(self) {
                    return self.now.since(start);
                }
                self.fail(&format!("not within {bound:?}: {what}"));
            }
        }
    }

    // ----- application and operator actions ----------------------------------

    /// Call site `i` as the application would (traced as `what`).
    pub fn act<R>(
        &mut self,
        i: usize,
        what: &str,
        f: impl FnOnce(&mut Site<SimDisk>, Instant) -> R,
    ) -> R {
        if !self.is_up(i) {
            self.fail(&format!("{what}: site s{i} is down"));
        }
        self.step(i, Input::App(what.into()), |s, now| (f(s, now), None))
    }

    /// Site 0 creates the group; every other site joins through site 0, in
    /// index order; returns once every site is a client of site 0 and
    /// caught up.
    pub fn start_group(&mut self) {
        self.act(0, "create_group", |s, now| s.create_group(now))
            .unwrap_or_else(|e| self.fail(&format!("create_group: {e}")));
        // One at a time, so site i gets id i + 1.
        for i in 1..self.len() {
            self.act(i, "join s0", |s, now| s.join(now, "s0"));
            self.run_until_true(ms(30_000), "the site joined", |sim| sim.site(i).id().0 != 0);
        }
        let n = self.len();
        self.run_until_true(ms(30_000), "every site joined and caught up", |sim| {
            sim.converged_quick() && sim.site(0).members().len() == n
        });
    }

    /// Commit `ops` on site `i` (the request id, or the refusal).
    pub fn commit(
        &mut self,
        i: usize,
        ops: &[Op<'_>],
        durability: Durability,
    ) -> Result<RequestId, CommitError> {
        let what = format!("commit {} ({durability:?})", describe_ops(ops));
        self.commit_with(i, &what, durability, |s, now| {
            s.commit(now, ops, durability)
        })
    }

    /// Put or delete one key on site `i` outside a transaction: a commit
    /// on the master, forwarded by a client with `forward_writes` (W1).
    pub fn forward_write(
        &mut self,
        i: usize,
        op: Op<'_>,
        durability: Durability,
    ) -> Result<RequestId, CommitError> {
        let what = format!("write {} ({durability:?})", describe_ops(&[op]));
        self.commit_with(i, &what, durability, |s, now| s.write(now, op, durability))
    }

    /// Start a commit-like request and remember its durability until it
    /// is answered, for the checker.
    fn commit_with(
        &mut self,
        i: usize,
        what: &str,
        durability: Durability,
        start: impl FnOnce(&mut Site<SimDisk>, Instant) -> Result<RequestId, CommitError>,
    ) -> Result<RequestId, CommitError> {
        let before = self.is_up(i).then(|| self.slots[i].answers.len());
        self.committing = Some((durability, self.now));
        let r = self.act(i, what, start);
        self.committing = None;
        if let (Ok(id), Some(before)) = (r, before) {
            // The answer may have come within the call (nothing to wait for).
            let answered = self.slots[i].answers[before..]
                .iter()
                .any(|(_, _, a)| matches!(a, Answer::Commit { id: x, .. } if *x == id));
            if !answered {
                let made = self.now;
                self.durabilities
                    .insert((i, self.slots[i].inc, id), (durability, made));
            }
        }
        r
    }

    /// Put `key` = `value` in database "db" on site `i` with sync
    /// durability, and wait for the answer.
    pub fn write(&mut self, i: usize, key: &str, value: &str) -> CommitOutcome {
        self.write_with(i, key, value, Durability::Sync)
    }

    /// Put `key` = `value` in database "db" with `durability`, and wait.
    pub fn write_with(
        &mut self,
        i: usize,
        key: &str,
        value: &str,
        durability: Durability,
    ) -> CommitOutcome {
        let ops = [Op::Put {
            db: "db",
            key: key.as_bytes(),
            value: value.as_bytes(),
        }];
        let id = self
            .commit(i, &ops, durability)
            .unwrap_or_else(|e| self.fail(&format!("commit {key} refused: {e}")));
        self.wait_commit(i, id, ms(10_000))
    }

    /// The answer to commit `id` on site `i`, once it has come.
    pub fn commit_answer(&self, i: usize, id: RequestId) -> Option<CommitOutcome> {
        let inc = self.slots[i].inc;
        self.slots[i].answers.iter().find_map(|(_, n, a)| match a {
            Answer::Commit { id: x, result } if *x == id && *n == inc => {
                Some((*result).unwrap_or_else(|e| self.fail(&format!("commit {id} failed: {e}"))))
            }
            _ => None,
        })
    }

    // ----- message channels (W2) ------------------------------------------

    /// Give site `i` a dispatch that answers every request with `reply`
    /// (None: no dispatch). Kept across restarts.
    pub fn set_channel_reply(&mut self, i: usize, reply: Option<&[u8]>) {
        self.slots[i].channel_reply = reply.map(<[u8]>::to_vec);
        let on = reply.is_some();
        if self.is_up(i) {
            self.act(i, "set_channel_dispatch", |s, _| s.set_channel_dispatch(on));
        }
    }

    /// Make site `i`'s dispatch take requests without answering them
    /// (`silent`), or answer them again.
    pub fn set_channel_silent(&mut self, i: usize, silent: bool) {
        self.slots[i].channel_silent = silent;
    }

    /// Channel messages site `i` received (time, incarnation, message).
    pub fn messages(&self, i: usize) -> &[(Instant, u32, Incoming)] {
        &self.slots[i].messages
    }

    /// Send a channel message from site `i` (fire-and-forget).
    pub fn channel_send(
        &mut self,
        i: usize,
        target: ChannelTarget,
        parts: &[&[u8]],
    ) -> Result<SiteId, ChannelSendError> {
        self.act(i, &format!("channel_send to {target}"), |s, now| {
            s.channel_send(now, target, parts)
        })
    }

    /// Start a channel request on site `i`.
    pub fn channel_request(
        &mut self,
        i: usize,
        target: ChannelTarget,
        parts: &[&[u8]],
        timeout: Option<Duration>,
    ) -> Result<RequestId, ChannelSendError> {
        self.act(i, &format!("channel_request to {target}"), |s, now| {
            s.channel_request(now, target, parts, timeout)
        })
    }

    /// The outcome of channel request `id` on site `i`, once it has come.
    pub fn channel_answer(
        &self,
        i: usize,
        id: RequestId,
    ) -> Option<Result<Vec<u8>, ChannelRequestError>> {
        let inc = self.slots[i].inc;
        self.slots[i].answers.iter().find_map(|(_, n, a)| match a {
            Answer::Channel { id: x, result } if *x == id && *n == inc => Some(result.clone()),
            _ => None,
        })
    }

    /// Run until channel request `id` on site `i` is answered.
    pub fn wait_channel(
        &mut self,
        i: usize,
        id: RequestId,
        bound: Duration,
    ) -> Result<Vec<u8>, ChannelRequestError> {
        self.run_until_true(
            bound,
            &format!("channel request {id} on s{i} answered"),
            |sim| sim.channel_answer(i, id).is_some(),
        );
        self.channel_answer(i, id).expect("answered")
    }

    /// Run until commit `id` on site `i` is answered.
    pub fn wait_commit(&mut self, i: usize, id: RequestId, bound: Duration) -> CommitOutcome {
        self.run_until_true(bound, &format!("commit {id} on s{i} answered"), |sim| {
            sim.commit_answer(i, id).is_some()
        });
        self.commit_answer(i, id).expect("answered")
    }

    /// `txn_applied` on site `i`; runs until answered.
    pub fn txn_applied(
        &mut self,
        i: usize,
        token: CommitToken,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let id = self.start_txn_applied(i, token, timeout);
        let inc = self.slots[i].inc;
        let find = |sim: &Sim| {
            sim.slots[i].answers.iter().find_map(|(_, n, a)| match a {
                Answer::TxnApplied { id: x, result } if *x == id && *n == inc => Some(*result),
                _ => None,
            })
        };
        self.run_until_true(timeout + ms(1000), "txn_applied answered", |sim| {
            find(sim).is_some()
        });
        find(self).expect("answered")
    }

    /// Call `txn_applied` on site `i` without waiting; its answer, whenever
    /// it comes, is checked against the site's log.
    pub fn start_txn_applied(
        &mut self,
        i: usize,
        token: CommitToken,
        timeout: Duration,
    ) -> RequestId {
        let what = format!(
            "txn_applied {:?} g{} within {timeout:?}",
            token.lsn, token.generation.0
        );
        let id = self.act(i, &what, |s, now| s.txn_applied(now, token, timeout));
        let inc = self.slots[i].inc;
        let early = self.slots[i].answers.iter().find_map(|(_, n, a)| match a {
            Answer::TxnApplied { id: x, result } if *x == id && *n == inc => Some(*result),
            _ => None,
        });
        match early {
            Some(result) => self.check_txn_answer(i, token, result),
            None => {
                self.waits.insert((i, inc, id), token);
            }
        }
        id
    }

    /// The machine of site `i` loses power: the site is dropped and its
    /// disk forgets what was not synced.
    pub fn crash(&mut self, i: usize, mode: CrashMode) {
        let Some(site) = self.slots[i].site.take() else {
            self.fail(&format!("crash: s{i} is already down"));
        };
        let was_master = site.role() == Role::Master;
        let mut disk = site.into_storage();
        let before = disk.stats();
        disk.crash(mode, &mut self.rng);
        let after = disk.stats();
        let slot = &mut self.slots[i];
        slot.disk = Some(disk);
        slot.inc += 1;
        self.clear_inqueue(i);
        let slot = &mut self.slots[i];
        slot.flush_busy = false;
        slot.flush_want = Lsn::ZERO;
        slot.reported.clear();
        slot.mirror.clear();
        slot.installs = 0;
        slot.was_master = false;
        slot.members_len = 0;
        self.conn_dirty = true;
        self.check.on_crash(i, self.now, mode);
        self.durabilities.retain(|k, _| k.0 != i);
        self.trace.push(Step {
            time: self.now,
            site: i,
            input: Input::App(format!(
                "CRASH {mode:?}{}: lost {} unsynced bytes, kept {} torn",
                if was_master { " (master)" } else { "" },
                after.bytes_lost - before.bytes_lost,
                after.torn_bytes_kept - before.torn_bytes_kept
            )),
            dropped: None,
            outputs: Vec::new(),
        });
        if !self.in_conn_sync {
            self.sync_connections();
        }
    }

    /// Restart a crashed site over its disk (recovery runs in
    /// `Site::open`), then start it as `how` says.
    pub fn restart(&mut self, i: usize, how: Start) {
        let Some(disk) = self.slots[i].disk.take() else {
            self.fail(&format!("restart: s{i} is not down"));
        };
        let cfg = self.slots[i].cfg.clone();
        let addr = self.slots[i].address.clone();
        let mut site = Site::open(cfg, &addr, disk, self.now)
            .unwrap_or_else(|e| self.fail(&format!("s{i} does not reopen after a crash: {e}")));
        site.set_peers(&peer_refs(&self.slots[i].peers));
        site.set_channel_dispatch(self.slots[i].channel_reply.is_some());
        self.slots[i].site = Some(site);
        self.slots[i].opened = true;
        self.check.on_restart(i);
        let how = match how {
            Start::Rejoin => {
                let helper = self
                    .master()
                    .filter(|&m| m != i)
                    .or_else(|| self.up().into_iter().find(|&j| j != i))
                    .unwrap_or(0);
                Start::Join(self.slots[helper].address.clone())
            }
            h => h,
        };
        let what = match &how {
            Start::Client => "RESTART; rep_start_client".to_string(),
            Start::Join(h) => format!("RESTART; join {h}"),
            Start::Idle | Start::Rejoin => "RESTART".to_string(),
        };
        self.act(i, &what, |s, now| match how {
            Start::Client => s.rep_start_client(now),
            Start::Join(h) => s.join(now, &h),
            Start::Idle | Start::Rejoin => {}
        });
    }

    /// The operator makes site `i` master. Like an election's winner (E1),
    /// it must take a generation above every generation any site has used
    /// (`rep_start_master` takes max(generation + 1, egen)); when the site
    /// has not heard of the newest one, the operator first raises its
    /// election generation, as an election would, through a clean restart
    /// (sync, write the metadata, reopen).
    pub fn promote(&mut self, i: usize) {
        if !self.check.is_best_candidate(self, i) {
            self.check.break_promises(
                self.now,
                &format!("operator promoted s{i}, not the most up-to-date site"),
            );
        }
        let above = self.max_generation();
        let s = self.site(i);
        if s.generation().0.max(s.egen().0.saturating_sub(1)) < above.0 {
            self.raise_egen(i, ElectionGen(above.0 + 1));
        }
        self.act(i, "operator: rep_start_master", |s, now| {
            s.rep_start_master(now)
        })
        .unwrap_or_else(|e| self.fail(&format!("rep_start_master on s{i}: {e}")));
        if self.site(i).generation() <= above {
            self.fail(&format!(
                "s{i} became master of generation {}, not above {}",
                self.site(i).generation().0,
                above.0
            ));
        }
    }

    /// Promote site `i` without asking whether it is the most up-to-date
    /// site and without telling the checker: a careless operator (for
    /// tests of the checker).
    pub fn promote_unchecked(&mut self, i: usize) {
        self.act(i, "operator (careless): rep_start_master", |s, now| {
            s.rep_start_master(now)
        })
        .unwrap_or_else(|e| self.fail(&format!("rep_start_master on s{i}: {e}")));
    }

    /// Shut site `i` down cleanly, set its election generation to `egen`
    /// in its metadata, and reopen it.
    fn raise_egen(&mut self, i: usize, egen: ElectionGen) {
        let site = self.slots[i].site.take().expect("up");
        let mut disk = site.into_storage();
        let bytes = disk
            .read_meta()
            .ok()
            .flatten()
            .unwrap_or_else(|| self.fail(&format!("s{i} has no metadata")));
        let mut meta =
            Meta::decode(&bytes).unwrap_or_else(|e| self.fail(&format!("s{i}'s metadata: {e}")));
        meta.egen = egen;
        let _ = disk.sync();
        let _ = disk.write_meta(&meta.encode());
        let cfg = self.slots[i].cfg.clone();
        let addr = self.slots[i].address.clone();
        let mut site = Site::open(cfg, &addr, disk, self.now)
            .unwrap_or_else(|e| self.fail(&format!("s{i} does not reopen: {e}")));
        site.set_peers(&peer_refs(&self.slots[i].peers));
        site.set_channel_dispatch(self.slots[i].channel_reply.is_some());
        let slot = &mut self.slots[i];
        slot.site = Some(site);
        slot.opened = true;
        slot.reported.clear();
        slot.flush_busy = false;
        slot.flush_want = Lsn::ZERO;
        slot.inc += 1;
        self.clear_inqueue(i);
        self.conn_dirty = true;
        self.act(
            i,
            &format!("operator: election generation {} (clean restart)", egen.0),
            |_, _| (),
        );
    }

    /// The highest generation any site (up or down) has seen.
    pub fn max_generation(&self) -> Generation {
        let mut g = Generation(0);
        for s in &self.slots {
            g = g.max(s.last_generation);
            if let Some(site) = &s.site {
                g = g.max(site.generation());
                if let Some(e) = site.log_index().last() {
                    g = g.max(e.generation);
                }
            }
        }
        g
    }

    /// The running site an election would pick: newest generation of data,
    /// then highest LSN (lowest index on a tie). Only electable sites
    /// (priority above 0) with an id.
    pub fn best_candidate(&self) -> Option<usize> {
        self.up()
            .into_iter()
            .filter(|&i| self.site(i).id().0 != 0)
            .filter(|&i| self.site(i).config().effective_priority() > 0)
            // A site whose store is ahead of its log (S6) cannot lead.
            .filter(|&i| !self.site(i).initializing())
            .max_by_key(|&i| {
                let s = self.site(i);
                let g = s.log_index().last().map_or(Generation(0), |e| e.generation);
                (g, s.last_lsn(), std::cmp::Reverse(i))
            })
    }

    /// The operator promotes the most up-to-date running site.
    pub fn promote_best(&mut self) -> usize {
        let i = self
            .best_candidate()
            .unwrap_or_else(|| self.fail("no site to promote"));
        self.promote(i);
        i
    }

    /// Cut both directions between the two sides.
    pub fn partition(&mut self, left: &[usize], right: &[usize]) {
        self.net.partition(left, right);
        self.note(&format!("NET partition {left:?} | {right:?}"));
        self.sync_now();
    }

    /// Cut `from -> to` only.
    pub fn cut(&mut self, from: usize, to: usize) {
        self.net.cut(from, to);
        self.note(&format!("NET cut s{from} -> s{to}"));
        self.sync_now();
    }

    /// Cut site `i` off from everyone.
    pub fn isolate(&mut self, i: usize) {
        let n = self.len();
        self.net.isolate(i, n);
        self.note(&format!("NET isolate s{i}"));
        self.sync_now();
    }

    /// Restore every link.
    pub fn heal(&mut self) {
        self.net.recover();
        self.note("NET heal");
        self.sync_now();
    }

    /// Hold messages on `from -> to` for `d`.
    pub fn clog(&mut self, from: usize, to: usize, d: Duration) {
        let until = self.now + d;
        self.net.clog(from, to, until);
        self.note(&format!("NET clog s{from} -> s{to} for {d:?}"));
    }

    fn sync_now(&mut self) {
        self.conn_dirty = true;
        if !self.in_conn_sync {
            self.sync_connections();
        }
    }

    /// Record a harness note in the trace.
    pub fn note(&mut self, what: &str) {
        self.trace.push(Step {
            time: self.now,
            site: usize::MAX,
            input: Input::App(what.into()),
            dropped: None,
            outputs: Vec::new(),
        });
    }

    // ----- convergence -------------------------------------------------------

    /// Every site up, exactly one master, every other site its caught-up
    /// client: same last LSN and same store digest.
    pub fn converged(&self) -> bool {
        if !self.converged_quick() {
            return false;
        }
        let m = self.master().expect("quick check found a master");
        self.up()
            .into_iter()
            .all(|i| self.site(i).store().digest() == self.restricted_digest(m, i))
    }

    /// Like [`Sim::converged`] without comparing stores.
    pub fn converged_quick(&self) -> bool {
        if self.up().len() != self.len() {
            return false;
        }
        let Some(m) = self.master() else {
            return false;
        };
        let ms = self.site(m);
        let (mid, last) = (ms.id(), ms.last_lsn());
        (0..self.len()).all(|i| {
            let s = self.site(i);
            i == m
                || (s.role() == Role::Client
                    && s.master() == Some(mid)
                    && s.last_lsn() == last
                    && s.generation() == ms.generation()
                    && !s.is_synchronizing())
        })
    }

    /// Faults stop: heal the network and make it reliable, restart every
    /// crashed site ([`Start::Rejoin`]), let the operator promote a master if none
    /// runs, write one barrier commit, and require every site to converge
    /// within `bound`. Then check the final state (see
    /// [`Sim::check_final`]). Returns the time convergence took.
    pub fn converge(&mut self, bound: Duration) -> Duration {
        let start = self.now;
        self.note("FAULTS STOP");
        self.net.recover();
        let link = self.net.default_link().reliable();
        self.net.set_default(link);
        self.net.reset_links();
        self.sync_now();
        for i in 0..self.len() {
            if !self.is_up(i) {
                self.restart(i, Start::Rejoin);
            }
        }
        let ops = [Op::Put {
            db: "barrier",
            key: b"barrier",
            value: b"1",
        }];
        let elections = self.slots.iter().any(|s| s.cfg.elections);
        let (m, id) = loop {
            if elections {
                // The sites elect a master themselves; a master may still
                // step down (P3) before the group has settled.
                let left = bound.saturating_sub(self.now.since(start));
                self.run_until_true(left, "a master is elected", |sim| sim.master().is_some());
            } else if self.master().is_none() {
                // Let restarted sites settle first, so the operator sees them.
                self.run_for(ms(50));
                if self.master().is_none() {
                    self.promote_best();
                }
            }
            self.run_for(ms(100));
            let Some(m) = self.master() else {
                if elections && self.now.since(start) < bound {
                    continue;
                }
                self.fail("no single master");
            };
            match self.commit(m, &ops, Durability::Sync) {
                Ok(id) => break (m, id),
                Err(e) if !elections => self.fail(&format!("barrier commit refused: {e}")),
                Err(_) => {}
            }
        };
        let left = bound.saturating_sub(self.now.since(start));
        self.run_until_true(left, "every site converged", |sim| sim.converged());
        self.wait_commit(m, id, ms(5_000));
        self.run_until_true(ms(5_000), "every site converged after the barrier", |sim| {
            sim.converged()
        });
        self.check_final();
        self.now.since(start)
    }
}

/// `secs.micros`.
pub fn fmt_time(t: Instant) -> String {
    format!("{}.{:06}", t.0 / 1_000_000, t.0 % 1_000_000)
}

/// A short text for a list of operations.
pub fn describe_ops(ops: &[Op<'_>]) -> String {
    let mut s = String::new();
    for (k, op) in ops.iter().enumerate() {
        if k > 0 {
            s.push_str(", ");
        }
        match op {
            Op::Put { db, key, value } => s.push_str(&format!(
                "put {db}/{}={}",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(value)
            )),
            Op::Delete { db, key } => {
                s.push_str(&format!("del {db}/{}", String::from_utf8_lossy(key)))
            }
        }
    }
    s
}

fn peer_refs(peers: &[String]) -> Vec<&str> {
    peers.iter().map(String::as_str).collect()
}
