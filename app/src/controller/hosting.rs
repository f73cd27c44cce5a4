//! Hosting a call: the embedded relay with the router's port mapping ([`crate::host`], shared
//! with the headless `natter host`), its invite for others and the loopback invite the host
//! joins with.

use super::actor::Controller;
use super::contract::*;
use crate::host::{HostError, HostOptions, HostedCall};
use natter_proto::invite::Invite;
use std::time::Duration;

impl Controller {
    /// Starts the embedded relay (if not already running) and returns the invite the host
    /// itself joins with (loopback, pinned).
    pub(super) async fn host(&mut self, port: u16, room: &str) -> Result<Invite, HostError> {
        if self.relay.is_none() {
            let hosted = HostedCall::start(HostOptions {
                bind: self.config.host_bind,
                port,
                data_dir: self.config.dirs.data.join("relay"),
                map_port: true,
            })
            .await?;
            self.relay = Some(hosted);
        }
        let hosted = self.relay.as_ref().expect("started above");
        let public = hosted.invite(room);
        let port = hosted.relay.local_addrs()[0].port();
        let reach = hosted.reach_notice();
        self.update(|s| {
            s.hosting = Some(Hosting {
                invite: public.to_string(),
                port,
                reach,
            })
        });
        let own_host = match self.config.host_bind {
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            ip => ip.to_string(),
        };
        Ok(Invite::new(
            own_host,
            port,
            Some(hosted.relay.fingerprint()),
        ))
    }

    pub(super) async fn stop_hosting_quietly(&mut self) {
        if let Some(HostedCall { relay, reach }) = self.relay.take() {
            // Closing the port on the router waits for its answer (2 s at most).
            let _ = tokio::task::spawn_blocking(move || drop(reach)).await;
            relay.shutdown(Duration::from_millis(500)).await;
        }
        self.update(|s| s.hosting = None);
    }
}
