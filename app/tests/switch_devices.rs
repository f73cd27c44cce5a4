//! Switching sound-card devices in the middle of a call (what the app's settings screen does)
//! through a private PulseAudio daemon with a null sink: no sound card needed, the real cpal →
//! ALSA → PulseAudio path. `scripts/setup.sh test` (run by `make test`) installs PulseAudio.
//!
//! `PULSE_SERVER` is set for the whole test process: nextest runs each test in its own process.

use natter::audio::device::DeviceChoice;
use natter::engine::EngineConfig;
use natter::session::{Audio, Session, SessionConfig};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Pulse {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Pulse {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (run, home) = (dir.path().join("run"), dir.path().join("home"));
        std::fs::create_dir_all(&run).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        let socket = run.join("native");
        let config = dir.path().join("default.pa");
        std::fs::write(
            &config,
            format!(
                "load-module module-null-sink sink_name=switch rate=48000 channels=2\n\
                 load-module module-native-protocol-unix auth-anonymous=1 socket={}\n\
                 set-default-sink switch\n\
                 set-default-source switch.monitor\n",
                socket.display()
            ),
        )
        .unwrap();
        let child = Command::new("pulseaudio")
            .args(["-n", "-F"])
            .arg(&config)
            .args(["--daemonize=no", "--exit-idle-time=-1"])
            .env("XDG_RUNTIME_DIR", &run)
            .env("HOME", &home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pulseaudio is needed: scripts/setup.sh test installs it");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "pulseaudio did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: set before any thread of this test process opens an audio device.
        unsafe { std::env::set_var("PULSE_SERVER", format!("unix:{}", socket.display())) };
        Self { child, _dir: dir }
    }
}

impl Drop for Pulse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn engine() -> EngineConfig {
    let mut e = EngineConfig::new(0);
    e.voice = natter::apm::VoiceConfig::NONE;
    e
}

#[test]
fn switching_devices_mid_call_keeps_audio_flowing_both_ways() {
    let _pulse = Pulse::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let relay = rt
        .block_on(natter_relay::start(natter_relay::RelayConfig::new(
            vec!["127.0.0.1:0".parse().unwrap()],
            natter_relay::Identity::generate().unwrap(),
        )))
        .unwrap();
    let invite = relay.invite();
    let speech = natter::measure::speech_like(48_000, 12.0, 3);
    let talker = rt
        .block_on(Session::start(SessionConfig {
            invite: invite.clone(),
            room: "switch".into(),
            name: "talker".into(),
            echo: false,
            audio: Audio::Wav {
                total_samples: speech.len(),
                input: speech,
            },
            engine: engine(),
        }))
        .unwrap();
    let mut me = rt
        .block_on(Session::start(SessionConfig {
            invite,
            room: "switch".into(),
            name: "me".into(),
            echo: false,
            audio: Audio::Devices {
                choice: DeviceChoice::default(),
                duration: None,
            },
            engine: engine(),
        }))
        .unwrap();
    let (input, output) = me.device_names().expect("sound-card devices");
    assert_eq!((input.as_str(), output.as_str()), ("default", "default"));

    // What the speaker plays comes back on the null sink's monitor, which is the microphone:
    // packets we send prove the capture path, packets we receive the network.
    let counts = |s: &Session| {
        let st = s.stats();
        (
            st.packets_sent,
            st.peers.iter().map(|p| p.packets_received).sum::<u64>(),
        )
    };
    std::thread::sleep(Duration::from_millis(2500));
    let (sent0, got0) = counts(&me);
    assert!(
        sent0 > 20 && got0 > 50,
        "before: sent {sent0}, received {got0}"
    );

    let names = me
        .switch_devices(DeviceChoice {
            input: Some("pulse".into()),
            output: Some("pulse".into()),
        })
        .expect("switching to the pulse devices");
    assert_eq!(names, ("pulse".to_string(), "pulse".to_string()));
    assert_eq!(me.device_names(), Some(names.clone()));
    std::thread::sleep(Duration::from_millis(2500));
    let (sent1, got1) = counts(&me);
    assert!(
        sent1 > sent0 + 40,
        "the new microphone feeds the engine: sent {sent0} → {sent1}"
    );
    assert!(got1 > got0 + 60, "received {got0} → {got1}");

    // A device that does not exist: an error, and the current devices stay in use.
    let err = me
        .switch_devices(DeviceChoice {
            input: Some("no such microphone".into()),
            output: None,
        })
        .unwrap_err();
    assert!(format!("{err:#}").contains("no such microphone"), "{err:#}");
    assert_eq!(me.device_names(), Some(names));
    std::thread::sleep(Duration::from_millis(1000));
    let (sent2, _) = counts(&me);
    assert!(sent2 > sent1 + 15, "still sending: {sent1} → {sent2}");

    rt.block_on(async {
        me.leave().await;
        talker.leave().await;
        relay.shutdown(Duration::from_millis(300)).await;
    });
}
