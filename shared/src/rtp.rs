//! RTP packets (RFC 3550) as Natter sends them: one Opus frame per packet (RFC 7587) and, when
//! the sender knows it, the client-to-mixer audio level (RFC 6464) in a one-byte header
//! extension (RFC 8285). The relay reads the SSRC and audio level without decoding audio.

use thiserror::Error;

/// Fixed part of the RTP header.
pub const HEADER_LEN: usize = 12;

/// RFC 8285 one-byte header extension profile marker.
const ONE_BYTE_PROFILE: u16 = 0xBEDE;

/// Extension element id Natter uses for the RFC 6464 audio level. Natter has no SDP to
/// negotiate ids, so the id is fixed by the protocol (see docs/PROTOCOL.md).
pub const AUDIO_LEVEL_EXT_ID: u8 = 1;

/// Why an RTP packet was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtpError {
    #[error("packet shorter than the RTP header")]
    TooShort,
    #[error("RTP version {0} (expected 2)")]
    BadVersion(u8),
    #[error("CSRC list runs past the end of the packet")]
    TruncatedCsrc,
    #[error("header extension runs past the end of the packet")]
    TruncatedExtension,
    #[error("padding length larger than the payload")]
    BadPadding,
}

/// RFC 6464 audio level: how loud the sender's frame was and whether it holds voice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioLevel {
    /// Voice activity flag (the "V" bit).
    pub voice: bool,
    /// Level in -dBov, 0 (loudest) to 127 (silence).
    pub level: u8,
}

impl AudioLevel {
    /// Level of a block of samples in [-1, 1] from its RMS, as RFC 6464 §3 defines it.
    pub fn from_samples(samples: &[f32], voice: bool) -> Self {
        let level = if samples.is_empty() {
            127
        } else {
            let mean_square = samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32;
            let dbov = 10.0 * mean_square.max(1e-13).log10();
            (-dbov).round().clamp(0.0, 127.0) as u8
        };
        Self { voice, level }
    }
}

/// The parts of an RTP header Natter uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// Marker bit: set on the first packet after silence (talkspurt start, RFC 3551 §4.1).
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    /// Sampling instant of the first sample, in 48 kHz units for Opus.
    pub timestamp: u32,
    pub ssrc: u32,
    pub audio_level: Option<AudioLevel>,
}

/// A parsed RTP packet borrowing its payload from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub header: RtpHeader,
    pub payload: &'a [u8],
}

impl<'a> RtpPacket<'a> {
    /// Parses one RTP packet. CSRCs and unknown extension elements are skipped; padding is
    /// removed from the payload.
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        if buf.len() < HEADER_LEN {
            return Err(RtpError::TooShort);
        }
        let version = buf[0] >> 6;
        if version != 2 {
            return Err(RtpError::BadVersion(version));
        }
        let padding = buf[0] & 0x20 != 0;
        let extension = buf[0] & 0x10 != 0;
        let csrc_count = usize::from(buf[0] & 0x0f);
        let marker = buf[1] & 0x80 != 0;
        let payload_type = buf[1] & 0x7f;
        let sequence = u16::from_be_bytes([buf[2], buf[3]]);
        let timestamp = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let ssrc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);

        let mut pos = HEADER_LEN + 4 * csrc_count;
        if pos > buf.len() {
            return Err(RtpError::TruncatedCsrc);
        }
        let mut audio_level = None;
        if extension {
            let ext_header = buf.get(pos..pos + 4).ok_or(RtpError::TruncatedExtension)?;
            let profile = u16::from_be_bytes([ext_header[0], ext_header[1]]);
            let words = usize::from(u16::from_be_bytes([ext_header[2], ext_header[3]]));
            let body = buf
                .get(pos + 4..pos + 4 + 4 * words)
                .ok_or(RtpError::TruncatedExtension)?;
            if profile == ONE_BYTE_PROFILE {
                audio_level = parse_one_byte_extensions(body)?;
            }
            pos += 4 + 4 * words;
        }
        let mut end = buf.len();
        if padding {
            let pad = usize::from(*buf.last().ok_or(RtpError::BadPadding)?);
            if pad == 0 || pad > end - pos {
                return Err(RtpError::BadPadding);
            }
            end -= pad;
        }
        Ok(Self {
            header: RtpHeader {
                marker,
                payload_type,
                sequence,
                timestamp,
                ssrc,
                audio_level,
            },
            payload: &buf[pos..end],
        })
    }
}

/// Walks RFC 8285 one-byte elements, returning the audio level if present.
fn parse_one_byte_extensions(body: &[u8]) -> Result<Option<AudioLevel>, RtpError> {
    let mut level = None;
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if b == 0 {
            // Padding byte between elements.
            i += 1;
            continue;
        }
        let id = b >> 4;
        if id == 15 {
            // Reserved id: stop processing (RFC 8285 §4.2).
            break;
        }
        let len = usize::from(b & 0x0f) + 1;
        let data = body
            .get(i + 1..i + 1 + len)
            .ok_or(RtpError::TruncatedExtension)?;
        if id == AUDIO_LEVEL_EXT_ID {
            level = Some(AudioLevel {
                voice: data[0] & 0x80 != 0,
                level: data[0] & 0x7f,
            });
        }
        i += 1 + len;
    }
    Ok(level)
}

impl RtpHeader {
    /// Appends this header and `payload` as one RTP packet (no CSRCs, no padding).
    pub fn write(&self, payload: &[u8], out: &mut Vec<u8>) {
        let ext = self.audio_level.is_some();
        out.push(0x80 | if ext { 0x10 } else { 0 });
        out.push((u8::from(self.marker) << 7) | (self.payload_type & 0x7f));
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.to_be_bytes());
        if let Some(level) = self.audio_level {
            out.extend_from_slice(&ONE_BYTE_PROFILE.to_be_bytes());
            out.extend_from_slice(&1u16.to_be_bytes());
            // id 1, length 1 (encoded as 0), then the level byte and two padding bytes.
            out.push(AUDIO_LEVEL_EXT_ID << 4);
            out.push((u8::from(level.voice) << 7) | level.level.min(127));
            out.extend_from_slice(&[0, 0]);
        }
        out.extend_from_slice(payload);
    }
}

/// Reads only the SSRC of an RTP packet: the relay's per-datagram check, without a full parse.
pub fn peek_ssrc(buf: &[u8]) -> Option<u32> {
    let b = buf.get(8..12)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(level: Option<AudioLevel>) -> RtpHeader {
        RtpHeader {
            marker: true,
            payload_type: 111,
            sequence: 65_535,
            timestamp: 0xffff_ff00,
            ssrc: 0xdead_beef,
            audio_level: level,
        }
    }

    #[test]
    fn round_trip_with_and_without_level() {
        for level in [
            None,
            Some(AudioLevel {
                voice: true,
                level: 42,
            }),
        ] {
            let mut buf = Vec::new();
            header(level).write(b"opus", &mut buf);
            let p = RtpPacket::parse(&buf).unwrap();
            assert_eq!(p.header, header(level));
            assert_eq!(p.payload, b"opus");
            assert_eq!(peek_ssrc(&buf), Some(0xdead_beef));
        }
    }

    #[test]
    fn rfc6464_level_from_samples() {
        // A full-scale square wave is 0 dBov; silence is 127.
        assert_eq!(AudioLevel::from_samples(&[1.0, -1.0], true).level, 0);
        assert_eq!(AudioLevel::from_samples(&[0.0; 480], false).level, 127);
        // -20 dBov: RMS 0.1.
        assert_eq!(AudioLevel::from_samples(&[0.1, -0.1], true).level, 20);
    }

    #[test]
    fn skips_csrcs_unknown_elements_and_padding() {
        let mut buf = vec![0x80 | 0x20 | 0x10 | 1, 111, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        buf.extend_from_slice(&[9, 9, 9, 9]); // one CSRC
        buf.extend_from_slice(&[0xBE, 0xDE, 0, 2]);
        buf.extend_from_slice(&[0x21, 7, 7, 0x10, 0x85, 0, 0, 0]); // id 2 (len 2), id 1
        buf.extend_from_slice(b"xy");
        buf.extend_from_slice(&[0, 0, 3]); // 3 bytes of padding
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(
            p.header.audio_level,
            Some(AudioLevel {
                voice: true,
                level: 5
            })
        );
        assert_eq!(p.payload, b"xy");
        assert_eq!(p.header.ssrc, 3);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(RtpPacket::parse(&[0x80; 11]), Err(RtpError::TooShort));
        assert_eq!(RtpPacket::parse(&[0x40; 12]), Err(RtpError::BadVersion(1)));
        assert_eq!(RtpPacket::parse(&[0x8f; 12]), Err(RtpError::TruncatedCsrc));
        let mut ext = vec![0x90, 111, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xBE, 0xDE, 0, 5];
        assert_eq!(RtpPacket::parse(&ext), Err(RtpError::TruncatedExtension));
        ext[15] = 1;
        ext.extend_from_slice(&[0x1f, 0, 0, 0]); // element claims 16 bytes
        assert_eq!(RtpPacket::parse(&ext), Err(RtpError::TruncatedExtension));
        let pad = [0xa0, 111, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
        assert_eq!(RtpPacket::parse(&pad), Err(RtpError::BadPadding));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = RtpPacket::parse(&bytes);
        }

        #[test]
        fn round_trip(marker: bool, pt in 0u8..128, seq: u16, ts: u32, ssrc: u32,
                      level in proptest::option::of((any::<bool>(), 0u8..128)),
                      payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            let h = RtpHeader { marker, payload_type: pt, sequence: seq, timestamp: ts, ssrc,
                audio_level: level.map(|(voice, level)| AudioLevel { voice, level }) };
            let mut buf = Vec::new();
            h.write(&payload, &mut buf);
            let p = RtpPacket::parse(&buf).unwrap();
            prop_assert_eq!(p.header, h);
            prop_assert_eq!(p.payload, &payload[..]);
        }
    }
}
