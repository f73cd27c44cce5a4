//! Compound RTCP parsing: never panics; the sender and receiver reports it finds, written back
//! out, parse to the same packets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::rtcp::{self, RtcpPacket};

fuzz_target!(|data: &[u8]| {
    let Ok(packets) = rtcp::parse_compound(data) else {
        return;
    };
    if let Some(first) = packets.first() {
        if let Some(ssrc) = first.sender_ssrc() {
            assert_eq!(rtcp::peek_sender_ssrc(data), Some(ssrc));
        }
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
    assert_eq!(rtcp::parse_compound(&out).expect("our own reports must parse"), known);
});
