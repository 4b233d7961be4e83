//! The cases of seeds 002 (message channels), 003 and 004
//! (../shared/seeds/), each a script in the
//! simulator with elections on, so a reader can hold the text beside the
//! test (issue 4, item 4). Each runs with `SHOAL_SEED` (default 1); a
//! failure names the seed and how to replay it.

use shoal_core::config::{Config, Durability};
use shoal_core::log::Op;
use shoal_core::site::{Event, Role};
use shoal_tests::disk::CrashMode;
use shoal_tests::sim::{ms, Sim, SimConfig, Start};
use std::time::Duration;

/// Heartbeats on so failures are noticed in simulated milliseconds.
fn fast() -> Config {
    let mut c = Config::default();
    c.timeouts.heartbeat_send = ms(100);
    c.timeouts.heartbeat_monitor = ms(500);
    c.timeouts.election = ms(1000);
    c.timeouts.election_retry = ms(2000);
    c.timeouts.ack = ms(500);
    c.timeouts.connection_retry = ms(200);
    c
}

fn new_sim(name: &str, sites: usize, cfg: Config) -> Sim {
    let mut c = SimConfig::new("seeds", name, sites);
    c.site = cfg;
    Sim::new(c)
}

fn masters(sim: &Sim) -> Vec<usize> {
    sim.up()
        .into_iter()
        .filter(|&i| sim.site(i).role() == Role::Master)
        .collect()
}

fn has_event(sim: &Sim, i: usize, f: impl Fn(&Event) -> bool) -> bool {
    sim.events(i).iter().any(|(_, e)| f(e))
}

fn put(sim: &mut Sim, i: usize, key: &str) -> shoal_core::site::RequestId {
    let ops = [Op::Put {
        db: "db",
        key: key.as_bytes(),
        value: b"v",
    }];
    sim.commit(i, &ops, Durability::Sync)
        .unwrap_or_else(|e| sim.fail(&format!("commit {key} on s{i} refused: {e}")))
}

/// Seed 003, first example, without P3 (the reference system): the network
/// partitions with the master on the minority side; the majority elects a
/// second master; a master that hears the other reports DUPMASTER, both
/// step down, the winner brings everyone into conformance, and the
/// minority master's unacknowledged writes are rolled back.
#[test]
fn seed003_partition_two_masters_dupmaster_and_rollback() {
    let mut cfg = fast();
    cfg.step_down_without_majority = false;
    let mut sim = new_sim(
        "seed003_partition_two_masters_dupmaster_and_rollback",
        5,
        cfg,
    );
    sim.start_group();
    sim.write(0, "before", "1");
    sim.partition(&[0, 1], &[2, 3, 4]);
    sim.run_until_true(ms(10_000), "the majority elects", |s| {
        masters(s).iter().any(|&m| m >= 2)
    });
    assert!(
        masters(&sim).contains(&0),
        "the old master carries on: two masters"
    );
    // The minority master takes a write it cannot make permanent.
    let id = put(&mut sim, 0, "minority");
    let out = sim.wait_commit(0, id, ms(5_000));
    assert!(!out.permanent, "1 of the 2 acks QUORUM needs: {out:?}");
    let m = masters(&sim)
        .into_iter()
        .find(|&m| m >= 2)
        .expect("new master");
    assert!(sim.write(m, "majority", "2").permanent);
    sim.heal();
    sim.run_until_true(ms(10_000), "one master", |s| masters(s).len() == 1);
    assert!((0..5).any(|i| has_event(&sim, i, |e| *e == Event::DupMaster)));
    sim.converge(ms(30_000));
    for i in 0..5 {
        assert_eq!(sim.site(i).store().get("db", b"minority"), None, "s{i}");
        assert!(sim.site(i).store().get("db", b"majority").is_some(), "s{i}");
    }
    assert!(has_event(
        &sim,
        0,
        |e| matches!(e, Event::Rollback(r) if !r.commits.is_empty())
    ));
}

/// Seed 003's remedy, P3 on (shoal's default): the master that cannot reach
/// a majority steps down before the majority side elects, so two writable
/// masters never coexist.
#[test]
fn seed003_minority_master_steps_down_before_the_majority_elects() {
    let mut sim = new_sim(
        "seed003_minority_master_steps_down_before_the_majority_elects",
        5,
        fast(),
    );
    sim.start_group();
    sim.write(0, "before", "1");
    let cut = sim.now();
    sim.partition(&[0, 1], &[2, 3, 4]);
    sim.run_until_true(ms(10_000), "the majority elects", |s| {
        masters(s).iter().any(|&m| m >= 2)
    });
    let stepped = sim
        .events(0)
        .iter()
        .find(|(t, e)| *t >= cut && *e == Event::Client)
        .map(|(t, _)| *t)
        .unwrap_or_else(|| sim.fail("the minority master never stepped down"));
    let m = masters(&sim)
        .into_iter()
        .find(|&m| m >= 2)
        .expect("new master");
    let elected = sim
        .events(m)
        .iter()
        .find(|(t, e)| *t >= cut && *e == Event::Master)
        .map(|(t, _)| *t)
        .expect("elected");
    assert!(
        stepped < elected,
        "stepped down at {stepped:?}, new master at {elected:?}"
    );
    sim.heal();
    sim.converge(ms(30_000));
}

/// Seed 003, second example: a master and two clients, A (electable) and B
/// (priority 0). A is partitioned away and falls behind; the master commits
/// (these cannot reach QUORUM: PERM_FAILED); the master crashes for good;
/// the partition heals; A wins because B cannot, and B's newer commits are
/// unrolled and reported.
#[test]
fn seed003_electable_client_behind_wins_and_the_other_rolls_back() {
    let mut sim = new_sim(
        "seed003_electable_client_behind_wins_and_the_other_rolls_back",
        3,
        fast(),
    );
    let mut b = fast();
    b.priority = 0;
    sim.set_site_config(2, b);
    sim.start_group();
    sim.write(0, "shared", "1");
    sim.partition(&[1], &[0, 2]);
    let mut lost = Vec::new();
    for k in 0..3 {
        let id = put(&mut sim, 0, &format!("late{k}"));
        let out = sim.wait_commit(0, id, ms(5_000));
        assert!(
            !out.permanent,
            "only B, which is not electable, could ack: {out:?}"
        );
        lost.push(out.token);
    }
    assert!(has_event(&sim, 0, |e| matches!(e, Event::PermFailed(_))));
    sim.crash(0, CrashMode::Clean);
    sim.heal();
    sim.run_until_true(ms(20_000), "A is elected", |s| {
        s.site(1).role() == Role::Master
    });
    sim.run_for(ms(2_000));
    assert_eq!(
        sim.site(2).role(),
        Role::Client,
        "B (priority 0) never wins"
    );
    let rolled: Vec<_> = sim
        .events(2)
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Rollback(r) => Some(r.commits.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    for t in &lost {
        assert!(
            rolled.contains(t),
            "B reported {t:?} as rolled back: {rolled:?}"
        );
    }
    assert_eq!(sim.site(2).store().get("db", b"late0"), None);
    assert!(sim.site(2).store().get("db", b"shared").is_some());
}

/// Seed 003: a 2-site group with nsites 2 on one site and 1 on the other:
/// partitioned, only the site with nsites 1 can win.
#[test]
fn seed003_two_sites_nsites_2_and_1() {
    let mut s0 = fast();
    s0.nsites = Some(2);
    let mut s1 = fast();
    s1.nsites = Some(1);
    let mut sim = new_sim("seed003_two_sites_nsites_2_and_1", 2, s0);
    sim.set_site_config(1, s1);
    sim.start_group();
    sim.write(0, "a", "1");
    sim.partition(&[0], &[1]);
    sim.run_until_true(ms(10_000), "site 1 (nsites 1) is master", |s| {
        s.site(1).role() == Role::Master
    });
    sim.run_for(ms(5_000));
    assert_ne!(
        sim.site(0).role(),
        Role::Master,
        "site 0 (nsites 2) cannot stay or become master alone"
    );
    sim.heal();
    sim.converge(ms(30_000));
    assert_eq!(masters(&sim), vec![1]);
}

/// Seeds 003/004: 2SITE_STRICT on — after the master is lost the survivor
/// does not take over (the group is read-only); off — it does.
#[test]
fn seed003_004_two_site_strict_on_and_off() {
    let mut sim = new_sim("seed003_004_two_site_strict_on_and_off", 2, fast());
    sim.start_group();
    sim.write(0, "a", "1");
    sim.crash(0, CrashMode::Clean);
    sim.run_for(ms(10_000));
    assert_eq!(sim.site(1).role(), Role::Client, "strict: no master");
    assert!(
        sim.site(1).store().get("db", b"a").is_some(),
        "still readable"
    );
    sim.restart(0, Start::Rejoin);
    sim.converge(ms(30_000));

    let mut cfg = fast();
    cfg.two_site_strict = false;
    let mut sim = new_sim("seed003_004_two_site_strict_on_and_off", 2, cfg);
    sim.start_group();
    sim.write(0, "a", "1");
    sim.crash(0, CrashMode::Clean);
    sim.run_until_true(ms(10_000), "the survivor takes over", |s| {
        s.site(1).role() == Role::Master
    });
}

/// Seed 004: 3 sites all crash; with a full-election timeout of 10 minutes
/// the two that reboot first wait for the third; once all three are back
/// the election completes at once. If only two reboot, they elect with a
/// majority after the timeout.
#[test]
fn seed004_full_election_after_a_whole_group_restart() {
    let mut cfg = fast();
    cfg.timeouts.full_election = Duration::from_secs(600);
    let mut sim = new_sim(
        "seed004_full_election_after_a_whole_group_restart",
        3,
        cfg.clone(),
    );
    sim.start_group();
    for k in 0..5 {
        sim.write(0, &format!("k{k}"), "v");
    }
    for i in 0..3 {
        sim.crash(i, CrashMode::Clean);
    }
    sim.restart(1, Start::Client);
    sim.restart(2, Start::Client);
    sim.run_for(Duration::from_secs(120));
    assert!(masters(&sim).is_empty(), "two of three wait for the third");
    sim.restart(0, Start::Client);
    sim.run_until_true(ms(10_000), "elected once all three are back", |s| {
        masters(s).len() == 1
    });
    sim.converge(ms(30_000));

    let mut sim = new_sim("seed004_full_election_after_a_whole_group_restart", 3, cfg);
    sim.start_group();
    sim.write(0, "a", "1");
    for i in 0..3 {
        sim.crash(i, CrashMode::Clean);
    }
    sim.restart(1, Start::Client);
    sim.restart(2, Start::Client);
    sim.run_for(Duration::from_secs(590));
    assert!(
        masters(&sim).is_empty(),
        "still waiting inside the 10 minutes"
    );
    sim.run_until_true(
        Duration::from_secs(60),
        "a majority elects after the timeout",
        |s| masters(s).len() == 1,
    );
}

/// Seed 004: add a site as a client, let it catch up, shut the master down:
/// the new site (higher priority) wins. If it was not caught up, it does
/// not.
#[test]
fn seed004_new_site_wins_only_when_caught_up() {
    let mut sim = new_sim("seed004_new_site_wins_only_when_caught_up", 4, fast());
    let mut high = fast();
    high.priority = 200;
    sim.set_site_config(3, high.clone());
    sim.start_group();
    for k in 0..5 {
        sim.write(0, &format!("k{k}"), "v");
    }
    sim.run_for(ms(500));
    sim.crash(0, CrashMode::Clean);
    sim.run_until_true(ms(10_000), "the caught-up new site wins", |s| {
        s.site(3).role() == Role::Master
    });

    let mut sim = new_sim("seed004_new_site_wins_only_when_caught_up", 4, fast());
    sim.set_site_config(3, high);
    sim.start_group();
    // The new site hears the other clients but not the master.
    sim.partition(&[0], &[3]);
    for k in 0..5 {
        sim.write(0, &format!("k{k}"), "v");
    }
    assert!(sim.site(3).last_lsn() < sim.site(1).last_lsn());
    sim.crash(0, CrashMode::Clean);
    sim.run_until_true(ms(10_000), "a new master", |s| !masters(s).is_empty());
    assert_ne!(
        masters(&sim),
        vec![3],
        "the site that is behind does not win"
    );
    sim.heal();
    sim.converge(ms(30_000));
}

/// E2 and E1: priority 0 never wins; with equal data the winner is decided
/// by the tie-breakers, the same way every time for one seed.
#[test]
fn priority_zero_never_wins_and_ties_are_deterministic() {
    let winner = |seed_name: &str| {
        let mut sim = new_sim(seed_name, 3, fast());
        sim.start_group();
        sim.write(0, "a", "1");
        sim.run_for(ms(500));
        sim.crash(0, CrashMode::Clean);
        sim.run_until_true(ms(10_000), "a new master", |s| !masters(s).is_empty());
        masters(&sim)[0]
    };
    assert_eq!(winner("ties"), winner("ties"), "same seed, same winner");

    let mut zero = fast();
    zero.priority = 0;
    let mut sim = new_sim("priority_zero_never_wins", 3, zero);
    sim.set_site_config(0, fast());
    sim.start_group();
    sim.write(0, "a", "1");
    sim.crash(0, CrashMode::Clean);
    sim.run_for(ms(20_000));
    assert!(
        masters(&sim).is_empty(),
        "only priority-0 sites left: no master"
    );
    assert!(
        has_event(&sim, 1, |e| *e == Event::ElectionFailed)
            || has_event(&sim, 2, |e| *e == Event::ElectionFailed)
    );
}

/// Seed 003: 20 sites with nsites 30 — a site must reach 16 to win. Split
/// 15 / 5 with the master on the small side, then lose the master: 15 and 4
/// live sites, no master; healed, 19 elect.
#[test]
fn seed003_twenty_sites_with_nsites_30_need_16() {
    let mut cfg = fast();
    cfg.nsites = Some(30);
    let mut sim = new_sim("seed003_twenty_sites_with_nsites_30_need_16", 20, cfg);
    sim.start_group();
    sim.write(0, "a", "1");
    let big: Vec<usize> = (1..16).collect();
    let small: Vec<usize> = std::iter::once(0).chain(16..20).collect();
    sim.partition(&big, &small);
    sim.crash(0, CrashMode::Clean);
    sim.run_for(ms(15_000));
    assert!(masters(&sim).is_empty(), "15 of 30 cannot elect, nor can 4");
    sim.heal();
    sim.run_until_true(ms(30_000), "19 of 30 elect", |s| masters(s).len() == 1);
}

/// S4 (seed 001's example): five sites; the master E crashes and A is
/// elected; B synchronises with A at once; C and D (DELAYCLIENT) are later
/// told to `rep_sync` and fetch the log from their peer B; E, rebooted,
/// fetches from B too. A serves almost none of the catch-up traffic.
#[test]
fn s4_load_balanced_resync_through_a_peer() {
    let (e, a, b, c, d) = (0, 1, 2, 3, 4);
    let mut sim = new_sim("s4_load_balanced_resync_through_a_peer", 5, fast());
    let mut high = fast();
    high.priority = 200;
    sim.set_site_config(a, high);
    for x in [c, d, e] {
        sim.set_peers(x, &[b]);
    }
    sim.start_group();
    sim.run_for(ms(300));
    // C and D restart with DELAYCLIENT on.
    let mut delayed = fast();
    delayed.delay_client = true;
    for x in [c, d] {
        sim.set_site_config(x, delayed.clone());
        sim.crash(x, CrashMode::Process);
        sim.restart(x, Start::Client);
    }
    for k in 0..20 {
        sim.write(e, &format!("k{k}"), "before");
    }
    sim.run_for(ms(500));
    sim.crash(e, CrashMode::Clean);
    sim.run_until_true(ms(10_000), "A is elected", |s| masters(s) == vec![a]);
    // A new master: C and D wait (DELAYCLIENT) until told to sync.
    sim.run_for(ms(300));
    // With E down and C, D waiting, only B acks: these commits are not
    // permanent under QUORUM of five, which is not what this test is about.
    for k in 0..200 {
        sim.write(a, &format!("n{k}"), "after");
    }
    sim.run_for(ms(500));
    assert_eq!(
        sim.site(b).last_lsn(),
        sim.site(a).last_lsn(),
        "B synced with A"
    );
    let behind = sim.site(c).last_lsn();
    assert!(behind < sim.site(a).last_lsn(), "C waits for rep_sync");
    let a_before = sim.site(a).stats().records_served;
    for x in [c, d] {
        sim.act(x, "rep_sync", |s, now| s.rep_sync(now));
    }
    sim.restart(e, Start::Client);
    sim.converge(ms(30_000));
    let from_a = sim.site(a).stats().records_served - a_before;
    let from_b = sim.site(b).stats().records_served;
    assert!(
        sim.site(b).stats().peer_served >= 3,
        "B served {} requests",
        sim.site(b).stats().peer_served
    );
    assert!(
        from_a * 10 <= from_b,
        "A served {from_a} records and B {from_b}: A is not spared"
    );
    for x in [c, d, e] {
        assert_eq!(sim.site(x).store().get("db", b"n199"), Some(&b"after"[..]));
    }
}

/// Seed 002 (message channels, W2): every site has a dispatch that answers
/// with its own name; a client's channel to "the master" reaches the
/// master, and after the master crashes and the others elect a new one,
/// the same channel reaches the new master. A request in flight when the
/// master fails ends early (the connection broke or the master changed),
/// not at its timeout. The master sending to the master receives its own
/// message.
#[test]
fn seed002_master_channel_follows_the_master_across_an_election() {
    use shoal_core::site::{ChannelRequestError, ChannelTarget};
    let mut sim = new_sim(
        "seed002_master_channel_follows_the_master_across_an_election",
        3,
        fast(),
    );
    sim.start_group();
    for i in 0..3 {
        let name = format!("s{i}");
        sim.set_channel_reply(i, Some(name.as_bytes()));
    }
    let m = sim.master().unwrap_or_else(|| sim.fail("no master"));
    assert_eq!(m, 0);
    let id = sim
        .channel_request(2, ChannelTarget::Master, &[b"who", b"is master?"], None)
        .unwrap_or_else(|e| sim.fail(&format!("request refused: {e}")));
    let r = sim.wait_channel(2, id, ms(1_000));
    assert_eq!(r, Ok(b"s0".to_vec()), "the master answered");
    let got = sim
        .messages(0)
        .iter()
        .find(|(_, _, m)| m.to_master)
        .map(|(_, _, m)| m.clone())
        .unwrap_or_else(|| sim.fail("s0 did not get the message"));
    assert_eq!(got.parts, vec![b"who".to_vec(), b"is master?".to_vec()]);
    assert_eq!(got.from, sim.id(2));

    // A request waits at the master while it crashes: it ends once the
    // failure is noticed, well before its 30 s timeout.
    sim.set_channel_silent(0, true);
    let before = sim.now();
    let id = sim
        .channel_request(1, ChannelTarget::Master, &[b"in flight"], Some(ms(30_000)))
        .unwrap_or_else(|e| sim.fail(&format!("request refused: {e}")));
    sim.run_for(ms(20));
    sim.crash(0, CrashMode::Clean);
    let r = sim.wait_channel(1, id, ms(5_000));
    assert!(
        matches!(
            r,
            Err(ChannelRequestError::Disconnected(_) | ChannelRequestError::MasterChanged)
        ),
        "{r:?}"
    );
    assert!(sim.now().0 - before.0 < 5_000_000, "ended early");

    sim.run_until_true(ms(10_000), "a new master is elected", |s| {
        s.master().is_some_and(|m| m != 0)
            && (1..3).all(|i| s.site(i).master() == s.master().map(|m| s.id(m)))
    });
    let new = sim.master().expect("master");
    let id = sim
        .channel_request(2, ChannelTarget::Master, &[b"who is master now?"], None)
        .unwrap_or_else(|e| sim.fail(&format!("request refused: {e}")));
    let r = sim.wait_channel(2, id, ms(1_000));
    assert_eq!(
        r,
        Ok(format!("s{new}").into_bytes()),
        "the same channel reached the new master"
    );

    // The new master sends to the master: its own dispatch receives it,
    // with nothing on the network.
    let before = sim.messages(new).len();
    let to = sim
        .channel_send(new, ChannelTarget::Master, &[b"note to self"])
        .unwrap_or_else(|e| sim.fail(&format!("send refused: {e}")));
    assert_eq!(to, sim.id(new));
    let own = &sim.messages(new)[before..];
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].2.from, sim.id(new));
    assert_eq!(own[0].2.parts, vec![b"note to self".to_vec()]);
}
