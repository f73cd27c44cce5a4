//! The relay's sans-IO core: connection phases, rooms, rosters and the forwarding decision.
//!
//! It owns no sockets and no clock. The I/O shell ([`crate::server`]) feeds it control
//! messages and datagrams and carries out what it returns, the way quinn drives quinn-proto.
//! It is generic over `H`, the shell's handle for a connection (a quinn connection plus a
//! control-stream sender in production, a plain id in tests), so forwarding needs no second
//! lookup and the core never sees a quinn type.

use crate::bucket::TokenBucket;
use natter_proto::control::{
    ErrorCode, JOIN_FLAG_ECHO, MAX_NAME_LEN, MAX_UPLINK_SPREADS, Message, NAME_RULE, Participant,
    UPLINK_SPREAD_STEP_MS, valid_name,
};
use natter_proto::media::{Datagram, PacketKind};
use natter_proto::rtcp;
use natter_proto::rtp::AudioLevel;
use natter_proto::spread::Spread;
use std::collections::HashMap;

/// The shell's id for a connection.
pub type ConnId = u64;

/// Why a media datagram was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a valid RTP-over-QUIC datagram (bad flow id, truncated, bad RTP/RTCP).
    Malformed,
    /// Larger than the relay's per-datagram limit.
    Oversize,
    /// The sender has not joined a room yet.
    NotJoined,
    /// The packet carries an SSRC other than the one the relay assigned to the sender.
    WrongSsrc,
    /// The sender exceeded its packet or byte rate.
    RateLimited,
    /// Large-room mode: the sender is not among the N loudest speakers.
    NotLoudest,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        Self::Malformed,
        Self::Oversize,
        Self::NotJoined,
        Self::WrongSsrc,
        Self::RateLimited,
        Self::NotLoudest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Oversize => "oversize",
            Self::NotJoined => "not_joined",
            Self::WrongSsrc => "wrong_ssrc",
            Self::RateLimited => "rate_limited",
            Self::NotLoudest => "not_loudest",
        }
    }
}

/// Who may join.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Access {
    /// Anyone with the invite.
    #[default]
    Open,
    /// Only holders of a token signed with this secret (see [`crate::token`]).
    Tokens { secret: Vec<u8> },
}

/// What the shell must do after the core handled a control message.
#[derive(Debug)]
pub struct Outcome<H> {
    /// Messages to send, each on the given connection's control stream.
    pub sends: Vec<(H, Message)>,
    /// Close the connection that sent the message.
    pub close: Option<Close>,
    /// Close these other connections (already out of their rooms): a token's previous holder
    /// when the token joins again.
    pub evict: Vec<(H, Close)>,
}

/// Why the core wants a connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// The client said Leave: close with application code 0.
    Left,
    /// A protocol or policy error: send Error, then close with the code's number.
    Error(ErrorCode, String),
}

impl Close {
    /// The error code, if this close is an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Left => None,
            Self::Error(code, _) => Some(*code),
        }
    }
}

impl<H> Outcome<H> {
    fn none() -> Self {
        Self {
            sends: Vec::new(),
            close: None,
            evict: Vec::new(),
        }
    }

    fn fatal(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self {
            sends: Vec::new(),
            close: Some(Close::Error(code, reason.into())),
            evict: Vec::new(),
        }
    }
}

/// Where a connection is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitHello,
    AwaitJoin,
    Joined,
}

#[derive(Debug)]
struct Connection<H> {
    handle: H,
    phase: Phase,
    member: Option<Member>,
    packets: TokenBucket,
    bytes: TokenBucket,
    /// One-way transits of its Pings: its uplink's spread ([`Message::UplinkSpread`]).
    uplink: Spread,
    /// The uplink spread last announced to its room, ms, and when (Unix ms).
    announced: Option<(u16, u64)>,
}

#[derive(Debug, Clone)]
struct Member {
    participant: Participant,
    room: String,
    echo: bool,
    /// The access token it joined with (token relays), so the token's next Join can
    /// replace it.
    token: Option<String>,
    /// Chat messages it may still send ([`CHAT_RATE`], [`CHAT_BURST`]).
    chat: TokenBucket,
}

/// Chat messages a member may send per second, and in a burst. Each one becomes a message in
/// every other member's control queue, so a member typing fast (or a script) must not fill
/// the queues of the room: more are dropped, not forwarded.
pub const CHAT_RATE: f64 = 1.0;
pub const CHAT_BURST: f64 = 3.0;

/// One room: its members' connection ids, in join order.
#[derive(Debug)]
struct Room<H> {
    /// Everything forwarding needs, in one contiguous list so the hot path touches no map but
    /// the room lookup.
    members: Vec<RoomMember<H>>,
    /// Trunks to other relays interested in this room: each gets every local sender's
    /// datagrams once, and the local members' joins, leaves and mutes.
    trunks: Vec<TrunkSub<H>>,
    /// Members on other relays, by the trunk that told us of them.
    remote: Vec<(ConnId, Participant)>,
    /// Large rooms over several relays: the level of each remote sender heard lately, so the
    /// loudest-speaker rule ranks the whole room, not only this relay's part of it.
    remote_speakers: Vec<RemoteSpeaker>,
}

/// A sender on another relay, as its datagrams over a trunk say (see [`Room::loud_enough`]).
#[derive(Debug, Clone, Copy)]
struct RemoteSpeaker {
    trunk: ConnId,
    ssrc: u32,
    level: f32,
    voice_ms: u64,
}

/// A trunk's subscription to a room (see [`RelayCore::trunk_subscribe`]).
#[derive(Debug)]
struct TrunkSub<H> {
    trunk: ConnId,
    handle: H,
}

impl<H> Room<H> {
    fn new() -> Self {
        Self {
            members: Vec::new(),
            trunks: Vec::new(),
            remote: Vec::new(),
            remote_speakers: Vec::new(),
        }
    }

    /// True when a participant id or SSRC is taken in this room, here or on another relay.
    fn taken(&self, local: &HashMap<ConnId, Connection<H>>, p: &Participant) -> bool {
        let clash = |q: &Participant| q.id == p.id || q.ssrc == p.ssrc;
        self.remote.iter().any(|(_, q)| clash(q))
            || self
                .members
                .iter()
                .filter_map(|m| local.get(&m.conn)?.member.as_ref())
                .any(|m| clash(&m.participant))
    }
}

#[derive(Debug)]
struct RoomMember<H> {
    conn: ConnId,
    handle: H,
    /// Smoothed RFC 6464 level of its voiced packets (−dBov: lower is louder) and when it
    /// last sent voice, for forwarding the loudest speakers.
    level: f32,
    voice_ms: u64,
}

/// Limits the core enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_participants_per_room: usize,
    pub max_rooms: usize,
    pub access: Access,
    /// Largest media datagram accepted (the protocol maximum is 1200).
    pub max_datagram_bytes: usize,
    /// Per-participant media packet rate (packets/s) and burst. 10 ms frames plus RTCP need
    /// ~101 packets/s.
    pub packet_rate: f64,
    pub packet_burst: f64,
    /// Per-participant media byte rate (bytes/s) and burst. Opus tops out at 510 kbit/s.
    pub byte_rate: f64,
    pub byte_burst: f64,
    /// Large rooms: forward only the N loudest speakers (by the RTP audio level), if set.
    pub forward_loudest: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_participants_per_room: 64,
            max_rooms: 10_000,
            access: Access::Open,
            max_datagram_bytes: natter_proto::MAX_MEDIA_DATAGRAM,
            packet_rate: 150.0,
            packet_burst: 50.0,
            byte_rate: 80_000.0,
            byte_burst: 24_000.0,
            forward_loudest: None,
        }
    }
}

/// The relay state.
#[derive(Debug)]
pub struct RelayCore<H> {
    software: String,
    limits: Limits,
    connections: HashMap<ConnId, Connection<H>>,
    rooms: HashMap<String, Room<H>>,
    /// Which connection each access token in use belongs to: a bearer token admits one
    /// connection at a time.
    token_holders: HashMap<String, ConnId>,
    next_participant: u64,
    /// Members of all rooms, kept as they join and leave: the plane publishes it every round,
    /// and summing the rooms there cost O(rooms) per round.
    participants: usize,
    /// Mixed into every SSRC; see [`RelayCore::with_ssrc_salt`].
    ssrc_salt: u32,
    /// This relay's number in its cluster (0 alone): the high bits of its participant ids and
    /// SSRCs, so no two relays of a cluster hand out the same.
    node: u8,
    /// Which room each remote sender (trunk, SSRC) speaks in.
    remote_senders: HashMap<(ConnId, u32), String>,
}

/// Participant id and SSRC of the `n`th participant of relay `node` whose SSRC salt is
/// `salt`: the id carries the node in bits 32–39; the SSRC is a bijection of node (top 8 bits)
/// and `n` XOR the salt (low 24 bits), so they are unique across up to 255 relays for the
/// first 16.7 million joins of each relay's life (after that SSRCs repeat; a remote clash is
/// refused, [`RelayCore::remote_joined`]), and differ between two lives of one relay. A lone
/// relay (node 0) numbers its ids as it always has.
fn participant_ids(node: u8, n: u64, salt: u32) -> (u64, u32) {
    let id = (u64::from(node) << 32) | (n & 0xffff_ffff);
    let ssrc = ssrc_for(
        (u64::from(node) << 24) | (n & 0x00ff_ffff),
        salt & 0x00ff_ffff,
    );
    (id, ssrc)
}

/// MurmurHash3's 32-bit finaliser over the participant id XOR `salt`: a bijection on u32, so
/// sequential participant ids become SSRCs that look random (RFC 3550 asks for random SSRCs)
/// yet can never collide within one relay process.
fn ssrc_for(id: u64, salt: u32) -> u32 {
    let mut x = id as u32 ^ salt;
    x ^= x >> 16;
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 13;
    x = x.wrapping_mul(0xc2b2_ae35);
    x ^ (x >> 16)
}

impl<H: Clone> RelayCore<H> {
    pub fn new(software: impl Into<String>, limits: Limits) -> Self {
        Self {
            software: software.into(),
            limits,
            connections: HashMap::new(),
            rooms: HashMap::new(),
            token_holders: HashMap::new(),
            next_participant: 1,
            participants: 0,
            ssrc_salt: 0,
            node: 0,
            remote_senders: HashMap::new(),
        }
    }

    /// SSRCs made with `salt` (the shell passes a random one per process). Without it a
    /// restarted relay would hand out the same SSRCs again in a new order: the client who
    /// rejoins first gets the SSRC someone else had before the crash, and listeners, who
    /// remember who sent under which SSRC, would put one person's statistics under
    /// another's name.
    pub fn with_ssrc_salt(mut self, salt: u32) -> Self {
        self.ssrc_salt = salt;
        self
    }

    /// A new QUIC connection completed its handshake at `now_ms` (Unix ms).
    pub fn connect(&mut self, conn: ConnId, handle: H, now_ms: u64) {
        let now = now_ms as f64;
        let l = &self.limits;
        self.connections.insert(
            conn,
            Connection {
                handle,
                phase: Phase::AwaitHello,
                member: None,
                packets: TokenBucket::new(l.packet_rate, l.packet_burst, now),
                bytes: TokenBucket::new(l.byte_rate, l.byte_burst, now),
                uplink: Spread::default(),
                announced: None,
            },
        );
    }

    /// Number of open connections.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Number of rooms with at least one member.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Names of the rooms with at least one member (for the cluster directory).
    pub fn room_names(&self) -> impl Iterator<Item = &str> {
        self.rooms
            .iter()
            .filter(|(_, r)| !r.members.is_empty())
            .map(|(name, _)| name.as_str())
    }

    /// Number of participants in rooms.
    pub fn participant_count(&self) -> usize {
        self.participants
    }

    /// Handles of every open connection (for shutdown notices).
    pub fn handles(&self) -> impl Iterator<Item = &H> {
        self.connections.values().map(|c| &c.handle)
    }

    /// A control message arrived on `conn`'s control stream at `now_ms` (Unix ms).
    pub fn on_message(&mut self, conn: ConnId, msg: Message, now_ms: u64) -> Outcome<H> {
        let Some(c) = self.connections.get_mut(&conn) else {
            return Outcome::none();
        };
        match (c.phase, msg) {
            (_, Message::Unknown { .. }) => Outcome::none(),
            (Phase::AwaitHello, Message::Hello { versions, .. }) => {
                if versions.contains(&natter_proto::PROTOCOL_VERSION) {
                    c.phase = Phase::AwaitJoin;
                    Outcome {
                        sends: vec![(
                            c.handle.clone(),
                            Message::HelloAck {
                                version: natter_proto::PROTOCOL_VERSION,
                                software: self.software.clone(),
                            },
                        )],
                        close: None,
                        evict: Vec::new(),
                    }
                } else {
                    Outcome::fatal(
                        ErrorCode::UnsupportedVersion,
                        format!(
                            "relay speaks protocol version {}, client offered {versions:?}",
                            natter_proto::PROTOCOL_VERSION
                        ),
                    )
                }
            }
            (Phase::AwaitHello, _) => {
                Outcome::fatal(ErrorCode::HelloRequired, "first message must be Hello")
            }
            (_, Message::Hello { .. }) => {
                Outcome::fatal(ErrorCode::ProtocolViolation, "Hello sent twice")
            }
            (_, Message::Ping { nonce, sent_micros }) => {
                // Its one-way transit (the clocks' offset cancels out of the spread).
                c.uplink.push(now_ms as f64 - sent_micros as f64 / 1000.0);
                let pong = Message::Pong {
                    nonce,
                    ping_sent_micros: sent_micros,
                    // The core owns no clock: the shell's time, at its millisecond grain.
                    responder_micros: now_ms.saturating_mul(1000),
                };
                let mut sends = vec![(c.handle.clone(), pong)];
                sends.extend(self.uplink_news(conn, now_ms));
                Outcome {
                    sends,
                    close: None,
                    evict: Vec::new(),
                }
            }
            (_, Message::Pong { .. }) => Outcome::none(),
            (
                Phase::AwaitJoin,
                Message::Join {
                    room,
                    name,
                    flags,
                    token,
                },
            ) => self.join(conn, room, name, token, flags & JOIN_FLAG_ECHO != 0, now_ms),
            (Phase::Joined, Message::Join { .. }) => {
                Outcome::fatal(ErrorCode::AlreadyJoined, "already in a room")
            }
            (Phase::Joined, Message::SetMute { muted }) => self.set_mute(conn, muted),
            (Phase::AwaitJoin, Message::SetMute { .. }) => {
                Outcome::fatal(ErrorCode::NotJoined, "SetMute before Join")
            }
            (Phase::Joined, Message::Chat { text }) => self.chat(conn, text, now_ms),
            (Phase::AwaitJoin, Message::Chat { .. }) => {
                Outcome::fatal(ErrorCode::NotJoined, "Chat before Join")
            }
            (_, Message::Leave) => Outcome {
                sends: Vec::new(),
                close: Some(Close::Left),
                evict: Vec::new(),
            },
            (_, Message::Error { .. }) => Outcome::none(),
            (
                _,
                m @ (Message::HelloAck { .. }
                | Message::Welcome { .. }
                | Message::ParticipantJoined(_)
                | Message::ParticipantLeft { .. }
                | Message::MuteChanged { .. }
                | Message::ChatMessage { .. }
                | Message::Edges { .. }
                | Message::UplinkSpread { .. }),
            ) => Outcome::fatal(
                ErrorCode::ProtocolViolation,
                format!("clients may not send {}", message_name(&m)),
            ),
        }
    }

    fn join(
        &mut self,
        conn: ConnId,
        room: String,
        mut name: String,
        token: Option<String>,
        echo: bool,
        now_ms: u64,
    ) -> Outcome<H> {
        if !valid_name(&room) {
            return Outcome::fatal(
                ErrorCode::InvalidRoom,
                format!("room name must be {NAME_RULE}"),
            );
        }
        let mut used_token = None;
        if let Access::Tokens { secret } = &self.limits.access {
            let Some(token) = token else {
                return Outcome::fatal(
                    ErrorCode::TokenRequired,
                    "this relay needs an access token",
                );
            };
            match crate::token::verify(secret, &token, &room, now_ms / 1000) {
                Ok(claims) => {
                    if let Some(bound) = claims.name {
                        name = bound;
                    }
                    used_token = Some(token);
                }
                Err(e) => {
                    return Outcome::fatal(
                        e.code(),
                        format!("access token refused for room {room:?}"),
                    );
                }
            }
        }
        if !valid_name(&name) {
            return Outcome::fatal(
                ErrorCode::InvalidName,
                format!("display name must be {NAME_RULE}"),
            );
        }
        // One connection per token at a time, the newest: a reconnecting client replaces its
        // own stale connection at once, and a leaked token cannot sit in the room unnoticed
        // next to its owner. Done before the capacity checks, which the old holder's place
        // counts in.
        let mut evict = Vec::new();
        let mut notices = Vec::new();
        if let Some(old) = used_token
            .as_ref()
            .and_then(|t| self.token_holders.get(t))
            .copied()
            .filter(|old| *old != conn)
            && let Some(handle) = self.connections.get(&old).map(|c| c.handle.clone())
        {
            notices = self.disconnect(old);
            evict.push((
                handle,
                Close::Error(
                    ErrorCode::TokenInUse,
                    "the access token joined again from another connection".into(),
                ),
            ));
        }
        let existing = self.rooms.get(&room).map_or(0, |r| r.members.len());
        let refusal = if existing == 0 && self.rooms.len() >= self.limits.max_rooms {
            Some((
                ErrorCode::ServerFull,
                "the relay has no room for another room".to_string(),
            ))
        } else if existing >= self.limits.max_participants_per_room {
            Some((
                ErrorCode::RoomFull,
                format!("room {room:?} is full ({existing} participants)"),
            ))
        } else {
            None
        };
        if let Some((code, reason)) = refusal {
            // The token's previous holder is gone either way.
            return Outcome {
                sends: notices,
                close: Some(Close::Error(code, reason)),
                evict,
            };
        }
        let (id, ssrc) = participant_ids(self.node, self.next_participant, self.ssrc_salt);
        self.next_participant += 1;
        let name = self.distinct_name(&room, name);
        let participant = Participant {
            id,
            ssrc,
            name,
            muted: false,
        };
        let c = self.connections.get_mut(&conn).expect("checked by caller");
        c.phase = Phase::Joined;
        if let Some(token) = &used_token {
            self.token_holders.insert(token.clone(), conn);
        }
        c.member = Some(Member {
            participant: participant.clone(),
            room: room.clone(),
            echo,
            token: used_token,
            chat: TokenBucket::new(CHAT_RATE, CHAT_BURST, now_ms as f64),
        });
        let handle = c.handle.clone();
        let r = self.rooms.entry(room.clone()).or_insert_with(Room::new);
        let mut sends: Vec<(H, Message)> = notices;
        let trunks = r.trunks.iter().map(|t| &t.handle);
        sends.extend(
            r.members
                .iter()
                .map(|m| &m.handle)
                .chain(trunks)
                .map(|h| (h.clone(), Message::ParticipantJoined(participant.clone()))),
        );
        self.participants += 1;
        r.members.push(RoomMember {
            conn,
            handle: handle.clone(),
            level: 127.0,
            voice_ms: 0,
        });
        let roster = r
            .members
            .iter()
            .filter_map(|m| self.connections.get(&m.conn)?.member.as_ref())
            .map(|m| m.participant.clone())
            .chain(r.remote.iter().map(|(_, p)| p.clone()))
            .collect();
        // The newcomer hears how jittery everyone's uplink is, and everyone the newcomer's
        // (measured from the Pings it sent before Join), before any audio from them.
        let spreads: Vec<(u64, u16)> = r
            .members
            .iter()
            .filter(|m| m.conn != conn)
            .filter_map(|m| {
                let other = self.connections.get(&m.conn)?;
                let (spread_ms, _) = other.announced?;
                Some((other.member.as_ref()?.participant.id, spread_ms))
            })
            .take(MAX_UPLINK_SPREADS)
            .collect();
        sends.extend(self.uplink_news(conn, now_ms));
        if !spreads.is_empty() {
            sends.insert(0, (handle.clone(), Message::UplinkSpread { spreads }));
        }
        sends.insert(
            0,
            (
                handle,
                Message::Welcome {
                    participant_id: id,
                    ssrc: participant.ssrc,
                    room,
                    roster,
                },
            ),
        );
        Outcome {
            sends,
            close: None,
            evict,
        }
    }

    /// [`Message::UplinkSpread`] about `conn` for the other local members of its room, if it
    /// is in one, its spread is measured, and it is news: never announced, or moved by
    /// [`UPLINK_SPREAD_STEP_MS`] or more at least a second after the last announcement (a
    /// peer timing its Pings to make noise gets one message per second into the room).
    fn uplink_news(&mut self, conn: ConnId, now_ms: u64) -> Vec<(H, Message)> {
        let Some(c) = self.connections.get_mut(&conn) else {
            return Vec::new();
        };
        let (Some(member), Some(spread)) = (c.member.as_ref(), c.uplink.spread_ms()) else {
            return Vec::new();
        };
        let spread_ms = spread.round().clamp(0.0, f64::from(u16::MAX)) as u16;
        let news = c.announced.is_none_or(|(last, at)| {
            spread_ms.abs_diff(last) >= UPLINK_SPREAD_STEP_MS && now_ms >= at + 1_000
        });
        if !news {
            return Vec::new();
        }
        c.announced = Some((spread_ms, now_ms));
        let id = member.participant.id;
        let msg = Message::UplinkSpread {
            spreads: vec![(id, spread_ms)],
        };
        self.rooms.get(&member.room).map_or_else(Vec::new, |r| {
            r.members
                .iter()
                .filter(|m| m.conn != conn)
                .map(|m| (m.handle.clone(), msg.clone()))
                .collect()
        })
    }

    /// The room membership of connection `conn`, once it joined.
    fn member_mut(&mut self, conn: ConnId) -> Option<&mut Member> {
        self.connections
            .get_mut(&conn)
            .and_then(|c| c.member.as_mut())
    }

    fn set_mute(&mut self, conn: ConnId, muted: bool) -> Outcome<H> {
        let Some(member) = self.member_mut(conn) else {
            return Outcome::none();
        };
        // Only changes are news: a client repeating its state (or a storm of SetMute) must
        // not become one message per member of the room each time.
        if member.participant.muted == muted {
            return Outcome::none();
        }
        member.participant.muted = muted;
        let id = member.participant.id;
        let room = member.room.clone();
        Outcome {
            sends: self.broadcast(&room, None, &Message::MuteChanged { id, muted }),
            close: None,
            evict: Vec::new(),
        }
    }

    /// `name`, or when someone in `room` already has it (ignoring case and surrounding
    /// space) `name (2)`, `name (3)`, …: everyone in a room has a name of their own, so the
    /// roster, the chat and per-person volumes can tell people apart. Renaming rather than
    /// refusing matters for rejoins: a client whose network changed joins again while the
    /// relay still holds its old connection (until the idle timeout), and must not be shut out
    /// by its own ghost. The Welcome's roster tells the client the name it got.
    fn distinct_name(&self, room: &str, name: String) -> String {
        let taken = |candidate: &str| {
            let key = candidate.trim().to_lowercase();
            self.rooms.get(room).is_some_and(|r| {
                r.members.iter().any(|m| {
                    self.connections
                        .get(&m.conn)
                        .and_then(|c| c.member.as_ref())
                        .is_some_and(|member| member.participant.name.trim().to_lowercase() == key)
                })
            })
        };
        if !taken(&name) {
            return name;
        }
        (2..)
            .map(|n| {
                let suffix = format!(" ({n})");
                let mut base = name.trim_end().to_string();
                while base.len() + suffix.len() > MAX_NAME_LEN {
                    base.pop();
                }
                format!("{base}{suffix}")
            })
            .find(|candidate| !taken(candidate))
            .expect("a room holds fewer members than there are numbers")
    }

    /// Forwards a chat message to everyone else in the room, within the member's chat rate;
    /// empty or blank text and messages over the rate are dropped. Nothing is kept or logged.
    fn chat(&mut self, conn: ConnId, text: String, now_ms: u64) -> Outcome<H> {
        let Some(member) = self.member_mut(conn) else {
            return Outcome::none();
        };
        if text.trim().is_empty() || !member.chat.take(1.0, now_ms as f64) {
            return Outcome::none();
        }
        let id = member.participant.id;
        let room = member.room.clone();
        Outcome {
            sends: self.broadcast(&room, Some(conn), &Message::ChatMessage { id, text }),
            close: None,
            evict: Vec::new(),
        }
    }

    /// Messages `msg` (news about a local member) to every member of `room` except `except`,
    /// and to every trunk subscribed to it.
    fn broadcast(&self, room: &str, except: Option<ConnId>, msg: &Message) -> Vec<(H, Message)> {
        self.rooms.get(room).map_or_else(Vec::new, |r| {
            r.members
                .iter()
                .filter(|m| Some(m.conn) != except)
                .map(|m| &m.handle)
                .chain(r.trunks.iter().map(|t| &t.handle))
                .map(|h| (h.clone(), msg.clone()))
                .collect()
        })
    }

    /// Messages `msg` (news from another relay) to the local members of `room` only: in a
    /// full mesh every relay hears its peers directly, so nothing is passed on to a trunk.
    fn tell_locals(&self, room: &str, msg: &Message) -> Vec<(H, Message)> {
        self.rooms.get(room).map_or_else(Vec::new, |r| {
            r.members
                .iter()
                .map(|m| (m.handle.clone(), msg.clone()))
                .collect()
        })
    }

    fn drop_room(&mut self, room: &str) {
        if let Some(r) = self.rooms.remove(room) {
            for (trunk, p) in r.remote {
                self.remote_senders.remove(&(trunk, p.ssrc));
            }
        }
    }

    /// The connection is gone (closed, timed out, or the shell closed it). Returns the roster
    /// notices for the rest of its room.
    pub fn disconnect(&mut self, conn: ConnId) -> Vec<(H, Message)> {
        let Some(member) = self.connections.remove(&conn).and_then(|c| c.member) else {
            return Vec::new();
        };
        if let Some(token) = &member.token
            && self.token_holders.get(token) == Some(&conn)
        {
            self.token_holders.remove(token);
        }
        if let Some(r) = self.rooms.get_mut(&member.room) {
            let before = r.members.len();
            r.members.retain(|m| m.conn != conn);
            self.participants -= before - r.members.len();
            if r.members.is_empty() {
                // The trunks hear of the last local member's leave too; then the room goes,
                // with what other relays told us about it (they stop sending when they read
                // the leave and see the room gone from the directory).
                let left = Message::ParticipantLeft {
                    id: member.participant.id,
                };
                let notices = r
                    .trunks
                    .iter()
                    .map(|t| (t.handle.clone(), left.clone()))
                    .collect();
                if r.remote.is_empty() {
                    self.drop_room(&member.room);
                }
                return notices;
            }
        }
        self.broadcast(
            &member.room,
            None,
            &Message::ParticipantLeft {
                id: member.participant.id,
            },
        )
    }

    /// Decides where a media datagram from `conn` arriving at `now_ms` (Unix ms) goes: every
    /// other member of its room or, if the sender joined with the echo flag, back to the sender
    /// alone (a loopback test: nobody else hears it). The datagram is forwarded unchanged.
    /// Checks, cheapest first: size, form, membership, SSRC, the sender's rate limits, and in
    /// large-room mode whether it is among the loudest.
    pub fn route(
        &mut self,
        conn: ConnId,
        datagram: &[u8],
        now_ms: u64,
    ) -> Result<impl Iterator<Item = &H>, DropReason> {
        if datagram.len() > self.limits.max_datagram_bytes {
            return Err(DropReason::Oversize);
        }
        let parsed = Datagram::parse(datagram).map_err(|_| DropReason::Malformed)?;
        let level = match parsed.kind {
            PacketKind::Rtp => {
                parsed
                    .rtp()
                    .map_err(|_| DropReason::Malformed)?
                    .header
                    .audio_level
            }
            PacketKind::Rtcp => {
                rtcp::parse_compound(parsed.packet).map_err(|_| DropReason::Malformed)?;
                None
            }
        };
        let c = self
            .connections
            .get_mut(&conn)
            .ok_or(DropReason::NotJoined)?;
        let member = c.member.as_ref().ok_or(DropReason::NotJoined)?;
        if parsed.sender_ssrc() != Some(member.participant.ssrc) {
            return Err(DropReason::WrongSsrc);
        }
        let now = now_ms as f64;
        // Both buckets are charged only when both allow, so a refused packet costs nothing.
        let (mut packets, mut bytes) = (c.packets, c.bytes);
        if !(packets.take(1.0, now) && bytes.take(datagram.len() as f64, now)) {
            c.packets.take(0.0, now);
            return Err(DropReason::RateLimited);
        }
        (c.packets, c.bytes) = (packets, bytes);
        let echo = member.echo;
        // Disjoint fields: no copy of the room name per datagram.
        let room = self
            .rooms
            .get_mut(&member.room)
            .ok_or(DropReason::NotJoined)?;
        // An echo member is heard by nobody else, so it takes no loudest-speaker slot.
        if let (Some(n), PacketKind::Rtp, false) = (self.limits.forward_loudest, parsed.kind, echo)
            && !room.loud_enough(conn, level, now_ms, n)
        {
            return Err(DropReason::NotLoudest);
        }
        // Each trunk gets the datagram once, whoever listens behind it; an echo member's
        // audio stays here.
        let trunks = room.trunks.iter().filter(move |_| !echo);
        Ok(room
            .members
            .iter()
            .filter(move |m| (m.conn == conn) == echo)
            .map(|m| &m.handle)
            .chain(trunks.map(|t| &t.handle)))
    }
}

/// A member another relay announced cannot be added here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteRefused {
    #[error("participant id {0} or its SSRC is already in room {1:?}")]
    Clash(u64, String),
    #[error("room {0:?} is full")]
    RoomFull(String),
}

/// Rooms over several relays: trunks subscribe to rooms, and what other relays say about their
/// members becomes part of each room's roster. The shell (`cluster::trunk`) speaks the
/// trunks' protocol; everything here is state and decisions.
impl<H: Clone> RelayCore<H> {
    /// This relay's number in its cluster (1–255; see [`participant_ids`]).
    pub fn set_node(&mut self, node: u8) {
        self.node = node;
    }

    /// Trunk `trunk` wants room `room`'s local traffic, through `handle` (one subscription
    /// per trunk and room). Returns the first message for it: a Welcome whose roster is
    /// the room's local members (participant id and SSRC 0: it names nobody), or `None` when
    /// the room has no local member to tell of (the trunk will hear of the first one when
    /// it subscribes again).
    pub fn trunk_subscribe(
        &mut self,
        trunk: ConnId,
        handle: H,
        room: &str,
    ) -> Option<(H, Message)> {
        let r = self.rooms.get_mut(room).filter(|r| !r.members.is_empty())?;
        if r.trunks.iter().any(|t| t.trunk == trunk) {
            return None;
        }
        r.trunks.push(TrunkSub {
            trunk,
            handle: handle.clone(),
        });
        let roster = r
            .members
            .iter()
            .filter_map(|m| self.connections.get(&m.conn)?.member.as_ref())
            .map(|m| m.participant.clone())
            .collect();
        Some((
            handle,
            Message::Welcome {
                participant_id: 0,
                ssrc: 0,
                room: room.to_string(),
                roster,
            },
        ))
    }

    /// True when `room` has local members.
    pub fn hosts(&self, room: &str) -> bool {
        self.rooms.get(room).is_some_and(|r| !r.members.is_empty())
    }

    /// True when trunk `trunk` is subscribed to `room`.
    pub fn trunk_subscribed(&self, trunk: ConnId, room: &str) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.trunks.iter().any(|t| t.trunk == trunk))
    }

    /// Trunk `trunk` says `participant` is in `room` on its relay: added to the roster, and the
    /// local members are told.
    pub fn remote_joined(
        &mut self,
        trunk: ConnId,
        room: &str,
        participant: Participant,
    ) -> Result<Vec<(H, Message)>, RemoteRefused> {
        let r = self.rooms.entry(room.to_string()).or_insert_with(Room::new);
        if r.taken(&self.connections, &participant) {
            return Err(RemoteRefused::Clash(participant.id, room.to_string()));
        }
        if r.members.len() + r.remote.len() >= self.limits.max_participants_per_room {
            return Err(RemoteRefused::RoomFull(room.to_string()));
        }
        r.remote.push((trunk, participant.clone()));
        self.remote_senders
            .insert((trunk, participant.ssrc), room.to_string());
        Ok(self.tell_locals(room, &Message::ParticipantJoined(participant)))
    }

    /// Trunk `trunk` says participant `id` left `room`.
    pub fn remote_left(&mut self, trunk: ConnId, room: &str, id: u64) -> Vec<(H, Message)> {
        let Some(r) = self.rooms.get_mut(room) else {
            return Vec::new();
        };
        let Some(at) = r.remote.iter().position(|(t, p)| *t == trunk && p.id == id) else {
            return Vec::new();
        };
        let (_, p) = r.remote.remove(at);
        self.remote_senders.remove(&(trunk, p.ssrc));
        let notices = self.tell_locals(room, &Message::ParticipantLeft { id });
        self.drop_if_empty(room);
        notices
    }

    /// Trunk `trunk` passes on a chat line of its participant `id` in `room` (the origin
    /// relay applied the sender's chat rate).
    pub fn remote_chat(
        &self,
        trunk: ConnId,
        room: &str,
        id: u64,
        text: String,
    ) -> Vec<(H, Message)> {
        let announced = self
            .rooms
            .get(room)
            .is_some_and(|r| r.remote.iter().any(|(t, p)| *t == trunk && p.id == id));
        if !announced {
            return Vec::new();
        }
        self.tell_locals(room, &Message::ChatMessage { id, text })
    }

    /// Trunk `trunk` says participant `id` in `room` (un)muted.
    pub fn remote_muted(
        &mut self,
        trunk: ConnId,
        room: &str,
        id: u64,
        muted: bool,
    ) -> Vec<(H, Message)> {
        let Some(p) = self
            .rooms
            .get_mut(room)
            .and_then(|r| r.remote.iter_mut().find(|(t, p)| *t == trunk && p.id == id))
        else {
            return Vec::new();
        };
        if p.1.muted == muted {
            return Vec::new();
        }
        p.1.muted = muted;
        self.tell_locals(room, &Message::MuteChanged { id, muted })
    }

    /// Trunk `trunk` is gone: its subscriptions end and everyone it told of leaves every
    /// room. Returns the leave notices for the local members.
    pub fn trunk_closed(&mut self, trunk: ConnId) -> Vec<(H, Message)> {
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        let mut notices = Vec::new();
        for room in rooms {
            let Some(r) = self.rooms.get_mut(&room) else {
                continue;
            };
            r.trunks.retain(|t| t.trunk != trunk);
            let gone: Vec<u64> = r
                .remote
                .iter()
                .filter(|(t, _)| *t == trunk)
                .map(|(_, p)| p.id)
                .collect();
            for id in gone {
                notices.extend(self.remote_left(trunk, &room, id));
            }
            self.drop_if_empty(&room);
        }
        notices
    }

    fn drop_if_empty(&mut self, room: &str) {
        if self
            .rooms
            .get(room)
            .is_some_and(|r| r.members.is_empty() && r.remote.is_empty())
        {
            self.drop_room(room);
        }
    }

    /// Decides where a media datagram that arrived on trunk `trunk` at `now_ms` goes: the
    /// local members of its sender's room, never another trunk. The origin relay has checked
    /// the sender and applied the rate limits and loudest-speaker rule; this checks the form
    /// and that the trunk announced that sender, and in large-room mode notes the sender's
    /// level, so that this relay's own senders are ranked against the whole room.
    pub fn route_from_trunk(
        &mut self,
        trunk: ConnId,
        datagram: &[u8],
        now_ms: u64,
    ) -> Result<impl Iterator<Item = &H>, DropReason> {
        if datagram.len() > self.limits.max_datagram_bytes {
            return Err(DropReason::Oversize);
        }
        let parsed = Datagram::parse(datagram).map_err(|_| DropReason::Malformed)?;
        let ssrc = parsed.sender_ssrc().ok_or(DropReason::Malformed)?;
        let room = self
            .remote_senders
            .get(&(trunk, ssrc))
            .and_then(|room| self.rooms.get_mut(room))
            .ok_or(DropReason::WrongSsrc)?;
        if self.limits.forward_loudest.is_some() && parsed.kind == PacketKind::Rtp {
            let level = parsed.rtp().ok().and_then(|p| p.header.audio_level);
            room.note_remote_level(trunk, ssrc, level, now_ms);
        }
        Ok(room.members.iter().map(|m| &m.handle))
    }
}

/// How long a speaker counts as talking after its last voiced packet.
const SPEAKING_MS: u64 = 500;

impl<H> Room<H> {
    /// Updates `conn`'s level from its packet and says whether it is among the `n` loudest
    /// current speakers. Packets without voice are forwarded only while fewer than `n` people
    /// speak (they are cheap: DTX keeps them rare).
    fn loud_enough(
        &mut self,
        conn: ConnId,
        level: Option<AudioLevel>,
        now_ms: u64,
        n: usize,
    ) -> bool {
        let Some(me) = self.members.iter_mut().find(|m| m.conn == conn) else {
            return false;
        };
        if let Some(l) = level.filter(|l| l.voice) {
            me.level += 0.3 * (f32::from(l.level) - me.level);
            me.voice_ms = now_ms;
        }
        let speaking =
            |m: &RoomMember<H>| now_ms.saturating_sub(m.voice_ms) < SPEAKING_MS && m.voice_ms != 0;
        let me = self
            .members
            .iter()
            .find(|m| m.conn == conn)
            .expect("found above");
        let remote_speaking = |r: &&RemoteSpeaker| now_ms.saturating_sub(r.voice_ms) < SPEAKING_MS;
        // Remote speakers rank above an equally loud local one: ties are rare, and each edge
        // then agrees on who yields.
        let louder = self
            .members
            .iter()
            .filter(|m| m.conn != conn && speaking(m) && (m.level, m.conn) < (me.level, me.conn))
            .count()
            + self
                .remote_speakers
                .iter()
                .filter(remote_speaking)
                .filter(|r| r.level <= me.level)
                .count();
        if speaking(me) {
            louder < n
        } else {
            self.members.iter().filter(|m| speaking(m)).count()
                + self.remote_speakers.iter().filter(remote_speaking).count()
                < n
        }
    }

    /// A voiced packet of remote sender `ssrc` (behind `trunk`) arrived at `now_ms`: its
    /// smoothed level, as [`Room::loud_enough`] keeps for local members. Entries of senders
    /// silent for a minute go, so the list holds at most the room's recent speakers.
    fn note_remote_level(
        &mut self,
        trunk: ConnId,
        ssrc: u32,
        level: Option<AudioLevel>,
        now_ms: u64,
    ) {
        let Some(level) = level.filter(|l| l.voice).map(|l| f32::from(l.level)) else {
            return;
        };
        self.remote_speakers
            .retain(|r| now_ms.saturating_sub(r.voice_ms) < REMOTE_SPEAKER_KEPT_MS);
        match self
            .remote_speakers
            .iter_mut()
            .find(|r| r.trunk == trunk && r.ssrc == ssrc)
        {
            Some(r) => {
                r.level += 0.3 * (level - r.level);
                r.voice_ms = now_ms;
            }
            None => self.remote_speakers.push(RemoteSpeaker {
                trunk,
                ssrc,
                level,
                voice_ms: now_ms,
            }),
        }
    }
}

/// How long a remote sender's level is kept after its last voiced packet.
const REMOTE_SPEAKER_KEPT_MS: u64 = 60_000;

fn message_name(m: &Message) -> &'static str {
    match m {
        Message::HelloAck { .. } => "HelloAck",
        Message::Welcome { .. } => "Welcome",
        Message::ParticipantJoined(_) => "ParticipantJoined",
        Message::ParticipantLeft { .. } => "ParticipantLeft",
        Message::MuteChanged { .. } => "MuteChanged",
        Message::ChatMessage { .. } => "ChatMessage",
        Message::Edges { .. } => "Edges",
        Message::UplinkSpread { .. } => "UplinkSpread",
        _ => "this message",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_proto::media::{write_rtcp, write_rtp};
    use natter_proto::rtcp::{RtcpPacket, SenderLatency};
    use natter_proto::rtp::RtpHeader;

    type Core = RelayCore<ConnId>;

    fn hello() -> Message {
        Message::Hello {
            versions: vec![1],
            software: "test".into(),
        }
    }

    fn join(room: &str, name: &str, echo: bool) -> Message {
        Message::Join {
            room: room.into(),
            name: name.into(),
            token: None,
            flags: if echo { JOIN_FLAG_ECHO } else { 0 },
        }
    }

    /// Connects, says hello and joins; returns the assigned SSRC.
    fn enter(core: &mut Core, conn: ConnId, room: &str, echo: bool) -> u32 {
        core.connect(conn, conn, 0);
        assert!(core.on_message(conn, hello(), 0).close.is_none());
        let out = core.on_message(conn, join(room, &format!("p{conn}"), echo), 0);
        match &out.sends[0] {
            (c, Message::Welcome { ssrc, .. }) if *c == conn => *ssrc,
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    fn rtp(ssrc: u32) -> Vec<u8> {
        rtp_with_level(ssrc, None)
    }

    fn rtp_with_level(ssrc: u32, audio_level: Option<AudioLevel>) -> Vec<u8> {
        let mut buf = Vec::new();
        let h = RtpHeader {
            marker: false,
            payload_type: 111,
            sequence: 1,
            timestamp: 960,
            ssrc,
            audio_level,
        };
        write_rtp(&h, &[0xfc, 1, 2], &mut buf);
        buf
    }

    fn targets(core: &mut Core, conn: ConnId, dg: &[u8]) -> Result<Vec<ConnId>, DropReason> {
        targets_at(core, conn, dg, 0)
    }

    fn targets_at(
        core: &mut Core,
        conn: ConnId,
        dg: &[u8],
        now_ms: u64,
    ) -> Result<Vec<ConnId>, DropReason> {
        core.route(conn, dg, now_ms).map(|it| {
            let mut v: Vec<_> = it.copied().collect();
            v.sort();
            v
        })
    }

    /// Pings whose one-way transit (their arrival less `sent_micros`) is 30 ms plus
    /// `jitter_ms(i)`, from a sender whose clock is far off, answered as they come.
    fn ping_train(
        core: &mut Core,
        conn: ConnId,
        from_ms: u64,
        jitter_ms: impl Fn(u64) -> u64,
    ) -> Vec<(ConnId, Message)> {
        let mut told = Vec::new();
        for i in 0..8u64 {
            let at = from_ms + 20 * i + 30 + jitter_ms(i);
            let ping = Message::Ping {
                nonce: i,
                sent_micros: 5_000_000_000 + (from_ms + 20 * i) * 1_000,
            };
            let out = core.on_message(conn, ping, at);
            assert!(out.close.is_none());
            assert!(
                matches!(&out.sends[0], (c, Message::Pong { nonce, .. }) if *c == conn && *nonce == i)
            );
            told.extend(out.sends.into_iter().skip(1));
        }
        told
    }

    #[test]
    fn each_members_uplink_spread_is_measured_from_its_pings_and_told_to_the_others() {
        let mut core = Core::new("r", Limits::default());
        enter(&mut core, 1, "lobby", false);
        // Member 1's uplink varies by 12 ms (one ping a retransmission late: not counted).
        let told = ping_train(&mut core, 1, 0, |i| match i {
            5 => 400,
            i if i % 2 == 0 => 0,
            _ => 12,
        });
        assert!(told.is_empty(), "nobody else in the room: {told:?}");
        // A newcomer pings before Join (10 ms of jitter, twice) and hears member 1's spread right
        // after its Welcome; member 1 hears the newcomer's right after its ParticipantJoined.
        core.connect(2, 2, 1_000);
        core.on_message(2, hello(), 1_000);
        assert!(
            ping_train(&mut core, 2, 1_000, |i| if i == 3 || i == 6 {
                10
            } else {
                0
            })
            .is_empty()
        );
        let out = core.on_message(2, join("lobby", "p2", false), 1_200);
        let id_of = |core: &Core, conn: ConnId| {
            core.connections[&conn]
                .member
                .as_ref()
                .unwrap()
                .participant
                .id
        };
        let (one, two) = (id_of(&core, 1), id_of(&core, 2));
        let sends: Vec<(ConnId, Message)> = out.sends;
        assert!(
            matches!(sends[0], (2, Message::Welcome { .. })),
            "{sends:?}"
        );
        assert_eq!(
            sends[1],
            (
                2,
                Message::UplinkSpread {
                    spreads: vec![(one, 12)]
                }
            )
        );
        assert!(
            matches!(sends[2], (1, Message::ParticipantJoined(_))),
            "{sends:?}"
        );
        assert_eq!(
            sends[3],
            (
                1,
                Message::UplinkSpread {
                    spreads: vec![(two, 10)]
                }
            )
        );
        assert_eq!(sends.len(), 4);
        // Member 1's uplink calms down: news once it moved by 5 ms or more, at most once a
        // second, to the others only.
        let told = ping_train(&mut core, 1, 3_000, |_| 0);
        assert!(
            told.is_empty(),
            "still within a step of 12 with the old transits: {told:?}"
        );
        let told = ping_train(&mut core, 1, 5_000, |_| 0);
        assert_eq!(
            told,
            vec![(
                2,
                Message::UplinkSpread {
                    spreads: vec![(one, 0)]
                }
            )]
        );
        // A client may not send it.
        let forged = core.on_message(
            2,
            Message::UplinkSpread {
                spreads: vec![(one, 1)],
            },
            6_000,
        );
        assert_eq!(
            forged.close.and_then(|c| c.code()),
            Some(ErrorCode::ProtocolViolation)
        );
    }

    /// Two relays' cores joined by a trunk, as their shells would drive them: what each
    /// subscription is told goes to the other core.
    #[test]
    fn a_room_over_two_relays_has_one_roster_and_each_datagram_crosses_once() {
        // Relay A (node 1): members 1 and 2; relay B (node 2): member 3. Trunk id 100 on
        // both sides, subscriptions 101 (A's to B) and 201 (B's to A).
        let (mut a, mut b) = (
            Core::new("a", Limits::default()),
            Core::new("b", Limits::default()),
        );
        a.set_node(1);
        b.set_node(2);
        let s1 = enter(&mut a, 1, "r", false);
        enter(&mut a, 2, "r", false);
        let s3 = enter(&mut b, 3, "r", false);
        assert_ne!(s1, s3, "SSRCs differ across relays");
        // Each side subscribes the trunk and hands the Welcome's roster to the other.
        let tell = |to: &mut Core, from_welcome: Message| {
            let Message::Welcome { room, roster, .. } = from_welcome else {
                panic!("a subscription starts with a Welcome")
            };
            roster
                .into_iter()
                .flat_map(|p| to.remote_joined(100, &room, p).unwrap())
                .collect::<Vec<_>>()
        };
        let (_, wa) = a.trunk_subscribe(100, 101, "r").unwrap();
        let (_, wb) = b.trunk_subscribe(100, 201, "r").unwrap();
        assert!(a.trunk_subscribe(100, 102, "r").is_none(), "once per trunk");
        let told_b = tell(&mut b, wa);
        let told_a = tell(&mut a, wb);
        // B's member hears of both of A's; A's members of B's one.
        assert_eq!(told_b.len(), 2);
        assert!(told_b.iter().all(|(to, _)| *to == 3));
        assert_eq!(told_a.iter().map(|(to, _)| *to).collect::<Vec<_>>(), [1, 2]);
        // A datagram from member 1: member 2 and the trunk, once, on A; member 3 on B.
        assert_eq!(targets(&mut a, 1, &rtp(s1)), Ok(vec![2, 101]));
        let far: Vec<ConnId> = b
            .route_from_trunk(100, &rtp(s1), 0)
            .unwrap()
            .copied()
            .collect();
        assert_eq!(far, [3]);
        // Nobody can speak for a sender the trunk did not announce.
        assert_eq!(
            b.route_from_trunk(100, &rtp(s3), 0).err(),
            Some(DropReason::WrongSsrc)
        );
        // A newcomer on B gets everyone in its Welcome, and A hears of it via the trunk.
        b.connect(4, 4, 0);
        b.on_message(4, hello(), 0);
        let out = b.on_message(4, join("r", "p4", false), 0);
        match &out.sends[0] {
            (4, Message::Welcome { roster, .. }) => assert_eq!(roster.len(), 4),
            other => panic!("{other:?}"),
        }
        let to_trunk: Vec<&Message> = out
            .sends
            .iter()
            .filter(|(to, _)| *to == 201)
            .map(|(_, m)| m)
            .collect();
        assert!(matches!(to_trunk[..], [Message::ParticipantJoined(_)]));
        // A's member 2 leaves: B's members are told by the trunk's message, never by B passing
        // on anything to another trunk.
        let left = a.disconnect(2);
        assert!(
            left.iter()
                .any(|(to, m)| *to == 101 && matches!(m, Message::ParticipantLeft { .. }))
        );
        // Chat crosses the trunk like the roster: A's member 1 says hello, B's members read it.
        let said = a.on_message(1, Message::Chat { text: "hi".into() }, 0);
        assert!(said.sends.iter().any(|(to, _)| *to == 101));
        let (id1, _) = enter_id(&a, 1);
        let read = b.remote_chat(100, "r", id1, "hi".into());
        assert_eq!(read.iter().map(|(to, _)| *to).collect::<Vec<_>>(), [3, 4]);
        assert!(b.remote_chat(100, "r", 12345, "forged".into()).is_empty());
        // The trunk goes: B's members see A's remaining member leave, and the room stays.
        let gone = b.trunk_closed(100);
        assert_eq!(
            gone.len(),
            2 * 2,
            "two remote members, told to two local members"
        );
        assert_eq!(b.participant_count(), 2);
    }

    fn enter_id(core: &Core, conn: ConnId) -> (u64, u32) {
        let m = core.connections[&conn].member.as_ref().unwrap();
        (m.participant.id, m.participant.ssrc)
    }

    #[test]
    fn remote_members_that_clash_are_refused_and_ids_carry_the_node() {
        let mut core = Core::new("a", Limits::default());
        core.set_node(7);
        enter(&mut core, 1, "r", false);
        let (id, ssrc) = enter_id(&core, 1);
        assert_eq!(id >> 32, 7);
        assert_eq!(participant_ids(7, 1, core.ssrc_salt), (id, ssrc));
        let clash = Participant {
            id: 99,
            ssrc,
            name: "x".into(),
            muted: false,
        };
        assert_eq!(
            core.remote_joined(100, "r", clash),
            Err(RemoteRefused::Clash(99, "r".into()))
        );
        // A lone relay numbers as before: node 0, ids 1, 2, …
        assert_eq!(participant_ids(0, 5, 0).0, 5);
        assert_eq!(participant_ids(0, 5, 0).1, ssrc_for(5, 0));
        // A restart (another salt) hands out other SSRCs, on the same node.
        assert_ne!(
            participant_ids(3, 1, 0x9e37_79b9).1,
            participant_ids(3, 1, 0).1
        );
        // Distinct nodes never share an SSRC, whatever their salts.
        let mut seen = std::collections::HashSet::new();
        for node in 0..=255u8 {
            let salt = u32::from(node).wrapping_mul(0x9e37_79b9);
            for n in 1..50 {
                assert!(seen.insert(participant_ids(node, n, salt).1));
            }
        }
    }

    #[test]
    fn forwards_to_the_rest_of_the_room_only() {
        let mut core = Core::new("relay", Limits::default());
        let a = enter(&mut core, 1, "one", false);
        enter(&mut core, 2, "one", false);
        enter(&mut core, 3, "one", false);
        enter(&mut core, 4, "two", false);
        assert_eq!(targets(&mut core, 1, &rtp(a)), Ok(vec![2, 3]));
        assert_eq!(core.room_count(), 2);
        assert_eq!(core.participant_count(), 4);
    }

    /// The participant count is kept as members come and go (the plane reads it every
    /// round): it follows joins, leaves, a room emptying and a connection that never joined.
    #[test]
    fn the_participant_count_follows_joins_and_leaves() {
        let mut core = Core::new("relay", Limits::default());
        enter(&mut core, 1, "one", false);
        enter(&mut core, 2, "one", false);
        enter(&mut core, 3, "two", false);
        core.connect(9, 9, 0);
        assert_eq!(core.participant_count(), 3);
        core.disconnect(3);
        core.disconnect(9);
        assert_eq!((core.participant_count(), core.room_count()), (2, 1));
        core.disconnect(1);
        enter(&mut core, 4, "two", false);
        assert_eq!((core.participant_count(), core.room_count()), (2, 2));
        core.disconnect(2);
        core.disconnect(4);
        assert_eq!((core.participant_count(), core.room_count()), (0, 0));
    }

    #[test]
    fn echo_flag_returns_own_audio_to_that_member_and_nobody_else() {
        let mut core = Core::new("relay", Limits::default());
        let a = enter(&mut core, 1, "r", true);
        let b = enter(&mut core, 2, "r", false);
        enter(&mut core, 3, "r", false);
        assert_eq!(targets(&mut core, 1, &rtp(a)), Ok(vec![1]));
        // The echo member still hears the room.
        assert_eq!(targets(&mut core, 2, &rtp(b)), Ok(vec![1, 3]));
    }

    #[test]
    fn drops_spoofed_unjoined_and_malformed() {
        let mut core = Core::new("relay", Limits::default());
        let a = enter(&mut core, 1, "r", false);
        let b = enter(&mut core, 2, "r", false);
        core.connect(3, 3, 0);
        assert_eq!(
            targets(&mut core, 1, &rtp(a ^ 1)),
            Err(DropReason::WrongSsrc)
        );
        assert_eq!(targets(&mut core, 3, &rtp(a)), Err(DropReason::NotJoined));
        // RTCP: one's own report is forwarded, but not with a packet in b's name behind it.
        let own = RtcpPacket::ReceiverReport {
            ssrc: a,
            reports: Vec::new(),
        };
        let mut buf = Vec::new();
        write_rtcp(std::slice::from_ref(&own), &mut buf);
        assert_eq!(targets(&mut core, 1, &buf), Ok(vec![2]));
        buf.clear();
        write_rtcp(&[own, SenderLatency::default().to_packet(b)], &mut buf);
        assert_eq!(targets(&mut core, 1, &buf), Err(DropReason::WrongSsrc));
        assert_eq!(
            targets(&mut core, 1, &[0, 1, 2]),
            Err(DropReason::Malformed)
        );
        assert_eq!(targets(&mut core, 1, &[]), Err(DropReason::Malformed));
    }

    /// A second "Alice" in a room becomes "Alice (2)" (names compare without case and
    /// surrounding space), a third "Alice (3)"; the same name in another room stays; a long
    /// name is shortened to fit its number; once the first Alice left, her name is free.
    #[test]
    fn names_in_a_room_are_distinct() {
        let mut core = Core::new("relay", Limits::default());
        let join_as = |core: &mut Core, conn: ConnId, room: &str, name: &str| -> String {
            core.connect(conn, conn, 0);
            core.on_message(conn, hello(), 0);
            let out = core.on_message(conn, join(room, name, false), 0);
            match &out.sends[0] {
                (
                    _,
                    Message::Welcome {
                        roster,
                        participant_id,
                        ..
                    },
                ) => roster
                    .iter()
                    .find(|p| p.id == *participant_id)
                    .expect("we are in our roster")
                    .name
                    .clone(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(join_as(&mut core, 1, "r", "Alice"), "Alice");
        assert_eq!(join_as(&mut core, 2, "r", "alice "), "alice (2)");
        assert_eq!(join_as(&mut core, 3, "r", "ALICE"), "ALICE (3)");
        assert_eq!(join_as(&mut core, 4, "other", "Alice"), "Alice");
        let long = "x".repeat(64);
        assert_eq!(join_as(&mut core, 5, "r", &long), long);
        let second = join_as(&mut core, 6, "r", &long);
        assert_eq!(second, format!("{} (2)", "x".repeat(60)));
        core.on_message(1, Message::Leave, 0);
        core.disconnect(1);
        assert_eq!(join_as(&mut core, 7, "r", "Alice"), "Alice");
    }

    /// Chat goes to everyone else in the room (not the sender, not other rooms), within the
    /// member's rate: a burst of three, then one a second; blank text is dropped; before Join
    /// it is a protocol error; clients may not forge a ChatMessage.
    #[test]
    fn chat_reaches_the_rest_of_the_room_within_its_rate() {
        let mut core = Core::new("relay", Limits::default());
        for (conn, room) in [(1, "r"), (2, "r"), (3, "r"), (4, "other")] {
            enter(&mut core, conn, room, false);
        }
        let chat = |text: &str| Message::Chat { text: text.into() };
        let out = core.on_message(1, chat("hello"), 0);
        let mut to: Vec<ConnId> = out.sends.iter().map(|(h, _)| *h).collect();
        to.sort_unstable();
        assert_eq!(to, [2, 3]);
        assert!(
            out.sends
                .iter()
                .all(|(_, m)| matches!(m, Message::ChatMessage { text, .. } if text == "hello"))
        );
        assert!(core.on_message(1, chat("  \n "), 0).sends.is_empty());
        // Two more fit the burst of three; the fourth at the same moment is dropped.
        assert_eq!(core.on_message(1, chat("2"), 0).sends.len(), 2);
        assert_eq!(core.on_message(1, chat("3"), 0).sends.len(), 2);
        assert!(core.on_message(1, chat("4"), 0).sends.is_empty());
        assert_eq!(core.on_message(1, chat("5"), 1_000).sends.len(), 2);
        // Not in a room yet: refused.
        core.connect(5, 5, 0);
        core.on_message(5, hello(), 0);
        let out = core.on_message(5, chat("early"), 0);
        assert!(matches!(
            out.close,
            Some(Close::Error(ErrorCode::NotJoined, _))
        ));
        let forged = Message::ChatMessage {
            id: 2,
            text: "x".into(),
        };
        let out = core.on_message(1, forged, 0);
        assert!(matches!(
            out.close,
            Some(Close::Error(ErrorCode::ProtocolViolation, _))
        ));
    }

    #[test]
    fn roster_join_leave_and_mute_are_broadcast() {
        let mut core = Core::new("relay", Limits::default());
        enter(&mut core, 1, "r", false);
        core.connect(2, 2, 0);
        core.on_message(2, hello(), 0);
        let out = core.on_message(2, join("r", "Bob", false), 0);
        // Welcome to Bob with both in the roster, a join notice to Alice.
        match &out.sends[0] {
            (2, Message::Welcome { roster, .. }) => {
                assert_eq!(
                    roster.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
                    ["p1", "Bob"]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&out.sends[1], (1, Message::ParticipantJoined(p)) if p.name == "Bob"));
        let out = core.on_message(2, Message::SetMute { muted: true }, 0);
        assert_eq!(out.sends.len(), 2);
        assert!(
            out.sends
                .iter()
                .all(|(_, m)| matches!(m, Message::MuteChanged { muted: true, .. }))
        );
        // Saying it again changes nothing and tells nobody.
        let out = core.on_message(2, Message::SetMute { muted: true }, 0);
        assert!(out.sends.is_empty() && out.close.is_none(), "{out:?}");
        let out = core.on_message(2, Message::SetMute { muted: false }, 0);
        assert_eq!(out.sends.len(), 2);
        let notices = core.disconnect(2);
        assert!(matches!(
            notices.as_slice(),
            [(1, Message::ParticipantLeft { .. })]
        ));
        assert!(core.disconnect(1).is_empty());
        assert_eq!(core.room_count(), 0);
    }

    #[test]
    fn protocol_errors_close_with_precise_codes() {
        let mut core = Core::new("relay", Limits::default());
        core.connect(1, 1, 0);
        assert_eq!(
            core.on_message(1, join("r", "x", false), 0)
                .close
                .unwrap()
                .code()
                .unwrap(),
            ErrorCode::HelloRequired
        );
        core.connect(2, 2, 0);
        let bad = Message::Hello {
            versions: vec![99],
            software: String::new(),
        };
        assert_eq!(
            core.on_message(2, bad, 0).close.unwrap().code().unwrap(),
            ErrorCode::UnsupportedVersion
        );
        core.connect(3, 3, 0);
        core.on_message(3, hello(), 0);
        assert_eq!(
            core.on_message(3, join("", "x", false), 0)
                .close
                .unwrap()
                .code()
                .unwrap(),
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            core.on_message(3, join("r", "a\u{7}", false), 0)
                .close
                .unwrap()
                .code()
                .unwrap(),
            ErrorCode::InvalidName
        );
        assert_eq!(
            core.on_message(3, Message::SetMute { muted: true }, 0)
                .close
                .unwrap()
                .code()
                .unwrap(),
            ErrorCode::NotJoined
        );
        assert_eq!(
            core.on_message(3, Message::ParticipantLeft { id: 1 }, 0)
                .close
                .unwrap()
                .code()
                .unwrap(),
            ErrorCode::ProtocolViolation
        );
        // Unknown message types are skipped.
        assert!(
            core.on_message(3, Message::Unknown { kind: 99 }, 0)
                .close
                .is_none()
        );
        assert!(core.on_message(3, join("r", "x", false), 0).close.is_none());
        assert_eq!(
            core.on_message(3, join("r", "x", false), 0)
                .close
                .unwrap()
                .code()
                .unwrap(),
            ErrorCode::AlreadyJoined
        );
    }

    #[test]
    fn full_room_is_refused() {
        let limits = Limits {
            max_participants_per_room: 2,
            max_rooms: 1,
            ..Limits::default()
        };
        let mut core = Core::new("relay", limits);
        enter(&mut core, 1, "r", false);
        enter(&mut core, 2, "r", false);
        core.connect(3, 3, 0);
        core.on_message(3, hello(), 0);
        assert_eq!(
            core.on_message(3, join("r", "x", false), 0)
                .close
                .unwrap()
                .code()
                .unwrap(),
            ErrorCode::RoomFull
        );
        assert_eq!(
            core.on_message(3, join("other", "x", false), 0)
                .close
                .unwrap()
                .code()
                .unwrap(),
            ErrorCode::ServerFull
        );
    }

    fn core_with(limits: Limits) -> Core {
        Core::new("relay", limits)
    }

    fn join_with_token(
        core: &mut Core,
        conn: ConnId,
        room: &str,
        token: Option<String>,
        now_ms: u64,
    ) -> Outcome<ConnId> {
        core.connect(conn, conn, now_ms);
        core.on_message(conn, hello(), now_ms);
        core.on_message(
            conn,
            Message::Join {
                room: room.into(),
                name: "guest".into(),
                token,
                flags: 0,
            },
            now_ms,
        )
    }

    #[test]
    fn tokens_are_required_checked_and_bind_the_name() {
        let secret = b"s3cret".to_vec();
        let limits = Limits {
            access: Access::Tokens {
                secret: secret.clone(),
            },
            ..Limits::default()
        };
        let mut core = core_with(limits);
        let mint = |room: &str, exp: u64, name: Option<&str>| {
            crate::token::mint(
                &secret,
                &crate::token::Claims {
                    room: room.into(),
                    exp,
                    name: name.map(Into::into),
                },
            )
        };
        let code = |o: Outcome<ConnId>| o.close.and_then(|c| c.code());
        assert_eq!(
            code(join_with_token(&mut core, 1, "team", None, 0)),
            Some(ErrorCode::TokenRequired)
        );
        assert_eq!(
            code(join_with_token(
                &mut core,
                2,
                "team",
                Some("v1.junk.sig".into()),
                0
            )),
            Some(ErrorCode::TokenInvalid)
        );
        assert_eq!(
            code(join_with_token(
                &mut core,
                3,
                "team",
                Some(mint("team", 10, None)),
                10_000
            )),
            Some(ErrorCode::TokenExpired)
        );
        assert_eq!(
            code(join_with_token(
                &mut core,
                4,
                "team",
                Some(mint("other", 100, None)),
                0
            )),
            Some(ErrorCode::TokenWrongRoom)
        );
        let forged = crate::token::mint(
            b"not the secret",
            &crate::token::Claims {
                room: "team".into(),
                exp: 100,
                name: None,
            },
        );
        assert_eq!(
            code(join_with_token(&mut core, 5, "team", Some(forged), 0)),
            Some(ErrorCode::TokenInvalid)
        );
        let ok = join_with_token(
            &mut core,
            6,
            "team",
            Some(mint("team", 100, Some("Alice"))),
            0,
        );
        assert!(ok.close.is_none());
        match &ok.sends[0] {
            (6, Message::Welcome { roster, .. }) => {
                assert_eq!(roster[0].name, "Alice", "the token's name wins")
            }
            other => panic!("{other:?}"),
        }
        // A token admits one connection at a time: the newest replaces the holder, who
        // leaves the room (the others are told) and is to be closed with TokenInUse.
        let alice = mint("team", 100, Some("Alice"));
        let again = join_with_token(&mut core, 7, "team", Some(alice.clone()), 0);
        assert!(again.close.is_none(), "{again:?}");
        assert!(
            matches!(
                again.evict.as_slice(),
                [(6, Close::Error(ErrorCode::TokenInUse, _))]
            ),
            "{again:?}"
        );
        match &again.sends[0] {
            (7, Message::Welcome { roster, .. }) => assert_eq!(roster.len(), 1, "{roster:?}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(core.participant_count(), 1);
        // Once its holder is gone, the token is free; another token is not affected.
        core.disconnect(7);
        let third = join_with_token(&mut core, 8, "team", Some(alice), 0);
        assert!(third.close.is_none() && third.evict.is_empty(), "{third:?}");
        let bob = join_with_token(
            &mut core,
            9,
            "team",
            Some(mint("team", 100, Some("Bob"))),
            0,
        );
        assert!(bob.evict.is_empty(), "{bob:?}");
        assert!(matches!(
            bob.sends.as_slice(),
            [
                (9, Message::Welcome { .. }),
                (8, Message::ParticipantJoined(_))
            ]
        ));
        // An open relay ignores tokens.
        let mut open = core_with(Limits::default());
        assert!(
            join_with_token(&mut open, 1, "team", Some("whatever".into()), 0)
                .close
                .is_none()
        );
    }

    #[test]
    fn a_flooding_sender_is_throttled_without_touching_the_others() {
        let limits = Limits {
            packet_rate: 100.0,
            packet_burst: 10.0,
            ..Limits::default()
        };
        let mut core = core_with(limits);
        let a = enter(&mut core, 1, "r", false);
        let b = enter(&mut core, 2, "r", false);
        enter(&mut core, 3, "r", false);
        let (mut flood_passed, mut flood_dropped, mut b_passed) = (0, 0, 0);
        // One second: A sends 1000 packets, B its normal 50.
        for ms in 0..1_000u64 {
            match targets_at(&mut core, 1, &rtp(a), ms) {
                Ok(_) => flood_passed += 1,
                Err(DropReason::RateLimited) => flood_dropped += 1,
                Err(other) => panic!("{other:?}"),
            }
            if ms % 20 == 0 && targets_at(&mut core, 2, &rtp(b), ms).is_ok() {
                b_passed += 1;
            }
        }
        assert!(
            (100..=115).contains(&flood_passed),
            "flood capped near 100/s: {flood_passed}"
        );
        assert_eq!(flood_dropped, 1_000 - flood_passed);
        assert_eq!(b_passed, 50, "the well-behaved sender loses nothing");
    }

    #[test]
    fn oversize_datagrams_are_dropped_by_the_configured_limit() {
        let mut core = core_with(Limits {
            max_datagram_bytes: 200,
            ..Limits::default()
        });
        let a = enter(&mut core, 1, "r", false);
        enter(&mut core, 2, "r", false);
        let mut big = rtp(a);
        big.resize(300, 0);
        assert_eq!(targets(&mut core, 1, &big), Err(DropReason::Oversize));
        assert!(targets(&mut core, 1, &rtp(a)).is_ok());
    }

    #[test]
    fn large_rooms_forward_only_the_loudest_speakers() {
        let mut core = core_with(Limits {
            forward_loudest: Some(2),
            ..Limits::default()
        });
        let ssrcs: Vec<u32> = (1..=4).map(|c| enter(&mut core, c, "big", false)).collect();
        let voice = |level| Some(AudioLevel { voice: true, level });
        // Four people talk at once at -10, -20, -30 and -40 dBov for a while.
        let mut forwarded = [0u32; 4];
        for ms in (0..2_000u64).step_by(20) {
            for (i, ssrc) in ssrcs.iter().enumerate() {
                let dg = rtp_with_level(*ssrc, voice(10 + 10 * i as u8));
                if targets_at(&mut core, i as u64 + 1, &dg, ms).is_ok() {
                    forwarded[i] += 1;
                }
            }
        }
        assert!(
            forwarded[0] >= 95 && forwarded[1] >= 90,
            "the two loudest are heard: {forwarded:?}"
        );
        assert!(
            forwarded[2] <= 5 && forwarded[3] <= 5,
            "the quieter two are not: {forwarded:?}"
        );
        // When the loud ones stop, the others are heard again.
        let dg = rtp_with_level(ssrcs[3], voice(40));
        assert!(targets_at(&mut core, 4, &dg, 3_000).is_ok());
    }

    /// One loudest speaker over two relays: A's member is quieter than B's, whose datagrams
    /// reach A over the trunk; A stops forwarding its own member while B's speaks, and
    /// forwards it again once B's has been quiet for a moment.
    #[test]
    fn the_loudest_speakers_are_ranked_across_relays() {
        let limits = Limits {
            forward_loudest: Some(1),
            ..Limits::default()
        };
        let (mut a, mut b) = (Core::new("a", limits.clone()), Core::new("b", limits));
        a.set_node(1);
        b.set_node(2);
        let quiet = enter(&mut a, 1, "r", false);
        enter(&mut a, 2, "r", false);
        let loud = enter(&mut b, 3, "r", false);
        let (_, from_b) = b.trunk_subscribe(100, 201, "r").unwrap();
        let Message::Welcome { roster, .. } = from_b else {
            panic!("a subscription starts with a Welcome")
        };
        for p in roster {
            a.remote_joined(100, "r", p).unwrap();
        }
        let voice = |level| Some(AudioLevel { voice: true, level });
        let mut forwarded = 0;
        for ms in (0..1_000u64).step_by(20) {
            assert!(
                a.route_from_trunk(100, &rtp_with_level(loud, voice(10)), ms)
                    .is_ok()
            );
            if targets_at(&mut a, 1, &rtp_with_level(quiet, voice(30)), ms).is_ok() {
                forwarded += 1;
            }
        }
        assert!(
            forwarded <= 1,
            "A's quieter member was forwarded {forwarded} times"
        );
        // B's speaker stopped: A's member is the loudest in the room again.
        let after = rtp_with_level(quiet, voice(30));
        assert!(targets_at(&mut a, 1, &after, 1_000 + SPEAKING_MS).is_ok());
    }

    #[test]
    fn ssrcs_are_unique() {
        for salt in [0, 0x9e37_79b9] {
            let set: std::collections::HashSet<u32> =
                (1..100_000).map(|id| ssrc_for(id, salt)).collect();
            assert_eq!(set.len(), 99_999);
        }
        // Two relay processes (a restart) with different salts hand out different SSRCs.
        assert_ne!(ssrc_for(1, 0), ssrc_for(1, 0x9e37_79b9));
    }
}
