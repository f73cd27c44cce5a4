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
        let elapsed = (now_ms - self.last_ms).max(0.0);
        self.tokens = (self.tokens + elapsed * self.rate_per_ms).min(self.burst);
        self.last_ms = now_ms;
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
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
}
