//! Counters the relay's I/O shell keeps. Plain atomics: the forwarding path bumps them without
//! locks, and any thread can take a consistent-enough snapshot for logs or metrics.

use crate::core::DropReason;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct RelayStats {
    pub connections_accepted: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub datagrams_in: AtomicU64,
    pub datagrams_forwarded: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// quinn refused to queue a forwarded datagram (peer too small a limit, or it closed).
    pub datagrams_send_failed: AtomicU64,
    /// Control messages that failed to parse or broke the protocol.
    pub control_errors: AtomicU64,
}

impl RelayStats {
    pub fn count_drop(&self, reason: DropReason) {
        self.dropped[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Relaxed)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connections_accepted: self.connections_accepted.load(Relaxed),
            handshake_failures: self.handshake_failures.load(Relaxed),
            datagrams_in: self.datagrams_in.load(Relaxed),
            datagrams_forwarded: self.datagrams_forwarded.load(Relaxed),
            dropped_malformed: self.dropped(DropReason::Malformed),
            dropped_not_joined: self.dropped(DropReason::NotJoined),
            dropped_wrong_ssrc: self.dropped(DropReason::WrongSsrc),
            datagrams_send_failed: self.datagrams_send_failed.load(Relaxed),
            control_errors: self.control_errors.load(Relaxed),
        }
    }
}

/// A point-in-time copy of [`RelayStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub connections_accepted: u64,
    pub handshake_failures: u64,
    pub datagrams_in: u64,
    pub datagrams_forwarded: u64,
    pub dropped_malformed: u64,
    pub dropped_not_joined: u64,
    pub dropped_wrong_ssrc: u64,
    pub datagrams_send_failed: u64,
    pub control_errors: u64,
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connections={} handshake_failures={} datagrams_in={} forwarded={} \
             dropped_malformed={} dropped_not_joined={} dropped_wrong_ssrc={} send_failed={} \
             control_errors={}",
            self.connections_accepted,
            self.handshake_failures,
            self.datagrams_in,
            self.datagrams_forwarded,
            self.dropped_malformed,
            self.dropped_not_joined,
            self.dropped_wrong_ssrc,
            self.datagrams_send_failed,
            self.control_errors
        )
    }
}
