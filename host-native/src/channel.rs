//! Message channels (W2) for applications that embed a site, and for the
//! client API.
//!
//! An application opens a [`Channel`] to one site or to the master with
//! [`Running::channel`](crate::node::Running::channel) and sends with
//! [`Channel::send_msg`] (fire-and-forget) or [`Channel::send_request`]
//! (waits for one response part or a timeout). A channel to the master
//! follows the master as it changes; a master sending on it receives its
//! own message. After [`Channel::close`] every call on the channel (and its
//! clones) fails with `Closed`.
//!
//! Each site has at most one dispatch, which receives every message sent
//! to it: a callback the application installs with
//! [`Running::set_dispatch`](crate::node::Running::set_dispatch), or, when
//! none is installed, one client API connection that subscribed with the
//! `listen` request (`shoal listen`). The callback gets a [`ReplyChannel`]
//! to answer on, the parts, and whether the sender waits for a response.
//! Without a dispatch a request is answered NoDispatch.
//!
//! The core decides everything (bounds, timeouts, who is master); this
//! module only moves messages between the node and the application.

use crate::api::{ChannelMessage, Request, Response, MAX_LINE};
use crate::node::SiteNode;
use shoal_core::site::{ChannelRequestError, ChannelSendError, ChannelTarget, Incoming, ReplyTo};
use shoal_core::wire::ChannelError;
use shoal_core::SiteId;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

/// Why `send_msg` (or a response) failed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MsgError {
    /// The channel was closed.
    Closed,
    /// The core refused to send it.
    Send(ChannelSendError),
}

impl fmt::Display for MsgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MsgError::Closed => write!(f, "the channel is closed"),
            MsgError::Send(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for MsgError {}

/// Why `send_request` got no response.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RequestError {
    /// The channel was closed.
    Closed,
    /// The request could not be sent or got no response.
    Failed(ChannelRequestError),
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RequestError::Closed => write!(f, "the channel is closed"),
            RequestError::Failed(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RequestError {}

/// A channel to one site or to the master. Clones share one open/closed
/// state.
#[derive(Clone)]
pub struct Channel {
    node: Arc<SiteNode>,
    target: ChannelTarget,
    closed: Arc<AtomicBool>,
}

impl Channel {
    pub(crate) fn new(node: Arc<SiteNode>, target: ChannelTarget) -> Channel {
        Channel {
            node,
            target,
            closed: Arc::default(),
        }
    }

    /// Where the channel sends.
    pub fn target(&self) -> ChannelTarget {
        self.target
    }

    /// Send a message of one or more parts, without waiting for anything
    /// (`send_msg`). Returns the site it went to now.
    pub async fn send_msg(&self, parts: &[&[u8]]) -> Result<SiteId, MsgError> {
        if self.is_closed() {
            return Err(MsgError::Closed);
        }
        self.node
            .channel_send(self.target, parts)
            .await
            .map_err(MsgError::Send)
    }

    /// Send a request and wait for its one response part (`send_request`),
    /// for `timeout` or, when `None`, the site's channel-request timeout.
    pub async fn send_request(
        &self,
        parts: &[&[u8]],
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, RequestError> {
        if self.is_closed() {
            return Err(RequestError::Closed);
        }
        self.node
            .channel_request(self.target, parts, timeout)
            .await
            .map_err(RequestError::Failed)
    }

    /// Close the channel: every later call on it, or on a clone, fails
    /// with `Closed`. Let calls under way finish first.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// The channel was closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// The channel a dispatch answers on: back to the site that sent the
/// message. When the sender waits for a response and the reply channel is
/// dropped unanswered, the sender gets NoResponse.
pub struct ReplyChannel {
    node: Arc<SiteNode>,
    from: SiteId,
    reply: Option<ReplyTo>,
    answered: AtomicBool,
}

impl ReplyChannel {
    fn new(node: Arc<SiteNode>, m: &Incoming) -> ReplyChannel {
        ReplyChannel {
            node,
            from: m.from,
            reply: m.reply,
            answered: AtomicBool::new(false),
        }
    }

    /// The site that sent the message.
    pub fn from(&self) -> SiteId {
        self.from
    }

    /// The sender waits for one response part.
    pub fn needs_response(&self) -> bool {
        self.reply.is_some()
    }

    /// Answer the request with one part. Fails with `Send(NoRequest)` when
    /// no response is wanted or one was given already.
    pub async fn respond(&self, part: &[u8]) -> Result<(), MsgError> {
        let Some(reply) = self.reply else {
            return Err(MsgError::Send(ChannelSendError::NoRequest));
        };
        if self.answered.swap(true, Ordering::AcqRel) {
            return Err(MsgError::Send(ChannelSendError::NoRequest));
        }
        let r = self.node.channel_respond(reply, part).await;
        if r.is_err() {
            self.answered.store(false, Ordering::Release);
        }
        r.map_err(MsgError::Send)
    }

    /// `send_msg` on the reply channel, as in the reference system: while
    /// a response is owed, a single part is that response; otherwise the
    /// parts go to the sender as a new message.
    pub async fn send_msg(&self, parts: &[&[u8]]) -> Result<(), MsgError> {
        if self.reply.is_some() && !self.answered.load(Ordering::Acquire) && parts.len() == 1 {
            return self.respond(parts[0]).await;
        }
        self.node
            .channel_send(ChannelTarget::Site(self.from), parts)
            .await
            .map(|_| ())
            .map_err(MsgError::Send)
    }

    /// Refuse the request: the sender gets NoResponse at once instead of
    /// waiting for its timeout. Dropping the reply channel unanswered does
    /// the same.
    pub async fn refuse(self) {
        if let Some(reply) = self.reply {
            if !self.answered.swap(true, Ordering::AcqRel) {
                self.node
                    .channel_refuse(reply, ChannelError::NoResponse)
                    .await;
            }
        }
    }
}

impl Drop for ReplyChannel {
    fn drop(&mut self) {
        let Some(reply) = self.reply else { return };
        if self.answered.swap(true, Ordering::AcqRel) {
            return;
        }
        let node = self.node.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                node.channel_refuse(reply, ChannelError::NoResponse).await;
            });
        }
    }
}

/// A dispatch callback: the channel to reply on, the parts, and whether a
/// response is wanted. It runs on the node's dispatch task: return quickly
/// (spawn a task to do slow work, moving the reply channel into it).
pub type DispatchFn = dyn Fn(ReplyChannel, Vec<Vec<u8>>, bool) + Send + Sync;

enum Handler {
    Callback(Arc<DispatchFn>),
    /// A `listen` API connection: its number and its queue.
    Listener(u64, mpsc::Sender<Incoming>),
}

/// Who receives this node's channel messages.
#[derive(Default)]
pub struct Dispatch {
    handler: Mutex<Option<Handler>>,
    listeners: AtomicU64,
}

impl Dispatch {
    fn installed(&self) -> bool {
        self.handler.lock().map(|h| h.is_some()).unwrap_or(false)
    }

    /// Install (or with `None` remove) the application's callback.
    pub(crate) async fn set_callback(&self, node: &SiteNode, f: Option<Arc<DispatchFn>>) {
        if let Ok(mut h) = self.handler.lock() {
            *h = f.map(Handler::Callback);
        }
        node.set_channel_dispatch(self.installed()).await;
    }

    /// Subscribe a listener; None when a dispatch is installed already.
    async fn subscribe(&self, node: &SiteNode) -> Option<(u64, mpsc::Receiver<Incoming>)> {
        let (tx, rx) = mpsc::channel(LISTEN_QUEUE);
        let n = self.listeners.fetch_add(1, Ordering::Relaxed) + 1;
        {
            let mut h = self.handler.lock().ok()?;
            if h.is_some() {
                return None;
            }
            *h = Some(Handler::Listener(n, tx));
        }
        node.set_channel_dispatch(true).await;
        Some((n, rx))
    }

    async fn unsubscribe(&self, node: &SiteNode, n: u64) {
        if let Ok(mut h) = self.handler.lock() {
            if matches!(&*h, Some(Handler::Listener(x, _)) if *x == n) {
                *h = None;
            }
        }
        node.set_channel_dispatch(self.installed()).await;
    }
}

/// Messages a `listen` connection may have queued before more are refused.
const LISTEN_QUEUE: usize = 256;

/// Requests a `listen` connection may leave unanswered; past it the oldest
/// is refused (NoResponse).
const LISTEN_OWED: usize = 1024;

/// The node's dispatch task: hand every channel message to the dispatch.
pub(crate) async fn dispatch_loop(node: Arc<SiteNode>, dispatch: Arc<Dispatch>) {
    loop {
        let m = node.next_message().await;
        enum To {
            Callback(Arc<DispatchFn>),
            Listener(mpsc::Sender<Incoming>),
            Nobody,
        }
        let to = match dispatch.handler.lock().as_deref() {
            Ok(Some(Handler::Callback(f))) => To::Callback(f.clone()),
            Ok(Some(Handler::Listener(_, tx))) => To::Listener(tx.clone()),
            _ => To::Nobody,
        };
        match to {
            To::Callback(f) => {
                let reply = ReplyChannel::new(node.clone(), &m);
                let needs = m.reply.is_some();
                f(reply, m.parts, needs);
            }
            To::Listener(tx) => {
                if let Err(e) = tx.try_send(m) {
                    let m = match e {
                        mpsc::error::TrySendError::Full(m)
                        | mpsc::error::TrySendError::Closed(m) => m,
                    };
                    if let Some(r) = m.reply {
                        node.channel_refuse(r, ChannelError::NoResponse).await;
                    }
                }
            }
            To::Nobody => {
                if let Some(r) = m.reply {
                    node.channel_refuse(r, ChannelError::NoDispatch).await;
                }
            }
        }
    }
}

/// Parse a channel target: "master" or a site id.
pub fn parse_target(s: &str) -> Result<ChannelTarget, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("master") {
        return Ok(ChannelTarget::Master);
    }
    t.parse::<u32>()
        .ok()
        .filter(|&n| n != 0)
        .map(|n| ChannelTarget::Site(SiteId(n)))
        .ok_or_else(|| {
            format!("{s:?} is not a channel target: give a site id (1, 2, ...) or \"master\"")
        })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The `msg` API request.
pub(crate) async fn api_msg(node: &Arc<SiteNode>, to: &str, parts: &[String]) -> Response {
    let target = match parse_target(to) {
        Ok(t) => t,
        Err(e) => return Response::error(e),
    };
    let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    match Channel::new(node.clone(), target).send_msg(&parts).await {
        Ok(site) => Response {
            ok: true,
            site: Some(site.0),
            ..Default::default()
        },
        Err(e) => Response::error(e.to_string()),
    }
}

/// The `request` API request.
pub(crate) async fn api_request(
    node: &Arc<SiteNode>,
    to: &str,
    parts: &[String],
    timeout_ms: Option<u64>,
) -> Response {
    let target = match parse_target(to) {
        Ok(t) => t,
        Err(e) => return Response::error(e),
    };
    let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    let timeout = timeout_ms.map(Duration::from_millis);
    match Channel::new(node.clone(), target)
        .send_request(&parts, timeout)
        .await
    {
        Ok(part) => Response {
            ok: true,
            response: Some(text(&part)),
            ..Default::default()
        },
        Err(e) => Response::error(e.to_string()),
    }
}

async fn write_line(w: &mut OwnedWriteHalf, r: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_string(r).unwrap_or_else(|_| "{\"ok\":false}".into());
    out.push('\n');
    w.write_all(out.as_bytes()).await
}

/// A `listen` API connection: this connection becomes the node's dispatch
/// until it closes. Every message is written as a line
/// `{"ok":true,"message":{...}}`; the client answers a request (one with an
/// `id`) with `{"op":"respond","id":N,"part":"..."}` or refuses it with
/// `{"op":"refuse","id":N}`. Nothing is written back for those unless they
/// fail (`{"ok":false,"error":"..."}`).
pub(crate) async fn listen(
    r: BufReader<OwnedReadHalf>,
    mut w: OwnedWriteHalf,
    node: Arc<SiteNode>,
    dispatch: Arc<Dispatch>,
) -> std::io::Result<()> {
    let Some((me, mut rx)) = dispatch.subscribe(&node).await else {
        return write_line(
            &mut w,
            &Response::error(
                "this node already has a dispatch (another listener, or the embedding application's callback)",
            ),
        )
        .await;
    };
    // The client's lines are read on a task of their own, so a line is
    // never cut in two by a message to write.
    let (lines_tx, lines) = mpsc::channel(16);
    let reader = tokio::spawn(read_lines(r, lines_tx));
    let result = listen_loop(lines, &mut w, &node, &mut rx).await;
    reader.abort();
    dispatch.unsubscribe(&node, me).await;
    // Requests still queued for this listener are refused now.
    rx.close();
    while let Ok(m) = rx.try_recv() {
        if let Some(reply) = m.reply {
            node.channel_refuse(reply, ChannelError::NoDispatch).await;
        }
    }
    result
}

/// Read the client's request lines (each at most `MAX_LINE` bytes) until it
/// closes the connection.
async fn read_lines(mut r: BufReader<OwnedReadHalf>, tx: mpsc::Sender<String>) {
    loop {
        let mut line = String::new();
        match (&mut r).take(MAX_LINE as u64).read_line(&mut line).await {
            Ok(n) if n > 0 => {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
            _ => return,
        }
    }
}

async fn listen_loop(
    mut lines: mpsc::Receiver<String>,
    w: &mut OwnedWriteHalf,
    node: &Arc<SiteNode>,
    rx: &mut mpsc::Receiver<Incoming>,
) -> std::io::Result<()> {
    write_line(w, &Response::ok()).await?;
    // Requests handed to the client and not answered yet, by the number
    // the client sees.
    let mut owed: BTreeMap<u64, ReplyChannel> = BTreeMap::new();
    let mut next = 0u64;
    loop {
        tokio::select! {
            m = rx.recv() => {
                let Some(m) = m else { return Ok(()) };
                let id = m.reply.map(|_| {
                    next += 1;
                    next
                });
                let msg = ChannelMessage {
                    from: m.from.0,
                    to_master: m.to_master,
                    parts: m.parts.iter().map(|p| text(p)).collect(),
                    id,
                };
                if let Some(id) = id {
                    owed.insert(id, ReplyChannel::new(node.clone(), &m));
                    if owed.len() > LISTEN_OWED {
                        // Dropping the oldest refuses it.
                        owed.pop_first();
                    }
                }
                write_line(w, &Response { ok: true, message: Some(msg), ..Default::default() }).await?;
            }
            line = lines.recv() => {
                let Some(line) = line else { return Ok(()) };
                let req = serde_json::from_str::<Request>(&line);
                let err = match req {
                    Ok(Request::Respond { id, part }) => match owed.remove(&id) {
                        Some(reply) => reply.respond(part.as_bytes()).await.err().map(|e| e.to_string()),
                        None => Some(format!("no request {id} is waiting for a response")),
                    },
                    Ok(Request::Refuse { id }) => match owed.remove(&id) {
                        Some(reply) => {
                            reply.refuse().await;
                            None
                        }
                        None => Some(format!("no request {id} is waiting for a response")),
                    },
                    Ok(_) => Some("a listening connection takes only respond and refuse requests".into()),
                    Err(e) => Some(format!("bad request: {e}")),
                };
                if let Some(e) = err {
                    write_line(w, &Response::error(e)).await?;
                }
            }
        }
    }
}
