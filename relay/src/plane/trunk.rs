//! The batched plane's part of a cluster (`crate::cluster::trunk` describes the protocol):
//! trunks are connections of the loop's own endpoint, dialled (the loop is their client) or
//! accepted (ALPN `natter-trunk/1`); the proof exchange, the room streams and the trunk's
//! media run in the same rounds as the clients'. What the directory says (which relays host
//! our rooms, the cluster's edges) reaches the loop as a [`Command`] from the directory task.
//!
//! A room a trunk subscribed to is a [`Target`] with the room stream: the core's messages for
//! it go to that stream, its datagrams to the trunk's queue (once per trunk, whatever the room).

use super::{Conn, Plane, StreamRead, Target, conn_id, read_stream};
use crate::cluster::directory::RelayRecord;
use crate::cluster::trunk::{
    AUTH_TIMEOUT, EXPORTER_LABEL, MAX_ROOM_STREAMS, parse_proof_frame, proof_frame, sign, verify,
};
use crate::core::Close;
use natter_proto::control::{ClusterEdge, ErrorCode, FrameDecoder, Message};
use quinn_proto::{ConnectionHandle, Dir, Event, StreamEvent, StreamId, VarInt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Instant;
use tracing::{debug, info, warn};

/// What the directory task tells the loop.
#[derive(Debug)]
pub(crate) enum Command {
    /// For each room with local members, the other relays hosting it (their records, with the
    /// address each resolved to): trunks and room streams that are missing are opened.
    Peers(BTreeMap<String, Vec<(RelayRecord, SocketAddr)>>),
    /// The cluster's live edges: when they change, every client hears the new list.
    Edges(Vec<ClusterEdge>),
}

/// This relay's place in the mesh.
pub(crate) struct MeshSettings {
    pub secret: Vec<u8>,
    /// This relay's id in the cluster.
    pub id: String,
}

/// The loop's trunks.
pub(super) struct Mesh {
    settings: MeshSettings,
    /// Proven trunks by peer id.
    trunks: HashMap<String, ConnectionHandle>,
    /// Peers being dialled.
    dialing: HashMap<String, ConnectionHandle>,
}

impl Mesh {
    pub(super) fn new(settings: MeshSettings) -> Self {
        Self {
            settings,
            trunks: HashMap::new(),
            dialing: HashMap::new(),
        }
    }

    /// Proven trunks, for the tests.
    #[cfg(test)]
    pub(super) fn trunk_count(&self) -> usize {
        self.trunks.len()
    }
}

/// A trunk connection's state beside its QUIC connection.
#[derive(Default)]
pub(super) struct TrunkConn {
    /// Dialled by this relay: the peer expected to answer.
    expected: Option<String>,
    /// The peer's id, once it proved it holds the cluster secret.
    peer: Option<String>,
    /// The stream of the proof exchange, what was read of the peer's proof, what is left to
    /// write of ours.
    proof: Option<StreamId>,
    proof_in: Vec<u8>,
    proof_out: Vec<u8>,
    /// Rooms to subscribe once proven, or once a stream is available.
    pending: Vec<String>,
    /// The room streams this relay writes.
    out: Vec<RoomOut>,
    /// The room streams the peer writes.
    incoming: HashMap<StreamId, RoomIn>,
}

impl TrunkConn {
    /// The peer proved it holds the cluster secret: the trunk carries rooms and media.
    pub(super) fn is_proven(&self) -> bool {
        self.peer.is_some()
    }

    /// Who dialled this trunk: between two trunks to one peer, both relays keep the one the
    /// lower id dialled.
    fn dialer<'a>(&'a self, me: &'a str) -> Option<&'a str> {
        if self.expected.is_some() {
            Some(me)
        } else {
            self.peer.as_deref()
        }
    }
}

/// A room stream this relay writes: the Welcome with its local members, then their news.
struct RoomOut {
    stream: StreamId,
    room: String,
    unsent: Vec<u8>,
    written: usize,
    /// The subscription ended (the room is gone here): finish once written.
    ending: bool,
}

/// A room stream the peer writes.
#[derive(Default)]
struct RoomIn {
    decoder: FrameDecoder,
    room: Option<String>,
    members: HashSet<u64>,
}

/// Most bytes a room stream may have waiting for the peer's flow control before the trunk is
/// closed as stuck (rosters are small; media does not go here).
const ROOM_BACKLOG: usize = 1 << 20;

impl Plane {
    /// The directory says which relays host our rooms: dial the peers without a trunk, and
    /// subscribe the trunks there are to the rooms they lack.
    pub(crate) fn peers(
        &mut self,
        now: Instant,
        rooms: BTreeMap<String, Vec<(RelayRecord, SocketAddr)>>,
    ) {
        let Some(mesh) = &self.mesh else { return };
        let me = mesh.settings.id.clone();
        let mut wanted: BTreeMap<String, (SocketAddr, RelayRecord, Vec<String>)> = BTreeMap::new();
        for (room, relays) in rooms {
            for (record, addr) in relays.into_iter().filter(|(r, _)| r.id != me) {
                wanted
                    .entry(record.id.clone())
                    .or_insert_with(|| (addr, record, Vec::new()))
                    .2
                    .push(room.clone());
            }
        }
        for (peer, (addr, record, rooms)) in wanted {
            let Some(mesh) = &self.mesh else { return };
            if let Some(&ch) = mesh.trunks.get(&peer) {
                for room in rooms {
                    self.subscribe(now, ch, &room);
                }
            } else if !mesh.dialing.contains_key(&peer) {
                self.dial(now, &record, addr, rooms);
            }
        }
    }

    /// Dials `record` at `addr`, pinned to its fingerprint; `rooms` are subscribed once both
    /// sides proved they belong to the cluster.
    fn dial(&mut self, now: Instant, record: &RelayRecord, addr: SocketAddr, rooms: Vec<String>) {
        let Some(mesh) = &mut self.mesh else { return };
        let config = match natter_proto::invite::parse_fingerprint(&record.fingerprint)
            .map_err(|e| e.to_string())
            .and_then(crate::cluster::trunk::client_config)
        {
            Ok(config) => config,
            Err(e) => {
                warn!(peer = %record.id, error = %e, "cannot open a trunk");
                return;
            }
        };
        let (ch, quic) = match self.endpoint.connect(now, config, addr, "natter-relay") {
            Ok(c) => c,
            Err(e) => {
                warn!(peer = %record.id, error = %e, "cannot open a trunk");
                return;
            }
        };
        mesh.dialing.insert(record.id.clone(), ch);
        let mut conn = Conn::new(quic, addr.ip(), &self.settings, true);
        conn.deadline = Some(now + AUTH_TIMEOUT);
        conn.trunk = Some(Box::new(TrunkConn {
            expected: Some(record.id.clone()),
            pending: rooms,
            ..TrunkConn::default()
        }));
        self.conns.insert(ch, conn);
        self.touch(ch);
    }

    /// A connection finished its handshake with the trunk ALPN (accepted), or one this relay
    /// dialled did: the proof exchange starts.
    pub(super) fn trunk_connected(&mut self, now: Instant, ch: ConnectionHandle) {
        let Some(mesh) = &self.mesh else {
            // No cluster secret here: nobody is a member.
            return self.refuse(now, ch);
        };
        let me = mesh.settings.id.clone();
        let secret = mesh.settings.secret.clone();
        let Some(conn) = self.conns.get_mut(&ch) else {
            return;
        };
        conn.deadline = Some(now + AUTH_TIMEOUT);
        let trunk = conn.trunk.get_or_insert_with(Box::default);
        if trunk.expected.is_none() {
            // The server configuration allows a client one stream; a peer needs one per room.
            conn.quic
                .set_max_concurrent_streams(Dir::Uni, VarInt::from_u32(MAX_ROOM_STREAMS));
            return;
        }
        // The dialler speaks first.
        let Some(stream) = conn.quic.streams().open(Dir::Bi) else {
            return self.refuse(now, ch);
        };
        let Some(mine) = keying(&mut conn.quic, "dialer").map(|k| sign(&secret, &k, &me)) else {
            return self.refuse(now, ch);
        };
        trunk.proof = Some(stream);
        trunk.proof_out = proof_frame(&me, &mine).unwrap_or_default();
    }

    /// Closes `ch` as not a member of the cluster.
    pub(super) fn refuse(&mut self, now: Instant, ch: ConnectionHandle) {
        warn!(conn = ch.0, "refused a trunk: no valid cluster proof");
        self.request_close(
            now,
            ch,
            Close::Error(
                ErrorCode::TokenInvalid,
                "not a member of this cluster".into(),
            ),
        );
    }

    /// An event of a trunk connection (not Connected or ConnectionLost).
    pub(super) fn trunk_event(&mut self, now: Instant, ch: ConnectionHandle, event: Event) {
        match event {
            Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => {
                let Some(conn) = self.conns.get_mut(&ch) else {
                    return;
                };
                let Some(id) = conn.quic.streams().accept(Dir::Bi) else {
                    return;
                };
                if let Some(trunk) = &mut conn.trunk
                    && trunk.proof.is_none()
                    && trunk.expected.is_none()
                {
                    trunk.proof = Some(id);
                    self.read_proof(now, ch);
                }
            }
            Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => {
                let Some(conn) = self.conns.get_mut(&ch) else {
                    return;
                };
                let Some(trunk) = conn.trunk.as_mut().filter(|t| t.is_proven()) else {
                    return;
                };
                let mut opened = Vec::new();
                while let Some(id) = conn.quic.streams().accept(Dir::Uni) {
                    trunk.incoming.insert(id, RoomIn::default());
                    opened.push(id);
                }
                for id in opened {
                    self.read_room(now, ch, id);
                }
            }
            Event::Stream(StreamEvent::Readable { id }) => {
                let proof = self
                    .conns
                    .get(&ch)
                    .and_then(|c| c.trunk.as_ref())
                    .is_some_and(|t| t.proof == Some(id));
                if proof {
                    self.read_proof(now, ch);
                } else {
                    self.read_room(now, ch, id);
                }
            }
            Event::Stream(StreamEvent::Available { dir: Dir::Uni }) => {
                self.subscribe_pending(now, ch);
            }
            Event::DatagramReceived => self.receive_datagrams(now, ch),
            _ => {}
        }
    }

    /// Reads the peer's proof; once it checks out, answers (the acceptor) and the trunk opens.
    fn read_proof(&mut self, now: Instant, ch: ConnectionHandle) {
        let Some(mesh) = &self.mesh else { return };
        let (me, secret) = (mesh.settings.id.clone(), mesh.settings.secret.clone());
        let Some(conn) = self.conns.get_mut(&ch) else {
            return;
        };
        let Some(trunk) = conn.trunk.as_mut() else {
            return;
        };
        let Some(stream) = trunk.proof.filter(|_| trunk.peer.is_none()) else {
            return;
        };
        // A proof frame is at most 1 + 255 + 32 bytes: reading stops past that.
        while trunk.proof_in.len() <= 1 + 255 + 32
            && let StreamRead::Data = read_stream(&mut conn.quic, stream, &mut self.read)
        {
            trunk.proof_in.extend_from_slice(&self.read);
        }
        let Some(frame) = parse_proof_frame(&trunk.proof_in) else {
            if trunk.proof_in.len() > 1 + 255 + 32 {
                self.refuse(now, ch);
            }
            return;
        };
        let dialed = trunk.expected.is_some();
        let (their_side, my_side) = if dialed {
            ("acceptor", "dialer")
        } else {
            ("dialer", "acceptor")
        };
        let valid = frame.filter(|(peer, got)| {
            trunk.expected.as_ref().is_none_or(|e| e == peer)
                && keying(&mut conn.quic, their_side)
                    .is_some_and(|k| verify(&secret, &k, peer, got))
        });
        let Some((peer, _)) = valid else {
            return self.refuse(now, ch);
        };
        if !dialed {
            let Some(mine) = keying(&mut conn.quic, my_side).map(|k| sign(&secret, &k, &me)) else {
                return self.refuse(now, ch);
            };
            trunk.proof_out = proof_frame(&me, &mine).unwrap_or_default();
        }
        self.trunk_open(now, ch, peer);
    }

    /// The peer proved it belongs: the trunk carries rooms from now on.
    fn trunk_open(&mut self, now: Instant, ch: ConnectionHandle, peer: String) {
        let Some(mesh) = &mut self.mesh else { return };
        let me = mesh.settings.id.clone();
        let Some(conn) = self.conns.get_mut(&ch) else {
            return;
        };
        let Some(trunk) = conn.trunk.as_mut() else {
            return;
        };
        trunk.peer = Some(peer.clone());
        conn.deadline = None;
        let dialer = trunk.dialer(&me).unwrap_or_default().to_string();
        let remote = conn.quic.remote_address();
        if mesh.dialing.get(&peer) == Some(&ch) {
            mesh.dialing.remove(&peer);
        }
        if let Some(&old) = mesh.trunks.get(&peer)
            && old != ch
        {
            // Two at once: keep the one the lower id dialled, on both sides.
            let lower = me.as_str().min(peer.as_str()).to_string();
            let old_dialer = self
                .conns
                .get(&old)
                .and_then(|c| c.trunk.as_ref())
                .and_then(|t| t.dialer(&me).map(str::to_string));
            let keep_old = old_dialer.as_deref() == Some(lower.as_str()) || dialer != lower;
            let drop = if keep_old { ch } else { old };
            self.close_duplicate(now, drop);
            if keep_old {
                return;
            }
        }
        if let Some(mesh) = &mut self.mesh {
            mesh.trunks.insert(peer.clone(), ch);
        }
        info!(%peer, %remote, "trunk open");
        self.subscribe_pending(now, ch);
        // Room streams the peer opened while its proof was on its way.
        self.trunk_event(
            now,
            ch,
            Event::Stream(StreamEvent::Opened { dir: Dir::Uni }),
        );
        self.touch(ch);
    }

    fn close_duplicate(&mut self, now: Instant, ch: ConnectionHandle) {
        self.trunk_gone(now, ch);
        if let Some(conn) = self.conns.get_mut(&ch) {
            conn.quic
                .close(now, VarInt::from_u32(0), b"duplicate trunk"[..].into());
            self.touch(ch);
        }
    }

    /// Subscribes trunk `ch` to the rooms that waited for its proof or for stream credit.
    fn subscribe_pending(&mut self, now: Instant, ch: ConnectionHandle) {
        let pending = self
            .conns
            .get_mut(&ch)
            .and_then(|c| c.trunk.as_mut())
            .map(|t| std::mem::take(&mut t.pending))
            .unwrap_or_default();
        for room in pending {
            self.subscribe(now, ch, &room);
        }
    }

    /// Subscribes trunk `ch` to `room`'s local traffic, opening the room's stream, unless it is
    /// subscribed already or the room has no local member.
    fn subscribe(&mut self, now: Instant, ch: ConnectionHandle, room: &str) {
        let id = conn_id(ch);
        if self.core.trunk_subscribed(id, room) || !self.core.hosts(room) {
            return;
        }
        let Some(conn) = self.conns.get_mut(&ch) else {
            return;
        };
        let Some(trunk) = conn.trunk.as_mut() else {
            return;
        };
        if trunk.peer.is_none() || conn.closing.is_some() {
            if !trunk.pending.iter().any(|r| r == room) {
                trunk.pending.push(room.to_string());
            }
            return;
        }
        let Some(stream) = conn.quic.streams().open(Dir::Uni) else {
            // No stream credit now: StreamEvent::Available brings it back.
            trunk.pending.push(room.to_string());
            return;
        };
        trunk.out.push(RoomOut {
            stream,
            room: room.to_string(),
            unsent: Vec::new(),
            written: 0,
            ending: false,
        });
        let target = Target {
            ch,
            room: Some(stream),
        };
        match self.core.trunk_subscribe(id, target, room) {
            Some((to, welcome)) => {
                debug!(room, "trunk subscribed");
                self.tell(now, to, welcome);
            }
            None => self.end_room_stream(ch, stream),
        }
        self.touch(ch);
    }

    /// Queues `msg` on trunk `ch`'s room stream `stream`.
    pub(super) fn send_room(
        &mut self,
        now: Instant,
        ch: ConnectionHandle,
        stream: StreamId,
        msg: &Message,
    ) {
        let Some(out) = self
            .conns
            .get_mut(&ch)
            .and_then(|c| c.trunk.as_mut())
            .and_then(|t| t.out.iter_mut().find(|o| o.stream == stream))
        else {
            return;
        };
        msg.encode(&mut out.unsent);
        if out.unsent.len() - out.written > ROOM_BACKLOG {
            warn!(
                conn = ch.0,
                "a trunk does not read its room streams: closing it"
            );
            self.request_close(
                now,
                ch,
                Close::Error(ErrorCode::SlowReader, "room stream backlog".into()),
            );
            return;
        }
        self.touch(ch);
    }

    fn end_room_stream(&mut self, ch: ConnectionHandle, stream: StreamId) {
        if let Some(out) = self
            .conns
            .get_mut(&ch)
            .and_then(|c| c.trunk.as_mut())
            .and_then(|t| t.out.iter_mut().find(|o| o.stream == stream))
        {
            out.ending = true;
        }
        self.touch(ch);
    }

    /// After rooms changed: the room streams whose subscription the core ended (the room went
    /// away here) are finished, so the peer drops what it learnt through them.
    pub(super) fn end_subscriptions(&mut self) {
        let Some(mesh) = &self.mesh else { return };
        let trunks: Vec<ConnectionHandle> = mesh.trunks.values().copied().collect();
        for ch in trunks {
            let ended: Vec<StreamId> = self
                .conns
                .get(&ch)
                .and_then(|c| c.trunk.as_ref())
                .map(|t| {
                    t.out
                        .iter()
                        .filter(|o| !o.ending && !self.core.trunk_subscribed(conn_id(ch), &o.room))
                        .map(|o| o.stream)
                        .collect()
                })
                .unwrap_or_default();
            for stream in ended {
                self.end_room_stream(ch, stream);
            }
        }
    }

    /// Reads one of the peer's room streams: its members of the room, then their news.
    fn read_room(&mut self, now: Instant, ch: ConnectionHandle, stream: StreamId) {
        loop {
            let Some(conn) = self.conns.get_mut(&ch) else {
                return;
            };
            let Some(trunk) = conn.trunk.as_mut().filter(|t| t.is_proven()) else {
                return;
            };
            let Some(room_in) = trunk.incoming.get_mut(&stream) else {
                return;
            };
            let msg = match room_in.decoder.next_message() {
                Some(Ok(msg)) => msg,
                Some(Err(_)) => {
                    warn!("malformed room stream from a trunk");
                    self.request_close(
                        now,
                        ch,
                        Close::Error(ErrorCode::ProtocolViolation, "bad room stream".into()),
                    );
                    return;
                }
                None => match read_stream(&mut conn.quic, stream, &mut self.read) {
                    StreamRead::Data => {
                        room_in.decoder.push(&self.read);
                        continue;
                    }
                    StreamRead::Blocked => return,
                    StreamRead::Ended => {
                        // The peer has no more members in the room.
                        let Some(room_in) = trunk.incoming.remove(&stream) else {
                            return;
                        };
                        if let Some(room) = room_in.room {
                            for id in room_in.members {
                                let notices = self.core.remote_left(conn_id(ch), &room, id);
                                self.tell_all(now, notices);
                            }
                            self.subs_dirty = true;
                        }
                        return;
                    }
                },
            };
            let trunk_id = conn_id(ch);
            let known = room_in.room.clone();
            let notices = match (&known, msg) {
                (
                    None,
                    Message::Welcome {
                        room: r, roster, ..
                    },
                ) => {
                    let mut notices = Vec::new();
                    let mut joined = Vec::new();
                    for p in roster {
                        let id = p.id;
                        match self.core.remote_joined(trunk_id, &r, p) {
                            Ok(n) => {
                                joined.push(id);
                                notices.extend(n);
                            }
                            Err(e) => warn!(error = %e, "refused a remote member"),
                        }
                    }
                    if let Some(room_in) = self.room_in(ch, stream) {
                        room_in.members.extend(joined);
                        room_in.room = Some(r);
                    }
                    notices
                }
                (Some(r), Message::ParticipantJoined(p)) => {
                    let id = p.id;
                    match self.core.remote_joined(trunk_id, r, p) {
                        Ok(n) => {
                            if let Some(room_in) = self.room_in(ch, stream) {
                                room_in.members.insert(id);
                            }
                            n
                        }
                        Err(e) => {
                            warn!(error = %e, "refused a remote member");
                            Vec::new()
                        }
                    }
                }
                (Some(r), Message::ParticipantLeft { id }) => {
                    if let Some(room_in) = self.room_in(ch, stream) {
                        room_in.members.remove(&id);
                    }
                    self.subs_dirty = true;
                    self.core.remote_left(trunk_id, r, id)
                }
                (Some(r), Message::ChatMessage { id, text }) => {
                    self.core.remote_chat(trunk_id, r, id, text)
                }
                (Some(r), Message::MuteChanged { id, muted }) => {
                    self.core.remote_muted(trunk_id, r, id, muted)
                }
                _ => Vec::new(),
            };
            self.tell_all(now, notices);
            // The peer has members here: it wants our local traffic too.
            if let Some(room) = self.room_in(ch, stream).and_then(|r| r.room.clone()) {
                self.subscribe(now, ch, &room);
            }
        }
    }

    fn room_in(&mut self, ch: ConnectionHandle, stream: StreamId) -> Option<&mut RoomIn> {
        self.conns
            .get_mut(&ch)?
            .trunk
            .as_mut()?
            .incoming
            .get_mut(&stream)
    }

    pub(super) fn tell_all(&mut self, now: Instant, notices: Vec<(Target, Message)>) {
        for (to, msg) in notices {
            self.tell(now, to, msg);
        }
    }

    /// Trunk `ch` closed or is being dropped: everyone it told of leaves, its subscriptions
    /// end. Does nothing for a client or a second time.
    pub(super) fn trunk_gone(&mut self, now: Instant, ch: ConnectionHandle) {
        let Some(trunk) = self.conns.get_mut(&ch).and_then(|c| c.trunk.as_mut()) else {
            return;
        };
        let peer = trunk.peer.take();
        let expected = trunk.expected.clone();
        trunk.incoming.clear();
        trunk.out.clear();
        if let Some(mesh) = &mut self.mesh {
            for id in peer.iter().chain(expected.iter()) {
                if mesh.trunks.get(id) == Some(&ch) {
                    mesh.trunks.remove(id);
                    info!(peer = %id, "trunk closed");
                }
                if mesh.dialing.get(id) == Some(&ch) {
                    mesh.dialing.remove(id);
                }
            }
        }
        if peer.is_some() {
            let notices = self.core.trunk_closed(conn_id(ch));
            self.tell_all(now, notices);
            self.subs_dirty = true;
        }
    }

    /// The directory listed the cluster's live edges: when the list changed, every client
    /// hears the new one.
    pub(crate) fn set_edges(&mut self, now: Instant, edges: Vec<ClusterEdge>) {
        if self.edges == edges {
            return;
        }
        info!(edges = edges.len(), "the cluster's edges changed");
        self.edges = edges;
        if self.edges.is_empty() {
            return;
        }
        let message = Message::Edges {
            edges: self.edges.clone(),
        };
        let clients: Vec<Target> = self.core.handles().copied().collect();
        for to in clients {
            self.tell(now, to, message.clone());
        }
    }
}

/// Writes what trunk `conn` has for its proof stream and room streams, as far as flow control
/// allows; finishes the proof stream (acceptor) and ended room streams.
pub(super) fn write_trunk(conn: &mut Conn) {
    let Some(trunk) = conn.trunk.as_mut() else {
        return;
    };
    if let Some(stream) = trunk.proof
        && !trunk.proof_out.is_empty()
    {
        match conn.quic.send_stream(stream).write(&trunk.proof_out) {
            Ok(n) => {
                trunk.proof_out.drain(..n);
                if trunk.proof_out.is_empty() && trunk.expected.is_none() {
                    let _ = conn.quic.send_stream(stream).finish();
                }
            }
            Err(quinn_proto::WriteError::Blocked) => {}
            Err(_) => trunk.proof_out.clear(),
        }
    }
    trunk.out.retain_mut(|out| {
        while out.written < out.unsent.len() {
            match conn
                .quic
                .send_stream(out.stream)
                .write(&out.unsent[out.written..])
            {
                Ok(n) => out.written += n,
                Err(quinn_proto::WriteError::Blocked) => return true,
                // Stopped or closed: the peer reads no more of it.
                Err(_) => return false,
            }
        }
        out.unsent.clear();
        out.written = 0;
        if out.ending {
            let _ = conn.quic.send_stream(out.stream).finish();
            return false;
        }
        true
    });
}

/// This connection's TLS exporter output for `side`'s proof.
fn keying(quic: &mut quinn_proto::Connection, side: &str) -> Option<[u8; 32]> {
    let mut keying = [0u8; 32];
    quic.crypto_session()
        .export_keying_material(&mut keying, EXPORTER_LABEL, side.as_bytes())
        .ok()?;
    Some(keying)
}
