//! A live call as one handle: the audio backend and the engine, which last as long as the
//! call, and the connection to the relay ([`link`]), which a supervisor task replaces when it
//! is lost — reconnecting and rejoining with backoff as the pure [`reconnect`] policy says.
//! The headless `natter call`, the desktop app's controller, its latency test and the tests
//! all drive calls through it; when a call ends is their choice, except that the session
//! itself gives up once its policy does.

pub mod link;
pub mod liveness;
pub mod nearest;
pub mod reconnect;

use crate::audio::device::{CpalDevice, DeviceChoice};
use crate::audio::ring_pair;
use crate::audio::wav::{DEFAULT_PERIOD, WavDevice};
pub use crate::audio::wav::{Input, Record};
use crate::engine::{Engine, EngineCommand, EngineConfig, EngineRemote, EngineStats, MediaLink};
use crate::transport::ConnectError;
use crate::transport::control::{CallState, Command, JoinRequest, Joined};
use crate::transport::path_spread::PathSpread;
pub use link::EdgeChoice;
use link::{Link, MediaPath};
use liveness::Liveness;
use natter_proto::invite::Invite;
pub use reconnect::LinkStatus;
use reconnect::{ReconnectPolicy, Verdict};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Where the call's audio comes from and goes to.
pub enum Audio {
    /// A WAV "device": `input` as the microphone (silence after it; a stream until it ends),
    /// for `total_samples`, recording the speaker as `record` says.
    Wav {
        input: Input,
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
    /// How long after losing the relay to keep trying to rejoin (`None`: until left; zero:
    /// never, the call ends with the connection).
    pub reconnect_for: Option<Duration>,
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
    /// did, and rejoining gave up), not because the relay closed it.
    pub relay_lost: bool,
}

/// Why a call could not start: the relay side (the user's to fix: a bad invite, an unreachable
/// or refusing relay — `natter call` exits 2) or this machine's (audio devices, the engine).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

impl StartError {
    /// The connection error, if that is what it was.
    pub fn connect_error(&self) -> Option<&ConnectError> {
        match self {
            Self::Connect(e) => Some(e),
            Self::Local(_) => None,
        }
    }
}

/// Why a session ended by itself.
#[derive(Debug, Clone)]
pub struct Ended {
    /// One line for the user.
    pub reason: String,
    /// The failure that made the policy give up.
    pub error: Arc<ConnectError>,
}

/// What the supervisor shares with the session's handle.
struct Shared {
    state: Arc<Mutex<CallState>>,
    joined: Mutex<Joined>,
    status: Mutex<LinkStatus>,
    /// The current link's QUIC endpoint, for [`Session::rebind`].
    endpoint: Mutex<quinn::Endpoint>,
    /// The edge the current (or last) link went to.
    edge: Mutex<EdgeChoice>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A call in progress.
pub struct Session {
    engine: Engine,
    backend: Backend,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    supervisor: Option<JoinHandle<Option<Ended>>>,
    ended: Option<Ended>,
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
    /// Connects, joins and starts audio. Must be called inside a tokio runtime. A failure to
    /// join the first time is returned as is (no retry: the invite or the relay is wrong, and
    /// the user should hear so at once), but for a reset: the relay answered, so it is up,
    /// and it reset a connection it had given up (a handshake whose end it never received,
    /// on a very lossy path, or a restart during the join), so the join is tried once more
    /// at once. Losses after that are the supervisor's.
    pub async fn start(config: SessionConfig) -> Result<Self, StartError> {
        // Names the relay would refuse are refused here, before any network traffic, with the
        // same words.
        check_name("room name", &config.room)?;
        check_name("display name", &config.name)?;
        let request = JoinRequest {
            room: config.room.clone(),
            name: config.name.clone(),
            token: config.invite.token.clone(),
            echo: config.echo,
        };
        let state = Arc::new(Mutex::new(CallState::default()));
        let (inbound_tx, inbound_rx) = std::sync::mpsc::channel();
        let candidates = config.invite.candidates();
        // Measured by every link's control session, read by the engine when a stream starts.
        let path_spread = PathSpread::default();
        let open = || {
            Link::open(
                &candidates,
                &request,
                &state,
                &path_spread,
                inbound_tx.clone(),
            )
        };
        let link = match open().await {
            Err(ConnectError::Reset) => {
                tracing::info!("the relay reset the first join; joining again");
                open().await?
            }
            first => first?,
        };
        let path: MediaPath = Arc::new(Mutex::new(Some(link.connection().clone())));
        let send_path = path.clone();
        let media = MediaLink {
            send: Box::new(move |d: &[u8]| link::send_datagram(&send_path, d)),
            recv: inbound_rx,
        };
        let mut engine_config = config.engine;
        engine_config.ssrc = link.joined.ssrc;
        engine_config.path_spread = path_spread.clone();
        let mut device_switch = None;
        let (engine, backend) = match config.audio {
            Audio::Devices { choice, duration } => {
                let (device, ends, replacements) = CpalDevice::start(choice)?;
                tracing::info!(input = %device.input_name, output = %device.output_name, "audio devices");
                let (switch_tx, switch_rx) = std::sync::mpsc::channel();
                forward_rebuilds(replacements, switch_tx.clone());
                device_switch = Some(switch_tx);
                let engine = Engine::start(engine_config, ends, Some(switch_rx), media)?;
                let backend = Backend::Device {
                    device,
                    until: duration.map(|d| Instant::now() + d),
                    started_unix_us: crate::clock::unix_micros(),
                };
                (engine, backend)
            }
            Audio::Wav {
                input,
                total_samples,
                record,
            } => {
                let (device_ends, engine_ends) = ring_pair();
                let engine = Engine::start(engine_config, engine_ends, None, media)?;
                let wav =
                    WavDevice::start(input, total_samples, record, DEFAULT_PERIOD, device_ends);
                (engine, Backend::Wav(wav))
            }
        };
        let shared = Arc::new(Shared {
            state,
            joined: Mutex::new(link.joined.clone()),
            status: Mutex::new(LinkStatus::Connected),
            endpoint: Mutex::new(link.endpoint().clone()),
            edge: Mutex::new(link.edge.clone()),
        });
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let supervisor = Supervisor {
            invite: config.invite,
            request,
            policy: ReconnectPolicy::new(config.reconnect_for),
            shared: shared.clone(),
            path,
            inbound: inbound_tx,
            engine: engine.remote(),
            muted: false,
            path_spread,
        };
        Ok(Self {
            engine,
            backend,
            shared,
            commands,
            supervisor: Some(tokio::spawn(supervisor.run(link, commands_rx))),
            ended: None,
            started: Instant::now(),
            device_switch,
        })
    }

    /// The relay's Welcome of the current (or last) membership: a rejoin brings a new
    /// participant id and SSRC.
    pub fn joined(&self) -> Joined {
        lock(&self.shared.joined).clone()
    }

    /// The edge the call is on (or was on last): where, how near, and out of how many.
    pub fn edge(&self) -> EdgeChoice {
        lock(&self.shared.edge).clone()
    }

    /// Moves the call to a new local UDP socket without leaving the room: QUIC connection
    /// migration. The relay validates the new path and carries on with the same connection,
    /// so nobody sees a leave or a rejoin. For a network change the OS reports (Wi-Fi to
    /// cellular, a new address) — a NAT that changes our port needs nothing at all, the relay
    /// follows by itself. Returns the new local address.
    pub fn rebind(&self) -> std::io::Result<std::net::SocketAddr> {
        let endpoint = lock(&self.shared.endpoint).clone();
        let bind: std::net::SocketAddr = if endpoint.local_addr()?.is_ipv6() {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        };
        endpoint.rebind(std::net::UdpSocket::bind(bind)?)?;
        endpoint.local_addr()
    }

    /// Connected, reconnecting (which attempt, and why), or given up.
    pub fn status(&self) -> LinkStatus {
        lock(&self.shared.status).clone()
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
        lock(&self.shared.state).clone()
    }

    /// Mutes or unmutes the microphone and tells the room (again after each rejoin).
    pub fn set_muted(&self, muted: bool) {
        self.engine.set_muted(muted);
        let _ = self.commands.send(Command::SetMute(muted));
    }

    /// Sends a chat message to the room. While the session is rejoining there is no room to
    /// send to: the message is dropped, and the call screen (which shows no call then) offers
    /// nothing to type into.
    pub fn send_chat(&self, text: String) {
        let _ = self.commands.send(Command::Chat(text));
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

    /// Why the session ended by itself, once it has.
    pub fn ended(&self) -> Option<&Ended> {
        self.ended.as_ref()
    }

    /// Why the relay ended the call, once it has.
    pub fn ended_by_relay(&self) -> Option<&str> {
        self.ended.as_ref().map(|e| e.reason.as_str())
    }

    /// Waits until the session ends by itself: the connection was lost and its reconnect
    /// policy gave up (at once, for a fatal refusal). Cancel-safe.
    pub async fn wait_ended(&mut self) {
        let Some(supervisor) = self.supervisor.as_mut() else {
            return std::future::pending().await;
        };
        let result = supervisor.await;
        // The handle is finished: it must not be awaited again.
        self.supervisor = None;
        self.ended = Some(match result {
            Ok(Some(ended)) => ended,
            Ok(None) => ended("the session stopped"),
            Err(e) => ended(&format!("the session failed: {e}")),
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
        let mut ended = self.ended;
        if let Some(supervisor) = self.supervisor {
            // Leaving takes a second at most per step (Leave, then the close).
            if let Ok(Ok(Some(e))) = tokio::time::timeout(Duration::from_secs(3), supervisor).await
            {
                ended = Some(e);
            }
        }
        let state = lock(&self.shared.state).clone();
        name_from_roster(&state, &mut stats);
        let relay_lost = ended
            .as_ref()
            .is_some_and(|e| !matches!(*e.error, ConnectError::Refused { .. }));
        Finished {
            stats,
            relay_lost,
            ended_by_relay: ended.map(|e| e.reason).or(state.ended.clone()),
            state,
            recording,
            recording_error,
            audio_start_unix_us,
            duration: self.started.elapsed(),
        }
    }
}

/// UDP datagrams received so far on a connection.
fn received(conn: &quinn::Connection) -> u64 {
    conn.stats().udp_rx.datagrams
}

/// Where the call can go: the invite's edges (its own relay first), then those the relays
/// listed since, without repeats.
fn candidates(invite: &Invite, state: &Mutex<CallState>) -> Vec<Invite> {
    let mut all = invite.candidates();
    let listed = lock(state).edges.clone();
    for e in &listed {
        let candidate = invite.at(&e.edge);
        if !all.iter().any(|c| c.authority() == candidate.authority()) {
            all.push(candidate);
        }
    }
    all
}

fn ended(reason: &str) -> Ended {
    Ended {
        reason: reason.to_string(),
        error: Arc::new(ConnectError::Lost(reason.to_string())),
    }
}

/// Owns the link: forwards the session's commands to it and, when it is lost, reconnects and
/// rejoins as the policy says. Returns why the session ended by itself (`None`: left).
struct Supervisor {
    invite: Invite,
    request: JoinRequest,
    policy: ReconnectPolicy,
    shared: Arc<Shared>,
    path: MediaPath,
    inbound: std::sync::mpsc::Sender<crate::engine::Inbound>,
    engine: EngineRemote,
    /// The microphone's mute state, told to the relay again after each rejoin.
    muted: bool,
    path_spread: PathSpread,
}

impl Supervisor {
    async fn run(
        mut self,
        mut link: Link,
        mut commands: mpsc::UnboundedReceiver<Command>,
    ) -> Option<Ended> {
        let mut watch = Liveness::new(received(link.connection()), Instant::now());
        let mut check = tokio::time::interval(liveness::CHECK_EVERY);
        loop {
            let conn = link.connection().clone();
            let (invite, state) = (&self.invite, &self.shared.state);
            let error = tokio::select! {
                error = link.ended() => error,
                // Only where there is another edge to go to: a lone relay is given QUIC's idle
                // timeout, so that a bad few seconds of network cost no rejoin.
                silent = async {
                    loop {
                        check.tick().await;
                        if candidates(invite, state).len() > 1
                            && let Some(silent) = watch.observe(received(&conn), Instant::now())
                        {
                            break silent;
                        }
                    }
                } => ConnectError::Silent(silent),
                command = commands.recv() => match command {
                    Some(Command::SetMute(muted)) => {
                        self.muted = muted;
                        link.send(Command::SetMute(muted));
                        continue;
                    }
                    Some(chat @ Command::Chat(_)) => {
                        link.send(chat);
                        continue;
                    }
                    Some(Command::Leave) | None => {
                        link.close().await;
                        return None;
                    }
                },
            };
            // Lost: the engine's datagrams go nowhere until we are back.
            *lock(&self.path) = None;
            tokio::spawn(link.close());
            tracing::warn!(reason = %error, "lost the relay; reconnecting");
            let verdict = self.policy.on_error(Instant::now(), &error);
            let mut last_error = error;
            if verdict == Verdict::GiveUp {
                return Some(self.give_up(last_error));
            }
            link = loop {
                self.publish_status();
                let Some(at) = self.policy.poll_timeout() else {
                    // Only a retry is ever scheduled here; anything else is the end.
                    return Some(self.give_up(last_error));
                };
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    command = commands.recv() => match command {
                        Some(Command::SetMute(muted)) => {
                            self.muted = muted;
                            continue;
                        }
                        Some(Command::Chat(_)) => continue,
                        Some(Command::Leave) | None => return None,
                    },
                }
                if !self.policy.handle_timeout(Instant::now()) {
                    continue;
                }
                let candidates = candidates(&self.invite, &self.shared.state);
                let open = Link::open(
                    &candidates,
                    &self.request,
                    &self.shared.state,
                    &self.path_spread,
                    self.inbound.clone(),
                );
                tokio::pin!(open);
                let result = loop {
                    tokio::select! {
                        result = &mut open => break result,
                        command = commands.recv() => match command {
                            Some(Command::SetMute(muted)) => self.muted = muted,
                            Some(Command::Chat(_)) => {}
                            // The attempt is dropped (and with it its endpoint) when we leave.
                            Some(Command::Leave) | None => return None,
                        },
                    }
                };
                match result {
                    Ok(link) => break link,
                    Err(e) => {
                        tracing::warn!(error = %e, "rejoining failed");
                        let verdict = self.policy.on_attempt_failed(
                            Instant::now(),
                            e.to_string(),
                            reconnect::is_fatal(&e),
                        );
                        last_error = e;
                        if verdict == Verdict::GiveUp {
                            return Some(self.give_up(last_error));
                        }
                    }
                }
            };
            self.rejoined(&link);
            watch = Liveness::new(received(link.connection()), Instant::now());
        }
    }

    /// Back in the room: the engine sends under the new SSRC on the new connection, and the
    /// room hears our mute state again.
    fn rejoined(&mut self, link: &Link) {
        tracing::info!(room = %link.joined.room, ssrc = link.joined.ssrc, "rejoined");
        self.policy.on_connected();
        *lock(&self.shared.joined) = link.joined.clone();
        *lock(&self.shared.endpoint) = link.endpoint().clone();
        *lock(&self.shared.edge) = link.edge.clone();
        self.engine.command(EngineCommand::Rejoined {
            ssrc: link.joined.ssrc,
        });
        *lock(&self.path) = Some(link.connection().clone());
        if self.muted {
            link.send(Command::SetMute(true));
        }
        self.publish_status();
    }

    fn publish_status(&self) {
        *lock(&self.shared.status) = self.policy.status();
    }

    fn give_up(&self, error: ConnectError) -> Ended {
        self.publish_status();
        let reason = error.to_string();
        lock(&self.shared.state).ended = Some(reason.clone());
        Ended {
            reason,
            error: Arc::new(error),
        }
    }
}

/// Names the peers and listeners in engine `stats` from the roster (the engine only knows
/// SSRCs; the transport knows who they are, and remembers every name of the call), and adds
/// to each person's statistics those of their earlier SSRCs (before a rejoin: theirs or
/// ours), so an outage shows as packets lost instead of a fresh start. A name two current
/// peers share is ambiguous and gets nothing carried over.
fn name_from_roster(state: &CallState, stats: &mut EngineStats) {
    for peer in stats.peers.iter_mut().chain(&mut stats.retired_peers) {
        peer.name = state.name_of(peer.ssrc).map(str::to_string);
    }
    for listener in &mut stats.listeners {
        listener.name = state.name_of(listener.ssrc).map(str::to_string);
    }
    let names: Vec<Option<String>> = stats.peers.iter().map(|p| p.name.clone()).collect();
    for peer in &mut stats.peers {
        let Some(name) = peer.name.as_deref() else {
            continue;
        };
        if names.iter().filter(|n| n.as_deref() == Some(name)).count() > 1 {
            continue;
        }
        let earlier: Vec<&crate::engine::receive::PeerStats> = stats
            .retired_peers
            .iter()
            .filter(|r| r.name.as_deref() == Some(name) && r.ssrc != peer.ssrc)
            .collect();
        peer.carry_over(&earlier);
    }
}
