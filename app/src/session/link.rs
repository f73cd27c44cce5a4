//! One connection to the relay and one membership of the room: the QUIC connection, the
//! control session on it, and the task that hands its datagrams to the engine. A session
//! outlives its links: after a loss it opens a new one, and the engine and audio carry on.

use super::nearest::{EdgeRace, Pick};
use crate::engine::Inbound;
use crate::transport::control::{self, CallState, Command, JoinRequest, Joined};
use crate::transport::path_spread::PathSpread;
use crate::transport::{ConnectError, connect};
use natter_proto::invite::Invite;
use quinn::{Connection, Endpoint};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The connection the engine's datagrams go out on: replaced at each rejoin, empty while
/// reconnecting (the engine's audio is then dropped, as on any lossy path).
pub type MediaPath = Arc<Mutex<Option<Connection>>>;

/// Sends one datagram on the current path; never blocks (quinn drops what it cannot take).
pub fn send_datagram(path: &MediaPath, datagram: &[u8]) {
    let conn = path.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(conn) = conn.as_ref() {
        // Dropped if the path cannot take it: real-time audio is never queued for long.
        let _ = conn.send_datagram(bytes::Bytes::copy_from_slice(datagram));
    }
}

/// The edge a connection went to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeChoice {
    /// The single-relay invite of the edge.
    pub invite: Invite,
    /// How long its QUIC handshake took (about one round trip).
    pub handshake: Duration,
    /// How many edges were candidates (1: a lone relay).
    pub candidates: usize,
}

/// Dials every candidate at once and keeps the nearest ([`EdgeRace`]); the others are
/// closed. One candidate is simply dialled. When all fail, the first candidate's error is
/// returned: the relay the invite itself names.
pub async fn connect_nearest(
    candidates: &[Invite],
) -> Result<(Endpoint, Connection, EdgeChoice), ConnectError> {
    if candidates.is_empty() {
        return Err(ConnectError::Invalid("no relay to connect to".into()));
    }
    let started = Instant::now();
    let mut dials = tokio::task::JoinSet::new();
    for (index, invite) in candidates.iter().enumerate() {
        let invite = invite.clone();
        dials.spawn(async move { (index, connect(&invite).await) });
    }
    let mut race = EdgeRace::new(candidates.len(), started);
    let mut connected: Vec<Option<(Endpoint, Connection)>> = vec![None; candidates.len()];
    let mut first_error = None;
    loop {
        let wait = match race.poll(Instant::now()) {
            Pick::Chosen { index, handshake } => {
                dials.abort_all();
                let (endpoint, conn) = connected[index].take().expect("the winner connected");
                for (_, other) in connected.iter().flatten() {
                    other.close(0u32.into(), b"another edge was nearer");
                }
                tracing::debug!(edge = %candidates[index].authority(), ?handshake, candidates = candidates.len(), "nearest edge");
                let choice = EdgeChoice {
                    invite: candidates[index].clone(),
                    handshake,
                    candidates: candidates.len(),
                };
                return Ok((endpoint, conn, choice));
            }
            Pick::AllFailed => {
                return Err(first_error.map_or_else(
                    || ConnectError::Unreachable(candidates[0].authority()),
                    |(_, e)| e,
                ));
            }
            Pick::Wait(until) => until,
        };
        let sleep = async {
            match wait {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            done = dials.join_next() => match done {
                Some(Ok((index, Ok(pair)))) => {
                    connected[index] = Some(pair);
                    race.on_connected(index, Instant::now());
                }
                Some(Ok((index, Err(e)))) => {
                    race.on_failed();
                    if first_error.as_ref().is_none_or(|(at, _)| index < *at) {
                        first_error = Some((index, e));
                    }
                }
                Some(Err(join_error)) => {
                    race.on_failed();
                    first_error.get_or_insert((usize::MAX, ConnectError::Local(join_error.to_string())));
                }
                // Every dial finished: the next poll decides.
                None => {}
            },
            _ = sleep => {}
        }
    }
}

/// A joined connection.
pub struct Link {
    pub joined: Joined,
    /// The edge it went to.
    pub edge: EdgeChoice,
    conn: Connection,
    endpoint: Endpoint,
    control: Option<JoinHandle<Result<(), ConnectError>>>,
    commands: mpsc::UnboundedSender<Command>,
    reader: JoinHandle<()>,
}

impl Link {
    /// Connects to the nearest of `candidates` (the edges of the invite's cluster; one for a
    /// lone relay), joins, replaces `state`'s roster with the relay's, starts forwarding
    /// datagrams to `inbound`, and keeps `path` up to date with the round trip's spread.
    pub async fn open(
        candidates: &[Invite],
        request: &JoinRequest,
        state: &Arc<Mutex<CallState>>,
        path: &PathSpread,
        inbound: std::sync::mpsc::Sender<Inbound>,
    ) -> Result<Self, ConnectError> {
        let (endpoint, conn, edge) = connect_nearest(candidates).await?;
        let (stream, joined, roster) = match control::join(&conn, request).await {
            Ok(joined) => joined,
            Err(e) => {
                conn.close(0u32.into(), b"join failed");
                return Err(e);
            }
        };
        {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            s.roster.clear();
            s.ended = None;
            roster.into_iter().for_each(|p| s.upsert(p));
        }
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let control = tokio::spawn(control::run(
            stream,
            state.clone(),
            path.clone(),
            commands_rx,
        ));
        let reader = {
            let conn = conn.clone();
            tokio::spawn(async move {
                while let Ok(datagram) = conn.read_datagram().await {
                    let inbound_datagram = Inbound {
                        datagram: datagram.to_vec(),
                        at: Instant::now(),
                    };
                    if inbound.send(inbound_datagram).is_err() {
                        break;
                    }
                }
            })
        };
        Ok(Self {
            joined,
            edge,
            conn,
            endpoint,
            control: Some(control),
            commands,
            reader,
        })
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The QUIC endpoint the connection runs on (to move it to another socket).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn send(&self, command: Command) {
        let _ = self.commands.send(command);
    }

    /// Waits until the relay ends the membership or the connection fails, and says why.
    /// Cancel-safe; once it has returned, it never returns again.
    pub async fn ended(&mut self) -> ConnectError {
        let Some(control) = self.control.as_mut() else {
            return std::future::pending().await;
        };
        let result = control.await;
        self.control = None;
        match result {
            Ok(Err(e)) => e,
            _ => ConnectError::Lost("the relay closed the control stream".into()),
        }
    }

    /// Says Leave (when the control session still runs) and closes the connection.
    pub async fn close(mut self) {
        self.send(Command::Leave);
        if let Some(control) = self.control.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), control).await;
        }
        self.reader.abort();
        self.conn.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}
