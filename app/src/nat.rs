//! Making a call hosted at home reachable from outside: the host's router is asked to forward
//! the relay's UDP port (UPnP Internet Gateway Device), and the router's public address goes
//! into the invite instead of the machine's LAN address, which nobody outside can use.
//!
//! Most home routers speak UPnP-IGD (miniupnpd runs on many of them; `tests/tests/nat.rs`
//! tests against it in network namespaces). The protocol client is `igd-next`, blocking (its
//! async flavour pulls in hyper): every call here blocks for up to a few seconds, so callers on
//! an async runtime use `spawn_blocking`. What can go wrong is said in plain words with what to
//! do next ([`MapError`]); hosting goes on without the mapping, for people on the same network.

use igd_next::{AddPortError, PortMappingProtocol, SearchOptions};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// How long a mapping is asked for. Routers drop mappings of programs that vanished when the
/// lease runs out, so it is short and renewed at half-life while the call is hosted.
pub const LEASE: Duration = Duration::from_secs(3600);

/// How long to wait for a router to answer the discovery (SSDP) request.
pub const SEARCH_TIMEOUT: Duration = Duration::from_secs(3);

/// What the router said, in the words the host sees.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum MapError {
    #[error(
        "No router answered on this network, so UDP port {port} could not be opened \
         automatically. Turn on UPnP in the router's settings, or forward UDP port {port} to \
         this computer ({local}) by hand; until then only people on your network can join."
    )]
    NoRouter { port: u16, local: IpAddr },
    #[error(
        "The router refused to open UDP port {port} ({reason}). Forward it to this computer \
         ({local}) in the router's settings; until then only people on your network can join."
    )]
    Refused {
        port: u16,
        local: IpAddr,
        reason: String,
    },
    #[error(
        "The router's own internet address ({external}) is not public: your internet provider \
         or a second router shares it, and nobody outside can reach this computer through it. \
         Host the call on a relay with a public address instead (see docs/DEPLOY.md)."
    )]
    NotPublic { external: IpAddr },
    #[error("The router did not answer properly ({0}). Only people on your network can join.")]
    Router(String),
}

/// Whether an address the router reports as its own can be reached from the internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            let shared_cgnat = a == 100 && (64..128).contains(&b); // RFC 6598
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || shared_cgnat
                || a == 0
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00 // unique local
                || (first & 0xffc0) == 0xfe80) // link local
        }
    }
}

/// A forwarded port, held on the router until [`PortMapping::remove`] or the lease ends.
#[derive(Debug)]
pub struct PortMapping {
    gateway: igd_next::Gateway,
    /// The router's public address and the forwarded port: what goes into the invite.
    pub external: SocketAddr,
    /// Where the router sends the traffic (this machine's LAN address and the relay's port).
    pub local: SocketAddr,
    /// The lease granted (zero: the router only grants permanent mappings).
    pub lease: Duration,
}

const DESCRIPTION: &str = "Natter call";

/// Asks the router for UDP `port` (the same external port when it can, any other otherwise).
/// Blocks for up to [`SEARCH_TIMEOUT`] plus the router's answers.
pub fn map_udp_port(port: u16) -> Result<PortMapping, MapError> {
    let options = SearchOptions {
        timeout: Some(SEARCH_TIMEOUT),
        single_search_timeout: Some(SEARCH_TIMEOUT),
        ..Default::default()
    };
    let gateway = igd_next::search_gateway(options).map_err(|_| MapError::NoRouter {
        port,
        local: local_ip_towards(None).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
    })?;
    let local_ip =
        local_ip_towards(Some(gateway.addr)).map_err(|e| MapError::Router(e.to_string()))?;
    let local = SocketAddr::new(local_ip, port);
    let external_ip = gateway
        .get_external_ip()
        .map_err(|e| MapError::Router(e.to_string()))?;
    if !is_public(external_ip) {
        return Err(MapError::NotPublic {
            external: external_ip,
        });
    }
    let refused = |reason: String| MapError::Refused {
        port,
        local: local_ip,
        reason,
    };
    let mut lease = LEASE;
    let external_port = loop {
        match gateway.add_port(
            PortMappingProtocol::UDP,
            port,
            local,
            lease.as_secs() as u32,
            DESCRIPTION,
        ) {
            Ok(()) => break port,
            Err(AddPortError::OnlyPermanentLeasesSupported) if !lease.is_zero() => {
                lease = Duration::ZERO;
            }
            // Someone else holds the port on the router: any free one will do, the invite
            // carries it.
            Err(AddPortError::PortInUse) => {
                break gateway
                    .add_any_port(
                        PortMappingProtocol::UDP,
                        local,
                        lease.as_secs() as u32,
                        DESCRIPTION,
                    )
                    .map_err(|e| refused(e.to_string()))?;
            }
            Err(e) => return Err(refused(e.to_string())),
        }
    };
    Ok(PortMapping {
        gateway,
        external: SocketAddr::new(external_ip, external_port),
        local,
        lease,
    })
}

impl PortMapping {
    /// Asks for the same mapping again, for another lease.
    pub fn renew(&self) -> Result<(), MapError> {
        self.gateway
            .add_port(
                PortMappingProtocol::UDP,
                self.external.port(),
                self.local,
                self.lease.as_secs() as u32,
                DESCRIPTION,
            )
            .map_err(|e| MapError::Router(e.to_string()))
    }

    /// Closes the port on the router.
    pub fn remove(&self) -> Result<(), MapError> {
        self.gateway
            .remove_port(PortMappingProtocol::UDP, self.external.port())
            .map_err(|e| MapError::Router(e.to_string()))
    }

    /// Keeps the mapping alive on a thread of its own (renewing at half the lease) until the
    /// returned guard is dropped, which removes it from the router.
    pub fn keep(self) -> KeptMapping {
        let external = self.external;
        let (stop, stopped) = mpsc::channel::<()>();
        let (done_tx, done) = mpsc::channel::<()>();
        let every = if self.lease.is_zero() {
            None
        } else {
            Some(self.lease / 2)
        };
        thread::Builder::new()
            .name("natter-port-mapping".into())
            .spawn(move || {
                loop {
                    let wait = every.unwrap_or(Duration::MAX);
                    match stopped.recv_timeout(wait) {
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if let Err(e) = self.renew() {
                                tracing::warn!("renewing the router's port mapping: {e}");
                            }
                        }
                        _ => break,
                    }
                }
                match self.remove() {
                    Ok(()) => tracing::info!(%external, "router port mapping removed"),
                    Err(e) => tracing::warn!("removing the router's port mapping: {e}"),
                }
                let _ = done_tx.send(());
            })
            .expect("spawning a thread");
        KeptMapping {
            external,
            stop: Some(stop),
            done,
        }
    }
}

/// A mapping being renewed; dropping it closes the port on the router (waiting up to 2 s for
/// the router to confirm, so a host that quits does not leave the port open behind it).
#[derive(Debug)]
pub struct KeptMapping {
    /// The router's public address and port.
    pub external: SocketAddr,
    stop: Option<mpsc::Sender<()>>,
    done: mpsc::Receiver<()>,
}

impl Drop for KeptMapping {
    fn drop(&mut self) {
        drop(self.stop.take());
        let _ = self.done.recv_timeout(Duration::from_secs(2));
    }
}

/// This machine's address on the route to `to` (or to the internet): a UDP `connect` picks the
/// source address without sending anything.
pub(crate) fn local_ip_towards(to: Option<SocketAddr>) -> std::io::Result<IpAddr> {
    let to = to.unwrap_or_else(|| SocketAddr::from(([192, 0, 2, 1], 9)));
    let socket = UdpSocket::bind(SocketAddr::new(
        match to {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            SocketAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        },
        0,
    ))?;
    socket.connect(to)?;
    Ok(socket.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_routable_router_addresses_count_as_public() {
        for public in ["11.77.0.1", "8.8.8.8", "2001:4860::1", "100.128.0.1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        for not in [
            "10.0.0.1",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.1.1",
            "127.0.0.1",
            "0.0.0.0",
            "198.51.100.1",
            "240.0.0.1",
            "fd00::1",
            "fe80::1",
            "::1",
        ] {
            assert!(!is_public(not.parse().unwrap()), "{not}");
        }
    }

    #[test]
    fn problems_say_what_to_do_in_one_sentence_each() {
        let no_router = MapError::NoRouter {
            port: 4433,
            local: "192.168.1.20".parse().unwrap(),
        }
        .to_string();
        assert!(no_router.contains("forward UDP port 4433 to this computer (192.168.1.20)"));
        let cgnat = MapError::NotPublic {
            external: "100.64.3.4".parse().unwrap(),
        }
        .to_string();
        assert!(cgnat.contains("Host the call on a relay with a public address"));
        assert!(!cgnat.contains("error"), "no jargon: {cgnat}");
    }
}
