//! A WAV file as microphone and speaker, paced in real time.
//!
//! The device thread behaves like a sound card with a fixed period: at the end of each period
//! it delivers the period's input samples and takes the next period's output samples. The
//! recording's sample 0 is the same instant as the input's sample 0 (output starts with one
//! period of silence, exactly as a card plays what it was given one period earlier), so the
//! lag between the two files is the true mouth-to-ear latency of everything in between.

use super::{BLOCK, DeviceEnds, SAMPLE_RATE, pop_playback, push_capture};
use anyhow::Context;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool,
    Ordering::{Acquire, Relaxed, Release},
};
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

/// The WAV format of everything Natter writes: 48 kHz mono, 16-bit PCM.
const OUTPUT_SPEC: hound::WavSpec = hound::WavSpec {
    channels: 1,
    sample_rate: SAMPLE_RATE,
    bits_per_sample: 16,
    sample_format: hound::SampleFormat::Int,
};

fn to_i16(s: f32) -> i16 {
    (s.clamp(-1.0, 1.0) * 32767.0).round() as i16
}

/// Writes 48 kHz mono samples as a 16-bit PCM WAV file.
pub fn write_wav(path: &Path, samples: &[f32]) -> anyhow::Result<()> {
    let mut w = hound::WavWriter::create(path, OUTPUT_SPEC)
        .with_context(|| format!("cannot write {}", path.display()))?;
    for s in samples {
        w.write_sample(to_i16(*s))?;
    }
    w.finalize()?;
    Ok(())
}

/// A WAV file being written as the speaker plays (created up front, so a bad path fails
/// before the call starts).
pub struct WavFile {
    writer: hound::WavWriter<BufWriter<File>>,
    path: PathBuf,
}

impl WavFile {
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            writer: hound::WavWriter::create(path, OUTPUT_SPEC)
                .with_context(|| format!("cannot write {}", path.display()))?,
            path: path.to_path_buf(),
        })
    }
}

/// What a WAV device's microphone plays.
pub enum Input {
    /// These samples, then silence.
    Samples(Vec<f32>),
    /// A live stream (`--input -`), paced; the device stops once it has ended and played out.
    Stream(super::stream::Pacer),
}

impl From<Vec<f32>> for Input {
    fn from(samples: Vec<f32>) -> Self {
        Self::Samples(samples)
    }
}

/// Where a WAV device's speaker goes.
pub enum Record {
    /// Nowhere (a test signal nobody listens to).
    Nothing,
    /// Into memory (192 kB a second), returned by [`WavDevice::finish`] for analysis.
    Memory,
    /// Into a WAV file as it plays: a writer thread drains a ring the device thread fills,
    /// and rewrites the header every second, so memory stays flat however long the call and
    /// a killed process still leaves a playable file.
    File(WavFile),
    /// As raw PCM (signed 16-bit little-endian, mono, 48 kHz) into a stream as it plays
    /// (`--output -`: standard output, for a recognizer or an agent), through the same writer
    /// thread; a stream that stops taking it (a closed pipe) stops the recording, not the call.
    Pcm(Box<dyn std::io::Write + Send>),
}

/// What the writer thread writes to.
enum Sink {
    Wav(WavFile),
    Pcm(Box<dyn std::io::Write + Send>),
}

impl Sink {
    fn write(&mut self, samples: &[f32]) -> anyhow::Result<()> {
        match self {
            Sink::Wav(file) => {
                for s in samples {
                    file.writer.write_sample(to_i16(*s))?;
                }
            }
            Sink::Pcm(out) => {
                let bytes: Vec<u8> = samples
                    .iter()
                    .flat_map(|s| to_i16(*s).to_le_bytes())
                    .collect();
                out.write_all(&bytes)
                    .context("cannot write the audio output")?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Sink::Wav(file) => file.writer.flush()?,
            Sink::Pcm(out) => out.flush().context("cannot write the audio output")?,
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        match self {
            Sink::Wav(file) => {
                let path = file.path;
                file.writer
                    .finalize()
                    .with_context(|| format!("cannot write {}", path.display()))
            }
            Sink::Pcm(mut out) => out.flush().context("cannot write the audio output"),
        }
    }
}

/// Room in the ring between the device thread and the file writer: 2 s of audio.
const WRITER_RING: usize = 2 * SAMPLE_RATE as usize;

/// Drains `ring` into `sink` until `device_done` is set and the ring is empty.
fn write_file(
    mut ring: rtrb::Consumer<f32>,
    mut sink: Sink,
    device_done: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut flushed = Instant::now();
    loop {
        // Read the flag first: whatever the device pushed before setting it is drained below.
        let last = device_done.load(Acquire);
        let n = ring.slots();
        if n > 0 {
            let chunk = ring.read_chunk(n).expect("n slots are readable");
            let (a, b) = chunk.as_slices();
            sink.write(a)?;
            sink.write(b)?;
            chunk.commit_all();
        }
        if last {
            break;
        }
        if flushed.elapsed() >= Duration::from_secs(1) {
            sink.flush()?;
            flushed = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    sink.finish()
}

/// A running WAV "device".
pub struct WavDevice {
    thread: Option<JoinHandle<Vec<f32>>>,
    writer: Option<JoinHandle<anyhow::Result<()>>>,
    /// Wall clock (µs since the Unix epoch) of sample 0 of both input and recording.
    started_unix_us: u64,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
}

impl WavDevice {
    /// Starts playing `input` as the microphone (silence after its end; a stream until it ends)
    /// and recording the speaker as `record` says, for `total_samples` samples of real time
    /// with the given device `period`.
    pub fn start(
        mut input: Input,
        total_samples: usize,
        record: Record,
        period: Duration,
        mut ends: DeviceEnds,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let (stop2, done2) = (stop.clone(), done.clone());
        let period_samples =
            ((period.as_secs_f64() * f64::from(SAMPLE_RATE)).round() as usize).max(1);
        let period_us = period.as_micros() as u64;
        ends.counters.capture_period_us.store(period_us, Relaxed);
        ends.counters.playback_period_us.store(period_us, Relaxed);
        // Like a sound card, a period's first sample reaches the engine one period after it
        // "entered the microphone"; playback starts the moment a block is taken (no extra
        // output latency).
        ends.counters
            .input_latency_us
            .store(period.as_micros() as u64, Relaxed);
        let in_memory = matches!(record, Record::Memory);
        let sink = match record {
            Record::File(file) => Some(Sink::Wav(file)),
            Record::Pcm(out) => Some(Sink::Pcm(out)),
            Record::Nothing | Record::Memory => None,
        };
        let (mut to_file, writer) = match sink {
            Some(file) => {
                let (producer, consumer) = rtrb::RingBuffer::new(WRITER_RING);
                let done = done.clone();
                let writer = std::thread::Builder::new()
                    .name("natter-wav-writer".into())
                    .spawn(move || write_file(consumer, file, done))
                    .expect("spawning the WAV writer thread");
                (Some(producer), Some(writer))
            }
            None => (None, None),
        };
        let t0 = Instant::now();
        let started_unix_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let thread = std::thread::Builder::new()
            .name("natter-wav-device".into())
            .spawn(move || {
                // Everything is allocated before the first period, as a real callback would.
                let mut recorded = Vec::with_capacity(if in_memory { total_samples } else { 0 });
                let silence = vec![0.0f32; period_samples];
                let mut out = vec![0.0f32; period_samples];
                let mut mic = vec![0.0f32; period_samples];
                let mut keep = |samples: &[f32]| {
                    if in_memory {
                        recorded.extend_from_slice(samples);
                    }
                    if let Some(ring) = to_file.as_mut() {
                        // The writer drains every 20 ms; a full ring (a disk stalled for
                        // seconds) loses samples rather than stalling the device.
                        for s in samples {
                            let _ = ring.push(*s);
                        }
                    }
                };
                // Sample 0 of the recording is sample 0 of the input: the first period is
                // silence, played while the first microphone period is being captured.
                let first = period_samples.min(total_samples);
                keep(&silence[..first]);
                let mut elapsed = first;
                let mut started = false;
                let mut k: u32 = 0;
                while elapsed < total_samples && !stop2.load(Relaxed) {
                    let deadline = t0 + period * (k + 1);
                    if let Some(wait) = deadline.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    match &mut input {
                        Input::Samples(samples) => {
                            let from = (k as usize * period_samples).min(samples.len());
                            let to = (from + period_samples).min(samples.len());
                            mic[..to - from].copy_from_slice(&samples[from..to]);
                            mic[to - from..].fill(0.0);
                        }
                        Input::Stream(pacer) => {
                            if pacer.finished() {
                                break;
                            }
                            pacer.pull(&mut mic);
                        }
                    }
                    push_capture(&mut ends.capture, &mic, &ends.counters, BLOCK);
                    pop_playback(&mut ends.playback, &mut out, &ends.counters, &mut started);
                    let n = period_samples.min(total_samples - elapsed);
                    keep(&out[..n]);
                    elapsed += n;
                    k += 1;
                }
                done2.store(true, Release);
                recorded
            })
            .expect("spawning the WAV device thread");
        Self {
            thread: Some(thread),
            writer,
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

    /// Stops (if still running), completes the file if recording to one, and returns the
    /// in-memory recording (empty unless [`Record::Memory`]).
    pub fn finish(mut self) -> anyhow::Result<Vec<f32>> {
        self.stop.store(true, Relaxed);
        let recorded = self
            .thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        // The device thread has set `done`, so the writer drains the ring and finalizes.
        match self.writer.take().map(JoinHandle::join) {
            Some(Ok(written)) => written?,
            Some(Err(_)) => anyhow::bail!("the WAV writer thread panicked"),
            None => {}
        }
        Ok(recorded)
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

    /// Plays what the device captures straight back to it (the engine as a wire) until its
    /// input has run out.
    fn loop_back_until_finished(device: &WavDevice, eng: &mut crate::audio::EngineEnds) {
        while !device.finished() {
            while let Ok(s) = eng.capture.pop() {
                let _ = eng.playback.push(s);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
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
        let device = WavDevice::start(
            input.clone().into(),
            9_600,
            Record::Memory,
            Duration::from_millis(10),
            dev,
        );
        loop_back_until_finished(&device, &mut eng);
        let rec = device.finish().unwrap();
        assert_eq!(rec.len(), 9_600);
        let played: Vec<f32> = rec.iter().copied().filter(|s| *s != 0.0).collect();
        assert!(played == input, "every input sample played once, in order");
        if eng.counters.underruns() == 0 {
            let first = rec.iter().position(|s| *s != 0.0).unwrap();
            assert!(first == 480 || first == 960, "first sample at {first}");
            assert_eq!(&rec[first..first + 4_800], &input[..]);
        }
    }

    /// `--output -`: what the speaker plays goes out as raw little-endian PCM as it plays.
    #[test]
    fn records_raw_pcm_to_a_stream() {
        #[derive(Clone, Default)]
        struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Shared {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let out = Shared::default();
        let (dev, mut eng) = ring_pair();
        let input: Vec<f32> = (0..4_800).map(|i| ((i % 7) as f32 - 3.0) / 4.0).collect();
        let device = WavDevice::start(
            input.clone().into(),
            9_600,
            Record::Pcm(Box::new(out.clone())),
            Duration::from_millis(10),
            dev,
        );
        loop_back_until_finished(&device, &mut eng);
        device.finish().unwrap();
        let bytes = out.0.lock().unwrap().clone();
        assert_eq!(bytes.len(), 9_600 * 2, "every sample, two bytes each");
        let pcm: Vec<i16> = bytes
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        let played: Vec<i16> = pcm.into_iter().filter(|s| *s != 0).collect();
        let expected: Vec<i16> = input
            .iter()
            .map(|s| to_i16(*s))
            .filter(|s| *s != 0)
            .collect();
        assert_eq!(played, expected);
    }

    /// A recording to a file is written while the call runs — readable (a valid header)
    /// before it ends — and ends up holding exactly what a recording in memory would.
    #[test]
    fn records_to_a_file_as_it_plays() {
        let dir = std::env::temp_dir().join(format!("natter-wavfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("heard.wav");
        let (dev, mut eng) = ring_pair();
        let input: Vec<f32> = (0..48_000).map(|i| ((i / 480) % 3) as f32 * 0.25).collect();
        let total = 72_000;
        let file = WavFile::create(&path).unwrap();
        let device = WavDevice::start(
            input.clone().into(),
            total,
            Record::File(file),
            Duration::from_millis(10),
            dev,
        );
        let mut seen_midway = None;
        let started = Instant::now();
        while !device.finished() {
            while let Ok(s) = eng.capture.pop() {
                let _ = eng.playback.push(s);
            }
            if seen_midway.is_none() && started.elapsed() > Duration::from_millis(1_300) {
                seen_midway = Some(read_wav(&path).unwrap().len());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        assert!(
            device.finish().unwrap().is_empty(),
            "nothing kept in memory"
        );
        let midway = seen_midway.unwrap();
        assert!(
            // The header is rewritten about once a second, so at 1.3 s it counts what was
            // written by the first rewrite: a little under 48 000 samples, fewer under load.
            (24_000..total).contains(&midway),
            "audio was on disk while the call ran: {midway} samples"
        );
        let rec = read_wav(&path).unwrap();
        assert_eq!(rec.len(), total);
        let played: Vec<f32> = rec.iter().copied().filter(|s| *s != 0.0).collect();
        let expected: Vec<f32> = input.iter().copied().filter(|s| *s != 0.0).collect();
        assert_eq!(played.len(), expected.len(), "every input sample once");
        let worst = played
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "16-bit quantisation only: {worst}");
        let _ = std::fs::remove_dir_all(&dir);
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
