//! The app's call controller: everything the desktop app does that is not drawing.
//!
//! It runs on its own tokio runtime thread and owns the [`Session`](crate::session::Session)
//! (which itself reconnects), the embedded relay when hosting, trust-on-first-use decisions,
//! the trusted-relays file (loaded once, here; problems reach the UI in the snapshot) and the
//! loopback latency test. The UI talks to it only through [`ControllerHandle`]: requests go in
//! over a channel (never awaited), and the UI reads the latest [`Snapshot`] and the latency
//! [`History`] — both refreshed every 100 ms — so the UI thread never waits on network or
//! audio. No egui type appears here; `repaint` is how it wakes the UI after an event.
//!
//! Split by job: [`contract`] (what the UI sends and reads), [`actor`] (the loop and its
//! requests), [`view_model`] (the pure policy: call controls and the call's view-model, time
//! passed in, tested with simulated time) under [`view`] (its shell), [`connect`] (joining
//! with trust on first use; the verdict is the pure `after_failure`),
//! [`hosting`] (the embedded relay), [`latency_test`] (the loopback measurement), [`mic_test`] (the input meter in Settings), [`alerts`] (what to notify while the window is behind others; the pure policy under `notifier`, the D-Bus shell).

pub mod actor;
pub mod alerts;
pub mod connect;
pub mod contract;
pub mod hosting;
pub mod latency_test;
pub mod mic_test;
mod notifier;
pub mod plain;
pub mod view;
pub mod view_model;

pub use connect::{fingerprint_pairs, test_speech};
pub use contract::*;

use crate::history::History;
use crate::settings::KnownRelays;
use actor::Controller;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

pub(crate) struct Shared {
    pub(crate) snapshot: Mutex<Snapshot>,
    pub(crate) history: Mutex<History>,
    pub(crate) repaint: Repaint,
}

/// The UI's handle: send requests, read the snapshot. Dropping it ends the controller (which
/// leaves any call).
#[derive(Clone)]
pub struct ControllerHandle {
    requests: mpsc::UnboundedSender<Request>,
    shared: Arc<Shared>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl ControllerHandle {
    /// Starts the controller thread and its runtime.
    pub fn spawn(config: ControllerConfig, repaint: Repaint) -> anyhow::Result<Self> {
        let (requests, rx) = mpsc::unbounded_channel();
        // Loaded once, here: the controller alone reads and writes the trusted relays.
        let (known, problem) = KnownRelays::load(&config.dirs.known_relays_file());
        let problems = problem
            .map(|p| {
                tracing::warn!("{p}");
                format!(
                    "The list of trusted relays could not be read: {p}. You will be asked again before connecting to them."
                )
            })
            .into_iter()
            .collect();
        let shared = Arc::new(Shared {
            snapshot: Mutex::new(Snapshot {
                known_relays: known_list(&known),
                problems,
                ..Snapshot::default()
            }),
            history: Mutex::new(History::default()),
            repaint,
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("natter-app-rt")
            .enable_all()
            .build()?;
        let ctl = Controller::new(config, shared.clone(), known);
        let thread = std::thread::Builder::new()
            .name("natter-controller".into())
            .spawn(move || {
                runtime.block_on(ctl.run(rx));
                runtime.shutdown_timeout(Duration::from_secs(2));
            })?;
        Ok(Self {
            requests,
            shared,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    pub fn send(&self, request: Request) {
        let _ = self.requests.send(request);
    }

    /// The latest snapshot (a clone; the lock is held only to copy).
    pub fn snapshot(&self) -> Snapshot {
        lock(&self.shared.snapshot).clone()
    }

    /// Runs `f` on the latency history.
    pub fn with_history<R>(&self, f: impl FnOnce(&History) -> R) -> R {
        f(&lock(&self.shared.history))
    }

    /// Leaves any call, stops hosting and waits (up to a few seconds) for the controller to
    /// finish: for the window closing.
    pub fn shutdown(&self) {
        let _ = self.requests.send(Request::Shutdown);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn known_list(k: &KnownRelays) -> Vec<(String, String)> {
    k.relays
        .iter()
        .map(|(a, f)| (a.clone(), f.clone()))
        .collect()
}
