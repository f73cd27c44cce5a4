//! Counters the relay's I/O shell keeps. Plain atomics: the forwarding path bumps them without
//! locks, and any thread can take a consistent-enough snapshot for logs or metrics.

use crate::core::DropReason;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds (µs) of the relay-added forwarding delay histogram.
/// The default stale limit is 60 ms; the buckets above it show by how much a late hand-over
/// missed it.
pub const DELAY_BUCKETS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 60_000, 100_000, 250_000,
];

/// Why a handshake did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client never finished (lost packets, or a flood of Initials).
    Timeout,
    /// TLS failed (no common ALPN, bad client hello…).
    Tls,
    /// Refused by the relay (shutting down, too many connections).
    Refused,
    Other,
}

impl HandshakeFailure {
    pub const ALL: [Self; 4] = [Self::Timeout, Self::Tls, Self::Refused, Self::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Tls => "tls",
            Self::Refused => "refused",
            Self::Other => "other",
        }
    }

    pub fn of(e: &quinn::ConnectionError) -> Self {
        match e {
            quinn::ConnectionError::TimedOut => Self::Timeout,
            quinn::ConnectionError::TransportError(_)
            | quinn::ConnectionError::ConnectionClosed(_) => Self::Tls,
            quinn::ConnectionError::LocallyClosed | quinn::ConnectionError::CidsExhausted => {
                Self::Refused
            }
            _ => Self::Other,
        }
    }
}

#[derive(Debug, Default)]
pub struct RelayStats {
    pub connections_accepted: AtomicU64,
    handshake_failures: [AtomicU64; HandshakeFailure::ALL.len()],
    pub retries: AtomicU64,
    pub datagrams_in: AtomicU64,
    pub datagrams_forwarded: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// Waited in a subscriber's queue longer than the stale limit.
    pub dropped_stale: AtomicU64,
    /// quinn refused to queue a forwarded datagram (peer too small a limit, or it closed).
    pub datagrams_send_failed: AtomicU64,
    /// Sessions closed for breaking the protocol: a control message that failed to parse or
    /// was refused, no Hello within the hello timeout, no QUIC datagrams.
    pub control_errors: AtomicU64,
    /// Connections closed because they did not read their control stream (SlowReader).
    pub slow_readers: AtomicU64,
    /// Times a connection's control reader waited because it sent messages faster than its
    /// control rate.
    pub control_throttled: AtomicU64,
    /// Media datagrams that arrived over trunks from other relays (each once per trunk,
    /// however many listen behind this relay).
    pub trunk_datagrams_in: AtomicU64,
    delay_buckets: [AtomicU64; DELAY_BUCKETS_US.len() + 1],
    delay_sum_us: AtomicU64,
    /// UDP datagrams each data-plane loop read: how the kernel's SO_REUSEPORT hash spread the
    /// clients over the loops.
    loop_datagrams: Vec<AtomicU64>,
}

impl RelayStats {
    /// Counters for a relay with `loops` data-plane loops.
    pub fn with_loops(loops: usize) -> Self {
        Self {
            loop_datagrams: (0..loops).map(|_| AtomicU64::new(0)).collect(),
            ..Self::default()
        }
    }

    /// Loop `index` read `n` UDP datagrams.
    pub fn count_loop_datagrams(&self, index: usize, n: u64) {
        if let Some(counter) = self.loop_datagrams.get(index) {
            counter.fetch_add(n, Relaxed);
        }
    }

    pub fn count_drop(&self, reason: DropReason) {
        self.dropped[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Relaxed)
    }

    pub fn count_handshake_failure(&self, reason: HandshakeFailure) {
        self.handshake_failures[reason as usize].fetch_add(1, Relaxed);
    }

    /// Records one forwarded datagram's relay-added delay.
    pub fn observe_delay(&self, us: u64) {
        let i = DELAY_BUCKETS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(DELAY_BUCKETS_US.len());
        self.delay_buckets[i].fetch_add(1, Relaxed);
        self.delay_sum_us.fetch_add(us, Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let load = |a: &[AtomicU64]| a.iter().map(|v| v.load(Relaxed)).collect::<Vec<_>>();
        StatsSnapshot {
            connections_accepted: self.connections_accepted.load(Relaxed),
            handshake_failures: load(&self.handshake_failures),
            retries: self.retries.load(Relaxed),
            datagrams_in: self.datagrams_in.load(Relaxed),
            datagrams_forwarded: self.datagrams_forwarded.load(Relaxed),
            dropped: load(&self.dropped),
            dropped_stale: self.dropped_stale.load(Relaxed),
            datagrams_send_failed: self.datagrams_send_failed.load(Relaxed),
            control_errors: self.control_errors.load(Relaxed),
            slow_readers: self.slow_readers.load(Relaxed),
            control_throttled: self.control_throttled.load(Relaxed),
            trunk_datagrams_in: self.trunk_datagrams_in.load(Relaxed),
            delay_buckets: load(&self.delay_buckets),
            delay_sum_us: self.delay_sum_us.load(Relaxed),
            loop_datagrams: load(&self.loop_datagrams),
        }
    }
}

/// A point-in-time copy of [`RelayStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub connections_accepted: u64,
    /// Indexed by [`HandshakeFailure`].
    pub handshake_failures: Vec<u64>,
    pub retries: u64,
    pub datagrams_in: u64,
    pub datagrams_forwarded: u64,
    /// Indexed by [`DropReason`].
    pub dropped: Vec<u64>,
    pub dropped_stale: u64,
    pub datagrams_send_failed: u64,
    pub control_errors: u64,
    pub slow_readers: u64,
    pub control_throttled: u64,
    pub trunk_datagrams_in: u64,
    /// Counts per [`DELAY_BUCKETS_US`] bucket, then the overflow bucket.
    pub delay_buckets: Vec<u64>,
    pub delay_sum_us: u64,
    /// Indexed by data-plane loop.
    pub loop_datagrams: Vec<u64>,
}

impl StatsSnapshot {
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped.get(reason as usize).copied().unwrap_or(0)
    }
}

impl fmt::Display for StatsSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "connections={} handshake_failures={} datagrams_in={} forwarded={}",
            self.connections_accepted,
            self.handshake_failures.iter().sum::<u64>(),
            self.datagrams_in,
            self.datagrams_forwarded
        )?;
        for reason in DropReason::ALL {
            write!(f, " dropped_{}={}", reason.as_str(), self.dropped(reason))?;
        }
        write!(
            f,
            " dropped_stale={} send_failed={} control_errors={} slow_readers={} control_throttled={} trunk_in={}",
            self.dropped_stale,
            self.datagrams_send_failed,
            self.control_errors,
            self.slow_readers,
            self.control_throttled,
            self.trunk_datagrams_in
        )
    }
}
