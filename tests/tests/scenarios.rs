//! Scenario tests, one (or a few) per feature ID, written as scripts in the
//! simulator's small language: start, write, partition, crash, heal,
//! assert. Each runs with the seed from `SHOAL_SEED` (default 1); a failure
//! names the seed and how to replay it.

use shoal_core::config::{AckPolicy, Config, Durability};
use shoal_core::log::Op;
use shoal_core::site::{
    Answer, ChannelRequestError, ChannelSendError, ChannelTarget, CommitError, Event, Role,
    WaitError,
};
use shoal_core::wire::{Flags, MessageKind};
use shoal_core::SiteId;
use shoal_tests::scenario::{operator_mode, small_segments};
use shoal_tests::*;
use std::time::Duration;

/// Every failing scenario, whether an invariant or a plain assertion of
/// its own, names the seed and how to replay it.
fn replay_hint_on_panic() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            default(info);
            let seed = shoal_tests::sim::seed_from_env(1);
            let test = std::thread::current().name().unwrap_or("<test>").to_string();
            eprintln!(
                "scenario seed {seed}; replay: SHOAL_SEED={seed} cargo test -p shoal-tests --test scenarios {test} -- --exact --nocapture"
            );
        }));
    });
}

fn sim(name: &str, sites: usize, cfg: Config) -> Sim {
    replay_hint_on_panic();
    let mut c = SimConfig::new("scenarios", name, sites);
    c.site = operator_mode(cfg);
    Sim::new(c)
}

fn has_event(sim: &Sim, i: usize, f: impl Fn(&Event) -> bool) -> bool {
    sim.events(i).iter().any(|(_, e)| f(e))
}

/// Regression: a restarted master whose unreplicated tail sits at LSNs that
/// are not record boundaries in the new master's log must still find the
/// common point. The new master used to answer such a VERIFY_REQ with
/// VERIFY_FAIL ("older than my log"), and the client concluded it had no
/// overlap (JOIN_FAILURE) and stopped for good.
#[test]
fn r2_verify_finds_the_common_point_inside_the_new_masters_records() {
    let mut sim = sim(
        "r2_verify_finds_the_common_point_inside_the_new_masters_records",
        3,
        Config::default(),
    );
    sim.start_group();
    for k in 0..3 {
        assert!(sim.write(0, &format!("k{k}"), "v").permanent);
    }
    // The master is cut off and writes a tail nobody gets.
    sim.partition(&[0], &[1, 2]);
    for k in 0..4 {
        let o = sim.write_with(0, &format!("lost{k}"), "small", Durability::Sync);
        assert!(!o.permanent);
    }
    sim.crash(0, CrashMode::Clean);
    sim.heal();
    let m = sim.promote_best();
    assert_ne!(m, 0);
    // The new master writes records of other sizes over the same LSNs.
    for k in 0..3 {
        let big = "x".repeat(100 + 37 * k);
        assert!(sim.write(m, &format!("new{k}"), &big).permanent);
    }
    sim.restart(0, Start::Client);
    sim.run_for(ms(500));
    assert!(!has_event(&sim, 0, |e| *e == Event::JoinFailure));
    assert!(has_event(
        &sim,
        0,
        |e| matches!(e, Event::Rollback(rb) if rb.commits.len() == 4)
    ));
    sim.converge(ms(10_000));
    assert_eq!(sim.site(0).role(), Role::Client);
    assert_eq!(sim.site(0).store().get("db", b"lost0"), None);
}

/// Regression: over a network that loses nothing, each record goes to each
/// client once. A client used to treat the envelope of every LOG (whose
/// LSN is that very record) as news of a missing tail and send a LOG_REQ
/// before applying it, so the master sent every record twice.
#[test]
fn r2_a_lossless_network_ships_each_record_once() {
    let mut sim = sim(
        "r2_a_lossless_network_ships_each_record_once",
        3,
        Config::default(),
    );
    sim.start_group();
    let from = sim.steps();
    let t0 = sim.now();
    for k in 0..20 {
        assert!(sim.write(0, &format!("k{k}"), "v").permanent);
    }
    sim.run_for(ms(200));
    assert!(sim.converged());
    let mut logs = 0;
    let mut requests = 0;
    for st in sim.trace().steps().skip(from as usize) {
        assert!(st.time >= t0);
        for o in &st.outputs {
            if let trace::Out::Send { msg, .. } = o {
                match msg.kind {
                    Some(shoal_core::wire::MessageKind::Log) => logs += 1,
                    Some(shoal_core::wire::MessageKind::LogReq) => requests += 1,
                    _ => {}
                }
            }
        }
    }
    assert_eq!(requests, 0, "no client asks for what is on its way");
    assert_eq!(logs, 20 * 2, "each commit once to each of two clients");
}

// ----- R1: roles -------------------------------------------------------------

/// R1: only the master takes writes; a client refuses with the master's id.
#[test]
fn r1_only_the_master_takes_writes() {
    let mut sim = sim("r1_only_the_master_takes_writes", 3, Config::default());
    sim.start_group();
    assert_eq!(sim.site(0).role(), Role::Master);
    let master = sim.id(0);
    for c in [1, 2] {
        assert_eq!(sim.site(c).role(), Role::Client);
        let ops = [Op::Put {
            db: "db",
            key: b"k",
            value: b"v",
        }];
        let err = sim.commit(c, &ops, Durability::Sync).unwrap_err();
        assert_eq!(err, CommitError::NotMaster(Some(master)));
    }
    assert!(sim.write(0, "k", "v").permanent);
    sim.run_for(ms(50));
    assert_eq!(sim.site(2).get("db", b"k"), Ok(Some(&b"v"[..])));
}

/// R1: a site started as client announces itself (NEWCLIENT) and asks
/// for the master (MASTER_REQ); the master answers NEWMASTER. When the
/// answer is lost, the client asks again until it hears one.
#[test]
fn r1_a_client_finds_the_master_by_asking() {
    let mut sim = sim(
        "r1_a_client_finds_the_master_by_asking",
        3,
        Config::default(),
    );
    sim.start_group();
    sim.write(0, "a", "1");
    sim.crash(2, CrashMode::Clean);
    sim.write(0, "b", "2");
    // The master's answers to s2 are lost for a while (the connection
    // stays up: only messages are lost).
    let mut lossy = sim.net_ref().default_link();
    lossy.loss_ppm = 1_000_000;
    sim.net().set_link(0, 2, lossy);
    let from = sim.steps() as usize;
    sim.restart(2, Start::Client);
    sim.run_for(ms(2500));
    sim.net().reset_links();
    let t = sim.run_until_true(ms(5000), "s2 finds the master", |s| {
        s.site(2).master() == Some(s.id(0)) && s.converged()
    });
    assert!(t > ms(0));
    let sent_by_2: Vec<(shoal_core::Instant, MessageKind)> = sim
        .trace()
        .steps()
        .skip(from)
        .filter(|st| st.site == 2)
        .flat_map(|st| {
            st.outputs.iter().filter_map(move |o| match o {
                trace::Out::Send { msg, .. } => msg.kind.map(|k| (st.time, k)),
                _ => None,
            })
        })
        .collect();
    let kinds: Vec<MessageKind> = sent_by_2.iter().map(|x| x.1).collect();
    assert_eq!(
        &kinds[..2],
        &[MessageKind::NewClient, MessageKind::NewClient]
    );
    let asks: Vec<_> = sent_by_2
        .iter()
        .filter(|x| x.1 == MessageKind::MasterReq)
        .map(|x| x.0)
        .collect();
    // Asked at start, and again after the answers were lost.
    assert!(asks.len() >= 3, "{asks:?}");
    assert!(asks.last().unwrap().since(asks[0]) >= sim.site(2).config().timeouts.election);
    let answers_to_2 = sim
        .trace()
        .steps()
        .skip(from)
        .filter(|st| st.site == 0)
        .flat_map(|st| st.outputs.iter())
        .filter(|o| {
            matches!(o, trace::Out::Send { to: Some(2), msg, .. } if msg.kind == Some(MessageKind::NewMaster))
        })
        .count();
    assert!(answers_to_2 >= 2);
    assert!(has_event(&sim, 2, |e| *e == Event::NewMaster(sim.id(0))));
    assert_eq!(sim.site(2).store().get("db", b"b"), Some(&b"2"[..]));
}

// ----- R2: log shipping ---------------------------------------------------------

/// R2: over a network that loses, duplicates and reorders, clients apply
/// strictly in LSN order (checked after every step), re-request the gaps,
/// ignore duplicates, and end with the master's log.
#[test]
fn r2_gaps_are_filled_and_duplicates_ignored() {
    let mut c = SimConfig::new("scenarios", "r2_gaps_are_filled_and_duplicates_ignored", 3);
    c.site = operator_mode(Config::default());
    replay_hint_on_panic();
    let mut sim = Sim::new(c);
    sim.start_group();
    sim.net().set_default(LinkConfig {
        loss_ppm: 150_000,
        dup_ppm: 150_000,
        reorder_ppm: 300_000,
        reorder_delay: ms(30),
        ..LinkConfig::jitter(ms(1), ms(8))
    });
    for k in 0..60 {
        let key = format!("k{k}");
        let ops = [Op::Put {
            db: "db",
            key: key.as_bytes(),
            value: b"v",
        }];
        sim.commit(0, &ops, Durability::NoSync).unwrap();
        sim.run_for(ms(7));
    }
    sim.run_for(ms(300));
    let net = sim.net_ref().stats();
    assert!(
        net.lost > 0 && net.duplicated > 0 && net.reordered > 0,
        "{net:?}"
    );
    let (mut dups, mut requests) = (0, 0);
    for c in [1, 2] {
        dups += sim.site(c).stats().duplicates;
        requests += sim.site(c).stats().log_requests;
    }
    assert!(dups > 0, "duplicates were seen and dropped");
    assert!(requests > 0, "gaps were re-requested");
    sim.converge(ms(10_000));
    for c in [1, 2] {
        assert_eq!(sim.site(c).store().get("db", b"k59"), Some(&b"v"[..]));
    }
}

// ----- R3: transactions -------------------------------------------------------

/// R3: a transaction across two databases is one commit record, applied
/// whole on every client; a client can wait for a commit token
/// (read-your-writes) and times out when the commit cannot reach it.
#[test]
fn r3_atomic_multi_database_commit_and_read_your_writes() {
    let mut sim = sim(
        "r3_atomic_multi_database_commit_and_read_your_writes",
        3,
        Config::default(),
    );
    sim.start_group();
    let records_before = sim.site(1).log_index().len();
    let ops = [
        Op::Put {
            db: "accounts",
            key: b"alice",
            value: b"90",
        },
        Op::Put {
            db: "accounts",
            key: b"bob",
            value: b"110",
        },
        Op::Put {
            db: "audit",
            key: b"t1",
            value: b"alice->bob 10",
        },
        Op::Delete {
            db: "pending",
            key: b"t1",
        },
    ];
    let id = sim.commit(0, &ops, Durability::Sync).unwrap();
    // Read-your-writes on a client: wait for the token.
    let out = sim.wait_commit(0, id, ms(2000));
    assert!(out.permanent);
    assert_eq!(sim.txn_applied(1, out.token, ms(1000)), Ok(()));
    let s1 = sim.site(1);
    assert_eq!(s1.store().get("accounts", b"bob"), Some(&b"110"[..]));
    assert_eq!(s1.store().get("audit", b"t1"), Some(&b"alice->bob 10"[..]));
    // One record for the whole transaction.
    let new: Vec<_> = s1.log_index()[records_before..].to_vec();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].lsn, out.token.lsn);
    assert_eq!(new[0].kind, shoal_core::log::RecordKind::Commit);
    // A client that cannot hear the master times out waiting.
    let mut lossy = sim.net_ref().default_link();
    lossy.loss_ppm = 1_000_000;
    sim.net().set_link(0, 2, lossy);
    let out = sim.write(0, "late", "x");
    assert!(out.permanent, "s1 still acks");
    let t0 = sim.now();
    assert_eq!(
        sim.txn_applied(2, out.token, ms(200)),
        Err(WaitError::Timeout)
    );
    assert!(sim.now().since(t0) >= ms(200));
    // Once the link is back the token is applied (a heartbeat or the next
    // commit shows the gap).
    sim.net().reset_links();
    sim.write(0, "next", "y");
    assert_eq!(sim.txn_applied(2, out.token, ms(2000)), Ok(()));
}

// ----- R4: commit durability -----------------------------------------------------

/// R4: after a crash a no-sync commit may be lost locally; a sync one never
/// is. (A lone site with ack policy NONE, so nothing waits for its flush;
/// its crash is beyond what the group promises, so the checker does not
/// count its commits as permanent. Under QUORUM the master would flush
/// before calling the commit permanent.)
#[test]
fn r4_sync_commits_survive_a_crash_no_sync_ones_may_not() {
    let cfg = Config {
        ack_policy: AckPolicy::None,
        ..Config::default()
    };
    let mut sim = sim(
        "r4_sync_commits_survive_a_crash_no_sync_ones_may_not",
        1,
        cfg,
    );
    sim.start_group();
    let a = sim.write_with(0, "sync", "1", Durability::Sync);
    assert!(a.flushed, "a sync commit is durable before its answer");
    let b = sim.write_with(0, "nosync", "2", Durability::NoSync);
    assert!(!b.flushed, "answered before the flush");
    let c = sim.write_with(0, "wns", "3", Durability::WriteNoSync);
    assert!(!c.flushed);
    sim.crash(0, CrashMode::Clean);
    assert!(!sim.checker().promises_hold());
    sim.restart(0, Start::Idle);
    let s = sim.site(0);
    assert_eq!(s.store().get("db", b"sync"), Some(&b"1"[..]));
    assert_eq!(s.store().get("db", b"nosync"), None);
    assert_eq!(s.store().get("db", b"wns"), None);
    assert_eq!(s.last_lsn(), a.token.lsn);
}

/// R4: concurrent commits share one flush (the host groups them).
#[test]
fn r4_concurrent_commits_share_a_flush() {
    let mut c = SimConfig::new("scenarios", "r4_concurrent_commits_share_a_flush", 3);
    c.site = operator_mode(Config::default());
    c.fsync_min = ms(5);
    c.fsync_max = ms(5);
    replay_hint_on_panic();
    let mut sim = Sim::new(c);
    sim.start_group();
    let syncs = |sim: &mut Sim| sim.site_mut(0).storage_mut().stats().syncs;
    let before = syncs(&mut sim);
    let mut ids = Vec::new();
    for k in 0..20 {
        let key = format!("k{k}");
        let ops = [Op::Put {
            db: "db",
            key: key.as_bytes(),
            value: b"v",
        }];
        ids.push(sim.commit(0, &ops, Durability::Sync).unwrap());
        sim.run_for(Duration::from_micros(500));
    }
    for id in ids {
        let o = sim.wait_commit(0, id, ms(2000));
        assert!(o.flushed && o.permanent);
    }
    let used = syncs(&mut sim) - before;
    assert!(
        used <= 5,
        "20 commits over 10 ms took {used} flushes of 5 ms"
    );
}

// ----- R5: ack policies --------------------------------------------------------------

/// R5: every policy in a 3- and a 5-site group, with every client up, and
/// with some clients cut off: permanent, or PERM_FAILED after the ack
/// timeout, as the policy says; the outcome reports acks and needs.
#[test]
fn r5_every_ack_policy_in_3_and_5_site_groups() {
    use AckPolicy::*;
    // (sites, clients cut off, policy, permanent?, needed)
    let table = [
        (3, 0, All, true, 2),
        (3, 0, AllAvailable, true, 2),
        (3, 0, AllPeers, true, 2),
        (3, 0, None, true, 0),
        (3, 0, One, true, 1),
        (3, 0, OnePeer, true, 1),
        (3, 0, Quorum, true, 1),
        (3, 1, All, false, 2),
        (3, 1, AllAvailable, true, 1),
        (3, 1, AllPeers, false, 2),
        (3, 1, One, true, 1),
        (3, 1, Quorum, true, 1),
        (3, 2, AllAvailable, false, 1),
        (3, 2, One, false, 1),
        (3, 2, OnePeer, false, 1),
        (3, 2, Quorum, false, 1),
        (3, 2, None, true, 0),
        (5, 0, All, true, 4),
        (5, 0, Quorum, true, 2),
        (5, 0, One, true, 1),
        (5, 2, All, false, 4),
        (5, 2, AllAvailable, true, 2),
        (5, 2, AllPeers, false, 4),
        (5, 2, Quorum, true, 2),
        (5, 2, OnePeer, true, 1),
        (5, 3, Quorum, false, 2),
        (5, 3, AllAvailable, true, 1),
        (5, 3, One, true, 1),
        (5, 4, One, false, 1),
    ];
    for (n, cut, policy, permanent, needed) in table {
        let cfg = Config {
            ack_policy: policy,
            ..Config::default()
        };
        let name = "r5_every_ack_policy_in_3_and_5_site_groups";
        let mut sim = sim(name, n, cfg);
        sim.start_group();
        for c in 1..=cut {
            sim.isolate(c);
        }
        let t0 = sim.now();
        let out = sim.write(0, "k", "v");
        let took = sim.now().since(t0);
        let what = format!("{n} sites, {cut} cut, {policy:?}: {out:?}");
        assert_eq!(out.permanent, permanent, "{what}");
        assert_eq!(out.needed, needed, "{what}");
        assert!(out.flushed, "{what}");
        let failed = has_event(&sim, 0, |e| *e == Event::PermFailed(out.token.lsn));
        assert_eq!(failed, !permanent, "{what}");
        if permanent {
            assert!(out.acks >= needed, "{what}");
            assert!(took < ms(100), "{what}: took {took:?}");
        } else {
            // Either the ack timeout ran out, or the group could never
            // supply the acks and the answer came at once.
            assert!(
                took >= sim.site(0).config().timeouts.ack || out.acks == 0,
                "{what}: took {took:?}"
            );
        }
    }
}

/// R5: the ack timeout is configurable; PERM_FAILED comes when it runs out
/// and the commit still stands locally and on the clients that got it.
#[test]
fn r5_ack_timeout() {
    let mut cfg = Config {
        ack_policy: AckPolicy::All,
        ..Config::default()
    };
    cfg.timeouts.ack = ms(300);
    let mut sim = sim("r5_ack_timeout", 3, cfg);
    sim.start_group();
    // s2's acks are lost; its connection stays up.
    let mut lossy = sim.net_ref().default_link();
    lossy.loss_ppm = 1_000_000;
    sim.net().set_link(2, 0, lossy);
    let t0 = sim.now();
    let out = sim.write(0, "k", "v");
    let took = sim.now().since(t0);
    assert!(!out.permanent);
    assert_eq!((out.acks, out.needed), (1, 2));
    assert!(took >= ms(300) && took < ms(320), "{took:?}");
    assert!(has_event(&sim, 0, |e| *e == Event::PermFailed(out.token.lsn)));
    sim.run_for(ms(50));
    for i in 0..3 {
        assert_eq!(sim.site(i).store().get("db", b"k"), Some(&b"v"[..]));
    }
}

// ----- R6: events -------------------------------------------------------------------

fn events_of(sim: &Sim, i: usize, from: usize) -> Vec<Event> {
    sim.events(i)[from..]
        .iter()
        .map(|(_, e)| e.clone())
        .filter(|e| !matches!(e, Event::ConnectEstablished(_) | Event::ConnectBroken(_)))
        .collect()
}

/// R6: the events of a join and of a restart, in order.
#[test]
fn r6_event_order_for_a_join_and_a_restart() {
    let mut sim = sim(
        "r6_event_order_for_a_join_and_a_restart",
        3,
        Config::default(),
    );
    sim.act(0, "create_group", |s, now| s.create_group(now))
        .unwrap();
    sim.run_for(ms(20));
    assert_eq!(
        events_of(&sim, 0, 0),
        vec![Event::Master, Event::SiteAdded(SiteId(1))]
    );
    sim.act(1, "join s0", |s, now| s.join(now, "s0"));
    sim.run_for(ms(200));
    let m = SiteId(1);
    // The joiner learns the members with the join answer, becomes a
    // client, hears the master, catches up (replaying the group's
    // membership records) and says so.
    assert_eq!(
        events_of(&sim, 1, 0),
        vec![Event::Client, Event::NewMaster(m), Event::StartupDone,],
        "{:?}",
        sim.events(1)
    );
    assert_eq!(
        events_of(&sim, 0, 0),
        vec![
            Event::Master,
            Event::SiteAdded(SiteId(1)),
            Event::SiteAdded(SiteId(2))
        ]
    );
    sim.act(2, "join s0", |s, now| s.join(now, "s0"));
    sim.run_for(ms(200));
    assert!(sim.converged());
    assert!(has_event(&sim, 1, |e| *e == Event::SiteAdded(SiteId(3))));
    // A client restarts: it rebuilds its state from its log (no events for
    // what it replays), becomes a client, hears the master, catches up.
    let mark = sim.events(1).len();
    sim.write(0, "a", "1");
    sim.crash(1, CrashMode::Clean);
    sim.write(0, "b", "2");
    sim.restart(1, Start::Client);
    sim.run_for(ms(200));
    assert_eq!(
        events_of(&sim, 1, mark),
        vec![Event::Client, Event::NewMaster(m), Event::StartupDone],
        "{:?}",
        &sim.events(1)[mark..]
    );
}

// ----- R7: membership -------------------------------------------------------------

/// R7: the creator starts the group; a site joins through a helper that is
/// not the master (and is sent on to the master); a removed site learns it;
/// nsites (and so QUORUM) follows the membership.
#[test]
fn r7_membership_through_a_helper_and_removal() {
    let mut sim = sim(
        "r7_membership_through_a_helper_and_removal",
        5,
        Config::default(),
    );
    sim.act(0, "create_group", |s, now| s.create_group(now))
        .unwrap();
    sim.run_for(ms(20));
    sim.act(1, "join s0", |s, now| s.join(now, "s0"));
    sim.run_for(ms(100));
    // s2, s3, s4 join through s1, a client.
    for i in 2..5 {
        sim.act(i, "join s1", |s, now| s.join(now, "s1"));
        sim.run_for(ms(100));
    }
    sim.run_until_true(ms(5000), "every site joined", |s| s.converged());
    for i in 0..5 {
        assert_eq!(sim.site(i).members().len(), 5, "s{i}");
    }
    // s1 answered the joiners with "not master, ask s0".
    assert!(sim.trace().steps().any(|st| st.site == 1
        && st.outputs.iter().any(|o| matches!(o, trace::Out::Send { msg, .. } if msg.kind == Some(MessageKind::JoinAnswer)))));
    assert_eq!(sim.write(0, "five", "v").needed, 2, "QUORUM of 5");
    // Remove two sites.
    for i in [3usize, 4] {
        let id = sim.id(i);
        let req = sim
            .act(0, "remove_site", |s, now| s.remove_site(now, id))
            .unwrap();
        sim.run_for(ms(100));
        assert!(sim.answers(0).iter().any(|(_, _, a)| *a
            == Answer::Remove {
                id: req,
                result: Ok(())
            }));
        assert!(has_event(&sim, i, |e| *e == Event::LocalSiteRemoved));
        assert!(has_event(&sim, 1, |e| *e == Event::SiteRemoved(id)));
    }
    for i in 0..3 {
        assert_eq!(sim.site(i).members().len(), 3, "s{i}");
    }
    let out = sim.write(0, "three", "v");
    assert_eq!(
        out.needed, 1,
        "QUORUM of 3 once nsites follows the membership"
    );
    assert!(out.permanent);
}

// ----- R8: checkpoints --------------------------------------------------------------

/// R8: a checkpoint record is written after checkpoint_delay when there
/// were writes, and replicated; none without writes.
#[test]
fn r8_checkpoints_follow_writes() {
    let mut cfg = Config::default();
    cfg.timeouts.checkpoint_delay = ms(500);
    let mut sim = sim("r8_checkpoints_follow_writes", 3, cfg);
    sim.start_group();
    let checkpoints = |sim: &Sim, i: usize| {
        sim.site(i)
            .log_index()
            .iter()
            .filter(|e| e.kind == shoal_core::log::RecordKind::Checkpoint)
            .count()
    };
    sim.run_for(ms(600));
    let quiet = checkpoints(&sim, 0);
    sim.write(0, "a", "1");
    sim.run_for(ms(600));
    assert_eq!(checkpoints(&sim, 0), quiet + 1);
    sim.run_for(ms(1500));
    assert_eq!(checkpoints(&sim, 0), quiet + 1, "no writes, no checkpoint");
    assert!(sim.converged());
    assert_eq!(checkpoints(&sim, 2), checkpoints(&sim, 0));
}

// ----- R9: heartbeats ---------------------------------------------------------------

/// R9: with HEARTBEAT_SEND a client that missed the last record fills the
/// gap without any new write; without heartbeats it stays behind.
#[test]
fn r9_heartbeats_reveal_a_missed_last_record() {
    for heartbeat in [true, false] {
        let mut cfg = Config::default();
        if heartbeat {
            cfg.timeouts.heartbeat_send = ms(100);
        }
        let mut sim = sim("r9_heartbeats_reveal_a_missed_last_record", 3, cfg);
        sim.start_group();
        let mut lossy = sim.net_ref().default_link();
        lossy.loss_ppm = 1_000_000;
        sim.net().set_link(0, 2, lossy);
        sim.write(0, "last", "1");
        sim.run_for(ms(20));
        sim.net().reset_links();
        assert_eq!(sim.site(2).store().get("db", b"last"), None);
        sim.run_for(ms(400));
        let got = sim.site(2).store().get("db", b"last").is_some();
        assert_eq!(got, heartbeat, "heartbeat {heartbeat}");
    }
}

/// R9: with HEARTBEAT_MONITOR a client that stops hearing the master raises
/// MASTER_FAILURE one monitor period after it last heard it.
#[test]
fn r9_heartbeat_monitor_detects_a_silent_master() {
    let mut cfg = Config::default();
    cfg.timeouts.heartbeat_send = ms(100);
    cfg.timeouts.heartbeat_monitor = ms(400);
    let mut sim = sim("r9_heartbeat_monitor_detects_a_silent_master", 3, cfg);
    sim.start_group();
    sim.run_for(ms(300));
    assert!(!has_event(&sim, 1, |e| *e == Event::MasterFailure));
    // Everything the master sends is lost; the connections stay up.
    let mut lossy = sim.net_ref().default_link();
    lossy.loss_ppm = 1_000_000;
    sim.net().set_link(0, 1, lossy);
    sim.net().set_link(0, 2, lossy);
    let t0 = sim.now();
    sim.run_until_true(ms(2000), "s1 raises MASTER_FAILURE", |s| {
        has_event(s, 1, |e| *e == Event::MasterFailure)
    });
    let took = sim.now().since(t0);
    assert!(took > ms(300) && took <= ms(400), "{took:?}");
    assert_eq!(sim.site(1).master(), None);
    // The master comes back into hearing: the clients find it again.
    sim.net().reset_links();
    sim.run_until_true(ms(5000), "clients follow the master again", |s| {
        s.converged()
    });
}

/// R9: the master partitioned away (its connections break): the clients
/// raise MASTER_FAILURE at once.
#[test]
fn r9_a_partitioned_master_is_a_master_failure() {
    let mut sim = sim(
        "r9_a_partitioned_master_is_a_master_failure",
        3,
        Config::default(),
    );
    sim.start_group();
    sim.isolate(0);
    sim.run_for(ms(10));
    for c in [1, 2] {
        assert!(has_event(&sim, c, |e| *e == Event::MasterFailure));
        assert_eq!(sim.site(c).master(), None);
    }
    sim.heal();
    sim.run_until_true(ms(5000), "clients follow the master again", |s| {
        s.converged()
    });
}

// ----- R13: flow control ------------------------------------------------------------

/// R13: a gap whose requests get no answer is asked for again after
/// rerequest_min, then after twice as long each time, up to rerequest_max.
#[test]
fn r13_rerequest_backoff_doubles_up_to_the_maximum() {
    let cfg = Config::default();
    let (min, max) = (cfg.timeouts.rerequest_min, cfg.timeouts.rerequest_max);
    let mut sim = sim("r13_rerequest_backoff_doubles_up_to_the_maximum", 3, cfg);
    sim.start_group();
    // s2 misses A, then every request it sends is lost.
    let mut lossy = sim.net_ref().default_link();
    lossy.loss_ppm = 1_000_000;
    sim.net().set_link(0, 2, lossy);
    sim.write(0, "a", "1");
    sim.net().reset_links();
    sim.net().set_link(2, 0, lossy);
    let from = sim.steps() as usize;
    sim.write(0, "b", "2");
    sim.run_for(ms(5000));
    let times: Vec<shoal_core::Instant> = sim
        .trace()
        .steps()
        .skip(from)
        .filter(|st| st.site == 2)
        .filter(|st| {
            st.outputs.iter().any(
                |o| matches!(o, trace::Out::Send { msg, .. } if msg.kind == Some(MessageKind::LogReq)),
            )
        })
        .map(|st| st.time)
        .collect();
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1].since(w[0])).collect();
    let mut want = Vec::new();
    let mut d = min;
    while want.len() < gaps.len() {
        want.push(d);
        d = (d * 2).min(max);
    }
    assert!(gaps.len() >= 7, "{gaps:?}");
    assert_eq!(gaps, want, "request times {times:?}");
    // The re-sends are marked REREQUEST.
    let rereq = sim
        .trace()
        .steps()
        .skip(from)
        .filter(|st| st.site == 2)
        .flat_map(|st| st.outputs.iter())
        .filter(|o| matches!(o, trace::Out::Send { msg, .. } if msg.kind == Some(MessageKind::LogReq) && msg.has(Flags::REREQUEST)))
        .count();
    assert_eq!(rereq, times.len() - 1);
    sim.net().reset_links();
    sim.run_until_true(ms(3000), "s2 fills the gap", |s| s.converged());
}

/// R13: a catch-up larger than max_answer_bytes comes in pieces, each
/// ended by LOG_MORE, and the client asks for the next piece.
#[test]
fn r13_log_more_when_a_catch_up_exceeds_the_answer_cap() {
    let mut cfg = Config::default();
    cfg.limits.max_answer_bytes = 1024;
    let mut sim = sim(
        "r13_log_more_when_a_catch_up_exceeds_the_answer_cap",
        3,
        cfg,
    );
    sim.start_group();
    sim.run_for(ms(50));
    sim.crash(2, CrashMode::Clean);
    for k in 0..40 {
        sim.write_with(0, &format!("k{k}"), &"x".repeat(100), Durability::NoSync);
    }
    let from = sim.steps() as usize;
    sim.restart(2, Start::Client);
    sim.run_until_true(ms(5000), "s2 caught up", |s| s.converged());
    let more = log_mores(&sim, from, 0, 2);
    // About 40 x 150 bytes in answers of at most 1 KB.
    assert!(more >= 4, "{more} LOG_MORE");
    let requests = sim
        .trace()
        .steps()
        .skip(from)
        .filter(|st| st.site == 2)
        .flat_map(|st| st.outputs.iter())
        .filter(
            |o| matches!(o, trace::Out::Send { msg, .. } if msg.kind == Some(MessageKind::LogReq)),
        )
        .count();
    assert!(requests > more, "one request per piece");
}

/// R13, R11, S3: a device client (`Limits::device()`: a 32 KiB incoming
/// queue, and a host that takes its frames at 4 bytes per microsecond)
/// that fell far behind a master with default limits catches up with no
/// frame dropped from its incoming queue. Its log requests say how much
/// answer it takes (8 KiB: a quarter of its queue), and the master stops
/// each answer there, LOG_MORE ahead, where it used to send up to its own
/// 1 MiB at once: the device's host dropped most of it (INQUEUE_FULL) and
/// the device asked again, progressing slowly.
#[test]
fn r13_a_device_behind_a_default_master_catches_up_without_inqueue_overflow() {
    let name = "r13_a_device_behind_a_default_master_catches_up_without_inqueue_overflow";
    let mut sim = sim(name, 3, Config::default());
    let mut device = sim.site_config(2);
    device.limits = shoal_core::config::Limits::device();
    sim.set_site_config(2, device);
    sim.set_inqueue(2, 250);
    sim.start_group();
    sim.run_for(ms(50));
    sim.crash(2, CrashMode::Clean);
    // About 130 KiB of log: four device queues' worth.
    for k in 0..600 {
        sim.write_with(0, &format!("k{k:04}"), &"x".repeat(200), Durability::NoSync);
    }
    let from = sim.steps() as usize;
    sim.restart(2, Start::Client);
    // A few writes while it catches up: live traffic shares its queue.
    for k in 0..10 {
        sim.write_with(0, &format!("live{k}"), "y", Durability::NoSync);
        sim.run_for(ms(5));
    }
    sim.run_until_true(ms(30_000), "the device caught up", |s| s.converged());
    let q = sim.inqueue_stats(2);
    assert_eq!(
        q.dropped, 0,
        "frames dropped from the device's queue: {q:?}"
    );
    assert!(q.queued > 0, "the device's queue was used: {q:?}");
    assert!(
        !has_event(&sim, 2, |e| matches!(e, Event::InqueueFull)),
        "no INQUEUE_FULL"
    );
    let more = log_mores(&sim, from, 0, 2);
    // About 130 KiB in answers of at most 8 KiB.
    assert!(more >= 12, "{more} LOG_MORE");
}

/// LOG_MOREs site `by` sent site `to` since trace step `from` (R13).
fn log_mores(sim: &Sim, from: usize, by: usize, to: usize) -> usize {
    sim.trace()
        .steps()
        .skip(from)
        .filter(|st| st.site == by)
        .flat_map(|st| st.outputs.iter())
        .filter(|o| matches!(o, trace::Out::Send { to: Some(t), msg, .. } if *t == to && msg.kind == Some(MessageKind::LogMore)))
        .count()
}

// ----- the checker itself ------------------------------------------------------------

/// The checker catches a lost permanent commit: an operator who promotes a
/// stale site (while claiming the promises hold) loses one, and the
/// simulator says so, with the seed.
#[test]
#[should_panic(expected = "lacks permanent commit [1][")]
fn checker_catches_a_lost_permanent_commit() {
    let mut sim = sim(
        "checker_catches_a_lost_permanent_commit",
        3,
        Config::default(),
    );
    sim.start_group();
    sim.isolate(2);
    assert!(sim.write(0, "k", "v").permanent);
    sim.crash(0, CrashMode::Clean);
    sim.heal();
    sim.run_for(ms(50));
    sim.promote_unchecked(2);
    sim.run_for(ms(500));
}

/// A failure message names the seed and the command that replays it.
#[test]
fn a_failure_names_the_seed_and_how_to_replay() {
    let sim = sim(
        "a_failure_names_the_seed_and_how_to_replay",
        1,
        Config::default(),
    );
    let r = sim.report("example");
    let seed = sim.seed();
    assert!(r.contains(&format!("(seed {seed})")), "{r}");
    assert!(r.contains(&format!(
        "SHOAL_SEED={seed} cargo test -p shoal-tests --test scenarios a_failure_names_the_seed_and_how_to_replay"
    )));
}

/// R7: a site that crashed after its join was accepted but before any of
/// the group's log reached its disk knows its id but no member: started as
/// a client it has nobody to ask. Started the way an application starts
/// (join through a helper) it is accepted again under the same id.
#[test]
fn r7_a_site_whose_join_was_not_durable_rejoins_through_a_helper() {
    let name = "r7_a_site_whose_join_was_not_durable_rejoins_through_a_helper";
    let mut sim = sim(name, 3, Config::default());
    sim.act(0, "create_group", |s, now| s.create_group(now))
        .unwrap();
    sim.act(1, "join s0", |s, now| s.join(now, "s0"));
    sim.run_until_true(ms(1000), "s1 joined", |s| {
        s.site(1).master() == Some(s.id(0)) && s.site(1).last_lsn() == s.site(0).last_lsn()
    });
    sim.act(2, "join s0", |s, now| s.join(now, "s0"));
    sim.run_until_true(ms(1000), "s2 has an id", |s| s.site(2).id().0 != 0);
    // The membership record that adds s2 reaches s1 before s2 restarts:
    // otherwise it brings the links to s2 up again after the restart, and
    // the master greets the site it knows as a member with NEWMASTER (a
    // race of the network's timing, not what this test is about).
    sim.run_until_true(ms(1000), "s1 knows s2", |s| s.site(1).members().len() == 3);
    let id = sim.id(2);
    assert_eq!(
        sim.site(2).last_lsn(),
        shoal_core::Lsn::ZERO,
        "s2 has no log yet"
    );
    sim.crash(2, CrashMode::Clean);
    sim.restart(2, Start::Client);
    assert_eq!(sim.site(2).id(), id);
    assert!(sim.site(2).members().is_empty(), "nobody to ask");
    sim.run_for(ms(3000));
    assert_eq!(
        sim.site(2).master(),
        None,
        "a client with no members stays alone"
    );
    sim.crash(2, CrashMode::Clean);
    sim.restart(2, Start::Join("s1".into()));
    sim.run_until_true(ms(5000), "s2 is back in the group", |s| s.converged());
    assert_eq!(sim.site(2).id(), id, "the same id");
    assert_eq!(sim.site(0).members().len(), 3);
}

/// A restarted master whose diverged tail holds its latest checkpoint,
/// with the segments before it archived: it cannot roll back to the common
/// point and rebuild its store from its own log. Returns the simulator
/// with s0 restarted as a client configured by `s0_cfg`, and s0's last LSN
/// and store digest as it restarted.
fn rollback_below_the_archived_log(
    name: &str,
    s0_cfg: impl Fn(Config) -> Config,
) -> (Sim, shoal_core::Lsn, u32) {
    let mut cfg = Config {
        log_retention_segments: Some(1),
        ..Config::default()
    };
    cfg.timeouts.checkpoint_delay = ms(50);
    cfg.limits = small_segments();
    let mut sim = sim(name, 3, cfg.clone());
    sim.start_group();
    sim.write(0, "a", "1");
    sim.partition(&[0], &[1, 2]);
    for k in 0..40 {
        sim.write_with(0, &format!("lost{k}"), &"x".repeat(100), Durability::NoSync);
        sim.run_for(ms(10));
    }
    sim.run_for(ms(200));
    let first = sim.site(0).log_index()[0].lsn;
    assert!(first.file > 1, "s0 archived its first segment ({first:?})");
    sim.crash(0, CrashMode::Clean);
    sim.heal();
    let m = sim.promote_best();
    sim.write(m, "new", "1");
    sim.set_site_config(0, s0_cfg(operator_mode(cfg.clone())));
    sim.restart(0, Start::Client);
    let (last, digest) = (sim.site(0).last_lsn(), sim.site(0).store().digest());
    (sim, last, digest)
}

/// Regression (R8/S7): with AUTOINIT off, such a site must say so
/// (JOIN_FAILURE) and leave its data intact. It used to truncate its whole
/// log first and only then find it had nothing to rebuild from.
#[test]
fn r8_a_rollback_below_the_archived_log_leaves_the_data_intact() {
    let name = "r8_a_rollback_below_the_archived_log_leaves_the_data_intact";
    let (mut sim, last, digest) = rollback_below_the_archived_log(name, |c| Config {
        autoinit: false,
        ..c
    });
    sim.run_for(ms(1000));
    assert!(has_event(&sim, 0, |e| *e == Event::JoinFailure));
    assert!(!has_event(&sim, 0, |e| *e == Event::InitDone));
    assert_eq!(sim.site(0).last_lsn(), last, "the log is intact");
    assert_eq!(sim.site(0).store().digest(), digest, "the store is intact");
}

/// S6: with AUTOINIT on (the default) the same site takes the new
/// master's whole database instead: its lost tail is gone, the new
/// master's commits are there, and the group converges.
#[test]
fn s6_a_rollback_below_the_archived_log_initialises_the_site() {
    let name = "s6_a_rollback_below_the_archived_log_initialises_the_site";
    let (mut sim, _, _) = rollback_below_the_archived_log(name, |c| c);
    sim.run_until_true(ms(5_000), "s0 is initialised", |sim| {
        has_event(sim, 0, |e| *e == Event::InitDone)
    });
    assert!(!has_event(&sim, 0, |e| *e == Event::JoinFailure));
    sim.converge(ms(10_000));
    assert_eq!(sim.site(0).store().get("db", b"lost0"), None);
    assert_eq!(sim.site(0).store().get("db", b"new"), Some(&b"1"[..]));
    assert_eq!(sim.site(0).store().get("db", b"a"), Some(&b"1"[..]));
}

/// Regression (P2/R2): a rollback whose first removed record began a new
/// segment must leave the log positioned at the end of the kept record, in
/// the old segment, where the new master's next record may well fit. It
/// used to be left at the start of the next segment, so the client asked
/// for (and could only append) records from there, and never caught up.
#[test]
fn r2_a_rollback_at_a_segment_start_continues_in_the_old_segment() {
    let cfg = Config {
        limits: small_segments(),
        ..Config::default()
    };
    let name = "r2_a_rollback_at_a_segment_start_continues_in_the_old_segment";
    let mut sim = sim(name, 3, cfg);
    sim.start_group();
    // Fill segment 1 until about 200 bytes are left.
    let end = |sim: &Sim| sim.site(0).log_index().last().unwrap().end();
    let before = end(&sim);
    sim.write(0, "fill", "");
    let overhead = end(&sim).offset - before.offset;
    loop {
        let left = 2048 - end(&sim).offset;
        if (150..=250).contains(&left) {
            break;
        }
        assert!(left > 250, "overshot: {left} left");
        let v = (left - 200).saturating_sub(overhead).min(400) as usize;
        assert!(sim.write(0, "fill", &"f".repeat(v)).permanent);
    }
    // The cut-off master writes a record that does not fit: it opens
    // segment 2.
    sim.partition(&[0], &[1, 2]);
    let lost = sim.write_with(0, "lost", &"x".repeat(400), Durability::NoSync);
    assert_eq!(lost.token.lsn, shoal_core::Lsn::new(2, 20));
    sim.crash(0, CrashMode::Clean);
    sim.heal();
    let m = sim.promote_best();
    // The new master's records fit in segment 1.
    sim.write(m, "new", "1");
    assert_eq!(sim.site(m).last_lsn().file, 1);
    sim.restart(0, Start::Client);
    sim.run_until_true(ms(5000), "the old master catches up", |s| s.converged());
    assert_eq!(sim.site(0).store().get("db", b"lost"), None);
    assert_eq!(sim.site(0).store().get("db", b"new"), Some(&b"1"[..]));
}

/// Regression (P2/S1): when the new master has no record at a probed LSN
/// and its record before it neither spans the probe nor is its last (it
/// moved on to the next segment), the client must still read the answer
/// as a mismatch for that probe. It used to take it for a stale answer to
/// an older probe, drop it, and ask again for ever.
#[test]
fn r2_verify_answers_name_the_probe_they_answer() {
    let cfg = Config {
        limits: small_segments(),
        ..Config::default()
    };
    let name = "r2_verify_answers_name_the_probe_they_answer";
    let mut sim = sim(name, 3, cfg);
    sim.start_group();
    let end = |sim: &Sim| sim.site(0).log_index().last().unwrap().end();
    let before = end(&sim);
    sim.write(0, "fill", "");
    let overhead = end(&sim).offset - before.offset;
    loop {
        let left = 2048 - end(&sim).offset;
        if (150..=250).contains(&left) {
            break;
        }
        assert!(left > 250, "overshot: {left} left");
        let v = (left - 200).saturating_sub(overhead).min(400) as usize;
        assert!(sim.write(0, "fill", &"f".repeat(v)).permanent);
    }
    // The cut-off master writes small records to the end of segment 1.
    sim.partition(&[0], &[1, 2]);
    for k in 0..3 {
        let o = sim.write_with(0, &format!("s{k}"), "", Durability::NoSync);
        assert_eq!(o.token.lsn.file, 1);
    }
    sim.crash(0, CrashMode::Clean);
    sim.heal();
    let m = sim.promote_best();
    // The new master's first commit does not fit in segment 1.
    let o = sim.write(m, "big", &"x".repeat(400));
    assert_eq!(o.token.lsn, shoal_core::Lsn::new(2, 20));
    sim.write(m, "after", "1");
    sim.restart(0, Start::Client);
    sim.run_until_true(ms(5000), "the old master catches up", |s| s.converged());
    assert_eq!(sim.site(0).store().get("db", b"s0"), None);
    assert_eq!(sim.site(0).store().get("db", b"after"), Some(&b"1"[..]));
}

/// Regression (R4, log writer; fixed in 634790b): on a file system that
/// orders nothing across files, a crash could keep the start of a new
/// segment while the unsynced tail of the previous one was lost. Recovery
/// then accepted the new segment's records after the shortened one: the
/// log had a hole at the segment switch (and a site positioned
/// after it re-requests the missing records from the wrong place for
/// ever; release seed 4524 of the first 10,000 random runs did that with
/// an empty new segment). The log writer now syncs the old segment before
/// the first byte of a new one, which closes it.
#[test]
fn r4_a_reordered_crash_leaves_no_hole_at_a_segment_switch() {
    let mut cfg = operator_mode(Config::default());
    cfg.limits = small_segments();
    let mut site =
        shoal_core::site::Site::open(cfg.clone(), "s0", SimDisk::new(), shoal_core::Instant(0))
            .unwrap();
    site.create_group(shoal_core::Instant(0)).unwrap();
    use shoal_core::traits::Storage;
    site.storage_mut().sync().unwrap();
    // Unsynced records that run from segment 1 into segment 2.
    for k in 0..12u32 {
        let key = k.to_le_bytes();
        let v = [b'x'; 300];
        let ops = [Op::Put {
            db: "db",
            key: &key,
            value: &v,
        }];
        site.commit(shoal_core::Instant(1), &ops, Durability::NoSync)
            .unwrap();
    }
    while site.poll_output().is_some() {}
    let before = site.log_index().to_vec();
    assert!(before.last().unwrap().lsn.file >= 2);
    let disk = site.into_storage();
    for seed in 0..200 {
        let mut d = disk.clone();
        d.crash(CrashMode::Reordered, &mut Rng::new(seed));
        let re =
            shoal_core::site::Site::open(cfg.clone(), "s0", d, shoal_core::Instant(2)).unwrap();
        let after = re.log_index();
        assert_eq!(
            after,
            &before[..after.len()],
            "seed {seed}: a hole in the recovered log"
        );
    }
}

/// Regression (R4/R5): a QUORUM commit is not permanent while the master's
/// copy is only in memory: a master crash loses that copy, and a majority
/// without the one client that acked (here cut off) elects a winner
/// without the commit. The master used to count itself among the holders
/// at once, so such a commit was reported permanent and then lost. The
/// master's copy now counts once it is as durable as the commit asked: on
/// disk for a sync commit (a power loss keeps it), written out to the
/// operating system for a commit without sync (a process crash keeps it).
#[test]
fn r5_quorum_counts_the_master_only_once_its_copy_is_durable() {
    quorum_counts_the_master("sync", Durability::Sync, CrashMode::Clean);
    quorum_counts_the_master("no_sync", Durability::NoSync, CrashMode::Process);
}

fn quorum_counts_the_master(label: &str, durability: Durability, crash: CrashMode) {
    let mut cfg = Config::default();
    cfg.timeouts.heartbeat_send = ms(50);
    cfg.timeouts.heartbeat_monitor = ms(200);
    cfg.timeouts.election = ms(300);
    let name = format!("r5_quorum_counts_the_master_only_once_its_copy_is_durable_{label}");
    let mut c = SimConfig::new("scenarios", &name, 3);
    c.site = cfg; // elections on: the sites elect the next master
    c.fsync_min = ms(20);
    c.fsync_max = ms(20);
    replay_hint_on_panic();
    let mut sim = Sim::new(c);
    sim.start_group();
    // s1 does not get the commit; s2 does and acks it.
    let mut lossy = sim.net_ref().default_link();
    lossy.loss_ppm = 1_000_000;
    sim.net().set_link(0, 1, lossy);
    let o = sim.write_with(0, "c", "1", durability);
    assert!(o.permanent);
    if durability == Durability::Sync {
        assert!(
            o.flushed,
            "permanent with one ack only once durable on the master"
        );
    }
    sim.crash(0, crash);
    sim.isolate(2);
    sim.net().reset_links();
    sim.restart(0, Start::Rejoin);
    sim.run_until_true(ms(10_000), "s0 and s1 elect a master", |s| {
        s.master().is_some_and(|m| m != 2)
    });
    let m = sim.master().unwrap();
    sim.run_for(ms(500));
    assert_eq!(sim.site(m).store().get("db", b"c"), Some(&b"1"[..]));
    sim.converge(ms(20_000));
}

/// Regression (R5/E2): under ALL every client holds a permanent commit,
/// but the master's own copy of a no-sync commit was only in memory. After
/// the master crashed, the one electable client was cut off, and the
/// restarted master won with the vote of the priority-0 client (which
/// holds the commit but may not win): the commit was rolled back. A commit
/// is now permanent under ALL only once the master's copy is as durable as
/// the commit asked: on disk for a sync commit, written out to the
/// operating system for one without sync.
#[test]
fn r5_all_needs_the_masters_copy_durable_too() {
    // A sync commit: its master's copy must be on disk (a power loss keeps it).
    all_needs_the_masters_copy("sync", Durability::Sync, CrashMode::Clean);
    // A commit without sync (R4): its master's copy must be written out to
    // the operating system (a crash of the process keeps it).
    all_needs_the_masters_copy("no_sync", Durability::NoSync, CrashMode::Process);
}

fn all_needs_the_masters_copy(label: &str, durability: Durability, crash: CrashMode) {
    let mut cfg = Config {
        ack_policy: AckPolicy::All,
        ..Config::default()
    };
    cfg.timeouts.heartbeat_send = ms(50);
    cfg.timeouts.heartbeat_monitor = ms(200);
    cfg.timeouts.election = ms(300);
    let name = format!("r5_all_needs_the_masters_copy_durable_too_{label}");
    let mut c = SimConfig::new("scenarios", &name, 3);
    c.site = cfg.clone(); // elections on
    c.fsync_min = ms(20);
    c.fsync_max = ms(20);
    replay_hint_on_panic();
    let mut sim = Sim::new(c);
    sim.set_site_config(
        2,
        Config {
            priority: 0,
            ..cfg.clone()
        },
    );
    sim.start_group();
    let o = sim.write_with(0, "c", "1", durability);
    assert!(o.permanent);
    if durability == Durability::Sync {
        assert!(
            o.flushed,
            "permanent under ALL only once durable on the master"
        );
    }
    sim.crash(0, crash);
    sim.isolate(1);
    sim.restart(0, Start::Rejoin);
    sim.run_until_true(ms(10_000), "s0 is elected with s2's vote", |s| {
        s.master() == Some(0)
    });
    sim.run_for(ms(300));
    assert_eq!(sim.site(0).store().get("db", b"c"), Some(&b"1"[..]));
    sim.converge(ms(20_000));
}

/// Regression (R1/R7): a site whose disk kept only the start of the group's
/// log knows only the members written there. After the master changed to
/// a site it does not know, it used to drop everything the new master
/// sent (unknown site) and ask only the members it knew, none of them
/// master: it never found the master again. A site now accepts the traffic
/// of a master of a newer generation, and catches up the membership with
/// the log.
#[test]
fn r1_a_site_with_a_stale_membership_finds_a_new_master() {
    let name = "r1_a_site_with_a_stale_membership_finds_a_new_master";
    let mut sim = sim(name, 3, Config::default());
    sim.start_group();
    sim.write(0, "a", "1");
    sim.crash(2, CrashMode::Clean);
    // What reached s2's disk: the first two records (the new generation and
    // site 1's membership).
    let second = sim.site(0).log_index()[1];
    assert_eq!(second.kind, shoal_core::log::RecordKind::Membership);
    {
        use shoal_core::traits::Storage;
        let disk = sim.disk_mut(2).unwrap();
        disk.truncate(second.lsn.file, second.end().offset as u64)
            .unwrap();
        disk.sync().unwrap();
    }
    sim.crash(0, CrashMode::Clean);
    let m = sim.promote_best();
    assert_eq!(m, 1);
    sim.write(1, "b", "2");
    sim.restart(2, Start::Rejoin);
    assert_eq!(sim.site(2).members().len(), 1, "s2 knows only site 1");
    sim.restart(0, Start::Rejoin);
    sim.run_until_true(ms(10_000), "s2 follows the new master", |s| s.converged());
    assert_eq!(sim.site(2).members().len(), 3);
    assert_eq!(sim.site(2).store().get("db", b"b"), Some(&b"2"[..]));
}

/// Regression (R2/R4): a crash right after the log opened a new segment can
/// leave that segment with its header and no record. The restarted site's
/// log ends in the previous segment, but it used to continue (and ask the
/// master for records) from the start of the empty one; the new master's
/// next record lay in the previous segment, so it could neither fetch nor
/// append it and never caught up.
#[test]
fn r2_a_restart_after_an_empty_new_segment_continues_after_the_last_record() {
    let cfg = Config {
        limits: small_segments(),
        ..Config::default()
    };
    let name = "r2_a_restart_after_an_empty_new_segment_continues_after_the_last_record";
    let mut sim = sim(name, 3, cfg);
    sim.start_group();
    let end = |sim: &Sim| sim.site(0).log_index().last().unwrap().end();
    let before = end(&sim);
    sim.write(0, "fill", "");
    let overhead = end(&sim).offset - before.offset;
    loop {
        let left = 2048 - end(&sim).offset;
        if (150..=250).contains(&left) {
            break;
        }
        assert!(left > 250, "overshot: {left} left");
        let v = (left - 200).saturating_sub(overhead).min(400) as usize;
        assert!(sim.write(0, "fill", &"f".repeat(v)).permanent);
    }
    sim.run_for(ms(50));
    sim.crash(0, CrashMode::Clean);
    // What the crash left: segment 2 created, its header written, no record.
    {
        use shoal_core::traits::Storage;
        let disk = sim.disk_mut(0).unwrap();
        disk.create_segment(2).unwrap();
        disk.append(2, &shoal_core::log::SegmentHeader { number: 2 }.encode())
            .unwrap();
        disk.sync().unwrap();
    }
    let m = sim.promote_best();
    sim.write(m, "new", "1");
    assert_eq!(
        sim.site(m).last_lsn().file,
        1,
        "the new master's records fit"
    );
    sim.restart(0, Start::Rejoin);
    sim.run_until_true(ms(5000), "the old master catches up", |s| s.converged());
    assert_eq!(sim.site(0).store().get("db", b"new"), Some(&b"1"[..]));
}

/// Regression (R7/E1): a member that lost its whole log (it knows its id,
/// from its metadata, but no member) restarts by joining through a helper.
/// When no master exists the helper can only say "not master"; the site
/// used to wait for a master for ever, and in a 2-site group (whose
/// election needs both votes) none could ever be elected. A known member
/// now takes the membership from the helper's answer and starts as a
/// client, so it can vote.
#[test]
fn r7_a_member_that_lost_its_log_rejoins_without_a_master() {
    let mut cfg = Config::default();
    cfg.timeouts.heartbeat_send = ms(50);
    cfg.timeouts.heartbeat_monitor = ms(200);
    cfg.timeouts.election = ms(300);
    let mut c = SimConfig::new(
        "scenarios",
        "r7_a_member_that_lost_its_log_rejoins_without_a_master",
        2,
    );
    c.site = cfg; // elections on
    replay_hint_on_panic();
    let mut sim = Sim::new(c);
    sim.start_group();
    sim.write(0, "a", "1");
    sim.crash(0, CrashMode::Clean);
    {
        use shoal_core::traits::Storage;
        let disk = sim.disk_mut(0).unwrap();
        for seg in disk.segments().unwrap() {
            disk.remove_segment(seg).unwrap();
        }
        disk.sync().unwrap();
    }
    sim.restart(0, Start::Rejoin);
    assert_eq!(sim.site(0).id(), SiteId(1));
    sim.run_until_true(ms(10_000), "s1 is elected with s0's vote", |s| {
        s.master() == Some(1)
    });
    sim.converge(ms(20_000));
    assert_eq!(sim.site(0).store().get("db", b"a"), Some(&b"1"[..]));
}

/// Fixed in core/src/site/election.rs: a site whose disk kept only the start of the group's log knows
/// only the members written there, not even itself. Cut off from the
/// group, it counts nsites from that membership, needs no vote but its
/// own, and elects itself: a second master, of a newer generation than the
/// real one, which calls its commits permanent with no ack and, once the
/// partition heals, makes the whole group roll back to its short log.
/// Found by the randomized runs with elections (seed 60343 of 100,000).
/// A site that is not in its own membership should not stand (or count
/// votes) until its log has caught up with the group.
#[test]
fn e1_a_site_with_a_stale_membership_does_not_elect_itself() {
    let mut cfg = Config::default();
    cfg.timeouts.heartbeat_send = ms(50);
    cfg.timeouts.heartbeat_monitor = ms(200);
    cfg.timeouts.election = ms(300);
    let mut c = SimConfig::new(
        "scenarios",
        "e1_a_site_with_a_stale_membership_does_not_elect_itself",
        5,
    );
    c.site = cfg; // elections on
    replay_hint_on_panic();
    let mut sim = Sim::new(c);
    sim.start_group();
    sim.write(0, "a", "1");
    sim.crash(4, CrashMode::Clean);
    // What reached s4's disk: the first two records (the new generation and
    // site 1's membership).
    let second = sim.site(0).log_index()[1];
    {
        use shoal_core::traits::Storage;
        let disk = sim.disk_mut(4).unwrap();
        disk.truncate(second.lsn.file, second.end().offset as u64)
            .unwrap();
        disk.sync().unwrap();
    }
    sim.isolate(4);
    sim.restart(4, Start::Rejoin);
    sim.run_for(ms(3000));
    assert_ne!(
        sim.site(4).role(),
        Role::Master,
        "a cut-off site that does not know the group elected itself"
    );
}

/// Regression (R7/E1): in a 2-site group, a site whose disk kept only the
/// start of the log (it knows site 1, not itself) may not vote until it has
/// caught up, and the other site cannot win without its vote: nobody could
/// ever be master. Joining through the other site, it now takes the
/// membership from the "not master" answer (which lists it), so it votes.
#[test]
fn r7_a_member_missing_from_its_own_membership_rejoins_without_a_master() {
    let mut cfg = Config::default();
    cfg.timeouts.heartbeat_send = ms(50);
    cfg.timeouts.heartbeat_monitor = ms(200);
    cfg.timeouts.election = ms(300);
    let mut c = SimConfig::new(
        "scenarios",
        "r7_a_member_missing_from_its_own_membership_rejoins_without_a_master",
        2,
    );
    c.site = cfg; // elections on
    replay_hint_on_panic();
    let mut sim = Sim::new(c);
    sim.start_group();
    sim.write(0, "a", "1");
    sim.crash(1, CrashMode::Clean);
    let second = sim.site(0).log_index()[1];
    {
        use shoal_core::traits::Storage;
        let disk = sim.disk_mut(1).unwrap();
        disk.truncate(second.lsn.file, second.end().offset as u64)
            .unwrap();
        disk.sync().unwrap();
    }
    sim.crash(0, CrashMode::Clean);
    sim.restart(0, Start::Client);
    sim.restart(1, Start::Join("s0".into()));
    sim.run_until_true(ms(10_000), "a master is elected", |s| s.master().is_some());
    sim.converge(ms(20_000));
    assert_eq!(sim.site(1).store().get("db", b"a"), Some(&b"1"[..]));
}

/// Regression (host contract): a site that is joining (idle) and hears a
/// VOTE1 may not stand (it is missing from its own membership), and asks
/// to look for a master; the deadline for that is only served to clients,
/// so an idle site reported it from poll_timeout for ever and a host
/// calling handle_timeout at each deadline spun without time advancing.
#[test]
fn r7_an_idle_site_reports_no_deadline_it_does_not_serve() {
    let mut cfg = Config::default();
    cfg.timeouts.heartbeat_send = ms(50);
    cfg.timeouts.heartbeat_monitor = ms(200);
    cfg.timeouts.election = ms(300);
    let mut c = SimConfig::new(
        "scenarios",
        "r7_an_idle_site_reports_no_deadline_it_does_not_serve",
        2,
    );
    c.site = cfg; // elections on
    replay_hint_on_panic();
    let mut sim = Sim::new(c);
    sim.start_group();
    sim.write(0, "a", "1");
    sim.crash(1, CrashMode::Clean);
    let second = sim.site(0).log_index()[1];
    {
        use shoal_core::traits::Storage;
        let disk = sim.disk_mut(1).unwrap();
        disk.truncate(second.lsn.file, second.end().offset as u64)
            .unwrap();
        disk.sync().unwrap();
    }
    sim.crash(0, CrashMode::Clean);
    // s1's join requests are lost for a while; s0's votes reach it.
    let mut lossy = sim.net_ref().default_link();
    lossy.loss_ppm = 1_000_000;
    sim.net().set_link(1, 0, lossy);
    sim.restart(0, Start::Client);
    sim.restart(1, Start::Join("s0".into()));
    sim.run_for(ms(1500));
    sim.net().reset_links();
    sim.run_until_true(ms(10_000), "a master is elected", |s| s.master().is_some());
    sim.converge(ms(20_000));
}

/// R4/R5: a commit without sync is acknowledged by clients once written to
/// their operating system, so under QUORUM it becomes permanent without
/// waiting for any disk; a sync commit waits for the client's flush. Every
/// site's process then crashes (the operating system keeps what was
/// written out) and the no-sync commit is still there.
#[test]
fn r4_no_sync_commit_is_acked_without_waiting_for_a_disk() {
    let mut c = SimConfig::new(
        "scenarios",
        "r4_no_sync_commit_is_acked_without_waiting_for_a_disk",
        3,
    );
    c.site = operator_mode(Config::default());
    c.fsync_min = ms(20);
    c.fsync_max = ms(20);
    replay_hint_on_panic();
    let mut sim = Sim::new(c);
    sim.start_group();
    // Let the flushes of the joins finish.
    sim.run_for(ms(100));
    let t0 = sim.now();
    let o = sim.write_with(0, "fast", "1", Durability::NoSync);
    let no_sync_took = sim.now().0 - t0.0;
    assert!(o.permanent, "{o:?}");
    assert!(
        no_sync_took < 20_000,
        "a no-sync commit waited {no_sync_took} us: as long as a disk flush"
    );
    let t1 = sim.now();
    let o = sim.write_with(0, "slow", "1", Durability::Sync);
    let sync_took = sim.now().0 - t1.0;
    assert!(o.permanent && o.flushed, "{o:?}");
    assert!(
        sync_took >= 20_000,
        "a sync commit was answered after {sync_took} us, before any flush could end"
    );
    let o = sim.write_with(0, "after", "2", Durability::NoSync);
    assert!(o.permanent, "{o:?}");
    for i in 0..3 {
        sim.crash(i, CrashMode::Process);
    }
    for i in 0..3 {
        sim.restart(i, Start::Client);
    }
    sim.converge(ms(20_000));
    for i in 0..3 {
        assert_eq!(
            sim.site(i).store().get("db", b"after"),
            Some(&b"2"[..]),
            "s{i}"
        );
        assert_eq!(
            sim.site(i).store().get("db", b"fast"),
            Some(&b"1"[..]),
            "s{i}"
        );
    }
}

/// W1: writes made on clients are forwarded to the master; the master is
/// killed while some are in flight; the sites elect a new master and the
/// clients forward to it. Every forwarded write answered permanent is on
/// every site at the end (the checker also holds it after every step),
/// and each write in flight at the crash is answered: committed, or an
/// error that does not claim a commit.
#[test]
fn w1_forwarded_writes_survive_a_master_crash() {
    let mut cfg = Config {
        forward_writes: true,
        ..Config::default()
    };
    cfg.timeouts.heartbeat_send = ms(50);
    cfg.timeouts.heartbeat_monitor = ms(200);
    cfg.timeouts.election = ms(300);
    let mut c = SimConfig::new("scenarios", "w1_forwarded_writes_survive_a_master_crash", 5);
    c.site = cfg; // elections on
    replay_hint_on_panic();
    let mut sim = Sim::new(c);
    sim.start_group();
    let mut permanent: Vec<String> = Vec::new();
    for k in 0..10 {
        let key = format!("before{k}");
        let client = 1 + k % 4;
        let id = forward_put(&mut sim, client, &key);
        let o = sim.wait_commit(client, id, ms(5_000));
        assert!(o.permanent, "{key}: {o:?}");
        // Read-your-writes on the client that forwarded it.
        assert_eq!(
            sim.site(client).store().get("db", key.as_bytes()),
            Some(&b"v"[..])
        );
        permanent.push(key);
    }
    assert_eq!(sim.site(0).stats().forwards_served, 10);
    // Writes in flight when the master dies.
    let mut in_flight = Vec::new();
    for k in 0..4 {
        let id = forward_put(&mut sim, 1 + k, &format!("flight{k}"));
        in_flight.push((1 + k, id));
    }
    sim.crash(0, CrashMode::Clean);
    sim.run_until_true(ms(10_000), "the others elect a master", |s| {
        s.master().is_some_and(|m| m != 0)
    });
    sim.run_until_true(ms(6_000), "every write in flight is answered", |s| {
        in_flight.iter().all(|&(i, id)| {
            s.answers(i)
                .iter()
                .any(|(_, _, a)| matches!(a, Answer::Commit { id: x, .. } if *x == id))
        })
    });
    let m = sim.master().unwrap();
    // The clients forward to the new master.
    for client in (1..5).filter(|&i| i != m) {
        let key = format!("after{client}");
        let id = forward_put(&mut sim, client, &key);
        let o = sim.wait_commit(client, id, ms(5_000));
        assert!(o.permanent, "{key}: {o:?}");
        permanent.push(key);
    }
    sim.restart(0, Start::Rejoin);
    sim.converge(ms(20_000));
    for i in 0..5 {
        for key in &permanent {
            assert_eq!(
                sim.site(i).store().get("db", key.as_bytes()),
                Some(&b"v"[..]),
                "s{i} lacks {key}"
            );
        }
    }
}

/// Small segments archived right after each checkpoint (every 50 ms), and
/// answers of 1 KB, so a store of a few KB travels in many pages (S6).
fn archiving() -> Config {
    let mut cfg = Config {
        log_retention_segments: Some(0),
        ..Config::default()
    };
    cfg.timeouts.checkpoint_delay = ms(50);
    cfg.limits = small_segments();
    cfg.limits.max_answer_bytes = 1024;
    cfg
}

/// Site `c` crashes (`mode`); the group writes on until the master has
/// archived the log `c` stopped at.
fn fall_behind_archived_log(sim: &mut Sim, c: usize, mode: CrashMode) {
    let last = sim.site(c).last_lsn();
    sim.crash(c, mode);
    let m = sim.master().expect("a master");
    for k in 0..60 {
        sim.write(m, &format!("k{k:03}"), &"v".repeat(150));
        sim.run_for(ms(5));
    }
    sim.run_for(ms(200));
    let first = sim.site(m).log_index()[0].lsn;
    assert!(
        first > last,
        "the master archived the log s{c} stopped at ({first:?} > {last:?})"
    );
}

/// Events site `i` raised from time `t` on.
fn events_since(sim: &Sim, i: usize, t: shoal_core::Instant) -> Vec<Event> {
    sim.events(i)
        .iter()
        .filter(|(at, _)| *at >= t)
        .map(|(_, e)| e.clone())
        .collect()
}

/// S6: a client crashes, the group writes on and archives; back, it has no
/// overlap with the master's log and is initialised from the master's
/// snapshot: INIT_DONE, then STARTUPDONE, and the group converges (every
/// invariant checked after every step, the final state reopened from
/// every disk).
#[test]
fn s6_a_client_back_after_the_group_archived_is_initialised() {
    let mut sim = sim(
        "s6_a_client_back_after_the_group_archived_is_initialised",
        3,
        archiving(),
    );
    sim.start_group();
    sim.write(0, "early", "1");
    fall_behind_archived_log(&mut sim, 2, CrashMode::Clean);
    let t = sim.now();
    sim.restart(2, Start::Rejoin);
    sim.run_until_true(ms(5_000), "s2 is initialised", |sim| {
        has_event(sim, 2, |e| *e == Event::InitDone)
    });
    let ev = events_since(&sim, 2, t);
    let init = ev.iter().position(|e| *e == Event::InitDone);
    let startup = ev.iter().position(|e| *e == Event::StartupDone);
    assert!(startup.is_none() || init < startup, "{ev:?}");
    assert!(!ev.contains(&Event::JoinFailure));
    sim.converge(ms(10_000));
    assert_eq!(sim.site(2).stats().inits_done, 1);
    assert!(sim.site(0).stats().inits_served >= 1);
    assert!(sim.site(0).stats().pages_sent >= 5, "many pages");
    assert_eq!(sim.site(2).store().get("db", b"early"), Some(&b"1"[..]));
    assert_eq!(
        sim.site(2).store().get("db", b"k059"),
        Some(&b"v".repeat(150)[..])
    );
}

/// Where a crash strikes an initialisation.
#[derive(Clone, Copy, Debug)]
enum InitPoint {
    /// Some pages in, not all: storage untouched yet.
    MidPages,
    /// The snapshot installed, the log from F not yet there.
    Installed,
}

/// Run until the initialisation of site `c` reaches `point`.
fn run_to(sim: &mut Sim, c: usize, point: InitPoint) {
    match point {
        InitPoint::MidPages => sim.run_until_true(ms(5_000), "pages are coming", |sim| {
            sim.site(c)
                .init_pages()
                .is_some_and(|(got, of)| got >= 1 && got < of)
        }),
        InitPoint::Installed => sim.run_until_true(ms(5_000), "the snapshot is installed", |sim| {
            sim.site(c).initializing()
        }),
    };
}

/// S6: a client crashes in the middle of its initialisation, in every
/// crash mode (torn and reordered writes included), while taking pages or
/// just after installing the snapshot. It reopens consistently (the old
/// state, or a flagged initialisation with its partial log removed),
/// initialises again, and the group converges.
#[test]
fn s6_a_client_crashing_mid_initialisation_reopens_consistently_and_finishes() {
    let name = "s6_a_client_crashing_mid_initialisation_reopens_consistently_and_finishes";
    for mode in [
        CrashMode::Process,
        CrashMode::Clean,
        CrashMode::Torn,
        CrashMode::Reordered,
    ] {
        for point in [InitPoint::MidPages, InitPoint::Installed] {
            let mut sim = sim(name, 3, archiving());
            sim.start_group();
            fall_behind_archived_log(&mut sim, 2, CrashMode::Clean);
            sim.restart(2, Start::Rejoin);
            run_to(&mut sim, 2, point);
            let old = (sim.site(2).last_lsn(), sim.site(2).store().digest());
            sim.crash(2, mode);
            sim.restart(2, Start::Rejoin);
            let s = sim.site(2);
            match point {
                // Nothing was replaced: the old state reopens.
                InitPoint::MidPages => {
                    assert!(!s.initializing(), "{mode:?} {point:?}");
                    assert_eq!((s.last_lsn(), s.store().digest()), old, "{mode:?}");
                }
                // The log from F stops short of S: removed, and flagged.
                InitPoint::Installed => {
                    assert!(s.initializing(), "{mode:?} {point:?}");
                    assert!(s.log_index().is_empty(), "{mode:?} {point:?}");
                    assert!(s.members().len() == 3, "{mode:?}: the group is known");
                }
            }
            let t = sim.now();
            sim.run_until_true(ms(5_000), "s2 is initialised after the crash", |sim| {
                events_since(sim, 2, t).contains(&Event::InitDone)
            });
            sim.converge(ms(10_000));
            assert_eq!(
                sim.site(2).store().get("db", b"k059"),
                Some(&b"v".repeat(150)[..]),
                "{mode:?} {point:?}"
            );
        }
    }
}

/// Put `key` = "v" on site `i` outside a transaction (forwarded by a
/// client, W1).
fn forward_put(sim: &mut Sim, i: usize, key: &str) -> shoal_core::site::RequestId {
    let op = Op::Put {
        db: "db",
        key: key.as_bytes(),
        value: b"v",
    };
    sim.forward_write(i, op, Durability::Sync)
        .unwrap_or_else(|e| panic!("write {key} on s{i} refused: {e}"))
}

/// S6: the master crashes while it initialises a client; the operator
/// promotes another site, and the new master serves the initialisation
/// from the start.
#[test]
fn s6_a_new_master_serves_an_initialisation_its_predecessor_began() {
    let name = "s6_a_new_master_serves_an_initialisation_its_predecessor_began";
    for point in [InitPoint::MidPages, InitPoint::Installed] {
        let mut sim = sim(name, 5, archiving());
        sim.start_group();
        fall_behind_archived_log(&mut sim, 4, CrashMode::Clean);
        sim.restart(4, Start::Rejoin);
        run_to(&mut sim, 4, point);
        sim.crash(0, CrashMode::Torn);
        let m = sim.promote_best();
        assert_ne!(m, 4, "an initialising site is never promoted");
        let archived = sim.site(m).log_index()[0].lsn.file > 1;
        let t = sim.now();
        sim.write(m, "after", "1");
        sim.converge(ms(20_000));
        assert_eq!(sim.site(4).store().get("db", b"after"), Some(&b"1"[..]));
        assert_eq!(
            sim.site(4).store().get("db", b"k059"),
            Some(&b"v".repeat(150)[..])
        );
        // Installed: only a new snapshot can mend the log. Mid-pages, the
        // site's old log is intact and the new master initialises it if it
        // archived too (else the site catches up from its log).
        if matches!(point, InitPoint::Installed) || archived {
            assert!(
                events_since(&sim, 4, t).contains(&Event::InitDone),
                "{point:?}"
            );
            assert!(sim.site(m).stats().inits_served >= 1, "{point:?}");
        }
    }
}

// ----- W2: message channels right after a join (seed 002) ----------------------------

/// s0 creates the group and s1 joins; every site answers channel requests
/// with its name. Returns once both are settled.
fn two_sites_answering(name: &str) -> Sim {
    let mut sim = sim(name, 3, Config::default());
    sim.act(0, "create_group", |s, now| s.create_group(now))
        .unwrap();
    sim.run_for(ms(20));
    sim.act(1, "join s0", |s, now| s.join(now, "s0"));
    sim.run_until_true(ms(5_000), "s1 joined and caught up", |s| {
        s.site(1).id().0 != 0 && s.site(1).last_lsn() == s.site(0).last_lsn()
    });
    for i in 0..3 {
        let name = format!("s{i}");
        sim.set_channel_reply(i, Some(name.as_bytes()));
    }
    sim
}

/// Seed 002 / W2: a site that has just joined sends a channel request to
/// a client that has not applied the membership record adding it yet (the
/// master's record to that client is slow). The client used to drop the
/// message as from an unknown site, and the request timed out although the
/// group was healthy; it now holds the message until it learns the sender,
/// and the request is answered within its timeout.
#[test]
fn w2_a_request_from_a_site_that_just_joined_is_answered() {
    let mut sim = two_sites_answering("w2_a_request_from_a_site_that_just_joined_is_answered");
    // The master's records to s1 take a second from now.
    let until = sim.now() + ms(1_000);
    sim.net().clog(0, 1, until);
    sim.act(2, "join s0", |s, now| s.join(now, "s0"));
    sim.run_until_true(ms(5_000), "s2 joined", |s| s.site(2).id().0 != 0);
    let s1 = sim.id(1);
    assert!(
        sim.site(1).members().get(sim.id(2)).is_none(),
        "s1 does not know s2 yet: the race this test is about"
    );
    let id = sim
        .channel_request(
            2,
            ChannelTarget::Site(s1),
            &[b"who are you?"],
            Some(ms(5_000)),
        )
        .expect("sent");
    let r = sim.wait_channel(2, id, ms(6_000));
    assert_eq!(r, Ok(b"s1".to_vec()), "s2's first request to s1");
    sim.converge(ms(10_000));
}

/// W2: a request to a member whose connection has not come up since this
/// site learned of it waits for the connection within its timeout; one
/// that never comes up ends with Unreachable (why), not a bare Timeout.
#[test]
fn w2_a_request_waits_for_a_new_members_connection_or_says_unreachable() {
    let mut sim =
        two_sites_answering("w2_a_request_waits_for_a_new_members_connection_or_says_unreachable");
    // s2 joins while its link to s1 is cut both ways: s1 learns of s2
    // through the log, but no connection between them comes up.
    sim.cut(1, 2);
    sim.cut(2, 1);
    sim.act(2, "join s0", |s, now| s.join(now, "s0"));
    let s2 = SiteId(3);
    sim.run_until_true(ms(5_000), "s1 learned of s2", |s| {
        s.site(1).members().get(s2).is_some()
    });
    let id = sim
        .channel_request(1, ChannelTarget::Site(s2), &[b"there?"], Some(ms(500)))
        .expect("sent");
    let r = sim.wait_channel(1, id, ms(1_000));
    assert_eq!(
        r,
        Err(ChannelRequestError::Send(ChannelSendError::Unreachable(s2))),
        "no connection to s2 within the request's timeout"
    );
    // A second request waits for the connection, which comes up in time.
    let id = sim
        .channel_request(
            1,
            ChannelTarget::Site(s2),
            &[b"there now?"],
            Some(ms(2_000)),
        )
        .expect("sent");
    sim.run_for(ms(300));
    assert_eq!(sim.channel_answer(1, id), None, "still waiting");
    sim.heal();
    let r = sim.wait_channel(1, id, ms(2_000));
    assert_eq!(
        r,
        Ok(b"s2".to_vec()),
        "delivered once the connection came up"
    );
}
