//! Adaptive jitter buffer in the manner of WebRTC NetEq: a sans-IO state machine, one per
//! remote sender.
//!
//! Packets go in with their arrival time ([`JitterBuffer::insert`]); audio comes out in whatever
//! block size playback asks for ([`JitterBuffer::pull`]). Time is passed in as milliseconds
//! (`f64`), never read, so tests run simulated networks deterministically and fast. Decoding is
//! behind [`Decode`] so tests use a fake codec.
//!
//! # How much to buffer
//!
//! The delay manager (`delay.rs`) measures each packet's arrival delay relative to the fastest
//! packet of the last 10 s and keeps a forgetting histogram of half-second maxima; the *target*
//! is its 95th percentile (5 ms buckets), raised to recurring delay peaks, and while packets are
//! being lost at least one frame above a single packet's usual (95th percentile) lateness, so that
//! the next packet's in-band FEC is here in time (FEC look-ahead).
//!
//! The controlled quantity is the *playout offset*: how long after a packet that met no queueing
//! at all (arrival = fastest transit + media time) its audio is played. It is computed at every
//! pull from the filtered pull clock, the RTP timestamp of the next sample to be played and the
//! fastest transit — it does not saw-tooth with packet arrivals the way a buffer level does, so
//! it needs no smoothing and no frame-sized hysteresis, and it is independent of frame size. A
//! packet whose relative delay is `d` waits `offset − d`; it is needed at the start of the pull
//! whose block holds its first sample, up to one block early. Not knowing where frame starts fall
//! in the pull blocks, the offset would have to be kept in `[target + block, target + block +
//! hysteresis]`: that is what the buffer does until it has learned the pull phase (the first two
//! seconds of histogram, or with [`JitterConfig::align_to_pulls`] off).
//!
//! # Aligning frames with pull blocks (the pull phase)
//!
//! On a stable call the phase between packet arrivals and the pull schedule is constant (same
//! clocks, fixed sender frame boundaries), so the whole-block allowance is mostly wasted: a frame
//! that arrives 3 ms before a pull needs 3 ms, not 10. `phase.rs` learns it. For every frame
//! whose first sample is handed out it looks back along the recent pulls (their real times and
//! first output samples: pulls need not be evenly spaced) for the earliest pull that is at least
//! `target` after the frame's zero-delay arrival (and after its actual arrival), and turns that
//! into a requirement on the *alignment* `Z` = output sample index − RTP timestamp: `Z ≥ R`
//! puts the frame's first sample at or after the start of that pull's block. `Z` changes only by
//! time-stretching and waiting and is exact, `R` is an integer held for ~0.5 s (rising at once),
//! so the controller keeps `Z − R` in `[0, phase_band]` (2.5 ms, the smallest accelerate step)
//! without hunting: accelerate never takes it below 0, expand (when `R` rises) may overshoot by
//! a pitch period and is trimmed back. In the steady state every frame's first sample is the
//! first sample of a block, handed out at the first pull `target` after the frame's zero-delay
//! arrival, and the measured delay is
//!
//! ```text
//! target + phase + (Z − R),    phase = wait from (zero-delay arrival + target) to the next pull ∈ [0, 10) ms
//! ```
//!
//! instead of `target + block + [0, hysteresis]`. The phase term is physics, not slack: a frame
//! cannot be handed out before the first pull after it arrives, and the pull schedule belongs to
//! the playback device (only an engine that moved its pulls could remove it). On a clean
//! loopback path (target 5 ms) this gives 5–15 ms depending on the phase, ~10 ms less than the
//! block setpoint at every phase; see the tests for numbers.
//!
//! The phase follows everything that moves it: clock skew drifts it through a whole block every
//! 50 s at 200 ppm (then `R` steps by a block and one 10 ms stretch follows — the same net
//! stretching as before), a change of the sender's frame size or of the path shifts the zero-delay
//! arrival (the requirement rises at once; a fall waits out the hold), and across a DTX pause the
//! requirement is kept, since the sender's frame grid continues. Robustness is kept two ways: the
//! requirement also includes every recent frame's *actual* arrival (~100 ms memory — the guard
//! against a path that has just become slower while the transit window still remembers it
//! faster, which the buffer-level check used to provide), and on a jittery path (target above
//! 10 ms) a guard of up to half a block is added to the margin, which is about what the block
//! setpoint gave such paths on average by luck of phase, so their late loss is unchanged.
//!
//! # How the offset changes
//!
//! Only by time-scale modification (`stretch.rs`): accelerate (remove one pitch period, WSOLA)
//! above the band, pre-emptive expand (repeat one) below it, at most one operation per 50 ms; in
//! low-energy audio and in pauses larger chunks go for free.
//!
//! *Where* an excess is accelerated matters as much: shortening inside a word is what listeners
//! hear as warble (real calls used to accelerate the start-up target's excess away during the
//! first 2–3 s of speech). So an excess waits for a quiet moment — audio below −15 dB of the
//! recent speech level, i.e. the gaps between words, unvoiced tails and pauses — and is removed
//! there; sound is shortened only when the excess is urgent (> 80 ms), has found no gap for
//! [`JitterConfig::in_sound_wait_ms`] (continuous sound must not keep delay) or right after a
//! re-buffer (an audible break already). Expansion (the buffer running low) does not wait: a
//! late packet would cost a concealment, which is worse than a repeated pitch period. Before the pull phase is learned, an
//! acceleration never takes the *actually buffered* audio (the low point of its saw-tooth over
//! the last frame) below the setpoint: right after the path has become slower, the offset —
//! measured against the fastest packet of a 10 s window that still remembers the faster path —
//! overstates the margin of the packets now arriving (once learned, the requirement's actual
//! arrivals play this part). A stretch attempt needs decoded look-ahead; an aligned buffer
//! holds little beyond the next block, so a failed search is retried as soon as there is more
//! decoded audio to search, not only after the retry interval, which with 20 ms frames would
//! always land in the same, short, phase of the frame cycle.
//!
//! When the network delivers late, the buffer *waits*: it conceals (Opus PLC) without advancing
//! the timeline, so a late packet is still played — the offset grows by exactly the lateness —
//! and the surplus is accelerated away once the histogram says it is not needed. If the late
//! packet turns out lost, the concealment already played counts against its slot. Sender and
//! receiver clock skew shows up as a slow drift of the offset (0.2 ms/s at 200 ppm) and is
//! absorbed by the same loop.
//!
//! # Missing audio
//!
//! A lost packet (sequence gap) is recovered when the packet after the gap is here by the time
//! the lost one is due: the last lost frame from that packet's in-band FEC (if the packet
//! carries FEC and the slot is untouched), the earlier ones — and the last one without FEC —
//! from its deep redundancy (Opus DRED: up to ~1 s of past audio at a low bitrate), as far back
//! as that reaches, one slot at a time in timeline order (so no frame plays twice or out of
//! order); the rest is concealed (deep PLC). Concealment played while waiting for the packet
//! cannot be taken back: only what has not been played yet is recovered, including the rest of
//! a slot that waiting concealment had begun (DRED decodes at any offset, FEC only whole
//! frames). The buffer does not add delay to wait for redundancy: what is recovered is what its
//! jitter margin (with the FEC look-ahead while losses are recent) lets arrive in time.
//!
//! A timestamp gap with consecutive sequence numbers is a pause (DTX, mute): not a loss, no PLC.
//! Our sender transmits only the first DTX frame of a pause (and one after each of libopus's
//! comfort-noise updates), nothing while muted, so the pause's length is only *known* once
//! speech resumes; until then the buffer runs dry. If the last frame was a DTX frame (≤ 2 bytes:
//! the sender's word that it paused; a sender that sends none, or whose DTX frame was lost,
//! leaves only the level to go by) or the last 150 ms
//! were quiet (below −45 dBFS — libopus stops sending only after its VAD saw 200 ms of
//! inactivity; a shorter quiet spell is soft speech), running dry is
//! taken for a pause: silence, the timeline keeps moving, and a first packet that turns up later
//! than the timeline expected just lengthens the pause (with a setpoint of silence in front of
//! it, since it shows the path is slower than the window knows). After loud audio it is taken
//! for a loss: concealment while waiting, as above. A pause announced by a DTX frame plays the
//! sender's comfort noise instead of silence for its first second (libopus continues the noise
//! its DTX frame began: [`Decode::comfort_noise`]); silence in place of the talker's background
//! between words sounds like a cut line, and in a real call it cost the voice with the most
//! such gaps ~0.13 PESQ-WB. Skipping or adding audio in a pause skips or adds that noise.
//!
//! When real audio follows concealment, its first 2.5 ms are crossfaded with a continuation of
//! the concealment (merge) — unless the codec makes that transition smooth itself, as libopus
//! does ([`Decode::continues_after_conceal`]): asking it for a continuation would conceal past
//! the loss. After silence it fades in. Concealment while waiting comes in whole 10 ms pieces,
//! since Opus PLC called in other sizes sounds worse. After 100 ms of consecutive concealment
//! the buffer fades to silence (Opus PLC turns into a buzz beyond that); if nothing is buffered
//! it re-buffers, restarting at the setpoint offset with the newest packets instead of replaying
//! stale ones, so an outage never turns into delay.
//!
//! A sender that switches to a longer frame holds the first sample of each packet back by the
//! difference: at 20 → 60 ms there is a 40 ms hole in arrivals that can only be concealed. The
//! transit window restarts at every frame-size change so that the jump is not mistaken for
//! jitter.
//!
//! # Delay reporting
//!
//! [`JitterStats::delay_ms`] is *measured*: for every decoded frame, the time from its arrival
//! to the moment its first sample is handed out (pull time + offset in the block), averaged with
//! a 250 ms time constant. Together with the playback ring it is what the latency meter adds up.

mod buffer;
mod delay;
mod phase;
pub mod sim;
mod stretch;
mod sync;
#[cfg(test)]
mod tests;

use buffer::{Inserted, PacketBuffer, SeqHistory, unwrap_seq, unwrap_ts};
use delay::{DelayManager, DelayParams};
use phase::PhaseLearner;
use stretch::{MAX_LAG, MIN_LAG, PitchSearch};
use sync::SyncBuffer;

/// The codec operations the buffer needs.
pub trait Decode {
    /// Decodes one packet, appending its samples to `out`.
    fn decode(&mut self, payload: &[u8], out: &mut Vec<f32>) -> Result<(), DecodeError>;
    /// Recovers the frame before `next_payload` from its in-band FEC, appending `samples`.
    fn decode_fec(
        &mut self,
        next_payload: &[u8],
        samples: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), DecodeError>;
    /// Recovers `samples` of lost audio that start `offset` samples before `next_payload`'s
    /// first sample from the deep redundancy the packet carries (Opus DRED), appending them; an
    /// error when the packet carries none reaching that far back. Calls for one gap come in
    /// timeline order (falling `offset`) and continue the decoder's state like concealment
    /// does. A codec without such redundancy (the default) always declines.
    fn decode_redundancy(
        &mut self,
        _next_payload: &[u8],
        _offset: usize,
        _samples: usize,
        _out: &mut Vec<f32>,
    ) -> Result<(), DecodeError> {
        Err(DecodeError)
    }
    /// Whether `next_payload` carries deep redundancy reaching `offset` samples back (what
    /// [`Self::decode_redundancy`] would recover from). The burst look-ahead waits only for a
    /// stream that does; the default (no redundancy) says no.
    fn carries_redundancy(&mut self, _next_payload: &[u8], _offset: usize) -> bool {
        false
    }
    /// Conceals `samples` of missing audio (packet loss concealment), appending them.
    fn conceal(&mut self, samples: usize, out: &mut Vec<f32>);
    /// Continues the comfort noise of a pause the sender announced with a DTX frame,
    /// appending `samples` (a multiple of 2.5 ms) and returning true; false (the default) for
    /// a codec that has none, whose pauses are silence. It must continue smoothly into the
    /// next decoded packet, as [`Self::continues_after_conceal`] says of concealment.
    fn comfort_noise(&mut self, _samples: usize, _out: &mut Vec<f32>) -> bool {
        false
    }
    /// Whether decoding after concealment continues the concealed signal smoothly by itself.
    /// If not (the default), the buffer conceals one more quantum before decoding and crossfades
    /// the decoded audio from it (merge).
    fn continues_after_conceal(&self) -> bool {
        false
    }
}

/// A packet the codec could not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError;

/// RTP clock and output rate of Opus (RFC 7587): 48 kHz.
const SAMPLES_PER_MS: f64 = 48.0;
/// Opus conceals and recovers in multiples of 2.5 ms.
const QUANTUM: usize = 120;
/// The longest Opus packet: 120 ms.
const MAX_FRAME: usize = 5_760;
/// Concealment while waiting comes in pieces of 10 ms (see `run_dry`).
const PLC_PIECE: usize = 480;
/// Merge crossfade and fade-in/out length: 2.5 ms (what one PLC quantum provides).
const FADE: usize = QUANTUM;
/// Pull-clock smoothing per pull (~200 ms at 10 ms pulls): absorbs the engine pulling several
/// blocks at one instant.
const CLOCK_ALPHA: f64 = 0.05;
/// A pull-clock jump larger than this (an engine stall) resets the filter.
const CLOCK_RESET_MS: f64 = 50.0;
/// After a stretch attempt that found no suitable period, wait this long before trying again.
const STRETCH_RETRY_MS: f64 = 20.0;
/// Periodicity required to stretch by one pitch period.
const MIN_CORRELATION: f32 = 0.7;
/// Beyond this excess (or deficit), stretch even unvoiced audio and, when accelerating, remove
/// up to four periods at once ("fast accelerate").
const URGENT_MS: f64 = 40.0;
/// Largest chunk removed or repeated in silence: 100 ms.
const MAX_SILENCE_STRETCH: usize = 4_800;
/// Decoded look-ahead wanted before stretching: two of the longest pitch periods.
const LOOKAHEAD: usize = 2 * MAX_LAG;
/// Mean square of decoded audio below which running dry afterwards is taken for a DTX pause
/// (−45 dBFS) — if it has been that quiet for [`QUIET_BEFORE_PAUSE`]: libopus stops transmitting
/// only after its VAD has seen 10 frames (200 ms) of inactivity, so the audio before a pause is
/// background noise; concealing it would be noise too, and treating the gap as a pause keeps the
/// timeline (no PLC, no re-buffer) if it was one.
const DTX_POWER: f32 = 3e-5;
/// How long decoded audio must have been below [`DTX_POWER`] for running dry to be taken for a
/// pause: 150 ms, somewhat less than libopus's 200 ms of inactivity before DTX. A shorter quiet
/// spell is soft speech, and a gap after it a loss (taking it for a pause played silence instead
/// of concealment in the bench's speech, which dips to −45 dBFS between syllables).
const QUIET_BEFORE_PAUSE: usize = 7_200;
/// How long a pause announced by a DTX frame plays the sender's comfort noise (counted from the
/// start of the quiet, [`QUIET_BEFORE_PAUSE`]'s run): 1 s, then silence. Comfort noise bridges
/// the gaps between words and sentences, where silence in place of the talker's background
/// sounds like a line cut off (and cost a real call's quiet-backed voice ~0.13 PESQ-WB); past a
/// second nobody hears a −60 dBFS floor end, and a silent participant then costs no decoding.
const COMFORT_NOISE_FOR: usize = 48_000;
/// Accelerating inside speech is what listeners hear as warble, so an excess is removed where
/// the audio is quiet: the audio about to be shortened must be below this share of the recent
/// speech level (−15 dB: the gaps between words and syllables, unvoiced tails) — unless it is
/// urgent or has waited [`JitterConfig::in_sound_wait_ms`] for a quiet moment.
const QUIET_SHARE: f32 = 0.03;
/// Time constant of the decay of the recent speech level (its peak frame power), ms: a sentence
/// spoken more softly than the last still has its own gaps found within a few seconds.
const SPEECH_LEVEL_TAU_MS: f32 = 1_000.0;
/// An excess this large (ms above the band) is accelerated in sound at once: waiting for a gap
/// would cost more than the stretch. Above the start-up excess on a clean path (the initial
/// target's 40 ms less what the path needs, plus the band), so a stream that starts with speech
/// converges in its first pause.
const IN_SOUND_URGENT_MS: f64 = 80.0;
/// After a re-buffer, how long the restarted playout may be stretched in sound freely, ms: the
/// restart is an audible break already, and a fine correction right after it is masked by it.
const AFTER_REBUFFER_MS: f64 = 1_000.0;
/// Most stretch, concealment and re-buffer events kept for [`JitterBuffer::drain_events`]
/// between two drains; older ones are dropped (and counted).
const MAX_EVENTS: usize = 64;
/// A packet whose transit differs from the window's fastest by more than this belongs to a new
/// timeline (the sender restarted its clock): start over.
const DISCONTINUITY_MS: f64 = 10_000.0;
/// Pull-time buffer levels remembered: enough for the longest frame (120 ms) at 10 ms pulls.
const LEVELS: usize = 16;
/// Time constant of the measured-delay average: short enough that the latency meter follows a
/// change of the buffer's delay within a second (4 τ, measured against chirps in the e2e test
/// `latency_stages_add_up_to_the_measured_latency`), long enough to smooth per-packet arrival
/// jitter for a calm display.
const DELAY_TAU_MS: f64 = 250.0;
/// Interval maxima the histogram must have seen (2 s) before the buffer trusts its target
/// enough to give up the block setpoint's spare: the first intervals of a call may not have
/// met the path's jitter yet.
const ALIGN_AFTER_INTERVALS: u64 = 4;

/// Tuning. The defaults follow NetEq where it has an answer.
#[derive(Debug, Clone)]
pub struct JitterConfig {
    /// Floor of the target (jitter margin), ms.
    pub min_target_ms: f64,
    /// Ceiling of the target, ms.
    pub max_target_ms: f64,
    /// Target before the first half-second of measurements, ms. NetEq starts at 80; the first
    /// histogram insertion replaces it completely, so it only sets the start-up delay, and 40 ms
    /// covers typical Internet jitter while the first measurements come in. Where the path's
    /// spread is known, the start is lower ([`Self::start_target_ms`]); this is its ceiling.
    pub initial_target_ms: f64,
    /// How many times the path's measured spread a new stream's start target covers (above
    /// [`CLEAN_START_MS`]). The spread of 8–16 delays (second-highest less lowest) is one to
    /// two standard deviations of a jittery path's delay, while the target covers the 95th
    /// percentile of half-second maxima, about four: on `natter-netem`'s 12 ms Gaussian path
    /// the relay measured a talker's uplink spread of 14 ms, and the target was 45 ms after the
    /// first half-second. A factor of 1 started such streams at 24 ms, below the path's need,
    /// and the buffer then had to expand inside the first sentence (docs/BENCHMARKS.md).
    pub start_spread_factor: f64,
    /// Histogram bucket width, ms (see `delay.rs` for why 5 and not NetEq's 20).
    pub bucket_ms: f64,
    /// Quantile of the interval maxima the target covers.
    pub quantile: f64,
    /// Histogram forgetting factor per interval.
    pub forget_factor: f64,
    /// Interval whose maximum relative delay goes into the histogram, ms.
    pub interval_ms: f64,
    /// Window of the fastest packet that relative delays are measured against, ms. Longer than
    /// NetEq's 2 s so that the playout point does not wander with the minimum of a jittery
    /// path (see `delay.rs`).
    pub window_ms: f64,
    /// An interval maximum this far above the histogram target is a peak, ms.
    pub peak_threshold_ms: f64,
    /// Two peaks within this time hold the target at the highest, ms.
    pub peak_memory_ms: f64,
    /// Width of the band above `target + block` the playout offset may wander in before the
    /// pull phase is learned, ms; also how far above the setpoint an expansion may land. At
    /// least a typical pitch period (male voices ~8–10 ms), since that is the step accelerate
    /// and expand change the offset by; smaller makes them oscillate.
    pub hysteresis_ms: f64,
    /// Learn the phase between packet arrivals and the pull schedule and keep only the part of a
    /// pull block that the phase needs (see the module docs), instead of a whole block.
    pub align_to_pulls: bool,
    /// Once the phase is learned: how far the alignment may sit above what the recent frames
    /// require before it is accelerated, ms. Accelerate never goes below the requirement, so
    /// this can be small; 2.5 ms is the smallest step accelerate can take (in silence, or one
    /// period of a high voice).
    pub phase_band_ms: f64,
    /// Targets up to this (ms) are aligned with nothing on top: a clean or lightly jittered
    /// path, whose interval maxima the 5 ms buckets already round up generously.
    pub phase_guard_from_ms: f64,
    /// Above [`Self::phase_guard_from_ms`] the aligned requirement gets a guard growing 1:1
    /// with the target up to this (ms). On a jittery path the 95th percentile leaves a real
    /// tail, which the block setpoint covered by luck of phase (its frames had on average half
    /// a block to spare); the guard keeps that, so late loss there is not traded for delay.
    pub phase_guard_max_ms: f64,
    /// At most one accelerate or expand per this interval, ms.
    pub min_stretch_interval_ms: f64,
    /// How long an excess above the band waits for a quiet moment (a gap between words) before
    /// it is accelerated inside sound anyway, ms: a long run of continuous sound (music, a
    /// talker who never pauses) must not keep extra delay. Shortening inside a word is what
    /// listeners hear as warble; real speech has a gap every second or two.
    pub in_sound_wait_ms: f64,
    /// Consecutive concealment before fading to silence (and re-buffering when dry), ms.
    /// Concealment longer than a few pitch periods sounds synthetic; NetEq fades out over a
    /// similar span.
    pub max_expand_ms: f64,
    /// While losses are recent, keep the target at least one frame above the usual lateness of
    /// a single packet ([`Self::fec_quantile`]), so that the packet after a lost one (whose
    /// in-band FEC recovers it) is usually here when the lost one is due: it arrives one frame
    /// after the lost one *and* is subject to the same jitter. A floor, not an addition to the
    /// jitter margin: that margin covers the half-second *maxima*, which already exceed a frame
    /// plus a typical packet's delay on a jittery path (adding a frame there paid for FEC twice:
    /// 66–76 ms against 46 ms under 40 ms bursty jitter, for no measurable gain). On a clean
    /// path it costs one frame of delay; it buys FEC for ~95 % of isolated losses instead of
    /// ~10 % (see the tests), which is worth ~1 PESQ point at 5 % loss.
    pub fec_lookahead: bool,
    /// Quantile of single packets' relative delays the FEC look-ahead covers.
    pub fec_quantile: f64,
    /// While bursts (two or more consecutive packets lost, the packet after them carrying deep
    /// redundancy that reaches back over two frames) are recent, this many frames of
    /// look-ahead on top of the FEC look-ahead's one, so that the packet after a burst is
    /// here while that many more of the burst's frames are still unplayed and its deep
    /// redundancy (DRED) can recover them. Each frame costs its length in delay on a bursty
    /// path whose sender protects with DRED, and nothing elsewhere. 2 (40 ms more at 20 ms
    /// frames, for as long as [`Self::loss_memory_ms`] after the last such burst): measured
    /// with DRED in place of FEC on Gilbert-Elliott loss, one frame left DRED behind FEC
    /// mid-call, two put it ahead at mean bursts of 3 and 5 (docs/BENCHMARKS.md, "the
    /// look-ahead trade").
    pub burst_lookahead_frames: u8,
    /// How long a loss counts as recent, ms.
    pub loss_memory_ms: f64,
    /// Packets held at most; beyond, the oldest is discarded.
    pub max_packets: usize,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            min_target_ms: 0.0,
            max_target_ms: 500.0,
            initial_target_ms: 40.0,
            start_spread_factor: 3.0,
            bucket_ms: 5.0,
            quantile: 0.95,
            forget_factor: 0.983,
            interval_ms: 500.0,
            window_ms: 10_000.0,
            peak_threshold_ms: 20.0,
            peak_memory_ms: 10_000.0,
            hysteresis_ms: 10.0,
            align_to_pulls: true,
            phase_band_ms: 2.5,
            phase_guard_from_ms: 10.0,
            phase_guard_max_ms: 5.0,
            min_stretch_interval_ms: 50.0,
            in_sound_wait_ms: 3_000.0,
            max_expand_ms: 100.0,
            fec_lookahead: true,
            fec_quantile: 0.95,
            burst_lookahead_frames: 2,
            loss_memory_ms: 10_000.0,
            max_packets: 400,
        }
    }
}

/// Start-up target on a path whose round trip to the relay does not vary, ms: about what the
/// buffer settles at on such a path (one or two 5 ms buckets), so that a stream that starts
/// with speech has no excess to remove inside its first sentence (the simulator's clean start,
/// voice A: PESQ-WB 4.48 from 10 ms against 4.36 from 40; docs/BENCHMARKS.md, session 9).
pub const CLEAN_START_MS: f64 = 10.0;

impl JitterConfig {
    /// Where a new stream's target starts, given the spread of the path it crosses when one
    /// is known (`transport::path_spread`: our round trip's and the talker's uplink's):
    /// [`CLEAN_START_MS`] plus [`Self::start_spread_factor`] times the spread, at most
    /// [`Self::initial_target_ms`] (which is also the start when nothing is known), and within
    /// the target's range (a fixed target starts where it is fixed). The round trip covers both
    /// directions of our own path, so it overstates the downlink's jitter rather than miss it.
    pub fn start_target_ms(&self, spread_ms: Option<f64>) -> f64 {
        let start = match spread_ms {
            Some(spread) if spread.is_finite() => (CLEAN_START_MS
                + self.start_spread_factor * spread.max(0.0))
            .min(self.initial_target_ms),
            _ => self.initial_target_ms,
        };
        start.clamp(self.min_target_ms, self.max_target_ms)
    }

    fn delay_params(&self) -> DelayParams {
        DelayParams {
            bucket_ms: self.bucket_ms,
            forget_factor: self.forget_factor,
            quantile: self.quantile,
            interval_ms: self.interval_ms,
            window_ms: self.window_ms,
            initial_ms: self.initial_target_ms,
            min_ms: self.min_target_ms,
            max_ms: self.max_target_ms,
            peak_threshold_ms: self.peak_threshold_ms,
            peak_memory_ms: self.peak_memory_ms,
            stall_ms: self.max_expand_ms,
        }
    }
}

/// Counters and current delay, for stats and the latency meter.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct JitterStats {
    /// Packets accepted (not duplicates, not late).
    pub received: u64,
    /// Arrived after their playout time had passed (their slot was concealed or skipped), or
    /// were left behind when playout restarted after a re-buffer.
    pub late: u64,
    pub duplicates: u64,
    /// Frames concealed by PLC (lost, late or undecodable), in frames: each run of concealment
    /// counts one per started frame length.
    pub concealed: u64,
    /// Concealment played, ms.
    pub concealed_ms: f64,
    /// Frames recovered from the next packet's FEC.
    pub fec_recovered: u64,
    /// Frames recovered from a later packet's deep redundancy (DRED): whole slots, or what
    /// concealment played while waiting had left of one.
    pub dred_recovered: u64,
    /// Times the buffer ran dry for longer than `max_expand_ms`, faded out and re-buffered.
    pub rebuffers: u64,
    /// Packets dropped because the buffer was full.
    pub discarded: u64,
    /// Accelerate operations (including silence skipped in pauses) and the audio they removed.
    pub accelerations: u64,
    pub accelerated_ms: f64,
    /// Pre-emptive expand operations (including silence added in pauses) and the audio added.
    pub expansions: u64,
    pub expanded_ms: f64,
    /// Measured playout delay: arrival of a frame to the output of its first sample, ms,
    /// averaged over ~1 s.
    pub delay_ms: f64,
    /// Audio buffered (decoded and not played + undecoded packets), ms, at the last pull.
    pub buffered_ms: f64,
    /// The jitter margin aimed for (histogram, peaks and FEC look-ahead), ms. Each frame is
    /// handed out at the first pull at least this long after its zero-delay arrival (once the
    /// pull phase is learned; before, the playout offset is kept a whole pull block above it).
    pub target_ms: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Waiting until the offset would reach the target (start, or after running dry).
    Buffering,
    Playing,
}

/// What the last samples appended to the sync buffer were: decides merges and fades.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tail {
    Silence,
    /// A pause's comfort noise (see [`Decode::comfort_noise`]).
    Noise,
    Audio,
    Plc,
}

/// Something the buffer did to the timeline, for logs that explain a bad recording.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterEvent {
    /// Pull time at which it happened, ms (the time passed to [`JitterBuffer::pull`]).
    pub at_ms: f64,
    pub kind: EventKind,
    /// Audio removed, added or concealed, ms.
    pub ms: f64,
}

/// Kinds of [`JitterEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum EventKind {
    /// Audio removed: a pitch period (or more, when urgent) of sound, or silence.
    Accelerate { in_sound: bool },
    /// Audio added.
    Expand { in_sound: bool },
    /// A missing packet's slot played from concealment.
    Conceal,
    /// A missing packet recovered from the next packet's FEC.
    FecRecovered,
    /// A missing packet (or the rest of its slot) recovered from a later packet's DRED.
    DredRecovered,
    /// Ran dry for too long: faded out, playout restarts at the setpoint.
    Rebuffer,
    /// Audio dropped because the playback device played silence in its place (the engine was
    /// late; see [`JitterBuffer::skip`]).
    Skip,
    /// The jitter margin aimed for changed; `ms` is the new target. With the requirement
    /// below, it says why the delay stood where it did between stretches.
    Target,
    /// The alignment the recent frames require (pull phase plus margin) changed; `ms` is the
    /// new requirement, in ms of output (see `phase.rs`).
    Required,
}

/// The jitter buffer for one sender.
#[derive(Debug)]
pub struct JitterBuffer<D> {
    config: JitterConfig,
    decoder: D,
    packets: PacketBuffer,
    sync: SyncBuffer,
    delay: DelayManager,
    phase: PhaseLearner,
    pitch: PitchSearch,
    /// Decoder output before it goes into the sync buffer.
    scratch: Vec<f32>,
    /// Concealment continuation that decoded audio is crossfaded from after a loss.
    merge: Vec<f32>,
    history: SeqHistory,
    highest_seq: Option<u64>,
    highest_ts: Option<u64>,
    mode: Mode,
    /// Extended RTP timestamp of the next sample to decode (the end of the decoded timeline).
    playout_ts: Option<u64>,
    /// Sequence number of the last slot consumed (decoded, recovered or concealed).
    last_seq: Option<u64>,
    /// Samples in the last decoded frame.
    last_frame: usize,
    tail: Tail,
    /// The last decoded packet was a DTX frame (≤ 2 bytes) or the audio has been quiet for
    /// [`QUIET_BEFORE_PAUSE`]: running dry means
    /// a pause, not a loss. Our sender sends the first DTX frame of a pause (engine/send.rs),
    /// and the pause's length shows as a timestamp jump with consecutive sequence numbers once
    /// speech resumes.
    dtx: bool,
    /// The last decoded packet was a DTX frame: the sender announced a pause, whose comfort
    /// noise the decoder can continue ([`Decode::comfort_noise`]).
    comfort: bool,
    /// Decoded audio (and comfort noise) in a row below [`DTX_POWER`] (whole frames), samples.
    quiet_run: usize,
    /// Where the current DTX silence started, while the buffer plays one.
    dtx_from: Option<u64>,
    /// Concealment played while waiting, not yet set against a slot: the timeline did not
    /// advance for it.
    credit: usize,
    /// Consecutive concealment, samples.
    plc_run: usize,
    /// What is left of a missing packet's slot that waiting concealment partly covered (no FEC
    /// for it: the decoder has moved past its start).
    slot_left: Option<usize>,
    /// Filtered (pull time − played time), ms.
    clock: Option<f64>,
    played_total: u64,
    block: usize,
    last_stretch_ms: f64,
    last_try_ms: f64,
    /// Decoded audio available at the last stretch attempt.
    last_try_ahead: usize,
    last_loss_ms: Option<f64>,
    /// When the last burst (two or more consecutive losses) was filled.
    last_burst_ms: Option<f64>,
    /// (time, level) at the last pulls, for [`Self::removable`].
    levels: [(f64, usize); LEVELS],
    next_level: usize,
    delay_avg: Option<f64>,
    last_mark_ms: f64,
    /// Peak power of recently decoded frames, decaying with [`SPEECH_LEVEL_TAU_MS`].
    speech_power: f32,
    /// Since when the playout has been above its band (waiting for a quiet moment).
    excess_since_ms: Option<f64>,
    /// A re-buffer happened and playout has not restarted yet.
    restarting: bool,
    /// Until when stretching in sound is free after a restart ([`AFTER_REBUFFER_MS`]).
    free_stretch_until_ms: f64,
    /// Pull time of the current pull, for event stamps.
    now_ms: f64,
    /// Events since the last drain (preallocated, at most [`MAX_EVENTS`]).
    events: Vec<JitterEvent>,
    /// The target and requirement last logged ([`Self::note_setpoint`]).
    noted_target: Option<f64>,
    noted_required: Option<i64>,
    /// Events dropped because nobody drained them in time.
    pub events_dropped: u64,
    stats: JitterStats,
}

impl<D: Decode> JitterBuffer<D> {
    pub fn new(config: JitterConfig, decoder: D) -> Self {
        Self {
            packets: PacketBuffer::new(config.max_packets),
            sync: SyncBuffer::with_capacity(32_768),
            delay: DelayManager::new(config.delay_params()),
            phase: PhaseLearner::new(),
            pitch: PitchSearch::new(),
            scratch: Vec::with_capacity(MAX_FRAME + QUANTUM),
            merge: Vec::with_capacity(QUANTUM),
            history: SeqHistory::default(),
            highest_seq: None,
            highest_ts: None,
            mode: Mode::Buffering,
            playout_ts: None,
            last_seq: None,
            last_frame: 960,
            tail: Tail::Silence,
            dtx: false,
            comfort: false,
            quiet_run: 0,
            dtx_from: None,
            credit: 0,
            plc_run: 0,
            slot_left: None,
            clock: None,
            played_total: 0,
            block: 480,
            last_stretch_ms: f64::NEG_INFINITY,
            last_try_ms: f64::NEG_INFINITY,
            last_try_ahead: 0,
            last_loss_ms: None,
            last_burst_ms: None,
            levels: [(f64::NEG_INFINITY, 0); LEVELS],
            next_level: 0,
            delay_avg: None,
            last_mark_ms: 0.0,
            speech_power: 0.0,
            excess_since_ms: None,
            restarting: false,
            free_stretch_until_ms: f64::NEG_INFINITY,
            now_ms: 0.0,
            events: Vec::with_capacity(MAX_EVENTS),
            noted_target: None,
            noted_required: None,
            events_dropped: 0,
            stats: JitterStats::default(),
            config,
            decoder,
        }
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Hands out (and forgets) what the buffer did since the last call: every stretch,
    /// concealment, FEC recovery and re-buffer with its time, so that a recording can be
    /// explained afterwards (the engine logs them at debug level).
    pub fn drain_events(&mut self, mut f: impl FnMut(JitterEvent)) {
        for e in self.events.drain(..) {
            f(e);
        }
    }

    fn event(&mut self, kind: EventKind, samples: usize) {
        self.event_ms(kind, samples as f64 / SAMPLES_PER_MS);
    }

    fn event_ms(&mut self, kind: EventKind, ms: f64) {
        if self.events.len() >= MAX_EVENTS {
            self.events_dropped += 1;
            return;
        }
        self.events.push(JitterEvent {
            at_ms: self.now_ms,
            kind,
            ms,
        });
    }

    /// Logs the target and the requirement when they change (they move in steps: 5 ms
    /// buckets, whole pull blocks), so a recording whose delay stood high can be explained.
    fn note_setpoint(&mut self, now_ms: f64) {
        let target = self.target_ms(now_ms);
        if self.noted_target != Some(target) {
            self.noted_target = Some(target);
            self.event_ms(EventKind::Target, target);
        }
        let required = self.required(now_ms);
        if let Some(r) = required
            && self.noted_required != required
        {
            self.noted_required = required;
            self.event_ms(EventKind::Required, r as f64 / SAMPLES_PER_MS);
        }
    }

    /// Changes the target's limits live, e.g. when the user switches between an automatic
    /// and a fixed delay: the buffer moves to the new target by stretching (expand or
    /// accelerate), as it would for a change of the network — no restart, no gap.
    pub fn set_target_range(&mut self, min_ms: f64, max_ms: f64) {
        self.config.min_target_ms = min_ms;
        self.config.max_target_ms = max_ms;
        self.delay.set_limits(min_ms, max_ms);
    }

    /// A packet arrived at `now_ms` with RTP sequence number `seq` and timestamp `ts` (48 kHz).
    pub fn insert(&mut self, seq: u16, ts: u32, payload: &[u8], now_ms: f64) {
        let mut ext_seq = unwrap_seq(seq, self.highest_seq);
        let mut ext_ts = unwrap_ts(ts, self.highest_ts);
        if let Some(base) = self.delay.base() {
            let transit = now_ms - ext_ts as f64 / SAMPLES_PER_MS;
            if (transit - base).abs() > DISCONTINUITY_MS {
                self.restart_stream();
                ext_seq = unwrap_seq(seq, None);
                ext_ts = unwrap_ts(ts, None);
            }
        }
        let behind = self.playout_ts.is_some_and(|p| ext_ts < p);
        if self.packets.contains_ts(ext_ts) || (behind && self.history.contains(ext_seq)) {
            self.stats.duplicates += 1;
            return;
        }
        if self.highest_seq.is_none_or(|h| ext_seq > h) {
            self.highest_seq = Some(ext_seq);
        }
        if self.highest_ts.is_none_or(|h| ext_ts > h) {
            self.highest_ts = Some(ext_ts);
        }
        self.delay.on_packet(now_ms, ext_ts as f64 / SAMPLES_PER_MS);
        if behind {
            // The first packet after a pause arrived later than the pause's timeline expected.
            match self.dtx_from {
                // It continues the stream where the silence began (no timestamp jump beyond
                // what lost packets explain) after more silence than concealment would have
                // lasted: that was a stall taken for a pause (the audio before it was quiet),
                // and this is the front of a backlog. Start over at the setpoint with the
                // newest packets, as after a long concealment, instead of playing the backlog
                // late.
                Some(from)
                    if self.mode == Mode::Playing
                        && self.continues(ext_seq, ext_ts, from)
                        && self
                            .playout_ts
                            .is_some_and(|p| p - from > self.max_expand() as u64) =>
                {
                    self.rebuffer();
                    // Keep the whole backlog: the restart picks from it.
                    self.playout_ts = None;
                }
                // A real pause that simply lasts longer; and since this packet says the path
                // is slower than the transit window knows, put a setpoint's worth of silence
                // before it rather than playing it the moment it arrived.
                Some(from) if self.mode == Mode::Playing && ext_ts >= from => {
                    let p = self.playout_ts.unwrap_or(ext_ts);
                    let margin = (self.setpoint_ms(now_ms) * SAMPLES_PER_MS) as u64;
                    let to = ext_ts.saturating_sub(margin).max(from);
                    self.stats.expansions += 1;
                    self.stats.expanded_ms += (p - to) as f64 / SAMPLES_PER_MS;
                    self.playout_ts = Some(to);
                }
                _ => {
                    self.stats.late += 1;
                    return;
                }
            }
        }
        match self.packets.insert(ext_seq, ext_ts, now_ms, payload) {
            Inserted::Stored => self.stats.received += 1,
            Inserted::Duplicate => self.stats.duplicates += 1,
            Inserted::Evicted => {
                self.stats.received += 1;
                self.stats.discarded += 1;
            }
        }
    }

    /// Fills `out` with the next block of audio at `now_ms`.
    pub fn pull(&mut self, out: &mut [f32], now_ms: f64) {
        let n = out.len();
        if n == 0 {
            return;
        }
        self.block = n;
        self.now_ms = now_ms;
        self.phase.on_pull(now_ms, self.played_total, n);
        let played_ms = self.played_total as f64 / SAMPLES_PER_MS;
        let c = now_ms - played_ms;
        let clock = match self.clock {
            Some(f) if (c - f).abs() < CLOCK_RESET_MS => f + CLOCK_ALPHA * (c - f),
            _ => c,
        };
        self.clock = Some(clock);
        let t = clock + played_ms;
        if self.mode == Mode::Buffering {
            self.try_start(t, now_ms);
        }
        self.levels[self.next_level] = (now_ms, self.level());
        self.next_level = (self.next_level + 1) % LEVELS;
        if self.mode == Mode::Playing {
            self.maybe_stretch(t, now_ms);
            let mut guard = 0;
            while self.mode == Mode::Playing && self.sync.unplayed() < n {
                self.produce(n - self.sync.unplayed(), t, now_ms);
                guard += 1;
                debug_assert!(guard < 10_000, "jitter buffer made no progress");
                if guard >= 10_000 {
                    break;
                }
            }
        }
        // A frame had to be here `base + target (+ guard)` after its media time.
        let target = self.target_ms(now_ms);
        let target = target
            + (target - self.config.phase_guard_from_ms).clamp(0.0, self.config.phase_guard_max_ms);
        let base = self.delay.base();
        let (avg, last) = (&mut self.delay_avg, &mut self.last_mark_ms);
        let phase = &mut self.phase;
        let got = self.sync.read(out, |offset, arrival, ts| {
            let due = base.map(|b| ts as f64 / SAMPLES_PER_MS + b + target);
            phase.on_frame(now_ms, ts, due, target, arrival);
            let at = now_ms + offset as f64 / SAMPLES_PER_MS;
            let d = at - arrival;
            *avg = Some(match *avg {
                None => d,
                Some(a) => a + (1.0 - (-(at - *last).max(0.0) / DELAY_TAU_MS).exp()) * (d - a),
            });
            *last = at;
        });
        out[got..].fill(0.0);
        self.played_total += n as u64;
        self.stats.delay_ms = self.delay_avg.unwrap_or(0.0);
        self.stats.target_ms = self.target_ms(now_ms);
        self.stats.buffered_ms = self.level() as f64 / SAMPLES_PER_MS;
        self.note_setpoint(now_ms);
    }

    /// The playback device played `samples` (48 kHz) of silence in this stream's place at
    /// `now_ms`: the engine was late and the device ran dry. The device's clock went on, so the
    /// output moves on by as much, and the audio meant for that time is dropped as far as it
    /// is here (decoded, or in the next packets in line) — otherwise it and everything after
    /// it would play that much later until a pause let the surplus be accelerated away (real
    /// calls measured 10–30 ms of extra mouth-to-ear for seconds after one to three underruns).
    /// What is not here yet is not concealed and not waited for: it stays as an excess, which
    /// the buffer removes in a quiet moment like any other.
    pub fn skip(&mut self, samples: usize, now_ms: f64) {
        if samples == 0 {
            return;
        }
        self.now_ms = now_ms;
        self.phase.on_pull(now_ms, self.played_total, samples);
        if self.mode == Mode::Playing
            && self.tail != Tail::Plc
            && self.credit == 0
            && self.dtx_from.is_none()
        {
            while self.sync.unplayed() < samples + FADE
                && self.packets.first().map(|p| p.ts) == self.playout_ts
            {
                self.decode_next();
            }
            let k = samples.min(self.sync.unplayed().saturating_sub(FADE));
            if k >= FADE {
                self.sync.accelerate(k, FADE);
                self.event(EventKind::Skip, k);
            }
        }
        self.played_total += samples as u64;
        // The filtered (pull time − played time) falls by what the played count rose: shift it
        // with it, or the next pull would read as a 10 ms jump of the device's clock.
        if let Some(clock) = self.clock.as_mut() {
            *clock -= samples as f64 / SAMPLES_PER_MS;
        }
    }

    /// Audio buffered, samples: decoded and unplayed, plus the timeline up to the end of the
    /// newest packet (gaps included: they will be recovered, concealed or are pauses).
    fn level(&self) -> usize {
        let pending = match (self.packets.newest(), self.playout_ts) {
            (Some(p), Some(at)) if p.ts + self.last_frame as u64 > at => {
                (p.ts + self.last_frame as u64 - at) as usize
            }
            (Some(_), None) => self.packets.len() * self.last_frame,
            _ => 0,
        };
        self.sync.unplayed() + pending
    }

    /// How much audio may be removed without the buffered level dropping below the setpoint.
    /// The offset is measured against the fastest packet of the last 10 s; when the path has just
    /// become slower the packets now arriving have less margin than the offset says, and only
    /// the audio actually buffered tells. The level saw-tooths by a frame as packets arrive, so
    /// its minimum over the last frame period (the level just before a packet arrives) is what
    /// is compared.
    ///
    /// Once the pull phase is learned the requirement already includes the actual arrivals of
    /// the last ~100 ms (see `phase.rs`), which is the same guard in the right geometry: the
    /// level is compared with a whole block of setpoint, which the aligned buffer no longer
    /// holds.
    fn removable(&self, now_ms: f64) -> usize {
        if let (Some(r), Some(z)) = (self.required(now_ms), self.alignment()) {
            return (z - r).max(0) as usize;
        }
        let floor = (self.block_setpoint_ms(now_ms) * SAMPLES_PER_MS) as usize;
        let span = (self.last_frame + self.block) as f64 / SAMPLES_PER_MS;
        let low = self
            .levels
            .iter()
            .filter(|&&(at, _)| now_ms - at <= span)
            .map(|&(_, level)| level)
            .min()
            .unwrap_or(0)
            .min(self.level());
        low.saturating_sub(floor)
    }

    /// The jitter margin aimed for: histogram/peaks, and while losses are recent at least a
    /// frame above a single packet's usual lateness (FEC look-ahead).
    fn target_ms(&self, now_ms: f64) -> f64 {
        let jitter = self.delay.target_ms(now_ms);
        let recent =
            |at: Option<f64>| at.is_some_and(|at| now_ms - at < self.config.loss_memory_ms);
        let lookahead = if self.config.fec_lookahead && recent(self.last_loss_ms) {
            let frames = if recent(self.last_burst_ms) {
                1 + u32::from(self.config.burst_lookahead_frames)
            } else {
                1
            };
            let packet = self.delay.packet_quantile_ms(self.config.fec_quantile);
            f64::from(frames) * self.last_frame as f64 / SAMPLES_PER_MS + packet.unwrap_or(jitter)
        } else {
            0.0
        };
        jitter
            .max(lookahead)
            .min(self.config.max_target_ms.max(self.config.min_target_ms))
    }

    /// Lower edge of the band the playout offset is kept in, as an offset (ms).
    fn setpoint_ms(&self, now_ms: f64) -> f64 {
        if let (Some(r), Some(clock), Some(base)) =
            (self.required(now_ms), self.clock, self.delay.base())
        {
            // The offset at which the alignment is exactly the required one.
            return clock - base + r as f64 / SAMPLES_PER_MS;
        }
        self.block_setpoint_ms(now_ms)
    }

    /// The setpoint before the pull phase is learned: the margin plus a whole pull block, since
    /// a frame is needed at the start of the pull whose block holds its first sample and that
    /// can be up to a block before the sample is played.
    fn block_setpoint_ms(&self, now_ms: f64) -> f64 {
        self.target_ms(now_ms) + self.block as f64 / SAMPLES_PER_MS
    }

    /// The alignment the recent frames require (see `phase.rs`), samples; `None` until learned
    /// or when disabled.
    fn required(&self, now_ms: f64) -> Option<i64> {
        if !self.config.align_to_pulls || self.delay.intervals() < ALIGN_AFTER_INTERVALS {
            return None;
        }
        self.phase.required(now_ms)
    }

    /// The alignment of the timeline to the output: output index of the next sample to decode
    /// minus its RTP timestamp. Only time-stretching and waiting change it.
    fn alignment(&self) -> Option<i64> {
        let p = self.playout_ts?;
        Some((self.played_total + self.sync.unplayed() as u64) as i64 - p as i64)
    }

    /// How far the playout stands above the lower edge of its band, ms: exact (in samples) once
    /// the phase is learned, otherwise the playout offset against the block setpoint.
    fn margin_ms(&self, t: f64, now_ms: f64) -> Option<f64> {
        if let (Some(r), Some(z)) = (self.required(now_ms), self.alignment()) {
            return Some((z - r) as f64 / SAMPLES_PER_MS);
        }
        Some(self.offset_ms(t)? - self.block_setpoint_ms(now_ms))
    }

    /// Width of the band, ms, and whether the phase is learned.
    fn band_ms(&self, now_ms: f64) -> (f64, bool) {
        if self.required(now_ms).is_some() {
            (self.config.phase_band_ms, true)
        } else {
            (self.config.hysteresis_ms, false)
        }
    }

    /// The playout offset at (filtered) time `t`: how long after the arrival of a zero-delay
    /// packet its audio plays. `None` before playout has a position.
    fn offset_ms(&self, t: f64) -> Option<f64> {
        let base = self.delay.base()?;
        let playing = self.playout_ts? as f64 - self.sync.unplayed() as f64;
        Some(t - playing / SAMPLES_PER_MS - base)
    }

    /// Starts (or restarts) playout once the newest packet that would play at the setpoint
    /// offset is here. Older packets are stale and dropped.
    fn try_start(&mut self, t: f64, now_ms: f64) {
        let Some(base) = self.delay.base() else {
            return;
        };
        let next_out = (self.played_total + self.sync.unplayed() as u64) as f64;
        let target_ts = match self.required(now_ms) {
            // Start with the newest packet whose alignment would meet the requirement.
            Some(r) => next_out - r as f64,
            None => {
                (t - base - self.block_setpoint_ms(now_ms)) * SAMPLES_PER_MS
                    + self.sync.unplayed() as f64
            }
        };
        let mut k = self.packets.len();
        while k > 0
            && self
                .packets
                .get(k - 1)
                .is_some_and(|p| p.ts as f64 > target_ts)
        {
            k -= 1;
        }
        if k == 0 {
            return;
        }
        for _ in 1..k {
            self.packets.pop_first();
            self.stats.late += 1;
        }
        let Some(p) = self.packets.first() else {
            return;
        };
        self.playout_ts = Some(p.ts);
        self.last_seq = Some(p.seq.saturating_sub(1));
        self.mode = Mode::Playing;
        if std::mem::take(&mut self.restarting) {
            self.free_stretch_until_ms = now_ms + AFTER_REBUFFER_MS;
        }
        self.tail = Tail::Silence;
        self.credit = 0;
        self.plc_run = 0;
        self.slot_left = None;
        self.dtx = false;
        self.comfort = false;
        self.dtx_from = None;
    }

    /// A timestamp discontinuity: forget the stream, keep what was learned about the network.
    fn restart_stream(&mut self) {
        if self.tail != Tail::Silence {
            self.sync.fade_out_tail(FADE);
        }
        self.packets.clear();
        self.history.clear();
        self.delay.reset_window();
        self.phase.reset();
        self.highest_seq = None;
        self.highest_ts = None;
        self.playout_ts = None;
        self.last_seq = None;
        self.mode = Mode::Buffering;
        self.tail = Tail::Silence;
        self.credit = 0;
        self.plc_run = 0;
        self.slot_left = None;
        self.dtx = false;
        self.comfort = false;
        self.dtx_from = None;
    }

    fn rebuffer(&mut self) {
        self.stats.rebuffers += 1;
        self.restarting = true;
        self.event(EventKind::Rebuffer, 0);
        self.mode = Mode::Buffering;
        self.tail = Tail::Silence;
        self.credit = 0;
        self.plc_run = 0;
        self.slot_left = None;
        self.dtx = false;
        self.comfort = false;
        self.dtx_from = None;
    }

    /// Whether a packet (`seq`, `ts`) continues the stream at `from` without a pause: its
    /// timestamp is where the packets missing since the last one decoded would have put it.
    fn continues(&self, seq: u64, ts: u64, from: u64) -> bool {
        let Some(last) = self.last_seq else {
            return false;
        };
        let missing = seq.saturating_sub(last + 1);
        ts == from + missing * self.last_frame as u64
    }

    /// `max_expand_ms` in samples, a whole number of concealment pieces.
    fn max_expand(&self) -> usize {
        let piece = self.plc_piece();
        ((self.config.max_expand_ms * SAMPLES_PER_MS) as usize / piece).max(1) * piece
    }

    /// The size concealment while waiting comes in: 10 ms, or the frame if it is shorter (a
    /// whole number of quanta either way).
    fn plc_piece(&self) -> usize {
        (self.last_frame / QUANTUM * QUANTUM).clamp(QUANTUM, PLC_PIECE)
    }

    fn advance(&mut self, samples: usize) {
        if let Some(p) = self.playout_ts.as_mut() {
            *p += samples as u64;
        }
    }

    /// Appends audio for the next piece of the timeline: the next packet, a missing packet's
    /// recovery or concealment, a pause's silence, or concealment while waiting.
    fn produce(&mut self, need: usize, t: f64, now_ms: f64) {
        let Some(playout) = self.playout_ts else {
            self.mode = Mode::Buffering;
            return;
        };
        // Behind the playout point after a pause was shortened.
        while self.packets.first().is_some_and(|p| p.ts < playout) {
            self.packets.pop_first();
            self.stats.late += 1;
        }
        match self.packets.first().map(|p| (p.ts, p.seq)) {
            Some((ts, _)) if ts == playout => self.decode_next(),
            Some((ts, seq)) => self.fill_gap((ts - playout) as usize, seq, need, t, now_ms),
            None => self.run_dry(need, t, now_ms),
        }
    }

    /// Decodes the packet at the playout point.
    fn decode_next(&mut self) {
        self.prepare_merge();
        let Some(p) = self.packets.first() else {
            return;
        };
        let (seq, ts, arrival, dtx) = (p.seq, p.ts, p.arrival_ms, p.payload.len() <= 2);
        self.scratch.clear();
        let ok =
            self.decoder.decode(&p.payload, &mut self.scratch).is_ok() && !self.scratch.is_empty();
        let next_ts = self.packets.get(1).map(|q| q.ts);
        self.packets.pop_first();
        self.history.push(seq);
        self.last_seq = Some(seq);
        self.credit = 0;
        self.slot_left = None;
        self.dtx_from = None;
        let len = if ok {
            self.scratch.len()
        } else {
            next_ts.map_or(self.last_frame, |n| {
                ((n - ts) as usize).clamp(QUANTUM, MAX_FRAME)
            })
        };
        if ok {
            let power = self.scratch.iter().map(|s| s * s).sum::<f32>() / len as f32;
            let decay = (-(len as f32) / (SAMPLES_PER_MS as f32 * SPEECH_LEVEL_TAU_MS)).exp();
            self.speech_power = power.max(self.speech_power * decay);
            self.quiet_run = if power < DTX_POWER {
                self.quiet_run + len
            } else {
                0
            };
            if len != self.last_frame && !dtx {
                // The sender changed its frame size. A packet's transit is measured to its
                // first sample, which a longer frame holds back at the sender by the difference:
                // transits before and after the change are not comparable. Measure afresh
                // (dropping the current interval, whose maximum would be the change, not jitter).
                self.delay.reset_window();
            }
            self.last_frame = len;
            self.dtx = dtx || self.quiet_run >= QUIET_BEFORE_PAUSE;
            self.comfort = dtx;
            self.plc_run = 0;
            self.sync.mark_frame(arrival, ts);
            self.append(Tail::Audio);
        } else {
            self.merge.clear();
            self.comfort = false;
            self.conceal(len);
        }
        self.playout_ts = Some(ts + len as u64);
    }

    /// Fills the gap of `gap` samples before the next packet (sequence `next_seq`), one missing
    /// packet's slot (or one piece of a pause) at a time.
    fn fill_gap(&mut self, gap: usize, next_seq: u64, need: usize, t: f64, now_ms: f64) {
        let missing = match self.last_seq {
            Some(last) => next_seq.saturating_sub(last + 1),
            None => 1,
        };
        if missing == 0 {
            // Consecutive sequence numbers: the sender paused (DTX, mute), nothing was lost.
            // Concealment already played while waiting counts as part of the pause.
            let c = self.credit.min(gap);
            if c > 0 {
                self.credit -= c;
                self.advance(c);
            } else {
                self.silence(gap, need, t, now_ms);
            }
            return;
        }
        self.last_loss_ms = Some(now_ms);
        // A burst that the next packet's redundancy reaches back over: more look-ahead could
        // recover it (see `JitterConfig::burst_lookahead_frames`).
        if missing >= 2
            && self.config.burst_lookahead_frames > 0
            && self.packets.first().is_some_and(|p| {
                let offset = (gap / missing as usize) * 2;
                self.decoder.carries_redundancy(&p.payload, offset)
            })
        {
            self.last_burst_ms = Some(now_ms);
        }
        let slot = self.slot_left.unwrap_or_else(|| {
            let per_packet = gap / missing as usize / QUANTUM * QUANTUM;
            if (QUANTUM..=MAX_FRAME).contains(&per_packet) {
                per_packet
            } else {
                // A loss inside a pause, or nonsense: conceal one frame, the rest is a pause.
                self.last_frame.min(gap)
            }
        });
        if self.credit > 0 {
            // Concealment already played while waiting covers (part of) this slot.
            let c = self.credit.min(slot);
            self.credit -= c;
            self.advance(c);
            self.slot_left = (c < slot).then_some(slot - c);
            if c == slot {
                self.last_seq = self.last_seq.map(|s| s + 1);
            }
            return;
        }
        // Recovery, as libopus's own decoder demo does it: the last missing frame from the next
        // packet's in-band FEC (when whole: FEC decodes a frame from its start), every other
        // missing frame (and the last one when the packet has no FEC) from the next packet's
        // deep redundancy, as far back as it reaches — in timeline order, one slot at a time,
        // each slot exactly once. What neither reaches is concealed (deep PLC).
        let fec_due = missing == 1
            && slot == gap
            && self.slot_left.is_none()
            && self.plc_run < self.max_expand();
        if fec_due {
            self.prepare_merge();
        }
        let next = self.packets.first().map(|p| &p.payload);
        self.scratch.clear();
        let fec = fec_due
            && next.is_some_and(|p| self.decoder.decode_fec(p, gap, &mut self.scratch).is_ok())
            && self.scratch.len() == gap;
        // Redundancy decoding continues the codec's own state (as libopus's does, like its
        // concealment), so no merge is prepared for it.
        let recovered = if fec {
            Some(EventKind::FecRecovered)
        } else {
            self.merge.clear();
            self.scratch.clear();
            let dred = next.is_some_and(|p| {
                self.decoder
                    .decode_redundancy(p, gap, slot, &mut self.scratch)
                    .is_ok()
            }) && self.scratch.len() == slot;
            dred.then_some(EventKind::DredRecovered)
        };
        if let Some(kind) = recovered {
            match kind {
                EventKind::FecRecovered => self.stats.fec_recovered += 1,
                _ => self.stats.dred_recovered += 1,
            }
            self.event(kind, slot);
            self.plc_run = 0;
            self.append(Tail::Audio);
            self.advance(slot);
            self.last_seq = self.last_seq.map(|s| s + 1);
            self.slot_left = None;
            return;
        }
        self.merge.clear();
        self.conceal(slot);
        self.advance(slot);
        self.last_seq = self.last_seq.map(|s| s + 1);
        self.slot_left = None;
    }

    /// Nothing is buffered at the playout point.
    fn run_dry(&mut self, need: usize, t: f64, now_ms: f64) {
        if self.dtx {
            // The sender is in DTX: keep the timeline moving with silence.
            if self.dtx_from.is_none() {
                self.dtx_from = self.playout_ts;
            }
            let k = need.div_ceil(QUANTUM) * QUANTUM;
            self.silence(k, need, t, now_ms);
            return;
        }
        if self.plc_run >= self.max_expand() {
            self.rebuffer();
            return;
        }
        // Late or lost: conceal, without advancing the timeline, and wait — in whole pieces
        // of 10 ms (or of the frame, if shorter) even if the block needs less: Opus PLC called
        // in other sizes (e.g. 240 + 720 samples for a 20 ms frame) sounds clearly worse, while
        // 480 + 480 is identical to 960. The surplus stays buffered.
        let piece = self.plc_piece();
        let chunk = (need.div_ceil(piece) * piece).min(self.max_expand() - self.plc_run);
        self.conceal(chunk);
        self.credit += chunk;
        if self.plc_run >= self.max_expand() {
            self.rebuffer();
        }
    }

    /// Plays up to `gap` samples of a pause. Pauses are where the offset can be corrected for
    /// free: silence is skipped when the offset is above the band and added when below.
    fn silence(&mut self, gap: usize, need: usize, t: f64, now_ms: f64) {
        let mut gap = gap;
        if let Some(m) = self.margin_ms(t, now_ms) {
            let (h, learned) = self.band_ms(now_ms);
            // Where to land: the middle of the band, or right at the requirement once it is
            // known exactly.
            let land = if learned { 0.0 } else { h / 2.0 };
            if m > h {
                let skip = (((m - land) * SAMPLES_PER_MS) as usize)
                    .min(gap)
                    .min(self.removable(now_ms));
                if skip > 0 {
                    self.advance(skip);
                    self.stats.accelerations += 1;
                    self.stats.accelerated_ms += skip as f64 / SAMPLES_PER_MS;
                    self.event(EventKind::Accelerate { in_sound: false }, skip);
                    gap -= skip;
                    if gap == 0 {
                        return;
                    }
                }
            } else if m < 0.0 {
                let extra = ((land - m) * SAMPLES_PER_MS).round() as usize;
                self.pause_fill(extra.min(MAX_SILENCE_STRETCH));
                self.event(
                    EventKind::Expand { in_sound: false },
                    extra.min(MAX_SILENCE_STRETCH),
                );
                self.stats.expansions += 1;
                self.stats.expanded_ms += extra.min(MAX_SILENCE_STRETCH) as f64 / SAMPLES_PER_MS;
            }
        }
        let k = gap.min(need.max(QUANTUM));
        self.pause_fill(k);
        self.advance(k);
        self.plc_run = 0;
    }

    /// Appends `k` samples of a pause: the sender's comfort noise while the pause was announced
    /// by a DTX frame and has been quiet for less than [`COMFORT_NOISE_FOR`], else silence.
    fn pause_fill(&mut self, k: usize) {
        if k == 0 {
            return;
        }
        if self.comfort && self.quiet_run < COMFORT_NOISE_FOR {
            self.scratch.clear();
            if self
                .decoder
                .comfort_noise(k.div_ceil(QUANTUM) * QUANTUM, &mut self.scratch)
            {
                self.scratch.resize(k, 0.0);
                self.quiet_run += k;
                self.append(Tail::Noise);
                return;
            }
        }
        self.fade_to_silence(k);
    }

    /// Appends `k` samples of silence, fading out what came before it if it was not silence.
    fn fade_to_silence(&mut self, k: usize) {
        if k == 0 {
            return;
        }
        let mut k = k;
        if self.tail != Tail::Silence {
            self.scratch.clear();
            self.decoder.conceal(QUANTUM, &mut self.scratch);
            self.scratch.resize(QUANTUM.min(k), 0.0);
            stretch::fade(&mut self.scratch, false);
            k -= self.scratch.len();
            self.sync.append(&self.scratch);
        }
        self.sync.append_silence(k);
        self.tail = Tail::Silence;
    }

    /// Appends `samples` of concealment (silence once the run has exceeded `max_expand_ms`,
    /// faded out at the crossing).
    fn conceal(&mut self, samples: usize) {
        let max = self.max_expand();
        if self.plc_run >= max {
            self.fade_to_silence(samples);
            return;
        }
        self.scratch.clear();
        self.decoder
            .conceal(samples.div_ceil(QUANTUM) * QUANTUM, &mut self.scratch);
        self.scratch.resize(samples, 0.0);
        let frame = self.last_frame.max(1);
        let before = self.plc_run.div_ceil(frame);
        self.plc_run += samples;
        self.stats.concealed += (self.plc_run.div_ceil(frame) - before) as u64;
        self.stats.concealed_ms += samples as f64 / SAMPLES_PER_MS;
        self.event(EventKind::Conceal, samples);
        if self.plc_run >= max {
            stretch::fade(&mut self.scratch, false);
        }
        self.append(Tail::Plc);
    }

    /// After concealment, before decoding: conceals one quantum past the loss, the signal the
    /// decoded audio is crossfaded from — done *before* decoding, so the decoder sees one
    /// slightly longer loss rather than a loss after the frame it just decoded. Not for a codec
    /// that continues smoothly by itself ([`Decode::continues_after_conceal`]): libopus does
    /// (CELT overlaps its concealment into the next frame, SILK glues the energies), and the
    /// extra quantum of loss cost it ~0.05–0.1 PESQ.
    fn prepare_merge(&mut self) {
        self.merge.clear();
        if self.tail != Tail::Plc || self.decoder.continues_after_conceal() {
            return;
        }
        self.decoder.conceal(QUANTUM, &mut self.merge);
        self.merge.truncate(FADE);
    }

    /// Appends `scratch` to the sync buffer: merging after concealment, fading in after silence.
    fn append(&mut self, kind: Tail) {
        match (self.tail, kind) {
            (Tail::Plc, Tail::Audio) => {
                let n = self.merge.len().min(self.scratch.len());
                for i in 0..n {
                    let w = stretch::ramp(i, n);
                    self.scratch[i] = self.merge[i] * (1.0 - w) + self.scratch[i] * w;
                }
                self.merge.clear();
            }
            (Tail::Silence, Tail::Audio | Tail::Plc | Tail::Noise) => {
                let n = FADE.min(self.scratch.len());
                stretch::fade(&mut self.scratch[..n], true);
            }
            _ => {}
        }
        self.sync.append(&self.scratch);
        self.tail = kind;
    }

    /// Accelerates or expands when the offset has left its band.
    fn maybe_stretch(&mut self, t: f64, now_ms: f64) {
        if now_ms - self.last_stretch_ms < self.config.min_stretch_interval_ms
            || self.tail == Tail::Plc
            || self.credit > 0
            || self.dtx_from.is_some()
        {
            return;
        }
        let Some(m) = self.margin_ms(t, now_ms) else {
            return;
        };
        let (h, _) = self.band_ms(now_ms);
        if m <= h {
            self.excess_since_ms = None;
        }
        if (0.0..=h).contains(&m) {
            return;
        }
        // Decode ahead (only packets that are next in line: gaps are handled when due).
        while self.sync.unplayed() < LOOKAHEAD
            && self.packets.first().map(|p| p.ts) == self.playout_ts
        {
            self.decode_next();
        }
        // A search that found nothing suitable is repeated after the retry interval, or
        // sooner if there is more decoded audio to search now: an aligned buffer holds little
        // beyond the next block, and with a fixed retry interval equal to the frame period
        // every try would land in the same, short, phase of the frame cycle.
        let ahead = self.sync.unplayed();
        if now_ms - self.last_try_ms < STRETCH_RETRY_MS && ahead <= self.last_try_ahead {
            return;
        }
        self.last_try_ms = now_ms;
        self.last_try_ahead = ahead;
        let done = if m > h {
            // Never below the lower edge: accelerate removes at most the excess.
            let excess = ((m * SAMPLES_PER_MS) as usize).min(self.removable(now_ms));
            // Inside a word only when urgent or after waiting long enough for a gap.
            let since = *self.excess_since_ms.get_or_insert(now_ms);
            let in_sound_ok = m > IN_SOUND_URGENT_MS
                || now_ms - since >= self.config.in_sound_wait_ms
                || now_ms < self.free_stretch_until_ms;
            excess >= MIN_LAG && self.accelerate(excess, m > URGENT_MS, in_sound_ok)
        } else {
            // May overshoot by up to the hysteresis (a pitch period is what it is).
            let max_insert = ((self.config.hysteresis_ms - m) * SAMPLES_PER_MS) as usize;
            self.expand(max_insert, -m > URGENT_MS)
        };
        if done {
            self.last_stretch_ms = now_ms;
        }
    }

    /// Whether the decoded audio about to play is quiet against the recent speech level: a gap
    /// between words or an unvoiced tail, where shortening is not heard.
    fn quiet_ahead(&self) -> bool {
        let x = self.sync.future();
        let x = &x[..x.len().min(LOOKAHEAD)];
        if x.is_empty() {
            return false;
        }
        let power = x.iter().map(|s| s * s).sum::<f32>() / x.len() as f32;
        power < DTX_POWER || power < QUIET_SHARE * self.speech_power
    }

    /// Removes at most `max_remove` samples; true if it did. Sound that is not quiet is only
    /// shortened with `in_sound_ok`.
    fn accelerate(&mut self, max_remove: usize, urgent: bool, in_sound_ok: bool) -> bool {
        let x = self.sync.future();
        let silent = stretch::silent_prefix(x);
        if silent >= 2 * FADE {
            let k = max_remove.min(silent - FADE).min(MAX_SILENCE_STRETCH);
            if k >= FADE {
                self.sync.accelerate(k, FADE);
                self.count_acceleration(k, false);
                return true;
            }
        }
        let quiet = self.quiet_ahead();
        if !quiet && !in_sound_ok {
            return false;
        }
        let x = self.sync.future();
        let Some(p) = self.pitch.find(x, MIN_LAG, max_remove.min(MAX_LAG)) else {
            return false;
        };
        // Quiet audio may be shortened even where it is not periodic: nothing to hear there.
        if p.correlation < MIN_CORRELATION && !urgent && !quiet {
            return false;
        }
        let periods = if urgent {
            (max_remove / p.lag).min(x.len() / p.lag - 1).clamp(1, 4)
        } else {
            1
        };
        self.sync.accelerate(periods * p.lag, p.lag);
        self.count_acceleration(periods * p.lag, !quiet);
        true
    }

    fn count_acceleration(&mut self, samples: usize, in_sound: bool) {
        self.stats.accelerations += 1;
        self.stats.accelerated_ms += samples as f64 / SAMPLES_PER_MS;
        self.event(EventKind::Accelerate { in_sound }, samples);
    }

    /// Inserts at most `max_insert` samples; true if it did.
    fn expand(&mut self, max_insert: usize, urgent: bool) -> bool {
        let silent = stretch::silent_prefix(self.sync.future());
        let silence_chunk = max_insert
            .min(silent.saturating_sub(FADE))
            .min(MAX_SILENCE_STRETCH);
        let k = if silent >= 2 * FADE && silence_chunk >= FADE {
            self.sync.expand(silence_chunk, FADE);
            self.event(EventKind::Expand { in_sound: false }, silence_chunk);
            silence_chunk
        } else {
            let x = self.sync.future();
            let Some(p) = self.pitch.find(x, MIN_LAG, max_insert.min(MAX_LAG)) else {
                return false;
            };
            if p.correlation < MIN_CORRELATION && !urgent {
                return false;
            }
            self.sync.expand(p.lag, p.lag);
            self.event(EventKind::Expand { in_sound: true }, p.lag);
            p.lag
        };
        self.stats.expansions += 1;
        self.stats.expanded_ms += k as f64 / SAMPLES_PER_MS;
        true
    }

    #[cfg(test)]
    pub(crate) fn decoder(&self) -> &D {
        &self.decoder
    }

    /// Storage sizes and addresses, to check that steady state does not allocate.
    #[cfg(test)]
    pub(crate) fn footprint(&self) -> Vec<usize> {
        let (slots, payload) = self.packets.footprint();
        let (ptr, cap) = self.sync.footprint();
        vec![
            slots,
            payload,
            ptr,
            cap,
            self.scratch.as_ptr() as usize,
            self.scratch.capacity(),
        ]
    }
}
