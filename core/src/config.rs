//! Every replication knob of FEATURES.md, with the reference system's
//! defaults, and the [`Limits`] that bound every buffer in the core.
//!
//! [`Config::validate`] rejects combinations that cannot work with a typed
//! [`ConfigError`] whose message says what to change.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use core::time::Duration;
use serde::{Deserialize, Serialize};

/// How many acknowledgements a PERMANENT (commit) record needs before the
/// master reports it durable (R5). Counted over electable sites and nsites.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum AckPolicy {
    /// Every site in the group (nsites - 1 acks).
    All,
    /// Every site currently connected.
    AllAvailable,
    /// Every electable site in the group.
    AllPeers,
    /// No acks: durable when the master has it.
    None,
    /// Any one site.
    One,
    /// Any one electable site.
    OnePeer,
    /// Enough electable sites that any possible election winner has the
    /// commit (default).
    #[default]
    Quorum,
}

impl AckPolicy {
    /// Every policy, in a fixed order (for tests and command lines).
    pub const ALL_POLICIES: [AckPolicy; 7] = [
        AckPolicy::All,
        AckPolicy::AllAvailable,
        AckPolicy::AllPeers,
        AckPolicy::None,
        AckPolicy::One,
        AckPolicy::OnePeer,
        AckPolicy::Quorum,
    ];
}

/// How durable a commit must be before it is answered (R4), on the master
/// and, through the acks its policy counts (R5), on the clients.
///
/// A client acknowledges a sync commit once its log is flushed, and a
/// commit without sync once the record is handed to its operating system
/// ([`crate::traits::Storage::write_out`]): a permanent no-sync commit
/// survives crashes of the processes (as many as the ack policy promises),
/// not power losses. Under QUORUM, ALL and ALL_PEERS the master's own copy
/// counts the same way.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub enum Durability {
    /// The log is flushed to stable storage on the master, and on every
    /// client whose ack counts, before the commit is answered.
    #[default]
    Sync,
    /// The record is written to the operating system (not flushed) on the
    /// master before the commit is answered; clients ack once it is
    /// written to theirs.
    WriteNoSync,
    /// The record is appended to the master's log buffer only (written out
    /// only when the ack policy counts the master's copy); clients ack once
    /// it is written to their operating system.
    NoSync,
}

/// Every timeout, with the reference system's defaults.
/// A zero heartbeat duration means "off".
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Timeouts {
    /// How long a commit waits for its acks (1 s).
    pub ack: Duration,
    /// One election attempt (2 s).
    pub election: Duration,
    /// Wait between election attempts (10 s).
    pub election_retry: Duration,
    /// After a whole-group restart, wait this long for all nsites before
    /// accepting a majority (E5); zero means "off" (0).
    pub full_election: Duration,
    /// Wait before retrying a broken connection (30 s).
    pub connection_retry: Duration,
    /// How often the master sends a heartbeat; zero is off (0).
    pub heartbeat_send: Duration,
    /// How long a client waits without hearing the master before it calls an
    /// election; zero is off (0).
    pub heartbeat_monitor: Duration,
    /// Minimum wait between checkpoints (30 s).
    pub checkpoint_delay: Duration,
    /// Master lease duration (R10); required when leases are on (0).
    pub lease: Duration,
    /// Shortest re-request wait (40 ms, R13).
    pub rerequest_min: Duration,
    /// Longest re-request wait (1.28 s, R13).
    pub rerequest_max: Duration,
    /// How long a client waits for the master to commit a forwarded write
    /// and for the write to reach the client itself (W1, 5 s).
    pub write_forward: Duration,
    /// How long a channel request waits for its response when the caller
    /// gives no timeout of its own (W2, 5 s).
    pub channel_request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            ack: Duration::from_secs(1),
            election: Duration::from_secs(2),
            election_retry: Duration::from_secs(10),
            full_election: Duration::ZERO,
            connection_retry: Duration::from_secs(30),
            heartbeat_send: Duration::ZERO,
            heartbeat_monitor: Duration::ZERO,
            checkpoint_delay: Duration::from_secs(30),
            lease: Duration::ZERO,
            rerequest_min: Duration::from_millis(40),
            rerequest_max: Duration::from_millis(1280),
            write_forward: Duration::from_secs(5),
            channel_request: Duration::from_secs(5),
        }
    }
}

/// Hard caps fixed at compile time; runtime [`Limits`] may only lower them.
/// They size the fixed-capacity lists inside decoded messages.
pub mod caps {
    /// Most sites a group can have.
    pub const MAX_SITES: usize = 64;
    /// Most named databases a site can hold.
    pub const MAX_DATABASES: usize = 64;
    /// Most parts in one channel message (W2).
    pub const MAX_CHANNEL_PARTS: usize = 16;
    /// Longest database name, in bytes.
    pub const MAX_DB_NAME: usize = 64;
    /// Longest site address ("host:port" or a URL), in bytes.
    pub const MAX_ADDRESS: usize = 255;
    /// Longest group name, in bytes.
    pub const MAX_GROUP_NAME: usize = 64;
    /// Largest frame any configuration may allow (16 MiB).
    pub const MAX_FRAME: usize = 16 << 20;
}

/// Every limit the core honours. Going past one is a typed error, never a
/// panic and never unbounded growth; a peer cannot make a site allocate
/// past them.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Limits {
    /// Most sites in the group (<= [`caps::MAX_SITES`]).
    pub max_sites: u16,
    /// Most named databases (<= [`caps::MAX_DATABASES`]).
    pub max_databases: u16,
    /// Longest key, in bytes.
    pub max_key: u32,
    /// Longest value, in bytes.
    pub max_value: u32,
    /// Most operations in one transaction.
    pub max_txn_ops: u32,
    /// Largest log record body, in bytes (bounds a transaction's total size).
    pub max_record: u32,
    /// Largest wire frame, in bytes (<= [`caps::MAX_FRAME`]).
    pub max_frame: u32,
    /// Size at which the log switches to a new segment.
    pub segment_size: u32,
    /// Most bytes sent in answer to one log or page request before the
    /// sender stops and says LOG_MORE / PAGE_MORE (R13).
    pub max_answer_bytes: u32,
    /// Bytes of early (out-of-order) records a client buffers.
    pub max_pending_bytes: u32,
    /// Bytes of incoming messages queued before excess is dropped (R13).
    pub max_inqueue_bytes: u32,
    /// Most bytes a bulk message batches (R11).
    pub max_bulk_bytes: u32,
    /// Most commits waiting for acks or a flush at once.
    pub max_pending_commits: u32,
    /// Most outputs queued for the host before the site refuses new work.
    pub max_outputs: u32,
    /// Largest channel message (all parts together), in bytes (W2).
    pub max_channel_message: u32,
    /// Most channel requests this site waits on at once (W2); past it a
    /// new request is refused with `Busy`.
    pub max_channel_requests: u32,
    /// Largest store snapshot a client receives in an internal
    /// initialisation (S6), in bytes: the client holds the pages in memory
    /// until the last one has come, so its old data stays intact meanwhile.
    /// A master's snapshot above it cannot initialise this site
    /// (JOIN_FAILURE).
    pub max_init_bytes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sites: 64,
            max_databases: 64,
            max_key: 1024,
            max_value: 64 * 1024,
            max_txn_ops: 1024,
            max_record: 1 << 20,
            max_frame: (1 << 20) + 4096,
            segment_size: 16 << 20,
            max_answer_bytes: 1 << 20,
            max_pending_bytes: 8 << 20,
            max_inqueue_bytes: 16 << 20,
            max_bulk_bytes: 1 << 20,
            max_pending_commits: 4096,
            max_outputs: 65536,
            max_channel_message: 64 * 1024,
            max_channel_requests: 256,
            max_init_bytes: 256 << 20,
        }
    }
}

impl Limits {
    /// Small limits for a microcontroller: a few sites, small values.
    pub fn device() -> Self {
        Limits {
            max_sites: 8,
            max_databases: 4,
            max_key: 64,
            max_value: 512,
            max_txn_ops: 16,
            max_record: 4096,
            max_frame: 8192,
            segment_size: 64 * 1024,
            max_answer_bytes: 8192,
            max_pending_bytes: 16 * 1024,
            max_inqueue_bytes: 32 * 1024,
            max_bulk_bytes: 4096,
            max_pending_commits: 32,
            max_outputs: 256,
            max_channel_message: 1024,
            max_channel_requests: 8,
            max_init_bytes: 64 * 1024,
        }
    }

    /// Check the limits against each other and the compile-time caps.
    pub fn validate(&self) -> Result<(), ConfigError> {
        use crate::log::record::RECORD_HEADER_LEN;
        use crate::log::segment::SEGMENT_HEADER_LEN;
        let nonzero: [(&'static str, u32); 17] = [
            ("max_sites", self.max_sites as u32),
            ("max_databases", self.max_databases as u32),
            ("max_key", self.max_key),
            ("max_value", self.max_value),
            ("max_txn_ops", self.max_txn_ops),
            ("max_record", self.max_record),
            ("max_frame", self.max_frame),
            ("segment_size", self.segment_size),
            ("max_answer_bytes", self.max_answer_bytes),
            ("max_pending_bytes", self.max_pending_bytes),
            ("max_inqueue_bytes", self.max_inqueue_bytes),
            ("max_bulk_bytes", self.max_bulk_bytes),
            ("max_pending_commits", self.max_pending_commits),
            ("max_outputs", self.max_outputs),
            ("max_channel_message", self.max_channel_message),
            ("max_channel_requests", self.max_channel_requests),
            ("max_init_bytes", self.max_init_bytes),
        ];
        for (name, v) in nonzero {
            if v == 0 {
                return Err(ConfigError::ZeroLimit(name));
            }
        }
        if self.max_sites as usize > caps::MAX_SITES {
            return Err(ConfigError::AboveCap {
                what: "max_sites",
                value: self.max_sites as u64,
                cap: caps::MAX_SITES as u64,
            });
        }
        if self.max_databases as usize > caps::MAX_DATABASES {
            return Err(ConfigError::AboveCap {
                what: "max_databases",
                value: self.max_databases as u64,
                cap: caps::MAX_DATABASES as u64,
            });
        }
        if self.max_frame as usize > caps::MAX_FRAME {
            return Err(ConfigError::AboveCap {
                what: "max_frame",
                value: self.max_frame as u64,
                cap: caps::MAX_FRAME as u64,
            });
        }
        // One put of the largest key and value must fit in a record.
        let one_op = self.max_key as u64 + self.max_value as u64 + caps::MAX_DB_NAME as u64 + 32;
        if one_op > self.max_record as u64 {
            return Err(ConfigError::Inconsistent(
                "max_record must hold one put of max_key + max_value bytes",
            ));
        }
        // Any record must fit in a LOG frame and in an empty segment.
        let record = self.max_record as u64 + RECORD_HEADER_LEN as u64;
        if record + crate::wire::FRAME_OVERHEAD as u64 > self.max_frame as u64 {
            return Err(ConfigError::Inconsistent(
                "max_frame must hold the largest log record plus 512 bytes of framing",
            ));
        }
        if record + SEGMENT_HEADER_LEN as u64 > self.segment_size as u64 {
            return Err(ConfigError::Inconsistent(
                "segment_size must hold the largest log record",
            ));
        }
        if self.max_channel_message as u64 + crate::wire::FRAME_OVERHEAD as u64
            > self.max_frame as u64
        {
            return Err(ConfigError::Inconsistent(
                "max_frame must hold the largest channel message",
            ));
        }
        // The page size this site asks for in an internal initialisation
        // must be one a master accepts (S6).
        if (crate::wire::max_page_bytes(self) as u64) < crate::wire::MIN_PAGE_BYTES as u64 {
            return Err(ConfigError::Inconsistent(
                "max_answer_bytes must be at least 64 (the smallest snapshot page, S6)",
            ));
        }
        // The answer size this site asks for in its requests must be one an
        // answerer accepts (R13).
        if (crate::wire::max_answer_take(self) as u64) < crate::wire::MIN_BULK_BYTES as u64 {
            return Err(ConfigError::Inconsistent(
                "max_answer_bytes and a quarter of max_inqueue_bytes must each be at least 64 (the smallest answer a site asks for, R13)",
            ));
        }
        // The bulk size this site asks for in its log requests must be one
        // a master accepts (R11).
        if (crate::wire::max_bulk_bytes(self) as u64) < crate::wire::MIN_BULK_BYTES as u64 {
            return Err(ConfigError::Inconsistent(
                "max_bulk_bytes must be at least 64 (the smallest bulk a site asks for, R11)",
            ));
        }
        Ok(())
    }
}

/// Every replication setting of one site (FEATURES.md R1-R14, E1-E7, P3,
/// S2-S7, W1, W2). Defaults follow the reference system.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Config {
    /// Election priority; 0 means the site can never become master (E2).
    pub priority: u32,
    /// Group size used for elections and acks; `None` follows the
    /// replicated membership (R7, E3).
    pub nsites: Option<u32>,
    /// Votes needed to win; `None` means a majority of nsites (E3).
    pub nvotes: Option<u32>,
    /// Acknowledgement policy for commits (R5).
    pub ack_policy: AckPolicy,
    /// Every timeout.
    pub timeouts: Timeouts,
    /// Lease clock skew: the fastest clock runs `clock_skew_fast` ticks
    /// while the slowest runs `clock_skew_slow` (R10). 1:1 means none.
    pub clock_skew_fast: u32,
    /// See `clock_skew_fast`.
    pub clock_skew_slow: u32,
    /// In a 2-site group the survivor of a lost master does not take over
    /// (E6, on).
    pub two_site_strict: bool,
    /// Initialise a client with no log overlap automatically (S6, on).
    pub autoinit: bool,
    /// Roll back records a new master lacks; off means WOULD_ROLLBACK (P2, on).
    pub autorollback: bool,
    /// Hold elections when the master is lost (E1, on).
    pub elections: bool,
    /// Delay synchronisation with a new master until `rep_sync` (S2, off).
    pub delay_client: bool,
    /// Fail at once with LOCKOUT while synchronising, rather than wait (S5, off).
    pub nowait: bool,
    /// Batch log records into bulk messages (R11, off).
    pub bulk: bool,
    /// Master leases (R10, off).
    pub leases: bool,
    /// Forward simple writes on a client to the master (W1, off).
    pub forward_writes: bool,
    /// A master that cannot reach a majority for a heartbeat-monitor period
    /// steps down (P3, on: shoal goes beyond the reference system here).
    pub step_down_without_majority: bool,
    /// This site is a view: it replicates but never votes, acks or becomes
    /// master (R12, off).
    pub view: bool,
    /// The databases a view applies to its store (R12, a partial view as
    /// in the reference system); empty means every database. Only valid
    /// with `view`. The view's log stays the master's whole log (so it can
    /// serve peers and verify against any new master); only what it
    /// applies, snapshots and answers reads from is restricted, and a read
    /// of another database is refused ([`crate::site::ReadError::NotReplicated`]).
    /// At most `max_databases` names, each a valid database name, no
    /// repeats.
    pub view_databases: Vec<String>,
    /// Log segments kept before the one holding the latest checkpoint;
    /// older ones are removed (R8). `None` keeps the whole log. A client
    /// that falls further behind than the master's retention has no log
    /// overlap left and needs internal initialisation (S6).
    pub log_retention_segments: Option<u32>,
    /// Bytes of entries a checkpoint's snapshot takes in one step (R8):
    /// the snapshot is built a step per turn while the site goes on (see
    /// [`crate::snapshot`]), so this bounds how long a site pauses for it.
    pub snapshot_step_bytes: u32,
    /// Seed for tie-breakers; hosts set it from real randomness, the
    /// simulator from its seed.
    pub seed: u64,
    /// Every limit.
    pub limits: Limits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            priority: 100,
            nsites: None,
            nvotes: None,
            ack_policy: AckPolicy::Quorum,
            timeouts: Timeouts::default(),
            clock_skew_fast: 1,
            clock_skew_slow: 1,
            two_site_strict: true,
            autoinit: true,
            autorollback: true,
            elections: true,
            delay_client: false,
            nowait: false,
            bulk: false,
            leases: false,
            forward_writes: false,
            step_down_without_majority: true,
            view: false,
            view_databases: Vec::new(),
            log_retention_segments: Some(2),
            snapshot_step_bytes: crate::snapshot::STEP_BYTES as u32,
            seed: 0,
            limits: Limits::default(),
        }
    }
}

impl Config {
    /// Check every setting; the error says which one to change.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.limits.validate()?;
        let t = &self.timeouts;
        for (name, d) in [
            ("ack", t.ack),
            ("election", t.election),
            ("election_retry", t.election_retry),
            ("connection_retry", t.connection_retry),
            ("checkpoint_delay", t.checkpoint_delay),
            ("rerequest_min", t.rerequest_min),
            ("rerequest_max", t.rerequest_max),
            ("write_forward", t.write_forward),
            ("channel_request", t.channel_request),
        ] {
            if d.is_zero() {
                return Err(ConfigError::ZeroTimeout(name));
            }
        }
        if t.rerequest_min > t.rerequest_max {
            return Err(ConfigError::RerequestRange {
                min_ms: t.rerequest_min.as_millis() as u64,
                max_ms: t.rerequest_max.as_millis() as u64,
            });
        }
        if !t.heartbeat_monitor.is_zero()
            && !t.heartbeat_send.is_zero()
            && t.heartbeat_monitor <= t.heartbeat_send
        {
            return Err(ConfigError::HeartbeatMonitorTooShort {
                monitor_ms: t.heartbeat_monitor.as_millis() as u64,
                send_ms: t.heartbeat_send.as_millis() as u64,
            });
        }
        if let Some(n) = self.nsites {
            if n == 0 {
                return Err(ConfigError::ZeroNsites);
            }
            if n > self.limits.max_sites as u32 * 2 {
                return Err(ConfigError::AboveCap {
                    what: "nsites",
                    value: n as u64,
                    cap: self.limits.max_sites as u64 * 2,
                });
            }
        }
        if let Some(v) = self.nvotes {
            if v == 0 {
                return Err(ConfigError::ZeroNvotes);
            }
            if let Some(n) = self.nsites {
                if v > n {
                    return Err(ConfigError::NvotesExceedsNsites {
                        nvotes: v,
                        nsites: n,
                    });
                }
            }
        }
        if self.leases {
            if t.lease.is_zero() {
                return Err(ConfigError::LeaseWithoutTimeout);
            }
            if self.clock_skew_slow == 0 || self.clock_skew_fast < self.clock_skew_slow {
                return Err(ConfigError::ClockSkew {
                    fast: self.clock_skew_fast,
                    slow: self.clock_skew_slow,
                });
            }
            if !self.elections {
                return Err(ConfigError::Inconsistent(
                    "leases need elections on: a lease only protects a master that others elect",
                ));
            }
        }
        if self.view && self.priority != 0 {
            return Err(ConfigError::ViewWithPriority(self.priority));
        }
        self.validate_view_databases()
    }

    /// R12: a database list only on a view, within `max_databases`, each
    /// name one an operation may use, none twice.
    fn validate_view_databases(&self) -> Result<(), ConfigError> {
        let dbs = &self.view_databases;
        if dbs.is_empty() {
            return Ok(());
        }
        if !self.view {
            return Err(ConfigError::ViewDatabasesWithoutView);
        }
        if dbs.len() > self.limits.max_databases as usize {
            return Err(ConfigError::AboveCap {
                what: "view_databases (count)",
                value: dbs.len() as u64,
                cap: self.limits.max_databases as u64,
            });
        }
        for (i, name) in dbs.iter().enumerate() {
            let index = u16::try_from(i).unwrap_or(u16::MAX);
            if name.is_empty() || name.len() > caps::MAX_DB_NAME {
                return Err(ConfigError::BadViewDatabase {
                    index,
                    why: "a database name has 1 to 64 bytes",
                });
            }
            if dbs[..i].contains(name) {
                return Err(ConfigError::BadViewDatabase {
                    index,
                    why: "the name is listed twice",
                });
            }
        }
        Ok(())
    }

    /// Does this site apply `db` to its store? Every database, except on a
    /// view restricted to some (R12).
    pub fn replicates(&self, db: &str) -> bool {
        self.view_databases.is_empty() || self.view_databases.iter().any(|d| d == db)
    }

    /// A view restricted to some databases (R12).
    pub fn is_partial_view(&self) -> bool {
        self.view && !self.view_databases.is_empty()
    }

    /// The election priority this site actually uses (a view never stands).
    pub fn effective_priority(&self) -> u32 {
        if self.view {
            0
        } else {
            self.priority
        }
    }
}

/// Why a [`Config`] or [`Limits`] cannot be used.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConfigError {
    /// nvotes is larger than nsites: no election could ever be won.
    NvotesExceedsNsites {
        /// Configured nvotes.
        nvotes: u32,
        /// Configured nsites.
        nsites: u32,
    },
    /// nsites was set to zero.
    ZeroNsites,
    /// nvotes was set to zero.
    ZeroNvotes,
    /// Leases are on but no lease timeout was given.
    LeaseWithoutTimeout,
    /// Clock skew must be fast >= slow > 0.
    ClockSkew {
        /// Configured fast ratio.
        fast: u32,
        /// Configured slow ratio.
        slow: u32,
    },
    /// A timeout that must be positive is zero.
    ZeroTimeout(&'static str),
    /// rerequest_min is above rerequest_max.
    RerequestRange {
        /// Configured minimum, ms.
        min_ms: u64,
        /// Configured maximum, ms.
        max_ms: u64,
    },
    /// The heartbeat monitor fires before the next heartbeat is due.
    HeartbeatMonitorTooShort {
        /// Configured monitor, ms.
        monitor_ms: u64,
        /// Configured send interval, ms.
        send_ms: u64,
    },
    /// A limit is zero.
    ZeroLimit(&'static str),
    /// A value is above its hard cap.
    AboveCap {
        /// Which setting.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The cap.
        cap: u64,
    },
    /// Settings that contradict each other; the text says how.
    Inconsistent(&'static str),
    /// A view site must have priority 0.
    ViewWithPriority(u32),
    /// `view_databases` is set on a site that is not a view (R12).
    ViewDatabasesWithoutView,
    /// A name in `view_databases` cannot be used (R12).
    BadViewDatabase {
        /// Its position in the list (from 0).
        index: u16,
        /// What is wrong with it.
        why: &'static str,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NvotesExceedsNsites { nvotes, nsites } => write!(
                f,
                "nvotes ({nvotes}) is larger than nsites ({nsites}): no election could be won; lower nvotes or raise nsites"
            ),
            ConfigError::ZeroNsites => write!(f, "nsites must be at least 1"),
            ConfigError::ZeroNvotes => write!(f, "nvotes must be at least 1"),
            ConfigError::LeaseWithoutTimeout => write!(
                f,
                "master leases are on but the lease timeout is zero; set a lease timeout"
            ),
            ConfigError::ClockSkew { fast, slow } => write!(
                f,
                "clock skew {fast}:{slow} is invalid: the fast value must be >= the slow value, and both > 0"
            ),
            ConfigError::ZeroTimeout(name) => write!(f, "the {name} timeout must be greater than zero"),
            ConfigError::RerequestRange { min_ms, max_ms } => write!(
                f,
                "re-request minimum ({min_ms} ms) is above the maximum ({max_ms} ms)"
            ),
            ConfigError::HeartbeatMonitorTooShort { monitor_ms, send_ms } => write!(
                f,
                "heartbeat monitor ({monitor_ms} ms) must be longer than the heartbeat send interval ({send_ms} ms), or clients will call needless elections"
            ),
            ConfigError::ZeroLimit(name) => write!(f, "limit {name} must be greater than zero"),
            ConfigError::AboveCap { what, value, cap } => {
                write!(f, "{what} = {value} is above the hard cap of {cap}")
            }
            ConfigError::Inconsistent(why) => write!(f, "inconsistent configuration: {why}"),
            ConfigError::ViewWithPriority(p) => write!(
                f,
                "a view site never becomes master, so its priority must be 0 (it is {p})"
            ),
            ConfigError::ViewDatabasesWithoutView => write!(
                f,
                "view databases are set but the site is not a view: only a view replicates a subset of databases (set view, or clear the list)"
            ),
            ConfigError::BadViewDatabase { index, why } => write!(
                f,
                "view database number {} cannot be used: {why}",
                *index as u32 + 1
            ),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_reference_systems() {
        let c = Config::default();
        assert_eq!(c.ack_policy, AckPolicy::Quorum);
        assert_eq!(c.timeouts.ack, Duration::from_secs(1));
        assert_eq!(c.timeouts.election, Duration::from_secs(2));
        assert_eq!(c.timeouts.election_retry, Duration::from_secs(10));
        assert_eq!(c.timeouts.connection_retry, Duration::from_secs(30));
        assert!(c.timeouts.heartbeat_send.is_zero());
        assert!(c.timeouts.heartbeat_monitor.is_zero());
        assert_eq!(c.timeouts.checkpoint_delay, Duration::from_secs(30));
        assert_eq!(c.timeouts.rerequest_min, Duration::from_millis(40));
        assert_eq!(c.timeouts.rerequest_max, Duration::from_millis(1280));
        assert!(c.two_site_strict && c.autoinit && c.autorollback && c.elections);
        assert!(!c.delay_client && !c.nowait && !c.bulk && !c.leases && !c.forward_writes);
        assert_eq!(c.priority, 100);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(Limits::device().validate(), Ok(()));
    }

    #[test]
    fn nvotes_above_nsites_is_refused() {
        let c = Config {
            nsites: Some(3),
            nvotes: Some(4),
            ..Config::default()
        };
        assert_eq!(
            c.validate(),
            Err(ConfigError::NvotesExceedsNsites {
                nvotes: 4,
                nsites: 3
            })
        );
    }

    #[test]
    fn lease_without_timeout_is_refused() {
        let c = Config {
            leases: true,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::LeaseWithoutTimeout));
        let mut ok = c;
        ok.timeouts.lease = Duration::from_secs(5);
        assert_eq!(ok.validate(), Ok(()));
    }

    #[test]
    fn inconsistent_limits_are_refused() {
        let mut c = Config::default();
        c.limits.max_value = c.limits.max_record;
        assert!(matches!(c.validate(), Err(ConfigError::Inconsistent(_))));
        let mut c = Config::default();
        c.limits.max_frame = c.limits.max_record;
        assert!(matches!(c.validate(), Err(ConfigError::Inconsistent(_))));
        let mut c = Config::default();
        c.limits.max_sites = 0;
        assert_eq!(c.validate(), Err(ConfigError::ZeroLimit("max_sites")));
        let mut c = Config::default();
        c.limits.max_sites = 1000;
        assert!(matches!(c.validate(), Err(ConfigError::AboveCap { .. })));
        // S6: a site must be able to ask for pages a master accepts.
        let mut c = Config::default();
        c.limits.max_answer_bytes = crate::wire::MIN_PAGE_BYTES - 1;
        assert!(matches!(c.validate(), Err(ConfigError::Inconsistent(_))));
        c.limits.max_answer_bytes = crate::wire::MIN_PAGE_BYTES;
        assert_eq!(c.validate(), Ok(()));
        // R11: and for bulks a master accepts.
        let mut c = Config::default();
        c.limits.max_bulk_bytes = crate::wire::MIN_BULK_BYTES - 1;
        assert!(matches!(c.validate(), Err(ConfigError::Inconsistent(_))));
        c.limits.max_bulk_bytes = crate::wire::MIN_BULK_BYTES;
        assert_eq!(c.validate(), Ok(()));
        // R13: and for answers an answerer accepts.
        let mut c = Config::default();
        c.limits.max_inqueue_bytes = 4 * crate::wire::MIN_BULK_BYTES - 1;
        assert!(matches!(c.validate(), Err(ConfigError::Inconsistent(_))));
        c.limits.max_inqueue_bytes = 4 * crate::wire::MIN_BULK_BYTES;
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn timeouts_are_checked() {
        let mut c = Config::default();
        c.timeouts.rerequest_min = Duration::from_secs(2);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::RerequestRange { .. })
        ));
        let mut c = Config::default();
        c.timeouts.heartbeat_send = Duration::from_secs(1);
        c.timeouts.heartbeat_monitor = Duration::from_millis(500);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::HeartbeatMonitorTooShort { .. })
        ));
        let mut c = Config::default();
        c.timeouts.ack = Duration::ZERO;
        assert_eq!(c.validate(), Err(ConfigError::ZeroTimeout("ack")));
        let c = Config {
            view: true,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::ViewWithPriority(100)));
    }

    #[test]
    fn r12_view_databases_are_checked() {
        use alloc::string::ToString;
        let view = Config {
            view: true,
            priority: 0,
            view_databases: alloc::vec!["a".to_string(), "b".to_string()],
            ..Config::default()
        };
        assert_eq!(view.validate(), Ok(()));
        assert!(view.replicates("a") && !view.replicates("c"));
        assert!(view.is_partial_view());
        let not_view = Config {
            view: false,
            ..view.clone()
        };
        assert_eq!(
            not_view.validate(),
            Err(ConfigError::ViewDatabasesWithoutView)
        );
        let mut twice = view.clone();
        twice.view_databases.push("a".to_string());
        assert_eq!(
            twice.validate(),
            Err(ConfigError::BadViewDatabase {
                index: 2,
                why: "the name is listed twice"
            })
        );
        let mut empty = view.clone();
        empty.view_databases[0] = String::new();
        assert!(matches!(
            empty.validate(),
            Err(ConfigError::BadViewDatabase { index: 0, .. })
        ));
        let mut long = view.clone();
        long.view_databases[1] = "x".repeat(caps::MAX_DB_NAME + 1);
        assert!(matches!(
            long.validate(),
            Err(ConfigError::BadViewDatabase { index: 1, .. })
        ));
        let mut many = view.clone();
        many.limits.max_databases = 1;
        assert!(matches!(many.validate(), Err(ConfigError::AboveCap { .. })));
        // A full view (no list) replicates everything.
        let full = Config {
            view_databases: Vec::new(),
            ..view
        };
        assert!(full.replicates("c") && !full.is_partial_view());
    }
}
