//! The desktop app: an egui/eframe window (OpenGL through glow) over the same engine as the
//! headless shell.
//!
//! - [`crate::controller`] (not here: it has no egui in it): the call logic on its own tokio
//!   runtime thread — the session, hosting the embedded relay, trust on first use, the
//!   loopback latency test.
//! - [`app`] and the screens ([`start`], [`call`], [`settings_view`]): the egui view. It reads
//!   the controller's snapshot every frame and sends it requests; it owns no call logic.
//! - [`meter`]: the latency meter and history plot over [`crate::history`].
//! - [`style`]: palette and custom indicators; [`sounds`]: join/leave cues.
//!
//! The window repaints on input and controller events, and every 100 ms while a call is on —
//! never continuously.

pub mod app;
pub mod call;
mod global_ptt;
pub mod meter;
mod portal_ptt;
pub mod settings_view;
#[cfg(unix)]
pub mod single_instance;
pub mod sounds;
pub mod start;
pub mod style;
mod tray;
mod window_class;

pub use crate::controller::{AudioSource, ControllerConfig, TestSignal};
pub use app::{AppConfig, NatterApp, Screen};

use crate::settings::Dirs;
use std::process::ExitCode;

/// The one line printed when there is no display to open a window on.
pub const NO_DISPLAY: &str =
    "natter: no display found; for a headless call use `natter call …` (see `natter call --help`)";

/// Whether a window could be opened: on Linux and the BSDs, a Wayland or X11 display is set.
pub fn has_display() -> bool {
    if cfg!(any(target_os = "windows", target_os = "macos")) {
        return true;
    }
    ["WAYLAND_DISPLAY", "DISPLAY"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// How the app was launched.
#[derive(Debug, Clone, Default)]
pub struct LaunchOptions {
    /// An invite to join at once.
    pub join: Option<String>,
    /// Display name to join with (default: the saved one).
    pub name: Option<String>,
    /// Config and data under this directory instead of the OS ones.
    pub dir: Option<std::path::PathBuf>,
    /// Use a test signal instead of sound-card devices (machines without audio).
    pub test_signal: Option<TestSignal>,
}

/// Logs go to `natter.log` in the data directory (warnings and up unless `RUST_LOG` says
/// otherwise), so a window app does not need a terminal to be diagnosed.
fn init_logging(dirs: &Dirs) -> Option<std::path::PathBuf> {
    std::fs::create_dir_all(&dirs.data).ok()?;
    let path = dirs.data.join("natter.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .ok()?;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,natter=info".into()),
        )
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(file))
        .try_init();
    Some(path)
}

/// Runs the desktop app until its window closes.
/// The window icon, the same picture as the installed hicolor icons (`assets/icon/`). 128 px:
/// a 256 px icon is 256 KiB of `_NET_WM_ICON`, more than one X11 request may carry without the
/// BIG-REQUESTS extension, and winit then leaves the property empty (seen under Xvfb).
const ICON_PNG: &[u8] = include_bytes!("../../../assets/icon/natter-128.png");

/// How desktops recognise the window: its icon (`_NET_WM_ICON`) and the app id `natter` that
/// ties it to `natter.desktop` (Wayland; on X11 see [`window_class`]).
fn window_identity(viewport: egui::ViewportBuilder) -> egui::ViewportBuilder {
    let viewport = viewport.with_app_id("natter");
    match eframe::icon_data::from_png_bytes(ICON_PNG) {
        Ok(icon) => viewport.with_icon(std::sync::Arc::new(icon)),
        Err(e) => {
            tracing::warn!("window icon: {e}");
            viewport
        }
    }
}

pub fn run(options: LaunchOptions) -> ExitCode {
    if !has_display() {
        eprintln!("{NO_DISPLAY}");
        return ExitCode::from(2);
    }
    let dirs = match options.dir.as_deref().map(Dirs::under).or_else(Dirs::os) {
        Some(d) => d,
        None => {
            eprintln!("natter: cannot find a home directory for settings; use --dir DIR");
            return ExitCode::FAILURE;
        }
    };
    let log = init_logging(&dirs);
    #[cfg(unix)]
    let instance = {
        use single_instance::{Handover, Start};
        // `--dir` keeps even the socket apart (tests, a second profile).
        let runtime_dir = options
            .dir
            .is_none()
            .then(|| std::env::var_os("XDG_RUNTIME_DIR").map(Into::into))
            .flatten();
        let path = single_instance::socket_path(&dirs.data, runtime_dir);
        let request = options.join.clone().map_or(Handover::Show, Handover::Join);
        match single_instance::claim(&path, &request) {
            Ok(Start::HandedOver) => {
                eprintln!("natter: handed over to the Natter already running");
                return ExitCode::SUCCESS;
            }
            Ok(Start::First(listener)) => Some(listener),
            Err(e) => {
                tracing::warn!(path = %path.display(), "single instance: {e}");
                None
            }
        }
    };
    tracing::info!(log = ?log, "natter desktop app starting");
    let mut config = AppConfig::desktop(dirs);
    if let Some(signal) = options.test_signal {
        config.controller.audio = AudioSource::TestSignal(signal);
    }
    let native = eframe::NativeOptions {
        renderer: eframe::Renderer::Glow,
        viewport: window_identity(egui::ViewportBuilder::default())
            .with_title("Natter")
            .with_inner_size([920.0, 700.0])
            .with_min_inner_size([560.0, 460.0]),
        ..Default::default()
    };
    let result = eframe::run_native(
        "Natter",
        native,
        Box::new(move |cc| {
            window_class::set_x11_class(cc);
            let mut app = NatterApp::new(&cc.egui_ctx, config)?;
            #[cfg(unix)]
            if let Some(listener) = instance {
                let (tx, rx) = std::sync::mpsc::channel();
                let ctx = cc.egui_ctx.clone();
                listener.serve(move |request| {
                    let _ = tx.send(request);
                    ctx.request_repaint();
                });
                app.take_handovers(rx);
            }
            if let Some(invite) = &options.join {
                app.join_invite(invite, options.name.as_deref());
            }
            Ok(Box::new(app) as Box<dyn eframe::App>)
        }),
    );
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natter: cannot open a window: {e}");
            eprintln!("{NO_DISPLAY}");
            ExitCode::FAILURE
        }
    }
}
