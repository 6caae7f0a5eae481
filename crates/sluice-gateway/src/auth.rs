//! Authentication: HS256 JWTs for WebSocket users, an opaque service token for gRPC callers.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sluice_core::ids;

/// JWT claims Sluice issues and accepts.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    iat: u64,
}

/// Verifies user and service credentials. Secrets never appear in logs or `Debug`.
#[derive(Clone)]
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    service_token: String,
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
        validation.leeway = 5;
        Auth {
            encoding: EncodingKey::from_secret(jwt_secret),
            decoding: DecodingKey::from_secret(jwt_secret),
            validation,
            service_token: service_token.to_string(),
        }
    }

    /// Issues a token for `user`, valid for `ttl_secs`.
    pub fn mint_user(&self, user: &str, ttl_secs: u64) -> Result<String, AuthError> {
        ids::validate_user(user).map_err(AuthError)?;
        let now = (sluice_core::now_ms() / 1000) as u64;
        let claims = Claims { sub: user.to_string(), iat: now, exp: now + ttl_secs };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding).map_err(|e| AuthError(e.to_string()))
    }

    /// The user id of a valid, unexpired token.
    pub fn verify_user(&self, token: &str) -> Result<String, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError(format!("invalid token: {e}")))?;
        ids::validate_user(&data.claims.sub).map_err(|e| AuthError(format!("invalid token subject: {e}")))?;
        Ok(data.claims.sub)
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
        let now = (sluice_core::now_ms() / 1000) as u64;
        let claims = Claims { sub: "alice".into(), iat: now - 100, exp: now - 60 };
        let t = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &a.encoding).unwrap();
        assert!(a.verify_user(&t).unwrap_err().0.contains("xpired"));
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
