//! Access tokens: `natter-relay token` mints them, the relay checks them on Join.
//!
//! A token is `v1.<payload>.<mac>`, both parts base64url without padding: the payload is JSON
//! `{"room":…, "exp":<unix seconds>, "name":…?}` and the MAC is HMAC-SHA256 over the text
//! `v1.<payload>` with the relay's secret. Anyone can read a token (it is not encrypted: it
//! only names a room and an expiry), nobody without the secret can make or alter one. Time
//! is passed in, so checks are testable without a clock.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use natter_proto::control::ErrorCode;
use sha2::Sha256;

const VERSION: &str = "v1";

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    pub room: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// If set, the participant's display name is this one, whatever the client asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Why a token was refused; each maps to its own error code so clients can say it in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token at all, or the signature does not verify (forged, or another relay's).
    Invalid,
    Expired,
    /// Valid, but for another room.
    WrongRoom,
}

impl TokenError {
    pub fn code(self) -> ErrorCode {
        match self {
            Self::Invalid => ErrorCode::TokenInvalid,
            Self::Expired => ErrorCode::TokenExpired,
            Self::WrongRoom => ErrorCode::TokenWrongRoom,
        }
    }
}

fn mac(secret: &[u8], signed: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(signed.as_bytes());
    mac
}

/// Signs `claims` with `secret`.
pub fn mint(secret: &[u8], claims: &Claims) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
    let signed = format!("{VERSION}.{payload}");
    let tag = URL_SAFE_NO_PAD.encode(mac(secret, &signed).finalize().into_bytes());
    format!("{signed}.{tag}")
}

/// Checks a token for `room` at `now` (Unix seconds). The MAC is compared in constant time
/// before anything in the payload is trusted.
pub fn verify(secret: &[u8], token: &str, room: &str, now: u64) -> Result<Claims, TokenError> {
    let (signed, tag) = token.rsplit_once('.').ok_or(TokenError::Invalid)?;
    let (version, payload) = signed.split_once('.').ok_or(TokenError::Invalid)?;
    if version != VERSION {
        return Err(TokenError::Invalid);
    }
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| TokenError::Invalid)?;
    mac(secret, signed)
        .verify_slice(&tag)
        .map_err(|_| TokenError::Invalid)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Invalid)?;
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Invalid)?;
    if now >= claims.exp {
        return Err(TokenError::Expired);
    }
    if claims.room != room {
        return Err(TokenError::WrongRoom);
    }
    Ok(claims)
}

/// Parses a duration like `90s`, `15m`, `1h`, `7d` (or plain seconds) into seconds.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 15m, 1h or 7d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use s, m, h or d)"
            ));
        }
    };
    let secs = n
        .checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is longer than {MAX_TTL_DAYS} days"))?;
    if secs == 0 {
        return Err(format!("{s:?} is not a positive duration"));
    }
    if secs > MAX_TTL_DAYS * 86_400 {
        return Err(format!("{s:?} is longer than {MAX_TTL_DAYS} days"));
    }
    Ok(secs)
}

/// Longest token lifetime `parse_ttl` accepts: ten years, far beyond any sensible invite and
/// far below where `now + ttl` could overflow.
pub const MAX_TTL_DAYS: u64 = 3_650;

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"correct horse battery staple";

    fn claims(room: &str, exp: u64) -> Claims {
        Claims {
            room: room.into(),
            exp,
            name: Some("Alice".into()),
        }
    }

    #[test]
    fn accepts_a_fresh_token_for_its_room() {
        let t = mint(SECRET, &claims("team", 1_000));
        assert_eq!(verify(SECRET, &t, "team", 999), Ok(claims("team", 1_000)));
    }

    #[test]
    fn distinct_errors_for_expired_wrong_room_and_forged() {
        let t = mint(SECRET, &claims("team", 1_000));
        assert_eq!(verify(SECRET, &t, "team", 1_000), Err(TokenError::Expired));
        assert_eq!(verify(SECRET, &t, "other", 10), Err(TokenError::WrongRoom));
        assert_eq!(
            verify(b"another relay", &t, "team", 10),
            Err(TokenError::Invalid)
        );
        // Changing the payload (e.g. to another room or a later expiry) breaks the MAC.
        let (head, tag) = t.rsplit_once('.').unwrap();
        let forged_payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims("team", u64::MAX)).unwrap());
        let forged = format!("v1.{forged_payload}.{tag}");
        assert_ne!(forged, t);
        assert_eq!(
            verify(SECRET, &forged, "team", 10),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            verify(SECRET, &format!("{head}.AAAA"), "team", 10),
            Err(TokenError::Invalid)
        );
        for junk in ["", "v1", "v1..", "v2.e30.AAAA", "not a token", "v1.!!!.???"] {
            assert_eq!(
                verify(SECRET, junk, "team", 10),
                Err(TokenError::Invalid),
                "{junk:?}"
            );
        }
        assert_eq!(TokenError::Expired.code(), ErrorCode::TokenExpired);
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("1h"), Ok(3_600));
        assert_eq!(parse_ttl("7d"), Ok(604_800));
        assert_eq!(parse_ttl("42"), Ok(42));
        assert!(parse_ttl("1w").unwrap_err().contains("unknown unit"));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("h").is_err());
        // Overflowing or absurd lifetimes are refused, not wrapped or panicked on.
        for absurd in ["18446744073709551615s", "18446744073709551615d", "3651d"] {
            assert!(
                parse_ttl(absurd).unwrap_err().contains("longer than"),
                "{absurd}"
            );
        }
        assert_eq!(parse_ttl("3650d"), Ok(3_650 * 86_400));
    }
}
