//! The desktop app's window as a desktop sees it: a real `natter` window on a private Xvfb
//! server, read back with xprop. (The egui_kittest UI tests in app/tests/ui.rs run without any
//! window system, so they cannot see what the window tells the window manager.)

use natter_e2e::{Reaped, TempDir, command, natter_bin};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A private X server; returns it and its DISPLAY. `-displayfd` lets Xvfb pick a free display
/// number and tell us, so parallel tests never collide.
fn xvfb() -> (Reaped, String) {
    let mut child = command(Path::new("Xvfb"))
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "1280x1024x24",
            "-nolisten",
            "tcp",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("Xvfb (Debian: xvfb; scripts/setup.sh test installs it)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("Xvfb prints its display number");
    let number = line.trim();
    assert!(!number.is_empty(), "Xvfb did not start");
    (Reaped(child), format!(":{number}"))
}

/// The real desktop app on `display`, its settings under `dir`, a test signal as microphone,
/// joining `invite` when given.
fn desktop_app(display: &str, dir: &Path, signal: &str, invite: Option<&str>) -> Reaped {
    desktop_app_on_bus(display, None, dir, signal, invite)
}

/// The same, on the D-Bus session bus at `bus` when given.
fn desktop_app_on_bus(
    display: &str,
    bus: Option<&str>,
    dir: &Path,
    signal: &str,
    invite: Option<&str>,
) -> Reaped {
    let mut cmd = command(&natter_bin());
    if let Some(bus) = bus {
        cmd.env("DBUS_SESSION_BUS_ADDRESS", bus);
    }
    if let Some(invite) = invite {
        cmd.arg(invite);
    }
    cmd.arg("--dir")
        .arg(dir)
        .args(["--test-signal", signal])
        .env("DISPLAY", display)
        .env_remove("WAYLAND_DISPLAY")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Reaped(cmd.spawn().expect("natter starts"))
}

/// An app directory under `dir` whose settings file holds `settings` (TOML).
fn app_dir_with(dir: &TempDir, settings: &str) -> std::path::PathBuf {
    let app = dir.join("app");
    std::fs::create_dir_all(app.join("config")).unwrap();
    std::fs::write(app.join("config/settings.toml"), settings).unwrap();
    app
}

fn x_tool(display: &str, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("DISPLAY", display)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (Debian: x11-utils, xdotool)"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The visible Natter windows, once there is at least one (within 30 s): a window can be
/// created and its app already in a call before the window manager has mapped it. The title is
/// "Natter" outside a call and "ROOM · Natter" in one, so the name is matched at its end only.
fn visible_windows(display: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = x_tool(
            display,
            "xdotool",
            &["search", "--onlyvisible", "--name", "Natter$"],
        );
        let ids: Vec<String> = found.lines().map(|l| l.trim().to_owned()).collect();
        if !ids.is_empty() {
            return ids;
        }
        assert!(Instant::now() < deadline, "no Natter window within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_window_carries_the_icon_and_class_of_its_desktop_entry() {
    let (_x, display) = xvfb();
    let dir = TempDir::new("window");
    let _app = desktop_app(&display, dir.path(), "silence", None);
    // The mapped window: winit creates it (and xdotool can find it) before the app sets its
    // class, which must be there by the time the window is shown (ICCCM; a taskbar reads it
    // then).
    let window = visible_windows(&display)[0].clone();
    // Both halves name the desktop entry (StartupWMClass=natter in assets/natter.desktop).
    let class = x_tool(&display, "xprop", &["-id", &window, "WM_CLASS"]);
    assert!(
        class.contains(r#"= "natter", "natter""#),
        "WM_CLASS: {class}"
    );
    // The icon: width, height, then that many ARGB pixels, not all transparent.
    let icon = x_tool(
        &display,
        "xprop",
        &["-id", &window, "-notype", "32c", "_NET_WM_ICON"],
    );
    let values: Vec<u64> = icon
        .split_once('=')
        .map(|(_, list)| {
            list.split(',')
                .filter_map(|v| v.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(values.len() > 2, "no _NET_WM_ICON: {}", icon.trim());
    let (width, height) = (values[0], values[1]);
    assert!(width >= 32 && height >= 32, "icon is {width}x{height}");
    assert_eq!(values.len() as u64, 2 + width * height, "icon size");
    assert!(
        values[2..].iter().any(|&argb| argb >> 24 == 0xff),
        "icon is transparent"
    );
}

/// Loudness of `samples[from_s..to_s]` (seconds at 48 kHz).
fn rms_between(samples: &[f32], from_s: f64, to_s: f64) -> f32 {
    let at = |s: f64| ((s * 48_000.0) as usize).min(samples.len());
    natter_e2e::rms(&samples[at(from_s)..at(to_s)])
}

#[test]
fn push_to_talk_works_while_another_window_has_the_focus() {
    let (_x, display) = xvfb();
    let relay = natter_e2e::RelayProcess::start();
    let invite = relay.invite().replacen('?', "/ptt?", 1);
    let dir = TempDir::new("ptt");
    let app_dir = app_dir_with(&dir, "display_name = \"Ann\"\npush_to_talk = \"F9\"\n");
    // The listener records what reaches it from the moment it joins.
    let heard = dir.join("bob-heard.wav");
    let bob = natter_e2e::Call::new(relay.invite(), "ptt", "bob")
        .output(&heard)
        .duration(14.0)
        .spawn();
    relay.wait_for_join("ptt", "bob");
    let bob_start = Instant::now();
    // Ann: the real desktop app, talking the test speech signal while F9 is held.
    let _ann = desktop_app(&display, &app_dir, "speech", Some(&invite));
    relay.wait_for_join("ptt", "Ann");
    // Nothing has the focus but the root window (no window manager; the pointer is moved off
    // the app's window): keys go nowhere unless grabbed.
    x_tool(&display, "xdotool", &["mousemove", "1270", "1010"]);
    let at = |t: f64| {
        let wait = Duration::from_secs_f64(t).saturating_sub(bob_start.elapsed());
        std::thread::sleep(wait);
    };
    at(5.0);
    x_tool(&display, "xdotool", &["keydown", "F9"]);
    at(9.0);
    x_tool(&display, "xdotool", &["keyup", "F9"]);
    let finished = bob.wait(Duration::from_secs(30));
    finished.assert_success();
    let samples = natter_e2e::read_wav(&heard);
    let before = rms_between(&samples, 3.0, 4.8);
    let held = rms_between(&samples, 5.8, 8.8);
    let after = rms_between(&samples, 10.0, 13.0);
    // The test signal talks 4 s and pauses 3 s from whenever Ann's call started, so the 3 s
    // window may hold as little as 1 s of speech: its level is not the point, the contrast
    // with the silence before and after is (both are exactly 0 when nothing leaks).
    assert!(
        held > 0.0005 && held > 20.0 * before.max(1e-5) && held > 20.0 * after.max(1e-5),
        "Ann is heard only while F9 is held: rms before {before}, held {held}, after {after}"
    );
}

#[test]
fn a_clicked_invite_goes_to_the_running_window() {
    let (_x, display) = xvfb();
    let relay = natter_e2e::RelayProcess::start();
    let invite = relay.invite().replacen('?', "/handed?", 1);
    let dir = TempDir::new("single");
    let app_dir = app_dir_with(&dir, "display_name = \"Ann\"\n");
    // The app runs, in no call.
    let _first = desktop_app(&display, &app_dir, "silence", None);
    let socket = app_dir.join("data/instance.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "the first app never listened");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The desktop starts `natter INVITE` for the clicked link: it hands the invite over and
    // exits at once, with success, without a window of its own.
    let second = command(&natter_bin())
        .arg(&invite)
        .arg("--dir")
        .arg(&app_dir)
        .args(["--test-signal", "silence"])
        .env("DISPLAY", &display)
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .expect("natter runs");
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    // The running window joins it.
    relay.wait_for_join("handed", "Ann");
    let windows = visible_windows(&display);
    assert_eq!(windows.len(), 1, "one window: {windows:?}");
}

/// A private D-Bus session bus under `dir`; returns it and its address.
fn session_bus(dir: &TempDir) -> (Reaped, String) {
    let mut child = command(Path::new("dbus-daemon"))
        .args(["--session", "--nofork", "--print-address=1"])
        .arg(format!("--address=unix:path={}", dir.join("bus").display()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("dbus-daemon");
    let mut address = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut address)
        .expect("dbus-daemon prints its address");
    (Reaped(child), address.trim().to_string())
}

/// A D-Bus property as gdbus prints it (`(<…>,)`).
fn dbus_property(bus: &str, dest: &str, path: &str, interface: &str, property: &str) -> String {
    let out = Command::new("gdbus")
        .args(["call", "--session", "--dest", dest, "--object-path", path])
        .args([
            "--method",
            "org.freedesktop.DBus.Properties.Get",
            interface,
            property,
        ])
        .env("DBUS_SESSION_BUS_ADDRESS", bus)
        .output()
        .expect("gdbus (Debian: libglib2.0-bin)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `read` until it returns something containing `wanted`.
#[track_caller]
fn wait_until_contains(what: &str, wanted: &str, read: impl Fn() -> String) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = read();
        if now.contains(wanted) {
            return now;
        }
        assert!(Instant::now() < deadline, "{what}: {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_tray_icon_shows_the_call_and_unread_messages() {
    let (_x, display) = xvfb();
    let dir = TempDir::new("tray");
    let (_bus, bus) = session_bus(&dir);
    // A real tray: a GTK StatusNotifierItem host on the display, with its own watcher.
    let _tray = Reaped(
        command(Path::new("gtk-sni-tray-standalone"))
            .arg("--watcher")
            .env("DISPLAY", &display)
            .env("DBUS_SESSION_BUS_ADDRESS", &bus)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("gtk-sni-tray-standalone (Debian: haskell-gtk-sni-tray-utils)"),
    );
    let watcher = || {
        dbus_property(
            &bus,
            "org.kde.StatusNotifierWatcher",
            "/StatusNotifierWatcher",
            "org.kde.StatusNotifierWatcher",
            "RegisteredStatusNotifierItems",
        )
    };
    wait_until_contains("the tray's watcher", "@as", watcher);
    let relay = natter_e2e::RelayProcess::start();
    let invite = relay.invite().replacen('?', "/tray?", 1);
    let app_dir = app_dir_with(&dir, "display_name = \"Ann\"\n");
    let _ann = desktop_app_on_bus(&display, Some(&bus), &app_dir, "silence", Some(&invite));
    let items = wait_until_contains("Natter's item in the tray", "StatusNotifierItem-", watcher);
    let item = items
        .split('\'')
        .find(|s| s.starts_with("org.kde.StatusNotifierItem-"))
        .expect("an item name")
        .to_string();
    let property = |name: &str| {
        dbus_property(
            &bus,
            &item,
            "/StatusNotifierItem",
            "org.kde.StatusNotifierItem",
            name,
        )
    };
    relay.wait_for_join("tray", "Ann");
    wait_until_contains("the tooltip in a call", "In tray", || property("ToolTip"));
    assert!(property("Status").contains("Active"));
    // The window is not in front (the pointer is off it: no window manager, focus follows
    // the pointer); Bob writes.
    x_tool(&display, "xdotool", &["mousemove", "1270", "1010"]);
    let bob = natter_e2e::Call::new(relay.invite(), "tray", "bob")
        .arg("--chat")
        .arg("are you there?")
        .duration(6.0)
        .spawn();
    wait_until_contains("the unread message in the tooltip", "1 new message", || {
        property("ToolTip")
    });
    assert!(property("Status").contains("NeedsAttention"));
    bob.wait(Duration::from_secs(30)).assert_success();
}
