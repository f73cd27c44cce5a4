//! Joining: a session with trust on first use (a pinned invite or a relay trusted before is
//! pinned; an unknown self-signed relay is probed and the user asked), what a failure says to
//! the user, and the session's settings for a target.

use super::actor::{Controller, frame_mode};
use super::contract::*;
use super::lock;
use crate::apm::VoiceConfig;
use crate::audio::SAMPLE_RATE;
use crate::engine::{EngineCommand, EngineConfig};
use crate::session::{Audio, Record, Session, SessionConfig, StartError};
use crate::transport::{ConnectError, probe_fingerprint};
use natter_proto::invite::Invite;
use std::time::Instant;

/// Formats a fingerprint as colon-separated byte pairs.
pub fn fingerprint_pairs(fp: &[u8; 32]) -> String {
    fp.iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What to (re)connect to.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) invite: Invite,
    pub(super) room: String,
    pub(super) name: String,
}

pub(super) enum ConnectOutcome {
    Joined(Box<Session>),
    /// Unknown self-signed relay: ask the user.
    NeedsTrust([u8; 32]),
    Failed(StartError),
}

impl Controller {
    pub(super) fn start(&mut self, target: Target) {
        let authority = target.invite.authority();
        self.target = Some(target.clone());
        self.set_phase(Phase::Connecting {
            to: authority.clone(),
        });
        let known = self.known.get(&authority);
        let session_config = self.session_config(&target);
        self.connecting = Some(tokio::spawn(connect(target, known, session_config)));
    }

    pub(super) fn session_config(&self, target: &Target) -> SessionTemplate {
        let settings = self
            .settings
            .clone()
            .unwrap_or_else(|| CallSettings::from_settings(&crate::settings::Settings::default()));
        SessionTemplate {
            room: target.room.clone(),
            name: target.name.clone(),
            audio: self.config.audio,
            settings,
        }
    }

    pub(super) async fn on_connect(
        &mut self,
        outcome: Result<ConnectOutcome, tokio::task::JoinError>,
    ) {
        let outcome =
            outcome.unwrap_or_else(|e| ConnectOutcome::Failed(StartError::Local(e.into())));
        match outcome {
            ConnectOutcome::Joined(session) => {
                let session = *session;
                tracing::info!(room = %session.joined().room, "joined");
                self.session = Some(session);
                self.view.joined(Instant::now());
                self.alerts.reset();
                lock(&self.shared.history).clear();
                if let Some(s) = self.settings.clone() {
                    self.apply_to_session(&s, None);
                }
                self.apply_mute();
                self.apply_gains();
                if let Some(s) = &self.session
                    && self.controls.deafened
                {
                    s.command(EngineCommand::SetDeafened(true));
                }
                self.refresh();
                self.set_phase(Phase::InCall);
            }
            ConnectOutcome::NeedsTrust(fp) => {
                let authority = self
                    .target
                    .as_ref()
                    .map(|t| t.invite.authority())
                    .unwrap_or_default();
                self.update(|s| {
                    s.phase = Phase::Idle;
                    s.trust_prompt = Some(TrustPrompt {
                        authority,
                        fingerprint: fingerprint_pairs(&fp),
                    });
                });
            }
            ConnectOutcome::Failed(e) => {
                let text = format!("{e:#}");
                let (message, changed) =
                    describe_failure(e.connect_error(), text, self.target.as_ref());
                self.stop_hosting_quietly().await;
                self.fail(message, changed);
            }
        }
    }

    /// The session gave up rejoining (its policy: the relay refused us for good, or its
    /// certificate changed): the call is over.
    pub(super) async fn on_ended(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let (message, changed) = match session.ended() {
            Some(e) => describe_failure(Some(&e.error), e.reason.clone(), self.target.as_ref()),
            None => ("connection lost".into(), false),
        };
        tracing::warn!("call ended: {message}");
        tokio::spawn(session.leave());
        self.target = None;
        self.view.left();
        self.stop_hosting_quietly().await;
        self.update(|s| s.call = None);
        self.fail(message, changed);
    }
}

/// What is needed to build a [`SessionConfig`] for a target.
pub(super) struct SessionTemplate {
    room: String,
    name: String,
    audio: AudioSource,
    settings: CallSettings,
}

impl SessionTemplate {
    fn build(&self, invite: Invite) -> SessionConfig {
        let mut engine = EngineConfig::new(0);
        engine.mode = frame_mode(self.settings.low_latency);
        let audio = match self.audio {
            AudioSource::Devices => {
                engine.voice = self.settings.voice;
                Audio::Devices {
                    choice: self.settings.devices.clone(),
                    duration: None,
                }
            }
            AudioSource::TestSignal(signal) => {
                // A signal is not a microphone in a room: nothing to cancel or suppress.
                engine.voice = VoiceConfig::NONE;
                let input = match signal {
                    TestSignal::Silence => Vec::new(),
                    TestSignal::Speech => {
                        test_speech(180.0, u64::from(std::process::id()), 4.0, 3.0, 0.0)
                    }
                };
                Audio::Wav {
                    input: input.into(),
                    total_samples: (TEST_SIGNAL_SECONDS * f64::from(SAMPLE_RATE)) as usize,
                    // Nobody listens to what a test signal "hears".
                    record: Record::Nothing,
                }
            }
        };
        SessionConfig {
            invite,
            room: self.room.clone(),
            name: self.name.clone(),
            echo: false,
            audio,
            engine,
            // The app keeps trying until the user leaves; the banner says so.
            reconnect_for: None,
        }
    }
}

/// Test-signal calls keep at most this much (real-time) audio.
pub(super) const TEST_SIGNAL_SECONDS: f64 = 30.0 * 60.0;

/// A speech-like test signal in turns: `talk` seconds of speech, `pause` seconds of silence,
/// starting `offset` seconds into the cycle (so several bots can take turns).
pub fn test_speech(seconds: f32, seed: u64, talk: f32, pause: f32, offset: f32) -> Vec<f32> {
    let mut s = crate::measure::speech_like(SAMPLE_RATE, seconds, seed);
    let rate = SAMPLE_RATE as f32;
    let cycle = talk + pause;
    for (i, x) in s.iter_mut().enumerate() {
        let t = (i as f32 / rate + offset) % cycle;
        if t >= talk {
            *x = 0.0;
        }
    }
    s
}

/// Connects with trust on first use: a pinned invite or a relay trusted before is pinned; an
/// unknown relay is tried with WebPKI, and if its certificate is not CA-signed the user is
/// asked about its fingerprint.
pub(super) async fn connect(
    target: Target,
    known: Option<[u8; 32]>,
    template: SessionTemplate,
) -> ConnectOutcome {
    let mut invite = target.invite.clone();
    let unpinned = invite.fingerprint.is_none();
    if unpinned && let Some(fp) = known {
        invite.fingerprint = Some(fp);
    }
    match Session::start(template.build(invite.clone())).await {
        Ok(s) => ConnectOutcome::Joined(Box::new(s)),
        Err(e) => match after_failure(unpinned, known.is_some(), e.connect_error()) {
            AfterFailure::AskAboutCertificate => match probe_fingerprint(&invite).await {
                Ok(fp) => ConnectOutcome::NeedsTrust(fp),
                Err(probe) => ConnectOutcome::Failed(StartError::Connect(probe)),
            },
            AfterFailure::Fail => ConnectOutcome::Failed(e),
        },
    }
}

/// What trust on first use does after a join failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterFailure {
    /// Look at the certificate the relay presents and ask the user about its fingerprint.
    AskAboutCertificate,
    Fail,
}

/// Only a relay nobody vouches for — no fingerprint in the invite, none trusted before — whose
/// certificate WebPKI rejected is worth asking about; a pinned or trusted relay that fails is a
/// failure (a changed certificate above all: never offer to trust it again in passing).
pub(super) fn after_failure(
    unpinned: bool,
    known: bool,
    error: Option<&ConnectError>,
) -> AfterFailure {
    if unpinned && !known && matches!(error, Some(ConnectError::Tls(_))) {
        AfterFailure::AskAboutCertificate
    } else {
        AfterFailure::Fail
    }
}

/// What the user reads (in plain words when the error is one of the transport's, else `text`)
/// and whether the certificate of a relay trusted before changed.
pub(super) fn describe_failure(
    error: Option<&ConnectError>,
    text: String,
    target: Option<&Target>,
) -> (String, bool) {
    let relay = target.map(|t| t.invite.authority()).unwrap_or_default();
    let room = target.map(|t| t.room.as_str()).unwrap_or_default();
    match error {
        Some(ConnectError::FingerprintMismatch { actual, .. })
            if target.is_some_and(|t| t.invite.fingerprint.is_none()) =>
        {
            // The first four byte pairs are enough to compare with what the operator reads out.
            let short: String = actual.chars().take(8).collect::<String>().to_uppercase();
            (
                format!(
                    "The certificate of {relay} has changed since you first trusted it (it now \
                     begins {short}…). Someone may be impersonating the relay, so Natter did not \
                     connect. If its operator confirms the change, remove {relay} from the \
                     trusted relays in Settings and join again."
                ),
                true,
            )
        }
        Some(e) => (super::plain::join_failure(e, &relay, room), false),
        None => (text, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_unknown_relay_rejected_by_webpki_is_asked_about() {
        let tls = ConnectError::Tls("unknown issuer".into());
        let changed = ConnectError::FingerprintMismatch {
            expected: "aa".into(),
            actual: "bb".into(),
        };
        use AfterFailure::*;
        assert_eq!(after_failure(true, false, Some(&tls)), AskAboutCertificate);
        assert_eq!(
            after_failure(true, true, Some(&tls)),
            Fail,
            "trusted before"
        );
        assert_eq!(
            after_failure(false, false, Some(&tls)),
            Fail,
            "pinned invite"
        );
        assert_eq!(after_failure(true, true, Some(&changed)), Fail);
        assert_eq!(after_failure(true, false, None), Fail, "a local failure");
    }

    #[test]
    fn a_trusted_relay_with_a_new_certificate_is_called_out() {
        let target = |fp: Option<[u8; 32]>| Target {
            invite: Invite::new("relay.example", 4433, fp),
            room: "r".into(),
            name: "n".into(),
        };
        let changed = ConnectError::FingerprintMismatch {
            expected: "aa".into(),
            actual: "bb".into(),
        };
        // Trusted on first use (the invite had no fingerprint): the warning and the flag.
        let (message, flag) = describe_failure(Some(&changed), "x".into(), Some(&target(None)));
        assert!(
            flag && message.contains("has changed since you first trusted it"),
            "{message}"
        );
        assert!(message.contains("relay.example:4433"), "{message}");
        // Pinned by the invite itself: the invite is stale or the relay an impostor, said in
        // plain words (controller/plain.rs), without the fingerprints.
        let (message, flag) =
            describe_failure(Some(&changed), "x".into(), Some(&target(Some([1; 32]))));
        assert!(!flag);
        assert!(message.contains("Ask for a new invite link"), "{message}");
        assert!(!message.contains("bb"), "{message}");
    }

    #[test]
    fn fingerprints_read_in_pairs() {
        let mut fp = [0u8; 32];
        fp[0] = 0xab;
        fp[31] = 0x01;
        let s = fingerprint_pairs(&fp);
        assert!(s.starts_with("AB:00:"));
        assert!(s.ends_with(":01"));
        assert_eq!(natter_proto::invite::parse_fingerprint(&s).unwrap(), fp);
    }
}
