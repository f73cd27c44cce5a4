//! A seeded network impairment model (sans-IO) and the UDP proxy shell around it.
//!
//! The kernel here has no `sch_netem`, so delay, jitter, loss and reordering are applied in
//! user space: [`Impairment`] decides, per packet and from the time passed in, whether the
//! packet is lost and when it is delivered; [`run_proxy`] moves real datagrams between one
//! client and one upstream address on loopback and holds each until its delivery time.
//! The same seed and the same arrival times give the same decisions, so a bad run can be
//! replayed, and the model is tested without sockets or clocks.
//!
//! Everything is bounded: delays are clamped to [`MAX_DELAY`], and the proxy drops (and
//! counts) packets once [`MAX_QUEUED`] are waiting.

use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;

/// Longest a packet is ever held, whatever the jitter draws.
pub const MAX_DELAY: Duration = Duration::from_secs(2);
/// Packets waiting in the proxy (both directions) before new ones are dropped.
pub const MAX_QUEUED: usize = 4096;

/// How packets are lost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    None,
    /// Each packet independently with this probability.
    Random(f64),
    /// Gilbert-Elliott: a good state that loses nothing and a bad state that loses every
    /// packet; `rate` is the long-run loss fraction and `mean_burst` the mean run length.
    Bursty {
        rate: f64,
        mean_burst: f64,
    },
}

/// How each packet's extra delay is drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    None,
    /// Normal with this standard deviation (ms), truncated at zero extra delay below the base.
    Gaussian {
        sd_ms: f64,
    },
    /// Mostly calm (Gaussian `sd_ms`), with spikes: with probability `spike_prob` per packet a
    /// delay spike of up to `spike_ms` starts and decays linearly over the next `spike_len`
    /// packets (a queue building and draining).
    Bursty {
        sd_ms: f64,
        spike_prob: f64,
        spike_ms: f64,
        spike_len: u32,
    },
}

/// One direction's impairment settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// Fixed one-way delay added to every packet.
    pub delay_ms: f64,
    pub jitter: Jitter,
    pub loss: Loss,
    /// Let jitter reorder packets (each packet's delay is independent). Without it a packet
    /// never overtakes the one before it (it waits for it, as behind a FIFO queue).
    pub reorder: bool,
    /// Lose this direction's first this-many packets, whatever the loss model says: a lost
    /// Initial or a lost first flight, scripted.
    pub drop_first: u32,
    /// Lose the first this-many datagrams that hold a QUIC Handshake packet (long header, type
    /// 2), alone or behind an Initial: from a client, the first one carries its TLS Finished.
    pub drop_handshake: u32,
    /// Lose every datagram holding a Handshake packet for this many milliseconds from this
    /// direction's first datagram: a handshake the relay can only give up (its idle timeout),
    /// however often the client sends its Finished again.
    pub drop_handshake_ms: u32,
}

impl Profile {
    pub const CLEAN: Profile = Profile {
        delay_ms: 0.0,
        jitter: Jitter::None,
        loss: Loss::None,
        reorder: false,
        drop_first: 0,
        drop_handshake: 0,
        drop_handshake_ms: 0,
    };
}

/// Small deterministic PRNG (SplitMix64): reproducible without a crate, good enough for
/// drawing losses and delays.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// What happened to the packets of one direction so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub packets: u64,
    pub lost: u64,
    /// Delivered before a packet that arrived earlier.
    pub reordered: u64,
}

/// The impairment of one direction: packet arrival times in, delivery times (or loss) out.
#[derive(Debug, Clone)]
pub struct Impairment {
    profile: Profile,
    rng: Rng,
    bad_state: bool,
    /// Remaining packets of the current delay spike and its height at the start.
    spike_left: u32,
    spike_height_ms: f64,
    last_delivery: Duration,
    counters: Counters,
    /// Handshake packets lost so far by [`Profile::drop_handshake`].
    handshakes_dropped: u32,
    /// When this direction's first datagram arrived ([`Profile::drop_handshake_ms`]).
    first_at: Option<Duration>,
}

impl Impairment {
    pub fn new(profile: Profile, seed: u64) -> Self {
        Self {
            profile,
            rng: Rng(seed),
            bad_state: false,
            spike_left: 0,
            spike_height_ms: 0.0,
            last_delivery: Duration::ZERO,
            counters: Counters::default(),
            handshakes_dropped: 0,
            first_at: None,
        }
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// A datagram arrived at `now`: the scripted drops ([`Profile::drop_first`],
    /// [`Profile::drop_handshake`], [`Profile::drop_handshake_ms`]) first, then
    /// [`Self::on_packet`].
    pub fn on_datagram(&mut self, now: Duration, datagram: &[u8]) -> Option<Duration> {
        let handshake = carries_handshake_packet(datagram);
        let since_first = now.saturating_sub(*self.first_at.get_or_insert(now));
        let for_a_while =
            handshake && since_first < Duration::from_millis(self.profile.drop_handshake_ms.into());
        let scripted = if self.counters.packets < u64::from(self.profile.drop_first) || for_a_while
        {
            true
        } else if handshake && self.handshakes_dropped < self.profile.drop_handshake {
            self.handshakes_dropped += 1;
            true
        } else {
            false
        };
        if scripted {
            self.counters.packets += 1;
            self.counters.lost += 1;
            return None;
        }
        self.on_packet(now)
    }

    /// A packet arrived at `now`: `None` if it is lost, else when to deliver it.
    pub fn on_packet(&mut self, now: Duration) -> Option<Duration> {
        self.counters.packets += 1;
        if self.lose() {
            self.counters.lost += 1;
            return None;
        }
        let extra_ms = self.profile.delay_ms + self.jitter_ms();
        let delay = Duration::from_secs_f64((extra_ms / 1000.0).max(0.0)).min(MAX_DELAY);
        let mut at = now + delay;
        if at < self.last_delivery {
            if self.profile.reorder {
                self.counters.reordered += 1;
            } else {
                at = self.last_delivery;
            }
        }
        self.last_delivery = self.last_delivery.max(at);
        Some(at)
    }

    fn lose(&mut self) -> bool {
        match self.profile.loss {
            Loss::None => false,
            Loss::Random(p) => self.rng.uniform() < p,
            Loss::Bursty { rate, mean_burst } => {
                // Leave the bad state after a geometric run of mean `mean_burst`; enter it so
                // that the stationary share of bad packets is `rate`.
                let p_leave = 1.0 / mean_burst.max(1.0);
                let rate = rate.clamp(0.0, 0.99);
                let p_enter = rate * p_leave / (1.0 - rate);
                let u = self.rng.uniform();
                self.bad_state = if self.bad_state {
                    u >= p_leave
                } else {
                    u < p_enter
                };
                self.bad_state
            }
        }
    }

    fn jitter_ms(&mut self) -> f64 {
        match self.profile.jitter {
            Jitter::None => 0.0,
            Jitter::Gaussian { sd_ms } => (sd_ms * self.rng.normal()).max(-self.profile.delay_ms),
            Jitter::Bursty {
                sd_ms,
                spike_prob,
                spike_ms,
                spike_len,
            } => {
                let base = (sd_ms * self.rng.normal()).max(-self.profile.delay_ms);
                if self.spike_left == 0 && self.rng.uniform() < spike_prob {
                    self.spike_left = spike_len.max(1);
                    self.spike_height_ms = spike_ms * (0.5 + 0.5 * self.rng.uniform());
                }
                let spike = if self.spike_left > 0 {
                    let share = self.spike_left as f64 / spike_len.max(1) as f64;
                    self.spike_left -= 1;
                    self.spike_height_ms * share
                } else {
                    0.0
                };
                base + spike
            }
        }
    }
}

/// A packet held by the proxy until `at`.
#[derive(Debug, PartialEq, Eq)]
struct Held {
    at: Duration,
    /// Arrival order, so equal times keep their order.
    seq: u64,
    to_upstream: bool,
    data: Vec<u8>,
}

impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // BinaryHeap is a max-heap: the earliest delivery must compare greatest.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Final counts of a proxy run.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProxyReport {
    pub to_upstream: Counters,
    pub to_client: Counters,
    /// Dropped because [`MAX_QUEUED`] packets were already waiting.
    pub overflow: u64,
}

/// Forwards datagrams between the client that sends to `socket` and `upstream`, each direction
/// through its own [`Impairment`], until `stop` resolves. The client is whoever sent last: a
/// client that reconnects from a new socket (a new QUIC endpoint) is followed, and upstream
/// sees it at the same address, as behind a NAT. With `rebind_at`, the socket facing
/// upstream is replaced by one on a new port at that time, as a NAT does when its mapping
/// expires: upstream sees the client come from another address, and what it still sends to
/// the old one is lost.
pub async fn run_proxy(
    socket: tokio::net::UdpSocket,
    upstream: SocketAddr,
    up: Impairment,
    down: Impairment,
    rebind_at: Option<Duration>,
    stop: impl std::future::Future<Output = ()>,
) -> std::io::Result<ProxyReport> {
    // A second socket faces upstream, so upstream sees one peer address for the client.
    let mut up_sock = upstream_socket(upstream).await?;
    let mut rebind_at = rebind_at;
    let start = tokio::time::Instant::now();
    let mut up = up;
    let mut down = down;
    let mut client: Option<SocketAddr> = None;
    let mut held = BinaryHeap::<Held>::new();
    let mut seq = 0u64;
    let mut overflow = 0u64;
    let mut buf_a = vec![0u8; 65_536];
    let mut buf_b = vec![0u8; 65_536];
    tokio::pin!(stop);
    loop {
        let next = held.peek().map(|h| start + h.at);
        let got = tokio::select! {
            _ = &mut stop => break,
            r = socket.recv_from(&mut buf_a) => {
                let (n, from) = r?;
                client = Some(from);
                Some((true, n))
            }
            r = up_sock.recv(&mut buf_b) => {
                let n = r?;
                if client.is_none() {
                    continue;
                }
                Some((false, n))
            }
            _ = async { tokio::time::sleep_until(next.unwrap_or(start)).await }, if next.is_some() => None,
            _ = async { tokio::time::sleep_until(start + rebind_at.unwrap_or_default()).await }, if rebind_at.is_some() => {
                rebind_at = None;
                up_sock = upstream_socket(upstream).await?;
                None
            }
        };
        if let Some((to_upstream, n)) = got {
            let (imp, data) = if to_upstream {
                (&mut up, &buf_a[..n])
            } else {
                (&mut down, &buf_b[..n])
            };
            if let Some(at) = imp.on_datagram(start.elapsed(), data) {
                if held.len() >= MAX_QUEUED {
                    overflow += 1;
                } else {
                    seq += 1;
                    held.push(Held {
                        at,
                        seq,
                        to_upstream,
                        data: data.to_vec(),
                    });
                }
            }
        }
        let now = start.elapsed();
        while held.peek().is_some_and(|h| h.at <= now) {
            let h = held.pop().expect("peeked");
            // A send error (e.g. the peer's port closed) loses that packet, as a network would.
            let _ = if h.to_upstream {
                up_sock.send(&h.data).await
            } else {
                socket.send_to(&h.data, client.expect("client known")).await
            };
        }
    }
    Ok(ProxyReport {
        to_upstream: up.counters(),
        to_client: down.counters(),
        overflow,
    })
}

/// A socket on a fresh loopback port, connected to `upstream`.
async fn upstream_socket(upstream: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let sock = tokio::net::UdpSocket::bind(match upstream {
        SocketAddr::V4(_) => "127.0.0.1:0",
        SocketAddr::V6(_) => "[::1]:0",
    })
    .await?;
    sock.connect(upstream).await?;
    Ok(sock)
}

/// Whether a QUIC v1 datagram holds a Handshake packet: walks the long-header packets coalesced
/// in it (RFC 9000 §12.2, §17.2). Only the long-header bit and the type bits count: quinn greases
/// the fixed bit (RFC 9287) when the peer allows it, so a Handshake packet's first byte is
/// `0b1x10_xxxx`, and a client's TLS Finished may also travel behind an Initial ACK.
fn carries_handshake_packet(mut datagram: &[u8]) -> bool {
    use natter_proto::varint;
    // Long header (0b1), fixed bit (either); types 0 Initial, 1 0-RTT, 2 Handshake, 3 Retry.
    while let Some(&first) = datagram.first() {
        if first & 0x80 == 0 {
            return false; // a short-header packet runs to the end of the datagram
        }
        let kind = (first >> 4) & 0x3;
        if kind == 2 {
            return true;
        }
        if kind == 3 {
            return false;
        }
        // Byte 0, the version, then the two connection IDs with their lengths.
        let mut at = 5;
        for _ in 0..2 {
            let Some(&len) = datagram.get(at) else {
                return false;
            };
            at += 1 + usize::from(len);
        }
        let varint_at = |at: &mut usize| -> Option<usize> {
            let (value, len) = varint::decode(datagram.get(*at..)?).ok()?;
            *at += len;
            usize::try_from(value).ok()
        };
        if kind == 0 {
            let Some(token) = varint_at(&mut at) else {
                return false;
            };
            at = at.saturating_add(token);
        }
        let Some(length) = varint_at(&mut at) else {
            return false;
        };
        let Some(rest) = at.checked_add(length).and_then(|end| datagram.get(end..)) else {
            return false;
        };
        datagram = rest;
    }
    false
}

/// Parses a profile from `key=value` pairs separated by commas, e.g.
/// `delay=40,jitter=12,loss=5` or `delay=40,burst-jitter=10,ge-loss=8,burst=3,reorder`.
/// Keys: `delay` (ms), `jitter` (Gaussian sd, ms), `burst-jitter` (sd ms, with 5 % of packets
/// starting a spike of up to `spike` ms, default 60, over `spike-len` packets, default 10),
/// `loss` (random, %), `ge-loss` (Gilbert-Elliott, %) with `burst` (mean run, default 3),
/// `reorder` (let jitter reorder packets), `drop-first` (lose the first N packets),
/// `drop-handshake` (lose the first N that hold a QUIC Handshake packet, alone or coalesced),
/// `drop-handshake-for` (lose every one of those for the first N ms of this direction).
pub fn parse_profile(s: &str) -> Result<Profile, String> {
    let mut p = Profile::CLEAN;
    let (mut sd, mut burst_jitter, mut spike, mut spike_len) = (0.0, false, 60.0, 10u32);
    let (mut random, mut ge, mut burst) = (None, None, 3.0);
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        let num = || -> Result<f64, String> {
            let v: f64 = value
                .parse()
                .map_err(|_| format!("{key}: not a number: {value:?}"))?;
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(format!("{key}: must be ≥ 0: {value:?}"))
            }
        };
        match key {
            "delay" => p.delay_ms = num()?.min(MAX_DELAY.as_millis() as f64),
            "jitter" => sd = num()?,
            "burst-jitter" => {
                sd = num()?;
                burst_jitter = true;
            }
            "spike" => spike = num()?,
            "spike-len" => spike_len = num()?.clamp(1.0, 1000.0) as u32,
            "loss" => random = Some(num()?.min(100.0) / 100.0),
            "ge-loss" => ge = Some(num()?.min(99.0) / 100.0),
            "burst" => burst = num()?.max(1.0),
            "reorder" => p.reorder = true,
            "drop-first" => p.drop_first = num()?.min(f64::from(u32::MAX)) as u32,
            "drop-handshake" => p.drop_handshake = num()?.min(f64::from(u32::MAX)) as u32,
            "drop-handshake-for" => {
                p.drop_handshake_ms = num()?.min(f64::from(u32::MAX)) as u32;
            }
            _ => return Err(format!("unknown key {key:?}")),
        }
    }
    p.jitter = match (burst_jitter, sd > 0.0) {
        (true, _) => Jitter::Bursty {
            sd_ms: sd,
            spike_prob: 0.05,
            spike_ms: spike,
            spike_len,
        },
        (false, true) => Jitter::Gaussian { sd_ms: sd },
        (false, false) => Jitter::None,
    };
    p.loss = match (random, ge) {
        (Some(_), Some(_)) => return Err("use either loss or ge-loss".into()),
        (Some(r), None) => Loss::Random(r),
        (None, Some(rate)) => Loss::Bursty {
            rate,
            mean_burst: burst,
        },
        (None, None) => Loss::None,
    };
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_millis(20);

    /// Runs `n` packets 20 ms apart; returns each one's delivery (None = lost).
    fn run(p: Profile, seed: u64, n: u32) -> (Vec<Option<Duration>>, Counters) {
        let mut imp = Impairment::new(p, seed);
        let out = (0..n).map(|i| imp.on_packet(PERIOD * i)).collect();
        (out, imp.counters())
    }

    #[test]
    fn clean_profile_delivers_everything_at_once() {
        let (out, c) = run(Profile::CLEAN, 1, 100);
        assert!(
            out.iter()
                .enumerate()
                .all(|(i, d)| *d == Some(PERIOD * i as u32))
        );
        assert_eq!(c.lost, 0);
    }

    #[test]
    fn same_seed_same_decisions_other_seed_others() {
        let p = parse_profile("delay=40,jitter=12,loss=5,reorder").unwrap();
        assert_eq!(run(p, 7, 2000).0, run(p, 7, 2000).0);
        assert_ne!(run(p, 7, 2000).0, run(p, 8, 2000).0);
    }

    #[test]
    fn random_loss_rate_and_gaussian_delay_statistics() {
        let p = parse_profile("delay=40,jitter=12,loss=5").unwrap();
        let (out, c) = run(p, 3, 50_000);
        let rate = c.lost as f64 / c.packets as f64;
        assert!((0.045..0.055).contains(&rate), "loss {rate}");
        // FIFO: never out of order, and the delay averages at least the base delay.
        let got: Vec<Duration> = out.iter().flatten().copied().collect();
        assert!(got.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(c.reordered, 0);
        let delays: Vec<f64> = out
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.map(|d| (d - PERIOD * i as u32).as_secs_f64() * 1e3))
            .collect();
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        assert!((40.0..50.0).contains(&mean), "mean delay {mean}");
    }

    #[test]
    fn reorder_lets_jitter_overtake_and_counts_it() {
        let p = parse_profile("delay=40,jitter=12,reorder").unwrap();
        let (out, c) = run(p, 5, 10_000);
        let got: Vec<Duration> = out.iter().flatten().copied().collect();
        let inversions = got.windows(2).filter(|w| w[1] < w[0]).count();
        assert!(inversions > 100, "{inversions}");
        assert!(c.reordered > 100);
        // Standard deviation of the delay is the configured one (give or take).
        let d: Vec<f64> = out
            .iter()
            .enumerate()
            .map(|(i, d)| (d.unwrap() - PERIOD * i as u32).as_secs_f64() * 1e3)
            .collect();
        let mean = d.iter().sum::<f64>() / d.len() as f64;
        let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
        assert!((11.0..13.0).contains(&sd), "sd {sd}");
    }

    #[test]
    fn gilbert_elliott_loss_comes_in_runs_of_the_mean_length() {
        let p = parse_profile("ge-loss=8,burst=3").unwrap();
        let (out, c) = run(p, 11, 100_000);
        let rate = c.lost as f64 / c.packets as f64;
        assert!((0.07..0.09).contains(&rate), "loss {rate}");
        let mut runs = vec![];
        let mut cur = 0;
        for d in &out {
            if d.is_none() {
                cur += 1;
            } else if cur > 0 {
                runs.push(cur);
                cur = 0;
            }
        }
        let mean = runs.iter().sum::<u32>() as f64 / runs.len() as f64;
        assert!((2.7..3.3).contains(&mean), "mean burst {mean}");
    }

    #[test]
    fn bursty_jitter_has_spikes_and_delays_stay_bounded() {
        let p = parse_profile("delay=2000,burst-jitter=5,spike=80").unwrap();
        let (out, _) = run(p, 2, 5_000);
        let d: Vec<f64> = out
            .iter()
            .enumerate()
            .map(|(i, d)| (d.unwrap() - PERIOD * i as u32).as_secs_f64() * 1e3)
            .collect();
        assert!(d.iter().all(|&x| x <= MAX_DELAY.as_secs_f64() * 1e3 + 20.0));
        let p = parse_profile("delay=40,burst-jitter=3,spike=80").unwrap();
        let (out, _) = run(p, 2, 5_000);
        let spikes = out
            .iter()
            .enumerate()
            .filter(|(i, d)| (d.unwrap() - PERIOD * *i as u32) > Duration::from_millis(80))
            .count();
        assert!(spikes > 50, "{spikes}");
    }

    #[test]
    fn bad_profiles_are_refused_with_the_reason() {
        assert!(parse_profile("delay=-1").unwrap_err().contains("≥ 0"));
        assert!(parse_profile("loss=5,ge-loss=5").is_err());
        assert!(parse_profile("warp=9").unwrap_err().contains("warp"));
        assert!(parse_profile("jitter=x").unwrap_err().contains("number"));
    }

    #[test]
    fn scripted_drops_lose_the_first_packets_and_the_first_handshake_packets() {
        let p = parse_profile("drop-first=2,drop-handshake=1").unwrap();
        let mut imp = Impairment::new(p, 1);
        let initial = [0xc3u8, 0, 0, 0, 1];
        let handshake = [0xe3u8, 0, 0, 0, 1];
        let short = [0x43u8, 1, 2];
        let got: Vec<bool> = [
            &initial[..],
            &initial,
            &short,
            &handshake,
            &handshake,
            &short,
        ]
        .iter()
        .enumerate()
        .map(|(i, d)| imp.on_datagram(PERIOD * i as u32, d).is_some())
        .collect();
        assert_eq!(got, [false, false, true, false, true, true]);
        assert_eq!((imp.counters().packets, imp.counters().lost), (6, 3));
        // A Handshake packet among the first ones counts as one of those, not of the others.
        let mut imp = Impairment::new(parse_profile("drop-first=1,drop-handshake=1").unwrap(), 1);
        assert!(imp.on_datagram(Duration::ZERO, &handshake).is_none());
        assert!(imp.on_datagram(PERIOD, &handshake).is_none());
        assert!(imp.on_datagram(PERIOD * 2, &handshake).is_some());
    }

    #[test]
    fn a_handshake_packet_behind_an_initial_counts_and_a_truncated_chain_does_not() {
        // Initial: version 1, an 8-byte DCID, no SCID, a 2-byte token, 3 bytes of packet.
        let mut initial = vec![0xc0u8, 0, 0, 0, 1, 8];
        initial.extend([0xaa; 8]);
        initial.extend([0, 2, 0x11, 0x22, 3, 1, 2, 3]);
        let mut handshake = vec![0xe0u8, 0, 0, 0, 1, 8];
        handshake.extend([0xaa; 8]);
        handshake.extend([0, 0x40, 2, 9, 9]); // a two-byte varint length
        let short = [0x43u8, 0xe0, 0xe0];
        let mut greased = handshake.clone();
        greased[0] = 0xa0; // the fixed bit cleared (RFC 9287)
        let coalesced = [initial.clone(), handshake.clone()].concat();
        assert!(carries_handshake_packet(&handshake));
        assert!(carries_handshake_packet(&coalesced));
        assert!(carries_handshake_packet(&greased));
        assert!(carries_handshake_packet(
            &[initial.clone(), greased].concat()
        ));
        assert!(!carries_handshake_packet(&initial));
        assert!(!carries_handshake_packet(
            &[initial.clone(), short.to_vec()].concat()
        ));
        assert!(!carries_handshake_packet(&short));
        assert!(!carries_handshake_packet(&[]));
        for cut in 0..initial.len() {
            assert!(!carries_handshake_packet(&initial[..cut]), "cut at {cut}");
        }
        let mut imp = Impairment::new(parse_profile("drop-handshake=1").unwrap(), 1);
        assert!(imp.on_datagram(Duration::ZERO, &initial).is_some());
        assert!(imp.on_datagram(PERIOD, &coalesced).is_none());
        assert!(imp.on_datagram(PERIOD * 2, &coalesced).is_some());
        // For a while: every one from the direction's first datagram on, none after.
        let mut imp = Impairment::new(parse_profile("drop-handshake-for=100").unwrap(), 1);
        let at = |ms: u64| Duration::from_millis(1000 + ms);
        assert!(imp.on_datagram(at(0), &initial).is_some());
        assert!(imp.on_datagram(at(50), &coalesced).is_none());
        assert!(imp.on_datagram(at(99), &handshake).is_none());
        assert!(imp.on_datagram(at(99), &initial).is_some());
        assert!(imp.on_datagram(at(100), &handshake).is_some());
        assert_eq!((imp.counters().packets, imp.counters().lost), (5, 2));
    }

    #[test]
    fn proxy_forwards_both_ways_with_the_delay_rebinds_and_follows_a_new_client() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let upstream = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let proxy_sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let proxy_addr = proxy_sock.local_addr().unwrap();
            let p = parse_profile("delay=30").unwrap();
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let proxy = tokio::spawn(run_proxy(
                proxy_sock,
                upstream.local_addr().unwrap(),
                Impairment::new(p, 1),
                Impairment::new(p, 2),
                Some(Duration::from_millis(200)),
                async {
                    let _ = rx.await;
                },
            ));
            let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let t0 = tokio::time::Instant::now();
            client.send_to(b"ping", proxy_addr).await.unwrap();
            let mut buf = [0u8; 16];
            let (n, from) = upstream.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"ping");
            assert!(t0.elapsed() >= Duration::from_millis(30));
            upstream.send_to(b"pong", from).await.unwrap();
            let (n, _) = client.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"pong");
            assert!(t0.elapsed() >= Duration::from_millis(60));
            // After the rebinding, upstream sees the client on another port, and answers to
            // it still reach the client.
            tokio::time::sleep_until(t0 + Duration::from_millis(250)).await;
            client.send_to(b"moved", proxy_addr).await.unwrap();
            let (n, moved_from) = upstream.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"moved");
            assert_ne!(moved_from, from);
            upstream.send_to(b"ok", moved_from).await.unwrap();
            let (n, _) = client.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"ok");
            // A client that reconnects from a new socket is followed; upstream sees it at the
            // same address.
            let again = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            again.send_to(b"again", proxy_addr).await.unwrap();
            let (n, again_from) = upstream.recv_from(&mut buf).await.unwrap();
            assert_eq!((&buf[..n], again_from), (&b"again"[..], moved_from));
            upstream.send_to(b"welcome", again_from).await.unwrap();
            let (n, _) = again.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"welcome");
            tx.send(()).unwrap();
            let report = proxy.await.unwrap().unwrap();
            assert_eq!(report.to_upstream.packets, 3);
            assert_eq!(report.to_client.packets, 3);
        });
    }
}
