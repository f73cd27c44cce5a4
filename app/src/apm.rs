//! Voice processing: echo cancellation (AEC3), noise suppression, automatic gain control and a
//! high-pass filter from WebRTC's audio processing module (webrtc-audio-processing 2.x, built
//! from source with `bundled`; see scripts/setup-apm.sh).
//!
//! The engine feeds it the playback mix as the echo canceller's render reference and the
//! microphone in 10 ms blocks. The stream delay (render → capture) is derived from the
//! measured device latencies; AEC3 also estimates it itself. Every stage can be switched at run
//! time; with all of them off the module is bypassed entirely.

use webrtc_audio_processing::config::{
    AdaptiveDigital, EchoCanceller, GainController, GainController2, HighPassFilter,
    NoiseSuppression, NoiseSuppressionLevel,
};
use webrtc_audio_processing::{Config, Processor};

/// Which stages run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VoiceConfig {
    pub echo_cancellation: bool,
    pub noise_suppression: bool,
    pub gain_control: bool,
    pub high_pass: bool,
}

impl VoiceConfig {
    /// Everything on: what a microphone in a room needs.
    pub const ALL: Self = Self {
        echo_cancellation: true,
        noise_suppression: true,
        gain_control: true,
        high_pass: true,
    };
    /// Everything off: for sources that are not a microphone (files, test signals).
    pub const NONE: Self = Self {
        echo_cancellation: false,
        noise_suppression: false,
        gain_control: false,
        high_pass: false,
    };

    pub fn any(&self) -> bool {
        self.echo_cancellation || self.noise_suppression || self.gain_control || self.high_pass
    }

    /// Delay the module adds to the microphone signal, ms — measured, not documented anywhere
    /// upstream: the band-split filter bank costs ~1 ms whenever echo cancellation, noise
    /// suppression or the high-pass filter runs, AEC3 adds 8 ms and noise suppression 6 ms;
    /// gain control adds none. (Held to the real module by a test.) All on costs ~15 ms of
    /// mouth-to-ear latency, which the latency meter shows as part of "processing".
    pub fn delay_ms(&self) -> f64 {
        let split = if self.echo_cancellation || self.noise_suppression || self.high_pass {
            0.974
        } else {
            0.0
        };
        split
            + if self.echo_cancellation { 8.0 } else { 0.0 }
            + if self.noise_suppression { 6.0 } else { 0.0 }
    }
}

impl Default for VoiceConfig {
    fn default() -> Self {
        Self::ALL
    }
}

/// Samples per block: 10 ms at 48 kHz, the only size the module accepts.
pub const BLOCK: usize = 480;

/// The audio processing module.
pub struct VoiceProcessor {
    apm: Processor,
    config: VoiceConfig,
    stream_delay_ms: Option<u16>,
}

fn apm_config(v: VoiceConfig, stream_delay_ms: Option<u16>) -> Config {
    Config {
        echo_canceller: v
            .echo_cancellation
            .then_some(EchoCanceller::Full { stream_delay_ms }),
        noise_suppression: v.noise_suppression.then_some(NoiseSuppression {
            level: NoiseSuppressionLevel::High,
            analyze_linear_aec_output: false,
        }),
        gain_controller: v.gain_control.then(|| {
            GainController::GainController2(GainController2 {
                adaptive_digital: Some(AdaptiveDigital::default()),
                ..Default::default()
            })
        }),
        high_pass_filter: v.high_pass.then(HighPassFilter::default),
        ..Default::default()
    }
}

impl VoiceProcessor {
    pub fn new(config: VoiceConfig) -> anyhow::Result<Self> {
        let apm = Processor::new(crate::audio::SAMPLE_RATE)
            .map_err(|e| anyhow::anyhow!("voice processing: {e:?}"))?;
        apm.set_config(apm_config(config, None));
        Ok(Self {
            apm,
            config,
            stream_delay_ms: None,
        })
    }

    pub fn config(&self) -> VoiceConfig {
        self.config
    }

    /// Switches stages on or off; only the changed parts are reinitialised.
    pub fn set_config(&mut self, config: VoiceConfig) {
        if config != self.config {
            self.config = config;
            self.apm
                .set_config(apm_config(config, self.stream_delay_ms));
        }
    }

    /// Render-to-capture delay hint from the measured device latencies (ms). Re-applied only
    /// when it moves by 2 ms or more, since each change reconfigures the module.
    pub fn set_stream_delay_ms(&mut self, ms: f64) {
        let ms = ms.clamp(0.0, 500.0).round() as u16;
        if self.stream_delay_ms.is_none_or(|d| d.abs_diff(ms) >= 2) {
            self.stream_delay_ms = Some(ms);
            if self.config.echo_cancellation {
                self.apm
                    .set_config(apm_config(self.config, self.stream_delay_ms));
            }
        }
    }

    /// The echo canceller's own view: estimated render→capture delay (ms) and echo return
    /// loss enhancement (dB), when it has them.
    pub fn echo_stats(&self) -> (Option<u32>, Option<f64>) {
        let s = self.apm.get_stats();
        (s.delay_ms, s.echo_return_loss_enhancement)
    }

    /// Gives the echo canceller the next 10 ms of what the speaker plays. Analysed only
    /// (`AnalyzeReverseStream`): nothing processes the playback, so `ProcessReverseStream`
    /// would only copy the block into a buffer of ours and back out of the module's.
    pub fn process_render(&mut self, block: &[f32]) {
        if !self.config.echo_cancellation || block.len() != BLOCK {
            return;
        }
        let _ = self.apm.analyze_render_frame([block]);
    }

    /// Processes 10 ms of microphone audio in place.
    pub fn process_capture(&mut self, block: &mut [f32]) {
        if !self.config.any() || block.len() != BLOCK {
            return;
        }
        let _ = self.apm.process_capture_frame([block]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::speech_like;

    /// A synthetic room: direct path after 30 ms at −6 dB, then 80 reflections spread over
    /// 250 ms with exponentially decaying amplitude (RT60 ≈ 250 ms); sparse so that the
    /// convolution stays fast in a debug build.
    fn room_impulse_response() -> Vec<(usize, f32)> {
        let mut seed = 0x2545_f491u32;
        let mut taps = vec![(48 * 30, 0.5f32)];
        for _ in 0..80 {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let at = 48 * 32 + (seed >> 8) as usize % (48 * 250);
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let sign = if seed & 0x100 == 0 { 1.0 } else { -1.0 };
            let t = (at - 48 * 32) as f32 / 48_000.0;
            taps.push((at, sign * 0.15 * (-6.9 * t / 0.25).exp()));
        }
        taps
    }

    fn convolve(x: &[f32], taps: &[(usize, f32)]) -> Vec<f32> {
        let mut y = vec![0.0f32; x.len()];
        for &(k, v) in taps {
            for (n, out) in y.iter_mut().enumerate().skip(k) {
                *out += v * x[n - k];
            }
        }
        y
    }

    fn energy(x: &[f32]) -> f64 {
        x.iter()
            .map(|s| f64::from(*s).powi(2))
            .sum::<f64>()
            .max(1e-20)
    }

    fn db(ratio: f64) -> f64 {
        10.0 * ratio.log10()
    }

    #[test]
    fn echo_is_cancelled_by_30_db_and_near_end_speech_is_kept() {
        // 6 s far-end only, then 4 s of double talk.
        let seconds = 10.0;
        let far = speech_like(48_000, seconds, 11);
        let near_src = speech_like(48_000, seconds, 23);
        let echo = convolve(&far, &room_impulse_response());
        let near: Vec<f32> = near_src
            .iter()
            .enumerate()
            .map(|(i, s)| if i >= 6 * 48_000 { 0.5 * s } else { 0.0 })
            .collect();
        let mic: Vec<f32> = echo.iter().zip(&near).map(|(e, n)| e + n).collect();
        let config = VoiceConfig {
            gain_control: false,
            ..VoiceConfig::ALL
        };
        let mut vp = VoiceProcessor::new(config).unwrap();
        vp.set_stream_delay_ms(30.0);
        let mut out = vec![0.0; mic.len()];
        for ((f, m), o) in far
            .chunks_exact(BLOCK)
            .zip(mic.chunks_exact(BLOCK))
            .zip(out.chunks_exact_mut(BLOCK))
        {
            vp.process_render(f);
            o.copy_from_slice(m);
            vp.process_capture(o);
        }
        // ERLE on far-end-only audio after 2 s of convergence.
        let span = 2 * 48_000..6 * 48_000;
        let erle = db(energy(&mic[span.clone()]) / energy(&out[span]));
        assert!(erle >= 30.0, "ERLE {erle:.1} dB");
        // During double talk the near-end speech comes through: found in the output by
        // normalised cross-correlation (the chain may shift it by a few ms) at its level.
        let dt = 7 * 48_000..10 * 48_000;
        let (o, n) = (&out[dt.clone()], &near[dt.start + 480..dt.end - 4_800]);
        let (lag, score) = crate::measure::best_alignment(n, o, 4_800).unwrap();
        assert!(
            score > 0.7,
            "near-end kept: correlation {score:.2} at lag {lag:.0}"
        );
        let kept = db(energy(o) / energy(&near[dt]));
        println!(
            "AEC3: ERLE {erle:.1} dB; near-end correlation {score:.2} at lag {lag:.0}, level {kept:+.1} dB"
        );
        assert!(kept > -6.0, "near-end level change {kept:.1} dB");
    }

    #[test]
    fn noise_suppression_improves_snr_in_stationary_noise() {
        let speech = speech_like(48_000, 6.0, 5);
        let mut seed = 7u32;
        let noise: Vec<f32> = (0..speech.len())
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * 0.03
            })
            .collect();
        let run = |config: VoiceConfig| {
            let mut vp = VoiceProcessor::new(config).unwrap();
            let mut out: Vec<f32> = speech.iter().zip(&noise).map(|(s, n)| s + n).collect();
            for block in out.chunks_exact_mut(BLOCK) {
                vp.process_capture(block);
            }
            out
        };
        // SNR from 50 ms blocks, insensitive to the small delay and phase changes of the
        // chain: mean energy where the clean speech is loud over mean energy where it pauses
        // (after 2 s of noise-estimate convergence).
        let snr = |out: &[f32]| {
            let (mut speech_e, mut speech_n, mut pause_e, mut pause_n) = (0.0, 0, 0.0, 0);
            for (o, c) in out.chunks(2_400).zip(speech.chunks(2_400)).skip(40) {
                let clean = energy(c) / c.len() as f64;
                if clean > 1e-3 {
                    speech_e += energy(o);
                    speech_n += 1;
                } else if clean < 1e-7 {
                    pause_e += energy(o);
                    pause_n += 1;
                }
            }
            assert!(speech_n > 10 && pause_n > 3, "signal has speech and pauses");
            db((speech_e / f64::from(speech_n)) / (pause_e / f64::from(pause_n)))
        };
        let hpf_only = VoiceConfig {
            high_pass: true,
            ..VoiceConfig::NONE
        };
        let with_ns = VoiceConfig {
            high_pass: true,
            noise_suppression: true,
            ..VoiceConfig::NONE
        };
        let (before, after) = (snr(&run(hpf_only)), snr(&run(with_ns)));
        println!("noise suppression: SNR {before:.1} dB -> {after:.1} dB");
        assert!(after > before + 6.0, "SNR {before:.1} dB -> {after:.1} dB");
    }

    #[test]
    fn all_off_is_a_bypass() {
        let mut vp = VoiceProcessor::new(VoiceConfig::NONE).unwrap();
        let mut block: Vec<f32> = (0..BLOCK).map(|i| (i as f32 * 0.01).sin()).collect();
        let copy = block.clone();
        vp.process_capture(&mut block);
        assert_eq!(block, copy);
    }
}

#[cfg(test)]
mod delay_tests {
    use super::*;

    /// The latency meter relies on `VoiceConfig::delay_ms`; this measures the real delay of
    /// every combination of stages with the chirp probe and holds the formula to it.
    #[test]
    fn delay_formula_matches_the_measured_delay_of_every_combination() {
        let train = crate::measure::chirp_train(48_000, 4.0, 500, 3);
        for bits in 0..16u8 {
            let config = VoiceConfig {
                echo_cancellation: bits & 1 != 0,
                noise_suppression: bits & 2 != 0,
                gain_control: bits & 4 != 0,
                high_pass: bits & 8 != 0,
            };
            let mut vp = VoiceProcessor::new(config).unwrap();
            let mut out = train.samples.clone();
            for block in out.chunks_exact_mut(BLOCK) {
                vp.process_render(&[0.0; BLOCK]);
                vp.process_capture(block);
            }
            let lags = crate::measure::find_lags(&train, &out, 100.0, 0.5);
            let measured = crate::measure::LatencyStats::from_lags(&lags, train.onsets.len())
                .expect("chirps pass through")
                .median_ms;
            assert!(
                (measured - config.delay_ms()).abs() < 0.1,
                "{config:?}: measured {measured:.2} ms, formula {:.2} ms",
                config.delay_ms()
            );
        }
    }
}
