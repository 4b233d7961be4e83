//! Write forwarding (W1) through the Site state machine over the instant
//! test network: a client with `forward_writes` hands a single put or
//! delete to the master and answers once the master committed it and the
//! record is in the client's own log; transactions are refused; a master
//! with forwarding off answers DISABLED; a lost answer times out; a
//! duplicated frame commits once.

mod common;

use common::Net;
use shoal_core::config::{AckPolicy, Config, Durability};
use shoal_core::log::Op;
use shoal_core::site::{Answer, CommitError, CommitOutcome, Dest, Output, RequestId, Site};
use shoal_core::wire::{decode_frame, Flags, MessageKind};
use shoal_core::Limits;
use std::time::Duration;

fn cfg(forward: bool) -> Config {
    let mut c = Config {
        forward_writes: forward,
        step_down_without_majority: false,
        ..Config::default()
    };
    c.timeouts.heartbeat_send = Duration::from_secs(60);
    c.timeouts.heartbeat_monitor = Duration::from_secs(300);
    c
}

fn put<'a>(key: &'a str, value: &'a str) -> Op<'a> {
    Op::Put {
        db: "db",
        key: key.as_bytes(),
        value: value.as_bytes(),
    }
}

/// Start a write on site `i` and run the network until quiet.
fn write(net: &mut Net, i: usize, op: Op<'_>, d: Durability) -> Result<RequestId, CommitError> {
    let now = net.now;
    let r = net.site_mut(i).write(now, op, d);
    net.run();
    r
}

/// The answer to request `id` on site `i`, if it came.
fn answer(net: &Net, i: usize, id: RequestId) -> Option<Result<CommitOutcome, CommitError>> {
    net.answers.iter().find_map(|(s, a)| match a {
        Answer::Commit { id: x, result } if *s == i && *x == id => Some(*result),
        _ => None,
    })
}

fn value(s: &Site<shoal_core::mem::MemStorage>, key: &str) -> Option<Vec<u8>> {
    s.get("db", key.as_bytes()).unwrap().map(<[u8]>::to_vec)
}

/// W1: a put on a client is committed by the master, and the outcome says
/// what the master's commit achieved under QUORUM.
#[test]
fn w1_a_put_on_a_client_is_committed_by_the_master() {
    let mut c = cfg(true);
    c.ack_policy = AckPolicy::Quorum;
    let mut net = Net::group(vec![c; 3]);
    let before = net.site(0).last_lsn();
    let id = write(&mut net, 1, put("k", "from s1"), Durability::Sync).expect("forwarded");
    let o = answer(&net, 1, id).expect("answered").expect("committed");
    assert!(o.token.lsn > before, "the master's log did not grow");
    assert_eq!(net.site(0).last_lsn(), o.token.lsn);
    assert!(o.permanent, "QUORUM met with every site up");
    assert!(o.forwarded, "the outcome says the write was forwarded");
    assert_eq!(o.needed, 1, "QUORUM of 3 needs one ack besides the master");
    assert!(o.acks >= 1);
    for i in 0..3 {
        assert_eq!(
            value(net.site(i), "k").as_deref(),
            Some(&b"from s1"[..]),
            "s{i}"
        );
    }
    assert_eq!(net.site(1).stats().forwards_sent, 1);
    assert_eq!(net.site(0).stats().forwards_served, 1);
    // A delete goes the same way.
    let id = write(
        &mut net,
        2,
        Op::Delete {
            db: "db",
            key: b"k",
        },
        Durability::Sync,
    )
    .unwrap();
    answer(&net, 2, id).expect("answered").expect("committed");
    assert_eq!(value(net.site(0), "k"), None);
}

/// W1: the client answers only once the record is in its own log, so a
/// read right after the answer sees the write. Frames are delivered by
/// hand (QUORUM of two sites: the master needs the client's ack).
#[test]
fn w1_the_client_answers_once_the_write_reached_it() {
    let mut net = Net::group(vec![cfg(true); 2]);
    let now = net.now;
    let id = net
        .site_mut(1)
        .write(now, put("k", "v"), Durability::Sync)
        .unwrap();
    let to_master = sends(&mut net, 1);
    assert_eq!(kinds(&to_master), [MessageKind::ForwardWrite]);
    deliver(&mut net, 0, &to_master);
    let lsn = net.site(0).last_lsn();
    net.site_mut(0).handle_flushed(now, lsn);
    let from_master = sends(&mut net, 0);
    assert_eq!(
        kinds(&from_master),
        [MessageKind::Log],
        "no answer before the client acked"
    );
    deliver(&mut net, 1, &from_master);
    net.site_mut(1).handle_flushed(now, lsn);
    let acks = sends(&mut net, 1);
    assert_eq!(kinds(&acks), [MessageKind::Ack]);
    assert_eq!(
        answer_now(&mut net, 1, id),
        None,
        "answered before the master did"
    );
    deliver(&mut net, 0, &acks);
    let answers = sends(&mut net, 0);
    assert_eq!(kinds(&answers), [MessageKind::ForwardAnswer]);
    deliver(&mut net, 1, &answers);
    let o = answer_now(&mut net, 1, id)
        .expect("answered")
        .expect("committed");
    assert!(o.permanent && o.flushed, "{o:?}");
    assert_eq!((o.acks, o.needed), (1, 1));
    assert_eq!(value(net.site(1), "k").as_deref(), Some(&b"v"[..]));
}

/// W1: the master's answer arriving before its LOG does not answer the
/// application; the LOG does.
#[test]
fn w1_an_answer_that_overtakes_the_record_waits_for_it() {
    let mut c = cfg(true);
    c.ack_policy = AckPolicy::None;
    let mut net = Net::group(vec![c; 2]);
    let now = net.now;
    let id = net
        .site_mut(1)
        .write(now, put("k", "v"), Durability::Sync)
        .unwrap();
    let fw = sends(&mut net, 1);
    deliver(&mut net, 0, &fw);
    let lsn = net.site(0).last_lsn();
    net.site_mut(0).handle_flushed(now, lsn);
    let frames = sends(&mut net, 0);
    let (answers, logs): (Vec<_>, Vec<_>) = frames
        .into_iter()
        .partition(|f| kind(f) == MessageKind::ForwardAnswer);
    assert_eq!((answers.len(), kinds(&logs)), (1, vec![MessageKind::Log]));
    deliver(&mut net, 1, &answers);
    assert_eq!(
        answer_now(&mut net, 1, id),
        None,
        "answered before the write reached s1"
    );
    assert_eq!(value(net.site(1), "k"), None);
    deliver(&mut net, 1, &logs);
    let o = answer_now(&mut net, 1, id)
        .expect("answered")
        .expect("committed");
    assert_eq!(o.token.lsn, lsn);
    assert_eq!(value(net.site(1), "k").as_deref(), Some(&b"v"[..]));
}

/// W1: a transaction on a client is refused, with or without forwarding;
/// without forwarding a single write is refused too, naming the master.
#[test]
fn w1_transactions_are_never_forwarded() {
    let mut net = Net::group(vec![cfg(true), cfg(true), cfg(false)]);
    let now = net.now;
    let ops = [put("a", "1"), put("b", "2")];
    assert_eq!(
        net.site_mut(1).commit(now, &ops, Durability::Sync),
        Err(CommitError::NotForwardable)
    );
    let master = net.site(0).id();
    assert_eq!(
        net.site_mut(2).write(now, put("a", "1"), Durability::Sync),
        Err(CommitError::NotMaster(Some(master)))
    );
    assert!(CommitError::NotForwardable
        .to_string()
        .contains("transaction"));
    // On the master, `write` is a plain commit.
    let id = write(&mut net, 0, put("m", "1"), Durability::Sync).unwrap();
    let o = answer(&net, 0, id).expect("answered").expect("committed");
    assert!(!o.forwarded);
    assert_eq!(net.site(0).stats().forwards_served, 0);
}

/// W1: a master with forwarding off answers DISABLED; nothing is written.
#[test]
fn w1_a_master_without_forwarding_refuses() {
    let mut net = Net::group(vec![cfg(false), cfg(true)]);
    let before = net.site(0).last_lsn();
    let id = write(&mut net, 1, put("k", "v"), Durability::Sync).unwrap();
    assert_eq!(answer(&net, 1, id), Some(Err(CommitError::ForwardDisabled)));
    assert_eq!(net.site(0).last_lsn(), before);
    assert!(CommitError::ForwardDisabled
        .to_string()
        .contains("every site"));
}

/// W1: with the master unreachable, the write is answered as timed out
/// after the write-forward timeout, and it was not committed.
#[test]
fn w1_an_unanswered_forward_times_out() {
    let mut net = Net::group(vec![cfg(true); 3]);
    net.silent.push((1, 0));
    let before = net.site(0).last_lsn();
    let id = write(&mut net, 1, put("k", "v"), Durability::Sync).unwrap();
    net.advance(Duration::from_millis(4_900));
    assert_eq!(answer(&net, 1, id), None, "answered before the timeout");
    net.advance(Duration::from_millis(200));
    assert_eq!(answer(&net, 1, id), Some(Err(CommitError::ForwardTimeout)));
    assert_eq!(net.site(0).last_lsn(), before);
}

/// W1: a FORWARD_WRITE delivered twice is committed once.
#[test]
fn w1_a_duplicated_forward_commits_once() {
    let mut c = cfg(true);
    c.ack_policy = AckPolicy::None;
    let mut net = Net::group(vec![c; 2]);
    let now = net.now;
    let before = net.site(0).last_lsn();
    net.site_mut(1)
        .write(now, put("k", "v"), Durability::Sync)
        .unwrap();
    let frames = sends(&mut net, 1);
    assert_eq!(frames.len(), 1);
    net.site_mut(0).handle_frame(now, &frames[0]).unwrap();
    let again = net.site_mut(0).handle_frame(now, &frames[0]);
    assert!(again.is_err(), "the duplicate was taken");
    net.run();
    assert_eq!(net.site(0).stats().forwards_served, 1);
    assert_eq!(net.site(0).stats().commits, 1);
    assert!(net.site(0).last_lsn() > before);
    // The client's next request (a higher number) is taken.
    let id = write(&mut net, 1, put("k2", "v"), Durability::Sync).unwrap();
    answer(&net, 1, id).expect("answered").expect("committed");
    assert_eq!(net.site(0).stats().forwards_served, 2);
}

/// W1, R4: a write without sync is forwarded as NO_SYNC and shipped to
/// the clients as NO_SYNC.
#[test]
fn w1_a_no_sync_write_stays_no_sync_at_the_master() {
    let mut net = Net::group(vec![cfg(true); 3]);
    let now = net.now;
    net.site_mut(1)
        .write(now, put("k", "v"), Durability::NoSync)
        .unwrap();
    let frames = sends(&mut net, 1);
    let (env, _) = decode_frame(&frames[0], &Limits::default()).unwrap();
    assert!(env.flags.contains(Flags::NO_SYNC));
    net.site_mut(0).handle_frame(now, &frames[0]).unwrap();
    let logs: Vec<_> = sends(&mut net, 0)
        .into_iter()
        .filter(|f| kind(f) == MessageKind::Log)
        .collect();
    assert_eq!(logs.len(), 2, "shipped to both clients");
    for f in &logs {
        let (env, _) = decode_frame(f, &Limits::default()).unwrap();
        assert!(
            env.flags.contains(Flags::NO_SYNC),
            "shipped as a sync commit"
        );
    }
}

/// Take site `i`'s outputs: the frames it sends are returned, answers
/// and events go to the network's lists, flushes are left to the test.
fn sends(net: &mut Net, i: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(o) = net.site_mut(i).poll_output() {
        match o {
            Output::Send {
                to: Dest::Site(_),
                frame,
                ..
            } => out.push(frame),
            Output::Answer(a) => net.answers.push((i, a)),
            Output::Event(e) => net.events.push((i, e)),
            _ => {}
        }
    }
    out
}

fn deliver(net: &mut Net, i: usize, frames: &[Vec<u8>]) {
    let now = net.now;
    for f in frames {
        net.site_mut(i).handle_frame(now, f).expect("frame taken");
    }
}

fn kind(f: &[u8]) -> MessageKind {
    decode_frame(f, &Limits::default()).unwrap().1.kind()
}

fn kinds(fs: &[Vec<u8>]) -> Vec<MessageKind> {
    fs.iter().map(|f| kind(f)).collect()
}

/// The answer to `id` on site `i` after taking the site's outputs (its
/// sends are dropped).
fn answer_now(
    net: &mut Net,
    i: usize,
    id: RequestId,
) -> Option<Result<CommitOutcome, CommitError>> {
    sends(net, i);
    answer(net, i, id)
}
