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

fn x_tool(display: &str, program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .env("DISPLAY", display)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (Debian: x11-utils, xdotool)"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_window_carries_the_icon_and_class_of_its_desktop_entry() {
    let (_x, display) = xvfb();
    let dir = TempDir::new("window");
    let _app = Reaped(
        command(&natter_bin())
            .arg("--dir")
            .arg(dir.path())
            .args(["--test-signal", "silence"])
            .env("DISPLAY", &display)
            .env_remove("WAYLAND_DISPLAY")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("natter starts"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let window = loop {
        let found = x_tool(&display, "xdotool", &["search", "--name", "^Natter$"]);
        if let Some(id) = found.lines().next() {
            break id.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "no Natter window within 30 s");
        std::thread::sleep(Duration::from_millis(200));
    };
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
