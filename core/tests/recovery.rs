//! Crash recovery, the log writer and the log reader over `MemStorage`
//! (issue 2).
//!
//! A log of a few hundred mixed records over several small segments is
//! built once; then it is cut at every byte of its tail, bits are flipped
//! in its tail and headers, and segments are removed, renumbered or
//! followed by garbage. Each time `log::recover` must keep exactly the
//! longest valid prefix, computed here independently from the known
//! record boundaries, and a `LogWriter` must continue the log correctly.

use shoal_core::config::Limits;
use shoal_core::ids::{Generation, Instant, Lsn, SiteId};
use shoal_core::log::record::{encode_record, RecordBody};
use shoal_core::log::segment::{SegmentHeader, SEGMENT_HEADER_LEN};
use shoal_core::log::{
    recover, Checkpoint, LogError, LogReader, LogWriter, MemberAction, Membership, NewGeneration,
    Op, RecordError, Recovered,
};
use shoal_core::mem::MemStorage;
use shoal_core::traits::Storage;
use std::collections::BTreeMap;

const HDR: u32 = SEGMENT_HEADER_LEN as u32;

fn limits() -> Limits {
    let l = Limits {
        segment_size: 4096,
        max_record: 1024,
        ..Limits::device()
    };
    l.validate().expect("test limits are consistent");
    l
}

/// xorshift64*: a tiny seeded generator, so every run sees the same log.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// An owned record body, so a list of them can be kept and written again.
#[derive(Clone, Debug)]
enum Spec {
    Commit {
        txn_id: u64,
        timestamp: u64,
        ops: Vec<(String, Vec<u8>, Option<Vec<u8>>)>,
    },
    Checkpoint(Checkpoint),
    Membership {
        action: MemberAction,
        site: u32,
        address: String,
        flags: u8,
    },
    NewGeneration(NewGeneration),
}

impl Spec {
    fn with_body<R>(&self, f: impl FnOnce(&RecordBody<'_, '_>) -> R) -> R {
        match self {
            Spec::Commit {
                txn_id,
                timestamp,
                ops,
            } => {
                let ops: Vec<Op<'_>> = ops
                    .iter()
                    .map(|(db, key, value)| match value {
                        Some(value) => Op::Put { db, key, value },
                        None => Op::Delete { db, key },
                    })
                    .collect();
                f(&RecordBody::Commit {
                    txn_id: *txn_id,
                    timestamp: Instant(*timestamp),
                    ops: &ops,
                })
            }
            Spec::Checkpoint(c) => f(&RecordBody::Checkpoint(*c)),
            Spec::Membership {
                action,
                site,
                address,
                flags,
            } => f(&RecordBody::Membership(Membership {
                action: *action,
                site: SiteId(*site),
                address,
                flags: *flags,
            })),
            Spec::NewGeneration(g) => f(&RecordBody::NewGeneration(*g)),
        }
    }

    fn encode(&self, lsn: Lsn, generation: Generation) -> Vec<u8> {
        let mut out = Vec::new();
        self.with_body(|b| encode_record(lsn, generation, b, &mut out, &limits()))
            .expect("encodes");
        out
    }

    fn random(rng: &mut Rng, i: u64, generation: &mut u32, last: Lsn) -> Spec {
        match rng.below(20) {
            0 => Spec::Checkpoint(Checkpoint {
                lsn: last,
                timestamp: Instant(i * 1000),
            }),
            1 => Spec::Membership {
                action: [
                    MemberAction::Add,
                    MemberAction::Remove,
                    MemberAction::Update,
                ][rng.below(3) as usize],
                site: rng.below(70) as u32,
                address: format!("10.0.{}.{}:50{:02}", i % 256, rng.below(256), i % 100),
                flags: (rng.below(2)) as u8,
            },
            2 => {
                *generation += 1;
                Spec::NewGeneration(NewGeneration {
                    generation: Generation(*generation),
                    master: SiteId(rng.below(5) as u32 + 1),
                    timestamp: Instant(i * 1000 + 1),
                })
            }
            _ => {
                let n = rng.below(5) as usize;
                let mut budget = 700usize;
                let ops = (0..n)
                    .map(|_| {
                        let db = ["users", "orders", "sessions"][rng.below(3) as usize].to_string();
                        let klen = rng.below(24) as usize;
                        let key = rng.bytes(klen);
                        // Mostly small values, now and then a large one.
                        let want = match rng.below(10) {
                            0 => None,
                            1 => Some(100 + rng.below(300) as usize),
                            _ => Some(rng.below(40) as usize),
                        };
                        let value = want.map(|n| {
                            let n = n.min(budget);
                            budget -= n;
                            rng.bytes(n)
                        });
                        (db, key, value)
                    })
                    .collect();
                Spec::Commit {
                    txn_id: i,
                    timestamp: i * 1000 + rng.below(1000),
                    ops,
                }
            }
        }
    }
}

/// One record of the reference log: where it is and what it is.
#[derive(Clone, Debug)]
struct Rec {
    lsn: Lsn,
    len: u32,
    generation: Generation,
    bytes: Vec<u8>,
}

impl Rec {
    fn end(&self) -> u32 {
        self.lsn.offset + self.len
    }
}

/// The reference log: its records and its segments' bytes.
struct Log {
    recs: Vec<Rec>,
    segs: BTreeMap<u32, Vec<u8>>,
}

fn dump(s: &mut MemStorage) -> BTreeMap<u32, Vec<u8>> {
    let mut m = BTreeMap::new();
    for n in s.segments().unwrap() {
        m.insert(n, s.segment_mut(n).unwrap().clone());
    }
    m
}

fn storage_of(segs: &BTreeMap<u32, Vec<u8>>) -> MemStorage {
    let mut s = MemStorage::new(1 << 30);
    for (&n, bytes) in segs {
        s.create_segment(n).unwrap();
        s.append(n, bytes).unwrap();
    }
    s
}

/// Build the reference log with a `LogWriter`: `n` random records, then
/// more until the writer switches segment, then three more, so the last
/// segment is short and its header is in the tail.
fn build(n: u64, seed: u64) -> Log {
    let l = limits();
    let mut rng = Rng(seed);
    let mut s = MemStorage::new(1 << 30);
    let r = recover(&mut s, &l).unwrap();
    assert_eq!(r, Recovered::empty());
    let mut w = LogWriter::new(&r, l);
    let mut recs: Vec<Rec> = Vec::new();
    let mut generation = 1u32;
    let mut i = 0u64;
    let mut after_switch = None;
    loop {
        let spec = Spec::random(&mut rng, i, &mut generation, w.last_lsn());
        let g = Generation(generation);
        let expected_next = w.next_lsn();
        let lsn = spec.with_body(|b| w.append(&mut s, g, b)).expect("append");
        let bytes = spec.encode(lsn, g);
        // The writer stays in its segment unless the record would cross
        // segment_size, and then starts the next one.
        let fits = expected_next.offset as u64 + bytes.len() as u64 <= l.segment_size as u64;
        if fits || expected_next.offset == HDR {
            assert_eq!(lsn, expected_next);
        } else {
            assert_eq!(lsn, Lsn::new(expected_next.file + 1, HDR));
        }
        assert_eq!(w.last_lsn(), lsn);
        assert_eq!(w.last_generation(), g);
        assert_eq!(
            w.next_lsn(),
            Lsn::new(lsn.file, lsn.offset + bytes.len() as u32)
        );
        if let Some(prev) = recs.last() {
            if prev.lsn.file != lsn.file && i >= n && after_switch.is_none() {
                after_switch = Some(i);
            }
        }
        recs.push(Rec {
            lsn,
            len: bytes.len() as u32,
            generation: g,
            bytes,
        });
        i += 1;
        if after_switch.is_some_and(|at| i >= at + 4) {
            break;
        }
    }
    let segs = dump(&mut s);
    // The segments hold exactly the headers and records, back to back.
    let mut expect: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
    for r in &recs {
        let seg = expect
            .entry(r.lsn.file)
            .or_insert_with(|| SegmentHeader { number: r.lsn.file }.encode().to_vec());
        assert_eq!(seg.len() as u32, r.lsn.offset, "record at {:?}", r.lsn);
        seg.extend_from_slice(&r.bytes);
    }
    assert_eq!(segs, expect);
    assert!(segs.len() >= 5, "the log spans several segments");
    assert_eq!(*segs.keys().next().unwrap(), 1);
    Log { recs, segs }
}

/// What recovery must find when the log's bytes are good up to `pos` in
/// segment `seg` (and the bytes there are missing or bad), given the
/// damaged storage `damaged`.
struct Expect {
    records: u64,
    last: Lsn,
    last_generation: Generation,
    next: Lsn,
    segment_open: bool,
    segs: BTreeMap<u32, Vec<u8>>,
    truncated_bytes: u64,
    removed_segments: u32,
}

fn expect(log: &Log, seg: u32, pos: u32, damaged: &BTreeMap<u32, Vec<u8>>) -> Expect {
    let first = *log.segs.keys().next().unwrap();
    let keep_seg = pos >= HDR;
    let valid: Vec<&Rec> = log
        .recs
        .iter()
        .filter(|r| r.lsn.file >= first)
        .filter(|r| r.lsn.file < seg || (keep_seg && r.lsn.file == seg && r.end() <= pos))
        .collect();
    let mut segs = BTreeMap::new();
    for (&n, bytes) in &log.segs {
        if n < seg {
            segs.insert(n, bytes.clone());
        }
    }
    let (next, segment_open) = if keep_seg {
        let end = valid
            .last()
            .filter(|r| r.lsn.file == seg)
            .map_or(HDR, |r| r.end());
        segs.insert(seg, log.segs[&seg][..end as usize].to_vec());
        (Lsn::new(seg, end), true)
    } else if let Some((&n, bytes)) = segs.iter().next_back() {
        (Lsn::new(n, bytes.len() as u32), true)
    } else {
        (Lsn::new(seg, HDR), false)
    };
    let before: u64 = damaged.values().map(|b| b.len() as u64).sum();
    let after: u64 = segs.values().map(|b| b.len() as u64).sum();
    Expect {
        records: valid.len() as u64,
        last: valid.last().map_or(Lsn::ZERO, |r| r.lsn),
        last_generation: valid.last().map_or(Generation(0), |r| r.generation),
        next,
        segment_open,
        removed_segments: damaged.keys().filter(|&&n| !segs.contains_key(&n)).count() as u32,
        segs,
        truncated_bytes: before - after,
    }
}

/// Recover `damaged`, compare with what `expect` says, then append one
/// more record and check it is there after another recovery.
fn check_recovery(log: &Log, damaged: BTreeMap<u32, Vec<u8>>, seg: u32, pos: u32, what: &str) {
    let l = limits();
    let (mut s, r) = check_recovery_only(log, damaged, seg, pos, what);
    // Recovering again changes nothing.
    let again = recover(&mut s, &l).unwrap();
    assert_eq!(again.records, r.records, "{what}: second recovery");
    assert_eq!((again.truncated_bytes, again.removed_segments), (0, 0));
    continue_log(&mut s, &r, what);
}

/// Recover `damaged` and compare with what `expect` says.
fn check_recovery_only(
    log: &Log,
    damaged: BTreeMap<u32, Vec<u8>>,
    seg: u32,
    pos: u32,
    what: &str,
) -> (MemStorage, Recovered) {
    let l = limits();
    let e = expect(log, seg, pos, &damaged);
    let mut s = storage_of(&damaged);
    let r = recover(&mut s, &l).unwrap_or_else(|err| panic!("{what}: {err}"));
    assert_eq!(r.records, e.records, "{what}: record count");
    assert_eq!(r.last, e.last, "{what}: last LSN");
    assert_eq!(
        r.last_generation, e.last_generation,
        "{what}: last generation"
    );
    assert_eq!(r.next, e.next, "{what}: next LSN");
    assert_eq!(r.segment_open, e.segment_open, "{what}: segment open");
    let first = log.recs.iter().find(|x| damaged.contains_key(&x.lsn.file));
    if e.records > 0 {
        assert_eq!(Some(r.first), first.map(|x| x.lsn), "{what}: first LSN");
    } else {
        assert_eq!(r.first, Lsn::ZERO, "{what}: first LSN");
    }
    assert_eq!(
        r.truncated_bytes, e.truncated_bytes,
        "{what}: truncated bytes"
    );
    assert_eq!(
        r.removed_segments, e.removed_segments,
        "{what}: removed segments"
    );
    assert!(dump(&mut s) == e.segs, "{what}: storage is not the prefix");
    (s, r)
}

/// A writer continues the recovered log: one more record, recovered and
/// read back.
fn continue_log(s: &mut MemStorage, r: &Recovered, what: &str) {
    let l = limits();
    let mut w = LogWriter::new(r, l);
    assert_eq!(w.next_lsn(), r.next);
    assert_eq!(w.last_lsn(), r.last);
    let spec = Spec::Commit {
        txn_id: 999_999,
        timestamp: 5,
        ops: vec![(
            "users".into(),
            b"after-recovery".to_vec(),
            Some(vec![7; 300]),
        )],
    };
    let g = Generation(r.last_generation.0.max(1));
    let lsn = spec
        .with_body(|b| w.append(s, g, b))
        .unwrap_or_else(|err| panic!("{what}: append after recovery: {err}"));
    let bytes = spec.encode(lsn, g);
    let fits = r.next.offset as u64 + bytes.len() as u64 <= l.segment_size as u64;
    if fits || r.next.offset == HDR {
        assert_eq!(lsn, r.next, "{what}: appended LSN");
    } else {
        assert_eq!(lsn, Lsn::new(r.next.file + 1, HDR), "{what}: appended LSN");
    }
    let r2 = recover(s, &l).unwrap();
    assert_eq!(r2.records, r.records + 1, "{what}: record after recovery");
    assert_eq!(r2.last, lsn, "{what}: record after recovery");
    assert_eq!((r2.truncated_bytes, r2.removed_segments), (0, 0), "{what}");
    let mut reader = LogReader::new(l);
    let (view, next) = reader.read(s, lsn).unwrap();
    assert_eq!(view.bytes, &bytes[..], "{what}: read back");
    assert_eq!(next, Lsn::new(lsn.file, lsn.offset + bytes.len() as u32));
}

fn reference() -> Log {
    build(240, 0x5eed_0001)
}

/// The log with segment `seg` cut to `pos` bytes and every later segment
/// gone.
fn cut_at(log: &Log, seg: u32, pos: u32) -> BTreeMap<u32, Vec<u8>> {
    let mut d = BTreeMap::new();
    for (&n, bytes) in &log.segs {
        if n < seg {
            d.insert(n, bytes.clone());
        } else if n == seg {
            d.insert(n, bytes[..pos as usize].to_vec());
        }
    }
    d
}

#[test]
fn intact_log_recovers_whole() {
    let log = reference();
    let last = *log.segs.keys().next_back().unwrap();
    let end = log.segs[&last].len() as u32;
    check_recovery(&log, log.segs.clone(), last, end, "intact");
    assert!(log.recs.len() > 240);
}

/// Cut the log at every byte of its tail: the whole last segment
/// (header included) and the last four records of the segment before.
#[test]
fn every_cut_in_the_tail_recovers_the_longest_prefix() {
    let log = reference();
    let last = *log.segs.keys().next_back().unwrap();
    let prev = last - 1;
    let prev_recs: Vec<&Rec> = log.recs.iter().filter(|r| r.lsn.file == prev).collect();
    let from = prev_recs[prev_recs.len() - 4].lsn.offset;
    let mut cuts = 0;
    let boundaries: Vec<Lsn> = log.recs.iter().map(|r| r.lsn).collect();
    let mut cut = |seg: u32, pos: u32| {
        let what = format!("cut [{seg}][{pos}]");
        let damaged = cut_at(&log, seg, pos);
        // The writer is checked on every boundary and every 8th byte.
        let boundary = pos <= HDR || boundaries.contains(&Lsn::new(seg, pos));
        if boundary || pos % 8 == 0 {
            check_recovery(&log, damaged, seg, pos, &what);
        } else {
            check_recovery_only(&log, damaged, seg, pos, &what);
        }
        cuts += 1;
    };
    for pos in from..=log.segs[&prev].len() as u32 {
        cut(prev, pos);
    }
    for pos in 0..=log.segs[&last].len() as u32 {
        cut(last, pos);
    }
    // The last segment missing altogether (crash before it was created).
    check_recovery(
        &log,
        cut_at(&log, prev, log.segs[&prev].len() as u32),
        last,
        0,
        "no last",
    );
    assert!(cuts > 400, "{cuts} cuts");
}

/// Flip one bit: every bit of the last records and of every segment
/// header, a bit of every byte of many record headers, and a seeded
/// sample of bits everywhere. The log is good up to the record or header
/// holding the bit.
#[test]
fn every_flipped_bit_cuts_at_the_damaged_record() {
    let log = reference();
    let mut rng = Rng(0xb175);
    let mut flips: Vec<(u32, u32, u8)> = Vec::new(); // (segment, byte, bit)
    let n = log.recs.len();
    for (i, r) in log.recs.iter().enumerate() {
        if i >= n - 3 {
            // The last three records: every bit.
            for b in 0..r.len {
                for bit in 0..8 {
                    flips.push((r.lsn.file, r.lsn.offset + b, bit));
                }
            }
        } else if i >= n - 8 || i % 8 == 0 || r.lsn.offset == HDR {
            // Earlier records: a bit of every header byte.
            for b in 0..16 {
                flips.push((r.lsn.file, r.lsn.offset + b, rng.below(8) as u8));
            }
        }
    }
    let last = *log.segs.keys().next_back().unwrap();
    for &n in log.segs.keys() {
        for b in 0..HDR {
            // Every bit of the first, a middle and the last segment
            // header; a bit of every byte of the others.
            if n == 1 || n == last / 2 || n == last {
                for bit in 0..8 {
                    flips.push((n, b, bit));
                }
            } else {
                flips.push((n, b, rng.below(8) as u8));
            }
        }
    }
    let total: usize = log.segs.values().map(|s| s.len()).sum();
    for _ in 0..300 {
        let mut at = rng.below(total as u64) as usize;
        for (&n, s) in &log.segs {
            if at < s.len() {
                flips.push((n, at as u32, rng.below(8) as u8));
                break;
            }
            at -= s.len();
        }
    }
    for (k, &(seg, byte, bit)) in flips.iter().enumerate() {
        let mut damaged = log.segs.clone();
        damaged.get_mut(&seg).unwrap()[byte as usize] ^= 1 << bit;
        let what = format!("bit {bit} of byte [{seg}][{byte}]");
        if k % 16 == 0 {
            check_recovery(&log, damaged, seg, byte, &what);
        } else {
            check_recovery_only(&log, damaged, seg, byte, &what);
        }
    }
    assert!(flips.len() > 2_500, "{} flips", flips.len());
}

/// Garbage after the last record is cut; the records stay.
#[test]
fn garbage_after_the_end_is_cut() {
    let log = reference();
    let last = *log.segs.keys().next_back().unwrap();
    let end = log.segs[&last].len() as u32;
    let a_record = log.recs[10].bytes.clone();
    let mut rng = Rng(77);
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        ("one zero byte", vec![0]),
        ("zeros", vec![0; 700]),
        ("0xff", vec![0xff; 40]),
        ("random", rng.bytes(333)),
        ("a record copied from elsewhere", a_record),
        (
            "a segment header",
            SegmentHeader { number: last }.encode().to_vec(),
        ),
        ("a huge length", vec![0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0]),
    ];
    for (what, g) in garbage {
        let mut damaged = log.segs.clone();
        damaged.get_mut(&last).unwrap().extend_from_slice(&g);
        check_recovery(&log, damaged, last, end, what);
    }
    // A whole segment of garbage after the last one.
    let mut damaged = log.segs.clone();
    damaged.insert(last + 1, rng.bytes(100));
    check_recovery(&log, damaged, last + 1, 0, "garbage segment");
    // A valid but empty segment after a gap.
    let mut damaged = log.segs.clone();
    damaged.insert(
        last + 2,
        SegmentHeader { number: last + 2 }.encode().to_vec(),
    );
    check_recovery(&log, damaged, last + 1, 0, "segment after a gap");
    // A good header and nothing else is a valid, empty segment.
    let mut damaged = log.segs.clone();
    damaged.insert(
        last + 1,
        SegmentHeader { number: last + 1 }.encode().to_vec(),
    );
    let mut s = storage_of(&damaged);
    let r = recover(&mut s, &limits()).unwrap();
    assert_eq!(r.records, log.recs.len() as u64);
    assert_eq!(r.next, Lsn::new(last + 1, HDR));
    assert!(r.segment_open);
    assert_eq!((r.truncated_bytes, r.removed_segments), (0, 0));
    continue_log(&mut s, &r, "empty last segment");
}

#[test]
fn missing_middle_segment_cuts_the_log_there() {
    let log = reference();
    for gone in [2u32, 3, 4] {
        let mut damaged = log.segs.clone();
        damaged.remove(&gone);
        check_recovery(&log, damaged, gone, 0, &format!("segment {gone} missing"));
    }
}

#[test]
fn removed_first_segments_leave_a_log_that_starts_later() {
    let log = reference();
    for drop in 1..=2u32 {
        let mut segs = log.segs.clone();
        for n in 1..=drop {
            segs.remove(&n);
        }
        let trimmed = Log {
            recs: log.recs.clone(),
            segs: segs.clone(),
        };
        let last = *segs.keys().next_back().unwrap();
        let end = segs[&last].len() as u32;
        check_recovery(&trimmed, segs, last, end, &format!("first {drop} removed"));
        // And the trimmed log still recovers a cut tail correctly.
        let mut cut = trimmed.segs.clone();
        cut.get_mut(&last).unwrap().truncate(end as usize - 3);
        check_recovery(&trimmed, cut, last, end - 3, "trimmed and cut");
    }
    // Archived up to segment 3: recovery starts at its first record.
    let mut segs = log.segs.clone();
    segs.remove(&1);
    segs.remove(&2);
    let mut s = storage_of(&segs);
    let r = recover(&mut s, &limits()).unwrap();
    assert_eq!(r.first, Lsn::new(3, HDR));
}

#[test]
fn segment_with_a_wrong_number_cuts_the_log_there() {
    let log = reference();
    for (seg, number) in [(3u32, 4u32), (3, 2), (4, 0), (2, 1 << 31)] {
        let mut damaged = log.segs.clone();
        let h = SegmentHeader { number }.encode();
        damaged.get_mut(&seg).unwrap()[..SEGMENT_HEADER_LEN].copy_from_slice(&h);
        check_recovery(
            &log,
            damaged,
            seg,
            0,
            &format!("segment {seg} says {number}"),
        );
    }
    // The first segment with a wrong number: nothing survives.
    let mut damaged = log.segs.clone();
    let h = SegmentHeader { number: 9 }.encode();
    damaged.get_mut(&1).unwrap()[..SEGMENT_HEADER_LEN].copy_from_slice(&h);
    check_recovery(&log, damaged, 1, 0, "segment 1 says 9");
}

#[test]
fn empty_storage_recovers_empty() {
    let mut s = MemStorage::new(1 << 20);
    let r = recover(&mut s, &limits()).unwrap();
    assert_eq!(r, Recovered::empty());
    continue_log(&mut s, &r, "empty");
    // A first segment that was created but never got its header.
    let mut s = MemStorage::new(1 << 20);
    s.create_segment(1).unwrap();
    let r = recover(&mut s, &limits()).unwrap();
    assert_eq!(r.records, 0);
    assert_eq!(r.next, Lsn::new(1, HDR));
    assert!(!r.segment_open);
    assert_eq!(r.removed_segments, 1);
    assert!(s.segments().unwrap().is_empty());
    continue_log(&mut s, &r, "header never written");
}

/// The reader walks the whole log, across every segment switch.
#[test]
fn reader_reads_every_record_across_segments() {
    let log = reference();
    let l = limits();
    let mut s = storage_of(&log.segs);
    let mut reader = LogReader::new(l);
    let mut lsn = Lsn::new(1, HDR);
    for (i, rec) in log.recs.iter().enumerate() {
        let (view, next) = reader
            .read(&mut s, lsn)
            .unwrap_or_else(|e| panic!("record {i} at {lsn:?}: {e}"));
        assert_eq!(view.lsn, rec.lsn, "record {i}");
        assert_eq!(view.bytes, &rec.bytes[..], "record {i}");
        assert_eq!(view.generation, rec.generation, "record {i}");
        view.decode(&l).unwrap();
        assert_eq!(next, Lsn::new(rec.lsn.file, rec.end()));
        lsn = next;
    }
    // Past the end, and before a segment's first record.
    assert!(matches!(
        reader.read(&mut s, lsn),
        Err(LogError::NotFound(_))
    ));
    assert!(matches!(
        reader.read(&mut s, Lsn::new(2, 4)),
        Err(LogError::NotFound(_))
    ));
    assert!(matches!(
        reader.read(&mut s, Lsn::new(99, HDR)),
        Err(LogError::NotFound(_))
    ));
    // Every record read directly by its LSN.
    for rec in log.recs.iter().rev() {
        assert_eq!(
            reader.read(&mut s, rec.lsn).unwrap().0.bytes,
            &rec.bytes[..]
        );
    }
    // An LSN inside a record is refused by the checksum.
    let r = &log.recs[50];
    assert!(matches!(
        reader.read(&mut s, Lsn::new(r.lsn.file, r.lsn.offset + 1)),
        Err(LogError::Record(_))
    ));
}

/// A client writes the master's records at the master's LSNs and ends up
/// with the same bytes; anything but the next position is refused.
#[test]
fn append_raw_follows_the_master_and_refuses_gaps() {
    let log = reference();
    let l = limits();
    let mut s = MemStorage::new(1 << 30);
    let mut w = LogWriter::new(&recover(&mut s, &l).unwrap(), l);
    let shifted = log.recs[0].bytes.clone();
    // Not even the first record of segment 2 on an empty log.
    let mut moved = shifted.clone();
    shoal_core::log::record::reseal(&mut moved, Lsn::new(2, HDR));
    assert!(matches!(
        w.append_raw(&mut s, Lsn::new(2, HDR), &moved),
        Err(LogError::OutOfOrder { .. })
    ));
    // The right record at the wrong LSN fails its checksum.
    assert!(matches!(
        w.append_raw(&mut s, Lsn::new(2, HDR), &shifted),
        Err(LogError::Record(RecordError::BadChecksum { .. }))
    ));
    for (i, rec) in log.recs.iter().enumerate() {
        if i > 0 {
            // A gap: the record after this one. (When that one starts the
            // next segment, append_raw cannot tell the gap from a segment
            // switch: the caller checks LogEntry::prev for that.)
            let skip = log.recs.get(i + 1).filter(|x| x.lsn.offset != HDR);
            if let Some(skip) = skip {
                match w.append_raw(&mut s, skip.lsn, &skip.bytes) {
                    Err(LogError::OutOfOrder { expected, got }) => {
                        assert_eq!(expected, w.next_lsn());
                        assert_eq!(got, skip.lsn);
                    }
                    other => panic!("gap before {:?} accepted: {other:?}", skip.lsn),
                }
            }
            // A duplicate of the previous record.
            let prev = &log.recs[i - 1];
            assert!(matches!(
                w.append_raw(&mut s, prev.lsn, &prev.bytes),
                Err(LogError::OutOfOrder { .. })
            ));
        }
        // The right bytes at the wrong LSN fail their checksum.
        assert!(w
            .append_raw(
                &mut s,
                Lsn::new(rec.lsn.file, rec.lsn.offset + 1),
                &rec.bytes
            )
            .is_err());
        // A record with bytes after it.
        let mut long = rec.bytes.clone();
        long.push(0);
        assert!(w.append_raw(&mut s, rec.lsn, &long).is_err());
        w.append_raw(&mut s, rec.lsn, &rec.bytes)
            .unwrap_or_else(|e| panic!("record {i} at {:?}: {e}", rec.lsn));
        assert_eq!(w.last_lsn(), rec.lsn);
        assert_eq!(w.last_generation(), rec.generation);
        // Skipping a whole segment is a gap too.
        let far = Lsn::new(rec.lsn.file + 2, HDR);
        let mut moved = shifted.clone();
        shoal_core::log::record::reseal(&mut moved, far);
        assert!(matches!(
            w.append_raw(&mut s, far, &moved),
            Err(LogError::OutOfOrder { .. })
        ));
    }
    assert!(dump(&mut s) == log.segs, "the client's log is the master's");
    // Switching segment early (the master's segment was fuller) is fine.
    let mut moved = shifted.clone();
    let next_seg = Lsn::new(w.next_lsn().file + 1, HDR);
    shoal_core::log::record::reseal(&mut moved, next_seg);
    w.append_raw(&mut s, next_seg, &moved).unwrap();
    assert_eq!(
        w.next_lsn(),
        Lsn::new(next_seg.file, HDR + moved.len() as u32)
    );
    let r = recover(&mut s, &l).unwrap();
    assert_eq!(r.records, log.recs.len() as u64 + 1);
    assert_eq!(r.last, next_seg);
}

/// A record whose checksum is right but whose body does not decode is
/// refused by append_raw (recovery would drop it and everything after).
#[test]
fn append_raw_refuses_records_recovery_would_drop() {
    let l = limits();
    let mut s = MemStorage::new(1 << 20);
    let mut w = LogWriter::new(&recover(&mut s, &l).unwrap(), l);
    let lsn = Lsn::new(1, HDR);
    let mut rec = Spec::Checkpoint(Checkpoint {
        lsn: Lsn::new(1, HDR),
        timestamp: Instant(1),
    })
    .encode(lsn, Generation(1));
    // Body: a checkpoint's postcard bytes plus one extra byte.
    rec.push(0);
    let len = (rec.len() - 16) as u32;
    rec[0..4].copy_from_slice(&len.to_le_bytes());
    shoal_core::log::record::reseal(&mut rec, lsn);
    assert!(matches!(
        w.append_raw(&mut s, lsn, &rec),
        Err(LogError::Record(RecordError::BadBody))
    ));
    assert_eq!(w.next_lsn(), lsn);
}

/// Rollback: truncate at a record, recovery agrees, the writer continues.
#[test]
fn truncate_removes_the_tail() {
    let log = reference();
    let l = limits();
    let picks = [
        log.recs.len() - 1,
        log.recs.len() - 5,
        log.recs
            .iter()
            .position(|r| r.lsn == Lsn::new(3, HDR))
            .unwrap(),
        log.recs.len() / 2,
        1,
        0,
    ];
    for &i in &picks {
        let mut s = storage_of(&log.segs);
        let r = recover(&mut s, &l).unwrap();
        let mut w = LogWriter::new(&r, l);
        let at = log.recs[i].lsn;
        let (prev, prev_gen) = if i == 0 {
            (Lsn::ZERO, Generation(0))
        } else {
            (log.recs[i - 1].lsn, log.recs[i - 1].generation)
        };
        w.truncate(&mut s, at, prev, prev_gen)
            .unwrap_or_else(|e| panic!("truncate at {at:?}: {e}"));
        assert_eq!(w.next_lsn(), at);
        assert_eq!(w.last_lsn(), prev);
        let damaged = dump(&mut s);
        let e = expect(&log, at.file, at.offset, &damaged);
        assert!(damaged == e.segs, "truncate at {at:?}: storage");
        let r2 = recover(&mut s, &l).unwrap();
        assert_eq!(r2.records, i as u64, "truncate at {at:?}");
        assert_eq!(r2.last, prev);
        assert_eq!(r2.next, at);
        assert_eq!((r2.truncated_bytes, r2.removed_segments), (0, 0));
        // The same writer continues: the old record goes back in place.
        let spec_bytes = &log.recs[i].bytes;
        w.append_raw(&mut s, at, spec_bytes).unwrap();
        assert_eq!(w.last_lsn(), at);
        let r3 = recover(&mut s, &l).unwrap();
        assert_eq!(r3.records, i as u64 + 1);
        continue_log(&mut s, &r3, "after truncate");
    }
    // At the end of a segment: the later segments go, that one stays whole.
    let mut s = storage_of(&log.segs);
    let r = recover(&mut s, &l).unwrap();
    let mut w = LogWriter::new(&r, l);
    let last_of_3 = log.recs.iter().rfind(|x| x.lsn.file == 3).unwrap();
    let end3 = Lsn::new(3, log.segs[&3].len() as u32);
    w.truncate(&mut s, end3, last_of_3.lsn, last_of_3.generation)
        .unwrap();
    let kept = dump(&mut s);
    assert_eq!(kept.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(kept[&3] == log.segs[&3]);
    let r = recover(&mut s, &l).unwrap();
    assert_eq!(r.last, last_of_3.lsn);
    assert_eq!(r.next, end3);
    continue_log(&mut s, &r, "truncated at a segment end");
    // Truncating at the end is a no-op; past it, or inside a header, is
    // refused.
    let mut s = storage_of(&log.segs);
    let r = recover(&mut s, &l).unwrap();
    let mut w = LogWriter::new(&r, l);
    let last = log.recs.last().unwrap();
    w.truncate(&mut s, r.next, last.lsn, last.generation)
        .unwrap();
    assert!(dump(&mut s) == log.segs);
    let past = Lsn::new(r.next.file, r.next.offset + 1);
    assert!(matches!(
        w.truncate(&mut s, past, last.lsn, last.generation),
        Err(LogError::BadTruncate(_))
    ));
    assert!(matches!(
        w.truncate(&mut s, Lsn::new(2, 3), last.lsn, last.generation),
        Err(LogError::BadTruncate(_))
    ));
    // Inside a record.
    let mid = &log.recs[40];
    assert!(matches!(
        w.truncate(
            &mut s,
            Lsn::new(mid.lsn.file, mid.lsn.offset + 3),
            mid.lsn,
            mid.generation
        ),
        Err(LogError::BadTruncate(_))
    ));
    assert!(
        dump(&mut s) == log.segs,
        "refused truncations change nothing"
    );
}

/// A full storage is a typed error, and the writer stays consistent.
#[test]
fn full_storage_is_an_error_not_a_panic() {
    let l = limits();
    let mut s = MemStorage::new(2_000);
    let mut w = LogWriter::new(&recover(&mut s, &l).unwrap(), l);
    let spec = Spec::Commit {
        txn_id: 1,
        timestamp: 1,
        ops: vec![("d".into(), b"k".to_vec(), Some(vec![1; 200]))],
    };
    let mut n = 0;
    let err = loop {
        match spec.with_body(|b| w.append(&mut s, Generation(1), b)) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, LogError::Storage(_)), "{err:?}");
    let r = recover(&mut s, &l).unwrap();
    assert_eq!(r.records, n);
    assert_eq!(r.next, w.next_lsn());
}

/// A client writes at its master's LSNs; when the master's segments are
/// longer than the client's own `segment_size`, the client's recovery
/// still keeps every record (it scans through a bounded window).
#[test]
fn segments_longer_than_the_local_segment_size_recover_whole() {
    let small = limits();
    let big = Limits {
        segment_size: 40_000,
        ..small
    };
    let mut master = MemStorage::new(1 << 30);
    let mut mw = LogWriter::new(&recover(&mut master, &big).unwrap(), big);
    let mut rng = Rng(99);
    let mut generation = 1;
    let mut recs = Vec::new();
    for i in 0..400 {
        let spec = Spec::random(&mut rng, i, &mut generation, mw.last_lsn());
        let g = Generation(generation);
        let lsn = spec.with_body(|b| mw.append(&mut master, g, b)).unwrap();
        recs.push((lsn, spec.encode(lsn, g)));
    }
    assert!(recs.last().unwrap().0.offset > 3 * small.segment_size);
    let mut client = MemStorage::new(1 << 30);
    let mut cw = LogWriter::new(&recover(&mut client, &small).unwrap(), small);
    for (lsn, bytes) in &recs {
        cw.append_raw(&mut client, *lsn, bytes).unwrap();
    }
    let r = recover(&mut client, &small).unwrap();
    assert_eq!(r.records, recs.len() as u64);
    assert_eq!(r.last, recs.last().unwrap().0);
    assert_eq!((r.truncated_bytes, r.removed_segments), (0, 0));
    assert!(dump(&mut client) == dump(&mut master));
    // A cut in the middle of such a segment still finds the prefix.
    let (lsn, bytes) = &recs[250];
    client
        .truncate(lsn.file, (lsn.offset + bytes.len() as u32 / 2) as u64)
        .unwrap();
    let r = recover(&mut client, &small).unwrap();
    assert_eq!(r.last, recs[249].0);
    assert_eq!(r.records, 250);
}

/// `LogWriter::last_appended` gives exactly the bytes on storage for the
/// record just appended, and nothing once the log moved on otherwise.
#[test]
fn last_appended_is_the_stored_record() {
    let l = limits();
    let mut s = MemStorage::new(1 << 20);
    let mut w = LogWriter::new(&shoal_core::log::Recovered::empty(), l);
    let ops = [shoal_core::log::Op::Put {
        db: "d",
        key: b"k",
        value: b"v",
    }];
    let body = RecordBody::Commit {
        txn_id: 1,
        timestamp: Instant(5),
        ops: &ops,
    };
    let lsn = w.append(&mut s, Generation(2), &body).unwrap();
    let mut r = LogReader::new(l);
    let (view, _) = r.read(&mut s, lsn).unwrap();
    assert_eq!(w.last_appended(lsn), Some(view.bytes));
    assert_eq!(w.last_appended(Lsn::new(lsn.file, lsn.offset + 1)), None);
    // A replicated record written after it: no longer the last append.
    let next = w.next_lsn();
    let mut other = Vec::new();
    encode_record(next, Generation(2), &body, &mut other, &l).unwrap();
    w.append_raw(&mut s, next, &other).unwrap();
    assert_eq!(w.last_appended(next), None);
    assert_eq!(w.last_appended(lsn), None);
}

/// `LogReader::scan` (the chunked read replay uses at start) reads the
/// same records as `read`, across segment switches and for records larger
/// than its chunk.
#[test]
fn scan_reads_what_read_reads_in_chunks() {
    use shoal_core::log::segment::SCAN_CHUNK;
    // The small-segment reference log.
    let log = reference();
    let l = limits();
    let mut s = storage_of(&log.segs);
    let mut reader = LogReader::new(l);
    let mut lsn = Lsn::new(1, HDR);
    for (i, rec) in log.recs.iter().enumerate() {
        let (view, next) = reader
            .scan(&mut s, lsn)
            .unwrap_or_else(|e| panic!("record {i} at {lsn:?}: {e}"));
        assert_eq!(view.lsn, rec.lsn, "record {i}");
        assert_eq!(view.bytes, &rec.bytes[..], "record {i}");
        assert_eq!(next, Lsn::new(rec.lsn.file, rec.end()));
        lsn = next;
    }
    assert!(matches!(
        reader.scan(&mut s, lsn),
        Err(LogError::NotFound(_))
    ));
    reader.end_scan();

    // Records of up to ~600 KiB with default limits and 2 MiB segments.
    let l = Limits {
        segment_size: 2 << 20,
        ..Limits::default()
    };
    l.validate().unwrap();
    let mut s = MemStorage::new(1 << 30);
    let r = recover(&mut s, &l).unwrap();
    let mut w = LogWriter::new(&r, l);
    let mut rng = Rng(7);
    let mut lsns = Vec::new();
    for i in 0..24u64 {
        let nops = [1usize, 9, 2, 5][i as usize % 4];
        let size = [10usize, 60_000, 300, 40_000][i as usize % 4];
        let values: Vec<Vec<u8>> = (0..nops).map(|_| rng.bytes(size)).collect();
        let keys: Vec<String> = (0..nops).map(|k| format!("k{i}-{k}")).collect();
        let ops: Vec<Op<'_>> = keys
            .iter()
            .zip(&values)
            .map(|(k, v)| Op::Put {
                db: "db",
                key: k.as_bytes(),
                value: v,
            })
            .collect();
        let body = RecordBody::Commit {
            txn_id: i,
            timestamp: Instant(i),
            ops: &ops,
        };
        lsns.push(w.append(&mut s, Generation(1), &body).unwrap());
    }
    assert!(lsns.last().unwrap().file > 1, "the log spans segments");
    let mut reader = LogReader::new(l);
    let mut scanner = LogReader::new(l);
    let mut big = 0;
    let mut lsn = lsns[0];
    for (i, want) in lsns.iter().enumerate() {
        let read = reader.read(&mut s, *want).unwrap().0.bytes.to_vec();
        let (view, next) = scanner.scan(&mut s, lsn).unwrap();
        assert_eq!(view.lsn, *want, "record {i}");
        assert_eq!(view.bytes, &read[..], "record {i}");
        big += usize::from(read.len() > SCAN_CHUNK);
        lsn = next;
    }
    assert!(big > 0, "no record was larger than the scan chunk");
}
