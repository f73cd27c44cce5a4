//! The relay's sans-IO core: connection phases, rooms, rosters and the forwarding decision.
//!
//! It owns no sockets and no clock. The I/O shell ([`crate::server`]) feeds it control
//! messages and datagrams and carries out what it returns, the way quinn drives quinn-proto.
//! It is generic over `H`, the shell's handle for a connection (a quinn connection plus a
//! control-stream sender in production, a plain id in tests), so forwarding needs no second
//! lookup and the core never sees a quinn type.

use natter_proto::control::{ErrorCode, JOIN_FLAG_ECHO, Message, Participant, valid_name};
use natter_proto::media::{Datagram, PacketKind};
use natter_proto::rtcp;
use std::collections::HashMap;

/// The shell's id for a connection.
pub type ConnId = u64;

/// Why a media datagram was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Not a valid RTP-over-QUIC datagram (bad flow id, truncated, oversize, bad RTP).
    Malformed,
    /// The sender has not joined a room yet.
    NotJoined,
    /// The packet carries an SSRC other than the one the relay assigned to the sender.
    WrongSsrc,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [Self::Malformed, Self::NotJoined, Self::WrongSsrc];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::NotJoined => "not_joined",
            Self::WrongSsrc => "wrong_ssrc",
        }
    }
}

/// What the shell must do after the core handled a control message.
#[derive(Debug)]
pub struct Outcome<H> {
    /// Messages to send, each on the given connection's control stream.
    pub sends: Vec<(H, Message)>,
    /// Close the connection that sent the message.
    pub close: Option<Close>,
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
        }
    }

    fn fatal(code: ErrorCode, reason: impl Into<String>) -> Self {
        Self {
            sends: Vec::new(),
            close: Some(Close::Error(code, reason.into())),
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
}

#[derive(Debug, Clone)]
struct Member {
    participant: Participant,
    room: String,
    echo: bool,
}

/// One room: its members' connection ids, in join order.
#[derive(Debug)]
struct Room<H> {
    /// Everything forwarding needs, in one contiguous list so the hot path touches no map but
    /// the room lookup.
    members: Vec<RoomMember<H>>,
}

#[derive(Debug)]
struct RoomMember<H> {
    conn: ConnId,
    handle: H,
    echo: bool,
}

/// Limits the core enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_participants_per_room: usize,
    pub max_rooms: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_participants_per_room: 64,
            max_rooms: 10_000,
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
    next_participant: u64,
}

/// MurmurHash3's 32-bit finaliser: a bijection on u32, so sequential participant ids become
/// SSRCs that look random (RFC 3550 asks for random SSRCs) yet can never collide.
fn ssrc_for(id: u64) -> u32 {
    let mut x = id as u32;
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
            next_participant: 1,
        }
    }

    /// A new QUIC connection completed its handshake.
    pub fn connect(&mut self, conn: ConnId, handle: H) {
        self.connections.insert(
            conn,
            Connection {
                handle,
                phase: Phase::AwaitHello,
                member: None,
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

    /// Number of participants in rooms.
    pub fn participant_count(&self) -> usize {
        self.rooms.values().map(|r| r.members.len()).sum()
    }

    /// Handles of every open connection (for shutdown notices).
    pub fn handles(&self) -> impl Iterator<Item = &H> {
        self.connections.values().map(|c| &c.handle)
    }

    /// A control message arrived on `conn`'s control stream.
    pub fn on_message(&mut self, conn: ConnId, msg: Message) -> Outcome<H> {
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
            (_, Message::Ping { nonce, sent_micros }) => Outcome {
                sends: vec![(
                    c.handle.clone(),
                    Message::Pong {
                        nonce,
                        ping_sent_micros: sent_micros,
                        responder_micros: unix_micros(),
                    },
                )],
                close: None,
            },
            (_, Message::Pong { .. }) => Outcome::none(),
            (
                Phase::AwaitJoin,
                Message::Join {
                    room, name, flags, ..
                },
            ) => self.join(conn, room, name, flags & JOIN_FLAG_ECHO != 0),
            (Phase::Joined, Message::Join { .. }) => {
                Outcome::fatal(ErrorCode::AlreadyJoined, "already in a room")
            }
            (Phase::Joined, Message::SetMute { muted }) => self.set_mute(conn, muted),
            (Phase::AwaitJoin, Message::SetMute { .. }) => {
                Outcome::fatal(ErrorCode::NotJoined, "SetMute before Join")
            }
            (_, Message::Leave) => Outcome {
                sends: Vec::new(),
                close: Some(Close::Left),
            },
            (_, Message::Error { .. }) => Outcome::none(),
            (
                _,
                m @ (Message::HelloAck { .. }
                | Message::Welcome { .. }
                | Message::ParticipantJoined(_)
                | Message::ParticipantLeft { .. }
                | Message::MuteChanged { .. }),
            ) => Outcome::fatal(
                ErrorCode::ProtocolViolation,
                format!("clients may not send {}", message_name(&m)),
            ),
        }
    }

    fn join(&mut self, conn: ConnId, room: String, name: String, echo: bool) -> Outcome<H> {
        if !valid_name(&room) {
            return Outcome::fatal(
                ErrorCode::InvalidRoom,
                "room name must be 1-64 bytes, no control characters",
            );
        }
        if !valid_name(&name) {
            return Outcome::fatal(
                ErrorCode::InvalidName,
                "display name must be 1-64 bytes, no control characters",
            );
        }
        let existing = self.rooms.get(&room).map_or(0, |r| r.members.len());
        if existing == 0 && self.rooms.len() >= self.limits.max_rooms {
            return Outcome::fatal(
                ErrorCode::ServerFull,
                "the relay has no room for another room",
            );
        }
        if existing >= self.limits.max_participants_per_room {
            return Outcome::fatal(
                ErrorCode::RoomFull,
                format!("room {room:?} is full ({existing} participants)"),
            );
        }
        let id = self.next_participant;
        self.next_participant += 1;
        let participant = Participant {
            id,
            ssrc: ssrc_for(id),
            name,
            muted: false,
        };
        let c = self.connections.get_mut(&conn).expect("checked by caller");
        c.phase = Phase::Joined;
        c.member = Some(Member {
            participant: participant.clone(),
            room: room.clone(),
            echo,
        });
        let handle = c.handle.clone();
        let r = self.rooms.entry(room.clone()).or_insert_with(|| Room {
            members: Vec::new(),
        });
        let mut sends: Vec<(H, Message)> = r
            .members
            .iter()
            .map(|m| {
                (
                    m.handle.clone(),
                    Message::ParticipantJoined(participant.clone()),
                )
            })
            .collect();
        r.members.push(RoomMember {
            conn,
            handle: handle.clone(),
            echo,
        });
        let roster = r
            .members
            .iter()
            .filter_map(|m| self.connections.get(&m.conn)?.member.as_ref())
            .map(|m| m.participant.clone())
            .collect();
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
        Outcome { sends, close: None }
    }

    fn set_mute(&mut self, conn: ConnId, muted: bool) -> Outcome<H> {
        let Some(member) = self
            .connections
            .get_mut(&conn)
            .and_then(|c| c.member.as_mut())
        else {
            return Outcome::none();
        };
        member.participant.muted = muted;
        let id = member.participant.id;
        let room = member.room.clone();
        Outcome {
            sends: self.broadcast(&room, None, &Message::MuteChanged { id, muted }),
            close: None,
        }
    }

    /// Messages `msg` to every member of `room` except `except`.
    fn broadcast(&self, room: &str, except: Option<ConnId>, msg: &Message) -> Vec<(H, Message)> {
        self.rooms.get(room).map_or_else(Vec::new, |r| {
            r.members
                .iter()
                .filter(|m| Some(m.conn) != except)
                .map(|m| (m.handle.clone(), msg.clone()))
                .collect()
        })
    }

    /// The connection is gone (closed, timed out, or the shell closed it). Returns the roster
    /// notices for the rest of its room.
    pub fn disconnect(&mut self, conn: ConnId) -> Vec<(H, Message)> {
        let Some(member) = self.connections.remove(&conn).and_then(|c| c.member) else {
            return Vec::new();
        };
        if let Some(r) = self.rooms.get_mut(&member.room) {
            r.members.retain(|m| m.conn != conn);
            if r.members.is_empty() {
                self.rooms.remove(&member.room);
                return Vec::new();
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

    /// Decides where a media datagram from `conn` goes: every other member of its room, plus
    /// the sender itself if it joined with the echo flag. The datagram is forwarded unchanged.
    pub fn route(
        &self,
        conn: ConnId,
        datagram: &[u8],
    ) -> Result<impl Iterator<Item = &H>, DropReason> {
        let parsed = Datagram::parse(datagram).map_err(|_| DropReason::Malformed)?;
        let well_formed = match parsed.kind {
            PacketKind::Rtp => parsed.rtp().is_ok(),
            PacketKind::Rtcp => rtcp::parse_compound(parsed.packet).is_ok(),
        };
        if !well_formed {
            return Err(DropReason::Malformed);
        }
        let member = self
            .connections
            .get(&conn)
            .and_then(|c| c.member.as_ref())
            .ok_or(DropReason::NotJoined)?;
        if parsed.sender_ssrc() != Some(member.participant.ssrc) {
            return Err(DropReason::WrongSsrc);
        }
        let room = self.rooms.get(&member.room).ok_or(DropReason::NotJoined)?;
        let echo = member.echo;
        Ok(room
            .members
            .iter()
            .filter(move |m| m.conn != conn || (echo && m.echo))
            .map(|m| &m.handle))
    }
}

fn message_name(m: &Message) -> &'static str {
    match m {
        Message::HelloAck { .. } => "HelloAck",
        Message::Welcome { .. } => "Welcome",
        Message::ParticipantJoined(_) => "ParticipantJoined",
        Message::ParticipantLeft { .. } => "ParticipantLeft",
        Message::MuteChanged { .. } => "MuteChanged",
        _ => "this message",
    }
}

/// Wall clock in microseconds since the Unix epoch (for Pong's responder time).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_proto::media::write_rtp;
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
        core.connect(conn, conn);
        assert!(core.on_message(conn, hello()).close.is_none());
        let out = core.on_message(conn, join(room, &format!("p{conn}"), echo));
        match &out.sends[0] {
            (c, Message::Welcome { ssrc, .. }) if *c == conn => *ssrc,
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    fn rtp(ssrc: u32) -> Vec<u8> {
        let mut buf = Vec::new();
        let h = RtpHeader {
            marker: false,
            payload_type: 111,
            sequence: 1,
            timestamp: 960,
            ssrc,
            audio_level: None,
        };
        write_rtp(&h, &[0xfc, 1, 2], &mut buf);
        buf
    }

    fn targets(core: &Core, conn: ConnId, dg: &[u8]) -> Result<Vec<ConnId>, DropReason> {
        core.route(conn, dg).map(|it| {
            let mut v: Vec<_> = it.copied().collect();
            v.sort();
            v
        })
    }

    #[test]
    fn forwards_to_the_rest_of_the_room_only() {
        let mut core = Core::new("relay", Limits::default());
        let a = enter(&mut core, 1, "one", false);
        enter(&mut core, 2, "one", false);
        enter(&mut core, 3, "one", false);
        enter(&mut core, 4, "two", false);
        assert_eq!(targets(&core, 1, &rtp(a)), Ok(vec![2, 3]));
        assert_eq!(core.room_count(), 2);
        assert_eq!(core.participant_count(), 4);
    }

    #[test]
    fn echo_flag_returns_own_audio_to_that_member_only() {
        let mut core = Core::new("relay", Limits::default());
        let a = enter(&mut core, 1, "r", true);
        let b = enter(&mut core, 2, "r", false);
        assert_eq!(targets(&core, 1, &rtp(a)), Ok(vec![1, 2]));
        assert_eq!(targets(&core, 2, &rtp(b)), Ok(vec![1]));
    }

    #[test]
    fn drops_spoofed_unjoined_and_malformed() {
        let mut core = Core::new("relay", Limits::default());
        let a = enter(&mut core, 1, "r", false);
        enter(&mut core, 2, "r", false);
        core.connect(3, 3);
        assert_eq!(targets(&core, 1, &rtp(a ^ 1)), Err(DropReason::WrongSsrc));
        assert_eq!(targets(&core, 3, &rtp(a)), Err(DropReason::NotJoined));
        assert_eq!(targets(&core, 1, &[0, 1, 2]), Err(DropReason::Malformed));
        assert_eq!(targets(&core, 1, &[]), Err(DropReason::Malformed));
    }

    #[test]
    fn roster_join_leave_and_mute_are_broadcast() {
        let mut core = Core::new("relay", Limits::default());
        enter(&mut core, 1, "r", false);
        core.connect(2, 2);
        core.on_message(2, hello());
        let out = core.on_message(2, join("r", "Bob", false));
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
        let out = core.on_message(2, Message::SetMute { muted: true });
        assert_eq!(out.sends.len(), 2);
        assert!(
            out.sends
                .iter()
                .all(|(_, m)| matches!(m, Message::MuteChanged { muted: true, .. }))
        );
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
        core.connect(1, 1);
        assert_eq!(
            core.on_message(1, join("r", "x", false))
                .close
                .unwrap()
                .code()
                .unwrap(),
            ErrorCode::HelloRequired
        );
        core.connect(2, 2);
        let bad = Message::Hello {
            versions: vec![99],
            software: String::new(),
        };
        assert_eq!(
            core.on_message(2, bad).close.unwrap().code().unwrap(),
            ErrorCode::UnsupportedVersion
        );
        core.connect(3, 3);
        core.on_message(3, hello());
        assert_eq!(
            core.on_message(3, join("", "x", false))
                .close
                .unwrap()
                .code()
                .unwrap(),
            ErrorCode::InvalidRoom
        );
        assert_eq!(
            core.on_message(3, join("r", "a\u{7}", false))
                .close
                .unwrap()
                .code()
                .unwrap(),
            ErrorCode::InvalidName
        );
        assert_eq!(
            core.on_message(3, Message::SetMute { muted: true })
                .close
                .unwrap()
                .code()
                .unwrap(),
            ErrorCode::NotJoined
        );
        assert_eq!(
            core.on_message(3, Message::ParticipantLeft { id: 1 })
                .close
                .unwrap()
                .code()
                .unwrap(),
            ErrorCode::ProtocolViolation
        );
        // Unknown message types are skipped.
        assert!(
            core.on_message(3, Message::Unknown { kind: 99 })
                .close
                .is_none()
        );
        assert!(core.on_message(3, join("r", "x", false)).close.is_none());
        assert_eq!(
            core.on_message(3, join("r", "x", false))
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
        };
        let mut core = Core::new("relay", limits);
        enter(&mut core, 1, "r", false);
        enter(&mut core, 2, "r", false);
        core.connect(3, 3);
        core.on_message(3, hello());
        assert_eq!(
            core.on_message(3, join("r", "x", false))
                .close
                .unwrap()
                .code()
                .unwrap(),
            ErrorCode::RoomFull
        );
        assert_eq!(
            core.on_message(3, join("other", "x", false))
                .close
                .unwrap()
                .code()
                .unwrap(),
            ErrorCode::ServerFull
        );
    }

    #[test]
    fn ssrcs_are_unique() {
        let set: std::collections::HashSet<u32> = (1..100_000).map(ssrc_for).collect();
        assert_eq!(set.len(), 99_999);
    }
}
