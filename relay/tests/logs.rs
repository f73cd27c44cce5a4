//! Log injection: what a peer sends reaches the text log only after the relay has validated
//! it, and the text log escapes control characters whatever a call site writes.

use natter_proto::control::{FrameDecoder, Message};
use natter_relay::EscapingWriter;
use natter_relay::{Identity, RelayConfig};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The text log, as the binary writes it, captured in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends `msgs` on a fresh connection's control stream and waits until the relay ends it.
async fn session(relay: &natter_relay::RelayHandle, msgs: &[Message]) -> Vec<Message> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(natter_loadgen::client_config(relay.fingerprint()).unwrap());
    let conn = endpoint
        .connect(relay.local_addrs()[0], "natter-relay")
        .unwrap()
        .await
        .unwrap();
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    let mut out = Vec::new();
    msgs.iter().for_each(|m| m.encode(&mut out));
    tx.write_all(&out).await.unwrap();
    let mut decoder = FrameDecoder::new();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(Ok(Some(n))) =
        tokio::time::timeout(Duration::from_secs(2), rx.read(&mut buf)).await
    {
        decoder.push(&buf[..n]);
        while let Some(Ok(m)) = decoder.next_message() {
            got.push(m);
        }
    }
    conn.close(0u32.into(), b"");
    got
}

#[tokio::test]
async fn hostile_names_never_reach_the_log_raw() {
    let log = Captured::default();
    let writer = log.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || EscapingWriter::new(writer.clone(), false))
        .init();
    let relay = natter_relay::start(RelayConfig::new(
        vec!["127.0.0.1:0".parse().unwrap()],
        Identity::generate().unwrap(),
    ))
    .await
    .unwrap();
    let hello = Message::Hello {
        versions: vec![natter_proto::PROTOCOL_VERSION],
        software: "evil\n2026-01-01T00:00:00Z ERROR software FORGED-HELLO \x1b[2J".into(),
    };
    let join = |room: &str, name: &str| Message::Join {
        room: room.into(),
        name: name.into(),
        token: None,
        flags: 0,
    };
    // Refused rooms and names (control characters) are never logged, not even escaped.
    for (room, name) in [
        (
            "lobby\n2026-01-01T00:00:00Z  INFO join room=FORGED-ROOM",
            "bob",
        ),
        ("lobby", "bob\r\x1b[1AFORGED-NAME"),
    ] {
        let got = session(&relay, &[hello.clone(), join(room, name)]).await;
        assert!(
            got.iter().any(|m| matches!(m, Message::Error { .. })),
            "refused: {got:?}"
        );
    }
    // A valid join is logged, after validation.
    let got = session(&relay, &[hello.clone(), join("lobby", "Zoë")]).await;
    assert!(
        got.iter().any(|m| matches!(m, Message::Welcome { .. })),
        "{got:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("join") && text.contains("Zoë"), "{text}");
    assert!(
        !text.contains("FORGED"),
        "unvalidated input was logged:\n{text}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.iter().all(|l| !l.chars().any(char::is_control)),
        "a control character reached the log:\n{text}"
    );
}
