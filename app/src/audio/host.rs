//! Connections to the sound server.
//!
//! With cpal's PulseAudio host (which also serves PipeWire through pipewire-pulse) every
//! `cpal::default_host()` opens a new client connection with its own reactor thread. Listing
//! devices every two seconds while Settings is open, or checking the default device four times
//! a second while a call follows it, must not open a connection each time: [`shared`] keeps
//! one for listing and the microphone test. Each running device (its supervisor thread) opens
//! its own with [`connect`] and keeps it across rebuilds: PulseAudio puts all playback streams
//! of one client in one sync group, which must play on one sink, so switching the output while
//! the old stream still plays (make before break) needs a second client.
//!
//! A connection is replaced only when its server went away (restarted, or was not there at
//! start): the old client's reactor thread then ends on its own, its socket being closed.

use std::sync::{Arc, Mutex};

static SHARED: Mutex<Option<Arc<cpal::Host>>> = Mutex::new(None);

/// A new connection to the best host there is: cpal picks PulseAudio when a server is
/// reachable, else ALSA.
pub fn connect() -> cpal::Host {
    cpal::default_host()
}

/// Whether `host` is only a fallback: a better host's server is announced (its socket
/// exists) but connecting to it failed, so connecting again later may find it.
pub fn is_fallback(host: &cpal::Host) -> bool {
    cpal::available_hosts().first() != Some(&host.id())
}

/// Whether `error` says the sound server went away, rather than, say, a device not being
/// plugged in (where a new connection per retry would only pile up reactor threads on a
/// server that is still up).
pub fn is_gone(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|e| e.downcast_ref::<cpal::Error>())
        .any(|e| {
            matches!(
                e.kind(),
                cpal::ErrorKind::StreamInvalidated | cpal::ErrorKind::HostUnavailable
            )
        })
}

/// The process's shared connection for listing devices and the microphone test (record
/// streams only), connecting on first use. A fallback is not kept, so a server that comes
/// back is found.
pub fn shared() -> Arc<cpal::Host> {
    let mut cached = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(host) = cached.as_ref() {
        return host.clone();
    }
    let host = Arc::new(connect());
    if !is_fallback(&host) {
        *cached = Some(host.clone());
    }
    host
}

/// Drops the shared connection if `error` says its server went away, so the next [`shared`]
/// connects again.
pub fn forget_if_gone(error: &anyhow::Error) {
    if is_gone(error) {
        *SHARED.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}
