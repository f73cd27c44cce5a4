//! The portal client against a stand-in portal on a private bus: a real `dbus-daemon` and
//! real D-Bus messages, but our own `org.freedesktop.portal.GlobalShortcuts` object, because
//! the real portal's backend (KDE's or GNOME's) needs their compositor, which cannot run here.

use super::*;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use zbus::message::Header;
use zbus::zvariant::ObjectPath;

/// What the stand-in portal was asked to bind: (session, id, description, preferred trigger).
type Bound = Arc<Mutex<Vec<(String, String, String, String)>>>;

struct StandIn {
    bound: Bound,
    /// The bind's Response code: 0 bound, 1 the user declined.
    answer: u32,
}

fn text(options: &HashMap<String, OwnedValue>, key: &str) -> String {
    options
        .get(key)
        .and_then(|v| String::try_from(v.try_clone().ok()?).ok())
        .unwrap_or_default()
}

fn path_of(header: &Header<'_>, kind: &str, token: &str) -> String {
    let sender = header.sender().map(|s| s.as_str()).unwrap_or_default();
    let sender = sender.trim_start_matches(':').replace('.', "_");
    format!("{PATH}/{kind}/{sender}/{token}")
}

async fn respond(
    conn: &zbus::Connection,
    request: &str,
    code: u32,
    results: HashMap<&str, Value<'_>>,
) -> zbus::fdo::Result<OwnedObjectPath> {
    conn.emit_signal(
        None::<&str>,
        request,
        "org.freedesktop.portal.Request",
        "Response",
        &(code, results),
    )
    .await?;
    Ok(OwnedObjectPath::try_from(request.to_string()).expect("a valid path"))
}

#[zbus::interface(name = "org.freedesktop.portal.GlobalShortcuts")]
impl StandIn {
    #[zbus(property, name = "version")]
    fn version(&self) -> u32 {
        1
    }

    async fn create_session(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        options: HashMap<String, OwnedValue>,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        let request = path_of(&header, "request", &text(&options, "handle_token"));
        let session = path_of(&header, "session", &text(&options, "session_handle_token"));
        let mut results = HashMap::new();
        results.insert(
            "session_handle",
            Value::from(ObjectPath::try_from(session).expect("a valid path")),
        );
        respond(conn, &request, 0, results).await
    }

    async fn bind_shortcuts(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        session: OwnedObjectPath,
        shortcuts: Vec<(String, HashMap<String, OwnedValue>)>,
        _parent_window: String,
        options: HashMap<String, OwnedValue>,
    ) -> zbus::fdo::Result<OwnedObjectPath> {
        for (id, o) in &shortcuts {
            self.bound.lock().unwrap().push((
                session.to_string(),
                id.clone(),
                text(o, "description"),
                text(o, "preferred_trigger"),
            ));
        }
        let request = path_of(&header, "request", &text(&options, "handle_token"));
        respond(conn, &request, self.answer, HashMap::new()).await
    }
}

/// A private session bus in a directory of its own; killed, and the directory removed, when
/// dropped.
struct Bus(Child, String, std::path::PathBuf);

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.2);
    }
}

fn bus() -> Bus {
    static BUSES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = BUSES.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("natter-portal-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut child = Command::new("dbus-daemon")
        .args(["--session", "--nofork", "--print-address=1"])
        .arg(format!("--address=unix:path={}", dir.join("bus").display()))
        .stdout(Stdio::piped())
        .spawn()
        .expect("dbus-daemon (Debian: dbus-daemon; scripts/setup.sh test installs it)");
    let mut address = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut address)
        .unwrap();
    Bus(child, address.trim().to_string(), dir)
}

fn connect(bus: &Bus) -> Connection {
    zbus::blocking::connection::Builder::address(bus.1.as_str())
        .unwrap()
        .build()
        .unwrap()
}

fn portal(bus: &Bus, answer: u32) -> (Connection, Bound) {
    let bound = Bound::default();
    let service = zbus::blocking::connection::Builder::address(bus.1.as_str())
        .unwrap()
        .name(DESTINATION)
        .unwrap()
        .serve_at(
            PATH,
            StandIn {
                bound: bound.clone(),
                answer,
            },
        )
        .unwrap()
        .build()
        .unwrap();
    (service, bound)
}

fn until(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn press(service: &Connection, session: &str, id: &str, down: bool) {
    let member = if down { "Activated" } else { "Deactivated" };
    let session = ObjectPath::try_from(session).unwrap();
    service
        .emit_signal(
            None::<&str>,
            PATH,
            INTERFACE,
            member,
            &(session, id, 0u64, HashMap::<&str, Value>::new()),
        )
        .unwrap();
}

#[test]
fn the_key_is_bound_through_the_portal_and_its_signals_hold_and_release() {
    let bus = bus();
    let (service, bound) = portal(&bus, 0);
    let changes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = changes.clone();
    let ptt = PortalPtt::start_on(connect(&bus), "F9", move || {
        counted.fetch_add(1, Ordering::Relaxed);
    })
    .expect("the stand-in portal offers global shortcuts");
    until("the bind", || !bound.lock().unwrap().is_empty());
    let (session, id, description, trigger) = bound.lock().unwrap()[0].clone();
    assert_eq!(
        (id.as_str(), description.as_str(), trigger.as_str()),
        (SHORTCUT_ID, "Push to talk in Natter", "F9")
    );
    assert!(session.contains("/session/"), "{session}");
    // Another program's shortcut, or ours in another session, is not ours.
    press(&service, &session, "something-else", true);
    press(
        &service,
        "/org/freedesktop/portal/desktop/session/x/y",
        SHORTCUT_ID,
        true,
    );
    press(&service, &session, SHORTCUT_ID, true);
    until("held", || ptt.held());
    assert_eq!(changes.load(Ordering::Relaxed), 1, "one change: the press");
    press(&service, &session, SHORTCUT_ID, false);
    until("released", || !ptt.held());
    assert_eq!(ptt.problem(), None);
    drop(ptt);
}

#[test]
fn a_declined_shortcut_is_a_sentence_for_the_user_and_never_held() {
    let bus = bus();
    let (_service, _) = portal(&bus, 1);
    let ptt = PortalPtt::start_on(connect(&bus), "V", || {}).expect("the portal is there");
    until("the answer", || ptt.problem().is_some());
    assert_eq!(
        ptt.problem().as_deref(),
        Some("push-to-talk works in this window only (you declined the shortcut)")
    );
    assert!(!ptt.held());
}

#[test]
fn without_a_portal_or_for_a_mouse_button_it_says_so_at_once() {
    let bus = bus();
    let err = PortalPtt::start_on(connect(&bus), "F9", || {}).err();
    assert_eq!(
        err.as_deref(),
        Some("push-to-talk works in this window only (this desktop offers no global shortcuts)")
    );
    let (_service, _) = portal(&bus, 0);
    let err = PortalPtt::start_on(connect(&bus), "Mouse back", || {}).err();
    assert_eq!(
        err.as_deref(),
        Some("Mouse back works in this window only on Wayland")
    );
}

#[test]
fn settings_names_map_to_the_portals_trigger_names() {
    assert_eq!(preferred_trigger("F9").as_deref(), Some("F9"));
    assert_eq!(preferred_trigger("V").as_deref(), Some("v"));
    assert_eq!(preferred_trigger("7").as_deref(), Some("7"));
    assert_eq!(preferred_trigger("Space").as_deref(), Some("space"));
    assert_eq!(preferred_trigger("PageDown").as_deref(), Some("Page_Down"));
    assert_eq!(preferred_trigger("Mouse back"), None);
    assert_eq!(preferred_trigger("F99"), None);
}
