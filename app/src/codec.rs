//! Opus through libopus 1.6 (`opusic-c` over `opusic-sys`, which builds the vendored libopus
//! with its neural models: deep PLC, DRED, OSCE): VOIP application, 48 kHz mono, in-band FEC.
//! The decoder runs at complexity [`DECODER_COMPLEXITY`], which turns on deep PLC for every
//! concealed frame.

use crate::jitter::{Decode, DecodeError};
use opusic_c::{Application, Bitrate, Channels, Decoder, Encoder, InbandFec, SampleRate};

/// libopus's error codes carry no `std::error::Error`; this names them for `anyhow`.
fn opus_error(e: opusic_c::ErrorCode) -> anyhow::Error {
    anyhow::anyhow!("libopus: {e:?}")
}

/// Decoder complexity: 5 turns on deep PLC (a neural concealment, libopus ≥ 1.5), 6 and 7 add
/// OSCE's LACE and NoLACE enhancement of low-bitrate SILK. Deep PLC runs only while frames are
/// concealed; OSCE runs on every SILK frame (~150 µs per 20 ms frame here) and helps little at
/// our bitrates (≥ 24 kbit/s), so 5 it is.
pub const DECODER_COMPLEXITY: u8 = 5;

/// Largest Opus packet (RFC 6716 §3.4: 1275 bytes per frame).
pub const MAX_PACKET: usize = 1275;

/// Encoder settings.
#[derive(Debug, Clone, Copy)]
pub struct EncoderConfig {
    pub bitrate_bps: i32,
    /// Loss percentage the encoder plans FEC for (libopus emits LBRR only when this is > 0).
    pub expected_loss_pct: u8,
    pub fec: bool,
    /// Discontinuous transmission: in silence the encoder emits 1–2 byte frames, which the
    /// sender does not transmit (the receiver plays comfort noise/silence in the gap).
    pub dtx: bool,
    /// Restricted low-delay application (CELT only: 2.5 ms look-ahead instead of 6.5 ms, but
    /// no FEC) instead of VOIP.
    pub restricted_low_delay: bool,
    /// libopus encoder complexity, 0–10. Ours is libopus's default, 10. Measured
    /// (docs/BENCHMARKS.md, libopus 1.3.1, 6 loss patterns at 5 % random loss with FEC): 7
    /// encodes a 20 ms frame in 281 µs instead of 369 (1.40 % instead of 1.85 % of a core) and
    /// costs only 0.03 PESQ mid-call, but 0.22 in the first 10 s of a call (5 of 6 patterns
    /// worse, by up to 0.40); 8 costs 0.17 there and saves nothing. At 6 and below the scores
    /// with loss fall to the PLC-only level (~2.9), as if the packets carried no usable FEC.
    pub complexity: u8,
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
            complexity: 10,
        }
    }
}

/// A mono 48 kHz Opus encoder.
pub struct OpusEncoder {
    encoder: Encoder,
    config: EncoderConfig,
    /// Fixed by the application (VOIP or restricted low delay), read once.
    lookahead: u32,
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
        encoder.set_dtx(config.dtx).map_err(opus_error)?;
        encoder
            .set_complexity(config.complexity)
            .map_err(opus_error)?;
        let lookahead = encoder.get_look_ahead().map_err(opus_error)?;
        Ok(Self {
            encoder,
            config,
            lookahead,
        })
    }

    pub fn config(&self) -> EncoderConfig {
        self.config
    }

    /// Changes bitrate and expected loss in place (smooth: libopus adapts from the next
    /// frame); a change of application needs a new encoder, which the caller makes.
    pub fn retune(&mut self, bitrate_bps: i32, expected_loss_pct: u8) -> anyhow::Result<()> {
        self.encoder
            .set_bitrate(Bitrate::Value(bitrate_bps.max(500) as u32))
            .map_err(opus_error)?;
        self.encoder
            .set_packet_loss(expected_loss_pct)
            .map_err(opus_error)?;
        self.config.bitrate_bps = bitrate_bps;
        self.config.expected_loss_pct = expected_loss_pct;
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
    decoder: Decoder,
    buf: Vec<f32>,
}

impl OpusDecoder {
    pub fn new() -> anyhow::Result<Self> {
        let mut decoder = Decoder::new(Channels::Mono, SampleRate::Hz48000).map_err(opus_error)?;
        decoder
            .set_complexity(DECODER_COMPLEXITY)
            .map_err(opus_error)?;
        Ok(Self {
            decoder,
            // 120 ms, the longest Opus packet.
            buf: vec![0.0; 5_760],
        })
    }

    fn run(
        &mut self,
        payload: Option<&[u8]>,
        samples: usize,
        fec: bool,
        out: &mut Vec<f32>,
    ) -> Result<(), DecodeError> {
        let samples = samples.min(self.buf.len());
        // An empty packet is libopus's way to ask for concealment. A real packet is never
        // empty (the jitter buffer drops empty payloads as malformed).
        let packet = match payload {
            Some([]) => return Err(DecodeError),
            Some(p) => p,
            None => &[],
        };
        let n = self
            .decoder
            .decode_float_to_slice(packet, &mut self.buf[..samples], fec)
            .map_err(|_| DecodeError)?;
        out.extend_from_slice(&self.buf[..n]);
        Ok(())
    }
}

impl Decode for OpusDecoder {
    fn decode(&mut self, payload: &[u8], out: &mut Vec<f32>) -> Result<(), DecodeError> {
        let len = self.buf.len();
        self.run(Some(payload), len, false, out)
    }

    fn decode_fec(
        &mut self,
        next_payload: &[u8],
        samples: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), DecodeError> {
        self.run(Some(next_payload), samples, true, out)
    }

    fn conceal(&mut self, samples: usize, out: &mut Vec<f32>) {
        if self.run(None, samples, false, out).is_err() {
            out.extend(std::iter::repeat_n(0.0, samples));
        }
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
        let mut fec = Vec::new();
        dec.decode_fec(&packets[41], 960, &mut fec).unwrap();
        assert_eq!(fec.len(), 960);
        let mut plc = Vec::new();
        dec.conceal(960, &mut plc);
        assert_eq!(plc.len(), 960);
        assert!(dec.decode(&[0xff; 3], &mut Vec::new()).is_err());
        assert!(enc.lookahead() > 0);
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
}
