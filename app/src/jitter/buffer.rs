//! Undecoded packets ordered by RTP timestamp, and RTP sequence/timestamp unwrapping.
//!
//! Frames are placed on the playout timeline by their *timestamp*: a sender may change its frame
//! size mid-stream (10/20/40/60 ms) and a DTX pause or a mute advances the timestamp while the
//! sequence numbers stay consecutive, so only the timestamp says where a frame belongs. Sequence
//! numbers still matter: they tell a lost packet (a sequence gap) from a pause (a timestamp gap
//! with consecutive sequence numbers), and a replayed packet from a late one.
//!
//! Storage is a pool of slots whose payload vectors are reused, so a call in steady state does not
//! allocate per packet.

use std::collections::VecDeque;

/// Extends a 16-bit RTP sequence number to 64 bits against the highest extended value seen,
/// taking the nearest candidate (RFC 3550 A.1 style). The first value is offset by 2¹⁶ so that
/// packets reordered before it stay non-negative.
pub(crate) fn unwrap_seq(seq: u16, highest: Option<u64>) -> u64 {
    match highest {
        None => u64::from(seq) + (1 << 16),
        Some(h) => {
            let diff = i64::from(seq.wrapping_sub(h as u16) as i16);
            (h as i64 + diff).max(0) as u64
        }
    }
}

/// Extends a 32-bit RTP timestamp the same way (wraps every ~24.9 h at 48 kHz; any jump under
/// ~12 h either way is taken as the nearest).
pub(crate) fn unwrap_ts(ts: u32, highest: Option<u64>) -> u64 {
    match highest {
        None => u64::from(ts) + (1 << 32),
        Some(h) => {
            let diff = i64::from(ts.wrapping_sub(h as u32) as i32);
            (h as i64 + diff).max(0) as u64
        }
    }
}

/// One received, not yet decoded packet.
#[derive(Debug)]
pub(crate) struct Packet {
    /// Extended sequence number.
    pub seq: u64,
    /// Extended RTP timestamp (48 kHz).
    pub ts: u64,
    pub arrival_ms: f64,
    pub payload: Vec<u8>,
}

/// What [`PacketBuffer::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inserted {
    Stored,
    /// A packet with this timestamp is already waiting.
    Duplicate,
    /// Stored, but the buffer was full and its oldest packet was dropped (or the new packet was
    /// itself the oldest and was not stored).
    Evicted,
}

/// Packets waiting to be decoded, sorted by timestamp.
#[derive(Debug)]
pub(crate) struct PacketBuffer {
    slots: Vec<Packet>,
    free: Vec<usize>,
    /// Occupied slots, oldest timestamp first.
    order: VecDeque<usize>,
    max_packets: usize,
}

impl PacketBuffer {
    pub fn new(max_packets: usize) -> Self {
        let max_packets = max_packets.max(1);
        Self {
            slots: Vec::with_capacity(max_packets),
            free: Vec::with_capacity(max_packets),
            order: VecDeque::with_capacity(max_packets),
            max_packets,
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// The `k`-th oldest packet.
    pub fn get(&self, k: usize) -> Option<&Packet> {
        self.order.get(k).map(|&i| &self.slots[i])
    }

    pub fn first(&self) -> Option<&Packet> {
        self.get(0)
    }

    pub fn newest(&self) -> Option<&Packet> {
        self.order.back().map(|&i| &self.slots[i])
    }

    /// Whether a packet with timestamp `ts` is waiting (scans from the newest end, where
    /// duplicates usually land).
    pub fn contains_ts(&self, ts: u64) -> bool {
        for &i in self.order.iter().rev() {
            let p = &self.slots[i];
            if p.ts == ts {
                return true;
            }
            if p.ts < ts {
                return false;
            }
        }
        false
    }

    pub fn pop_first(&mut self) {
        if let Some(i) = self.order.pop_front() {
            self.free.push(i);
        }
    }

    pub fn clear(&mut self) {
        while let Some(i) = self.order.pop_front() {
            self.free.push(i);
        }
    }

    pub fn insert(&mut self, seq: u64, ts: u64, arrival_ms: f64, payload: &[u8]) -> Inserted {
        // Packets mostly arrive in order: search from the newest end.
        let mut pos = self.order.len();
        while pos > 0 {
            let p = &self.slots[self.order[pos - 1]];
            if p.ts == ts {
                return Inserted::Duplicate;
            }
            if p.ts < ts {
                break;
            }
            pos -= 1;
        }
        let mut result = Inserted::Stored;
        if self.order.len() >= self.max_packets {
            if pos == 0 {
                return Inserted::Evicted;
            }
            self.pop_first();
            pos -= 1;
            result = Inserted::Evicted;
        }
        let slot = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Packet {
                    seq: 0,
                    ts: 0,
                    arrival_ms: 0.0,
                    payload: Vec::new(),
                });
                self.slots.len() - 1
            }
        };
        let p = &mut self.slots[slot];
        p.seq = seq;
        p.ts = ts;
        p.arrival_ms = arrival_ms;
        p.payload.clear();
        p.payload.extend_from_slice(payload);
        self.order.insert(pos, slot);
        result
    }

    /// Total payload capacity held by the pool, for tests that check steady-state allocation.
    #[cfg(test)]
    pub fn footprint(&self) -> (usize, usize) {
        (
            self.slots.len(),
            self.slots.iter().map(|p| p.payload.capacity()).sum(),
        )
    }
}

/// The extended sequence numbers of the last 64 decoded packets: a packet arriving behind the
/// playout point is a duplicate if it was played, and late otherwise.
#[derive(Debug)]
pub(crate) struct SeqHistory {
    seqs: [u64; 64],
    next: usize,
}

impl Default for SeqHistory {
    fn default() -> Self {
        Self {
            seqs: [u64::MAX; 64],
            next: 0,
        }
    }
}

impl SeqHistory {
    pub fn push(&mut self, seq: u64) {
        self.seqs[self.next] = seq;
        self.next = (self.next + 1) % self.seqs.len();
    }

    pub fn contains(&self, seq: u64) -> bool {
        self.seqs.contains(&seq)
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_and_timestamp_unwrap() {
        assert_eq!(unwrap_seq(2, Some(65_535 + 65_536)), 65_536 * 2 + 2);
        assert_eq!(unwrap_seq(65_535, Some(65_536 * 2 + 2)), 65_535 + 65_536);
        assert_eq!(
            unwrap_ts(5, Some(u64::from(u32::MAX) + (1 << 32))),
            (2 << 32) + 5
        );
        // A timestamp a little behind the highest, across the wrap, stays behind it.
        let h = (2u64 << 32) + 100;
        assert_eq!(unwrap_ts(u32::MAX - 859, Some(h)), h - 960);
        // A long DTX pause (10 minutes of timestamps) with one sequence step is still forward.
        let h = (1u64 << 32) + 1_000;
        assert_eq!(unwrap_ts(1_000 + 28_800_000, Some(h)), h + 28_800_000);
    }

    #[test]
    fn packets_sorted_by_timestamp_duplicates_and_overflow() {
        let mut b = PacketBuffer::new(3);
        assert_eq!(b.insert(2, 1920, 0.0, &[2]), Inserted::Stored);
        assert_eq!(b.insert(1, 960, 0.0, &[1]), Inserted::Stored);
        assert_eq!(b.insert(3, 2880, 0.0, &[3]), Inserted::Stored);
        assert_eq!(b.insert(1, 960, 1.0, &[1]), Inserted::Duplicate);
        assert!(b.contains_ts(1920) && !b.contains_ts(0));
        assert_eq!(b.first().unwrap().seq, 1);
        // Full: the oldest goes.
        assert_eq!(b.insert(4, 3840, 0.0, &[4]), Inserted::Evicted);
        assert_eq!((b.first().unwrap().seq, b.newest().unwrap().seq), (2, 4));
        // Older than everything while full: not stored.
        assert_eq!(b.insert(0, 0, 0.0, &[0]), Inserted::Evicted);
        assert_eq!(b.len(), 3);
        b.pop_first();
        assert_eq!(b.get(1).unwrap().payload, [4]);
        b.clear();
        assert_eq!(b.len(), 0);
        // Slots are reused, not reallocated.
        b.insert(9, 9, 0.0, &[9]);
        assert_eq!(b.footprint().0, 3);
    }

    #[test]
    fn history_remembers_recent_sequence_numbers() {
        let mut h = SeqHistory::default();
        for s in 100..200 {
            h.push(s);
        }
        assert!(h.contains(199) && h.contains(136) && !h.contains(135));
        h.clear();
        assert!(!h.contains(199));
    }
}
