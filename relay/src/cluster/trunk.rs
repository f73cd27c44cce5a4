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
//!
//! This module holds the protocol's pieces (ALPN, proofs, the client configuration); the data
//! plane's loop runs the trunks (`crate::plane`, `trunk.rs` there).

use quinn::VarInt;
use std::sync::Arc;
use std::time::Duration;

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

/// The exporter label and context of the proofs: each side signs its own side's keying
/// material of this connection.
pub(crate) const EXPORTER_LABEL: &[u8] = b"natter trunk";

/// What one side signs: its keying material of this connection, then its id.
fn signed_message(keying: &[u8; 32], id: &str) -> Vec<u8> {
    let mut message = keying.to_vec();
    message.extend_from_slice(id.as_bytes());
    message
}

/// The proof for a side whose exported keying material is `keying`.
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
