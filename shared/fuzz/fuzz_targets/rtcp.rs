//! Compound RTCP parsing: never panics; the sender and receiver reports it finds, written back
//! out, parse to the same packets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::rtcp::{self, RtcpPacket};

fuzz_target!(|data: &[u8]| {
    let Ok(packets) = rtcp::parse_compound(data) else {
        return;
    };
    // The relay's quick sender check agrees with the full parse: a compound it attributes to
    // a sender has no packet from anyone else.
    if let Some(sender) = rtcp::compound_sender_ssrc(data) {
        assert!(packets.iter().all(|p| p.sender_ssrc().is_none_or(|s| s == sender)));
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
