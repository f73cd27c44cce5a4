//! The batched plane's I/O shell: `threads` loops (one by default), each on its own thread with
//! its own socket per listen address (IPv4 and IPv6), no async runtime. With several loops the
//! sockets of one address are bound with SO_REUSEPORT, and the kernel spreads clients over
//! them by 4-tuple hash. Each round a loop receives a batch from each of its sockets
//! (recvmmsg/GRO), hands it to the [`Plane`], runs the timers that are due, lets the plane
//! process the connections that were touched, and sends everything they had to send with one
//! `sendmmsg` per socket; then it sleeps in `poll` until the next packet or deadline.
//!
//! The loops share one [`Plane`] (one quinn-proto endpoint, one core) behind a lock each loop
//! takes once a round, after its receive system call and released before its send (the
//! `crate::plane` module documentation says why this design and what it costs).

use super::{Command, MeshSettings, Plane};
use crate::core::RelayCore;
use crate::server::{RelayError, Shared, bind, unix_ms};
use crate::udp_batch::{BatchSocket, Received, SendBatch, wait_readable};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::warn;

/// Longest the loop sleeps without a deadline: how soon it notices a shutdown.
const IDLE_WAKE: Duration = Duration::from_millis(50);

/// Longest a batch waits for send-buffer space in the kernel before the rest is dropped (as
/// the UDP baseline does: late audio is worse than lost audio).
const SEND_WAIT: Duration = Duration::from_millis(2);

/// After a shutdown began, the longest the loop waits for its connections' goodbyes.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(3);

/// The running plane's threads.
pub(crate) struct PlaneHandle {
    done: Vec<tokio::sync::oneshot::Receiver<()>>,
}

impl PlaneHandle {
    /// Waits up to `grace` for every loop to finish its goodbyes (the caller set
    /// `shutting_down` first).
    pub(crate) async fn finished(self, grace: Duration) {
        let _ = tokio::time::timeout(grace, async {
            for done in self.done {
                let _ = done.await;
            }
        })
        .await;
    }
}

/// What the loops share, behind the lock each takes once a round.
struct Locked {
    plane: Plane,
    /// What the directory task tells the plane (read by whichever loop runs a round).
    commands: Receiver<Command>,
    /// When the shutdown began (the first loop that saw the flag started the goodbyes).
    shutdown_at: Option<Instant>,
}

struct Loops {
    state: Mutex<Locked>,
    /// Taken before a loop releases `state` and held while it sends its round's packets:
    /// rounds send in the order they ran, so packets of one connection built by two loops
    /// one after the other cannot overtake each other on the wire, and one loop's send still
    /// overlaps the next loop's round.
    sending: Mutex<()>,
}

/// Binds `addrs` and starts the plane's threads (`shared.config.threads` loops) for `shared`'s
/// relay; returns the bound addresses.
/// `commands`: what the directory task tells the plane (read once a round).
pub(crate) fn spawn(
    addrs: &[SocketAddr],
    server: quinn_proto::ServerConfig,
    core: RelayCore<super::Target>,
    mesh: Option<MeshSettings>,
    commands: Receiver<Command>,
    shared: Arc<Shared>,
) -> Result<(Vec<SocketAddr>, PlaneHandle), RelayError> {
    let threads = shared.config.threads.max(1);
    let reuse_port = threads > 1;
    let open = |addr: SocketAddr| -> Result<BatchSocket, RelayError> {
        let socket = bind(addr, reuse_port).map_err(|e| RelayError::Bind(addr, e))?;
        BatchSocket::new_quic(socket).map_err(|e| RelayError::Bind(addr, e))
    };
    // The first loop's sockets pick the ports (for `:0`); the other loops join them.
    let mut first = Vec::new();
    let mut bound = Vec::new();
    for addr in addrs {
        let socket = open(*addr)?;
        bound.push(
            socket
                .local_addr()
                .map_err(|e| RelayError::Bind(*addr, e))?,
        );
        first.push(socket);
    }
    let mut loops_sockets = vec![first];
    for _ in 1..threads {
        loops_sockets.push(bound.iter().map(|a| open(*a)).collect::<Result<_, _>>()?);
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
    let loops = Arc::new(Loops {
        state: Mutex::new(Locked {
            plane,
            commands,
            shutdown_at: None,
        }),
        sending: Mutex::new(()),
    });
    let families: Vec<bool> = bound.iter().map(SocketAddr::is_ipv6).collect();
    let mut done = Vec::new();
    for (index, sockets) in loops_sockets.into_iter().enumerate() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (loops, shared, v6) = (loops.clone(), shared.clone(), families.clone());
        std::thread::Builder::new()
            .name(format!("natter-relay-plane-{index}"))
            .spawn(move || {
                run(index, sockets, v6, &loops, &shared);
                let _ = tx.send(());
            })
            .map_err(|e| RelayError::Bind(addrs[0], e))?;
        done.push(rx);
    }
    Ok((bound, PlaneHandle { done }))
}

/// Loop `index`. `v6[i]`: socket `i` is IPv6's (each packet leaves by the socket of its
/// family).
fn run(index: usize, mut sockets: Vec<BatchSocket>, v6: Vec<bool>, loops: &Loops, shared: &Shared) {
    let mut out = SendBatch::default();
    let mut per_socket: Vec<SendBatch> = sockets.iter().map(|_| SendBatch::default()).collect();
    let mut wait = Duration::ZERO;
    loop {
        // The lock is taken at the first datagram, after the receive system call: the loops'
        // system calls run in parallel, only the plane's work is one at a time.
        // One time for the whole batch: the moment this loop got the plane, so the plane's
        // clock never goes back between loops.
        let mut state = None;
        let mut handle = |d: Received<'_>| {
            let (locked, now) =
                state.get_or_insert_with(|| (loops.state.lock().ok(), Instant::now()));
            if let Some(locked) = locked {
                locked.plane.handle(*now, d, &mut out);
            }
        };
        match receive(&mut sockets, wait, &mut handle) {
            Ok(n) => shared.stats.count_loop_datagrams(index, n as u64),
            Err(e) => {
                warn!(error = %e, "receive failed");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // Poisoned: another loop panicked inside the plane, whose state cannot be trusted.
        let Some(mut state) = state.map_or_else(|| loops.state.lock().ok(), |(s, _)| s) else {
            return;
        };
        let locked = &mut *state;
        let plane = &mut locked.plane;
        let now = Instant::now();
        if locked.shutdown_at.is_none() && shared.shutting_down.load(Relaxed) {
            plane.shut_down(now);
            locked.shutdown_at = Some(now);
        }
        if locked
            .shutdown_at
            .is_some_and(|at| plane.is_empty() || now >= at + SHUTDOWN_LIMIT)
        {
            return;
        }
        // The directory's news waits at most one round (IDLE_WAKE when idle): it is about
        // other relays, not about this round's audio.
        while let Ok(command) = locked.commands.try_recv() {
            match command {
                Command::Peers(rooms) => plane.peers(now, rooms),
                Command::Edges(edges) => plane.set_edges(now, edges),
            }
        }
        plane.handle_timeouts(now);
        plane.flush(now, &mut out);
        shared.publish(plane.occupancy(), plane.take_rooms_changed());
        // This loop saw every deadline the other loops set before it: whichever loop ran last
        // wakes in time for the earliest.
        wait = plane
            .poll_timeout()
            .map_or(IDLE_WAKE, |t| t.saturating_duration_since(now))
            .min(IDLE_WAKE);
        let Ok(sending) = loops.sending.lock() else {
            return;
        };
        drop(state);
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
        drop(sending);
    }
}

/// A batch from every socket that has one; if none has, waits up to `wait` for one. Returns
/// how many datagrams were read.
fn receive(
    sockets: &mut [BatchSocket],
    wait: Duration,
    handle: &mut impl FnMut(Received<'_>),
) -> std::io::Result<usize> {
    let mut n = 0;
    for socket in sockets.iter_mut() {
        n += socket.recv_now(&mut *handle)?;
    }
    if n == 0 && wait_readable(&sockets.iter().collect::<Vec<_>>(), Some(wait))? {
        for socket in sockets.iter_mut() {
            n += socket.recv_now(&mut *handle)?;
        }
    }
    Ok(n)
}
