//! The input level meter: what the microphone test shows, measured the way the voice-activation
//! detector measures it (mean energy of 10 ms blocks, dBFS), so the threshold line drawn on the
//! meter means what the detector will decide.
//!
//! [`LevelMeter`] is pure (samples in, level out); [`SharedLevel`] carries its reading to the
//! UI thread through one atomic, never a lock.

use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

/// The quietest level a meter reports, dBFS (digital silence reads as this).
pub const FLOOR_DB: f32 = -100.0;

/// How fast the reading falls after a loud block, dB per second: fast enough to show the
/// pauses between words, slow enough for the eye to follow.
const RELEASE_DB_PER_S: f32 = 40.0;

/// Block levels with a fast attack and a steady release, like a VU meter.
#[derive(Debug, Clone)]
pub struct LevelMeter {
    /// Samples per 10 ms block at the source's rate.
    block: usize,
    energy: f32,
    filled: usize,
    level_db: f32,
    release_per_block: f32,
}

impl LevelMeter {
    /// A meter for samples at `rate` Hz.
    pub fn new(rate: u32) -> Self {
        Self {
            block: (rate as usize / 100).max(1),
            energy: 0.0,
            filled: 0,
            level_db: FLOOR_DB,
            release_per_block: RELEASE_DB_PER_S / 100.0,
        }
    }

    /// Takes the next samples (any amount; blocks may straddle calls).
    pub fn push(&mut self, samples: &[f32]) {
        for s in samples {
            self.energy += s * s;
            self.filled += 1;
            if self.filled == self.block {
                let db = crate::vad::mean_power_db(self.energy, self.block);
                self.level_db = db.max(self.level_db - self.release_per_block).max(FLOOR_DB);
                self.energy = 0.0;
                self.filled = 0;
            }
        }
    }

    /// The current reading, dBFS.
    pub fn level_db(&self) -> f32 {
        self.level_db
    }
}

/// A level handed from the thread that measures it to the one that draws it: an `f32` in an
/// atomic, so neither side ever waits.
#[derive(Debug)]
pub struct SharedLevel(AtomicU32);

impl Default for SharedLevel {
    fn default() -> Self {
        Self(AtomicU32::new(FLOOR_DB.to_bits()))
    }
}

impl SharedLevel {
    pub fn set(&self, db: f32) {
        self.0.store(db.to_bits(), Relaxed);
    }

    pub fn get(&self) -> f32 {
        f32::from_bits(self.0.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(amplitude: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| amplitude * (i as f32 * 2.0 * std::f32::consts::PI * 440.0 / 48_000.0).sin())
            .collect()
    }

    #[test]
    fn a_sine_reads_its_rms_level_at_once() {
        let mut meter = LevelMeter::new(48_000);
        meter.push(&sine(0.5, 480));
        // RMS of a 0.5 sine: 0.354 = −9.0 dBFS.
        assert!(
            (meter.level_db() + 9.03).abs() < 0.1,
            "{}",
            meter.level_db()
        );
    }

    #[test]
    fn blocks_straddling_calls_count_once_and_silence_falls_at_the_release_rate() {
        let mut meter = LevelMeter::new(48_000);
        let tone = sine(0.5, 480);
        meter.push(&tone[..100]);
        assert_eq!(meter.level_db(), FLOOR_DB, "no block complete yet");
        meter.push(&tone[100..]);
        let loud = meter.level_db();
        // Half a second of silence: 50 blocks, 0.4 dB each.
        meter.push(&[0.0; 24_000]);
        assert!((loud - meter.level_db() - 20.0).abs() < 0.01);
        meter.push(&[0.0; 480_000]);
        assert_eq!(meter.level_db(), FLOOR_DB);
    }

    #[test]
    fn other_rates_measure_10_ms_blocks() {
        let mut meter = LevelMeter::new(44_100);
        meter.push(&[0.1; 440]);
        assert_eq!(meter.level_db(), FLOOR_DB);
        meter.push(&[0.1; 1]);
        assert!((meter.level_db() + 20.0).abs() < 0.01);
    }

    #[test]
    fn the_shared_level_carries_the_reading() {
        let shared = SharedLevel::default();
        assert_eq!(shared.get(), FLOOR_DB);
        shared.set(-23.5);
        assert_eq!(shared.get(), -23.5);
    }
}
