//! RTP parsing: never panics; a parsed packet written back out parses to the same header and
//! payload (CSRCs, unknown extension elements and padding are dropped by design).
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::rtp::{self, RtpPacket};

fuzz_target!(|data: &[u8]| {
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
});
