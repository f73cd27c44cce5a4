//! The sync buffer: decoded audio not yet played, where time-stretching happens.
//!
//! Samples are appended as frames are decoded (or concealed) and read out in blocks by `pull`.
//! Accelerate and expand operate on the unplayed head in place. The buffer also carries a *mark*
//! for the first sample of each decoded frame with that packet's arrival time, moved along when
//! stretching removes or inserts audio before it; when a mark is read out the jitter buffer knows
//! exactly how long that frame waited, which is what `JitterStats::delay_ms` reports.
//!
//! Storage is one vector with a read index, compacted by `copy_within` (a memmove) once the
//! played part is large, so reading and appending never allocate once capacity is reached.

use super::stretch::ramp;
use std::collections::VecDeque;

/// Compact once this many played samples sit in front of the read index.
const COMPACT_AT: usize = 8_192;
/// Frame marks kept at most (a frame is at least 2.5 ms; the buffer rarely holds 100 ms).
const MAX_MARKS: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Mark {
    /// Absolute stream position of the frame's first sample.
    at: u64,
    arrival_ms: f64,
    /// The frame's (extended) RTP timestamp.
    ts: u64,
}

#[derive(Debug)]
pub(crate) struct SyncBuffer {
    buf: Vec<f32>,
    read: usize,
    /// Absolute stream position of `buf[0]`.
    origin: u64,
    marks: VecDeque<Mark>,
}

impl SyncBuffer {
    pub fn with_capacity(samples: usize) -> Self {
        Self {
            buf: Vec::with_capacity(samples),
            read: 0,
            origin: 0,
            marks: VecDeque::with_capacity(MAX_MARKS),
        }
    }

    /// Decoded samples not yet played.
    pub fn unplayed(&self) -> usize {
        self.buf.len() - self.read
    }

    pub fn future(&self) -> &[f32] {
        &self.buf[self.read..]
    }

    pub fn append(&mut self, samples: &[f32]) {
        self.compact();
        self.buf.extend_from_slice(samples);
    }

    pub fn append_silence(&mut self, n: usize) {
        self.compact();
        self.buf.resize(self.buf.len() + n, 0.0);
    }

    /// Fades out the last `n` unplayed samples (audio about to be followed by silence that
    /// nothing crossfades into).
    pub fn fade_out_tail(&mut self, n: usize) {
        let n = n.min(self.unplayed());
        let len = self.buf.len();
        super::stretch::fade(&mut self.buf[len - n..], false);
    }

    /// The next appended sample starts a frame (RTP timestamp `ts`) that arrived at
    /// `arrival_ms`.
    pub fn mark_frame(&mut self, arrival_ms: f64, ts: u64) {
        if self.marks.len() == MAX_MARKS {
            self.marks.pop_front();
        }
        self.marks.push_back(Mark {
            at: self.origin + self.buf.len() as u64,
            arrival_ms,
            ts,
        });
    }

    /// Accelerate: crossfades the first `fade` unplayed samples into the ones `lag` later and
    /// drops the `lag` samples in between — `lag` samples shorter, continuous at both ends
    /// (x[0] fades into x[lag], and the output continues with x[lag + fade]).
    pub fn accelerate(&mut self, lag: usize, fade: usize) {
        let x = &mut self.buf[self.read..];
        assert!(x.len() >= lag + fade, "accelerate beyond the buffer");
        for i in 0..fade {
            let w = ramp(i, fade);
            x[i] = x[i] * (1.0 - w) + x[lag + i] * w;
        }
        self.remove(fade, lag);
    }

    /// Pre-emptive expand: plays x[..lag], then crossfades x[lag..lag + fade] into x[..fade] and
    /// continues with x[fade..] — `lag` samples longer (one pitch period repeated when `lag` is
    /// the period). Needs `lag >= fade`.
    pub fn expand(&mut self, lag: usize, fade: usize) {
        assert!(lag >= fade && self.unplayed() >= lag + fade, "bad expand");
        self.insert_gap(fade, lag);
        // Now x[..lag + fade] still holds the original x[..lag + fade] and x[lag + fade..] the
        // original x[fade..].
        let x = &mut self.buf[self.read..];
        for i in 0..fade {
            let w = ramp(i, fade);
            x[lag + i] = x[lag + i] * (1.0 - w) + x[i] * w;
        }
    }

    /// Removes `len` unplayed samples starting `at` samples after the read position.
    fn remove(&mut self, at: usize, len: usize) {
        let s = self.read + at;
        self.buf.copy_within(s + len.., s);
        self.buf.truncate(self.buf.len() - len);
        let cut = self.origin + s as u64;
        for m in &mut self.marks {
            if m.at >= cut + len as u64 {
                m.at -= len as u64;
            } else if m.at > cut {
                m.at = cut;
            }
        }
    }

    /// Opens `len` samples at `at` after the read position (the gap keeps stale values that the
    /// caller overwrites or uses).
    fn insert_gap(&mut self, at: usize, len: usize) {
        let s = self.read + at;
        let old = self.buf.len();
        self.buf.resize(old + len, 0.0);
        self.buf.copy_within(s..old, s + len);
        let cut = self.origin + s as u64;
        for m in &mut self.marks {
            if m.at >= cut {
                m.at += len as u64;
            }
        }
    }

    /// Copies up to `out.len()` samples out; `on_mark(offset, arrival_ms, ts)` is called for
    /// each frame whose first sample is among them. Returns how many were copied.
    pub fn read(&mut self, out: &mut [f32], mut on_mark: impl FnMut(usize, f64, u64)) -> usize {
        let k = out.len().min(self.unplayed());
        out[..k].copy_from_slice(&self.buf[self.read..self.read + k]);
        let start = self.origin + self.read as u64;
        let end = start + k as u64;
        while let Some(m) = self.marks.front().copied() {
            if m.at >= end {
                break;
            }
            self.marks.pop_front();
            if m.at >= start {
                on_mark((m.at - start) as usize, m.arrival_ms, m.ts);
            }
        }
        self.read += k;
        k
    }

    fn compact(&mut self) {
        if self.read == 0 {
            return;
        }
        if self.read == self.buf.len() {
            self.origin += self.read as u64;
            self.buf.clear();
            self.read = 0;
        } else if self.read >= COMPACT_AT {
            self.buf.copy_within(self.read.., 0);
            self.buf.truncate(self.buf.len() - self.read);
            self.origin += self.read as u64;
            self.read = 0;
        }
    }

    /// (pointer, capacity) of the sample storage, for the steady-state allocation test.
    #[cfg(test)]
    pub fn footprint(&self) -> (usize, usize) {
        (self.buf.as_ptr() as usize, self.buf.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp_signal(n: usize) -> Vec<f32> {
        (0..n).map(|i| i as f32).collect()
    }

    #[test]
    fn accelerate_removes_lag_samples_and_moves_marks() {
        let mut s = SyncBuffer::with_capacity(64);
        s.append(&ramp_signal(10));
        s.mark_frame(1.0, 7);
        s.append(&ramp_signal(10));
        s.accelerate(4, 2);
        assert_eq!(s.unplayed(), 16);
        // x[0], x[1] fade into x[4], x[5]; then x[6..].
        let f = s.future();
        assert!((f[0] - 4.0 / 3.0).abs() < 1e-6 && (f[1] - 11.0 / 3.0).abs() < 1e-6);
        assert_eq!(f[2..6], [6.0, 7.0, 8.0, 9.0]);
        let mut out = [0.0; 16];
        let mut marks = Vec::new();
        s.read(&mut out, |o, a, _| marks.push((o, a)));
        // The frame that started at 10 now starts at 6.
        assert_eq!(marks, [(6, 1.0)]);
    }

    #[test]
    fn expand_inserts_lag_samples() {
        let mut s = SyncBuffer::with_capacity(64);
        // A signal with period 4.
        let x: Vec<f32> = (0..12).map(|i| (i % 4) as f32).collect();
        s.append(&x);
        s.mark_frame(2.0, 7);
        s.append(&[9.0]);
        s.expand(4, 4);
        assert_eq!(s.unplayed(), 17);
        let mut out = [0.0; 17];
        let mut marks = Vec::new();
        s.read(&mut out, |o, a, _| marks.push((o, a)));
        // Periodic in, periodic out: one extra period.
        let expect: Vec<f32> = (0..16).map(|i| (i % 4) as f32).collect();
        for (a, b) in out[..16].iter().zip(&expect) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
        assert_eq!(marks, [(16, 2.0)]);
    }

    #[test]
    fn reads_across_appends_and_compaction() {
        let mut s = SyncBuffer::with_capacity(32_768);
        let mut next = 0.0f32;
        let mut expect = 0.0f32;
        let mut out = [0.0f32; 480];
        for _ in 0..200 {
            let chunk: Vec<f32> = (0..500)
                .map(|_| {
                    next += 1.0;
                    next
                })
                .collect();
            s.append(&chunk);
            let k = s.read(&mut out, |_, _, _| {});
            for v in &out[..k] {
                expect += 1.0;
                assert_eq!(*v, expect);
            }
        }
        assert_eq!(s.unplayed(), 200 * 20);
        assert!(s.footprint().1 >= 8_192);
    }
}
