//! The controller's actor: one task on the controller's runtime that takes the UI's requests
//! and the session's, latency test's and device lister's results one at a time, and keeps the
//! snapshot current.

use super::connect::{ConnectOutcome, Target};
use super::contract::*;
use super::view_model::{Controls, ViewModel};
use super::{Shared, known_list, lock};
use crate::audio::device::DeviceList;
use crate::engine::EngineCommand;
use crate::rate::FrameMode;
use crate::session::Session;
use crate::settings::KnownRelays;

use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub(super) struct Controller {
    pub(super) config: ControllerConfig,
    pub(super) shared: Arc<Shared>,
    pub(super) known: KnownRelays,
    pub(super) session: Option<Session>,
    pub(super) target: Option<Target>,
    pub(super) settings: Option<CallSettings>,
    pub(super) connecting: Option<JoinHandle<ConnectOutcome>>,
    pub(super) relay: Option<crate::host::HostedCall>,
    /// Mute, deafen, push to talk, per-person volumes (pure policy).
    pub(super) controls: Controls,
    /// The call screen's view-model (pure, time passed in).
    pub(super) view: ViewModel,
    pub(super) latency: Option<JoinHandle<Result<LatencyResult, String>>>,
    pub(super) watch_devices: bool,
    pub(super) next_device_poll: Instant,
    pub(super) devices_polling: Option<JoinHandle<anyhow::Result<DeviceList>>>,
    pub(super) tests_run: u32,
    /// The window is in front (no notifications then).
    pub(super) focused: bool,
    /// What the user has been told of (pure), and the task that shows notifications.
    pub(super) alerts: super::alerts::Alerts,
    pub(super) notifier: Option<mpsc::UnboundedSender<super::alerts::Alert>>,
    /// The microphone test while Settings runs it.
    pub(super) mic_test: Option<crate::audio::mic_test::MicTest>,
}

impl Controller {
    pub(super) fn new(config: ControllerConfig, shared: Arc<Shared>, known: KnownRelays) -> Self {
        Self {
            config,
            shared,
            known,
            session: None,
            target: None,
            settings: None,
            connecting: None,
            relay: None,
            controls: Controls::default(),
            view: ViewModel::new(Instant::now()),
            latency: None,
            watch_devices: false,
            next_device_poll: Instant::now(),
            devices_polling: None,
            tests_run: 0,
            mic_test: None,
            focused: true,
            alerts: Default::default(),
            notifier: None,
        }
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(&mut lock(&self.shared.snapshot));
        (self.shared.repaint)();
    }

    pub(super) fn set_phase(&self, phase: Phase) {
        self.update(|s| s.phase = phase);
    }

    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Request>) {
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
                _ = ended(&mut self.session) => self.on_ended().await,
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

    pub(super) async fn handle(&mut self, request: Request) {
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
                    Err(e) => {
                        tracing::warn!("cannot host a call: {e:#}");
                        self.fail_hosting(super::plain::hosting_failure(&e, port));
                    }
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
                self.controls.muted = m;
                self.apply_mute();
            }
            Request::SetDeafened(d) => {
                self.controls.deafened = d;
                if let Some(s) = &self.session {
                    s.command(EngineCommand::SetDeafened(d));
                }
                self.apply_mute();
            }
            Request::SetTalking(t) => {
                self.controls.talking = t;
                self.apply_mute();
            }
            Request::SetVolume { name, volume } => {
                self.controls.set_volume(name, volume);
                self.apply_gains();
            }
            Request::SetLocalMute { name, muted } => {
                self.controls.set_local_mute(name, muted);
                self.apply_gains();
            }
            Request::Apply(settings) => self.apply_settings(settings),
            Request::RunLatencyTest => self.start_latency_test(),
            Request::TestMicrophone(on) => self.set_mic_test(on),
            Request::WindowFocused(focused) => self.focused = focused,
            Request::WatchDevices(on) => {
                self.watch_devices = on;
                self.next_device_poll = Instant::now();
            }
            Request::SendChat(text) => {
                if let Some(session) = &self.session {
                    session.send_chat(text);
                }
            }
            Request::ForgetRelay(authority) => {
                if self.known.forget(&authority) {
                    self.save_known();
                }
            }
            Request::Shutdown => {}
        }
    }

    pub(super) fn save_known(&self) {
        let problem = match self.known.save(&self.config.dirs.known_relays_file()) {
            Ok(()) => None,
            Err(e) => {
                tracing::warn!("cannot save trusted relays: {e}");
                Some(format!(
                    "The list of trusted relays could not be saved: {e}. You will be asked again next time."
                ))
            }
        };
        let list = known_list(&self.known);
        self.update(|s| {
            s.known_relays = list;
            if let Some(p) = problem
                && !s.problems.contains(&p)
            {
                s.problems.push(p);
            }
        });
    }

    pub(super) fn fail(&mut self, message: String, certificate_changed: bool) {
        tracing::warn!("{message}");
        self.set_phase(Phase::Failed(Failure {
            message,
            certificate_changed,
            hosting: false,
        }));
    }

    /// Hosting could not start (the start screen titles it so, not "Could not join").
    pub(super) fn fail_hosting(&mut self, message: String) {
        self.set_phase(Phase::Failed(Failure {
            message,
            certificate_changed: false,
            hosting: true,
        }));
    }

    pub(super) fn on_tick(&mut self) {
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

    pub(super) fn push_to_talk(&self) -> bool {
        self.settings.as_ref().is_some_and(|s| s.push_to_talk)
    }

    pub(super) fn apply_mute(&self) {
        if let Some(s) = &self.session {
            s.set_muted(self.controls.effective_mute(self.push_to_talk()));
        }
        let c = &self.controls;
        self.update(|s| {
            s.muted = c.muted;
            s.deafened = c.deafened;
            s.talking = c.talking;
        });
    }

    pub(super) fn apply_gains(&self) {
        let Some(session) = &self.session else {
            return;
        };
        for (ssrc, gain) in self.controls.gains(&session.state()) {
            session.command(EngineCommand::SetPeerGain { ssrc, gain });
        }
    }

    pub(super) fn apply_settings(&mut self, new: CallSettings) {
        let old = self.settings.replace(new.clone());
        self.apply_to_session(&new, old.as_ref());
        self.apply_mute();
        self.follow_input_change(old.is_some_and(|o| o.devices.input != new.devices.input));
    }

    /// Sends the engine what changed (everything when `old` is `None`).
    pub(super) fn apply_to_session(&mut self, new: &CallSettings, old: Option<&CallSettings>) {
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
            if old.is_none_or(|o| o.voice_activation != new.voice_activation) {
                session.command(EngineCommand::SetVoiceActivation(new.voice_activation));
            }
            if old.is_none_or(|o| o.voice_threshold_db != new.voice_threshold_db) {
                session.command(EngineCommand::SetVoiceThreshold(new.voice_threshold_db));
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

    /// Leaves the call, stops reconnecting and hosting; idle afterwards.
    pub(super) async fn leave(&mut self) {
        if let Some(c) = self.connecting.take() {
            c.abort();
        }
        self.target = None;
        if let Some(session) = self.session.take() {
            session.leave().await;
        }
        self.stop_hosting_quietly().await;
        self.view.left();
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

pub(super) fn frame_mode(low_latency: bool) -> FrameMode {
    if low_latency {
        FrameMode::LowLatency
    } else {
        FrameMode::Standard
    }
}

pub(super) async fn finished<T>(
    handle: &mut Option<JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match handle {
        Some(h) => {
            let r = h.await;
            *handle = None;
            r
        }
        None => std::future::pending().await,
    }
}

pub(super) async fn ended(session: &mut Option<Session>) {
    match session {
        Some(s) => s.wait_ended().await,
        None => std::future::pending().await,
    }
}
