//! The data plane (`relay/src/plane/`) serves IPv4 and IPv6 from one loop: a socket per listen
//! address, one room across both, each packet leaving by the socket of its destination's
//! family; on a wildcard bind it answers from the address each client dialled. (The rest of
//! these tests and the end-to-end tests cover what it does for clients.)

mod common;

use common::{client, send_stream};
use natter_proto::media::Datagram;
use natter_relay::{Identity, RelayConfig};
use std::time::{Duration, Instant};

/// Reads datagrams on `conn` until one from `ssrc` arrives.
async fn hears(conn: &quinn::Connection, ssrc: u32) {
    let heard = async {
        loop {
            let datagram = conn.read_datagram().await.expect("connected");
            let parsed = Datagram::parse(&datagram).expect("a media datagram");
            if parsed.sender_ssrc() == Some(ssrc) {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), heard)
        .await
        .expect("a datagram from the other family");
}

/// `a` and `b` speak at once; each hears the other.
async fn talk(a: &quinn::Connection, a_ssrc: u32, b: &quinn::Connection, b_ssrc: u32) {
    let epoch = Instant::now();
    tokio::join!(
        send_stream(a, a_ssrc, 50, 80, 25, epoch),
        send_stream(b, b_ssrc, 50, 80, 25, epoch),
        hears(b, a_ssrc),
        hears(a, b_ssrc),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_loop_serves_ipv4_and_ipv6_in_one_room() {
    let config = RelayConfig::new(
        vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()],
        Identity::generate().unwrap(),
    );
    let relay = natter_relay::start(config).await.unwrap();
    let [v4, v6] = relay.local_addrs() else {
        panic!("two addresses: {:?}", relay.local_addrs());
    };
    assert!(v4.is_ipv4() && v6.is_ipv6());
    let fp = relay.fingerprint();
    let (_e4, a, a_ssrc) = client(*v4, fp, "room", "a").await;
    let (_e6, b, b_ssrc) = client(*v6, fp, "room", "b").await;
    // The loop publishes its occupancy once a round, after the Welcome went out.
    for _ in 0..100 {
        if relay.occupancy() == (2, 1, 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(relay.occupancy(), (2, 1, 2));
    talk(&a, a_ssrc, &b, b_ssrc).await;
    relay.shutdown(Duration::from_secs(2)).await;
    // Told and closed by the loop's goodbye.
    let reason = tokio::time::timeout(Duration::from_secs(5), a.closed())
        .await
        .expect("closed at shutdown");
    assert!(
        matches!(reason, quinn::ConnectionError::ApplicationClosed(_)),
        "{reason:?}"
    );
}

/// On a wildcard bind of a host with several addresses, each client's packets leave from the
/// address it dialled: 127.0.0.2 stands for a second address (all of 127/8 is local), from
/// which the kernel would not choose to send; a QUIC client drops packets from an address it
/// did not dial, so without that no handshake would complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_bind_answers_from_the_dialled_address() {
    let config = RelayConfig::new(
        vec!["0.0.0.0:0".parse().unwrap()],
        Identity::generate().unwrap(),
    );
    let relay = natter_relay::start(config).await.unwrap();
    let port = relay.local_addrs()[0].port();
    let fp = relay.fingerprint();
    let second = std::net::SocketAddr::from(([127, 0, 0, 2], port));
    let first = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (_ea, a, a_ssrc) =
        tokio::time::timeout(Duration::from_secs(10), client(second, fp, "room", "a"))
            .await
            .expect("a handshake at the second address");
    let (_eb, b, b_ssrc) = client(first, fp, "room", "b").await;
    talk(&a, a_ssrc, &b, b_ssrc).await;
    assert_eq!(a.remote_address(), second);
    relay.shutdown(Duration::from_secs(2)).await;
}
