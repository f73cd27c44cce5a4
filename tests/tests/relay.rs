//! The relay as a self-hoster runs it: access tokens, limits, metrics over HTTP, idle
//! participants, configuration errors.

use natter_e2e::{
    Call, CallStats, RelayProcess, TempDir, http_get, loadgen, metric, natter_bin, relay_bin,
    signal_file,
};
use std::process::Command;
use std::time::{Duration, Instant};

const SECRET: &str = "0123456789abcdef-test-secret";

fn mint(relay: &RelayProcess, room: &str, ttl: &str, secret: &str) -> String {
    let port = relay
        .invite()
        .rsplit_once(':')
        .unwrap()
        .1
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let out = Command::new(relay_bin())
        .args([
            "token", "--room", room, "--ttl", ttl, "--secret", secret, "--invite",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(relay.data_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let invite = text.lines().nth(1).expect("token then invite").to_string();
    assert!(
        invite.starts_with("natter://") && invite.contains("token=v1."),
        "{invite}"
    );
    invite
}

fn join(invite: &str, room: Option<&str>) -> natter_e2e::Finished {
    let mut call = Call::new(invite, room.unwrap_or("r"), "guest").duration(0.5);
    if room.is_none() {
        // Use the invite's own room (and token).
        call = Call::new(invite, "r", "guest").duration(0.5);
    }
    call.spawn().wait(Duration::from_secs(10))
}

/// `natter-relay token` refuses, with one clear line and no panic, what could never work: a
/// lifetime that overflows the clock, a bound name the relay would refuse at Join.
#[test]
fn token_minting_refuses_what_could_never_work() {
    let dir = TempDir::new("mint");
    for (args, expected) in [
        (
            ["--ttl", "18446744073709551615s", "--name", "Alice"],
            "ttl:",
        ),
        (["--ttl", "1h", "--name", "bell\u{7}"], "name:"),
        (["--ttl", "1h", "--name", "   "], "name:"),
    ] {
        let out = Command::new(relay_bin())
            .args(["token", "--room", "r", "--secret", SECRET, "--data-dir"])
            .arg(dir.join("data"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("natter-relay: error: ") && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(out.stdout.is_empty(), "no token printed for {args:?}");
    }
}

/// An invite with a token is a password, and a command line is public (`ps`): `natter call`
/// takes it from a file or from NATTER_INVITE too, and joins with it the same way.
#[test]
fn the_invite_can_stay_off_the_command_line() {
    let relay = RelayProcess::start_with(&["--access", "token", "--secret", SECRET]);
    let invite = mint(&relay, "r", "1h", SECRET);
    let dir = TempDir::new("invite-file");
    let file = dir.join("invite.txt");
    std::fs::write(&file, format!("{invite}\n")).unwrap();
    let args = ["call", "--name", "guest", "--duration", "0.5"];
    let by_file = Command::new(natter_bin())
        .args(args)
        .arg("--invite-file")
        .arg(&file)
        .output()
        .unwrap();
    let by_env = Command::new(natter_bin())
        .args(args)
        .env("NATTER_INVITE", &invite)
        .output()
        .unwrap();
    for (how, out) in [("file", by_file), ("environment", by_env)] {
        assert!(
            out.status.success(),
            "invite from the {how}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let none = Command::new(natter_bin())
        .args(args)
        .env_remove("NATTER_INVITE")
        .output()
        .unwrap();
    assert_eq!(none.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no invite"));
}

/// A bearer token admits one connection at a time, the newest: when a second client joins
/// with Bob's token, Bob's call is ended by the relay with TokenInUse, and he is told why.
#[test]
fn a_token_admits_one_connection_at_a_time() {
    let relay = RelayProcess::start_with(&["--access", "token", "--secret", SECRET]);
    let invite = mint(&relay, "r", "1h", SECRET);
    let bob = Call::new(&invite, "r", "bob").duration(10.0).spawn();
    relay.wait_for_join("r", "bob");
    let thief = join(&invite, None);
    assert_eq!(thief.code(), Some(0), "the newest holder gets in: {thief}");
    let bob = bob.wait(Duration::from_secs(10));
    assert_eq!(bob.code(), Some(3), "{bob}");
    assert!(
        bob.stderr.contains("call ended by the relay")
            && bob
                .stderr
                .contains("the access token was used to join from somewhere else"),
        "{bob}"
    );
}

/// Tokens: accepted for their room; missing, forged, expired and wrong-room tokens are refused
/// with distinct codes that the client says in words.
#[test]
fn tokens_are_checked() {
    let relay = RelayProcess::start_with(&["--access", "token", "--secret", SECRET]);
    let good = mint(&relay, "r", "1h", SECRET);
    let ok = join(&good, None);
    assert_eq!(ok.code(), Some(0), "valid token: {ok}");

    let none = join(relay.invite(), Some("r"));
    assert_eq!(none.code(), Some(2), "{none}");
    assert!(none.stderr.contains("needs an access token"), "{none}");

    let forged = mint(&relay, "r", "1h", "another-secret-of-16+bytes");
    let forged = join(&forged, None);
    assert!(
        forged.stderr.contains("not valid for this relay"),
        "{forged}"
    );

    let other_room = mint(&relay, "elsewhere", "1h", SECRET).replace("/elsewhere?", "/r?");
    let wrong = join(&other_room, None);
    assert!(wrong.stderr.contains("for another room"), "{wrong}");

    let short = mint(&relay, "r", "1s", SECRET);
    std::thread::sleep(Duration::from_millis(2_100));
    let expired = join(&short, None);
    assert!(expired.stderr.contains("expired"), "{expired}");
}

/// Metrics over real HTTP: counters move with a call; /healthz answers; an idle (stopped)
/// participant times out and leaves the room.
#[test]
fn metrics_and_idle_timeout() {
    let dir = TempDir::new("metrics");
    let relay = RelayProcess::start_with(&["--metrics", "127.0.0.1:0", "--idle-timeout", "3"]);
    let url = relay.metrics_url().to_string();
    let (status, body) = http_get(&url.replace("/metrics", "/healthz"));
    assert_eq!((status, body.trim()), (200, "ok"));
    assert_eq!(http_get(&url.replace("/metrics", "/nope")).0, 404);

    signal_file("speech", &dir.join("a.wav"), 2.0, 1);
    let bob = Call::new(relay.invite(), "m", "bob")
        .duration(12.0)
        .stats_json(&dir.join("bob.json"))
        .spawn();
    relay.wait_for_join("m", "bob");
    let alice = Call::new(relay.invite(), "m", "alice")
        .input(&dir.join("a.wav"))
        .duration(30.0)
        .spawn();
    relay.wait_for_join("m", "alice");
    std::thread::sleep(Duration::from_millis(2_500));
    let (status, text) = http_get(&url);
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "natter_participants"), Some(2.0), "{text}");
    assert_eq!(metric(&text, "natter_rooms"), Some(1.0));
    let forwarded = metric(&text, "natter_datagrams_out_total").unwrap();
    assert!(forwarded > 50.0, "alice's audio was forwarded: {text}");
    let delayed = metric(&text, "natter_forward_delay_seconds_count").unwrap();
    assert_eq!(
        delayed, forwarded,
        "every forwarded datagram is in the delay histogram"
    );
    assert!(
        metric(&text, "natter_forward_delay_seconds_bucket{le=\"0.002\"}").unwrap()
            >= 0.95 * forwarded,
        "relay-added delay under 2 ms: {text}"
    );

    // Freeze alice (no packets, not even keep-alives): the relay drops her after the idle
    // timeout and the room is down to bob.
    alice.signal(libc::SIGSTOP);
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (_, text) = http_get(&url);
        if metric(&text, "natter_participants") == Some(1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "idle participant not removed: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    alice.signal(libc::SIGKILL);
    bob.finish();
    let b = CallStats::read(&dir.join("bob.json"));
    assert!(
        b.peers.iter().any(|p| p.name.as_deref() == Some("alice")),
        "{b:#?}"
    );
}

/// Bad configuration exits non-zero with a line naming the key.
#[test]
fn config_errors_name_the_key() {
    let dir = TempDir::new("config");
    let run = |args: &[&str]| {
        let out = Command::new(relay_bin()).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "listen = [\"127.0.0.1:0\"]\n[limits]\nmax-room-sise = 3\n",
    )
    .unwrap();
    let (code, err) = run(&["--config", bad.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("max-room-sise") && err.contains("bad.toml"),
        "{err}"
    );

    std::fs::write(&bad, "[limits]\nmax-room-size = \"lots\"\n").unwrap();
    let (_, err) = run(&["--config", bad.to_str().unwrap()]);
    assert!(err.contains("max-room-size"), "{err}");

    let (code, err) = run(&["--listen", "127.0.0.1:0", "--access", "token"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("access.secret"), "{err}");
    let (_, err) = run(&[
        "--listen",
        "127.0.0.1:0",
        "--access",
        "token",
        "--secret",
        "short",
    ]);
    assert!(err.contains("16"), "{err}");
    let (_, err) = run(&["--listen", "127.0.0.1:0", "--packets-per-second", "5"]);
    assert!(err.contains("packets-per-second"), "{err}");
    let (_, err) = run(&["--listen", "127.0.0.1:0", "--congestion", "reno"]);
    assert!(err.contains("congestion"), "{err}");
    let (_, err) = run(&["token", "--room", "r"]);
    assert!(err.contains("secret"), "{err}");
    let help = Command::new(relay_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for option in [
        "--config",
        "--metrics",
        "--access",
        "--secret",
        "--max-room-size",
        "--packets-per-second",
        "--idle-timeout",
        "--forward-loudest",
        "--congestion",
        "--retry-above",
    ] {
        assert!(help.contains(option), "--help documents {option}");
    }
}

/// A setting of the removed quinn data plane (`data-plane`) still starts the relay, which says
/// it is ignored: a config written for it keeps working.
#[test]
fn retired_data_plane_settings_start_with_a_warning() {
    let relay = RelayProcess::start_with(&["--data-plane", "quinn"]);
    let warned = relay.wait_for_log(Duration::from_secs(10), |v| {
        v["level"] == "WARN"
            && v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("data-plane") && m.contains("ignored"))
    });
    assert!(warned.is_some(), "no warning: {}", relay.log_text());
}

/// `--threads 2`: two loops on one port. The load generator's 20 participants (each its own
/// port, so the kernel spreads them over both loops' sockets, as the metrics show) in rooms of
/// 5 hear each other as with one loop.
#[test]
fn two_loops_carry_rooms_across_them() {
    let relay = RelayProcess::start_with(&["--threads", "2", "--metrics", "127.0.0.1:0"]);
    let report = loadgen(
        relay.invite(),
        &[
            "--participants",
            "20",
            "--room-size",
            "5",
            "--per-endpoint",
            "1",
            "--duration",
            "2",
        ],
        Duration::from_secs(30),
    );
    let line = &report.line;
    assert_eq!(report.field("streams"), 80.0, "{line}");
    assert!(report.field("loss_pct") < 1.0, "{line}");
    assert!(report.field("p50_ms") < 50.0, "{line}");
    let (_, text) = http_get(relay.metrics_url());
    for i in 0..2 {
        let read = metric(
            &text,
            &format!("natter_loop_datagrams_total{{loop=\"{i}\"}}"),
        );
        assert!(read.is_some_and(|n| n > 0.0), "loop {i}: {text}");
    }
}

/// The load generator runs against a real relay and reports one well-formed summary line.
#[test]
fn loadgen_smoke() {
    let relay = RelayProcess::start();
    let report = loadgen(
        relay.invite(),
        &[
            "--participants",
            "10",
            "--room-size",
            "5",
            "--duration",
            "1",
        ],
        Duration::from_secs(30),
    );
    assert_two_rooms_of_five_heard_each_other(&report, "");
}

/// A smoke run's summary: 10 participants in 2 rooms of 5 (40 streams), heard quickly and
/// nearly all of it.
#[track_caller]
fn assert_two_rooms_of_five_heard_each_other(report: &natter_e2e::LoadReport, run: &str) {
    let line = &report.line;
    assert_eq!(
        (
            report.field("participants"),
            report.field("rooms"),
            report.field("streams")
        ),
        (10.0, 2.0, 40.0),
        "{run}{line}"
    );
    assert!(report.field("p50_ms") < 50.0, "{run}{line}");
    assert!(report.field("loss_pct") < 10.0, "{run}{line}");
}

/// `--batched`: the load generator's participants driven from one loop through quinn-proto
/// (several client sockets, as `--per-endpoint 4` makes three) join, hear each other and
/// report the same summary line, with its own CPU per received datagram; likewise with each
/// room's members spread over the frame (`--interleave`).
#[test]
fn loadgen_batched_smoke() {
    let relay = RelayProcess::start();
    for phases in [&[][..], &["--interleave"][..]] {
        let mut args = vec![
            "--batched",
            "--participants",
            "10",
            "--room-size",
            "5",
            "--per-endpoint",
            "4",
            "--duration",
            "1",
        ];
        args.extend_from_slice(phases);
        let report = loadgen(relay.invite(), &args, Duration::from_secs(30));
        let run = format!("{phases:?}: ");
        assert_two_rooms_of_five_heard_each_other(&report, &run);
        assert!(
            report.field("loadgen_us_per_datagram") > 0.0,
            "{run}{}",
            report.line
        );
    }
}

/// `--talkers 1`: only the first member of each room sends and the other four listen; the
/// summary counts the streams the relay forwards (one per listener: 8 in two rooms of five)
/// and the loss against what those talkers sent.
#[test]
fn loadgen_with_one_talker_per_room() {
    let relay = RelayProcess::start();
    let args = [
        "--batched",
        "--participants",
        "10",
        "--room-size",
        "5",
        "--talkers",
        "1",
        "--duration",
        "1",
    ];
    let report = loadgen(relay.invite(), &args, Duration::from_secs(30));
    let line = &report.line;
    assert_eq!(
        (report.field("rooms"), report.field("streams")),
        (2.0, 8.0),
        "{line}"
    );
    assert!(report.field("p50_ms") < 50.0, "{line}");
    assert!(report.field("loss_pct") < 10.0, "{line}");
}

/// The benchmark's baseline: the load generator drives `natter-udp-fanout` over plain UDP with
/// the same participants and rooms, and everything sent arrives, with tokio tasks and with
/// the batched loop (`--batched`).
#[test]
fn loadgen_drives_the_udp_baseline() {
    use std::io::BufRead;
    for driver in [&[][..], &["--batched"][..]] {
        let mut fanout = Command::new(natter_e2e::binary("natter-udp-fanout"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("natter-udp-fanout starts");
        let mut line = String::new();
        std::io::BufReader::new(fanout.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("its address");
        let addr = line
            .trim()
            .strip_prefix("listening: ")
            .expect("listening: ADDR");
        let mut args = vec![
            "--udp",
            "--participants",
            "10",
            "--room-size",
            "5",
            "--per-endpoint",
            "4",
            "--duration",
            "1",
        ];
        args.extend_from_slice(driver);
        let report = loadgen(addr, &args, Duration::from_secs(30));
        let _ = fanout.kill();
        let _ = fanout.wait();
        let line = &report.line;
        assert_eq!(report.field("streams"), 40.0, "{driver:?}: {line}");
        // Loopback without QUIC loses nothing (the bound leaves room for a loaded machine's
        // late receiver at the end of the run).
        assert!(report.field("loss_pct") < 5.0, "{driver:?}: {line}");
        assert!(report.field("p50_ms") < 50.0, "{driver:?}: {line}");
    }
}
