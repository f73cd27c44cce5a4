//! The settings screen. Every change is saved at once (atomically) and applied to the call.

use super::app::{NatterApp, PTT_KEYS, QUALITY_CHOICES, jitter_is_fixed, quality_label};
use super::start::column;
use super::style;
use crate::audio::device::DeviceList;
use crate::controller::view_model::MicReading;
use crate::controller::{MicTestView, Request};
use crate::settings::{JitterMode, Quality, ThemeChoice};
use crate::vad::THRESHOLD_RANGE_DB;
use egui::{RichText, ScrollArea, Ui};
use std::time::Duration;

/// How often the settings screen redraws while the microphone meter moves.
const METER_REPAINT: Duration = Duration::from_millis(50);

/// Label for a device choice (`None` follows the system default): the name people recognise,
/// while the raw name stays the id settings keep.
fn device_label(devices: &DeviceList, d: &Option<String>) -> String {
    d.as_deref()
        .map_or_else(|| "System default".into(), |d| devices.label(d).to_string())
}

impl NatterApp {
    pub(super) fn settings_screen(&mut self, ui: &mut Ui) {
        style::central_panel(ui).show(ui, |ui| {
            ScrollArea::vertical()
                .auto_shrink([false, false])
                .show(ui, |ui| {
                    ui.add_space(12.0);
                    column(ui, 560.0, |ui| self.settings_column(ui));
                    ui.add_space(12.0);
                });
        });
    }

    fn settings_column(&mut self, ui: &mut Ui) {
        self.header(
            ui,
            "Settings",
            Some("Changes are saved and applied immediately."),
        );
        self.notices(ui);
        let mut changed = false;
        let s = &mut self.settings;

        style::card(ui).show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.label(RichText::new("Audio devices").heading());
            let devices = self.snap.devices.clone().unwrap_or_default();
            let mut inputs: Vec<Option<String>> = vec![None];
            inputs.extend(devices.inputs.iter().cloned().map(Some));
            let mut outputs: Vec<Option<String>> = vec![None];
            outputs.extend(devices.outputs.iter().cloned().map(Some));
            // Keep a chosen device listed even while it is unplugged.
            if s.input_device.is_some() && !inputs.contains(&s.input_device) {
                inputs.push(s.input_device.clone());
            }
            if s.output_device.is_some() && !outputs.contains(&s.output_device) {
                outputs.push(s.output_device.clone());
            }
            egui::ComboBox::from_label("Microphone")
                .selected_text(device_label(&devices, &s.input_device))
                .width(300.0)
                .show_ui(ui, |ui| {
                    for d in &inputs {
                        changed |= ui
                            .selectable_value(
                                &mut s.input_device,
                                d.clone(),
                                device_label(&devices, d),
                            )
                            .on_hover_text(d.as_deref().unwrap_or("default"))
                            .changed();
                    }
                });
            egui::ComboBox::from_label("Speaker")
                .selected_text(device_label(&devices, &s.output_device))
                .width(300.0)
                .show_ui(ui, |ui| {
                    for d in &outputs {
                        changed |= ui
                            .selectable_value(
                                &mut s.output_device,
                                d.clone(),
                                device_label(&devices, d),
                            )
                            .on_hover_text(d.as_deref().unwrap_or("default"))
                            .changed();
                    }
                });
            match (&self.snap.devices, &self.snap.device_error) {
                (_, Some(e)) => {
                    ui.label(RichText::new(format!("Audio devices: {e}")).color(style::DANGER));
                }
                (None, None) => {
                    ui.label(RichText::new("Looking for devices…").weak());
                }
                (Some(_), None) => {
                    ui.label(
                        RichText::new("The list follows devices being plugged in and out.")
                            .small()
                            .weak(),
                    );
                }
            }
        });

        style::card(ui).show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.label(RichText::new("Microphone test and voice activation").heading());
            let testing = self.snap.mic_test.is_some();
            let button = if testing {
                "Stop test"
            } else {
                "Test microphone"
            };
            if ui.button(button).clicked() {
                self.ctl.send(Request::TestMicrophone(!testing));
            }
            match &self.snap.mic_test {
                Some(MicTestView::Level(level)) => {
                    let reading = MicReading {
                        level_db: level.get(),
                        threshold_db: s.voice_threshold_db,
                    };
                    style::level_meter(
                        ui,
                        300.0,
                        reading.level_db,
                        reading.above_threshold(),
                        Some(reading.threshold_db),
                    );
                    ui.label(RichText::new(reading.describe()).small());
                    ui.ctx().request_repaint_after(METER_REPAINT);
                }
                Some(MicTestView::Failed(e)) => {
                    ui.label(RichText::new(e).color(style::DANGER));
                }
                None => {}
            }
            changed |= ui
                .add_enabled(
                    s.push_to_talk.is_none(),
                    egui::Checkbox::new(&mut s.voice_activation, "Voice activation"),
                )
                .on_hover_text("Send only while you speak")
                .on_disabled_hover_text("Push to talk decides when you send")
                .changed();
            changed |= ui
                .add(
                    egui::Slider::new(&mut s.voice_threshold_db, THRESHOLD_RANGE_DB)
                        .step_by(1.0)
                        .suffix(" dBFS")
                        .text("Voice activation threshold"),
                )
                .changed();
            ui.label(
                RichText::new(
                    "Test the microphone and talk: the bar should pass the line while you speak \
                     and fall behind it when you stop.",
                )
                .small()
                .weak(),
            );
        });

        style::card(ui).show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.label(RichText::new("Voice processing").heading());
            changed |= ui
                .checkbox(&mut s.echo_cancellation, "Echo cancellation")
                .on_hover_text("Removes your speakers' sound from your microphone (adds ~8 ms)")
                .changed();
            changed |= ui
                .checkbox(&mut s.noise_suppression, "Noise suppression")
                .on_hover_text("Removes steady background noise (adds ~6 ms)")
                .changed();
            changed |= ui
                .checkbox(&mut s.gain_control, "Automatic gain control")
                .on_hover_text("Keeps your voice at an even level")
                .changed();
        });

        style::card(ui).show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.label(RichText::new("Quality and latency").heading());
            egui::ComboBox::from_label("Quality")
                .selected_text(quality_label(s.quality))
                .width(300.0)
                .show_ui(ui, |ui| {
                    for (kbps, label) in QUALITY_CHOICES {
                        let q = kbps.map_or(Quality::Auto, Quality::Fixed);
                        changed |= ui.selectable_value(&mut s.quality, q, label).changed();
                    }
                });
            ui.label("Frame size");
            ui.horizontal(|ui| {
                changed |= ui
                    .radio_value(&mut s.low_latency, false, "20 ms (standard)")
                    .changed();
                changed |= ui
                    .radio_value(&mut s.low_latency, true, "10 ms (low latency)")
                    .on_hover_text("Saves ~12 ms; uses more bandwidth and is less robust to loss")
                    .changed();
            });
            ui.label("Jitter buffer");
            ui.horizontal(|ui| {
                let mut fixed = jitter_is_fixed(s.jitter);
                let before = fixed;
                ui.radio_value(&mut fixed, false, "Automatic");
                ui.radio_value(&mut fixed, true, "Fixed");
                if fixed != before {
                    s.jitter = if fixed {
                        JitterMode::Fixed(60)
                    } else {
                        JitterMode::Auto
                    };
                    changed = true;
                }
                if let JitterMode::Fixed(ms) = &mut s.jitter {
                    changed |= ui
                        .add(
                            egui::Slider::new(ms, 10..=300)
                                .suffix(" ms")
                                .text("Jitter buffer delay"),
                        )
                        .changed();
                }
            });
        });

        style::card(ui).show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.label(RichText::new("Talking").heading());
            let mut ptt = s.push_to_talk.is_some();
            if ui
                .checkbox(&mut ptt, "Push to talk")
                .on_hover_text("Your microphone is on only while you hold the key or button")
                .changed()
            {
                s.push_to_talk = ptt.then(|| PTT_KEYS[0].to_string());
                changed = true;
            }
            if let Some(key) = &mut s.push_to_talk {
                ui.horizontal(|ui| {
                    egui::ComboBox::from_label("Push-to-talk key")
                        .selected_text(key.as_str())
                        .show_ui(ui, |ui| {
                            for k in PTT_KEYS {
                                changed |= ui.selectable_value(key, k.to_string(), k).changed();
                            }
                        });
                    if self.ptt_capture {
                        ui.label(
                            RichText::new("Press any key or a mouse side button…")
                                .color(style::SPEAKING),
                        );
                        if let Some(pressed) = pressed_key_or_button(ui.ctx()) {
                            *key = pressed;
                            self.ptt_capture = false;
                            changed = true;
                        }
                    } else if ui.button("Set by pressing it…").clicked() {
                        self.ptt_capture = true;
                    }
                });
                ui.label(
                    RichText::new(
                        "During calls the key works in every window (X11); elsewhere, while \
                         Natter has the focus.",
                    )
                    .weak()
                    .small(),
                );
            }
            changed |= ui
                .checkbox(&mut s.sounds, "Play a sound when someone joins or leaves")
                .changed();
            changed |= ui
                .checkbox(
                    &mut s.notifications,
                    "Notify me of messages and arrivals while Natter is in the background",
                )
                .changed();
        });

        style::card(ui).show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.label(RichText::new("Appearance").heading());
            ui.horizontal(|ui| {
                changed |= ui
                    .radio_value(&mut s.theme, ThemeChoice::System, "Follow system")
                    .changed();
                changed |= ui
                    .radio_value(&mut s.theme, ThemeChoice::Light, "Light")
                    .changed();
                changed |= ui
                    .radio_value(&mut s.theme, ThemeChoice::Dark, "Dark")
                    .changed();
            });
        });

        let known = self.snap.known_relays.clone();
        style::card(ui).show(ui, |ui| {
            ui.set_width(ui.available_width());
            ui.label(RichText::new("Trusted relays").heading());
            if known.is_empty() {
                ui.label(
                    RichText::new("Relays you trust on first connection are listed here.").weak(),
                );
            }
            for (authority, fp) in &known {
                ui.horizontal(|ui| {
                    ui.label(RichText::new(authority).strong());
                    ui.label(
                        RichText::new(format!("{}…", &fp[..16.min(fp.len())]))
                            .monospace()
                            .weak(),
                    );
                    if ui
                        .button("Forget")
                        .on_hover_text(format!("Forget the certificate of {authority}"))
                        .clicked()
                    {
                        self.ctl.send(Request::ForgetRelay(authority.clone()));
                    }
                });
            }
        });

        if changed {
            self.settings_changed();
        }
    }
}

/// The key or mouse side button pressed this frame, by the name settings keep (egui key
/// names). Escape is left out: it closes menus.
fn pressed_key_or_button(ctx: &egui::Context) -> Option<String> {
    ctx.input(|i| {
        i.events.iter().find_map(|e| match e {
            egui::Event::Key {
                key, pressed: true, ..
            } if *key != egui::Key::Escape => Some(key.name().to_string()),
            egui::Event::PointerButton {
                button: egui::PointerButton::Extra1,
                pressed: true,
                ..
            } => Some(super::global_ptt::MOUSE_BACK.to_string()),
            egui::Event::PointerButton {
                button: egui::PointerButton::Extra2,
                pressed: true,
                ..
            } => Some(super::global_ptt::MOUSE_FORWARD.to_string()),
            _ => None,
        })
    })
}
