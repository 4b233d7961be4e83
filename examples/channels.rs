//! Message channels (W2) between three sites inside one program, each with
//! its own home directory and loopback port, started through
//! `shoal_native::node::start`.
//!
//! The story: every site installs a dispatch that answers requests with
//! its name and records plain messages. Client C opens a channel to "the
//! master" and asks who it is (A answers); C sends a fire-and-forget note
//! to B; the master sends to "the master" and its own dispatch receives
//! it; a request to a site without a dispatch gets NoDispatch; A hands
//! mastership to B, and the same channel of C now reaches B; C closes the
//! channel, and every later call on it fails with `Closed`.

use shoal_core::site::{ChannelRequestError, ChannelSendError, ChannelTarget, Role};
use shoal_native::node::{start, Channel, MsgError, RequestError, Running};
use shoal_native::procs::free_ports;
use shoal_native::settings::NodeArgs;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the story saw, for the program to print and the tests to check.
#[derive(Debug)]
pub struct Report {
    /// The answer to C's request on its master channel, A master.
    pub first_answer: Vec<u8>,
    /// The plain messages B's dispatch got: (sender, parts).
    pub notes_at_b: Vec<(u32, Vec<Vec<u8>>)>,
    /// The master's own message came back to its dispatch: (sender, parts).
    pub to_self: Vec<(u32, Vec<Vec<u8>>)>,
    /// A request to a site without a dispatch.
    pub without_dispatch: Result<Vec<u8>, RequestError>,
    /// The answer on the same channel once B is master.
    pub after_transfer: Vec<u8>,
    /// A send and a request on the closed channel.
    pub after_close: (Result<(), MsgError>, Result<Vec<u8>, RequestError>),
}

type Log = Arc<Mutex<Vec<(u32, Vec<Vec<u8>>)>>>;

/// Start site `name` with its home under `dir`, listening on `port`.
async fn site(dir: &Path, name: &str, port: u16, join: Option<u16>) -> Result<Running, String> {
    let args = NodeArgs {
        home: Some(dir.join(name)),
        listen: Some(format!("127.0.0.1:{port}")),
        create: join.is_none(),
        join: join.map(|p| format!("127.0.0.1:{p}")).into_iter().collect(),
        group: Some("channels".into()),
        ack: Some("quorum".into()),
        ..NodeArgs::default()
    };
    start(args.resolve()?).await
}

/// Install a dispatch on `s` that answers requests with `name` and records
/// plain messages in `log`.
async fn dispatch(s: &Running, name: &'static str, log: Log) {
    s.set_dispatch(move |reply, parts, needs_response| {
        if needs_response {
            // Answer on a task of its own: the dispatch returns at once.
            tokio::spawn(async move {
                let _ = reply.send_msg(&[name.as_bytes()]).await;
            });
        } else if let Ok(mut l) = log.lock() {
            l.push((reply.from().0, parts));
        }
    })
    .await;
}

async fn wait_master(s: &Running, want: u32) -> Result<(), String> {
    for _ in 0..500 {
        let m = s.node.with_site(|x| x.master()).await;
        if m.map(|m| m.0) == Some(want) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!("site {want} never became the master"))
}

/// Send a request on `ch`, asking again while the master is not reachable
/// yet or is changing hands.
async fn ask(ch: &Channel, question: &[u8]) -> Result<Vec<u8>, String> {
    let mut last = String::new();
    for _ in 0..100 {
        match ch
            .send_request(&[question], Some(Duration::from_secs(5)))
            .await
        {
            Ok(r) => return Ok(r),
            Err(RequestError::Failed(
                e @ (ChannelRequestError::MasterChanged
                | ChannelRequestError::NotMaster
                | ChannelRequestError::Send(_)),
            )) => {
                last = e.to_string();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                return Err(format!(
                    "request {:?}: {e}",
                    String::from_utf8_lossy(question)
                ))
            }
        }
    }
    Err(format!(
        "request {:?}: {last}",
        String::from_utf8_lossy(question)
    ))
}

/// Send a request on `ch`, asking again while its site is not reachable
/// yet: right after a site starts, its links to the others are still
/// forming, and a message may find no connection (Unreachable, at once)
/// or be lost with a connection that was just replaced (no answer).
async fn request(ch: &Channel, question: &[u8]) -> Result<Vec<u8>, RequestError> {
    for _ in 0..40 {
        match ch
            .send_request(&[question], Some(Duration::from_millis(500)))
            .await
        {
            Err(RequestError::Failed(
                ChannelRequestError::Send(ChannelSendError::Unreachable(_))
                | ChannelRequestError::Timeout,
            )) => tokio::time::sleep(Duration::from_millis(25)).await,
            r => return r,
        }
    }
    ch.send_request(&[question], None).await
}

/// Run the story with the sites' homes under `dir`.
pub async fn run(dir: &Path) -> Result<Report, String> {
    let ports = free_ports(3).map_err(|e| format!("no free ports: {e}"))?;
    let a = site(dir, "a", ports[0], None).await?;
    let b = site(dir, "b", ports[1], Some(ports[0])).await?;
    let c = site(dir, "c", ports[2], Some(ports[0])).await?;
    let (log_a, log_b, log_c): (Log, Log, Log) = Default::default();
    dispatch(&a, "A", log_a.clone()).await;
    dispatch(&b, "B", log_b.clone()).await;
    let id_a = a.node.with_site(|s| s.id()).await;
    let id_b = b.node.with_site(|s| s.id()).await;
    let id_c = c.node.with_site(|s| s.id()).await;
    wait_master(&c, id_a.0).await?;

    // C asks the master who it is. Right after a site starts, its links
    // to the others may still be forming: a send the host cannot make yet
    // fails at once with Unreachable, and the application retries.
    let to_master = c.channel(ChannelTarget::Master);
    let first_answer = request(&to_master, b"who is master?")
        .await
        .map_err(|e| format!("C's request to the master: {e}"))?;
    request(&c.channel(ChannelTarget::Site(id_b)), b"are you there?")
        .await
        .map_err(|e| format!("C's request to B: {e}"))?;
    // A note from C to B, fire-and-forget.
    c.channel(ChannelTarget::Site(id_b))
        .send_msg(&[b"note", b"from C"])
        .await
        .map_err(|e| format!("C's note to B: {e}"))?;
    // The master sends to the master: its own dispatch gets it.
    a.channel(ChannelTarget::Master)
        .send_msg(&[b"to myself"])
        .await
        .map_err(|e| format!("A's message to the master: {e}"))?;
    // C has no dispatch: a request to it is refused at once.
    let without_dispatch = request(&a.channel(ChannelTarget::Site(id_c)), b"anyone?").await;

    // A hands mastership to B; the same channel of C follows.
    a.node
        .transfer_master(id_b)
        .await
        .map_err(|e| format!("transfer to B: {e}"))?;
    wait_master(&c, id_b.0).await?;
    let after_transfer = ask(&to_master, b"who is master now?").await?;
    if b.node.with_site(|s| s.role()).await != Role::Master {
        return Err("B is not master after the transfer".into());
    }

    to_master.close();
    let after_close = (
        to_master.send_msg(&[b"late"]).await.map(|_| ()),
        to_master.send_request(&[b"late"], None).await,
    );
    // Give the note and the master's own message time to arrive.
    for _ in 0..100 {
        if !log_b.lock().map(|l| l.is_empty()).unwrap_or(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let notes_at_b = log_b.lock().map(|l| l.clone()).unwrap_or_default();
    let to_self = log_a.lock().map(|l| l.clone()).unwrap_or_default();
    drop(log_c);
    for s in [c, b, a] {
        s.shutdown().await;
    }
    Ok(Report {
        first_answer,
        notes_at_b,
        to_self,
        without_dispatch,
        after_transfer,
        after_close,
    })
}
