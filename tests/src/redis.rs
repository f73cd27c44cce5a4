//! A private `redis-server` for the cluster tests: on a unix socket in a temporary directory
//! (no TCP port at all, so nothing else on the machine can reach it and tests cannot collide),
//! no persistence, killed when dropped.

use crate::TempDir;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    socket: PathBuf,
    _dir: TempDir,
}

impl RedisServer {
    /// Starts one and waits until it answers PING.
    pub fn start() -> Self {
        let dir = TempDir::new("redis");
        let socket = dir.join("redis.sock");
        let mut server = Self {
            child: None,
            socket,
            _dir: dir,
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&self.socket)
            .args(["--unixsocketperm", "700"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-server (scripts/setup.sh test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL relays are given.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// Runs `redis-cli` against it; its standard output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("cannot run redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn ping(&self) -> bool {
        self.socket.exists() && self.cli(&["PING"]) == "PONG"
    }

    /// Kills it (SIGKILL: an outage, not a shutdown) and waits until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Starts it again on the same socket, empty (it keeps nothing on disk).
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An edge of a cluster with trunks: in the directory at `redis` as `edge-{node}` (region
/// `region-{node}`, a 3 s TTL), `--cluster-secret secret`, node `node`.
pub fn mesh_edge(redis: &RedisServer, node: u8, secret: &str) -> crate::RelayProcess {
    crate::RelayProcess::start_with(&[
        "--directory",
        &redis.url(),
        "--relay-id",
        &format!("edge-{node}"),
        "--region",
        &format!("region-{node}"),
        "--directory-ttl",
        "3",
        "--cluster-secret",
        secret,
        "--node",
        &node.to_string(),
    ])
}
