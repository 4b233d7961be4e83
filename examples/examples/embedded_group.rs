//! Three shoal sites inside one program over loopback TCP and files:
//! `cargo run -p shoal-examples --example embedded_group`. The story is in
//! `examples/embedded_group.rs` (the library), which the tests run too.

use std::process::ExitCode;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot create a temporary directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    match shoal_examples::embedded_group::run(dir.path()).await {
        Ok(r) => {
            println!("roles once the group formed: {:?}", r.roles);
            println!(
                "C's put {} and read back on C at once: {:?}",
                if r.forwarded {
                    "was forwarded to the master"
                } else {
                    "was committed locally"
                },
                r.read_on_c.as_deref().map(String::from_utf8_lossy)
            );
            println!(
                "A's put read on B after waiting for its token: {:?}",
                r.read_on_b.as_deref().map(String::from_utf8_lossy)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
