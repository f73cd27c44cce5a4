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

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            if let Ok(d) = Datagram::parse(&bytes) {
                let _ = d.rtp();
                let _ = d.sender_ssrc();
            }
        }
    }
}
