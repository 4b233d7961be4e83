//! Settings shared by the scenario tests (`tests/tests/*.rs`).

use shoal_core::config::{Config, Limits};

/// Elections are not what a scenario tests: the harness plays the
/// operator who promotes a master.
pub fn operator_mode(mut cfg: Config) -> Config {
    cfg.elections = false;
    cfg.step_down_without_majority = false;
    cfg
}

/// Limits with 2 KB segments, so a few records switch segments.
pub fn small_segments() -> Limits {
    Limits {
        max_record: 1024,
        max_key: 64,
        max_value: 512,
        max_frame: 4096,
        segment_size: 2048,
        max_channel_message: 1024,
        ..Limits::default()
    }
}
