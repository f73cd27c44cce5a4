//! Whether the edge we are on is still there: a pure watchdog over the count of UDP
//! datagrams received on the connection, which the shell reads from quinn's statistics a few
//! times a second.
//!
//! QUIC's idle timeout (6 s for clients) is right for a lone relay — there is nowhere else to
//! go, and a bad few seconds of Wi-Fi should not cost a rejoin — but far too slow for a
//! cluster, where another edge is ready: the target is audio back within 3 s of an
//! edge's crash. On an edge connection keep-alives go out every
//! [`crate::transport::KEEP_ALIVE`] of silence and the relay acknowledges them, so
//! even in a silent room something arrives at least that often; [`SILENCE_LIMIT`] without
//! anything is five keep-alives in a row unanswered.

use std::time::{Duration, Instant};

/// How long an edge may stay silent before the session moves to another.
pub const SILENCE_LIMIT: Duration = Duration::from_millis(1250);

/// How often the shell reads the counter.
pub const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Watches one connection's received-datagram counter.
#[derive(Debug, Clone)]
pub struct Liveness {
    count: u64,
    changed_at: Instant,
}

impl Liveness {
    /// A connection that just opened at `now` with `count` datagrams received.
    pub fn new(count: u64, now: Instant) -> Self {
        Self {
            count,
            changed_at: now,
        }
    }

    /// The counter read `count` at `now`: how long the edge has been silent, if longer than
    /// [`SILENCE_LIMIT`].
    pub fn observe(&mut self, count: u64, now: Instant) -> Option<Duration> {
        if count != self.count {
            self.count = count;
            self.changed_at = now;
            return None;
        }
        let silent = now.saturating_duration_since(self.changed_at);
        (silent >= SILENCE_LIMIT).then_some(silent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_past_the_limit_is_reported_and_any_datagram_resets_it() {
        let t0 = Instant::now();
        let mut live = Liveness::new(10, t0);
        let mut count = 10;
        // Keep-alive acknowledgements every 250 ms: never silent.
        for i in 1..=20u32 {
            if i % 3 == 0 {
                count += 1;
            }
            assert_eq!(live.observe(count, t0 + CHECK_EVERY * i), None);
        }
        let quiet_from = t0 + CHECK_EVERY * 18;
        assert_eq!(live.observe(count, quiet_from + SILENCE_LIMIT / 2), None);
        assert_eq!(
            live.observe(count, quiet_from + SILENCE_LIMIT),
            Some(SILENCE_LIMIT)
        );
        assert_eq!(
            live.observe(count + 1, quiet_from + SILENCE_LIMIT * 2),
            None
        );
    }
}
