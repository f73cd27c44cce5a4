//! Sound-card input and output through cpal.
//!
//! The callbacks convert the device's sample format to `f32`, mix to mono (or duplicate mono to
//! every output channel) and copy to or from the rings — no allocation, lock, log or blocking.
//! cpal streams are not `Send`, so one supervisor thread builds them, owns them, and rebuilds
//! them when a stream reports an error (device unplugged) or, when following the system
//! default, when the default device changes; each rebuild hands the engine fresh ring ends.

use super::{
    DeviceCounters, DeviceEnds, EngineEnds, SAMPLE_RATE, capture_wake_block, pop_playback,
    push_capture, ring_pair_at,
};
use anyhow::{Context, anyhow};
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{FromSample, Sample, SizedSample, StreamConfig, SupportedStreamConfig};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Which devices to use: a name as listed by [`list`], or `None` for the system default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceChoice {
    pub input: Option<String>,
    pub output: Option<String>,
}

/// The devices cpal can see.
#[derive(Debug, Clone, Default)]
pub struct DeviceList {
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub default_input: Option<String>,
    pub default_output: Option<String>,
    /// What to show for each name ([`super::device_names`]); the names stay the ids.
    pub labels: BTreeMap<String, String>,
}

impl DeviceList {
    /// The label people recognise for a device name (the name itself if it has none).
    pub fn label<'a>(&'a self, name: &'a str) -> &'a str {
        self.labels.get(name).map_or(name, String::as_str)
    }

    /// Labels every listed device, naming cards as ALSA's card list (`/proc/asound/cards`
    /// text) does.
    pub fn with_labels(mut self, cards: &str) -> Self {
        let cards = super::device_names::Cards::parse(cards);
        self.labels =
            super::device_names::label_all(self.inputs.iter().chain(&self.outputs), &cards);
        self
    }
}

/// Lists input and output devices of the default host.
pub fn list() -> anyhow::Result<DeviceList> {
    let host = cpal::default_host();
    let names = |it: Box<dyn Iterator<Item = cpal::Device>>| {
        it.filter_map(|d| d.name().ok()).collect::<Vec<_>>()
    };
    Ok(DeviceList {
        inputs: names(Box::new(
            host.input_devices().context("listing input devices")?,
        )),
        outputs: names(Box::new(
            host.output_devices().context("listing output devices")?,
        )),
        default_input: host.default_input_device().and_then(|d| d.name().ok()),
        default_output: host.default_output_device().and_then(|d| d.name().ok()),
        labels: BTreeMap::new(),
    }
    // No card list (not Linux, no ALSA): names are guessed from the card ids alone.
    .with_labels(&std::fs::read_to_string("/proc/asound/cards").unwrap_or_default()))
}

fn find(host: &cpal::Host, name: Option<&str>, input: bool) -> anyhow::Result<cpal::Device> {
    let kind = if input { "input" } else { "output" };
    match name {
        None | Some("default") => if input {
            host.default_input_device()
        } else {
            host.default_output_device()
        }
        .ok_or_else(|| anyhow!("no default {kind} device")),
        Some(name) => {
            let mut devices: Box<dyn Iterator<Item = cpal::Device>> = if input {
                Box::new(host.input_devices()?)
            } else {
                Box::new(host.output_devices()?)
            };
            devices
                .find(|d| d.name().is_ok_and(|n| n == name))
                .ok_or_else(|| anyhow!("no {kind} device named {name:?} (see `natter devices`)"))
        }
    }
}

/// Prefers 48 kHz (no resampling) in f32, then 48 kHz in any format, then the default config.
fn pick_config(device: &cpal::Device, input: bool) -> anyhow::Result<SupportedStreamConfig> {
    let ranges: Vec<_> = if input {
        device.supported_input_configs()?.collect()
    } else {
        device.supported_output_configs()?.collect()
    };
    let at_48k = |r: &cpal::SupportedStreamConfigRange| {
        r.try_with_sample_rate(cpal::SampleRate(SAMPLE_RATE))
    };
    if let Some(c) = ranges
        .iter()
        .filter(|r| r.sample_format() == cpal::SampleFormat::F32 && r.channels() <= 2)
        .find_map(at_48k)
    {
        return Ok(c);
    }
    if let Some(c) = ranges.iter().filter(|r| r.channels() <= 2).find_map(at_48k) {
        return Ok(c);
    }
    Ok(if input {
        device.default_input_config()?
    } else {
        device.default_output_config()?
    })
}

/// Asks for a 10 ms device buffer: a driver's default buffer (ALSA's is often 100+ ms) would
/// dominate mouth-to-ear latency. cpal's ALSA host makes a `Fixed(n)` buffer of four periods,
/// so the callbacks come every 2.5 ms. 10 ms capture periods (a 40 ms buffer) were measured:
/// 1.5 % of a core less, but a 480-sample block then waits up to a whole period for the
/// callback that completes it (3.6 ms more on average: the callbacks bring a few frames over
/// a period), and the echo canceller, which gets the reference when the engine mixes, then
/// sees captures without a reference between them and loses its delay (docs/BENCHMARKS.md,
/// "Desktop app"), so both directions stay at this size.
fn low_latency(supported: &SupportedStreamConfig) -> StreamConfig {
    let mut config = supported.config();
    let wanted = supported.sample_rate().0 / 100;
    if let cpal::SupportedBufferSize::Range { min, max } = supported.buffer_size() {
        config.buffer_size = cpal::BufferSize::Fixed(wanted.clamp(*min, *max));
    }
    config
}

/// Largest block a callback converts at once; bigger callbacks are processed in pieces.
const SCRATCH: usize = 8192;

fn input_stream<T>(
    device: &cpal::Device,
    config: &StreamConfig,
    mut ring: rtrb::Producer<f32>,
    counters: Arc<DeviceCounters>,
    failed: Arc<AtomicBool>,
) -> anyhow::Result<cpal::Stream>
where
    T: SizedSample,
    f32: FromSample<T>,
{
    let channels = usize::from(config.channels.max(1));
    let rate = u64::from(config.sample_rate.0);
    let wake_block = capture_wake_block(config.sample_rate.0);
    let mut mono = vec![0.0f32; SCRATCH];
    let stream = device.build_input_stream(
        config,
        move |data: &[T], info: &cpal::InputCallbackInfo| {
            let ts = info.timestamp();
            if let Some(d) = ts.callback.duration_since(&ts.capture) {
                counters
                    .input_latency_us
                    .store(d.as_micros() as u64, Relaxed);
            }
            for block in data.chunks(SCRATCH * channels) {
                let frames = block.len() / channels;
                for (m, frame) in mono.iter_mut().zip(block.chunks_exact(channels)) {
                    *m = frame.iter().map(|s| f32::from_sample(*s)).sum::<f32>() / channels as f32;
                }
                push_capture(&mut ring, &mono[..frames], &counters, wake_block);
            }
            counters.capture_period_us.store(
                (data.len() / channels) as u64 * 1_000_000 / rate.max(1),
                Relaxed,
            );
        },
        move |_err| failed.store(true, Relaxed),
        None,
    )?;
    Ok(stream)
}

fn output_stream<T>(
    device: &cpal::Device,
    config: &StreamConfig,
    mut ring: rtrb::Consumer<f32>,
    counters: Arc<DeviceCounters>,
    failed: Arc<AtomicBool>,
) -> anyhow::Result<cpal::Stream>
where
    T: SizedSample + FromSample<f32>,
{
    let channels = usize::from(config.channels.max(1));
    let rate = u64::from(config.sample_rate.0);
    let mut mono = vec![0.0f32; SCRATCH];
    let mut started = false;
    let stream = device.build_output_stream(
        config,
        move |data: &mut [T], info: &cpal::OutputCallbackInfo| {
            let ts = info.timestamp();
            if let Some(d) = ts.playback.duration_since(&ts.callback) {
                counters
                    .output_latency_us
                    .store(d.as_micros() as u64, Relaxed);
            }
            let total_frames = data.len() / channels;
            for block in data.chunks_mut(SCRATCH * channels) {
                let frames = block.len() / channels;
                pop_playback(&mut ring, &mut mono[..frames], &counters, &mut started);
                for (frame, m) in block.chunks_exact_mut(channels).zip(&mono) {
                    frame.fill(T::from_sample(*m));
                }
            }
            counters
                .playback_period_us
                .store(total_frames as u64 * 1_000_000 / rate.max(1), Relaxed);
        },
        move |_err| failed.store(true, Relaxed),
        None,
    )?;
    Ok(stream)
}

macro_rules! by_format {
    ($format:expr, $f:ident, $($arg:expr),*) => {
        match $format {
            cpal::SampleFormat::F32 => $f::<f32>($($arg),*),
            cpal::SampleFormat::I16 => $f::<i16>($($arg),*),
            cpal::SampleFormat::I32 => $f::<i32>($($arg),*),
            cpal::SampleFormat::U16 => $f::<u16>($($arg),*),
            cpal::SampleFormat::F64 => $f::<f64>($($arg),*),
            cpal::SampleFormat::I8 => $f::<i8>($($arg),*),
            cpal::SampleFormat::U8 => $f::<u8>($($arg),*),
            other => Err(anyhow!("unsupported sample format {other:?}")),
        }
    };
}

/// Streams built for one (input, output) pair, plus their identity for change detection.
struct Streams {
    _input: cpal::Stream,
    _output: cpal::Stream,
    input_name: String,
    output_name: String,
}

fn build(
    choice: &DeviceChoice,
    counters: &Arc<DeviceCounters>,
    failed: &Arc<AtomicBool>,
) -> anyhow::Result<(Streams, EngineEnds)> {
    let host = cpal::default_host();
    let input = find(&host, choice.input.as_deref(), true)?;
    let output = find(&host, choice.output.as_deref(), false)?;
    let in_cfg = pick_config(&input, true).context("input device configuration")?;
    let out_cfg = pick_config(&output, false).context("output device configuration")?;
    let (dev, eng) = ring_pair_at(
        in_cfg.sample_rate().0,
        out_cfg.sample_rate().0,
        counters.clone(),
    );
    let DeviceEnds {
        capture, playback, ..
    } = dev;
    let in_stream = by_format!(
        in_cfg.sample_format(),
        input_stream,
        &input,
        &low_latency(&in_cfg),
        capture,
        counters.clone(),
        failed.clone()
    )
    .context("opening the input stream")?;
    let out_stream = by_format!(
        out_cfg.sample_format(),
        output_stream,
        &output,
        &low_latency(&out_cfg),
        playback,
        counters.clone(),
        failed.clone()
    )
    .context("opening the output stream")?;
    in_stream.play().context("starting the input stream")?;
    out_stream.play().context("starting the output stream")?;
    Ok((
        Streams {
            _input: in_stream,
            _output: out_stream,
            input_name: input.name().unwrap_or_default(),
            output_name: output.name().unwrap_or_default(),
        },
        eng,
    ))
}

/// Opens an input device alone, for the microphone test: the running stream (which must stay
/// on the thread that built it: cpal streams are not `Send`), the ring its samples arrive on,
/// and their rate. A failure of the device while it runs leaves the ring silent.
pub fn open_input(name: Option<&str>) -> anyhow::Result<(cpal::Stream, rtrb::Consumer<f32>, u32)> {
    let host = cpal::default_host();
    let device = find(&host, name, true)?;
    let config = pick_config(&device, true).context("input device configuration")?;
    let (producer, consumer) = rtrb::RingBuffer::new(super::RING_SAMPLES);
    let stream = by_format!(
        config.sample_format(),
        input_stream,
        &device,
        &low_latency(&config),
        producer,
        Arc::new(DeviceCounters::default()),
        Arc::new(AtomicBool::new(false))
    )
    .context("opening the input stream")?;
    stream.play().context("starting the input stream")?;
    Ok((stream, consumer, config.sample_rate().0))
}

/// Running sound-card I/O.
pub struct CpalDevice {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub counters: Arc<DeviceCounters>,
    /// Names of the devices in use, as opened first.
    pub input_name: String,
    pub output_name: String,
}

impl CpalDevice {
    /// Opens the chosen devices. Returns the engine's first ring ends and a channel on which
    /// replacement ends arrive after each rebuild.
    pub fn start(
        choice: DeviceChoice,
    ) -> anyhow::Result<(Self, EngineEnds, mpsc::Receiver<EngineEnds>)> {
        let counters = Arc::new(DeviceCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (first_tx, first_rx) = mpsc::channel();
        let (replace_tx, replace_rx) = mpsc::channel();
        let (stop2, counters2) = (stop.clone(), counters.clone());
        let thread = std::thread::Builder::new()
            .name("natter-device".into())
            .spawn(move || supervise(choice, counters2, stop2, first_tx, replace_tx))?;
        let (ends, input_name, output_name) = first_rx
            .recv()
            .map_err(|_| anyhow!("audio device thread died"))?
            .map_err(|e: String| anyhow!(e))?;
        Ok((
            Self {
                stop,
                thread: Some(thread),
                counters,
                input_name,
                output_name,
            },
            ends,
            replace_rx,
        ))
    }
}

impl Drop for CpalDevice {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type FirstResult = Result<(EngineEnds, String, String), String>;

fn supervise(
    choice: DeviceChoice,
    counters: Arc<DeviceCounters>,
    stop: Arc<AtomicBool>,
    first: mpsc::Sender<FirstResult>,
    replace: mpsc::Sender<EngineEnds>,
) {
    let failed = Arc::new(AtomicBool::new(false));
    let mut streams = match build(&choice, &counters, &failed) {
        Ok((streams, ends)) => {
            let _ = first.send(Ok((
                ends,
                streams.input_name.clone(),
                streams.output_name.clone(),
            )));
            streams
        }
        Err(e) => {
            let _ = first.send(Err(format!("{e:#}")));
            return;
        }
    };
    let follows_default = |n: &Option<String>| n.as_deref().is_none_or(|n| n == "default");
    while !stop.load(Relaxed) {
        std::thread::sleep(Duration::from_millis(250));
        let host = cpal::default_host();
        let default_changed = (follows_default(&choice.input)
            && host
                .default_input_device()
                .and_then(|d| d.name().ok())
                .is_some_and(|n| n != streams.input_name))
            || (follows_default(&choice.output)
                && host
                    .default_output_device()
                    .and_then(|d| d.name().ok())
                    .is_some_and(|n| n != streams.output_name));
        if !failed.load(Relaxed) && !default_changed {
            continue;
        }
        tracing::warn!(
            device_error = failed.load(Relaxed),
            default_changed,
            "rebuilding audio streams"
        );
        match build(&choice, &counters, &failed) {
            Ok((new_streams, ends)) => {
                failed.store(false, Relaxed);
                counters.missing.store(false, Relaxed);
                streams = new_streams;
                counters.rebuilds.fetch_add(1, Relaxed);
                if replace.send(ends).is_err() {
                    return;
                }
            }
            // The device may come back (replugged): keep trying, a little slower.
            Err(e) => {
                if !counters.missing.swap(true, Relaxed) {
                    tracing::warn!(error = %format!("{e:#}"), "audio device unavailable");
                }
                std::thread::sleep(Duration::from_millis(750));
            }
        }
    }
}
