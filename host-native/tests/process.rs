//! Process-level tests: real `shoal node` processes on loopback ports.
//!
//! - SIGKILL the master of a 3-site group while it takes writes: a new
//!   master is elected and no QUORUM-acknowledged write is lost.
//! - Bad command lines and configurations exit non-zero with a clear
//!   message.
//! - A writing node is SIGKILLed at random moments, 200+ times: after each
//!   restart the node starts (its log is valid) and every commit answered
//!   `flushed: true` is there.
//! - Writes on clients are forwarded to the master (W1).
//! - A client back after the group archived its log is initialised from
//!   the master's snapshot (S6).
//! - Message channels over TCP (W2): `shoal msg`, `shoal request` and
//!   `listen` connections; the channel to the master follows a hand-over.
//! - A site with another group key, or none, cannot join a group whose
//!   sites hold a key, and the logs say why (B4).

use shoal_native::api::Client;
use shoal_native::procs::{self, Cluster, Start};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
const WAIT: Duration = Duration::from_secs(30);

/// The demo's node settings: fast heartbeats, elections and reconnects.
fn fast_args() -> Vec<String> {
    shoal_native::demo::node_args()
}

/// A small xorshift generator (seed printed for reproduction).
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("SHOAL_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            })
            | 1;
        eprintln!("random seed {seed} (SHOAL_TEST_SEED={seed} repeats it)");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Writers that put unique keys on `api` until told to stop or the node
/// stops answering; the keys whose answers met `keep` are collected.
struct Writers {
    stop: Arc<AtomicBool>,
    kept: Arc<Mutex<Vec<(String, String)>>>,
    answered: Arc<AtomicUsize>,
    tasks: tokio::task::JoinSet<()>,
}

impl Writers {
    fn start(
        api: &str,
        n: usize,
        prefix: &str,
        keep: fn(&shoal_native::api::CommitInfo) -> bool,
    ) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let kept = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..n {
            let (stop, kept, answered) = (stop.clone(), kept.clone(), answered.clone());
            let api = api.to_string();
            let prefix = format!("{prefix}-w{w}");
            tasks.spawn(async move {
                let Ok(mut c) = Client::connect(&api, Duration::from_secs(5)).await else {
                    return;
                };
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (k, v) = (format!("{prefix}-{i}"), format!("v-{prefix}-{i}"));
                    i += 1;
                    match c.call(&procs::put_req(&k, &v)).await {
                        Ok(r) if r.ok => {
                            if r.commit.as_ref().is_some_and(keep) {
                                kept.lock().unwrap().push((k, v));
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => return,
                    }
                }
            });
        }
        Writers {
            stop,
            kept,
            answered,
            tasks,
        }
    }

    async fn finish(mut self) -> Vec<(String, String)> {
        self.stop.store(true, Ordering::Relaxed);
        while self.tasks.join_next().await.is_some() {}
        std::mem::take(&mut *self.kept.lock().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_sigkilled_new_master_elected_no_quorum_write_lost() {
    master_sigkilled(&[]).await;
}

/// The same with no-sync commits (R4): clients acknowledge them once
/// written to their operating system, which SIGKILL does not undo, so no
/// commit answered permanent is lost either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_sigkilled_no_permanent_no_sync_write_lost() {
    master_sigkilled(&["--sync", "no-sync"]).await;
}

/// The same with every node on two runtime threads that never poll
/// (`--worker-threads 2 --spin-us 0`; the defaults are one thread that
/// polls for a moment after a record or an ack leaves): elections,
/// catch-up and acks run the same, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_sigkilled_with_two_threads_and_no_polling_no_write_lost() {
    master_sigkilled(&[
        "--sync",
        "no-sync",
        "--worker-threads",
        "2",
        "--spin-us",
        "0",
    ])
    .await;
}

async fn master_sigkilled(extra: &[&str]) {
    let mut args = fast_args();
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut c = Cluster::new(BIN, 3, args).unwrap();
    c.start_group(WAIT).await.unwrap();
    let master = 0;
    let writers = Writers::start(&c.nodes[master].api, 4, "before", |ci| ci.permanent);
    let t = Instant::now();
    while writers.answered.load(Ordering::Relaxed) < 300 {
        assert!(
            t.elapsed() < WAIT,
            "the master took fewer than 300 writes in {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Kill it while the writers are still writing.
    let t0 = Instant::now();
    c.kill(master);
    let mut acked = writers.finish().await;
    let live = [1, 2];
    let (newm, at, _) = procs::first_write(&c, &live, "after-failover", "x", WAIT)
        .await
        .expect("a new master takes a write");
    eprintln!(
        "{} QUORUM-acknowledged writes before the kill; new master {} took a write {:.1} ms after the kill",
        acked.len(),
        c.nodes[newm].name,
        at.duration_since(t0).as_secs_f64() * 1000.0
    );
    acked.push(("after-failover".into(), "x".into()));
    // Writes go on on the new master.
    let w = procs::write_many(
        &c.nodes[newm].api,
        (0..200)
            .map(|i| (format!("after-{i}"), format!("v{i}")))
            .collect(),
        4,
        None,
        None,
    )
    .await;
    assert!(
        w.all_permanent(),
        "writes on the new master: {:?}",
        w.failed.first()
    );
    acked.extend(w.permanent);
    let sts = procs::converge(&mut c, &live, WAIT).await.unwrap();
    assert_eq!(sts.iter().filter(|s| s.role == "master").count(), 1);
    let acked = Arc::new(acked);
    for &i in &live {
        let (present, bad) = procs::count_present(&c.nodes[i].api, acked.clone(), 4, None).await;
        assert_eq!(
            present,
            acked.len(),
            "site {} lost acknowledged writes: {bad:?}",
            c.nodes[i].name
        );
    }
    // The old master comes back as a client with everything.
    c.start(master, Start::Restart).unwrap();
    let sts = procs::converge(&mut c, &[0, 1, 2], WAIT).await.unwrap();
    assert_eq!(sts[0].role, "client");
    let (present, bad) = procs::count_present(&c.nodes[0].api, acked.clone(), 4, None).await;
    assert_eq!(
        present,
        acked.len(),
        "the old master lacks acknowledged writes: {bad:?}"
    );
}

/// W1: with `--forward-writes` on every node, puts and deletes sent to a
/// client node's API are committed by the master, and a read on that
/// client right after the answer sees them; a transaction is never
/// forwarded. A group without the flag refuses writes on clients with a
/// message naming the master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_clients_are_forwarded_to_the_master() {
    let args = fast_args();
    assert!(args.iter().any(|a| a == "--forward-writes"));
    let mut c = Cluster::new(BIN, 3, args).unwrap();
    c.start_group(WAIT).await.unwrap();
    for client in [1, 2] {
        let mut api = c.client(client).await.unwrap();
        for i in 0..50 {
            let (k, v) = (format!("fw-{client}-{i}"), format!("v{i}"));
            let r = api.call(&procs::put_req(&k, &v)).await.unwrap();
            assert!(r.ok, "put {k} on a client: {:?}", r.error);
            assert!(
                r.commit
                    .as_ref()
                    .is_some_and(|ci| ci.permanent && ci.forwarded),
                "{k}: {:?}",
                r.commit
            );
            let g = api.call(&procs::get_req(&k)).await.unwrap();
            assert_eq!(
                g.value.as_deref(),
                Some(v.as_str()),
                "{k} not readable on the client that wrote it"
            );
        }
        let r = api
            .call(&shoal_native::api::Request::Del {
                db: procs::DB.into(),
                key: format!("fw-{client}-0"),
            })
            .await
            .unwrap();
        assert!(r.ok, "delete on a client: {:?}", r.error);
    }
    let st = procs::status_at(&c.nodes[0].api).await.unwrap();
    assert_eq!(st.role, "master");
    assert!(!st.authenticated, "no group key: no authenticated links");
    let served = st
        .counters
        .iter()
        .find(|(n, _)| n == "forwards_served")
        .map(|x| x.1);
    assert_eq!(served, Some(102), "the master's count of forwarded writes");
    let sts = procs::converge(&mut c, &[0, 1, 2], WAIT).await.unwrap();
    assert_eq!(sts.iter().filter(|s| s.role == "master").count(), 1);
    let g = c.call(0, &procs::get_req("fw-2-49")).await.unwrap();
    assert_eq!(g.value.as_deref(), Some("v49"));
    let g = c.call(0, &procs::get_req("fw-1-0")).await.unwrap();
    assert_eq!(g.value, None, "the forwarded delete");
    drop(c);

    // Without the flag a client refuses, naming the master.
    let plain: Vec<String> = fast_args()
        .into_iter()
        .filter(|a| a != "--forward-writes")
        .collect();
    let mut c = Cluster::new(BIN, 2, plain).unwrap();
    c.start_group(WAIT).await.unwrap();
    let r = c.call(1, &procs::put_req("k", "v")).await.unwrap();
    assert!(!r.ok);
    let e = r.error.unwrap_or_default();
    assert!(
        e.contains("not the master") && e.contains("--forward-writes"),
        "{e}"
    );
}

/// S6 over real processes: a client is SIGKILLed, the group writes on with
/// small segments and archives the log it stopped at, and the restarted
/// client, with no overlap left, is initialised from the master's snapshot
/// in pages over TCP and converges with every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_back_after_archiving_is_initialised_from_the_masters_snapshot() {
    let mut args = fast_args();
    for a in [
        "--segment-size",
        "1200000",
        "--log-retention-segments",
        "0",
        "--checkpoint-delay-ms",
        "100",
    ] {
        args.push(a.into());
    }
    let mut c = Cluster::new(BIN, 3, args).unwrap();
    c.start_group(WAIT).await.unwrap();
    c.call(0, &procs::put_req("early", "1")).await.unwrap();
    procs::converge(&mut c, &[0, 1, 2], WAIT).await.unwrap();
    c.kill(2);
    let load = shoal_native::api::Request::Load {
        db: procs::DB.into(),
        writers: 8,
        count: 30_000,
        first: 0,
        key_prefix: "k".into(),
        value_bytes: 100,
        sync: Some("no-sync".into()),
    };
    let mut api = c.client(0).await.unwrap();
    api.set_timeout(Duration::from_secs(120));
    let r = api.call(&load).await.unwrap();
    let l = r.load.expect("a load report");
    assert_eq!((l.commits, l.failed), (30_000, 0), "{:?}", r.error);
    let counter = |st: &shoal_native::api::Status, name: &str| {
        st.counters
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |x| x.1)
    };
    // A checkpoint archives the segments behind it.
    let t = Instant::now();
    loop {
        let st = procs::status_at(&c.nodes[0].api).await.unwrap();
        if counter(&st, "segments_archived") > 0 {
            break;
        }
        assert!(
            t.elapsed() < WAIT,
            "the master archived nothing: {:?}",
            st.counters
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.start(2, Start::Restart).unwrap();
    let sts = procs::converge(&mut c, &[0, 1, 2], WAIT).await.unwrap();
    assert!(
        sts.iter().all(|s| s.keys == 30_001),
        "keys: {:?}",
        sts.iter().map(|s| s.keys).collect::<Vec<_>>()
    );
    let st = procs::status_at(&c.nodes[2].api).await.unwrap();
    assert_eq!(counter(&st, "inits_done"), 1, "{:?}", st.counters);
    assert!(counter(&st, "inits_installed") >= 1);
    let g = c.call(2, &procs::get_req("early")).await.unwrap();
    assert_eq!(g.value.as_deref(), Some("1"));
}

/// Run `shoal ARGS`, which must succeed: returns its stdout.
fn must_succeed(args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`shoal {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Wait until node `i`'s log has a line containing every one of `parts`.
async fn wait_log(c: &Cluster, i: usize, parts: &[&str]) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = std::fs::read_to_string(&c.nodes[i].log).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "site {}'s log has no line with {parts:?}; it ends:\n{}",
            c.nodes[i].name,
            c.log_tail(i, 20)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// B4 over real processes: A and B share a key made by `shoal keygen`; C
/// has another key and D none. Neither C nor D can join, A's log says why
/// for each, C's and D's logs say they were refused, and nothing of them
/// reaches the group. C with the group's key then joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_without_the_group_key_cannot_join_and_the_logs_say_why() {
    let mut c = Cluster::new(BIN, 4, fast_args()).unwrap();
    let key = c.dir().join("group.key");
    let other = c.dir().join("other.key");
    for k in [&key, &other] {
        let out = must_succeed(&["keygen", k.to_str().unwrap()]);
        assert!(out.contains("wrote a new group key"), "{out}");
    }
    let e = must_fail(&["keygen", key.to_str().unwrap()]);
    assert!(e.contains("exists already"), "{e}");
    let key_text = std::fs::read_to_string(&key).unwrap();
    let flag = |p: &std::path::Path| vec!["--group-key-file".to_string(), p.display().to_string()];
    c.nodes[0].extra = flag(&key);
    c.nodes[1].extra = flag(&key);
    c.nodes[2].extra = flag(&other);
    c.create(WAIT).await.unwrap();
    c.join(1, 0, WAIT).await.unwrap();

    // C: another key.
    c.start(2, Start::Join(0)).unwrap();
    let line = wait_log(
        &c,
        0,
        &[
            "refused 127.0.0.1:",
            &format!("address {})", c.nodes[2].listen),
            "it could not prove it holds group \"shoal-demo\"'s key; give every site the same --group-key-file",
        ],
    )
    .await;
    eprintln!("A: {line}");
    let line = wait_log(
        &c,
        2,
        &[
            &c.nodes[0].listen,
            "closed the connection instead of proving it holds group \"shoal-demo\"'s key",
        ],
    )
    .await;
    eprintln!("C: {line}");

    // D: no key at all.
    c.start(3, Start::Join(0)).unwrap();
    let line = wait_log(
        &c,
        0,
        &[
            &format!("address {})", c.nodes[3].listen),
            "it has no group key, and this site admits only sites that prove they hold group \"shoal-demo\"'s key",
        ],
    )
    .await;
    eprintln!("A: {line}");
    let line = wait_log(
        &c,
        3,
        &[
            &c.nodes[0].listen,
            "it has a group key and this site has none",
        ],
    )
    .await;
    eprintln!("D: {line}");

    // Neither got in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = c.status(0).await.unwrap();
    assert_eq!(st.role, "master");
    assert!(
        st.authenticated,
        "A's status says its links are authenticated"
    );
    assert_eq!(
        st.sites.len(),
        2,
        "only A and B are members: {:?}",
        st.sites
    );
    for i in [2, 3] {
        assert!(c.is_running(i), "{} gave up early", c.nodes[i].name);
        let log = std::fs::read_to_string(&c.nodes[i].log).unwrap();
        assert!(!log.contains("joined the group"), "{log}");
    }
    // The key is in no log.
    for i in 0..4 {
        let log = std::fs::read_to_string(&c.nodes[i].log).unwrap();
        assert!(
            !log.contains(key_text.trim_end()),
            "site {i}'s log shows the key"
        );
    }

    // C with the group's key joins.
    c.kill(2);
    c.nodes[2].extra = flag(&key);
    c.join(2, 0, WAIT).await.unwrap();
    c.put(0, "after-auth", "1").await.unwrap();
    let sts = procs::converge(&mut c, &[0, 1, 2], WAIT).await.unwrap();
    assert_eq!(sts.iter().filter(|s| s.role == "master").count(), 1);
}

/// Run `shoal ARGS`, which must fail: returns its stderr.
fn must_fail(args: &[&str]) -> String {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`shoal {}` was still running after 20 s; it should have refused to start",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !status.success(),
        "`shoal {}` succeeded; it should fail (stderr: {stderr})",
        args.join(" ")
    );
    assert!(
        !stderr.contains("panicked"),
        "`shoal {}` panicked: {stderr}",
        args.join(" ")
    );
    eprintln!("`shoal {}` -> {status}:\n{}", args.join(" "), stderr.trim());
    stderr
}

#[test]
fn bad_command_lines_and_configs_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let home = home.to_str().unwrap();
    let ports = procs::free_ports(2).unwrap();
    let listen = format!("127.0.0.1:{}", ports[0]);
    let api = format!("127.0.0.1:{}", ports[1]);

    let e = must_fail(&["node", "--listen", &listen, "--api", &api, "--create"]);
    assert!(e.contains("--home"), "the error should name --home: {e}");

    let e = must_fail(&[
        "node",
        "--home",
        home,
        "--listen",
        "not-an-address",
        "--api",
        &api,
        "--create",
    ]);
    assert!(
        e.contains("listen") && e.contains("not-an-address"),
        "the error should name --listen and the value: {e}"
    );

    let e = must_fail(&[
        "node", "--home", home, "--listen", &listen, "--api", &api, "--create", "--nsites", "3",
        "--nvotes", "5",
    ]);
    assert!(e.contains("nvotes"), "the error should name nvotes: {e}");

    let e = must_fail(&[
        "node",
        "--home",
        home,
        "--listen",
        &listen,
        "--api",
        &api,
        "--create",
        "--join",
        "127.0.0.1:1",
    ]);
    assert!(
        e.contains("--create") && e.contains("--join"),
        "the error should name --create and --join: {e}"
    );

    let e = must_fail(&[
        "node",
        "--home",
        home,
        "--listen",
        &listen,
        "--api",
        &api,
        "--create",
        "--ack",
        "sometimes",
    ]);
    assert!(
        e.contains("sometimes"),
        "the error should name the bad ack policy: {e}"
    );

    let e = must_fail(&[
        "node",
        "--home",
        home,
        "--listen",
        &listen,
        "--api",
        &api,
        "--create",
        "--heartbeat-send-ms",
        "500",
        "--heartbeat-monitor-ms",
        "100",
    ]);
    assert!(
        e.to_lowercase().contains("heartbeat"),
        "the error should name the heartbeat settings: {e}"
    );

    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "no_such_knob = 1\n").unwrap();
    let e = must_fail(&[
        "node",
        "--home",
        home,
        "--listen",
        &listen,
        "--api",
        &api,
        "--create",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(
        e.contains("no_such_knob"),
        "the error should name the unknown key: {e}"
    );

    // Group key files (B4): missing, too short.
    let e = must_fail(&[
        "node",
        "--home",
        home,
        "--listen",
        &listen,
        "--api",
        &api,
        "--create",
        "--group-key-file",
        "/nonexistent/group.key",
    ]);
    assert!(
        e.contains("--group-key-file: cannot read the group key file /nonexistent/group.key")
            && e.contains("shoal keygen"),
        "the error should name the file and how to make one: {e}"
    );
    let short = dir.path().join("short.key");
    std::fs::write(&short, "hunter2\n").unwrap();
    let e = must_fail(&[
        "node",
        "--home",
        home,
        "--listen",
        &listen,
        "--api",
        &api,
        "--create",
        "--group-key-file",
        short.to_str().unwrap(),
    ]);
    assert!(
        e.contains("holds 7 bytes; a key needs at least 16") && !e.contains("hunter2"),
        "the error should say the key is too short, without showing it: {e}"
    );

    let e = must_fail(&[
        "node",
        "--home",
        home,
        "--listen",
        &listen,
        "--api",
        &api,
        "--config",
        "/nonexistent/shoal.toml",
    ]);
    assert!(
        e.contains("/nonexistent/shoal.toml"),
        "the error should name the missing file: {e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writing_node_sigkilled_200_times_keeps_every_flushed_commit() {
    const KILLS: usize = 200;
    let mut rng = Rng::new();
    let mut args = fast_args();
    let at = args
        .iter()
        .position(|a| a == "--election-timeout-ms")
        .unwrap();
    args[at + 1] = "50".into();
    let mut c = Cluster::new(BIN, 1, args).unwrap();
    c.create(WAIT).await.unwrap();
    let mut flushed: Vec<(String, String)> = Vec::new();
    let mut last_round: Vec<(String, String)> = Vec::new();
    let mut kills = 0;
    let mut early = 0;
    let mut round = 0usize;
    let mut up_time = Duration::ZERO;
    let t = Instant::now();
    while kills < KILLS {
        if round > 0 {
            c.start(0, Start::Restart).unwrap();
            if rng.below(5) == 0 {
                // Kill it at a random moment while it starts and recovers.
                tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
                c.kill(0);
                kills += 1;
                early += 1;
                round += 1;
                continue;
            }
        }
        let tw = Instant::now();
        let st = c
            .wait_status(0, WAIT, "it is master again", |s| s.role == "master")
            .await
            .unwrap_or_else(|e| panic!("round {round}: the node did not come back: {e}"));
        up_time += tw.elapsed();
        assert!(
            st.keys as usize >= flushed.len(),
            "round {round}: {} keys, but {} commits were answered flushed",
            st.keys,
            flushed.len()
        );
        // Everything flushed in the last writing round, and a sample of the
        // rest, reads back.
        let mut check = last_round.clone();
        for _ in 0..20.min(flushed.len()) {
            check.push(flushed[rng.below(flushed.len() as u64) as usize].clone());
        }
        let check = Arc::new(check);
        let (present, bad) = procs::count_present(&c.nodes[0].api, check.clone(), 2, None).await;
        assert_eq!(
            present,
            check.len(),
            "round {round}: flushed commits missing: {bad:?}"
        );
        // Write for a random few ms, then SIGKILL in the middle of it.
        let writers = Writers::start(&c.nodes[0].api, 4, &format!("r{round}"), |ci| ci.flushed);
        tokio::time::sleep(Duration::from_millis(1 + rng.below(25))).await;
        c.kill(0);
        kills += 1;
        last_round = writers.finish().await;
        flushed.extend(last_round.iter().cloned());
        round += 1;
    }
    c.start(0, Start::Restart).unwrap();
    c.wait_status(0, WAIT, "it is master again", |s| s.role == "master")
        .await
        .unwrap();
    let all = Arc::new(flushed);
    let (present, bad) = procs::count_present(&c.nodes[0].api, all.clone(), 4, None).await;
    assert_eq!(
        present,
        all.len(),
        "flushed commits missing after {kills} kills: {bad:?}"
    );
    eprintln!(
        "{kills} SIGKILLs ({early} during start-up) in {:.1} s ({:.1} s waiting for restarts to be master); {} commits answered flushed, all present",
        t.elapsed().as_secs_f64(),
        up_time.as_secs_f64(),
        all.len()
    );
    assert!(
        all.len() > 100,
        "too few commits were written to mean anything: {}",
        all.len()
    );
}

/// W2 over real processes and TCP: without a listener a request to the
/// master gets "no dispatch"; with a `listen` connection on every node, a
/// client's request to the master is answered by the master's listener,
/// a fire-and-forget message arrives with its parts and sender, the
/// master's request to the master is answered by its own listener, a
/// second listener is refused, and after a hand-over the same target
/// reaches the new master. The CLI (`shoal msg`, `shoal request`) speaks
/// the same API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_channels_over_tcp() {
    use shoal_native::api::Request;
    let mut c = Cluster::new(BIN, 3, fast_args()).unwrap();
    c.start_group(WAIT).await.unwrap();
    let api = |i: usize| c.nodes[i].api.clone();
    let (a, b, cc) = (api(0), api(1), api(2));
    // No dispatch on the master: the request is refused at once.
    // (Right after the group formed a link may still be settling: ask
    // again while the error is another one.)
    let deadline = Instant::now() + WAIT;
    loop {
        let started = Instant::now();
        let r = procs::channel_request(&cc, "master", &["ping"], Duration::ZERO).await;
        let e = r.expect_err("no listener: refused");
        if e.contains("no message dispatch") {
            assert!(started.elapsed() < Duration::from_secs(1), "not a timeout");
            break;
        }
        assert!(Instant::now() < deadline, "{e}");
    }

    let listeners: Vec<procs::Listener> = {
        let mut v = Vec::new();
        for (i, name) in ["A", "B", "C"].iter().enumerate() {
            v.push(procs::Listener::start(&api(i), name).await.unwrap());
        }
        v
    };
    let second = procs::Listener::start(&a, "again").await;
    assert!(
        second
            .as_ref()
            .err()
            .is_some_and(|e| e.contains("already has a dispatch")),
        "a second listener is refused"
    );
    let answer = procs::channel_request(&cc, "master", &["who", "is master?"], WAIT)
        .await
        .unwrap();
    assert_eq!(answer, "A");
    let seen = listeners[0].messages();
    let m = seen.last().expect("A's listener got the request");
    assert_eq!(m.parts, ["who", "is master?"]);
    assert!(m.to_master && m.id.is_some());
    assert_eq!(Some(m.from), c.nodes[2].site_id);

    // The master asks the master: its own listener answers.
    let answer = procs::channel_request(&a, "master", &["self"], WAIT)
        .await
        .unwrap();
    assert_eq!(answer, "A");
    assert_eq!(
        listeners[0].messages().last().map(|m| m.from),
        c.nodes[0].site_id
    );

    // `shoal msg` to site B (by id), fire-and-forget, from C's API.
    let b_id = c.nodes[1].site_id.expect("B's id").to_string();
    let out = Command::new(BIN)
        .args(["msg", "--to", &b_id, "--api", &cc, "hello", "from C"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sent to site {b_id}")
    );
    let deadline = Instant::now() + WAIT;
    while !listeners[1]
        .messages()
        .iter()
        .any(|m| m.parts == ["hello", "from C"])
    {
        assert!(Instant::now() < deadline, "B never got the message");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = listeners[1]
        .messages()
        .into_iter()
        .find(|m| m.parts == ["hello", "from C"])
        .unwrap();
    assert!(!m.to_master && m.id.is_none());

    // `shoal request` prints the response.
    let out = Command::new(BIN)
        .args([
            "request",
            "--to",
            "master",
            "--timeout-ms",
            "3000",
            "--api",
            &b,
            "ping",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "A");
    // A bad target is refused with a clear message.
    let out = Command::new(BIN)
        .args(["request", "--to", "everyone", "--api", &b, "ping"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a channel target"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Hand mastership to B: the same target, "master", now reaches B.
    let r = c
        .call(
            0,
            &Request::Transfer {
                site: b_id.parse().unwrap(),
            },
        )
        .await
        .unwrap();
    assert!(r.ok, "{:?}", r.error);
    c.wait_status(2, WAIT, "C follows B", |s| {
        s.master.map(|m| m.to_string()) == Some(b_id.clone())
    })
    .await
    .unwrap();
    let answer = procs::channel_request(&cc, "master", &["who now?"], WAIT)
        .await
        .unwrap();
    assert_eq!(answer, "B", "the master channel followed the hand-over");
    let st = procs::status_at(&b).await.unwrap();
    let received = st
        .counters
        .iter()
        .find(|(n, _)| n == "channel_received")
        .map(|x| x.1);
    assert!(received.is_some_and(|n| n >= 2), "{:?}", st.counters);

    // `shoal listen --echo` on C answers with the request's own parts.
    listeners[2].stop();
    let c_id = c.nodes[2].site_id.expect("C's id").to_string();
    let deadline = Instant::now() + WAIT;
    while !procs::channel_request(&a, &c_id, &["anyone?"], Duration::ZERO)
        .await
        .is_err_and(|e| e.contains("no message dispatch"))
    {
        assert!(Instant::now() < deadline, "C kept its listener");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let child = Command::new(BIN)
        .args(["listen", "--echo", "--count", "1", "--api", &cc])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let answer = procs::channel_request(&a, &c_id, &["echo", "me"], WAIT)
        .await
        .unwrap();
    assert_eq!(answer, "echo me");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(r#""echo" "me""#) && printed.contains("[request]"),
        "{printed}"
    );

    // A listener that goes away leaves the node without a dispatch.
    listeners[1].stop();
    let deadline = Instant::now() + WAIT;
    loop {
        let e = procs::channel_request(&cc, "master", &["anyone?"], Duration::ZERO).await;
        match e {
            Err(e) if e.contains("no message dispatch") => break,
            _ => {
                assert!(Instant::now() < deadline, "B kept a dispatch: {e:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Output to a reader that went away (`shoal config | head -1`) is dropped:
/// the command ends normally instead of panicking on the broken pipe.
#[test]
fn a_closed_standard_output_is_no_reason_to_panic() {
    let mut child = Command::new(BIN)
        .arg("config")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before the command writes a line.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "status {:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// W2 (seed 002): the first channel requests right after a site joins,
/// each made once, without retries. The master holds back its traffic to
/// B while C joins, so B has not applied the record adding C when C's
/// first request reaches it (B used to drop it as from an unknown site,
/// and the request timed out in a healthy group); the master lets B's
/// traffic through a second later and the request is answered within its
/// timeout. Then B's first request to C is answered too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_channel_request_right_after_a_join_is_answered() {
    use shoal_native::api::Request;
    // A, B and D form the group (the master keeps a majority while it
    // holds back B's traffic); C joins later.
    let mut c = Cluster::new(BIN, 4, fast_args()).unwrap();
    c.create(WAIT).await.unwrap();
    c.join(1, 0, WAIT).await.unwrap();
    c.join(3, 0, WAIT).await.unwrap();
    let api = |c: &Cluster, i: usize| c.nodes[i].api.clone();
    let _b_listener = procs::Listener::start(&api(&c, 1), "B").await.unwrap();
    let b_id = c.nodes[1].site_id.expect("B's id").to_string();
    let once = |addr: String, to: String, what: &'static str| async move {
        let req = Request::ChannelRequest {
            to,
            parts: vec![what.to_string()],
            timeout_ms: Some(5_000),
        };
        match shoal_native::api::call(&addr, &req, Duration::from_secs(10)).await {
            Ok(r) if r.ok => Ok(r.response.unwrap_or_default()),
            Ok(r) => Err(r.error.unwrap_or_default()),
            Err(e) => Err(e.to_string()),
        }
    };
    // The master sends B nothing for now (B is not told).
    c.link_one(0, 1, true).await.unwrap();
    c.start(2, Start::Join(0)).unwrap();
    // As soon as C has its id and its link to the master is up (its host
    // reports connections): its link to B may still be forming.
    let a_id = c.nodes[0].site_id.expect("A's id");
    let st = c
        .wait_status(2, WAIT, "C has an id and a link to A", |s| {
            s.id != 0 && s.sites.iter().any(|x| x.id == a_id && x.connected)
        })
        .await
        .unwrap();
    let c_id = st.id.to_string();
    let b_status = c.status(1).await.unwrap();
    assert!(
        b_status.sites.iter().all(|s| s.id != st.id),
        "B does not know C yet: the race this test is about"
    );
    let heal = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.link_one(0, 1, false).await
    };
    let (first, healed) = tokio::join!(once(api(&c, 2), b_id, "from the new site"), heal);
    healed.unwrap();
    assert_eq!(first, Ok("B".to_string()), "C's first request to B");
    let _c_listener = procs::Listener::start(&api(&c, 2), "C").await.unwrap();
    let back = once(api(&c, 1), c_id, "to the new site").await;
    assert_eq!(back, Ok("C".to_string()), "B's first request to C");
}
