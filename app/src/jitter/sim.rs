//! Simulated networks for the jitter buffer: deterministic, seeded, no I/O.
//!
//! This module is public (not test-only) because two things need the *same* network profiles:
//! the unit tests here, which drive the buffer with a fake codec, and benchmarks that run real
//! Opus through the buffer and score the result (PESQ). A benchmark needs:
//!
//! 1. a [`NetworkProfile`] (the presets in [`NetworkProfile::presets`] are the ones the tests
//!    exercise),
//! 2. [`arrivals`]: when each packet arrives on the receiver's clock (lost packets are absent,
//!    duplicated ones appear twice), sorted by arrival time, deterministic for a seed,
//! 3. [`run`]: feeds those arrivals to a [`JitterBuffer`] and pulls 10 ms blocks on the receiver's
//!    clock, handing each block to a callback (to collect audio or sample statistics).
//!
//! Model: the sender emits frame `i` when its capture ends, at `(i + 1) · frame_ms` of *sender*
//! time; a sender clock `skew_ppm` fast makes that `1 + skew_ppm·10⁻⁶` times shorter on the
//! receiver's clock (the RTP timestamps still advance by one frame per frame — that is the
//! drift the buffer has to absorb). Each packet then gets `base_delay_ms` plus a jitter term, may
//! be held back (reordering), lost (independently or in Gilbert–Elliott bursts) or duplicated.
//! Random numbers come from an inline SplitMix64, drawn in a fixed order per packet, so a seed
//! reproduces a schedule exactly on every platform.

use super::{Decode, JitterBuffer};
use natter_proto::spread::Spread;

/// SplitMix64: tiny, fast, good enough for simulation, and fully deterministic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Extra delay on top of the base delay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    None,
    /// Independent half-normal |N(0, σ²)| per packet (so packets may overtake each other).
    Gaussian {
        sigma_ms: f64,
    },
    /// `natter-netem`'s jitter (`tests/src/netem.rs`, without `reorder`): N(0, σ²) around the
    /// base delay (never below none at all), and a packet is never delivered before the one
    /// sent ahead of it — a late packet holds back the ones behind it, as in a queue. Its
    /// relative delays spread far wider than [`Jitter::Gaussian`]'s half-normal of the same σ
    /// (the fastest packet of a window is ~2.5 σ early): the simulator row that stands for the
    /// real call bench's `jitter=12` condition.
    GaussianInOrder {
        sigma_ms: f64,
    },
    /// Calm stretches (uniform 0–1 ms) alternating with bursts in which each packet gets a
    /// uniform 0–`max_ms`; stretch lengths are geometric with the given means.
    Bursty {
        max_ms: f64,
        mean_burst_ms: f64,
        mean_calm_ms: f64,
    },
    /// The path stalls for `stall_ms` at `first_ms` (sender time), then every `period_ms`
    /// (`count` stalls in all): packets sent during a stall are queued and all arrive when it
    /// ends — a Wi-Fi scan, a route change, a congested uplink draining.
    Spikes {
        first_ms: f64,
        stall_ms: f64,
        period_ms: f64,
        count: u32,
    },
}

/// Packet loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    None,
    /// Each packet independently.
    Random {
        p: f64,
    },
    /// Two-state Markov chain (per packet): good → bad with `p_bad`, bad → good with `p_good`,
    /// losing `loss_good` / `loss_bad` of the packets in each state. Mean burst length is
    /// `1 / p_good` packets; the long-run loss rate is about `p_bad / (p_bad + p_good)` ·
    /// `loss_bad` when `loss_good` is 0.
    GilbertElliott {
        p_bad: f64,
        p_good: f64,
        loss_good: f64,
        loss_bad: f64,
    },
}

/// A network path, as seen by one sender's packets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetworkProfile {
    /// Frame (packet) duration at the sender, ms.
    pub frame_ms: f64,
    pub base_delay_ms: f64,
    pub jitter: Jitter,
    pub loss: Loss,
    /// Probability that a packet is held back by `reorder_ms` (arriving after later ones).
    pub reorder_p: f64,
    pub reorder_ms: f64,
    /// Probability that a packet arrives twice (the copy 0–5 ms later).
    pub duplicate_p: f64,
    /// Sender clock rate error: positive = the sender's clock runs fast.
    pub skew_ppm: f64,
}

impl NetworkProfile {
    /// A clean path with a constant delay.
    pub fn constant(delay_ms: f64) -> Self {
        Self {
            frame_ms: 20.0,
            base_delay_ms: delay_ms,
            jitter: Jitter::None,
            loss: Loss::None,
            reorder_p: 0.0,
            reorder_ms: 0.0,
            duplicate_p: 0.0,
            skew_ppm: 0.0,
        }
    }

    /// 30 ms base plus half-normal jitter of `sigma_ms`.
    pub fn gaussian(sigma_ms: f64) -> Self {
        Self {
            jitter: Jitter::Gaussian { sigma_ms },
            ..Self::constant(30.0)
        }
    }

    /// 30 ms base, `natter-netem`'s Gaussian jitter of `sigma_ms` ([`Jitter::GaussianInOrder`]).
    pub fn gaussian_in_order(sigma_ms: f64) -> Self {
        Self {
            jitter: Jitter::GaussianInOrder { sigma_ms },
            ..Self::constant(30.0)
        }
    }

    /// 30 ms base; bursts (mean 1 s) of uniform 0–`max_ms` jitter every ~4 s.
    pub fn bursty(max_ms: f64) -> Self {
        Self {
            jitter: Jitter::Bursty {
                max_ms,
                mean_burst_ms: 1_000.0,
                mean_calm_ms: 3_000.0,
            },
            ..Self::constant(30.0)
        }
    }

    /// 30 ms base with one stall of `stall_ms` at `at_ms`.
    pub fn spike(at_ms: f64, stall_ms: f64) -> Self {
        Self {
            jitter: Jitter::Spikes {
                first_ms: at_ms,
                stall_ms,
                period_ms: 0.0,
                count: 1,
            },
            ..Self::constant(30.0)
        }
    }

    pub fn with_loss(self, loss: Loss) -> Self {
        Self { loss, ..self }
    }

    pub fn with_skew(self, skew_ppm: f64) -> Self {
        Self { skew_ppm, ..self }
    }

    pub fn with_reordering(self, p: f64, by_ms: f64) -> Self {
        Self {
            reorder_p: p,
            reorder_ms: by_ms,
            ..self
        }
    }

    pub fn with_duplicates(self, p: f64) -> Self {
        Self {
            duplicate_p: p,
            ..self
        }
    }

    /// The profiles the unit tests run, by name, for benchmarks to reuse.
    pub fn presets() -> Vec<(&'static str, NetworkProfile)> {
        let ge = Loss::GilbertElliott {
            p_bad: 0.02,
            p_good: 0.4,
            loss_good: 0.0,
            loss_bad: 1.0,
        };
        vec![
            ("constant", Self::constant(30.0)),
            ("gaussian-10ms", Self::gaussian(10.0)),
            ("bursty-40ms", Self::bursty(40.0)),
            ("spike-300ms", Self::spike(10_000.0, 300.0)),
            (
                "random-loss-5pct",
                Self::constant(30.0).with_loss(Loss::Random { p: 0.05 }),
            ),
            ("bursty-loss-5pct", Self::constant(30.0).with_loss(ge)),
            (
                "reorder-dup",
                Self::gaussian(2.0)
                    .with_reordering(0.05, 15.0)
                    .with_duplicates(0.03),
            ),
            ("skew+200ppm", Self::constant(30.0).with_skew(200.0)),
            ("skew-200ppm", Self::constant(30.0).with_skew(-200.0)),
        ]
    }

    /// When frame `frame` leaves the sender, on the receiver's clock (ms).
    pub fn send_ms(&self, frame: usize) -> f64 {
        (frame as f64 + 1.0) * self.frame_ms / (1.0 + self.skew_ppm * 1e-6)
    }
}

/// One packet arriving.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arrival {
    /// Frame index at the sender (0-based).
    pub frame: usize,
    /// Arrival time on the receiver's clock, ms.
    pub at_ms: f64,
}

/// The arrival schedule of `frames` packets over `profile`, sorted by arrival time (ties in
/// frame order). Deterministic for a given `seed`.
pub fn arrivals(profile: &NetworkProfile, frames: usize, seed: u64) -> Vec<Arrival> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::with_capacity(frames + frames / 16);
    let mut bad = false;
    let mut burst = false;
    // The last delivery so far, for paths that keep packets in order.
    let mut last_at = f64::NEG_INFINITY;
    for frame in 0..frames {
        let send = profile.send_ms(frame);
        let sender_time = (frame as f64 + 1.0) * profile.frame_ms;
        // Draw everything in a fixed order so profiles differ only where they differ.
        let (u_loss, u_state, u_jitter, z, u_reorder, u_dup, u_dup_delay) = (
            rng.uniform(),
            rng.uniform(),
            rng.uniform(),
            rng.normal(),
            rng.uniform(),
            rng.uniform(),
            rng.uniform(),
        );
        let lost = match profile.loss {
            Loss::None => false,
            Loss::Random { p } => u_loss < p,
            Loss::GilbertElliott {
                p_bad,
                p_good,
                loss_good,
                loss_bad,
            } => {
                bad = if bad {
                    u_state >= p_good
                } else {
                    u_state < p_bad
                };
                u_loss < if bad { loss_bad } else { loss_good }
            }
        };
        let extra = match profile.jitter {
            Jitter::None => 0.0,
            Jitter::Gaussian { sigma_ms } => (z * sigma_ms).abs(),
            Jitter::GaussianInOrder { sigma_ms } => (z * sigma_ms).max(-profile.base_delay_ms),
            Jitter::Bursty {
                max_ms,
                mean_burst_ms,
                mean_calm_ms,
            } => {
                // Switch state with the per-frame probability of a geometric length.
                let p = profile.frame_ms / if burst { mean_burst_ms } else { mean_calm_ms };
                if u_state < p {
                    burst = !burst;
                }
                if burst { u_jitter * max_ms } else { u_jitter }
            }
            Jitter::Spikes {
                first_ms,
                stall_ms,
                period_ms,
                count,
            } => {
                let since = sender_time - first_ms;
                let k = if period_ms > 0.0 {
                    (since / period_ms).floor()
                } else {
                    0.0
                };
                let into = since - k * period_ms;
                if since >= 0.0 && k < f64::from(count) && into < stall_ms {
                    (stall_ms - into) / (1.0 + profile.skew_ppm * 1e-6)
                } else {
                    0.0
                }
            }
        };
        if lost {
            continue;
        }
        let mut at = send + profile.base_delay_ms + extra;
        if matches!(profile.jitter, Jitter::GaussianInOrder { .. }) {
            at = at.max(last_at);
            last_at = at;
        }
        if u_reorder < profile.reorder_p {
            at += profile.reorder_ms;
        }
        out.push(Arrival { frame, at_ms: at });
        if u_dup < profile.duplicate_p {
            out.push(Arrival {
                frame,
                at_ms: at + 5.0 * u_dup_delay,
            });
        }
    }
    out.sort_by(|a, b| a.at_ms.total_cmp(&b.at_ms).then(a.frame.cmp(&b.frame)));
    out
}

/// What the control session's join train of pings would measure over `profile` if the path's
/// jitter were the listener's own, in both directions (as in the real call bench, whose proxy
/// impairs the listener's side): the spread ([`Spread`]) of
/// [`PING_TRAIN`](crate::transport::control::core::PING_TRAIN) round trips, each two
/// independent crossings of the path without loss (the control stream is reliable), one frame
/// apart like the train's pings. Deterministic for a seed.
pub fn ping_spread(profile: &NetworkProfile, seed: u64) -> Option<f64> {
    let path = NetworkProfile {
        loss: Loss::None,
        duplicate_p: 0.0,
        ..*profile
    };
    let n = usize::from(crate::transport::control::core::PING_TRAIN);
    let transits = |seed| {
        let mut t = vec![0.0; n];
        for a in arrivals(&path, n, seed) {
            t[a.frame] = a.at_ms - path.send_ms(a.frame);
        }
        t
    };
    let (down, up) = (transits(seed ^ 0x005E_EDD0), transits(seed ^ 0x005E_EDF0));
    let mut spread = Spread::default();
    for (d, u) in down.iter().zip(&up) {
        spread.push(d + u);
    }
    spread.spread_ms()
}

/// Drives `jb` through `arrivals`: before each 10 ms pull (at `first_pull_ms`, then every 10 ms
/// of receiver time until `end_ms`) every packet that has arrived is inserted, then one
/// 480-sample block is pulled and passed to `on_block(jb, block, now_ms)`. `packet(frame,
/// payload)` writes frame `frame`'s payload (cleared) and returns its RTP sequence number and
/// timestamp, so the caller chooses the codec and the numbering (e.g. starting near a wrap).
pub fn run<D: Decode>(
    jb: &mut JitterBuffer<D>,
    arrivals: &[Arrival],
    packet: impl FnMut(usize, &mut Vec<u8>) -> (u16, u32),
    first_pull_ms: f64,
    end_ms: f64,
    on_block: impl FnMut(&JitterBuffer<D>, &[f32], f64),
) {
    run_timed(
        jb,
        arrivals,
        packet,
        first_pull_ms,
        end_ms,
        PullTiming::PERFECT,
        0,
        on_block,
    );
}

/// When a live engine pulls, unlike the perfect 10 ms puller of [`run`]: the engine mixes a
/// whole device period at one instant, just before the device needs it; its thread wakes up a
/// little late every time (scheduling), and on a busy machine now and then much later — the
/// pulls it owes are then made at once. Packets are handed to the buffer only at wake-ups, with
/// their true arrival times (the transport stamps them). Simulators that pull perfectly flatter
/// the buffer (design guide §3); this puts the engine's timing noise back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PullTiming {
    /// Device period, ms: `period_ms / 10` blocks are pulled per wake-up.
    pub period_ms: f64,
    /// Every wake-up is late by a uniform 0–`wake_ms`, ms.
    pub wake_ms: f64,
    /// Per wake-up, the probability of a stall …
    pub stall_p: f64,
    /// … of a uniform 0–`stall_ms` on top, ms.
    pub stall_ms: f64,
}

impl PullTiming {
    /// One block every 10 ms, exactly on time (what [`run`] does).
    pub const PERFECT: PullTiming = PullTiming {
        period_ms: 10.0,
        wake_ms: 0.0,
        stall_p: 0.0,
        stall_ms: 0.0,
    };
}

/// [`run`] with the pulls of a live engine ([`PullTiming`]); `seed` draws the wake-up delays.
#[allow(clippy::too_many_arguments)]
pub fn run_timed<D: Decode>(
    jb: &mut JitterBuffer<D>,
    arrivals: &[Arrival],
    mut packet: impl FnMut(usize, &mut Vec<u8>) -> (u16, u32),
    first_pull_ms: f64,
    end_ms: f64,
    timing: PullTiming,
    seed: u64,
    mut on_block: impl FnMut(&JitterBuffer<D>, &[f32], f64),
) {
    let mut rng = Rng::new(seed ^ 0x5EED_0F90);
    let blocks = (timing.period_ms / 10.0).round().max(1.0) as u64;
    let mut block = [0.0f32; 480];
    let mut payload = Vec::with_capacity(1_500);
    let mut next = 0;
    let mut k = 0u64;
    let mut last = f64::NEG_INFINITY;
    loop {
        let due = first_pull_ms + (k * blocks) as f64 * 10.0;
        if due >= end_ms {
            break;
        }
        let mut late = timing.wake_ms * rng.uniform();
        if timing.stall_p > 0.0 && rng.chance(timing.stall_p) {
            late += timing.stall_ms * rng.uniform();
        }
        // A late wake-up never comes before the previous one.
        let now = (due + late).max(last);
        last = now;
        while let Some(a) = arrivals.get(next).filter(|a| a.at_ms <= now) {
            payload.clear();
            let (seq, ts) = packet(a.frame, &mut payload);
            jb.insert(seq, ts, &payload, a.at_ms);
            next += 1;
        }
        for _ in 0..blocks {
            jb.pull(&mut block, now);
            on_block(jb, &block, now);
        }
        k += 1;
    }
}

/// Each played frame's measured delay (arrival → its first sample handed out, ms), for
/// benchmarks that want the distribution (p95) rather than [`super::JitterStats::delay_ms`],
/// which averages it over ~1 s. Call [`FrameDelays::observe`] after every pull; it recovers the
/// delay of the frame marked in that pull exactly by inverting the average's update. If two
/// frames are marked in one pull (only after an acceleration shortened a frame below one
/// block), one sample results: the two delays weighted by their spacing. Read-only: does not
/// change what the buffer does.
#[derive(Debug, Clone, Default)]
pub struct FrameDelays {
    /// Time of the last frame mark and the average after it.
    last: Option<(f64, f64)>,
    /// When each frame's first sample was handed out (pull time + offset in the block), ms.
    pub played_ms: Vec<f64>,
    /// Its delay since its packet arrived, ms (so the arrival was `played − delay`).
    pub delays_ms: Vec<f64>,
}

impl FrameDelays {
    pub fn observe<D>(&mut self, jb: &JitterBuffer<D>) {
        let Some(avg) = jb.delay_avg else {
            return;
        };
        let at = jb.last_mark_ms;
        let d = match self.last {
            None => avg,
            Some((last_at, _)) if last_at == at => return,
            Some((last_at, last_avg)) => {
                let k = 1.0 - (-(at - last_at).max(0.0) / super::DELAY_TAU_MS).exp();
                if k <= 0.0 {
                    return;
                }
                last_avg + (avg - last_avg) / k
            }
        };
        self.played_ms.push(at);
        self.delays_ms.push(d);
        self.last = Some((at, avg));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jitter::{DecodeError, JitterConfig};

    #[test]
    fn schedules_are_deterministic_and_sorted() {
        let p = NetworkProfile::gaussian(10.0).with_loss(Loss::Random { p: 0.1 });
        let a = arrivals(&p, 1_000, 42);
        assert_eq!(a, arrivals(&p, 1_000, 42));
        assert_ne!(a, arrivals(&p, 1_000, 43));
        assert!(a.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        // ~10 % lost, some reordered by the jitter.
        assert!((860..=940).contains(&a.len()), "{}", a.len());
        assert!(a.windows(2).any(|w| w[0].frame > w[1].frame));
    }

    /// Relative delays (transit minus the fastest packet's): the 95th percentile.
    fn relative_p95(p: &NetworkProfile, a: &[Arrival]) -> f64 {
        let mut d: Vec<f64> = a.iter().map(|x| x.at_ms - p.send_ms(x.frame)).collect();
        d.sort_by(f64::total_cmp);
        d[d.len() * 95 / 100] - d[0]
    }

    /// `natter-netem`'s jitter keeps packets in order, and the same σ spreads relative delays
    /// over more than twice the half-normal's range: the simulator's `gauss-10ms` row is a
    /// much kinder path than the real bench's `jitter=12`.
    #[test]
    fn in_order_gaussian_jitter_is_netems() {
        let netem = NetworkProfile::gaussian_in_order(12.0);
        let a = arrivals(&netem, 20_000, 5);
        assert!(a.windows(2).all(|w| w[0].frame < w[1].frame), "reordered");
        let half_normal = NetworkProfile::gaussian(12.0);
        let (wide, narrow) = (
            relative_p95(&netem, &a),
            relative_p95(&half_normal, &arrivals(&half_normal, 20_000, 5)),
        );
        assert!((20.0..26.0).contains(&narrow), "half-normal p95 {narrow}");
        assert!(
            wide > 2.0 * narrow,
            "in order {wide} vs half-normal {narrow}"
        );
    }

    #[test]
    fn gilbert_elliott_losses_come_in_bursts() {
        let ge = Loss::GilbertElliott {
            p_bad: 0.02,
            p_good: 0.4,
            loss_good: 0.0,
            loss_bad: 1.0,
        };
        let a = arrivals(&NetworkProfile::constant(10.0).with_loss(ge), 50_000, 1);
        let mut got = vec![false; 50_000];
        a.iter().for_each(|x| got[x.frame] = true);
        let lost = got.iter().filter(|g| !**g).count();
        let bursts = got.windows(2).filter(|w| w[0] && !w[1]).count();
        let rate = lost as f64 / 50_000.0;
        let mean_burst = lost as f64 / bursts as f64;
        assert!((0.04..0.06).contains(&rate), "loss {rate}");
        assert!((2.0..3.0).contains(&mean_burst), "burst {mean_burst}");
    }

    #[test]
    fn skew_and_stalls() {
        let a = arrivals(&NetworkProfile::constant(0.0).with_skew(200.0), 50_001, 0);
        // 1000 s of sender time arrive 0.2 s early on the receiver's clock.
        let drift = 50_001.0 * 20.0 - a[50_000].at_ms;
        assert!((drift - 200.0).abs() < 0.1, "{drift}");
        let a = arrivals(&NetworkProfile::spike(1_000.0, 300.0), 100, 0);
        // Frames sent 1000..1300 ms all arrive at 1300 + 30, with the one sent at 1300.
        let stalled: Vec<_> = a.iter().filter(|x| x.at_ms == 1_330.0).collect();
        assert_eq!(stalled.len(), 16);
        assert_eq!(a.iter().find(|x| x.frame == 70).unwrap().at_ms, 1_450.0);
    }

    /// A 200 Hz tone, continuous across frames; concealment is silence.
    struct Tone(usize);

    impl Decode for Tone {
        fn decode(&mut self, _: &[u8], out: &mut Vec<f32>) -> Result<(), DecodeError> {
            self.tone(960, out);
            Ok(())
        }
        fn decode_fec(
            &mut self,
            _: &[u8],
            samples: usize,
            out: &mut Vec<f32>,
        ) -> Result<(), DecodeError> {
            self.tone(samples, out);
            Ok(())
        }
        fn conceal(&mut self, samples: usize, out: &mut Vec<f32>) {
            out.extend(std::iter::repeat_n(0.0, samples));
            self.0 += samples;
        }
    }

    impl Tone {
        fn tone(&mut self, samples: usize, out: &mut Vec<f32>) {
            let w = std::f32::consts::TAU * 200.0 / 48_000.0;
            out.extend((self.0..self.0 + samples).map(|i| 0.3 * (w * i as f32).sin()));
            self.0 += samples;
        }
    }

    #[test]
    fn engine_timing_bunches_pulls_late_and_in_order() {
        let timing = PullTiming {
            period_ms: 20.0,
            wake_ms: 2.0,
            stall_p: 0.01,
            stall_ms: 40.0,
        };
        let a = arrivals(&NetworkProfile::constant(5.0), 500, 0);
        let mut jb = JitterBuffer::new(JitterConfig::default(), Tone(0));
        let mut nows = Vec::new();
        run_timed(
            &mut jb,
            &a,
            |f, _| (f as u16, f as u32 * 960),
            0.3,
            10_000.0,
            timing,
            3,
            |_, _, now| nows.push(now),
        );
        // Two blocks per 20 ms period, at the same instant, never earlier than due.
        assert_eq!(nows.len(), 1_000);
        for (k, pair) in nows.chunks(2).enumerate() {
            assert_eq!(pair[0], pair[1]);
            assert!(pair[0] >= 0.3 + 20.0 * k as f64, "{k}: {pair:?}");
        }
        assert!(nows.windows(2).all(|w| w[0] <= w[1]));
        // Some stalls happened (up to 40 ms late), most wake-ups are within 2 ms.
        let lateness: Vec<f64> = nows
            .chunks(2)
            .enumerate()
            .map(|(k, p)| p[0] - 0.3 - 20.0 * k as f64)
            .collect();
        assert!(lateness.iter().any(|&l| l > 5.0));
        assert!(lateness.iter().filter(|&&l| l <= 2.0).count() > 450);
        // The buffer copes: everything played, nothing concealed on this clean path.
        assert_eq!(jb.stats().concealed, 0, "{:?}", jb.stats());
    }

    #[test]
    fn frame_delays_are_recovered_from_the_average() {
        // A constant path: once the offset has settled every frame waits exactly as long, and
        // the ~1 s average converges to that same value.
        let profile = NetworkProfile::constant(30.0);
        let a = arrivals(&profile, 500, 0);
        let mut jb = JitterBuffer::new(JitterConfig::default(), Tone(0));
        let mut fd = FrameDelays::default();
        run(
            &mut jb,
            &a,
            |f, _| (f as u16, f as u32 * 960),
            0.3,
            10_100.0,
            |jb, _, _| fd.observe(jb),
        );
        let d = &fd.delays_ms;
        assert!(d.len() >= 495, "{} frames", d.len());
        let tail = &d[d.len() - 200..];
        assert!(
            tail.iter().all(|x| (x - tail[0]).abs() < 1e-6),
            "{:?}",
            &tail[..5]
        );
        let avg = jb.stats().delay_ms;
        assert!((avg - tail[0]).abs() < 0.05, "{avg} vs {}", tail[0]);
        assert!(d.iter().all(|x| (0.0..100.0).contains(x)), "{d:?}");
    }
}
