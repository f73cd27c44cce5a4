//! The client's control session as a pure state machine: Hello → Join → in the call, then
//! roster changes, mute, pings and errors, in the manner of quinn-proto and str0m. Bytes from
//! the stream go in ([`ControlCore::handle_input`]), frames to write come out
//! ([`ControlCore::poll_transmit`]), what happened comes out as [`Event`]s, and time is passed
//! in: [`ControlCore::poll_timeout`] says when to call [`ControlCore::handle_timeout`] (the
//! join deadline, the next ping). The async shell in [`super`] only moves bytes between it and
//! a quinn stream.

use super::{CallState, ChatLine, JoinRequest, Joined};
use crate::transport::{ConnectError, explain};
use natter_proto::control::{
    ErrorCode, FrameDecoder, JOIN_FLAG_ECHO, MAX_CHAT_LEN, Message, Participant,
};
use natter_proto::spread::Spread;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How long the relay may take to answer Hello and Join. QUIC keep-alives hold a connection
/// open indefinitely, so a peer that completed the handshake but never answers would
/// otherwise leave the call hanging.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the relay's round trip is measured in a call.
pub const PING_INTERVAL: Duration = Duration::from_secs(2);
/// Pings sent right after Hello, [`PING_TRAIN_SPACING`] apart, before Join and the periodic
/// ones: the spread of our round trip ([`Spread`]) and the relay's measure of our uplink
/// (`Message::UplinkSpread`, from the same Pings' one-way transit) are known when we enter the
/// room, before anyone's first audio packet needs them. Join waits for the train: 140 ms after
/// Hello at most (less the relay's answer to Hello), and the train stays well inside the
/// relay's control-message burst of 40.
pub const PING_TRAIN: u8 = 8;
pub const PING_TRAIN_SPACING: Duration = Duration::from_millis(20);

/// Where the session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Hello sent, waiting for HelloAck.
    Hello,
    /// Join sent, waiting for Welcome.
    Joining,
    InCall,
    /// Ended (left, refused, or the relay ended it); nothing more goes in or out.
    Closed,
}

/// What the shell must know about.
#[derive(Debug)]
pub enum Event {
    /// Welcome: in the room, with everyone already there.
    Joined {
        joined: Joined,
        roster: Vec<Participant>,
    },
    /// The roster, a mute flag or the round trip changed: see [`ControlCore::state`].
    Changed,
    /// A chat message, someone else's or one we sent.
    Chat(ChatLine),
    /// The session is over, and why. After a refusal or a protocol error the shell closes
    /// the connection with the error's code.
    Ended(ConnectError),
}

/// One control session.
#[derive(Debug)]
pub struct ControlCore {
    phase: Phase,
    request: JoinRequest,
    decoder: FrameDecoder,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    /// Until Welcome: when to give up waiting.
    deadline: Option<Instant>,
    next_ping: Option<Instant>,
    /// Pings of the join train still to send.
    train_left: u8,
    /// Join went out (after HelloAck and the train).
    join_sent: bool,
    rtts: Spread,
    nonce: u64,
    /// The wall clock at `start`, µs since the Unix epoch: pings carry wall-clock times
    /// derived from the monotonic clock, so a clock step mid-call cannot corrupt a round trip.
    start: Instant,
    start_unix_us: u64,
    state: CallState,
    /// Our participant id, once welcomed.
    me: Option<u64>,
    /// Set when we broke off for something the relay did: close the connection with it.
    close: Option<(ErrorCode, String)>,
}

impl ControlCore {
    /// Starts a session at `now` (when the wall clock reads `unix_us`): Hello is queued.
    pub fn new(request: JoinRequest, now: Instant, unix_us: u64) -> Self {
        let mut core = Self {
            phase: Phase::Hello,
            request,
            decoder: FrameDecoder::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            deadline: Some(now + JOIN_TIMEOUT),
            // The train follows Hello at once (the relay answers Pings from Hello on).
            next_ping: Some(now),
            train_left: PING_TRAIN,
            join_sent: false,
            rtts: Spread::default(),
            nonce: 0,
            start: now,
            start_unix_us: unix_us,
            state: CallState::default(),
            me: None,
            close: None,
        };
        core.send(&Message::Hello {
            versions: vec![natter_proto::PROTOCOL_VERSION],
            software: format!("natter/{}", env!("CARGO_PKG_VERSION")),
        });
        core
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The code and reason to close the connection with, when we broke off the session
    /// because the relay broke the protocol.
    pub fn close_reason(&self) -> Option<(ErrorCode, &str)> {
        self.close.as_ref().map(|(code, why)| (*code, why.as_str()))
    }

    /// Roster, relay round trip, and why the relay ended the call if it did.
    pub fn state(&self) -> &CallState {
        &self.state
    }

    fn send(&mut self, msg: &Message) {
        self.transmit.push_back(msg.to_frame());
    }

    fn unix_us(&self, now: Instant) -> u64 {
        self.start_unix_us + now.saturating_duration_since(self.start).as_micros() as u64
    }

    fn end(&mut self, error: ConnectError) {
        if self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            self.deadline = None;
            self.next_ping = None;
            self.events.push_back(Event::Ended(error));
        }
    }

    /// Fails the session for something the relay did wrong, telling it why.
    fn violation(&mut self, reason: String) {
        self.send(&Message::Error {
            code: ErrorCode::ProtocolViolation,
            message: reason.clone(),
        });
        self.close = Some((ErrorCode::ProtocolViolation, reason.clone()));
        self.end(ConnectError::Lost(reason));
    }

    /// Bytes read from the stream at `now`.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        self.decoder.push(bytes);
        while self.phase != Phase::Closed {
            match self.decoder.next_message() {
                None => break,
                Some(Ok(Message::Unknown { .. })) => {}
                Some(Ok(msg)) => self.on_message(msg, now),
                Some(Err(e)) => {
                    self.end(ConnectError::Lost(format!(
                        "malformed message from relay: {e}"
                    )));
                }
            }
        }
    }

    /// The relay finished the stream (or it broke with `error`).
    pub fn handle_closed(&mut self, error: Option<ConnectError>) {
        let error = error.unwrap_or_else(|| match self.phase {
            Phase::InCall => ConnectError::Lost("the relay closed the control stream".into()),
            _ => ConnectError::Lost("the relay closed the control stream before Welcome".into()),
        });
        if self.phase == Phase::InCall {
            self.state.ended.get_or_insert_with(|| error.to_string());
        }
        self.end(error);
    }

    /// Sends Join once the relay accepted our Hello and the ping train is out.
    fn join_when_ready(&mut self) {
        if self.phase != Phase::Joining || self.train_left > 0 || self.join_sent {
            return;
        }
        self.join_sent = true;
        let join = Message::Join {
            room: self.request.room.clone(),
            name: self.request.name.clone(),
            token: self.request.token.clone(),
            flags: if self.request.echo { JOIN_FLAG_ECHO } else { 0 },
        };
        self.send(&join);
    }

    /// A Pong (ours: nobody else pings us) at `now`: one more round trip.
    fn on_pong(&mut self, ping_sent_micros: u64, now: Instant) {
        let rtt_ms = self.unix_us(now).saturating_sub(ping_sent_micros) as f64 / 1000.0;
        self.state.relay_rtt_ms = Some(rtt_ms);
        self.rtts.push(rtt_ms);
        self.state.relay_rtt_spread_ms = self.rtts.spread_ms();
    }

    fn on_message(&mut self, msg: Message, now: Instant) {
        match (self.phase, msg) {
            // The train's Pongs come while we are joining.
            (
                Phase::Hello | Phase::Joining,
                Message::Pong {
                    ping_sent_micros, ..
                },
            ) => self.on_pong(ping_sent_micros, now),
            (Phase::Hello | Phase::Joining, Message::Error { code, message }) => {
                self.end(ConnectError::Refused { code, message });
            }
            (Phase::Hello, Message::HelloAck { version, .. })
                if version == natter_proto::PROTOCOL_VERSION =>
            {
                self.phase = Phase::Joining;
                self.join_when_ready();
            }
            (Phase::Hello, Message::HelloAck { version, .. }) => {
                self.violation(format!(
                    "relay chose protocol version {version}, which we did not offer"
                ));
            }
            (Phase::Hello, other) => {
                self.end(ConnectError::Lost(format!(
                    "expected HelloAck, relay sent {other:?}"
                )));
            }
            (
                Phase::Joining,
                Message::Welcome {
                    participant_id,
                    ssrc,
                    room,
                    roster,
                },
            ) => {
                self.phase = Phase::InCall;
                self.me = Some(participant_id);
                self.deadline = None;
                roster.iter().cloned().for_each(|p| self.state.upsert(p));
                self.events.push_back(Event::Joined {
                    joined: Joined {
                        participant_id,
                        ssrc,
                        room,
                    },
                    roster,
                });
            }
            (Phase::Joining, other) => {
                self.end(ConnectError::Lost(format!(
                    "expected Welcome, relay sent {other:?}"
                )));
            }
            (Phase::InCall, msg) => self.in_call(msg, now),
            (Phase::Closed, _) => {}
        }
    }

    fn in_call(&mut self, msg: Message, now: Instant) {
        let s = &mut self.state;
        match msg {
            Message::ParticipantJoined(p) => s.upsert(p),
            Message::ParticipantLeft { id } => {
                s.roster.remove(&id);
                s.uplink_spread_ms.remove(&id);
            }
            Message::MuteChanged { id, muted } => {
                if let Some(p) = s.roster.get_mut(&id) {
                    p.muted = muted;
                }
            }
            Message::Edges { edges } => s.edges = edges,
            Message::Pong {
                ping_sent_micros, ..
            } => self.on_pong(ping_sent_micros, now),
            Message::UplinkSpread { spreads } => {
                // Only about members present: what the relay says of anyone else would be
                // kept for nobody, and without bound.
                for (id, ms) in spreads {
                    if s.roster.contains_key(&id) {
                        s.uplink_spread_ms.insert(id, f64::from(ms));
                    }
                }
            }
            Message::ChatMessage { id, text } => {
                let from = s
                    .roster
                    .get(&id)
                    .map_or_else(|| format!("participant {id}"), |p| p.name.clone());
                self.events.push_back(Event::Chat(ChatLine {
                    from,
                    text,
                    own: false,
                }));
                return;
            }
            Message::Error { code, message } => {
                s.ended = Some(explain(code, &message));
                // Every code the relay knows is fatal (PROTOCOL.md §6.1): the close follows, and
                // the session ends with the relay's code and words rather than "the relay
                // closed the control stream". An unknown code is informational until a close
                // says otherwise.
                if !matches!(code, ErrorCode::Unknown(_)) {
                    self.end(ConnectError::Refused { code, message });
                    return;
                }
            }
            _ => return,
        }
        self.events.push_back(Event::Changed);
    }

    /// Tells the room we muted or unmuted (only in a call).
    pub fn set_muted(&mut self, muted: bool) {
        if self.phase == Phase::InCall {
            self.send(&Message::SetMute { muted });
        }
    }

    /// Sends a chat message to the room (only in a call; blank text is not sent, and text
    /// over [`MAX_CHAT_LEN`] bytes is cut at a character boundary). It comes back as an
    /// [`Event::Chat`] of our own, so the shell shows it where it stands in the room's order
    /// as we see it.
    pub fn send_chat(&mut self, text: &str) {
        let text = text.trim();
        if self.phase != Phase::InCall || text.is_empty() {
            return;
        }
        let mut end = text.len().min(MAX_CHAT_LEN);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let text = text[..end].to_string();
        self.send(&Message::Chat { text: text.clone() });
        // Our name as the room knows it: the relay renames a second "Alice" to "Alice (2)".
        let from = self
            .me
            .and_then(|me| self.state.roster.get(&me))
            .map_or_else(|| self.request.name.clone(), |p| p.name.clone());
        self.events.push_back(Event::Chat(ChatLine {
            from,
            text,
            own: true,
        }));
    }

    /// Leaves: Leave is queued, and nothing more happens.
    pub fn leave(&mut self) {
        if self.phase == Phase::InCall {
            self.send(&Message::Leave);
        }
        self.phase = Phase::Closed;
        self.deadline = None;
        self.next_ping = None;
    }

    /// The next frame to write.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`ControlCore::handle_timeout`] is due next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.deadline, self.next_ping) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) {
            self.end(ConnectError::Lost(format!(
                "the relay did not answer Hello and Join within {} s",
                JOIN_TIMEOUT.as_secs()
            )));
            return;
        }
        if let Some(at) = self.next_ping
            && now >= at
        {
            self.nonce += 1;
            let ping = Message::Ping {
                nonce: self.nonce,
                sent_micros: self.unix_us(now),
            };
            self.send(&ping);
            self.train_left = self.train_left.saturating_sub(1);
            let next = if self.train_left > 0 {
                PING_TRAIN_SPACING
            } else {
                PING_INTERVAL
            };
            self.next_ping = Some(now + next);
            self.join_when_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> JoinRequest {
        JoinRequest {
            room: "lobby".into(),
            name: "alice".into(),
            token: None,
            echo: false,
        }
    }

    fn participant(id: u64, name: &str) -> Participant {
        Participant {
            id,
            ssrc: id as u32 * 7,
            name: name.into(),
            muted: false,
        }
    }

    /// Everything the core wants written, decoded.
    fn sent(core: &mut ControlCore) -> Vec<Message> {
        let mut decoder = FrameDecoder::new();
        while let Some(frame) = core.poll_transmit() {
            decoder.push(&frame);
        }
        std::iter::from_fn(|| decoder.next_message().map(Result::unwrap)).collect()
    }

    fn events(core: &mut ControlCore) -> Vec<Event> {
        std::iter::from_fn(|| core.poll_event()).collect()
    }

    fn welcome(roster: Vec<Participant>) -> Message {
        Message::Welcome {
            participant_id: 1,
            ssrc: 7,
            room: "lobby".into(),
            roster,
        }
    }

    fn hello_ack() -> Message {
        Message::HelloAck {
            version: natter_proto::PROTOCOL_VERSION,
            software: "natter-relay/test".into(),
        }
    }

    /// Sends the join train from `t0` on, each ping answered `rtt_us(i)` later; returns when
    /// the last one went out and what was sent.
    fn train(
        core: &mut ControlCore,
        t0: Instant,
        rtt_us: impl Fn(u8) -> u64,
    ) -> (Instant, Vec<Message>) {
        let mut out = Vec::new();
        let mut at = t0;
        for i in 0..PING_TRAIN {
            if i > 0 {
                assert_eq!(core.poll_timeout(), Some(at + PING_TRAIN_SPACING));
                at += PING_TRAIN_SPACING;
            }
            core.handle_timeout(at);
            let msgs = sent(core);
            let Some(&Message::Ping { nonce, sent_micros }) = msgs.first() else {
                panic!("ping {i} of the train: {msgs:?}")
            };
            assert_eq!(sent_micros, 1_000_000 + (at - t0).as_micros() as u64);
            let pong = Message::Pong {
                nonce,
                ping_sent_micros: sent_micros,
                // The relay's own clock is far off: irrelevant.
                responder_micros: 42,
            };
            core.handle_input(&pong.to_frame(), at + Duration::from_micros(rtt_us(i)));
            out.extend(msgs);
        }
        (at, out)
    }

    /// A core that has joined at `t0` (its train sent and answered at 12.5 ms), its Hello and
    /// Join already taken.
    fn joined(t0: Instant) -> ControlCore {
        let mut core = ControlCore::new(request(), t0, 1_000_000);
        sent(&mut core);
        core.handle_input(&hello_ack().to_frame(), t0);
        let (last, _) = train(&mut core, t0, |_| 12_500);
        core.handle_input(&welcome(vec![participant(1, "alice")]).to_frame(), last);
        events(&mut core);
        core
    }

    #[test]
    fn hello_then_a_train_of_pings_then_join_then_welcome() {
        let t0 = Instant::now();
        let mut core = ControlCore::new(request(), t0, 1_000_000);
        assert!(matches!(sent(&mut core)[..], [Message::Hello { .. }]));
        // The train's first ping follows Hello at once.
        assert_eq!(core.poll_timeout(), Some(t0));
        // HelloAck arrives split over two reads.
        let ack = hello_ack().to_frame();
        core.handle_input(&ack[..3], t0);
        assert!(sent(&mut core).is_empty());
        core.handle_input(&ack[3..], t0);
        assert_eq!(core.phase(), Phase::Joining);
        assert!(sent(&mut core).is_empty(), "Join waits for the train");
        // The round trips vary by 2.5 ms but for one late pong (held back by a retransmission):
        // the spread is known before Join goes out, and the late one is not in it.
        let (last, msgs) = train(&mut core, t0, |i| match i {
            3 => 90_000,
            i if i % 2 == 0 => 12_500,
            _ => 15_000,
        });
        let [.., Message::Ping { .. }, Message::Join { room, name, .. }] = &msgs[..] else {
            panic!("Join right after the last ping: {msgs:?}")
        };
        assert_eq!((room.as_str(), name.as_str()), ("lobby", "alice"));
        assert_eq!(
            msgs.iter()
                .filter(|m| matches!(m, Message::Ping { .. }))
                .count(),
            usize::from(PING_TRAIN)
        );
        assert_eq!(core.state().relay_rtt_spread_ms, Some(2.5));
        let roster = vec![participant(1, "alice"), participant(2, "bob")];
        core.handle_input(&welcome(roster).to_frame(), last);
        assert_eq!(core.phase(), Phase::InCall);
        let [Event::Joined { joined, roster }] = &events(&mut core)[..] else {
            panic!("Joined expected")
        };
        assert_eq!((joined.participant_id, joined.ssrc), (1, 7));
        assert_eq!(roster.len(), 2);
        assert_eq!(core.state().name_of(14), Some("bob"));
        // The join deadline is gone; the pings go on every two seconds.
        assert_eq!(core.poll_timeout(), Some(last + PING_INTERVAL));
    }

    #[test]
    fn a_relay_slower_than_the_train_gets_join_with_its_hello_ack() {
        let t0 = Instant::now();
        let mut core = ControlCore::new(request(), t0, 1_000_000);
        sent(&mut core);
        let (last, msgs) = train(&mut core, t0, |_| 300_000);
        assert!(!msgs.iter().any(|m| matches!(m, Message::Join { .. })));
        core.handle_input(&hello_ack().to_frame(), last + Duration::from_millis(200));
        assert!(matches!(sent(&mut core)[..], [Message::Join { .. }]));
        assert_eq!(core.phase(), Phase::Joining);
    }

    #[test]
    fn refusal_and_silence_end_the_join() {
        let t0 = Instant::now();
        let mut core = ControlCore::new(request(), t0, 0);
        core.handle_input(&hello_ack().to_frame(), t0);
        core.handle_input(
            &Message::Error {
                code: ErrorCode::RoomFull,
                message: "room is full".into(),
            }
            .to_frame(),
            t0,
        );
        assert!(matches!(
            &events(&mut core)[..],
            [Event::Ended(ConnectError::Refused {
                code: ErrorCode::RoomFull,
                ..
            })]
        ));
        assert_eq!(core.phase(), Phase::Closed);
        // A relay that never answers: the deadline ends it, not before.
        let mut core = ControlCore::new(request(), t0, 0);
        core.handle_timeout(t0 + JOIN_TIMEOUT - Duration::from_millis(1));
        assert!(events(&mut core).is_empty());
        core.handle_timeout(t0 + JOIN_TIMEOUT);
        let [Event::Ended(e)] = &events(&mut core)[..] else {
            panic!("ended expected")
        };
        assert!(e.to_string().contains("did not answer"), "{e}");
        assert_eq!(core.poll_timeout(), None);
    }

    #[test]
    fn a_version_we_did_not_offer_is_a_protocol_violation() {
        let t0 = Instant::now();
        let mut core = ControlCore::new(request(), t0, 0);
        sent(&mut core);
        let ack = Message::HelloAck {
            version: natter_proto::PROTOCOL_VERSION + 1,
            software: String::new(),
        };
        core.handle_input(&ack.to_frame(), t0);
        assert!(matches!(
            &sent(&mut core)[..],
            [Message::Error {
                code: ErrorCode::ProtocolViolation,
                ..
            }]
        ));
        assert!(matches!(&events(&mut core)[..], [Event::Ended(_)]));
        assert!(matches!(
            core.close_reason(),
            Some((ErrorCode::ProtocolViolation, _))
        ));
    }

    #[test]
    fn roster_and_mute_changes_follow_the_relay() {
        let t0 = Instant::now();
        let mut core = joined(t0);
        core.handle_input(
            &Message::ParticipantJoined(participant(3, "carol")).to_frame(),
            t0,
        );
        core.handle_input(&Message::MuteChanged { id: 3, muted: true }.to_frame(), t0);
        assert!(core.state().roster[&3].muted);
        core.handle_input(&Message::ParticipantLeft { id: 3 }.to_frame(), t0);
        assert!(!core.state().roster.contains_key(&3));
        // Her name stays for labelling her statistics.
        assert_eq!(core.state().name_of(21), Some("carol"));
        assert_eq!(events(&mut core).len(), 3);
        core.set_muted(true);
        assert!(matches!(
            &sent(&mut core)[..],
            [Message::SetMute { muted: true }]
        ));
    }

    #[test]
    fn pings_every_two_seconds_after_the_train_measure_the_round_trip() {
        let t0 = Instant::now();
        let mut core = joined(t0);
        let last = t0 + PING_TRAIN_SPACING * u32::from(PING_TRAIN - 1);
        assert_eq!(core.state().relay_rtt_ms, Some(12.5));
        assert_eq!(core.state().relay_rtt_spread_ms, Some(0.0));
        assert_eq!(core.poll_timeout(), Some(last + PING_INTERVAL));
        core.handle_timeout(last + Duration::from_secs(1));
        assert!(sent(&mut core).is_empty(), "not due yet");
        core.handle_timeout(last + PING_INTERVAL);
        let due = 1_000_000 + (last + PING_INTERVAL - t0).as_micros() as u64;
        let [Message::Ping { nonce, sent_micros }] = sent(&mut core)[..] else {
            panic!("a ping")
        };
        assert_eq!(sent_micros, due);
        let pong = Message::Pong {
            nonce,
            ping_sent_micros: sent_micros,
            responder_micros: 42,
        };
        core.handle_input(
            &pong.to_frame(),
            last + PING_INTERVAL + Duration::from_millis(40),
        );
        assert_eq!(core.state().relay_rtt_ms, Some(40.0));
        // One slow round trip among nine is not a spread.
        assert_eq!(core.state().relay_rtt_spread_ms, Some(0.0));
    }

    #[test]
    fn the_relays_uplink_spreads_are_kept_for_the_members_present() {
        let t0 = Instant::now();
        let mut core = joined(t0);
        core.handle_input(
            &Message::ParticipantJoined(participant(2, "bob")).to_frame(),
            t0,
        );
        let spread = Message::UplinkSpread {
            spreads: vec![(2, 17)],
        };
        core.handle_input(&spread.to_frame(), t0);
        assert_eq!(core.state().uplink_spread_ms.get(&2), Some(&17.0));
        let stranger = Message::UplinkSpread {
            spreads: vec![(99, 3)],
        };
        core.handle_input(&stranger.to_frame(), t0);
        assert_eq!(core.state().uplink_spread_ms.len(), 1, "not about a member");
        core.handle_input(&Message::ParticipantLeft { id: 2 }.to_frame(), t0);
        assert!(core.state().uplink_spread_ms.is_empty());
    }

    #[test]
    fn shutdown_and_closed_streams_end_the_call() {
        let t0 = Instant::now();
        let mut core = joined(t0);
        core.handle_input(
            &Message::Error {
                code: ErrorCode::ShuttingDown,
                message: "relay is shutting down".into(),
            }
            .to_frame(),
            t0,
        );
        let [Event::Ended(ConnectError::Refused { code, .. })] = &events(&mut core)[..] else {
            panic!("ended by the shutdown")
        };
        assert_eq!(*code, ErrorCode::ShuttingDown);
        assert!(
            core.state()
                .ended
                .as_deref()
                .unwrap()
                .contains("shutting down")
        );

        let mut core = joined(t0);
        core.handle_closed(Some(ConnectError::Lost("timed out".into())));
        assert!(matches!(
            &events(&mut core)[..],
            [Event::Ended(ConnectError::Lost(_))]
        ));
        assert_eq!(core.poll_timeout(), None);
        // Garbage from the relay ends it too.
        let mut core = joined(t0);
        core.handle_input(&[0xff; 8], t0);
        assert!(matches!(&events(&mut core)[..], [Event::Ended(_)]));
    }

    #[test]
    fn leaving_says_leave_once() {
        let t0 = Instant::now();
        let mut core = joined(t0);
        core.leave();
        assert!(matches!(sent(&mut core)[..], [Message::Leave]));
        core.leave();
        core.set_muted(true);
        assert!(sent(&mut core).is_empty());
        assert_eq!(core.poll_timeout(), None);
    }
}
