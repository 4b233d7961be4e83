//! A group of real `shoal node` processes on loopback ports, for the demo,
//! the bench and the process-level tests.
//!
//! A [`Cluster`] owns a temporary directory with one home per node
//! (`DIR/A`, `DIR/B`, ...) and one log file per node (`DIR/A.log`, the
//! node's stderr and stdout, appended across restarts). Ports are picked
//! by binding `127.0.0.1:0` and releasing the socket just before the node
//! starts. Nodes are started with `shoal node --home ... --listen ...
//! --api ...` plus `--create` (the first) or `--join HELPER` (the others);
//! a member is restarted by running `shoal node` again on its existing
//! home with the same `--listen` and `--api`, without `--create` or
//! `--join`: the home holds its identity and the group.
//!
//! Every child is killed when the `Cluster` is dropped (also when a panic
//! unwinds through it; the directory is removed then too, unless
//! `SHOAL_KEEP` is set in the environment), and on Linux each child also gets SIGKILL from the
//! kernel if the thread that started it dies (`PR_SET_PDEATHSIG`), so a
//! demo or test that is itself killed leaves no orphan node behind.

use crate::api::{self, Client, Request, Response, Status};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The database every helper here uses.
pub const DB: &str = "default";

/// Default wait for one API request.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// The site letter of node `i` (A, B, ...; past Z, `N26`, ...).
pub fn letter(i: usize) -> String {
    if i < 26 {
        ((b'A' + i as u8) as char).to_string()
    } else {
        format!("N{i}")
    }
}

/// Pick `n` distinct free loopback ports (all bound at once, then
/// released).
pub fn free_ports(n: usize) -> std::io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// How a node is started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// `--create`: a new group with this site as master.
    Create,
    /// `--join HELPER`: join through node `HELPER`'s listen address.
    Join(usize),
    /// Neither: restart the member whose home this is.
    Restart,
}

/// One node of a [`Cluster`].
pub struct NodeProc {
    /// Its letter (A, B, ...).
    pub name: String,
    /// Its replication address (`--listen`).
    pub listen: String,
    /// Its client API address (`--api`).
    pub api: String,
    /// Its home directory.
    pub home: PathBuf,
    /// Where its stderr and stdout go.
    pub log: PathBuf,
    /// Arguments for this node only (after the cluster's common ones).
    pub extra: Vec<String>,
    /// The site id it reported, once known.
    pub site_id: Option<u32>,
    child: Option<Child>,
    started: Option<Instant>,
}

impl NodeProc {
    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// When the running process was started.
    pub fn started_at(&self) -> Option<Instant> {
        self.started
    }
}

/// A group of `shoal node` child processes in a temporary directory.
pub struct Cluster {
    binary: PathBuf,
    dir: Option<tempfile::TempDir>,
    kept: Option<PathBuf>,
    /// Arguments given to every node (timeouts, ack policy, ...).
    pub common: Vec<String>,
    /// The nodes, by index (A = 0).
    pub nodes: Vec<NodeProc>,
}

impl Cluster {
    /// Lay out `n` nodes (nothing is started) that run `binary node ...`
    /// with `common` arguments. Ports are chosen now.
    pub fn new(
        binary: impl Into<PathBuf>,
        n: usize,
        common: Vec<String>,
    ) -> std::io::Result<Cluster> {
        let dir = tempfile::Builder::new().prefix("shoal-").tempdir()?;
        let ports = free_ports(2 * n)?;
        let nodes = (0..n)
            .map(|i| {
                let name = letter(i);
                NodeProc {
                    listen: format!("127.0.0.1:{}", ports[2 * i]),
                    api: format!("127.0.0.1:{}", ports[2 * i + 1]),
                    home: dir.path().join(&name),
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    extra: Vec::new(),
                    site_id: None,
                    child: None,
                    started: None,
                }
            })
            .collect();
        Ok(Cluster {
            binary: binary.into(),
            dir: Some(dir),
            kept: None,
            common,
            nodes,
        })
    }

    /// Give the group a key (B4): write a fresh one into the cluster's
    /// directory and start every node with `--group-key-file` naming it.
    pub fn with_group_key(&mut self) -> Result<PathBuf, String> {
        let path = self.dir().join("group.key");
        crate::auth::GroupKey::write_new_file(&path, false)?;
        self.common.push("--group-key-file".into());
        self.common.push(path.display().to_string());
        Ok(path)
    }

    /// The binary that runs this process: `shoal` itself when the demo or
    /// bench runs as `shoal demo` / `shoal bench`.
    pub fn current_binary() -> Result<PathBuf, String> {
        std::env::current_exe()
            .map_err(|e| format!("cannot find the shoal binary to start nodes with: {e}"))
    }

    /// The temporary directory holding every home and log.
    pub fn dir(&self) -> &Path {
        match (&self.dir, &self.kept) {
            (Some(d), _) => d.path(),
            (None, Some(p)) => p,
            (None, None) => Path::new("."),
        }
    }

    /// Keep the directory (homes and logs) after the cluster is dropped;
    /// returns its path. The processes are still killed.
    pub fn keep_dir(&mut self) -> PathBuf {
        if let Some(d) = self.dir.take() {
            self.kept = Some(d.keep());
        }
        self.kept.clone().unwrap_or_default()
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// No nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The command line `start(i, how)` would run (without the binary).
    pub fn args(&self, i: usize, how: Start) -> Vec<String> {
        let n = &self.nodes[i];
        let mut a = vec![
            "node".to_string(),
            "--home".into(),
            n.home.display().to_string(),
            "--listen".into(),
            n.listen.clone(),
            "--api".into(),
            n.api.clone(),
        ];
        match how {
            Start::Create => a.push("--create".into()),
            Start::Join(h) => {
                a.push("--join".into());
                a.push(self.nodes[h].listen.clone());
            }
            Start::Restart => {}
        }
        a.extend(self.common.iter().cloned());
        a.extend(n.extra.iter().cloned());
        a
    }

    /// Start node `i`'s process (it must not be running).
    pub fn start(&mut self, i: usize, how: Start) -> Result<(), String> {
        if self.is_running(i) {
            return Err(format!("site {} is already running", self.nodes[i].name));
        }
        if how != Start::Restart {
            std::fs::create_dir_all(&self.nodes[i].home)
                .map_err(|e| format!("cannot create {}: {e}", self.nodes[i].home.display()))?;
        }
        let args = self.args(i, how);
        let n = &mut self.nodes[i];
        let log = File::options()
            .create(true)
            .append(true)
            .open(&n.log)
            .map_err(|e| format!("cannot open {}: {e}", n.log.display()))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", n.log.display()))?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(log2)
            .stderr(log);
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs in the child between fork and exec
            // and only makes one prctl system call (async-signal-safe).
            unsafe {
                cmd.pre_exec(|| {
                    rustix::process::set_parent_process_death_signal(Some(
                        rustix::process::Signal::KILL,
                    ))
                    .map_err(std::io::Error::from)
                });
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {} node: {e}", self.binary.display()))?;
        n.child = Some(child);
        n.started = Some(Instant::now());
        Ok(())
    }

    /// Node `i`'s process is running (it has not exited).
    pub fn is_running(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut() {
            None => false,
            Some(c) => match c.try_wait() {
                Ok(None) => true,
                Ok(Some(_)) | Err(_) => {
                    self.nodes[i].child = None;
                    false
                }
            },
        }
    }

    /// If node `i` has exited on its own, how (and forget the process).
    pub fn exited(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        let c = self.nodes[i].child.as_mut()?;
        match c.try_wait() {
            Ok(Some(s)) => {
                self.nodes[i].child = None;
                Some(s)
            }
            _ => None,
        }
    }

    /// SIGKILL node `i` and reap it. Returns when the process is gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM node `i` and wait up to `timeout` for it to exit (then
    /// SIGKILL). Returns the exit status when it exited on its own.
    pub async fn stop(&mut self, i: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.nodes[i].child.take()?;
        #[cfg(unix)]
        {
            if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
        }
        #[cfg(not(unix))]
        let _ = c.kill();
        let deadline = Instant::now() + timeout;
        loop {
            match c.try_wait() {
                Ok(Some(s)) => return Some(s),
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return None;
                }
            }
        }
    }

    /// Restart node `i` on its home (stopping it first with SIGTERM if it
    /// is running).
    pub async fn restart(&mut self, i: usize) -> Result<(), String> {
        if self.is_running(i) {
            self.stop(i, Duration::from_secs(10)).await;
        }
        self.start(i, Start::Restart)
    }

    /// The last `lines` lines of node `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let mut f = match File::open(&self.nodes[i].log) {
            Ok(f) => f,
            Err(e) => return format!("(no log: {e})"),
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        let all: Vec<&str> = s.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// One request to node `i` on a fresh connection.
    pub async fn call(&self, i: usize, req: &Request) -> Result<Response, String> {
        api::call(&self.nodes[i].api, req, CALL_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
    }

    /// A connection to node `i`'s API.
    pub async fn client(&self, i: usize) -> Result<Client, String> {
        Client::connect(&self.nodes[i].api, CALL_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
    }

    /// Node `i`'s status.
    pub async fn status(&self, i: usize) -> Result<Status, String> {
        status_at(&self.nodes[i].api).await
    }

    /// Put `key` = `value` on node `i`.
    pub async fn put(&self, i: usize, key: &str, value: &str) -> Result<Response, String> {
        self.call(i, &put_req(key, value)).await
    }

    /// Read `key` on node `i`.
    pub async fn get(&self, i: usize, key: &str) -> Result<Option<String>, String> {
        let r = self.call(i, &get_req(key)).await?;
        if r.ok {
            Ok(r.value)
        } else {
            Err(r.error.unwrap_or_else(|| "get failed".into()))
        }
    }

    /// Cut (`block`) or heal the network between node `i` and node `j`,
    /// both directions (a `link` request to each side).
    pub async fn link(&self, i: usize, j: usize, block: bool) -> Result<(), String> {
        self.link_one(i, j, block).await?;
        self.link_one(j, i, block).await
    }

    /// Ask node `a` to drop (`block`) or take again all traffic with node
    /// `b`; `b` is not told.
    pub async fn link_one(&self, a: usize, b: usize, block: bool) -> Result<(), String> {
        let site = self.nodes[b]
            .site_id
            .ok_or_else(|| format!("site {} has no known id", self.nodes[b].name))?;
        let r = self.call(a, &Request::Link { site, block }).await?;
        if r.ok {
            Ok(())
        } else {
            Err(format!(
                "link {} -> {}: {}",
                self.nodes[a].name,
                self.nodes[b].name,
                r.error.unwrap_or_default()
            ))
        }
    }

    /// Cut (`block`) or heal every link between the nodes of `side1` and
    /// those of `side2`: first every node of `side1` drops the other side,
    /// then every node of `side2` does, so that when a node of `side2`
    /// sees its links break, `side1` is already silent.
    pub async fn partition(
        &self,
        side1: &[usize],
        side2: &[usize],
        block: bool,
    ) -> Result<(), String> {
        for &a in side1 {
            for &b in side2 {
                self.link_one(a, b, block).await?;
            }
        }
        for &b in side2 {
            for &a in side1 {
                self.link_one(b, a, block).await?;
            }
        }
        Ok(())
    }

    /// Poll node `i`'s status until it answers (and `until` holds), for at
    /// most `timeout`. Fails at once if the process has exited.
    pub async fn wait_status(
        &mut self,
        i: usize,
        timeout: Duration,
        what: &str,
        until: impl Fn(&Status) -> bool,
    ) -> Result<Status, String> {
        let deadline = Instant::now() + timeout;
        let mut last: String;
        loop {
            if let Some(s) = self.exited(i) {
                return Err(format!(
                    "site {} exited ({s}) while waiting until {what}; its log ends:\n{}",
                    self.nodes[i].name,
                    self.log_tail(i, 15)
                ));
            }
            match api::call(&self.nodes[i].api, &Request::Status, Duration::from_secs(2)).await {
                Ok(r) => match r.status {
                    Some(s) => {
                        if s.id != 0 {
                            self.nodes[i].site_id = Some(s.id);
                        }
                        if until(&s) {
                            return Ok(s);
                        }
                        last = format!("role {}, last LSN {}", s.role, s.last_lsn);
                    }
                    None => last = r.error.unwrap_or_else(|| "status without a body".into()),
                },
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "site {}: timed out after {:?} waiting until {what} (last: {last}); its log ends:\n{}",
                    self.nodes[i].name,
                    timeout,
                    self.log_tail(i, 15)
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Start node 0 with `--create` and wait until it is master.
    pub async fn create(&mut self, timeout: Duration) -> Result<Status, String> {
        self.start(0, Start::Create)?;
        self.wait_status(0, timeout, "it is master", |s| s.role == "master")
            .await
    }

    /// Start node `i` with `--join` through node `helper` (the master),
    /// and wait until it is a synchronised client that the master lists.
    pub async fn join(
        &mut self,
        i: usize,
        helper: usize,
        timeout: Duration,
    ) -> Result<Status, String> {
        self.start(i, Start::Join(helper))?;
        let st = self
            .wait_status(i, timeout, "it has joined and caught up", |s| {
                s.role == "client" && !s.synchronizing && s.id != 0
            })
            .await?;
        let id = st.id;
        self.wait_status(
            helper,
            timeout,
            &format!("the master lists site {id}"),
            |s| s.sites.iter().any(|x| x.id == id && x.connected),
        )
        .await?;
        Ok(st)
    }

    /// Start a whole group: node 0 creates it, the others join one at a
    /// time through node 0.
    pub async fn start_group(&mut self, timeout: Duration) -> Result<(), String> {
        self.create(timeout).await?;
        for i in 1..self.len() {
            self.join(i, 0, timeout).await?;
        }
        Ok(())
    }

    /// Indexes of the nodes whose processes run.
    pub fn running(&mut self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.is_running(i)).collect()
    }

    /// Index of the node with site id `id`.
    pub fn index_of(&self, id: u32) -> Option<usize> {
        self.nodes.iter().position(|n| n.site_id == Some(id))
    }
}

impl Drop for Cluster {
    /// Kill every node; remove the directory unless `SHOAL_KEEP` is set in
    /// the environment (then say where it is, for reading the logs).
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::env::var_os("SHOAL_KEEP").is_some() {
            let dir = self.keep_dir();
            eprintln!("SHOAL_KEEP: homes and logs kept in {}", dir.display());
        }
    }
}

/// A put request on the default database (sync commit).
pub fn put_req(key: &str, value: &str) -> Request {
    Request::Put {
        db: DB.into(),
        key: key.into(),
        value: value.into(),
        sync: None,
    }
}

/// A get request on the default database.
pub fn get_req(key: &str) -> Request {
    Request::Get {
        db: DB.into(),
        key: key.into(),
    }
}

/// The status of the node whose API is at `addr`.
pub async fn status_at(addr: &str) -> Result<Status, String> {
    let r = api::call(addr, &Request::Status, CALL_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    match r.status {
        Some(s) if r.ok => Ok(s),
        _ => Err(r.error.unwrap_or_else(|| "status failed".into())),
    }
}

/// Parse an LSN as the API prints it (`"[1][320]"`) into (file, offset), for
/// comparisons.
pub fn parse_lsn(s: &str) -> Option<(u32, u32)> {
    let s = s.trim();
    let rest = s.strip_prefix('[')?;
    let (file, rest) = rest.split_once("][")?;
    let off = rest.strip_suffix(']')?;
    Some((file.trim().parse().ok()?, off.trim().parse().ok()?))
}

/// What a batch of writes got back.
#[derive(Debug, Default)]
pub struct Writes {
    /// Answered ok and permanent (the ack policy was met).
    pub permanent: Vec<(String, String)>,
    /// Answered ok but not permanent.
    pub not_permanent: Vec<(String, String)>,
    /// Refused or unanswered: key, value, why.
    pub failed: Vec<(String, String, String)>,
    /// Answered ok with `flushed: true`.
    pub flushed: usize,
    /// Round-trip time of every answered put, in microseconds.
    pub latencies_us: Vec<u32>,
    /// From the first request to the last answer.
    pub elapsed: Duration,
}

impl Writes {
    /// Every write was answered ok and permanent.
    pub fn all_permanent(&self) -> bool {
        self.not_permanent.is_empty() && self.failed.is_empty()
    }
}

/// Shows "label done/total" on one line of stderr while a long step runs,
/// when stderr is a terminal.
pub struct Progress {
    done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// Start showing progress (nothing when `label` is `None` or stderr is
    /// not a terminal).
    pub fn start(label: Option<&str>, total: usize) -> Progress {
        use std::io::IsTerminal;
        use std::sync::atomic::Ordering;
        let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = match label {
            Some(l) if std::io::stderr().is_terminal() => {
                let l = l.to_string();
                let d = done.clone();
                Some(tokio::spawn(async move {
                    loop {
                        eprint!(
                            "\r  {l} {}/{}   ",
                            thousands(d.load(Ordering::Relaxed) as u64),
                            thousands(total as u64)
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }))
            }
            _ => None,
        };
        Progress { done, task }
    }

    /// One more item done.
    pub fn tick(&self) {
        self.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The shared counter (for tasks).
    pub fn counter(&self) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
        self.done.clone()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            eprint!("\r\x1b[2K");
        }
    }
}

/// `1234567` as "1,234,567".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Put every item on the node at `api` over `conns` concurrent
/// connections (`sync`: the commit's durability, `None` for the node's
/// default). Never fails as a whole: each item's outcome is in the result.
pub async fn write_many(
    api: &str,
    items: Vec<(String, String)>,
    conns: usize,
    sync: Option<String>,
    progress: Option<&str>,
) -> Writes {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let total = items.len();
    let items = Arc::new(items);
    let next = Arc::new(AtomicUsize::new(0));
    let prog = Progress::start(progress, total);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns.max(1).min(total.max(1)) {
        let items = items.clone();
        let next = next.clone();
        let done = prog.counter();
        let api = api.to_string();
        let sync = sync.clone();
        tasks.spawn(async move {
            let mut w = Writes::default();
            let mut client: Option<Client> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() {
                    break;
                }
                let (k, v) = &items[i];
                if client.is_none() {
                    match Client::connect(&api, CALL_TIMEOUT).await {
                        Ok(c) => client = Some(c),
                        Err(e) => {
                            w.failed.push((k.clone(), v.clone(), e.to_string()));
                            done.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                    }
                }
                let req = Request::Put {
                    db: DB.into(),
                    key: k.clone(),
                    value: v.clone(),
                    sync: sync.clone(),
                };
                let t = Instant::now();
                let r = client.as_mut().expect("connected").call(&req).await;
                let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
                match r {
                    Ok(r) if r.ok => {
                        w.latencies_us.push(us);
                        let c = r.commit.unwrap_or_default();
                        if c.flushed {
                            w.flushed += 1;
                        }
                        if c.permanent {
                            w.permanent.push((k.clone(), v.clone()));
                        } else {
                            w.not_permanent.push((k.clone(), v.clone()));
                        }
                    }
                    Ok(r) => w
                        .failed
                        .push((k.clone(), v.clone(), r.error.unwrap_or_default())),
                    Err(e) => {
                        client = None;
                        w.failed.push((k.clone(), v.clone(), e.to_string()));
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            w
        });
    }
    let mut all = Writes::default();
    while let Some(r) = tasks.join_next().await {
        if let Ok(w) = r {
            all.permanent.extend(w.permanent);
            all.not_permanent.extend(w.not_permanent);
            all.failed.extend(w.failed);
            all.flushed += w.flushed;
            all.latencies_us.extend(w.latencies_us);
        }
    }
    all.elapsed = started.elapsed();
    drop(prog);
    all
}

/// How many of `expected` read back with their value on the node at
/// `api` (reads over `conns` connections), and up to five examples of
/// the ones that did not.
pub async fn count_present(
    api: &str,
    expected: std::sync::Arc<Vec<(String, String)>>,
    conns: usize,
    progress: Option<&str>,
) -> (usize, Vec<String>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let next = Arc::new(AtomicUsize::new(0));
    let prog = Progress::start(progress, expected.len());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns.max(1) {
        let expected = expected.clone();
        let next = next.clone();
        let done = prog.counter();
        let api = api.to_string();
        tasks.spawn(async move {
            let mut present = 0usize;
            let mut bad = Vec::new();
            let mut client: Option<Client> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= expected.len() {
                    break;
                }
                let (k, v) = &expected[i];
                if client.is_none() {
                    client = Client::connect(&api, CALL_TIMEOUT).await.ok();
                }
                let got = match client.as_mut() {
                    Some(c) => c.call(&get_req(k)).await,
                    None => {
                        bad.push(format!("{k}: cannot connect to {api}"));
                        done.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                };
                match got {
                    Ok(r) if r.ok && r.value.as_deref() == Some(v.as_str()) => present += 1,
                    Ok(r) if r.ok => bad.push(format!("{k}: expected {v:?}, read {:?}", r.value)),
                    Ok(r) => bad.push(format!("{k}: {}", r.error.unwrap_or_default())),
                    Err(e) => {
                        client = None;
                        bad.push(format!("{k}: {e}"));
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (present, bad)
        });
    }
    let mut present = 0;
    let mut bad = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok((p, b)) = r {
            present += p;
            bad.extend(b);
        }
    }
    bad.truncate(5);
    (present, bad)
}

/// Try a put of `key` on every candidate at once, again and again, until
/// one answers ok and permanent with a commit of its own (the new master
/// accepting writes; a client forwarding the write does not count) or
/// `timeout` passes. Returns the index that took it, when its answer
/// arrived, and the answer.
pub async fn first_write(
    cluster: &Cluster,
    candidates: &[usize],
    key: &str,
    value: &str,
    timeout: Duration,
) -> Result<(usize, Instant, Response), String> {
    let mut tasks = tokio::task::JoinSet::new();
    for &i in candidates {
        let api = cluster.nodes[i].api.clone();
        let req = put_req(key, value);
        tasks.spawn(async move {
            let mut client: Option<Client> = None;
            loop {
                if client.is_none() {
                    client = Client::connect(&api, Duration::from_millis(500)).await.ok();
                }
                if let Some(c) = client.as_mut() {
                    match c.call(&req).await {
                        // A client that forwards writes (W1) answers too
                        // once a master exists; only the master's own
                        // answer names the master.
                        Ok(r)
                            if r.ok
                                && r.commit
                                    .as_ref()
                                    .is_some_and(|c| c.permanent && !c.forwarded) =>
                        {
                            return (i, Instant::now(), r);
                        }
                        Ok(_) => {}
                        Err(_) => client = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    }
    let r = tokio::time::timeout(timeout, tasks.join_next()).await;
    tasks.abort_all();
    match r {
        Ok(Some(Ok(x))) => Ok(x),
        Ok(_) => Err("the write probes stopped".into()),
        Err(_) => Err(format!("no site accepted a write within {timeout:?}")),
    }
}

/// Wait until the nodes `idxs` agree: exactly one master among them, the
/// others synchronised clients, and the same last LSN and digest
/// everywhere. Returns their statuses (in `idxs` order).
pub async fn converge(
    cluster: &mut Cluster,
    idxs: &[usize],
    timeout: Duration,
) -> Result<Vec<Status>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut sts = Vec::new();
        let mut why = String::new();
        for &i in idxs {
            match api::call(
                &cluster.nodes[i].api,
                &Request::Status,
                Duration::from_secs(2),
            )
            .await
            {
                Ok(Response {
                    status: Some(s), ..
                }) => {
                    cluster.nodes[i].site_id = Some(s.id);
                    sts.push(s)
                }
                Ok(r) => {
                    why = format!(
                        "site {}: {}",
                        cluster.nodes[i].name,
                        r.error.unwrap_or_default()
                    )
                }
                Err(e) => why = format!("site {}: {e}", cluster.nodes[i].name),
            }
        }
        if why.is_empty() {
            let masters = sts.iter().filter(|s| s.role == "master").count();
            if masters != 1 {
                why = format!("{masters} masters");
            } else if let Some((i, s)) = sts
                .iter()
                .enumerate()
                .find(|(_, s)| s.role != "master" && (s.role != "client" || s.synchronizing))
            {
                why = format!(
                    "site {} is {} (synchronizing: {})",
                    cluster.nodes[idxs[i]].name, s.role, s.synchronizing
                );
            } else if sts.iter().any(|s| s.last_lsn != sts[0].last_lsn) {
                why = format!(
                    "last LSNs differ: {}",
                    sts.iter()
                        .zip(idxs)
                        .map(|(s, &i)| format!("{} {}", cluster.nodes[i].name, s.last_lsn))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            } else if sts.iter().any(|s| s.digest != sts[0].digest) {
                why = format!(
                    "digests differ: {}",
                    sts.iter()
                        .zip(idxs)
                        .map(|(s, &i)| format!("{} {}", cluster.nodes[i].name, s.digest))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            } else {
                return Ok(sts);
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the sites did not converge within {timeout:?}: {why}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait until every node of `idxs` reports a live, unblocked connection to
/// every other node of `idxs`. On timeout, says who misses whom.
pub async fn wait_connected(
    cluster: &mut Cluster,
    idxs: &[usize],
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut missing = Vec::new();
        for &i in idxs {
            let st = match status_at(&cluster.nodes[i].api).await {
                Ok(s) => s,
                Err(e) => {
                    missing.push(format!("{}: {e}", cluster.nodes[i].name));
                    continue;
                }
            };
            cluster.nodes[i].site_id = Some(st.id);
            let lacks: Vec<String> = idxs
                .iter()
                .filter(|&&j| j != i)
                .filter(|&&j| {
                    let id = cluster.nodes[j].site_id;
                    !st.sites
                        .iter()
                        .any(|x| Some(x.id) == id && x.connected && !x.blocked)
                })
                .map(|&j| cluster.nodes[j].name.clone())
                .collect();
            if !lacks.is_empty() {
                missing.push(format!(
                    "{} is not connected to {}",
                    cluster.nodes[i].name,
                    lacks.join(" ")
                ));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("after {timeout:?}: {}", missing.join("; ")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `q` quantile (0..=1) of sorted values.
pub fn quantile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A `listen` connection to one node's API (W2): it is the node's channel
/// dispatch while it lives, answers every request with a fixed text and
/// keeps every message it receives. Dropping it (or [`Listener::stop`])
/// closes the connection, and the node has no dispatch again.
pub struct Listener {
    task: tokio::task::JoinHandle<()>,
    got: std::sync::Arc<std::sync::Mutex<Vec<api::ChannelMessage>>>,
}

impl Listener {
    /// Subscribe on the node at `api`; requests are answered `reply`.
    pub async fn start(api_addr: &str, reply: &str) -> Result<Listener, String> {
        let mut c = Client::subscribe(api_addr, CALL_TIMEOUT).await?;
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (log, reply) = (got.clone(), reply.to_string());
        let task = tokio::spawn(async move {
            while let Ok(line) = c.read().await {
                let Some(m) = line.message else { continue };
                let id = m.id;
                if let Ok(mut l) = log.lock() {
                    l.push(m);
                }
                if let Some(id) = id {
                    let part = reply.clone();
                    if c.send(&Request::Respond { id, part }).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Listener { task, got })
    }

    /// The messages received so far.
    pub fn messages(&self) -> Vec<api::ChannelMessage> {
        self.got.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Close the connection.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A channel request (W2) on the node at `api` to `to` ("master" or a site
/// id), retried while the target is unreachable, has no dispatch yet, or
/// the master is changing hands, for at most `within`. Returns the
/// response part or the last error.
pub async fn channel_request(
    api_addr: &str,
    to: &str,
    parts: &[&str],
    within: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + within;
    let req = Request::ChannelRequest {
        to: to.into(),
        parts: parts.iter().map(|p| p.to_string()).collect(),
        timeout_ms: Some(1000),
    };
    loop {
        let r = api::call(api_addr, &req, CALL_TIMEOUT)
            .await
            .map_err(|e| e.to_string());
        let e = match r {
            Ok(r) if r.ok => return Ok(r.response.unwrap_or_default()),
            Ok(r) => r.error.unwrap_or_default(),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse() {
        assert_eq!(parse_lsn("[1][320]"), Some((1, 320)));
        assert_eq!(parse_lsn("[12][0]"), Some((12, 0)));
        assert_eq!(parse_lsn("1/320"), None);
    }

    #[test]
    fn letters() {
        assert_eq!(letter(0), "A");
        assert_eq!(letter(4), "E");
        assert_eq!(letter(26), "N26");
    }

    #[test]
    fn ports_are_distinct() {
        let p = free_ports(10).unwrap();
        let mut q = p.clone();
        q.sort();
        q.dedup();
        assert_eq!(q.len(), 10);
    }
}
