//! Hosting a call: the embedded relay, its invite for others and the loopback invite the host
//! joins with.

use super::actor::Controller;
use super::contract::*;
use natter_proto::invite::Invite;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

impl Controller {
    /// Starts the embedded relay (if not already running) and returns the invite the host
    /// itself joins with (loopback, pinned).
    pub(super) async fn host(&mut self, port: u16, room: &str) -> anyhow::Result<Invite> {
        if self.relay.is_none() {
            let dir = self.config.dirs.data.join("relay");
            let identity =
                tokio::task::spawn_blocking(move || natter_relay::Identity::load_or_generate(&dir))
                    .await??;
            let addr = SocketAddr::new(self.config.host_bind, port);
            let mut relay_config = natter_relay::RelayConfig::new(vec![addr], identity);
            if addr.ip().is_unspecified() {
                relay_config.public_host = lan_address().map(|ip| ip.to_string());
            }
            let relay = natter_relay::start(relay_config)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            self.relay = Some(relay);
        }
        let relay = self.relay.as_ref().expect("started above");
        let mut public = relay.invite();
        public.room = Some(room.to_string());
        let port = relay.local_addrs()[0].port();
        self.update(|s| {
            s.hosting = Some(Hosting {
                invite: public.to_string(),
                port,
            })
        });
        let own_host = match self.config.host_bind {
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            ip => ip.to_string(),
        };
        Ok(Invite::new(own_host, port, Some(relay.fingerprint())))
    }

    pub(super) async fn stop_hosting_quietly(&mut self) {
        if let Some(relay) = self.relay.take() {
            relay.shutdown(Duration::from_millis(500)).await;
        }
        self.update(|s| s.hosting = None);
    }
}

/// This machine's address on the local network (the source address for a route to a public
/// address; nothing is sent), for the invites of a hosted call.
pub(super) fn lan_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}
