//! TLS on the listener (rustls): TLS 1.2 and 1.3 only, the certificate and key
//! read again when their files change, and optional client certificates with the
//! semantics of the Prometheus exporter-toolkit web configuration, which
//! operators already know (`client_auth_type`, `client_ca_file`,
//! `client_allowed_sans`).
//!
//! A reloaded certificate is served to new handshakes; connections already open
//! keep the session they have, so nothing is dropped. Handshakes run concurrently,
//! off the accept loop, so a slow or silent client cannot stall others.
//!
//! Requests served over TLS carry `ConnectInfo<SocketAddr>` as plain HTTP ones do
//! and, when the client's certificate was verified against the client CA, a
//! [`PeerCertificate`] extension with its subject alternative names: the identity
//! the client-certificate authenticator reads. An unverified certificate
//! (`RequestClientCert`, `RequireAnyClientCert`) is never exposed as an identity.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

pub use crate::auth::cert::PeerCertificate;
use crate::telemetry::{Metrics, ReasonLabels};
use crate::watched::{self, LoadError, Watched};

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `tls` section. TLS is on when `cert_file` and `key_file` are set.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The listener's certificate chain (PEM), leaf first.
    pub cert_file: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates are verified against.
    pub client_ca_file: Option<PathBuf>,
    /// Whether clients are asked for a certificate and whether it is verified.
    pub client_auth_type: ClientAuthType,
    /// If set, a client certificate must carry one of these subject alternative
    /// names (DNS name, e-mail address, IP address or URI, matched exactly), or
    /// the handshake fails.
    pub client_allowed_sans: Vec<String>,
}

/// The exporter-toolkit's `client_auth_type` values.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum ClientAuthType {
    /// Clients are not asked for a certificate.
    #[default]
    NoClientCert,
    /// Asked for one, not required, not verified.
    RequestClientCert,
    /// Required, not verified.
    #[serde(alias = "RequireClientCert")]
    RequireAnyClientCert,
    /// Verified against `client_ca_file` if given.
    VerifyClientCertIfGiven,
    /// Required and verified against `client_ca_file`.
    RequireAndVerifyClientCert,
}

impl ClientAuthType {
    fn verifies(self) -> bool {
        matches!(self, ClientAuthType::VerifyClientCertIfGiven | ClientAuthType::RequireAndVerifyClientCert)
    }

    fn requires(self) -> bool {
        matches!(self, ClientAuthType::RequireAnyClientCert | ClientAuthType::RequireAndVerifyClientCert)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: {0}")]
    Invalid(&'static str),
    #[error("tls: {0}")]
    Load(#[source] LoadError),
    #[error("tls.client_ca_file: {0}")]
    ClientCa(#[source] rustls::server::VerifierBuilderError),
}

/// A built TLS setup: the rustls configuration and whether client certificates
/// it accepts are verified.
#[derive(Clone)]
pub struct Tls {
    acceptor: TlsAcceptor,
    verified: bool,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Refuses what the exporter-toolkit refuses.
    pub fn validate(&self) -> Result<(), &'static str> {
        let mode = self.client_auth_type;
        match (&self.cert_file, &self.key_file) {
            (Some(_), Some(_)) => {}
            (None, None) if self.client_ca_file.is_none() && mode == ClientAuthType::NoClientCert => {}
            (None, None) => return Err("client certificate settings need cert_file and key_file"),
            _ => return Err("cert_file and key_file must be set together"),
        }
        if self.client_ca_file.is_some() && mode == ClientAuthType::NoClientCert {
            return Err("client_ca_file is set but client_auth_type is NoClientCert");
        }
        if mode.verifies() && self.client_ca_file.is_none() {
            return Err("client_auth_type verifies client certificates: set client_ca_file");
        }
        if !self.client_allowed_sans.is_empty() && !mode.requires() {
            return Err(
                "client_allowed_sans requires client_auth_type RequireAnyClientCert or RequireAndVerifyClientCert",
            );
        }
        Ok(())
    }

    /// Validates and loads the files; `None` when TLS is off.
    pub fn build(&self) -> Result<Option<Tls>, TlsError> {
        self.validate().map_err(TlsError::Invalid)?;
        let (Some(cert), Some(key)) = (self.cert_file.clone(), self.key_file.clone()) else { return Ok(None) };
        let mode = self.client_auth_type;
        let provider = provider();
        let resolver = ReloadingCert::new(cert, key, provider.clone()).map_err(TlsError::Load)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.2 and 1.3");
        let verifier: Option<Arc<dyn ClientCertVerifier>> = match mode {
            ClientAuthType::NoClientCert => None,
            ClientAuthType::RequestClientCert | ClientAuthType::RequireAnyClientCert => {
                Some(Arc::new(AnyCertificate {
                    mandatory: mode.requires(),
                    algorithms: provider.signature_verification_algorithms,
                }))
            }
            ClientAuthType::VerifyClientCertIfGiven | ClientAuthType::RequireAndVerifyClientCert => {
                let path = self.client_ca_file.as_deref().expect("checked above");
                let mut roots = RootCertStore::empty();
                for ca in certificates(path).map_err(TlsError::Load)? {
                    roots.add(ca).map_err(|_| TlsError::Load(LoadError::invalid(path, "not a CA certificate")))?;
                }
                let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
                let builder = if mode.requires() { builder } else { builder.allow_unauthenticated() };
                Some(builder.build().map_err(TlsError::ClientCa)?)
            }
        };
        let builder = match verifier {
            None => builder.with_no_client_auth(),
            Some(inner) if self.client_allowed_sans.is_empty() => builder.with_client_cert_verifier(inner),
            Some(inner) => builder
                .with_client_cert_verifier(Arc::new(AllowedSans { inner, allowed: self.client_allowed_sans.clone() })),
        };
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Tls { acceptor: TlsAcceptor::from(Arc::new(config)), verified: mode.verifies() }))
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, LoadError> {
    let pem = watched::read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LoadError::invalid(path, format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(LoadError::invalid(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The listener's certificate and key, read again when either file changes.
struct ReloadingCert(Watched<CertifiedKey>);

impl ReloadingCert {
    fn new(cert: PathBuf, key: PathBuf, provider: Arc<CryptoProvider>) -> Result<Self, LoadError> {
        let paths = vec![cert.clone(), key.clone()];
        let load = move || {
            let chain = certificates(&cert)?;
            let der = PrivateKeyDer::from_pem_slice(&watched::read(&key)?)
                .map_err(|e| LoadError::invalid(&key, format!("not a PEM private key: {e}")))?;
            let signing = provider
                .key_provider
                .load_private_key(der)
                .map_err(|e| LoadError::invalid(&key, format!("unusable private key: {e}")))?;
            let certified = CertifiedKey::new(chain, signing);
            // A certificate replaced before its key (or after) is not served.
            certified.keys_match().map_err(|_| LoadError::invalid(&key, "the key does not match the certificate"))?;
            Ok(certified)
        };
        Ok(ReloadingCert(Watched::new(paths, load)?))
    }
}

impl std::fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReloadingCert")
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }
}

/// `RequestClientCert` and `RequireAnyClientCert`: any certificate is taken, its
/// chain unverified, but the client must still prove it holds the key.
#[derive(Debug)]
struct AnyCertificate {
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyCertificate {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `client_allowed_sans`: the client's leaf must carry one of the names.
#[derive(Debug)]
struct AllowedSans {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for AllowedSans {
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
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self.inner.verify_client_cert(end_entity, intermediates, now)?;
        match sans(end_entity).iter().any(|san| self.allowed.contains(san)) {
            true => Ok(verified),
            // rustls's word for a check of the application's own: a reason of its
            // own in `tidegate_tls_handshake_failures_total`.
            false => Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A certificate's subject alternative names, as the exporter-toolkit lists them:
/// DNS names, e-mail addresses, IP addresses, URIs.
pub fn sans(der: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return Vec::new() };
    let Ok(Some(ext)) = cert.subject_alternative_name() else { return Vec::new() };
    let names = &ext.value.general_names;
    let mut sans = Vec::with_capacity(names.len());
    let ip = |bytes: &[u8]| match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes"))),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes"))),
        _ => None,
    };
    sans.extend(names.iter().filter_map(|n| match n {
        GeneralName::DNSName(s) => Some(s.to_string()),
        _ => None,
    }));
    sans.extend(names.iter().filter_map(|n| match n {
        GeneralName::RFC822Name(s) => Some(s.to_string()),
        _ => None,
    }));
    sans.extend(names.iter().filter_map(|n| match n {
        GeneralName::IPAddress(b) => ip(b).map(|ip| ip.to_string()),
        _ => None,
    }));
    sans.extend(names.iter().filter_map(|n| match n {
        GeneralName::URI(s) => Some(s.to_string()),
        _ => None,
    }));
    sans
}

impl Tls {
    /// Completes the handshake of an accepted connection, within
    /// `HANDSHAKE_TIMEOUT`; `None` if it failed, counted in `metrics` by
    /// [`failure`]'s reason and, when the client's certificate was refused,
    /// audited (summed per address and reason: a flood of bad handshakes is a line
    /// per interval). With it, the client's certificate when it was verified
    /// against the client CA.
    pub async fn accept(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
        metrics: &Metrics,
    ) -> Option<(TlsStream<TcpStream>, Option<PeerCertificate>)> {
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await;
        let stream = match handshake.map_err(|_| Failure::Timeout).and_then(|r| r.map_err(|e| failure(&e))) {
            Ok(stream) => stream,
            Err(failure) => {
                tracing::debug!(%peer, reason = failure.reason(), "TLS handshake failed");
                metrics.tls_handshake_failures.get_or_create(&ReasonLabels { reason: failure.reason() }).inc();
                if failure.certificate() {
                    crate::audit::tls_refused(&peer.ip().to_string(), failure.reason());
                }
                return None;
            }
        };
        let leaf = match self.verified {
            true => stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()),
            false => None,
        };
        let certificate = leaf.map(|leaf| PeerCertificate { sans: sans(leaf).into() });
        Some((stream, certificate))
    }
}

/// Why a handshake failed: the `reason` of `tidegate_tls_handshake_failures_total`,
/// a fixed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// A client certificate is required and none was presented.
    NoCertificate,
    /// The client's certificate is not signed by the client CA.
    UnknownCa,
    /// The client's certificate is expired or not valid yet.
    Expired,
    /// The client's certificate has none of `client_allowed_sans`.
    SanNotAllowed,
    /// Any other fault of the client's certificate (revoked, wrong usage, bad
    /// signature, unparsable).
    BadCertificate,
    /// Not TLS, no common version or cipher suite, or a client that gave up (it
    /// refused our certificate, say).
    Protocol,
    /// The connection failed or closed mid-handshake.
    Io,
    /// Not finished within the handshake timeout.
    Timeout,
}

impl Failure {
    pub const ALL: [Failure; 8] = [
        Failure::NoCertificate,
        Failure::UnknownCa,
        Failure::Expired,
        Failure::SanNotAllowed,
        Failure::BadCertificate,
        Failure::Protocol,
        Failure::Io,
        Failure::Timeout,
    ];

    pub fn reason(self) -> &'static str {
        match self {
            Failure::NoCertificate => "no_certificate",
            Failure::UnknownCa => "unknown_ca",
            Failure::Expired => "expired",
            Failure::SanNotAllowed => "san_not_allowed",
            Failure::BadCertificate => "bad_certificate",
            Failure::Protocol => "protocol",
            Failure::Io => "io",
            Failure::Timeout => "timeout",
        }
    }

    /// Whether the client's certificate (or its absence) was refused: what an
    /// operator must hear of, in the audit log.
    pub fn certificate(self) -> bool {
        matches!(
            self,
            Failure::NoCertificate
                | Failure::UnknownCa
                | Failure::Expired
                | Failure::SanNotAllowed
                | Failure::BadCertificate
        )
    }
}

/// The [`Failure`] of a handshake error (tokio-rustls wraps rustls's own errors
/// in `io::Error`).
fn failure(e: &std::io::Error) -> Failure {
    use rustls::CertificateError as C;
    let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else { return Failure::Io };
    match tls {
        rustls::Error::NoCertificatesPresented => Failure::NoCertificate,
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => Failure::UnknownCa,
        rustls::Error::InvalidCertificate(
            C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. },
        ) => Failure::Expired,
        rustls::Error::InvalidCertificate(C::ApplicationVerificationFailure) => Failure::SanNotAllowed,
        rustls::Error::InvalidCertificate(_) => Failure::BadCertificate,
        _ => Failure::Protocol,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ConnectInfo;
    use axum::routing::get;
    use axum::Extension;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    use rustls::pki_types::ServerName;

    /// A CA, and leaf certificates it signs, written where a test wants them.
    struct Pki {
        dir: tempfile::TempDir,
        issuer: Issuer<'static, KeyPair>,
        ca: PathBuf,
    }

    impl Pki {
        fn new() -> Pki {
            let dir = tempfile::tempdir().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, "test CA");
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            let ca = dir.path().join("ca.pem");
            std::fs::write(&ca, cert.pem()).unwrap();
            Pki { dir, issuer: Issuer::new(params, key), ca }
        }

        /// A leaf with `sans`, written to `<name>.pem` and `<name>.key`.
        fn leaf(&self, name: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
            let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            if name.starts_with("client") {
                params.subject_alt_names.push(SanType::Rfc822Name("ops@example.com".try_into().unwrap()));
            }
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            let (cert_path, key_path) =
                (self.dir.path().join(format!("{name}.pem")), self.dir.path().join(format!("{name}.key")));
            std::fs::write(&cert_path, cert.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            (cert_path, key_path)
        }
    }

    async fn whoami(ConnectInfo(addr): ConnectInfo<SocketAddr>, peer: Option<Extension<PeerCertificate>>) -> String {
        format!("{} {:?}", addr.ip(), peer.map(|Extension(p)| p.sans.to_vec()))
    }

    /// Serves [`whoami`] over TLS with `config`; returns the address.
    async fn server(config: TlsConfig) -> SocketAddr {
        let tls = config.build().unwrap().expect("TLS is configured");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let router = axum::Router::new().route("/", get(whoami));
        let limits = crate::http::HttpConfig { max_connections: 64, ..Default::default() };
        let metrics = Arc::new(crate::telemetry::Metrics::new());
        tokio::spawn(async move {
            super::super::serve(tcp, router, &limits, Some(tls), metrics, std::future::pending()).await
        });
        addr
    }

    struct Client {
        send: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
        /// The certificate the server presented.
        served: CertificateDer<'static>,
    }

    type Error = Box<dyn std::error::Error + Send + Sync>;

    async fn connect(addr: SocketAddr, ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Client, Error> {
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(certificates(ca)?);
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let config = match identity {
            Some((cert, key)) => {
                builder.with_client_auth_cert(certificates(cert)?, PrivateKeyDer::from_pem_file(key)?)?
            }
            None => builder.with_no_client_auth(),
        };
        let tcp = TcpStream::connect(addr).await?;
        let tls =
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(ServerName::try_from("localhost")?, tcp).await?;
        let served = tls.get_ref().1.peer_certificates().expect("a server certificate")[0].clone().into_owned();
        let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        Ok(Client { send, served })
    }

    impl Client {
        async fn whoami(&mut self) -> Result<String, Error> {
            let request = axum::http::Request::get("/").header("host", "localhost").body(Empty::new())?;
            let response = self.send.send_request(request).await?;
            Ok(String::from_utf8(response.into_body().collect().await?.to_bytes().to_vec())?)
        }
    }

    async fn whoami_as(addr: SocketAddr, pki: &Pki, identity: Option<(&Path, &Path)>) -> Result<String, Error> {
        connect(addr, &pki.ca, identity).await?.whoami().await
    }

    fn config(pki: &Pki, mode: ClientAuthType, allowed: &[&str]) -> TlsConfig {
        let (cert, key) = pki.leaf("server", &["localhost"]);
        TlsConfig {
            cert_file: Some(cert),
            key_file: Some(key),
            client_ca_file: (mode != ClientAuthType::NoClientCert).then(|| pki.ca.clone()),
            client_auth_type: mode,
            client_allowed_sans: allowed.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[tokio::test]
    async fn a_verified_client_certificate_reaches_handlers_with_its_sans() {
        let pki = Pki::new();
        let addr = server(config(&pki, ClientAuthType::RequireAndVerifyClientCert, &[])).await;
        let (cert, key) = pki.leaf("client-am", &["alertmanager.monitoring"]);
        let seen = whoami_as(addr, &pki, Some((&cert, &key))).await.unwrap();
        assert_eq!(seen, r#"127.0.0.1 Some(["alertmanager.monitoring", "ops@example.com"])"#);
        assert!(whoami_as(addr, &pki, None).await.is_err(), "a certificate is required");
    }

    #[tokio::test]
    async fn a_certificate_without_an_allowed_san_or_from_another_ca_fails_the_handshake() {
        let pki = Pki::new();
        let addr = server(config(&pki, ClientAuthType::RequireAndVerifyClientCert, &["ops@example.com"])).await;
        let (good, good_key) = pki.leaf("client-ok", &["a.example"]);
        assert!(whoami_as(addr, &pki, Some((&good, &good_key))).await.is_ok(), "the e-mail SAN is allowed");
        let (cert, key) = pki.leaf("server-like", &["b.example"]);
        assert!(whoami_as(addr, &pki, Some((&cert, &key))).await.is_err());
        let stranger = Pki::new();
        let (cert, key) = stranger.leaf("client-stranger", &["a.example"]);
        assert!(whoami_as(addr, &pki, Some((&cert, &key))).await.is_err());
    }

    #[tokio::test]
    async fn an_unverified_certificate_is_never_exposed_as_an_identity() {
        let pki = Pki::new();
        let mut config = config(&pki, ClientAuthType::RequestClientCert, &[]);
        config.client_ca_file = None;
        let addr = server(config).await;
        let stranger = Pki::new();
        let (cert, key) = stranger.leaf("client-self", &["admin.example"]);
        assert_eq!(whoami_as(addr, &pki, Some((&cert, &key))).await.unwrap(), "127.0.0.1 None");
        assert_eq!(whoami_as(addr, &pki, None).await.unwrap(), "127.0.0.1 None");
    }

    #[tokio::test]
    async fn a_replaced_certificate_is_served_to_new_connections_while_open_ones_keep_working() {
        let pki = Pki::new();
        let config = config(&pki, ClientAuthType::NoClientCert, &[]);
        let addr = server(config.clone()).await;
        let mut open = connect(addr, &pki.ca, None).await.unwrap();
        let first = open.served.clone();
        assert!(open.whoami().await.is_ok());

        let (cert, key) = pki.leaf("server-renewed", &["localhost"]);
        std::fs::copy(&key, config.key_file.as_ref().unwrap()).unwrap();
        std::fs::copy(&cert, config.cert_file.as_ref().unwrap()).unwrap();
        let renewed = certificates(&cert).unwrap().remove(0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let fresh = connect(addr, &pki.ca, None).await.unwrap();
            if fresh.served == renewed {
                break;
            }
            assert_eq!(fresh.served, first, "only the old or the new certificate is ever served");
            assert!(tokio::time::Instant::now() < deadline, "the new certificate was never served");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(open.whoami().await.is_ok(), "the connection opened before the reload still serves");
    }

    #[test]
    fn settings_that_the_exporter_toolkit_refuses_are_refused() {
        let pki = Pki::new();
        let mut ca_without_mode = config(&pki, ClientAuthType::NoClientCert, &[]);
        ca_without_mode.client_ca_file = Some(pki.ca.clone());
        let mut verify_without_ca = config(&pki, ClientAuthType::VerifyClientCertIfGiven, &[]);
        verify_without_ca.client_ca_file = None;
        let sans_on_optional = config(&pki, ClientAuthType::VerifyClientCertIfGiven, &["a"]);
        let key_only = TlsConfig { key_file: Some(pki.ca.clone()), ..Default::default() };
        for bad in [ca_without_mode, verify_without_ca, sans_on_optional, key_only] {
            assert!(bad.build().is_err(), "{bad:?}");
        }
        assert!(TlsConfig::default().build().unwrap().is_none(), "no files: plain HTTP");
    }

    #[test]
    fn client_auth_type_takes_the_exporter_toolkit_names() {
        let t: TlsConfig = serde_norway::from_str("client_auth_type: RequireClientCert").unwrap();
        assert_eq!(t.client_auth_type, ClientAuthType::RequireAnyClientCert);
        assert!(serde_norway::from_str::<TlsConfig>("client_auth_type: Sometimes").is_err());
    }
}
