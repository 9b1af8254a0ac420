//! Authentication: argon2id password hashes and HS256 JWTs.
//!
//! Owns how a request proves who it is: `Authorization: Bearer <token>`, or
//! `?token=` on the WebSocket route only (browsers cannot set headers there;
//! anywhere else a token in the URL would land in logs and histories). The
//! token itself is never logged. An expired token and a bad one get
//! different codes (`token_expired`, `unauthorized`) so a client knows to log
//! in again rather than give up.
//!
//! A valid signature is not enough on its own: `sessions` then checks the
//! account behind the token (it may be gone, disabled, or have ended its
//! sessions), and the role comes from there.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use jsonwebtoken::{
    decode, encode, errors::ErrorKind, DecodingKey, EncodingKey, Header, Validation,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use super::error::ApiError;
use crate::store::User;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: i64,
    pub name: String,
    /// The account's token generation when this was issued: a token of an
    /// older generation has been ended (see `sessions`). Tokens issued
    /// before generations existed read as 0, the first generation.
    #[serde(rename = "gen", default)]
    pub generation: i64,
    /// This token's own id, so it alone can be ended ("log out"). Tokens
    /// issued before ids existed have none and end only with their
    /// generation.
    #[serde(default)]
    pub jti: String,
    pub iat: u64,
    pub exp: u64,
}

/// Issues and checks tokens.
#[derive(Clone)]
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Built once: every API request checks a token, and building the
    /// rules allocates.
    validation: Validation,
    ttl: Duration,
}

impl Auth {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation: {
                let mut validation = Validation::new(jsonwebtoken::Algorithm::HS256);
                validation.leeway = 5;
                validation
            },
            ttl,
        }
    }

    /// A token for `user`, and when it expires (seconds since the epoch).
    pub fn issue(&self, user: &User) -> Result<(String, u64), ApiError> {
        let now = unix_now();
        let claims = Claims {
            sub: user.id,
            name: user.username.clone(),
            generation: user.token_generation,
            jti: token_id(),
            iat: now,
            exp: now + self.ttl.as_secs(),
        };
        let token = encode(&Header::default(), &claims, &self.encoding).map_err(|e| {
            tracing::error!("cannot sign a token: {e}");
            ApiError::internal("cannot issue a token")
        })?;
        Ok((token, claims.exp))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "token_expired",
                    "your session has expired; please log in again",
                ),
                _ => unauthorized("the token is not valid"),
            })
    }
}

/// 128 random bits, hex: a token's id.
fn token_id() -> String {
    use argon2::password_hash::rand_core::RngCore;
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Hashes running at once: one per core. A hash is pure CPU and takes
/// 19 MiB, so a burst of logins waits its turn here instead of starting a
/// blocking thread (and 19 MiB) per request.
static HASH_SLOTS: LazyLock<Semaphore> =
    LazyLock::new(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())));

/// Runs a password hash or check (`f`) on a blocking thread, within
/// [`HASH_SLOTS`].
pub async fn hashing<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    let internal = || ApiError::internal("password hashing failed");
    let _slot = HASH_SLOTS.acquire().await.map_err(|_| internal())?;
    web::block(f).await.map_err(|_| internal())
}

/// argon2id with OWASP's recommended parameters (19 MiB, 2 passes, 1 lane).
fn hasher() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut OsRng);
    hasher()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| {
            tracing::error!("cannot hash a password: {e}");
            ApiError::internal("cannot store the password")
        })
}

/// Whether `password` matches `hash`. With no stored hash (an unknown user)
/// a dummy hash is checked, so the answer takes as long either way and does
/// not reveal which usernames exist.
pub fn verify_password(password: &str, hash: Option<&str>) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password("not a real password").unwrap_or_default());
    let stored = hash.unwrap_or(dummy);
    let matches = PasswordHash::new(stored).is_ok_and(|parsed| {
        hasher()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    });
    matches && hash.is_some()
}

/// The token a request carries: `Authorization: Bearer`, or `?token=` on
/// the WebSocket route only (browsers cannot set headers there; anywhere
/// else a token in a URL would end up in logs and histories).
pub fn token(req: &HttpRequest) -> Result<String, ApiError> {
    let from_query = || (req.path() == WS_PATH).then(|| query_token(req)).flatten();
    bearer(req).or_else(from_query).ok_or_else(|| {
        unauthorized(
            "log in first: no token in the Authorization header (or ?token= on the WebSocket)",
        )
    })
}

/// The WebSocket route, the one place a token may come as `?token=`.
pub const WS_PATH: &str = "/api/v1/ws";

fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(actix_web::http::header::AUTHORIZATION)?;
    let value = value.to_str().ok()?;
    value.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}

fn query_token(req: &HttpRequest) -> Option<String> {
    web::Query::<std::collections::HashMap<String, String>>::from_query(req.query_string())
        .ok()?
        .get("token")
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> User {
        User {
            id: 7,
            username: "alice".into(),
            password_hash: String::new(),
            role: crate::store::UserRole::Admin,
            created_at: 0,
            token_generation: 3,
            disabled_at: None,
        }
    }

    #[test]
    fn a_token_round_trips_and_a_forged_one_does_not() {
        let auth = Auth::new(b"secret", Duration::from_secs(60));
        let (token, exp) = auth.issue(&user()).unwrap();
        let claims = auth.verify(&token).unwrap();
        assert_eq!(
            (
                claims.sub,
                claims.name.as_str(),
                claims.generation,
                claims.exp
            ),
            (7, "alice", 3, exp)
        );
        let other = Auth::new(b"another secret", Duration::from_secs(60));
        assert_eq!(other.verify(&token).unwrap_err().code, "unauthorized");
        assert_eq!(auth.verify("garbage").unwrap_err().code, "unauthorized");
    }

    #[test]
    fn an_expired_token_says_so() {
        let auth = Auth::new(b"secret", Duration::from_secs(60));
        let old = Claims {
            sub: 1,
            name: "a".into(),
            generation: 0,
            jti: String::new(),
            iat: 0,
            exp: unix_now() - 3600,
        };
        let token = encode(
            &Header::default(),
            &old,
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap();
        assert_eq!(auth.verify(&token).unwrap_err().code, "token_expired");
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let hash = hash_password("correct horse").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(verify_password("correct horse", Some(&hash)));
        assert!(!verify_password("wrong horse", Some(&hash)));
        assert!(!verify_password("correct horse", None));
    }
}
