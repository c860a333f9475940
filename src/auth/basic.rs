//! HTTP basic auth with bcrypt-hashed passwords, in the `basic_auth_users` format
//! of the Prometheus web configuration: a map of user name to bcrypt hash.
//!
//! bcrypt is slow on purpose (tens of milliseconds at the usual cost), so it runs
//! on the blocking pool, and a successful check is cached for a while under a
//! SHA-256 of the user and password: a sender that authenticates every few seconds
//! pays for bcrypt once. A failed check is never cached. An unknown user is checked
//! against a configured user's hash and refused with the same words as a wrong
//! password, so neither the answer's timing nor its text tells which users exist
//! (the audit log's `cause` does, for the operator).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use data_encoding::BASE64;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::cache::{self, TtlCache};
use super::{AuthError, Identity, Rejection, Step};

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BasicConfig {
    /// User name → bcrypt hash of the password (`htpasswd -nBC 10 user`, the part
    /// after the colon). The user name identifies the sender.
    pub users: BTreeMap<String, PasswordHash>,
}

/// A bcrypt hash: not the password, but not for logs either.
#[derive(Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(transparent)]
pub struct PasswordHash(pub String);

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash([redacted])")
    }
}

/// How long a successful check is remembered, and how many are.
const CACHE_TTL: Duration = Duration::from_secs(300);
const CACHE_SIZE: usize = 1024;

pub struct Users {
    users: BTreeMap<String, (Arc<str>, String)>,
    verified: TtlCache<()>,
}

/// Why a `basic` authenticator's users cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("users.{user}: not a bcrypt hash: {source}")]
    NotBcrypt {
        user: String,
        #[source]
        source: bcrypt::BcryptError,
    },
}

impl Users {
    pub fn new(config: &BasicConfig) -> Result<Self, UsersError> {
        let mut users = BTreeMap::new();
        for (user, hash) in &config.users {
            hash.0
                .parse::<bcrypt::HashParts>()
                .map_err(|source| UsersError::NotBcrypt { user: user.clone(), source })?;
            users.insert(user.clone(), (Arc::from(user.as_str()), hash.0.clone()));
        }
        Ok(Users { users, verified: TtlCache::new(CACHE_SIZE) })
    }

    pub(super) async fn check(&self, headers: &HeaderMap) -> Result<Step, AuthError> {
        let Some(encoded) = super::authorization(headers, "Basic") else { return Ok(Step::Pass(None)) };
        let decoded = BASE64.decode(encoded.as_bytes()).ok().and_then(|b| String::from_utf8(b).ok());
        let Some((user, password)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
            return Ok(Step::Pass(Some(Rejection::Malformed("the basic credentials are not base64 of user:password"))));
        };
        let key = cache::key(format!("{user}\0{password}").as_bytes());
        let known = self.users.get(user);
        if let Some((name, _)) = known.filter(|_| self.verified.get(&key).is_some()) {
            return Ok(Step::Identified(Identity::new(name.clone(), name.clone(), "basic")));
        }
        // An unknown user is checked against a configured hash (of the same cost),
        // so it costs what a known one does; it can identify no one.
        let Some((_, hash)) = known.or_else(|| self.users.values().next()) else {
            return Ok(Step::Pass(Some(Rejection::UnknownUser)));
        };
        let hash = hash.clone();
        let password = password.to_owned();
        let matches = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
            .await
            .unwrap_or(false);
        match known {
            Some((name, _)) if matches => {
                self.verified.insert(key, (), CACHE_TTL);
                Ok(Step::Identified(Identity::new(name.clone(), name.clone(), "basic")))
            }
            Some(_) => Err(AuthError::Rejected(Rejection::WrongPassword)),
            // Another basic authenticator of the chain may know the user.
            None => Ok(Step::Pass(Some(Rejection::UnknownUser))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::tests::headers;

    fn basic(user_pass: &str) -> HeaderMap {
        headers(&[("authorization", &format!("Basic {}", BASE64.encode(user_pass.as_bytes())))])
    }

    fn users() -> Users {
        let config =
            BasicConfig { users: [("alertmanager".into(), PasswordHash(bcrypt::hash("s3cret", 4).unwrap()))].into() };
        Users::new(&config).unwrap()
    }

    #[tokio::test]
    async fn the_right_password_identifies_the_user_and_is_cached() {
        let users = users();
        let step = users.check(&basic("alertmanager:s3cret")).await.unwrap();
        assert!(matches!(step, Step::Identified(ref id) if &*id.name == "alertmanager"));
        assert_eq!(users.verified.len(), 1);
        let again = users.check(&basic("alertmanager:s3cret")).await.unwrap();
        assert!(matches!(again, Step::Identified(_)));
    }

    #[tokio::test]
    async fn a_wrong_password_is_rejected_and_not_cached_and_an_unknown_user_passes_in_the_same_words() {
        let users = users();
        let err = users.check(&basic("alertmanager:guess")).await.err().unwrap();
        assert!(matches!(err, AuthError::Rejected(Rejection::WrongPassword)));
        assert!(users.verified.is_empty());
        let Step::Pass(Some(unknown)) = users.check(&basic("mallory:s3cret")).await.unwrap() else { panic!() };
        assert_eq!(unknown, Rejection::UnknownUser);
        assert_eq!(unknown.to_string(), Rejection::WrongPassword.to_string());
        assert_ne!(unknown.cause(), Rejection::WrongPassword.cause());
        assert!(matches!(
            users.check(&headers(&[("authorization", "Basic !!")])).await.unwrap(),
            Step::Pass(Some(Rejection::Malformed(_)))
        ));
    }

    #[test]
    fn a_value_that_is_not_a_bcrypt_hash_is_refused_naming_the_user() {
        let config = BasicConfig { users: [("ops".into(), PasswordHash("plaintext".into()))].into() };
        let err = Users::new(&config).err().unwrap();
        assert!(matches!(&err, UsersError::NotBcrypt { user, .. } if user == "ops"), "{err:?}");
        assert!(err.to_string().starts_with("users.ops: not a bcrypt hash"));
    }

    #[test]
    fn hashes_never_print() {
        assert_eq!(format!("{:?}", PasswordHash("$2y$10$x".into())), "PasswordHash([redacted])");
    }
}
