//! The relay's data plane: one loop drives `quinn_proto` directly for every connection of an
//! endpoint, instead of quinn's task per connection.
//!
//! Why: in a voice relay every forwarded packet goes to a different connection, and quinn's
//! drivers send each connection's packets with their own system call; a loop that owns all the
//! connections can collect every connection's packets and send them with one `sendmmsg`
//! (docs/BENCHMARKS.md, "Relay capacity"). quinn-proto is a sans-IO state machine precisely so
//! that a caller can drive it its own way.
//!
//! [`Plane`] is that loop's state, sans-IO itself: UDP datagrams in ([`Plane::handle`]) with
//! the time, the datagrams to send out ([`Plane::flush`] fills a [`SendBatch`]), and when it
//! next needs the loop ([`Plane::poll_timeout`], [`Plane::handle_timeouts`]). Tests drive it
//! against real quinn-proto clients in memory with simulated time (`tests.rs`); the thread in
//! `io.rs` drives it with a [`crate::udp_batch::BatchSocket`] per listen address.
//!
//! One round of the loop: a batch of UDP datagrams goes to the endpoint, each to its
//! connection; then every connection that was touched is processed (phase A): its events,
//! its control stream (read, rate-limited, fed to [`RelayCore`]), its media datagrams routed by
//! the core and offered to each subscriber under the stale rule of [`FreshQueue`]; subscribers
//! touched on the way join the round. Then (phase B) every touched connection writes its queued
//! control messages, moves queued datagrams into quinn-proto as its congestion window allows,
//! and hands its packets to the shared batch; its next deadline goes into [`Timers`].
//!
//! What the relay's control plane does comes from pure pieces: admission ([`Admissions::decide`]), the hello and join deadlines
//! ([`Stage`]), the bounded control queue ([`ControlQueue`]), the control-message rate, the
//! core's rooms, tokens, rate limits, echo and loudest-speaker rule. Trunks to the cluster's
//! other relays are connections of the same endpoint and run in the same rounds (`trunk.rs`);
//! the directory task (tokio, Redis) tells the loop what it reads back through a channel.
//!
//! ## Several loops (`threads = N`)
//!
//! N loops, each on its own thread with its own SO_REUSEPORT socket on the relay's address,
//! share **one** [`Plane`] behind a lock that each loop takes once a round: after its
//! `recvmmsg` returned and until its round's packets are in its send batch; the `sendmmsg`
//! runs outside it (`io.rs`). So the system calls — the kernel's share of the relay's CPU,
//! the largest (docs/BENCHMARKS.md, the profile) — run on every core at once, and the
//! plane's own work (quinn-proto, AEAD, routing) runs on one loop at a time.
//!
//! Why one shared plane rather than a plane per loop: everything that must hold across loops
//! holds by construction. A room's members meet in the one core whichever socket the kernel
//! gave them, and hear each other within the round that received the packet (no cross-loop
//! queue, no redirect at join, no protocol change). A connection belongs to the one endpoint,
//! not to a loop: when a client's address changes (NAT rebinding, migration) its new 4-tuple
//! may hash to another socket, and that loop hands the packet to the same connection instead
//! of answering an unknown connection ID with a stateless reset; a Retry token is checked by
//! the same endpoint whichever loop the client's second Initial reaches; the relay-wide and
//! per-address limits, the handshake count the Retry threshold uses, the cluster's trunks and
//! graceful shutdown are the one plane's. Any loop may send any connection's packets: the
//! sockets share the address and port, so the client sees one peer address.
//!
//! What it costs: the plane's work does not scale past one core. Per-loop planes (own
//! endpoint and core, a loop index in the connection IDs to steer migrated packets, rooms
//! spanning loops through cross-loop queues drained once per round) would scale it, at the
//! price of all the above; this machine has two cores and cannot measure whether it pays.

mod io;
mod trunk;

#[cfg(test)]
mod tests;

pub(crate) use io::{PlaneHandle, spawn};
pub(crate) use trunk::{Command, MeshSettings};

use crate::admission::{Admissions, Handshake, HandshakeLimits};
use crate::bucket::TokenBucket;
use crate::cluster::trunk::TRUNK_ALPN;
use crate::control_queue::{CONTROL_QUEUE_LIMIT, ControlQueue, QueueFull};
use crate::control_stage::{Deadline, Stage, welcomed};
use crate::core::{Close, ConnId, RelayCore};
use crate::fresh_queue::{FreshQueue, Ready, SUBSCRIBER_QUEUE_LIMIT};
use crate::server::RelayConfig;
use crate::stats::{HandshakeFailure, RelayStats};
use crate::timers::Timers;
use crate::udp_batch::{Received, SendBatch};
use bytes::Bytes;
use natter_proto::control::{ClusterEdge, ErrorCode, FrameDecoder, Message};
use quinn_proto::{
    ConnectionError, ConnectionHandle, DatagramEvent, Dir, Endpoint, Event, SendDatagramError,
    StreamEvent, StreamId, VarInt,
};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tracing::{debug, info};

/// Packets one `poll_transmit` may build for one connection (sent as separate entries of the
/// batch's `sendmmsg`).
const MAX_DATAGRAMS: usize = 10;

/// Time between writing the Error message and closing, so the message and the stream's end
/// can leave before CONNECTION_CLOSE (which discards unsent stream data); the close carries the
/// same code and reason in case they do not make it.
const CLOSE_LINGER: Duration = Duration::from_millis(20);

/// Longest a closing connection waits for its queued control messages to go out.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Most bytes read from a control stream at a time.
const CONTROL_READ: usize = 4096;

/// What the plane needs from the relay's configuration.
#[derive(Debug, Clone)]
struct Settings {
    hello_timeout: Duration,
    join_timeout: Duration,
    control_rate: f64,
    control_burst: f64,
    stale_after: Duration,
    handshakes: HandshakeLimits,
}

/// One connection as the loop keeps it.
struct Conn {
    quic: quinn_proto::Connection,
    ip: IpAddr,
    /// The handshake completed.
    connected: bool,
    /// The client's control stream, once it opened it.
    control: Option<StreamId>,
    /// The connection is in the core (its control stream is open and it has not left).
    in_core: bool,
    stage: Stage,
    /// The current stage must end by then (hello and join timeouts).
    deadline: Option<Instant>,
    decoder: FrameDecoder,
    bucket: TokenBucket,
    /// A message read but held back by the control rate, and until when.
    throttled: Option<(Message, Instant)>,
    outbox: ControlQueue,
    /// The encoded message being written, and how much of it is written.
    unsent: Vec<u8>,
    written: usize,
    /// Why and when the connection is being closed (see [`Plane::request_close`]).
    closing: Option<Closing>,
    queue: FreshQueue<Bytes, Instant>,
    /// A datagram taken from the queue that quinn-proto had no room for yet.
    holding: Option<Ready<Bytes, Instant>>,
    touched: bool,
    /// A connection to another relay of the cluster (dialled or accepted).
    trunk: Option<Box<trunk::TrunkConn>>,
    /// This relay dialled it (not admitted, not counted among the handshakes).
    dialed: bool,
}

impl Conn {
    fn new(quic: quinn_proto::Connection, ip: IpAddr, settings: &Settings, dialed: bool) -> Self {
        Conn {
            quic,
            ip,
            connected: dialed,
            control: None,
            in_core: false,
            stage: Stage::AwaitHello,
            deadline: None,
            decoder: FrameDecoder::new(),
            bucket: TokenBucket::new(settings.control_rate, settings.control_burst, 0.0),
            throttled: None,
            outbox: ControlQueue::default(),
            unsent: Vec::new(),
            written: 0,
            closing: None,
            queue: FreshQueue::new(settings.stale_after, SUBSCRIBER_QUEUE_LIMIT),
            holding: None,
            touched: false,
            trunk: None,
            dialed,
        }
    }
}

/// The connections by their quinn-proto handle, which is an index into the endpoint's own slab
/// (reused only after the connection drained): a vector indexed the same way needs no hashing
/// on the per-packet path.
#[derive(Default)]
struct Conns(Vec<Option<Conn>>);

impl Conns {
    fn get(&self, ch: &ConnectionHandle) -> Option<&Conn> {
        self.0.get(ch.0)?.as_ref()
    }

    fn get_mut(&mut self, ch: &ConnectionHandle) -> Option<&mut Conn> {
        self.0.get_mut(ch.0)?.as_mut()
    }

    fn insert(&mut self, ch: ConnectionHandle, conn: Conn) {
        if ch.0 >= self.0.len() {
            self.0.resize_with(ch.0 + 1, || None);
        }
        self.0[ch.0] = Some(conn);
    }

    fn remove(&mut self, ch: &ConnectionHandle) -> Option<Conn> {
        self.0.get_mut(ch.0)?.take()
    }

    fn handles(&self) -> impl Iterator<Item = ConnectionHandle> + '_ {
        self.0
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_some())
            .map(|(i, _)| ConnectionHandle(i))
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.iter().filter(|c| c.is_some()).count()
    }
}

/// A close the loop is carrying out: queued messages go first, then the Error message and the
/// stream's end, then CONNECTION_CLOSE [`CLOSE_LINGER`] later (at `at`, at the latest
/// [`CLOSE_GRACE`] after it was asked for).
struct Closing {
    close: Close,
    said: bool,
    at: Instant,
    done: bool,
}

impl Closing {
    fn code_and_reason(&self) -> (VarInt, Bytes) {
        match &self.close {
            Close::Left => (VarInt::from_u32(0), Bytes::from_static(b"left")),
            Close::Error(code, reason) => (
                VarInt::from(code.to_u16()),
                Bytes::copy_from_slice(reason.as_bytes()),
            ),
        }
    }
}

/// The occupancy the plane last published.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Occupancy {
    pub connections: usize,
    pub rooms: usize,
    pub participants: usize,
    pub handshakes: usize,
}

/// The data plane's state; see the module documentation.
pub(crate) struct Plane {
    endpoint: Endpoint,
    conns: Conns,
    core: RelayCore<Target>,
    timers: Timers<Instant>,
    /// Connections to process in this round, in the order they were touched.
    touched: Vec<ConnectionHandle>,
    /// The previous pass's list, kept for its allocation.
    spare: Vec<ConnectionHandle>,
    admissions: Admissions,
    handshaking: usize,
    settings: Settings,
    stats: Arc<RelayStats>,
    shutting_down: bool,
    /// The plane's clock against the wall clock the core's rate limits and levels use.
    epoch: Instant,
    epoch_unix_ms: u64,
    buf: Vec<u8>,
    targets: Vec<ConnectionHandle>,
    read: Vec<u8>,
    /// Trunks to the cluster's other relays (`None`: no cluster secret).
    mesh: Option<trunk::Mesh>,
    /// The cluster's live edges, as the directory last listed them.
    edges: Vec<ClusterEdge>,
    /// A room gained its first or lost its last member since the directory last looked.
    rooms_changed: bool,
    /// Rooms went away: trunk subscriptions may have ended.
    subs_dirty: bool,
}

impl Plane {
    /// A plane serving with `server` (the relay's server configuration), whose clock reads
    /// `now` when the wall clock reads `unix_ms`.
    pub(crate) fn new(
        config: &RelayConfig,
        server: quinn_proto::ServerConfig,
        core: RelayCore<Target>,
        stats: Arc<RelayStats>,
        mesh: Option<MeshSettings>,
        now: Instant,
        unix_ms: u64,
    ) -> Self {
        Self {
            endpoint: Endpoint::new(
                Arc::new(config.reset_key.endpoint_config()),
                Some(Arc::new(server)),
                true,
                None,
            ),
            conns: Conns::default(),
            core,
            timers: Timers::default(),
            touched: Vec::new(),
            spare: Vec::new(),
            admissions: Admissions::default(),
            handshaking: 0,
            settings: Settings {
                hello_timeout: config.hello_timeout,
                join_timeout: config.join_timeout,
                control_rate: config.control_rate,
                control_burst: config.control_burst,
                stale_after: config.stale_after,
                handshakes: config.handshake_limits(),
            },
            stats,
            shutting_down: false,
            epoch: now,
            epoch_unix_ms: unix_ms,
            buf: Vec::with_capacity(64 * 1024),
            targets: Vec::with_capacity(16),
            read: Vec::with_capacity(CONTROL_READ),
            mesh: mesh.map(trunk::Mesh::new),
            edges: Vec::new(),
            rooms_changed: false,
            subs_dirty: false,
        }
    }

    fn unix_ms(&self, now: Instant) -> u64 {
        self.epoch_unix_ms + now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Milliseconds on the plane's clock, for the control-rate buckets.
    fn ms(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.epoch).as_secs_f64() * 1e3
    }

    /// Connections, rooms, participants and handshakes now.
    pub(crate) fn occupancy(&self) -> Occupancy {
        Occupancy {
            connections: self.core.connection_count(),
            rooms: self.core.room_count(),
            participants: self.core.participant_count(),
            handshakes: self.handshaking,
        }
    }

    /// The rooms with members, when they changed since the last call (for the directory).
    pub(crate) fn take_rooms_changed(&mut self) -> Option<BTreeSet<String>> {
        std::mem::take(&mut self.rooms_changed)
            .then(|| self.core.room_names().map(str::to_string).collect())
    }

    /// No connection is left (after a shutdown: the loop may end).
    pub(crate) fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// When the plane next needs [`Plane::handle_timeouts`].
    pub(crate) fn poll_timeout(&mut self) -> Option<Instant> {
        self.timers.earliest()
    }

    /// One UDP datagram arrived at `now`. Answers the endpoint gives at once (Retry,
    /// refusals, stateless resets) go to `out`; the rest waits for [`Plane::flush`].
    ///
    /// Its destination address becomes the source of the connection's packets (quinn-proto
    /// puts it in each `Transmit`), and its ECN codepoint goes into the ACKs quinn-proto
    /// sends back, so the client's congestion control sees marks and keeps ECN on.
    pub(crate) fn handle(&mut self, now: Instant, datagram: Received<'_>, out: &mut SendBatch) {
        let event = datagram.to_endpoint(&mut self.endpoint, now, &mut self.buf);
        match event {
            Some(DatagramEvent::NewConnection(incoming)) => self.admit(now, incoming, out),
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some(conn) = self.conns.get_mut(&ch) {
                    conn.quic.handle_event(event);
                    self.touch(ch);
                }
            }
            Some(DatagramEvent::Response(t)) => out.push_transmit(&t, &self.buf),
            None => {}
        }
    }

    /// The first packet of a handshake: accept, Retry or refuse it.
    fn admit(&mut self, now: Instant, incoming: quinn_proto::Incoming, out: &mut SendBatch) {
        let ip = incoming.remote_address().ip();
        let verdict = self.admissions.decide(
            ip,
            incoming.remote_address_validated(),
            self.shutting_down,
            self.handshaking,
            self.settings.handshakes,
        );
        self.buf.clear();
        match verdict {
            Handshake::Retry => {
                self.stats.retries.fetch_add(1, Relaxed);
                match self.endpoint.retry(incoming, &mut self.buf) {
                    Ok(t) => out.push_transmit(&t, &self.buf),
                    Err(e) => self.endpoint.ignore(e.into_incoming()),
                }
            }
            Handshake::Refuse => {
                self.stats
                    .count_handshake_failure(HandshakeFailure::Refused);
                debug!(remote = %incoming.remote_address(), "refused");
                let t = self.endpoint.refuse(incoming, &mut self.buf);
                out.push_transmit(&t, &self.buf);
            }
            Handshake::Accept => match self.endpoint.accept(incoming, now, &mut self.buf, None) {
                Ok((ch, quic)) => {
                    self.handshaking += 1;
                    self.conns
                        .insert(ch, Conn::new(quic, ip, &self.settings, false));
                    self.touch(ch);
                }
                Err(e) => {
                    self.admissions.release(ip);
                    self.stats
                        .count_handshake_failure(HandshakeFailure::of(&e.cause));
                    if let Some(t) = e.response {
                        out.push_transmit(&t, &self.buf);
                    }
                }
            },
        }
    }

    fn touch(&mut self, ch: ConnectionHandle) {
        if let Some(conn) = self.conns.get_mut(&ch)
            && !conn.touched
        {
            conn.touched = true;
            self.touched.push(ch);
        }
    }

    /// Runs every deadline due at `now`: quinn-proto's timers (loss detection, ACK delay,
    /// pacing, idle), the hello and join deadlines, the control rate's hold, closes.
    pub(crate) fn handle_timeouts(&mut self, now: Instant) {
        while let Some(ch) = self.timers.pop_due(now).map(ConnectionHandle) {
            let Some(conn) = self.conns.get_mut(&ch) else {
                continue;
            };
            if conn.quic.poll_timeout().is_some_and(|t| t <= now) {
                conn.quic.handle_timeout(now);
            }
            let missed = conn.deadline.is_some_and(|t| t <= now) && conn.closing.is_none();
            let stage = conn.stage;
            let trunk = conn.trunk.is_some();
            self.touch(ch);
            if missed && trunk {
                // The handshake or the proofs took too long.
                self.refuse(now, ch);
            } else if missed {
                let close = stage.missed(self.settings.join_timeout);
                self.request_close(now, ch, close);
            }
        }
    }

    /// Processes every connection touched since the last flush and puts everything they have
    /// to send into `out` (one batch for all connections).
    pub(crate) fn flush(&mut self, now: Instant, out: &mut SendBatch) {
        // Another pass only when phase B touched a connection after its own turn (a drained
        // connection's room hears that it left).
        while !self.touched.is_empty() {
            // Phase A: events, control, routing; the list grows as subscribers are touched.
            let mut i = 0;
            while i < self.touched.len() {
                let ch = self.touched[i];
                i += 1;
                self.process(now, ch);
            }
            if std::mem::take(&mut self.subs_dirty) {
                self.end_subscriptions();
            }
            // Phase B: control writes, queued datagrams into quinn-proto, packets out, timers.
            let mut pass = std::mem::take(&mut self.spare);
            std::mem::swap(&mut pass, &mut self.touched);
            for &ch in &pass {
                self.transmit(now, ch, out);
            }
            pass.clear();
            self.spare = pass;
        }
    }

    /// Phase A for one connection.
    fn process(&mut self, now: Instant, ch: ConnectionHandle) {
        self.endpoint_events(now, ch);
        while let Some(event) = self.conns.get_mut(&ch).and_then(|c| c.quic.poll()) {
            let trunk = self.conns.get(&ch).is_some_and(|c| c.trunk.is_some());
            match event {
                Event::Connected => self.connected(now, ch),
                Event::ConnectionLost { reason } => self.lost(now, ch, &reason),
                event if trunk => self.trunk_event(now, ch, event),
                Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => self.opened(now, ch),
                Event::Stream(StreamEvent::Readable { .. }) => self.read_control(now, ch),
                Event::DatagramReceived => self.receive_datagrams(now, ch),
                // Writable, Finished, Stopped, DatagramsUnblocked, HandshakeDataReady: phase B
                // writes and fills whatever it can anyway.
                _ => {}
            }
        }
        // A control message held back by the rate limit may be due.
        if self
            .conns
            .get(&ch)
            .is_some_and(|c| c.throttled.as_ref().is_some_and(|(_, at)| *at <= now))
        {
            self.read_control(now, ch);
        }
    }

    fn connected(&mut self, now: Instant, ch: ConnectionHandle) {
        let Some(conn) = self.conns.get_mut(&ch) else {
            return;
        };
        if conn.dialed {
            return self.trunk_connected(now, ch);
        }
        self.handshaking = self.handshaking.saturating_sub(1);
        self.stats.connections_accepted.fetch_add(1, Relaxed);
        conn.connected = true;
        let alpn = conn
            .quic
            .crypto_session()
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol);
        if alpn.as_deref() == Some(TRUNK_ALPN) {
            return self.trunk_connected(now, ch);
        }
        // Media only travels as datagrams (RFC 9221): a client that did not enable them could
        // join but would never hear or be heard, so it is told at once instead.
        if conn.quic.datagrams().max_size().is_none() {
            self.request_close(
                now,
                ch,
                Close::Error(
                    ErrorCode::ProtocolViolation,
                    "QUIC datagrams (RFC 9221) are required; the client did not enable them".into(),
                ),
            );
            return;
        }
        conn.deadline = Some(now + self.settings.hello_timeout);
        debug!(conn = ch.0, "connected");
    }

    fn lost(&mut self, now: Instant, ch: ConnectionHandle, reason: &ConnectionError) {
        let Some(conn) = self.conns.get_mut(&ch) else {
            return;
        };
        if !conn.connected {
            conn.connected = true;
            self.handshaking = self.handshaking.saturating_sub(1);
            self.stats
                .count_handshake_failure(HandshakeFailure::of(reason));
            debug!(error = %reason, "handshake failed");
        } else {
            debug!(conn = ch.0, reason = %reason, "disconnected");
        }
        self.leave_core(now, ch);
        self.trunk_gone(now, ch);
    }

    /// The client opened its control stream: the connection enters the core.
    fn opened(&mut self, now: Instant, ch: ConnectionHandle) {
        let unix_ms = self.unix_ms(now);
        let Some(conn) = self.conns.get_mut(&ch) else {
            return;
        };
        let Some(id) = conn.quic.streams().accept(Dir::Bi) else {
            return;
        };
        if conn.control.is_some() || conn.closing.is_some() {
            return;
        }
        conn.control = Some(id);
        conn.in_core = true;
        self.core.connect(conn_id(ch), Target::client(ch), unix_ms);
        self.read_control(now, ch);
    }

    /// Reads and handles control messages until the stream has no more, the control rate
    /// holds the next one back, or the connection is closed.
    fn read_control(&mut self, now: Instant, ch: ConnectionHandle) {
        let ms = self.ms(now);
        loop {
            let Some(conn) = self.conns.get_mut(&ch) else {
                return;
            };
            let Some(stream) = conn.control else {
                return;
            };
            if conn.closing.is_some() {
                return;
            }
            // A message held back by the rate limit first, then what the decoder has.
            let msg = match conn.throttled.take() {
                Some((msg, at)) if at > now => {
                    conn.throttled = Some((msg, at));
                    return;
                }
                Some((msg, _)) => Some(Ok(msg)),
                None => conn.decoder.next_message(),
            };
            let msg = match msg {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => {
                    let close = Close::Error(
                        ErrorCode::ProtocolViolation,
                        format!("malformed control message: {e}"),
                    );
                    self.request_close(now, ch, close);
                    return;
                }
                None => {
                    // Nothing decoded: read more from the stream (only now, so a flooding
                    // client is held back by its own stream's flow control).
                    match read_stream(&mut conn.quic, stream, &mut self.read) {
                        StreamRead::Data => {
                            conn.decoder.push(&self.read);
                            continue;
                        }
                        StreamRead::Blocked => return,
                        StreamRead::Ended => {
                            // The client finished or reset its side: that ends the session
                            // like Leave.
                            self.request_close(now, ch, Close::Left);
                            return;
                        }
                    }
                }
            };
            let wait = conn.bucket.take_or_wait(1.0, ms);
            if wait > 0.0 {
                self.stats.control_throttled.fetch_add(1, Relaxed);
                let until = now + Duration::from_secs_f64(wait / 1e3);
                conn.throttled = Some((msg, until));
                return;
            }
            self.handle_message(now, ch, msg);
        }
    }

    /// One control message through the core, and what it decided carried out in order.
    fn handle_message(&mut self, now: Instant, ch: ConnectionHandle, msg: Message) {
        let Some(conn) = self.conns.get(&ch) else {
            return;
        };
        let joining = matches!(msg, Message::Join { .. });
        let (next_stage, next_deadline) = conn.stage.after(&msg, self.settings.join_timeout);
        let outcome = self.core.on_message(conn_id(ch), msg, self.unix_ms(now));
        let joined = welcomed(&outcome.sends, joining);
        for (to, msg) in outcome.sends {
            self.tell(now, to, msg);
        }
        if let Some((room, name, participant)) = joined {
            info!(room = %room, name = %name, participant, "join");
            self.rooms_changed = true;
            // The cluster's edges, after the Welcome, for a client to move to when this relay
            // fails.
            if !self.edges.is_empty() {
                let edges = Message::Edges {
                    edges: self.edges.clone(),
                };
                self.send_control(now, ch, edges);
            }
        }
        if !outcome.evict.is_empty() {
            info!("access token joined again: closed its previous connection");
        }
        for (to, why) in outcome.evict {
            self.request_close(now, to.ch, why);
        }
        if let Some(close) = outcome.close {
            self.request_close(now, ch, close);
            return;
        }
        if let Some(conn) = self.conns.get_mut(&ch) {
            conn.stage = next_stage;
            match next_deadline {
                Deadline::Keep => {}
                Deadline::In(d) => conn.deadline = Some(now + d),
                Deadline::Clear => conn.deadline = None,
            }
        }
    }

    /// Queues `msg` for `to`: a client's control stream or a trunk's room stream.
    fn tell(&mut self, now: Instant, to: Target, msg: Message) {
        match to.room {
            None => self.send_control(now, to.ch, msg),
            Some(stream) => self.send_room(now, to.ch, stream, &msg),
        }
    }

    /// Queues `msg` on `ch`'s control stream; a client that lets [`CONTROL_QUEUE_LIMIT`]
    /// messages pile up is closed at once (SlowReader).
    fn send_control(&mut self, now: Instant, ch: ConnectionHandle, msg: Message) {
        let Some(conn) = self.conns.get_mut(&ch) else {
            return;
        };
        if conn.closing.is_some() {
            return;
        }
        if conn.outbox.push(msg) == Err(QueueFull) {
            conn.outbox.clear();
            self.stats.slow_readers.fetch_add(1, Relaxed);
            let reason = format!(
                "{CONTROL_QUEUE_LIMIT} control messages waiting: the client is not reading them"
            );
            // Its stream is stuck behind flow control the peer will not open, so the close
            // cannot wait for it.
            conn.quic.close(
                now,
                VarInt::from(ErrorCode::SlowReader.to_u16()),
                Bytes::copy_from_slice(reason.as_bytes()),
            );
            conn.closing = Some(Closing {
                close: Close::Error(ErrorCode::SlowReader, reason),
                said: true,
                at: now,
                done: true,
            });
            self.leave_core(now, ch);
        }
        self.touch(ch);
    }

    /// Closes `ch` (the first close asked for wins): out
    /// of the core now, so its room hears at once; what is queued goes out, then an Error
    /// message for an error, the stream's end, and the connection close.
    fn request_close(&mut self, now: Instant, ch: ConnectionHandle, close: Close) {
        let Some(conn) = self.conns.get_mut(&ch) else {
            return;
        };
        if conn.closing.is_some() {
            return;
        }
        if let Close::Error(code, reason) = &close {
            self.stats.control_errors.fetch_add(1, Relaxed);
            info!(code = ?code, reason = %reason, "closing connection");
        }
        conn.closing = Some(Closing {
            close,
            said: false,
            at: now + CLOSE_GRACE,
            done: false,
        });
        if conn.control.is_none()
            && let Some(closing) = &mut conn.closing
        {
            // Nothing to say it on: the close itself carries code and reason.
            closing.said = true;
            closing.at = now;
        }
        self.leave_core(now, ch);
        self.touch(ch);
    }

    /// Takes `ch` out of the core and tells its room.
    fn leave_core(&mut self, now: Instant, ch: ConnectionHandle) {
        let Some(conn) = self.conns.get_mut(&ch) else {
            return;
        };
        if !std::mem::take(&mut conn.in_core) {
            return;
        }
        let notices = self.core.disconnect(conn_id(ch));
        self.rooms_changed = true;
        self.subs_dirty = true;
        for (to, msg) in notices {
            self.tell(now, to, msg);
        }
    }

    /// Routes the media datagrams `ch` received: a client's by the core's checks for its room
    /// (membership, SSRC, rate limits, loudest speakers), a trunk's (once it proved it belongs
    /// to the cluster) to the local members of its sender's room.
    fn receive_datagrams(&mut self, now: Instant, ch: ConnectionHandle) {
        let trunk = self
            .conns
            .get(&ch)
            .and_then(|c| c.trunk.as_ref())
            .map(|t| t.is_proven());
        loop {
            let Some(datagram) = self
                .conns
                .get_mut(&ch)
                .and_then(|c| c.quic.datagrams().recv())
            else {
                return;
            };
            self.targets.clear();
            let unix_ms = self.unix_ms(now);
            let targets = &mut self.targets;
            let routed = match trunk {
                None => {
                    self.stats.datagrams_in.fetch_add(1, Relaxed);
                    self.core
                        .route(conn_id(ch), &datagram, unix_ms)
                        .map(|peers| targets.extend(peers.map(|t| t.ch)))
                }
                Some(true) => {
                    self.stats.trunk_datagrams_in.fetch_add(1, Relaxed);
                    self.core
                        .route_from_trunk(conn_id(ch), &datagram, unix_ms)
                        .map(|peers| targets.extend(peers.map(|t| t.ch)))
                }
                Some(false) => continue,
            };
            if let Err(reason) = routed {
                self.stats.count_drop(reason);
                continue;
            }
            for i in 0..self.targets.len() {
                let to = self.targets[i];
                self.offer(now, to, datagram.clone());
            }
        }
    }

    /// A datagram for subscriber `ch`: straight into quinn-proto when nothing waits before
    /// it and there is room, into its queue otherwise.
    fn offer(&mut self, now: Instant, ch: ConnectionHandle, datagram: Bytes) {
        let Some(conn) = self.conns.get_mut(&ch) else {
            return;
        };
        let datagram = if conn.queue.idle() {
            match conn.quic.datagrams().send(datagram, false) {
                Ok(()) => {
                    self.stats.datagrams_forwarded.fetch_add(1, Relaxed);
                    self.stats.observe_delay(0);
                    self.touch(ch);
                    return;
                }
                Err(SendDatagramError::Blocked(datagram)) => datagram,
                Err(_) => {
                    self.stats.datagrams_send_failed.fetch_add(1, Relaxed);
                    return;
                }
            }
        } else {
            datagram
        };
        if conn.queue.push(datagram, now).is_some() {
            self.stats.dropped_stale.fetch_add(1, Relaxed);
        }
        self.touch(ch);
    }

    /// Phase B for one connection.
    fn transmit(&mut self, now: Instant, ch: ConnectionHandle, out: &mut SendBatch) {
        let Some(conn) = self.conns.get_mut(&ch) else {
            return;
        };
        conn.touched = false;
        write_control(conn, now);
        trunk::write_trunk(conn);
        if let Some(closing) = &mut conn.closing
            && !closing.done
            && closing.at <= now
        {
            closing.done = true;
            let (code, reason) = closing.code_and_reason();
            conn.quic.close(now, code, reason);
        }
        loop {
            fill(conn, now, &self.stats);
            self.buf.clear();
            let Some(t) = conn.quic.poll_transmit(now, MAX_DATAGRAMS, &mut self.buf) else {
                break;
            };
            out.push_transmit(&t, &self.buf);
        }
        self.endpoint_events(now, ch);
        if let Some(conn) = self.conns.get_mut(&ch) {
            let next = [
                conn.quic.poll_timeout(),
                conn.deadline.filter(|_| conn.closing.is_none()),
                conn.throttled.as_ref().map(|(_, at)| *at),
                conn.closing.as_ref().filter(|c| !c.done).map(|c| c.at),
            ]
            .into_iter()
            .flatten()
            .min();
            self.timers.schedule(ch.0, next);
        }
    }

    /// Hands `ch`'s endpoint events to the endpoint; removes the connection once drained.
    fn endpoint_events(&mut self, now: Instant, ch: ConnectionHandle) {
        let mut drained = false;
        while let Some(event) = self
            .conns
            .get_mut(&ch)
            .and_then(|c| c.quic.poll_endpoint_events())
        {
            if event.is_drained() {
                drained = true;
            }
            if let Some(event) = self.endpoint.handle_event(ch, event)
                && let Some(conn) = self.conns.get_mut(&ch)
            {
                conn.quic.handle_event(event);
            }
        }
        if drained {
            // A connection killed by a timer (an idle handshake) drains at once: why it ended
            // is still among its events, which the connection's pass has not polled yet.
            while let Some(event) = self.conns.get_mut(&ch).and_then(|c| c.quic.poll()) {
                if let Event::ConnectionLost { reason } = event {
                    self.lost(now, ch, &reason);
                }
            }
            // Out of the core and the mesh before the handle can be reused for another
            // connection.
            self.leave_core(now, ch);
            self.trunk_gone(now, ch);
            if let Some(conn) = self.conns.remove(&ch)
                && !conn.dialed
            {
                if !conn.connected {
                    self.handshaking = self.handshaking.saturating_sub(1);
                }
                self.admissions.release(conn.ip);
            }
            self.timers.schedule(ch.0, None);
        }
    }

    /// Tells every client the relay is going away (Error ShuttingDown, then a close with that
    /// code) and refuses new ones; the loop ends once [`Plane::is_empty`].
    pub(crate) fn shut_down(&mut self, now: Instant) {
        self.shutting_down = true;
        let all: Vec<ConnectionHandle> = self.conns.handles().collect();
        for ch in all {
            self.request_close(
                now,
                ch,
                Close::Error(ErrorCode::ShuttingDown, "the relay is shutting down".into()),
            );
        }
    }
}

/// Who the core's messages and datagrams go to: a client (its control stream), or a trunk and
/// the stream of one room it subscribed to (datagrams go once per trunk, whatever the room).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    ch: ConnectionHandle,
    room: Option<StreamId>,
}

impl Target {
    fn client(ch: ConnectionHandle) -> Self {
        Self { ch, room: None }
    }
}

/// The core's id for a connection: its quinn-proto handle (the plane takes a connection out of
/// the core before the endpoint may reuse the handle).
fn conn_id(ch: ConnectionHandle) -> ConnId {
    ch.0 as ConnId
}

/// Writes `conn`'s queued control messages to its stream as far as flow control allows, and
/// then, when it is closing, the Error message and the stream's end.
fn write_control(conn: &mut Conn, now: Instant) {
    let Some(stream) = conn.control else {
        return;
    };
    loop {
        if conn.written == conn.unsent.len() {
            conn.unsent.clear();
            conn.written = 0;
            if let Some(msg) = conn.outbox.pop() {
                msg.encode(&mut conn.unsent);
            } else if let Some(closing) = &mut conn.closing
                && !closing.said
            {
                closing.said = true;
                if let Close::Error(code, reason) = &closing.close {
                    Message::Error {
                        code: *code,
                        message: reason.clone(),
                    }
                    .encode(&mut conn.unsent);
                }
                continue;
            } else {
                if let Some(closing) = &mut conn.closing
                    && !closing.done
                    && closing.at > now + CLOSE_LINGER
                {
                    let _ = conn.quic.send_stream(stream).finish();
                    closing.at = now + CLOSE_LINGER;
                }
                return;
            }
        }
        match conn
            .quic
            .send_stream(stream)
            .write(&conn.unsent[conn.written..])
        {
            Ok(n) => conn.written += n,
            Err(quinn_proto::WriteError::Blocked) => return,
            // Stopped or closed: nothing more will be read.
            Err(_) => {
                conn.outbox.clear();
                conn.written = conn.unsent.len();
            }
        }
    }
}

/// Moves `conn`'s queued datagrams into quinn-proto while it has room, oldest first, dropping
/// those gone stale: nothing is handed over at or after its stale limit.
fn fill(conn: &mut Conn, now: Instant, stats: &RelayStats) {
    loop {
        let ready = match conn.holding.take() {
            Some(ready) => ready,
            None => {
                let next = conn.queue.next(now);
                stats.dropped_stale.fetch_add(next.stale as u64, Relaxed);
                match next.ready {
                    Some(ready) => ready,
                    None => return,
                }
            }
        };
        if now >= ready.stale_at {
            stats.dropped_stale.fetch_add(1, Relaxed);
            continue;
        }
        match conn.quic.datagrams().send(ready.datagram, false) {
            Ok(()) => {
                stats.datagrams_forwarded.fetch_add(1, Relaxed);
                stats
                    .observe_delay(now.saturating_duration_since(ready.arrived).as_micros() as u64);
            }
            Err(SendDatagramError::Blocked(datagram)) => {
                conn.holding = Some(Ready { datagram, ..ready });
                return;
            }
            Err(_) => {
                stats.datagrams_send_failed.fetch_add(1, Relaxed);
            }
        }
    }
}

/// What reading a control stream gave.
enum StreamRead {
    /// Bytes, in the read buffer.
    Data,
    /// Nothing now.
    Blocked,
    /// Finished, reset or gone.
    Ended,
}

fn read_stream(quic: &mut quinn_proto::Connection, id: StreamId, into: &mut Vec<u8>) -> StreamRead {
    into.clear();
    let mut stream = quic.recv_stream(id);
    let Ok(mut chunks) = stream.read(true) else {
        return StreamRead::Ended;
    };
    let result = match chunks.next(CONTROL_READ) {
        Ok(Some(chunk)) => {
            into.extend_from_slice(&chunk.bytes);
            StreamRead::Data
        }
        Err(quinn_proto::ReadError::Blocked) => StreamRead::Blocked,
        Ok(None) | Err(quinn_proto::ReadError::Reset(_)) => StreamRead::Ended,
    };
    // Whether flow-control credit must be sent: the connection is polled for transmits in
    // this round anyway.
    let _ = chunks.finalize();
    result
}
