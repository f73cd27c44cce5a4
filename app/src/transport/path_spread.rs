//! What a listener knows about the paths before a talker's first packet arrives: how much its
//! own round trip to the relay varies, and how much each talker's uplink does.
//!
//! A jitter buffer meets a new stream knowing nothing, so it used to start with a margin that
//! covers typical Internet jitter (40 ms) and remove the excess once half a second of packets
//! had measured the path. On a clean path that excess was removed inside the first sentence,
//! and a delay step inside a sentence is what PESQ and listeners hear (~0.1–0.15 PESQ-WB of the
//! first sentence, docs/BENCHMARKS.md). So the control session sends a train of pings before
//! it joins ([`super::control::core::PING_TRAIN`]): their round trips' spread covers both
//! directions of our own path, and the relay measures the same pings' one-way transit for
//! every member's uplink and announces it (`Message::UplinkSpread`). The engine starts each new
//! stream's buffer from the sum ([`crate::jitter::JitterConfig::start_target_ms`]).
//!
//! A talker the relay has not measured (an older client, or one on another relay of a
//! cluster) counts as having a clean uplink; docs/BENCHMARKS.md gives that case's cost when
//! it is not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The latest spreads, shared between the control session (which learns them) and the engine
/// (which reads them when a new stream starts: a short lock, once per new SSRC, never in an
/// audio callback). One session's links all write the same one.
#[derive(Debug, Clone, Default)]
pub struct PathSpread(Arc<Mutex<Known>>);

#[derive(Debug, Default)]
struct Known {
    /// Our round trip's spread, ms.
    own_ms: Option<f64>,
    /// Each talker's uplink spread by SSRC, ms.
    uplink_ms: HashMap<u32, f64>,
}

impl PathSpread {
    /// Replaces what is known: our own spread (kept if `None`) and the talkers' uplinks.
    pub fn set(&self, own_ms: Option<f64>, uplink_ms: impl IntoIterator<Item = (u32, f64)>) {
        let mut k = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if own_ms.is_some() {
            k.own_ms = own_ms;
        }
        k.uplink_ms = uplink_ms.into_iter().collect();
    }

    /// The spread a stream from `ssrc` crosses, ms: ours plus its sender's uplink (none if
    /// not announced), or `None` before ours is measured.
    pub fn for_stream(&self, ssrc: u32) -> Option<f64> {
        let k = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Some(k.own_ms? + k.uplink_ms.get(&ssrc).copied().unwrap_or(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_crosses_our_spread_and_its_talkers_uplink() {
        let p = PathSpread::default();
        let engine_side = p.clone();
        assert_eq!(engine_side.for_stream(7), None);
        p.set(None, [(7, 20.0)]);
        assert_eq!(engine_side.for_stream(7), None, "ours is not known yet");
        p.set(Some(1.5), [(7, 20.0)]);
        assert_eq!(engine_side.for_stream(7), Some(21.5));
        assert_eq!(engine_side.for_stream(8), Some(1.5), "not announced: clean");
        // The talker left (its uplink is forgotten); ours stays until measured again.
        p.set(None, []);
        assert_eq!(engine_side.for_stream(7), Some(1.5));
    }
}
