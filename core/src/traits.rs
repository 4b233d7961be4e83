//! What a host implements: [`Storage`] for the log and metadata,
//! [`Transport`] to deliver frames, [`Clock`] to tell the time.
//!
//! Every call is synchronous and cheap. The one expensive step, making the
//! log durable, is [`Storage::sync`], which the host calls when the core
//! asks for a flush and reports back when done, so a host can serve many
//! commits with one flush.

use crate::ids::{Instant, SiteId};
use alloc::vec::Vec;
use core::fmt;

/// The log segments and the small metadata record of one site.
///
/// Segments are append-only byte strings numbered from 1. Appended bytes
/// may be lost in a crash until [`Storage::sync`] returns; a crash may also
/// leave a torn tail, which recovery truncates.
pub trait Storage {
    /// The host's error type.
    type Error: fmt::Debug + fmt::Display;

    /// Numbers of the segments present, ascending.
    fn segments(&mut self) -> Result<Vec<u32>, Self::Error>;
    /// Length of a segment in bytes; an error if it does not exist.
    fn segment_len(&mut self, segment: u32) -> Result<u64, Self::Error>;
    /// Read up to `buf.len()` bytes at `offset`; returns how many were read
    /// (fewer only at the end of the segment).
    fn read(&mut self, segment: u32, offset: u64, buf: &mut [u8]) -> Result<usize, Self::Error>;
    /// Create an empty segment (replacing one of the same number).
    fn create_segment(&mut self, segment: u32) -> Result<(), Self::Error>;
    /// Append bytes to the end of a segment.
    fn append(&mut self, segment: u32, bytes: &[u8]) -> Result<(), Self::Error>;
    /// Cut a segment to `len` bytes.
    fn truncate(&mut self, segment: u32, len: u64) -> Result<(), Self::Error>;
    /// Delete a segment.
    fn remove_segment(&mut self, segment: u32) -> Result<(), Self::Error>;
    /// Make every appended byte, truncation and removal durable.
    fn sync(&mut self) -> Result<(), Self::Error>;
    /// Hand every appended byte to the operating system, so that it
    /// survives a crash of this process (not a power loss). Cheap: no disk
    /// wait. A client calls it before acknowledging a commit that did not
    /// ask for a sync (R4, R5). Storage whose appends reach the operating
    /// system (or the only memory there is) when `append` returns keeps
    /// this default.
    fn write_out(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
    /// Read the metadata record, if one was ever written.
    fn read_meta(&mut self) -> Result<Option<Vec<u8>>, Self::Error>;
    /// Replace the metadata record atomically and durably: after a crash
    /// the old or the new record is present, never a mix.
    fn write_meta(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
    /// Read the store snapshot (R8), if one was ever written.
    fn read_snapshot(&mut self) -> Result<Option<Vec<u8>>, Self::Error>;
    /// Replace the store snapshot atomically and durably, like the
    /// metadata record. A checkpoint writes it; log segments older than
    /// it may then be removed.
    fn write_snapshot(&mut self, bytes: &[u8]) -> Result<(), Self::Error>;
    /// Hand over a checkpoint's snapshot (R8) to replace the stored one
    /// atomically and durably, as [`Storage::write_snapshot`] does, but
    /// perhaps later: a host may write it on another thread, so the site
    /// does not pause for a write and an fsync in proportion to the whole
    /// store. [`Storage::staged_snapshot_durable`] says when it is in
    /// place. A later `write_snapshot` or `stage_snapshot` supersedes a
    /// staged snapshot not yet in place, which is then never installed
    /// over it. By default the snapshot is written at once.
    fn stage_snapshot(&mut self, bytes: Vec<u8>) -> Result<(), Self::Error> {
        self.write_snapshot(&bytes)
    }
    /// Whether the snapshot staged last is durably in place. A failed
    /// install stays false until the next stage. By default true: the
    /// default `stage_snapshot` writes at once.
    fn staged_snapshot_durable(&mut self) -> bool {
        true
    }
}

/// Why a frame could not be queued for a site.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SendError {
    /// The site's send queue is full (back-pressure); try later.
    Full,
    /// No connection to the site right now.
    Disconnected,
    /// The transport knows no such site.
    UnknownSite(SiteId),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Full => write!(f, "send queue full"),
            SendError::Disconnected => write!(f, "not connected"),
            SendError::UnknownSite(s) => write!(f, "unknown {s}"),
        }
    }
}

/// Delivers frames between sites. Must never block: a full queue is
/// [`SendError::Full`]. Connections that open or break are reported to the
/// core as inputs, not through this trait.
pub trait Transport {
    /// Queue one frame (see [`crate::wire`]) for a site.
    fn send(&mut self, to: SiteId, frame: &[u8]) -> Result<(), SendError>;

    /// Send a frame the site waits on with nothing else in flight (see
    /// `Output::Send`'s `urgent`): a transport that batches frames should
    /// write this one now, if it can without blocking. By default, as
    /// [`Transport::send`].
    fn send_urgent(&mut self, to: SiteId, frame: &[u8]) -> Result<(), SendError> {
        self.send(to, frame)
    }
}

/// The host's monotonic clock. The core never reads a clock itself: hosts
/// pass [`Instant`]s in, and the simulator passes simulated ones.
pub trait Clock {
    /// Now.
    fn now(&self) -> Instant;
}
