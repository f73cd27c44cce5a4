//! Push-to-talk from any window on Wayland, through the XDG desktop portal's GlobalShortcuts
//! interface (`org.freedesktop.portal.GlobalShortcuts`, KDE Plasma ≥ 5.27, GNOME ≥ 48,
//! Hyprland). Wayland lets no program grab a key for the whole desktop; the portal asks the
//! compositor to bind a shortcut for us (it may show the user a dialog to confirm or pick the
//! key) and then reports when it is pressed and released.
//!
//! The exchange, over the session bus with the zbus already in the tree (AccessKit, the tray):
//! `CreateSession`, then `BindShortcuts` with one shortcut, `push-to-talk`, whose preferred
//! trigger is the user's key; each answers through a Request object's `Response` signal. Then
//! `Activated` / `Deactivated` signals for our session and id flip the held flag. A thread of its
//! own does all of it, since the bind may wait on the user; what goes wrong there is kept as a
//! sentence for the call screen ([`PortalPtt::problem`]).

use super::global_ptt::{PlainKey, plain_key};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use zbus::blocking::{Connection, Proxy};
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

const DESTINATION: &str = "org.freedesktop.portal.Desktop";
const PATH: &str = "/org/freedesktop/portal/desktop";
const INTERFACE: &str = "org.freedesktop.portal.GlobalShortcuts";
/// Our one shortcut's id, as the portal reports it back.
pub const SHORTCUT_ID: &str = "push-to-talk";

/// The trigger, in the XDG shortcuts format the portal takes as a preference (X keysym names),
/// for a push-to-talk name as settings store it; `None` for what the portal cannot bind (mouse
/// buttons, keys without a name here).
pub fn preferred_trigger(name: &str) -> Option<String> {
    let keysym = match name {
        "Space" => "space",
        "Tab" => "Tab",
        "Insert" => "Insert",
        "Home" => "Home",
        "End" => "End",
        "PageUp" => "Page_Up",
        "PageDown" => "Page_Down",
        "Pause" => "Pause",
        _ => {
            return match plain_key(name)? {
                PlainKey::Char(c) => Some(c.to_string()),
                PlainKey::Function(n) => Some(format!("F{n}")),
            };
        }
    };
    Some(keysym.to_string())
}

/// A shortcut bound (or being bound) through the portal; dropping it closes the session and
/// ends the thread.
pub struct PortalPtt {
    held: Arc<AtomicBool>,
    problem: Arc<Mutex<Option<String>>>,
    conn: Option<Connection>,
    session: Arc<Mutex<Option<OwnedObjectPath>>>,
}

impl PortalPtt {
    /// Binds `name` through the portal on the session bus. Fails at once with a sentence for
    /// the user when there is no portal with global shortcuts or the key cannot be bound.
    pub fn start(name: &str, changed: impl Fn() + Send + 'static) -> Result<Self, String> {
        let conn = Connection::session().map_err(|_| no_portal())?;
        Self::start_on(conn, name, changed)
    }

    /// [`PortalPtt::start`] on a given bus connection (tests run a private bus).
    pub fn start_on(
        conn: Connection,
        name: &str,
        changed: impl Fn() + Send + 'static,
    ) -> Result<Self, String> {
        let trigger = preferred_trigger(name)
            .ok_or_else(|| format!("{name} works in this window only on Wayland"))?;
        let portal = Proxy::new(&conn, DESTINATION, PATH, INTERFACE).map_err(|_| no_portal())?;
        // The interface's version property answers only where a backend implements it.
        portal
            .get_property::<u32>("version")
            .map_err(|_| no_portal())?;
        let held = Arc::new(AtomicBool::new(false));
        let problem = Arc::new(Mutex::new(None));
        let session = Arc::new(Mutex::new(None));
        let (h, p, s, c) = (held.clone(), problem.clone(), session.clone(), conn.clone());
        std::thread::Builder::new()
            .name("natter-portal-ptt".into())
            .spawn(move || {
                if let Err(reason) = run(&c, &trigger, &h, &s, &changed) {
                    *p.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(format!("push-to-talk works in this window only ({reason})"));
                }
                // Released for good, and a problem is news for the call screen too.
                h.store(false, Ordering::Relaxed);
                changed();
            })
            .map_err(|e| e.to_string())?;
        Ok(Self {
            held,
            problem,
            conn: Some(conn),
            session,
        })
    }

    /// Whether the shortcut is held now.
    pub fn held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Why the shortcut does not work, once the portal said so.
    pub fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for PortalPtt {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let session = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(session) = session
            && let Ok(s) = Proxy::new(
                &conn,
                DESTINATION,
                session,
                "org.freedesktop.portal.Session",
            )
        {
            // Best effort: the portal also ends the session when our connection goes.
            let _ = s.call_method("Close", &());
        }
        // Closing the connection ends the thread's signal iterator, and with it the thread.
        let _ = conn.close();
    }
}

fn no_portal() -> String {
    "push-to-talk works in this window only (this desktop offers no global shortcuts)".into()
}

/// What the user reads when the bus or the portal misbehaves; the details go to the log.
fn failed(e: zbus::Error) -> String {
    tracing::info!("global shortcuts portal: {e}");
    "the desktop's shortcut service failed".into()
}

/// The thread: session, bind, then press and release until the connection closes. Errors are
/// the reason, in plain words, why the shortcut does not work.
fn run(
    conn: &Connection,
    trigger: &str,
    held: &AtomicBool,
    session_slot: &Mutex<Option<OwnedObjectPath>>,
    changed: &impl Fn(),
) -> Result<(), String> {
    let portal = Proxy::new(conn, DESTINATION, PATH, INTERFACE).map_err(failed)?;
    // Subscribe before binding: a press right after the bind must not be missed.
    let signals = portal.receive_all_signals().map_err(failed)?;
    let token = format!("natter{}", std::process::id());
    let mut options: HashMap<&str, Value> = HashMap::new();
    options.insert("handle_token", Value::from(format!("{token}s")));
    options.insert("session_handle_token", Value::from(token.clone()));
    let results = request(
        conn,
        &portal,
        "CreateSession",
        &(options,),
        &format!("{token}s"),
    )?;
    let session: OwnedObjectPath = results
        .get("session_handle")
        .and_then(|v| {
            // Object path per the spec; some portals send it as a string.
            OwnedObjectPath::try_from(v.try_clone().ok()?)
                .ok()
                .or_else(|| {
                    let s: String = v.try_clone().ok()?.try_into().ok()?;
                    OwnedObjectPath::try_from(s).ok()
                })
        })
        .ok_or("the desktop's shortcut service failed")?;
    *session_slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(session.clone());
    let mut shortcut: HashMap<&str, Value> = HashMap::new();
    shortcut.insert("description", Value::from("Push to talk in Natter"));
    shortcut.insert("preferred_trigger", Value::from(trigger));
    let mut options: HashMap<&str, Value> = HashMap::new();
    options.insert("handle_token", Value::from(format!("{token}b")));
    request(
        conn,
        &portal,
        "BindShortcuts",
        &(&session, vec![(SHORTCUT_ID, shortcut)], "", options),
        &format!("{token}b"),
    )?;
    for message in signals {
        let header = message.header();
        let down = match header.member().map(|m| m.as_str()) {
            Some("Activated") => true,
            Some("Deactivated") => false,
            _ => continue,
        };
        let Ok((from, id, _, _)) =
            message
                .body()
                .deserialize::<(OwnedObjectPath, String, u64, HashMap<String, OwnedValue>)>()
        else {
            continue;
        };
        if from == session && id == SHORTCUT_ID && held.swap(down, Ordering::Relaxed) != down {
            changed();
        }
    }
    Ok(())
}

/// Calls a portal method that answers through a Request object: subscribes to the request's
/// `Response` first (the portal may answer before the call returns), then calls and waits.
fn request<B>(
    conn: &Connection,
    portal: &Proxy,
    method: &str,
    body: &B,
    token: &str,
) -> Result<HashMap<String, OwnedValue>, String>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    let unique = conn
        .unique_name()
        .ok_or("the desktop's shortcut service failed")?;
    let sender = unique.trim_start_matches(':').replace('.', "_");
    let path = format!("{PATH}/request/{sender}/{token}");
    let request =
        Proxy::new(conn, DESTINATION, path, "org.freedesktop.portal.Request").map_err(failed)?;
    let mut responses = request.receive_signal("Response").map_err(failed)?;
    portal.call_method(method, body).map_err(failed)?;
    let message = responses
        .next()
        .ok_or("the desktop's shortcut service went away")?;
    let (code, results): (u32, HashMap<String, OwnedValue>) =
        message.body().deserialize().map_err(failed)?;
    match code {
        0 => Ok(results),
        1 => Err("you declined the shortcut".into()),
        _ => Err("the desktop could not bind the shortcut".into()),
    }
}

#[cfg(test)]
mod tests;
