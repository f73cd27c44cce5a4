//! `natter call`: a whole call with WAV files as microphone and speaker.
//!
//! The shell that testers, bots and the end-to-end tests use: a [`Session`] on a
//! real-time-paced WAV device (or sound-card devices) for the requested duration, then leave
//! and report. A lost relay is rejoined for up to `--reconnect-for` seconds (the session's
//! policy); the call carries on meanwhile, its audio continuing where it was.

use crate::audio::SAMPLE_RATE;
use crate::audio::device::DeviceChoice;
use crate::audio::wav::{WavFile, read_wav};
use crate::engine::{EngineConfig, EngineStats};
use crate::history::{History, Sample};
use crate::session::{Audio, Input, Record, Session, SessionConfig, StartError};
use crate::transport::control::{CallState, ChatLine};
use anyhow::Context;
use natter_proto::invite::Invite;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Longest call: without `--input` or `--duration` a call lasts until Ctrl-C, SIGTERM or this.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Longest call recorded to `--output`: a WAV file holds at most 4 GiB, 12.4 h of 48 kHz
/// 16-bit mono.
pub const MAX_FILE_DURATION: Duration = Duration::from_secs(12 * 3600);

/// Longest call that keeps its recording in memory (192 kB a second: 4 h take 2.8 GB).
pub const MAX_MEMORY_DURATION: Duration = Duration::from_secs(4 * 3600);

/// What `natter call` was asked to do.
#[derive(Debug, Clone)]
pub struct CallOptions {
    pub invite: Invite,
    pub room: String,
    pub name: String,
    pub input: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub duration: Option<Duration>,
    /// How long to keep trying to rejoin after losing the relay (zero: the call ends).
    pub reconnect_for: Duration,
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
    /// Write the latency meter's history (every [`HISTORY_PERIOD`]) here as CSV.
    pub latency_csv: Option<PathBuf>,
    /// Keep what the speaker played in [`CallReport::recording`] (implied by `output`).
    pub keep_recording: bool,
    /// Chat messages to send once in the room, in order.
    pub chat: Vec<String>,
}

/// How often `--latency-csv` samples the meter: fine enough to line each sample up with a
/// chirp of the latency probe.
pub const HISTORY_PERIOD: Duration = Duration::from_millis(100);

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
    /// It ended because the connection to the relay was lost (the relay died or the network
    /// did), not because the relay ended it.
    pub relay_lost: bool,
    /// The room's chat as this call saw it (the last 200 lines).
    pub chat: Vec<ChatLine>,
    /// Every edge the call was on, in order (`host:port`; one for a lone relay).
    pub edges: Vec<String>,
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
                "  peer {:?} (ssrc {:08x}): received {}, lost {}, late {}, concealed {}, fec-recovered {}, dred-recovered {}, jitter {:.2} ms, RTT {}, jitter buffer {:.1} ms (target {:.1} ms)\n",
                p.name.as_deref().unwrap_or("?"),
                p.ssrc,
                p.packets_received,
                p.packets_lost,
                p.late,
                p.concealed,
                p.fec_recovered,
                p.dred_recovered,
                p.jitter_ms,
                match p.rtt_ms {
                    // RTT comes from their reports on our stream (RFC 3550 §6.4.1).
                    None if self.engine.packets_sent == 0 =>
                        "n/a (we sent no audio to report on)".into(),
                    rtt => fmt_ms(rtt),
                },
                p.jitter_buffer_ms,
                p.jitter_buffer_target_ms
            );
            let st = &p.stages;
            out += &format!(
                "    latency stages{}: {}\n",
                if st.complete {
                    ""
                } else {
                    " (sender's part not yet reported)"
                },
                st.breakdown(1)
            );
        }
        if self.engine.peers.is_empty() {
            out += "  no audio received\n";
        }
        for l in &self.engine.listeners {
            out += &format!(
                "  listener {:?} (ssrc {:08x}) reports: RTT {}, lost {:.1} %, jitter {:.2} ms\n",
                l.name.as_deref().unwrap_or("?"),
                l.ssrc,
                fmt_ms(l.rtt_ms),
                l.loss_pct,
                l.jitter_ms
            );
        }
        out
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |v| format!("{v:.2} ms"))
}

/// `-` for `--input`/`--output`: standard input or output, as raw PCM.
pub fn is_stdio(path: &std::path::Path) -> bool {
    path.as_os_str() == "-"
}

/// Runs a call to completion. Must be called inside a tokio runtime. The error says whose it
/// is: the invite's or the relay's ([`StartError::Connect`]: `natter call` exits 2) or a
/// local one (files, devices, options: exit 1).
pub async fn run(opts: CallOptions) -> Result<CallReport, StartError> {
    let frame_samples = match opts.frame_ms {
        10 | 20 | 40 | 60 => opts.frame_ms as usize * SAMPLE_RATE as usize / 1000,
        other => {
            return Err(
                anyhow::anyhow!("frame length must be 10, 20, 40 or 60 ms, not {other}").into(),
            );
        }
    };
    // Read the input before touching the network, so a bad file fails fast. `-` is a live
    // stream of raw PCM on standard input, paced as it plays.
    let input = match &opts.input {
        Some(path) if is_stdio(path) => Some(Input::Stream(
            crate::audio::stream::pcm_reader(std::io::stdin())
                .context("cannot read standard input")?,
        )),
        Some(path) => Some(Input::Samples(read_wav(path)?)),
        None => None,
    };
    let (longest, why) = match (&opts.devices, &opts.output) {
        (Some(_), _) => (MAX_DURATION, ""),
        (None, Some(path)) if is_stdio(path) => (MAX_DURATION, ""),
        (None, Some(_)) => (
            MAX_FILE_DURATION,
            " with --output (a WAV file holds 12.4 h)",
        ),
        (None, None) if opts.keep_recording => (MAX_MEMORY_DURATION, " recording to memory"),
        (None, None) => (MAX_DURATION, ""),
    };
    let duration = match (opts.duration, &input) {
        (Some(d), _) if d > longest => {
            return Err(anyhow::anyhow!("--duration: at most {} s{why}", longest.as_secs()).into());
        }
        (Some(d), _) => d,
        (None, Some(Input::Samples(samples))) => {
            Duration::from_secs_f64(samples.len() as f64 / f64::from(SAMPLE_RATE))
                + Duration::from_secs(2)
        }
        // A stream lasts until it ends.
        (None, Some(Input::Stream(_)) | None) => longest,
    };
    let mut engine = EngineConfig::new(0);
    // 10 and 20 ms name a mode the rate controller adapts within; 40/60 ms are explicit.
    let pin = opts.pin_frame || !matches!(opts.frame_ms, 10 | 20);
    engine.pinned_frame_samples = pin.then_some(frame_samples);
    if opts.frame_ms == 10 {
        engine.mode = crate::rate::FrameMode::LowLatency;
    }
    engine.send_audio = input.is_some() || opts.devices.is_some();
    // A file is not a microphone in a room: no echo to cancel, no noise to learn.
    engine.voice = opts.voice.unwrap_or(if opts.devices.is_some() {
        crate::apm::VoiceConfig::ALL
    } else {
        crate::apm::VoiceConfig::NONE
    });
    engine.voice_activation = opts.voice_activation;
    // The speaker goes to the file as it plays (created now, so a bad path fails before the
    // call), or to memory for whoever analyses it afterwards.
    let record = match &opts.output {
        Some(path) if is_stdio(path) => Record::Pcm(Box::new(std::io::stdout())),
        Some(path) => Record::File(WavFile::create(path)?),
        None if opts.keep_recording => Record::Memory,
        None => Record::Nothing,
    };
    let audio = match &opts.devices {
        Some(choice) => Audio::Devices {
            choice: choice.clone(),
            duration: Some(duration),
        },
        None => Audio::Wav {
            input: input.unwrap_or(Input::Samples(Vec::new())),
            total_samples: (duration.as_secs_f64() * f64::from(SAMPLE_RATE)) as usize,
            record,
        },
    };
    let mut session = Session::start(SessionConfig {
        invite: opts.invite.clone(),
        room: opts.room.clone(),
        name: opts.name.clone(),
        echo: opts.echo,
        audio,
        engine,
        reconnect_for: Some(opts.reconnect_for),
    })
    .await?;

    for text in &opts.chat {
        session.send_chat(text.clone());
    }
    let mut chat_printed = 0;
    let mut edges = Vec::new();
    note_edge(&session, &mut edges);
    let mut history = History::keeping(f64::INFINITY);
    let mut next_sample = Instant::now();
    // SIGTERM (`kill`, `timeout`, a service manager) ends the call as cleanly as Ctrl-C: the
    // recording, stats and meter history are still written.
    let mut terminate = terminate_signal()?;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                if session.audio_finished() {
                    break;
                }
                chat_printed = print_chat(&session.state(), chat_printed);
                note_edge(&session, &mut edges);
                if opts.latency_csv.is_some() && Instant::now() >= next_sample {
                    next_sample += HISTORY_PERIOD;
                    sample_history(&session, &mut history);
                }
            }
            _ = session.wait_ended() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    let joined = session.joined();
    let done = session.leave().await;
    print_chat(&done.state, chat_printed);
    if let Some(e) = &done.recording_error {
        return Err(anyhow::anyhow!("{e}").into());
    }
    if let Some(path) = &opts.latency_csv {
        std::fs::write(path, history.to_csv())
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(CallReport {
        room: joined.room,
        participant_id: joined.participant_id,
        ssrc: joined.ssrc,
        audio_start_unix_us: done.audio_start_unix_us,
        duration_s: done.duration.as_secs_f64(),
        relay_rtt_ms: done.state.relay_rtt_ms,
        ended_by_relay: done.ended_by_relay,
        relay_lost: done.relay_lost,
        chat: done.state.chat.iter().cloned().collect(),
        edges,
        engine: done.stats,
        recording: done.recording,
    })
}

#[cfg(unix)]
fn terminate_signal() -> anyhow::Result<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::terminate()).context("cannot listen for SIGTERM")
}

/// Elsewhere there is no SIGTERM: a stream of signals that never comes.
#[cfg(not(unix))]
fn terminate_signal() -> anyhow::Result<NoSignal> {
    Ok(NoSignal)
}

#[cfg(not(unix))]
struct NoSignal;

#[cfg(not(unix))]
impl NoSignal {
    async fn recv(&mut self) -> Option<()> {
        std::future::pending().await
    }
}

/// Notes the session's edge in `edges` when it is a new one, and says so on standard error
/// when the call has a choice of edges (`edge HOST:PORT: handshake N ms, nearest of K`).
fn note_edge(session: &Session, edges: &mut Vec<String>) {
    let edge = session.edge();
    let at = edge.invite.authority();
    if edges.last() == Some(&at) {
        return;
    }
    if edge.candidates > 1 {
        eprintln!(
            "edge {at}: handshake {:.1} ms, nearest of {}",
            edge.handshake.as_secs_f64() * 1e3,
            edge.candidates
        );
    }
    edges.push(at);
}

/// Prints the room's chat lines that arrived since `printed` (a count of lines ever added) to
/// standard error, where they do not mix with audio on standard output; returns the new
/// count. Control characters are escaped: a member must not be able to drive our terminal.
fn print_chat(state: &CallState, printed: u64) -> u64 {
    let new = state.chat_count.saturating_sub(printed) as usize;
    let skip = state.chat.len().saturating_sub(new);
    for line in state.chat.iter().skip(skip).filter(|l| !l.own) {
        eprintln!("chat {}: {}", printable(&line.from), printable(&line.text));
    }
    state.chat_count
}

/// `text` with control characters (newlines included) escaped.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// Adds one sample per peer whose stages are complete, timed in seconds since sample 0 of the
/// audio (the recording's time axis).
fn sample_history(session: &Session, history: &mut History) {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    let Some(since_us) = now_us.checked_sub(session.audio_start_unix_us()) else {
        return;
    };
    let t = since_us as f64 / 1e6;
    for peer in session.stats().peers {
        if peer.stages.complete {
            let name = peer
                .name
                .clone()
                .unwrap_or_else(|| format!("{:08x}", peer.ssrc));
            history.push(&name, Sample::from_peer(t, &peer));
        }
    }
}

/// Writes the report as JSON.
pub fn write_stats_json(report: &CallReport, path: &std::path::Path) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))
}
