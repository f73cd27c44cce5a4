//! Finding known signals in a recording: FFT-based normalised
//! cross-correlation with parabolic sub-sample peak interpolation, and
//! latency statistics over the chirps found.

use std::fmt;
use std::sync::Arc;

use rustfft::{Fft, FftPlanner, num_complex::Complex};

use super::chirp::ChirpTrain;

/// One chirp located in the recording.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    /// The chirp's onset in the probe signal (a [`ChirpTrain::onsets`] entry).
    pub onset: usize,
    /// Where it was found, relative to `onset`, in milliseconds (sub-sample).
    pub lag_ms: f64,
    /// Normalised cross-correlation at the peak, in [-1, 1]. ~1 means the
    /// chirp came through essentially undistorted; noise and codec damage
    /// lower it.
    pub score: f32,
}

/// Summary of a latency measurement: median, spread and how many chirps were
/// actually found.
///
/// The median is the headline number because it ignores the occasional chirp
/// that a jitter buffer stretched or a packet loss damaged; p5/p95 show how
/// much latency moves; `count` vs `expected` shows how much was lost, so a
/// good-looking median over 3 of 40 chirps cannot pass for a clean result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyStats {
    /// Chirps found.
    pub count: usize,
    /// Chirps sent.
    pub expected: usize,
    pub median_ms: f64,
    /// 5th percentile (linear interpolation between order statistics).
    pub p05_ms: f64,
    /// 95th percentile (linear interpolation between order statistics).
    pub p95_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

impl LatencyStats {
    /// Statistics over `lags` (non-finite lags are ignored); `None` if there
    /// is nothing to summarise. `expected` is the number of chirps sent,
    /// normally `train.onsets.len()`.
    pub fn from_lags(lags: &[Lag], expected: usize) -> Option<Self> {
        let mut v: Vec<f64> = lags
            .iter()
            .map(|l| l.lag_ms)
            .filter(|x| x.is_finite())
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Self {
            count: v.len(),
            expected,
            median_ms: percentile(&v, 0.5),
            p05_ms: percentile(&v, 0.05),
            p95_ms: percentile(&v, 0.95),
            min_ms: v[0],
            max_ms: v[v.len() - 1],
        })
    }
}

impl fmt::Display for LatencyStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mouth-to-ear latency: median {:.2} ms (p5 {:.2}, p95 {:.2}, min {:.2}, max {:.2}) over {}/{} chirps",
            self.median_ms,
            self.p05_ms,
            self.p95_ms,
            self.min_ms,
            self.max_ms,
            self.count,
            self.expected
        )
    }
}

/// Percentile `p` in [0, 1] of ascending, non-empty `sorted`, interpolating
/// linearly between order statistics (numpy's default).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = p.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// For each chirp onset, search `recording` in `[onset, onset + max_lag]` for
/// the normalised cross-correlation peak against that chirp, with parabolic
/// sub-sample interpolation. Returns one entry per onset that was found with
/// NCC >= `min_score`, in onset order.
///
/// `recording` must have its sample 0 aligned with the probe's sample 0 (the
/// microphone's first sample); a lag is then the full mouth-to-ear latency.
/// Chirps whose search window runs past the end of `recording` are searched
/// as far as it goes.
///
/// `score` is the correlation at the best whole-sample lag. At 48 kHz a clean
/// path scores > 0.99; at 8 kHz a perfect copy can score ~0.8 when the
/// latency falls between samples, so thresholds around 0.5 suit all rates.
///
/// When `max_lag_ms` exceeds the gap between chirps, a chirp's search window
/// also contains its neighbours' echoes, which correlate just as well. Those
/// are told apart using the irregular spacing: true echoes agree on one
/// latency, mismatched ones scatter. Each chirp's candidates (peaks at least a
/// chirp length apart) are pooled, the latency most chirps agree on (within
/// ±5 ms) is taken as the reference, and each chirp reports its best peak
/// within half the shortest chirp interval (>= 125 ms) of it. Latency may thus
/// drift by up to that much during a recording; a chirp with no peak there
/// (lost, or latency jumped further) is omitted rather than guessed, which
/// shows up as `count < expected` in [`LatencyStats`].
pub fn find_lags(
    train: &ChirpTrain,
    recording: &[f32],
    max_lag_ms: f32,
    min_score: f32,
) -> Vec<Lag> {
    let sr = f64::from(train.sample_rate);
    let m = train.chirp_len;
    if m == 0 || sr <= 0.0 || recording.is_empty() {
        return Vec::new();
    }
    let max_lag = ms_to_samples(f64::from(max_lag_ms), sr);
    // All chirps of a train are normally identical and, when `max_lag`
    // exceeds their spacing, their search windows overlap. Onsets are grouped
    // so each stretch of recording is correlated once (overlap-save inside
    // `Correlator`), which keeps the cost proportional to the recording
    // rather than to chirps x max_lag.
    let Some(last_start) = recording.len().checked_sub(m) else {
        return Vec::new();
    };
    let mut order: Vec<usize> = (0..train.onsets.len()).collect();
    order.sort_by_key(|&k| train.onsets[k]);
    let mut groups: Vec<Group<'_>> = Vec::new();
    for k in order {
        let onset = train.onsets[k];
        let Some(chirp) = train.samples.get(onset..onset.saturating_add(m)) else {
            continue;
        };
        if onset > last_start {
            continue;
        }
        // A chirp length past `max_lag`: a peak just beyond the range must
        // still suppress its own side lobes inside it (see `peaks`), or a
        // latency slightly over `max_lag` would be misreported as a side
        // lobe ~one carrier period early. Peaks past `max_lag` are dropped.
        let end = onset
            .saturating_add(max_lag)
            .saturating_add(m)
            .min(last_start);
        match groups.last_mut() {
            Some(g) if g.needle == chirp && onset <= g.end.saturating_add(1) => {
                g.end = g.end.max(end);
                g.members.push((k, onset, end));
            }
            _ => groups.push(Group {
                needle: chirp,
                start: onset,
                end,
                members: vec![(k, onset, end)],
            }),
        }
    }

    // Candidate peaks per onset: (onset index, lag in samples, score).
    let mut correlator = Correlator::default();
    let mut candidates: Vec<(usize, f64, f32)> = Vec::new();
    for g in &groups {
        let Some(scores) = correlator.ncc(g.needle, &recording[g.start..], g.end - g.start) else {
            continue;
        };
        for &(k, onset, end) in &g.members {
            let window = &scores[onset - g.start..=end - g.start];
            for (i, lag, score) in peaks(window, min_score, m) {
                if i <= max_lag {
                    candidates.push((k, lag, score));
                }
            }
        }
    }
    if candidates.is_empty() {
        return Vec::new();
    }

    let reference = consensus_lag(&mut candidates, train.onsets.len(), 0.005 * sr);
    let mut sorted = train.onsets.clone();
    sorted.sort_unstable();
    let min_interval = sorted
        .windows(2)
        .map(|w| w[1] - w[0])
        .min()
        .map_or(f64::INFINITY, |d| d as f64);
    let accept = 0.5 * min_interval;

    let mut best: Vec<Option<(f64, f32)>> = vec![None; train.onsets.len()];
    for &(k, lag, score) in &candidates {
        if (lag - reference).abs() < accept && best[k].is_none_or(|(_, s)| score > s) {
            best[k] = Some((lag, score));
        }
    }
    best.iter()
        .zip(&train.onsets)
        .filter_map(|(b, &onset)| {
            b.map(|(lag, score)| Lag {
                onset,
                lag_ms: lag * 1000.0 / sr,
                score,
            })
        })
        .collect()
}

/// Onsets whose chirps are identical and whose search windows touch, searched
/// with one correlation over `recording[start..end + chirp_len]`.
struct Group<'a> {
    needle: &'a [f32],
    /// First and last window start (absolute recording positions).
    start: usize,
    end: usize,
    /// (onset index, onset, last window start) for each member.
    members: Vec<(usize, usize, usize)>,
}

/// The candidate lag supported by the most distinct chirps within `±tol`
/// samples (ties: higher total score, then earlier). Sorts `candidates` by lag.
fn consensus_lag(candidates: &mut [(usize, f64, f32)], onsets: usize, tol: f64) -> f64 {
    candidates.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut seen = vec![usize::MAX; onsets];
    let mut best = (0usize, f64::NEG_INFINITY, candidates[0].1);
    let mut lo = 0;
    for (i, &(_, lag, _)) in candidates.iter().enumerate() {
        while candidates[lo].1 < lag - tol {
            lo += 1;
        }
        let (mut support, mut weight) = (0usize, 0.0f64);
        for &(k, l, s) in &candidates[lo..] {
            if l > lag + tol {
                break;
            }
            if seen[k] != i {
                seen[k] = i;
                support += 1;
            }
            weight += f64::from(s);
        }
        if (support, weight) > (best.0, best.1) {
            best = (support, weight, lag);
        }
    }
    best.2
}

/// Local maxima of `scores` with score >= `min_score`, thinned so that no
/// two are closer than `separation` samples (the stronger wins): the
/// correlation of a band-pass chirp oscillates, and its side lobes are not
/// separate arrivals. Returns (index, interpolated lag, peak score).
///
/// A maximum at lag 0 counts (nothing can arrive before it was sent), but one
/// at the last index does not: the true peak may lie beyond the range.
fn peaks(scores: &[f32], min_score: f32, separation: usize) -> Vec<(usize, f64, f32)> {
    let mut maxima: Vec<usize> = (0..scores.len().saturating_sub(1))
        .filter(|&i| {
            let s = scores[i];
            s >= min_score && s > 0.0 && (i == 0 || s >= scores[i - 1]) && s > scores[i + 1]
        })
        .collect();
    maxima.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut kept: Vec<usize> = Vec::new();
    for i in maxima {
        if kept.iter().all(|&j| i.abs_diff(j) >= separation) {
            kept.push(i);
        }
    }
    kept.into_iter()
        .map(|i| (i, interpolate_peak(scores, i), scores[i]))
        .collect()
}

/// Normalised cross-correlation search of `needle` in `haystack` over lags
/// `[0, max_lag]`: best (lag in samples with sub-sample interpolation, score).
///
/// The score at lag `l` is the Pearson correlation between `needle` and
/// `haystack[l..l + needle.len()]`, so it is independent of gain and DC
/// offset and lies in [-1, 1]; 1 means an exact (scaled) copy. Silent
/// stretches of the haystack score 0 rather than dividing by zero.
///
/// Lags are limited to where the needle fits entirely in the haystack.
/// Returns `None` if it never fits or the needle has no variation (empty,
/// silent or constant): there is nothing to look for. Cost is a few FFTs of
/// the next power of two above `min(haystack.len(), needle.len() + max_lag)`.
pub fn best_alignment(needle: &[f32], haystack: &[f32], max_lag: usize) -> Option<(f64, f32)> {
    let scores = Correlator::default().ncc(needle, haystack, max_lag)?;
    let (best, &score) = scores
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))?;
    if score <= 0.0 {
        return Some((0.0, 0.0));
    }
    Some((interpolate_peak(&scores, best), score))
}

/// Sub-sample position of the peak at `i`: vertex of the parabola through
/// `i - 1, i, i + 1`. Accurate to a small fraction of a sample when the peak
/// spans several samples, as a band-limited correlation peak does. At the
/// ends of the range there is no neighbour, so the integer lag is returned.
fn interpolate_peak(scores: &[f32], i: usize) -> f64 {
    if i == 0 || i + 1 >= scores.len() {
        return i as f64;
    }
    let (y0, y1, y2) = (
        f64::from(scores[i - 1]),
        f64::from(scores[i]),
        f64::from(scores[i + 1]),
    );
    let denom = y0 - 2.0 * y1 + y2;
    if denom >= 0.0 {
        return i as f64; // flat or not a maximum: no meaningful vertex
    }
    i as f64 + (0.5 * (y0 - y2) / denom).clamp(-0.5, 0.5)
}

fn ms_to_samples(ms: f64, sample_rate: f64) -> usize {
    let n = (ms * sample_rate / 1000.0).round();
    if n.is_finite() && n > 0.0 {
        n as usize
    } else {
        0
    }
}

/// FFT cross-correlation with sliding-window normalisation.
///
/// Tests run this in debug builds, where rustfft's generic code is
/// monomorphised in this crate and so unoptimised. The work is kept small:
/// one real FFT of length n costs one complex FFT of length n/2, the
/// needle's spectrum is reused across blocks and calls, and long haystacks
/// are processed in overlap-save blocks a few times the needle's length.
///
/// The FFTs run in f32 (about twice as fast as f64 here); everything that
/// can cancel catastrophically (means, window energies) is done in f64, and
/// windows too quiet for f32 FFT round-off to be negligible are scored 0.
struct Correlator {
    planner: FftPlanner<f32>,
    fft: Option<RealFft>,
    /// Spectrum of the last needle: (fft length, needle, spectrum, energy).
    needle_cache: Option<(usize, Vec<f32>, Vec<C32>, f64)>,
    spectrum: Vec<C32>,
    block: Vec<f32>,
}

impl Default for Correlator {
    fn default() -> Self {
        Self {
            planner: FftPlanner::new(),
            fft: None,
            needle_cache: None,
            spectrum: Vec::new(),
            block: Vec::new(),
        }
    }
}

type C32 = Complex<f32>;

/// Non-finite samples (a glitching device) count as silence instead of
/// poisoning every FFT bin.
fn clean(x: f32) -> f64 {
    if x.is_finite() { f64::from(x) } else { 0.0 }
}

impl Correlator {
    /// Pearson correlation of `needle` against every `haystack` window at lags
    /// `0..=min(max_lag, haystack.len() - needle.len())`. `None` if no lag fits
    /// or the needle has no variation.
    fn ncc(&mut self, needle: &[f32], haystack: &[f32], max_lag: usize) -> Option<Vec<f32>> {
        let m = needle.len();
        if m == 0 || haystack.len() < m {
            return None;
        }
        let hay = &haystack[..haystack.len().min(m.saturating_add(max_lag))];
        let lags = hay.len() - m + 1;

        // Block length: the whole haystack if that is small, else a few
        // needle lengths (near the minimum of n log n per output lag).
        let n = hay
            .len()
            .next_power_of_two()
            .min(m.next_power_of_two() * 8)
            .max(16);
        if self.fft.as_ref().is_none_or(|f| f.n != n) {
            self.fft = Some(RealFft::new(&mut self.planner, n));
        }
        let fft = self.fft.as_mut()?;

        // Zero-mean needle: then the numerator ignores any haystack DC.
        let cached = self
            .needle_cache
            .as_ref()
            .is_some_and(|(cn, cneedle, _, _)| *cn == n && cneedle.as_slice() == needle);
        if !cached {
            let mean = needle.iter().map(|&x| clean(x)).sum::<f64>() / m as f64;
            let power: f64 = needle.iter().map(|&x| clean(x).powi(2)).sum();
            let energy: f64 = needle.iter().map(|&x| (clean(x) - mean).powi(2)).sum();
            let centred: Vec<f32> = needle.iter().map(|&x| (clean(x) - mean) as f32).collect();
            let mut spectrum = Vec::new();
            fft.forward(&centred, 0.0, &mut spectrum);
            // A needle with no variation (silent or constant) has nothing to
            // find; cache it as zero energy so repeated calls agree.
            let energy = if energy > (1e-12 * power).max(f64::MIN_POSITIVE) {
                energy
            } else {
                0.0
            };
            self.needle_cache = Some((n, needle.to_vec(), spectrum, energy));
        }
        let (_, _, needle_spectrum, needle_energy) = self.needle_cache.as_ref()?;
        let needle_energy = *needle_energy;
        if needle_energy == 0.0 {
            return None;
        }

        // Sliding window sum and energy via prefix sums, about the haystack
        // mean to limit cancellation.
        let hay_mean = hay.iter().map(|&x| clean(x)).sum::<f64>() / hay.len() as f64;
        let mut sum = Vec::with_capacity(hay.len() + 1);
        let mut sq = Vec::with_capacity(hay.len() + 1);
        let (mut s, mut q) = (0.0f64, 0.0f64);
        sum.push(s);
        sq.push(q);
        for &x in hay {
            let x = clean(x) - hay_mean;
            s += x;
            q += x * x;
            sum.push(s);
            sq.push(q);
        }

        let mut scores = Vec::with_capacity(lags);
        let step = n - m + 1;
        self.block.resize(n, 0.0);
        for start in (0..lags).step_by(step) {
            let seg_end = (start + n).min(hay.len());
            fft.forward(&hay[start..seg_end], hay_mean as f32, &mut self.spectrum);
            for (x, a) in self.spectrum.iter_mut().zip(needle_spectrum) {
                // conj(a) * x
                *x = C32::new(a.re * x.re + a.im * x.im, a.re * x.im - a.im * x.re);
            }
            fft.inverse(&self.spectrum, &mut self.block);

            // Windows more than 80 dB below this block's energy are treated
            // as silence: f32 FFT round-off would dominate their score.
            let floor = (1e-8 * (sq[seg_end] - sq[start]))
                .max(1e-15 * q)
                .max(f64::MIN_POSITIVE);
            for (j, &c) in self.block.iter().enumerate().take(step.min(lags - start)) {
                let l = start + j;
                let ws = sum[l + m] - sum[l];
                let var = sq[l + m] - sq[l] - ws * ws / m as f64;
                let r = if var <= floor {
                    0.0
                } else {
                    (f64::from(c) / (needle_energy * var).sqrt()).clamp(-1.0, 1.0)
                };
                scores.push(r as f32);
            }
        }
        Some(scores)
    }
}

/// FFT of a real signal of even length `n` via one complex FFT of length
/// `n / 2` (the classic even/odd packing), returning bins `0..=n/2`.
struct RealFft {
    n: usize,
    forward: Arc<dyn Fft<f32>>,
    inverse: Arc<dyn Fft<f32>>,
    /// `exp(-2 pi i k / n)` for `k` in `0..=n/2`.
    twiddles: Vec<C32>,
    buf: Vec<C32>,
    scratch: Vec<C32>,
}

impl RealFft {
    /// `n` must be even and at least 2.
    fn new(planner: &mut FftPlanner<f32>, n: usize) -> Self {
        let half = n / 2;
        let forward = planner.plan_fft_forward(half);
        let inverse = planner.plan_fft_inverse(half);
        let scratch_len = forward
            .get_inplace_scratch_len()
            .max(inverse.get_inplace_scratch_len());
        let twiddles = (0..=half)
            .map(|k| {
                let phi = -2.0 * std::f64::consts::PI * k as f64 / n as f64;
                C32::new(phi.cos() as f32, phi.sin() as f32)
            })
            .collect();
        Self {
            n,
            forward,
            inverse,
            twiddles,
            buf: vec![C32::new(0.0, 0.0); half],
            scratch: vec![C32::new(0.0, 0.0); scratch_len],
        }
    }

    /// Bins `0..=n/2` of the DFT of `input - offset`, zero-padded to `n`
    /// (`input.len() <= n`), into `out`.
    fn forward(&mut self, input: &[f32], offset: f32, out: &mut Vec<C32>) {
        let half = self.n / 2;
        let pairs = input.chunks_exact(2);
        let odd = pairs.remainder().first().map(|&x| clean(x) as f32 - offset);
        let full = pairs.len();
        for (z, p) in self.buf.iter_mut().zip(pairs) {
            *z = C32::new(clean(p[0]) as f32 - offset, clean(p[1]) as f32 - offset);
        }
        self.buf[full..].fill(C32::new(0.0, 0.0));
        if let Some(x) = odd {
            self.buf[full] = C32::new(x, 0.0);
        }
        self.forward
            .process_with_scratch(&mut self.buf, &mut self.scratch);
        // Untangle the even (real part) and odd (imaginary part) spectra:
        // E = (Z[k] + conj Z[-k]) / 2, O = -i (Z[k] - conj Z[-k]) / 2,
        // X[k] = E + W^k O.
        out.clear();
        for k in 0..=half {
            let z = self.buf[k % half];
            let zr = self.buf[(half - k) % half];
            let (e_re, e_im) = (0.5 * (z.re + zr.re), 0.5 * (z.im - zr.im));
            let (o_re, o_im) = (0.5 * (z.im + zr.im), -0.5 * (z.re - zr.re));
            let w = self.twiddles[k];
            out.push(C32::new(
                e_re + w.re * o_re - w.im * o_im,
                e_im + w.re * o_im + w.im * o_re,
            ));
        }
    }

    /// Inverse of [`RealFft::forward`] (normalised): `spectrum` holds bins
    /// `0..=n/2` of a real signal, which is written to `out` (`n` samples).
    fn inverse(&mut self, spectrum: &[C32], out: &mut [f32]) {
        let half = self.n / 2;
        // Re-tangle: E = (X[k] + conj X[n/2-k]) / 2,
        // O = (X[k] - conj X[n/2-k]) conj(W^k) / 2, Z = E + i O.
        for k in 0..half {
            let c = spectrum[k];
            let d = spectrum[half - k];
            let (e_re, e_im) = (0.5 * (c.re + d.re), 0.5 * (c.im - d.im));
            let (t_re, t_im) = (0.5 * (c.re - d.re), 0.5 * (c.im + d.im));
            let w = self.twiddles[k];
            let (o_re, o_im) = (t_re * w.re + t_im * w.im, t_im * w.re - t_re * w.im);
            self.buf[k] = C32::new(e_re - o_im, e_im + o_re);
        }
        self.inverse
            .process_with_scratch(&mut self.buf, &mut self.scratch);
        let scale = 1.0 / half as f32;
        for (k, z) in self.buf.iter().enumerate() {
            out[2 * k] = z.re * scale;
            out[2 * k + 1] = z.im * scale;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::chirp::{chirp_train, render_delayed, speech_like};
    use crate::measure::test_util::{
        Biquad, add_noise, bandpass_fir, fir_filter, fractional_delay,
    };
    use std::time::Instant;

    fn lag(lag_ms: f64) -> Lag {
        Lag {
            onset: 0,
            lag_ms,
            score: 1.0,
        }
    }

    /// Asserts every chirp was found within `tol_ms` of `expected_ms`.
    fn assert_all_found(train: &ChirpTrain, lags: &[Lag], expected_ms: f64, tol_ms: f64) {
        assert_eq!(lags.len(), train.onsets.len(), "all chirps found");
        for l in lags {
            assert!(
                (l.lag_ms - expected_ms).abs() < tol_ms,
                "chirp at {}: {} ms, expected {expected_ms} ms (score {})",
                l.onset,
                l.lag_ms,
                l.score
            );
        }
    }

    fn max_error(lags: &[Lag], expected_ms: f64) -> f64 {
        lags.iter()
            .map(|l| (l.lag_ms - expected_ms).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn fractional_delay_measured_within_a_twentieth_of_a_ms() {
        let train = chirp_train(48_000, 12.0, 300, 1);
        let delay = 1234.37;
        let rec = render_delayed(&train, delay, train.samples.len() + 48_000);
        let lags = find_lags(&train, &rec, 500.0, 0.5);
        let expected_ms = delay / 48.0;
        assert_all_found(&train, &lags, expected_ms, 0.05);
        // In fact far better: a small fraction of a sample.
        assert!(
            max_error(&lags, expected_ms) < 0.1 / 48.0,
            "{}",
            max_error(&lags, expected_ms)
        );
        assert!(lags.iter().all(|l| l.score > 0.99));
        let stats = LatencyStats::from_lags(&lags, train.onsets.len()).unwrap();
        assert!((stats.median_ms - expected_ms).abs() < 0.01, "{stats}");
    }

    #[test]
    fn sub_sample_accuracy_across_rates_and_phases() {
        for sr in [8_000, 16_000, 48_000] {
            let train = chirp_train(sr, 3.0, 100, 2);
            for frac in [0.0, 0.2, 0.5, 0.8] {
                let delay = 0.0383 * f64::from(sr) + frac; // ~38 ms
                let rec = render_delayed(&train, delay, train.samples.len() + sr as usize);
                let lags = find_lags(&train, &rec, 200.0, 0.5);
                let expected_ms = delay * 1000.0 / f64::from(sr);
                assert_all_found(&train, &lags, expected_ms, 0.05);
                assert!(
                    max_error(&lags, expected_ms) * f64::from(sr) / 1000.0 < 0.15,
                    "{sr} Hz, +{frac}: error {} ms",
                    max_error(&lags, expected_ms)
                );
            }
        }
    }

    #[test]
    fn windowed_sinc_delayed_train_is_measured() {
        // Same check with the delay made by filtering rather than re-rendering.
        let train = chirp_train(48_000, 6.0, 200, 11);
        let delay = 1234.37;
        let rec = fractional_delay(&train.samples, delay, train.samples.len() + 4_800);
        let lags = find_lags(&train, &rec, 500.0, 0.5);
        assert_all_found(&train, &lags, delay / 48.0, 0.05);
    }

    #[test]
    fn found_in_noise_at_10_db_snr() {
        let train = chirp_train(48_000, 12.0, 300, 3);
        let delay = 2345.6;
        let clean = render_delayed(&train, delay, train.samples.len() + 48_000);
        // SNR relative to the chirps' own power (not diluted by the gaps).
        let chirp = &train.samples[train.onsets[0]..][..train.chirp_len];
        let chirp_power = chirp.iter().map(|v| v * v).sum::<f32>() / chirp.len() as f32;
        let rec = add_noise(&clean, chirp_power / 10.0, 99);
        let lags = find_lags(&train, &rec, 500.0, 0.5);
        let expected_ms = delay / 48.0;
        assert_all_found(&train, &lags, expected_ms, 0.05);
        let stats = LatencyStats::from_lags(&lags, train.onsets.len()).unwrap();
        assert!((stats.median_ms - expected_ms).abs() < 0.01, "{stats}");
        assert!(
            lags.iter().all(|l| (0.8..0.99).contains(&l.score)),
            "{lags:?}"
        );
    }

    #[test]
    fn found_through_linear_phase_band_limiting() {
        // 500..3000 Hz, narrower than the chirp itself and than narrowband
        // Opus. Linear phase: the filter's delay is exactly (taps - 1) / 2.
        let train = chirp_train(16_000, 8.0, 300, 4);
        let taps = bandpass_fir(16_000, 500.0, 3000.0, 127);
        let delay = 500.25;
        let rec = fir_filter(
            &taps,
            &render_delayed(&train, delay, train.samples.len() + 16_000),
        );
        let lags = find_lags(&train, &rec, 500.0, 0.5);
        let expected_ms = (delay + 63.0) / 16.0;
        assert_all_found(&train, &lags, expected_ms, 0.05);
        assert!(lags.iter().all(|l| l.score > 0.8), "{lags:?}");
    }

    #[test]
    fn found_through_iir_band_limiting_and_noise() {
        // Minimum-phase filters, like a real voice path: 4th-order-ish
        // low-pass at 3.4 kHz and high-pass at 200 Hz. Their group delay is
        // real latency (a fraction of a ms in band), so the bound is loose.
        let sr = 16_000;
        let train = chirp_train(sr, 8.0, 300, 5);
        let delay = 960.5;
        let mut rec = render_delayed(&train, delay, train.samples.len() + 16_000);
        for mut f in [
            Biquad::lowpass(sr, 3400.0),
            Biquad::lowpass(sr, 3400.0),
            Biquad::highpass(sr, 200.0),
        ] {
            rec = rec.iter().map(|&x| f.process(x)).collect();
        }
        let rec = add_noise(&rec, 0.005, 5);
        let lags = find_lags(&train, &rec, 300.0, 0.5);
        assert_all_found(&train, &lags, delay / 16.0, 0.5);
        let stats = LatencyStats::from_lags(&lags, train.onsets.len()).unwrap();
        assert!(stats.p95_ms - stats.p05_ms < 0.02, "consistent: {stats}");
    }

    #[test]
    fn survives_real_opus() {
        use crate::codec::{EncoderConfig, OpusDecoder, OpusEncoder};
        use crate::jitter::Decode;
        let train = chirp_train(48_000, 6.0, 200, 6);
        // Plain libopus defaults at 24 kbit/s: no FEC or DTX taking bits from the chirps.
        let mut enc = OpusEncoder::new(EncoderConfig {
            bitrate_bps: 24_000,
            fec: false,
            dtx: false,
            expected_loss_pct: 0,
            ..EncoderConfig::default()
        })
        .unwrap();
        let lookahead = f64::from(enc.lookahead());
        let mut dec = OpusDecoder::new().unwrap();
        let mut rec = Vec::new();
        let mut packet = Vec::new();
        for frame in train.samples.chunks_exact(960) {
            enc.encode(frame, &mut packet).unwrap();
            dec.decode(&packet, &mut rec).unwrap();
        }
        let lags = find_lags(&train, &rec, 100.0, 0.5);
        let stats = LatencyStats::from_lags(&lags, train.onsets.len()).unwrap();
        assert_eq!(stats.count, stats.expected, "{stats}");
        assert!(lags.iter().all(|l| l.score > 0.8), "{lags:?}");
        // The codec's delay is its lookahead (6.5 ms at 48 kHz), give or take
        // the group delay of its internal filters (measured: 6.45 ms).
        assert!(
            (stats.median_ms - lookahead / 48.0).abs() < 0.2,
            "{stats}, lookahead {lookahead}"
        );
        assert!(stats.p95_ms - stats.p05_ms < 0.05, "stable: {stats}");
    }

    #[test]
    fn quiet_chirps_next_to_loud_noise_are_measured() {
        // 60 dB quieter than a preceding noise burst in the same FFT block,
        // followed by digital silence: neither f32 FFT round-off nor
        // prefix-sum cancellation may invent or distort peaks.
        let sr = 48_000;
        let train = chirp_train(sr, 4.0, 1000, 15);
        let delay = 4321.5;
        let mut rec: Vec<f32> = render_delayed(&train, delay, train.samples.len() + 24_000)
            .iter()
            .map(|x| x * 1e-3)
            .collect();
        let burst = add_noise(&vec![0.0; 40_000], 0.1, 4);
        rec[..40_000].copy_from_slice(&burst);
        let lags = find_lags(&train, &rec, 500.0, 0.5);
        assert_all_found(&train, &lags, delay / 48.0, 0.05);
        assert!(max_error(&lags, delay / 48.0) < 0.001);
        assert!(lags.iter().all(|l| l.score > 0.99), "{lags:?}");

        // The burst alone, then silence: nothing is found anywhere.
        let mut burst_only = vec![0.0; rec.len()];
        burst_only[..40_000].copy_from_slice(&burst);
        assert!(find_lags(&train, &burst_only, 500.0, 0.3).is_empty());
    }

    #[test]
    fn different_chirps_are_each_matched_to_their_own_waveform() {
        // A hand-made train whose chirps differ (every other one reversed,
        // i.e. a down-sweep): each must be searched for with its own shape.
        let mut train = chirp_train(16_000, 6.0, 100, 16);
        let m = train.chirp_len;
        for &onset in train.onsets.iter().skip(1).step_by(2) {
            train.samples[onset..onset + m].reverse();
        }
        let delay = 0.310 * 16_000.0 + 0.4;
        let rec = fractional_delay(&train.samples, delay, train.samples.len() + 8_000);
        let lags = find_lags(&train, &rec, 500.0, 0.5);
        assert_all_found(&train, &lags, delay / 16.0, 0.05);
    }

    #[test]
    fn latency_longer_than_chirp_spacing_is_not_aliased() {
        // 380 ms: each chirp's 500 ms window also holds its neighbours'
        // echoes, which correlate just as well. Irregular spacing must sort
        // them out.
        let train = chirp_train(16_000, 15.0, 100, 8);
        let delay = 0.380 * 16_000.0 + 0.3;
        let rec = render_delayed(&train, delay, train.samples.len() + 16_000);
        let lags = find_lags(&train, &rec, 500.0, 0.5);
        assert_all_found(&train, &lags, delay / 16.0, 0.05);
    }

    #[test]
    fn latency_beyond_max_lag_is_not_clipped_to_it() {
        // The true peak is 2 samples past the search range: neither the edge
        // of the range (correlating ~0.9) nor the peak's side lobe one carrier
        // period earlier is reported; nothing is found instead of a plausible
        // wrong number.
        let train = chirp_train(48_000, 4.0, 200, 17);
        let rec = render_delayed(&train, 4_802.0, train.samples.len() + 24_000);
        let chirp = &train.samples[train.onsets[0]..][..train.chirp_len];
        let (side_lag, side) = best_alignment(chirp, &rec[train.onsets[0]..], 4_790).unwrap();
        assert!((4_770.0..4_785.0).contains(&side_lag), "{side_lag}");
        assert!((0.2..0.5).contains(&side), "side lobe {side}");

        assert!(find_lags(&train, &rec, 100.0, 0.2).is_empty());
        let lags = find_lags(&train, &rec, 100.05, 0.2);
        assert_all_found(&train, &lags, 4_802.0 / 48.0, 0.01);
    }

    #[test]
    fn lost_chirps_are_omitted_not_misplaced() {
        let train = chirp_train(16_000, 10.0, 100, 9);
        let delay = 0.3 * 16_000.0; // longer than the shortest chirp interval
        let mut rec = render_delayed(&train, delay, train.samples.len() + 16_000);
        let lost = [3usize, 4, 10];
        for &k in &lost {
            let start = train.onsets[k] + delay as usize;
            rec[start..start + train.chirp_len].fill(0.0);
        }
        let lags = find_lags(&train, &rec, 500.0, 0.5);
        assert_eq!(lags.len(), train.onsets.len() - lost.len());
        assert!(
            lost.iter()
                .all(|&k| lags.iter().all(|l| l.onset != train.onsets[k]))
        );
        assert!(max_error(&lags, 300.0) < 0.05, "{lags:?}");
        let stats = LatencyStats::from_lags(&lags, train.onsets.len()).unwrap();
        assert!(stats.to_string().ends_with(&format!(
            "over {}/{} chirps",
            train.onsets.len() - 3,
            train.onsets.len()
        )));
    }

    #[test]
    fn gain_change_does_not_change_the_result() {
        let train = chirp_train(48_000, 6.0, 200, 10);
        let rec = add_noise(
            &render_delayed(&train, 777.7, train.samples.len() + 24_000),
            0.01,
            3,
        );
        let quiet: Vec<f32> = rec.iter().map(|x| x * 0.3).collect();
        let a = find_lags(&train, &rec, 500.0, 0.3);
        let b = find_lags(&train, &quiet, 500.0, 0.3);
        assert_eq!(a.len(), train.onsets.len());
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.onset, y.onset);
            assert!((x.lag_ms - y.lag_ms).abs() < 1e-6, "{x:?} vs {y:?}");
            assert!((x.score - y.score).abs() < 1e-5, "{x:?} vs {y:?}");
        }
        let speech = speech_like(16_000, 2.0, 1);
        let mut hay = vec![0.0; 40_000];
        hay[5_000..5_000 + speech.len()].copy_from_slice(&speech);
        let loud = best_alignment(&speech, &hay, 10_000).unwrap();
        let soft: Vec<f32> = hay.iter().map(|x| x * 0.3).collect();
        let soft = best_alignment(&speech, &soft, 10_000).unwrap();
        assert!((loud.0 - soft.0).abs() < 1e-6 && (loud.1 - soft.1).abs() < 1e-5);
    }

    #[test]
    fn silence_yields_no_lags() {
        let train = chirp_train(48_000, 5.0, 200, 12);
        let silent = vec![0.0; train.samples.len() + 24_000];
        assert!(find_lags(&train, &silent, 500.0, 0.3).is_empty());
        assert!(find_lags(&train, &silent, 500.0, 0.0).is_empty());
        // Near-silence (dither) is not a chirp either.
        let dither = add_noise(&silent, 1e-10, 1);
        assert!(find_lags(&train, &dither, 500.0, 0.3).is_empty());
        // A silent haystack scores 0.
        let chirp = &train.samples[train.onsets[0]..][..train.chirp_len];
        assert_eq!(best_alignment(chirp, &silent, 1000), Some((0.0, 0.0)));
    }

    #[test]
    fn edge_cases_do_not_panic() {
        let train = chirp_train(16_000, 5.0, 200, 13);
        let rec = render_delayed(&train, 500.0, train.samples.len());
        assert!(find_lags(&train, &[], 500.0, 0.5).is_empty());
        // Recording cut short: only chirps that fit are found.
        let short = &rec[..train.onsets[3] + 600];
        let lags = find_lags(&train, short, 500.0, 0.5);
        assert_eq!(lags.len(), 3);
        assert!(max_error(&lags, 500.0 / 16.0) < 0.05);
        // Zero / negative / NaN max lag: only lag 0 is searched.
        assert!(find_lags(&train, &rec, 0.0, 0.5).is_empty());
        assert!(find_lags(&train, &rec, -5.0, 0.5).is_empty());
        assert!(find_lags(&train, &rec, f32::NAN, 0.5).is_empty());
        assert_eq!(
            find_lags(&train, &train.samples, 0.0, 0.99).len(),
            train.onsets.len()
        );
        // Empty or malformed trains.
        let empty = chirp_train(16_000, 0.0, 0, 1);
        assert!(find_lags(&empty, &rec, 500.0, 0.5).is_empty());
        let mut broken = train.clone();
        broken.onsets.push(usize::MAX - 10);
        broken.sample_rate = 16_000;
        assert_eq!(
            find_lags(&broken, &rec, 500.0, 0.5).len(),
            train.onsets.len()
        );
        broken.sample_rate = 0;
        assert!(find_lags(&broken, &rec, 500.0, 0.5).is_empty());
        // Non-finite samples are treated as silence, not propagated.
        let mut nan = rec.clone();
        nan[10] = f32::NAN;
        nan[20] = f32::INFINITY;
        assert_eq!(
            find_lags(&train, &nan, 500.0, 0.5).len(),
            train.onsets.len()
        );

        assert_eq!(best_alignment(&[], &rec, 10), None);
        assert_eq!(best_alignment(&rec[..100], &[], 10), None);
        assert_eq!(best_alignment(&rec[..100], &rec[..50], 10), None);
        assert_eq!(best_alignment(&[0.0; 64], &rec, 10), None, "silent needle");
        assert_eq!(best_alignment(&[0.25; 64], &rec, 10), None, "DC needle");
        // The first chirp's echo (all chirps are identical: earliest wins).
        let at = train.onsets[0] + 500 + 100;
        let (l, s) = best_alignment(&rec[at..at + 200], &rec, usize::MAX).unwrap();
        assert!((l - at as f64).abs() < 0.01 && s > 0.999, "{l} {s}");
    }

    #[test]
    fn speech_found_at_known_offset() {
        let sr = 48_000;
        let speech = speech_like(sr, 3.0, 21);
        let offset = 12_345;
        let mut hay = vec![0.0; 4 * sr as usize];
        hay[offset..offset + speech.len()].copy_from_slice(&speech);
        let hay = add_noise(&hay, 1e-5, 2);

        let t = Instant::now();
        let (lag, score) = best_alignment(&speech, &hay, sr as usize).unwrap();
        let elapsed = t.elapsed();
        assert!((lag - offset as f64).abs() < 0.05, "lag {lag}");
        assert!(score > 0.99, "score {score}");
        // Debug build: budget is "well under a second" on a quiet machine;
        // the bound is generous because tests share a busy 2-core box.
        assert!(elapsed.as_secs_f64() < 2.0, "took {elapsed:?}");

        // A different utterance is not "found".
        let other = speech_like(sr, 3.0, 22);
        let (_, other_score) = best_alignment(&other, &hay, sr as usize).unwrap();
        assert!(other_score < 0.3, "unrelated speech scored {other_score}");
    }

    #[test]
    fn speech_fractional_offset_through_windowed_sinc() {
        let sr = 16_000;
        let speech = speech_like(sr, 2.0, 23);
        let delay = 3210.37;
        let hay = fractional_delay(&speech, delay, speech.len() + 8_000);
        let (lag, score) = best_alignment(&speech, &hay, 6_000).unwrap();
        assert!(
            (lag - delay).abs() * 1000.0 / f64::from(sr) < 0.05,
            "lag {lag}"
        );
        assert!(score > 0.98, "score {score}");
    }

    #[test]
    fn forty_chirps_over_half_a_second_is_fast() {
        let train = chirp_train(48_000, 14.0, 200, 14);
        assert!(train.onsets.len() >= 30);
        let rec = render_delayed(&train, 9_000.5, train.samples.len() + 24_000);
        let t = Instant::now();
        let lags = find_lags(&train, &rec, 500.0, 0.5);
        let elapsed = t.elapsed();
        assert_eq!(lags.len(), train.onsets.len());
        assert!(elapsed.as_secs_f64() < 2.0, "took {elapsed:?}");
    }

    #[test]
    fn stats_on_a_known_set() {
        let lags: Vec<Lag> = (1..=101).rev().map(|i| lag(f64::from(i))).collect();
        let s = LatencyStats::from_lags(&lags, 110).unwrap();
        assert_eq!(s.count, 101);
        assert_eq!(s.expected, 110);
        assert_eq!(s.median_ms, 51.0);
        assert_eq!(s.p05_ms, 6.0);
        assert_eq!(s.p95_ms, 96.0);
        assert_eq!(s.min_ms, 1.0);
        assert_eq!(s.max_ms, 101.0);

        // Interpolated percentiles on an even count: 10, 20, 30, 40.
        let lags: Vec<Lag> = [40.0, 10.0, 30.0, 20.0].into_iter().map(lag).collect();
        let s = LatencyStats::from_lags(&lags, 4).unwrap();
        assert_eq!(s.median_ms, 25.0);
        assert!((s.p05_ms - 11.5).abs() < 1e-12);
        assert!((s.p95_ms - 38.5).abs() < 1e-12);
        assert_eq!(
            s.to_string(),
            "mouth-to-ear latency: median 25.00 ms (p5 11.50, p95 38.50, min 10.00, max 40.00) over 4/4 chirps"
        );

        let one = LatencyStats::from_lags(&[lag(38.42)], 32).unwrap();
        assert_eq!(
            (one.median_ms, one.p05_ms, one.p95_ms),
            (38.42, 38.42, 38.42)
        );
        assert_eq!(LatencyStats::from_lags(&[], 5), None);
        assert_eq!(LatencyStats::from_lags(&[lag(f64::NAN)], 5), None);
    }
}
