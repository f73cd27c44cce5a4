//! How sessions end, as docs/PROTOCOL.md §4.4, §5.9 and §6.2 promise a client written from
//! that file alone: Leave or the end of the control stream finish the relay's side of the
//! stream and close with code 0, reason `left`; a client without QUIC datagrams is told why.

mod common;

use natter_proto::control::{ErrorCode, FrameDecoder, Message};
use natter_relay::{Identity, RelayConfig};
use std::time::Duration;

const WITHIN: Duration = Duration::from_secs(5);

async fn relay() -> natter_relay::RelayHandle {
    let config = RelayConfig::new(
        vec!["127.0.0.1:0".parse().unwrap()],
        Identity::generate().unwrap(),
    );
    natter_relay::start(config).await.unwrap()
}

async fn connect(relay: &natter_relay::RelayHandle, datagrams: bool) -> quinn::Connection {
    let transport = (!datagrams).then(|| {
        let mut transport = quinn::TransportConfig::default();
        transport.datagram_receive_buffer_size(None);
        transport
    });
    common::connect_raw(relay.local_addrs()[0], relay.fingerprint(), transport)
        .await
        .1
        .unwrap()
}

/// Opens the control stream, says Hello and joins `room`; returns the stream after Welcome.
async fn join(
    conn: &quinn::Connection,
    room: &str,
) -> (quinn::SendStream, quinn::RecvStream, FrameDecoder) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut out = Vec::new();
    Message::Hello {
        versions: vec![natter_proto::PROTOCOL_VERSION],
        software: "lifecycle-test".into(),
    }
    .encode(&mut out);
    Message::Join {
        room: room.into(),
        name: "tester".into(),
        token: None,
        flags: 0,
    }
    .encode(&mut out);
    send.write_all(&out).await.unwrap();
    let mut decoder = FrameDecoder::new();
    loop {
        match next_message(&mut recv, &mut decoder).await {
            Some(Message::Welcome { .. }) => return (send, recv, decoder),
            Some(_) => {}
            None => panic!("the stream ended before Welcome"),
        }
    }
}

/// The next control message, or None once the relay has finished the stream.
async fn next_message(recv: &mut quinn::RecvStream, decoder: &mut FrameDecoder) -> Option<Message> {
    loop {
        if let Some(msg) = decoder.next_message() {
            return Some(msg.unwrap());
        }
        let mut buf = [0u8; 4096];
        let read = tokio::time::timeout(WITHIN, recv.read(&mut buf))
            .await
            .expect("the relay neither sent nor finished within 5 s")
            .expect("the stream was reset or the connection closed before the stream finished");
        decoder.push(&buf[..read?]);
    }
}

/// The application close the relay ended `conn` with: (code, reason).
async fn closed(conn: &quinn::Connection) -> (u64, String) {
    match tokio::time::timeout(WITHIN, conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => (
            close.error_code.into_inner(),
            String::from_utf8_lossy(&close.reason).into_owned(),
        ),
        other => panic!("expected an application close, got {other:?}"),
    }
}

#[tokio::test]
async fn leave_finishes_the_stream_then_closes_with_left() {
    let relay = relay().await;
    let alice = connect(&relay, true).await;
    let bob = connect(&relay, true).await;
    let (mut a_send, mut a_recv, mut a_dec) = join(&alice, "lobby").await;
    let (_b_send, mut b_recv, mut b_dec) = join(&bob, "lobby").await;

    let mut leave = Vec::new();
    Message::Leave.encode(&mut leave);
    a_send.write_all(&leave).await.unwrap();
    // Alice still gets whatever was queued (Bob's arrival), then the end of the stream…
    while next_message(&mut a_recv, &mut a_dec).await.is_some() {}
    // …then the close, and Bob hears that she left.
    assert_eq!(closed(&alice).await, (0, "left".into()));
    loop {
        match next_message(&mut b_recv, &mut b_dec).await {
            Some(Message::ParticipantLeft { .. }) => break,
            Some(_) => {}
            None => panic!("Bob's stream ended"),
        }
    }
    relay.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn finishing_the_control_stream_ends_the_session_like_leave() {
    let relay = relay().await;
    let alice = connect(&relay, true).await;
    let (mut send, mut recv, mut decoder) = join(&alice, "lobby").await;
    send.finish().unwrap();
    while next_message(&mut recv, &mut decoder).await.is_some() {}
    assert_eq!(closed(&alice).await, (0, "left".into()));
    relay.shutdown(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_client_without_datagrams_is_told_they_are_required() {
    let relay = relay().await;
    let conn = connect(&relay, false).await;
    let (code, reason) = closed(&conn).await;
    assert_eq!(code, u64::from(ErrorCode::ProtocolViolation.to_u16()));
    assert!(reason.contains("datagrams"), "reason: {reason}");
    assert_eq!(relay.stats().control_errors, 1);
    relay.shutdown(Duration::from_millis(100)).await;
}
