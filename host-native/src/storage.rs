//! [`FileStorage`]: the log, the metadata record and the snapshot of one
//! site, as files in its home directory.
//!
//! ```text
//! HOME/
//!   LOCK            exclusive lock (flock) held while a node runs; holds its pid
//!   log.00000001    log segments, named by number (8 digits or more)
//!   log.00000002
//!   meta            the metadata record, replaced atomically
//!   snapshot        the store snapshot (R8), replaced atomically
//! ```
//!
//! Appends are cheap: they go to a buffer in user space, written with
//! write(2) when [`Storage::sync`] runs or when the buffered bytes pass
//! [`FileStorageOptions::write_buffer`]. `sync` writes every buffer, fsyncs
//! every segment written or truncated since the last sync, and fsyncs the
//! directory when segments were created or removed, so truncations and
//! removals are durable after it too. `meta` and `snapshot` are replaced by
//! writing `NAME.tmp`, fsyncing it, renaming it over `NAME` and fsyncing
//! the directory: after a crash the old or the new record is there, never
//! a mix.
//!
//! # Group commit
//!
//! The core's [`Node`](shoal_core::node::Node) driver merges flush requests
//! syncs once per step, so one fsync serves every commit queued before it.
//! `shoal node` splits the sync so the fsync runs without the node's lock
//! (`Node::with_syncer`): [`FileStorage::write_out`] (cheap, under the
//! lock) hands the bytes to the kernel, and [`SyncHandle::sync`] (from
//! [`FileStorage::sync_handle`], on any thread, without `&mut` access)
//! fsyncs everything written out before it was called, while commits and
//! replication go on.
//!
//! # A failed fsync
//!
//! After fsync fails, the kernel may have dropped the dirty pages it could
//! not write, and a later fsync may succeed without them. So the first
//! failed fsync poisons the storage: every later sync fails with
//! [`StorageError::SyncFailed`], and the node must restart so recovery
//! checks what is really on disk. A failed write(2) (a full disk) is not
//! poisonous: the bytes stay buffered and the next sync tries again.
//!
//! # Checkpoint snapshots
//!
//! A checkpoint's snapshot holds the whole store: writing and fsyncing it
//! takes time in proportion to it (a fraction of a second for a million
//! keys). [`Storage::stage_snapshot`] hands it to a thread of its own that
//! replaces `snapshot` as above, so the site goes on meanwhile; the core
//! archives the log only once [`Storage::staged_snapshot_durable`] says it
//! is in place. Snapshot writes are serialized and numbered: a later
//! `write_snapshot` or stage supersedes a staged snapshot not yet in
//! place, which is then dropped rather than written over the newer one.

use shoal_core::traits::Storage;
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Name of the lock file in the home directory.
pub const LOCK_FILE: &str = "LOCK";
/// Name of the metadata file.
pub const META_FILE: &str = "meta";
/// Name of the snapshot file.
pub const SNAPSHOT_FILE: &str = "snapshot";
/// Prefix of a log segment's file name; the number follows (`log.00000001`).
pub const SEGMENT_PREFIX: &str = "log.";

/// The file name of log segment `n`.
pub fn segment_file_name(n: u32) -> String {
    format!("{SEGMENT_PREFIX}{n:08}")
}

/// The segment number of a file name, if it names a segment exactly as
/// [`segment_file_name`] would.
pub fn parse_segment_file_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(SEGMENT_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = digits.parse().ok()?;
    (segment_file_name(n) == name).then_some(n)
}

/// Why a [`FileStorage`] call failed. Each message says what to do.
#[derive(Debug)]
pub enum StorageError {
    /// A file system call failed.
    Io {
        /// What was being done ("creating the home directory", …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error from the operating system.
        source: io::Error,
    },
    /// Another process holds the home directory's lock.
    Locked {
        /// The home directory.
        home: PathBuf,
        /// The pid written in the lock file by its holder, if readable.
        pid: Option<u32>,
    },
    /// The home path exists and is not a directory.
    NotADirectory(PathBuf),
    /// No log segment with that number.
    NoSegment(u32),
    /// An earlier fsync failed; nothing written since can be trusted to be
    /// durable until the node restarts and recovery checks the log.
    SyncFailed {
        /// The first failure.
        first: String,
    },
}

impl StorageError {
    fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        StorageError::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// The operating system's error, for an I/O failure.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Io { op, path, source } => {
                let p = path.display();
                match source.kind() {
                    io::ErrorKind::PermissionDenied => write!(
                        f,
                        "permission denied {op} {p}: make the home directory readable and \
                         writable by this user, or choose another --home"
                    ),
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => write!(
                        f,
                        "disk full {op} {p}: free space on the disk that holds the home \
                         directory (what was synced before is safe; the node retries)"
                    ),
                    io::ErrorKind::ReadOnlyFilesystem => write!(
                        f,
                        "read-only file system {op} {p}: put the home directory on a \
                         writable file system"
                    ),
                    io::ErrorKind::NotFound => write!(
                        f,
                        "not found {op} {p}: was the home directory moved or deleted while \
                         the node ran? ({source})"
                    ),
                    _ => write!(f, "error {op} {p}: {source}"),
                }
            }
            StorageError::Locked { home, pid } => {
                let h = home.display();
                match pid {
                    Some(pid) => write!(
                        f,
                        "home directory {h} is in use by another shoal process (pid {pid}): \
                         stop that process, or give this node its own --home"
                    ),
                    None => write!(
                        f,
                        "home directory {h} is in use by another shoal process: stop that \
                         process, or give this node its own --home"
                    ),
                }
            }
            StorageError::NotADirectory(p) => write!(
                f,
                "{} is not a directory: give --home a directory (it is created if missing)",
                p.display()
            ),
            StorageError::NoSegment(n) => write!(f, "no log segment {n}"),
            StorageError::SyncFailed { first } => write!(
                f,
                "an earlier fsync of the log failed ({first}); writes since then may be lost: \
                 restart the node so recovery checks the log"
            ),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StorageError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Tuning for a [`FileStorage`].
#[derive(Clone, Copy, Debug)]
pub struct FileStorageOptions {
    /// Bytes of appends buffered in user space (over all segments) before
    /// they are written to the files without waiting for a sync.
    pub write_buffer: usize,
}

impl Default for FileStorageOptions {
    fn default() -> Self {
        FileStorageOptions {
            write_buffer: 1 << 20,
        }
    }
}

/// One open segment: the bytes already in the file and the unwritten tail.
#[derive(Debug)]
struct Segment {
    file: Arc<File>,
    /// Bytes in the file (everything before the buffer).
    written: u64,
    /// Appended bytes not yet handed to the kernel.
    buf: Vec<u8>,
}

/// What is written but not yet fsynced, shared with [`SyncHandle`]s.
#[derive(Debug, Default)]
struct Pending {
    /// Files written or truncated since their last fsync, by segment.
    files: BTreeMap<u32, Arc<File>>,
    /// Segments were created or removed since the last directory fsync.
    dir: bool,
    /// The first fsync failure, which poisons every later sync.
    failed: Option<String>,
}

#[derive(Debug)]
struct SyncShared {
    home: PathBuf,
    dir: File,
    pending: Mutex<Pending>,
    /// Held for a whole sync, so a sync that returns covers everything
    /// written out before it began, even files another sync took.
    serial: Mutex<()>,
    /// Held for a whole snapshot replacement: one at a time.
    snapshot_write: Mutex<()>,
    /// Number of the newest snapshot written or staged.
    snapshot_issued: AtomicU64,
    /// Number of the snapshot in place (equal to `snapshot_issued` when
    /// the newest one is).
    snapshot_installed: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SyncShared {
    fn sync(&self) -> Result<(), StorageError> {
        let _serial = lock(&self.serial);
        let (files, dir) = {
            let mut p = lock(&self.pending);
            if let Some(first) = &p.failed {
                return Err(StorageError::SyncFailed {
                    first: first.clone(),
                });
            }
            (core::mem::take(&mut p.files), core::mem::take(&mut p.dir))
        };
        for (n, file) in &files {
            if let Err(e) = file.sync_data() {
                return Err(self.poison(self.home.join(segment_file_name(*n)), e));
            }
        }
        if dir {
            if let Err(e) = self.dir.sync_all() {
                return Err(self.poison(self.home.clone(), e));
            }
        }
        Ok(())
    }

    /// Replace the snapshot with `bytes` as snapshot number `seq`, unless a
    /// newer one was issued meanwhile (it supersedes this one).
    fn install_snapshot(&self, seq: u64, bytes: &[u8]) -> Result<(), StorageError> {
        let _one = lock(&self.snapshot_write);
        if self.snapshot_issued.load(Ordering::Acquire) != seq {
            return Ok(());
        }
        replace_file(&self.home, &self.dir, SNAPSHOT_FILE, bytes)?;
        self.snapshot_installed.store(seq, Ordering::Release);
        Ok(())
    }

    fn poison(&self, path: PathBuf, e: io::Error) -> StorageError {
        let err = StorageError::io("syncing", path, e);
        lock(&self.pending).failed = Some(err.to_string());
        tracing::error!("{err}; the log is no longer trusted until the node restarts");
        err
    }
}

/// Makes what a [`FileStorage`] wrote out durable, from any thread, without
/// `&mut` access to the storage. See the module documentation.
#[derive(Clone, Debug)]
pub struct SyncHandle {
    shared: Arc<SyncShared>,
}

impl SyncHandle {
    /// Fsync every segment file written, truncated, created or removed by
    /// [`FileStorage::write_out`] (or an overflowing append) before this
    /// call, and the directory when needed. Bytes still in the storage's
    /// buffer are not covered: call `write_out` first.
    pub fn sync(&self) -> Result<(), StorageError> {
        self.shared.sync()
    }
}

/// A site's log segments, metadata record and snapshot as files in its
/// home directory, locked against a second process. See the module
/// documentation for the layout and the durability rules.
#[derive(Debug)]
pub struct FileStorage {
    home: PathBuf,
    segments: BTreeMap<u32, Segment>,
    /// Appended bytes buffered over all segments.
    buffered: usize,
    options: FileStorageOptions,
    shared: Arc<SyncShared>,
    /// Held open for the flock; closed (and so unlocked) when the storage
    /// and any snapshot thread are done with it.
    lock: Arc<File>,
}

impl FileStorage {
    /// Open (creating if needed) the home directory `home` with default
    /// options.
    pub fn open(home: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with(home, FileStorageOptions::default())
    }

    /// Open (creating if needed) the home directory `home`: take its lock,
    /// find the log segments, and remove temporary files a crash left.
    /// Fails with [`StorageError::Locked`] if another process (or another
    /// `FileStorage` in this one) has it open, after retrying for a quarter
    /// of a second.
    pub fn open_with(
        home: impl AsRef<Path>,
        options: FileStorageOptions,
    ) -> Result<Self, StorageError> {
        let home = home.as_ref().to_path_buf();
        match fs::metadata(&home) {
            Ok(m) if !m.is_dir() => return Err(StorageError::NotADirectory(home)),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(&home)
                    .map_err(|e| StorageError::io("creating the home directory", &home, e))?;
                if let Some(parent) = home.parent().filter(|p| !p.as_os_str().is_empty()) {
                    // Make the new directory's entry durable; best effort.
                    if let Ok(d) = File::open(parent) {
                        let _ = d.sync_all();
                    }
                }
            }
            Err(e) => return Err(StorageError::io("opening the home directory", &home, e)),
        }
        let lock = take_lock(&home)?;
        let dir = File::open(&home)
            .map_err(|e| StorageError::io("opening the home directory", &home, e))?;

        let mut segments = BTreeMap::new();
        let entries = fs::read_dir(&home)
            .map_err(|e| StorageError::io("listing the home directory", &home, e))?;
        let mut removed_tmp = false;
        for entry in entries {
            let entry =
                entry.map_err(|e| StorageError::io("listing the home directory", &home, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let path = entry.path();
            if name == "meta.tmp" || name == "snapshot.tmp" {
                // A replacement a crash interrupted: the old file stands.
                fs::remove_file(&path)
                    .map_err(|e| StorageError::io("removing the stale file", &path, e))?;
                removed_tmp = true;
                continue;
            }
            let Some(n) = parse_segment_file_name(name) else {
                continue;
            };
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| StorageError::io("opening log segment", &path, e))?;
            let written = file
                .metadata()
                .map_err(|e| StorageError::io("reading the size of log segment", &path, e))?
                .len();
            segments.insert(
                n,
                Segment {
                    file: Arc::new(file),
                    written,
                    buf: Vec::new(),
                },
            );
        }
        if removed_tmp {
            dir.sync_all()
                .map_err(|e| StorageError::io("syncing", &home, e))?;
        }
        Ok(FileStorage {
            shared: Arc::new(SyncShared {
                home: home.clone(),
                dir,
                pending: Mutex::new(Pending::default()),
                serial: Mutex::new(()),
                snapshot_write: Mutex::new(()),
                snapshot_issued: AtomicU64::new(0),
                snapshot_installed: AtomicU64::new(0),
            }),
            home,
            segments,
            buffered: 0,
            options,
            lock: Arc::new(lock),
        })
    }

    /// The home directory.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// Appended bytes not yet handed to the kernel.
    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// A handle that fsyncs what this storage wrote out, from any thread.
    pub fn sync_handle(&self) -> SyncHandle {
        SyncHandle {
            shared: self.shared.clone(),
        }
    }

    /// Hand every buffered append to the kernel with write(2), without
    /// fsync; the files are then synced by the next [`SyncHandle::sync`] or
    /// [`Storage::sync`]. On a write error (a full disk) the unwritten
    /// bytes stay buffered and a later call retries them.
    pub fn write_out(&mut self) -> Result<(), StorageError> {
        if self.buffered == 0 {
            return Ok(());
        }
        let numbers: Vec<u32> = self
            .segments
            .iter()
            .filter(|(_, s)| !s.buf.is_empty())
            .map(|(n, _)| *n)
            .collect();
        for n in numbers {
            self.write_segment(n)?;
        }
        Ok(())
    }

    fn path(&self, n: u32) -> PathBuf {
        self.home.join(segment_file_name(n))
    }

    fn mark_file(&self, n: u32, file: &Arc<File>) {
        lock(&self.shared.pending).files.insert(n, file.clone());
    }

    fn mark_dir(&self) {
        lock(&self.shared.pending).dir = true;
    }

    /// Write segment `n`'s buffer to its file.
    fn write_segment(&mut self, n: u32) -> Result<(), StorageError> {
        let path = self.path(n);
        let seg = self
            .segments
            .get_mut(&n)
            .ok_or(StorageError::NoSegment(n))?;
        let mut done = 0;
        let res = loop {
            if done == seg.buf.len() {
                break Ok(());
            }
            match write_at(&seg.file, &seg.buf[done..], seg.written) {
                Ok(0) => {
                    break Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "the file system accepted no bytes",
                    ))
                }
                Ok(k) => {
                    done += k;
                    seg.written += k as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        seg.buf.drain(..done);
        self.buffered -= done;
        let file = seg.file.clone();
        if done > 0 {
            self.mark_file(n, &file);
        }
        res.map_err(|e| StorageError::io("writing log segment", path, e))
    }

    fn replace_file(&mut self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        replace_file(&self.home, &self.shared.dir, name, bytes)
    }

    fn read_file(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.home.join(name);
        match File::open(&path) {
            Ok(mut f) => {
                let mut v = Vec::new();
                f.read_to_end(&mut v)
                    .map_err(|e| StorageError::io("reading", &path, e))?;
                Ok(Some(v))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io("opening", &path, e)),
        }
    }
}

impl Storage for FileStorage {
    type Error = StorageError;

    fn segments(&mut self) -> Result<Vec<u32>, StorageError> {
        Ok(self.segments.keys().copied().collect())
    }

    fn segment_len(&mut self, segment: u32) -> Result<u64, StorageError> {
        let s = self
            .segments
            .get(&segment)
            .ok_or(StorageError::NoSegment(segment))?;
        Ok(s.written + s.buf.len() as u64)
    }

    fn read(&mut self, segment: u32, offset: u64, buf: &mut [u8]) -> Result<usize, StorageError> {
        let path = self.path(segment);
        let s = self
            .segments
            .get(&segment)
            .ok_or(StorageError::NoSegment(segment))?;
        let mut n = 0;
        // From the file, up to what was written.
        while n < buf.len() && offset + (n as u64) < s.written {
            let pos = offset + n as u64;
            let want = (buf.len() - n).min((s.written - pos) as usize);
            match read_at(&s.file, &mut buf[n..n + want], pos) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(StorageError::io("reading log segment", path, e)),
            }
        }
        // Then from the buffer.
        let pos = offset + n as u64;
        if n < buf.len() && pos >= s.written {
            let start = usize::try_from(pos - s.written)
                .unwrap_or(usize::MAX)
                .min(s.buf.len());
            let k = (buf.len() - n).min(s.buf.len() - start);
            buf[n..n + k].copy_from_slice(&s.buf[start..start + k]);
            n += k;
        }
        Ok(n)
    }

    fn create_segment(&mut self, segment: u32) -> Result<(), StorageError> {
        let path = self.path(segment);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| StorageError::io("creating log segment", &path, e))?;
        let file = Arc::new(file);
        if let Some(old) = self.segments.insert(
            segment,
            Segment {
                file: file.clone(),
                written: 0,
                buf: Vec::new(),
            },
        ) {
            self.buffered -= old.buf.len();
        }
        // The truncation (of a replaced file) and the new entry.
        self.mark_file(segment, &file);
        self.mark_dir();
        Ok(())
    }

    fn append(&mut self, segment: u32, bytes: &[u8]) -> Result<(), StorageError> {
        let s = self
            .segments
            .get_mut(&segment)
            .ok_or(StorageError::NoSegment(segment))?;
        s.buf.extend_from_slice(bytes);
        self.buffered += bytes.len();
        if self.buffered >= self.options.write_buffer {
            self.write_out()?;
        }
        Ok(())
    }

    fn truncate(&mut self, segment: u32, len: u64) -> Result<(), StorageError> {
        let path = self.path(segment);
        let s = self
            .segments
            .get_mut(&segment)
            .ok_or(StorageError::NoSegment(segment))?;
        if len >= s.written {
            let keep = usize::try_from(len - s.written).unwrap_or(usize::MAX);
            if keep < s.buf.len() {
                self.buffered -= s.buf.len() - keep;
                s.buf.truncate(keep);
            }
            return Ok(());
        }
        self.buffered -= s.buf.len();
        s.buf.clear();
        s.file
            .set_len(len)
            .map_err(|e| StorageError::io("truncating log segment", path, e))?;
        s.written = len;
        let file = s.file.clone();
        self.mark_file(segment, &file);
        Ok(())
    }

    fn remove_segment(&mut self, segment: u32) -> Result<(), StorageError> {
        let path = self.path(segment);
        let s = self
            .segments
            .remove(&segment)
            .ok_or(StorageError::NoSegment(segment))?;
        self.buffered -= s.buf.len();
        lock(&self.shared.pending).files.remove(&segment);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io("removing log segment", path, e)),
        }
        self.mark_dir();
        Ok(())
    }

    fn sync(&mut self) -> Result<(), StorageError> {
        FileStorage::write_out(self)?;
        self.shared.sync()
    }

    fn write_out(&mut self) -> Result<(), StorageError> {
        FileStorage::write_out(self)
    }

    fn read_meta(&mut self) -> Result<Option<Vec<u8>>, StorageError> {
        self.read_file(META_FILE)
    }

    fn write_meta(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.replace_file(META_FILE, bytes)
    }

    fn read_snapshot(&mut self) -> Result<Option<Vec<u8>>, StorageError> {
        self.read_file(SNAPSHOT_FILE)
    }

    fn write_snapshot(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        let sh = &self.shared;
        let _one = lock(&sh.snapshot_write);
        let seq = sh.snapshot_issued.fetch_add(1, Ordering::AcqRel) + 1;
        replace_file(&sh.home, &sh.dir, SNAPSHOT_FILE, bytes)?;
        sh.snapshot_installed.store(seq, Ordering::Release);
        Ok(())
    }

    fn stage_snapshot(&mut self, bytes: Vec<u8>) -> Result<(), StorageError> {
        let seq = self.shared.snapshot_issued.fetch_add(1, Ordering::AcqRel) + 1;
        let (shared, home_lock) = (self.shared.clone(), self.lock.clone());
        let spawned = std::thread::Builder::new()
            .name("shoal-snapshot".into())
            .spawn(move || {
                // The home stays locked until the snapshot is in place.
                let _home = home_lock;
                if let Err(e) = shared.install_snapshot(seq, &bytes) {
                    tracing::warn!(
                        "the checkpoint's snapshot was not written ({e}); the log is kept \
                         until a later checkpoint's is"
                    );
                }
            });
        // No thread to be had: the snapshot is not written, and the core
        // keeps the log for a later checkpoint's.
        spawned
            .map(|_| ())
            .map_err(|e| StorageError::io("starting the snapshot writer for", &self.home, e))
    }

    fn staged_snapshot_durable(&mut self) -> bool {
        let sh = &self.shared;
        sh.snapshot_installed.load(Ordering::Acquire) == sh.snapshot_issued.load(Ordering::Acquire)
    }
}

/// Replace `home/name` atomically and durably: write `name.tmp`, fsync
/// it, rename it over `name`, fsync the directory.
fn replace_file(home: &Path, dir: &File, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = home.join(format!("{name}.tmp"));
    let dst = home.join(name);
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| StorageError::io("creating", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| StorageError::io("writing", &tmp, e))?;
        f.sync_all()
            .map_err(|e| StorageError::io("syncing", &tmp, e))?;
        fs::rename(&tmp, &dst).map_err(|e| StorageError::io("renaming into place", &dst, e))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res?;
    dir.sync_all()
        .map_err(|e| StorageError::io("syncing", home, e))
}

const LOCK_RETRIES: u32 = 25;
const LOCK_RETRY_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// Take the home directory's lock and write our pid into it.
fn take_lock(home: &Path) -> Result<File, StorageError> {
    let path = home.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StorageError::io("opening the lock file", &path, e))?;
    // A lock can be held for an instant by a child process this process
    // forks (between fork and exec it shares our open files): retry
    // briefly before calling the home taken.
    let mut tries = 0;
    let locked = loop {
        match try_lock_exclusive(&file) {
            Ok(false) if tries < LOCK_RETRIES => {
                tries += 1;
                std::thread::sleep(LOCK_RETRY_WAIT);
            }
            other => break other,
        }
    };
    match locked {
        Ok(true) => {}
        Ok(false) => {
            let mut s = String::new();
            let pid = file
                .read_to_string(&mut s)
                .ok()
                .and_then(|_| s.trim().parse().ok());
            return Err(StorageError::Locked {
                home: home.to_path_buf(),
                pid,
            });
        }
        Err(e) => return Err(StorageError::io("locking", &path, e)),
    }
    // The pid is only for the message a second opener prints.
    let _ = file
        .set_len(0)
        .and_then(|_| write_at(&file, format!("{}\n", std::process::id()).as_bytes(), 0));
    Ok(file)
}

#[cfg(unix)]
fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    use rustix::fs::{flock, FlockOperation};
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(unix))]
fn try_lock_exclusive(_file: &File) -> io::Result<bool> {
    // Without flock the home directory is not protected against a second
    // process; shoal's native host targets Unix.
    Ok(true)
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, pos)
}

#[cfg(unix)]
fn write_at(file: &File, buf: &[u8], pos: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::write_at(file, buf, pos)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_read(file, buf, pos)
}

#[cfg(windows)]
fn write_at(file: &File, buf: &[u8], pos: u64) -> io::Result<usize> {
    std::os::windows::fs::FileExt::seek_write(file, buf, pos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_core::log::record::RecordBody;
    use shoal_core::log::{recover, LogReader, LogWriter, Op, Record};
    use shoal_core::{Generation, Instant, Limits, Lsn};

    fn put(w: &mut LogWriter, s: &mut FileStorage, i: u64) -> Lsn {
        let key = format!("key-{i}");
        let value = vec![i as u8; 100];
        let ops = [Op::Put {
            db: "default",
            key: key.as_bytes(),
            value: &value,
        }];
        let body = RecordBody::Commit {
            txn_id: i,
            timestamp: Instant(i),
            ops: &ops,
        };
        w.append(s, Generation(1), &body).unwrap()
    }

    fn txn_ids(s: &mut FileStorage, limits: Limits, first: Lsn, count: u64) -> Vec<u64> {
        let mut r = LogReader::new(limits);
        let mut lsn = first;
        let mut out = Vec::new();
        for _ in 0..count {
            let (view, next) = r.read(s, lsn).unwrap();
            let Record::Commit(c) = view.decode(&limits).unwrap() else {
                panic!("not a commit at {lsn}");
            };
            out.push(c.txn_id);
            lsn = next;
        }
        out
    }

    fn small_segments() -> Limits {
        Limits {
            max_record: 4096,
            max_frame: 4096 + 1024,
            segment_size: 8192,
            ..Limits::default()
        }
    }

    #[test]
    fn log_round_trips_through_files_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let limits = small_segments();
        let lsns: Vec<Lsn> = {
            let mut s =
                FileStorage::open_with(dir.path(), FileStorageOptions { write_buffer: 1000 })
                    .unwrap();
            let r = recover(&mut s, &limits).unwrap();
            assert_eq!(r.records, 0);
            let mut w = LogWriter::new(&r, limits);
            let lsns: Vec<Lsn> = (1..=200).map(|i| put(&mut w, &mut s, i)).collect();
            // Readable before any sync: from the files and the buffer.
            assert_eq!(
                txn_ids(&mut s, limits, lsns[0], 200),
                (1..=200).collect::<Vec<_>>()
            );
            s.sync().unwrap();
            assert_eq!(s.buffered(), 0);
            lsns
        };
        assert!(lsns.last().unwrap().file > 2, "the log spans segments");
        let mut s = FileStorage::open(dir.path()).unwrap();
        let r = recover(&mut s, &limits).unwrap();
        assert_eq!(r.records, 200);
        assert_eq!(r.truncated_bytes, 0);
        assert_eq!(r.first, lsns[0]);
        assert_eq!(r.last, *lsns.last().unwrap());
        assert_eq!(
            txn_ids(&mut s, limits, r.first, 200),
            (1..=200).collect::<Vec<_>>()
        );
        // The log continues where it stopped.
        let mut w = LogWriter::new(&r, limits);
        let next = put(&mut w, &mut s, 201);
        assert!(next > r.last);
        s.sync().unwrap();
        drop(s);
        let mut s = FileStorage::open(dir.path()).unwrap();
        assert_eq!(recover(&mut s, &limits).unwrap().records, 201);
    }

    #[test]
    fn unsynced_appends_are_lost_and_synced_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits::default();
        {
            let mut s = FileStorage::open(dir.path()).unwrap();
            let r = recover(&mut s, &limits).unwrap();
            let mut w = LogWriter::new(&r, limits);
            for i in 1..=10 {
                put(&mut w, &mut s, i);
            }
            s.sync().unwrap();
            for i in 11..=20 {
                put(&mut w, &mut s, i);
            }
            assert!(s.buffered() > 0);
            // Dropped without a sync: a crash before the flush.
        }
        let mut s = FileStorage::open(dir.path()).unwrap();
        let r = recover(&mut s, &limits).unwrap();
        assert_eq!(r.records, 10);
    }

    #[test]
    fn recovery_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits::default();
        let lsns: Vec<Lsn> = {
            let mut s = FileStorage::open(dir.path()).unwrap();
            let r = recover(&mut s, &limits).unwrap();
            let mut w = LogWriter::new(&r, limits);
            let lsns = (1..=50).map(|i| put(&mut w, &mut s, i)).collect();
            s.sync().unwrap();
            lsns
        };
        // A crash in the middle of writing the last record.
        let path = dir.path().join(segment_file_name(1));
        let len = fs::metadata(&path).unwrap().len();
        let last = lsns[49];
        let cut = last.offset as u64 + 7;
        assert!(cut < len);
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();

        let mut s = FileStorage::open(dir.path()).unwrap();
        let r = recover(&mut s, &limits).unwrap();
        assert_eq!(r.records, 49);
        assert_eq!(r.last, lsns[48]);
        assert_eq!(r.next, last);
        assert_eq!(r.truncated_bytes, 7);
        // The cut is durable: the file itself is shorter.
        assert_eq!(fs::metadata(&path).unwrap().len(), last.offset as u64);
        let mut w = LogWriter::new(&r, limits);
        assert_eq!(put(&mut w, &mut s, 51), last);
        s.sync().unwrap();
        drop(s);
        let mut s = FileStorage::open(dir.path()).unwrap();
        let r = recover(&mut s, &limits).unwrap();
        assert_eq!(r.records, 50);
        let mut ids: Vec<u64> = (1..=49).collect();
        ids.push(51);
        assert_eq!(txn_ids(&mut s, limits, r.first, 50), ids);
    }

    #[test]
    fn truncate_and_remove_are_durable_after_sync() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s =
                FileStorage::open_with(dir.path(), FileStorageOptions { write_buffer: 8 }).unwrap();
            s.create_segment(1).unwrap();
            s.append(1, b"0123456789").unwrap(); // past the threshold: written
            assert_eq!(s.buffered(), 0);
            s.append(1, b"abc").unwrap(); // buffered
            assert_eq!(s.segment_len(1).unwrap(), 13);
            let mut b = [0u8; 13];
            assert_eq!(s.read(1, 0, &mut b).unwrap(), 13);
            assert_eq!(&b, b"0123456789abc");
            let mut b = [0u8; 5];
            assert_eq!(s.read(1, 8, &mut b).unwrap(), 5);
            assert_eq!(&b, b"89abc");
            assert_eq!(s.read(1, 11, &mut b).unwrap(), 2);
            assert_eq!(s.read(1, 13, &mut b).unwrap(), 0);
            assert_eq!(s.read(1, 99, &mut b).unwrap(), 0);
            // Truncate inside the buffer, then inside the file.
            s.truncate(1, 12).unwrap();
            assert_eq!(s.segment_len(1).unwrap(), 12);
            s.truncate(1, 4).unwrap();
            assert_eq!(s.segment_len(1).unwrap(), 4);
            s.create_segment(2).unwrap();
            s.append(2, b"x").unwrap();
            s.create_segment(3).unwrap();
            s.remove_segment(3).unwrap();
            assert!(matches!(
                s.remove_segment(3),
                Err(StorageError::NoSegment(3))
            ));
            s.sync().unwrap();
        }
        let mut s = FileStorage::open(dir.path()).unwrap();
        assert_eq!(s.segments().unwrap(), vec![1, 2]);
        let mut b = [0u8; 8];
        assert_eq!(s.read(1, 0, &mut b).unwrap(), 4);
        assert_eq!(&b[..4], b"0123");
        assert_eq!(s.segment_len(2).unwrap(), 1);
        assert!(matches!(s.segment_len(9), Err(StorageError::NoSegment(9))));
        // Replacing a segment empties it.
        s.create_segment(1).unwrap();
        assert_eq!(s.segment_len(1).unwrap(), 0);
    }

    #[test]
    fn sync_handle_makes_written_out_bytes_durable_from_another_thread() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileStorage::open(dir.path()).unwrap();
        let h = s.sync_handle();
        s.create_segment(1).unwrap();
        s.append(1, b"hello").unwrap();
        s.write_out().unwrap();
        assert_eq!(s.buffered(), 0);
        std::thread::spawn(move || h.sync().unwrap())
            .join()
            .unwrap();
        assert_eq!(
            fs::read(dir.path().join(segment_file_name(1))).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn meta_and_snapshot_are_replaced_atomically() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = FileStorage::open(dir.path()).unwrap();
            assert_eq!(s.read_meta().unwrap(), None);
            assert_eq!(s.read_snapshot().unwrap(), None);
            s.write_meta(b"first").unwrap();
            s.write_meta(b"second").unwrap();
            s.write_snapshot(&[7u8; 10_000]).unwrap();
            s.write_snapshot(b"small").unwrap();
            assert_eq!(s.read_meta().unwrap().as_deref(), Some(&b"second"[..]));
        }
        // A crash in the middle of the next replacement leaves a temp file.
        fs::write(dir.path().join("meta.tmp"), b"half-writ").unwrap();
        fs::write(dir.path().join("snapshot.tmp"), b"half").unwrap();
        let mut s = FileStorage::open(dir.path()).unwrap();
        assert_eq!(s.read_meta().unwrap().as_deref(), Some(&b"second"[..]));
        assert_eq!(s.read_snapshot().unwrap().as_deref(), Some(&b"small"[..]));
        assert!(!dir.path().join("meta.tmp").exists());
        assert!(!dir.path().join("snapshot.tmp").exists());
        let names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    }

    fn wait_durable(s: &mut FileStorage) {
        for _ in 0..2000 {
            if s.staged_snapshot_durable() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("a staged snapshot never got in place");
    }

    /// R8: a checkpoint's snapshot is written by a thread of its own; the
    /// storage says when it is in place, and it is then what a reopen reads.
    #[test]
    fn a_staged_snapshot_is_put_in_place_by_its_own_thread() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![0x42u8; 4 << 20];
        {
            let mut s = FileStorage::open(dir.path()).unwrap();
            assert!(s.staged_snapshot_durable(), "nothing staged yet");
            s.stage_snapshot(big.clone()).unwrap();
            wait_durable(&mut s);
            assert_eq!(s.read_snapshot().unwrap().as_deref(), Some(&big[..]));
        }
        let mut s = FileStorage::open(dir.path()).unwrap();
        assert_eq!(s.read_snapshot().unwrap().as_deref(), Some(&big[..]));
    }

    /// A snapshot written or staged later supersedes a staged one not yet
    /// in place: the older one is never written over the newer, however
    /// the writer thread and the caller interleave.
    #[test]
    fn a_later_snapshot_supersedes_a_staged_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileStorage::open(dir.path()).unwrap();
        for round in 0..20u8 {
            let older = vec![round; 1 << 20];
            s.stage_snapshot(older).unwrap();
            let newer = vec![round.wrapping_add(100); 64];
            if round % 2 == 0 {
                s.write_snapshot(&newer).unwrap();
            } else {
                s.stage_snapshot(newer.clone()).unwrap();
            }
            wait_durable(&mut s);
            // Give a superseded writer thread time to (wrongly) finish.
            std::thread::sleep(std::time::Duration::from_millis(5));
            assert_eq!(
                s.read_snapshot().unwrap().as_deref(),
                Some(&newer[..]),
                "round {round}: the newer snapshot stands"
            );
        }
    }

    #[test]
    fn a_second_opener_is_refused_while_the_first_holds_the_home() {
        let dir = tempfile::tempdir().unwrap();
        let first = FileStorage::open(dir.path()).unwrap();
        let err = FileStorage::open(dir.path()).unwrap_err();
        match &err {
            StorageError::Locked { pid, .. } => assert_eq!(*pid, Some(std::process::id())),
            e => panic!("expected Locked, got {e:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("in use by another shoal process"), "{msg}");
        assert!(msg.contains(&std::process::id().to_string()), "{msg}");
        drop(first);
        FileStorage::open(dir.path()).unwrap();
    }

    #[test]
    fn home_is_created_and_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("a/b/home");
        FileStorage::open(&home).unwrap();
        assert!(home.join(LOCK_FILE).exists());
        let file = dir.path().join("plain");
        fs::write(&file, b"x").unwrap();
        let err = FileStorage::open(&file).unwrap_err();
        assert!(matches!(err, StorageError::NotADirectory(_)), "{err:?}");
        assert!(err.to_string().contains("not a directory"));
    }

    #[test]
    fn errors_tell_the_user_what_to_do() {
        let denied = StorageError::io(
            "creating the home directory",
            "/root/x",
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert!(denied.to_string().contains("permission denied"));
        assert!(denied.to_string().contains("--home"));
        let full = StorageError::io(
            "writing log segment",
            "/h/log.00000001",
            io::Error::from(io::ErrorKind::StorageFull),
        );
        assert!(full.to_string().contains("disk full"));
        assert!(full.to_string().contains("free space"));
    }

    const CRASH_HOME: &str = "SHOAL_STORAGE_CRASH_HOME";

    /// The writer the crash test kills: continue the log, sync every few
    /// records, and print the last synced txn id after each sync.
    #[test]
    #[ignore = "run by storage_survives_sigkill_at_random_moments as a child process"]
    fn crash_child() {
        let Some(home) = std::env::var_os(CRASH_HOME) else {
            return;
        };
        let limits = small_segments();
        let mut s =
            FileStorage::open_with(&home, FileStorageOptions { write_buffer: 3000 }).unwrap();
        let r = recover(&mut s, &limits).unwrap();
        let mut next = r.records + 1;
        let mut w = LogWriter::new(&r, limits);
        let mut out = io::stdout().lock();
        loop {
            for _ in 0..7 {
                put(&mut w, &mut s, next);
                next += 1;
            }
            s.sync().unwrap();
            writeln!(out, "{}", next - 1).unwrap();
            out.flush().unwrap();
        }
    }

    #[cfg(unix)]
    #[test]
    fn storage_survives_sigkill_at_random_moments() {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir().unwrap();
        let limits = small_segments();
        let exe = std::env::current_exe().unwrap();
        let mut seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        let mut acked = 0u64;
        for _ in 0..40 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut child = Command::new(&exe)
                .args([
                    "--exact",
                    "storage::tests::crash_child",
                    "--ignored",
                    "--nocapture",
                ])
                .env(CRASH_HOME, dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5 + seed % 40));
            child.kill().unwrap(); // SIGKILL
            let mut printed = String::new();
            child
                .stdout
                .take()
                .unwrap()
                .read_to_string(&mut printed)
                .unwrap();
            child.wait().unwrap();
            // Whole lines only: the last one may be cut by the kill.
            if let Some(n) = printed
                .lines()
                .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
                .filter_map(|l| l.parse::<u64>().ok())
                .max()
            {
                acked = acked.max(n);
            }
            let mut s = FileStorage::open(dir.path()).unwrap();
            let r = recover(&mut s, &limits).unwrap();
            assert!(
                r.records >= acked,
                "{} records, {acked} acknowledged",
                r.records
            );
            if r.records > 0 {
                let ids = txn_ids(&mut s, limits, r.first, r.records);
                assert_eq!(ids, (1..=r.records).collect::<Vec<_>>());
            }
        }
        assert!(acked > 0, "the child never synced");
    }

    #[test]
    fn segment_names_round_trip_and_strangers_are_ignored() {
        assert_eq!(segment_file_name(1), "log.00000001");
        assert_eq!(parse_segment_file_name("log.00000001"), Some(1));
        assert_eq!(segment_file_name(u32::MAX), "log.4294967295");
        assert_eq!(parse_segment_file_name("log.4294967295"), Some(u32::MAX));
        for bad in [
            "log.1",
            "log.",
            "log.0000000x",
            "log.+0000001",
            "meta",
            "log.00000001.tmp",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("log.1"), b"stray").unwrap();
        let mut s = FileStorage::open(dir.path()).unwrap();
        assert!(s.segments().unwrap().is_empty());
    }
}
