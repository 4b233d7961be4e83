//! The client API a `shoal node` serves on `--api`: one JSON object per
//! line in each direction over TCP, so `shoal put/get/status ...`, the demo,
//! the bench and a shell with `nc` all speak it.
//!
//! ```text
//! → {"op":"put","db":"default","key":"k","value":"v"}
//! ← {"ok":true,"commit":{"lsn":"[1][320]","generation":2,"permanent":true,"acks":1,"needed":1,"flushed":true}}
//! → {"op":"get","db":"default","key":"k"}
//! ← {"ok":true,"value":"v"}
//! ```
//!
//! Keys and values are UTF-8 strings on this API (the core takes any
//! bytes). A failed request answers `{"ok":false,"error":"..."}` with a
//! message meant for a person.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Longest request or response line accepted (bytes).
pub const MAX_LINE: usize = 1 << 20;

/// A request to a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Put one key: a commit on the master, forwarded from a client with
    /// `--forward-writes` (W1).
    Put {
        /// Database name.
        db: String,
        /// Key.
        key: String,
        /// Value.
        value: String,
        /// "sync" (default), "write-no-sync" or "no-sync".
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sync: Option<String>,
    },
    /// Read a key on this node.
    Get {
        /// Database name.
        db: String,
        /// Key.
        key: String,
    },
    /// Delete one key: a commit on the master, forwarded from a client with
    /// `--forward-writes` (W1).
    Del {
        /// Database name.
        db: String,
        /// Key.
        key: String,
    },
    /// Wait until this node has applied a commit (read-your-writes, R3).
    WaitApplied {
        /// The commit's LSN file.
        file: u32,
        /// The commit's LSN offset.
        offset: u32,
        /// The commit's generation.
        generation: u32,
        /// Milliseconds to wait.
        timeout_ms: u64,
    },
    /// The node's status (B5).
    Status,
    /// Start synchronising with the master (S2, `rep_sync`).
    Sync,
    /// Hold an election (`rep_elect`).
    Elect,
    /// Hand mastership to a site (E7; on the master).
    Transfer {
        /// The site to become master.
        site: u32,
    },
    /// Remove a site from the group (R7; on the master).
    Remove {
        /// The site to remove.
        site: u32,
    },
    /// Run writers inside this node (on the master), as an application
    /// linked with shoal would: `count` puts of `value_bytes`-byte values
    /// under keys `key_prefix` + a 15-digit number from `first`, spread
    /// over `writers` concurrent tasks. For `shoal bench`: the answer's
    /// `load` has the rate and latencies without the API's round trips.
    Load {
        /// Database name.
        db: String,
        /// Concurrent writers (1 to [`MAX_LOAD_WRITERS`]).
        writers: u32,
        /// Commits in all (1 to [`MAX_LOAD_COUNT`]).
        count: u64,
        /// Number of the first key.
        #[serde(default)]
        first: u64,
        /// Key prefix (the key is the prefix and a 15-digit number).
        key_prefix: String,
        /// Value size in bytes (at most [`MAX_LOAD_VALUE`]).
        value_bytes: u32,
        /// "sync" (default), "write-no-sync" or "no-sync".
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sync: Option<String>,
    },
    /// Drop all traffic with a peer, as if the network between them were
    /// cut (the demo's partitions); `block: false` heals it.
    Link {
        /// The peer's site id.
        site: u32,
        /// Cut (true) or heal (false).
        block: bool,
    },
    /// The node's status without the store digest (`digest` is empty):
    /// its cost does not grow with the store, so it can be polled while the
    /// node works (the bench polls a catching-up client with it).
    Progress,
    /// Send a message on a channel, fire-and-forget (W2). The answer's
    /// `site` is the site it went to.
    Msg {
        /// "master" or a site id.
        to: String,
        /// The message parts (at least one).
        parts: Vec<String>,
    },
    /// Send a request on a channel and wait for its response (W2): the
    /// answer's `response` is the one response part.
    #[serde(rename = "request")]
    ChannelRequest {
        /// "master" or a site id.
        to: String,
        /// The message parts (at least one).
        parts: Vec<String>,
        /// How long to wait (default: the node's channel-request timeout).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_ms: Option<u64>,
    },
    /// Make this connection the node's channel dispatch (W2) until it
    /// closes: the node answers `{"ok":true}`, then writes one line per
    /// message received, `{"ok":true,"message":{...}}`. A message with an
    /// `id` waits for a response: answer it with `respond` or `refuse` on
    /// this connection. Refused when the node has a dispatch already.
    Listen,
    /// On a `listen` connection: answer request `id` with one part.
    Respond {
        /// The request's `id` in the message line.
        id: u64,
        /// The response.
        part: String,
    },
    /// On a `listen` connection: refuse request `id` (the sender gets
    /// "no response").
    Refuse {
        /// The request's `id` in the message line.
        id: u64,
    },
}

/// A channel message written to a `listen` connection (W2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelMessage {
    /// The sending site (this node's own id for a master sending to the
    /// master).
    pub from: u32,
    /// Sent on a channel to the master.
    pub to_master: bool,
    /// The parts (UTF-8; other bytes are replaced).
    pub parts: Vec<String>,
    /// Set when the sender waits for a response: answer with `respond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
}

/// Most writers one `load` request runs.
pub const MAX_LOAD_WRITERS: u32 = 1024;
/// Most commits one `load` request makes.
pub const MAX_LOAD_COUNT: u64 = 10_000_000;
/// Largest value a `load` request writes.
pub const MAX_LOAD_VALUE: u32 = 64 << 10;

/// What a `load` request measured inside the node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadReport {
    /// Commits answered.
    pub commits: u64,
    /// Commits refused or failed (the first error is in `error`).
    pub failed: u64,
    /// Commits answered without meeting the ack policy.
    pub not_permanent: u64,
    /// First failure, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// From the first commit's start to the last answer (µs).
    pub elapsed_us: u64,
    /// Commit latency quantiles (µs).
    pub p50_us: u64,
    /// See `p50_us`.
    pub p99_us: u64,
    /// The slowest commit (µs): a pause of the site shows here.
    #[serde(default)]
    pub max_us: u64,
}

/// What a commit achieved.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitInfo {
    /// The commit's LSN, e.g. `"[1][320]"`.
    pub lsn: String,
    /// LSN file and offset, for `wait_applied`.
    pub file: u32,
    /// See `file`.
    pub offset: u32,
    /// The master generation that wrote it.
    pub generation: u32,
    /// The ack policy was met.
    pub permanent: bool,
    /// Acks received.
    pub acks: u32,
    /// Acks needed.
    pub needed: u32,
    /// Durable on the master's disk.
    pub flushed: bool,
    /// Made on a client and committed by the master (W1).
    #[serde(default)]
    pub forwarded: bool,
}

/// One known site in a status report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteStatus {
    /// Site id.
    pub id: u32,
    /// Its address.
    pub address: String,
    /// This node has a connection to it.
    pub connected: bool,
    /// It may become master.
    pub electable: bool,
    /// It is a view.
    pub view: bool,
    /// Highest LSN it acknowledged (as seen by this node when master).
    pub acked_lsn: String,
    /// Bytes of log it is behind this node's last LSN (0 when unknown).
    pub lag_bytes: u64,
    /// Traffic with it.
    pub bytes_sent: u64,
    /// Traffic with it.
    pub frames_sent: u64,
    /// Traffic with it.
    pub bytes_received: u64,
    /// Traffic with it.
    pub frames_received: u64,
    /// The link is cut by a `link` request.
    pub blocked: bool,
}

/// A node's status (B5).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// This site's id.
    pub id: u32,
    /// Its address.
    pub address: String,
    /// "master", "client" or "idle".
    pub role: String,
    /// The master it follows, if known.
    pub master: Option<u32>,
    /// Master generation.
    pub generation: u32,
    /// Election generation.
    pub egen: u32,
    /// Last LSN in the log.
    pub last_lsn: String,
    /// Highest durable LSN.
    pub flushed_lsn: String,
    /// The client is synchronising (reads wait).
    pub synchronizing: bool,
    /// Group size used for elections and acks.
    pub nsites: u32,
    /// Keys in the store.
    pub keys: u64,
    /// A digest of the whole store: equal on converged sites. On a view of
    /// some databases (R12), of those databases only: equal to the
    /// master's store restricted to them, not to the master's digest.
    pub digest: String,
    /// This site is a view (R12): it never votes, acks or becomes master.
    #[serde(default)]
    pub view: bool,
    /// The databases this view applies to its store; empty: all of them
    /// (or not a view). Reads of any other database are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub view_databases: Vec<String>,
    /// Every known site.
    pub sites: Vec<SiteStatus>,
    /// Counters of the replication core.
    pub counters: Vec<(String, u64)>,
    /// Frames received per message type.
    pub received_by_type: Vec<(String, u64)>,
    /// Frames sent per message type.
    pub sent_by_type: Vec<(String, u64)>,
    /// The site holds a group key (B4): every link it has proved, on
    /// both sides, that it holds the same one.
    #[serde(default)]
    pub authenticated: bool,
}

/// A node's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The request succeeded.
    pub ok: bool,
    /// Why not, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A read's value (`null` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A commit's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<CommitInfo>,
    /// The status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// A `load` request's measurements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadReport>,
    /// The site a channel message went to (W2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<u32>,
    /// A channel request's response part (W2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// A channel message, on a `listen` connection (W2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<ChannelMessage>,
}

impl Response {
    /// A failure.
    pub fn error(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }

    /// A bare success.
    pub fn ok() -> Self {
        Response {
            ok: true,
            ..Default::default()
        }
    }
}

/// Why a request to a node failed before it got an answer.
#[derive(Debug)]
pub enum ClientError {
    /// Could not connect or talk to the node.
    Io(String, std::io::Error),
    /// No answer in time.
    Timeout(String),
    /// The answer was not valid JSON.
    BadAnswer(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io(a, e) => write!(
                f,
                "cannot reach the node's API at {a}: {e} (is `shoal node --api {a}` running?)"
            ),
            ClientError::Timeout(a) => write!(f, "the node at {a} did not answer in time"),
            ClientError::BadAnswer(why) => write!(f, "the node's answer is not valid: {why}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// A connection to one node's API, for many requests.
pub struct Client {
    address: String,
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    timeout: Duration,
}

impl Client {
    /// Connect to a node's API address and subscribe as the node's message
    /// dispatch (W2, `listen`); the error says why the node refused.
    pub async fn subscribe(address: &str, timeout: Duration) -> Result<Client, String> {
        let mut c = Client::connect(address, timeout)
            .await
            .map_err(|e| e.to_string())?;
        let first = c.call(&Request::Listen).await.map_err(|e| e.to_string())?;
        if !first.ok {
            return Err(first
                .error
                .unwrap_or_else(|| "the node refused to subscribe".into()));
        }
        Ok(c)
    }

    /// Connect to a node's API address.
    pub async fn connect(address: &str, timeout: Duration) -> Result<Client, ClientError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| ClientError::Timeout(address.to_string()))?
            .map_err(|e| ClientError::Io(address.to_string(), e))?;
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        Ok(Client {
            address: address.to_string(),
            reader: BufReader::new(r),
            writer: w,
            timeout,
        })
    }

    /// How long [`Client::call`] waits for an answer from now on.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Send one request and wait for its answer.
    pub async fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.send(req).await?;
        tokio::time::timeout(self.timeout, self.read())
            .await
            .map_err(|_| ClientError::Timeout(self.address.clone()))?
    }

    /// Send one request without waiting for an answer (on a `listen`
    /// connection: `respond` and `refuse`).
    pub async fn send(&mut self, req: &Request) -> Result<(), ClientError> {
        let mut line =
            serde_json::to_string(req).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        line.push('\n');
        let addr = self.address.clone();
        let io = |e| ClientError::Io(addr.clone(), e);
        self.writer.write_all(line.as_bytes()).await.map_err(io)
    }

    /// Wait, without a time limit, for the node's next line (on a `listen`
    /// connection: the next message).
    pub async fn read(&mut self) -> Result<Response, ClientError> {
        let mut answer = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_line(&mut answer)
            .await
            .map_err(|e| ClientError::Io(self.address.clone(), e))?;
        if n == 0 {
            return Err(ClientError::Io(
                self.address.clone(),
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"),
            ));
        }
        serde_json::from_str(&answer).map_err(|e| ClientError::BadAnswer(e.to_string()))
    }
}

/// One request on a fresh connection.
pub async fn call(
    address: &str,
    req: &Request,
    timeout: Duration,
) -> Result<Response, ClientError> {
    Client::connect(address, timeout).await?.call(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_json_shape() {
        let r = Request::Put {
            db: "d".into(),
            key: "k".into(),
            value: "v".into(),
            sync: None,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"op":"put","db":"d","key":"k","value":"v"}"#
        );
        let back: Request = serde_json::from_str(r#"{"op":"link","site":3,"block":true}"#).unwrap();
        assert_eq!(
            back,
            Request::Link {
                site: 3,
                block: true
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"nope"}"#).is_err());
    }
}
