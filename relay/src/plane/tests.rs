//! The batched plane against real quinn-proto clients (TLS, BBR, ACK frequency: the relay's own
//! server configuration) over a simulated link in simulated time: every client on its own
//! address, 1 ms one way, 1 ms steps, the relay given each step's packets as one batch. The
//! checks are on what the clients receive: every sender's datagrams in order, none twice, none
//! later than the stale limit allows.

use super::*;
use crate::cluster::directory::RelayRecord;
use crate::identity::Identity;
use crate::server::server_config;
use crate::stats::DELAY_BUCKETS_US;
use crate::udp_batch::EcnCodepoint;
use bytes::BytesMut;
use natter_proto::media::write_rtp;
use natter_proto::rtp::{AudioLevel, RtpHeader};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;

const RELAY: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4433);
/// A second relay's address, for the cluster tests.
const EDGE: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4434);
const LINK: Duration = Duration::from_millis(1);
const STEP: Duration = Duration::from_millis(1);

/// One UDP datagram on the simulated link.
struct Packet {
    at: Instant,
    from: SocketAddr,
    to: SocketAddr,
    ecn: Option<EcnCodepoint>,
    data: Vec<u8>,
}

/// A participant: its own quinn-proto endpoint and connection, its control stream, and what it
/// heard: (sender's SSRC, sequence number, sent at, received at).
struct Client {
    addr: SocketAddr,
    endpoint: quinn_proto::Endpoint,
    ch: ConnectionHandle,
    conn: quinn_proto::Connection,
    control: Option<StreamId>,
    decoder: FrameDecoder,
    messages: Vec<Message>,
    ssrc: Option<u32>,
    heard: Vec<(u32, u16, Duration, Instant)>,
    closed: Option<ConnectionError>,
    /// The relay it connects to.
    relay: SocketAddr,
    next_seq: u16,
    /// The ECN codepoint of the last packet it sent.
    last_ecn: Option<EcnCodepoint>,
}

/// What one relay round took in and sent out, and when.
#[derive(Debug)]
struct Round {
    at: Instant,
    received: usize,
    sent: usize,
    /// Of those sent, how many carried an ECN codepoint.
    marked: usize,
    destinations: HashSet<SocketAddr>,
}

struct Net {
    plane: Plane,
    clients: Vec<Client>,
    t0: Instant,
    now: Instant,
    flight: Vec<Packet>,
    /// Clients whose packets to the relay are lost (no ACKs: the relay's window to them fills).
    cut: HashSet<usize>,
    client_config: quinn_proto::ClientConfig,
    /// Per relay round: packets received, packets sent, and the distinct destinations.
    rounds: Vec<Round>,
    stale_after: Duration,
    /// The relay's address as the clients dial it. On a wildcard bind its packets leave from
    /// [`RELAY`] (the kernel's choice) unless they name their source.
    dialed: SocketAddr,
    /// Other relays of a cluster with the first (see [`Net::cluster`]).
    edges: Vec<Edge>,
    /// The relay's loops: a packet goes to loop (source port mod `loops`), the kernel's
    /// SO_REUSEPORT hash made predictable.
    loops: usize,
}

/// A second relay on the net, for the cluster's trunks: its plane, address, the client
/// configuration pinned to its certificate, and its directory record.
struct Edge {
    addr: SocketAddr,
    plane: Plane,
    client_config: quinn_proto::ClientConfig,
    record: RelayRecord,
}

/// A relay's plane for the net: its address, cluster membership (secret, id, node), and its
/// directory record and pinned client configuration.
fn relay_plane(
    addr: SocketAddr,
    mesh: Option<(&[u8], &str, u8)>,
    now: Instant,
    tune: impl FnOnce(&mut RelayConfig),
) -> (Plane, quinn_proto::ClientConfig, RelayRecord, Duration) {
    let identity = Identity::generate().expect("a certificate");
    let fingerprint = identity.fingerprint;
    let mut config = RelayConfig::new(vec![addr], identity);
    config.max_per_address = 0;
    tune(&mut config);
    if let Some((secret, _, node)) = mesh {
        config.trunks = Some(crate::cluster::trunk::TrunkConfig {
            secret: secret.to_vec(),
            node,
        });
    }
    let server = server_config(&config).expect("server config");
    let mut core = RelayCore::new("test", config.limits.clone());
    let settings = mesh.map(|(secret, id, node)| {
        core.set_node(node);
        MeshSettings {
            secret: secret.to_vec(),
            id: id.to_string(),
        }
    });
    let record = RelayRecord {
        id: mesh.map_or("lone", |(_, id, _)| id).to_string(),
        addr: addr.to_string(),
        fingerprint: natter_proto::invite::fingerprint_hex(&fingerprint),
        region: "test".into(),
        load: 0,
    };
    let plane = Plane::new(
        &config,
        server,
        core,
        Arc::default(),
        settings,
        now,
        1_000_000,
    );
    let client = natter_loadgen::client_config(fingerprint).expect("client config");
    (plane, client, record, config.stale_after)
}

/// One relay round on the net: the packets for `dialed` among `due` as one batch, the timers,
/// then what the relay sends into `flight`, leaving from `home` unless a packet names its
/// source (as the kernel would choose on a wildcard bind). Returns how many packets it took in
/// and what it sent.
fn relay_round<'a>(
    plane: &mut Plane,
    dialed: SocketAddr,
    home: SocketAddr,
    due: impl IntoIterator<Item = &'a Packet>,
    now: Instant,
    flight: &mut Vec<Packet>,
) -> (usize, SendBatch) {
    let mut out = SendBatch::default();
    let mut received = 0;
    for p in due.into_iter().filter(|p| p.to == dialed) {
        let datagram = Received {
            from: p.from,
            dst_ip: Some(dialed.ip()),
            ecn: p.ecn,
            data: &p.data,
        };
        plane.handle(now, datagram, &mut out);
        received += 1;
    }
    plane.handle_timeouts(now);
    plane.flush(now, &mut out);
    for (route, data) in out.iter() {
        flight.push(Packet {
            at: now + LINK,
            from: SocketAddr::new(route.src_ip.unwrap_or(home.ip()), home.port()),
            to: route.to,
            ecn: route.ecn,
            data: data.to_vec(),
        });
    }
    (received, out)
}

impl Net {
    fn new(tune: impl FnOnce(&mut RelayConfig)) -> Self {
        Self::with_relay(None, tune)
    }

    /// The net around one relay (of a cluster, with `mesh`: secret, id, node).
    fn with_relay(mesh: Option<(&[u8], &str, u8)>, tune: impl FnOnce(&mut RelayConfig)) -> Self {
        let t0 = Instant::now();
        let (plane, client_config, _, stale_after) = relay_plane(RELAY, mesh, t0, tune);
        Self {
            plane,
            clients: Vec::new(),
            t0,
            now: t0,
            flight: Vec::new(),
            cut: HashSet::new(),
            client_config,
            rounds: Vec::new(),
            stale_after,
            dialed: RELAY,
            edges: Vec::new(),
            loops: 1,
        }
    }

    /// Two relays of one cluster: the net's own (id "a", node 1, holding `secret`) and an edge
    /// at [`EDGE`] (id "b", node 2, holding `edge_secret`).
    fn cluster(secret: &[u8], edge_secret: &[u8]) -> Self {
        let mut net = Self::with_relay(Some((secret, "a", 1)), |_| {});
        let (plane, client_config, record, _) =
            relay_plane(EDGE, Some((edge_secret, "b", 2)), net.t0, |_| {});
        net.edges.push(Edge {
            addr: EDGE,
            plane,
            client_config,
            record,
        });
        net
    }

    /// Clients 0 and 1 join `room` on the net's relay, 2 and 3 on the edge; then the directory
    /// tells both relays of the other, and the net runs until trunks could be up.
    fn two_and_two(&mut self, room: &str) {
        for i in 0..4 {
            if i < 2 {
                self.connect();
            } else {
                self.connect_to_edge(0);
            }
            self.join(i, room);
        }
        self.until_welcomed(0..4);
        self.share_room(room);
        self.run(Duration::from_millis(300));
    }

    /// What the directory would tell both relays: each hosts `room` with the other.
    fn share_room(&mut self, room: &str) {
        let edge = &mut self.edges[0];
        let first = RelayRecord {
            id: "a".into(),
            addr: RELAY.to_string(),
            ..edge.record.clone()
        };
        let mut peers = BTreeMap::new();
        peers.insert(room.to_string(), vec![(edge.record.clone(), edge.addr)]);
        self.plane.peers(self.now, peers);
        let mut peers = BTreeMap::new();
        peers.insert(room.to_string(), vec![(first, RELAY)]);
        edge.plane.peers(self.now, peers);
    }

    /// A new client connection (the handshake runs as the net steps).
    fn connect(&mut self) -> usize {
        let (relay, config) = (self.dialed, self.client_config.clone());
        self.connect_to(relay, config)
    }

    /// A new client connection to edge `e`.
    fn connect_to_edge(&mut self, e: usize) -> usize {
        let (relay, config) = (self.edges[e].addr, self.edges[e].client_config.clone());
        self.connect_to(relay, config)
    }

    fn connect_to(&mut self, relay: SocketAddr, config: quinn_proto::ClientConfig) -> usize {
        let i = self.clients.len();
        let addr = SocketAddr::new(RELAY.ip(), 5000 + i as u16);
        let mut endpoint = quinn_proto::Endpoint::new(
            Arc::new(quinn_proto::EndpointConfig::default()),
            None,
            true,
            None,
        );
        let (ch, conn) = endpoint
            .connect(self.now, config, relay, "natter-relay")
            .expect("connect");
        self.clients.push(Client {
            addr,
            endpoint,
            ch,
            conn,
            control: None,
            decoder: FrameDecoder::new(),
            messages: Vec::new(),
            ssrc: None,
            heard: Vec::new(),
            closed: None,
            relay,
            next_seq: 0,
            last_ecn: None,
        });
        i
    }

    /// Client `i` opens its control stream (once the handshake allows streams) and says Hello
    /// and Join.
    fn join(&mut self, i: usize, room: &str) {
        let mut opened = self.clients[i].conn.streams().open(Dir::Bi);
        for _ in 0..500 {
            if opened.is_some() {
                break;
            }
            self.step();
            opened = self.clients[i].conn.streams().open(Dir::Bi);
        }
        let id = opened.expect("a stream");
        let c = &mut self.clients[i];
        let mut out = Vec::new();
        Message::Hello {
            versions: vec![natter_proto::PROTOCOL_VERSION],
            software: "test".into(),
        }
        .encode(&mut out);
        Message::Join {
            room: room.into(),
            name: format!("p{i}"),
            token: None,
            flags: 0,
        }
        .encode(&mut out);
        assert_eq!(c.conn.send_stream(id).write(&out), Ok(out.len()));
        c.control = Some(id);
    }

    /// Client `i` sends its next media datagram (its send time in the payload).
    fn speak(&mut self, i: usize) {
        let sent = self.now - self.t0;
        let c = &mut self.clients[i];
        let header = RtpHeader {
            marker: false,
            payload_type: natter_proto::OPUS_PAYLOAD_TYPE,
            sequence: c.next_seq,
            timestamp: u32::from(c.next_seq) * 960,
            ssrc: c.ssrc.expect("joined"),
            audio_level: Some(AudioLevel {
                voice: true,
                level: 30,
            }),
        };
        let mut payload = (sent.as_micros() as u64).to_be_bytes().to_vec();
        payload.resize(80, 0);
        let mut datagram = Vec::new();
        write_rtp(&header, &payload, &mut datagram);
        c.next_seq += 1;
        c.conn
            .datagrams()
            .send(Bytes::from(datagram), false)
            .expect("room to send");
    }

    /// Advances the simulated time by `d`, one step at a time.
    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        while self.now < end {
            self.step();
        }
    }

    fn step(&mut self) {
        self.now += STEP;
        let now = self.now;
        let (due, later): (Vec<Packet>, Vec<Packet>) = std::mem::take(&mut self.flight)
            .into_iter()
            .partition(|p| p.at <= now);
        self.flight = later;
        // The relay: this step's packets as one batch, then one round; with several loops,
        // one batch and round per loop (its clients' packets), one loop after the other, as
        // the loops take the shared plane's lock in turn.
        let loops = self.loops;
        for l in 0..loops {
            let (received, out) = relay_round(
                &mut self.plane,
                self.dialed,
                RELAY,
                due.iter()
                    .filter(|p| usize::from(p.from.port()) % loops == l),
                now,
                &mut self.flight,
            );
            self.rounds.push(Round {
                at: now,
                received,
                sent: out.len(),
                marked: out.iter().filter(|(r, _)| r.ecn.is_some()).count(),
                destinations: out.iter().map(|(r, _)| r.to).collect(),
            });
        }
        // The other relays, likewise.
        for edge in &mut self.edges {
            relay_round(
                &mut edge.plane,
                edge.addr,
                edge.addr,
                &due,
                now,
                &mut self.flight,
            );
        }
        // The clients.
        for (i, c) in self.clients.iter_mut().enumerate() {
            for p in due.iter().filter(|p| p.to == c.addr) {
                let mut buf = Vec::new();
                let ecn = p
                    .ecn
                    .and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8));
                if let Some(DatagramEvent::ConnectionEvent(_, event)) = c.endpoint.handle(
                    now,
                    p.from,
                    None,
                    ecn,
                    BytesMut::from(&p.data[..]),
                    &mut buf,
                ) {
                    c.conn.handle_event(event);
                }
            }
            let packets = c.poll(now);
            if !self.cut.contains(&i) {
                let to = c.relay;
                self.flight
                    .extend(packets.into_iter().map(|(data, ecn)| Packet {
                        at: now + LINK,
                        from: c.addr,
                        to,
                        ecn,
                        data,
                    }));
            }
        }
    }

    /// `n` new clients join one room; the net settles once all are welcomed.
    fn one_room(&mut self, n: usize) {
        let first = self.clients.len();
        for _ in 0..n {
            self.connect();
        }
        for i in first..first + n {
            self.join(i, "room");
        }
        self.until_welcomed(first..first + n);
        self.run(Duration::from_millis(100));
    }

    /// Steps until every client in `which` has been welcomed.
    fn until_welcomed(&mut self, which: impl Iterator<Item = usize> + Clone) {
        for _ in 0..500 {
            if which.clone().all(|i| self.clients[i].ssrc.is_some()) {
                return;
            }
            self.step();
        }
        panic!("not everyone was welcomed");
    }

    /// `speakers` each send a frame every 20 ms, `frames` times, then the net settles.
    fn talk(&mut self, speakers: std::ops::Range<usize>, frames: usize) {
        for _ in 0..frames {
            for i in speakers.clone() {
                self.speak(i);
            }
            self.run(Duration::from_millis(20));
        }
        self.run(Duration::from_millis(100));
    }

    /// Every member of `room` heard every other member's `frames` frames, in order.
    fn all_heard(&self, room: std::ops::Range<usize>, frames: usize) {
        for i in room.clone() {
            for from in room.clone().filter(|f| *f != i) {
                assert_eq!(self.heard_in_order(i, from), frames, "{i} from {from}");
            }
        }
    }

    /// Checks what client `i` heard from client `from`: in order, never twice, never later
    /// than the stale limit allows; returns how many.
    fn heard_in_order(&self, i: usize, from: usize) -> usize {
        let (heard, late) = self.heard(i, from);
        assert_eq!(
            late, 0,
            "client {i} heard {from}'s datagrams past the stale limit"
        );
        heard
    }

    /// What client `i` heard from client `from`, checked to be in order and never twice: how
    /// many, and how many of them later than the stale limit allows.
    fn heard(&self, i: usize, from: usize) -> (usize, usize) {
        let ssrc = self.clients[from].ssrc.expect("joined");
        let heard: Vec<&(u32, u16, Duration, Instant)> = self.clients[i]
            .heard
            .iter()
            .filter(|h| h.0 == ssrc)
            .collect();
        for pair in heard.windows(2) {
            assert!(
                pair[0].1 < pair[1].1,
                "client {i} heard {from}'s {} then {}",
                pair[0].1,
                pair[1].1
            );
        }
        // Sender → relay, the stale limit at most, relay → listener (plus a step each).
        let limit = self.stale_after + 2 * (LINK + STEP);
        let late = heard
            .iter()
            .filter(|(_, _, sent, at)| (*at - self.t0) - *sent >= limit)
            .count();
        (heard.len(), late)
    }
}

impl Client {
    /// Runs the client's timers and events; returns the packets it sends, with their ECN
    /// codepoints.
    fn poll(&mut self, now: Instant) -> Vec<(Vec<u8>, Option<EcnCodepoint>)> {
        if self.conn.poll_timeout().is_some_and(|t| t <= now) {
            self.conn.handle_timeout(now);
        }
        while let Some(event) = self.conn.poll_endpoint_events() {
            if let Some(event) = self.endpoint.handle_event(self.ch, event) {
                self.conn.handle_event(event);
            }
        }
        while let Some(event) = self.conn.poll() {
            if let Event::ConnectionLost { reason } = event {
                self.closed = Some(reason);
            }
        }
        while let Some(d) = self.conn.datagrams().recv() {
            let rtp = natter_proto::media::Datagram::parse(&d)
                .expect("a media datagram")
                .rtp()
                .expect("RTP");
            let sent = u64::from_be_bytes(rtp.payload[..8].try_into().expect("8 bytes"));
            self.heard.push((
                rtp.header.ssrc,
                rtp.header.sequence,
                Duration::from_micros(sent),
                now,
            ));
        }
        if let Some(id) = self.control {
            let mut stream = self.conn.recv_stream(id);
            if let Ok(mut chunks) = stream.read(true) {
                while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
                    self.decoder.push(&chunk.bytes);
                }
                let _ = chunks.finalize();
            }
            while let Some(Ok(msg)) = self.decoder.next_message() {
                if let Message::Welcome { ssrc, .. } = &msg {
                    self.ssrc = Some(*ssrc);
                }
                self.messages.push(msg);
            }
        }
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while let Some(t) = self.conn.poll_transmit(now, 10, &mut buf) {
            let segment = t.segment_size.unwrap_or(t.size);
            let ecn = t.ecn.and_then(|e| EcnCodepoint::from_bits(e as u8));
            self.last_ecn = ecn;
            out.extend(buf[..t.size].chunks(segment).map(|p| (p.to_vec(), ecn)));
            buf.clear();
        }
        out
    }
}

/// Everyone in rooms of five speaks at the same instant every 20 ms: each relay round takes
/// a batch from many connections and sends one batch to many; every listener hears every
/// other member of its room, completely and in order.
#[test]
fn a_round_carries_packets_for_many_connections_in_order() {
    let mut net = Net::new(|_| {});
    let n = 20;
    for _ in 0..n {
        net.connect();
    }
    for i in 0..n {
        net.join(i, &format!("room-{}", i / 5));
    }
    net.until_welcomed(0..n);
    net.run(Duration::from_millis(100));
    net.rounds.clear();
    let frames = 50;
    net.talk(0..n, frames);
    for room in 0..n / 5 {
        net.all_heard(room * 5..room * 5 + 5, frames);
    }
    // Nobody hears another room.
    assert!(net.clients.iter().all(|c| c.heard.len() == 4 * frames));
    // The rounds that forwarded a frame sent the copies for all twenty listeners at once
    // (each listener's four in one QUIC packet: quinn-proto packs the datagrams a connection
    // has queued when it builds the packet).
    let widest = net.rounds.iter().map(|r| r.destinations.len()).max();
    assert_eq!(widest, Some(n));
    assert!(net.rounds.iter().any(|r| r.sent >= n && r.received >= n));
}

/// One listener stops acknowledging (its packets to the relay are lost), so the relay's
/// congestion window towards it fills while the others' do not: the others hear everything in
/// order, and what still reaches the cut-off listener is in order and never past the stale
/// limit; the rest is dropped as stale, not queued.
#[test]
fn a_full_congestion_window_holds_back_only_its_own_connection() {
    // CUBIC: its initial window (about 12 packets) fills within the test; BBR's starts far
    // larger.
    let mut net = Net::new(|c| c.congestion = crate::server::Congestion::Cubic);
    net.one_room(5);
    net.cut.insert(0);
    let frames = 150;
    net.talk(1..5, frames);
    net.all_heard(1..5, frames);
    // In order and never twice (`heard` checks that); how late is discussed below.
    let reached: usize = (1..5).map(|from| net.heard(0, from).0).sum();
    let stats = net.plane.stats.snapshot();
    assert!(
        reached < 4 * frames && stats.dropped_stale > 0,
        "the cut-off listener's window never filled: {reached} heard, {} stale",
        stats.dropped_stale
    );
    // The plane handed nothing to quinn-proto at or past the stale limit (the relay-added
    // delay histogram's buckets end at 60 ms, the limit)...
    let limit = DELAY_BUCKETS_US
        .iter()
        .position(|b| *b == 60_000)
        .expect("a 60 ms bucket");
    assert_eq!(stats.delay_buckets[limit + 1..].iter().sum::<u64>(), 0);
    // ...but what quinn-proto already held (its datagram buffer, 1.5 KB) when the window
    // closed goes out when a probe reopens it, late (here 41 of the 198 that reached the
    // listener): quinn-proto cannot take a datagram back, a limit of the plane
    // (docs/BENCHMARKS.md, "The batched data plane").
}

/// A connection that never says Hello reaches its hello deadline in the very round that takes
/// in a batch of the room's media (the listeners' own QUIC timers come due in such rounds too):
/// that round closes it, with HelloRequired, and forwards the batch; the room's audio goes on
/// complete and in order.
#[test]
fn a_deadline_expiring_mid_batch_closes_only_its_connection() {
    let hello = Duration::from_millis(300);
    let mut net = Net::new(|c| c.hello_timeout = hello);
    for _ in 0..4 {
        net.connect();
    }
    let silent = net.connect();
    for i in 0..4 {
        net.join(i, "room");
    }
    net.until_welcomed(0..4);
    // The silent connection's deadline on the relay (the one connection without a control
    // stream); time moves in whole steps, so it falls on a round.
    let deadline = net
        .plane
        .conns
        .0
        .iter()
        .flatten()
        .find(|c| c.control.is_none())
        .and_then(|c| c.deadline)
        .expect("a deadline");
    // Everyone speaks so that the frames reach the relay in the deadline's round (a client
    // sends what it queued at its next step, and the link takes LINK).
    assert!(
        net.now + STEP + LINK < deadline,
        "the deadline came too soon"
    );
    net.run(deadline - STEP - LINK - net.now);
    let frames = 40;
    net.talk(0..4, frames);
    net.all_heard(0..4, frames);
    let round = net
        .rounds
        .iter()
        .find(|r| r.at == deadline)
        .expect("the deadline's round");
    let silent_addr = net.clients[silent].addr;
    // The batch came in, and the same round sent the close and every listener its copies.
    assert!(
        round.received >= 4
            && round.destinations.contains(&silent_addr)
            && round.destinations.len() == 5,
        "{round:?}"
    );
    assert!(net.clients[..4].iter().all(|c| c.closed.is_none()));
    match &net.clients[silent].closed {
        Some(ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(
                close.error_code,
                VarInt::from(ErrorCode::HelloRequired.to_u16())
            );
        }
        other => panic!("the silent connection ended with {other:?}"),
    }
    // Closed, drained and forgotten.
    assert_eq!(net.plane.conns.len(), 4);
}

/// A relay on a wildcard bind, dialled at an address that is not the one the kernel would
/// send from: the handshake completes (the relay's packets leave from the dialled address;
/// the client's QUIC drops packets from any other), and ECN stays on both ways through a call
/// (each side reports the marks it received in its ACKs; a side whose ACKs lack them makes
/// the other stop marking).
#[test]
fn replies_leave_from_the_dialled_address_and_ecn_stays_on() {
    let mut net = Net::new(|_| {});
    net.dialed = SocketAddr::new(IpAddr::from([127, 0, 0, 2]), RELAY.port());
    let n = 5;
    for i in 0..n {
        net.connect();
        net.join(i, "room");
    }
    net.until_welcomed(0..n);
    net.talk(0..n, 50);
    net.all_heard(0..n, 50);
    let end = net.rounds.last().expect("rounds").at;
    let last: Vec<&Round> = net
        .rounds
        .iter()
        .filter(|r| r.at + Duration::from_millis(200) > end && r.sent > 0)
        .collect();
    assert!(!last.is_empty());
    for r in last {
        assert_eq!(r.marked, r.sent, "the relay stopped marking: {r:?}");
    }
    for c in &net.clients {
        assert_eq!(
            c.last_ecn,
            Some(EcnCodepoint::Ect0),
            "a client stopped marking"
        );
    }
}

/// A handshake whose client goes silent after its first packet ends at the idle timeout and is
/// counted as a timed-out handshake (quinn-proto drains such a connection at once: why it
/// ended must be read before it is dropped).
#[test]
fn a_silent_handshake_times_out_and_is_counted() {
    let stats = Arc::new(RelayStats::default());
    let mut net = Net::new(|c| c.idle_timeout = Duration::from_secs(1));
    net.plane.stats = stats.clone();
    let i = net.connect();
    net.step();
    net.step();
    net.cut.insert(i);
    assert_eq!(net.plane.occupancy().handshakes, 1);
    net.run(Duration::from_secs(3));
    assert_eq!(net.plane.occupancy().handshakes, 0);
    assert!(net.plane.is_empty());
    let timeouts = stats.snapshot().handshake_failures[HandshakeFailure::Timeout as usize];
    assert_eq!(timeouts, 1);
}

/// A room over two relays of a cluster: two members on each, and both relays told by "the
/// directory" at once that the other hosts the room (so both dial: the trunk the lower id
/// dialled is kept on both sides). Everyone hears the other three, in order, once — the far
/// two through the trunk — and hears of all of them on its control stream.
#[test]
fn a_room_spans_two_relays_over_a_trunk() {
    let secret = b"a cluster secret of 32 bytes....";
    let mut net = Net::cluster(secret, secret);
    net.two_and_two("room");
    net.talk(0..4, 50);
    net.all_heard(0..4, 50);
    for c in &net.clients {
        let mut known: HashSet<u64> = HashSet::new();
        for m in &c.messages {
            match m {
                Message::Welcome { roster, .. } => known.extend(roster.iter().map(|p| p.id)),
                Message::ParticipantJoined(p) => {
                    known.insert(p.id);
                }
                _ => {}
            }
        }
        assert_eq!(known.len(), 4, "{:?}", c.messages);
    }
    assert_eq!(net.plane.mesh.as_ref().map(|m| m.trunk_count()), Some(1));
    assert_eq!(
        net.edges[0].plane.mesh.as_ref().map(|m| m.trunk_count()),
        Some(1)
    );
}

/// A relay that does not hold the cluster's secret gets no trunk: its members and the
/// others' never hear each other, and both rooms go on.
#[test]
fn a_relay_without_the_secret_gets_no_trunk() {
    let mut net = Net::cluster(
        b"a cluster secret of 32 bytes....",
        b"another secret of 32 bytes......",
    );
    net.two_and_two("room");
    net.talk(0..4, 20);
    assert_eq!(net.heard_in_order(0, 1), 20);
    assert_eq!(net.heard_in_order(2, 3), 20);
    assert_eq!(net.heard(0, 2), (0, 0));
    assert_eq!(net.heard(3, 1), (0, 0));
    assert_eq!(net.plane.mesh.as_ref().map(|m| m.trunk_count()), Some(0));
}

/// Two loops as the shared plane sees them: each step the packets of clients on even ports and
/// those on odd ports come in two rounds, one after the other (the loops taking the plane's
/// lock in turn), so the room's members are split over the loops; then a client moves to a
/// port of the other loop (NAT rebinding). Everyone hears everyone, in order, once, before and
/// after the move, and no connection ends.
#[test]
fn two_loops_in_turn_carry_a_room_across_them_and_a_client_moving_between_them() {
    let mut net = Net::new(|_| {});
    net.loops = 2;
    net.one_room(5);
    let frames = 50;
    net.talk(0..5, frames);
    net.all_heard(0..5, frames);
    assert!(net.clients.iter().all(|c| c.heard.len() == 4 * frames));
    // Client 0 is on port 5000 (loop 0); its new port 6001 is loop 1's.
    // It speaks from there (a PING) before the room does: what the relay sent to the old port
    // before it saw the new one is lost, as after any NAT rebinding, whatever the loops.
    net.clients[0].addr = SocketAddr::new(RELAY.ip(), 6001);
    net.clients[0].conn.ping();
    net.run(Duration::from_millis(20));
    net.talk(0..5, frames);
    net.all_heard(0..5, 2 * frames);
    assert!(net.clients.iter().all(|c| c.heard.len() == 8 * frames));
    assert!(net.clients.iter().all(|c| c.closed.is_none()));
}
