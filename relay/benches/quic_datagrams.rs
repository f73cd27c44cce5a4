//! What QUIC itself costs per forwarded datagram, without sockets, tokio or the kernel:
//! quinn-proto driven directly, in memory, with the relay's own server configuration (TLS
//! 1.3 with AES-GCM, BBR, ACK frequency), one server connection per listener.
//!
//! The relay sends one 101-byte media datagram (flow id + RTP + 80-byte payload) to each of
//! `LISTENERS` connections in turn — every forwarded packet to a different connection, as in a
//! voice relay — and the listeners' ACKs come back. Measured with the thread's CPU clock:
//!
//! - `send`: the relay side per forwarded datagram (queue it, build and seal the packet, take
//!   the ACKs that come back): the quinn-proto part of the relay's per-datagram cost;
//! - `receive`: a connection taking in one such packet (decrypt, parse, hand the datagram
//!   out): what the relay pays per datagram it receives, one for every four it forwards in
//!   rooms of five.
//!
//! `cargo bench -p natter-relay --bench quic_datagrams` (the numbers are in docs/BENCHMARKS.md).

use bytes::{Bytes, BytesMut};
use natter_relay::{Identity, RelayConfig};
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Endpoint, EndpointConfig,
};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LISTENERS: usize = 64;
const DATAGRAMS: usize = 200_000;

/// One side of the in-memory link: an endpoint, its connections, and where it is.
struct Side {
    endpoint: Endpoint,
    conns: HashMap<ConnectionHandle, Connection>,
    addr: SocketAddr,
}

/// A UDP datagram in flight: (from, to, bytes).
type Packet = (SocketAddr, SocketAddr, Vec<u8>);

impl Side {
    fn new(server: Option<Arc<quinn_proto::ServerConfig>>, addr: SocketAddr) -> Self {
        Self {
            endpoint: Endpoint::new(Arc::new(EndpointConfig::default()), server, true, None),
            conns: HashMap::new(),
            addr,
        }
    }

    /// Runs timers and endpoint events, drains application events, and collects what every
    /// connection has to send.
    fn poll(&mut self, now: Instant, out: &mut Vec<Packet>) {
        let mut buf = Vec::with_capacity(64 * 1024);
        for (ch, conn) in self.conns.iter_mut() {
            if conn.poll_timeout().is_some_and(|t| t <= now) {
                conn.handle_timeout(now);
            }
            while let Some(event) = conn.poll_endpoint_events() {
                if let Some(event) = self.endpoint.handle_event(*ch, event) {
                    conn.handle_event(event);
                }
            }
            while conn.poll().is_some() {}
            while conn.datagrams().recv().is_some() {}
            loop {
                buf.clear();
                let Some(t) = conn.poll_transmit(now, 10, &mut buf) else {
                    break;
                };
                let segment = t.segment_size.unwrap_or(t.size);
                for chunk in buf[..t.size].chunks(segment) {
                    out.push((self.addr, t.destination, chunk.to_vec()));
                }
            }
        }
    }

    /// Takes in one UDP datagram.
    fn receive(&mut self, now: Instant, from: SocketAddr, data: &[u8], out: &mut Vec<Packet>) {
        let mut buf = Vec::new();
        match self
            .endpoint
            .handle(now, from, None, None, BytesMut::from(data), &mut buf)
        {
            Some(DatagramEvent::NewConnection(incoming)) => {
                match self.endpoint.accept(incoming, now, &mut buf, None) {
                    Ok((ch, conn)) => {
                        self.conns.insert(ch, conn);
                    }
                    Err(e) => panic!("accept: {:?}", e.cause),
                }
            }
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some(conn) = self.conns.get_mut(&ch) {
                    conn.handle_event(event);
                }
            }
            Some(DatagramEvent::Response(t)) => {
                out.push((self.addr, t.destination, buf[..t.size].to_vec()))
            }
            None => {}
        }
    }
}

/// CPU time this thread has used.
#[cfg(unix)]
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Without a thread CPU clock: elapsed time since the first call (right on an idle machine).
#[cfg(not(unix))]
fn thread_cpu() -> Duration {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// Delivers packets between the two sides until neither has anything to send; returns the
/// CPU time spent in the relay's side (its polls and receives) and the packets it sent.
fn settle(relay: &mut Side, clients: &mut Side, now: Instant) -> (Duration, usize) {
    let mut spent = Duration::ZERO;
    let mut packets = 0;
    let mut flight = Vec::new();
    loop {
        let t0 = thread_cpu();
        relay.poll(now, &mut flight);
        spent += thread_cpu() - t0;
        packets += flight.len();
        clients.poll(now, &mut flight);
        if flight.is_empty() {
            return (spent, packets);
        }
        for (from, to, data) in flight.drain(..) {
            if to == relay.addr {
                let t0 = thread_cpu();
                relay.receive(now, from, &data, &mut Vec::new());
                spent += thread_cpu() - t0;
            } else {
                clients.receive(now, from, &data, &mut Vec::new());
            }
        }
    }
}

fn main() {
    let identity = Identity::generate().expect("a certificate");
    let fingerprint = identity.fingerprint;
    let relay_addr: SocketAddr = "127.0.0.1:4433".parse().expect("literal");
    let client_addr: SocketAddr = "127.0.0.1:5000".parse().expect("literal");
    let config = RelayConfig::new(vec![relay_addr], identity);
    let server = natter_relay::server_config(&config).expect("server config");
    let mut relay = Side::new(Some(Arc::new(server)), relay_addr);
    let mut clients = Side::new(None, client_addr);
    let client_config: ClientConfig =
        natter_loadgen::client_config(fingerprint).expect("client config");

    let mut now = Instant::now();
    for _ in 0..LISTENERS {
        let (ch, conn) = clients
            .endpoint
            .connect(now, client_config.clone(), relay_addr, "natter-relay")
            .expect("connect");
        clients.conns.insert(ch, conn);
    }
    for _ in 0..50 {
        now += Duration::from_millis(1);
        settle(&mut relay, &mut clients, now);
    }
    assert_eq!(relay.conns.len(), LISTENERS, "every listener connected");
    let handles: Vec<ConnectionHandle> = relay.conns.keys().copied().collect();
    let payload = Bytes::from(vec![0xa5u8; 101]);

    // Send: one datagram per listener per round, the relay's side timed; counted are the
    // packets it sent (a datagram BBR did not let out in time would be dropped, not sent).
    let mut send_cpu = Duration::ZERO;
    let (mut queued, mut sent) = (0, 0);
    while queued < DATAGRAMS {
        // One datagram per connection per simulated millisecond: 1 000 a second (~1 Mbit/s),
        // well within what the link (no delay, no loss) and BBR allow.
        now += Duration::from_millis(1);
        let t0 = thread_cpu();
        for ch in &handles {
            let conn = relay.conns.get_mut(ch).expect("connected");
            conn.datagrams()
                .send(payload.clone(), true)
                .expect("datagrams enabled");
        }
        send_cpu += thread_cpu() - t0;
        let (cpu, packets) = settle(&mut relay, &mut clients, now);
        send_cpu += cpu;
        sent += packets;
        queued += handles.len();
    }

    // Receive: the listeners' cost to take one packet in (their own ACKs go back untimed).
    let mut receive_cpu = Duration::ZERO;
    let mut received = 0;
    let mut flight = Vec::new();
    while received < DATAGRAMS {
        now += Duration::from_millis(1);
        for ch in &handles {
            let conn = relay.conns.get_mut(ch).expect("connected");
            conn.datagrams()
                .send(payload.clone(), true)
                .expect("datagrams enabled");
        }
        relay.poll(now, &mut flight);
        let t0 = thread_cpu();
        for (from, to, data) in flight.drain(..) {
            if to == clients.addr {
                clients.receive(now, from, &data, &mut Vec::new());
                received += 1;
            }
        }
        for conn in clients.conns.values_mut() {
            while conn.datagrams().recv().is_some() {}
        }
        receive_cpu += thread_cpu() - t0;
        settle(&mut relay, &mut clients, now);
    }

    let per = |cpu: Duration, n: usize| cpu.as_secs_f64() * 1e6 / n as f64;
    println!(
        "quinn-proto, {LISTENERS} connections, {queued} datagrams of 101 bytes queued, {sent} \
         packets sent: send_us_per_datagram={:.2} receive_us_per_datagram={:.2}",
        per(send_cpu, sent),
        per(receive_cpu, received),
    );
}
