//! One stranger against a real relay process (docs/SECURITY.md): each attack bounded in count
//! and time, on loopback, while a real call runs. The relay's memory stays bounded, the
//! attacker is closed or throttled as documented, and the call loses nothing.

use natter_e2e::{RelayProcess, http_get};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// The relay's metrics server outlives file-descriptor exhaustion: `accept()` fails while no
/// descriptor is free, the relay logs it and retries, and `/healthz` answers again as soon as
/// descriptors come back. (It used to stop serving for good at the first failed accept.)
#[test]
fn metrics_survive_file_descriptor_exhaustion() {
    let relay = RelayProcess::start_with(&["--metrics", "127.0.0.1:0"]);
    let url = relay.metrics_url().to_string();
    let addr = url
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .expect("metrics address")
        .to_string();
    let open_fds = std::fs::read_dir(format!("/proc/{}/fd", relay.pid()))
        .expect("the relay's fds")
        .count() as u64;
    // A few descriptors to spare, then twenty idle connections (the server waits 5 s for
    // their request heads): accept() runs out of descriptors.
    let limit = libc::rlimit {
        rlim_cur: open_fds + 4,
        rlim_max: open_fds + 4,
    };
    let pid = relay.pid() as libc::pid_t;
    // SAFETY: prlimit with a valid pointer to a local rlimit and a null old-limit pointer.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    let idle: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(&addr).expect("the kernel completes the TCP handshake"))
        .collect();
    let failed = relay.wait_for_log(Duration::from_secs(5), |v| {
        v["fields"]["message"] == "metrics: accept failed; still serving"
    });
    assert!(
        failed.is_some(),
        "no accept error logged; log:\n{}",
        relay.log_text()
    );
    drop(idle);
    // The handlers see the closed connections, give their descriptors back, and the backlog
    // drains; /healthz is served again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = std::panic::catch_unwind(|| http_get(&format!("http://{addr}/healthz")));
        match health {
            Ok((200, body)) if body == "ok\n" => break,
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("/healthz did not come back: {other:?}"),
        }
    }
}
