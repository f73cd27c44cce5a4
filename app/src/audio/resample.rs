//! Whole-buffer resampling to and from the engine's 48 kHz, with rubato's FFT resampler (a
//! proper band-limited resampler: naive linear interpolation aliases audibly and would
//! distort the latency measurement's correlation peaks).

use rubato::{FftFixedIn, Resampler};

/// Resamples mono `input` from `from_hz` to `to_hz`, compensating the resampler's delay so
/// that sample 0 stays sample 0 (latency measurements depend on it).
pub fn resample(input: &[f32], from_hz: u32, to_hz: u32) -> anyhow::Result<Vec<f32>> {
    if from_hz == to_hz || input.is_empty() {
        return Ok(input.to_vec());
    }
    let chunk = 1024;
    let mut resampler = FftFixedIn::<f32>::new(from_hz as usize, to_hz as usize, chunk, 2, 1)?;
    let delay = resampler.output_delay();
    let expected = (input.len() as u64 * u64::from(to_hz) / u64::from(from_hz)) as usize;
    let mut out = Vec::with_capacity(expected + delay + chunk * 2);
    let mut pos = 0;
    while pos + chunk <= input.len() {
        let block = resampler.process(&[&input[pos..pos + chunk]], None)?;
        out.extend_from_slice(&block[0]);
        pos += chunk;
    }
    // Flush the tail (rubato refuses an empty one: an input of whole chunks has none) and the
    // resampler's internal delay line with silence.
    if pos < input.len() {
        let tail = resampler.process_partial(Some(&[&input[pos..]]), None)?;
        out.extend_from_slice(&tail[0]);
    }
    while out.len() < expected + delay {
        let block = resampler.process_partial::<&[f32]>(None, None)?;
        if block[0].is_empty() {
            break;
        }
        out.extend_from_slice(&block[0]);
    }
    out.drain(..delay.min(out.len()));
    out.truncate(expected);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_length_timing_and_tone() {
        // 1 kHz tone with an impulse-like onset at 0.25 s, 44.1 kHz → 48 kHz.
        let n = 44_100;
        let input: Vec<f32> = (0..n)
            .map(|i| {
                if i >= n / 4 {
                    (i as f32 * 2.0 * std::f32::consts::PI * 1000.0 / 44_100.0).sin() * 0.5
                } else {
                    0.0
                }
            })
            .collect();
        let out = resample(&input, 44_100, 48_000).unwrap();
        assert_eq!(out.len(), 48_000);
        // Onset stays at 0.25 s (within a couple of samples of filter ringing).
        let onset = out.iter().position(|s| s.abs() > 0.05).unwrap();
        assert!((11_990..=12_010).contains(&onset), "onset at {onset}");
        // Steady-state amplitude preserved.
        let peak = out[30_000..31_000]
            .iter()
            .fold(0.0f32, |m, s| m.max(s.abs()));
        assert!((peak - 0.5).abs() < 0.02, "peak {peak}");
    }

    /// An input of whole resampler chunks (linphone's `hello16000.wav`: 166 × 1024 samples)
    /// has no partial tail to flush.
    #[test]
    fn an_input_of_whole_chunks_resamples() {
        let input: Vec<f32> = (0..2 * 1024)
            .map(|i| (i as f32 * 0.05).sin() * 0.5)
            .collect();
        let out = resample(&input, 16_000, 48_000).unwrap();
        assert_eq!(out.len(), 3 * 2 * 1024);
    }
}

/// Streaming resampler for device audio at a rate other than 48 kHz, used on the engine thread
/// (never in a callback). Input of any block size in, output in whatever amounts are ready.
pub struct StreamResampler {
    inner: FftFixedIn<f32>,
    pending: Vec<f32>,
    ready: std::collections::VecDeque<f32>,
    out: Vec<Vec<f32>>,
    chunk: usize,
}

impl StreamResampler {
    /// A resampler from `from_hz` to `to_hz` working in ~10 ms input chunks.
    pub fn new(from_hz: u32, to_hz: u32) -> anyhow::Result<Self> {
        let chunk = (from_hz as usize / 100).max(1);
        let inner = FftFixedIn::<f32>::new(from_hz as usize, to_hz as usize, chunk, 1, 1)?;
        let out = inner.output_buffer_allocate(true);
        Ok(Self {
            inner,
            pending: Vec::with_capacity(chunk * 2),
            ready: std::collections::VecDeque::with_capacity(to_hz as usize / 10),
            out,
            chunk,
        })
    }

    /// Samples of delay the resampler adds, at the output rate.
    pub fn delay(&self) -> usize {
        self.inner.output_delay()
    }

    /// Feeds input samples.
    pub fn push(&mut self, samples: &[f32]) {
        self.pending.extend_from_slice(samples);
        let mut start = 0;
        while self.pending.len() - start >= self.chunk {
            let input = [&self.pending[start..start + self.chunk]];
            if let Ok((_, produced)) = self.inner.process_into_buffer(&input, &mut self.out, None) {
                self.ready.extend(&self.out[0][..produced]);
            }
            start += self.chunk;
        }
        self.pending.drain(..start);
    }

    /// Output samples ready to take.
    pub fn available(&self) -> usize {
        self.ready.len()
    }

    /// Takes `out.len()` samples; false (and nothing taken) if not enough are ready.
    pub fn pop(&mut self, out: &mut [f32]) -> bool {
        if self.ready.len() < out.len() {
            return false;
        }
        let n = out.len();
        for (o, s) in out.iter_mut().zip(self.ready.drain(..n)) {
            *o = s;
        }
        true
    }
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    #[test]
    fn streams_44k1_to_48k_in_odd_blocks() {
        let mut r = StreamResampler::new(44_100, 48_000).unwrap();
        let tone: Vec<f32> = (0..44_100)
            .map(|i| (i as f32 * 2.0 * std::f32::consts::PI * 440.0 / 44_100.0).sin() * 0.5)
            .collect();
        for block in tone.chunks(333) {
            r.push(block);
        }
        // One second in, one second out (less what is still inside the filter).
        let avail = r.available();
        assert!((47_000..=48_000).contains(&avail), "{avail}");
        let mut out = vec![0.0; 4_800];
        assert!(r.pop(&mut out));
        let peak = out[2_400..].iter().fold(0.0f32, |m, s| m.max(s.abs()));
        assert!((peak - 0.5).abs() < 0.02, "peak {peak}");
        let mut too_much = vec![0.0; 48_000];
        assert!(!r.pop(&mut too_much));
    }
}
