//! The app's call controller: everything the desktop app does that is not drawing.
//!
//! It runs on its own tokio runtime thread and owns the [`Session`], the embedded relay when
//! hosting, trust-on-first-use decisions, reconnection and the loopback latency test. The UI
//! talks to it only through [`ControllerHandle`]: requests go in over a channel (never
//! awaited), and the UI reads the latest [`Snapshot`] and the latency [`History`] — both
//! refreshed here every 100 ms — so the UI thread never waits on network or audio. No egui
//! type appears in this file; `repaint` is how it wakes the UI after an event.

use super::sounds::{self, Cue};
use crate::apm::VoiceConfig;
use crate::audio::SAMPLE_RATE;
use crate::audio::device::{DeviceChoice, DeviceList};
use crate::engine::receive::PeerStats;
use crate::engine::{EngineCommand, EngineConfig, EngineStats};
use crate::history::{History, Sample};
use crate::rate::FrameMode;
use crate::session::{Audio, Record, Session, SessionConfig};
use crate::settings::{Dirs, KnownRelays};
use crate::transport::{ConnectError, probe_fingerprint};
use natter_proto::control::ErrorCode;
use natter_proto::invite::Invite;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Lists audio devices (cpal in the app; a fixed list in tests).
pub type DeviceLister = Arc<dyn Fn() -> anyhow::Result<DeviceList> + Send + Sync>;

/// Wakes the UI (egui's `request_repaint`).
pub type Repaint = Arc<dyn Fn() + Send + Sync>;

/// What a call's microphone and speaker are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioSource {
    /// Sound-card devices through cpal (the app).
    Devices,
    /// No sound card: a paced test signal as the microphone, the speaker discarded (tests,
    /// screenshots, benchmarks on machines without audio).
    TestSignal(TestSignal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestSignal {
    Silence,
    /// A deterministic speech-like signal with pauses (lights the speaking indicator).
    Speech,
}

/// How the controller is set up.
#[derive(Clone)]
pub struct ControllerConfig {
    pub dirs: Dirs,
    pub audio: AudioSource,
    pub devices: DeviceLister,
    /// Address the embedded relay listens on when hosting (`0.0.0.0`; tests use loopback).
    pub host_bind: IpAddr,
}

impl ControllerConfig {
    /// The real app: OS directories, sound-card devices, relay on every interface.
    pub fn desktop(dirs: Dirs) -> Self {
        Self {
            dirs,
            audio: AudioSource::Devices,
            devices: Arc::new(crate::audio::device::list),
            host_bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        }
    }
}

/// The parts of the settings a call uses.
#[derive(Debug, Clone, PartialEq)]
pub struct CallSettings {
    pub voice: VoiceConfig,
    /// Fixed bitrate in bit/s, or adaptive.
    pub bitrate_bps: Option<i32>,
    pub low_latency: bool,
    /// Fixed jitter-buffer target in ms, or adaptive.
    pub jitter_ms: Option<f64>,
    pub devices: DeviceChoice,
    pub push_to_talk: bool,
    pub sounds: bool,
}

impl CallSettings {
    pub fn from_settings(s: &crate::settings::Settings) -> Self {
        use crate::settings::{JitterMode, Quality};
        Self {
            voice: s.voice(),
            bitrate_bps: match s.quality {
                Quality::Auto => None,
                Quality::Fixed(kbps) => Some(kbps as i32 * 1000),
            },
            low_latency: s.low_latency,
            jitter_ms: match s.jitter {
                JitterMode::Auto => None,
                JitterMode::Fixed(ms) => Some(f64::from(ms)),
            },
            devices: DeviceChoice {
                input: s.input_device.clone(),
                output: s.output_device.clone(),
            },
            push_to_talk: s.push_to_talk.is_some(),
            sounds: s.sounds,
        }
    }
}

/// What the UI asks for.
#[derive(Debug, Clone)]
pub enum Request {
    Join {
        invite: Invite,
        room: String,
        name: String,
        settings: CallSettings,
    },
    /// Start the embedded relay on `port` (0: any free port) and join it.
    Host {
        port: u16,
        room: String,
        name: String,
        settings: CallSettings,
    },
    /// The user's answer to [`Snapshot::trust_prompt`].
    AnswerTrust(bool),
    /// Leave the call (and stop hosting), or stop reconnecting.
    Leave,
    /// Clear a failure message.
    Dismiss,
    SetMuted(bool),
    SetDeafened(bool),
    /// Push-to-talk key held (true) or released.
    SetTalking(bool),
    /// Local playback volume for a participant (by name, so it survives reconnects), 0–2.
    SetVolume {
        name: String,
        volume: f32,
    },
    /// Mute a participant for ourselves only.
    SetLocalMute {
        name: String,
        muted: bool,
    },
    Apply(CallSettings),
    RunLatencyTest,
    /// Poll the device list (while the settings screen is open).
    WatchDevices(bool),
    ForgetRelay(String),
    /// Leave and stop the controller (the window is closing).
    Shutdown,
}

/// Where the call is.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Phase {
    #[default]
    Idle,
    Connecting {
        to: String,
    },
    InCall,
    /// The connection was lost; trying again.
    Reconnecting {
        attempt: u32,
        reason: String,
    },
    Failed(Failure),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub message: String,
    /// A relay we trusted before presented a different certificate.
    pub certificate_changed: bool,
}

/// The relay we host.
#[derive(Debug, Clone, PartialEq)]
pub struct Hosting {
    /// The invite to hand out (with room and fingerprint).
    pub invite: String,
    pub port: u16,
}

/// A relay without a pinned fingerprint presented a self-signed certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustPrompt {
    pub authority: String,
    /// Hex, in colon-separated pairs for reading aloud.
    pub fingerprint: String,
}

/// Connection quality, for the icon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkQuality {
    #[default]
    Unknown,
    Poor,
    Fair,
    Good,
}

impl LinkQuality {
    /// From recent loss (fraction), interarrival jitter and round trip.
    pub fn assess(loss: f64, jitter_ms: f64, rtt_ms: Option<f64>) -> Self {
        let rtt = rtt_ms.unwrap_or(0.0);
        if loss > 0.08 || jitter_ms > 50.0 || rtt > 400.0 {
            Self::Poor
        } else if loss > 0.02 || jitter_ms > 20.0 || rtt > 150.0 {
            Self::Fair
        } else {
            Self::Good
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Poor => "poor",
            Self::Fair => "fair",
            Self::Good => "good",
        }
    }
}

/// One row of the roster.
#[derive(Debug, Clone)]
pub struct ParticipantView {
    pub id: u64,
    pub ssrc: u32,
    pub name: String,
    pub is_me: bool,
    /// Muted their own microphone (as the relay told us).
    pub muted: bool,
    pub speaking: bool,
    /// Local playback volume, 0–2.
    pub volume: f32,
    pub locally_muted: bool,
    /// What we receive from them (not for ourselves).
    pub stats: Option<PeerStats>,
    pub quality: LinkQuality,
    /// Packet loss over the last few seconds, fraction.
    pub recent_loss: f64,
}

#[derive(Debug, Clone)]
pub struct CallView {
    pub room: String,
    /// `host:port` of the relay.
    pub relay: String,
    /// Everyone, us first.
    pub participants: Vec<ParticipantView>,
    pub relay_rtt_ms: Option<f64>,
    pub engine: EngineStatsView,
    /// Sound-card devices in use (`None` with a test signal).
    pub devices: Option<(String, String)>,
}

/// The engine-wide numbers the UI shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStatsView {
    pub input_level_db: f32,
    pub voice_active: bool,
    pub bitrate_bps: i32,
    pub frame_ms: f64,
}

impl From<&EngineStats> for EngineStatsView {
    fn from(s: &EngineStats) -> Self {
        Self {
            input_level_db: s.input_level_db,
            voice_active: s.voice_active,
            bitrate_bps: s.bitrate_bps,
            frame_ms: s.frame_ms,
        }
    }
}

/// The loopback latency test.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum LatencyTest {
    #[default]
    Idle,
    Running,
    Done(LatencyResult),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct LatencyResult {
    /// Measured round trip (microphone → relay → speaker), median over the chirps, ms.
    pub measured_ms: f64,
    pub p05_ms: f64,
    pub p95_ms: f64,
    pub chirps_found: usize,
    pub chirps_sent: usize,
    /// What the latency meter's stages added up to for the same path, ms.
    pub estimate_ms: Option<f64>,
}

/// Everything the UI shows, refreshed by the controller.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub phase: Phase,
    pub hosting: Option<Hosting>,
    pub call: Option<CallView>,
    pub trust_prompt: Option<TrustPrompt>,
    pub latency_test: LatencyTest,
    pub muted: bool,
    pub deafened: bool,
    /// Push-to-talk key held.
    pub talking: bool,
    /// The call settings last applied.
    pub applied: Option<CallSettings>,
    pub devices: Option<DeviceList>,
    pub device_error: Option<String>,
    pub known_relays: Vec<(String, String)>,
    /// Counts join/leave cues played (for tests and the curious).
    pub cues_played: u64,
}

struct Shared {
    snapshot: Mutex<Snapshot>,
    history: Mutex<History>,
    repaint: Repaint,
}

/// The UI's handle: send requests, read the snapshot. Dropping it ends the controller (which
/// leaves any call).
#[derive(Clone)]
pub struct ControllerHandle {
    requests: mpsc::UnboundedSender<Request>,
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl ControllerHandle {
    /// Starts the controller thread and its runtime.
    pub fn spawn(config: ControllerConfig, repaint: Repaint) -> anyhow::Result<Self> {
        let (requests, rx) = mpsc::unbounded_channel();
        let (known, _) = KnownRelays::load(&config.dirs.known_relays_file());
        let shared = Arc::new(Shared {
            snapshot: Mutex::new(Snapshot {
                known_relays: known_list(&known),
                ..Snapshot::default()
            }),
            history: Mutex::new(History::default()),
            repaint,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("natter-app-rt")
            .enable_all()
            .build()?;
        let ctl = Controller::new(config, shared.clone(), known);
        let thread = std::thread::Builder::new()
            .name("natter-controller".into())
            .spawn(move || {
                runtime.block_on(ctl.run(rx));
                runtime.shutdown_timeout(Duration::from_secs(2));
            })?;
        Ok(Self {
            requests,
            shared,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    pub fn send(&self, request: Request) {
        let _ = self.requests.send(request);
    }

    /// The latest snapshot (a clone; the lock is held only to copy).
    pub fn snapshot(&self) -> Snapshot {
        lock(&self.shared.snapshot).clone()
    }

    /// Runs `f` on the latency history.
    pub fn with_history<R>(&self, f: impl FnOnce(&History) -> R) -> R {
        f(&lock(&self.shared.history))
    }

    /// Leaves any call, stops hosting and waits (up to a few seconds) for the controller to
    /// finish: for the window closing.
    pub fn shutdown(&self) {
        let _ = self.requests.send(Request::Shutdown);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn known_list(k: &KnownRelays) -> Vec<(String, String)> {
    k.relays
        .iter()
        .map(|(a, f)| (a.clone(), f.clone()))
        .collect()
}

/// Formats a fingerprint as colon-separated byte pairs.
pub fn fingerprint_pairs(fp: &[u8; 32]) -> String {
    fp.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What to (re)connect to.
#[derive(Debug, Clone)]
struct Target {
    invite: Invite,
    room: String,
    name: String,
}

enum ConnectOutcome {
    Joined(Box<Session>),
    /// Unknown self-signed relay: ask the user.
    NeedsTrust([u8; 32]),
    Failed(anyhow::Error),
}

struct Controller {
    config: ControllerConfig,
    shared: Arc<Shared>,
    known: KnownRelays,
    session: Option<Session>,
    target: Option<Target>,
    settings: Option<CallSettings>,
    connecting: Option<JoinHandle<ConnectOutcome>>,
    /// When to try again after losing the connection, and the attempt number.
    retry: Option<(Instant, u32, String)>,
    relay: Option<natter_relay::RelayHandle>,
    muted: bool,
    deafened: bool,
    talking: bool,
    volumes: HashMap<String, f32>,
    local_mutes: HashSet<String>,
    roster_ids: Option<BTreeSet<u64>>,
    latency: Option<JoinHandle<Result<LatencyResult, String>>>,
    watch_devices: bool,
    next_device_poll: Instant,
    devices_polling: Option<JoinHandle<anyhow::Result<DeviceList>>>,
    history_start: Instant,
    next_history: Instant,
    /// Per SSRC: (received, lost) a few seconds ago, for recent loss.
    loss_marks: HashMap<u32, (Instant, u64, i64, f64)>,
    tests_run: u32,
    /// Peer statistics as last published, when, and how many times.
    published_stats: HashMap<u32, PeerStats>,
    next_stats: Instant,
    stats_generation: u64,
    /// Hash of what the call screen shows, to wake the UI only when it changes.
    last_digest: u64,
}

impl Controller {
    fn new(config: ControllerConfig, shared: Arc<Shared>, known: KnownRelays) -> Self {
        Self {
            config,
            shared,
            known,
            session: None,
            target: None,
            settings: None,
            connecting: None,
            retry: None,
            relay: None,
            muted: false,
            deafened: false,
            talking: false,
            volumes: HashMap::new(),
            local_mutes: HashSet::new(),
            roster_ids: None,
            latency: None,
            watch_devices: false,
            next_device_poll: Instant::now(),
            devices_polling: None,
            history_start: Instant::now(),
            next_history: Instant::now(),
            loss_marks: HashMap::new(),
            tests_run: 0,
            published_stats: HashMap::new(),
            next_stats: Instant::now(),
            stats_generation: 0,
            last_digest: 0,
        }
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut lock(&self.shared.snapshot));
        (self.shared.repaint)();
    }

    fn set_phase(&self, phase: Phase) {
        self.update(|s| s.phase = phase);
    }

    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                request = rx.recv() => match request {
                    None => break,
                    Some(Request::Shutdown) => break,
                    Some(request) => self.handle(request).await,
                },
                outcome = finished(&mut self.connecting) => self.on_connect(outcome).await,
                _ = ended(&mut self.session) => self.on_ended(),
                result = finished(&mut self.latency) => {
                    let state = match result {
                        Ok(Ok(r)) => LatencyTest::Done(r),
                        Ok(Err(e)) => LatencyTest::Failed(e),
                        Err(e) => LatencyTest::Failed(e.to_string()),
                    };
                    self.update(|s| s.latency_test = state);
                }
                list = finished(&mut self.devices_polling) => {
                    let (devices, error) = match list {
                        Ok(Ok(l)) => (Some(l), None),
                        Ok(Err(e)) => (None, Some(format!("{e:#}"))),
                        Err(e) => (None, Some(e.to_string())),
                    };
                    let mut s = lock(&self.shared.snapshot);
                    let key = |d: &Option<DeviceList>| {
                        d.as_ref().map(|d| (d.inputs.clone(), d.outputs.clone()))
                    };
                    if key(&s.devices) != key(&devices) || s.device_error != error {
                        s.devices = devices;
                        s.device_error = error;
                        drop(s);
                        (self.shared.repaint)();
                    }
                }
                _ = tick.tick() => self.on_tick(),
            }
        }
        self.leave().await;
    }

    async fn handle(&mut self, request: Request) {
        match request {
            Request::Join {
                invite,
                room,
                name,
                settings,
            } => {
                self.leave().await;
                self.settings = Some(settings);
                self.start(Target { invite, room, name });
            }
            Request::Host {
                port,
                room,
                name,
                settings,
            } => {
                self.leave().await;
                self.settings = Some(settings);
                match self.host(port, &room).await {
                    Ok(invite) => self.start(Target { invite, room, name }),
                    Err(e) => self.fail(format!("Cannot host a call: {e:#}"), false),
                }
            }
            Request::AnswerTrust(yes) => {
                let prompt = lock(&self.shared.snapshot).trust_prompt.take();
                match (yes, prompt, self.target.clone()) {
                    (true, Some(p), Some(mut target)) => {
                        if let Ok(fp) = natter_proto::invite::parse_fingerprint(&p.fingerprint) {
                            self.known.trust(&p.authority, &fp);
                            self.save_known();
                            target.invite.fingerprint = Some(fp);
                            self.start(target);
                        }
                    }
                    _ => {
                        self.target = None;
                        self.set_phase(Phase::Idle);
                    }
                }
            }
            Request::Leave => self.leave().await,
            Request::Dismiss => {
                if matches!(lock(&self.shared.snapshot).phase, Phase::Failed(_)) {
                    self.set_phase(Phase::Idle);
                }
            }
            Request::SetMuted(m) => {
                self.muted = m;
                self.apply_mute();
            }
            Request::SetDeafened(d) => {
                self.deafened = d;
                if let Some(s) = &self.session {
                    s.command(EngineCommand::SetDeafened(d));
                }
                self.apply_mute();
            }
            Request::SetTalking(t) => {
                self.talking = t;
                self.apply_mute();
            }
            Request::SetVolume { name, volume } => {
                self.volumes.insert(name, volume.clamp(0.0, 2.0));
                self.apply_gains();
            }
            Request::SetLocalMute { name, muted } => {
                if muted {
                    self.local_mutes.insert(name);
                } else {
                    self.local_mutes.remove(&name);
                }
                self.apply_gains();
            }
            Request::Apply(settings) => self.apply_settings(settings),
            Request::RunLatencyTest => self.start_latency_test(),
            Request::WatchDevices(on) => {
                self.watch_devices = on;
                self.next_device_poll = Instant::now();
            }
            Request::ForgetRelay(authority) => {
                if self.known.forget(&authority) {
                    self.save_known();
                }
            }
            Request::Shutdown => {}
        }
    }

    fn save_known(&self) {
        if let Err(e) = self.known.save(&self.config.dirs.known_relays_file()) {
            tracing::warn!("cannot save trusted relays: {e}");
        }
        let list = known_list(&self.known);
        self.update(|s| s.known_relays = list);
    }

    fn fail(&mut self, message: String, certificate_changed: bool) {
        tracing::warn!("{message}");
        self.set_phase(Phase::Failed(Failure {
            message,
            certificate_changed,
        }));
    }

    /// Starts the embedded relay (if not already running) and returns the invite the host
    /// itself joins with (loopback, pinned).
    async fn host(&mut self, port: u16, room: &str) -> anyhow::Result<Invite> {
        if self.relay.is_none() {
            let dir = self.config.dirs.data.join("relay");
            let identity =
                tokio::task::spawn_blocking(move || natter_relay::Identity::load_or_generate(&dir))
                    .await??;
            let addr = SocketAddr::new(self.config.host_bind, port);
            let mut relay_config = natter_relay::RelayConfig::new(vec![addr], identity);
            if addr.ip().is_unspecified() {
                relay_config.public_host = crate::host::lan_address().map(|ip| ip.to_string());
            }
            let relay = natter_relay::start(relay_config)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            self.relay = Some(relay);
        }
        let relay = self.relay.as_ref().expect("started above");
        let mut public = relay.invite();
        public.room = Some(room.to_string());
        let port = relay.local_addrs()[0].port();
        self.update(|s| {
            s.hosting = Some(Hosting {
                invite: public.to_string(),
                port,
            })
        });
        let own_host = match self.config.host_bind {
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            ip => ip.to_string(),
        };
        Ok(Invite::new(own_host, port, Some(relay.fingerprint())))
    }

    fn start(&mut self, target: Target) {
        let authority = target.invite.authority();
        self.target = Some(target.clone());
        self.set_phase(if self.retry.is_some() {
            lock(&self.shared.snapshot).phase.clone()
        } else {
            Phase::Connecting {
                to: authority.clone(),
            }
        });
        let known = self.known.get(&authority);
        let session_config = self.session_config(&target);
        self.connecting = Some(tokio::spawn(connect(target, known, session_config)));
    }

    fn session_config(&self, target: &Target) -> SessionTemplate {
        let settings = self
            .settings
            .clone()
            .unwrap_or_else(|| CallSettings::from_settings(&crate::settings::Settings::default()));
        SessionTemplate {
            room: target.room.clone(),
            name: target.name.clone(),
            audio: self.config.audio,
            settings,
        }
    }

    async fn on_connect(&mut self, outcome: Result<ConnectOutcome, tokio::task::JoinError>) {
        let outcome = outcome.unwrap_or_else(|e| ConnectOutcome::Failed(e.into()));
        let retrying = self.retry.take();
        match outcome {
            ConnectOutcome::Joined(session) => {
                let session = *session;
                tracing::info!(room = %session.joined.room, "joined");
                self.session = Some(session);
                self.roster_ids = None;
                self.loss_marks.clear();
                if retrying.is_none() {
                    lock(&self.shared.history).clear();
                    self.history_start = Instant::now();
                }
                if let Some(s) = self.settings.clone() {
                    self.apply_to_session(&s, None);
                }
                self.apply_mute();
                self.apply_gains();
                if let Some(s) = &self.session
                    && self.deafened
                {
                    s.command(EngineCommand::SetDeafened(true));
                }
                self.refresh();
                self.set_phase(Phase::InCall);
            }
            ConnectOutcome::NeedsTrust(fp) => {
                let authority = self
                    .target
                    .as_ref()
                    .map(|t| t.invite.authority())
                    .unwrap_or_default();
                self.update(|s| {
                    s.phase = Phase::Idle;
                    s.trust_prompt = Some(TrustPrompt {
                        authority,
                        fingerprint: fingerprint_pairs(&fp),
                    });
                });
            }
            ConnectOutcome::Failed(e) => {
                let (message, changed, fatal) = describe_failure(&e, self.target.as_ref());
                match retrying {
                    Some((_, attempt, _)) if !fatal && !changed => {
                        self.schedule_retry(attempt + 1, message);
                    }
                    _ => {
                        self.stop_hosting_quietly().await;
                        self.fail(message, changed);
                    }
                }
            }
        }
    }

    /// The session ended without us leaving: reconnect.
    fn on_ended(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let reason = session
            .ended_by_relay()
            .map(str::to_string)
            .or_else(|| session.state().ended)
            .unwrap_or_else(|| "connection lost".into());
        tracing::warn!("call ended: {reason}; reconnecting");
        tokio::spawn(async move {
            session.leave().await;
        });
        self.update(|s| s.call = None);
        self.schedule_retry(1, reason);
    }

    fn schedule_retry(&mut self, attempt: u32, reason: String) {
        // 0.5, 1, 2, 4, 8, 10, 10, … s.
        let delay = Duration::from_millis((500u64 << (attempt - 1).min(5)).min(10_000));
        self.retry = Some((Instant::now() + delay, attempt, reason.clone()));
        self.set_phase(Phase::Reconnecting { attempt, reason });
    }

    fn on_tick(&mut self) {
        if let Some((at, _, _)) = &self.retry
            && Instant::now() >= *at
            && self.connecting.is_none()
            && let Some(target) = self.target.clone()
        {
            // Keep `retry` set: it marks the attempt as a reconnection.
            let (_, attempt, reason) = self.retry.clone().expect("checked");
            self.retry = Some((Instant::now() + Duration::from_secs(3600), attempt, reason));
            self.start(target);
        }
        if self.watch_devices
            && self.devices_polling.is_none()
            && Instant::now() >= self.next_device_poll
        {
            self.next_device_poll = Instant::now() + Duration::from_secs(2);
            let lister = self.config.devices.clone();
            self.devices_polling = Some(tokio::task::spawn_blocking(move || lister()));
        }
        self.refresh();
    }

    /// Rebuilds the call view from the session's stats and state.
    fn refresh(&mut self) {
        let Some(session) = &self.session else {
            return;
        };
        let stats = session.stats();
        let state = session.state();
        let me = session.joined.participant_id;
        let room = session.joined.room.clone();
        let devices = session.device_names();
        let now = Instant::now();
        let ids: BTreeSet<u64> = state.roster.keys().copied().collect();
        let cue = match &self.roster_ids {
            Some(prev) if prev != &ids => {
                if ids.difference(prev).any(|id| *id != me) {
                    Some(Cue::Join)
                } else if prev.difference(&ids).any(|id| *id != me) {
                    Some(Cue::Leave)
                } else {
                    None
                }
            }
            // Our own arrival.
            None => Some(Cue::Join),
            _ => None,
        };
        self.roster_ids = Some(ids);
        let mut cue_played = false;
        if let Some(cue) = cue
            && self.settings.as_ref().is_none_or(|s| s.sounds)
        {
            session.command(EngineCommand::PlaySound(sounds::samples(cue)));
            cue_played = true;
        }
        // Names can collide with gains keyed by name: re-apply when the roster changes.
        let mut participants = Vec::new();
        for p in state.roster.values() {
            let is_me = p.id == me;
            let peer = stats.peers.iter().find(|s| s.ssrc == p.ssrc).cloned();
            let recent_loss = peer.as_ref().map_or(0.0, |ps| self.recent_loss(ps, now));
            let quality = match (&peer, is_me) {
                (_, true) => state.relay_rtt_ms.map_or(LinkQuality::Unknown, |rtt| {
                    LinkQuality::assess(0.0, 0.0, Some(rtt))
                }),
                (Some(ps), false) if ps.packets_received > 0 => {
                    LinkQuality::assess(recent_loss, ps.jitter_ms, ps.rtt_ms)
                }
                _ => LinkQuality::Unknown,
            };
            participants.push(ParticipantView {
                id: p.id,
                ssrc: p.ssrc,
                name: p.name.clone(),
                is_me,
                muted: if is_me {
                    self.effective_mute()
                } else {
                    p.muted
                },
                speaking: if is_me {
                    stats.voice_active && !self.effective_mute()
                } else {
                    peer.as_ref().is_some_and(|s| s.speaking)
                },
                volume: self.volumes.get(&p.name).copied().unwrap_or(1.0),
                locally_muted: self.local_mutes.contains(&p.name),
                stats: if is_me { None } else { peer },
                quality,
                recent_loss,
            });
        }
        participants.sort_by_key(|p| (!p.is_me, p.name.to_lowercase(), p.id));
        // The numbers (latency meter, link statistics) are published once a second: readable,
        // and the window need not redraw ten times a second for digits that flicker. What
        // moves — speaking, mute, the roster, the microphone level — is published at once.
        if now >= self.next_stats {
            self.next_stats = now + STATS_INTERVAL;
            self.stats_generation += 1;
            self.published_stats = participants
                .iter()
                .filter_map(|p| p.stats.clone().map(|s| (p.ssrc, s)))
                .collect();
        } else {
            for p in &mut participants {
                if let Some(old) = self.published_stats.get(&p.ssrc) {
                    p.stats = Some(old.clone());
                }
            }
        }
        // Histories: every 500 ms, one sample per participant we hear.
        if now >= self.next_history {
            self.next_history = now + Duration::from_millis(500);
            let t = now.duration_since(self.history_start).as_secs_f64();
            let mut h = lock(&self.shared.history);
            for p in &participants {
                if let Some(ps) = &p.stats
                    && ps.stages.complete
                {
                    h.push(&p.name, Sample::from_peer(t, ps));
                }
            }
        }
        let relay = self
            .target
            .as_ref()
            .map(|t| t.invite.authority())
            .unwrap_or_default();
        let view = CallView {
            room,
            relay,
            participants,
            relay_rtt_ms: state.relay_rtt_ms,
            engine: EngineStatsView::from(&stats),
            devices,
        };
        let digest = visible_digest(&view, self.stats_generation);
        let changed = digest != self.last_digest;
        self.last_digest = digest;
        let gains_stale = {
            let mut s = lock(&self.shared.snapshot);
            let stale = s.call.as_ref().map(roster_names) != Some(roster_names(&view));
            s.call = Some(view);
            s.muted = self.muted;
            s.deafened = self.deafened;
            s.talking = self.talking;
            if cue_played {
                s.cues_played += 1;
            }
            stale
        };
        if gains_stale {
            self.apply_gains();
        }
        if gains_stale || changed {
            (self.shared.repaint)();
        }
    }

    /// Loss over roughly the last five seconds, from the cumulative counters.
    fn recent_loss(&mut self, p: &PeerStats, now: Instant) -> f64 {
        let mark =
            self.loss_marks
                .entry(p.ssrc)
                .or_insert((now, p.packets_received, p.packets_lost, 0.0));
        if now.duration_since(mark.0) >= Duration::from_secs(5) {
            let received = p.packets_received.saturating_sub(mark.1) as f64;
            let lost = (p.packets_lost - mark.2).max(0) as f64;
            let loss = if received + lost > 0.0 {
                lost / (received + lost)
            } else {
                0.0
            };
            *mark = (now, p.packets_received, p.packets_lost, loss);
        }
        mark.3
    }

    fn effective_mute(&self) -> bool {
        let ptt = self.settings.as_ref().is_some_and(|s| s.push_to_talk);
        self.muted || self.deafened || (ptt && !self.talking)
    }

    fn apply_mute(&self) {
        if let Some(s) = &self.session {
            s.set_muted(self.effective_mute());
        }
        self.update(|s| {
            s.muted = self.muted;
            s.deafened = self.deafened;
            s.talking = self.talking;
        });
    }

    fn apply_gains(&self) {
        let Some(session) = &self.session else {
            return;
        };
        let state = session.state();
        for p in state.roster.values() {
            let gain = if self.local_mutes.contains(&p.name) {
                0.0
            } else {
                self.volumes.get(&p.name).copied().unwrap_or(1.0)
            };
            session.command(EngineCommand::SetPeerGain { ssrc: p.ssrc, gain });
        }
    }

    fn apply_settings(&mut self, new: CallSettings) {
        let old = self.settings.replace(new.clone());
        self.apply_to_session(&new, old.as_ref());
        self.apply_mute();
    }

    /// Sends the engine what changed (everything when `old` is `None`).
    fn apply_to_session(&mut self, new: &CallSettings, old: Option<&CallSettings>) {
        if let Some(session) = self.session.as_mut() {
            if old.is_some_and(|o| o.voice != new.voice) {
                session.command(EngineCommand::SetVoice(new.voice));
            }
            if old.is_none_or(|o| o.bitrate_bps != new.bitrate_bps) {
                session.command(EngineCommand::SetBitrate(new.bitrate_bps));
            }
            if old.is_some_and(|o| o.low_latency != new.low_latency) {
                session.command(EngineCommand::SetFrameMode(frame_mode(new.low_latency)));
            }
            if old.is_none_or(|o| o.jitter_ms != new.jitter_ms) {
                session.command(EngineCommand::SetJitterTarget(new.jitter_ms));
            }
            if old.is_some_and(|o| o.devices != new.devices)
                && self.config.audio == AudioSource::Devices
            {
                let choice = new.devices.clone();
                let result = tokio::task::block_in_place(|| session.switch_devices(choice));
                let error = result.err().map(|e| format!("{e:#}"));
                self.update(|s| s.device_error = error);
            }
        }
        let applied = new.clone();
        self.update(|s| s.applied = Some(applied));
    }

    fn start_latency_test(&mut self) {
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
            natter_relay::core::unix_micros() % 1_000_000
        );
        let low_latency = self.settings.as_ref().is_some_and(|s| s.low_latency);
        self.update(|s| s.latency_test = LatencyTest::Running);
        self.latency = Some(tokio::spawn(async move {
            latency_test(invite, room, low_latency)
                .await
                .map_err(|e| format!("{e:#}"))
        }));
    }

    async fn stop_hosting_quietly(&mut self) {
        if let Some(relay) = self.relay.take() {
            relay.shutdown(Duration::from_millis(500)).await;
        }
        self.update(|s| s.hosting = None);
    }

    /// Leaves the call, stops reconnecting and hosting; idle afterwards.
    async fn leave(&mut self) {
        if let Some(c) = self.connecting.take() {
            c.abort();
        }
        self.retry = None;
        self.target = None;
        if let Some(session) = self.session.take() {
            session.leave().await;
        }
        self.stop_hosting_quietly().await;
        self.roster_ids = None;
        self.update(|s| {
            s.call = None;
            s.trust_prompt = None;
            if !matches!(s.phase, Phase::Failed(_)) {
                s.phase = Phase::Idle;
            }
            s.latency_test = LatencyTest::Idle;
        });
    }
}

/// How often the latency meter and link numbers change on screen (the plot's history is
/// sampled twice as often).
const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// A hash of what the call screen draws from `view` (the microphone level in 3–6 dB steps),
/// so the controller wakes the UI only when the picture would change.
fn visible_digest(view: &CallView, stats_generation: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    stats_generation.hash(&mut h);
    for p in &view.participants {
        (p.id, &p.name, p.muted, p.speaking, p.locally_muted).hash(&mut h);
        ((p.volume * 100.0).round() as i32, p.quality as u8).hash(&mut h);
    }
    let e = &view.engine;
    (e.bitrate_bps, e.frame_ms.round() as i64, e.voice_active).hash(&mut h);
    // The level meter moves while we speak; below that, 6 dB steps are all it shows.
    let level = if e.voice_active {
        (e.input_level_db / 3.0).round() as i32
    } else {
        (e.input_level_db.max(-60.0) / 6.0).round() as i32
    };
    level.hash(&mut h);
    view.relay_rtt_ms
        .map(|r| (r * 10.0).round() as i64)
        .hash(&mut h);
    (&view.devices, &view.room, &view.relay).hash(&mut h);
    h.finish()
}

fn roster_names(c: &CallView) -> Vec<(u32, String)> {
    c.participants
        .iter()
        .map(|p| (p.ssrc, p.name.clone()))
        .collect()
}

fn frame_mode(low_latency: bool) -> FrameMode {
    if low_latency {
        FrameMode::LowLatency
    } else {
        FrameMode::Standard
    }
}

async fn finished<T>(handle: &mut Option<JoinHandle<T>>) -> Result<T, tokio::task::JoinError> {
    match handle {
        Some(h) => {
            let r = h.await;
            *handle = None;
            r
        }
        None => std::future::pending().await,
    }
}

async fn ended(session: &mut Option<Session>) {
    match session {
        Some(s) => s.wait_ended().await,
        None => std::future::pending().await,
    }
}

/// What is needed to build a [`SessionConfig`] for a target.
struct SessionTemplate {
    room: String,
    name: String,
    audio: AudioSource,
    settings: CallSettings,
}

/// Test-signal calls keep at most this much (real-time) audio.
const TEST_SIGNAL_SECONDS: f64 = 30.0 * 60.0;

impl SessionTemplate {
    fn build(&self, invite: Invite) -> SessionConfig {
        let mut engine = EngineConfig::new(0);
        engine.mode = frame_mode(self.settings.low_latency);
        let audio = match self.audio {
            AudioSource::Devices => {
                engine.voice = self.settings.voice;
                Audio::Devices {
                    choice: self.settings.devices.clone(),
                    duration: None,
                }
            }
            AudioSource::TestSignal(signal) => {
                // A signal is not a microphone in a room: nothing to cancel or suppress.
                engine.voice = VoiceConfig::NONE;
                let input = match signal {
                    TestSignal::Silence => Vec::new(),
                    TestSignal::Speech => {
                        test_speech(180.0, u64::from(std::process::id()), 4.0, 3.0, 0.0)
                    }
                };
                Audio::Wav {
                    input,
                    total_samples: (TEST_SIGNAL_SECONDS * f64::from(SAMPLE_RATE)) as usize,
                    // Nobody listens to what a test signal "hears".
                    record: Record::Nothing,
                }
            }
        };
        SessionConfig {
            invite,
            room: self.room.clone(),
            name: self.name.clone(),
            echo: false,
            audio,
            engine,
        }
    }
}

/// A speech-like test signal in turns: `talk` seconds of speech, `pause` seconds of silence,
/// starting `offset` seconds into the cycle (so several bots can take turns).
pub fn test_speech(seconds: f32, seed: u64, talk: f32, pause: f32, offset: f32) -> Vec<f32> {
    let mut s = crate::measure::speech_like(SAMPLE_RATE, seconds, seed);
    let rate = SAMPLE_RATE as f32;
    let cycle = talk + pause;
    for (i, x) in s.iter_mut().enumerate() {
        let t = (i as f32 / rate + offset) % cycle;
        if t >= talk {
            *x = 0.0;
        }
    }
    s
}

/// Connects with trust on first use: a pinned invite or a relay trusted before is pinned; an
/// unknown relay is tried with WebPKI, and if its certificate is not CA-signed the user is
/// asked about its fingerprint.
async fn connect(
    target: Target,
    known: Option<[u8; 32]>,
    template: SessionTemplate,
) -> ConnectOutcome {
    let mut invite = target.invite.clone();
    let unpinned = invite.fingerprint.is_none();
    if unpinned && let Some(fp) = known {
        invite.fingerprint = Some(fp);
    }
    match Session::start(template.build(invite.clone())).await {
        Ok(s) => ConnectOutcome::Joined(Box::new(s)),
        Err(e) => {
            let cert_rejected =
                matches!(e.downcast_ref::<ConnectError>(), Some(ConnectError::Tls(_)));
            if unpinned && known.is_none() && cert_rejected {
                match probe_fingerprint(&invite).await {
                    Ok(fp) => ConnectOutcome::NeedsTrust(fp),
                    Err(probe) => ConnectOutcome::Failed(probe.into()),
                }
            } else {
                ConnectOutcome::Failed(e)
            }
        }
    }
}

/// One line for the user, whether the certificate changed, and whether retrying is pointless.
fn describe_failure(e: &anyhow::Error, target: Option<&Target>) -> (String, bool, bool) {
    let relay = target.map(|t| t.invite.authority()).unwrap_or_default();
    match e.downcast_ref::<ConnectError>() {
        Some(ConnectError::FingerprintMismatch { expected, actual })
            if target.is_some_and(|t| t.invite.fingerprint.is_none()) =>
        {
            (
                format!(
                    "The certificate of {relay} has changed since you first trusted it: it now presents {actual}, not {expected}. \
                     This can mean someone is impersonating the relay, so Natter did not connect. \
                     If the relay's operator confirms the change, remove {relay} from the trusted relays in Settings and join again."
                ),
                true,
                true,
            )
        }
        Some(ConnectError::Refused { code, .. }) => {
            let transient = matches!(
                code,
                ErrorCode::ShuttingDown
                    | ErrorCode::Timeout
                    | ErrorCode::ServerFull
                    | ErrorCode::Internal
            );
            (format!("{e:#}"), false, !transient)
        }
        Some(ConnectError::Invalid(_) | ConnectError::FingerprintMismatch { .. }) => {
            (format!("{e:#}"), false, true)
        }
        _ => (format!("{e:#}"), false, false),
    }
}

/// Length of the chirp probe the latency test sends.
const PROBE_SECONDS: f32 = 4.0;

/// The loopback test: a second session with `echo`, the chirp probe as its microphone; the
/// relay sends our audio back, and the recording's chirps give the measured round trip,
/// compared with what the latency meter's stages add up to for the same path.
async fn latency_test(
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
            input: train.samples.clone(),
            total_samples: total,
            record: Record::Memory,
        },
        engine,
    })
    .await?;
    let ssrc = session.joined.ssrc;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_tiers() {
        assert_eq!(LinkQuality::assess(0.0, 1.0, Some(20.0)), LinkQuality::Good);
        assert_eq!(
            LinkQuality::assess(0.03, 1.0, Some(20.0)),
            LinkQuality::Fair
        );
        assert_eq!(LinkQuality::assess(0.0, 30.0, None), LinkQuality::Fair);
        assert_eq!(
            LinkQuality::assess(0.10, 1.0, Some(20.0)),
            LinkQuality::Poor
        );
        assert_eq!(
            LinkQuality::assess(0.0, 1.0, Some(500.0)),
            LinkQuality::Poor
        );
    }

    #[test]
    fn fingerprints_read_in_pairs() {
        let mut fp = [0u8; 32];
        fp[0] = 0xab;
        fp[31] = 0x01;
        let s = fingerprint_pairs(&fp);
        assert!(s.starts_with("AB:00:"));
        assert!(s.ends_with(":01"));
        assert_eq!(natter_proto::invite::parse_fingerprint(&s).unwrap(), fp);
    }

    #[test]
    fn call_settings_follow_the_settings_file() {
        use crate::settings::{JitterMode, Quality, Settings};
        let s = Settings {
            quality: Quality::Fixed(32),
            jitter: JitterMode::Fixed(80),
            push_to_talk: Some("Space".into()),
            echo_cancellation: false,
            noise_suppression: false,
            ..Settings::default()
        };
        let c = CallSettings::from_settings(&s);
        assert_eq!(c.bitrate_bps, Some(32_000));
        assert_eq!(c.jitter_ms, Some(80.0));
        assert!(c.push_to_talk);
        assert!(!c.voice.echo_cancellation && !c.voice.high_pass && c.voice.gain_control);
    }
}
