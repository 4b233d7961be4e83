//! An in-memory [`Storage`] for a device without a file system, for the
//! browser, and for tests. Bounded: past `capacity` bytes an append fails
//! with [`MemError::Full`] instead of growing.

use crate::traits::Storage;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;

/// Why a [`MemStorage`] call failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MemError {
    /// The storage holds `capacity` bytes already.
    Full {
        /// The configured capacity.
        capacity: usize,
    },
    /// No segment with that number.
    NoSegment(u32),
}

impl fmt::Display for MemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MemError::Full { capacity } => {
                write!(f, "in-memory storage is full ({capacity} bytes)")
            }
            MemError::NoSegment(n) => write!(f, "no log segment {n}"),
        }
    }
}

/// Log segments and metadata held in memory. Everything "synced" is simply
/// kept; nothing survives the process.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    segments: BTreeMap<u32, Vec<u8>>,
    meta: Option<Vec<u8>>,
    snapshot: Option<Vec<u8>>,
    used: usize,
    capacity: usize,
}

impl MemStorage {
    /// Storage that holds at most `capacity` bytes of segments.
    pub fn new(capacity: usize) -> Self {
        MemStorage {
            capacity,
            ..Default::default()
        }
    }

    /// Bytes held in segments.
    pub fn used(&self) -> usize {
        self.used
    }

    /// Direct access to a segment's bytes (tests corrupt logs through it).
    pub fn segment_mut(&mut self, n: u32) -> Option<&mut Vec<u8>> {
        self.segments.get_mut(&n)
    }

    fn seg(&mut self, n: u32) -> Result<&mut Vec<u8>, MemError> {
        self.segments.get_mut(&n).ok_or(MemError::NoSegment(n))
    }
}

impl Storage for MemStorage {
    type Error = MemError;

    fn segments(&mut self) -> Result<Vec<u32>, MemError> {
        Ok(self.segments.keys().copied().collect())
    }

    fn segment_len(&mut self, segment: u32) -> Result<u64, MemError> {
        Ok(self.seg(segment)?.len() as u64)
    }

    fn read(&mut self, segment: u32, offset: u64, buf: &mut [u8]) -> Result<usize, MemError> {
        let s = self.seg(segment)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(s.len());
        let n = buf.len().min(s.len() - start);
        buf[..n].copy_from_slice(&s[start..start + n]);
        Ok(n)
    }

    fn create_segment(&mut self, segment: u32) -> Result<(), MemError> {
        if let Some(old) = self.segments.insert(segment, Vec::new()) {
            self.used -= old.len();
        }
        Ok(())
    }

    fn append(&mut self, segment: u32, bytes: &[u8]) -> Result<(), MemError> {
        if self.used + bytes.len() > self.capacity {
            return Err(MemError::Full {
                capacity: self.capacity,
            });
        }
        self.seg(segment)?.extend_from_slice(bytes);
        self.used += bytes.len();
        Ok(())
    }

    fn truncate(&mut self, segment: u32, len: u64) -> Result<(), MemError> {
        let s = self.seg(segment)?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len < s.len() {
            let cut = s.len() - len;
            s.truncate(len);
            self.used -= cut;
        }
        Ok(())
    }

    fn remove_segment(&mut self, segment: u32) -> Result<(), MemError> {
        match self.segments.remove(&segment) {
            Some(s) => {
                self.used -= s.len();
                Ok(())
            }
            None => Err(MemError::NoSegment(segment)),
        }
    }

    fn sync(&mut self) -> Result<(), MemError> {
        Ok(())
    }

    fn read_meta(&mut self) -> Result<Option<Vec<u8>>, MemError> {
        Ok(self.meta.clone())
    }

    fn write_meta(&mut self, bytes: &[u8]) -> Result<(), MemError> {
        self.meta = Some(bytes.to_vec());
        Ok(())
    }

    fn read_snapshot(&mut self) -> Result<Option<Vec<u8>>, MemError> {
        Ok(self.snapshot.clone())
    }

    fn write_snapshot(&mut self, bytes: &[u8]) -> Result<(), MemError> {
        let old = self.snapshot.as_ref().map_or(0, |s| s.len());
        if self.used - old.min(self.used) + bytes.len() > self.capacity {
            return Err(MemError::Full {
                capacity: self.capacity,
            });
        }
        self.snapshot = Some(bytes.to_vec());
        Ok(())
    }
}
