//! Media datagram splitting, as the relay does it for every datagram: `Datagram::parse`, then
//! `sender_ssrc` and `rtp()`. Never panics; a valid RTP datagram rebuilt with `write_rtp` is
//! accepted again with the same header and payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_proto::media::{self, Datagram, PacketKind};
use natter_proto::rtcp;

fuzz_target!(|data: &[u8]| {
    let Ok(d) = Datagram::parse(data) else {
        return;
    };
    assert!(data.len() <= natter_proto::MAX_MEDIA_DATAGRAM);
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
            if let Some(first_ssrc) = packets.first().and_then(|p| p.sender_ssrc()) {
                assert_eq!(ssrc, Some(first_ssrc));
            }
        }
    }
});
