//! When to reconnect after the relay is lost, and when to stop trying: a pure state machine
//! in the manner of quinn-proto and str0m. It never reads a clock: every input carries its
//! time, and [`ReconnectPolicy::poll_timeout`] says when the shell should wake it next. The
//! session's async shell ([`super::Session`]) does the connecting; the tests below drive the
//! policy with simulated time.

use crate::transport::ConnectError;
use natter_proto::control::ErrorCode;
use std::time::{Duration, Instant};

/// First wait after a loss; it doubles per failed attempt up to [`MAX_BACKOFF`]: 0.5, 1, 2, 4,
/// 8, 10, 10, … s. The first retry comes quickly because the common cause is a relay restart
/// that is already over by the time the loss is noticed.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Longest wait between two attempts: a relay that comes back is found within this.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The wait before attempt `attempt` (1-based).
pub fn backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    (FIRST_BACKOFF * (1u32 << doublings)).min(MAX_BACKOFF)
}

/// Whether retrying cannot help: the relay refused us for a reason that will not change by
/// itself (a full room, a bad or expired token, a name it rejects), our request is invalid, or
/// the relay presents another certificate than the one we pinned (an impersonator, or a
/// re-keyed relay the user must decide about). A relay that is shutting down, busy, timed us
/// out, failed internally, or simply vanished is worth trying again.
pub fn is_fatal(error: &ConnectError) -> bool {
    match error {
        // TokenInUse is fatal too: someone else joined with our access token, and rejoining
        // would throw them out, and them us, for ever. SlowReader (we stopped reading for a
        // while) is worth another try.
        ConnectError::Refused { code, .. } => !matches!(
            code,
            ErrorCode::ShuttingDown
                | ErrorCode::Timeout
                | ErrorCode::ServerFull
                | ErrorCode::Internal
                | ErrorCode::SlowReader
        ),
        ConnectError::Invalid(_) | ConnectError::FingerprintMismatch { .. } => true,
        ConnectError::Resolve { .. }
        | ConnectError::Unreachable(_)
        | ConnectError::Tls(_)
        | ConnectError::Lost(_)
        | ConnectError::Reset
        | ConnectError::Silent(_)
        | ConnectError::Local(_) => false,
    }
}

/// Where the session's connection to the relay is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkStatus {
    /// Joined and in the call.
    Connected,
    /// Lost; `attempt` is the attempt in progress or next (1-based), `reason` why the
    /// connection was lost (or why the last attempt failed).
    Reconnecting { attempt: u32, reason: String },
    /// Stopped trying: the session is over.
    GaveUp { reason: String },
}

/// What the shell must do after a loss or a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again at this time ([`ReconnectPolicy::poll_timeout`] returns it too).
    RetryAt(Instant),
    /// Stop: the session is over.
    GiveUp,
}

#[derive(Debug, Clone)]
enum State {
    Connected,
    /// Waiting until `retry_at` to start attempt `attempt`.
    Waiting {
        attempt: u32,
        retry_at: Instant,
        lost_at: Instant,
        reason: String,
    },
    /// Attempt `attempt` is in progress.
    Connecting {
        attempt: u32,
        lost_at: Instant,
        reason: String,
    },
    GaveUp(String),
}

/// Reconnect with exponential backoff until it works, the failure is fatal ([`is_fatal`]), or
/// `give_up_after` has passed since the connection was lost.
#[derive(Debug, Clone)]
pub struct ReconnectPolicy {
    give_up_after: Option<Duration>,
    state: State,
}

impl ReconnectPolicy {
    /// `give_up_after`: how long after a loss to keep trying (`None`: until the user leaves, as
    /// the desktop app does; zero: never reconnect).
    pub fn new(give_up_after: Option<Duration>) -> Self {
        Self {
            give_up_after,
            state: State::Connected,
        }
    }

    /// The connection was lost at `now` (`fatal`: see [`is_fatal`]).
    pub fn on_lost(&mut self, now: Instant, reason: String, fatal: bool) -> Verdict {
        self.schedule(now, now, 1, reason, fatal)
    }

    /// The relay reset the connection at `now` ([`ConnectError::Reset`]): it restarted and is
    /// answering, so the first attempt starts at once instead of after [`FIRST_BACKOFF`];
    /// should it fail, the backoff goes on as after any loss. The same for an edge of a
    /// cluster gone silent ([`ConnectError::Silent`]): the other edges are up, and the attempt
    /// goes to the nearest that answers.
    pub fn on_reset(&mut self, now: Instant, reason: String) -> Verdict {
        if self.give_up_after == Some(Duration::ZERO) {
            self.state = State::GaveUp(reason);
            return Verdict::GiveUp;
        }
        self.state = State::Waiting {
            attempt: 1,
            retry_at: now,
            lost_at: now,
            reason,
        };
        Verdict::RetryAt(now)
    }

    /// Reacts to losing the connection with `error` at `now`: [`Self::on_reset`] for a reset,
    /// [`Self::on_lost`] otherwise.
    pub fn on_error(&mut self, now: Instant, error: &ConnectError) -> Verdict {
        match error {
            ConnectError::Reset | ConnectError::Silent(_) => self.on_reset(now, error.to_string()),
            _ => self.on_lost(now, error.to_string(), is_fatal(error)),
        }
    }

    /// The attempt in progress failed at `now`.
    pub fn on_attempt_failed(&mut self, now: Instant, reason: String, fatal: bool) -> Verdict {
        let (attempt, lost_at) = match &self.state {
            State::Connecting {
                attempt, lost_at, ..
            }
            | State::Waiting {
                attempt, lost_at, ..
            } => (*attempt, *lost_at),
            // An attempt that was never started: count it as the first after a loss now.
            State::Connected | State::GaveUp(_) => (0, now),
        };
        self.schedule(now, lost_at, attempt + 1, reason, fatal)
    }

    fn schedule(
        &mut self,
        now: Instant,
        lost_at: Instant,
        attempt: u32,
        reason: String,
        fatal: bool,
    ) -> Verdict {
        let retry_at = now + backoff(attempt);
        let too_late = self
            .give_up_after
            .is_some_and(|limit| retry_at > lost_at + limit);
        if fatal || too_late {
            self.state = State::GaveUp(reason);
            return Verdict::GiveUp;
        }
        self.state = State::Waiting {
            attempt,
            retry_at,
            lost_at,
            reason,
        };
        Verdict::RetryAt(retry_at)
    }

    /// When the shell must call [`ReconnectPolicy::handle_timeout`] next (`None`: nothing is
    /// scheduled).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Waiting { retry_at, .. } => Some(*retry_at),
            _ => None,
        }
    }

    /// Time has passed: true when the shell should start an attempt now.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        let State::Waiting {
            attempt,
            retry_at,
            lost_at,
            reason,
        } = &self.state
        else {
            return false;
        };
        if now < *retry_at {
            return false;
        }
        self.state = State::Connecting {
            attempt: *attempt,
            lost_at: *lost_at,
            reason: reason.clone(),
        };
        true
    }

    /// The attempt succeeded: joined again.
    pub fn on_connected(&mut self) {
        self.state = State::Connected;
    }

    pub fn status(&self) -> LinkStatus {
        match &self.state {
            State::Connected => LinkStatus::Connected,
            State::Waiting {
                attempt, reason, ..
            }
            | State::Connecting {
                attempt, reason, ..
            } => LinkStatus::Reconnecting {
                attempt: *attempt,
                reason: reason.clone(),
            },
            State::GaveUp(reason) => LinkStatus::GaveUp {
                reason: reason.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// Drives the policy through `failures` failed attempts after a loss at `t0`, each
    /// attempt failing `attempt_takes` after it starts; returns when each attempt started.
    fn failing_attempts(
        policy: &mut ReconnectPolicy,
        t0: Instant,
        failures: usize,
        attempt_takes: Duration,
    ) -> (Vec<Duration>, Verdict) {
        let mut starts = Vec::new();
        let mut verdict = policy.on_lost(t0, "timed out".into(), false);
        for _ in 0..failures {
            let Verdict::RetryAt(at) = verdict else { break };
            assert_eq!(policy.poll_timeout(), Some(at));
            // Waking early does nothing.
            assert!(!policy.handle_timeout(at - Duration::from_millis(1)));
            assert!(policy.handle_timeout(at));
            assert!(!policy.handle_timeout(at), "one attempt per timeout");
            starts.push(at - t0);
            verdict = policy.on_attempt_failed(at + attempt_takes, "unreachable".into(), false);
        }
        (starts, verdict)
    }

    #[test]
    fn backoff_doubles_up_to_ten_seconds() {
        let waits: Vec<f64> = (1..=8).map(|a| backoff(a).as_secs_f64()).collect();
        assert_eq!(waits, [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn retries_forever_without_a_limit() {
        let t0 = Instant::now();
        let mut policy = ReconnectPolicy::new(None);
        let (starts, verdict) = failing_attempts(&mut policy, t0, 100, Duration::ZERO);
        assert_eq!(starts.len(), 100);
        assert!(matches!(verdict, Verdict::RetryAt(_)));
        // 0.5 + 1 + 2 + 4 + 8, then every 10 s.
        assert_eq!(starts[0], secs(0.5));
        assert_eq!(starts[4], secs(15.5));
        assert_eq!(starts[5], secs(25.5));
        assert_eq!(
            policy.status(),
            LinkStatus::Reconnecting {
                attempt: 101,
                reason: "unreachable".into()
            }
        );
    }

    #[test]
    fn gives_up_once_the_next_try_would_be_past_the_limit() {
        let t0 = Instant::now();
        let mut policy = ReconnectPolicy::new(Some(secs(30.0)));
        // Attempts that each take 5 s (an unreachable relay: the handshake times out) start
        // at 0.5, 6.5, 13.5, 22.5 s; the next would be at 27.5 + 8 = 35.5 s.
        let (starts, verdict) = failing_attempts(&mut policy, t0, 10, secs(5.0));
        assert_eq!(starts, [secs(0.5), secs(6.5), secs(13.5), secs(22.5)]);
        assert_eq!(verdict, Verdict::GiveUp);
        assert_eq!(
            policy.status(),
            LinkStatus::GaveUp {
                reason: "unreachable".into()
            }
        );
        assert_eq!(policy.poll_timeout(), None);
    }

    #[test]
    fn zero_limit_never_reconnects() {
        let mut policy = ReconnectPolicy::new(Some(Duration::ZERO));
        let verdict = policy.on_lost(Instant::now(), "shutting down".into(), false);
        assert_eq!(verdict, Verdict::GiveUp);
        assert!(
            matches!(policy.status(), LinkStatus::GaveUp { reason } if reason == "shutting down")
        );
    }

    #[test]
    fn fatal_failures_stop_at_once() {
        let t0 = Instant::now();
        let mut policy = ReconnectPolicy::new(None);
        let Verdict::RetryAt(at) = policy.on_lost(t0, "timed out".into(), false) else {
            panic!("a lost connection is retried");
        };
        assert!(policy.handle_timeout(at));
        let verdict = policy.on_attempt_failed(at, "certificate changed".into(), true);
        assert_eq!(verdict, Verdict::GiveUp);
        // A loss that is fatal in itself (the relay closed us for a reason that stays).
        let mut policy = ReconnectPolicy::new(None);
        assert_eq!(
            policy.on_lost(t0, "room full".into(), true),
            Verdict::GiveUp
        );
    }

    #[test]
    fn success_resets_the_backoff() {
        let t0 = Instant::now();
        let mut policy = ReconnectPolicy::new(Some(secs(30.0)));
        let (_, verdict) = failing_attempts(&mut policy, t0, 3, secs(1.0));
        let Verdict::RetryAt(at) = verdict else {
            panic!("still within the limit")
        };
        assert!(policy.handle_timeout(at));
        policy.on_connected();
        assert_eq!(policy.status(), LinkStatus::Connected);
        assert_eq!(policy.poll_timeout(), None);
        // A loss an hour later starts again at half a second, with a fresh limit.
        let later = at + secs(3600.0);
        assert_eq!(
            policy.on_lost(later, "timed out".into(), false),
            Verdict::RetryAt(later + secs(0.5))
        );
    }

    #[test]
    fn a_reset_is_retried_at_once_then_backs_off() {
        let t0 = Instant::now();
        let mut policy = ReconnectPolicy::new(Some(secs(30.0)));
        assert_eq!(
            policy.on_error(t0, &ConnectError::Reset),
            Verdict::RetryAt(t0)
        );
        assert!(policy.handle_timeout(t0));
        // The restarted relay was not ready after all: the usual backoff from the second try.
        assert_eq!(
            policy.on_attempt_failed(t0 + secs(0.1), "unreachable".into(), false),
            Verdict::RetryAt(t0 + secs(1.1))
        );
        // Any other loss waits the first backoff, and `--reconnect-for 0` still means never.
        let mut policy = ReconnectPolicy::new(None);
        assert_eq!(
            policy.on_error(t0, &ConnectError::Lost("timed out".into())),
            Verdict::RetryAt(t0 + FIRST_BACKOFF)
        );
        let mut never = ReconnectPolicy::new(Some(Duration::ZERO));
        assert_eq!(never.on_error(t0, &ConnectError::Reset), Verdict::GiveUp);
        // An edge gone silent: the cluster's other edges are tried at once.
        let mut policy = ReconnectPolicy::new(None);
        assert_eq!(
            policy.on_error(t0, &ConnectError::Silent(secs(1.2))),
            Verdict::RetryAt(t0)
        );
    }

    #[test]
    fn what_is_worth_retrying() {
        let refused = |code| ConnectError::Refused {
            code,
            message: String::new(),
        };
        for code in [
            ErrorCode::ShuttingDown,
            ErrorCode::Timeout,
            ErrorCode::ServerFull,
            ErrorCode::Internal,
        ] {
            assert!(!is_fatal(&refused(code)), "{code:?}");
        }
        for code in [
            ErrorCode::RoomFull,
            ErrorCode::TokenExpired,
            ErrorCode::InvalidName,
            ErrorCode::RateLimited,
            ErrorCode::ProtocolViolation,
        ] {
            assert!(is_fatal(&refused(code)), "{code:?}");
        }
        assert!(!is_fatal(&ConnectError::Lost("timed out".into())));
        assert!(!is_fatal(&ConnectError::Unreachable("r:1".into())));
        assert!(is_fatal(&ConnectError::FingerprintMismatch {
            expected: "a".into(),
            actual: "b".into()
        }));
        assert!(is_fatal(&ConnectError::Invalid("bad room".into())));
    }
}
