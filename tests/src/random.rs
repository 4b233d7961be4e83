//! Randomized fault runs (issue 3, item 6): one seed picks a group size, a
//! configuration, a network and a workload; the run writes through faults
//! (loss, duplication, reordering, partitions, clogged links, client
//! crashes with torn writes, master crashes with the operator promoting the
//! most up-to-date running site, restarts) for a few simulated seconds,
//! then the faults stop and every site must converge. Every step is
//! checked by the invariants of [`crate::check`].

use crate::disk::CrashMode;
use crate::net::LinkConfig;
use crate::rng::Rng;
use crate::sim::{ms, Sim, SimConfig, Start};
use shoal_core::config::{AckPolicy, Config, Durability, Limits};
use shoal_core::log::Op;
use shoal_core::site::{Answer, Role};
use shoal_core::{CommitToken, Instant};
use std::time::Duration;

/// What one run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct RunSummary {
    /// The seed.
    pub seed: u64,
    /// Sites in the group.
    pub sites: usize,
    /// Steps taken.
    pub steps: u64,
    /// Commits accepted.
    pub commits: u64,
    /// Commits answered permanent (and so tracked).
    pub permanent: u64,
    /// Crashes.
    pub crashes: u64,
    /// Master crashes.
    pub master_crashes: u64,
    /// Operator promotions.
    pub promotions: u64,
    /// Partition changes.
    pub partitions: u64,
    /// Rollback events.
    pub rollbacks: u64,
    /// Commits rolled back.
    pub rolled_back_commits: u64,
    /// Simulated time of the whole run.
    pub sim_time: Duration,
    /// Simulated time convergence took.
    pub converge_time: Duration,
    /// Whether the promised conditions held throughout.
    pub promises_held: bool,
    /// Sites had client-to-client peers (S3).
    pub peers: bool,
    /// Log requests served by clients for other clients (S3).
    pub peer_served: u64,
    /// Sites forwarded writes to the master (W1).
    pub forwarding: bool,
    /// Single writes made on clients and forwarded (W1).
    pub forwards: u64,
    /// Forwarded writes the master committed (W1).
    pub forwards_served: u64,
    /// The master archived its log (small segments, short retention), so
    /// a client that falls behind may need initialising (S6).
    pub archiving: bool,
    /// Internal initialisations completed (INIT_DONE events, S6).
    pub inits: u64,
    /// One site takes smaller snapshot pages than its masters serve (S6).
    pub small_pages: bool,
    /// Of the initialisations, those of that site.
    pub small_page_inits: u64,
    /// Checkpoint snapshots built over several steps while records were
    /// applied (fuzzy, R8), on the sites up at the end.
    pub fuzzy_snapshots: u64,
    /// One site takes smaller bulk log messages (and sometimes frames)
    /// than the other sites send (R11).
    pub small_bulk: bool,
    /// That site's log requests since it last opened (its catch-ups and
    /// gap fills, each answered in bulks cut to its size).
    pub small_bulk_requests: u64,
    /// One site has a device's small incoming queue and body limits at
    /// the edge of the workload's records (R13, R11).
    pub small_queue: bool,
    /// Frames that waited in that site's queue.
    pub small_queue_queued: u64,
    /// Frames dropped from that site's queue (re-requested: R13).
    pub small_queue_dropped: u64,
    /// One site was a view (R12).
    pub view: bool,
    /// That view applied some databases only.
    pub partial_view: bool,
    /// Log requests that view served for other sites as a peer (S3).
    pub view_served: u64,
    /// Channel requests made (W2).
    pub channel_requests: u64,
    /// Of them, answered with a response part (W2).
    pub channel_answered: u64,
}

/// What the randomized run is allowed to do.
#[derive(Clone, Copy, Debug)]
pub struct RandomOpts {
    /// Simulated time of the fault phase.
    pub fault_time: Duration,
    /// Keep this many trace steps (None: all).
    pub trace_tail: Option<usize>,
    /// Sites elect a new master themselves (E1) instead of the operator
    /// promoting one.
    pub elections: bool,
    /// Half the seeds forward single writes made on clients (W1). Off
    /// replays a seed as it ran before forwarding existed.
    pub forwarding: bool,
    /// Half the seeds send channel messages and requests between sites
    /// (W2) and check each request ends once, by its timeout at the
    /// latest. Off replays a seed as it ran before channels existed.
    pub channels: bool,
    /// A third of the seeds of three sites or more make one site a view
    /// (R12), half of those a view of some databases only. Off replays a
    /// seed as it ran before views were tried.
    pub views: bool,
}

impl Default for RandomOpts {
    fn default() -> Self {
        RandomOpts {
            fault_time: ms(3_000),
            trace_tail: Some(300),
            elections: false,
            forwarding: true,
            channels: true,
            views: true,
        }
    }
}

/// The configuration a seed picks: group size, site settings, network.
pub fn config_for(seed: u64, test: &str, name: &str, opts: &RandomOpts) -> SimConfig {
    let mut r = Rng::fork(seed, 10);
    let sites = *r.pick(&[2usize, 3, 3, 3, 4, 5, 5, 7]).expect("nonempty");
    let mut c = Config {
        elections: opts.elections,
        step_down_without_majority: opts.elections,
        // The whole log, unless the seed archives (below).
        log_retention_segments: None,
        ack_policy: *r
            .pick(&[
                AckPolicy::Quorum,
                AckPolicy::Quorum,
                AckPolicy::Quorum,
                AckPolicy::Quorum,
                AckPolicy::Quorum,
                AckPolicy::Quorum,
                AckPolicy::All,
                AckPolicy::AllPeers,
                AckPolicy::AllAvailable,
                AckPolicy::One,
                AckPolicy::OnePeer,
            ])
            .expect("nonempty"),
        ..Config::default()
    };
    // Half the seeds forward single writes made on clients (W1); a stream
    // of its own keeps the other choices as they were.
    c.forward_writes = opts.forwarding && Rng::fork(seed, 13).chance(500_000);
    let t = &mut c.timeouts;
    t.ack = ms(r.range(200, 1000));
    if opts.elections || r.chance(600_000) {
        t.heartbeat_send = ms(r.range(50, 300));
        t.heartbeat_monitor = t.heartbeat_send * r.range(3, 6) as u32;
    }
    if opts.elections {
        t.election_retry = ms(r.range(200, 2000));
    }
    t.checkpoint_delay = ms(r.range(200, 1500));
    t.rerequest_min = ms(r.range(10, 40));
    t.rerequest_max = t.rerequest_min * (1 << r.range(2, 5)) as u32;
    t.election = ms(r.range(300, 2000));
    let max_record = 1024;
    c.limits = Limits {
        max_sites: 8,
        max_databases: 8,
        max_key: 64,
        max_value: 256,
        max_txn_ops: 8,
        max_record,
        max_frame: 4096,
        segment_size: *r.pick(&[2048u32, 8192, 1 << 20]).expect("nonempty"),
        max_answer_bytes: *r.pick(&[1024u32, 4096, 1 << 20]).expect("nonempty"),
        max_pending_bytes: 64 * 1024,
        max_inqueue_bytes: 256 * 1024,
        max_bulk_bytes: 2048,
        max_pending_commits: 64,
        max_outputs: 65536,
        max_channel_message: 1024,
        max_channel_requests: 8,
        max_init_bytes: 1 << 20,
    };
    // A third of the seeds archive: small segments and a short retention,
    // so clients that fall behind through crashes and partitions must be
    // initialised from the master's snapshot (S6). Drawn from a stream of
    // its own, so the other seeds keep the configuration they always had.
    let mut ar = Rng::fork(seed, 13);
    if ar.chance(330_000) {
        c.log_retention_segments = Some(ar.range(0, 2) as u32);
        c.limits.segment_size = *ar.pick(&[2048u32, 4096]).expect("nonempty");
    }
    // Half the seeds build checkpoint snapshots in steps of a few entries
    // (R8), so most are fuzzy: taken over many turns while records apply,
    // then crashed, rolled back and reopened like any other. A stream of
    // its own keeps the other choices as they were.
    let mut fz = Rng::fork(seed, 21);
    if fz.chance(500_000) {
        c.snapshot_step_bytes = fz.range(1, 2048) as u32;
    }
    let lat_min = r.range(300, 3000);
    let link = LinkConfig {
        latency_min: Duration::from_micros(lat_min),
        latency_max: Duration::from_micros(lat_min + r.range(0, 15_000)),
        loss_ppm: r.range(0, 100_000) as u32,
        dup_ppm: r.range(0, 50_000) as u32,
        reorder_ppm: r.range(0, 100_000) as u32,
        reorder_delay: ms(r.range(5, 60)),
    };
    SimConfig {
        test: test.into(),
        name: name.into(),
        seed,
        sites,
        site: c,
        link,
        fsync_min: Duration::from_micros(100),
        fsync_max: Duration::from_micros(if r.chance(150_000) {
            r.range(4000, 30_000)
        } else {
            r.range(200, 4000)
        }),
        trace_tail: opts.trace_tail,
    }
}

/// A channel request a random run made (W2).
#[derive(Clone, Copy, Debug)]
struct ChannelReq {
    site: usize,
    inc: u32,
    id: shoal_core::site::RequestId,
    at: Instant,
    timeout: Duration,
    /// The site it was sent to, when not on the master channel.
    to: Option<usize>,
}

/// A message or a request from a random running site to the master or a
/// random member.
fn channel_traffic(sim: &mut Sim, rc: &mut Rng, requests: &mut Vec<ChannelReq>) {
    use shoal_core::site::ChannelTarget;
    let up = sim.up();
    let Some(&i) = rc.pick(&up) else { return };
    let n = sim.len();
    let to = (!rc.chance(500_000)).then(|| rc.below(n as u64) as usize);
    let target = match to {
        Some(j) if sim.id(j).0 != 0 => ChannelTarget::Site(sim.id(j)),
        _ => ChannelTarget::Master,
    };
    let to = match target {
        ChannelTarget::Site(_) => to,
        ChannelTarget::Master => None,
    };
    let parts: [&[u8]; 2] = [b"hello", b"from a random run"];
    if rc.chance(300_000) {
        let _ = sim.channel_send(i, target, &parts);
        return;
    }
    let timeout = ms(rc.range(20, 1500));
    let at = sim.now();
    if let Ok(id) = sim.channel_request(i, target, &parts, Some(timeout)) {
        let inc = sim.slots[i].inc;
        requests.push(ChannelReq {
            site: i,
            inc,
            id,
            at,
            timeout,
            to,
        });
    }
}

/// Every request of a site still in the incarnation that made it ended
/// exactly once, by its timeout at the latest; a response names a site
/// with a dispatch, the one asked when it was asked by name.
fn check_channel_requests(sim: &Sim, requests: &[ChannelReq], sum: &mut RunSummary) {
    for q in requests {
        sum.channel_requests += 1;
        if sim.slots[q.site].inc != q.inc {
            continue;
        }
        let answers: Vec<(
            Instant,
            &Result<Vec<u8>, shoal_core::site::ChannelRequestError>,
        )> = sim
            .answers(q.site)
            .iter()
            .filter_map(|(t, inc, a)| match a {
                Answer::Channel { id, result } if *id == q.id && *inc == q.inc => {
                    Some((*t, result))
                }
                _ => None,
            })
            .collect();
        if answers.is_empty() && q.at + q.timeout > sim.now() {
            // Still waiting: the run ended before its deadline.
            continue;
        }
        if answers.len() != 1 {
            sim.fail(&format!(
                "channel request {} of s{} ended {} times: {answers:?}",
                q.id,
                q.site,
                answers.len()
            ));
        }
        let (t, result) = answers[0];
        if t > q.at + q.timeout {
            sim.fail(&format!(
                "channel request {} of s{} made at {:?} with a {:?} timeout ended at {t:?}",
                q.id, q.site, q.at, q.timeout
            ));
        }
        if let Ok(part) = result {
            sum.channel_answered += 1;
            let from = String::from_utf8_lossy(part);
            let j = from
                .strip_prefix('s')
                .and_then(|x| x.parse::<usize>().ok())
                .filter(|&j| j < sim.len() && sim.slots[j].channel_reply.is_some());
            let Some(j) = j else {
                sim.fail(&format!(
                    "channel request {} of s{} answered {from:?}",
                    q.id, q.site
                ));
            };
            if q.to.is_some_and(|to| to != j) {
                sim.fail(&format!(
                    "channel request {} of s{} to s{:?} answered by s{j}",
                    q.id, q.site, q.to
                ));
            }
        }
    }
}

/// Something the run will do later.
#[derive(Clone, Copy, Debug)]
enum Later {
    Restart(usize),
    Promote,
    Unmute(usize, usize),
}

/// One randomized run. Panics (with the seed and how to replay it) on any
/// invariant failure; returns the simulator and a summary otherwise.
pub fn run_seed(seed: u64, test: &str, name: &str, opts: RandomOpts) -> (Sim, RunSummary) {
    let cfg = config_for(seed, test, name, &opts);
    let faulty = cfg.link;
    let sites = cfg.sites;
    let mut sim = Sim::new(cfg);
    let mut sum = RunSummary {
        seed,
        sites,
        ..Default::default()
    };
    // Sometimes one client can never become master (priority 0).
    if sites >= 3 && Rng::fork(seed, 11).chance(200_000) {
        let unelectable = Config {
            priority: 0,
            ..sim.cfg.site.clone()
        };
        sim.set_site_config(sites - 1, unelectable);
    }
    // A third of the seeds of three sites or more make one site other than
    // the creator a view (R12), half of them a view of one or two of the
    // databases the run writes: it must never ack, vote or become master,
    // count toward no commit, serve its peers from its whole log, and end
    // with the master's store restricted to its databases (`crate::check`,
    // (d) and (e)). A stream of its own keeps the other choices as they
    // were.
    let mut vw = Rng::fork(seed, 22);
    let view = (opts.views && sites >= 3 && vw.chance(330_000))
        .then(|| 1 + vw.below(sites as u64 - 1) as usize);
    if let Some(v) = view {
        let mut c = sim.site_config(v);
        c.view = true;
        c.priority = 0;
        if vw.chance(500_000) {
            let dbs: &[&str] = vw
                .pick(&[&["a"][..], &["b"][..], &["a", "barrier"][..]])
                .expect("nonempty");
            c.view_databases = dbs.iter().map(|d| d.to_string()).collect();
            sum.partial_view = true;
        }
        sim.set_site_config(v, c);
        sum.view = true;
    }
    // Half the archiving seeds give one site a device's smaller snapshot
    // pages (S6: 512 bytes, where the others take 1024 or 3584): its
    // UPDATE_REQ says so and its masters must serve it pages of that size.
    // A stream of its own keeps the other choices as they were.
    let mut sp = Rng::fork(seed, 16);
    let small = (sim.cfg.site.log_retention_segments.is_some() && sp.chance(500_000))
        .then(|| sp.below(sites as u64) as usize);
    if let Some(i) = small {
        let mut c = sim.site_config(i);
        c.limits.max_answer_bytes = 512;
        sim.set_site_config(i, c);
        sum.small_pages = true;
    }
    // Half the seeds give one site smaller bulk log messages than the
    // others send (R11: 256 to 1024 bytes of entries where they pack
    // 2048), and a third of those a smaller max_frame too (2048 where the
    // others take 4096): its LOG_REQs say so, and whoever answers them,
    // master or peer (S3), must cut its BULK_LOGs to fit. A stream of its
    // own keeps the other choices as they were.
    let mut sb = Rng::fork(seed, 17);
    let small_bulk = sb.chance(500_000).then(|| sb.below(sites as u64) as usize);
    if let Some(i) = small_bulk {
        let mut c = sim.site_config(i);
        c.limits.max_bulk_bytes = *sb.pick(&[256u32, 512, 1024]).expect("nonempty");
        if sb.chance(330_000) {
            c.limits.max_frame = 2048;
        }
        sim.set_site_config(i, c);
        sum.small_bulk = true;
    }
    // A third of the seeds give one site a device's incoming queue (R13:
    // 16 KiB where the others have 256 KiB, taken at 0.25 to 4 bytes per
    // microsecond, frames past it dropped) and body limits at the edge of
    // what the workload writes (keys of 8 bytes, values of 160, 3
    // operations, where the others take 64, 256 and 8): its requests say
    // so (protocol version 6), so whoever answers it, master or peer (S3),
    // stops each answer at 4 KiB and checks each record's body against its
    // limits. A stream of its own keeps the other choices as they were.
    let mut sq = Rng::fork(seed, 18);
    let small_queue = sq.chance(330_000).then(|| sq.below(sites as u64) as usize);
    if let Some(i) = small_queue {
        let mut c = sim.site_config(i);
        c.limits.max_inqueue_bytes = 16 * 1024;
        c.limits.max_key = 8;
        c.limits.max_value = 160;
        c.limits.max_txn_ops = 3;
        sim.set_site_config(i, c);
        let ns_per_byte = *sq.pick(&[250u64, 1000, 4000]).expect("nonempty");
        sim.set_inqueue(i, ns_per_byte);
        sum.small_queue = true;
    }
    // Half the seeds: every site asks one or two other sites for the log
    // before the master (S3), which also serve while they are clients.
    let mut pr = Rng::fork(seed, 12);
    if sites >= 3 && pr.chance(500_000) {
        for i in 0..sites {
            let others: Vec<usize> = (0..sites).filter(|&j| j != i).collect();
            let mut peers = Vec::new();
            for _ in 0..pr.range(1, 3) {
                if let Some(&p) = pr.pick(&others) {
                    if !peers.contains(&p) {
                        peers.push(p);
                    }
                }
            }
            sim.set_peers(i, &peers);
        }
        sum.peers = true;
    }
    // The group forms over a reliable network; then the faults begin.
    sim.net().set_default(faulty.reliable());
    sim.start_group();
    sim.net().set_default(faulty);
    let mut r = Rng::fork(seed, 20);
    let mut rf = Rng::fork(seed, 14);
    sum.forwarding = sim.cfg.site.forward_writes;
    // Channels (W2), from streams of their own: every site but perhaps one
    // has a dispatch that answers with its name.
    let mut rc = Rng::fork(seed, 15);
    let channels = opts.channels && rc.chance(500_000);
    let mut requests: Vec<ChannelReq> = Vec::new();
    if channels {
        let silent = rc.chance(300_000).then(|| rc.below(sites as u64) as usize);
        for i in 0..sites {
            if Some(i) != silent {
                sim.set_channel_reply(i, Some(format!("s{i}").as_bytes()));
            }
        }
    }
    let end = sim.now() + opts.fault_time;
    let mut later: Vec<(Instant, Later)> = Vec::new();
    let mut tokens: Vec<CommitToken> = Vec::new();
    let mut key = 0u64;
    loop {
        let next = sim.now() + Duration::from_micros(r.range(2_000, 40_000));
        // Scheduled actions due before the next random one.
        later.sort_by_key(|(t, _)| *t);
        while let Some(&(t, what)) = later.first() {
            if t > next {
                break;
            }
            later.remove(0);
            sim.run_until(t);
            match what {
                Later::Restart(i) => {
                    if !sim.is_up(i) {
                        sim.restart(i, Start::Rejoin);
                    }
                }
                Later::Unmute(a, b) => sim.net().clear_link(a, b),
                Later::Promote => {
                    if sim.master().is_none() && sim.best_candidate().is_some() {
                        sim.promote_best();
                        sum.promotions += 1;
                    }
                }
            }
        }
        if next >= end {
            sim.run_until(end);
            break;
        }
        sim.run_until(next);
        if channels && rc.chance(400_000) {
            channel_traffic(&mut sim, &mut rc, &mut requests);
        }
        // Collect tokens for txn_applied.
        if let Some(m) = sim.master() {
            for (_, _, a) in sim.answers(m).iter().rev().take(4) {
                if let Answer::Commit { result: Ok(o), .. } = a {
                    if !tokens.contains(&o.token) {
                        tokens.push(o.token);
                    }
                }
            }
        }
        let n = sim.len();
        let roll = r.below(100);
        let can_fail = sim.checker().failed().len() < sim.checker().tolerated();
        match roll {
            0..=59 => {
                let Some(m) = sim.master() else { continue };
                let nops = r.range(1, 3) as usize;
                let mut owned: Vec<(String, String, Option<String>)> = Vec::new();
                for _ in 0..nops {
                    key += 1;
                    let db = if r.chance(500_000) { "a" } else { "b" };
                    let k = format!("k{}", r.below(40));
                    let v = if r.chance(150_000) {
                        None
                    } else {
                        Some(format!("v{key}-{}", "x".repeat(r.below(120) as usize)))
                    };
                    owned.push((db.into(), k, v));
                }
                let ops: Vec<Op<'_>> = owned
                    .iter()
                    .map(|(db, k, v)| match v {
                        Some(v) => Op::Put {
                            db,
                            key: k.as_bytes(),
                            value: v.as_bytes(),
                        },
                        None => Op::Delete {
                            db,
                            key: k.as_bytes(),
                        },
                    })
                    .collect();
                let d = match r.below(3) {
                    0 => Durability::Sync,
                    1 => Durability::WriteNoSync,
                    _ => Durability::NoSync,
                };
                // With forwarding, some single writes are made on a client
                // and forwarded to the master (W1).
                if sum.forwarding && ops.len() == 1 && rf.chance(400_000) {
                    let clients: Vec<usize> = sim
                        .up()
                        .into_iter()
                        .filter(|&i| sim.site(i).role() == Role::Client)
                        .collect();
                    if let Some(&c) = rf.pick(&clients) {
                        if sim.forward_write(c, ops[0], d).is_ok() {
                            sum.forwards += 1;
                            sum.commits += 1;
                        }
                        continue;
                    }
                }
                if sim.commit(m, &ops, d).is_ok() {
                    sum.commits += 1;
                }
            }
            60..=64 => {
                let clients: Vec<usize> = sim
                    .up()
                    .into_iter()
                    .filter(|&i| sim.site(i).role() == Role::Client)
                    .collect();
                if let (Some(&c), Some(&t)) = (r.pick(&clients), r.pick(&tokens)) {
                    let timeout = ms(r.range(10, 300));
                    sim.start_txn_applied(c, t, timeout);
                }
            }
            65..=74 => {
                sum.partitions += 1;
                let a = r.below(n as u64) as usize;
                let b = (a + 1 + r.below(n as u64 - 1) as usize) % n;
                match r.below(6) {
                    0 => sim.cut(a, b),
                    1 => sim.partition(&[a], &[b]),
                    2 => sim.isolate(a),
                    3 => {
                        let left: Vec<usize> = (0..n).filter(|_| r.chance(500_000)).collect();
                        let right: Vec<usize> = (0..n).filter(|i| !left.contains(i)).collect();
                        sim.partition(&left, &right);
                    }
                    _ => sim.heal(),
                }
            }
            75..=78 => {
                let a = r.below(n as u64) as usize;
                let b = (a + 1 + r.below(n as u64 - 1) as usize) % n;
                let d = ms(r.range(20, 400));
                sim.clog(a, b, d);
            }
            79..=84 => {
                if !can_fail {
                    continue;
                }
                let clients: Vec<usize> = sim
                    .up()
                    .into_iter()
                    .filter(|&i| sim.site(i).role() != Role::Master)
                    .collect();
                if let Some(&c) = r.pick(&clients) {
                    let mode = *r
                        .pick(&[
                            CrashMode::Process,
                            CrashMode::Process,
                            CrashMode::Clean,
                            CrashMode::Torn,
                            CrashMode::Torn,
                            CrashMode::Reordered,
                        ])
                        .expect("nonempty");
                    sim.crash(c, mode);
                    sum.crashes += 1;
                    let at = sim.now() + ms(r.range(50, 1000));
                    later.push((at, Later::Restart(c)));
                }
            }
            85..=87 => {
                if !can_fail {
                    continue;
                }
                let Some(m) = sim.master() else { continue };
                let mode = *r
                    .pick(&[
                        CrashMode::Process,
                        CrashMode::Process,
                        CrashMode::Clean,
                        CrashMode::Torn,
                        CrashMode::Torn,
                        CrashMode::Reordered,
                    ])
                    .expect("nonempty");
                sim.crash(m, mode);
                sum.crashes += 1;
                sum.master_crashes += 1;
                let p = sim.now() + ms(r.range(20, 400));
                if !opts.elections {
                    later.push((p, Later::Promote));
                }
                later.push((p + ms(r.range(10, 800)), Later::Restart(m)));
            }
            88..=90 => {
                // A link goes silent one way; the connection stays up.
                let a = r.below(n as u64) as usize;
                let b = (a + 1 + r.below(n as u64 - 1) as usize) % n;
                let mute = LinkConfig {
                    loss_ppm: 1_000_000,
                    ..faulty
                };
                sim.net().set_link(a, b, mute);
                sim.note(&format!("NET mute s{a} -> s{b}"));
                later.push((sim.now() + ms(r.range(20, 600)), Later::Unmute(a, b)));
            }
            _ => {}
        }
    }
    sum.converge_time = sim.converge(ms(30_000));
    check_channel_requests(&sim, &requests, &mut sum);
    let cs = sim.checker().stats();
    sum.steps = sim.steps();
    sum.permanent = cs.permanent;
    sum.rollbacks = cs.rollbacks;
    sum.rolled_back_commits = cs.rolled_back_commits;
    sum.sim_time = sim.now().since(Instant(0));
    sum.promises_held = sim.checker().promises_hold();
    sum.peer_served = sim
        .up()
        .iter()
        .map(|&i| sim.site(i).stats().peer_served)
        .sum();
    sum.forwards_served = sim
        .up()
        .iter()
        .map(|&i| sim.site(i).stats().forwards_served)
        .sum();
    sum.archiving = sim.cfg.site.log_retention_segments.is_some();
    sum.view_served = view
        .filter(|&v| sim.is_up(v))
        .map_or(0, |v| sim.site(v).stats().peer_served);
    sum.fuzzy_snapshots = sim
        .up()
        .iter()
        .map(|&i| sim.site(i).stats().snapshots_built_in_steps)
        .sum();
    let inits = |i: usize| {
        sim.events(i)
            .iter()
            .filter(|(_, e)| *e == shoal_core::site::Event::InitDone)
            .count() as u64
    };
    sum.inits = (0..sim.len()).map(inits).sum();
    sum.small_page_inits = small.map_or(0, inits);
    sum.small_bulk_requests = small_bulk
        .filter(|&i| sim.is_up(i))
        .map_or(0, |i| sim.site(i).stats().log_requests);
    if let Some(i) = small_queue {
        let q = sim.inqueue_stats(i);
        sum.small_queue_queued = q.queued;
        sum.small_queue_dropped = q.dropped;
    }
    // Every site takes every record of the group (one max_record for all,
    // and the workload's keys, values and operation counts within every
    // site's limits): no answer may stop short of a record its requester
    // cannot take (R11).
    for i in sim.up() {
        let n = sim.site(i).stats().unfit_records;
        if n > 0 {
            sim.fail(&format!("s{i} met {n} records a requester cannot take"));
        }
    }
    (sim, sum)
}

/// The seeds a randomized test runs: `SHOAL_SEED=n` runs only seed n;
/// `SHOAL_SEEDS=k` runs seeds 0..k; otherwise seeds 0..`default`.
pub fn seeds(default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("SHOAL_SEED") {
        let seed = s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SHOAL_SEED={s:?} is not a number"));
        return vec![seed];
    }
    let n = match std::env::var("SHOAL_SEEDS") {
        Ok(s) => s
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("SHOAL_SEEDS={s:?} is not a number")),
        Err(_) => default,
    };
    (0..n).collect()
}
