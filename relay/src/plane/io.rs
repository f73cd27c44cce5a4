//! The batched plane's I/O shell: one thread with a socket per listen address (IPv4 and IPv6),
//! no async runtime. Each round it receives a batch from each socket (recvmmsg/GRO), hands them
//! to the [`Plane`], runs the timers that are due, lets the plane process the connections that
//! were touched, and sends everything they had to send with one `sendmmsg` per socket; then it
//! sleeps in `poll` until the next packet or deadline.

use super::{Command, MeshSettings, Plane};
use crate::core::RelayCore;
use crate::server::{RelayError, Shared, bind, unix_ms};
use crate::udp_batch::{BatchSocket, Received, SendBatch, wait_readable};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Receiver;
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

/// Binds `addrs` and starts the plane's thread for `shared`'s relay; returns the bound
/// addresses.
/// `commands`: what the directory task tells the loop (read once a round).
pub(crate) fn spawn(
    addrs: &[SocketAddr],
    server: quinn_proto::ServerConfig,
    core: RelayCore<super::Target>,
    mesh: Option<MeshSettings>,
    commands: Receiver<Command>,
    shared: Arc<Shared>,
) -> Result<(Vec<SocketAddr>, PlaneHandle), RelayError> {
    let mut sockets = Vec::new();
    let mut bound = Vec::new();
    for addr in addrs {
        let socket = bind(*addr).map_err(|e| RelayError::Bind(*addr, e))?;
        let socket = BatchSocket::new(socket).map_err(|e| RelayError::Bind(*addr, e))?;
        bound.push(
            socket
                .local_addr()
                .map_err(|e| RelayError::Bind(*addr, e))?,
        );
        sockets.push(socket);
    }
    let plane = Plane::new(
        &shared.config,
        server,
        core,
        shared.stats.clone(),
        mesh,
        Instant::now(),
        unix_ms(),
    );
    let (tx, done) = tokio::sync::oneshot::channel();
    let families = bound.iter().map(SocketAddr::is_ipv6).collect();
    std::thread::Builder::new()
        .name("natter-relay-plane".into())
        .spawn(move || {
            run(sockets, families, plane, &commands, &shared);
            let _ = tx.send(());
        })
        .map_err(|e| RelayError::Bind(addrs[0], e))?;
    Ok((bound, PlaneHandle { done }))
}

/// The loop. `v6[i]`: socket `i` is IPv6's (each packet leaves by the socket of its family).
fn run(
    mut sockets: Vec<BatchSocket>,
    v6: Vec<bool>,
    mut plane: Plane,
    commands: &Receiver<Command>,
    shared: &Shared,
) {
    let mut out = SendBatch::default();
    let mut per_socket: Vec<SendBatch> = sockets.iter().map(|_| SendBatch::default()).collect();
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
        let mut handle = |d: Received<'_>| {
            // One time for the whole batch: the moment it was read.
            let now = *arrived.get_or_insert_with(Instant::now);
            plane.handle(now, d, &mut out);
        };
        if let Err(e) = receive(&mut sockets, wait, &mut handle) {
            warn!(error = %e, "receive failed");
            std::thread::sleep(Duration::from_millis(1));
        }
        let now = Instant::now();
        // The directory's news waits at most one round (IDLE_WAKE when idle): it is about
        // other relays, not about this round's audio.
        while let Ok(command) = commands.try_recv() {
            match command {
                Command::Peers(rooms) => plane.peers(now, rooms),
                Command::Edges(edges) => plane.set_edges(now, edges),
            }
        }
        plane.handle_timeouts(now);
        plane.flush(now, &mut out);
        // What the kernel has no room for is lost like any UDP packet: QUIC's loss recovery
        // resends control data, and lost audio is concealed by the receiver.
        if let [socket] = &sockets[..] {
            socket.send(&mut out, SEND_WAIT);
        } else {
            for (route, data) in out.iter() {
                if let Some(i) = v6.iter().position(|v6| *v6 == route.to.is_ipv6()) {
                    per_socket[i].push(route, data);
                }
            }
            out.clear();
            for (socket, batch) in sockets.iter().zip(&mut per_socket) {
                socket.send(batch, SEND_WAIT);
            }
        }
        shared.publish(plane.occupancy(), plane.take_rooms_changed());
    }
}

/// A batch from every socket that has one; if none has, waits up to `wait` for one.
fn receive(
    sockets: &mut [BatchSocket],
    wait: Duration,
    handle: &mut impl FnMut(Received<'_>),
) -> std::io::Result<()> {
    let mut n = 0;
    for socket in sockets.iter_mut() {
        n += socket.recv_now(&mut *handle)?;
    }
    if n == 0 && wait_readable(&sockets.iter().collect::<Vec<_>>(), Some(wait))? {
        for socket in sockets.iter_mut() {
            socket.recv_now(&mut *handle)?;
        }
    }
    Ok(())
}
