//! Small programs that embed shoal; see `examples/`.
