//! Clients of a cluster: on the nearest edge, and on another one when theirs dies. Real relay
//! processes with trunks and a private Redis, real `natter call` processes; the extra delay in
//! front of some edges is the impairment proxy (`natter_e2e::netem`) in this process.

use natter_e2e::netem::{Impairment, parse_profile, run_proxy};
use natter_e2e::redis::{RedisServer, mesh_edge};
use natter_e2e::{
    Call, CallStats, RelayProcess, TempDir, loud_again_unix_us, read_wav, rms, tone_file,
    unix_now_us,
};
use natter_proto::invite::{Edge, Invite};
use std::time::Duration;

const SECRET: &str = "cluster-secret-for-the-edge-tests-0";

fn invite_of(relay: &RelayProcess) -> Invite {
    relay
        .invite()
        .parse()
        .expect("the relay prints a valid invite")
}

/// `relay` as an edge of an invite, reached at `port` on loopback (its own, or a proxy's).
fn edge_at(relay: &RelayProcess, port: u16) -> Edge {
    Edge {
        port,
        ..invite_of(relay).edge()
    }
}

/// A proxy on `rt` adding `delay_ms` each way in front of `relay`; returns its port.
fn delayed(rt: &tokio::runtime::Runtime, relay: &RelayProcess, delay_ms: u32) -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_nonblocking(true).unwrap();
    let port = socket.local_addr().unwrap().port();
    let profile = parse_profile(&format!("delay={delay_ms}")).unwrap();
    let upstream = format!("127.0.0.1:{}", relay.port()).parse().unwrap();
    rt.spawn(async move {
        let socket = tokio::net::UdpSocket::from_std(socket).unwrap();
        let (up, down) = (Impairment::new(profile, 1), Impairment::new(profile, 2));
        run_proxy(socket, upstream, up, down, None, std::future::pending()).await
    });
    port
}

/// Waits until `relay` has read all `n` edges of the cluster from the directory (it tells its
/// clients from then on).
fn wait_for_edges(relay: &RelayProcess, n: u64) {
    let seen = relay.wait_for_log(Duration::from_secs(10), |v| {
        v["fields"]["message"] == "the cluster's edges changed" && v["fields"]["edges"] == n
    });
    assert!(
        seen.is_some(),
        "the relay never listed {n} edges:\n{}",
        relay.log_text()
    );
}

/// An invite naming three edges, two of them 40 ms further away (80 ms round trip) than the
/// third, which it lists last: the client measures them all at once and joins the near one.
#[test]
fn a_client_joins_the_nearest_edge() {
    let redis = RedisServer::start();
    let edges: Vec<RelayProcess> = (1..=3).map(|n| mesh_edge(&redis, n, SECRET)).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let far1 = delayed(&rt, &edges[0], 40);
    let far2 = delayed(&rt, &edges[1], 40);
    let near = edges[2].port();
    let mut invite = invite_of(&edges[0]);
    invite.port = far1;
    invite.edges = vec![edge_at(&edges[1], far2), edge_at(&edges[2], near)];
    let dir = TempDir::new("nearest");
    let bob = Call::new(&invite.to_string(), "near", "bob")
        .recording_in(&dir)
        .duration(2.0)
        .spawn();
    edges[2].wait_for_join("near", "bob");
    let done = bob.finish();
    done.assert_success();
    let chosen = format!("edge 127.0.0.1:{near}: handshake");
    assert!(done.stderr.contains(&chosen), "{done}");
    println!(
        "{}",
        done.stderr.lines().find(|l| l.contains(&chosen)).unwrap()
    );
    let stats = CallStats::read(&dir.join("bob.json"));
    assert_eq!(stats.edges, [format!("127.0.0.1:{near}")]);
}

/// Alice's invite names one edge; the relay tells her the cluster's others. Her edge is
/// SIGKILLed mid-call: she notices the silence, joins the other edge, and Bob (there all
/// along) hears her again within 3 s of the crash (the measured time is printed and kept in
/// docs/BENCHMARKS.md). Both calls end normally.
#[test]
fn a_call_moves_to_another_edge_when_its_edge_dies() {
    const TONE_SECS: f32 = 9.0;
    let redis = RedisServer::start();
    let mut edge_a = mesh_edge(&redis, 1, SECRET);
    let edge_b = mesh_edge(&redis, 2, SECRET);
    wait_for_edges(&edge_a, 2);
    let dir = TempDir::new("move");
    tone_file(&dir.join("alice.wav"), 440.0, 0.3, TONE_SECS);
    let bob = Call::new(edge_b.invite(), "move", "bob")
        .recording_in(&dir)
        .duration(f64::from(TONE_SECS) + 2.0)
        .spawn();
    edge_b.wait_for_join("move", "bob");
    let alice = Call::new(edge_a.invite(), "move", "alice")
        .input(&dir.join("alice.wav"))
        .stats_json(&dir.join("alice.json"))
        .spawn();
    edge_a.wait_for_join("move", "alice");
    std::thread::sleep(Duration::from_secs(3));

    edge_a.kill();
    let killed_us = unix_now_us();
    assert!(edge_a.wait_exit(Duration::from_secs(5)).is_some());
    let moved = edge_b.wait_for_log(Duration::from_secs(5), |v| {
        v["fields"]["message"] == "join" && v["fields"]["name"] == "alice"
    });
    assert!(
        moved.is_some(),
        "Alice did not join edge B within 5 s:\n{}",
        edge_b.log_text()
    );

    let a = alice.finish();
    let b = bob.finish();
    a.assert_success();
    b.assert_success();
    assert!(
        a.stderr
            .contains(&format!("edge 127.0.0.1:{}: handshake", edge_b.port())),
        "{a}"
    );
    let alice_stats = CallStats::read(&dir.join("alice.json"));
    assert_eq!(
        alice_stats.edges,
        [
            format!("127.0.0.1:{}", edge_a.port()),
            format!("127.0.0.1:{}", edge_b.port())
        ]
    );
    let bob_stats = CallStats::read(&dir.join("bob.json"));
    let heard = read_wav(&dir.join("bob-heard.wav"));
    let start = bob_stats.audio_start_unix_us;
    let at = |us: u64| ((us - start) as f64 * 48e-3) as usize;
    assert!(
        rms(&heard[at(killed_us - 1_000_000)..at(killed_us)]) > 0.1,
        "Bob did not hear Alice before the crash"
    );
    // The outage: the first silent 10 ms after the crash (once concealment has faded), then
    // the first loud one after that.
    let block = 480;
    let quiet_from = (at(killed_us)..heard.len() - block)
        .step_by(block)
        .find(|&i| rms(&heard[i..i + block]) < 0.01)
        .expect("the crash left no gap at all");
    let quiet_us = start + (quiet_from as f64 / 48e-3) as u64;
    let back_us =
        loud_again_unix_us(&heard, start, quiet_us, 0.1).expect("Bob never heard Alice again");
    let back_ms = (back_us - killed_us) as f64 / 1e3;
    println!("edge killed → Bob hears Alice again from the other edge after {back_ms:.0} ms");
    assert!(
        back_ms < 3_000.0,
        "Bob heard Alice again {back_ms:.0} ms after her edge died"
    );
}
