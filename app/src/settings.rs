//! The desktop app's settings and trusted relays, kept as TOML files in the OS config
//! directory (`~/.config/natter` on Linux).
//!
//! Files are written atomically: a temporary file in the same directory, flushed to disk, then
//! renamed over the old one, so a crash mid-write leaves either the old or the new file, never
//! half of one. A file that cannot be parsed is not fatal: it is moved aside as
//! `<name>.bad-<unix seconds>` (so nothing the user wrote is lost), defaults are used, and the
//! caller gets a [`LoadProblem`] to show. Unknown keys are ignored and missing keys take their
//! defaults, so files written by older or newer versions still load.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// File name of the settings inside the config directory.
pub const SETTINGS_FILE: &str = "settings.toml";
/// File name of the trusted relay fingerprints.
pub const KNOWN_RELAYS_FILE: &str = "known_relays.toml";
/// Recent relays remembered on the start screen.
pub const MAX_RECENT: usize = 6;

/// Encoder bitrate: adapted to the network, or fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Quality {
    /// The rate controller picks 40/24 kbit/s from receiver reports.
    #[default]
    Auto,
    /// A fixed bitrate in kbit/s.
    Fixed(u32),
}

/// Jitter buffer delay: adaptive (NetEq-style) or a fixed target.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum JitterMode {
    #[default]
    Auto,
    /// A fixed target delay in ms.
    Fixed(u32),
}

/// Colour scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ThemeChoice {
    #[default]
    System,
    Light,
    Dark,
}

/// A relay joined before, for the start screen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentRelay {
    /// The invite link as joined (without the room).
    pub invite: String,
    pub room: String,
    /// What the user calls it ("Friday games"); shown instead of room and host when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl RecentRelay {
    /// The same relay and room, however the invite was written (host case, `fp` spelling,
    /// parameter order): the invite in its canonical form, and the room.
    fn key(&self) -> (String, &str) {
        let invite = self
            .invite
            .parse::<natter_proto::invite::Invite>()
            .map(|mut i| {
                i.room = None;
                i.host = i.host.to_ascii_lowercase();
                i.to_string()
            })
            .unwrap_or_else(|_| self.invite.clone());
        (invite, &self.room)
    }
}

/// Everything the Settings screen edits, plus what the start screen remembers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub display_name: String,
    pub recent: Vec<RecentRelay>,
    /// Port the embedded relay listens on when hosting.
    pub host_port: u16,
    /// Microphone and speaker by name (`None`: follow the system default).
    pub input_device: Option<String>,
    pub output_device: Option<String>,
    pub echo_cancellation: bool,
    pub noise_suppression: bool,
    pub gain_control: bool,
    pub quality: Quality,
    /// 10 ms frames and restricted low-delay Opus instead of 20 ms frames.
    pub low_latency: bool,
    pub jitter: JitterMode,
    /// Key held to talk (an egui key name such as "Space"); `None`: open microphone.
    pub push_to_talk: Option<String>,
    /// Send only while the voice-activation detector hears a voice (when not push to talk).
    pub voice_activation: bool,
    /// The voice-activation threshold, dBFS: quieter sound is never sent as voice. Set against
    /// the microphone test's meter.
    pub voice_threshold_db: f32,
    pub theme: ThemeChoice,
    /// Play a sound when someone joins or leaves.
    pub sounds: bool,
    /// A desktop notification for chat messages and people joining or leaving while the
    /// window is not in front.
    pub notifications: bool,
    /// The call screen shows the full latency meter and link numbers (else the simple view:
    /// who is here, a quality dot, how late you hear each person).
    pub call_details: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            display_name: String::new(),
            recent: Vec::new(),
            host_port: natter_proto::invite::DEFAULT_PORT,
            input_device: None,
            output_device: None,
            echo_cancellation: true,
            noise_suppression: true,
            gain_control: true,
            quality: Quality::Auto,
            low_latency: false,
            jitter: JitterMode::Auto,
            push_to_talk: None,
            voice_activation: false,
            voice_threshold_db: crate::vad::DEFAULT_THRESHOLD_DB,
            theme: ThemeChoice::System,
            sounds: true,
            notifications: true,
            call_details: false,
        }
    }
}

impl Settings {
    /// Puts `relay` first in the recent list (bounded), replacing any entry for the same relay
    /// and room, whose name it keeps. Called once a join has succeeded, never for attempts.
    pub fn remember(&mut self, mut relay: RecentRelay) {
        if let Some(i) = self.recent.iter().position(|r| r.key() == relay.key()) {
            let old = self.recent.remove(i);
            relay.label = relay.label.or(old.label);
        }
        self.recent.insert(0, relay);
        self.recent.truncate(MAX_RECENT);
    }

    /// Removes the `i`-th recent relay.
    pub fn forget(&mut self, i: usize) {
        if i < self.recent.len() {
            self.recent.remove(i);
        }
    }

    /// Names the `i`-th recent relay (an empty name goes back to room and host).
    pub fn rename(&mut self, i: usize, label: &str) {
        if let Some(r) = self.recent.get_mut(i) {
            let label = label.trim();
            r.label = (!label.is_empty()).then(|| label.to_string());
        }
    }

    /// The voice-processing stages these settings ask for (the high-pass filter goes with
    /// noise suppression: it removes rumble the suppressor would otherwise chase).
    pub fn voice(&self) -> crate::apm::VoiceConfig {
        crate::apm::VoiceConfig {
            echo_cancellation: self.echo_cancellation,
            noise_suppression: self.noise_suppression,
            gain_control: self.gain_control,
            high_pass: self.noise_suppression || self.echo_cancellation,
        }
    }
}

/// Why a file could not be used; shown once in the UI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadProblem {
    pub file: PathBuf,
    /// Where the unusable file was moved (`None` if even that failed).
    pub kept_as: Option<PathBuf>,
    pub reason: String,
}

impl std::fmt::Display for LoadProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} could not be read ({}); defaults are in use",
            self.file.display(),
            self.reason
        )?;
        match &self.kept_as {
            Some(p) => write!(f, " and the old file was kept as {}", p.display()),
            None => Ok(()),
        }
    }
}

/// The app's directories: settings and trust in `config`, logs and the hosted relay's
/// certificate in `data`.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub config: PathBuf,
    pub data: PathBuf,
}

impl Dirs {
    /// The OS directories (`$XDG_CONFIG_HOME/natter`, `$XDG_DATA_HOME/natter` on Linux).
    pub fn os() -> Option<Self> {
        let p = directories::ProjectDirs::from("", "", "natter")?;
        Some(Self {
            config: p.config_dir().to_path_buf(),
            data: p.data_dir().to_path_buf(),
        })
    }

    /// Both under one directory (tests, `--config-dir`).
    pub fn under(root: &Path) -> Self {
        Self {
            config: root.join("config"),
            data: root.join("data"),
        }
    }

    pub fn settings_file(&self) -> PathBuf {
        self.config.join(SETTINGS_FILE)
    }

    pub fn known_relays_file(&self) -> PathBuf {
        self.config.join(KNOWN_RELAYS_FILE)
    }
}

/// Writes `bytes` to `path` atomically: temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads a TOML file into `T`: missing → default; unreadable or invalid → default plus the
/// problem, with the bad file moved aside.
pub fn load_toml<T: serde::de::DeserializeOwned + Default>(
    path: &Path,
) -> (T, Option<LoadProblem>) {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (T::default(), None),
        Err(e) => {
            return (
                T::default(),
                Some(LoadProblem {
                    file: path.to_path_buf(),
                    kept_as: None,
                    reason: e.to_string(),
                }),
            );
        }
    };
    let parsed = std::str::from_utf8(&bytes)
        .map_err(|e| format!("not UTF-8: {e}"))
        .and_then(|text| toml::from_str::<T>(text).map_err(|e| one_line(&e.to_string())));
    match parsed {
        Ok(v) => (v, None),
        Err(reason) => {
            let kept_as = set_aside(path);
            (
                T::default(),
                Some(LoadProblem {
                    file: path.to_path_buf(),
                    kept_as,
                    reason,
                }),
            )
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Renames a bad file to `<name>.bad-<unix seconds>` (with a counter if that exists).
fn set_aside(path: &Path) -> Option<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = format!("{}.bad-{secs}", path.display());
    let mut target = PathBuf::from(&base);
    let mut n = 1;
    while target.exists() {
        target = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    std::fs::rename(path, &target).ok().map(|_| target)
}

/// Settings bound to their file.
#[derive(Debug, Clone)]
pub struct SettingsStore {
    path: PathBuf,
}

impl SettingsStore {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the settings; never fails (see the module docs).
    pub fn load(&self) -> (Settings, Option<LoadProblem>) {
        load_toml(&self.path)
    }

    pub fn save(&self, settings: &Settings) -> std::io::Result<()> {
        let text = toml::to_string_pretty(settings).map_err(std::io::Error::other)?;
        write_atomic(&self.path, text.as_bytes())
    }
}

/// Relays trusted on first use: `host:port` → SHA-256 fingerprint of its certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KnownRelays {
    pub relays: BTreeMap<String, String>,
}

impl KnownRelays {
    /// The fingerprint trusted for `authority`, if any (ignored if malformed).
    pub fn get(&self, authority: &str) -> Option<[u8; 32]> {
        self.relays
            .get(authority)
            .and_then(|hex| natter_proto::invite::parse_fingerprint(hex).ok())
    }

    pub fn trust(&mut self, authority: &str, fingerprint: &[u8; 32]) {
        self.relays.insert(
            authority.to_string(),
            natter_proto::invite::fingerprint_hex(fingerprint),
        );
    }

    pub fn forget(&mut self, authority: &str) -> bool {
        self.relays.remove(authority).is_some()
    }

    pub fn load(path: &Path) -> (Self, Option<LoadProblem>) {
        load_toml(path)
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let text = toml::to_string_pretty(self).map_err(std::io::Error::other)?;
        write_atomic(path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn missing_file_gives_defaults_without_a_problem() {
        let dir = temp();
        let store = SettingsStore::new(dir.path().join("settings.toml"));
        let (s, problem) = store.load();
        assert_eq!(s, Settings::default());
        assert!(problem.is_none());
    }

    #[test]
    fn settings_round_trip() {
        let dir = temp();
        let store = SettingsStore::new(dir.path().join("nested/settings.toml"));
        let mut s = Settings {
            display_name: "Ada".into(),
            input_device: Some("USB mic".into()),
            quality: Quality::Fixed(32),
            jitter: JitterMode::Fixed(60),
            push_to_talk: Some("Space".into()),
            theme: ThemeChoice::Dark,
            low_latency: true,
            ..Settings::default()
        };
        s.remember(RecentRelay {
            invite: "natter://a:1".into(),
            room: "r".into(),
            label: None,
        });
        store.save(&s).unwrap();
        let (back, problem) = store.load();
        assert!(problem.is_none());
        assert_eq!(back, s);
    }

    #[test]
    fn corrupt_file_is_kept_aside_and_defaults_used() {
        let dir = temp();
        let path = dir.path().join("settings.toml");
        std::fs::write(&path, "display_name = \"Ada\"\nhost_port = [oops\n").unwrap();
        let store = SettingsStore::new(path.clone());
        let (s, problem) = store.load();
        assert_eq!(s, Settings::default());
        let problem = problem.expect("a corrupt file is reported");
        let kept = problem.kept_as.clone().expect("moved aside");
        assert!(
            kept.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("settings.toml.bad-"),
            "{kept:?}"
        );
        assert_eq!(
            std::fs::read_to_string(&kept).unwrap(),
            "display_name = \"Ada\"\nhost_port = [oops\n",
            "the user's file is kept byte for byte"
        );
        assert!(!path.exists(), "the bad file no longer sits in the way");
        assert!(problem.to_string().contains("defaults are in use"));
        // Saving afterwards writes a good file that loads cleanly.
        store.save(&s).unwrap();
        assert!(store.load().1.is_none());
    }

    #[test]
    fn wrong_types_and_binary_garbage_are_problems_too() {
        let dir = temp();
        let path = dir.path().join("settings.toml");
        std::fs::write(&path, "host_port = \"not a number\"\n").unwrap();
        let (_, p) = SettingsStore::new(path.clone()).load();
        assert!(p.unwrap().reason.contains("host_port"));
        std::fs::write(&path, [0xff, 0xfe, 0x00, 0x80]).unwrap();
        let (s, p) = SettingsStore::new(path.clone()).load();
        assert_eq!(s, Settings::default());
        assert!(p.unwrap().reason.contains("UTF-8"));
        // Two bad files in the same second do not overwrite each other.
        let bad: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".bad-"))
            .collect();
        assert_eq!(bad.len(), 2);
    }

    #[test]
    fn unknown_and_missing_keys_are_tolerated() {
        let dir = temp();
        let path = dir.path().join("settings.toml");
        std::fs::write(&path, "display_name = \"Bo\"\nfuture_option = 3\n").unwrap();
        let (s, p) = SettingsStore::new(path).load();
        assert!(p.is_none());
        assert_eq!(s.display_name, "Bo");
        assert_eq!(s.host_port, Settings::default().host_port);
    }

    #[test]
    fn atomic_write_replaces_whole_files_and_leaves_no_temp_files() {
        let dir = temp();
        let path = dir.path().join("f.toml");
        write_atomic(&path, b"first version, rather long").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["f.toml".to_string()], "no temp file left");
    }

    #[test]
    fn failed_atomic_write_keeps_the_old_content_and_cleans_up() {
        let dir = temp();
        // The rename cannot replace a non-empty directory: the write fails at the last step,
        // after the temp file was fully written.
        let target = dir.path().join("f.toml");
        std::fs::create_dir_all(&target).unwrap();
        std::fs::write(target.join("old"), b"old").unwrap();
        assert!(write_atomic(&target, b"new").is_err());
        assert_eq!(std::fs::read(target.join("old")).unwrap(), b"old");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec!["f.toml".to_string()],
            "the temp file is removed"
        );
    }

    #[test]
    fn known_relays_remember_and_forget() {
        let dir = temp();
        let path = dir.path().join(KNOWN_RELAYS_FILE);
        let mut k = KnownRelays::default();
        let fp = [7u8; 32];
        k.trust("relay.example:4433", &fp);
        k.save(&path).unwrap();
        let (back, p) = KnownRelays::load(&path);
        assert!(p.is_none());
        assert_eq!(back.get("relay.example:4433"), Some(fp));
        assert_eq!(back.get("other:4433"), None);
        let mut back = back;
        assert!(back.forget("relay.example:4433"));
        assert_eq!(back.get("relay.example:4433"), None);
    }

    #[test]
    fn the_same_relay_written_differently_is_one_entry_that_keeps_its_name() {
        let fp = "ab".repeat(32);
        let mut s = Settings::default();
        s.remember(RecentRelay {
            invite: format!("natter://Relay.Example:4433?fp={fp}"),
            room: "friday".into(),
            label: None,
        });
        s.rename(0, "  Friday games ");
        s.remember(RecentRelay {
            invite: format!("natter://relay.example:4433?fp={}", fp.to_uppercase()),
            room: "friday".into(),
            label: None,
        });
        assert_eq!(s.recent.len(), 1, "{:?}", s.recent);
        assert_eq!(s.recent[0].label.as_deref(), Some("Friday games"));
        s.rename(0, " ");
        assert_eq!(
            s.recent[0].label, None,
            "an empty name goes back to the default"
        );
        s.forget(0);
        assert!(s.recent.is_empty());
    }

    #[test]
    fn recent_relays_are_deduplicated_and_bounded() {
        let mut s = Settings::default();
        for i in 0..10 {
            s.remember(RecentRelay {
                invite: format!("natter://h{i}:1"),
                room: "r".into(),
                label: None,
            });
        }
        s.remember(RecentRelay {
            invite: "natter://h5:1".into(),
            room: "r".into(),
            label: None,
        });
        assert_eq!(s.recent.len(), MAX_RECENT);
        assert_eq!(s.recent[0].invite, "natter://h5:1");
        assert_eq!(
            s.recent
                .iter()
                .filter(|r| r.invite == "natter://h5:1")
                .count(),
            1
        );
    }
}
