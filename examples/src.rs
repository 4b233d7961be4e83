//! Small programs that embed shoal; see `examples/`. The bodies the
//! examples run live here, so the tests in `tests/` run them too.

pub mod channels;
pub mod embedded_group;
