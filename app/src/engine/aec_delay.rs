//! The local side of the audio path, as the engine measures it: how long a mixed block takes
//! to be heard, and how long a heard sound takes to come back as captured samples. The
//! latency meter's playback stage is the first; the echo canceller's stream delay (the
//! `set_stream_delay_ms` hint AEC3 starts its echo-path search from) is the sum of both.
//! Plain arithmetic on measured inputs, kept here so both numbers come from one place.

/// What the engine measured about its side of the devices, ms.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LocalPath {
    /// Mean time from mixing a block to the device taking it (`PlayoutClock::lead_ms`).
    pub mix_lead_ms: f64,
    /// The output device's own latency (callback to speaker), as the backend reports it.
    pub output_latency_ms: f64,
    /// Delay of the 48 kHz → device-rate resampler (zero at 48 kHz).
    pub playback_resampler_ms: f64,
    /// The input device's latency (microphone to capture callback), as the backend reports it.
    pub input_latency_ms: f64,
}

impl LocalPath {
    /// Mixed to heard: the meter's playback stage.
    pub fn playback_ms(&self) -> f64 {
        self.mix_lead_ms + self.output_latency_ms + self.playback_resampler_ms
    }

    /// The echo path the canceller must search: from handing the mix (its render reference)
    /// over to the speaker, through the room, back to the microphone's samples reaching us.
    /// The room's own acoustic delay (a metre is 3 ms) is left to AEC3's search.
    pub fn echo_delay_ms(&self) -> f64 {
        self.playback_ms() + self.input_latency_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playback_stage_and_echo_delay_share_the_output_side() {
        // A PulseAudio-like device at 44.1 kHz: 3 ms mixed ahead, 20 ms of output buffer,
        // the resampler's 1.3 ms, 15 ms of input buffer.
        let path = LocalPath {
            mix_lead_ms: 3.0,
            output_latency_ms: 20.0,
            playback_resampler_ms: 1.3,
            input_latency_ms: 15.0,
        };
        assert!((path.playback_ms() - 24.3).abs() < 1e-9);
        assert!((path.echo_delay_ms() - 39.3).abs() < 1e-9);
        // The capture side adds to the echo path only, never to what the meter shows.
        let deaf_mic = LocalPath {
            input_latency_ms: 0.0,
            ..path
        };
        assert_eq!(deaf_mic.playback_ms(), path.playback_ms());
        assert_eq!(LocalPath::default().echo_delay_ms(), 0.0);
    }
}
