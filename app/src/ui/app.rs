//! The egui view. It reads the controller's [`Snapshot`] every frame and sends [`Request`]s;
//! it holds only view state (form fields, which screen) and the settings file.

use super::global_ptt::{self, Grab};
use super::style;
use crate::controller::view_model::TrayState;
use crate::controller::{
    CallSettings, ControllerConfig, ControllerHandle, LatencyTest, Phase, Repaint, Request,
    Snapshot,
};
use crate::settings::{
    Dirs, JitterMode, Quality, RecentRelay, Settings, SettingsStore, ThemeChoice,
};
use egui::{Align, Key, Layout, RichText, Ui};
use natter_proto::invite::Invite;
use std::path::PathBuf;
use std::time::Duration;

/// While a call is on, the controller wakes the window (at most every 100 ms) when something it
/// shows changes; this is the fallback refresh on top of that.
pub const CALL_REPAINT: Duration = Duration::from_secs(1);

/// Everything the app needs from outside.
#[derive(Clone)]
pub struct AppConfig {
    pub controller: ControllerConfig,
    /// Where "Export CSV" writes.
    pub export_dir: PathBuf,
    /// Grab the push-to-talk key for the whole desktop during calls (X11), not only while the
    /// window has the focus. Off in tests, which must not take a key from the developer.
    pub global_shortcuts: bool,
    /// Show a tray icon (off in tests: it would appear in the developer's tray).
    pub tray: bool,
}

impl AppConfig {
    /// The real app: OS directories and sound-card devices.
    pub fn desktop(dirs: Dirs) -> Self {
        let export_dir = directories::UserDirs::new()
            .and_then(|u| u.download_dir().map(|d| d.to_path_buf()))
            .unwrap_or_else(|| dirs.data.clone());
        Self {
            controller: ControllerConfig::desktop(dirs),
            export_dir,
            global_shortcuts: true,
            tray: true,
        }
    }
}

/// Which screen is up (the call screen replaces the start screen while a call is on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    Main,
    Settings,
}

/// The start screen's fields.
#[derive(Debug, Clone, Default)]
pub struct StartForm {
    pub invite: String,
    pub host: String,
    pub port: String,
    pub room: String,
    pub host_port: String,
    pub host_room: String,
    /// Why the last Join or Host click did nothing.
    pub error: Option<String>,
    pub host_error: Option<String>,
    /// A recent relay being renamed: its index and the name being typed.
    pub renaming: Option<(usize, String)>,
}

pub struct NatterApp {
    pub(super) ctl: ControllerHandle,
    pub(super) writer: SettingsWriter,
    pub(super) settings: Settings,
    pub(super) export_dir: PathBuf,
    /// Problems to show until dismissed (a corrupt settings file, a failed save).
    pub(super) notices: Vec<String>,
    /// How many of the controller's [`Snapshot::problems`] are already among the notices.
    problems_seen: usize,
    pub(super) screen: Screen,
    pub(super) form: StartForm,
    pub(super) snap: Snapshot,
    pub(super) export_note: Option<String>,
    /// "Copy invite" was clicked in this call.
    pub(super) invite_copied: bool,
    /// The host pressed Leave with others in the call: ask before ending it for everyone.
    pub(super) confirm_end_call: bool,
    /// The chat message being typed.
    pub(super) chat_draft: String,
    /// The window's title as last set (a title command makes egui repaint: send changes only).
    window_title: String,
    /// Chat lines (of [`CallView::chat_count`](crate::controller::CallView)) the user has seen:
    /// the rest are new, counted in the chat's title and the window's.
    pub(super) chat_seen: u64,
    /// The relay of the join in progress, remembered under "Recent relays" once the join
    /// succeeds (failed attempts are not remembered).
    pending_recent: Option<RecentRelay>,
    /// The controller has moved past the previous failure since the pending join was asked.
    pending_started: bool,
    ptt_down: bool,
    global_shortcuts: bool,
    /// The push-to-talk key grabbed for the whole desktop, and for which setting (so a key
    /// that cannot be grabbed is tried once, not every frame).
    global_ptt: Option<Grab>,
    global_ptt_for: Option<String>,
    /// Why push to talk works only in this window, if it does.
    pub(super) ptt_problem: Option<String>,
    /// Settings is waiting for the key or button to use for push to talk.
    pub(super) ptt_capture: bool,
    theme_applied: Option<ThemeChoice>,
    /// Requests from later starts of the app (a clicked invite), on unix.
    #[cfg(unix)]
    handovers: Option<std::sync::mpsc::Receiver<super::single_instance::Handover>>,
    /// The tray icon, when the config asks for one.
    tray: Option<super::tray::Tray>,
    /// The window was in front when last drawn (the controller notifies while it is not).
    focused: bool,
    /// Frames drawn since `frames_since` (logged every 30 s, for the CPU benchmark).
    frames: u64,
    frames_since: std::time::Instant,
}

impl NatterApp {
    /// Builds the app and starts its controller; `repaint` wakes the window.
    pub fn new(ctx: &egui::Context, config: AppConfig) -> anyhow::Result<Self> {
        style::install(ctx);
        let dirs = config.controller.dirs.clone();
        let store = SettingsStore::new(dirs.settings_file());
        let (settings, problem) = store.load();
        let mut notices = Vec::new();
        if let Some(p) = problem {
            tracing::warn!("{p}");
            notices.push(format!("Your settings could not be read: {p}."));
        }
        let repaint_ctx = ctx.clone();
        // "After 1 ms" rather than "now": egui answers an immediate request with two frames
        // (to let frame-delayed responses settle), a delayed one with one.
        let repaint: Repaint = std::sync::Arc::new(move || {
            repaint_ctx.request_repaint_after(Duration::from_millis(1))
        });
        let ctl = ControllerHandle::spawn(config.controller, repaint)?;
        let tray = config
            .tray
            .then(|| super::tray::Tray::start(ctx.clone(), ctl.clone()));
        ctl.send(Request::Apply(CallSettings::from_settings(&settings)));
        let form = StartForm {
            port: natter_proto::invite::DEFAULT_PORT.to_string(),
            host_port: settings.host_port.to_string(),
            host_room: "lounge".into(),
            ..StartForm::default()
        };
        Ok(Self {
            ctl,
            writer: SettingsWriter::spawn(store),
            settings,
            export_dir: config.export_dir,
            notices,
            problems_seen: 0,
            screen: Screen::Main,
            form,
            snap: Snapshot::default(),
            export_note: None,
            invite_copied: false,
            chat_draft: String::new(),
            window_title: "Natter".into(),
            chat_seen: 0,
            confirm_end_call: false,
            pending_recent: None,
            pending_started: false,
            ptt_down: false,
            global_shortcuts: config.global_shortcuts,
            global_ptt: None,
            global_ptt_for: None,
            ptt_problem: None,
            ptt_capture: false,
            theme_applied: None,
            focused: true,
            #[cfg(unix)]
            handovers: None,
            tray,
            frames: 0,
            frames_since: std::time::Instant::now(),
        })
    }

    /// The controller (tests read its snapshot).
    pub fn controller(&self) -> &ControllerHandle {
        &self.ctl
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The start screen's fields (the screenshot tool fills them in).
    pub fn form_mut(&mut self) -> &mut StartForm {
        &mut self.form
    }

    /// Changes settings as the settings screen would: saved and applied.
    pub fn change_settings(&mut self, f: impl FnOnce(&mut Settings)) {
        f(&mut self.settings);
        self.settings_changed();
    }

    /// Joins `invite` as if pasted on the start screen (`name` replaces the saved name).
    /// Problems show on the start screen.
    pub fn join_invite(&mut self, invite: &str, name: Option<&str>) {
        if let Some(name) = name {
            self.settings.display_name = name.to_string();
        }
        self.form.invite = invite.to_string();
        match self.join_from_form() {
            Ok(req) => self.ctl.send(req),
            Err(e) => self.form.error = Some(e),
        }
    }

    /// Takes requests from later starts: invites to join, or to come to the front.
    #[cfg(unix)]
    pub fn take_handovers(
        &mut self,
        rx: std::sync::mpsc::Receiver<super::single_instance::Handover>,
    ) {
        self.handovers = Some(rx);
    }

    /// Carries out what later starts asked for: the window comes to the front and, for an
    /// invite, joins it (or, during a call, offers it in the join form for after this one).
    #[cfg(unix)]
    fn handle_handovers(&mut self, ctx: &egui::Context) {
        use super::single_instance::Handover;
        let Some(rx) = &self.handovers else {
            return;
        };
        let requests: Vec<Handover> = rx.try_iter().collect();
        for request in requests {
            ctx.send_viewport_cmd(egui::ViewportCommand::Minimized(false));
            ctx.send_viewport_cmd(egui::ViewportCommand::Focus);
            if let Handover::Join(invite) = request {
                if self.in_call() {
                    self.form.invite = invite;
                    self.notices.push(
                        "Another invite arrived. It is in the join form: leave this call to \
                         join it."
                            .into(),
                    );
                } else {
                    self.set_screen(Screen::Main);
                    self.join_invite(&invite, None);
                }
            }
        }
    }

    pub fn screen(&self) -> Screen {
        self.screen
    }

    /// Opens a screen (also used by the screenshot tool).
    pub fn show_screen(&mut self, screen: Screen) {
        self.set_screen(screen);
    }

    pub(super) fn set_screen(&mut self, screen: Screen) {
        if screen != self.screen {
            self.ctl
                .send(Request::WatchDevices(screen == Screen::Settings));
            if self.screen == Screen::Settings && self.snap.mic_test.is_some() {
                self.ctl.send(Request::TestMicrophone(false));
            }
        }
        self.screen = screen;
    }

    /// Saves the settings (on the writer thread) and hands the call its part of them.
    pub(super) fn settings_changed(&mut self) {
        self.writer.save(self.settings.clone());
        self.ctl
            .send(Request::Apply(CallSettings::from_settings(&self.settings)));
    }

    /// Waits until every settings change so far is on disk (window closing, tests).
    pub fn flush_settings(&self) {
        self.writer.flush();
    }

    /// Once the pending join is in the call, its relay goes first under "Recent relays"; a
    /// failed join forgets it.
    fn remember_joined_relay(&mut self) {
        if !self.in_call() {
            self.invite_copied = false;
        }
        match self.snap.phase {
            Phase::InCall if self.snap.call.is_some() => {
                if let Some(relay) = self.pending_recent.take() {
                    self.settings.remember(relay);
                    self.settings_changed();
                }
            }
            // Only a failure of this join counts: the previous one's may still be showing
            // until the controller has taken the request.
            Phase::Failed(_) if self.pending_started => self.pending_recent = None,
            Phase::Failed(_) => {}
            _ => self.pending_started = true,
        }
    }

    pub(super) fn in_call(&self) -> bool {
        matches!(
            self.snap.phase,
            Phase::Connecting { .. } | Phase::InCall | Phase::Reconnecting { .. }
        )
    }

    fn apply_theme(&mut self, ctx: &egui::Context) {
        if self.theme_applied == Some(self.settings.theme) {
            return;
        }
        self.theme_applied = Some(self.settings.theme);
        ctx.set_theme(match self.settings.theme {
            ThemeChoice::System => egui::ThemePreference::System,
            ThemeChoice::Light => egui::ThemePreference::Light,
            ThemeChoice::Dark => egui::ThemePreference::Dark,
        });
    }

    /// During a call, grabs the push-to-talk key for the whole desktop (X11, or the portal on
    /// Wayland), and lets it go when the call ends or the key changes.
    fn sync_global_ptt(&mut self, ctx: &egui::Context) {
        let wanted = self
            .settings
            .push_to_talk
            .clone()
            .filter(|_| self.global_shortcuts && self.in_call());
        if wanted == self.global_ptt_for {
            return;
        }
        self.global_ptt = None;
        self.ptt_problem = None;
        self.global_ptt_for = wanted.clone();
        let Some(name) = wanted else {
            return;
        };
        let repaint = ctx.clone();
        match Grab::start(&name, move || repaint.request_repaint()) {
            Ok(grab) => self.global_ptt = Some(grab),
            Err(problem) => {
                tracing::info!("global push-to-talk: {problem}");
                self.ptt_problem = Some(problem);
            }
        }
    }

    /// M mutes, D deafens (when no text field has focus); the push-to-talk key or mouse
    /// button transmits while held: in any window while grabbed, else in this one.
    fn shortcuts(&mut self, ctx: &egui::Context) {
        self.sync_global_ptt(ctx);
        let typing = ctx.egui_wants_keyboard_input();
        if self.in_call() && !typing {
            let (m, d) = ctx.input(|i| {
                (
                    i.modifiers.is_none() && i.key_pressed(Key::M),
                    i.modifiers.is_none() && i.key_pressed(Key::D),
                )
            });
            if m {
                self.ctl.send(Request::SetMuted(!self.snap.muted));
            }
            if d {
                self.ctl.send(Request::SetDeafened(!self.snap.deafened));
            }
        }
        let name = self.settings.push_to_talk.as_deref();
        let in_window = match name {
            Some(global_ptt::MOUSE_BACK) => {
                ctx.input(|i| i.pointer.button_down(egui::PointerButton::Extra1))
            }
            Some(global_ptt::MOUSE_FORWARD) => {
                ctx.input(|i| i.pointer.button_down(egui::PointerButton::Extra2))
            }
            Some(name) => Key::from_name(name)
                .is_some_and(|k| !typing && ctx.input(|i| i.focused && i.key_down(k))),
            None => false,
        };
        if let Some(problem) = self.global_ptt.as_ref().and_then(Grab::problem)
            && self.ptt_problem.as_ref() != Some(&problem)
        {
            tracing::info!("global push-to-talk: {problem}");
            self.ptt_problem = Some(problem);
        }
        let down = in_window || self.global_ptt.as_ref().is_some_and(Grab::held);
        if down != self.ptt_down {
            self.ptt_down = down;
            self.ctl.send(Request::SetTalking(down));
        }
    }

    fn trust_prompt(&mut self, ctx: &egui::Context) {
        let Some(prompt) = self.snap.trust_prompt.clone() else {
            return;
        };
        egui::Modal::new(egui::Id::unique("trust-prompt")).show(ctx, |ui| {
            ui.set_max_width(460.0);
            ui.heading("Trust this relay?");
            ui.label(format!(
                "This is your first connection to {}. It uses its own certificate instead of one from a certificate authority, and the invite did not include its fingerprint.",
                prompt.authority
            ));
            ui.label("Check that the relay's operator sees the same fingerprint:");
            ui.add(
                egui::Label::new(RichText::new(&prompt.fingerprint).monospace())
                    .selectable(true),
            );
            ui.label(
                RichText::new(
                    "Natter will remember it and refuse to connect if this relay's certificate ever changes.",
                )
                .small()
                .weak(),
            );
            ui.horizontal(|ui| {
                if style::primary(ui, "Trust and join").clicked() {
                    self.ctl.send(Request::AnswerTrust(true));
                }
                if ui.button("Cancel").clicked() {
                    self.ctl.send(Request::AnswerTrust(false));
                }
            });
        });
    }

    pub(super) fn notices(&mut self, ui: &mut Ui) {
        let mut dismiss = None;
        for (i, n) in self.notices.iter().enumerate() {
            style::banner(ui, style::WARN).show(ui, |ui| {
                ui.set_width(ui.available_width());
                ui.horizontal_wrapped(|ui| {
                    ui.label(n);
                    if ui.small_button("Dismiss").clicked() {
                        dismiss = Some(i);
                    }
                });
            });
        }
        if let Some(i) = dismiss {
            self.notices.remove(i);
        }
    }

    /// Builds a join request from the start form.
    pub(super) fn join_from_form(&mut self) -> Result<Request, String> {
        let name = self.settings.display_name.trim().to_string();
        if name.is_empty() {
            return Err("Enter your name first.".into());
        }
        let invite_text = self.form.invite.trim();
        let (invite, room) = if !invite_text.is_empty() {
            let mut invite: Invite = invite_text
                .parse()
                .map_err(|e| format!("That invite link does not look right: {e}."))?;
            let room = invite
                .room
                .take()
                .or_else(|| Some(self.form.room.trim().to_string()).filter(|r| !r.is_empty()))
                .ok_or("This invite names no room: type the room's name in the Room field.")?;
            (invite, room)
        } else {
            let host = self.form.host.trim();
            if host.is_empty() {
                return Err("Paste an invite link, or enter the relay's host.".into());
            }
            let port: u16 = self
                .form
                .port
                .trim()
                .parse()
                .map_err(|_| "The port must be a number from 1 to 65535.")?;
            let room = self.form.room.trim();
            if room.is_empty() {
                return Err("Enter the room to join.".into());
            }
            let text = format!(
                "natter://{}:{port}",
                if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.to_string()
                }
            );
            let invite: Invite = text
                .parse()
                .map_err(|e| format!("That relay address does not look right: {e}."))?;
            (invite, room.to_string())
        };
        let mut remembered = invite.clone();
        remembered.room = None;
        self.pending_started = false;
        self.pending_recent = Some(RecentRelay {
            invite: remembered.to_string(),
            room: room.clone(),
            label: None,
        });
        Ok(Request::Join {
            invite,
            room,
            name,
            settings: CallSettings::from_settings(&self.settings),
        })
    }

    pub(super) fn host_from_form(&mut self) -> Result<Request, String> {
        let name = self.settings.display_name.trim().to_string();
        if name.is_empty() {
            return Err("Enter your name first.".into());
        }
        let port: u16 = self
            .form
            .host_port
            .trim()
            .parse()
            .map_err(|_| "The port must be a number from 0 to 65535.")?;
        let room = self.form.host_room.trim().to_string();
        if room.is_empty() {
            return Err("Name the room.".into());
        }
        if self.settings.host_port != port {
            self.settings.host_port = port;
            self.settings_changed();
        }
        Ok(Request::Host {
            port,
            room,
            name,
            settings: CallSettings::from_settings(&self.settings),
        })
    }

    /// Writes the latency history as CSV to the export directory.
    pub(super) fn export_csv(&mut self) {
        let csv = self.ctl.with_history(|h| h.to_csv());
        let stamp = chrono_like_stamp();
        let path = self.export_dir.join(format!("natter-latency-{stamp}.csv"));
        let result = std::fs::create_dir_all(&self.export_dir)
            .and_then(|_| crate::settings::write_atomic(&path, csv.as_bytes()));
        self.export_note = Some(match result {
            Ok(()) => format!("Saved {}", path.display()),
            Err(e) => format!("Could not save {}: {e}", path.display()),
        });
    }

    /// One frame: everything the window shows.
    pub fn frame(&mut self, ui: &mut Ui) {
        let ctx = ui.ctx().clone();
        self.frames += 1;
        let window = self.frames_since.elapsed();
        if window >= Duration::from_secs(30) {
            tracing::info!(
                frames = self.frames,
                per_second = self.frames as f64 / window.as_secs_f64(),
                "repaints"
            );
            self.frames = 0;
            self.frames_since = std::time::Instant::now();
        }
        self.snap = self.ctl.snapshot();
        // The controller's problems are shown once each, like the settings writer's.
        let new_problems = self.snap.problems.len().saturating_sub(self.problems_seen);
        for p in self.snap.problems.iter().skip(self.problems_seen) {
            if !self.notices.contains(p) {
                self.notices.push(p.clone());
            }
        }
        self.problems_seen += new_problems;
        self.remember_joined_relay();
        if let Some(e) = self.writer.take_error()
            && !self.notices.contains(&e)
        {
            self.notices.push(e);
        }
        self.apply_theme(&ctx);
        #[cfg(unix)]
        self.handle_handovers(&ctx);
        let focused = ctx.input(|i| i.focused);
        if focused != self.focused {
            self.focused = focused;
            self.ctl.send(Request::WindowFocused(focused));
        }
        self.shortcuts(&ctx);
        if let Some(tray) = &mut self.tray {
            tray.show(TrayState {
                room: self.snap.call.as_ref().map(|c| c.room.clone()),
                muted: self.snap.muted,
                unread: self
                    .snap
                    .call
                    .as_ref()
                    .map_or(0, |c| c.chat_count.saturating_sub(self.chat_seen)),
            });
        }
        match self.screen {
            Screen::Settings => self.settings_screen(ui),
            Screen::Main if self.in_call() => self.call_screen(ui),
            Screen::Main => self.start_screen(ui),
        }
        if !self.in_call() {
            self.set_window_title(&ctx, "Natter".into());
        }
        self.trust_prompt(&ctx);
        if self.in_call() || matches!(self.snap.latency_test, LatencyTest::Running) {
            ctx.request_repaint_after(CALL_REPAINT);
        }
    }

    /// Sets the window's title (the room and unread chat in a call), when it changed.
    pub(super) fn set_window_title(&mut self, ctx: &egui::Context, title: String) {
        if title != self.window_title {
            ctx.send_viewport_cmd(egui::ViewportCommand::Title(title.clone()));
            self.window_title = title;
        }
    }

    /// A header row with a title on the left and the settings/back button on the right.
    pub(super) fn header(&mut self, ui: &mut Ui, title: &str, subtitle: Option<&str>) {
        ui.horizontal(|ui| {
            ui.vertical(|ui| {
                ui.heading(RichText::new(title).strong());
                if let Some(s) = subtitle {
                    ui.label(RichText::new(s).weak());
                }
            });
            ui.with_layout(Layout::right_to_left(Align::Center), |ui| {
                match self.screen {
                    Screen::Main => {
                        if ui.button("Settings").clicked() {
                            self.set_screen(Screen::Settings);
                        }
                    }
                    Screen::Settings => {
                        if ui.button("Back").clicked() {
                            self.set_screen(Screen::Main);
                        }
                    }
                }
            });
        });
    }
}

enum WriterMsg {
    Save(Box<Settings>),
    Flush(std::sync::mpsc::Sender<()>),
}

/// Writes settings files on their own thread, so a slider dragged across many values never
/// makes the UI wait for the disk: changes queue up and only the latest is written.
pub(super) struct SettingsWriter {
    tx: std::sync::mpsc::Sender<WriterMsg>,
    error: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl SettingsWriter {
    fn spawn(store: SettingsStore) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<WriterMsg>();
        let error = std::sync::Arc::new(std::sync::Mutex::new(None));
        let err = error.clone();
        let _ = std::thread::Builder::new()
            .name("natter-settings".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut latest = None;
                    let mut flushes = Vec::new();
                    for msg in std::iter::once(first).chain(rx.try_iter()) {
                        match msg {
                            WriterMsg::Save(s) => latest = Some(s),
                            WriterMsg::Flush(done) => flushes.push(done),
                        }
                    }
                    if let Some(s) = latest
                        && let Err(e) = store.save(&s)
                    {
                        let msg = format!(
                            "Settings could not be saved to {}: {e}",
                            store.path().display()
                        );
                        tracing::warn!("{msg}");
                        *err.lock().unwrap_or_else(|p| p.into_inner()) = Some(msg);
                    }
                    flushes.into_iter().for_each(|d| {
                        let _ = d.send(());
                    });
                }
            });
        Self { tx, error }
    }

    fn save(&self, settings: Settings) {
        let _ = self.tx.send(WriterMsg::Save(Box::new(settings)));
    }

    fn flush(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        if self.tx.send(WriterMsg::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(Duration::from_secs(5));
        }
    }

    fn take_error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// `YYYYMMDD-HHMMSS` (UTC) without a date crate.
fn chrono_like_stamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl eframe::App for NatterApp {
    fn ui(&mut self, ui: &mut Ui, _frame: &mut eframe::Frame) {
        self.frame(ui);
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        self.writer.flush();
        self.ctl.shutdown();
    }

    fn clear_color(&self, visuals: &egui::Visuals) -> [f32; 4] {
        visuals.panel_fill.to_normalized_gamma_f32()
    }
}

/// Quality choices offered in settings (kbit/s; `None` = auto).
pub const QUALITY_CHOICES: [(Option<u32>, &str); 6] = [
    (None, "Automatic (adapts to the network)"),
    (Some(16), "16 kbit/s (low bandwidth)"),
    (Some(24), "24 kbit/s"),
    (Some(32), "32 kbit/s"),
    (Some(48), "48 kbit/s"),
    (Some(64), "64 kbit/s (music)"),
];

/// Push-to-talk keys offered in Settings (any other key or a mouse side button can be set by
/// pressing it there).
pub const PTT_KEYS: [&str; 5] = ["Space", "V", "T", "B", "F1"];

pub(super) fn quality_label(q: Quality) -> &'static str {
    let key = match q {
        Quality::Auto => None,
        Quality::Fixed(k) => Some(k),
    };
    QUALITY_CHOICES
        .iter()
        .find(|(k, _)| *k == key)
        .map_or("Custom", |(_, l)| l)
}

pub(super) fn jitter_is_fixed(j: JitterMode) -> bool {
    matches!(j, JitterMode::Fixed(_))
}

#[cfg(test)]
mod tests {
    #[test]
    fn stamp_is_a_plausible_date() {
        let s = super::chrono_like_stamp();
        assert_eq!(s.len(), 15);
        assert!(s.starts_with("20"));
        let month: u32 = s[4..6].parse().unwrap();
        let day: u32 = s[6..8].parse().unwrap();
        assert!((1..=12).contains(&month) && (1..=31).contains(&day), "{s}");
    }
}
