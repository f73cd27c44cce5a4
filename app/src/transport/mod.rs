//! The client's network shell: a QUIC connection to the relay (this module), the control
//! session on its one bidirectional stream ([`control`]), and certificate pinning ([`pin`]).

pub mod control;
pub mod path_spread;

use natter_proto::control::ErrorCode;
use natter_proto::invite::{Invite, fingerprint_hex};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ConnectionError, Endpoint, TransportConfig};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;

/// How long to wait for the relay to answer the QUIC handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a call could not be set up. Each message is one line a user can act on.
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("cannot resolve relay host {host}: {reason}")]
    Resolve { host: String, reason: String },
    #[error("relay {0} did not answer within {secs} s (is it running, and is UDP open?)", secs = CONNECT_TIMEOUT.as_secs())]
    Unreachable(String),
    #[error(
        "relay certificate does not match the invite: expected fingerprint {expected}, relay presented {actual} — the invite is stale or someone is impersonating the relay"
    )]
    FingerprintMismatch { expected: String, actual: String },
    #[error("TLS handshake with the relay failed: {0}")]
    Tls(String),
    #[error("{}", refusal(*code, message))]
    Refused { code: ErrorCode, message: String },
    #[error("connection to the relay lost: {0}")]
    Lost(String),
    /// The relay answered with a QUIC stateless reset: it no longer knows the connection
    /// because it restarted (or it is a new relay holding the old one's reset key), so it is
    /// up right now and a rejoin can start at once.
    #[error("connection to the relay lost: the relay restarted and reset it")]
    Reset,
    /// Nothing came from the edge for this long, though keep-alives went out: it died, or
    /// the path to it did. Another edge of the cluster may be tried at once.
    #[error("connection to the relay lost: nothing heard from it for {} ms", .0.as_millis())]
    Silent(Duration),
    #[error("local network error: {0}")]
    Local(String),
    #[error("{0}")]
    Invalid(String),
}

/// An Error code and the relay's text in one phrase, without saying the same thing twice (the
/// relay's text is often the code's own description).
pub fn explain(code: ErrorCode, message: &str) -> String {
    let described = code.describe();
    let message = message.trim();
    if message.is_empty() || message.eq_ignore_ascii_case(described) {
        described.to_string()
    } else {
        format!("{described} ({message})")
    }
}

/// How a refusal reads: "relay refused: …" for what the relay would not do, and the bare
/// reason for a relay that is going away.
fn refusal(code: ErrorCode, message: &str) -> String {
    match code {
        ErrorCode::ShuttingDown => explain(code, message),
        _ => format!("relay refused: {}", explain(code, message)),
    }
}

impl ConnectError {
    /// Maps a quinn connection error, recognising the relay's application close codes.
    pub fn from_connection(e: &ConnectionError) -> Self {
        match e {
            ConnectionError::ApplicationClosed(close) => Self::Refused {
                code: ErrorCode::from_u16(
                    close.error_code.into_inner().min(u64::from(u16::MAX)) as u16
                ),
                message: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            ConnectionError::Reset => Self::Reset,
            other => Self::Lost(other.to_string()),
        }
    }
}

/// How long the connection may go without hearing from the relay before it counts as lost.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(6);

/// Keep-alive: a PING after this long without sending anything else (quinn sends one only
/// when nothing else went out, so a busy call pays nothing). Often enough that the relay's
/// acknowledgements never pause for long, so a session in a cluster that hears nothing for
/// [`crate::session::liveness::SILENCE_LIMIT`] can tell a dead edge from a quiet room and move
/// to another edge; a listener also stays alive on relays with short idle timeouts (the relay
/// refuses timeouts under 2 s). The cost is a ~45-byte packet four times a second each way
/// while a client neither talks nor hears anyone.
pub const KEEP_ALIVE: Duration = Duration::from_millis(250);

/// The round trip QUIC assumes before it has measured one (quinn's default is RFC 9002's
/// 333 ms). A handshake packet lost in the first exchange is sent again after three times this,
/// and that wait lands in the first round-trip sample, which then sets every later
/// retransmission timeout of the handshake: from 333 ms, a lost TLS Finished after a lost
/// first flight went out again only ~6.5 s later, past the 6 s idle timeout, and the join
/// failed (test `a_lost_finished_after_a_slow_start_does_not_fail_the_join`). 100 ms is about
/// the round trip of a relay a voice call can use well; on a longer path the cost is an early
/// copy of a handshake packet or two. The relay uses the same.
pub const INITIAL_RTT: Duration = Duration::from_millis(100);

/// Client transport settings: keep-alives so the relay's idle timeout never fires during a
/// call, an idle timeout short enough that a relay that died is noticed (and the app
/// reconnects) within seconds, a short initial round-trip estimate so a lossy handshake
/// recovers within that timeout ([`INITIAL_RTT`]), and a datagram send queue of a few frames
/// so stale audio is dropped, not queued.
fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.initial_rtt(INITIAL_RTT);
    t.keep_alive_interval(Some(KEEP_ALIVE));
    // The effective timeout is the smaller of ours and the relay's. Six seconds is five lost
    // keep-alives in a row: a dead relay, not a bad second of Wi-Fi.
    t.max_idle_timeout(Some(
        CLIENT_IDLE_TIMEOUT
            .try_into()
            .expect("6 s is a valid idle timeout"),
    ));
    t.datagram_send_buffer_size(4 * 1024);
    t.datagram_receive_buffer_size(Some(256 * 1024));
    t
}

fn resolve(invite: &Invite) -> Result<SocketAddr, ConnectError> {
    let authority = invite.authority();
    authority
        .to_socket_addrs()
        .map_err(|e| ConnectError::Resolve {
            host: invite.host.clone(),
            reason: e.to_string(),
        })?
        .next()
        .ok_or_else(|| ConnectError::Resolve {
            host: invite.host.clone(),
            reason: "no addresses".into(),
        })
}

/// Opens a QUIC connection to the relay named by `invite`: pinned to its fingerprint when the
/// invite has one, validated against WebPKI roots otherwise.
pub async fn connect(invite: &Invite) -> Result<(Endpoint, quinn::Connection), ConnectError> {
    let addr = resolve(invite)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConnectError::Tls(e.to_string()))?;
    let pin = invite
        .fingerprint
        .map(|fp| Arc::new(natter_relay::pin::PinnedVerifier::new(fp, provider)));
    let mut tls = match &pin {
        Some(verifier) => builder
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth(),
        None => {
            let roots =
                rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![natter_proto::ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| ConnectError::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(transport_config()));

    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .expect("literal address");
    let mut endpoint = Endpoint::client(bind).map_err(|e| ConnectError::Local(e.to_string()))?;
    endpoint.set_default_client_config(client);
    // With a pinned certificate the name is irrelevant; with WebPKI it must match the host.
    let server_name = if pin.is_some() {
        "natter-relay"
    } else {
        invite.host.as_str()
    };
    let connecting = endpoint
        .connect(addr, server_name)
        .map_err(|e| ConnectError::Local(e.to_string()))?;
    let conn = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => return Err(ConnectError::Unreachable(invite.authority())),
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            if let Some(actual) = pin.as_ref().and_then(|p| p.mismatch()) {
                return Err(ConnectError::FingerprintMismatch {
                    expected: fingerprint_hex(&invite.fingerprint.expect("pinned")),
                    actual: fingerprint_hex(&actual),
                });
            }
            return Err(match e {
                ConnectionError::TimedOut => ConnectError::Unreachable(invite.authority()),
                // A relay at its connection limit (or this address's share of it) refuses
                // the handshake before any application code can be sent (PROTOCOL.md §1).
                ConnectionError::ConnectionClosed(c)
                    if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
                {
                    ConnectError::Refused {
                        code: ErrorCode::ServerFull,
                        message: "the relay refused the connection: it is full, or has too many \
                                  connections from this address"
                            .into(),
                    }
                }
                ConnectionError::TransportError(t) => ConnectError::Tls(t.to_string()),
                other => ConnectError::from_connection(&other),
            });
        }
    };
    Ok((endpoint, conn))
}

/// Trust on first use: connects to the relay named by `invite` only far enough to see its
/// certificate, and returns that certificate's SHA-256 fingerprint. The handshake is always
/// aborted, so nothing is sent to the relay; the caller asks the user whether to trust the
/// fingerprint and then connects with it pinned.
pub async fn probe_fingerprint(invite: &Invite) -> Result<[u8; 32], ConnectError> {
    let addr = resolve(invite)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let probe = Arc::new(natter_relay::pin::PinnedVerifier::probe(provider.clone()));
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConnectError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(probe.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![natter_proto::ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| ConnectError::Tls(e.to_string()))?;
    let bind: SocketAddr = if addr.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    }
    .parse()
    .expect("literal address");
    let mut endpoint = Endpoint::client(bind).map_err(|e| ConnectError::Local(e.to_string()))?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let connecting = endpoint
        .connect(addr, invite.host.as_str())
        .map_err(|e| ConnectError::Local(e.to_string()))?;
    let result = tokio::time::timeout(CONNECT_TIMEOUT, connecting).await;
    endpoint.close(0u32.into(), b"");
    match (probe.mismatch(), result) {
        (Some(fp), _) => Ok(fp),
        (None, Err(_)) | (None, Ok(Err(ConnectionError::TimedOut))) => {
            Err(ConnectError::Unreachable(invite.authority()))
        }
        (None, Ok(Err(e))) => Err(ConnectError::from_connection(&e)),
        (None, Ok(Ok(_))) => Err(ConnectError::Tls(
            "the relay presented no certificate".into(),
        )),
    }
}
