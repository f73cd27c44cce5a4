//! Bitrate and frame-size adaptation: a sans-IO state machine fed with what receivers report
//! (RTCP loss fraction, RTT) and returning encoder settings.
//!
//! Tiers, not a continuous controller: voice needs few distinct operating points and each
//! switch should be rare and inaudible. Going down is quick (two bad reports in a row), going
//! up slow (ten seconds of good ones), so a flapping link settles on the safer tier.
//!
//! libopus 1.3 emits no in-band FEC at 16 kbit/s and at ~20 kbit/s only above ~5 % configured
//! loss (design guide §3), so the lossy tier never goes below 24 kbit/s: it trades frame size
//! (40 ms, half the packets, less header overhead and fewer chances to lose one) instead of the
//! bitrate that makes FEC work. The expected-loss percentage handed to the encoder follows the
//! measured loss (with a floor) because libopus sizes its FEC by it.

/// Which latency/robustness trade-off the user chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum FrameMode {
    /// 20 ms frames on a good network (the default).
    Standard,
    /// 10 ms frames, and restricted low-delay Opus (2.5 ms instead of 6.5 ms look-ahead) while
    /// the network is clean enough not to need FEC (CELT-only has none).
    LowLatency,
}

/// Network quality tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Tier {
    Poor,
    Good,
    Excellent,
}

/// What the encoder should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EncoderSettings {
    pub bitrate_bps: i32,
    pub frame_ms: u32,
    /// Loss percentage libopus plans its FEC for.
    pub expected_loss_pct: u8,
    /// Restricted low-delay (CELT only, no FEC) instead of VOIP.
    pub restricted_low_delay: bool,
}

/// Loss below this (fraction) and RTT below [`EXCELLENT_RTT_MS`] is excellent.
const EXCELLENT_LOSS: f64 = 0.01;
const EXCELLENT_RTT_MS: f64 = 150.0;
/// Loss above this is poor.
const POOR_LOSS: f64 = 0.08;
const POOR_RTT_MS: f64 = 400.0;
/// Reports older than this no longer count (that receiver left or stopped reporting).
const REPORT_TTL_MS: f64 = 5_000.0;
const UPGRADE_AFTER_MS: f64 = 10_000.0;

#[derive(Debug, Clone, Copy)]
struct Report {
    loss: f64,
    rtt_ms: Option<f64>,
    at_ms: f64,
}

#[derive(Debug, Clone)]
pub struct RateController {
    mode: FrameMode,
    tier: Tier,
    /// Latest report from each receiver (by its SSRC).
    reports: std::collections::HashMap<u32, Report>,
    loss_ewma: f64,
    bad_streak: u32,
    good_since_ms: Option<f64>,
    pub switches: u64,
}

impl RateController {
    pub fn new(mode: FrameMode) -> Self {
        Self {
            mode,
            tier: Tier::Excellent,
            reports: std::collections::HashMap::new(),
            loss_ewma: 0.0,
            bad_streak: 0,
            good_since_ms: None,
            switches: 0,
        }
    }

    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Smoothed loss fraction of the worst receiver.
    pub fn loss(&self) -> f64 {
        self.loss_ewma
    }

    /// A receiver (`reporter` SSRC) reported `fraction_lost` (0–1) of our stream and, if
    /// known, the RTT to it. Returns the new settings if they changed.
    pub fn on_report(
        &mut self,
        reporter: u32,
        fraction_lost: f64,
        rtt_ms: Option<f64>,
        now_ms: f64,
    ) -> Option<EncoderSettings> {
        let before = self.settings();
        self.reports.insert(
            reporter,
            Report {
                loss: fraction_lost.clamp(0.0, 1.0),
                rtt_ms,
                at_ms: now_ms,
            },
        );
        self.reports.retain(|_, r| now_ms - r.at_ms < REPORT_TTL_MS);
        // The sender's one encoding reaches everyone: adapt to the worst receiver.
        let worst_loss = self.reports.values().map(|r| r.loss).fold(0.0, f64::max);
        let worst_rtt = self
            .reports
            .values()
            .filter_map(|r| r.rtt_ms)
            .fold(0.0, f64::max);
        self.loss_ewma += 0.4 * (worst_loss - self.loss_ewma);
        // Tiers follow the raw reports (the streak rule below filters blips); the smoothed
        // loss only sizes FEC.
        let observed = if worst_loss > POOR_LOSS || worst_rtt > POOR_RTT_MS {
            Tier::Poor
        } else if worst_loss > EXCELLENT_LOSS || worst_rtt > EXCELLENT_RTT_MS {
            Tier::Good
        } else {
            Tier::Excellent
        };
        if observed < self.tier {
            self.bad_streak += 1;
            self.good_since_ms = None;
            if self.bad_streak >= 2 {
                self.tier = observed;
                self.bad_streak = 0;
            }
        } else if observed > self.tier {
            self.bad_streak = 0;
            let since = *self.good_since_ms.get_or_insert(now_ms);
            if now_ms - since >= UPGRADE_AFTER_MS {
                // One step at a time.
                self.tier = if self.tier == Tier::Poor {
                    Tier::Good
                } else {
                    Tier::Excellent
                };
                self.good_since_ms = Some(now_ms);
            }
        } else {
            self.bad_streak = 0;
            self.good_since_ms = None;
        }
        let after = self.settings();
        if after != before {
            self.switches += 1;
            Some(after)
        } else {
            None
        }
    }

    /// Settings for the current tier and measured loss.
    pub fn settings(&self) -> EncoderSettings {
        let expected_loss_pct = (self.loss_ewma * 100.0).ceil().clamp(2.0, 30.0) as u8;
        let (bitrate_bps, frame_ms, rld) = match (self.mode, self.tier) {
            (FrameMode::Standard, Tier::Excellent) => (40_000, 20, false),
            (FrameMode::Standard, Tier::Good) => (24_000, 20, false),
            (FrameMode::LowLatency, Tier::Excellent) => (48_000, 10, true),
            (FrameMode::LowLatency, Tier::Good) => (32_000, 10, false),
            (_, Tier::Poor) => (24_000, 40, false),
        };
        EncoderSettings {
            bitrate_bps,
            frame_ms,
            expected_loss_pct,
            restricted_low_delay: rld,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds one report per second with the given loss for `secs` seconds from `t`.
    fn feed(rc: &mut RateController, t: &mut f64, secs: u32, loss: f64, rtt: f64) {
        for _ in 0..secs {
            rc.on_report(7, loss, Some(rtt), *t);
            *t += 1_000.0;
        }
    }

    #[test]
    fn steps_down_fast_and_up_slowly() {
        let mut rc = RateController::new(FrameMode::Standard);
        let mut t = 0.0;
        feed(&mut rc, &mut t, 5, 0.0, 40.0);
        assert_eq!(
            rc.settings(),
            EncoderSettings {
                bitrate_bps: 40_000,
                frame_ms: 20,
                expected_loss_pct: 2,
                restricted_low_delay: false
            }
        );
        // 20 % loss: poor within three reports, 24 kbit/s (FEC still works) in 40 ms frames.
        feed(&mut rc, &mut t, 3, 0.2, 40.0);
        let poor = rc.settings();
        assert_eq!(rc.tier(), Tier::Poor);
        assert_eq!((poor.bitrate_bps, poor.frame_ms), (24_000, 40));
        assert!(
            poor.expected_loss_pct >= 10,
            "FEC planned for the loss: {poor:?}"
        );
        // Network recovers: not before 10 s, then one tier at a time.
        feed(&mut rc, &mut t, 9, 0.0, 40.0);
        assert_eq!(rc.tier(), Tier::Poor);
        feed(&mut rc, &mut t, 3, 0.0, 40.0);
        assert_eq!(rc.tier(), Tier::Good);
        feed(&mut rc, &mut t, 11, 0.0, 40.0);
        assert_eq!(rc.tier(), Tier::Excellent);
    }

    #[test]
    fn never_drops_below_the_fec_bitrate() {
        let mut rc = RateController::new(FrameMode::Standard);
        let mut t = 0.0;
        for loss in [0.0, 0.03, 0.1, 0.3, 0.5] {
            feed(&mut rc, &mut t, 5, loss, 60.0);
            assert!(rc.settings().bitrate_bps >= 24_000);
        }
    }

    #[test]
    fn a_single_bad_report_does_not_switch() {
        let mut rc = RateController::new(FrameMode::Standard);
        rc.on_report(1, 0.5, None, 0.0);
        rc.on_report(1, 0.0, None, 1_000.0);
        assert_eq!(rc.tier(), Tier::Excellent);
        // Only the FEC planning followed the blip.
        assert_eq!(rc.settings().bitrate_bps, 40_000);
    }

    #[test]
    fn worst_receiver_counts_and_stale_reports_expire() {
        let mut rc = RateController::new(FrameMode::Standard);
        let mut t = 0.0;
        for _ in 0..3 {
            rc.on_report(1, 0.0, Some(20.0), t);
            rc.on_report(2, 0.04, Some(20.0), t);
            t += 1_000.0;
        }
        assert_eq!(rc.tier(), Tier::Good);
        // Receiver 2 leaves: its last report expires after 5 s, then receiver 1 alone is
        // excellent once the 10 s upgrade delay has passed.
        feed(&mut rc, &mut t, 12, 0.0, 20.0);
        assert_eq!(rc.tier(), Tier::Good);
        feed(&mut rc, &mut t, 8, 0.0, 20.0);
        assert_eq!(rc.tier(), Tier::Excellent);
    }

    #[test]
    fn low_latency_mode_uses_restricted_low_delay_only_when_clean() {
        let mut rc = RateController::new(FrameMode::LowLatency);
        assert!(rc.settings().restricted_low_delay);
        assert_eq!(rc.settings().frame_ms, 10);
        let mut t = 0.0;
        feed(&mut rc, &mut t, 3, 0.03, 30.0);
        let s = rc.settings();
        assert!(!s.restricted_low_delay, "FEC needs SILK/hybrid: {s:?}");
        assert_eq!((s.frame_ms, s.bitrate_bps), (10, 32_000));
        feed(&mut rc, &mut t, 3, 0.0, 500.0);
        assert_eq!(rc.tier(), Tier::Poor, "high RTT alone is poor");
    }
}
