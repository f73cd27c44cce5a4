//! Recovery of lost bursts from the deep redundancy (DRED) of the packet after them: with the
//! fake codec (which frame fills which slot, in which order) and with real Opus and speech (the
//! recovered audio follows the speech, where concealment does not).

use super::*;
use crate::codec::{EncoderConfig, OpusDecoder, OpusEncoder};

/// A constant 5 ms path: frame `i` of `samples` leaves when it is complete. Returns the
/// packets and when to stop pulling (after the last frame played with up to 450 ms of margin).
fn packets(sizes: &[(u16, usize)], lost: impl Fn(u32) -> bool, redundancy: u8) -> (Vec<Pkt>, f64) {
    let mut pkts = Vec::new();
    let (mut t, mut ts, mut seq, mut frame) = (0.0, TS0, SEQ0, 0u32);
    for &(samples, count) in sizes {
        for _ in 0..count {
            t += f64::from(samples) / 48.0;
            if !lost(frame) {
                let mut payload = payload(frame, samples).to_vec();
                payload.extend_from_slice(&[255, redundancy]);
                pkts.push(Pkt {
                    at: t + 5.0,
                    seq,
                    ts,
                    payload,
                });
            }
            ts = ts.wrapping_add(u32::from(samples));
            seq = seq.wrapping_add(1);
            frame += 1;
        }
    }
    (pkts, t + 480.0)
}

/// Concealment asked for before the stream's last frame was decoded (after it, the buffer
/// runs dry because the stream ended), samples.
fn concealed_inside(log: &[Event]) -> usize {
    let last = log
        .iter()
        .rposition(|e| matches!(e, Event::Decode(_)))
        .unwrap_or(0);
    log[..last]
        .iter()
        .map(|e| match e {
            Event::Plc(n) => *n,
            _ => 0,
        })
        .sum()
}

/// A buffer that holds `ms` of margin from the start: the packet after a burst of up to that
/// length is here before the burst's first frame is due.
fn margin(ms: f64) -> JitterConfig {
    JitterConfig {
        min_target_ms: ms,
        initial_target_ms: ms,
        ..JitterConfig::default()
    }
}

/// The frames whose audio was played from their own packet, FEC or DRED, in playing order.
fn played_frames(log: &[Event]) -> Vec<u32> {
    log.iter()
        .filter_map(|e| match *e {
            Event::Decode(f) | Event::Fec(f) | Event::Dred(f) => Some(f),
            _ => None,
        })
        .collect()
}

/// Bursts of 3, 5 and 20 packets: the first packet after each (its redundancy reaching 25
/// frames back) fills every lost slot — FEC the last, DRED the ones before — each exactly once
/// and in order, nothing concealed.
#[test]
fn bursts_of_3_5_and_20_are_recovered_from_the_next_packets_redundancy() {
    let bursts = [(100..103), (150..155), (200..220)];
    let lost = |f: u32| bursts.iter().any(|b| b.contains(&f));
    let (mut pkts, end) = packets(&[(960, 300)], lost, 25);
    let (jb, probe) = play(&mut pkts, end, margin(450.0), Voice::Level);
    let s = jb.stats();
    let played = played_frames(&jb.decoder().log);
    assert!(is_in_order_without_gaps(&played), "{played:?}");
    assert_eq!(played.len(), 300);
    for b in &bursts {
        let last = b.end - 1;
        assert!(jb.decoder().log.contains(&Event::Fec(last)), "{b:?}");
        assert!(
            (b.start..last).all(|f| jb.decoder().log.contains(&Event::Dred(f))),
            "{b:?}"
        );
    }
    assert_eq!(
        (s.fec_recovered, s.dred_recovered),
        (3, 2 + 4 + 19),
        "{s:?}"
    );
    assert_eq!((s.concealed, s.late, s.rebuffers), (0, 0, 0), "{s:?}");
    assert_eq!(probe.clicks, 0);
}

/// Redundancy reaching 4 frames back: of a 20-packet burst the last four are recovered (FEC and
/// three from DRED), the first sixteen concealed (100 ms of concealment, then faded to
/// silence), in order.
#[test]
fn what_the_redundancy_does_not_reach_is_concealed() {
    let lost = |f: u32| (200..220).contains(&f);
    let (mut pkts, end) = packets(&[(960, 300)], lost, 4);
    let (jb, _) = play(&mut pkts, end, margin(450.0), Voice::Level);
    let s = jb.stats();
    let log = &jb.decoder().log;
    let played = played_frames(log);
    assert_eq!(played.len(), 284);
    assert!(played.windows(2).all(|w| w[0] < w[1]), "{played:?}");
    assert!((216..219).all(|f| log.contains(&Event::Dred(f))));
    assert!(log.contains(&Event::Fec(219)));
    assert_eq!((s.fec_recovered, s.dred_recovered), (1, 3), "{s:?}");
    // 100 ms of concealment, then one quantum more that the fade to silence fades out.
    assert_eq!(concealed_inside(log), 4_800 + 120);
}

/// An older client whose packets carry no redundancy: the same bursts are concealed (the last
/// frame of each from FEC) and the stream plays on, in order.
#[test]
fn a_stream_without_redundancy_still_plays() {
    let bursts = [(100..103), (150..155)];
    let lost = |f: u32| bursts.iter().any(|b| b.contains(&f));
    let (mut pkts, end) = packets(&[(960, 300)], lost, 0);
    let (jb, probe) = play(&mut pkts, end, margin(450.0), Voice::Tone);
    let s = jb.stats();
    let decoded = jb.decoder().decoded();
    assert_eq!(decoded.len(), 300 - 8);
    assert!(decoded.windows(2).all(|w| w[0] < w[1]));
    assert_eq!((s.fec_recovered, s.dred_recovered), (2, 0), "{s:?}");
    // Six frames concealed, and before each FEC recovery the quantum of concealment the fake's
    // merge crossfades from.
    assert_eq!(concealed_inside(&jb.decoder().log), 6 * 960 + 2 * 120);
    assert_eq!((s.late, s.rebuffers, probe.clicks), (0, 0, 0), "{s:?}");
}

/// 10, 20 and 40 ms frames, each size with a burst of 3: every slot filled once, in order.
#[test]
fn mixed_frame_sizes_are_recovered_slot_by_slot() {
    let sizes = [(480, 200), (960, 100), (1_920, 50), (960, 100)];
    let bursts = [(100..103), (250..253), (330..333), (400..403)];
    let lost = |f: u32| bursts.iter().any(|b| b.contains(&f));
    let (mut pkts, end) = packets(&sizes, lost, 10);
    let (jb, probe) = play(&mut pkts, end - 250.0, margin(200.0), Voice::Level);
    let s = jb.stats();
    let played = played_frames(&jb.decoder().log);
    assert!(is_in_order_without_gaps(&played), "{played:?}");
    assert_eq!(played.len(), 450);
    assert_eq!((s.fec_recovered, s.dred_recovered), (4, 8), "{s:?}");
    assert_eq!(concealed_inside(&jb.decoder().log), 0);
    assert_eq!((s.late, probe.clicks), (0, 0), "{s:?}");
}

/// Without the burst look-ahead the adaptive buffer does not wait for redundancy: concealment
/// it played while the packet after a burst was on its way stays, and only the rest of the
/// burst is recovered — the unplayed part of a slot from DRED, the last frame from FEC. Never a
/// frame twice or out of order, and never more audio than was lost.
#[test]
fn a_live_buffer_recovers_what_it_has_not_played_yet() {
    let bursts: Vec<std::ops::Range<u32>> = (0..20).map(|k| 100 + 40 * k..103 + 40 * k).collect();
    let lost = |f: u32| bursts.iter().any(|b| b.contains(&f));
    let (mut pkts, end) = packets(&[(960, 1_000)], lost, 25);
    let config = JitterConfig {
        burst_lookahead_frames: 0,
        ..JitterConfig::default()
    };
    let (jb, probe) = play(&mut pkts, end, config, Voice::Tone);
    let s = jb.stats();
    let log = &jb.decoder().log;
    let played = played_frames(log);
    println!("{s:?}");
    assert!(played.windows(2).all(|w| w[0] < w[1]), "{played:?}");
    // Every burst: the last frame from FEC, and at least what waiting had not yet concealed
    // of the one before it from DRED.
    assert_eq!(s.fec_recovered, 20, "{s:?}");
    assert!(s.dred_recovered >= 20, "{s:?}");
    for b in &bursts {
        assert!(log.contains(&Event::Fec(b.end - 1)), "{b:?}");
        assert!(log.contains(&Event::Dred(b.end - 2)), "{b:?}");
    }
    // At most the first 40 ms of each 60 ms burst concealed.
    assert!(concealed_inside(log) <= 20 * 40 * 48, "{s:?}");
    assert_eq!((s.late, probe.clicks), (0, 0), "{s:?}");
}

/// By default ([`JitterConfig::burst_lookahead_frames`] 2) the buffer holds two frames more
/// while bursts are recent: after the first burst of 3 (which it has to learn from, and partly
/// conceals like the default), the packet after every later one is here while the whole burst
/// is still unplayed, so it is recovered whole — FEC the last frame, DRED the two before —
/// where the default conceals part of each. In order, each frame once; 40 ms more delay.
#[test]
fn burst_lookahead_recovers_whole_bursts_once_bursts_are_seen() {
    let bursts: Vec<std::ops::Range<u32>> = (0..20).map(|k| 100 + 40 * k..103 + 40 * k).collect();
    let lost = |f: u32| bursts.iter().any(|b| b.contains(&f));
    let (plain, _) = play_lookahead(lost, 25, 0);
    let (ahead, probe) = play_lookahead(lost, 25, JitterConfig::default().burst_lookahead_frames);
    let log = &ahead.decoder().log;
    let played = played_frames(log);
    assert!(played.windows(2).all(|w| w[0] < w[1]), "{played:?}");
    for b in &bursts[1..] {
        assert!(log.contains(&Event::Fec(b.end - 1)), "{b:?}");
        assert!(
            (b.start..b.end - 1).all(|f| log.contains(&Event::Dred(f))),
            "{b:?}"
        );
    }
    // Only the first burst is (partly) concealed; the default conceals part of every one.
    let concealed = concealed_inside(log);
    assert!(concealed <= 40 * 48, "{concealed}");
    assert!(concealed_inside(&plain.decoder().log) >= 20 * 10 * 48);
    let (s, p) = (ahead.stats(), plain.stats());
    assert_eq!(s.fec_recovered, 20, "{s:?}");
    assert!(s.dred_recovered >= 19 * 2, "{s:?}");
    assert!(
        (s.delay_ms - p.delay_ms - 40.0).abs() <= 5.0,
        "{} vs {}",
        s.delay_ms,
        p.delay_ms
    );
    assert_eq!((s.late, probe.clicks), (0, 0), "{s:?}");
}

/// Waiting pays only for redundancy: bursts in a stream whose packets carry none (an older
/// client, or a sender protecting with FEC alone) leave the burst look-ahead off.
#[test]
fn burst_lookahead_waits_only_for_a_stream_with_redundancy() {
    let bursts: Vec<std::ops::Range<u32>> = (0..20).map(|k| 100 + 40 * k..103 + 40 * k).collect();
    let lost = |f: u32| bursts.iter().any(|b| b.contains(&f));
    assert_lookahead_changes_nothing(lost, 0);
}

/// Isolated losses are not bursts: with burst look-ahead configured, a stream that loses one
/// packet at a time plays exactly as with none (same decoder calls, same delay).
#[test]
fn burst_lookahead_leaves_isolated_losses_alone() {
    let lost = |f: u32| f >= 100 && f.is_multiple_of(20);
    let ahead = assert_lookahead_changes_nothing(lost, 25);
    assert!(ahead.stats().fec_recovered >= 40, "{:?}", ahead.stats());
}

/// 1,000 frames of 20 ms on a constant path, losing `lost`, every packet carrying `redundancy`
/// frames of it, played by a buffer with `frames` of burst look-ahead.
fn play_lookahead(
    lost: impl Fn(u32) -> bool,
    redundancy: u8,
    frames: u8,
) -> (JitterBuffer<Fake>, Probe) {
    let (mut pkts, end) = packets(&[(960, 1_000)], lost, redundancy);
    let config = JitterConfig {
        burst_lookahead_frames: frames,
        ..JitterConfig::default()
    };
    play(&mut pkts, end, config, Voice::Tone)
}

/// The same stream plays identically (same decoder calls, same delay) with two frames of burst
/// look-ahead as with none; returns the former.
fn assert_lookahead_changes_nothing(
    lost: impl Fn(u32) -> bool + Copy,
    redundancy: u8,
) -> JitterBuffer<Fake> {
    let (plain, _) = play_lookahead(lost, redundancy, 0);
    let (ahead, _) = play_lookahead(lost, redundancy, 2);
    assert_eq!(plain.decoder().log, ahead.decoder().log);
    assert_eq!(plain.stats().delay_ms, ahead.stats().delay_ms);
    ahead
}

/// Real Opus: speech encoded with DRED (500 ms, in-band FEC off, 32 kbit/s) over a path that
/// loses bursts of 3, 5 and 20 packets inside words, played through the buffer with enough
/// margin for the packet after each burst to be here in time. Over each burst the output's
/// spectral envelope follows the sent speech; with the same packets but no redundancy (deep PLC
/// only) it does not.
#[test]
fn real_opus_bursts_are_recovered_where_concealment_is_not() {
    // Three talkers of the synthetic voice (the codec2 recording is fetched only by the
    // benches): DRED's vocoder, trained on real speech, follows it less well than real speech,
    // and how well varies by talker, so the means over the three decide (measured per talker
    // and burst of 3 / 5 / 20: DRED 0.36–0.84 / 0.16–0.80 / 0.70–0.81, deep PLC −0.09–0.63 /
    // −0.25–−0.05 / 0.15–0.46).
    let mut sums = [(0.0, 0.0); 3];
    for seed in 1..=3 {
        let speech = crate::measure::speech_like(48_000, 8.0, seed);
        let bursts = voiced_bursts(&speech, &[3, 5, 20]);
        let with = play_opus(&speech, &bursts, 104);
        let without = play_opus(&speech, &bursts, 0);
        assert!(with.1.dred_recovered >= 2 + 4 + 19, "{:?}", with.1);
        assert_eq!(without.1.dred_recovered, 0, "{:?}", without.1);
        for (i, b) in bursts.iter().enumerate() {
            let dred = envelope_correlation(&speech, &with.0, b);
            let plc = envelope_correlation(&speech, &without.0, b);
            println!(
                "talker {seed}, burst of {}: DRED {dred:.2}, deep PLC {plc:.2}",
                b.len()
            );
            sums[i].0 += dred / 3.0;
            sums[i].1 += plc / 3.0;
        }
    }
    for ((dred, plc), len) in sums.into_iter().zip([3, 5, 20]) {
        println!("burst of {len}: mean envelope correlation DRED {dred:.2}, deep PLC {plc:.2}");
        assert!(dred >= 0.45, "burst of {len}: DRED {dred:.2}");
        assert!(
            dred >= plc + 0.2,
            "burst of {len}: DRED {dred:.2}, PLC {plc:.2}"
        );
    }
}

/// Bursts of the given lengths (in 20 ms frames) placed in speech: each starts at a frame
/// louder than −20 dB of the speech's peak frame, and covers at least as much sound as
/// silence (mean power above −30 dB of the peak).
fn voiced_bursts(speech: &[f32], lens: &[usize]) -> Vec<std::ops::Range<usize>> {
    let power: Vec<f32> = speech
        .chunks(960)
        .map(|f| f.iter().map(|s| s * s).sum::<f32>() / f.len() as f32)
        .collect();
    let peak = power.iter().copied().fold(0.0, f32::max);
    let mut from = 50;
    lens.iter()
        .map(|&len| {
            let start = (from..power.len() - len - 30)
                .find(|&i| {
                    let mean = power[i..i + len].iter().sum::<f32>() / len as f32;
                    power[i] > peak * 1e-2 && mean > peak * 1e-3
                })
                .expect("speech long enough for the bursts");
            from = start + len + 30;
            start..start + len
        })
        .collect()
}

/// Encodes `speech` in 20 ms frames (DRED of `dred_10ms`, FEC off), drops `bursts`, plays the
/// rest through a buffer with 450 ms of margin on a constant path. Returns the output with
/// sample 0 at the capture of the speech's sample 0 (the buffer's constant offset removed by
/// aligning the first second), and the stats.
fn play_opus(
    speech: &[f32],
    bursts: &[std::ops::Range<usize>],
    dred_10ms: u8,
) -> (Vec<f32>, JitterStats) {
    let mut enc = OpusEncoder::new(EncoderConfig {
        bitrate_bps: 40_000,
        expected_loss_pct: 20,
        fec: false,
        dtx: false,
        dred_10ms,
        ..EncoderConfig::default()
    })
    .unwrap();
    let mut jb = JitterBuffer::new(margin(450.0), OpusDecoder::new().unwrap());
    let frames: Vec<Vec<u8>> = speech
        .chunks_exact(960)
        .map(|f| {
            let mut p = Vec::new();
            enc.encode(f, &mut p).unwrap();
            p
        })
        .collect();
    let mut out = Vec::new();
    let mut block = [0.0f32; 480];
    let mut now = 0.3;
    let mut next = 0;
    let end = frames.len() as f64 * 20.0 + 600.0;
    while now < end {
        // Frame i leaves at (i + 1) · 20 ms and arrives 5 ms later.
        while next < frames.len() && (next as f64 + 1.0) * 20.0 + 5.0 <= now {
            if !bursts.iter().any(|b| b.contains(&next)) {
                let (seq, ts) = numbering(next);
                jb.insert(seq, ts, &frames[next], (next as f64 + 1.0) * 20.0 + 5.0);
            }
            next += 1;
        }
        jb.pull(&mut block, now);
        out.extend_from_slice(&block);
        now += 10.0;
    }
    let stats = jb.stats();
    let (lag, score) =
        crate::measure::best_alignment(&speech[9_600..57_600], &out, 48_000).unwrap();
    assert!(score > 0.7, "clean speech decodes: alignment score {score}");
    let lag = lag.round() as usize - 9_600;
    (out[lag..].to_vec(), stats)
}

/// How well the output follows the sent speech's spectral envelope over `burst` (20 ms
/// frames): the correlation of the log band energies (5 ms frames × 8 bands of 1 kHz) of `out`
/// and `speech` after removing each band's mean over the burst — i.e. of how the spectrum
/// *changes* — which is insensitive to the waveform's phase (DRED's vocoder does not reproduce
/// it) and to a concealment that merely holds the last spectrum.
fn envelope_correlation(speech: &[f32], out: &[f32], burst: &std::ops::Range<usize>) -> f64 {
    let span = burst.start * 960..burst.end * 960;
    let centred = |x: &[f32]| {
        let mut e = band_energies(x);
        for band in 0..8 {
            let n = e.len() / 8;
            let mean = (0..n).map(|i| e[i * 8 + band]).sum::<f64>() / n as f64;
            (0..n).for_each(|i| e[i * 8 + band] -= mean);
        }
        e
    };
    let a = centred(&speech[span.clone()]);
    let b = centred(&out[span]);
    let cov: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    let va: f64 = a.iter().map(|x| x * x).sum();
    let vb: f64 = b.iter().map(|y| y * y).sum();
    cov / (va * vb).sqrt().max(1e-12)
}

/// Log energies of 8 bands of 1 kHz for every 5 ms (240 samples, Hann window, direct DFT at
/// the band's bins: small and plenty for a test).
fn band_energies(x: &[f32]) -> Vec<f64> {
    const N: usize = 240;
    let mut out = Vec::new();
    for frame in x.chunks_exact(N) {
        let mut bands = [0.0f64; 8];
        // Bins of 200 Hz: 1..40 cover 200 Hz – 8 kHz.
        for k in 1..40 {
            let (mut re, mut im) = (0.0f64, 0.0f64);
            for (n, &s) in frame.iter().enumerate() {
                let w = 0.5 - 0.5 * (std::f64::consts::TAU * n as f64 / N as f64).cos();
                let ph = std::f64::consts::TAU * (k * n) as f64 / N as f64;
                re += w * f64::from(s) * ph.cos();
                im -= w * f64::from(s) * ph.sin();
            }
            bands[k / 5] += re * re + im * im;
        }
        out.extend(bands.iter().map(|e| (e + 1e-9).log10()));
    }
    out
}
