//! Media datagrams: RTP over QUIC (draft-ietf-avtcore-rtp-over-quic).
//!
//! Each QUIC DATAGRAM frame carries a QUIC varint *flow identifier* followed by exactly one RTP
//! packet or one compound RTCP packet. RTP and RTCP share the flow and are told apart by the
//! second byte as in RFC 5761 §4: values 192–223 are RTCP packet types, which no RTP payload
//! type Natter uses can produce.

use crate::rtp::{RtpError, RtpHeader, RtpPacket};
use crate::varint;
use thiserror::Error;

/// Flow identifier of the audio stream (RTP and its RTCP).
pub const AUDIO_FLOW: u64 = 0;

/// Why a media datagram was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum MediaError {
    #[error("empty datagram or truncated flow identifier")]
    Truncated,
    #[error("datagram of {0} bytes exceeds the protocol maximum")]
    TooLarge(usize),
    #[error("unknown flow identifier {0}")]
    UnknownFlow(u64),
    #[error("no packet after the flow identifier")]
    Empty,
    #[error("invalid RTP packet: {0}")]
    Rtp(#[from] RtpError),
}

/// What the packet after the flow identifier is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Rtp,
    Rtcp,
}

/// A media datagram split into flow identifier and packet, without parsing the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    pub flow_id: u64,
    pub kind: PacketKind,
    /// The RTP packet or compound RTCP packet.
    pub packet: &'a [u8],
}

impl<'a> Datagram<'a> {
    /// Splits a datagram; checks size, flow and that an RTP/RTCP packet follows.
    pub fn parse(buf: &'a [u8]) -> Result<Self, MediaError> {
        if buf.len() > crate::MAX_MEDIA_DATAGRAM {
            return Err(MediaError::TooLarge(buf.len()));
        }
        let (flow_id, used) = varint::decode(buf).map_err(|_| MediaError::Truncated)?;
        if flow_id != AUDIO_FLOW {
            return Err(MediaError::UnknownFlow(flow_id));
        }
        let packet = &buf[used..];
        let second = *packet.get(1).ok_or(MediaError::Empty)?;
        let kind = if (192..=223).contains(&second) {
            PacketKind::Rtcp
        } else {
            PacketKind::Rtp
        };
        Ok(Self {
            flow_id,
            kind,
            packet,
        })
    }

    /// Parses the packet as RTP (for `PacketKind::Rtp` datagrams).
    pub fn rtp(&self) -> Result<RtpPacket<'a>, MediaError> {
        Ok(RtpPacket::parse(self.packet)?)
    }

    /// SSRC of the packet's sender: the RTP SSRC, or the sender SSRC that every packet of an
    /// RTCP compound carries (None if they disagree).
    pub fn sender_ssrc(&self) -> Option<u32> {
        match self.kind {
            PacketKind::Rtp => crate::rtp::peek_ssrc(self.packet),
            PacketKind::Rtcp => crate::rtcp::compound_sender_ssrc(self.packet),
        }
    }
}

/// Appends a complete RTP media datagram.
pub fn write_rtp(header: &RtpHeader, payload: &[u8], out: &mut Vec<u8>) {
    varint::encode(AUDIO_FLOW, out);
    header.write(payload, out);
}

/// Appends a complete RTCP media datagram holding `packets` as one compound packet.
pub fn write_rtcp(packets: &[crate::rtcp::RtcpPacket], out: &mut Vec<u8>) {
    varint::encode(AUDIO_FLOW, out);
    for p in packets {
        p.write(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtcp::{RtcpPacket, parse_compound};
    use crate::rtp::AudioLevel;
    use proptest::prelude::*;

    #[test]
    fn demultiplexes_rtp_and_rtcp() {
        let h = RtpHeader {
            marker: true,
            payload_type: crate::OPUS_PAYLOAD_TYPE,
            sequence: 1,
            timestamp: 960,
            ssrc: 42,
            audio_level: None,
        };
        let mut buf = Vec::new();
        write_rtp(&h, b"frame", &mut buf);
        let d = Datagram::parse(&buf).unwrap();
        assert_eq!((d.kind, d.sender_ssrc()), (PacketKind::Rtp, Some(42)));
        assert_eq!(d.rtp().unwrap().payload, b"frame");

        let rr = RtcpPacket::ReceiverReport {
            ssrc: 43,
            reports: vec![],
        };
        buf.clear();
        write_rtcp(std::slice::from_ref(&rr), &mut buf);
        let d = Datagram::parse(&buf).unwrap();
        assert_eq!((d.kind, d.sender_ssrc()), (PacketKind::Rtcp, Some(43)));
        assert_eq!(parse_compound(d.packet).unwrap(), vec![rr]);
    }

    #[test]
    fn rejects_bad_datagrams() {
        assert_eq!(Datagram::parse(&[]), Err(MediaError::Truncated));
        assert_eq!(Datagram::parse(&[0]), Err(MediaError::Empty));
        assert_eq!(
            Datagram::parse(&[5, 0x80, 111]),
            Err(MediaError::UnknownFlow(5))
        );
        assert_eq!(Datagram::parse(&[0; 1201]), Err(MediaError::TooLarge(1201)));
    }

    /// Longest RTP payload that fits a datagram next to the flow id, header and extension.
    const MAX_RTP_PAYLOAD: usize = crate::MAX_MEDIA_DATAGRAM - 1 - crate::rtp::HEADER_LEN - 8;

    /// Any RTP header Natter may send. Payload types 64–95 are left out: RFC 5761 §4 forbids
    /// them when RTP and RTCP share a flow, since with the marker bit set the second byte
    /// (192–223) reads as an RTCP packet type.
    fn rtp_headers() -> impl Strategy<Value = RtpHeader> {
        (
            any::<bool>(),
            prop_oneof![0u8..64, 96u8..128],
            any::<(u16, u32, u32)>(),
            proptest::option::of((any::<bool>(), 0u8..128)),
        )
            .prop_map(
                |(marker, payload_type, (sequence, timestamp, ssrc), level)| RtpHeader {
                    marker,
                    payload_type,
                    sequence,
                    timestamp,
                    ssrc,
                    audio_level: level.map(|(voice, level)| AudioLevel { voice, level }),
                },
            )
    }

    /// Any payload up to [`MAX_RTP_PAYLOAD`], the largest often (a datagram of exactly the limit).
    fn rtp_payloads() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![0..=MAX_RTP_PAYLOAD, Just(MAX_RTP_PAYLOAD)]
            .prop_flat_map(|len| proptest::collection::vec(any::<u8>(), len))
    }

    proptest! {
        /// An RTP datagram of any header and any payload that fits is recognised as RTP on the
        /// audio flow, its SSRC peeked, and parsed back to the same header and payload.
        #[test]
        fn rtp_datagram_round_trips(header in rtp_headers(),
                                    payload in rtp_payloads()) {
            let mut buf = Vec::new();
            write_rtp(&header, &payload, &mut buf);
            let d = Datagram::parse(&buf).unwrap();
            prop_assert_eq!((d.flow_id, d.kind), (AUDIO_FLOW, PacketKind::Rtp));
            prop_assert_eq!(d.sender_ssrc(), Some(header.ssrc));
            let p = d.rtp().unwrap();
            prop_assert_eq!(p.header, header);
            prop_assert_eq!(p.payload, &payload[..]);
        }

        /// A compound RTCP datagram (as many of the generated packets as fit the size limit,
        /// at least one) is recognised as RTCP and parses back to the same packets.
        #[test]
        fn rtcp_datagram_round_trips(mut packets in proptest::collection::vec(crate::rtcp::tests::packets(), 1..5)) {
            let mut buf = Vec::new();
            loop {
                buf.clear();
                write_rtcp(&packets, &mut buf);
                if buf.len() <= crate::MAX_MEDIA_DATAGRAM {
                    break;
                }
                packets.pop();
            }
            let d = Datagram::parse(&buf).unwrap();
            prop_assert_eq!((d.flow_id, d.kind), (AUDIO_FLOW, PacketKind::Rtcp));
            let first = packets[0].sender_ssrc();
            let one_sender = packets.iter().all(|p| p.sender_ssrc() == first);
            prop_assert_eq!(d.sender_ssrc(), first.filter(|_| one_sender));
            prop_assert_eq!(parse_compound(d.packet), Ok(packets));
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(d) = Datagram::parse(&bytes) {
                let _ = d.rtp();
                let _ = d.sender_ssrc();
            }
        }
    }
}
