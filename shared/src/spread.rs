//! The spread of recent delays: how much a path's delay varies, from a handful of timed
//! messages. The client measures its round trips to the relay with it (pings), the relay each
//! client's uplink (the same pings' one-way transit, whose unknown clock offset cancels out of
//! a spread); listeners start a new stream's jitter buffer from both
//! ([`crate::control::Message::UplinkSpread`]).

use std::collections::VecDeque;

/// Delays remembered: a join train's and the next periodic pings' (~16 s at one per 2 s), so
/// the estimate follows a path that changes.
const SAMPLES: usize = 16;
/// Delays needed before the spread is trusted.
pub const MIN_SAMPLES: usize = 6;

/// The second-highest of the recent delays less the lowest: one message held back (a
/// retransmission of the reliable control stream, a scheduling hiccup) is not the path's
/// jitter. Bounded memory, whatever a peer sends.
#[derive(Debug, Default, Clone)]
pub struct Spread {
    samples: VecDeque<f64>,
}

impl Spread {
    /// Adds a delay (ms, any fixed offset); non-finite values are ignored.
    pub fn push(&mut self, delay_ms: f64) {
        if !delay_ms.is_finite() {
            return;
        }
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(delay_ms);
    }

    /// The spread in ms, once [`MIN_SAMPLES`] delays are in.
    pub fn spread_ms(&self) -> Option<f64> {
        if self.samples.len() < MIN_SAMPLES {
            return None;
        }
        let mut sorted: Vec<f64> = self.samples.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        Some(sorted[sorted.len() - 2] - sorted[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spread_needs_enough_delays_and_ignores_one_held_back() {
        let mut s = Spread::default();
        for d in [20.0, 21.0, 20.5, 22.0, 20.2] {
            s.push(d);
        }
        assert_eq!(s.spread_ms(), None);
        // One message waited for a retransmission: 250 ms.
        s.push(250.0);
        assert_eq!(s.spread_ms(), Some(2.0));
        s.push(f64::NAN);
        assert_eq!(s.spread_ms(), Some(2.0));
    }

    #[test]
    fn an_offset_does_not_matter_and_old_delays_are_forgotten() {
        let mut s = Spread::default();
        for i in 0..SAMPLES {
            s.push(-1.7e12 + if i % 2 == 0 { 10.0 } else { 60.0 });
        }
        assert_eq!(s.spread_ms(), Some(50.0));
        for _ in 0..SAMPLES {
            s.push(30.0);
        }
        assert_eq!(s.spread_ms(), Some(0.0));
    }
}
