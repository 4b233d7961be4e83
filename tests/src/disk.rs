//! `SimDisk`: a [`Storage`] that forgets what was not synced when it
//! crashes.
//!
//! Each segment has durable bytes (what survives a crash) and current bytes
//! (what reads see). Appends, truncations, creations and removals change
//! only the current view, and are remembered in order in a journal;
//! [`Storage::sync`] makes the whole current view durable. A crash
//! ([`SimDisk::crash`]) throws the volatile part away:
//!
//! - [`CrashMode::Process`]: only the process died; the operating system
//!   kept every change made before the last [`Storage::write_out`] (and,
//!   harsher than a real one, loses every change after it).
//! - [`CrashMode::Clean`]: every unsynced change is lost.
//! - [`CrashMode::Torn`]: the unsynced changes reached the disk in the order
//!   they were made, up to a random point; the last append that made it is
//!   torn at a random byte (usually in the middle of a record, which
//!   recovery must cut).
//! - [`CrashMode::Reordered`]: a harsher file system that orders nothing
//!   across files: each segment independently keeps a random prefix of its
//!   unsynced appends; other unsynced changes are lost. A later segment can
//!   then survive while the tail of an earlier one is lost.
//!
//! The metadata record and the store snapshot are written atomically and
//! durably, as the trait promises. A staged snapshot
//! ([`Storage::stage_snapshot`]) is put in place later and on its own, as
//! a host's writer thread would, not by a sync: the second time the site
//! asks whether it is. A crash before then loses it, and `write_snapshot`
//! supersedes it. All randomness comes from the [`Rng`]
//! the caller passes, so a crash is as reproducible as everything else.

use crate::rng::Rng;
use shoal_core::traits::Storage;
use std::collections::BTreeMap;
use std::fmt;

/// Why a [`SimDisk`] call failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum SimDiskError {
    /// No segment with that number.
    NoSegment(u32),
}

impl fmt::Display for SimDiskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimDiskError::NoSegment(n) => write!(f, "no log segment {n}"),
        }
    }
}

/// How a crash treats the changes that were not synced.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CrashMode {
    /// The process died, not the machine: changes made before the last
    /// `write_out` survive, later ones are lost.
    Process,
    /// Everything not synced is lost.
    Clean,
    /// Unsynced changes survive in order up to a random point, the last
    /// append torn at a random byte.
    Torn,
    /// Each segment keeps a random prefix of its own unsynced appends, with
    /// no order across segments; other unsynced changes are lost.
    Reordered,
}

/// One unsynced change, in the order it was made.
#[derive(Clone, Debug)]
enum Change {
    Create(u32),
    Append(u32, Vec<u8>),
    Truncate(u32, usize),
    Remove(u32),
}

/// What changed in a segment since the last sync.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dirt {
    /// Only appends: the durable bytes are a prefix of the current ones.
    Appended,
    /// Anything else (created, truncated below the durable length, removed).
    Rewritten,
}

/// Counters, for tests and the trace.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct DiskStats {
    /// Syncs.
    pub syncs: u64,
    /// Crashes.
    pub crashes: u64,
    /// Unsynced bytes a crash threw away.
    pub bytes_lost: u64,
    /// Unsynced bytes a torn crash kept.
    pub torn_bytes_kept: u64,
}

/// A simulated disk holding one site's log segments and metadata.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    durable: BTreeMap<u32, Vec<u8>>,
    current: BTreeMap<u32, Vec<u8>>,
    dirty: BTreeMap<u32, Dirt>,
    journal: Vec<Change>,
    /// Journal entries handed to the operating system by `write_out`.
    written: usize,
    meta: Option<Vec<u8>>,
    /// The store snapshot (R8): replaced atomically and durably, like meta.
    snapshot: Option<Vec<u8>>,
    /// A staged snapshot not yet in place, and how often the site asked.
    staged: Option<(Vec<u8>, u32)>,
    stats: DiskStats,
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// Counters.
    pub fn stats(&self) -> DiskStats {
        self.stats
    }

    /// True when everything is durable.
    pub fn is_synced(&self) -> bool {
        self.dirty.is_empty()
    }

    /// Unsynced bytes (appended since the last sync; rewritten segments
    /// count whole).
    pub fn unsynced_bytes(&self) -> u64 {
        self.dirty
            .iter()
            .map(|(seg, d)| {
                let cur = self.current.get(seg).map_or(0, |v| v.len());
                match d {
                    Dirt::Appended => (cur - self.durable.get(seg).map_or(0, |v| v.len())) as u64,
                    Dirt::Rewritten => cur as u64,
                }
            })
            .sum()
    }

    /// The current bytes of a segment.
    pub fn segment(&self, n: u32) -> Option<&[u8]> {
        self.current.get(&n).map(|v| v.as_slice())
    }

    /// The durable bytes of a segment.
    pub fn durable_segment(&self, n: u32) -> Option<&[u8]> {
        self.durable.get(&n).map(|v| v.as_slice())
    }

    /// The machine lost power: keep what is durable, and what `mode` lets
    /// survive of the rest.
    pub fn crash(&mut self, mode: CrashMode, rng: &mut Rng) {
        self.stats.crashes += 1;
        // The writer thread died with the process.
        self.staged = None;
        let journal = std::mem::take(&mut self.journal);
        let written = std::mem::take(&mut self.written);
        let dirty = std::mem::take(&mut self.dirty);
        let unsynced: u64 = journal
            .iter()
            .map(|c| match c {
                Change::Append(_, b) => b.len() as u64,
                _ => 0,
            })
            .sum();
        let mut state = self.durable.clone();
        let mut kept = 0u64;
        match mode {
            CrashMode::Clean => {}
            CrashMode::Process => {
                for c in journal.iter().take(written) {
                    match c {
                        Change::Create(seg) => {
                            state.insert(*seg, Vec::new());
                        }
                        Change::Append(seg, b) => {
                            if let Some(v) = state.get_mut(seg) {
                                v.extend_from_slice(b);
                                kept += b.len() as u64;
                            }
                        }
                        Change::Truncate(seg, len) => {
                            if let Some(v) = state.get_mut(seg) {
                                v.truncate(*len);
                            }
                        }
                        Change::Remove(seg) => {
                            state.remove(seg);
                        }
                    }
                }
            }
            CrashMode::Torn => {
                let cut = rng.below(journal.len() as u64 + 1) as usize;
                for (k, c) in journal.iter().enumerate().take(cut + 1) {
                    match c {
                        Change::Create(seg) if k < cut => {
                            state.insert(*seg, Vec::new());
                        }
                        Change::Append(seg, b) => {
                            let n = if k < cut {
                                b.len()
                            } else {
                                rng.below(b.len() as u64 + 1) as usize
                            };
                            if let Some(v) = state.get_mut(seg) {
                                v.extend_from_slice(&b[..n]);
                                kept += n as u64;
                            }
                        }
                        Change::Truncate(seg, len) if k < cut => {
                            if let Some(v) = state.get_mut(seg) {
                                v.truncate(*len);
                            }
                        }
                        Change::Remove(seg) if k < cut => {
                            state.remove(seg);
                        }
                        _ => {}
                    }
                }
            }
            CrashMode::Reordered => {
                for (seg, d) in &dirty {
                    let cur = self.current.get(seg).cloned().unwrap_or_default();
                    match (d, state.get_mut(seg)) {
                        (Dirt::Appended, Some(dur)) => {
                            let tail = cur.len() - dur.len();
                            // Half the time whole writes made it (the cut
                            // falls between two appends), else a torn one.
                            let mut ends = vec![0usize];
                            for c in &journal {
                                if let Change::Append(x, b) = c {
                                    if x == seg {
                                        ends.push(ends[ends.len() - 1] + b.len());
                                    }
                                }
                            }
                            ends.retain(|&e| e <= tail);
                            let n = if rng.chance(500_000) {
                                *rng.pick(&ends).unwrap_or(&0)
                            } else {
                                rng.below(tail as u64 + 1) as usize
                            };
                            let from = dur.len();
                            dur.extend_from_slice(&cur[from..from + n]);
                            kept += n as u64;
                        }
                        (_, None) if !cur.is_empty() && rng.chance(500_000) => {
                            let n = rng.below(cur.len() as u64 + 1) as usize;
                            state.insert(*seg, cur[..n].to_vec());
                            kept += n as u64;
                        }
                        _ => {}
                    }
                }
            }
        }
        self.stats.torn_bytes_kept += kept;
        self.stats.bytes_lost += unsynced.saturating_sub(kept);
        self.current = state.clone();
        self.durable = state;
    }

    /// A staged snapshot is waiting to be put in place.
    pub fn has_staged_snapshot(&self) -> bool {
        self.staged.is_some()
    }

    /// The disk is destroyed: nothing survives, not even the metadata.
    pub fn wipe(&mut self) {
        *self = SimDisk {
            stats: self.stats,
            ..SimDisk::default()
        };
    }

    fn seg(&mut self, n: u32) -> Result<&mut Vec<u8>, SimDiskError> {
        self.current.get_mut(&n).ok_or(SimDiskError::NoSegment(n))
    }

    fn mark(&mut self, seg: u32, d: Dirt) {
        let e = self.dirty.entry(seg).or_insert(d);
        if d == Dirt::Rewritten {
            *e = Dirt::Rewritten;
        }
    }
}

impl Storage for SimDisk {
    type Error = SimDiskError;

    fn segments(&mut self) -> Result<Vec<u32>, SimDiskError> {
        Ok(self.current.keys().copied().collect())
    }

    fn segment_len(&mut self, segment: u32) -> Result<u64, SimDiskError> {
        Ok(self.seg(segment)?.len() as u64)
    }

    fn read(&mut self, segment: u32, offset: u64, buf: &mut [u8]) -> Result<usize, SimDiskError> {
        let s = self.seg(segment)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(s.len());
        let n = buf.len().min(s.len() - start);
        buf[..n].copy_from_slice(&s[start..start + n]);
        Ok(n)
    }

    fn create_segment(&mut self, segment: u32) -> Result<(), SimDiskError> {
        self.current.insert(segment, Vec::new());
        self.journal.push(Change::Create(segment));
        self.mark(segment, Dirt::Rewritten);
        Ok(())
    }

    fn append(&mut self, segment: u32, bytes: &[u8]) -> Result<(), SimDiskError> {
        self.seg(segment)?.extend_from_slice(bytes);
        self.journal.push(Change::Append(segment, bytes.to_vec()));
        let d = if self.durable.contains_key(&segment) {
            Dirt::Appended
        } else {
            Dirt::Rewritten
        };
        self.mark(segment, d);
        Ok(())
    }

    fn truncate(&mut self, segment: u32, len: u64) -> Result<(), SimDiskError> {
        let s = self.seg(segment)?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len < s.len() {
            s.truncate(len);
            self.journal.push(Change::Truncate(segment, len));
            let below_durable = self.durable.get(&segment).is_none_or(|d| len < d.len());
            let d = if below_durable {
                Dirt::Rewritten
            } else {
                Dirt::Appended
            };
            self.mark(segment, d);
        }
        Ok(())
    }

    fn remove_segment(&mut self, segment: u32) -> Result<(), SimDiskError> {
        match self.current.remove(&segment) {
            Some(_) => {
                self.journal.push(Change::Remove(segment));
                self.mark(segment, Dirt::Rewritten);
                Ok(())
            }
            None => Err(SimDiskError::NoSegment(segment)),
        }
    }

    fn sync(&mut self) -> Result<(), SimDiskError> {
        self.stats.syncs += 1;
        self.journal.clear();
        self.written = 0;
        let dirty = std::mem::take(&mut self.dirty);
        for (seg, d) in dirty {
            match (d, self.current.get(&seg)) {
                (Dirt::Appended, Some(cur)) => {
                    let dur = self.durable.entry(seg).or_default();
                    let from = dur.len();
                    dur.extend_from_slice(&cur[from..]);
                }
                (_, Some(cur)) => {
                    self.durable.insert(seg, cur.clone());
                }
                (_, None) => {
                    self.durable.remove(&seg);
                }
            }
        }
        Ok(())
    }

    fn write_out(&mut self) -> Result<(), SimDiskError> {
        self.written = self.journal.len();
        Ok(())
    }

    fn read_meta(&mut self) -> Result<Option<Vec<u8>>, SimDiskError> {
        Ok(self.meta.clone())
    }

    fn write_meta(&mut self, bytes: &[u8]) -> Result<(), SimDiskError> {
        self.meta = Some(bytes.to_vec());
        Ok(())
    }

    fn read_snapshot(&mut self) -> Result<Option<Vec<u8>>, SimDiskError> {
        Ok(self.snapshot.clone())
    }

    fn write_snapshot(&mut self, bytes: &[u8]) -> Result<(), SimDiskError> {
        self.staged = None;
        self.snapshot = Some(bytes.to_vec());
        Ok(())
    }

    fn stage_snapshot(&mut self, bytes: Vec<u8>) -> Result<(), SimDiskError> {
        self.staged = Some((bytes, 0));
        Ok(())
    }

    fn staged_snapshot_durable(&mut self) -> bool {
        let Some((_, asked)) = self.staged.as_mut() else {
            return true;
        };
        *asked += 1;
        if *asked >= 2 {
            if let Some((b, _)) = self.staged.take() {
                self.snapshot = Some(b);
            }
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::config::{Config, Durability};
    use shoal_core::log::Op;
    use shoal_core::site::{Output, Site};
    use shoal_core::Instant;

    fn disk_with(seg: u32, synced: &[u8], unsynced: &[u8]) -> SimDisk {
        let mut d = SimDisk::new();
        d.create_segment(seg).unwrap();
        d.append(seg, synced).unwrap();
        d.sync().unwrap();
        d.append(seg, unsynced).unwrap();
        d
    }

    #[test]
    fn a_process_crash_keeps_what_was_written_out() {
        let mut d = disk_with(1, b"durable", b"written");
        d.write_out().unwrap();
        d.append(1, b"buffered").unwrap();
        d.crash(CrashMode::Process, &mut Rng::new(1));
        assert_eq!(d.segment(1), Some(&b"durablewritten"[..]));
        assert!(d.is_synced());
        // A power loss after a write-out keeps only what was synced.
        let mut d = disk_with(1, b"durable", b"written");
        d.write_out().unwrap();
        d.crash(CrashMode::Clean, &mut Rng::new(1));
        assert_eq!(d.segment(1), Some(&b"durable"[..]));
    }

    #[test]
    fn synced_bytes_survive_and_unsynced_are_lost() {
        let mut d = disk_with(1, b"durable", b"volatile");
        assert_eq!(d.segment(1), Some(&b"durablevolatile"[..]));
        assert_eq!(d.unsynced_bytes(), 8);
        d.crash(CrashMode::Clean, &mut Rng::new(1));
        assert_eq!(d.segment(1), Some(&b"durable"[..]));
        assert!(d.is_synced());
        assert_eq!(d.stats().bytes_lost, 8);
        // After a sync everything survives.
        d.append(1, b"+more").unwrap();
        d.sync().unwrap();
        d.crash(CrashMode::Clean, &mut Rng::new(2));
        assert_eq!(d.segment(1), Some(&b"durable+more"[..]));
    }

    #[test]
    fn a_torn_crash_keeps_a_prefix_of_the_unsynced_tail() {
        let mut kept_lengths = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let mut d = disk_with(3, b"0123", b"abcdefghij");
            d.crash(CrashMode::Torn, &mut Rng::new(seed));
            let s = d.segment(3).unwrap();
            assert!(s.len() >= 4 && s.len() <= 14);
            assert_eq!(s, &b"0123abcdefghij"[..s.len()]);
            // What a torn crash kept is durable now.
            assert_eq!(d.durable_segment(3), Some(s));
            kept_lengths.insert(s.len());
        }
        // Every cut point is reachable, including "nothing" and "all".
        assert_eq!(kept_lengths.len(), 11);
    }

    #[test]
    fn unsynced_truncate_create_and_remove_are_undone_by_a_crash() {
        let mut d = disk_with(1, b"abcdef", b"");
        d.create_segment(2).unwrap();
        d.append(2, b"xyz").unwrap();
        d.sync().unwrap();
        d.truncate(1, 2).unwrap();
        d.remove_segment(2).unwrap();
        d.create_segment(3).unwrap();
        d.append(3, b"new").unwrap();
        assert_eq!(d.segments().unwrap(), vec![1, 3]);
        d.crash(CrashMode::Clean, &mut Rng::new(5));
        assert_eq!(d.segments().unwrap(), vec![1, 2]);
        assert_eq!(d.segment(1), Some(&b"abcdef"[..]));
        assert_eq!(d.segment(2), Some(&b"xyz"[..]));
        // Synced, they stick.
        d.truncate(1, 2).unwrap();
        d.remove_segment(2).unwrap();
        d.sync().unwrap();
        d.crash(CrashMode::Torn, &mut Rng::new(6));
        assert_eq!(d.segments().unwrap(), vec![1]);
        assert_eq!(d.segment(1), Some(&b"ab"[..]));
    }

    #[test]
    fn truncating_only_unsynced_bytes_keeps_the_segment_append_only() {
        let mut d = disk_with(1, b"abc", b"defgh");
        d.truncate(1, 5).unwrap();
        d.sync().unwrap();
        assert_eq!(d.durable_segment(1), Some(&b"abcde"[..]));
    }

    /// Torn: what survives is an ordered prefix of the unsynced changes, so
    /// a segment created after an append never survives without it.
    #[test]
    fn a_torn_crash_keeps_changes_in_order_across_segments() {
        let mut seen_second = false;
        for seed in 0..300 {
            let mut d = disk_with(1, b"head", b"");
            d.append(1, b"tail-of-one").unwrap();
            d.create_segment(2).unwrap();
            d.append(2, b"two").unwrap();
            d.crash(CrashMode::Torn, &mut Rng::new(seed));
            if d.segment(2).is_some() {
                seen_second = true;
                assert_eq!(d.segment(1), Some(&b"headtail-of-one"[..]), "seed {seed}");
            }
        }
        assert!(seen_second);
    }

    /// Reordered: a later segment may survive while an earlier segment's
    /// unsynced tail is lost.
    #[test]
    fn a_reordered_crash_may_keep_a_later_segment_and_lose_an_earlier_tail() {
        let gap = (0..300).any(|seed| {
            let mut d = disk_with(1, b"head", b"");
            d.append(1, b"tail-of-one").unwrap();
            d.create_segment(2).unwrap();
            d.append(2, b"two").unwrap();
            d.crash(CrashMode::Reordered, &mut Rng::new(seed));
            d.segment(2).is_some_and(|s| !s.is_empty()) && d.segment(1) == Some(&b"head"[..])
        });
        assert!(gap);
    }

    #[test]
    fn metadata_is_atomic_and_durable() {
        let mut d = SimDisk::new();
        assert_eq!(d.read_meta().unwrap(), None);
        d.write_meta(b"one").unwrap();
        d.crash(CrashMode::Torn, &mut Rng::new(1));
        assert_eq!(d.read_meta().unwrap().as_deref(), Some(&b"one"[..]));
        d.write_meta(b"two").unwrap();
        d.crash(CrashMode::Clean, &mut Rng::new(1));
        assert_eq!(d.read_meta().unwrap().as_deref(), Some(&b"two"[..]));
        d.wipe();
        assert_eq!(d.read_meta().unwrap(), None);
        assert!(d.segments().unwrap().is_empty());
    }

    #[test]
    fn errors_name_the_missing_segment() {
        let mut d = SimDisk::new();
        assert_eq!(d.append(4, b"x"), Err(SimDiskError::NoSegment(4)));
        assert_eq!(d.segment_len(4), Err(SimDiskError::NoSegment(4)));
        assert_eq!(d.remove_segment(4), Err(SimDiskError::NoSegment(4)));
        assert_eq!(SimDiskError::NoSegment(4).to_string(), "no log segment 4");
    }

    /// A site's log over a SimDisk: after a torn crash, recovery finds a
    /// valid prefix of the log that includes everything synced.
    #[test]
    fn a_site_recovers_a_prefix_after_a_torn_crash() {
        for seed in 0..40 {
            let mut site = Site::open(Config::default(), "s0", SimDisk::new(), Instant(0)).unwrap();
            site.create_group(Instant(0)).unwrap();
            let mut synced = shoal_core::Lsn::ZERO;
            for k in 0..30u32 {
                let key = k.to_le_bytes();
                let ops = [Op::Put {
                    db: "db",
                    key: &key,
                    value: b"value",
                }];
                site.commit(Instant(k as u64), &ops, Durability::NoSync)
                    .unwrap();
                if k == 10 {
                    site.storage_mut().sync().unwrap();
                    synced = site.last_lsn();
                }
                while site
                    .poll_output()
                    .is_some_and(|o| !matches!(o, Output::Answer(_)))
                {}
            }
            let before: Vec<_> = site.log_index().to_vec();
            let records: Vec<_> = before
                .iter()
                .map(|e| site.read_record(e.lsn).unwrap())
                .collect();
            let mut disk = site.into_storage();
            disk.crash(CrashMode::Torn, &mut Rng::new(seed));
            let mut site = Site::open(Config::default(), "s0", disk, Instant(100)).unwrap();
            assert!(site.last_lsn() >= synced, "seed {seed}");
            let after = site.log_index().to_vec();
            assert!(after.len() <= before.len());
            for (i, e) in after.iter().enumerate() {
                assert_eq!(*e, before[i]);
                assert_eq!(site.read_record(e.lsn).unwrap(), records[i]);
            }
        }
    }

    /// R8: a checkpoint's snapshot staged for a writer thread is not relied
    /// on before it is in place. A crash while it is staged loses it; the
    /// site must reopen to the same store from the older snapshot and the
    /// log, which archiving must not have cut.
    #[test]
    fn a_crash_before_a_staged_snapshot_is_in_place_loses_nothing() {
        use std::time::Duration;
        let mut cfg = Config::default();
        cfg.limits.max_key = 64;
        cfg.limits.max_value = 256;
        cfg.limits.max_channel_message = 1024;
        cfg.limits.max_record = 4096;
        cfg.limits.max_frame = 8192;
        cfg.limits.segment_size = 8192;
        cfg.limits.max_answer_bytes = 4096;
        cfg.limits.max_bulk_bytes = 4096;
        cfg.timeouts.checkpoint_delay = Duration::from_millis(50);
        cfg.log_retention_segments = Some(0);
        let mut site = Site::open(cfg.clone(), "s0", SimDisk::new(), Instant(0)).unwrap();
        site.create_group(Instant(0)).unwrap();
        let mut now = 0u64;
        let mut k = 0u32;
        let mut staged_seen = 0;
        let value = [7u8; 200];
        while k < 600 {
            let key = k.to_le_bytes();
            k += 1;
            let ops = [Op::Put {
                db: "db",
                key: &key,
                value: &value,
            }];
            site.commit(Instant(now), &ops, Durability::Sync).unwrap();
            loop {
                let mut idle = true;
                while let Some(o) = site.poll_output() {
                    idle = false;
                    if let Output::Flush { lsn } = o {
                        site.storage_mut().sync().unwrap();
                        site.handle_flushed(Instant(now), lsn);
                    }
                }
                now += 1_000;
                if site.poll_timeout().is_some_and(|t| t.0 <= now) {
                    site.handle_timeout(Instant(now));
                    idle = false;
                }
                if idle {
                    break;
                }
            }
            if !site.storage_mut().has_staged_snapshot() {
                continue;
            }
            // Log syncs go on while it is staged (they make segment
            // removals durable too).
            site.storage_mut().sync().unwrap();
            staged_seen += 1;
            // Crash a copy here: the staged snapshot is lost with it.
            let digest = site.store().digest();
            let archived = site.stats().segments_archived;
            let mut copy = site.storage_mut().clone();
            copy.crash(CrashMode::Clean, &mut Rng::new(u64::from(k)));
            let reopened = Site::open(cfg.clone(), "s0", copy, Instant(now))
                .unwrap_or_else(|e| panic!("reopen after {k} commits: {e}"));
            assert_eq!(reopened.store().digest(), digest, "after {k} commits");
            assert_eq!(site.stats().segments_archived, archived);
        }
        assert!(staged_seen > 0, "no snapshot was ever staged");
        assert!(
            site.stats().segments_archived > 3,
            "the log was archived once in place"
        );
    }
}
