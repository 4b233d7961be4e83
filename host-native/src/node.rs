//! `shoal node`: one site on this machine — file storage, TCP links, the
//! core's async `Node` driver on tokio, and the client API. Everything here
//! moves bytes and time; the replication decisions are the core's.

use crate::api::{self, CommitInfo, Request, Response, SiteStatus, Status};
use crate::settings::{parse_durability, Settings};
use crate::spin::Spin;
use crate::storage::FileStorage;
use crate::transport::{TcpTransport, TransportChannels, TransportConfig, TransportEvent};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use shoal_core::config::Durability;
use shoal_core::log::Op;
use shoal_core::node::{Node, NodeTransport, Timer};
use shoal_core::site::{CommitError, CommitOutcome, Event, ReadError, Role, Site};
use shoal_core::traits::{Clock, SendError, Transport};
use shoal_core::wire::{Envelope, Flags, MessageKind};
use shoal_core::{CommitToken, Generation, Instant, Lsn, SiteId};
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

pub use crate::channel::{Channel, DispatchFn, MsgError, ReplyChannel, RequestError};
pub use shoal_core::site::ChannelTarget;

/// The host's monotonic clock: µs since the process started.
#[derive(Clone, Copy)]
pub struct SysClock(pub std::time::Instant);

impl Clock for SysClock {
    fn now(&self) -> Instant {
        Instant(self.0.elapsed().as_micros() as u64)
    }
}

/// Sleeps on tokio's timer, in the same time base as [`SysClock`].
pub struct TokioTimer(pub tokio::time::Instant);

impl Timer for TokioTimer {
    fn sleep_until(&self, at: Instant) -> impl Future<Output = ()> {
        tokio::time::sleep_until(self.0 + Duration::from_micros(at.0))
    }
}

/// Frames per message type.
struct KindCounters([AtomicU64; MessageKind::COUNT]);

impl KindCounters {
    fn new() -> Self {
        KindCounters(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    fn count(&self, head: Option<FrameHead>) {
        if let Some(k) = head.and_then(|h| h.kind) {
            self.0[k as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    fn report(&self) -> Vec<(String, u64)> {
        MessageKind::ALL
            .iter()
            .zip(self.0.iter())
            .map(|(k, n)| (k.name().to_string(), n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// What the host reads of a frame without decoding the whole message: the
/// envelope's flags and the message type (None: a type this build does
/// not know).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHead {
    /// The envelope's flags.
    pub flags: Flags,
    /// The message type.
    pub kind: Option<MessageKind>,
}

/// Read a frame's head; None when its envelope does not decode.
pub fn frame_head(frame: &[u8]) -> Option<FrameHead> {
    let (env, rest) = postcard::take_from_bytes::<Envelope>(frame.get(2..)?).ok()?;
    let kind = postcard::take_from_bytes::<u32>(rest)
        .ok()
        .and_then(|(k, _)| MessageKind::ALL.get(k as usize).copied());
    Some(FrameHead {
        flags: env.flags,
        kind,
    })
}

/// The TCP transport behind a gate that can cut links to chosen peers (the
/// demo's partitions) and counts frames by type.
#[derive(Clone)]
pub struct Gate {
    tcp: TcpTransport,
    blocked: Arc<Mutex<BTreeSet<SiteId>>>,
    sent: Arc<KindCounters>,
    received: Arc<KindCounters>,
    /// Polls for a moment after a record that must be acked left.
    spin: Arc<Spin>,
}

impl Gate {
    fn is_blocked(&self, s: SiteId) -> bool {
        self.blocked.lock().map(|b| b.contains(&s)).unwrap_or(false)
    }
}

impl Gate {
    fn send_frame(&mut self, to: SiteId, frame: &[u8], urgent: bool) -> Result<(), SendError> {
        if self.is_blocked(to) {
            return Err(SendError::Disconnected);
        }
        // Read once for the counters and the spinner.
        let head = frame_head(frame);
        self.sent.count(head);
        let sent = if urgent {
            self.tcp.try_send_now(to, frame)
        } else {
            self.tcp.try_send(to, frame)
        };
        if let (Ok(()), Some(h)) = (&sent, head) {
            self.spin.frame_sent(h);
        }
        sent
    }
}

impl Transport for Gate {
    fn send(&mut self, to: SiteId, frame: &[u8]) -> Result<(), SendError> {
        self.send_frame(to, frame, false)
    }

    fn send_urgent(&mut self, to: SiteId, frame: &[u8]) -> Result<(), SendError> {
        self.send_frame(to, frame, true)
    }
}

impl NodeTransport for Gate {
    fn send_to_address(&mut self, address: &str, frame: &[u8]) -> Result<(), SendError> {
        self.sent.count(frame_head(frame));
        self.tcp.try_send_to_address(address, frame)
    }
}

/// The node type `shoal node` runs.
pub type SiteNode = Node<FileStorage, Gate, SysClock, CriticalSectionRawMutex>;

/// A running site.
pub struct Running {
    /// The driver.
    pub node: Arc<SiteNode>,
    gate: Gate,
    durability: Durability,
    /// Who receives channel messages (W2).
    dispatch: Arc<crate::channel::Dispatch>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Start a site from its settings: open its home, bind its links, create,
/// join or rejoin the group, and serve the API.
pub async fn start(s: Settings) -> Result<Running, String> {
    let origin = std::time::Instant::now();
    let clock = SysClock(origin);
    let storage = FileStorage::open(&s.home).map_err(|e| e.to_string())?;
    // The node fsyncs through this handle beside its driver and without
    // its lock, so commits and replication go on during the fsync.
    let syncer = storage.sync_handle();
    let site = Site::open(s.config.clone(), &s.advertise, storage, clock.now())
        .map_err(|e| format!("cannot open the site in {}: {e}", s.home.display()))?;
    let member = site.id().0 != 0 && !site.members().is_empty();
    let members: Vec<(SiteId, String)> = site
        .members()
        .iter()
        .map(|m| (m.id, m.address.clone()))
        .collect();
    let mut tcfg = TransportConfig::new(&s.group, &s.listen, site.id(), &s.config);
    tcfg.advertise = Some(s.advertise.clone());
    tcfg.group_key = s.group_key.clone();
    let (tcp, channels) = TcpTransport::bind(tcfg).await.map_err(|e| e.to_string())?;
    for (id, address) in &members {
        if *id != site.id() {
            tcp.set_peer(*id, address);
        }
    }
    let gate = Gate {
        tcp: tcp.clone(),
        blocked: Arc::default(),
        sent: Arc::new(KindCounters::new()),
        received: Arc::new(KindCounters::new()),
        spin: Spin::new(s.spin),
    };
    let limits = shoal_core::node::NodeLimits {
        events: 256,
        waiters: 256,
    };
    let node = Arc::new(
        SiteNode::with_limits(site, gate.clone(), clock, limits)
            // Each fsync runs on tokio's blocking pool while the driver
            // goes on (heartbeats, frames, commits without sync).
            .with_syncer(move || {
                let syncer = syncer.clone();
                async move {
                    tokio::task::spawn_blocking(move || syncer.sync().is_ok())
                        .await
                        .unwrap_or(false)
                }
            }),
    );
    // Frames go straight from the connection's task into the node's queue.
    {
        let (node, gate) = (node.clone(), gate.clone());
        let reported = std::sync::atomic::AtomicBool::new(false);
        tcp.set_inbound_sink(Box::new(move |r| {
            if gate.is_blocked(r.from) {
                return;
            }
            gate.received.count(frame_head(&r.frame));
            if node.deliver(r.frame).is_err() && !reported.swap(true, Ordering::Relaxed) {
                warn!("incoming queue full: frames dropped (they will be re-requested)");
            }
        }));
    }
    let timer = TokioTimer(tokio::time::Instant::from_std(origin));
    if !s.peers.is_empty() {
        let peers: Vec<&str> = s.peers.iter().map(String::as_str).collect();
        node.set_peers(&peers).await;
        info!(peers = ?s.peers, "asks these clients for the log before the master");
    }
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(gate.spin.clone().run()));
    let n = node.clone();
    tasks.push(tokio::spawn(async move { n.run(&timer).await }));
    tasks.push(tokio::spawn(feed(node.clone(), gate.clone(), channels)));
    tasks.push(tokio::spawn(follow(node.clone(), tcp.clone())));
    let dispatch = Arc::new(crate::channel::Dispatch::default());
    tasks.push(tokio::spawn(crate::channel::dispatch_loop(
        node.clone(),
        dispatch.clone(),
    )));

    if member {
        if s.create {
            warn!(
                "{} already holds a group member; restarting it (ignoring --create)",
                s.home.display()
            );
        }
        info!(home = %s.home.display(), "restarting as a member of the group");
        node.rep_start_client().await;
    } else if s.create {
        node.create_group()
            .await
            .map_err(|e| format!("cannot create the group: {e}"))?;
        info!(address = %s.advertise, "created the group; this site is master");
    } else if !s.join.is_empty() {
        let mut joined = None;
        'outer: for _round in 0..30 {
            for helper in &s.join {
                match tokio::time::timeout(s.config.timeouts.election * 3, node.join(helper)).await
                {
                    Ok(Ok(id)) => {
                        joined = Some(id);
                        break 'outer;
                    }
                    Ok(Err(e)) => warn!(helper = %helper, "join refused: {e:?}"),
                    Err(_) => warn!(helper = %helper, "no answer to the join request yet"),
                }
            }
        }
        let id = joined.ok_or(
            "could not join the group: no helper answered (check the --join addresses, and \
             that this site has the group's key: the same --group-key-file as the others)",
        )?;
        tcp.set_site(id);
        info!(site = id.0, "joined the group");
    } else {
        return Err(format!(
            "{} holds no group member: pass --create to start a group or --join HOST:PORT to join one",
            s.home.display()
        ));
    }
    let running = Running {
        node,
        gate,
        durability: s.durability,
        dispatch,
        tasks,
    };
    Ok(running)
}

impl Running {
    /// Serve the client API on `address` until the process ends.
    pub async fn serve_api(&self, address: &str) -> Result<tokio::task::JoinHandle<()>, String> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|e| format!("cannot listen for the API on {address}: {e}"))?;
        let node = self.node.clone();
        let gate = self.gate.clone();
        let durability = self.durability;
        let dispatch = self.dispatch.clone();
        Ok(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (node, gate, dispatch) = (node.clone(), gate.clone(), dispatch.clone());
                tokio::spawn(async move {
                    let _ = serve_client(stream, node, gate, durability, dispatch).await;
                });
            }
        }))
    }

    /// A message channel to one site or to the master (W2). A channel to
    /// [`ChannelTarget::Master`] follows the master as it changes.
    pub fn channel(&self, target: ChannelTarget) -> Channel {
        Channel::new(self.node.clone(), target)
    }

    /// Install the dispatch that receives this site's channel messages
    /// (W2): `f(reply channel, parts, needs_response)`. It replaces a
    /// callback installed before, and takes precedence over `shoal listen`
    /// connections.
    pub async fn set_dispatch(
        &self,
        f: impl Fn(ReplyChannel, Vec<Vec<u8>>, bool) + Send + Sync + 'static,
    ) {
        self.dispatch
            .set_callback(&self.node, Some(Arc::new(f)))
            .await;
    }

    /// Remove the dispatch: requests sent here are answered NoDispatch.
    pub async fn clear_dispatch(&self) {
        self.dispatch.set_callback(&self.node, None).await;
    }

    /// Stop the driver and close the links.
    pub async fn shutdown(self) {
        self.node.stop();
        self.gate.tcp.shutdown().await;
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Transport to node: link changes (unless the link is cut) and frames.
async fn feed(node: Arc<SiteNode>, gate: Gate, mut ch: TransportChannels) {
    let mut dropped_reported = false;
    loop {
        tokio::select! {
            Some(ev) = ch.events.recv() => {
                let _ = match ev {
                    TransportEvent::Up(s) if gate.is_blocked(s) => Ok(()),
                    TransportEvent::Up(s) => node.connection(s, true),
                    TransportEvent::Down(s) => node.connection(s, false),
                    TransportEvent::ConnectFailed(s) => node.connect_failed(s),
                    TransportEvent::InboundDropped => {
                        if !dropped_reported {
                            warn!("incoming frames dropped: the site is not keeping up");
                            dropped_reported = true;
                        }
                        Ok(())
                    }
                };
            }
            Some(r) = ch.inbound.recv() => {
                if gate.is_blocked(r.from) {
                    continue;
                }
                gate.received.count(frame_head(&r.frame));
                if node.deliver(r.frame).is_err() && !dropped_reported {
                    warn!("incoming queue full: frames dropped (they will be re-requested)");
                    dropped_reported = true;
                }
            }
            else => return,
        }
    }
}

/// Node to host: log every event, and keep the transport's peers in step
/// with the membership.
async fn follow(node: Arc<SiteNode>, tcp: TcpTransport) {
    loop {
        let event = node.next_event().await;
        match &event {
            Event::ConnectEstablished(s) => info!(site = s.0, "connected"),
            Event::ConnectBroken(s) => info!(site = s.0, "connection broken"),
            Event::ConnectTryFailed(_) => {}
            Event::Master => info!("this site is now master"),
            Event::Client => info!("this site is now a client"),
            Event::Elected => info!("won the election"),
            Event::NewMaster(m) => info!(master = m.0, "new master"),
            Event::StartupDone => info!("caught up with the master"),
            Event::PermFailed(lsn) => warn!(%lsn, "commit did not get the acks its policy asks for"),
            Event::Rollback(r) => warn!(from = %r.from, commits = r.commits.len(), "rolled back commits the new master does not have"),
            Event::DupMaster => warn!("another master found; stepping down"),
            Event::MasterFailure => warn!("the master stopped answering; electing"),
            Event::ElectionFailed => info!("election produced no master; will retry"),
            Event::JoinFailure => warn!("no log overlap with the master and internal initialisation is off (--no-autoinit) or impossible (the master's database is above max_init_bytes): this site cannot catch up; its data is left as it was"),
            Event::InitDone => info!("initialised from the master's database and caught up"),
            Event::WouldRollback => warn!("synchronising would roll back commits and autorollback is off"),
            e => info!(event = ?e),
        }
        let (me, members) = node
            .with_site(|s| {
                let m: Vec<_> = s
                    .members()
                    .iter()
                    .map(|m| (m.id, m.address.clone()))
                    .collect();
                (s.id(), m)
            })
            .await;
        if me.0 != 0 && tcp.site() != me {
            tcp.set_site(me);
        }
        for (id, address) in members {
            if id != me {
                tcp.set_peer(id, &address);
            }
        }
        if let Event::SiteRemoved(s) = event {
            tcp.remove_peer(s);
        }
    }
}

async fn serve_client(
    stream: TcpStream,
    node: Arc<SiteNode>,
    gate: Gate,
    durability: Durability,
    dispatch: Arc<crate::channel::Dispatch>,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    loop {
        let mut line = String::new();
        let n = (&mut r)
            .take(api::MAX_LINE as u64)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            // The connection becomes the node's channel dispatch (W2).
            Ok(Request::Listen) => return crate::channel::listen(r, w, node, dispatch).await,
            Ok(req) => handle(&node, &gate, durability, req).await,
            Err(e) => Response::error(format!("bad request: {e}")),
        };
        let mut out = serde_json::to_string(&resp).unwrap_or_else(|_| "{\"ok\":false}".into());
        out.push('\n');
        w.write_all(out.as_bytes()).await?;
    }
}

fn commit_error(e: CommitError) -> String {
    match e {
        // A master is known: say how to reach it.
        CommitError::NotMaster(Some(_)) => format!(
            "{e} (send writes to the master's API, or run every node with --forward-writes)"
        ),
        e => e.to_string(),
    }
}

fn read_error(e: ReadError) -> String {
    match e {
        ReadError::Lockout => {
            "the site is synchronising with the master (NOWAIT): retry later".into()
        }
        ReadError::LeaseExpired => {
            "this master's lease has expired: it cannot promise the value is current".into()
        }
        ReadError::HandleDead => "the handle saw rolled-back data: reopen it".into(),
        ReadError::NotReplicated => e.to_string(),
    }
}

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A request's durability: the one it names, or the node's default.
fn durability_of(sync: Option<&str>, default: Durability) -> Result<Durability, String> {
    sync.map_or(Ok(default), parse_durability)
}

async fn handle(
    node: &Arc<SiteNode>,
    gate: &Gate,
    durability: Durability,
    req: Request,
) -> Response {
    match req {
        Request::Msg { to, parts } => crate::channel::api_msg(node, &to, &parts).await,
        Request::ChannelRequest {
            to,
            parts,
            timeout_ms,
        } => crate::channel::api_request(node, &to, &parts, timeout_ms).await,
        Request::Listen | Request::Respond { .. } | Request::Refuse { .. } => {
            Response::error("respond and refuse belong on a connection that sent listen")
        }
        Request::Put {
            db,
            key,
            value,
            sync,
        } => {
            let d = match durability_of(sync.as_deref(), durability) {
                Ok(d) => d,
                Err(e) => return Response::error(e),
            };
            let op = Op::Put {
                db: &db,
                key: key.as_bytes(),
                value: value.as_bytes(),
            };
            answer_commit(node.write(op, d)).await
        }
        Request::Del { db, key } => {
            let op = Op::Delete {
                db: &db,
                key: key.as_bytes(),
            };
            answer_commit(node.write(op, durability)).await
        }
        Request::Get { db, key } => {
            match tokio::time::timeout(CALL_TIMEOUT, node.read(&db, key.as_bytes())).await {
                Ok(Ok(v)) => Response {
                    ok: true,
                    value: v.map(|b| String::from_utf8_lossy(&b).into_owned()),
                    ..Default::default()
                },
                Ok(Err(e)) => Response::error(read_error(e)),
                Err(_) => Response::error("timed out waiting for the site to finish synchronising"),
            }
        }
        Request::WaitApplied {
            file,
            offset,
            generation,
            timeout_ms,
        } => {
            let token = CommitToken {
                lsn: Lsn::new(file, offset),
                generation: Generation(generation),
            };
            match node
                .txn_applied(token, Duration::from_millis(timeout_ms))
                .await
            {
                Ok(()) => Response::ok(),
                Err(e) => Response::error(format!("{e:?}")),
            }
        }
        Request::Status => Response {
            ok: true,
            status: Some(status(node, gate, true).await),
            ..Default::default()
        },
        Request::Progress => Response {
            ok: true,
            status: Some(status(node, gate, false).await),
            ..Default::default()
        },
        Request::Sync => {
            node.rep_sync().await;
            Response::ok()
        }
        Request::Elect => {
            node.rep_elect().await;
            Response::ok()
        }
        Request::Transfer { site } => match node.transfer_master(SiteId(site)).await {
            Ok(()) => Response::ok(),
            Err(e) => Response::error(commit_error(e)),
        },
        Request::Remove { site } => {
            match tokio::time::timeout(CALL_TIMEOUT, node.remove_site(SiteId(site))).await {
                Ok(Ok(())) => Response::ok(),
                Ok(Err(e)) => Response::error(commit_error(e)),
                Err(_) => Response::error("timed out"),
            }
        }
        Request::Load {
            db,
            writers,
            count,
            first,
            key_prefix,
            value_bytes,
            sync,
        } => {
            let d = match durability_of(sync.as_deref(), durability) {
                Ok(d) => d,
                Err(e) => return Response::error(e),
            };
            if writers == 0 || writers > api::MAX_LOAD_WRITERS {
                return Response::error(format!(
                    "load: writers must be 1 to {}",
                    api::MAX_LOAD_WRITERS
                ));
            }
            if count == 0 || count > api::MAX_LOAD_COUNT {
                return Response::error(format!(
                    "load: count must be 1 to {}",
                    api::MAX_LOAD_COUNT
                ));
            }
            if value_bytes > api::MAX_LOAD_VALUE || key_prefix.len() > 256 {
                return Response::error(format!(
                    "load: values are at most {} bytes and key prefixes 256",
                    api::MAX_LOAD_VALUE
                ));
            }
            let spec = LoadSpec {
                db,
                writers,
                count,
                first,
                key_prefix,
                value_bytes,
                durability: d,
            };
            Response {
                ok: true,
                load: Some(load(node, spec).await),
                ..Default::default()
            }
        }
        Request::Link { site, block } => {
            let s = SiteId(site);
            if let Ok(mut b) = gate.blocked.lock() {
                if block {
                    b.insert(s);
                } else {
                    b.remove(&s);
                }
            }
            // The site sees the cut as a broken connection, and the heal as
            // a new one when the TCP link is up.
            let up = !block && gate.tcp.is_connected(s);
            if block || up {
                let _ = node.connection(s, up);
            }
            info!(site, block, "link changed by request");
            Response::ok()
        }
    }
}

/// A `load` request, checked.
struct LoadSpec {
    db: String,
    writers: u32,
    count: u64,
    first: u64,
    key_prefix: String,
    value_bytes: u32,
    durability: Durability,
}

/// Run a `load` request's writers on this node's driver, as an embedding
/// application would, and measure them.
async fn load(node: &SiteNode, spec: LoadSpec) -> api::LoadReport {
    use std::sync::atomic::AtomicU64;
    let next = AtomicU64::new(0);
    let started = std::time::Instant::now();
    let value = vec![b'v'; spec.value_bytes as usize];
    let one = |_: u32| async {
        let mut lat = Vec::new();
        let (mut failed, mut not_perm, mut error) = (0u64, 0u64, None::<String>);
        let mut key = String::with_capacity(spec.key_prefix.len() + 15);
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= spec.count {
                break;
            }
            key.clear();
            key.push_str(&spec.key_prefix);
            // Into the reused buffer: the harness should not allocate per
            // commit what an application would not.
            let _ = std::fmt::Write::write_fmt(&mut key, format_args!("{:015}", spec.first + i));
            let ops = [Op::Put {
                db: &spec.db,
                key: key.as_bytes(),
                value: &value,
            }];
            let t = std::time::Instant::now();
            // No timer per commit, as an application would not set one: a
            // commit is always answered, at its ack timeout at the latest.
            match node.commit(&ops, spec.durability).await {
                Ok(o) => {
                    lat.push(t.elapsed().as_micros() as u64);
                    not_perm += u64::from(!o.permanent);
                }
                Err(e) => {
                    failed += 1;
                    error.get_or_insert_with(|| commit_error(e));
                }
            }
        }
        (lat, failed, not_perm, error)
    };
    let results = futures::future::join_all((0..spec.writers).map(one)).await;
    let elapsed_us = started.elapsed().as_micros() as u64;
    let mut r = api::LoadReport {
        elapsed_us,
        ..Default::default()
    };
    let mut lat = Vec::with_capacity(spec.count as usize);
    for (l, failed, not_perm, error) in results {
        r.commits += l.len() as u64;
        lat.extend(l);
        r.failed += failed;
        r.not_permanent += not_perm;
        if r.error.is_none() {
            r.error = error;
        }
    }
    lat.sort_unstable();
    let q = |f: f64| -> u64 {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() - 1) as f64 * f).round() as usize]
        }
    };
    r.p50_us = q(0.5);
    r.p99_us = q(0.99);
    r.max_us = lat.last().copied().unwrap_or(0);
    r
}

/// Wait for a put or delete (a commit on the master, a forwarded write on
/// a client, W1) and answer with its outcome.
async fn answer_commit(
    done: impl std::future::Future<Output = Result<CommitOutcome, CommitError>>,
) -> Response {
    match tokio::time::timeout(CALL_TIMEOUT, done).await {
        Ok(Ok(o)) => Response {
            ok: true,
            commit: Some(CommitInfo {
                lsn: o.token.lsn.to_string(),
                file: o.token.lsn.file,
                offset: o.token.lsn.offset,
                generation: o.token.generation.0,
                permanent: o.permanent,
                acks: o.acks,
                needed: o.needed,
                flushed: o.flushed,
                forwarded: o.forwarded,
            }),
            ..Default::default()
        },
        Ok(Err(e)) => Response::error(commit_error(e)),
        Err(_) => Response::error("timed out waiting for the commit"),
    }
}

/// The node's status; the store digest (a pass over the whole store, with
/// the site locked) only when `digest` is set.
async fn status(node: &SiteNode, gate: &Gate, digest: bool) -> Status {
    let tstats = gate.tcp.stats();
    let blocked = gate.blocked.lock().map(|b| b.clone()).unwrap_or_default();
    let mut st = node
        .with_site(|s| {
            let last = s.last_lsn();
            let stats = s.stats();
            let counters = vec![
                ("frames_in", stats.frames_in),
                ("frames_out", stats.frames_out),
                ("dropped_malformed", stats.dropped_malformed),
                ("dropped_stale", stats.dropped_stale),
                ("duplicates", stats.duplicates),
                ("records_applied", stats.records_applied),
                ("log_requests", stats.log_requests),
                ("requests_served", stats.requests_served),
                ("requests_refused", stats.requests_refused),
                ("unfit_records", stats.unfit_records),
                ("peer_served", stats.peer_served),
                ("forwards_sent", stats.forwards_sent),
                ("forwards_served", stats.forwards_served),
                ("records_served", stats.records_served),
                ("commits", stats.commits),
                ("perm_failed", stats.perm_failed),
                ("flushes", stats.flushes),
                ("rolled_back", stats.rolled_back),
                ("elections", stats.elections),
                ("step_downs", stats.step_downs),
                ("segments_archived", stats.segments_archived),
                ("inits_served", stats.inits_served),
                ("pages_sent", stats.pages_sent),
                ("inits_installed", stats.inits_installed),
                ("inits_done", stats.inits_done),
                ("channel_sent", stats.channel_sent),
                ("channel_received", stats.channel_received),
                ("channel_failed", stats.channel_failed),
                ("channel_refused", stats.channel_refused),
                ("channel_held", stats.channel_held),
            ];
            Status {
                id: s.id().0,
                address: s.address().to_string(),
                role: match s.role() {
                    Role::Master => "master",
                    Role::Client => "client",
                    Role::Idle => "idle",
                }
                .into(),
                master: s.master().map(|m| m.0),
                generation: s.generation().0,
                egen: s.egen().0,
                last_lsn: last.to_string(),
                flushed_lsn: s.flushed_lsn().to_string(),
                synchronizing: s.is_synchronizing(),
                nsites: s
                    .config()
                    .nsites
                    .unwrap_or(s.members().iter().filter(|m| !m.is_view()).count() as u32),
                keys: s.store().len() as u64,
                digest: if digest {
                    format!("{:08x}", s.store().digest())
                } else {
                    String::new()
                },
                view: s.is_view(),
                view_databases: s.view_databases().to_vec(),
                sites: s
                    .members()
                    .iter()
                    .map(|m| SiteStatus {
                        id: m.id.0,
                        address: m.address.clone(),
                        connected: m.connected,
                        electable: m.is_electable(),
                        view: m.is_view(),
                        acked_lsn: m.acked.to_string(),
                        lag_bytes: if m.acked.file == last.file {
                            last.offset.saturating_sub(m.acked.offset) as u64
                        } else {
                            0
                        },
                        bytes_sent: 0,
                        frames_sent: 0,
                        bytes_received: 0,
                        frames_received: 0,
                        blocked: false,
                    })
                    .collect(),
                counters: counters
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
                received_by_type: Vec::new(),
                sent_by_type: Vec::new(),
                authenticated: gate.tcp.authenticated(),
            }
        })
        .await;
    for site in st.sites.iter_mut() {
        site.blocked = blocked.contains(&SiteId(site.id));
        if let Some(p) = tstats.peers.iter().find(|p| p.site.0 == site.id) {
            site.bytes_sent = p.bytes_sent;
            site.frames_sent = p.frames_sent;
            site.bytes_received = p.bytes_received;
            site.frames_received = p.frames_received;
        }
    }
    st.received_by_type = gate.received.report();
    st.sent_by_type = gate.sent.report();
    st
}

/// Run `shoal node` until SIGINT or SIGTERM.
pub async fn run(s: Settings) -> Result<(), String> {
    let api = s.api.clone();
    let home = s.home.clone();
    let running = start(s).await?;
    let _api_task = match &api {
        Some(a) => Some(running.serve_api(a).await?),
        None => None,
    };
    info!(home = %home.display(), api = api.as_deref().unwrap_or("-"), "shoal node running; SIGINT or SIGTERM stops it");
    wait_for_signal().await;
    info!("shutting down");
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
