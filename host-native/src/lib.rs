//! shoal's native host: a site's files ([`storage::FileStorage`]) and its
//! TCP links to the other sites ([`transport::TcpTransport`]). Neither
//! decides anything; they move bytes for `shoal-core` (ARCHITECTURE.md's
//! one rule).

#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod bench;
pub mod channel;
pub mod demo;
pub mod node;
pub mod procs;
pub mod settings;
pub mod spin;
pub mod storage;
pub mod transport;

/// `println!` for the command line's output that ignores a standard output
/// closed by its reader (`shoal config | head`): a reader that went away is
/// no reason to panic, nor to leave the demo's processes running.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
