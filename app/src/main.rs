//! `natter`: the Natter voice client's command line.
//!
//! - `natter` — the desktop app (needs a display).
//! - `natter call INVITE …` — a headless call with WAV files as microphone and speaker.
//! - `natter host` — hosts a call headless: relay, router port mapping, invite.
//! - `natter demo` — a local relay plus two headless clients; prints the measured latency.
//! - `natter signal …` — writes the probe signals the latency tools use.
//! - `natter latency …` — measures mouth-to-ear latency from a recording of the chirp probe.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use natter::audio::SAMPLE_RATE;
use natter::audio::wav::{read_wav, write_wav};
use natter::call::{self, CallOptions};
use natter::measure::{self, LatencyStats};
use natter::session::StartError;
use natter::transport::ConnectError;
use natter_proto::invite::Invite;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "natter",
    version,
    about = "Natter voice chat client",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Without a command: open the desktop app.
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Desktop app: join this invite (natter://host:port/room?fp=…) right away.
    invite: Option<String>,
    /// Desktop app: display name to join INVITE with (default: the saved one).
    #[arg(long)]
    name: Option<String>,
    /// Desktop app: keep settings, trusted relays and logs under DIR instead of the OS
    /// config and data directories.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Desktop app: use a test signal instead of sound cards (machines without audio).
    #[arg(long, value_enum, value_name = "SIGNAL")]
    test_signal: Option<TestSignalArg>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum TestSignalArg {
    Silence,
    Speech,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Join a call headless: a WAV file is the microphone, another the speaker.
    Call(Box<CallArgs>),
    /// Start a local relay and two headless clients, and print the measured latency.
    Demo {
        /// Seconds of chirps to send.
        #[arg(long, default_value_t = 12.0)]
        seconds: f32,
        /// Opus frame length in ms.
        #[arg(long, default_value_t = 20)]
        frame_ms: u32,
    },
    /// Host a call from this machine, headless: the app's relay, the router asked to forward
    /// its UDP port (UPnP), and the invite to share printed. Runs until Ctrl-C or SIGTERM.
    Host(HostArgs),
    /// List the audio devices `--input-device`/`--output-device` accept.
    Devices,
    /// Write a test signal as a 48 kHz mono WAV file.
    Signal {
        #[arg(value_enum)]
        kind: SignalKind,
        out: PathBuf,
        #[arg(long, default_value_t = 12.0)]
        seconds: f32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Measure mouth-to-ear latency: find each chirp of the probe signal in a recording.
    Latency {
        /// The far end's recording (its sample 0 aligned with the probe's, or see --offset-ms).
        recording: PathBuf,
        /// Seconds and seed the probe was made with (`natter signal chirps`).
        #[arg(long, default_value_t = 12.0)]
        seconds: f32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// How much later the recording's sample 0 was than the probe's (negative: earlier).
        #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
        offset_ms: f64,
        /// Or: the two `--stats-json` files of the sending and recording calls, whose sample-0
        /// wall clocks give the offset.
        #[arg(long, num_args = 2, value_names = ["SENDER_JSON", "RECEIVER_JSON"])]
        align: Option<Vec<PathBuf>>,
        /// Longest latency searched for.
        #[arg(long, default_value_t = 1000.0)]
        max_ms: f32,
        /// Also print each chirp's time and latency, one per line: how the delay moved
        /// through the call (a start-up step, a stretch) is what explains a high median.
        #[arg(long)]
        each: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SignalKind {
    /// Chirps at irregular intervals (the latency probe).
    Chirps,
    /// A deterministic speech-like signal.
    Speech,
}

#[derive(Debug, clap::Args)]
struct HostArgs {
    /// Room name put in the invite.
    #[arg(long, default_value = "call")]
    room: String,
    /// UDP port to host on (0: any free one).
    #[arg(long, default_value_t = 4433)]
    port: u16,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    bind: std::net::IpAddr,
    /// Where the relay's certificate is kept (default: the desktop app's, so its invites work).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Do not ask the router to forward the port (people on this network can still join).
    #[arg(long)]
    no_port_mapping: bool,
}

#[derive(Debug, clap::Args)]
struct CallArgs {
    /// natter://host:port[/room]?fp=…[&token=…]. An invite holding a token is a password:
    /// on a shared machine prefer --invite-file or NATTER_INVITE, which `ps` does not show.
    #[arg(env = "NATTER_INVITE", hide_env_values = true)]
    invite: Option<String>,
    /// Read the invite from this file (first line) instead of the command line.
    #[arg(long, value_name = "FILE", conflicts_with = "invite")]
    invite_file: Option<PathBuf>,
    /// Room to join (overrides the invite's room).
    #[arg(long)]
    room: Option<String>,
    /// Display name.
    #[arg(long)]
    name: String,
    /// WAV file used as the microphone (any rate and channels), or `-` for standard input:
    /// raw PCM (signed 16-bit little-endian, mono, 48 kHz) or a WAV stream (PCM or float, any
    /// rate and channels, length fields may say "unknown"), paced as it plays: a burst is
    /// buffered, late audio plays as silence; the call ends when the stream does. Without it,
    /// only listen.
    #[arg(long, conflicts_with_all = ["input_device", "output_device"])]
    input: Option<PathBuf>,
    /// WAV file the speaker is recorded to as it plays (48 kHz mono 16-bit); its sample 0 is
    /// the input's. `-` writes raw PCM (s16le, mono, 48 kHz) to standard output as it plays,
    /// and the summary to standard error.
    #[arg(long, conflicts_with_all = ["input_device", "output_device"])]
    output: Option<PathBuf>,
    /// Use a sound-card microphone ("default" or a name from `natter devices`) instead of files.
    #[arg(long)]
    input_device: Option<String>,
    /// Use a sound-card speaker ("default" or a name from `natter devices`) instead of files.
    #[arg(long)]
    output_device: Option<String>,
    /// Seconds to stay in the call (default: the input's length plus 2 s, or until Ctrl-C or
    /// SIGTERM). At most 24 h; 12 h with --output (a WAV file holds 4 GiB)
    #[arg(long, value_parser = parse_seconds)]
    duration: Option<Duration>,
    /// Seconds to keep trying to rejoin after losing the relay (a restart, a network change)
    /// before the call ends with exit code 3; 0 ends it at once
    #[arg(long, value_parser = parse_seconds_or_zero, default_value = "30")]
    reconnect_for: Duration,
    /// Ask the relay to send our own audio back to us instead of to the room (loopback
    /// latency test: nobody else hears it).
    #[arg(long)]
    echo: bool,
    /// Write the final statistics as JSON.
    #[arg(long)]
    stats_json: Option<PathBuf>,
    /// Write the latency meter's history as CSV (every 100 ms, per participant; time in
    /// seconds since sample 0 of --output), the same columns as the desktop app's export.
    #[arg(long)]
    latency_csv: Option<PathBuf>,
    /// Send this chat message to the room once joined (repeat for several). Messages from
    /// others are printed to standard error as `chat NAME: TEXT`, and kept in --stats-json.
    #[arg(long, value_name = "TEXT")]
    chat: Vec<String>,
    /// Opus frame length in ms: 10 (low-latency mode), 20, 40 or 60. Adapted to the network
    /// (e.g. 40 ms on a lossy one) unless --fixed-frame.
    #[arg(long, default_value_t = 20)]
    frame_ms: u32,
    /// Keep --frame-ms whatever the network does.
    #[arg(long)]
    fixed_frame: bool,
    /// Voice processing: "all", "none", or a comma-separated list of aec, ns, agc, hpf.
    /// Default: all with sound-card devices, none with WAV files.
    #[arg(long, value_parser = parse_processing)]
    processing: Option<natter::apm::VoiceConfig>,
    /// Voice-activated transmission: send only while voice is detected.
    #[arg(long)]
    voice_activation: bool,
}

fn parse_processing(s: &str) -> Result<natter::apm::VoiceConfig, String> {
    use natter::apm::VoiceConfig;
    match s {
        "all" => return Ok(VoiceConfig::ALL),
        "none" => return Ok(VoiceConfig::NONE),
        _ => {}
    }
    let mut v = VoiceConfig::NONE;
    for part in s.split(',') {
        match part.trim() {
            "aec" => v.echo_cancellation = true,
            "ns" => v.noise_suppression = true,
            "agc" => v.gain_control = true,
            "hpf" => v.high_pass = true,
            other => {
                return Err(format!(
                    "unknown stage {other:?} (use all, none, or aec,ns,agc,hpf)"
                ));
            }
        }
    }
    Ok(v)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        return natter::ui::run(natter::ui::LaunchOptions {
            join: cli.invite,
            name: cli.name,
            dir: cli.dir,
            test_signal: cli.test_signal.map(|s| match s {
                TestSignalArg::Silence => natter::ui::TestSignal::Silence,
                TestSignalArg::Speech => natter::ui::TestSignal::Speech,
            }),
        });
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match run(command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("natter: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `natter host`: prints the invite (stdout, `invite: …`) and who can join (stderr), then
/// keeps the relay and the router's port mapping until Ctrl-C or SIGTERM.
async fn host(args: HostArgs) -> anyhow::Result<ExitCode> {
    let stop = Stop::listen()?;
    let data_dir = match args.data_dir {
        Some(dir) => dir,
        None => natter::settings::Dirs::os()
            .context("no home directory for the relay's certificate; pass --data-dir")?
            .data
            .join("relay"),
    };
    let hosted = natter::host::HostedCall::start(natter::host::HostOptions {
        bind: args.bind,
        port: args.port,
        data_dir,
        map_port: !args.no_port_mapping,
    })
    .await?;
    println!("invite: {}", hosted.invite(&args.room));
    eprintln!("{}", hosted.reach_notice());
    stop.wait().await?;
    let natter::host::HostedCall { relay, reach } = hosted;
    // Close the port on the router first (the guard waits for its answer), then the relay.
    tokio::task::spawn_blocking(move || drop(reach)).await?;
    relay.shutdown(Duration::from_secs(2)).await;
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C or (on Unix) SIGTERM, listened for from creation on: a signal that comes before
/// [`Stop::wait`] is called is not lost (and does not kill the process).
struct Stop {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Stop {
    fn listen() -> anyhow::Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            terminate: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot listen for SIGTERM")?,
        })
    }

    async fn wait(mut self) -> anyhow::Result<()> {
        #[cfg(unix)]
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c()
            .await
            .context("cannot listen for Ctrl-C")?;
        Ok(())
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(command: Cmd) -> anyhow::Result<ExitCode> {
    match command {
        Cmd::Call(args) => run_call(*args),
        Cmd::Demo { seconds, frame_ms } => runtime()?.block_on(demo(seconds, frame_ms)),
        Cmd::Host(args) => runtime()?.block_on(host(args)),
        Cmd::Devices => {
            let list = natter::audio::device::list()?;
            let mark = |name: &String, default: &Option<String>| {
                if default.as_ref() == Some(name) {
                    " (default)"
                } else {
                    ""
                }
            };
            // The name to pass first, then what it is.
            println!("input devices:");
            for d in &list.inputs {
                println!("  {d}  ({}){}", list.label(d), mark(d, &list.default_input));
            }
            println!("output devices:");
            for d in &list.outputs {
                println!(
                    "  {d}  ({}){}",
                    list.label(d),
                    mark(d, &list.default_output)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Signal {
            kind,
            out,
            seconds,
            seed,
        } => {
            let samples = match kind {
                SignalKind::Chirps => probe(seconds, seed).samples,
                SignalKind::Speech => measure::speech_like(SAMPLE_RATE, seconds, seed),
            };
            write_wav(&out, &samples)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Latency {
            recording,
            seconds,
            seed,
            offset_ms,
            align,
            max_ms,
            each,
        } => {
            let offset_ms = match align {
                Some(files) => stats_offset_ms(&files[0], &files[1])?,
                None => offset_ms,
            };
            let rec = read_wav(&recording)?;
            let train = probe(seconds, seed);
            let lags = chirp_lags(&train, &rec, offset_ms, max_ms);
            if each {
                for lag in &lags {
                    let at_s = lag.onset as f64 / f64::from(SAMPLE_RATE);
                    println!("chirp at {at_s:.3} s: {:.2} ms", lag.lag_ms);
                }
            }
            let stats = LatencyStats::from_lags(&lags, train.onsets.len()).context(
                "no chirp found in the recording: no audio arrived, or it is not the probe signal",
            )?;
            println!("{stats}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The chirp probe both `signal chirps` and `latency` use, so they agree on onsets.
fn probe(seconds: f32, seed: u64) -> measure::ChirpTrain {
    measure::chirp_train(SAMPLE_RATE, seconds, 500, seed)
}

/// Each chirp of `train` found in `recording`, where the recording started `offset_ms`
/// after the probe.
fn chirp_lags(
    train: &measure::ChirpTrain,
    recording: &[f32],
    offset_ms: f64,
    max_ms: f32,
) -> Vec<measure::Lag> {
    let shift = (offset_ms.abs() * f64::from(SAMPLE_RATE) / 1000.0).round() as usize;
    // Put the recording on the probe's time axis.
    let aligned: Vec<f32> = if offset_ms >= 0.0 {
        std::iter::repeat_n(0.0, shift)
            .chain(recording.iter().copied())
            .collect()
    } else {
        recording.get(shift..).unwrap_or_default().to_vec()
    };
    measure::find_lags(train, &aligned, max_ms, 0.5)
}

fn stats_offset_ms(sender: &std::path::Path, receiver: &std::path::Path) -> anyhow::Result<f64> {
    let start = |p: &std::path::Path| -> anyhow::Result<f64> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))?;
        v["audio_start_unix_us"]
            .as_f64()
            .with_context(|| format!("{} has no audio_start_unix_us", p.display()))
    };
    Ok((start(receiver)? - start(sender)?) / 1000.0)
}

/// A positive, finite number of seconds (`Duration::from_secs_f64` panics on the others).
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 1e9) {
        return Err(format!(
            "{s}: use a positive number of seconds, at most 1e9"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_seconds_or_zero(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(0.0) => Ok(Duration::ZERO),
        _ => parse_seconds(s),
    }
}

/// `natter call`: exit 2 when the invite or the relay is at fault (the user's to fix: README),
/// 1 for a local failure, 3 when the relay ended the call.
fn run_call(args: CallArgs) -> anyhow::Result<ExitCode> {
    match call_with(args) {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("natter: error: {e:#}");
            Ok(ExitCode::from(match e {
                StartError::Connect(_) => 2,
                StartError::Local(_) => 1,
            }))
        }
    }
}

fn call_with(args: CallArgs) -> Result<ExitCode, StartError> {
    // A bad invite is the user's "could not connect" (exit 2, README), not a local failure.
    let text = match (&args.invite, &args.invite_file) {
        (Some(text), _) => text.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| ConnectError::Invalid(format!("invite file {}: {e}", path.display())))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        (None, None) => {
            return Err(ConnectError::Invalid(
                "no invite: give it as an argument, with --invite-file FILE or in NATTER_INVITE"
                    .into(),
            )
            .into());
        }
    };
    let mut invite: Invite = text
        .parse()
        .map_err(|e| ConnectError::Invalid(format!("bad invite: {e}")))?;
    let room = args.room.or_else(|| invite.room.take()).ok_or_else(|| {
        ConnectError::Invalid(
            "no room: put it in the invite (natter://host:port/ROOM?fp=…) or pass --room".into(),
        )
    })?;
    let opts = CallOptions {
        invite,
        room,
        name: args.name,
        input: args.input,
        output: args.output.clone(),
        duration: args.duration,
        reconnect_for: args.reconnect_for,
        echo: args.echo,
        frame_ms: args.frame_ms,
        pin_frame: args.fixed_frame,
        voice: args.processing,
        voice_activation: args.voice_activation,
        latency_csv: args.latency_csv.clone(),
        keep_recording: false,
        chat: args.chat.clone(),
        devices: (args.input_device.is_some() || args.output_device.is_some()).then(|| {
            natter::audio::device::DeviceChoice {
                input: args.input_device.clone(),
                output: args.output_device.clone(),
            }
        }),
    };
    let report = runtime()?.block_on(call::run(opts))?;
    // With the audio on standard output, the summary goes to standard error.
    if args.output.as_deref().is_some_and(call::is_stdio) {
        eprint!("{}", report.summary());
    } else {
        print!("{}", report.summary());
    }
    if let Some(path) = &args.stats_json {
        call::write_stats_json(&report, path)?;
    }
    if let Some(reason) = &report.ended_by_relay {
        if report.relay_lost {
            eprintln!("natter: lost the connection to the relay: {reason}");
        } else {
            eprintln!("natter: call ended by the relay: {reason}");
        }
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// A relay on loopback, a listener and a speaker sending the chirp probe; prints what the
/// listener measured.
async fn demo(seconds: f32, frame_ms: u32) -> anyhow::Result<ExitCode> {
    let identity = natter_relay::Identity::generate()?;
    let relay = natter_relay::start(natter_relay::RelayConfig::new(
        vec!["127.0.0.1:0".parse()?],
        identity,
    ))
    .await?;
    let mut invite = relay.invite();
    println!("relay listening, invite: {invite}");
    invite.room = None;
    let dir = std::env::temp_dir().join(format!("natter-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let input = dir.join("probe.wav");
    let train = probe(seconds, 1);
    write_wav(&input, &train.samples)?;
    let call_secs = f64::from(seconds) + 1.5;
    let options = |name: &str, input: Option<PathBuf>| CallOptions {
        invite: invite.clone(),
        room: "demo".into(),
        name: name.into(),
        input,
        output: None,
        duration: Some(Duration::from_secs_f64(call_secs)),
        reconnect_for: Duration::ZERO,
        echo: false,
        frame_ms,
        pin_frame: false,
        devices: None,
        voice: None,
        voice_activation: false,
        latency_csv: None,
        keep_recording: true,
        chat: Vec::new(),
    };
    println!(
        "bob listens; alice sends {seconds} s of chirps ({frame_ms} ms Opus frames) through the relay…"
    );
    let listener = tokio::spawn(call::run(options("bob", None)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let speaker = call::run(options("alice", Some(input))).await?;
    let heard = listener.await??;
    let _ = std::fs::remove_dir_all(&dir);
    relay.shutdown(Duration::from_secs(1)).await;
    print!("{}{}", speaker.summary(), heard.summary());
    let offset_ms =
        (heard.audio_start_unix_us as f64 - speaker.audio_start_unix_us as f64) / 1000.0;
    let lags = chirp_lags(&train, &heard.recording, offset_ms, 1000.0);
    match LatencyStats::from_lags(&lags, train.onsets.len()) {
        Some(stats) => {
            println!("{stats}");
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("natter: bob heard none of alice's chirps");
            Ok(ExitCode::FAILURE)
        }
    }
}
