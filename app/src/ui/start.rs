//! The start screen: join by invite or address, recent relays, host a call.

use super::app::NatterApp;
use super::style;
use crate::controller::{Phase, Request};
use egui::{RichText, ScrollArea, Ui};

/// Width of the centred column.
const COLUMN: f32 = 520.0;

/// A label and a single-line field tied to it for screen readers.
fn field(ui: &mut Ui, label: &str, value: &mut String, hint: &str) -> egui::Response {
    let l = ui.label(label);
    ui.add(
        egui::TextEdit::singleline(value)
            .hint_text(hint)
            .desired_width(f32::INFINITY),
    )
    .labelled_by(l.id)
}

/// Whether the user pressed Enter in this text field (egui ends the edit on Enter): forms
/// submit on Enter as people expect.
fn entered(ui: &Ui, field: &egui::Response) -> bool {
    field.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter))
}

/// Centres a column of at most `width` in the available space.
pub(super) fn column(ui: &mut Ui, width: f32, add: impl FnOnce(&mut Ui)) {
    let avail = ui.available_width();
    let w = width.min(avail);
    ui.horizontal(|ui| {
        ui.add_space(((avail - w) / 2.0).max(0.0));
        ui.vertical(|ui| {
            ui.set_width(w);
            add(ui);
        });
    });
}

impl NatterApp {
    pub(super) fn start_screen(&mut self, ui: &mut Ui) {
        style::central_panel(ui).show(ui, |ui| {
            ScrollArea::vertical()
                .auto_shrink([false, false])
                .show(ui, |ui| {
                    ui.add_space(12.0);
                    column(ui, COLUMN, |ui| self.start_column(ui));
                    ui.add_space(12.0);
                });
        });
    }

    fn start_column(&mut self, ui: &mut Ui) {
        self.header(
            ui,
            "Natter",
            Some("Voice calls with as little delay as your network allows."),
        );
        self.notices(ui);
        if let Phase::Failed(f) = &self.snap.phase {
            let (color, title) = if f.certificate_changed {
                (style::DANGER, "Relay certificate changed — not connecting")
            } else if f.hosting {
                (style::DANGER, "Could not host the call")
            } else {
                (style::DANGER, "Could not join")
            };
            let message = f.message.clone();
            style::banner(ui, color).show(ui, |ui| {
                ui.set_width(ui.available_width());
                ui.label(RichText::new(title).strong());
                ui.label(message);
                if ui.small_button("Dismiss").clicked() {
                    self.ctl.send(Request::Dismiss);
                }
            });
        }

        style::card(ui).show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.label(RichText::new("Join a call").heading());
            let mut name = self.settings.display_name.clone();
            if field(ui, "Your name", &mut name, "How others see you").changed() {
                self.settings.display_name = name;
                self.settings_changed();
            }
            let mut submit = false;
            let invite = field(
                ui,
                "Invite link",
                &mut self.form.invite,
                "natter://host:port/room?fp=…",
            );
            submit |= entered(ui, &invite);
            // An invite without a room (what a relay prints): ask for the room right here,
            // where the user is looking, not in the collapsed section below.
            let roomless = self
                .form
                .invite
                .trim()
                .parse::<natter_proto::invite::Invite>()
                .is_ok_and(|i| i.room.is_none());
            if roomless {
                let room = field(ui, "Room", &mut self.form.room, "lounge");
                submit |= entered(ui, &room);
            }
            egui::CollapsingHeader::new("Or enter the relay's address")
                .default_open(false)
                .show(ui, |ui| {
                    ui.columns(2, |cols| {
                        let host = field(
                            &mut cols[0],
                            "Host",
                            &mut self.form.host,
                            "relay.example.org",
                        );
                        submit |= entered(&cols[0], &host);
                        let port = field(&mut cols[1], "Port", &mut self.form.port, "4433");
                        submit |= entered(&cols[1], &port);
                    });
                    if !roomless {
                        let room = field(ui, "Room", &mut self.form.room, "lounge");
                        submit |= entered(ui, &room);
                    }
                });
            if let Some(e) = &self.form.error {
                ui.label(RichText::new(e).color(style::DANGER));
            }
            if style::primary(ui, "Join").clicked() || submit {
                match self.join_from_form() {
                    Ok(req) => {
                        self.form.error = None;
                        self.ctl.send(req);
                    }
                    Err(e) => self.form.error = Some(e),
                }
            }
        });

        if !self.settings.recent.is_empty() {
            style::card(ui).show(ui, |ui| {
                ui.set_width(ui.available_width());
                ui.label(RichText::new("Recent relays").heading());
                let mut pick = None;
                let mut forget = None;
                let mut rename = None;
                let mut cancel = false;
                for (i, r) in self.settings.recent.iter().enumerate() {
                    let host = r
                        .invite
                        .parse::<natter_proto::invite::Invite>()
                        .map(|i| i.authority())
                        .unwrap_or_else(|_| r.invite.clone());
                    let what = format!("{} on {host}", r.room);
                    if let Some((at, text)) = &mut self.form.renaming
                        && *at == i
                    {
                        let l = ui.label(format!("Name for {what}"));
                        let edit = ui.add(
                            egui::TextEdit::singleline(text)
                                .hint_text(&r.room)
                                .desired_width(f32::INFINITY),
                        );
                        let edit = edit.labelled_by(l.id);
                        let save_on_enter = entered(ui, &edit);
                        ui.horizontal(|ui| {
                            if ui.button("Save name").clicked() || save_on_enter {
                                rename = Some((i, text.clone()));
                            }
                            if ui.button("Cancel").clicked() {
                                cancel = true;
                            }
                        });
                        continue;
                    }
                    ui.horizontal(|ui| {
                        match &r.label {
                            Some(label) => {
                                ui.label(RichText::new(label).strong());
                                ui.label(RichText::new(&what).weak());
                            }
                            None => {
                                ui.label(RichText::new(&r.room).strong());
                                ui.label(RichText::new(format!("on {host}")).weak());
                            }
                        }
                        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                            let named = |ui: &mut Ui, text: &str, label: String| {
                                let b = ui.small_button(text);
                                b.widget_info(|| {
                                    egui::WidgetInfo::labeled(egui::Role::Button, true, &label)
                                });
                                b.on_hover_text(label).clicked()
                            };
                            if named(ui, "Remove", format!("Remove {what}")) {
                                forget = Some(i);
                            }
                            if named(ui, "Rename", format!("Rename {what}")) {
                                self.form.renaming = Some((i, r.label.clone().unwrap_or_default()));
                            }
                            if named(ui, "Use", format!("Use {what}")) {
                                pick = Some(i);
                            }
                        });
                    });
                }
                if cancel {
                    self.form.renaming = None;
                }
                if let Some((i, label)) = rename {
                    self.settings.rename(i, &label);
                    self.form.renaming = None;
                    self.settings_changed();
                }
                if let Some(i) = forget {
                    self.settings.forget(i);
                    self.form.renaming = None;
                    self.settings_changed();
                }
                if let Some(i) = pick {
                    let r = self.settings.recent[i].clone();
                    self.form.invite = r.invite;
                    self.form.room = r.room;
                    if let Ok(mut inv) = self.form.invite.parse::<natter_proto::invite::Invite>() {
                        inv.room = Some(self.form.room.clone());
                        self.form.invite = inv.to_string();
                    }
                }
            });
        }

        style::card(ui).show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.label(RichText::new("Host your own call").heading());
            ui.label(
                RichText::new(
                    "Runs a relay on this computer; you get an invite link to send to the others.",
                )
                .weak(),
            );
            let mut submit = false;
            ui.columns(2, |cols| {
                let room = field(
                    &mut cols[0],
                    "Room name",
                    &mut self.form.host_room,
                    "lounge",
                );
                submit |= entered(&cols[0], &room);
                let port = field(&mut cols[1], "Relay port", &mut self.form.host_port, "4433");
                submit |= entered(&cols[1], &port);
            });
            if let Some(e) = &self.form.host_error {
                ui.label(RichText::new(e).color(style::DANGER));
            }
            if style::primary(ui, "Host a call").clicked() || submit {
                match self.host_from_form() {
                    Ok(req) => {
                        self.form.host_error = None;
                        self.ctl.send(req);
                    }
                    Err(e) => self.form.host_error = Some(e),
                }
            }
        });
    }
}
