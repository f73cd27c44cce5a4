//! Several data-plane loops (`threads = 2`) over real sockets: the kernel spreads clients over
//! the loops' SO_REUSEPORT sockets by 4-tuple hash, and a room whose members it put on
//! different loops still works — everyone hears everyone once, in order — and so does a
//! client whose new address lands it on the other loop.

mod common;

use common::{client, send_stream};
use natter_proto::media::Datagram;
use natter_relay::{Identity, RelayConfig, RelayHandle};
use std::collections::HashMap;
use std::time::{Duration, Instant};

async fn two_loops() -> RelayHandle {
    let mut config = RelayConfig::new(
        vec!["127.0.0.1:0".parse().unwrap()],
        Identity::generate().unwrap(),
    );
    config.threads = 2;
    natter_relay::start(config).await.unwrap()
}

/// Datagrams each loop read so far.
fn per_loop(relay: &RelayHandle) -> Vec<u64> {
    relay.stats().loop_datagrams
}

/// Reads datagrams on `conn` for `window` and returns the RTP sequence numbers heard from each
/// SSRC, in arrival order.
async fn collect(conn: quinn::Connection, window: Duration) -> HashMap<u32, Vec<u16>> {
    let mut heard: HashMap<u32, Vec<u16>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + window;
    while let Ok(Ok(datagram)) = tokio::time::timeout_at(deadline, conn.read_datagram()).await {
        let parsed = Datagram::parse(&datagram).expect("a media datagram");
        let rtp = parsed.rtp().expect("RTP");
        heard
            .entry(rtp.header.ssrc)
            .or_default()
            .push(rtp.header.sequence);
    }
    heard
}

/// Clients join one room until the kernel has put some on each loop (at least 6); each sends 50
/// packets at 50 a second, and each hears every other member's 50 exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_across_two_loops_hears_everyone_once_in_order() {
    let relay = two_loops().await;
    assert_eq!(per_loop(&relay).len(), 2);
    let addr = relay.local_addrs()[0];
    let fp = relay.fingerprint();
    let mut members = Vec::new();
    // Each client has its own port; 2^-15 is the chance 16 all hash to one socket.
    while members.len() < 6 || (per_loop(&relay).contains(&0) && members.len() < 16) {
        let name = format!("m{}", members.len());
        members.push(client(addr, fp, "room", &name).await);
    }
    let loads = per_loop(&relay);
    assert!(
        loads.iter().all(|n| *n > 0),
        "the kernel put all {} clients on one loop: {loads:?}",
        members.len()
    );
    const TOTAL: u32 = 50;
    let epoch = Instant::now();
    let listeners: Vec<_> = members
        .iter()
        .map(|(_, conn, _)| tokio::spawn(collect(conn.clone(), Duration::from_secs(3))))
        .collect();
    let senders: Vec<_> = members
        .iter()
        .map(|(_, conn, ssrc)| {
            let (conn, ssrc) = (conn.clone(), *ssrc);
            tokio::spawn(async move { send_stream(&conn, ssrc, 50, 80, TOTAL, epoch).await })
        })
        .collect();
    for sender in senders {
        sender.await.unwrap();
    }
    let expected: Vec<u16> = (0..TOTAL as u16).collect();
    for (listener, (_, _, own)) in listeners.into_iter().zip(&members) {
        let heard = listener.await.unwrap();
        assert!(!heard.contains_key(own), "{own} heard itself");
        for (_, _, ssrc) in members.iter().filter(|(_, _, s)| s != own) {
            assert_eq!(
                heard.get(ssrc),
                Some(&expected),
                "{own} hearing {ssrc} (loops read {:?})",
                per_loop(&relay)
            );
        }
    }
}

/// A client moves to a new port (NAT rebinding) until the kernel puts it on the other loop;
/// after every move its room mate hears all it sends, once, in order: the connection belongs
/// to the relay's one endpoint, not to the loop that accepted it, so no stateless reset ends
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_moves_to_the_other_loop_keeps_its_call() {
    let relay = two_loops().await;
    let addr = relay.local_addrs()[0];
    let fp = relay.fingerprint();
    let (moving, a, a_ssrc) = client(addr, fp, "room", "a").await;
    let (_still, b, _) = client(addr, fp, "room", "b").await;
    let mut seen_on = [false, false];
    const BURST: u32 = 100;
    for round in 0..16u32 {
        if round > 0 {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            moving.rebind(socket).unwrap();
        }
        let before = per_loop(&relay);
        let listener = tokio::spawn(collect(b.clone(), Duration::from_secs(2)));
        send_stream(&a, a_ssrc, 200, 80, BURST, Instant::now()).await;
        let heard = listener.await.unwrap();
        let after = per_loop(&relay);
        // `a`'s loop read its burst; the other read at most the room mate's few ACKs.
        let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let on = usize::from(delta[1] > delta[0]);
        seen_on[on] = true;
        let expected: Vec<u16> = (0..BURST as u16).collect();
        assert_eq!(
            heard.get(&a_ssrc),
            Some(&expected),
            "after move {round} (loop {on}, loops read {delta:?})"
        );
        if seen_on == [true, true] {
            return;
        }
    }
    panic!("16 ports all hashed to one loop");
}
