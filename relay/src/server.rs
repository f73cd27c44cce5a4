//! The relay's configuration and its start: the QUIC server configuration, the sockets, the
//! data plane's thread (`crate::plane`), the directory task, metrics and shutdown.
//!
//! Real-time rule: a forwarded datagram is either sent now or dropped. quinn-proto queues
//! unsent datagrams per connection and drops the *oldest* when the queue is full; its default
//! queue is 1 MiB (minutes of voice), so we size it to one packet instead.

use crate::admission::HandshakeLimits;
use crate::cluster::DirectoryConfig;
use crate::cluster::directory::{Health, RelayRecord};
use crate::cluster::store::{DirectoryHandle, EdgesFeed, Feeds, PeersFeed, Store, StoreError};
use crate::cluster::trunk::{TRUNK_ALPN, TrunkConfig};
use crate::core::{Limits, RelayCore};
use crate::identity::Identity;
use crate::reset_key::ResetKey;
use crate::stats::{RelayStats, StatsSnapshot};
use natter_proto::invite::Invite;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{TransportConfig, VarInt};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tracing::{info, warn};

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
    /// Data-plane loops, each on its own thread with its own socket per listen address, all
    /// bound to the same port with SO_REUSEPORT (`crate::plane`'s module documentation says
    /// how they share the connections). 1 unless measured otherwise.
    pub threads: usize,
    /// The cluster directory to keep this relay in (`None`: a lone relay).
    pub directory: Option<DirectoryConfig>,
    /// Trunks to the other relays of the cluster (needs the directory to find them).
    pub trunks: Option<TrunkConfig>,
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
}

pub(crate) struct Shared {
    pub(crate) stats: Arc<RelayStats>,
    /// The plane's occupancy, as its loop last published it.
    published: Mutex<crate::plane::Occupancy>,
    /// The plane's rooms with members, as its loop last published them (for the directory).
    published_rooms: Mutex<BTreeSet<String>>,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) config: RelayConfig,
    /// Poked when a room gains its first or loses its last member, for the directory.
    rooms_changed: Arc<tokio::sync::Notify>,
}

impl crate::metrics::Source for Shared {
    fn snapshot(&self) -> (StatsSnapshot, crate::metrics::Occupancy) {
        let o = *self.published.lock().unwrap_or_else(|p| p.into_inner());
        let occupancy = crate::metrics::Occupancy {
            connections: o.connections,
            rooms: o.rooms,
            participants: o.participants,
            handshakes: o.handshakes,
        };
        (self.stats.snapshot(), occupancy)
    }
}

impl Shared {
    fn new(config: RelayConfig) -> Arc<Self> {
        Arc::new(Shared {
            stats: Arc::new(RelayStats::with_loops(config.threads.max(1))),
            published: Mutex::default(),
            published_rooms: Mutex::default(),
            shutting_down: AtomicBool::new(false),
            config,
            rooms_changed: Arc::default(),
        })
    }

    /// The plane's loop publishes its occupancy (once a round), and its rooms when a room
    /// gained its first or lost its last member (the directory is poked then).
    pub(crate) fn publish(
        &self,
        occupancy: crate::plane::Occupancy,
        rooms: Option<BTreeSet<String>>,
    ) {
        *self.published.lock().unwrap_or_else(|p| p.into_inner()) = occupancy;
        if let Some(rooms) = rooms {
            *self
                .published_rooms
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = rooms;
            self.rooms_changed.notify_one();
        }
    }

    /// The rooms with members and the participant count, as the plane last published them.
    fn rooms_and_load(&self) -> (BTreeSet<String>, u32) {
        let participants = self
            .published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .participants;
        let rooms = self
            .published_rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (rooms, participants as u32)
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
    addrs: Vec<SocketAddr>,
    directory: Option<DirectoryHandle>,
    /// The data plane's thread (taken at shutdown).
    plane: Option<crate::plane::PlaneHandle>,
}

/// Bytes of unacknowledged control-stream data quinn-proto may hold per connection (its
/// default is 10 MB). The largest message the relay sends is a Welcome with a full room's
/// roster, about 6 KB for 64 members.
const CONTROL_SEND_WINDOW: u64 = 64 * 1024;

/// Receive windows. The control stream carries a few small messages a second (the largest a
/// client sends is a Join of about 1.2 KB); media travels as datagrams, which flow control
/// does not cover. quinn-proto's defaults (1.25 MB per stream, more per connection) would let
/// every connection park megabytes in the relay.
const STREAM_RECEIVE_WINDOW: u32 = 16 * 1024;
const CONNECTION_RECEIVE_WINDOW: u32 = 32 * 1024;

/// The round trip assumed before one is measured: the first exchange's retransmission waits
/// are three times this, and they land in the clients' first round-trip sample (why 100 ms
/// and not quinn's 333 ms: `natter::transport::INITIAL_RTT`).
const INITIAL_RTT: Duration = Duration::from_millis(100);

fn transport_config(config: &RelayConfig) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.initial_rtt(INITIAL_RTT);
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

/// A UDP socket on `addr`; `reuse_port`: with SO_REUSEPORT, so the data plane's other loops
/// can bind the same address and the kernel spreads clients over them by 4-tuple hash.
pub(crate) fn bind(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if reuse_port {
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

/// Starts the relay: its data plane on a thread of its own (`crate::plane`), and on the
/// current tokio runtime the directory task that tells it about the cluster.
pub async fn start(config: RelayConfig) -> Result<RelayHandle, RelayError> {
    if config.listen.is_empty() {
        return Err(RelayError::NoListenAddress);
    }
    let server = server_config(&config)?;
    let mut core = new_core(&config);
    let mesh = config.trunks.as_ref().map(|trunks| {
        core.set_node(trunks.node);
        crate::plane::MeshSettings {
            secret: trunks.secret.clone(),
            id: relay_id(&config),
        }
    });
    let listen = config.listen.clone();
    let shared = Shared::new(config);
    let (commands, inbox) = std::sync::mpsc::channel();
    let (addrs, plane) = crate::plane::spawn(&listen, server, core, mesh, inbox, shared.clone())?;
    info!(addrs = ?addrs, "relay listening");
    let mut relay = RelayHandle {
        shared,
        addrs,
        directory: None,
        plane: Some(plane),
    };
    if let Some(config) = relay.shared.config.directory.clone() {
        relay.directory = Some(relay.join_directory(&config, commands)?);
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

/// A relay core for `config`, its handles of type `H` (the plane's `Target`).
fn new_core<H: Clone>(config: &RelayConfig) -> RelayCore<H> {
    RelayCore::new(
        format!("natter-relay/{}", env!("CARGO_PKG_VERSION")),
        config.limits.clone(),
    )
    .with_ssrc_salt(random_u32())
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
        plane: std::sync::mpsc::Sender<crate::plane::Command>,
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
        // With trunks, what the directory says about our rooms' other relays goes to the loop's
        // mesh; the cluster's live relays go to its clients.
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

    /// (connections, rooms, participants) as the plane last published them.
    pub fn occupancy(&self) -> (usize, usize, usize) {
        let (_, o) = crate::metrics::Source::snapshot(&*self.shared);
        (o.connections, o.rooms, o.participants)
    }

    /// Tells every client the relay is going away (Error ShuttingDown, then a close with that
    /// code), stops accepting, and waits up to `grace` for the goodbyes to be delivered; then
    /// the directory forgets this relay's rooms.
    pub async fn shutdown(mut self, grace: Duration) {
        self.shared.shutting_down.store(true, Relaxed);
        if let Some(plane) = self.plane.take() {
            // The plane's loop says goodbye itself (its trunks too).
            plane.finished(grace).await;
        }
        if let Some(directory) = self.directory.take() {
            let (rooms, _) = self.shared.rooms_and_load();
            directory.withdraw(&rooms).await;
        }
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
