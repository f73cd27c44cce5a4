//! # natter: the Natter voice client
//!
//! One engine, several shells: the headless `natter call` (WAV files as microphone and
//! speaker), the desktop app ([`ui`]) and the tests all drive the same [`engine`]. See
//! `docs/ARCHITECTURE.md` for the map.
//!
//! The public modules are what the binary, the tests, the benchmarks and the examples use;
//! what only the library itself needs (`clock`, `history`, `nat`) is private.

pub mod apm;
pub mod audio;
pub mod call;
mod clock;
pub mod codec;
pub mod controller;
pub mod engine;
mod history;
pub mod host;
pub mod jitter;
pub mod latency_stages;
pub mod measure;
mod nat;
pub mod rate;
pub mod session;
pub mod settings;
pub mod transport;
pub mod ui;
pub mod vad;
