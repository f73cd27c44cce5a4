//! Trunks: one QUIC connection per pair of relays that share a room, on the relays' own
//! endpoints (ALPN `natter-trunk/1`).
//!
//! - **Who dials**: a relay that learns from the directory that another relay hosts one of
//!   its rooms dials it, pinned to the fingerprint in its record. Should both dial at the
//!   same moment, both keep the connection dialled by the lower id.
//! - **Authentication**: both sides prove they hold the cluster secret with an HMAC over this
//!   connection's TLS exporter (so a proof cannot be replayed on another connection) and
//!   their id; a relay without the secret is closed before it hears or says anything.
//! - **Rooms**: a relay opens one unidirectional stream per room it has local members in and
//!   the peer hosts. The stream starts with a Welcome whose roster is the local members,
//!   then carries their joins, leaves and mutes (the client protocol's messages and framing).
//!   Opening it subscribes the trunk to the room's local media in the opener's core; reading
//!   one adds the peer's members to the room.
//! - **Media**: the room's local senders' datagrams, unchanged, once per trunk; the far relay
//!   fans out to its local members and never onto another trunk (a full mesh: one hop).
//!
//! Media and rosters never wait on Redis: only finding a new peer does.

use super::directory::RelayRecord;
use crate::core::ConnId;
use crate::server::{Peer, Shared};
use natter_proto::control::{ErrorCode, FrameDecoder, Message};
use natter_proto::invite::parse_fingerprint;
use quinn::{Connection, VarInt};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, info, warn};

/// ALPN of relay-to-relay connections.
pub const TRUNK_ALPN: &[u8] = b"natter-trunk/1";

/// Longest a trunk's handshake and proof exchange may take.
pub(crate) const AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Room streams a trunk may open (rooms shared by one pair of relays).
pub(crate) const MAX_ROOM_STREAMS: u32 = 1024;

/// How a relay takes part in the mesh.
#[derive(Clone)]
pub struct TrunkConfig {
    /// Shared by every relay of the cluster (at least 16 bytes).
    pub secret: Vec<u8>,
    /// This relay's number in the cluster, 1–255, unique: the high bits of its participant
    /// ids and SSRCs.
    pub node: u8,
}

impl std::fmt::Debug for TrunkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrunkConfig")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// The relay's trunks.
pub struct Mesh {
    config: TrunkConfig,
    id: String,
    state: Mutex<MeshState>,
}

#[derive(Default)]
struct MeshState {
    /// Open trunks by peer id.
    trunks: HashMap<String, Trunk>,
    /// Peers being dialled.
    dialing: HashSet<String>,
    /// (trunk, room) subscriptions whose stream is being opened.
    subscribing: HashSet<(ConnId, String)>,
}

#[derive(Clone)]
struct Trunk {
    conn: Connection,
    /// The trunk's id in the core.
    id: ConnId,
    /// Who dialled it (for choosing between two simultaneous trunks).
    dialer: String,
    /// Where the room subscriptions' datagrams go: one queue for the whole trunk.
    peer: Peer,
}

impl Mesh {
    pub(crate) fn new(config: TrunkConfig, id: String) -> Self {
        Self {
            config,
            id,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MeshState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the directory says now: for each room with local members, the relays hosting it.
    /// Opens the trunks and room streams that are missing.
    pub(crate) fn update(&self, shared: &Arc<Shared>, rooms: BTreeMap<String, Vec<RelayRecord>>) {
        let mut wanted: BTreeMap<String, (RelayRecord, Vec<String>)> = BTreeMap::new();
        for (room, relays) in rooms {
            for relay in relays.into_iter().filter(|r| r.id != self.id) {
                wanted
                    .entry(relay.id.clone())
                    .or_insert_with(|| (relay, Vec::new()))
                    .1
                    .push(room.clone());
            }
        }
        for (peer, (record, rooms)) in wanted {
            let mut state = self.state();
            if let Some(trunk) = state.trunks.get(&peer).cloned() {
                drop(state);
                for room in rooms {
                    subscribe(shared, &trunk, &room);
                }
            } else if state.dialing.insert(peer.clone()) {
                drop(state);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let mesh = shared.mesh().expect("update runs with a mesh");
                    match dial(&shared, &record).await {
                        Ok(conn) => {
                            mesh.state().dialing.remove(&record.id);
                            let me = mesh.id.clone();
                            run(shared.clone(), conn, record.id.clone(), me, Some(rooms)).await;
                        }
                        Err(e) => {
                            mesh.state().dialing.remove(&record.id);
                            warn!(peer = %record.id, error = %e, "cannot open a trunk");
                        }
                    }
                });
            }
        }
    }
}

/// The exporter label and context of the proofs: each side signs its own side's keying
/// material of this connection.
pub(crate) const EXPORTER_LABEL: &[u8] = b"natter trunk";

/// What `side` of this connection (`dialer`/`acceptor`) with id `id` signs: the connection's
/// TLS exporter for that side, then the id.
fn proof_message(conn: &Connection, side: &str, id: &str) -> Option<Vec<u8>> {
    let mut keying = [0u8; 32];
    conn.export_keying_material(&mut keying, EXPORTER_LABEL, side.as_bytes())
        .ok()?;
    Some(signed_message(&keying, id))
}

/// The keying material of one side, then its id.
fn signed_message(keying: &[u8; 32], id: &str) -> Vec<u8> {
    let mut message = keying.to_vec();
    message.extend_from_slice(id.as_bytes());
    message
}

/// HMAC-SHA256 proof that `side` of this connection holds `secret`.
fn proof(secret: &[u8], conn: &Connection, side: &str, id: &str) -> Option<[u8; 32]> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, &proof_message(conn, side, id)?);
    tag.as_ref().try_into().ok()
}

/// The proof for a side whose exported keying material is `keying` (for a shell that exports
/// it itself).
pub(crate) fn sign(secret: &[u8], keying: &[u8; 32], id: &str) -> [u8; 32] {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, &signed_message(keying, id));
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Checks, in constant time, a proof for a side whose keying material is `keying`.
pub(crate) fn verify(secret: &[u8], keying: &[u8; 32], id: &str, got: &[u8; 32]) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, &signed_message(keying, id), got).is_ok()
}

/// One frame of the proof exchange: id length, id, 32-byte proof.
pub(crate) fn proof_frame(id: &str, proof: &[u8; 32]) -> Option<Vec<u8>> {
    let mut frame = vec![u8::try_from(id.len()).ok()?];
    frame.extend_from_slice(id.as_bytes());
    frame.extend_from_slice(proof);
    Some(frame)
}

/// Parses a proof frame from the bytes read so far: `None` while incomplete, `Some(None)` for
/// a frame that is not a valid one.
pub(crate) fn parse_proof_frame(bytes: &[u8]) -> Option<Option<(String, [u8; 32])>> {
    let (&len, rest) = bytes.split_first()?;
    let len = usize::from(len);
    if rest.len() < len + 32 {
        return None;
    }
    let id = String::from_utf8(rest[..len].to_vec()).ok();
    let proof: [u8; 32] = rest[len..len + 32].try_into().expect("32 bytes");
    Some(
        id.filter(|id| natter_proto::control::valid_name(id))
            .map(|id| (id, proof)),
    )
}

async fn send_proof(send: &mut quinn::SendStream, id: &str, proof: &[u8; 32]) -> Option<()> {
    send.write_all(&proof_frame(id, proof)?).await.ok()
}

async fn read_proof(recv: &mut quinn::RecvStream) -> Option<(String, [u8; 32])> {
    let mut len = [0u8; 1];
    recv.read_exact(&mut len).await.ok()?;
    let mut id = vec![0u8; usize::from(len[0])];
    recv.read_exact(&mut id).await.ok()?;
    let mut proof = [0u8; 32];
    recv.read_exact(&mut proof).await.ok()?;
    let id = String::from_utf8(id).ok()?;
    natter_proto::control::valid_name(&id).then_some((id, proof))
}

/// Checks a proof in constant time.
fn matches(secret: &[u8], conn: &Connection, side: &str, id: &str, got: &[u8; 32]) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    proof_message(conn, side, id).is_some_and(|m| ring::hmac::verify(&key, &m, got).is_ok())
}

fn refuse(conn: &Connection, shared: &Shared) {
    shared.stats.control_errors.fetch_add(1, Relaxed);
    conn.close(
        VarInt::from(ErrorCode::TokenInvalid.to_u16()),
        b"not a member of this cluster",
    );
}

/// A trunk connection arrived (ALPN checked by the caller): the proofs, then the trunk.
pub(crate) async fn accepted(shared: Arc<Shared>, conn: Connection) {
    let Some(mesh) = shared.mesh() else {
        return refuse(&conn, &shared);
    };
    let exchange = async {
        let (mut send, mut recv) = conn.accept_bi().await.ok()?;
        let (peer, got) = read_proof(&mut recv).await?;
        if !matches(&mesh.config.secret, &conn, "dialer", &peer, &got) {
            return None;
        }
        let mine = proof(&mesh.config.secret, &conn, "acceptor", &mesh.id)?;
        send_proof(&mut send, &mesh.id, &mine).await?;
        send.finish().ok()?;
        Some(peer)
    };
    match tokio::time::timeout(AUTH_TIMEOUT, exchange).await {
        Ok(Some(peer)) => {
            // The server config allows clients one stream; a peer needs one per room.
            conn.set_max_concurrent_uni_streams(VarInt::from_u32(MAX_ROOM_STREAMS));
            run(shared.clone(), conn, peer.clone(), peer, None).await;
        }
        _ => {
            warn!(remote = %conn.remote_address(), "refused a trunk: no valid cluster proof");
            refuse(&conn, &shared);
        }
    }
}

/// Dials `record` and exchanges proofs.
async fn dial(shared: &Arc<Shared>, record: &RelayRecord) -> Result<Connection, String> {
    let mesh = shared.mesh().ok_or("no mesh")?;
    let fingerprint = parse_fingerprint(&record.fingerprint).map_err(|e| e.to_string())?;
    let addr = tokio::net::lookup_host(&record.addr)
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let endpoint = shared
        .endpoint_for(addr)
        .ok_or("no endpoint of that family")?;
    let connecting = endpoint
        .connect_with(client_config(fingerprint)?, addr, "natter-relay")
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let conn = connecting.await.map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let mine = proof(&mesh.config.secret, &conn, "dialer", &mesh.id).ok_or("no exporter")?;
        send_proof(&mut send, &mesh.id, &mine)
            .await
            .ok_or("proof not sent")?;
        let (peer, got) = read_proof(&mut recv)
            .await
            .ok_or("the peer refused our proof")?;
        if peer != record.id || !matches(&mesh.config.secret, &conn, "acceptor", &peer, &got) {
            refuse(&conn, shared);
            return Err(format!("{} gave no valid cluster proof", record.addr));
        }
        Ok(conn)
    };
    tokio::time::timeout(AUTH_TIMEOUT, exchange)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// The client side of a trunk: pinned to the peer's fingerprint, ALPN `natter-trunk/1`,
/// keep-alives, room streams, and a datagram buffer of one packet.
pub(crate) fn client_config(fingerprint: [u8; 32]) -> Result<quinn::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(crate::pin::PinnedVerifier::new(
            fingerprint,
            provider,
        )))
        .with_no_client_auth();
    tls.alpn_protocols = vec![TRUNK_ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(1)));
    transport.max_idle_timeout(Some(VarInt::from_u32(6_000).into()));
    transport.max_concurrent_uni_streams(VarInt::from_u32(MAX_ROOM_STREAMS));
    transport.datagram_send_buffer_size(1536);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Runs an authenticated trunk to `peer` (dialled by `dialer`) until it closes; `rooms`: the
/// rooms to subscribe at once (the dialler's, from the directory).
async fn run(
    shared: Arc<Shared>,
    conn: Connection,
    peer: String,
    dialer: String,
    rooms: Option<Vec<String>>,
) {
    let Some(mesh) = shared.mesh() else { return };
    let id = shared.new_conn_id();
    let trunk = Trunk {
        conn: conn.clone(),
        id,
        dialer: dialer.clone(),
        peer: Peer::new(conn.clone(), shared.config.stale_after),
    };
    {
        let mut state = mesh.state();
        if let Some(old) = state.trunks.get(&peer) {
            // Two at once: keep the one the lower id dialled, on both sides.
            let lower = mesh.id.as_str().min(peer.as_str());
            if old.dialer == lower || dialer != lower {
                drop(state);
                conn.close(VarInt::from_u32(0), b"duplicate trunk");
                return;
            }
            old.conn.close(VarInt::from_u32(0), b"duplicate trunk");
        }
        state.trunks.insert(peer.clone(), trunk.clone());
    }
    info!(%peer, remote = %conn.remote_address(), "trunk open");
    let sender = tokio::spawn(crate::server::send_datagrams(
        trunk.peer.queue(),
        shared.clone(),
    ));
    for room in rooms.into_iter().flatten() {
        subscribe(&shared, &trunk, &room);
    }
    let media = tokio::spawn(read_media(shared.clone(), conn.clone(), id));
    loop {
        match conn.accept_uni().await {
            Ok(recv) => {
                tokio::spawn(read_room(shared.clone(), trunk.clone(), recv));
            }
            Err(e) => {
                info!(%peer, reason = %e, "trunk closed");
                break;
            }
        }
    }
    media.abort();
    sender.abort();
    {
        let mut state = mesh.state();
        if state.trunks.get(&peer).is_some_and(|t| t.id == id) {
            state.trunks.remove(&peer);
        }
    }
    let mut core = shared.core();
    let notices = core.trunk_closed(id);
    crate::server::dispatch(notices, &shared.stats);
}

/// Subscribes `trunk` to `room`'s local traffic, opening the room's stream, unless it is
/// subscribed already or the room has no local member.
fn subscribe(shared: &Arc<Shared>, trunk: &Trunk, room: &str) {
    {
        let core = shared.core();
        if core.trunk_subscribed(trunk.id, room) || !core.hosts(room) {
            return;
        }
    }
    let Some(mesh) = shared.mesh() else { return };
    if !mesh
        .state()
        .subscribing
        .insert((trunk.id, room.to_string()))
    {
        return;
    }
    let shared = shared.clone();
    let trunk = trunk.clone();
    let room = room.to_string();
    tokio::spawn(async move {
        let opened = trunk.conn.open_uni().await;
        let first = opened.ok().and_then(|send| {
            let sub = trunk.peer.with_control(trunk.conn.clone());
            shared
                .core()
                .trunk_subscribe(trunk.id, sub, &room)
                .map(|first| (send, first))
        });
        if let Some(mesh) = shared.mesh() {
            mesh.state().subscribing.remove(&(trunk.id, room.clone()));
        }
        let Some((send, (handle, welcome))) = first else {
            return;
        };
        handle.send(welcome, &shared.stats);
        debug!(room = %room, "trunk subscribed");
        crate::server::write_to(send, handle).await;
    });
}

/// Reads one room stream from the peer: its members of the room, then their news.
async fn read_room(shared: Arc<Shared>, trunk: Trunk, mut recv: quinn::RecvStream) {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 4096];
    let mut room: Option<String> = None;
    let mut members: HashSet<u64> = HashSet::new();
    while let Ok(Some(n)) = recv.read(&mut buf).await {
        decoder.push(&buf[..n]);
        while let Some(next) = decoder.next_message() {
            let Ok(msg) = next else {
                warn!("malformed room stream from a trunk");
                trunk.conn.close(
                    VarInt::from(ErrorCode::ProtocolViolation.to_u16()),
                    b"bad room stream",
                );
                return;
            };
            let mut core = shared.core();
            let notices = match (&room, msg) {
                (
                    None,
                    Message::Welcome {
                        room: r, roster, ..
                    },
                ) => {
                    let mut notices = Vec::new();
                    for p in roster {
                        let id = p.id;
                        match core.remote_joined(trunk.id, &r, p) {
                            Ok(n) => {
                                members.insert(id);
                                notices.extend(n);
                            }
                            Err(e) => warn!(error = %e, "refused a remote member"),
                        }
                    }
                    room = Some(r);
                    notices
                }
                (Some(r), Message::ParticipantJoined(p)) => {
                    let id = p.id;
                    match core.remote_joined(trunk.id, r, p) {
                        Ok(n) => {
                            members.insert(id);
                            n
                        }
                        Err(e) => {
                            warn!(error = %e, "refused a remote member");
                            Vec::new()
                        }
                    }
                }
                (Some(r), Message::ParticipantLeft { id }) => {
                    members.remove(&id);
                    core.remote_left(trunk.id, r, id)
                }
                (Some(r), Message::ChatMessage { id, text }) => {
                    core.remote_chat(trunk.id, r, id, text)
                }
                (Some(r), Message::MuteChanged { id, muted }) => {
                    core.remote_muted(trunk.id, r, id, muted)
                }
                _ => Vec::new(),
            };
            crate::server::dispatch(notices, &shared.stats);
            drop(core);
            // The peer has members here: it wants our local traffic too.
            if let Some(r) = &room {
                subscribe(&shared, &trunk, r);
            }
        }
    }
    // The stream ended: the peer has no more members in the room.
    if let Some(r) = room {
        let mut core = shared.core();
        for id in members {
            let notices = core.remote_left(trunk.id, &r, id);
            crate::server::dispatch(notices, &shared.stats);
        }
    }
}

/// Fans out the peer's media datagrams to the local members of their rooms.
async fn read_media(shared: Arc<Shared>, conn: Connection, trunk: ConnId) {
    let mut targets: Vec<Peer> = Vec::with_capacity(16);
    while let Ok(datagram) = conn.read_datagram().await {
        let arrived = tokio::time::Instant::now();
        shared.stats.trunk_datagrams_in.fetch_add(1, Relaxed);
        targets.clear();
        match shared
            .core()
            .route_from_trunk(trunk, &datagram, crate::server::unix_ms())
        {
            Ok(peers) => targets.extend(peers.cloned()),
            Err(reason) => {
                shared.stats.count_drop(reason);
                continue;
            }
        }
        for target in &targets {
            target.forward(datagram.clone(), arrived, &shared.stats);
        }
    }
}
