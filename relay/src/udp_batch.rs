//! Batched UDP I/O for an event loop that serves many peers from one socket: receive up to
//! [`quinn_udp::BATCH_SIZE`] datagrams per system call (recvmmsg, GRO, through `quinn-udp`), and
//! send the datagrams for *many* destinations with one `sendmmsg`.
//!
//! Why: in a voice relay every forwarded packet goes to a different peer, so per-destination
//! batching (GSO) alone saves nothing; one `sendmsg` per packet was a third of the relay's CPU
//! (docs/BENCHMARKS.md). `quinn-udp` has no cross-destination send, hence the `sendmmsg` here.
//! On systems without `sendmmsg` the batch goes out one `send_to` at a time.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// The most datagrams one `sendmmsg` call takes (the kernel's UIO_MAXIOV is 1024; larger
/// batches are split).
pub const SEND_BATCH: usize = 256;

/// One received datagram (a GRO super-buffer is split into its segments before it is handed
/// out).
#[derive(Debug)]
pub struct Received<'a> {
    pub from: SocketAddr,
    pub data: &'a [u8],
}

/// A non-blocking UDP socket read and written in batches.
#[derive(Debug)]
pub struct BatchSocket {
    socket: UdpSocket,
    state: quinn_udp::UdpSocketState,
    /// One receive buffer per message of a batch, each large enough for a GRO super-buffer.
    bufs: Vec<Vec<u8>>,
    meta: Vec<quinn_udp::RecvMeta>,
}

/// Size of each receive buffer: a GRO batch of the segments quinn-udp asks for, 1500 bytes each.
const RECV_BUF: usize = 64 * 1024;

impl BatchSocket {
    /// Takes over `socket` (made non-blocking).
    pub fn new(socket: UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = quinn_udp::UdpSocketState::new((&socket).into())?;
        let batch = quinn_udp::BATCH_SIZE;
        Ok(Self {
            socket,
            state,
            bufs: vec![vec![0u8; RECV_BUF]; batch],
            meta: vec![quinn_udp::RecvMeta::default(); batch],
        })
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
        if n > 0 || !wait(&[&self.socket], Readiness::Read, timeout)? {
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
        let dropped = send_all(&self.socket, batch, max_wait);
        batch.clear();
        dropped
    }

    /// Like [`BatchSocket::send`], but one `send_to` system call per datagram, as quinn's
    /// drivers do across connections: the benchmark's measure of what batching saves.
    pub fn send_one_by_one(&self, batch: &mut SendBatch, max_wait: Duration) -> usize {
        let dropped = send_each(&self.socket, batch, max_wait);
        batch.clear();
        dropped
    }
}

/// Datagrams to send, each with its destination, packed into one buffer.
#[derive(Debug, Default)]
pub struct SendBatch {
    bytes: Vec<u8>,
    /// (destination, end offset in `bytes`) per datagram.
    items: Vec<(SocketAddr, usize)>,
}

impl SendBatch {
    pub fn push(&mut self, to: SocketAddr, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        self.items.push((to, self.bytes.len()));
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

    /// (destination, bytes) of each datagram, in order.
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
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
    wait(&raw, Readiness::Read, timeout)
}

#[derive(Debug, Clone, Copy)]
enum Readiness {
    Read,
    Write,
}

/// Waits until one of `sockets` is readable or writable, up to `timeout`; false if it timed
/// out.
#[cfg(unix)]
fn wait(sockets: &[&UdpSocket], what: Readiness, timeout: Option<Duration>) -> io::Result<bool> {
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
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(n > 0)
}

#[cfg(not(unix))]
fn wait(sockets: &[&UdpSocket], what: Readiness, timeout: Option<Duration>) -> io::Result<bool> {
    // No poll(2): sleep a little and let the caller try again.
    let _ = (sockets, what);
    std::thread::sleep(
        timeout
            .unwrap_or(Duration::from_millis(1))
            .min(Duration::from_millis(1)),
    );
    Ok(true)
}

#[cfg(target_os = "linux")]
fn send_all(socket: &UdpSocket, batch: &SendBatch, max_wait: Duration) -> usize {
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + max_wait;
    let items: Vec<(SocketAddr, &[u8])> = batch.iter().collect();
    let mut dropped = 0;
    let mut next = 0;
    let mut names: Vec<socket2::SockAddr> = Vec::with_capacity(SEND_BATCH);
    let mut iovs: Vec<libc::iovec> = Vec::with_capacity(SEND_BATCH);
    let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(SEND_BATCH);
    while next < items.len() {
        let chunk = &items[next..items.len().min(next + SEND_BATCH)];
        names.clear();
        iovs.clear();
        hdrs.clear();
        names.extend(chunk.iter().map(|(to, _)| socket2::SockAddr::from(*to)));
        iovs.extend(chunk.iter().map(|(_, data)| libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        }));
        for (name, iov) in names.iter().zip(iovs.iter_mut()) {
            // SAFETY: an all-zero msghdr is valid (no control data, no flags).
            let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
            hdr.msg_hdr.msg_name = name.as_ptr() as *mut libc::c_void;
            hdr.msg_hdr.msg_namelen = name.len();
            hdr.msg_hdr.msg_iov = iov;
            hdr.msg_hdr.msg_iovlen = 1;
            hdrs.push(hdr);
        }
        // SAFETY: every header points at a live address, iovec and buffer for this call.
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
                    || !matches!(wait(&[socket], Readiness::Write, Some(left)), Ok(true))
                {
                    return dropped + items.len() - next;
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

#[cfg(not(target_os = "linux"))]
fn send_all(socket: &UdpSocket, batch: &SendBatch, max_wait: Duration) -> usize {
    send_each(socket, batch, max_wait)
}

fn send_each(socket: &UdpSocket, batch: &SendBatch, max_wait: Duration) -> usize {
    let deadline = std::time::Instant::now() + max_wait;
    let mut dropped = 0;
    for (to, data) in batch.iter() {
        loop {
            match socket.send_to(data, to) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() >= deadline {
                        dropped += 1;
                        break;
                    }
                    let _ = wait(&[socket], Readiness::Write, Some(Duration::from_millis(1)));
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
}
