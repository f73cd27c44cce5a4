//! The microphone test behind Settings: opens the chosen input on its own (also during a call:
//! the sound server shares it) and publishes its level for the meter.

use super::actor::Controller;
use super::connect::test_speech;
use super::contract::{AudioSource, MicTestView, TestSignal};
use crate::audio::mic_test::{MicSource, MicTest};

impl Controller {
    /// What the test listens to: the chosen input device, or the app's test signal.
    fn mic_source(&self) -> MicSource {
        match self.config.audio {
            AudioSource::Devices => {
                MicSource::Device(self.settings.as_ref().and_then(|s| s.devices.input.clone()))
            }
            AudioSource::TestSignal(TestSignal::Silence) => MicSource::Signal(Vec::new()),
            AudioSource::TestSignal(TestSignal::Speech) => MicSource::Signal(test_speech(
                60.0,
                u64::from(std::process::id()),
                4.0,
                1.0,
                0.0,
            )),
        }
    }

    /// Starts (closing any running one first) or stops the microphone test.
    pub(super) fn set_mic_test(&mut self, on: bool) {
        self.mic_test = None;
        let view = on.then(|| {
            let source = self.mic_source();
            match tokio::task::block_in_place(|| MicTest::start(source)) {
                Ok(test) => {
                    let level = test.level();
                    self.mic_test = Some(test);
                    MicTestView::Level(level)
                }
                Err(e) => {
                    tracing::warn!("microphone test: {e:#}");
                    MicTestView::Failed(format!(
                        "The microphone could not be opened ({e:#}). Choose another one above."
                    ))
                }
            }
        });
        self.update(|s| s.mic_test = view);
    }

    /// After a settings change: a running test moves to the newly chosen input.
    pub(super) fn follow_input_change(&mut self, input_changed: bool) {
        let running = self.mic_test.is_some()
            || matches!(
                super::lock(&self.shared.snapshot).mic_test,
                Some(MicTestView::Failed(_))
            );
        if input_changed && running {
            self.set_mic_test(true);
        }
    }
}
