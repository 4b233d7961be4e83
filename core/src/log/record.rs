//! The log record format.
//!
//! ```text
//! offset size field
//!  0     4    body length N, u32 little-endian (<= Limits::max_record)
//!  4     4    CRC-32C, u32 LE, over the record's LSN (file u32 LE, offset
//!             u32 LE) followed by bytes 8 .. 16+N of the record
//!  8     4    generation of the master that wrote it, u32 LE
//! 12     1    kind (RecordKind)
//! 13     1    format version (1)
//! 14     2    reserved, zero
//! 16     N    body, postcard-encoded, its layout set by the kind
//! ```
//!
//! Folding the LSN into the checksum means a record copied to the wrong
//! place is as invalid as a torn one. [`RecordView`] is the raw, checked
//! view of the bytes; [`Record`] is the decoded, validated representation.

use super::RecordError;
use crate::config::{caps, Limits};
use crate::ids::{Generation, Instant, Lsn, SiteId};
use alloc::vec::Vec;
use core::fmt;
use serde::{Deserialize, Serialize};

/// Length of the fixed record header.
pub const RECORD_HEADER_LEN: usize = 16;
/// The record format version this build writes and reads.
pub const RECORD_VERSION: u8 = 1;

/// What a record is; the header's kind byte.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum RecordKind {
    /// A transaction commit carrying its operations.
    Commit = 1,
    /// A checkpoint: the store is durable up to an LSN.
    Checkpoint = 2,
    /// A group-membership change.
    Membership = 3,
    /// A new master took a generation.
    NewGeneration = 4,
}

impl RecordKind {
    /// The kind for a header byte.
    pub fn from_u8(b: u8) -> Result<Self, RecordError> {
        Ok(match b {
            1 => RecordKind::Commit,
            2 => RecordKind::Checkpoint,
            3 => RecordKind::Membership,
            4 => RecordKind::NewGeneration,
            other => return Err(RecordError::UnknownKind(other)),
        })
    }
}

/// One operation of a transaction.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Op<'a> {
    /// Set `key` to `value` in database `db`.
    Put {
        /// Database name.
        db: &'a str,
        /// Key.
        #[serde(with = "serde_bytes")]
        key: &'a [u8],
        /// Value.
        #[serde(with = "serde_bytes")]
        value: &'a [u8],
    },
    /// Remove `key` from database `db`.
    Delete {
        /// Database name.
        db: &'a str,
        /// Key.
        #[serde(with = "serde_bytes")]
        key: &'a [u8],
    },
}

impl<'a> Op<'a> {
    /// The database this op touches.
    pub fn db(&self) -> &'a str {
        match self {
            Op::Put { db, .. } | Op::Delete { db, .. } => db,
        }
    }

    /// The key this op touches.
    pub fn key(&self) -> &'a [u8] {
        match self {
            Op::Put { key, .. } | Op::Delete { key, .. } => key,
        }
    }

    /// Check the op's sizes against the limits.
    pub fn check(&self, limits: &Limits) -> Result<(), RecordError> {
        if self.db().is_empty() || self.db().len() > caps::MAX_DB_NAME {
            return Err(RecordError::LimitExceeded("database name"));
        }
        if self.key().len() > limits.max_key as usize {
            return Err(RecordError::LimitExceeded("key"));
        }
        if let Op::Put { value, .. } = self {
            if value.len() > limits.max_value as usize {
                return Err(RecordError::LimitExceeded("value"));
            }
        }
        Ok(())
    }
}

/// A commit record: one transaction's operations, applied atomically.
///
/// Body layout (postcard): txn id (varint u64), timestamp in µs (varint
/// u64), op count (varint), then each [`Op`]. The ops stay encoded and are
/// decoded one at a time by [`Commit::ops`], so decoding never allocates.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Commit<'a> {
    /// Transaction id, unique per master generation.
    pub txn_id: u64,
    /// When the master committed it (host clock, µs).
    pub timestamp: Instant,
    count: u32,
    ops: &'a [u8],
}

#[derive(Serialize)]
struct CommitOut<'x, 'a> {
    txn_id: u64,
    timestamp: Instant,
    ops: &'x [Op<'a>],
}

impl<'a> Commit<'a> {
    /// Number of operations.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when the commit has no operations.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The operations, decoded one at a time. A commit that came out of
    /// [`RecordView::decode`] has had every op checked already, so the
    /// iterator yields no errors for it.
    pub fn ops(&self) -> OpIter<'a> {
        OpIter {
            left: self.count,
            rest: self.ops,
        }
    }

    /// The commit's header, its operations left encoded and unchecked:
    /// for a body [`Commit::decode`] already accepted.
    fn decode_header(body: &'a [u8], limits: &Limits) -> Result<Self, RecordError> {
        let (txn_id, rest) =
            postcard::take_from_bytes::<u64>(body).map_err(|_| RecordError::BadBody)?;
        let (timestamp, rest) =
            postcard::take_from_bytes::<Instant>(rest).map_err(|_| RecordError::BadBody)?;
        let (count, ops) =
            postcard::take_from_bytes::<u32>(rest).map_err(|_| RecordError::BadBody)?;
        if count > limits.max_txn_ops {
            return Err(RecordError::LimitExceeded("operation count"));
        }
        Ok(Commit {
            txn_id,
            timestamp,
            count,
            ops,
        })
    }

    fn decode(body: &'a [u8], limits: &Limits) -> Result<Self, RecordError> {
        let (txn_id, rest) =
            postcard::take_from_bytes::<u64>(body).map_err(|_| RecordError::BadBody)?;
        let (timestamp, rest) =
            postcard::take_from_bytes::<Instant>(rest).map_err(|_| RecordError::BadBody)?;
        let (count, ops) =
            postcard::take_from_bytes::<u32>(rest).map_err(|_| RecordError::BadBody)?;
        if count > limits.max_txn_ops {
            return Err(RecordError::LimitExceeded("operation count"));
        }
        let commit = Commit {
            txn_id,
            timestamp,
            count,
            ops,
        };
        let mut it = commit.ops();
        for op in &mut it {
            op?.check(limits)?;
        }
        if !it.rest.is_empty() {
            return Err(RecordError::BadBody);
        }
        Ok(commit)
    }
}

impl fmt::Debug for Commit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Commit")
            .field("txn_id", &self.txn_id)
            .field("timestamp", &self.timestamp)
            .field("ops", &DebugOps(*self))
            .finish()
    }
}

struct DebugOps<'a>(Commit<'a>);
impl fmt::Debug for DebugOps<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.ops()).finish()
    }
}

/// Iterator over a commit's operations.
pub struct OpIter<'a> {
    left: u32,
    rest: &'a [u8],
}

impl<'a> Iterator for OpIter<'a> {
    type Item = Result<Op<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        match postcard::take_from_bytes::<Op<'a>>(self.rest) {
            Ok((op, rest)) => {
                self.rest = rest;
                Some(Ok(op))
            }
            Err(_) => {
                self.left = 0;
                Some(Err(RecordError::BadBody))
            }
        }
    }
}

/// A checkpoint: the site's store is durable up to `lsn`, so recovery and
/// internal initialisation can start there and older segments can go (R8).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every record up to and including this LSN is reflected in the store.
    pub lsn: Lsn,
    /// When the checkpoint was taken (host clock, µs).
    pub timestamp: Instant,
}

/// What a membership record does.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum MemberAction {
    /// A site joins the group.
    Add,
    /// A site leaves the group.
    Remove,
    /// A site's address or flags change.
    Update,
}

/// A group-membership change, replicated like data (R7).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Membership<'a> {
    /// Add, remove or update.
    pub action: MemberAction,
    /// The site concerned.
    pub site: SiteId,
    /// Its address (empty on remove).
    pub address: &'a str,
    /// Site flags: [`Membership::VIEW`].
    pub flags: u8,
}

impl Membership<'_> {
    /// The site is a view (R12): it never votes, acks or becomes master.
    pub const VIEW: u8 = 1;
}

/// Written by a site when it becomes master: the first record of its
/// generation.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NewGeneration {
    /// The generation the master took.
    pub generation: Generation,
    /// The new master.
    pub master: SiteId,
    /// When (host clock, µs).
    pub timestamp: Instant,
}

/// A decoded, validated log record body.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Record<'a> {
    /// A transaction commit.
    Commit(Commit<'a>),
    /// A checkpoint.
    Checkpoint(Checkpoint),
    /// A membership change.
    Membership(Membership<'a>),
    /// A new master's generation.
    NewGeneration(NewGeneration),
}

impl Record<'_> {
    /// The record's kind.
    pub fn kind(&self) -> RecordKind {
        match self {
            Record::Commit(_) => RecordKind::Commit,
            Record::Checkpoint(_) => RecordKind::Checkpoint,
            Record::Membership(_) => RecordKind::Membership,
            Record::NewGeneration(_) => RecordKind::NewGeneration,
        }
    }
}

/// What to write: a record body before encoding. Commits are given as a
/// slice of ops (the encoded form is [`Commit`]).
#[derive(Clone, Copy, Debug)]
pub enum RecordBody<'x, 'a> {
    /// A commit of these ops.
    Commit {
        /// Transaction id.
        txn_id: u64,
        /// Commit time.
        timestamp: Instant,
        /// The operations.
        ops: &'x [Op<'a>],
    },
    /// A checkpoint.
    Checkpoint(Checkpoint),
    /// A membership change.
    Membership(Membership<'a>),
    /// A new generation.
    NewGeneration(NewGeneration),
}

impl<'x, 'a> RecordBody<'x, 'a> {
    /// The kind this body encodes as.
    pub fn kind(&self) -> RecordKind {
        match self {
            RecordBody::Commit { .. } => RecordKind::Commit,
            RecordBody::Checkpoint(_) => RecordKind::Checkpoint,
            RecordBody::Membership(_) => RecordKind::Membership,
            RecordBody::NewGeneration(_) => RecordKind::NewGeneration,
        }
    }

    /// The body to re-encode a decoded record (ops are re-collected).
    pub fn encode_to(&self, out: &mut Vec<u8>, limits: &Limits) -> Result<(), RecordError> {
        let start = out.len();
        let res = match self {
            RecordBody::Commit {
                txn_id,
                timestamp,
                ops,
            } => {
                if ops.len() > limits.max_txn_ops as usize {
                    return Err(RecordError::LimitExceeded("operation count"));
                }
                for op in ops.iter() {
                    op.check(limits)?;
                }
                postcard::to_extend(
                    &CommitOut {
                        txn_id: *txn_id,
                        timestamp: *timestamp,
                        ops,
                    },
                    core::mem::take(out),
                )
            }
            RecordBody::Checkpoint(c) => postcard::to_extend(c, core::mem::take(out)),
            RecordBody::Membership(m) => {
                if m.address.len() > caps::MAX_ADDRESS {
                    return Err(RecordError::LimitExceeded("site address"));
                }
                postcard::to_extend(m, core::mem::take(out))
            }
            RecordBody::NewGeneration(g) => postcard::to_extend(g, core::mem::take(out)),
        };
        match res {
            Ok(v) => {
                *out = v;
                if out.len() - start > limits.max_record as usize {
                    let len = (out.len() - start) as u32;
                    out.truncate(start);
                    return Err(RecordError::TooLong {
                        len,
                        max: limits.max_record,
                    });
                }
                Ok(())
            }
            // postcard's Vec flavour only fails on allocation, which aborts
            // instead; treat any error as a body we cannot encode.
            Err(_) => Err(RecordError::BadBody),
        }
    }
}

/// Encode a whole record (header + body) for `lsn`, appending to `out`.
/// Returns the record's total length.
pub fn encode_record(
    lsn: Lsn,
    generation: Generation,
    body: &RecordBody<'_, '_>,
    out: &mut Vec<u8>,
    limits: &Limits,
) -> Result<usize, RecordError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN]);
    if let Err(e) = body.encode_to(out, limits) {
        out.truncate(start);
        return Err(e);
    }
    let body_len = (out.len() - start - RECORD_HEADER_LEN) as u32;
    let rec = &mut out[start..];
    rec[0..4].copy_from_slice(&body_len.to_le_bytes());
    rec[8..12].copy_from_slice(&generation.0.to_le_bytes());
    rec[12] = body.kind() as u8;
    rec[13] = RECORD_VERSION;
    let crc = record_crc(lsn, &rec[8..]);
    rec[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(rec.len())
}

/// Rewrite the checksum of an encoded record for a different LSN (the
/// writer learns the final LSN only after sizing the record).
pub fn reseal(record: &mut [u8], lsn: Lsn) {
    if record.len() >= RECORD_HEADER_LEN {
        let crc = record_crc(lsn, &record[8..]);
        record[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

fn record_crc(lsn: Lsn, from_generation: &[u8]) -> u32 {
    let mut d = crate::crc::digest();
    d.update(&lsn.file.to_le_bytes());
    d.update(&lsn.offset.to_le_bytes());
    d.update(from_generation);
    d.finalize()
}

/// A checked view of one encoded record: header valid, checksum matches,
/// length within limits. The body is decoded by [`RecordView::decode`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecordView<'a> {
    /// Where the record lives.
    pub lsn: Lsn,
    /// Generation of the master that wrote it.
    pub generation: Generation,
    /// Its kind.
    pub kind: RecordKind,
    /// The whole record, header included.
    pub bytes: &'a [u8],
}

impl<'a> RecordView<'a> {
    /// Read the body length from a header, checking it against the limit.
    /// Returns the total record length.
    pub fn total_len(header: &[u8], limits: &Limits) -> Result<usize, RecordError> {
        if header.len() < RECORD_HEADER_LEN {
            return Err(RecordError::Truncated {
                need: RECORD_HEADER_LEN,
                have: header.len(),
            });
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        if len > limits.max_record {
            return Err(RecordError::TooLong {
                len,
                max: limits.max_record,
            });
        }
        Ok(RECORD_HEADER_LEN + len as usize)
    }

    /// Check the record at the start of `bytes`, which claims to live at
    /// `lsn`. Bytes after the record are ignored; the view's `bytes` is
    /// exactly the record.
    pub fn parse(bytes: &'a [u8], lsn: Lsn, limits: &Limits) -> Result<Self, RecordError> {
        let total = Self::total_len(bytes, limits)?;
        if bytes.len() < total {
            return Err(RecordError::Truncated {
                need: total,
                have: bytes.len(),
            });
        }
        let rec = &bytes[..total];
        let stored = u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]);
        let computed = record_crc(lsn, &rec[8..]);
        if stored != computed {
            return Err(RecordError::BadChecksum { stored, computed });
        }
        if rec[13] != RECORD_VERSION {
            return Err(RecordError::BadVersion(rec[13]));
        }
        if rec[14] != 0 || rec[15] != 0 {
            return Err(RecordError::Reserved);
        }
        let kind = RecordKind::from_u8(rec[12])?;
        let generation = Generation(u32::from_le_bytes([rec[8], rec[9], rec[10], rec[11]]));
        Ok(RecordView {
            lsn,
            generation,
            kind,
            bytes: rec,
        })
    }

    /// The view of a record that [`RecordView::parse`] already accepted at
    /// `lsn` (a frame's records are checked when it is decoded): the
    /// header is read again, bounds-checked, but the checksum is not
    /// computed a second time. Bytes that were never parsed must go
    /// through [`RecordView::parse`].
    pub(crate) fn reparse(bytes: &'a [u8], lsn: Lsn, limits: &Limits) -> Result<Self, RecordError> {
        let total = Self::total_len(bytes, limits)?;
        let rec = bytes.get(..total).ok_or(RecordError::Truncated {
            need: total,
            have: bytes.len(),
        })?;
        let kind = RecordKind::from_u8(rec[12])?;
        let generation = Generation(u32::from_le_bytes([rec[8], rec[9], rec[10], rec[11]]));
        Ok(RecordView {
            lsn,
            generation,
            kind,
            bytes: rec,
        })
    }

    /// Decode a body that [`RecordView::decode`] already accepted (the
    /// records of a frame are decoded in full when it is received): a
    /// commit's operations are not decoded and checked a second time here,
    /// only when they are applied ([`Commit::ops`]).
    pub(crate) fn redecode(&self, limits: &Limits) -> Result<Record<'a>, RecordError> {
        match self.kind {
            RecordKind::Commit => Ok(Record::Commit(Commit::decode_header(self.body(), limits)?)),
            _ => self.decode(limits),
        }
    }

    /// The body bytes.
    pub fn body(&self) -> &'a [u8] {
        &self.bytes[RECORD_HEADER_LEN..]
    }

    /// Decode and validate the body.
    pub fn decode(&self, limits: &Limits) -> Result<Record<'a>, RecordError> {
        let body = self.body();
        fn whole<'b, T: Deserialize<'b>>(b: &'b [u8]) -> Result<T, RecordError> {
            match postcard::take_from_bytes::<T>(b) {
                Ok((v, [])) => Ok(v),
                _ => Err(RecordError::BadBody),
            }
        }
        Ok(match self.kind {
            RecordKind::Commit => Record::Commit(Commit::decode(body, limits)?),
            RecordKind::Checkpoint => Record::Checkpoint(whole(body)?),
            RecordKind::Membership => {
                let m: Membership<'a> = whole(body)?;
                if m.address.len() > caps::MAX_ADDRESS {
                    return Err(RecordError::LimitExceeded("site address"));
                }
                Record::Membership(m)
            }
            RecordKind::NewGeneration => Record::NewGeneration(whole(body)?),
        })
    }
}

/// Encode a decoded record again (the golden tests check that this gives
/// back the original bytes).
pub fn reencode(
    view: &RecordView<'_>,
    limits: &Limits,
    out: &mut Vec<u8>,
) -> Result<usize, RecordError> {
    let rec = view.decode(limits)?;
    let mut ops: Vec<Op<'_>> = Vec::new();
    let body = match rec {
        Record::Commit(c) => {
            for op in c.ops() {
                ops.push(op?);
            }
            RecordBody::Commit {
                txn_id: c.txn_id,
                timestamp: c.timestamp,
                ops: &ops,
            }
        }
        Record::Checkpoint(c) => RecordBody::Checkpoint(c),
        Record::Membership(m) => RecordBody::Membership(m),
        Record::NewGeneration(g) => RecordBody::NewGeneration(g),
    };
    encode_record(view.lsn, view.generation, &body, out, limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn commit_round_trips() {
        let ops = [
            Op::Put {
                db: "users",
                key: b"k1",
                value: b"v1",
            },
            Op::Delete {
                db: "users",
                key: b"k0",
            },
        ];
        let body = RecordBody::Commit {
            txn_id: 7,
            timestamp: Instant(1234),
            ops: &ops,
        };
        let lsn = Lsn::new(1, 20);
        let mut out = Vec::new();
        let n = encode_record(lsn, Generation(3), &body, &mut out, &limits()).unwrap();
        assert_eq!(n, out.len());
        let view = RecordView::parse(&out, lsn, &limits()).unwrap();
        assert_eq!(view.generation, Generation(3));
        let Record::Commit(c) = view.decode(&limits()).unwrap() else {
            panic!("not a commit")
        };
        let got: Vec<Op<'_>> = c.ops().map(|o| o.unwrap()).collect();
        assert_eq!(got, ops);
        // Same bytes at another LSN fail the checksum.
        assert!(matches!(
            RecordView::parse(&out, Lsn::new(1, 21), &limits()),
            Err(RecordError::BadChecksum { .. })
        ));
    }

    #[test]
    fn oversized_values_are_refused_on_encode() {
        let big = alloc::vec![0u8; limits().max_value as usize + 1];
        let ops = [Op::Put {
            db: "d",
            key: b"k",
            value: &big,
        }];
        let body = RecordBody::Commit {
            txn_id: 1,
            timestamp: Instant(0),
            ops: &ops,
        };
        let mut out = Vec::new();
        assert_eq!(
            encode_record(Lsn::new(1, 20), Generation(1), &body, &mut out, &limits()),
            Err(RecordError::LimitExceeded("value"))
        );
        assert!(out.is_empty());
    }
}
