//! The cargo-fuzz targets' properties ([`natter_proto::fuzz_checks`]) on every `cargo test`:
//! random bytes, plus structured inputs the fuzzer takes a while to find (whole datagrams and
//! compounds from several senders, framed messages), each also with one byte changed.

use natter_proto::control::Message;
use natter_proto::fuzz_checks as check;
use natter_proto::media::{write_rtcp, write_rtp};
use natter_proto::rtcp::{RtcpPacket, SenderLatency};
use natter_proto::rtp::{AudioLevel, RtpHeader};
use proptest::prelude::*;

/// Every check, in the order of the fuzz targets.
const CHECKS: [fn(&[u8]); 7] = [
    check::varint,
    check::rtp,
    check::rtcp,
    check::media,
    check::invite,
    check::control_body,
    check::control_stream,
];

/// A compound from one, two or three senders (the relay must tell them apart), as a media
/// datagram.
fn rtcp_datagram() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec((0u32..3, any::<bool>()), 1..4).prop_map(|packets| {
        let packets: Vec<RtcpPacket> = packets
            .into_iter()
            .map(|(ssrc, report)| {
                if report {
                    RtcpPacket::ReceiverReport {
                        ssrc,
                        reports: Vec::new(),
                    }
                } else {
                    SenderLatency::default().to_packet(ssrc)
                }
            })
            .collect();
        let mut out = Vec::new();
        write_rtcp(&packets, &mut out);
        out
    })
}

fn rtp_datagram() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u16>(),
        any::<u32>(),
        proptest::option::of((0u8..128, any::<bool>())),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(sequence, ssrc, level, payload)| {
            let header = RtpHeader {
                marker: sequence % 7 == 0,
                payload_type: 111,
                sequence,
                timestamp: u32::from(sequence).wrapping_mul(960),
                ssrc,
                audio_level: level.map(|(level, voice)| AudioLevel { level, voice }),
            };
            let mut out = Vec::new();
            write_rtp(&header, &payload, &mut out);
            out
        })
}

fn control_frames() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec((any::<u64>(), any::<bool>()), 1..4).prop_map(|messages| {
        messages
            .into_iter()
            .flat_map(|(n, muted)| {
                let msg = match n % 3 {
                    0 => Message::Ping {
                        nonce: n,
                        sent_micros: n / 3,
                    },
                    1 => Message::SetMute { muted },
                    _ => Message::Hello {
                        versions: vec![1, (n % 65_536) as u16],
                        software: "fuzz".into(),
                    },
                };
                msg.to_frame()
            })
            .collect()
    })
}

/// `input`, and `input` with the byte at `at` (wrapped) replaced by `byte`.
fn with_and_without_change(input: &[u8], at: usize, byte: u8) -> [Vec<u8>; 2] {
    let mut changed = input.to_vec();
    if !changed.is_empty() {
        let i = at % changed.len();
        changed[i] = byte;
    }
    [input.to_vec(), changed]
}

proptest! {
    #[test]
    fn every_check_holds_on_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        for check in CHECKS {
            check(&data);
        }
    }

    #[test]
    fn media_checks_hold_on_datagrams_and_their_mutants(
        rtcp in rtcp_datagram(),
        rtp in rtp_datagram(),
        at: usize,
        byte: u8,
    ) {
        for datagram in [rtcp, rtp] {
            for input in with_and_without_change(&datagram, at, byte) {
                check::media(&input);
                check::rtcp(&input[1..]);
                check::rtp(&input[1..]);
            }
        }
    }

    #[test]
    fn control_checks_hold_on_frames_and_their_mutants(
        frames in control_frames(),
        seed: u8,
        at: usize,
        byte: u8,
    ) {
        for input in with_and_without_change(&frames, at, byte) {
            check::control_body(&input[1..]);
            let mut stream = vec![seed];
            stream.extend_from_slice(&input);
            check::control_stream(&stream);
        }
    }
}
