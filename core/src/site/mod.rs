//! The replication state machine: one [`Site`], driven by inputs and
//! producing [`Output`]s.
//!
//! Inputs: a frame from a peer ([`Site::handle_frame`]), the passing of time
//! ([`Site::handle_timeout`]), a finished log flush
//! ([`Site::handle_flushed`]), a connection that opened or broke
//! ([`Site::handle_connection`]), and application calls (`commit`, `get`,
//! `rep_start_*`, `rep_sync`, `txn_applied`, `join`, `remove_site`,
//! `channel_send`, `channel_request`, `channel_respond`).
//! Outputs are pulled with [`Site::poll_output`]; the next deadline is
//! [`Site::poll_timeout`]. The site never reads a clock, never blocks and
//! never sleeps: the same code runs under tokio, in a browser and in the
//! deterministic simulator.
//!
//! The log storage is owned by the site and called synchronously (appends
//! and reads are cheap); the one slow step, a flush, is an output the host
//! completes later, so many commits share one flush.

pub mod acks;
mod channel;
pub use channel::{
    ChannelRequestError, ChannelSendError, ChannelTarget, Incoming, ReplyTo, HELD_PER_SENDER,
};
mod client;
mod election;
mod forward;
mod init_client;
mod init_master;
pub use init_master::SNAPSHOT_DB;
mod lease;
pub use lease::Handle;
mod master;
pub mod members;
pub mod output;
mod peer;
mod view;

pub use output::*;

use crate::config::Config;
use crate::ids::{CommitToken, Generation, Instant, Lsn, SiteId};
use crate::log::record::RecordBody;
use crate::log::{recover, LogError, LogReader, LogWriter, Membership, Record, RecordKind};
use crate::meta::Meta;
use crate::store::Store;
use crate::traits::Storage;
use crate::wire::{encode_frame_trusted, Envelope, Flags, Message};
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;
use master::Fit;
use members::{Change, Members};

/// How long after a checkpoint record its snapshot is encoded (R8): one
/// turn later, once what the turn produced has left.
pub const SNAPSHOT_DEFER: Duration = Duration::from_millis(1);

/// How often a site looks whether the snapshot it staged is in place
/// (see [`crate::traits::Storage::stage_snapshot`]), while one is.
pub const SNAPSHOT_POLL: Duration = Duration::from_millis(10);

/// A built snapshot waiting for its end record to be durable.
#[derive(Debug)]
struct PendingSnapshot {
    staged: StagedSnapshot,
    bytes: Vec<u8>,
}

/// A snapshot's start and end records, with their generations.
#[derive(Clone, Copy, Debug)]
struct StagedSnapshot {
    lsn: Lsn,
    generation: Generation,
    end: Lsn,
    end_generation: Generation,
}

/// What this site is doing in the group.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    /// Not started (before `rep_start`, or while joining).
    Idle,
    /// Takes writes and ships its log.
    Master,
    /// Replicates the master's log.
    Client,
}

/// One record of the log, as the site indexes it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct IndexEntry {
    /// Where it lives.
    pub lsn: Lsn,
    /// The generation that wrote it.
    pub generation: Generation,
    /// Its length in bytes (header included).
    pub len: u32,
    /// Its kind.
    pub kind: RecordKind,
}

impl IndexEntry {
    /// The LSN just past the record (same segment).
    pub fn end(&self) -> Lsn {
        Lsn::new(self.lsn.file, self.lsn.offset + self.len)
    }
}

/// Why a site could not be opened.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum OpenError<E> {
    /// The configuration is invalid.
    Config(crate::config::ConfigError),
    /// The log could not be recovered.
    Log(LogError<E>),
    /// The metadata record is corrupt.
    Meta(crate::meta::MetaError),
    /// The store snapshot is corrupt.
    Snapshot(crate::snapshot::SnapshotError),
    /// The log no longer starts at its beginning and no valid snapshot
    /// covers the part removed: the store cannot be rebuilt.
    NoBase,
    /// The stored snapshot was written by a view of fewer databases than
    /// this site now applies (R12: its `view_databases` was widened, or it
    /// is no longer a partial view), and the log before it is archived:
    /// the added databases' past is nowhere on this disk.
    ViewSnapshotTooNarrow,
}

impl<E: fmt::Display> fmt::Display for OpenError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpenError::Config(e) => write!(f, "invalid configuration: {e}"),
            OpenError::Log(e) => write!(f, "log recovery failed: {e}"),
            OpenError::Meta(e) => write!(f, "site metadata unreadable: {e}"),
            OpenError::Snapshot(e) => write!(f, "{e}; remove it to rebuild from the log, or re-initialise the site"),
            OpenError::NoBase => write!(
                f,
                "the log was archived and no valid store snapshot remains: re-initialise this site from the group"
            ),
            OpenError::ViewSnapshotTooNarrow => write!(
                f,
                "this site was a view of fewer databases, and its snapshot and archived log hold nothing of the others: restore the old view databases, or start it on a fresh home to initialise it from the group"
            ),
        }
    }
}

/// Why a read was refused.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReadError {
    /// The client is synchronising and NOWAIT is set (S5).
    Lockout,
    /// Leases are on and this master lacks a majority of grants (R10).
    LeaseExpired,
    /// The handle may have seen rolled-back data; reopen it (R14).
    HandleDead,
    /// This site is a view restricted to some databases and this is not
    /// one of them (R12): it holds none of its data, so it cannot answer.
    NotReplicated,
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Lockout => write!(
                f,
                "the site is synchronising with its master (NOWAIT set): retry later"
            ),
            ReadError::LeaseExpired => write!(
                f,
                "this master's lease has expired (no majority of grants): refused rather than serve stale data"
            ),
            ReadError::HandleDead => write!(
                f,
                "the handle may have seen rolled-back data: reopen it"
            ),
            ReadError::NotReplicated => write!(
                f,
                "this site is a view that does not replicate this database: read it on a site that does (the master, a client, or a view of it)"
            ),
        }
    }
}

/// Counters a status view shows (B5).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Stats {
    /// Frames handled.
    pub frames_in: u64,
    /// Frames sent (each destination counts).
    pub frames_out: u64,
    /// Frames dropped as malformed.
    pub dropped_malformed: u64,
    /// Frames dropped as stale (older generation) or out of role.
    pub dropped_stale: u64,
    /// Records received that were already present.
    pub duplicates: u64,
    /// Records applied from the master.
    pub records_applied: u64,
    /// Gap and catch-up requests sent (first sends and re-sends).
    pub log_requests: u64,
    /// Log requests this site served for others.
    pub requests_served: u64,
    /// Of `requests_served`, those served as a client for another client
    /// (S3).
    pub peer_served: u64,
    /// Writes this client forwarded to the master (W1).
    pub forwards_sent: u64,
    /// Forwarded writes this master committed for clients (W1).
    pub forwards_served: u64,
    /// Records sent in answer to log requests (as master or peer).
    pub records_served: u64,
    /// Log requests from other clients this client could not serve
    /// (answered REREQUEST, S3).
    pub requests_refused: u64,
    /// Log requests answered short of a record the requester cannot take:
    /// one larger than the `record_bytes` its LOG_REQ announced (its
    /// `max_record`), or whose key, value or operation count is above the
    /// `max_key`, `max_value` or `max_txn_ops` it announced. The requester
    /// would refuse such a record in any frame, so the answer stops before
    /// it instead of sending, at every re-request, a frame that can never
    /// be taken. Nonzero means a member's limits are smaller than the
    /// group's records: it cannot catch up past them (R2, R11).
    pub unfit_records: u64,
    /// Sends dropped because the output queue was full.
    pub sends_dropped: u64,
    /// Commits answered.
    pub commits: u64,
    /// Commits whose ack policy failed.
    pub perm_failed: u64,
    /// Log flushes asked of the host.
    pub flushes: u64,
    /// Commits rolled back.
    pub rolled_back: u64,
    /// Times old log segments were removed (R8).
    pub segments_archived: u64,
    /// Checkpoint snapshots built (R8).
    pub snapshots_built: u64,
    /// Of those, the ones built over more than one step, while records
    /// were applied (fuzzy, see [`crate::snapshot`]).
    pub snapshots_built_in_steps: u64,
    /// Elections this site started or joined.
    pub elections: u64,
    /// Times this master stepped down for want of a majority (P3).
    pub step_downs: u64,
    /// Internal initialisations this master began serving: UPDATEs sent
    /// in answer to UPDATE_REQ (S6).
    pub inits_served: u64,
    /// Snapshot pages this master sent (S6).
    pub pages_sent: u64,
    /// Snapshots this client installed: its log restarted at the master's
    /// first LSN (S6).
    pub inits_installed: u64,
    /// Internal initialisations this client completed (INIT_DONE, S6).
    pub inits_done: u64,
    /// Channel messages and requests this site sent, local ones included
    /// (W2).
    pub channel_sent: u64,
    /// Channel messages and requests handed to this site's dispatch (W2).
    pub channel_received: u64,
    /// Channel requests of this site that ended without a response:
    /// timed out, refused by the receiver, or cut short (W2).
    pub channel_failed: u64,
    /// Channel messages and requests this site refused or dropped: no
    /// dispatch, not master on a channel to the master, or no room (W2).
    pub channel_refused: u64,
    /// Channel frames held back for a while: to a member whose connection
    /// had not come up yet since this site learned of it, or from a site
    /// this site's membership did not know yet (W2).
    pub channel_held: u64,
}

/// A commit the master is waiting on.
#[derive(Clone, Copy, Debug)]
struct PendingCommit {
    id: RequestId,
    token: CommitToken,
    durability: crate::config::Durability,
    deadline: Instant,
    acks: u32,
    needed: u32,
    permanent: bool,
    timed_out: bool,
}

/// A key's last permanent value and the not-yet-permanent writes after it.
#[derive(Clone, Debug)]
struct Unsettled {
    base: Option<Vec<u8>>,
    writes: VecDeque<(Lsn, Option<Vec<u8>>)>,
}

/// A waiting `txn_applied`.
#[derive(Clone, Copy, Debug)]
struct Waiter {
    id: RequestId,
    token: CommitToken,
    deadline: Instant,
}

/// The one outstanding log request of a client (gap fill or catch-up).
#[derive(Clone, Copy, Debug)]
struct Want {
    /// End of the wanted range, exclusive; zero = open-ended (catch-up).
    to: Lsn,
    /// The request is settled once the log reaches this LSN.
    until: Lsn,
    /// When to ask again.
    next_at: Instant,
    /// The current back-off.
    wait: Duration,
}

/// Where a client stands with its master.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum SyncState {
    /// No master known.
    NoMaster,
    /// Master known, DELAYCLIENT: wait for `rep_sync` (S2).
    Delayed,
    /// Finding the common point with the master's log by bisection over
    /// this site's index (S1, P2). `lo` is the highest index known to be
    /// "to the right" (matched, or older than the master's log), with
    /// whether it matched; `hi` the lowest index known not to match.
    Verify {
        lo: Option<(usize, bool)>,
        hi: usize,
        probe: usize,
        resend_at: Instant,
    },
    /// Fetching the master's log until `target` is reached.
    CatchUp { target: Lsn },
    /// Internal initialisation (S6): asking for the master's snapshot and
    /// taking its pages (the log phase after the install is `CatchUp`).
    Init,
    /// In step with the master.
    Ready,
    /// No overlap with the master's log and no way to initialise.
    Stuck,
}

/// Why a rollback was not made.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Refused {
    /// AUTOROLLBACK is off and commits would go (WOULD_ROLLBACK raised).
    WouldRollback,
    /// The cut is below the snapshot and the log before it is archived:
    /// nothing to rebuild the store from; the site needs initialising.
    NoBase,
    /// The storage failed.
    Storage,
}

/// A join under way.
#[derive(Clone, Debug)]
struct Joining {
    helper: String,
    next_at: Instant,
}

/// The replication state machine of one site.
pub struct Site<S: Storage> {
    cfg: Config,
    address: String,
    storage: S,
    writer: LogWriter,
    reader: LogReader,
    index: Vec<IndexEntry>,
    meta: Meta,
    store: Store,
    members: Members,
    role: Role,
    master: Option<SiteId>,
    now: Instant,
    out: VecDeque<Output>,
    next_request: RequestId,
    next_txn: u64,
    flushed: Lsn,
    /// Highest LSN handed to the operating system ([`Storage::write_out`]
    /// or a sync): survives a crash of this process.
    written: Lsn,
    flush_asked: Lsn,
    flush_want: Lsn,
    /// A client applied a NO_SYNC permanent record: its ack goes out once
    /// the outputs queued so far are taken, so a batch of records gets one
    /// ack and one `write_out`.
    ack_due: bool,
    /// A master's lone commit without sync: its record is written out once
    /// the outputs queued so far are taken (its frames handed to the
    /// transport), so the write overlaps the round trip to the clients
    /// rather than following the first ack (R4, R5).
    write_out_due: bool,
    // Master.
    commits: VecDeque<PendingCommit>,
    heartbeat_at: Option<Instant>,
    checkpoint_at: Option<Instant>,
    writes_since_checkpoint: bool,
    // Client.
    sync: SyncState,
    /// Peer addresses to ask for the log before the master (S3).
    peers: Vec<String>,
    /// The peer the outstanding log request went to.
    asked_peer: Option<SiteId>,
    /// Early records: LSN -> (previous LSN, record, envelope flags).
    pending: BTreeMap<Lsn, (Lsn, Vec<u8>, Flags)>,
    pending_bytes: usize,
    want: Option<Want>,
    master_heard: Instant,
    monitor_fired: bool,
    perm_lsn: Lsn,
    acked_sent: Lsn,
    startup_done: bool,
    sync_target: Lsn,
    find_master_at: Option<Instant>,
    /// Writes this client forwarded to the master (W1).
    forwards: Vec<forward::Forward>,
    /// Writes this master commits for clients (W1).
    forwarded: Vec<forward::Forwarded>,
    /// The last forwarded request number taken from each client (W1).
    forward_seen: BTreeMap<SiteId, u64>,
    /// Channel requests this site waits on (W2).
    channel_requests: Vec<channel::Pending>,
    /// The host has a dispatch for channel messages (W2).
    channel_dispatch: bool,
    /// Channel responses, refusals and messages waiting for their site's
    /// first connection (W2).
    channel_outbox: Vec<channel::Parked>,
    /// Channel messages from sites not (yet) in the membership (W2).
    channel_held: Vec<channel::Held>,
    /// Members the host has reported on (a connection up or down, or a
    /// failed try) since this site opened or learned of them (W2).
    channel_reported: BTreeSet<SiteId>,
    /// The host has reported a connection (or a failed try) since this
    /// site opened: it is a host that reports connections (W2).
    reports_connections: bool,
    // Both.
    waiters: Vec<Waiter>,
    joining: Option<Joining>,
    // Elections.
    election: Option<election::Election>,
    elect_at: Option<Instant>,
    /// When this site cast its VOTE2 in the current egen (None: not since
    /// it opened).
    voted_at: Option<Instant>,
    had_master: bool,
    opened_at: Instant,
    master_since: Instant,
    // Leases, transfer, handles.
    lease_grants: BTreeMap<SiteId, Instant>,
    lease_req_at: Option<Instant>,
    grant_until: Instant,
    transfer: Option<(SiteId, Instant)>,
    transfer_at: Option<Lsn>,
    boost: bool,
    rollback_epoch: u64,
    /// On a master with leases: for each key written by commits that are
    /// not yet permanent, the key's last permanent value and those writes
    /// in LSN order (R10: reads answer with permanent data only).
    unsettled: BTreeMap<(String, Vec<u8>), Unsettled>,
    /// The highest LSN whose commit met its ack policy.
    permanent_lsn: Lsn,
    /// The start record of the stored snapshot: recovery replays the log
    /// after it (zero: no snapshot).
    snapshot_lsn: Lsn,
    /// The stored snapshot's end record: a rollback below it makes the
    /// snapshot unusable (see [`crate::snapshot`]).
    snapshot_end: Lsn,
    /// A checkpoint's snapshot being built a step per turn (R8).
    building: Option<crate::snapshot::SnapshotBuilder>,
    /// When to take the next building step.
    build_at: Option<Instant>,
    /// Steps the snapshot being built has taken so far.
    build_steps: u32,
    /// A snapshot taken at a checkpoint record, written once that record
    /// is durable (so a snapshot never runs ahead of the log).
    pending_snapshot: Option<PendingSnapshot>,
    /// A snapshot handed to the storage with `stage_snapshot`, not yet
    /// known to be in place: (its record, that record's generation). Until
    /// it is, `snapshot_lsn` and archiving stay as they were.
    snapshot_staged: Option<StagedSnapshot>,
    /// When to look again whether the staged snapshot is in place.
    snapshot_check_at: Option<Instant>,
    /// When to encode the snapshot a checkpoint record asked for: a moment
    /// after the record, so the frames of the turn that applied it leave
    /// before the encoding pauses the site (see `take_snapshot`).
    snapshot_due: Option<Instant>,
    /// When this site last encoded a snapshot (None: not since it opened).
    snapshot_taken_at: Option<Instant>,
    /// Flushes asked for now only raise the target; the client issues
    /// them once it is no longer catching up (see `on_bulk_log`).
    hold_flushes: bool,
    /// This client's internal initialisation, while one is under way (S6).
    init: Option<init_client::Incoming>,
    /// Records up to this LSN are in the store already, from an installed
    /// snapshot: they are logged, not applied (S6). Zero: none.
    base_lsn: Lsn,
    /// An initialisation completed; INIT_DONE is raised once caught up.
    init_owed: bool,
    /// While an initialisation replaces the log (`init_in_progress`): the
    /// record (generation, LSN) its snapshot reflects. The site held what
    /// it acknowledged in the log it gave up, and the snapshot stands for
    /// it now: it votes only for a candidate at least that far (S6).
    held: Option<(Generation, Lsn)>,
    /// The snapshot this master serves to initialising clients (S6).
    serving: Option<init_master::Serving>,
    stats: Stats,
    frame_buf: Vec<u8>,
    /// Log bytes read back to answer a log request (master).
    read_buf: Vec<u8>,
    /// The entries of the BULK_LOG being packed (master).
    bulk_buf: Vec<u8>,
}

impl<S: Storage> Site<S> {
    /// Open a site over its storage: recover the log, read the metadata,
    /// and rebuild the store and membership by replaying the log.
    pub fn open(
        cfg: Config,
        address: &str,
        mut storage: S,
        now: Instant,
    ) -> Result<Self, OpenError<S::Error>> {
        cfg.validate().map_err(OpenError::Config)?;
        let recovered = recover(&mut storage, &cfg.limits).map_err(OpenError::Log)?;
        let meta = match storage
            .read_meta()
            .map_err(|e| OpenError::Log(LogError::Storage(e)))?
        {
            Some(bytes) => Meta::decode(&bytes).map_err(OpenError::Meta)?,
            None => Meta::default(),
        };
        let writer = LogWriter::new(&recovered, cfg.limits);
        let mut site = Site {
            reader: LogReader::new(cfg.limits),
            cfg,
            address: String::from(address),
            storage,
            writer,
            index: Vec::new(),
            meta,
            store: Store::new(),
            members: Members::default(),
            role: Role::Idle,
            master: None,
            now,
            out: VecDeque::new(),
            next_request: 1,
            next_txn: 1,
            flushed: recovered.last,
            written: recovered.last,
            flush_asked: recovered.last,
            flush_want: recovered.last,
            ack_due: false,
            write_out_due: false,
            commits: VecDeque::new(),
            heartbeat_at: None,
            checkpoint_at: None,
            writes_since_checkpoint: false,
            sync: SyncState::NoMaster,
            peers: Vec::new(),
            asked_peer: None,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            want: None,
            master_heard: now,
            monitor_fired: false,
            perm_lsn: Lsn::ZERO,
            acked_sent: Lsn::ZERO,
            startup_done: false,
            sync_target: Lsn::ZERO,
            find_master_at: None,
            waiters: Vec::new(),
            forwards: Vec::new(),
            forwarded: Vec::new(),
            forward_seen: BTreeMap::new(),
            channel_requests: Vec::new(),
            channel_dispatch: false,
            channel_outbox: Vec::new(),
            channel_held: Vec::new(),
            channel_reported: BTreeSet::new(),
            reports_connections: false,
            joining: None,
            election: None,
            elect_at: None,
            voted_at: None,
            had_master: false,
            opened_at: now,
            master_since: now,
            lease_grants: BTreeMap::new(),
            lease_req_at: None,
            grant_until: Instant(0),
            transfer: None,
            transfer_at: None,
            boost: false,
            rollback_epoch: 0,
            unsettled: BTreeMap::new(),
            permanent_lsn: Lsn::ZERO,
            snapshot_lsn: Lsn::ZERO,
            snapshot_end: Lsn::ZERO,
            building: None,
            build_at: None,
            build_steps: 0,
            pending_snapshot: None,
            snapshot_staged: None,
            snapshot_check_at: None,
            snapshot_due: None,
            snapshot_taken_at: None,
            hold_flushes: false,
            init: None,
            base_lsn: Lsn::ZERO,
            init_owed: false,
            held: None,
            serving: None,
            stats: Stats::default(),
            frame_buf: Vec::new(),
            read_buf: Vec::new(),
            bulk_buf: Vec::new(),
        };
        let base = match site
            .storage
            .read_snapshot()
            .map_err(|e| OpenError::Log(LogError::Storage(e)))?
        {
            Some(bytes) => Some(crate::snapshot::decode(&bytes).map_err(OpenError::Snapshot)?),
            None => None,
        };
        let (base, too_narrow) = site.usable_base(base);
        if site.meta.init_in_progress {
            // An initialisation was under way (S6): keep what is
            // consistent, clean up the rest.
            site.reopen_init(recovered.first, base)
                .map_err(OpenError::Log)?;
        } else {
            site.rebuild(recovered.first, base)
                .map_err(OpenError::Log)?;
        }
        if !site.index.is_empty() && !site.has_full_history() && site.snapshot_lsn.is_zero() {
            return Err(if too_narrow {
                OpenError::ViewSnapshotTooNarrow
            } else {
                OpenError::NoBase
            });
        }
        // A crash just after a new segment was started can leave it with no
        // record: the log ends in the previous segment, and continues right
        // after its last record (where the master's next one may fit).
        if let Some(e) = site.index.last().copied() {
            if site.writer.next_lsn().file > e.lsn.file {
                site.writer
                    .truncate(&mut site.storage, e.end(), e.lsn, e.generation)
                    .map_err(OpenError::Log)?;
            }
        }
        Ok(site)
    }

    /// Rebuild from the log and, when it is valid for this log, a snapshot:
    /// a snapshot whose record is not in the log (or has another
    /// generation there) is ignored.
    fn rebuild(
        &mut self,
        first: Lsn,
        base: Option<crate::snapshot::Snapshot>,
    ) -> Result<(), LogError<S::Error>> {
        let (lsn, gen, end, end_gen) = base
            .as_ref()
            .map_or((Lsn::ZERO, Generation(0), Lsn::ZERO, Generation(0)), |b| {
                (b.lsn, b.generation, b.end, b.end_generation)
            });
        self.replay(first, base)?;
        // Both ends must be this log's: a fuzzy snapshot may reflect any
        // record up to its end (see `crate::snapshot`).
        let holds = |l: Lsn, g: Generation| {
            self.index_of(l)
                .is_some_and(|i| self.index[i].generation == g)
        };
        let valid = !lsn.is_zero() && holds(lsn, gen) && holds(end, end_gen);
        if valid {
            self.snapshot_lsn = lsn;
            self.snapshot_end = end;
        } else {
            self.snapshot_lsn = Lsn::ZERO;
            self.snapshot_end = Lsn::ZERO;
            if !lsn.is_zero() {
                self.replay(first, None)?;
            }
        }
        Ok(())
    }

    /// The log still starts at its first record ever, so the store can be
    /// rebuilt from the log alone.
    fn has_full_history(&self) -> bool {
        self.index.first().is_none_or(|e| {
            e.lsn
                == Lsn::new(
                    crate::log::segment::FIRST_SEGMENT,
                    crate::log::segment::SEGMENT_HEADER_LEN as u32,
                )
        })
    }

    /// Rebuild the index, store and membership from the log on storage,
    /// starting from `base` (applying only records after it) or empty.
    fn replay(
        &mut self,
        first: Lsn,
        base: Option<crate::snapshot::Snapshot>,
    ) -> Result<(), LogError<S::Error>> {
        self.index.clear();
        let base_lsn = match base {
            Some(b) => {
                self.store = b.store;
                self.restrict_store();
                self.members = b.members;
                b.lsn
            }
            None => {
                self.store = Store::new();
                self.members.clear();
                Lsn::ZERO
            }
        };
        if first.is_zero() {
            return Ok(());
        }
        let last = self.writer.last_lsn();
        // The log does not change while it is replayed: read it in chunks.
        let r = self.replay_from(first, last, base_lsn);
        self.reader.end_scan();
        r
    }

    fn replay_from(
        &mut self,
        first: Lsn,
        last: Lsn,
        base_lsn: Lsn,
    ) -> Result<(), LogError<S::Error>> {
        let mut lsn = first;
        loop {
            let (view, next) = self.reader.scan(&mut self.storage, lsn)?;
            let entry = IndexEntry {
                lsn: view.lsn,
                generation: view.generation,
                len: view.bytes.len() as u32,
                kind: view.kind,
            };
            if entry.lsn > base_lsn {
                match view.decode(&self.cfg.limits)? {
                    // A partial view applies its databases only (R12).
                    Record::Commit(c) => {
                        let cfg = &self.cfg;
                        self.store.apply_where(&c, |db| cfg.replicates(db))?
                    }
                    Record::Membership(m) => {
                        self.members.apply(&m);
                    }
                    Record::Checkpoint(_) | Record::NewGeneration(_) => {}
                }
            }
            self.index.push(entry);
            if entry.lsn >= last {
                break;
            }
            lsn = next;
        }
        Ok(())
    }

    // ----- accessors -------------------------------------------------------

    /// This site's id (zero before it has joined or created a group).
    pub fn id(&self) -> SiteId {
        self.meta.site
    }

    /// This site's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Master, client, or idle.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The master this site follows (itself when master).
    pub fn master(&self) -> Option<SiteId> {
        self.master
    }

    /// Current master generation.
    pub fn generation(&self) -> Generation {
        self.meta.generation
    }

    /// Current election generation.
    pub fn egen(&self) -> crate::ids::ElectionGen {
        self.meta.egen
    }

    /// LSN of the last record in the log.
    pub fn last_lsn(&self) -> Lsn {
        self.writer.last_lsn()
    }

    /// Highest LSN known durable.
    pub fn flushed_lsn(&self) -> Lsn {
        self.flushed
    }

    /// The key-value state.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The membership.
    pub fn members(&self) -> &Members {
        &self.members
    }

    /// The log index (every record's LSN, generation, length and kind).
    pub fn log_index(&self) -> &[IndexEntry] {
        &self.index
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The storage (hosts use it to flush; the simulator to crash it).
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Give the storage back (shutdown, or a simulated crash).
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// A client that is synchronising (verifying, catching up, or being
    /// initialised): reads wait (or fail with NOWAIT).
    pub fn is_synchronizing(&self) -> bool {
        self.role == Role::Client
            && (matches!(
                self.sync,
                SyncState::Verify { .. } | SyncState::CatchUp { .. } | SyncState::Init
            ) || self.init_active())
    }

    /// Read a key (S5: refused with LOCKOUT while synchronising under
    /// NOWAIT; the async driver waits instead when NOWAIT is off).
    pub fn get(&self, db: &str, key: &[u8]) -> Result<Option<&[u8]>, ReadError> {
        self.check_replicated(db)?;
        if self.cfg.nowait && self.is_synchronizing() {
            return Err(ReadError::Lockout);
        }
        Ok(self.store.get(db, key))
    }

    /// Read the encoded record at `lsn` (tests compare logs through it).
    pub fn read_record(&mut self, lsn: Lsn) -> Option<Vec<u8>> {
        self.reader
            .read(&mut self.storage, lsn)
            .ok()
            .map(|(v, _)| v.bytes.to_vec())
    }

    // ----- outputs ---------------------------------------------------------

    /// The next thing the host must do, if any. Wakes: after every input.
    pub fn poll_output(&mut self) -> Option<Output> {
        if self.out.is_empty() && self.ack_due {
            self.ack_due = false;
            if self.role == Role::Client {
                self.maybe_ack();
            }
        }
        if self.out.is_empty() && self.write_out_due {
            self.write_out_due = false;
            if self.role == Role::Master {
                self.write_out();
            }
        }
        self.out.pop_front()
    }

    /// The earliest time at which [`Site::handle_timeout`] has work to do.
    /// Changes after any input.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for c in &self.commits {
            if !c.timed_out && !c.permanent {
                at(Some(c.deadline));
            }
        }
        for w in &self.waiters {
            at(Some(w.deadline));
        }
        at(self.forward_deadline());
        at(self.channel_deadline());
        at(self.want.map(|w| w.next_at));
        at(self.init_deadline());
        at(self.serving_deadline());
        at(self.heartbeat_at);
        at(self.checkpoint_at);
        at(self.snapshot_due);
        at(self.snapshot_check_at);
        at(self.build_at);
        at(self.joining.as_ref().map(|j| j.next_at));
        // Served only to clients (an idle site may have one pending).
        if self.role == Role::Client {
            at(self.find_master_at);
        }
        if let SyncState::Verify { resend_at, .. } = self.sync {
            at(Some(resend_at));
        }
        if let Some(d) = self.monitor_deadline() {
            at(Some(d));
        }
        at(self.election_deadline());
        at(self.lease_deadline());
        at(self.transfer.map(|(_, t)| t));
        at(self.majority_deadline());
        t
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    fn answer(&mut self, a: Answer) {
        if let Some(a) = self.route_forwarded(a) {
            self.out.push_back(Output::Answer(a));
        }
    }

    fn envelope(&self, flags: Flags) -> Envelope {
        Envelope {
            from: self.meta.site,
            generation: self.meta.generation,
            egen: self.meta.egen,
            lsn: self.writer.last_lsn(),
            flags,
        }
    }

    /// Encode `msg` once and queue it for every destination.
    fn send_many(&mut self, dests: &[Dest], flags: Flags, msg: &Message<'_>) {
        self.send_many_as(dests, flags, msg, false);
    }

    /// [`Site::send_many`], marking the frames urgent or not (see
    /// [`Output::Send`]).
    fn send_many_as(&mut self, dests: &[Dest], flags: Flags, msg: &Message<'_>, urgent: bool) {
        let env = self.envelope(flags);
        let mut buf = core::mem::take(&mut self.frame_buf);
        buf.clear();
        if encode_frame_trusted(&env, msg, &mut buf, &self.cfg.limits).is_ok() {
            for d in dests {
                if self.out.len() >= self.cfg.limits.max_outputs as usize {
                    self.stats.sends_dropped += 1;
                    continue;
                }
                self.stats.frames_out += 1;
                self.out.push_back(Output::Send {
                    to: d.clone(),
                    frame: buf.clone(),
                    urgent,
                });
            }
        }
        self.frame_buf = buf;
    }

    /// Encode `msg` as a frame of its own (None if it does not encode).
    fn encode(&self, flags: Flags, msg: &Message<'_>, size_hint: usize) -> Option<Vec<u8>> {
        let mut buf = Vec::with_capacity(size_hint);
        encode_frame_trusted(&self.envelope(flags), msg, &mut buf, &self.cfg.limits).ok()?;
        Some(buf)
    }

    /// Queue a frame encoded with [`Site::encode`] for one destination.
    fn send_frame(&mut self, to: Dest, frame: Vec<u8>) {
        if self.out.len() >= self.cfg.limits.max_outputs as usize {
            self.stats.sends_dropped += 1;
            return;
        }
        self.stats.frames_out += 1;
        self.out.push_back(Output::Send {
            to,
            frame,
            urgent: false,
        });
    }

    fn send(&mut self, to: SiteId, flags: Flags, msg: &Message<'_>) {
        self.send_many(&[Dest::Site(to)], flags, msg);
    }

    /// Send to every other member (views included: they replicate too).
    fn broadcast(&mut self, flags: Flags, msg: &Message<'_>) {
        self.broadcast_as(flags, msg, false);
    }

    /// [`Site::broadcast`], marking the frames urgent or not.
    fn broadcast_as(&mut self, flags: Flags, msg: &Message<'_>, urgent: bool) {
        let me = self.meta.site;
        let dests: Vec<Dest> = self
            .members
            .iter()
            .filter(|m| m.id != me)
            .map(|m| Dest::Site(m.id))
            .collect();
        self.send_many_as(&dests, flags, msg, urgent);
    }

    /// Ask the host to make the log durable up to `lsn`. At most one flush
    /// is outstanding: while one is in flight, later requests only raise
    /// the target, and the next flush (issued when this one completes)
    /// covers them all — group commit.
    fn ask_flush(&mut self, lsn: Lsn) {
        if lsn <= self.flushed {
            return;
        }
        self.flush_want = self.flush_want.max(lsn);
        if self.flush_asked <= self.flushed && !self.hold_flushes {
            self.issue_flush();
        }
    }

    /// Hand the log to the operating system (a crash of this process no
    /// longer loses it). Returns the highest LSN written; on a storage
    /// error nothing more is, and the caller waits for a later call.
    fn write_out(&mut self) -> Lsn {
        let last = self.writer.last_lsn();
        if self.written < last && self.storage.write_out().is_ok() {
            self.written = last;
        }
        self.written
    }

    fn issue_flush(&mut self) {
        let lsn = self.flush_want;
        self.flush_asked = lsn;
        self.stats.flushes += 1;
        self.out.push_back(Output::Flush { lsn });
    }

    fn save_meta(&mut self) {
        let bytes = self.meta.encode();
        // A failed metadata write leaves the old record in place; the site
        // carries on with its in-memory state and retries at the next change.
        let _ = self.storage.write_meta(&bytes);
    }

    fn new_request(&mut self) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    // ----- the log ---------------------------------------------------------

    /// Append a record this site writes (as master); apply it; index it.
    fn append_own(&mut self, body: &RecordBody<'_, '_>) -> Result<IndexEntry, LogError<S::Error>> {
        let lsn = self
            .writer
            .append(&mut self.storage, self.meta.generation, body)?;
        let next = self.writer.next_lsn();
        let entry = IndexEntry {
            lsn,
            generation: self.meta.generation,
            len: next.offset - lsn.offset,
            kind: body.kind(),
        };
        self.index.push(entry);
        match body {
            RecordBody::Commit { ops, .. } => {
                for op in ops.iter().filter(|op| self.cfg.replicates(op.db())) {
                    self.store.apply_op(op);
                }
            }
            RecordBody::Membership(m) => self.apply_membership(m),
            RecordBody::Checkpoint(_) => self.take_snapshot(),
            RecordBody::NewGeneration(_) => {}
        }
        Ok(entry)
    }

    /// Append a record received from the master; apply it; index it. The
    /// record must come from a frame that [`crate::wire::decode_frame`]
    /// accepted (it checked the record in full).
    fn append_replicated(
        &mut self,
        lsn: Lsn,
        record: &[u8],
    ) -> Result<IndexEntry, LogError<S::Error>> {
        // Every record reaches here from a frame, whose records were checked
        // in full (checksum at this LSN, body) when it was decoded: read its
        // header and decode its body once, for the log and the store both.
        let view = crate::log::RecordView::reparse(record, lsn, &self.cfg.limits)?;
        let decoded = view.redecode(&self.cfg.limits)?;
        self.writer.append_checked(&mut self.storage, &view)?;
        let entry = IndexEntry {
            lsn,
            generation: view.generation,
            len: view.bytes.len() as u32,
            kind: view.kind,
        };
        self.index.push(entry);
        match decoded {
            // Already in the installed snapshot (S6).
            _ if lsn <= self.base_lsn => {}
            Record::Commit(c) => self.apply_commit(&c)?,
            Record::Membership(m) => self.apply_membership(&m),
            Record::Checkpoint(_) if self.replicated_snapshot_due() => self.take_snapshot(),
            Record::Checkpoint(_) | Record::NewGeneration(_) => {}
        }
        self.stats.records_applied += 1;
        Ok(entry)
    }

    /// Does a checkpoint record received from the master call for a
    /// snapshot (R8)? Encoding and writing one costs time in proportion to
    /// the whole store. A client catching up takes none: it applies many
    /// checkpoints in a moment, each snapshot stale at once, and what they
    /// would let it archive it can fetch again; the first checkpoint it
    /// applies once caught up gives one. Otherwise a client takes at most
    /// one per half `checkpoint_delay` of its own time (live, the master's
    /// checkpoints are that far apart anyway).
    fn replicated_snapshot_due(&self) -> bool {
        if matches!(self.sync, SyncState::CatchUp { .. }) {
            return false;
        }
        let gap = self.cfg.timeouts.checkpoint_delay / 2;
        self.snapshot_taken_at.is_none_or(|t| self.now >= t + gap)
    }

    /// A checkpoint record was just applied: a snapshot is due (R8). It is
    /// encoded at the next timeout turn, [`SNAPSHOT_DEFER`] later, not
    /// now: encoding takes time in proportion to the whole store, and in
    /// the meantime the records, acks and answers of this turn can already
    /// be on their way (a host with one thread sends nothing while the
    /// site works). The snapshot then reflects the last record applied by
    /// then, which is as good a base for recovery as the checkpoint.
    fn take_snapshot(&mut self) {
        self.snapshot_taken_at = Some(self.now);
        if self.snapshot_due.is_none() {
            self.snapshot_due = Some(self.now + SNAPSHOT_DEFER);
        }
    }

    /// Encode the due snapshot as of the last record applied, to be written
    /// once that record is durable.
    fn encode_due_snapshot(&mut self) {
        if self.snapshot_due.take().is_none() {
            return;
        }
        let Some(entry) = self.index.last().copied() else {
            return;
        };
        if entry.lsn <= self.base_lsn || entry.lsn <= self.newest_snapshot_start() {
            return;
        }
        if self.building.is_some() {
            // One is being built: it will do.
            return;
        }
        // Room for the whole store, plus what it may grow by meanwhile.
        let room = crate::snapshot::capacity_for(&self.store);
        self.building = Some(crate::snapshot::SnapshotBuilder::covering(
            entry.lsn,
            entry.generation,
            &self.members,
            room.saturating_add(room / 8),
            self.snapshot_covers(),
        ));
        self.build_at = Some(self.now);
    }

    /// One bounded step of the snapshot being built (about
    /// `snapshot_step_bytes` of entries): a site pauses for a
    /// step, not for its whole store. Once every entry is in, its end is
    /// the last record applied, and it is written once that is durable.
    fn build_snapshot_step(&mut self) {
        self.build_at = None;
        let Some(b) = self.building.as_mut() else {
            return;
        };
        if !b.step(&self.store, self.cfg.snapshot_step_bytes.max(1) as usize) {
            self.build_at = Some(self.now);
            self.build_steps += 1;
            return;
        }
        self.stats.snapshots_built += 1;
        if core::mem::take(&mut self.build_steps) > 0 {
            self.stats.snapshots_built_in_steps += 1;
        }
        let Some(b) = self.building.take() else {
            return;
        };
        let Some(end) = self.index.last().copied() else {
            return;
        };
        let staged = StagedSnapshot {
            lsn: b.lsn(),
            generation: b.generation(),
            end: end.lsn,
            end_generation: end.generation,
        };
        let bytes = b.finish(end.lsn, end.generation);
        self.pending_snapshot = Some(PendingSnapshot { staged, bytes });
        self.ask_flush(end.lsn);
    }

    /// The start of the newest snapshot stored or on its way to storage.
    fn newest_snapshot_start(&self) -> Lsn {
        self.snapshot_staged
            .map_or(self.snapshot_lsn, |s| s.lsn.max(self.snapshot_lsn))
    }

    /// The end of the newest snapshot stored or on its way to storage: the
    /// stored file may already be the staged one (R8).
    fn newest_snapshot_end(&self) -> Lsn {
        self.snapshot_staged
            .map_or(self.snapshot_end, |s| s.end.max(self.snapshot_end))
    }

    /// Hand a pending snapshot whose record is now durable to the storage,
    /// which puts it in place, perhaps on another thread (see
    /// [`Storage::stage_snapshot`]); [`Site::settle_staged_snapshot`] takes
    /// it from there.
    fn settle_snapshot(&mut self) {
        let Some(p) = self.pending_snapshot.as_ref() else {
            return;
        };
        // Never ahead of the log: every record it may reflect is durable.
        if p.staged.end > self.flushed {
            return;
        }
        let Some(p) = self.pending_snapshot.take() else {
            return;
        };
        if self.storage.stage_snapshot(p.bytes).is_err() {
            return;
        }
        self.snapshot_staged = Some(p.staged);
        self.settle_staged_snapshot();
    }

    /// Once the staged snapshot is in place, it is the stored one: remove
    /// the segments retention no longer asks for. Until then archiving
    /// waits, so the log never depends on a snapshot not yet durable.
    fn settle_staged_snapshot(&mut self) {
        let Some(s) = self.snapshot_staged else {
            self.snapshot_check_at = None;
            return;
        };
        if !self.storage.staged_snapshot_durable() {
            self.snapshot_check_at = Some(self.now + SNAPSHOT_POLL);
            return;
        }
        self.snapshot_staged = None;
        self.snapshot_check_at = None;
        // A rollback below its end clears it first (see `roll_back_to`);
        // this only guards the invariant.
        let holds = |l: Lsn, g: Generation| {
            self.index_of(l)
                .is_some_and(|i| self.index[i].generation == g)
        };
        if holds(s.lsn, s.generation) && holds(s.end, s.end_generation) && s.lsn > self.snapshot_lsn
        {
            self.snapshot_lsn = s.lsn;
            self.snapshot_end = s.end;
            self.archive();
        }
    }

    /// Remove whole segments older than the retention before the snapshot.
    fn archive(&mut self) {
        let Some(keep) = self.cfg.log_retention_segments else {
            return;
        };
        if self.snapshot_lsn.is_zero() {
            return;
        }
        let mut oldest = self.snapshot_lsn.file.saturating_sub(keep);
        if let Some(f) = self.serving_keeps() {
            // A client being initialised will ask for the log from there.
            oldest = oldest.min(f);
        }
        let Ok(segs) = self.storage.segments() else {
            return;
        };
        let mut removed = false;
        for seg in segs.into_iter().filter(|&s| s < oldest) {
            if self.storage.remove_segment(seg).is_ok() {
                removed = true;
            }
        }
        if removed {
            let cut = self.index.partition_point(|e| e.lsn.file < oldest);
            self.index.drain(..cut);
            self.stats.segments_archived += 1;
            if cut > 0 && matches!(self.sync, SyncState::Verify { .. }) {
                // The bisection's positions name index entries that moved:
                // verify again over the log that is left.
                self.start_sync();
            }
        }
    }

    fn apply_membership(&mut self, m: &Membership<'_>) {
        match self.members.apply(m) {
            Change::Added(id) => {
                // A new member has not had a chance to be heard yet: P3
                // counts it as reachable until a monitor period passes.
                let now = self.now;
                if let Some(x) = self.members.get_mut(id) {
                    x.last_heard = now;
                }
                self.event(Event::SiteAdded(id));
                // Channel messages it sent before this site knew it (W2).
                self.channel_member_added(id);
            }
            Change::Removed(id) if id == self.meta.site => self.event(Event::LocalSiteRemoved),
            Change::Removed(id) => {
                self.event(Event::SiteRemoved(id));
                self.channel_member_removed(id);
            }
            Change::Updated(_) | Change::None => {}
        }
    }

    /// Position in the index of the record at exactly `lsn`.
    fn index_of(&self, lsn: Lsn) -> Option<usize> {
        self.index.binary_search_by(|e| e.lsn.cmp(&lsn)).ok()
    }

    /// Index position of the first record at or after `lsn`, treating the
    /// end of a segment as the start of the next.
    fn index_from(&self, lsn: Lsn) -> Result<usize, ()> {
        if lsn.is_zero() {
            return Ok(0);
        }
        let pos = self.index.partition_point(|e| e.lsn < lsn);
        if self.index.get(pos).is_some_and(|e| e.lsn == lsn) {
            return Ok(pos);
        }
        // `lsn` is the end of the record before `pos` (the same segment or a
        // switch to the next): a valid position.
        match pos.checked_sub(1).and_then(|p| self.index.get(p)) {
            Some(prev) if prev.end() == lsn => Ok(pos),
            _ => Err(()),
        }
    }

    /// Cut the log after index position `keep` (exclusive: entries
    /// `0..keep` stay), reporting rolled-back commits and rebuilding the
    /// store. Refused when AUTOROLLBACK is off and commits would go, or
    /// when the store cannot be rebuilt at the cut.
    fn rollback_to(&mut self, keep: usize) -> Result<(), Refused> {
        if keep >= self.index.len() {
            return Ok(());
        }
        let commits: Vec<CommitToken> = self.index[keep..]
            .iter()
            .filter(|e| e.kind == RecordKind::Commit)
            .map(|e| CommitToken {
                lsn: e.lsn,
                generation: e.generation,
            })
            .collect();
        if !commits.is_empty() && !self.cfg.autorollback {
            self.event(Event::WouldRollback);
            return Err(Refused::WouldRollback);
        }
        let at = self.index[keep].lsn;
        // The stored snapshot may already be the staged one.
        // The stored snapshot may already be the staged one, and it holds
        // records up to its end.
        let newest = self.newest_snapshot_end();
        if (newest.is_zero() || newest >= at) && !self.has_full_history() {
            // The rollback would go below the snapshot and the log before
            // it is gone: nothing to rebuild the store from. Say so before
            // cutting anything, and leave the data intact (S6, S7).
            return Err(Refused::NoBase);
        }
        let (prev, prev_gen) = match keep.checked_sub(1).map(|p| self.index[p]) {
            Some(e) => (e.lsn, e.generation),
            None => (Lsn::ZERO, Generation(0)),
        };
        let first = self.index[0].lsn;
        // Cut right after the kept record: when the first removed record
        // opened a new segment, the log continues in the old one (the new
        // master's next record may fit there), not at that segment's start.
        let cut = match keep.checked_sub(1).map(|p| self.index[p]) {
            Some(e) if e.lsn.file < at.file => e.end(),
            _ => at,
        };
        if self
            .writer
            .truncate(&mut self.storage, cut, prev, prev_gen)
            .is_err()
        {
            return Err(Refused::Storage);
        }
        self.flushed = self.flushed.min(prev);
        self.written = self.written.min(prev);
        self.flush_asked = self.flush_asked.min(prev);
        self.flush_want = self.flush_want.min(prev);
        self.acked_sent = self.acked_sent.min(prev);
        self.perm_lsn = self.perm_lsn.min(prev);
        let keep_first = if keep == 0 { Lsn::ZERO } else { first };
        self.pending_snapshot = None;
        self.snapshot_due = None;
        // A snapshot being built may hold records now gone.
        self.building = None;
        self.build_steps = 0;
        self.build_at = None;
        // A staged snapshot of records now gone must never be registered;
        // if it is already in place, the rebuild below finds it invalid
        // and writes a new one over it (write_snapshot supersedes it).
        if self.snapshot_staged.is_some_and(|s| s.end >= at) {
            self.snapshot_staged = None;
        }
        let base = if !newest.is_zero() && newest < at {
            let stored = self
                .storage
                .read_snapshot()
                .ok()
                .flatten()
                .and_then(|b| crate::snapshot::decode(&b).ok());
            self.usable_base(stored).0
        } else {
            None
        };
        let had_full_history = self.has_full_history();
        // The rebuild recreates the membership from the log; what this site
        // observed of each member (connection, last heard, acks) carries on.
        let observed: Vec<(SiteId, bool, Instant, Lsn)> = self
            .members
            .iter()
            .map(|m| (m.id, m.connected, m.last_heard, m.acked))
            .collect();
        let _ = self.rebuild(keep_first, base);
        for (id, connected, last_heard, acked) in observed {
            if let Some(m) = self.members.get_mut(id) {
                m.connected = connected;
                m.last_heard = last_heard;
                m.acked = acked.min(prev);
            }
        }
        if self.snapshot_lsn.is_zero() && !had_full_history {
            // The rollback went below the snapshot and the log before it
            // is gone: nothing to rebuild the store from.
            return Err(Refused::NoBase);
        }
        if self.snapshot_lsn.is_zero() && keep > 0 {
            // The stored snapshot reflected rolled-back records: replace it
            // with one of the state just rebuilt.
            let e = self.index[self.index.len() - 1];
            let bytes = crate::snapshot::encode_covering(
                e.lsn,
                e.generation,
                &self.store,
                &self.members,
                self.snapshot_covers(),
            );
            if self.storage.write_snapshot(&bytes).is_ok() {
                self.snapshot_lsn = e.lsn;
                self.snapshot_end = e.lsn;
            }
        }
        self.stats.rolled_back += commits.len() as u64;
        if !commits.is_empty() {
            self.rollback_epoch += 1;
        }
        // Waiters on rolled-back commits learn it now.
        let gone: Vec<RequestId> = self
            .waiters
            .iter()
            .filter(|w| commits.contains(&w.token))
            .map(|w| w.id)
            .collect();
        for id in gone {
            self.finish_waiter(id, Err(WaitError::RolledBack));
        }
        self.event(Event::Rollback(Rollback { from: at, commits }));
        Ok(())
    }

    // ----- application calls ------------------------------------------------

    /// Create a new group with this site as its first member and master
    /// (R7: the group creator).
    pub fn create_group(&mut self, now: Instant) -> Result<(), CommitError> {
        self.now = now;
        if self.meta.site.0 == 0 {
            self.meta.site = SiteId(1);
            self.save_meta();
        }
        self.rep_start_master(now)?;
        if self.members.get(self.meta.site).is_none() {
            let flags = self.own_flags();
            let address = self.address.clone();
            let m = Membership {
                action: crate::log::MemberAction::Add,
                site: self.meta.site,
                address: &address,
                flags,
            };
            self.append_own(&RecordBody::Membership(m))
                .map_err(|_| CommitError::Storage)?;
            let last = self.writer.last_lsn();
            self.ask_flush(last);
        }
        Ok(())
    }

    fn own_flags(&self) -> u8 {
        let mut f = 0;
        if self.cfg.view {
            f |= members::FLAG_VIEW;
        }
        if self.cfg.effective_priority() == 0 {
            f |= members::FLAG_UNELECTABLE;
        }
        f
    }

    /// Join an existing group through a helper site's address (R7). The
    /// answer arrives as [`Answer::Join`]; the site then starts as client.
    pub fn join(&mut self, now: Instant, helper: &str) {
        self.now = now;
        if self.meta.site.0 != 0 && self.members.get(self.meta.site).is_some() {
            // Already a member: restart as client.
            self.rep_start_client(now);
            self.answer(Answer::Join {
                result: Ok(self.meta.site),
            });
            return;
        }
        self.joining = Some(Joining {
            helper: String::from(helper),
            next_at: now,
        });
        self.send_join();
    }

    fn send_join(&mut self) {
        let Some(j) = self.joining.as_mut() else {
            return;
        };
        j.next_at = self.now + self.cfg.timeouts.election;
        let helper = j.helper.clone();
        let address = self.address.clone();
        let msg = Message::JoinReq(crate::wire::JoinReq {
            address: &address,
            priority: self.cfg.effective_priority(),
            view: self.cfg.view,
        });
        self.send_many(&[Dest::Address(helper)], Flags::NONE, &msg);
    }

    /// Become master (R1). A new generation starts: max(gen+1, egen).
    pub fn rep_start_master(&mut self, now: Instant) -> Result<(), CommitError> {
        self.now = now;
        if self.cfg.view {
            // R12: a view never becomes master, not even when told to.
            return Err(CommitError::View);
        }
        if self.meta.site.0 == 0 || self.meta.init_in_progress {
            // No id yet, or a store ahead of the log (S6).
            return Err(CommitError::Unavailable);
        }
        let gen = Generation((self.meta.generation.0 + 1).max(self.meta.egen.0));
        self.meta.generation = gen;
        self.save_meta();
        self.role = Role::Master;
        self.master = Some(self.meta.site);
        self.channel_follow_master();
        self.election = None;
        self.elect_at = None;
        self.find_master_at = None;
        self.had_master = true;
        self.master_since = now;
        self.lease_grants.clear();
        self.unsettled.clear();
        self.transfer = None;
        self.transfer_at = None;
        self.boost = false;
        self.sync = SyncState::Ready;
        self.want = None;
        self.init = None;
        self.serving = None;
        self.pending.clear();
        self.pending_bytes = 0;
        for m in self.members.iter_mut() {
            m.acked = Lsn::ZERO;
            m.last_heard = now;
        }
        let ng = crate::log::NewGeneration {
            generation: gen,
            master: self.meta.site,
            timestamp: now,
        };
        self.append_own(&RecordBody::NewGeneration(ng))
            .map_err(|_| CommitError::Storage)?;
        self.event(Event::Master);
        self.broadcast(Flags::NONE, &Message::NewMaster);
        self.heartbeat_at = self.next_heartbeat();
        self.checkpoint_at = Some(now + self.cfg.timeouts.checkpoint_delay);
        if self.cfg.leases {
            self.send_lease_req();
        }
        // Waiters for commits of older generations that this log does not
        // hold can never be satisfied now.
        self.check_waiters();
        Ok(())
    }

    /// Become a client (R1): look for the master.
    pub fn rep_start_client(&mut self, now: Instant) {
        self.now = now;
        let was_master = self.role == Role::Master;
        self.role = Role::Client;
        self.master = None;
        self.channel_follow_master();
        self.sync = SyncState::NoMaster;
        self.init = None;
        self.serving = None;
        self.heartbeat_at = None;
        self.checkpoint_at = None;
        self.lease_req_at = None;
        self.lease_grants.clear();
        self.transfer = None;
        self.master_heard = now;
        self.monitor_fired = false;
        self.fail_pending_commits();
        if was_master || self.out.iter().all(|o| *o != Output::Event(Event::Client)) {
            self.event(Event::Client);
        }
        self.broadcast(Flags::NONE, &Message::NewClient);
        self.broadcast(Flags::NONE, &Message::MasterReq);
        self.find_master_at = Some(now + self.cfg.timeouts.election);
        // E4: no master answers within an election timeout: elect. A site
        // alone in its group has nobody to wait for.
        if self.cfg.elections && !self.cfg.view && self.election.is_none() {
            let me = self.meta.site;
            let alone = self.cfg.nsites.unwrap_or(0) <= 1
                && self.members.iter().all(|m| m.id == me || m.is_view());
            let wait = if alone {
                Duration::ZERO
            } else {
                self.cfg.timeouts.election
            };
            self.elect_at = Some(now + wait);
        }
    }

    /// With DELAYCLIENT, start synchronising with the known master (S2).
    pub fn rep_sync(&mut self, now: Instant) {
        self.now = now;
        if self.role == Role::Client && self.sync == SyncState::Delayed {
            self.start_sync();
        }
    }

    /// Commit a transaction (R3) with the given local durability (R4). The
    /// outcome arrives as [`Answer::Commit`].
    pub fn commit(
        &mut self,
        now: Instant,
        ops: &[crate::log::Op<'_>],
        durability: crate::config::Durability,
    ) -> Result<RequestId, CommitError> {
        self.now = now;
        self.commit_inner(ops, durability)
    }

    /// Wait until this site has applied the commit `token` names (R3). The
    /// outcome arrives as [`Answer::TxnApplied`], at once if already known.
    pub fn txn_applied(
        &mut self,
        now: Instant,
        token: CommitToken,
        timeout: Duration,
    ) -> RequestId {
        self.now = now;
        let id = self.new_request();
        match self.token_state(token) {
            Some(result) => self.answer(Answer::TxnApplied { id, result }),
            None if self.waiters.len() >= self.cfg.limits.max_pending_commits as usize => self
                .answer(Answer::TxnApplied {
                    id,
                    result: Err(WaitError::Busy),
                }),
            None => self.waiters.push(Waiter {
                id,
                token,
                deadline: now + timeout,
            }),
        }
        id
    }

    /// Whether the commit is applied here (Some(Ok)), gone (Some(Err)), or
    /// not yet known (None). "Gone" is only said when this site's log is
    /// authoritative for the token's generation: it is master, or a client
    /// verified against a master at least that new. A site whose own log
    /// has diverged may hold another record at that LSN today and the
    /// commit tomorrow, once it has synchronised.
    fn token_state(&self, token: CommitToken) -> Option<Result<(), WaitError>> {
        let here = self.index_of(token.lsn);
        if here.is_some_and(|i| self.index[i].generation == token.generation) {
            return Some(Ok(()));
        }
        let authoritative = self.meta.generation >= token.generation
            && match self.role {
                Role::Master => true,
                Role::Client => matches!(self.sync, SyncState::Ready | SyncState::CatchUp { .. }),
                Role::Idle => false,
            };
        if !authoritative {
            return None;
        }
        let covered = here.is_some()
            || (token.lsn <= self.writer.last_lsn()
                && self.index.first().is_some_and(|e| e.lsn <= token.lsn));
        covered.then_some(Err(WaitError::RolledBack))
    }

    fn check_waiters(&mut self) {
        let mut done: Vec<(RequestId, Result<(), WaitError>)> = Vec::new();
        for w in &self.waiters {
            if let Some(r) = self.token_state(w.token) {
                done.push((w.id, r));
            }
        }
        for (id, r) in done {
            self.finish_waiter(id, r);
        }
        self.check_forwards();
    }

    fn finish_waiter(&mut self, id: RequestId, result: Result<(), WaitError>) {
        if let Some(p) = self.waiters.iter().position(|w| w.id == id) {
            self.waiters.swap_remove(p);
            self.answer(Answer::TxnApplied { id, result });
        }
    }

    // ----- inputs ------------------------------------------------------------

    /// A frame arrived from a peer.
    pub fn handle_frame(&mut self, now: Instant, frame: &[u8]) -> Result<(), Drop> {
        self.now = now;
        self.stats.frames_in += 1;
        let limits = self.cfg.limits;
        let (env, msg) = match crate::wire::decode_frame(frame, &limits) {
            Ok(x) => x,
            Err(e) => {
                self.stats.dropped_malformed += 1;
                return Err(Drop::Malformed(e));
            }
        };
        if env.from == self.meta.site && env.from.0 != 0 {
            return Ok(());
        }
        // A site whose log (and so membership) is stale may not know the
        // current master: accept a master of a newer generation, and the
        // master it follows, until the log brings the membership up to date.
        let newer_master = env.generation > self.meta.generation
            && matches!(
                msg,
                Message::NewMaster | Message::Heartbeat | Message::Log(_) | Message::BulkLog(_)
            );
        let known =
            self.members.get(env.from).is_some() || self.master == Some(env.from) || newer_master;
        if let Some(m) = self.members.get_mut(env.from) {
            m.last_heard = now;
        }
        if self.monitor_fired && self.master.is_none() {
            // A site presumed silent that speaks again is reachable.
            if let Some(m) = self.members.get_mut(env.from) {
                m.connected = true;
            }
        }
        let r = match &msg {
            Message::JoinReq(j) => {
                self.forget_forwarder(env.from);
                self.on_join_req(j);
                Ok(())
            }
            Message::JoinAnswer(a) => {
                self.on_join_answer(a);
                Ok(())
            }
            // A site that joined a moment ago may write before this site
            // applied the record that adds it: hold its channel message
            // until the membership knows it (W2).
            Message::ChannelMsg(m) if !known && self.meta.site.0 != 0 => {
                self.hold_channel_msg(&env, m)
            }
            _ if !known && self.meta.site.0 != 0 => Err(Drop::UnknownSite),
            _ => self.dispatch(&env, &msg),
        };
        if matches!(r, Err(Drop::Stale) | Err(Drop::WrongRole)) {
            self.stats.dropped_stale += 1;
        }
        r
    }

    fn dispatch(&mut self, env: &Envelope, msg: &Message<'_>) -> Result<(), Drop> {
        if self.role == Role::Master
            && env.generation > self.meta.generation
            && !matches!(
                msg,
                Message::NewMaster | Message::Heartbeat | Message::Log(_)
            )
        {
            // Some site has seen a newer generation than this master's: a
            // newer master existed, and sites that know it drop this one's
            // messages as stale. Adopt the generation and elect, so the
            // group can settle on one master again.
            self.meta.generation = env.generation;
            self.save_meta();
            self.step_down_and_elect(true);
        }
        match msg {
            Message::MasterReq | Message::NewClient | Message::NewSite => {
                if !matches!(msg, Message::MasterReq) {
                    self.forget_forwarder(env.from);
                }
                if self.role == Role::Master {
                    self.send(env.from, Flags::NONE, &Message::NewMaster);
                }
                Ok(())
            }
            Message::NewMaster => self.on_new_master(env),
            Message::Heartbeat => {
                self.on_master_traffic(env)?;
                // Let the master count this site as reachable (P3).
                self.send(env.from, Flags::NONE, &Message::Alive);
                Ok(())
            }
            Message::Alive => {
                // A newer election generation ends a local election: join it.
                if env.egen > self.meta.egen && self.election.is_some() {
                    self.start_election(Some(env.egen));
                }
                Ok(())
            }
            Message::AliveReq => {
                self.send(env.from, Flags::NONE, &Message::Alive);
                Ok(())
            }
            Message::Vote1(v) => self.on_vote1(env, v),
            Message::Vote2 { candidate } => self.on_vote2(env, *candidate),
            Message::Log(e) => self.on_log(env, e),
            Message::BulkLog(b) => self.on_bulk_log(env, b),
            Message::LogMore { next } => self.on_log_more(env, *next),
            Message::LogReq { from, to, limits } => {
                let fit = Fit::new(&self.cfg.limits, limits);
                self.serve_log(env, *from, *to, fit)
            }
            Message::AllReq { from, limits } => {
                let fit = Fit::new(&self.cfg.limits, limits);
                self.serve_log(env, *from, Lsn::ZERO, fit)
            }
            Message::Rerequest { lsn } => self.on_rerequest(env, *lsn),
            Message::VerifyReq { lsn } => self.serve_verify(env, *lsn),
            Message::Verify(e) => self.on_verify(env, Some(e)),
            Message::VerifyFail { lsn } => self.on_verify_fail(env, *lsn),
            Message::UpdateReq { limits } => self.on_update_req(env, limits),
            Message::Update(u) => self.on_update(env, u),
            Message::PageReq { db, page } => self.on_page_req(env, db, *page),
            Message::Page(p) => self.on_page(env, p),
            Message::PageMore { db, next } => self.on_page_more(env, db, *next),
            Message::PageFail { db, .. } => self.on_page_fail(env, db),
            Message::Ack { lsn } => self.on_ack(env, *lsn),
            Message::RemoveReq { site } => {
                if self.role == Role::Master {
                    let _ = self.remove_inner(*site, None);
                }
                Ok(())
            }
            Message::DupMaster => self.on_dup_master(env),
            Message::LeaseReq { master_time } => self.on_lease_req(env, *master_time),
            Message::LeaseGrant { master_time } => self.on_lease_grant(env, *master_time),
            Message::TransferMaster { to } => self.on_transfer(env, *to),
            Message::ForwardWrite(w) => self.on_forward_write(env, w),
            Message::ForwardAnswer { request, result } => {
                self.on_forward_answer(env, *request, *result)
            }
            Message::ChannelMsg(m) => self.on_channel_msg(env, m),
            Message::ChannelResponse { request, part } => {
                self.on_channel_response(env, *request, part)
            }
            Message::ChannelFail { request, error } => self.on_channel_fail(env, *request, *error),
            _ => Ok(()),
        }
    }

    /// Time passed: fire every deadline at or before `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.master_timeouts();
        self.serving_timeouts();
        self.check_majority();
        self.client_timeouts();
        self.election_timeouts();
        self.lease_timeouts();
        self.transfer_timeouts();
        self.forward_timeouts();
        self.channel_timeouts();
        if self.snapshot_due.is_some_and(|t| t <= now) {
            self.encode_due_snapshot();
        } else if self.build_at.is_some_and(|t| t <= now) {
            self.build_snapshot_step();
        }
        if self.snapshot_check_at.is_some_and(|t| t <= now) {
            self.settle_staged_snapshot();
        }
        // Waiters.
        let expired: Vec<RequestId> = self
            .waiters
            .iter()
            .filter(|w| w.deadline <= now)
            .map(|w| w.id)
            .collect();
        for id in expired {
            self.finish_waiter(id, Err(WaitError::Timeout));
        }
        if self.joining.as_ref().is_some_and(|j| j.next_at <= now) {
            self.send_join();
        }
    }

    /// The host made the log durable up to `lsn`.
    pub fn handle_flushed(&mut self, now: Instant, lsn: Lsn) {
        self.now = now;
        let lsn = lsn.min(self.writer.last_lsn());
        if lsn <= self.flushed {
            return;
        }
        self.flushed = lsn;
        self.written = self.written.max(lsn);
        if self.flush_want > self.flushed && self.flush_asked <= self.flushed {
            self.issue_flush();
        }
        self.settle_snapshot();
        match self.role {
            Role::Master => {
                self.send_updates();
                self.progress_commits();
            }
            Role::Client => self.maybe_ack(),
            Role::Idle => {}
        }
    }

    /// A connection to `site` opened (`up`) or broke.
    pub fn handle_connection(&mut self, now: Instant, site: SiteId, up: bool) {
        self.now = now;
        if self.members.get(site).is_none() {
            return;
        }
        self.channel_connection(site, up);
        let Some(m) = self.members.get_mut(site) else {
            return;
        };
        if m.connected == up {
            return;
        }
        m.connected = up;
        if up {
            self.event(Event::ConnectEstablished(site));
            if self.role == Role::Client && self.master.is_none() {
                self.send(site, Flags::NONE, &Message::MasterReq);
            }
            if self.election.is_some() {
                self.send_my_vote1(site);
            }
            if self.role == Role::Master {
                // Announce mastership on every new connection, so a healed
                // partition reveals a duplicate master at once (P1).
                self.send(site, Flags::NONE, &Message::NewMaster);
            }
        } else {
            self.event(Event::ConnectBroken(site));
            self.forget_forwarder(site);
            self.channel_disconnected(site);
            if self.role == Role::Client && self.master == Some(site) {
                // The master's connection broke: fail over at once (R9).
                self.master_lost();
            } else if self.role == Role::Master {
                // ALL_AVAILABLE may be met now that a client is gone.
                self.progress_commits();
                // P3: clients see broken connections too and fail over at
                // once; a master left without a majority of connections
                // steps down at once as well, so it goes first.
                self.check_connected_majority();
            }
        }
    }

    /// The host could not connect to `site`.
    pub fn handle_connect_failed(&mut self, now: Instant, site: SiteId) {
        self.now = now;
        self.event(Event::ConnectTryFailed(site));
        if self.members.get(site).is_some() {
            self.channel_connection(site, false);
        }
    }

    /// The host dropped incoming frames because its queue was full (R13).
    /// Dropped records are re-requested through the usual gap handling.
    pub fn handle_inqueue_full(&mut self, now: Instant) {
        self.now = now;
        self.event(Event::InqueueFull);
    }

    fn on_join_answer(&mut self, a: &crate::wire::JoinAnswer<'_>) {
        if self.joining.is_none() {
            return;
        }
        match a.result {
            crate::wire::JoinResult::Accepted => {
                self.joining = None;
                self.meta.site = a.site;
                self.save_meta();
                for m in &a.members {
                    self.members.apply(&Membership {
                        action: crate::log::MemberAction::Add,
                        site: m.site,
                        address: m.address,
                        flags: m.flags,
                    });
                }
                self.answer(Answer::Join { result: Ok(a.site) });
                let now = self.now;
                self.rep_start_client(now);
            }
            crate::wire::JoinResult::NotMaster(Some(m)) => {
                // Ask the master directly, by the address the helper gave.
                if let Some(addr) = a.members.iter().find(|x| x.site == m).map(|x| x.address) {
                    if let Some(j) = self.joining.as_mut() {
                        j.helper = String::from(addr);
                    }
                    self.send_join();
                }
            }
            // No master anywhere. A member that lost its log (it knows its
            // id but is not in its own membership) takes the membership from
            // the answer and starts as a client, so it can vote in the
            // election that brings a master back (in a 2-site group, none
            // can win without it).
            crate::wire::JoinResult::NotMaster(None)
                if self.meta.site.0 != 0
                    && self.members.get(self.meta.site).is_none()
                    && a.members.iter().any(|m| m.site == self.meta.site) =>
            {
                self.joining = None;
                for m in &a.members {
                    self.members.apply(&Membership {
                        action: crate::log::MemberAction::Add,
                        site: m.site,
                        address: m.address,
                        flags: m.flags,
                    });
                }
                self.answer(Answer::Join {
                    result: Ok(self.meta.site),
                });
                let now = self.now;
                self.rep_start_client(now);
            }
            crate::wire::JoinResult::NotMaster(None) | crate::wire::JoinResult::Unavailable => {}
            crate::wire::JoinResult::GroupFull => {
                self.joining = None;
                self.answer(Answer::Join {
                    result: Err(JoinError::GroupFull),
                });
            }
        }
    }
}
