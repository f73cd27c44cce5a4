//! The load generator's client side, also used by the relay's in-process tests: a QUIC client
//! configuration pinned to the relay's certificate, and Hello + Join on a control stream.

use anyhow::{Context, bail};
use natter_proto::control::{FrameDecoder, Message};
use quinn::crypto::rustls::QuicClientConfig;
use std::sync::Arc;
use std::time::Duration;

pub fn client_config(fp: [u8; 32]) -> anyhow::Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(natter_relay::pin::PinnedVerifier::new(
            fp, provider,
        )))
        .with_no_client_auth();
    tls.alpn_protocols = vec![natter_proto::ALPN.to_vec()];
    let mut config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls)?));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    transport.datagram_receive_buffer_size(Some(1 << 20));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Says Hello and joins `room` as `name` on a new control stream; returns the SSRC the relay
/// assigned. The control stream stays open (closing it would leave) until the connection ends.
pub async fn join(conn: &quinn::Connection, room: &str, name: &str) -> anyhow::Result<u32> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let mut out = Vec::new();
    Message::Hello {
        versions: vec![natter_proto::PROTOCOL_VERSION],
        software: "natter-loadgen".into(),
    }
    .encode(&mut out);
    Message::Join {
        room: room.into(),
        name: name.into(),
        token: None,
        flags: 0,
    }
    .encode(&mut out);
    send.write_all(&out).await?;
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 8192];
    loop {
        while let Some(msg) = decoder.next_message() {
            match msg? {
                Message::Welcome { ssrc, .. } => {
                    // Keep the stream open for the rest of the run (closing it would leave).
                    tokio::spawn(async move {
                        let _keep = send;
                        while let Ok(Some(_)) = recv.read(&mut [0u8; 4096]).await {}
                    });
                    return Ok(ssrc);
                }
                Message::Error { code, message } => {
                    bail!("join refused: {} ({message})", code.describe())
                }
                _ => {}
            }
        }
        let n = recv
            .read(&mut buf)
            .await?
            .context("relay closed the control stream")?;
        decoder.push(&buf[..n]);
    }
}
