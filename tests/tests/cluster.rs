//! Relays in a cluster: the directory on a private Redis (unix socket, no TCP port), relays
//! as real processes.

use natter_e2e::redis::{RedisServer, mesh_edge};
use natter_e2e::{
    Call, CallStats, RelayProcess, TempDir, find_signal_windows, read_wav, rms, signal_file,
    tone_file, unix_now_us,
};
use natter_relay::cluster::directory::RelayRecord;
use natter_relay::cluster::store::Store;
use std::time::{Duration, Instant};

/// Reads the directory the way another relay would.
struct Reader {
    runtime: tokio::runtime::Runtime,
    store: Store,
}

impl Reader {
    fn new(redis: &RedisServer) -> Self {
        Self {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            store: Store::open(&redis.url()).unwrap(),
        }
    }

    /// Live relays by id (empty while Redis is unreachable).
    fn relays(&mut self) -> Vec<RelayRecord> {
        let now = unix_now_us() / 1000;
        let mut relays = self
            .runtime
            .block_on(self.store.relays(now))
            .unwrap_or_default();
        relays.sort_by(|a, b| a.id.cmp(&b.id));
        relays
    }

    fn ids(&mut self) -> Vec<String> {
        self.relays().into_iter().map(|r| r.id).collect()
    }

    fn room(&mut self, room: &str) -> Vec<String> {
        let now = unix_now_us() / 1000;
        let mut ids = self
            .runtime
            .block_on(self.store.room_relays(room, now))
            .unwrap_or_default();
        ids.sort();
        ids
    }

    /// Polls `read` until it returns `want`; how long that took, or a panic after `within`.
    #[track_caller]
    fn wait_for<T: PartialEq + std::fmt::Debug>(
        &mut self,
        within: Duration,
        want: T,
        mut read: impl FnMut(&mut Self) -> T,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let got = read(self);
            if got == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "after {within:?} the directory says {got:?}, not {want:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn ids(names: &[&str]) -> Vec<String> {
    names.iter().map(|n| n.to_string()).collect()
}

fn edge(redis: &RedisServer, id: &str, region: &str, ttl_secs: u32) -> RelayProcess {
    RelayProcess::start_with(&[
        "--directory",
        &redis.url(),
        "--relay-id",
        id,
        "--region",
        region,
        "--directory-ttl",
        &ttl_secs.to_string(),
    ])
}

/// Three edges register (address, fingerprint, region, load); the rooms they host members of
/// are listed while they do; an edge killed outright disappears within its TTL without
/// anyone deleting it, and one stopped gracefully withdraws at once.
#[test]
fn edges_register_their_rooms_and_a_dead_edge_expires() {
    const TTL: u32 = 3;
    let redis = RedisServer::start();
    let mut reader = Reader::new(&redis);
    let mut edges: Vec<RelayProcess> = ["eu", "us", "asia"]
        .iter()
        .enumerate()
        .map(|(i, region)| edge(&redis, &format!("edge-{i}"), region, TTL))
        .collect();
    reader.wait_for(
        Duration::from_secs(5),
        ids(&["edge-0", "edge-1", "edge-2"]),
        |r| r.ids(),
    );
    for (record, relay) in reader.relays().iter().zip(&edges) {
        assert_eq!(record.addr, format!("127.0.0.1:{}", relay.port()));
        assert_eq!(record.fingerprint, relay.fingerprint_hex());
        assert_eq!(record.load, 0);
    }
    assert_eq!(reader.relays()[2].region, "asia");

    // A member on edge-1: the room is listed there within a moment (not at the next beat).
    let dir = TempDir::new("directory");
    tone_file(&dir.join("tone.wav"), 440.0, 0.3, 4.0);
    let call = Call::new(edges[1].invite(), "friday", "alice")
        .input(&dir.join("tone.wav"))
        .spawn();
    edges[1].wait_for_join("friday", "alice");
    let listed = reader.wait_for(Duration::from_secs(2), ids(&["edge-1"]), |r| {
        r.room("friday")
    });
    println!("room listed {listed:?} after the join");
    reader.wait_for(Duration::from_secs(3), 1, |r| {
        r.relays()
            .iter()
            .find(|x| x.id == "edge-1")
            .map_or(0, |x| x.load)
    });
    call.finish();
    reader.wait_for(Duration::from_secs(2), Vec::<String>::new(), |r| {
        r.room("friday")
    });

    // SIGKILL: nobody deletes edge-2's entries; they expire.
    let killed = Instant::now();
    edges[2].kill();
    let gone = reader.wait_for(
        Duration::from_secs(u64::from(TTL) + 2),
        ids(&["edge-0", "edge-1"]),
        |r| r.ids(),
    );
    assert!(killed.elapsed() <= Duration::from_secs(u64::from(TTL) + 2));
    println!("a killed edge left the directory {gone:?} after the kill (TTL {TTL} s)");
    assert_eq!(redis.cli(&["EXISTS", "natter:relay:edge-2"]), "0");

    // SIGTERM: a drained edge withdraws itself at once.
    edges[0].stop();
    let withdrawn = reader.wait_for(Duration::from_secs(1), ids(&["edge-1"]), |r| r.ids());
    println!("a stopped edge left the directory {withdrawn:?} after its exit");
}

/// Redis stopped mid-call: a call across two edges goes on without a gap (media and the
/// trunk never wait on the directory); Redis back, empty: the edges register themselves and
/// their room again, and a new member on a third edge, which needs the directory to find the
/// others, joins and hears the call.
#[test]
fn a_call_goes_on_while_redis_is_down() {
    const TONE_SECS: f32 = 9.0;
    let mut redis = RedisServer::start();
    let mut reader = Reader::new(&redis);
    let edge_a = mesh_edge(&redis, 1, SECRET);
    let relay = mesh_edge(&redis, 2, SECRET);
    reader.wait_for(Duration::from_secs(5), ids(&["edge-1", "edge-2"]), |r| {
        r.ids()
    });
    let dir = TempDir::new("redis-down");
    tone_file(&dir.join("alice.wav"), 440.0, 0.3, TONE_SECS);
    let bob = Call::new(relay.invite(), "lobby", "bob")
        .recording_in(&dir)
        .duration(f64::from(TONE_SECS) + 2.0)
        .spawn();
    relay.wait_for_join("lobby", "bob");
    // Alice on the other edge: Bob hears her over the trunk.
    let alice = Call::new(edge_a.invite(), "lobby", "alice")
        .input(&dir.join("alice.wav"))
        .stats_json(&dir.join("alice.json"))
        .spawn();
    edge_a.wait_for_join("lobby", "alice");
    let alice_joined_us = unix_now_us();
    std::thread::sleep(Duration::from_secs(2));

    redis.kill();
    assert!(
        relay
            .wait_for_log(Duration::from_secs(5), |v| {
                v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("directory unreachable"))
            })
            .is_some(),
        "the relay did not notice; log:\n{}",
        relay.log_text()
    );
    std::thread::sleep(Duration::from_secs(2));
    redis.restart();
    let back = reader.wait_for(Duration::from_secs(5), ids(&["edge-1", "edge-2"]), |r| {
        r.ids()
    });
    println!("re-registered {back:?} after Redis came back");
    reader.wait_for(Duration::from_secs(2), ids(&["edge-1", "edge-2"]), |r| {
        r.room("lobby")
    });
    let edge_c = mesh_edge(&redis, 3, SECRET);
    let carol = Call::new(edge_c.invite(), "lobby", "carol")
        .stats_json(&dir.join("carol.json"))
        .duration(2.0)
        .spawn();
    edge_c.wait_for_join("lobby", "carol");
    carol.finish();
    alice.finish();
    bob.finish();
    let carol_stats = CallStats::read(&dir.join("carol.json"));
    assert!(
        carol_stats
            .peers
            .iter()
            .any(|p| p.name.as_deref() == Some("alice") && p.packets_received > 20),
        "Carol, joining after the outage, did not hear Alice: {carol_stats:#?}"
    );

    // Bob heard Alice's tone in every 100 ms from half a second after she joined until it
    // ended, the outage included.
    let bob_stats = CallStats::read(&dir.join("bob.json"));
    let alice_stats = CallStats::read(&dir.join("alice.json"));
    let heard = read_wav(&dir.join("bob-heard.wav"));
    let at = |us: u64| ((us - bob_stats.audio_start_unix_us) as f64 * 48e-3) as usize;
    let from = at(alice_joined_us + 500_000);
    let to = at(alice_stats.audio_start_unix_us + (f64::from(TONE_SECS) * 1e6) as u64 - 300_000);
    let quiet: Vec<usize> = (from..to.min(heard.len()))
        .step_by(4_800)
        .filter(|&i| rms(&heard[i..(i + 4_800).min(heard.len())]) < 0.1)
        .map(|i| (i - from) / 48)
        .collect();
    assert!(
        quiet.is_empty(),
        "Bob's audio had holes at {quiet:?} ms (of {} ms)",
        (to - from) / 48
    );
}

const SECRET: &str = "cluster-secret-for-the-tests-0123";

/// One room over three edges: Alice speaks on edge 1; Bob and Bea listen on edge 2, Carol on
/// edge 3. Everyone hears her (cross-correlation), everyone's roster names everyone (Alice
/// names her listeners from the RTCP reports that came back over the trunks), each of Alice's
/// datagrams crosses the trunk to edge 2 once although two listen there, and a second room on
/// the same edges hears nothing of the first.
#[test]
fn a_room_spans_three_edges() {
    const SPEECH_SECS: f32 = 8.0;
    let redis = RedisServer::start();
    let mut edges: Vec<RelayProcess> = (1..=3).map(|n| mesh_edge(&redis, n, SECRET)).collect();
    let mut reader = Reader::new(&redis);
    reader.wait_for(
        Duration::from_secs(5),
        ids(&["edge-1", "edge-2", "edge-3"]),
        |r| r.ids(),
    );
    let dir = TempDir::new("mesh");
    let speech = signal_file("speech", &dir.join("alice.wav"), SPEECH_SECS, 11);
    let listen = |edge: &RelayProcess, room: &str, name: &str| {
        let call = Call::new(edge.invite(), room, name)
            .recording_in(&dir)
            .duration(f64::from(SPEECH_SECS) + 4.0)
            .spawn();
        edge.wait_for_join(room, name);
        call
    };
    let bob = listen(&edges[1], "mesh", "bob");
    let bea = listen(&edges[1], "mesh", "bea");
    let carol = listen(&edges[2], "mesh", "carol");
    let erin = listen(&edges[1], "other", "erin");
    let dave = listen(&edges[0], "other", "dave");
    // Every edge with a member of "mesh" is in the directory before Alice starts.
    reader.wait_for(Duration::from_secs(3), ids(&["edge-2", "edge-3"]), |r| {
        r.room("mesh")
    });
    let alice = Call::new(edges[0].invite(), "mesh", "alice")
        .input(&dir.join("alice.wav"))
        .stats_json(&dir.join("alice.json"))
        .spawn();
    edges[0].wait_for_join("mesh", "alice");
    let joined = Instant::now();
    alice.finish();
    println!("Alice's call took {:?} after her join", joined.elapsed());
    for call in [bob, bea, carol, erin, dave] {
        call.finish();
    }
    let alice_stats = CallStats::read(&dir.join("alice.json"));
    for name in ["bob", "bea", "carol"] {
        let stats = CallStats::read(&dir.join(&format!("{name}.json")));
        let heard = read_wav(&dir.join(&format!("{name}-heard.wav")));
        let m = find_signal_windows(&speech, &alice_stats, &heard, &stats, 500.0, 300.0, 500.0);
        println!("{name} hears Alice across the trunk: {m}");
        assert!(m.median_score() >= 0.6, "{name} did not hear Alice: {m}");
        assert!(
            stats
                .peers
                .iter()
                .any(|p| p.name.as_deref() == Some("alice")),
            "{name}'s roster lacks Alice: {stats:#?}"
        );
    }
    let mut listeners: Vec<&str> = alice_stats
        .listeners
        .iter()
        .filter_map(|l| l.name.as_deref())
        .collect();
    listeners.sort_unstable();
    assert_eq!(listeners, ["bea", "bob", "carol"], "{alice_stats:#?}");
    for name in ["erin", "dave"] {
        let stats = CallStats::read(&dir.join(&format!("{name}.json")));
        let heard: Vec<&str> = stats
            .peers
            .iter()
            .filter_map(|p| p.name.as_deref())
            .collect();
        assert!(
            !heard.contains(&"alice"),
            "{name}, in another room, heard Alice"
        );
    }
    // Edge 2 got Alice's stream once over the trunk (plus Carol's and Alice's RTCP), and gave
    // it to both of its listeners.
    let edge2 = edges[1].stop();
    let sent = alice_stats.packets_sent;
    println!(
        "edge 2: {} datagrams in over trunks, {} forwarded to its members; Alice sent {sent}",
        edge2.trunk_in, edge2.forwarded
    );
    assert!(
        edge2.trunk_in >= sent * 9 / 10 && edge2.trunk_in < sent * 13 / 10,
        "{edge2:?}"
    );
    assert!(edge2.forwarded >= 2 * sent * 9 / 10, "{edge2:?}");
    for edge in &mut edges {
        edge.terminate();
    }
}

/// A relay with another cluster secret is refused by the mesh: its member in the same room
/// hears nobody, and the others never hear of it.
#[test]
fn a_relay_without_the_secret_is_refused() {
    let redis = RedisServer::start();
    let good = mesh_edge(&redis, 1, SECRET);
    let intruder = mesh_edge(&redis, 2, "some-other-secret-0123456789");
    let dir = TempDir::new("intruder");
    tone_file(&dir.join("tone.wav"), 440.0, 0.3, 4.0);
    let eve = Call::new(intruder.invite(), "mesh", "eve")
        .recording_in(&dir)
        .duration(6.0)
        .spawn();
    intruder.wait_for_join("mesh", "eve");
    let alice = Call::new(good.invite(), "mesh", "alice")
        .input(&dir.join("tone.wav"))
        .stats_json(&dir.join("alice.json"))
        .spawn();
    good.wait_for_join("mesh", "alice");
    let refused = |relay: &RelayProcess, what: &str| {
        relay.wait_for_log(Duration::from_secs(5), |v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with(what))
        })
    };
    assert!(
        refused(&good, "refused a trunk").is_some()
            || refused(&intruder, "refused a trunk").is_some(),
        "nobody refused; logs:\n{}\n{}",
        good.log_text(),
        intruder.log_text()
    );
    alice.finish();
    eve.finish();
    let eve_stats = CallStats::read(&dir.join("eve.json"));
    assert!(eve_stats.peers.is_empty(), "{eve_stats:#?}");
    let alice_stats = CallStats::read(&dir.join("alice.json"));
    assert!(alice_stats.listeners.is_empty(), "{alice_stats:#?}");
    assert!(rms(&read_wav(&dir.join("eve-heard.wav"))) < 0.01);
}
