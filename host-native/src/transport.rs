//! [`TcpTransport`]: frames between sites over TCP, on tokio.
//!
//! # Connections
//!
//! Every site listens on its address. To send, a site dials the peer's
//! address and keeps that connection (a *link*) for its own frames only;
//! frames from the peer arrive on the connection the peer dialed. So each
//! pair of sites holds two TCP connections, one per direction, each with a
//! single writer: frames to a peer leave in the order they were queued,
//! and there is no duplicate-connection race to settle.
//!
//! The driver names peers with [`TcpTransport::set_peer`]; their links
//! reconnect after `connection_retry` whenever they break or fail to
//! connect. [`TcpTransport::try_send_to_address`] reaches a site known only
//! by address (a joiner, or the helper this site joins through) on a link
//! that lives as long as its connection.
//!
//! # Handshake and framing
//!
//! On a stream every frame is preceded by its length, a u32 LE, checked
//! with [`wire::stream_frame_len`] before anything is allocated: a peer
//! that announces more than `Limits::max_frame` is disconnected.
//!
//! The dialer's first frame is a [`Message::Handshake`] with its group name,
//! listening address, site id and, when it has a group key, a fresh random
//! nonce; the listener checks the protocol version (the frame's version
//! field) and the group, and refuses a mismatch with a `tracing` warning
//! that says why, closing the connection. Otherwise it answers with its own
//! handshake, which the dialer checks the same way.
//!
//! Without a group key on either side that is all. With one
//! ([`TransportConfig::group_key`], B4), each side then proves it holds the
//! key: the dialer sends a [`Message::HandshakeProof`], an HMAC-SHA256 over
//! both handshakes (see [`crate::auth`]); the listener checks it and only
//! then answers with its own proof, which the dialer checks. A site with a
//! key refuses one without (and the other way round), a wrong proof is
//! refused, and each refusal is logged with its reason and counted in
//! [`TransportStats::refused`]. No frame is delivered and no link is up
//! before the peer's proof checks out, and the whole handshake must end
//! within `handshake_timeout`.
//!
//! # Events and back-pressure
//!
//! Link changes reach the driver as [`TransportEvent`]s on a bounded
//! channel ([`TransportChannels::events`]); the driver turns them into
//! `Site::handle_connection` and `Site::handle_connect_failed` calls.
//! Received frames go through another bounded channel
//! ([`TransportChannels::inbound`]); when it is full a frame is dropped and
//! counted, and [`TransportEvent::InboundDropped`] starts each overflow
//! episode so the driver can raise INQUEUE_FULL. Sends never block: each
//! link has a queue bounded in frames and bytes, and a full queue is
//! [`SendError::Full`]. Frames queued on a link that goes down are dropped
//! (the protocol re-requests what it misses).
//!
//! # Batching and urgent frames
//!
//! A link's task writes whatever queued while it was busy in one write, so
//! under load many frames share a system call. A frame sent with
//! [`TcpTransport::try_send_now`] (the core's urgent frames: a lone
//! commit's record, an ack) is written to the socket by the caller when
//! nothing is queued before it, saving the hand-off to the link's task and
//! the wake-up of a thread; what the socket does not take at once is
//! queued ahead of any later frame, so the order is kept.
//!
//! Call [`TcpTransport::shutdown`] to close the listener and every
//! connection; the transport's tasks hold it alive until then.

use crate::auth::{self, GroupKey, Role};
use shoal_core::config::{caps, Limits};
use shoal_core::node::NodeTransport;
use shoal_core::traits::{SendError, Transport};
use shoal_core::wire::{self, DecodeError, Envelope, Flags, Handshake, Message, PROTOCOL_VERSION};
use shoal_core::{Config, ElectionGen, Generation, Lsn, SiteId};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify, Semaphore};

/// Largest HANDSHAKE or HANDSHAKE_PROOF frame read (the largest possible
/// is about 430 bytes: a 64-byte group name, a 255-byte address and a
/// 64-byte nonce).
pub const HANDSHAKE_FRAME_MAX: u32 = 1024;

/// Everything a [`TcpTransport`] needs to know.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// The group's name; a site of another group is refused.
    pub group: String,
    /// Address to listen on ("127.0.0.1:7000"; port 0 picks a free one).
    pub listen: String,
    /// Address sent in handshakes, which peers dial back; `None` sends the
    /// bound address (give one when listening on 0.0.0.0).
    pub advertise: Option<String>,
    /// This site's id (zero until it has one; see [`TcpTransport::set_site`]).
    pub site: SiteId,
    /// The key every site of the group holds (B4). With one, a peer must
    /// prove it holds the same key before any of its frames is delivered;
    /// the key itself is never sent. `None`: no proof is asked or given,
    /// and peers with a key are refused. It authenticates sites when they
    /// connect; it does not encrypt or sign the frames that follow.
    pub group_key: Option<GroupKey>,
    /// Frame limits (`max_frame`, `max_sites`).
    pub limits: Limits,
    /// Frames queued per peer before sends fail with `Full`.
    pub send_queue_frames: usize,
    /// Bytes queued per peer before sends fail with `Full` (one frame is
    /// always accepted into an empty queue).
    pub send_queue_bytes: usize,
    /// Received frames queued for the driver before more are dropped.
    pub inbound_frames: usize,
    /// Link events queued for the driver (links wait when it is full).
    pub event_queue: usize,
    /// Wait before redialing a peer whose connection broke or failed.
    pub connection_retry: Duration,
    /// Longest wait for a TCP connection to open.
    pub connect_timeout: Duration,
    /// Longest wait for the whole handshake (the peer's handshake and,
    /// with a group key, its proof).
    pub handshake_timeout: Duration,
    /// Most incoming connections open at once; more are refused.
    pub max_incoming: usize,
    /// Most links to addresses that are not named peers (joiners).
    pub max_address_links: usize,
}

impl TransportConfig {
    /// A configuration for site `site` of `group` listening on `listen`,
    /// with the limits and connection retry of the site's `config`.
    pub fn new(group: &str, listen: &str, site: SiteId, config: &Config) -> Self {
        TransportConfig {
            group: group.to_string(),
            listen: listen.to_string(),
            advertise: None,
            site,
            group_key: None,
            limits: config.limits,
            send_queue_frames: 4096,
            send_queue_bytes: 8 << 20,
            inbound_frames: 4096,
            event_queue: 256,
            connection_retry: config.timeouts.connection_retry,
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            max_incoming: 2 * caps::MAX_SITES,
            max_address_links: caps::MAX_SITES,
        }
    }
}

/// Why a transport could not start.
#[derive(Debug)]
pub enum TransportError {
    /// The configuration cannot work (the message says which setting).
    Config(String),
    /// The listening address could not be bound.
    Bind {
        /// The address.
        address: String,
        /// The operating system's error.
        source: io::Error,
    },
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Config(m) => write!(f, "transport configuration: {m}"),
            TransportError::Bind { address, source } => match source.kind() {
                io::ErrorKind::AddrInUse => write!(
                    f,
                    "cannot listen on {address}: the address is in use (is another node \
                     running there?); choose another --listen port"
                ),
                io::ErrorKind::PermissionDenied => write!(
                    f,
                    "cannot listen on {address}: permission denied; use a port above 1023"
                ),
                io::ErrorKind::AddrNotAvailable => write!(
                    f,
                    "cannot listen on {address}: no such local address; give --listen an \
                     address of this machine"
                ),
                _ => write!(f, "cannot listen on {address}: {source}"),
            },
        }
    }
}

impl std::error::Error for TransportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TransportError::Bind { source, .. } => Some(source),
            TransportError::Config(_) => None,
        }
    }
}

/// A change the driver must tell the site about.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TransportEvent {
    /// Frames can be sent to the site (CONNECT_ESTD):
    /// `Site::handle_connection(now, site, true)`.
    Up(SiteId),
    /// The connection to the site broke (CONNECT_BROKEN):
    /// `Site::handle_connection(now, site, false)`.
    Down(SiteId),
    /// A connection attempt to the site failed (CONNECT_TRY_FAILED):
    /// `Site::handle_connect_failed(now, site)`.
    ConnectFailed(SiteId),
    /// Received frames are being dropped because the inbound channel is
    /// full (once per episode): `Site::handle_inqueue_full(now)`.
    InboundDropped,
}

/// A frame received from a peer.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Received {
    /// The site id the sender gave in its handshake (zero for a site
    /// that has none yet). The frame's envelope says the same.
    pub from: SiteId,
    /// The frame, for `Site::handle_frame` / `Node::deliver`.
    pub frame: Vec<u8>,
}

/// A function that takes each received frame on the connection's own task
/// (see [`TcpTransport::set_inbound_sink`]). It must not block.
pub type InboundSink = Box<dyn Fn(Received) + Send + Sync>;

/// The driver's ends of a transport's channels.
#[derive(Debug)]
pub struct TransportChannels {
    /// Link changes, in order per peer.
    pub events: mpsc::Receiver<TransportEvent>,
    /// Received frames.
    pub inbound: mpsc::Receiver<Received>,
}

/// Traffic with one peer, for a status view.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct PeerStats {
    /// The peer (zero: sites not yet identified).
    pub site: SiteId,
    /// Its address, if it is a named peer.
    pub address: Option<String>,
    /// Whether frames can be sent to it now.
    pub connected: bool,
    /// Bytes written to it (frames and their length prefixes).
    pub bytes_sent: u64,
    /// Frames written to it.
    pub frames_sent: u64,
    /// Bytes received from it (frames and their length prefixes).
    pub bytes_received: u64,
    /// Frames received from it.
    pub frames_received: u64,
    /// Sends refused because its queue was full.
    pub send_full: u64,
}

/// Counters for the whole transport.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct TransportStats {
    /// Per peer, by site id.
    pub peers: Vec<PeerStats>,
    /// Received frames dropped because the inbound channel was full.
    pub inbound_dropped: u64,
    /// Connections refused (bad handshake, other group or version, too
    /// many connections) or closed for an oversized frame.
    pub refused: u64,
}

#[derive(Debug, Default)]
struct Counters {
    bytes_sent: AtomicU64,
    frames_sent: AtomicU64,
    bytes_received: AtomicU64,
    frames_received: AtomicU64,
    send_full: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LinkState {
    Connecting,
    Up,
    Down,
}

/// Bytes for a link's socket: length-prefixed frames, or the rest of one
/// whose start an urgent send already wrote.
#[derive(Debug)]
struct Chunk {
    bytes: Vec<u8>,
    /// Frames that begin in `bytes` (for the counters).
    frames: u64,
}

impl Chunk {
    /// One frame with its length prefix.
    fn frame(frame: &[u8]) -> Self {
        let mut bytes = Vec::with_capacity(4 + frame.len());
        bytes.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        bytes.extend_from_slice(frame);
        Chunk { bytes, frames: 1 }
    }
}

/// The write half of a link's connection while its task pumps it, shared
/// so an urgent send can write to the socket itself.
type Outlet = Arc<Mutex<Option<Arc<OwnedWriteHalf>>>>;

#[derive(Debug)]
struct Link {
    id: u64,
    tx: mpsc::Sender<Chunk>,
    /// Bytes queued or being written by the link's task: zero means the
    /// socket has everything sent so far.
    queued: Arc<AtomicUsize>,
    outlet: Outlet,
    state: LinkState,
    /// The named peer this link serves; `None` for an address-only link,
    /// which lives only as long as its connection.
    site: Option<SiteId>,
    /// Site id the peer gave in its handshake (zero before).
    peer_site: SiteId,
    /// The link's task must announce a change of `site`.
    rebind: Arc<Notify>,
    /// Redial now instead of at the end of `connection_retry`.
    wake: Arc<Notify>,
    close: watch::Sender<bool>,
    /// Announce `Down` for this site first: it was bound to a link that
    /// was up, at another address.
    down_first: Option<SiteId>,
}

#[derive(Debug, Default)]
struct State {
    peers: BTreeMap<SiteId, String>,
    links: HashMap<String, Link>,
    counters: BTreeMap<SiteId, Arc<Counters>>,
    next_link: u64,
}

impl State {
    fn counters(&mut self, site: SiteId, cap: usize) -> Arc<Counters> {
        let site = if self.counters.contains_key(&site) || self.counters.len() < cap {
            site
        } else {
            SiteId(0)
        };
        self.counters.entry(site).or_default().clone()
    }
}

/// Held by every task; [`TcpTransport::shutdown`] waits until all are gone.
struct TaskGuard(#[allow(dead_code)] mpsc::Sender<()>);

struct Inner {
    cfg: TransportConfig,
    local_addr: SocketAddr,
    advertise: String,
    site: AtomicU32,
    rt: tokio::runtime::Handle,
    state: Mutex<State>,
    events: mpsc::Sender<TransportEvent>,
    inbound: mpsc::Sender<Received>,
    /// Where received frames go instead of `inbound`, once set.
    sink: std::sync::OnceLock<InboundSink>,
    dropping: AtomicBool,
    inbound_dropped: AtomicU64,
    refused: AtomicU64,
    /// Nonces of this site's handshakes in progress: a peer that sends one
    /// back is reflecting this site's own handshake.
    nonces: Mutex<HashSet<[u8; auth::NONCE_BYTES]>>,
    shutdown: watch::Sender<bool>,
    tasks: Mutex<Option<mpsc::Sender<()>>>,
    tasks_done: tokio::sync::Mutex<mpsc::Receiver<()>>,
    incoming: Arc<Semaphore>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Completes when the watched flag is (or becomes) true, or its sender is
/// gone.
async fn flag(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|&v| v).await;
}

/// A site's TCP transport. Cheap to clone; every clone is the same
/// transport. See the module documentation.
#[derive(Clone)]
pub struct TcpTransport {
    inner: Arc<Inner>,
}

impl fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpTransport")
            .field("group", &self.inner.cfg.group)
            .field("address", &self.inner.advertise)
            .field("site", &self.site())
            .finish()
    }
}

impl TcpTransport {
    /// Listen on `cfg.listen` and start accepting connections. Must be
    /// called inside a tokio runtime, which the transport's tasks then use.
    pub async fn bind(
        cfg: TransportConfig,
    ) -> Result<(TcpTransport, TransportChannels), TransportError> {
        if cfg.group.len() > caps::MAX_GROUP_NAME {
            return Err(TransportError::Config(format!(
                "the group name is {} bytes; at most {} are allowed",
                cfg.group.len(),
                caps::MAX_GROUP_NAME
            )));
        }
        if cfg.send_queue_frames == 0 || cfg.inbound_frames == 0 || cfg.event_queue == 0 {
            return Err(TransportError::Config(
                "queue sizes must be at least 1".into(),
            ));
        }
        if cfg.connection_retry.is_zero() {
            return Err(TransportError::Config(
                "connection_retry must be above zero".into(),
            ));
        }
        let listener =
            TcpListener::bind(&cfg.listen)
                .await
                .map_err(|source| TransportError::Bind {
                    address: cfg.listen.clone(),
                    source,
                })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| TransportError::Bind {
                address: cfg.listen.clone(),
                source,
            })?;
        let advertise = cfg
            .advertise
            .clone()
            .unwrap_or_else(|| local_addr.to_string());
        if advertise.len() > caps::MAX_ADDRESS {
            return Err(TransportError::Config(format!(
                "the advertised address is {} bytes; at most {} are allowed",
                advertise.len(),
                caps::MAX_ADDRESS
            )));
        }
        let (events_tx, events) = mpsc::channel(cfg.event_queue);
        let (inbound_tx, inbound) = mpsc::channel(cfg.inbound_frames);
        let (tasks_tx, tasks_rx) = mpsc::channel(1);
        let inner = Arc::new(Inner {
            site: AtomicU32::new(cfg.site.0),
            incoming: Arc::new(Semaphore::new(cfg.max_incoming)),
            cfg,
            local_addr,
            advertise,
            rt: tokio::runtime::Handle::current(),
            state: Mutex::new(State::default()),
            events: events_tx,
            inbound: inbound_tx,
            sink: std::sync::OnceLock::new(),
            dropping: AtomicBool::new(false),
            inbound_dropped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            nonces: Mutex::new(HashSet::new()),
            shutdown: watch::Sender::new(false),
            tasks: Mutex::new(Some(tasks_tx)),
            tasks_done: tokio::sync::Mutex::new(tasks_rx),
        });
        tracing::info!(
            group = %inner.cfg.group,
            address = %inner.advertise,
            authenticated = inner.cfg.group_key.is_some(),
            "listening on {local_addr}"
        );
        let i = inner.clone();
        inner.spawn(move |g| accept_loop(i, listener, g));
        Ok((
            TcpTransport { inner },
            TransportChannels { events, inbound },
        ))
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The address this site gives peers in its handshake.
    pub fn address(&self) -> &str {
        &self.inner.advertise
    }

    /// This site's id, as sent in handshakes.
    pub fn site(&self) -> SiteId {
        SiteId(self.inner.site.load(Ordering::Relaxed))
    }

    /// Set this site's id (after it joined the group); later handshakes
    /// carry it. A link to the site itself is dropped.
    pub fn set_site(&self, site: SiteId) {
        self.inner.site.store(site.0, Ordering::Relaxed);
        if site.0 != 0 {
            self.remove_peer(site);
        }
    }

    /// Name a peer: keep a link to `address` for `site`, reconnecting after
    /// `connection_retry` whenever it breaks. Calling it again with a new
    /// address moves the site there. This site's own id is ignored.
    pub fn set_peer(&self, site: SiteId, address: &str) {
        if site.0 == 0 || site == self.site() {
            return;
        }
        let mut st = lock(&self.inner.state);
        let mut old_up = false;
        match st.peers.insert(site, address.to_string()) {
            Some(old) if old == address && st.links.contains_key(address) => return,
            Some(old) if old != address => {
                // The site moved: its old link closes without reporting;
                // the new one reports `Down` first unless it is up already.
                if let Some(l) = st.links.get_mut(&old) {
                    old_up = l.state == LinkState::Up;
                    l.site = None;
                    l.close.send_replace(true);
                }
            }
            _ => {}
        }
        let down_first = old_up.then_some(site);
        match st.links.get_mut(address) {
            Some(l) => {
                l.site = Some(site);
                if l.state != LinkState::Up && l.down_first.is_none() {
                    l.down_first = down_first;
                }
                l.rebind.notify_one();
            }
            None => {
                self.inner
                    .new_link(&mut st, address, Some(site), down_first);
            }
        }
    }

    /// Forget a peer: close its link (the driver hears `Down` if it was up).
    pub fn remove_peer(&self, site: SiteId) {
        let mut st = lock(&self.inner.state);
        if let Some(addr) = st.peers.remove(&site) {
            if let Some(l) = st.links.get_mut(&addr) {
                l.site = None;
                l.close.send_replace(true);
            }
        }
    }

    /// The address named for a peer.
    pub fn peer_address(&self, site: SiteId) -> Option<String> {
        lock(&self.inner.state).peers.get(&site).cloned()
    }

    /// Hand every frame received from now on to `sink`, on the receiving
    /// connection's task, instead of the `inbound` channel: one task switch
    /// less per frame for a driver whose own queue never blocks (the core's
    /// `Node::deliver`). Only the first call takes effect.
    pub fn set_inbound_sink(&self, sink: InboundSink) {
        let _ = self.inner.sink.set(sink);
    }

    /// Queue a frame for a named peer. Never blocks: `UnknownSite` if the
    /// site was never named, `Disconnected` if its link is not up, `Full`
    /// if its queue is.
    pub fn try_send(&self, to: SiteId, frame: &[u8]) -> Result<(), SendError> {
        self.send_to_site(to, frame, false)
    }

    /// [`TcpTransport::try_send`] for a frame the sender waits on: when
    /// nothing is queued on the link it is written to the socket now, on
    /// the caller's thread, rather than by the link's task. Never blocks:
    /// what the socket does not take at once is queued first in line.
    pub fn try_send_now(&self, to: SiteId, frame: &[u8]) -> Result<(), SendError> {
        self.send_to_site(to, frame, true)
    }

    fn send_to_site(&self, to: SiteId, frame: &[u8], now: bool) -> Result<(), SendError> {
        if !self.inner.frame_ok(frame) {
            return Err(SendError::Disconnected);
        }
        let mut chunk = Chunk::frame(frame);
        let mut st = lock(&self.inner.state);
        let addr = st.peers.get(&to).ok_or(SendError::UnknownSite(to))?;
        let link = st.links.get(addr).ok_or(SendError::Disconnected)?;
        if link.state != LinkState::Up {
            return Err(SendError::Disconnected);
        }
        // Every try_send holds the state lock and the link's task only
        // lowers `queued`: once it reads zero, nothing written after this
        // frame can overtake it.
        if now && link.queued.load(Ordering::Acquire) == 0 {
            let outlet = lock(&link.outlet).clone();
            if let Some(w) = outlet {
                // Nothing written on WouldBlock, or on a broken socket,
                // which the link's task will notice.
                let n = w.try_write(&chunk.bytes).unwrap_or_default();
                if n > 0 {
                    let cap = self.inner.counter_cap();
                    let c = st.counters(to, cap);
                    c.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                    c.frames_sent.fetch_add(1, Ordering::Relaxed);
                    if n == chunk.bytes.len() {
                        return Ok(());
                    }
                    chunk.bytes.drain(..n);
                    chunk.frames = 0;
                }
            }
        }
        let st = &mut st;
        let Some(link) = st.peers.get(&to).and_then(|a| st.links.get(a)) else {
            return Err(SendError::Disconnected);
        };
        let r = self.inner.enqueue(link, chunk);
        if r == Err(SendError::Full) {
            let cap = self.inner.counter_cap();
            st.counters(to, cap)
                .send_full
                .fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Queue a frame for the site at `address`, dialing it if no link goes
    /// there yet (an address-only link lives as long as its connection).
    /// `Disconnected` if the link to it is down or too many address-only
    /// links are open.
    pub fn try_send_to_address(&self, address: &str, frame: &[u8]) -> Result<(), SendError> {
        if !self.inner.frame_ok(frame) {
            return Err(SendError::Disconnected);
        }
        let frame = frame.to_vec();
        let mut st = lock(&self.inner.state);
        {
            if !st.links.contains_key(address) {
                let loose = st.links.values().filter(|l| l.site.is_none()).count();
                if loose >= self.inner.cfg.max_address_links {
                    tracing::warn!(
                        "not dialing {address}: {loose} links to addresses outside the \
                         group are open already"
                    );
                    return Err(SendError::Disconnected);
                }
                self.inner.new_link(&mut st, address, None, None);
            }
        }
        let link = &st.links[address];
        if link.state == LinkState::Down {
            return Err(SendError::Disconnected);
        }
        let site = link.site.unwrap_or(link.peer_site);
        let r = self.inner.enqueue(link, Chunk::frame(&frame));
        if r == Err(SendError::Full) {
            let cap = self.inner.counter_cap();
            st.counters(site, cap)
                .send_full
                .fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Whether frames can be sent to a named peer now.
    pub fn is_connected(&self, site: SiteId) -> bool {
        let st = lock(&self.inner.state);
        st.peers
            .get(&site)
            .and_then(|a| st.links.get(a))
            .is_some_and(|l| l.state == LinkState::Up)
    }

    /// Whether this transport holds a group key, so every link it opens
    /// or accepts proved the key on both sides (B4).
    pub fn authenticated(&self) -> bool {
        self.inner.cfg.group_key.is_some()
    }

    /// Traffic counters per peer, and the transport's own.
    pub fn stats(&self) -> TransportStats {
        let st = lock(&self.inner.state);
        let mut peers: BTreeMap<SiteId, PeerStats> = BTreeMap::new();
        for (site, addr) in &st.peers {
            peers.insert(
                *site,
                PeerStats {
                    site: *site,
                    address: Some(addr.clone()),
                    connected: st.links.get(addr).is_some_and(|l| l.state == LinkState::Up),
                    ..PeerStats::default()
                },
            );
        }
        for (site, c) in &st.counters {
            let p = peers.entry(*site).or_insert_with(|| PeerStats {
                site: *site,
                ..PeerStats::default()
            });
            p.bytes_sent = c.bytes_sent.load(Ordering::Relaxed);
            p.frames_sent = c.frames_sent.load(Ordering::Relaxed);
            p.bytes_received = c.bytes_received.load(Ordering::Relaxed);
            p.frames_received = c.frames_received.load(Ordering::Relaxed);
            p.send_full = c.send_full.load(Ordering::Relaxed);
        }
        TransportStats {
            peers: peers.into_values().collect(),
            inbound_dropped: self.inner.inbound_dropped.load(Ordering::Relaxed),
            refused: self.inner.refused.load(Ordering::Relaxed),
        }
    }

    /// Close the listener and every connection, and wait until the
    /// transport's tasks are gone. Sends fail afterwards.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        drop(lock(&self.inner.tasks).take());
        {
            let mut st = lock(&self.inner.state);
            for l in st.links.values_mut() {
                l.state = LinkState::Down;
            }
        }
        let mut done = self.inner.tasks_done.lock().await;
        while done.recv().await.is_some() {}
    }
}

impl Transport for TcpTransport {
    fn send(&mut self, to: SiteId, frame: &[u8]) -> Result<(), SendError> {
        self.try_send(to, frame)
    }

    fn send_urgent(&mut self, to: SiteId, frame: &[u8]) -> Result<(), SendError> {
        self.try_send_now(to, frame)
    }
}

impl NodeTransport for TcpTransport {
    fn send_to_address(&mut self, address: &str, frame: &[u8]) -> Result<(), SendError> {
        self.try_send_to_address(address, frame)
    }
}

impl Inner {
    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(TaskGuard) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(tx) = lock(&self.tasks).as_ref().cloned() else {
            return;
        };
        self.rt.spawn(f(TaskGuard(tx)));
    }

    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        flag(self.shutdown.subscribe())
    }

    fn counter_cap(&self) -> usize {
        2 * self.cfg.limits.max_sites as usize + 2
    }

    fn frame_ok(&self, frame: &[u8]) -> bool {
        let ok = frame.len() >= 2 && frame.len() <= self.cfg.limits.max_frame as usize;
        if !ok {
            tracing::warn!(
                "not sending a frame of {} bytes: frames are 2 to {} bytes",
                frame.len(),
                self.cfg.limits.max_frame
            );
        }
        ok
    }

    /// Queue bytes on a link, within its frame and byte bounds.
    fn enqueue(&self, link: &Link, chunk: Chunk) -> Result<(), SendError> {
        let len = chunk.bytes.len();
        let before = link.queued.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before + len > self.cfg.send_queue_bytes {
            link.queued.fetch_sub(len, Ordering::AcqRel);
            return Err(SendError::Full);
        }
        link.tx.try_send(chunk).map_err(|e| {
            link.queued.fetch_sub(len, Ordering::AcqRel);
            match e {
                mpsc::error::TrySendError::Full(_) => SendError::Full,
                mpsc::error::TrySendError::Closed(_) => SendError::Disconnected,
            }
        })
    }

    fn new_link(
        self: &Arc<Self>,
        st: &mut State,
        address: &str,
        site: Option<SiteId>,
        down_first: Option<SiteId>,
    ) {
        let (tx, rx) = mpsc::channel(self.cfg.send_queue_frames);
        let (close, close_rx) = watch::channel(false);
        let rebind = Arc::new(Notify::new());
        let wake = Arc::new(Notify::new());
        st.next_link += 1;
        let id = st.next_link;
        let queued = Arc::new(AtomicUsize::new(0));
        let outlet = Outlet::default();
        st.links.insert(
            address.to_string(),
            Link {
                id,
                tx,
                queued: queued.clone(),
                outlet: outlet.clone(),
                state: LinkState::Connecting,
                site,
                peer_site: SiteId(0),
                rebind: rebind.clone(),
                wake: wake.clone(),
                close,
                down_first,
            },
        );
        let task = LinkTask {
            inner: self.clone(),
            address: address.to_string(),
            id,
            rx,
            queued,
            outlet,
            close: close_rx,
            rebind,
            wake,
            announced: None,
        };
        self.spawn(move |g| task.run(g));
    }

    /// This site's handshake frame, with `nonce` (empty without a key).
    fn handshake_frame(&self, nonce: &[u8]) -> Vec<u8> {
        let site = SiteId(self.site.load(Ordering::Relaxed));
        let msg = Message::Handshake(Handshake {
            group: &self.cfg.group,
            address: &self.advertise,
            site,
            nonce,
        });
        self.control_frame(site, &msg)
    }

    /// A HANDSHAKE_PROOF frame carrying `mac`.
    fn proof_frame(&self, mac: &[u8]) -> Vec<u8> {
        let site = SiteId(self.site.load(Ordering::Relaxed));
        self.control_frame(site, &Message::HandshakeProof { mac })
    }

    fn control_frame(&self, site: SiteId, msg: &Message<'_>) -> Vec<u8> {
        let env = Envelope {
            from: site,
            generation: Generation(0),
            egen: ElectionGen(0),
            lsn: Lsn::ZERO,
            flags: Flags::NONE,
        };
        let mut out = Vec::new();
        // Group and address lengths were checked in `bind`; nonces and
        // MACs are within their bounds.
        let _ = wire::encode_frame(&env, msg, &mut out, &self.cfg.limits);
        out
    }

    /// The limits for reading handshake frames: a peer that has not
    /// proved anything gets at most [`HANDSHAKE_FRAME_MAX`] bytes
    /// allocated for it.
    fn handshake_limits(&self) -> Limits {
        let mut l = self.cfg.limits;
        l.max_frame = l.max_frame.min(HANDSHAKE_FRAME_MAX);
        l
    }

    /// A fresh nonce for one handshake, remembered while the guard lives;
    /// `None` without a group key.
    fn own_nonce(&self) -> Option<OwnNonce<'_>> {
        self.cfg.group_key.as_ref()?;
        let nonce = auth::nonce();
        lock(&self.nonces).insert(nonce);
        Some(OwnNonce { inner: self, nonce })
    }

    /// Check a peer's handshake; the error is the log line for a refusal.
    fn check_handshake(&self, frame: &[u8], peer: &str) -> Result<Hello, String> {
        let (_, msg) = match wire::decode_frame(frame, &self.cfg.limits) {
            Ok(x) => x,
            Err(DecodeError::BadVersion { got }) => {
                return Err(format!(
                    "refused {peer}: it speaks shoal protocol version {got}, this site speaks \
                     {PROTOCOL_VERSION}; run one shoal release on every site of the group"
                ))
            }
            Err(e) => {
                return Err(format!(
                    "refused {peer}: its handshake does not decode ({e}); is it a shoal site?"
                ))
            }
        };
        let Message::Handshake(h) = msg else {
            return Err(format!(
                "refused {peer}: its first frame is {:?}, not a handshake",
                msg.kind()
            ));
        };
        if h.group != self.cfg.group {
            return Err(format!(
                "refused {peer} (site {}, address {}): it belongs to group {:?}, this site to \
                 group {:?}; check the group name and the addresses given to both sites",
                h.site.0, h.address, h.group, self.cfg.group
            ));
        }
        if !h.nonce.is_empty() && h.nonce.len() < auth::MIN_NONCE_BYTES {
            return Err(format!(
                "refused {peer} (site {}, address {}): its handshake nonce is {} bytes, fewer \
                 than the {} a proof needs; is it a shoal site?",
                h.site.0,
                h.address,
                h.nonce.len(),
                auth::MIN_NONCE_BYTES
            ));
        }
        if <[u8; auth::NONCE_BYTES]>::try_from(h.nonce)
            .is_ok_and(|n| lock(&self.nonces).contains(&n))
        {
            return Err(format!(
                "refused {peer} (claims site {}, address {}): its handshake carries a nonce \
                 this site made for another connection, so it is replaying this site's own \
                 handshake; it is not a site of group {:?}",
                h.site.0, h.address, self.cfg.group
            ));
        }
        Ok(Hello {
            site: h.site,
            address: h.address.to_string(),
            nonce: h.nonce.to_vec(),
        })
    }

    /// With a group key on both sides, the key; `None` with none on either.
    /// A key on one side only is refused.
    fn keyed(&self, hello: &Hello, peer: &str) -> Result<Option<&GroupKey>, Refusal> {
        let g = &self.cfg.group;
        match (&self.cfg.group_key, hello.nonce.is_empty()) {
            (None, true) => Ok(None),
            (Some(key), false) => Ok(Some(key)),
            (Some(_), true) => Err(Refusal::Refused(format!(
                "refused {peer} (site {}, address {}): it has no group key, and this site \
                 admits only sites that prove they hold group {g:?}'s key; give every site the \
                 same --group-key-file",
                hello.site.0, hello.address
            ))),
            (None, false) => Err(Refusal::Refused(format!(
                "refused {peer} (site {}, address {}): it has a group key and this site has \
                 none; give every site of group {g:?} the same --group-key-file (or none at all)",
                hello.site.0, hello.address
            ))),
        }
    }

    /// Check the peer's HANDSHAKE_PROOF: `role`'s MAC over the handshakes
    /// `dialer` and `listener`.
    #[allow(clippy::too_many_arguments)]
    fn check_proof(
        &self,
        frame: &[u8],
        key: &GroupKey,
        role: Role,
        dialer: &[u8],
        listener: &[u8],
        peer: &str,
        hello: &Hello,
    ) -> Result<(), Refusal> {
        let g = &self.cfg.group;
        let who = format!("{peer} (site {}, address {})", hello.site.0, hello.address);
        let mac = match wire::decode_frame(frame, &self.cfg.limits) {
            Ok((_, Message::HandshakeProof { mac })) => mac,
            Ok((_, m)) => {
                return Err(Refusal::Refused(format!(
                    "refused {who}: it sent {} where its proof of group {g:?}'s key belongs; \
                     give every site the same --group-key-file",
                    m.kind().name()
                )))
            }
            Err(e) => {
                return Err(Refusal::Refused(format!(
                    "refused {who}: its proof of group {g:?}'s key does not decode ({e})"
                )))
            }
        };
        if !key.verify(role, dialer, listener, mac) {
            return Err(Refusal::Refused(format!(
                "refused {who}: it could not prove it holds group {g:?}'s key; give every site \
                 the same --group-key-file"
            )));
        }
        Ok(())
    }

    /// The listener's side of the handshake: read the dialer's handshake,
    /// answer it, and with a group key read and check the dialer's proof
    /// before sending this site's own.
    async fn accept_handshake(
        &self,
        reader: &mut BufReader<TcpStream>,
        peer: &str,
    ) -> Result<Hello, Refusal> {
        let limits = self.handshake_limits();
        let theirs = match read_frame(reader, &limits).await {
            Ok(f) => f,
            Err(ReadError::Bad(e)) => {
                return Err(Refusal::Refused(format!(
                    "refused {peer}: its first frame announces {e}; is it a shoal site?"
                )))
            }
            Err(e) => {
                return Err(Refusal::Quiet(format!(
                    "connection from {peer} ended before its handshake: {e}"
                )))
            }
        };
        let hello = self
            .check_handshake(&theirs, peer)
            .map_err(Refusal::Refused)?;
        let nonce = self.own_nonce();
        let mine = self.handshake_frame(nonce.as_ref().map_or(&[][..], |n| &n.nonce[..]));
        // Answered even when the keys do not match, so the dialer can say
        // why in its own log too.
        write_frame(reader.get_mut(), &mine).await.map_err(|e| {
            Refusal::Quiet(format!(
                "connection from {peer} broke during the handshake: {e}"
            ))
        })?;
        let Some(key) = self.keyed(&hello, peer)? else {
            return Ok(hello);
        };
        let proof = match read_frame(reader, &limits).await {
            Ok(f) => f,
            Err(ReadError::Bad(e)) => {
                return Err(Refusal::Refused(format!(
                    "refused {peer} (site {}, address {}): its proof frame announces {e}",
                    hello.site.0, hello.address
                )))
            }
            Err(e) => {
                return Err(Refusal::Quiet(format!(
                    "connection from {peer} (site {}, address {}) ended before it proved it \
                     holds the group key: {e}",
                    hello.site.0, hello.address
                )))
            }
        };
        self.check_proof(&proof, key, Role::Dialer, &theirs, &mine, peer, &hello)?;
        let answer = self.proof_frame(&key.proof(Role::Listener, &theirs, &mine));
        write_frame(reader.get_mut(), &answer).await.map_err(|e| {
            Refusal::Quiet(format!(
                "connection from {peer} broke during the handshake: {e}"
            ))
        })?;
        Ok(hello)
    }

    /// The dialer's side of the handshake on a new connection to
    /// `address`: send this site's handshake, check the listener's, and
    /// with a group key send this site's proof and check the listener's.
    async fn dial_handshake(
        &self,
        stream: &mut TcpStream,
        address: &str,
    ) -> Result<Hello, Refusal> {
        let limits = self.handshake_limits();
        let nonce = self.own_nonce();
        let mine = self.handshake_frame(nonce.as_ref().map_or(&[][..], |n| &n.nonce[..]));
        write_frame(stream, &mine)
            .await
            .map_err(|e| Refusal::Quiet(e.to_string()))?;
        let theirs = match read_frame(stream, &limits).await {
            Ok(f) => f,
            Err(ReadError::Closed) => {
                return Err(Refusal::Warn(format!(
                    "{address} closed the connection during the handshake: it refused this site \
                     (another group, protocol version or group key? see its log)"
                )))
            }
            Err(e) => return Err(Refusal::Quiet(format!("handshake failed: {e}"))),
        };
        let hello = self
            .check_handshake(&theirs, address)
            .map_err(Refusal::Refused)?;
        let Some(key) = self.keyed(&hello, address)? else {
            return Ok(hello);
        };
        let proof = self.proof_frame(&key.proof(Role::Dialer, &mine, &theirs));
        write_frame(stream, &proof)
            .await
            .map_err(|e| Refusal::Quiet(format!("handshake failed: {e}")))?;
        let answer = match read_frame(stream, &limits).await {
            Ok(f) => f,
            Err(ReadError::Closed) => {
                return Err(Refusal::Warn(format!(
                    "{address} (site {}) closed the connection instead of proving it holds \
                     group {:?}'s key: it refused this site's proof; give every site the same \
                     --group-key-file (see its log)",
                    hello.site.0, self.cfg.group
                )))
            }
            Err(e) => return Err(Refusal::Quiet(format!("handshake failed: {e}"))),
        };
        self.check_proof(
            &answer,
            key,
            Role::Listener,
            &mine,
            &theirs,
            address,
            &hello,
        )?;
        Ok(hello)
    }

    /// Log a refused handshake at its level; only `Refused` is counted.
    fn report(&self, r: &Refusal) -> String {
        match r {
            Refusal::Refused(line) => {
                self.refuse(line);
                line.clone()
            }
            Refusal::Warn(line) => {
                tracing::warn!("{line}");
                line.clone()
            }
            Refusal::Quiet(line) => {
                tracing::debug!("{line}");
                line.clone()
            }
        }
    }

    /// A peer dialed in: if the link to it is waiting to redial, redial
    /// now, so a restarted site hears from us at once rather than after
    /// `connection_retry`.
    fn peer_is_back(&self, hello: &Hello) {
        let st = lock(&self.state);
        let addr = st.peers.get(&hello.site).unwrap_or(&hello.address);
        if let Some(l) = st.links.get(addr) {
            if l.state == LinkState::Down {
                l.wake.notify_one();
            }
        }
    }

    fn refuse(&self, line: &str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("{line}");
    }

    fn deliver(&self, from: SiteId, frame: Vec<u8>) {
        if let Some(sink) = self.sink.get() {
            return sink(Received { from, frame });
        }
        match self.inbound.try_send(Received { from, frame }) {
            Ok(()) => {
                self.dropping.store(false, Ordering::Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.inbound_dropped.fetch_add(1, Ordering::Relaxed);
                if !self.dropping.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "incoming queue full: dropping frames until the node catches up"
                    );
                    let _ = self.events.try_send(TransportEvent::InboundDropped);
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Send an event, waiting for room; gives up at shutdown.
    async fn emit(&self, ev: TransportEvent) {
        tokio::select! {
            _ = self.events.send(ev) => {}
            _ = self.stopped() => {}
        }
    }
}

/// What a peer said in its handshake.
#[derive(Debug)]
struct Hello {
    site: SiteId,
    address: String,
    /// Its nonce (empty: it has no group key).
    nonce: Vec<u8>,
}

/// Why a handshake ended without a link, and how loudly to say so.
#[derive(Debug)]
enum Refusal {
    /// The peer was refused: a warning, counted in `refused`.
    Refused(String),
    /// The peer refused this site: a warning.
    Warn(String),
    /// The connection ended (or broke) before the handshake did: debug.
    Quiet(String),
}

/// A nonce of this site's handshake in progress; forgotten on drop.
struct OwnNonce<'a> {
    inner: &'a Inner,
    nonce: [u8; auth::NONCE_BYTES],
}

impl Drop for OwnNonce<'_> {
    fn drop(&mut self) {
        lock(&self.inner.nonces).remove(&self.nonce);
    }
}

/// Why reading a frame stopped.
#[derive(Debug)]
enum ReadError {
    /// The peer closed the connection.
    Closed,
    /// The length prefix is out of bounds; nothing was allocated.
    Bad(DecodeError),
    Io(io::Error),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Closed => write!(f, "closed by the peer"),
            ReadError::Bad(e) => write!(f, "{e}"),
            ReadError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// Read one length-prefixed frame, checking the length before allocating.
async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limits: &Limits,
) -> Result<Vec<u8>, ReadError> {
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => ReadError::Closed,
            _ => ReadError::Io(e),
        })?;
    let len = wire::stream_frame_len(prefix, limits).map_err(ReadError::Bad)?;
    let mut frame = vec![0u8; len];
    r.read_exact(&mut frame).await.map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => ReadError::Closed,
        _ => ReadError::Io(e),
    })?;
    Ok(frame)
}

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4 + frame.len());
    buf.extend_from_slice(&(frame.len() as u32).to_le_bytes());
    buf.extend_from_slice(frame);
    w.write_all(&buf).await?;
    w.flush().await
}

async fn accept_loop(inner: Arc<Inner>, listener: TcpListener, _guard: TaskGuard) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = inner.stopped() => break,
        };
        match accepted {
            Ok((stream, peer)) => match inner.incoming.clone().try_acquire_owned() {
                Ok(permit) => {
                    let i = inner.clone();
                    inner.spawn(move |g| async move {
                        serve(i, stream, peer).await;
                        drop(permit);
                        drop(g);
                    });
                }
                Err(_) => inner.refuse(&format!(
                    "refused {peer}: {} incoming connections are open already",
                    inner.cfg.max_incoming
                )),
            },
            Err(e) => {
                // Out of file descriptors, say: wait instead of spinning.
                tracing::warn!("accepting a connection failed: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = inner.stopped() => break,
                }
            }
        }
    }
    tracing::debug!("stopped listening on {}", inner.local_addr);
}

/// An incoming connection: check the handshake, answer it, then hand every
/// frame to the driver.
async fn serve(inner: Arc<Inner>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let limits = inner.cfg.limits;
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let peer_name = peer.to_string();
    let shaken = tokio::select! {
        r = tokio::time::timeout(
            inner.cfg.handshake_timeout,
            inner.accept_handshake(&mut reader, &peer_name),
        ) => r,
        _ = inner.stopped() => return,
    };
    let hello = match shaken {
        Ok(Ok(h)) => h,
        Ok(Err(r)) => {
            inner.report(&r);
            return;
        }
        Err(_) => {
            return inner.refuse(&format!(
                "refused {peer}: no handshake{} within {:?}",
                if inner.cfg.group_key.is_some() {
                    " and proof of the group key"
                } else {
                    ""
                },
                inner.cfg.handshake_timeout
            ))
        }
    };
    tracing::debug!(
        "accepted site {} ({}) from {peer}",
        hello.site.0,
        hello.address
    );
    inner.peer_is_back(&hello);
    let mut site = hello.site;
    let mut counters = lock(&inner.state).counters(site, inner.counter_cap());
    loop {
        let r = tokio::select! {
            r = read_frame(&mut reader, &limits) => r,
            _ = inner.stopped() => break,
        };
        match r {
            Ok(frame) => {
                if site.0 == 0 {
                    // A joiner dialed before it had an id: the envelope
                    // names it once it has one.
                    if let Ok((env, _)) = wire::decode_frame(&frame, &limits) {
                        if env.from.0 != 0 {
                            site = env.from;
                            counters = lock(&inner.state).counters(site, inner.counter_cap());
                        }
                    }
                }
                counters
                    .bytes_received
                    .fetch_add(4 + frame.len() as u64, Ordering::Relaxed);
                counters.frames_received.fetch_add(1, Ordering::Relaxed);
                inner.deliver(site, frame);
            }
            Err(ReadError::Bad(e)) => {
                inner.refuse(&format!(
                    "closing the connection from site {} ({}, {peer}): it announced {e}",
                    hello.site.0, hello.address
                ));
                break;
            }
            Err(e) => {
                tracing::debug!(
                    "connection from site {} ({}) ended: {e}",
                    hello.site.0,
                    hello.address
                );
                break;
            }
        }
    }
}

/// The task that owns one outgoing link: dial, handshake, write frames,
/// redial.
struct LinkTask {
    inner: Arc<Inner>,
    address: String,
    id: u64,
    rx: mpsc::Receiver<Chunk>,
    queued: Arc<AtomicUsize>,
    outlet: Outlet,
    close: watch::Receiver<bool>,
    rebind: Arc<Notify>,
    wake: Arc<Notify>,
    /// The site this task last reported `Up` for.
    announced: Option<SiteId>,
}

/// How a connected link ended.
enum Ended {
    Closed,
    Broken(String),
}

impl LinkTask {
    fn closing(&self) -> impl Future<Output = ()> + Send + 'static {
        let close = flag(self.close.clone());
        let stop = self.inner.stopped();
        async move {
            tokio::select! {
                _ = close => {}
                _ = stop => {}
            }
        }
    }

    async fn run(mut self, _guard: TaskGuard) {
        self.report_moved().await;
        loop {
            self.set_state(LinkState::Connecting);
            let attempt = {
                let dial = self.dial();
                tokio::pin!(dial);
                loop {
                    tokio::select! {
                        r = &mut dial => break Some(r),
                        _ = self.rebind.notified() => self.report_moved().await,
                        _ = self.closing() => break None,
                    }
                }
            };
            let Some(attempt) = attempt else { break };
            match attempt {
                Ok((stream, hello)) => {
                    let bound = self.with_link(|l| {
                        l.state = LinkState::Up;
                        l.peer_site = hello.site;
                        l.site
                    });
                    let Some(bound) = bound else { break };
                    if let Some(want) = bound {
                        if hello.site != want && hello.site.0 != 0 {
                            tracing::warn!(
                                "{} answers as site {}, but it was named as site {}",
                                self.address,
                                hello.site.0,
                                want.0
                            );
                        }
                    }
                    tracing::info!(
                        "connected to site {} at {}",
                        bound.unwrap_or(hello.site).0,
                        self.address
                    );
                    let ended = self.pump(stream, hello.site).await;
                    self.set_state(LinkState::Down);
                    if let Ended::Broken(why) = &ended {
                        tracing::info!(
                            "connection to site {} at {} broke: {why}",
                            bound.unwrap_or(hello.site).0,
                            self.address
                        );
                    }
                    self.announce_down().await;
                    if matches!(ended, Ended::Closed) {
                        break;
                    }
                }
                Err(why) => {
                    let site = self.with_link(|l| {
                        l.state = LinkState::Down;
                        l.site
                    });
                    tracing::debug!("connecting to {} failed: {why}", self.address);
                    if let Some(Some(site)) = site {
                        self.inner.emit(TransportEvent::ConnectFailed(site)).await;
                    }
                }
            }
            self.drain();
            // An address-only link ends with its connection.
            let keep = {
                let mut st = lock(&self.inner.state);
                match st.links.get(&self.address) {
                    Some(l) if l.id == self.id && l.site.is_some() => true,
                    Some(l) if l.id == self.id => {
                        st.links.remove(&self.address);
                        false
                    }
                    _ => false,
                }
            };
            if !keep {
                return;
            }
            let sleep = tokio::time::sleep(self.inner.cfg.connection_retry);
            tokio::pin!(sleep);
            let closed = loop {
                tokio::select! {
                    _ = &mut sleep => break false,
                    _ = self.wake.notified() => break false,
                    _ = self.rebind.notified() => self.report_moved().await,
                    _ = self.closing() => break true,
                }
            };
            if closed {
                break;
            }
        }
        self.announce_down().await;
        self.drain();
        let mut st = lock(&self.inner.state);
        if st.links.get(&self.address).is_some_and(|l| l.id == self.id) {
            st.links.remove(&self.address);
        }
    }

    /// Apply `f` to this task's link, if it is still in the table.
    fn with_link<R>(&self, f: impl FnOnce(&mut Link) -> R) -> Option<R> {
        let mut st = lock(&self.inner.state);
        st.links
            .get_mut(&self.address)
            .filter(|l| l.id == self.id)
            .map(f)
    }

    fn set_state(&self, s: LinkState) {
        self.with_link(|l| l.state = s);
    }

    /// Drop what was queued for a connection that is gone.
    fn drain(&mut self) {
        while let Ok(c) = self.rx.try_recv() {
            self.queued.fetch_sub(c.bytes.len(), Ordering::AcqRel);
        }
    }

    /// Report `Down` for a site that moved here from a link that was up,
    /// while this one is not up.
    async fn report_moved(&self) {
        if let Some(site) = self.with_link(|l| l.down_first.take()).flatten() {
            self.inner.emit(TransportEvent::Down(site)).await;
        }
    }

    /// Report `Up` for the site bound to the link, if it changed.
    async fn announce_up(&mut self) {
        self.report_moved().await;
        let bound = self.with_link(|l| l.site).flatten();
        if bound == self.announced {
            return;
        }
        self.announce_down().await;
        if let Some(site) = bound {
            self.announced = Some(site);
            self.inner.emit(TransportEvent::Up(site)).await;
        }
    }

    /// Report `Down` for the site announced up, unless it moved to
    /// another link (which reports for it).
    async fn announce_down(&mut self) {
        let Some(site) = self.announced.take() else {
            return;
        };
        let moved = {
            let st = lock(&self.inner.state);
            st.peers
                .get(&site)
                .and_then(|a| st.links.get(a))
                .is_some_and(|l| l.id != self.id)
        };
        if !moved {
            self.inner.emit(TransportEvent::Down(site)).await;
        }
    }

    async fn dial(&self) -> Result<(TcpStream, Hello), String> {
        let cfg = &self.inner.cfg;
        let mut stream = match tokio::time::timeout(
            cfg.connect_timeout,
            TcpStream::connect(&self.address),
        )
        .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("no answer within {:?}", cfg.connect_timeout)),
        };
        let _ = stream.set_nodelay(true);
        match tokio::time::timeout(
            cfg.handshake_timeout,
            self.inner.dial_handshake(&mut stream, &self.address),
        )
        .await
        {
            Ok(Ok(h)) => Ok((stream, h)),
            Ok(Err(r)) => Err(self.inner.report(&r)),
            Err(_) => Err(format!("no handshake within {:?}", cfg.handshake_timeout)),
        }
    }

    /// The counters of the site bound to the link, else of the site the
    /// peer named in its handshake.
    fn counters(&self, peer_site: SiteId) -> Arc<Counters> {
        let site = self.with_link(|l| l.site).flatten().unwrap_or(peer_site);
        lock(&self.inner.state).counters(site, self.inner.counter_cap())
    }

    /// Write queued frames until the connection breaks or the link closes.
    async fn pump(&mut self, stream: TcpStream, peer_site: SiteId) -> Ended {
        self.announce_up().await;
        let (mut rd, wr) = stream.into_split();
        let wr = Arc::new(wr);
        *lock(&self.outlet) = Some(wr.clone());
        let ended = self.pump_on(&mut rd, &wr, peer_site).await;
        *lock(&self.outlet) = None;
        ended
    }

    async fn pump_on(
        &mut self,
        rd: &mut OwnedReadHalf,
        wr: &OwnedWriteHalf,
        peer_site: SiteId,
    ) -> Ended {
        let mut counters = self.counters(peer_site);
        let mut probe = [0u8; 256];
        let mut batch: Vec<u8> = Vec::with_capacity(64 << 10);
        const BATCH: usize = 256 << 10;
        loop {
            let first = tokio::select! {
                biased;
                _ = self.closing() => return Ended::Closed,
                r = rd.read(&mut probe) => match r {
                    // The peer never writes on this connection: anything it
                    // sends is ignored; end of stream means it is gone.
                    Ok(0) => return Ended::Broken("closed by the peer".into()),
                    Ok(_) => continue,
                    Err(e) => return Ended::Broken(e.to_string()),
                },
                _ = self.rebind.notified() => {
                    self.announce_up().await;
                    counters = self.counters(peer_site);
                    continue;
                }
                c = self.rx.recv() => match c {
                    Some(c) => c,
                    None => return Ended::Closed,
                },
            };
            batch.clear();
            let mut frames = first.frames;
            batch.extend_from_slice(&first.bytes);
            while batch.len() < BATCH {
                match self.rx.try_recv() {
                    Ok(c) => {
                        batch.extend_from_slice(&c.bytes);
                        frames += c.frames;
                    }
                    Err(_) => break,
                }
            }
            let mut done = 0;
            while done < batch.len() {
                let ready = tokio::select! {
                    r = wr.writable() => r,
                    _ = self.closing() => return Ended::Closed,
                };
                if let Err(e) = ready {
                    return Ended::Broken(e.to_string());
                }
                match wr.try_write(&batch[done..]) {
                    Ok(0) => return Ended::Broken("the socket accepted no bytes".into()),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Ended::Broken(e.to_string()),
                }
            }
            // Only now: an urgent send may write to the socket itself once
            // nothing is left to write before it.
            self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
            counters
                .bytes_sent
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            counters.frames_sent.fetch_add(frames, Ordering::Relaxed);
            if batch.capacity() > 4 * BATCH {
                batch = Vec::with_capacity(64 << 10);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::timeout;

    const WAIT: Duration = Duration::from_secs(10);

    fn cfg(group: &str, site: u32) -> TransportConfig {
        let mut c = TransportConfig::new(group, "127.0.0.1:0", SiteId(site), &Config::default());
        c.connection_retry = Duration::from_millis(50);
        c.connect_timeout = Duration::from_secs(2);
        c.handshake_timeout = Duration::from_secs(2);
        c
    }

    async fn start(c: TransportConfig) -> (TcpTransport, TransportChannels) {
        TcpTransport::bind(c).await.unwrap()
    }

    async fn event(ch: &mut TransportChannels) -> TransportEvent {
        timeout(WAIT, ch.events.recv())
            .await
            .expect("no transport event in time")
            .expect("event channel closed")
    }

    /// Wait for `want`, skipping failed attempts.
    async fn expect_event(ch: &mut TransportChannels, want: TransportEvent) {
        loop {
            match event(ch).await {
                e if e == want => return,
                TransportEvent::ConnectFailed(_) => {}
                e => panic!("expected {want:?}, got {e:?}"),
            }
        }
    }

    async fn frame(ch: &mut TransportChannels) -> Received {
        timeout(WAIT, ch.inbound.recv())
            .await
            .expect("no frame in time")
            .expect("inbound channel closed")
    }

    fn keyed_handshake_for(group: &str, site: u32, nonce: &[u8], limits: &Limits) -> Vec<u8> {
        let env = Envelope {
            from: SiteId(site),
            generation: Generation(0),
            egen: ElectionGen(0),
            lsn: Lsn::ZERO,
            flags: Flags::NONE,
        };
        let msg = Message::Handshake(Handshake {
            group,
            address: "127.0.0.1:1",
            site: SiteId(site),
            nonce,
        });
        let mut out = Vec::new();
        wire::encode_frame(&env, &msg, &mut out, limits).unwrap();
        out
    }

    fn handshake_for(group: &str, site: u32, limits: &Limits) -> Vec<u8> {
        keyed_handshake_for(group, site, &[], limits)
    }

    fn proof_for(mac: &[u8], limits: &Limits) -> Vec<u8> {
        let env = Envelope {
            from: SiteId(0),
            generation: Generation(0),
            egen: ElectionGen(0),
            lsn: Lsn::ZERO,
            flags: Flags::NONE,
        };
        let mut out = Vec::new();
        wire::encode_frame(&env, &Message::HandshakeProof { mac }, &mut out, limits).unwrap();
        out
    }

    fn key(b: u8) -> GroupKey {
        GroupKey::new(&[b; 32]).unwrap()
    }

    fn keyed_cfg(group: &str, site: u32, k: u8) -> TransportConfig {
        let mut c = cfg(group, site);
        c.group_key = Some(key(k));
        c
    }

    /// The MAC a HANDSHAKE_PROOF frame carries.
    fn mac_of(frame: &[u8]) -> Vec<u8> {
        match wire::decode_frame(frame, &Limits::default()) {
            Ok((_, Message::HandshakeProof { mac })) => mac.to_vec(),
            other => panic!("not a proof: {other:?}"),
        }
    }

    /// The nonce a HANDSHAKE frame carries.
    fn nonce_of(frame: &[u8]) -> Vec<u8> {
        match wire::decode_frame(frame, &Limits::default()) {
            Ok((_, Message::Handshake(h))) => h.nonce.to_vec(),
            other => panic!("not a handshake: {other:?}"),
        }
    }

    /// Dial `addr` as a raw site with `nonce`: the handshake sent and the
    /// one received.
    async fn raw_dial(
        addr: SocketAddr,
        group: &str,
        nonce: &[u8],
    ) -> (TcpStream, Vec<u8>, Vec<u8>) {
        let limits = Limits::default();
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mine = keyed_handshake_for(group, 7, nonce, &limits);
        write_frame(&mut s, &mine).await.unwrap();
        let theirs = timeout(WAIT, read_frame(&mut s, &limits))
            .await
            .unwrap()
            .unwrap();
        (s, mine, theirs)
    }

    /// What the transports of this test log (the test's own thread: a
    /// `#[tokio::test]` runtime runs every task there).
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Logs {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
            let logs = Logs::default();
            let w = logs.clone();
            let sub = tracing_subscriber::fmt()
                .with_writer(move || w.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::DEBUG)
                .finish();
            (logs, tracing::subscriber::set_default(sub))
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&lock(&self.0)).into_owned()
        }

        /// Wait until a logged line contains every one of `parts`.
        async fn wait_for(&self, parts: &[&str]) {
            let found = timeout(WAIT, async {
                loop {
                    if self
                        .text()
                        .lines()
                        .any(|l| parts.iter().all(|p| l.contains(p)))
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
            .await;
            assert!(
                found.is_ok(),
                "no log line with {parts:?} in:\n{}",
                self.text()
            );
        }
    }

    /// Read until the peer closes; true if it did within the wait.
    async fn closed_by_peer(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match timeout(WAIT, s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    #[tokio::test]
    async fn two_transports_exchange_frames_both_ways() {
        let (a, mut ach) = start(cfg("g", 1)).await;
        let (b, mut bch) = start(cfg("g", 2)).await;
        assert_eq!(
            a.clone().send(SiteId(2), b"xx"),
            Err(SendError::UnknownSite(SiteId(2)))
        );
        a.set_peer(SiteId(2), b.address());
        b.set_peer(SiteId(1), a.address());
        expect_event(&mut ach, TransportEvent::Up(SiteId(2))).await;
        expect_event(&mut bch, TransportEvent::Up(SiteId(1))).await;
        assert!(a.is_connected(SiteId(2)));

        let mut at = a.clone();
        for i in 0..100u32 {
            at.send(SiteId(2), &i.to_le_bytes()).unwrap();
        }
        for i in 0..100u32 {
            let r = frame(&mut bch).await;
            assert_eq!(r.from, SiteId(1));
            assert_eq!(r.frame, i.to_le_bytes(), "frames arrive in order");
        }
        let mut bt = b.clone();
        bt.send(SiteId(1), b"from b").unwrap();
        let r = frame(&mut ach).await;
        assert_eq!((r.from, &r.frame[..]), (SiteId(2), &b"from b"[..]));
        // By address too (a joiner is known only by its address).
        bt.send_to_address(a.address(), b"by address").unwrap();
        assert_eq!(frame(&mut ach).await.frame, b"by address");

        let sa = a.stats();
        let p = sa.peers.iter().find(|p| p.site == SiteId(2)).unwrap();
        assert!(p.connected);
        assert_eq!(p.frames_sent, 100);
        assert_eq!(p.bytes_sent, 100 * 8);
        assert_eq!(p.frames_received, 2);
        let sb = b.stats();
        let p = sb.peers.iter().find(|p| p.site == SiteId(1)).unwrap();
        assert_eq!(p.frames_received, 100);
        assert_eq!(p.frames_sent, 2);
        a.shutdown().await;
        expect_event(&mut bch, TransportEvent::Down(SiteId(1))).await;
        b.shutdown().await;
        assert_eq!(at.send(SiteId(2), b"late"), Err(SendError::Disconnected));
    }

    #[test]
    fn the_transport_can_move_between_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<TcpTransport>();
    }

    #[tokio::test]
    async fn a_joiner_and_its_helper_talk_by_address() {
        let (helper, mut hch) = start(cfg("g", 1)).await;
        let mut c = cfg("g", 0);
        c.max_address_links = 1;
        let (joiner, mut jch) = start(c).await;
        let mut jt = joiner.clone();
        jt.send_to_address(helper.address(), b"join me").unwrap();
        let r = frame(&mut hch).await;
        assert_eq!((r.from, &r.frame[..]), (SiteId(0), &b"join me"[..]));
        helper
            .clone()
            .send_to_address(joiner.address(), b"you are site 2")
            .unwrap();
        assert_eq!(frame(&mut jch).await.frame, b"you are site 2");
        // Address-only links report no link changes and are bounded.
        assert!(jch.events.try_recv().is_err());
        assert_eq!(
            jt.send_to_address("127.0.0.1:9", b"elsewhere"),
            Err(SendError::Disconnected)
        );
        // Once named, the helper's link reports Up for it.
        joiner.set_site(SiteId(2));
        joiner.set_peer(SiteId(1), helper.address());
        expect_event(&mut jch, TransportEvent::Up(SiteId(1))).await;
        joiner.shutdown().await;
        helper.shutdown().await;
    }

    #[tokio::test]
    async fn a_site_of_another_group_or_version_is_refused() {
        let (a, mut ach) = start(cfg("alpha", 1)).await;
        let (b, mut bch) = start(cfg("beta", 2)).await;
        a.set_peer(SiteId(2), b.address());
        assert_eq!(
            event(&mut ach).await,
            TransportEvent::ConnectFailed(SiteId(2))
        );
        assert!(!a.is_connected(SiteId(2)));
        assert!(b.stats().refused >= 1);
        assert!(bch.events.try_recv().is_err(), "b saw no link change");
        assert!(bch.inbound.try_recv().is_err());

        // Another protocol version: the first frame's version field. A
        // version-4 site (before UPDATE_REQ said its page size, S6) and a
        // version-5 one (before log requests said every limit, R11, R13)
        // are refused the same way.
        let (logs, _g) = Logs::capture();
        let limits = Limits::default();
        for other in [4, 5, PROTOCOL_VERSION + 1] {
            let mut hs = handshake_for("beta", 9, &limits);
            hs[0..2].copy_from_slice(&other.to_le_bytes());
            let before = b.stats().refused;
            let mut s = TcpStream::connect(b.local_addr()).await.unwrap();
            write_frame(&mut s, &hs).await.unwrap();
            assert!(closed_by_peer(&mut s).await);
            assert!(b.stats().refused > before);
            logs.wait_for(&[
                &format!(
                    "speaks shoal protocol version {other}, this site speaks {PROTOCOL_VERSION}"
                ),
                "run one shoal release on every site",
            ])
            .await;
        }
        assert!(bch.inbound.try_recv().is_err());
        a.shutdown().await;
        b.shutdown().await;
    }

    #[test]
    fn the_largest_handshake_fits_the_handshake_frame_bound() {
        let limits = Limits::default();
        let env = Envelope {
            from: SiteId(u32::MAX),
            generation: Generation(u32::MAX),
            egen: ElectionGen(u32::MAX),
            lsn: Lsn::new(u32::MAX, u32::MAX),
            flags: Flags(Flags::KNOWN),
        };
        let group = "g".repeat(caps::MAX_GROUP_NAME);
        let address = "a".repeat(caps::MAX_ADDRESS);
        let nonce = [0xff; wire::MAX_HANDSHAKE_NONCE];
        let mac = [0xff; wire::MAX_HANDSHAKE_MAC];
        for msg in [
            Message::Handshake(Handshake {
                group: &group,
                address: &address,
                site: SiteId(u32::MAX),
                nonce: &nonce,
            }),
            Message::HandshakeProof { mac: &mac },
        ] {
            let mut out = Vec::new();
            wire::encode_frame(&env, &msg, &mut out, &limits).unwrap();
            assert!(
                out.len() <= HANDSHAKE_FRAME_MAX as usize,
                "{} bytes",
                out.len()
            );
        }
    }

    #[tokio::test]
    async fn sites_with_the_same_group_key_connect_and_exchange_frames() {
        let (a, mut ach) = start(keyed_cfg("g", 1, 7)).await;
        let (b, mut bch) = start(keyed_cfg("g", 2, 7)).await;
        a.set_peer(SiteId(2), b.address());
        b.set_peer(SiteId(1), a.address());
        expect_event(&mut ach, TransportEvent::Up(SiteId(2))).await;
        expect_event(&mut bch, TransportEvent::Up(SiteId(1))).await;
        let mut at = a.clone();
        for i in 0..50u32 {
            at.send(SiteId(2), &i.to_le_bytes()).unwrap();
        }
        for i in 0..50u32 {
            let r = frame(&mut bch).await;
            assert_eq!((r.from, &r.frame[..]), (SiteId(1), &i.to_le_bytes()[..]));
        }
        b.clone().send(SiteId(1), b"from b").unwrap();
        assert_eq!(frame(&mut ach).await.frame, b"from b");
        // A joiner with the key reaches a member by address.
        let (j, mut jch) = start(keyed_cfg("g", 0, 7)).await;
        j.clone().send_to_address(a.address(), b"join me").unwrap();
        let r = frame(&mut ach).await;
        assert_eq!((r.from, &r.frame[..]), (SiteId(0), &b"join me"[..]));
        a.clone().send_to_address(j.address(), b"welcome").unwrap();
        assert_eq!(frame(&mut jch).await.frame, b"welcome");
        for t in [&a, &b, &j] {
            assert_eq!(t.stats().refused, 0);
            assert!(lock(&t.inner.nonces).is_empty(), "nonces are forgotten");
        }
        for t in [a, b, j] {
            t.shutdown().await;
        }
    }

    #[tokio::test]
    async fn a_site_with_another_group_key_is_refused_both_ways() {
        let (logs, _g) = Logs::capture();
        let (a, mut ach) = start(keyed_cfg("g", 1, 7)).await;
        let (b, mut bch) = start(keyed_cfg("g", 2, 8)).await;
        a.set_peer(SiteId(2), b.address());
        b.set_peer(SiteId(1), a.address());
        // Each dials the other and is refused: the listener checks the
        // dialer's proof first, so neither proves anything to the other.
        assert_eq!(
            event(&mut ach).await,
            TransportEvent::ConnectFailed(SiteId(2))
        );
        assert_eq!(
            event(&mut bch).await,
            TransportEvent::ConnectFailed(SiteId(1))
        );
        logs.wait_for(&[
            "refused 127.0.0.1:",
            "(site 1, address",
            "it could not prove it holds group \"g\"'s key; give every site the same --group-key-file",
        ])
        .await;
        logs.wait_for(&["closed the connection instead of proving it holds group \"g\"'s key"])
            .await;
        assert!(a.stats().refused >= 1 && b.stats().refused >= 1);
        assert!(!a.is_connected(SiteId(2)) && !b.is_connected(SiteId(1)));
        assert_eq!(
            a.clone().send(SiteId(2), b"x"),
            Err(SendError::Disconnected)
        );
        // Nothing got through, by name or by address.
        let _ = a.clone().send_to_address(b.address(), b"by address");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(ach.inbound.try_recv().is_err() && bch.inbound.try_recv().is_err());
        assert!(
            !logs.text().contains(&format!("{:?}", [7u8; 32])),
            "no key in the log"
        );
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test]
    async fn a_site_with_a_key_and_one_without_refuse_each_other() {
        let (logs, _g) = Logs::capture();
        let (a, mut ach) = start(keyed_cfg("g", 1, 7)).await;
        let (b, mut bch) = start(cfg("g", 2)).await;
        // The keyed site dials the unkeyed one, and the other way round.
        a.set_peer(SiteId(2), b.address());
        assert_eq!(
            event(&mut ach).await,
            TransportEvent::ConnectFailed(SiteId(2))
        );
        logs.wait_for(&[
            "(site 1, address",
            "it has a group key and this site has none; give every site of group \"g\" the same --group-key-file",
        ])
        .await;
        logs.wait_for(&[
            "(site 2, address",
            "it has no group key, and this site admits only sites that prove they hold group \"g\"'s key",
        ])
        .await;
        b.set_peer(SiteId(1), a.address());
        assert_eq!(
            event(&mut bch).await,
            TransportEvent::ConnectFailed(SiteId(1))
        );
        assert!(a.stats().refused >= 2 && b.stats().refused >= 2);
        // A raw unkeyed dialer gets the keyed site's handshake (so it can
        // say why), then the connection closes; its frame is not delivered.
        let (mut s, _, theirs) = raw_dial(a.local_addr(), "g", &[]).await;
        assert_eq!(nonce_of(&theirs).len(), auth::NONCE_BYTES);
        let _ = write_frame(&mut s, b"sneaked in").await;
        assert!(closed_by_peer(&mut s).await);
        assert!(ach.inbound.try_recv().is_err() && bch.inbound.try_recv().is_err());
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test]
    async fn a_replayed_or_misdirected_proof_is_refused() {
        let limits = Limits::default();
        let k = key(7);
        let (a, mut ach) = start(keyed_cfg("g", 1, 7)).await;
        // An honest raw dialer that holds the key gets in.
        let nonce = [0x11; 32];
        let (mut s, mine, theirs) = raw_dial(a.local_addr(), "g", &nonce).await;
        let good = k.proof(Role::Dialer, &mine, &theirs);
        write_frame(&mut s, &proof_for(&good, &limits))
            .await
            .unwrap();
        let answer = timeout(WAIT, read_frame(&mut s, &limits))
            .await
            .unwrap()
            .unwrap();
        assert!(k.verify(Role::Listener, &mine, &theirs, &mac_of(&answer)));
        write_frame(&mut s, b"proved").await.unwrap();
        assert_eq!(frame(&mut ach).await.frame, b"proved");
        drop(s);

        // The same handshake and proof again: the listener's nonce is new,
        // so the recorded proof no longer checks.
        let before = a.stats().refused;
        let (mut s, mine2, theirs2) = raw_dial(a.local_addr(), "g", &nonce).await;
        assert_eq!(mine2, mine);
        assert_ne!(nonce_of(&theirs2), nonce_of(&theirs));
        write_frame(&mut s, &proof_for(&good, &limits))
            .await
            .unwrap();
        let _ = write_frame(&mut s, b"replayed").await;
        assert!(closed_by_peer(&mut s).await);
        assert_eq!(a.stats().refused, before + 1);

        // The right transcript but the listener's direction, a proof made
        // with another key, and the listener's own proof reflected back.
        let (mut s, mine, theirs) = raw_dial(a.local_addr(), "g", &[0x22; 32]).await;
        let wrong_role = k.proof(Role::Listener, &mine, &theirs);
        write_frame(&mut s, &proof_for(&wrong_role, &limits))
            .await
            .unwrap();
        assert!(closed_by_peer(&mut s).await);
        let (mut s, mine, theirs) = raw_dial(a.local_addr(), "g", &[0x33; 32]).await;
        let other_key = key(8).proof(Role::Dialer, &mine, &theirs);
        write_frame(&mut s, &proof_for(&other_key, &limits))
            .await
            .unwrap();
        assert!(closed_by_peer(&mut s).await);
        assert_eq!(a.stats().refused, before + 3);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(ach.inbound.try_recv().is_err(), "nothing delivered");
        a.shutdown().await;
    }

    #[tokio::test]
    async fn a_listener_reflecting_the_dialers_proof_or_nonce_is_refused() {
        let (logs, _g) = Logs::capture();
        let limits = Limits::default();
        let (a, mut ach) = start(keyed_cfg("g", 1, 7)).await;
        // A fake site that does not hold the key: it sends the dialer's own
        // proof back as its answer.
        let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake_addr = fake.local_addr().unwrap();
        a.set_peer(SiteId(2), &fake_addr.to_string());
        let (mut s, _) = timeout(WAIT, fake.accept()).await.unwrap().unwrap();
        let dialer_hs = read_frame(&mut s, &limits).await.unwrap();
        let dialer_nonce = nonce_of(&dialer_hs);
        write_frame(&mut s, &keyed_handshake_for("g", 2, &[0x44; 32], &limits))
            .await
            .unwrap();
        let proof = read_frame(&mut s, &limits).await.unwrap();
        write_frame(&mut s, &proof).await.unwrap();
        assert_eq!(
            event(&mut ach).await,
            TransportEvent::ConnectFailed(SiteId(2))
        );
        logs.wait_for(&[
            &format!("refused {fake_addr} (site 2"),
            "could not prove it holds",
        ])
        .await;
        drop(s);

        // Next attempt: the fake keeps the dialer waiting and dials back
        // with the dialer's own nonce, to get a proof over it.
        let (mut s, _) = timeout(WAIT, fake.accept()).await.unwrap().unwrap();
        let hs = read_frame(&mut s, &limits).await.unwrap();
        let n = nonce_of(&hs);
        assert_ne!(n, dialer_nonce, "every handshake has a fresh nonce");
        let mut back = TcpStream::connect(a.local_addr()).await.unwrap();
        write_frame(&mut back, &keyed_handshake_for("g", 1, &n, &limits))
            .await
            .unwrap();
        assert!(closed_by_peer(&mut back).await);
        logs.wait_for(&["carries a nonce this site made for another connection"])
            .await;
        assert!(a.stats().refused >= 2);
        assert!(!a.is_connected(SiteId(2)));
        assert!(ach.inbound.try_recv().is_err());
        drop(s);
        a.shutdown().await;
    }

    #[tokio::test]
    async fn a_peer_that_never_proves_is_dropped() {
        let (logs, _g) = Logs::capture();
        let limits = Limits::default();
        let mut c = keyed_cfg("g", 1, 7);
        c.handshake_timeout = Duration::from_millis(300);
        let (a, mut ach) = start(c).await;
        // Handshakes, then silence: dropped at the handshake timeout.
        let (mut s, _, _) = raw_dial(a.local_addr(), "g", &[0x55; 32]).await;
        let t0 = std::time::Instant::now();
        assert!(closed_by_peer(&mut s).await);
        assert!(t0.elapsed() < Duration::from_secs(5));
        logs.wait_for(&["no handshake and proof of the group key within 300ms"])
            .await;
        assert_eq!(a.stats().refused, 1);
        // Handshakes, then a frame where the proof belongs.
        let (mut s, _, _) = raw_dial(a.local_addr(), "g", &[0x66; 32]).await;
        let mut hb = Vec::new();
        wire::encode_frame(
            &Envelope {
                from: SiteId(7),
                generation: Generation(1),
                egen: ElectionGen(1),
                lsn: Lsn::ZERO,
                flags: Flags::NONE,
            },
            &Message::Heartbeat,
            &mut hb,
            &limits,
        )
        .unwrap();
        write_frame(&mut s, &hb).await.unwrap();
        assert!(closed_by_peer(&mut s).await);
        logs.wait_for(&["it sent HEARTBEAT where its proof of group \"g\"'s key belongs"])
            .await;
        // A proof frame announcing more than max_frame: refused unread.
        let (mut s, _, _) = raw_dial(a.local_addr(), "g", &[0x77; 32]).await;
        s.write_all(&(limits.max_frame + 1).to_le_bytes())
            .await
            .unwrap();
        assert!(closed_by_peer(&mut s).await);
        assert_eq!(a.stats().refused, 3);
        assert!(ach.inbound.try_recv().is_err());
        assert!(ach.events.try_recv().is_err());

        // A listener that answers the handshake and never proves: the
        // dialer gives up after its handshake timeout, the link stays down.
        let fake = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake_addr = fake.local_addr().unwrap().to_string();
        let stuck = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (mut s, _) = fake.accept().await.unwrap();
                let _ = read_frame(&mut s, &limits).await;
                let _ =
                    write_frame(&mut s, &keyed_handshake_for("g", 2, &[0x88; 32], &limits)).await;
                held.push(s);
            }
        });
        a.set_peer(SiteId(2), &fake_addr);
        assert_eq!(
            event(&mut ach).await,
            TransportEvent::ConnectFailed(SiteId(2))
        );
        assert!(!a.is_connected(SiteId(2)));
        stuck.abort();
        a.shutdown().await;
    }

    #[tokio::test]
    async fn an_oversized_length_prefix_closes_the_connection() {
        let (a, mut ach) = start(cfg("g", 1)).await;
        let limits = Limits::default();
        // After a good handshake.
        let mut s = TcpStream::connect(a.local_addr()).await.unwrap();
        write_frame(&mut s, &handshake_for("g", 7, &limits))
            .await
            .unwrap();
        let reply = timeout(WAIT, read_frame(&mut s, &limits))
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            wire::decode_frame(&reply, &limits),
            Ok((_, Message::Handshake(h))) if h.group == "g" && h.site == SiteId(1)
        ));
        write_frame(&mut s, b"ok frame").await.unwrap();
        assert_eq!(frame(&mut ach).await.frame, b"ok frame");
        // 4 GiB announced: refused before anything is allocated.
        s.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        assert!(closed_by_peer(&mut s).await);
        // One byte above the limit, as the very first frame.
        let mut s = TcpStream::connect(a.local_addr()).await.unwrap();
        s.write_all(&(limits.max_frame + 1).to_le_bytes())
            .await
            .unwrap();
        assert!(closed_by_peer(&mut s).await);
        assert!(a.stats().refused >= 2);
        a.shutdown().await;
    }

    #[tokio::test]
    async fn a_killed_listener_is_reconnected_when_it_comes_back() {
        let (a, mut ach) = start(cfg("g", 1)).await;
        let (b, _bch) = start(cfg("g", 2)).await;
        let addr = b.address().to_string();
        a.set_peer(SiteId(2), &addr);
        expect_event(&mut ach, TransportEvent::Up(SiteId(2))).await;
        b.shutdown().await;
        expect_event(&mut ach, TransportEvent::Down(SiteId(2))).await;
        // While it is gone, attempts fail every connection_retry.
        assert_eq!(
            event(&mut ach).await,
            TransportEvent::ConnectFailed(SiteId(2))
        );
        assert_eq!(
            a.clone().send(SiteId(2), b"lost"),
            Err(SendError::Disconnected)
        );
        let mut c = cfg("g", 2);
        c.listen = addr;
        let (b2, mut b2ch) = start(c).await;
        expect_event(&mut ach, TransportEvent::Up(SiteId(2))).await;
        a.clone().send(SiteId(2), b"again").unwrap();
        assert_eq!(frame(&mut b2ch).await.frame, b"again");
        a.shutdown().await;
        b2.shutdown().await;
    }

    #[tokio::test]
    async fn a_restarted_peer_that_dials_in_is_redialed_at_once() {
        let mut c = cfg("g", 1);
        c.connection_retry = Duration::from_secs(600);
        let (a, mut ach) = start(c).await;
        let (b, _bch) = start(cfg("g", 2)).await;
        let addr = b.address().to_string();
        a.set_peer(SiteId(2), &addr);
        expect_event(&mut ach, TransportEvent::Up(SiteId(2))).await;
        b.shutdown().await;
        expect_event(&mut ach, TransportEvent::Down(SiteId(2))).await;
        let mut c = cfg("g", 2);
        c.listen = addr;
        let (b2, mut b2ch) = start(c).await;
        b2.set_peer(SiteId(1), a.address());
        // Far sooner than the 600 s retry.
        expect_event(&mut ach, TransportEvent::Up(SiteId(2))).await;
        a.clone().send(SiteId(2), b"welcome back").unwrap();
        assert_eq!(frame(&mut b2ch).await.frame, b"welcome back");
        a.shutdown().await;
        b2.shutdown().await;
    }

    #[tokio::test]
    async fn a_full_send_queue_returns_full() {
        let limits = Limits::default();
        // A peer that answers the handshake and then never reads.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = listener.local_addr().unwrap().to_string();
        let stuck = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let _hs = read_frame(&mut s, &limits).await.unwrap();
            write_frame(&mut s, &handshake_for("g", 2, &limits))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(s);
        });
        let mut c = cfg("g", 1);
        c.send_queue_frames = 4;
        let (a, mut ach) = start(c).await;
        a.set_peer(SiteId(2), &peer_addr);
        expect_event(&mut ach, TransportEvent::Up(SiteId(2))).await;
        let big = vec![0x5a; limits.max_frame as usize];
        let mut at = a.clone();
        let mut sent = 0;
        let full = loop {
            match at.send(SiteId(2), &big) {
                Ok(()) => sent += 1,
                Err(e) => break e,
            }
            assert!(sent < 1000, "the queue never filled");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        assert_eq!(full, SendError::Full);
        let p = a
            .stats()
            .peers
            .into_iter()
            .find(|p| p.site == SiteId(2))
            .unwrap();
        assert_eq!(p.send_full, 1);
        assert!(p.connected);
        a.shutdown().await;
        stuck.abort();
    }

    /// Urgent frames are written by the sender itself when nothing is
    /// queued; what the socket does not take is queued first in line. With
    /// a peer that stops reading, the first big urgent frame is written in
    /// part, and every frame accepted, urgent or not, must still arrive
    /// whole and in order.
    #[tokio::test]
    async fn urgent_frames_keep_their_order_through_partial_writes() {
        let limits = Limits::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = listener.local_addr().unwrap().to_string();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<usize>();
        // A peer that answers the handshake, reads nothing until told how
        // many frames to expect, then reads them all.
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let _hs = read_frame(&mut s, &limits).await.unwrap();
            write_frame(&mut s, &handshake_for("g", 2, &limits))
                .await
                .unwrap();
            let n = go_rx.await.unwrap();
            let mut got = Vec::new();
            for _ in 0..n {
                got.push(read_frame(&mut s, &limits).await.unwrap());
            }
            got
        });
        let mut c = cfg("g", 1);
        c.send_queue_frames = 64;
        let (a, mut ach) = start(c).await;
        a.set_peer(SiteId(2), &peer_addr);
        expect_event(&mut ach, TransportEvent::Up(SiteId(2))).await;
        let frame_of = |i: u32, len: usize| {
            let mut f = vec![(i % 251) as u8; len];
            f[..4].copy_from_slice(&i.to_le_bytes());
            f
        };
        let big = limits.max_frame as usize;
        // A frame queued for the link's task (which has not run yet: this
        // runtime has one thread) holds back an urgent one behind it.
        let mut sent = Vec::new();
        for i in 0..4u32 {
            let f = frame_of(i, 100);
            if i % 2 == 0 {
                a.try_send(SiteId(2), &f).unwrap();
            } else {
                a.try_send_now(SiteId(2), &f).unwrap();
            }
            sent.push((i, 100));
        }
        // Once the task has written them, urgent frames go straight to the
        // socket until, the peer reading nothing, its buffers fill and one
        // is taken only in part.
        let mut idle = false;
        for _ in 0..1000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let p = a
                .stats()
                .peers
                .into_iter()
                .find(|p| p.site == SiteId(2))
                .unwrap();
            if p.frames_sent == 4 {
                idle = true;
                break;
            }
        }
        assert!(idle, "the first frames were never written");
        let mut partial = false;
        for i in 4..68u32 {
            a.try_send_now(SiteId(2), &frame_of(i, big)).unwrap();
            sent.push((i, big));
            let p = a
                .stats()
                .peers
                .into_iter()
                .find(|p| p.site == SiteId(2))
                .unwrap();
            assert_eq!(
                p.frames_sent,
                u64::from(i) + 1,
                "each frame was begun on the socket"
            );
            if p.bytes_sent < 4 * 104 + (sent.len() as u64 - 4) * (big as u64 + 4) {
                partial = true;
                break;
            }
        }
        assert!(partial, "64 MiB went to a peer that reads nothing");
        let first = sent.len() as u32;
        for i in first..first + 40 {
            let len = if i % 3 == 0 {
                64 << 10
            } else {
                16 + i as usize
            };
            let f = frame_of(i, len);
            let r = if i % 2 == 0 {
                a.try_send_now(SiteId(2), &f)
            } else {
                a.try_send(SiteId(2), &f)
            };
            match r {
                Ok(()) => sent.push((i, len)),
                Err(SendError::Full) => {}
                Err(e) => panic!("frame {i}: {e:?}"),
            }
        }
        go_tx.send(sent.len()).unwrap();
        let got = timeout(WAIT, reader).await.unwrap().unwrap();
        let ids: Vec<u32> = got
            .iter()
            .map(|f| u32::from_le_bytes(f[..4].try_into().unwrap()))
            .collect();
        let want: Vec<u32> = sent.iter().map(|(i, _)| *i).collect();
        assert_eq!(ids, want, "frames arrive in the order they were sent");
        for ((i, len), f) in sent.iter().zip(&got) {
            assert_eq!(f.len(), *len, "frame {i} arrived whole");
            assert!(
                f[4..].iter().all(|&b| b == (*i % 251) as u8),
                "frame {i} intact"
            );
        }
        a.shutdown().await;
    }

    #[tokio::test]
    async fn frames_past_a_full_inbound_channel_are_dropped_and_counted() {
        let (a, _ach) = start(cfg("g", 1)).await;
        let mut c = cfg("g", 2);
        c.inbound_frames = 2;
        let (b, mut bch) = start(c).await;
        a.set_peer(SiteId(2), b.address());
        let mut at = a.clone();
        timeout(WAIT, async {
            while !at.is_connected(SiteId(2)) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        for i in 0..10u8 {
            at.send(SiteId(2), &[i, i]).unwrap();
        }
        assert_eq!(event(&mut bch).await, TransportEvent::InboundDropped);
        timeout(WAIT, async {
            while b.stats().inbound_dropped < 8 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(frame(&mut bch).await.frame, [0, 0]);
        assert_eq!(frame(&mut bch).await.frame, [1, 1]);
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test]
    async fn moving_and_removing_a_peer_reports_down() {
        let (a, mut ach) = start(cfg("g", 1)).await;
        let (b, _bch) = start(cfg("g", 2)).await;
        let (b2, mut b2ch) = start(cfg("g", 2)).await;
        a.set_peer(SiteId(2), b.address());
        expect_event(&mut ach, TransportEvent::Up(SiteId(2))).await;
        // Site 2 now lives at another address.
        a.set_peer(SiteId(2), b2.address());
        expect_event(&mut ach, TransportEvent::Down(SiteId(2))).await;
        expect_event(&mut ach, TransportEvent::Up(SiteId(2))).await;
        a.clone().send(SiteId(2), b"moved").unwrap();
        assert_eq!(frame(&mut b2ch).await.frame, b"moved");
        a.remove_peer(SiteId(2));
        expect_event(&mut ach, TransportEvent::Down(SiteId(2))).await;
        assert_eq!(
            a.clone().send(SiteId(2), b"gone"),
            Err(SendError::UnknownSite(SiteId(2)))
        );
        for t in [a, b, b2] {
            t.shutdown().await;
        }
    }
}
