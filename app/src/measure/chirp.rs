//! Probe signals: the chirp train used for latency measurement and a
//! deterministic speech-like signal for "does B hear A" checks.
//!
//! Everything here is deterministic from a `seed` (tiny built-in PRNG, no
//! `rand`), so a failing measurement can be reproduced bit for bit.

use std::f64::consts::PI;

/// Chirp length. 30 ms at a 3.1 kHz sweep gives a time-bandwidth product of
/// ~90: a correlation peak ~0.3 ms wide with ~20 dB of processing gain, yet
/// short enough that a jitter buffer cannot stretch it noticeably.
const CHIRP_MS: f64 = 30.0;
/// Sweep start. Above mains hum and the high-pass filters of voice pipelines.
const CHIRP_F0_HZ: f64 = 300.0;
/// Sweep end. Telephone band edge, so the chirp survives even narrowband Opus
/// (4 kHz audio bandwidth) and most noise suppressors' "speech" band.
const CHIRP_F1_HZ: f64 = 3400.0;
/// Peak amplitude: loud enough to dominate noise, far from clipping after AGC.
const CHIRP_AMPLITUDE: f64 = 0.5;
/// Shortest gap between chirp onsets. Must exceed any plausible echo tail and
/// bounds how far latency may wander before chirps become ambiguous.
const MIN_INTERVAL_MS: f64 = 250.0;
/// Longest gap between chirp onsets.
const MAX_INTERVAL_MS: f64 = 450.0;

/// A probe signal: mono f32 samples in [-1,1] and the sample index where each
/// chirp starts.
///
/// The onsets are kept alongside the samples because the measurement needs to
/// know exactly what was played and when: every chirp is located against the
/// very samples that were sent, not against an idealised copy.
#[derive(Debug, Clone, PartialEq)]
pub struct ChirpTrain {
    /// The signal to feed in as the microphone.
    pub samples: Vec<f32>,
    /// Sample index (into `samples`) where each chirp starts, ascending.
    pub onsets: Vec<usize>,
    /// Length of each chirp in samples.
    pub chirp_len: usize,
    /// Sample rate of `samples` in Hz.
    pub sample_rate: u32,
}

/// Chirps (30 ms linear sweeps 300 Hz -> 3.4 kHz, inside Opus's voice band,
/// Hann-windowed, amplitude 0.5) at irregular intervals (250..450 ms apart,
/// deterministic from `seed`), starting after `lead_in_ms`, filling `seconds`.
///
/// Why irregular: with a fixed period, a chirp that arrives one period late is
/// indistinguishable from the next chirp arriving on time, so any latency
/// longer than the period would alias. With random gaps, a mismatched
/// chirp-to-echo pairing produces lags that scatter instead of agreeing, which
/// [`find_lags`](super::find_lags) uses to reject them.
///
/// Why Hann-windowed: a hard-edged chirp has a broadband click at each end that
/// codecs and noise suppressors mangle; the window keeps the energy in-band and
/// makes the correlation peak smooth enough for parabolic interpolation.
///
/// Only whole chirps are placed: every `onset + chirp_len <= samples.len()`.
/// Degenerate arguments (zero rate, non-positive duration) give an empty train.
pub fn chirp_train(sample_rate: u32, seconds: f32, lead_in_ms: u32, seed: u64) -> ChirpTrain {
    let len = duration_samples(sample_rate, f64::from(seconds));
    let chirp_len = duration_samples(sample_rate, CHIRP_MS / 1000.0);
    let mut train = ChirpTrain {
        samples: vec![0.0; len],
        onsets: Vec::new(),
        chirp_len,
        sample_rate,
    };
    if chirp_len == 0 || len < chirp_len {
        return train;
    }

    let sr = f64::from(sample_rate);
    let min_gap = MIN_INTERVAL_MS / 1000.0 * sr;
    let max_gap = MAX_INTERVAL_MS / 1000.0 * sr;
    let mut rng = SplitMix64::new(seed);
    let mut onset = duration_samples(sample_rate, f64::from(lead_in_ms) / 1000.0);
    while onset.checked_add(chirp_len).is_some_and(|end| end <= len) {
        train.onsets.push(onset);
        let gap = rng.range(min_gap, max_gap).round() as usize;
        onset = onset.saturating_add(gap.max(1));
    }

    let chirp = render_chirp(sample_rate, chirp_len, 0.0);
    for &onset in &train.onsets {
        train.samples[onset..onset + chirp_len].copy_from_slice(&chirp);
    }
    train
}

/// The chirp waveform at time `t` seconds after its onset (zero outside
/// `[0, duration]`). Continuous in `t`, so tests can render a train delayed by
/// an exact fractional number of samples.
fn chirp_value(t: f64, duration: f64, sample_rate: f64) -> f64 {
    if !(0.0..=duration).contains(&t) || duration <= 0.0 {
        return 0.0;
    }
    // Keep the sweep below Nyquist at low sample rates (e.g. 8 kHz).
    let f1 = CHIRP_F1_HZ.min(0.45 * sample_rate);
    let f0 = CHIRP_F0_HZ.min(f1);
    let phase = 2.0 * PI * (f0 * t + 0.5 * (f1 - f0) / duration * t * t);
    let window = 0.5 - 0.5 * (2.0 * PI * t / duration).cos();
    CHIRP_AMPLITUDE * window * phase.sin()
}

/// One chirp of `chirp_len` samples, shifted later by `delay` (fractional)
/// samples and truncated to `chirp_len`.
fn render_chirp(sample_rate: u32, chirp_len: usize, delay: f64) -> Vec<f32> {
    let sr = f64::from(sample_rate);
    let duration = chirp_len as f64 / sr;
    (0..chirp_len)
        .map(|n| chirp_value((n as f64 - delay) / sr, duration, sr) as f32)
        .collect()
}

/// Renders `train`'s chirps delayed by exactly `delay` samples (may be
/// fractional) into a buffer of `len` samples: what an ideal, distortion-free
/// path with that latency would record.
#[cfg(test)]
pub(crate) fn render_delayed(train: &ChirpTrain, delay: f64, len: usize) -> Vec<f32> {
    let sr = f64::from(train.sample_rate);
    let duration = train.chirp_len as f64 / sr;
    let mut out = vec![0.0f32; len];
    for &onset in &train.onsets {
        let start = onset as f64 + delay;
        let first = start.floor().max(0.0) as usize;
        let last = ((start + train.chirp_len as f64).ceil().max(0.0) as usize).min(len);
        for (n, slot) in out.iter_mut().enumerate().take(last).skip(first) {
            *slot += chirp_value((n as f64 - start) / sr, duration, sr) as f32;
        }
    }
    out
}

/// A deterministic speech-like test signal: voiced segments (glottal-pulse
/// train at a wandering pitch 100-220 Hz through 3 formant resonators),
/// syllable-rate (~4 Hz) amplitude envelope, short pauses; peak 0.5.
///
/// Why not a chirp or noise: codecs and voice processing (Opus SILK, noise
/// suppression, VAD/DTX) treat speech specially, so an end-to-end "B's output
/// contains A's speech" test is only meaningful with something that looks like
/// speech to them — harmonic, formant-shaped, syllabic, with pauses. The pitch
/// wanders so the signal is not periodic, which keeps its cross-correlation
/// peak unique.
pub fn speech_like(sample_rate: u32, seconds: f32, seed: u64) -> Vec<f32> {
    let len = duration_samples(sample_rate, f64::from(seconds));
    if len == 0 {
        return Vec::new();
    }
    let sr = f64::from(sample_rate);
    let mut rng = SplitMix64::new(seed ^ 0x5eec_415e_5eec_415e);

    // Vowel formants (F1, F2, F3) in Hz, roughly /a/ /i/ /u/ /e/ /o/.
    const VOWELS: [[f64; 3]; 5] = [
        [730.0, 1090.0, 2440.0],
        [270.0, 2290.0, 3010.0],
        [300.0, 870.0, 2240.0],
        [530.0, 1840.0, 2480.0],
        [570.0, 840.0, 2410.0],
    ];
    const BANDWIDTHS: [f64; 3] = [80.0, 100.0, 140.0];

    let mut out = vec![0.0f64; len];
    let mut resonators = [Resonator::default(); 3];
    // Spectral tilt of the glottal source (~-6 dB/octave above ~300 Hz).
    let tilt = (-2.0 * PI * 300.0 / sr).exp();
    let mut tilt_state = 0.0;

    let mut pitch = rng.range(120.0, 180.0);
    let mut pitch_target = rng.range(100.0, 220.0);
    let pitch_glide = 1.0 - (-1.0 / (0.08 * sr)).exp(); // ~80 ms time constant
    let mut glottal_phase = 0.0;

    let mut n = 0usize;
    let mut syllables_until_pause = 2 + (rng.next_u64() % 4) as usize;
    while n < len {
        // One syllable: a vowel under a raised-cosine envelope.
        let syl_len = ((rng.range(0.16, 0.30) * sr) as usize).max(1);
        let gain = rng.range(0.5, 1.0);
        let vowel = VOWELS[(rng.next_u64() % VOWELS.len() as u64) as usize];
        for (res, (&f, &bw)) in resonators.iter_mut().zip(vowel.iter().zip(&BANDWIDTHS)) {
            res.tune(f, bw, sr);
        }
        for i in 0..syl_len.min(len - n) {
            if i % (sample_rate as usize / 20).max(1) == 0 {
                pitch_target = rng.range(100.0, 220.0);
            }
            pitch += (pitch_target - pitch) * pitch_glide;
            glottal_phase += pitch / sr;
            let mut excitation = 0.0;
            if glottal_phase >= 1.0 {
                glottal_phase -= 1.0;
                excitation = 1.0;
            }
            // A little aspiration noise, as in real voicing.
            excitation += 0.02 * rng.range(-1.0, 1.0);
            tilt_state = excitation + tilt * tilt_state;
            let mut y = tilt_state;
            for res in &mut resonators {
                y = res.process(y);
            }
            let env = (PI * i as f64 / syl_len as f64).sin().powi(2);
            out[n + i] = y * env * gain;
        }
        n += syl_len;

        syllables_until_pause -= 1;
        if syllables_until_pause == 0 {
            // A short pause between "words"; filters ring down in silence.
            n += (rng.range(0.12, 0.35) * sr) as usize;
            syllables_until_pause = 2 + (rng.next_u64() % 4) as usize;
        }
    }

    // Speech has no DC; the resonators pass the pulse train's mean, so block it.
    let dc_pole = (-2.0 * PI * 60.0 / sr).exp();
    let (mut prev_x, mut prev_y) = (0.0, 0.0);
    for v in &mut out {
        let y = *v - prev_x + dc_pole * prev_y;
        prev_x = *v;
        prev_y = y;
        *v = y;
    }

    let peak = out.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let scale = if peak > 0.0 { 0.5 / peak } else { 0.0 };
    out.iter().map(|v| (v * scale) as f32).collect()
}

/// Two-pole resonator with unity gain at DC (Klatt-style formant filter).
#[derive(Debug, Clone, Copy, Default)]
struct Resonator {
    a1: f64,
    a2: f64,
    g: f64,
    y1: f64,
    y2: f64,
}

impl Resonator {
    fn tune(&mut self, freq: f64, bandwidth: f64, sample_rate: f64) {
        if freq >= 0.45 * sample_rate {
            // Above Nyquist at low sample rates: pass through unchanged.
            (self.a1, self.a2, self.g) = (0.0, 0.0, 1.0);
            return;
        }
        let r = (-PI * bandwidth / sample_rate).exp();
        self.a1 = 2.0 * r * (2.0 * PI * freq / sample_rate).cos();
        self.a2 = -r * r;
        self.g = 1.0 - self.a1 - self.a2;
    }

    fn process(&mut self, x: f64) -> f64 {
        let y = self.g * x + self.a1 * self.y1 + self.a2 * self.y2;
        self.y2 = self.y1;
        self.y1 = y;
        y
    }
}

/// `seconds` at `sample_rate`, rounded; 0 for non-finite or negative input.
fn duration_samples(sample_rate: u32, seconds: f64) -> usize {
    let n = (seconds * f64::from(sample_rate)).round();
    if n.is_finite() && n > 0.0 {
        n as usize
    } else {
        0
    }
}

/// SplitMix64: tiny, fast, statistically decent, and — the point here —
/// fully specified, so signals are identical across platforms and versions.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 bits of precision.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)`.
    pub(crate) fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.next_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustfft::{FftPlanner, num_complex::Complex};

    /// Fraction of `x`'s energy between `lo` and `hi` Hz.
    fn band_energy_fraction(x: &[f32], sample_rate: u32, lo: f64, hi: f64) -> f64 {
        let n = x.len();
        let mut buf: Vec<Complex<f64>> =
            x.iter().map(|&v| Complex::new(f64::from(v), 0.0)).collect();
        FftPlanner::new().plan_fft_forward(n).process(&mut buf);
        let (mut inband, mut total) = (0.0, 0.0);
        for (k, c) in buf.iter().enumerate().take(n / 2 + 1) {
            let f = k as f64 * f64::from(sample_rate) / n as f64;
            let e = c.norm_sqr();
            total += e;
            if (lo..=hi).contains(&f) {
                inband += e;
            }
        }
        inband / total
    }

    #[test]
    fn train_layout_is_as_documented() {
        let t = chirp_train(48_000, 10.0, 500, 7);
        assert_eq!(t.sample_rate, 48_000);
        assert_eq!(t.samples.len(), 480_000);
        assert_eq!(t.chirp_len, 1440);
        assert_eq!(t.onsets[0], 24_000, "first chirp right after the lead-in");
        // 9.5 s of room at 250..450 ms per chirp.
        assert!(
            (21..=39).contains(&t.onsets.len()),
            "{} chirps",
            t.onsets.len()
        );
        for w in t.onsets.windows(2) {
            let gap_ms = (w[1] - w[0]) as f64 / 48.0;
            assert!((250.0..=450.0).contains(&gap_ms), "gap {gap_ms} ms");
        }
        let gaps: Vec<usize> = t.onsets.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            gaps.iter().any(|&g| g != gaps[0]),
            "intervals must be irregular"
        );
        assert!(t.onsets.iter().all(|&o| o + t.chirp_len <= t.samples.len()));

        let peak = t.samples.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!((0.45..=0.5).contains(&peak), "peak {peak}");
        // Silence everywhere except inside chirps.
        let mut inside = vec![false; t.samples.len()];
        for &o in &t.onsets {
            inside[o..o + t.chirp_len].fill(true);
        }
        assert!(t.samples.iter().zip(&inside).all(|(&s, &i)| i || s == 0.0));
    }

    #[test]
    fn train_is_deterministic_from_seed() {
        assert_eq!(
            chirp_train(16_000, 5.0, 100, 42),
            chirp_train(16_000, 5.0, 100, 42)
        );
        assert_ne!(
            chirp_train(16_000, 5.0, 100, 42).onsets,
            chirp_train(16_000, 5.0, 100, 43).onsets
        );
    }

    #[test]
    fn chirp_energy_is_inside_the_voice_band() {
        let t = chirp_train(48_000, 1.0, 0, 1);
        let chirp = &t.samples[..t.chirp_len];
        let frac = band_energy_fraction(chirp, 48_000, 250.0, 3500.0);
        assert!(frac > 0.99, "only {frac} of the energy in 250..3500 Hz");
    }

    #[test]
    fn chirp_stays_below_nyquist_at_8k() {
        let t = chirp_train(8_000, 1.0, 0, 1);
        assert_eq!(t.chirp_len, 240);
        let frac = band_energy_fraction(&t.samples[..t.chirp_len], 8_000, 250.0, 3500.0);
        assert!(frac > 0.98, "{frac}");
    }

    #[test]
    fn degenerate_arguments_give_empty_trains() {
        for t in [
            chirp_train(0, 5.0, 0, 1),
            chirp_train(48_000, 0.0, 0, 1),
            chirp_train(48_000, -1.0, 0, 1),
            chirp_train(48_000, f32::NAN, 0, 1),
            chirp_train(48_000, 0.01, 0, 1), // shorter than one chirp
            chirp_train(48_000, 1.0, 5_000, 1), // lead-in longer than the signal
        ] {
            assert!(t.onsets.is_empty());
        }
        assert!(speech_like(0, 1.0, 1).is_empty());
        assert!(speech_like(48_000, 0.0, 1).is_empty());
    }

    #[test]
    fn delayed_render_matches_train_at_zero_delay() {
        let t = chirp_train(16_000, 3.0, 200, 3);
        let r = render_delayed(&t, 0.0, t.samples.len());
        let err = t
            .samples
            .iter()
            .zip(&r)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-6, "{err}");
    }

    #[test]
    fn speech_like_looks_like_speech() {
        let sr = 16_000;
        let s = speech_like(sr, 4.0, 9);
        assert_eq!(s.len(), 64_000);
        assert_eq!(s, speech_like(sr, 4.0, 9), "deterministic");
        assert_ne!(s, speech_like(sr, 4.0, 10), "seed matters");
        let peak = s.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!((peak - 0.5).abs() < 1e-6);

        // Syllabic: 50 ms frames are a mix of loud and (near-)silent.
        let frame = 800;
        let rms: Vec<f32> = s
            .chunks(frame)
            .map(|c| (c.iter().map(|v| v * v).sum::<f32>() / c.len() as f32).sqrt())
            .collect();
        let loudest = rms.iter().cloned().fold(0.0, f32::max);
        let quiet = rms.iter().filter(|&&r| r < loudest * 0.05).count();
        let loud = rms.iter().filter(|&&r| r > loudest * 0.3).count();
        assert!(quiet >= 5, "pauses/gaps expected, {quiet} quiet frames");
        assert!(loud >= 20, "voiced frames expected, {loud} loud frames");

        // Voiced: in loud frames the autocorrelation peaks at a pitch period
        // within 100..220 Hz (searching a wider 80..300 Hz range).
        let mut pitched = 0;
        for (i, c) in s.chunks(frame).enumerate() {
            if rms[i] < loudest * 0.3 {
                continue;
            }
            let ac = |lag: usize| -> f32 { c.iter().zip(&c[lag..]).map(|(a, b)| a * b).sum() };
            let (lo, hi) = (sr as usize / 300, sr as usize / 80);
            let best = (lo..=hi).max_by(|&a, &b| ac(a).total_cmp(&ac(b))).unwrap();
            let f0 = f64::from(sr) / best as f64;
            if (95.0..=230.0).contains(&f0) && ac(best) > 0.3 * ac(0) {
                pitched += 1;
            }
        }
        assert!(
            pitched * 10 >= loud * 8,
            "{pitched}/{loud} loud frames pitched"
        );

        // Formant-shaped, band-limited like speech: mostly below 4 kHz.
        assert!(band_energy_fraction(&s, sr, 80.0, 4000.0) > 0.95);
    }
}
