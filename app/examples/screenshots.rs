//! Renders each main screen of the real app in a real window (eframe + OpenGL) and saves PNGs:
//! start, settings, trust prompt, a call with two other people talking (after half a minute, so
//! the latency plot has history), the same call in the dark theme, and hosting.
//!
//! Needs a display; headless, run it under Xvfb (Mesa's llvmpipe renders):
//!
//!     make screenshots            # = xvfb-run … cargo run -p natter --example screenshots -- docs/screenshots
//!
//! The other participants are headless sessions on an embedded relay, speaking a speech-like
//! test signal in turns; the app uses a silent test signal and a fixed device list, so no
//! sound card is involved.

use natter::audio::SAMPLE_RATE;
use natter::audio::device::DeviceList;
use natter::controller::{CallSettings, LatencyTest, MicTestView, Phase, Request, test_speech};
use natter::engine::EngineConfig;
use natter::session::{Audio, Record, Session, SessionConfig};
use natter::settings::{Dirs, RecentRelay, ThemeChoice};
use natter::ui::{AppConfig, AudioSource, ControllerConfig, NatterApp, Screen, TestSignal};
use natter_proto::invite::Invite;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Seconds in the call before the call screenshot (history for the plot).
const CALL_SECONDS: f64 = 32.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scene {
    Start,
    Settings,
    Trust,
    CallSimple,
    Call,
    CallDark,
    Host,
    Done,
}

struct Director {
    app: NatterApp,
    scene: Scene,
    since: Instant,
    out: PathBuf,
    rt: tokio::runtime::Handle,
    relay_invite: Invite,
    bots: Arc<Mutex<Vec<Session>>>,
    /// A screenshot was requested and has not arrived yet.
    waiting: Arc<Mutex<Option<String>>>,
    host_bot: bool,
    /// A bot has written in the chat.
    chatted: bool,
    /// The current scene's screenshot has been requested.
    shot: bool,
    tested: bool,
}

fn bot(
    rt: &tokio::runtime::Handle,
    invite: Invite,
    room: &str,
    name: &str,
    offset: f32,
) -> Session {
    let mut engine = EngineConfig::new(0);
    engine.voice = natter::apm::VoiceConfig::NONE;
    let input = test_speech(240.0, name.len() as u64, 3.5, 3.5, offset);
    let total = input.len() + SAMPLE_RATE as usize;
    rt.block_on(Session::start(SessionConfig {
        invite,
        room: room.into(),
        name: name.into(),
        echo: false,
        audio: Audio::Wav {
            input: input.into(),
            total_samples: total,
            record: Record::Nothing,
        },
        engine,
        reconnect_for: Some(Duration::ZERO),
    }))
    .expect("bot joins")
}

impl Director {
    fn shoot(&mut self, ctx: &egui::Context, name: &str) {
        let path = self.out.join(format!("{name}.png"));
        *self.waiting.lock().unwrap() = Some(name.to_string());
        let waiting = self.waiting.clone();
        let repaint = ctx.clone();
        ctx.request_screenshot(move |image| {
            let [w, h] = image.size;
            let bytes: Vec<u8> = image
                .pixels
                .iter()
                .flat_map(|c| c.to_srgba_unmultiplied())
                .collect();
            let img = image::RgbaImage::from_raw(w as u32, h as u32, bytes).expect("size");
            img.save(&path).expect("writing the PNG");
            println!("saved {}", path.display());
            *waiting.lock().unwrap() = None;
            repaint.request_repaint();
        });
    }

    fn next(&mut self, scene: Scene) {
        self.scene = scene;
        self.since = Instant::now();
    }

    fn elapsed(&self) -> f64 {
        self.since.elapsed().as_secs_f64()
    }

    /// Whether the current scene is ready to be photographed.
    fn ready(&self) -> bool {
        let snap = self.app.controller().snapshot();
        let others_speaking = |n: usize| {
            snap.call.as_ref().is_some_and(|c| {
                c.participants.len() == n && c.participants.iter().any(|p| !p.is_me && p.speaking)
            })
        };
        match self.scene {
            Scene::Start => self.elapsed() > 1.5,
            Scene::Settings => {
                self.elapsed() > 2.5
                    && snap.devices.is_some()
                    && matches!(&snap.mic_test, Some(MicTestView::Level(l)) if l.get() > -40.0)
            }
            Scene::Trust => snap.trust_prompt.is_some() && self.elapsed() > 1.0,
            Scene::CallSimple => {
                self.elapsed() > 8.0
                    && others_speaking(3)
                    && snap.call.as_ref().is_some_and(|c| {
                        c.participants
                            .iter()
                            .filter(|p| !p.is_me)
                            .all(|p| p.stats.as_ref().is_some_and(|s| s.stages.complete))
                    })
            }
            Scene::Call => {
                self.elapsed() > CALL_SECONDS
                    && others_speaking(3)
                    && matches!(snap.latency_test, LatencyTest::Done(_))
            }
            Scene::CallDark => self.elapsed() > 1.5 && others_speaking(3),
            Scene::Host => {
                !self.bots.lock().unwrap().is_empty() && self.elapsed() > 8.0 && others_speaking(2)
            }
            Scene::Done => false,
        }
    }

    /// After the scene's picture: set up the next scene.
    fn advance(&mut self, ctx: &egui::Context) {
        match self.scene {
            Scene::Start => {
                self.app.show_screen(Screen::Settings);
                self.app.controller().send(Request::TestMicrophone(true));
                self.next(Scene::Settings);
            }
            Scene::Settings => {
                self.app.show_screen(Screen::Main);
                // Join the bots' relay by address only: trust on first use asks.
                let mut unpinned = self.relay_invite.clone();
                unpinned.fingerprint = None;
                let name = self.app.settings().display_name.clone();
                self.app.controller().send(Request::Join {
                    invite: unpinned,
                    room: "lounge".into(),
                    name,
                    settings: CallSettings::from_settings(self.app.settings()),
                });
                self.next(Scene::Trust);
            }
            Scene::Trust => {
                self.app.controller().send(Request::AnswerTrust(true));
                self.next(Scene::CallSimple);
            }
            Scene::CallSimple => {
                // The full meter, one click away in the app.
                self.app.change_settings(|s| s.call_details = true);
                self.next(Scene::Call);
            }
            Scene::Call => {
                self.app.change_settings(|s| s.theme = ThemeChoice::Dark);
                self.next(Scene::CallDark);
            }
            Scene::CallDark => {
                self.app.change_settings(|s| s.theme = ThemeChoice::Light);
                self.app.controller().send(Request::Leave);
                for s in self.bots.lock().unwrap().drain(..) {
                    self.rt.spawn(s.leave());
                }
                self.next(Scene::Host);
            }
            Scene::Host | Scene::Done => {
                self.app.controller().send(Request::Leave);
                for s in self.bots.lock().unwrap().drain(..) {
                    self.rt.spawn(s.leave());
                }
                ctx.send_viewport_cmd(egui::ViewportCommand::Close);
                self.next(Scene::Done);
            }
        }
    }

    /// Hosting needs a few steps before its picture: host, then a guest joins.
    fn set_up_hosting(&mut self) {
        let snap = self.app.controller().snapshot();
        if !self.host_bot && matches!(snap.phase, Phase::Idle) && self.elapsed() > 1.0 {
            let name = self.app.settings().display_name.clone();
            self.app.controller().send(Request::Host {
                port: 0,
                room: "lounge".into(),
                name,
                settings: CallSettings::from_settings(self.app.settings()),
            });
            self.host_bot = true;
        }
        if let Some(h) = &snap.hosting
            && self.bots.lock().unwrap().is_empty()
            && matches!(snap.phase, Phase::InCall)
        {
            let mut local: Invite = h.invite.parse().expect("hosted invite");
            local.host = "127.0.0.1".into();
            local.room = None;
            let b = bot(&self.rt, local, "lounge", "Grace", 0.0);
            self.bots.lock().unwrap().push(b);
            self.since = Instant::now();
        }
    }

    fn direct(&mut self, ctx: &egui::Context) {
        if self.waiting.lock().unwrap().is_some() {
            return;
        }
        if self.shot {
            // The picture of this scene is saved: move on.
            self.shot = false;
            self.advance(ctx);
            return;
        }
        if self.scene == Scene::Host {
            self.set_up_hosting();
        }
        // Grace writes in the chat once Ada is in the call, so the chat card has a line.
        if self.scene == Scene::CallSimple && !self.chatted && self.elapsed() > 3.0 {
            if let Some(grace) = self.bots.lock().unwrap().first() {
                grace.send_chat("Morning Ada! The notes are in the shared doc.".into());
            }
            self.chatted = true;
        }
        // Run the loopback latency test during the call so its result is in the picture.
        if self.scene == Scene::Call && !self.tested && self.elapsed() > 12.0 {
            self.app.controller().send(Request::RunLatencyTest);
            self.tested = true;
        }
        if self.ready() {
            let name = match self.scene {
                Scene::Start => "start",
                Scene::Settings => "settings",
                Scene::Trust => "trust",
                Scene::CallSimple => "call-simple",
                Scene::Call => "call",
                Scene::CallDark => "call-dark",
                Scene::Host => "host",
                Scene::Done => return,
            };
            self.shoot(ctx, name);
            self.shot = true;
        }
    }
}

impl eframe::App for Director {
    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        self.app.ui(ui, frame);
        let ctx = ui.ctx().clone();
        self.direct(&ctx);
        ctx.request_repaint_after(Duration::from_millis(100));
    }

    fn on_exit(&mut self, gl: Option<&eframe::glow::Context>) {
        self.app.on_exit(gl);
    }

    fn clear_color(&self, visuals: &egui::Visuals) -> [f32; 4] {
        self.app.clear_color(visuals)
    }
}

fn main() -> anyhow::Result<()> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "docs/screenshots".into()),
    );
    std::fs::create_dir_all(&out)?;
    let work = std::env::temp_dir().join(format!("natter-screenshots-{}", std::process::id()));
    let dirs = Dirs::under(&work);
    std::fs::create_dir_all(&dirs.config)?;
    // A returning user: a name and a few recent relays.
    let settings = natter::settings::Settings {
        display_name: "Ada".into(),
        theme: ThemeChoice::Light,
        voice_activation: true,
        input_device: Some("sysdefault:CARD=Headset".into()),
        recent: vec![
            RecentRelay {
                invite: "natter://voice.example.org:4433?fp=5d41402abc4b2a76b9719d911017c5925d41402abc4b2a76b9719d911017c592".into(),
                room: "standup".into(),
                label: None,
            },
            RecentRelay {
                invite: "natter://192.168.1.20:4433".into(),
                room: "band practice".into(),
                label: None,
            },
        ],
        ..Default::default()
    };
    natter::settings::SettingsStore::new(dirs.settings_file()).save(&settings)?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let relay = rt.block_on(natter_relay::start(natter_relay::RelayConfig::new(
        vec!["127.0.0.1:0".parse()?],
        natter_relay::Identity::generate()?,
    )))?;
    let invite = relay.invite();
    let bots = vec![
        bot(rt.handle(), invite.clone(), "lounge", "Grace", 0.0),
        bot(rt.handle(), invite.clone(), "lounge", "Linus", 3.5),
    ];

    let config = AppConfig {
        controller: ControllerConfig {
            dirs,
            // Ada talks (the microphone test on the settings screen shows her voice).
            audio: AudioSource::TestSignal(TestSignal::Speech),
            devices: Arc::new(|| {
                // ALSA's names for a laptop with a USB headset, shown by their labels.
                let inputs = vec![
                    "sysdefault:CARD=PCH".to_string(),
                    "sysdefault:CARD=Headset".into(),
                ];
                let outputs = vec![
                    "sysdefault:CARD=PCH".to_string(),
                    "hdmi:CARD=NVidia,DEV=0".into(),
                    "sysdefault:CARD=Headset".into(),
                ];
                Ok(DeviceList {
                    default_input: Some(inputs[0].clone()),
                    default_output: Some(outputs[0].clone()),
                    inputs,
                    outputs,
                    labels: Default::default(),
                }
                .with_labels(
                    " 0 [PCH            ]: HDA-Intel - HDA Intel PCH\n \
                     1 [NVidia         ]: HDA-Intel - HDA NVidia\n \
                     2 [Headset        ]: USB-Audio - Logitech USB Headset\n",
                ))
            }),
            host_bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            notification_bus: None,
        },
        export_dir: work.join("exports"),
        global_shortcuts: false,
        tray: false,
    };
    let handle = rt.handle().clone();
    let native = eframe::NativeOptions {
        renderer: eframe::Renderer::Glow,
        viewport: egui::ViewportBuilder::default()
            .with_title("Natter")
            .with_inner_size([980.0, 860.0]),
        ..Default::default()
    };
    let started = Instant::now();
    eframe::run_native(
        "Natter",
        native,
        Box::new(move |cc| {
            let app = NatterApp::new(&cc.egui_ctx, config)?;
            Ok(Box::new(Director {
                app,
                scene: Scene::Start,
                since: Instant::now(),
                out,
                rt: handle,
                relay_invite: invite,
                bots: Arc::new(Mutex::new(bots)),
                waiting: Arc::new(Mutex::new(None)),
                host_bot: false,
                chatted: false,
                shot: false,
                tested: false,
            }) as Box<dyn eframe::App>)
        }),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    rt.block_on(relay.shutdown(Duration::from_millis(300)));
    let _ = std::fs::remove_dir_all(&work);
    println!("done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}
