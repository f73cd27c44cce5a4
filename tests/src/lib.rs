//! # natter-e2e: the harness for end-to-end tests of the real binaries
//!
//! Every test runs the built `natter-relay` and `natter` executables over loopback
//! (127.0.0.1 only) and judges what they wrote: exit codes, stderr, WAV recordings and the
//! `--stats-json` statistics. Everything is bounded in time: child processes are killed when
//! their handle is dropped (also when a test panics) and when a wait times out, and on Linux
//! they also die with the thread that started them if the test process is killed outright.
//!
//! The binaries are looked up next to the test executable (`target/<profile>/`), so build
//! them first: `cargo build --bins && cargo nextest run -p natter-e2e`.

pub mod netem;
pub mod pulse;
pub mod redis;

use serde::Deserialize;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use natter::measure;

/// Sample rate of every WAV file `natter` writes, and of the probe signals.
pub const SAMPLE_RATE: u32 = 48_000;

/// How long a relay may take to print its invite line.
const RELAY_START_TIMEOUT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------

/// `target/<profile>/`, the directory holding the test executable's `deps/` directory.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("cannot locate the test executable");
    let mut dir = exe
        .parent()
        .expect("test executable has a parent")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a binary built by `cargo build --bins` for the same profile as the tests.
pub fn binary(name: &str) -> PathBuf {
    let path = profile_dir().join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --bins` first (the end-to-end tests run the real binaries)",
        path.display()
    );
    path
}

/// The `natter` client binary.
pub fn natter_bin() -> PathBuf {
    binary("natter")
}

/// The `natter-relay` binary: this build's, or the one `NATTER_E2E_RELAY_BIN` names (to run
/// the same tests against another build, e.g. an older relay for a before/after measurement).
pub fn relay_bin() -> PathBuf {
    match std::env::var_os("NATTER_E2E_RELAY_BIN") {
        Some(path) => PathBuf::from(path),
        None => binary("natter-relay"),
    }
}

/// A command for `program` that cannot outlive the test: on Linux the child gets SIGKILL when
/// the thread that spawned it ends, so even a test process killed by a harness timeout leaves
/// no stray relay or call behind. Spawn children from the test's own thread only.
pub fn command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.stdin(Stdio::null());
    // Deterministic logging whatever the caller's environment says.
    cmd.env_remove("RUST_LOG").env("NO_COLOR", "1");
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd
}

fn signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: plain kill(2) on our own child's pid, which is not reaped until we wait on it.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Waits for `child` to exit, up to `timeout`.
fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait on a child") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process killed and reaped when dropped, however the test ends.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        kill_and_reap(&mut self.0);
    }
}

/// SIGKILL and reap.
fn kill_and_reap(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        let _ = child.kill();
    }
    let _ = child.wait();
}

/// Reads a pipe to the end on a thread, so the child never blocks on a full pipe.
fn collect(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

// ---------------------------------------------------------------------------------------------
// Temporary directories
// ---------------------------------------------------------------------------------------------

/// A fresh temporary directory, removed on drop (kept when `NATTER_E2E_KEEP` is set, e.g. to
/// listen to the WAV files of a failed run).
pub struct TempDir(Option<tempfile::TempDir>);

impl TempDir {
    pub fn new(label: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("natter-e2e-{label}-"))
            .tempdir()
            .expect("cannot create a temporary directory");
        Self(Some(dir))
    }

    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("present until drop").path()
    }

    /// A path inside the directory.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let Some(dir) = self.0.take() else { return };
        if std::env::var_os("NATTER_E2E_KEEP").is_some() {
            eprintln!("keeping {}", dir.keep().display());
        } else if std::thread::panicking() {
            eprintln!(
                "removing {} (set NATTER_E2E_KEEP=1 to keep the files of a failed test)",
                dir.path().display()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The relay
// ---------------------------------------------------------------------------------------------

/// The relay's log: one JSON object per stderr line (`--log-format json`).
#[derive(Default)]
struct Log {
    lines: Mutex<(Vec<serde_json::Value>, bool)>,
    changed: Condvar,
}

/// A running `natter-relay --listen 127.0.0.1:0` with a fresh data directory. SIGTERM on drop
/// (then SIGKILL if it does not stop).
pub struct RelayProcess {
    child: Child,
    invite: String,
    log: Arc<Log>,
    stdout: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<()>>,
    exit: Option<ExitStatus>,
    metrics_url: Option<String>,
    data_dir: PathBuf,
    /// The arguments after `--data-dir` and the extra environment, for a restart.
    extra: Vec<String>,
    env: Vec<(String, String)>,
    _dir: TempDir,
}

/// A plain HTTP GET on loopback (status code, body): enough for the relay's metrics endpoint.
pub fn http_get(url: &str) -> (u16, String) {
    use std::io::Write;
    let rest = url.strip_prefix("http://").expect("http URL");
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(authority).expect("connect to metrics");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read response");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (status, body.to_string())
}

/// The value of a Prometheus sample line `name{labels} value` (labels as written, or none).
pub fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The relay's counters as it logs them when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub connections: u64,
    pub handshake_failures: u64,
    pub datagrams_in: u64,
    pub forwarded: u64,
    pub dropped_malformed: u64,
    pub dropped_not_joined: u64,
    pub dropped_wrong_ssrc: u64,
    pub control_errors: u64,
    pub slow_readers: u64,
    pub control_throttled: u64,
    pub trunk_in: u64,
}

impl RelayStats {
    /// Parses `connections=2 handshake_failures=0 …`.
    fn parse(s: &str) -> Self {
        let mut stats = Self::default();
        for pair in s.split_whitespace() {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            let value: u64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad stat {pair:?}"));
            match key {
                "connections" => stats.connections = value,
                "handshake_failures" => stats.handshake_failures = value,
                "datagrams_in" => stats.datagrams_in = value,
                "forwarded" => stats.forwarded = value,
                "dropped_malformed" => stats.dropped_malformed = value,
                "dropped_not_joined" => stats.dropped_not_joined = value,
                "dropped_wrong_ssrc" => stats.dropped_wrong_ssrc = value,
                "control_errors" => stats.control_errors = value,
                "slow_readers" => stats.slow_readers = value,
                "control_throttled" => stats.control_throttled = value,
                "trunk_in" => stats.trunk_in = value,
                _ => {}
            }
        }
        stats
    }
}

impl RelayProcess {
    /// Starts a relay on an ephemeral loopback port and waits for its invite line.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`RelayProcess::start`], with extra command-line arguments. With `--metrics`, the
    /// metrics URL line is read first (see [`RelayProcess::metrics_url`]).
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    /// Like [`RelayProcess::start_with`], with extra environment variables.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let extra: Vec<String> = extra.iter().map(|a| a.to_string()).collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::launch("127.0.0.1:0", TempDir::new("relay"), extra, env)
    }

    /// Kills the relay (SIGKILL: a crash) and starts it again on the same port with the same
    /// data directory, hence the same certificate and invite — what a service manager does.
    pub fn kill_and_restart(&mut self) {
        self.kill();
        assert!(
            self.wait_exit(Duration::from_secs(5)).is_some(),
            "the relay did not die"
        );
        self.restart();
    }

    /// Starts a relay that has exited (see [`RelayProcess::wait_exit`]) again on the same port
    /// with the same data directory and arguments; returns once it listens.
    pub fn restart(&mut self) {
        assert!(
            self.exit.is_some(),
            "restart() needs the relay to have exited"
        );
        let listen = format!("127.0.0.1:{}", self.port());
        let dir = std::mem::replace(&mut self._dir, TempDir(None));
        let restarted = Self::launch(
            &listen,
            dir,
            std::mem::take(&mut self.extra),
            std::mem::take(&mut self.env),
        );
        assert_eq!(restarted.invite, self.invite, "same port and certificate");
        // The old process has exited, so dropping its handle does nothing more.
        *self = restarted;
    }

    fn launch(listen: &str, dir: TempDir, extra: Vec<String>, env: Vec<(String, String)>) -> Self {
        let mut child = command(&relay_bin())
            .args(["--listen", listen, "--log-format", "json", "--data-dir"])
            .arg(dir.join("data"))
            .args(&extra)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start natter-relay");

        let log = Arc::new(Log::default());
        let stderr = {
            let log = log.clone();
            let pipe = child.stderr.take().expect("piped");
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let value = serde_json::from_str(&line)
                        .unwrap_or_else(|_| serde_json::json!({ "raw": line }));
                    log.lines.lock().unwrap().0.push(value);
                    log.changed.notify_all();
                }
                log.lines.lock().unwrap().1 = true;
                log.changed.notify_all();
            })
        };
        let (tx, rx) = mpsc::channel();
        let stdout = {
            let pipe = child.stdout.take().expect("piped");
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            })
        };
        let mut relay = Self {
            child,
            invite: String::new(),
            log,
            stdout: Some(stdout),
            stderr: Some(stderr),
            exit: None,
            metrics_url: None,
            data_dir: dir.join("data"),
            extra,
            env,
            _dir: dir,
        };
        let mut first = rx.recv_timeout(RELAY_START_TIMEOUT);
        if let Ok(line) = &first
            && let Some(url) = line.strip_prefix("metrics: ")
        {
            relay.metrics_url = Some(url.to_string());
            first = rx.recv_timeout(RELAY_START_TIMEOUT);
        }
        match first {
            Ok(line) => {
                relay.invite = line
                    .strip_prefix("invite: ")
                    .unwrap_or_else(|| panic!("unexpected first relay stdout line {line:?}"))
                    .to_string();
            }
            Err(_) => panic!(
                "natter-relay printed no invite within {RELAY_START_TIMEOUT:?}; log:\n{}",
                relay.log_text()
            ),
        }
        assert!(
            relay.invite.starts_with("natter://127.0.0.1:") && relay.invite.contains("?fp="),
            "unexpected invite {:?}",
            relay.invite
        );
        relay
    }

    /// `natter://127.0.0.1:PORT?fp=HEX`.
    /// The metrics URL the relay printed (when started with `--metrics`).
    pub fn metrics_url(&self) -> &str {
        self.metrics_url
            .as_deref()
            .expect("relay started with --metrics")
    }

    /// The relay's data directory (holds its certificate).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn invite(&self) -> &str {
        &self.invite
    }

    /// The UDP port the relay listens on.
    pub fn port(&self) -> u16 {
        let rest = self.invite.trim_start_matches("natter://127.0.0.1:");
        rest[..rest.find('?').expect("invite has a query")]
            .parse()
            .expect("invite has a port")
    }

    /// The relay's fingerprint, as hex.
    pub fn fingerprint_hex(&self) -> &str {
        let start = self.invite.find("fp=").expect("invite has fp") + 3;
        &self.invite[start..start + 64]
    }

    /// Everything the relay logged so far, one JSON object per line.
    pub fn log_text(&self) -> String {
        let lines = self.log.lines.lock().unwrap();
        lines
            .0
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits until a logged line satisfies `pred`; returns it, or `None` on timeout or exit.
    pub fn wait_for_log(
        &self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some(v) = lines.0.iter().find(|v| pred(v)) {
                return Some(v.clone());
            }
            let now = Instant::now();
            if lines.1 || now >= deadline {
                return None;
            }
            lines = self
                .log
                .changed
                .wait_timeout(lines, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Waits until the relay has logged `name` joining `room` (the Join reached the relay, so
    /// the participant hears everything sent to the room from now on).
    pub fn wait_for_join(&self, room: &str, name: &str) {
        let found = self.wait_for_log(Duration::from_secs(10), |v| {
            v["fields"]["message"] == "join"
                && v["fields"]["room"] == room
                && v["fields"]["name"] == name
        });
        assert!(
            found.is_some(),
            "relay never logged {name:?} joining room {room:?}; log:\n{}",
            self.log_text()
        );
    }

    /// The relay's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The relay's resident memory (VmRSS) in KiB, read from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the relay's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc status")
    }

    /// Sends SIGTERM (graceful shutdown).
    pub fn terminate(&self) {
        if self.exit.is_none() {
            signal(&self.child, libc::SIGTERM);
        }
    }

    /// Sends SIGKILL: the relay dies without telling anyone (a crash, a VPS reboot).
    pub fn kill(&self) {
        if self.exit.is_none() {
            signal(&self.child, libc::SIGKILL);
        }
    }

    /// Waits for the relay to exit; `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = wait_timeout(&mut self.child, timeout);
            if self.exit.is_some() {
                // The pipes close with the process; the reader threads finish.
                if let Some(t) = self.stderr.take() {
                    let _ = t.join();
                }
                if let Some(t) = self.stdout.take() {
                    let _ = t.join();
                }
            }
        }
        self.exit
    }

    /// Graceful stop: SIGTERM, wait, assert a clean exit, and return the counters the relay
    /// logged on the way out.
    pub fn stop(&mut self) -> RelayStats {
        self.terminate();
        let status = self.wait_exit(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "relay did not exit cleanly after SIGTERM: {status:?}; log:\n{}",
            self.log_text()
        );
        let stopped = self
            .wait_for_log(Duration::ZERO, |v| v["fields"]["message"] == "stopped")
            .unwrap_or_else(|| panic!("relay logged no stats; log:\n{}", self.log_text()));
        RelayStats::parse(stopped["fields"]["stats"].as_str().expect("stats string"))
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.terminate();
            if self.wait_exit(Duration::from_secs(3)).is_none() {
                kill_and_reap(&mut self.child);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// natter invocations
// ---------------------------------------------------------------------------------------------

/// What a finished `natter` process left behind.
#[derive(Debug, Clone)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    /// The exit code (`None` if killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics with the whole output unless the process exited 0.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.status.success(), "natter failed: {self}");
        self
    }
}

impl std::fmt::Display for Finished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} after {:.2} s\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status,
            self.elapsed.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }
}

/// A running `natter` process; SIGKILLed on drop unless waited for.
pub struct NatterProcess {
    child: Child,
    started: Instant,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
    what: String,
}

impl NatterProcess {
    fn spawn(args: &[std::ffi::OsString]) -> Self {
        Self::spawn_with_env(args, &[])
    }

    fn spawn_with_env(args: &[std::ffi::OsString], env: &[(String, String)]) -> Self {
        Self::spawn_program(&natter_bin(), args, env)
    }

    fn spawn_program(
        program: &Path,
        args: &[std::ffi::OsString],
        env: &[(String, String)],
    ) -> Self {
        let mut child = command(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start natter");
        let stdout = collect(child.stdout.take().expect("piped"));
        let stderr = collect(child.stderr.take().expect("piped"));
        Self {
            child,
            started: Instant::now(),
            stdout: Some(stdout),
            stderr: Some(stderr),
            what: std::iter::once(program.to_string_lossy())
                .chain(args.iter().map(|a| a.to_string_lossy()))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// Sends a signal (e.g. `libc::SIGINT`).
    pub fn signal(&self, sig: libc::c_int) {
        signal(&self.child, sig);
    }

    /// Waits for the exit, up to `timeout`; on timeout kills the process and panics with what
    /// it printed.
    #[track_caller]
    pub fn wait(mut self, timeout: Duration) -> Finished {
        let status = wait_timeout(&mut self.child, timeout);
        if status.is_none() {
            kill_and_reap(&mut self.child);
        }
        let elapsed = self.started.elapsed();
        let stdout = self.stdout.take().expect("once").join().unwrap_or_default();
        let stderr = self.stderr.take().expect("once").join().unwrap_or_default();
        match status {
            Some(status) => Finished {
                status,
                stdout,
                stderr,
                elapsed,
            },
            None => panic!(
                "`{}` did not finish within {timeout:?}\n--- stdout ---\n{stdout}--- stderr ---\n{stderr}",
                self.what
            ),
        }
    }
}

impl Drop for NatterProcess {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// Runs `natter ARGS…` to completion (bounded by `timeout`).
#[track_caller]
pub fn natter<I, S>(args: I, timeout: Duration) -> Finished
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let args: Vec<_> = args
        .into_iter()
        .map(|a| a.as_ref().to_os_string())
        .collect();
    NatterProcess::spawn(&args).wait(timeout)
}

/// The summary line of a `natter-loadgen` run:
/// `participants=N rooms=R streams=S p50_ms=… p99_ms=… loss_pct=… relay_cpu_pct=…`.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub line: String,
}

impl LoadReport {
    /// A numeric field of the line; panics (showing the line) if it is missing.
    #[track_caller]
    pub fn field(&self, key: &str) -> f64 {
        self.line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
            .unwrap_or_else(|| panic!("no numeric {key} in {:?}", self.line))
    }
}

/// Runs `natter-loadgen INVITE ARGS…` to completion (bounded by `timeout`), asserts it
/// succeeded, and returns its summary line.
#[track_caller]
pub fn loadgen(invite: &str, args: &[&str], timeout: Duration) -> LoadReport {
    let args: Vec<std::ffi::OsString> = std::iter::once(invite)
        .chain(args.iter().copied())
        .map(Into::into)
        .collect();
    let done = NatterProcess::spawn_program(&binary("natter-loadgen"), &args, &[]).wait(timeout);
    assert!(done.status.success(), "natter-loadgen failed: {done}");
    LoadReport {
        line: done.stdout.trim().to_string(),
    }
}

/// Probe signals, written by `natter signal` itself (the CLI under test) and read back.
pub fn signal_file(kind: &str, path: &Path, seconds: f32, seed: u64) -> Vec<f32> {
    let args: Vec<std::ffi::OsString> = vec![
        "signal".into(),
        kind.into(),
        path.into(),
        "--seconds".into(),
        seconds.to_string().into(),
        "--seed".into(),
        seed.to_string().into(),
    ];
    natter(args, Duration::from_secs(20)).assert_success();
    read_wav(path)
}

/// `natter call INVITE --room R --name N …`.
#[derive(Debug, Clone)]
pub struct Call {
    args: Vec<std::ffi::OsString>,
    env: Vec<(String, String)>,
    /// Expected running time, for the default wait timeout.
    duration: Option<f64>,
    input_secs: Option<f64>,
    name: String,
}

impl Call {
    pub fn new(invite: &str, room: &str, name: &str) -> Self {
        Self {
            args: ["call", invite, "--room", room, "--name", name]
                .iter()
                .map(Into::into)
                .collect(),
            env: Vec::new(),
            duration: None,
            input_secs: None,
            name: name.into(),
        }
    }

    /// `--output DIR/NAME-heard.wav --stats-json DIR/NAME.json`: the layout the tests read
    /// back (NAME is the display name).
    pub fn recording_in(self, dir: &TempDir) -> Self {
        let heard = dir.join(&format!("{}-heard.wav", self.name));
        let stats = dir.join(&format!("{}.json", self.name));
        self.output(&heard).stats_json(&stats)
    }

    /// An environment variable for the process (e.g. `PULSE_SERVER`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Any further argument.
    pub fn arg(mut self, arg: impl AsRef<std::ffi::OsStr>) -> Self {
        self.args.push(arg.as_ref().to_os_string());
        self
    }

    /// `--input WAV` (the microphone).
    pub fn input(mut self, path: &Path) -> Self {
        if let Ok(reader) = hound::WavReader::open(path) {
            self.input_secs =
                Some(f64::from(reader.duration()) / f64::from(reader.spec().sample_rate));
        }
        self.arg("--input").arg(path)
    }

    /// `--output WAV` (the speaker).
    pub fn output(self, path: &Path) -> Self {
        self.arg("--output").arg(path)
    }

    /// `--stats-json FILE`.
    pub fn stats_json(self, path: &Path) -> Self {
        self.arg("--stats-json").arg(path)
    }

    /// `--duration SECS`.
    pub fn duration(mut self, secs: f64) -> Self {
        self.duration = Some(secs);
        self.arg("--duration").arg(secs.to_string())
    }

    /// `--echo`.
    pub fn echo(self) -> Self {
        self.arg("--echo")
    }

    /// Starts the call.
    pub fn spawn(self) -> CallProcess {
        let expected = self
            .duration
            .or(self.input_secs.map(|s| s + 2.0))
            .unwrap_or(10.0);
        CallProcess {
            process: NatterProcess::spawn_with_env(&self.args, &self.env),
            expected: Duration::from_secs_f64(expected),
        }
    }
}

/// Wall clock in microseconds since the Unix epoch (the time base of `audio_start_unix_us`).
pub fn unix_now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

/// The first moment at or after `from_unix_us` when `recording` (whose sample 0 was at
/// `start_unix_us`) is loud again: the start of the first 10 ms block with an RMS of at least
/// `level`, in µs since the Unix epoch; `None` if it never is.
pub fn loud_again_unix_us(
    recording: &[f32],
    start_unix_us: u64,
    from_unix_us: u64,
    level: f32,
) -> Option<u64> {
    let block = ms_to_samples(10.0);
    let first = (from_unix_us.saturating_sub(start_unix_us) as f64 * 48e-3) as usize;
    (first..recording.len().saturating_sub(block))
        .step_by(block)
        .find(|&i| rms(&recording[i..i + block]) >= level)
        .map(|i| start_unix_us + (i as f64 / 48e-3) as u64)
}

/// A steady sine at `hz` and `amplitude` for `seconds`, written to `path` as the microphone: a
/// signal whose every gap in a recording is the network's, never a pause of its own.
pub fn tone_file(path: &Path, hz: f32, amplitude: f32, seconds: f32) {
    let samples: Vec<f32> = (0..(seconds * 48_000.0) as usize)
        .map(|i| amplitude * (std::f32::consts::TAU * hz * i as f32 / 48_000.0).sin())
        .collect();
    write_wav(path, &samples);
}

/// A running `natter call`; killed on drop unless waited for.
pub struct CallProcess {
    process: NatterProcess,
    expected: Duration,
}

impl CallProcess {
    /// The call's standard input (for `--input -`); closing it ends the stream.
    pub fn take_stdin(&mut self) -> std::process::ChildStdin {
        self.process
            .child
            .stdin
            .take()
            .expect("stdin is piped, and taken once")
    }

    /// Sends a signal (e.g. `libc::SIGINT`).
    pub fn signal(&self, sig: libc::c_int) {
        self.process.signal(sig);
    }

    /// Waits for the call to end: its own duration plus `slack` at most.
    #[track_caller]
    pub fn wait_with_slack(self, slack: Duration) -> Finished {
        self.process.wait(self.expected + slack)
    }

    /// Waits up to `timeout`.
    #[track_caller]
    pub fn wait(self, timeout: Duration) -> Finished {
        self.process.wait(timeout)
    }

    /// Waits (duration + 15 s at most) and asserts exit code 0.
    #[track_caller]
    pub fn finish(self) -> Finished {
        let done = self.wait_with_slack(Duration::from_secs(15));
        done.assert_success();
        done
    }
}

// ---------------------------------------------------------------------------------------------
// Statistics, WAV files and alignment
// ---------------------------------------------------------------------------------------------

/// `natter call --stats-json` contents.
#[derive(Debug, Clone, Deserialize)]
pub struct CallStats {
    pub room: String,
    pub participant_id: u64,
    pub ssrc: u32,
    pub audio_start_unix_us: u64,
    pub duration_s: f64,
    pub relay_rtt_ms: Option<f64>,
    pub ended_by_relay: Option<String>,
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub malformed_datagrams: u64,
    pub capture_overruns: u64,
    pub playback_underruns: u64,
    pub peers: Vec<PeerStats>,
    pub listeners: Vec<ListenerStats>,
    pub chat: Vec<ChatLine>,
    /// Every edge the call was on, in order (`host:port`).
    pub edges: Vec<String>,
}

/// One entry of [`CallStats::chat`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ChatLine {
    pub from: String,
    pub text: String,
    pub own: bool,
}

/// One entry of [`CallStats::listeners`]: what someone hearing us reports.
#[derive(Debug, Clone, Deserialize)]
pub struct ListenerStats {
    pub ssrc: u32,
    pub name: Option<String>,
    pub rtt_ms: Option<f64>,
    pub loss_pct: f64,
    pub jitter_ms: f64,
}

/// One entry of [`CallStats::peers`].
#[derive(Debug, Clone, Deserialize)]
pub struct PeerStats {
    pub ssrc: u32,
    pub name: Option<String>,
    pub packets_received: u64,
    pub packets_lost: i64,
    pub late: u64,
    pub duplicates: u64,
    pub concealed: u64,
    pub fec_recovered: u64,
    pub dred_recovered: u64,
    pub jitter_ms: f64,
    pub rtt_ms: Option<f64>,
    pub jitter_buffer_ms: f64,
    pub jitter_buffer_target_ms: f64,
    pub stages: Stages,
}

/// The per-stage latency breakdown of [`PeerStats`]: the app's own definition, which is what
/// the stats JSON serialises.
pub use natter::latency_stages::LatencyStages as Stages;

impl CallStats {
    #[track_caller]
    pub fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read stats {}: {e}", path.display()));
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("bad stats JSON {}: {e}\n{text}", path.display()))
    }

    /// The peer entry for `ssrc`.
    #[track_caller]
    pub fn peer(&self, ssrc: u32) -> &PeerStats {
        self.peers
            .iter()
            .find(|p| p.ssrc == ssrc)
            .unwrap_or_else(|| panic!("no peer with ssrc {ssrc:08x} in {self:#?}"))
    }

    /// The SSRCs heard, ascending.
    pub fn peer_ssrcs(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.peers.iter().map(|p| p.ssrc).collect();
        v.sort_unstable();
        v
    }
}

/// A WAV file as mono f32 samples in [-1, 1] (channels averaged).
#[track_caller]
pub fn read_wav(path: &Path) -> Vec<f32> {
    let mut reader = hound::WavReader::open(path)
        .unwrap_or_else(|e| panic!("cannot open WAV {}: {e}", path.display()));
    let spec = reader.spec();
    assert_eq!(
        spec.sample_rate,
        SAMPLE_RATE,
        "{} is not 48 kHz",
        path.display()
    );
    let channels = usize::from(spec.channels.max(1));
    let interleaved: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader
            .samples::<f32>()
            .collect::<Result<_, _>>()
            .expect("readable samples"),
        hound::SampleFormat::Int => {
            let scale = 1.0 / (1u64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|s| s as f32 * scale))
                .collect::<Result<_, _>>()
                .expect("readable samples")
        }
    };
    interleaved
        .chunks(channels)
        .map(|frame| frame.iter().sum::<f32>() / channels as f32)
        .collect()
}

/// Writes 48 kHz mono 16-bit samples.
pub fn write_wav(path: &Path, samples: &[f32]) {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SAMPLE_RATE,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(path, spec).expect("create WAV");
    for s in samples {
        w.write_sample((s.clamp(-1.0, 1.0) * 32767.0).round() as i16)
            .expect("write WAV");
    }
    w.finalize().expect("finalize WAV");
}

/// Root mean square.
pub fn rms(samples: &[f32]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    (samples.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / samples.len() as f64).sqrt()
        as f32
}

pub fn ms_to_samples(ms: f64) -> usize {
    (ms * f64::from(SAMPLE_RATE) / 1000.0).round().max(0.0) as usize
}

pub fn samples_to_ms(samples: f64) -> f64 {
    samples * 1000.0 / f64::from(SAMPLE_RATE)
}

/// How much later (in samples, negative: earlier) the receiver's recording started than the
/// sender's input, from the two calls' `audio_start_unix_us`.
pub fn start_offset_samples(sender: &CallStats, receiver: &CallStats) -> i64 {
    let us = receiver.audio_start_unix_us as i64 - sender.audio_start_unix_us as i64;
    (us as f64 * f64::from(SAMPLE_RATE) / 1e6).round() as i64
}

/// The receiver's recording on the sender's time axis: sample `i` of the result is the
/// receiver's speaker at the instant the sender's microphone took sample `i`.
pub fn align_recording(recording: &[f32], sender: &CallStats, receiver: &CallStats) -> Vec<f32> {
    let offset = start_offset_samples(sender, receiver);
    let shift = offset.unsigned_abs() as usize;
    if offset >= 0 {
        std::iter::repeat_n(0.0, shift)
            .chain(recording.iter().copied())
            .collect()
    } else {
        recording.get(shift..).unwrap_or_default().to_vec()
    }
}

/// Where a sent signal was found in a recording.
#[derive(Debug, Clone, Copy)]
pub struct Detection {
    /// Mouth-to-ear delay, ms.
    pub lag_ms: f64,
    /// Normalised cross-correlation at that delay, in [-1, 1].
    pub score: f32,
    /// The part of the sent signal that was searched for (ms on the sender's time axis).
    pub from_ms: f64,
    pub to_ms: f64,
}

impl std::fmt::Display for Detection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "lag {:.2} ms, NCC {:.3} (signal {:.0}..{:.0} ms)",
            self.lag_ms, self.score, self.from_ms, self.to_ms
        )
    }
}

/// Looks for `sent` (the sender's microphone signal) in `recording` (the receiver's speaker)
/// at delays of 0..`max_lag_ms`, with [`measure::best_alignment`].
///
/// Only the stretch of the signal the receiver can have heard is searched for: from when the
/// receiver's recording started (plus `join_margin_ms`, when the receiver started after the
/// sender) until where the recording still covers it at the longest delay.
#[track_caller]
pub fn find_signal(
    sent: &[f32],
    sender: &CallStats,
    recording: &[f32],
    receiver: &CallStats,
    max_lag_ms: f64,
    join_margin_ms: f64,
) -> Detection {
    let aligned = align_recording(recording, sender, receiver);
    let offset = start_offset_samples(sender, receiver);
    let from = if offset > 0 {
        offset as usize + ms_to_samples(join_margin_ms)
    } else {
        0
    };
    let max_lag = ms_to_samples(max_lag_ms);
    let to = sent.len().min(aligned.len().saturating_sub(max_lag));
    assert!(
        to > from + ms_to_samples(1000.0),
        "less than 1 s of the sent signal can be in the recording (signal {} samples, \
         recording {} samples starting {} samples after the signal)",
        sent.len(),
        recording.len(),
        offset
    );
    let (lag, score) = measure::best_alignment(&sent[from..to], &aligned[from..], max_lag)
        .expect("the sent signal is not silent");
    Detection {
        lag_ms: samples_to_ms(lag),
        score,
        from_ms: samples_to_ms(from as f64),
        to_ms: samples_to_ms(to as f64),
    }
}

/// [`find_signal`] window by window: the sent signal cut into `window_ms` pieces, each looked
/// for on its own, so a latency that moves during the call (the jitter buffer adapting) does
/// not blur the match. Windows where the sender was nearly silent are skipped.
#[track_caller]
pub fn find_signal_windows(
    sent: &[f32],
    sender: &CallStats,
    recording: &[f32],
    receiver: &CallStats,
    max_lag_ms: f64,
    join_margin_ms: f64,
    window_ms: f64,
) -> SignalMatch {
    let whole = find_signal(
        sent,
        sender,
        recording,
        receiver,
        max_lag_ms,
        join_margin_ms,
    );
    let aligned = align_recording(recording, sender, receiver);
    let (from, to) = (ms_to_samples(whole.from_ms), ms_to_samples(whole.to_ms));
    let window = ms_to_samples(window_ms);
    let max_lag = ms_to_samples(max_lag_ms);
    let mut windows = Vec::new();
    let mut start = from;
    while start + window <= to {
        let needle = &sent[start..start + window];
        if rms(needle) >= 0.01 {
            let end = (start + window + max_lag).min(aligned.len());
            let (lag, score) = measure::best_alignment(needle, &aligned[start..end], max_lag)
                .expect("window is not silent");
            windows.push(Detection {
                lag_ms: samples_to_ms(lag),
                score,
                from_ms: samples_to_ms(start as f64),
                to_ms: samples_to_ms((start + window) as f64),
            });
        }
        start += window;
    }
    assert!(!windows.is_empty(), "no window to search for");
    SignalMatch { whole, windows }
}

/// What [`find_signal_windows`] found.
#[derive(Debug, Clone)]
pub struct SignalMatch {
    /// The whole signal at one delay.
    pub whole: Detection,
    /// Window by window.
    pub windows: Vec<Detection>,
}

impl SignalMatch {
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    }

    /// Median delay over the windows, ms.
    pub fn median_lag_ms(&self) -> f64 {
        Self::median(self.windows.iter().map(|d| d.lag_ms).collect())
    }

    /// Median NCC over the windows.
    pub fn median_score(&self) -> f32 {
        Self::median(self.windows.iter().map(|d| f64::from(d.score)).collect()) as f32
    }

    /// Lowest NCC of any window.
    pub fn min_score(&self) -> f32 {
        self.windows
            .iter()
            .map(|d| d.score)
            .fold(f32::INFINITY, f32::min)
    }

    /// Highest NCC of any window.
    pub fn max_score(&self) -> f32 {
        self.windows
            .iter()
            .map(|d| d.score)
            .fold(f32::NEG_INFINITY, f32::max)
    }
}

impl std::fmt::Display for SignalMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "median lag {:.2} ms, median NCC {:.3} (min {:.3}) over {} windows; whole signal: {}; windows:",
            self.median_lag_ms(),
            self.median_score(),
            self.min_score(),
            self.windows.len(),
            self.whole
        )?;
        for d in &self.windows {
            write!(
                f,
                " [{:.0} ms: {:.1} ms {:.3}]",
                d.from_ms, d.lag_ms, d.score
            )?;
        }
        Ok(())
    }
}

/// Small deterministic PRNG (SplitMix64) for garbage payloads.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
