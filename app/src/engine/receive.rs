//! The receiving half: one [`RemotePeer`] per remote SSRC, holding its RFC 3550 statistics,
//! jitter buffer and Opus decoder, plus what RTCP taught us about the path to it.

use crate::codec::OpusDecoder;
use crate::jitter::{JitterBuffer, JitterConfig};
use natter_proto::reception::ReceptionStats;

/// Where one peer's mouth-to-ear latency goes, stage by stage (ms). The sender's stages come
/// from its RTCP APP report; the rest is measured here. `total_ms` is their sum, which the
/// end-to-end tests compare with the latency measured by cross-correlation.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct LatencyStages {
    /// Sender: microphone to capture callback (device and driver buffering).
    pub capture_ms: f64,
    /// Sender: voice processing and waiting for a full frame.
    pub processing_ms: f64,
    /// Sender: codec look-ahead plus encoding time.
    pub encode_ms: f64,
    /// One-way network and relay.
    pub network_ms: f64,
    /// Arrival to playout (measured per frame by the jitter buffer).
    pub jitter_buffer_ms: f64,
    /// Decoding (and concealment) time.
    pub decode_ms: f64,
    /// Mixed to heard: waiting for the device to take the block, plus its output latency.
    pub playback_ms: f64,
    pub total_ms: f64,
    /// False until the sender's stages have been received.
    pub complete: bool,
}

/// Per-peer statistics, as printed by `natter call` and shown by the app.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PeerStats {
    pub ssrc: u32,
    pub name: Option<String>,
    pub packets_received: u64,
    /// RFC 3550 cumulative loss: expected minus received.
    pub packets_lost: i64,
    /// Arrived after their playout time.
    pub late: u64,
    pub duplicates: u64,
    pub concealed: u64,
    pub fec_recovered: u64,
    /// Times the jitter buffer ran dry, faded out and restarted.
    pub rebuffers: u64,
    /// Audio the jitter buffer removed (accelerate) and added (expand) to change its delay, ms.
    pub accelerated_ms: f64,
    pub expanded_ms: f64,
    /// RFC 3550 interarrival jitter, ms.
    pub jitter_ms: f64,
    /// Round trip to this peer from RTCP (its reports on our stream), ms.
    pub rtt_ms: Option<f64>,
    /// Measured jitter-buffer delay: arrival to playout of each frame, ms.
    pub jitter_buffer_ms: f64,
    pub jitter_buffer_target_ms: f64,
    pub stages: LatencyStages,
    /// The sender's voice activity (RFC 6464 "V" flag) was set within the last
    /// [`SPEAKING_HOLD_MS`]: the speaking indicator.
    pub speaking: bool,
    /// Level of the sender's last frame, dBov (0 loudest, -127 silence), from RFC 6464.
    pub audio_level_dbov: Option<f32>,
    /// Local playback gain for this sender (0: muted locally).
    pub gain: f32,
}

/// What one listener reports about our own stream (the RTCP report blocks it sends about our
/// SSRC): a sender's view of each person hearing it, even those who send nothing back.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ListenerStats {
    pub ssrc: u32,
    pub name: Option<String>,
    /// Round trip through the relay to this listener and back (RFC 3550 §6.4.1), once it has
    /// heard one of our sender reports.
    pub rtt_ms: Option<f64>,
    /// Share of our packets it lost between its last two reports, %.
    pub loss_pct: f64,
    /// Interarrival jitter of our stream as it measures it, ms.
    pub jitter_ms: f64,
    /// Engine time of its latest report (for forgetting listeners who left).
    #[serde(skip)]
    pub reported_ms: f64,
}

/// How long a "voice" flag keeps a sender marked as speaking (bridges the gaps between
/// words, and DTX pauses).
pub const SPEAKING_HOLD_MS: f64 = 400.0;

pub struct RemotePeer {
    pub ssrc: u32,
    pub reception: ReceptionStats,
    pub jitter: JitterBuffer<OpusDecoder>,
    /// Middle 32 bits of the NTP time in this peer's last sender report, and the engine time
    /// (ms) it arrived: echoed as LSR/DLSR so the peer can compute its RTT.
    pub last_sr: Option<(u32, f64)>,
    pub rtt_ms: Option<f64>,
    pub last_packet_ms: f64,
    /// The sender's own stages, from its latest APP report.
    pub sender_latency: Option<natter_proto::rtcp::SenderLatency>,
    /// One-way delay from the wall clock in its sender reports (valid when both clocks are
    /// synchronised, e.g. NTP or the same machine), ms.
    pub sr_one_way_ms: Option<f64>,
    /// Audio level extension of the last packet, and when one last said "voice" (ms).
    pub audio_level: Option<natter_proto::rtp::AudioLevel>,
    pub last_voice_ms: Option<f64>,
}

impl RemotePeer {
    pub fn new(ssrc: u32, config: JitterConfig, now_ms: f64) -> anyhow::Result<Self> {
        Ok(Self {
            ssrc,
            reception: ReceptionStats::new(ssrc),
            jitter: JitterBuffer::new(config, OpusDecoder::new()?),
            last_sr: None,
            rtt_ms: None,
            last_packet_ms: now_ms,
            sender_latency: None,
            sr_one_way_ms: None,
            audio_level: None,
            last_voice_ms: None,
        })
    }

    /// One-way network delay: half the RTCP round trip when we have it (no clock assumptions),
    /// else the sender-report wall-clock difference.
    pub fn network_ms(&self) -> f64 {
        self.rtt_ms
            .map(|r| r / 2.0)
            .or(self.sr_one_way_ms)
            .unwrap_or(0.0)
            .max(0.0)
    }

    /// Whether the sender flagged voice within [`SPEAKING_HOLD_MS`] of `now_ms`.
    pub fn speaking(&self, now_ms: f64) -> bool {
        self.last_voice_ms
            .is_some_and(|at| now_ms - at <= SPEAKING_HOLD_MS)
    }

    /// Stage breakdown given this receiver's decode and playback delays.
    pub fn stages(&self, decode_ms: f64, playback_ms: f64) -> LatencyStages {
        let sender = self.sender_latency.unwrap_or_default();
        let ms = |us: u32| f64::from(us) / 1000.0;
        let mut s = LatencyStages {
            capture_ms: ms(sender.capture_us),
            processing_ms: ms(sender.processing_us),
            encode_ms: ms(sender.encode_us),
            network_ms: self.network_ms(),
            jitter_buffer_ms: self.jitter.stats().delay_ms,
            decode_ms,
            playback_ms,
            total_ms: 0.0,
            complete: self.sender_latency.is_some(),
        };
        s.total_ms = s.capture_ms
            + s.processing_ms
            + s.encode_ms
            + s.network_ms
            + s.jitter_buffer_ms
            + s.decode_ms
            + s.playback_ms;
        s
    }

    pub fn stats(&self) -> PeerStats {
        let jb = self.jitter.stats();
        PeerStats {
            ssrc: self.ssrc,
            name: None,
            packets_received: self.reception.received(),
            packets_lost: self.reception.cumulative_lost(),
            late: jb.late,
            duplicates: jb.duplicates,
            concealed: jb.concealed,
            fec_recovered: jb.fec_recovered,
            rebuffers: jb.rebuffers,
            accelerated_ms: jb.accelerated_ms,
            expanded_ms: jb.expanded_ms,
            jitter_ms: f64::from(self.reception.jitter()) / 48.0,
            rtt_ms: self.rtt_ms,
            jitter_buffer_ms: jb.delay_ms,
            jitter_buffer_target_ms: jb.target_ms,
            stages: LatencyStages::default(),
            speaking: false,
            audio_level_dbov: self.audio_level.map(|l| -f32::from(l.level)),
            gain: 1.0,
        }
    }
}
