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
pub mod storage;
pub mod transport;
