//! The control session: Hello/Join handshake, then roster updates, mute state and pings on
//! the connection's one bidirectional stream. The logic is the pure [`core::ControlCore`];
//! this module is its async shell over a quinn stream.

pub mod core;

use self::core::{ControlCore, Event};
use super::ConnectError;
use super::path_spread::PathSpread;
use natter_proto::control::Participant;
use quinn::{Connection, RecvStream, SendStream};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc;

pub use self::core::JOIN_TIMEOUT;

/// What to join.
#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub room: String,
    pub name: String,
    pub token: Option<String>,
    /// Ask the relay to send our own audio back (loopback latency tests).
    pub echo: bool,
}

/// The relay's welcome.
#[derive(Debug, Clone)]
pub struct Joined {
    pub participant_id: u64,
    pub ssrc: u32,
    pub room: String,
}

/// Live call state the session keeps up to date for the UI and stats.
#[derive(Debug, Default, Clone)]
pub struct CallState {
    /// Everyone in the room, us included, by participant id.
    pub roster: BTreeMap<u64, Participant>,
    /// Every name seen in this call by SSRC, kept after people leave so statistics about
    /// them can still be labelled.
    pub names: std::collections::HashMap<u32, String>,
    /// Round-trip time to the relay from the last Ping/Pong, ms.
    pub relay_rtt_ms: Option<f64>,
    /// How much the recent round trips to the relay vary, ms
    /// ([`natter_proto::spread::Spread`]).
    pub relay_rtt_spread_ms: Option<f64>,
    /// Each participant's uplink spread as the relay announced it, ms, by participant id.
    pub uplink_spread_ms: BTreeMap<u64, f64>,
    /// Set when the relay ended the session (code and reason).
    pub ended: Option<String>,
    /// The room's chat as we saw it, oldest first: the last [`CHAT_KEPT`] lines, kept across
    /// rejoins (the relay keeps nothing).
    pub chat: std::collections::VecDeque<ChatLine>,
    /// Lines ever added to `chat` (for "new since I last looked").
    pub chat_count: u64,
    /// The cluster's live edges as a relay last listed them (empty: a lone relay), kept
    /// across rejoins: where the session may move when its edge fails.
    pub edges: Vec<natter_proto::control::ClusterEdge>,
}

/// Chat lines a call keeps for display.
pub const CHAT_KEPT: usize = 200;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChatLine {
    /// Who wrote it (their name when it arrived).
    pub from: String,
    pub text: String,
    /// We wrote it.
    pub own: bool,
}

impl CallState {
    /// Display name of the participant sending with `ssrc`.
    pub fn name_of(&self, ssrc: u32) -> Option<&str> {
        self.names.get(&ssrc).map(String::as_str)
    }

    /// Adds a chat line, forgetting the oldest beyond [`CHAT_KEPT`].
    pub fn add_chat(&mut self, line: ChatLine) {
        if self.chat.len() == CHAT_KEPT {
            self.chat.pop_front();
        }
        self.chat.push_back(line);
        self.chat_count += 1;
    }

    /// Adds or updates a roster entry.
    pub fn upsert(&mut self, p: Participant) {
        self.names.insert(p.ssrc, p.name.clone());
        self.roster.insert(p.id, p);
    }
}

/// Commands the app sends to a running session.
#[derive(Debug)]
pub enum Command {
    SetMute(bool),
    /// Send a chat message to the room.
    Chat(String),
    Leave,
}

/// The control stream with its session core.
pub struct ControlStream {
    send: SendStream,
    recv: RecvStream,
    conn: Connection,
    core: ControlCore,
    buf: Vec<u8>,
}

impl ControlStream {
    fn closed_error(&self) -> ConnectError {
        match self.conn.close_reason() {
            Some(reason) => ConnectError::from_connection(&reason),
            None => ConnectError::Lost("control stream closed".into()),
        }
    }

    /// Writes whatever the core has queued.
    async fn flush(&mut self) -> Result<(), ConnectError> {
        while let Some(frame) = self.core.poll_transmit() {
            if self.send.write_all(&frame).await.is_err() {
                return Err(self.closed_error());
            }
        }
        Ok(())
    }

    /// Waits for bytes from the stream or the core's next timer, whichever comes first, and
    /// hands the core what happened. Cancel-safe (quinn's `read` is).
    async fn step(&mut self) {
        let wake = self.core.poll_timeout();
        let timer = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let read = tokio::select! {
            read = self.recv.read(&mut self.buf) => read,
            _ = timer => {
                self.core.handle_timeout(Instant::now());
                return;
            }
        };
        match read {
            Ok(Some(n)) => self.core.handle_input(&self.buf[..n], Instant::now()),
            Ok(None) => self.core.handle_closed(None),
            Err(_) => {
                let e = self.closed_error();
                self.core.handle_closed(Some(e));
            }
        }
    }

    /// Closes the connection with the core's complaint, if it broke off on one.
    fn close_if_violated(&self) {
        if let Some((code, reason)) = self.core.close_reason() {
            self.conn
                .close(u32::from(code.to_u16()).into(), reason.as_bytes());
        }
    }
}

/// Says hello and joins a room.
pub async fn join(
    conn: &Connection,
    req: &JoinRequest,
) -> Result<(ControlStream, Joined, Vec<Participant>), ConnectError> {
    let (send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| ConnectError::from_connection(&e))?;
    let mut stream = ControlStream {
        send,
        recv,
        conn: conn.clone(),
        core: ControlCore::new(req.clone(), Instant::now(), crate::clock::unix_micros()),
        buf: vec![0; 4096],
    };
    loop {
        stream.flush().await?;
        match stream.core.poll_event() {
            Some(Event::Joined { joined, roster }) => return Ok((stream, joined, roster)),
            Some(Event::Ended(e)) => {
                // Let the complaint reach the relay before closing.
                let _ = stream.flush().await;
                stream.close_if_violated();
                return Err(e);
            }
            Some(Event::Changed | Event::Chat(_)) => continue,
            None => {}
        }
        stream.step().await;
    }
}

/// Copies the core's view into the state the session shares, and the round trip's spread
/// into what the engine reads.
fn publish(core: &ControlCore, state: &Mutex<CallState>, path: &PathSpread) {
    let from = core.state();
    let uplinks = from.uplink_spread_ms.iter().filter_map(|(id, ms)| {
        let ssrc = from.roster.get(id)?.ssrc;
        Some((ssrc, *ms))
    });
    path.set(from.relay_rtt_spread_ms, uplinks);
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    s.roster = from.roster.clone();
    for (ssrc, name) in &from.names {
        s.names.insert(*ssrc, name.clone());
    }
    s.relay_rtt_ms = from.relay_rtt_ms.or(s.relay_rtt_ms);
    s.relay_rtt_spread_ms = from.relay_rtt_spread_ms.or(s.relay_rtt_spread_ms);
    s.uplink_spread_ms = from.uplink_spread_ms.clone();
    // A new link's core knows no edges until its relay lists them: keep the last list.
    if !from.edges.is_empty() && from.edges != s.edges {
        s.edges = from.edges.clone();
    }
    if from.ended.is_some() {
        s.ended = from.ended.clone();
    }
}

/// Runs the session until the relay ends it or the app leaves: applies roster changes to
/// `state`, pings for the round trip and its spread (into `path`), and carries out `commands`.
pub async fn run(
    mut stream: ControlStream,
    state: Arc<Mutex<CallState>>,
    path: PathSpread,
    mut commands: mpsc::UnboundedReceiver<Command>,
) -> Result<(), ConnectError> {
    // What the join learned (the ping train's spread) before any event: a talker's first
    // packet may come before the next one.
    publish(&stream.core, &state, &path);
    loop {
        stream.flush().await?;
        while let Some(event) = stream.core.poll_event() {
            publish(&stream.core, &state, &path);
            match event {
                Event::Ended(e) => return Err(e),
                Event::Chat(line) => state
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .add_chat(line),
                Event::Joined { .. } | Event::Changed => {}
            }
        }
        tokio::select! {
            _ = stream.step() => {}
            cmd = commands.recv() => match cmd {
                Some(Command::SetMute(muted)) => stream.core.set_muted(muted),
                Some(Command::Chat(text)) => stream.core.send_chat(&text),
                Some(Command::Leave) | None => {
                    stream.core.leave();
                    let _ = stream.flush().await;
                    let _ = stream.send.finish();
                    return Ok(());
                }
            },
        }
    }
}
