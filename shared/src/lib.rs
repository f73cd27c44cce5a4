//! # natter-proto: the Natter wire protocol
//!
//! Pure encode/decode code with no I/O, no clock and no async runtime, so that the relay, the
//! client and tests in any language can agree on bytes. `docs/PROTOCOL.md` is the normative
//! description; this crate is its reference implementation.
//!
//! - [`media`]: what travels in one QUIC DATAGRAM — a flow identifier followed by one RTP or
//!   RTCP packet (RTP over QUIC, draft-ietf-avtcore-rtp-over-quic).
//! - [`rtp`]: RTP packets (RFC 3550) carrying one Opus frame (RFC 7587) with the RFC 6464
//!   audio-level header extension.
//! - [`rtcp`]: sender and receiver reports (RFC 3550 §6.4).
//! - [`reception`]: the receiver statistics those reports carry (RFC 3550 A.3, A.8).
//! - [`control`]: the messages on the reliable control stream and their length-delimited framing.
//! - [`invite`]: `natter://` invite links.
//! - [`varint`]: QUIC variable-length integers (RFC 9000 §16), used by all of the above.
//!
//! Every parser returns an error instead of panicking, whatever the input; this is checked by
//! property tests and by the cargo-fuzz targets in `shared/fuzz`, whose properties
//! ([`fuzz_checks`]) `cargo test` also runs.

pub mod control;
#[doc(hidden)]
pub mod fuzz_checks;
pub mod invite;
pub mod media;
pub mod reception;
pub mod rtcp;
pub mod rtp;
pub mod spread;
pub mod varint;

/// The ALPN protocol identifier negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"natter/1";

/// The control-protocol version this crate speaks.
pub const PROTOCOL_VERSION: u16 = 1;

/// RTP clock rate for Opus (RFC 7587 §4.1): always 48 kHz, whatever the codec's internal rate.
pub const RTP_CLOCK_HZ: u32 = 48_000;

/// RTP payload type used for Opus (dynamic range, RFC 3551).
pub const OPUS_PAYLOAD_TYPE: u8 = 111;

/// Largest media datagram a relay or client accepts (flow id + RTP header + extension + payload).
/// Opus frames of up to 120 ms at 510 kbit/s fit in 7.7 kB, but voice frames stay far below the
/// QUIC path MTU; anything above this is malformed or abusive.
pub const MAX_MEDIA_DATAGRAM: usize = 1200;
