//! Desktop notifications: the [`Alert`]s of `alerts.rs` sent to the desktop's notification
//! server (the freedesktop `org.freedesktop.Notifications` D-Bus service that GNOME, KDE,
//! dunst, xfce4-notifyd and others provide) from a task of their own, so a slow or missing
//! server never holds up the call view.
//!
//! zbus talks D-Bus; it is already in the app (AccessKit uses it for the screen reader), so
//! notifications add no new crate. Where there is no session bus (Windows, macOS, a bare
//! session) the first failure is logged once and alerts are dropped.

use super::alerts::Alert;
use std::collections::HashMap;
use tokio::sync::mpsc;
use zbus::zvariant::Value;

/// How long a notification stays up, ms (the server may choose otherwise).
const SHOWN_MS: i32 = 6_000;

/// Starts the sending task on the current tokio runtime: alerts go in, notifications come out
/// on the bus at `bus` (a D-Bus address), or the session bus when `None`.
pub(super) fn spawn(bus: Option<String>) -> mpsc::UnboundedSender<Alert> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Alert>();
    tokio::spawn(async move {
        let mut connection: Option<zbus::Connection> = None;
        let mut complained = false;
        while let Some(alert) = rx.recv().await {
            let result = async {
                let c = match &connection {
                    Some(c) => c,
                    None => connection.insert(connect(bus.as_deref()).await?),
                };
                notify(c, &alert).await
            }
            .await;
            if let Err(e) = result {
                // Try afresh next time (the server may start later, the bus may come back).
                connection = None;
                if !std::mem::replace(&mut complained, true) {
                    tracing::warn!("desktop notifications unavailable: {e}");
                }
            }
        }
    });
    tx
}

async fn connect(bus: Option<&str>) -> zbus::Result<zbus::Connection> {
    match bus {
        Some(address) => zbus::connection::Builder::address(address)?.build().await,
        None => zbus::Connection::session().await,
    }
}

/// `Notify(app_name, replaces_id, app_icon, summary, body, actions, hints, expire_timeout)`.
async fn notify(connection: &zbus::Connection, alert: &Alert) -> zbus::Result<()> {
    // The desktop entry lets the server show the app's name and icon and group its messages.
    let hints = HashMap::from([("desktop-entry", Value::from("natter"))]);
    connection
        .call_method(
            Some("org.freedesktop.Notifications"),
            "/org/freedesktop/Notifications",
            Some("org.freedesktop.Notifications"),
            "Notify",
            &(
                "Natter",
                0u32,
                "natter",
                alert.summary.as_str(),
                alert.body.as_str(),
                Vec::<&str>::new(),
                hints,
                SHOWN_MS,
            ),
        )
        .await?;
    Ok(())
}
