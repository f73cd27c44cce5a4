//! The properties the cargo-fuzz targets in `shared/fuzz` check, one function per parser.
//!
//! They live in the library so that `cargo test` runs them on every build too
//! (`tests/fuzz_checks.rs`, with random and structured inputs) and they cannot drift from the
//! code they check; the fuzz targets only hand libFuzzer's inputs to them. Each function panics
//! when a property fails, which is how a fuzzer reports a finding.

use crate::control::{ControlError, FrameDecoder, Message};
use crate::invite::Invite;
use crate::media::{self, Datagram, PacketKind};
use crate::rtcp::{self, RtcpPacket};
use crate::rtp::{self, RtpPacket};
use crate::varint;

/// QUIC varint decoding: never panics; whatever decodes re-encodes minimally and decodes back.
pub fn varint(data: &[u8]) {
    if let Ok((value, used)) = varint::decode(data) {
        assert!(matches!(used, 1 | 2 | 4 | 8));
        assert!(used <= data.len());
        assert!(value <= varint::MAX);
        let mut out = Vec::new();
        varint::encode(value, &mut out);
        assert_eq!(out.len(), varint::encoded_len(value));
        assert!(out.len() <= used, "re-encoding is minimal");
        assert_eq!(varint::decode(&out), Ok((value, out.len())));
    }

    // Encoding any u64 (clamped to 2^62 - 1) decodes back to the clamped value.
    if let Some(bytes) = data.get(..8) {
        let n = u64::from_be_bytes(bytes.try_into().unwrap());
        let mut out = Vec::new();
        varint::encode(n, &mut out);
        let clamped = n.min(varint::MAX);
        assert_eq!(
            varint::decode(&out),
            Ok((clamped, varint::encoded_len(clamped)))
        );
    }
}

/// RTP parsing: never panics; a parsed packet written back out parses to the same header and
/// payload (CSRCs, unknown extension elements and padding are dropped by design).
pub fn rtp(data: &[u8]) {
    let Ok(packet) = RtpPacket::parse(data) else {
        return;
    };
    assert!(packet.payload.len() + rtp::HEADER_LEN <= data.len());
    assert_eq!(rtp::peek_ssrc(data), Some(packet.header.ssrc));
    if let Some(level) = packet.header.audio_level {
        assert!(level.level <= 127);
    }

    let mut out = Vec::new();
    packet.header.write(packet.payload, &mut out);
    let again = RtpPacket::parse(&out).expect("our own packet must parse");
    assert_eq!(again.header, packet.header);
    assert_eq!(again.payload, packet.payload);
}

/// Compound RTCP parsing: never panics; the sender and receiver reports it finds, written back
/// out, parse to the same packets.
pub fn rtcp(data: &[u8]) {
    let Ok(packets) = rtcp::parse_compound(data) else {
        return;
    };
    // The relay's quick sender check agrees with the full parse: a compound it attributes to
    // a sender has no packet from anyone else.
    if let Some(sender) = rtcp::compound_sender_ssrc(data) {
        assert!(
            packets
                .iter()
                .all(|p| p.sender_ssrc().is_none_or(|s| s == sender))
        );
    }

    let known: Vec<RtcpPacket> = packets
        .into_iter()
        .filter(|p| !matches!(p, RtcpPacket::Other { .. }))
        .collect();
    let mut out = Vec::new();
    for p in &known {
        p.write(&mut out);
    }
    assert!(out.len() <= data.len());
    assert_eq!(
        rtcp::parse_compound(&out).expect("our own reports must parse"),
        known
    );
}

/// Media datagram splitting, as the relay does it for every datagram: `Datagram::parse`, then
/// `sender_ssrc` and `rtp()`. Never panics; a valid RTP datagram rebuilt with `write_rtp` is
/// accepted again with the same header and payload.
pub fn media(data: &[u8]) {
    let Ok(d) = Datagram::parse(data) else {
        return;
    };
    assert!(data.len() <= crate::MAX_MEDIA_DATAGRAM);
    assert_eq!(d.flow_id, media::AUDIO_FLOW);
    let ssrc = d.sender_ssrc();
    match d.kind {
        PacketKind::Rtp => {
            let Ok(p) = d.rtp() else {
                return;
            };
            assert_eq!(ssrc, Some(p.header.ssrc));
            let mut out = Vec::new();
            media::write_rtp(&p.header, p.payload, &mut out);
            assert!(out.len() <= data.len());
            let again = Datagram::parse(&out).expect("our own datagram must parse");
            assert_eq!(again.kind, PacketKind::Rtp);
            let q = again.rtp().expect("our own RTP packet must parse");
            assert_eq!((q.header, q.payload), (p.header, p.payload));
        }
        PacketKind::Rtcp => {
            let Ok(packets) = rtcp::parse_compound(d.packet) else {
                return;
            };
            // A compound the relay attributes to a sender has no packet from anyone else.
            if let Some(sender) = ssrc {
                assert!(
                    packets
                        .iter()
                        .all(|p| p.sender_ssrc().is_none_or(|s| s == sender))
                );
            }
        }
    }
}

/// Invite link parsing from arbitrary text: never panics, and a parsed invite printed with
/// `Display` parses back to the same invite (this target found hosts like `]::1` that printed
/// as links to a different relay; hosts are now validated).
pub fn invite(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for candidate in [text.to_string(), format!("natter://{text}")] {
        let Ok(invite) = candidate.parse::<Invite>() else {
            continue;
        };
        assert!(!invite.host.is_empty());
        assert_ne!(invite.port, 0);
        let printed = invite.to_string();
        let again = printed.parse::<Invite>();
        assert_eq!(
            again.as_ref(),
            Ok(&invite),
            "{candidate:?} printed as {printed:?}"
        );
    }
}

/// Control message bodies: `Message::decode_body` never panics, and every known message it
/// yields encodes (minimally, so never longer than the input) and decodes back to itself, both
/// as a body and as a framed message.
pub fn control_body(data: &[u8]) {
    let Ok(msg) = Message::decode_body(data) else {
        return;
    };
    if matches!(msg, Message::Unknown { .. }) {
        return;
    }
    let mut body = Vec::new();
    msg.encode_body(&mut body);
    assert!(
        body.len() <= data.len(),
        "encoding is never longer than the input"
    );
    assert_eq!(Message::decode_body(&body).as_ref(), Ok(&msg));

    let mut dec = FrameDecoder::new();
    dec.push(&msg.to_frame());
    assert_eq!(dec.next_message(), Some(Ok(msg)));
    assert_eq!(dec.next_message(), None);
}

/// Drains complete messages; returns false once the decoder reports a (sticky) oversize frame.
fn drain(dec: &mut FrameDecoder, got: &mut Vec<Result<Message, ControlError>>) -> bool {
    while let Some(m) = dec.next_message() {
        let fatal = matches!(m, Err(ControlError::TooLarge(_)));
        got.push(m);
        if fatal {
            return false;
        }
    }
    true
}

/// The control stream decoder fed in arbitrary chunks. The first input byte seeds the chunk
/// sizes, the rest is the stream. Whatever the split, `FrameDecoder` must give exactly what it
/// gives when handed the whole stream at once, and never panic.
pub fn control_stream(data: &[u8]) {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };

    let mut whole = Vec::new();
    let mut dec = FrameDecoder::new();
    dec.push(stream);
    drain(&mut dec, &mut whole);

    let mut chunked = Vec::new();
    let mut dec = FrameDecoder::new();
    let mut rest = stream;
    let mut state = u32::from(seed) | 1;
    while !rest.is_empty() {
        // xorshift32: deterministic, input-driven chunk sizes from 1 to 16 bytes (0 is allowed
        // too, as an empty push).
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state % 17) as usize;
        let (chunk, tail) = rest.split_at(n.min(rest.len()));
        rest = tail;
        dec.push(chunk);
        if !drain(&mut dec, &mut chunked) {
            break;
        }
    }
    assert_eq!(chunked, whole);
}
