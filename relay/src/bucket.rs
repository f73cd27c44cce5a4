//! Token bucket: a participant may send `rate` units per second with bursts up to `burst`.
//! Sans-IO: time is passed in (ms).

#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    rate_per_ms: f64,
    burst: f64,
    tokens: f64,
    last_ms: f64,
}

impl TokenBucket {
    /// A full bucket refilling `rate_per_s` units per second, holding at most `burst`.
    pub fn new(rate_per_s: f64, burst: f64, now_ms: f64) -> Self {
        Self {
            rate_per_ms: rate_per_s / 1000.0,
            burst,
            tokens: burst,
            last_ms: now_ms,
        }
    }

    /// Takes `cost` units if available at `now_ms`.
    pub fn take(&mut self, cost: f64, now_ms: f64) -> bool {
        self.refill(now_ms);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// Takes `cost` units at `now_ms` and returns 0, or, if they are not there yet, takes
    /// nothing and returns how many ms until they will be. For a reader that throttles by
    /// waiting (and so pushes back on the peer) rather than by dropping.
    pub fn take_or_wait(&mut self, cost: f64, now_ms: f64) -> f64 {
        if self.take(cost, now_ms) {
            0.0
        } else {
            (cost - self.tokens) / self.rate_per_ms
        }
    }

    fn refill(&mut self, now_ms: f64) {
        let elapsed = (now_ms - self.last_ms).max(0.0);
        self.tokens = (self.tokens + elapsed * self.rate_per_ms).min(self.burst);
        self.last_ms = now_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_rate_and_the_burst_and_no_more() {
        let mut b = TokenBucket::new(50.0, 10.0, 0.0);
        // The burst goes through at once, then nothing until tokens refill.
        assert_eq!((0..20).filter(|_| b.take(1.0, 0.0)).count(), 10);
        // Steady 100 pps for 10 s against a 50 pps bucket: half pass.
        let passed = (1..=1_000)
            .filter(|i| b.take(1.0, f64::from(*i) * 10.0))
            .count();
        assert!((495..=505).contains(&passed), "{passed}");
        // A sender within the rate is never throttled.
        let mut ok = TokenBucket::new(50.0, 10.0, 0.0);
        assert!((1..=1_000).all(|i| ok.take(1.0, f64::from(i) * 20.0)));
    }

    #[test]
    fn a_waiting_taker_gets_exactly_the_rate() {
        let mut b = TokenBucket::new(10.0, 5.0, 0.0);
        // Take as fast as allowed, sleeping exactly as told: 10 s gives the burst plus 100.
        let (mut now, mut taken) = (0.0, 0);
        while now < 10_000.0 {
            let wait = b.take_or_wait(1.0, now);
            if wait == 0.0 {
                taken += 1;
            } else {
                assert!(wait > 0.0 && wait <= 100.0 + 1e-9, "{wait}");
                now += wait;
            }
        }
        assert!((104..=106).contains(&taken), "{taken}");
    }
}
