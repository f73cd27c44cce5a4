//! RTCP sender and receiver reports (RFC 3550 §6.4), multiplexed with RTP on the same flow
//! (RFC 5761). Sender reports pair the sender's wall clock with its RTP clock so receivers can
//! estimate one-way delay and drift; receiver reports carry loss and jitter back to the sender,
//! and their LSR/DLSR fields give it the round-trip time (RFC 3550 §6.4.1).

use thiserror::Error;

pub const PT_SENDER_REPORT: u8 = 200;
pub const PT_RECEIVER_REPORT: u8 = 201;
pub const PT_APP: u8 = 204;

/// Name of Natter's RTCP APP packets.
pub const NATTER_APP_NAME: [u8; 4] = *b"NTTR";
/// APP subtype carrying [`SenderLatency`].
pub const APP_SUBTYPE_SENDER_LATENCY: u8 = 1;
/// APP subtype carrying [`LossRunsReport`].
pub const APP_SUBTYPE_LOSS_RUNS: u8 = 2;
/// Most sources one [`LossRunsReport`] describes (what a datagram holds with room to spare).
pub const MAX_LOSS_RUN_SOURCES: usize = 64;
const REPORT_BLOCK_LEN: usize = 24;
const SENDER_INFO_LEN: usize = 20;

/// Why an RTCP packet was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtcpError {
    #[error("RTCP packet shorter than its header")]
    TooShort,
    #[error("RTCP version {0} (expected 2)")]
    BadVersion(u8),
    #[error("RTCP length field runs past the end of the datagram")]
    BadLength,
    #[error("RTCP report count does not fit the packet length")]
    BadReportCount,
}

/// One reception report block: what a receiver saw of one source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Fraction of packets lost since the previous report, in 1/256 units.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed; duplicates can make it negative).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received (cycles in the upper 16 bits).
    pub highest_sequence: u32,
    /// Interarrival jitter estimate in RTP timestamp units (RFC 3550 §6.4.1, A.8).
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last sender report from this source.
    pub last_sr: u32,
    /// Delay since that sender report was received, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

/// The sender-info section of a sender report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderInfo {
    /// Sender's wall clock when the report was sent, NTP format (32.32 fixed point seconds).
    pub ntp_timestamp: u64,
    /// The RTP timestamp corresponding to the same instant.
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

/// One RTCP packet of a compound datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpPacket {
    SenderReport {
        ssrc: u32,
        info: SenderInfo,
        reports: Vec<ReportBlock>,
    },
    ReceiverReport {
        ssrc: u32,
        reports: Vec<ReportBlock>,
    },
    /// Application-defined packet (RFC 3550 §6.7); Natter's own use [`NATTER_APP_NAME`].
    App {
        subtype: u8,
        ssrc: u32,
        name: [u8; 4],
        /// A multiple of 4 bytes.
        data: Vec<u8>,
    },
    /// A packet type Natter does not interpret (SDES, BYE, feedback…); skipped.
    Other { packet_type: u8 },
}

/// The sender's part of mouth-to-ear latency, published with each sender report so that a
/// receiver's latency meter can show (and add up) every stage, including those it cannot see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderLatency {
    /// Microphone to capture callback (device and driver buffering), µs.
    pub capture_us: u32,
    /// Voice processing and waiting for a full frame, µs.
    pub processing_us: u32,
    /// Codec look-ahead plus encoding time, µs.
    pub encode_us: u32,
}

impl SenderLatency {
    /// As an APP packet from `ssrc`.
    pub fn to_packet(self, ssrc: u32) -> RtcpPacket {
        let mut data = Vec::with_capacity(12);
        for v in [self.capture_us, self.processing_us, self.encode_us] {
            data.extend_from_slice(&v.to_be_bytes());
        }
        RtcpPacket::App {
            subtype: APP_SUBTYPE_SENDER_LATENCY,
            ssrc,
            name: NATTER_APP_NAME,
            data,
        }
    }

    /// Reads one from an APP packet, if it is Natter's sender-latency packet. Longer data
    /// (fields added by newer versions) is accepted.
    pub fn from_packet(packet: &RtcpPacket) -> Option<(u32, Self)> {
        match packet {
            RtcpPacket::App {
                subtype: APP_SUBTYPE_SENDER_LATENCY,
                ssrc,
                name,
                data,
            } if *name == NATTER_APP_NAME && data.len() >= 12 => Some((
                *ssrc,
                Self {
                    capture_us: be32(data, 0),
                    processing_us: be32(data, 4),
                    encode_us: be32(data, 8),
                },
            )),
            _ => None,
        }
    }
}

/// How one source's packets were lost over a report interval: the runs of consecutive losses.
/// The RTCP loss fraction says how much was lost, not how: 10 % in runs of one is what in-band
/// FEC repairs, 10 % in runs of five is what only deep redundancy (DRED) repairs, so the sender
/// chooses its protection from this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LossRuns {
    /// Runs of consecutive lost packets.
    pub runs: u16,
    /// Packets lost in them.
    pub lost: u16,
    /// The longest run, packets.
    pub longest: u16,
}

impl LossRuns {
    /// Counts a run of `len` lost packets (saturating).
    pub fn add(&mut self, len: u16) {
        self.runs = self.runs.saturating_add(1);
        self.lost = self.lost.saturating_add(len);
        self.longest = self.longest.max(len);
    }
}

/// A receiver's [`LossRuns`] for each source it hears, sent with its receiver report (APP,
/// subtype [`APP_SUBTYPE_LOSS_RUNS`]): per source, SSRC (4 bytes), runs, lost, longest (2 bytes
/// each, big-endian) and 2 reserved bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LossRunsReport {
    pub sources: Vec<(u32, LossRuns)>,
}

impl LossRunsReport {
    /// As an APP packet from `ssrc` (at most [`MAX_LOSS_RUN_SOURCES`] sources are written).
    pub fn to_packet(&self, ssrc: u32) -> RtcpPacket {
        let n = self.sources.len().min(MAX_LOSS_RUN_SOURCES);
        let mut data = Vec::with_capacity(12 * n);
        for (source, r) in &self.sources[..n] {
            data.extend_from_slice(&source.to_be_bytes());
            for v in [r.runs, r.lost, r.longest, 0] {
                data.extend_from_slice(&v.to_be_bytes());
            }
        }
        RtcpPacket::App {
            subtype: APP_SUBTYPE_LOSS_RUNS,
            ssrc,
            name: NATTER_APP_NAME,
            data,
        }
    }

    /// Reads one from an APP packet, if it is Natter's loss-runs packet: the reporter's SSRC
    /// and the sources. A trailing partial entry is ignored; a run longer than the packets it
    /// lost is not believed (`longest` is clamped to `lost`).
    pub fn from_packet(packet: &RtcpPacket) -> Option<(u32, Self)> {
        match packet {
            RtcpPacket::App {
                subtype: APP_SUBTYPE_LOSS_RUNS,
                ssrc,
                name,
                data,
            } if *name == NATTER_APP_NAME => {
                let be16 = |at: usize| u16::from_be_bytes([data[at], data[at + 1]]);
                let sources = data
                    .chunks_exact(12)
                    .take(MAX_LOSS_RUN_SOURCES)
                    .enumerate()
                    .map(|(i, _)| {
                        let at = 12 * i;
                        let lost = be16(at + 6);
                        let runs = LossRuns {
                            runs: be16(at + 4),
                            lost,
                            longest: be16(at + 8).min(lost),
                        };
                        (be32(data, at), runs)
                    })
                    .collect();
                Some((*ssrc, Self { sources }))
            }
            _ => None,
        }
    }
}

impl RtcpPacket {
    /// SSRC of the packet's sender, if the type has one Natter knows.
    pub fn sender_ssrc(&self) -> Option<u32> {
        match self {
            Self::SenderReport { ssrc, .. }
            | Self::ReceiverReport { ssrc, .. }
            | Self::App { ssrc, .. } => Some(*ssrc),
            Self::Other { .. } => None,
        }
    }

    /// Appends this packet. `Other` packets are not written (Natter never originates them).
    /// At most 31 report blocks fit one packet; extra blocks are left out.
    pub fn write(&self, out: &mut Vec<u8>) {
        if let Self::App {
            subtype,
            ssrc,
            name,
            data,
        } = self
        {
            // Pad the data to a whole number of 32-bit words.
            let padded = data.len().div_ceil(4) * 4;
            out.push(0x80 | (subtype & 0x1f));
            out.push(PT_APP);
            out.extend_from_slice(&(((8 + padded) / 4) as u16).to_be_bytes());
            out.extend_from_slice(&ssrc.to_be_bytes());
            out.extend_from_slice(name);
            out.extend_from_slice(data);
            out.resize(out.len() + padded - data.len(), 0);
            return;
        }
        let (pt, ssrc, info, reports) = match self {
            Self::SenderReport {
                ssrc,
                info,
                reports,
            } => (PT_SENDER_REPORT, *ssrc, Some(info), reports),
            Self::ReceiverReport { ssrc, reports } => (PT_RECEIVER_REPORT, *ssrc, None, reports),
            Self::Other { .. } | Self::App { .. } => return,
        };
        let reports = &reports[..reports.len().min(31)];
        let body_len =
            4 + if info.is_some() { SENDER_INFO_LEN } else { 0 } + REPORT_BLOCK_LEN * reports.len();
        let words = (4 + body_len) / 4 - 1;
        out.push(0x80 | reports.len() as u8);
        out.push(pt);
        out.extend_from_slice(&(words as u16).to_be_bytes());
        out.extend_from_slice(&ssrc.to_be_bytes());
        if let Some(info) = info {
            out.extend_from_slice(&info.ntp_timestamp.to_be_bytes());
            out.extend_from_slice(&info.rtp_timestamp.to_be_bytes());
            out.extend_from_slice(&info.packet_count.to_be_bytes());
            out.extend_from_slice(&info.octet_count.to_be_bytes());
        }
        for r in reports {
            out.extend_from_slice(&r.ssrc.to_be_bytes());
            let lost = (r.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff) as u32) & 0x00ff_ffff;
            out.extend_from_slice(&((u32::from(r.fraction_lost) << 24) | lost).to_be_bytes());
            out.extend_from_slice(&r.highest_sequence.to_be_bytes());
            out.extend_from_slice(&r.jitter.to_be_bytes());
            out.extend_from_slice(&r.last_sr.to_be_bytes());
            out.extend_from_slice(&r.delay_since_last_sr.to_be_bytes());
        }
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn parse_blocks(body: &[u8], count: usize) -> Result<Vec<ReportBlock>, RtcpError> {
    if body.len() < count * REPORT_BLOCK_LEN {
        return Err(RtcpError::BadReportCount);
    }
    Ok((0..count)
        .map(|i| {
            let b = &body[i * REPORT_BLOCK_LEN..];
            let lost_word = be32(b, 4);
            // Sign-extend the 24-bit cumulative loss.
            let cumulative_lost = ((lost_word << 8) as i32) >> 8;
            ReportBlock {
                ssrc: be32(b, 0),
                fraction_lost: (lost_word >> 24) as u8,
                cumulative_lost,
                highest_sequence: be32(b, 8),
                jitter: be32(b, 12),
                last_sr: be32(b, 16),
                delay_since_last_sr: be32(b, 20),
            }
        })
        .collect())
}

/// Parses a compound RTCP packet (one or more RTCP packets back to back).
pub fn parse_compound(buf: &[u8]) -> Result<Vec<RtcpPacket>, RtcpError> {
    let mut packets = Vec::new();
    let mut rest = buf;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(RtcpError::TooShort);
        }
        let version = rest[0] >> 6;
        if version != 2 {
            return Err(RtcpError::BadVersion(version));
        }
        let count = usize::from(rest[0] & 0x1f);
        let packet_type = rest[1];
        let len = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
        let packet = rest.get(..len).ok_or(RtcpError::BadLength)?;
        let body = &packet[4..];
        packets.push(match packet_type {
            PT_SENDER_REPORT => {
                if body.len() < 4 + SENDER_INFO_LEN {
                    return Err(RtcpError::TooShort);
                }
                let info = SenderInfo {
                    ntp_timestamp: (u64::from(be32(body, 4)) << 32) | u64::from(be32(body, 8)),
                    rtp_timestamp: be32(body, 12),
                    packet_count: be32(body, 16),
                    octet_count: be32(body, 20),
                };
                RtcpPacket::SenderReport {
                    ssrc: be32(body, 0),
                    info,
                    reports: parse_blocks(&body[4 + SENDER_INFO_LEN..], count)?,
                }
            }
            PT_RECEIVER_REPORT => {
                if body.len() < 4 {
                    return Err(RtcpError::TooShort);
                }
                RtcpPacket::ReceiverReport {
                    ssrc: be32(body, 0),
                    reports: parse_blocks(&body[4..], count)?,
                }
            }
            PT_APP => {
                if body.len() < 8 {
                    return Err(RtcpError::TooShort);
                }
                RtcpPacket::App {
                    subtype: count as u8,
                    ssrc: be32(body, 0),
                    name: [body[4], body[5], body[6], body[7]],
                    data: body[8..].to_vec(),
                }
            }
            other => RtcpPacket::Other { packet_type: other },
        });
        rest = &rest[len..];
    }
    Ok(packets)
}

/// The sender SSRC (bytes 4–7) that every packet of a compound carries, without a full
/// parse; `None` if the compound is empty, a packet is too short to carry one, or two packets
/// name different senders. The relay forwards only compounds wholly from their sender, so no
/// member can send reports or latency figures in another member's name.
pub fn compound_sender_ssrc(buf: &[u8]) -> Option<u32> {
    let mut rest = buf;
    let mut sender = None;
    while !rest.is_empty() {
        let words = u16::from_be_bytes([*rest.get(2)?, *rest.get(3)?]);
        let packet = rest.get(..(usize::from(words) + 1) * 4)?;
        let ssrc = be32(packet.get(4..8)?, 0);
        if *sender.get_or_insert(ssrc) != ssrc {
            return None;
        }
        rest = &rest[packet.len()..];
    }
    sender
}

/// NTP-format timestamps (RFC 5905: seconds since 1900 in 32.32 fixed point).
pub mod ntp {
    /// Seconds from 1900-01-01 (NTP epoch) to 1970-01-01 (Unix epoch).
    const UNIX_OFFSET_SECS: u64 = 2_208_988_800;

    /// Converts microseconds since the Unix epoch to an NTP timestamp.
    pub fn from_unix_micros(micros: u64) -> u64 {
        let secs = micros / 1_000_000 + UNIX_OFFSET_SECS;
        let frac = ((micros % 1_000_000) << 32) / 1_000_000;
        (secs << 32) | frac
    }

    /// Converts an NTP timestamp back to microseconds since the Unix epoch.
    pub fn to_unix_micros(ntp: u64) -> u64 {
        let secs = (ntp >> 32).saturating_sub(UNIX_OFFSET_SECS);
        let frac = ((ntp & 0xffff_ffff) * 1_000_000) >> 32;
        secs * 1_000_000 + frac
    }

    /// The middle 32 bits (16.16 seconds), the form LSR and DLSR use.
    pub fn middle32(ntp: u64) -> u32 {
        (ntp >> 16) as u32
    }

    /// Converts a 16.16 fixed-point seconds value (LSR/DLSR units) to microseconds.
    pub fn short_to_micros(short: u32) -> u64 {
        (u64::from(short) * 1_000_000) >> 16
    }

    /// Converts microseconds to 16.16 fixed-point seconds (DLSR units), saturating.
    pub fn micros_to_short(micros: u64) -> u32 {
        ((u128::from(micros) << 16) / 1_000_000).min(u128::from(u32::MAX)) as u32
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn block(ssrc: u32, lost: i32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 25,
            cumulative_lost: lost,
            highest_sequence: 0x0001_0005,
            jitter: 96,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 65_536,
        }
    }

    #[test]
    fn compound_round_trip() {
        let sr = RtcpPacket::SenderReport {
            ssrc: 7,
            info: SenderInfo {
                ntp_timestamp: ntp::from_unix_micros(1_700_000_000_250_000),
                rtp_timestamp: 48_000,
                packet_count: 50,
                octet_count: 4_000,
            },
            reports: vec![block(9, -3)],
        };
        let rr = RtcpPacket::ReceiverReport {
            ssrc: 7,
            reports: vec![block(9, 100), block(10, 0)],
        };
        let mut buf = Vec::new();
        sr.write(&mut buf);
        rr.write(&mut buf);
        assert_eq!(parse_compound(&buf).unwrap(), vec![sr, rr]);
        assert_eq!(compound_sender_ssrc(&buf), Some(7));
    }

    #[test]
    fn a_compound_has_a_sender_only_if_every_packet_names_the_same_one() {
        let mut buf = Vec::new();
        RtcpPacket::ReceiverReport {
            ssrc: 7,
            reports: Vec::new(),
        }
        .write(&mut buf);
        assert_eq!(compound_sender_ssrc(&buf), Some(7));
        // A report in someone else's name hidden behind one's own.
        SenderLatency::default().to_packet(8).write(&mut buf);
        assert_eq!(compound_sender_ssrc(&buf), None);
        // A header-only packet (e.g. a BYE without sources) names nobody.
        assert_eq!(compound_sender_ssrc(&[0x80, 203, 0, 0]), None);
        assert_eq!(compound_sender_ssrc(&[]), None);
    }

    #[test]
    fn skips_unknown_types_and_rejects_bad_lengths() {
        // An SDES-typed packet with one word of body is skipped.
        let pkt = [0x81, 202, 0, 1, 0, 0, 0, 1];
        assert_eq!(
            parse_compound(&pkt).unwrap(),
            vec![RtcpPacket::Other { packet_type: 202 }]
        );
        assert_eq!(
            parse_compound(&[0x81, 201, 0, 9, 0, 0, 0, 1]),
            Err(RtcpError::BadLength)
        );
        assert_eq!(
            parse_compound(&[0x81, 201, 0, 1, 0, 0, 0, 1]),
            Err(RtcpError::BadReportCount)
        );
        assert_eq!(
            parse_compound(&[0x40, 201, 0, 0]),
            Err(RtcpError::BadVersion(1))
        );
    }

    #[test]
    fn loss_runs_app_packet_round_trips_and_distrusts_what_cannot_be() {
        let report = LossRunsReport {
            sources: vec![
                (
                    7,
                    LossRuns {
                        runs: 3,
                        lost: 9,
                        longest: 5,
                    },
                ),
                (9, LossRuns::default()),
            ],
        };
        let mut buf = Vec::new();
        report.to_packet(42).write(&mut buf);
        assert_eq!(buf.len(), 12 + 24);
        let packets = parse_compound(&buf).unwrap();
        assert_eq!(LossRunsReport::from_packet(&packets[0]), Some((42, report)));
        // Not the latency packet, and the latency packet is not this.
        assert_eq!(SenderLatency::from_packet(&packets[0]), None);
        let lat = SenderLatency::default().to_packet(42);
        assert_eq!(LossRunsReport::from_packet(&lat), None);
        // A run longer than what was lost, and a partial entry.
        let mut data = vec![0, 0, 0, 7, 0, 1, 0, 2, 0xff, 0xff, 0, 0];
        data.extend_from_slice(&[1, 2, 3, 4]);
        let odd = RtcpPacket::App {
            subtype: APP_SUBTYPE_LOSS_RUNS,
            ssrc: 1,
            name: NATTER_APP_NAME,
            data,
        };
        let (_, r) = LossRunsReport::from_packet(&odd).unwrap();
        assert_eq!(
            r.sources,
            vec![(
                7,
                LossRuns {
                    runs: 1,
                    lost: 2,
                    longest: 2
                }
            )]
        );
    }

    #[test]
    fn sender_latency_app_packet_round_trips() {
        let lat = SenderLatency {
            capture_us: 10_000,
            processing_us: 10_500,
            encode_us: 6_700,
        };
        let mut buf = Vec::new();
        lat.to_packet(42).write(&mut buf);
        assert_eq!(buf.len(), 24);
        let packets = parse_compound(&buf).unwrap();
        assert_eq!(SenderLatency::from_packet(&packets[0]), Some((42, lat)));
        assert_eq!(compound_sender_ssrc(&buf), Some(42));
        // Someone else's APP packet is not ours.
        let other = RtcpPacket::App {
            subtype: 1,
            ssrc: 1,
            name: *b"XXXX",
            data: vec![0; 12],
        };
        assert_eq!(SenderLatency::from_packet(&other), None);
        assert!(matches!(
            parse_compound(&[0x81, 204, 0, 1, 0, 0, 0, 1]),
            Err(RtcpError::TooShort)
        ));
    }

    #[test]
    fn ntp_conversions() {
        let us = 1_700_000_000_123_456;
        let back = ntp::to_unix_micros(ntp::from_unix_micros(us));
        assert!(us.abs_diff(back) <= 1);
        assert!(ntp::short_to_micros(ntp::micros_to_short(1_500_000)).abs_diff(1_500_000) <= 16);
        assert_eq!(ntp::micros_to_short(1 << 50), u32::MAX, "saturates");
    }

    /// A report block with every field anywhere in its bit width (cumulative lost: 24-bit
    /// signed, its extremes and sign change included).
    fn report_blocks() -> impl Strategy<Value = ReportBlock> {
        (
            any::<u32>(),
            any::<u8>(),
            prop_oneof![
                -0x80_0000i32..=0x7f_ffff,
                prop::sample::select(&[-0x80_0000, -1, 0, 0x7f_ffff][..]),
            ],
            any::<[u32; 4]>(),
        )
            .prop_map(
                |(ssrc, fraction_lost, cumulative_lost, [highest, jitter, lsr, dlsr])| {
                    ReportBlock {
                        ssrc,
                        fraction_lost,
                        cumulative_lost,
                        highest_sequence: highest,
                        jitter,
                        last_sr: lsr,
                        delay_since_last_sr: dlsr,
                    }
                },
            )
    }

    /// Any packet Natter writes: an SR or RR with 0 to 31 report blocks, Natter's sender
    /// latency APP packet, or any APP packet (5-bit subtype, data in whole 32-bit words).
    pub(crate) fn packets() -> impl Strategy<Value = RtcpPacket> {
        let reports = || proptest::collection::vec(report_blocks(), 0..=31);
        prop_oneof![
            (any::<u32>(), any::<(u64, u32, u32, u32)>(), reports()).prop_map(
                |(ssrc, (ntp_timestamp, rtp_timestamp, packet_count, octet_count), reports)| {
                    RtcpPacket::SenderReport {
                        ssrc,
                        info: SenderInfo {
                            ntp_timestamp,
                            rtp_timestamp,
                            packet_count,
                            octet_count,
                        },
                        reports,
                    }
                }
            ),
            (any::<u32>(), reports())
                .prop_map(|(ssrc, reports)| RtcpPacket::ReceiverReport { ssrc, reports }),
            (any::<u32>(), any::<[u32; 3]>()).prop_map(|(ssrc, [capture, processing, encode])| {
                SenderLatency {
                    capture_us: capture,
                    processing_us: processing,
                    encode_us: encode,
                }
                .to_packet(ssrc)
            }),
            (
                0u8..32,
                any::<u32>(),
                any::<[u8; 4]>(),
                proptest::collection::vec(any::<[u8; 4]>(), 0..16)
            )
                .prop_map(|(subtype, ssrc, name, words)| RtcpPacket::App {
                    subtype,
                    ssrc,
                    name,
                    data: words.concat(),
                }),
        ]
    }

    proptest! {
        /// Any compound of the packets Natter writes parses back to the same packets, and the
        /// relay's quick check names a sender exactly when every packet names the same one.
        #[test]
        fn compound_round_trips(packets in proptest::collection::vec(packets(), 0..6)) {
            let mut buf = Vec::new();
            for p in &packets {
                p.write(&mut buf);
            }
            let first = packets.first().and_then(RtcpPacket::sender_ssrc);
            let one_sender = packets.iter().all(|p| p.sender_ssrc() == first);
            prop_assert_eq!(compound_sender_ssrc(&buf), first.filter(|_| one_sender));
            prop_assert_eq!(parse_compound(&buf), Ok(packets));
        }

        /// Sender latency survives the trip through a compound packet field for field.
        #[test]
        fn sender_latency_round_trips(ssrc: u32, capture_us: u32, processing_us: u32, encode_us: u32) {
            let lat = SenderLatency { capture_us, processing_us, encode_us };
            let mut buf = Vec::new();
            lat.to_packet(ssrc).write(&mut buf);
            let packets = parse_compound(&buf).unwrap();
            prop_assert_eq!(packets.len(), 1);
            prop_assert_eq!(SenderLatency::from_packet(&packets[0]), Some((ssrc, lat)));
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse_compound(&bytes);
        }

        #[test]
        fn report_round_trip(ssrc: u32, frac: u8, lost in -0x80_0000i32..0x80_0000, seq: u32,
                             jitter: u32, lsr: u32, dlsr: u32) {
            let b = ReportBlock { ssrc, fraction_lost: frac, cumulative_lost: lost,
                highest_sequence: seq, jitter, last_sr: lsr, delay_since_last_sr: dlsr };
            let p = RtcpPacket::ReceiverReport { ssrc: 1, reports: vec![b] };
            let mut buf = Vec::new();
            p.write(&mut buf);
            prop_assert_eq!(parse_compound(&buf).unwrap(), vec![p]);
        }
    }
}
