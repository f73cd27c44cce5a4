//! Audio backends: where the engine's microphone samples come from and where its speaker
//! samples go.
//!
//! Every backend (a WAV file, a cpal device, a test signal) exchanges mono `f32` samples at its
//! native rate with the engine through two lock-free single-producer/single-consumer rings
//! (`rtrb`); the engine resamples to and from 48 kHz on its own thread when needed. The
//! backend pushes captured samples into one and pops playback samples from the other. That is
//! all a real-time audio callback may do — no allocation, lock, log or blocking call — and it
//! makes the backends interchangeable: the engine cannot tell a file from a device.

pub mod device;
pub mod device_names;
pub mod level;
pub mod mic_test;
pub mod pcm_format;
pub mod resample;
pub mod stream;
pub mod wav;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// The engine's internal sample rate (Opus and the RTP clock both run at 48 kHz).
pub const SAMPLE_RATE: u32 = 48_000;

/// Ring capacity: one second each way, far more than the engine ever lets queue up.
pub const RING_SAMPLES: usize = SAMPLE_RATE as usize;

/// The engine's processing block: 10 ms at [`SAMPLE_RATE`].
pub const BLOCK: usize = SAMPLE_RATE as usize / 100;

/// How many captured samples at the device's `rate` give the engine something to do, for
/// [`push_capture`]'s wake-up: a whole [`BLOCK`] when the device runs at the engine's rate (the
/// engine reads whole blocks, so a wake-up for less only makes it look and sleep again —
/// PulseAudio's ~2 ms capture callbacks woke it ~560 times a second for 100 blocks); every
/// push when the engine resamples (its resampler hands out blocks in steps of its own).
pub fn capture_wake_block(rate: u32) -> usize {
    if rate == SAMPLE_RATE { BLOCK } else { 1 }
}

/// Whether pushing `pushed` samples onto a capture ring that held `held` completes a block of
/// `block`: the engine takes whole blocks, so what the ring holds beyond them is the same
/// whatever it took meanwhile, and a stale `held` gives the same answer.
fn completes_block(held: usize, pushed: usize, block: usize) -> bool {
    pushed > 0 && (held % block.max(1)) + pushed >= block.max(1)
}

/// The backend's ends of the two rings.
pub struct DeviceEnds {
    /// Push captured (microphone) samples here.
    pub capture: rtrb::Producer<f32>,
    /// Pop samples to play (speaker) from here.
    pub playback: rtrb::Consumer<f32>,
    pub counters: Arc<DeviceCounters>,
}

/// The engine's ends of the two rings.
pub struct EngineEnds {
    pub capture: rtrb::Consumer<f32>,
    pub playback: rtrb::Producer<f32>,
    pub counters: Arc<DeviceCounters>,
    /// Sample rate of the capture ring.
    pub capture_rate: u32,
    /// Sample rate of the playback ring.
    pub playback_rate: u32,
}

/// Creates a connected pair of 48 kHz ring ends.
pub fn ring_pair() -> (DeviceEnds, EngineEnds) {
    ring_pair_at(
        SAMPLE_RATE,
        SAMPLE_RATE,
        Arc::new(DeviceCounters::default()),
    )
}

/// Creates a connected pair of ring ends at the given device rates, sharing `counters`.
pub fn ring_pair_at(
    capture_rate: u32,
    playback_rate: u32,
    counters: Arc<DeviceCounters>,
) -> (DeviceEnds, EngineEnds) {
    let (cap_tx, cap_rx) = rtrb::RingBuffer::new(RING_SAMPLES);
    let (play_tx, play_rx) = rtrb::RingBuffer::new(RING_SAMPLES);
    (
        DeviceEnds {
            capture: cap_tx,
            playback: play_rx,
            counters: counters.clone(),
        },
        EngineEnds {
            capture: cap_rx,
            playback: play_tx,
            counters,
            capture_rate,
            playback_rate,
        },
    )
}

/// Bits of a playback stamp that hold the device's position in frames: 2^22 frames is 87 s at
/// 48 kHz, far more than the engine ever waits between two looks; the other 42 bits hold µs
/// since the counters were made (51 days).
pub const POSITION_BITS: u32 = 22;
const POSITION_MASK: u64 = (1 << POSITION_BITS) - 1;

/// Glitch counters and device timing shared between a backend and the engine/UI. Atomics:
/// callbacks bump them without locking.
#[derive(Debug)]
pub struct DeviceCounters {
    /// Captured samples dropped because the engine did not keep up.
    pub capture_overruns: AtomicU64,
    /// Playback samples missing when the device needed them (silence was played).
    pub playback_underruns: AtomicU64,
    /// Capture and playback periods in microseconds (how much audio one callback moves). Apart,
    /// so that each latency stage reads its own direction: the directions may be opened with
    /// different periods, and a playback callback fills whatever space the device has free.
    pub capture_period_us: AtomicU64,
    pub playback_period_us: AtomicU64,
    /// Capture latency: from the sound reaching the device to its samples reaching the
    /// callback, in microseconds (cpal's capture vs callback timestamps; 0 for a WAV file).
    pub input_latency_us: AtomicU64,
    /// Playback latency: from the callback handing samples over to them being heard, µs.
    pub output_latency_us: AtomicU64,
    /// Times the backend rebuilt its streams (device unplugged, default device changed).
    pub rebuilds: AtomicU64,
    /// The device failed and cannot be opened again yet (unplugged): the backend keeps
    /// trying, and the app says so on screen.
    pub missing: std::sync::atomic::AtomicBool,
    /// When the backend last pushed capture samples / took playback samples, in ns since
    /// `epoch` (0: never). The engine schedules its work from these instead of polling.
    last_capture_ns: AtomicU64,
    /// The last playback callback: when it ran (µs since `epoch`, high bits) and how many
    /// frames the device had taken before it (low [`POSITION_BITS`]), in one atomic so the
    /// engine never pairs one callback's time with another's position.
    last_playback: AtomicU64,
    /// Frames the playback callbacks have taken.
    played_frames: AtomicU64,
    epoch: Instant,
    /// The engine thread, woken when capture samples arrive.
    engine: OnceLock<Thread>,
}

impl Default for DeviceCounters {
    fn default() -> Self {
        Self {
            capture_overruns: AtomicU64::new(0),
            playback_underruns: AtomicU64::new(0),
            capture_period_us: AtomicU64::new(0),
            playback_period_us: AtomicU64::new(0),
            input_latency_us: AtomicU64::new(0),
            output_latency_us: AtomicU64::new(0),
            rebuilds: AtomicU64::new(0),
            missing: std::sync::atomic::AtomicBool::new(false),
            last_capture_ns: AtomicU64::new(0),
            last_playback: AtomicU64::new(0),
            played_frames: AtomicU64::new(0),
            epoch: Instant::now(),
            engine: OnceLock::new(),
        }
    }
}

impl DeviceCounters {
    /// Registers the calling thread as the one [`push_capture`] wakes. The first registration
    /// wins (one engine per backend).
    pub fn wake_this_thread_on_capture(&self) {
        let _ = self.engine.set(std::thread::current());
    }

    /// When capture samples last arrived, if ever.
    pub fn last_capture(&self) -> Option<Instant> {
        self.instant(&self.last_capture_ns)
    }

    /// When the device last took playback samples, if ever, and its position then: the frames
    /// it had taken before that callback, modulo 2^[`POSITION_BITS`]. The position is the
    /// device's own clock: a callback that runs late still starts at its position, so the
    /// engine can tell a late callback from a device whose rhythm moved.
    pub fn last_playback(&self) -> Option<(Instant, u64)> {
        match self.last_playback.load(Relaxed) {
            0 => None,
            packed => Some((
                self.epoch + Duration::from_micros(packed >> POSITION_BITS),
                packed & POSITION_MASK,
            )),
        }
    }

    /// Stamps a playback callback that takes `frames` frames. Real-time safe (lock-free
    /// atomics; while a rebuilt device's old and new streams overlap both may stamp).
    fn stamp_playback(&self, frames: usize) {
        let us = (self.epoch.elapsed().as_micros() as u64).max(1);
        let position = self.played_frames.fetch_add(frames as u64, Relaxed);
        self.last_playback
            .store((us << POSITION_BITS) | (position & POSITION_MASK), Relaxed);
    }

    fn instant(&self, ns: &AtomicU64) -> Option<Instant> {
        match ns.load(Relaxed) {
            0 => None,
            ns => Some(self.epoch + Duration::from_nanos(ns)),
        }
    }

    /// Stamps `slot` with the current time. Real-time safe: `Instant::now` reads the vDSO
    /// clock, no system call.
    fn stamp(&self, slot: &AtomicU64) {
        let ns = self.epoch.elapsed().as_nanos() as u64;
        slot.store(ns.max(1), Relaxed);
    }

    pub fn overruns(&self) -> u64 {
        self.capture_overruns.load(Relaxed)
    }
    pub fn underruns(&self) -> u64 {
        self.playback_underruns.load(Relaxed)
    }
}

/// Copies `samples` into the capture ring, counting what does not fit, and wakes the engine
/// when the ring completes a block of `wake_block` samples ([`capture_wake_block`]).
/// Real-time safe.
pub fn push_capture(
    ring: &mut rtrb::Producer<f32>,
    samples: &[f32],
    counters: &DeviceCounters,
    wake_block: usize,
) {
    let held = ring.buffer().capacity() - ring.slots();
    let n = samples.len().min(ring.slots());
    if let Ok(mut chunk) = ring.write_chunk_uninit(n) {
        let (a, b) = chunk.as_mut_slices();
        for (dst, src) in a.iter_mut().chain(b.iter_mut()).zip(samples) {
            dst.write(*src);
        }
        // SAFETY: every slot of the chunk was written above (the chunk holds exactly n slots
        // and `samples` has at least n).
        unsafe { chunk.commit_all() };
    }
    if n < samples.len() {
        counters
            .capture_overruns
            .fetch_add((samples.len() - n) as u64, Relaxed);
    }
    if !samples.is_empty() {
        counters.stamp(&counters.last_capture_ns);
    }
    if completes_block(held, n, wake_block) {
        // `unpark` is an atomic swap plus, only if the engine is parked, one futex wake: it
        // neither blocks nor allocates.
        if let Some(engine) = counters.engine.get() {
            engine.unpark();
        }
    }
}

/// Fills `out` from the playback ring, padding with silence (and counting it) when the engine
/// has not supplied enough, and records when the device took it (the engine's playout clock). `started` suppresses underrun counting before the first audio ever
/// arrived (silence before a call starts is not a glitch). Real-time safe.
pub fn pop_playback(
    ring: &mut rtrb::Consumer<f32>,
    out: &mut [f32],
    counters: &DeviceCounters,
    started: &mut bool,
) {
    counters.stamp_playback(out.len());
    let n = out.len().min(ring.slots());
    if let Ok(chunk) = ring.read_chunk(n) {
        let (a, b) = chunk.as_slices();
        out[..a.len()].copy_from_slice(a);
        out[a.len()..n].copy_from_slice(b);
        chunk.commit_all();
    }
    out[n..].fill(0.0);
    if n > 0 {
        *started = true;
    }
    if n < out.len() && *started {
        counters
            .playback_underruns
            .fetch_add((out.len() - n) as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_carry_samples_and_count_glitches() {
        let (mut dev, mut eng) = ring_pair();
        push_capture(&mut dev.capture, &[0.5; 100], &dev.counters, BLOCK);
        assert_eq!(eng.capture.slots(), 100);
        let mut out = [1.0; 10];
        let mut started = false;
        pop_playback(&mut dev.playback, &mut out, &dev.counters, &mut started);
        assert_eq!(out, [0.0; 10]);
        assert_eq!(
            dev.counters.underruns(),
            0,
            "silence before start is not an underrun"
        );
        eng.playback.push(0.25).unwrap();
        pop_playback(&mut dev.playback, &mut out, &dev.counters, &mut started);
        assert_eq!(out[0], 0.25);
        assert_eq!(dev.counters.underruns(), 9);
        push_capture(
            &mut dev.capture,
            &vec![0.0; RING_SAMPLES],
            &dev.counters,
            BLOCK,
        );
        assert_eq!(dev.counters.overruns(), 100);
    }

    #[test]
    fn capture_wakes_the_engine_once_a_block() {
        // ~2 ms callbacks (96 samples): the fifth completes the first block, the tenth the
        // second; what the engine took meanwhile (whole blocks) changes nothing.
        let wakes: Vec<usize> = (0..10)
            .filter(|&i| completes_block(i * 96, 96, BLOCK))
            .collect();
        assert_eq!(wakes, [4, 9]);
        assert!(completes_block(480 + 400, 96, BLOCK));
        assert!(!completes_block(480 + 100, 96, BLOCK));
        // A callback of several blocks wakes it once; nothing pushed (a full ring) never.
        assert!(completes_block(0, 3 * BLOCK, BLOCK));
        assert!(!completes_block(470, 0, BLOCK));
        // Resampling: every push.
        assert_eq!(capture_wake_block(44_100), 1);
        assert!(completes_block(7, 1, capture_wake_block(44_100)));
        assert_eq!(capture_wake_block(SAMPLE_RATE), BLOCK);
    }
}
