//! A pause the sender announces with a DTX frame plays libopus's comfort noise for its first
//! second, then silence — with real Opus, DTX on, and the packets our sender transmits.

use super::*;
use crate::codec::{EncoderConfig, OpusDecoder, OpusEncoder};

/// 20 ms frames: 1 s of a loud voice-like signal, `quiet_s` of background noise at about
/// −60 dBFS, 1 s of the voice again, 0.6 s of the noise (so that the stream ends in a pause,
/// not in a loss). Deterministic noise.
fn talk_noise_talk(quiet_s: f64) -> Vec<f32> {
    let (mut seed, mut lp) = (1u64, 0.0f32);
    let quiet = (quiet_s * 50.0) as usize;
    let mut out = Vec::new();
    for f in 0..(130 + quiet) {
        let loud = f < 50 || (50 + quiet..100 + quiet).contains(&f);
        for i in 0..960 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let white = (seed >> 33) as f32 / (1u64 << 31) as f32 * 2.0 - 1.0;
            lp = 0.7 * lp + 0.3 * white;
            out.push(if loud {
                0.1 * (lp + (i as f32 * 0.05).sin())
            } else {
                0.004 * lp
            });
        }
    }
    out
}

/// Encodes with DTX as a call does, transmits what our sender transmits (every frame but a
/// DTX frame that follows another: engine/send.rs) over a constant 5 ms path, and plays it out
/// in 10 ms pulls. Returns the output and the stats.
fn play(signal: &[f32]) -> (Vec<f32>, JitterStats) {
    let mut enc = OpusEncoder::new(EncoderConfig::default()).unwrap();
    let mut jb = JitterBuffer::new(JitterConfig::default(), OpusDecoder::new().unwrap());
    let mut sent = Vec::new();
    let mut last_dtx = false;
    for (i, frame) in signal.chunks_exact(960).enumerate() {
        let mut p = Vec::new();
        enc.encode(frame, &mut p).unwrap();
        let dtx = p.len() <= 2;
        if !(dtx && last_dtx) {
            sent.push((i, p));
        }
        last_dtx = dtx;
    }
    let (mut out, mut block, mut next) = (Vec::new(), [0.0f32; 480], 0);
    let mut now = 0.3;
    while now < signal.len() as f64 / 48.0 + 300.0 {
        while next < sent.len() && (sent[next].0 as f64 + 1.0) * 20.0 + 5.0 <= now {
            let (i, p) = &sent[next];
            let (seq, ts) = numbering(next);
            // Timestamps follow the capture clock; sequence numbers only what was sent.
            let ts = ts.wrapping_add((*i - next) as u32 * 960);
            jb.insert(seq, ts, p, (*i as f64 + 1.0) * 20.0 + 5.0);
            next += 1;
        }
        jb.pull(&mut block, now);
        out.extend_from_slice(&block);
        now += 10.0;
    }
    (out, jb.stats())
}

fn db(x: &[f32]) -> f64 {
    let p = x.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / x.len() as f64;
    10.0 * (p + 1e-20).log10()
}

#[test]
fn a_dtx_pause_plays_comfort_noise_for_a_second_then_silence() {
    let (out, s) = play(&talk_noise_talk(3.0));
    assert_eq!(s.concealed, 0, "a pause is not a loss: {s:?}");
    // Output time ≈ input time + the buffer's delay (tens of ms): look well inside each part.
    let part =
        |from_s: f64, to_s: f64| &out[(from_s * 48_000.0) as usize..(to_s * 48_000.0) as usize];
    // The quiet starts at 1 s; libopus stops sending ~0.2–0.4 s later. Up to 2 s (1 s after
    // the quiet began) the pause is the sender's background, as comfort noise: not silence,
    // about as loud as the −60 dBFS noise.
    for w in part(1.5, 1.9).chunks(4_800) {
        let level = db(w);
        assert!(
            (-72.0..-50.0).contains(&level),
            "comfort noise at {level:.1} dBFS"
        );
    }
    // Past the second the pause is silence, but for the 20 ms comfort-noise updates libopus
    // sends every 400 ms.
    let silent = part(2.3, 3.8)
        .chunks(480)
        .filter(|b| b.iter().all(|&x| x == 0.0))
        .count();
    assert!(silent >= 110, "{silent} of 150 blocks silent");
    // And the voice comes back at its level.
    assert!(db(part(4.3, 4.9)) > -30.0, "the voice after the pause");
}
