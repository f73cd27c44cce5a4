//! What the UI and the controller say to each other: requests in, the snapshot out, and the
//! plain types both sides name. No logic beyond small conversions.

use crate::apm::VoiceConfig;
use crate::audio::device::{DeviceChoice, DeviceList};
use crate::audio::level::SharedLevel;
use crate::engine::EngineStats;
use crate::engine::receive::PeerStats;
use crate::settings::Dirs;
pub use crate::transport::control::ChatLine;
use natter_proto::invite::Invite;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// Lists audio devices (cpal in the app; a fixed list in tests).
pub type DeviceLister = Arc<dyn Fn() -> anyhow::Result<DeviceList> + Send + Sync>;

/// Wakes the UI (egui's `request_repaint`).
pub type Repaint = Arc<dyn Fn() + Send + Sync>;

/// What a call's microphone and speaker are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioSource {
    /// Sound-card devices through cpal (the app).
    Devices,
    /// No sound card: a paced test signal as the microphone, the speaker discarded (tests,
    /// screenshots, benchmarks on machines without audio).
    TestSignal(TestSignal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestSignal {
    Silence,
    /// A deterministic speech-like signal with pauses (lights the speaking indicator).
    Speech,
}

/// How the controller is set up.
#[derive(Clone)]
pub struct ControllerConfig {
    pub dirs: Dirs,
    pub audio: AudioSource,
    pub devices: DeviceLister,
    /// Address the embedded relay listens on when hosting (`0.0.0.0`; tests use loopback).
    pub host_bind: IpAddr,
    /// The D-Bus bus desktop notifications go to (an address); `None`: the session bus.
    pub notification_bus: Option<String>,
}

impl ControllerConfig {
    /// The real app: OS directories, sound-card devices, relay on every interface.
    pub fn desktop(dirs: Dirs) -> Self {
        Self {
            dirs,
            audio: AudioSource::Devices,
            devices: Arc::new(crate::audio::device::list),
            host_bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            notification_bus: None,
        }
    }
}

/// The parts of the settings a call uses.
#[derive(Debug, Clone, PartialEq)]
pub struct CallSettings {
    pub voice: VoiceConfig,
    /// Fixed bitrate in bit/s, or adaptive.
    pub bitrate_bps: Option<i32>,
    pub low_latency: bool,
    /// Fixed jitter-buffer target in ms, or adaptive.
    pub jitter_ms: Option<f64>,
    pub devices: DeviceChoice,
    pub push_to_talk: bool,
    /// Send only while a voice is heard, above `voice_threshold_db`.
    pub voice_activation: bool,
    pub voice_threshold_db: f32,
    pub sounds: bool,
    /// Desktop notifications while the window is not in front.
    pub notifications: bool,
}

impl CallSettings {
    pub fn from_settings(s: &crate::settings::Settings) -> Self {
        use crate::settings::{JitterMode, Quality};
        Self {
            voice: s.voice(),
            bitrate_bps: match s.quality {
                Quality::Auto => None,
                Quality::Fixed(kbps) => Some(kbps as i32 * 1000),
            },
            low_latency: s.low_latency,
            jitter_ms: match s.jitter {
                JitterMode::Auto => None,
                JitterMode::Fixed(ms) => Some(f64::from(ms)),
            },
            devices: DeviceChoice {
                input: s.input_device.clone(),
                output: s.output_device.clone(),
            },
            push_to_talk: s.push_to_talk.is_some(),
            voice_activation: s.voice_activation && s.push_to_talk.is_none(),
            voice_threshold_db: s.voice_threshold_db,
            sounds: s.sounds,
            notifications: s.notifications,
        }
    }
}

/// What the UI asks for.
#[derive(Debug, Clone)]
pub enum Request {
    Join {
        invite: Invite,
        room: String,
        name: String,
        settings: CallSettings,
    },
    /// Start the embedded relay on `port` (0: any free port) and join it.
    Host {
        port: u16,
        room: String,
        name: String,
        settings: CallSettings,
    },
    /// The user's answer to [`Snapshot::trust_prompt`].
    AnswerTrust(bool),
    /// Leave the call (and stop hosting), or stop reconnecting.
    Leave,
    /// Clear a failure message.
    Dismiss,
    SetMuted(bool),
    SetDeafened(bool),
    /// Push-to-talk key held (true) or released.
    SetTalking(bool),
    /// Local playback volume for a participant (by name, so it survives reconnects), 0–2.
    SetVolume {
        name: String,
        volume: f32,
    },
    /// Mute a participant for ourselves only.
    SetLocalMute {
        name: String,
        muted: bool,
    },
    Apply(CallSettings),
    RunLatencyTest,
    /// Start (true) or stop the microphone test on the chosen input; it follows a change of
    /// input device while it runs.
    TestMicrophone(bool),
    /// The window came to the front (true) or went behind others: what happens in the call
    /// while it is behind raises desktop notifications.
    WindowFocused(bool),
    /// Poll the device list (while the settings screen is open).
    WatchDevices(bool),
    ForgetRelay(String),
    /// Send a chat message to the room.
    SendChat(String),
    /// Leave and stop the controller (the window is closing).
    Shutdown,
}

/// Where the call is.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Phase {
    #[default]
    Idle,
    Connecting {
        to: String,
    },
    InCall,
    /// The connection was lost; trying again.
    Reconnecting {
        attempt: u32,
        reason: String,
    },
    Failed(Failure),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub message: String,
    /// A relay we trusted before presented a different certificate.
    pub certificate_changed: bool,
    /// Hosting failed (not joining).
    pub hosting: bool,
}

/// The relay we host.
#[derive(Debug, Clone, PartialEq)]
pub struct Hosting {
    /// The invite to hand out (with room and fingerprint).
    pub invite: String,
    pub port: u16,
    /// Who can join, in one sentence: through the router's port mapping, or the LAN only and
    /// what to do about it.
    pub reach: String,
}

/// A relay without a pinned fingerprint presented a self-signed certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct TrustPrompt {
    pub authority: String,
    /// Hex, in colon-separated pairs for reading aloud.
    pub fingerprint: String,
}

/// Connection quality, for the icon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LinkQuality {
    #[default]
    Unknown,
    Poor,
    Fair,
    Good,
}

impl LinkQuality {
    /// From recent loss (fraction), interarrival jitter and round trip.
    pub fn assess(loss: f64, jitter_ms: f64, rtt_ms: Option<f64>) -> Self {
        let rtt = rtt_ms.unwrap_or(0.0);
        if loss > 0.08 || jitter_ms > 50.0 || rtt > 400.0 {
            Self::Poor
        } else if loss > 0.02 || jitter_ms > 20.0 || rtt > 150.0 {
            Self::Fair
        } else {
            Self::Good
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Poor => "poor",
            Self::Fair => "fair",
            Self::Good => "good",
        }
    }
}

/// One row of the roster.
#[derive(Debug, Clone)]
pub struct ParticipantView {
    pub id: u64,
    pub ssrc: u32,
    pub name: String,
    pub is_me: bool,
    /// Muted their own microphone (as the relay told us).
    pub muted: bool,
    pub speaking: bool,
    /// Local playback volume, 0–2.
    pub volume: f32,
    pub locally_muted: bool,
    /// What we receive from them (not for ourselves).
    pub stats: Option<PeerStats>,
    pub quality: LinkQuality,
    /// Packet loss over the last few seconds, fraction.
    pub recent_loss: f64,
}

#[derive(Debug, Clone)]
pub struct CallView {
    pub room: String,
    /// `host:port` of the relay.
    pub relay: String,
    /// The invite to this room for others to join with, as this participant joined (room
    /// included, without any access token: tokens are personal).
    pub share_invite: String,
    /// The relay wants tokens: people invited need their own.
    pub needs_token: bool,
    /// Everyone, us first.
    pub participants: Vec<ParticipantView>,
    pub relay_rtt_ms: Option<f64>,
    pub engine: EngineStatsView,
    /// Sound-card devices in use (`None` with a test signal).
    pub devices: Option<(String, String)>,
    /// The room's chat as we saw it, oldest first (the last 200 lines).
    pub chat: Vec<ChatLine>,
    /// Lines ever added to the chat: what is new since the user last looked.
    pub chat_count: u64,
}

/// The engine-wide numbers the UI shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStatsView {
    pub input_level_db: f32,
    pub voice_active: bool,
    pub bitrate_bps: i32,
    pub frame_ms: f64,
    /// The microphone or speaker is gone (unplugged) and has not come back yet.
    pub device_missing: bool,
}

impl From<&EngineStats> for EngineStatsView {
    fn from(s: &EngineStats) -> Self {
        Self {
            input_level_db: s.input_level_db,
            voice_active: s.voice_active,
            bitrate_bps: s.bitrate_bps,
            frame_ms: s.frame_ms,
            device_missing: s.device_missing,
        }
    }
}

/// The loopback latency test.
/// A running microphone test as the UI sees it.
#[derive(Debug, Clone)]
pub enum MicTestView {
    /// The input level, read by the UI whenever it draws (an atomic, updated every 20 ms).
    Level(Arc<SharedLevel>),
    /// The input could not be opened.
    Failed(String),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub enum LatencyTest {
    #[default]
    Idle,
    Running,
    Done(LatencyResult),
    Failed(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct LatencyResult {
    /// Measured round trip (microphone → relay → speaker), median over the chirps, ms.
    pub measured_ms: f64,
    pub p05_ms: f64,
    pub p95_ms: f64,
    pub chirps_found: usize,
    pub chirps_sent: usize,
    /// What the latency meter's stages added up to for the same path, ms.
    pub estimate_ms: Option<f64>,
}

/// Everything the UI shows, refreshed by the controller.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub phase: Phase,
    pub hosting: Option<Hosting>,
    pub call: Option<CallView>,
    pub trust_prompt: Option<TrustPrompt>,
    pub latency_test: LatencyTest,
    pub muted: bool,
    pub deafened: bool,
    /// Push-to-talk key held.
    pub talking: bool,
    /// The call settings last applied.
    pub applied: Option<CallSettings>,
    pub devices: Option<DeviceList>,
    pub device_error: Option<String>,
    /// The microphone test, while it runs.
    pub mic_test: Option<MicTestView>,
    pub known_relays: Vec<(String, String)>,
    /// Counts join/leave cues played (for tests and the curious).
    pub cues_played: u64,
    /// Problems with the controller's own files (the trusted relays), one sentence each, for
    /// the UI to show until dismissed.
    pub problems: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_tiers() {
        assert_eq!(LinkQuality::assess(0.0, 1.0, Some(20.0)), LinkQuality::Good);
        assert_eq!(
            LinkQuality::assess(0.03, 1.0, Some(20.0)),
            LinkQuality::Fair
        );
        assert_eq!(LinkQuality::assess(0.0, 30.0, None), LinkQuality::Fair);
        assert_eq!(
            LinkQuality::assess(0.10, 1.0, Some(20.0)),
            LinkQuality::Poor
        );
        assert_eq!(
            LinkQuality::assess(0.0, 1.0, Some(500.0)),
            LinkQuality::Poor
        );
    }

    #[test]
    fn call_settings_follow_the_settings_file() {
        use crate::settings::{JitterMode, Quality, Settings};
        let s = Settings {
            quality: Quality::Fixed(32),
            jitter: JitterMode::Fixed(80),
            push_to_talk: Some("Space".into()),
            echo_cancellation: false,
            noise_suppression: false,
            ..Settings::default()
        };
        let c = CallSettings::from_settings(&s);
        assert_eq!(c.bitrate_bps, Some(32_000));
        assert_eq!(c.jitter_ms, Some(80.0));
        assert!(c.push_to_talk);
        assert!(!c.voice.echo_cancellation && !c.voice.high_pass && c.voice.gain_control);
    }
}
