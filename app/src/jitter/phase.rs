//! The pull-phase learner: how early each frame's first sample may be placed in the output
//! without the frame arriving after the pull that hands that sample out.
//!
//! Playback pulls fixed blocks (10 ms) on its own schedule. A frame is needed at the start of the
//! pull whose block holds its first sample, so what decides lateness is not the playout offset
//! itself but *which pull* a frame start falls into. On a stable path the phase between packet
//! arrivals and the pull schedule is constant (same clocks, fixed sender frame boundaries), so
//! the buffer can learn it: for each played frame (media time `m`) it looks back along the
//! recent pulls (time, first output sample) for the earliest pull at which the frame would still
//! have been safe, and remembers where that pull's block started. Expressed as a requirement on
//!
//! ```text
//! Z = output sample index − RTP timestamp
//! ```
//!
//! (the alignment of the media timeline to the output, which only time-stretching and waiting
//! change — decoding, concealing a slot and playing silence for a pause all advance both by the
//! same amount), frame `i` asks for `Z ≥ R_i = start of that block − m_i`. With `Z = R` the
//! frame's first sample is the first sample of that block: the frame boundaries are aligned with
//! the pull blocks and nothing is buffered beyond what the phase demands.
//!
//! "Safe" is checked twice:
//!
//! - against the *zero-delay* arrival `m + base + target` (fastest transit of the window plus
//!   the jitter margin, as everywhere else in the buffer): this carries the margin, and is
//!   independent of this frame's own jitter. It is remembered for ~0.5 s (four 125 ms interval
//!   maxima plus the current one), so that a requirement rises at once but falls only once it
//!   has been lower for half a second — the phase does not flicker when a pull lands right at a
//!   frame's due time, and clock skew (which moves the phase by 0.2 ms/s at 200 ppm) is followed.
//!   When the target itself comes down, what was held is dropped at once (it was computed with
//!   the old margin).
//! - against the frame's *actual* arrival: it must have been here before the pull. This guards
//!   the case the zero-delay estimate gets wrong — the path has just become slower and the
//!   window's fastest transit still remembers the faster path. It is remembered only ~100 ms,
//!   like the old level check: a one-off stall must not hold delay.
//!
//! Requirements are in samples and `Z` is exact, so the controller compares integers: clock
//! filtering and jitter do not make it hunt. Across a DTX pause (no frames) the last
//! requirement is kept: the sender's frame boundaries stay on their grid.
//!
//! Allocation-free: fixed rings.

/// Pulls remembered: 160 ms at 10 ms blocks (a frame safe even further back is capped there,
/// which only overstates its requirement).
const PULLS: usize = 16;
/// Zero-delay requirements are held as maxima of this many intervals (plus the current one).
const INTERVALS: usize = 4;
const INTERVAL_MS: f64 = 125.0;
/// Actual-arrival requirements are held this long.
const RECENT_MS: f64 = 100.0;
const RECENT: usize = 16;

#[derive(Debug, Clone, Copy)]
struct Pull {
    at_ms: f64,
    /// Output index of the block's first sample.
    start: u64,
    len: usize,
}

#[derive(Debug)]
pub(crate) struct PhaseLearner {
    pulls: [Pull; PULLS],
    next_pull: usize,
    pull_count: usize,
    held: [Option<i64>; INTERVALS],
    next_held: usize,
    /// The target the held requirements were computed with.
    held_target: f64,
    current: Option<i64>,
    current_from: f64,
    recent: [(f64, i64); RECENT],
    next_recent: usize,
}

impl PhaseLearner {
    pub fn new() -> Self {
        Self {
            pulls: [Pull {
                at_ms: f64::NEG_INFINITY,
                start: 0,
                len: 0,
            }; PULLS],
            next_pull: 0,
            pull_count: 0,
            held: [None; INTERVALS],
            next_held: 0,
            held_target: f64::NEG_INFINITY,
            current: None,
            current_from: f64::NEG_INFINITY,
            recent: [(f64::NEG_INFINITY, 0); RECENT],
            next_recent: 0,
        }
    }

    /// Forgets what was learned (a new timeline), keeping the pull history.
    pub fn reset(&mut self) {
        self.held = [None; INTERVALS];
        self.held_target = f64::NEG_INFINITY;
        self.current = None;
        self.current_from = f64::NEG_INFINITY;
        self.recent = [(f64::NEG_INFINITY, 0); RECENT];
    }

    /// A pull of `len` samples starting at output index `start` happens at `now_ms`.
    pub fn on_pull(&mut self, now_ms: f64, start: u64, len: usize) {
        self.pulls[self.next_pull] = Pull {
            at_ms: now_ms,
            start,
            len,
        };
        self.next_pull = (self.next_pull + 1) % PULLS;
        self.pull_count = (self.pull_count + 1).min(PULLS);
    }

    /// Output index of the first block whose pull is at or after `due_ms`: the earliest place a
    /// frame due then may start. Looks back along the recorded pulls (which need not be evenly
    /// spaced: an engine may pull two blocks at one instant) and forward assuming the latest
    /// pull's block length and spacing. Needs a pull recorded.
    fn earliest_start(&self, due_ms: f64) -> i64 {
        let newest = self.pulls[(self.next_pull + PULLS - 1) % PULLS];
        if newest.at_ms < due_ms {
            let block_ms = newest.len as f64 / super::SAMPLES_PER_MS;
            let j = ((due_ms - newest.at_ms) / block_ms).ceil().max(1.0) as u64;
            return (newest.start + j * newest.len as u64) as i64;
        }
        let mut best = newest.start;
        for k in 2..=self.pull_count {
            let p = self.pulls[(self.next_pull + PULLS - k) % PULLS];
            if p.at_ms < due_ms {
                break;
            }
            best = p.start;
        }
        best as i64
    }

    /// A frame with extended RTP timestamp `ts` had its first sample handed out in the latest
    /// pull (at `now_ms`). `zero_due_ms` is when it had to be here with the jitter margin
    /// `target_ms` (media time + fastest transit + target), `arrival_ms` when it arrived.
    pub fn on_frame(
        &mut self,
        now_ms: f64,
        ts: u64,
        zero_due_ms: Option<f64>,
        target_ms: f64,
        arrival_ms: f64,
    ) {
        if self.pull_count == 0 {
            return;
        }
        if target_ms < self.held_target {
            // The margin came down (the histogram forgot a jittery spell, or losses are no
            // longer recent): what was held was computed with the old one.
            self.held = [None; INTERVALS];
            self.current = None;
        }
        self.held_target = target_ms;
        // Without a zero-delay estimate (the transit window has just been reset) only the
        // actual arrival counts.
        let zero = zero_due_ms.map(|due| self.earliest_start(due) - ts as i64);
        // It was inserted before this pull whatever its time stamp says (an engine may stamp a
        // datagram a fraction of a millisecond after the instant it calls the pull's time).
        let actual = self.earliest_start(arrival_ms.min(now_ms)) - ts as i64;
        if now_ms - self.current_from >= INTERVAL_MS {
            if let Some(c) = self.current.take() {
                self.held[self.next_held] = Some(c);
                self.next_held = (self.next_held + 1) % INTERVALS;
            }
            self.current_from = now_ms;
        }
        if let Some(zero) = zero {
            self.current = Some(self.current.map_or(zero, |c| c.max(zero)));
        }
        self.recent[self.next_recent] = (now_ms, actual);
        self.next_recent = (self.next_recent + 1) % RECENT;
    }

    /// The alignment `Z` the recent frames require, samples; `None` until a frame was seen.
    pub fn required(&self, now_ms: f64) -> Option<i64> {
        let zero = self
            .held
            .iter()
            .flatten()
            .chain(self.current.iter())
            .copied()
            .max();
        let actual = self
            .recent
            .iter()
            .filter(|&&(at, _)| now_ms - at <= RECENT_MS)
            .map(|&(_, r)| r)
            .max();
        match (zero, actual) {
            (Some(z), Some(a)) => Some(z.max(a)),
            (z, a) => z.or(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pulls of 480 samples every 10 ms starting at `first_ms`, `count` of them.
    fn pulls(l: &mut PhaseLearner, first_ms: f64, count: u64) {
        for k in 0..count {
            l.on_pull(first_ms + 10.0 * k as f64, 480 * k, 480);
        }
    }

    #[test]
    fn requirement_is_the_first_block_pulled_after_the_due_time() {
        let mut l = PhaseLearner::new();
        assert_eq!(l.required(0.0), None);
        // Pulls at 0.3, 10.3, …, 150.3 (block k starts at 480 k). A frame with timestamp 4800
        // (100 ms) due at 133 ms may start no earlier than the block pulled at 140.3 (k = 14).
        pulls(&mut l, 0.3, 16);
        l.on_frame(150.3, 4_800, Some(133.0), 5.0, 120.0);
        assert_eq!(l.required(150.3), Some(14 * 480 - 4_800));
        // Due after the latest pull: extrapolated on the 10 ms grid (k = 17 at 170.3).
        l.on_frame(150.3, 4_800, Some(165.0), 5.0, 120.0);
        assert_eq!(l.required(150.3), Some(17 * 480 - 4_800));
    }

    #[test]
    fn bunched_pulls_count_by_their_real_times() {
        // Two blocks at one instant every 20 ms: a frame due at 25 can start at the first block
        // of the pair pulled at 40.3 (k = 4), not at the second block of the pair at 20.3.
        let mut l = PhaseLearner::new();
        for k in 0..8u64 {
            l.on_pull(0.3 + 20.0 * (k / 2) as f64, 480 * k, 480);
        }
        l.on_frame(60.3, 0, Some(25.0), 5.0, 20.0);
        assert_eq!(l.required(60.3), Some(4 * 480));
    }

    #[test]
    fn rises_at_once_falls_after_a_second_and_late_arrivals_count_briefly() {
        // Pull k at 10 k + 0.3 ms starts block 480 k; the frame read in it has timestamp 480 k
        // (media time 10 k ms) and is due `due` ms after its media time.
        fn step(l: &mut PhaseLearner, k: &mut u64, due: f64, late: f64) -> i64 {
            let now = 10.0 * *k as f64 + 0.3;
            l.on_pull(now, 480 * *k, 480);
            let m = 10.0 * *k as f64;
            l.on_frame(now, 480 * *k, Some(m + due), 5.0, m + late);
            *k += 1;
            l.required(now).unwrap()
        }
        let mut l = PhaseLearner::new();
        let mut k = 0u64;
        // Due 5 ms after its media time: the next block (pulled at +10.3) is the first in time.
        for _ in 0..50 {
            assert_eq!(step(&mut l, &mut k, 5.0, 0.0), 480);
        }
        // Due 5 ms before: its own block would do, but the higher requirement is held ~0.5 s.
        let mut fell = None;
        for i in 0..200 {
            if step(&mut l, &mut k, -5.0, -5.0) == 0 && fell.is_none() {
                fell = Some(i);
            }
        }
        let fell = fell.unwrap();
        assert!((50..=64).contains(&fell), "{fell}");
        // Due later again: at once.
        assert_eq!(step(&mut l, &mut k, 5.0, 0.0), 480);
        for _ in 0..200 {
            step(&mut l, &mut k, -5.0, -5.0);
        }
        // A frame 20 ms behind (timestamp 480 (k − 2)) that arrived just before this pull:
        // its zero-delay due time allows block k − 2, its arrival only block k — for 100 ms.
        let now = 10.0 * k as f64 + 0.3;
        l.on_pull(now, 480 * k, 480);
        l.on_frame(now, 480 * (k - 2), Some(now - 25.0), 5.0, now - 0.1);
        k += 1;
        assert_eq!(l.required(now), Some(960));
        let held: Vec<i64> = (0..12).map(|_| step(&mut l, &mut k, -5.0, -5.0)).collect();
        assert_eq!(held[..9], [960; 9]);
        assert_eq!(held[10..], [0; 2]);
    }
}
