//! The tray icon (a StatusNotifierItem over D-Bus through `ksni`: KDE, GNOME with the
//! AppIndicator extension, XFCE, Cinnamon, most Wayland panels): the app's icon with a corner
//! mark for unread chat, a muted microphone or a call, the same in its tooltip, and a click
//! that brings the window to the front. What it shows is the pure
//! [`TrayState::look`](crate::controller::view_model::TrayState); this is only the shell.
//!
//! It runs on a thread of its own (ksni's D-Bus service is async; a small tokio runtime drives
//! it), so the UI thread only hands it a state when that changes. Without a tray host (no
//! `org.kde.StatusNotifierWatcher` and host on the session bus) the thread logs it once and
//! ends. `tests/tests/desktop.rs` checks it in a real tray (gtk-sni-tray-standalone).

use crate::controller::view_model::{TrayBadge, TrayLook, TrayState};
use crate::controller::{ControllerHandle, Request};
use ksni::TrayMethods;
use std::sync::mpsc;

/// The tray's picture: the 32 px app icon.
const ICON_PNG: &[u8] = include_bytes!("../../../assets/icon/natter-32.png");

/// The UI's end: hands the tray thread each new state.
pub struct Tray {
    states: mpsc::Sender<TrayState>,
    last: Option<TrayState>,
}

impl Tray {
    /// Starts the tray thread; `ctx` is the window to raise, `ctl` takes the menu's requests.
    pub fn start(ctx: egui::Context, ctl: ControllerHandle) -> Self {
        let (states, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("natter-tray".into())
            .spawn(move || run(ctx, ctl, rx));
        if let Err(e) = spawned {
            tracing::warn!("tray icon: {e}");
        }
        Self { states, last: None }
    }

    /// Shows `state` (only changes reach the tray).
    pub fn show(&mut self, state: TrayState) {
        if self.last.as_ref() != Some(&state) {
            let _ = self.states.send(state.clone());
            self.last = Some(state);
        }
    }
}

fn run(ctx: egui::Context, ctl: ControllerHandle, states: mpsc::Receiver<TrayState>) {
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => return tracing::warn!("tray icon: {e}"),
    };
    let base = match image::load_from_memory_with_format(ICON_PNG, image::ImageFormat::Png) {
        Ok(img) => img.into_rgba8(),
        Err(e) => return tracing::warn!("tray icon picture: {e}"),
    };
    let item = NatterTray {
        ctx,
        ctl,
        state: TrayState::default(),
        base,
    };
    let handle = match runtime.block_on(item.spawn()) {
        Ok(handle) => handle,
        Err(e) => return tracing::info!("no tray icon (no tray on this desktop?): {e}"),
    };
    while let Ok(state) = states.recv() {
        if runtime
            .block_on(handle.update(|t| t.state = state))
            .is_none()
        {
            return;
        }
    }
    runtime.block_on(handle.shutdown());
}

struct NatterTray {
    ctx: egui::Context,
    ctl: ControllerHandle,
    state: TrayState,
    base: image::RgbaImage,
}

impl NatterTray {
    fn look(&self) -> TrayLook {
        self.state.look()
    }

    fn raise(&self) {
        self.ctx
            .send_viewport_cmd(egui::ViewportCommand::Minimized(false));
        self.ctx.send_viewport_cmd(egui::ViewportCommand::Focus);
        self.ctx.request_repaint();
    }
}

impl ksni::Tray for NatterTray {
    fn id(&self) -> String {
        "natter".into()
    }

    fn title(&self) -> String {
        "Natter".into()
    }

    fn icon_name(&self) -> String {
        // The installed hicolor icon; hosts that draw pixmaps get the badge too.
        "natter".into()
    }

    fn icon_pixmap(&self) -> Vec<ksni::Icon> {
        vec![badged(&self.base, self.look().badge)]
    }

    fn status(&self) -> ksni::Status {
        if self.look().attention {
            ksni::Status::NeedsAttention
        } else {
            ksni::Status::Active
        }
    }

    fn tool_tip(&self) -> ksni::ToolTip {
        ksni::ToolTip {
            title: "Natter".into(),
            description: self.look().tooltip,
            ..Default::default()
        }
    }

    fn activate(&mut self, _x: i32, _y: i32) {
        self.raise();
    }

    fn menu(&self) -> Vec<ksni::MenuItem<Self>> {
        use ksni::menu::StandardItem;
        let mut items: Vec<ksni::MenuItem<Self>> = vec![
            StandardItem {
                label: "Show Natter".into(),
                activate: Box::new(|t: &mut Self| t.raise()),
                ..Default::default()
            }
            .into(),
        ];
        if self.state.room.is_some() {
            let muted = self.state.muted;
            items.push(
                StandardItem {
                    label: if muted { "Unmute" } else { "Mute" }.into(),
                    activate: Box::new(move |t: &mut Self| t.ctl.send(Request::SetMuted(!muted))),
                    ..Default::default()
                }
                .into(),
            );
        }
        items
    }
}

/// The icon with its corner mark, as ARGB32 in network byte order.
fn badged(base: &image::RgbaImage, badge: Option<TrayBadge>) -> ksni::Icon {
    let mut img = base.clone();
    if let Some(badge) = badge {
        let color = match badge {
            TrayBadge::Unread => [0xd9, 0x5b, 0x5b, 0xff],
            TrayBadge::Muted => [0x80, 0x80, 0x80, 0xff],
            TrayBadge::InCall => [0x3b, 0xb2, 0x73, 0xff],
        };
        let (w, h) = img.dimensions();
        let r = w as f32 * 0.22;
        let (cx, cy) = (w as f32 - r - 0.5, h as f32 - r - 0.5);
        for (x, y, px) in img.enumerate_pixels_mut() {
            let d = ((x as f32 - cx).powi(2) + (y as f32 - cy).powi(2)).sqrt();
            if d <= r {
                px.0 = color;
            } else if d <= r + 1.5 {
                // A white ring keeps the mark apart from the icon.
                px.0 = [0xff, 0xff, 0xff, 0xff];
            }
        }
    }
    let (width, height) = img.dimensions();
    let mut data = img.into_raw();
    for px in data.chunks_exact_mut(4) {
        px.rotate_right(1); // RGBA → ARGB
    }
    ksni::Icon {
        width: width as i32,
        height: height as i32,
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_badge_colours_the_corner_and_leaves_the_rest() {
        let base = image::load_from_memory(ICON_PNG).unwrap().into_rgba8();
        let plain = badged(&base, None);
        let unread = badged(&base, Some(TrayBadge::Unread));
        assert_eq!((plain.width, plain.height), (32, 32));
        let argb = |icon: &ksni::Icon, x: usize, y: usize| {
            let i = (y * 32 + x) * 4;
            [
                icon.data[i],
                icon.data[i + 1],
                icon.data[i + 2],
                icon.data[i + 3],
            ]
        };
        // The corner is the badge's red, opaque, in ARGB order.
        assert_eq!(argb(&unread, 25, 25), [0xff, 0xd9, 0x5b, 0x5b]);
        // The opposite corner is the icon as it was.
        assert_eq!(argb(&unread, 2, 2), argb(&plain, 2, 2));
        let p = base.get_pixel(2, 2).0;
        assert_eq!(argb(&plain, 2, 2), [p[3], p[0], p[1], p[2]]);
    }
}
