//! The embedded-group example's story runs and shows what it claims: one
//! master and two clients, a put made on a client forwarded to the master
//! and readable there at once (W1), and read-your-writes on another site
//! through a commit token (R3).

use shoal_core::site::Role;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sites_in_one_program_replicate_and_forward() {
    let dir = tempfile::tempdir().unwrap();
    let r = shoal_examples::embedded_group::run(dir.path())
        .await
        .expect("the story runs");
    assert_eq!(r.roles, [Role::Master, Role::Client, Role::Client]);
    assert!(r.forwarded, "C's put was not forwarded");
    assert_eq!(r.read_on_c.as_deref(), Some(&b"hi"[..]));
    assert_eq!(r.read_on_b.as_deref(), Some(&b"hello"[..]));
}
