//! `natter-fuzz-control`: fuzzes a live relay's control stream (`make fuzz` runs it against a
//! fresh `natter-relay`). Each round opens a few connections that send mutated control
//! traffic — valid messages in random orders, bit flips, truncations, absurd length prefixes
//! and varints, hostile strings, floods, streams left unread — then checks that an honest
//! client still gets Hello, Join and Welcome within two seconds. With `--relay-pid` it also
//! watches the relay's resident memory. Exits non-zero (after printing why) if the relay stops
//! answering, dies, or grows past `--max-rss-mib`.
//!
//! The parsers themselves are fuzzed in-process by cargo-fuzz (`shared/fuzz`); this is the
//! relay's state machine, limits and I/O shell under the same kind of input, end to end.

use anyhow::{Context, bail};
use natter_loadgen::{client_config, join};
use natter_proto::control::Message;
use natter_proto::invite::Invite;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// xorshift64*: seeded, so a failing run can be replayed with its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// A string a hostile client might send: control characters, escapes, overlong, empty.
fn hostile_string(rng: &mut Rng) -> String {
    match rng.below(6) {
        0 => String::new(),
        1 => "a\nFORGED LOG LINE\r\x1b[2J\x07".into(),
        2 => "x".repeat(65 + rng.below(100)),
        3 => "\u{9b}31m \u{202e}evil".into(),
        4 => {
            let n = rng.below(80);
            String::from_utf8_lossy(&rng.bytes(n)).into_owned()
        }
        _ => format!("room-{}", rng.below(4)),
    }
}

/// A message, valid or not in its phase.
fn message(rng: &mut Rng) -> Message {
    match rng.below(12) {
        0 => Message::Hello {
            versions: (0..rng.below(4)).map(|_| rng.next() as u16 % 3).collect(),
            software: hostile_string(rng),
        },
        1 | 2 => Message::Join {
            room: hostile_string(rng),
            name: hostile_string(rng),
            token: (rng.below(3) == 0).then(|| hostile_string(rng)),
            flags: rng.next() as u8,
        },
        3 | 4 => Message::SetMute {
            muted: rng.below(2) == 0,
        },
        5 | 6 => Message::Ping {
            nonce: rng.next(),
            sent_micros: rng.next(),
        },
        7 => Message::Pong {
            nonce: rng.next(),
            ping_sent_micros: rng.next(),
            responder_micros: rng.next(),
        },
        8 => Message::Leave,
        9 => Message::MuteChanged {
            id: rng.next(),
            muted: true,
        },
        10 => Message::Error {
            code: natter_proto::control::ErrorCode::from_u16(rng.next() as u16),
            message: hostile_string(rng),
        },
        _ => Message::ParticipantLeft { id: rng.next() },
    }
}

/// One connection's worth of bytes: a Hello most of the time, then messages, some mutated.
fn traffic(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    if rng.below(4) != 0 {
        Message::Hello {
            versions: vec![natter_proto::PROTOCOL_VERSION],
            software: "fuzz".into(),
        }
        .encode(&mut out);
    }
    for _ in 0..1 + rng.below(40) {
        let mut frame = Vec::new();
        message(rng).encode(&mut frame);
        match rng.below(10) {
            // Flip a few bits.
            0 => {
                for _ in 0..1 + rng.below(4) {
                    let i = rng.below(frame.len());
                    frame[i] ^= 1 << rng.below(8);
                }
            }
            // Truncate.
            1 => frame.truncate(rng.below(frame.len())),
            // An absurd or oversize length prefix, then noise.
            2 => {
                frame.clear();
                natter_proto::varint::encode(rng.next() >> rng.below(64), &mut frame);
                let n = rng.below(64);
                frame.extend(rng.bytes(n));
            }
            // A flood of tiny unknown messages.
            3 => {
                frame.clear();
                for _ in 0..rng.below(5_000) {
                    frame.extend([0x01, 0x20 + rng.below(0x1f) as u8]);
                }
            }
            _ => {}
        }
        out.extend(frame);
    }
    out
}

#[derive(Debug, clap::Parser)]
#[command(version, about = "Fuzzes a live natter-relay's control stream")]
struct Args {
    /// natter://host:port?fp=… of the relay under test.
    invite: String,
    /// Seconds to run.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Seed (printed, so a failure can be replayed).
    #[arg(long)]
    seed: Option<u64>,
    /// Hostile connections per round.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// The relay's process id: its RSS is checked after every round.
    #[arg(long)]
    relay_pid: Option<u32>,
    /// Largest relay RSS allowed (MiB).
    #[arg(long, default_value_t = 200)]
    max_rss_mib: u64,
}

fn rss_mib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("the relay (pid {pid}) is gone"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .context("no VmRSS")
}

/// Runs one hostile connection: sends `bytes`, maybe reads, until the relay closes it or a
/// short while passes. Returns the relay's application close code, if it closed.
async fn hostile(
    endpoint: &quinn::Endpoint,
    relay: SocketAddr,
    bytes: Vec<u8>,
    read: bool,
) -> Option<u64> {
    let conn = endpoint.connect(relay, "natter-relay").ok()?.await.ok()?;
    let (mut send, mut recv) = conn.open_bi().await.ok()?;
    let reader = async {
        let mut buf = [0u8; 4096];
        if read {
            while let Ok(Some(_)) = recv.read(&mut buf).await {}
        } else {
            std::future::pending::<()>().await;
        }
    };
    let work = async {
        let _ = send.write_all(&bytes).await;
        tokio::join!(reader, conn.closed());
    };
    let _ = tokio::time::timeout(Duration::from_millis(300), work).await;
    let code = match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => Some(c.error_code.into_inner()),
        _ => None,
    };
    conn.close(0u32.into(), b"");
    code
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Args = clap::Parser::parse();
    let invite: Invite = args.invite.parse().context("invite")?;
    let fp = invite
        .fingerprint
        .context("the invite must pin a fingerprint")?;
    let relay: SocketAddr = tokio::net::lookup_host((invite.host.as_str(), invite.port))
        .await?
        .next()
        .context("relay address")?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    }) | 1;
    println!("natter-fuzz-control: seed {seed}, {} s", args.seconds);
    let mut rng = Rng(seed);
    let mut endpoint = quinn::Endpoint::client("0.0.0.0:0".parse()?)?;
    endpoint.set_default_client_config(client_config(fp)?);
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let (mut rounds, mut connections, mut closes) = (0u64, 0u64, std::collections::BTreeMap::new());
    let mut peak_rss = 0;
    while Instant::now() < until {
        rounds += 1;
        let round: Vec<_> = (0..args.connections)
            .map(|_| (traffic(&mut rng), rng.below(3) != 0))
            .collect();
        let tasks: Vec<_> = round
            .into_iter()
            .map(|(bytes, read)| {
                let endpoint = endpoint.clone();
                tokio::spawn(async move { hostile(&endpoint, relay, bytes, read).await })
            })
            .collect();
        for task in tasks {
            connections += 1;
            *closes.entry(task.await?).or_insert(0u64) += 1;
        }
        // The relay still serves an honest client, promptly.
        let honest = async {
            let conn = endpoint.connect(relay, "natter-relay")?.await?;
            join(&conn, "fuzz-check", "honest").await?;
            conn.close(0u32.into(), b"");
            anyhow::Ok(())
        };
        match tokio::time::timeout(Duration::from_secs(2), honest).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("round {rounds} (seed {seed}): an honest client failed: {e:#}"),
            Err(_) => bail!(
                "round {rounds} (seed {seed}): the relay did not welcome an honest client within 2 s"
            ),
        }
        if let Some(pid) = args.relay_pid {
            let rss = rss_mib(pid)?;
            peak_rss = peak_rss.max(rss);
            if rss > args.max_rss_mib {
                bail!(
                    "round {rounds} (seed {seed}): relay RSS {rss} MiB > {} MiB",
                    args.max_rss_mib
                );
            }
        }
    }
    println!(
        "natter-fuzz-control: {rounds} rounds, {connections} hostile connections, closes by code {closes:?}, relay peak RSS {peak_rss} MiB: the relay kept serving"
    );
    Ok(())
}
