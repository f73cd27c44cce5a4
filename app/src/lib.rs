//! # natter: the Natter voice client
//!
//! One engine, several shells: the headless `natter call` (WAV files as microphone and
//! speaker), the desktop app ([`ui`]) and the tests all drive the same [`engine`]. See
//! `docs/ARCHITECTURE.md` for the map.

pub mod apm;
pub mod audio;
pub mod call;
pub mod clock;
pub mod codec;
pub mod controller;
pub mod engine;
pub mod history;
pub mod jitter;
pub mod latency_stages;
pub mod measure;
pub mod rate;
pub mod session;
pub mod settings;
pub mod transport;
pub mod ui;
pub mod vad;
