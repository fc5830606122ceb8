//! The `durability` suite again, with every daemon on the threads io engine (tests/common
//! picks the engine from this target's name).

#[path = "durability.rs"]
mod suite;
