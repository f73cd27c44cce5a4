//! The client's RTCP session (RFC 3550 §6) as a pure state machine: RTP arrivals and RTCP
//! packets in, a compound report out once a second, and what the reports about our own stream
//! say — each listener's loss, jitter and round trip, which the engine hands to the rate
//! controller. Like quinn-proto and str0m it reads no clock: every input carries its time
//! ([`Now`]: the engine's millisecond clock and the wall clock at the same moment) and
//! [`RtcpSession::poll_timeout`] says when the next report is due. The engine thread is the
//! thin shell that parses datagrams, sends what comes out and feeds the rate controller; the
//! tests below run whole report exchanges with simulated time.

use super::receive::ListenerStats;
use natter_proto::reception::ReceptionStats;
use natter_proto::rtcp::{LossRuns, LossRunsReport, RtcpPacket, SenderInfo, SenderLatency, ntp};
use std::collections::HashMap;

/// How often we report (RFC 3550 would allow less for small sessions; once a second keeps the
/// meter and the rate controller current at ~100 bytes a second).
pub const REPORT_INTERVAL_MS: f64 = 1_000.0;

/// Forget a sender or listener silent this long (it left, or changed SSRC).
pub const FORGET_AFTER_MS: f64 = 30_000.0;

/// One moment on both clocks: the engine's monotonic milliseconds, and the wall clock (µs
/// since the Unix epoch) that NTP timestamps in sender reports are made of.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Now {
    pub ms: f64,
    pub unix_us: u64,
}

impl Now {
    /// The wall clock at engine time `at_ms` (a moment shortly before or after this one).
    fn unix_us_at(&self, at_ms: f64) -> u64 {
        let delta_us = ((self.ms - at_ms) * 1000.0) as i64;
        (self.unix_us as i64 - delta_us).max(0) as u64
    }
}

/// What RTCP knows about one remote sender.
#[derive(Debug, Clone)]
pub struct RemoteSender {
    /// RFC 3550 loss and jitter of its stream, for our report blocks.
    pub reception: ReceptionStats,
    /// Middle 32 bits of the NTP time in its last sender report, and the engine time (ms) it
    /// arrived: echoed as LSR/DLSR so the sender can compute its round trip.
    last_sr: Option<(u32, f64)>,
    /// Round trip to it, from its reports on our stream, ms.
    pub rtt_ms: Option<f64>,
    /// Its own capture/processing/encode stages, from its latest APP report.
    pub sender_latency: Option<SenderLatency>,
    last_packet_ms: f64,
}

impl RemoteSender {
    /// One-way network delay to it, ms: half the round trip (no clock assumptions); zero
    /// until a round trip is known.
    pub fn network_ms(&self) -> f64 {
        self.rtt_ms.map_or(0.0, |r| (r / 2.0).max(0.0))
    }
}

/// A listener's report block about our stream: what the rate controller adapts to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ListenerReport {
    pub from: u32,
    /// Share of our packets it lost since its previous report, 0–1.
    pub fraction_lost: f64,
    pub rtt_ms: Option<f64>,
    /// Engine time the report arrived, ms.
    pub at_ms: f64,
}

/// A listener's loss runs on our stream over its last report interval: how its losses come.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ListenerRuns {
    pub from: u32,
    pub runs: LossRuns,
    /// Engine time the report arrived, ms.
    pub at_ms: f64,
}

/// Loss-run reports kept until [`RtcpSession::poll_loss_runs`] takes them (one compound carries
/// one; more than this unpolled means nobody polls).
const MAX_PENDING_RUNS: usize = 16;

/// Our side of RTCP for one membership of a room (one SSRC).
#[derive(Debug)]
pub struct RtcpSession {
    ssrc: u32,
    senders: HashMap<u32, RemoteSender>,
    listeners: HashMap<u32, ListenerStats>,
    /// Loss runs on our stream received and not yet polled.
    loss_runs: Vec<ListenerRuns>,
    next_report_ms: f64,
}

impl RtcpSession {
    /// A session for `ssrc`; the first report is due one interval after `now_ms`.
    pub fn new(ssrc: u32, now_ms: f64) -> Self {
        Self {
            ssrc,
            senders: HashMap::new(),
            listeners: HashMap::new(),
            loss_runs: Vec::with_capacity(MAX_PENDING_RUNS),
            next_report_ms: now_ms + REPORT_INTERVAL_MS,
        }
    }

    /// A new membership (rejoined after losing the relay): a new SSRC, and nobody known
    /// until heard again.
    pub fn rejoined(&mut self, ssrc: u32) {
        self.ssrc = ssrc;
        self.senders.clear();
        self.listeners.clear();
        self.loss_runs.clear();
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// An RTP packet from `ssrc` arrived at engine time `at_ms`.
    pub fn on_rtp(&mut self, ssrc: u32, sequence: u16, timestamp: u32, at_ms: f64) {
        let sender = self.senders.entry(ssrc).or_insert_with(|| RemoteSender {
            reception: ReceptionStats::new(ssrc),
            last_sr: None,
            rtt_ms: None,
            sender_latency: None,
            last_packet_ms: at_ms,
        });
        sender.last_packet_ms = at_ms;
        sender
            .reception
            .on_packet(sequence, timestamp, (at_ms * 48.0) as u64);
    }

    /// One packet of a received compound, which arrived at engine time `at_ms` (it may have
    /// waited for the engine to wake: that wait is no part of any round trip). Returns the
    /// sender's report about our stream, if it carried one.
    pub fn on_rtcp(&mut self, packet: &RtcpPacket, at_ms: f64, now: Now) -> Option<ListenerReport> {
        let (from, reports) = match packet {
            RtcpPacket::SenderReport {
                ssrc,
                info,
                reports,
            } => {
                if let Some(sender) = self.senders.get_mut(ssrc) {
                    sender.last_sr = Some((ntp::middle32(info.ntp_timestamp), at_ms));
                }
                (*ssrc, reports)
            }
            RtcpPacket::ReceiverReport { ssrc, reports } => (*ssrc, reports),
            app @ RtcpPacket::App { .. } => {
                if let Some((ssrc, latency)) = SenderLatency::from_packet(app)
                    && let Some(sender) = self.senders.get_mut(&ssrc)
                {
                    sender.sender_latency = Some(latency);
                }
                if let Some((from, report)) = LossRunsReport::from_packet(app)
                    && let Some(&(_, runs)) = report.sources.iter().find(|(s, _)| *s == self.ssrc)
                    && self.loss_runs.len() < MAX_PENDING_RUNS
                {
                    self.loss_runs.push(ListenerRuns { from, runs, at_ms });
                }
                return None;
            }
            RtcpPacket::Other { .. } => return None,
        };
        let block = reports.iter().find(|b| b.ssrc == self.ssrc)?;
        // RFC 3550 §6.4.1: RTT = arrival − LSR − DLSR, from the block about our stream.
        let mut rtt_ms = None;
        if block.last_sr != 0 {
            let arrived_mid = ntp::middle32(ntp::from_unix_micros(now.unix_us_at(at_ms)));
            let rtt = arrived_mid
                .wrapping_sub(block.last_sr)
                .wrapping_sub(block.delay_since_last_sr);
            // A "negative" round trip (clock stepped, a bogus block) is no measurement.
            if rtt < 0x8000_0000 {
                rtt_ms = Some(ntp::short_to_micros(rtt) as f64 / 1000.0);
                if let Some(sender) = self.senders.get_mut(&from) {
                    sender.rtt_ms = rtt_ms;
                }
            }
        }
        let listener = self.listeners.entry(from).or_default();
        listener.ssrc = from;
        listener.rtt_ms = rtt_ms.or(listener.rtt_ms);
        listener.loss_pct = f64::from(block.fraction_lost) / 2.56;
        listener.jitter_ms = f64::from(block.jitter) / 48.0;
        listener.reported_ms = at_ms;
        Some(ListenerReport {
            from,
            fraction_lost: f64::from(block.fraction_lost) / 256.0,
            rtt_ms,
            at_ms,
        })
    }

    /// The next listener's loss runs on our stream received by [`RtcpSession::on_rtcp`], for
    /// the rate controller's choice of protection.
    pub fn poll_loss_runs(&mut self) -> Option<ListenerRuns> {
        (!self.loss_runs.is_empty()).then(|| self.loss_runs.remove(0))
    }

    /// Engine time the next report is due.
    pub fn poll_timeout(&self) -> f64 {
        self.next_report_ms
    }

    /// The report due at `now` (call when [`RtcpSession::poll_timeout`] has passed): an SR
    /// when we send (`info`), else an RR when we hear anyone, each with a block per sender we
    /// hear, then the loss runs of each sender's stream (APP), then our latency stages
    /// (`latency`) as an APP packet. Also forgets
    /// senders and listeners silent for [`FORGET_AFTER_MS`]. `None` when not due or when
    /// there is nothing to say.
    pub fn poll_report(
        &mut self,
        now: Now,
        info: Option<SenderInfo>,
        latency: Option<SenderLatency>,
    ) -> Option<Vec<RtcpPacket>> {
        if now.ms < self.next_report_ms {
            return None;
        }
        self.next_report_ms = now.ms + REPORT_INTERVAL_MS;
        self.senders
            .retain(|_, s| now.ms - s.last_packet_ms < FORGET_AFTER_MS);
        self.listeners
            .retain(|_, l| now.ms - l.reported_ms < FORGET_AFTER_MS);
        let blocks = self
            .senders
            .values_mut()
            .map(|s| {
                let (lsr, dlsr) = s.last_sr.map_or((0, 0), |(lsr, at)| {
                    (lsr, ntp::micros_to_short(((now.ms - at) * 1000.0) as u64))
                });
                s.reception.report(lsr, dlsr)
            })
            .collect::<Vec<_>>();
        let first = match info {
            Some(info) => RtcpPacket::SenderReport {
                ssrc: self.ssrc,
                info,
                reports: blocks,
            },
            None if !blocks.is_empty() => RtcpPacket::ReceiverReport {
                ssrc: self.ssrc,
                reports: blocks,
            },
            None => return None,
        };
        let runs = LossRunsReport {
            sources: self
                .senders
                .iter_mut()
                .map(|(&ssrc, s)| (ssrc, s.reception.loss_runs()))
                .collect(),
        };
        let mut packets = vec![first];
        if !runs.sources.is_empty() {
            packets.push(runs.to_packet(self.ssrc));
        }
        if let Some(latency) = latency {
            packets.push(latency.to_packet(self.ssrc));
        }
        Some(packets)
    }

    /// What RTCP knows about the sender `ssrc`.
    pub fn sender(&self, ssrc: u32) -> Option<&RemoteSender> {
        self.senders.get(&ssrc)
    }

    /// Everyone who reported on our stream lately, by SSRC.
    pub fn listeners(&self) -> Vec<ListenerStats> {
        let mut listeners: Vec<ListenerStats> = self.listeners.values().cloned().collect();
        listeners.sort_by_key(|l| l.ssrc);
        listeners
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: u32 = 0xa11ce;
    const BOB: u32 = 0xb0b;

    /// Both clocks at engine time `ms`, for a client whose wall clock reads `epoch_us` at
    /// engine time 0.
    fn at(ms: f64, epoch_us: u64) -> Now {
        Now {
            ms,
            unix_us: (epoch_us as i64 + (ms * 1000.0) as i64) as u64,
        }
    }

    fn sender_info(now: Now) -> SenderInfo {
        SenderInfo {
            ntp_timestamp: ntp::from_unix_micros(now.unix_us),
            rtp_timestamp: (now.ms * 48.0) as u32,
            packet_count: 50,
            octet_count: 4000,
        }
    }

    /// Alice sends, Bob listens, through a path of `one_way_ms` each way; each client's
    /// engine clock starts elsewhere and their wall clocks disagree by 7 s (round trips need no
    /// common clock). Returns the sessions after `seconds` of simulated call.
    fn call(one_way_ms: f64, bob_waits_ms: f64, seconds: u32) -> (RtcpSession, RtcpSession) {
        let (alice_epoch, bob_epoch) = (1_700_000_000_000_000, 1_700_000_007_000_000);
        // Bob's engine clock runs 1234 ms behind Alice's.
        let bob_ms = |alice_ms: f64| alice_ms - 1234.0;
        let mut alice = RtcpSession::new(ALICE, 0.0);
        let mut bob = RtcpSession::new(BOB, bob_ms(0.0));
        let mut seq = 0u16;
        let mut t = 0.0;
        // Reports in flight: (arrival time on the sender's engine clock, packets).
        let mut to_bob: Vec<(f64, Vec<RtcpPacket>)> = Vec::new();
        let mut to_alice: Vec<(f64, Vec<RtcpPacket>)> = Vec::new();
        while t < f64::from(seconds) * 1000.0 {
            // A 20 ms RTP packet from Alice reaches Bob one way later (delivered now: its
            // arrival time is what counts).
            if t % 20.0 == 0.0 {
                bob.on_rtp(ALICE, seq, u32::from(seq) * 960, bob_ms(t + one_way_ms));
                seq = seq.wrapping_add(1);
            }
            let now = at(t, alice_epoch);
            if t >= alice.poll_timeout()
                && let Some(report) = alice.poll_report(now, Some(sender_info(now)), None)
            {
                to_bob.push((t + one_way_ms, report));
            }
            to_bob.retain(|(arrive, report)| {
                if *arrive > t {
                    return true;
                }
                for p in report {
                    // Bob's engine takes the datagram `bob_waits_ms` after it arrived.
                    let seen = at(bob_ms(*arrive + bob_waits_ms), bob_epoch);
                    assert_eq!(
                        bob.on_rtcp(p, bob_ms(*arrive), seen),
                        None,
                        "Alice reports no blocks"
                    );
                }
                false
            });
            let bob_now = at(bob_ms(t), bob_epoch);
            if bob_now.ms >= bob.poll_timeout()
                && let Some(report) = bob.poll_report(bob_now, None, None)
            {
                to_alice.push((t + one_way_ms, report));
            }
            to_alice.retain(|(arrive, report)| {
                if *arrive > t {
                    return true;
                }
                for p in report {
                    alice.on_rtcp(p, *arrive, at(*arrive + 3.0, alice_epoch));
                }
                false
            });
            t += 1.0;
        }
        (alice, bob)
    }

    #[test]
    fn round_trip_from_lsr_and_dlsr_without_a_common_clock() {
        let (alice, _) = call(25.0, 4.0, 5);
        let listeners = alice.listeners();
        assert_eq!(listeners.len(), 1);
        let bob = &listeners[0];
        assert_eq!(bob.ssrc, BOB);
        // 2 × 25 ms, to NTP short-format resolution (15 µs).
        let rtt = bob.rtt_ms.expect("a round trip");
        assert!((rtt - 50.0).abs() < 0.1, "rtt {rtt}");
        assert_eq!(bob.loss_pct, 0.0);
    }

    #[test]
    fn engine_wake_up_delay_is_not_counted() {
        // Bob's engine takes each datagram 9 ms after it arrived: the round trip is unchanged
        // because the arrival time, not the processing time, is what counts.
        let (alice, _) = call(10.0, 9.0, 4);
        let rtt = alice.listeners()[0].rtt_ms.unwrap();
        assert!((rtt - 20.0).abs() < 0.1, "rtt {rtt}");
    }

    #[test]
    fn receivers_send_rr_blocks_and_senders_sr() {
        let mut bob = RtcpSession::new(BOB, 0.0);
        let now = at(1000.0, 1_000_000);
        assert_eq!(bob.poll_report(now, None, None), None, "nothing to say yet");
        for seq in 0..50u16 {
            // Every fifth packet lost.
            if seq % 5 != 4 {
                bob.on_rtp(
                    ALICE,
                    seq,
                    u32::from(seq) * 960,
                    1000.0 + f64::from(seq) * 20.0,
                );
            }
        }
        assert_eq!(
            bob.poll_report(at(1500.0, 1_000_000), None, None),
            None,
            "not due"
        );
        let report = bob.poll_report(at(2000.0, 1_000_000), None, None).unwrap();
        let [RtcpPacket::ReceiverReport { ssrc, reports }, runs] = report.as_slice() else {
            panic!("{report:?}")
        };
        assert_eq!(*ssrc, BOB);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].ssrc, ALICE);
        // 10 of 49 expected so far (the last loss comes after the highest received).
        assert_eq!(reports[0].cumulative_lost, 9);
        // … each a run of one.
        let lone = LossRuns {
            runs: 9,
            lost: 9,
            longest: 1,
        };
        assert_eq!(
            LossRunsReport::from_packet(runs),
            Some((
                BOB,
                LossRunsReport {
                    sources: vec![(ALICE, lone)]
                }
            ))
        );
        // Alice, hearing it, hands it to her rate controller.
        let mut alice = RtcpSession::new(ALICE, 0.0);
        assert_eq!(alice.on_rtcp(runs, 2001.0, at(2001.0, 0)), None);
        assert_eq!(
            alice.poll_loss_runs(),
            Some(ListenerRuns {
                from: BOB,
                runs: lone,
                at_ms: 2001.0
            })
        );
        assert_eq!(alice.poll_loss_runs(), None);
        assert_eq!(bob.poll_timeout(), 3000.0);
        // A sender with latency stages: SR first, then the APP packet.
        let latency = SenderLatency {
            capture_us: 10_000,
            processing_us: 10_500,
            encode_us: 6_800,
        };
        let now = at(3000.0, 1_000_000);
        let report = bob
            .poll_report(now, Some(sender_info(now)), Some(latency))
            .unwrap();
        assert!(matches!(
            report[0],
            RtcpPacket::SenderReport { ssrc: BOB, .. }
        ));
        assert_eq!(SenderLatency::from_packet(&report[2]), Some((BOB, latency)));
    }

    #[test]
    fn reports_about_our_stream_become_listener_reports() {
        let mut alice = RtcpSession::new(ALICE, 0.0);
        let mut bob = RtcpSession::new(BOB, 0.0);
        for seq in 0..100u16 {
            if seq % 10 != 3 {
                bob.on_rtp(ALICE, seq, u32::from(seq) * 960, f64::from(seq) * 10.0);
            }
        }
        let report = bob.poll_report(at(1000.0, 0), None, None).unwrap();
        let got = alice.on_rtcp(&report[0], 1001.0, at(1001.0, 0)).unwrap();
        assert_eq!(got.from, BOB);
        assert!((got.fraction_lost - 0.1).abs() < 0.01, "{got:?}");
        // No SR was heard yet: no round trip.
        assert_eq!(got.rtt_ms, None);
        // A block about someone else's stream is not about us.
        let mut carol = RtcpSession::new(0xca201, 0.0);
        assert_eq!(carol.on_rtcp(&report[0], 1001.0, at(1001.0, 0)), None);
        assert!(carol.listeners().is_empty());
    }

    #[test]
    fn app_reports_and_sender_reports_attach_to_known_senders_only() {
        let mut bob = RtcpSession::new(BOB, 0.0);
        let latency = SenderLatency {
            capture_us: 1,
            processing_us: 2,
            encode_us: 3,
        };
        bob.on_rtcp(&latency.to_packet(ALICE), 5.0, at(5.0, 0));
        assert!(bob.sender(ALICE).is_none(), "not heard: not tracked");
        bob.on_rtp(ALICE, 1, 960, 10.0);
        bob.on_rtcp(&latency.to_packet(ALICE), 11.0, at(11.0, 0));
        assert_eq!(bob.sender(ALICE).unwrap().sender_latency, Some(latency));
    }

    #[test]
    fn silent_peers_are_forgotten_and_a_rejoin_starts_afresh() {
        let (mut alice, _) = call(5.0, 0.0, 3);
        assert_eq!(alice.listeners().len(), 1);
        // Bob went quiet: 30 s later he is gone.
        let later = at(3_000.0 + FORGET_AFTER_MS + 1_000.0, 0);
        alice.poll_report(later, None, None);
        assert!(alice.listeners().is_empty());
        let (mut alice, mut bob) = call(5.0, 0.0, 3);
        assert!(bob.sender(ALICE).is_some());
        bob.rejoined(0xb0b2);
        alice.rejoined(0xa11c2);
        assert_eq!(bob.ssrc(), 0xb0b2);
        assert!(bob.sender(ALICE).is_none() && alice.listeners().is_empty());
    }
}
