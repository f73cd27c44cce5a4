//! Receiver-side RTP statistics as RFC 3550 Appendix A.3 and A.8 define them: extended highest
//! sequence number, cumulative and interval loss, and the interarrival jitter estimate. They
//! fill the report blocks of Natter's RTCP reports. Arrival times are passed in (in RTP clock
//! units), so this stays pure and testable.

use crate::rtcp::{LossRuns, ReportBlock};

/// Statistics about one remote source.
#[derive(Debug, Clone, Default)]
pub struct ReceptionStats {
    ssrc: u32,
    started: bool,
    base_seq: u32,
    max_seq: u16,
    cycles: u32,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    last_transit: Option<i64>,
    /// Interarrival jitter in RTP units, scaled by 16 as in RFC 3550 A.8.
    jitter_q4: i64,
    /// Runs of consecutive lost packets since the last [`ReceptionStats::loss_runs`].
    runs: LossRuns,
}

impl ReceptionStats {
    pub fn new(ssrc: u32) -> Self {
        Self {
            ssrc,
            ..Self::default()
        }
    }

    /// Records a packet with sequence `seq` and RTP timestamp `ts` that arrived at
    /// `arrival` (in the same RTP clock units, from any fixed origin).
    pub fn on_packet(&mut self, seq: u16, ts: u32, arrival: u64) {
        if !self.started {
            self.started = true;
            self.base_seq = u32::from(seq);
            self.max_seq = seq;
        } else {
            let delta = seq.wrapping_sub(self.max_seq);
            if delta != 0 && delta < 0x8000 {
                if delta > 1 {
                    // A jump ahead: the packets in between are a run of losses (a reordered
                    // one arriving later makes it look longer than it was; rare enough).
                    self.runs.add(delta - 1);
                }
                if seq < self.max_seq {
                    self.cycles = self.cycles.wrapping_add(1 << 16);
                }
                self.max_seq = seq;
            }
        }
        self.received += 1;
        let transit = arrival as i64 - i64::from(ts);
        if let Some(last) = self.last_transit {
            // Only the difference matters, so the unwrapped RTP timestamp is not needed as
            // long as consecutive timestamps are within 2^31 (always, for audio).
            let d = i64::from((transit - last) as i32).abs();
            self.jitter_q4 += d - ((self.jitter_q4 + 8) >> 4);
        }
        self.last_transit = Some(transit);
    }

    /// The first and the highest sequence number seen, once a packet arrived.
    pub fn sequence_range(&self) -> Option<(u16, u16)> {
        self.started.then_some((self.base_seq as u16, self.max_seq))
    }

    pub fn extended_highest(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    pub fn expected(&self) -> u64 {
        if !self.started {
            return 0;
        }
        u64::from(self.extended_highest().wrapping_sub(self.base_seq)) + 1
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets expected but not received (negative with duplicates).
    pub fn cumulative_lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    /// Interarrival jitter in RTP units.
    pub fn jitter(&self) -> u32 {
        (self.jitter_q4 >> 4) as u32
    }

    /// The runs of consecutive losses since the last call (which starts a new interval): how
    /// losses come — one at a time or in bursts — which the loss fraction cannot tell.
    pub fn loss_runs(&mut self) -> LossRuns {
        std::mem::take(&mut self.runs)
    }

    /// A report block for this source, closing the current loss interval. `last_sr` and
    /// `delay_since_last_sr` come from the caller's record of the source's last sender report.
    pub fn report(&mut self, last_sr: u32, delay_since_last_sr: u32) -> ReportBlock {
        let expected = self.expected();
        let expected_interval = expected - self.expected_prior;
        let received_interval = self.received - self.received_prior;
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        ReportBlock {
            ssrc: self.ssrc,
            fraction_lost,
            cumulative_lost: self.cumulative_lost().clamp(-0x80_0000, 0x7f_ffff) as i32,
            highest_sequence: self.extended_highest(),
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_loss_across_wrap_and_fraction_per_interval() {
        let mut s = ReceptionStats::new(9);
        // 100 packets from 65500, wrapping; every 10th lost.
        for i in 0..100u16 {
            if i % 10 != 5 {
                let seq = 65_500u16.wrapping_add(i);
                s.on_packet(seq, u32::from(i) * 960, u64::from(i) * 960);
            }
        }
        assert_eq!(s.expected(), 100);
        assert_eq!(s.cumulative_lost(), 10);
        assert_eq!(s.extended_highest(), 65_536 + 63);
        let r = s.report(0, 0);
        assert_eq!(r.fraction_lost, 25); // 10 % of 256
        assert_eq!(r.cumulative_lost, 10);
        // No new packets: the next interval has no loss.
        assert_eq!(s.report(0, 0).fraction_lost, 0);
    }

    #[test]
    fn jitter_follows_rfc3550() {
        let mut s = ReceptionStats::new(1);
        // Perfectly paced: zero jitter.
        for i in 0..50u32 {
            s.on_packet(i as u16, i * 960, u64::from(i) * 960);
        }
        assert_eq!(s.jitter(), 0);
        // Arrival offset alternating 0 / 240 units (5 ms): |D| = 240 for every packet, so the
        // estimate converges to 240.
        for i in 50..400u32 {
            let offset = if i % 2 == 0 { 240 } else { 0 };
            s.on_packet(i as u16, i * 960, u64::from(i) * 960 + offset);
        }
        assert!((235..=240).contains(&s.jitter()), "jitter {}", s.jitter());
    }

    #[test]
    fn loss_runs_count_bursts_and_their_lengths() {
        let mut s = ReceptionStats::new(1);
        // 65530..65540 across the wrap, losing 65532 (one) and 65535, 0, 1 (a run of three).
        for seq in [65_530u16, 65_531, 65_533, 65_534, 2, 3] {
            s.on_packet(seq, 0, 0);
        }
        assert_eq!(
            s.loss_runs(),
            LossRuns {
                runs: 2,
                lost: 4,
                longest: 3
            }
        );
        assert_eq!(s.loss_runs(), LossRuns::default());
        s.on_packet(13, 0, 0);
        assert_eq!(s.loss_runs().longest, 9);
    }

    #[test]
    fn duplicates_and_reordering() {
        let mut s = ReceptionStats::new(1);
        for seq in [10u16, 12, 11, 11, 13] {
            s.on_packet(seq, 0, 0);
        }
        assert_eq!(s.expected(), 4);
        assert_eq!(s.cumulative_lost(), -1);
        assert_eq!(s.extended_highest(), 13);
    }
}
