//! `--batched`: every QUIC participant driven from one loop on one thread, through `quinn-proto`
//! directly, the way the relay's data plane drives its connections: each round receives a
//! batch from every client socket that has one (one `poll`, then recvmmsg/GRO), hands it to
//! the one client endpoint, sends what is due, and writes every connection's packets with one
//! `sendmmsg` per socket (`natter_relay::udp_batch`, `natter_relay::timers`: the relay's own
//! I/O and deadline heap). With `--udp` the baseline's plain UDP participants run in the
//! same kind of loop ([`run_udp`]).
//!
//! Why: with a quinn endpoint and tokio tasks per participant, the load generator needed as
//! much CPU as the relay from 600 participants up (docs/BENCHMARKS.md, "Relay capacity"), so a
//! 2-core machine could not show a relay carrying 1,000.
//!
//! What it measures is what the tokio path measures: the same stamped datagrams, the same
//! rooms, the same summary. A datagram is stamped when it is handed to quinn-proto and timed
//! at the moment its batch came out of `recvmmsg`, so the loop's own work on the receiving
//! side is not counted as the relay's.

use crate::{CpuWindow, Measure, Senders, Totals, fanout_join, fanout_join_acked, stamped_rtp};
use anyhow::{Context, bail};
use bytes::Bytes;
use natter_proto::control::{FrameDecoder, Message};
use natter_relay::timers::Timers;
use natter_relay::udp_batch::{BatchSocket, Received, SendBatch, which_readable};
use quinn_proto::{
    ClientConfig, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig, Event,
    StreamEvent, StreamId,
};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Packets one `poll_transmit` may build for one connection (as the relay's plane).
const MAX_DATAGRAMS: usize = 10;

/// Handshakes and joins in flight at once (as the tokio path's batches of 50).
const JOINING_AT_ONCE: usize = 50;

/// How long every participant has to connect and be welcomed.
const JOIN_LIMIT: Duration = Duration::from_secs(60);

/// Longest a batch waits for send-buffer space (as the relay).
const SEND_WAIT: Duration = Duration::from_millis(2);

/// Time for the last datagrams to arrive after the sending phase (as the tokio path).
const DRAIN: Duration = Duration::from_millis(300);

/// Longest the loop sleeps without a deadline.
const IDLE_WAKE: Duration = Duration::from_millis(50);

const FRAME: Duration = Duration::from_millis(20);

/// One participant's connection.
struct Client {
    quic: quinn_proto::Connection,
    ch: ConnectionHandle,
    socket: usize,
    /// Which relay it joined (index into the relays).
    edge: usize,
    room: String,
    name: String,
    control: Option<StreamId>,
    /// Hello and Join, and how much of them quinn-proto took.
    hello: Vec<u8>,
    written: usize,
    decoder: FrameDecoder,
    ssrc: Option<u32>,
    measure: Option<Measure>,
    seq: u16,
    touched: bool,
    lost: bool,
}

/// The loop's state (sans sockets).
struct Driver {
    endpoint: Endpoint,
    clients: Vec<Client>,
    /// Client index by connection handle (`usize::MAX`: none).
    by_handle: Vec<usize>,
    timers: Timers<Instant>,
    touched: Vec<usize>,
    buf: Vec<u8>,
    read: Vec<u8>,
    /// Why the run must stop (a refused join, a connection lost while joining).
    failed: Option<anyhow::Error>,
}

/// What to run: participants in rooms, how many share a UDP socket, for how long, with which
/// payload.
pub struct Plan {
    pub participants: usize,
    pub room_size: usize,
    pub per_socket: usize,
    pub duration: Duration,
    pub payload: usize,
    /// Spread each room's members over the frame ([`phase_slot`]).
    pub interleave: bool,
    /// The first this many members of each room send; the others only listen.
    pub talkers: usize,
}

/// The client sockets: one per `per_socket` participants, with room for bursts. `quic`: they
/// mark ECT(0) themselves, as QUIC asks ([`BatchSocket::new_quic`]); the plain UDP baseline's
/// send without ECN.
fn open_sockets(plan: &Plan, v6: bool, quic: bool) -> anyhow::Result<Vec<BatchSocket>> {
    let bind: SocketAddr = if v6 { "[::]:0" } else { "0.0.0.0:0" }.parse()?;
    let mut sockets = Vec::new();
    for _ in 0..plan.participants.div_ceil(plan.per_socket.max(1)) {
        let socket = UdpSocket::bind(bind)?;
        socket2::SockRef::from(&socket).set_recv_buffer_size(4 << 20)?;
        socket2::SockRef::from(&socket).set_send_buffer_size(4 << 20)?;
        sockets.push(if quic {
            BatchSocket::new_quic(socket)?
        } else {
            BatchSocket::new(socket)?
        });
    }
    Ok(sockets)
}

/// Participant `i`'s place in the frame, of `participants` rounded up to whole rooms of
/// `room_size`: i itself (the members of a room, who are consecutive, send within a room's
/// share of the frame of each other, as the tokio driver spreads them), or with `interleave`
/// the rooms' members spread a room-size-th of the frame apart, so that the datagrams one
/// subscriber gets arrive at different times (real clients' phases are independent; in
/// step, the relay packs a subscriber's datagrams of one round into one packet).
fn phase_slot(i: usize, participants: usize, room_size: usize, interleave: bool) -> usize {
    if interleave {
        (i % room_size) * participants.div_ceil(room_size) + i / room_size
    } else {
        i
    }
}

/// When each participant sends: every 20 ms until the end, from a phase in the first frame
/// ([`phase_slot`]); a late tick is skipped, not sent twice.
struct Schedule {
    due: BinaryHeap<Reverse<(Instant, usize)>>,
    until: Instant,
}

impl Schedule {
    fn new(plan: &Plan, epoch: Instant, until: Instant) -> Self {
        let slots = plan.participants.div_ceil(plan.room_size) * plan.room_size;
        Self {
            due: (0..plan.participants)
                .filter(|i| i % plan.room_size.max(1) < plan.talkers)
                .map(|i| {
                    let slot = phase_slot(i, plan.participants, plan.room_size, plan.interleave);
                    Reverse((epoch + FRAME * slot as u32 / slots.max(1) as u32, i))
                })
                .collect(),
            until,
        }
    }

    /// The next participant due to send at `now`.
    fn pop_due(&mut self, now: Instant) -> Option<usize> {
        let &Reverse((at, i)) = self.due.peek()?;
        if at > now {
            return None;
        }
        self.due.pop();
        let mut then = at + FRAME;
        while then <= now {
            then += FRAME;
        }
        if then < self.until {
            self.due.push(Reverse((then, i)));
        }
        Some(i)
    }

    /// When the next participant sends (`None`: nobody any more).
    fn next(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((at, _))| *at)
    }
}

/// Runs `plan`'s participants as QUIC clients (participant i on `relays[i % n]`) through
/// joining, sending and the drain; counts into `totals`, and `window` measures the sending
/// phase's CPU.
pub fn run(
    relays: &[(SocketAddr, ClientConfig)],
    plan: &Plan,
    totals: &Arc<Totals>,
    window: &mut CpuWindow,
) -> anyhow::Result<()> {
    let Plan {
        participants,
        room_size,
        per_socket,
        duration,
        payload,
        ..
    } = *plan;
    let mut sockets = open_sockets(plan, relays[0].0.is_ipv6(), true)?;
    let mut batches: Vec<SendBatch> = sockets.iter().map(|_| SendBatch::default()).collect();
    let mut driver = Driver {
        endpoint: Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None),
        clients: Vec::with_capacity(participants),
        by_handle: Vec::new(),
        timers: Timers::default(),
        touched: Vec::new(),
        buf: Vec::with_capacity(64 * 1024),
        read: Vec::new(),
        failed: None,
    };
    let started = Instant::now();
    let mut wait = Duration::ZERO;
    // Joining: at most JOINING_AT_ONCE handshakes and joins in flight.
    let mut next = 0;
    let mut all_joined = None;
    let settle = if relays.len() > 1 {
        Duration::from_secs(1)
    } else {
        Duration::ZERO
    };
    loop {
        let now = driver.round(&mut sockets, &mut batches, wait)?;
        if let Some(e) = driver.failed.take() {
            return Err(e);
        }
        let welcomed = driver.clients.iter().filter(|c| c.ssrc.is_some()).count();
        if welcomed == participants {
            // Across several relays, trunks open once the edges have written their rooms to
            // the directory and read back each other's (as the tokio path waits).
            let settled = *all_joined.get_or_insert(now) + settle;
            if now >= settled {
                break;
            }
        }
        if now > started + JOIN_LIMIT {
            bail!("{welcomed} of {participants} participants joined in {JOIN_LIMIT:?}");
        }
        while next < participants && next - welcomed < JOINING_AT_ONCE {
            let edge = next % relays.len();
            let (addr, config) = &relays[edge];
            let (ch, quic) = driver
                .endpoint
                .connect(now, config.clone(), *addr, "natter-relay")
                .context("connect")?;
            driver.add(
                ch,
                Client {
                    quic,
                    ch,
                    socket: next / per_socket.max(1),
                    edge,
                    room: format!("load-{}", next / room_size),
                    name: format!("p{next}"),
                    control: None,
                    hello: Vec::new(),
                    written: 0,
                    decoder: FrameDecoder::new(),
                    ssrc: None,
                    measure: None,
                    seq: 0,
                    touched: false,
                    lost: false,
                },
            );
            next += 1;
        }
        driver.flush(now, &mut batches);
        send(&sockets, &mut batches);
        wait = driver.wait(now, all_joined.map(|t| t + settle));
    }

    let ours: Senders = Arc::new(
        driver
            .clients
            .iter()
            .filter_map(|c| Some((c.ssrc?, c.edge)))
            .collect(),
    );
    let epoch = Instant::now();
    let until = epoch + duration;
    window.start();
    for c in &mut driver.clients {
        c.measure = Some(Measure::new(ours.clone(), c.edge, epoch, totals.clone()));
    }
    let mut schedule = Schedule::new(plan, epoch, until);
    let mut body = vec![0xa5u8; payload.max(8)];
    let mut packet = Vec::with_capacity(256);
    let mut ended = false;
    wait = Duration::ZERO;
    loop {
        let now = driver.round(&mut sockets, &mut batches, wait)?;
        if !ended && now >= until {
            window.end();
            ended = true;
        }
        while let Some(i) = schedule.pop_due(now) {
            driver.send_media(i, epoch, &mut body, &mut packet, totals);
        }
        driver.flush(now, &mut batches);
        send(&sockets, &mut batches);
        if now >= until + DRAIN {
            break;
        }
        wait = driver.wait(now, Some(schedule.next().unwrap_or(until + DRAIN)));
    }

    // Goodbye: each connection's CONNECTION_CLOSE goes out once.
    let now = Instant::now();
    for i in 0..driver.clients.len() {
        driver.clients[i]
            .quic
            .close(now, 0u32.into(), Bytes::from_static(b"done"));
        driver.touch(i);
    }
    driver.flush(now, &mut batches);
    send(&sockets, &mut batches);
    // The measures merge their samples into the totals when dropped.
    drop(driver);
    Ok(())
}

/// Sends each socket's batch; returns how many datagrams the kernel took.
fn send(sockets: &[BatchSocket], batches: &mut [SendBatch]) -> usize {
    let mut sent = 0;
    for (socket, batch) in sockets.iter().zip(batches) {
        sent += batch.len();
        sent -= socket.send(batch, SEND_WAIT);
    }
    sent
}

/// Receives a batch from every socket that has one, waiting up to `wait` when none has;
/// calls `each` with the time the batch arrived, the socket's index and the datagram. Returns
/// that time (now, when nothing came), which is the round's clock.
fn receive(
    sockets: &mut [BatchSocket],
    wait: Duration,
    mut each: impl FnMut(Instant, usize, Received<'_>),
) -> anyhow::Result<Instant> {
    let mut now = None;
    let refs: Vec<&BatchSocket> = sockets.iter().collect();
    let mut ready = vec![false; sockets.len()];
    // One poll says which sockets have something (a recvmmsg on each would mostly find
    // nothing); when none has, the same poll waits.
    if !which_readable(&refs, Some(Duration::ZERO), &mut ready)? {
        which_readable(&refs, Some(wait), &mut ready)?;
    }
    for (s, socket) in sockets.iter_mut().enumerate() {
        if ready[s] {
            socket.recv_now(|d| each(*now.get_or_insert_with(Instant::now), s, d))?;
        }
    }
    Ok(now.unwrap_or_else(Instant::now))
}

/// How many times a UDP participant says `NJ` before the run fails, and how long it waits
/// for the echo each time.
const UDP_JOIN_TRIES: usize = 20;
const UDP_JOIN_WAIT: Duration = Duration::from_millis(200);

/// Runs `plan`'s participants against the plain UDP fan-out at `to` (the benchmark's
/// baseline) with the same batched loop: each joins with `NJ` + room + SSRC until the fan-out
/// echoes it (a lost join must not become a phantom loss), then sends its stamped datagrams;
/// what each socket receives is measured for all its participants.
pub fn run_udp(
    to: SocketAddr,
    plan: &Plan,
    totals: &Arc<Totals>,
    window: &mut CpuWindow,
) -> anyhow::Result<()> {
    let per_socket = plan.per_socket.max(1);
    let mut sockets = open_sockets(plan, to.is_ipv6(), false)?;
    let mut batches: Vec<SendBatch> = sockets.iter().map(|_| SendBatch::default()).collect();
    let ssrc = |i: usize| i as u32 + 1;
    let mut pending: HashSet<u32> = (0..plan.participants).map(ssrc).collect();
    for _ in 0..UDP_JOIN_TRIES {
        for i in 0..plan.participants {
            if pending.contains(&ssrc(i)) {
                let join = fanout_join((i / plan.room_size) as u32, ssrc(i));
                batches[i / per_socket].push(to, &join);
            }
        }
        send(&sockets, &mut batches);
        let deadline = Instant::now() + UDP_JOIN_WAIT;
        let mut now = Instant::now();
        while !pending.is_empty() && now < deadline {
            now = receive(&mut sockets, deadline - now, |_, _, d| {
                if let Some(ssrc) = fanout_join_acked(d.data) {
                    pending.remove(&ssrc);
                }
            })?;
        }
        if pending.is_empty() {
            break;
        }
    }
    if !pending.is_empty() {
        bail!(
            "the UDP fan-out did not acknowledge {} joins",
            pending.len()
        );
    }
    let ours: Senders = Arc::new((0..plan.participants).map(|i| (ssrc(i), 0)).collect());
    let epoch = Instant::now();
    let until = epoch + plan.duration;
    window.start();
    let mut measures: Vec<Measure> = sockets
        .iter()
        .map(|_| Measure::new(ours.clone(), 0, epoch, totals.clone()))
        .collect();
    let mut schedule = Schedule::new(plan, epoch, until);
    let mut body = vec![0xa5u8; plan.payload.max(8)];
    let mut packet = Vec::with_capacity(256);
    let mut seqs = vec![0u16; plan.participants];
    let mut wait = Duration::ZERO;
    let mut ended = false;
    loop {
        let now = receive(&mut sockets, wait, |at, s, d| {
            measures[s].record_at(d.data, at)
        })?;
        if !ended && now >= until {
            window.end();
            ended = true;
        }
        while let Some(i) = schedule.pop_due(now) {
            stamped_rtp(ssrc(i), seqs[i], epoch, &mut body, &mut packet);
            seqs[i] = seqs[i].wrapping_add(1);
            batches[i / per_socket].push(to, &packet);
        }
        let sent = send(&sockets, &mut batches);
        totals.sent.fetch_add(sent as u64, Relaxed);
        if now >= until + DRAIN {
            return Ok(());
        }
        let next = schedule.next().unwrap_or(until + DRAIN);
        wait = next.saturating_duration_since(now).min(IDLE_WAKE);
    }
}

impl Driver {
    fn add(&mut self, ch: ConnectionHandle, client: Client) {
        if ch.0 >= self.by_handle.len() {
            self.by_handle.resize(ch.0 + 1, usize::MAX);
        }
        self.by_handle[ch.0] = self.clients.len();
        self.clients.push(client);
        self.touch(self.clients.len() - 1);
    }

    fn touch(&mut self, i: usize) {
        if !std::mem::replace(&mut self.clients[i].touched, true) {
            self.touched.push(i);
        }
    }

    /// Receives a batch from every socket (waiting up to `wait` when none has one), hands
    /// each datagram to its connection, and runs the deadlines that are due; returns the
    /// time the datagrams arrived, which is the round's clock.
    fn round(
        &mut self,
        sockets: &mut [BatchSocket],
        batches: &mut [SendBatch],
        wait: Duration,
    ) -> anyhow::Result<Instant> {
        let now = receive(sockets, wait, |at, s, d| {
            self.handle(at, d, &mut batches[s])
        })?;
        while let Some(ch) = self.timers.pop_due(now) {
            let i = self.by_handle[ch];
            if i != usize::MAX {
                self.clients[i].quic.handle_timeout(now);
                self.touch(i);
            }
        }
        Ok(now)
    }

    fn handle(&mut self, now: Instant, d: Received<'_>, out: &mut SendBatch) {
        let event = d.to_endpoint(&mut self.endpoint, now, &mut self.buf);
        match event {
            Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                if let Some(&i) = self.by_handle.get(ch.0).filter(|i| **i != usize::MAX) {
                    self.clients[i].quic.handle_event(event);
                    self.touch(i);
                    self.process(i, now);
                }
            }
            Some(DatagramEvent::Response(t)) => out.push_transmit(&t, &self.buf),
            // A client endpoint accepts no connections.
            Some(DatagramEvent::NewConnection(incoming)) => self.endpoint.ignore(incoming),
            None => {}
        }
    }

    /// A connection's events: the handshake done (open the control stream, say Hello and
    /// Join), control messages (the Welcome; the rest read and let go), media (measured).
    fn process(&mut self, i: usize, now: Instant) {
        let c = &mut self.clients[i];
        while let Some(event) = c.quic.poll() {
            match event {
                Event::Connected => {
                    let Some(id) = c.quic.streams().open(Dir::Bi) else {
                        continue;
                    };
                    c.control = Some(id);
                    Message::Hello {
                        versions: vec![natter_proto::PROTOCOL_VERSION],
                        software: "natter-loadgen".into(),
                    }
                    .encode(&mut c.hello);
                    Message::Join {
                        room: c.room.clone(),
                        name: c.name.clone(),
                        token: None,
                        flags: 0,
                    }
                    .encode(&mut c.hello);
                }
                Event::Stream(StreamEvent::Readable { id }) => {
                    read_control(c, id, &mut self.read, &mut self.failed)
                }
                Event::DatagramReceived => {
                    while let Some(d) = c.quic.datagrams().recv() {
                        if let Some(m) = &mut c.measure {
                            m.record_at(&d, now);
                        }
                    }
                }
                Event::ConnectionLost { reason } => {
                    c.lost = true;
                    if c.ssrc.is_none() && self.failed.is_none() {
                        self.failed =
                            Some(anyhow::anyhow!("{}: connection lost: {reason}", c.name));
                    }
                }
                _ => {}
            }
        }
    }

    /// A datagram from participant `i`, stamped now.
    fn send_media(
        &mut self,
        i: usize,
        epoch: Instant,
        body: &mut [u8],
        packet: &mut Vec<u8>,
        totals: &Totals,
    ) {
        let c = &mut self.clients[i];
        let (Some(ssrc), false) = (c.ssrc, c.lost) else {
            return;
        };
        stamped_rtp(ssrc, c.seq, epoch, body, packet);
        c.seq = c.seq.wrapping_add(1);
        // Dropping the oldest queued datagram when quinn-proto's buffer is full, as quinn's
        // `send_datagram` does for the tokio path.
        if c.quic
            .datagrams()
            .send(Bytes::copy_from_slice(packet), true)
            .is_ok()
        {
            totals
                .sent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.touch(i);
    }

    /// Every touched connection: its events, its control bytes written, its packets into its
    /// socket's batch, its endpoint events handled, its next deadline scheduled.
    fn flush(&mut self, now: Instant, batches: &mut [SendBatch]) {
        let mut touched = std::mem::take(&mut self.touched);
        for &i in &touched {
            self.clients[i].touched = false;
            self.process(i, now);
            let Driver {
                endpoint,
                clients,
                by_handle,
                timers,
                buf,
                ..
            } = self;
            let c = &mut clients[i];
            if let Some(id) = c.control
                && c.written < c.hello.len()
                && let Ok(n) = c.quic.send_stream(id).write(&c.hello[c.written..])
            {
                c.written += n;
            }
            loop {
                buf.clear();
                let Some(t) = c.quic.poll_transmit(now, MAX_DATAGRAMS, buf) else {
                    break;
                };
                batches[c.socket].push_transmit(&t, buf);
            }
            let mut again = false;
            while let Some(event) = c.quic.poll_endpoint_events() {
                if event.is_drained() {
                    by_handle[c.ch.0] = usize::MAX;
                }
                // What the endpoint answers (new connection IDs) goes out next round.
                if let Some(event) = endpoint.handle_event(c.ch, event) {
                    c.quic.handle_event(event);
                    again = true;
                }
            }
            if by_handle[c.ch.0] == usize::MAX {
                timers.schedule(c.ch.0, None);
            } else {
                timers.schedule(c.ch.0, c.quic.poll_timeout());
                if again {
                    c.touched = true;
                    self.touched.push(i);
                }
            }
        }
        touched.clear();
        if self.touched.is_empty() {
            self.touched = touched;
        }
    }

    /// How long the loop may sleep: until the next deadline or `next` (the next send).
    fn wait(&mut self, now: Instant, next: Option<Instant>) -> Duration {
        if !self.touched.is_empty() {
            return Duration::ZERO;
        }
        [self.timers.earliest(), next]
            .into_iter()
            .flatten()
            .min()
            .map_or(IDLE_WAKE, |t| t.saturating_duration_since(now))
            .min(IDLE_WAKE)
    }
}

/// Reads what the control stream has: the Welcome gives the participant its SSRC; an Error
/// before it fails the run; everything else (who joined, who speaks) is read and let go so the
/// relay never sees a slow reader.
fn read_control(
    c: &mut Client,
    id: StreamId,
    read: &mut Vec<u8>,
    failed: &mut Option<anyhow::Error>,
) {
    let mut stream = c.quic.recv_stream(id);
    let Ok(mut chunks) = stream.read(true) else {
        return;
    };
    while let Ok(Some(chunk)) = chunks.next(usize::MAX) {
        if c.ssrc.is_none() {
            read.clear();
            read.extend_from_slice(&chunk.bytes);
            c.decoder.push(read);
        }
    }
    let _ = chunks.finalize();
    while c.ssrc.is_none() {
        match c.decoder.next_message() {
            Some(Ok(Message::Welcome { ssrc, .. })) => c.ssrc = Some(ssrc),
            Some(Ok(Message::Error { code, message })) => {
                *failed = Some(anyhow::anyhow!(
                    "{}: join refused: {} ({message})",
                    c.name,
                    code.describe()
                ));
                return;
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                *failed = Some(anyhow::anyhow!("{}: bad control message: {e}", c.name));
                return;
            }
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{FRAME, Plan, Schedule, phase_slot};
    use std::time::{Duration, Instant};

    /// With `talkers` 2, only the first two members of each room (rooms of 5, 5 and 2) are
    /// ever due, once per frame.
    #[test]
    fn only_each_rooms_first_talkers_send() {
        let plan = Plan {
            participants: 12,
            room_size: 5,
            per_socket: 1,
            duration: Duration::from_secs(1),
            payload: 80,
            interleave: true,
            talkers: 2,
        };
        let epoch = Instant::now();
        let mut schedule = Schedule::new(&plan, epoch, epoch + FRAME);
        let mut due = Vec::new();
        while let Some(i) = schedule.pop_due(epoch + FRAME) {
            due.push(i);
        }
        due.sort_unstable();
        assert_eq!(due, [0, 1, 5, 6, 10, 11]);
    }

    /// Every participant gets its own slot either way; interleaved, the members of a room are
    /// a room-size-th of the frame apart (here 3 rooms of 5 minus one: slots 3 apart).
    #[test]
    fn interleaved_phases_spread_each_room_over_the_frame() {
        let slots = |interleave| -> Vec<usize> {
            (0..14).map(|i| phase_slot(i, 14, 5, interleave)).collect()
        };
        assert_eq!(slots(false), (0..14).collect::<Vec<_>>());
        let spread = slots(true);
        assert_eq!(&spread[..5], &[0, 3, 6, 9, 12]);
        assert_eq!(&spread[5..10], &[1, 4, 7, 10, 13]);
        assert_eq!(&spread[10..], &[2, 5, 8, 11]);
        let mut sorted = spread.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 14);
        assert!(sorted.iter().all(|s| *s < 15));
    }
}
