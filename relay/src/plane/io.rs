//! The batched plane's I/O shell: one thread with one socket, no async runtime. Each round it
//! receives one batch (recvmmsg/GRO), hands it to the [`Plane`], runs the timers that are due,
//! lets the plane process the connections that were touched, and sends everything they had to
//! send with one `sendmmsg`; then it sleeps in `poll` until the next packet or deadline.

use super::Plane;
use crate::core::RelayCore;
use crate::server::{RelayError, Shared, bind, unix_ms};
use crate::udp_batch::{BatchSocket, SendBatch};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tracing::warn;

/// Longest the loop sleeps without a deadline: how soon it notices a shutdown.
const IDLE_WAKE: Duration = Duration::from_millis(50);

/// Longest a batch waits for send-buffer space in the kernel before the rest is dropped (as
/// the UDP baseline does: late audio is worse than lost audio).
const SEND_WAIT: Duration = Duration::from_millis(2);

/// After a shutdown began, the longest the loop waits for its connections' goodbyes.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(3);

/// The running plane's thread.
pub(crate) struct PlaneHandle {
    done: tokio::sync::oneshot::Receiver<()>,
}

impl PlaneHandle {
    /// Waits up to `grace` for the loop to finish its goodbyes (the caller set
    /// `shutting_down` first).
    pub(crate) async fn finished(self, grace: Duration) {
        let _ = tokio::time::timeout(grace, self.done).await;
    }
}

/// Binds `addr` and starts the plane's thread for `shared`'s relay; returns the bound address.
pub(crate) fn spawn(
    addr: SocketAddr,
    server: quinn_proto::ServerConfig,
    core: RelayCore<quinn_proto::ConnectionHandle>,
    shared: Arc<Shared>,
) -> Result<(SocketAddr, PlaneHandle), RelayError> {
    let socket = bind(addr, false).map_err(|e| RelayError::Bind(addr, e))?;
    let socket = BatchSocket::new(socket).map_err(|e| RelayError::Bind(addr, e))?;
    let bound = socket.local_addr().map_err(|e| RelayError::Bind(addr, e))?;
    let plane = Plane::new(
        &shared.config,
        server,
        core,
        shared.stats.clone(),
        Instant::now(),
        unix_ms(),
    );
    let (tx, done) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("natter-relay-plane".into())
        .spawn(move || {
            run(socket, plane, &shared);
            let _ = tx.send(());
        })
        .map_err(|e| RelayError::Bind(bound, e))?;
    Ok((bound, PlaneHandle { done }))
}

fn run(mut socket: BatchSocket, mut plane: Plane, shared: &Shared) {
    let mut out = SendBatch::default();
    let mut shutdown_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if shutdown_at.is_none() && shared.shutting_down.load(Relaxed) {
            plane.shut_down(now);
            shutdown_at = Some(now);
        }
        if shutdown_at.is_some_and(|at| plane.is_empty() || now >= at + SHUTDOWN_LIMIT) {
            return;
        }
        let wait = plane
            .poll_timeout()
            .map_or(IDLE_WAKE, |t| t.saturating_duration_since(now))
            .min(IDLE_WAKE);
        let mut arrived = None;
        let received = socket.recv(Some(wait), |d| {
            // One time for the whole batch: the moment it was read.
            let now = *arrived.get_or_insert_with(Instant::now);
            plane.handle(now, d.from, d.data, &mut out);
        });
        if let Err(e) = received {
            warn!(error = %e, "receive failed");
            std::thread::sleep(Duration::from_millis(1));
        }
        let now = Instant::now();
        plane.handle_timeouts(now);
        plane.flush(now, &mut out);
        if !out.is_empty() {
            // What the kernel had no room for is lost like any UDP packet: QUIC's loss
            // recovery resends control data, and lost audio is concealed by the receiver.
            socket.send(&mut out, SEND_WAIT);
        }
        shared.publish(plane.occupancy());
    }
}
