//! The stale/queue rule for forwarded datagrams, as a pure state machine: late audio is worse
//! than lost audio.
//!
//! One [`FreshQueue`] per subscriber holds the datagrams that could not go to its connection at
//! once (its congestion window was full), each with the time it arrived at the relay. The I/O
//! shell asks [`FreshQueue::idle`] whether a new datagram may skip the queue (nothing waiting,
//! nothing being handed over: skipping then cannot reorder), [`FreshQueue::push`]es the rest, and
//! drains it with [`FreshQueue::next`] as the connection makes room. What has waited
//! `stale_after` or longer is dropped instead of sent, and the queue never holds more than
//! `limit` datagrams (the oldest goes first). Time is passed in, so the rule is tested here in
//! simulated time; any clock type works (`std` or tokio `Instant`, or a `Duration` since an
//! epoch).

use std::collections::VecDeque;
use std::ops::Add;
use std::time::Duration;

/// The relay's bound on a subscriber queue's length: beyond it the oldest
/// entry is dropped at once.
pub const SUBSCRIBER_QUEUE_LIMIT: usize = 256;

/// Datagrams waiting for one subscriber's connection, oldest first.
#[derive(Debug)]
pub struct FreshQueue<D, T> {
    items: VecDeque<(D, T)>,
    /// The shell holds a datagram from [`FreshQueue::next`] and has not asked again: later
    /// datagrams must queue behind it so a sender's packets stay in order.
    sending: bool,
    stale_after: Duration,
    limit: usize,
}

/// The next datagram to hand to the connection, from [`FreshQueue::next`].
#[derive(Debug, PartialEq, Eq)]
pub struct Ready<D, T> {
    pub datagram: D,
    /// When it arrived at the relay (for the relay-added delay).
    pub arrived: T,
    /// It must be handed over before this instant, or dropped as stale.
    pub stale_at: T,
}

/// What [`FreshQueue::next`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Next<D, T> {
    /// The oldest fresh datagram, if any is left.
    pub ready: Option<Ready<D, T>>,
    /// Datagrams dropped on the way because they had gone stale.
    pub stale: usize,
}

impl<D, T> FreshQueue<D, T>
where
    T: Copy + Ord + Add<Duration, Output = T>,
{
    /// An empty queue that drops datagrams older than `stale_after` and holds at most `limit`
    /// (at least one).
    pub fn new(stale_after: Duration, limit: usize) -> Self {
        Self {
            items: VecDeque::new(),
            sending: false,
            stale_after,
            limit: limit.max(1),
        }
    }

    /// Nothing is waiting and nothing is being handed over: a new datagram may go straight to
    /// the connection without overtaking an older one.
    pub fn idle(&self) -> bool {
        self.items.is_empty() && !self.sending
    }

    /// Datagrams waiting (not counting one being handed over); the tests' view of the bound.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.items.len()
    }

    /// Queues `datagram`, which arrived at `arrived`. Returns the oldest datagram if the queue
    /// was full and it had to make room: the caller counts it as stale (it would be by the
    /// time its turn came).
    pub fn push(&mut self, datagram: D, arrived: T) -> Option<D> {
        let evicted = if self.items.len() >= self.limit {
            self.items.pop_front().map(|(d, _)| d)
        } else {
            None
        };
        self.items.push_back((datagram, arrived));
        evicted
    }

    /// The oldest datagram that is still fresh at `now`, dropping the stale ones before it.
    /// While the caller holds it the queue counts as sending ([`FreshQueue::idle`] is false)
    /// until the next call; a call that finds nothing ends the sending state.
    pub fn next(&mut self, now: T) -> Next<D, T> {
        let mut stale = 0;
        while let Some((datagram, arrived)) = self.items.pop_front() {
            let stale_at = arrived + self.stale_after;
            if now >= stale_at {
                stale += 1;
                continue;
            }
            self.sending = true;
            return Next {
                ready: Some(Ready {
                    datagram,
                    arrived,
                    stale_at,
                }),
                stale,
            };
        }
        self.sending = false;
        Next { ready: None, stale }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const STALE: Duration = Duration::from_millis(60);

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn an_idle_queue_lets_a_datagram_skip_it_and_a_hand_over_blocks_that() {
        let mut q = FreshQueue::<u32, Duration>::new(STALE, 4);
        assert!(q.idle());
        assert_eq!(q.push(1, ms(0)), None);
        assert!(!q.idle());
        let next = q.next(ms(1));
        assert_eq!(next.ready.map(|r| r.datagram), Some(1));
        // Being handed over: a newer datagram must not overtake it.
        assert!(!q.idle());
        assert_eq!(
            q.next(ms(2)),
            Next {
                ready: None,
                stale: 0
            }
        );
        assert!(q.idle());
    }

    #[test]
    fn stale_datagrams_are_dropped_exactly_at_the_limit_and_order_is_kept() {
        let mut q = FreshQueue::<u32, Duration>::new(STALE, 16);
        for (d, at) in [(1, 0), (2, 10), (3, 20), (4, 30)] {
            q.push(d, ms(at));
        }
        // At 70 ms, 1 (60 ms old) and 2 (exactly 60) are stale; 3 is not.
        let next = q.next(ms(70));
        assert_eq!(next.stale, 2);
        assert_eq!(
            next.ready,
            Some(Ready {
                datagram: 3,
                arrived: ms(20),
                stale_at: ms(80),
            })
        );
        assert_eq!(q.next(ms(71)).ready.map(|r| r.datagram), Some(4));
        assert_eq!(
            q.next(ms(200)),
            Next {
                ready: None,
                stale: 0
            }
        );
    }

    #[test]
    fn a_full_queue_gives_up_its_oldest() {
        let mut q = FreshQueue::<u32, Duration>::new(STALE, 3);
        for d in 0..3 {
            assert_eq!(q.push(d, ms(u64::from(d))), None);
        }
        assert_eq!(q.push(3, ms(3)), Some(0));
        assert_eq!(q.len(), 3);
        let got: Vec<u32> =
            std::iter::from_fn(|| q.next(ms(5)).ready.map(|r| r.datagram)).collect();
        assert_eq!(got, vec![1, 2, 3]);
    }

    #[test]
    fn works_with_real_instants() {
        let t0 = std::time::Instant::now();
        let mut q = FreshQueue::new(STALE, 4);
        q.push("a", t0);
        q.push("b", t0 + ms(30));
        let next = q.next(t0 + ms(61));
        assert_eq!(next.stale, 1);
        assert_eq!(next.ready.map(|r| r.datagram), Some("b"));
    }

    /// A subscriber's connection that takes a datagram only at some moments (its window
    /// opening), fed datagrams at arbitrary moments, drained the way the shells drain it.
    #[derive(Debug, Clone)]
    enum Step {
        /// A datagram arrives `after` ms after the previous step.
        Arrive { after: u8 },
        /// The connection has room for `n` datagrams, `after` ms later.
        Room { after: u8, n: u8 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..30).prop_map(|after| Step::Arrive { after }),
            (0u8..100, 0u8..5).prop_map(|(after, n)| Step::Room { after, n }),
        ]
    }

    proptest! {
        /// Whatever the arrivals and the connection's openings: datagrams leave in arrival
        /// order, none twice, none at or past the stale limit, and every one is either sent
        /// or counted as dropped; the queue never holds more than its limit.
        #[test]
        fn never_reorders_duplicates_holds_stale_or_loses_count(
            steps in proptest::collection::vec(step(), 1..400),
            limit in 1usize..20,
        ) {
            let mut q = FreshQueue::<u32, Duration>::new(STALE, limit);
            let (mut now, mut next_id) = (Duration::ZERO, 0u32);
            let (mut sent, mut dropped) = (Vec::new(), 0usize);
            for s in steps {
                match s {
                    Step::Arrive { after } => {
                        now += ms(u64::from(after));
                        // The window is closed between `Room` steps, so every arrival queues.
                        if q.push(next_id, now).is_some() {
                            dropped += 1;
                        }
                        next_id += 1;
                        prop_assert!(q.len() <= limit);
                    }
                    Step::Room { after, n } => {
                        now += ms(u64::from(after));
                        for _ in 0..n {
                            let next = q.next(now);
                            dropped += next.stale;
                            let Some(ready) = next.ready else { break };
                            prop_assert!(now < ready.stale_at);
                            prop_assert!(now - ready.arrived < STALE);
                            sent.push(ready.datagram);
                        }
                    }
                }
            }
            prop_assert!(sent.windows(2).all(|w| w[0] < w[1]), "order: {:?}", sent);
            prop_assert_eq!(sent.len() + dropped + q.len(), next_id as usize);
        }
    }
}
