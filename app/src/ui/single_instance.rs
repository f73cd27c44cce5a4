//! One app per user: a `natter://` invite clicked while the app runs goes to the running
//! window instead of opening a second one.
//!
//! The first app listens on a unix socket in the user's runtime directory
//! (`$XDG_RUNTIME_DIR/natter/instance.sock`, which only the user can enter). A later start
//! connects to it, sends one line — the invite to join, or a request to come to the front —
//! waits for "ok", and exits 0. A socket left behind by an app that crashed refuses the
//! connection and is replaced. Unix only (Windows would use a named pipe; not built).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The longest line accepted: an invite is far shorter.
const MAX_LINE: u64 = 4096;

/// How long either side waits for the other.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What a later start asks of the running app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handover {
    /// Come to the front.
    Show,
    /// Join this invite.
    Join(String),
}

impl Handover {
    fn encode(&self) -> String {
        match self {
            Self::Show => "show\n".into(),
            Self::Join(invite) => format!("join {}\n", invite.trim()),
        }
    }

    fn decode(line: &str) -> Option<Self> {
        match line.trim_end_matches(['\r', '\n']).split_once(' ') {
            None if line.trim() == "show" => Some(Self::Show),
            Some(("join", invite)) if !invite.trim().is_empty() => {
                Some(Self::Join(invite.trim().to_string()))
            }
            _ => None,
        }
    }
}

/// Where the running app listens: the runtime directory, else `fallback` (the app's data
/// directory; also what `--dir` uses, so test apps never meet the user's).
pub fn socket_path(fallback: &Path, runtime_dir: Option<PathBuf>) -> PathBuf {
    runtime_dir
        .map(|d| d.join("natter"))
        .unwrap_or_else(|| fallback.to_path_buf())
        .join("instance.sock")
}

/// The outcome of starting.
pub enum Start {
    /// No app was running: this one is it, and listens.
    First(Listener),
    /// The running app took the request; this process should exit.
    HandedOver,
}

/// Hands `request` to the running app at `path`, or becomes the running app.
pub fn claim(path: &Path, request: &Handover) -> std::io::Result<Start> {
    if let Ok(stream) = UnixStream::connect(path) {
        hand_over(stream, request)?;
        return Ok(Start::HandedOver);
    }
    // Nobody there: a stale socket (the app crashed) or none at all.
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(path)?;
    // Only this user may hand us invites, wherever the socket is.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(Start::First(Listener(listener)))
}

fn hand_over(mut stream: UnixStream, request: &Handover) -> std::io::Result<()> {
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(request.encode().as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream.take(16)).read_line(&mut reply)?;
    if reply.trim() == "ok" {
        Ok(())
    } else {
        Err(std::io::Error::other("the running Natter did not answer"))
    }
}

/// The first app's socket.
pub struct Listener(UnixListener);

impl Listener {
    /// Serves later starts on a thread of its own, passing each request to `deliver`.
    pub fn serve(self, deliver: impl Fn(Handover) + Send + 'static) {
        let spawned = std::thread::Builder::new()
            .name("natter-instance".into())
            .spawn(move || {
                for stream in self.0.incoming().flatten() {
                    if let Some(request) = receive(stream) {
                        deliver(request);
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("single instance: {e}");
        }
    }
}

/// Reads one request and acknowledges it; anything malformed is dropped.
fn receive(stream: UnixStream) -> Option<Handover> {
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(TIMEOUT)).ok()?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_LINE))
        .read_line(&mut line)
        .ok()?;
    let request = Handover::decode(&line)?;
    (&stream).write_all(b"ok\n").ok()?;
    Some(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn requests_travel_as_one_line() {
        for r in [
            Handover::Show,
            Handover::Join("natter://h:1/r?fp=ab".into()),
        ] {
            assert_eq!(Handover::decode(&r.encode()), Some(r));
        }
        assert_eq!(Handover::decode("join \n"), None);
        assert_eq!(Handover::decode("rm -rf /\n"), None);
        assert_eq!(
            socket_path(Path::new("/d"), Some("/run/user/1".into())),
            Path::new("/run/user/1/natter/instance.sock")
        );
        assert_eq!(
            socket_path(Path::new("/d"), None),
            Path::new("/d/instance.sock")
        );
    }

    #[test]
    fn a_second_start_hands_its_invite_to_the_first_and_a_stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/instance.sock");
        // A socket nobody listens on, as a crashed app leaves it.
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        drop(UnixListener::bind(&path).unwrap());
        let Start::First(listener) = claim(&path, &Handover::Show).unwrap() else {
            panic!("the stale socket was taken for a running app");
        };
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (tx, rx) = mpsc::channel();
        listener.serve(move |r| tx.send(r).unwrap());
        let invite = Handover::Join("natter://relay.example:4433/lounge?fp=ab".into());
        assert!(matches!(claim(&path, &invite).unwrap(), Start::HandedOver));
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), invite);
        // Garbage is dropped without an answer; the next start still gets through.
        let mut junk = UnixStream::connect(&path).unwrap();
        junk.write_all(b"nonsense\n").unwrap();
        assert!(matches!(
            claim(&path, &Handover::Show).unwrap(),
            Start::HandedOver
        ));
        assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), Handover::Show);
    }
}
