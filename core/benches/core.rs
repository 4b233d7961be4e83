//! Benchmarks of shoal-core alone (issue 2, item 5): log append into
//! `MemStorage`, recovery scan, wire frame encode/decode, and the
//! checkpoint's store snapshot.
//!
//! Run with `cargo bench -p shoal-core --bench core`. The whole run is kept
//! to a couple of minutes: short warm-ups, 3 s measurements, small sample
//! counts for the slow recovery scan.
//!
//! Workload: commit records of puts with 16-byte keys and 100-byte values in
//! one database, either 1 op or 10 ops per commit.

use criterion::{
    criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use shoal_core::log::record::{encode_record, RecordBody};
use shoal_core::log::{recover, LogWriter, Op, Recovered};
use shoal_core::mem::MemStorage;
use shoal_core::wire::{decode_frame, encode_frame, BulkLog, Envelope, Flags, LogEntry, Message};
use shoal_core::{ElectionGen, Generation, Instant, Limits, Lsn, SiteId};
use std::hint::black_box;
use std::time::Duration;

const KEY_LEN: usize = 16;
const VALUE_LEN: usize = 100;
const DB: &str = "bench";
const GEN: Generation = Generation(7);
/// First txn id / timestamp: large enough that their varints keep the same
/// length over a run, so every record has the same size.
const TXN_BASE: u64 = 1 << 40;
const TS_BASE: u64 = 1_700_000_000_000_000;

/// Appends between storage resets: well under the 16 MiB default segment,
/// so no segment switch happens inside a timed stretch.
const APPEND_CHUNK_BYTES: usize = 8 << 20;
/// MemStorage capacity for the append benchmarks: never reached.
const APPEND_CAPACITY: usize = 64 << 20;

/// Size of the prepared log for the recovery scan, and its segment size.
const RECOVERY_LOG_BYTES: usize = 32 << 20;
const RECOVERY_SEGMENT: u32 = 4 << 20;

/// Records in the BULK_LOG message.
const BULK_RECORDS: usize = 64;

/// Keys and values for one commit of `n` puts; key `i` ends with a counter
/// that [`Payload::stamp`] sets.
struct Payload {
    keys: Vec<[u8; KEY_LEN]>,
    value: [u8; VALUE_LEN],
}

impl Payload {
    fn new(n: usize) -> Self {
        let keys = (0..n)
            .map(|i| {
                let mut k = [0u8; KEY_LEN];
                k[..4].copy_from_slice(b"key-");
                k[4] = i as u8;
                k
            })
            .collect();
        let mut value = [0u8; VALUE_LEN];
        for (i, b) in value.iter_mut().enumerate() {
            *b = (i * 31 + 7) as u8;
        }
        Payload { keys, value }
    }

    /// Stamp transaction `txn` into the keys.
    fn stamp(&mut self, txn: u64) {
        for k in &mut self.keys {
            k[8..].copy_from_slice(&txn.to_be_bytes());
        }
    }

    fn ops(&self) -> Vec<Op<'_>> {
        self.keys
            .iter()
            .map(|k| Op::Put {
                db: DB,
                key: k,
                value: &self.value,
            })
            .collect()
    }
}

fn commit_body<'x, 'a>(txn: u64, ops: &'x [Op<'a>]) -> RecordBody<'x, 'a> {
    RecordBody::Commit {
        txn_id: TXN_BASE + txn,
        timestamp: Instant(TS_BASE + txn),
        ops,
    }
}

/// Size in bytes (header included) of one commit record of `n` ops.
fn record_len(n: usize, limits: &Limits) -> usize {
    let mut p = Payload::new(n);
    p.stamp(0);
    let ops = p.ops();
    let mut out = Vec::new();
    encode_record(
        Lsn::new(1, 20),
        GEN,
        &commit_body(0, &ops),
        &mut out,
        limits,
    )
    .unwrap()
}

/// One append benchmark: each criterion iteration is one `LogWriter::append`
/// of an `n`-op commit. The storage is cut back to an empty segment 1 every
/// `APPEND_CHUNK_BYTES`, outside the timed stretch; the cut keeps the
/// segment's `Vec` capacity, so after warm-up the timing is the core's
/// encode + checksum + copy, not allocator growth or a segment switch.
fn bench_append(c: &mut Criterion, group: &str, n: usize, bytes: bool) {
    let limits = Limits::default();
    let len = record_len(n, &limits);
    let chunk = (APPEND_CHUNK_BYTES / len) as u64;
    let mut g = c.benchmark_group(group);
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    g.throughput(if bytes {
        Throughput::Bytes(len as u64)
    } else {
        Throughput::Elements(1)
    });
    let name = if n == 1 {
        "commit_1op".to_string()
    } else {
        format!("commit_{n}ops")
    };
    g.bench_function(BenchmarkId::from_parameter(name), |b| {
        let mut s = MemStorage::new(APPEND_CAPACITY);
        let mut w = LogWriter::new(&Recovered::empty(), limits);
        // The keys stay the same from commit to commit (only the txn id and
        // timestamp change), so the timed loop allocates nothing of its own.
        let p = Payload::new(n);
        let ops = p.ops();
        let mut txn = 0u64;
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let batch = left.min(chunk);
                w.truncate(&mut s, Lsn::new(1, 20), Lsn::ZERO, Generation(0))
                    .unwrap();
                let start = std::time::Instant::now();
                for _ in 0..batch {
                    txn = (txn + 1) & 0xffff_ffff;
                    let body = commit_body(txn, &ops);
                    black_box(w.append(&mut s, GEN, black_box(&body)).unwrap());
                }
                total += start.elapsed();
                left -= batch;
            }
            total
        });
        assert_eq!(w.next_lsn().file, 1, "a segment switch happened");
    });
    g.finish();
}

fn log_append(c: &mut Criterion) {
    bench_append(c, "log_append", 1, false);
    bench_append(c, "log_append", 10, false);
}

fn log_append_bytes(c: &mut Criterion) {
    bench_append(c, "log_append_bytes", 1, true);
    bench_append(c, "log_append_bytes", 10, true);
}

/// A log of about `RECOVERY_LOG_BYTES` of `n`-op commits over several
/// `RECOVERY_SEGMENT`-byte segments.
fn prepared_log(n: usize, limits: &Limits) -> (MemStorage, u64) {
    let mut s = MemStorage::new(RECOVERY_LOG_BYTES * 2);
    let mut w = LogWriter::new(&Recovered::empty(), *limits);
    let mut p = Payload::new(n);
    let mut txn = 0u64;
    while s.used() < RECOVERY_LOG_BYTES {
        txn += 1;
        p.stamp(txn);
        let ops = p.ops();
        w.append(&mut s, GEN, &commit_body(txn, &ops)).unwrap();
    }
    (s, txn)
}

fn recovery(c: &mut Criterion) {
    let limits = Limits {
        segment_size: RECOVERY_SEGMENT,
        ..Limits::default()
    };
    limits.validate().unwrap();
    // One scan takes ~0.1 s: flat sampling keeps 10 samples within ~6 s.
    let mut g = c.benchmark_group("recovery_scan");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10);
    for n in [1usize, 10] {
        let (mut s, records) = prepared_log(n, &limits);
        let bytes = s.used() as u64;
        // A valid log: recovery only reads, so the same storage serves
        // every iteration.
        let r = recover(&mut s, &limits).unwrap();
        assert_eq!(r.records, records);
        assert_eq!((r.truncated_bytes, r.removed_segments), (0, 0));
        eprintln!(
            "recovery_scan setup: {n}-op commits, {records} records, {bytes} bytes, {} segments",
            r.next.file
        );
        g.throughput(Throughput::Bytes(bytes));
        let name = if n == 1 {
            "32MiB_commit_1op".to_string()
        } else {
            format!("32MiB_commit_{n}ops")
        };
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| black_box(recover(&mut s, &limits).unwrap()))
        });
    }
    g.finish();
}

fn envelope(lsn: Lsn, flags: Flags) -> Envelope {
    Envelope {
        from: SiteId(1),
        generation: GEN,
        egen: ElectionGen(7),
        lsn,
        flags,
    }
}

fn wire(c: &mut Criterion) {
    let limits = Limits::default();
    let mut p = Payload::new(1);

    // LOG: one 1-op commit record.
    let log_lsn = Lsn::new(3, 4096);
    let prev = Lsn::new(3, 3950);
    p.stamp(1);
    let ops = p.ops();
    let mut record = Vec::new();
    encode_record(log_lsn, GEN, &commit_body(1, &ops), &mut record, &limits).unwrap();
    drop(ops);

    // BULK_LOG: BULK_RECORDS such records at consecutive LSNs.
    let mut records = Vec::new();
    let mut lsn = Lsn::new(3, 20);
    let mut prev_lsn = Lsn::new(2, 16_000_000);
    for i in 0..BULK_RECORDS as u64 {
        p.stamp(100 + i);
        let ops = p.ops();
        let mut rec = Vec::new();
        encode_record(lsn, GEN, &commit_body(100 + i, &ops), &mut rec, &limits).unwrap();
        let next = Lsn::new(lsn.file, lsn.offset + rec.len() as u32);
        records.push((lsn, prev_lsn, rec));
        prev_lsn = lsn;
        lsn = next;
    }
    let mut bulk_bytes = Vec::new();
    for (lsn, prev, rec) in &records {
        let e = LogEntry {
            lsn: *lsn,
            prev: *prev,
            record: rec,
        };
        bulk_bytes = postcard::to_extend(&e, bulk_bytes).unwrap();
    }

    let cases: [(&str, Envelope, Message<'_>); 4] = [
        (
            "log_commit_1op",
            envelope(prev, Flags::PERMANENT),
            Message::Log(LogEntry {
                lsn: log_lsn,
                prev,
                record: &record,
            }),
        ),
        (
            "heartbeat",
            envelope(log_lsn, Flags::NONE),
            Message::Heartbeat,
        ),
        (
            "ack",
            envelope(log_lsn, Flags::NONE),
            Message::Ack { lsn: log_lsn },
        ),
        (
            "bulk_log_64",
            envelope(prev_lsn, Flags::NONE),
            Message::BulkLog(BulkLog {
                count: BULK_RECORDS as u32,
                bytes: &bulk_bytes,
            }),
        ),
    ];

    let mut frames = Vec::new();
    for (name, env, msg) in &cases {
        let mut f = Vec::new();
        encode_frame(env, msg, &mut f, &limits).unwrap();
        {
            let (e2, m2) = decode_frame(&f, &limits).unwrap();
            assert_eq!((&e2, &m2), (env, msg));
        }
        eprintln!("wire setup: {name} frame is {} bytes", f.len());
        frames.push(f);
    }

    let mut g = c.benchmark_group("wire_encode");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .throughput(Throughput::Elements(1));
    for (name, env, msg) in &cases {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            let mut out = Vec::with_capacity(64 << 10);
            b.iter(|| {
                out.clear();
                black_box(encode_frame(black_box(env), black_box(msg), &mut out, &limits).unwrap());
                black_box(&out);
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("wire_decode");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
        .throughput(Throughput::Elements(1));
    for ((name, _, _), frame) in cases.iter().zip(&frames) {
        g.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| black_box(decode_frame(black_box(frame), &limits).unwrap()))
        });
    }
    g.finish();
}

/// Keys in the store whose snapshot is encoded.
const SNAPSHOT_KEYS: u32 = 100_000;

/// A checkpoint's store snapshot (R8): it is encoded under the site's lock,
/// so its time is a pause of the whole site, growing with the store.
fn snapshot(c: &mut Criterion) {
    let mut store = shoal_core::store::Store::new();
    let value = [b'v'; VALUE_LEN];
    for i in 0..SNAPSHOT_KEYS {
        let mut key = [b'k'; KEY_LEN];
        key[KEY_LEN - 4..].copy_from_slice(&i.to_be_bytes());
        store.apply_op(&Op::Put {
            db: DB,
            key: &key,
            value: &value,
        });
    }
    let mut members = shoal_core::site::members::Members::default();
    members.apply(&shoal_core::log::Membership {
        action: shoal_core::log::MemberAction::Add,
        site: SiteId(1),
        address: "127.0.0.1:7000",
        flags: 0,
    });
    let mut g = c.benchmark_group("snapshot_encode");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .throughput(Throughput::Elements(u64::from(SNAPSHOT_KEYS)));
    g.bench_function(BenchmarkId::from_parameter("100k_keys"), |b| {
        b.iter(|| {
            black_box(shoal_core::snapshot::encode(
                Lsn::new(1, 64),
                GEN,
                black_box(&store),
                &members,
            ))
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().nresamples(20_000);
    targets = log_append, log_append_bytes, recovery, wire, snapshot
}
criterion_main!(benches);
