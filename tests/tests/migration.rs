//! A client whose address changes mid-call keeps its QUIC connection (connection migration):
//! no leave, no rejoin, and the audio goes on. Two ways the address changes: the client moves
//! its own socket (a network change the OS reports: `Session::rebind`), and a NAT in between
//! switches the source port on its own (`natter_e2e::netem::run_proxy` with `rebind_at`).
//! In process: a relay, a talker sending a steady tone and a listener recording it.

use natter::engine::EngineConfig;
use natter::session::{Audio, LinkStatus, Record, Session, SessionConfig};
use natter_e2e::netem::{Impairment, parse_profile, run_proxy};
use natter_e2e::{rms, unix_now_us};
use natter_proto::invite::Invite;
use std::time::Duration;

const TONE_SECS: f32 = 6.0;
/// When the address changes, seconds into the call.
const MOVE_AT: Duration = Duration::from_secs(2);

fn tone() -> Vec<f32> {
    (0..(TONE_SECS * 48_000.0) as usize)
        .map(|i| 0.3 * (std::f32::consts::TAU * 440.0 * i as f32 / 48_000.0).sin())
        .collect()
}

fn config(invite: Invite, name: &str, input: Vec<f32>, record: Record) -> SessionConfig {
    let mut engine = EngineConfig::new(0);
    engine.voice = natter::apm::VoiceConfig::NONE;
    SessionConfig {
        invite,
        room: "move".into(),
        name: name.into(),
        echo: false,
        audio: Audio::Wav {
            total_samples: (TONE_SECS * 48_000.0) as usize + 48_000,
            input: input.into(),
            record,
        },
        engine,
        // A migration must not need a rejoin: any loss ends the call and fails the test.
        reconnect_for: Some(Duration::ZERO),
    }
}

/// Runs a call in which the talker's address changes at [`MOVE_AT`] (by `change`, given the
/// talker's session), checking every 10 ms that the listener's roster still holds the talker;
/// returns the longest stretch without the tone around the change, in ms.
fn call_across_a_move(via: impl FnOnce(Invite) -> Invite, change: impl FnOnce(&Session)) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let relay = rt
        .block_on(natter_relay::start(natter_relay::RelayConfig::new(
            vec!["127.0.0.1:0".parse().unwrap()],
            natter_relay::Identity::generate().unwrap(),
        )))
        .unwrap();
    let invite = relay.invite();
    let listener = rt
        .block_on(Session::start(config(
            invite.clone(),
            "listener",
            Vec::new(),
            Record::Memory,
        )))
        .unwrap();
    let talker = rt
        .block_on(Session::start(config(
            via(invite),
            "talker",
            tone(),
            Record::Nothing,
        )))
        .unwrap();
    let talker_id = talker.joined().participant_id;
    std::thread::sleep(MOVE_AT);
    let moved_us = unix_now_us();
    change(&talker);
    for _ in 0..200 {
        assert!(
            listener.state().roster.contains_key(&talker_id),
            "the listener's roster lost the talker"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(talker.status(), LinkStatus::Connected);
    assert_eq!(talker.joined().participant_id, talker_id, "no rejoin");
    while !talker.audio_finished() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let heard = rt.block_on(async {
        let talked = talker.leave().await;
        assert!(
            talked.ended_by_relay.is_none(),
            "{:?}",
            talked.ended_by_relay
        );
        let heard = listener.leave().await;
        relay.shutdown(Duration::from_millis(300)).await;
        heard
    });
    assert!(heard.ended_by_relay.is_none(), "{:?}", heard.ended_by_relay);
    // 10 ms blocks from a second before the move to a second after it.
    let at = |us: u64| ((us - heard.audio_start_unix_us) as f64 * 48e-3) as usize;
    let block = 480;
    let from = at(moved_us - 1_000_000);
    let to = at(moved_us + 1_000_000).min(heard.recording.len());
    let mut longest = 0;
    let mut run = 0;
    for i in (from..to - block).step_by(block) {
        if rms(&heard.recording[i..i + block]) < 0.1 {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    longest as f64 * 10.0
}

#[test]
fn a_client_that_rebinds_its_socket_keeps_its_call() {
    let gap = call_across_a_move(
        |invite| invite,
        |talker| {
            talker.rebind().expect("a new socket");
        },
    );
    println!("client rebinding its socket: longest gap {gap:.0} ms");
    // Target 300 ms; generous for a loaded machine.
    assert!(gap <= 600.0, "the tone stopped for {gap:.0} ms");
}

#[test]
fn a_nat_that_changes_the_port_does_not_end_the_call() {
    let gap = call_across_a_move(
        |invite| {
            // The talker reaches the relay through a proxy that switches its source port.
            let relay: std::net::SocketAddr = invite.authority().parse().unwrap();
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.set_nonblocking(true).unwrap();
            let port = socket.local_addr().unwrap().port();
            let clean = parse_profile("").unwrap();
            tokio::spawn(run_proxy(
                tokio::net::UdpSocket::from_std(socket).unwrap(),
                relay,
                Impairment::new(clean, 1),
                Impairment::new(clean, 2),
                Some(MOVE_AT),
                std::future::pending(),
            ));
            Invite { port, ..invite }
        },
        |_| {},
    );
    println!("NAT rebinding in the path: longest gap {gap:.0} ms");
    assert!(gap <= 600.0, "the tone stopped for {gap:.0} ms");
}
