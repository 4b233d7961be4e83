//! shoal-core: the protocol and log-format core of shoal.
//!
//! Everything here is `no_std` + `alloc`, deterministic, and bounded by
//! [`Limits`]. Hosts (native, wasm, a microcontroller) move bytes and time;
//! this crate decides what the bytes mean.
//!
//! - [`log`]: the on-disk record format, segment writer and reader, recovery.
//! - [`wire`]: the framed, versioned message format sites exchange.
//! - [`config`]: every replication knob, with the reference system's defaults.
//! - [`traits`]: `Storage`, `Transport` and `Clock`, which hosts implement.
//! - [`mem`]: an in-memory `Storage` for devices without a file system.
//!
//! The byte-by-byte description of both formats is `FORMAT.md` beside this
//! crate's `Cargo.toml`.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

pub mod config;
pub mod crc;
pub mod describe;
pub mod ids;
pub mod log;
pub mod mem;
pub mod meta;
pub mod node;
pub mod site;
pub mod snapshot;
pub mod store;
pub mod traits;
pub mod wire;

pub use config::{AckPolicy, Config, ConfigError, Durability, Limits, Timeouts};
pub use ids::{CommitToken, ElectionGen, Generation, Instant, Lsn, SiteId};
