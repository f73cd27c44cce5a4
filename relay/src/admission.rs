//! Who may start a connection: the relay-wide and per-address connection limits. Sans-IO: the
//! shell asks at the first packet of a handshake (quinn's `Incoming`) and gives the slot back
//! when the connection is gone, so handshakes in flight count as much as connections do and
//! a burst of handshakes cannot overshoot `--max-connections`.

use std::collections::HashMap;
use std::net::IpAddr;

/// The unit a per-address limit applies to: an IPv4 address, or an IPv6 /64 (one subscriber
/// usually holds a whole /64, so counting single IPv6 addresses would be no limit at all).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(u128);

impl Source {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(u128::from(u32::from(v4))),
                // Tagged so a /64 never equals an IPv4 address.
                None => Self((u128::from(v6) & !u128::from(u64::MAX)) | 1),
            },
        }
    }
}

/// What to do with a new handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; the slot is held until [`Admissions::release`].
    Admit,
    /// Ask the client to prove its address first (QUIC Retry). Only unvalidated handshakes get
    /// this, so the answer always comes back validated.
    Retry,
    /// The relay is full.
    Full,
    /// This address holds its share already.
    AddressFull,
}

/// The whole rule for a new handshake, as the data plane applies it: what to do with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// Accept it; a slot is held until [`Admissions::release`].
    Accept,
    /// Send a QUIC Retry (the client proves its address and comes back).
    Retry,
    /// Refuse it before any crypto (QUIC CONNECTION_REFUSED), holding nothing.
    Refuse,
}

/// The limits [`Admissions::decide`] applies.
#[derive(Debug, Clone, Copy)]
pub struct HandshakeLimits {
    pub max_connections: usize,
    /// Per IPv4 address or IPv6 /64; 0 = no limit.
    pub max_per_address: usize,
    /// Handshakes in progress above which unvalidated clients get a Retry first.
    pub retry_above: usize,
}

/// Slots in use, relay-wide and per source.
#[derive(Debug, Default)]
pub struct Admissions {
    total: usize,
    per_source: HashMap<Source, usize>,
}

impl Admissions {
    /// Decides on a handshake from `ip` (`validated`: the address is proven, e.g. by a Retry
    /// token). `max_per_source` 0 means no per-address limit.
    ///
    /// Past half its share, a source must prove its address (QUIC Retry) before taking more:
    /// a spoofer who puts a victim's address on a flood of Initials then holds at most half the
    /// victim's share (and only until those handshakes time out), so the per-address limit
    /// cannot lock the victim out; a real client behind a busy NAT pays one round trip.
    pub fn admit(
        &mut self,
        ip: IpAddr,
        validated: bool,
        max_total: usize,
        max_per_source: usize,
    ) -> Admission {
        if self.total >= max_total {
            return Admission::Full;
        }
        let source = Source::of(ip);
        let held = self.per_source.get(&source).copied().unwrap_or(0);
        if max_per_source > 0 {
            if held >= max_per_source.div_ceil(2) && !validated {
                return Admission::Retry;
            }
            if held >= max_per_source {
                return Admission::AddressFull;
            }
        }
        self.total += 1;
        *self.per_source.entry(source).or_default() += 1;
        Admission::Admit
    }

    /// Decides on a handshake from `ip` with `handshaking` others in progress: refused while
    /// shutting down; under a handshake flood an unvalidated client must prove its address
    /// first (cheap insurance against spoofed-source Initials); then [`Self::admit`]'s slots.
    /// The slot is taken here, at the first packet, not once the handshake is done: a burst of
    /// Initials must each see the ones before it, or sixty simultaneous handshakes would all
    /// fit under a limit of twenty.
    pub fn decide(
        &mut self,
        ip: IpAddr,
        validated: bool,
        shutting_down: bool,
        handshaking: usize,
        limits: HandshakeLimits,
    ) -> Handshake {
        if shutting_down {
            return Handshake::Refuse;
        }
        if handshaking >= limits.retry_above && !validated {
            return Handshake::Retry;
        }
        match self.admit(
            ip,
            validated,
            limits.max_connections,
            limits.max_per_address,
        ) {
            Admission::Admit => Handshake::Accept,
            Admission::Retry => Handshake::Retry,
            Admission::Full | Admission::AddressFull => Handshake::Refuse,
        }
    }

    /// Gives back a slot [`Self::admit`] granted to `ip`.
    pub fn release(&mut self, ip: IpAddr) {
        let source = Source::of(ip);
        if let Some(held) = self.per_source.get_mut(&source) {
            *held -= 1;
            if *held == 0 {
                self.per_source.remove(&source);
            }
            self.total -= 1;
        }
    }

    /// Slots held: handshakes in progress plus open connections (what the tests check).
    #[cfg(test)]
    fn total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_total_counts_handshakes_and_comes_back_on_release() {
        let mut a = Admissions::default();
        // Sixty handshakes at once from sixty addresses against a limit of 20: twenty get in.
        let admitted: Vec<IpAddr> = (0..60)
            .map(|i| ip(&format!("10.0.0.{i}")))
            .filter(|ip| a.admit(*ip, false, 20, 64) == Admission::Admit)
            .collect();
        assert_eq!(admitted.len(), 20);
        assert_eq!(a.admit(ip("10.0.1.1"), true, 20, 64), Admission::Full);
        a.release(admitted[0]);
        assert_eq!(a.total(), 19);
        assert_eq!(a.admit(ip("10.0.1.1"), false, 20, 64), Admission::Admit);
    }

    #[test]
    fn one_address_gets_its_share_and_proves_itself_for_more() {
        let mut a = Admissions::default();
        let home = ip("192.0.2.7");
        assert_eq!(a.admit(home, false, 100, 4), Admission::Admit);
        assert_eq!(a.admit(home, false, 100, 4), Admission::Admit);
        // Past half the share, handshakes from the same address come back through a Retry.
        assert_eq!(a.admit(home, false, 100, 4), Admission::Retry);
        assert_eq!(a.admit(home, true, 100, 4), Admission::Admit);
        assert_eq!(a.admit(home, true, 100, 4), Admission::Admit);
        assert_eq!(a.admit(home, true, 100, 4), Admission::AddressFull);
        // Others are not affected.
        assert_eq!(a.admit(ip("192.0.2.8"), false, 100, 4), Admission::Admit);
        a.release(home);
        assert_eq!(a.admit(home, true, 100, 4), Admission::Admit);
        // No per-address limit: no Retry either.
        let mut open = Admissions::default();
        assert!((0..10).all(|_| open.admit(home, false, 100, 0) == Admission::Admit));
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_v4_as_v4() {
        let mut a = Admissions::default();
        assert_eq!(a.admit(ip("2001:db8::1"), true, 100, 2), Admission::Admit);
        assert_eq!(
            a.admit(ip("2001:db8::ffff:2"), true, 100, 2),
            Admission::Admit
        );
        assert_eq!(
            a.admit(ip("2001:db8::3"), true, 100, 2),
            Admission::AddressFull
        );
        assert_eq!(a.admit(ip("2001:db8:1::1"), true, 100, 2), Admission::Admit);
        assert_eq!(a.admit(ip("203.0.113.5"), true, 100, 1), Admission::Admit);
        assert_eq!(
            a.admit(ip("::ffff:203.0.113.5"), true, 100, 1),
            Admission::AddressFull
        );
    }

    #[test]
    fn a_flood_or_a_shutdown_comes_first_and_takes_no_slot() {
        let mut a = Admissions::default();
        let limits = HandshakeLimits {
            max_connections: 10,
            max_per_address: 0,
            retry_above: 4,
        };
        let home = ip("192.0.2.7");
        assert_eq!(a.decide(home, false, true, 0, limits), Handshake::Refuse);
        assert_eq!(a.decide(home, false, false, 4, limits), Handshake::Retry);
        assert_eq!(a.total(), 0);
        assert_eq!(a.decide(home, true, false, 4, limits), Handshake::Accept);
        assert_eq!(a.decide(home, false, false, 3, limits), Handshake::Accept);
        assert_eq!(a.total(), 2);
        let full = HandshakeLimits {
            max_connections: 2,
            ..limits
        };
        assert_eq!(a.decide(home, true, false, 0, full), Handshake::Refuse);
    }

    #[test]
    fn releasing_an_unknown_address_changes_nothing() {
        let mut a = Admissions::default();
        a.admit(ip("10.0.0.1"), false, 10, 10);
        a.release(ip("10.0.0.2"));
        assert_eq!(a.total(), 1);
    }
}
