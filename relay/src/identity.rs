//! The relay's TLS identity.
//!
//! A self-hosted relay usually has no CA-signed certificate, so on first start it generates a
//! self-signed one (rcgen) and keeps it in its data directory: the SHA-256 fingerprint printed
//! in invites then stays valid across restarts, and clients pin it instead of trusting a CA.
//! Operators with a real certificate (e.g. Let's Encrypt) pass PEM files instead.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// File names inside the data directory.
const CERT_FILE: &str = "relay-cert.pem";
const KEY_FILE: &str = "relay-key.pem";

/// What went wrong loading or creating the identity; each names the file at fault.
#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("cannot create data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, String),
    #[error("cannot write {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("{0} holds no certificate")]
    NoCertificate(PathBuf),
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

/// A certificate chain, its private key and the end-entity certificate's fingerprint.
#[derive(Debug)]
pub struct Identity {
    pub certs: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the end-entity certificate's DER encoding, as pinned in invite links.
    pub fingerprint: [u8; 32],
    /// True when the certificate is Natter's own self-signed one (invites must pin it).
    pub self_signed: bool,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint,
            self_signed: self.self_signed,
        }
    }
}

pub use natter_proto::invite::cert_fingerprint;

impl Identity {
    /// A fresh self-signed identity held only in memory (embedded relays, tests).
    pub fn generate() -> Result<Self, IdentityError> {
        let (cert_pem, key_pem) = generate_pem()?;
        let origin = Path::new("<generated>");
        Self::from_pem(
            cert_pem.as_bytes(),
            key_pem.as_bytes(),
            (origin, origin),
            true,
        )
    }

    /// Loads the self-signed identity from `data_dir`, generating and saving it on first use.
    pub fn load_or_generate(data_dir: &Path) -> Result<Self, IdentityError> {
        let cert_path = data_dir.join(CERT_FILE);
        let key_path = data_dir.join(KEY_FILE);
        if !cert_path.exists() || !key_path.exists() {
            create_private_dir(data_dir)?;
            let (cert_pem, key_pem) = generate_pem()?;
            write_private(&key_path, key_pem.as_bytes())?;
            std::fs::write(&cert_path, cert_pem)
                .map_err(|e| IdentityError::Write(cert_path.clone(), e))?;
        }
        // Whatever the umask was when the files were made, or whoever made them: the key is
        // the relay's identity, readable by its owner only (a key file left 0644 by an older
        // version or a careless copy is tightened, not trusted as is).
        restrict(&key_path, 0o600)?;
        let mut id = Self::from_pem_files(&cert_path, &key_path)?;
        id.self_signed = true;
        Ok(id)
    }

    /// Loads a certificate chain and key from PEM files (e.g. Let's Encrypt's fullchain.pem
    /// and privkey.pem).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, IdentityError> {
        let cert_pem =
            std::fs::read(cert).map_err(|e| IdentityError::Read(cert.into(), e.to_string()))?;
        let key_pem =
            std::fs::read(key).map_err(|e| IdentityError::Read(key.into(), e.to_string()))?;
        Self::from_pem(&cert_pem, &key_pem, (cert, key), false)
    }

    /// Parses PEM bytes; `origin` names the (certificate, key) files in errors.
    fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        origin: (&Path, &Path),
        self_signed: bool,
    ) -> Result<Self, IdentityError> {
        let (cert_origin, key_origin) = origin;
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                IdentityError::Read(cert_origin.into(), format!("bad certificate PEM: {e}"))
            })?;
        let first = certs
            .first()
            .ok_or_else(|| IdentityError::NoCertificate(cert_origin.into()))?;
        let fingerprint = cert_fingerprint(first);
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            IdentityError::Read(key_origin.into(), format!("bad private key PEM: {e}"))
        })?;
        Ok(Self {
            certs,
            key,
            fingerprint,
            self_signed,
        })
    }
}

fn generate_pem() -> Result<(String, String), IdentityError> {
    let ck = rcgen::generate_simple_self_signed(vec![
        "natter-relay".to_string(),
        "localhost".to_string(),
    ])
    .map_err(|e| IdentityError::Generate(e.to_string()))?;
    Ok((ck.cert.pem(), ck.key_pair.serialize_pem()))
}

/// Creates the data directory (and its parents) and makes it the owner's only: mode 0700 set
/// explicitly, since the mode `create_dir_all` gives depends on the umask (0777 under umask
/// 000).
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), IdentityError> {
    std::fs::create_dir_all(dir).map_err(|e| IdentityError::DataDir(dir.into(), e))?;
    restrict(dir, 0o700).map_err(|_| {
        IdentityError::DataDir(dir.into(), std::io::Error::other("cannot set mode 0700"))
    })
}

/// Sets `path`'s permission bits to `mode` (Unix; elsewhere the OS defaults stand).
pub(crate) fn restrict(path: &Path, mode: u32) -> Result<(), IdentityError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| IdentityError::Write(path.into(), e))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

/// Writes a private key readable by the owner only: created with mode 0600 (so it is never
/// readable by others, not even for a moment), then set to 0600 in case the umask took bits
/// away or the file was already there.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), IdentityError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .map_err(|e| IdentityError::Write(path.into(), e))?;
    restrict(path, 0o600)?;
    f.write_all(bytes)
        .map_err(|e| IdentityError::Write(path.into(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_is_kept_across_restarts() {
        let dir = std::env::temp_dir().join(format!("natter-id-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let first = Identity::load_or_generate(&dir).unwrap();
        let second = Identity::load_or_generate(&dir).unwrap();
        assert_eq!(first.fingerprint, second.fingerprint);
        assert!(first.self_signed);
        assert_ne!(Identity::generate().unwrap().fingerprint, first.fingerprint);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// The data directory is 0700 and the key 0600 whatever the umask, and a key file someone
    /// left readable (0644) is tightened on the next start.
    #[cfg(unix)]
    #[test]
    fn the_key_and_its_directory_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let root = std::env::temp_dir().join(format!("natter-perm-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("data");
        // A permissive parent and umask stand-in: the directory exists already with 0777.
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        Identity::load_or_generate(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        std::fs::set_permissions(dir.join(KEY_FILE), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        Identity::load_or_generate(&dir).unwrap();
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn bad_pem_names_the_file() {
        let dir = std::env::temp_dir().join(format!("natter-pem-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = dir.join("c.pem");
        let key = dir.join("k.pem");
        std::fs::write(&cert, "not pem").unwrap();
        std::fs::write(&key, "not pem").unwrap();
        let err = Identity::from_pem_files(&cert, &key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.pem"), "{err}");
        let missing = Identity::from_pem_files(&dir.join("nope.pem"), &key)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope.pem"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
