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

    // Frames the encoder took (sent, or held back by DTX in pauses) prove the capture path —
    // 50 a second once the microphone delivers; packets received prove the network. A
    // PulseAudio stream takes a second or so to start, so wait for progress (bounded) rather
    // than sleeping a fixed time.
    let counts = |s: &Session| {
        let st = s.stats();
        (
            st.packets_sent + st.dtx_frames,
            st.peers.iter().map(|p| p.packets_received).sum::<u64>(),
        )
    };
    let progress = |s: &Session, from: (u64, u64), frames: u64, received: u64| {
        let deadline = Instant::now() + Duration::from_secs(8);
        loop {
            let now = counts(s);
            if now.0 >= from.0 + frames && now.1 >= from.1 + received {
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "frames {} → {}, received {} → {}",
                from.0,
                now.0,
                from.1,
                now.1
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // One second of microphone (50 frames) and of the talker (50 packets).
    let before = progress(&me, (0, 0), 50, 50);

    let names = me
        .switch_devices(DeviceChoice {
            input: Some("pulse".into()),
            output: Some("pulse".into()),
        })
        .expect("switching to the pulse devices");
    assert_eq!(names, ("pulse".to_string(), "pulse".to_string()));
    assert_eq!(me.device_names(), Some(names.clone()));
    // The new microphone feeds the engine, and the talker is still heard.
    let after = progress(&me, before, 50, 50);

    // A device that does not exist: an error, and the current devices stay in use.
    let err = me
        .switch_devices(DeviceChoice {
            input: Some("no such microphone".into()),
            output: None,
        })
        .unwrap_err();
    assert!(format!("{err:#}").contains("no such microphone"), "{err:#}");
    assert_eq!(me.device_names(), Some(names));
    progress(&me, after, 25, 25);

    rt.block_on(async {
        me.leave().await;
        talker.leave().await;
        relay.shutdown(Duration::from_millis(300)).await;
    });
}
