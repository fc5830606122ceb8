//! Client-side helpers shared by the benchmark harness and the integration tests: a
//! small blocking HTTP/1.1 client with keep-alive ([`http`]), a multipart/form-data
//! encoder ([`multipart`]) and a generator of media payloads with real magic headers
//! ([`payload()`]). Everything here is plain `std` and blocking on purpose: a load
//! generator and a test must not share the daemon's runtime model, and a client thread
//! per connection keeps what is measured easy to reason about.

pub mod http;
pub mod multipart;
pub mod payload;
pub mod sigv4;

pub use http::{Connection, Response};
pub use multipart::Multipart;
pub use payload::{MediaKind, PayloadReader, blake3_hex, payload};
