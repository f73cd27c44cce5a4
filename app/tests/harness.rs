//! Whole calls in memory, in the manner of quinn-proto's `Pair`: the client's cores (control
//! session, RTCP session, reconnect policy, rate controller) and the relay's `RelayCore`, wired
//! through a simulated network (per-path delay, jitter that reorders datagrams, random loss)
//! with a fake clock. No sockets, no threads, no sleeping: a minute of call runs in
//! milliseconds and the same seed gives the same call.

use natter::engine::rtcp::{ListenerReport, Now, RtcpSession};
use natter::rate::{FrameMode, RateController};
use natter::session::reconnect::{ReconnectPolicy, Verdict, is_fatal};
use natter::transport::ConnectError;
use natter::transport::control::core::{ControlCore, Event, Phase};
use natter::transport::control::{CallState, ChatLine, JoinRequest, Joined};
use natter_proto::control::{FrameDecoder, Message};
use natter_proto::media::{Datagram, PacketKind, write_rtcp, write_rtp};
use natter_proto::rtcp::{SenderInfo, ntp, parse_compound};
use natter_proto::rtp::RtpHeader;
use natter_relay::core::{Close, ConnId, Limits, RelayCore};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a client waits without hearing the relay before its connection counts as lost
/// (the real client's QUIC idle timeout).
const IDLE_TIMEOUT_MS: u64 = 6_000;

/// A deterministic xorshift generator for loss and jitter.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One client's path to the relay (the same both ways).
#[derive(Clone, Copy)]
struct Path {
    delay_ms: u64,
    /// Datagrams get 0..jitter_ms extra delay each, so they can overtake each other; the
    /// control stream's bytes too, but in order (a reliable stream over the same path).
    jitter_ms: u64,
    /// Share of datagrams lost, each way.
    loss: f64,
}

enum Payload {
    /// Bytes of the control stream (reliable and ordered, like a QUIC stream).
    Control(Vec<u8>),
    Datagram(Vec<u8>),
}

struct InFlight {
    at_ms: u64,
    /// Which relay incarnation the packet belongs to: a restart drops what was in flight.
    epoch: u32,
    to_relay: bool,
    client: usize,
    payload: Payload,
}

struct Client {
    name: String,
    path: Path,
    /// Its wall clock reads this at simulated time 0 (clients disagree by seconds).
    clock_offset_us: u64,
    speaks: bool,
    conn: Option<ConnId>,
    control: Option<ControlCore>,
    rtcp: Option<RtcpSession>,
    joined: Option<Joined>,
    policy: ReconnectPolicy,
    rate: RateController,
    rate_changes: u32,
    last_heard_ms: u64,
    seq: u16,
    /// RTP packets received, by sender SSRC.
    received: HashMap<u32, u64>,
    listener_reports: Vec<ListenerReport>,
    /// Chat lines as its control core reported them (sent and received).
    chat: Vec<ChatLine>,
    joins: u32,
    /// When its control stream last delivered, towards it and towards the relay (ms).
    control_at: [u64; 2],
}

struct World {
    relay: RelayCore<usize>,
    relay_epoch: u32,
    /// The relay's control-stream decoders, by connection.
    decoders: HashMap<ConnId, FrameDecoder>,
    next_conn: ConnId,
    clients: Vec<Client>,
    in_flight: Vec<InFlight>,
    now_ms: u64,
    t0: Instant,
    rng: Rng,
    /// The control stream's jitter, drawn apart so that datagrams' loss and jitter stay
    /// what they were for a seed.
    stream_rng: Rng,
}

impl World {
    fn new(seed: u64) -> Self {
        Self {
            relay: RelayCore::new("natter-relay/harness", Limits::default()),
            relay_epoch: 0,
            decoders: HashMap::new(),
            next_conn: 1,
            clients: Vec::new(),
            in_flight: Vec::new(),
            now_ms: 0,
            t0: Instant::now(),
            rng: Rng(seed | 1),
            stream_rng: Rng((seed ^ 0x5EED) | 1),
        }
    }

    fn instant(&self) -> Instant {
        self.t0 + Duration::from_millis(self.now_ms)
    }

    fn add(&mut self, name: &str, path: Path, speaks: bool) -> usize {
        let i = self.clients.len();
        self.clients.push(Client {
            name: name.into(),
            path,
            clock_offset_us: 1_700_000_000_000_000 + i as u64 * 3_700_000,
            speaks,
            conn: None,
            control: None,
            rtcp: None,
            joined: None,
            policy: ReconnectPolicy::new(None),
            rate: RateController::new(FrameMode::Standard),
            rate_changes: 0,
            last_heard_ms: 0,
            seq: 0,
            received: HashMap::new(),
            listener_reports: Vec::new(),
            chat: Vec::new(),
            joins: 0,
            control_at: [0; 2],
        });
        self.open(i);
        i
    }

    /// The client connects (the QUIC handshake is taken as done) and starts its control
    /// session.
    fn open(&mut self, i: usize) {
        let conn = self.next_conn;
        self.next_conn += 1;
        self.relay.connect(conn, i, self.now_ms);
        self.decoders.insert(conn, FrameDecoder::new());
        let now = self.instant();
        let c = &mut self.clients[i];
        let request = JoinRequest {
            room: "lobby".into(),
            name: c.name.clone(),
            token: None,
            echo: false,
        };
        let unix_us = c.clock_offset_us + self.now_ms * 1000;
        c.conn = Some(conn);
        c.control = Some(ControlCore::new(request, now, unix_us));
        c.last_heard_ms = self.now_ms;
    }

    fn send(&mut self, to_relay: bool, client: usize, payload: Payload) {
        let path = self.clients[client].path;
        let mut at = self.now_ms + path.delay_ms;
        if let Payload::Datagram(_) = payload {
            if self.rng.next() < path.loss {
                return;
            }
            at += (self.rng.next() * path.jitter_ms as f64) as u64;
        } else if path.jitter_ms > 0 {
            at += (self.stream_rng.next() * path.jitter_ms as f64) as u64;
            let last = &mut self.clients[client].control_at[usize::from(to_relay)];
            at = at.max(*last);
            *last = at;
        }
        self.in_flight.push(InFlight {
            at_ms: at,
            epoch: self.relay_epoch,
            to_relay,
            client,
            payload,
        });
    }

    /// The relay crashes and comes back at once with nothing: every connection and room is
    /// gone, and what was in flight is lost. Clients notice only by hearing nothing. Like a
    /// real relay process, the new one salts its SSRCs differently.
    fn restart_relay(&mut self) {
        self.relay_epoch += 1;
        self.relay = RelayCore::new("natter-relay/harness", Limits::default())
            .with_ssrc_salt(self.relay_epoch);
        self.decoders.clear();
    }

    fn relay_receives(&mut self, client: usize, payload: Payload) {
        let Some(conn) = self.clients[client].conn else {
            return;
        };
        if !self.decoders.contains_key(&conn) {
            return;
        }
        match payload {
            Payload::Control(bytes) => {
                let decoder = self.decoders.get_mut(&conn).expect("checked");
                decoder.push(&bytes);
                let mut messages = Vec::new();
                while let Some(Ok(msg)) = decoder.next_message() {
                    messages.push(msg);
                }
                for msg in messages {
                    let outcome = self.relay.on_message(conn, msg, self.now_ms);
                    for (to, msg) in outcome.sends {
                        self.send(false, to, Payload::Control(msg.to_frame()));
                    }
                    if let Some(Close::Error(code, message)) = outcome.close {
                        let error = Message::Error { code, message };
                        self.send(false, client, Payload::Control(error.to_frame()));
                        self.decoders.remove(&conn);
                        for (to, msg) in self.relay.disconnect(conn) {
                            self.send(false, to, Payload::Control(msg.to_frame()));
                        }
                    }
                }
            }
            Payload::Datagram(bytes) => {
                let targets: Vec<usize> = match self.relay.route(conn, &bytes, self.now_ms) {
                    Ok(to) => to.copied().collect(),
                    Err(_) => return,
                };
                for to in targets {
                    self.send(false, to, Payload::Datagram(bytes.clone()));
                }
            }
        }
    }

    fn client_receives(&mut self, i: usize, payload: Payload) {
        let now = self.instant();
        let now_ms = self.now_ms as f64;
        let c = &mut self.clients[i];
        c.last_heard_ms = self.now_ms;
        match payload {
            Payload::Control(bytes) => {
                if let Some(control) = c.control.as_mut() {
                    control.handle_input(&bytes, now);
                }
            }
            Payload::Datagram(bytes) => {
                let Some(rtcp) = c.rtcp.as_mut() else { return };
                let d = Datagram::parse(&bytes).expect("the relay forwards what parses");
                match d.kind {
                    PacketKind::Rtp => {
                        let h = d.rtp().expect("parsed by the relay").header;
                        rtcp.on_rtp(h.ssrc, h.sequence, h.timestamp, now_ms);
                        *c.received.entry(h.ssrc).or_default() += 1;
                    }
                    PacketKind::Rtcp => {
                        let wall = Now {
                            ms: now_ms,
                            unix_us: c.clock_offset_us + self.now_ms * 1000,
                        };
                        for p in parse_compound(d.packet).expect("parsed by the relay") {
                            if let Some(report) = rtcp.on_rtcp(&p, now_ms, wall) {
                                c.listener_reports.push(report);
                                if c.rate
                                    .on_report(
                                        report.from,
                                        report.fraction_lost,
                                        report.rtt_ms,
                                        now_ms,
                                    )
                                    .is_some()
                                {
                                    c.rate_changes += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// What each client's cores want done at this moment.
    fn drive_client(&mut self, i: usize) {
        let now = self.instant();
        let now_ms = self.now_ms;
        // A relay that went silent for the idle timeout is gone (QUIC would say "timed out").
        let c = &mut self.clients[i];
        if let Some(control) = c.control.as_mut()
            && now_ms - c.last_heard_ms >= IDLE_TIMEOUT_MS
        {
            control.handle_closed(Some(ConnectError::Lost("timed out".into())));
        }
        if let Some(control) = c.control.as_mut() {
            if control.poll_timeout().is_some_and(|t| t <= now) {
                control.handle_timeout(now);
            }
            let mut frames = Vec::new();
            while let Some(frame) = control.poll_transmit() {
                frames.push(frame);
            }
            let mut events = Vec::new();
            while let Some(e) = control.poll_event() {
                events.push(e);
            }
            for frame in frames {
                self.send(true, i, Payload::Control(frame));
            }
            for event in events {
                self.on_event(i, event);
            }
        }
        // Reconnect when the policy says so.
        let c = &mut self.clients[i];
        if c.control.is_none() && c.policy.handle_timeout(now) {
            self.open(i);
        }
        self.media(i);
    }

    fn on_event(&mut self, i: usize, event: Event) {
        let now = self.instant();
        let now_ms = self.now_ms as f64;
        let c = &mut self.clients[i];
        match event {
            Event::Joined { joined, .. } => {
                c.policy.on_connected();
                match c.rtcp.as_mut() {
                    Some(rtcp) => rtcp.rejoined(joined.ssrc),
                    None => c.rtcp = Some(RtcpSession::new(joined.ssrc, now_ms)),
                }
                c.joined = Some(joined);
                c.joins += 1;
            }
            Event::Changed => {}
            Event::Chat(line) => c.chat.push(line),
            Event::Ended(error) => {
                let fatal = is_fatal(&error);
                // Lost while in the call, or an attempt to rejoin that failed.
                let verdict = if c.joined.is_some() {
                    c.policy.on_lost(now, error.to_string(), fatal)
                } else {
                    c.policy.on_attempt_failed(now, error.to_string(), fatal)
                };
                c.control = None;
                c.conn = None;
                c.joined = None;
                assert!(matches!(verdict, Verdict::RetryAt(_)), "{error}");
            }
        }
    }

    /// A speaking client sends a 20 ms RTP packet every 20 ms; every client sends its RTCP
    /// report when due.
    fn media(&mut self, i: usize) {
        let now_ms = self.now_ms;
        let c = &mut self.clients[i];
        let (Some(joined), Some(rtcp)) = (c.joined.as_ref(), c.rtcp.as_mut()) else {
            return;
        };
        let mut out = Vec::new();
        if c.speaks && now_ms.is_multiple_of(20) {
            let header = RtpHeader {
                marker: false,
                payload_type: 111,
                sequence: c.seq,
                timestamp: (now_ms * 48) as u32,
                ssrc: joined.ssrc,
                audio_level: None,
            };
            c.seq = c.seq.wrapping_add(1);
            let mut d = Vec::new();
            write_rtp(&header, &[0xfc, 0xff, 0xfe], &mut d);
            out.push(d);
        }
        if now_ms as f64 >= rtcp.poll_timeout() {
            let wall = Now {
                ms: now_ms as f64,
                unix_us: c.clock_offset_us + now_ms * 1000,
            };
            let info = c.speaks.then(|| SenderInfo {
                ntp_timestamp: ntp::from_unix_micros(wall.unix_us),
                rtp_timestamp: (now_ms * 48) as u32,
                packet_count: u32::from(c.seq),
                octet_count: u32::from(c.seq) * 3,
            });
            if let Some(packets) = rtcp.poll_report(wall, info, None) {
                let mut d = Vec::new();
                write_rtcp(&packets, &mut d);
                out.push(d);
            }
        }
        for d in out {
            self.send(true, i, Payload::Datagram(d));
        }
    }

    /// Runs the world for `ms` simulated milliseconds, 1 ms at a time.
    fn run(&mut self, ms: u64) {
        let until = self.now_ms + ms;
        while self.now_ms < until {
            self.now_ms += 1;
            let now = self.now_ms;
            let epoch = self.relay_epoch;
            let (due, rest): (Vec<InFlight>, Vec<InFlight>) = std::mem::take(&mut self.in_flight)
                .into_iter()
                .partition(|p| p.at_ms <= now);
            self.in_flight = rest;
            for p in due {
                // Packets of a relay that restarted meet nobody.
                if p.epoch != epoch {
                    continue;
                }
                if p.to_relay {
                    self.relay_receives(p.client, p.payload);
                } else {
                    self.client_receives(p.client, p.payload);
                }
            }
            for i in 0..self.clients.len() {
                self.drive_client(i);
            }
        }
    }

    fn client(&self, name: &str) -> &Client {
        self.clients
            .iter()
            .find(|c| c.name == name)
            .expect("a client")
    }
}

fn path(delay_ms: u64) -> Path {
    Path {
        delay_ms,
        jitter_ms: 0,
        loss: 0.0,
    }
}

#[test]
fn join_roster_and_relay_round_trip() {
    let mut w = World::new(1);
    w.add("alice", path(10), false);
    w.add("bob", path(25), false);
    w.run(3_000);
    for (name, one_way) in [("alice", 10.0), ("bob", 25.0)] {
        let c = w.client(name);
        let control = c.control.as_ref().expect("connected");
        assert_eq!(control.phase(), Phase::InCall, "{name}");
        let names: Vec<&str> = control
            .state()
            .roster
            .values()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, ["alice", "bob"], "{name}'s roster");
        let rtt = control.state().relay_rtt_ms.expect("a ping answered");
        assert!((rtt - 2.0 * one_way).abs() < 1.5, "{name}: relay RTT {rtt}");
    }
    assert_eq!(w.relay.participant_count(), 2);
}

/// The train of pings before Join measures each client's own round trip's spread, and the
/// relay tells each client every other member's uplink spread, from the same pings: where a
/// listener's jitter buffer starts a talker's stream.
#[test]
fn everyone_learns_their_own_paths_spread_and_each_talkers_uplink() {
    let mut w = World::new(11);
    let jittery = Path {
        delay_ms: 20,
        jitter_ms: 20,
        loss: 0.0,
    };
    w.add("alice", jittery, false);
    w.add("bob", path(10), false);
    w.run(3_000);
    let state = |name: &str| {
        let c = w.client(name);
        c.control.as_ref().expect("connected").state().clone()
    };
    let (alice, bob) = (state("alice"), state("bob"));
    let id = |s: &CallState, name: &str| {
        s.roster
            .values()
            .find(|p| p.name == name)
            .expect("in the roster")
            .id
    };
    let alice_own = alice.relay_rtt_spread_ms.expect("alice measured");
    assert!(
        (8.0..=40.0).contains(&alice_own),
        "alice's round trip spread {alice_own}"
    );
    assert_eq!(bob.relay_rtt_spread_ms, Some(0.0));
    let alice_up = bob.uplink_spread_ms[&id(&bob, "alice")];
    assert!(
        (5.0..=20.0).contains(&alice_up),
        "alice's uplink as bob heard it: {alice_up}"
    );
    assert_eq!(alice.uplink_spread_ms[&id(&alice, "bob")], 0.0);
}

/// A chat message goes from one control core through the relay core to the others in the
/// room, named by the roster, and comes back to its writer as its own line.
#[test]
fn chat_reaches_everyone_else_in_the_room() {
    let mut w = World::new(3);
    let alice = w.add("alice", path(10), false);
    w.add("bob", path(25), false);
    w.add("carol", path(40), false);
    w.run(2_000);
    w.clients[alice]
        .control
        .as_mut()
        .expect("alice is connected")
        .send_chat("  hello, room  ");
    w.run(500);
    let line = |from: &str, own| ChatLine {
        from: from.into(),
        text: "hello, room".into(),
        own,
    };
    assert_eq!(w.client("alice").chat, [line("alice", true)]);
    assert_eq!(w.client("bob").chat, [line("alice", false)]);
    assert_eq!(w.client("carol").chat, [line("alice", false)]);
}

#[test]
fn reports_give_round_trips_loss_and_rate_decisions() {
    let mut w = World::new(7);
    w.add("alice", path(15), true);
    w.add(
        "bob",
        Path {
            delay_ms: 30,
            jitter_ms: 25,
            loss: 0.12,
        },
        false,
    );
    w.run(20_000);
    let alice = w.client("alice");
    let bob = w.client("bob");
    let bob_ssrc = bob.joined.as_ref().unwrap().ssrc;
    let alice_ssrc = alice.joined.as_ref().unwrap().ssrc;
    // Bob heard Alice's stream, reordered and lossy, and reported on it.
    let heard = bob.received[&alice_ssrc];
    assert!((800..940).contains(&heard), "bob got {heard} of ~1000");
    let listeners = alice.rtcp.as_ref().unwrap().listeners();
    let about_bob = listeners
        .iter()
        .find(|l| l.ssrc == bob_ssrc)
        .expect("bob reports");
    // Alice → relay → Bob → relay → Alice: 2 × (15 + 30) ms plus Bob's jitter on his legs.
    let rtt = about_bob.rtt_ms.expect("a round trip");
    assert!((90.0..150.0).contains(&rtt), "rtt {rtt}");
    let reported_loss: f64 = alice
        .listener_reports
        .iter()
        .filter(|r| r.from == bob_ssrc)
        .map(|r| r.fraction_lost)
        .sum::<f64>()
        / alice.listener_reports.len().max(1) as f64;
    // 12 % nominal on Bob's downlink; the realized share moves a point or two with the seed
    // and with when the call starts (the join waits for its ping train).
    assert!(
        (0.09..0.35).contains(&reported_loss),
        "loss {reported_loss}"
    );
    // A loss this heavy moves the rate controller off its clean-network tier.
    assert!(alice.rate_changes >= 1, "no rate decision");
    assert!(alice.rate.settings().expected_loss_pct > 0);
}

#[test]
fn a_relay_restart_is_survived_by_reconnecting() {
    let mut w = World::new(3);
    w.add("alice", path(10), true);
    w.add("bob", path(12), false);
    w.run(3_000);
    w.restart_relay();
    // Each notices the idle timeout after the last packet it heard (up to a second before
    // the crash), then retries within half a second.
    w.run(IDLE_TIMEOUT_MS - 1_100);
    assert_eq!(w.relay.participant_count(), 0, "nobody noticed yet");
    w.run(2_000);
    assert_eq!(w.relay.participant_count(), 2, "both rejoined");
    let alice = w.client("alice");
    assert_eq!(alice.joins, 2);
    // Audio flows again under the SSRC of the new membership (a restarted relay numbers
    // participants from 1 again, so it may even be the old one: the RTCP sessions started
    // afresh, so nothing from before confuses them).
    let received_before: u64 = w.client("bob").received.values().sum();
    w.run(2_000);
    let ssrc = w.client("alice").joined.as_ref().unwrap().ssrc;
    let bob = w.client("bob");
    assert!(bob.received[&ssrc] >= 95, "{:?}", bob.received);
    assert!(bob.received.values().sum::<u64>() > received_before + 95);
    let roster = &bob.control.as_ref().unwrap().state().roster;
    assert_eq!(roster.len(), 2);
}

#[test]
fn the_same_seed_gives_the_same_call() {
    let run = || {
        let mut w = World::new(42);
        w.add(
            "alice",
            Path {
                delay_ms: 20,
                jitter_ms: 30,
                loss: 0.1,
            },
            true,
        );
        w.add(
            "bob",
            Path {
                delay_ms: 5,
                jitter_ms: 10,
                loss: 0.05,
            },
            true,
        );
        w.run(5_000);
        w.clients
            .iter()
            .map(|c| (c.received.values().sum::<u64>(), c.listener_reports.len()))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(), run());
}
