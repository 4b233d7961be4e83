//! A device without a file system keeps its log in memory: append commits,
//! "crash" by tearing the last record, recover, and read back what survived.

use shoal_core::log::record::RecordBody;
use shoal_core::log::{recover, LogReader, LogWriter, Op, Record};
use shoal_core::mem::MemStorage;
use shoal_core::{Generation, Instant, Limits};

fn main() {
    let limits = Limits::device();
    let mut storage = MemStorage::new(256 * 1024);
    let recovered = recover(&mut storage, &limits).expect("empty log recovers");
    let mut writer = LogWriter::new(&recovered, limits);
    for i in 0..5u32 {
        let key = i.to_le_bytes();
        let ops = [Op::Put {
            db: "sensors",
            key: &key,
            value: b"21.5C",
        }];
        let body = RecordBody::Commit {
            txn_id: i as u64,
            timestamp: Instant(i as u64),
            ops: &ops,
        };
        let lsn = writer
            .append(&mut storage, Generation(1), &body)
            .expect("append");
        println!("committed txn {i} at {lsn}");
    }
    // Tear the last record, as a power cut in the middle of a write would.
    let seg = storage.segment_mut(1).expect("segment 1");
    let len = seg.len();
    seg.truncate(len - 3);
    let recovered = recover(&mut storage, &limits).expect("recovery");
    println!(
        "recovered {} records, last at {}, cut {} torn bytes",
        recovered.records, recovered.last, recovered.truncated_bytes
    );
    let mut reader = LogReader::new(limits);
    let mut lsn = recovered.first;
    while lsn <= recovered.last && !lsn.is_zero() {
        let (view, next) = reader.read(&mut storage, lsn).expect("read");
        if let Ok(Record::Commit(c)) = view.decode(&limits) {
            println!("{lsn}: txn {} with {} op(s)", c.txn_id, c.len());
        }
        lsn = next;
    }
}
