//! What goes wrong: bad invites, refused joins, hostile clients, relay shutdown.

use bytes::Bytes;
use natter::transport::connect;
use natter_e2e::{
    Call, CallStats, RelayProcess, Rng, TempDir, find_signal_windows, http_get, loadgen, metric,
    natter, read_wav, signal_file,
};
use natter_proto::control::{ErrorCode, FrameDecoder, Message, Participant};
use natter_proto::invite::Invite;
use natter_proto::media::write_rtp;
use natter_proto::rtp::RtpHeader;
use quinn::{Connection, ConnectionError, RecvStream, SendStream};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Exit code of `natter call` for connect errors and refusals.
const EXIT_CONNECT: i32 = 2;
/// Exit code of `natter call` when the relay ended the call.
const EXIT_ENDED_BY_RELAY: i32 = 3;

/// A tokio runtime for the raw clients a test drives itself.
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A one-second listening `natter call` (most of these fail before any audio flows).
fn short_call(invite: &str, room: &str) -> natter_e2e::Finished {
    natter(
        [
            "call",
            invite,
            "--room",
            room,
            "--name",
            "mallory",
            "--duration",
            "1",
        ],
        Duration::from_secs(15),
    )
}

/// The one line a failing `natter call` prints.
#[track_caller]
fn error_line(done: &natter_e2e::Finished) -> &str {
    let lines: Vec<&str> = done.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected exactly one stderr line:\n{done}");
    assert!(
        lines[0].starts_with("natter: error: "),
        "unexpected stderr:\n{done}"
    );
    assert!(done.stdout.is_empty(), "nothing on stdout:\n{done}");
    lines[0]
}

/// A short call (`short_call`) to a fresh relay through `natter-netem`'s proxy, impaired
/// `up` towards the relay and `down` towards the client: how it ended, and what the proxy
/// counted.
fn short_call_through_proxy(
    up: &str,
    down: &str,
    room: &str,
) -> (natter_e2e::Finished, natter_e2e::netem::ProxyReport) {
    use natter_e2e::netem::{Impairment, parse_profile, run_proxy};
    let relay = RelayProcess::start();
    let invite: Invite = relay.invite().parse().expect("the relay's invite parses");
    let relay_addr: SocketAddr = invite.authority().parse().unwrap();
    let rt = runtime(1);
    let socket = rt
        .block_on(tokio::net::UdpSocket::bind("127.0.0.1:0"))
        .unwrap();
    let port = socket.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let proxy = rt.spawn(run_proxy(
        socket,
        relay_addr,
        Impairment::new(parse_profile(up).unwrap(), 1),
        Impairment::new(parse_profile(down).unwrap(), 2),
        None,
        async {
            let _ = stopped.await;
        },
    ));
    let done = short_call(&Invite { port, ..invite }.to_string(), room);
    stop.send(()).unwrap();
    let report = rt.block_on(proxy).unwrap().unwrap();
    (done, report)
}

/// A join through a path that loses the client's first Initial, then the relay's first flight,
/// then the client's TLS Finished (netem's scripted drops; at 20 % loss both ways this failed
/// the listener's join in the call bench's first three calls). The client's first round-trip
/// sample then spans a whole retransmission timeout of the relay's, and with QUIC's default
/// initial RTT (333 ms) the client sent its Finished again only ~6.5 s later — after the
/// relay had given the half-open handshake up (the 6 s idle timeout): the join failed with a
/// stateless reset. From a 100 ms initial estimate at both ends it goes again ~2 s later and
/// the join succeeds.
#[test]
fn a_lost_finished_after_a_slow_start_does_not_fail_the_join() {
    let (done, report) = short_call_through_proxy(
        "delay=20,drop-first=1,drop-handshake=1",
        "delay=20,drop-first=1",
        "slow-start",
    );
    assert!(done.status.success(), "the join failed:\n{done}");
    // The scripted drops happened: the first Initial and the Finished up, the first flight down.
    assert_eq!(report.to_upstream.lost, 2, "{report:?}");
    assert_eq!(report.to_client.lost, 1, "{report:?}");
    println!("joined and left in {:.1} s", done.elapsed.as_secs_f64());
}

/// A first join the relay resets: every datagram holding a Handshake packet from the client is
/// lost for its first 6.5 s, so the relay never gets the client's TLS Finished and gives the
/// half-open connection up after its 6 s idle timeout, while the client (whose handshake is
/// done on its side) waits for the Welcome. Its next packet draws a stateless reset. The
/// relay is up — it answered — so the client joins again at once, and the call goes ahead:
/// without that retry it ended with "the relay restarted and reset it".
#[test]
fn a_first_join_the_relay_resets_is_joined_again() {
    let (done, report) = short_call_through_proxy(
        "delay=20,drop-handshake-for=6500",
        "delay=20",
        "reset-first",
    );
    assert!(done.status.success(), "the join failed:\n{done}");
    assert!(report.to_upstream.lost > 0, "{report:?}");
    // The first connection lasted until the relay's idle timeout: this was the second join.
    assert!(done.elapsed > Duration::from_secs(6), "{done}");
    println!(
        "joined again and left in {:.1} s",
        done.elapsed.as_secs_f64()
    );
}

#[test]
fn wrong_fingerprint_is_refused() {
    let relay = RelayProcess::start();
    let fp = relay.fingerprint_hex().to_string();
    // Same relay, same address, one digit of the pin changed.
    let flipped = if fp.starts_with('0') { "1" } else { "0" };
    let bad_fp = format!("{flipped}{}", &fp[1..]);
    let invite = relay.invite().replace(&fp, &bad_fp);
    assert_ne!(invite, relay.invite());

    let done = short_call(&invite, "lobby");
    assert_eq!(done.code(), Some(EXIT_CONNECT), "{done}");
    let line = error_line(&done);
    assert!(line.contains("fingerprint"), "{line}");
    assert!(
        line.contains(&bad_fp) && line.contains(&fp),
        "names the expected and the presented fingerprint: {line}"
    );
    assert!(done.elapsed < Duration::from_secs(4), "{done}");

    // The real pin still works against the same relay: the refusal was about the pin.
    let ok = short_call(relay.invite(), "lobby");
    assert_eq!(ok.code(), Some(0), "{ok}");
}

#[test]
fn unreachable_relay_times_out() {
    // A port nobody listens on: bind, note the port, close.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("bind a UDP socket")
        .port();
    let invite = format!("natter://127.0.0.1:{port}?fp={}", "ab".repeat(32));
    let start = Instant::now();
    let done = short_call(&invite, "lobby");
    let elapsed = start.elapsed();
    assert_eq!(done.code(), Some(EXIT_CONNECT), "{done}");
    let line = error_line(&done);
    assert!(line.contains("did not answer"), "{line}");
    assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    assert!(
        elapsed < Duration::from_secs(8),
        "gave up only after {elapsed:?}"
    );
}

#[test]
fn bad_invite_names_the_scheme() {
    let done = short_call("http://x", "lobby");
    assert_eq!(done.code(), Some(EXIT_CONNECT), "{done}");
    let line = error_line(&done);
    assert!(
        line.contains("natter://"),
        "says which scheme to use: {line}"
    );
    assert!(line.contains("invite"), "{line}");
    assert!(done.elapsed < Duration::from_secs(3), "{done}");
}

/// A room name the relay would refuse is refused up front with the same rules: exit code 2
/// and a line naming the problem. (The relay's own refusal, InvalidRoom, is covered by the
/// relay core's unit tests and by `hostile_clients_do_not_disturb_a_call`.)
#[test]
fn refused_join_reports_invalid_room() {
    let relay = RelayProcess::start();
    // Only whitespace.
    let done = short_call(relay.invite(), "   ");
    assert_eq!(done.code(), Some(EXIT_CONNECT), "{done}");
    let line = error_line(&done);
    assert!(line.contains("invalid room"), "{line}");

    // 64 bytes is fine.
    let ok = short_call(relay.invite(), &"r".repeat(64));
    assert_eq!(ok.code(), Some(0), "{ok}");
}

/// A room name of 65 bytes (one more than the protocol allows) given with --room is reported
/// as an invalid room, not as a protocol error.
#[test]
fn overlong_room_is_reported_as_invalid_room() {
    let relay = RelayProcess::start();
    let done = short_call(relay.invite(), &"r".repeat(65));
    assert_eq!(done.code(), Some(EXIT_CONNECT), "{done}");
    assert!(error_line(&done).contains("invalid room"), "{done}");
}

/// Bob joins, not reconnecting (`--reconnect-for 0`), and his call settles (welcome, engine
/// running); then `end` is done to the relay. Returns how Bob's call ended (stats in
/// DIR/bob.json) and how long after `end` it did.
fn end_a_call(
    relay: &mut RelayProcess,
    dir: &TempDir,
    end: fn(&RelayProcess),
) -> (natter_e2e::Finished, Duration) {
    let call = Call::new(relay.invite(), "lobby", "bob")
        .stats_json(&dir.join("bob.json"))
        .duration(30.0)
        .arg("--reconnect-for")
        .arg("0")
        .spawn();
    relay.wait_for_join("lobby", "bob");
    std::thread::sleep(Duration::from_millis(300));
    let at = Instant::now();
    end(relay);
    let done = call.wait(Duration::from_secs(20));
    (done, at.elapsed())
}

/// SIGTERM to the relay ends a call that does not reconnect promptly: exit code 3, "shutting
/// down", and the relay itself exits 0.
#[test]
fn relay_shutdown_ends_calls() {
    let dir = TempDir::new("shutdown");
    let mut relay = RelayProcess::start();
    let (done, ended_after) = end_a_call(&mut relay, &dir, RelayProcess::terminate);
    let relay_exit = relay.wait_exit(Duration::from_secs(10));

    assert_eq!(done.code(), Some(EXIT_ENDED_BY_RELAY), "{done}");
    assert!(done.stderr.contains("shutting down"), "{done}");
    assert!(
        ended_after < Duration::from_secs(5),
        "the call took {ended_after:?} to notice the shutdown"
    );
    assert!(
        relay_exit.is_some_and(|s| s.success()),
        "relay exit: {relay_exit:?}\n{}",
        relay.log_text()
    );
    let stats = CallStats::read(&dir.join("bob.json"));
    assert!(
        stats
            .ended_by_relay
            .as_deref()
            .is_some_and(|r| r.contains("shutting down")),
        "{stats:#?}"
    );
    assert!(stats.duration_s < 10.0, "{stats:#?}");
}

/// A relay that dies without a word (SIGKILL: a crash, a VPS reboot) is noticed within the
/// client's idle timeout (6 s: keep-alives every second, so five lost in a row), not after
/// half a minute of dead air.
#[test]
fn crashed_relay_is_noticed_within_seconds() {
    let dir = TempDir::new("crash");
    let mut relay = RelayProcess::start();
    let (done, ended_after) = end_a_call(&mut relay, &dir, RelayProcess::kill);
    assert!(relay.wait_exit(Duration::from_secs(5)).is_some());
    assert_eq!(done.code(), Some(EXIT_ENDED_BY_RELAY), "{done}");
    // The relay did not end the call: it is gone, and the exit line says so.
    assert!(
        done.stderr.contains("lost the connection to the relay")
            && !done.stderr.contains("ended by the relay"),
        "{done}"
    );
    assert!(
        (Duration::from_secs(5)..Duration::from_secs(10)).contains(&ended_after),
        "the call noticed the crash after {ended_after:?}: {done}"
    );
    let stats = CallStats::read(&dir.join("bob.json"));
    let reason = stats.ended_by_relay.as_deref().unwrap_or_default();
    assert!(reason.contains("timed out"), "{stats:#?}");
}

/// A relay that crashes and comes back on the same port with the same data directory (a
/// service manager restarting it): both headless calls are reset by the restarted relay,
/// rejoin by themselves, Alice is heard again by Bob, what the outage swallowed counts as
/// lost, and both calls exit 0. (tests/failover.rs measures how soon she is heard again.)
#[test]
fn headless_calls_rejoin_a_restarted_relay() {
    const SPEECH_SECS: f32 = 20.0;
    let dir = TempDir::new("restart");
    let mut relay = RelayProcess::start();
    let speech = signal_file("speech", &dir.join("alice.wav"), SPEECH_SECS, 5);
    let bob = Call::new(relay.invite(), "lobby", "bob")
        .recording_in(&dir)
        .duration(f64::from(SPEECH_SECS) + 2.0)
        .spawn();
    relay.wait_for_join("lobby", "bob");
    let alice = Call::new(relay.invite(), "lobby", "alice")
        .input(&dir.join("alice.wav"))
        .stats_json(&dir.join("alice.json"))
        .spawn();
    relay.wait_for_join("lobby", "alice");
    std::thread::sleep(Duration::from_secs(2));
    let crashed = Instant::now();
    // Down for 4 s (a service manager's restart delay, a reboot): the restarted relay, which
    // kept its reset key, resets the old connections at once and they rejoin.
    relay.kill();
    assert!(relay.wait_exit(Duration::from_secs(5)).is_some());
    std::thread::sleep(Duration::from_secs(4));
    relay.restart();
    for name in ["alice", "bob"] {
        let rejoined = relay.wait_for_log(Duration::from_secs(20), |v| {
            v["fields"]["message"] == "join" && v["fields"]["name"] == name
        });
        assert!(
            rejoined.is_some(),
            "{name} did not rejoin; relay log:\n{}",
            relay.log_text()
        );
    }
    println!("both rejoined {:?} after the crash", crashed.elapsed());
    let rejoined_unix_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let a = alice.finish();
    let b = bob.finish();
    for done in [&a, &b] {
        assert!(done.stderr.contains("reconnecting"), "{done}");
        assert!(!done.stderr.contains("error"), "{done}");
    }
    let alice_stats = CallStats::read(&dir.join("alice.json"));
    let bob_stats = CallStats::read(&dir.join("bob.json"));
    assert!(alice_stats.ended_by_relay.is_none(), "{alice_stats:#?}");
    // Only what Alice said a second after both were back counts.
    let settled = rejoined_unix_us + 1_000_000 - alice_stats.audio_start_unix_us;
    let first = (settled as f64 * 48e-3) as usize;
    assert!(
        first + 48_000 * 5 < speech.len(),
        "too little speech left after the rejoin ({first} of {} samples)",
        speech.len()
    );
    let mut after = speech.clone();
    after[..first].fill(0.0);
    let heard = read_wav(&dir.join("bob-heard.wav"));
    let m = find_signal_windows(
        &after,
        &alice_stats,
        &heard,
        &bob_stats,
        500.0,
        200.0,
        500.0,
    );
    println!("after the restart: {m}");
    assert!(
        m.median_score() >= 0.6,
        "Bob did not hear Alice after the restart: {m}"
    );
    // Bob's statistics about Alice span both of her memberships (SSRCs) and count what the
    // outage swallowed as lost, not `lost 0`: she numbered every frame she sent into the dead
    // connection, and her new SSRC carries the numbering on. Between the crash and the rejoin
    // lie the 4 s the relay was down: at 50 packets a second, well over 100 packets (speech
    // with pauses sends fewer: DTX), all counted.
    let from_alice = bob_stats.peer(alice_stats.ssrc);
    println!("bob's statistics about alice across the restart: {from_alice:?}");
    assert_eq!(from_alice.name.as_deref(), Some("alice"));
    assert!(from_alice.packets_lost > 100, "{from_alice:#?}");
    let accounted = from_alice.packets_received as i64 + from_alice.packets_lost;
    let sent = alice_stats.packets_sent as i64;
    assert!(
        (sent * 8 / 10..=sent).contains(&accounted),
        "received + lost = {accounted}, alice sent {sent} (she may go on a little after Bob \
         stops listening): {from_alice:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Raw QUIC clients
// ---------------------------------------------------------------------------------------------

/// A control stream spoken by hand.
struct RawControl {
    send: SendStream,
    recv: RecvStream,
    decoder: FrameDecoder,
}

impl RawControl {
    async fn open(conn: &Connection) -> Self {
        let (send, recv) = conn.open_bi().await.expect("open the control stream");
        Self {
            send,
            recv,
            decoder: FrameDecoder::new(),
        }
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.send
            .write_all(bytes)
            .await
            .expect("write control bytes");
    }

    async fn send(&mut self, msg: &Message) {
        self.send_raw(&msg.to_frame()).await;
    }

    /// The next message, or `None` if the stream ends, fails or stays silent for 5 s.
    async fn recv(&mut self) -> Option<Message> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(msg) = self.decoder.next_message() {
                return Some(msg.expect("the relay sends well-formed messages"));
            }
            match tokio::time::timeout(Duration::from_secs(5), self.recv.read(&mut buf)).await {
                Ok(Ok(Some(n))) => self.decoder.push(&buf[..n]),
                _ => return None,
            }
        }
    }

    /// Hello and Join; returns our SSRC and the roster.
    async fn join(conn: &Connection, room: &str, name: &str) -> (Self, u32, Vec<Participant>) {
        let mut control = Self::open(conn).await;
        control
            .send(&Message::Hello {
                versions: vec![natter_proto::PROTOCOL_VERSION],
                software: "natter-e2e raw client".into(),
            })
            .await;
        match control.recv().await {
            Some(Message::HelloAck { version, .. }) => {
                assert_eq!(version, natter_proto::PROTOCOL_VERSION)
            }
            other => panic!("expected HelloAck, got {other:?}"),
        }
        control
            .send(&Message::Join {
                room: room.into(),
                name: name.into(),
                token: None,
                flags: 0,
            })
            .await;
        loop {
            match control.recv().await {
                Some(Message::Welcome { ssrc, roster, .. }) => return (control, ssrc, roster),
                Some(Message::Ping { .. } | Message::Pong { .. }) => {}
                other => panic!("expected Welcome, got {other:?}"),
            }
        }
    }
}

/// Waits for the relay to close `conn` and returns the application close code and reason.
async fn closed_by_relay(conn: &Connection, within: Duration) -> (u64, String) {
    match tokio::time::timeout(within, conn.closed()).await {
        Ok(ConnectionError::ApplicationClosed(close)) => (
            close.error_code.into_inner(),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        Ok(other) => panic!("expected an application close from the relay, got {other}"),
        Err(_) => panic!("the relay did not close the connection within {within:?}"),
    }
}

fn rtp(ssrc: u32, sequence: u16, payload: &[u8]) -> Bytes {
    let mut out = Vec::new();
    write_rtp(
        &RtpHeader {
            marker: false,
            payload_type: natter_proto::OPUS_PAYLOAD_TYPE,
            sequence,
            timestamp: u32::from(sequence) * 960,
            ssrc,
            audio_level: None,
        },
        payload,
        &mut out,
    );
    Bytes::from(out)
}

/// The largest datagram `conn` can send. Path MTU discovery raises it above the protocol's
/// 1200 bytes on loopback shortly after the handshake, so this waits up to 2 s for that (for
/// tests that send oversize datagrams).
async fn largest_datagram(conn: &Connection) -> usize {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let max = conn
            .max_datagram_size()
            .expect("the relay accepts datagrams");
        if max > natter_proto::MAX_MEDIA_DATAGRAM || Instant::now() >= deadline {
            return max;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a datagram the relay must drop, paced so our own small send queue never discards it.
async fn send_paced(conn: &Connection, datagram: Bytes) -> bool {
    let sent = conn.send_datagram(datagram).is_ok();
    tokio::time::sleep(Duration::from_millis(3)).await;
    sent
}

/// While Alice talks to Bob, hostile clients misbehave in every way the protocol allows them
/// to: garbage and oversize datagrams before joining, malformed control frames, spoofed SSRCs
/// and broken RTP from inside the room, and a connection that never says hello. The relay
/// closes the offenders with the right codes, drops their media (and counts it), and Bob hears
/// Alice exactly as if nothing happened.
#[test]
fn hostile_clients_do_not_disturb_a_call() {
    let dir = TempDir::new("hostile");
    let mut relay = RelayProcess::start();
    let invite: Invite = relay.invite().parse().expect("the relay's invite parses");
    let rt = runtime(2);

    // (iv) Connects and never opens a control stream; the relay's hello timeout is 10 s, so
    // this one runs alongside everything else and is checked at the end.
    let silent_since = Instant::now();
    let (_silent_endpoint, silent) = rt
        .block_on(connect(&invite))
        .expect("the silent client connects");

    let speech = signal_file("speech", &dir.join("alice.wav"), 3.0, 5);
    let bob = Call::new(relay.invite(), "lobby", "bob")
        .recording_in(&dir)
        .duration(4.5)
        .spawn();
    relay.wait_for_join("lobby", "bob");
    let alice = Call::new(relay.invite(), "lobby", "alice")
        .input(&dir.join("alice.wav"))
        .stats_json(&dir.join("alice.json"))
        .duration(5.5)
        .spawn();
    relay.wait_for_join("lobby", "alice");

    let mut rng = Rng::new(0x6e61_7474);
    let mut garbage_sent = 0u64;
    let mut not_joined_sent = 0u64;
    let mut spoofed_sent = 0u64;
    let mut malformed_in_room_sent = 0u64;

    let (alice_ssrc_seen, mallory_heard_alice) = rt.block_on(async {
        // (i) Datagrams before joining: tiny, random, wrong flow, oversize, and well-formed
        // RTP from a connection that is in no room. Some before Hello (the relay has not even
        // seen a control stream yet), some after.
        let (_ep_x, x) = connect(&invite).await.expect("client x connects");
        let max = largest_datagram(&x).await;
        let mut garbage = vec![
            Bytes::from_static(&[0]),
            Bytes::from(rng.bytes(100)),
            Bytes::from(rng.bytes(1100)),
            {
                let mut d = vec![5u8]; // unknown flow id
                d.extend_from_slice(&rtp(1, 1, b"x")[1..]);
                Bytes::from(d)
            },
        ];
        // Larger than the protocol's 1200-byte limit, if the path allows it.
        if max > natter_proto::MAX_MEDIA_DATAGRAM {
            let mut big = rtp(7, 1, &vec![0x55; max]).to_vec();
            big.truncate(max);
            garbage.push(Bytes::from(big));
        }
        println!("largest datagram the path takes: {max} bytes");
        for d in garbage.iter().cloned() {
            garbage_sent += u64::from(send_paced(&x, d).await);
        }
        let mut control = RawControl::open(&x).await;
        control
            .send(&Message::Hello {
                versions: vec![natter_proto::PROTOCOL_VERSION],
                software: "x".into(),
            })
            .await;
        assert!(
            matches!(control.recv().await, Some(Message::HelloAck { .. })),
            "the relay still talks to a client that sent garbage datagrams"
        );
        for d in garbage {
            garbage_sent += u64::from(send_paced(&x, d).await);
        }
        for seq in 0..5 {
            let d = rtp(0x1234_5678, seq, &rng.bytes(80));
            not_joined_sent += u64::from(send_paced(&x, d).await);
        }
        assert!(garbage_sent >= 8 && not_joined_sent == 5);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            x.close_reason().is_none(),
            "stray datagrams alone do not get a client closed: {:?}",
            x.close_reason()
        );

        // (ii) A control frame claiming 100 000 bytes (over the 64 KiB limit), then noise.
        let mut frame = Vec::new();
        natter_proto::varint::encode(100_000, &mut frame);
        frame.extend(rng.bytes(32));
        control.send_raw(&frame).await;
        match control.recv().await {
            Some(Message::Error { code, .. }) => assert_eq!(code, ErrorCode::ProtocolViolation),
            // The close may overtake the Error message; the close code below still tells.
            None => {}
            Some(other) => panic!("expected Error ProtocolViolation, got {other:?}"),
        }
        let (code, reason) = closed_by_relay(&x, Duration::from_secs(5)).await;
        assert_eq!(
            code, 1,
            "ProtocolViolation for an oversize frame ({reason})"
        );
        assert!(reason.contains("malformed"), "{reason}");

        // (ii b) Before any Hello: a Join whose room length is an absurd varint.
        let (_ep_z, z) = connect(&invite).await.expect("client z connects");
        let mut control = RawControl::open(&z).await;
        let mut body = vec![0x03]; // Join
        body.extend([0xff; 11]);
        let mut frame = Vec::new();
        natter_proto::varint::encode(body.len() as u64, &mut frame);
        frame.extend(body);
        control.send_raw(&frame).await;
        let (code, reason) = closed_by_relay(&z, Duration::from_secs(5)).await;
        assert_eq!(code, 1, "ProtocolViolation for a malformed Join ({reason})");

        // (iii) Mallory joins the room properly, then sends media she must not.
        let (_ep_y, y) = connect(&invite).await.expect("client y connects");
        let (_control_y, my_ssrc, roster) = RawControl::join(&y, "lobby", "mallory").await;
        let alice_ssrc = roster
            .iter()
            .find(|p| p.name == "alice")
            .unwrap_or_else(|| panic!("alice in the roster: {roster:?}"))
            .ssrc;
        assert!(roster.iter().any(|p| p.name == "bob"), "{roster:?}");
        assert!(
            roster
                .iter()
                .any(|p| p.ssrc == my_ssrc && p.name == "mallory")
        );
        // She is a member: she gets alice's audio like everyone else.
        let listener = {
            let y = y.clone();
            tokio::spawn(async move {
                let mut from_alice = 0u64;
                while let Ok(d) = y.read_datagram().await {
                    if natter_proto::rtp::peek_ssrc(&d[1..]) == Some(alice_ssrc) {
                        from_alice += 1;
                    }
                }
                from_alice
            })
        };
        let mut seq = 0u16;
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until {
            seq = seq.wrapping_add(1);
            // Alice's SSRC with plausible sequence numbers and garbage "Opus".
            spoofed_sent += u64::from(send_paced(&y, rtp(alice_ssrc, seq, &rng.bytes(60))).await);
            // A made-up SSRC.
            let random_ssrc = rng.next_u64() as u32 | 1;
            spoofed_sent += u64::from(send_paced(&y, rtp(random_ssrc, seq, &rng.bytes(60))).await);
            // Broken RTP under her own SSRC: wrong version, then a truncated header.
            let mut bad = rtp(my_ssrc, seq, &rng.bytes(40)).to_vec();
            bad[1] = 0x40 | (bad[1] & 0x3f); // RTP version 1
            malformed_in_room_sent += u64::from(send_paced(&y, Bytes::from(bad)).await);
            let truncated = rtp(my_ssrc, seq, b"").slice(..9);
            malformed_in_room_sent += u64::from(send_paced(&y, truncated).await);
        }
        assert!(
            y.close_reason().is_none(),
            "mallory stays connected: {:?}",
            y.close_reason()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        y.close(0u32.into(), b"bye");
        let heard = listener.await.expect("listener task");
        (alice_ssrc, heard)
    });

    let bob_done = bob.finish();
    alice.finish();

    // (iv) The silent connection is closed with HelloRequired once the hello timeout passes.
    let remaining = Duration::from_secs(14).saturating_sub(silent_since.elapsed());
    let (code, reason) = rt.block_on(closed_by_relay(&silent, remaining));
    assert_eq!(
        code,
        u64::from(ErrorCode::HelloRequired.to_u16()),
        "HelloRequired ({reason})"
    );
    let silent_for = silent_since.elapsed();
    assert!(
        silent_for >= Duration::from_secs(9),
        "closed before the 10 s hello timeout: {silent_for:?}"
    );

    let a = CallStats::read(&dir.join("alice.json"));
    let b = CallStats::read(&dir.join("bob.json"));
    assert_eq!(
        alice_ssrc_seen, a.ssrc,
        "the roster's SSRC for alice is hers"
    );
    assert!(
        mallory_heard_alice > 20,
        "mallory, a member, receives alice's audio: {mallory_heard_alice}"
    );

    // Bob heard alice, only alice, completely, and nothing malformed reached him.
    assert_eq!(
        b.peer_ssrcs(),
        vec![a.ssrc],
        "bob hears only alice: {b:#?}\n{bob_done}"
    );
    let from_alice = b.peer(a.ssrc);
    assert_eq!(from_alice.name.as_deref(), Some("alice"));
    assert_eq!(from_alice.packets_lost, 0, "{from_alice:#?}");
    assert_eq!(from_alice.duplicates, 0, "{from_alice:#?}");
    assert!(
        from_alice.packets_received > 100 && from_alice.packets_received <= a.packets_sent,
        "{from_alice:#?} (alice sent {})",
        a.packets_sent
    );
    assert_eq!(b.malformed_datagrams, 0, "{b:#?}");
    assert!(a.peers.is_empty(), "nothing reached alice either: {a:#?}");
    let heard = read_wav(&dir.join("bob-heard.wav"));
    let m = find_signal_windows(&speech, &a, &heard, &b, 500.0, 0.0, 500.0);
    println!("alice -> bob under attack: {m}");
    assert!(m.median_score() >= 0.6, "{m}");
    assert!((10.0..=150.0).contains(&m.median_lag_ms()), "{m}");

    // The relay counted what it dropped and the sessions it closed: the two protocol violators
    // and the connection that never said hello.
    let stats = relay.stop();
    println!(
        "relay: {stats:?}; sent garbage {garbage_sent}, not joined {not_joined_sent}, spoofed {spoofed_sent}, malformed in room {malformed_in_room_sent}"
    );
    assert!(
        stats.dropped_wrong_ssrc * 10 >= spoofed_sent * 9 && spoofed_sent > 100,
        "{stats:?}, spoofed {spoofed_sent}"
    );
    assert!(
        stats.dropped_malformed * 10 >= (garbage_sent + malformed_in_room_sent) * 9,
        "{stats:?}"
    );
    assert!(stats.dropped_not_joined >= 1, "{stats:?}");
    assert!(stats.control_errors >= 3, "{stats:?}");
}

/// A member of the room sends well-formed RTP under her own SSRC whose payload is not Opus
/// at all (random bytes, empty, oversized for a frame). The relay forwards it, as it does not
/// decode audio; the listener must survive it and, once the garbage stops, hear the real
/// talker as clearly as ever (random bytes often *are* valid Opus, so while it lasts the
/// listener plays loud noise; that is not held against it).
#[test]
fn listener_survives_garbage_opus_from_a_member() {
    let dir = TempDir::new("garbage-opus");
    let relay = RelayProcess::start();
    let invite: Invite = relay.invite().parse().expect("the relay's invite parses");
    let rt = runtime(1);

    let speech = signal_file("speech", &dir.join("alice.wav"), 4.0, 6);
    let bob = Call::new(relay.invite(), "lobby", "bob")
        .recording_in(&dir)
        .duration(6.5)
        .spawn();
    relay.wait_for_join("lobby", "bob");
    let alice = Call::new(relay.invite(), "lobby", "alice")
        .input(&dir.join("alice.wav"))
        .stats_json(&dir.join("alice.json"))
        .duration(5.5)
        .spawn();
    relay.wait_for_join("lobby", "alice");

    let (gremlin_ssrc, sent, gremlin_end_us) = rt.block_on(async {
        let (_ep, g) = connect(&invite).await.expect("gremlin connects");
        let (_control, ssrc, _roster) = RawControl::join(&g, "lobby", "gremlin").await;
        let mut rng = Rng::new(0x6772_656d);
        let mut sent = 0u64;
        let max = g.max_datagram_size().unwrap_or(1200).min(1200) - 20;
        for seq in 0..25u16 {
            let len = match seq % 4 {
                0 => 0,
                1 => 3,
                2 => max,
                _ => 1 + (rng.next_u64() % 200) as usize,
            };
            let d = rtp(ssrc, seq, &rng.bytes(len));
            sent += u64::from(g.send_datagram(d).is_ok());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let end_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_micros() as u64;
        g.close(0u32.into(), b"bye");
        (ssrc, sent, end_us)
    });

    bob.finish();
    alice.finish();
    let a = CallStats::read(&dir.join("alice.json"));
    let b = CallStats::read(&dir.join("bob.json"));
    let mut expected = vec![a.ssrc, gremlin_ssrc];
    expected.sort_unstable();
    assert_eq!(b.peer_ssrcs(), expected, "{b:#?}");
    assert!(
        b.peer(gremlin_ssrc).packets_received * 10 >= sent * 9,
        "the relay forwards a member's well-formed RTP whatever its payload: {b:#?}, sent {sent}"
    );
    let from_alice = b.peer(a.ssrc);
    assert_eq!(from_alice.packets_lost, 0, "{from_alice:#?}");
    assert!(from_alice.packets_received > 100, "{from_alice:#?}");
    // After the garbage, alice is heard as clearly as without it. The garbage's echo lasts a
    // while: random payloads often decode as 60 or 120 ms Opus frames although they were sent
    // 20 ms apart, and the listener plays (and then conceals) them at their decoded length.
    let heard = read_wav(&dir.join("bob-heard.wav"));
    let m = find_signal_windows(&speech, &a, &heard, &b, 500.0, 0.0, 500.0);
    println!("alice -> bob with a gremlin in the room: {m}");
    let clean_from_ms = (gremlin_end_us as f64 - a.audio_start_unix_us as f64) / 1000.0 + 1000.0;
    let clean: Vec<_> = m
        .windows
        .iter()
        .filter(|w| w.from_ms >= clean_from_ms)
        .collect();
    assert!(
        clean.len() >= 2,
        "the garbage ran into the last second of alice's speech (from {clean_from_ms:.0} ms): {m}"
    );
    for w in clean {
        assert!(w.score >= 0.6, "after the garbage stopped: {w} ({m})");
        assert!(
            (10.0..=150.0).contains(&w.lag_ms),
            "after the garbage stopped: {w}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Floods
// ---------------------------------------------------------------------------------------------

/// Polls the relay's metrics until `name` satisfies `ok`; returns its value, or panics after
/// `within`.
#[track_caller]
fn wait_for_metric(url: &str, name: &str, within: Duration, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let text = http_get(url).1;
        let value = metric(&text, name).unwrap_or_else(|| panic!("no {name} in:\n{text}"));
        if ok(value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "{name} = {value} after {within:?}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A UDP forwarder in front of the relay that passes on only the first datagram from each
/// client address and drops everything else, both ways: every client behind it leaves the
/// relay one handshake that never completes, as a spoofed-source Initial does.
async fn first_packet_only(relay: SocketAddr) -> SocketAddr {
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind the front socket");
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind the back socket");
    let addr = front.local_addr().expect("front address");
    tokio::spawn(async move {
        let mut seen = HashSet::new();
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = front.recv_from(&mut buf).await {
            if seen.insert(from) {
                let _ = back.send_to(&buf[..n], relay).await;
            }
        }
    });
    addr
}

/// Handshake flood: with `--retry-above 4`, four handshakes that never complete (one Initial
/// each, as from spoofed addresses) reach the threshold. Real clients arriving then — three raw
/// QUIC clients at once and a `natter call` — are sent a QUIC Retry, answer it (one more round
/// trip) and connect and join as usual; the metrics count one Retry per client, the handshakes
/// in progress, and, once the relay gives up on the stuck ones, their timeouts. With those
/// gone, the next client connects without a Retry.
#[test]
fn clients_connect_through_quic_retry_under_a_handshake_flood() {
    const STUCK: usize = 4;
    let relay = RelayProcess::start_with(&[
        "--metrics",
        "127.0.0.1:0",
        "--retry-above",
        &STUCK.to_string(),
        "--idle-timeout",
        "3",
    ]);
    let url = relay.metrics_url().to_string();
    let invite: Invite = relay.invite().parse().expect("the relay's invite parses");
    let rt = runtime(2);

    let proxy = rt.block_on(first_packet_only(SocketAddr::from((
        [127, 0, 0, 1],
        relay.port(),
    ))));
    let mut via_proxy = invite.clone();
    via_proxy.port = proxy.port();
    // One at a time, so each is a handshake in progress before the next arrives (none of
    // them is over the threshold, so none gets a Retry).
    let mut stuck = Vec::new();
    for i in 1..=STUCK {
        let via_proxy = via_proxy.clone();
        stuck.push(rt.spawn(async move { connect(&via_proxy).await.is_ok() }));
        wait_for_metric(
            &url,
            "natter_handshakes_in_progress",
            Duration::from_secs(5),
            |v| v >= i as f64,
        );
    }
    assert_eq!(
        wait_for_metric(&url, "natter_retries_total", Duration::ZERO, |_| true),
        0.0,
        "no Retry below the threshold"
    );

    // Real clients now: three raw ones at once, then the real client binary.
    let joined = rt.block_on(async {
        let clients = (0..3).map(|i| {
            let invite = invite.clone();
            tokio::spawn(async move {
                let (endpoint, conn) = connect(&invite).await.expect("connects through a Retry");
                let (_control, ssrc, _) =
                    RawControl::join(&conn, "retry", &format!("raw{i}")).await;
                conn.close(0u32.into(), b"bye");
                endpoint.wait_idle().await;
                ssrc
            })
        });
        let mut ssrcs = Vec::new();
        for c in clients.collect::<Vec<_>>() {
            ssrcs.push(c.await.expect("client task"));
        }
        ssrcs
    });
    assert_eq!(joined.len(), 3);
    let call = short_call(relay.invite(), "retry");
    assert_eq!(call.code(), Some(0), "natter call through a Retry: {call}");

    let text = http_get(&url).1;
    let retries = metric(&text, "natter_retries_total").expect("retries");
    let accepted = metric(&text, "natter_connections_accepted_total").expect("accepted");
    println!("under the flood: retries={retries} accepted={accepted}");
    // One Retry per real client (two if its first Initial were resent before the Retry came).
    assert!((4.0..=8.0).contains(&retries), "{text}");
    assert_eq!(accepted, 4.0, "{text}");
    assert!(
        metric(&text, "natter_handshakes_in_progress").expect("gauge") >= STUCK as f64,
        "{text}"
    );

    // The relay gives up on the stuck handshakes after its idle timeout (3 s) and counts them.
    wait_for_metric(
        &url,
        "natter_handshakes_in_progress",
        Duration::from_secs(10),
        |v| v == 0.0,
    );
    let timeouts = metric(
        &http_get(&url).1,
        "natter_handshake_failures_total{reason=\"timeout\"}",
    )
    .expect("timeouts");
    assert!(timeouts >= STUCK as f64, "{timeouts}");
    for s in stuck {
        assert!(
            !rt.block_on(s).expect("stuck client task"),
            "a client behind the one-way forwarder cannot have connected"
        );
    }
    let quiet = short_call(relay.invite(), "retry");
    assert_eq!(quiet.code(), Some(0), "{quiet}");
    let after = metric(&http_get(&url).1, "natter_retries_total").expect("retries");
    assert_eq!(after, retries, "no Retry once the flood is over");
}

/// Sends, until `stop`, valid RTP under `ssrc` at `per_ms` packets per millisecond and, every
/// 10 ms, an RTP datagram of `oversize` bytes; returns how many of each quinn took.
async fn flood(
    conn: Connection,
    ssrc: u32,
    per_ms: usize,
    oversize: usize,
    stop: Arc<AtomicBool>,
) -> (u64, u64) {
    let mut rng = Rng::new(0x666c_6f6f);
    let (mut rtp_sent, mut oversize_sent) = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut seq = 0u16;
    while !stop.load(Relaxed) {
        tick.tick().await;
        for _ in 0..per_ms {
            seq = seq.wrapping_add(1);
            rtp_sent += u64::from(conn.send_datagram(rtp(ssrc, seq, &rng.bytes(200))).is_ok());
        }
        if seq % (10 * per_ms as u16) < per_ms as u16 {
            let mut big = rtp(ssrc, seq, &vec![0x55; oversize]).to_vec();
            big.truncate(oversize);
            oversize_sent += u64::from(conn.send_datagram(Bytes::from(big)).is_ok());
        }
    }
    (rtp_sent, oversize_sent)
}

/// Flood isolation, measured: four participants (the load generator's stamped 20 ms streams,
/// each hearing the other three) talk in a room, first alone, then while a fifth member floods
/// the room with valid RTP under her own SSRC at 20× the per-participant packet limit, plus a
/// datagram over the relay's size limit every 10 ms. The relay throttles her and counts it
/// (rate_limited, oversize), and the others' loss and latency do not change: no loss, and the
/// median and p99 send→receive time within 2× + 2 ms / 2× + 5 ms of the quiet run (both runs
/// share two cores with the relay, the flooder and other tests, so the margin is for scheduling
/// noise; 5 ms is a quarter of a frame, well inside any jitter buffer). Without the throttle the
/// flooder's 3 000 packets/s would reach all four, twelve times the room's own traffic: loopback
/// absorbs that (tried: the latency and loss checks still pass, the counters do not), a real
/// listener's downlink would not, so the counters are what show the throttle at work.
#[test]
fn a_flooding_member_is_throttled_and_the_room_does_not_notice() {
    const PER_MS: usize = 3;
    let relay = RelayProcess::start_with(&["--metrics", "127.0.0.1:0"]);
    let url = relay.metrics_url().to_string();
    let invite: Invite = relay.invite().parse().expect("the relay's invite parses");
    let room = |label: &str| {
        let report = loadgen(
            relay.invite(),
            &["--participants", "4", "--room-size", "4", "--duration", "4"],
            Duration::from_secs(60),
        );
        println!("{label}: {}", report.line);
        report
    };
    let quiet = room("quiet");

    let rt = runtime(1);
    // The load generator's first room is load-0: the flooder waits there for it.
    let (_endpoint, conn, _control, ssrc, max) = rt.block_on(async {
        let (endpoint, conn) = connect(&invite).await.expect("the flooder connects");
        let (control, ssrc, _) = RawControl::join(&conn, "load-0", "flooder").await;
        let max = largest_datagram(&conn).await;
        (endpoint, conn, control, ssrc, max)
    });
    assert!(
        max > natter_proto::MAX_MEDIA_DATAGRAM,
        "path MTU discovery on loopback allows oversize datagrams ({max})"
    );
    let before = http_get(&url).1;
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = Instant::now();
    let flooder = rt.spawn(flood(conn.clone(), ssrc, PER_MS, max, stop.clone()));
    let flooded = room("flooded");
    stop.store(true, Relaxed);
    let (rtp_sent, oversize_sent) = rt.block_on(flooder).expect("flood task");
    let flood_secs = flooding.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        conn.close_reason().is_none(),
        "throttled, not disconnected: {:?}",
        conn.close_reason()
    );
    let after = http_get(&url).1;
    let delta = |name: &str| {
        metric(&after, name).expect("metric after") - metric(&before, name).expect("metric before")
    };
    let rate_limited = delta("natter_datagrams_dropped_total{reason=\"rate_limited\"}");
    let oversize = delta("natter_datagrams_dropped_total{reason=\"oversize\"}");
    // What the 150 packets/s bucket (burst 50) lets through in that time.
    let allowed = 150.0 * flood_secs + 50.0;
    println!(
        "flooder: {rtp_sent} RTP + {oversize_sent} oversize ({max} B) in {flood_secs:.1} s; relay \
         counted rate_limited={rate_limited} oversize={oversize}; at most {allowed:.0} allowed"
    );
    assert!(
        rtp_sent as f64 >= 10.0 * allowed,
        "the flood was a flood: {rtp_sent} in {flood_secs:.1} s"
    );
    assert!(
        rate_limited >= 0.8 * (rtp_sent as f64 - allowed),
        "throttled and counted: {rate_limited} of {rtp_sent}\n{after}"
    );
    assert!(
        oversize >= 0.9 * oversize_sent as f64 && oversize_sent >= 100,
        "oversize counted: {oversize} of {oversize_sent}\n{after}"
    );

    for report in [&quiet, &flooded] {
        assert_eq!(report.field("streams"), 12.0, "{}", report.line);
        assert!(report.field("loss_pct") <= 0.2, "no loss: {}", report.line);
    }
    let (p50, p99) = (quiet.field("p50_ms"), quiet.field("p99_ms"));
    assert!(
        flooded.field("p50_ms") <= 2.0 * p50 + 2.0 && flooded.field("p99_ms") <= 2.0 * p99 + 5.0,
        "latency for the others unchanged by the flood:\nquiet   {}\nflooded {}",
        quiet.line,
        flooded.line
    );
}

/// SIGTERM to `natter call` (`kill`, `timeout`, a service manager) ends the call like Ctrl-C:
/// exit 0, and the recording and statistics of the call so far are written.
#[test]
fn terminated_call_still_writes_its_recording_and_stats() {
    let dir = TempDir::new("sigterm");
    let relay = RelayProcess::start();
    let bob = Call::new(relay.invite(), "term", "bob")
        .recording_in(&dir)
        .duration(60.0)
        .spawn();
    relay.wait_for_join("term", "bob");
    std::thread::sleep(Duration::from_secs(1));
    bob.signal(libc::SIGTERM);
    let done = bob.wait(Duration::from_secs(10));
    assert_eq!(done.code(), Some(0), "{done}");
    let stats = CallStats::read(&dir.join("bob.json"));
    assert!(
        (0.5..10.0).contains(&stats.duration_s),
        "ended on the signal, not after 60 s: {stats:#?}"
    );
    let heard = read_wav(&dir.join("bob-heard.wav"));
    assert!(
        heard.len() as f64 >= 0.5 * 48_000.0,
        "the recording so far was written: {} samples",
        heard.len()
    );
}
