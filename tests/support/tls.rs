//! Certificates for TLS tests, made fresh for each use (a few milliseconds): a CA,
//! a server certificate for `127.0.0.1` and `localhost` and a client certificate
//! signed by it, and an unrelated CA that must not be trusted in its place.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use super::redis::ServerTls;

/// The subject alternative name of [`Pki::sender_cert`].
pub const SENDER_SAN: &str = "alertmanager.monitoring.svc";

pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A client certificate naming its sender in a subject alternative name, as
    /// an Alertmanager's would.
    pub sender_cert: PathBuf,
    pub sender_key: PathBuf,
    /// A CA that signed none of the above.
    pub stranger_ca: PathBuf,
    /// A client certificate with [`SENDER_SAN`], signed by the stranger CA.
    pub stranger_cert: PathBuf,
    pub stranger_key: PathBuf,
    _dir: tempfile::TempDir,
}

impl Pki {
    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().expect("CA key");
            let cert = params.self_signed(&key).expect("self-signed CA");
            (cert, Issuer::new(params, key))
        };
        let (ca_cert, issuer) = ca("tidegate test CA");
        let (stranger_cert, stranger_issuer) = ca("some other CA");
        let signed_by = |issuer: &Issuer<'_, KeyPair>, names: Vec<String>, common_name: &str| {
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.distinguished_name.push(DnType::CommonName, common_name);
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, issuer).expect("signed by the CA");
            (cert.pem(), key.serialize_pem())
        };
        let leaf = |names: Vec<String>, common_name: &str| signed_by(&issuer, names, common_name);
        let (server_cert, server_key) = leaf(vec!["127.0.0.1".into(), "localhost".into()], "redis");
        let (client_cert, client_key) = leaf(Vec::new(), "tidegate");
        let (sender_cert, sender_key) = leaf(vec![SENDER_SAN.into()], "alertmanager");
        let (impostor_cert, impostor_key) = signed_by(&stranger_issuer, vec![SENDER_SAN.into()], "alertmanager");
        Pki {
            ca: write("ca.pem", ca_cert.pem()),
            server_cert: write("server.pem", server_cert),
            server_key: write("server.key", server_key),
            client_cert: write("client.pem", client_cert),
            client_key: write("client.key", client_key),
            sender_cert: write("sender.pem", sender_cert),
            sender_key: write("sender.key", sender_key),
            stranger_ca: write("stranger-ca.pem", stranger_cert.pem()),
            stranger_cert: write("stranger.pem", impostor_cert),
            stranger_key: write("stranger.key", impostor_key),
            _dir: dir,
        }
    }

    /// An HTTP client that trusts this CA and presents `identity` (certificate
    /// and key files), if any.
    pub fn client(&self, identity: Option<(&Path, &Path)>) -> reqwest::Client {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(CertificateDer::pem_file_iter(&self.ca).unwrap().map(Result::unwrap));
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let config = match identity {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect();
                builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap()).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        reqwest::Client::builder().use_preconfigured_tls(config).build().unwrap()
    }

    /// What a redis-server needs to serve TLS with these certificates.
    pub fn server(&self, require_client_cert: bool) -> ServerTls {
        ServerTls {
            cert: self.server_cert.clone(),
            key: self.server_key.clone(),
            ca: self.ca.clone(),
            require_client_cert,
        }
    }
}
