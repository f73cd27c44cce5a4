//! Bitrate and frame-size adaptation: a sans-IO state machine fed with what receivers report
//! (RTCP loss fraction, RTT) and returning encoder settings.
//!
//! # Loss is not congestion
//!
//! Random loss (a radio link, a lossy hop) does not go away when we send less, and lowering the
//! bitrate then only costs quality: libopus's in-band FEC is strong at 32–40 kbit/s with 20 ms
//! frames and much weaker below (design guide §3; 5 % random loss with an ideal buffer: 4.05
//! PESQ at 32 kbit/s, 3.57 at 24). So loss alone never lowers the bitrate or lengthens the
//! frame: it only sizes the FEC (the expected-loss percentage handed to libopus) and, in
//! low-latency mode, leaves restricted low-delay (CELT only has no FEC).
//!
//! The bitrate goes down on signs of **congestion**: the round trip growing above the lowest
//! one seen on that path (queues filling), or loss that rises with the rate (an upgrade
//! followed by clearly more loss than the lower rate had: the path cannot carry it, and the
//! next upgrade waits twice as long). Down is quick (two congested reports in a row), one
//! step at a time (32 kbit/s at 20 ms, then 24 kbit/s at 40 ms); up is slow (ten seconds
//! without congestion, one step at a time).
//!
//! # One encoding, many listeners: the room policy
//!
//! The talker's one stream reaches everyone, and any member can send receiver reports about it
//! — true or forged. So no single listener decides for the room:
//! - the rate steps down only when a **majority** of the listeners reporting show congestion
//!   (all of them in a room of two listeners; the only one in a two-person call). A congested
//!   minority is served by the relay dropping stale packets for it, not by degrading everyone;
//! - the FEC planning follows the worst listener, but one listener can raise it at most
//!   [`MAX_LOSS_ABOVE_MAJORITY`] above what the majority reports, and never above 25 %.
//!
//! A member reporting 78 % loss while the real listener loses nothing therefore changes neither
//! bitrate nor frame size, and the FEC planning by at most 10 points.
//!
//! # Protection follows the loss pattern
//!
//! Listeners also report how their losses come: runs of consecutive losses (RTCP APP
//! `LossRunsReport`). In-band FEC carries only the previous frame, so it is the best tool
//! against isolated losses (design guide §3: ~4.0 / 3.7 / 2.9 PESQ at 5 / 10 / 20 % random loss
//! at 32 kbit/s, DRED alone 0.3–0.6 worse there), while a burst of two or more is repaired only by
//! deep redundancy (DRED). Measured through our buffer at 40 kbit/s (docs/BENCHMARKS.md,
//! "Opus 1.6 … the protection policy"):
//! - DRED *added to* FEC buys nothing: with FEC on, libopus gives DRED no bits at 5–10 %
//!   planned loss, and at 20 % the bits it takes starve the primary encoding (mid-call 20 %
//!   random 3.02 against FEC's 3.17, bursty 2.09 against 2.17);
//! - DRED *instead of* FEC, with the buffer waiting two frames more while bursts that the
//!   packets' redundancy reaches are recent (`JitterConfig::burst_lookahead_frames`), beats FEC
//!   on bursty loss, and loses without that look-ahead.
//!
//! So [`protection`] sends FEC alone on a clean path and while losses come one at a time, and
//! DRED with FEC off once they come in runs (mean run ≥ [`BURSTY_RUN`]), long enough to reach
//! back over the longest recent burst with room to spare; the listeners' buffers then wait for
//! it. DRED's bits come out of the bitrate; below [`MIN_DRED_BPS`] they would starve the
//! primary encoding, so FEC it is there. The encoder's complexity follows from the protection
//! and the bitrate (`crate::codec::encoder_complexity`): lower while FEC at full rate carries
//! the quality, libopus's default with DRED.

use std::collections::HashMap;

/// Which latency/robustness trade-off the user chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum FrameMode {
    /// 20 ms frames on a good network (the default).
    Standard,
    /// 10 ms frames, and restricted low-delay Opus (2.5 ms instead of 6.5 ms look-ahead) while
    /// the network is clean enough not to need FEC (CELT-only has none).
    LowLatency,
}

/// Network state as the rate controller sees it, worst first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Tier {
    /// Congestion persisted at the reduced rate: 24 kbit/s, 40 ms frames.
    Poor,
    /// Congestion: 32 kbit/s (FEC still works well), 20 ms frames (10 ms in low-latency mode).
    Reduced,
    /// Losses but no congestion: full rate, FEC on (low-latency mode leaves CELT-only).
    Good,
    /// Clean.
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
    /// In-band FEC (see [`protection`]).
    pub fec: bool,
    /// DRED duration, 10 ms units; 0 off (see [`protection`]).
    pub dred_10ms: u8,
}

/// Mean length of the loss runs (packets) from which losses count as bursty: DRED instead of
/// in-band FEC. Random loss at 10 % has a mean run of 1.11, at 20 % 1.25; Gilbert-Elliott loss
/// with mean bursts of 2 has 2.
pub const BURSTY_RUN: f64 = 1.5;
/// DRED reaches this many times the longest recent burst back (libopus's reach is counted in
/// 10–40 ms steps, and the next burst may be longer).
const DRED_REACH_FACTOR: f64 = 1.5;
/// Shortest DRED worth sending, 10 ms units: 200 ms.
const MIN_DRED_10MS: f64 = 20.0;
/// Longest DRED libopus encodes, 10 ms units (~1 s).
const MAX_DRED_10MS: f64 = 104.0;
/// Below this bitrate DRED would starve the primary encoding: FEC it is.
const MIN_DRED_BPS: i32 = 32_000;
/// Per-report memory of the loss-run averages (a report a second: ~10 s).
const RUNS_ALPHA: f64 = 0.1;
/// Per-report decay of the longest recent burst (a report a second: halves in ~14 s).
const LONGEST_DECAY: f64 = 0.95;

/// The protection the loss pattern calls for, as (in-band FEC, DRED duration in 10 ms units):
/// FEC alone on a clean path or while losses come one at a time; DRED with FEC off once they
/// come in runs (mean run ≥ [`BURSTY_RUN`]), reaching [`DRED_REACH_FACTOR`] × the longest recent
/// burst (`longest_run`, packets of `frame_ms`) back, from 200 ms up to ~1 s — unless the
/// bitrate is below [`MIN_DRED_BPS`] or the encoder is CELT-only (`restricted_low_delay`: libopus
/// has neither FEC nor DRED there). Not both: with FEC on, DRED's bits only starve the primary
/// encoding (see the module docs).
pub fn protection(
    loss: f64,
    mean_run: f64,
    longest_run: f64,
    frame_ms: u32,
    bitrate_bps: i32,
    restricted_low_delay: bool,
) -> (bool, u8) {
    if restricted_low_delay {
        return (false, 0);
    }
    if loss <= LOSSY || mean_run < BURSTY_RUN || bitrate_bps < MIN_DRED_BPS {
        return (true, 0);
    }
    let reach_10ms = DRED_REACH_FACTOR * longest_run * f64::from(frame_ms) / 10.0;
    (
        false,
        reach_10ms.ceil().clamp(MIN_DRED_10MS, MAX_DRED_10MS) as u8,
    )
}

/// What one listener's loss-run reports say, smoothed.
#[derive(Debug, Clone, Copy)]
struct Runs {
    /// Averages of runs and of packets lost in them per report.
    runs: f64,
    lost: f64,
    /// Longest recent run, decaying.
    longest: f64,
    at_ms: f64,
}

/// Loss (fraction) above which the path counts as lossy (FEC matters).
const LOSSY: f64 = 0.01;
/// Round-trip growth above the path's lowest that counts as queueing: at least this (ms) …
const QUEUE_MS: f64 = 60.0;
/// … and at least this share of the lowest round trip (long paths have noisier RTTs).
const QUEUE_SHARE: f64 = 0.5;
/// How fast a listener's lowest-RTT baseline may rise, ms per second: follows a route change
/// within a minute or two, while congestion (seconds) cannot hide behind it.
const BASELINE_RISE_MS_PER_S: f64 = 0.5;
/// After an upgrade, loss this much (fraction) above what the lower rate had is loss that
/// rises with rate: congestion.
const LOSS_RISE: f64 = 0.03;
/// How long after an upgrade loss is compared with the lower rate's, ms.
const PROBE_MS: f64 = 5_000.0;
/// Congestion must be seen this long before the first step down, ms.
const CONGESTED_FOR_MS: f64 = 1_000.0;
/// Congestion must persist this long after a step down before the next one, ms.
const DRAIN_MS: f64 = 3_000.0;
/// Reports older than this no longer count (that receiver left or stopped reporting).
const REPORT_TTL_MS: f64 = 5_000.0;
const UPGRADE_AFTER_MS: f64 = 10_000.0;
/// The upgrade wait doubles after each failed upgrade, up to this.
const MAX_UPGRADE_AFTER_MS: f64 = 80_000.0;
/// One listener raises the FEC planning at most this far (fraction) above the majority's loss.
pub const MAX_LOSS_ABOVE_MAJORITY: f64 = 0.10;
/// FEC is never planned for more loss than this.
const MAX_PLANNED_LOSS: f64 = 0.25;

/// What one listener reported last, and its path's lowest round trip.
#[derive(Debug, Clone, Copy)]
struct Listener {
    loss: f64,
    rtt_ms: Option<f64>,
    at_ms: f64,
    base_rtt_ms: Option<f64>,
}

impl Listener {
    /// Whether this listener's round trip shows queueing.
    fn queueing(&self) -> bool {
        match (self.rtt_ms, self.base_rtt_ms) {
            (Some(rtt), Some(base)) => rtt - base > QUEUE_MS.max(QUEUE_SHARE * base),
            _ => false,
        }
    }
}

/// An upgrade being watched for loss that rises with the rate.
#[derive(Debug, Clone, Copy)]
struct Probe {
    from: Tier,
    since_ms: f64,
    /// The majority's loss at the lower rate.
    loss_before: f64,
}

#[derive(Debug, Clone)]
pub struct RateController {
    mode: FrameMode,
    /// Congestion state: Excellent (none), Reduced or Poor. Loss alone never moves it.
    level: Tier,
    /// Latest report from each receiver (by its SSRC).
    listeners: HashMap<u32, Listener>,
    /// How each receiver's losses come (by its SSRC).
    runs: HashMap<u32, Runs>,
    loss_ewma: f64,
    /// Smoothed loss of the majority (see [`majority`]), the reference for loss rising with rate.
    majority_ewma: f64,
    /// Since when congestion has been seen without a break (reset by each step down).
    congested_since_ms: Option<f64>,
    good_since_ms: Option<f64>,
    upgrade_after_ms: f64,
    probe: Option<Probe>,
    pub switches: u64,
}

/// The largest value that more than half of `values` reach or exceed: what a majority of the
/// listeners sees at least. `values` must be sorted descending; 0 when empty.
fn majority(values_desc: &[f64]) -> f64 {
    let n = values_desc.len();
    if n == 0 {
        return 0.0;
    }
    values_desc[n / 2]
}

impl RateController {
    pub fn new(mode: FrameMode) -> Self {
        Self {
            mode,
            level: Tier::Excellent,
            listeners: HashMap::new(),
            runs: HashMap::new(),
            loss_ewma: 0.0,
            majority_ewma: 0.0,
            congested_since_ms: None,
            good_since_ms: None,
            upgrade_after_ms: UPGRADE_AFTER_MS,
            probe: None,
            switches: 0,
        }
    }

    /// The network state the settings follow.
    pub fn tier(&self) -> Tier {
        if self.level < Tier::Good {
            self.level
        } else if self.loss_ewma > LOSSY {
            Tier::Good
        } else {
            Tier::Excellent
        }
    }

    /// Smoothed loss fraction the FEC is planned for.
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
        let loss = if fraction_lost.is_finite() {
            fraction_lost.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let rtt_ms = rtt_ms.filter(|r| r.is_finite() && *r >= 0.0);
        let entry = self.listeners.entry(reporter).or_insert(Listener {
            loss,
            rtt_ms,
            at_ms: now_ms,
            base_rtt_ms: None,
        });
        let dt_s = ((now_ms - entry.at_ms) / 1000.0).max(0.0);
        entry.base_rtt_ms = match (entry.base_rtt_ms, rtt_ms) {
            (Some(b), Some(r)) => Some(r.min(b + BASELINE_RISE_MS_PER_S * dt_s)),
            (b, r) => b.or(r),
        };
        entry.loss = loss;
        entry.rtt_ms = rtt_ms;
        entry.at_ms = now_ms;
        self.listeners
            .retain(|_, l| now_ms - l.at_ms < REPORT_TTL_MS);

        let mut losses: Vec<f64> = self.listeners.values().map(|l| l.loss).collect();
        losses.sort_by(|a, b| b.total_cmp(a));
        let majority_loss = majority(&losses);
        let planned = losses
            .first()
            .map_or(0.0, |&worst| {
                worst.min(majority_loss + MAX_LOSS_ABOVE_MAJORITY)
            })
            .min(MAX_PLANNED_LOSS);
        self.loss_ewma += 0.4 * (planned - self.loss_ewma);
        self.majority_ewma += 0.4 * (majority_loss - self.majority_ewma);

        let queueing = self.listeners.values().filter(|l| l.queueing()).count();
        let mut congested = 2 * queueing > self.listeners.len();
        if let Some(p) = self.probe {
            if now_ms - p.since_ms > PROBE_MS {
                self.probe = None;
            } else if majority_loss > p.loss_before + LOSS_RISE {
                // More loss at the higher rate than at the lower one: the path cannot carry it.
                congested = true;
            }
        }

        if congested && self.level > Tier::Poor {
            self.good_since_ms = None;
            // A failed upgrade goes back at once (the reports are already past the probe's
            // start); fresh congestion must last a second (two reports of one listener, or
            // several listeners' over a second), so a blip does not switch.
            let since = *self.congested_since_ms.get_or_insert(now_ms);
            let failed_probe = self.probe.is_some();
            if now_ms - since >= CONGESTED_FOR_MS || failed_probe {
                if let Some(p) = self.probe.take() {
                    self.level = p.from;
                    self.upgrade_after_ms = (self.upgrade_after_ms * 2.0).min(MAX_UPGRADE_AFTER_MS);
                } else {
                    self.level = if self.level == Tier::Excellent {
                        Tier::Reduced
                    } else {
                        Tier::Poor
                    };
                }
                // Queues take a while to drain after a step: the next step down needs the
                // congestion to last [`DRAIN_MS`] more.
                self.congested_since_ms = Some(now_ms + DRAIN_MS - CONGESTED_FOR_MS);
            }
        } else if !congested && self.level < Tier::Excellent {
            self.congested_since_ms = None;
            let since = *self.good_since_ms.get_or_insert(now_ms);
            if now_ms - since >= self.upgrade_after_ms {
                let from = self.level;
                self.level = if from == Tier::Poor {
                    Tier::Reduced
                } else {
                    Tier::Excellent
                };
                self.probe = Some(Probe {
                    from,
                    since_ms: now_ms,
                    loss_before: self.majority_ewma,
                });
                self.good_since_ms = Some(now_ms);
            }
        } else if !congested {
            self.congested_since_ms = None;
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

    /// A receiver (`reporter` SSRC) reported the runs of consecutive losses of our stream
    /// over its last interval. Returns the new settings if they changed.
    pub fn on_loss_runs(
        &mut self,
        reporter: u32,
        runs: natter_proto::rtcp::LossRuns,
        now_ms: f64,
    ) -> Option<EncoderSettings> {
        let before = self.settings();
        let (n, lost) = (f64::from(runs.runs), f64::from(runs.lost));
        // A run cannot be longer than what its listener lost, nor hold more than it lost.
        let longest = f64::from(runs.longest).min(lost);
        let entry = self.runs.entry(reporter).or_insert(Runs {
            runs: n,
            lost,
            longest,
            at_ms: now_ms,
        });
        entry.runs += RUNS_ALPHA * (n - entry.runs);
        entry.lost += RUNS_ALPHA * (lost - entry.lost);
        entry.longest = longest.max(entry.longest * LONGEST_DECAY);
        entry.at_ms = now_ms;
        self.runs.retain(|_, r| now_ms - r.at_ms < REPORT_TTL_MS);
        let after = self.settings();
        (after != before).then(|| {
            self.switches += 1;
            after
        })
    }

    /// Mean loss-run length over the listeners (weighted by their losses) and the longest
    /// recent run, packets. A single listener's reports can make the room's encoding add
    /// DRED to FEC (its bits come out of the primary encoding's), never its
    /// bitrate or frame size.
    pub fn loss_runs(&self) -> (f64, f64) {
        let (runs, lost, longest) = self.runs.values().fold((0.0, 0.0, 0.0), |(r, l, m), x| {
            (r + x.runs, l + x.lost, f64::max(m, x.longest))
        });
        let mean = if runs > 1e-9 { lost / runs } else { 1.0 };
        (mean, longest)
    }

    /// Settings for the current state and measured loss.
    pub fn settings(&self) -> EncoderSettings {
        let expected_loss_pct = (self.loss_ewma * 100.0).ceil().clamp(2.0, 30.0) as u8;
        let (bitrate_bps, frame_ms, rld) = match (self.mode, self.tier()) {
            (FrameMode::Standard, Tier::Excellent | Tier::Good) => (40_000, 20, false),
            (FrameMode::Standard, Tier::Reduced) => (32_000, 20, false),
            (FrameMode::LowLatency, Tier::Excellent) => (48_000, 10, true),
            (FrameMode::LowLatency, Tier::Good) => (40_000, 10, false),
            (FrameMode::LowLatency, Tier::Reduced) => (32_000, 10, false),
            (_, Tier::Poor) => (24_000, 40, false),
        };
        let (mean_run, longest_run) = self.loss_runs();
        let (fec, dred_10ms) = protection(
            self.loss_ewma,
            mean_run,
            longest_run,
            frame_ms,
            bitrate_bps,
            rld,
        );
        EncoderSettings {
            bitrate_bps,
            frame_ms,
            expected_loss_pct,
            restricted_low_delay: rld,
            fec,
            dred_10ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds one report per second from listener 7 for `secs` seconds from `t`.
    fn feed(rc: &mut RateController, t: &mut f64, secs: u32, loss: f64, rtt: f64) {
        for _ in 0..secs {
            rc.on_report(7, loss, Some(rtt), *t);
            *t += 1_000.0;
        }
    }

    #[test]
    fn protection_follows_the_loss_pattern() {
        let p =
            |loss, mean, longest, frame, bps| protection(loss, mean, longest, frame, bps, false);
        // Clean, or losses one at a time (10 % random: mean run 1.11): FEC.
        assert_eq!(p(0.0, 1.0, 0.0, 20, 40_000), (true, 0));
        assert_eq!(p(0.10, 1.11, 3.0, 20, 40_000), (true, 0));
        // Runs: DRED instead of FEC, reaching 1.5 × the longest burst back (at least 200 ms, at
        // most libopus's ~1 s).
        assert_eq!(p(0.10, 3.0, 5.0, 20, 40_000), (false, 20));
        assert_eq!(p(0.10, 3.0, 20.0, 20, 40_000), (false, 60));
        assert_eq!(p(0.10, 3.0, 20.0, 40, 32_000), (false, 104));
        assert_eq!(p(0.20, 5.0, 200.0, 20, 40_000), (false, 104));
        // Too few bits for both DRED and a primary encoding worth hearing: FEC.
        assert_eq!(p(0.10, 3.0, 5.0, 40, 24_000), (true, 0));
        // CELT-only has neither.
        assert_eq!(protection(0.1, 3.0, 5.0, 10, 48_000, true), (false, 0));
    }

    #[test]
    fn bursty_listener_swaps_fec_for_dred_and_back_without_touching_the_rate() {
        let mut rc = RateController::new(FrameMode::Standard);
        let mut t = 0.0;
        let bursts = natter_proto::rtcp::LossRuns {
            runs: 2,
            lost: 10,
            longest: 7,
        };
        let lone = natter_proto::rtcp::LossRuns {
            runs: 10,
            lost: 10,
            longest: 1,
        };
        for _ in 0..5 {
            rc.on_report(7, 0.2, Some(80.0), t);
            rc.on_loss_runs(7, bursts, t);
            t += 1_000.0;
        }
        let s = rc.settings();
        assert_eq!((s.fec, s.dred_10ms), (false, 21), "{s:?}");
        assert_eq!((s.bitrate_bps, s.frame_ms), (40_000, 20));
        // The same loss rate, now one packet at a time: back to FEC once the averages and the
        // longest burst have faded (within 30 s).
        let mut switched = None;
        for i in 0..30 {
            rc.on_report(7, 0.2, Some(80.0), t);
            if rc
                .on_loss_runs(7, lone, t)
                .is_some_and(|s| s.dred_10ms == 0)
            {
                switched.get_or_insert(i);
            }
            t += 1_000.0;
        }
        let s = rc.settings();
        assert_eq!(
            (s.fec, s.dred_10ms, s.bitrate_bps),
            (true, 0, 40_000),
            "{s:?}"
        );
        assert!(switched.is_some_and(|i| i >= 3), "{switched:?}");
        // A listener that lies about a run longer than it lost moves nothing.
        let mut rc = RateController::new(FrameMode::Standard);
        let lie = natter_proto::rtcp::LossRuns {
            runs: 1,
            lost: 1,
            longest: u16::MAX,
        };
        rc.on_report(7, 0.2, Some(80.0), 0.0);
        rc.on_loss_runs(7, lie, 0.0);
        assert_eq!(rc.loss_runs(), (1.0, 1.0));
    }

    #[test]
    fn random_loss_keeps_the_fec_bitrate_and_20_ms_frames() {
        let mut rc = RateController::new(FrameMode::Standard);
        let mut t = 0.0;
        feed(&mut rc, &mut t, 5, 0.0, 80.0);
        for loss in [0.02, 0.05, 0.08, 0.15, 0.3] {
            feed(&mut rc, &mut t, 20, loss, 80.0);
            let s = rc.settings();
            assert_eq!((s.bitrate_bps, s.frame_ms), (40_000, 20), "at {loss}");
            assert_eq!(rc.tier(), Tier::Good);
            assert!(
                f64::from(s.expected_loss_pct) >= (loss * 100.0).min(25.0),
                "FEC planned for the loss: {s:?}"
            );
        }
    }

    #[test]
    fn rtt_growth_steps_down_quickly_and_up_slowly() {
        let mut rc = RateController::new(FrameMode::Standard);
        let mut t = 0.0;
        feed(&mut rc, &mut t, 5, 0.0, 40.0);
        assert_eq!(rc.settings().bitrate_bps, 40_000);
        // Queues fill: RTT 40 → 200 ms. Two reports: 32 kbit/s; persisting 3 s more: 24 kbit/s,
        // 40 ms.
        feed(&mut rc, &mut t, 2, 0.02, 200.0);
        assert_eq!(rc.tier(), Tier::Reduced);
        assert_eq!(rc.settings().bitrate_bps, 32_000);
        feed(&mut rc, &mut t, 2, 0.02, 220.0);
        assert_eq!(rc.tier(), Tier::Reduced, "queues get time to drain");
        feed(&mut rc, &mut t, 1, 0.02, 220.0);
        assert_eq!(rc.tier(), Tier::Poor);
        assert_eq!(
            (rc.settings().bitrate_bps, rc.settings().frame_ms),
            (24_000, 40)
        );
        // Queues drain: not before 10 s, then one step at a time.
        feed(&mut rc, &mut t, 9, 0.0, 42.0);
        assert_eq!(rc.tier(), Tier::Poor);
        feed(&mut rc, &mut t, 2, 0.0, 42.0);
        assert_eq!(rc.tier(), Tier::Reduced);
        feed(&mut rc, &mut t, 11, 0.0, 42.0);
        assert_eq!(rc.tier(), Tier::Excellent);
    }

    #[test]
    fn a_single_bad_report_does_not_switch() {
        let mut rc = RateController::new(FrameMode::Standard);
        rc.on_report(1, 0.0, Some(30.0), 0.0);
        rc.on_report(1, 0.5, Some(300.0), 1_000.0);
        rc.on_report(1, 0.0, Some(30.0), 2_000.0);
        assert_eq!(rc.settings().bitrate_bps, 40_000);
        assert_eq!(rc.settings().frame_ms, 20);
    }

    #[test]
    fn loss_that_rises_with_rate_is_congestion_and_the_next_upgrade_waits_longer() {
        let mut rc = RateController::new(FrameMode::Standard);
        let mut t = 0.0;
        feed(&mut rc, &mut t, 3, 0.0, 40.0);
        feed(&mut rc, &mut t, 2, 0.005, 250.0);
        assert_eq!(rc.tier(), Tier::Reduced);
        // At 32 kbit/s the path carries it: 0.5 % loss, RTT back to normal. After 10 s the
        // controller tries 40 kbit/s, and the loss jumps to 12 %: back down at once.
        feed(&mut rc, &mut t, 11, 0.005, 40.0);
        assert_eq!(rc.tier(), Tier::Excellent);
        feed(&mut rc, &mut t, 1, 0.12, 45.0);
        assert_eq!(rc.tier(), Tier::Reduced, "loss rose with the rate");
        // The next upgrade waits 20 s instead of 10.
        feed(&mut rc, &mut t, 15, 0.005, 40.0);
        assert_eq!(rc.tier(), Tier::Reduced);
        feed(&mut rc, &mut t, 7, 0.005, 40.0);
        assert_eq!(rc.tier(), Tier::Excellent);
        // This time the loss stays as it was: the upgrade holds.
        feed(&mut rc, &mut t, 10, 0.005, 40.0);
        assert_eq!(rc.settings().bitrate_bps, 40_000);
    }

    #[test]
    fn one_forged_listener_cannot_drag_the_talker_down() {
        // Issue #10 point 7: a member reports 78 % loss (and an RTT of seconds) under its own
        // SSRC while the real listener loses nothing.
        let mut rc = RateController::new(FrameMode::Standard);
        let mut t = 0.0;
        for _ in 0..60 {
            rc.on_report(1, 0.0, Some(30.0), t);
            rc.on_report(666, 0.78, Some(30.0 + t / 10.0), t);
            t += 1_000.0;
            let s = rc.settings();
            assert_eq!((s.bitrate_bps, s.frame_ms), (40_000, 20), "at {t} ms");
        }
        let s = rc.settings();
        // Its influence on the FEC planning is bounded.
        assert!(
            f64::from(s.expected_loss_pct) <= 100.0 * MAX_LOSS_ABOVE_MAJORITY + 1.0,
            "{s:?}"
        );
    }

    #[test]
    fn congestion_seen_by_the_majority_steps_down_a_minority_does_not() {
        let mut rc = RateController::new(FrameMode::Standard);
        let mut t = 0.0;
        fn round(rc: &mut RateController, t: &mut f64, rtts: [f64; 3]) {
            for (i, rtt) in rtts.into_iter().enumerate() {
                rc.on_report(i as u32, 0.0, Some(rtt), *t);
            }
            *t += 1_000.0;
        }
        for _ in 0..3 {
            round(&mut rc, &mut t, [30.0, 30.0, 30.0]);
        }
        for _ in 0..5 {
            round(&mut rc, &mut t, [30.0, 300.0, 30.0]);
        }
        assert_eq!(rc.tier(), Tier::Excellent, "one of three congested");
        for _ in 0..2 {
            round(&mut rc, &mut t, [30.0, 300.0, 250.0]);
        }
        assert_eq!(rc.tier(), Tier::Reduced, "two of three congested");
    }

    #[test]
    fn stale_reports_expire_and_a_slow_route_change_is_not_congestion() {
        let mut rc = RateController::new(FrameMode::Standard);
        let mut t = 0.0;
        for _ in 0..3 {
            rc.on_report(1, 0.0, Some(20.0), t);
            rc.on_report(2, 0.04, Some(20.0), t);
            t += 1_000.0;
        }
        assert_eq!(rc.tier(), Tier::Good);
        // Receiver 2 leaves; its last report expires after 5 s.
        feed(&mut rc, &mut t, 10, 0.0, 20.0);
        assert_eq!(rc.tier(), Tier::Excellent);
        // The RTT creeps up by 0.3 ms/s for 5 minutes (a route change, not a queue).
        for i in 0..300 {
            feed(&mut rc, &mut t, 1, 0.0, 20.0 + 0.3 * f64::from(i));
        }
        assert_eq!(rc.tier(), Tier::Excellent);
    }

    #[test]
    fn nonsense_reports_are_harmless() {
        let mut rc = RateController::new(FrameMode::Standard);
        rc.on_report(1, f64::NAN, Some(f64::INFINITY), 0.0);
        rc.on_report(1, -3.0, Some(-5.0), 1_000.0);
        rc.on_report(1, 7.0, None, 2_000.0);
        let s = rc.settings();
        assert_eq!((s.bitrate_bps, s.frame_ms), (40_000, 20));
        assert!(s.expected_loss_pct <= 30);
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
        assert_eq!(s.frame_ms, 10);
        assert!(s.bitrate_bps >= 32_000);
        feed(&mut rc, &mut t, 3, 0.03, 300.0);
        assert!(rc.tier() <= Tier::Reduced, "RTT growth is congestion");
    }
}
