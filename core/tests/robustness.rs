//! Robustness (issue 2): more than 100,000 random and mutated byte strings
//! go into every decoder that reads untrusted or possibly corrupt bytes:
//! `wire::decode_frame`, `RecordView::parse` + `decode`, `Meta::decode`,
//! `describe::frame` / `describe::record`, and `log::recover` over a
//! mutated segment. Nothing may panic; every failure is a typed error; and
//! whatever decodes re-encodes to something that decodes to the same value.
//!
//! The inputs come from a seeded xorshift generator mutating the golden
//! vectors (bit flips, truncation, insertion, deletion, splicing,
//! duplication, length fields set huge) and from plain random bytes. Set
//! `SHOAL_ROBUSTNESS_SCALE=10` to run ten times as many.

use shoal_core::config::Limits;
use shoal_core::describe;
use shoal_core::ids::{ElectionGen, Generation, Instant, Lsn, SiteId};
use shoal_core::log::record::{encode_record, reencode, reseal, RecordBody};
use shoal_core::log::segment::SegmentHeader;
use shoal_core::log::{recover, LogReader, Op, Record, RecordView};
use shoal_core::mem::MemStorage;
use shoal_core::meta::{Meta, MetaError};
use shoal_core::traits::Storage;
use shoal_core::wire::{self, DecodeError};
use std::fs;
use std::path::Path;

/// xorshift64*: deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn bytes_below(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max);
        self.bytes(n)
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

fn scale() -> usize {
    std::env::var("SHOAL_ROBUSTNESS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

fn golden(kind: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/golden")
        .join(kind);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    files.sort();
    let v: Vec<Vec<u8>> = files.iter().map(|p| fs::read(p).unwrap()).collect();
    assert!(v.len() >= 8, "golden {kind} vectors missing");
    v
}

/// Byte strings that make decoders read lengths and counts as huge.
const HUGE: [&[u8]; 6] = [
    &[0xff, 0xff, 0xff, 0xff, 0x0f],
    &[0xff, 0xff, 0xff, 0xff, 0xff],
    &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80],
    &[0xff, 0xff, 0xff, 0x7f],
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
    &[0x80, 0x01],
];

/// One random mutation (or a few) of `input`, using `other` for splices.
fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        let len = b.len();
        match rng.below(11) {
            // Flip one bit.
            0 | 1 => {
                if len > 0 {
                    let i = rng.below(len);
                    b[i] ^= 1 << rng.below(8);
                }
            }
            // Cut the tail.
            2 => b.truncate(rng.below(len + 1)),
            // Insert random bytes.
            3 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let ins = rng.bytes(n);
                b.splice(at..at, ins);
            }
            // Delete a range.
            4 => {
                if len > 0 {
                    let at = rng.below(len);
                    let n = 1 + rng.below((len - at).min(16));
                    b.drain(at..at + n);
                }
            }
            // Splice: a prefix of this one and a suffix of another.
            5 => {
                let cut = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                b.truncate(cut);
                b.extend_from_slice(&other[from..]);
            }
            // A length or count field set huge.
            6 => {
                let h = HUGE[rng.below(HUGE.len())];
                let at = rng.below(len + 1);
                let end = (at + h.len()).min(len);
                if rng.chance(2) {
                    b.splice(at..end, h.iter().copied());
                } else {
                    b.splice(at..at, h.iter().copied());
                }
            }
            // An interesting byte value.
            7 => {
                if len > 0 {
                    let i = rng.below(len);
                    b[i] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x40][rng.below(6)];
                }
            }
            // Duplicate a range.
            8 => {
                if len > 0 {
                    let at = rng.below(len);
                    let n = 1 + rng.below((len - at).min(32));
                    let dup = b[at..at + n].to_vec();
                    let to = rng.below(len + 1);
                    b.splice(to..to, dup);
                }
            }
            // Random byte in a random place.
            9 => {
                if len > 0 {
                    let i = rng.below(len);
                    b[i] = rng.next() as u8;
                }
            }
            // Append junk.
            _ => {
                let n = 1 + rng.below(8);
                let junk = rng.bytes(n);
                b.extend_from_slice(&junk);
            }
        }
    }
    b
}

// ------------------------------------------------------------------ frames

/// Decode a frame; if it decodes, re-encode it and decode again: same
/// value. Describe it too. Returns whether it decoded.
fn check_frame(bytes: &[u8], l: &Limits) -> bool {
    let d = describe::frame(bytes, l);
    match wire::decode_frame(bytes, l) {
        Ok((env, msg)) => {
            let text = d.expect("describe agrees with decode_frame");
            let mut out = Vec::new();
            let n = wire::encode_frame(&env, &msg, &mut out, l)
                .unwrap_or_else(|e| panic!("decoded frame does not re-encode: {e}\n{text}"));
            assert_eq!(n, out.len());
            // Encoders write minimal varints: never longer than the input.
            assert!(out.len() <= bytes.len());
            let (env2, msg2) = wire::decode_frame(&out, l).expect("re-encoded frame decodes");
            assert_eq!(env2, env);
            assert_eq!(msg2, msg);
            assert_eq!(describe::frame(&out, l).unwrap(), text);
            true
        }
        Err(e) => {
            assert_eq!(d, Err(e));
            // Every error displays.
            assert!(!e.to_string().is_empty());
            false
        }
    }
}

#[test]
fn mutated_and_random_frames_never_panic() {
    let l = Limits::default();
    let device = Limits::device();
    let seeds = golden("frames");
    let mut rng = Rng(0x00f4_a3e5);
    let n = 60_000 * scale();
    let mut decoded = 0usize;
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..n {
        let a = &seeds[rng.below(seeds.len())];
        let b = &seeds[rng.below(seeds.len())];
        let input = if i % 10 == 0 {
            // Plain random bytes, mostly behind a valid version.
            let len = rng.below(80);
            let mut v = rng.bytes(len);
            if v.len() >= 2 && !rng.chance(4) {
                v[0] = 1;
                v[1] = 0;
            }
            v
        } else {
            mutate(&mut rng, a, b)
        };
        let lim = if i % 4 == 0 { &device } else { &l };
        if check_frame(&input, lim) {
            decoded += 1;
        } else if let Err(e) = wire::decode_frame(&input, lim) {
            let key = format!("{e:?}");
            let key = key.split(['(', ' ']).next().unwrap().to_string();
            *errors.entry(key).or_default() += 1;
        }
    }
    // The mutations reach past the version and envelope: many inputs
    // decode, and the failures are of many kinds.
    assert!(decoded > n / 50, "only {decoded} of {n} decoded");
    for kind in [
        "Malformed",
        "TrailingBytes",
        "BadRecord",
        "Truncated",
        "BadVersion",
    ] {
        assert!(errors.contains_key(kind), "no {kind} error: {errors:?}");
    }
    // The seeds themselves decode.
    for s in &seeds {
        assert!(check_frame(s, &l));
    }
}

/// Every message type's vector with the bytes around its type byte set
/// to every value: exhaustive over single-byte changes there.
#[test]
fn every_single_byte_change_near_the_type_is_handled() {
    let l = Limits::default();
    let mut count = 0;
    for seed in golden("frames") {
        let (env, _) = wire::decode_frame(&seed, &l).unwrap();
        let type_at = 2 + postcard::to_allocvec(&env).unwrap().len();
        let positions = [0, 1, 2, type_at - 1, type_at, type_at + 1, type_at + 2];
        for pos in positions.into_iter().filter(|&p| p < seed.len()) {
            for v in 0..=255u8 {
                let mut b = seed.clone();
                b[pos] = v;
                check_frame(&b, &l);
                count += 1;
            }
        }
    }
    assert!(count > 60_000, "{count}");
}

#[test]
fn stream_prefixes_never_panic() {
    let l = Limits::default();
    let mut rng = Rng(5);
    for _ in 0..2_000 {
        let p = (rng.next() as u32).to_le_bytes();
        match wire::stream_frame_len(p, &l) {
            Ok(n) => assert!((2..=l.max_frame as usize).contains(&n)),
            Err(DecodeError::TooLarge { .. } | DecodeError::Truncated) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
}

// ----------------------------------------------------------------- records

/// The decoded value of a record, comparable across encodings (a commit's
/// ops are compared decoded, not as raw bytes).
#[derive(PartialEq, Debug)]
enum Value<'a> {
    Commit(u64, Instant, Vec<Op<'a>>),
    Other(Record<'a>),
}

fn record_value<'a>(rec: &Record<'a>) -> Value<'a> {
    match rec {
        Record::Commit(c) => {
            let ops: Vec<Op<'a>> = c.ops().map(|o| o.expect("validated op")).collect();
            assert_eq!(ops.len(), c.len());
            Value::Commit(c.txn_id, c.timestamp, ops)
        }
        other => Value::Other(*other),
    }
}

/// Parse and decode a record at `lsn`; if it decodes, re-encode it and
/// check the result decodes to the same value. With `describe`, also
/// check `describe::record` agrees. Returns whether it decoded.
fn check_record(bytes: &[u8], lsn: Lsn, l: &Limits, describe: bool) -> bool {
    let d = describe.then(|| describe::record(bytes, lsn, l));
    let view = match RecordView::parse(bytes, lsn, l) {
        Ok(v) => v,
        Err(e) => {
            assert!(d.is_none_or(|d| d == Err(e)));
            assert!(!e.to_string().is_empty());
            return false;
        }
    };
    assert!(view.bytes.len() <= bytes.len());
    let rec = match view.decode(l) {
        Ok(r) => r,
        Err(e) => {
            assert!(d.is_none_or(|d| d.is_err()));
            assert!(!e.to_string().is_empty());
            return false;
        }
    };
    assert_eq!(rec.kind(), view.kind);
    let whole = view.bytes.len() == bytes.len();
    if let Some(d) = &d {
        assert_eq!(d.is_ok(), whole, "describe agrees with parse + decode");
    }
    let mut out = Vec::new();
    let n = reencode(&view, l, &mut out).expect("a decoded record re-encodes");
    assert_eq!(n, out.len());
    assert!(out.len() <= view.bytes.len());
    let view2 = RecordView::parse(&out, lsn, l).expect("re-encoded record parses");
    assert_eq!(view2.bytes.len(), out.len());
    assert_eq!(view2.generation, view.generation);
    let rec2 = view2.decode(l).expect("re-encoded record decodes");
    assert_eq!(record_value(&rec2), record_value(&rec));
    if let Some(Ok(text)) = d {
        assert_eq!(describe::record(&out, lsn, l).unwrap(), text);
    }
    true
}

/// Records to mutate: the golden ones, and fresh ones of every kind at
/// other LSNs.
fn record_seeds() -> Vec<(Lsn, Vec<u8>)> {
    let l = Limits::default();
    let lsn = Lsn::new(1, 20);
    let mut v: Vec<(Lsn, Vec<u8>)> = golden("records").into_iter().map(|b| (lsn, b)).collect();
    let mut rng = Rng(3);
    for i in 0..24u32 {
        let lsn = Lsn::new(1 + i, 20 + i * 1000);
        let keys: Vec<Vec<u8>> = (0..6).map(|_| rng.bytes_below(200)).collect();
        let ops: Vec<Op<'_>> = keys
            .iter()
            .enumerate()
            .map(|(j, k)| {
                if j % 3 == 2 {
                    Op::Delete {
                        db: "orders",
                        key: k,
                    }
                } else {
                    Op::Put {
                        db: "users",
                        key: &k[..k.len().min(64)],
                        value: k,
                    }
                }
            })
            .take(i as usize % 7)
            .collect();
        let mut out = Vec::new();
        encode_record(
            lsn,
            Generation(i * 77),
            &RecordBody::Commit {
                txn_id: rng.next(),
                timestamp: Instant(rng.next()),
                ops: &ops,
            },
            &mut out,
            &l,
        )
        .unwrap();
        v.push((lsn, out));
    }
    v
}

#[test]
fn mutated_records_never_panic() {
    let l = Limits::default();
    let device = Limits::device();
    let seeds = record_seeds();
    let mut rng = Rng(0x007e_c04d);
    let n = 40_000 * scale();
    let (mut parsed, mut decoded) = (0, 0);
    for i in 0..n {
        let (lsn, a) = &seeds[rng.below(seeds.len())];
        let (_, b) = &seeds[rng.below(seeds.len())];
        let mut input = mutate(&mut rng, a, b);
        // Mostly fix the checksum, so the body decoder sees the damage;
        // sometimes make the length field agree with the bytes too.
        if i % 4 != 0 {
            if input.len() >= 16 && rng.chance(3) {
                let len = (input.len() - 16) as u32;
                input[0..4].copy_from_slice(&len.to_le_bytes());
            }
            if input.len() >= 16 && rng.chance(8) {
                // A valid header shape: version 1, reserved 0, a known kind.
                input[12] = 1 + rng.below(4) as u8;
                input[13] = 1;
                input[14] = 0;
                input[15] = 0;
            }
            reseal(&mut input, *lsn);
        }
        let lim = if i % 5 == 0 { &device } else { &l };
        if RecordView::parse(&input, *lsn, lim).is_ok() {
            parsed += 1;
        }
        if check_record(&input, *lsn, lim, i % 8 == 0) {
            decoded += 1;
        }
        // Elsewhere, the same bytes never check.
        if i % 16 == 0 {
            let other = Lsn::new(lsn.file, lsn.offset + 1);
            assert!(RecordView::parse(&input, other, lim).is_err() || input.len() < 16);
        }
    }
    assert!(parsed > n / 4, "only {parsed} of {n} parsed");
    assert!(decoded > n / 20, "only {decoded} of {n} decoded");
    for (lsn, s) in &seeds {
        assert!(check_record(s, *lsn, &l, true));
    }
}

// -------------------------------------------------------------------- meta

#[test]
fn mutated_meta_never_panics() {
    let metas = [
        Meta::default(),
        Meta {
            site: SiteId(3),
            generation: Generation(9),
            egen: ElectionGen(11),
            voted_for: Some(SiteId(2)),
            init_in_progress: true,
        },
        Meta {
            site: SiteId(u32::MAX),
            generation: Generation(u32::MAX),
            egen: ElectionGen(u32::MAX),
            voted_for: None,
            init_in_progress: false,
        },
    ];
    let seeds: Vec<Vec<u8>> = metas.iter().map(|m| m.encode()).collect();
    for (m, b) in metas.iter().zip(&seeds) {
        assert_eq!(Meta::decode(b), Ok(*m));
    }
    let mut rng = Rng(0x3e7a);
    let n = 10_000 * scale();
    let mut ok = 0;
    let mut seen = std::collections::HashSet::new();
    for i in 0..n {
        let a = &seeds[rng.below(seeds.len())];
        let b = &seeds[rng.below(seeds.len())];
        let mut input = if i % 10 == 0 {
            let len = rng.below(24);
            rng.bytes(len)
        } else {
            mutate(&mut rng, a, b)
        };
        if i % 3 != 0 && input.len() >= 5 {
            let crc = shoal_core::crc::checksum(&input[5..]);
            input[1..5].copy_from_slice(&crc.to_le_bytes());
        }
        match Meta::decode(&input) {
            Ok(m) => {
                ok += 1;
                let again = m.encode();
                assert!(again.len() <= input.len());
                assert_eq!(Meta::decode(&again), Ok(m));
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                seen.insert(std::mem::discriminant(&e));
            }
        }
    }
    assert!(ok > 0);
    for e in [
        MetaError::Truncated,
        MetaError::BadVersion(0),
        MetaError::BadChecksum,
        MetaError::BadBody,
    ] {
        assert!(
            seen.contains(&std::mem::discriminant(&e)),
            "{e:?} never seen"
        );
    }
}

// ---------------------------------------------------------------- recovery

/// A segment of golden-like records, with its record boundaries.
fn segment_seed() -> (Vec<u8>, Vec<(Lsn, usize)>) {
    let l = Limits::default();
    let mut seg = SegmentHeader { number: 1 }.encode().to_vec();
    let mut recs = Vec::new();
    let mut rng = Rng(11);
    for i in 0..12u64 {
        let lsn = Lsn::new(1, seg.len() as u32);
        let key = rng.bytes_below(30);
        let value = rng.bytes_below(90);
        let ops = [
            Op::Put {
                db: "users",
                key: &key,
                value: &value,
            },
            Op::Delete {
                db: "orders",
                key: &value[..value.len().min(20)],
            },
        ];
        let body = match i % 4 {
            0 | 1 => RecordBody::Commit {
                txn_id: i,
                timestamp: Instant(i * 10),
                ops: &ops[..(i % 3) as usize],
            },
            2 => RecordBody::Checkpoint(shoal_core::log::Checkpoint {
                lsn: Lsn::new(1, 20),
                timestamp: Instant(i),
            }),
            _ => RecordBody::NewGeneration(shoal_core::log::NewGeneration {
                generation: Generation(i as u32),
                master: SiteId(2),
                timestamp: Instant(i),
            }),
        };
        let n = encode_record(lsn, Generation(3), &body, &mut seg, &l).unwrap();
        recs.push((lsn, n));
    }
    (seg, recs)
}

#[test]
fn recovery_of_mutated_segments_never_panics() {
    let l = Limits::default();
    let (seg, recs) = segment_seed();
    let mut rng = Rng(0x5e6);
    let n = 4_000 * scale();
    let mut partial = 0;
    for i in 0..n {
        let mut bytes = mutate(&mut rng, &seg, &seg);
        // Sometimes reseal a damaged record so it fails in its body, not
        // its checksum.
        if i % 2 == 0 {
            if let Some((lsn, _)) = recs.get(rng.below(recs.len())) {
                let at = lsn.offset as usize;
                if bytes.len() > at + 16 {
                    reseal(&mut bytes[at..], *lsn);
                }
            }
        }
        let mut s = MemStorage::new(1 << 24);
        s.create_segment(1).unwrap();
        s.append(1, &bytes).unwrap();
        if i % 7 == 0 {
            // A second segment: a copy of the mutated one, renumbered.
            let mut two = bytes.clone();
            if two.len() >= 20 {
                two[..20].copy_from_slice(&SegmentHeader { number: 2 }.encode());
            }
            s.create_segment(2).unwrap();
            s.append(2, &two).unwrap();
        }
        let r = recover(&mut s, &l).expect("MemStorage never fails here");
        // What survives is a prefix of the input and reads back whole.
        let kept = s.segment_mut(1).map(|v| v.clone()).unwrap_or_default();
        assert!(bytes.starts_with(&kept));
        let mut reader = LogReader::new(l);
        let mut lsn = r.first;
        let mut read = 0;
        while read < r.records {
            let (view, next) = reader.read(&mut s, lsn).expect("a recovered record reads");
            view.decode(&l).expect("a recovered record decodes");
            read += 1;
            lsn = next;
        }
        if read > 0 {
            // The reader ends where recovery says the log continues (or at
            // the end of the segment before an empty one).
            let switch = Lsn::new(lsn.file + 1, 20) == r.next;
            assert!(lsn == r.next || switch, "{lsn:?} vs {:?}", r.next);
        }
        let again = recover(&mut s, &l).unwrap();
        assert_eq!(again.records, r.records);
        assert_eq!((again.truncated_bytes, again.removed_segments), (0, 0));
        if r.records > 0 && r.records < recs.len() as u64 {
            partial += 1;
        }
    }
    assert!(partial > n / 4, "only {partial} partial recoveries");
}

// -------------------------------------------------------------- properties

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn op_strategy() -> impl Strategy<Value = (String, Vec<u8>, Option<Vec<u8>>)> {
        (
            "[a-z]{1,64}",
            proptest::collection::vec(any::<u8>(), 0..80),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any commit within the limits encodes at any LSN, checks only
        /// there, and decodes to the same ops.
        #[test]
        fn commits_round_trip(
            file in 1u32..,
            offset in 20u32..,
            generation in any::<u32>(),
            txn_id in any::<u64>(),
            ts in any::<u64>(),
            ops in proptest::collection::vec(op_strategy(), 0..12),
        ) {
            let l = Limits::default();
            let lsn = Lsn::new(file, offset);
            let ops: Vec<Op<'_>> = ops
                .iter()
                .map(|(db, key, value)| match value {
                    Some(value) => Op::Put { db, key, value },
                    None => Op::Delete { db, key },
                })
                .collect();
            let mut out = Vec::new();
            encode_record(
                lsn,
                Generation(generation),
                &RecordBody::Commit { txn_id, timestamp: Instant(ts), ops: &ops },
                &mut out,
                &l,
            )
            .unwrap();
            prop_assert!(check_record(&out, lsn, &l, true));
            let view = RecordView::parse(&out, lsn, &l).unwrap();
            let Record::Commit(c) = view.decode(&l).unwrap() else {
                panic!("not a commit")
            };
            let got: Vec<Op<'_>> = c.ops().map(|o| o.unwrap()).collect();
            prop_assert_eq!(got, ops);
            prop_assert_eq!((c.txn_id, c.timestamp), (txn_id, Instant(ts)));
            let other = Lsn::new(file, offset.wrapping_add(1));
            prop_assert!(RecordView::parse(&out, other, &l).is_err());
        }

        /// Any envelope with known flags and any fixed-size message round
        /// trips through a frame.
        #[test]
        fn frames_round_trip(
            from in any::<u32>(),
            generation in any::<u32>(),
            egen in any::<u32>(),
            file in any::<u32>(),
            offset in any::<u32>(),
            flags in 0u8..=wire::Flags::KNOWN,
            a in any::<u32>(),
            b in any::<u64>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            let l = Limits::default();
            let env = wire::Envelope {
                from: SiteId(from),
                generation: Generation(generation),
                egen: ElectionGen(egen),
                lsn: Lsn::new(file, offset),
                flags: wire::Flags(flags),
            };
            let msgs = [
                wire::Message::Ack { lsn: Lsn::new(a, file) },
                wire::Message::LeaseGrant { master_time: Instant(b) },
                wire::Message::ChannelResponse { request: b, part: &bytes },
                wire::Message::PageReq { db: "db", page: a },
                wire::Message::Vote2 { candidate: SiteId(a) },
            ];
            for msg in msgs {
                let mut out = Vec::new();
                wire::encode_frame(&env, &msg, &mut out, &l).unwrap();
                prop_assert!(check_frame(&out, &l));
                let (e2, m2) = wire::decode_frame(&out, &l).unwrap();
                prop_assert_eq!(e2, env);
                prop_assert_eq!(m2, msg);
            }
            // Unknown flags are refused both ways.
            let bad = wire::Envelope { flags: wire::Flags(flags | (wire::Flags::KNOWN + 1)), ..env };
            let mut out = Vec::new();
            prop_assert!(wire::encode_frame(&bad, &wire::Message::Heartbeat, &mut out, &l).is_err());
        }
    }
}
