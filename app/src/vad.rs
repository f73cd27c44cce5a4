//! Voice activity detection: a sans-IO decision per 10 ms block of processed (echo-cancelled,
//! noise-suppressed) microphone audio.
//!
//! webrtc-audio-processing 2.x does not expose its VAD, so this is our own: a block is voice
//! when its energy stands clearly above the noise floor (and above an absolute floor); rumble
//! and hum are already gone (the voice-processing high-pass filter runs first). The floor is the minimum block energy of the last second ("minimum statistics"):
//! speech always pauses within a second, so the minimum is the room, learnt from the first
//! block on. Onsets are immediate (a real-time sender cannot go back for the start of a word);
//! a hang-over keeps the gate open through the short pauses inside and between words.

/// The mean power of a block whose squared samples sum to `energy`, dBFS: how the detector
/// measures a block, and how the microphone test's meter does ([`crate::audio::level`]), so
/// the threshold line on the meter means what the detector decides.
pub fn mean_power_db(energy: f32, samples: usize) -> f32 {
    10.0 * (energy / samples.max(1) as f32).max(1e-12).log10()
}

/// The voice-activation threshold when the user has not chosen one, dBFS.
pub const DEFAULT_THRESHOLD_DB: f32 = -55.0;

/// The thresholds Settings offers, dBFS: from a whisper in a quiet room to a raised voice over
/// noise.
pub const THRESHOLD_RANGE_DB: std::ops::RangeInclusive<f32> = -70.0..=-20.0;

/// Tuning.
#[derive(Debug, Clone, Copy)]
pub struct VadConfig {
    /// Voice must be this many dB above the noise floor.
    pub margin_db: f32,
    /// Nothing quieter than this (dBFS) is voice, however quiet the room: the voice-activation
    /// threshold the user sets in Settings against the microphone test's meter.
    pub absolute_floor_db: f32,
    /// Blocks the gate stays open after the last voiced block.
    pub hangover_blocks: u32,
}

impl Default for VadConfig {
    fn default() -> Self {
        Self {
            margin_db: 9.0,
            absolute_floor_db: DEFAULT_THRESHOLD_DB,
            // 300 ms: longer than the gaps between syllables, short enough to stop
            // transmitting room noise soon after a sentence.
            hangover_blocks: 30,
        }
    }
}

/// The detector's state.
/// Blocks in the noise-floor window (1 s).
const WINDOW: usize = 100;

#[derive(Debug, Clone)]
pub struct Vad {
    config: VadConfig,
    /// Recent block energies, dB (a ring; NaN = not yet filled).
    history: [f32; WINDOW],
    next: usize,
    noise_floor_db: f32,
    hangover: u32,
    /// Energy of the last block, dBFS (for the input level meter).
    pub level_db: f32,
}

impl Vad {
    pub fn new(config: VadConfig) -> Self {
        Self {
            config,
            history: [f32::NAN; WINDOW],
            next: 0,
            noise_floor_db: -100.0,
            hangover: 0,
            level_db: -100.0,
        }
    }

    /// True while voice (or its hang-over) is present.
    pub fn is_active(&self) -> bool {
        self.hangover > 0
    }

    /// Sets the level below which nothing is voice (the user's voice-activation threshold),
    /// clamped to [`THRESHOLD_RANGE_DB`].
    pub fn set_threshold_db(&mut self, db: f32) {
        self.config.absolute_floor_db =
            db.clamp(*THRESHOLD_RANGE_DB.start(), *THRESHOLD_RANGE_DB.end());
    }

    /// Current noise-floor estimate, dBFS.
    pub fn noise_floor_db(&self) -> f32 {
        self.noise_floor_db
    }

    /// Classifies one block; true while voice is present (including hang-over).
    pub fn process(&mut self, block: &[f32]) -> bool {
        if block.is_empty() {
            return self.hangover > 0;
        }
        let energy: f32 = block.iter().map(|x| x * x).sum();
        let db = mean_power_db(energy, block.len());
        self.level_db = db;
        self.history[self.next] = db;
        self.next = (self.next + 1) % WINDOW;
        // f32::min ignores the NaNs of a window not yet full.
        self.noise_floor_db = self.history.iter().copied().fold(f32::NAN, f32::min);
        let voiced =
            db > self.noise_floor_db + self.config.margin_db && db > self.config.absolute_floor_db;
        if voiced {
            self.hangover = self.config.hangover_blocks;
            true
        } else if self.hangover > 0 {
            self.hangover -= 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(seed: &mut u32, amp: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((*seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * amp
            })
            .collect()
    }

    #[test]
    fn speech_over_noise_opens_the_gate_and_hangover_closes_it() {
        let speech = crate::measure::speech_like(48_000, 3.0, 4);
        let mut seed = 1;
        let mut vad = Vad::new(VadConfig::default());
        // Two seconds of room noise (-50 dBFS): no voice after the floor settles.
        let mut false_alarms = 0;
        for i in 0..200 {
            if vad.process(&noise(&mut seed, 0.005, 480)) && i > 50 {
                false_alarms += 1;
            }
        }
        assert_eq!(false_alarms, 0);
        // Speech plus the same noise: voice in most of the blocks where speech is loud.
        let mut voiced = 0;
        let mut loud = 0;
        for chunk in speech.chunks(480) {
            let n = noise(&mut seed, 0.005, chunk.len());
            let block: Vec<f32> = chunk.iter().zip(&n).map(|(s, n)| s + n).collect();
            let rms = (chunk.iter().map(|s| s * s).sum::<f32>() / chunk.len() as f32).sqrt();
            let v = vad.process(&block);
            if rms > 0.05 {
                loud += 1;
                voiced += u32::from(v);
            }
        }
        assert!(
            loud > 50 && voiced == loud,
            "voiced {voiced} of {loud} loud blocks"
        );
        // Back to noise: the gate stays open for the hang-over, then closes.
        let after: Vec<bool> = (0..60)
            .map(|_| vad.process(&noise(&mut seed, 0.005, 480)))
            .collect();
        assert!(after[..5].iter().all(|v| *v), "hang-over keeps word ends");
        assert!(!after[59], "gate closes after the hang-over");
    }

    #[test]
    fn the_threshold_decides_between_a_quiet_voice_and_silence() {
        // A quiet talker at about −40 dBFS over a silent line: voice at the default threshold,
        // not once the user raises it above the talker.
        let quiet: Vec<f32> = crate::measure::speech_like(48_000, 1.0, 4)
            .iter()
            .map(|s| s * 0.05)
            .collect();
        let voiced = |threshold: Option<f32>| {
            let mut vad = Vad::new(VadConfig::default());
            if let Some(db) = threshold {
                vad.set_threshold_db(db);
            }
            for _ in 0..20 {
                vad.process(&[0.0; 480]);
            }
            quiet.chunks(480).filter(|b| vad.process(b)).count()
        };
        assert!(voiced(None) > 50, "{}", voiced(None));
        assert_eq!(voiced(Some(-25.0)), 0);
        // Out-of-range thresholds are clamped, not taken as given.
        let mut vad = Vad::new(VadConfig::default());
        vad.set_threshold_db(10.0);
        assert_eq!(vad.config.absolute_floor_db, -20.0);
    }

    #[test]
    fn silence_is_never_voice() {
        let mut vad = Vad::new(VadConfig::default());
        assert!((0..100).all(|_| !vad.process(&[0.0; 480])));
        assert!(!vad.process(&[]));
    }
}
