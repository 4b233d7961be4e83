//! shoal-tests: the deterministic simulator (issue 3, B3) and the tests
//! that span crates.
//!
//! - [`rng`]: the seeded random stream every choice comes from.
//! - [`disk`]: `SimDisk`, a `Storage` that loses unsynced bytes in a crash.
//! - [`net`]: `SimNet` (latency, loss, duplication, reordering, partitions,
//!   clogs) and the single event queue.
//! - [`sim`]: `Sim`, the host for N sites, and the scenario language.
//! - [`check`]: the invariants checked after every step.
//! - [`trace`]: the step-by-step trace.
//! - [`random`]: randomized fault runs over many seeds.
//!
//! Replay any failure with the `SHOAL_SEED=<seed>` the panic message gives.

pub mod check;
pub mod disk;
pub mod linearizability;
pub mod net;
pub mod random;
pub mod rng;
pub mod scenario;
pub mod sim;
pub mod trace;

pub use disk::{CrashMode, SimDisk};
pub use net::{LinkConfig, SimNet};
pub use rng::Rng;
pub use sim::{ms, InqueueStats, Sim, SimConfig, Start};
