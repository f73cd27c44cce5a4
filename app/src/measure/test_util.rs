//! Signal-processing helpers for the measurement tests: channel models whose
//! effect on latency is known exactly (or bounded), so tests can check the
//! measurement against ground truth.

use std::f64::consts::PI;

use super::chirp::SplitMix64;

/// `x` plus deterministic Gaussian white noise of the given power (variance).
pub(crate) fn add_noise(x: &[f32], power: f32, seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed);
    let sigma = f64::from(power).sqrt();
    x.iter()
        .map(|&v| {
            // Box-Muller.
            let u1 = 1.0 - rng.next_f64();
            let u2 = rng.next_f64();
            let g = (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos();
            v + (sigma * g) as f32
        })
        .collect()
}

/// Blackman window value at tap `i` of `n`.
fn blackman(i: usize, n: usize) -> f64 {
    let x = 2.0 * PI * i as f64 / (n - 1) as f64;
    0.42 - 0.5 * x.cos() + 0.08 * (2.0 * x).cos()
}

fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-12 {
        1.0
    } else {
        (PI * x).sin() / (PI * x)
    }
}

/// `x` delayed by `delay` samples (integer part by shifting, fraction by a
/// 129-tap Blackman-windowed sinc), output `len` samples long.
pub(crate) fn fractional_delay(x: &[f32], delay: f64, len: usize) -> Vec<f32> {
    const HALF: i64 = 64;
    let whole = delay.floor() as i64;
    let frac = delay - delay.floor();
    // h[j] for j in -HALF..=HALF approximates sinc(j - frac).
    let taps: Vec<f64> = (-HALF..=HALF)
        .map(|j| sinc(j as f64 - frac) * blackman((j + HALF) as usize, (2 * HALF + 1) as usize))
        .collect();
    (0..len as i64)
        .map(|n| {
            // y[n] = sum_j h[j] x[n - whole - j]
            let mut acc = 0.0;
            for (t, &h) in taps.iter().enumerate() {
                let idx = n - whole - (t as i64 - HALF);
                if idx >= 0 && (idx as usize) < x.len() {
                    acc += h * f64::from(x[idx as usize]);
                }
            }
            acc as f32
        })
        .collect()
}

/// Linear-phase band-pass FIR (windowed sinc, odd `n`): delay (n - 1) / 2.
pub(crate) fn bandpass_fir(sample_rate: u32, lo: f64, hi: f64, n: usize) -> Vec<f64> {
    let sr = f64::from(sample_rate);
    let mid = (n / 2) as f64;
    (0..n)
        .map(|i| {
            let t = i as f64 - mid;
            let h =
                2.0 * hi / sr * sinc(2.0 * hi / sr * t) - 2.0 * lo / sr * sinc(2.0 * lo / sr * t);
            h * blackman(i, n)
        })
        .collect()
}

/// Causal FIR filtering, output as long as the input.
pub(crate) fn fir_filter(taps: &[f64], x: &[f32]) -> Vec<f32> {
    (0..x.len())
        .map(|n| {
            taps.iter()
                .enumerate()
                .take(n + 1)
                .map(|(k, &h)| h * f64::from(x[n - k]))
                .sum::<f64>() as f32
        })
        .collect()
}

/// RBJ-cookbook biquad (Butterworth Q), a minimum-phase filter like those in
/// real capture and playback paths.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Biquad {
    b: [f64; 3],
    a: [f64; 2],
    x: [f64; 2],
    y: [f64; 2],
}

impl Biquad {
    fn new(sample_rate: u32, freq: f64, highpass: bool) -> Self {
        let w = 2.0 * PI * freq / f64::from(sample_rate);
        let alpha = w.sin() / (2.0 * std::f64::consts::FRAC_1_SQRT_2);
        let cos = w.cos();
        let a0 = 1.0 + alpha;
        let b = if highpass {
            [(1.0 + cos) / 2.0, -(1.0 + cos), (1.0 + cos) / 2.0]
        } else {
            [(1.0 - cos) / 2.0, 1.0 - cos, (1.0 - cos) / 2.0]
        };
        Self {
            b: b.map(|v| v / a0),
            a: [-2.0 * cos / a0, (1.0 - alpha) / a0],
            x: [0.0; 2],
            y: [0.0; 2],
        }
    }

    pub(crate) fn lowpass(sample_rate: u32, freq: f64) -> Self {
        Self::new(sample_rate, freq, false)
    }

    pub(crate) fn highpass(sample_rate: u32, freq: f64) -> Self {
        Self::new(sample_rate, freq, true)
    }

    pub(crate) fn process(&mut self, x: f32) -> f32 {
        let x = f64::from(x);
        let y = self.b[0] * x + self.b[1] * self.x[0] + self.b[2] * self.x[1]
            - self.a[0] * self.y[0]
            - self.a[1] * self.y[1];
        self.x = [x, self.x[0]];
        self.y = [y, self.y[0]];
        y as f32
    }
}
