//! The target delay: how late packets arrive, as a forgetting histogram (after WebRTC NetEq).
//!
//! Each packet's *relative arrival delay* is its transit time (arrival − media time) minus the
//! smallest transit of the last `window_ms` (10 s). The RTP timestamp correction makes this
//! independent of frame size and of DTX pauses; the sliding minimum makes it independent of the
//! unknown clock offset between the machines and lets it follow clock drift (at ±200 ppm the
//! minimum lags the path by 2 ms over a 10 s window, less than one 5 ms bucket, so relative
//! delays stay within the first bucket on a clean path).
//!
//! **Why 10 s and not NetEq's 2 s.** The playout point is this minimum plus the target, so
//! whatever moves the minimum moves the playout, and every move is a time-stretch. On a
//! jittery path the minimum of 2 s of packets is itself a random quantity: under `natter-netem`'s
//! in-order Gaussian jitter (sd 12 ms, the real call bench's `random` path) it steps by several
//! ms whenever the fastest packet leaves the window or a faster one comes, and the buffer
//! stretched 70–180 ms per 100 s back and forth after it — in speech, where PESQ and listeners
//! hear every step. The minimum of 10 s of packets sits lower and moves rarely; the target (the
//! quantile of delays *relative* to it) grows by what the minimum fell, so the playout point is
//! no later (the mean delay went down 6 ms in the same test) and it holds still: 40 ms of
//! stretching per 100 s (test `the_playout_holds_still_on_an_in_order_jittery_path`). The
//! costs: clock drift makes the minimum lag the path by up to `window_ms` × drift (2 ms at
//! 200 ppm), and after the path has become *slower* the old, faster minimum stays for up to
//! 10 s, so the half-second maxima of that time overstate the jitter and the histogram keeps
//! the extra margin for as long as it remembers them (a step up of the path delay costs delay
//! for up to ~a minute, never late packets).
//!
//! Every `interval_ms` (500 ms) the largest relative delay of the interval goes into a histogram
//! of `bucket_ms` buckets. Taking the interval *maximum* rather than every packet makes the
//! 95th percentile mean "95 % of half-second stretches had no packet later than this", which is
//! what an audible glitch is about. Insertion multiplies all buckets by the forgetting factor
//! (0.983: a 30 s memory at two insertions per second) and adds the rest to the new bucket; the
//! first insertions weigh 2/(n+2) instead (as NetEq's start-up weight does) so the initial guess
//! is replaced by measurement within the first interval instead of decaying for a minute — except
//! stalls (an interval maximum more than `stall_ms`, the buffer's `max_expand_ms`, above the
//! target: the buffer re-buffers through those anyway), which always go in with the steady-state
//! weight: at start-up weight a single stall in the first ~20 s of a call would hold the target
//! at its height for ~5 s.
//!
//! **Bucket width 5 ms, not NetEq's 20 ms.** NetEq's target moves in 20 ms steps because its
//! buffer-level estimate moves in packets. Ours is a continuous playout offset (see
//! `JitterBuffer`) and time-stretching adjusts it in pitch periods of 2.5–20 ms, so a 5 ms
//! resolution is usable; on a LAN (sub-millisecond jitter) it makes the "+1 bucket" safety margin
//! 5 ms instead of 20 ms, which is most of the jitter buffer's delay there. The histogram has
//! only `max_target / 5 + 1` buckets, so scaling it twice a second costs nothing.
//!
//! **Peaks.** The histogram reacts to a sustained change within ~3 intervals (1.5 s: three
//! insertions of weight 1.7 % exceed the 5 % tail) but ignores a one-off spike, which is right: a
//! single stall says nothing about the next one, and holding 300 ms of extra delay for it would
//! cost more than the one glitch. *Recurring* spikes are different (Wi-Fi scans, a congested
//! uplink): like NetEq's peak detector, an interval maximum above the histogram target by more
//! than `peak_threshold_ms` is remembered as a peak, and while at least two peaks lie within
//! `peak_memory_ms` the target is at least the highest of them. When the spikes stop, the peaks
//! expire and the target falls back to the histogram's.

use std::collections::VecDeque;

/// Parameters, from [`super::JitterConfig`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct DelayParams {
    pub bucket_ms: f64,
    pub forget_factor: f64,
    pub quantile: f64,
    pub interval_ms: f64,
    pub window_ms: f64,
    pub initial_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub peak_threshold_ms: f64,
    pub peak_memory_ms: f64,
    /// An interval maximum this far above the target is a stall (see `push`), ms.
    pub stall_ms: f64,
}

/// Peaks remembered at most (only the recent ones matter).
const MAX_PEAKS: usize = 8;
/// Weight of one packet in the per-packet histogram once it has seen 1000 packets: a memory of
/// ~20 s of 20 ms frames (the interval histogram's is ~30 s).
const PACKET_WEIGHT: f64 = 1e-3;

#[derive(Debug)]
pub(crate) struct DelayManager {
    p: DelayParams,
    /// (arrival ms, transit ms), transit increasing from front to back: a monotonic queue whose
    /// front is the minimum transit over the window.
    window: VecDeque<(f64, f64)>,
    interval_start: Option<f64>,
    interval_max: Option<f64>,
    histogram: Vec<f64>,
    inserted: u64,
    histogram_target: f64,
    /// (time, height ms) of recent peaks.
    peaks: VecDeque<(f64, f64)>,
    /// Every packet's relative delay (same buckets, forgetting per packet): how late a typical
    /// packet is, which is what the FEC look-ahead needs — the packet after a lost one has to be
    /// here when the lost one is due, and one packet's lateness is usually far below the
    /// half-second maxima the jitter margin covers.
    packet_histogram: Vec<f64>,
    packets: u64,
}

impl DelayManager {
    pub fn new(p: DelayParams) -> Self {
        let bucket_ms = p.bucket_ms.max(0.1);
        let buckets = (p.max_ms.max(bucket_ms) / bucket_ms).ceil() as usize + 1;
        Self {
            p: DelayParams { bucket_ms, ..p },
            window: VecDeque::with_capacity(256),
            interval_start: None,
            interval_max: None,
            histogram: vec![0.0; buckets],
            packet_histogram: vec![0.0; buckets],
            packets: 0,
            inserted: 0,
            histogram_target: p.initial_ms,
            peaks: VecDeque::with_capacity(MAX_PEAKS),
        }
    }

    /// Records a packet that arrived at `now_ms` carrying media time `media_ms` (its RTP
    /// timestamp in ms). Returns its relative arrival delay.
    pub fn on_packet(&mut self, now_ms: f64, media_ms: f64) -> f64 {
        let transit = now_ms - media_ms;
        while self.window.back().is_some_and(|&(_, t)| t >= transit) {
            self.window.pop_back();
        }
        self.window.push_back((now_ms, transit));
        while self
            .window
            .front()
            .is_some_and(|&(at, _)| at < now_ms - self.p.window_ms)
        {
            self.window.pop_front();
        }
        let relative = transit - self.window.front().map_or(transit, |&(_, t)| t);
        let weight = (1.0 / (self.packets as f64 + 1.0)).max(PACKET_WEIGHT);
        add(
            &mut self.packet_histogram,
            relative / self.p.bucket_ms,
            weight,
        );
        self.packets += 1;
        match self.interval_start {
            None => self.interval_start = Some(now_ms),
            Some(start) if now_ms - start >= self.p.interval_ms => {
                if let Some(max) = self.interval_max.take() {
                    self.push(max, now_ms);
                }
                self.interval_start = Some(now_ms);
            }
            Some(_) => {}
        }
        self.interval_max = Some(self.interval_max.map_or(relative, |m| m.max(relative)));
        relative
    }

    /// Adds one interval maximum to the histogram (and to the peaks if it is one).
    fn push(&mut self, max_ms: f64, now_ms: f64) {
        let is_peak = max_ms > self.histogram_target + self.p.peak_threshold_ms;
        if is_peak {
            if self.peaks.len() == MAX_PEAKS {
                self.peaks.pop_front();
            }
            self.peaks.push_back((now_ms, max_ms));
        }
        // A stall — an interval maximum more than `stall_ms` above the target, which the buffer
        // re-buffers through anyway — goes in with the steady-state weight even during the
        // start-up: the start-up weight (25 % three seconds into a call) would make a single
        // stall the 95th percentile for the next ~5 s. Recurring stalls are the peak
        // detector's job; smaller peaks (bursts of jitter) are learned at start-up speed.
        let steady = 1.0 - self.p.forget_factor;
        let weight = if max_ms > self.histogram_target + self.p.stall_ms {
            steady
        } else {
            (2.0 / (self.inserted as f64 + 2.0)).max(steady)
        };
        add(&mut self.histogram, max_ms / self.p.bucket_ms, weight);
        self.inserted += 1;
        self.histogram_target = quantile_ms(&self.histogram, self.p.quantile, self.p.bucket_ms);
    }

    /// Changes the clamp of the target live (the histogram covers delays up to the `max_ms`
    /// it was built with, so a larger maximum is capped there).
    pub fn set_limits(&mut self, min_ms: f64, max_ms: f64) {
        let capacity = (self.histogram.len() - 1) as f64 * self.p.bucket_ms;
        self.p.max_ms = max_ms.min(capacity);
        self.p.min_ms = min_ms.min(self.p.max_ms);
    }

    /// The smallest transit (arrival − media time) of the window: where a packet that met no
    /// queue at all would arrive. `None` before the first packet.
    pub fn base(&self) -> Option<f64> {
        self.window.front().map(|&(_, t)| t)
    }

    /// The jitter margin: the histogram quantile, raised to recurring peaks, clamped.
    pub fn target_ms(&self, now_ms: f64) -> f64 {
        let (count, highest) = self
            .peaks
            .iter()
            .filter(|&&(at, _)| now_ms - at <= self.p.peak_memory_ms)
            .fold((0, 0.0f64), |(n, h), &(_, height)| (n + 1, h.max(height)));
        let peak = if count >= 2 {
            ((highest / self.p.bucket_ms).floor() + 1.0) * self.p.bucket_ms
        } else {
            0.0
        };
        self.histogram_target
            .max(peak)
            .clamp(self.p.min_ms, self.p.max_ms.max(self.p.min_ms))
    }

    /// The `quantile` of single packets' relative delays (upper edge of its bucket), ms; `None`
    /// before the first packet.
    pub fn packet_quantile_ms(&self, quantile: f64) -> Option<f64> {
        (self.packets > 0).then(|| quantile_ms(&self.packet_histogram, quantile, self.p.bucket_ms))
    }

    /// Interval maxima inserted so far: how much the histogram has seen (it is kept across
    /// stream restarts, like the histogram).
    pub fn intervals(&self) -> u64 {
        self.inserted
    }

    /// The histogram's own target (without peaks or clamping), for tests.
    #[cfg(test)]
    pub fn histogram_target(&self) -> f64 {
        self.histogram_target
    }

    /// Forgets the transit window (a new stream or a timestamp discontinuity); the histogram,
    /// being about the network rather than the stream, is kept.
    pub fn reset_window(&mut self) {
        self.window.clear();
        self.interval_start = None;
        self.interval_max = None;
    }
}

/// Forgets `weight` of the histogram and adds it to bucket `position` (clamped to the last).
fn add(histogram: &mut [f64], position: f64, weight: f64) {
    for b in histogram.iter_mut() {
        *b *= 1.0 - weight;
    }
    let last = histogram.len() - 1;
    histogram[(position as usize).min(last)] += weight;
}

/// The upper edge of the bucket holding the histogram's `quantile`, ms.
fn quantile_ms(histogram: &[f64], quantile: f64, bucket_ms: f64) -> f64 {
    let total: f64 = histogram.iter().sum();
    let mut acc = 0.0;
    let k = histogram
        .iter()
        .position(|b| {
            acc += b;
            acc >= quantile * total
        })
        .unwrap_or(histogram.len() - 1);
    (k + 1) as f64 * bucket_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> DelayParams {
        DelayParams {
            bucket_ms: 5.0,
            forget_factor: 0.983,
            quantile: 0.95,
            interval_ms: 500.0,
            window_ms: 2_000.0,
            initial_ms: 40.0,
            min_ms: 0.0,
            max_ms: 500.0,
            peak_threshold_ms: 20.0,
            peak_memory_ms: 10_000.0,
            stall_ms: 100.0,
        }
    }

    /// Feeds 20 ms packets for `secs` seconds starting at packet `from`, with extra delay
    /// `extra(i)` on top of a 30 ms path; returns the next packet index.
    fn feed(dm: &mut DelayManager, from: u32, secs: u32, mut extra: impl FnMut(u32) -> f64) -> u32 {
        let end = from + secs * 50;
        for i in from..end {
            let media = f64::from(i) * 20.0;
            dm.on_packet(media + 30.0 + extra(i), media);
        }
        end
    }

    #[test]
    fn relative_delay_is_against_the_fastest_packet_of_the_window() {
        let mut dm = DelayManager::new(params());
        assert_eq!(dm.base(), None);
        assert_eq!(dm.on_packet(130.0, 100.0), 0.0);
        // 20 ms of media later but 35 ms of time later: 15 ms late.
        assert_eq!(dm.on_packet(165.0, 120.0), 15.0);
        assert_eq!(dm.base(), Some(30.0));
        // 2 s later the fast packet has left the window and the base follows the slow path.
        assert_eq!(dm.on_packet(2_200.0, 2_150.0), 0.0);
        assert_eq!(dm.base(), Some(50.0));
    }

    #[test]
    fn initial_target_is_replaced_by_the_first_measurement() {
        let mut dm = DelayManager::new(params());
        assert_eq!(dm.target_ms(0.0), 40.0);
        feed(&mut dm, 0, 2, |_| 0.0);
        // Constant delay: every relative delay is 0, bucket 0, target one bucket.
        assert_eq!(dm.target_ms(2_000.0), 5.0);
    }

    #[test]
    fn target_is_the_95th_percentile_of_interval_maxima_and_forgets() {
        let mut dm = DelayManager::new(params());
        // A packet 42 ms late in every half second: every interval maximum lands in [40, 45).
        let mut i = feed(&mut dm, 0, 60, |i| if i % 25 == 3 { 42.0 } else { 0.0 });
        assert_eq!(dm.histogram_target(), 45.0);
        // Calm again: the jittery minute decays under the 5 % tail after ~ln(0.05)/ln(0.983)
        // insertions (~90 s), not at once.
        i = feed(&mut dm, i, 30, |_| 0.0);
        assert_eq!(dm.histogram_target(), 45.0, "30 s later: still remembered");
        feed(&mut dm, i, 90, |_| 0.0);
        assert_eq!(dm.histogram_target(), 5.0, "two minutes later: forgotten");
    }

    #[test]
    fn sustained_jitter_raises_the_target_within_two_seconds() {
        let mut dm = DelayManager::new(params());
        let i = feed(&mut dm, 0, 60, |_| 0.0);
        assert_eq!(dm.target_ms(1_200_000.0), 5.0);
        feed(&mut dm, i, 2, |k| if k % 5 == 0 { 30.0 } else { 0.0 });
        let now = f64::from(i + 100) * 20.0;
        assert!(dm.target_ms(now) >= 30.0, "{}", dm.target_ms(now));
    }

    #[test]
    fn one_spike_is_ignored_but_recurring_spikes_raise_the_target_until_they_stop() {
        let mut dm = DelayManager::new(params());
        let mut i = feed(&mut dm, 0, 60, |_| 0.0);
        // One 300 ms stall: one interval maximum of 300 ms.
        i = feed(&mut dm, i, 3, |k| if k == i + 10 { 300.0 } else { 0.0 });
        let now = f64::from(i) * 20.0;
        assert_eq!(
            dm.target_ms(now),
            5.0,
            "a single spike does not move the target"
        );
        // Stalls every 3 s: from the second one the target covers them.
        let start = i;
        i = feed(&mut dm, i, 9, |k| {
            if (k - start) % 150 == 10 { 200.0 } else { 0.0 }
        });
        let now = f64::from(i) * 20.0;
        assert_eq!(dm.target_ms(now), 205.0, "recurring spikes");
        // 12 s without spikes: back down.
        i = feed(&mut dm, i, 12, |_| 0.0);
        let now = f64::from(i) * 20.0;
        assert!(dm.target_ms(now) <= 10.0, "{}", dm.target_ms(now));
    }

    #[test]
    fn one_spike_in_the_start_up_is_ignored_too() {
        // 3 s into a call (six interval maxima, start-up weights 2/(n+2) still ~25 %), one
        // 300 ms stall: it is a peak, and a single peak is not a trend whenever it comes.
        let mut dm = DelayManager::new(params());
        let mut i = feed(&mut dm, 0, 3, |_| 0.0);
        assert_eq!(dm.target_ms(3_000.0), 5.0);
        let at = i + 10;
        i = feed(&mut dm, i, 2, |k| if k == at { 300.0 } else { 0.0 });
        assert_eq!(dm.intervals(), 9, "the stall's interval is in");
        let now = f64::from(i) * 20.0;
        assert_eq!(dm.target_ms(now), 5.0, "right after the stall");
        // A burst of jitter below a stall is still learned at start-up speed, even a single
        // one (a call that starts on a bursty path must not wait for the peak detector).
        let mut dm = DelayManager::new(params());
        let i = feed(&mut dm, 0, 3, |_| 0.0);
        let i = feed(&mut dm, i, 2, |k| {
            if (i + 5..i + 20).contains(&k) && k % 5 == 0 {
                40.0
            } else {
                0.0
            }
        });
        assert!(
            dm.target_ms(f64::from(i) * 20.0) >= 40.0,
            "{}",
            dm.target_ms(0.0)
        );
    }

    #[test]
    fn target_is_clamped() {
        let mut dm = DelayManager::new(DelayParams {
            min_ms: 20.0,
            max_ms: 100.0,
            ..params()
        });
        feed(&mut dm, 0, 2, |_| 0.0);
        assert_eq!(dm.target_ms(2_000.0), 20.0);
        feed(&mut dm, 100, 10, |k| if k % 2 == 0 { 400.0 } else { 0.0 });
        assert_eq!(dm.target_ms(12_000.0), 100.0);
    }
}
