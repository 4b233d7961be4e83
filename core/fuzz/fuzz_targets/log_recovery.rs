//! Fuzz log recovery. The input is read as a list of records to write
//! (kind byte, length byte, body bytes), each sealed with a valid header
//! and checksum at its LSN so the fuzzer reaches the body decoder, followed
//! by raw bytes appended to the segment (a torn or garbage tail). The log
//! is recovered from `MemStorage`; nothing may panic, what survives must be
//! a prefix of the input that reads back record by record, and a second
//! recovery must change nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_core::config::Limits;
use shoal_core::ids::Lsn;
use shoal_core::log::record::{reseal, RecordBody, RECORD_HEADER_LEN};
use shoal_core::log::segment::{SegmentHeader, SEGMENT_HEADER_LEN};
use shoal_core::log::{recover, LogReader, LogWriter};
use shoal_core::mem::MemStorage;
use shoal_core::traits::Storage;

fuzz_target!(|data: &[u8]| {
    let l = Limits::device();
    let mut seg = SegmentHeader { number: 1 }.encode().to_vec();
    let mut rest = data;
    // Records: [kind, body length, body...] while the input lasts and the
    // first byte is not 0xff (which starts the raw tail).
    while rest.len() >= 2 && rest[0] != 0xff {
        let kind = rest[0] % 6; // 1..=4 are known kinds; 0 and 5 are not
        let len = rest[1] as usize;
        rest = &rest[2..];
        let body = &rest[..len.min(rest.len())];
        rest = &rest[body.len()..];
        let lsn = Lsn::new(1, seg.len() as u32);
        let start = seg.len();
        seg.extend_from_slice(&(body.len() as u32).to_le_bytes());
        seg.extend_from_slice(&[0; 4]); // checksum, sealed below
        seg.extend_from_slice(&7u32.to_le_bytes()); // generation
        seg.extend_from_slice(&[kind, 1, 0, 0]);
        seg.extend_from_slice(body);
        reseal(&mut seg[start..], lsn);
        debug_assert_eq!(seg.len() - start, RECORD_HEADER_LEN + body.len());
    }
    if rest.first() == Some(&0xff) {
        seg.extend_from_slice(&rest[1..]);
    }
    let mut s = MemStorage::new(1 << 24);
    s.create_segment(1).unwrap();
    s.append(1, &seg).unwrap();
    let r = match recover(&mut s, &l) {
        Ok(r) => r,
        Err(e) => panic!("MemStorage recovery failed: {e}"),
    };
    let kept = s.segment_mut(1).map(|v| v.clone()).unwrap_or_default();
    assert!(
        seg.starts_with(&kept),
        "recovery kept something that was not there"
    );
    assert!(kept.len() >= SEGMENT_HEADER_LEN);
    let mut reader = LogReader::new(l);
    let mut lsn = r.first;
    for _ in 0..r.records {
        let (view, next) = reader.read(&mut s, lsn).expect("a recovered record reads");
        view.decode(&l).expect("a recovered record decodes");
        lsn = next;
    }
    if r.records > 0 {
        assert_eq!(lsn, r.next);
    }
    let again = recover(&mut s, &l).unwrap();
    assert_eq!(again.records, r.records);
    assert_eq!((again.truncated_bytes, again.removed_segments), (0, 0));
    // The writer continues the recovered log.
    let mut w = LogWriter::new(&r, l);
    let cp = shoal_core::log::Checkpoint {
        lsn: r.last,
        timestamp: shoal_core::ids::Instant(1),
    };
    let at = w
        .append(
            &mut s,
            shoal_core::ids::Generation(8),
            &RecordBody::Checkpoint(cp),
        )
        .expect("append after recovery");
    let after = recover(&mut s, &l).unwrap();
    assert_eq!(after.records, r.records + 1);
    assert_eq!(after.last, at);
});
