//! The loopback latency test: a second session in the relay's echo mode with the chirp probe
//! as its microphone, measured against what the meter's stages add up to.

use super::actor::{Controller, frame_mode};
use super::contract::*;
use crate::apm::VoiceConfig;
use crate::audio::SAMPLE_RATE;
use crate::engine::EngineConfig;
use crate::session::{Audio, Record, Session, SessionConfig};
use natter_proto::invite::Invite;
use std::time::{Duration, Instant};

impl Controller {
    pub(super) fn start_latency_test(&mut self) {
        if self.latency.is_some() {
            return;
        }
        let Some(target) = &self.target else {
            self.update(|s| {
                s.latency_test =
                    LatencyTest::Failed("join a call first: the test runs through its relay".into())
            });
            return;
        };
        let mut invite = target.invite.clone();
        if invite.fingerprint.is_none() {
            invite.fingerprint = self.known.get(&invite.authority());
        }
        self.tests_run += 1;
        let room = format!(
            "latency-test-{}-{}-{}",
            std::process::id(),
            self.tests_run,
            crate::clock::unix_micros() % 1_000_000
        );
        let low_latency = self.settings.as_ref().is_some_and(|s| s.low_latency);
        self.update(|s| s.latency_test = LatencyTest::Running);
        self.latency = Some(tokio::spawn(async move {
            latency_test(invite, room, low_latency)
                .await
                .map_err(|e| format!("{e:#}"))
        }));
    }
}

/// Length of the chirp probe the latency test sends.
pub(super) const PROBE_SECONDS: f32 = 4.0;

/// The loopback test: a second session with `echo`, the chirp probe as its microphone; the
/// relay sends our audio back, and the recording's chirps give the measured round trip,
/// compared with what the latency meter's stages add up to for the same path.
pub(super) async fn latency_test(
    invite: Invite,
    room: String,
    low_latency: bool,
) -> anyhow::Result<LatencyResult> {
    let train = crate::measure::chirp_train(SAMPLE_RATE, PROBE_SECONDS, 500, 11);
    let mut engine = EngineConfig::new(0);
    engine.voice = VoiceConfig::NONE;
    engine.mode = frame_mode(low_latency);
    let total = train.samples.len() + SAMPLE_RATE as usize;
    let mut session = Session::start(SessionConfig {
        invite,
        room,
        name: "latency test".into(),
        echo: true,
        audio: Audio::Wav {
            input: train.samples.clone().into(),
            total_samples: total,
            record: Record::Memory,
        },
        engine,
        // A four-second measurement is not worth rejoining for: it fails and can be rerun.
        reconnect_for: Some(Duration::ZERO),
    })
    .await?;
    let ssrc = session.joined().ssrc;
    let mut estimate = None;
    let deadline = Instant::now() + Duration::from_secs_f32(PROBE_SECONDS + 10.0);
    while !session.audio_finished() && Instant::now() < deadline {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = session.wait_ended() => anyhow::bail!("the relay ended the test call"),
        }
        if let Some(p) = session.stats().peers.iter().find(|p| p.ssrc == ssrc)
            && p.stages.complete
        {
            estimate = Some(p.stages.total_ms);
        }
    }
    let done = session.leave().await;
    let lags = crate::measure::find_lags(&train, &done.recording, 1000.0, 0.5);
    let stats = crate::measure::LatencyStats::from_lags(&lags, train.onsets.len())
        .ok_or_else(|| anyhow::anyhow!("none of the chirps came back through the relay"))?;
    Ok(LatencyResult {
        measured_ms: stats.median_ms,
        p05_ms: stats.p05_ms,
        p95_ms: stats.p95_ms,
        chirps_found: stats.count,
        chirps_sent: stats.expected,
        estimate_ms: estimate,
    })
}
