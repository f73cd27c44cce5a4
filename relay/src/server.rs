//! The relay's I/O shell: quinn endpoints, one task per connection for its control stream and
//! one for its datagrams, all driving the shared [`RelayCore`].
//!
//! Real-time rule: a forwarded datagram is either sent now or dropped. quinn queues unsent
//! datagrams per connection and drops the *oldest* when the queue is full; its default queue
//! is 1 MiB (minutes of voice), so we size it to a few frames instead.

use crate::admission::{Admissions, Handshake, HandshakeLimits};
use crate::bucket::TokenBucket;
use crate::cluster::DirectoryConfig;
use crate::cluster::directory::{Health, RelayRecord};
use crate::cluster::store::{DirectoryHandle, EdgesFeed, Feeds, PeersFeed, Store, StoreError};
use crate::cluster::trunk::{Mesh, TRUNK_ALPN, TrunkConfig};
use crate::control_queue::{CONTROL_QUEUE_LIMIT, ControlQueue, QueueFull};
use crate::control_stage::{Deadline, Stage, welcomed};
use crate::core::{Close, ConnId, Limits, RelayCore};
use crate::fresh_queue::{FreshQueue, Ready, SUBSCRIBER_QUEUE_LIMIT};
use crate::identity::Identity;
use crate::reset_key::ResetKey;
use crate::stats::{HandshakeFailure, RelayStats, StatsSnapshot};
use natter_proto::control::{ClusterEdge, ErrorCode, FrameDecoder, Message};
use natter_proto::invite::Invite;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Connection, Endpoint, TransportConfig, VarInt};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tracing::{Instrument, debug, info, info_span, warn};

/// How the relay runs.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Addresses to listen on (UDP). IPv6 sockets are v6-only so `0.0.0.0` and `[::]` can
    /// share a port.
    pub listen: Vec<SocketAddr>,
    pub identity: Identity,
    /// Key of the QUIC stateless-reset tokens. The binary keeps it in its data directory so a
    /// restarted relay resets the connections of its previous life at once; the default is a
    /// fresh one per start.
    pub reset_key: ResetKey,
    /// Host name or address put in invite links; defaults to the first listen address, or the
    /// machine's host name when that is a wildcard.
    pub public_host: Option<String>,
    pub limits: Limits,
    /// A connection must open its control stream and say Hello within this time.
    pub hello_timeout: Duration,
    /// …and Join within this time of its Hello.
    pub join_timeout: Duration,
    /// Control messages handled per second per connection, and the burst allowed (clients
    /// send a Ping every 2 s and a SetMute per click); faster senders are made to wait.
    pub control_rate: f64,
    pub control_burst: f64,
    /// A connection silent this long is closed (clients keep alive every second).
    pub idle_timeout: Duration,
    /// Bytes of outgoing datagrams quinn may queue per connection before dropping the oldest.
    pub datagram_send_buffer: usize,
    /// Most simultaneous connections, handshakes in progress included; more are refused.
    pub max_connections: usize,
    /// Most simultaneous connections (handshakes included) from one IPv4 address or IPv6
    /// /64; 0 = no limit.
    pub max_per_address: usize,
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
    /// The cluster directory to keep this relay in (`None`: a lone relay).
    pub directory: Option<DirectoryConfig>,
    /// Trunks to the other relays of the cluster (needs the directory to find them).
    pub trunks: Option<TrunkConfig>,
    /// Which data plane drives QUIC.
    pub data_plane: DataPlane,
}

/// Which data plane drives the relay's QUIC connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DataPlane {
    /// quinn: a tokio task per connection for its datagrams and control stream, one system
    /// call per packet sent; several endpoints with `threads`. Kept for comparison and as a
    /// fallback while the batched plane is new.
    Quinn,
    /// One thread driving quinn-proto for all connections, batched UDP I/O (recvmmsg in, one
    /// sendmmsg per round out; `crate::plane`): a quarter to a third less CPU per forwarded
    /// datagram (docs/BENCHMARKS.md). One loop: `threads` above 1 is ignored, with a warning.
    #[default]
    Batched,
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
    /// The limits a new handshake is judged by.
    pub(crate) fn handshake_limits(&self) -> HandshakeLimits {
        HandshakeLimits {
            max_connections: self.max_connections,
            max_per_address: self.max_per_address,
            retry_above: self.retry_above,
        }
    }

    /// Defaults for `identity` on the given addresses.
    pub fn new(listen: Vec<SocketAddr>, identity: Identity) -> Self {
        Self {
            listen,
            identity,
            reset_key: ResetKey::generate(),
            public_host: None,
            limits: Limits::default(),
            hello_timeout: Duration::from_secs(10),
            join_timeout: Duration::from_secs(10),
            control_rate: 10.0,
            control_burst: 40.0,
            idle_timeout: Duration::from_secs(30),
            // About one packet (the largest datagram must fit): a burst to one subscriber
            // goes out together, and anything more waits in the subscriber queue, where the
            // stale limit applies, instead of in quinn, where it cannot.
            datagram_send_buffer: 1536,
            max_connections: 10_000,
            // A full room's worth behind one NAT (an office, a campus); loopback clients count
            // too, so a load test from one machine raises it.
            max_per_address: 64,
            retry_above: 64,
            stale_after: Duration::from_millis(60),
            congestion: Congestion::Bbr,
            threads: 1,
            directory: None,
            trunks: None,
            data_plane: DataPlane::Batched,
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
    #[error(transparent)]
    Directory(#[from] StoreError),
    #[error("the batched data plane does not support {0} yet")]
    Unsupported(&'static str),
}

/// A connection as the core sees it: where to send its datagrams and control messages.
#[derive(Debug, Clone)]
pub struct Peer {
    control: Arc<Outbox>,
    queue: Arc<SubscriberQueue>,
}

impl Peer {
    /// A handle on `conn`: control messages and datagrams (dropped once `stale_after` old)
    /// both go to it.
    pub(crate) fn new(conn: Connection, stale_after: Duration) -> Self {
        Self {
            control: Arc::new(Outbox::new(conn.clone())),
            queue: Arc::new(SubscriberQueue::new(conn, stale_after)),
        }
    }

    /// The same datagram queue with its own control outbox (a trunk's room subscription:
    /// one stream per room, one datagram queue per trunk).
    pub(crate) fn with_control(&self, conn: Connection) -> Self {
        Self {
            control: Arc::new(Outbox::new(conn)),
            queue: self.queue.clone(),
        }
    }

    pub(crate) fn queue(&self) -> Arc<SubscriberQueue> {
        self.queue.clone()
    }

    pub(crate) fn send(&self, msg: Message, stats: &RelayStats) {
        self.control.send(msg, stats);
    }

    pub(crate) fn forward(
        &self,
        datagram: bytes::Bytes,
        at: tokio::time::Instant,
        stats: &RelayStats,
    ) {
        self.queue.push(datagram, at, stats);
    }
}

/// Writes `peer`'s control messages to `send` until its outbox closes.
pub(crate) async fn write_to(send: quinn::SendStream, peer: Peer) {
    let conn = peer.control.conn.clone();
    write_control(send, peer.control, conn).await;
}

/// Bytes of unacknowledged control-stream data quinn may hold per connection (quinn's default
/// is 10 MB). The largest message the relay sends is a Welcome with a full room's roster,
/// about 6 KB for 64 members.
const CONTROL_SEND_WINDOW: u64 = 64 * 1024;

/// Receive windows. The control stream carries a few small messages a second (the largest a
/// client sends is a Join of about 1.2 KB); media travels as datagrams, which flow control
/// does not cover. quinn's defaults (1.25 MB per stream, more per connection) would let every
/// connection park megabytes in the relay.
const STREAM_RECEIVE_WINDOW: u32 = 16 * 1024;
const CONNECTION_RECEIVE_WINDOW: u32 = 32 * 1024;

/// A connection's control messages waiting for its writer: bounded, with mute notices about
/// the same participant coalesced (the latest state replaces a pending one), in order
/// otherwise. Closing goes through it too, so an Error message goes out after what was queued
/// before it and nothing is queued after it.
#[derive(Debug)]
struct Outbox {
    conn: Connection,
    state: Mutex<OutboxState>,
    ready: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct OutboxState {
    messages: ControlQueue,
    close: Option<Close>,
}

/// What the writer does next.
#[derive(Debug)]
enum Outgoing {
    Message(Message),
    Close(Close),
}

impl Outbox {
    fn new(conn: Connection) -> Self {
        Self {
            conn,
            state: Mutex::default(),
            ready: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `msg`; if the queue is full, closes the connection instead (SlowReader).
    fn send(&self, msg: Message, stats: &RelayStats) {
        let mut state = self.lock();
        if state.close.is_some() {
            return;
        }
        if state.messages.push(msg) == Err(QueueFull) {
            state.messages.clear();
            let reason = format!(
                "{CONTROL_QUEUE_LIMIT} control messages waiting: the client is not reading them"
            );
            // The writer is stuck behind flow control the peer will not open, so the close
            // cannot wait for it: close now (quinn discards what the stream still holds).
            self.conn.close(
                VarInt::from(ErrorCode::SlowReader.to_u16()),
                reason.as_bytes(),
            );
            state.close = Some(Close::Error(ErrorCode::SlowReader, reason));
            drop(state);
            stats.slow_readers.fetch_add(1, Relaxed);
            self.ready.notify_one();
            return;
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Asks the writer to close the connection once what is queued has gone (the first
    /// close asked for wins).
    fn close(&self, close: Close) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(close);
        }
        drop(state);
        self.ready.notify_one();
    }

    /// The writer's next job: queued messages first, then the close.
    async fn next(&self) -> Outgoing {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.lock();
                if let Some(msg) = state.messages.pop() {
                    return Outgoing::Message(msg);
                }
                // Left in place: whatever is sent from now on is dropped.
                if let Some(close) = &state.close {
                    return Outgoing::Close(close.clone());
                }
            }
            notified.await;
        }
    }
}

/// Datagrams waiting to go to one subscriber, under the stale/queue rule of [`FreshQueue`]. A
/// single sender task per subscriber drains it into quinn as the connection's congestion window
/// allows, dropping anything that has become stale — so a congested subscriber gets fresh audio
/// late rather than old audio later, and never slows anyone else down. When the queue is idle
/// and quinn has room (the usual case), the forwarding task hands the datagram to quinn itself,
/// sparing the sender task a wake-up per datagram.
#[derive(Debug)]
pub(crate) struct SubscriberQueue {
    conn: Connection,
    state: Mutex<FreshQueue<bytes::Bytes, tokio::time::Instant>>,
    ready: tokio::sync::Notify,
}

impl SubscriberQueue {
    fn new(conn: Connection, stale_after: Duration) -> Self {
        Self {
            conn,
            state: Mutex::new(FreshQueue::new(stale_after, SUBSCRIBER_QUEUE_LIMIT)),
            ready: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FreshQueue<bytes::Bytes, tokio::time::Instant>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, datagram: bytes::Bytes, at: tokio::time::Instant, stats: &RelayStats) {
        let mut state = self.lock();
        if state.idle() {
            // Polled once: quinn takes it now, or the attempt (and its copy) is dropped.
            let mut send = std::pin::pin!(self.conn.send_datagram_wait(datagram.clone()));
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            if let std::task::Poll::Ready(sent) = send.as_mut().poll(&mut cx) {
                drop(state);
                count_sent(sent, at, stats);
                return;
            }
        }
        if state.push(datagram, at).is_some() {
            stats.dropped_stale.fetch_add(1, Relaxed);
        }
        drop(state);
        self.ready.notify_one();
    }

    /// The next fresh datagram for the sender task, which then counts as sending until it asks
    /// again; stale ones on the way are counted.
    fn pop(&self, stats: &RelayStats) -> Option<Ready<bytes::Bytes, tokio::time::Instant>> {
        let next = self.lock().next(tokio::time::Instant::now());
        stats.dropped_stale.fetch_add(next.stale as u64, Relaxed);
        next.ready
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

pub(crate) struct Shared {
    core: Mutex<RelayCore<Peer>>,
    pub(crate) stats: Arc<RelayStats>,
    /// The batched plane's occupancy, as its loop last published it (`None`: the quinn plane,
    /// whose core is the one above).
    published: Mutex<Option<crate::plane::Occupancy>>,
    /// The batched plane's rooms with members, as its loop last published them (for the
    /// directory).
    published_rooms: Mutex<BTreeSet<String>>,
    next_conn: AtomicU64,
    pub(crate) shutting_down: AtomicBool,
    handshaking: AtomicU64,
    admissions: Mutex<Admissions>,
    pub(crate) config: RelayConfig,
    /// Poked when a room gains its first or loses its last member, for the directory.
    rooms_changed: Arc<tokio::sync::Notify>,
    /// Trunks to other relays (`None`: no cluster secret, no mesh).
    mesh: Option<Mesh>,
    /// The relay's endpoints, which also dial trunks.
    endpoints: std::sync::OnceLock<Vec<Endpoint>>,
    /// The cluster's live edges as the directory last listed them (empty: a lone relay), told
    /// to each client after its Welcome and again to everyone when the list changes.
    edges: Mutex<Vec<ClusterEdge>>,
}

impl crate::metrics::Source for Shared {
    fn snapshot(&self) -> (StatsSnapshot, crate::metrics::Occupancy) {
        if let Some(o) = *self.published.lock().unwrap_or_else(|p| p.into_inner()) {
            let occupancy = crate::metrics::Occupancy {
                connections: o.connections,
                rooms: o.rooms,
                participants: o.participants,
                handshakes: o.handshakes,
            };
            return (self.stats.snapshot(), occupancy);
        }
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
    /// The batched plane's loop publishes its occupancy (once a round), and its rooms when a
    /// room gained its first or lost its last member (the directory is poked then).
    pub(crate) fn publish(
        &self,
        occupancy: crate::plane::Occupancy,
        rooms: Option<BTreeSet<String>>,
    ) {
        *self.published.lock().unwrap_or_else(|p| p.into_inner()) = Some(occupancy);
        if let Some(rooms) = rooms {
            *self
                .published_rooms
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = rooms;
            self.rooms_changed.notify_one();
        }
    }

    /// The rooms with members and the participant count, from whichever plane runs.
    fn rooms_and_load(&self) -> (BTreeSet<String>, u32) {
        if let Some(o) = *self.published.lock().unwrap_or_else(|p| p.into_inner()) {
            let rooms = self
                .published_rooms
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            return (rooms, o.participants as u32);
        }
        let core = self.core();
        let rooms = core.room_names().map(str::to_string).collect();
        (rooms, core.participant_count() as u32)
    }

    pub(crate) fn mesh(&self) -> Option<&Mesh> {
        self.mesh.as_ref()
    }

    /// A fresh id for the core (connections, trunks, trunk subscriptions).
    pub(crate) fn new_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Relaxed)
    }

    /// An endpoint that can reach `addr` (same address family).
    pub(crate) fn endpoint_for(&self, addr: SocketAddr) -> Option<Endpoint> {
        self.endpoints
            .get()?
            .iter()
            .find(|e| e.local_addr().is_ok_and(|l| l.is_ipv6() == addr.is_ipv6()))
            .cloned()
    }

    pub(crate) fn core(&self) -> std::sync::MutexGuard<'_, RelayCore<Peer>> {
        // A panic elsewhere must not take forwarding down with a poisoned lock.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cluster's edges, for a client that just joined (`None`: a lone relay).
    fn edges_message(&self) -> Option<Message> {
        let edges = self.edges.lock().unwrap_or_else(|p| p.into_inner());
        (!edges.is_empty()).then(|| Message::Edges {
            edges: edges.clone(),
        })
    }

    /// The directory listed the cluster's live relays: when that changes the list, everyone
    /// connected hears the new one.
    fn set_edges(&self, edges: Vec<ClusterEdge>) {
        {
            let mut current = self.edges.lock().unwrap_or_else(|p| p.into_inner());
            if *current == edges {
                return;
            }
            info!(edges = edges.len(), "the cluster's edges changed");
            *current = edges;
        }
        let core = self.core();
        if let Some(message) = self.edges_message() {
            for peer in core.handles() {
                peer.control.send(message.clone(), &self.stats);
            }
        }
    }

    fn admissions(&self) -> std::sync::MutexGuard<'_, Admissions> {
        self.admissions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// This relay's id in its cluster: the configured one, or the first 16 hex digits of its
/// certificate's fingerprint (unique, and stable across restarts).
fn relay_id(config: &RelayConfig) -> String {
    config
        .directory
        .as_ref()
        .and_then(|d| d.id.clone())
        .unwrap_or_else(|| {
            natter_proto::invite::fingerprint_hex(&config.identity.fingerprint)[..16].to_string()
        })
}

/// A running relay.
pub struct RelayHandle {
    shared: Arc<Shared>,
    endpoints: Vec<Endpoint>,
    addrs: Vec<SocketAddr>,
    directory: Option<DirectoryHandle>,
    /// The batched data plane's thread (`None`: quinn's endpoints above).
    plane: Option<crate::plane::PlaneHandle>,
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
    // One control stream per connection and nothing else: a stream the relay allowed but never
    // read would sit in its receive buffer for the connection's lifetime.
    t.max_concurrent_bidi_streams(VarInt::from_u32(1));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    t.receive_window(VarInt::from_u32(CONNECTION_RECEIVE_WINDOW));
    t.send_window(CONTROL_SEND_WINDOW);
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

/// The QUIC server configuration the relay's endpoints use (TLS 1.3 with the relay's
/// certificate, the ALPN, and the transport limits above); public for the in-memory QUIC
/// benchmark, which drives quinn-proto with exactly this.
pub fn server_config(config: &RelayConfig) -> Result<quinn::ServerConfig, RelayError> {
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
    if config.trunks.is_some() {
        tls.alpn_protocols.push(TRUNK_ALPN.to_vec());
    }
    let quic = QuicServerConfig::try_from(tls).map_err(|e| RelayError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(transport_config(config)));
    Ok(server)
}

pub(crate) fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if reuse_port {
        // Several endpoints share the port; the kernel hashes each client's 4-tuple to one of
        // them, so a connection always lands on the same thread.
        #[cfg(unix)]
        socket.set_reuse_port(true)?;
        // Windows has no SO_REUSEPORT (its SO_REUSEADDR lets a second socket steal the port):
        // one endpoint per address there.
        #[cfg(not(unix))]
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "--threads above 1 needs SO_REUSEPORT, which this system lacks",
        ));
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
    if config.data_plane == DataPlane::Batched {
        return start_batched(config, server).await;
    }
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
    let mut core = new_core(&config);
    let mesh = config.trunks.clone().map(|trunks| {
        core.set_node(trunks.node);
        Mesh::new(trunks, relay_id(&config))
    });
    let shared = Shared::new(core, config, mesh);
    let mut endpoints = Vec::new();
    for socket in sockets {
        let endpoint = if threads == 1 {
            let endpoint = Endpoint::new(
                shared.config.reset_key.endpoint_config(),
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
    let _ = shared.endpoints.set(endpoints.clone());
    info!(addrs = ?addrs, threads, "relay listening");
    let mut relay = RelayHandle {
        shared,
        endpoints,
        addrs,
        directory: None,
        plane: None,
    };
    if let Some(config) = relay.shared.config.directory.clone() {
        relay.directory = Some(relay.join_directory(&config, None)?);
    }
    Ok(relay)
}

/// The directory's view of our rooms' other relays, each with the address its record names
/// resolved (records that do not resolve are left out: the next heartbeat tries again).
async fn resolve(
    rooms: BTreeMap<String, Vec<RelayRecord>>,
) -> BTreeMap<String, Vec<(RelayRecord, SocketAddr)>> {
    let mut resolved = BTreeMap::new();
    for (room, records) in rooms {
        let mut relays = Vec::new();
        for record in records {
            let first = tokio::net::lookup_host(record.addr.as_str())
                .await
                .map(|mut addrs| addrs.next());
            match first {
                Ok(Some(addr)) => relays.push((record, addr)),
                Ok(None) => {}
                Err(e) => warn!(peer = %record.id, error = %e, "cannot resolve a relay"),
            }
        }
        resolved.insert(room, relays);
    }
    resolved
}

/// A relay core for `config`, its handles of type `H` (each data plane has its own).
fn new_core<H: Clone>(config: &RelayConfig) -> RelayCore<H> {
    RelayCore::new(
        format!("natter-relay/{}", env!("CARGO_PKG_VERSION")),
        config.limits.clone(),
    )
    .with_ssrc_salt(random_u32())
}

/// Starts the batched data plane (`crate::plane`) on its own thread, and the directory task
/// that tells it about the cluster.
async fn start_batched(
    config: RelayConfig,
    server: quinn::ServerConfig,
) -> Result<RelayHandle, RelayError> {
    if config.threads > 1 {
        // Configs written for the quinn plane keep starting: one batched loop carries more
        // than the quinn plane's endpoints did on their threads (docs/BENCHMARKS.md).
        warn!(
            threads = config.threads,
            "the batched data plane runs one loop: threads ignored (data-plane = \"quinn\" runs \
             one endpoint per thread)"
        );
    }
    let mut core = new_core(&config);
    let mesh = config.trunks.as_ref().map(|trunks| {
        core.set_node(trunks.node);
        crate::plane::MeshSettings {
            secret: trunks.secret.clone(),
            id: relay_id(&config),
        }
    });
    let listen = config.listen.clone();
    let shared = Shared::new(RelayCore::new("", Limits::default()), config, None);
    let (commands, inbox) = std::sync::mpsc::channel();
    let (addrs, plane) = crate::plane::spawn(&listen, server, core, mesh, inbox, shared.clone())?;
    info!(addrs = ?addrs, "relay listening (batched data plane)");
    let mut relay = RelayHandle {
        shared,
        endpoints: Vec::new(),
        addrs,
        directory: None,
        plane: Some(plane),
    };
    if let Some(config) = relay.shared.config.directory.clone() {
        relay.directory = Some(relay.join_directory(&config, Some(commands))?);
    }
    Ok(relay)
}

impl Shared {
    fn new(core: RelayCore<Peer>, config: RelayConfig, mesh: Option<Mesh>) -> Arc<Self> {
        Arc::new(Shared {
            core: Mutex::new(core),
            stats: Arc::default(),
            published: Mutex::default(),
            published_rooms: Mutex::default(),
            next_conn: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            handshaking: AtomicU64::new(0),
            admissions: Mutex::default(),
            config,
            rooms_changed: Arc::default(),
            mesh,
            endpoints: std::sync::OnceLock::new(),
            edges: Mutex::default(),
        })
    }
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
                    shared.config.reset_key.endpoint_config(),
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

    /// Starts the directory task: this relay's record (the invite's address and
    /// fingerprint), and its rooms and load read from the core (or as the batched plane
    /// published them) whenever the task writes. What it reads back goes to the mesh and the
    /// clients, through `plane` when the batched plane runs them.
    fn join_directory(
        &self,
        config: &DirectoryConfig,
        plane: Option<std::sync::mpsc::Sender<crate::plane::Command>>,
    ) -> Result<DirectoryHandle, RelayError> {
        let invite = self.invite();
        let fingerprint = natter_proto::invite::fingerprint_hex(&self.fingerprint());
        let record = RelayRecord {
            id: relay_id(&self.shared.config),
            addr: invite.authority(),
            fingerprint,
            region: config.region.clone(),
            load: 0,
        };
        let shared = self.shared.clone();
        let local = Box::new(move || shared.rooms_and_load());
        // With trunks, what the directory says about our rooms' other relays goes to the mesh;
        // the cluster's live relays go to our clients.
        let (peers, edges): (Option<PeersFeed>, EdgesFeed) = match plane {
            Some(plane) => {
                let to_plane = plane.clone();
                let peers = self.shared.config.trunks.is_some().then(|| {
                    Box::new(move |rooms| {
                        // The loop never waits on DNS: the addresses are resolved here first.
                        let plane = to_plane.clone();
                        tokio::spawn(async move {
                            let rooms = resolve(rooms).await;
                            let _ = plane.send(crate::plane::Command::Peers(rooms));
                        });
                    }) as PeersFeed
                });
                let edges = Box::new(move |relays: Vec<RelayRecord>| {
                    let edges = crate::cluster::directory::cluster_edges(&relays);
                    let _ = plane.send(crate::plane::Command::Edges(edges));
                }) as EdgesFeed;
                (peers, edges)
            }
            None => {
                let peers = self.shared.mesh.is_some().then(|| {
                    let shared = self.shared.clone();
                    Box::new(move |rooms| {
                        if let Some(mesh) = shared.mesh() {
                            mesh.update(&shared, rooms);
                        }
                    }) as PeersFeed
                });
                let shared = self.shared.clone();
                let edges = Box::new(move |relays: Vec<RelayRecord>| {
                    shared.set_edges(crate::cluster::directory::cluster_edges(&relays));
                }) as EdgesFeed;
                (peers, edges)
            }
        };
        let feeds = Feeds {
            peers,
            edges: Some(edges),
        };
        Ok(DirectoryHandle::spawn(
            Store::open(&config.url)?,
            record,
            config.ttl,
            local,
            self.shared.rooms_changed.clone(),
            feeds,
        ))
    }

    /// Where this relay stands with the cluster directory (`None`: no directory).
    pub fn directory_health(&self) -> Option<Health> {
        self.directory.as_ref().map(DirectoryHandle::health)
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
        if self.plane.is_some() {
            let (_, o) = crate::metrics::Source::snapshot(&*self.shared);
            return (o.connections, o.rooms, o.participants);
        }
        let core = self.shared.core();
        (
            core.connection_count(),
            core.room_count(),
            core.participant_count(),
        )
    }

    /// Tells every client the relay is going away (Error ShuttingDown, then a close with that
    /// code), stops accepting, and waits up to `grace` for the goodbyes to be delivered.
    pub async fn shutdown(mut self, grace: Duration) {
        self.shared.shutting_down.store(true, Relaxed);
        if let Some(plane) = self.plane.take() {
            // The plane's loop says goodbye itself (its trunks too); then the directory
            // forgets this relay's rooms.
            plane.finished(grace).await;
            if let Some(directory) = self.directory.take() {
                let (rooms, _) = self.shared.rooms_and_load();
                directory.withdraw(&rooms).await;
            }
            return;
        }
        if let Some(directory) = self.directory.take() {
            let rooms = self
                .shared
                .core()
                .room_names()
                .map(str::to_string)
                .collect();
            directory.withdraw(&rooms).await;
        }
        let peers: Vec<Peer> = self.shared.core().handles().cloned().collect();
        info!(clients = peers.len(), "shutting down");
        for peer in &peers {
            peer.control.close(Close::Error(
                ErrorCode::ShuttingDown,
                "the relay is shutting down".into(),
            ));
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
        let validated = incoming.remote_address_validated();
        let ip = incoming.remote_address().ip();
        let verdict = shared.admissions().decide(
            ip,
            validated,
            shared.shutting_down.load(Relaxed),
            shared.handshaking.load(Relaxed) as usize,
            shared.config.handshake_limits(),
        );
        match verdict {
            Handshake::Accept => {}
            Handshake::Retry => {
                shared.stats.retries.fetch_add(1, Relaxed);
                let _ = incoming.retry();
                continue;
            }
            Handshake::Refuse => {
                shared
                    .stats
                    .count_handshake_failure(HandshakeFailure::Refused);
                debug!(remote = %incoming.remote_address(), "refused");
                incoming.refuse();
                continue;
            }
        }
        let slot = Slot {
            shared: shared.clone(),
            ip,
        };
        shared.handshaking.fetch_add(1, Relaxed);
        let id = shared.next_conn.fetch_add(1, Relaxed);
        let span = info_span!("conn", id, remote = %incoming.remote_address());
        tokio::spawn(run_connection(incoming, id, shared.clone(), slot).instrument(span));
    }
}

/// A random number from the standard library's per-process random hasher keys (seeded from
/// the OS's random source): enough for a salt that only has to differ between relay processes.
fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.finish() as u32
}

pub(crate) fn unix_ms() -> u64 {
    unix_micros() / 1000
}

/// Wall clock in microseconds since the Unix epoch: read here, in the shell, and passed to the
/// core as its time.
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A connection slot taken by [`Admissions::admit`]; given back when dropped, i.e. when the
/// connection's task ends however it ends.
struct Slot {
    shared: Arc<Shared>,
    ip: std::net::IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.admissions().release(self.ip);
    }
}

async fn run_connection(incoming: quinn::Incoming, id: ConnId, shared: Arc<Shared>, _slot: Slot) {
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
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if alpn.as_deref() == Some(TRUNK_ALPN) {
        crate::cluster::trunk::accepted(shared, conn).await;
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
    let peer = Peer {
        control: Arc::new(Outbox::new(conn.clone())),
        queue: Arc::new(SubscriberQueue::new(
            conn.clone(),
            shared.config.stale_after,
        )),
    };
    shared.core().connect(id, peer.clone(), unix_ms());
    let writer = tokio::spawn(write_control(send, peer.control.clone(), conn.clone()));
    let datagrams = tokio::spawn(forward_datagrams(conn.clone(), id, shared.clone()));
    let sender = tokio::spawn(send_datagrams(peer.queue.clone(), shared.clone()));

    read_control(recv, id, &peer, &shared, deadline).await;

    datagrams.abort();
    sender.abort();
    {
        // Queued under the core's lock, like every roster message (see read_control).
        let mut core = shared.core();
        let notices = core.disconnect(id);
        dispatch(notices, &shared.stats);
    }
    shared.rooms_changed.notify_one();
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

pub(crate) fn dispatch(sends: Vec<(Peer, Message)>, stats: &RelayStats) {
    for (peer, msg) in sends {
        peer.control.send(msg, stats);
    }
}

/// Reads control messages until the stream or connection ends or the core closes it.
///
/// Messages are handled at most `control_rate` a second (bursts of `control_burst`): past
/// that the reader waits instead of reading, so a flooding client is held back by its own
/// stream's flow control at no cost to the relay. Before Hello the hello deadline applies,
/// between Hello and Join the join deadline: a connection cannot hold a slot by saying
/// nothing.
async fn read_control(
    mut recv: quinn::RecvStream,
    id: ConnId,
    peer: &Peer,
    shared: &Shared,
    hello_deadline: tokio::time::Instant,
) {
    let config = &shared.config;
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 4096];
    let mut stage = Stage::AwaitHello;
    let mut deadline = Some(hello_deadline);
    let epoch = tokio::time::Instant::now();
    let ms_since = |t: tokio::time::Instant| t.duration_since(epoch).as_secs_f64() * 1e3;
    let mut bucket = TokenBucket::new(config.control_rate, config.control_burst, 0.0);
    let close = |close: Close| {
        if let Close::Error(code, reason) = &close {
            shared.stats.control_errors.fetch_add(1, Relaxed);
            info!(code = ?code, reason = %reason, "closing connection");
        }
        peer.control.close(close);
    };
    let missed = |stage: Stage| stage.missed(config.join_timeout);
    loop {
        let read = match deadline {
            None => recv.read(&mut buf).await,
            Some(at) => match tokio::time::timeout_at(at, recv.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => {
                    close(missed(stage));
                    return;
                }
            },
        };
        let n = match read {
            Ok(Some(n)) => n,
            Ok(None) | Err(_) => {
                // The client finished or reset its side: that ends the session like Leave.
                // (If the connection itself is gone, the close below is a no-op.)
                peer.control.close(Close::Left);
                return;
            }
        };
        decoder.push(&buf[..n]);
        while let Some(next) = decoder.next_message() {
            let msg = match next {
                Ok(msg) => msg,
                Err(e) => {
                    close(Close::Error(
                        ErrorCode::ProtocolViolation,
                        format!("malformed control message: {e}"),
                    ));
                    return;
                }
            };
            loop {
                let wait = bucket.take_or_wait(1.0, ms_since(tokio::time::Instant::now()));
                if wait <= 0.0 {
                    break;
                }
                shared.stats.control_throttled.fetch_add(1, Relaxed);
                let until = tokio::time::Instant::now() + Duration::from_secs_f64(wait / 1e3);
                // The stage deadlines still hold while throttled.
                if let Some(at) = deadline.filter(|at| *at < until) {
                    tokio::time::sleep_until(at).await;
                    close(missed(stage));
                    return;
                }
                tokio::time::sleep_until(until).await;
            }
            let joining = matches!(msg, Message::Join { .. });
            let (next_stage, next_deadline) = stage.after(&msg, config.join_timeout);
            let (close_with, joined, evicted) = {
                let mut core = shared.core();
                let outcome = core.on_message(id, msg, unix_ms());
                let joined = welcomed(&outcome.sends, joining);
                // Queued while the core is still locked, so every connection gets its messages in
                // the order the core decided them (a Welcome before the notice that someone in its
                // roster left, even when that someone's task runs at the same moment).
                dispatch(outcome.sends, &shared.stats);
                if joined.is_some()
                    && let Some(edges) = shared.edges_message()
                {
                    peer.control.send(edges, &shared.stats);
                }
                let evicted = !outcome.evict.is_empty();
                for (peer, why) in outcome.evict {
                    peer.control.close(why);
                }
                (outcome.close, joined, evicted)
            };
            if let Some((room, name, participant)) = joined {
                info!(room = %room, name = %name, participant, "join");
                shared.rooms_changed.notify_one();
            }
            if evicted {
                info!("access token joined again: closed its previous connection");
            }
            if let Some(c) = close_with {
                close(c);
                return;
            }
            stage = next_stage;
            match next_deadline {
                Deadline::Keep => {}
                Deadline::In(d) => deadline = Some(tokio::time::Instant::now() + d),
                Deadline::Clear => deadline = None,
            }
        }
    }
}

/// Writes queued control messages to the stream; carries out the close in order.
async fn write_control(mut send: quinn::SendStream, outbox: Arc<Outbox>, conn: Connection) {
    let mut frame = Vec::new();
    loop {
        match outbox.next().await {
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
pub(crate) async fn send_datagrams(queue: Arc<SubscriberQueue>, shared: Arc<Shared>) {
    loop {
        let Some(ready) = queue.pop(&shared.stats) else {
            queue.ready.notified().await;
            continue;
        };
        // The limit holds until quinn takes the datagram: waiting for window space past it
        // drops the datagram (dropping the future takes it back), and quinn's own buffer holds
        // only about a packet, sent at the next opportunity.
        let send = queue.conn.send_datagram_wait(ready.datagram);
        match tokio::time::timeout_at(ready.stale_at, send).await {
            Ok(sent) => {
                if !count_sent(sent, ready.arrived, &shared.stats) {
                    return;
                }
            }
            Err(_) => {
                shared.stats.dropped_stale.fetch_add(1, Relaxed);
            }
        }
    }
}
