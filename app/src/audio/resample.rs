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
    // Flush the tail and the resampler's internal delay line with silence.
    let tail = resampler.process_partial(Some(&[&input[pos..]]), None)?;
    out.extend_from_slice(&tail[0]);
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
}
