//! `natter-udp-fanout`: the relay benchmark's baseline. A plain UDP fan-out — no QUIC, no
//! encryption, no congestion control — with the batched I/O a relay event loop uses
//! ([`natter_relay::udp_batch`]: recvmmsg/GRO in, one sendmmsg out per batch): each media
//! datagram (the same bytes the relay forwards: flow id + RTP) goes unchanged to the other
//! members of its sender's room. What the relay achieves as a fraction of what this achieves
//! on the same machine is the number that means something on any machine.
//!
//! Protocol (for `natter-loadgen --udp` only): a participant first sends `NJ`, the room and its
//! SSRC (each a big-endian u32), which is echoed back as the acknowledgement; afterwards every
//! datagram it sends with that SSRC is forwarded. Prints `listening: ADDR` once bound, runs until killed.

use clap::Parser;
use natter_proto::media::Datagram;
use natter_relay::udp_batch::{BatchSocket, SendBatch};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Plain UDP fan-out: the baseline of scripts/bench-relay.sh"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Most participants it keeps (a benchmark tool's bound, not a tuning knob).
    #[arg(long, default_value_t = 100_000)]
    max_participants: usize,
    /// One send system call per datagram instead of one sendmmsg per batch (what batching
    /// across destinations saves).
    #[arg(long)]
    unbatched: bool,
}

/// Rooms by number, and where each SSRC's room is.
#[derive(Default)]
struct Rooms {
    members: HashMap<u32, Vec<(u32, SocketAddr)>>,
    room_of: HashMap<u32, u32>,
}

impl Rooms {
    fn join(&mut self, room: u32, ssrc: u32, addr: SocketAddr) {
        if let Some(old) = self.room_of.insert(ssrc, room)
            && let Some(members) = self.members.get_mut(&old)
        {
            members.retain(|(s, _)| *s != ssrc);
        }
        self.members.entry(room).or_default().push((ssrc, addr));
    }

    fn others(&self, ssrc: u32) -> impl Iterator<Item = SocketAddr> + '_ {
        self.room_of
            .get(&ssrc)
            .and_then(|room| self.members.get(room))
            .into_iter()
            .flatten()
            .filter(move |(s, _)| *s != ssrc)
            .map(|(_, addr)| *addr)
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let socket = std::net::UdpSocket::bind(args.listen)?;
    let sock = socket2::SockRef::from(&socket);
    let _ = sock.set_recv_buffer_size(natter_relay::RECOMMENDED_UDP_BUFFER as usize);
    let _ = sock.set_send_buffer_size(natter_relay::RECOMMENDED_UDP_BUFFER as usize);
    let mut socket = BatchSocket::new(socket)?;
    println!("listening: {}", socket.local_addr()?);
    let mut rooms = Rooms::default();
    let mut out = SendBatch::default();
    loop {
        socket.recv(None, |d| {
            if let Some(join) = d.data.strip_prefix(b"NJ")
                && join.len() == 8
            {
                let room = u32::from_be_bytes(join[..4].try_into().expect("4 bytes"));
                let ssrc = u32::from_be_bytes(join[4..].try_into().expect("4 bytes"));
                if rooms.room_of.len() < args.max_participants || rooms.room_of.contains_key(&ssrc)
                {
                    rooms.join(room, ssrc, d.from);
                    out.push(d.from, d.data);
                }
                return;
            }
            let Some(ssrc) = Datagram::parse(d.data).ok().and_then(|dg| dg.sender_ssrc()) else {
                return;
            };
            for to in rooms.others(ssrc) {
                out.push(to, d.data);
            }
        })?;
        if args.unbatched {
            socket.send_one_by_one(&mut out, Duration::from_millis(2));
        } else {
            socket.send(&mut out, Duration::from_millis(2));
        }
    }
}
