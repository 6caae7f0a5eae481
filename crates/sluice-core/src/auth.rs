//! Credentials of the client contract: HS256 JWTs for WebSocket users, an opaque service token
//! for gRPC callers. The gateway verifies them; `sluice token`, the tests and the benchmarks
//! mint them.

use crate::ids::{self, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// JWT claims Sluice issues and accepts: `sub` and `exp` are required, `nbf` is honoured,
/// `iat` is optional.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nbf: Option<u64>,
}

/// Clock difference tolerated between the token's issuer and this server, in seconds.
pub const CLOCK_SKEW_SECS: u64 = 30;
/// Default of the longest lifetime accepted for a user token (what `sluice token` can mint).
pub const DEFAULT_MAX_TOKEN_TTL_SECS: u64 = 31_536_000;

/// Verifies user and service credentials. Secrets never appear in logs or `Debug`.
#[derive(Clone)]
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    service_token: String,
    max_ttl_secs: u64,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth { .. }")
    }
}

/// Why a credential was refused (the message is safe to show the caller).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

impl Auth {
    /// `jwt_secret` signs user tokens; `service_token` is what internal callers present.
    pub fn new(jwt_secret: &[u8], service_token: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = CLOCK_SKEW_SECS;
        Auth {
            encoding: EncodingKey::from_secret(jwt_secret),
            decoding: DecodingKey::from_secret(jwt_secret),
            validation,
            service_token: service_token.to_string(),
            max_ttl_secs: DEFAULT_MAX_TOKEN_TTL_SECS,
        }
    }

    /// Refuses user tokens that expire more than `secs` from now (a leaked long-lived token
    /// is a long-lived breach).
    pub fn with_max_token_ttl(mut self, secs: u64) -> Self {
        self.max_ttl_secs = secs;
        self
    }

    /// The longest lifetime a user token may have.
    pub fn max_token_ttl(&self) -> u64 {
        self.max_ttl_secs
    }

    /// Issues a token for `user`, valid for `ttl_secs`.
    pub fn mint_user(&self, user: &str, ttl_secs: u64) -> Result<String, AuthError> {
        ids::validate_user(user).map_err(AuthError)?;
        let now = (crate::now_ms() / 1000) as u64;
        let claims = Claims { sub: user.to_string(), iat: Some(now), nbf: None, exp: now + ttl_secs };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(|e| AuthError(e.to_string()))
    }

    /// The user id of a valid, unexpired token.
    pub fn verify_user(&self, token: &str) -> Result<UserId, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError(format!("invalid token: {e}")))?;
        let user = UserId::new(data.claims.sub).map_err(|e| AuthError(format!("invalid token subject: {e}")))?;
        let now = (crate::now_ms() / 1000) as u64;
        if data.claims.exp > now + self.max_ttl_secs + CLOCK_SKEW_SECS {
            return Err(AuthError(format!("invalid token: it expires more than {} seconds from now", self.max_ttl_secs)));
        }
        Ok(user)
    }

    /// The service token internal callers present.
    pub fn service_token(&self) -> &str {
        &self.service_token
    }

    /// Whether `token` is the service token (constant-time comparison).
    pub fn is_service(&self, token: &str) -> bool {
        let (a, b) = (token.as_bytes(), self.service_token.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_tokens_round_trip_and_wrong_keys_fail() {
        let a = Auth::new(b"secret-one-secret-one-secret-one", "svc");
        let t = a.mint_user("alice", 60).unwrap();
        assert_eq!(a.verify_user(&t).unwrap(), "alice");
        let b = Auth::new(b"secret-two-secret-two-secret-two", "svc");
        assert!(b.verify_user(&t).is_err());
        assert!(a.verify_user("garbage").is_err());
        assert!(a.mint_user("bad:user", 60).is_err());
    }

    #[test]
    fn expired_tokens_fail() {
        let a = Auth::new(b"secret-one-secret-one-secret-one", "svc");
        let now = (crate::now_ms() / 1000) as u64;
        let claims = Claims { sub: "alice".into(), iat: Some(now - 100), nbf: None, exp: now - 60 };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &a.encoding).unwrap();
        assert!(a.verify_user(&t).unwrap_err().0.contains("xpired"));
    }

    /// Issue 10.6: `iat` is optional, `nbf` is honoured with a small clock skew, and the
    /// lifetime a token may claim is capped by configuration.
    #[test]
    fn claims_follow_the_contract() {
        let a = Auth::new(b"secret-one-secret-one-secret-one", "svc").with_max_token_ttl(3_600);
        let now = (crate::now_ms() / 1000) as u64;
        let token = |claims: serde_json::Value| jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &a.encoding).unwrap();
        assert_eq!(a.verify_user(&token(serde_json::json!({"sub": "alice", "exp": now + 60}))).unwrap(), "alice", "no iat needed");
        let early = a.verify_user(&token(serde_json::json!({"sub": "alice", "exp": now + 600, "nbf": now + 300}))).unwrap_err();
        assert!(early.0.contains("mmature") || early.0.contains("nbf"), "{}", early.0);
        let skewed = token(serde_json::json!({"sub": "alice", "exp": now + 600, "nbf": now + CLOCK_SKEW_SECS / 2}));
        assert!(a.verify_user(&skewed).is_ok(), "a clock a little ahead is tolerated");
        let long = a.verify_user(&token(serde_json::json!({"sub": "alice", "exp": now + 7_200}))).unwrap_err();
        assert!(long.0.contains("3600 seconds"), "{}", long.0);
        assert!(a.verify_user(&token(serde_json::json!({"exp": now + 60}))).is_err(), "sub is required");
        assert!(a.verify_user(&token(serde_json::json!({"sub": "alice"}))).is_err(), "exp is required");
    }

    #[test]
    fn service_token_and_bearer() {
        let a = Auth::new(b"k", "s3cret");
        assert!(a.is_service("s3cret"));
        assert!(!a.is_service("s3creT"));
        assert!(!a.is_service(""));
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
