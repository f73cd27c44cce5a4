//! Certificate pinning: a relay is trusted when the SHA-256 of its certificate equals the
//! fingerprint in the invite link (the app, the load generator) or in the cluster directory
//! (a relay dialling another relay's trunk). One verifier for all three. The TLS 1.3 handshake signature is still verified with the
//! certificate's key, so possession of the pinned certificate's private key is proven; only the
//! chain-of-trust question ("who vouches for this key?") is answered by the invite instead of
//! a CA.

use natter_proto::invite::cert_fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};
use std::sync::{Arc, Mutex};

#[derive(Debug)]
pub struct PinnedVerifier {
    /// The pinned fingerprint; `None` makes a trust-on-first-use probe that accepts nothing.
    expected: Option<[u8; 32]>,
    provider: Arc<CryptoProvider>,
    /// The fingerprint actually presented, when it was not accepted (for the error message,
    /// or for asking the user whether to trust it).
    rejected: Mutex<Option<[u8; 32]>>,
}

impl PinnedVerifier {
    pub fn new(expected: [u8; 32], provider: Arc<CryptoProvider>) -> Self {
        Self {
            expected: Some(expected),
            provider,
            rejected: Mutex::new(None),
        }
    }

    /// Trust on first use: accepts no certificate (nothing is sent to a relay the user has not
    /// decided to trust), but records the fingerprint of the one the relay presented, so the
    /// user can be asked and it can be pinned from then on.
    pub fn probe(provider: Arc<CryptoProvider>) -> Self {
        Self {
            expected: None,
            provider,
            rejected: Mutex::new(None),
        }
    }

    /// The fingerprint the relay presented if it was not accepted: the wrong one for a pinned
    /// verifier, the one seen for a probe.
    pub fn mismatch(&self) -> Option<[u8; 32]> {
        *self.rejected.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let actual = cert_fingerprint(end_entity);
        if self.expected == Some(actual) {
            Ok(ServerCertVerified::assertion())
        } else {
            *self.rejected.lock().unwrap_or_else(|p| p.into_inner()) = Some(actual);
            Err(Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // QUIC is TLS 1.3 only (RFC 9001 §4.2).
        Err(Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
