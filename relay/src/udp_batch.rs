//! Batched UDP I/O for an event loop that serves many peers from one socket: receive up to
//! [`quinn_udp::BATCH_SIZE`] datagrams per system call (recvmmsg, GRO, through `quinn-udp`), and
//! send the datagrams for *many* destinations with one `sendmmsg`.
//!
//! Why: in a voice relay every forwarded packet goes to a different peer, so per-destination
//! batching (GSO) alone saves nothing; one `sendmsg` per packet was a third of the relay's CPU
//! (docs/BENCHMARKS.md). `quinn-udp` has no cross-destination send, hence the `sendmmsg` here.
//! On systems without `sendmmsg` the batch goes out one `send_to` at a time (and without
//! source addresses or ECN).
//!
//! Each received datagram carries the address it was sent to and its ECN codepoint (quinn-udp
//! asks the kernel for them: IP_PKTINFO / IPV6_RECVPKTINFO, IP_RECVTOS / IPV6_RECVTCLASS), and
//! each datagram to send may name its source address and ECN codepoint ([`Route`]): a QUIC
//! server on a wildcard bind of a multi-homed host must answer from the address the client
//! wrote to (or the client's QUIC drops the answer as coming from an unknown peer), and ECN
//! lets congestion control see queues build before they drop packets.

pub use quinn_udp::EcnCodepoint;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

/// The most datagrams one `sendmmsg` call takes (the kernel's UIO_MAXIOV is 1024; larger
/// batches are split).
pub const SEND_BATCH: usize = 256;

/// One received datagram (a GRO super-buffer is split into its segments before it is handed
/// out).
#[derive(Debug)]
pub struct Received<'a> {
    pub from: SocketAddr,
    /// The local address it was sent to (`None` where the system does not say).
    pub dst_ip: Option<IpAddr>,
    pub ecn: Option<EcnCodepoint>,
    pub data: &'a [u8],
}

impl Received<'_> {
    /// Hands the datagram to a quinn-proto endpoint at `now` (its destination address and
    /// ECN codepoint with it); what the endpoint answers at once is written to `buf`.
    pub fn to_endpoint(
        &self,
        endpoint: &mut quinn_proto::Endpoint,
        now: std::time::Instant,
        buf: &mut Vec<u8>,
    ) -> Option<quinn_proto::DatagramEvent> {
        buf.clear();
        let ecn = self
            .ecn
            .and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8));
        endpoint.handle(
            now,
            self.from,
            self.dst_ip,
            ecn,
            bytes::BytesMut::from(self.data),
            buf,
        )
    }
}

/// Where a datagram goes, from which local address, with which ECN codepoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub to: SocketAddr,
    /// The source address (`None`: the kernel picks one, which on a wildcard bind of a
    /// multi-homed host need not be the address the peer wrote to).
    pub src_ip: Option<IpAddr>,
    pub ecn: Option<EcnCodepoint>,
}

impl From<SocketAddr> for Route {
    fn from(to: SocketAddr) -> Self {
        Self {
            to,
            src_ip: None,
            ecn: None,
        }
    }
}

/// A non-blocking UDP socket read and written in batches.
#[derive(Debug)]
pub struct BatchSocket {
    socket: UdpSocket,
    state: quinn_udp::UdpSocketState,
    /// One receive buffer per message of a batch, each large enough for a GRO super-buffer.
    bufs: Vec<Vec<u8>>,
    meta: Vec<quinn_udp::RecvMeta>,
    /// The kernel refused a datagram with an ECN control message (Linux before 3.13 does):
    /// send without ECN from then on, as quinn-udp does.
    no_ecn: AtomicBool,
    /// What the socket puts on every datagram by itself, so that only the exceptions need
    /// control messages ([`Defaults`]).
    defaults: Defaults,
}

/// What a socket marks every datagram with unless a control message says otherwise.
///
/// Why: a control message costs the kernel per datagram, and two of them (source address and
/// ECN, 56 bytes) no longer fit the 36 bytes `sendmsg` keeps on its stack, so each datagram
/// also paid a `kmalloc` and `kfree` and the hardened-usercopy checks. Leaving out what the
/// socket does anyway cut the relay's CPU per forwarded datagram by ≈ 2.5 % with independent
/// talkers (docs/BENCHMARKS.md, "Issue 13 where it ends").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
// Read only by the `sendmmsg` path, which is Linux's.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct Defaults {
    /// The one address the socket is bound to (`None` for a wildcard bind): the source of
    /// everything it sends, so a datagram from that address needs no IP_PKTINFO.
    bound: Option<IpAddr>,
    /// Whether the socket marks ECT(0) itself (IP_TOS / IPV6_TCLASS set on it), so that only
    /// datagrams with another codepoint, or none, need an ECN control message.
    ect0: bool,
}

#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
impl Defaults {
    /// The control messages a datagram for `route` needs: its ECN codepoint as the TOS /
    /// traffic-class byte (`ecn` false: the kernel refused those, none at all) and its source
    /// address, each only where it differs from what the socket does anyway.
    fn needed(self, route: &Route, ecn: bool) -> (Option<i32>, Option<IpAddr>) {
        let marked = if self.ect0 {
            Some(EcnCodepoint::Ect0)
        } else {
            None
        };
        let tos = (ecn && route.ecn != marked).then(|| route.ecn.map_or(0, |c| c as i32));
        let source = route.src_ip.filter(|ip| Some(*ip) != self.bound);
        (tos, source)
    }
}

/// Size of each receive buffer: a GRO batch of the segments quinn-udp asks for, 1500 bytes each.
const RECV_BUF: usize = 64 * 1024;

impl BatchSocket {
    /// Takes over `socket` (made non-blocking).
    pub fn new(socket: UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        let batch = quinn_udp::BATCH_SIZE;
        let ip = socket.local_addr()?.ip();
        Ok(Self {
            socket,
            state,
            bufs: vec![vec![0u8; RECV_BUF]; batch],
            meta: vec![quinn_udp::RecvMeta::default(); batch],
            no_ecn: AtomicBool::new(false),
            defaults: Defaults {
                bound: (!ip.is_unspecified()).then_some(ip),
                ect0: false,
            },
        })
    }

    /// [`BatchSocket::new`] for a QUIC endpoint: the socket itself marks ECT(0), which QUIC
    /// asks for on every packet of a path whose ECN works, so only the others carry an ECN
    /// control message. Where the system refuses that, it is [`BatchSocket::new`].
    pub fn new_quic(socket: UdpSocket) -> io::Result<Self> {
        let mut this = Self::new(socket)?;
        this.defaults.ect0 = mark_ect0(&this.socket);
        Ok(this)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Receives what is waiting, one batch, and calls `each` per datagram; waits up to
    /// `timeout` (`None`: indefinitely) when nothing is. Returns the number of datagrams
    /// (0: timed out or interrupted).
    pub fn recv(
        &mut self,
        timeout: Option<Duration>,
        mut each: impl FnMut(Received<'_>),
    ) -> io::Result<usize> {
        let n = self.recv_now(&mut each)?;
        if n > 0 || !wait(&[&self.socket], Readiness::Read, timeout, None)? {
            return Ok(n);
        }
        self.recv_now(each)
    }

    /// Receives one batch if one is waiting, without waiting (0: nothing was).
    pub fn recv_now(&mut self, mut each: impl FnMut(Received<'_>)) -> io::Result<usize> {
        let n = match self.try_recv() {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(e),
        };
        let mut count = 0;
        for (buf, meta) in self.bufs.iter().zip(&self.meta).take(n) {
            let stride = meta.stride.max(1);
            for data in buf[..meta.len].chunks(stride) {
                count += 1;
                each(Received {
                    from: meta.addr,
                    dst_ip: meta.dst_ip,
                    ecn: meta.ecn,
                    data,
                });
            }
        }
        Ok(count)
    }

    fn try_recv(&mut self) -> io::Result<usize> {
        let mut slices: Vec<io::IoSliceMut<'_>> = self
            .bufs
            .iter_mut()
            .map(|b| io::IoSliceMut::new(b))
            .collect();
        loop {
            match self
                .state
                .recv((&self.socket).into(), &mut slices, &mut self.meta)
            {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // A previous send's ICMP error surfaces on the next receive: not ours to act on.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                other => return other,
            }
        }
    }

    /// Sends everything in `batch` (emptying it), in order, waiting up to `max_wait` in all
    /// for send-buffer space when the kernel has none. Returns how many datagrams were
    /// dropped because they could not be sent (no space in time, or an error for that
    /// destination).
    pub fn send(&self, batch: &mut SendBatch, max_wait: Duration) -> usize {
        let dropped = send_all(self, batch, max_wait, SEND_BATCH);
        batch.clear();
        dropped
    }

    /// Like [`BatchSocket::send`], but one system call per datagram, as quinn's drivers do
    /// across connections: the benchmark's measure of what batching saves.
    pub fn send_one_by_one(&self, batch: &mut SendBatch, max_wait: Duration) -> usize {
        let dropped = send_all(self, batch, max_wait, 1);
        batch.clear();
        dropped
    }
}

/// Datagrams to send, each with its [`Route`], packed into one buffer.
#[derive(Debug, Default)]
pub struct SendBatch {
    bytes: Vec<u8>,
    /// (route, end offset in `bytes`) per datagram.
    items: Vec<(Route, usize)>,
}

impl SendBatch {
    /// Adds a datagram for `route` (a destination alone: the kernel picks the source, no ECN).
    pub fn push(&mut self, route: impl Into<Route>, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        self.items.push((route.into(), self.bytes.len()));
    }

    /// Adds the packets of a quinn-proto `Transmit` whose bytes are `buf` (several when
    /// quinn-proto built a GSO batch, each its own entry), from the source address and with
    /// the ECN codepoint quinn-proto asked for.
    pub fn push_transmit(&mut self, t: &quinn_proto::Transmit, buf: &[u8]) {
        let route = Route {
            to: t.destination,
            src_ip: t.src_ip,
            ecn: t.ecn.and_then(|e| EcnCodepoint::from_bits(e as u8)),
        };
        let segment = t.segment_size.unwrap_or(t.size).max(1);
        for packet in buf[..t.size].chunks(segment) {
            self.push(route, packet);
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
    }

    /// (route, bytes) of each datagram, in order.
    pub fn iter(&self) -> impl Iterator<Item = (Route, &[u8])> {
        let starts = std::iter::once(0).chain(self.items.iter().map(|(_, end)| *end));
        self.items
            .iter()
            .zip(starts)
            .map(|((to, end), start)| (*to, &self.bytes[start..*end]))
    }
}

/// Waits until any of `sockets` has something to receive, up to `timeout` (`None`:
/// indefinitely); false if it timed out. For a loop serving several sockets with
/// [`BatchSocket::recv_now`].
pub fn wait_readable(sockets: &[&BatchSocket], timeout: Option<Duration>) -> io::Result<bool> {
    let raw: Vec<&UdpSocket> = sockets.iter().map(|s| &s.socket).collect();
    wait(&raw, Readiness::Read, timeout, None)
}

/// Like [`wait_readable`], and sets `ready[i]` to whether `sockets[i]` has something to
/// receive: a loop serving many sockets then reads only those (one `poll` instead of one
/// `recvmmsg` per socket, most of which would find nothing).
pub fn which_readable(
    sockets: &[&BatchSocket],
    timeout: Option<Duration>,
    ready: &mut [bool],
) -> io::Result<bool> {
    let raw: Vec<&UdpSocket> = sockets.iter().map(|s| &s.socket).collect();
    wait(&raw, Readiness::Read, timeout, Some(ready))
}

#[derive(Debug, Clone, Copy)]
enum Readiness {
    Read,
    Write,
}

/// Waits until one of `sockets` is readable or writable, up to `timeout`; false if it timed
/// out. `ready`, when given, says which.
#[cfg(unix)]
fn wait(
    sockets: &[&UdpSocket],
    what: Readiness,
    timeout: Option<Duration>,
    ready: Option<&mut [bool]>,
) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut fds: Vec<libc::pollfd> = sockets
        .iter()
        .map(|socket| libc::pollfd {
            fd: socket.as_raw_fd(),
            events: match what {
                Readiness::Read => libc::POLLIN,
                Readiness::Write => libc::POLLOUT,
            },
            revents: 0,
        })
        .collect();
    let ms = timeout.map_or(-1, |t| {
        // Round up: a 0.4 ms timer must not become a busy loop of 0 ms polls.
        t.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int
    });
    // SAFETY: valid pollfds, and their count.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if let Some(ready) = ready {
            ready.fill(false);
        }
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    if let Some(ready) = ready {
        for (r, fd) in ready.iter_mut().zip(&fds) {
            *r = fd.revents != 0;
        }
    }
    Ok(n > 0)
}

#[cfg(not(unix))]
fn wait(
    sockets: &[&UdpSocket],
    what: Readiness,
    timeout: Option<Duration>,
    ready: Option<&mut [bool]>,
) -> io::Result<bool> {
    // No poll(2): sleep a little and let the caller try every socket.
    let _ = (sockets, what);
    if let Some(ready) = ready {
        ready.fill(true);
    }
    std::thread::sleep(
        timeout
            .unwrap_or(Duration::from_millis(1))
            .min(Duration::from_millis(1)),
    );
    Ok(true)
}

/// Room for one datagram's control messages: the source address (`in6_pktinfo`, 20 bytes)
/// and the ECN codepoint (an `int`), each after a 16-byte header and padded to 8 bytes.
#[cfg(target_os = "linux")]
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; 64]);

/// Sets the socket's own TOS / traffic-class byte to ECT(0) (on an IPv6 socket both, for its
/// IPv4-mapped peers); false where the system refuses.
#[cfg(target_os = "linux")]
fn mark_ect0(socket: &UdpSocket) -> bool {
    set_tos(socket, EcnCodepoint::Ect0 as u32)
}

#[cfg(not(target_os = "linux"))]
fn mark_ect0(_socket: &UdpSocket) -> bool {
    false
}

/// Sets the TOS / traffic-class byte the socket puts on what it sends.
#[cfg(target_os = "linux")]
fn set_tos(socket: &UdpSocket, tos: u32) -> bool {
    let sock = socket2::SockRef::from(socket);
    match socket.local_addr() {
        Ok(SocketAddr::V4(_)) => sock.set_tos(tos).is_ok(),
        // IPv4-mapped peers' datagrams go out with the IPv4 byte: both or neither.
        Ok(SocketAddr::V6(_)) => {
            let both = sock.set_tclass_v6(tos).is_ok() && sock.set_tos(tos).is_ok();
            if !both && tos != 0 {
                set_tos(socket, 0);
            }
            both
        }
        Err(_) => false,
    }
}

/// Fills `control` with what `route` needs beyond the socket's [`Defaults`]: its source address
/// and ECN codepoint (IP_PKTINFO / IPV6_PKTINFO, IP_TOS / IPV6_TCLASS, as quinn-udp writes
/// them; `ecn` false: no ECN message) and points `hdr` at it (or at nothing).
#[cfg(target_os = "linux")]
fn encode_control(
    hdr: &mut libc::msghdr,
    control: &mut Control,
    route: &Route,
    ecn: bool,
    defaults: Defaults,
) {
    let v4 = route.to.is_ipv4();
    let (codepoint, src_ip) = defaults.needed(route, ecn);
    // An IPv4-mapped peer's datagram takes the IPv4 path, which reads only IP_TOS.
    let mapped = matches!(route.to, SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_some());
    let tos = codepoint.map(|bits| {
        let level = if v4 || mapped {
            (libc::IPPROTO_IP, libc::IP_TOS)
        } else {
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS)
        };
        (level, bits.to_ne_bytes())
    });
    let v4_info;
    let v6_info;
    let source: Option<((libc::c_int, libc::c_int), &[u8])> = match src_ip {
        Some(IpAddr::V4(ip)) if v4 => {
            v4_info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(ip.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            Some(((libc::IPPROTO_IP, libc::IP_PKTINFO), as_bytes(&v4_info)))
        }
        Some(IpAddr::V6(ip)) if !v4 => {
            v6_info = libc::in6_pktinfo {
                ipi6_ifindex: 0,
                ipi6_addr: libc::in6_addr {
                    s6_addr: ip.octets(),
                },
            };
            Some(((libc::IPPROTO_IPV6, libc::IPV6_PKTINFO), as_bytes(&v6_info)))
        }
        // No source, or one of the other family (a v4 socket cannot send from a v6 address):
        // the kernel chooses.
        _ => None,
    };
    let messages = tos
        .as_ref()
        .map(|(level, bytes)| (*level, &bytes[..]))
        .into_iter()
        .chain(source);
    // Zeroed: CMSG_NXTHDR reads the length of the header after the current one.
    control.0 = [0; 64];
    hdr.msg_control = control.0.as_mut_ptr().cast();
    // The whole buffer while messages are added (CMSG_NXTHDR checks against it), then what
    // they used.
    hdr.msg_controllen = control.0.len();
    let mut used = 0;
    // SAFETY: `hdr` points at `control`, aligned for cmsghdr; CMSG_FIRSTHDR and CMSG_NXTHDR
    // return null rather than a header that does not fit, and each message's data fits in
    // the space CMSG_LEN reserves for it.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
        for ((level, kind), data) in messages {
            assert!(!cmsg.is_null(), "control buffer too small");
            (*cmsg).cmsg_level = level;
            (*cmsg).cmsg_type = kind;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data.len() as u32) as usize;
            std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(cmsg), data.len());
            used += libc::CMSG_SPACE(data.len() as u32) as usize;
            cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
        }
    }
    hdr.msg_controllen = used;
    if used == 0 {
        hdr.msg_control = std::ptr::null_mut();
    }
}

/// The bytes of a plain C struct, for a control message.
#[cfg(target_os = "linux")]
fn as_bytes<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: `T` is a padding-free libc struct (in_pktinfo, in6_pktinfo) read as bytes.
    unsafe { std::slice::from_raw_parts((value as *const T).cast(), std::mem::size_of::<T>()) }
}

/// Sends `batch` with `sendmmsg`, at most `per_call` datagrams per call (1: one system call
/// per datagram, the benchmark's unbatched mode).
#[cfg(target_os = "linux")]
fn send_all(from: &BatchSocket, batch: &SendBatch, max_wait: Duration, per_call: usize) -> usize {
    use std::os::fd::AsRawFd;
    let (socket, no_ecn) = (&from.socket, &from.no_ecn);
    let deadline = std::time::Instant::now() + max_wait;
    let items: Vec<(Route, &[u8])> = batch.iter().collect();
    if items.is_empty() {
        return 0;
    }
    // Sized to the batch, not to the largest call: a round of a few packets (the common case
    // when talkers' packets arrive spread over the frame) must not zero 16 KB of control
    // buffers, which also pushed the round's working set out of the L1 cache.
    let per_call = per_call.clamp(1, SEND_BATCH).min(items.len());
    let mut dropped = 0;
    let mut next = 0;
    let mut names: Vec<socket2::SockAddr> = Vec::with_capacity(per_call);
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(per_call);
    let mut controls: Vec<Control> = vec![Control([0; 64]); per_call];
    let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(per_call);
    while next < items.len() {
        let chunk = &items[next..items.len().min(next + per_call)];
        let ecn = !no_ecn.load(Relaxed);
        names.clear();
        iovs.clear();
        hdrs.clear();
        names.extend(
            chunk
                .iter()
                .map(|(route, _)| socket2::SockAddr::from(route.to)),
        );
        iovs.extend(chunk.iter().map(|(_, data)| libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        }));
        for (((name, iov), control), (route, _)) in names
            .iter()
            .zip(iovs.iter_mut())
            .zip(&mut controls)
            .zip(chunk)
        {
            // SAFETY: an all-zero msghdr is valid (no control data, no flags).
            let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
            hdr.msg_hdr.msg_name = name.as_ptr() as *mut libc::c_void;
            hdr.msg_hdr.msg_namelen = name.len();
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
            encode_control(&mut hdr.msg_hdr, control, route, ecn, from.defaults);
            hdrs.push(hdr);
        }
        // SAFETY: every header points at a live address, iovec, control buffer and data
        // buffer for this call.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                hdrs.as_mut_ptr(),
                hdrs.len() as libc::c_uint,
                0,
            )
        };
        if n > 0 {
            next += n as usize;
            continue;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero()
                    || !matches!(
                        wait(&[socket], Readiness::Write, Some(left), None),
                        Ok(true)
                    )
                {
                    return dropped + items.len() - next;
                }
            }
            // A kernel without IP_TOS control messages refuses the datagram: send the rest
            // (and this one again) without ECN.
            io::ErrorKind::InvalidInput
                if ecn && from.defaults.needed(&chunk[0].0, true).0.is_some() =>
            {
                no_ecn.store(true, Relaxed);
                // Without ECN messages the socket's own mark would be every datagram's.
                if from.defaults.ect0 {
                    set_tos(socket, 0);
                }
            }
            // The first datagram of the chunk failed for its own reason (an unreachable
            // destination, too large): drop it, keep the rest.
            _ => {
                dropped += 1;
                next += 1;
            }
        }
    }
    dropped
}

/// Without `sendmmsg`: one `send_to` per datagram, the source address and ECN left to the
/// system.
#[cfg(not(target_os = "linux"))]
fn send_all(from: &BatchSocket, batch: &SendBatch, max_wait: Duration, _per_call: usize) -> usize {
    let socket = &from.socket;
    let deadline = std::time::Instant::now() + max_wait;
    let mut dropped = 0;
    for (route, data) in batch.iter() {
        loop {
            match socket.send_to(data, route.to) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() >= deadline {
                        dropped += 1;
                        break;
                    }
                    let _ = wait(
                        &[socket],
                        Readiness::Write,
                        Some(Duration::from_millis(1)),
                        None,
                    );
                }
                Err(_) => {
                    dropped += 1;
                    break;
                }
            }
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn socket() -> BatchSocket {
        BatchSocket::new(UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap()
    }

    #[test]
    fn a_batch_for_many_destinations_arrives_whole_and_in_order() {
        let sender = socket();
        let mut receivers: Vec<BatchSocket> = (0..5).map(|_| socket()).collect();
        let addrs: Vec<SocketAddr> = receivers.iter().map(|r| r.local_addr().unwrap()).collect();
        let mut batch = SendBatch::default();
        // 600 datagrams (more than one sendmmsg), round-robin over the receivers.
        for i in 0..600u32 {
            batch.push(addrs[i as usize % 5], &i.to_be_bytes());
        }
        assert_eq!(sender.send(&mut batch, Duration::from_secs(1)), 0);
        assert!(batch.is_empty());
        // …and the same again one system call at a time.
        for i in 600..1200u32 {
            batch.push(addrs[i as usize % 5], &i.to_be_bytes());
        }
        assert_eq!(
            sender.send_one_by_one(&mut batch, Duration::from_secs(1)),
            0
        );
        for (r, receiver) in receivers.iter_mut().enumerate() {
            let mut got = Vec::new();
            while got.len() < 240 {
                let n = receiver
                    .recv(Some(Duration::from_secs(5)), |d| {
                        got.push(u32::from_be_bytes(d.data.try_into().unwrap()));
                    })
                    .unwrap();
                assert!(n > 0, "timed out after {} datagrams", got.len());
            }
            let want: Vec<u32> = (0..1200).filter(|i| *i as usize % 5 == r).collect();
            assert_eq!(got, want);
        }
    }

    /// Receives `n` datagrams on `socket` (waiting up to 5 s for each batch): (from, to,
    /// ECN, bytes) of each.
    #[allow(clippy::type_complexity)]
    fn recv_n(
        socket: &mut BatchSocket,
        n: usize,
    ) -> Vec<(SocketAddr, Option<IpAddr>, Option<EcnCodepoint>, Vec<u8>)> {
        let mut got = Vec::new();
        while got.len() < n {
            let count = socket
                .recv(Some(Duration::from_secs(5)), |d| {
                    got.push((d.from, d.dst_ip, d.ecn, d.data.to_vec()));
                })
                .unwrap();
            assert!(count > 0, "timed out after {} datagrams", got.len());
        }
        got
    }

    #[test]
    fn a_reply_on_a_wildcard_bind_leaves_from_the_address_the_peer_wrote_to() {
        // All of 127/8 is this host's: 127.0.0.2 stands for a second address of a
        // multi-homed host, the kernel's own choice of source would be 127.0.0.1.
        let mut server = BatchSocket::new(UdpSocket::bind("0.0.0.0:0").unwrap()).unwrap();
        let port = server.local_addr().unwrap().port();
        let second: SocketAddr = ([127, 0, 0, 2], port).into();
        let mut client = socket();
        let mut batch = SendBatch::default();
        batch.push(second, b"hello");
        client.send(&mut batch, Duration::from_secs(1));
        let (from, to, _, data) = recv_n(&mut server, 1).remove(0);
        assert_eq!((to, &data[..]), (Some(second.ip()), &b"hello"[..]));
        // The answer names the address the hello went to as its source…
        batch.push(
            Route {
                to: from,
                src_ip: to,
                ecn: None,
            },
            b"answer",
        );
        // …and one without, for comparison: the kernel picks the primary address.
        batch.push(from, b"kernel's choice");
        server.send(&mut batch, Duration::from_secs(1));
        let answers = recv_n(&mut client, 2);
        assert_eq!(answers[0].0, second);
        assert_eq!(answers[1].0.ip(), IpAddr::from([127, 0, 0, 1]));
    }

    #[test]
    fn ecn_codepoints_are_sent_and_reported_on_both_families() {
        type New = fn(UdpSocket) -> io::Result<BatchSocket>;
        let constructors: [(&str, New); 2] = [
            ("new", BatchSocket::new),
            ("new_quic", BatchSocket::new_quic),
        ];
        // A wildcard sender names the source in a control message, a bound one does not.
        let cases = [
            ("0.0.0.0:0", "127.0.0.1:0"),
            ("127.0.0.1:0", "127.0.0.1:0"),
            ("[::]:0", "[::1]:0"),
            ("[::1]:0", "[::1]:0"),
        ];
        for (name, new) in constructors {
            for (from, local) in cases {
                let (Ok(a), Ok(b)) = (UdpSocket::bind(from), UdpSocket::bind(local)) else {
                    // No IPv6 on this host.
                    continue;
                };
                let (a, mut b) = (new(a).unwrap(), BatchSocket::new(b).unwrap());
                let to = b.local_addr().unwrap();
                let what = format!("{name} from {from} to {to}");
                if name == "new_quic" {
                    assert!(a.defaults.ect0, "{what}: the socket marks ECT(0) itself");
                }
                let mut batch = SendBatch::default();
                let wanted = [
                    Some(EcnCodepoint::Ect0),
                    Some(EcnCodepoint::Ce),
                    None,
                    Some(EcnCodepoint::Ect0),
                    Some(EcnCodepoint::Ect1),
                ];
                for ecn in wanted {
                    // With a source address too: both control messages in one datagram.
                    batch.push(
                        Route {
                            to,
                            src_ip: Some(to.ip()),
                            ecn,
                        },
                        b"x",
                    );
                }
                assert_eq!(a.send(&mut batch, Duration::from_secs(1)), 0, "{what}");
                let got = recv_n(&mut b, wanted.len());
                for ((from, dst, ecn, _), want) in got.into_iter().zip(wanted) {
                    assert_eq!(from.port(), a.local_addr().unwrap().port(), "{what}");
                    assert_eq!(from.ip(), to.ip(), "{what}");
                    assert_eq!(dst, Some(to.ip()), "{what}");
                    assert_eq!(ecn, want, "{what}");
                }
            }
        }
    }

    #[test]
    fn an_ipv4_mapped_peer_of_a_dual_stack_socket_gets_the_codepoint_asked_for() {
        let Ok(a) = UdpSocket::bind("[::]:0") else {
            return; // no IPv6 on this host
        };
        let a = BatchSocket::new_quic(a).unwrap();
        let mut b = socket();
        let port = b.local_addr().unwrap().port();
        let to: SocketAddr = (std::net::Ipv4Addr::LOCALHOST.to_ipv6_mapped(), port).into();
        let wanted = [Some(EcnCodepoint::Ect0), Some(EcnCodepoint::Ce), None];
        let mut batch = SendBatch::default();
        for ecn in wanted {
            batch.push(
                Route {
                    to,
                    src_ip: None,
                    ecn,
                },
                b"x",
            );
        }
        assert_eq!(a.send(&mut batch, Duration::from_secs(1)), 0);
        let got: Vec<_> = recv_n(&mut b, 3).into_iter().map(|g| g.2).collect();
        assert_eq!(got, wanted);
    }

    #[test]
    fn only_what_differs_from_the_sockets_own_marks_needs_a_control_message() {
        let bound = IpAddr::from([127, 0, 0, 1]);
        let other = IpAddr::from([127, 0, 0, 2]);
        let route = |src_ip, ecn| Route {
            to: ([127, 0, 0, 9], 9).into(),
            src_ip,
            ecn,
        };
        let quic = Defaults {
            bound: Some(bound),
            ect0: true,
        };
        let wildcard = Defaults {
            bound: None,
            ect0: false,
        };
        let ect0 = Some(EcnCodepoint::Ect0);
        let ce = Some(EcnCodepoint::Ce);
        // The socket's own source and mark: nothing.
        assert_eq!(quic.needed(&route(Some(bound), ect0), true), (None, None));
        // Another codepoint, or none (Not-ECT must be said: the socket would mark ECT(0)).
        assert_eq!(quic.needed(&route(None, ce), true), (Some(3), None));
        assert_eq!(quic.needed(&route(None, None), true), (Some(0), None));
        // Another source.
        assert_eq!(
            quic.needed(&route(Some(other), ect0), true),
            (None, Some(other))
        );
        // A socket without marks: every codepoint is said, none is the default.
        assert_eq!(
            wildcard.needed(&route(Some(bound), ect0), true),
            (Some(2), Some(bound))
        );
        assert_eq!(wildcard.needed(&route(None, None), true), (None, None));
        // After the kernel refused ECN messages: none at all.
        assert_eq!(quic.needed(&route(None, ce), false), (None, None));
    }

    #[test]
    fn receiving_with_nothing_waiting_times_out() {
        let mut s = socket();
        let n = s
            .recv(Some(Duration::from_millis(20)), |_| {
                panic!("nothing was sent")
            })
            .unwrap();
        assert_eq!(n, 0);
    }

    #[test]
    fn which_readable_names_the_sockets_that_have_something() {
        let sender = socket();
        let sockets: Vec<BatchSocket> = (0..4).map(|_| socket()).collect();
        let refs: Vec<&BatchSocket> = sockets.iter().collect();
        let mut ready = [true; 4];
        assert!(!which_readable(&refs, Some(Duration::ZERO), &mut ready).unwrap());
        assert_eq!(ready, [false; 4]);
        let mut batch = SendBatch::default();
        for i in [1, 3] {
            batch.push(sockets[i].local_addr().unwrap(), b"x");
        }
        assert_eq!(sender.send(&mut batch, Duration::from_secs(1)), 0);
        assert!(which_readable(&refs, Some(Duration::from_secs(5)), &mut ready).unwrap());
        // Loopback delivers within the send call, so both are readable by now.
        assert_eq!(ready, [false, true, false, true]);
    }
}
