//! The benchmark's baseline, `natter-udp-fanout`, as a real process: it forwards a member's
//! media datagram, unchanged, to the other members of its room only — several members sharing
//! one socket, as the load generator places them — and ignores SSRCs that never joined.

use natter_proto::media::write_rtp;
use natter_proto::rtp::RtpHeader;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Fanout(Child);

impl Drop for Fanout {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start() -> (Fanout, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_natter-udp-fanout"))
        .stdout(Stdio::piped())
        .spawn()
        .expect("natter-udp-fanout starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("a first line");
    let addr = line
        .trim()
        .strip_prefix("listening: ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("an address");
    (Fanout(child), addr)
}

fn socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

fn join(s: &UdpSocket, to: SocketAddr, room: u32, ssrc: u32) {
    let mut msg = b"NJ".to_vec();
    msg.extend_from_slice(&room.to_be_bytes());
    msg.extend_from_slice(&ssrc.to_be_bytes());
    s.send_to(&msg, to).unwrap();
    let mut buf = [0u8; 64];
    let (n, _) = s.recv_from(&mut buf).expect("the join is echoed");
    assert_eq!(&buf[..n], &msg[..]);
}

fn media(ssrc: u32, seq: u16) -> Vec<u8> {
    let mut out = Vec::new();
    let header = RtpHeader {
        marker: false,
        payload_type: natter_proto::OPUS_PAYLOAD_TYPE,
        sequence: seq,
        timestamp: u32::from(seq) * 960,
        ssrc,
        audio_level: None,
    };
    write_rtp(&header, &[0x5a; 80], &mut out);
    out
}

/// Everything `s` receives until it has been quiet for the read timeout.
fn drain(s: &UdpSocket) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = s.recv_from(&mut buf) {
        got.push(buf[..n].to_vec());
    }
    got
}

#[test]
fn fans_out_to_the_rest_of_the_room_only() {
    let (_fanout, addr) = start();
    // Room 1: SSRCs 1 and 2 share socket a, 3 is on socket b. Room 2: SSRC 4 on socket b.
    let (a, b) = (socket(), socket());
    join(&a, addr, 1, 1);
    join(&a, addr, 1, 2);
    join(&b, addr, 1, 3);
    join(&b, addr, 2, 4);

    for seq in 0..3 {
        a.send_to(&media(1, seq), addr).unwrap();
    }
    // SSRC 1's datagrams reach 2 (on a) and 3 (on b), unchanged and in order; 4 in the other
    // room hears nothing, so b gets exactly one copy of each.
    let want: Vec<Vec<u8>> = (0..3).map(|seq| media(1, seq)).collect();
    assert_eq!(drain(&a), want);
    assert_eq!(drain(&b), want);

    // An SSRC that never joined, and garbage, are dropped.
    a.send_to(&media(99, 0), addr).unwrap();
    a.send_to(b"\xff\xff", addr).unwrap();
    b.send_to(&media(4, 0), addr).unwrap();
    assert!(drain(&a).is_empty());
    assert!(drain(&b).is_empty());
}
