//! When each connection next needs its event loop (the relay's data plane, the load
//! generator's batched driver): one deadline per key (a small index: quinn-proto's connection
//! handles are slab indices) in a binary heap, with lazy invalidation. Rescheduling a key
//! pushes a new entry and remembers the key's current deadline;
//! entries that no longer match it are skipped when they reach the top. So a reschedule costs
//! one push (O(log n)) instead of a search, which matters because every connection touched in a
//! batch reschedules. The heap is compacted when stale entries outnumber live ones.
//! Pure and generic over the clock, so it is tested with plain numbers.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Debug)]
pub struct Timers<T> {
    heap: BinaryHeap<Reverse<(T, usize)>>,
    /// Each key's current deadline, indexed by key (no hashing on the per-round path).
    current: Vec<Option<T>>,
    live: usize,
}

impl<T: Copy + Ord> Default for Timers<T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            current: Vec::new(),
            live: 0,
        }
    }
}

impl<T: Copy + Ord> Timers<T> {
    /// `key` next needs the loop at `at` (`None`: not until something else happens). Replaces
    /// any earlier deadline of the key.
    pub fn schedule(&mut self, key: usize, at: Option<T>) {
        if key >= self.current.len() {
            if at.is_none() {
                return;
            }
            self.current.resize(key + 1, None);
        }
        let slot = &mut self.current[key];
        if *slot == at {
            return;
        }
        match (slot.is_some(), at.is_some()) {
            (false, true) => self.live += 1,
            (true, false) => self.live -= 1,
            _ => {}
        }
        *slot = at;
        if let Some(at) = at {
            self.heap.push(Reverse((at, key)));
            if self.heap.len() > 64 && self.heap.len() > 2 * self.live {
                self.compact();
            }
        }
    }

    /// The earliest deadline of any key.
    pub fn earliest(&mut self) -> Option<T> {
        self.skip_stale();
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// The next key whose deadline is at or before `now`, removing that deadline; earliest
    /// first, keys with equal deadlines in key order.
    pub fn pop_due(&mut self, now: T) -> Option<usize> {
        self.skip_stale();
        let Reverse((at, key)) = *self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        self.current[key] = None;
        self.live -= 1;
        Some(key)
    }

    /// Keys with a deadline.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.live
    }

    fn skip_stale(&mut self) {
        while let Some(Reverse((at, key))) = self.heap.peek() {
            if self.current[*key] == Some(*at) {
                return;
            }
            self.heap.pop();
        }
    }

    fn compact(&mut self) {
        self.heap = self
            .current
            .iter()
            .enumerate()
            .filter_map(|(key, at)| at.map(|at| Reverse((at, key))))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_rescheduled_or_cancelled_key_fires_once_at_its_last_deadline() {
        let mut t = Timers::<u64>::default();
        t.schedule(1, Some(50));
        t.schedule(2, Some(30));
        t.schedule(1, Some(10));
        t.schedule(3, Some(20));
        t.schedule(3, None);
        assert_eq!(t.earliest(), Some(10));
        assert_eq!(t.pop_due(9), None);
        assert_eq!(t.pop_due(40), Some(1));
        assert_eq!(t.pop_due(40), Some(2));
        // 1's old deadline (50) and 3's cancelled one are gone with them.
        assert_eq!(t.pop_due(100), None);
        assert_eq!(t.earliest(), None);
        assert_eq!(t.len(), 0);
    }

    proptest! {
        /// Against a plain map of current deadlines: whatever the schedules, `pop_due` hands
        /// out exactly the keys due, each once, earliest first, and the heap stays bounded.
        #[test]
        fn matches_a_map_of_current_deadlines(
            ops in proptest::collection::vec((0usize..16, proptest::option::of(0u16..1000)), 1..500),
            now in 0u16..1000,
        ) {
            let mut t = Timers::<u16>::default();
            let mut model = std::collections::HashMap::new();
            for (key, at) in ops {
                t.schedule(key, at);
                match at {
                    Some(at) => { model.insert(key, at); }
                    None => { model.remove(&key); }
                }
                prop_assert!(t.heap.len() <= 2 * t.live.max(32) + 1);
            }
            prop_assert_eq!(t.earliest(), model.values().min().copied());
            let mut due: Vec<(u16, usize)> =
                model.iter().filter(|(_, at)| **at <= now).map(|(k, at)| (*at, *k)).collect();
            due.sort();
            let popped: Vec<usize> = std::iter::from_fn(|| t.pop_due(now)).collect();
            prop_assert_eq!(popped, due.into_iter().map(|(_, k)| k).collect::<Vec<_>>());
        }
    }
}
