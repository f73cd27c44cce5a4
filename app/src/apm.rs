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
}

impl Default for VoiceConfig {
    fn default() -> Self {
        Self::ALL
    }
}

/// Samples per block: 10 ms at 48 kHz, the only size the module accepts.
pub const BLOCK: usize = 480;

/// The audio processing module with preallocated block buffers.
pub struct VoiceProcessor {
    apm: Processor,
    config: VoiceConfig,
    stream_delay_ms: Option<u16>,
    render: Vec<Vec<f32>>,
    capture: Vec<Vec<f32>>,
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
            render: vec![vec![0.0; BLOCK]],
            capture: vec![vec![0.0; BLOCK]],
        })
    }

    pub fn config(&self) -> VoiceConfig {
        self.config
    }

    /// Switches stages on or off; only the changed parts are reinitialised.
    pub fn set_config(&mut self, config: VoiceConfig) {
        if config != self.config {
            self.config = config;
            self.apm.set_config(apm_config(config, self.stream_delay_ms));
        }
    }

    /// Render-to-capture delay hint from the measured device latencies (ms). Re-applied only
    /// when it moves by 2 ms or more, since each change reconfigures the module.
    pub fn set_stream_delay_ms(&mut self, ms: f64) {
        let ms = ms.clamp(0.0, 500.0).round() as u16;
        if self.stream_delay_ms.is_none_or(|d| d.abs_diff(ms) >= 2) {
            self.stream_delay_ms = Some(ms);
            if self.config.echo_cancellation {
                self.apm.set_config(apm_config(self.config, self.stream_delay_ms));
            }
        }
    }

    /// Gives the echo canceller the next 10 ms of what the speaker plays.
    pub fn process_render(&mut self, block: &[f32]) {
        if !self.config.echo_cancellation || block.len() != BLOCK {
            return;
        }
        self.render[0].copy_from_slice(block);
        let _ = self.apm.process_render_frame(&mut self.render);
    }

    /// Processes 10 ms of microphone audio in place.
    pub fn process_capture(&mut self, block: &mut [f32]) {
        if !self.config.any() || block.len() != BLOCK {
            return;
        }
        self.capture[0].copy_from_slice(block);
        if self.apm.process_capture_frame(&mut self.capture).is_ok() {
            block.copy_from_slice(&self.capture[0]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measure::speech_like;

    /// A synthetic room: direct path after 30 ms at −6 dB, then an exponentially decaying
    /// diffuse tail (RT60 ≈ 250 ms), deterministic.
    fn room_impulse_response() -> Vec<f32> {
        let mut seed = 0x2545_f491u32;
        let len = 48 * 300;
        let mut h = vec![0.0f32; len];
        h[48 * 30] = 0.5;
        for (i, tap) in h.iter_mut().enumerate().skip(48 * 32) {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let noise = (seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0;
            let t = (i - 48 * 32) as f32 / 48_000.0;
            *tap = 0.06 * noise * (-6.9 * t / 0.25).exp();
        }
        h
    }

    fn convolve(x: &[f32], h: &[f32]) -> Vec<f32> {
        let taps: Vec<(usize, f32)> = h.iter().copied().enumerate().filter(|(_, v)| *v != 0.0).collect();
        (0..x.len())
            .map(|n| taps.iter().filter(|(k, _)| *k <= n).map(|(k, v)| v * x[n - k]).sum())
            .collect()
    }

    fn energy(x: &[f32]) -> f64 {
        x.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>().max(1e-20)
    }

    /// Runs far-end audio through the room into the microphone (plus near-end speech from
    /// `near_from` seconds on) and through the echo canceller.
    fn run_echo(seconds: f32, near_from: f32) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let far = speech_like(48_000, seconds, 11);
        let near_src = speech_like(48_000, seconds, 23);
        let echo = convolve(&far, &room_impulse_response());
        let near: Vec<f32> = near_src.iter().enumerate().map(|(i, s)| if i as f32 >= near_from * 48_000.0 { 0.5 * s } else { 0.0 }).collect();
        let mic: Vec<f32> = echo.iter().zip(&near).map(|(e, n)| e + n).collect();
        let mut vp = VoiceProcessor::new(VoiceConfig { gain_control: false, ..VoiceConfig::ALL }).unwrap();
        vp.set_stream_delay_ms(30.0);
        let mut out = vec![0.0; mic.len()];
        for ((far, mic), out) in far.chunks_exact(BLOCK).zip(mic.chunks_exact(BLOCK)).zip(out.chunks_exact_mut(BLOCK)) {
            vp.process_render(far);
            out.copy_from_slice(mic);
            vp.process_capture(out);
        }
        (mic, out, near)
    }

    #[test]
    fn echo_is_cancelled_by_30_db_and_near_end_speech_is_kept() {
        // 6 s far-end only, then 4 s of double talk.
        let (mic, out, near) = run_echo(10.0, 6.0);
        // ERLE on far-end-only audio after 2 s of convergence.
        let span = 2 * 48_000..6 * 48_000;
        let erle = 10.0 * (energy(&mic[span.clone()]) / energy(&out[span])).log10();
        assert!(erle >= 30.0, "ERLE {erle:.1} dB");
        // During double talk the near-end speech comes through: the output correlates with
        // it and keeps most of its energy.
        let dt = 7 * 48_000..10 * 48_000;
        let (o, n) = (&out[dt.clone()], &near[dt]);
        let corr = o.iter().zip(n).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>() / (energy(o) * energy(n)).sqrt();
        let kept = 10.0 * (energy(o) / energy(n)).log10();
        assert!(corr > 0.7, "near-end correlation {corr:.2}");
        assert!(kept > -6.0, "near-end level change {kept:.1} dB");
    }

    #[test]
    fn noise_suppression_improves_snr_in_stationary_noise() {
        let speech = speech_like(48_000, 6.0, 5);
        let mut seed = 7u32;
        let noise: Vec<f32> = (0..speech.len())
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * 0.05
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
        // SNR after processing, measured by projecting the output on the clean speech (the
        // residual is noise plus distortion), over the last 4 s.
        let snr = |out: &[f32]| {
            let r = 2 * 48_000..out.len();
            let (o, s) = (&out[r.clone()], &speech[r]);
            let gain = o.iter().zip(s).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum::<f64>() / energy(s);
            let resid: f64 = o.iter().zip(s).map(|(a, b)| (f64::from(*a) - gain * f64::from(*b)).powi(2)).sum();
            10.0 * (gain * gain * energy(s) / resid.max(1e-20)).log10()
        };
        let hpf_only = VoiceConfig { high_pass: true, ..VoiceConfig::NONE };
        let with_ns = VoiceConfig { high_pass: true, noise_suppression: true, ..VoiceConfig::NONE };
        let (before, after) = (snr(&run(hpf_only)), snr(&run(with_ns)));
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
