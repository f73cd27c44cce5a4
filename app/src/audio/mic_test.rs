//! The microphone test: the chosen input device opened on its own, its level measured on a
//! thread of its own and handed to the UI through a [`SharedLevel`].
//!
//! The path is lock-free end to end: the device callback only pushes samples into an SPSC
//! ring (as in a call), the meter thread drains the ring every 20 ms into a [`LevelMeter`],
//! and stores the reading in an atomic the UI reads when it draws.

use super::level::{LevelMeter, SharedLevel};
use super::wav::{DEFAULT_PERIOD, Input, Record, WavDevice};
use super::{SAMPLE_RATE, device, ring_pair};
use anyhow::anyhow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the meter thread drains the ring and publishes a reading.
const POLL: Duration = Duration::from_millis(20);

/// What the test listens to.
#[derive(Debug, Clone, PartialEq)]
pub enum MicSource {
    /// A sound card's input by name (`None`: the system default).
    Device(Option<String>),
    /// These samples played like a microphone in real time (tests, the app's test signal).
    Signal(Vec<f32>),
}

/// What keeps the source running while the meter reads it (a cpal stream or a WAV device);
/// dropping it closes the source.
type Running = Box<dyn std::any::Any>;

/// A running microphone test; dropping it stops the test and closes the device.
pub struct MicTest {
    level: Arc<SharedLevel>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MicTest {
    /// Opens `source` and starts measuring; fails if the device cannot be opened.
    pub fn start(source: MicSource) -> anyhow::Result<Self> {
        let level = Arc::new(SharedLevel::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (level2, stop2) = (level.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("natter-mic-test".into())
            .spawn(move || {
                let (running, ring, rate) = match open(source) {
                    Ok(opened) => {
                        let _ = ready_tx.send(Ok(()));
                        opened
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{e:#}")));
                        return;
                    }
                };
                measure(ring, LevelMeter::new(rate), &level2, &stop2);
                drop(running);
            })?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the microphone test thread died"))?
            .map_err(|e| anyhow!(e))?;
        Ok(Self {
            level,
            stop,
            thread: Some(thread),
        })
    }

    /// The reading the UI draws (shared so it can read it at its own pace).
    pub fn level(&self) -> Arc<SharedLevel> {
        self.level.clone()
    }
}

impl Drop for MicTest {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open(source: MicSource) -> anyhow::Result<(Running, rtrb::Consumer<f32>, u32)> {
    match source {
        MicSource::Device(name) => {
            let (stream, ring, rate) = device::open_input(name.as_deref())?;
            Ok((Box::new(stream), ring, rate))
        }
        MicSource::Signal(samples) => {
            let (device_ends, engine_ends) = ring_pair();
            // Long enough for any test; the signal is followed by silence.
            let total = 600 * SAMPLE_RATE as usize;
            let wav = WavDevice::start(
                Input::from(samples),
                total,
                Record::Nothing,
                DEFAULT_PERIOD,
                device_ends,
            );
            Ok((Box::new(wav), engine_ends.capture, SAMPLE_RATE))
        }
    }
}

/// Drains the ring into the meter until told to stop, publishing each reading.
fn measure(
    mut ring: rtrb::Consumer<f32>,
    mut meter: LevelMeter,
    level: &SharedLevel,
    stop: &AtomicBool,
) {
    while !stop.load(Relaxed) {
        std::thread::sleep(POLL);
        if let Ok(chunk) = ring.read_chunk(ring.slots()) {
            let (a, b) = chunk.as_slices();
            meter.push(a);
            meter.push(b);
            chunk.commit_all();
        }
        level.set(meter.level_db());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_signal_shows_on_the_meter_and_stopping_ends_the_thread() {
        let tone: Vec<f32> = (0..SAMPLE_RATE as usize * 5)
            .map(|i| 0.1 * (i as f32 * 0.05).sin())
            .collect();
        let test = MicTest::start(MicSource::Signal(tone)).unwrap();
        let level = test.level();
        let deadline = Instant::now() + Duration::from_secs(5);
        while level.get() < -30.0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // RMS of a 0.1 sine: −23 dBFS.
        assert!((level.get() + 23.0).abs() < 1.0, "{}", level.get());
        drop(test);
        assert!(
            Arc::strong_count(&level) == 1,
            "the meter thread let go of it"
        );
    }
}
