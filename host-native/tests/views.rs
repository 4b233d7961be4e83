//! Views over real `shoal node` processes (R12): a group of three sites
//! and a fourth started with `--view --view-db orders`. The view applies
//! database "orders" only and refuses reads of "users"; it never acks or
//! votes; when the master is SIGKILLed the two others elect one of
//! themselves and the view follows it, never elected. A client names the
//! view as its `--peer` (S3).

use shoal_native::api::{Request, Response, Status};
use shoal_native::procs::{self, Cluster, Start};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_shoal");
const WAIT: Duration = Duration::from_secs(30);

/// The demo's node settings: fast heartbeats, elections and reconnects.
fn fast_args() -> Vec<String> {
    shoal_native::demo::node_args()
}

/// Keys on the master (node A).
async fn m_keys(c: &mut Cluster) -> u64 {
    c.status(0).await.expect("master status").keys
}

fn put(db: &str, key: &str, value: &str) -> Request {
    Request::Put {
        db: db.into(),
        key: key.into(),
        value: value.into(),
        sync: None,
    }
}

/// `orders-i` and `users-i` for every i in `range`, written on the
/// master (node 0): every write answered ok; the answers, in order.
async fn put_both(c: &mut Cluster, range: std::ops::Range<usize>) -> Vec<Response> {
    let mut out = Vec::new();
    for i in range {
        for db in ["orders", "users"] {
            let r = c
                .call(0, &put(db, &format!("{db}-{i}"), &format!("v{i}")))
                .await
                .unwrap();
            assert!(r.ok, "put {db}-{i}: {:?}", r.error);
            out.push(r);
        }
    }
    out
}

fn get(db: &str, key: &str) -> Request {
    Request::Get {
        db: db.into(),
        key: key.into(),
    }
}

/// Frames of message type `name` the node sent.
fn sent(st: &Status, name: &str) -> u64 {
    st.sent_by_type
        .iter()
        .find(|(n, _)| n == name)
        .map_or(0, |x| x.1)
}

/// A counter of the node's replication core.
fn counter(st: &Status, name: &str) -> u64 {
    st.counters
        .iter()
        .find(|(n, _)| n == name)
        .map_or(0, |x| x.1)
}

/// Wait until the view follows `master` with its whole log.
async fn view_caught_up(c: &mut Cluster, view: usize, master: usize) -> Status {
    let want = c.status(master).await.expect("master status");
    let master_id = want.id;
    let last = procs::parse_lsn(&want.last_lsn);
    c.wait_status(
        view,
        WAIT,
        "the view follows the master with its whole log",
        |s| {
            s.role == "client"
                && !s.synchronizing
                && s.master == Some(master_id)
                && procs::parse_lsn(&s.last_lsn) >= last
        },
    )
    .await
    .expect("the view caught up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_of_one_database_replicates_it_refuses_the_other_and_is_never_elected() {
    let mut c = Cluster::new(BIN, 4, fast_args()).unwrap();
    let view = 3;
    c.nodes[view].extra = vec!["--view".into(), "--view-db".into(), "orders".into()];
    // B asks the view for the log before the master (S3).
    let view_addr = c.nodes[view].listen.clone();
    c.nodes[1].extra = vec!["--peer".into(), view_addr];
    c.start_group(WAIT).await.unwrap();

    for r in put_both(&mut c, 0..20).await {
        assert!(
            r.commit.as_ref().is_some_and(|ci| ci.permanent),
            "{:?}",
            r.commit
        );
    }
    procs::converge(&mut c, &[0, 1, 2], WAIT).await.unwrap();
    let st = view_caught_up(&mut c, view, 0).await;
    assert!(st.view, "the view says it is one");
    assert_eq!(st.view_databases, vec!["orders"]);
    assert_eq!(st.keys, 20, "the view holds the orders only");
    assert_eq!(m_keys(&mut c).await, 40);
    // The master lists it as a view, never electable.
    let m = c.status(0).await.unwrap();
    let listed = m.sites.iter().find(|s| s.id == st.id).expect("listed");
    assert!(listed.view && !listed.electable, "{listed:?}");
    assert_eq!(m.nsites, 3, "a view is outside nsites");
    assert_ne!(m.digest, st.digest, "the view's digest covers orders only");
    // It answers reads of its database and refuses the other.
    let r = c.call(view, &get("orders", "orders-7")).await.unwrap();
    assert!(r.ok && r.value.as_deref() == Some("v7"), "{r:?}");
    let r = c.call(view, &get("users", "users-7")).await.unwrap();
    assert!(!r.ok, "a read of a database the view lacks: {r:?}");
    let e = r.error.unwrap_or_default();
    assert!(e.contains("does not replicate"), "{e}");

    // B, which names the view as its --peer, is cut off from the master,
    // falls behind, and once back fills the gap from the view (S3),
    // which stayed connected to it: the view serves the log of both
    // databases.
    procs::wait_connected(&mut c, &[1, view], WAIT)
        .await
        .unwrap();
    c.link(0, 1, true).await.unwrap();
    put_both(&mut c, 20..40).await;
    view_caught_up(&mut c, view, 0).await;
    c.link(0, 1, false).await.unwrap();
    let r = c.call(0, &put("users", "after-heal", "1")).await.unwrap();
    assert!(r.ok, "{:?}", r.error);
    let sts = procs::converge(&mut c, &[0, 1, 2], WAIT).await.unwrap();
    assert_eq!(sts[1].keys, 81, "B has both databases");
    let st = c.status(view).await.unwrap();
    assert!(
        counter(&st, "peer_served") > 0,
        "B caught up from its peer, the view: {:?}",
        st.counters
    );
    let r = c.call(1, &get("users", "users-39")).await.unwrap();
    assert_eq!(r.value.as_deref(), Some("v39"));

    // SIGKILL the master: B and C elect one of themselves.
    c.kill(0);
    let (newm, _, _) = procs::first_write(&c, &[1, 2], "orders-after", "x", WAIT)
        .await
        .expect("a new master takes a write");
    assert!(newm == 1 || newm == 2);
    let r = c
        .call(newm, &put("orders", "after-failover", "1"))
        .await
        .unwrap();
    assert!(r.ok, "{:?}", r.error);
    let st = view_caught_up(&mut c, view, newm).await;
    assert_eq!(st.role, "client", "the view is never elected");
    let r = c
        .call(view, &get("orders", "after-failover"))
        .await
        .unwrap();
    assert_eq!(r.value.as_deref(), Some("1"));
    // It never voted and never acknowledged anything.
    for kind in ["VOTE1", "VOTE2", "ACK"] {
        assert_eq!(
            sent(&st, kind),
            0,
            "the view sent {kind}: {:?}",
            st.sent_by_type
        );
    }
    // The old master comes back as a client; everyone agrees on the log.
    c.start(0, Start::Restart).unwrap();
    procs::converge(&mut c, &[0, 1, 2], WAIT).await.unwrap();
    let st = view_caught_up(&mut c, view, newm).await;
    assert_eq!(st.role, "client");
}
