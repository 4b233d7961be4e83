//! Elections (E1-E6), duplicate masters (P1), rollback on rejoin (P2) and
//! master step-down (P3), over the instant test network. Each test names
//! the seed text or feature row it follows.

mod common;
use common::Net;
use shoal_core::config::Config;
use shoal_core::site::{Event, Role};
use std::time::Duration;

fn cfgs(n: usize) -> Vec<Config> {
    vec![Config::default(); n]
}

fn key(k: usize) -> String {
    format!("k{k}")
}

/// E1: the master dies; the clients elect the one with the newest log, the
/// generation grows, and every acknowledged commit is on the new master.
#[test]
fn e1_clients_elect_a_new_master_that_has_every_acknowledged_commit() {
    let mut net = Net::group(cfgs(3));
    let gen0 = net.site(0).generation();
    for k in 0..10 {
        assert!(net.commit(0, &key(k), "v").permanent);
    }
    net.crash(0);
    net.advance(Duration::from_secs(3));
    let masters = net.masters();
    assert_eq!(masters.len(), 1, "one new master: {masters:?}");
    let m = masters[0];
    assert!(net.site(m).generation() > gen0);
    assert!(net.events_of(m).contains(&Event::Elected));
    for k in 0..10 {
        assert_eq!(
            net.site(m).store().get("db", key(k).as_bytes()),
            Some(&b"v"[..])
        );
    }
    // It takes writes, and the other client follows it.
    assert!(net.commit(m, "after", "x").permanent);
    let other = 3 - m;
    assert_eq!(net.site(other).master(), Some(net.site(m).id()));
    // The old master comes back as a client and catches up.
    net.restart(0);
    net.advance(Duration::from_secs(1));
    assert_eq!(net.site(0).role(), Role::Client);
    assert_eq!(net.site(0).store().digest(), net.site(m).store().digest());
}

/// E2: a priority-0 site votes but never wins; with only priority-0 sites
/// left, no master is elected.
#[test]
fn e2_priority_zero_never_wins() {
    let mut c = cfgs(3);
    c[2].priority = 0;
    let mut net = Net::group(c);
    net.commit(0, "a", "1");
    net.crash(0);
    net.advance(Duration::from_secs(3));
    assert_eq!(net.masters(), vec![1]);
    net.crash(1);
    net.advance(Duration::from_secs(30));
    assert!(
        net.masters().is_empty(),
        "site 2 (priority 0) never becomes master"
    );
    assert!(net.events_of(2).contains(&Event::ElectionFailed));
}

/// Seed 003: 20 sites with nsites 30 — a site must reach 16 to win.
#[test]
fn e3_nsites_larger_than_the_group_needs_16_of_30() {
    let mut c = cfgs(20);
    for x in c.iter_mut() {
        x.nsites = Some(30);
    }
    let mut net = Net::group(c);
    net.commit(0, "a", "1");
    // Split 15 / 5 with the master on the small side, then the master
    // dies: 15 and 4 live sites — neither side reaches 16.
    let big: Vec<usize> = (1..16).collect();
    net.partition(&big);
    net.crash(0);
    net.advance(Duration::from_secs(5));
    assert!(net.masters().is_empty(), "15 of 30 cannot elect");
    // Heal: 19 >= 16 can.
    net.heal();
    net.advance(Duration::from_secs(25));
    assert_eq!(net.masters().len(), 1);
}

/// Seed 003: a 2-site group with nsites 2 on one site and 1 on the other:
/// only the one with nsites 1 can win when they are partitioned.
#[test]
fn e3_two_sites_with_nsites_2_and_1() {
    let mut c = cfgs(2);
    c[0].nsites = Some(2);
    c[1].nsites = Some(1);
    let mut net = Net::group(c);
    net.commit(0, "a", "1");
    // The master (nsites 2) is partitioned from site 1 (nsites 1).
    net.partition(&[0]);
    net.advance(Duration::from_secs(3));
    assert!(net.masters().contains(&1), "site 1 wins alone");
    // Reverse roles: site 1 crashes; site 0, alone, never wins.
    net.heal();
    net.advance(Duration::from_secs(3));
    let m = net.masters();
    assert_eq!(m, vec![1], "after healing one master remains");
    net.crash(1);
    net.advance(Duration::from_secs(30));
    assert!(
        net.masters().is_empty(),
        "site 0 with nsites 2 cannot win alone"
    );
}

/// E6 (seeds 003/004): in a 2-site group with 2SITE_STRICT on, the survivor
/// does not take over (the group is read-only); with it off, it does.
#[test]
fn e6_two_site_strict_on_and_off() {
    let mut net = Net::group(cfgs(2));
    net.commit(0, "a", "1");
    net.crash(0);
    net.advance(Duration::from_secs(30));
    assert!(net.masters().is_empty(), "strict: no master");
    assert_eq!(
        net.site(1).store().get("db", b"a"),
        Some(&b"1"[..]),
        "still readable"
    );

    let mut c = cfgs(2);
    for x in c.iter_mut() {
        x.two_site_strict = false;
    }
    let mut net = Net::group(c);
    net.commit(0, "a", "1");
    net.crash(0);
    net.advance(Duration::from_secs(3));
    assert_eq!(
        net.masters(),
        vec![1],
        "not strict: the survivor takes over"
    );
}

/// Seed 004: 3 sites all crash and reboot within the full-election timeout:
/// the election waits for all three (so the one with the newest log wins);
/// if only two reboot, they elect with a majority after the timeout.
#[test]
fn e5_full_election_after_a_whole_group_restart() {
    let mut c = cfgs(3);
    for x in c.iter_mut() {
        x.timeouts.full_election = Duration::from_secs(600);
    }
    let mut net = Net::group(c.clone());
    for k in 0..5 {
        net.commit(0, &key(k), "v");
    }
    for i in 0..3 {
        net.crash(i);
    }
    net.restart(1);
    net.restart(2);
    net.advance(Duration::from_secs(60));
    assert!(net.masters().is_empty(), "two of three wait for the third");
    net.restart(0);
    net.advance(Duration::from_secs(30));
    assert_eq!(net.masters().len(), 1, "all three present: elected");

    // Only two reboot: after the 10-minute timeout they elect.
    let mut net = Net::group(c);
    net.commit(0, "a", "1");
    for i in 0..3 {
        net.crash(i);
    }
    net.restart(1);
    net.restart(2);
    net.advance(Duration::from_secs(590));
    assert!(net.masters().is_empty());
    net.advance(Duration::from_secs(60));
    assert_eq!(
        net.masters().len(),
        1,
        "majority after the full-election timeout"
    );
}

/// E1: a site that crashed after voting cannot vote twice in the same egen.
#[test]
fn e1_the_vote_is_durable() {
    let mut net = Net::group(cfgs(3));
    net.commit(0, "a", "1");
    let egen_before = net.site(1).egen();
    net.crash(0);
    net.advance(Duration::from_secs(3));
    let egen = net.site(1).egen();
    assert!(egen > egen_before);
    // Site 2 restarts: its durable egen is at least the one it voted in,
    // so its next election uses a newer one.
    net.crash(2);
    net.restart(2);
    assert!(net.site(2).egen() >= egen);
}

/// P1 and P2 (seed 003): a 2-site group with 2SITE_STRICT off splits; both
/// sides have a master; on healing, DUPMASTER: one survives, and the other's
/// commits are rolled back and reported.
#[test]
fn p1_p2_duplicate_masters_resolve_and_roll_back() {
    let mut c = cfgs(2);
    for x in c.iter_mut() {
        x.two_site_strict = false;
    }
    let mut net = Net::group(c);
    net.commit(0, "base", "1");
    net.partition(&[0]);
    net.advance(Duration::from_secs(3));
    assert_eq!(
        net.masters(),
        vec![0, 1],
        "two masters during the partition"
    );
    // Site 1 (the newer generation) and site 0 each take writes.
    net.try_commit(1, "one", "x", Duration::from_millis(1500));
    net.try_commit(0, "zero", "y", Duration::from_millis(1500));
    // Healing reconnects the sites; each master announces itself on the new
    // connection, which reveals the duplicate.
    net.heal();
    net.advance(Duration::from_secs(5));
    assert!(
        (0..2).any(|i| net.events_of(i).contains(&Event::DupMaster)),
        "DUPMASTER reported"
    );
    let m = net.masters();
    assert_eq!(m.len(), 1, "one master after healing: {m:?}");
    let loser = 1 - m[0];
    let digest = net.site(m[0]).store().digest();
    assert_eq!(net.site(loser).store().digest(), digest, "converged");
    assert!(
        net.events_of(loser)
            .iter()
            .any(|e| matches!(e, Event::Rollback(r) if !r.commits.is_empty())),
        "the loser's commits were rolled back and reported"
    );
}

/// P3: a master partitioned into a minority steps down before the
/// majority elects, so two writable masters do not coexist.
#[test]
fn p3_minority_master_steps_down() {
    let mut c = cfgs(5);
    for x in c.iter_mut() {
        x.timeouts.heartbeat_send = Duration::from_millis(200);
        x.timeouts.heartbeat_monitor = Duration::from_millis(1000);
    }
    let mut net = Net::group(c);
    for k in 0..5 {
        assert!(net.commit(0, &key(k), "v").permanent);
    }
    // The master and one client on one side, three on the other.
    net.partition(&[0, 1]);
    net.advance(Duration::from_secs(5));
    assert_eq!(
        net.site(0).role(),
        Role::Client,
        "minority master stepped down"
    );
    let m = net.masters();
    assert_eq!(m.len(), 1);
    assert!(m[0] >= 2, "the majority side elected: {m:?}");
    assert!(net.site(0).stats().step_downs >= 1);
    net.heal();
    net.advance(Duration::from_secs(5));
    let digest = net.site(m[0]).store().digest();
    for i in 0..5 {
        assert_eq!(net.site(i).store().digest(), digest, "site {i} converged");
    }
}

/// A rollback rebuilds the membership from the log; what the site knows of
/// its links must survive it (a healed partition's sites stay connected).
#[test]
fn p2_rollback_keeps_connection_state() {
    let mut c = cfgs(2);
    for x in c.iter_mut() {
        x.two_site_strict = false;
    }
    let mut net = Net::group(c);
    net.commit(0, "base", "1");
    net.partition(&[0]);
    net.advance(Duration::from_secs(3));
    net.try_commit(0, "zero", "y", Duration::from_millis(1500));
    net.try_commit(1, "one", "x", Duration::from_millis(1500));
    net.heal();
    net.advance(Duration::from_secs(5));
    let loser = if net.site(0).role() == Role::Master {
        1
    } else {
        0
    };
    assert!(net
        .events_of(loser)
        .iter()
        .any(|e| matches!(e, Event::Rollback(_))));
    let other = net.site(1 - loser).id();
    assert!(
        net.site(loser)
            .members()
            .get(other)
            .is_some_and(|m| m.connected),
        "the site that rolled back still knows its link to the master is up"
    );
}

/// A site alone in its group becomes master again at once after a restart
/// (there is no master to wait for and no vote but its own).
#[test]
fn e4_a_lone_site_restarts_as_master_at_once() {
    let mut net = Net::group(cfgs(1));
    net.commit(0, "a", "1");
    net.crash(0);
    net.restart(0);
    net.advance(Duration::from_millis(1));
    assert_eq!(net.masters(), vec![0]);
}

/// E1: a site that crashed after casting its VOTE2 cannot vote again in
/// the same election generation: its vote is durable, and after a restart a
/// VOTE1 of that egen (even from a better candidate) gets no VOTE2.
#[test]
fn e1_a_site_that_voted_cannot_vote_twice_in_one_egen() {
    use shoal_core::wire::{encode_frame, Envelope, Flags, Message, Vote1};
    let mut net = Net::group(cfgs(3));
    net.commit(0, "a", "1");
    net.crash(0);
    net.advance(Duration::from_secs(3));
    let m = net.masters()[0];
    let voter = 3 - m;
    let egen = net.site(voter).egen();
    // The voter crashes and restarts: its vote in `egen` is on disk.
    net.crash(voter);
    let disk = net.disks[voter].take().unwrap();
    let mut site =
        shoal_core::site::Site::open(net.cfgs[voter].clone(), &format!("s{voter}"), disk, net.now)
            .unwrap();
    while site.poll_output().is_some() {}
    // A better candidate (higher LSN, top priority) asks for votes in the
    // same egen.
    let env = Envelope {
        from: shoal_core::SiteId(1),
        generation: site.generation(),
        egen,
        lsn: shoal_core::Lsn::new(9, 9999),
        flags: Flags::NONE,
    };
    let v = Vote1 {
        data_generation: site.generation(),
        last_lsn: shoal_core::Lsn::new(9, 9999),
        priority: u32::MAX,
        tiebreaker: u32::MAX,
        nsites: 3,
        nvotes: 2,
    };
    let mut frame = Vec::new();
    encode_frame(
        &env,
        &Message::Vote1(v),
        &mut frame,
        &net.cfgs[voter].limits,
    )
    .unwrap();
    let now = net.now;
    let _ = site.handle_frame(now, &frame);
    site.handle_timeout(now + Duration::from_secs(5));
    while let Some(o) = site.poll_output() {
        if let shoal_core::site::Output::Send { frame, .. } = o {
            let (e, msg) = shoal_core::wire::decode_frame(&frame, &net.cfgs[voter].limits).unwrap();
            assert!(
                !(matches!(msg, Message::Vote2 { .. }) && e.egen == egen),
                "a second VOTE2 in egen {egen:?}"
            );
        }
    }
}
