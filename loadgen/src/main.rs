//! `natter-loadgen`: N synthetic participants on real QUIC connections, in rooms of K, each
//! sending a 20 ms Opus-sized datagram stamped with its send time. Every participant receives
//! the other K−1 streams of its room, so the time from send to receive is what the relay (plus
//! loopback) adds; it is measured in this one process, on one clock. Ends with one summary line:
//!
//! `participants=N rooms=R streams=S p50_ms=… p99_ms=… loss_pct=… relay_cpu_pct=… relay_us_per_datagram=… loadgen_cpu_pct=… loadgen_us_per_datagram=…`
//! (with `--edge`, then `local_p50_ms=… local_p99_ms=… trunk_p50_ms=… trunk_p99_ms=… trunk_samples=…`)
//!
//! (CPU: percent of one core during the sending phase, and CPU µs per datagram received; the
//! load generator's own share shows when it, not the relay, is the limit.)
//!
//! With `--edge` (repeatable) the participants are spread over several relays of one cluster,
//! participant i on relay i mod n, so each room spans the edges and part of every stream
//! crosses a trunk; the summary then adds the latency of the datagrams that crossed a trunk
//! and of those that did not (`local_p50_ms … trunk_p99_ms`): the difference is what a trunk
//! hop adds.
//!
//! With `--batched` every QUIC participant is driven from one loop through quinn-proto with
//! batched system calls, as the relay's data plane drives its connections (`batched.rs`), so
//! that the load generator is not the limit of what it measures; with `--udp` too, the
//! baseline's participants run in the same kind of loop.
//!
//! With `--udp` the target is `natter-udp-fanout` (the benchmark's baseline) instead of a relay:
//! the same participants, sockets, rooms and datagrams over plain UDP.

mod batched;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use natter_loadgen::{client_config, join};
use natter_proto::invite::Invite;
use natter_proto::media::write_rtp;
use natter_proto::rtp::{AudioLevel, RtpHeader};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(version, about = "Load generator for natter-relay")]
struct Args {
    /// natter://host:port?fp=… (the room part is ignored; rooms are load-0, load-1, …); with
    /// `--udp`, the fan-out's host:port.
    invite: String,
    /// Drive a plain UDP fan-out (`natter-udp-fanout`) instead of a relay.
    #[arg(long)]
    udp: bool,
    /// Participants in total.
    #[arg(long, default_value_t = 100)]
    participants: usize,
    /// Participants per room.
    #[arg(long, default_value_t = 5)]
    room_size: usize,
    /// Seconds of sending, after everyone has joined.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Payload bytes per datagram (Opus at 32 kbit/s in 20 ms frames is ~80).
    #[arg(long, default_value_t = 80)]
    payload: usize,
    /// The relay's process id, to report its CPU use (from /proc).
    #[arg(long)]
    relay_pid: Option<u32>,
    /// Participants per client UDP socket (a quinn endpoint, or a plain socket with `--udp`).
    #[arg(long, default_value_t = 64)]
    per_endpoint: usize,
    /// Another relay of the same cluster (an invite; repeatable): participant i joins relay i
    /// mod (1 + edges), and latency is reported separately for datagrams that crossed a trunk.
    #[arg(long = "edge")]
    edges: Vec<String>,
    /// Drive every QUIC participant from one loop through quinn-proto with batched system
    /// calls (recvmmsg/sendmmsg) instead of a quinn endpoint and tokio tasks (with `--udp`,
    /// the plain UDP participants likewise).
    #[arg(long)]
    batched: bool,
    /// With `--batched`: spread the members of each room over the 20 ms frame instead of
    /// letting them send within a room's share of it of each other.
    #[arg(long, requires = "batched")]
    interleave: bool,
    /// With `--batched`: how many members of each room send (the first ones of each room);
    /// the others only listen, as in most moments of a real call, where their QUIC stacks
    /// acknowledge what they hear with packets of their own. Default: everyone.
    #[arg(long, requires = "batched", value_parser = clap::value_parser!(u64).range(1..))]
    talkers: Option<u64>,
}

/// Counters shared by all participants.
#[derive(Default)]
struct Totals {
    sent: AtomicU64,
    received: AtomicU64,
    /// Latency samples in µs (a bounded reservoir per participant, merged at the end): of
    /// datagrams from a sender on the receiver's own relay, and of those that crossed a trunk.
    samples: Mutex<Vec<u32>>,
    trunk_samples: Mutex<Vec<u32>>,
}

/// Where a participant's datagrams go: its QUIC connection, or its plain UDP socket (shared
/// with other participants) and the fan-out's address.
#[derive(Clone)]
enum Link {
    Quic(quinn::Connection),
    Udp(Arc<tokio::net::UdpSocket>, std::net::SocketAddr),
}

impl Link {
    fn send(&self, datagram: &[u8]) -> bool {
        match self {
            Link::Quic(conn) => conn.send_datagram(Bytes::copy_from_slice(datagram)).is_ok(),
            Link::Udp(socket, to) => socket.try_send_to(datagram, *to).is_ok(),
        }
    }
}

/// Which relay (0: the invite's, then each `--edge`) each of our SSRCs joined.
type Senders = Arc<HashMap<u32, usize>>;

/// Measures what one receiver gets: datagrams from SSRCs not in `ours` (someone else in the
/// room, such as a test's flooding client) are not counted; the age of the others is sampled
/// (a bounded reservoir per receiver, merged at the end), apart for senders on another relay
/// than the receiver's `edge` (their datagrams crossed a trunk).
struct Measure {
    ours: Senders,
    edge: usize,
    epoch: Instant,
    totals: Arc<Totals>,
    local: Vec<u32>,
    trunked: Vec<u32>,
}

/// Samples each receiver keeps of each kind.
const RESERVOIR: usize = 4096;

impl Measure {
    fn new(ours: Senders, edge: usize, epoch: Instant, totals: Arc<Totals>) -> Self {
        Self {
            ours,
            edge,
            epoch,
            totals,
            local: Vec::with_capacity(RESERVOIR),
            trunked: Vec::new(),
        }
    }

    /// `d` arrived at `at`.
    fn record_at(&mut self, d: &[u8], at: Instant) {
        let Some(sender_edge) = d
            .get(1..)
            .and_then(natter_proto::rtp::peek_ssrc)
            .and_then(|s| self.ours.get(&s).copied())
        else {
            return;
        };
        // Stamp: the first 8 payload bytes after the 20-byte header (flow + RTP + ext).
        if let Some(stamp) = d.get(21..29) {
            let sent = u64::from_be_bytes(stamp.try_into().expect("8 bytes"));
            let now = at.saturating_duration_since(self.epoch).as_micros() as u64;
            let kept = if sender_edge == self.edge {
                &mut self.local
            } else {
                &mut self.trunked
            };
            if kept.len() < RESERVOIR {
                kept.push(now.saturating_sub(sent) as u32);
            }
            self.totals.received.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for Measure {
    fn drop(&mut self) {
        let lock = |m: &Mutex<Vec<u32>>, v: &mut Vec<u32>| {
            m.lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(std::mem::take(v));
        };
        lock(&self.totals.samples, &mut self.local);
        lock(&self.totals.trunk_samples, &mut self.trunked);
    }
}

/// One participant: sends a stamped datagram every 20 ms until `until`; over QUIC it also
/// measures what arrives on its connection (over UDP its socket's receiver does that).
async fn participant(
    link: Link,
    ssrc: u32,
    ours: Senders,
    epoch: Instant,
    until: Instant,
    payload: usize,
    totals: Arc<Totals>,
) {
    let receiver = match &link {
        Link::Quic(conn) => {
            let conn = conn.clone();
            let edge = ours.get(&ssrc).copied().unwrap_or_default();
            let mut measure = Measure::new(ours, edge, epoch, totals.clone());
            Some(tokio::spawn(async move {
                while let Ok(d) = conn.read_datagram().await {
                    measure.record_at(&d, Instant::now());
                }
            }))
        }
        Link::Udp(..) => None,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq: u16 = 0;
    let mut buf = Vec::with_capacity(256);
    let mut body = vec![0xa5u8; payload.max(8)];
    while Instant::now() < until {
        tick.tick().await;
        stamped_rtp(ssrc, seq, epoch, &mut body, &mut buf);
        if link.send(&buf) {
            totals.sent.fetch_add(1, Relaxed);
        }
        seq = seq.wrapping_add(1);
    }
    // Let the last datagrams arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let (Link::Quic(conn), Some(receiver)) = (&link, receiver) {
        conn.close(0u32.into(), b"done");
        let _ = receiver.await;
    }
}

/// Writes participant `ssrc`'s datagram number `seq` into `out`: an RTP packet (voice, level
/// 30) whose payload `body` starts with the send time in µs since `epoch`.
fn stamped_rtp(ssrc: u32, seq: u16, epoch: Instant, body: &mut [u8], out: &mut Vec<u8>) {
    body[..8].copy_from_slice(&(epoch.elapsed().as_micros() as u64).to_be_bytes());
    let header = RtpHeader {
        marker: seq == 0,
        payload_type: natter_proto::OPUS_PAYLOAD_TYPE,
        sequence: seq,
        timestamp: u32::from(seq) * 960,
        ssrc,
        audio_level: Some(AudioLevel {
            voice: true,
            level: 30,
        }),
    };
    out.clear();
    write_rtp(&header, body, out);
}

/// Joins `count` participants to the UDP fan-out at `to`, `per_socket` to a socket, in rooms
/// of `room_size`: each sends `NJ` + room + SSRC until it is echoed (loopback rarely loses
/// one, but a lost join must not become a phantom loss). Returns each participant's link and
/// SSRC, and the sockets.
async fn join_udp(
    to: std::net::SocketAddr,
    count: usize,
    per_socket: usize,
    room_size: usize,
) -> anyhow::Result<(Vec<(Link, u32)>, Vec<Arc<tokio::net::UdpSocket>>)> {
    let mut sockets = Vec::new();
    for _ in 0..count.div_ceil(per_socket) {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
        socket2::SockRef::from(&socket).set_recv_buffer_size(4 << 20)?;
        sockets.push(Arc::new(socket));
    }
    let mut joined = Vec::with_capacity(count);
    for (s, socket) in sockets.iter().enumerate() {
        let members: Vec<usize> = (s * per_socket..count.min((s + 1) * per_socket)).collect();
        let mut pending: HashSet<u32> = members.iter().map(|i| *i as u32 + 1).collect();
        for _ in 0..20 {
            for &i in &members {
                let ssrc = i as u32 + 1;
                if pending.contains(&ssrc) {
                    socket
                        .send_to(&fanout_join((i / room_size) as u32, ssrc), to)
                        .await?;
                }
            }
            let mut buf = [0u8; 64];
            let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
            while !pending.is_empty() {
                match tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)).await {
                    Ok(Ok((n, _))) => {
                        if let Some(ssrc) = fanout_join_acked(&buf[..n]) {
                            pending.remove(&ssrc);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            if pending.is_empty() {
                break;
            }
        }
        if !pending.is_empty() {
            bail!(
                "the UDP fan-out did not acknowledge {} joins",
                pending.len()
            );
        }
        joined.extend(
            members
                .iter()
                .map(|&i| (Link::Udp(socket.clone(), to), i as u32 + 1)),
        );
    }
    Ok((joined, sockets))
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
}

/// Connects and joins every participant to its relay (participant i to `relays[i % n]`: an
/// address and its pinned certificate), a bounded number at a time. Returns each one's link,
/// SSRC and relay.
async fn join_quic(
    args: &Args,
    relays: &[(std::net::SocketAddr, [u8; 32])],
) -> anyhow::Result<Vec<(Link, u32, usize)>> {
    let configs = relays
        .iter()
        .map(|(_, fp)| client_config(*fp))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut endpoints = Vec::new();
    for _ in 0..args.participants.div_ceil(args.per_endpoint) {
        endpoints.push(quinn::Endpoint::client("0.0.0.0:0".parse()?)?);
    }
    let mut joined = Vec::with_capacity(args.participants);
    for chunk in (0..args.participants).collect::<Vec<_>>().chunks(50) {
        let mut tasks = Vec::new();
        for &i in chunk {
            let endpoint = endpoints[i / args.per_endpoint].clone();
            let room = format!("load-{}", i / args.room_size);
            let edge = i % relays.len();
            let (addr, config) = (relays[edge].0, configs[edge].clone());
            tasks.push(tokio::spawn(async move {
                let conn = endpoint.connect_with(config, addr, "natter-relay")?.await?;
                let ssrc = join(&conn, &room, &format!("p{i}")).await?;
                anyhow::Ok((Link::Quic(conn), ssrc, edge))
            }));
        }
        for t in tasks {
            joined.push(t.await??);
        }
    }
    Ok(joined)
}

/// The address and pinned certificate of the relay an invite names.
async fn relay_of(invite: &str) -> anyhow::Result<(std::net::SocketAddr, [u8; 32])> {
    let invite: Invite = invite
        .parse()
        .with_context(|| format!("bad invite {invite}"))?;
    let fp = invite
        .fingerprint
        .context("the invite must pin the relay's certificate (fp=…)")?;
    let addr = tokio::net::lookup_host(invite.authority().as_str())
        .await?
        .next()
        .context("relay address")?;
    Ok((addr, fp))
}

/// Joins and runs every participant on tokio: a quinn endpoint per `--per-endpoint`
/// participants and a task per participant (or plain UDP sockets with `--udp`).
async fn run_tokio(
    args: &Args,
    totals: &Arc<Totals>,
    window: &mut CpuWindow,
) -> anyhow::Result<()> {
    let mut udp_sockets = Vec::new();
    let joined = if args.udp {
        let addr = tokio::net::lookup_host(args.invite.as_str())
            .await?
            .next()
            .context("fan-out address")?;
        let (joined, sockets) =
            join_udp(addr, args.participants, args.per_endpoint, args.room_size).await?;
        udp_sockets = sockets;
        joined
            .into_iter()
            .map(|(link, ssrc)| (link, ssrc, 0))
            .collect()
    } else {
        let mut relays = vec![relay_of(&args.invite).await?];
        for edge in &args.edges {
            relays.push(relay_of(edge).await?);
        }
        let joined = join_quic(args, &relays).await?;
        if relays.len() > 1 {
            // Trunks open once the edges have written their rooms to the directory and read
            // back each other's.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        joined
    };
    let epoch = Instant::now();
    let until = epoch + Duration::from_secs_f64(args.duration);
    window.start();
    let ours: Senders = Arc::new(
        joined
            .iter()
            .map(|(_, ssrc, edge)| (*ssrc, *edge))
            .collect(),
    );
    // Over UDP one receiver per socket measures for all its participants.
    let udp_receivers: Vec<_> = udp_sockets
        .iter()
        .map(|socket| {
            let socket = socket.clone();
            let mut measure = Measure::new(ours.clone(), 0, epoch, totals.clone());
            let end = until + Duration::from_millis(300);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                while let Ok(Ok((n, _))) =
                    tokio::time::timeout_at(end.into(), socket.recv_from(&mut buf)).await
                {
                    measure.record_at(&buf[..n], Instant::now());
                }
            })
        })
        .collect();
    let mut tasks = Vec::new();
    for (link, ssrc, _) in joined {
        tasks.push(tokio::spawn(participant(
            link,
            ssrc,
            ours.clone(),
            epoch,
            until,
            args.payload,
            totals.clone(),
        )));
        // Spread the senders over the 20 ms frame, as real clients are.
        tokio::time::sleep(Duration::from_micros(
            20_000 / args.participants.max(1) as u64,
        ))
        .await;
    }
    tokio::time::sleep_until((until).into()).await;
    window.end();
    for t in tasks.into_iter().chain(udp_receivers) {
        let _ = t.await;
    }
    Ok(())
}

/// The CPU the relay (when its pid is known) and this process use during the sending phase.
struct CpuWindow {
    relay_pid: Option<u32>,
    relay: (Option<f64>, Option<f64>),
    own: (Option<f64>, Option<f64>),
    wall: (Option<Instant>, f64),
}

impl CpuWindow {
    fn new(relay_pid: Option<u32>) -> Self {
        Self {
            relay_pid,
            relay: (None, None),
            own: (None, None),
            wall: (None, 0.0),
        }
    }

    /// Sending begins.
    fn start(&mut self) {
        self.relay.0 = self.relay_pid.and_then(cpu_seconds);
        self.own.0 = cpu_seconds(std::process::id());
        self.wall.0 = Some(Instant::now());
    }

    /// Sending ends.
    fn end(&mut self) {
        self.relay.1 = self.relay_pid.and_then(cpu_seconds);
        self.own.1 = cpu_seconds(std::process::id());
        self.wall.1 = self.wall.0.map_or(0.0, |t| t.elapsed().as_secs_f64());
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.room_size < 2 || args.participants < args.room_size {
        bail!("need --room-size ≥ 2 and --participants ≥ --room-size");
    }
    if args.udp && !args.edges.is_empty() {
        bail!("--edge needs relays, not the UDP fan-out");
    }
    let rooms = args.participants.div_ceil(args.room_size);
    let talkers = args.talkers.map_or(args.room_size, |t| t as usize);
    let (streams, senders) = streams_and_senders(args.participants, args.room_size, talkers);

    let totals = Arc::new(Totals::default());
    let mut window = CpuWindow::new(args.relay_pid);
    if args.batched {
        let plan = batched::Plan {
            participants: args.participants,
            room_size: args.room_size,
            per_socket: args.per_endpoint,
            duration: Duration::from_secs_f64(args.duration),
            payload: args.payload,
            interleave: args.interleave,
            talkers,
        };
        let totals = totals.clone();
        window = if args.udp {
            let to = tokio::net::lookup_host(args.invite.as_str())
                .await?
                .next()
                .context("fan-out address")?;
            tokio::task::spawn_blocking(move || {
                batched::run_udp(to, &plan, &totals, &mut window).map(|()| window)
            })
            .await??
        } else {
            let mut relays = Vec::new();
            for invite in std::iter::once(&args.invite).chain(&args.edges) {
                let (addr, fp) = relay_of(invite).await?;
                relays.push((addr, client_config(fp)?));
            }
            tokio::task::spawn_blocking(move || {
                batched::run(&relays, &plan, &totals, &mut window).map(|()| window)
            })
            .await??
        };
    } else {
        run_tokio(&args, &totals, &mut window).await?;
    }
    let sent = totals.sent.load(Relaxed) as f64;
    let received = totals.received.load(Relaxed) as f64;
    // Each datagram should reach the other members of its room.
    let per_sender = if senders > 0 {
        streams as f64 / senders as f64
    } else {
        0.0
    };
    let expected = sent * per_sender;
    let loss = if expected > 0.0 {
        (1.0 - received / expected).max(0.0) * 100.0
    } else {
        0.0
    };
    let take = |m: &Mutex<Vec<u32>>| {
        let mut v = std::mem::take(&mut *m.lock().expect("not poisoned"));
        v.sort_unstable();
        v
    };
    let (local, trunked) = (take(&totals.samples), take(&totals.trunk_samples));
    let mut samples: Vec<u32> = local.iter().chain(&trunked).copied().collect();
    samples.sort_unstable();
    let wall = window.wall.1;
    let percent = |(start, end): (Option<f64>, Option<f64>)| match (start, end) {
        (Some(a), Some(b)) if wall > 0.0 => format!("{:.1}", (b - a) / wall * 100.0),
        _ => "n/a".into(),
    };
    let (cpu, own) = (percent(window.relay), percent(window.own));
    // The relay's CPU per datagram it delivered (received here), the capacity measure that
    // does not depend on where the latency criterion happens to fall.
    let per_datagram = match window.relay {
        (Some(a), Some(b)) if received > 0.0 => format!("{:.2}", (b - a) * 1e6 / received),
        _ => "n/a".into(),
    };
    // The same for this process: what one received datagram costs the load generator.
    let own_per_datagram = match window.own {
        (Some(a), Some(b)) if received > 0.0 => format!("{:.2}", (b - a) * 1e6 / received),
        _ => "n/a".into(),
    };
    let mut line = format!(
        "participants={} rooms={rooms} streams={streams} p50_ms={:.3} p99_ms={:.3} loss_pct={loss:.3} relay_cpu_pct={cpu} relay_us_per_datagram={per_datagram} loadgen_cpu_pct={own} loadgen_us_per_datagram={own_per_datagram}",
        args.participants,
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
    );
    if !args.edges.is_empty() {
        line += &format!(
            " local_p50_ms={:.3} local_p99_ms={:.3} trunk_p50_ms={:.3} trunk_p99_ms={:.3} trunk_samples={}",
            percentile(&local, 0.5),
            percentile(&local, 0.99),
            percentile(&trunked, 0.5),
            percentile(&trunked, 0.99),
            trunked.len(),
        );
    }
    println!("{line}");
    Ok(())
}

/// The streams the relay forwards and how many participants send, for `participants` in rooms
/// of `room_size` (the last room holds the rest) of which the first `talkers` of each room
/// send: each sender is heard by the other members of its room.
fn streams_and_senders(participants: usize, room_size: usize, talkers: usize) -> (usize, usize) {
    let mut left = participants;
    let (mut streams, mut senders) = (0, 0);
    while left > 0 {
        let members = left.min(room_size);
        let sending = members.min(talkers);
        streams += sending * (members - 1);
        senders += sending;
        left -= members;
    }
    (streams, senders)
}

/// `natter-udp-fanout`'s join: "NJ", the room and the SSRC (big-endian u32s); the fan-out
/// echoes it back as the acknowledgement. Both drivers join the baseline with it.
fn fanout_join(room: u32, ssrc: u32) -> Vec<u8> {
    let mut join = b"NJ".to_vec();
    join.extend_from_slice(&room.to_be_bytes());
    join.extend_from_slice(&ssrc.to_be_bytes());
    join
}

/// The SSRC whose join `reply` acknowledges, if it is a join's echo.
fn fanout_join_acked(reply: &[u8]) -> Option<u32> {
    let rest = reply.strip_prefix(b"NJ").filter(|r| r.len() == 8)?;
    Some(u32::from_be_bytes(rest[4..].try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_join_echo_names_its_ssrc_and_nothing_else_does() {
        assert_eq!(fanout_join_acked(&fanout_join(3, 77)), Some(77));
        assert_eq!(fanout_join_acked(b"NJ1234567"), None, "too short");
        assert_eq!(fanout_join_acked(b"XX12345678"), None, "not a join");
    }

    /// 12 participants in rooms of 5 are rooms of 5, 5 and 2; each sender is heard by the
    /// other members of its room.
    #[test]
    fn streams_are_what_each_sender_is_heard_by() {
        assert_eq!(streams_and_senders(12, 5, 5), (5 * 4 + 5 * 4 + 2, 12));
        assert_eq!(streams_and_senders(12, 5, 2), (2 * 4 + 2 * 4 + 2, 6));
        assert_eq!(streams_and_senders(12, 5, 1), (4 + 4 + 1, 3));
        assert_eq!(streams_and_senders(10, 5, 9), (40, 10));
    }
}
