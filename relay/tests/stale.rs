//! Late audio is worse than lost audio: a subscriber whose downlink slows to a third of what the
//! room sends it (a proxy in front of it with a 20 ms drop-tail queue) cannot drain, and what
//! the relay queued for it is dropped as stale — counted — rather than delivered late.
//!
//! The relay runs CUBIC here: it backs off on the bottleneck's drops, so the relay's window is
//! what limits, as on a real slow link. (On this loopback bottleneck BBR keeps sending at the
//! offered rate and the excess is lost in the bottleneck instead; nothing is late either way.)

mod common;

use common::{age, busy_room_config, client, impairment_proxy, send_stream};
use natter_relay::Congestion;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_cannot_drain_gets_fresh_audio_not_late_audio() {
    // 500 datagrams/s of 200 bytes: a busy room, so the connection's window fills quickly
    // once acknowledgements stop.
    let (pps, size, secs) = (500, 200, 5);
    let config = busy_room_config(Congestion::Cubic);
    let stale_after = config.stale_after;

    let relay = natter_relay::start(config).await.unwrap();
    let relay_addr = relay.local_addrs()[0];
    let proxy = impairment_proxy(relay_addr, 0.0, Duration::ZERO, 1).await;
    let fp = relay.fingerprint();
    let (_e1, listener, _) = client(proxy.addr, fp, "dark", "listener").await;
    let (_e2, sender, ssrc) = client(relay_addr, fp, "dark", "sender").await;

    let epoch = Instant::now();
    // (arrival since epoch, age) of every datagram the listener gets.
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    {
        let (listener, arrivals) = (listener.clone(), arrivals.clone());
        tokio::spawn(async move {
            while let Ok(d) = listener.read_datagram().await {
                if let Some(age) = age(&d, epoch) {
                    arrivals.lock().unwrap().push((epoch.elapsed(), age));
                }
            }
        });
    }
    let rate = f64::from(pps) * size as f64 / 3.0;
    let downlink = proxy.downlink.clone();
    let (slow_from, slow_until) = (Duration::from_millis(1500), Duration::from_millis(3500));
    tokio::spawn(async move {
        tokio::time::sleep_until((epoch + slow_from).into()).await;
        *downlink.lock().unwrap() = Some(rate);
        tokio::time::sleep_until((epoch + slow_until).into()).await;
        *downlink.lock().unwrap() = None;
    });
    send_stream(&sender, ssrc, pps, size, pps * secs, epoch).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = relay.stats();
    relay.shutdown(Duration::from_millis(200)).await;

    let arrivals = arrivals.lock().unwrap().clone();
    let count = |from: Duration, to: Duration| {
        arrivals
            .iter()
            .filter(|(at, _)| (from..to).contains(at))
            .count()
    };
    let oldest = arrivals
        .iter()
        .map(|(_, age)| *age)
        .max()
        .unwrap_or_default();
    let slow = count(slow_from, slow_until);
    let after = count(slow_until + Duration::from_millis(200), Duration::MAX);
    println!(
        "received {} in all, {slow} while slow; oldest: {oldest:?}; relay: {stats}",
        arrivals.len()
    );
    // While slow, the listener still gets what fits (up to a third), and afterwards all again.
    assert!(slow > 50, "{slow}");
    assert!(after as f64 > 0.8 * 1.3 * f64::from(pps), "{after}");
    // What could not be sent in time was dropped as stale, and counted.
    assert!(stats.dropped_stale > 0, "{stats}");
    // The relay held nothing much longer than the stale limit: every forwarded datagram went
    // to quinn within it, give or take a timer tick and a task wake-up (40 ms of slack for a
    // loaded machine). The relay's own delay histogram tells.
    let buckets = natter_relay::DELAY_BUCKETS_US;
    let within = buckets
        .iter()
        .position(|b| *b >= (stale_after + Duration::from_millis(40)).as_micros() as u64)
        .expect("a bucket above the stale limit");
    let late: u64 = stats.delay_buckets[within + 1..].iter().sum();
    assert_eq!(
        late, 0,
        "datagrams handed to quinn well after the {stale_after:?} limit, by bucket \
         {buckets:?}: {:?}",
        stats.delay_buckets
    );
    // And nothing arrives late: at most the stale limit plus what the slow path itself adds
    // (its 20 ms queue, a packet's serialisation, the window in flight ahead, ACK delay) and a
    // loaded machine — 250 ms, where a relay that queued through the slowdown would deliver
    // audio up to the full 2 s late.
    let limit = stale_after + Duration::from_millis(250);
    assert!(
        oldest <= limit,
        "a datagram {oldest:?} old arrived (limit {limit:?})"
    );
}
