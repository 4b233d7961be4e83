//! Catch-up of a client far behind (R2, R11, R13, issue 5): the master
//! answers a log request with BULK_LOG frames, each within the frame and
//! bulk limits, at most `max_answer_bytes` of records per request, with a
//! LOG_MORE ahead of them naming where the answer stops, so the client asks
//! for the next part before it has applied this one. A lost frame is
//! re-requested. Every frame the sites exchange is decoded and checked.

mod common;

use common::traced::{self, Traced};
use shoal_core::config::{Config, Durability, Limits};
use shoal_core::log::Op;
use shoal_core::mem::MemStorage;
use shoal_core::site::Site;
use shoal_core::wire::{decode_frame, Flags, Message, MessageKind, FRAME_OVERHEAD};
use shoal_core::Lsn;
use std::time::Duration;

/// One frame delivered: who sent it, to whom, what it was, and the kind of
/// frame whose handling produced it (None: a timeout or an application
/// call).
#[derive(Clone, Debug)]
struct Sent {
    from: usize,
    to: usize,
    kind: MessageKind,
    flags: Flags,
    len: usize,
    /// Record bytes it carries (LOG, BULK_LOG), and the LSNs.
    records: Vec<(Lsn, usize)>,
    /// BULK_LOG: bytes of entries.
    bulk: usize,
    /// LOG_MORE's `next`, LOG_REQ's `from`, ACK's LSN.
    lsn: Option<Lsn>,
    cause: Option<(usize, MessageKind, u64)>,
}

type Net = Traced<Sent>;

/// `n` sites over `cfg`, the group formed, every link up.
fn group(n: usize, cfg: Config) -> Net {
    Traced::group(vec![cfg; n], describe, false)
}

/// The record of one frame: what the catch-up checks look at.
fn describe(limits: &Limits, from: usize, to: usize, frame: &[u8], cause: traced::Cause) -> Sent {
    let (env, msg) = decode_frame(frame, limits).expect("every frame sent decodes");
    let mut records = vec![];
    let mut lsn = None;
    let mut bulk = 0;
    match &msg {
        Message::Log(e) => records.push((e.lsn, e.record.len())),
        Message::BulkLog(b) => {
            bulk = b.bytes.len();
            for e in b.entries() {
                let e = e.expect("entries decode");
                records.push((e.lsn, e.record.len()));
            }
        }
        Message::LogMore { next } => lsn = Some(*next),
        Message::LogReq { from, .. } => lsn = Some(*from),
        Message::Ack { lsn: l } => lsn = Some(*l),
        _ => {}
    }
    Sent {
        from,
        to,
        kind: msg.kind(),
        flags: env.flags,
        len: frame.len(),
        records,
        bulk,
        lsn,
        cause,
    }
}

impl Net {
    fn commit(&mut self, key: &str, value: &[u8]) {
        let now = self.now;
        let ops = [Op::Put {
            db: "db",
            key: key.as_bytes(),
            value,
        }];
        self.site(0)
            .commit(now, &ops, Durability::NoSync)
            .expect("commit");
    }

    /// Site `c` stops; `n` commits of `value_len` bytes are made without
    /// it; it restarts from its storage as a client. Returns the index of
    /// the first frame sent after the restart.
    fn fall_behind_and_restart(&mut self, c: usize, n: usize, value_len: usize) -> usize {
        let storage = self.fall_behind(c, n, value_len);
        self.restart(c, storage, &[])
    }

    /// Site `c` stops and `n` commits of `value_len` bytes are made
    /// without it; returns its storage.
    fn fall_behind(&mut self, c: usize, n: usize, value_len: usize) -> MemStorage {
        let storage = self.sites[c].take().expect("up").into_storage();
        self.down.push(c);
        let value = vec![7u8; value_len];
        for k in 0..n {
            self.commit(&format!("{k:016}"), &value);
            if k % 16 == 15 {
                self.run(&mut |_| true);
            }
        }
        self.run(&mut |_| true);
        self.advance(Duration::from_millis(10), &mut |_| true);
        storage
    }

    /// Site `c` restarts from `storage` as a client with its own
    /// configuration, asking `peers` for the log first (S3). Returns the
    /// index of the first frame sent after the restart.
    fn restart(&mut self, c: usize, storage: MemStorage, peers: &[&str]) -> usize {
        let now = self.now;
        let mut s =
            Site::open(self.cfgs[c].clone(), &format!("s{c}"), storage, now).expect("reopen");
        s.set_peers(peers);
        s.rep_start_client(now);
        self.sites[c] = Some(s);
        self.down.retain(|&d| d != c);
        let mark = self.sent.len();
        self.links(true);
        mark
    }

    fn caught_up(&self, c: usize) -> bool {
        let (m, s) = (
            self.sites[0].as_ref().unwrap(),
            self.sites[c].as_ref().unwrap(),
        );
        s.last_lsn() == m.last_lsn() && s.store().digest() == m.store().digest()
    }
}

/// The checks every catch-up must pass, for the frames sent from `mark`.
fn check_answers(net: &Net, mark: usize, c: usize) {
    let l = net.cfgs[0].limits;
    let bulk_cap = (l.max_bulk_bytes as usize).min(l.max_frame as usize - FRAME_OVERHEAD);
    let sent = &net.sent[mark..];
    for s in sent {
        assert!(
            s.len <= l.max_frame as usize,
            "frame within max_frame: {s:?}"
        );
        if s.kind == MessageKind::BulkLog {
            let entries: usize = s.records.iter().map(|(_, n)| n + 16).sum();
            assert!(
                entries <= bulk_cap + 16 * s.records.len(),
                "bulk within its cap: {s:?}"
            );
            assert!(
                s.len <= bulk_cap + FRAME_OVERHEAD,
                "bulk frame within its cap: {s:?}"
            );
        }
    }
    // Each LOG_REQ the master handled got at most max_answer_bytes of
    // records (a lone record may exceed it), with the LOG_MORE first.
    let mut answers = 0;
    let mut causes: Vec<u64> = sent
        .iter()
        .filter(|s| s.from == 0 && s.to == c)
        .filter_map(|s| s.cause.filter(|x| x.1 == MessageKind::LogReq).map(|x| x.2))
        .collect();
    causes.dedup();
    for id in causes {
        let answer: Vec<&Sent> = sent
            .iter()
            .filter(|s| s.from == 0 && s.to == c && s.cause.is_some_and(|x| x.2 == id))
            .collect();
        let records: Vec<(Lsn, usize)> = answer.iter().flat_map(|s| s.records.clone()).collect();
        let bytes: usize = records.iter().map(|r| r.1).sum();
        assert!(
            records.len() <= 1 || bytes <= l.max_answer_bytes as usize,
            "answer of {bytes} bytes within max_answer_bytes"
        );
        if let Some(more) = answer.iter().position(|s| s.kind == MessageKind::LogMore) {
            assert_eq!(more, 0, "LOG_MORE goes ahead of the records");
            let next = answer[0].lsn.unwrap();
            assert!(
                records.iter().all(|r| r.0 < next),
                "LOG_MORE names where the answer stops"
            );
        }
        answers += 1;
    }
    assert!(answers > 0, "the master answered log requests");
}

fn config(limits: Limits) -> Config {
    let mut cfg = Config {
        limits,
        log_retention_segments: None,
        ..Config::default()
    };
    cfg.timeouts.checkpoint_delay = Duration::from_secs(3600);
    cfg
}

#[test]
fn r11_a_far_behind_client_catches_up_through_bulk_frames() {
    let mut net = group(3, config(Limits::default()));
    let mark = net.fall_behind_and_restart(1, 20_000, 100);
    net.run(&mut |_| true);
    net.advance(Duration::from_millis(100), &mut |_| true);
    assert!(
        net.caught_up(1),
        "the client has the master's log and store"
    );
    check_answers(&net, mark, 1);
    let to_client: Vec<&Sent> = net.sent[mark..]
        .iter()
        .filter(|s| s.from == 0 && s.to == 1)
        .collect();
    let bulks = to_client
        .iter()
        .filter(|s| s.kind == MessageKind::BulkLog)
        .count();
    let logs = to_client
        .iter()
        .filter(|s| s.kind == MessageKind::Log)
        .count();
    let mores = to_client
        .iter()
        .filter(|s| s.kind == MessageKind::LogMore)
        .count();
    let records: usize = to_client.iter().map(|s| s.records.len()).sum();
    // ~20,000 records of ~156 bytes: about 3 MiB in answers of at most
    // 1 MiB, each one BULK_LOG frame.
    assert_eq!(logs, 0, "no record goes alone");
    assert!((3..=5).contains(&bulks), "{bulks} BULK_LOG frames");
    assert_eq!(mores, bulks - 1, "every answer but the last says LOG_MORE");
    assert!(
        (20_000..20_100).contains(&records),
        "each record once: {records}"
    );
    let reqs = net.sent[mark..]
        .iter()
        .filter(|s| s.from == 1 && s.kind == MessageKind::LogReq)
        .count();
    assert_eq!(reqs, bulks, "one request per answer, none repeated");
    assert!(
        net.sent[mark..]
            .iter()
            .all(|s| !s.flags.contains(Flags::REREQUEST)),
        "nothing was lost, so nothing was re-requested"
    );
}

#[test]
fn r11_device_limits_are_honoured_during_a_catch_up() {
    let mut net = group(3, config(Limits::device()));
    let mark = net.fall_behind_and_restart(2, 400, 100);
    net.run(&mut |_| true);
    net.advance(Duration::from_millis(100), &mut |_| true);
    assert!(net.caught_up(2));
    check_answers(&net, mark, 2);
    let to_client: Vec<&Sent> = net.sent[mark..]
        .iter()
        .filter(|s| s.from == 0 && s.to == 2)
        .collect();
    let bulks = to_client
        .iter()
        .filter(|s| s.kind == MessageKind::BulkLog)
        .count();
    let mores = to_client
        .iter()
        .filter(|s| s.kind == MessageKind::LogMore)
        .count();
    // 400 × ~156 bytes in answers of 8 KiB, two 4 KiB bulks each.
    assert!(mores >= 7, "{mores} LOG_MOREs");
    assert!(bulks >= 2 * mores, "{bulks} BULK_LOGs for {mores} answers");
}

#[test]
fn r11_a_record_too_big_for_a_bulk_goes_alone() {
    let limits = Limits {
        max_bulk_bytes: 1024,
        ..Limits::default()
    };
    let mut net = group(3, config(limits));
    let storage = net.sites[1].take().unwrap().into_storage();
    net.down.push(1);
    for k in 0..10 {
        let len = if k == 4 { 2000 } else { 100 };
        net.commit(&format!("k{k}"), &vec![1u8; len]);
        net.run(&mut |_| true);
    }
    let now = net.now;
    let mut s = Site::open(net.cfgs[0].clone(), "s1", storage, now).unwrap();
    s.rep_start_client(now);
    net.sites[1] = Some(s);
    net.down.clear();
    let mark = net.sent.len();
    net.links(true);
    net.run(&mut |_| true);
    assert!(net.caught_up(1));
    check_answers(&net, mark, 1);
    let to_client: Vec<&Sent> = net.sent[mark..]
        .iter()
        .filter(|s| s.from == 0 && s.to == 1)
        .collect();
    let lone: Vec<&&Sent> = to_client
        .iter()
        .filter(|s| s.kind == MessageKind::Log)
        .collect();
    assert_eq!(lone.len(), 1, "the big record alone: {to_client:?}");
    assert!(lone[0].records[0].1 > 2000 && lone[0].flags.contains(Flags::PERMANENT));
    assert!(
        to_client
            .iter()
            .filter(|s| s.kind == MessageKind::BulkLog)
            .count()
            >= 2
    );
}

#[test]
fn r13_a_lost_bulk_frame_is_re_requested() {
    let mut net = group(3, config(Limits::default()));
    let mark = net.fall_behind_and_restart(1, 20_000, 100);
    // The first BULK_LOG to the client is lost; the pipelined request for
    // the next part goes on, and its records wait as early records.
    let mut lost = 0;
    let mut drop_first = |s: &Sent| {
        if s.kind == MessageKind::BulkLog && s.to == 1 && lost == 0 {
            lost += 1;
            return false;
        }
        true
    };
    net.run(&mut drop_first);
    assert!(!net.caught_up(1), "a part is missing");
    net.advance(Duration::from_millis(500), &mut |_| true);
    assert!(net.caught_up(1), "the gap was re-requested and filled");
    let rereq: Vec<&Sent> = net.sent[mark..]
        .iter()
        .filter(|s| {
            s.from == 1 && s.kind == MessageKind::LogReq && s.flags.contains(Flags::REREQUEST)
        })
        .collect();
    assert!(!rereq.is_empty(), "a re-request after the back-off");
    check_answers(&net, mark, 1);
}

#[test]
fn r13_a_lost_log_more_is_covered_by_the_re_request() {
    let mut net = group(3, config(Limits::default()));
    let mark = net.fall_behind_and_restart(1, 20_000, 100);
    let mut lost = 0;
    let mut drop_first = |s: &Sent| {
        if s.kind == MessageKind::LogMore && lost == 0 {
            lost += 1;
            return false;
        }
        true
    };
    net.run(&mut drop_first);
    assert!(!net.caught_up(1), "the client does not know there is more");
    net.advance(Duration::from_millis(500), &mut |_| true);
    assert!(net.caught_up(1));
    check_answers(&net, mark, 1);
}

/// R8: encoding and writing a snapshot costs time in proportion to the
/// store, so a client catching up through many checkpoint records takes
/// none; the first checkpoint it applies once caught up gives one.
#[test]
fn r8_a_catching_up_client_snapshots_once_caught_up_not_at_every_checkpoint() {
    use shoal_core::log::RecordKind;
    use shoal_core::traits::Storage;
    let mut cfg = config(Limits::default());
    cfg.timeouts.checkpoint_delay = Duration::from_secs(1);
    let mut net = group(3, cfg);
    let storage = net.sites[1].take().unwrap().into_storage();
    net.down.push(1);
    for round in 0..5 {
        for k in 0..50 {
            net.commit(&format!("r{round}k{k}"), b"v");
            net.run(&mut |_| true);
        }
        net.advance(Duration::from_millis(1100), &mut |_| true);
    }
    let checkpoints: Vec<Lsn> = net.sites[0]
        .as_ref()
        .unwrap()
        .log_index()
        .iter()
        .filter(|e| e.kind == RecordKind::Checkpoint)
        .map(|e| e.lsn)
        .collect();
    assert!(
        checkpoints.len() >= 4,
        "the master checkpointed: {checkpoints:?}"
    );
    let now = net.now;
    let mut s = Site::open(net.cfgs[0].clone(), "s1", storage, now).unwrap();
    s.rep_start_client(now);
    net.sites[1] = Some(s);
    net.down.clear();
    net.links(true);
    net.run(&mut |_| true);
    assert!(net.caught_up(1));
    let snap = |net: &mut Net| {
        let bytes = net.site(1).storage_mut().read_snapshot().unwrap()?;
        Some(shoal_core::snapshot::decode(&bytes).unwrap().lsn)
    };
    assert_eq!(snap(&mut net), None, "no snapshot while catching up");
    // Time passes; the master's next checkpoints are snapshotted.
    for k in 0..2 {
        net.commit(&format!("later{k}"), b"v");
        net.advance(Duration::from_millis(1100), &mut |_| true);
    }
    let last = net.sites[0]
        .as_ref()
        .unwrap()
        .log_index()
        .iter()
        .rev()
        .find(|e| e.kind == RecordKind::Checkpoint)
        .unwrap()
        .lsn;
    assert!(last > *checkpoints.last().unwrap());
    assert_eq!(snap(&mut net), Some(last), "the checkpoints once caught up");
}

/// R5, issue 5: a client catching up through BULK_LOG frames asks for no
/// flush per message (a host would fsync each time); once caught up it
/// asks for one that covers the whole log, and acknowledges it.
#[test]
fn r5_a_catching_up_client_flushes_once_caught_up() {
    let mut net = group(3, config(Limits::default()));
    let mark = net.fall_behind_and_restart(1, 20_000, 100);
    let flushes_before = net.flushes.len();
    net.run(&mut |_| true);
    assert!(net.caught_up(1));
    let last = net.sites[0].as_ref().unwrap().last_lsn();
    let client: Vec<Lsn> = net.flushes[flushes_before..]
        .iter()
        .filter(|(i, _)| *i == 1)
        .map(|(_, l)| *l)
        .collect();
    assert_eq!(
        client,
        vec![last],
        "one flush, of the whole log, at the end"
    );
    assert_eq!(net.sites[1].as_ref().unwrap().flushed_lsn(), last);
    let acks: Vec<&Sent> = net.sent[mark..]
        .iter()
        .filter(|s| s.from == 1 && s.kind == MessageKind::Ack)
        .collect();
    // On reaching its target the client acks what was durable then (a
    // host completes the flush later); the flush brings the ack of all.
    assert!(acks.len() <= 2, "{acks:?}");
    assert_eq!(
        acks.last().unwrap().lsn,
        Some(last),
        "the whole log acked once durable"
    );
}

// ------------------------------------ answers sized to the requester (R11)

/// A master and a client with `Limits::default()` (1 MiB frames and
/// bulks), and s2 with `Limits::device()` (8 KiB frames, 4 KiB bulks):
/// a device in a group of servers.
fn servers_and_a_device() -> Net {
    let device = Limits::device();
    Traced::group(
        vec![
            config(Limits::default()),
            config(Limits::default()),
            config(device),
        ],
        describe,
        false,
    )
}

/// Every frame sent to the device from `mark` is one its limits take: within
/// its `max_frame`, bulks within its `max_bulk_bytes`, records within its
/// `max_record`. Returns the BULK_LOGs it got, by sender.
fn check_device_frames(net: &Net, mark: usize, device: usize) -> Vec<(usize, usize)> {
    let l = net.cfgs[device].limits;
    let mut bulks = vec![];
    for s in net.sent[mark..].iter().filter(|s| s.to == device) {
        assert!(
            s.len <= l.max_frame as usize,
            "frame above its max_frame: {s:?}"
        );
        assert!(
            s.records.iter().all(|r| r.1 <= l.max_record as usize + 16),
            "record above its max_record: {s:?}"
        );
        if s.kind == MessageKind::BulkLog {
            assert!(
                s.bulk <= l.max_bulk_bytes as usize,
                "bulk above its size: {s:?}"
            );
            bulks.push((s.from, s.bulk));
        }
    }
    bulks
}

/// R2, R11: a device client that fell behind a master with default limits
/// (no archive: plain log catch-up, no initialisation) catches up. Its
/// LOG_REQ says the bulks it takes, and the master cuts its BULK_LOGs to
/// them; before, the master packed bulks of up to 1 MiB, which the device
/// refused at decode and asked for again, forever (its log stayed at the
/// first records while the master's went on).
#[test]
fn r2_r11_a_device_client_behind_a_default_master_catches_up_in_bulks_it_takes() {
    let mut net = servers_and_a_device();
    let storage = net.fall_behind(2, 600, 100);
    let mark = net.restart(2, storage, &[]);
    net.run(&mut |_| true);
    net.advance(Duration::from_millis(200), &mut |_| true);
    assert!(
        net.caught_up(2),
        "the device has the master's log and store"
    );
    assert_eq!(net.s(2).stats().dropped_malformed, 0, "nothing refused");
    let bulks = check_device_frames(&net, mark, 2);
    // 600 records of ~150 bytes, in bulks of at most 4 KiB, all from the
    // master, most of them full (an answer's last bulk may be short).
    assert!(bulks.len() >= 20, "{} bulks", bulks.len());
    assert!(bulks.iter().all(|b| b.0 == 0));
    assert!(bulks.iter().filter(|b| b.1 > 3 * 1024).count() >= bulks.len() / 2);
    // Each answer within the answer size the device announced (R13: a
    // quarter of its incoming queue), not the master's own 1 MiB.
    let take = shoal_core::wire::max_answer_take(&Limits::device());
    let mut answers = std::collections::BTreeMap::<u64, usize>::new();
    for s in net.sent[mark..].iter().filter(|s| s.from == 0 && s.to == 2) {
        if let Some((2, MessageKind::LogReq, id)) = s.cause {
            *answers.entry(id).or_default() += s.records.iter().map(|r| r.1).sum::<usize>();
        }
    }
    assert!(answers.len() >= 10, "{} answers", answers.len());
    assert!(
        answers.values().all(|&n| n <= take),
        "answers above {take}: {answers:?}"
    );
    // It replicates as usual afterwards.
    net.commit("after", b"2");
    net.run(&mut |_| true);
    assert!(net.caught_up(2));
}

/// S3, R11: a client with default limits serving as the device's peer
/// cuts its answer to the device's bulk size too, as a master would: the
/// device catches up from the peer, and the master sends it no bulk.
/// Before, the peer packed bulks to its own 1 MiB limits, the device
/// refused them, and (the master doing the same) never caught up.
#[test]
fn s3_r11_a_peer_client_serves_a_device_client_in_bulks_it_takes() {
    let mut net = servers_and_a_device();
    let storage = net.fall_behind(2, 600, 100);
    let peer_served = net.s(1).stats().peer_served;
    let mark = net.restart(2, storage, &["s1"]);
    net.run(&mut |_| true);
    net.advance(Duration::from_millis(200), &mut |_| true);
    assert!(
        net.caught_up(2),
        "the device has the master's log and store"
    );
    assert_eq!(net.s(2).stats().dropped_malformed, 0, "nothing refused");
    assert!(
        net.s(1).stats().peer_served > peer_served,
        "the peer served"
    );
    let bulks = check_device_frames(&net, mark, 2);
    assert!(bulks.len() >= 20, "{} bulks", bulks.len());
    assert!(bulks.iter().all(|b| b.0 == 1), "every bulk from the peer");
    assert!(net.sent[mark..]
        .iter()
        .filter(|s| s.to == 2 && s.kind == MessageKind::BulkLog)
        .all(|s| s.flags.contains(Flags::ANYWHERE)));
}

/// R2, R11: a record the requester's limits cannot take at all (above its
/// `max_record`; here a 5000-byte value from a master whose limits allow
/// it, for a device whose records stop at 4 KiB) is never sent to it: the
/// master's answer stops before it and `unfit_records` counts each
/// request that meets it, instead of sending a frame the device refuses
/// at every re-request. The device takes everything before it; a group's
/// records must fit every member's limits (FORMAT.md, Log answers).
#[test]
fn r2_r11_a_record_above_the_requesters_max_record_is_counted_not_resent() {
    let mut net = servers_and_a_device();
    let storage = net.sites[2].take().unwrap().into_storage();
    net.down.push(2);
    for k in 0..20 {
        let value = if k == 10 {
            vec![1u8; 5000]
        } else {
            vec![2u8; 100]
        };
        net.commit(&format!("k{k:02}"), &value);
        net.run(&mut |_| true);
    }
    let mark = net.restart(2, storage, &[]);
    net.run(&mut |_| true);
    net.advance(Duration::from_secs(3), &mut |_| true);
    assert!(!net.caught_up(2));
    assert_eq!(net.s(2).store().get("db", b"k09"), Some(&[2u8; 100][..]));
    assert_eq!(net.s(2).store().get("db", b"k10"), None);
    check_device_frames(&net, mark, 2);
    assert_eq!(net.s(2).stats().dropped_malformed, 0, "nothing refused");
    // Counted at every request that met it (the device asks again with
    // its back-off), never sent.
    let counted = net.s(0).stats().unfit_records;
    assert!(counted >= 2, "{counted}");
    let asked = net.sent[mark..]
        .iter()
        .filter(|s| s.from == 2 && s.kind == MessageKind::LogReq)
        .count() as u64;
    assert!(counted <= asked, "{counted} of {asked} requests");
    // The other client, with the master's limits, has it.
    assert!(net.caught_up(1));
}

/// R11, R13: a LOG_REQ announcing a bulk or record size below
/// `MIN_BULK_BYTES` (0, 1, 63: absurd, or a division by zero), an answer
/// size below it, or a zero key, value or operation count limit, is
/// refused with a typed reason naming the field when it is decoded, and
/// nothing is sent in answer. One
/// announcing more than any frame holds is served in the answerer's own
/// size; one at the minimum (64 bytes, smaller than every record here)
/// is served every record alone as a LOG, without a panic.
#[test]
fn r11_absurd_bulk_sizes_are_refused_or_clamped_without_panic() {
    use shoal_core::site::Drop;
    use shoal_core::wire::{DecodeError, MIN_BULK_BYTES, PROTOCOL_VERSION};
    let mut net = group(3, config(Limits::default()));
    for k in 0..50 {
        net.commit(&format!("k{k:02}"), &[3u8; 100]);
        net.run(&mut |_| true);
    }
    let s1 = net.s(1);
    let env = common::envelope_of(s1);
    let req = |bulk_bytes, record_bytes| Message::LogReq {
        from: Lsn::ZERO,
        to: Lsn::ZERO,
        limits: shoal_core::wire::RequesterLimits {
            bulk_bytes,
            record_bytes,
            ..shoal_core::wire::RequesterLimits::of(&Limits::default())
        },
    };
    // Site 0 is handed `msg` from site 1 as raw bytes: it is refused
    // naming `what`, and nothing is sent in answer.
    let refused_unserved = |net: &mut Net, msg: &Message<'_>, what: &'static str, case: &str| {
        let mut f = PROTOCOL_VERSION.to_le_bytes().to_vec();
        f = postcard::to_extend(&env, f).unwrap();
        f = postcard::to_extend(msg, f).unwrap();
        let mark = net.sent.len();
        let now = net.now;
        assert_eq!(
            net.site(0).handle_frame(now, &f),
            Err(Drop::Malformed(DecodeError::BelowMinimum(what))),
            "{case}"
        );
        net.run(&mut |_| true);
        assert!(
            !net.sent[mark..].iter().any(|s| s.from == 0 && s.to == 1),
            "nothing served for {case}"
        );
    };
    // Built by hand, as a hostile peer could: the encoder refuses them.
    let (ok, min) = (1 << 20, MIN_BULK_BYTES);
    for (bulk, record, what) in [
        (0, ok, "bulk size"),
        (1, ok, "bulk size"),
        (min - 1, ok, "bulk size"),
        (ok, 0, "record size"),
        (ok, min - 1, "record size"),
    ] {
        let msg = req(bulk, record);
        let mut out = Vec::new();
        let l = net.cfgs[1].limits;
        assert!(shoal_core::wire::encode_frame(&env, &msg, &mut out, &l).is_err());
        refused_unserved(&mut net, &msg, what, &format!("{bulk} {record}"));
    }
    // The other limits a request announces (protocol version 6): an
    // answer size below 64 bytes, or a key, value or operation count
    // limit of zero, is refused the same way, naming the field.
    type Field = fn(&mut shoal_core::wire::RequesterLimits) -> &mut u32;
    let fields: [(&str, Field, u32); 5] = [
        ("answer size", |r| &mut r.answer_bytes, min - 1),
        ("page size", |r| &mut r.page_bytes, 0),
        ("key size", |r| &mut r.max_key, 0),
        ("value size", |r| &mut r.max_value, 0),
        ("operation count", |r| &mut r.max_txn_ops, 0),
    ];
    for (what, field, bad) in fields {
        let mut msg = req(ok, ok);
        if let Message::LogReq { limits, .. } = &mut msg {
            *field(limits) = bad;
        }
        refused_unserved(&mut net, &msg, what, &format!("{what} {bad}"));
    }
    let own = shoal_core::wire::max_bulk_bytes(&net.cfgs[0].limits);
    for (bulk, lone) in [(u32::MAX, false), (min, true)] {
        let mut f = Vec::new();
        let l = net.cfgs[1].limits;
        shoal_core::wire::encode_frame(&env, &req(bulk, u32::MAX), &mut f, &l).unwrap();
        let mark = net.sent.len();
        let now = net.now;
        assert_eq!(net.site(0).handle_frame(now, &f), Ok(()));
        net.run(&mut |_| true);
        let answer: Vec<&Sent> = net.sent[mark..]
            .iter()
            .filter(|s| s.from == 0 && s.to == 1)
            .collect();
        let records: usize = answer.iter().map(|s| s.records.len()).sum();
        assert!(records >= 50, "{bulk}: {records} records served");
        assert!(answer.iter().all(|s| s.bulk <= own.min(bulk as usize)));
        let logs = answer.iter().filter(|s| s.kind == MessageKind::Log).count();
        if lone {
            // Every commit alone; only the group's first, smallest records
            // (membership) fit a bulk of 64 bytes.
            assert!(logs >= 50, "{logs} of {records} records alone");
        } else {
            assert_eq!(logs, 0, "bulks of the master's own size");
        }
    }
    assert_eq!(net.s(0).stats().unfit_records, 0);
}

/// R2, R11: a record whose size the device takes but whose BODY breaks its
/// limits (a key above its `max_key`, a value above its `max_value`, a
/// commit of more operations than its `max_txn_ops`: each within its 4 KiB
/// `max_record`) is never sent to it: its LOG_REQ announces those limits
/// too (protocol version 6), and the master's answer stops before the
/// record and counts it in `unfit_records`, as it does a record above the
/// device's `max_record`. Before, the master sent it, the device refused
/// it at decode (`dropped_malformed`) and asked again, forever.
#[test]
fn r2_r11_a_record_whose_body_breaks_the_requesters_limits_is_counted_not_sent() {
    let device = Limits::device();
    let big_key = "k".repeat(device.max_key as usize + 1);
    let big_value = vec![1u8; device.max_value as usize + 1];
    let ops_over = device.max_txn_ops as usize + 1;
    for what in ["key", "value", "operation count"] {
        let mut net = servers_and_a_device();
        let storage = net.sites[2].take().unwrap().into_storage();
        net.down.push(2);
        let mut unfit = Lsn::ZERO;
        for k in 0..20 {
            let key = format!("k{k:02}");
            if k != 10 {
                net.commit(&key, &[2u8; 100]);
            } else {
                let keys: Vec<String> = (0..ops_over).map(|n| format!("{key}-{n}")).collect();
                let ops: Vec<Op<'_>> = match what {
                    "key" => vec![Op::Put {
                        db: "db",
                        key: big_key.as_bytes(),
                        value: b"v",
                    }],
                    "value" => vec![Op::Put {
                        db: "db",
                        key: key.as_bytes(),
                        value: &big_value,
                    }],
                    _ => keys
                        .iter()
                        .map(|k| Op::Put {
                            db: "db",
                            key: k.as_bytes(),
                            value: b"v",
                        })
                        .collect(),
                };
                let now = net.now;
                net.site(0)
                    .commit(now, &ops, Durability::NoSync)
                    .expect("the master's limits take it");
                unfit = net.s(0).last_lsn();
            }
            net.run(&mut |_| true);
        }
        let mark = net.restart(2, storage, &[]);
        net.run(&mut |_| true);
        net.advance(Duration::from_secs(3), &mut |_| true);
        assert!(!net.caught_up(2), "{what}");
        // Everything before the record, nothing from it on.
        assert_eq!(
            net.s(2).store().get("db", b"k09"),
            Some(&[2u8; 100][..]),
            "{what}"
        );
        assert_eq!(net.s(2).store().get("db", b"k11"), None, "{what}");
        check_device_frames(&net, mark, 2);
        let sent_to_device: Vec<Lsn> = net.sent[mark..]
            .iter()
            .filter(|s| s.to == 2)
            .flat_map(|s| s.records.iter().map(|r| r.0))
            .collect();
        assert!(
            !unfit.is_zero() && sent_to_device.iter().all(|l| *l < unfit),
            "{what}: the record and what follows it never sent"
        );
        assert_eq!(
            net.s(2).stats().dropped_malformed,
            0,
            "{what}: nothing refused"
        );
        // Counted at every request that met it (the device asks again
        // with its back-off).
        let counted = net.s(0).stats().unfit_records;
        assert!(counted >= 2, "{what}: {counted}");
        let asked = net.sent[mark..]
            .iter()
            .filter(|s| s.from == 2 && s.kind == MessageKind::LogReq)
            .count() as u64;
        assert!(counted <= asked, "{what}: {counted} of {asked} requests");
        // The other client, with the master's limits, has it.
        assert!(net.caught_up(1), "{what}");
    }
}
