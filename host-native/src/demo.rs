//! `shoal demo`: a group of real `shoal node` processes on this machine
//! plays the story of issue 5, step by step, checking as it goes.
//!
//! A creates the group and the others join; 5,000 writes with QUORUM
//! acks; E is killed, the group writes on, E restarts and catches up; the
//! master is killed with SIGKILL and a new one is elected; the old master
//! comes back as a client; a partition isolates the master with one
//! client, the isolated master steps down while the majority elects and
//! goes on writing; the partition heals and every site converges.
//!
//! Every step prints what happened, what was checked, and a status table
//! of the sites; `--json` prints one JSON object per step instead. The
//! processes and their temporary directory are removed at the end, also on
//! Ctrl-C (and if the demo itself dies, the kernel kills the nodes).

use crate::api::Request;
use crate::procs::{self, letter, thousands, Cluster, Start};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `shoal demo` options.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Number of sites in the group (3 to 26; the story is told for 5).
    #[arg(long, default_value_t = 5)]
    pub sites: usize,
    /// Print one JSON object per step instead of the narration.
    #[arg(long)]
    pub json: bool,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs {
            sites: 5,
            json: false,
        }
    }
}

/// Node settings for the demo: heartbeats so that a master that goes
/// silent is noticed in two seconds and an isolated master steps down
/// (P3) in one, short election and connection timeouts so the story moves
/// quickly. A killed master is noticed at once (its connections break).
///
/// The heartbeat monitor leaves room for a loaded machine: a site's
/// driver answers nothing while it waits for an fsync of its log, and the
/// demo often runs beside a whole test suite, where one fsync can take
/// several hundred milliseconds. With a 500 ms monitor the master's P3
/// window was 250 ms: clients held up by slow fsyncs at the same time
/// look like a lost majority, so the master could step down in the middle
/// of the last step's load and start an election in a healthy group (and
/// a master held up for 500 ms could be taken for lost by its clients).
pub const NODE_ARGS: &[&str] = &[
    "--group",
    "shoal-demo",
    "--ack",
    "quorum",
    "--heartbeat-send-ms",
    "200",
    "--heartbeat-monitor-ms",
    "2000",
    "--election-timeout-ms",
    "1000",
    "--election-retry-ms",
    "1000",
    "--connection-retry-ms",
    "200",
    "--forward-writes",
];

/// [`NODE_ARGS`] as owned strings, for a [`Cluster`] (the process tests
/// run their nodes with the demo's settings).
pub fn node_args() -> Vec<String> {
    NODE_ARGS.iter().map(|s| s.to_string()).collect()
}

/// Settings of the demo's nodes beyond [`NODE_ARGS`]: 4 MB log segments,
/// a checkpoint at most every second, and nothing kept before the latest
/// one, so the last step's writes archive the log a stopped client needs
/// (the story before it stays within the first segment). Each checkpoint
/// writes and fsyncs a snapshot of the whole store on every site (several
/// MB by the last step): once a second rather than five times keeps that
/// disk traffic from slowing every log fsync of a loaded machine.
pub const ARCHIVE_ARGS: &[&str] = &[
    "--segment-size",
    "4000000",
    "--checkpoint-delay-ms",
    "1000",
    "--log-retention-segments",
    "0",
];

const FIRST_WRITES: usize = 5_000;
/// Writes made while a client is away in the last step: more than a
/// segment, so the master archives the log the client stopped at.
const ARCHIVE_WRITES: u64 = 30_000;
const MORE_WRITES: usize = 1_000;
/// Writes made on each client and forwarded to the master (W1).
const FORWARDED_PER_CLIENT: usize = 25;
const CONNS: usize = 8;
const WAIT: Duration = Duration::from_secs(30);

/// Run the demo with this `shoal` binary (the one running). `Ok(true)`
/// when every check held.
pub async fn run(args: DemoArgs) -> Result<bool, String> {
    let bin = Cluster::current_binary()?;
    run_with_binary(args, bin).await
}

/// Run the demo, starting nodes with `binary node ...` (tests pass the
/// built `shoal`).
pub async fn run_with_binary(args: DemoArgs, binary: impl Into<PathBuf>) -> Result<bool, String> {
    if !(3..=26).contains(&args.sites) {
        return Err(format!(
            "--sites {} is out of range: the demo needs 3 to 26 sites (a partition must leave a majority)",
            args.sites
        ));
    }
    let common: Vec<String> = NODE_ARGS
        .iter()
        .chain(ARCHIVE_ARGS)
        .map(|s| s.to_string())
        .collect();
    let mut cluster = Cluster::new(binary, args.sites, common)
        .map_err(|e| format!("cannot create the demo's temporary directory: {e}"))?;
    // Every site proves it holds the group's key (B4).
    cluster.with_group_key()?;
    let mut demo = Demo {
        cluster,
        out: Narrator::new(args.json),
        acked: Vec::new(),
    };
    let r = tokio::select! {
        r = demo.story() => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("\ninterrupted: stopping every node and removing the demo's files");
            Err("interrupted".into())
        }
    };
    r
    // `demo` (and its Cluster) is dropped here: every node is killed and
    // the temporary directory removed (unless SHOAL_KEEP is set).
}

/// One check of a step.
struct Check {
    what: String,
    ok: bool,
}

/// One step's record, for the summary.
struct StepRecord {
    n: usize,
    title: String,
    ms: u128,
    checks: Vec<Check>,
    figures: serde_json::Map<String, serde_json::Value>,
}

/// Prints the story as it happens (or one JSON object per step).
struct Narrator {
    json: bool,
    steps: Vec<StepRecord>,
    events: Vec<String>,
    started: Instant,
}

impl Narrator {
    fn new(json: bool) -> Self {
        Narrator {
            json,
            steps: Vec::new(),
            events: Vec::new(),
            started: Instant::now(),
        }
    }

    fn begin(&mut self, title: &str) {
        let n = self.steps.len() + 1;
        if !self.json {
            crate::out!("\n== {n}. {title} ==");
        }
        self.steps.push(StepRecord {
            n,
            title: title.to_string(),
            ms: 0,
            checks: Vec::new(),
            figures: serde_json::Map::new(),
        });
        self.events.clear();
        self.started = Instant::now();
    }

    fn say(&mut self, line: impl Into<String>) {
        let line = line.into();
        if !self.json {
            crate::out!("  {line}");
        }
        self.events.push(line);
    }

    fn check(&mut self, ok: bool, what: impl Into<String>) -> bool {
        let what = what.into();
        if !self.json {
            crate::out!("  [{}] {what}", if ok { "ok" } else { "FAILED" });
        }
        if let Some(s) = self.steps.last_mut() {
            s.checks.push(Check { what, ok });
        }
        ok
    }

    fn figure(&mut self, name: &str, v: impl Into<serde_json::Value>) {
        if let Some(s) = self.steps.last_mut() {
            s.figures.insert(name.to_string(), v.into());
        }
    }

    fn end(&mut self, table: &[Row]) {
        let ms = self.started.elapsed().as_millis();
        let Some(step) = self.steps.last_mut() else {
            return;
        };
        step.ms = ms;
        if self.json {
            let obj = json!({
                "step": step.n,
                "title": step.title,
                "ms": ms,
                "ok": step.checks.iter().all(|c| c.ok),
                "events": self.events,
                "checks": step.checks.iter().map(|c| json!({"check": c.what, "ok": c.ok})).collect::<Vec<_>>(),
                "figures": step.figures,
                "sites": table.iter().map(Row::to_json).collect::<Vec<_>>(),
            });
            crate::out!("{obj}");
        } else {
            print_table(table);
        }
    }

    fn all_ok(&self) -> bool {
        self.steps.iter().all(|s| s.checks.iter().all(|c| c.ok))
    }

    fn summary(&self) {
        let total: usize = self.steps.iter().map(|s| s.checks.len()).sum();
        let held: usize = self
            .steps
            .iter()
            .map(|s| s.checks.iter().filter(|c| c.ok).count())
            .sum();
        if self.json {
            crate::out!(
                "{}",
                json!({
                    "summary": true,
                    "ok": self.all_ok(),
                    "checks": total,
                    "held": held,
                    "steps": self.steps.iter().map(|s| json!({
                        "step": s.n, "title": s.title, "ms": s.ms,
                        "checks": s.checks.len(),
                        "held": s.checks.iter().filter(|c| c.ok).count(),
                    })).collect::<Vec<_>>(),
                })
            );
            return;
        }
        crate::out!("\n== summary ==");
        let w = self
            .steps
            .iter()
            .map(|s| s.title.len())
            .max()
            .unwrap_or(10)
            .min(72);
        crate::out!("  {:>2}  {:<w$}  {:>8}  checks", "#", "step", "time");
        for s in &self.steps {
            let held = s.checks.iter().filter(|c| c.ok).count();
            let mark = if held == s.checks.len() {
                "ok"
            } else {
                "FAILED"
            };
            let title: String = s.title.chars().take(w).collect();
            crate::out!(
                "  {:>2}  {:<w$}  {:>6} ms  {held}/{} {mark}",
                s.n,
                title,
                thousands(s.ms as u64),
                s.checks.len()
            );
        }
        if held == total {
            crate::out!("\nevery check held ({held}/{total})");
        } else {
            crate::out!("\n{} of {total} checks FAILED:", total - held);
            for s in &self.steps {
                for c in s.checks.iter().filter(|c| !c.ok) {
                    crate::out!("  step {}: {}", s.n, c.what);
                }
            }
        }
    }
}

/// One line of the status table.
struct Row {
    site: String,
    id: Option<u32>,
    role: String,
    generation: Option<u32>,
    last_lsn: String,
    keys: Option<u64>,
    digest: String,
    peers: Vec<String>,
}

impl Row {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "site": self.site, "id": self.id, "role": self.role,
            "generation": self.generation, "last_lsn": self.last_lsn,
            "keys": self.keys, "digest": self.digest, "peers": self.peers,
        })
    }
}

fn print_table(rows: &[Row]) {
    crate::out!(
        "  {:<4} {:>2}  {:<7} {:>3}  {:<16} {:>6}  {:<8}  peers",
        "site",
        "id",
        "role",
        "gen",
        "last LSN",
        "keys",
        "digest"
    );
    for r in rows {
        crate::out!(
            "  {:<4} {:>2}  {:<7} {:>3}  {:<16} {:>6}  {:<8}  {}",
            r.site,
            r.id.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
            r.role,
            r.generation
                .map(|x| x.to_string())
                .unwrap_or_else(|| "-".into()),
            r.last_lsn,
            r.keys.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
            r.digest,
            r.peers.join(" ")
        );
    }
}

struct Demo {
    cluster: Cluster,
    out: Narrator,
    /// Every write answered ok and permanent, in order.
    acked: Vec<(String, String)>,
}

impl Demo {
    fn name(&self, i: usize) -> String {
        self.cluster.nodes[i].name.clone()
    }

    fn names(&self, idxs: &[usize]) -> String {
        let v: Vec<String> = idxs.iter().map(|&i| self.name(i)).collect();
        match v.len() {
            0 => String::new(),
            1 => v[0].clone(),
            _ => format!("{} and {}", v[..v.len() - 1].join(", "), v[v.len() - 1]),
        }
    }

    async fn table(&mut self) -> Vec<Row> {
        let mut rows = Vec::new();
        for i in 0..self.cluster.len() {
            let site = self.name(i);
            let id = self.cluster.nodes[i].site_id;
            if !self.cluster.is_running(i) {
                rows.push(Row {
                    site,
                    id,
                    role: "down".into(),
                    generation: None,
                    last_lsn: "-".into(),
                    keys: None,
                    digest: "-".into(),
                    peers: Vec::new(),
                });
                continue;
            }
            match crate::api::call(
                &self.cluster.nodes[i].api,
                &Request::Status,
                Duration::from_secs(2),
            )
            .await
            {
                Ok(crate::api::Response {
                    status: Some(s), ..
                }) => {
                    self.cluster.nodes[i].site_id = Some(s.id);
                    let peers = s
                        .sites
                        .iter()
                        .filter(|x| x.id != s.id && x.connected && !x.blocked)
                        .map(|x| {
                            self.cluster
                                .index_of(x.id)
                                .map(letter)
                                .unwrap_or_else(|| format!("#{}", x.id))
                        })
                        .collect();
                    let role = if s.synchronizing {
                        format!("{}*", s.role)
                    } else {
                        s.role.clone()
                    };
                    rows.push(Row {
                        site,
                        id: Some(s.id),
                        role,
                        generation: Some(s.generation),
                        last_lsn: s.last_lsn.clone(),
                        keys: Some(s.keys),
                        digest: s.digest.chars().take(8).collect(),
                        peers,
                    });
                }
                Ok(r) => rows.push(Row {
                    site,
                    id,
                    role: "error".into(),
                    generation: None,
                    last_lsn: r.error.unwrap_or_default(),
                    keys: None,
                    digest: "-".into(),
                    peers: Vec::new(),
                }),
                Err(_) => rows.push(Row {
                    site,
                    id,
                    role: "no-api".into(),
                    generation: None,
                    last_lsn: "-".into(),
                    keys: None,
                    digest: "-".into(),
                    peers: Vec::new(),
                }),
            }
        }
        rows
    }

    async fn end_step(&mut self) {
        let t = self.table().await;
        self.out.end(&t);
    }

    /// A step could not go on: record why and end it.
    async fn abort(&mut self, why: String) -> bool {
        self.out.check(false, why);
        self.end_step().await;
        false
    }

    async fn story(&mut self) -> Result<bool, String> {
        let n = self.cluster.len();
        if !self.out.json {
            crate::out!(
                "shoal demo: {n} sites (A-{}) as separate `shoal node` processes on loopback ports",
                letter(n - 1)
            );
            crate::out!("  homes and logs in {}", self.cluster.dir().display());
            crate::out!(
                "  node settings: {} {}",
                NODE_ARGS.join(" "),
                ARCHIVE_ARGS.join(" ")
            );
        }
        let mut p = Partition::default();
        let finished = self.form_group().await
            && self.first_writes().await
            && self.forwarded_writes().await
            && self.kill_and_catch_up().await
            && self.failover().await
            && self.old_master_returns().await
            && self.partition_with(&mut p).await
            && self.heal_with(&p).await
            && self.message_channels().await
            && self.initialised_after_archiving().await;
        if !finished && !self.out.json {
            crate::out!("\nthe story stops here: the next steps need this one");
        }
        self.out.summary();
        Ok(self.out.all_ok())
    }

    async fn form_group(&mut self) -> bool {
        let n = self.cluster.len();
        self.out.begin(&format!(
            "{} creates the group; {} join",
            letter(0),
            self.names(&(1..n).collect::<Vec<_>>())
        ));
        let t = Instant::now();
        let st = match self.cluster.create(WAIT).await {
            Ok(s) => s,
            Err(e) => {
                return self
                    .abort(format!("A could not create the group: {e}"))
                    .await
            }
        };
        self.out.say(format!(
            "A created the group and is master (site {}, generation {}) after {} ms",
            st.id,
            st.generation,
            t.elapsed().as_millis()
        ));
        for i in 1..n {
            let t = Instant::now();
            match self.cluster.join(i, 0, WAIT).await {
                Ok(s) => {
                    let ms = t.elapsed().as_millis();
                    self.out.say(format!(
                        "{} joined through A as site {} and is a synchronised client after {ms} ms",
                        self.name(i),
                        s.id
                    ));
                }
                Err(e) => {
                    return self
                        .abort(format!("{} could not join: {e}", self.name(i)))
                        .await
                }
            }
        }
        let all: Vec<usize> = (0..n).collect();
        let ok = match procs::converge(&mut self.cluster, &all, WAIT).await {
            Ok(sts) => {
                let ids: Vec<u32> = sts.iter().map(|s| s.id).collect();
                let distinct = {
                    let mut v = ids.clone();
                    v.sort();
                    v.dedup();
                    v.len() == n
                };
                let master = &sts[0];
                let connected = master
                    .sites
                    .iter()
                    .filter(|x| x.id != master.id && x.connected)
                    .count();
                self.out.check(
                    sts[0].role == "master" && distinct,
                    format!("A is master; {} sites with distinct ids {ids:?}", n),
                ) && self.out.check(
                    connected == n - 1 && master.nsites as usize == n,
                    format!(
                        "the master sees {connected}/{} clients connected; nsites = {}",
                        n - 1,
                        master.nsites
                    ),
                )
            }
            Err(e) => self.out.check(false, e),
        };
        self.end_step().await;
        ok
    }

    /// The index of the running master, by asking the running nodes.
    async fn master(&mut self) -> Option<usize> {
        for i in self.cluster.running() {
            if let Ok(s) = self.cluster.status(i).await {
                if s.role == "master" {
                    return Some(i);
                }
            }
        }
        None
    }

    async fn write_keys(
        &mut self,
        master: usize,
        from: usize,
        count: usize,
        label: &str,
    ) -> procs::Writes {
        let items: Vec<(String, String)> = (from..from + count)
            .map(|k| (format!("key-{k:05}"), format!("value-{k:05}")))
            .collect();
        let api = self.cluster.nodes[master].api.clone();
        let label = if self.out.json { None } else { Some(label) };
        let w = procs::write_many(&api, items, CONNS, None, label).await;
        self.acked.extend(w.permanent.iter().cloned());
        w
    }

    fn report_writes(&mut self, w: &procs::Writes, count: usize, on: &str) -> bool {
        let secs = w.elapsed.as_secs_f64().max(1e-9);
        self.out.say(format!(
            "{} writes on {on} over {CONNS} connections in {} ms ({} commits/s)",
            thousands(count as u64),
            w.elapsed.as_millis(),
            thousands((count as f64 / secs) as u64)
        ));
        let mut l = w.latencies_us.clone();
        l.sort_unstable();
        self.out.say(format!(
            "commit latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            procs::quantile(&l, 0.5) as f64 / 1000.0,
            procs::quantile(&l, 0.99) as f64 / 1000.0,
            l.last().copied().unwrap_or(0) as f64 / 1000.0
        ));
        if let Some((k, _, e)) = w.failed.first() {
            self.out.say(format!("first refused write: {k}: {e}"));
        }
        self.out.check(
            w.permanent.len() == count,
            format!(
                "{}/{} writes acknowledged as permanent under QUORUM ({} not permanent, {} refused)",
                thousands(w.permanent.len() as u64),
                thousands(count as u64),
                w.not_permanent.len(),
                w.failed.len()
            ),
        )
    }

    /// W1: each client takes writes on its own API and forwards them to
    /// the master; each is read back on the client that took it.
    async fn forwarded_writes(&mut self) -> bool {
        let n = self.cluster.len();
        let clients: Vec<usize> = (1..n).collect();
        self.out.begin(&format!(
            "writes made on clients {} are forwarded to master {}",
            self.names(&clients),
            letter(0)
        ));
        let t = Instant::now();
        let mut ok = true;
        let (mut permanent, mut read_back, mut failed) = (0usize, 0usize, Vec::new());
        for &c in &clients {
            let mut api = match self.cluster.client(c).await {
                Ok(a) => a,
                Err(e) => {
                    failed.push(format!("{}: {e}", letter(c)));
                    continue;
                }
            };
            for i in 0..FORWARDED_PER_CLIENT {
                let (k, v) = (
                    format!("forwarded-{}-{i:02}", letter(c)),
                    format!("written on {}", letter(c)),
                );
                match api.call(&procs::put_req(&k, &v)).await {
                    Ok(r) if r.ok && r.commit.as_ref().is_some_and(|ci| ci.permanent) => {
                        permanent += 1;
                        self.acked.push((k.clone(), v.clone()));
                        if let Ok(g) = api.call(&procs::get_req(&k)).await {
                            read_back += usize::from(g.value.as_deref() == Some(v.as_str()));
                        }
                    }
                    Ok(r) => failed.push(format!(
                        "{k}: {}",
                        r.error.unwrap_or_else(|| "not permanent".into())
                    )),
                    Err(e) => failed.push(format!("{k}: {e}")),
                }
            }
        }
        let total = clients.len() * FORWARDED_PER_CLIENT;
        self.out.say(format!(
            "{total} writes on {} ({FORWARDED_PER_CLIENT} each), one at a time, in {} ms",
            self.names(&clients),
            t.elapsed().as_millis()
        ));
        if let Some(f) = failed.first() {
            self.out.say(format!("first failed write: {f}"));
        }
        ok &= self.out.check(
            permanent == total,
            format!(
                "{permanent}/{total} forwarded writes committed by {} and acknowledged as permanent",
                letter(0)
            ),
        );
        ok &= self.out.check(
            read_back == permanent,
            format!("{read_back}/{permanent} read back on the client that took them, right after the answer"),
        );
        match self.cluster.status(0).await {
            Ok(st) => {
                let served = st
                    .counters
                    .iter()
                    .find(|(n, _)| n == "forwards_served")
                    .map_or(0, |x| x.1);
                ok &= self.out.check(
                    served as usize >= total,
                    format!("{} counts {served} forwarded writes committed", letter(0)),
                );
            }
            Err(e) => ok &= self.out.check(false, e),
        }
        self.end_step().await;
        ok
    }

    async fn first_writes(&mut self) -> bool {
        self.out.begin(&format!(
            "{} writes with QUORUM acks",
            thousands(FIRST_WRITES as u64)
        ));
        let master = 0;
        let w = self.write_keys(master, 0, FIRST_WRITES, "writing").await;
        let mut ok = self.report_writes(&w, FIRST_WRITES, "A");
        let all: Vec<usize> = (0..self.cluster.len()).collect();
        let t = Instant::now();
        match procs::converge(&mut self.cluster, &all, WAIT).await {
            Ok(sts) => {
                ok &= self.out.check(
                    true,
                    format!(
                        "all {} sites at LSN {} with the same digest {} ({} ms after the last write)",
                        all.len(),
                        sts[0].last_lsn,
                        short(&sts[0].digest),
                        t.elapsed().as_millis()
                    ),
                );
                ok &= self.out.check(
                    sts.iter().all(|s| s.keys as usize == FIRST_WRITES),
                    format!("every site holds {} keys", thousands(FIRST_WRITES as u64)),
                );
            }
            Err(e) => ok &= self.out.check(false, e),
        }
        self.end_step().await;
        ok
    }

    async fn kill_and_catch_up(&mut self) -> bool {
        let n = self.cluster.len();
        let e = n - 1;
        let en = self.name(e);
        self.out.begin(&format!(
            "{en} is killed; the group writes {} more; {en} restarts and catches up",
            thousands(MORE_WRITES as u64)
        ));
        let Some(master) = self.master().await else {
            return self.abort("no master".into()).await;
        };
        self.cluster.kill(e);
        self.out.say(format!("{en} killed with SIGKILL"));
        let w = self
            .write_keys(master, FIRST_WRITES, MORE_WRITES, "writing")
            .await;
        let mn = self.name(master);
        let mut ok = self.report_writes(&w, MORE_WRITES, &format!("{mn} while {en} is down"));
        let behind = match self.cluster.status(master).await {
            Ok(s) => s.last_lsn,
            Err(err) => return self.abort(err).await,
        };
        // E restarts with a peer: it asks that client for the log before
        // the master (client-to-client synchronisation, S3).
        let peer = (1..e).rev().find(|&i| i != master);
        let served = |st: &crate::api::Status| {
            st.counters
                .iter()
                .find(|(k, _)| k == "records_served")
                .map_or(0, |(_, v)| *v)
        };
        let mut before = (0, 0);
        if let Some(p) = peer {
            self.cluster.nodes[e].extra =
                vec!["--peer".into(), self.cluster.nodes[p].listen.clone()];
            if let (Ok(m), Ok(q)) = (
                self.cluster.status(master).await,
                self.cluster.status(p).await,
            ) {
                before = (served(&m), served(&q));
            }
        }
        let t = Instant::now();
        if let Err(err) = self.cluster.start(e, Start::Restart) {
            return self.abort(err).await;
        }
        match peer {
            Some(p) => self.out.say(format!(
                "{en} restarted on its home with --peer {} (master at LSN {behind})",
                self.name(p)
            )),
            None => self.out.say(format!(
                "{en} restarted on its home (master at LSN {behind})"
            )),
        }
        match procs::converge(&mut self.cluster, &[master, e], WAIT).await {
            Ok(sts) => {
                let ms = t.elapsed().as_millis();
                self.out.figure("catch_up_ms", ms as u64);
                ok &= self.out.check(
                    sts[1].digest == sts[0].digest && sts[1].last_lsn == sts[0].last_lsn,
                    format!(
                        "{en} caught up {} ms after restart: last LSN {} and digest {} equal the master's; {} keys",
                        ms,
                        sts[1].last_lsn,
                        short(&sts[1].digest),
                        thousands(sts[1].keys)
                    ),
                );
            }
            Err(err) => {
                ok &= self
                    .out
                    .check(false, format!("{en} did not catch up: {err}"))
            }
        }
        if let Some(p) = peer {
            if let (Ok(m), Ok(q)) = (
                self.cluster.status(master).await,
                self.cluster.status(p).await,
            ) {
                let (from_master, from_peer) = (served(&m) - before.0, served(&q) - before.1);
                self.out.figure("catch_up_records_from_peer", from_peer);
                self.out.figure("catch_up_records_from_master", from_master);
                self.out.say(format!(
                    "{en}'s catch-up: {} records sent by its peer {}, {} by the master {mn}",
                    thousands(from_peer),
                    self.name(p),
                    thousands(from_master)
                ));
            }
        }
        self.end_step().await;
        ok
    }

    async fn failover(&mut self) -> bool {
        let Some(old) = self.master().await else {
            self.out
                .begin("the master is killed with SIGKILL; a new master is elected");
            return self.abort("no master".into()).await;
        };
        let on = self.name(old);
        self.out.begin(&format!(
            "the master {on} is killed with SIGKILL; a new master is elected"
        ));
        let old_gen = self
            .cluster
            .status(old)
            .await
            .map(|s| s.generation)
            .unwrap_or(0);
        let live: Vec<usize> = (0..self.cluster.len()).filter(|&i| i != old).collect();
        let t0 = Instant::now();
        self.cluster.kill(old);
        self.out.say(format!("{on} killed with SIGKILL"));
        let (newm, at, resp) = match procs::first_write(
            &self.cluster,
            &live,
            "failover-probe",
            "written by the new master",
            WAIT,
        )
        .await
        {
            Ok(x) => x,
            Err(e) => return self.abort(e).await,
        };
        let ms = at.duration_since(t0).as_secs_f64() * 1000.0;
        self.acked
            .push(("failover-probe".into(), "written by the new master".into()));
        self.out.figure("failover_ms", (ms * 10.0).round() / 10.0);
        let nn = self.name(newm);
        let generation = resp.commit.as_ref().map(|c| c.generation).unwrap_or(0);
        let mut ok = self.out.check(
            generation > old_gen,
            format!("new master {nn} elected and its first write acknowledged {ms:.1} ms after {on} was killed (generation {old_gen} -> {generation})"),
        );
        match procs::converge(&mut self.cluster, &live, WAIT).await {
            Ok(sts) => {
                ok &= self.out.check(
                    true,
                    format!(
                        "the {} live sites converged: LSN {}, digest {}",
                        live.len(),
                        sts[0].last_lsn,
                        short(&sts[0].digest)
                    ),
                );
            }
            Err(e) => ok &= self.out.check(false, e),
        }
        ok &= self.verify(&live).await;
        self.end_step().await;
        ok
    }

    /// Read every acknowledged write back on each site of `idxs`.
    async fn verify(&mut self, idxs: &[usize]) -> bool {
        let expected = Arc::new(self.acked.clone());
        let mut missing = Vec::new();
        let t = Instant::now();
        for &i in idxs {
            let api = self.cluster.nodes[i].api.clone();
            let label = format!("reading back on {}:", self.name(i));
            let label = if self.out.json {
                None
            } else {
                Some(label.as_str())
            };
            let (present, bad) = procs::count_present(&api, expected.clone(), CONNS, label).await;
            if present != expected.len() {
                missing.push(format!(
                    "{}: {}/{} present (e.g. {})",
                    self.name(i),
                    present,
                    expected.len(),
                    bad.join("; ")
                ));
            }
        }
        let total = thousands(expected.len() as u64);
        let ok = missing.is_empty();
        self.out.check(
            ok,
            if ok {
                format!(
                    "{total}/{total} acknowledged writes present on all {} live sites ({} reads in {} ms)",
                    idxs.len(),
                    thousands((expected.len() * idxs.len()) as u64),
                    t.elapsed().as_millis()
                )
            } else {
                format!("acknowledged writes missing: {}", missing.join(" | "))
            },
        )
    }

    async fn old_master_returns(&mut self) -> bool {
        let down: Vec<usize> = (0..self.cluster.len())
            .filter(|&i| !self.cluster.is_running(i))
            .collect();
        let Some(&old) = down.first() else {
            return true;
        };
        let on = self.name(old);
        self.out
            .begin(&format!("{on} restarts and rejoins as a client"));
        let t = Instant::now();
        if let Err(e) = self.cluster.start(old, Start::Restart) {
            return self.abort(e).await;
        }
        let all: Vec<usize> = (0..self.cluster.len()).collect();
        let ok = match procs::converge(&mut self.cluster, &all, WAIT).await {
            Ok(sts) => {
                let role = sts[old].role.clone();
                self.out.check(
                    role == "client",
                    format!(
                        "{on} is a client of the new master and caught up after {} ms; all {} sites at LSN {}, digest {}",
                        t.elapsed().as_millis(),
                        all.len(),
                        sts[0].last_lsn,
                        short(&sts[0].digest)
                    ),
                )
            }
            Err(e) => self.out.check(false, e),
        };
        self.end_step().await;
        ok
    }

    async fn partition_with(&mut self, p: &mut Partition) -> bool {
        let n = self.cluster.len();
        let Some(m) = self.master().await else {
            self.out.begin("a partition isolates the master");
            return self.abort("no master".into()).await;
        };
        let majority = n / 2 + 1;
        let minority = n - majority;
        let mut small = vec![m];
        let mut k = 1;
        while small.len() < minority {
            small.push((m + k) % n);
            k += 1;
        }
        let big: Vec<usize> = (0..n).filter(|i| !small.contains(i)).collect();
        let mn = self.name(m);
        let title = if small.len() > 1 {
            format!(
                "a partition isolates the master {mn} with {}",
                self.names(&small[1..])
            )
        } else {
            format!("a partition isolates the master {mn}")
        };
        self.out.begin(&title);
        let old_gen = self
            .cluster
            .status(m)
            .await
            .map(|s| s.generation)
            .unwrap_or(0);
        let t0 = Instant::now();
        if let Err(e) = self.cluster.partition(&small, &big, true).await {
            return self.abort(format!("cannot cut the links: {e}")).await;
        }
        self.out.say(format!(
            "links cut between {{{}}} and {{{}}} (each side drops the other's traffic) in {} ms",
            self.names(&small),
            self.names(&big),
            t0.elapsed().as_millis()
        ));
        p.small = small.clone();
        p.big = big.clone();
        // A write on the isolated master cannot reach a quorum.
        // Three things at once: a write on the isolated master (it cannot
        // reach a quorum), watching it step down, and probing the majority
        // until its new master takes a write.
        let api_m = self.cluster.nodes[m].api.clone();
        let isolated_req = procs::put_req("isolated-write", "taken without a quorum");
        let isolated = crate::api::call(&api_m, &isolated_req, Duration::from_secs(10));
        let watch = async {
            let deadline = Instant::now() + WAIT;
            loop {
                match procs::status_at(&api_m).await {
                    Ok(s) if s.role != "master" => break Some((t0.elapsed(), s.role)),
                    _ => {}
                }
                if Instant::now() > deadline {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let probe = procs::first_write(
            &self.cluster,
            &big,
            "partition-probe",
            "written by the majority",
            WAIT,
        );
        let (r, step_down, probed) = tokio::join!(isolated, watch, probe);
        let mut ok = true;
        match r {
            Ok(r) if r.ok => {
                let c = r.commit.clone().unwrap_or_default();
                p.isolated_write = !c.permanent;
                ok &= self.out.check(
                    !c.permanent,
                    format!(
                        "a write on the isolated master {mn} was not acknowledged as permanent ({} of {} acks)",
                        c.acks, c.needed
                    ),
                );
            }
            Ok(r) => self.out.say(format!(
                "the isolated master {mn} refused a write: {}",
                r.error.unwrap_or_default()
            )),
            Err(e) => self.out.say(format!(
                "a write on the isolated master {mn} got no answer: {e}"
            )),
        }
        match step_down {
            Some((d, role)) => {
                self.out.figure("step_down_ms", d.as_millis() as u64);
                ok &= self.out.check(
                    true,
                    format!(
                        "the isolated master {mn} stepped down (now {role}) {} ms after the cut: it could not reach a majority",
                        d.as_millis()
                    ),
                );
            }
            None => {
                ok &= self.out.check(
                    false,
                    format!("{mn} still claims to be master {WAIT:?} after the cut"),
                )
            }
        }
        match probed {
            Ok((newm, at, resp)) => {
                self.acked
                    .push(("partition-probe".into(), "written by the majority".into()));
                let ms = at.duration_since(t0).as_millis();
                self.out.figure("majority_master_ms", ms as u64);
                let generation = resp.commit.as_ref().map(|c| c.generation).unwrap_or(0);
                p.master = Some(newm);
                ok &= self.out.check(
                    generation > old_gen,
                    format!(
                        "the majority {{{}}} elected {} (generation {generation}); its first write acknowledged {ms} ms after the cut",
                        self.names(&big),
                        self.name(newm)
                    ),
                );
            }
            Err(e) => {
                return self
                    .abort(format!("the majority did not elect a master: {e}"))
                    .await;
            }
        }
        let newm = p.master.expect("set above");
        let w = self
            .write_keys(newm, FIRST_WRITES + MORE_WRITES, MORE_WRITES, "writing")
            .await;
        let nn = self.name(newm);
        ok &= self.report_writes(&w, MORE_WRITES, &format!("{nn} during the partition"));
        // The minority has no master.
        let mut masters = Vec::new();
        for &i in &small {
            if let Ok(s) = self.cluster.status(i).await {
                if s.role == "master" {
                    masters.push(self.name(i));
                }
            }
        }
        ok &= self.out.check(
            masters.is_empty(),
            if masters.is_empty() {
                format!("no master on the minority side {{{}}}", self.names(&small))
            } else {
                format!("the minority has a master: {}", masters.join(", "))
            },
        );
        self.end_step().await;
        ok
    }

    async fn heal_with(&mut self, p: &Partition) -> bool {
        self.out.begin("the partition heals; every site converges");
        let t0 = Instant::now();
        if let Err(e) = self.cluster.partition(&p.small, &p.big, false).await {
            return self.abort(format!("cannot heal the links: {e}")).await;
        }
        self.out.say(format!(
            "links between {{{}}} and {{{}}} restored",
            self.names(&p.small),
            self.names(&p.big)
        ));
        let all: Vec<usize> = (0..self.cluster.len()).collect();
        let mut ok = match procs::converge(&mut self.cluster, &all, WAIT).await {
            Ok(sts) => {
                let m = sts.iter().position(|s| s.role == "master").unwrap_or(0);
                self.out
                    .figure("converge_ms", t0.elapsed().as_millis() as u64);
                self.out.check(
                    Some(m) == p.master,
                    format!(
                        "all {} sites converged {} ms after the heal: master {}, LSN {}, digest {}, {} keys",
                        all.len(),
                        t0.elapsed().as_millis(),
                        self.name(m),
                        sts[0].last_lsn,
                        short(&sts[0].digest),
                        thousands(sts[0].keys)
                    ),
                )
            }
            Err(e) => self.out.check(false, e),
        };
        let t = Instant::now();
        ok &= match procs::wait_connected(&mut self.cluster, &all, Duration::from_secs(10)).await {
            Ok(()) => self.out.check(
                true,
                format!(
                    "every site is connected to every other again ({} ms later)",
                    t.elapsed().as_millis()
                ),
            ),
            Err(e) => self
                .out
                .check(false, format!("connections not restored: {e}")),
        };
        ok &= self.verify(&all).await;
        if p.isolated_write {
            let mut found = Vec::new();
            for &i in &all {
                match self.cluster.get(i, "isolated-write").await {
                    Ok(None) => {}
                    Ok(Some(_)) => found.push(self.name(i)),
                    Err(e) => found.push(format!("{} ({e})", self.name(i))),
                }
            }
            ok &= self.out.check(
                found.is_empty(),
                if found.is_empty() {
                    format!(
                        "the write the isolated master took without a quorum was rolled back: absent on all {} sites",
                        all.len()
                    )
                } else {
                    format!("the unacknowledged isolated write is still present on {}", found.join(", "))
                },
            );
        }
        self.end_step().await;
        ok
    }

    /// S6: a client is away while the group writes more than a log
    /// segment and archives the log it stopped at; back, it has no log in
    /// common with the master and is initialised from the master's
    /// snapshot, sent in pages, then catches up from the log.
    async fn initialised_after_archiving(&mut self) -> bool {
        let Some(master) = self.master().await else {
            self.out
                .begin("a client away while the log is archived is initialised");
            return self.abort("no master".into()).await;
        };
        let Some(c) = (1..self.cluster.len()).rev().find(|&i| i != master) else {
            return true;
        };
        let (mn, cn) = (self.name(master), self.name(c));
        self.out.begin(&format!(
            "{cn} misses {} writes and the archived log; it is initialised from a snapshot",
            thousands(ARCHIVE_WRITES)
        ));
        let counter = |st: &crate::api::Status, name: &str| {
            st.counters
                .iter()
                .find(|(k, _)| k == name)
                .map_or(0, |(_, v)| *v)
        };
        let (archived_before, pages_before, generation, step_downs) =
            match self.cluster.status(master).await {
                Ok(s) => (
                    counter(&s, "segments_archived"),
                    counter(&s, "pages_sent"),
                    s.generation,
                    counter(&s, "step_downs"),
                ),
                Err(e) => return self.abort(e).await,
            };
        self.cluster.kill(c);
        self.out.say(format!("{cn} killed with SIGKILL"));
        let t = Instant::now();
        let load = Request::Load {
            db: procs::DB.into(),
            writers: 32,
            count: ARCHIVE_WRITES,
            first: 0,
            key_prefix: "archive-".into(),
            value_bytes: 100,
            sync: None,
        };
        let mut ok = match self.cluster.client(master).await {
            Ok(mut api) => {
                api.set_timeout(WAIT);
                match api.call(&load).await {
                    Ok(r) => match r.load {
                        Some(l) => self.out.check(
                            l.commits == ARCHIVE_WRITES && l.failed == 0 && l.not_permanent == 0,
                            format!(
                                "{}/{} writes made inside {mn} acknowledged as permanent in {} ms{}",
                                thousands(l.commits),
                                thousands(ARCHIVE_WRITES),
                                t.elapsed().as_millis(),
                                l.error.as_deref().map(|e| format!(" (first error: {e})")).unwrap_or_default()
                            ),
                        ),
                        None => self.out.check(false, r.error.unwrap_or_default()),
                    },
                    Err(e) => self.out.check(false, e.to_string()),
                }
            }
            Err(e) => self.out.check(false, e),
        };
        // A checkpoint in the new segment archives the ones before it.
        let t = Instant::now();
        let mut archived = archived_before;
        while archived == archived_before && t.elapsed() < WAIT {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Ok(s) = self.cluster.status(master).await {
                archived = counter(&s, "segments_archived");
            }
        }
        ok &= self.out.check(
            archived > archived_before,
            format!(
                "{mn} archived {} log segment(s) after a checkpoint; the log {cn} stopped at is gone",
                archived - archived_before
            ),
        );
        let t = Instant::now();
        if let Err(e) = self.cluster.start(c, Start::Restart) {
            return self.abort(e).await;
        }
        self.out.say(format!("{cn} restarted on its home"));
        let running = self.cluster.running();
        match procs::converge(&mut self.cluster, &running, WAIT).await {
            Ok(sts) => {
                let ms = t.elapsed().as_millis();
                self.out.figure("init_ms", ms as u64);
                ok &= self.out.check(
                    true,
                    format!(
                        "all {} sites converged {ms} ms after {cn} restarted: LSN {}, digest {}, {} keys",
                        sts.len(),
                        sts[0].last_lsn,
                        short(&sts[0].digest),
                        thousands(sts[0].keys)
                    ),
                );
            }
            Err(e) => ok &= self.out.check(false, format!("{cn} did not converge: {e}")),
        }
        match (
            self.cluster.status(c).await,
            self.cluster.status(master).await,
        ) {
            (Ok(cs), Ok(ms)) => {
                let pages = counter(&ms, "pages_sent") - pages_before;
                self.out.figure("init_pages", pages);
                ok &= self.out.check(
                    counter(&cs, "inits_done") == 1 && pages > 0,
                    format!(
                        "{cn} was initialised from {mn}'s snapshot ({} pages), then caught up from the log (INIT_DONE)",
                        thousands(pages)
                    ),
                );
            }
            (Err(e), _) | (_, Err(e)) => ok &= self.out.check(false, e),
        }
        // Nothing in this step may cost the group its master: an election
        // here means a healthy master was taken for lost.
        match self.cluster.status(master).await {
            Ok(s) => {
                let stepped = counter(&s, "step_downs").saturating_sub(step_downs);
                ok &= self.out.check(
                    s.role == "master" && s.generation == generation && stepped == 0,
                    format!(
                        "{mn} stayed master through the step, without an election (generation {} -> {}, role {}, {stepped} step-down(s))",
                        generation, s.generation, s.role
                    ),
                );
            }
            Err(e) => ok &= self.out.check(false, e),
        }
        self.end_step().await;
        ok
    }
}

impl Demo {
    /// W2: a listener on every node answers requests with its site's
    /// letter; a client's request on a channel to "the master" is answered
    /// by the master, the master's own request to the master by itself, a
    /// note reaches one site; after a planned hand-over the same channel
    /// reaches the new master.
    async fn message_channels(&mut self) -> bool {
        let Some(master) = self.master().await else {
            self.out
                .begin("message channels: a request to the master follows a hand-over");
            return self.abort("no master".into()).await;
        };
        let running = self.cluster.running();
        let others: Vec<usize> = running.iter().copied().filter(|&i| i != master).collect();
        let (Some(&asker), Some(&heir)) = (others.first(), others.last()) else {
            return true;
        };
        let (mn, an, hn) = (self.name(master), self.name(asker), self.name(heir));
        self.out.begin(&format!(
            "message channels: {an}'s requests to the master reach {mn}, then {hn} after a hand-over"
        ));
        let mut listeners = Vec::new();
        for &i in &running {
            let api = self.cluster.nodes[i].api.clone();
            match procs::Listener::start(&api, &self.name(i)).await {
                Ok(l) => listeners.push((i, l)),
                Err(e) => {
                    return self
                        .abort(format!("listener on {}: {e}", self.name(i)))
                        .await
                }
            }
        }
        self.out.say(format!(
            "a `listen` connection on each of {} answers requests with its site's letter",
            self.names(&running)
        ));
        let listener = |i: usize| listeners.iter().find(|(x, _)| *x == i).map(|(_, l)| l);
        let apis: Vec<String> = self.cluster.nodes.iter().map(|n| n.api.clone()).collect();
        let ids: Vec<Option<u32>> = self.cluster.nodes.iter().map(|n| n.site_id).collect();
        let api = |i: usize| apis[i].clone();
        let id = |i: usize| ids[i];
        let t = Instant::now();
        let first = procs::channel_request(&api(asker), "master", &["who is master?"], WAIT).await;
        let ms = t.elapsed().as_millis();
        let mut ok = self.out.check(
            first.as_deref() == Ok(mn.as_str()),
            format!(
                "{an} asked the master channel \"who is master?\": answer {first:?} in {ms} ms"
            ),
        );
        let got = listener(master).map(|l| l.messages()).unwrap_or_default();
        ok &= self.out.check(
            got.iter()
                .any(|m| m.to_master && m.id.is_some() && Some(m.from) == id(asker)),
            format!("{mn}'s listener saw the request from {an}, flagged for the master"),
        );
        let own = procs::channel_request(&api(master), "master", &["note to self"], WAIT).await;
        let got = listener(master).map(|l| l.messages()).unwrap_or_default();
        ok &= self.out.check(
            own.as_deref() == Ok(mn.as_str())
                && got
                    .iter()
                    .any(|m| m.parts == ["note to self"] && Some(m.from) == id(master)),
            format!("{mn}, the master, sent to the master and its own listener answered: {own:?}"),
        );
        // A fire-and-forget note from the asker to the heir, by site id.
        let note = Request::Msg {
            to: id(heir).map(|x| x.to_string()).unwrap_or_default(),
            parts: vec!["cache".into(), "invalidate users".into()],
        };
        let sent = self.cluster.call(asker, &note).await;
        let t = Instant::now();
        let mut arrived = false;
        while !arrived && t.elapsed() < WAIT {
            arrived = listener(heir).is_some_and(|l| {
                l.messages()
                    .iter()
                    .any(|m| m.parts == ["cache", "invalidate users"] && m.id.is_none())
            });
            if !arrived {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        ok &= self.out.check(
            sent.as_ref().is_ok_and(|r| r.ok) && arrived,
            format!("a two-part note from {an} to {hn} (send_msg, no answer) arrived"),
        );
        // Planned hand-over to the heir; the same target follows it.
        let Some(heir_id) = id(heir) else {
            return self.abort(format!("{hn} has no site id")).await;
        };
        match self
            .cluster
            .call(master, &Request::Transfer { site: heir_id })
            .await
        {
            Ok(r) if r.ok => self
                .out
                .say(format!("{mn} hands mastership to {hn} (transfer)")),
            Ok(r) => return self.abort(r.error.unwrap_or_default()).await,
            Err(e) => return self.abort(e).await,
        }
        let t = Instant::now();
        let follows = self
            .cluster
            .wait_status(asker, WAIT, "it follows the new master", |s| {
                s.master == Some(heir_id)
            })
            .await;
        if let Err(e) = follows {
            return self.abort(e).await;
        }
        let after = procs::channel_request(&api(asker), "master", &["who is master?"], WAIT).await;
        ok &= self.out.check(
            after.as_deref() == Ok(hn.as_str()),
            format!(
                "{hn} is master {} ms later; {an}'s same request to the master now answered {after:?}",
                t.elapsed().as_millis()
            ),
        );
        // Without a dispatch a request is refused at once.
        drop(listeners);
        let t = Instant::now();
        let mut refused = String::new();
        while t.elapsed() < WAIT {
            match procs::channel_request(&api(asker), "master", &["anyone?"], Duration::ZERO).await
            {
                Err(e) if e.contains("no message dispatch") => {
                    refused = e;
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        ok &= self.out.check(
            !refused.is_empty(),
            format!("with the listeners gone, a request to the master is refused: {refused}"),
        );
        // The next step starts from a settled group under the new master.
        let running = self.cluster.running();
        if let Err(e) = procs::converge(&mut self.cluster, &running, WAIT).await {
            ok &= self
                .out
                .check(false, format!("the group did not settle: {e}"));
        }
        self.end_step().await;
        ok
    }
}

#[derive(Default)]
struct Partition {
    small: Vec<usize>,
    big: Vec<usize>,
    master: Option<usize>,
    isolated_write: bool,
}

fn short(digest: &str) -> String {
    digest.chars().take(8).collect()
}
