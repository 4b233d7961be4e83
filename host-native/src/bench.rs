//! `shoal bench`: measure a real group of `shoal node` processes over
//! loopback TCP with file storage, through the client API.
//!
//! Figures, each the median of `--reps` repetitions:
//! - commits/s and latency p50/p99 in the master's process: `--writers`
//!   tasks inside the master node (an application linked with shoal, as
//!   the reference system's figures are taken; started with the API's
//!   `load` request) put `--count` records per repetition (16-byte keys,
//!   100-byte values) with the `--sync` durability under the `--ack`
//!   policy;
//! - the same through the client API: `--writers` connections to the
//!   master, one JSON request per commit, timed in the bench process;
//! - failover: the master is SIGKILLed; time until a new master answers a
//!   write as permanent (the old master then restarts and catches up);
//! - catch-up: a client is stopped (SIGTERM), `--catchup` records are
//!   written, the client restarts. Its API is polled about every
//!   millisecond (`progress` requests, which skip the store digest); the
//!   figure is the records it applied (its `records_applied` counter) from
//!   the first answer of its API — the process started, its log recovered,
//!   the site started as a client — until it is seen with the master's
//!   last LSN and no longer synchronising, per second. The window thus
//!   holds connecting to the master, verifying the common point and the
//!   catch-up; records applied before the API answered (links may come
//!   up a moment earlier) are left out of the count, and printed. The
//!   rate counting from the restart (process start and recovery
//!   included) is printed too.

use crate::api::{Client, Request};
use crate::procs::{self, parse_lsn, quantile, thousands, Cluster, Start};
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// `shoal bench` options.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Sites in the group.
    #[arg(long, default_value_t = 3)]
    pub sites: usize,
    /// Concurrent writers (API connections to the master).
    #[arg(long, default_value_t = 1)]
    pub writers: usize,
    /// Commits per repetition (all writers together).
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    /// Ack policy: all, all-available, all-peers, none, one, one-peer, quorum.
    #[arg(long, default_value = "quorum")]
    pub ack: String,
    /// Commit durability: sync, no-sync or write-no-sync.
    #[arg(long, default_value = "sync", value_parser = ["sync", "no-sync", "write-no-sync"])]
    pub sync: String,
    /// Repetitions of each measurement (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Records a stopped client falls behind in the catch-up measurement.
    #[arg(long, default_value_t = 100_000)]
    pub catchup: usize,
    /// Skip the failover measurement.
    #[arg(long)]
    pub no_failover: bool,
    /// Skip the catch-up measurement.
    #[arg(long)]
    pub no_catchup: bool,
    /// Runtime threads of each node (`shoal node --worker-threads`;
    /// default: the node's own default).
    #[arg(long)]
    pub worker_threads: Option<usize>,
    /// Each node's `shoal node --spin-us` (default: the node's own
    /// default, 100 on a machine with two or more CPUs).
    #[arg(long)]
    pub spin_us: Option<u64>,
    /// Print one JSON object with every figure.
    #[arg(long)]
    pub json: bool,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            sites: 3,
            writers: 1,
            count: 10_000,
            ack: "quorum".into(),
            sync: "sync".into(),
            reps: 3,
            catchup: 100_000,
            no_failover: false,
            no_catchup: false,
            worker_threads: None,
            spin_us: None,
            json: false,
        }
    }
}

/// Node settings for the bench (besides `--ack`): quick election and
/// connection timeouts; heartbeats with a monitor loose enough that a
/// flooded master or client on a small machine is not taken for dead (a
/// SIGKILLed master is noticed by its broken connections, not by them).
pub const NODE_ARGS: &[&str] = &[
    "--group",
    "shoal-bench",
    "--heartbeat-send-ms",
    "500",
    "--heartbeat-monitor-ms",
    "3000",
    "--election-timeout-ms",
    "1000",
    "--election-retry-ms",
    "1000",
    "--connection-retry-ms",
    "200",
];

const WAIT: Duration = Duration::from_secs(60);

/// Run the bench with this `shoal` binary.
pub async fn run(args: BenchArgs) -> Result<(), String> {
    let bin = Cluster::current_binary()?;
    run_with_binary(args, bin).await
}

/// Run the bench, starting nodes with `binary node ...`.
pub async fn run_with_binary(args: BenchArgs, binary: impl Into<PathBuf>) -> Result<(), String> {
    if args.sites == 0 || args.sites > 26 {
        return Err(format!("--sites {} is out of range (1 to 26)", args.sites));
    }
    if args.writers == 0 || args.count == 0 || args.reps == 0 {
        return Err("--writers, --count and --reps must be at least 1".into());
    }
    let mut common: Vec<String> = NODE_ARGS.iter().map(|s| s.to_string()).collect();
    common.push("--ack".into());
    common.push(args.ack.clone());
    if let Some(n) = args.worker_threads {
        common.push("--worker-threads".into());
        common.push(n.to_string());
    }
    if let Some(n) = args.spin_us {
        common.push("--spin-us".into());
        common.push(n.to_string());
    }
    let cluster = Cluster::new(binary, args.sites, common.clone())
        .map_err(|e| format!("cannot create the bench's temporary directory: {e}"))?;
    let fut = bench(args, cluster, common);
    tokio::select! {
        r = fut => r,
        _ = tokio::signal::ctrl_c() => Err("interrupted: every node was stopped".into()),
    }
}

fn median_f(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// `n` items (16-byte keys, 100-byte values) numbered from `*seq` on.
fn batch(seq: &mut usize, n: usize) -> Vec<(String, String)> {
    let v = (*seq..*seq + n)
        .map(|i| (format!("k{i:015}"), format!("{i:0100}")))
        .collect();
    *seq += n;
    v
}

fn fmt_us(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{} us", us.round() as u64)
    }
}

struct Say(bool);
impl Say {
    fn line(&self, s: impl AsRef<str>) {
        if !self.0 {
            crate::out!("{}", s.as_ref());
        }
    }
}

async fn bench(args: BenchArgs, mut cluster: Cluster, common: Vec<String>) -> Result<(), String> {
    let say = Say(args.json);
    let build = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    say.line(format!(
        "shoal bench: {} sites as `shoal node` processes on loopback TCP, file storage in {}",
        args.sites,
        cluster.dir().display()
    ));
    say.line(format!(
        "  ack {}, {} commits, {} writer(s), {} commits per repetition, 16-byte keys, 100-byte values, {} repetitions (medians)",
        args.ack, args.sync, args.writers, thousands(args.count as u64), args.reps
    ));
    say.line(format!(
        "  {build} build, {cores} cores; node settings: {}",
        common.join(" ")
    ));
    let t = Instant::now();
    cluster.start_group(WAIT).await?;
    say.line(format!("  group formed in {} ms", t.elapsed().as_millis()));
    // Dirty pages other programs (or an earlier bench) left in the page
    // cache make this run's fsyncs wait for their write-back: write them
    // out first.
    let _ = std::process::Command::new("sync").status();
    let mut master = 0usize;
    let sync = Some(args.sync.clone());
    let mut seq = 0usize;

    // Warm-up (not measured).
    let api = cluster.nodes[master].api.clone();
    let w = procs::write_many(
        &api,
        batch(&mut seq, args.count.min(2_000)),
        args.writers,
        sync.clone(),
        None,
    )
    .await;
    if !w.failed.is_empty() {
        return Err(format!("warm-up writes failed: {}", w.failed[0].2));
    }

    // Throughput and latency, writers inside the master node.
    let mut not_perm_in = 0usize;
    let mut in_rates = Vec::new();
    let mut in_p50s = Vec::new();
    let mut in_p99s = Vec::new();
    for r in 0..args.reps {
        let first = seq as u64;
        seq += args.count;
        let req = Request::Load {
            db: procs::DB.into(),
            writers: args.writers as u32,
            count: args.count as u64,
            first,
            key_prefix: "k".into(),
            value_bytes: 100,
            sync: sync.clone(),
        };
        let mut client = Client::connect(&api, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
        client.set_timeout(Duration::from_secs(600));
        let resp = client.call(&req).await.map_err(|e| e.to_string())?;
        let Some(l) = resp.load.filter(|_| resp.ok) else {
            return Err(format!(
                "the load request failed: {}",
                resp.error.unwrap_or_default()
            ));
        };
        if l.failed > 0 {
            return Err(format!(
                "{} commits failed in the master node, e.g. {}",
                l.failed,
                l.error.unwrap_or_default()
            ));
        }
        not_perm_in += l.not_permanent as usize;
        let rate = l.commits as f64 / (l.elapsed_us as f64 / 1e6).max(1e-9);
        say.line(format!(
            "  rep {} (writers in the master node): {} commits/s, p50 {}, p99 {}, max {}",
            r + 1,
            thousands(rate as u64),
            fmt_us(l.p50_us as f64),
            fmt_us(l.p99_us as f64),
            fmt_us(l.max_us as f64)
        ));
        in_rates.push(rate);
        in_p50s.push(l.p50_us as f64);
        in_p99s.push(l.p99_us as f64);
    }
    let in_rate = median_f(&mut in_rates);
    let in_p50 = median_f(&mut in_p50s);
    let in_p99 = median_f(&mut in_p99s);

    // Throughput and latency through the client API.
    let mut rates = Vec::new();
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut not_perm = 0usize;
    for r in 0..args.reps {
        let label = format!("rep {}: writing", r + 1);
        let label = if args.json {
            None
        } else {
            Some(label.as_str())
        };
        let mut w = procs::write_many(
            &api,
            batch(&mut seq, args.count),
            args.writers,
            sync.clone(),
            label,
        )
        .await;
        if !w.failed.is_empty() {
            return Err(format!(
                "{} writes failed, e.g. {}: {}",
                w.failed.len(),
                w.failed[0].0,
                w.failed[0].2
            ));
        }
        not_perm += w.not_permanent.len();
        w.latencies_us.sort_unstable();
        let rate = args.count as f64 / w.elapsed.as_secs_f64().max(1e-9);
        let p50 = quantile(&w.latencies_us, 0.5) as f64;
        let p99 = quantile(&w.latencies_us, 0.99) as f64;
        let missed = if w.not_permanent.is_empty() {
            String::new()
        } else {
            format!(
                " ({} answered not permanent: acks missing at the ack timeout)",
                thousands(w.not_permanent.len() as u64)
            )
        };
        say.line(format!(
            "  rep {} (writers over the client API): {} commits/s, p50 {}, p99 {}{missed}",
            r + 1,
            thousands(rate as u64),
            fmt_us(p50),
            fmt_us(p99)
        ));
        rates.push(rate);
        p50s.push(p50);
        p99s.push(p99);
    }
    let rate = median_f(&mut rates);
    let p50 = median_f(&mut p50s);
    let p99 = median_f(&mut p99s);
    let all: Vec<usize> = (0..cluster.len()).collect();
    procs::converge(&mut cluster, &all, WAIT).await?;

    // Failover.
    let mut failovers = Vec::new();
    if !args.no_failover && args.sites >= 3 {
        for r in 0..args.reps {
            let live: Vec<usize> = all.iter().copied().filter(|&i| i != master).collect();
            let t0 = Instant::now();
            cluster.kill(master);
            let (newm, at, _) =
                procs::first_write(&cluster, &live, &format!("failover-{r}"), "x", WAIT).await?;
            let ms = at.duration_since(t0).as_secs_f64() * 1000.0;
            say.line(format!(
                "  failover {}: {} killed, {} took a write {:.1} ms later",
                r + 1,
                cluster.nodes[master].name,
                cluster.nodes[newm].name,
                ms
            ));
            failovers.push(ms);
            cluster.start(master, Start::Restart)?;
            procs::converge(&mut cluster, &all, WAIT).await?;
            master = newm;
        }
    }
    let failover = median_f(&mut failovers);

    // Catch-up.
    let mut catchups = Vec::new();
    let mut from_restarts = Vec::new();
    if !args.no_catchup && args.sites >= 2 {
        for r in 0..args.reps {
            let c = (master + 1) % cluster.len();
            cluster.stop(c, Duration::from_secs(10)).await;
            let api = cluster.nodes[master].api.clone();
            let label = format!("catch-up {}: writing", r + 1);
            let label = if args.json {
                None
            } else {
                Some(label.as_str())
            };
            let w = procs::write_many(
                &api,
                batch(&mut seq, args.catchup),
                64,
                Some("no-sync".into()),
                label,
            )
            .await;
            if !w.failed.is_empty() {
                return Err(format!("catch-up writes failed: {}", w.failed[0].2));
            }
            let target = cluster.status(master).await?.last_lsn;
            let goal = parse_lsn(&target)
                .ok_or_else(|| format!("cannot read the master's LSN {target}"))?;
            let t0 = Instant::now();
            cluster.start(c, Start::Restart)?;
            let p = watch_catch_up(&mut cluster, c, goal).await?;
            let window = p.done.duration_since(p.api_up).as_secs_f64();
            let applied = p.applied_end.saturating_sub(p.applied_at_api_up);
            let rate = applied as f64 / window.max(1e-9);
            let total = t0.elapsed().as_secs_f64();
            let from_restart = args.catchup as f64 / total.max(1e-9);
            say.line(format!(
                "  catch-up {}: {} records written in {} ms ({} not permanent) while {} was down; it restarted, its API answered after {} ms ({} records applied by then), and it applied {} records in the {:.1} ms until it reached {}: {} records/s ({} records/s counting from the restart)",
                r + 1,
                thousands(args.catchup as u64),
                w.elapsed.as_millis(),
                thousands(w.not_permanent.len() as u64),
                cluster.nodes[c].name,
                p.api_up.duration_since(t0).as_millis(),
                thousands(p.applied_at_api_up),
                thousands(applied),
                window * 1000.0,
                p.last_lsn,
                thousands(rate as u64),
                thousands(from_restart as u64),
            ));
            from_restarts.push(from_restart);
            catchups.push(rate);
            procs::converge(&mut cluster, &all, WAIT).await?;
        }
    }
    let catchup = median_f(&mut catchups);
    let from_restart = median_f(&mut from_restarts);

    if args.json {
        crate::out!(
            "{}",
            json!({
                "sites": args.sites, "writers": args.writers, "count": args.count,
                "ack": args.ack, "sync": args.sync, "reps": args.reps, "build": build, "cores": cores,
                "key_bytes": 16, "value_bytes": 100,
                "commits_per_s": in_rate.round(), "p50_us": in_p50, "p99_us": in_p99,
                "not_permanent": not_perm_in,
                "api_commits_per_s": rate.round(), "api_p50_us": p50, "api_p99_us": p99,
                "api_not_permanent": not_perm,
                "failover_ms": if failovers.is_empty() { serde_json::Value::Null } else { json!(failover) },
                "catchup_records": args.catchup,
                "catchup_records_per_s": if catchups.is_empty() { serde_json::Value::Null } else { json!(catchup.round()) },
                "catchup_records_per_s_from_restart": if catchups.is_empty() { serde_json::Value::Null } else { json!(from_restart.round()) },
            })
        );
    } else {
        crate::out!("results (median of {}):", args.reps);
        crate::out!(
            "  commits/s      {} writers in the master node, {} over the client API",
            thousands(in_rate as u64),
            thousands(rate as u64)
        );
        crate::out!(
            "  latency p50    {} in the node, {} over the API",
            fmt_us(in_p50),
            fmt_us(p50)
        );
        crate::out!(
            "  latency p99    {} in the node, {} over the API",
            fmt_us(in_p99),
            fmt_us(p99)
        );
        if not_perm + not_perm_in > 0 {
            crate::out!(
                "  not permanent  {} commits missed the ack policy",
                not_perm + not_perm_in
            );
        }
        if !failovers.is_empty() {
            crate::out!("  failover       {failover:.1} ms (master SIGKILLed -> new master answers a write)");
        }
        if !catchups.is_empty() {
            crate::out!(
                "  catch-up       {} records/s ({} records behind; records applied from the moment the restarted client's API answers until it has the master's last LSN)",
                thousands(catchup as u64),
                thousands(args.catchup as u64)
            );
            crate::out!(
                "                 {} records/s counting from the restart (process start and log recovery included)",
                thousands(from_restart as u64)
            );
        }
    }
    Ok(())
}

/// What [`watch_catch_up`] saw of a restarted client.
struct CatchUp {
    /// When its API first answered.
    api_up: Instant,
    /// Records it had applied since it started, then.
    applied_at_api_up: u64,
    /// When it was first seen with the master's last LSN, not synchronising.
    done: Instant,
    /// Records it had applied since it started, then.
    applied_end: u64,
    /// Its last LSN, then.
    last_lsn: String,
}

fn records_applied(s: &crate::api::Status) -> u64 {
    s.counters
        .iter()
        .find(|(k, _)| k == "records_applied")
        .map_or(0, |(_, v)| *v)
}

/// Poll a restarting client about every millisecond, on one API
/// connection, with `progress` requests (no store digest, so the polling
/// costs the client next to nothing), until it has `goal` and is not
/// synchronising.
async fn watch_catch_up(
    cluster: &mut Cluster,
    i: usize,
    goal: (u32, u32),
) -> Result<CatchUp, String> {
    use crate::api::{Client, Request};
    let deadline = Instant::now() + WAIT;
    let address = cluster.nodes[i].api.clone();
    let mut conn: Option<Client> = None;
    let mut first: Option<(Instant, u64)> = None;
    let mut last = String::from("no answer yet");
    loop {
        if let Some(s) = cluster.exited(i) {
            return Err(format!(
                "site {} exited ({s}) while catching up; its log ends:\n{}",
                cluster.nodes[i].name,
                cluster.log_tail(i, 15)
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "site {}: timed out after {WAIT:?} waiting to catch up (last: {last})",
                cluster.nodes[i].name
            ));
        }
        if conn.is_none() {
            conn = Client::connect(&address, Duration::from_secs(2)).await.ok();
        }
        if let Some(c) = conn.as_mut() {
            match c.call(&Request::Progress).await {
                Ok(r) => {
                    let at = Instant::now();
                    if let Some(s) = r.status {
                        let applied = records_applied(&s);
                        let (api_up, applied_at_api_up) = *first.get_or_insert((at, applied));
                        if !s.synchronizing && parse_lsn(&s.last_lsn).is_some_and(|l| l >= goal) {
                            return Ok(CatchUp {
                                api_up,
                                applied_at_api_up,
                                done: at,
                                applied_end: applied,
                                last_lsn: s.last_lsn,
                            });
                        }
                        last = format!("role {}, last LSN {}", s.role, s.last_lsn);
                    }
                }
                Err(e) => {
                    last = e.to_string();
                    conn = None;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
