//! A replication group inside one program: three sites, each with its own
//! home directory (file storage) and TCP port on loopback, started through
//! `shoal_native::node::start` — what an application does to embed a
//! site, minus the other two machines.
//!
//! The story: site A creates the group and B and C join; A commits; a put
//! made on client C is forwarded to A (W1) and readable on C when
//! answered; B waits for A's commit with its token (read-your-writes on
//! another site); the sites shut down cleanly.

use shoal_core::site::Role;
use shoal_native::node::{start, Running};
use shoal_native::procs::free_ports;
use shoal_native::settings::NodeArgs;
use std::path::Path;
use std::time::Duration;

/// What the story saw, for the program to print and the tests to check.
#[derive(Debug)]
pub struct Report {
    /// Role of each site once the group formed.
    pub roles: Vec<Role>,
    /// The value read on C right after its forwarded put was answered.
    pub read_on_c: Option<Vec<u8>>,
    /// C's put was committed by the master (not by C).
    pub forwarded: bool,
    /// The value read on B after waiting for A's commit.
    pub read_on_b: Option<Vec<u8>>,
}

/// Start site `name` with its home under `dir`, listening on `port`.
async fn site(dir: &Path, name: &str, port: u16, join: Option<u16>) -> Result<Running, String> {
    let args = NodeArgs {
        home: Some(dir.join(name)),
        listen: Some(format!("127.0.0.1:{port}")),
        create: join.is_none(),
        join: join.map(|p| format!("127.0.0.1:{p}")).into_iter().collect(),
        group: Some("embedded".into()),
        ack: Some("quorum".into()),
        forward_writes: true,
        ..NodeArgs::default()
    };
    start(args.resolve()?).await
}

/// Run the story with the sites' homes under `dir`.
pub async fn run(dir: &Path) -> Result<Report, String> {
    let ports = free_ports(3).map_err(|e| format!("no free ports: {e}"))?;
    let a = site(dir, "a", ports[0], None).await?;
    let b = site(dir, "b", ports[1], Some(ports[0])).await?;
    let c = site(dir, "c", ports[2], Some(ports[0])).await?;
    let mut roles = Vec::new();
    for s in [&a, &b, &c] {
        roles.push(s.node.with_site(|s| s.role()).await);
    }
    // A commit on the master; its token names it on every site.
    let on_a = a
        .node
        .put("greetings", b"from-a", b"hello")
        .await
        .map_err(|e| format!("put on A: {e}"))?;
    // A put on client C: forwarded to A, answered once C has it.
    let on_c = c
        .node
        .put("greetings", b"from-c", b"hi")
        .await
        .map_err(|e| format!("put on C: {e}"))?;
    let read_on_c = c
        .node
        .get("greetings", b"from-c")
        .await
        .map_err(|e| format!("get on C: {e:?}"))?;
    // Read-your-writes on B: wait until B has applied A's commit.
    b.node
        .txn_applied(on_a.token, Duration::from_secs(10))
        .await
        .map_err(|e| format!("B never applied A's commit: {e:?}"))?;
    let read_on_b = b
        .node
        .get("greetings", b"from-a")
        .await
        .map_err(|e| format!("get on B: {e:?}"))?;
    for s in [c, b, a] {
        s.shutdown().await;
    }
    Ok(Report {
        roles,
        read_on_c,
        forwarded: on_c.forwarded,
        read_on_b,
    })
}
