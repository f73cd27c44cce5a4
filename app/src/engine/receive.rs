//! The receiving half: one [`RemotePeer`] per remote SSRC, holding its RFC 3550 statistics,
//! jitter buffer and Opus decoder, plus what RTCP taught us about the path to it.

use crate::codec::OpusDecoder;
use crate::jitter::{JitterBuffer, JitterConfig};
use natter_proto::reception::ReceptionStats;

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
    /// RFC 3550 interarrival jitter, ms.
    pub jitter_ms: f64,
    /// Round trip to this peer from RTCP (its reports on our stream), ms.
    pub rtt_ms: Option<f64>,
    /// Audio buffered in the jitter buffer, ms.
    pub jitter_buffer_ms: f64,
    pub jitter_buffer_target_ms: f64,
}

pub struct RemotePeer {
    pub ssrc: u32,
    pub reception: ReceptionStats,
    pub jitter: JitterBuffer<OpusDecoder>,
    /// Middle 32 bits of the NTP time in this peer's last sender report, and the engine time
    /// (ms) it arrived: echoed as LSR/DLSR so the peer can compute its RTT.
    pub last_sr: Option<(u32, f64)>,
    pub rtt_ms: Option<f64>,
    pub last_packet_ms: f64,
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
        })
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
            jitter_ms: f64::from(self.reception.jitter()) / 48.0,
            rtt_ms: self.rtt_ms,
            jitter_buffer_ms: jb.delay_ms,
            jitter_buffer_target_ms: jb.target_ms,
        }
    }
}
