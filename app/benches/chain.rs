//! CPU cost of 20 ms of audio through the whole chain, on one thread, as the engine runs it:
//!
//! - capture: 2 × 10 ms microphone blocks through voice processing (AEC3 with the playback mix
//!   as render reference, noise suppression, AGC2, high-pass), the VAD, and the [`Sender`]
//!   (Opus VOIP, 40 kbit/s, in-band FEC, RTP packetization) — one encoded 20 ms frame;
//! - playback: 4 remote streams, each inserting one real Opus packet (40 kbit/s, FEC) into its
//!   own `JitterBuffer<OpusDecoder>` and pulling 2 × 10 ms blocks, mixed into the render block.
//!
//! Inputs are `natter::measure::speech_like` signals (voiced, formant-shaped, with pauses) so
//! the codecs and the processing do the work they do on speech. Time on the buffers' clock is
//! simulated (20 ms per iteration) and packets arrive on time; the wall clock only measures.
//!
//!   scripts/bench-cpu.sh      (= cargo bench -p natter --bench chain)
//!
//! Environment: CHAIN_RUNS (default 7), CHAIN_ITERATIONS per run (default 1000 = 20 s of audio),
//! CHAIN_DRED=N: the microphone's encoder and the remote streams' senders send N × 10 ms of DRED
//! instead of FEC (expected loss 10 %), as `rate::protection` has them do while losses come in
//! runs; CHAIN_COMPLEXITY=C: the microphone's encoder at libopus complexity C (unset: natter's,
//! which follows the protection, `codec::encoder_complexity`).
//!
//! CHAIN_TABLES=0: the chain only, without the tables below (for `valgrind --tool=callgrind`,
//! which counts the instructions of `Chain::iteration` whatever the machine's load).
//!
//! Afterwards, for the record: voice processing with one stage at a time, the encoder alone
//! at the rate controller's tiers with FEC or DRED, at complexities 10–5 and at natter's (the
//! encoders taking turns of 25 frames, so load on the machine falls on all alike), and the
//! decoder at complexities 4 and 5 (5 turns on deep PLC; libopus is built without OSCE, so 6
//! and 7 decode as 5 does):
//! decoding a packet, concealing a lost 20 ms frame, recovering one from DRED; same settings,
//! same input, CPU time per 20 ms.
//!
//! Two clocks per iteration: the thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`: what the chain
//! costs, not counting time the thread spent descheduled; this is the "% of one core") and wall
//! time (`Instant`: includes preemption by whatever else runs on the machine). The per-stage
//! breakdown is wall time per stage (stages are short, so preemption rarely lands in one; the
//! median is unaffected).

use natter::apm::{BLOCK, VoiceConfig, VoiceProcessor};
use natter::codec::{EncoderConfig, OpusDecoder, OpusEncoder};
use natter::engine::send::{Gate, Sender};
use natter::jitter::{JitterBuffer, JitterConfig};
use natter::measure::speech_like;
use natter::vad::{Vad, VadConfig};
use std::hint::black_box;
use std::time::Instant;

/// 20 ms at 48 kHz.
const FRAME: usize = 2 * BLOCK;
const STREAMS: usize = 4;
/// Iterations before timing starts: 5 s (AEC3 converges, the jitter buffers settle).
const WARMUP: usize = 250;
/// Length of the pre-generated signals (they loop): 20 s.
const SIGNAL_FRAMES: usize = 1_000;

/// Stages timed separately.
const STAGES: [&str; 5] = ["apm", "vad", "encode", "4x jb+decode", "mix"];

struct Chain {
    voice: VoiceProcessor,
    vad: Vad,
    sender: Sender,
    peers: Vec<JitterBuffer<OpusDecoder>>,
    mic: Vec<f32>,
    remote: Vec<Vec<Vec<u8>>>,
    block: Vec<f32>,
    mix: Vec<f32>,
    capture: Vec<f32>,
    sent_bytes: usize,
    frame: usize,
}

impl Chain {
    fn new() -> anyhow::Result<Self> {
        let mut voice = VoiceProcessor::new(VoiceConfig::ALL)?;
        voice.set_stream_delay_ms(40.0);
        let seconds = (SIGNAL_FRAMES * FRAME) as f32 / 48_000.0;
        let mic = speech_like(48_000, seconds, 1);
        // Remote streams: pre-encoded the way their senders would (40 kbit/s, FEC), every
        // frame sent (no DTX) so that every iteration decodes four real packets.
        let remote_config = EncoderConfig {
            dtx: false,
            ..sender_config()
        };
        let mut remote = Vec::new();
        for s in 0..STREAMS {
            let mut enc = OpusEncoder::new(remote_config)?;
            let signal = speech_like(48_000, seconds, 100 + s as u64);
            let mut packets = Vec::with_capacity(SIGNAL_FRAMES);
            for frame in signal.chunks_exact(FRAME) {
                let mut p = Vec::new();
                enc.encode(frame, &mut p)?;
                packets.push(p);
            }
            remote.push(packets);
        }
        let peers = (0..STREAMS)
            .map(|_| {
                Ok(JitterBuffer::new(
                    JitterConfig::default(),
                    OpusDecoder::new()?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            voice,
            vad: Vad::new(VadConfig::default()),
            sender: Sender::new(0x4e41_5454, FRAME, sender_config())?,
            peers,
            mic,
            remote,
            block: vec![0.0; BLOCK],
            mix: vec![0.0; BLOCK],
            capture: vec![0.0; BLOCK],
            sent_bytes: 0,
            frame: 0,
        })
    }

    /// Processes 20 ms; returns the time spent per stage, µs.
    fn iteration(&mut self, times: &mut [f64; STAGES.len()]) {
        let k = self.frame;
        self.frame += 1;
        let now0 = k as f64 * 20.0;
        for b in 0..2 {
            let now = now0 + b as f64 * 10.0;
            // Playback: the network delivers one packet per stream per frame.
            self.mix.fill(0.0);
            for (s, jb) in self.peers.iter_mut().enumerate() {
                let t = Instant::now();
                if b == 0 {
                    let packets = &self.remote[s];
                    let payload = &packets[k % packets.len()];
                    jb.insert(k as u16, (k * FRAME) as u32, payload, now);
                }
                jb.pull(&mut self.block, now);
                let m = Instant::now();
                for (o, x) in self.mix.iter_mut().zip(&self.block) {
                    *o += *x;
                }
                times[3] += (m - t).as_secs_f64() * 1e6;
                times[4] += m.elapsed().as_secs_f64() * 1e6;
            }
            // The mix is what the speaker plays, and the echo canceller's reference.
            let m = Instant::now();
            for o in &mut self.mix {
                *o = o.clamp(-1.0, 1.0);
            }
            let t_render = Instant::now();
            times[4] += (t_render - m).as_secs_f64() * 1e6;
            self.voice.process_render(&self.mix);
            // Capture.
            let start = (k % SIGNAL_FRAMES) * FRAME + b * BLOCK;
            self.capture
                .copy_from_slice(&self.mic[start..start + BLOCK]);
            self.voice.process_capture(&mut self.capture);
            let t_vad = Instant::now();
            times[0] += (t_vad - t_render).as_secs_f64() * 1e6;
            let voice = self.vad.process(&self.capture);
            let t_enc = Instant::now();
            times[1] += (t_enc - t_vad).as_secs_f64() * 1e6;
            let gate = Gate {
                transmit: true,
                voice,
            };
            let sent = &mut self.sent_bytes;
            self.sender
                .push(&self.capture, now + 10.0, gate, &mut |d| *sent += d.len());
            times[2] += t_enc.elapsed().as_secs_f64() * 1e6;
        }
        black_box(&self.mix);
    }
}

/// The senders' settings: natter's defaults, with `CHAIN_DRED` × 10 ms of DRED instead of FEC
/// (libopus sends DRED only when it plans for loss: 10 %) and the complexity `CHAIN_COMPLEXITY`
/// (unset: natter's, which follows the protection, `codec::encoder_complexity`).
fn sender_config() -> EncoderConfig {
    let dred_10ms = env_usize("CHAIN_DRED", 0).min(104) as u8;
    let base = EncoderConfig {
        complexity: std::env::var("CHAIN_COMPLEXITY")
            .ok()
            .and_then(|v| v.parse::<u8>().ok())
            .map(|c| c.min(10)),
        ..EncoderConfig::default()
    };
    if dred_10ms == 0 {
        return base;
    }
    EncoderConfig {
        dred_10ms,
        fec: false,
        expected_loss_pct: 10,
        ..base
    }
}

/// CPU time this thread has used, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time per 20 ms of encoding `signal` with each of `configs` (one encoder each), the
/// encoders taking turns (25 frames each, in rotating order) so that the machine's load falls
/// on all of them alike;
/// `frame` samples per frame. Medians and p95s, one per config.
fn encode_costs(
    signal: &[f32],
    frame: usize,
    configs: &[EncoderConfig],
) -> anyhow::Result<Vec<(f64, f64)>> {
    let mut encoders = configs
        .iter()
        .map(|c| natter::codec::OpusEncoder::new(*c))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(natter::codec::MAX_PACKET);
    let mut times = vec![Vec::new(); configs.len()];
    let frames = signal.len() / frame;
    let n = encoders.len();
    let all: Vec<&[f32]> = signal
        .chunks_exact(frame)
        .cycle()
        .take(3 * frames / 2)
        .collect();
    // Turns of 25 frames: short enough that the machine's load falls on every encoder alike,
    // long enough that an encoder does not inherit caches and branch history warmed by the one
    // before it (frame by frame, twins measured 10-15 % apart).
    for (k, turn) in all.chunks(25).enumerate() {
        for i in (0..n).map(|i| (i + k) % n) {
            for f in turn {
                let c0 = thread_cpu_ns();
                encoders[i].encode(f, &mut out)?;
                times[i].push((thread_cpu_ns() - c0) as f64 / 1e3 * FRAME as f64 / frame as f64);
                black_box(out.len());
            }
        }
    }
    Ok(times
        .iter()
        .map(|t| {
            let s = sorted(&t[frames / 2..]);
            (percentile(&s, 50.0), percentile(&s, 95.0))
        })
        .collect())
}

/// Packets of `signal` (20 ms, 40 kbit/s) with in-band FEC or, with `dred_10ms` > 0, with
/// DRED and FEC off.
fn packets(signal: &[f32], dred_10ms: u8) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut enc = natter::codec::OpusEncoder::new(EncoderConfig {
        fec: dred_10ms == 0,
        dred_10ms,
        expected_loss_pct: 10,
        dtx: false,
        ..EncoderConfig::default()
    })?;
    signal
        .chunks_exact(FRAME)
        .map(|frame| {
            let mut p = Vec::new();
            enc.encode(frame, &mut p)?;
            Ok(p)
        })
        .collect()
}

/// CPU time of one 20 ms frame at decoder complexity `c`: decoding a packet, concealing a lost
/// frame (after decoded audio, as a loss does), and recovering one from DRED (the frame before a
/// DRED packet, parse included); medians, µs.
fn decode_costs(plain: &[Vec<u8>], dred: &[Vec<u8>], c: u8) -> anyhow::Result<[f64; 3]> {
    use natter::jitter::Decode;
    let mut dec = OpusDecoder::with_complexity(c)?;
    let mut out = Vec::with_capacity(5_760);
    let (mut decode, mut conceal, mut redundancy) = (Vec::new(), Vec::new(), Vec::new());
    for (i, p) in plain.iter().enumerate() {
        out.clear();
        let c0 = thread_cpu_ns();
        if i % 4 == 3 {
            dec.conceal(FRAME, &mut out);
            conceal.push((thread_cpu_ns() - c0) as f64 / 1e3);
        } else {
            let _ = dec.decode(p, &mut out);
            decode.push((thread_cpu_ns() - c0) as f64 / 1e3);
        }
        black_box(out.len());
    }
    let mut dec = OpusDecoder::with_complexity(c)?;
    for (i, p) in dred.iter().enumerate() {
        out.clear();
        if i % 4 == 3 && i + 1 < dred.len() {
            let c0 = thread_cpu_ns();
            if dec
                .decode_redundancy(&dred[i + 1], FRAME, FRAME, &mut out)
                .is_ok()
            {
                redundancy.push((thread_cpu_ns() - c0) as f64 / 1e3);
            } else {
                dec.conceal(FRAME, &mut out);
            }
        } else {
            let _ = dec.decode(p, &mut out);
        }
        black_box(out.len());
    }
    let median = |v: Vec<f64>| {
        if v.is_empty() {
            f64::NAN
        } else {
            percentile(&sorted(&v), 50.0)
        }
    };
    Ok([median(decode), median(conceal), median(redundancy)])
}

/// CPU time of 20 ms (2 render + 2 capture blocks) of voice processing with `config`.
fn apm_cost(mic: &[f32], far: &[f32], config: VoiceConfig) -> anyhow::Result<(f64, f64)> {
    let mut vp = VoiceProcessor::new(config)?;
    vp.set_stream_delay_ms(40.0);
    let mut block = vec![0.0; BLOCK];
    let mut times = Vec::new();
    let blocks = mic.chunks_exact(BLOCK).zip(far.chunks_exact(BLOCK));
    for (k, (m, f)) in blocks.cycle().take(3 * SIGNAL_FRAMES).enumerate() {
        let c0 = thread_cpu_ns();
        vp.process_render(f);
        block.copy_from_slice(m);
        vp.process_capture(&mut block);
        let t = (thread_cpu_ns() - c0) as f64 / 1e3;
        // Pairs of 10 ms blocks make 20 ms; skip the first 5 s (AEC3 converging).
        if k % 2 == 0 {
            times.push(t);
        } else if let Some(last) = times.last_mut() {
            *last += t;
        }
    }
    let s = sorted(&times[WARMUP..]);
    Ok((percentile(&s, 50.0), percentile(&s, 95.0)))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not: skip there.
    if !std::env::args().any(|a| a == "--bench") {
        println!("chain: run with `cargo bench --bench chain`");
        return Ok(());
    }
    let runs = env_usize("CHAIN_RUNS", 7);
    let iterations = env_usize("CHAIN_ITERATIONS", 1_000);
    let mut chain = Chain::new()?;
    let mut scratch = [0.0; STAGES.len()];
    for _ in 0..WARMUP {
        chain.iteration(&mut scratch);
    }
    let sender = sender_config();
    println!(
        "chain: 20 ms per iteration = APM (AEC3+NS+AGC2+HPF) 2x10 ms + VAD + Opus {} kbit/s FEC {} \
         DRED {} ms encode at complexity {} + {STREAMS} x (jitter buffer + Opus decode at \
         complexity {}, 2x10 ms pulls) + mix",
        sender.bitrate_bps / 1000,
        sender.fec,
        u32::from(sender.dred_10ms) * 10,
        OpusEncoder::new(sender)?.complexity(),
        natter::codec::DECODER_COMPLEXITY,
    );
    println!("{runs} runs x {iterations} iterations after {WARMUP} warm-up iterations");
    let mut wall = Vec::with_capacity(runs * iterations);
    let mut cpu = Vec::with_capacity(runs * iterations);
    let mut stages: Vec<Vec<f64>> = vec![Vec::with_capacity(runs * iterations); STAGES.len()];
    let mut run_medians = Vec::new();
    for run in 0..runs {
        let mut run_cpu = Vec::with_capacity(iterations);
        let mut run_wall = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let mut t = [0.0; STAGES.len()];
            let c0 = thread_cpu_ns();
            let start = Instant::now();
            chain.iteration(&mut t);
            let w = start.elapsed().as_secs_f64() * 1e6;
            let c = (thread_cpu_ns() - c0) as f64 / 1e3;
            run_wall.push(w);
            run_cpu.push(c);
            for (s, v) in stages.iter_mut().zip(t) {
                s.push(v);
            }
        }
        let (c, w) = (sorted(&run_cpu), sorted(&run_wall));
        let median = percentile(&c, 50.0);
        println!(
            "run {}: CPU median {median:6.1} us p95 {:6.1} us ({:.2} % of one core) | wall median {:6.1} us p95 {:7.1} us",
            run + 1,
            percentile(&c, 95.0),
            median / 200.0,
            percentile(&w, 50.0),
            percentile(&w, 95.0),
        );
        run_medians.push(median);
        cpu.extend(run_cpu);
        wall.extend(run_wall);
    }
    let (cpu, wall) = (sorted(&cpu), sorted(&wall));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (median, p95) = (percentile(&cpu, 50.0), percentile(&cpu, 95.0));
    let medians = sorted(&run_medians);
    println!();
    println!(
        "| per 20 ms of audio | median us | mean us | p95 us | % of one core (median / p95) |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, v) in STAGES.iter().zip(&stages) {
        let s = sorted(v);
        let (m, p) = (percentile(&s, 50.0), percentile(&s, 95.0));
        println!(
            "| {name} (wall) | {m:.1} | {:.1} | {p:.1} | {:.3} / {:.3} |",
            mean(&s),
            m / 200.0,
            p / 200.0
        );
    }
    println!(
        "| **whole chain, CPU time** | **{median:.1}** | {:.1} | {p95:.1} | **{:.2}** / {:.2} |",
        mean(&cpu),
        median / 200.0,
        p95 / 200.0
    );
    let (wm, wp) = (percentile(&wall, 50.0), percentile(&wall, 95.0));
    println!(
        "| whole chain, wall time | {wm:.1} | {:.1} | {wp:.1} | {:.2} / {:.2} |",
        mean(&wall),
        wm / 200.0,
        wp / 200.0
    );
    println!();
    println!(
        "spread of the runs' CPU medians: {:.1}..{:.1} us; encoded {} bytes in {} frames",
        medians[0],
        medians[medians.len() - 1],
        chain.sent_bytes,
        chain.frame
    );
    println!(
        "RESULT cpu_median_us={median:.1} cpu_p95_us={p95:.1} core_pct={:.3} p95_core_pct={:.3} wall_median_us={wm:.1} wall_p95_us={wp:.1}",
        median / 200.0,
        p95 / 200.0
    );
    if env_usize("CHAIN_TABLES", 1) == 0 {
        return Ok(());
    }
    println!();
    println!("| Voice processing alone | CPU median us / 20 ms | p95 us | % of one core |");
    println!("|---|---:|---:|---:|");
    let far = speech_like(48_000, (SIGNAL_FRAMES * FRAME) as f32 / 48_000.0, 7);
    let none = VoiceConfig::NONE;
    for (name, config) in [
        ("all stages (ours)", VoiceConfig::ALL),
        (
            "echo cancellation (AEC3) only",
            VoiceConfig {
                echo_cancellation: true,
                ..none
            },
        ),
        (
            "noise suppression only",
            VoiceConfig {
                noise_suppression: true,
                ..none
            },
        ),
        (
            "gain control (AGC2) only",
            VoiceConfig {
                gain_control: true,
                ..none
            },
        ),
        (
            "high-pass filter only",
            VoiceConfig {
                high_pass: true,
                ..none
            },
        ),
    ] {
        let (m, p) = apm_cost(&chain.mic, &far, config)?;
        println!("| {name} | {m:.1} | {p:.1} | {:.2} |", m / 200.0);
    }
    println!();
    // The rate controller's tiers with the protection `rate::protection` gives each (DRED
    // from 32 kbit/s, planned for 10 % loss as in the chain), at each complexity and at the one
    // natter picks (`codec::encoder_complexity`).
    let rows: [(&str, i32, usize, bool, u8); 5] = [
        ("40 kbit/s, FEC", 40_000, FRAME, true, 0),
        ("40 kbit/s, DRED 500 ms, FEC off", 40_000, FRAME, false, 50),
        ("32 kbit/s, FEC", 32_000, FRAME, true, 0),
        ("32 kbit/s, DRED 500 ms, FEC off", 32_000, FRAME, false, 50),
        ("24 kbit/s, 40 ms frames, FEC", 24_000, 2 * FRAME, true, 0),
    ];
    let complexities = [10u8, 9, 8, 7, 6, 5];
    let columns: Vec<String> = complexities.iter().map(|c| c.to_string()).collect();
    println!(
        "| Opus encoder alone, CPU median us / 20 ms | {} | ours |",
        columns.join(" | ")
    );
    println!("|---|{}---:|", "---:|".repeat(complexities.len()));
    for (name, bitrate_bps, frame, fec, dred_10ms) in rows {
        let base = EncoderConfig {
            bitrate_bps,
            fec,
            dred_10ms,
            expected_loss_pct: if dred_10ms > 0 { 10 } else { 2 },
            ..EncoderConfig::default()
        };
        let configs: Vec<EncoderConfig> = complexities
            .iter()
            .map(|&c| EncoderConfig {
                complexity: Some(c),
                ..base
            })
            .chain([base])
            .collect();
        let costs = encode_costs(&chain.mic, frame, &configs)?;
        let cells: Vec<String> = costs.iter().map(|(m, _)| format!("{m:.1}")).collect();
        let ours = natter::codec::OpusEncoder::new(base)?.complexity();
        println!("| {name} | {} ({ours}) |", cells.join(" | "));
    }
    println!();
    println!(
        "| Opus decoder, 40 kbit/s | decode µs / 20 ms | deep PLC or PLC µs / concealed 20 ms | DRED µs / recovered 20 ms |"
    );
    println!("|---|---:|---:|---:|");
    let plain = packets(&chain.mic, 0)?;
    let dred = packets(&chain.mic, 50)?;
    for c in [4u8, 5] {
        let [d, plc, r] = decode_costs(&plain, &dred, c)?;
        let ours = if c == natter::codec::DECODER_COMPLEXITY {
            " (ours)"
        } else {
            ""
        };
        println!("| complexity {c}{ours} | {d:.1} | {plc:.1} | {r:.1} |");
    }
    Ok(())
}
