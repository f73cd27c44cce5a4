//! # natter-relay
//!
//! The Natter relay as a library, so that the desktop app can host a call on an embedded relay
//! and tests can start one in-process; `main.rs` is a thin command-line shell around it.
//!
//! - [`core`]: the sans-IO state machine (connection phases, rooms, forwarding decisions).
//! - [`server`]: the quinn I/O shell that drives it.
//! - [`identity`]: the TLS certificate — a self-signed one generated once and kept in the data
//!   directory (pinned by fingerprint in invites), or PEM files from a real CA.
//! - [`fresh_queue`]: the stale/queue rule for forwarded datagrams (late audio is dropped).
//! - [`udp_batch`]: batched UDP I/O (recvmmsg/GRO in, sendmmsg across destinations out).
//! - [`admission`]: connection slots, relay-wide and per address, taken at the handshake.
//! - [`stats`]: counters the shell keeps (datagrams forwarded and dropped by reason, …).

pub mod admission;
pub mod core;
pub mod fresh_queue;
pub mod identity;
pub mod logging;
pub mod server;
pub mod stats;

pub use identity::Identity;
pub use server::{RelayConfig, RelayHandle, start};
pub mod bucket;
pub mod config;
pub mod metrics;
pub mod token;
pub mod udp_batch;
