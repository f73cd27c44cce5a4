//! The sending half: accumulates captured samples into frames, encodes them with Opus and
//! packetizes them as RTP-over-QUIC datagrams with the RFC 6464 audio level.

use crate::codec::{EncoderConfig, OpusEncoder};
use crate::rate::EncoderSettings;
use natter_proto::media::write_rtp;
use natter_proto::rtcp::SenderInfo;
use natter_proto::rtp::{AudioLevel, RtpHeader};

/// Whether a block of captured audio should go out, and whether it holds voice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gate {
    /// False while muted, or while voice-activated transmission hears no voice.
    pub transmit: bool,
    /// The VAD's verdict, sent as the RFC 6464 "V" flag (the speaking indicator).
    pub voice: bool,
}

impl Gate {
    pub const OPEN: Self = Self {
        transmit: true,
        voice: true,
    };
}

pub struct Sender {
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    encoder: OpusEncoder,
    frame: Vec<f32>,
    frame_samples: usize,
    payload: Vec<u8>,
    datagram: Vec<u8>,
    /// Next packet starts a talkspurt (first packet, or first after mute).
    marker: bool,
    /// Packets and payload octets under the current SSRC (the sender report's counts).
    pub packets_sent: u32,
    pub octets_sent: u32,
    /// Packets and payload octets sent in the whole call, across rejoins.
    pub total_packets_sent: u64,
    pub total_octets_sent: u64,
    /// Frames not sent because DTX found them silent.
    pub dtx_frames: u64,
    /// The last frame was a DTX frame: the first since the last real packet went out, the
    /// rest are held back.
    in_pause: bool,
    /// Mean time one frame takes to encode, ms (EWMA).
    pub encode_time_ms: f64,
    /// RTP timestamp of the first sample and the engine time (ms) it was captured.
    origin: Option<(u32, f64)>,
    /// Settings to apply at the next frame boundary.
    pending: Option<EncoderSettings>,
    /// Frame size fixed by the user (the rate controller may not change it).
    pinned_frame: bool,
    /// Any block of the frame being filled was to be transmitted / held voice.
    frame_transmit: bool,
    frame_voice: bool,
}

impl Sender {
    pub fn new(ssrc: u32, frame_samples: usize, config: EncoderConfig) -> anyhow::Result<Self> {
        Ok(Self {
            ssrc,
            // RFC 3550 wants random initial values; derive them from the random-looking SSRC.
            sequence: (ssrc >> 16) as u16,
            timestamp: ssrc.rotate_left(7),
            encoder: OpusEncoder::new(config)?,
            frame: Vec::with_capacity(frame_samples),
            frame_samples,
            payload: Vec::with_capacity(crate::codec::MAX_PACKET),
            datagram: Vec::with_capacity(natter_proto::MAX_MEDIA_DATAGRAM),
            marker: true,
            packets_sent: 0,
            octets_sent: 0,
            total_packets_sent: 0,
            total_octets_sent: 0,
            dtx_frames: 0,
            in_pause: false,
            encode_time_ms: 0.0,
            origin: None,
            pending: None,
            pinned_frame: false,
            frame_transmit: false,
            frame_voice: false,
        })
    }

    /// Carries on as `ssrc` after a rejoin, with `fresh`'s encoder and frame settings: the RTP
    /// sequence numbers and the capture clock keep running, so the first packet of the new
    /// membership tells each listener how many packets never reached it during the outage
    /// (frames encoded while the link was down were numbered and dropped). The per-SSRC
    /// counts of the sender reports start again, as RFC 3550 wants for a new SSRC.
    pub fn continue_from(mut fresh: Self, old: &Self) -> Self {
        fresh.sequence = old.sequence;
        // A partly filled frame of the old membership is dropped; its samples still passed.
        fresh.timestamp = old.timestamp.wrapping_add(old.frame.len() as u32);
        fresh.origin = old.origin;
        fresh.pinned_frame = old.pinned_frame;
        fresh.total_packets_sent = old.total_packets_sent;
        fresh.total_octets_sent = old.total_octets_sent;
        fresh.dtx_frames = old.dtx_frames;
        fresh.encode_time_ms = old.encode_time_ms;
        fresh
    }

    /// Keeps the frame size the user chose whatever the rate controller says.
    pub fn pin_frame_size(&mut self) {
        self.pinned_frame = true;
    }

    /// Current frame length in samples.
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    pub fn encoder_config(&self) -> EncoderConfig {
        self.encoder.config()
    }

    /// Schedules new encoder settings for the next frame boundary.
    pub fn apply(&mut self, settings: EncoderSettings) {
        self.pending = Some(settings);
    }

    fn apply_pending(&mut self) {
        let Some(s) = self.pending.take() else { return };
        if !self.pinned_frame {
            self.frame_samples = s.frame_ms as usize * 48;
        }
        let current = self.encoder.config();
        if current.restricted_low_delay != s.restricted_low_delay {
            let config = EncoderConfig {
                bitrate_bps: s.bitrate_bps,
                expected_loss_pct: s.expected_loss_pct,
                restricted_low_delay: s.restricted_low_delay,
                fec: s.fec,
                dred_10ms: s.dred_10ms,
                ..current
            };
            if let Ok(encoder) = OpusEncoder::new(config) {
                self.encoder = encoder;
            }
        } else {
            let _ = self
                .encoder
                .retune(s.bitrate_bps, s.expected_loss_pct, s.fec, s.dred_10ms);
        }
    }

    /// Encoder look-ahead in ms, part of the "encode" latency stage.
    pub fn lookahead_ms(&self) -> f64 {
        f64::from(self.encoder.lookahead()) / 48.0
    }

    /// Adds captured samples (captured ending at engine time `now_ms`); calls `emit` with each
    /// complete datagram. A frame goes out if any of its blocks was to be transmitted (so
    /// word onsets are not delayed by a frame); otherwise it is consumed silently and the
    /// next packet starts a new talkspurt.
    pub fn push(
        &mut self,
        mut samples: &[f32],
        now_ms: f64,
        gate: Gate,
        emit: &mut dyn FnMut(&[u8]),
    ) {
        self.frame_transmit |= gate.transmit;
        self.frame_voice |= gate.voice;
        if self.origin.is_none() {
            self.origin = Some((self.timestamp, now_ms - samples.len() as f64 / 48.0));
        }
        while !samples.is_empty() {
            if self.frame.is_empty() {
                self.apply_pending();
            }
            let take = (self.frame_samples - self.frame.len()).min(samples.len());
            self.frame.extend_from_slice(&samples[..take]);
            samples = &samples[take..];
            if self.frame.len() == self.frame_samples {
                if self.frame_transmit {
                    self.send_frame(emit);
                } else {
                    self.marker = true;
                }
                self.timestamp = self.timestamp.wrapping_add(self.frame_samples as u32);
                self.frame.clear();
                self.frame_transmit = !samples.is_empty() && gate.transmit;
                self.frame_voice = !samples.is_empty() && gate.voice;
            }
        }
    }

    fn send_frame(&mut self, emit: &mut dyn FnMut(&[u8])) {
        let started = std::time::Instant::now();
        self.encoder.set_voice(self.frame_voice);
        if self.encoder.encode(&self.frame, &mut self.payload).is_err() {
            return;
        }
        let took = started.elapsed().as_secs_f64() * 1000.0;
        self.encode_time_ms += 0.05 * (took - self.encode_time_ms);
        // DTX: a 1–2 byte frame means "nothing worth sending"; the gap in timestamps tells the
        // receiver, and the next packet starts a new talkspurt. The first one of a pause, and
        // the first after each of libopus's comfort-noise updates (every 400 ms), is sent (a
        // few bytes twice a second while silent): it tells each listener that the talker paused, so
        // the listener's buffer running dry right after it is a pause (silence, the timeline
        // kept), not a loss. Without it a buffer can only guess from the last audio's level,
        // and a sentence that ends in breath or room noise above −45 dBFS was concealed for
        // 100 ms and re-buffered — ~25–65 concealed frames per 38 s real call on a clean path
        // (docs/BENCHMARKS.md, session 9).
        if self.payload.len() <= 2 {
            if self.in_pause {
                self.dtx_frames += 1;
                self.marker = true;
                return;
            }
            self.in_pause = true;
        } else {
            self.in_pause = false;
        }
        let level = AudioLevel::from_samples(&self.frame, self.frame_voice);
        let header = RtpHeader {
            marker: self.marker,
            payload_type: natter_proto::OPUS_PAYLOAD_TYPE,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc: self.ssrc,
            audio_level: Some(level),
        };
        self.datagram.clear();
        write_rtp(&header, &self.payload, &mut self.datagram);
        emit(&self.datagram);
        self.marker = false;
        self.sequence = self.sequence.wrapping_add(1);
        self.packets_sent = self.packets_sent.wrapping_add(1);
        self.total_packets_sent += 1;
        self.total_octets_sent += self.payload.len() as u64;
        self.octets_sent = self.octets_sent.wrapping_add(self.payload.len() as u32);
    }

    /// Sender info for an RTCP sender report at engine time `now_ms` and wall clock
    /// `ntp_now`: the RTP timestamp that corresponds to this instant on the capture clock.
    pub fn sender_info(&self, now_ms: f64, ntp_now: u64) -> Option<SenderInfo> {
        let (ts0, t0) = self.origin?;
        if self.packets_sent == 0 {
            return None;
        }
        Some(SenderInfo {
            ntp_timestamp: ntp_now,
            rtp_timestamp: ts0.wrapping_add(((now_ms - t0) * 48.0) as u32),
            packet_count: self.packets_sent,
            octet_count: self.octets_sent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_proto::media::Datagram;

    #[test]
    fn frames_are_packetized_with_consecutive_numbers_and_level() {
        let mut s = Sender::new(0x1234_5678, 960, EncoderConfig::default()).unwrap();
        let mut out: Vec<Vec<u8>> = Vec::new();
        let tone: Vec<f32> = (0..480).map(|i| (i as f32 * 0.1).sin() * 0.3).collect();
        for k in 0..10 {
            // Muted for 10 ms blocks 4 and 5 (one frame); voice flagged from block 2 on.
            let gate = Gate {
                transmit: !(4..6).contains(&k),
                voice: k >= 2,
            };
            s.push(&tone, f64::from(k) * 10.0, gate, &mut |d| {
                out.push(d.to_vec())
            });
        }
        assert_eq!(out.len(), 4);
        let pkts: Vec<_> = out
            .iter()
            .map(|d| Datagram::parse(d).unwrap().rtp().unwrap().header)
            .collect();
        assert!(
            pkts[0].marker && !pkts[1].marker && pkts[2].marker,
            "talkspurt markers"
        );
        assert_eq!(pkts[1].sequence, pkts[0].sequence.wrapping_add(1));
        assert_eq!(pkts[2].sequence, pkts[1].sequence.wrapping_add(1));
        // The muted frame still advances the RTP clock.
        assert_eq!(pkts[2].timestamp.wrapping_sub(pkts[1].timestamp), 1920);
        let level = pkts[0].audio_level.unwrap();
        assert!(
            !level.voice && (12..=14).contains(&level.level),
            "{level:?}"
        );
        assert!(
            pkts[1].audio_level.unwrap().voice,
            "VAD verdict carried as the V flag"
        );
        assert!(s.sender_info(100.0, 1).is_some());
    }

    /// After a rejoin the new SSRC's packets carry on the old numbering and capture clock, so
    /// a listener sees frames sent into the outage as a gap; the sender report's counts start
    /// again for the new SSRC while the call's total keeps counting.
    #[test]
    fn a_rejoined_sender_continues_numbering_under_its_new_ssrc() {
        let tone: Vec<f32> = (0..480).map(|i| (i as f32 * 0.1).sin() * 0.3).collect();
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut old = Sender::new(0x1111_0000, 960, EncoderConfig::default()).unwrap();
        for k in 0..9 {
            old.push(&tone, f64::from(k) * 10.0, Gate::OPEN, &mut |d| {
                out.push(d.to_vec())
            });
        }
        let fresh = Sender::new(0x2222_0000, 960, EncoderConfig::default()).unwrap();
        let mut new = Sender::continue_from(fresh, &old);
        for k in 9..13 {
            new.push(&tone, f64::from(k) * 10.0, Gate::OPEN, &mut |d| {
                out.push(d.to_vec())
            });
        }
        let pkts: Vec<_> = out
            .iter()
            .map(|d| Datagram::parse(d).unwrap().rtp().unwrap().header)
            .collect();
        assert_eq!(pkts.len(), 6);
        assert_eq!(pkts[3].ssrc, 0x1111_0000);
        assert_eq!(pkts[4].ssrc, 0x2222_0000);
        assert!(pkts[4].marker, "the new membership starts a talkspurt");
        assert_eq!(pkts[4].sequence, pkts[3].sequence.wrapping_add(1));
        // The half frame the old sender held when it was replaced still took its time.
        assert_eq!(pkts[4].timestamp.wrapping_sub(pkts[3].timestamp), 960 + 480);
        assert_eq!((new.packets_sent, new.total_packets_sent), (2, 6));
    }

    /// A pause sends its first DTX frame (so listeners know it is a pause), and one after each
    /// of libopus's comfort-noise updates, and nothing more until sound resumes.
    /// (The `Gate`'s voice flag holds DTX off: `OpusEncoder::set_voice`.)
    #[test]
    fn a_pause_sends_its_first_dtx_frame_only() {
        let mut s = Sender::new(0x1234_5678, 960, EncoderConfig::default()).unwrap();
        let tone: Vec<f32> = (0..480).map(|i| (i as f32 * 0.1).sin() * 0.3).collect();
        let silence = vec![0.0; 480];
        let mut out: Vec<Vec<u8>> = Vec::new();
        // 1 s of tone, 2 s of digital silence (in which the VAD hears no voice), 0.5 s of
        // tone, in 10 ms blocks.
        for k in 0..350 {
            let (block, gate) = if (100..300).contains(&k) {
                let quiet = Gate {
                    transmit: true,
                    voice: false,
                };
                (&silence, quiet)
            } else {
                (&tone, Gate::OPEN)
            };
            s.push(block, f64::from(k) * 10.0, gate, &mut |d| {
                out.push(d.to_vec())
            });
        }
        let pkts: Vec<_> = out
            .iter()
            .map(|d| {
                let rtp = Datagram::parse(d).unwrap().rtp().unwrap();
                (rtp.header, rtp.payload.len())
            })
            .collect();
        // In DTX libopus still emits a comfort-noise update every 400 ms; each is followed by
        // one DTX frame, so the listener knows the pause goes on. Nothing else is sent.
        let dtx: Vec<usize> = (0..pkts.len()).filter(|&i| pkts[i].1 <= 2).collect();
        assert!((1..=6).contains(&dtx.len()), "DTX frames sent: {dtx:?}");
        for w in pkts.windows(2) {
            let gap = w[1].0.timestamp.wrapping_sub(w[0].0.timestamp);
            assert_eq!(w[1].0.sequence, w[0].0.sequence.wrapping_add(1));
            assert_eq!(
                w[1].0.marker,
                gap > 960,
                "a talkspurt starts after every gap"
            );
        }
        let (first, next) = (&pkts[dtx[0]].0, &pkts[dtx[0] + 1].0);
        assert!(next.timestamp.wrapping_sub(first.timestamp) >= 960 * 10);
        assert!(s.dtx_frames > 80, "{}", s.dtx_frames);
    }
}
