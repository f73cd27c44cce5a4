//! `natter call`: a whole call with WAV files as microphone and speaker.
//!
//! The shell that testers, bots and the end-to-end tests use: connect, join, run the engine
//! against a real-time-paced WAV device for the requested duration, then leave and report.

use crate::audio::device::{CpalDevice, DeviceChoice};
use crate::audio::wav::{DEFAULT_PERIOD, WavDevice, read_wav, write_wav};
use crate::audio::{SAMPLE_RATE, ring_pair};
use crate::engine::{Engine, EngineConfig, EngineStats, Inbound, MediaLink};
use crate::transport::control::{self, CallState, Command, JoinRequest};
use crate::transport::{ConnectError, connect};
use anyhow::Context;
use natter_proto::invite::Invite;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Longest call without input or duration (the recording is reserved, not committed, memory).
const MAX_OPEN_ENDED: Duration = Duration::from_secs(3600);

/// What `natter call` was asked to do.
#[derive(Debug, Clone)]
pub struct CallOptions {
    pub invite: Invite,
    pub room: String,
    pub name: String,
    pub input: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub duration: Option<Duration>,
    pub echo: bool,
    /// Opus frame length in ms (10, 20, 40 or 60); 10 selects the low-latency mode.
    pub frame_ms: u32,
    /// Keep `frame_ms` fixed instead of letting the rate controller adapt it.
    pub pin_frame: bool,
    /// Use sound-card devices instead of WAV files.
    pub devices: Option<DeviceChoice>,
    /// Voice processing stages; `None` = all for devices, none for files.
    pub voice: Option<crate::apm::VoiceConfig>,
    /// Send only while the VAD hears voice.
    pub voice_activation: bool,
}

/// The audio backend a call runs on.
enum Backend {
    Wav(WavDevice),
    Device {
        device: CpalDevice,
        until: Instant,
        started_unix_us: u64,
    },
}

impl Backend {
    fn finished(&self) -> bool {
        match self {
            Self::Wav(w) => w.finished(),
            Self::Device { until, .. } => Instant::now() >= *until,
        }
    }

    fn started_unix_us(&self) -> u64 {
        match self {
            Self::Wav(w) => w.started_unix_us(),
            Self::Device {
                started_unix_us, ..
            } => *started_unix_us,
        }
    }

    /// Stops the audio; returns the recording (WAV backend only).
    fn finish(self) -> Vec<f32> {
        match self {
            Self::Wav(w) => w.finish(),
            Self::Device { device, .. } => {
                drop(device);
                Vec::new()
            }
        }
    }
}

/// What happened, for printing and JSON.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CallReport {
    pub room: String,
    pub participant_id: u64,
    pub ssrc: u32,
    /// Wall clock of sample 0 of the input and the recording (µs since the Unix epoch).
    pub audio_start_unix_us: u64,
    pub duration_s: f64,
    pub relay_rtt_ms: Option<f64>,
    /// Why the call ended early, if it did.
    pub ended_by_relay: Option<String>,
    #[serde(flatten)]
    pub engine: EngineStats,
    #[serde(skip)]
    pub recording: Vec<f32>,
}

impl CallReport {
    /// Human-readable per-peer lines.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "call in room {:?} as participant {} (ssrc {:08x}): sent {} packets ({} bytes) in {:.1} s, relay RTT {}\n",
            self.room,
            self.participant_id,
            self.ssrc,
            self.engine.packets_sent,
            self.engine.bytes_sent,
            self.duration_s,
            fmt_ms(self.relay_rtt_ms)
        );
        for p in &self.engine.peers {
            out += &format!(
                "  peer {:?} (ssrc {:08x}): received {}, lost {}, late {}, concealed {}, fec-recovered {}, jitter {:.2} ms, RTT {}, jitter buffer {:.1} ms (target {:.1} ms)\n",
                p.name.as_deref().unwrap_or("?"),
                p.ssrc,
                p.packets_received,
                p.packets_lost,
                p.late,
                p.concealed,
                p.fec_recovered,
                p.jitter_ms,
                fmt_ms(p.rtt_ms),
                p.jitter_buffer_ms,
                p.jitter_buffer_target_ms
            );
            let st = &p.stages;
            out += &format!(
                "    latency stages{}: capture {:.1} + processing {:.1} + encode {:.1} + network {:.1} + jitter buffer {:.1} + decode {:.2} + playback {:.1} = {:.1} ms\n",
                if st.complete {
                    ""
                } else {
                    " (sender's part not yet reported)"
                },
                st.capture_ms,
                st.processing_ms,
                st.encode_ms,
                st.network_ms,
                st.jitter_buffer_ms,
                st.decode_ms,
                st.playback_ms,
                st.total_ms
            );
        }
        if self.engine.peers.is_empty() {
            out += "  no audio received\n";
        }
        out
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.2} ms"))
}

/// Runs a call to completion. Must be called inside a tokio runtime.
pub async fn run(opts: CallOptions) -> anyhow::Result<CallReport> {
    let frame_samples = match opts.frame_ms {
        10 | 20 | 40 | 60 => opts.frame_ms as usize * SAMPLE_RATE as usize / 1000,
        other => anyhow::bail!("frame length must be 10, 20, 40 or 60 ms, not {other}"),
    };
    // Read the input before touching the network, so a bad file fails fast.
    let input = match &opts.input {
        Some(path) => Some(read_wav(path)?),
        None => None,
    };
    let duration = opts.duration.unwrap_or_else(|| match &input {
        Some(samples) => {
            Duration::from_secs_f64(samples.len() as f64 / f64::from(SAMPLE_RATE))
                + Duration::from_secs(2)
        }
        None => MAX_OPEN_ENDED,
    });

    // Names the relay would refuse are refused here, before any network traffic, with the
    // same words.
    if !natter_proto::control::valid_name(&opts.room) {
        return Err(ConnectError::Invalid(format!(
            "invalid room name {:?}: use 1-{} bytes without control characters",
            opts.room,
            natter_proto::control::MAX_NAME_LEN
        ))
        .into());
    }
    if !natter_proto::control::valid_name(&opts.name) {
        return Err(ConnectError::Invalid(format!(
            "invalid display name {:?}: use 1-{} bytes without control characters",
            opts.name,
            natter_proto::control::MAX_NAME_LEN
        ))
        .into());
    }
    let (endpoint, conn) = connect(&opts.invite).await?;
    let request = JoinRequest {
        room: opts.room.clone(),
        name: opts.name.clone(),
        token: opts.invite.token.clone(),
        echo: opts.echo,
    };
    let (stream, joined, roster) = control::join(&conn, &request).await?;
    let mut initial = CallState::default();
    roster.into_iter().for_each(|p| initial.upsert(p));
    let state = Arc::new(Mutex::new(initial));
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let session = tokio::spawn(control::run(stream, state.clone(), commands_rx));

    let (inbound_tx, inbound_rx) = std::sync::mpsc::channel();
    let reader = {
        let conn = conn.clone();
        tokio::spawn(async move {
            while let Ok(datagram) = conn.read_datagram().await {
                let inbound = Inbound {
                    datagram: datagram.to_vec(),
                    at: Instant::now(),
                };
                if inbound_tx.send(inbound).is_err() {
                    break;
                }
            }
        })
    };
    let send_conn = conn.clone();
    let link = MediaLink {
        send: Box::new(move |d: &[u8]| {
            // Dropped if the path cannot take it: real-time audio is never queued for long.
            let _ = send_conn.send_datagram(bytes::Bytes::copy_from_slice(d));
        }),
        recv: inbound_rx,
    };
    let mut config = EngineConfig::new(joined.ssrc);
    // 10 and 20 ms name a mode the rate controller adapts within; 40/60 ms are explicit.
    let pin = opts.pin_frame || !matches!(opts.frame_ms, 10 | 20);
    config.pinned_frame_samples = pin.then_some(frame_samples);
    if opts.frame_ms == 10 {
        config.mode = crate::rate::FrameMode::LowLatency;
    }
    config.send_audio = input.is_some() || opts.devices.is_some();
    // A file is not a microphone in a room: no echo to cancel, no noise to learn.
    config.voice = opts.voice.unwrap_or(if opts.devices.is_some() {
        crate::apm::VoiceConfig::ALL
    } else {
        crate::apm::VoiceConfig::NONE
    });
    config.voice_activation = opts.voice_activation;
    let (engine, device) = match &opts.devices {
        Some(choice) => {
            let (device, ends, replacements) = CpalDevice::start(choice.clone())?;
            tracing::info!(input = %device.input_name, output = %device.output_name, "audio devices");
            let engine = Engine::start(config, ends, Some(replacements), link)?;
            let backend = Backend::Device {
                device,
                until: Instant::now() + duration,
                started_unix_us: natter_relay::core::unix_micros(),
            };
            (engine, backend)
        }
        None => {
            let (device_ends, engine_ends) = ring_pair();
            let engine = Engine::start(config, engine_ends, None, link)?;
            let total = (duration.as_secs_f64() * f64::from(SAMPLE_RATE)) as usize;
            let wav = WavDevice::start(
                input.unwrap_or_default(),
                total,
                DEFAULT_PERIOD,
                device_ends,
            );
            (engine, Backend::Wav(wav))
        }
    };
    let started = Instant::now();

    let mut ended_by_relay = None;
    let mut session = Some(session);
    while let Some(running) = session.as_mut() {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                if device.finished() {
                    break;
                }
            }
            result = running => {
                // The handle is finished: it must not be awaited again below.
                session = None;
                ended_by_relay = Some(match result {
                    Ok(Err(e)) => e.to_string(),
                    _ => "the relay closed the control stream".into(),
                });
                break;
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    let audio_start_unix_us = device.started_unix_us();
    let recording = device.finish();
    let mut engine_stats = engine.stop();
    let _ = commands.send(Command::Leave);
    if let Some(session) = session {
        let _ = tokio::time::timeout(Duration::from_secs(1), session).await;
    }
    reader.abort();
    conn.close(0u32.into(), b"bye");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;

    let state = state.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for peer in &mut engine_stats.peers {
        peer.name = state.name_of(peer.ssrc).map(str::to_string);
    }
    if let Some(path) = &opts.output {
        write_wav(path, &recording)?;
    }
    Ok(CallReport {
        room: joined.room,
        participant_id: joined.participant_id,
        ssrc: joined.ssrc,
        audio_start_unix_us,
        duration_s: started.elapsed().as_secs_f64(),
        relay_rtt_ms: state.relay_rtt_ms,
        ended_by_relay: ended_by_relay.or(state.ended),
        engine: engine_stats,
        recording,
    })
}

/// Writes the report as JSON.
pub fn write_stats_json(report: &CallReport, path: &std::path::Path) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))
}

/// True when the error is one the user caused by the invite or the relay's answer (exit code
/// 2) rather than a local failure.
pub fn is_connect_error(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ConnectError>().is_some()
}
