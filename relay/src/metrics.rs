//! Prometheus metrics and health over plain HTTP (`--metrics ADDR`): `GET /metrics` (text
//! exposition format 0.0.4) and `GET /healthz`. A deliberately tiny HTTP/1.1 responder: two
//! fixed routes, no keep-alive, bounded request size — nothing a scraper needs more of.

use crate::core::DropReason;
use crate::stats::{HandshakeFailure, StatsSnapshot};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The gauges: what the relay holds right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub connections: usize,
    pub rooms: usize,
    pub participants: usize,
    /// QUIC handshakes accepted and not yet finished (what `retry_above` is compared with).
    pub handshakes: usize,
}

/// What the exporter reads on each scrape.
pub trait Source: Send + Sync + 'static {
    fn snapshot(&self) -> (StatsSnapshot, Occupancy);
}

/// Renders the exposition text.
pub fn render(s: &StatsSnapshot, occupancy: Occupancy) -> String {
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, v: usize| {
        let _ = writeln!(
            out,
            "# HELP natter_{name} {help}\n# TYPE natter_{name} gauge\nnatter_{name} {v}"
        );
    };
    gauge(
        "connections",
        "Open QUIC connections.",
        occupancy.connections,
    );
    gauge(
        "rooms",
        "Rooms with at least one participant.",
        occupancy.rooms,
    );
    gauge(
        "participants",
        "Participants in rooms.",
        occupancy.participants,
    );
    gauge(
        "handshakes_in_progress",
        "QUIC handshakes accepted and not yet finished; above the retry threshold, new clients get a Retry.",
        occupancy.handshakes,
    );
    let _ = writeln!(
        out,
        "# HELP natter_connections_accepted_total Connections that completed the handshake.\n# TYPE natter_connections_accepted_total counter\nnatter_connections_accepted_total {}",
        s.connections_accepted
    );
    let _ = writeln!(
        out,
        "# HELP natter_handshake_failures_total Failed handshakes by reason.\n# TYPE natter_handshake_failures_total counter"
    );
    for reason in HandshakeFailure::ALL {
        let _ = writeln!(
            out,
            "natter_handshake_failures_total{{reason=\"{}\"}} {}",
            reason.as_str(),
            s.handshake_failures[reason as usize]
        );
    }
    let _ = writeln!(
        out,
        "# HELP natter_retries_total Handshakes answered with a QUIC Retry (address validation under load).\n# TYPE natter_retries_total counter\nnatter_retries_total {}",
        s.retries
    );
    let _ = writeln!(
        out,
        "# HELP natter_datagrams_in_total Media datagrams received.\n# TYPE natter_datagrams_in_total counter\nnatter_datagrams_in_total {}",
        s.datagrams_in
    );
    let _ = writeln!(
        out,
        "# HELP natter_datagrams_out_total Media datagrams handed to QUIC for forwarding.\n# TYPE natter_datagrams_out_total counter\nnatter_datagrams_out_total {}",
        s.datagrams_forwarded
    );
    let _ = writeln!(
        out,
        "# HELP natter_datagrams_dropped_total Media datagrams not forwarded, by reason.\n# TYPE natter_datagrams_dropped_total counter"
    );
    for reason in DropReason::ALL {
        let _ = writeln!(
            out,
            "natter_datagrams_dropped_total{{reason=\"{}\"}} {}",
            reason.as_str(),
            s.dropped[reason as usize]
        );
    }
    let _ = writeln!(
        out,
        "natter_datagrams_dropped_total{{reason=\"stale\"}} {}",
        s.dropped_stale
    );
    let _ = writeln!(
        out,
        "natter_datagrams_dropped_total{{reason=\"send_failed\"}} {}",
        s.datagrams_send_failed
    );
    let _ = writeln!(
        out,
        "# HELP natter_control_errors_total Control messages that broke the protocol.\n# TYPE natter_control_errors_total counter\nnatter_control_errors_total {}",
        s.control_errors
    );
    let _ = writeln!(
        out,
        "# HELP natter_forward_delay_seconds Relay-added delay: datagram received to handed to QUIC for a subscriber.\n# TYPE natter_forward_delay_seconds histogram"
    );
    let mut cumulative = 0;
    for (bound, count) in crate::stats::DELAY_BUCKETS_US.iter().zip(&s.delay_buckets) {
        cumulative += count;
        let _ = writeln!(
            out,
            "natter_forward_delay_seconds_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    cumulative += s.delay_buckets[crate::stats::DELAY_BUCKETS_US.len()];
    let _ = writeln!(
        out,
        "natter_forward_delay_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
    );
    let _ = writeln!(
        out,
        "natter_forward_delay_seconds_sum {}",
        s.delay_sum_us as f64 / 1e6
    );
    let _ = writeln!(out, "natter_forward_delay_seconds_count {cumulative}");
    out
}

/// Serves `/metrics` and `/healthz` on `addr` until the runtime stops. Returns the bound address.
pub async fn serve(addr: SocketAddr, source: Arc<dyn Source>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let source = source.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let mut len = 0;
                // Read the request head (bounded; slow clients get 5 s).
                let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
                    while len < buf.len() {
                        let n = stream.read(&mut buf[len..]).await.ok()?;
                        if n == 0 {
                            break;
                        }
                        len += n;
                        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    Some(())
                })
                .await;
                if !matches!(read, Ok(Some(()))) {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..len]);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let (status, body, kind) = match path {
                    "/metrics" => {
                        let (stats, occupancy) = source.snapshot();
                        (
                            "200 OK",
                            render(&stats, occupancy),
                            "text/plain; version=0.0.4",
                        )
                    }
                    "/healthz" => ("200 OK", "ok\n".to_string(), "text/plain"),
                    _ => ("404 Not Found", "not found\n".to_string(), "text/plain"),
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(bound)
}
