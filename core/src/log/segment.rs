//! Segments: the header every segment starts with, the writer that appends
//! records and switches segments, and the reader.
//!
//! Segment header (20 bytes):
//!
//! ```text
//! offset size field
//!  0     8    magic "SHOALLOG"
//!  8     2    segment format version (1), u16 LE
//! 10     2    reserved, zero
//! 12     4    segment number, u32 LE
//! 16     4    CRC-32C of bytes 0..16, u32 LE
//! ```
//!
//! The first record of segment n is at LSN (n, 20).

use super::record::{encode_record, reseal, RecordBody, RecordView, RECORD_HEADER_LEN};
use super::{LogError, RecordError};
use crate::config::Limits;
use crate::ids::{Generation, Lsn};
use crate::traits::Storage;
use alloc::vec::Vec;

/// Length of a segment header; the offset of its first record.
pub const SEGMENT_HEADER_LEN: usize = 20;
/// Magic bytes at the start of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"SHOALLOG";
/// The segment format version this build writes and reads.
pub const SEGMENT_VERSION: u16 = 1;
/// The number of the first segment of a new log.
pub const FIRST_SEGMENT: u32 = 1;

/// The header at the start of a segment.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SegmentHeader {
    /// The segment's number.
    pub number: u32,
}

impl SegmentHeader {
    /// Encode the header.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut h = [0u8; SEGMENT_HEADER_LEN];
        h[0..8].copy_from_slice(&SEGMENT_MAGIC);
        h[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&self.number.to_le_bytes());
        let crc = crate::crc::checksum(&h[0..16]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Decode and check a header; `None` for anything malformed.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let h = bytes.get(..SEGMENT_HEADER_LEN)?;
        if h[0..8] != SEGMENT_MAGIC
            || u16::from_le_bytes([h[8], h[9]]) != SEGMENT_VERSION
            || h[10..12] != [0, 0]
        {
            return None;
        }
        let crc = u32::from_le_bytes([h[16], h[17], h[18], h[19]]);
        if crc != crate::crc::checksum(&h[0..16]) {
            return None;
        }
        Some(SegmentHeader {
            number: u32::from_le_bytes([h[12], h[13], h[14], h[15]]),
        })
    }
}

/// Appends records to the log: the master's own ([`LogWriter::append`]) and
/// those a client receives ([`LogWriter::append_raw`]), at the LSNs the
/// master gave them.
#[derive(Clone, Debug)]
pub struct LogWriter {
    next: Lsn,
    last: Lsn,
    last_generation: Generation,
    /// Whether segment `next.file` exists in storage yet.
    open: bool,
    limits: Limits,
    scratch: Vec<u8>,
    /// `scratch` holds the encoded record at `last` (the last write was an
    /// `append` of this site's own record).
    scratch_is_last: bool,
}

impl LogWriter {
    /// A writer continuing the log that recovery found.
    pub fn new(recovered: &super::Recovered, limits: Limits) -> Self {
        LogWriter {
            next: recovered.next,
            last: recovered.last,
            last_generation: recovered.last_generation,
            open: recovered.segment_open,
            limits,
            scratch: Vec::new(),
            scratch_is_last: false,
        }
    }

    /// Where the next record goes (unless it forces a segment switch).
    pub fn next_lsn(&self) -> Lsn {
        self.next
    }

    /// LSN of the last record, or [`Lsn::ZERO`] for an empty log.
    pub fn last_lsn(&self) -> Lsn {
        self.last
    }

    /// Generation of the last record (zero for an empty log).
    pub fn last_generation(&self) -> Generation {
        self.last_generation
    }

    fn place(&self, total: usize) -> Lsn {
        let end = self.next.offset as u64 + total as u64;
        if end > self.limits.segment_size as u64 && self.next.offset as usize > SEGMENT_HEADER_LEN {
            Lsn::new(self.next.file + 1, SEGMENT_HEADER_LEN as u32)
        } else {
            self.next
        }
    }

    fn write_at<S: Storage>(
        &mut self,
        s: &mut S,
        lsn: Lsn,
        record: &[u8],
        generation: Generation,
    ) -> Result<(), LogError<S::Error>> {
        self.scratch_is_last = false;
        let end = u32::try_from(record.len())
            .ok()
            .and_then(|n| lsn.offset.checked_add(n))
            .ok_or(LogError::Record(RecordError::BadLsn))?;
        if lsn.file != self.next.file || !self.open {
            if self.open {
                // Make the previous segment durable before the first byte
                // of the next one is written: a crash can then never keep
                // the start of segment n+1 and lose the tail of segment n,
                // whatever order the file system writes files back in
                // (recovery could not see such a hole). Once per segment.
                s.sync().map_err(LogError::Storage)?;
            }
            s.create_segment(lsn.file).map_err(LogError::Storage)?;
            let h = SegmentHeader { number: lsn.file }.encode();
            s.append(lsn.file, &h).map_err(LogError::Storage)?;
            self.open = true;
        }
        s.append(lsn.file, record).map_err(LogError::Storage)?;
        self.last = lsn;
        self.last_generation = generation;
        self.next = Lsn::new(lsn.file, end);
        Ok(())
    }

    /// Encode and append a record written by this site; returns its LSN.
    pub fn append<S: Storage>(
        &mut self,
        s: &mut S,
        generation: Generation,
        body: &RecordBody<'_, '_>,
    ) -> Result<Lsn, LogError<S::Error>> {
        let mut buf = core::mem::take(&mut self.scratch);
        buf.clear();
        let res = encode_record(self.next, generation, body, &mut buf, &self.limits)
            .map_err(LogError::Record)
            .and_then(|n| {
                let lsn = self.place(n);
                if lsn != self.next {
                    reseal(&mut buf, lsn);
                }
                self.write_at(s, lsn, &buf, generation).map(|_| lsn)
            });
        self.scratch = buf;
        self.scratch_is_last = res.is_ok();
        res
    }

    /// The encoded bytes of the record at `lsn`, if it is the one the last
    /// [`LogWriter::append`] wrote: the master ships it without reading it
    /// back from storage.
    pub fn last_appended(&self, lsn: Lsn) -> Option<&[u8]> {
        (self.scratch_is_last && lsn == self.last).then_some(self.scratch.as_slice())
    }

    /// Append a record received from the master at `lsn`. It must be the
    /// log's next position, or the first record of the next segment.
    pub fn append_raw<S: Storage>(
        &mut self,
        s: &mut S,
        lsn: Lsn,
        record: &[u8],
    ) -> Result<(), LogError<S::Error>> {
        let view = RecordView::parse(record, lsn, &self.limits)?;
        if view.bytes.len() != record.len() {
            return Err(LogError::Record(RecordError::BadBody));
        }
        // Recovery keeps only records whose body decodes; a record it would
        // drop (and every record after it with it) must not be written.
        view.decode(&self.limits)?;
        self.append_checked(s, &view)
    }

    /// Append a received record that was already checked in full (header,
    /// checksum at its LSN, body) at `view.lsn`, under the same rules as
    /// [`LogWriter::append_raw`]: a client applies what a frame brought
    /// without checksumming and decoding it again.
    pub(crate) fn append_checked<S: Storage>(
        &mut self,
        s: &mut S,
        view: &RecordView<'_>,
    ) -> Result<(), LogError<S::Error>> {
        let (lsn, record) = (view.lsn, view.bytes);
        let switch = lsn.file == self.next.file + 1
            && lsn.offset as usize == SEGMENT_HEADER_LEN
            && self.open;
        if lsn != self.next && !switch {
            return Err(LogError::OutOfOrder {
                expected: self.next,
                got: lsn,
            });
        }
        self.write_at(s, lsn, record, view.generation)
    }

    /// Remove every record at or after `at` (rollback, P2). `at` must be the
    /// LSN of a record in the log, the end of a segment, or the log's next
    /// position; anything else (inside a record, past the end) is
    /// [`LogError::BadTruncate`] and changes nothing. `prev` is the LSN of
    /// the record before `at` (zero if none) and its generation.
    pub fn truncate<S: Storage>(
        &mut self,
        s: &mut S,
        at: Lsn,
        prev: Lsn,
        prev_generation: Generation,
    ) -> Result<(), LogError<S::Error>> {
        if at > self.next || at.offset < SEGMENT_HEADER_LEN as u32 {
            return Err(LogError::BadTruncate(at));
        }
        if at != self.next && !self.is_boundary(s, at)? {
            return Err(LogError::BadTruncate(at));
        }
        for seg in s.segments().map_err(LogError::Storage)? {
            if seg > at.file {
                s.remove_segment(seg).map_err(LogError::Storage)?;
            }
        }
        if self.open || at.file < self.next.file {
            s.truncate(at.file, at.offset as u64)
                .map_err(LogError::Storage)?;
        }
        s.sync().map_err(LogError::Storage)?;
        self.open = self.open || at.file < self.next.file;
        self.next = at;
        self.last = prev;
        self.scratch_is_last = false;
        self.last_generation = prev_generation;
        Ok(())
    }

    /// Whether `at` (before the log's next position) is where a record
    /// starts or a segment ends: the record there must check at that LSN.
    fn is_boundary<S: Storage>(&self, s: &mut S, at: Lsn) -> Result<bool, LogError<S::Error>> {
        let Ok(len) = s.segment_len(at.file) else {
            return Ok(false);
        };
        if at.offset as u64 >= len {
            return Ok(at.offset as u64 == len);
        }
        let mut header = [0u8; RECORD_HEADER_LEN];
        let n = s
            .read(at.file, at.offset as u64, &mut header)
            .map_err(LogError::Storage)?;
        let Ok(total) = RecordView::total_len(&header[..n], &self.limits) else {
            return Ok(false);
        };
        let mut buf = alloc::vec![0u8; total];
        let n = s
            .read(at.file, at.offset as u64, &mut buf)
            .map_err(LogError::Storage)?;
        Ok(RecordView::parse(&buf[..n], at, &self.limits).is_ok())
    }

    /// Drop the whole log and continue it at `start`, the first LSN of a
    /// segment (internal initialisation, S6).
    pub fn restart_at<S: Storage>(
        &mut self,
        s: &mut S,
        start: Lsn,
    ) -> Result<(), LogError<S::Error>> {
        if start.offset as usize != SEGMENT_HEADER_LEN || start.file == 0 {
            return Err(LogError::BadTruncate(start));
        }
        for seg in s.segments().map_err(LogError::Storage)? {
            s.remove_segment(seg).map_err(LogError::Storage)?;
        }
        s.sync().map_err(LogError::Storage)?;
        self.next = start;
        self.last = Lsn::ZERO;
        self.scratch_is_last = false;
        self.last_generation = Generation(0);
        self.open = false;
        Ok(())
    }
}

/// Where the record at `lsn` starts: `lsn` itself, or the first record of
/// the next segment for an LSN at the very end of one.
fn record_start<S: Storage>(s: &mut S, lsn: Lsn) -> Result<Lsn, LogError<S::Error>> {
    let mut lsn = lsn;
    let len = s
        .segment_len(lsn.file)
        .map_err(|_| LogError::NotFound(lsn))?;
    if lsn.offset as u64 >= len {
        lsn = Lsn::new(lsn.file + 1, SEGMENT_HEADER_LEN as u32);
        if s.segment_len(lsn.file).is_err() {
            return Err(LogError::NotFound(lsn));
        }
    }
    if (lsn.offset as usize) < SEGMENT_HEADER_LEN {
        return Err(LogError::NotFound(lsn));
    }
    Ok(lsn)
}

/// Bytes [`LogReader::scan`] reads from storage at a time.
pub const SCAN_CHUNK: usize = 256 * 1024;

/// Reads records by LSN, through a buffer it owns.
#[derive(Clone, Debug)]
pub struct LogReader {
    limits: Limits,
    buf: Vec<u8>,
    /// [`LogReader::scan`]'s window: bytes of segment `win_file` from
    /// `win_off` on, as storage held them when read.
    win: Vec<u8>,
    win_file: u32,
    win_off: u64,
}

impl LogReader {
    /// A reader for logs within `limits`.
    pub fn new(limits: Limits) -> Self {
        LogReader {
            limits,
            buf: Vec::new(),
            win: Vec::new(),
            win_file: 0,
            win_off: 0,
        }
    }

    /// Like [`LogReader::read`], for reading the log in order: records come
    /// from a window read [`SCAN_CHUNK`] bytes at a time, not one or two
    /// storage reads each. The window is not told of writes: use it only
    /// while the log does not change, and [`LogReader::end_scan`] after.
    pub fn scan<S: Storage>(
        &mut self,
        s: &mut S,
        lsn: Lsn,
    ) -> Result<(RecordView<'_>, Lsn), LogError<S::Error>> {
        let lsn = record_start(s, lsn)?;
        let at = lsn.offset as u64;
        let held = |r: &Self, need: usize| {
            r.win_file == lsn.file
                && at >= r.win_off
                && at + need as u64 <= r.win_off + r.win.len() as u64
        };
        if !held(self, RECORD_HEADER_LEN) {
            self.fill(s, lsn, SCAN_CHUNK)?;
        }
        let rel = (at - self.win_off) as usize;
        if self.win.len() < rel + RECORD_HEADER_LEN {
            return Err(LogError::NotFound(lsn));
        }
        let total = RecordView::total_len(&self.win[rel..], &self.limits)?;
        if !held(self, total) {
            self.fill(s, lsn, total.max(SCAN_CHUNK))?;
        }
        let rel = (at - self.win_off) as usize;
        let have = self.win.len().saturating_sub(rel);
        if have < total {
            return Err(LogError::Record(RecordError::Truncated {
                need: total,
                have,
            }));
        }
        let next = Lsn::new(lsn.file, lsn.offset.saturating_add(total as u32));
        let view = RecordView::parse(&self.win[rel..rel + total], lsn, &self.limits)?;
        Ok((view, next))
    }

    /// Forget the scan window (the log may change from now on).
    pub fn end_scan(&mut self) {
        self.win = Vec::new();
        self.win_file = 0;
        self.win_off = 0;
    }

    fn fill<S: Storage>(
        &mut self,
        s: &mut S,
        lsn: Lsn,
        want: usize,
    ) -> Result<(), LogError<S::Error>> {
        self.win.clear();
        self.win.resize(want, 0);
        let n = s
            .read(lsn.file, lsn.offset as u64, &mut self.win)
            .map_err(LogError::Storage)?;
        self.win.truncate(n);
        self.win_file = lsn.file;
        self.win_off = lsn.offset as u64;
        Ok(())
    }

    /// Read the record at `lsn`. An LSN at the very end of a segment is read
    /// as the first record of the next one. Returns the record and the LSN
    /// just past it (the next record's LSN unless a segment switch follows).
    pub fn read<S: Storage>(
        &mut self,
        s: &mut S,
        lsn: Lsn,
    ) -> Result<(RecordView<'_>, Lsn), LogError<S::Error>> {
        let lsn = record_start(s, lsn)?;
        self.buf.clear();
        self.buf.resize(RECORD_HEADER_LEN, 0);
        let n = s
            .read(lsn.file, lsn.offset as u64, &mut self.buf)
            .map_err(LogError::Storage)?;
        if n < RECORD_HEADER_LEN {
            return Err(LogError::NotFound(lsn));
        }
        let total = RecordView::total_len(&self.buf, &self.limits)?;
        self.buf.resize(total, 0);
        let n = s
            .read(
                lsn.file,
                lsn.offset as u64 + RECORD_HEADER_LEN as u64,
                &mut self.buf[RECORD_HEADER_LEN..],
            )
            .map_err(LogError::Storage)?;
        if n < total - RECORD_HEADER_LEN {
            return Err(LogError::Record(RecordError::Truncated {
                need: total,
                have: RECORD_HEADER_LEN + n,
            }));
        }
        let next = Lsn::new(lsn.file, lsn.offset.saturating_add(total as u32));
        let view = RecordView::parse(&self.buf, lsn, &self.limits)?;
        Ok((view, next))
    }
}
