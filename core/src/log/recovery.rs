//! Crash recovery: find the longest valid prefix of the log and cut the
//! rest.
//!
//! A record is valid when its header is well formed, its length is within
//! limits, its checksum matches its LSN and bytes, and its body decodes.
//! Recovery walks the segments in order and stops at the first invalid
//! record, missing segment number or bad segment header; that segment is
//! truncated there and every later segment removed. So the result is always
//! exactly the longest valid prefix, whatever a crash or a flipped bit left.

use super::record::RecordView;
use super::segment::{SegmentHeader, FIRST_SEGMENT, SEGMENT_HEADER_LEN};
use super::LogError;
use crate::config::Limits;
use crate::ids::{Generation, Lsn};
use crate::traits::Storage;
use alloc::vec::Vec;

/// What recovery found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Recovered {
    /// LSN of the first record, or zero for an empty log.
    pub first: Lsn,
    /// LSN of the last valid record, or zero for an empty log.
    pub last: Lsn,
    /// Generation of the last valid record (zero for an empty log).
    pub last_generation: Generation,
    /// Where the next record goes.
    pub next: Lsn,
    /// Whether segment `next.file` exists.
    pub segment_open: bool,
    /// Valid records found.
    pub records: u64,
    /// Bytes cut from the tail.
    pub truncated_bytes: u64,
    /// Segments removed after the cut.
    pub removed_segments: u32,
}

impl Recovered {
    /// What an empty log recovers to.
    pub fn empty() -> Self {
        Recovered {
            first: Lsn::ZERO,
            last: Lsn::ZERO,
            last_generation: Generation(0),
            next: Lsn::new(FIRST_SEGMENT, SEGMENT_HEADER_LEN as u32),
            segment_open: false,
            records: 0,
            truncated_bytes: 0,
            removed_segments: 0,
        }
    }
}

/// Recover the log in `s`: validate every record, truncate a torn or
/// corrupt tail, and say where the log continues.
pub fn recover<S: Storage>(s: &mut S, limits: &Limits) -> Result<Recovered, LogError<S::Error>> {
    let segs = s.segments().map_err(LogError::Storage)?;
    let mut r = Recovered::empty();
    let Some(&first_seg) = segs.first() else {
        return Ok(r);
    };
    r.next = Lsn::new(first_seg, SEGMENT_HEADER_LEN as u32);
    let mut buf: Vec<u8> = Vec::new();
    let mut cut_from: Option<usize> = None; // index of the first segment to remove
    for (i, &seg) in segs.iter().enumerate() {
        if seg != first_seg.wrapping_add(i as u32) {
            cut_from = Some(i);
            break;
        }
        let len = s.segment_len(seg).map_err(LogError::Storage)?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        // A valid segment never holds more than this; read no further and
        // let the scan cut the rest.
        let want = len.min(limits.segment_size as usize + limits.max_record as usize + 64);
        buf.clear();
        buf.resize(want, 0);
        let n = s.read(seg, 0, &mut buf).map_err(LogError::Storage)?;
        buf.truncate(n);
        let header_ok = SegmentHeader::decode(&buf).is_some_and(|h| h.number == seg);
        if !header_ok {
            cut_from = Some(i);
            break;
        }
        r.next = Lsn::new(seg, SEGMENT_HEADER_LEN as u32);
        r.segment_open = true;
        let mut off = SEGMENT_HEADER_LEN;
        let mut torn = false;
        while off < buf.len() {
            let lsn = Lsn::new(seg, off as u32);
            let Ok(view) = RecordView::parse(&buf[off..], lsn, limits) else {
                torn = true;
                break;
            };
            if view.decode(limits).is_err() {
                torn = true;
                break;
            }
            if r.first.is_zero() {
                r.first = lsn;
            }
            r.last = lsn;
            r.last_generation = view.generation;
            r.records += 1;
            off += view.bytes.len();
            r.next = Lsn::new(seg, off as u32);
        }
        if torn || off < len {
            s.truncate(seg, off as u64).map_err(LogError::Storage)?;
            r.truncated_bytes += (len - off) as u64;
            cut_from = Some(i + 1);
            break;
        }
    }
    if let Some(from) = cut_from {
        for &seg in &segs[from..] {
            let len = s.segment_len(seg).map_err(LogError::Storage)?;
            r.truncated_bytes += len;
            s.remove_segment(seg).map_err(LogError::Storage)?;
            r.removed_segments += 1;
        }
    }
    if r.truncated_bytes > 0 || r.removed_segments > 0 {
        s.sync().map_err(LogError::Storage)?;
    }
    Ok(r)
}
