//! Time-scale modification: changing how much audio is buffered without audible cuts.
//!
//! The jitter buffer changes its delay the way NetEq does, by *accelerating* (playing a stretch
//! of audio one pitch period shorter) or *pre-emptively expanding* (one period longer), never by
//! dropping or inserting arbitrary chunks. Voiced speech is locally periodic, so a segment and
//! the segment one pitch period later look alike: overlap-adding them with a crossfade as long as
//! the period (WSOLA with the search window aligned by autocorrelation) removes or repeats one
//! period with no discontinuity in waveform or pitch. The buffer applies at most one such
//! operation per ~50 ms, i.e. changes the tempo by at most a few percent over time.
//!
//! The pitch is found by normalised autocorrelation over 2.5–20 ms (400–50 Hz), first on a 4×
//! decimated copy (12 kHz, so the search costs ~25 k multiply-adds per attempt) and then refined
//! at full rate around the best coarse lag. Of near-equal coarse peaks the shortest is taken:
//! a multiple of the period correlates as well as the period itself, and removing one period
//! changes the delay in the smallest step.
//!
//! Low-energy audio (pauses, background noise below ~−50 dBFS) needs no pitch alignment: there
//! whole chunks up to 100 ms are removed or repeated with a short 2.5 ms crossfade, which is how
//! the buffer catches up after a delay spike without audibly speeding up speech.

/// Shortest pitch period searched: 2.5 ms (400 Hz).
pub(crate) const MIN_LAG: usize = 120;
/// Longest pitch period searched: 20 ms (50 Hz).
pub(crate) const MAX_LAG: usize = 960;
/// Decimation of the coarse search (48 → 12 kHz).
const DECIMATION: usize = 4;
/// Correlation window of the coarse search: 10 ms.
const WINDOW: usize = 480;
/// Mean square below which audio counts as silence: −50 dBFS.
const SILENCE_POWER: f32 = 1e-5;
/// Silence is judged in blocks of 2.5 ms.
const SILENCE_BLOCK: usize = 120;
/// Of coarse correlation peaks, the first within this fraction of the best wins.
const NEAR_BEST: f32 = 0.95;

/// A pitch period and how periodic the signal is at it (normalised correlation, ≤ 1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Pitch {
    pub lag: usize,
    pub correlation: f32,
}

/// Pitch search with preallocated scratch (no allocation per attempt).
#[derive(Debug)]
pub(crate) struct PitchSearch {
    decimated: Vec<f32>,
    scores: Vec<f32>,
}

impl PitchSearch {
    pub fn new() -> Self {
        Self {
            decimated: Vec::with_capacity((2 * MAX_LAG + WINDOW) / DECIMATION + 1),
            scores: Vec::with_capacity(MAX_LAG / DECIMATION + 1),
        }
    }

    /// The best pitch period of `x` (48 kHz) in `min_lag..=max_lag`, comparing `x[..lag]` with
    /// `x[lag..2 * lag]` (the two segments an accelerate or expand overlaps). The range is
    /// narrowed to what `x` is long enough for; `None` if nothing is left or `x` is silent.
    /// The coarse correlation window is 10 ms, or what `x` leaves beyond the longest lag when it
    /// is shorter (never shorter than that lag): a buffer aligned to its pull blocks may hold
    /// only one 10 ms frame ahead.
    pub fn find(&mut self, x: &[f32], min_lag: usize, max_lag: usize) -> Option<Pitch> {
        let max_lag = max_lag.min(MAX_LAG).min(x.len() / 2);
        let min_lag = min_lag.max(2 * DECIMATION);
        if max_lag < min_lag {
            return None;
        }
        let window = WINDOW.min(x.len() - max_lag);
        let span = (max_lag + window) / DECIMATION;
        self.decimated.clear();
        self.decimated.extend(
            x[..span * DECIMATION]
                .chunks_exact(DECIMATION)
                .map(|c| c.iter().sum::<f32>()),
        );
        let d = &self.decimated;
        let w = window / DECIMATION;
        let (lo, hi) = (min_lag.div_ceil(DECIMATION), max_lag / DECIMATION);
        if hi < lo {
            return None;
        }
        let a = &d[..w];
        let ea = dot(a, a);
        if ea <= 1e-12 {
            return None;
        }
        let mut eb = dot(&d[lo..lo + w], &d[lo..lo + w]);
        self.scores.clear();
        for l in lo..=hi {
            if l > lo {
                eb += d[l + w - 1] * d[l + w - 1] - d[l - 1] * d[l - 1];
            }
            let denom = (ea * eb.max(0.0)).sqrt();
            let c = dot(a, &d[l..l + w]);
            self.scores
                .push(if denom > 1e-12 { c / denom } else { 0.0 });
        }
        let s = &self.scores;
        let best = s.iter().copied().fold(f32::MIN, f32::max);
        let pick = (0..s.len())
            .find(|&i| {
                let left = i == 0 || s[i] >= s[i - 1];
                let right = i + 1 == s.len() || s[i] >= s[i + 1];
                left && right && s[i] >= NEAR_BEST * best
            })
            .unwrap_or(0);
        let coarse = (lo + pick) * DECIMATION;
        let mut found: Option<Pitch> = None;
        let from = coarse.saturating_sub(DECIMATION).max(min_lag);
        let to = (coarse + DECIMATION).min(max_lag);
        for lag in from..=to {
            let correlation = ncc(&x[..lag], &x[lag..2 * lag]);
            if found.is_none_or(|f| correlation > f.correlation) {
                found = Some(Pitch { lag, correlation });
            }
        }
        found
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Normalised cross-correlation of two equally long segments.
fn ncc(a: &[f32], b: &[f32]) -> f32 {
    let denom = (dot(a, a) * dot(b, b)).sqrt();
    if denom > 1e-12 {
        dot(a, b) / denom
    } else {
        0.0
    }
}

/// Length of the low-energy run at the start of `x`, in whole 2.5 ms blocks.
pub(crate) fn silent_prefix(x: &[f32]) -> usize {
    x.chunks_exact(SILENCE_BLOCK)
        .take_while(|c| dot(c, c) / (SILENCE_BLOCK as f32) < SILENCE_POWER)
        .count()
        * SILENCE_BLOCK
}

/// Weight of the incoming signal at step `i` of an `n`-sample linear crossfade (never exactly
/// 0 or 1, so both ends join continuously).
pub(crate) fn ramp(i: usize, n: usize) -> f32 {
    (i + 1) as f32 / (n + 1) as f32
}

/// Fades `x` in (`rising`) or out linearly over its whole length.
pub(crate) fn fade(x: &mut [f32], rising: bool) {
    let n = x.len();
    for (i, s) in x.iter_mut().enumerate() {
        let w = ramp(i, n);
        *s *= if rising { w } else { 1.0 - w };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(period: f32, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let p = i as f32 * std::f32::consts::TAU / period;
                0.4 * p.sin() + 0.2 * (2.0 * p).sin() + 0.1 * (3.0 * p + 1.0).sin()
            })
            .collect()
    }

    #[test]
    fn finds_the_pitch_of_voiced_signals() {
        let mut ps = PitchSearch::new();
        for period in [130.0f32, 240.0, 343.7, 480.0, 900.0] {
            let x = tone(period, 2_400);
            let p = ps.find(&x, MIN_LAG, MAX_LAG).unwrap();
            assert!(
                (p.lag as f32 - period).abs() <= 1.0,
                "period {period}: found {p:?}"
            );
            assert!(p.correlation > 0.99, "{p:?}");
        }
    }

    #[test]
    fn search_range_is_limited_by_request_and_length() {
        let mut ps = PitchSearch::new();
        let x = tone(240.0, 2_400);
        // Asked for at most 200 samples: the period (240) is out of range, so the best in range
        // correlates poorly.
        let p = ps.find(&x, MIN_LAG, 200).unwrap();
        assert!(p.lag <= 200 && p.correlation < 0.7, "{p:?}");
        // Too short for any lag.
        assert_eq!(ps.find(&x[..200], MIN_LAG, MAX_LAG), None);
        // Silence has no pitch.
        assert_eq!(ps.find(&[0.0; 2_000], MIN_LAG, MAX_LAG), None);
    }

    #[test]
    fn noise_is_not_periodic() {
        let mut state = 1u32;
        let x: Vec<f32> = (0..2_400)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
            .collect();
        let p = PitchSearch::new().find(&x, MIN_LAG, MAX_LAG).unwrap();
        assert!(p.correlation < 0.3, "{p:?}");
    }

    #[test]
    fn silence_detection() {
        let mut x = vec![0.001f32; 1_000];
        x.extend(tone(240.0, 500));
        assert_eq!(silent_prefix(&x), 960);
        assert_eq!(silent_prefix(&tone(240.0, 500)), 0);
    }

    #[test]
    fn fades_are_monotonic_and_open_ended() {
        let mut x = vec![1.0f32; 4];
        fade(&mut x, true);
        assert_eq!(x, [0.2, 0.4, 0.6, 0.8]);
        let mut x = vec![1.0f32; 4];
        fade(&mut x, false);
        assert!((x[0] - 0.8).abs() < 1e-6 && (x[3] - 0.2).abs() < 1e-6);
    }
}
