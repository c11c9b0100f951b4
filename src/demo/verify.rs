//! Verifiers that delegate every decision to webpki but remember what the peer presented.
//!
//! rustls drops the connection state when verification fails, so without this a rejected handshake
//! could only say *why* ("UnknownIssuer"), not *who* was rejected. For a demo whose point is
//! showing that an impostor is turned away, the who matters. Nothing here weakens verification.

use std::sync::{Arc, OnceLock};

use rustls::{
    DigitallySignedStruct, DistinguishedName, Error, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
};

use super::identity::CertSummary;

/// The end-entity certificate a peer presented on one connection, verified or not.
#[derive(Clone, Debug, Default)]
pub(crate) struct Presented(Arc<OnceLock<CertificateDer<'static>>>);

impl Presented {
    fn record(&self, end_entity: &CertificateDer<'_>) {
        // Only the first is kept; a handshake presents at most one chain.
        let _ = self.0.set(end_entity.clone().into_owned());
    }

    pub(crate) fn summary(&self) -> Option<CertSummary> {
        self.0.get().map(|der| CertSummary::from_der_lossy(der))
    }
}

// === impl ObservingClientVerifier ===

/// Used by the server, one per connection.
#[derive(Debug)]
pub(crate) struct ObservingClientVerifier {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub presented: Presented,
}

impl ClientCertVerifier for ObservingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.presented.record(end_entity);
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

// === impl ObservingServerVerifier ===

/// Used by the client, one per attempt.
#[derive(Debug)]
pub(crate) struct ObservingServerVerifier {
    pub inner: Arc<dyn ServerCertVerifier>,
    pub presented: Presented,
}

impl ServerCertVerifier for ObservingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.presented.record(end_entity);
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}
