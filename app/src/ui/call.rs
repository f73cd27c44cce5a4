//! The in-call screen: who is here and who is speaking, mute/deafen/leave, per-person volume,
//! connection quality, and the latency meter.

use super::app::NatterApp;
use super::{meter, style};
use crate::controller::{CallView, LatencyTest, ParticipantView, Phase, Request};
use egui::{Align, Layout, RichText, ScrollArea, Ui, vec2};

impl NatterApp {
    pub(super) fn call_screen(&mut self, ui: &mut Ui) {
        let call = self.snap.call.clone();
        let (title, subtitle) = match (&call, &self.snap.phase) {
            (Some(c), _) => (c.room.clone(), format!("via {}", c.relay)),
            (None, Phase::Connecting { to }) => ("Connecting…".into(), format!("to {to}")),
            (None, _) => ("Reconnecting…".into(), String::new()),
        };
        egui::Panel::top("call-header")
            .frame(egui::Frame::new().inner_margin(egui::Margin::symmetric(18, 12)))
            .show(ui, |ui| {
                self.header(ui, &title, Some(&subtitle));
                self.status_line(ui);
            });
        egui::Panel::bottom("call-controls")
            .frame(egui::Frame::new().inner_margin(egui::Margin::symmetric(18, 12)))
            .show(ui, |ui| self.controls(ui));
        style::central_panel(ui).show(ui, |ui| {
            ScrollArea::vertical()
                .auto_shrink([false, false])
                .show(ui, |ui| {
                    ui.add_space(4.0);
                    self.notices(ui);
                    self.end_call_prompt(ui);
                    self.hosting_card(ui);
                    self.invite_card(ui);
                    if let Phase::Reconnecting { attempt, reason } = &self.snap.phase {
                        style::banner(ui, style::WARN).show(ui, |ui| {
                            ui.set_width(ui.available_width());
                            ui.label(
                                RichText::new(format!("Reconnecting (attempt {attempt})…"))
                                    .strong(),
                            );
                            ui.label(format!("The connection to the relay was lost: {reason}"));
                        });
                    }
                    if call.as_ref().is_some_and(|c| c.engine.device_missing) {
                        style::banner(ui, style::WARN).show(ui, |ui| {
                            ui.set_width(ui.available_width());
                            ui.label(RichText::new("Your microphone or speaker is gone").strong());
                            ui.label(
                                "It was unplugged or stopped working. Natter keeps trying: plug \
                                 it back in, or choose another device in Settings.",
                            );
                        });
                    }
                    if let Some(c) = &call {
                        self.chat_card(ui, c);
                    }
                    match &call {
                        Some(c) if !self.settings.call_details => {
                            self.roster_card(ui, &c.participants)
                        }
                        // Wide windows: people on the left, latency on the right.
                        Some(c) if ui.available_width() >= 860.0 => {
                            ui.columns(2, |cols| {
                                self.roster_card(&mut cols[0], &c.participants);
                                self.latency_card(&mut cols[1], &c.participants);
                            });
                        }
                        Some(c) => {
                            self.roster_card(ui, &c.participants);
                            self.latency_card(ui, &c.participants);
                        }
                        None => {
                            // No spinner: it would repaint continuously; the call screen already
                            // refreshes at 10 Hz.
                            ui.label(RichText::new("Joining the room…").weak());
                        }
                    }
                });
        });
    }

    fn status_line(&mut self, ui: &mut Ui) {
        let Some(call) = self.snap.call.clone() else {
            return;
        };
        ui.horizontal_wrapped(|ui| {
            let (dot, text) = match &self.snap.phase {
                Phase::InCall => (style::SPEAKING, "Connected".to_string()),
                Phase::Reconnecting { .. } => (style::WARN, "Reconnecting".to_string()),
                _ => (style::WARN, "Connecting".to_string()),
            };
            let (rect, _) = ui.allocate_exact_size(egui::vec2(10.0, 10.0), egui::Sense::hover());
            ui.painter().circle_filled(rect.center(), 4.0, dot);
            ui.label(text);
            let details = self.settings.call_details;
            let label = if details {
                "Simple view"
            } else {
                "Show details"
            };
            if ui
                .small_button(label)
                .on_hover_text("Switch between the simple view and the full latency meter")
                .clicked()
            {
                self.settings.call_details = !details;
                self.settings_changed();
            }
            if !details {
                return;
            }
            if let Some(rtt) = call.relay_rtt_ms {
                let rtt = if rtt < 10.0 {
                    format!("{rtt:.1}")
                } else {
                    format!("{rtt:.0}")
                };
                ui.label(RichText::new(format!("relay round trip {rtt} ms")).weak());
            }
            let e = &call.engine;
            if e.bitrate_bps > 0 {
                ui.label(
                    RichText::new(format!(
                        "sending {:.0} kbit/s, {:.0} ms frames",
                        f64::from(e.bitrate_bps) / 1000.0,
                        e.frame_ms
                    ))
                    .weak(),
                );
            }
            if let Some((i, o)) = &call.devices {
                ui.label(RichText::new(format!("mic {i} · speaker {o}")).weak());
            }
        });
    }

    /// How many other people are in a call this app hosts (0 when not hosting).
    fn others_in_hosted_call(&self) -> usize {
        match (&self.snap.hosting, &self.snap.call) {
            (Some(_), Some(call)) => call.participants.len().saturating_sub(1),
            _ => 0,
        }
    }

    /// Asks a host whether to end the call for everyone before leaving.
    fn end_call_prompt(&mut self, ui: &mut Ui) {
        if !self.confirm_end_call {
            return;
        }
        let others = self.others_in_hosted_call();
        if others == 0 {
            // Everyone else left meanwhile: nothing to ask.
            self.confirm_end_call = false;
            return;
        }
        style::banner(ui, style::WARN).show(ui, |ui| {
            ui.set_width(ui.available_width());
            let people = if others == 1 {
                "the other person".to_string()
            } else {
                format!("the {others} other people")
            };
            ui.label(
                RichText::new(format!(
                    "You are hosting: leaving ends the call for {people}."
                ))
                .strong(),
            );
            ui.horizontal(|ui| {
                if ui.button("End the call for everyone").clicked() {
                    self.confirm_end_call = false;
                    self.ctl.send(Request::Leave);
                }
                if ui.button("Stay").clicked() {
                    self.confirm_end_call = false;
                }
            });
        });
    }

    /// Everyone in a call can invite others (the host has its own card with the public link).
    fn invite_card(&mut self, ui: &mut Ui) {
        if self.snap.hosting.is_some() {
            return;
        }
        let Some(call) = &self.snap.call else {
            return;
        };
        if call.share_invite.is_empty() {
            return;
        }
        let (invite, needs_token) = (call.share_invite.clone(), call.needs_token);
        egui::CollapsingHeader::new("Invite someone")
            .default_open(false)
            .show(ui, |ui| {
                let l = ui.add(
                    egui::Label::new(RichText::new(&invite).monospace())
                        .selectable(true)
                        .wrap(),
                );
                l.widget_info(|| {
                    egui::WidgetInfo::labeled(
                        egui::Role::Label,
                        true,
                        format!("Invite link: {invite}"),
                    )
                });
                if needs_token {
                    ui.label(
                        RichText::new(
                            "This relay admits people with a token: whoever you invite needs \
                             their own from the relay's operator.",
                        )
                        .weak(),
                    );
                }
                self.copy_invite_button(ui, &invite);
            });
    }

    /// "Copy invite", and once clicked, a word that it worked.
    fn copy_invite_button(&mut self, ui: &mut Ui, invite: &str) {
        ui.horizontal(|ui| {
            if ui.button("Copy invite").clicked() {
                ui.ctx().copy_text(invite.to_string());
                self.invite_copied = true;
            }
            if self.invite_copied {
                ui.label(RichText::new("Invite copied to the clipboard.").weak());
            }
        });
    }

    fn hosting_card(&mut self, ui: &mut Ui) {
        let Some(h) = self.snap.hosting.clone() else {
            return;
        };
        style::card(ui).show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.label(RichText::new("You are hosting this call").strong());
            ui.label(
                RichText::new(format!(
                    "Send this invite to the others. The relay runs on this computer (UDP port {}); leaving ends the call for everyone.",
                    h.port
                ))
                .weak(),
            );
            ui.label(&h.reach);
            ui.horizontal(|ui| {
                let l = ui.add(
                    egui::Label::new(RichText::new(&h.invite).monospace())
                        .selectable(true)
                        .wrap(),
                );
                l.widget_info(|| {
                    egui::WidgetInfo::labeled(egui::Role::Label, true, format!("Invite link: {}", h.invite))
                });
            });
            self.copy_invite_button(ui, &h.invite);
        });
    }

    /// The room's chat: the lines so far, a field to write in (Enter sends), and how many are
    /// new while the window is not in front (also in the window's title, which the taskbar
    /// shows).
    fn chat_card(&mut self, ui: &mut Ui, call: &CallView) {
        let focused = ui.input(|i| i.focused);
        if focused {
            self.chat_seen = call.chat_count;
        }
        let new = call.chat_count.saturating_sub(self.chat_seen);
        self.set_window_title(
            ui.ctx(),
            match new {
                0 => format!("{} · Natter", call.room),
                n => format!("({n}) {} · Natter", call.room),
            },
        );
        style::card(ui).show(ui, |ui| {
            ui.set_width(ui.available_width());
            let heading = match new {
                0 => "Chat".to_string(),
                n => format!("Chat · {n} new"),
            };
            ui.label(RichText::new(heading).heading());
            ScrollArea::vertical()
                .max_height(160.0)
                .stick_to_bottom(true)
                .show(ui, |ui| {
                    if call.chat.is_empty() {
                        ui.label(RichText::new("No messages yet.").weak());
                    }
                    for line in &call.chat {
                        ui.horizontal_wrapped(|ui| {
                            let who = if line.own { "You" } else { &line.from };
                            ui.label(RichText::new(format!("{who}:")).strong());
                            ui.label(&line.text);
                        });
                    }
                });
            ui.horizontal(|ui| {
                let label = ui.label("Message");
                let field = ui
                    .add(
                        egui::TextEdit::singleline(&mut self.chat_draft)
                            .hint_text("to everyone in the room")
                            .desired_width(ui.available_width() - 70.0),
                    )
                    .labelled_by(label.id);
                let enter = field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter));
                let send = ui.button("Send").clicked() || enter;
                if send && !self.chat_draft.trim().is_empty() {
                    let text = std::mem::take(&mut self.chat_draft);
                    self.ctl.send(Request::SendChat(text));
                    field.request_focus();
                }
            });
        });
    }

    fn roster_card(&mut self, ui: &mut Ui, people: &[ParticipantView]) {
        style::card(ui).show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.label(RichText::new(format!("In the call ({})", people.len())).heading());
            for p in people {
                ui.separator();
                self.roster_row(ui, p);
            }
        });
    }

    fn roster_row(&mut self, ui: &mut Ui, p: &ParticipantView) {
        ui.horizontal(|ui| {
            style::speaking_dot(ui, &p.name, p.speaking, p.muted);
            let name = if p.is_me {
                RichText::new(format!("{} (you)", p.name)).strong()
            } else {
                RichText::new(&p.name).strong()
            };
            ui.label(name);
            if p.muted {
                ui.label(RichText::new("muted").small().color(style::DANGER));
            }
            if p.locally_muted {
                ui.label(RichText::new("muted for you").small().weak());
            }
            if self.settings.call_details {
                let detail = match &p.stats {
                    Some(s) => meter::link_numbers(s, p.recent_loss),
                    None => String::new(),
                };
                style::quality_bars(ui, &p.name, p.quality, &detail);
            } else if !p.is_me {
                style::quality_dot(ui, &p.name, p.quality);
                if let Some(s) = p.stats.as_ref().filter(|s| s.stages.complete) {
                    ui.label(
                        RichText::new(format!(
                            "you hear {} {:.0} ms after they speak",
                            p.name, s.stages.total_ms
                        ))
                        .weak(),
                    );
                }
            }
            ui.with_layout(Layout::right_to_left(Align::Center), |ui| {
                if p.is_me {
                    if let Some(c) = &self.snap.call {
                        let threshold = self
                            .snap
                            .applied
                            .as_ref()
                            .filter(|a| a.voice_activation)
                            .map(|a| a.voice_threshold_db);
                        style::level_meter(
                            ui,
                            120.0,
                            c.engine.input_level_db,
                            c.engine.voice_active,
                            threshold,
                        );
                    }
                } else {
                    let label = if p.locally_muted {
                        format!("Unmute {} for me", p.name)
                    } else {
                        format!("Mute {} for me", p.name)
                    };
                    let text = if p.locally_muted {
                        "Unmute"
                    } else {
                        "Mute for me"
                    };
                    let r = ui.button(text);
                    // The accessible name says whom the button is about.
                    r.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, true, &label));
                    if r.on_hover_text(&label).clicked() {
                        self.ctl.send(Request::SetLocalMute {
                            name: p.name.clone(),
                            muted: !p.locally_muted,
                        });
                    }
                }
            });
        });
        if !p.is_me && self.settings.call_details {
            ui.horizontal(|ui| {
                ui.add_space(32.0);
                let mut percent = p.volume * 100.0;
                let r = ui.add_enabled(
                    !p.locally_muted,
                    egui::Slider::new(&mut percent, 0.0..=200.0)
                        .suffix(" %")
                        .integer()
                        .show_value(true)
                        .text(format!("Volume of {}", p.name)),
                );
                if r.changed() {
                    self.ctl.send(Request::SetVolume {
                        name: p.name.clone(),
                        volume: percent / 100.0,
                    });
                }
            });
        }
    }

    fn latency_card(&mut self, ui: &mut Ui, people: &[ParticipantView]) {
        style::card(ui).show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.label(RichText::new("Latency").heading());
            let others: Vec<&ParticipantView> = people
                .iter()
                .filter(|p| !p.is_me && p.stats.is_some())
                .collect();
            if others.is_empty() {
                ui.label(
                    RichText::new("Nobody is sending audio yet. The meter shows where each person's voice spends its time on the way to you.")
                        .weak(),
                );
            }
            let scale = others
                .iter()
                .filter_map(|p| p.stats.as_ref().map(|s| s.stages.total_ms))
                .fold(100.0, f64::max)
                * 1.1;
            for p in &others {
                let Some(s) = &p.stats else { continue };
                ui.add_space(4.0);
                ui.horizontal(|ui| {
                    ui.label(RichText::new(&p.name).strong());
                    let total = if s.stages.complete {
                        format!("{:.0} ms mouth-to-ear", s.stages.total_ms)
                    } else {
                        "measuring…".into()
                    };
                    ui.label(total);
                });
                meter::stage_bar(ui, &p.name, s, scale);
                ui.label(RichText::new(meter::link_numbers(s, p.recent_loss)).small().weak());
            }
            if !others.is_empty() {
                meter::legend(ui);
            }
            self.ctl.with_history(|h| {
                if !h.is_empty() {
                    meter::history_plot(ui, h);
                }
            });
            ui.horizontal_wrapped(|ui| {
                if ui.button("Export CSV").clicked() {
                    self.export_csv();
                }
                let running = matches!(self.snap.latency_test, LatencyTest::Running);
                if ui
                    .add_enabled(!running, egui::Button::new("Run latency test"))
                    .on_hover_text("Sends chirps to the relay and back, and measures how long they take")
                    .clicked()
                {
                    self.ctl.send(Request::RunLatencyTest);
                }
            });
            match &self.snap.latency_test {
                LatencyTest::Idle => {}
                LatencyTest::Running => {
                    ui.label("Measuring the round trip through the relay…");
                }
                LatencyTest::Done(r) => {
                    ui.label(
                        RichText::new(format!("Measured round trip: {:.1} ms", r.measured_ms))
                            .strong(),
                    );
                    let estimate = r
                        .estimate_ms
                        .map_or(String::new(), |e| format!("; the meter's stages add up to {e:.1} ms"));
                    ui.label(
                        RichText::new(format!(
                            "{} of {} chirps came back, 90 % within {:.1}–{:.1} ms{estimate}.",
                            r.chirps_found, r.chirps_sent, r.p05_ms, r.p95_ms
                        ))
                        .small()
                        .weak(),
                    );
                }
                LatencyTest::Failed(e) => {
                    ui.label(
                        RichText::new(format!("Latency test failed: {e}")).color(style::DANGER),
                    );
                }
            }
            if let Some(note) = &self.export_note {
                ui.label(RichText::new(note).small().weak());
            }
        });
    }

    fn controls(&mut self, ui: &mut Ui) {
        let muted = self.snap.muted;
        let deafened = self.snap.deafened;
        ui.horizontal(|ui| {
            let size = vec2(120.0, 38.0);
            let mute_text = if muted { "Unmute" } else { "Mute" };
            let mut mute = egui::Button::new(RichText::new(mute_text).strong()).min_size(size);
            if muted {
                mute = mute.fill(style::DANGER.gamma_multiply(0.35));
            }
            if ui
                .add(mute)
                .on_hover_text("Microphone on/off (M)")
                .clicked()
            {
                self.ctl.send(Request::SetMuted(!muted));
            }
            let deafen_text = if deafened { "Undeafen" } else { "Deafen" };
            let mut deafen = egui::Button::new(RichText::new(deafen_text).strong()).min_size(size);
            if deafened {
                deafen = deafen.fill(style::DANGER.gamma_multiply(0.35));
            }
            if ui
                .add(deafen)
                .on_hover_text("Stop hearing the call; also mutes you (D)")
                .clicked()
            {
                self.ctl.send(Request::SetDeafened(!deafened));
            }
            if let Some(key) = &self.settings.push_to_talk {
                let text = if self.snap.talking {
                    RichText::new(format!("Talking ({key})"))
                        .color(style::SPEAKING)
                        .strong()
                } else {
                    RichText::new(format!("Hold {key} to talk")).weak()
                };
                ui.label(text);
                if let Some(problem) = &self.ptt_problem {
                    ui.label(RichText::new(format!("({problem})")).weak().small());
                }
            } else {
                ui.label(RichText::new("M mute · D deafen").weak().small());
            }
            ui.with_layout(Layout::right_to_left(Align::Center), |ui| {
                let leave =
                    egui::Button::new(RichText::new("Leave").strong().color(egui::Color32::WHITE))
                        .fill(style::DANGER)
                        .min_size(size);
                if ui.add(leave).clicked() {
                    if self.others_in_hosted_call() > 0 {
                        // The relay lives in this app: leaving takes everyone's call with it.
                        self.confirm_end_call = true;
                    } else {
                        self.ctl.send(Request::Leave);
                    }
                }
            });
        });
    }
}
