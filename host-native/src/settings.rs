//! The settings of one `shoal node`: every replication knob as a command
//! line flag and as a key of a TOML file (`--config FILE`); a flag beats
//! the file, the file beats the default.

use crate::auth::GroupKey;
use clap::Args;
use serde::Deserialize;
use shoal_core::config::{AckPolicy, Config, Durability};
use std::path::PathBuf;
use std::time::Duration;

/// `shoal node` flags. Every one may also be set in the TOML file given by
/// `--config`, under the same name with `_` for `-` (e.g. `heartbeat_monitor_ms = 500`).
#[derive(Args, Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeArgs {
    /// The site's home directory (log, metadata, snapshot). Required.
    #[arg(long)]
    pub home: Option<PathBuf>,
    /// Address to listen on for other sites (HOST:PORT). Required.
    #[arg(long)]
    pub listen: Option<String>,
    /// Address other sites use to reach this one, when it differs from --listen.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Address of the client API (JSON lines; `shoal put/get/status` use it).
    #[arg(long)]
    pub api: Option<String>,
    /// TOML file with any of these settings.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Create a new group with this site as its first member.
    #[arg(long, conflicts_with = "join")]
    pub create: bool,
    /// Join a group through this member's --listen address (repeat to try several).
    #[arg(long)]
    pub join: Vec<String>,
    /// A client to ask for the log before the master (client-to-client
    /// synchronisation, S3): its --listen address; repeat for several, in
    /// order of preference.
    #[arg(long)]
    pub peer: Vec<String>,
    /// Group name: sites of another group are refused.
    #[arg(long)]
    pub group: Option<String>,
    /// File holding the group's secret key (B4): at least 16 bytes, one
    /// trailing newline ignored; `shoal keygen FILE` writes one. Every site
    /// of the group needs the same key: a site that cannot prove it holds
    /// it is refused. Without this flag the site proves and asks for
    /// nothing, and sites that have a key refuse it.
    #[arg(long, value_name = "FILE")]
    pub group_key_file: Option<PathBuf>,
    /// Election priority; 0 = never master.
    #[arg(long)]
    pub priority: Option<u32>,
    /// Ack policy: all, all-available, all-peers, none, one, one-peer, quorum.
    #[arg(long)]
    pub ack: Option<String>,
    /// Default commit durability: sync, write-no-sync, no-sync.
    #[arg(long)]
    pub sync: Option<String>,
    /// Group size for elections and acks (default: follow the membership).
    #[arg(long)]
    pub nsites: Option<u32>,
    /// Votes needed to win an election (default: a majority of nsites).
    #[arg(long)]
    pub nvotes: Option<u32>,
    /// Ack timeout, ms (1000).
    #[arg(long)]
    pub ack_timeout_ms: Option<u64>,
    /// Election timeout, ms (2000).
    #[arg(long)]
    pub election_timeout_ms: Option<u64>,
    /// Wait between election attempts, ms (10000).
    #[arg(long)]
    pub election_retry_ms: Option<u64>,
    /// Full-election timeout after a whole-group restart, ms (0 = off).
    #[arg(long)]
    pub full_election_ms: Option<u64>,
    /// Connection retry, ms (30000).
    #[arg(long)]
    pub connection_retry_ms: Option<u64>,
    /// Master heartbeat interval, ms (0 = off).
    #[arg(long)]
    pub heartbeat_send_ms: Option<u64>,
    /// Client heartbeat monitor, ms (0 = off).
    #[arg(long)]
    pub heartbeat_monitor_ms: Option<u64>,
    /// Minimum wait between checkpoints, ms (30000).
    #[arg(long)]
    pub checkpoint_delay_ms: Option<u64>,
    /// Master lease, ms (needed with --leases).
    #[arg(long)]
    pub lease_ms: Option<u64>,
    /// Re-request back-off minimum, ms (40).
    #[arg(long)]
    pub rerequest_min_ms: Option<u64>,
    /// Re-request back-off maximum, ms (1280).
    #[arg(long)]
    pub rerequest_max_ms: Option<u64>,
    /// How long a forwarded write may take, ms (5000, W1).
    #[arg(long)]
    pub write_forward_timeout_ms: Option<u64>,
    /// How long a channel request waits for its response when the caller
    /// gives no timeout, ms (5000, W2).
    #[arg(long)]
    pub channel_timeout_ms: Option<u64>,
    /// 2SITE_STRICT: true (default) or false.
    #[arg(long = "2site-strict")]
    #[serde(rename = "two_site_strict")]
    pub two_site_strict: Option<bool>,
    /// Master leases (R10).
    #[arg(long)]
    pub leases: bool,
    /// Delay synchronising with a new master until `shoal sync` (S2).
    #[arg(long)]
    pub delay_client: bool,
    /// Fail reads at once with LOCKOUT while synchronising (S5).
    #[arg(long)]
    pub nowait: bool,
    /// Forward simple puts and deletes made on this client to the master
    /// (W1); give every site of the group the same setting.
    #[arg(long)]
    pub forward_writes: bool,
    /// Run this site as a view (R12): it replicates the log but never
    /// votes, acks or becomes master, and counts in no ack policy or
    /// nsites. Its priority is 0 unless --priority says otherwise, which
    /// is refused. Other sites may name it with --peer. It joins a group
    /// (--join); it cannot create one.
    #[arg(long)]
    pub view: bool,
    /// A database this view applies to its store (repeat for several; the
    /// default is every database). Its log is still the master's whole
    /// log; reads of another database are refused. Only with --view.
    #[arg(long = "view-db", value_name = "NAME")]
    pub view_db: Vec<String>,
    /// Never initialise this site from the master's database (S7).
    #[arg(long)]
    pub no_autoinit: bool,
    /// Refuse to roll back commits (WOULD_ROLLBACK instead, P2).
    #[arg(long)]
    pub no_autorollback: bool,
    /// Never hold elections.
    #[arg(long)]
    pub no_elections: bool,
    /// Keep mastership without a majority (turn P3 off).
    #[arg(long)]
    pub no_step_down: bool,
    /// Log segments kept before the latest checkpoint (default 2).
    #[arg(long)]
    pub log_retention_segments: Option<u32>,
    /// Log segment size in bytes (16 MiB).
    #[arg(long)]
    pub segment_size: Option<u32>,
    /// Log level filter (error, warn, info, debug, trace; default info).
    #[arg(long)]
    pub log_level: Option<String>,
    /// Threads of the node's async runtime (default 1, at most 64). One
    /// thread costs the least CPU per commit (no wake-ups between
    /// threads); the site's long work (checkpoints, fsyncs, snapshot
    /// writes) runs in steps or on threads of its own, so it does not
    /// hold up the others. More threads serve many API connections in
    /// parallel, but each commit still passes through the one site.
    #[arg(long)]
    pub worker_threads: Option<usize>,
    /// After this node sends a frame an answer follows (a record awaiting
    /// acks, or an ack), keep one runtime thread polling the sockets for up
    /// to this many µs (at most 10000; 0 = never), yielding the CPU to any
    /// ready thread between polls: the answer is read as it lands instead
    /// of after the thread is woken, which lowers a lone writer's latency
    /// at the cost of CPU while writes flow. Default 100 on a machine with
    /// two or more CPUs, 0 on one. An idle node never polls.
    #[arg(long)]
    pub spin_us: Option<u64>,
}

/// Settings checked and combined.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Home directory.
    pub home: PathBuf,
    /// Listen address.
    pub listen: String,
    /// Advertised address.
    pub advertise: String,
    /// API address.
    pub api: Option<String>,
    /// Create a group.
    pub create: bool,
    /// Helpers to join through.
    pub join: Vec<String>,
    /// Peers to ask for the log first (S3).
    pub peers: Vec<String>,
    /// Group name.
    pub group: String,
    /// The group key (B4), if the site has one.
    pub group_key: Option<GroupKey>,
    /// Warnings for the log once it is set up (a key file others can read).
    pub warnings: Vec<String>,
    /// Default durability of API commits.
    pub durability: Durability,
    /// The replication configuration.
    pub config: Config,
    /// Log level.
    pub log_level: String,
    /// Threads of the node's async runtime.
    pub worker_threads: usize,
    /// How long to poll after a record awaiting acks left (zero: never).
    pub spin: Duration,
}

/// Runtime threads of a node by default: one, which costs the least CPU
/// per commit and is the thread `--spin-us` polls on (issue 5's figures).
pub const DEFAULT_WORKER_THREADS: usize = 1;

/// `--spin-us` by default on a machine with two or more CPUs: about three
/// loopback round trips, so a lone writer's next ack is read while polling;
/// a node that stops writing polls no longer than this.
pub const DEFAULT_SPIN_US: u64 = 100;

/// `--spin-us` when neither the flags nor the file set it: polling pays
/// only when another CPU can run the peer's side meanwhile, so a machine
/// with one CPU does not poll.
pub fn default_spin_us() -> u64 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 {
        DEFAULT_SPIN_US
    } else {
        0
    }
}

/// Most runtime threads a node may ask for.
pub const MAX_WORKER_THREADS: usize = 64;

/// Parse an ack policy name.
pub fn parse_ack(s: &str) -> Result<AckPolicy, String> {
    Ok(match s.to_ascii_lowercase().replace('_', "-").as_str() {
        "all" => AckPolicy::All,
        "all-available" => AckPolicy::AllAvailable,
        "all-peers" => AckPolicy::AllPeers,
        "none" => AckPolicy::None,
        "one" => AckPolicy::One,
        "one-peer" => AckPolicy::OnePeer,
        "quorum" => AckPolicy::Quorum,
        other => {
            return Err(format!(
                "unknown ack policy {other:?}: use all, all-available, all-peers, none, one, one-peer or quorum"
            ))
        }
    })
}

/// Parse a durability name.
pub fn parse_durability(s: &str) -> Result<Durability, String> {
    Ok(match s.to_ascii_lowercase().replace('_', "-").as_str() {
        "sync" => Durability::Sync,
        "write-no-sync" => Durability::WriteNoSync,
        "no-sync" | "nosync" => Durability::NoSync,
        other => {
            return Err(format!(
                "unknown durability {other:?}: use sync, write-no-sync or no-sync"
            ))
        }
    })
}

fn check_address(what: &str, a: &str) -> Result<(), String> {
    match a.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!(
            "{what} {a:?} is not an address of the form HOST:PORT"
        )),
    }
}

impl NodeArgs {
    /// Combine the flags with the TOML file (flags win) and check them.
    pub fn resolve(self) -> Result<Settings, String> {
        let file = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("cannot read config file {}: {e}", p.display()))?;
                toml::from_str::<NodeArgs>(&text)
                    .map_err(|e| format!("config file {}: {e}", p.display()))?
            }
            None => NodeArgs::default(),
        };
        let a = self;
        let f = file;
        let home = a
            .home
            .or(f.home)
            .ok_or("--home DIR is required (the site's data directory)")?;
        let listen = a
            .listen
            .or(f.listen)
            .ok_or("--listen HOST:PORT is required (where other sites reach this one)")?;
        check_address("--listen", &listen)?;
        let advertise = a
            .advertise
            .or(f.advertise)
            .unwrap_or_else(|| listen.clone());
        check_address("--advertise", &advertise)?;
        if advertise.starts_with("0.0.0.0:") || advertise.starts_with("[::]:") {
            return Err(format!(
                "other sites cannot reach {advertise}: pass --advertise HOST:PORT with this machine's address"
            ));
        }
        let api = a.api.or(f.api);
        if let Some(x) = &api {
            check_address("--api", x)?;
        }
        let mut join = a.join;
        if join.is_empty() {
            join = f.join;
        }
        for j in &join {
            check_address("--join", j)?;
        }
        let mut peers = a.peer;
        if peers.is_empty() {
            peers = f.peer;
        }
        for p in &peers {
            check_address("--peer", p)?;
            if *p == advertise {
                return Err(format!(
                    "--peer {p} is this site's own address: name another client"
                ));
            }
        }
        let create = a.create || f.create;
        if create && !join.is_empty() {
            return Err(
                "--create and --join exclude each other: a site either starts a group or joins one"
                    .into(),
            );
        }
        // R12: a view never stands, so its priority is 0 unless the
        // operator says otherwise (refused, naming the flag); a
        // creator is its group's first master, so no view.
        let mut c = Config {
            view: a.view || f.view,
            ..Config::default()
        };
        let priority = a.priority.or(f.priority);
        c.priority = match priority {
            Some(p) => p,
            None if c.view => 0,
            None => c.priority,
        };
        if c.view && c.priority != 0 {
            return Err(format!(
                "--view with --priority {}: a view never becomes master, so its priority is 0 (leave --priority out)",
                c.priority
            ));
        }
        if c.view && create {
            return Err(
                "--view and --create exclude each other: the site that creates a group is its first master, and a view never is one; create the group on another site and --join it"
                    .into(),
            );
        }
        let mut view_db = a.view_db;
        if view_db.is_empty() {
            view_db = f.view_db;
        }
        if !view_db.is_empty() && !c.view {
            return Err(
                "--view-db needs --view: only a view replicates a subset of databases".into(),
            );
        }
        c.view_databases = view_db;
        if let Some(x) = a.ack.or(f.ack) {
            c.ack_policy = parse_ack(&x)?;
        }
        let durability = match a.sync.or(f.sync) {
            Some(x) => parse_durability(&x)?,
            None => Durability::Sync,
        };
        c.nsites = a.nsites.or(f.nsites);
        c.nvotes = a.nvotes.or(f.nvotes);
        let ms = Duration::from_millis;
        let t = &mut c.timeouts;
        let pairs: [(Option<u64>, Option<u64>, &mut Duration); 13] = [
            (a.ack_timeout_ms, f.ack_timeout_ms, &mut t.ack),
            (
                a.election_timeout_ms,
                f.election_timeout_ms,
                &mut t.election,
            ),
            (
                a.election_retry_ms,
                f.election_retry_ms,
                &mut t.election_retry,
            ),
            (a.full_election_ms, f.full_election_ms, &mut t.full_election),
            (
                a.connection_retry_ms,
                f.connection_retry_ms,
                &mut t.connection_retry,
            ),
            (
                a.heartbeat_send_ms,
                f.heartbeat_send_ms,
                &mut t.heartbeat_send,
            ),
            (
                a.heartbeat_monitor_ms,
                f.heartbeat_monitor_ms,
                &mut t.heartbeat_monitor,
            ),
            (
                a.checkpoint_delay_ms,
                f.checkpoint_delay_ms,
                &mut t.checkpoint_delay,
            ),
            (a.lease_ms, f.lease_ms, &mut t.lease),
            (a.rerequest_min_ms, f.rerequest_min_ms, &mut t.rerequest_min),
            (a.rerequest_max_ms, f.rerequest_max_ms, &mut t.rerequest_max),
            (
                a.write_forward_timeout_ms,
                f.write_forward_timeout_ms,
                &mut t.write_forward,
            ),
            (
                a.channel_timeout_ms,
                f.channel_timeout_ms,
                &mut t.channel_request,
            ),
        ];
        for (x, y, slot) in pairs {
            if let Some(v) = x.or(y) {
                *slot = ms(v);
            }
        }
        if let Some(b) = a.two_site_strict.or(f.two_site_strict) {
            c.two_site_strict = b;
        }
        c.leases = a.leases || f.leases;
        c.delay_client = a.delay_client || f.delay_client;
        c.nowait = a.nowait || f.nowait;
        c.forward_writes = a.forward_writes || f.forward_writes;
        c.autoinit = !(a.no_autoinit || f.no_autoinit);
        c.autorollback = !(a.no_autorollback || f.no_autorollback);
        c.elections = !(a.no_elections || f.no_elections);
        c.step_down_without_majority = !(a.no_step_down || f.no_step_down);
        if let Some(n) = a.log_retention_segments.or(f.log_retention_segments) {
            c.log_retention_segments = Some(n);
        }
        if let Some(n) = a.segment_size.or(f.segment_size) {
            c.limits.segment_size = n;
        }
        let worker_threads = a
            .worker_threads
            .or(f.worker_threads)
            .unwrap_or(DEFAULT_WORKER_THREADS);
        if !(1..=MAX_WORKER_THREADS).contains(&worker_threads) {
            return Err(format!(
                "--worker-threads {worker_threads} is out of range: use 1 to {MAX_WORKER_THREADS}"
            ));
        }
        let spin_us = a.spin_us.or(f.spin_us).unwrap_or_else(default_spin_us);
        if spin_us > crate::spin::MAX_SPIN_US {
            return Err(format!(
                "--spin-us {spin_us} is out of range: use 0 (never) to {}",
                crate::spin::MAX_SPIN_US
            ));
        }
        c.seed = seed();
        c.validate().map_err(|e| match e {
            shoal_core::config::ConfigError::BadViewDatabase { .. } => {
                format!("--view-db: {e}")
            }
            _ => format!("invalid configuration: {e}"),
        })?;
        let mut warnings = Vec::new();
        let group_key = match a.group_key_file.or(f.group_key_file) {
            Some(p) => {
                let key = GroupKey::from_file(&p).map_err(|e| format!("--group-key-file: {e}"))?;
                if let Some(w) = readable_by_others(&p) {
                    warnings.push(w);
                }
                Some(key)
            }
            None => None,
        };
        Ok(Settings {
            home,
            listen,
            advertise,
            api,
            create,
            join,
            peers,
            group: a.group.or(f.group).unwrap_or_else(|| "shoal".into()),
            group_key,
            warnings,
            durability,
            config: c,
            log_level: a.log_level.or(f.log_level).unwrap_or_else(|| "info".into()),
            worker_threads,
            spin: Duration::from_micros(spin_us),
        })
    }
}

/// A warning if the key file at `p` can be read by others than its owner.
fn readable_by_others(p: &std::path::Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p).ok()?.permissions().mode();
        if mode & 0o077 != 0 {
            return Some(format!(
                "the group key file {} can be read by others than its owner (mode {:o}); \
                 `chmod 600 {}` keeps the key to this site's user",
                p.display(),
                mode & 0o777,
                p.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = p;
    None
}

/// A tie-breaker seed from the OS (hosts own randomness; the core takes it
/// as an input).
fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> NodeArgs {
        NodeArgs {
            home: Some("/tmp/x".into()),
            listen: Some("127.0.0.1:7000".into()),
            ..Default::default()
        }
    }

    #[test]
    fn missing_and_bad_settings_are_refused_with_a_reason() {
        let e = NodeArgs::default().resolve().unwrap_err();
        assert!(e.contains("--home"), "{e}");
        let e = NodeArgs {
            listen: Some("nope".into()),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(e.contains("HOST:PORT"), "{e}");
        let e = NodeArgs {
            nsites: Some(3),
            nvotes: Some(4),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(e.contains("nvotes"), "{e}");
        let e = NodeArgs {
            ack: Some("most".into()),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(e.contains("ack policy"), "{e}");
        let e = NodeArgs {
            leases: true,
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(e.contains("lease"), "{e}");
        let e = NodeArgs {
            peer: vec!["127.0.0.1:7000".into()],
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(e.contains("own address"), "{e}");
        let e = NodeArgs {
            peer: vec!["somewhere".into()],
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(e.contains("--peer"), "{e}");
        let e = NodeArgs {
            worker_threads: Some(0),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(e.contains("--worker-threads 0 is out of range"), "{e}");
        let e = NodeArgs {
            spin_us: Some(10_001),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(e.contains("--spin-us 10001 is out of range"), "{e}");
    }

    #[test]
    fn runtime_threads_come_from_the_default_flags_or_the_file() {
        assert_eq!(
            args().resolve().unwrap().worker_threads,
            DEFAULT_WORKER_THREADS
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shoal.toml");
        std::fs::write(&p, "worker_threads = 4\nspin_us = 80\n").unwrap();
        let s = NodeArgs {
            config: Some(p),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.worker_threads, 4);
        assert_eq!(s.spin, Duration::from_micros(80));
        assert_eq!(
            args().resolve().unwrap().spin,
            Duration::from_micros(default_spin_us())
        );
        let s = NodeArgs {
            spin_us: Some(0),
            worker_threads: Some(2),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!((s.worker_threads, s.spin), (2, Duration::ZERO));
    }

    #[test]
    fn peers_come_from_flags_or_the_file() {
        let s = NodeArgs {
            peer: vec!["127.0.0.1:7001".into(), "127.0.0.1:7002".into()],
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.peers, vec!["127.0.0.1:7001", "127.0.0.1:7002"]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shoal.toml");
        std::fs::write(&p, "peer = [\"10.0.0.2:7000\"]\n").unwrap();
        let s = NodeArgs {
            config: Some(p),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.peers, vec!["10.0.0.2:7000"]);
    }

    /// R12: --view (or `view = true`) makes a view of priority 0;
    /// --view-db (or `view_db = [..]`) restricts it; contradictions are
    /// refused with the flag named.
    #[test]
    fn a_view_comes_from_flags_or_the_file() {
        let s = NodeArgs {
            view: true,
            view_db: vec!["orders".into(), "users".into()],
            ..args()
        }
        .resolve()
        .unwrap();
        assert!(s.config.view);
        assert_eq!(s.config.priority, 0, "a view's priority is 0 by default");
        assert_eq!(s.config.view_databases, vec!["orders", "users"]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shoal.toml");
        std::fs::write(&p, "view = true\nview_db = [\"orders\"]\n").unwrap();
        let s = NodeArgs {
            config: Some(p),
            ..args()
        }
        .resolve()
        .unwrap();
        assert!(s.config.view && s.config.priority == 0);
        assert_eq!(s.config.view_databases, vec!["orders"]);
        let e = NodeArgs {
            view: true,
            priority: Some(5),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(e.contains("--priority 5"), "{e}");
        let e = NodeArgs {
            view_db: vec!["orders".into()],
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(e.contains("--view-db needs --view"), "{e}");
        let e = NodeArgs {
            view: true,
            create: true,
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(e.contains("--create"), "{e}");
        let e = NodeArgs {
            view: true,
            view_db: vec!["a".into(), "a".into()],
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(e.contains("--view-db") && e.contains("twice"), "{e}");
        // A view with an explicit priority 0 is fine.
        assert!(NodeArgs {
            view: true,
            priority: Some(0),
            ..args()
        }
        .resolve()
        .is_ok());
    }

    #[test]
    fn the_group_key_comes_from_its_file_and_bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(args().resolve().unwrap().group_key.is_none());
        let key = dir.path().join("group.key");
        GroupKey::write_new_file(&key, false).unwrap();
        let s = NodeArgs {
            group_key_file: Some(key.clone()),
            ..args()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.group_key, Some(GroupKey::from_file(&key).unwrap()));
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        // Nor does the key show in the settings' debug output.
        let text = std::fs::read_to_string(&key).unwrap();
        assert!(!format!("{s:?}").contains(text.trim_end()));
        // From the TOML file too.
        let conf = dir.path().join("shoal.toml");
        std::fs::write(
            &conf,
            format!("group_key_file = {:?}\n", key.display().to_string()),
        )
        .unwrap();
        let s = NodeArgs {
            config: Some(conf),
            ..args()
        }
        .resolve()
        .unwrap();
        assert!(s.group_key.is_some());
        // Missing, short: refused with what to do.
        let e = NodeArgs {
            group_key_file: Some(dir.path().join("nope.key")),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(
            e.starts_with("--group-key-file: cannot read the group key file")
                && e.contains("shoal keygen"),
            "{e}"
        );
        let short = dir.path().join("short.key");
        std::fs::write(&short, "secret\n").unwrap();
        let e = NodeArgs {
            group_key_file: Some(short.clone()),
            ..args()
        }
        .resolve()
        .unwrap_err();
        assert!(e.contains("holds 6 bytes; a key needs at least 16"), "{e}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(&short, "0123456789abcdef0123\n").unwrap();
            std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o644)).unwrap();
            let s = NodeArgs {
                group_key_file: Some(short),
                ..args()
            }
            .resolve()
            .unwrap();
            assert!(s.warnings[0].contains("chmod 600"), "{:?}", s.warnings);
        }
    }

    #[test]
    fn the_file_fills_in_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shoal.toml");
        std::fs::write(&p, "home = \"/data\"\nlisten = \"10.0.0.1:7000\"\npriority = 7\nheartbeat_monitor_ms = 500\ntwo_site_strict = false\n").unwrap();
        let s = NodeArgs {
            config: Some(p.clone()),
            priority: Some(9),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(s.home, PathBuf::from("/data"));
        assert_eq!(s.config.priority, 9);
        assert_eq!(
            s.config.timeouts.heartbeat_monitor,
            Duration::from_millis(500)
        );
        assert!(!s.config.two_site_strict);
        std::fs::write(&p, "hme = 1\n").unwrap();
        let e = NodeArgs {
            config: Some(p),
            ..Default::default()
        }
        .resolve()
        .unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
    }
}
