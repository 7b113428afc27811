//! Who is calling: JWTs (HS256, with issuer and expiry), Argon2id password hashes, and the
//! extractors that put the caller's role in a handler's signature ([`Caller`], [`Curator`],
//! [`Admin`], [`MaybeCaller`]).
//!
//! The token's role is a first gate; the ledger checks the actor's current role again for
//! every lot and auction command, so a demoted user's old token cannot act beyond its role.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::extract::{FromRef, FromRequestParts};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ledger::pb::Role;
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, Semaphore};

use crate::error::AppError;

/// The `iss` claim of every token this gateway mints and accepts.
pub const ISSUER: &str = "gavel";
/// Shortest accepted signing secret: HS256 wants at least the hash's 32 bytes.
pub const SECRET_BYTES_MIN: usize = 32;
/// Password length bounds, in bytes.
pub const PASSWORD_BYTES_MIN: usize = 8;
pub const PASSWORD_BYTES_MAX: usize = 256;

/// A token's claims.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    pub role: String,
    pub iss: String,
    pub iat: u64,
    pub exp: u64,
}

/// Signing and checking tokens.
pub struct Jwt {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the JWT secret must be at least {SECRET_BYTES_MIN} bytes (GAVEL_JWT_SECRET)")]
    SecretTooShort,
    #[error("cannot sign a token: {0}")]
    Sign(String),
    #[error("cannot hash a password: {0}")]
    Hash(String),
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Jwt {
    pub fn new(secret: &[u8], ttl: Duration) -> Result<Jwt, AuthError> {
        if secret.len() < SECRET_BYTES_MIN {
            return Err(AuthError::SecretTooShort);
        }
        // HS256 only: a token naming another algorithm (`none` included) is refused.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        validation.leeway = 5;
        Ok(Jwt {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        })
    }

    /// A signed token for `user_id` acting as `role`, and its expiry (Unix seconds).
    pub fn mint(&self, user_id: &str, role: Role) -> Result<(String, u64), AuthError> {
        let iat = now_secs();
        let exp = iat + self.ttl.as_secs();
        let claims =
            Claims { sub: user_id.to_owned(), role: role_name(role).to_owned(), iss: ISSUER.to_owned(), iat, exp };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Sign(e.to_string()))?;
        Ok((token, exp))
    }

    /// The caller a token names, if it is ours, unexpired and well formed.
    pub fn verify(&self, token: &str) -> Result<Caller, AppError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AppError::unauthorized(format!("invalid token: {e}")))?;
        let role = ledger::state::parse_role(&data.claims.role)
            .ok_or_else(|| AppError::unauthorized("invalid token: unknown role"))?;
        Ok(Caller { user_id: data.claims.sub, role })
    }
}

pub fn role_name(role: Role) -> &'static str {
    ledger::state::role_name(role)
}

/// The bearer token of a request, if it sends one.
pub fn bearer(headers: &HeaderMap) -> Result<Option<&str>, AppError> {
    let Some(value) = headers.get(AUTHORIZATION) else { return Ok(None) };
    let value = value.to_str().map_err(|_| AppError::unauthorized("the Authorization header is not text"))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => {
            Ok(Some(token.trim()))
        }
        _ => Err(AppError::unauthorized("send the token as `Authorization: Bearer <token>`")),
    }
}

/// Any signed-in user.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user_id: String,
    pub role: Role,
}

impl Caller {
    /// Roles are ranked: admin may do what a curator may, a curator what a user may.
    pub fn is_at_least(&self, role: Role) -> bool {
        (self.role as i32) >= (role as i32)
    }
}

impl<S> FromRequestParts<S> for Caller
where
    Arc<Jwt>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Caller, AppError> {
        let token = bearer(&parts.headers)?.ok_or_else(|| AppError::unauthorized("sign in first: no bearer token"))?;
        Arc::<Jwt>::from_ref(state).verify(token)
    }
}

/// The caller when a token is sent (an invalid one is still refused), else nobody.
pub struct MaybeCaller(pub Option<Caller>);

impl<S> FromRequestParts<S> for MaybeCaller
where
    Arc<Jwt>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<MaybeCaller, AppError> {
        match bearer(&parts.headers)? {
            None => Ok(MaybeCaller(None)),
            Some(token) => Arc::<Jwt>::from_ref(state).verify(token).map(|c| MaybeCaller(Some(c))),
        }
    }
}

macro_rules! role_extractor {
    ($name:ident, $role:expr, $what:literal) => {
        #[doc = concat!("A caller with at least the ", $what, " role.")]
        pub struct $name(pub Caller);

        impl<S> FromRequestParts<S> for $name
        where
            Arc<Jwt>: FromRef<S>,
            S: Send + Sync,
        {
            type Rejection = AppError;

            async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<$name, AppError> {
                let caller = Caller::from_request_parts(parts, state).await?;
                if !caller.is_at_least($role) {
                    return Err(AppError::forbidden(concat!("this needs the ", $what, " role")));
                }
                Ok($name(caller))
            }
        }
    };
}

role_extractor!(Curator, Role::Curator, "curator");
role_extractor!(Admin, Role::Admin, "admin");

/// Argon2id hashing off the async runtime, a bounded number at a time (each costs ~19 MiB
/// and tens of milliseconds of one core).
pub struct Passwords {
    permits: Semaphore,
    /// A hash of a random password, verified against when the user does not exist, so that
    /// a wrong username costs as long as a wrong password.
    decoy: OnceCell<String>,
}

/// Checks a new password's length (the bound also caps the hashing cost).
pub fn check_password(password: &str) -> Result<(), AppError> {
    if !(PASSWORD_BYTES_MIN..=PASSWORD_BYTES_MAX).contains(&password.len()) {
        return Err(AppError::invalid(format!("password must be {PASSWORD_BYTES_MIN} to {PASSWORD_BYTES_MAX} bytes")));
    }
    Ok(())
}

/// `n` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], AuthError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| AuthError::Hash(format!("no randomness: {e}")))?;
    Ok(bytes)
}

fn hash_now(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()?).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

fn verify_now(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
}

impl Passwords {
    pub fn new(concurrent_max: usize) -> Passwords {
        Passwords { permits: Semaphore::new(concurrent_max.max(1)), decoy: OnceCell::new() }
    }

    /// An Argon2id PHC string for `password`.
    pub async fn hash(&self, password: String) -> Result<String, AppError> {
        let _permit = self.permits.acquire().await.map_err(|_| AppError::unavailable("shutting down"))?;
        tokio::task::spawn_blocking(move || hash_now(&password))
            .await
            .map_err(|e| AppError::internal(format!("hashing task failed: {e}")))?
            .map_err(|e| AppError::internal(e.to_string()))
    }

    /// Whether `password` matches the stored hash; `None` (no such user) never matches but
    /// takes as long.
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, AppError> {
        let (phc, real) = match stored {
            Some(phc) => (phc, true),
            None => (self.decoy().await?, false),
        };
        let _permit = self.permits.acquire().await.map_err(|_| AppError::unavailable("shutting down"))?;
        let matches = tokio::task::spawn_blocking(move || verify_now(&password, &phc))
            .await
            .map_err(|e| AppError::internal(format!("hashing task failed: {e}")))?;
        Ok(real && matches)
    }

    async fn decoy(&self) -> Result<String, AppError> {
        self.decoy
            .get_or_try_init(|| async {
                let password = format!("{:x?}", random_bytes::<16>().map_err(|e| AppError::internal(e.to_string()))?);
                self.hash(password).await
            })
            .await
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt() -> Jwt {
        Jwt::new(&[7u8; 32], Duration::from_secs(60)).unwrap()
    }

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_refused() {
        let jwt = jwt();
        let (token, _) = jwt.mint("u-1", Role::Curator).unwrap();
        let caller = jwt.verify(&token).unwrap();
        assert_eq!(caller.user_id, "u-1");
        assert_eq!(caller.role, Role::Curator);
        assert!(caller.is_at_least(Role::User) && !caller.is_at_least(Role::Admin));

        let other = Jwt::new(&[8u8; 32], Duration::from_secs(60)).unwrap();
        let (forged, _) = other.mint("u-1", Role::Admin).unwrap();
        assert_eq!(jwt.verify(&forged).unwrap_err().status, 401);
        assert!(Jwt::new(b"short", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn passwords_hash_and_verify() {
        let phc = hash_now("correct horse").unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(verify_now("correct horse", &phc));
        assert!(!verify_now("wrong horse", &phc));
        assert!(!verify_now("correct horse", "not a hash"));
    }
}
