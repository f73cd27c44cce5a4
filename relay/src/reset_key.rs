//! The QUIC stateless-reset key, kept in the data directory.
//!
//! A QUIC server hands each client, with every connection id it issues, a reset token derived
//! from this key and that id (RFC 9000 §10.3). When a packet arrives for a connection the
//! server does not know, it answers with that token, and the client drops the connection at
//! once. quinn draws a fresh random key per endpoint by default, so a relay that crashed and
//! was restarted cannot compute its old tokens: its clients keep sending into the void until
//! their idle timeout (6 s) before they reconnect. With the key kept on disk, the restarted
//! relay resets them the moment their next packet (audio every 20 ms, keep-alives every
//! second) reaches it, and they rejoin within a second of the restart.

use crate::identity::{IdentityError, create_private_dir, restrict, write_private};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// File name inside the data directory (mode 0600, like the certificate's key).
pub const RESET_KEY_FILE: &str = "reset-key";

/// Bytes of key material: a full HMAC-SHA256 block's worth of entropy is more than enough.
const KEY_LEN: usize = 32;

/// The secret behind every stateless-reset token this relay issues. Knowing it lets anyone
/// who sees a connection id reset that connection, so it lives in the private data directory
/// and never in logs (`Debug` prints no bytes).
#[derive(Clone)]
pub struct ResetKey([u8; KEY_LEN]);

impl std::fmt::Debug for ResetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetKey(..)")
    }
}

impl ResetKey {
    /// A fresh random key held only in memory (embedded relays and tests, whose restarts need
    /// not reset anyone).
    pub fn generate() -> Self {
        let mut key = [0u8; KEY_LEN];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .expect("the operating system's random number generator failed");
        Self(key)
    }

    /// Loads the key from `data_dir`, creating it (0600, in a 0700 directory) on first use, so
    /// that every later start of this relay issues the same tokens.
    pub fn load_or_create(data_dir: &Path) -> Result<Self, IdentityError> {
        let path = data_dir.join(RESET_KEY_FILE);
        if !path.exists() {
            create_private_dir(data_dir)?;
            let key = Self::generate();
            write_private(&path, &key.0)?;
            return Ok(key);
        }
        restrict(&path, 0o600)?;
        let bytes =
            std::fs::read(&path).map_err(|e| IdentityError::Read(path.clone(), e.to_string()))?;
        Self::from_file_bytes(&bytes, path)
    }

    fn from_file_bytes(bytes: &[u8], path: PathBuf) -> Result<Self, IdentityError> {
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            IdentityError::Read(
                path,
                format!(
                    "holds {} bytes, not the {KEY_LEN} of a reset key (delete it: the relay makes \
                     a new one, and connections open at the moment of the next restart then wait \
                     for their idle timeout once)",
                    bytes.len()
                ),
            )
        })?;
        Ok(Self(key))
    }

    /// The quinn endpoint configuration that issues tokens from this key.
    ///
    /// The connection ids must outlive a restart too: quinn's server ids carry a keyed hash,
    /// and a packet whose id fails the check is dropped without a reset. With a fresh random
    /// hash key per start, the restarted relay would take its old clients' packets for noise.
    /// So that key is derived from this one as well.
    pub fn endpoint_config(&self) -> quinn::EndpointConfig {
        let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.0);
        let tag = ring::hmac::sign(&hmac, b"natter connection id key");
        let cid_key = u64::from_le_bytes(tag.as_ref()[..8].try_into().expect("8 of 32 bytes"));
        let mut config = quinn::EndpointConfig::new(Arc::new(hmac));
        config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_once_and_kept_private() {
        let root = std::env::temp_dir().join(format!("natter-reset-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("data");
        let first = ResetKey::load_or_create(&dir).unwrap();
        let second = ResetKey::load_or_create(&dir).unwrap();
        assert_eq!(first.0, second.0, "a restart must issue the same tokens");
        assert_ne!(first.0, ResetKey::generate().0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir.join(RESET_KEY_FILE)), 0o600);
            assert_eq!(mode(&dir), 0o700);
        }
        assert_eq!(format!("{first:?}"), "ResetKey(..)");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_damaged_key_file_is_named_not_replaced() {
        let root = std::env::temp_dir().join(format!("natter-reset-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join(RESET_KEY_FILE), b"short").unwrap();
        let err = ResetKey::load_or_create(&root).unwrap_err().to_string();
        assert!(
            err.contains(RESET_KEY_FILE) && err.contains("5 bytes"),
            "{err}"
        );
        assert_eq!(std::fs::read(root.join(RESET_KEY_FILE)).unwrap(), b"short");
        let _ = std::fs::remove_dir_all(&root);
    }
}
