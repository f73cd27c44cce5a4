//! Several relays serving one community: the directory each relay keeps itself in.
//!
//! - [`directory`]: the pure part — what a relay writes (its record, the rooms it hosts
//!   members of), when (a heartbeat at a third of the TTL, at once on a room change), and
//!   what it does when Redis fails (retry, never block).
//! - [`store`]: the Redis shell that carries it out on a task of its own, and reads the
//!   directory back.
//!
//! - [`trunk`]: trunks between relays sharing a room (with a cluster secret).
//!
//! With no directory configured a relay runs exactly as a lone relay always has: nothing
//! here starts.

pub mod directory;
pub mod store;
pub mod trunk;

use std::time::Duration;

/// Default lifetime of a relay's directory entries: a relay that dies is gone from the
/// directory this long after its last heartbeat.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// How a relay joins a cluster's directory. (`Debug` leaves the URL out: it may hold the
/// Redis password.)
#[derive(Clone)]
pub struct DirectoryConfig {
    /// Redis URL: `redis://:password@127.0.0.1:6379` or `redis+unix:///run/redis/redis.sock`.
    pub url: String,
    /// This relay's id in the directory (default: the first 16 hex digits of its certificate
    /// fingerprint, which is unique and survives restarts).
    pub id: Option<String>,
    /// Region label for placement (`eu-west`, …).
    pub region: String,
    /// Lifetime of its entries; the heartbeat runs at a third of it.
    pub ttl: Duration,
}

impl std::fmt::Debug for DirectoryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryConfig")
            .field("id", &self.id)
            .field("region", &self.region)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl DirectoryConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            id: None,
            region: "default".into(),
            ttl: DEFAULT_TTL,
        }
    }
}
