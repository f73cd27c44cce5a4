//! Prometheus metrics and health over plain HTTP (`--metrics ADDR`): `GET /metrics` (text
//! exposition format 0.0.4) and `GET /healthz`. A deliberately tiny HTTP/1.1 responder: two
//! fixed routes, no keep-alive, bounded request size — nothing a scraper needs more of.

use crate::core::DropReason;
use crate::stats::{HandshakeFailure, StatsSnapshot};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
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

/// Writes the `# HELP` and `# TYPE` lines of the metric family `natter_NAME`.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(
        out,
        "# HELP natter_{name} {help}\n# TYPE natter_{name} {kind}"
    );
}

/// Writes one sample: `natter_SERIES VALUE` (SERIES is the name, with labels if any).
fn sample(out: &mut String, series: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "natter_{series} {value}");
}

/// A family with a single unlabelled sample.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    sample(out, name, value);
}

/// Renders the exposition text.
pub fn render(s: &StatsSnapshot, occupancy: Occupancy) -> String {
    let mut out = String::new();
    let o = &mut out;
    single(
        o,
        "connections",
        "gauge",
        "Open QUIC connections.",
        occupancy.connections,
    );
    single(
        o,
        "rooms",
        "gauge",
        "Rooms with at least one participant.",
        occupancy.rooms,
    );
    single(
        o,
        "participants",
        "gauge",
        "Participants in rooms.",
        occupancy.participants,
    );
    single(
        o,
        "handshakes_in_progress",
        "gauge",
        "QUIC handshakes accepted and not yet finished; above the retry threshold, new clients get a Retry.",
        occupancy.handshakes,
    );
    single(
        o,
        "connections_accepted_total",
        "counter",
        "Connections that completed the handshake.",
        s.connections_accepted,
    );
    family(
        o,
        "handshake_failures_total",
        "counter",
        "Failed handshakes by reason.",
    );
    for reason in HandshakeFailure::ALL {
        let series = format!("handshake_failures_total{{reason=\"{}\"}}", reason.as_str());
        sample(o, &series, s.handshake_failures[reason as usize]);
    }
    family(
        o,
        "loop_datagrams_total",
        "counter",
        "UDP datagrams each data-plane loop read (how SO_REUSEPORT spread the clients).",
    );
    for (i, n) in s.loop_datagrams.iter().enumerate() {
        sample(o, &format!("loop_datagrams_total{{loop=\"{i}\"}}"), *n);
    }
    single(
        o,
        "retries_total",
        "counter",
        "Handshakes answered with a QUIC Retry (address validation under load).",
        s.retries,
    );
    single(
        o,
        "datagrams_in_total",
        "counter",
        "Media datagrams received.",
        s.datagrams_in,
    );
    single(
        o,
        "datagrams_out_total",
        "counter",
        "Media datagrams handed to QUIC for forwarding.",
        s.datagrams_forwarded,
    );
    family(
        o,
        "datagrams_dropped_total",
        "counter",
        "Media datagrams not forwarded, by reason.",
    );
    let dropped = DropReason::ALL
        .iter()
        .map(|r| (r.as_str(), s.dropped[*r as usize]))
        .chain([
            ("stale", s.dropped_stale),
            ("send_failed", s.datagrams_send_failed),
        ]);
    for (reason, count) in dropped {
        sample(
            o,
            &format!("datagrams_dropped_total{{reason=\"{reason}\"}}"),
            count,
        );
    }
    single(
        o,
        "control_errors_total",
        "counter",
        "Sessions closed for breaking the protocol (bad or refused control message, no Hello in time, no datagrams).",
        s.control_errors,
    );
    single(
        o,
        "slow_readers_total",
        "counter",
        "Connections closed (SlowReader) because their control messages piled up unread.",
        s.slow_readers,
    );
    single(
        o,
        "control_throttled_total",
        "counter",
        "Times a connection's control messages were held back for exceeding its control rate.",
        s.control_throttled,
    );
    single(
        o,
        "trunk_datagrams_in_total",
        "counter",
        "Media datagrams received over trunks from other relays (once per trunk, however many listen here).",
        s.trunk_datagrams_in,
    );
    family(
        o,
        "forward_delay_seconds",
        "histogram",
        "Relay-added delay: datagram received to handed to QUIC for a subscriber.",
    );
    let mut cumulative = 0;
    for (bound, count) in crate::stats::DELAY_BUCKETS_US.iter().zip(&s.delay_buckets) {
        cumulative += count;
        let series = format!(
            "forward_delay_seconds_bucket{{le=\"{}\"}}",
            *bound as f64 / 1e6
        );
        sample(o, &series, cumulative);
    }
    cumulative += s.delay_buckets[crate::stats::DELAY_BUCKETS_US.len()];
    sample(o, "forward_delay_seconds_bucket{le=\"+Inf\"}", cumulative);
    sample(o, "forward_delay_seconds_sum", s.delay_sum_us as f64 / 1e6);
    sample(o, "forward_delay_seconds_count", cumulative);
    out
}

/// First and longest pause after a failed `accept()`.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Serves `/metrics` and `/healthz` on `addr` until the runtime stops. Returns the bound address.
///
/// A failed `accept()` (file descriptors exhausted, most likely) is logged and retried after a
/// growing pause, never the end of the server: a health checker that lost `/healthz` would
/// restart a relay that is fine and drop every call on it.
pub async fn serve(addr: SocketAddr, source: Arc<dyn Source>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let mut backoff = ACCEPT_BACKOFF.0;
        loop {
            let mut stream = match listener.accept().await {
                Ok((stream, _)) => {
                    backoff = ACCEPT_BACKOFF.0;
                    stream
                }
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        retry_in_ms = backoff.as_millis() as u64,
                        "metrics: accept failed; still serving"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                    continue;
                }
            };
            let source = source.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let mut len = 0;
                // Read the request head (bounded; slow clients get 5 s).
                let read = tokio::time::timeout(Duration::from_secs(5), async {
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
