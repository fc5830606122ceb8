//! The `disk_full` suite again, with every daemon on the threads io engine (tests/common picks
//! the engine from this target's name).

#[path = "disk_full.rs"]
mod suite;
