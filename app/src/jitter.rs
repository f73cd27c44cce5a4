//! Adaptive jitter buffer: a sans-IO state machine, one per remote sender.
//!
//! Packets go in with their arrival time; audio comes out in whatever block size the playback
//! side asks for. The buffer measures how late packets arrive relative to the fastest packet of
//! the last two seconds (corrected by RTP timestamp, as WebRTC NetEq does) and keeps a safety
//! margin of that delay's 95th percentile plus a little, no more: when the buffered audio has
//! stayed above the target for a whole window, the excess is dropped so delay never builds up
//! over a long call. Missing packets are recovered from the next packet's in-band FEC when it is
//! already here, otherwise concealed (Opus PLC); after too many concealed frames in a row the
//! buffer goes silent and re-buffers.
//!
//! Time is passed in (milliseconds as `f64`), never read, so tests run simulated networks
//! deterministically. Decoding is behind [`Decode`] so tests can use a fake codec.

use std::collections::{BTreeMap, VecDeque};

/// The codec operations the buffer needs.
pub trait Decode {
    /// Decodes one packet, appending its samples to `out`.
    fn decode(&mut self, payload: &[u8], out: &mut Vec<f32>) -> Result<(), DecodeError>;
    /// Recovers the frame before `next_payload` from its in-band FEC, appending `samples`.
    fn decode_fec(
        &mut self,
        next_payload: &[u8],
        samples: usize,
        out: &mut Vec<f32>,
    ) -> Result<(), DecodeError>;
    /// Conceals `samples` of missing audio (packet loss concealment), appending them.
    fn conceal(&mut self, samples: usize, out: &mut Vec<f32>);
}

/// A packet the codec could not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeError;

/// Tuning.
#[derive(Debug, Clone)]
pub struct JitterConfig {
    /// Floor of the target margin in ms.
    pub min_margin_ms: f64,
    /// Ceiling of the target margin in ms.
    pub max_margin_ms: f64,
    /// Added to the measured delay percentile.
    pub safety_ms: f64,
    /// Window over which arrival delays are measured, and over which the buffer level must stay
    /// above target before excess is dropped.
    pub window_ms: f64,
    /// Consecutive concealed frames before going silent and re-buffering.
    pub max_concealed_run: u32,
    /// Samples per ms (48 at 48 kHz).
    pub samples_per_ms: f64,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            min_margin_ms: 0.0,
            max_margin_ms: 500.0,
            safety_ms: 3.0,
            window_ms: 2_000.0,
            max_concealed_run: 5,
            samples_per_ms: 48.0,
        }
    }
}

/// Counters and current delay, for stats and the latency meter.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct JitterStats {
    pub received: u64,
    /// Arrived after their playout time had passed (already concealed).
    pub late: u64,
    pub duplicates: u64,
    /// Frames concealed by PLC (lost or late).
    pub concealed: u64,
    /// Frames recovered from the next packet's FEC.
    pub fec_recovered: u64,
    /// Times the buffer ran dry and re-buffered.
    pub rebuffers: u64,
    /// Samples dropped to bring delay back down to target.
    pub dropped_samples: u64,
    /// Audio currently buffered (decoded + undecoded), ms, averaged over recent pulls.
    pub delay_ms: f64,
    /// The margin the buffer aims to keep, ms.
    pub target_ms: f64,
}

#[derive(Debug)]
struct Pending {
    payload: Vec<u8>,
}

/// The jitter buffer for one sender.
#[derive(Debug)]
pub struct JitterBuffer<D> {
    config: JitterConfig,
    decoder: D,
    frames: BTreeMap<u64, Pending>,
    decoded: VecDeque<f32>,
    scratch: Vec<f32>,
    next_seq: Option<u64>,
    highest_seq: Option<u64>,
    highest_ts: Option<u64>,
    playing: bool,
    frame_samples: usize,
    concealed_run: u32,
    /// Frames concealed while waiting for a packet that had not arrived; if that packet turns
    /// out lost, its slot was already filled and is skipped without a second concealment.
    waiting_conceals: u32,
    /// (arrival ms, transit ms = arrival − media time) over the measurement window.
    transits: VecDeque<(f64, f64)>,
    target_ms: f64,
    window_start_ms: f64,
    window_min_level: usize,
    delay_avg_ms: f64,
    stats: JitterStats,
}

/// Unwraps a 16-bit sequence number against the highest extended one seen.
fn unwrap_seq(seq: u16, highest: Option<u64>) -> u64 {
    match highest {
        None => u64::from(seq) + (1 << 16),
        Some(h) => {
            let diff = i64::from(seq.wrapping_sub(h as u16) as i16);
            (h as i64 + diff).max(0) as u64
        }
    }
}

fn unwrap_ts(ts: u32, highest: Option<u64>) -> u64 {
    match highest {
        None => u64::from(ts) + (1 << 32),
        Some(h) => {
            let diff = i64::from(ts.wrapping_sub(h as u32) as i32);
            (h as i64 + diff).max(0) as u64
        }
    }
}

impl<D: Decode> JitterBuffer<D> {
    pub fn new(config: JitterConfig, decoder: D) -> Self {
        let target_ms = config.min_margin_ms.max(config.safety_ms);
        Self {
            config,
            decoder,
            frames: BTreeMap::new(),
            decoded: VecDeque::with_capacity(48_000),
            scratch: Vec::with_capacity(5_760),
            next_seq: None,
            highest_seq: None,
            highest_ts: None,
            playing: false,
            frame_samples: 960,
            concealed_run: 0,
            waiting_conceals: 0,
            transits: VecDeque::new(),
            target_ms,
            window_start_ms: 0.0,
            window_min_level: usize::MAX,
            delay_avg_ms: 0.0,
            stats: JitterStats::default(),
        }
    }

    pub fn stats(&self) -> JitterStats {
        JitterStats {
            delay_ms: self.delay_avg_ms,
            target_ms: self.target_ms,
            ..self.stats
        }
    }

    /// A packet arrived at `now_ms` with RTP sequence number `seq` and timestamp `ts` (48 kHz).
    pub fn insert(&mut self, seq: u16, ts: u32, payload: &[u8], now_ms: f64) {
        let ext = unwrap_seq(seq, self.highest_seq);
        let ts_ext = unwrap_ts(ts, self.highest_ts);
        if self.next_seq.is_some_and(|next| ext < next) {
            self.stats.late += 1;
            return;
        }
        if self.frames.contains_key(&ext) {
            self.stats.duplicates += 1;
            return;
        }
        if self.highest_seq.is_none_or(|h| ext > h) {
            self.highest_seq = Some(ext);
            self.highest_ts = Some(ts_ext);
        }
        self.stats.received += 1;
        self.frames.insert(
            ext,
            Pending {
                payload: payload.to_vec(),
            },
        );
        self.observe_transit(now_ms, now_ms - ts_ext as f64 / self.config.samples_per_ms);
    }

    fn observe_transit(&mut self, now_ms: f64, transit: f64) {
        self.transits.push_back((now_ms, transit));
        while self
            .transits
            .front()
            .is_some_and(|(t, _)| now_ms - t > self.config.window_ms)
        {
            self.transits.pop_front();
        }
        let fastest = self
            .transits
            .iter()
            .map(|(_, tr)| *tr)
            .fold(f64::INFINITY, f64::min);
        let mut relative: Vec<f64> = self.transits.iter().map(|(_, tr)| tr - fastest).collect();
        relative.sort_by(f64::total_cmp);
        let p95 = relative[((relative.len() - 1) as f64 * 0.95).round() as usize];
        self.target_ms = (p95 + self.config.safety_ms)
            .clamp(self.config.min_margin_ms, self.config.max_margin_ms);
    }

    /// Samples available without concealment: decoded audio plus the contiguous run of
    /// undecoded frames starting at the next sequence number.
    fn level(&self) -> usize {
        let mut level = self.decoded.len();
        if let Some(mut seq) = self.next_seq {
            while self.frames.contains_key(&seq) {
                level += self.frame_samples;
                seq += 1;
            }
        } else {
            level += self.frames.len() * self.frame_samples;
        }
        level
    }

    /// Decodes the next frame into `decoded`, recovering or concealing a gap. False when there
    /// is nothing at all to play.
    fn decode_next(&mut self) -> bool {
        let Some(seq) = self.next_seq else {
            return false;
        };
        self.scratch.clear();
        if let Some(p) = self.frames.remove(&seq) {
            if self.decoder.decode(&p.payload, &mut self.scratch).is_ok()
                && !self.scratch.is_empty()
            {
                self.frame_samples = self.scratch.len();
            } else {
                self.scratch.clear();
                self.decoder.conceal(self.frame_samples, &mut self.scratch);
                self.stats.concealed += 1;
            }
            self.concealed_run = 0;
            self.waiting_conceals = 0;
        } else if self.frames.range(seq..).next().is_some() {
            if self.waiting_conceals > 0 {
                // Lost, and its slot was already concealed while we waited for it.
                self.waiting_conceals -= 1;
                self.next_seq = Some(seq + 1);
                return true;
            }
            let recovered = match self.frames.get(&(seq + 1)) {
                Some(next) => self
                    .decoder
                    .decode_fec(&next.payload, self.frame_samples, &mut self.scratch)
                    .is_ok(),
                None => false,
            };
            if recovered {
                self.stats.fec_recovered += 1;
            } else {
                self.scratch.clear();
                self.decoder.conceal(self.frame_samples, &mut self.scratch);
                self.stats.concealed += 1;
            }
        } else {
            return false;
        }
        self.next_seq = Some(seq + 1);
        self.decoded.extend(self.scratch.iter().copied());
        true
    }

    /// Fills `out` with the next block of audio at `now_ms`.
    pub fn pull(&mut self, out: &mut [f32], now_ms: f64) {
        let n = out.len();
        let margin = (self.target_ms * self.config.samples_per_ms) as usize;
        if !self.playing {
            // Start once a block plus the margin is here, from the oldest frame we hold.
            let buffered = self.decoded.len() + self.frames.len() * self.frame_samples;
            if self.frames.is_empty() || buffered < n + margin {
                out.fill(0.0);
                return;
            }
            self.playing = true;
            self.next_seq = self.frames.keys().next().copied();
            self.window_start_ms = now_ms;
            self.window_min_level = usize::MAX;
        }
        let level = self.level();
        self.delay_avg_ms += 0.05 * (level as f64 / self.config.samples_per_ms - self.delay_avg_ms);
        while self.decoded.len() < n {
            if !self.decode_next() {
                break;
            }
        }
        if self.decoded.len() < n {
            // The next packet is not here. Conceal without giving up on it: if it is merely
            // late, playout resumes with it and the buffer is one frame deeper — this is how
            // the delay grows when the network gets worse. After a long run, go silent.
            if self.concealed_run < self.config.max_concealed_run {
                self.concealed_run += 1;
                self.waiting_conceals += 1;
                self.stats.concealed += 1;
                self.scratch.clear();
                self.decoder.conceal(self.frame_samples, &mut self.scratch);
                self.decoded.extend(self.scratch.iter().copied());
            } else {
                self.stats.rebuffers += 1;
                self.playing = false;
                self.next_seq = None;
                self.concealed_run = 0;
                self.waiting_conceals = 0;
                self.decoded.clear();
                out.fill(0.0);
                return;
            }
        }
        for (o, s) in out
            .iter_mut()
            .zip(self.decoded.drain(..n.min(self.decoded.len())))
        {
            *o = s;
        }
        self.track_excess(now_ms, margin);
    }

    /// Removes `k` samples from the front of the decoded audio, cross-fading across the cut
    /// so it does not click.
    fn drop_decoded(&mut self, k: usize) {
        let fade = 96.min(self.decoded.len().saturating_sub(k));
        for i in 0..fade {
            let w = (i as f32 + 0.5) / fade as f32;
            self.decoded[k + i] = self.decoded[i] * (1.0 - w) + self.decoded[k + i] * w;
        }
        self.decoded.drain(..k);
        self.stats.dropped_samples += k as u64;
    }

    /// Drops audio that has sat above the target margin for a whole window.
    fn track_excess(&mut self, now_ms: f64, margin: usize) {
        self.window_min_level = self.window_min_level.min(self.level());
        if now_ms - self.window_start_ms < self.config.window_ms / 2.0 {
            return;
        }
        let hysteresis = (5.0 * self.config.samples_per_ms) as usize;
        if self.window_min_level != usize::MAX && self.window_min_level > margin + hysteresis {
            let mut excess = self.window_min_level - margin;
            // Whole frames first (cheap, undecoded), then decoded samples.
            while excess >= self.frame_samples && self.decoded.is_empty() {
                let Some(seq) = self.next_seq else { break };
                if self.frames.remove(&seq).is_none() {
                    break;
                }
                self.next_seq = Some(seq + 1);
                excess -= self.frame_samples;
                self.stats.dropped_samples += self.frame_samples as u64;
            }
            if excess > self.decoded.len() {
                self.decode_next();
            }
            self.drop_decoded(excess.min(self.decoded.len()));
        }
        self.window_start_ms = now_ms;
        self.window_min_level = usize::MAX;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake codec: payload = [frame index as u16 BE]; decodes to 960 samples of value
    /// (index + 1), PLC gives -1.0, FEC gives -2.0.
    struct Fake;

    impl Decode for Fake {
        fn decode(&mut self, payload: &[u8], out: &mut Vec<f32>) -> Result<(), DecodeError> {
            let v = u16::from_be_bytes([payload[0], payload[1]]);
            out.extend(std::iter::repeat_n(f32::from(v) + 1.0, 960));
            Ok(())
        }
        fn decode_fec(
            &mut self,
            _: &[u8],
            samples: usize,
            out: &mut Vec<f32>,
        ) -> Result<(), DecodeError> {
            out.extend(std::iter::repeat_n(-2.0, samples));
            Ok(())
        }
        fn conceal(&mut self, samples: usize, out: &mut Vec<f32>) {
            out.extend(std::iter::repeat_n(-1.0, samples));
        }
    }

    /// Deterministic xorshift for simulated networks.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// Simulates `frames` 20 ms packets with per-packet network delay from `delay(i)` (None =
    /// lost), played out in 10 ms blocks. Returns the played samples and the buffer.
    fn simulate(
        frames: u16,
        delay: impl FnMut(u16) -> Option<f64>,
    ) -> (Vec<f32>, JitterBuffer<Fake>) {
        simulate_with(JitterConfig::default(), frames, delay)
    }

    fn simulate_with(
        config: JitterConfig,
        frames: u16,
        mut delay: impl FnMut(u16) -> Option<f64>,
    ) -> (Vec<f32>, JitterBuffer<Fake>) {
        let mut jb = JitterBuffer::new(config, Fake);
        let mut arrivals: Vec<(f64, u16)> = (0..frames)
            .filter_map(|i| delay(i).map(|d| (f64::from(i) * 20.0 + d, i)))
            .collect();
        arrivals.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut played = Vec::new();
        let mut block = [0.0f32; 480];
        let mut next = 0;
        // Stop right after the last arrival has been played, before the buffer runs dry.
        let end = arrivals.last().map_or(0.0, |a| a.0) + 20.0;
        let mut t = 0.3; // playback clock phase
        while t < end {
            while next < arrivals.len() && arrivals[next].0 <= t {
                let i = arrivals[next].1;
                // Sequence numbers start near the wrap to exercise it.
                jb.insert(
                    i.wrapping_add(65_500),
                    u32::from(i) * 960,
                    &i.to_be_bytes(),
                    arrivals[next].0,
                );
                next += 1;
            }
            jb.pull(&mut block, t);
            played.extend_from_slice(&block);
            t += 10.0;
        }
        (played, jb)
    }

    /// Values of the frames in play order (one entry per 960-sample run).
    fn frame_values(played: &[f32]) -> Vec<f32> {
        let start = played
            .iter()
            .position(|s| *s != 0.0)
            .unwrap_or(played.len());
        played[start..].chunks(960).map(|c| c[0]).collect()
    }

    #[test]
    fn steady_network_plays_every_frame_in_order_with_small_delay() {
        let (played, jb) = simulate(200, |_| Some(5.0));
        let values = frame_values(&played);
        for (i, v) in values.iter().take(200).enumerate() {
            assert_eq!(*v, i as f32 + 1.0);
        }
        let s = jb.stats();
        assert_eq!((s.concealed, s.late, s.rebuffers), (0, 0, 0));
        assert!(s.target_ms <= 4.0, "target {}", s.target_ms);
        assert!(s.delay_ms < 25.0, "delay {}", s.delay_ms);
    }

    #[test]
    fn lost_packet_is_recovered_by_fec_and_trailing_loss_concealed() {
        // FEC needs one frame of look-ahead: with a 25 ms margin frame 11 is already here
        // when frame 10 is due.
        let config = JitterConfig {
            min_margin_ms: 25.0,
            ..JitterConfig::default()
        };
        let (played, jb) = simulate_with(config, 50, |i| (i != 10).then_some(5.0));
        let values = frame_values(&played);
        assert_eq!(values[10], -2.0, "frame 10 from the FEC of frame 11");
        assert_eq!(values[11], 12.0);
        assert_eq!((jb.stats().fec_recovered, jb.stats().concealed), (1, 0));
        // With the minimal margin the next packet is not here yet: concealed instead.
        let (played, jb) = simulate(50, |i| (i != 10).then_some(5.0));
        assert_eq!(frame_values(&played)[10], -1.0);
        assert_eq!((jb.stats().fec_recovered, jb.stats().concealed), (0, 1));
    }

    #[test]
    fn reordered_and_duplicated_packets() {
        let mut jb = JitterBuffer::new(JitterConfig::default(), Fake);
        for (i, seq) in [0u16, 2, 1, 1, 3].iter().enumerate() {
            jb.insert(*seq, u32::from(*seq) * 960, &seq.to_be_bytes(), i as f64);
        }
        assert_eq!(jb.stats().duplicates, 1);
        let mut values = Vec::new();
        let mut out = vec![0.0; 960];
        for _ in 0..4 {
            jb.pull(&mut out, 10.0);
            values.push(out[0]);
        }
        assert_eq!(values, [1.0, 2.0, 3.0, 4.0]);
        jb.insert(0, 0, &[0, 0], 11.0);
        assert_eq!(jb.stats().late, 1);
    }

    #[test]
    fn adapts_to_jitter_then_comes_back_down() {
        let mut rng = Rng(7);
        // 20 s of up to 60 ms of jitter, then 40 s of a calm network.
        let (_, jb) = simulate(3_000, |i| {
            Some(if i < 1_000 {
                5.0 + 60.0 * rng.next()
            } else {
                5.0
            })
        });
        let s = jb.stats();
        assert!(s.target_ms < 5.0, "target back down: {}", s.target_ms);
        assert!(s.delay_ms < 25.0, "delay back down: {}", s.delay_ms);

        let mut rng = Rng(9);
        let (_, jitter_only) = simulate(1_000, |_| Some(5.0 + 60.0 * rng.next()));
        let j = jitter_only.stats();
        assert!(
            j.target_ms > 40.0,
            "target rises with jitter: {}",
            j.target_ms
        );
        // Late-loss stays small once the target has adapted.
        assert!(j.concealed < 60, "concealed {} of 1000", j.concealed);
    }

    #[test]
    fn long_outage_rebuffers_instead_of_building_delay() {
        // 2 s outage: the buffer conceals briefly, goes silent, then resumes near target.
        let (_, jb) = simulate(600, |i| (!(100..200).contains(&i)).then_some(5.0));
        let s = jb.stats();
        assert_eq!(s.rebuffers, 1);
        assert!(s.delay_ms < 25.0, "delay {}", s.delay_ms);
    }

    #[test]
    fn sequence_unwrap() {
        assert_eq!(unwrap_seq(2, Some(65_535 + 65_536)), 65_536 * 2 + 2);
        assert_eq!(unwrap_seq(65_535, Some(65_536 * 2 + 2)), 65_535 + 65_536);
        assert_eq!(
            unwrap_ts(5, Some(u64::from(u32::MAX) + (1 << 32))),
            (2 << 32) + 5
        );
    }
}
