//! `natter-netem`: a seeded UDP impairment proxy for loopback benches and tests.
//!
//! Put it between one client and a relay: the client connects to `--listen`, the proxy
//! forwards to `--upstream`, each direction through its own impairment profile (see
//! `natter_e2e::netem::parse_profile`). Prints `listening: ADDR` once ready; on SIGTERM or
//! Ctrl-C it stops and prints what it did (packets, lost, reordered) as one JSON line.
//!
//!   natter-netem --upstream 127.0.0.1:4433 --down delay=40,jitter=12,loss=5 --up loss=5

use anyhow::{Context, Result};
use clap::Parser;
use natter_e2e::netem::{Impairment, parse_profile, run_proxy};
use std::io::Write;
use std::net::SocketAddr;

#[derive(Parser)]
#[command(
    version,
    about = "Seeded UDP impairment proxy (delay, jitter, loss, reordering)"
)]
struct Args {
    /// Address the client sends to.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where the client's packets go (e.g. the relay).
    #[arg(long)]
    upstream: SocketAddr,
    /// Impairment towards the client, e.g. `delay=40,jitter=12,loss=5`.
    #[arg(long, default_value = "")]
    down: String,
    /// Impairment from the client towards upstream.
    #[arg(long, default_value = "")]
    up: String,
    /// Seed of both directions' draws (the directions use different streams).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// After this many seconds, move to a new source port towards upstream (a NAT rebinding).
    #[arg(long, value_name = "SECS")]
    rebind_after: Option<f64>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let down = parse_profile(&args.down).map_err(|e| anyhow::anyhow!("--down: {e}"))?;
    let up = parse_profile(&args.up).map_err(|e| anyhow::anyhow!("--up: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let socket = tokio::net::UdpSocket::bind(args.listen)
            .await
            .with_context(|| format!("cannot bind {}", args.listen))?;
        println!("listening: {}", socket.local_addr()?);
        std::io::stdout().flush()?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let stop = async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        let seed = args.seed.wrapping_mul(2);
        let r = run_proxy(
            socket,
            args.upstream,
            Impairment::new(up, seed),
            Impairment::new(down, seed + 1),
            args.rebind_after.map(std::time::Duration::from_secs_f64),
            stop,
        )
        .await?;
        eprintln!(
            "{{\"to_upstream\":{{\"packets\":{},\"lost\":{},\"reordered\":{}}},\
             \"to_client\":{{\"packets\":{},\"lost\":{},\"reordered\":{}}},\"overflow\":{}}}",
            r.to_upstream.packets,
            r.to_upstream.lost,
            r.to_upstream.reordered,
            r.to_client.packets,
            r.to_client.lost,
            r.to_client.reordered,
            r.overflow
        );
        Ok(())
    })
}
