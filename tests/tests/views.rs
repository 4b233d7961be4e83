//! R12, point by point: a view replicates (optionally a subset of
//! databases) but never votes, never acks and never becomes master; it can
//! serve as a client-to-client peer (S3).
//!
//! Every step is also held to the simulator's invariants (`check`, (d)
//! and (e)): a view never sends an ACK or a vote, never becomes master,
//! counts toward no commit's acks, and ends with the master's store
//! restricted to its databases. Each test runs with the seed from
//! `SHOAL_SEED` (default 1).

use shoal_core::config::{AckPolicy, Config, Durability};
use shoal_core::log::Op;
use shoal_core::site::{CommitError, Event, OpenError, ReadError, Role, Site};
use shoal_core::traits::Storage;
use shoal_core::wire::MessageKind;
use shoal_tests::scenario::{operator_mode, small_segments};
use shoal_tests::*;

fn sim(name: &str, sites: usize, cfg: Config) -> Sim {
    let mut c = SimConfig::new("views", name, sites);
    c.site = cfg;
    Sim::new(c)
}

/// `cfg` made a view of `dbs` (every database when empty).
fn view_of(cfg: &Config, dbs: &[&str]) -> Config {
    Config {
        view: true,
        priority: 0,
        view_databases: dbs.iter().map(|d| d.to_string()).collect(),
        ..cfg.clone()
    }
}

/// Put `key` = `value` in `db` on site `i` and wait for the answer.
fn put(
    sim: &mut Sim,
    i: usize,
    db: &str,
    key: &str,
    value: &str,
) -> shoal_core::site::CommitOutcome {
    let ops = [Op::Put {
        db,
        key: key.as_bytes(),
        value: value.as_bytes(),
    }];
    let id = sim
        .commit(i, &ops, Durability::Sync)
        .unwrap_or_else(|e| panic!("commit {db}/{key} refused: {e}"));
    sim.wait_commit(i, id, ms(10_000))
}

/// Frames of `kind` site `i` sent, over the whole trace.
fn sent(sim: &Sim, i: usize, kind: MessageKind) -> usize {
    sim.trace()
        .steps()
        .filter(|s| s.site == i)
        .flat_map(|s| s.outputs.iter())
        .filter(|o| matches!(o, trace::Out::Send { msg, .. } if msg.kind == Some(kind)))
        .count()
}

/// A view in a group of three electable sites: when the master fails, the
/// two others elect one of themselves; the view takes part in no vote,
/// never stands, and follows the new master.
#[test]
fn r12_a_view_never_stands_when_the_master_fails() {
    let mut cfg = Config::default();
    cfg.timeouts.heartbeat_send = ms(50);
    cfg.timeouts.heartbeat_monitor = ms(200);
    cfg.timeouts.election = ms(300);
    cfg.timeouts.election_retry = ms(500);
    let mut sim = sim("r12_a_view_never_stands_when_the_master_fails", 4, cfg);
    let view = sim.site_config(3);
    sim.set_site_config(3, view_of(&view, &[]));
    sim.start_group();
    assert!(sim
        .site(0)
        .members()
        .get(sim.id(3))
        .is_some_and(|m| m.is_view()));
    for k in 0..5 {
        assert!(put(&mut sim, 0, "db", &format!("k{k}"), "v").permanent);
    }
    // The view is ahead of one of the others: were it a candidate, it
    // would be as good as any.
    sim.crash(0, CrashMode::Process);
    sim.run_until_true(ms(10_000), "s1 or s2 is elected", |s| {
        s.master().is_some_and(|m| m == 1 || m == 2)
    });
    let m = sim.master().expect("a master");
    assert_ne!(m, 3, "the view is never elected");
    assert_eq!(sim.site(3).role(), Role::Client);
    assert_eq!(
        sent(&sim, 3, MessageKind::Vote1),
        0,
        "a view sends no VOTE1"
    );
    assert_eq!(
        sent(&sim, 3, MessageKind::Vote2),
        0,
        "a view sends no VOTE2"
    );
    assert!(sent(&sim, 1, MessageKind::Vote1) + sent(&sim, 2, MessageKind::Vote1) > 0);
    // Told to take over, it refuses.
    let r = sim.act(3, "rep_start_master", |s, now| s.rep_start_master(now));
    assert_eq!(r, Err(CommitError::View));
    assert_eq!(sim.site(3).role(), Role::Client);
    // It follows the new master and replicates what it commits.
    assert!(put(&mut sim, m, "db", "after", "1").permanent);
    sim.run_until_true(ms(5_000), "the view follows the new master", |s| {
        s.site(3).master() == Some(s.id(m)) && s.site(3).store().get("db", b"after").is_some()
    });
    sim.converge(ms(30_000));
    assert_eq!(sent(&sim, 3, MessageKind::Ack), 0, "a view never acks");
}

/// A view as the only other site: it replicates every commit, but no
/// commit is ever permanent on its strength. With nsites 2 (the operator
/// counts two sites), QUORUM needs one electable ack, which the view can
/// never give: the commit fails its policy. ONE likewise. Without nsites
/// the view is outside the group's size, the master alone is a quorum of
/// one, and the commit is permanent with no ack at all.
#[test]
fn r12_a_view_as_the_only_other_site_makes_nothing_permanent() {
    for (nsites, policy, permanent) in [
        (Some(2), AckPolicy::Quorum, false),
        (None, AckPolicy::One, false),
        (None, AckPolicy::OnePeer, false),
        (None, AckPolicy::Quorum, true),
    ] {
        let cfg = operator_mode(Config {
            nsites,
            ack_policy: policy,
            ..Config::default()
        });
        let name = "r12_a_view_as_the_only_other_site_makes_nothing_permanent";
        let mut sim = sim(name, 2, cfg);
        let view = sim.site_config(1);
        sim.set_site_config(1, view_of(&view, &[]));
        sim.start_group();
        let what = format!("nsites {nsites:?}, {policy:?}");
        let out = put(&mut sim, 0, "db", "k", "v");
        assert_eq!(out.permanent, permanent, "{what}: {out:?}");
        assert_eq!(out.acks, 0, "{what}: the view acks nothing");
        let failed = sim
            .events(0)
            .iter()
            .any(|(_, e)| *e == Event::PermFailed(out.token.lsn));
        assert_eq!(failed, !permanent, "{what}");
        // The view has the commit all the same.
        sim.run_until_true(ms(2_000), "the view applied the commit", |s| {
            s.site(1).store().get("db", b"k") == Some(&b"v"[..])
        });
        assert_eq!(sent(&sim, 1, MessageKind::Ack), 0, "{what}: no ACK");
    }
}

/// A view next to a client that is cut off: under QUORUM in a group of
/// two electable sites, the one ack needed must come from the client. The
/// view holds the commit, but the commit is not permanent.
#[test]
fn r12_quorum_is_never_met_through_a_view() {
    let cfg = operator_mode(Config::default());
    let mut sim = sim("r12_quorum_is_never_met_through_a_view", 3, cfg);
    let view = sim.site_config(2);
    sim.set_site_config(2, view_of(&view, &[]));
    sim.start_group();
    assert!(put(&mut sim, 0, "db", "both", "1").permanent);
    sim.isolate(1);
    let out = put(&mut sim, 0, "db", "view-only", "1");
    assert!(!out.permanent, "{out:?}");
    assert_eq!((out.acks, out.needed), (0, 1), "{out:?}");
    assert!(sim
        .events(0)
        .iter()
        .any(|(_, e)| *e == Event::PermFailed(out.token.lsn)));
    sim.run_until_true(ms(2_000), "the view applied it", |s| {
        s.site(2).store().get("db", b"view-only").is_some()
    });
    sim.heal();
    sim.converge(ms(10_000));
}

/// A view of database "a" only: its log is the master's whole log, its
/// store holds "a" alone, a read of "b" is refused, and when it has fallen
/// behind the master's archived log it is initialised from the master's
/// snapshot (S6) and keeps (and writes to its disk) only "a". Reopened, it
/// is the same.
#[test]
fn r12_a_partial_view_is_initialised_from_the_masters_snapshot() {
    let mut cfg = operator_mode(Config {
        log_retention_segments: Some(0),
        ..Config::default()
    });
    cfg.timeouts.checkpoint_delay = ms(50);
    cfg.limits = small_segments();
    let mut sim = sim(
        "r12_a_partial_view_is_initialised_from_the_masters_snapshot",
        3,
        cfg,
    );
    let view = sim.site_config(2);
    sim.set_site_config(2, view_of(&view, &["a"]));
    sim.start_group();
    put(&mut sim, 0, "a", "a0", "1");
    put(&mut sim, 0, "b", "b0", "1");
    sim.run_until_true(ms(2_000), "the view has a0", |s| {
        s.site(2).store().get("a", b"a0").is_some()
    });
    assert_eq!(sim.site(2).get("a", b"a0"), Ok(Some(&b"1"[..])));
    assert_eq!(sim.site(2).get("b", b"b0"), Err(ReadError::NotReplicated));
    assert_eq!(sim.site(2).store().get("b", b"b0"), None);
    assert_eq!(sim.site(2).log_index(), sim.site(0).log_index());
    // The view falls behind the master's archived log.
    sim.crash(2, CrashMode::Process);
    for k in 0..40 {
        let db = if k % 2 == 0 { "a" } else { "b" };
        put(&mut sim, 0, db, &format!("{db}{k}"), &"x".repeat(100));
        sim.run_for(ms(10));
    }
    sim.run_for(ms(200));
    let first = sim.site(0).log_index()[0].lsn;
    assert!(first.file > 1, "the master archived ({first:?})");
    sim.restart(2, Start::Client);
    sim.run_until_true(ms(10_000), "the view is initialised", |s| {
        s.events(2).iter().any(|(_, e)| *e == Event::InitDone)
    });
    sim.converge(ms(10_000));
    let v = sim.site(2);
    assert!(v.stats().inits_installed > 0);
    assert_eq!(v.store().databases().collect::<Vec<_>>(), ["a"]);
    assert!(v.store().get("a", b"a38").is_some());
    assert_eq!(v.get("b", b"b39"), Err(ReadError::NotReplicated));
    assert_eq!(
        v.store().digest(),
        sim.site(0).store().digest_where(|db| db == "a")
    );
    assert_ne!(v.store().digest(), sim.site(0).store().digest());
    // What it wrote to its disk holds "a" only (the installed snapshot, or
    // a checkpoint's since).
    let bytes = sim
        .site_mut(2)
        .storage_mut()
        .read_snapshot()
        .expect("readable")
        .expect("a snapshot");
    let snap = shoal_core::snapshot::decode(&bytes).expect("decodes");
    assert_eq!(snap.store.databases().collect::<Vec<_>>(), ["a"]);
    // Reopened from its disk (snapshot and log replayed), the same.
    let digest = sim.site(2).store().digest();
    sim.crash(2, CrashMode::Process);
    sim.restart(2, Start::Client);
    assert_eq!(sim.site(2).store().digest(), digest);
    sim.converge(ms(10_000));
}

/// A client catches up from a view it names as its peer (S3): the view
/// serves the log from its whole log, although it applies database "a"
/// only, and the client ends with every database.
#[test]
fn r12_a_client_catches_up_from_a_view_peer() {
    let cfg = operator_mode(Config::default());
    let mut sim = sim("r12_a_client_catches_up_from_a_view_peer", 3, cfg);
    let view = sim.site_config(1);
    sim.set_site_config(1, view_of(&view, &["a"]));
    sim.set_peers(2, &[1]);
    sim.start_group();
    // Acknowledged by s2 (QUORUM of the two electable sites): on its disk.
    assert!(put(&mut sim, 0, "b", "first", "1").permanent);
    sim.crash(2, CrashMode::Process);
    for k in 0..30 {
        let db = if k % 2 == 0 { "a" } else { "b" };
        put(&mut sim, 0, db, &format!("{db}{k}"), "v");
    }
    let served = sim.site(0).stats().requests_served;
    sim.restart(2, Start::Client);
    sim.run_until_true(ms(10_000), "the client caught up", |s| {
        s.site(2).last_lsn() == s.site(0).last_lsn() && !s.site(2).is_synchronizing()
    });
    assert!(sim.site(1).stats().peer_served > 0, "the view served it");
    assert_eq!(
        sim.site(2).store().digest(),
        sim.site(0).store().digest(),
        "the client has every database"
    );
    assert!(sim.site(2).store().get("b", b"b29").is_some());
    assert_eq!(sim.site(1).store().get("b", b"b29"), None);
    assert!(
        sim.site(0).stats().requests_served - served <= 1,
        "the master served (almost) none of the catch-up"
    );
    sim.converge(ms(10_000));
}

/// A view of some databases only that was initialised from a snapshot
/// lacks the start of the log: asked by a peer for the log from its start
/// (an empty client's ALL_REQ), it answers REREQUEST, and the requester
/// goes to the master.
#[test]
fn r12_a_view_that_cannot_serve_a_peer_says_rerequest() {
    let mut cfg = operator_mode(Config {
        log_retention_segments: Some(0),
        ..Config::default()
    });
    cfg.timeouts.checkpoint_delay = ms(50);
    cfg.limits = small_segments();
    let mut sim = sim("r12_a_view_that_cannot_serve_a_peer_says_rerequest", 3, cfg);
    let view = sim.site_config(1);
    sim.set_site_config(1, view_of(&view, &["a"]));
    sim.set_peers(2, &[1]);
    sim.start_group();
    sim.crash(2, CrashMode::Process);
    for k in 0..40 {
        put(&mut sim, 0, "a", &format!("a{k}"), &"x".repeat(100));
        sim.run_for(ms(10));
    }
    sim.run_for(ms(200));
    assert!(sim.site(1).log_index()[0].lsn.file > 1, "the view archived");
    // The client comes back with an empty disk: it asks its peer (the
    // view) for the whole log, which the view no longer has.
    if let Some(d) = sim.disk_mut(2) {
        *d = SimDisk::new();
    }
    sim.restart(2, Start::Rejoin);
    sim.run_until_true(ms(10_000), "the client is initialised", |s| {
        s.is_up(2) && s.events(2).iter().any(|(_, e)| *e == Event::InitDone)
    });
    assert!(
        sim.site(1).stats().requests_refused > 0,
        "the view said REREQUEST"
    );
    assert!(sent(&sim, 1, MessageKind::Rerequest) > 0);
    assert_eq!(
        sim.site(1).stats().inits_served,
        0,
        "a view serves no snapshot"
    );
    sim.converge(ms(10_000));
    assert_eq!(sim.site(2).store().digest(), sim.site(0).store().digest());
}

/// A view of "a" whose log the checkpoints archived, stopped and opened
/// with more databases: its snapshot (version 3) says it covers "a" only
/// and the log before it is gone, so it refuses to open rather than serve
/// a store missing the past of "b". With its own list it opens as it was.
#[test]
fn r12_a_widened_view_does_not_start_from_a_narrower_snapshot() {
    let mut cfg = operator_mode(Config {
        log_retention_segments: Some(0),
        ..Config::default()
    });
    cfg.timeouts.checkpoint_delay = ms(50);
    cfg.limits = small_segments();
    let name = "r12_a_widened_view_does_not_start_from_a_narrower_snapshot";
    let mut sim = sim(name, 3, cfg.clone());
    let view = view_of(&cfg, &["a"]);
    sim.set_site_config(2, view.clone());
    sim.start_group();
    for k in 0..40 {
        let db = if k % 2 == 0 { "a" } else { "b" };
        put(&mut sim, 0, db, &format!("{db}{k}"), &"x".repeat(100));
        sim.run_for(ms(10));
    }
    sim.run_for(ms(200));
    assert!(sim.site(2).log_index()[0].lsn.file > 1, "the view archived");
    let digest = sim.site(2).store().digest();
    sim.crash(2, CrashMode::Process);
    let disk = sim.disk_mut(2).expect("down").clone();
    let bytes = disk
        .clone()
        .read_snapshot()
        .expect("readable")
        .expect("one");
    let snap = shoal_core::snapshot::decode(&bytes).expect("decodes");
    assert_eq!(snap.covers, Some(vec!["a".to_string()]));
    for wider in [view_of(&cfg, &["a", "b"]), view_of(&cfg, &[]), cfg.clone()] {
        let r = Site::open(wider.clone(), "s2", disk.clone(), sim.now());
        assert!(
            matches!(r, Err(OpenError::ViewSnapshotTooNarrow)),
            "{:?}: {:?}",
            wider.view_databases,
            r.err()
        );
    }
    let same = Site::open(view, "s2", disk, sim.now()).expect("opens");
    assert_eq!(same.store().digest(), digest);
    sim.restart(2, Start::Client);
    sim.converge(ms(10_000));
}

/// The same widening with the whole log still there: the view replays it
/// all instead of starting from its snapshot, and has "b" from the start.
#[test]
fn r12_a_widened_view_with_its_whole_log_replays_it() {
    let mut cfg = operator_mode(Config {
        log_retention_segments: None,
        ..Config::default()
    });
    cfg.timeouts.checkpoint_delay = ms(50);
    cfg.limits = small_segments();
    let name = "r12_a_widened_view_with_its_whole_log_replays_it";
    let mut sim = sim(name, 3, cfg.clone());
    sim.set_site_config(2, view_of(&cfg, &["a"]));
    sim.start_group();
    for k in 0..20 {
        let db = if k % 2 == 0 { "a" } else { "b" };
        put(&mut sim, 0, db, &format!("{db}{k}"), "v");
        sim.run_for(ms(20));
    }
    sim.run_for(ms(200));
    assert!(
        sim.site(2).stats().snapshots_built > 0,
        "the view took a snapshot"
    );
    assert_eq!(sim.site(2).store().get("b", b"b1"), None);
    sim.crash(2, CrashMode::Process);
    sim.set_site_config(2, view_of(&cfg, &["a", "b"]));
    sim.restart(2, Start::Client);
    assert_eq!(sim.site(2).store().get("b", b"b1"), Some(&b"v"[..]));
    sim.converge(ms(10_000));
    assert_eq!(sim.site(2).store().digest(), sim.restricted_digest(0, 2));
}

/// A configuration error is typed: a database list without view, a view
/// with priority.
#[test]
fn r12_view_settings_are_checked() {
    let c = Config {
        view_databases: vec!["a".into()],
        ..Config::default()
    };
    assert_eq!(
        c.validate(),
        Err(shoal_core::config::ConfigError::ViewDatabasesWithoutView)
    );
    let v = view_of(&Config::default(), &["a", "a"]);
    assert!(matches!(
        v.validate(),
        Err(shoal_core::config::ConfigError::BadViewDatabase { index: 1, .. })
    ));
    assert_eq!(
        ReadError::NotReplicated.to_string(),
        "this site is a view that does not replicate this database: read it on a site that does (the master, a client, or a view of it)"
    );
}
