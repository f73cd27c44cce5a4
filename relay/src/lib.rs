//! # natter-relay
//!
//! The Natter relay as a library, so that the desktop app can host a call on an embedded relay
//! and tests can start one in-process; `main.rs` is a thin command-line shell around it.
//!
//! The public surface is chosen, not every module: [`start`] a relay from a [`RelayConfig`]
//! and hold its [`RelayHandle`]; its [`Identity`]; the config file ([`ConfigFile`]); the
//! sans-IO [`core`] for those who drive it themselves; the [`cluster`] of edges; [`token`]s;
//! [`udp_batch`]. Inside:
//!
//! - `core`: the sans-IO state machine (connection phases, rooms, forwarding decisions).
//! - `server`: configuration and start: sockets, the data plane's thread, the directory task,
//!   metrics, shutdown.
//! - `plane`: the data plane: one thread driving quinn-proto for every connection (clients and
//!   trunks), with batched UDP I/O.
//! - `identity`: the TLS certificate — a self-signed one generated once and kept in the data
//!   directory (pinned by fingerprint in invites), or PEM files from a real CA.
//! - `reset_key`: the QUIC stateless-reset key, kept in the data directory so a restarted
//!   relay resets its old connections at once.
//! - `cluster`: edges sharing rooms: the directory on Redis and the trunks between relays
//!   (only with a directory configured).
//! - `fresh_queue`: the stale/queue rule for forwarded datagrams (late audio is dropped).
//! - `udp_batch`: batched UDP I/O (recvmmsg/GRO in, sendmmsg across destinations out).
//! - `admission`: connection slots, relay-wide and per address, taken at the handshake.
//! - `stats`: counters the shell keeps (datagrams forwarded and dropped by reason, …).

mod admission;
mod bucket;
mod config;
mod control_queue;
mod control_stage;
mod fresh_queue;
mod identity;
mod logging;
mod metrics;
mod plane;
mod reset_key;
mod server;
mod stats;

/// Edges sharing rooms: the directory on Redis and the trunks between relays (the binary's
/// `[cluster]` settings, and the tests that read the directory).
pub mod cluster;
/// The sans-IO core: connection phases, rooms, forwarding decisions and limits, driven with
/// time passed in (the relay's shell drives it; so does the app's in-memory test harness).
pub mod core;
/// Certificate pinning for clients of a relay (the app, the load generator, trunks).
pub mod pin;
/// Access tokens: minting (the `token` subcommand) and verifying.
pub mod timers;
pub mod token;
/// Batched UDP I/O, for the data plane and the plain fan-out baseline.
pub mod udp_batch;

pub use config::{ConfigFile, resolve_secret};
pub use identity::{Identity, IdentityError};
pub use logging::EscapingWriter;
pub use reset_key::ResetKey;
pub use server::{
    Congestion, RECOMMENDED_UDP_BUFFER, RelayConfig, RelayError, RelayHandle, server_config, start,
    udp_buffer_warning, unix_micros,
};
pub use stats::{DELAY_BUCKETS_US, RelayStats, StatsSnapshot};
