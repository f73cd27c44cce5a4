//! The relay's I/O shell: quinn endpoints, one task per connection for its control stream and
//! one for its datagrams, all driving the shared [`RelayCore`].
//!
//! Real-time rule: a forwarded datagram is either sent now or dropped. quinn queues unsent
//! datagrams per connection and drops the *oldest* when the queue is full; its default queue
//! is 1 MiB (minutes of voice), so we size it to a few frames instead.

use crate::core::{Close, ConnId, Limits, RelayCore};
use crate::identity::Identity;
use crate::stats::{HandshakeFailure, RelayStats, StatsSnapshot};
use natter_proto::control::{ErrorCode, FrameDecoder, Message};
use natter_proto::invite::Invite;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, Endpoint, EndpointConfig, TransportConfig, VarInt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{Instrument, debug, info, info_span, warn};

/// How the relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Addresses to listen on (UDP). IPv6 sockets are v6-only so `0.0.0.0` and `[::]` can
    /// share a port.
    pub listen: Vec<SocketAddr>,
    pub identity: Identity,
    /// Host name or address put in invite links; defaults to the first listen address, or the
    /// machine's host name when that is a wildcard.
    pub public_host: Option<String>,
    pub limits: Limits,
    /// A connection must open its control stream and say Hello within this time.
    pub hello_timeout: Duration,
    /// A connection silent this long is closed (clients keep alive every second).
    pub idle_timeout: Duration,
    /// Bytes of outgoing datagrams quinn may queue per connection before dropping the oldest.
    pub datagram_send_buffer: usize,
    /// Most simultaneous connections; more are told ServerFull.
    pub max_connections: usize,
    /// Handshakes in progress above which new clients must prove their address with a QUIC
    /// Retry first (0: always). Cheap insurance against spoofed-source Initial floods.
    pub retry_above: usize,
    /// A forwarded datagram that waited this long for its subscriber's connection is dropped:
    /// late audio is worse than lost audio.
    pub stale_after: Duration,
    /// Congestion controller for each connection.
    pub congestion: Congestion,
    /// Endpoints (each with its own thread and single-threaded runtime) per listen address,
    /// sharing the port with SO_REUSEPORT; 1 = run on the caller's runtime.
    pub threads: usize,
}

/// Which congestion controller connections use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Congestion {
    /// BBR: paces by measured bandwidth and RTT and does not treat random loss as congestion,
    /// so voice keeps flowing on a lossy path; it still backs off when queues build (RTT grows).
    Bbr,
    /// quinn's default loss-based CUBIC: at 5 % random loss its window sits at the 2.9 KB floor.
    Cubic,
}

impl RelayConfig {
    /// Defaults for `identity` on the given addresses.
    pub fn new(listen: Vec<SocketAddr>, identity: Identity) -> Self {
        Self {
            listen,
            identity,
            public_host: None,
            limits: Limits::default(),
            hello_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            // About one packet (the largest datagram must fit): a burst to one subscriber
            // goes out together, and anything more waits in the subscriber queue, where the
            // stale limit applies, instead of in quinn, where it cannot.
            datagram_send_buffer: 1536,
            max_connections: 10_000,
            retry_above: 64,
            stale_after: Duration::from_millis(60),
            congestion: Congestion::Bbr,
            threads: 1,
        }
    }
}

/// Why the relay could not start.
#[derive(Debug, Error)]
pub enum RelayError {
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("no address to listen on")]
    NoListenAddress,
}

/// A connection as the core sees it: where to send its datagrams and control messages.
#[derive(Debug, Clone)]
pub struct Peer {
    control: mpsc::UnboundedSender<Outgoing>,
    queue: Arc<SubscriberQueue>,
}

/// Datagrams waiting to go to one subscriber, with when they arrived. A single sender task per
/// subscriber drains it into quinn as the connection's congestion window allows, dropping
/// anything that has become stale — so a congested subscriber gets fresh audio late rather
/// than old audio later, and never slows anyone else down. When nothing is waiting and quinn
/// has room (the usual case), the forwarding task hands the datagram to quinn itself, sparing
/// the sender task a wake-up per datagram.
#[derive(Debug)]
struct SubscriberQueue {
    conn: Connection,
    state: Mutex<QueueState>,
    ready: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct QueueState {
    items: std::collections::VecDeque<(bytes::Bytes, tokio::time::Instant)>,
    /// The sender task holds a datagram it is waiting to hand over: later ones queue behind it
    /// so a sender's packets stay in order.
    sending: bool,
}

/// Upper bound on a subscriber queue's length: beyond it the oldest entry is dropped at once.
const QUEUE_LIMIT: usize = 256;

impl SubscriberQueue {
    fn new(conn: Connection) -> Self {
        Self {
            conn,
            state: Mutex::default(),
            ready: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, datagram: bytes::Bytes, at: tokio::time::Instant, stats: &RelayStats) {
        let mut state = self.lock();
        if state.items.is_empty() && !state.sending {
            // Polled once: quinn takes it now, or the attempt (and its copy) is dropped.
            let mut send = std::pin::pin!(self.conn.send_datagram_wait(datagram.clone()));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if let std::task::Poll::Ready(sent) = send.as_mut().poll(&mut cx) {
                drop(state);
                count_sent(sent, at, stats);
                return;
            }
        }
        if state.items.len() >= QUEUE_LIMIT {
            state.items.pop_front();
            stats.dropped_stale.fetch_add(1, Relaxed);
        }
        state.items.push_back((datagram, at));
        drop(state);
        self.ready.notify_one();
    }

    /// The next datagram for the sender task, which then counts as sending until it asks again.
    fn pop(&self) -> Option<(bytes::Bytes, tokio::time::Instant)> {
        let mut state = self.lock();
        let next = state.items.pop_front();
        state.sending = next.is_some();
        next
    }
}

/// Counts the outcome of handing a datagram that arrived at `arrived` to quinn; false if the
/// connection is gone.
fn count_sent(
    sent: Result<(), quinn::SendDatagramError>,
    arrived: tokio::time::Instant,
    stats: &RelayStats,
) -> bool {
    match sent {
        Ok(()) => {
            stats.datagrams_forwarded.fetch_add(1, Relaxed);
            stats.observe_delay(arrived.elapsed().as_micros() as u64);
            true
        }
        Err(quinn::SendDatagramError::ConnectionLost(_)) => false,
        Err(_) => {
            stats.datagrams_send_failed.fetch_add(1, Relaxed);
            true
        }
    }
}

/// Work for a connection's control-stream writer, kept in order so an Error message goes out
/// before the close.
#[derive(Debug)]
enum Outgoing {
    Message(Message),
    Close(Close),
}

struct Shared {
    core: Mutex<RelayCore<Peer>>,
    stats: RelayStats,
    next_conn: AtomicU64,
    shutting_down: AtomicBool,
    handshaking: AtomicU64,
    config: RelayConfig,
}

impl crate::metrics::Source for Shared {
    fn snapshot(&self) -> (StatsSnapshot, crate::metrics::Occupancy) {
        let core = self.core();
        let occupancy = crate::metrics::Occupancy {
            connections: core.connection_count(),
            rooms: core.room_count(),
            participants: core.participant_count(),
            handshakes: self.handshaking.load(Relaxed) as usize,
        };
        drop(core);
        (self.stats.snapshot(), occupancy)
    }
}

impl Shared {
    fn core(&self) -> std::sync::MutexGuard<'_, RelayCore<Peer>> {
        // A panic elsewhere must not take forwarding down with a poisoned lock.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running relay.
pub struct RelayHandle {
    shared: Arc<Shared>,
    endpoints: Vec<Endpoint>,
    addrs: Vec<SocketAddr>,
}

fn transport_config(config: &RelayConfig) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_idle_timeout(config.idle_timeout.try_into().ok());
    t.datagram_send_buffer_size(config.datagram_send_buffer);
    t.datagram_receive_buffer_size(Some(64 * 1024));
    // Every forwarded datagram is ack-eliciting, and by default a quinn client acknowledges
    // every second packet: most packets a relay received would be ACKs. Ask clients (QUIC
    // ACK_FREQUENCY extension; quinn clients support it) to acknowledge every tenth packet or
    // after 25 ms, whichever comes first: still several ACKs per round trip for loss detection.
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(VarInt::from_u32(9))
        .max_ack_delay(Some(Duration::from_millis(25)));
    t.ack_frequency_config(Some(ack));
    // One control stream per connection; leave a little headroom for future use.
    t.max_concurrent_bidi_streams(VarInt::from_u32(4));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    match config.congestion {
        Congestion::Bbr => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
        }
        Congestion::Cubic => {
            t.congestion_controller_factory(Arc::new(quinn::congestion::CubicConfig::default()));
        }
    }
    t
}

fn server_config(config: &RelayConfig) -> Result<quinn::ServerConfig, RelayError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| RelayError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(
            config.identity.certs.clone(),
            config.identity.key.clone_key(),
        )
        .map_err(|e| RelayError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![natter_proto::ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| RelayError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(transport_config(config)));
    Ok(server)
}

fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if reuse_port {
        // Several endpoints share the port; the kernel hashes each client's 4-tuple to one of
        // them, so a connection always lands on the same thread.
        socket.set_reuse_port(true)?;
    }
    // Ask for deep buffers (the kernel caps them at net.core.rmem_max / wmem_max, see
    // udp_buffer_warning): the default ~208 KiB overflows when a busy relay's receive task is
    // a few milliseconds late, and every overflow is lost audio.
    let _ = socket.set_recv_buffer_size(RECOMMENDED_UDP_BUFFER as usize);
    let _ = socket.set_send_buffer_size(RECOMMENDED_UDP_BUFFER as usize);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// UDP socket buffer sizes below this (bytes) lose bursts on a busy relay.
pub const RECOMMENDED_UDP_BUFFER: u64 = 4 * 1024 * 1024;

/// Reads `net.core.rmem_max` and `wmem_max`; returns a warning with the sysctl to run when
/// either is below [`RECOMMENDED_UDP_BUFFER`].
pub fn udp_buffer_warning() -> Option<String> {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let small: Vec<String> = ["rmem_max", "wmem_max"]
        .iter()
        .filter_map(|n| {
            read(n)
                .filter(|v| *v < RECOMMENDED_UDP_BUFFER)
                .map(|v| format!("net.core.{n}={v}"))
        })
        .collect();
    (!small.is_empty()).then(|| {
        format!(
            "UDP socket buffers are small ({}); under load the kernel will drop audio. Run: \
             sysctl -w net.core.rmem_max={RECOMMENDED_UDP_BUFFER} net.core.wmem_max={RECOMMENDED_UDP_BUFFER} \
             (and persist it in /etc/sysctl.d/)",
            small.join(", ")
        )
    })
}

/// Starts the relay on the current tokio runtime (and, with `threads` > 1, on one extra
/// single-threaded runtime per endpoint).
pub async fn start(config: RelayConfig) -> Result<RelayHandle, RelayError> {
    if config.listen.is_empty() {
        return Err(RelayError::NoListenAddress);
    }
    let server = server_config(&config)?;
    let threads = config.threads.max(1);
    let mut sockets = Vec::new();
    let mut addrs = Vec::new();
    for addr in &config.listen {
        let first = bind(*addr, threads > 1).map_err(|e| RelayError::Bind(*addr, e))?;
        let bound = first.local_addr().map_err(|e| RelayError::Bind(*addr, e))?;
        addrs.push(bound);
        sockets.push(first);
        // The other endpoints bind the port the first one got (matters for port 0).
        for _ in 1..threads {
            sockets.push(bind(bound, true).map_err(|e| RelayError::Bind(bound, e))?);
        }
    }
    let shared = Arc::new(Shared {
        core: Mutex::new(RelayCore::new(
            format!("natter-relay/{}", env!("CARGO_PKG_VERSION")),
            config.limits.clone(),
        )),
        stats: RelayStats::default(),
        next_conn: AtomicU64::new(1),
        shutting_down: AtomicBool::new(false),
        handshaking: AtomicU64::new(0),
        config,
    });
    let mut endpoints = Vec::new();
    for socket in sockets {
        let endpoint = if threads == 1 {
            let endpoint = Endpoint::new(
                EndpointConfig::default(),
                Some(server.clone()),
                socket,
                Arc::new(quinn::TokioRuntime),
            )
            .map_err(|e| RelayError::Bind(addrs[0], e))?;
            tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
            endpoint
        } else {
            spawn_endpoint_thread(socket, server.clone(), shared.clone())?
        };
        endpoints.push(endpoint);
    }
    info!(addrs = ?addrs, threads, "relay listening");
    Ok(RelayHandle {
        shared,
        endpoints,
        addrs,
    })
}

/// One endpoint on its own thread with a current-thread runtime: a quinn endpoint's I/O is a
/// single task, so one per core (sharing the port) scales better than one multi-threaded
/// runtime for small packets.
fn spawn_endpoint_thread(
    socket: std::net::UdpSocket,
    server: quinn::ServerConfig,
    shared: Arc<Shared>,
) -> Result<Endpoint, RelayError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let addr = socket
        .local_addr()
        .map_err(|e| RelayError::Bind("0.0.0.0:0".parse().expect("literal"), e))?;
    std::thread::Builder::new()
        .name("natter-relay-io".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            runtime.block_on(async move {
                match Endpoint::new(
                    EndpointConfig::default(),
                    Some(server),
                    socket,
                    Arc::new(quinn::TokioRuntime),
                ) {
                    Ok(endpoint) => {
                        let _ = tx.send(Ok(endpoint.clone()));
                        accept_loop(endpoint.clone(), shared).await;
                        endpoint.wait_idle().await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            });
        })
        .map_err(|e| RelayError::Bind(addr, e))?;
    rx.recv()
        .map_err(|_| RelayError::Bind(addr, std::io::Error::other("endpoint thread died")))?
        .map_err(|e| RelayError::Bind(addr, e))
}

impl RelayHandle {
    /// The bound addresses (real ports even when asked for port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The invite link for this relay: pinned fingerprint for self-signed certificates.
    pub fn invite(&self) -> Invite {
        let config = &self.shared.config;
        let addr = self.addrs[0];
        let host = config.public_host.clone().unwrap_or_else(|| {
            if addr.ip().is_unspecified() {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .map(|h| h.trim().to_string())
                    .ok()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(|| "localhost".into())
            } else {
                addr.ip().to_string()
            }
        });
        let fp = config
            .identity
            .self_signed
            .then_some(config.identity.fingerprint);
        Invite::new(host, addr.port(), fp)
    }

    pub fn fingerprint(&self) -> [u8; 32] {
        self.shared.config.identity.fingerprint
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Serves Prometheus metrics and `/healthz` on `addr`; returns the bound address.
    pub async fn serve_metrics(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        crate::metrics::serve(addr, self.shared.clone()).await
    }

    /// (connections, rooms, participants) right now.
    pub fn occupancy(&self) -> (usize, usize, usize) {
        let core = self.shared.core();
        (
            core.connection_count(),
            core.room_count(),
            core.participant_count(),
        )
    }

    /// Tells every client the relay is going away (Error ShuttingDown, then a close with that
    /// code), stops accepting, and waits up to `grace` for the goodbyes to be delivered.
    pub async fn shutdown(self, grace: Duration) {
        self.shared.shutting_down.store(true, Relaxed);
        let peers: Vec<Peer> = self.shared.core().handles().cloned().collect();
        info!(clients = peers.len(), "shutting down");
        for peer in &peers {
            let _ = peer.control.send(Outgoing::Close(Close::Error(
                ErrorCode::ShuttingDown,
                "the relay is shutting down".into(),
            )));
        }
        // Let the writers flush the Error messages before the endpoint-wide close.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for endpoint in &self.endpoints {
            endpoint.close(
                VarInt::from(ErrorCode::ShuttingDown.to_u16()),
                b"the relay is shutting down",
            );
        }
        let idle = futures_all(self.endpoints.iter().map(|e| e.wait_idle()));
        let _ = tokio::time::timeout(grace, idle).await;
    }
}

async fn futures_all<F: std::future::Future<Output = ()>>(futs: impl Iterator<Item = F>) {
    for f in futs {
        f.await;
    }
}

async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        if shared.shutting_down.load(Relaxed) {
            shared
                .stats
                .count_handshake_failure(HandshakeFailure::Refused);
            incoming.refuse();
            continue;
        }
        // Under a handshake flood, make unvalidated clients prove their address first.
        let busy = shared.handshaking.load(Relaxed) >= shared.config.retry_above as u64;
        if busy && !incoming.remote_address_validated() {
            shared.stats.retries.fetch_add(1, Relaxed);
            let _ = incoming.retry();
            continue;
        }
        // Counted here, not in the connection's task: a burst of Initials is accepted faster
        // than the tasks start, and each must see the ones before it.
        shared.handshaking.fetch_add(1, Relaxed);
        let id = shared.next_conn.fetch_add(1, Relaxed);
        let span = info_span!("conn", id, remote = %incoming.remote_address());
        tokio::spawn(run_connection(incoming, id, shared.clone()).instrument(span));
    }
}

fn unix_ms() -> u64 {
    unix_micros() / 1000
}

/// Wall clock in microseconds since the Unix epoch: read here, in the shell, and passed to the
/// core as its time.
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn run_connection(incoming: quinn::Incoming, id: ConnId, shared: Arc<Shared>) {
    let connecting = incoming.await;
    shared.handshaking.fetch_sub(1, Relaxed);
    let conn = match connecting {
        Ok(conn) => conn,
        Err(e) => {
            shared
                .stats
                .count_handshake_failure(HandshakeFailure::of(&e));
            debug!(error = %e, "handshake failed");
            return;
        }
    };
    shared.stats.connections_accepted.fetch_add(1, Relaxed);
    if shared.core().connection_count() >= shared.config.max_connections {
        close_with(
            &conn,
            ErrorCode::ServerFull,
            "the relay has no room for more connections",
        );
        return;
    }
    // Media only travels as datagrams (RFC 9221): a client that did not enable them could
    // join but would never hear or be heard, so it is told at once instead.
    if conn.max_datagram_size().is_none() {
        close_violation(
            &conn,
            &shared,
            ErrorCode::ProtocolViolation,
            "QUIC datagrams (RFC 9221) are required; the client did not enable them",
        );
        return;
    }
    debug!("connected");
    let deadline = tokio::time::Instant::now() + shared.config.hello_timeout;
    let (send, recv) = match tokio::time::timeout_at(deadline, conn.accept_bi()).await {
        Ok(Ok(streams)) => streams,
        Ok(Err(e)) => {
            debug!(error = %e, "closed before opening a control stream");
            return;
        }
        Err(_) => {
            close_violation(
                &conn,
                &shared,
                ErrorCode::HelloRequired,
                "no control stream within the hello timeout",
            );
            return;
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let peer = Peer {
        control: tx,
        queue: Arc::new(SubscriberQueue::new(conn.clone())),
    };
    shared.core().connect(id, peer.clone(), unix_ms());
    let writer = tokio::spawn(write_control(send, rx, conn.clone()));
    let datagrams = tokio::spawn(forward_datagrams(conn.clone(), id, shared.clone()));
    let sender = tokio::spawn(send_datagrams(peer.queue.clone(), shared.clone()));

    read_control(recv, id, &peer, &shared, deadline).await;

    datagrams.abort();
    sender.abort();
    let notices = shared.core().disconnect(id);
    dispatch(notices);
    // Let the writer send what is queued (e.g. an Error) before the connection goes.
    drop(peer);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    conn.close(VarInt::from_u32(0), b"");
    debug!(reason = ?conn.close_reason(), "disconnected");
}

fn close_with(conn: &Connection, code: ErrorCode, reason: &str) {
    conn.close(VarInt::from(code.to_u16()), reason.as_bytes());
}

/// Closes a connection that broke the protocol before it had a control stream to be told on
/// (the close carries code and reason), and counts it.
fn close_violation(conn: &Connection, shared: &Shared, code: ErrorCode, reason: &str) {
    shared.stats.control_errors.fetch_add(1, Relaxed);
    close_with(conn, code, reason);
}

fn dispatch(sends: Vec<(Peer, Message)>) {
    for (peer, msg) in sends {
        let _ = peer.control.send(Outgoing::Message(msg));
    }
}

/// Reads control messages until the stream or connection ends or the core closes it.
async fn read_control(
    mut recv: quinn::RecvStream,
    id: ConnId,
    peer: &Peer,
    shared: &Shared,
    hello_deadline: tokio::time::Instant,
) {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 4096];
    let mut said_hello = false;
    loop {
        let read = if said_hello {
            recv.read(&mut buf).await
        } else {
            match tokio::time::timeout_at(hello_deadline, recv.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => {
                    shared.stats.control_errors.fetch_add(1, Relaxed);
                    let close = Close::Error(
                        ErrorCode::HelloRequired,
                        "no Hello within the hello timeout".into(),
                    );
                    let _ = peer.control.send(Outgoing::Close(close));
                    return;
                }
            }
        };
        let n = match read {
            Ok(Some(n)) => n,
            Ok(None) | Err(_) => {
                // The client finished or reset its side: that ends the session like Leave.
                // (If the connection itself is gone, the close below is a no-op.)
                let _ = peer.control.send(Outgoing::Close(Close::Left));
                return;
            }
        };
        decoder.push(&buf[..n]);
        while let Some(next) = decoder.next_message() {
            let msg = match next {
                Ok(msg) => msg,
                Err(e) => {
                    shared.stats.control_errors.fetch_add(1, Relaxed);
                    warn!(error = %e, "malformed control message");
                    let close = Close::Error(
                        ErrorCode::ProtocolViolation,
                        format!("malformed control message: {e}"),
                    );
                    let _ = peer.control.send(Outgoing::Close(close));
                    return;
                }
            };
            said_hello |= matches!(msg, Message::Hello { .. });
            if let Message::Join { room, name, .. } = &msg {
                info!(room = %room, name = %name, "join");
            }
            let outcome = shared.core().on_message(id, msg, unix_ms());
            dispatch(outcome.sends);
            if let Some(close) = outcome.close {
                if let Close::Error(code, reason) = &close {
                    shared.stats.control_errors.fetch_add(1, Relaxed);
                    info!(code = ?code, reason = %reason, "closing connection");
                }
                let _ = peer.control.send(Outgoing::Close(close));
                return;
            }
        }
    }
}

/// Writes queued control messages to the stream; carries out closes in order.
async fn write_control(
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    conn: Connection,
) {
    let mut frame = Vec::new();
    while let Some(out) = rx.recv().await {
        match out {
            Outgoing::Message(msg) => {
                frame.clear();
                msg.encode(&mut frame);
                if send.write_all(&frame).await.is_err() {
                    return;
                }
            }
            Outgoing::Close(close) => {
                let (code, reason) = match close {
                    Close::Left => (0, "left".to_string()),
                    Close::Error(code, reason) => {
                        frame.clear();
                        Message::Error {
                            code,
                            message: reason.clone(),
                        }
                        .encode(&mut frame);
                        let _ = send.write_all(&frame).await;
                        (code.to_u16(), reason)
                    }
                };
                let _ = send.finish();
                // Give the Error frame and the stream's end a moment to leave before
                // CONNECTION_CLOSE (which discards unsent stream data); the close carries the
                // same code and reason in case they do not make it.
                tokio::time::sleep(Duration::from_millis(20)).await;
                conn.close(VarInt::from(code), reason.as_bytes());
                return;
            }
        }
    }
}

/// Forwards this connection's media datagrams to the rest of its room.
async fn forward_datagrams(conn: Connection, id: ConnId, shared: Arc<Shared>) {
    let mut targets: Vec<Arc<SubscriberQueue>> = Vec::with_capacity(16);
    while let Ok(datagram) = conn.read_datagram().await {
        let arrived = tokio::time::Instant::now();
        shared.stats.datagrams_in.fetch_add(1, Relaxed);
        targets.clear();
        match shared.core().route(id, &datagram, unix_ms()) {
            Ok(peers) => targets.extend(peers.map(|p| p.queue.clone())),
            Err(reason) => {
                shared.stats.count_drop(reason);
                continue;
            }
        }
        for target in &targets {
            target.push(datagram.clone(), arrived, &shared.stats);
        }
    }
}

/// Drains one subscriber's queue into its connection, waiting for congestion-window space and
/// dropping what has gone stale meanwhile.
async fn send_datagrams(queue: Arc<SubscriberQueue>, shared: Arc<Shared>) {
    let stale_after = shared.config.stale_after;
    loop {
        let Some((datagram, arrived)) = queue.pop() else {
            queue.ready.notified().await;
            continue;
        };
        // The limit holds until quinn takes the datagram: waiting for window space past it
        // drops the datagram (dropping the future takes it back), and quinn's own buffer holds
        // only about a packet, sent at the next opportunity.
        let stale_at = arrived + stale_after;
        if tokio::time::Instant::now() >= stale_at {
            shared.stats.dropped_stale.fetch_add(1, Relaxed);
            continue;
        }
        let send = queue.conn.send_datagram_wait(datagram);
        match tokio::time::timeout_at(stale_at, send).await {
            Ok(sent) => {
                if !count_sent(sent, arrived, &shared.stats) {
                    return;
                }
            }
            Err(_) => {
                shared.stats.dropped_stale.fetch_add(1, Relaxed);
            }
        }
    }
}
