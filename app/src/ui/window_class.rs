//! The X11 `WM_CLASS` of the main window, so that desktops tie the window to `natter.desktop`
//! (its `StartupWMClass=natter`): taskbar icon, pinning, "open windows" grouping.
//!
//! eframe hands winit its app id as the class with an *empty* instance name (winit's Wayland
//! `with_name`, which X11 shares), so on X11 the window would say `WM_CLASS = "", "natter"`;
//! tools and window rules that match on the instance see nothing. winit offers no way to set
//! both halves through eframe, so this writes the property once on the still-unmapped window
//! (eframe shows it after the first frame; ICCCM wants WM_CLASS set before mapping), over a
//! connection of our own. Wayland has no WM_CLASS: the app id `natter` is what it uses.

use eframe::CreationContext;
use raw_window_handle::{HasWindowHandle, RawWindowHandle};
use x11rb::protocol::xproto::{AtomEnum, PropMode};
use x11rb::wrapper::ConnectionExt as _;

/// `instance\0class\0`, both the binary's name, as X11 programs conventionally set it.
const WM_CLASS: &[u8] = b"natter\0natter\0";

/// Sets the main window's `WM_CLASS` when it is an X11 window; does nothing elsewhere. A
/// failure only costs the desktop's grouping, so it is logged, not raised.
pub fn set_x11_class(cc: &CreationContext<'_>) {
    let window = match cc.window_handle().map(|handle| handle.as_raw()) {
        Ok(RawWindowHandle::Xlib(handle)) => handle.window as u32,
        Ok(RawWindowHandle::Xcb(handle)) => handle.window.get(),
        _ => return,
    };
    if let Err(e) = write_class(window) {
        tracing::warn!("could not set the window's X11 class: {e}");
    }
}

fn write_class(window: u32) -> Result<(), Box<dyn std::error::Error>> {
    let (conn, _screen) = x11rb::rust_connection::RustConnection::connect(None)?;
    conn.change_property8(
        PropMode::REPLACE,
        window,
        AtomEnum::WM_CLASS,
        AtomEnum::STRING,
        WM_CLASS,
    )?
    .check()?;
    Ok(())
}
