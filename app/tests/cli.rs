//! `natter` without a command opens the desktop app; without a display it must say so in one
//! line and fail, not hang or panic.

use std::process::Command;

#[test]
fn without_a_display_the_app_says_so_in_one_line_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_natter"))
        .arg("--dir")
        .arg(dir.path())
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .unwrap();
    assert!(!out.status.success(), "exit status {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim_end(),
        natter::ui::NO_DISPLAY,
        "exactly one line on stderr"
    );
    assert!(stderr.contains("natter call"));
    assert!(out.stdout.is_empty());
}

#[test]
fn subcommands_still_work_next_to_the_app() {
    let out = Command::new(env!("CARGO_BIN_EXE_natter"))
        .args(["signal", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    // An invite and a subcommand cannot be mixed.
    let out = Command::new(env!("CARGO_BIN_EXE_natter"))
        .args(["natter://127.0.0.1:1/room", "devices"])
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .unwrap();
    assert!(!out.status.success());
}
