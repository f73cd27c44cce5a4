//! The audio engine: one processing thread between an audio backend's rings and the network.
//!
//! Every 1 ms it drains received datagrams into per-peer jitter buffers, turns captured audio
//! into Opus/RTP datagrams, tops the playback ring up to one device period with the mix of all
//! peers, and once a second sends RTCP reports. It knows nothing of QUIC or files: datagrams
//! leave through a closure and arrive on a channel, audio moves through [`crate::audio`] rings,
//! so the headless call, the desktop app and tests all drive this same engine.

pub mod aec_delay;
pub mod receive;
pub mod rtcp;
pub mod send;

use crate::apm::{VoiceConfig, VoiceProcessor};
use crate::audio::EngineEnds;
use crate::audio::resample::StreamResampler;
use crate::codec::EncoderConfig;
use crate::jitter::JitterConfig;
use crate::rate::{FrameMode, RateController};
use crate::transport::path_spread::PathSpread;
use crate::vad::{Vad, VadConfig};
use natter_proto::media::{Datagram, PacketKind, write_rtcp};
use natter_proto::rtcp::{SenderLatency, ntp};
use receive::{ListenerStats, PeerStats, RemotePeer};
use rtcp::RtcpSession;
use send::{Gate, Sender};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Our SSRC, as assigned by the relay.
    pub ssrc: u32,
    /// Latency/robustness trade-off the rate controller works within.
    pub mode: FrameMode,
    /// Opus frame length in samples at 48 kHz fixed by the user; `None` lets the rate
    /// controller choose (20 ms standard, 10 ms low-latency, 40 ms on a poor network).
    pub pinned_frame_samples: Option<usize>,
    /// Adapt bitrate and frame size to receiver reports.
    pub adaptive: bool,
    pub encoder: EncoderConfig,
    pub jitter: JitterConfig,
    /// Whether to send at all (a listen-only client sends RTCP only).
    pub send_audio: bool,
    /// Echo cancellation, noise suppression, gain control, high-pass filter.
    pub voice: VoiceConfig,
    /// Voice-activated transmission: send only while the VAD hears voice (plus hang-over).
    pub voice_activation: bool,
    /// How much our round trip to the relay and each talker's uplink vary, as the control
    /// session learns them: where a new stream's jitter buffer starts
    /// ([`JitterConfig::start_target_ms`]).
    pub path_spread: PathSpread,
}

/// Changes to a running engine (from the UI or the CLI).
#[derive(Debug, Clone, Copy)]
pub enum EngineCommand {
    SetVoice(VoiceConfig),
    SetVoiceActivation(bool),
    /// The voice-activation threshold, dBFS: quieter blocks are never voice.
    SetVoiceThreshold(f32),
    /// Playback gain for one remote sender (by SSRC): 0 mutes it locally, 1 leaves it as is.
    /// Its jitter buffer keeps running, so unmuting resumes in sync.
    SetPeerGain {
        ssrc: u32,
        gain: f32,
    },
    /// Deafened: play nothing from the call (sounds from [`EngineCommand::PlaySound`] still play).
    SetDeafened(bool),
    /// A fixed encoder bitrate (bit/s), or `None` to let the rate controller adapt it.
    SetBitrate(Option<i32>),
    /// Switches between standard (20 ms) and low-latency (10 ms) framing.
    SetFrameMode(FrameMode),
    /// Jitter buffer: a fixed target delay (ms), or `None` for the adaptive target. Existing
    /// peers' buffers are rebuilt (a short gap), new peers start with it.
    SetJitterTarget(Option<f64>),
    /// Mixes a 48 kHz mono sound into the playback once (join/leave cues).
    PlaySound(&'static [f32]),
    /// The session rejoined the room after losing the relay, as `ssrc`: send under it from
    /// now on, and start the peers' and listeners' state afresh (their streams restart too,
    /// possibly under an SSRC one of them had before).
    Rejoined {
        ssrc: u32,
    },
}

/// A handle that sends a running engine commands, for whoever else needs to (the session's
/// supervisor). Cloning it is cheap.
#[derive(Clone)]
pub struct EngineRemote {
    commands: mpsc::Sender<EngineCommand>,
    thread: Option<std::thread::Thread>,
}

impl EngineRemote {
    /// Applies a command at once (wakes the engine thread).
    pub fn command(&self, command: EngineCommand) {
        let _ = self.commands.send(command);
        if let Some(t) = &self.thread {
            t.unpark();
        }
    }
}

impl EngineConfig {
    pub fn new(ssrc: u32) -> Self {
        Self {
            ssrc,
            mode: FrameMode::Standard,
            pinned_frame_samples: None,
            adaptive: true,
            encoder: EncoderConfig::default(),
            jitter: JitterConfig::default(),
            send_audio: true,
            voice: VoiceConfig::ALL,
            voice_activation: false,
            path_spread: PathSpread::default(),
        }
    }
}

/// A datagram received from the network and when.
pub struct Inbound {
    pub datagram: Vec<u8>,
    pub at: Instant,
}

/// Sends one datagram; never blocks (the transport drops what it cannot take).
pub type DatagramSink = Box<dyn FnMut(&[u8]) + Send>;

/// How the engine reaches the network.
pub struct MediaLink {
    pub send: DatagramSink,
    pub recv: mpsc::Receiver<Inbound>,
}

/// How many retired SSRCs' statistics the engine keeps (a bound on what rejoins and people
/// coming and going can make it hold).
pub const MAX_RETIRED_PEERS: usize = 64;

/// Engine-wide statistics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EngineStats {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub malformed_datagrams: u64,
    pub capture_overruns: u64,
    pub playback_underruns: u64,
    /// Times the audio backend rebuilt its streams (device unplugged, default device changed).
    pub device_rebuilds: u64,
    /// The audio device is gone (unplugged) and has not come back yet.
    pub device_missing: bool,
    /// Microphone level after voice processing, dBFS (for the input meter).
    pub input_level_db: f32,
    /// The VAD's noise floor, dBFS (where voice activation's threshold sits).
    pub noise_floor_db: f32,
    /// The VAD hears voice right now (our own speaking indicator).
    pub voice_active: bool,
    /// Frames DTX did not send.
    pub dtx_frames: u64,
    /// Current encoder bitrate and frame length, as the rate controller set them.
    pub bitrate_bps: i32,
    pub frame_ms: f64,
    pub voice: VoiceConfig,
    /// Echo path delay the canceller estimated, and the delay hint we gave it, ms.
    pub echo_delay_ms: Option<u32>,
    pub echo_delay_hint_ms: f64,
    /// Echo return loss enhancement the canceller reports, dB.
    pub erle_db: Option<f64>,
    pub peers: Vec<PeerStats>,
    /// Final statistics of SSRCs no longer heard (we or they rejoined, or they went silent),
    /// oldest first, at most [`MAX_RETIRED_PEERS`]: the session adds them to the same
    /// person's current statistics.
    #[serde(skip)]
    pub retired_peers: Vec<PeerStats>,
    /// Everyone who reports hearing us, as they report it.
    pub listeners: Vec<ListenerStats>,
}

/// A running engine.
pub struct Engine {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    muted: Arc<AtomicBool>,
    commands: mpsc::Sender<EngineCommand>,
    stats: Arc<Mutex<EngineStats>>,
}

impl Engine {
    /// Starts the engine on `ends`; `replacements` delivers new ring ends whenever the audio
    /// backend rebuilds its streams (a device came or went).
    pub fn start(
        config: EngineConfig,
        ends: EngineEnds,
        replacements: Option<mpsc::Receiver<EngineEnds>>,
        link: MediaLink,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let muted = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(EngineStats::default()));
        let port = AudioPort::new(ends, replacements)?;
        let (commands, commands_rx) = mpsc::channel();
        let mut worker = Worker::new(config, port, link, stats.clone(), muted.clone())?;
        worker.commands = Some(commands_rx);
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("natter-engine".into())
            .spawn(move || worker.run(&stop2))?;
        Ok(Self {
            thread: Some(thread),
            stop,
            muted,
            commands,
            stats,
        })
    }

    pub fn set_muted(&self, muted: bool) {
        self.muted.store(muted, Relaxed);
    }

    /// Applies a settings change at once (wakes the engine thread).
    pub fn command(&self, command: EngineCommand) {
        let _ = self.commands.send(command);
        self.wake();
    }

    pub fn remote(&self) -> EngineRemote {
        EngineRemote {
            commands: self.commands.clone(),
            thread: self.thread.as_ref().map(|t| t.thread().clone()),
        }
    }

    fn wake(&self) {
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }

    /// The latest statistics (refreshed every 100 ms).
    pub fn stats(&self) -> EngineStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the processing thread.
    pub fn stop(mut self) -> EngineStats {
        self.stop.store(true, Relaxed);
        self.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.stats()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        self.wake();
    }
}

/// Processing block: 10 ms.
const BLOCK: usize = crate::audio::BLOCK;
/// Longest the engine sleeps when nothing is scheduled sooner (a device that stopped calling
/// back; stats and reports are due every 100 ms anyway).
const MAX_SLEEP_MS: f64 = 20.0;
/// How often the engine looks at the playback ring until it has seen the device take samples
/// (it then knows the device's rhythm and sleeps until the next mix is due).
const UNKNOWN_RHYTHM_POLL_MS: f64 = 1.0;

/// The engine's side of the audio backend: the current rings, resampling to and from 48 kHz
/// when the device runs at another rate, and swapping in new rings after a device rebuild.
struct AudioPort {
    ends: EngineEnds,
    replacements: Option<mpsc::Receiver<EngineEnds>>,
    capture_rs: Option<StreamResampler>,
    playback_rs: Option<StreamResampler>,
    scratch: Vec<f32>,
    /// The device's playback position, unwrapped from the stamps' 2^22-frame counter.
    position: PositionUnwrap,
}

impl AudioPort {
    fn new(
        ends: EngineEnds,
        replacements: Option<mpsc::Receiver<EngineEnds>>,
    ) -> anyhow::Result<Self> {
        let resampler = |from: u32, to: u32| -> anyhow::Result<Option<StreamResampler>> {
            Ok(if from == to {
                None
            } else {
                Some(StreamResampler::new(from, to)?)
            })
        };
        Ok(Self {
            capture_rs: resampler(ends.capture_rate, crate::audio::SAMPLE_RATE)?,
            playback_rs: resampler(crate::audio::SAMPLE_RATE, ends.playback_rate)?,
            ends,
            replacements,
            scratch: vec![0.0; 8192],
            position: PositionUnwrap::default(),
        })
    }

    /// Switches to new ring ends if the backend rebuilt its streams, and makes sure the
    /// calling (engine) thread is the one the backend wakes when capture arrives.
    /// True when it switched.
    fn poll_replacement(&mut self) -> bool {
        let mut replaced = false;
        if let Some(new) = self.replacements.as_ref().and_then(|r| r.try_iter().last()) {
            let replacements = self.replacements.take();
            if let Ok(port) = Self::new(new, replacements) {
                *self = port;
                replaced = true;
            }
        }
        self.ends.counters.wake_this_thread_on_capture();
        replaced
    }

    /// The next 10 ms of capture at 48 kHz, if available.
    fn read_capture(&mut self, out: &mut [f32]) -> bool {
        let Some(rs) = self.capture_rs.as_mut() else {
            let Ok(chunk) = self.ends.capture.read_chunk(out.len()) else {
                return false;
            };
            let (a, b) = chunk.as_slices();
            out[..a.len()].copy_from_slice(a);
            out[a.len()..].copy_from_slice(b);
            chunk.commit_all();
            return true;
        };
        let n = self.ends.capture.slots().min(self.scratch.len());
        if let Ok(chunk) = self.ends.capture.read_chunk(n) {
            let (a, b) = chunk.as_slices();
            rs.push(a);
            rs.push(b);
            chunk.commit_all();
        }
        rs.pop(out)
    }

    /// The device's last playback callback: when it ran and where the device's clock was.
    fn last_drain(&mut self, ms: impl Fn(Instant) -> f64) -> Option<Drain> {
        let (at, raw) = self.ends.counters.last_playback()?;
        let frames = self.position.unwrap(raw);
        Some(Drain {
            at_ms: ms(at),
            position_ms: frames as f64 * 1000.0 / f64::from(self.ends.playback_rate.max(1)),
        })
    }

    /// Device samples waiting in the playback ring.
    fn queued(&self) -> usize {
        crate::audio::RING_SAMPLES - self.ends.playback.slots()
    }

    /// One device period, in device samples.
    fn period_samples(&self) -> usize {
        let period_us = self
            .ends
            .counters
            .playback_period_us
            .load(Relaxed)
            .max(10_000);
        (period_us * u64::from(self.ends.playback_rate) / 1_000_000) as usize
    }

    /// One device period, ms (a whole number of device samples).
    fn period_ms(&self) -> f64 {
        self.period_samples().max(1) as f64 * 1000.0 / f64::from(self.ends.playback_rate)
    }

    /// Queues a 48 kHz block for playback (resampled to the device rate if needed).
    fn write_playback(&mut self, block: &[f32]) {
        let samples: &[f32] = match self.playback_rs.as_mut() {
            None => block,
            Some(rs) => {
                rs.push(block);
                let n = rs.available().min(self.scratch.len());
                rs.pop(&mut self.scratch[..n]);
                &self.scratch[..n]
            }
        };
        let n = samples.len().min(self.ends.playback.slots());
        if let Ok(mut chunk) = self.ends.playback.write_chunk(n) {
            let (a, b) = chunk.as_mut_slices();
            for (dst, src) in a.iter_mut().chain(b.iter_mut()).zip(samples) {
                *dst = src.clamp(-1.0, 1.0);
            }
            chunk.commit_all();
        }
    }
}

struct Worker {
    config: EngineConfig,
    port: AudioPort,
    link: MediaLink,
    sender: Option<Sender>,
    rate: RateController,
    voice: Option<VoiceProcessor>,
    vad: Vad,
    commands: Option<mpsc::Receiver<EngineCommand>>,
    peers: HashMap<u32, RemotePeer>,
    /// See [`EngineStats::retired_peers`].
    retired: Vec<PeerStats>,
    /// Reports in and out, round trips, what listeners say about our stream.
    rtcp: RtcpSession,
    stats: Arc<Mutex<EngineStats>>,
    muted: Arc<AtomicBool>,
    epoch: Instant,
    capture: Vec<f32>,
    mix: Vec<f32>,
    block: Vec<f32>,
    malformed: u64,
    playout: PlayoutClock,
    /// Mean time one peer's jitter-buffer pull (decode included) takes, ms.
    pull_time_ms: f64,
    /// Mean time from capture samples landing in the ring to this thread taking them, ms.
    capture_wait_ms: f64,
    /// Local playback gain per remote SSRC (absent: 1).
    peer_gains: HashMap<u32, f32>,
    deafened: bool,
    /// A sound being played and how far it got.
    sound: Option<(&'static [f32], usize)>,
    /// Bitrate fixed by the user (the rate controller still picks frame sizes).
    fixed_bitrate: Option<i32>,
    /// The jitter configuration the engine was started with (adaptive).
    base_jitter: JitterConfig,
    next_stats_ms: f64,
    rtcp_buf: Vec<u8>,
}

/// Undoes the wrap of the playback stamps' frame counter (`audio::POSITION_BITS`): the engine
/// looks far more often than once per wrap, so each step forward is the shortest one. A step
/// back (two streams stamping while a rebuilt device's old one ends) is not read as a step of
/// almost a whole wrap forward: the position holds.
#[derive(Debug, Default)]
struct PositionUnwrap {
    last_raw: Option<u64>,
    frames: u64,
}

impl PositionUnwrap {
    fn unwrap(&mut self, raw: u64) -> u64 {
        let mask = (1u64 << crate::audio::POSITION_BITS) - 1;
        if let Some(last) = self.last_raw {
            let step = raw.wrapping_sub(last) & mask;
            if step <= mask / 2 {
                self.frames += step;
            }
        }
        self.last_raw = Some(raw);
        self.frames
    }
}

/// A playback callback as the engine sees it: when it ran (engine ms) and the device's
/// position then (ms of audio it had taken before it, on its own clock).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drain {
    pub at_ms: f64,
    pub position_ms: f64,
}

/// `at` on a clock that starts at `epoch`, ms.
fn ms_since(epoch: Instant, at: Instant) -> f64 {
    at.saturating_duration_since(epoch).as_secs_f64() * 1000.0
}

/// How late (ms) a timed wake-up of the engine must be to be logged.
const LATE_WAKE_MS: f64 = 2.0;

/// Just-in-time playout: mix the next device period as late as is safe, not as early as
/// possible. Refilling the playback ring right after the device drained it would leave every
/// sample waiting a whole period (10 ms) in the ring; instead the engine knows when the device
/// last took samples (the backend stamps every playback callback) and mixes `guard` ms before
/// the next one is due — and sleeps until then. The next callback is predicted from the
/// device's *clock*, not from the last stamp: a callback that ran late (the device thread was
/// scheduled late) does not move the device's clock, so the one after it comes on time, less
/// than a period later. Predicting from the late stamp mixed that next block too late by the
/// lateness — an underrun whenever it exceeded the guard (docs/BENCHMARKS.md, session 8). Each
/// stamp comes with the device's position (frames taken before that callback), so
/// `stamp − position` is the device clock's offset plus that callback's lateness: a smaller
/// offset is taken at once (a callback is never early), a larger one moves it by
/// [`Self::RHYTHM_FOLLOW`] of the difference, enough to follow clock drift and a device that
/// really restarted later. Each device underrun widens the guard (×1.5 + 1 ms);
/// a quiet minute narrows it again, so a loaded machine trades a little latency for no
/// glitches. The guard may grow past one device period (up to [`Self::MAX_GUARD_PERIODS`]):
/// on a busy machine the engine thread is woken tens of ms late now and then, and a guard
/// capped at one period left every such wake-up an underrun — a gap in the speaker's audio,
/// the largest quality loss of real calls on a loaded machine. The ring then holds
/// [`Self::fill_target`] periods.
#[derive(Debug)]
pub struct PlayoutClock {
    last_queued: usize,
    /// The last callback seen (each is seen several times): its device position, ms.
    last_position_ms: Option<f64>,
    /// Callback time minus device position for an on-time callback, ms.
    offset_ms: f64,
    guard_ms: f64,
    underruns_seen: u64,
    last_underrun_ms: f64,
    /// When the next drain is expected, as predicted at the last `due`.
    next_drain_ms: Option<f64>,
    /// Mean time from mixing a block to the device taking it, ms.
    lead_ms: f64,
    /// The device's underrun count (samples) already skipped, see [`Self::missed`].
    skipped: u64,
}

impl PlayoutClock {
    const MIN_GUARD_MS: f64 = 2.0;
    const START_GUARD_MS: f64 = 3.0;
    /// Largest guard, in device periods.
    pub const MAX_GUARD_PERIODS: f64 = 4.0;
    /// How much of a late callback's lateness moves the offset: a 9 ms late callback moves it
    /// 0.45 ms, and ±200 ppm of clock drift (2 µs a period) is followed within 40 µs.
    const RHYTHM_FOLLOW: f64 = 0.05;

    pub fn new() -> Self {
        Self {
            last_queued: 0,
            last_position_ms: None,
            offset_ms: 0.0,
            guard_ms: Self::START_GUARD_MS,
            underruns_seen: 0,
            last_underrun_ms: 0.0,
            next_drain_ms: None,
            lead_ms: 0.0,
            skipped: 0,
        }
    }

    /// Device samples the device played as silence since the last call, given its underrun
    /// count: the audio meant for that time must be skipped, not played late. A block mixed
    /// after the device ran dry is taken one callback later than it was meant for, and so is
    /// every block after it: without the skip each underrun added its length to mouth-to-ear
    /// for good, until the jitter buffer found a pause to accelerate the surplus away (seconds;
    /// real calls on a quiet machine had up to five underruns, and the chirps after them
    /// measured 10–30 ms above the rest of the call; docs/BENCHMARKS.md, session 11). The gap
    /// itself is heard either way.
    pub fn missed(&mut self, underruns: u64) -> u64 {
        let missed = underruns.saturating_sub(self.skipped);
        self.skipped = underruns;
        missed
    }

    /// Mean time between mixing a block and the device taking it, ms: the playback ring's
    /// share of the latency.
    pub fn lead_ms(&self) -> f64 {
        self.lead_ms
    }

    /// Current safety margin before the device's next consumption, ms.
    pub fn guard_ms(&self) -> f64 {
        self.guard_ms
    }

    /// Whether to mix now, given the device's last callback (`drained`), the ring level and
    /// the device's underrun count.
    pub fn due(
        &mut self,
        now: f64,
        drained: Option<Drain>,
        queued: usize,
        period_ms: f64,
        underruns: u64,
    ) -> bool {
        if let Some(drain) = drained
            && self.last_position_ms != Some(drain.position_ms)
        {
            let offset = drain.at_ms - drain.position_ms;
            self.offset_ms = match self.last_position_ms {
                Some(_) if offset > self.offset_ms => {
                    self.offset_ms + Self::RHYTHM_FOLLOW * (offset - self.offset_ms)
                }
                _ => offset,
            };
            self.last_position_ms = Some(drain.position_ms);
        }
        self.last_queued = queued;
        if underruns > self.underruns_seen {
            if self.last_position_ms.is_some() {
                // Half as much again plus 1 ms: a quiet machine's rare underrun costs a ms, a
                // busy one's tens-of-ms stalls are covered after a handful of underruns.
                self.guard_ms =
                    (self.guard_ms * 1.5 + 1.0).min(Self::MAX_GUARD_PERIODS * period_ms);
            }
            self.underruns_seen = underruns;
            self.last_underrun_ms = now;
        } else if now - self.last_underrun_ms > 60_000.0 && self.guard_ms > Self::MIN_GUARD_MS {
            self.guard_ms = (self.guard_ms - 0.5).max(Self::MIN_GUARD_MS);
            self.last_underrun_ms = now;
        }
        match self.last_drain_ms() {
            // Until the device's rhythm is known, keep the ring full.
            None => true,
            Some(drain) => {
                let mut next = drain + period_ms;
                while next + period_ms <= now {
                    next += period_ms;
                }
                self.next_drain_ms = Some(next);
                now >= next - self.guard_ms
            }
        }
    }

    /// When the next mix is due (engine ms, after `now`): `guard` before the device's next
    /// callback. `None` until the device has been seen taking samples.
    pub fn next_mix_ms(&self, now: f64, period_ms: f64) -> Option<f64> {
        let drain = self.last_drain_ms()?;
        let mut next = drain + period_ms;
        while next - self.guard_ms <= now {
            next += period_ms;
        }
        Some(next - self.guard_ms)
    }

    /// When the device's last callback was due on its own clock (engine ms).
    fn last_drain_ms(&self) -> Option<f64> {
        self.last_position_ms.map(|p| p + self.offset_ms)
    }

    /// Samples the playback ring should hold after mixing: enough periods that the device is
    /// covered for `guard` ms beyond its next callback (one period while the guard is within a
    /// period, as on a quiet machine).
    pub fn fill_target(&self, period_samples: usize, period_ms: f64) -> usize {
        let periods = (self.guard_ms / period_ms)
            .ceil()
            .clamp(1.0, Self::MAX_GUARD_PERIODS);
        period_samples * periods as usize
    }

    /// Records the ring level after mixing at `now`. The block just mixed is taken at the next
    /// callback plus one period for every further period already queued before it.
    pub fn filled(&mut self, now: f64, queued: usize, period_samples: usize, period_ms: f64) {
        if queued > self.last_queued
            && let Some(next) = self.next_drain_ms
        {
            let behind = queued.saturating_sub(period_samples.max(1)) / period_samples.max(1);
            let lead = (next - now).max(0.0) + behind as f64 * period_ms;
            self.lead_ms += 0.1 * (lead - self.lead_ms);
        }
        self.last_queued = queued;
    }
}

impl Default for PlayoutClock {
    fn default() -> Self {
        Self::new()
    }
}

/// The RTP sender for `config` (none for a listen-only client), at the rate controller's
/// current settings.
fn new_sender(config: &EngineConfig, rate: &RateController) -> anyhow::Result<Option<Sender>> {
    if !config.send_audio {
        return Ok(None);
    }
    let initial = rate.settings();
    let encoder = EncoderConfig {
        bitrate_bps: initial.bitrate_bps,
        expected_loss_pct: initial.expected_loss_pct,
        restricted_low_delay: initial.restricted_low_delay,
        fec: initial.fec,
        dred_10ms: initial.dred_10ms,
        ..config.encoder
    };
    let frame = config
        .pinned_frame_samples
        .unwrap_or(initial.frame_ms as usize * 48);
    let mut sender = Sender::new(config.ssrc, frame, encoder)?;
    if config.pinned_frame_samples.is_some() {
        sender.pin_frame_size();
    }
    Ok(Some(sender))
}

impl Worker {
    fn new(
        config: EngineConfig,
        port: AudioPort,
        link: MediaLink,
        stats: Arc<Mutex<EngineStats>>,
        muted: Arc<AtomicBool>,
    ) -> anyhow::Result<Self> {
        let rate = RateController::new(config.mode);
        let voice = if config.voice.any() {
            Some(VoiceProcessor::new(config.voice)?)
        } else {
            None
        };
        let sender = new_sender(&config, &rate)?;
        let ssrc = config.ssrc;
        Ok(Self {
            base_jitter: config.jitter.clone(),
            config,
            port,
            link,
            sender,
            rate,
            voice,
            vad: Vad::new(VadConfig::default()),
            commands: None,
            peers: HashMap::new(),
            retired: Vec::new(),
            rtcp: RtcpSession::new(ssrc, 0.0),
            stats,
            muted,
            epoch: Instant::now(),
            capture: vec![0.0; BLOCK],
            mix: vec![0.0; BLOCK],
            block: vec![0.0; BLOCK],
            malformed: 0,
            playout: PlayoutClock::new(),
            pull_time_ms: 0.0,
            capture_wait_ms: 0.0,
            peer_gains: HashMap::new(),
            deafened: false,
            sound: None,
            fixed_bitrate: None,
            next_stats_ms: 0.0,
            rtcp_buf: Vec::with_capacity(1200),
        })
    }

    fn ms(&self, at: Instant) -> f64 {
        ms_since(self.epoch, at)
    }

    /// This moment on the engine's clock and the wall clock, for the RTCP session.
    fn clock(&self) -> rtcp::Now {
        rtcp::Now {
            ms: self.ms(Instant::now()),
            unix_us: crate::clock::unix_micros(),
        }
    }

    /// The engine loop. It sleeps until the next thing is due — the next mix (just before the
    /// device's next playback callback), stats or reports — and is woken early when capture
    /// samples arrive; datagrams wait in their channel (stamped with their arrival time) until
    /// the next wake-up, which is always before the next jitter-buffer pull. That is two or
    /// three wake-ups per device period instead of polling every millisecond.
    fn run(&mut self, stop: &AtomicBool) {
        let mut planned_wake: Option<f64> = None;
        while !stop.load(Relaxed) {
            let now = self.ms(Instant::now());
            if let Some(planned) = planned_wake.take()
                && now - planned > LATE_WAKE_MS
            {
                // A late wake-up is an underrun when it exceeds the playout guard; logged so
                // the underruns can be told apart from late device callbacks.
                tracing::debug!(target: "natter::playout", at_ms = now, late_ms = now - planned,
                    guard_ms = self.playout.guard_ms(), "engine woke late");
            }
            if self.port.poll_replacement() {
                // A new device, with its own rhythm. While there was none nothing was played,
                // so the jitter buffers hold the whole outage: start them afresh on the newest
                // packets instead of playing a second of the past.
                self.playout = PlayoutClock::new();
                self.reset_jitter_buffers();
            }
            self.poll_commands();
            while let Ok(inbound) = self.link.recv.try_recv() {
                let at = self.ms(inbound.at);
                self.on_datagram(&inbound.datagram, at);
            }
            self.process_capture(now);
            self.fill_playback(now);
            if now >= self.rtcp.poll_timeout() {
                self.retire_peers(|p| now - p.last_packet_ms >= rtcp::FORGET_AFTER_MS);
                self.send_report();
            }
            if now >= self.next_stats_ms {
                self.next_stats_ms = now + 100.0;
                self.publish_stats();
            }
            let wake = self.next_wake_ms(now);
            let sleep_ms = (wake - self.ms(Instant::now())).min(MAX_SLEEP_MS);
            if sleep_ms > 0.0 {
                planned_wake = Some(self.ms(Instant::now()) + sleep_ms);
                std::thread::park_timeout(Duration::from_secs_f64(sleep_ms / 1000.0));
            }
        }
        self.publish_stats();
    }

    /// When the loop must run next, engine ms (capture arrivals wake it earlier).
    fn next_wake_ms(&self, now: f64) -> f64 {
        let mix = self
            .playout
            .next_mix_ms(now, self.port.period_ms())
            .unwrap_or(now + UNKNOWN_RHYTHM_POLL_MS);
        mix.min(self.next_stats_ms).min(self.rtcp.poll_timeout())
    }

    fn poll_commands(&mut self) {
        let Some(rx) = self.commands.as_ref() else {
            return;
        };
        let commands: Vec<EngineCommand> = rx.try_iter().collect();
        for command in commands {
            match command {
                EngineCommand::SetVoice(v) => match self.voice.as_mut() {
                    Some(vp) => vp.set_config(v),
                    None if v.any() => self.voice = VoiceProcessor::new(v).ok(),
                    None => {}
                },
                EngineCommand::SetVoiceActivation(on) => self.config.voice_activation = on,
                EngineCommand::SetVoiceThreshold(db) => self.vad.set_threshold_db(db),
                EngineCommand::SetPeerGain { ssrc, gain } => {
                    self.peer_gains.insert(ssrc, gain.clamp(0.0, 4.0));
                }
                EngineCommand::SetDeafened(on) => self.deafened = on,
                EngineCommand::SetBitrate(bitrate) => {
                    self.fixed_bitrate = bitrate;
                    self.config.adaptive = bitrate.is_none();
                    self.apply_rate_settings();
                }
                EngineCommand::SetFrameMode(mode) => {
                    self.config.mode = mode;
                    self.rate = RateController::new(mode);
                    self.apply_rate_settings();
                }
                EngineCommand::SetJitterTarget(target) => self.set_jitter_target(target),
                EngineCommand::PlaySound(samples) => self.sound = Some((samples, 0)),
                EngineCommand::Rejoined { ssrc } => self.rejoined(ssrc),
            }
            if let EngineCommand::SetVoice(v) = command {
                self.config.voice = v;
            }
        }
    }

    /// A new membership of the room: a new SSRC whose packets carry on the old numbering (so
    /// listeners can count what the outage swallowed), at the rate controller's starting
    /// point, since the path may have changed, and no peers or listeners until they are heard
    /// again.
    fn rejoined(&mut self, ssrc: u32) {
        self.retire_peers(|_| true);
        self.config.ssrc = ssrc;
        self.rtcp.rejoined(ssrc);
        self.rate = RateController::new(self.config.mode);
        match new_sender(&self.config, &self.rate) {
            Ok(sender) => {
                self.sender = match (sender, self.sender.take()) {
                    (Some(fresh), Some(old)) => Some(Sender::continue_from(fresh, &old)),
                    (sender, _) => sender,
                }
            }
            // Cannot happen with settings that built a sender before; keep the old one
            // rather than fall silent.
            Err(e) => tracing::warn!("cannot rebuild the sender after rejoining: {e:#}"),
        }
        self.apply_rate_settings();
    }

    /// Removes the peers `gone` selects (silent too long, or all of them when we rejoin),
    /// keeping their final statistics so the session can add them to the same person's
    /// statistics under a later SSRC.
    fn retire_peers(&mut self, gone: impl Fn(&RemotePeer) -> bool) {
        let retired: Vec<u32> = self
            .peers
            .values()
            .filter(|p| gone(p))
            .map(|p| p.ssrc)
            .collect();
        for ssrc in retired {
            if let Some(peer) = self.peers.remove(&ssrc) {
                if self.retired.len() == MAX_RETIRED_PEERS {
                    self.retired.remove(0);
                }
                self.retired.push(peer.stats(self.rtcp.sender(ssrc)));
            }
        }
    }

    /// Hands the encoder the rate controller's settings, with the user's fixed bitrate if any.
    fn apply_rate_settings(&mut self) {
        let mut settings = self.rate.settings();
        if let Some(bps) = self.fixed_bitrate {
            settings.bitrate_bps = bps;
        }
        if let Some(sender) = self.sender.as_mut() {
            sender.apply(settings);
        }
    }

    /// Auto (`None`) or a fixed delay: applied to the running buffers live — they stretch to
    /// the new target, no restart and no gap — and to the buffers of peers that join later.
    fn set_jitter_target(&mut self, target: Option<f64>) {
        let mut config = self.base_jitter.clone();
        if let Some(ms) = target {
            config.min_target_ms = ms;
            config.max_target_ms = ms;
            config.initial_target_ms = ms;
        }
        for peer in self.peers.values_mut() {
            peer.jitter
                .set_target_range(config.min_target_ms, config.max_target_ms);
        }
        self.config.jitter = config;
    }

    /// Gives every peer a fresh jitter buffer (and decoder) with the current configuration.
    fn reset_jitter_buffers(&mut self) {
        for peer in self.peers.values_mut() {
            if let Ok(decoder) = crate::codec::OpusDecoder::new() {
                peer.jitter = crate::jitter::JitterBuffer::new(self.config.jitter.clone(), decoder);
            }
        }
    }

    fn process_capture(&mut self, now: f64) {
        let landed = self.port.ends.counters.last_capture().map(|at| self.ms(at));
        while self.port.read_capture(&mut self.capture) {
            if let Some(landed) = landed {
                // How long the newest samples waited for this thread (a wake-up's latency).
                self.capture_wait_ms += 0.05 * ((now - landed).max(0.0) - self.capture_wait_ms);
            }
            if let Some(vp) = self.voice.as_mut() {
                vp.process_capture(&mut self.capture);
            }
            let voice = self.vad.process(&self.capture);
            if let Some(sender) = self.sender.as_mut() {
                let muted = self.muted.load(Relaxed);
                let gate = Gate {
                    transmit: !muted && (voice || !self.config.voice_activation),
                    voice: voice && !muted,
                };
                let send = &mut self.link.send;
                sender.push(&self.capture, now, gate, &mut |d| send(d));
            }
        }
    }

    /// Mixes one device period of audio just before the device will need it (see
    /// [`PlayoutClock`]), block by block.
    fn fill_playback(&mut self, now: f64) {
        let period = self.port.period_samples().max(1);
        let period_ms = self.port.period_ms();
        let underruns = self.port.ends.counters.underruns();
        let missed = self.playout.missed(underruns);
        if missed > 0 {
            self.skip_playback(missed, now);
        }
        let epoch = self.epoch;
        let drained = self.port.last_drain(|at| ms_since(epoch, at));
        let guard_before = self.playout.guard_ms();
        let due = self
            .playout
            .due(now, drained, self.port.queued(), period_ms, underruns);
        if self.playout.guard_ms() > guard_before {
            // Each underrun is a gap the listener hears; with its time and the wider guard a
            // bad recording can be explained (`RUST_LOG=natter::playout=debug`).
            tracing::debug!(target: "natter::playout", at_ms = now, underruns,
                guard_ms = self.playout.guard_ms(), "playback underrun");
        }
        if !due {
            return;
        }
        let target = self.playout.fill_target(period, period_ms);
        while self.port.queued() < target && self.port.ends.playback.slots() >= 2 * BLOCK {
            self.mix.fill(0.0);
            let pull_started = Instant::now();
            let mut pulls = 0;
            for (ssrc, peer) in self.peers.iter_mut() {
                pulls += 1;
                peer.jitter.pull(&mut self.block, now);
                // Every stretch, concealment and re-buffer with its time, so a bad recording
                // can be explained (`RUST_LOG=natter::jitter=debug`).
                peer.jitter.drain_events(|e| {
                    tracing::debug!(target: "natter::jitter", ssrc = *ssrc, at_ms = e.at_ms,
                        kind = ?e.kind, ms = e.ms, "jitter buffer event");
                });
                let gain = self.peer_gains.get(ssrc).copied().unwrap_or(1.0);
                if gain == 0.0 {
                    continue;
                }
                for (m, s) in self.mix.iter_mut().zip(&self.block) {
                    *m += *s * gain;
                }
            }
            if pulls > 0 {
                let took = pull_started.elapsed().as_secs_f64() * 1000.0 / f64::from(pulls);
                self.pull_time_ms += 0.05 * (took - self.pull_time_ms);
            }
            if self.deafened {
                self.mix.fill(0.0);
            }
            if let Some((sound, pos)) = self.sound.as_mut() {
                let part = &sound[(*pos).min(sound.len())..(*pos + BLOCK).min(sound.len())];
                for (m, s) in self.mix.iter_mut().zip(part) {
                    *m += *s;
                }
                *pos += BLOCK;
                if *pos >= sound.len() {
                    self.sound = None;
                }
            }
            // What the speaker plays is what the echo canceller must remove.
            if let Some(vp) = self.voice.as_mut() {
                vp.process_render(&self.mix);
            }
            self.port.write_playback(&self.mix);
        }
        self.playout
            .filled(now, self.port.queued(), period, period_ms);
    }

    /// The device played `device_samples` of silence because the engine was late: every
    /// jitter buffer drops the audio meant for that time, so the streams stay where the
    /// device's clock is (see [`PlayoutClock::missed`] and [`crate::jitter::JitterBuffer::skip`]).
    fn skip_playback(&mut self, device_samples: u64, now: f64) {
        let rate = u64::from(self.port.ends.playback_rate.max(1));
        let samples = (device_samples * u64::from(crate::audio::SAMPLE_RATE) / rate) as usize;
        tracing::debug!(target: "natter::playout", at_ms = now, samples,
            "the device played silence: skipping the audio meant for it");
        for peer in self.peers.values_mut() {
            peer.jitter.skip(samples, now);
        }
    }

    fn on_datagram(&mut self, bytes: &[u8], at: f64) {
        let Ok(datagram) = Datagram::parse(bytes) else {
            self.malformed += 1;
            return;
        };
        match datagram.kind {
            PacketKind::Rtp => {
                let Ok(packet) = datagram.rtp() else {
                    self.malformed += 1;
                    return;
                };
                let h = packet.header;
                if !self.peers.contains_key(&h.ssrc) {
                    let mut jitter = self.config.jitter.clone();
                    jitter.initial_target_ms =
                        jitter.start_target_ms(self.config.path_spread.for_stream(h.ssrc));
                    match RemotePeer::new(h.ssrc, jitter, at) {
                        Ok(peer) => {
                            self.peers.insert(h.ssrc, peer);
                        }
                        Err(_) => return,
                    }
                }
                let peer = self.peers.get_mut(&h.ssrc).expect("inserted above");
                peer.last_packet_ms = at;
                if let Some(level) = h.audio_level {
                    peer.audio_level = Some(level);
                    if level.voice {
                        peer.last_voice_ms = Some(at);
                    }
                }
                self.rtcp.on_rtp(h.ssrc, h.sequence, h.timestamp, at);
                // Each arrival with its RTP numbers: transit = at_ms − ts / 48 shows where a
                // jitter target came from (`RUST_LOG=natter::arrival=trace`).
                tracing::trace!(target: "natter::arrival", ssrc = h.ssrc, seq = h.sequence,
                    ts = h.timestamp, at_ms = at, bytes = packet.payload.len(), "rtp");
                peer.jitter
                    .insert(h.sequence, h.timestamp, packet.payload, at);
            }
            PacketKind::Rtcp => match natter_proto::rtcp::parse_compound(datagram.packet) {
                Ok(packets) => {
                    let now = self.clock();
                    for packet in &packets {
                        if let Some(report) = self.rtcp.on_rtcp(packet, at, now) {
                            self.on_listener_report(report);
                        }
                        while let Some(runs) = self.rtcp.poll_loss_runs() {
                            self.on_listener_runs(runs);
                        }
                    }
                }
                Err(_) => self.malformed += 1,
            },
        }
    }

    /// What a receiver lost of our stream drives bitrate, FEC and frame size.
    fn on_listener_report(&mut self, report: rtcp::ListenerReport) {
        if self.config.adaptive
            && let Some(sender) = self.sender.as_mut()
            && let Some(settings) = self.rate.on_report(
                report.from,
                report.fraction_lost,
                report.rtt_ms,
                report.at_ms,
            )
        {
            sender.apply(settings);
        }
    }

    /// How a receiver's losses of our stream come (alone or in runs) chooses FEC or DRED.
    fn on_listener_runs(&mut self, runs: rtcp::ListenerRuns) {
        if self.config.adaptive
            && let Some(sender) = self.sender.as_mut()
            && let Some(settings) = self.rate.on_loss_runs(runs.from, runs.runs, runs.at_ms)
        {
            sender.apply(settings);
        }
    }

    /// Sends the RTCP session's report, with our sender info and latency stages.
    fn send_report(&mut self) {
        let now = self.clock();
        let info = self
            .sender
            .as_ref()
            .and_then(|s| s.sender_info(now.ms, ntp::from_unix_micros(now.unix_us)));
        let latency = self.sender_latency();
        if let Some(packets) = self.rtcp.poll_report(now, info, latency) {
            self.rtcp_buf.clear();
            write_rtcp(&packets, &mut self.rtcp_buf);
            (self.link.send)(&self.rtcp_buf);
        }
    }

    /// Our own sending stages, for the APP report: device capture latency, then waiting for
    /// the rest of the frame after the first period arrived (plus half a poll interval, the
    /// mean time a captured block waits for this thread), then look-ahead and encode time.
    fn sender_latency(&self) -> Option<SenderLatency> {
        let sender = self.sender.as_ref()?;
        let counters = &self.port.ends.counters;
        let period_ms = counters.capture_period_us.load(Relaxed) as f64 / 1000.0;
        let frame_ms = sender.frame_samples() as f64 / 48.0;
        let resample_ms = self
            .port
            .capture_rs
            .as_ref()
            .map_or(0.0, |r| r.delay() as f64 / 48.0);
        let apm_ms = self.voice.as_ref().map_or(0.0, |v| v.config().delay_ms());
        let processing =
            (frame_ms - period_ms.min(frame_ms)) + self.capture_wait_ms + resample_ms + apm_ms;
        let us = |ms: f64| (ms.max(0.0) * 1000.0).round() as u32;
        Some(SenderLatency {
            capture_us: counters.input_latency_us.load(Relaxed) as u32,
            processing_us: us(processing),
            encode_us: us(sender.lookahead_ms() + sender.encode_time_ms),
        })
    }

    fn publish_stats(&mut self) {
        let counters = &self.port.ends.counters;
        let path = aec_delay::LocalPath {
            mix_lead_ms: self.playout.lead_ms(),
            output_latency_ms: counters.output_latency_us.load(Relaxed) as f64 / 1000.0,
            playback_resampler_ms: self
                .port
                .playback_rs
                .as_ref()
                .map_or(0.0, |r| r.delay() as f64 / 48.0),
            input_latency_ms: counters.input_latency_us.load(Relaxed) as f64 / 1000.0,
        };
        let playback_ms = path.playback_ms();
        let decode_ms = self.pull_time_ms;
        let now = self.ms(Instant::now());
        let echo_hint = path.echo_delay_ms();
        if let Some(vp) = self.voice.as_mut() {
            vp.set_stream_delay_ms(echo_hint);
        }
        let (echo_delay_ms, erle_db) = self.voice.as_ref().map_or((None, None), |v| v.echo_stats());
        let mut peers: Vec<PeerStats> = self
            .peers
            .values()
            .map(|p| {
                let rtcp = self.rtcp.sender(p.ssrc);
                PeerStats {
                    stages: p.stages(rtcp, decode_ms, playback_ms),
                    speaking: p.speaking(now),
                    gain: self.peer_gains.get(&p.ssrc).copied().unwrap_or(1.0),
                    ..p.stats(rtcp)
                }
            })
            .collect();
        peers.sort_by_key(|p| p.ssrc);
        let listeners: Vec<ListenerStats> = self.rtcp.listeners();
        let stats = EngineStats {
            packets_sent: self.sender.as_ref().map_or(0, |s| s.total_packets_sent),
            bytes_sent: self.sender.as_ref().map_or(0, |s| s.total_octets_sent),
            malformed_datagrams: self.malformed,
            capture_overruns: self.port.ends.counters.overruns(),
            playback_underruns: self.port.ends.counters.underruns(),
            device_rebuilds: self.port.ends.counters.rebuilds.load(Relaxed),
            device_missing: self.port.ends.counters.missing.load(Relaxed),
            input_level_db: self.vad.level_db,
            noise_floor_db: self.vad.noise_floor_db(),
            voice_active: self.vad.is_active(),
            dtx_frames: self.sender.as_ref().map_or(0, |s| s.dtx_frames),
            bitrate_bps: self
                .sender
                .as_ref()
                .map_or(0, |s| s.encoder_config().bitrate_bps),
            frame_ms: self
                .sender
                .as_ref()
                .map_or(0.0, |s| s.frame_samples() as f64 / 48.0),
            voice: self.config.voice,
            echo_delay_ms,
            echo_delay_hint_ms: echo_hint,
            erle_db,
            peers,
            retired_peers: self.retired.clone(),
            listeners,
        };
        *self.stats.lock().unwrap_or_else(|p| p.into_inner()) = stats;
    }
}

#[cfg(test)]
mod tests {
    use super::{Drain, PlayoutClock, PositionUnwrap};

    /// A device taking 480 samples every 10 ms (phase 3.7 ms) and an engine that sleeps until
    /// `next_mix_ms` and wakes 0–0.4 ms late (scheduling): after the first period it mixes
    /// about `guard` ahead of each callback, the device never starves, and the engine wakes
    /// about once per period instead of polling.
    #[test]
    fn playout_clock_mixes_just_in_time_without_underruns() {
        let mut clock = PlayoutClock::new();
        let (mut queued, mut underruns) = (0usize, 0u64);
        let mut next_drain = 3.7;
        let mut drained = None;
        let mut lead_times = Vec::new();
        let mut mixed_at = None;
        let mut wakes = 0;
        let mut t = 0.0;
        let mut late = 0.0;
        while t < 2_000.0 {
            while next_drain <= t {
                if queued >= 480 {
                    queued -= 480;
                    if let Some(at) = mixed_at.take() {
                        lead_times.push(next_drain - at);
                    }
                } else {
                    underruns += 1;
                }
                drained = Some(on_time(next_drain));
                next_drain += 10.0;
            }
            wakes += 1;
            if clock.due(t, drained, queued, 10.0, underruns) && queued < 480 {
                queued += 480;
                mixed_at = Some(t);
                clock.filled(t, queued, 480, 10.0);
            }
            late = (late + 0.13) % 0.4;
            t = clock.next_mix_ms(t, 10.0).unwrap_or(t + 1.0) + late;
        }
        assert_eq!(underruns, 0);
        assert!(wakes < 2_000 / 10 + 10, "{wakes} wake-ups in 2 s");
        let steady = &lead_times[10..];
        let worst = steady.iter().copied().fold(0.0, f64::max);
        let best = steady.iter().copied().fold(f64::MAX, f64::min);
        assert!(
            best >= 3.0 - 0.41 && worst <= 3.0,
            "mixed {best:.2}..{worst:.2} ms ahead"
        );
    }

    /// The device's own callbacks run late now and then (its thread scheduled late: here one
    /// in 25 runs 7 ms late, beyond the 3 ms guard) while its clock keeps time, so the callback
    /// after a late one comes on time. The clock predicts from the device's rhythm, not from the
    /// late stamp: no underrun, and the guard never grows.
    #[test]
    fn a_late_device_callback_does_not_make_the_next_block_late() {
        let mut clock = PlayoutClock::new();
        let (mut queued, mut underruns) = (0usize, 0u64);
        let mut next_drain = 3.7;
        let mut callbacks = 0;
        let mut drained = None;
        let mut t = 0.0;
        let mut late = 0.0;
        while t < 5_000.0 {
            loop {
                // The callback for `next_drain` runs 7 ms late every 25th period.
                let runs_at = next_drain + if callbacks % 25 == 24 { 7.0 } else { 0.1 };
                if runs_at > t {
                    break;
                }
                if queued >= 480 {
                    queued -= 480;
                } else if callbacks > 0 {
                    underruns += 1;
                }
                drained = Some(Drain {
                    at_ms: runs_at,
                    position_ms: next_drain - 3.7,
                });
                next_drain += 10.0;
                callbacks += 1;
            }
            if clock.due(t, drained, queued, 10.0, underruns) && queued < 480 {
                queued += 480;
                clock.filled(t, queued, 480, 10.0);
            }
            late = (late + 0.13) % 0.4;
            t = clock.next_mix_ms(t, 10.0).unwrap_or(t + 1.0) + late;
        }
        assert!(callbacks > 450, "{callbacks} callbacks");
        assert_eq!(underruns, 0);
        assert_eq!(clock.guard_ms(), PlayoutClock::START_GUARD_MS);
    }

    /// A busy machine: the engine wakes up 0–0.4 ms late as usual, but every 300 ms one
    /// wake-up comes 22 ms late. The first stalls starve the device; the guard then grows past
    /// a period (the ring holds three) and the stalls stop being heard. The lead the clock
    /// reports (the meter's playback stage) is what the mixed blocks really waited.
    #[test]
    fn late_wake_ups_widen_the_guard_past_a_period_until_they_are_covered() {
        let mut clock = PlayoutClock::new();
        let (mut queued, mut underruns) = (0usize, 0u64);
        let mut next_drain = 3.7;
        let mut drained = None;
        // When each queued block was mixed, oldest first.
        let mut mixed: std::collections::VecDeque<f64> = Default::default();
        let mut waits = Vec::new();
        let mut underrun_times = Vec::new();
        let mut t = 0.0;
        let mut late = 0.0;
        let mut next_stall = 300.0;
        while t < 10_000.0 {
            while next_drain <= t {
                if queued >= 480 {
                    queued -= 480;
                    if let Some(at) = mixed.pop_front() {
                        waits.push((next_drain, next_drain - at));
                    }
                } else {
                    underruns += 1;
                    underrun_times.push(next_drain);
                }
                drained = Some(on_time(next_drain));
                next_drain += 10.0;
            }
            if clock.due(t, drained, queued, 10.0, underruns) {
                while queued < clock.fill_target(480, 10.0) {
                    queued += 480;
                    mixed.push_back(t);
                    clock.filled(t, queued, 480, 10.0);
                }
            }
            late = (late + 0.13) % 0.4;
            t = clock.next_mix_ms(t, 10.0).unwrap_or(t + 1.0) + late;
            if t >= next_stall {
                t += 22.0;
                next_stall += 300.0;
            }
        }
        assert!(!underrun_times.is_empty(), "the first stalls are heard");
        let late_ones = underrun_times.iter().filter(|&&at| at > 3_000.0).count();
        assert_eq!(late_ones, 0, "still underrunning: {underrun_times:?}");
        assert!(clock.guard_ms() > 10.0, "guard {}", clock.guard_ms());
        // The reported lead follows the real wait of the mixed blocks (10 % smoothing).
        let recent: Vec<f64> = waits
            .iter()
            .filter(|(at, _)| *at > 9_000.0)
            .map(|(_, w)| *w)
            .collect();
        let mean = recent.iter().sum::<f64>() / recent.len() as f64;
        assert!(
            (clock.lead_ms() - mean).abs() < 3.0,
            "lead {} vs waited {mean}",
            clock.lead_ms()
        );
    }

    /// Mouth-to-ear through the playout path, ms, before and after one 25 ms stall of the
    /// engine at 3 s: the device drains 480 samples every 10 ms, the engine mixes the next
    /// 480 samples of a media timeline per block and, with `skip`, first drops what
    /// [`PlayoutClock::missed`] says the device played as silence. Returns (before, after,
    /// samples the device missed).
    fn delay_around_a_stall(skip: bool) -> (f64, f64, u64) {
        let mut clock = PlayoutClock::new();
        let mut ring: std::collections::VecDeque<u64> = Default::default();
        let mut underruns = 0u64;
        let mut timeline = 0u64;
        let mut next_drain = 3.7;
        let mut drained = None;
        let mut delays = Vec::new();
        let mut t = 0.0;
        let mut stalled = false;
        while t < 6_000.0 {
            while next_drain <= t {
                match ring.pop_front() {
                    // The block's first sample is media time `start / 48` ms.
                    Some(start) => delays.push((next_drain, next_drain - start as f64 / 48.0)),
                    None => underruns += 480,
                }
                drained = Some(on_time(next_drain));
                next_drain += 10.0;
            }
            let missed = clock.missed(underruns);
            if skip {
                timeline += missed;
            }
            if clock.due(t, drained, ring.len() * 480, 10.0, underruns)
                && ring.len() * 480 < clock.fill_target(480, 10.0)
            {
                ring.push_back(timeline);
                timeline += 480;
                clock.filled(t, ring.len() * 480, 480, 10.0);
            }
            t = clock.next_mix_ms(t, 10.0).unwrap_or(t + 1.0) + 0.2;
            if t >= 3_000.0 && !stalled {
                t += 25.0;
                stalled = true;
            }
        }
        let at = |from: f64| delays.iter().find(|(when, _)| *when > from).map(|d| d.1);
        (at(2_000.0).unwrap(), at(5_000.0).unwrap(), underruns)
    }

    /// A stalled engine starves the device; the device's clock goes on, so the audio meant
    /// for the silence it played must go too, or everything after it plays that much later.
    #[test]
    fn a_playback_underrun_does_not_add_delay() {
        let (before, after, missed) = delay_around_a_stall(true);
        assert!(missed >= 480, "the stall starved the device");
        assert!((after - before).abs() < 0.01, "{before} ms → {after} ms");
        // Without the skip the stall's length stays in the delay.
        let (before, after, _) = delay_around_a_stall(false);
        assert!(after >= before + 10.0, "{before} ms → {after} ms");
    }

    /// A callback of the device in the tests below that takes its samples on time: the device
    /// starts at 3.7 ms, so its position is 3.7 ms behind.
    fn on_time(at_ms: f64) -> Drain {
        Drain {
            at_ms,
            position_ms: at_ms - 3.7,
        }
    }

    #[test]
    fn the_device_position_unwraps_across_its_counter() {
        let mask = (1u64 << crate::audio::POSITION_BITS) - 1;
        let mut p = PositionUnwrap::default();
        assert_eq!(p.unwrap(mask - 100), 0);
        assert_eq!(p.unwrap(380), 481);
        assert_eq!(p.unwrap(860), 961);
        // A stamp from behind (an ending stream's) holds the position.
        assert_eq!(p.unwrap(380), 961);
        assert_eq!(p.unwrap(860), 1441);
    }

    #[test]
    fn underruns_widen_the_guard() {
        let mut clock = PlayoutClock::new();
        clock.due(0.0, None, 480, 10.0, 0);
        clock.due(1.0, Some(on_time(0.5)), 0, 10.0, 0);
        let before = clock.guard_ms();
        clock.due(12.0, Some(on_time(10.5)), 0, 10.0, 1);
        assert_eq!(clock.guard_ms(), before * 1.5 + 1.0);
    }
}
