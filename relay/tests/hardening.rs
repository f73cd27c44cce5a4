//! One stranger must not be able to exhaust a relay (docs/SECURITY.md): every per-connection
//! queue is bounded, control messages are rate-limited, slots are taken at the handshake,
//! silent connections time out, and a connection gets one stream with a small window.
//! In-process relays on loopback, each attack bounded in count and time.

mod common;

use natter_proto::control::{ErrorCode, FrameDecoder, Message};
use natter_relay::{Identity, RelayConfig, RelayHandle};
use quinn::{Connection, ConnectionError, RecvStream, SendStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn relay_with(adjust: impl FnOnce(&mut RelayConfig)) -> RelayHandle {
    let mut config = RelayConfig::new(
        vec!["127.0.0.1:0".parse().unwrap()],
        Identity::generate().unwrap(),
    );
    adjust(&mut config);
    natter_relay::start(config).await.unwrap()
}

/// A client connection; `stream_window` shrinks its receive window (a client that stops
/// reading then stops granting credit quickly).
async fn connect_with(
    relay: &RelayHandle,
    stream_window: Option<u32>,
) -> Result<Connection, ConnectionError> {
    let transport = stream_window.map(|window| {
        let mut transport = quinn::TransportConfig::default();
        transport.stream_receive_window(window.into());
        transport.receive_window(window.into());
        transport
    });
    common::connect_raw(relay.local_addrs()[0], relay.fingerprint(), transport)
        .await
        .1
}

async fn connect(relay: &RelayHandle) -> Connection {
    connect_with(relay, None).await.unwrap()
}

fn hello() -> Message {
    Message::Hello {
        versions: vec![natter_proto::PROTOCOL_VERSION],
        software: "hardening-test".into(),
    }
}

fn join(room: &str, name: &str) -> Message {
    Message::Join {
        room: room.into(),
        name: name.into(),
        token: None,
        flags: 0,
    }
}

fn ping(nonce: u64) -> Message {
    Message::Ping {
        nonce,
        sent_micros: 0,
    }
}

async fn send(stream: &mut SendStream, msgs: &[Message]) {
    let mut out = Vec::new();
    for m in msgs {
        m.encode(&mut out);
    }
    stream.write_all(&out).await.unwrap();
}

/// The next message, or `None` when the stream ends or stays silent for `within`.
async fn next(
    recv: &mut RecvStream,
    decoder: &mut FrameDecoder,
    within: Duration,
) -> Option<Message> {
    let mut buf = [0u8; 2048];
    loop {
        if let Some(msg) = decoder.next_message() {
            return Some(msg.unwrap());
        }
        match tokio::time::timeout(within, recv.read(&mut buf)).await {
            Ok(Ok(Some(n))) => decoder.push(&buf[..n]),
            _ => return None,
        }
    }
}

/// Hello and Join; returns the control stream after Welcome.
async fn enter(
    conn: &Connection,
    room: &str,
    name: &str,
) -> (SendStream, RecvStream, FrameDecoder) {
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    send(&mut tx, &[hello(), join(room, name)]).await;
    let mut decoder = FrameDecoder::new();
    loop {
        match next(&mut rx, &mut decoder, Duration::from_secs(5)).await {
            Some(Message::Welcome { .. }) => return (tx, rx, decoder),
            Some(_) => {}
            None => panic!("no Welcome"),
        }
    }
}

/// The application close code the relay closed `conn` with.
async fn close_code(conn: &Connection, within: Duration) -> u64 {
    match tokio::time::timeout(within, conn.closed()).await {
        Ok(ConnectionError::ApplicationClosed(c)) => c.error_code.into_inner(),
        Ok(other) => panic!("expected an application close, got {other}"),
        Err(_) => panic!("not closed within {within:?}"),
    }
}

fn code(c: ErrorCode) -> u64 {
    u64::from(c.to_u16())
}

/// A client that sends Pings (allowed before Join) and never reads the Pongs: the relay's
/// replies pile up behind the client's closed flow-control window. The relay must close it
/// with SlowReader once its bounded queue is full, instead of queueing without limit.
#[tokio::test]
async fn a_client_that_does_not_read_is_closed_as_a_slow_reader() {
    let relay = relay_with(|c| {
        c.control_rate = 1_000.0;
        c.control_burst = 1_000.0;
    })
    .await;
    let conn = connect_with(&relay, Some(1024)).await.unwrap();
    let (mut tx, _rx_never_read) = conn.open_bi().await.unwrap();
    send(&mut tx, &[hello()]).await;
    let pinger = tokio::spawn(async move {
        for batch in 0..100u64 {
            let pings: Vec<Message> = (0..50).map(|i| ping(batch * 50 + i)).collect();
            let mut out = Vec::new();
            pings.iter().for_each(|m| m.encode(&mut out));
            if tx.write_all(&out).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert_eq!(
        close_code(&conn, Duration::from_secs(10)).await,
        code(ErrorCode::SlowReader)
    );
    pinger.abort();
    assert_eq!(relay.stats().slow_readers, 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        relay.occupancy().0,
        0,
        "the connection is gone from the relay"
    );
}

/// A Ping storm is served at the control rate, not at the attacker's: the reader waits, so
/// the flood is held back by the attacker's own stream window.
#[tokio::test]
async fn control_messages_are_rate_limited_before_join_too() {
    let relay = relay_with(|c| {
        c.control_rate = 50.0;
        c.control_burst = 10.0;
    })
    .await;
    let conn = connect(&relay).await;
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    let start = Instant::now();
    let mut msgs = vec![hello()];
    msgs.extend((0..110).map(ping));
    send(&mut tx, &msgs).await;
    let mut decoder = FrameDecoder::new();
    let mut pongs = 0;
    while pongs < 110 {
        match next(&mut rx, &mut decoder, Duration::from_secs(5)).await {
            Some(Message::Pong { .. }) => pongs += 1,
            Some(_) => {}
            None => panic!("pongs stopped at {pongs}"),
        }
    }
    let took = start.elapsed();
    // 111 messages, 10 at once and then 50 a second: about 2 s.
    assert!(took >= Duration::from_millis(1_800), "{took:?}");
    assert!(relay.stats().control_throttled > 0);
    assert!(conn.close_reason().is_none(), "throttled, not closed");
}

/// A member toggling mute as fast as it can reaches the others at most at its control rate,
/// and repeating a state is not news at all.
#[tokio::test]
async fn a_set_mute_storm_is_not_amplified_to_the_room() {
    let relay = relay_with(|c| {
        c.control_rate = 20.0;
        c.control_burst = 10.0;
    })
    .await;
    let victim = connect(&relay).await;
    let (_vtx, mut vrx, mut vdec) = enter(&victim, "r", "victim").await;
    let attacker = connect(&relay).await;
    let (mut atx, _arx, _) = enter(&attacker, "r", "attacker").await;
    let storm: Vec<Message> = (0..2_000)
        .map(|i| Message::SetMute { muted: i % 4 < 2 })
        .collect();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        send(&mut atx, &storm).await;
        atx
    });
    let mut notices = 0;
    while start.elapsed() < Duration::from_secs(2) {
        if let Some(Message::MuteChanged { .. }) =
            next(&mut vrx, &mut vdec, Duration::from_millis(200)).await
        {
            notices += 1;
        }
    }
    writer.abort();
    // 2 s at 20/s plus a burst of 10 (roster message included), half of them repeats.
    assert!(notices <= 35, "{notices} MuteChanged in 2 s");
    assert!(notices >= 5, "real changes still arrive: {notices}");
}

/// Sixty handshakes at once against a limit of twenty: no more than twenty get a session.
#[tokio::test]
async fn max_connections_holds_for_simultaneous_handshakes() {
    let relay = Arc::new(
        relay_with(|c| {
            c.max_connections = 20;
            c.max_per_address = 0;
        })
        .await,
    );
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let relay = relay.clone();
            tokio::spawn(async move {
                let Ok(conn) = connect_with(&relay, None).await else {
                    return None;
                };
                let (mut tx, mut rx) = conn.open_bi().await.ok()?;
                send(&mut tx, &[hello(), join("crowd", &format!("p{i}"))]).await;
                let mut decoder = FrameDecoder::new();
                loop {
                    if let Message::Welcome { .. } =
                        next(&mut rx, &mut decoder, Duration::from_secs(3)).await?
                    {
                        return Some((conn, tx, rx));
                    }
                }
            })
        })
        .collect();
    let mut welcomed = Vec::new();
    for t in tasks {
        if let Some(session) = t.await.unwrap() {
            welcomed.push(session);
        }
    }
    assert!(
        (1..=20).contains(&welcomed.len()),
        "{} welcomed with a limit of 20",
        welcomed.len()
    );
    assert!(relay.occupancy().0 <= 20);
}

/// A connection that says Hello and then nothing is closed at the join deadline.
#[tokio::test]
async fn hello_without_join_times_out() {
    let relay = relay_with(|c| c.join_timeout = Duration::from_millis(500)).await;
    let conn = connect(&relay).await;
    let (mut tx, _rx) = conn.open_bi().await.unwrap();
    send(&mut tx, &[hello()]).await;
    let start = Instant::now();
    assert_eq!(
        close_code(&conn, Duration::from_secs(5)).await,
        code(ErrorCode::Timeout)
    );
    assert!(start.elapsed() >= Duration::from_millis(400));
    // Pings do not keep the slot either.
    let conn = connect(&relay).await;
    let (mut tx, _rx) = conn.open_bi().await.unwrap();
    send(&mut tx, &[hello()]).await;
    let pinger = tokio::spawn(async move {
        for i in 0.. {
            if tx.write_all(&ping(i).to_frame()).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert_eq!(
        close_code(&conn, Duration::from_secs(5)).await,
        code(ErrorCode::Timeout)
    );
    pinger.abort();
}

/// One address gets its share of slots; more connections from it are refused, others are not.
#[tokio::test]
async fn connections_per_address_are_capped() {
    let relay = relay_with(|c| c.max_per_address = 3).await;
    let mut held = Vec::new();
    for i in 0..3 {
        let conn = connect(&relay).await;
        let session = enter(&conn, "r", &format!("p{i}")).await;
        held.push((conn, session));
    }
    match connect_with(&relay, None).await {
        Err(ConnectionError::ConnectionClosed(c)) => {
            assert_eq!(c.error_code, quinn::TransportErrorCode::CONNECTION_REFUSED)
        }
        Err(e) => panic!("expected CONNECTION_REFUSED, got {e}"),
        Ok(_) => panic!("a fourth connection from one address was accepted"),
    }
    // A slot comes back when its connection goes.
    let (conn, _) = held.pop().unwrap();
    conn.close(0u32.into(), b"bye");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let conn = connect(&relay).await;
    enter(&conn, "r", "again").await;
}

/// A connection gets exactly one bidirectional stream (and no unidirectional ones): a second
/// stream, which the relay would never read, cannot even be opened.
#[tokio::test]
async fn only_the_control_stream_can_be_opened() {
    let relay = relay_with(|_| {}).await;
    let conn = connect(&relay).await;
    let _control = enter(&conn, "r", "p").await;
    let second = tokio::time::timeout(Duration::from_millis(500), conn.open_bi()).await;
    assert!(second.is_err(), "a second bidirectional stream was allowed");
    let uni = tokio::time::timeout(Duration::from_millis(500), conn.open_uni()).await;
    assert!(uni.is_err(), "a unidirectional stream was allowed");
}

/// A client flooding tiny unknown frames after Hello is throttled and still closed at the
/// join deadline (the throttle's waits must not stretch the deadline or switch it off).
#[tokio::test]
async fn a_throttled_flood_still_meets_the_join_deadline() {
    let relay = relay_with(|c| c.join_timeout = Duration::from_millis(500)).await;
    let conn = connect(&relay).await;
    let (mut tx, _rx) = conn.open_bi().await.unwrap();
    send(&mut tx, &[hello()]).await;
    let flood = tokio::spawn(async move {
        let unknown = [0x01u8, 0x30].repeat(4096);
        while tx.write_all(&unknown).await.is_ok() {}
    });
    assert_eq!(
        close_code(&conn, Duration::from_secs(3)).await,
        code(ErrorCode::Timeout)
    );
    flood.abort();
    assert!(relay.stats().control_throttled > 0);
}
