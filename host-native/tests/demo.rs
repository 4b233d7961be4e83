//! `shoal demo` plays its whole story with real `shoal node` processes
//! (5 sites) and every check holds.

use shoal_native::demo::{run_with_binary, DemoArgs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_to_completion_and_every_check_holds() {
    let args = DemoArgs {
        sites: 5,
        json: false,
    };
    let ok = run_with_binary(args, env!("CARGO_BIN_EXE_shoal")).await;
    assert_eq!(ok, Ok(true), "the demo failed (see its output above)");
}
