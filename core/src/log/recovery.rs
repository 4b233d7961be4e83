//! Crash recovery: find the longest valid prefix of the log and cut the
//! rest.
//!
//! A record is valid when its header is well formed, its length is within
//! limits, its checksum matches its LSN and bytes, and its body decodes.
//! Recovery walks the segments in order and stops at the first invalid
//! record, missing segment number or bad segment header; that segment is
//! truncated there and every later segment removed. So the result is always
//! exactly the longest valid prefix, whatever a crash or a flipped bit left.
//!
//! Segments are read through a window of twice the largest record, so
//! recovery's memory is bounded by `Limits::max_record`, not by the segment
//! size, and a segment longer than the local `segment_size` (written at a
//! master's LSNs) is kept whole.

use super::record::{RecordView, RECORD_HEADER_LEN};
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
    // Segments are scanned through a window of two largest records, so
    // recovery needs that much memory whatever the segment size, and a
    // segment written with a larger `segment_size` (a client writes at its
    // master's LSNs) is read whole.
    let window = 2 * (limits.max_record as usize + RECORD_HEADER_LEN);
    let mut buf: Vec<u8> = Vec::new();
    let mut cut_from: Option<usize> = None; // index of the first segment to remove
    for (i, &seg) in segs.iter().enumerate() {
        if seg != first_seg.wrapping_add(i as u32) {
            cut_from = Some(i);
            break;
        }
        let len = s.segment_len(seg).map_err(LogError::Storage)?;
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        let n = s.read(seg, 0, &mut header).map_err(LogError::Storage)?;
        let header_ok = SegmentHeader::decode(&header[..n]).is_some_and(|h| h.number == seg);
        if !header_ok {
            cut_from = Some(i);
            break;
        }
        r.next = Lsn::new(seg, SEGMENT_HEADER_LEN as u32);
        r.segment_open = true;
        // An LSN offset is a u32: nothing past that can be a record.
        let end = len.min(u32::MAX as u64);
        let mut off = SEGMENT_HEADER_LEN as u64;
        // The window holds the segment's bytes from `win` on.
        let mut win = off;
        buf.clear();
        let mut torn = false;
        while off < end {
            let rel = (off - win) as usize;
            let win_end = win + buf.len() as u64;
            if win_end < end && buf.len() - rel < window / 2 {
                // Slide the window to start at `off`.
                let want = (end - off).min(window as u64) as usize;
                buf.clear();
                buf.resize(want, 0);
                let n = s.read(seg, off, &mut buf).map_err(LogError::Storage)?;
                buf.truncate(n);
                win = off;
                if n == 0 {
                    torn = true;
                    break;
                }
            }
            let rel = (off - win) as usize;
            let lsn = Lsn::new(seg, off as u32);
            let Ok(view) = RecordView::parse(&buf[rel..], lsn, limits) else {
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
            off += view.bytes.len() as u64;
            r.next = Lsn::new(seg, off as u32);
        }
        if torn || off < len {
            s.truncate(seg, off).map_err(LogError::Storage)?;
            r.truncated_bytes += len - off;
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
