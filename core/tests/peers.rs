//! Client-to-client synchronisation (S3) through the Site state machine
//! over the instant test network: a client asks its configured peer client
//! for the log before the master; a peer that cannot serve says REREQUEST
//! and the client asks the master; a peer that does not answer is passed
//! over after the re-request back-off. The load-balanced resync of seed
//! 001 (S4) runs in the simulator (tests/tests/scenarios.rs).

mod common;

use common::Net;
use shoal_core::config::{AckPolicy, Config};
use std::time::Duration;

fn cfg() -> Config {
    // Acks are not what these tests look at: commits are answered at once.
    // The master keeps its role alone (no P3 step-down) so the tests can
    // write while clients are away.
    let mut c = Config {
        ack_policy: AckPolicy::None,
        step_down_without_majority: false,
        ..Config::default()
    };
    // Long enough that the master's heartbeats do not drive these tests.
    c.timeouts.heartbeat_send = Duration::from_secs(60);
    c.timeouts.heartbeat_monitor = Duration::from_secs(300);
    c
}

fn assert_converged(net: &Net) {
    let m = net.site(0);
    for i in 1..net.sites.len() {
        let s = net.site(i);
        assert_eq!(s.last_lsn(), m.last_lsn(), "s{i}'s log ends elsewhere");
        assert_eq!(
            s.store().digest(),
            m.store().digest(),
            "s{i}'s store differs"
        );
    }
}

/// S3: s2, restarted behind, fetches what it missed from its peer s1; the
/// master serves none of it.
#[test]
fn s3_a_restarted_client_catches_up_from_its_peer() {
    let mut net = Net::group(vec![cfg(); 3]);
    net.site_mut(2).set_peers(&["s1"]);
    net.crash(2);
    for k in 0..40 {
        net.commit(0, &format!("k{k}"), "v");
    }
    let master_served = net.site(0).stats().requests_served;
    let peer_served = net.site(1).stats().requests_served;
    net.restart_with(2, |s| s.set_peers(&["s1"]));
    net.advance(Duration::from_secs(1));
    assert_converged(&net);
    let s1 = net.site(1).stats();
    let s2 = net.site(2).stats();
    assert!(s1.requests_served > peer_served, "the peer served nothing");
    assert_eq!(
        s2.log_requests,
        s1.requests_served - peer_served,
        "a log request went elsewhere than the peer"
    );
    // The master answered only the restarted client's verification probe
    // (S1), which always goes to it.
    assert!(
        net.site(0).stats().requests_served <= master_served + 1,
        "the master served log requests a peer could serve"
    );
}

/// S3: the peer is as far behind as the requester: it answers REREQUEST,
/// and the requester asks the master at once.
#[test]
fn s3_a_peer_that_cannot_serve_sends_the_client_to_the_master() {
    let mut net = Net::group(vec![cfg(); 3]);
    net.crash(1);
    net.crash(2);
    for k in 0..20 {
        net.commit(0, &format!("k{k}"), "v");
    }
    // s1 back but cut off from the master: it stays behind.
    net.partition(&[1]);
    net.restart(1);
    let master_served = net.site(0).stats().requests_served;
    net.reconnect(1, 2);
    net.restart_with(2, |s| s.set_peers(&["s1"]));
    net.advance(Duration::from_millis(10));
    // Well within the first re-request back-off (40 ms): the REREQUEST,
    // not the timer, sent s2 to the master.
    assert_eq!(net.site(2).last_lsn(), net.site(0).last_lsn());
    assert!(
        net.site(1).stats().requests_refused >= 1,
        "the peer never refused"
    );
    assert!(net.site(0).stats().requests_served > master_served);
    net.heal();
    net.advance(Duration::from_secs(1));
    assert_converged(&net);
}

/// S3/R13: a peer that never answers (its frames are lost while the
/// connection looks up) costs one re-request back-off; then the request
/// goes to the master, marked REREQUEST.
#[test]
fn s3_a_silent_peer_is_passed_over_after_the_backoff() {
    let mut net = Net::group(vec![cfg(); 3]);
    net.crash(2);
    for k in 0..20 {
        net.commit(0, &format!("k{k}"), "v");
    }
    net.silent.push((2, 1));
    net.restart_with(2, |s| s.set_peers(&["s1"]));
    let behind = net.site(2).last_lsn();
    assert!(behind < net.site(0).last_lsn());
    net.advance(Duration::from_millis(200));
    assert_converged(&net);
    assert_eq!(net.site(1).stats().requests_served, 0);
    assert!(
        net.site(2).stats().log_requests >= 2,
        "the request to the silent peer was never made"
    );
}

/// A client with no usable peer (none configured, or the peer is the
/// master) asks the master, as before.
#[test]
fn s3_the_master_is_never_asked_as_a_peer() {
    let mut net = Net::group(vec![cfg(); 2]);
    net.crash(1);
    for k in 0..10 {
        net.commit(0, &format!("k{k}"), "v");
    }
    net.restart(1);
    net.site_mut(1).set_peers(&["s0"]);
    net.advance(Duration::from_millis(200));
    assert_converged(&net);
    assert_eq!(net.site(1).stats().requests_refused, 0);
}
