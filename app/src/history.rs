//! Latency history: per-participant samples of the stage breakdown over time, for the desktop
//! app's scrolling plot and CSV export and for `natter call --latency-csv`. Plain data, shared
//! by both shells so that what a tester exports headless is what the meter shows.

use crate::engine::receive::PeerStats;
use crate::latency_stages::{LatencyStages, Stage};
use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

/// The desktop app forgets samples older than this (10 minutes).
pub const KEEP_SECONDS: f64 = 600.0;

/// One participant's latency at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the history started.
    pub t: f64,
    /// Where the mouth-to-ear latency went; `total_ms` is the sum.
    pub stages: LatencyStages,
    pub rtt_ms: Option<f64>,
    pub jitter_ms: f64,
    pub packets_lost: i64,
    pub fec_recovered: u64,
    pub dred_recovered: u64,
    pub concealed: u64,
}

impl Sample {
    pub fn from_peer(t: f64, p: &PeerStats) -> Self {
        Self {
            t,
            stages: p.stages,
            rtt_ms: p.rtt_ms,
            jitter_ms: p.jitter_ms,
            packets_lost: p.packets_lost,
            fec_recovered: p.fec_recovered,
            dred_recovered: p.dred_recovered,
            concealed: p.concealed,
        }
    }
}

/// Samples per participant (by display name), oldest first.
#[derive(Debug, Clone)]
pub struct History {
    pub series: BTreeMap<String, VecDeque<Sample>>,
    /// Samples older than this many seconds (relative to the newest) are dropped.
    keep_seconds: f64,
}

impl Default for History {
    fn default() -> Self {
        Self::keeping(KEEP_SECONDS)
    }
}

impl History {
    /// A history that keeps `keep_seconds` (`f64::INFINITY`: the whole call).
    pub fn keeping(keep_seconds: f64) -> Self {
        Self {
            series: BTreeMap::new(),
            keep_seconds,
        }
    }

    pub fn clear(&mut self) {
        self.series.clear();
    }

    /// Adds a sample for `name` and drops what has left the window.
    pub fn push(&mut self, name: &str, sample: Sample) {
        let series = self.series.entry(name.to_string()).or_default();
        series.push_back(sample);
        while series
            .front()
            .is_some_and(|s| sample.t - s.t > self.keep_seconds)
        {
            series.pop_front();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.series.values().all(VecDeque::is_empty)
    }

    /// Every sample as CSV, one row per participant and time, with a header.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("time_s,participant,mouth_to_ear_ms");
        for stage in Stage::ALL {
            let _ = write!(out, ",{}", stage.key());
        }
        out.push_str(",rtt_ms,jitter_ms,packets_lost,fec_recovered,dred_recovered,concealed\n");
        for (name, series) in &self.series {
            for s in series {
                let _ = write!(
                    out,
                    "{:.2},{},{:.2}",
                    s.t,
                    csv_field(name),
                    s.stages.total_ms
                );
                for stage in Stage::ALL {
                    // Decoding takes microseconds: one more decimal for it.
                    let decimals = if stage == Stage::Decode { 3 } else { 2 };
                    let _ = write!(out, ",{:.*}", decimals, s.stages.get(stage));
                }
                let _ = writeln!(
                    out,
                    ",{},{:.2},{},{},{},{}",
                    s.rtt_ms.map(|r| format!("{r:.2}")).unwrap_or_default(),
                    s.jitter_ms,
                    s.packets_lost,
                    s.fec_recovered,
                    s.dred_recovered,
                    s.concealed
                );
            }
        }
        out
    }
}

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: f64, total: f64) -> Sample {
        Sample {
            t,
            stages: LatencyStages::from_values(
                [10.0, 10.5, 6.8, 0.3, total - 30.0, 0.05, 2.35],
                true,
            ),
            rtt_ms: Some(0.6),
            jitter_ms: 0.4,
            packets_lost: 0,
            fec_recovered: 0,
            dred_recovered: 0,
            concealed: 1,
        }
    }

    #[test]
    fn old_samples_are_dropped() {
        let mut h = History::default();
        for i in 0..700 {
            h.push("bob", sample(f64::from(i), 50.0));
        }
        let s = &h.series["bob"];
        assert_eq!(s.front().unwrap().t, 99.0);
        assert_eq!(s.back().unwrap().t, 699.0);
    }

    #[test]
    fn csv_has_a_header_and_one_row_per_sample_with_quoted_names() {
        let mut h = History::default();
        h.push("bob", sample(0.5, 50.0));
        h.push("Smith, \"Al\"", sample(0.5, 60.0));
        h.push("bob", sample(1.0, 51.0));
        let csv = h.to_csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("time_s,participant,mouth_to_ear_ms"));
        assert_eq!(lines[0].split(',').count(), 16);
        assert!(
            lines.contains(
                &"0.50,bob,50.00,10.00,10.50,6.80,0.30,20.00,0.050,2.35,0.60,0.40,0,0,0,1"
            )
        );
        assert!(csv.contains("\"Smith, \"\"Al\"\"\",60.00"));
    }
}
