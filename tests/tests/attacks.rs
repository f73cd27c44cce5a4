//! One stranger against a real relay process (docs/SECURITY.md): each attack bounded in count
//! and time, on loopback, while a real call runs. The relay's memory stays bounded, the
//! attacker is closed or throttled as documented, and the call loses nothing.

use natter::transport::connect;
use natter_e2e::{Call, CallStats, RelayProcess, TempDir, http_get, signal_file};
use natter_proto::control::{ErrorCode, FrameDecoder, Message};
use natter_proto::invite::Invite;
use quinn::{Connection, ConnectionError, RecvStream, SendStream};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// The relay's metrics server outlives file-descriptor exhaustion: `accept()` fails while no
/// descriptor is free, the relay logs it and retries, and `/healthz` answers again as soon as
/// descriptors come back. (It used to stop serving for good at the first failed accept.)
#[test]
fn metrics_survive_file_descriptor_exhaustion() {
    let relay = RelayProcess::start_with(&["--metrics", "127.0.0.1:0"]);
    let url = relay.metrics_url().to_string();
    let addr = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .expect("metrics address")
        .to_string();
    let open_fds = std::fs::read_dir(format!("/proc/{}/fd", relay.pid()))
        .expect("the relay's fds")
        .count() as u64;
    // A few descriptors to spare, then twenty idle connections (the server waits 5 s for
    // their request heads): accept() runs out of descriptors.
    let limit = libc::rlimit {
        rlim_cur: open_fds + 4,
        rlim_max: open_fds + 4,
    };
    let pid = relay.pid() as libc::pid_t;
    // SAFETY: prlimit with a valid pointer to a local rlimit and a null old-limit pointer.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let idle: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(&addr).expect("the kernel completes the TCP handshake"))
        .collect();
    let failed = relay.wait_for_log(Duration::from_secs(5), |v| {
        v["fields"]["message"] == "metrics: accept failed; still serving"
    });
    assert!(
        failed.is_some(),
        "no accept error logged; log:\n{}",
        relay.log_text()
    );
    drop(idle);
    // The handlers see the closed connections, give their descriptors back, and the backlog
    // drains; /healthz is served again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = std::panic::catch_unwind(|| http_get(&format!("http://{addr}/healthz")));
        match health {
            Ok((200, body)) if body == "ok\n" => break,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("/healthz did not come back: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Every attack of issue #10 against one relay while a call runs
// ---------------------------------------------------------------------------------------------

/// How much the relay's resident memory may grow over its idle size during any one attack.
/// Each attack here cost the unhardened relay 20 to 130 MB (docs/SECURITY.md has the numbers);
/// a hardened relay holds a few hundred KB per connection at most.
const RSS_GROWTH_BOUND_KIB: u64 = 24 * 1024;

/// The relay's user + system CPU time so far, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("relay stat");
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Peak RSS of `pid` while `work` runs, sampled every 50 ms.
fn peak_rss_during<T>(relay: &RelayProcess, work: impl FnOnce() -> T) -> (T, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let pid = relay.pid();
        std::thread::spawn(move || {
            let mut peak = 0;
            while !stop.load(Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak.max(rss_kib(pid))
        })
    };
    let out = work();
    stop.store(true, Relaxed);
    (out, sampler.join().expect("sampler"))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn hello() -> Message {
    Message::Hello {
        versions: vec![natter_proto::PROTOCOL_VERSION],
        software: "natter-e2e attacker".into(),
    }
}

fn join_msg(room: &str, name: &str) -> Message {
    Message::Join {
        room: room.into(),
        name: name.into(),
        token: None,
        flags: 0,
    }
}

fn frames(msgs: impl IntoIterator<Item = Message>) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        m.encode(&mut out);
    }
    out
}

/// A connection whose receive windows are `window` bytes (a client that stops reading then
/// stops granting credit at once), or the real client's settings.
async fn attacker(invite: &Invite, window: Option<u32>) -> Option<(quinn::Endpoint, Connection)> {
    let Some(window) = window else {
        return connect(invite).await.ok();
    };
    let mut config = natter_loadgen::client_config(invite.fingerprint.expect("pinned")).ok()?;
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(window.into());
    transport.receive_window(window.into());
    config.transport_config(Arc::new(transport));
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().ok()?).ok()?;
    endpoint.set_default_client_config(config);
    let conn = endpoint
        .connect(
            SocketAddr::from(([127, 0, 0, 1], invite.port)),
            "natter-relay",
        )
        .ok()?
        .await
        .ok()?;
    Some((endpoint, conn))
}

/// Reads until a Welcome (or nothing for 5 s).
async fn welcomed(recv: &mut RecvStream) -> bool {
    let mut decoder = FrameDecoder::new();
    let mut buf = [0u8; 2048];
    loop {
        while let Some(m) = decoder.next_message() {
            if matches!(m, Ok(Message::Welcome { .. })) {
                return true;
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), recv.read(&mut buf)).await {
            Ok(Ok(Some(n))) => decoder.push(&buf[..n]),
            _ => return false,
        }
    }
}

/// Writes `chunk` again and again for `secs`; returns the bytes the relay took. A throttled
/// writer is held back by flow control, so it takes little.
async fn flood_for(send: &mut SendStream, chunk: &[u8], secs: f64) -> u64 {
    let until = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
    let mut taken = 0u64;
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout_at(until, send.write_all(chunk)).await {
            Ok(Ok(())) => taken += chunk.len() as u64,
            _ => break,
        }
    }
    taken
}

/// A connection that says `opening` (waiting for Welcome if it holds a Join), then writes
/// `chunk` again and again for 3 s. Documented outcome: the relay takes little of it
/// (throttled by flow control), well under 256 KiB.
async fn flood_attack(
    invite: &Invite,
    opening: &[Message],
    chunk: &[u8],
    what: &str,
) -> (String, bool) {
    let Some((_ep, conn)) = attacker(invite, None).await else {
        return ("could not connect".into(), false);
    };
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    send.write_all(&frames(opening.iter().cloned()))
        .await
        .expect("opening messages");
    if opening.iter().any(|m| matches!(m, Message::Join { .. })) && !welcomed(&mut recv).await {
        return ("not welcomed".into(), false);
    }
    let taken = flood_for(&mut send, chunk, 3.0).await;
    conn.close(0u32.into(), b"");
    (
        format!("relay took {taken} bytes of {what} in 3 s"),
        taken < 256 * 1024,
    )
}

/// Sends a Ping every `every` on `send` until the relay closes `conn` or `within` passes;
/// returns the relay's close code.
async fn ping_until_closed(
    conn: &Connection,
    send: &mut SendStream,
    every: Duration,
    within: Duration,
) -> Option<u64> {
    let pinger = async {
        for n in 0.. {
            let ping = frames([Message::Ping {
                nonce: n,
                sent_micros: 0,
            }]);
            if send.write_all(&ping).await.is_err() {
                break;
            }
            tokio::time::sleep(every).await;
        }
    };
    tokio::select! {
        code = close_code(conn, within) => code,
        () = pinger => close_code(conn, Duration::from_secs(1)).await,
    }
}

/// The application close code of `conn`, waiting at most `within`.
async fn close_code(conn: &Connection, within: Duration) -> Option<u64> {
    match tokio::time::timeout(within, conn.closed()).await {
        Ok(ConnectionError::ApplicationClosed(c)) => Some(c.error_code.into_inner()),
        _ => None,
    }
}

/// What one attack did and cost the relay.
#[derive(Debug)]
struct Attack {
    name: &'static str,
    /// Peak RSS growth over the relay's size before the attack (KiB).
    rss_growth_kib: u64,
    /// Relay CPU over the attack, % of one core.
    cpu_pct: f64,
    /// What the relay did to the attacker, and whether that is what docs/SECURITY.md promises.
    outcome: String,
    as_documented: bool,
}

/// Every attack of issue #10, one after the other, each bounded in count and time, against a
/// relay process (default limits, but `--max-connections 30` and a 2 s join timeout so those
/// attacks fit in seconds) while Alice talks to Bob. Asserts for each: the relay's RSS stays
/// within [`RSS_GROWTH_BOUND_KIB`] of its size before the attack, the attacker is throttled
/// or closed with the documented code, and Bob hears all of Alice.
#[test]
fn attacks_leave_the_relay_bounded_and_the_call_whole() {
    let dir = TempDir::new("attacks");
    // The join timeout through the environment: a relay that predates the setting ignores it
    // (NATTER_E2E_RELAY_BIN runs this test against other builds, see docs/SECURITY.md).
    let relay = RelayProcess::start_with_env(
        &["--max-connections", "30"],
        &[("NATTER_RELAY_JOIN_TIMEOUT", "2")],
    );
    let invite: Invite = relay.invite().parse().expect("invite");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    const CALL_SECS: f64 = 45.0;
    signal_file(
        "speech",
        &dir.join("alice.wav"),
        (CALL_SECS - 2.0) as f32,
        7,
    );
    let bob = Call::new(relay.invite(), "lobby", "bob")
        .stats_json(&dir.join("bob.json"))
        .duration(CALL_SECS)
        .spawn();
    relay.wait_for_join("lobby", "bob");
    let alice = Call::new(relay.invite(), "lobby", "alice")
        .input(&dir.join("alice.wav"))
        .stats_json(&dir.join("alice.json"))
        .duration(CALL_SECS)
        .spawn();
    relay.wait_for_join("lobby", "alice");
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let idle_rss = relay.rss_kib();

    // NATTER_E2E_ATTACKS=1,3 runs only those attacks (numbered as below): memory a relay
    // does not give back would otherwise hide what the next attack costs it.
    let only: Option<Vec<usize>> = std::env::var("NATTER_E2E_ATTACKS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let mut attacks = Vec::new();
    let mut number = 0;
    let mut run = |name: &'static str, attack: &dyn Fn() -> (String, bool)| {
        number += 1;
        if only.as_ref().is_some_and(|only| !only.contains(&number)) {
            return;
        }
        let before = relay.rss_kib();
        let cpu_before = cpu_seconds(relay.pid());
        let t = Instant::now();
        let ((outcome, as_documented), peak) = peak_rss_during(&relay, attack);
        let cpu_pct = 100.0 * (cpu_seconds(relay.pid()) - cpu_before) / t.elapsed().as_secs_f64();
        let a = Attack {
            name,
            rss_growth_kib: peak.saturating_sub(before),
            cpu_pct,
            outcome,
            as_documented,
        };
        println!("{a:?}");
        attacks.push(a);
        // Let what the attack left behind go before the next one.
        std::thread::sleep(Duration::from_millis(500));
    };

    // 1. Pings (allowed before Join: no room, no token needed) written as fast as possible
    // and never read. The relay reads them at its control rate, so the attacker is held back
    // by its own flow control.
    run("ping flood, replies unread", &|| {
        let pings = frames((0..1_000).map(|n| Message::Ping {
            nonce: n,
            sent_micros: 0,
        }));
        rt.block_on(flood_attack(&invite, &[hello()], &pings, "pings"))
    });

    // 2. A member of the room toggles mute as fast as it can: at most the control rate of
    // it, and only changes, reach Bob and Alice.
    run("SetMute storm from a member", &|| {
        let mutes = frames((0..1_000).map(|i| Message::SetMute { muted: i % 2 == 0 }));
        let opening = [hello(), join_msg("lobby", "mallory")];
        rt.block_on(flood_attack(&invite, &opening, &mutes, "SetMute"))
    });

    // 3. A member that stops reading (1 KiB windows) and keeps sending Pings: closed with
    // SlowReader once 64 replies wait for it.
    run("member that never reads", &|| {
        rt.block_on(async {
            let Some((_ep, conn)) = attacker(&invite, Some(1024)).await else {
                return ("could not connect".into(), false);
            };
            let (mut send, mut recv) = conn.open_bi().await.expect("stream");
            send.write_all(&frames([hello(), join_msg("lobby", "sloth")]))
                .await
                .expect("join");
            if !welcomed(&mut recv).await {
                return ("not welcomed".into(), false);
            }
            let every = Duration::from_millis(20);
            let code = ping_until_closed(&conn, &mut send, every, Duration::from_secs(15)).await;
            conn.close(0u32.into(), b"");
            let slow = u64::from(ErrorCode::SlowReader.to_u16());
            (format!("closed with {code:?}"), code == Some(slow))
        })
    });

    // 4. Sixty handshakes at once against --max-connections 30 (Alice and Bob hold two).
    run("60 simultaneous handshakes, limit 30", &|| {
        rt.block_on(async {
            let tries = (0..60).map(|i| {
                let invite = invite.clone();
                tokio::spawn(async move {
                    let (ep, conn) = attacker(&invite, None).await?;
                    let (mut send, mut recv) = conn.open_bi().await.ok()?;
                    send.write_all(&frames([hello(), join_msg("crowd", &format!("c{i}"))]))
                        .await
                        .ok()?;
                    welcomed(&mut recv).await.then_some((ep, conn, send, recv))
                })
            });
            let mut sessions = Vec::new();
            for t in tries.collect::<Vec<_>>() {
                if let Ok(Some(s)) = t.await {
                    sessions.push(s);
                }
            }
            let n = sessions.len();
            for (_, conn, ..) in &sessions {
                conn.close(0u32.into(), b"");
            }
            (format!("{n} of 60 welcomed"), (1..=28).contains(&n))
        })
    });

    // 5. Extra streams the relay would never read, 1 MB each, from ten connections.
    run("ten connections with three extra 1 MB streams", &|| {
        rt.block_on(async {
            let mut conns = Vec::new();
            let mut opened = 0;
            for _ in 0..10 {
                let Some((ep, conn)) = attacker(&invite, None).await else {
                    continue;
                };
                let (mut control, _recv) = conn.open_bi().await.expect("control stream");
                control.write_all(&frames([hello()])).await.expect("hello");
                for _ in 0..3 {
                    let open = tokio::time::timeout(Duration::from_millis(200), conn.open_bi());
                    if let Ok(Ok((mut extra, _))) = open.await {
                        opened += 1;
                        let junk = vec![0x55u8; 1 << 20];
                        let _ = tokio::time::timeout(
                            Duration::from_millis(200),
                            extra.write_all(&junk),
                        )
                        .await;
                    }
                }
                conns.push((ep, conn, control));
            }
            for (_, conn, _) in &conns {
                conn.close(0u32.into(), b"");
            }
            (format!("{opened} extra streams opened"), opened == 0)
        })
    });

    // 6. Hello, then Pings but never a Join: closed at the join deadline (2 s here).
    run("five connections that never join", &|| {
        rt.block_on(async {
            let waits = (0..5).map(|_| {
                let invite = invite.clone();
                tokio::spawn(async move {
                    let (_ep, conn) = attacker(&invite, None).await?;
                    let (mut send, _recv) = conn.open_bi().await.ok()?;
                    send.write_all(&frames([hello()])).await.ok()?;
                    let every = Duration::from_millis(300);
                    ping_until_closed(&conn, &mut send, every, Duration::from_secs(6)).await
                })
            });
            let mut codes = Vec::new();
            for w in waits.collect::<Vec<_>>() {
                codes.push(w.await.ok().flatten());
            }
            let timeout = u64::from(ErrorCode::Timeout.to_u16());
            let ok = codes.iter().all(|c| *c == Some(timeout));
            (format!("closed with {codes:?}"), ok)
        })
    });

    // 7. Tiny unknown-type frames (skipped by design) as fast as possible from a member of
    // a room: they cost the relay its control rate's worth of work, not a core.
    run("unknown-frame flood from a member", &|| {
        // Length 1, type 0x30 (unknown).
        let unknown = [0x01u8, 0x30].repeat(8 * 1024);
        let opening = [hello(), join_msg("elsewhere", "noisy")];
        rt.block_on(flood_attack(&invite, &opening, &unknown, "unknown frames"))
    });

    let attacks_took = started.elapsed();
    let bob_done = bob.finish();
    alice.finish();
    let a = CallStats::read(&dir.join("alice.json"));
    let b = CallStats::read(&dir.join("bob.json"));
    println!("relay idle RSS {idle_rss} KiB; attacks took {attacks_took:?}");
    for at in &attacks {
        println!(
            "{:<48} RSS +{:>7} KiB  CPU {:>5.1} %  {}",
            at.name, at.rss_growth_kib, at.cpu_pct, at.outcome
        );
    }
    assert!(
        attacks_took.as_secs_f64() < CALL_SECS - 3.0,
        "the attacks outlasted the call ({attacks_took:?})"
    );
    for at in &attacks {
        assert!(
            at.rss_growth_kib <= RSS_GROWTH_BOUND_KIB,
            "{}: RSS grew {} KiB (bound {RSS_GROWTH_BOUND_KIB})",
            at.name,
            at.rss_growth_kib
        );
        assert!(at.as_documented, "{}: {}", at.name, at.outcome);
        assert!(
            at.cpu_pct < 60.0,
            "{}: relay CPU {:.0} %",
            at.name,
            at.cpu_pct
        );
    }
    // Bob heard all of Alice, and neither call was ended.
    assert!(
        b.ended_by_relay.is_none() && a.ended_by_relay.is_none(),
        "{b:#?}"
    );
    let from_alice = b.peer(a.ssrc);
    assert_eq!(from_alice.packets_lost, 0, "{from_alice:#?}\n{bob_done}");
    assert!(
        from_alice.packets_received as f64 >= a.packets_sent as f64 * 0.99,
        "{from_alice:#?} (alice sent {})",
        a.packets_sent
    );
}

/// A relay at its connection limit refuses the handshake itself (no slot, no cryptography);
/// `natter call` says so in one line and exits 2, like any refusal.
#[test]
fn a_full_relay_refuses_with_a_clear_message() {
    let dir = TempDir::new("full");
    let relay = RelayProcess::start_with(&["--max-connections", "1"]);
    let bob = Call::new(relay.invite(), "lobby", "bob")
        .stats_json(&dir.join("bob.json"))
        .duration(4.0)
        .spawn();
    relay.wait_for_join("lobby", "bob");
    let refused = natter_e2e::natter(
        [
            "call",
            relay.invite(),
            "--room",
            "lobby",
            "--name",
            "carol",
            "--duration",
            "1",
        ],
        Duration::from_secs(15),
    );
    assert_eq!(refused.code(), Some(2), "{refused}");
    assert!(
        refused.stderr.contains("refused the connection"),
        "{refused}"
    );
    bob.finish();
}
