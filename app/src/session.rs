//! A live call as one handle: the QUIC connection, the control session, the engine and the
//! audio backend. The headless `natter call` and the desktop app both drive calls through it;
//! it owns no policy about when a call ends.

use crate::audio::device::{CpalDevice, DeviceChoice};
use crate::audio::ring_pair;
pub use crate::audio::wav::Record;
use crate::audio::wav::{DEFAULT_PERIOD, WavDevice};
use crate::engine::{Engine, EngineCommand, EngineConfig, EngineStats, Inbound, MediaLink};
use crate::transport::control::{self, CallState, Command, JoinRequest, Joined};
use crate::transport::{ConnectError, connect};
use natter_proto::control::ErrorCode;
use natter_proto::invite::Invite;
use quinn::{Connection, Endpoint};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Where the call's audio comes from and goes to.
pub enum Audio {
    /// A WAV "device": `input` as the microphone (silence after it), for `total_samples`,
    /// recording the speaker as `record` says.
    Wav {
        input: Vec<f32>,
        total_samples: usize,
        record: Record,
    },
    /// Sound-card devices, for `duration` or until left.
    Devices {
        choice: DeviceChoice,
        duration: Option<Duration>,
    },
}

/// What to join and how.
pub struct SessionConfig {
    pub invite: Invite,
    pub room: String,
    pub name: String,
    /// Ask the relay to send our own audio back.
    pub echo: bool,
    pub audio: Audio,
    /// Engine settings; the SSRC is filled in from the relay's Welcome.
    pub engine: EngineConfig,
}

enum Backend {
    Wav(WavDevice),
    Device {
        device: CpalDevice,
        until: Option<Instant>,
        started_unix_us: u64,
    },
}

/// How a call went, once left.
pub struct Finished {
    pub stats: EngineStats,
    pub state: CallState,
    /// The WAV backend's recording in memory (empty with devices or unless asked for).
    pub recording: Vec<f32>,
    /// Why the recording file could not be completed, if it could not.
    pub recording_error: Option<String>,
    /// Wall clock of sample 0 of the input and the recording, µs since the Unix epoch.
    pub audio_start_unix_us: u64,
    pub duration: Duration,
    /// Why the relay ended the call, if it did.
    pub ended_by_relay: Option<String>,
    /// The call ended because the connection to the relay was lost (it died, or the network
    /// did), not because the relay closed it.
    pub relay_lost: bool,
}

/// A call in progress.
pub struct Session {
    pub joined: Joined,
    engine: Engine,
    backend: Backend,
    state: Arc<Mutex<CallState>>,
    commands: mpsc::UnboundedSender<Command>,
    control: Option<JoinHandle<Result<(), ConnectError>>>,
    ended: Option<String>,
    /// How the relay ended the call: the code it closed with, or `None` with `ended` set when
    /// the connection was lost.
    ended_code: Option<ErrorCode>,
    /// The call ended because the connection was lost (no close from the relay).
    relay_lost: bool,
    reader: JoinHandle<()>,
    conn: Connection,
    endpoint: Endpoint,
    started: Instant,
    /// Feeds the engine new ring ends: the device backend's rebuilds, and device switches.
    device_switch: Option<std::sync::mpsc::Sender<crate::audio::EngineEnds>>,
}

/// Forwards a device backend's rebuilt ring ends to the engine until the backend stops.
fn forward_rebuilds(
    from: std::sync::mpsc::Receiver<crate::audio::EngineEnds>,
    to: std::sync::mpsc::Sender<crate::audio::EngineEnds>,
) {
    let _ = std::thread::Builder::new()
        .name("natter-device-fwd".into())
        .spawn(move || {
            for ends in from {
                if to.send(ends).is_err() {
                    break;
                }
            }
        });
}

fn check_name(what: &str, name: &str) -> Result<(), ConnectError> {
    if natter_proto::control::valid_name(name) {
        Ok(())
    } else {
        Err(ConnectError::Invalid(format!(
            "invalid {what} {name:?}: use {}",
            natter_proto::control::NAME_RULE
        )))
    }
}

impl Session {
    /// Connects, joins and starts audio. Must be called inside a tokio runtime.
    pub async fn start(config: SessionConfig) -> anyhow::Result<Self> {
        // Names the relay would refuse are refused here, before any network traffic, with the
        // same words.
        check_name("room name", &config.room)?;
        check_name("display name", &config.name)?;
        let (endpoint, conn) = connect(&config.invite).await?;
        let request = JoinRequest {
            room: config.room.clone(),
            name: config.name.clone(),
            token: config.invite.token.clone(),
            echo: config.echo,
        };
        let (stream, joined, roster) = control::join(&conn, &request).await?;
        let mut initial = CallState::default();
        roster.into_iter().for_each(|p| initial.upsert(p));
        let state = Arc::new(Mutex::new(initial));
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let control = tokio::spawn(control::run(stream, state.clone(), commands_rx));

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
        let mut engine_config = config.engine;
        engine_config.ssrc = joined.ssrc;
        let mut device_switch = None;
        let (engine, backend) = match config.audio {
            Audio::Devices { choice, duration } => {
                let (device, ends, replacements) = CpalDevice::start(choice)?;
                tracing::info!(input = %device.input_name, output = %device.output_name, "audio devices");
                let (switch_tx, switch_rx) = std::sync::mpsc::channel();
                forward_rebuilds(replacements, switch_tx.clone());
                device_switch = Some(switch_tx);
                let engine = Engine::start(engine_config, ends, Some(switch_rx), link)?;
                let backend = Backend::Device {
                    device,
                    until: duration.map(|d| Instant::now() + d),
                    started_unix_us: natter_relay::core::unix_micros(),
                };
                (engine, backend)
            }
            Audio::Wav {
                input,
                total_samples,
                record,
            } => {
                let (device_ends, engine_ends) = ring_pair();
                let engine = Engine::start(engine_config, engine_ends, None, link)?;
                let wav =
                    WavDevice::start(input, total_samples, record, DEFAULT_PERIOD, device_ends);
                (engine, Backend::Wav(wav))
            }
        };
        Ok(Self {
            joined,
            engine,
            backend,
            state,
            commands,
            control: Some(control),
            ended: None,
            ended_code: None,
            relay_lost: false,
            reader,
            conn,
            endpoint,
            started: Instant::now(),
            device_switch,
        })
    }

    /// Switches to other sound-card devices mid-call; the engine takes the new streams at its
    /// next tick. On error the current devices stay. Opening devices blocks for a moment: call
    /// it off any UI thread. Returns the input and output names in use.
    pub fn switch_devices(&mut self, choice: DeviceChoice) -> anyhow::Result<(String, String)> {
        let (Backend::Device { device, .. }, Some(switch)) =
            (&mut self.backend, &self.device_switch)
        else {
            anyhow::bail!("this call does not use sound-card devices");
        };
        let (new, ends, replacements) = CpalDevice::start(choice)?;
        let names = (new.input_name.clone(), new.output_name.clone());
        switch
            .send(ends)
            .map_err(|_| anyhow::anyhow!("the engine has stopped"))?;
        forward_rebuilds(replacements, switch.clone());
        // Dropping the old device stops its streams and its forwarder.
        *device = new;
        tracing::info!(input = %names.0, output = %names.1, "switched audio devices");
        Ok(names)
    }

    /// Names of the sound-card input and output in use (`None` with a WAV backend).
    pub fn device_names(&self) -> Option<(String, String)> {
        match &self.backend {
            Backend::Device { device, .. } => {
                Some((device.input_name.clone(), device.output_name.clone()))
            }
            Backend::Wav(_) => None,
        }
    }

    /// Engine statistics with peers named from the roster.
    pub fn stats(&self) -> EngineStats {
        let mut stats = self.engine.stats();
        let state = self.state();
        name_from_roster(&state, &mut stats);
        stats
    }

    /// Roster, relay RTT and how the call ended, if it did.
    pub fn state(&self) -> CallState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Mutes or unmutes the microphone and tells the room.
    pub fn set_muted(&self, muted: bool) {
        self.engine.set_muted(muted);
        let _ = self.commands.send(Command::SetMute(muted));
    }

    /// Changes engine settings (voice processing, voice activation) live.
    pub fn command(&self, command: EngineCommand) {
        self.engine.command(command);
    }

    /// True when a timed audio source has run out (WAV length or device duration).
    pub fn audio_finished(&self) -> bool {
        match &self.backend {
            Backend::Wav(w) => w.finished(),
            Backend::Device { until, .. } => until.is_some_and(|u| Instant::now() >= u),
        }
    }

    /// Why the relay ended the call, once it has.
    pub fn ended_by_relay(&self) -> Option<&str> {
        self.ended.as_deref()
    }

    /// The code the relay closed the call with, if it closed it (rather than the connection
    /// being lost).
    pub fn ended_code(&self) -> Option<ErrorCode> {
        self.ended_code
    }

    /// Waits until the relay ends the call (or the control session fails). Cancel-safe.
    pub async fn wait_ended(&mut self) {
        let Some(control) = self.control.as_mut() else {
            return std::future::pending().await;
        };
        let result = control.await;
        // The handle is finished: it must not be awaited again.
        self.control = None;
        match &result {
            Ok(Err(ConnectError::Refused { code, .. })) => self.ended_code = Some(*code),
            Ok(Err(ConnectError::Lost(_))) => self.relay_lost = true,
            _ => {}
        }
        self.ended = Some(match result {
            Ok(Err(e)) => e.to_string(),
            _ => "the relay closed the control stream".into(),
        });
    }

    /// Wall clock of sample 0 of the audio, µs since the Unix epoch.
    pub fn audio_start_unix_us(&self) -> u64 {
        match &self.backend {
            Backend::Wav(w) => w.started_unix_us(),
            Backend::Device {
                started_unix_us, ..
            } => *started_unix_us,
        }
    }

    /// Stops audio, says Leave, closes the connection and reports.
    pub async fn leave(self) -> Finished {
        let audio_start_unix_us = self.audio_start_unix_us();
        let (recording, recording_error) = match self.backend {
            Backend::Wav(w) => match w.finish() {
                Ok(recording) => (recording, None),
                Err(e) => (Vec::new(), Some(format!("{e:#}"))),
            },
            Backend::Device { device, .. } => {
                drop(device);
                (Vec::new(), None)
            }
        };
        let mut stats = self.engine.stop();
        let _ = self.commands.send(Command::Leave);
        if let Some(control) = self.control {
            let _ = tokio::time::timeout(Duration::from_secs(1), control).await;
        }
        self.reader.abort();
        self.conn.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        name_from_roster(&state, &mut stats);
        Finished {
            stats,
            relay_lost: self.relay_lost,
            ended_by_relay: self.ended.or(state.ended.clone()),
            state,
            recording,
            recording_error,
            audio_start_unix_us,
            duration: self.started.elapsed(),
        }
    }
}

/// Names the peers and listeners in engine `stats` from the roster (the engine only knows
/// SSRCs; the transport knows who they are).
fn name_from_roster(state: &CallState, stats: &mut EngineStats) {
    for peer in &mut stats.peers {
        peer.name = state.name_of(peer.ssrc).map(str::to_string);
    }
    for listener in &mut stats.listeners {
        listener.name = state.name_of(listener.ssrc).map(str::to_string);
    }
}
