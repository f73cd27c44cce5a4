//! One connection to the relay and one membership of the room: the QUIC connection, the
//! control session on it, and the task that hands its datagrams to the engine. A session
//! outlives its links: after a loss it opens a new one, and the engine and audio carry on.

use crate::engine::Inbound;
use crate::transport::control::{self, CallState, Command, JoinRequest, Joined};
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

/// A joined connection.
pub struct Link {
    pub joined: Joined,
    conn: Connection,
    endpoint: Endpoint,
    control: Option<JoinHandle<Result<(), ConnectError>>>,
    commands: mpsc::UnboundedSender<Command>,
    reader: JoinHandle<()>,
}

impl Link {
    /// Connects, joins, replaces `state`'s roster with the relay's, and starts forwarding
    /// datagrams to `inbound`.
    pub async fn open(
        invite: &Invite,
        request: &JoinRequest,
        state: &Arc<Mutex<CallState>>,
        inbound: std::sync::mpsc::Sender<Inbound>,
    ) -> Result<Self, ConnectError> {
        let (endpoint, conn) = connect(invite).await?;
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
        let control = tokio::spawn(control::run(stream, state.clone(), commands_rx));
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
