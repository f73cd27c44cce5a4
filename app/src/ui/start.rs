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
        egui::CentralPanel::default().show(ui, |ui| {
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
            field(
                ui,
                "Invite link",
                &mut self.form.invite,
                "natter://host:port/room?fp=…",
            );
            egui::CollapsingHeader::new("Or enter the relay's address")
                .default_open(false)
                .show(ui, |ui| {
                    ui.columns(2, |cols| {
                        field(
                            &mut cols[0],
                            "Host",
                            &mut self.form.host,
                            "relay.example.org",
                        );
                        field(&mut cols[1], "Port", &mut self.form.port, "4433");
                    });
                    field(ui, "Room", &mut self.form.room, "lounge");
                });
            if let Some(e) = &self.form.error {
                ui.label(RichText::new(e).color(style::DANGER));
            }
            if style::primary(ui, "Join").clicked() {
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
                for (i, r) in self.settings.recent.iter().enumerate() {
                    let host = r
                        .invite
                        .parse::<natter_proto::invite::Invite>()
                        .map(|i| i.authority())
                        .unwrap_or_else(|_| r.invite.clone());
                    ui.horizontal(|ui| {
                        ui.label(RichText::new(&r.room).strong());
                        ui.label(RichText::new(format!("on {host}")).weak());
                        ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                            let label = format!("Use {} on {host}", r.room);
                            let b = ui.button("Use");
                            b.widget_info(|| {
                                egui::WidgetInfo::labeled(egui::Role::Button, true, &label)
                            });
                            if b.on_hover_text(&label).clicked() {
                                pick = Some(i);
                            }
                        });
                    });
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
            ui.columns(2, |cols| {
                field(
                    &mut cols[0],
                    "Room name",
                    &mut self.form.host_room,
                    "lounge",
                );
                field(&mut cols[1], "Relay port", &mut self.form.host_port, "4433");
            });
            if let Some(e) = &self.form.host_error {
                ui.label(RichText::new(e).color(style::DANGER));
            }
            if style::primary(ui, "Host a call").clicked() {
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
