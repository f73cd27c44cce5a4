//! Control messages on the one reliable bidirectional QUIC stream per connection.
//!
//! Framing: every message is a QUIC varint byte length followed by that many bytes; the body
//! starts with a varint message type. Fields are varints, fixed-width big-endian integers,
//! booleans (one byte) and strings (varint length + UTF-8). A receiver ignores bytes after the
//! fields it knows (newer peers may append fields) and skips whole messages of unknown type, so
//! the protocol can grow without breaking older peers. The version itself is negotiated once
//! with [`Message::Hello`] / [`Message::HelloAck`].

use crate::varint;
use thiserror::Error;

/// Largest control message body accepted. Rosters of 255 people with 64-byte names fit easily;
/// anything bigger is a broken or hostile peer.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// Longest room or display name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 64;

/// Longest access token, in bytes.
pub const MAX_TOKEN_LEN: usize = 1024;

/// Bit in [`Message::Join`] flags: send my own audio back to me (loopback latency tests).
pub const JOIN_FLAG_ECHO: u8 = 0x01;

/// Longest chat message, bytes of UTF-8 (a long paragraph; a chat is not a file transfer).
pub const MAX_CHAT_LEN: usize = 2000;

/// Machine-readable reason carried by [`Message::Error`] and used as the QUIC close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A message could not be parsed or broke the protocol's rules.
    ProtocolViolation,
    /// No common protocol version.
    UnsupportedVersion,
    /// A message other than Hello came first, or Hello never came.
    HelloRequired,
    /// A room operation arrived before Join.
    NotJoined,
    /// Join arrived twice on one connection.
    AlreadyJoined,
    /// Room name empty, too long or containing control characters.
    InvalidRoom,
    /// Display name empty, too long or containing control characters.
    InvalidName,
    RoomFull,
    ServerFull,
    /// The relay requires an access token and none was given.
    TokenRequired,
    /// The token's signature does not verify.
    TokenInvalid,
    TokenExpired,
    /// The token is valid but for another room.
    TokenWrongRoom,
    /// The relay is shutting down.
    ShuttingDown,
    /// The peer was idle too long.
    Timeout,
    /// The peer sent more than its limits allow.
    RateLimited,
    /// A bug or resource failure on the relay.
    Internal,
    /// The peer did not read its control stream: the messages waiting for it reached the
    /// relay's per-connection limit, so the relay closed it rather than queue without bound.
    SlowReader,
    /// The access token this connection joined with joined again from another connection
    /// (a token admits one connection at a time, the newest).
    TokenInUse,
    /// A code from a newer peer.
    Unknown(u16),
}

impl ErrorCode {
    const TABLE: [(u16, ErrorCode); 19] = [
        (1, Self::ProtocolViolation),
        (2, Self::UnsupportedVersion),
        (3, Self::HelloRequired),
        (4, Self::NotJoined),
        (5, Self::AlreadyJoined),
        (6, Self::InvalidRoom),
        (7, Self::InvalidName),
        (8, Self::RoomFull),
        (9, Self::ServerFull),
        (10, Self::TokenRequired),
        (11, Self::TokenInvalid),
        (12, Self::TokenExpired),
        (13, Self::TokenWrongRoom),
        (14, Self::ShuttingDown),
        (15, Self::Timeout),
        (16, Self::RateLimited),
        (17, Self::Internal),
        (18, Self::SlowReader),
        (19, Self::TokenInUse),
    ];

    pub fn to_u16(self) -> u16 {
        match self {
            Self::Unknown(c) => c,
            known => Self::TABLE
                .iter()
                .find(|(_, c)| *c == known)
                .map_or(0, |(n, _)| *n),
        }
    }

    pub fn from_u16(n: u16) -> Self {
        Self::TABLE
            .iter()
            .find(|(k, _)| *k == n)
            .map_or(Self::Unknown(n), |(_, c)| *c)
    }

    /// A short sentence a user can read.
    pub fn describe(self) -> &'static str {
        match self {
            Self::ProtocolViolation => "protocol violation",
            Self::UnsupportedVersion => "no common protocol version (update the app or relay)",
            Self::HelloRequired => "the client did not say hello first",
            Self::NotJoined => "not in a room",
            Self::AlreadyJoined => "already in a room",
            Self::InvalidRoom => "invalid room name",
            Self::InvalidName => "invalid display name",
            Self::RoomFull => "the room is full",
            Self::ServerFull => "the relay is full",
            Self::TokenRequired => "this relay needs an access token in the invite",
            Self::TokenInvalid => "the access token is not valid for this relay",
            Self::TokenExpired => "the access token has expired",
            Self::TokenWrongRoom => "the access token is for another room",
            Self::ShuttingDown => "the relay is shutting down",
            Self::Timeout => "timed out",
            Self::RateLimited => "rate limited",
            Self::Internal => "internal relay error",
            Self::SlowReader => "the connection stopped reading messages from the relay",
            Self::TokenInUse => "the access token was used to join from somewhere else",
            Self::Unknown(_) => "unknown error",
        }
    }
}

/// One member of a room as the relay announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    /// Relay-assigned id, unique per relay while the participant is connected.
    pub id: u64,
    /// The SSRC the relay assigned; every media packet from this participant carries it.
    pub ssrc: u32,
    pub name: String,
    pub muted: bool,
}

/// How far a participant's uplink spread must move before the relay announces it again, ms:
/// a jitter buffer's histogram bucket.
pub const UPLINK_SPREAD_STEP_MS: u16 = 5;

/// Most entries an [`Message::UplinkSpread`] holds (a room's members, with room to spare).
pub const MAX_UPLINK_SPREADS: usize = 1024;

/// Most edges an [`Message::Edges`] list holds.
pub const MAX_CLUSTER_EDGES: usize = 32;

/// A live edge of the relay's cluster, as the relay read it from its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterEdge {
    /// Where it is and its certificate.
    pub edge: crate::invite::Edge,
    /// Its region label (`eu-west`), for people to read.
    pub region: String,
}

/// Longest edge (`host:port~fingerprint`) an [`Message::Edges`] entry may hold: a 253-byte
/// DNS name, brackets, a port and a pin.
const MAX_EDGE_LEN: usize = 253 + 2 + 6 + 65;

/// A control message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Client → relay, first message: the protocol versions the client speaks.
    Hello {
        versions: Vec<u16>,
        software: String,
    },
    /// Relay → client: the version chosen (the highest both speak).
    HelloAck { version: u16, software: String },
    /// Client → relay: enter a room.
    Join {
        room: String,
        name: String,
        token: Option<String>,
        flags: u8,
    },
    /// Relay → client: you are in; your id, your SSRC and everyone present (you included).
    Welcome {
        participant_id: u64,
        ssrc: u32,
        room: String,
        roster: Vec<Participant>,
    },
    /// Relay → clients: someone entered the room.
    ParticipantJoined(Participant),
    /// Relay → clients: someone left the room.
    ParticipantLeft { id: u64 },
    /// Client → relay: my microphone is (un)muted.
    SetMute { muted: bool },
    /// Relay → clients: a participant's mute state changed.
    MuteChanged { id: u64, muted: bool },
    /// Client → relay: I am leaving; the relay closes the connection.
    Leave,
    /// Client → relay: a text message for everyone else in the room (at most
    /// [`MAX_CHAT_LEN`] bytes). The relay forwards it and keeps nothing.
    Chat { text: String },
    /// Relay → clients: participant `id` wrote `text`.
    ChatMessage { id: u64, text: String },
    /// Relay → client, after Welcome and when it changes, from a relay in a cluster: the
    /// cluster's live edges (the sender included, at most [`MAX_CLUSTER_EDGES`]), so a client
    /// whose invite named one edge can still move to another when its edge fails.
    Edges { edges: Vec<ClusterEdge> },
    /// Relay → clients: how much participants' uplink delays vary, as the relay measured them
    /// from their Pings' one-way transit ([`crate::spread::Spread`]), as (participant id, ms
    /// saturating) pairs, at most [`MAX_UPLINK_SPREADS`]: where a listener's jitter buffer
    /// starts each one's stream. Sent after a participant's ParticipantJoined, to a newcomer
    /// after Welcome (everyone measured, in one message), and again when one moves by
    /// [`UPLINK_SPREAD_STEP_MS`] or more.
    UplinkSpread { spreads: Vec<(u64, u16)> },
    /// Either direction: measure RTT and clock offset. Times are the sender's wall clock in
    /// microseconds since the Unix epoch.
    Ping { nonce: u64, sent_micros: u64 },
    /// Reply to Ping: the nonce and time echoed, plus the responder's wall clock.
    Pong {
        nonce: u64,
        ping_sent_micros: u64,
        responder_micros: u64,
    },
    /// Either direction: something went wrong. Fatal codes are followed by a close.
    Error { code: ErrorCode, message: String },
    /// A message type this version does not know; receivers skip it.
    Unknown { kind: u64 },
}

/// Why a control message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ControlError {
    #[error("control message of {0} bytes exceeds the {MAX_MESSAGE_LEN}-byte limit")]
    TooLarge(u64),
    #[error("control message truncated")]
    Truncated,
    #[error("string field is not valid UTF-8")]
    BadUtf8,
    #[error("{field} is longer than {max} bytes")]
    FieldTooLong { field: &'static str, max: usize },
    #[error("edge {0:?} is not HOST:PORT~FINGERPRINT")]
    BadEdge(String),
    #[error("more than {MAX_CLUSTER_EDGES} edges")]
    TooManyEdges,
    #[error("too many {0}")]
    TooManyEntries(&'static str),
}

mod kind {
    pub const HELLO: u64 = 0x01;
    pub const HELLO_ACK: u64 = 0x02;
    pub const JOIN: u64 = 0x03;
    pub const WELCOME: u64 = 0x04;
    pub const PARTICIPANT_JOINED: u64 = 0x05;
    pub const PARTICIPANT_LEFT: u64 = 0x06;
    pub const SET_MUTE: u64 = 0x07;
    pub const MUTE_CHANGED: u64 = 0x08;
    pub const LEAVE: u64 = 0x09;
    pub const PING: u64 = 0x0a;
    pub const PONG: u64 = 0x0b;
    pub const ERROR: u64 = 0x0c;
    pub const CHAT: u64 = 0x0d;
    pub const CHAT_MESSAGE: u64 = 0x0e;
    pub const EDGES: u64 = 0x0f;
    pub const UPLINK_SPREAD: u64 = 0x10;
}

/// Cursor over a message body.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ControlError> {
        let (v, n) = varint::decode(self.buf).map_err(|_| ControlError::Truncated)?;
        self.buf = &self.buf[n..];
        Ok(v)
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], ControlError> {
        let b = self.buf.get(..n).ok_or(ControlError::Truncated)?;
        self.buf = &self.buf[n..];
        Ok(b)
    }
    fn u8(&mut self) -> Result<u8, ControlError> {
        Ok(self.bytes(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, ControlError> {
        Ok(self.u8()? != 0)
    }
    fn u16(&mut self) -> Result<u16, ControlError> {
        let b = self.bytes(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, ControlError> {
        let b = self.bytes(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, ControlError> {
        let b = self.bytes(8)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes")))
    }
    fn string(&mut self, field: &'static str, max: usize) -> Result<String, ControlError> {
        let len = self.varint()?;
        if len > max as u64 {
            return Err(ControlError::FieldTooLong { field, max });
        }
        let b = self.bytes(len as usize)?;
        String::from_utf8(b.to_vec()).map_err(|_| ControlError::BadUtf8)
    }
    fn participant(&mut self) -> Result<Participant, ControlError> {
        Ok(Participant {
            id: self.varint()?,
            ssrc: self.u32()?,
            name: self.string("name", MAX_NAME_LEN)?,
            muted: self.bool()?,
        })
    }
}

fn put_string(s: &str, out: &mut Vec<u8>) {
    varint::encode(s.len() as u64, out);
    out.extend_from_slice(s.as_bytes());
}

fn put_participant(p: &Participant, out: &mut Vec<u8>) {
    varint::encode(p.id, out);
    out.extend_from_slice(&p.ssrc.to_be_bytes());
    put_string(&p.name, out);
    out.push(u8::from(p.muted));
}

impl Message {
    /// Decodes one message body (without its length prefix).
    pub fn decode_body(body: &[u8]) -> Result<Self, ControlError> {
        let mut r = Reader { buf: body };
        let kind = r.varint()?;
        Ok(match kind {
            kind::HELLO => {
                let count = r.varint()?;
                // Every version takes at least one byte, so a count above the remaining
                // length is a lie; checking first avoids a huge allocation.
                if count > r.buf.len() as u64 {
                    return Err(ControlError::Truncated);
                }
                let versions = (0..count)
                    .map(|_| r.varint().map(|v| v.min(u64::from(u16::MAX)) as u16))
                    .collect::<Result<_, _>>()?;
                Self::Hello {
                    versions,
                    software: r.string("software", MAX_NAME_LEN * 2)?,
                }
            }
            kind::HELLO_ACK => Self::HelloAck {
                version: r.varint()?.min(u64::from(u16::MAX)) as u16,
                software: r.string("software", MAX_NAME_LEN * 2)?,
            },
            kind::JOIN => {
                let room = r.string("room", MAX_NAME_LEN)?;
                let name = r.string("name", MAX_NAME_LEN)?;
                let token = r.string("token", MAX_TOKEN_LEN)?;
                Self::Join {
                    room,
                    name,
                    token: (!token.is_empty()).then_some(token),
                    flags: r.u8()?,
                }
            }
            kind::WELCOME => {
                let participant_id = r.varint()?;
                let ssrc = r.u32()?;
                let room = r.string("room", MAX_NAME_LEN)?;
                let count = r.varint()?;
                if count > r.buf.len() as u64 {
                    return Err(ControlError::Truncated);
                }
                let roster = (0..count)
                    .map(|_| r.participant())
                    .collect::<Result<_, _>>()?;
                Self::Welcome {
                    participant_id,
                    ssrc,
                    room,
                    roster,
                }
            }
            kind::PARTICIPANT_JOINED => Self::ParticipantJoined(r.participant()?),
            kind::PARTICIPANT_LEFT => Self::ParticipantLeft { id: r.varint()? },
            kind::SET_MUTE => Self::SetMute { muted: r.bool()? },
            kind::MUTE_CHANGED => Self::MuteChanged {
                id: r.varint()?,
                muted: r.bool()?,
            },
            kind::LEAVE => Self::Leave,
            kind::PING => Self::Ping {
                nonce: r.u64()?,
                sent_micros: r.u64()?,
            },
            kind::PONG => Self::Pong {
                nonce: r.u64()?,
                ping_sent_micros: r.u64()?,
                responder_micros: r.u64()?,
            },
            kind::ERROR => Self::Error {
                code: ErrorCode::from_u16(r.u16()?),
                message: r.string("message", 1024)?,
            },
            kind::CHAT => Self::Chat {
                text: r.string("chat text", MAX_CHAT_LEN)?,
            },
            kind::CHAT_MESSAGE => Self::ChatMessage {
                id: r.varint()?,
                text: r.string("chat text", MAX_CHAT_LEN)?,
            },
            kind::EDGES => {
                let count = r.varint()?;
                if count > MAX_CLUSTER_EDGES as u64 {
                    return Err(ControlError::TooManyEdges);
                }
                let edges = (0..count)
                    .map(|_| {
                        let text = r.string("edge", MAX_EDGE_LEN)?;
                        let edge = text.parse().map_err(|_| ControlError::BadEdge(text))?;
                        let region = r.string("region", MAX_NAME_LEN)?;
                        Ok(ClusterEdge { edge, region })
                    })
                    .collect::<Result<_, ControlError>>()?;
                Self::Edges { edges }
            }
            kind::UPLINK_SPREAD => {
                let count = r.varint()?;
                if count > MAX_UPLINK_SPREADS as u64 {
                    return Err(ControlError::TooManyEntries("uplink spreads"));
                }
                let spreads = (0..count)
                    .map(|_| Ok((r.varint()?, r.u16()?)))
                    .collect::<Result<_, ControlError>>()?;
                Self::UplinkSpread { spreads }
            }
            other => Self::Unknown { kind: other },
        })
    }

    /// Appends the message body (type and fields, no length prefix).
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Self::Hello { versions, software } => {
                varint::encode(kind::HELLO, out);
                varint::encode(versions.len() as u64, out);
                for v in versions {
                    varint::encode(u64::from(*v), out);
                }
                put_string(software, out);
            }
            Self::HelloAck { version, software } => {
                varint::encode(kind::HELLO_ACK, out);
                varint::encode(u64::from(*version), out);
                put_string(software, out);
            }
            Self::Join {
                room,
                name,
                token,
                flags,
            } => {
                varint::encode(kind::JOIN, out);
                put_string(room, out);
                put_string(name, out);
                put_string(token.as_deref().unwrap_or(""), out);
                out.push(*flags);
            }
            Self::Welcome {
                participant_id,
                ssrc,
                room,
                roster,
            } => {
                varint::encode(kind::WELCOME, out);
                varint::encode(*participant_id, out);
                out.extend_from_slice(&ssrc.to_be_bytes());
                put_string(room, out);
                varint::encode(roster.len() as u64, out);
                for p in roster {
                    put_participant(p, out);
                }
            }
            Self::ParticipantJoined(p) => {
                varint::encode(kind::PARTICIPANT_JOINED, out);
                put_participant(p, out);
            }
            Self::ParticipantLeft { id } => {
                varint::encode(kind::PARTICIPANT_LEFT, out);
                varint::encode(*id, out);
            }
            Self::SetMute { muted } => {
                varint::encode(kind::SET_MUTE, out);
                out.push(u8::from(*muted));
            }
            Self::MuteChanged { id, muted } => {
                varint::encode(kind::MUTE_CHANGED, out);
                varint::encode(*id, out);
                out.push(u8::from(*muted));
            }
            Self::Leave => varint::encode(kind::LEAVE, out),
            Self::Ping { nonce, sent_micros } => {
                varint::encode(kind::PING, out);
                out.extend_from_slice(&nonce.to_be_bytes());
                out.extend_from_slice(&sent_micros.to_be_bytes());
            }
            Self::Pong {
                nonce,
                ping_sent_micros,
                responder_micros,
            } => {
                varint::encode(kind::PONG, out);
                out.extend_from_slice(&nonce.to_be_bytes());
                out.extend_from_slice(&ping_sent_micros.to_be_bytes());
                out.extend_from_slice(&responder_micros.to_be_bytes());
            }
            Self::Error { code, message } => {
                varint::encode(kind::ERROR, out);
                out.extend_from_slice(&code.to_u16().to_be_bytes());
                put_string(message, out);
            }
            Self::Chat { text } => {
                varint::encode(kind::CHAT, out);
                put_string(text, out);
            }
            Self::ChatMessage { id, text } => {
                varint::encode(kind::CHAT_MESSAGE, out);
                varint::encode(*id, out);
                put_string(text, out);
            }
            Self::Edges { edges } => {
                varint::encode(kind::EDGES, out);
                varint::encode(edges.len() as u64, out);
                for e in edges {
                    put_string(&e.edge.to_string(), out);
                    put_string(&e.region, out);
                }
            }
            Self::UplinkSpread { spreads } => {
                varint::encode(kind::UPLINK_SPREAD, out);
                varint::encode(spreads.len() as u64, out);
                for (id, ms) in spreads {
                    varint::encode(*id, out);
                    out.extend_from_slice(&ms.to_be_bytes());
                }
            }
            Self::Unknown { kind } => varint::encode(*kind, out),
        }
    }

    /// Appends the message with its length prefix, ready for the stream.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut body = Vec::new();
        self.encode_body(&mut body);
        varint::encode(body.len() as u64, out);
        out.extend_from_slice(&body);
    }

    /// The message as a framed byte vector.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}

/// Incremental decoder for the control stream: feed it bytes as they arrive, take messages out.
/// Sans-IO: it never reads a stream itself.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds bytes received from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete message, `None` if more bytes are needed. An oversize length prefix
    /// is an error that stays (the stream can no longer be trusted); a malformed body is an
    /// error for that one message, which is consumed.
    pub fn next_message(&mut self) -> Option<Result<Message, ControlError>> {
        let (len, used) = varint::decode(&self.buf).ok()?;
        if len > MAX_MESSAGE_LEN as u64 {
            return Some(Err(ControlError::TooLarge(len)));
        }
        let end = used + len as usize;
        if self.buf.len() < end {
            return None;
        }
        let result = Message::decode_body(&self.buf[used..end]);
        self.buf.drain(..end);
        Some(result)
    }
}

/// What [`valid_name`] checks, in words, for error messages that tell a user how to fix a name.
pub const NAME_RULE: &str = "1-64 bytes of UTF-8, no control characters, not only whitespace";

/// Checks a room or display name: 1 to [`MAX_NAME_LEN`] bytes, no control characters, not
/// only whitespace ([`NAME_RULE`]).
pub fn valid_name(s: &str) -> bool {
    !s.trim().is_empty() && s.len() <= MAX_NAME_LEN && !s.chars().any(char::is_control)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Message> {
        let alice = Participant {
            id: 1,
            ssrc: 0x1111,
            name: "Alice ✓".into(),
            muted: false,
        };
        vec![
            Message::Hello {
                versions: vec![1, 2],
                software: "natter 0.1".into(),
            },
            Message::HelloAck {
                version: 1,
                software: "natter-relay 0.1".into(),
            },
            Message::Join {
                room: "lobby".into(),
                name: "Alice".into(),
                token: Some("tok".into()),
                flags: JOIN_FLAG_ECHO,
            },
            Message::Join {
                room: "lobby".into(),
                name: "Bob".into(),
                token: None,
                flags: 0,
            },
            Message::Welcome {
                participant_id: 1,
                ssrc: 0x1111,
                room: "lobby".into(),
                roster: vec![alice.clone()],
            },
            Message::ParticipantJoined(alice),
            Message::ParticipantLeft { id: 7 },
            Message::SetMute { muted: true },
            Message::MuteChanged { id: 3, muted: true },
            Message::Leave,
            Message::Ping {
                nonce: 9,
                sent_micros: 123,
            },
            Message::Pong {
                nonce: 9,
                ping_sent_micros: 123,
                responder_micros: 456,
            },
            Message::Error {
                code: ErrorCode::RoomFull,
                message: "room lobby is full".into(),
            },
            Message::Chat {
                text: "hello, 世界\nsecond line".into(),
            },
            Message::ChatMessage {
                id: 3,
                text: "hi".into(),
            },
            Message::UplinkSpread {
                spreads: vec![(3, 17), (400, u16::MAX)],
            },
            Message::Unknown { kind: 0x3f },
        ]
    }

    #[test]
    fn uplink_spreads_encode_as_documented_and_are_bounded() {
        // docs/PROTOCOL.md §5.16.
        let m = Message::UplinkSpread {
            spreads: vec![(3, 17)],
        };
        assert_eq!(m.to_frame(), [0x05, 0x10, 0x01, 0x03, 0x00, 0x11]);
        let mut body = vec![0x10];
        varint::encode(MAX_UPLINK_SPREADS as u64 + 1, &mut body);
        assert_eq!(
            Message::decode_body(&body),
            Err(ControlError::TooManyEntries("uplink spreads"))
        );
    }

    #[test]
    fn every_message_round_trips_through_a_split_stream() {
        let mut stream = Vec::new();
        for m in samples() {
            m.encode(&mut stream);
        }
        // Feed one byte at a time: framing must cope with any split.
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &stream {
            dec.push(std::slice::from_ref(b));
            while let Some(m) = dec.next_message() {
                got.push(m.unwrap());
            }
        }
        assert_eq!(got, samples());
    }

    #[test]
    fn trailing_fields_from_newer_peers_are_ignored() {
        let mut body = Vec::new();
        Message::SetMute { muted: true }.encode_body(&mut body);
        body.extend_from_slice(b"future field");
        assert_eq!(
            Message::decode_body(&body).unwrap(),
            Message::SetMute { muted: true }
        );
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let mut dec = FrameDecoder::new();
        dec.push(&[0x80, 0x01, 0x00, 0x01]); // length 65537
        assert_eq!(
            dec.next_message(),
            Some(Err(ControlError::TooLarge(65_537)))
        );
        assert_eq!(
            Message::decode_body(&[kind::JOIN as u8, 0x02, 0xff, 0xfe]),
            Err(ControlError::BadUtf8)
        );
        assert_eq!(
            Message::decode_body(&[kind::JOIN as u8, 0x40, 65]),
            Err(ControlError::FieldTooLong {
                field: "room",
                max: 64
            })
        );
        // A roster count far beyond the body must not allocate or panic.
        assert_eq!(
            Message::decode_body(&[
                kind::WELCOME as u8,
                1,
                0,
                0,
                0,
                1,
                0,
                0x80,
                0xff,
                0xff,
                0xff
            ]),
            Err(ControlError::Truncated)
        );
    }

    #[test]
    fn error_codes_round_trip() {
        for n in 0..40 {
            assert_eq!(ErrorCode::from_u16(n).to_u16(), n);
        }
        assert_eq!(ErrorCode::from_u16(8), ErrorCode::RoomFull);
    }

    #[test]
    fn name_rules() {
        assert!(valid_name("Alice"));
        assert!(!valid_name(""));
        assert!(!valid_name("   "));
        assert!(!valid_name("a\nb"));
        assert!(!valid_name(&"x".repeat(65)));
    }

    /// At most `max` bytes of any UTF-8, control characters included (free-form fields).
    fn string_within(max: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(any::<char>(), 0..=max).prop_map(move |chars| {
            let mut s = String::new();
            for c in chars {
                if s.len() + c.len_utf8() > max {
                    break;
                }
                s.push(c);
            }
            s
        })
    }

    /// Any name [`valid_name`] accepts: ASCII (rich in characters URLs must escape) or any
    /// Unicode, up to the full [`MAX_NAME_LEN`] bytes.
    pub(crate) fn valid_names() -> impl Strategy<Value = String> {
        names_from(prop_oneof!["[ -~]{1,64}", "[^\\p{Cc}]{1,64}"])
    }

    /// Valid names of 61 to 64 bytes.
    fn long_names() -> impl Strategy<Value = String> {
        names_from("[^\\p{Cc}]{64}")
    }

    /// `strings` cut to at most [`MAX_NAME_LEN`] bytes, the valid ones.
    fn names_from(strings: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
        strings
            .prop_map(|s| {
                let mut end = s.len().min(MAX_NAME_LEN);
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                s[..end].to_string()
            })
            .prop_filter("valid names only", |s| valid_name(s))
    }

    fn cluster_edges() -> impl Strategy<Value = ClusterEdge> {
        let host = prop_oneof![
            "[a-z0-9]{1,20}(\\.[a-z0-9]{1,20}){0,3}",
            any::<std::net::Ipv6Addr>().prop_map(|a| a.to_string()),
        ];
        (
            host,
            1u16..,
            any::<Option<[u8; 32]>>(),
            string_within(MAX_NAME_LEN),
        )
            .prop_map(|(host, port, fingerprint, region)| ClusterEdge {
                edge: crate::invite::Edge {
                    host,
                    port,
                    fingerprint,
                },
                region,
            })
    }

    fn participants() -> impl Strategy<Value = Participant> {
        participants_named(valid_names())
    }

    fn participants_named(
        names: impl Strategy<Value = String>,
    ) -> impl Strategy<Value = Participant> {
        (0..=varint::MAX, any::<u32>(), names, any::<bool>()).prop_map(|(id, ssrc, name, muted)| {
            Participant {
                id,
                ssrc,
                name,
                muted,
            }
        })
    }

    /// A short list, or now and then a long one (64 entries and more take a 2-byte count).
    fn long_sometimes<S: Strategy>(element: fn() -> S) -> impl Strategy<Value = Vec<S::Value>> {
        prop_oneof![
            6 => proptest::collection::vec(element(), 0..8),
            1 => proptest::collection::vec(element(), 64..=255),
        ]
    }

    /// Any message a peer may send: ids within a varint, names valid, strings within their
    /// limits, a token non-empty (an empty one means none), lists of up to 255 entries. Error
    /// codes are known ones and unknown ones in canonical form (`from_u16`); `Unknown` is any
    /// reserved type, which round-trips as the type alone.
    fn message() -> impl Strategy<Value = Message> {
        let id = 0..=varint::MAX;
        let software = || string_within(MAX_NAME_LEN * 2);
        prop_oneof![
            (long_sometimes(any::<u16>), software())
                .prop_map(|(versions, software)| Message::Hello { versions, software }),
            (any::<u16>(), software())
                .prop_map(|(version, software)| Message::HelloAck { version, software }),
            (
                valid_names(),
                valid_names(),
                proptest::option::of(
                    string_within(MAX_TOKEN_LEN)
                        .prop_filter("an empty token means none", |t| !t.is_empty())
                ),
                any::<u8>()
            )
                .prop_map(|(room, name, token, flags)| Message::Join {
                    room,
                    name,
                    token,
                    flags
                }),
            (
                id.clone(),
                any::<u32>(),
                valid_names(),
                long_sometimes(participants)
            )
                .prop_map(|(participant_id, ssrc, room, roster)| Message::Welcome {
                    participant_id,
                    ssrc,
                    room,
                    roster
                }),
            participants().prop_map(Message::ParticipantJoined),
            id.clone().prop_map(|id| Message::ParticipantLeft { id }),
            any::<bool>().prop_map(|muted| Message::SetMute { muted }),
            (id.clone(), any::<bool>()).prop_map(|(id, muted)| Message::MuteChanged { id, muted }),
            Just(Message::Leave),
            (any::<u64>(), any::<u64>())
                .prop_map(|(nonce, sent_micros)| Message::Ping { nonce, sent_micros }),
            (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(nonce, ping_sent_micros, responder_micros)| Message::Pong {
                    nonce,
                    ping_sent_micros,
                    responder_micros
                }
            ),
            (prop_oneof![0u16..24, any::<u16>()], string_within(1024)).prop_map(
                |(code, message)| Message::Error {
                    code: ErrorCode::from_u16(code),
                    message
                }
            ),
            string_within(MAX_CHAT_LEN).prop_map(|text| Message::Chat { text }),
            (id, string_within(MAX_CHAT_LEN))
                .prop_map(|(id, text)| Message::ChatMessage { id, text }),
            proptest::collection::vec(cluster_edges(), 0..=MAX_CLUSTER_EDGES)
                .prop_map(|edges| Message::Edges { edges }),
            proptest::collection::vec((0..=varint::MAX, any::<u16>()), 0..=8)
                .prop_map(|spreads| Message::UplinkSpread { spreads }),
            (kind::UPLINK_SPREAD + 1..=varint::MAX).prop_map(|kind| Message::Unknown { kind }),
        ]
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Message::decode_body(&bytes);
            let mut dec = FrameDecoder::new();
            dec.push(&bytes);
            for _ in 0..bytes.len() + 1 {
                if dec.next_message().is_none() { break; }
            }
        }

        /// Every message a peer may send — each variant, with any field values the protocol
        /// allows — comes out of the frame decoder exactly as it went in, and alone.
        #[test]
        fn message_round_trip(m in message()) {
            let mut dec = FrameDecoder::new();
            dec.push(&m.to_frame());
            prop_assert_eq!(dec.next_message(), Some(Ok(m)));
            prop_assert_eq!(dec.next_message(), None);
        }

        /// A stream of messages decodes to the same sequence however the transport splits it.
        #[test]
        fn message_stream_round_trips_at_any_split(
            messages in proptest::collection::vec(message(), 0..8),
            cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..8),
        ) {
            let mut stream = Vec::new();
            for m in &messages {
                m.encode(&mut stream);
            }
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            let mut start = 0;
            for cut in cuts {
                dec.push(&stream[start..cut]);
                start = cut;
                while let Some(m) = dec.next_message() {
                    got.push(m);
                }
            }
            prop_assert_eq!(got, messages.into_iter().map(Ok).collect::<Vec<_>>());
        }

        /// The roster [`MAX_MESSAGE_LEN`] is sized for, a Welcome listing 255 people with long
        /// names, fits it and round-trips, also when split inside its 4-byte length prefix.
        #[test]
        fn full_room_welcome_round_trips(
            participant_id in 0..=varint::MAX,
            ssrc: u32,
            room in valid_names(),
            roster in proptest::collection::vec(
                participants_named(long_names()),
                255,
            ),
            cut in 0usize..4,
        ) {
            let m = Message::Welcome { participant_id, ssrc, room, roster };
            let frame = m.to_frame();
            let (len, used) = varint::decode(&frame).unwrap();
            prop_assert_eq!(used, 4);
            prop_assert!(len <= MAX_MESSAGE_LEN as u64);
            let mut dec = FrameDecoder::new();
            dec.push(&frame[..cut]);
            prop_assert_eq!(dec.next_message(), None);
            dec.push(&frame[cut..]);
            prop_assert_eq!(dec.next_message(), Some(Ok(m)));
        }

        #[test]
        fn join_round_trip(room in "[^\\p{Cc}]{1,16}", name in "[^\\p{Cc}]{1,16}",
                           token in proptest::option::of("[a-zA-Z0-9._-]{1,40}"), flags: u8) {
            let m = Message::Join { room, name, token, flags };
            let mut dec = FrameDecoder::new();
            dec.push(&m.to_frame());
            prop_assert_eq!(dec.next_message().unwrap().unwrap(), m);
        }
    }
}
