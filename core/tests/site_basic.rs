//! Basic replication through the Site state machine over an instant,
//! lossless in-memory network (R1, R2, R3, R5, R7). The deterministic
//! simulator in shoal-tests covers faults; these tests pin down the happy
//! paths the simulator builds on.

use shoal_core::config::{Config, Durability};
use shoal_core::log::Op;
use shoal_core::mem::MemStorage;
use shoal_core::site::{Answer, CommitOutcome, Dest, Event, Output, Role, Site};
use shoal_core::{Instant, SiteId};
use std::collections::VecDeque;
use std::time::Duration;

struct Net {
    sites: Vec<Site<MemStorage>>,
    now: Instant,
    answers: Vec<(usize, Answer)>,
    events: Vec<(usize, Event)>,
    cut: Vec<usize>,
}

impl Net {
    fn new(n: usize, cfg: Config) -> Net {
        let sites = (0..n)
            .map(|i| {
                Site::open(
                    cfg.clone(),
                    &format!("s{i}"),
                    MemStorage::new(64 << 20),
                    Instant(0),
                )
                .expect("open")
            })
            .collect();
        Net {
            sites,
            now: Instant(0),
            answers: vec![],
            events: vec![],
            cut: vec![],
        }
    }

    fn target(&self, d: &Dest) -> Option<usize> {
        match d {
            Dest::Site(id) => self.sites.iter().position(|s| s.id() == *id),
            Dest::Address(a) => self.sites.iter().position(|s| s.address() == a),
        }
    }

    /// Deliver everything until quiet.
    fn run(&mut self) {
        let mut q: VecDeque<(usize, Vec<u8>)> = VecDeque::new();
        loop {
            let mut progressed = false;
            for i in 0..self.sites.len() {
                while let Some(o) = self.sites[i].poll_output() {
                    progressed = true;
                    match o {
                        Output::Send { to, frame, .. } => {
                            if let Some(t) = self.target(&to) {
                                if !self.cut.contains(&t) && !self.cut.contains(&i) {
                                    q.push_back((t, frame));
                                }
                            }
                        }
                        Output::Flush { lsn } => self.sites[i].handle_flushed(self.now, lsn),
                        Output::Event(e) => self.events.push((i, e)),
                        Output::Answer(a) => self.answers.push((i, a)),
                        Output::Message(_) => {}
                    }
                }
            }
            while let Some((t, f)) = q.pop_front() {
                progressed = true;
                let _ = self.sites[t].handle_frame(self.now, &f);
            }
            if !progressed {
                break;
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next = self.sites.iter().filter_map(|s| s.poll_timeout()).min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    for s in &mut self.sites {
                        s.handle_timeout(self.now);
                    }
                    self.run();
                }
                _ => break,
            }
        }
        self.now = end;
    }

    fn group(n: usize, cfg: Config) -> Net {
        let mut net = Net::new(n, cfg);
        net.sites[0].create_group(Instant(0)).unwrap();
        net.run();
        for i in 1..n {
            let now = net.now;
            net.sites[i].join(now, "s0");
            net.run();
        }
        net.advance(Duration::from_millis(100));
        net
    }

    fn commit(&mut self, i: usize, key: &str, value: &str) -> CommitOutcome {
        self.commit_within(i, key, value, Duration::from_millis(1))
    }

    fn commit_within(&mut self, i: usize, key: &str, value: &str, d: Duration) -> CommitOutcome {
        let now = self.now;
        let ops = [Op::Put {
            db: "db",
            key: key.as_bytes(),
            value: value.as_bytes(),
        }];
        let id = self.sites[i]
            .commit(now, &ops, Durability::Sync)
            .expect("commit accepted");
        self.run();
        self.advance(d);
        let pos = self
            .answers
            .iter()
            .position(|(s, a)| *s == i && matches!(a, Answer::Commit { id: x, .. } if *x == id))
            .expect("commit answered");
        match self.answers.remove(pos).1 {
            Answer::Commit { result, .. } => result.expect("commit ok"),
            _ => unreachable!(),
        }
    }
}

#[test]
fn r7_group_creation_and_joins_replicate_membership() {
    let net = Net::group(3, Config::default());
    assert_eq!(net.sites[0].role(), Role::Master);
    for s in &net.sites {
        assert_eq!(s.members().len(), 3, "site {} sees 3 members", s.id().0);
    }
    assert_eq!(net.sites[1].role(), Role::Client);
    assert_eq!(net.sites[2].master(), Some(SiteId(1)));
    assert!(net
        .events
        .iter()
        .any(|(i, e)| *i == 2 && *e == Event::StartupDone));
}

#[test]
fn r2_r3_r5_commits_replicate_and_are_acknowledged() {
    let mut net = Net::group(3, Config::default());
    for k in 0..20 {
        let out = net.commit(0, &format!("k{k}"), &format!("v{k}"));
        assert!(out.permanent, "commit {k} permanent under QUORUM: {out:?}");
        assert!(out.acks >= 1);
        assert!(out.flushed);
    }
    let digest = net.sites[0].store().digest();
    for s in &net.sites {
        assert_eq!(s.store().digest(), digest);
        assert_eq!(s.store().get("db", b"k19"), Some(&b"v19"[..]));
        assert_eq!(s.last_lsn(), net.sites[0].last_lsn());
    }
}

#[test]
fn r1_a_client_refuses_writes() {
    let mut net = Net::group(2, Config::default());
    let ops = [Op::Delete {
        db: "db",
        key: b"k",
    }];
    let err = net.sites[1]
        .commit(Instant(1), &ops, Durability::Sync)
        .unwrap_err();
    assert_eq!(
        err,
        shoal_core::site::CommitError::NotMaster(Some(SiteId(1)))
    );
}

#[test]
fn r5_quorum_fails_when_clients_are_unreachable() {
    let mut net = Net::group(3, Config::default());
    net.cut = vec![1, 2];
    // Answered only after the 1 s ack timeout, as not permanent, but
    // flushed: the commit stands locally.
    let out = net.commit_within(0, "lonely", "v", Duration::from_millis(1100));
    assert!(!out.permanent);
    assert!(out.flushed);
    assert_eq!(out.acks, 0);
    assert_eq!(out.needed, 1);
    assert!(net
        .events
        .iter()
        .any(|(i, e)| *i == 0 && *e == Event::PermFailed(out.token.lsn)));
    // Once the clients are back, commits are permanent again.
    net.cut.clear();
    net.advance(Duration::from_millis(10));
    assert!(net.commit(0, "back", "v").permanent);
}

#[test]
fn r2_a_restarted_client_catches_up() {
    let mut net = Net::group(3, Config::default());
    net.commit(0, "a", "1");
    net.cut = vec![2];
    for k in 0..50 {
        net.commit(0, &format!("k{k}"), "x");
    }
    // Site 2 restarts from its storage and rejoins.
    let s = net.sites.remove(2);
    let storage = s.into_storage();
    let mut s = Site::open(Config::default(), "s2", storage, net.now).expect("reopen");
    s.rep_start_client(net.now);
    net.sites.push(s);
    net.cut.clear();
    net.run();
    net.advance(Duration::from_millis(500));
    assert_eq!(net.sites[2].store().digest(), net.sites[0].store().digest());
    assert_eq!(net.sites[2].store().get("db", b"k49"), Some(&b"x"[..]));
}

fn small_log_config() -> Config {
    let mut cfg = Config::default();
    cfg.limits.max_key = 64;
    cfg.limits.max_value = 256;
    cfg.limits.max_record = 4096;
    cfg.limits.max_frame = 8192;
    cfg.limits.segment_size = 8192;
    cfg.limits.max_channel_message = 1024;
    cfg.limits.max_answer_bytes = 4096;
    cfg.limits.max_bulk_bytes = 4096;
    cfg.timeouts.checkpoint_delay = Duration::from_millis(200);
    cfg.log_retention_segments = Some(1);
    cfg
}

#[test]
fn r8_checkpoints_snapshot_the_store_and_archive_old_segments() {
    let cfg = small_log_config();
    let mut net = Net::group(3, cfg.clone());
    let value = "v".repeat(200);
    for round in 0..6 {
        for k in 0..40 {
            net.commit(0, &format!("r{round}k{k}"), &value);
        }
        net.advance(Duration::from_millis(250));
    }
    for (i, s) in net.sites.iter_mut().enumerate() {
        let segs = shoal_core::traits::Storage::segments(s.storage_mut()).unwrap();
        assert!(
            segs[0] > 1,
            "site {i} removed its oldest segments: {segs:?}"
        );
        assert!(s.stats().segments_archived > 0);
        assert!(
            shoal_core::traits::Storage::read_snapshot(s.storage_mut())
                .unwrap()
                .is_some(),
            "site {i} wrote a snapshot"
        );
    }
    // Every site reopens from snapshot + log tail to the same store.
    let digest = net.sites[0].store().digest();
    for i in 0..3 {
        let s = net.sites.remove(i);
        let addr = s.address().to_string();
        let reopened = Site::open(cfg.clone(), &addr, s.into_storage(), net.now).expect("reopen");
        assert_eq!(
            reopened.store().digest(),
            digest,
            "site {i} rebuilt from its snapshot"
        );
        assert_eq!(reopened.members().len(), 3);
        net.sites.insert(i, reopened);
    }
}

/// R8: a checkpoint's snapshot is encoded a turn after its record
/// (`SNAPSHOT_DEFER`), not in the turn that appends or applies it: the
/// record has reached the client before either site pauses to encode the
/// whole store, and each snapshot reflects the last record applied.
#[test]
fn r8_a_checkpoints_snapshot_is_encoded_a_turn_after_its_record() {
    use shoal_core::traits::Storage;
    let mut net = Net::group(2, small_log_config());
    net.commit(0, "a", "1");
    let before = net.sites[0].last_lsn();
    // One timeout turn at a time, up to the one that appends the checkpoint.
    let mut turns = 0;
    while net.sites[0].last_lsn() == before {
        let t = net
            .sites
            .iter()
            .filter_map(|s| s.poll_timeout())
            .min()
            .expect("a checkpoint is scheduled");
        net.now = net.now.max(t);
        for s in &mut net.sites {
            s.handle_timeout(net.now);
        }
        net.run();
        turns += 1;
        assert!(turns < 1000, "no checkpoint came");
    }
    let checkpoint = net.sites[0].last_lsn();
    assert_eq!(
        net.sites[1].last_lsn(),
        checkpoint,
        "the record reached the client"
    );
    for (i, s) in net.sites.iter_mut().enumerate() {
        assert!(
            Storage::read_snapshot(s.storage_mut()).unwrap().is_none(),
            "site {i} encoded nothing in the checkpoint's own turn"
        );
    }
    net.advance(shoal_core::site::SNAPSHOT_DEFER);
    for (i, s) in net.sites.iter_mut().enumerate() {
        let bytes = Storage::read_snapshot(s.storage_mut())
            .unwrap()
            .unwrap_or_else(|| panic!("site {i} wrote its snapshot a turn later"));
        let snap = shoal_core::snapshot::decode(&bytes).unwrap();
        assert_eq!(
            snap.lsn, checkpoint,
            "site {i}'s snapshot is at the last record"
        );
        assert_eq!(snap.store.digest(), s.store().digest());
    }
}

/// A group whose master archived the start of its log, and a third site
/// that joins afterwards with `cfg` (S6, S7).
fn join_after_archiving(cfg: Config) -> Net {
    let mut net = Net::group(2, small_log_config());
    let value = "v".repeat(200);
    for round in 0..4 {
        for k in 0..40 {
            net.commit(0, &format!("r{round}k{k}"), &value);
        }
        net.advance(Duration::from_millis(250));
    }
    net.sites
        .push(Site::open(cfg, "s2", MemStorage::new(64 << 20), net.now).expect("open"));
    let now = net.now;
    net.sites[2].join(now, "s0");
    net.run();
    net.advance(Duration::from_millis(100));
    net
}

/// S6: a site that joins after the master removed the start of its log
/// cannot be built from the log: the master sends it the whole database.
#[test]
fn s6_a_new_client_after_archiving_is_initialised() {
    let net = join_after_archiving(small_log_config());
    assert!(!net
        .events
        .iter()
        .any(|(i, e)| *i == 2 && *e == Event::JoinFailure));
    assert!(net
        .events
        .iter()
        .any(|(i, e)| *i == 2 && *e == Event::InitDone));
    assert_eq!(net.sites[2].store().digest(), net.sites[0].store().digest());
    assert_eq!(net.sites[2].last_lsn(), net.sites[0].last_lsn());
    assert!(!net.sites[2].store().is_empty());
}

/// S7: with AUTOINIT off the same site reports JOIN_FAILURE and keeps its
/// (empty) data.
#[test]
fn s7_a_new_client_after_archiving_without_autoinit_says_join_failure() {
    let cfg = Config {
        autoinit: false,
        ..small_log_config()
    };
    let net = join_after_archiving(cfg);
    assert!(net
        .events
        .iter()
        .any(|(i, e)| *i == 2 && *e == Event::JoinFailure));
    assert!(!net
        .events
        .iter()
        .any(|(i, e)| *i == 2 && *e == Event::InitDone));
    assert!(net.sites[2].store().is_empty());
    assert_eq!(net.sites[0].stats().inits_served, 0);
}

/// R4/R5: commits made without sync travel as PERMANENT|NO_SYNC; a client
/// that gets a batch of them asks for no flush and sends one ack, for the
/// last of them, once the batch's outputs are taken. A sync commit after
/// them is flushed before it is acknowledged.
#[test]
fn r4_no_sync_commits_are_acked_once_per_batch_without_a_flush() {
    use shoal_core::wire::{decode_frame, Flags, Message};
    let mut net = Net::group(3, Config::default());
    let limits = Config::default().limits;
    let now = net.now;
    for k in 0..10 {
        let key = format!("k{k}");
        let ops = [Op::Put {
            db: "db",
            key: key.as_bytes(),
            value: b"v",
        }];
        net.sites[0]
            .commit(now, &ops, Durability::NoSync)
            .expect("commit accepted");
    }
    // The master's LOG frames for site 1.
    let mut to_client = Vec::new();
    while let Some(o) = net.sites[0].poll_output() {
        assert!(
            !matches!(o, Output::Flush { .. }),
            "a no-sync commit asked the master for a flush"
        );
        if let Output::Send {
            to: Dest::Site(id),
            frame,
            ..
        } = o
        {
            if id == net.sites[1].id() {
                to_client.push(frame);
            }
        }
    }
    assert_eq!(to_client.len(), 10);
    for f in &to_client {
        let (env, msg) = decode_frame(f, &limits).expect("frame");
        assert!(matches!(msg, Message::Log(_)));
        assert!(env.flags.contains(Flags::PERMANENT.with(Flags::NO_SYNC)));
    }
    for f in &to_client {
        net.sites[1].handle_frame(now, f).expect("applied");
    }
    let mut acks = Vec::new();
    while let Some(o) = net.sites[1].poll_output() {
        match o {
            Output::Flush { .. } => panic!("the client flushed for no-sync commits"),
            Output::Send { frame, .. } => {
                if let Ok((_, Message::Ack { lsn })) = decode_frame(&frame, &limits) {
                    acks.push(lsn);
                }
            }
            _ => {}
        }
    }
    assert_eq!(acks, vec![net.sites[0].last_lsn()], "one ack for the batch");
    // A sync commit: the client asks for a flush and acks only after it.
    let ops = [Op::Put {
        db: "db",
        key: b"s",
        value: b"v",
    }];
    net.sites[0]
        .commit(now, &ops, Durability::Sync)
        .expect("commit accepted");
    let mut frames = Vec::new();
    while let Some(o) = net.sites[0].poll_output() {
        if let Output::Send {
            to: Dest::Site(id),
            frame,
            ..
        } = o
        {
            if id == net.sites[1].id() {
                frames.push(frame);
            }
        }
    }
    for f in &frames {
        net.sites[1].handle_frame(now, f).expect("applied");
    }
    let mut flush = None;
    while let Some(o) = net.sites[1].poll_output() {
        match o {
            Output::Flush { lsn } => flush = Some(lsn),
            Output::Send { frame, .. } => assert!(
                !matches!(decode_frame(&frame, &limits), Ok((_, Message::Ack { .. }))),
                "acked a sync commit before its flush"
            ),
            _ => {}
        }
    }
    let lsn = flush.expect("the client asked for a flush");
    net.sites[1].handle_flushed(now, lsn);
    let mut acked = None;
    while let Some(o) = net.sites[1].poll_output() {
        if let Output::Send { frame, .. } = o {
            if let Ok((_, Message::Ack { lsn })) = decode_frame(&frame, &limits) {
                acked = Some(lsn);
            }
        }
    }
    assert_eq!(acked, Some(net.sites[0].last_lsn()));
}

/// The frames a site sends now: (destination, frame, urgent).
fn taken_sends(site: &mut Site<MemStorage>) -> Vec<(Dest, Vec<u8>, bool)> {
    let mut out = Vec::new();
    while let Some(o) = site.poll_output() {
        if let Output::Send { to, frame, urgent } = o {
            out.push((to, frame, urgent));
        }
    }
    out
}

/// R5 and the hosts' batching: a commit alone in flight waits on its
/// record's round trip, so its record is marked urgent (a host writes it at
/// once); records of commits sent while others are in flight are not (a
/// host may batch them); a client's ack is, since the master waits on it.
#[test]
fn r5_a_lone_commits_record_and_a_clients_ack_are_urgent_a_busy_masters_are_not() {
    use shoal_core::wire::{decode_frame, Message};
    let limits = Config::default().limits;
    let mut net = Net::group(3, Config::default());
    let now = net.now;
    let put = |k: &'static [u8]| {
        [Op::Put {
            db: "db",
            key: k,
            value: b"v",
        }]
    };
    net.sites[0]
        .commit(now, &put(b"a"), Durability::NoSync)
        .expect("commit accepted");
    let lone = taken_sends(&mut net.sites[0]);
    assert_eq!(lone.len(), 2, "one record for each client");
    for (_, frame, urgent) in &lone {
        assert!(matches!(
            decode_frame(frame, &limits),
            Ok((_, Message::Log(_)))
        ));
        assert!(urgent, "a lone commit's record must be urgent");
    }
    // A second commit while the first still waits for its acks.
    net.sites[0]
        .commit(now, &put(b"b"), Durability::NoSync)
        .expect("commit accepted");
    let busy = taken_sends(&mut net.sites[0]);
    assert_eq!(busy.len(), 2);
    assert!(
        busy.iter().all(|(_, _, urgent)| !urgent),
        "a record behind another commit in flight is batched"
    );
    // The client acks both records at once, urgently.
    let client = net.sites[1].id();
    for (to, frame, _) in lone.iter().chain(&busy) {
        if *to == Dest::Site(client) {
            net.sites[1].handle_frame(now, frame).expect("applied");
        }
    }
    let acks: Vec<_> = taken_sends(&mut net.sites[1])
        .into_iter()
        .filter(|(_, f, _)| matches!(decode_frame(f, &limits), Ok((_, Message::Ack { .. }))))
        .collect();
    assert_eq!(acks.len(), 1, "one ack for the batch");
    assert!(acks[0].2, "an ack must be urgent");
    // Once the commits are answered, the next one is alone again.
    for (_, frame, _) in &acks {
        net.sites[0].handle_frame(now, frame).expect("ack");
    }
    net.run();
    net.sites[0]
        .commit(net.now, &put(b"c"), Durability::Sync)
        .expect("commit accepted");
    let again = taken_sends(&mut net.sites[0]);
    assert!(!again.is_empty() && again.iter().all(|(_, _, urgent)| *urgent));
}
