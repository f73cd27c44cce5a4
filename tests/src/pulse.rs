//! A private PulseAudio daemon with a null sink, so tests can run calls through the real audio
//! stack (cpal → ALSA → PulseAudio) on a machine without a sound card: what a client plays
//! into the sink comes back on the sink's monitor, which is the default source.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running daemon; killed on drop.
pub struct PulseServer {
    child: Child,
    dir: crate::TempDir,
    server: String,
}

impl PulseServer {
    /// Starts a daemon in a fresh temporary directory. Panics with instructions when
    /// PulseAudio is not installed (`scripts/setup.sh test` installs it).
    pub fn start() -> Self {
        let dir = crate::TempDir::new("pulse");
        let (run, home) = (dir.join("run"), dir.join("home"));
        std::fs::create_dir_all(&run).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        let socket = run.join("native");
        let config = dir.join("default.pa");
        std::fs::write(
            &config,
            format!(
                "load-module module-null-sink sink_name=natter_test rate=48000 channels=2\n\
                 load-module module-native-protocol-unix auth-anonymous=1 socket={}\n\
                 set-default-sink natter_test\n\
                 set-default-source natter_test.monitor\n",
                socket.display()
            ),
        )
        .unwrap();
        let child = Command::new("pulseaudio")
            .args(["-n", "-F"])
            .arg(&config)
            .args(["--daemonize=no", "--exit-idle-time=-1", "--log-target=stderr"])
            .env("XDG_RUNTIME_DIR", &run)
            .env("HOME", &home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start pulseaudio: run `scripts/setup.sh test` (or `make test`) to install it");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "pulseaudio did not open {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            server: format!("unix:{}", socket.display()),
            dir,
        }
    }

    /// The value for `PULSE_SERVER`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Runs `pactl ARGS` against this daemon and returns its standard output; panics if it
    /// fails (pulseaudio-utils comes with `scripts/setup.sh test`).
    pub fn pactl(&self, args: &[&str]) -> String {
        let out = Command::new("pactl")
            .args(args)
            .env("PULSE_SERVER", &self.server)
            .output()
            .expect("pactl is needed: scripts/setup.sh test installs pulseaudio-utils");
        assert!(
            out.status.success(),
            "pactl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Unplugs the test sink (and with it its monitor, the default microphone): unloads its
    /// module, as PulseAudio does when a USB headset goes away.
    pub fn unplug(&self) {
        let modules = self.pactl(&["list", "short", "modules"]);
        let id = modules
            .lines()
            .find(|l| l.contains("module-null-sink"))
            .and_then(|l| l.split_whitespace().next())
            .expect("the null sink's module is loaded");
        self.pactl(&["unload-module", id]);
    }

    /// Plugs a new sink in (named `name`) and makes it and its monitor the defaults.
    pub fn plug(&self, name: &str) {
        self.pactl(&[
            "load-module",
            "module-null-sink",
            &format!("sink_name={name}"),
            "rate=48000",
            "channels=2",
        ]);
        self.pactl(&["set-default-sink", name]);
        self.pactl(&["set-default-source", &format!("{name}.monitor")]);
    }

    /// The daemon's directory (for debugging).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for PulseServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
