//! Hosting a call from this machine: the embedded relay plus, unless told otherwise, the
//! router asked to forward its port ([`crate::nat`]), so the invite works from anywhere. The
//! headless `natter host` runs on it; the desktop app's "Host a call" is the same job.

use crate::nat::{self, KeptMapping, MapError};
use natter_proto::invite::Invite;
use natter_relay::{RelayConfig, RelayHandle};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

/// How to host.
#[derive(Debug, Clone)]
pub struct HostOptions {
    /// Address the relay listens on (`0.0.0.0` for everyone; loopback for tests).
    pub bind: IpAddr,
    /// UDP port (0: any free one).
    pub port: u16,
    /// Where the relay keeps its certificate: the same directory keeps invites valid across
    /// restarts.
    pub data_dir: PathBuf,
    /// Ask the router to forward the port (UPnP-IGD).
    pub map_port: bool,
}

/// Why hosting could not start. Typed, so the app can put each case in the user's words
/// (`controller::plain::hosting_failure`) without digging through an error chain.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The relay's certificate could not be read or created in the data directory.
    #[error(transparent)]
    Identity(#[from] natter_relay::IdentityError),
    /// The UDP port could not be opened (in use, not allowed).
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("cannot start the relay: {0}")]
    Relay(natter_relay::RelayError),
    /// A blocking step (certificate, router) panicked or was cancelled.
    #[error("hosting was interrupted: {0}")]
    Interrupted(#[from] tokio::task::JoinError),
}

/// Who can reach a hosted call.
#[derive(Debug)]
pub enum Reach {
    /// The router forwards the port: the invite carries its public address.
    Internet(KeptMapping),
    /// People on this network only (port mapping off or refused; the reason, if any).
    LocalNetwork(Option<MapError>),
}

/// A relay hosted here, with its port mapping; dropping it closes the port on the router.
pub struct HostedCall {
    pub relay: RelayHandle,
    pub reach: Reach,
}

impl HostedCall {
    /// Starts the relay, then asks the router for its port (a few seconds at most; hosting
    /// goes on without it).
    pub async fn start(options: HostOptions) -> Result<Self, HostError> {
        let dir = options.data_dir.clone();
        let identity =
            tokio::task::spawn_blocking(move || natter_relay::Identity::load_or_generate(&dir))
                .await??;
        let addr = SocketAddr::new(options.bind, options.port);
        let mut config = RelayConfig::new(vec![addr], identity);
        if addr.ip().is_unspecified() {
            config.public_host = lan_address().map(|ip| ip.to_string());
        }
        let relay = match natter_relay::start(config).await {
            Ok(relay) => relay,
            Err(natter_relay::RelayError::Bind(addr, e)) => {
                return Err(HostError::Bind(addr, e));
            }
            Err(e) => return Err(HostError::Relay(e)),
        };
        let port = relay.local_addrs()[0].port();
        let reach = if options.map_port && !options.bind.is_loopback() {
            match tokio::task::spawn_blocking(move || nat::map_udp_port(port)).await? {
                Ok(mapping) => {
                    tracing::info!(external = %mapping.external, local = %mapping.local, "router forwards the relay's port");
                    Reach::Internet(mapping.keep())
                }
                Err(problem) => Reach::LocalNetwork(Some(problem)),
            }
        } else {
            Reach::LocalNetwork(None)
        };
        Ok(Self { relay, reach })
    }

    /// The invite to share: the router's public address when it forwards the port, else this
    /// machine's own.
    pub fn invite(&self, room: &str) -> Invite {
        let mut invite = match &self.reach {
            Reach::Internet(mapping) => Invite::new(
                mapping.external.ip().to_string(),
                mapping.external.port(),
                Some(self.relay.fingerprint()),
            ),
            Reach::LocalNetwork(_) => self.relay.invite(),
        };
        invite.room = Some(room.to_string());
        invite
    }

    /// One sentence on who can join, for the host to read.
    pub fn reach_notice(&self) -> String {
        match &self.reach {
            Reach::Internet(mapping) => format!(
                "The router forwards UDP port {} to this computer: people anywhere can join.",
                mapping.external.port()
            ),
            Reach::LocalNetwork(Some(problem)) => problem.to_string(),
            Reach::LocalNetwork(None) => {
                "Port forwarding is off: people on your network can join; for others, forward \
                 the UDP port on your router."
                    .to_string()
            }
        }
    }
}

/// This machine's address on the local network (the source address for a route to a public
/// address; nothing is sent), for the invites of a hosted call.
pub fn lan_address() -> Option<IpAddr> {
    let ip = nat::local_ip_towards(None).ok()?;
    (!ip.is_unspecified()).then_some(ip)
}
