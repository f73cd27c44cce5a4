//! The control session: Hello/Join handshake, then roster updates, mute state and pings on
//! the connection's one bidirectional stream.

use super::ConnectError;
use natter_proto::control::{ErrorCode, FrameDecoder, JOIN_FLAG_ECHO, Message, Participant};
use quinn::{Connection, RecvStream, SendStream};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

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
    /// Set when the relay ended the session (code and reason).
    pub ended: Option<String>,
}

impl CallState {
    /// Display name of the participant sending with `ssrc`.
    pub fn name_of(&self, ssrc: u32) -> Option<&str> {
        self.names.get(&ssrc).map(String::as_str)
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
    Leave,
}

/// Framed messages over the control stream.
pub struct ControlStream {
    send: SendStream,
    recv: RecvStream,
    decoder: FrameDecoder,
    conn: Connection,
    buf: Vec<u8>,
}

impl ControlStream {
    pub async fn open(conn: &Connection) -> Result<Self, ConnectError> {
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| ConnectError::from_connection(&e))?;
        Ok(Self {
            send,
            recv,
            decoder: FrameDecoder::new(),
            conn: conn.clone(),
            buf: vec![0; 4096],
        })
    }

    pub async fn send(&mut self, msg: &Message) -> Result<(), ConnectError> {
        self.send
            .write_all(&msg.to_frame())
            .await
            .map_err(|_| self.closed_error())
    }

    fn closed_error(&self) -> ConnectError {
        match self.conn.close_reason() {
            Some(reason) => ConnectError::from_connection(&reason),
            None => ConnectError::Lost("control stream closed".into()),
        }
    }

    /// The next known message; `Ok(None)` when the relay finished the stream.
    pub async fn recv(&mut self) -> Result<Option<Message>, ConnectError> {
        loop {
            match self.decoder.next_message() {
                Some(Ok(Message::Unknown { .. })) => continue,
                Some(Ok(msg)) => return Ok(Some(msg)),
                Some(Err(e)) => {
                    return Err(ConnectError::Lost(format!(
                        "malformed message from relay: {e}"
                    )));
                }
                None => {}
            }
            match self.recv.read(&mut self.buf).await {
                Ok(Some(n)) => self.decoder.push(&self.buf[..n]),
                Ok(None) => return Ok(None),
                Err(_) => return Err(self.closed_error()),
            }
        }
    }

    /// Waits for the next message, turning an Error message or a close into `Refused`.
    async fn expect(&mut self) -> Result<Message, ConnectError> {
        match self.recv().await? {
            Some(Message::Error { code, message }) => Err(ConnectError::Refused { code, message }),
            Some(msg) => Ok(msg),
            None => Err(self.closed_error()),
        }
    }
}

/// How long the relay may take to answer Hello and Join. QUIC keep-alives hold a connection
/// open indefinitely, so a peer that completed the handshake but never answers would
/// otherwise leave the call hanging.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Says hello and joins a room.
pub async fn join(
    conn: &Connection,
    req: &JoinRequest,
) -> Result<(ControlStream, Joined, Vec<Participant>), ConnectError> {
    tokio::time::timeout(JOIN_TIMEOUT, hello_and_join(conn, req))
        .await
        .unwrap_or_else(|_| {
            Err(ConnectError::Lost(format!(
                "the relay did not answer Hello and Join within {} s",
                JOIN_TIMEOUT.as_secs()
            )))
        })
}

async fn hello_and_join(
    conn: &Connection,
    req: &JoinRequest,
) -> Result<(ControlStream, Joined, Vec<Participant>), ConnectError> {
    let mut stream = ControlStream::open(conn).await?;
    stream
        .send(&Message::Hello {
            versions: vec![natter_proto::PROTOCOL_VERSION],
            software: format!("natter/{}", env!("CARGO_PKG_VERSION")),
        })
        .await?;
    match stream.expect().await? {
        Message::HelloAck { version, .. } if version == natter_proto::PROTOCOL_VERSION => {}
        Message::HelloAck { version, .. } => {
            let reason = format!("relay chose protocol version {version}, which we did not offer");
            let _ = stream
                .send(&Message::Error {
                    code: ErrorCode::ProtocolViolation,
                    message: reason.clone(),
                })
                .await;
            conn.close(
                u32::from(ErrorCode::ProtocolViolation.to_u16()).into(),
                reason.as_bytes(),
            );
            return Err(ConnectError::Lost(reason));
        }
        other => {
            return Err(ConnectError::Lost(format!(
                "expected HelloAck, relay sent {other:?}"
            )));
        }
    }
    stream
        .send(&Message::Join {
            room: req.room.clone(),
            name: req.name.clone(),
            token: req.token.clone(),
            flags: if req.echo { JOIN_FLAG_ECHO } else { 0 },
        })
        .await?;
    match stream.expect().await? {
        Message::Welcome {
            participant_id,
            ssrc,
            room,
            roster,
        } => Ok((
            stream,
            Joined {
                participant_id,
                ssrc,
                room,
            },
            roster,
        )),
        other => Err(ConnectError::Lost(format!(
            "expected Welcome, relay sent {other:?}"
        ))),
    }
}

fn unix_micros() -> u64 {
    natter_relay::core::unix_micros()
}

/// Runs the session until the relay ends it or the app leaves: applies roster changes to
/// `state`, pings every two seconds for RTT, and carries out `commands`.
pub async fn run(
    mut stream: ControlStream,
    state: Arc<Mutex<CallState>>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) -> Result<(), ConnectError> {
    let mut ping = tokio::time::interval(Duration::from_secs(2));
    let mut nonce = 0u64;
    loop {
        tokio::select! {
            msg = stream.recv() => {
                let msg = match msg {
                    Ok(Some(msg)) => msg,
                    Ok(None) => return Ok(()),
                    Err(e) => {
                        state.lock().unwrap_or_else(|p| p.into_inner()).ended = Some(e.to_string());
                        return Err(e);
                    }
                };
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                match msg {
                    Message::ParticipantJoined(p) => s.upsert(p),
                    Message::ParticipantLeft { id } => {
                        s.roster.remove(&id);
                    }
                    Message::MuteChanged { id, muted } => {
                        if let Some(p) = s.roster.get_mut(&id) {
                            p.muted = muted;
                        }
                    }
                    Message::Pong { ping_sent_micros, .. } => {
                        s.relay_rtt_ms = Some(unix_micros().saturating_sub(ping_sent_micros) as f64 / 1000.0);
                    }
                    Message::Error { code, message } => {
                        s.ended = Some(super::explain(code, &message));
                        // Every code the relay knows is fatal (PROTOCOL.md §6.1): the close
                        // follows, and the session ends with the relay's code and words rather
                        // than "the relay closed the control stream". An unknown code is
                        // informational until a close says otherwise.
                        if !matches!(code, ErrorCode::Unknown(_)) {
                            return Err(ConnectError::Refused { code, message });
                        }
                    }
                    _ => {}
                }
            }
            _ = ping.tick() => {
                nonce += 1;
                stream.send(&Message::Ping { nonce, sent_micros: unix_micros() }).await?;
            }
            cmd = commands.recv() => match cmd {
                Some(Command::SetMute(muted)) => stream.send(&Message::SetMute { muted }).await?,
                Some(Command::Leave) | None => {
                    let _ = stream.send(&Message::Leave).await;
                    let _ = stream.send.finish();
                    return Ok(());
                }
            },
        }
    }
}
