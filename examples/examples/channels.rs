//! Message channels (W2) between three shoal sites inside one program:
//! `cargo run -p shoal-examples --example channels`. The story is in
//! `examples/channels.rs` (the library), which the tests run too.

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
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    match shoal_examples::channels::run(dir.path()).await {
        Ok(r) => {
            println!("C asked the master who it is: {:?}", text(&r.first_answer));
            for (from, parts) in &r.notes_at_b {
                let parts: Vec<String> = parts.iter().map(|p| text(p)).collect();
                println!("B's dispatch got a note from site {from}: {parts:?}");
            }
            for (from, parts) in &r.to_self {
                let parts: Vec<String> = parts.iter().map(|p| text(p)).collect();
                println!("the master's own dispatch got (from site {from}): {parts:?}");
            }
            match &r.without_dispatch {
                Ok(v) => println!("a site without a dispatch answered?! {:?}", text(v)),
                Err(e) => println!("a request to a site without a dispatch: {e}"),
            }
            println!(
                "after A handed mastership to B, the same channel answered: {:?}",
                text(&r.after_transfer)
            );
            println!(
                "on the closed channel: send_msg -> {:?}, send_request -> {:?}",
                r.after_close.0, r.after_close.1
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
