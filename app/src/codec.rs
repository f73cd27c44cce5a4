//! Opus through libopus 1.6 (`opusic-c` over `opusic-sys`, which builds the vendored libopus
//! with its neural models for deep PLC and DRED): VOIP application, 48 kHz mono, in-band FEC
//! and/or Deep REDundancy (DRED) as the encoder policy says (`crate::rate`).
//! The decoder runs at complexity [`DECODER_COMPLEXITY`], which turns on deep PLC for every
//! concealed frame, and recovers lost frames from a later packet's FEC or DRED
//! ([`Decode::decode_fec`], [`Decode::decode_redundancy`]); the unsafe calls this needs are in
//! `libopus.rs`.

mod libopus;

use crate::jitter::{Decode, DecodeError};
use libopus::RawDecoder;
use opusic_c::{Application, Bitrate, Channels, Encoder, InbandFec, SampleRate};

/// libopus's error codes carry no `std::error::Error`; this names them for `anyhow`.
fn opus_error(e: opusic_c::ErrorCode) -> anyhow::Error {
    anyhow::anyhow!("libopus: {e:?}")
}

/// Decoder complexity: 5 turns on deep PLC (a neural concealment, libopus ≥ 1.5); 6 and 7 would
/// add OSCE's LACE and NoLACE enhancement of low-bitrate SILK. Measured (docs/BENCHMARKS.md,
/// "Opus 1.6", two voices, 40 kbit/s): 4 → 5 is worth +0.3–0.5 PESQ on bursty loss; 5, 6 and 7
/// are within ±0.07 of each other in every cell. Deep PLC runs only while frames are concealed
/// (~320 µs per concealed 20 ms frame against ~24 for classic PLC); OSCE ran on every frame
/// (+17 µs at 6, +70 µs at 7) and bought nothing at our bitrates, so 5 — and libopus is built
/// without OSCE (Cargo.toml), which also spares every decode at 5 the OSCE feature analysis it
/// otherwise runs regardless of complexity; 6 and 7 now decode as 5 does.
pub const DECODER_COMPLEXITY: u8 = 5;

/// Largest Opus packet (RFC 6716 §3.4: 1275 bytes per frame).
pub const MAX_PACKET: usize = 1275;

/// Longest DRED libopus encodes, 10 ms units (`OPUS_SET_DRED_DURATION`).
pub const MAX_DRED_10MS: u8 = 104;

/// Encoder settings.
#[derive(Debug, Clone, Copy)]
pub struct EncoderConfig {
    pub bitrate_bps: i32,
    /// Loss percentage the encoder plans FEC for (libopus emits LBRR only when this is > 0).
    pub expected_loss_pct: u8,
    pub fec: bool,
    /// Discontinuous transmission: in silence the encoder emits 1–2 byte frames, which the
    /// sender does not transmit (the receiver plays comfort noise/silence in the gap). Held off
    /// while our VAD hears voice ([`OpusEncoder::set_voice`]).
    pub dtx: bool,
    /// Restricted low-delay application (CELT only: 2.5 ms look-ahead instead of 6.5 ms, but
    /// no FEC) instead of VOIP.
    pub restricted_low_delay: bool,
    /// A fixed libopus encoder complexity (0–10), for measurements; `None` (ours): it follows
    /// the protection and the bitrate, as [`encoder_complexity`] says.
    pub complexity: Option<u8>,
    /// Deep REDundancy: how much past audio every packet carries at a low bitrate, in 10 ms
    /// units (0 off, at most 104). Its bits come out of `bitrate_bps`, and libopus sends it only
    /// when `expected_loss_pct` > 0.
    pub dred_10ms: u8,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        // 40 kbit/s is the "excellent" tier of the rate controller (crate::rate); any bitrate
        // from 24 kbit/s up keeps FEC working (libopus 1.3 emits none at 16 kbit/s).
        Self {
            bitrate_bps: 40_000,
            expected_loss_pct: 2,
            fec: true,
            dtx: true,
            restricted_low_delay: false,
            complexity: None,
            dred_10ms: 0,
        }
    }
}

/// Encoder complexity while the quality rests on in-band FEC at [`LOW_COMPLEXITY_MIN_BPS`] or
/// more (see [`encoder_complexity`]).
const FEC_COMPLEXITY: u8 = 7;
/// libopus's default encoder complexity: everywhere else.
const DEFAULT_COMPLEXITY: u8 = 10;
/// Lowest bitrate at which FEC keeps working at [`FEC_COMPLEXITY`]: the rate controller's
/// 40 kbit/s tier.
const LOW_COMPLEXITY_MIN_BPS: i32 = 40_000;

/// The encoder complexity for what the quality rests on — in-band FEC or DRED, as
/// `crate::rate::protection` chose — at `bitrate_bps`. Measured with libopus 1.6.1
/// (docs/BENCHMARKS.md, "Opus 1.6", §2: two voices, our buffer, PESQ-WB; CPU per 20 ms frame):
/// - **FEC at 40 kbit/s and more: 7**, ~10 % less CPU per frame (203 against 226 µs), no
///   quality lost (14 cells: mean 3.540 against 3.544). At 40 kbit/s libopus keeps FEC in full
///   band at any complexity and planned loss: its rate test (`decide_fec`) scales the bitrate
///   by (90 + complexity) %. Not lower: below 7 libopus skips its signal analysis, and with
///   DTX on its speech detector then takes a steady tonal sound (a held note, music, a test
///   tone) for noise and stops sending it after about a second — 1-byte packets, silence at
///   the listener (test `a_steady_tone_keeps_being_sent`; the speech benches, which encode
///   without DTX, did not show it; an end-to-end test of a tone through a migrating
///   connection did). 5 would save ~55 µs.
/// - **FEC at 32 kbit/s: 10.** There that test is at its edge: at 5 % planned loss 6 and 5
///   send no FEC at all (5 % random loss 3.13 and 3.12 instead of 4.09), and at the 2 % planned
///   on a clean path 7 does not either.
/// - **DRED: 10.** 9 and 8 give the same packets at the same cost; 7 and below cost the bursty
///   rows, where DRED is sent, up to 0.19–0.25 at call start.
/// - Not measured, so libopus's default: 24 kbit/s at 40 ms frames, and CELT-only
///   (`restricted_low_delay`).
pub fn encoder_complexity(
    bitrate_bps: i32,
    fec: bool,
    dred_10ms: u8,
    restricted_low_delay: bool,
) -> u8 {
    if fec && dred_10ms == 0 && !restricted_low_delay && bitrate_bps >= LOW_COMPLEXITY_MIN_BPS {
        FEC_COMPLEXITY
    } else {
        DEFAULT_COMPLEXITY
    }
}

/// A mono 48 kHz Opus encoder.
pub struct OpusEncoder {
    encoder: Encoder,
    config: EncoderConfig,
    /// The complexity libopus runs at (`config.complexity`, or [`encoder_complexity`]'s).
    complexity: u8,
    /// Fixed by the application (VOIP or restricted low delay), read once.
    lookahead: u32,
    /// Whether libopus may go into DTX now: `config.dtx`, unless [`Self::set_voice`] says
    /// voice is on.
    dtx_now: bool,
}

impl OpusEncoder {
    pub fn new(config: EncoderConfig) -> anyhow::Result<Self> {
        let application = if config.restricted_low_delay {
            Application::LowDelay
        } else {
            Application::Voip
        };
        let mut encoder =
            Encoder::new(Channels::Mono, SampleRate::Hz48000, application).map_err(opus_error)?;
        encoder
            .set_bitrate(Bitrate::Value(config.bitrate_bps.max(500) as u32))
            .map_err(opus_error)?;
        encoder
            .set_inband_fec(if config.fec && !config.restricted_low_delay {
                InbandFec::Mode1
            } else {
                InbandFec::Off
            })
            .map_err(opus_error)?;
        encoder
            .set_packet_loss(config.expected_loss_pct)
            .map_err(opus_error)?;
        encoder
            .set_dred_duration(config.dred_10ms.min(MAX_DRED_10MS))
            .map_err(opus_error)?;
        encoder.set_dtx(config.dtx).map_err(opus_error)?;
        let complexity = Self::complexity_for(&config);
        encoder.set_complexity(complexity).map_err(opus_error)?;
        let lookahead = encoder.get_look_ahead().map_err(opus_error)?;
        Ok(Self {
            encoder,
            config,
            complexity,
            lookahead,
            dtx_now: config.dtx,
        })
    }

    /// Tells the encoder whether our VAD (`crate::vad`, with its 300 ms hang-over) hears voice
    /// in the next frame: while it does, DTX is off. libopus goes into DTX after 200 ms that its
    /// own detector calls inactive, which in real speech includes soft word tails, breaths and
    /// the room between phrases at −45 to −60 dBFS; replaced by comfort noise they cost a
    /// quiet-backed voice ~0.2 PESQ-WB (4.30 → 4.07 in the simulator, 4.05 in real calls).
    /// Pauses longer than the hang-over still go silent on the wire. The ctl is called only
    /// when the decision changes.
    pub fn set_voice(&mut self, voice: bool) {
        let dtx = self.config.dtx && !voice;
        if dtx != self.dtx_now && self.encoder.set_dtx(dtx).is_ok() {
            self.dtx_now = dtx;
        }
    }

    /// The complexity `config` asks for: fixed, or following its protection and bitrate.
    fn complexity_for(config: &EncoderConfig) -> u8 {
        config.complexity.unwrap_or_else(|| {
            encoder_complexity(
                config.bitrate_bps,
                config.fec,
                config.dred_10ms,
                config.restricted_low_delay,
            )
        })
    }

    /// The complexity libopus encodes at now.
    pub fn complexity(&self) -> u8 {
        self.complexity
    }

    pub fn config(&self) -> EncoderConfig {
        self.config
    }

    /// Changes bitrate, expected loss, in-band FEC and DRED in place (smooth: libopus adapts
    /// from the next frame), and the complexity with them when it follows the protection
    /// (its ctl called only when the complexity changes);
    /// a change of application needs a new encoder, which the caller makes.
    pub fn retune(
        &mut self,
        bitrate_bps: i32,
        expected_loss_pct: u8,
        fec: bool,
        dred_10ms: u8,
    ) -> anyhow::Result<()> {
        self.encoder
            .set_bitrate(Bitrate::Value(bitrate_bps.max(500) as u32))
            .map_err(opus_error)?;
        self.encoder
            .set_packet_loss(expected_loss_pct)
            .map_err(opus_error)?;
        if fec != self.config.fec && !self.config.restricted_low_delay {
            self.encoder
                .set_inband_fec(if fec {
                    InbandFec::Mode1
                } else {
                    InbandFec::Off
                })
                .map_err(opus_error)?;
        }
        let dred_10ms = dred_10ms.min(MAX_DRED_10MS);
        if dred_10ms != self.config.dred_10ms {
            self.encoder
                .set_dred_duration(dred_10ms)
                .map_err(opus_error)?;
        }
        self.config.bitrate_bps = bitrate_bps;
        self.config.expected_loss_pct = expected_loss_pct;
        self.config.fec = fec;
        self.config.dred_10ms = dred_10ms;
        let complexity = Self::complexity_for(&self.config);
        if complexity != self.complexity {
            self.encoder
                .set_complexity(complexity)
                .map_err(opus_error)?;
            self.complexity = complexity;
        }
        Ok(())
    }

    /// Encodes one frame (2.5–60 ms of samples) into `out` (cleared first).
    pub fn encode(&mut self, frame: &[f32], out: &mut Vec<u8>) -> anyhow::Result<()> {
        out.resize(MAX_PACKET, 0);
        let n = self
            .encoder
            .encode_float_to_slice(frame, out)
            .map_err(opus_error)?;
        out.truncate(n);
        Ok(())
    }

    /// Algorithmic delay of the encoder in samples at 48 kHz (look-ahead).
    pub fn lookahead(&self) -> u32 {
        self.lookahead
    }
}

/// A mono 48 kHz Opus decoder.
pub struct OpusDecoder {
    decoder: RawDecoder,
    complexity: u8,
    /// The decoder runs at complexity 0 for a pause's comfort noise (see `comfort_noise`).
    in_noise: bool,
    buf: Vec<f32>,
    /// The packet whose DRED the decoder holds parsed (capacity [`MAX_PACKET`], reused), how
    /// far back the parse was asked to decode, and how far back the redundancy reaches.
    dred_packet: Vec<u8>,
    dred_asked: usize,
    dred_reach: usize,
}

impl OpusDecoder {
    pub fn new() -> anyhow::Result<Self> {
        Self::with_complexity(DECODER_COMPLEXITY)
    }

    /// A decoder at another complexity than [`DECODER_COMPLEXITY`], for measurements.
    pub fn with_complexity(complexity: u8) -> anyhow::Result<Self> {
        Ok(Self {
            decoder: RawDecoder::new(i32::from(complexity))?,
            complexity,
            in_noise: false,
            // 120 ms, the longest Opus packet.
            buf: vec![0.0; 5_760],
            dred_packet: Vec::with_capacity(MAX_PACKET),
            dred_asked: 0,
            dred_reach: 0,
        })
    }

    /// Appends what libopus wrote into `buf[..n]`.
    fn take(
        &mut self,
        n: Result<usize, libopus::LibopusError>,
        out: &mut Vec<f32>,
    ) -> Result<(), DecodeError> {
        let n = n.map_err(|_| DecodeError)?;
        out.extend_from_slice(&self.buf[..n.min(self.buf.len())]);
        Ok(())
    }

    /// Back to the decoder's own complexity after a pause's comfort noise.
    fn leave_noise(&mut self) {
        if std::mem::take(&mut self.in_noise) {
            // Setting a valid complexity on a valid decoder cannot fail.
            let _ = self.decoder.set_complexity(i32::from(self.complexity));
        }
    }

    /// How far back `packet`'s DRED reaches, parsing it (once per packet, and only as far back
    /// as `offset` needs) if it is not the one held. The parse only entropy-decodes; DRED's
    /// neural decoder runs at the first [`RawDecoder::dred_decode`] after it, so the burst
    /// look-ahead's question ([`Decode::carries_redundancy`]) followed by the recovery of the
    /// whole gap (a deeper parse) runs the neural decoder once, not twice.
    fn dred_reach(&mut self, packet: &[u8], offset: usize) -> usize {
        if self.dred_packet != packet || self.dred_asked < offset {
            self.dred_packet.clear();
            if packet.len() <= MAX_PACKET {
                self.dred_packet.extend_from_slice(packet);
            }
            self.dred_asked = offset;
            self.dred_reach = self.decoder.parse_dred(packet, offset).unwrap_or(0);
        }
        self.dred_reach
    }
}

impl Decode for OpusDecoder {
    fn decode(&mut self, payload: &[u8], out: &mut Vec<f32>) -> Result<(), DecodeError> {
        // An empty packet is libopus's way to ask for concealment. A real packet is never
        // empty (the jitter buffer drops empty payloads as malformed).
        if payload.is_empty() {
            return Err(DecodeError);
        }
        self.leave_noise();
        let n = self.decoder.decode(payload, &mut self.buf, false);
        self.take(n, out)
    }

    /// Only from a packet that carries FEC: libopus asked for FEC that is not there conceals
    /// silently, which would be counted as a recovery.
    fn decode_fec(
        &mut self,
        next_payload: &[u8],
        samples: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), DecodeError> {
        if next_payload.is_empty() || !RawDecoder::has_lbrr(next_payload) {
            return Err(DecodeError);
        }
        let samples = samples.min(self.buf.len());
        self.leave_noise();
        let n = self
            .decoder
            .decode(next_payload, &mut self.buf[..samples], true);
        self.take(n, out)
    }

    /// From DRED, when the redundancy reaches back over at least half of the requested audio
    /// (libopus continues the rest of it with deep PLC; its reach is counted in 2.5–10 ms
    /// steps that need not meet our frame starts).
    fn decode_redundancy(
        &mut self,
        next_payload: &[u8],
        offset: usize,
        samples: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), DecodeError> {
        if next_payload.is_empty() || samples == 0 || samples > self.buf.len() {
            return Err(DecodeError);
        }
        if self.dred_reach(next_payload, offset) + samples / 2 < offset {
            return Err(DecodeError);
        }
        self.leave_noise();
        let n = self.decoder.dred_decode(offset, &mut self.buf[..samples]);
        self.take(n, out)
    }

    fn carries_redundancy(&mut self, next_payload: &[u8], offset: usize) -> bool {
        !next_payload.is_empty() && self.dred_reach(next_payload, offset) >= offset
    }

    fn conceal(&mut self, samples: usize, out: &mut Vec<f32>) {
        self.leave_noise();
        let samples = samples.min(self.buf.len());
        let n = self.decoder.conceal(&mut self.buf[..samples]);
        if self.take(n, out).is_err() {
            out.extend(std::iter::repeat_n(0.0, samples));
        }
    }

    /// libopus's concealment after a DTX frame is its comfort noise (SILK's CNG at the level
    /// and spectrum the sender's DTX frames describe), run at complexity 0: at 5 the decoder
    /// would run deep PLC's neural concealment to model noise (a concealed frame costs 317
    /// against 24 µs with and without it: `scripts/bench-cpu.sh`, docs/BENCHMARKS.md).
    fn comfort_noise(&mut self, samples: usize, out: &mut Vec<f32>) -> bool {
        if !self.in_noise && self.complexity > 0 {
            self.in_noise = self.decoder.set_complexity(0).is_ok();
        }
        let samples = samples.min(self.buf.len());
        let n = self.decoder.conceal(&mut self.buf[..samples]);
        self.take(n, out).is_ok()
    }

    /// libopus makes the return from concealment smooth itself: CELT overlaps its concealment
    /// into the next decoded frame and SILK glues the energies across the loss.
    fn continues_after_conceal(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes_a_tone_with_fec_and_plc() {
        let mut enc = OpusEncoder::new(EncoderConfig::default()).unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let tone: Vec<f32> = (0..960 * 50)
            .map(|i| (i as f32 * 2.0 * std::f32::consts::PI * 440.0 / 48_000.0).sin() * 0.5)
            .collect();
        let mut packets = Vec::new();
        for frame in tone.chunks(960) {
            let mut p = Vec::new();
            enc.encode(frame, &mut p).unwrap();
            assert!(!p.is_empty() && p.len() < 400);
            packets.push(p);
        }
        let mut out = Vec::new();
        for p in &packets[..40] {
            dec.decode(p, &mut out).unwrap();
        }
        assert_eq!(out.len(), 40 * 960);
        let energy: f32 = out[20_000..30_000].iter().map(|s| s * s).sum::<f32>() / 10_000.0;
        assert!(
            (energy - 0.125).abs() < 0.03,
            "decoded tone energy {energy}"
        );
        // FEC comes only from a packet that carries it (a steady tone may be coded without).
        let mut fec = Vec::new();
        let recovered = dec.decode_fec(&packets[41], 960, &mut fec).is_ok();
        assert_eq!(recovered, RawDecoder::has_lbrr(&packets[41]));
        assert_eq!(fec.len(), if recovered { 960 } else { 0 });
        let mut plc = Vec::new();
        dec.conceal(960, &mut plc);
        assert_eq!(plc.len(), 960);
        assert!(dec.decode(&[0xff; 3], &mut Vec::new()).is_err());
        assert!(enc.lookahead() > 0);
    }

    /// The policy: the low complexity only where the quality rests on in-band FEC at 40 kbit/s
    /// or more; DRED, FEC at 32 kbit/s and below, and CELT-only keep libopus's default.
    #[test]
    fn complexity_follows_the_protection_and_the_bitrate() {
        // (bitrate, FEC, DRED, CELT-only) → complexity
        for (bitrate, fec, dred, celt_only, expected) in [
            (40_000, true, 0, false, FEC_COMPLEXITY),
            (48_000, true, 0, false, FEC_COMPLEXITY),
            (40_000, false, 50, false, DEFAULT_COMPLEXITY),
            (40_000, true, 50, false, DEFAULT_COMPLEXITY),
            (32_000, true, 0, false, DEFAULT_COMPLEXITY),
            (32_000, false, 30, false, DEFAULT_COMPLEXITY),
            (24_000, true, 0, false, DEFAULT_COMPLEXITY),
            (48_000, false, 0, true, DEFAULT_COMPLEXITY),
            (40_000, true, 0, true, DEFAULT_COMPLEXITY),
        ] {
            assert_eq!(
                encoder_complexity(bitrate, fec, dred, celt_only),
                expected,
                "{bitrate} FEC {fec} DRED {dred} CELT-only {celt_only}"
            );
        }
    }

    /// The encoder runs at the policy's complexity from the start and moves with each retune
    /// that changes the protection or the bitrate (libopus reads back what we track); a fixed
    /// complexity stays put.
    #[test]
    fn retune_moves_libopus_to_the_policy_s_complexity() {
        let mut enc = OpusEncoder::new(EncoderConfig::default()).unwrap();
        let libopus = |enc: &mut OpusEncoder| enc.encoder.get_complexity().unwrap();
        assert_eq!(enc.complexity(), FEC_COMPLEXITY);
        assert_eq!(libopus(&mut enc), FEC_COMPLEXITY);
        for (bitrate, fec, dred, expected) in [
            (40_000, false, 50, DEFAULT_COMPLEXITY),
            (40_000, true, 0, FEC_COMPLEXITY),
            (32_000, true, 0, DEFAULT_COMPLEXITY),
            (40_000, true, 0, FEC_COMPLEXITY),
        ] {
            enc.retune(bitrate, 5, fec, dred).unwrap();
            assert_eq!(
                enc.complexity(),
                expected,
                "{bitrate} FEC {fec} DRED {dred}"
            );
            assert_eq!(libopus(&mut enc), expected);
        }
        let mut fixed = OpusEncoder::new(EncoderConfig {
            complexity: Some(8),
            ..EncoderConfig::default()
        })
        .unwrap();
        fixed.retune(40_000, 20, false, 50).unwrap();
        assert_eq!((fixed.complexity(), libopus(&mut fixed)), (8, 8));
    }

    /// Below complexity 7 libopus has no signal analysis, and with DTX its speech detector
    /// stops sending a steady tone after about a second (1-byte packets from then on). The
    /// policy's complexity must keep sending it, as 10 does.
    #[test]
    fn a_steady_tone_keeps_being_sent() {
        let tone: Vec<f32> = (0..48_000 * 3)
            .map(|i| 0.3 * (std::f32::consts::TAU * 440.0 * i as f32 / 48_000.0).sin())
            .collect();
        let smallest_after_1s = |complexity: Option<u8>| {
            let mut enc = OpusEncoder::new(EncoderConfig {
                complexity,
                ..EncoderConfig::default()
            })
            .unwrap();
            assert!(enc.config.dtx);
            let mut p = Vec::new();
            tone.chunks_exact(960)
                .map(|f| {
                    enc.encode(f, &mut p).unwrap();
                    p.len()
                })
                .skip(50)
                .min()
                .unwrap()
        };
        assert!(smallest_after_1s(None) > 50, "the policy's complexity");
        assert!(smallest_after_1s(Some(DEFAULT_COMPLEXITY)) > 50);
        // What the policy must stay above.
        assert!(smallest_after_1s(Some(6)) <= 2);
    }

    /// A soft tail at −60 dBFS (a breath, the room between phrases) is what libopus's own
    /// detector puts into DTX after 200 ms; while our VAD says voice, it is sent instead, and
    /// once the VAD lets go DTX works as before.
    #[test]
    fn dtx_waits_while_the_vad_hears_voice() {
        let (mut seed, mut lp) = (3u64, 0.0f32);
        // Half a second of loud sound, then the soft tail.
        let soft: Vec<f32> = (0..48_000 * 2)
            .map(|i| {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                lp = 0.7 * lp + 0.3 * ((seed >> 33) as f32 / (1u64 << 31) as f32 * 2.0 - 1.0);
                if i < 24_000 {
                    0.1 * (lp + (i as f32 * 0.05).sin())
                } else {
                    0.004 * lp
                }
            })
            .collect();
        let dtx_frames = |voice: bool| {
            let mut enc = OpusEncoder::new(EncoderConfig::default()).unwrap();
            let mut p = Vec::new();
            soft.chunks_exact(960)
                .filter(|f| {
                    enc.set_voice(voice);
                    enc.encode(f, &mut p).unwrap();
                    p.len() <= 2
                })
                .count()
        };
        assert!(dtx_frames(false) > 40, "libopus's DTX on its own");
        assert_eq!(dtx_frames(true), 0, "held off while there is voice");
    }

    /// Why the low complexity starts at 40 kbit/s: there libopus keeps in-band FEC at
    /// [`FEC_COMPLEXITY`] for every loss the rate controller plans for (2–25 %), while at
    /// 32 kbit/s the lower complexities drop FEC altogether (libopus's `decide_fec` scales the
    /// bitrate by the complexity): 5 at 5 % planned loss, 7 at the 2 % planned on a clean
    /// path; complexity 10 does not.
    #[test]
    fn fec_survives_the_low_complexity_at_40_kbit_s_and_not_at_32() {
        let speech = crate::measure::speech_like(48_000, 1.5, 9);
        let fec_share = |bitrate_bps: i32, loss: u8, complexity: u8| {
            let mut enc = OpusEncoder::new(EncoderConfig {
                bitrate_bps,
                expected_loss_pct: loss,
                dtx: false,
                complexity: Some(complexity),
                ..EncoderConfig::default()
            })
            .unwrap();
            let mut p = Vec::new();
            let frames = speech.chunks_exact(960).len();
            let with = speech
                .chunks_exact(960)
                .filter(|f| {
                    enc.encode(f, &mut p).unwrap();
                    RawDecoder::has_lbrr(&p)
                })
                .count();
            with as f64 / frames as f64
        };
        for loss in [2, 5, 10, 25] {
            let share = fec_share(40_000, loss, FEC_COMPLEXITY);
            assert!(
                share > 0.5,
                "40 kbit/s, {loss} %: FEC in {share:.2} of the packets"
            );
        }
        assert!(fec_share(32_000, 5, DEFAULT_COMPLEXITY) > 0.5);
        assert_eq!(fec_share(32_000, 5, 5), 0.0);
        // At the 2 % planned on a clean path, 7 loses it too (8 keeps it here).
        assert_eq!(fec_share(32_000, 2, FEC_COMPLEXITY), 0.0);
    }

    /// What [`OpusDecoder::continues_after_conceal`] claims: after concealing lost frames (in
    /// whole 10 ms calls, as the jitter buffer does) the next decoded frame joins the
    /// concealment without a jump, so the buffer needs no crossfade of its own.
    #[test]
    fn decoding_after_concealment_joins_without_a_jump() {
        let mut enc = OpusEncoder::new(EncoderConfig::default()).unwrap();
        let mut dec = OpusDecoder::new().unwrap();
        let tone: Vec<f32> = (0..960 * 60)
            .map(|i| {
                let t = i as f32 / 48_000.0;
                0.4 * (t * std::f32::consts::TAU * 220.0).sin()
                    + 0.1 * (t * std::f32::consts::TAU * 660.0).sin()
            })
            .collect();
        let packets: Vec<Vec<u8>> = tone
            .chunks(960)
            .map(|f| {
                let mut p = Vec::new();
                enc.encode(f, &mut p).unwrap();
                p
            })
            .collect();
        let mut out = Vec::new();
        for p in &packets[..30] {
            dec.decode(p, &mut out).unwrap();
        }
        let step = |x: &[f32]| {
            x.windows(2)
                .map(|w| (w[1] - w[0]).abs())
                .fold(0.0, f32::max)
        };
        let clean = step(&out[960 * 10..]);
        let mut next = 30;
        for lost in [1, 2, 3] {
            let before = out.len();
            for _ in 0..2 * lost {
                dec.conceal(480, &mut out);
            }
            next += lost;
            let join = out.len();
            for p in &packets[next..next + 4] {
                dec.decode(p, &mut out).unwrap();
            }
            next += 4;
            let at_join = step(&out[join - 48..join + 48]);
            println!("{lost} lost: largest step at the join {at_join:.4}, clean {clean:.4}");
            assert!(at_join <= 1.5 * clean, "{lost} lost: {at_join} vs {clean}");
            assert!(out[before..].iter().all(|s| s.is_finite()));
        }
    }

    /// The burst look-ahead asks how far a packet reaches before the gap is recovered from it:
    /// that question only entropy-decodes (DRED's neural decoder runs at the recovery), and the
    /// recovery after it is exactly the recovery without it — and is DRED, not concealment.
    #[test]
    fn asking_how_far_dred_reaches_leaves_the_recovery_unchanged() {
        let speech = crate::measure::speech_like(48_000, 3.0, 5);
        let mut enc = OpusEncoder::new(EncoderConfig {
            bitrate_bps: 40_000,
            expected_loss_pct: 20,
            fec: false,
            dtx: false,
            dred_10ms: 50,
            ..EncoderConfig::default()
        })
        .unwrap();
        let packets: Vec<Vec<u8>> = speech
            .chunks_exact(960)
            .map(|f| {
                let mut p = Vec::new();
                enc.encode(f, &mut p).unwrap();
                p
            })
            .collect();
        // Frames 100..103 lost, 103 is here; `ask` first asks as the look-ahead does.
        let recover = |ask: bool| {
            let mut dec = OpusDecoder::new().unwrap();
            let mut out = Vec::new();
            for p in &packets[..100] {
                dec.decode(p, &mut out).unwrap();
            }
            let before = out.len();
            if ask {
                assert!(dec.carries_redundancy(&packets[103], 2 * 960));
            }
            for k in (1..=3).rev() {
                dec.decode_redundancy(&packets[103], k * 960, 960, &mut out)
                    .unwrap();
            }
            out.split_off(before)
        };
        let (asked, direct) = (recover(true), recover(false));
        assert_eq!(asked, direct);
        let mut dec = OpusDecoder::new().unwrap();
        let mut concealed = Vec::new();
        for p in &packets[..100] {
            dec.decode(p, &mut concealed).unwrap();
        }
        let before = concealed.len();
        dec.conceal(3 * 960, &mut concealed);
        assert_ne!(direct, concealed.split_off(before), "DRED, not concealment");
    }

    /// DRED through the decoder: a packet sent with 500 ms of redundancy reaches back at least
    /// a 20-frame gap, decodes any 2.5 ms multiple at any offset inside it, and the packet's
    /// FEC is declined when the encoder sends none (so it is not counted as a recovery); a
    /// packet without DRED declines redundancy.
    #[test]
    fn dred_reaches_back_over_a_gap_and_fec_is_declined_when_absent() {
        let speech = crate::measure::speech_like(48_000, 3.0, 5);
        let encode = |dred_10ms: u8, fec: bool| {
            let mut enc = OpusEncoder::new(EncoderConfig {
                bitrate_bps: 32_000,
                expected_loss_pct: 20,
                fec,
                dtx: false,
                dred_10ms,
                ..EncoderConfig::default()
            })
            .unwrap();
            speech
                .chunks_exact(960)
                .map(|f| {
                    let mut p = Vec::new();
                    enc.encode(f, &mut p).unwrap();
                    p
                })
                .collect::<Vec<_>>()
        };
        let with = encode(50, false);
        let mut dec = OpusDecoder::new().unwrap();
        let mut out = Vec::new();
        for p in &with[..100] {
            dec.decode(p, &mut out).unwrap();
        }
        // Frames 100..120 lost; 120 is here.
        let before = out.len();
        for k in (1..=20).rev() {
            dec.decode_redundancy(&with[120], k * 960, 960, &mut out)
                .unwrap_or_else(|_| panic!("DRED reaches {k} frames back"));
        }
        assert_eq!(out.len(), before + 20 * 960);
        let power = out[before..].iter().map(|s| s * s).sum::<f32>() / (20.0 * 960.0);
        assert!(power > 1e-4, "recovered audio is not silence: {power}");
        // A 2.5 ms piece works too, and beyond 1 s nothing reaches.
        dec.decode_redundancy(&with[125], 600, 120, &mut out)
            .unwrap();
        assert!(
            dec.decode_redundancy(&with[125], 60_000, 960, &mut out)
                .is_err()
        );
        // Without DRED: declined. FEC only where the encoder sent it.
        let plain = encode(0, true);
        assert!(
            dec.decode_redundancy(&plain[120], 960, 960, &mut out)
                .is_err()
        );
        let mut scratch = Vec::new();
        let mut fec = |packets: &[Vec<u8>]| {
            packets
                .iter()
                .filter(|p| dec.decode_fec(p, 960, &mut scratch).is_ok())
                .count()
        };
        assert_eq!(fec(&with), 0);
        assert!(fec(&plain) > plain.len() / 2);
    }
}
