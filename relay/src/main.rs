//! `natter-relay`: the command-line shell around the relay library.

use anyhow::Context;
use clap::Parser;
use natter_relay::{Identity, RelayConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Natter relay: rooms over QUIC, forwarding Opus audio datagrams between participants.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// UDP address to listen on; repeat for several. Default: 0.0.0.0:4433 and [::]:4433.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,

    /// Where the self-signed certificate is kept (default: the OS data directory).
    #[arg(long, value_name = "DIR", env = "NATTER_RELAY_DATA_DIR")]
    data_dir: Option<PathBuf>,

    /// PEM certificate chain from a CA (e.g. Let's Encrypt fullchain.pem); needs --key.
    #[arg(long, value_name = "PEM", requires = "key")]
    cert: Option<PathBuf>,

    /// PEM private key for --cert.
    #[arg(long, value_name = "PEM", requires = "cert")]
    key: Option<PathBuf>,

    /// Host name or address to put in the invite link (default: the listen address, or this
    /// machine's host name when listening on a wildcard address).
    #[arg(long, value_name = "HOST")]
    public_host: Option<String>,

    /// Maximum participants in one room.
    #[arg(long, default_value_t = 64)]
    max_room_size: usize,

    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => Identity::from_pem_files(cert, key)?,
        _ => {
            let dir = match args.data_dir.clone() {
                Some(dir) => dir,
                None => directories::ProjectDirs::from("org", "natter", "natter-relay")
                    .context("no home directory to keep the certificate in; pass --data-dir")?
                    .data_dir()
                    .to_path_buf(),
            };
            Identity::load_or_generate(&dir)?
        }
    };
    let listen = if args.listen.is_empty() {
        vec!["0.0.0.0:4433".parse()?, "[::]:4433".parse()?]
    } else {
        args.listen.clone()
    };
    let mut config = RelayConfig::new(listen.clone(), identity);
    config.public_host = args.public_host.clone();
    config.limits.max_participants_per_room = args.max_room_size;

    let relay = match natter_relay::start(config.clone()).await {
        Ok(relay) => relay,
        // A machine without IPv6 still serves IPv4 with the default addresses.
        Err(e) if args.listen.is_empty() => {
            tracing::warn!(error = %e, "IPv6 unavailable; listening on IPv4 only");
            config.listen.truncate(1);
            natter_relay::start(config).await?
        }
        Err(e) => return Err(e.into()),
    };
    println!("invite: {}", relay.invite());
    if args.public_host.is_none() && relay.local_addrs()[0].ip().is_unspecified() {
        tracing::info!(
            "pass --public-host with the address people reach this machine at to get a shareable invite"
        );
    }

    wait_for_signal().await?;
    let stats = relay.stats();
    relay.shutdown(Duration::from_secs(2)).await;
    tracing::info!(%stats, "stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM"),
        _ = int.recv() => tracing::info!("SIGINT"),
    }
    Ok(())
}
