//! Passwords and recovery passphrases: the policy they must meet, their normalization, and
//! argon2id hashing on a fixed pool of low-priority threads with reused memory, so a burst of
//! logins never occupies the proxy's async workers, starves proxied requests or grows memory.

use crate::config::PasswordSettings;
use crate::pool::Pool;
use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use std::collections::HashSet;
use std::sync::OnceLock;
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

/// Niceness of the hashing threads: logins use whatever CPU the proxy leaves, and a login
/// storm cannot starve proxied requests (Linux schedules threads by their own niceness).
const HASH_THREAD_NICE: libc::c_int = 10;

/// Where the hasher reports: the duration of each hash and how many are queued or running.
/// Unset fields are not reported (command-line tools, benchmarks).
#[derive(Clone, Default)]
pub struct HashMetrics {
    pub seconds: Option<prometheus::Histogram>,
    pub in_flight: Option<prometheus::IntGauge>,
}

/// argon2id hashing, at most `max_concurrent_hashes` at a time, on its own threads.
pub struct Hasher {
    params: Params,
    pool: Pool<HashMemory>,
    dummy: String,
    metrics: HashMetrics,
}

/// A hashing thread's argon2 working memory, allocated once and reused for every hash.
struct HashMemory {
    blocks: Vec<Block>,
    /// What the configured parameters need; more is given back after an old, bigger hash.
    size: usize,
}

impl HashMemory {
    fn trim(&mut self) {
        if self.blocks.len() > self.size {
            self.blocks.truncate(self.size);
            self.blocks.shrink_to_fit();
        }
    }
}

/// Hashing failed (the pool stopped, or argon2 refused its input).
#[derive(Debug, Clone, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(pub String);

impl From<crate::pool::PoolClosed> for HashError {
    fn from(e: crate::pool::PoolClosed) -> HashError {
        HashError(e.to_string())
    }
}

impl Hasher {
    /// Start `settings.max_concurrent_hashes` hashing threads, each with its own argon2 memory
    /// allocated once (m_cost KiB) and reused for every hash: memory stays bounded under any
    /// number of logins.
    pub fn new(settings: &PasswordSettings, metrics: HashMetrics) -> Result<Hasher, String> {
        let params = Params::new(
            settings.argon2_memory_kib,
            settings.argon2_iterations,
            settings.argon2_parallelism,
            None,
        )
        .map_err(|e| format!("invalid argon2 parameters: {e}"))?;
        let mut random = [0u8; 32];
        rand::fill(&mut random);
        let dummy = hash_in(&params, hex::encode(random).as_bytes(), &mut Vec::new())?;
        let size = params.block_count();
        let pool = Pool::start(
            "portcullis-hash",
            settings.max_concurrent_hashes,
            move || {
                lower_own_priority();
                HashMemory {
                    blocks: vec![Block::default(); size],
                    size,
                }
            },
            HashMemory::trim,
        )
        .map_err(|e| format!("cannot start a hashing thread: {e}"))?;
        Ok(Hasher {
            params,
            pool,
            dummy,
            metrics,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Vec<Block>) -> T + Send + 'static,
    ) -> Result<T, HashError> {
        let in_flight = InFlight::enter(self.metrics.in_flight.as_ref());
        let (out, took) = self
            .pool
            .run(move |memory| {
                let start = Instant::now();
                let out = work(&mut memory.blocks);
                (out, start.elapsed())
            })
            .await?;
        drop(in_flight);
        if let Some(seconds) = &self.metrics.seconds {
            seconds.observe(took.as_secs_f64());
        }
        Ok(out)
    }

    /// Hash a secret (already normalized) into a PHC string.
    pub async fn hash(&self, secret: String) -> Result<String, HashError> {
        let params = self.params.clone();
        self.run(move |memory| hash_in(&params, secret.as_bytes(), memory))
            .await?
            .map_err(HashError)
    }

    /// Hash a secret if there is one.
    pub async fn hash_opt(&self, secret: Option<String>) -> Result<Option<String>, HashError> {
        match secret {
            Some(s) => Ok(Some(self.hash(s).await?)),
            None => Ok(None),
        }
    }

    /// Verify a secret against a PHC string; with `None` (no such account) verify against a
    /// dummy hash and report failure, taking the same time.
    pub async fn verify(&self, secret: String, phc: Option<String>) -> Result<Verified, HashError> {
        let params = self.params.clone();
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.dummy.clone());
        let outcome = self
            .run(move |memory| {
                let Ok(parsed) = PasswordHash::new(&phc) else {
                    return Verified {
                        ok: false,
                        needs_rehash: false,
                    };
                };
                let ok = verify_in(&parsed, secret.as_bytes(), memory).unwrap_or(false);
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

/// Counts one hash as queued or running for as long as it lives (also when the waiting request
/// is dropped).
struct InFlight<'a>(Option<&'a prometheus::IntGauge>);

impl<'a> InFlight<'a> {
    fn enter(gauge: Option<&'a prometheus::IntGauge>) -> Self {
        if let Some(g) = gauge {
            g.inc();
        }
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.0 {
            g.dec();
        }
    }
}

/// Make the calling thread nicer (Linux: niceness is per thread). Failure leaves it as is.
fn lower_own_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain system calls on the calling thread's own id; no memory is passed.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, HASH_THREAD_NICE);
    }
}

/// argon2 with `memory` as its working memory (grown to what `argon` needs, never shrunk here).
fn raw_hash(
    argon: &Argon2<'_>,
    blocks: usize,
    secret: &[u8],
    salt: &[u8],
    out: &mut [u8],
    memory: &mut Vec<Block>,
) -> Result<(), argon2::Error> {
    if memory.len() < blocks {
        memory.resize(blocks, Block::default());
    }
    argon.hash_password_into_with_memory(secret, salt, out, &mut memory[..blocks])
}

/// A new argon2id PHC string for `secret` with a random salt.
fn hash_in(params: &Params, secret: &[u8], memory: &mut Vec<Block>) -> Result<String, String> {
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt
        .as_salt()
        .decode_b64(&mut salt_buf)
        .map_err(|e| format!("argon2 salt: {e}"))?;
    let output = Output::init_with(Params::DEFAULT_OUTPUT_LEN, |out| {
        raw_hash(
            &argon,
            params.block_count(),
            secret,
            salt_bytes,
            out,
            memory,
        )
        .map_err(|_| argon2::password_hash::Error::Crypto)
    })
    .map_err(|e| format!("argon2: {e}"))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| format!("argon2: {e}"))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(phc.to_string())
}

/// Does `secret` match the PHC hash? Uses the hash's own algorithm, version and parameters;
/// the comparison is constant-time (`Output`'s equality).
fn verify_in(
    phc: &PasswordHash<'_>,
    secret: &[u8],
    memory: &mut Vec<Block>,
) -> Result<bool, argon2::password_hash::Error> {
    let algorithm = Algorithm::try_from(phc.algorithm)?;
    let version = phc
        .version
        .map(Version::try_from)
        .transpose()?
        .unwrap_or_default();
    let params = Params::try_from(phc)?;
    let (Some(salt), Some(expected)) = (phc.salt, phc.hash) else {
        return Ok(false);
    };
    let mut salt_buf = [0u8; 64];
    let salt_bytes = salt.decode_b64(&mut salt_buf)?;
    let blocks = params.block_count();
    let argon = Argon2::new(algorithm, version, params);
    let computed = Output::init_with(expected.len(), |out| {
        raw_hash(&argon, blocks, secret, salt_bytes, out, memory)
            .map_err(|_| argon2::password_hash::Error::Crypto)
    })?;
    Ok(computed == expected)
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
        let h = Hasher::new(&s, HashMetrics::default()).unwrap();
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
        let stronger = Hasher::new(&s, HashMetrics::default()).unwrap();
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

    #[tokio::test]
    async fn hashes_interoperate_with_the_argon2_crates_own_api() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let mut s = settings();
        s.argon2_memory_kib = 256;
        s.argon2_iterations = 1;
        let h = Hasher::new(&s, HashMetrics::default()).unwrap();
        // Ours verify with the crate's verifier ...
        let ours = h.hash("Secret-1!".into()).await.unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"Secret-1!", &parsed)
            .is_ok());
        assert!(Argon2::default()
            .verify_password(b"Secret-2!", &parsed)
            .is_err());
        // ... and hashes made by the crate (older databases, other parameters, argon2i and
        // a 16-byte output) verify with ours, each against a memory sized for the last one.
        for (algorithm, m, len) in [
            (Algorithm::Argon2id, 512, 32),
            (Algorithm::Argon2id, 64, 16),
            (Algorithm::Argon2i, 128, 32),
            (Algorithm::Argon2id, 256, 32),
        ] {
            let params = argon2::ParamsBuilder::new()
                .m_cost(m)
                .t_cost(1)
                .p_cost(1)
                .output_len(len)
                .build()
                .unwrap();
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            let theirs = Argon2::new(algorithm, Version::V0x13, params)
                .hash_password(b"Secret-1!", &salt)
                .unwrap()
                .to_string();
            let good = h
                .verify("Secret-1!".into(), Some(theirs.clone()))
                .await
                .unwrap();
            assert!(good.ok, "{theirs}");
            assert_eq!(
                good.needs_rehash,
                m != 256 || algorithm != Algorithm::Argon2id
            );
            assert!(!h.verify("Secret-1?".into(), Some(theirs)).await.unwrap().ok);
        }
        assert!(
            !h.verify("x".into(), Some("$argon2id$garbage".into()))
                .await
                .unwrap()
                .ok
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn hashing_threads_run_at_lower_priority() {
        let mut s = settings();
        s.max_concurrent_hashes = 2;
        let _h = Hasher::new(&s, HashMetrics::default()).unwrap();
        let nice_of_hash_threads = || -> Vec<i64> {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|t| {
                    let dir = t.ok()?.path();
                    let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
                    if !comm.starts_with("portcullis-hash") {
                        return None;
                    }
                    let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
                    // Fields after "(comm) ": state is field 3, nice is field 19.
                    let rest = stat.rsplit_once(") ")?.1;
                    rest.split(' ').nth(16)?.parse().ok()
                })
                .collect()
        };
        let mut seen = Vec::new();
        for _ in 0..200 {
            seen = nice_of_hash_threads();
            if seen.len() == 2 && seen.iter().all(|&n| n == i64::from(HASH_THREAD_NICE)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(seen.len() >= 2, "{seen:?}");
        assert!(
            seen.iter().all(|&n| n == i64::from(HASH_THREAD_NICE)),
            "{seen:?}"
        );
    }
}
