//! The seven stages of a sender's mouth-to-ear latency, defined once: the engine measures them
//! ([`crate::engine::receive`]), `natter call` prints and writes them (stats JSON, the
//! `--latency-csv` history), the desktop meter draws them, and the end-to-end tests read them
//! back — all through this one list, so adding or renaming a stage is one change.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// One stage, in the order a sound passes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Sender: microphone to capture callback (device and driver buffering).
    Capture,
    /// Sender: voice processing and waiting for a full frame.
    Processing,
    /// Sender: codec look-ahead plus encoding time.
    Encode,
    /// One-way network and relay.
    Network,
    /// Arrival to playout (measured per frame by the jitter buffer).
    JitterBuffer,
    /// Decoding (and concealment) time.
    Decode,
    /// Mixed to heard: waiting for the device to take the block, plus its output latency.
    Playback,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Capture,
        Stage::Processing,
        Stage::Encode,
        Stage::Network,
        Stage::JitterBuffer,
        Stage::Decode,
        Stage::Playback,
    ];

    /// The name people read (meter legend, `natter call`'s summary).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Capture => "capture",
            Stage::Processing => "processing",
            Stage::Encode => "encode",
            Stage::Network => "network",
            Stage::JitterBuffer => "jitter buffer",
            Stage::Decode => "decode",
            Stage::Playback => "playback",
        }
    }

    /// The field in the stats JSON and the column in the latency CSV.
    pub fn key(self) -> &'static str {
        match self {
            Stage::Capture => "capture_ms",
            Stage::Processing => "processing_ms",
            Stage::Encode => "encode_ms",
            Stage::Network => "network_ms",
            Stage::JitterBuffer => "jitter_buffer_ms",
            Stage::Decode => "decode_ms",
            Stage::Playback => "playback_ms",
        }
    }
}

/// Where one peer's mouth-to-ear latency goes, stage by stage (ms). The sender's stages come
/// from its RTCP APP report; the rest is measured by the receiver. `total_ms` is their sum,
/// which the end-to-end tests compare with the latency measured by cross-correlation. The
/// field names are [`Stage::key`]s (the stats JSON is this struct).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyStages {
    pub capture_ms: f64,
    pub processing_ms: f64,
    pub encode_ms: f64,
    pub network_ms: f64,
    pub jitter_buffer_ms: f64,
    pub decode_ms: f64,
    pub playback_ms: f64,
    pub total_ms: f64,
    /// False until the sender's stages have been received.
    pub complete: bool,
}

impl LatencyStages {
    /// Stages from their values in [`Stage::ALL`] order; the total is their sum.
    pub fn from_values(values: [f64; 7], complete: bool) -> Self {
        let [
            capture_ms,
            processing_ms,
            encode_ms,
            network_ms,
            jitter_buffer_ms,
            decode_ms,
            playback_ms,
        ] = values;
        Self {
            capture_ms,
            processing_ms,
            encode_ms,
            network_ms,
            jitter_buffer_ms,
            decode_ms,
            playback_ms,
            total_ms: values.iter().sum(),
            complete,
        }
    }

    pub fn get(&self, stage: Stage) -> f64 {
        match stage {
            Stage::Capture => self.capture_ms,
            Stage::Processing => self.processing_ms,
            Stage::Encode => self.encode_ms,
            Stage::Network => self.network_ms,
            Stage::JitterBuffer => self.jitter_buffer_ms,
            Stage::Decode => self.decode_ms,
            Stage::Playback => self.playback_ms,
        }
    }

    /// The values in [`Stage::ALL`] order.
    pub fn values(&self) -> [f64; 7] {
        Stage::ALL.map(|s| self.get(s))
    }

    /// "capture 10.0 + processing 10.5 + … = 40.2 ms" (`decimals` per stage value, one more
    /// for decoding, which takes microseconds).
    pub fn breakdown(&self, decimals: usize) -> String {
        let mut out = String::new();
        for (i, stage) in Stage::ALL.iter().enumerate() {
            if i > 0 {
                out.push_str(" + ");
            }
            let places = decimals + usize::from(*stage == Stage::Decode);
            let _ = write!(out, "{} {:.*}", stage.name(), places, self.get(*stage));
        }
        let _ = write!(out, " = {:.1} ms", self.total_ms);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_list_names_orders_and_sums_the_stages() {
        let s = LatencyStages::from_values([10.0, 10.5, 6.8, 0.3, 12.0, 0.05, 2.35], true);
        assert!((s.total_ms - 42.0).abs() < 1e-9);
        assert_eq!(s.values(), [10.0, 10.5, 6.8, 0.3, 12.0, 0.05, 2.35]);
        assert_eq!(s.get(Stage::JitterBuffer), 12.0);
        assert_eq!(
            s.breakdown(1),
            "capture 10.0 + processing 10.5 + encode 6.8 + network 0.3 + jitter buffer 12.0 + decode 0.05 + playback 2.4 = 42.0 ms"
        );
        // The JSON field names are the keys, so the stats file, the CSV and the tests agree.
        let json = serde_json::to_value(s).unwrap();
        for stage in Stage::ALL {
            assert_eq!(json[stage.key()].as_f64(), Some(s.get(stage)), "{stage:?}");
        }
        let back: LatencyStages = serde_json::from_value(json).unwrap();
        assert_eq!(back, s);
    }
}
