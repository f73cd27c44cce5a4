//! Push-to-talk from any window on X11: the chosen key or mouse button is grabbed on the root
//! window, so holding it talks whichever program has the focus (the in-window key of
//! `app.rs` still works where this cannot: Wayland, or a key another program grabbed).
//!
//! A thread of its own owns an X connection and blocks in `wait_for_event`; it only flips an
//! atomic and asks egui for a repaint, and the UI thread sends the controller the change, as
//! it does for the in-window key. Dropping the guard wakes the thread with a client message to
//! a window of its own, and the grab goes with the connection.
//!
//! Wayland has no global grabs (an X grab through XWayland sees only X windows' keys): there
//! [`Grab::start`] goes through the XDG GlobalShortcuts portal (`portal_ptt.rs`). Windows and
//! macOS would use the `global-hotkey` crate (not built: the desktop app has no Windows or macOS
//! build here to test it in).

use super::portal_ptt::PortalPtt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use x11rb::connection::Connection;
use x11rb::protocol::Event;
use x11rb::protocol::xproto::{
    ButtonIndex, ClientMessageEvent, ConnectionExt, CreateWindowAux, EventMask, GrabMode, ModMask,
    WindowClass,
};
use x11rb::rust_connection::RustConnection;

/// What can be held to talk: a keyboard key (X keysym) or a mouse button (X button number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Key(u32),
    Button(u8),
}

/// The names of mouse buttons as settings store them (egui's extra buttons, X buttons 8, 9).
pub const MOUSE_BACK: &str = "Mouse back";
pub const MOUSE_FORWARD: &str = "Mouse forward";

/// The X trigger for a push-to-talk name as settings store it (egui key names such as `F9`,
/// `V`, `Space`, or a mouse button name); `None` for keys with no X equivalent here.
pub fn trigger(name: &str) -> Option<Trigger> {
    match name {
        MOUSE_BACK => return Some(Trigger::Button(8)),
        MOUSE_FORWARD => return Some(Trigger::Button(9)),
        "Space" => return Some(Trigger::Key(0x20)),
        "Tab" => return Some(Trigger::Key(0xff09)),
        "Insert" => return Some(Trigger::Key(0xff63)),
        "Home" => return Some(Trigger::Key(0xff50)),
        "End" => return Some(Trigger::Key(0xff57)),
        "PageUp" => return Some(Trigger::Key(0xff55)),
        "PageDown" => return Some(Trigger::Key(0xff56)),
        "Pause" => return Some(Trigger::Key(0xff13)),
        _ => {}
    }
    match plain_key(name)? {
        // Letters and digits: their keysym is the (lowercase) ASCII code.
        PlainKey::Char(c) => Some(Trigger::Key(c as u32)),
        PlainKey::Function(n) => Some(Trigger::Key(0xffbe + n - 1)),
    }
}

/// A letter, digit or function key among the push-to-talk names settings store.
pub(super) enum PlainKey {
    /// Lowercase.
    Char(char),
    /// F1–F35.
    Function(u32),
}

/// `V`, `7`, `F9` … as a [`PlainKey`]; `None` for named keys and mouse buttons.
pub(super) fn plain_key(name: &str) -> Option<PlainKey> {
    let mut chars = name.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) if c.is_ascii_alphanumeric() => {
            Some(PlainKey::Char(c.to_ascii_lowercase()))
        }
        (Some('F'), Some(_)) => match name[1..].parse::<u32>() {
            Ok(n @ 1..=35) => Some(PlainKey::Function(n)),
            _ => None,
        },
        _ => None,
    }
}

/// Push-to-talk for the whole desktop: an X11 grab, or the portal's shortcut on Wayland.
pub enum Grab {
    X11(GlobalPtt),
    Portal(PortalPtt),
}

impl Grab {
    /// Takes the push-to-talk `name` (as settings store it) for the whole desktop; `changed`
    /// runs on the grab's thread on each press, release or problem. Fails with a sentence for
    /// the user.
    pub fn start(name: &str, changed: impl Fn() + Send + 'static) -> Result<Self, String> {
        if std::env::var_os("WAYLAND_DISPLAY").is_some() {
            return PortalPtt::start(name, changed).map(Self::Portal);
        }
        let trigger = trigger(name).ok_or_else(|| format!("{name} works in this window only"))?;
        GlobalPtt::start(trigger, name, changed).map(Self::X11)
    }

    /// Whether the key or button is held now.
    pub fn held(&self) -> bool {
        match self {
            Self::X11(g) => g.held(),
            Self::Portal(p) => p.held(),
        }
    }

    /// Why it does not work, when that became known after the start (the portal's answer).
    pub fn problem(&self) -> Option<String> {
        match self {
            Self::X11(_) => None,
            Self::Portal(p) => p.problem(),
        }
    }
}

/// A running grab; dropping it releases the key and ends the thread.
pub struct GlobalPtt {
    held: Arc<AtomicBool>,
    wake: Option<(u32, JoinHandle<()>)>,
}

impl GlobalPtt {
    /// Grabs `trigger` on the X display; `changed` runs (on the grab's thread) whenever it is
    /// pressed or released. Fails with a sentence for the user when there is no X display or
    /// another program holds the key.
    pub fn start(
        trigger: Trigger,
        label: &str,
        changed: impl Fn() + Send + 'static,
    ) -> Result<Self, String> {
        let (conn, screen) = RustConnection::connect(None)
            .map_err(|_| "push-to-talk works in this window only (no X11 display)".to_string())?;
        let root = conn.setup().roots[screen].root;
        // Our own window, only to be woken through when the guard drops.
        let wake_window = conn.generate_id().map_err(|e| e.to_string())?;
        conn.create_window(
            0,
            wake_window,
            root,
            0,
            0,
            1,
            1,
            0,
            WindowClass::INPUT_ONLY,
            0,
            &CreateWindowAux::new(),
        )
        .map_err(|e| e.to_string())?;
        // Grab with and without Caps Lock and Num Lock, which X counts as modifiers.
        let locks = [
            ModMask::from(0u16),
            ModMask::LOCK,
            ModMask::M2,
            ModMask::LOCK | ModMask::M2,
        ];
        let taken =
            || format!("another program already uses {label}: choose another push-to-talk key");
        match trigger {
            Trigger::Key(keysym) => {
                let codes = keycodes(&conn, keysym)?;
                if codes.is_empty() {
                    return Err(format!("this keyboard has no {label} key"));
                }
                for code in codes {
                    for m in locks {
                        conn.grab_key(false, root, m, code, GrabMode::ASYNC, GrabMode::ASYNC)
                            .map_err(|e| e.to_string())?
                            .check()
                            .map_err(|_| taken())?;
                    }
                }
            }
            Trigger::Button(button) => {
                for m in locks {
                    conn.grab_button(
                        false,
                        root,
                        EventMask::BUTTON_PRESS | EventMask::BUTTON_RELEASE,
                        GrabMode::ASYNC,
                        GrabMode::ASYNC,
                        x11rb::NONE,
                        x11rb::NONE,
                        ButtonIndex::from(button),
                        m,
                    )
                    .map_err(|e| e.to_string())?
                    .check()
                    .map_err(|_| taken())?;
                }
            }
        }
        conn.flush().map_err(|e| e.to_string())?;
        let held = Arc::new(AtomicBool::new(false));
        let flag = held.clone();
        let thread = std::thread::Builder::new()
            .name("natter-global-ptt".into())
            .spawn(move || listen(conn, wake_window, flag, changed))
            .map_err(|e| e.to_string())?;
        Ok(Self {
            held,
            wake: Some((wake_window, thread)),
        })
    }

    /// Whether the key or button is held now.
    pub fn held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }
}

impl Drop for GlobalPtt {
    fn drop(&mut self) {
        let Some((window, thread)) = self.wake.take() else {
            return;
        };
        // Wake the thread through a second connection; if that fails the thread stays parked
        // in wait_for_event until the app exits, holding only its connection.
        if let Ok((conn, _)) = RustConnection::connect(None) {
            let event = ClientMessageEvent::new(32, window, 0u32, [0u32; 5]);
            if conn
                .send_event(false, window, EventMask::NO_EVENT, event)
                .is_ok()
                && conn.flush().is_ok()
            {
                let _ = thread.join();
            }
        }
    }
}

/// Every keycode that produces `keysym` in any column of the keyboard map.
fn keycodes(conn: &RustConnection, keysym: u32) -> Result<Vec<u8>, String> {
    let setup = conn.setup();
    let (min, max) = (setup.min_keycode, setup.max_keycode);
    let map = conn
        .get_keyboard_mapping(min, max - min + 1)
        .map_err(|e| e.to_string())?
        .reply()
        .map_err(|e| e.to_string())?;
    let per = usize::from(map.keysyms_per_keycode).max(1);
    Ok(map
        .keysyms
        .chunks(per)
        .enumerate()
        .filter(|(_, syms)| syms.contains(&keysym))
        .map(|(i, _)| min + i as u8)
        .collect())
}

/// The grab's thread: presses and releases in, the held flag out. X repeats a held key as
/// release/press pairs with the same timestamp; such a pair is not a release.
fn listen(conn: RustConnection, wake_window: u32, held: Arc<AtomicBool>, changed: impl Fn()) {
    let set = |down: bool| {
        if held.swap(down, Ordering::Relaxed) != down {
            changed();
        }
    };
    let mut pending: Option<Event> = None;
    loop {
        let event = match pending.take() {
            Some(e) => e,
            None => match conn.wait_for_event() {
                Ok(e) => e,
                Err(_) => break,
            },
        };
        match event {
            Event::KeyPress(_) | Event::ButtonPress(_) => set(true),
            Event::ButtonRelease(_) => set(false),
            Event::KeyRelease(release) => match conn.poll_for_event() {
                Ok(Some(Event::KeyPress(press)))
                    if press.time == release.time && press.detail == release.detail => {}
                Ok(next) => {
                    set(false);
                    pending = next;
                }
                Err(_) => break,
            },
            Event::ClientMessage(m) if m.window == wake_window => break,
            _ => {}
        }
    }
    set(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_names_map_to_x_keysyms_and_buttons() {
        assert_eq!(trigger("F1"), Some(Trigger::Key(0xffbe)));
        assert_eq!(trigger("F12"), Some(Trigger::Key(0xffc9)));
        assert_eq!(trigger("V"), Some(Trigger::Key(u32::from(b'v'))));
        assert_eq!(trigger("7"), Some(Trigger::Key(u32::from(b'7'))));
        assert_eq!(trigger("Space"), Some(Trigger::Key(0x20)));
        assert_eq!(trigger(MOUSE_BACK), Some(Trigger::Button(8)));
        assert_eq!(trigger(MOUSE_FORWARD), Some(Trigger::Button(9)));
        assert_eq!(trigger("F99"), None);
        assert_eq!(trigger("Escape"), None);
    }
}
