//! Client-certificate identity: a subject alternative name of the certificate the
//! TLS handshake verified becomes the source name.
//!
//! Only a certificate verified against the configured client CA counts (the TLS
//! listener attaches [`PeerCertificate`] to a request only then): under
//! `RequestClientCert` or `RequireAnyClientCert` anyone can present any name.

use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Identity, Rejection, Step};

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClientCertificateConfig {
    /// Subject alternative names (DNS names, e-mail addresses, IP addresses, URIs,
    /// matched exactly) that identify senders; the first one the certificate has
    /// becomes its source name. Empty: the certificate's first SAN, whatever it is,
    /// with the authenticator's name as its metric label.
    pub sans: Vec<String>,
}

/// The verified client certificate of a TLS connection: its leaf's subject
/// alternative names, in the order DNS names, e-mail addresses, IP addresses,
/// URIs. A request extension.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerCertificate {
    pub sans: Arc<[String]>,
}

pub struct Certificates {
    sans: Vec<Arc<str>>,
    label: Arc<str>,
}

impl Certificates {
    pub fn new(config: &ClientCertificateConfig, label: Arc<str>) -> Self {
        Certificates { sans: config.sans.iter().map(|s| Arc::from(s.as_str())).collect(), label }
    }

    pub(super) fn check(&self, peer: Option<&PeerCertificate>) -> Step {
        let Some(peer) = peer else { return Step::Pass(None) };
        if self.sans.is_empty() {
            return match peer.sans.first() {
                Some(san) => Step::Identified(Identity::new(san.as_str(), self.label.clone(), "client_certificate")),
                None => {
                    Step::Pass(Some(Rejection::Malformed("the client certificate has no subject alternative name")))
                }
            };
        }
        match self.sans.iter().find(|allowed| peer.sans.iter().any(|san| san == &***allowed)) {
            Some(san) => Step::Identified(Identity::new(san.clone(), san.clone(), "client_certificate")),
            None => Step::Pass(Some(Rejection::Malformed("the client certificate names no accepted sender"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(sans: &[&str]) -> PeerCertificate {
        PeerCertificate { sans: sans.iter().map(|s| s.to_string()).collect() }
    }

    fn identity(step: Step) -> Option<(String, String)> {
        match step {
            Step::Identified(id) => Some((id.name.to_string(), id.label.to_string())),
            _ => None,
        }
    }

    #[test]
    fn a_listed_san_names_the_sender_and_an_unlisted_certificate_is_not_recognised() {
        let certs =
            Certificates::new(&ClientCertificateConfig { sans: vec!["alertmanager.monitoring".into()] }, "mtls".into());
        let am = peer(&["other.example", "alertmanager.monitoring"]);
        assert_eq!(
            identity(certs.check(Some(&am))),
            Some(("alertmanager.monitoring".into(), "alertmanager.monitoring".into()))
        );
        assert!(matches!(certs.check(Some(&peer(&["mallory.example"]))), Step::Pass(Some(_))));
        assert!(matches!(certs.check(None), Step::Pass(None)));
    }

    #[test]
    fn without_a_list_the_first_san_names_the_sender_under_the_authenticators_label() {
        let certs = Certificates::new(&ClientCertificateConfig::default(), "mtls".into());
        assert_eq!(
            identity(certs.check(Some(&peer(&["a.example", "b.example"])))),
            Some(("a.example".into(), "mtls".into()))
        );
    }
}
