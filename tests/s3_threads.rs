//! The `s3` suite again, with every daemon on the threads io engine (tests/common picks
//! the engine from this target's name).

#[path = "s3.rs"]
mod suite;
