//! shoal-tests: cross-crate tests, and (issue 3) the deterministic simulator.
