//! `natter-relay`: the command-line shell around the relay library.
//!
//! Settings come from, in order of precedence: flags, `NATTER_RELAY_*` environment variables,
//! the TOML file given with `--config`, and defaults. `natter-relay token` mints access tokens
//! with the same configuration's secret.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use natter_relay::cluster::DirectoryConfig;
use natter_relay::cluster::trunk::TrunkConfig;
use natter_relay::core::Access;
use natter_relay::{ConfigFile, Identity, RelayConfig, ResetKey, resolve_secret};
use natter_relay::{Congestion, EscapingWriter, udp_buffer_warning};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Natter relay: rooms over QUIC, forwarding Opus audio datagrams between participants.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,

    /// TOML configuration file (see docs/DEPLOY.md for every key).
    #[arg(
        long,
        short,
        global = true,
        env = "NATTER_RELAY_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,

    /// UDP address to listen on; repeat for several. Default: 0.0.0.0:4433 and [::]:4433.
    #[arg(
        long,
        value_name = "ADDR",
        env = "NATTER_RELAY_LISTEN",
        value_delimiter = ','
    )]
    listen: Vec<SocketAddr>,

    /// Where the self-signed certificate is kept (default: the OS data directory).
    #[arg(long, value_name = "DIR", env = "NATTER_RELAY_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,

    /// PEM certificate chain from a CA (e.g. Let's Encrypt fullchain.pem); needs --key.
    #[arg(long, value_name = "PEM", env = "NATTER_RELAY_CERT")]
    cert: Option<PathBuf>,

    /// PEM private key for --cert.
    #[arg(long, value_name = "PEM", env = "NATTER_RELAY_KEY")]
    key: Option<PathBuf>,

    /// Host name or address to put in invite links (default: the listen address, or this
    /// machine's host name when listening on a wildcard address).
    #[arg(
        long,
        value_name = "HOST",
        env = "NATTER_RELAY_PUBLIC_HOST",
        global = true
    )]
    public_host: Option<String>,

    /// Serve Prometheus metrics (/metrics) and health (/healthz) over HTTP on this address.
    #[arg(long, value_name = "ADDR", env = "NATTER_RELAY_METRICS")]
    metrics: Option<SocketAddr>,

    /// Access: "open" (anyone with the invite) or "token" (signed tokens, see `token`).
    #[arg(long, value_name = "MODE", env = "NATTER_RELAY_ACCESS")]
    access: Option<String>,

    /// Token secret (≥ 16 bytes). Prefer the config file or NATTER_RELAY_SECRET: flags show up
    /// in process listings.
    #[arg(
        long,
        value_name = "SECRET",
        env = "NATTER_RELAY_SECRET",
        hide_env_values = true,
        global = true
    )]
    secret: Option<String>,

    /// Most simultaneous connections, handshakes in progress included (default 10000).
    #[arg(long, env = "NATTER_RELAY_MAX_CONNECTIONS")]
    max_connections: Option<usize>,

    /// Most simultaneous connections from one IPv4 address or IPv6 /64 (default 64; 0 = no
    /// limit). Clients on this machine count too: raise it for load tests from one host.
    #[arg(
        long,
        value_name = "N",
        env = "NATTER_RELAY_MAX_CONNECTIONS_PER_ADDRESS"
    )]
    max_connections_per_address: Option<usize>,

    /// Most rooms.
    #[arg(long, env = "NATTER_RELAY_MAX_ROOMS")]
    max_rooms: Option<usize>,

    /// Most participants in one room.
    #[arg(long, env = "NATTER_RELAY_MAX_ROOM_SIZE")]
    max_room_size: Option<usize>,

    /// Per-participant media packet rate limit (packets/s).
    #[arg(long, env = "NATTER_RELAY_PACKETS_PER_SECOND")]
    packets_per_second: Option<f64>,

    /// Per-participant media byte rate limit (bytes/s).
    #[arg(long, env = "NATTER_RELAY_BYTES_PER_SECOND")]
    bytes_per_second: Option<f64>,

    /// Seconds without any packet before a participant is dropped from the room.
    #[arg(long, env = "NATTER_RELAY_IDLE_TIMEOUT")]
    idle_timeout: Option<u64>,

    /// Seconds a connection may take from Hello to Join before it is closed (default 10).
    #[arg(long, value_name = "SECS", env = "NATTER_RELAY_JOIN_TIMEOUT")]
    join_timeout: Option<u64>,

    /// Handshakes in progress above which new clients must first answer a QUIC Retry
    /// (address validation, one extra round trip); 0 = always. Default 64.
    #[arg(long, value_name = "N", env = "NATTER_RELAY_RETRY_ABOVE")]
    retry_above: Option<usize>,

    /// Large rooms: forward only the N loudest speakers.
    #[arg(long, value_name = "N", env = "NATTER_RELAY_FORWARD_LOUDEST")]
    forward_loudest: Option<usize>,

    /// Data-plane loops, one per thread, sharing the port with SO_REUSEPORT (default 1).
    #[arg(long, value_name = "N", env = "NATTER_RELAY_THREADS")]
    threads: Option<usize>,

    /// Congestion controller: "bbr" (default; keeps voice flowing on lossy paths) or "cubic".
    #[arg(long, env = "NATTER_RELAY_CONGESTION")]
    congestion: Option<String>,

    /// Retired: "batched" is the only data plane (accepted so old configs start; "quinn" logs
    /// a warning).
    #[arg(
        long,
        value_name = "PLANE",
        env = "NATTER_RELAY_DATA_PLANE",
        hide = true
    )]
    data_plane: Option<String>,

    /// Cluster directory (Redis URL, e.g. redis+unix:///run/redis/redis.sock or
    /// redis://:PASSWORD@127.0.0.1:6379): this relay registers itself and its rooms there.
    /// Without it the relay runs alone. Prefer the config file or the environment for a URL
    /// with a password.
    #[arg(
        long,
        value_name = "URL",
        env = "NATTER_RELAY_DIRECTORY",
        hide_env_values = true
    )]
    directory: Option<String>,

    /// This relay's id in the directory (default: from its certificate fingerprint).
    #[arg(long, value_name = "ID", env = "NATTER_RELAY_ID")]
    relay_id: Option<String>,

    /// Region label in the directory (default "default").
    #[arg(long, value_name = "LABEL", env = "NATTER_RELAY_REGION")]
    region: Option<String>,

    /// Seconds the directory keeps this relay's entries after its last heartbeat (default 10;
    /// heartbeats every third of it).
    #[arg(long, value_name = "SECS", env = "NATTER_RELAY_DIRECTORY_TTL")]
    directory_ttl: Option<u64>,

    /// Cluster secret (≥ 16 bytes, the same on every relay of the cluster): relays that share
    /// a room connect to each other with trunks, authenticated by it. Needs --directory and
    /// --node. Prefer the config file or the environment.
    #[arg(
        long,
        value_name = "SECRET",
        env = "NATTER_RELAY_CLUSTER_SECRET",
        hide_env_values = true
    )]
    cluster_secret: Option<String>,

    /// This relay's number in the cluster, 1-255, unique (the high bits of its participant
    /// ids and SSRCs).
    #[arg(long, value_name = "N", env = "NATTER_RELAY_NODE")]
    node: Option<u8>,

    /// Log format: "text" or "json".
    #[arg(long, env = "NATTER_RELAY_LOG_FORMAT")]
    log_format: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Mint an access token for a room (uses the configured secret).
    Token {
        /// The room the token admits to.
        #[arg(long)]
        room: String,
        /// How long it is valid: e.g. 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Bind the participant's display name.
        #[arg(long)]
        name: Option<String>,
        /// Also print a full invite for this relay (HOST:PORT, pinned to its certificate).
        #[arg(long, value_name = "HOST:PORT")]
        invite: Option<String>,
    },
}

/// Everything resolved, ready to run.
struct Settings {
    relay: RelayConfig,
    metrics: Option<SocketAddr>,
    default_listen: bool,
    /// Retired settings the configuration still names, to warn about once logging runs.
    retired: Vec<String>,
}

/// The setting `key` named by the command line or the config file, among `options` (the first
/// is the default); an unknown name is an error that names the key and what it accepts.
fn choose<T: Copy>(key: &str, named: Option<&str>, options: &[(&str, T)]) -> anyhow::Result<T> {
    let name = named.unwrap_or(options[0].0);
    match options.iter().find(|(n, _)| *n == name) {
        Some((_, value)) => Ok(*value),
        None => {
            let accepted: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
            bail!("{key}: {name:?} is not {}", accepted.join(" or "))
        }
    }
}

fn data_dir(args: &Args, file: &ConfigFile) -> anyhow::Result<PathBuf> {
    match args.data_dir.clone().or(file.data_dir.clone()) {
        Some(dir) => Ok(dir),
        None => Ok(
            directories::ProjectDirs::from("org", "natter", "natter-relay")
                .context("no home directory to keep the certificate in; pass --data-dir")?
                .data_dir()
                .to_path_buf(),
        ),
    }
}

fn secret(args: &Args, file: &ConfigFile) -> anyhow::Result<Option<Vec<u8>>> {
    let mut access = file.access.clone();
    if let Some(s) = &args.secret {
        access.secret = Some(s.clone());
        access.secret_file = None;
    }
    Ok(resolve_secret(&access)?)
}

fn settings(args: &Args, file: &ConfigFile) -> anyhow::Result<Settings> {
    let identity = match (
        args.cert.clone().or(file.cert.clone()),
        args.key.clone().or(file.key.clone()),
    ) {
        (Some(cert), Some(key)) => Identity::from_pem_files(&cert, &key)?,
        (Some(_), None) => bail!("cert: needs a key too (--key or key = \"…\")"),
        (None, Some(_)) => bail!("key: needs a certificate too (--cert or cert = \"…\")"),
        (None, None) => Identity::load_or_generate(&data_dir(args, file)?)?,
    };
    let mut listen = args.listen.clone();
    if listen.is_empty() {
        listen = file.listen.clone().unwrap_or_default();
    }
    let default_listen = listen.is_empty();
    if default_listen {
        listen = vec!["0.0.0.0:4433".parse()?, "[::]:4433".parse()?];
    }
    let mut relay = RelayConfig::new(listen, identity);
    // The stateless-reset key lives beside the certificate. A relay run with a CA certificate
    // and no home directory has nowhere to keep it: it then resets nobody after a restart
    // (clients notice by their idle timeout instead), which it says.
    match data_dir(args, file) {
        Ok(dir) => relay.reset_key = ResetKey::load_or_create(&dir)?,
        Err(e) => tracing::warn!(
            "{e:#}: the stateless-reset key is not kept, so after a restart clients notice by \
             their idle timeout (6 s) instead of at once"
        ),
    }
    relay.public_host = args.public_host.clone().or(file.public_host.clone());
    let l = &file.limits;
    let pick = |flag: Option<usize>, file: Option<usize>| flag.or(file);
    if let Some(v) = pick(args.max_connections, l.max_connections) {
        relay.max_connections = v;
    }
    if let Some(v) = pick(
        args.max_connections_per_address,
        l.max_connections_per_address,
    ) {
        relay.max_per_address = v;
    }
    if let Some(v) = pick(args.max_rooms, l.max_rooms) {
        relay.limits.max_rooms = v;
    }
    if let Some(v) = pick(args.max_room_size, l.max_room_size) {
        if v == 0 {
            bail!("limits.max-room-size: must be at least 1");
        }
        relay.limits.max_participants_per_room = v;
    }
    if let Some(v) = l.max_datagram_bytes {
        if !(100..=natter_proto::MAX_MEDIA_DATAGRAM).contains(&v) {
            bail!(
                "limits.max-datagram-bytes: must be 100..={}",
                natter_proto::MAX_MEDIA_DATAGRAM
            );
        }
        relay.limits.max_datagram_bytes = v;
    }
    if let Some(v) = args.packets_per_second.or(l.packets_per_second) {
        if v < 60.0 {
            bail!(
                "limits.packets-per-second: {v} is below what one voice stream needs (about 51/s at 20 ms frames, 101/s at 10 ms); use at least 60"
            );
        }
        relay.limits.packet_rate = v;
        relay.limits.packet_burst = (v / 3.0).max(20.0);
    }
    if let Some(v) = args.bytes_per_second.or(l.bytes_per_second) {
        if v < 8_000.0 {
            bail!("limits.bytes-per-second: {v} is too low for voice; use at least 8000");
        }
        relay.limits.byte_rate = v;
        relay.limits.byte_burst = (v / 3.0).max(4_000.0);
    }
    if let Some(v) = args.idle_timeout.or(l.idle_timeout_secs) {
        if v < 2 {
            bail!("limits.idle-timeout-secs: must be at least 2 (clients keep alive every second)");
        }
        relay.idle_timeout = Duration::from_secs(v);
    }
    if let Some(v) = l.hello_timeout_secs {
        relay.hello_timeout = Duration::from_secs(v.max(1));
    }
    if let Some(v) = args.join_timeout.or(l.join_timeout_secs) {
        relay.join_timeout = Duration::from_secs(v.max(1));
    }
    if let Some(v) = l.control_messages_per_second {
        if !(1.0..=10_000.0).contains(&v) {
            bail!(
                "limits.control-messages-per-second: {v} is not in 1..=10000 (clients need about 1)"
            );
        }
        relay.control_rate = v;
        relay.control_burst = (v * 4.0).max(10.0);
    }
    if let Some(v) = pick(args.retry_above, l.retry_above) {
        relay.retry_above = v;
    }
    relay.limits.forward_loudest = pick(args.forward_loudest, l.forward_loudest).filter(|n| *n > 0);
    if let Some(n) = pick(args.threads, file.threads) {
        if n == 0 {
            bail!("threads: must be at least 1");
        }
        relay.threads = n;
    }
    relay.congestion = choose(
        "congestion",
        args.congestion.as_deref().or(file.congestion.as_deref()),
        &[("bbr", Congestion::Bbr), ("cubic", Congestion::Cubic)],
    )?;
    // A setting of the removed quinn data plane: accepted (a config that names it keeps
    // working) and reported, since it no longer changes anything.
    let mut retired = Vec::new();
    let quinn = choose(
        "data-plane",
        args.data_plane.as_deref().or(file.data_plane.as_deref()),
        &[("batched", false), ("quinn", true)],
    )?;
    if quinn {
        retired.push(
            "data-plane = \"quinn\" is ignored: the quinn data plane was removed, the batched \
             one does everything it did"
                .into(),
        );
    }

    let cluster = &file.cluster;
    if let Some(url) = args.directory.clone().or(cluster.directory.clone()) {
        let mut directory = DirectoryConfig::new(url);
        directory.id = args.relay_id.clone().or(cluster.id.clone());
        if let Some(id) = &directory.id
            && !natter_proto::control::valid_name(id)
        {
            bail!(
                "cluster.id: {id:?} is not a valid id ({})",
                natter_proto::control::NAME_RULE
            );
        }
        if let Some(region) = args.region.clone().or(cluster.region.clone()) {
            directory.region = region;
        }
        if let Some(secs) = args.directory_ttl.or(cluster.ttl_secs) {
            if !(3..=3600).contains(&secs) {
                bail!("cluster.ttl-secs: {secs} is not in 3..=3600");
            }
            directory.ttl = Duration::from_secs(secs);
        }
        relay.directory = Some(directory);
    }
    let cluster_secret = match (&args.cluster_secret, &cluster.secret_file) {
        (Some(s), _) => Some(s.as_bytes().to_vec()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cluster.secret-file: cannot read {}", path.display()))?
                .trim()
                .as_bytes()
                .to_vec(),
        ),
        (None, None) => cluster.secret.as_ref().map(|s| s.as_bytes().to_vec()),
    };
    if let Some(secret) = cluster_secret {
        if secret.len() < 16 {
            bail!("cluster.secret: use at least 16 bytes (e.g. `openssl rand -hex 32`)");
        }
        if relay.directory.is_none() {
            bail!(
                "cluster.secret: trunks find each other through the directory; set cluster.directory too"
            );
        }
        let node = args
            .node
            .or(cluster.node)
            .filter(|n| *n > 0)
            .context("cluster.node: a relay with trunks needs its own number, 1-255")?;
        relay.trunks = Some(TrunkConfig { secret, node });
    }
    relay.limits.access = match args.access.as_deref().or(file.access.mode.as_deref()).unwrap_or("open") {
        "open" => Access::Open,
        "token" => Access::Tokens {
            secret: secret(args, file)?.context("access.mode = \"token\" needs access.secret or access.secret-file (or NATTER_RELAY_SECRET)")?,
        },
        other => bail!("access.mode: {other:?} is not \"open\" or \"token\""),
    };
    Ok(Settings {
        relay,
        metrics: args.metrics.or(file.metrics),
        default_listen,
        retired,
    })
}

fn init_logging(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: a log file or journald would keep the escape codes.
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        // Text lines are escaped: a peer must not be able to forge lines or send terminal
        // escapes through a logged field (JSON escapes by construction).
        "text" => builder
            .with_writer(move || EscapingWriter::new(std::io::stderr(), ansi))
            .init(),
        "json" => builder.with_writer(std::io::stderr).json().init(),
        other => bail!("log-format: {other:?} is not \"text\" or \"json\""),
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("natter-relay: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    if let Some(Cmd::Token {
        room,
        ttl,
        name,
        invite,
    }) = &args.command
    {
        return mint(&args, &file, room, ttl, name.clone(), invite.as_deref());
    }
    init_logging(
        args.log_format
            .as_deref()
            .or(file.log_format.as_deref())
            .unwrap_or("text"),
    )?;
    let settings = settings(&args, &file)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(settings))
}

fn mint(
    args: &Args,
    file: &ConfigFile,
    room: &str,
    ttl: &str,
    name: Option<String>,
    invite: Option<&str>,
) -> anyhow::Result<()> {
    let secret = secret(args, file)?.context(
        "no token secret: set access.secret (or secret-file) in the config, or NATTER_RELAY_SECRET",
    )?;
    if !natter_proto::control::valid_name(room) {
        bail!(
            "room: {room:?} is not a valid room name ({})",
            natter_proto::control::NAME_RULE
        );
    }
    // A token binding a name the relay would refuse could never be used: say so now.
    if let Some(name) = &name
        && !natter_proto::control::valid_name(name)
    {
        bail!(
            "name: {name:?} is not a valid display name ({})",
            natter_proto::control::NAME_RULE
        );
    }
    let ttl = natter_relay::token::parse_ttl(ttl).map_err(|e| anyhow::anyhow!("ttl: {e}"))?;
    let exp = (natter_relay::unix_micros() / 1_000_000)
        .checked_add(ttl)
        .context("ttl: too long")?;
    let token = natter_relay::token::mint(
        &secret,
        &natter_relay::token::Claims {
            room: room.into(),
            exp,
            name,
        },
    );
    println!("{token}");
    if let Some(authority) = invite {
        let identity = Identity::load_or_generate(&data_dir(args, file)?)?;
        let mut link: natter_proto::invite::Invite = format!("natter://{authority}")
            .parse()
            .context("--invite must be HOST:PORT")?;
        link.fingerprint = Some(identity.fingerprint);
        link.room = Some(room.into());
        link.token = Some(token);
        println!("{link}");
    }
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    if let Some(warning) = udp_buffer_warning() {
        tracing::warn!("{warning}");
    }
    let Settings {
        relay: config,
        metrics,
        default_listen,
        retired,
    } = settings;
    for warning in retired {
        tracing::warn!("{warning}");
    }
    let mut fallback = config.clone();
    let relay = match natter_relay::start(config).await {
        Ok(relay) => relay,
        // A machine without IPv6 still serves IPv4 with the default addresses.
        Err(e) if default_listen => {
            tracing::warn!(error = %e, "IPv6 unavailable; listening on IPv4 only");
            fallback.listen.truncate(1);
            natter_relay::start(fallback).await?
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(addr) = metrics {
        let bound = relay
            .serve_metrics(addr)
            .await
            .with_context(|| format!("metrics: cannot listen on {addr}"))?;
        println!("metrics: http://{bound}/metrics");
    }
    println!("invite: {}", relay.invite());
    if relay.local_addrs()[0].ip().is_unspecified() {
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

#[cfg(unix)]
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

/// Elsewhere (Windows): Ctrl-C, which is also what a service stop sends a console program.
#[cfg(not(unix))]
async fn wait_for_signal() -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await?;
    tracing::info!("Ctrl-C");
    Ok(())
}
