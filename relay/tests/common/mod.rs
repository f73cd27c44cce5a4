//! Helpers shared by the relay's in-process network tests: a QUIC client that joins a room,
//! and a UDP impairment proxy (loss, delay, outages) to put in front of it.

#![allow(dead_code)] // each test binary uses its own subset

use natter_proto::control::{FrameDecoder, Message};
use natter_proto::media::{Datagram, write_rtp};
use natter_proto::rtp::RtpHeader;
use natter_relay::server::Congestion;
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

/// Accepts any certificate: the relay is started in-process by this test.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub async fn client(
    relay: SocketAddr,
    room: &str,
    name: &str,
) -> (quinn::Endpoint, quinn::Connection, u32, quinn::SendStream) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![natter_proto::ALPN.to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap(),
    ));
    let mut transport = quinn::TransportConfig::default();
    transport.datagram_receive_buffer_size(Some(4 << 20));
    config.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let conn = endpoint
        .connect(relay, "natter-relay")
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut out = Vec::new();
    Message::Hello {
        versions: vec![1],
        software: "test".into(),
    }
    .encode(&mut out);
    Message::Join {
        room: room.into(),
        name: name.into(),
        token: None,
        flags: 0,
    }
    .encode(&mut out);
    send.write_all(&out).await.unwrap();
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = recv.read(&mut buf).await.unwrap().unwrap();
        decoder.push(&buf[..n]);
        while let Some(m) = decoder.next_message() {
            if let Message::Welcome { ssrc, .. } = m.unwrap() {
                return (endpoint, conn, ssrc, send);
            }
        }
    }
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
