//! Helpers shared by the relay's in-process network tests: a QUIC client that joins a room,
//! and a UDP impairment proxy (loss, delay, outages) to put in front of it.

#![allow(dead_code)] // each test binary uses its own subset

use natter_proto::media::{Datagram, write_rtp};
use natter_proto::rtp::RtpHeader;
use natter_relay::Congestion;
use natter_relay::{Identity, RelayConfig};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// A loopback relay configuration where one sender stands in for a busy room: the
/// per-participant rate limits are lifted.
pub fn busy_room_config(congestion: Congestion) -> RelayConfig {
    let mut config = RelayConfig::new(
        vec!["127.0.0.1:0".parse().unwrap()],
        Identity::generate().unwrap(),
    );
    config.congestion = congestion;
    config.limits.packet_rate = 10_000.0;
    config.limits.packet_burst = 1_000.0;
    config.limits.byte_rate = 10_000_000.0;
    config.limits.byte_burst = 1_000_000.0;
    config
}

/// Sends `total` RTP datagrams with `size`-byte payloads, `pps` per second, each payload
/// starting with its send time (µs since `epoch`, see [`age`]).
pub async fn send_stream(
    sender: &quinn::Connection,
    ssrc: u32,
    pps: u32,
    size: usize,
    total: u32,
    epoch: Instant,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1) / pps);
    let mut payload = vec![0x5au8; size.max(8)];
    let mut buf = Vec::new();
    for seq in 0..total {
        tick.tick().await;
        payload[..8].copy_from_slice(&(epoch.elapsed().as_micros() as u64).to_be_bytes());
        buf.clear();
        let header = RtpHeader {
            marker: false,
            payload_type: 111,
            sequence: seq as u16,
            timestamp: seq * 960,
            ssrc,
            audio_level: None,
        };
        write_rtp(&header, &payload, &mut buf);
        let _ = sender.send_datagram(bytes::Bytes::copy_from_slice(&buf));
    }
}

/// How long ago a datagram from [`send_stream`] was sent.
pub fn age(datagram: &[u8], epoch: Instant) -> Option<Duration> {
    let rtp = Datagram::parse(datagram).ok()?.rtp().ok()?;
    let sent = u64::from_be_bytes(rtp.payload.get(..8)?.try_into().ok()?);
    Some(epoch.elapsed().saturating_sub(Duration::from_micros(sent)))
}

/// A client endpoint connected to the relay at `relay` (whose certificate has fingerprint
/// `fp`) and joined to `room` as `name`; returns it with the SSRC the relay assigned.
pub async fn client(
    relay: SocketAddr,
    fp: [u8; 32],
    room: &str,
    name: &str,
) -> (quinn::Endpoint, quinn::Connection, u32) {
    let (endpoint, conn) = connect_raw(relay, fp, None).await;
    let conn = conn.unwrap();
    let ssrc = natter_loadgen::join(&conn, room, name).await.unwrap();
    (endpoint, conn, ssrc)
}

/// A QUIC connection to the relay at `relay` (certificate fingerprint `fp`), pinned, with the
/// client's `transport` settings if given; nothing said yet. The handshake's result is returned
/// as is, for tests of refused handshakes.
pub async fn connect_raw(
    relay: SocketAddr,
    fp: [u8; 32],
    transport: Option<quinn::TransportConfig>,
) -> (
    quinn::Endpoint,
    Result<quinn::Connection, quinn::ConnectionError>,
) {
    let mut config = natter_loadgen::client_config(fp).unwrap();
    if let Some(transport) = transport {
        config.transport_config(std::sync::Arc::new(transport));
    }
    let local = if relay.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let mut endpoint = quinn::Endpoint::client(local.parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let conn = endpoint.connect(relay, "natter-relay").unwrap().await;
    (endpoint, conn)
}

/// A UDP proxy in front of the relay for one client.
pub struct Proxy {
    /// Where the client connects instead of the relay.
    pub addr: SocketAddr,
    /// While set, every packet in either direction is dropped (a link outage).
    pub outage: Arc<AtomicBool>,
    /// While set, packets towards the client leave at most this many bytes per second,
    /// through a drop-tail queue of [`BOTTLENECK_QUEUE`] (a slow downlink).
    pub downlink: Arc<std::sync::Mutex<Option<f64>>>,
}

/// How long a packet may wait in the proxy's downlink queue before the queue drops it.
pub const BOTTLENECK_QUEUE: Duration = Duration::from_millis(20);

/// A UDP proxy in front of the relay: every packet in either direction is dropped with
/// probability `loss` (seeded xorshift), or during an outage, or delivered `delay` later, in
/// order.
pub async fn impairment_proxy(relay: SocketAddr, loss: f64, delay: Duration, seed: u64) -> Proxy {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    back.connect(relay).await.unwrap();
    let addr = front.local_addr().unwrap();
    let (to_relay, mut to_relay_rx) =
        tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let (to_client, mut to_client_rx) =
        tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>, SocketAddr)>();
    let client_addr = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
    let rng = Arc::new(std::sync::Mutex::new(seed | 1));
    let outage = Arc::new(AtomicBool::new(false));
    let out = outage.clone();
    let drop_it = move || {
        if out.load(Relaxed) {
            return true;
        }
        let mut x = rng.lock().unwrap();
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        ((*x >> 11) as f64 / (1u64 << 53) as f64) < loss
    };
    {
        let (front, drop_it, client_addr) = (front.clone(), drop_it.clone(), client_addr.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while let Ok((n, from)) = front.recv_from(&mut buf).await {
                *client_addr.lock().unwrap() = Some(from);
                if !drop_it() {
                    let _ = to_relay.send((tokio::time::Instant::now() + delay, buf[..n].to_vec()));
                }
            }
        });
    }
    {
        let back = back.clone();
        tokio::spawn(async move {
            while let Some((at, packet)) = to_relay_rx.recv().await {
                tokio::time::sleep_until(at).await;
                let _ = back.send(&packet).await;
            }
        });
    }
    let downlink = Arc::new(std::sync::Mutex::new(None::<f64>));
    {
        let (back, client_addr, downlink) = (back.clone(), client_addr.clone(), downlink.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            // When the bottleneck has sent everything queued so far.
            let mut free_at = tokio::time::Instant::now();
            while let Ok(n) = back.recv(&mut buf).await {
                let Some(to) = *client_addr.lock().unwrap() else {
                    continue;
                };
                if drop_it() {
                    continue;
                }
                let now = tokio::time::Instant::now();
                let mut at = now + delay;
                if let Some(rate) = *downlink.lock().unwrap() {
                    free_at = free_at.max(now);
                    if free_at - now > BOTTLENECK_QUEUE {
                        continue;
                    }
                    free_at += Duration::from_secs_f64(n as f64 / rate);
                    at = free_at + delay;
                }
                let _ = to_client.send((at, buf[..n].to_vec(), to));
            }
        });
    }
    tokio::spawn(async move {
        while let Some((at, packet, to)) = to_client_rx.recv().await {
            tokio::time::sleep_until(at).await;
            let _ = front.send_to(&packet, to).await;
        }
    });
    Proxy {
        addr,
        outage,
        downlink,
    }
}
