//! The receiving half: one [`RemotePeer`] per remote SSRC, holding its jitter buffer and Opus
//! decoder; its RTCP side (RFC 3550 statistics, round trip, the sender's own latency stages)
//! lives in the RTCP session ([`super::rtcp::RemoteSender`]).

use super::rtcp::RemoteSender;
use crate::codec::OpusDecoder;
use crate::jitter::{JitterBuffer, JitterConfig};

pub use crate::latency_stages::LatencyStages;

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
    /// Frames concealed (deep PLC), recovered from the next packet's in-band FEC, and recovered
    /// from a later packet's deep redundancy (DRED), separately.
    pub concealed: u64,
    pub fec_recovered: u64,
    pub dred_recovered: u64,
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
    /// First and highest RTP sequence number received from this SSRC: where a person's
    /// numbering left off before a rejoin and where it picked up after.
    #[serde(skip)]
    pub sequence_range: Option<(u16, u16)>,
}

/// Largest jump in sequence numbers between two memberships of one person that still counts
/// as packets lost in between (RFC 3550's MAX_DROPOUT: about a minute of 20 ms frames); a
/// larger or backward jump means the sender did not carry its numbering on (an older client,
/// or a restarted app), so nothing is known about the gap.
const MAX_REJOIN_GAP: u16 = 3000;

impl PeerStats {
    /// Adds the statistics of the same person's `earlier` memberships (oldest first; each had
    /// its own SSRC) to these, so a rejoin neither resets the counts nor hides the outage:
    /// the packets numbered between where one membership's sequence left off and where the
    /// next picked up were sent and never arrived, and count as lost. Rates, delays and the
    /// latency breakdown stay the current membership's.
    pub fn carry_over(&mut self, earlier: &[&PeerStats]) {
        let mut next_first = self.sequence_range.map(|(first, _)| first);
        for e in earlier.iter().rev() {
            if let (Some((_, highest)), Some(first)) = (e.sequence_range, next_first) {
                let jump = first.wrapping_sub(highest);
                if (1..=MAX_REJOIN_GAP).contains(&jump) {
                    self.packets_lost += i64::from(jump - 1);
                }
            }
            next_first = e.sequence_range.map(|(first, _)| first);
            self.packets_received += e.packets_received;
            self.packets_lost += e.packets_lost;
            self.late += e.late;
            self.duplicates += e.duplicates;
            self.concealed += e.concealed;
            self.fec_recovered += e.fec_recovered;
            self.dred_recovered += e.dred_recovered;
            self.rebuffers += e.rebuffers;
            self.accelerated_ms += e.accelerated_ms;
            self.expanded_ms += e.expanded_ms;
        }
    }
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
    pub jitter: JitterBuffer<OpusDecoder>,
    pub last_packet_ms: f64,
    /// Audio level extension of the last packet, and when one last said "voice" (ms).
    pub audio_level: Option<natter_proto::rtp::AudioLevel>,
    pub last_voice_ms: Option<f64>,
}

impl RemotePeer {
    pub fn new(ssrc: u32, config: JitterConfig, now_ms: f64) -> anyhow::Result<Self> {
        Ok(Self {
            ssrc,
            jitter: JitterBuffer::new(config, OpusDecoder::new()?),
            last_packet_ms: now_ms,
            audio_level: None,
            last_voice_ms: None,
        })
    }

    /// Whether the sender flagged voice within [`SPEAKING_HOLD_MS`] of `now_ms`.
    pub fn speaking(&self, now_ms: f64) -> bool {
        self.last_voice_ms
            .is_some_and(|at| now_ms - at <= SPEAKING_HOLD_MS)
    }

    /// Stage breakdown given what RTCP knows of this sender and this receiver's decode and
    /// playback delays.
    pub fn stages(
        &self,
        rtcp: Option<&RemoteSender>,
        decode_ms: f64,
        playback_ms: f64,
    ) -> LatencyStages {
        let reported = rtcp.and_then(|r| r.sender_latency);
        let sender = reported.unwrap_or_default();
        let ms = |us: u32| f64::from(us) / 1000.0;
        LatencyStages::from_values(
            [
                ms(sender.capture_us),
                ms(sender.processing_us),
                ms(sender.encode_us),
                rtcp.map_or(0.0, RemoteSender::network_ms),
                self.jitter.stats().delay_ms,
                decode_ms,
                playback_ms,
            ],
            reported.is_some(),
        )
    }

    pub fn stats(&self, rtcp: Option<&RemoteSender>) -> PeerStats {
        let jb = self.jitter.stats();
        PeerStats {
            ssrc: self.ssrc,
            name: None,
            packets_received: rtcp.map_or(0, |r| r.reception.received()),
            packets_lost: rtcp.map_or(0, |r| r.reception.cumulative_lost()),
            late: jb.late,
            duplicates: jb.duplicates,
            concealed: jb.concealed,
            fec_recovered: jb.fec_recovered,
            dred_recovered: jb.dred_recovered,
            rebuffers: jb.rebuffers,
            accelerated_ms: jb.accelerated_ms,
            expanded_ms: jb.expanded_ms,
            jitter_ms: rtcp.map_or(0.0, |r| f64::from(r.reception.jitter()) / 48.0),
            rtt_ms: rtcp.and_then(|r| r.rtt_ms),
            jitter_buffer_ms: jb.delay_ms,
            jitter_buffer_target_ms: jb.target_ms,
            stages: LatencyStages::default(),
            speaking: false,
            audio_level_dbov: self.audio_level.map(|l| -f32::from(l.level)),
            gain: 1.0,
            sequence_range: rtcp.and_then(|r| r.reception.sequence_range()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership(range: (u16, u16), received: u64, lost: i64) -> PeerStats {
        PeerStats {
            packets_received: received,
            packets_lost: lost,
            concealed: 1,
            sequence_range: Some(range),
            ..PeerStats::default()
        }
    }

    /// Two outages, each ended by a rejoin under a new SSRC whose numbering carries on (the
    /// second across the 16-bit wrap): what arrived, what was lost inside each membership and
    /// the packets numbered during each outage all add up.
    #[test]
    fn a_rejoin_carries_the_counts_over_and_counts_the_outage_as_lost() {
        let first = membership((100, 399), 295, 5);
        let second = membership((650, 65_500), 64_850, 1);
        let mut current = membership((64, 200), 137, 0);
        current.carry_over(&[&first, &second]);
        // Outages: 400..=649 (250 packets) and 65_501..=63 after the wrap (35 + 64 = 99).
        assert_eq!(current.packets_lost, 5 + 1 + 250 + 99);
        assert_eq!(current.packets_received, 295 + 64_850 + 137);
        assert_eq!(current.concealed, 3);
    }

    /// A sender that starts its numbering afresh (an older client) or from before where it
    /// left off: the gap is unknown, not counted as loss.
    #[test]
    fn unrelated_numbering_is_not_counted_as_an_outage() {
        for restart in [(60_000, 60_100), (300, 400), (399, 500)] {
            let mut current = membership(restart, 101, 0);
            current.carry_over(&[&membership((100, 399), 300, 0)]);
            assert_eq!(current.packets_lost, 0, "{restart:?}");
            assert_eq!(current.packets_received, 401);
        }
    }
}
