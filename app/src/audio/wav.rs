//! A WAV file as microphone and speaker, paced in real time.
//!
//! The device thread behaves like a sound card with a fixed period: at the end of each period
//! it delivers the period's input samples and takes the next period's output samples. The
//! recording's sample 0 is the same instant as the input's sample 0 (output starts with one
//! period of silence, exactly as a card plays what it was given one period earlier), so the
//! lag between the two files is the true mouth-to-ear latency of everything in between.

use super::{DeviceEnds, SAMPLE_RATE, pop_playback, push_capture};
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Default device period: 10 ms, what PulseAudio and most USB devices use for voice.
pub const DEFAULT_PERIOD: Duration = Duration::from_millis(10);

/// Reads a WAV file of any sample rate, sample format and channel count as 48 kHz mono.
pub fn read_wav(path: &Path) -> anyhow::Result<Vec<f32>> {
    let mut reader = hound::WavReader::open(path)
        .with_context(|| format!("cannot read WAV file {}", path.display()))?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels.max(1));
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>()?,
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|s| s as f32 * scale))
                .collect::<Result<_, _>>()?
        }
    };
    let mono: Vec<f32> = interleaved
        .chunks(channels)
        .map(|frame| frame.iter().sum::<f32>() / channels as f32)
        .collect();
    super::resample::resample(&mono, spec.sample_rate, SAMPLE_RATE).with_context(|| {
        format!(
            "cannot resample {} from {} Hz",
            path.display(),
            spec.sample_rate
        )
    })
}

/// Writes 48 kHz mono samples as a 16-bit PCM WAV file.
pub fn write_wav(path: &Path, samples: &[f32]) -> anyhow::Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec)
        .with_context(|| format!("cannot write {}", path.display()))?;
    for s in samples {
        w.write_sample((s.clamp(-1.0, 1.0) * 32767.0).round() as i16)?;
    }
    w.finalize()?;
    Ok(())
}

/// A running WAV "device".
pub struct WavDevice {
    thread: Option<JoinHandle<Vec<f32>>>,
    /// Wall clock (µs since the Unix epoch) of sample 0 of both input and recording.
    started_unix_us: u64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
}

impl WavDevice {
    /// Starts playing `input` as the microphone (silence after its end) and, if `record`,
    /// recording the speaker, for `total_samples` samples of real time with the given device
    /// `period`.
    pub fn start(
        input: Vec<f32>,
        total_samples: usize,
        record: bool,
        period: Duration,
        mut ends: DeviceEnds,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (stop2, done2) = (stop.clone(), done.clone());
        let period_samples =
            ((period.as_secs_f64() * f64::from(SAMPLE_RATE)).round() as usize).max(1);
        ends.counters
            .period_us
            .store(period.as_micros() as u64, Relaxed);
        // Like a sound card, a period's first sample reaches the engine one period after it
        // "entered the microphone"; playback starts the moment a block is taken (no extra
        // output latency).
        ends.counters
            .input_latency_us
            .store(period.as_micros() as u64, Relaxed);
        let t0 = Instant::now();
        let started_unix_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let thread = std::thread::Builder::new()
            .name("natter-wav-device".into())
            .spawn(move || {
                // Everything is allocated before the first period, as a real callback would.
                let mut recorded = Vec::with_capacity(if record { total_samples } else { 0 });
                // Sample 0 of the recording is sample 0 of the input: the first period is
                // silence, played while the first microphone period is being captured.
                let first = period_samples.min(total_samples);
                if record {
                    recorded.resize(first, 0.0);
                }
                let mut elapsed = first;
                let silence = vec![0.0f32; period_samples];
                let mut out = vec![0.0f32; period_samples];
                let mut started = false;
                let mut k: u32 = 0;
                while elapsed < total_samples && !stop2.load(Relaxed) {
                    let deadline = t0 + period * (k + 1);
                    if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let from = (k as usize * period_samples).min(input.len());
                    let to = (from + period_samples).min(input.len());
                    let mic = &input[from..to];
                    push_capture(&mut ends.capture, mic, &ends.counters);
                    push_capture(
                        &mut ends.capture,
                        &silence[..period_samples - mic.len()],
                        &ends.counters,
                    );
                    pop_playback(&mut ends.playback, &mut out, &ends.counters, &mut started);
                    let n = period_samples.min(total_samples - elapsed);
                    if record {
                        recorded.extend_from_slice(&out[..n]);
                    }
                    elapsed += n;
                    k += 1;
                }
                done2.store(true, Relaxed);
                recorded
            })
            .expect("spawning the WAV device thread");
        Self {
            thread: Some(thread),
            started_unix_us,
            stop,
            done,
        }
    }

    /// Wall-clock time of sample 0, so recordings made by different processes on one machine
    /// can be aligned.
    pub fn started_unix_us(&self) -> u64 {
        self.started_unix_us
    }

    /// True once the recording is complete.
    pub fn finished(&self) -> bool {
        self.done.load(Relaxed)
    }

    /// Stops (if still running) and returns the recording.
    pub fn finish(mut self) -> Vec<f32> {
        self.stop.store(true, Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for WavDevice {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::ring_pair;

    #[test]
    fn loopback_through_the_rings_is_one_period_late() {
        // An "engine" that copies capture straight to playback: the recording must be the input
        // delayed by exactly one period (the card plays what it was handed a period earlier)
        // plus however long the copier waits, which here is at most one more period — unless
        // the machine is so loaded that the copier missed a period: then the device counted an
        // underrun, played silence, and every sample must still come out once, in order.
        let (dev, mut eng) = ring_pair();
        let input: Vec<f32> = (0..4_800)
            .map(|i| ((i / 480) % 2) as f32 * 0.5 + 0.1)
            .collect();
        let device = WavDevice::start(input.clone(), 9_600, true, Duration::from_millis(10), dev);
        while !device.finished() {
            while let Ok(s) = eng.capture.pop() {
                let _ = eng.playback.push(s);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let rec = device.finish();
        assert_eq!(rec.len(), 9_600);
        let played: Vec<f32> = rec.iter().copied().filter(|s| *s != 0.0).collect();
        assert!(played == input, "every input sample played once, in order");
        if eng.counters.underruns() == 0 {
            let first = rec.iter().position(|s| *s != 0.0).unwrap();
            assert!(first == 480 || first == 960, "first sample at {first}");
            assert_eq!(&rec[first..first + 4_800], &input[..]);
        }
    }

    #[test]
    fn wav_files_round_trip_at_48k_mono() {
        let dir = std::env::temp_dir().join(format!("natter-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stereo16k.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for i in 0..16_000 {
            let s = ((i as f32 * 0.05).sin() * 10_000.0) as i16;
            w.write_sample(s).unwrap();
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
        let mono = read_wav(&path).unwrap();
        assert_eq!(mono.len(), 48_000);
        let out = dir.join("out.wav");
        write_wav(&out, &mono).unwrap();
        assert_eq!(read_wav(&out).unwrap().len(), 48_000);
        assert!(
            read_wav(&dir.join("missing.wav"))
                .unwrap_err()
                .to_string()
                .contains("missing.wav")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
