//! Which edge of a cluster to join: every candidate is dialled at once, and the one whose
//! handshake completes first wins, unless a faster one cannot be ruled out yet. A pure state
//! machine (time comes in with every input, [`EdgeRace::poll`] says when to look again); the
//! shell ([`super::link::connect_nearest`]) does the dialling.
//!
//! A QUIC handshake takes about one round trip, so the order in which handshakes complete is
//! the order of the round trips, and the handshake time of the first is a measure of the
//! best: a candidate still pending at twice that time has a round trip at least about twice
//! the winner's. The race therefore picks the fastest answer once every candidate answered,
//! or once the first answer's handshake time has passed again, and never later than
//! [`CHOICE_WINDOW`] — so a dead edge, which never answers, costs nothing, and a join through
//! a cluster is at most about two round trips slower than a join to one relay.

use std::time::{Duration, Instant};

/// The longest the race waits for a faster edge once one has answered.
pub const CHOICE_WINDOW: Duration = Duration::from_secs(1);

/// What the shell should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Keep waiting for answers; look again at this time (or at the next answer; `None`:
    /// nothing to wait for but answers).
    Wait(Option<Instant>),
    /// Join candidate `index`, whose handshake took `handshake`; close the others.
    Chosen { index: usize, handshake: Duration },
    /// Every candidate failed.
    AllFailed,
}

/// One race between the candidates of a cluster.
#[derive(Debug, Clone)]
pub struct EdgeRace {
    started: Instant,
    pending: usize,
    /// The fastest candidate that answered, and its handshake time.
    best: Option<(usize, Duration)>,
    /// When the first answer came.
    first_at: Option<Instant>,
}

impl EdgeRace {
    /// A race between `candidates` dials, all started at `now`.
    pub fn new(candidates: usize, now: Instant) -> Self {
        Self {
            started: now,
            pending: candidates,
            best: None,
            first_at: None,
        }
    }

    /// Candidate `index` completed its handshake at `now`.
    pub fn on_connected(&mut self, index: usize, now: Instant) {
        self.pending = self.pending.saturating_sub(1);
        let took = now.saturating_duration_since(self.started);
        self.first_at.get_or_insert(now);
        if self.best.is_none_or(|(_, best)| took < best) {
            self.best = Some((index, took));
        }
    }

    /// Candidate `index` failed (unreachable, refused, wrong certificate).
    pub fn on_failed(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    /// The decision at `now`.
    pub fn poll(&self, now: Instant) -> Pick {
        let Some((index, handshake)) = self.best else {
            return if self.pending == 0 {
                Pick::AllFailed
            } else {
                Pick::Wait(None)
            };
        };
        let first_at = self.first_at.expect("set with best");
        let first_took = first_at.saturating_duration_since(self.started);
        let decide_at = (first_at + first_took).min(self.started + CHOICE_WINDOW);
        if self.pending == 0 || now >= decide_at {
            Pick::Chosen { index, handshake }
        } else {
            Pick::Wait(Some(decide_at))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_fastest_of_all_answers_wins() {
        let t0 = Instant::now();
        let mut race = EdgeRace::new(3, t0);
        assert_eq!(race.poll(t0), Pick::Wait(None));
        race.on_connected(2, t0 + ms(30));
        race.on_connected(0, t0 + ms(45));
        assert_eq!(race.poll(t0 + ms(45)), Pick::Wait(Some(t0 + ms(60))));
        race.on_failed();
        assert_eq!(
            race.poll(t0 + ms(46)),
            Pick::Chosen {
                index: 2,
                handshake: ms(30)
            }
        );
    }

    #[test]
    fn a_silent_edge_delays_the_choice_by_one_more_handshake_only() {
        let t0 = Instant::now();
        let mut race = EdgeRace::new(3, t0);
        race.on_connected(1, t0 + ms(20));
        race.on_connected(2, t0 + ms(25));
        // Candidate 0 never answers (a dead edge): at 40 ms it is at least twice as far.
        assert_eq!(race.poll(t0 + ms(39)), Pick::Wait(Some(t0 + ms(40))));
        assert_eq!(
            race.poll(t0 + ms(40)),
            Pick::Chosen {
                index: 1,
                handshake: ms(20)
            }
        );
    }

    #[test]
    fn far_edges_are_waited_for_at_most_the_choice_window() {
        let t0 = Instant::now();
        let mut race = EdgeRace::new(2, t0);
        race.on_connected(0, t0 + ms(700));
        assert_eq!(
            race.poll(t0 + ms(700)),
            Pick::Wait(Some(t0 + CHOICE_WINDOW))
        );
        assert!(matches!(
            race.poll(t0 + CHOICE_WINDOW),
            Pick::Chosen { index: 0, .. }
        ));
    }

    #[test]
    fn nothing_answers() {
        let t0 = Instant::now();
        let mut race = EdgeRace::new(2, t0);
        race.on_failed();
        assert_eq!(race.poll(t0 + ms(5000)), Pick::Wait(None));
        race.on_failed();
        assert_eq!(race.poll(t0 + ms(5000)), Pick::AllFailed);
    }
}
