//! The log: the record format ([`record`]), segments with a writer and a
//! reader ([`segment`]), and crash recovery ([`recovery`]).
//!
//! The log is a sequence of segments (numbered from 1), each a header and
//! then whole records; a record never spans two segments. A record is
//! addressed by its [`Lsn`](crate::Lsn) = (segment, offset).

pub mod record;
pub mod recovery;
pub mod segment;

use core::fmt;

pub use record::{
    Checkpoint, Commit, MemberAction, Membership, NewGeneration, Op, Record, RecordKind, RecordView,
};
pub use recovery::{recover, Recovered};
pub use segment::{LogReader, LogWriter, SegmentHeader};

/// Why a record could not be decoded. Every malformed input maps here;
/// nothing in the decoder panics.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RecordError {
    /// Fewer bytes than the header or the declared body length.
    Truncated {
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The declared body length is above `Limits::max_record`.
    TooLong {
        /// Declared length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The checksum does not match: a torn or corrupted record.
    BadChecksum {
        /// Checksum stored in the header.
        stored: u32,
        /// Checksum of the bytes present.
        computed: u32,
    },
    /// A record format version this build does not know.
    BadVersion(u8),
    /// A record kind this build does not know.
    UnknownKind(u8),
    /// Reserved header bytes are not zero.
    Reserved,
    /// The body does not decode as its kind, or has bytes left over.
    BadBody,
    /// A field is above its limit (key, value, name, op count).
    LimitExceeded(&'static str),
    /// The record was given an LSN that is not a valid position.
    BadLsn,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Truncated { need, have } => {
                write!(f, "log record truncated: need {need} bytes, have {have}")
            }
            RecordError::TooLong { len, max } => {
                write!(
                    f,
                    "log record body of {len} bytes is above the limit of {max}"
                )
            }
            RecordError::BadChecksum { stored, computed } => write!(
                f,
                "log record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"
            ),
            RecordError::BadVersion(v) => write!(f, "unknown log record format version {v}"),
            RecordError::UnknownKind(k) => write!(f, "unknown log record kind {k}"),
            RecordError::Reserved => write!(f, "log record reserved bytes are not zero"),
            RecordError::BadBody => write!(f, "log record body does not decode"),
            RecordError::LimitExceeded(what) => write!(f, "log record {what} is above its limit"),
            RecordError::BadLsn => write!(f, "invalid LSN for a log record"),
        }
    }
}

/// Why a log operation failed: the storage failed, or the log's bytes or
/// the caller's request are not valid.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum LogError<E> {
    /// The host's storage returned an error.
    Storage(E),
    /// A record is malformed.
    Record(RecordError),
    /// A segment header is malformed.
    BadSegmentHeader(u32),
    /// A record was offered at an LSN other than the log's next position.
    OutOfOrder {
        /// Where the log expects its next record.
        expected: crate::Lsn,
        /// Where the record was offered.
        got: crate::Lsn,
    },
    /// No record at that LSN (before the start, past the end, or archived).
    NotFound(crate::Lsn),
    /// A truncation point past the end of the log or inside a record.
    BadTruncate(crate::Lsn),
}

impl<E> From<RecordError> for LogError<E> {
    fn from(e: RecordError) -> Self {
        LogError::Record(e)
    }
}

impl<E: fmt::Display> fmt::Display for LogError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Storage(e) => write!(f, "log storage error: {e}"),
            LogError::Record(e) => write!(f, "{e}"),
            LogError::BadSegmentHeader(n) => write!(f, "log segment {n} has a bad header"),
            LogError::OutOfOrder { expected, got } => write!(
                f,
                "log record offered at {got}, but the log's next position is {expected}"
            ),
            LogError::NotFound(lsn) => write!(f, "no log record at {lsn}"),
            LogError::BadTruncate(lsn) => write!(f, "cannot truncate the log at {lsn}"),
        }
    }
}

#[cfg(feature = "std")]
impl<E: fmt::Display + fmt::Debug> std::error::Error for LogError<E> {}
#[cfg(feature = "std")]
impl std::error::Error for RecordError {}
