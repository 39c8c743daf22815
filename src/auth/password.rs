//! Passwords and recovery passphrases: the policy they must meet, their normalization, and
//! argon2id hashing on a bounded pool of blocking threads, so a burst of logins never occupies
//! the proxy's async workers.

use crate::config::PasswordSettings;
use crate::error::Error;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use unicode_normalization::UnicodeNormalization;

static COMMON: &str = include_str!("common_passwords.txt");

fn common_passwords() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect()
    })
}

/// Passwords are compared in Unicode NFC, so the same password typed on different systems
/// (precomposed or decomposed accents) is the same password.
pub fn normalize_password(password: &str) -> String {
    password.nfc().collect()
}

/// Passphrases ignore case and surrounding or repeated whitespace.
pub fn normalize_passphrase(passphrase: &str) -> String {
    passphrase
        .nfc()
        .collect::<String>()
        .to_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Check a (normalized) password against the policy. `context` holds values the password must
/// not equal (email, its local part, nickname, the product name).
pub fn check_policy(
    settings: &PasswordSettings,
    password: &str,
    context: &[&str],
) -> Result<(), String> {
    let chars = password.chars().count();
    if chars < settings.min_length {
        return Err(format!(
            "Password must be at least {} characters",
            settings.min_length
        ));
    }
    if chars > settings.max_length {
        return Err(format!(
            "Password must be at most {} characters",
            settings.max_length
        ));
    }
    if settings.require_mixed {
        let upper = password.chars().any(char::is_uppercase);
        let lower = password.chars().any(char::is_lowercase);
        let digit = password.chars().any(|c| c.is_ascii_digit());
        let special = password.chars().any(|c| !c.is_alphanumeric());
        if !(upper && lower && digit && special) {
            return Err("Password must contain an upper-case letter, a lower-case letter, a digit and a special character".into());
        }
    }
    if settings.block_common {
        let lower = password.to_lowercase();
        if common_passwords().contains(lower.as_str()) {
            return Err("Password is too common".into());
        }
        let mut banned: Vec<String> = vec!["portcullis".into()];
        for value in context {
            let v = value.trim().to_lowercase();
            if let Some((local, _)) = v.split_once('@') {
                banned.push(local.to_string());
            }
            banned.push(v);
        }
        if banned.iter().any(|b| !b.is_empty() && *b == lower) {
            return Err("Password must not be your email, nickname or the product name".into());
        }
    }
    Ok(())
}

/// The outcome of checking a secret against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub ok: bool,
    /// The hash was made with other parameters: store a fresh one.
    pub needs_rehash: bool,
}

/// argon2id hashing, at most `max_concurrent_hashes` at a time, on tokio's blocking pool.
pub struct Hasher {
    params: Params,
    permits: Arc<tokio::sync::Semaphore>,
    /// A hash of a random secret, verified against when the account does not exist, so that
    /// an unknown email costs the same time as a wrong password.
    dummy: String,
    /// Records each hash's duration, seconds.
    observe: Box<dyn Fn(f64) + Send + Sync>,
}

impl Hasher {
    pub fn new(
        settings: &PasswordSettings,
        observe: Box<dyn Fn(f64) + Send + Sync>,
    ) -> Result<Hasher, String> {
        let params = Params::new(
            settings.argon2_memory_kib,
            settings.argon2_iterations,
            settings.argon2_parallelism,
            None,
        )
        .map_err(|e| format!("invalid argon2 parameters: {e}"))?;
        let mut random = [0u8; 32];
        rand::fill(&mut random);
        let dummy = hash_with(&params, &hex::encode(random))?;
        Ok(Hasher {
            params,
            permits: Arc::new(tokio::sync::Semaphore::new(
                settings.max_concurrent_hashes.max(1),
            )),
            dummy,
            observe,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::Internal("hash pool closed".into()))?;
        let start = Instant::now();
        let out = tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Error::Internal(format!("hash task failed: {e}")))?;
        (self.observe)(start.elapsed().as_secs_f64());
        Ok(out)
    }

    /// Hash a secret (already normalized) into a PHC string.
    pub async fn hash(&self, secret: String) -> Result<String, Error> {
        let params = self.params.clone();
        self.run(move || hash_with(&params, &secret))
            .await?
            .map_err(Error::Internal)
    }

    /// Hash a secret if there is one.
    pub async fn hash_opt(&self, secret: Option<String>) -> Result<Option<String>, Error> {
        match secret {
            Some(s) => Ok(Some(self.hash(s).await?)),
            None => Ok(None),
        }
    }

    /// Verify a secret against a PHC string; with `None` (no such account) verify against a
    /// dummy hash and report failure, taking the same time.
    pub async fn verify(&self, secret: String, phc: Option<String>) -> Result<Verified, Error> {
        let params = self.params.clone();
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.clone());
        let outcome = self
            .run(move || {
                let Ok(parsed) = PasswordHash::new(&phc) else {
                    return Verified {
                        ok: false,
                        needs_rehash: false,
                    };
                };
                let ok = Argon2::default()
                    .verify_password(secret.as_bytes(), &parsed)
                    .is_ok();
                let current = Params::try_from(&parsed).ok();
                let needs_rehash = parsed.algorithm.as_str() != "argon2id"
                    || current.is_none_or(|p| {
                        p.m_cost() != params.m_cost()
                            || p.t_cost() != params.t_cost()
                            || p.p_cost() != params.p_cost()
                    });
                Verified { ok, needs_rehash }
            })
            .await?;
        Ok(Verified {
            ok: outcome.ok && known,
            needs_rehash: outcome.needs_rehash && known,
        })
    }
}

fn hash_with(params: &Params, secret: &str) -> Result<String, String> {
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    argon
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("argon2: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, RawConfig};

    fn settings() -> PasswordSettings {
        Config::from_raw(&RawConfig::default()).unwrap().passwords
    }

    #[test]
    fn original_policy() {
        let s = settings();
        assert!(check_policy(&s, "Str0ng!pass", &[]).is_ok());
        assert!(check_policy(&s, "Sh0rt!", &[]).is_err());
        assert!(check_policy(&s, "alllowercase1!", &[]).is_err());
        assert!(check_policy(&s, "NoDigits!!", &[]).is_err());
        assert!(check_policy(&s, "NoSpecial123", &[]).is_err());
        assert!(
            check_policy(&s, &format!("A1!{}", "a".repeat(126)), &[]).is_err(),
            "129 chars"
        );
        assert!(
            check_policy(&s, &format!("A1!{}", "a".repeat(125)), &[]).is_ok(),
            "128 chars"
        );
    }

    #[test]
    fn common_and_personal_passwords_are_refused() {
        let mut s = settings();
        s.require_mixed = false;
        assert!(check_policy(&s, "password", &[]).is_err());
        assert!(check_policy(&s, "Password", &[]).is_err());
        assert!(check_policy(&s, "qwertyuiop", &[]).is_err());
        assert!(check_policy(&s, "portcullis", &[]).is_err());
        assert!(check_policy(&s, "alice.smith", &["alice.smith@example.com"]).is_err());
        assert!(check_policy(&s, "correct horse battery staple", &["a@b.c"]).is_ok());
        assert!(
            common_passwords().len() >= 9_900,
            "{}",
            common_passwords().len()
        );
    }

    #[test]
    fn normalization() {
        assert_eq!(normalize_password("e\u{301}"), "\u{e9}");
        assert_eq!(
            normalize_passphrase("  Blue   Horse\tStaple "),
            "blue horse staple"
        );
    }

    #[tokio::test]
    async fn hash_verify_and_rehash() {
        let mut s = settings();
        s.argon2_memory_kib = 1024;
        s.argon2_iterations = 1;
        let h = Hasher::new(&s, Box::new(|_| {})).unwrap();
        let phc = h.hash("Secret-1!".into()).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        assert_eq!(
            h.verify("Secret-1!".into(), Some(phc.clone()))
                .await
                .unwrap(),
            Verified {
                ok: true,
                needs_rehash: false
            }
        );
        assert!(
            !h.verify("Secret-2!".into(), Some(phc.clone()))
                .await
                .unwrap()
                .ok
        );
        assert!(!h.verify("Secret-1!".into(), None).await.unwrap().ok);
        s.argon2_iterations = 2;
        let stronger = Hasher::new(&s, Box::new(|_| {})).unwrap();
        assert_eq!(
            stronger
                .verify("Secret-1!".into(), Some(phc))
                .await
                .unwrap(),
            Verified {
                ok: true,
                needs_rehash: true
            }
        );
    }
}
