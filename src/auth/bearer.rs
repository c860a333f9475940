//! Static bearer tokens: `Authorization: Bearer <token>`, each token read from a
//! file and mapped to a named source.
//!
//! Tokens are held as SHA-256 digests and a presented token is compared, hashed,
//! against every one of them in constant time, so neither its length nor how much
//! of it matched shows in the timing. The files are read again when they change
//! (see [`crate::watched`]), so a token is rotated by replacing its Secret.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::http::HeaderMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Identity, Step};
use crate::watched::{self, LoadError, Watched};

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BearerConfig {
    /// Source name → the file holding its token (surrounding whitespace ignored).
    /// The source name identifies requests that present the token.
    pub tokens: BTreeMap<String, PathBuf>,
}

/// The tokens, reloaded when their files change.
pub struct Tokens(Watched<Vec<Known>>);

/// One token's digest and whose it is.
struct Known {
    digest: [u8; 32],
    source: Arc<str>,
}

impl Tokens {
    pub fn load(config: &BearerConfig) -> Result<Self, LoadError> {
        let files: Vec<(Arc<str>, PathBuf)> =
            config.tokens.iter().map(|(source, path)| (source.as_str().into(), path.clone())).collect();
        let paths = files.iter().map(|(_, p)| p.clone()).collect();
        let load = move || {
            files
                .iter()
                .map(|(source, path)| {
                    let bytes = watched::read(path)?;
                    let token = bytes.trim_ascii();
                    if token.is_empty() {
                        return Err(LoadError::invalid(path, "the token file is empty"));
                    }
                    Ok(Known { digest: Sha256::digest(token).into(), source: source.clone() })
                })
                .collect()
        };
        Ok(Tokens(Watched::new(paths, load)?))
    }

    pub(super) fn check(&self, headers: &HeaderMap) -> Step {
        let Some(token) = super::authorization(headers, "Bearer") else { return Step::Pass(None) };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every token is compared, whichever matches.
        let mut found = None;
        for known in self.0.get().iter() {
            if bool::from(known.digest.ct_eq(&digest)) {
                found = Some(known.source.clone());
            }
        }
        match found {
            Some(source) => Step::Identified(Identity::new(source.clone(), source, "bearer")),
            None => Step::Pass(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::headers;
    use crate::watched::CHECK_EVERY;

    fn name(step: Step) -> Option<String> {
        match step {
            Step::Identified(id) => Some(id.name.to_string()),
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_names_its_source_until_its_file_is_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, "alpha-token\n").unwrap();
        std::fs::write(&b, "beta-token").unwrap();
        let config = BearerConfig { tokens: [("am-a".into(), a.clone()), ("am-b".into(), b)].into() };
        let tokens = Tokens::load(&config).unwrap();
        let bearer = |t: &str| headers(&[("authorization", &format!("Bearer {t}"))]);

        assert_eq!(name(tokens.check(&bearer("alpha-token"))), Some("am-a".into()));
        assert_eq!(name(tokens.check(&bearer("beta-token"))), Some("am-b".into()));
        assert_eq!(name(tokens.check(&bearer("alpha-toke"))), None);
        assert_eq!(name(tokens.check(&headers(&[("authorization", "Basic YTpi")]))), None);

        std::fs::write(&a, "alpha-rotated").unwrap();
        tokio::time::advance(CHECK_EVERY).await;
        assert_eq!(name(tokens.check(&bearer("alpha-token"))), None, "the old token no longer works");
        assert_eq!(name(tokens.check(&bearer("alpha-rotated"))), Some("am-a".into()));
    }

    #[test]
    fn an_empty_token_file_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        std::fs::write(&path, "\n").unwrap();
        let err = Tokens::load(&BearerConfig { tokens: [("x".into(), path)].into() }).err().unwrap();
        assert!(err.to_string().ends_with("the token file is empty"), "{err}");
    }
}
