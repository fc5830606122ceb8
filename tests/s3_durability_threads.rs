//! The `s3_durability` suite again, with every daemon on the threads io engine
//! (tests/common picks the engine from this target's name).

#[path = "s3_durability.rs"]
mod suite;
