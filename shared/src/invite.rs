//! Invite links: `natter://HOST[:PORT][/ROOM]?fp=SHA256HEX[&token=TOKEN][&edge=HOST:PORT~SHA256HEX]…`.
//!
//! An invite to a cluster names more edges with `edge=` (each with its own certificate
//! fingerprint after `~`, `~` being unreserved in RFC 3986): the client measures the round
//! trip to each and joins the nearest, and moves to the next one when its edge fails
//! ([`Invite::candidates`]).
//!
//! The fingerprint pins the relay's certificate (SHA-256 of its DER encoding), so a
//! self-signed relay is as safe to reach as one with a WebPKI certificate: whoever holds the
//! link can tell the real relay from an impostor. Without `fp` the client falls back to WebPKI
//! validation. Room and token are percent-encoded (RFC 3986) so any name fits.

use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// The link scheme.
pub const SCHEME: &str = "natter://";

/// Port used when a link names none.
pub const DEFAULT_PORT: u16 = 4433;

/// Most edges one invite may name besides its host: a link stays short enough to paste, and a
/// client probes them all at once.
pub const MAX_EDGES: usize = 16;

/// Another relay of the same cluster that an invite (or the relay itself) names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Edge {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// SHA-256 of its certificate, if pinned (each edge has its own).
    pub fingerprint: Option<[u8; 32]>,
}

impl Edge {
    /// `host:port` suitable for name resolution (IPv6 in brackets).
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }
}

impl fmt::Display for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority())?;
        if let Some(fp) = &self.fingerprint {
            write!(f, "~{}", fingerprint_hex(fp))?;
        }
        Ok(())
    }
}

impl FromStr for Edge {
    type Err = InviteError;

    /// `HOST:PORT` or `[IPV6]:PORT`, then `~FINGERPRINT` if pinned.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, fp) = match s.split_once('~') {
            Some((addr, fp)) => (addr, Some(parse_fingerprint(fp)?)),
            None => (s, None),
        };
        let (host, port) = parse_authority(addr)?;
        Ok(Self {
            host,
            port,
            fingerprint: fp,
        })
    }
}

/// A parsed invite link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    pub room: Option<String>,
    /// SHA-256 of the relay certificate, if pinned.
    pub fingerprint: Option<[u8; 32]>,
    pub token: Option<String>,
    /// The cluster's other edges (at most [`MAX_EDGES`]), if the invite names any.
    pub edges: Vec<Edge>,
}

/// What is wrong with an invite link; each variant names the part at fault.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InviteError {
    #[error("invite must start with {SCHEME}")]
    BadScheme,
    #[error("invite has no host")]
    MissingHost,
    #[error("invite host {0:?} is not a host name or IP address")]
    BadHost(String),
    #[error("invite has a malformed IPv6 host: write [ADDRESS] or [ADDRESS]:PORT")]
    BadIpv6,
    #[error("invite port {0:?} is not a number from 1 to 65535")]
    BadPort(String),
    #[error("invite fingerprint must be 64 hex digits (SHA-256), got {0:?}")]
    BadFingerprint(String),
    #[error("invite {0} is not valid percent-encoded UTF-8")]
    BadEncoding(&'static str),
    #[error("invite room name is not valid ({})", crate::control::NAME_RULE)]
    BadRoom,
    #[error("invite names more than {MAX_EDGES} edges")]
    TooManyEdges,
    #[error("invite edge {0:?} is not HOST:PORT~FINGERPRINT (64 hex digits)")]
    BadEdge(String),
}

impl Invite {
    /// A link for `host:port` with the given pin, no room, no token.
    pub fn new(host: impl Into<String>, port: u16, fingerprint: Option<[u8; 32]>) -> Self {
        Self {
            host: host.into(),
            port,
            room: None,
            fingerprint,
            token: None,
            edges: Vec::new(),
        }
    }

    /// `host:port` suitable for name resolution (IPv6 in brackets).
    pub fn authority(&self) -> String {
        authority(&self.host, self.port)
    }

    /// Where this invite can be joined, one single-relay invite each: its own host first,
    /// then each edge (same room and token, the edge's own pin), without repeats.
    pub fn candidates(&self) -> Vec<Invite> {
        let first = Invite {
            edges: Vec::new(),
            ..self.clone()
        };
        let mut all = vec![first];
        for edge in &self.edges {
            let candidate = self.at(edge);
            if !all.iter().any(|c| c.authority() == candidate.authority()) {
                all.push(candidate);
            }
        }
        all
    }

    /// The same room and token at another edge of the cluster.
    pub fn at(&self, edge: &Edge) -> Invite {
        Invite {
            host: edge.host.clone(),
            port: edge.port,
            fingerprint: edge.fingerprint,
            edges: Vec::new(),
            ..self.clone()
        }
    }

    /// This invite's relay as an edge of its cluster.
    pub fn edge(&self) -> Edge {
        Edge {
            host: self.host.clone(),
            port: self.port,
            fingerprint: self.fingerprint,
        }
    }
}

fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `HOST[:PORT]` or `[IPV6][:PORT]` (port [`DEFAULT_PORT`] when absent), checked: what an
/// invite's authority and each of its edges hold, and what the relays publish as their
/// address.
pub fn parse_authority(authority: &str) -> Result<(String, u16), InviteError> {
    let (host, port_str) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or(InviteError::BadIpv6)?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(InviteError::BadIpv6);
        }
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(InviteError::BadIpv6)?),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(InviteError::MissingHost);
    }
    if !valid_host(host) {
        return Err(InviteError::BadHost(host.to_string()));
    }
    let port = match port_str {
        None => DEFAULT_PORT,
        Some(p) => Some(p)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| InviteError::BadPort(p.to_string()))?,
    };
    Ok((host.to_string(), port))
}

/// SHA-256 of a DER certificate: the value invite links pin. The relay computes it for its
/// invite, clients and the load generator for the certificate a relay presents.
pub fn cert_fingerprint(der: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(der).into()
}

/// Formats a fingerprint as lowercase hex.
pub fn fingerprint_hex(fp: &[u8; 32]) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses 64 hex digits (colons between bytes are tolerated, as browsers print them).
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], InviteError> {
    let bad = || InviteError::BadFingerprint(s.to_string());
    let digits: Vec<u8> = s.bytes().filter(|b| *b != b':').collect();
    if digits.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks(2).enumerate() {
        out[i] = hex_byte(pair).ok_or_else(bad)?;
    }
    Ok(out)
}

/// Parses exactly two hex digits (no sign, unlike `u8::from_str_radix`).
fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |b: u8| (b as char).to_digit(16);
    match pair {
        [hi, lo] => Some((digit(*hi)? * 16 + digit(*lo)?) as u8),
        _ => None,
    }
}

/// A DNS name (letters, digits, '-', '.', '_') or an IP address; anything else could print
/// as a link that parses back to a different relay.
fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        && !host.starts_with(['-', '.'])
}

fn percent_decode(s: &str, what: &'static str) -> Result<String, InviteError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(hex_byte)
                    .ok_or(InviteError::BadEncoding(what))?;
                out.push(hex);
                i += 3;
            }
            b'+' if what != "room" => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| InviteError::BadEncoding(what))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl FromStr for Invite {
    type Err = InviteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let rest = s
            .get(..SCHEME.len())
            .filter(|p| p.eq_ignore_ascii_case(SCHEME))
            .map(|_| &s[SCHEME.len()..])
            .ok_or(InviteError::BadScheme)?;
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = before_query.split_once('/').unwrap_or((before_query, ""));

        let (host, port) = parse_authority(authority)?;
        let path = path.trim_end_matches('/');
        let room = if path.is_empty() {
            None
        } else {
            let room = percent_decode(path, "room")?;
            if !crate::control::valid_name(&room) {
                return Err(InviteError::BadRoom);
            }
            Some(room)
        };

        let mut fingerprint = None;
        let mut token = None;
        let mut edges: Vec<Edge> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "fp" => fingerprint = Some(parse_fingerprint(value)?),
                "token" => token = Some(percent_decode(value, "token")?),
                "edge" => {
                    if edges.len() == MAX_EDGES {
                        return Err(InviteError::TooManyEdges);
                    }
                    let edge = percent_decode(value, "edge")?;
                    edges.push(edge.parse().map_err(|_| InviteError::BadEdge(edge))?);
                }
                // Parameters from newer versions are ignored.
                _ => {}
            }
        }
        Ok(Self {
            host,
            port,
            room,
            fingerprint,
            token,
            edges,
        })
    }
}

impl fmt::Display for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.authority())?;
        if let Some(room) = &self.room {
            write!(f, "/{}", percent_encode(room))?;
        }
        let mut sep = '?';
        if let Some(fp) = &self.fingerprint {
            write!(f, "{sep}fp={}", fingerprint_hex(fp))?;
            sep = '&';
        }
        if let Some(token) = &self.token {
            write!(f, "{sep}token={}", percent_encode(token))?;
            sep = '&';
        }
        for edge in &self.edges {
            // Brackets and ':' are kept as they are: a query may hold them (RFC 3986).
            write!(f, "{sep}edge={edge}")?;
            sep = '&';
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FP: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    #[test]
    fn parses_full_link() {
        let inv: Invite = format!("natter://relay.example:4433/team%20room?fp={FP}&token=a.b")
            .parse()
            .unwrap();
        assert_eq!(inv.host, "relay.example");
        assert_eq!(inv.port, 4433);
        assert_eq!(inv.room.as_deref(), Some("team room"));
        assert_eq!(inv.fingerprint.unwrap()[1], 0x11);
        assert_eq!(inv.token.as_deref(), Some("a.b"));
        assert_eq!(inv.to_string().parse::<Invite>().unwrap(), inv);
    }

    #[test]
    fn ipv6_and_defaults() {
        let inv: Invite = "natter://[::1]?x=1".parse().unwrap();
        assert_eq!((inv.host.as_str(), inv.port), ("::1", DEFAULT_PORT));
        assert_eq!(inv.authority(), "[::1]:4433");
        assert_eq!(inv.to_string(), "natter://[::1]:4433");
    }

    #[test]
    fn names_what_is_wrong() {
        use InviteError::*;
        assert_eq!("http://x".parse::<Invite>(), Err(BadScheme));
        assert_eq!("natter://:4433".parse::<Invite>(), Err(MissingHost));
        assert_eq!(
            "natter://h:99999".parse::<Invite>(),
            Err(BadPort("99999".into()))
        );
        assert_eq!("natter://[::1".parse::<Invite>(), Err(BadIpv6));
        assert_eq!("natter://[::1]junk".parse::<Invite>(), Err(BadIpv6));
        assert_eq!("natter://[nope]:1".parse::<Invite>(), Err(BadIpv6));
        // Found by the fuzzer: these printed as links that parsed to another host.
        assert_eq!("natter://]::1".parse::<Invite>(), Err(BadHost("]:".into())));
        assert_eq!(
            "natter://a]b::1".parse::<Invite>(),
            Err(BadHost("a]b:".into()))
        );
        assert_eq!("natter://::1".parse::<Invite>(), Err(BadHost(":".into())));
        assert_eq!(
            "natter://h:+443".parse::<Invite>(),
            Err(BadPort("+443".into()))
        );
        assert_eq!(
            "natter://h:1/%+1".parse::<Invite>(),
            Err(BadEncoding("room"))
        );
        assert_eq!(
            "natter://h:1?fp=abc".parse::<Invite>(),
            Err(BadFingerprint("abc".into()))
        );
        assert_eq!(
            "natter://h:1/%zz".parse::<Invite>(),
            Err(BadEncoding("room"))
        );
        assert_eq!("natter://h:1/%0A".parse::<Invite>(), Err(BadRoom));
    }

    /// Any host a relay can be reached at: a DNS name (letters, digits, inner hyphens and
    /// underscores, optionally fully qualified with a final dot), an IPv4 address, or an IPv6
    /// address in any textual shape (`::` compression, IPv4-mapped, all groups).
    fn hosts() -> impl Strategy<Value = String> {
        let label = "[a-zA-Z0-9]([a-zA-Z0-9_-]{0,20}[a-zA-Z0-9])?";
        prop_oneof![
            (proptest::collection::vec(label, 1..5), any::<bool>())
                .prop_map(|(labels, fqdn)| labels.join(".") + if fqdn { "." } else { "" }),
            any::<std::net::Ipv4Addr>().prop_map(|a| a.to_string()),
            any::<std::net::Ipv6Addr>().prop_map(|a| a.to_string()),
            // Runs of zero groups, so that `::` appears anywhere.
            (any::<[u16; 8]>(), any::<u8>()).prop_map(|(mut groups, zeros)| {
                for (i, g) in groups.iter_mut().enumerate() {
                    if zeros & (1 << i) != 0 {
                        *g = 0;
                    }
                }
                std::net::Ipv6Addr::from(groups).to_string()
            }),
        ]
    }

    /// Any access token: printable ASCII (with `&`, `=`, `+`, `%`, `#`, space …) or any
    /// Unicode, control characters included; never empty (an empty token means none).
    fn tokens() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ -~]{1,64}",
            proptest::collection::vec(any::<char>(), 1..64).prop_map(String::from_iter),
        ]
    }

    fn edges() -> impl Strategy<Value = Edge> {
        (hosts(), 1u16.., any::<Option<[u8; 32]>>()).prop_map(|(host, port, fingerprint)| Edge {
            host,
            port,
            fingerprint,
        })
    }

    #[test]
    fn a_cluster_invite_lists_its_edges_as_candidates_host_first() {
        let fp2 = FP.replace("00", "22");
        let link = format!(
            "natter://a.example:4433/team?fp={FP}&token=t&edge=b.example:4434~{fp2}&edge=[::1]:4435&edge=a.example:4433~{FP}"
        );
        let inv: Invite = link.parse().unwrap();
        assert_eq!(inv.edges.len(), 3);
        assert_eq!(inv.to_string().parse::<Invite>().unwrap(), inv);
        let candidates = inv.candidates();
        let where_: Vec<String> = candidates.iter().map(Invite::authority).collect();
        // The repeat of the host itself is not probed twice.
        assert_eq!(where_, ["a.example:4433", "b.example:4434", "[::1]:4435"]);
        assert!(candidates.iter().all(|c| c.edges.is_empty()
            && c.room.as_deref() == Some("team")
            && c.token.as_deref() == Some("t")));
        assert_eq!(
            candidates[1].fingerprint,
            Some(parse_fingerprint(&fp2).unwrap())
        );
        assert_eq!(candidates[2].fingerprint, None);
    }

    #[test]
    fn a_bad_edge_is_named() {
        use InviteError::*;
        assert_eq!(
            "natter://h:1?edge=b:0".parse::<Invite>(),
            Err(BadEdge("b:0".into()))
        );
        assert_eq!(
            "natter://h:1?edge=b:1~abc".parse::<Invite>(),
            Err(BadEdge("b:1~abc".into()))
        );
        let many: String = (0..=MAX_EDGES).map(|i| format!("&edge=e{i}:1")).collect();
        assert_eq!(
            format!("natter://h:1?x{many}").parse::<Invite>(),
            Err(TooManyEdges)
        );
    }

    proptest! {
        /// Every valid invite prints as a link that parses back to the same invite: any host
        /// form, any port, any valid room name (percent-encoded), any fingerprint and token,
        /// and up to [`MAX_EDGES`] edges.
        #[test]
        fn any_valid_invite_round_trips(host in hosts(), port in 1u16.., room in proptest::option::of(crate::control::tests::valid_names()),
                                        fingerprint: Option<[u8; 32]>, token in proptest::option::of(tokens()),
                                        edges in proptest::collection::vec(edges(), 0..=MAX_EDGES)) {
            let inv = Invite { host, port, room, fingerprint, token, edges };
            let link = inv.to_string();
            prop_assert_eq!(link.parse::<Invite>(), Ok(inv), "{}", link);
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<Invite>();
            let _ = format!("natter://{s}").parse::<Invite>();
        }

        #[test]
        fn display_round_trips(host in "[a-z0-9][a-z0-9.-]{0,19}", port in 1u16.., room in proptest::option::of("[^\\p{Cc}/?]{1,20}"),
                               fp: Option<[u8; 32]>, token in proptest::option::of("[ -~]{1,30}")) {
            prop_assume!(room.as_ref().is_none_or(|r| crate::control::valid_name(r)));
            let inv = Invite { host, port, room, fingerprint: fp, token, edges: Vec::new() };
            prop_assert_eq!(inv.to_string().parse::<Invite>().unwrap(), inv);
        }
    }
}
