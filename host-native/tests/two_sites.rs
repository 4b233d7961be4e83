//! Smoke test of the host pieces under the core's `Node`: two sites, each
//! with a `FileStorage` and a `TcpTransport` on loopback, form a group,
//! and a write on the master reaches the client and is acknowledged. The
//! glue here (events to `Node::connection`, frames to `Node::deliver`,
//! members to `set_peer`) is the shape the `shoal node` driver takes.

use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use shoal_core::node::{Node, Timer};
use shoal_core::site::Site;
use shoal_core::traits::Clock;
use shoal_core::{Config, Instant, SiteId};
use shoal_native::storage::FileStorage;
use shoal_native::transport::{TcpTransport, TransportChannels, TransportConfig, TransportEvent};
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Copy)]
struct SysClock(std::time::Instant);

impl Clock for SysClock {
    fn now(&self) -> Instant {
        Instant(self.0.elapsed().as_micros() as u64)
    }
}

struct TokioTimer(tokio::time::Instant);

impl Timer for TokioTimer {
    fn sleep_until(&self, at: Instant) -> impl Future<Output = ()> {
        tokio::time::sleep_until(self.0 + Duration::from_micros(at.0))
    }
}

type TestNode = Node<FileStorage, TcpTransport, SysClock, CriticalSectionRawMutex>;

struct Running {
    node: Arc<TestNode>,
    transport: TcpTransport,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

async fn start(home: &Path, origin: std::time::Instant) -> Running {
    let mut cfg = Config::default();
    cfg.timeouts.connection_retry = Duration::from_millis(100);
    let tcfg = TransportConfig::new("smoke", "127.0.0.1:0", SiteId(0), &cfg);
    let (transport, channels) = TcpTransport::bind(tcfg).await.unwrap();
    let clock = SysClock(origin);
    let storage = FileStorage::open(home).unwrap();
    let site = Site::open(cfg, transport.address(), storage, clock.now()).unwrap();
    let node = Arc::new(TestNode::new(site, transport.clone(), clock));
    let timer = TokioTimer(tokio::time::Instant::from_std(origin));
    let mut tasks = Vec::new();
    let n = node.clone();
    tasks.push(tokio::spawn(async move { n.run(&timer).await }));
    tasks.push(tokio::spawn(feed(node.clone(), channels)));
    tasks.push(tokio::spawn(follow_members(
        node.clone(),
        transport.clone(),
    )));
    Running {
        node,
        transport,
        tasks,
    }
}

/// Transport to node: link changes and frames.
async fn feed(node: Arc<TestNode>, mut ch: TransportChannels) {
    loop {
        tokio::select! {
            Some(ev) = ch.events.recv() => {
                let _ = match ev {
                    TransportEvent::Up(s) => node.connection(s, true),
                    TransportEvent::Down(s) => node.connection(s, false),
                    TransportEvent::ConnectFailed(s) => node.connect_failed(s),
                    TransportEvent::InboundDropped => Ok(()),
                };
            }
            Some(r) = ch.inbound.recv() => {
                let _ = node.deliver(r.frame);
            }
            else => return,
        }
    }
}

/// Node to transport: after every event, name every member as a peer.
async fn follow_members(node: Arc<TestNode>, transport: TcpTransport) {
    loop {
        let _event = node.next_event().await;
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
        if me.0 != 0 && transport.site() != me {
            transport.set_site(me);
        }
        for (id, address) in members {
            transport.set_peer(id, &address);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sites_replicate_a_write_over_tcp_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let origin = std::time::Instant::now();
    let a = start(&dir.path().join("a"), origin).await;
    let b = start(&dir.path().join("b"), origin).await;
    let wait = Duration::from_secs(20);

    a.node.create_group().await.unwrap();
    let id = tokio::time::timeout(wait, b.node.join(a.transport.address()))
        .await
        .expect("join answered in time")
        .unwrap();
    b.transport.set_site(id);

    let outcome = tokio::time::timeout(wait, a.node.put("db", b"key", b"value"))
        .await
        .expect("commit answered in time")
        .unwrap();
    assert!(outcome.permanent, "{outcome:?}");
    tokio::time::timeout(wait, async {
        loop {
            if let Ok(Some(v)) = b.node.get("db", b"key").await {
                assert_eq!(v, b"value");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the write reached the client");
    let sa = a.transport.stats();
    let to_b = sa.peers.iter().find(|p| p.site == id).unwrap();
    assert!(to_b.connected, "{sa:?}");
    assert!(to_b.frames_sent > 0 && to_b.frames_received > 0, "{sa:?}");

    for r in [a, b] {
        r.node.stop();
        r.transport.shutdown().await;
        for t in r.tasks {
            t.abort();
        }
    }
}
