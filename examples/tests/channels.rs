//! The channels example's story runs and shows what it claims (W2): a
//! request on a channel to the master is answered by the master's
//! dispatch, and by the new master after a hand-over on the same channel;
//! a fire-and-forget note reaches its site's dispatch with its sender and
//! parts; the master sending to the master receives its own message; a
//! site without a dispatch answers NoDispatch; a closed channel refuses
//! every call.

use shoal_core::site::ChannelRequestError;
use shoal_native::node::{MsgError, RequestError};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_reach_sites_and_follow_the_master() {
    let dir = tempfile::tempdir().unwrap();
    let r = shoal_examples::channels::run(dir.path())
        .await
        .expect("the story runs");
    assert_eq!(r.first_answer, b"A");
    assert_eq!(r.after_transfer, b"B", "the channel followed the master");
    assert_eq!(
        r.notes_at_b,
        vec![(3, vec![b"note".to_vec(), b"from C".to_vec()])],
        "C (site 3) sent B one note of two parts"
    );
    assert_eq!(r.to_self, vec![(1, vec![b"to myself".to_vec()])]);
    assert_eq!(
        r.without_dispatch,
        Err(RequestError::Failed(ChannelRequestError::NoDispatch))
    );
    assert_eq!(r.after_close.0, Err(MsgError::Closed));
    assert_eq!(r.after_close.1, Err(RequestError::Closed));
}
