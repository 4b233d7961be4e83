//! Master leases (R10), planned switchover (E7) and stale handles (R14).

mod common;
use common::Net;
use shoal_core::config::{Config, Durability};
use shoal_core::log::Op;
use shoal_core::site::{CommitError, Event, ReadError, Role};
use shoal_core::SiteId;
use std::time::Duration;

fn lease_cfgs(n: usize) -> Vec<Config> {
    let mut c = Config {
        leases: true,
        clock_skew_fast: 102,
        clock_skew_slow: 100,
        ..Config::default()
    };
    c.timeouts.lease = Duration::from_millis(1000);
    c.timeouts.heartbeat_send = Duration::from_millis(200);
    c.timeouts.heartbeat_monitor = Duration::from_millis(600);
    vec![c; n]
}

/// R10: a master cut off from its clients loses its lease and refuses reads
/// and writes before the majority elects a new master, so no two masters
/// ever accept writes at the same time.
#[test]
fn r10_isolated_master_refuses_reads_and_writes_before_a_new_master_exists() {
    let mut net = Net::group(lease_cfgs(3));
    net.advance(Duration::from_millis(300));
    assert!(net.site(0).lease_valid(net.now));
    assert!(net.commit(0, "a", "1").permanent);
    let now = net.now;
    assert_eq!(net.site(0).read(now, "db", b"a"), Ok(Some(&b"1"[..])));

    // Disable P3 so only the lease protects the old master.
    net.partition(&[0]);
    let mut old_master_writable_until = None;
    let mut new_master_from = None;
    for _ in 0..100 {
        net.advance(Duration::from_millis(50));
        let now = net.now;
        let old_ok = net.site(0).role() == Role::Master && net.site(0).lease_valid(now);
        if old_ok {
            old_master_writable_until = Some(now);
        }
        if new_master_from.is_none() && net.masters().iter().any(|&m| m != 0) {
            new_master_from = Some(now);
        }
    }
    let new_from = new_master_from.expect("the majority elected a new master");
    if let Some(until) = old_master_writable_until {
        assert!(
            until < new_from,
            "old lease ended ({until:?}) before the new master ({new_from:?})"
        );
    }
    // The old master, if it still thinks it is master, refuses both.
    let now = net.now;
    if net.site(0).role() == Role::Master {
        assert_eq!(
            net.site(0).read(now, "db", b"a"),
            Err(ReadError::LeaseExpired)
        );
        let ops = [Op::Put {
            db: "db",
            key: b"x",
            value: b"y",
        }];
        assert_eq!(
            net.site_mut(0).commit(now, &ops, Durability::Sync),
            Err(CommitError::LeaseExpired)
        );
    }
    net.heal();
    net.advance(Duration::from_secs(3));
    assert_eq!(net.masters().len(), 1);
}

/// R10: a client holding a lease grant does not vote until it expires.
#[test]
fn r10_no_vote_while_holding_a_grant() {
    let mut net = Net::group(lease_cfgs(3));
    net.advance(Duration::from_millis(300));
    let elections_before = net.site(1).stats().elections;
    net.crash(0);
    // Connection loss would fail over at once without leases; with a grant
    // outstanding the clients wait for it to end first.
    net.advance(Duration::from_millis(200));
    assert_eq!(
        net.site(1).stats().elections,
        elections_before,
        "no vote while the grant holds"
    );
    net.advance(Duration::from_secs(4));
    assert_eq!(net.masters().len(), 1, "elected once the grants ended");
}

/// E7: a planned switchover hands mastership to a chosen caught-up client.
#[test]
fn e7_transfer_mastership_to_a_chosen_site() {
    let mut net = Net::group(vec![Config::default(); 3]);
    for k in 0..10 {
        assert!(net.commit(0, &format!("k{k}"), "v").permanent);
    }
    let now = net.now;
    net.site_mut(0)
        .transfer_master(now, SiteId(3))
        .expect("transfer accepted");
    // Writes stop during the hand-over.
    let ops = [Op::Put {
        db: "db",
        key: b"x",
        value: b"y",
    }];
    assert_eq!(
        net.site_mut(0).commit(now, &ops, Durability::Sync),
        Err(CommitError::Unavailable)
    );
    net.run();
    net.advance(Duration::from_secs(3));
    assert_eq!(net.masters(), vec![2], "site 3 (index 2) is master");
    assert_eq!(net.site(0).role(), Role::Client);
    for k in 0..10 {
        assert!(net
            .site(2)
            .store()
            .get("db", format!("k{k}").as_bytes())
            .is_some());
    }
    assert!(net.commit(2, "after", "v").permanent);
}

/// E7 / seed 004: a new site added as a client and caught up wins the next
/// election when the master shuts down (higher priority); a site that is
/// not caught up does not.
#[test]
fn e7_new_high_priority_site_wins_only_when_caught_up() {
    let mut c = vec![Config::default(); 4];
    c[3].priority = 200;
    let mut net = Net::group(c);
    for k in 0..5 {
        net.commit(0, &format!("k{k}"), "v");
    }
    net.crash(0);
    net.advance(Duration::from_secs(3));
    assert_eq!(
        net.masters(),
        vec![3],
        "the caught-up, higher-priority site wins"
    );

    // Now a high-priority site that is behind: it hears the other clients
    // but not the master, so it misses the last commits, and loses.
    let mut c = vec![Config::default(); 4];
    c[3].priority = 200;
    let mut net = Net::group(c);
    net.partition(&[3]);
    net.reconnect(3, 1);
    net.reconnect(3, 2);
    for k in 0..5 {
        net.commit(0, &format!("k{k}"), "v");
    }
    assert!(net.site(3).last_lsn() < net.site(1).last_lsn());
    net.crash(0);
    net.advance(Duration::from_secs(3));
    let m = net.masters();
    assert_eq!(m.len(), 1);
    assert_ne!(m[0], 3, "the site that is behind does not win");
    net.advance(Duration::from_secs(1));
    assert_eq!(
        net.site(3).store().digest(),
        net.site(m[0]).store().digest()
    );
}

/// R14: after a rollback, a handle opened before it answers HANDLE_DEAD
/// until reopened.
#[test]
fn r14_handles_die_on_rollback() {
    let mut c = vec![Config::default(); 2];
    for x in c.iter_mut() {
        x.two_site_strict = false;
    }
    let mut net = Net::group(c);
    net.commit(0, "base", "1");
    net.partition(&[0]);
    net.advance(Duration::from_secs(3));
    net.try_commit(0, "zero", "y", Duration::from_millis(1500));
    net.try_commit(1, "one", "x", Duration::from_millis(1500));
    let h0 = net.site(0).open_handle();
    let h1 = net.site(1).open_handle();
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
    let now = net.now;
    let dead = if loser == 0 { h0 } else { h1 };
    let alive = if loser == 0 { h1 } else { h0 };
    assert_eq!(
        net.site(loser).read_handle(now, &dead, "db", b"base"),
        Err(ReadError::HandleDead)
    );
    let fresh = net.site(loser).open_handle();
    assert_eq!(
        net.site(loser).read_handle(now, &fresh, "db", b"base"),
        Ok(Some(&b"1"[..]))
    );
    assert!(net
        .site(1 - loser)
        .read_handle(now, &alive, "db", b"base")
        .is_ok());
}
