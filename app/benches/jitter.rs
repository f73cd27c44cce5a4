//! Jitter-buffer table: real speech, real Opus, simulated networks (`natter::jitter::sim`).
//!
//! For every jitter profile × loss model the speech is encoded (48 kHz mono, 20 ms frames, Opus
//! VOIP, 32 kbit/s, in-band FEC, expected loss = the model's nominal loss, no DTX), sent over the
//! simulated path and played out by
//!
//! - `adaptive`: our `JitterBuffer<OpusDecoder>` with default settings, pulled in 10 ms blocks
//!   on the receiver's clock (`sim::run`, first pull at 0 ms);
//! - `fixed60`: a fixed playout schedule: the first packet to arrive (frame `f`, at `a_f`) plays
//!   at `a_f + 60 ms`, frame `k` at `a_f + 60 ms + (k − f) · 20 ms`. A frame whose packet is not
//!   there by then is recovered from the next packet's FEC if *that* packet is there, otherwise
//!   concealed (Opus PLC); a packet arriving after its slot is late (discarded).
//!
//! in two scenarios:
//!
//! - `steady` (mid-call): the path and the buffers first carry 60 s of warm-up (the speech
//!   looped), then 1 s of silence, then the scored speech. 60 s is how long the delay histogram's
//!   start-up weighting lasts (see `jitter/delay.rs`), so this is the buffer's steady state;
//! - `start` (call start): the scored speech is the first thing sent.
//!
//! For calibration against the design guide's numbers there is also an `ideal` buffer (every
//! packet that arrives is on time; FEC from the next packet whenever it arrived at all), with FEC
//! and without (`ideal-plc`), on the jitter-free path with random loss (in both scenarios;
//! mid-call on the clean path it equals `fixed60`); and `ideal-split`, the ideal buffer with FEC
//! whose concealment of a 20 ms frame is two Opus PLC calls of 5 and 15 ms instead of one, the
//! way the adaptive buffer conceals while it waits for a packet that is due mid-block (it
//! isolates what that costs).
//!
//! The 300 ms stall of the spike profile starts 7.2 s into the scored speech (sender time),
//! inside 520 ms of continuous speech, so the buffer cannot take it for a pause.
//!
//! Only the scored speech counts: each output is written as a 48 kHz WAV whose sample 0 is the
//! receiver-clock instant at which the sender captured the scored speech's sample 0, and the
//! statistics cover the frames of the scored speech. One row per output goes to `results.tsv`
//! (and every frame's delay to `delays.tsv`); scripts/bench-jitter.sh scores the WAVs with PESQ
//! and writes the markdown tables.
//!
//! Added delay is measured per frame played from its own packet: the time its first sample is
//! output minus its packet's arrival. For `adaptive` it is the buffer's own measurement
//! (recovered per frame with `sim::FrameDelays`); for `fixed60` it is `play time − arrival`,
//! i.e. 60 ms + (jitter of the first packet − jitter of this one).
//!
//! Encoder complexity: the main rows use natter's (`codec::encoder_complexity`: it follows the
//! protection and the bitrate) or `JITTER_ENCODER_COMPLEXITY`; extra rows
//! (`opus-cN-sK`: both scenarios, jitter-free path, clean and 5 % random loss with the loss
//! patterns of seeds `seed + K`, K < [`COMPLEXITY_SEEDS`], our buffer) encode at each of
//! [`COMPLEXITIES`].
//!
//! The seed: the first seed from 1 up for which every loss model's realized loss over the scored
//! frames of both scenarios is within ±20 % (relative) of its nominal rate — 540 frames are few
//! enough that a bursty model can otherwise realize half its nominal loss. It depends only on the
//! loss models, never on a buffer's result, and the realized rate is in the table.
//!
//! The engine's timing: by default the buffer is pulled perfectly (one block every 10 ms).
//! `JITTER_DRED=N:BPS` encodes with DRED of N × 10 ms and in-band FEC off at BPS bit/s instead of
//! 32 kbit/s with FEC; `JITTER_BITRATE=BPS` encodes with FEC at BPS (real calls: 40000); `JITTER_MEAN_BURST=B` sets the bursty model's mean burst (default 2.5);
//! `JITTER_DECODER_COMPLEXITY=C` decodes at libopus complexity C instead of natter's;
//! `JITTER_ENCODER_COMPLEXITY=C` encodes the main rows at C instead of natter's;
//! `JITTER_NO_COMPLEXITY=1` leaves out the encoder-complexity rows;
//! `JITTER_PLANNED_LOSS=P` has the encoder plan for P % loss in every row (its 0 % row then
//! shows what FEC and DRED planned for P % leave the primary encoding);
//! `JITTER_DTX=1` encodes with DTX, as calls do (held off while our VAD hears voice), and our buffer gets what our sender transmits
//! (the first DTX frame of each pause; use it with `JITTER_ADAPTIVE_ONLY=1`: the fixed and
//! ideal rows do not model pauses);
//! `JITTER_ADAPTIVE_ONLY=1` runs only our buffer (no fixed, ideal or complexity rows);
//! `JITTER_BURST_LOOKAHEAD=N` runs our buffer with `JitterConfig::burst_lookahead_frames` N.
//! Our buffer starts where the engine would start it on that path (`sim::ping_spread`: the
//! spread of a join train of pings over the profile, `JitterConfig::start_target_ms`);
//! `JITTER_PATH=unknown` starts it at 40 ms as before that was measured, `JITTER_PATH=clean` as
//! if the listener's own path were clean (the jitter all in the talker's uplink).
//!
//! For tuning sweeps: `JITTER_PROFILES=netem-12ms,none` runs only those jitter profiles (and no
//! calibration or complexity rows), and `JITTER_TUNE=quantile=0.97,window_ms=5000` changes fields
//! of the adaptive buffer's `JitterConfig` (see [`tuned_config`] for the names).
//!
//! `JITTER_PULL=PERIOD,WAKE,STALL_P,STALL_MS` pulls like a live engine instead
//! (`sim::PullTiming`: a device period's blocks at once, wake-ups up to WAKE ms late, with
//! probability STALL_P per wake-up up to STALL_MS more), e.g. `JITTER_PULL=10,2,0.01,20`.
//!
//!   scripts/bench-jitter.sh
//!   cargo bench -p natter --bench jitter -- SPEECH.wav OUT_DIR   (or JITTER_SPEECH, JITTER_OUT)

use natter::audio::wav::{read_wav, write_wav};
use natter::codec::{EncoderConfig, OpusDecoder, OpusEncoder};
use natter::jitter::sim::{self, Arrival, FrameDelays, Loss, NetworkProfile, PullTiming};
use natter::jitter::{JitterBuffer, JitterConfig, JitterStats};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// 20 ms at 48 kHz.
const FRAME: usize = 960;
const FRAME_MS: f64 = 20.0;
const BITRATE_BPS: i32 = 32_000;
/// libopus complexities compared (buffer `opus-cN` rows).
const COMPLEXITIES: [u8; 6] = [10, 8, 7, 6, 5, 4];
/// Loss patterns (seeds `seed`, `seed + 1`, …) the complexity rows average over.
const COMPLEXITY_SEEDS: u64 = 6;
const FIXED_MS: f64 = 60.0;
/// Start of the 300 ms stall, ms after the scored speech's first sample (sender time).
const SPIKE_AT_MS: f64 = 7_200.0;
/// Mean loss-burst length of the bursty model, packets (`1 / p_good`); `JITTER_MEAN_BURST`
/// changes it.
const MEAN_BURST: f64 = 2.5;

/// The decoder, at `JITTER_DECODER_COMPLEXITY` (default: natter's, 5 = deep PLC).
fn decoder() -> OpusDecoder {
    let c = env_parse("JITTER_DECODER_COMPLEXITY").unwrap_or(natter::codec::DECODER_COMPLEXITY);
    OpusDecoder::with_complexity(c).expect("opus decoder")
}

/// Our buffer's settings: `JITTER_TUNE`'s, with `JITTER_BURST_LOOKAHEAD` if set.
fn jitter_config() -> JitterConfig {
    let mut c = tuned_config();
    if let Some(n) = env_parse("JITTER_BURST_LOOKAHEAD") {
        c.burst_lookahead_frames = n;
    }
    c
}

/// An environment variable parsed, if set and valid.
fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn mean_burst() -> f64 {
    env_parse::<f64>("JITTER_MEAN_BURST")
        .filter(|b| *b >= 1.0)
        .unwrap_or(MEAN_BURST)
}

/// The encoder's protection: in-band FEC at [`bitrate`] (the default), or with
/// `JITTER_DRED=N:BPS` DRED of N × 10 ms with FEC off at BPS (the policy of `rate::protection`
/// for bursty loss), or with `JITTER_DRED=N:BPS:fec` both. Returns (bitrate, FEC, DRED 10 ms units).
fn protection() -> (i32, bool, u8) {
    match std::env::var("JITTER_DRED") {
        Ok(spec) => {
            let v: Vec<&str> = spec.split(':').collect();
            assert!(v.len() >= 2, "JITTER_DRED=N:BPS[:fec]");
            (
                v[1].parse().expect("JITTER_DRED bitrate"),
                v.get(2) == Some(&"fec"),
                v[0].parse().expect("JITTER_DRED duration"),
            )
        }
        Err(_) => (bitrate(), true, 0),
    }
}

/// [`BITRATE_BPS`], or `JITTER_BITRATE` (40000: what the rate controller sends real calls at).
fn bitrate() -> i32 {
    env_parse("JITTER_BITRATE").unwrap_or(BITRATE_BPS)
}
/// Warm-up of the steady scenario, s, and the silence between it and the scored speech.
const WARMUP_S: f64 = 60.0;
const GAP_S: f64 = 1.0;

/// A scenario: what is sent before the scored speech.
struct Scenario {
    name: &'static str,
    /// Frames before the scored speech.
    lead_frames: usize,
    /// The whole input: lead (speech looped, then silence) and the scored speech.
    input: Vec<f32>,
}

impl Scenario {
    fn new(name: &'static str, speech: &[f32], warmup_s: f64, gap_s: f64) -> Self {
        let warm = (warmup_s * 1_000.0 / FRAME_MS).ceil() as usize * FRAME;
        let gap = (gap_s * 1_000.0 / FRAME_MS).ceil() as usize * FRAME;
        let mut input: Vec<f32> = speech.iter().copied().cycle().take(warm).collect();
        input.resize(warm + gap, 0.0);
        input.extend_from_slice(speech);
        Self {
            name,
            lead_frames: (warm + gap) / FRAME,
            input,
        }
    }

    fn frames(&self) -> usize {
        self.input.len() / FRAME
    }

    /// Sender (= receiver clock) time of the scored speech's first sample, ms.
    fn t0_ms(&self) -> f64 {
        self.lead_frames as f64 * FRAME_MS
    }
}

/// What one buffer did with the scored part of one cell.
#[derive(Default)]
struct Outcome {
    /// Output from the scored speech's capture time on.
    audio: Vec<f32>,
    /// (scored frame index, added delay ms) of each frame played from its own packet.
    delays: Vec<(usize, f64)>,
    late: u64,
    concealed_ms: f64,
    fec: u64,
    /// Frames (or rests of frames) recovered from DRED.
    dred: u64,
    rebuffers: u64,
    accelerated_ms: f64,
    expanded_ms: f64,
    /// Decoded frames whose delay is folded into a neighbour's sample (see `FrameDelays`).
    merged: usize,
}

/// The puller's timing from `JITTER_PULL` (see the module docs); perfect without it.
fn pull_timing() -> PullTiming {
    let Ok(spec) = std::env::var("JITTER_PULL") else {
        return PullTiming::PERFECT;
    };
    let v: Vec<f64> = spec
        .split(',')
        .map(|x| x.trim().parse().expect("JITTER_PULL: numbers"))
        .collect();
    assert!(
        v.len() == 4 && v.iter().all(|x| x.is_finite() && *x >= 0.0),
        "JITTER_PULL=PERIOD,WAKE,STALL_P,STALL_MS"
    );
    PullTiming {
        period_ms: v[0].max(10.0),
        wake_ms: v[1],
        stall_p: v[2].min(1.0),
        stall_ms: v[3],
    }
}

/// The adaptive buffer's settings: the defaults, with `JITTER_TUNE=field=value,…` applied.
fn tuned_config() -> JitterConfig {
    let mut c = JitterConfig::default();
    let Ok(spec) = std::env::var("JITTER_TUNE") else {
        return c;
    };
    for kv in spec.split(',').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').expect("JITTER_TUNE=field=value,…");
        let v: f64 = v.trim().parse().expect("JITTER_TUNE: a number");
        let field = match k.trim() {
            "quantile" => &mut c.quantile,
            "forget_factor" => &mut c.forget_factor,
            "window_ms" => &mut c.window_ms,
            "interval_ms" => &mut c.interval_ms,
            "peak_threshold_ms" => &mut c.peak_threshold_ms,
            "peak_memory_ms" => &mut c.peak_memory_ms,
            "phase_guard_from_ms" => &mut c.phase_guard_from_ms,
            "phase_guard_max_ms" => &mut c.phase_guard_max_ms,
            "in_sound_wait_ms" => &mut c.in_sound_wait_ms,
            "fec_quantile" => &mut c.fec_quantile,
            "initial_target_ms" => &mut c.initial_target_ms,
            "start_spread_factor" => &mut c.start_spread_factor,
            other => panic!("JITTER_TUNE: no field {other}"),
        };
        *field = v;
    }
    c
}

/// Where our buffer starts on `profile`: from the spread a join train of pings would measure
/// there (`sim::ping_spread`, as the engine does), or as if nothing were known
/// (`JITTER_PATH=unknown`: the 40 ms start) or the listener's own path were clean
/// (`JITTER_PATH=clean`: the jitter is all the talker's uplink, which the listener cannot see).
fn start_config(profile: &NetworkProfile, seed: u64) -> JitterConfig {
    let mut c = jitter_config();
    let spread = match std::env::var("JITTER_PATH").as_deref() {
        Ok("unknown") => None,
        Ok("clean") => Some(0.0),
        Ok(other) if !other.is_empty() => panic!("JITTER_PATH=unknown|clean, not {other}"),
        _ => sim::ping_spread(profile, seed),
    };
    c.initial_target_ms = c.start_target_ms(spread);
    c
}

fn adaptive(
    sc: &Scenario,
    packets: &[Vec<u8>],
    arrivals: &[Arrival],
    config: JitterConfig,
) -> Outcome {
    // What our sender transmits (engine/send.rs): every frame but a DTX frame that follows
    // another, numbered in sending order. Without `JITTER_DTX` no frame is a DTX frame.
    let dtx = |f: usize| packets[f].len() <= 2;
    let sent = |f: usize| !(dtx(f) && f > 0 && dtx(f - 1));
    let seq_of: Vec<u16> = (0..packets.len())
        .scan(0u16, |next, f| {
            let seq = *next;
            if sent(f) {
                *next = next.wrapping_add(1);
            }
            Some(seq)
        })
        .collect();
    let sent_arrivals: Vec<Arrival> = arrivals.iter().filter(|a| sent(a.frame)).copied().collect();
    let arrivals = &sent_arrivals[..];
    let decoder = decoder();
    let mut jb = JitterBuffer::new(config, decoder);
    let mut fd = FrameDelays::default();
    let mut audio = Vec::new();
    let t0 = sc.t0_ms();
    let last = arrivals.last().map_or(0.0, |a| a.at_ms);
    let end = last.max(sc.frames() as f64 * FRAME_MS) + 1_000.0;
    let mut at_t0 = JitterStats::default();
    let trace = std::env::var_os("JITTER_TRACE").is_some();
    let mut last_stats = JitterStats::default();
    sim::run_timed(
        &mut jb,
        arrivals,
        |f, p| {
            p.extend_from_slice(&packets[f]);
            (seq_of[f], (f * FRAME) as u32)
        },
        0.0,
        end,
        pull_timing(),
        1,
        |jb, block, now| {
            if now < t0 {
                at_t0 = jb.stats();
                last_stats = at_t0;
            } else {
                audio.extend_from_slice(block);
                if trace {
                    trace_block(&mut last_stats, jb.stats(), now - t0);
                }
            }
            fd.observe(jb);
        },
    );
    let s = jb.stats();
    // Which frame each delay sample belongs to: its arrival time is `played − delay`.
    let mut by_arrival: Vec<(f64, usize)> = arrivals.iter().map(|a| (a.at_ms, a.frame)).collect();
    by_arrival.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut delays = Vec::new();
    let mut decoded_scored = 0;
    for (&played, &d) in fd.played_ms.iter().zip(&fd.delays_ms) {
        let arrival = played - d;
        let i = by_arrival.partition_point(|x| x.0 < arrival - 1e-6);
        if let Some(&(at, frame)) = by_arrival.get(i)
            && (at - arrival).abs() < 1e-6
            && frame >= sc.lead_frames
        {
            delays.push((frame - sc.lead_frames, d));
        }
    }
    for a in arrivals {
        decoded_scored += usize::from(a.frame >= sc.lead_frames);
    }
    let late = s.late - at_t0.late;
    Outcome {
        audio,
        merged: decoded_scored.saturating_sub(late as usize + delays.len()),
        delays,
        late,
        concealed_ms: s.concealed_ms - at_t0.concealed_ms,
        fec: s.fec_recovered - at_t0.fec_recovered,
        dred: s.dred_recovered - at_t0.dred_recovered,
        rebuffers: s.rebuffers - at_t0.rebuffers,
        accelerated_ms: s.accelerated_ms - at_t0.accelerated_ms,
        expanded_ms: s.expanded_ms - at_t0.expanded_ms,
    }
}

/// `JITTER_TRACE=1`: prints what the adaptive buffer did in each block of the scored speech
/// (concealment, stretching) with its target and measured delay, to explain a score.
fn trace_block(last: &mut JitterStats, s: JitterStats, t_ms: f64) {
    let d = |a: f64, b: f64| {
        if a > b + 1e-9 {
            format!("{:.1}", a - b)
        } else {
            "-".into()
        }
    };
    if s.concealed_ms > last.concealed_ms
        || s.accelerated_ms > last.accelerated_ms
        || s.expanded_ms > last.expanded_ms
        || s.fec_recovered > last.fec_recovered
        || s.late > last.late
    {
        println!(
            "trace\t{t_ms:.0}\tconceal {}\tacc {}\texp {}\tfec {}\tlate {}\ttarget {:.1}\tdelay {:.1}\tbuffered {:.1}",
            d(s.concealed_ms, last.concealed_ms),
            d(s.accelerated_ms, last.accelerated_ms),
            d(s.expanded_ms, last.expanded_ms),
            s.fec_recovered - last.fec_recovered,
            s.late - last.late,
            s.target_ms,
            s.delay_ms,
            s.buffered_ms,
        );
    }
    *last = s;
}

/// First arrival time of every frame (None: lost).
fn first_arrivals(arrivals: &[Arrival], frames: usize) -> Vec<Option<f64>> {
    let mut first = vec![None; frames];
    for a in arrivals {
        let slot: &mut Option<f64> = &mut first[a.frame];
        if slot.is_none_or(|t| a.at_ms < t) {
            *slot = Some(a.at_ms);
        }
    }
    first
}

/// Concealment of one 20 ms frame: one PLC call, or pieces (samples each).
const PLC_WHOLE: &[usize] = &[FRAME];
const PLC_SPLIT: &[usize] = &[240, 720];

/// The fixed playout schedule (see the module docs). `delay_ms: None` is the ideal buffer:
/// every packet that arrives is on time, and the output starts with the scored speech.
fn fixed(
    sc: &Scenario,
    packets: &[Vec<u8>],
    arrivals: &[Arrival],
    delay_ms: Option<f64>,
    fec: bool,
    plc: &[usize],
) -> Outcome {
    let frames = packets.len();
    let first = first_arrivals(arrivals, frames);
    let mut dec = decoder();
    let mut o = Outcome::default();
    let Some(a0) = arrivals.first() else {
        o.audio = vec![0.0; (frames - sc.lead_frames) * FRAME];
        return o;
    };
    let play = |k: usize| {
        delay_ms.map_or(f64::INFINITY, |d| {
            a0.at_ms + d + (k as f64 - a0.frame as f64) * FRAME_MS
        })
    };
    let mut audio = Vec::with_capacity((frames + 50) * FRAME);
    if delay_ms.is_some() {
        audio.resize((play(0) * 48.0).round() as usize, 0.0);
    }
    let on_time = |k: usize, at: f64| first.get(k).copied().flatten().filter(|&a| a <= at);
    for k in 0..frames {
        let scored = k >= sc.lead_frames;
        let at = play(k);
        if let Some(a) = on_time(k, at) {
            // Opus decodes any packet it produced; a failure would show as missing audio.
            if dec.decode_packet(&packets[k], &mut audio) {
                if scored && at.is_finite() {
                    o.delays.push((k - sc.lead_frames, at - a));
                }
                continue;
            }
        } else if first[k].is_some() && scored {
            o.late += 1;
        }
        if fec && on_time(k + 1, at).is_some() && dec.decode_fec_packet(&packets[k + 1], &mut audio)
        {
            o.fec += u64::from(scored);
            continue;
        }
        for &n in plc {
            dec.conceal_samples(n, &mut audio);
        }
        if scored {
            o.concealed_ms += FRAME_MS;
        }
    }
    // Output from the scored speech's capture time (the ideal buffer: from its first frame).
    let from = if delay_ms.is_some() {
        (sc.t0_ms() * 48.0).round() as usize
    } else {
        sc.lead_frames * FRAME
    };
    o.audio = audio.split_off(from.min(audio.len()));
    o
}

/// The three decoder operations on whole 20 ms frames.
trait FrameDecoder {
    fn decode_packet(&mut self, payload: &[u8], out: &mut Vec<f32>) -> bool;
    fn decode_fec_packet(&mut self, next: &[u8], out: &mut Vec<f32>) -> bool;
    fn conceal_samples(&mut self, samples: usize, out: &mut Vec<f32>);
}

impl FrameDecoder for OpusDecoder {
    fn decode_packet(&mut self, payload: &[u8], out: &mut Vec<f32>) -> bool {
        use natter::jitter::Decode;
        let n = out.len();
        let ok = self.decode(payload, out).is_ok() && out.len() == n + FRAME;
        if !ok {
            out.truncate(n);
        }
        ok
    }

    fn decode_fec_packet(&mut self, next: &[u8], out: &mut Vec<f32>) -> bool {
        use natter::jitter::Decode;
        let n = out.len();
        let ok = self.decode_fec(next, FRAME, out).is_ok() && out.len() == n + FRAME;
        if !ok {
            out.truncate(n);
        }
        ok
    }

    fn conceal_samples(&mut self, samples: usize, out: &mut Vec<f32>) {
        use natter::jitter::Decode;
        self.conceal(samples, out);
    }
}

fn encode(input: &[f32], expected_loss_pct: u8, complexity: Option<u8>) -> Vec<Vec<u8>> {
    let (bitrate_bps, fec, dred_10ms) = protection();
    let expected_loss_pct = env_parse("JITTER_PLANNED_LOSS").unwrap_or(expected_loss_pct);
    let mut enc = OpusEncoder::new(EncoderConfig {
        bitrate_bps,
        // DRED is sent only when the planned loss is above 0.
        expected_loss_pct: if dred_10ms > 0 {
            expected_loss_pct.max(5)
        } else {
            expected_loss_pct
        },
        fec,
        dtx: std::env::var_os("JITTER_DTX").is_some(),
        restricted_low_delay: false,
        complexity,
        dred_10ms,
    })
    .expect("opus encoder");
    // As a call's sender: DTX held off while our VAD (10 ms blocks) hears voice.
    let mut vad = natter::vad::Vad::new(natter::vad::VadConfig::default());
    input
        .chunks_exact(FRAME)
        .map(|frame| {
            let (a, b) = frame.split_at(FRAME / 2);
            let voice = vad.process(a) | vad.process(b);
            enc.set_voice(voice);
            let mut p = Vec::new();
            enc.encode(frame, &mut p).expect("opus encode");
            p
        })
        .collect()
}

/// The jitter profiles, or those `JITTER_PROFILES` names.
fn jitter_profiles(t0_ms: f64) -> Vec<(&'static str, NetworkProfile)> {
    let keep = std::env::var("JITTER_PROFILES").ok();
    let mut v = vec![
        ("none", NetworkProfile::constant(30.0)),
        ("gauss-10ms", NetworkProfile::gaussian(10.0)),
        // The real call bench's `random` and `bursty` paths' jitter (natter-netem `jitter=12`).
        ("netem-12ms", NetworkProfile::gaussian_in_order(12.0)),
        ("bursty-40ms", NetworkProfile::bursty(40.0)),
        (
            "spike-300ms",
            NetworkProfile::spike(t0_ms + SPIKE_AT_MS, 300.0),
        ),
    ];
    if let Some(keep) = keep {
        v.retain(|(name, _)| keep.split(',').any(|k| k.trim() == *name));
    }
    v
}

/// Loss models: name, model, nominal loss %.
fn loss_models() -> Vec<(String, Loss, u8)> {
    let mut v = vec![("0%".to_string(), Loss::None, 0)];
    for pct in [5u8, 10, 20] {
        let p = f64::from(pct) / 100.0;
        v.push((format!("{pct}% random"), Loss::Random { p }, pct));
    }
    for pct in [5u8, 10, 20] {
        let l = f64::from(pct) / 100.0;
        let p_good = 1.0 / mean_burst();
        // Long-run share of the bad (all-lost) state: p_bad / (p_bad + p_good) = l.
        let p_bad = p_good * l / (1.0 - l);
        v.push((
            format!("{pct}% bursty"),
            Loss::GilbertElliott {
                p_bad,
                p_good,
                loss_good: 0.0,
                loss_bad: 1.0,
            },
            pct,
        ));
    }
    v
}

/// Loss realized over the scored frames, %.
fn realized_loss(sc: &Scenario, arrivals: &[Arrival]) -> f64 {
    let frames = sc.frames();
    let got = first_arrivals(arrivals, frames)[sc.lead_frames..]
        .iter()
        .flatten()
        .count();
    100.0 * (frames - sc.lead_frames - got) as f64 / (frames - sc.lead_frames) as f64
}

/// The seed rule (module docs).
fn choose_seed(scenarios: &[Scenario]) -> u64 {
    (1..1_000)
        .find(|&seed| {
            loss_models().iter().all(|(_, loss, nominal)| {
                scenarios.iter().all(|sc| {
                    let p = NetworkProfile::constant(30.0).with_loss(*loss);
                    let r = realized_loss(sc, &sim::arrivals(&p, sc.frames(), seed));
                    let n = f64::from(*nominal);
                    (r - n).abs() <= 0.2 * n
                })
            })
        })
        .unwrap_or(1)
}

fn mean_p95(v: &[(usize, f64)]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut s: Vec<f64> = v.iter().map(|x| x.1).collect();
    s.sort_by(f64::total_cmp);
    let mean = s.iter().sum::<f64>() / s.len() as f64;
    let rank = (0.95 * s.len() as f64).ceil() as usize;
    (mean, s[rank.clamp(1, s.len()) - 1])
}

struct Table {
    dir: PathBuf,
    tsv: String,
    /// Every output's per-frame delays: row id, scored frame index, delay (ms).
    delays: String,
    n: usize,
}

/// One row's labels.
struct Cell<'a> {
    scenario: &'a str,
    jitter: &'a str,
    loss: &'a str,
    nominal: u8,
    realized: f64,
    frames: usize,
}

impl Table {
    fn add(&mut self, c: &Cell, buffer: &str, o: &Outcome) -> anyhow::Result<()> {
        self.n += 1;
        let slug = format!("{}_{}_{}_{buffer}", c.scenario, c.jitter, c.loss)
            .replace('%', "pct")
            .replace(' ', "-");
        let wav = format!("{:03}_{slug}.wav", self.n);
        write_wav(&self.dir.join(&wav), &o.audio)?;
        let (mean, p95) = mean_p95(&o.delays);
        let pct = |x: f64| 100.0 * x / c.frames as f64;
        let row = format!(
            "{}\t{}\t{}\t{}\t{}\t{buffer}\t{:.2}\t{mean:.1}\t{p95:.1}\t{:.2}\t{:.2}\t{:.2}\t{:.2}\t{}\t{:.0}\t{:.0}\t{}\t{}\t{wav}",
            self.n,
            c.scenario,
            c.jitter,
            c.loss,
            c.nominal,
            c.realized,
            pct(o.late as f64),
            100.0 * o.concealed_ms / (c.frames as f64 * FRAME_MS),
            pct(o.fec as f64),
            pct(o.dred as f64),
            o.rebuffers,
            o.accelerated_ms,
            o.expanded_ms,
            o.delays.len(),
            o.merged,
        );
        println!("{row}");
        writeln!(self.tsv, "{row}")?;
        for (frame, d) in &o.delays {
            writeln!(self.delays, "{}\t{frame}\t{d:.2}", self.n)?;
        }
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not: skip there.
    if !args.iter().any(|a| a == "--bench") {
        println!("jitter: run with scripts/bench-jitter.sh (cargo bench --bench jitter)");
        return Ok(());
    }
    let mut positional = args.iter().filter(|a| !a.starts_with("--"));
    let speech_path = positional
        .next()
        .cloned()
        .or_else(|| std::env::var("JITTER_SPEECH").ok())
        .ok_or_else(|| {
            anyhow::anyhow!("need a speech WAV: scripts/bench-jitter.sh, or -- SPEECH.wav OUT_DIR")
        })?;
    let dir = PathBuf::from(
        positional
            .next()
            .cloned()
            .or_else(|| std::env::var("JITTER_OUT").ok())
            .unwrap_or_else(|| "target/bench-jitter".into()),
    );
    std::fs::create_dir_all(&dir)?;
    let mut speech = read_wav(Path::new(&speech_path))?;
    speech.resize(speech.len().div_ceil(FRAME) * FRAME, 0.0);
    let scored_frames = speech.len() / FRAME;
    let scenarios = [
        Scenario::new("steady", &speech, WARMUP_S, GAP_S),
        Scenario::new("start", &speech, 0.0, 0.0),
    ];
    let seed = choose_seed(&scenarios);
    let complexity: Option<u8> = env_parse("JITTER_ENCODER_COMPLEXITY");
    println!(
        "# speech {speech_path}: {:.2} s = {scored_frames} frames of 20 ms; Opus {} kbit/s, \
         FEC {}, DRED {} ms, encoder complexity {}, decoder complexity {}, \
         burst look-ahead {} frames; bursty loss: mean burst {}; \
         steady: {WARMUP_S} s warm-up + {GAP_S} s silence; seed {seed}",
        speech.len() as f64 / 48_000.0,
        protection().0 / 1000,
        protection().1,
        u32::from(protection().2) * 10,
        complexity.map_or_else(
            || {
                let (bps, fec, dred_10ms) = protection();
                let c = natter::codec::encoder_complexity(bps, fec, dred_10ms, false);
                format!("{c} (natter's)")
            },
            |c| c.to_string()
        ),
        env_parse("JITTER_DECODER_COMPLEXITY").unwrap_or(natter::codec::DECODER_COMPLEXITY),
        jitter_config().burst_lookahead_frames,
        mean_burst(),
    );
    let mut table = Table {
        dir,
        tsv: String::new(),
        delays: "id\tframe\tdelay_ms\n".into(),
        n: 0,
    };
    let header = "id\tscenario\tjitter\tloss\tnominal_loss_pct\tbuffer\trealized_loss_pct\tmean_delay_ms\tp95_delay_ms\tlate_pct\tconcealed_pct\tfec_pct\tdred_pct\trebuffers\taccelerated_ms\texpanded_ms\tdelay_samples\tmerged_delay_samples\twav";
    println!("{header}");
    writeln!(table.tsv, "{header}")?;
    let losses = loss_models();
    let adaptive_only = std::env::var_os("JITTER_ADAPTIVE_ONLY").is_some();
    for sc in &scenarios {
        // Encoding depends only on the expected loss: once per loss model.
        let encoded: Vec<Vec<Vec<u8>>> = losses
            .iter()
            .map(|(_, _, nominal)| encode(&sc.input, *nominal, complexity))
            .collect();
        for (jitter, profile) in jitter_profiles(sc.t0_ms()) {
            for ((loss, model, nominal), packets) in losses.iter().zip(&encoded) {
                let arrivals = sim::arrivals(&profile.with_loss(*model), sc.frames(), seed);
                let cell = Cell {
                    scenario: sc.name,
                    jitter,
                    loss,
                    nominal: *nominal,
                    realized: realized_loss(sc, &arrivals),
                    frames: scored_frames,
                };
                let ours = adaptive(sc, packets, &arrivals, start_config(&profile, seed));
                table.add(&cell, "adaptive", &ours)?;
                if !adaptive_only {
                    let base = fixed(sc, packets, &arrivals, Some(FIXED_MS), true, PLC_WHOLE);
                    table.add(&cell, "fixed60", &base)?;
                }
            }
        }
        if adaptive_only {
            continue;
        }
        // Calibration: ideal buffers on the jitter-free path with random loss.
        if std::env::var_os("JITTER_PROFILES").is_some() {
            continue;
        }
        for ((loss, model, nominal), packets) in losses.iter().zip(&encoded) {
            if matches!(model, Loss::GilbertElliott { .. }) {
                continue;
            }
            let profile = NetworkProfile::constant(30.0).with_loss(*model);
            let arrivals = sim::arrivals(&profile, sc.frames(), seed);
            let cell = Cell {
                scenario: sc.name,
                jitter: "none",
                loss,
                nominal: *nominal,
                realized: realized_loss(sc, &arrivals),
                frames: scored_frames,
            };
            for (name, fec, plc) in [
                ("ideal", true, PLC_WHOLE),
                ("ideal-plc", false, PLC_WHOLE),
                ("ideal-split", true, PLC_SPLIT),
            ] {
                if *nominal > 0 || name == "ideal" {
                    let o = fixed(sc, packets, &arrivals, None, fec, plc);
                    table.add(&cell, name, &o)?;
                }
            }
            // Encoder complexity: both scenarios, clean and 5 % random loss (over
            // COMPLEXITY_SEEDS loss patterns: one file and one pattern are too few to tell
            // small differences), our buffer.
            if *nominal <= 5 && std::env::var_os("JITTER_NO_COMPLEXITY").is_none() {
                for c in COMPLEXITIES {
                    let packets = encode(&sc.input, *nominal, Some(c));
                    let seeds = if *nominal == 0 { 1 } else { COMPLEXITY_SEEDS };
                    for k in 0..seeds {
                        let arrivals = sim::arrivals(&profile, sc.frames(), seed + k);
                        let cell = Cell {
                            realized: realized_loss(sc, &arrivals),
                            ..cell
                        };
                        let o = adaptive(sc, &packets, &arrivals, start_config(&profile, seed + k));
                        table.add(&cell, &format!("opus-c{c}-s{k}"), &o)?;
                    }
                }
            }
        }
    }
    let path = table.dir.join("results.tsv");
    std::fs::write(&path, &table.tsv)?;
    std::fs::write(table.dir.join("delays.tsv"), &table.delays)?;
    println!("# wrote {} rows to {}", table.n, path.display());
    Ok(())
}
