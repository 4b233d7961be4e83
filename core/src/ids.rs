//! Small value types every part of shoal names: log sequence numbers,
//! generations, site ids, commit tokens and time.

use core::fmt;
use serde::{Deserialize, Serialize};

/// A log sequence number: the segment (file) number and the byte offset of a
/// record within it. Identical on every site, because clients write each
/// record at the LSN the master gave it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Lsn {
    /// Segment number.
    pub file: u32,
    /// Byte offset of the record's first header byte within the segment.
    pub offset: u32,
}

impl Lsn {
    /// "No record": sorts before every real LSN.
    pub const ZERO: Lsn = Lsn { file: 0, offset: 0 };

    /// An LSN from its parts.
    pub const fn new(file: u32, offset: u32) -> Self {
        Lsn { file, offset }
    }

    /// True for [`Lsn::ZERO`].
    pub const fn is_zero(self) -> bool {
        self.file == 0 && self.offset == 0
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}][{}]", self.file, self.offset)
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A master generation: bumped each time a site becomes master, so messages
/// from an older master can be recognised and dropped.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Generation(pub u32);

/// An election generation (egen): bumped for each election attempt and made
/// durable before a site votes, so it can never vote twice in one election.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct ElectionGen(pub u32);

/// A site's identity within its group, assigned by the group membership.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct SiteId(pub u32);

impl fmt::Display for SiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "site {}", self.0)
    }
}

/// What a commit returns so any site can wait until it has applied it
/// (read-your-writes on a client, R3).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct CommitToken {
    /// LSN of the commit record.
    pub lsn: Lsn,
    /// Generation of the master that wrote it.
    pub generation: Generation,
}

/// A point in time, in microseconds since an arbitrary host-chosen origin.
/// Time is an input to the core: it never reads a clock itself.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Instant(pub u64);

impl core::ops::Add<core::time::Duration> for Instant {
    type Output = Instant;

    /// This instant plus `d`, saturating.
    fn add(self, d: core::time::Duration) -> Instant {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(us))
    }
}

impl Instant {
    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Instant) -> core::time::Duration {
        core::time::Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}
