//! What the desktop app says when joining or hosting fails: what happened and what to do next,
//! in the user's words, each thing said once — no error codes, OS error numbers, TLS alert
//! names or 64-digit fingerprints. (`natter call` keeps its precise one-line errors: scripts
//! and operators read those.)

use crate::host::HostError;
use crate::transport::ConnectError;
use natter_proto::control::ErrorCode;

/// The sentence for a join that failed with `error`, on `relay` (`host:port`) and `room`.
pub fn join_failure(error: &ConnectError, relay: &str, room: &str) -> String {
    match error {
        ConnectError::Resolve { host, .. } => format!(
            "Natter cannot find the relay \"{host}\". Check the invite link for typing mistakes \
             and that this computer is online."
        ),
        ConnectError::Unreachable(_) => format!(
            "The relay {relay} did not answer. It may be switched off, or a firewall blocks its \
             UDP port; ask whoever runs it."
        ),
        ConnectError::FingerprintMismatch { .. } => format!(
            "The relay {relay} is not the one this invite was made for (its certificate \
             differs), so Natter did not connect. Ask for a new invite link."
        ),
        ConnectError::Tls(reason) if reason.contains("UnknownIssuer") => format!(
            "The relay {relay} uses a certificate no authority vouches for, and the invite \
             carries no fingerprint to check it by. Ask for an invite link that ends in \
             \"?fp=…\"."
        ),
        ConnectError::Tls(_) => format!(
            "Natter could not set up a secure connection to {relay}. Ask for a new invite link."
        ),
        ConnectError::Refused { code, .. } => refused(*code, relay, room),
        ConnectError::Lost(_) | ConnectError::Reset | ConnectError::Silent(_) => format!(
            "The connection to {relay} broke while joining. Check your network and join again."
        ),
        ConnectError::Local(_) => {
            "This computer's network is not working. Check that it is online and join again."
                .to_string()
        }
        ConnectError::Invalid(text) => sentence(text),
    }
}

fn refused(code: ErrorCode, relay: &str, room: &str) -> String {
    match code {
        ErrorCode::RoomFull => {
            format!(
                "The room \"{room}\" is full. Try again later, or ask its host for another room."
            )
        }
        ErrorCode::ServerFull => format!(
            "The relay {relay} has as many people as it can take right now. Try again in a few \
             minutes."
        ),
        ErrorCode::TokenRequired => format!(
            "The relay {relay} admits only invited people, and this invite has no access token. \
             Ask its operator for an invite with one."
        ),
        ErrorCode::TokenInvalid | ErrorCode::TokenWrongRoom => format!(
            "The access token in this invite is not valid for room \"{room}\" on {relay}. Ask \
             for a new invite."
        ),
        ErrorCode::TokenExpired => {
            "The access token in this invite has expired. Ask for a new invite.".to_string()
        }
        ErrorCode::InvalidRoom => format!(
            "\"{room}\" cannot be a room name: use letters, digits and spaces, up to 64 \
             characters."
        ),
        ErrorCode::InvalidName => {
            "That name cannot be used: choose a shorter one without special characters.".to_string()
        }
        ErrorCode::UnsupportedVersion => format!(
            "This version of Natter and the relay {relay} cannot talk to each other. Update \
             Natter, or ask the relay's operator to update it."
        ),
        ErrorCode::ShuttingDown => {
            format!("The relay {relay} is restarting or shutting down. Try again in a minute.")
        }
        ErrorCode::RateLimited | ErrorCode::Timeout => format!(
            "The relay {relay} closed the connection because it was too busy or too slow. Join \
             again."
        ),
        _ => format!(
            "The relay {relay} refused the connection ({}). Join again; if it keeps happening, \
             tell whoever runs it.",
            code.describe()
        ),
    }
}

/// The sentence for hosting that failed with `error` on UDP `port`.
pub fn hosting_failure(error: &HostError, port: u16) -> String {
    match error {
        HostError::Bind(_, e) if e.kind() == std::io::ErrorKind::AddrInUse => format!(
            "UDP port {port} is already used by another program on this computer (another \
             Natter or relay?). Choose another relay port."
        ),
        HostError::Bind(_, e) if e.kind() == std::io::ErrorKind::PermissionDenied => format!(
            "This computer does not allow Natter to use UDP port {port}. Choose a relay port \
             above 1024."
        ),
        HostError::Bind(_, e) => {
            format!("Natter could not start the relay on this computer ({e}).")
        }
        e => format!("Natter could not start the relay on this computer ({e})."),
    }
}

/// `text` as a sentence: capital first letter, full stop at the end.
fn sentence(text: &str) -> String {
    let text = text.trim().trim_end_matches('.');
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => format!("{}{}.", first.to_uppercase(), chars.as_str()),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message is free of jargon and says nothing twice.
    fn plain(message: &str) {
        for jargon in [
            "os error",
            "UnknownIssuer",
            "relay refused:",
            "expected fingerprint",
        ] {
            assert!(!message.contains(jargon), "{jargon:?} in {message:?}");
        }
        assert!(
            !message
                .chars()
                .collect::<Vec<_>>()
                .windows(16)
                .any(|w| w.iter().all(|c| c.is_ascii_hexdigit())),
            "no fingerprints: {message}"
        );
        let words: Vec<&str> = message.split_whitespace().collect();
        for n in [4usize] {
            let mut seen = std::collections::HashSet::new();
            for w in words.windows(n) {
                assert!(
                    seen.insert(w.join(" ")),
                    "repeats {:?}: {message}",
                    w.join(" ")
                );
            }
        }
    }

    #[test]
    fn a_full_room_is_said_once_with_the_next_step() {
        let m = join_failure(
            &ConnectError::Refused {
                code: ErrorCode::RoomFull,
                message: "room \"full\" is full (2 participants)".into(),
            },
            "relay.example:4433",
            "full",
        );
        assert_eq!(
            m,
            "The room \"full\" is full. Try again later, or ask its host for another room."
        );
        plain(&m);
    }

    #[test]
    fn certificate_problems_name_no_fingerprints_or_tls_alerts() {
        let relay = "relay.example:4433";
        let mismatch = join_failure(
            &ConnectError::FingerprintMismatch {
                expected: "ab".repeat(32),
                actual: "cd".repeat(32),
            },
            relay,
            "r",
        );
        plain(&mismatch);
        assert!(mismatch.contains("Ask for a new invite link"));
        let unknown = join_failure(
            &ConnectError::Tls("invalid peer certificate: UnknownIssuer".into()),
            relay,
            "r",
        );
        plain(&unknown);
        assert!(unknown.contains("?fp="));
    }

    #[test]
    fn every_refusal_reads_plainly() {
        for code in 1..=40u16 {
            let m = join_failure(
                &ConnectError::Refused {
                    code: ErrorCode::from_u16(code),
                    message: "detail".into(),
                },
                "relay.example:4433",
                "lounge",
            );
            plain(&m);
            assert!(m.ends_with('.'), "{m}");
        }
    }

    #[test]
    fn a_port_in_use_says_which_and_what_to_do() {
        let e = HostError::Bind(
            "0.0.0.0:4433".parse().unwrap(),
            std::io::Error::from(std::io::ErrorKind::AddrInUse),
        );
        let m = hosting_failure(&e, 4433);
        assert!(m.starts_with("UDP port 4433 is already used"), "{m}");
        plain(&m);
    }
}
