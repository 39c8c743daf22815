//! Validation of account fields: each returns the clean value or a refusal with a message the
//! person can act on.

use super::AccountError as Error;

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// An email address: one `@`, sane lengths, no spaces, control characters (CR/LF) or characters
/// that would need quoting in a header.
pub fn email(raw: &str) -> Result<String, Error> {
    let e = raw.trim();
    let bad = || Error::Invalid("Invalid email address".into());
    if e.len() > 254
        || has_control(e)
        || e.chars()
            .any(|c| c.is_whitespace() || "<>,;\"()\\[]:".contains(c))
    {
        return Err(bad());
    }
    let (local, domain) = e.split_once('@').ok_or_else(bad)?;
    if local.is_empty()
        || local.len() > 64
        || domain.len() < 3
        || domain.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
    {
        return Err(bad());
    }
    Ok(e.to_string())
}

pub fn nickname(raw: &str) -> Result<String, Error> {
    let n = raw.trim();
    let len = n.chars().count();
    if len == 0 || len > 64 || has_control(n) {
        return Err(Error::Invalid(
            "Nickname must be 1 to 64 characters without control characters".into(),
        ));
    }
    Ok(n.to_string())
}

pub fn customer_account(raw: &str) -> Result<String, Error> {
    let c = raw.trim();
    if c.chars().count() > 128 || has_control(c) {
        return Err(Error::Invalid(
            "customer_account must be at most 128 characters without control characters".into(),
        ));
    }
    Ok(if c.is_empty() {
        "none".to_string()
    } else {
        c.to_string()
    })
}

/// A recovery passphrase, normalized (case, whitespace) before it is checked and hashed.
pub fn passphrase(raw: &str) -> Result<String, Error> {
    if raw.len() > 1024 {
        return Err(Error::Invalid(
            "Passphrase must be 8 to 256 characters".into(),
        ));
    }
    let p = crate::auth::password::normalize_passphrase(raw);
    let len = p.chars().count();
    if !(8..=256).contains(&len) {
        return Err(Error::Invalid(
            "Passphrase must be 8 to 256 characters".into(),
        ));
    }
    Ok(p)
}

/// Refuse absurdly long passwords before normalizing or hashing them.
pub fn password_size(raw: &str, max_chars: usize) -> Result<(), Error> {
    if raw.len() > max_chars * 4 || raw.chars().count() > max_chars {
        return Err(Error::Invalid(format!(
            "Password must be at most {max_chars} characters"
        )));
    }
    Ok(())
}

pub fn role(raw: &str) -> Result<String, Error> {
    match raw {
        crate::store::models::ROLE_USER | crate::store::models::ROLE_ADMIN => Ok(raw.to_string()),
        _ => Err(Error::Invalid("role must be \"user\" or \"admin\"".into())),
    }
}

/// The profile fields an update may carry (self-service or admin), validated and normalized;
/// the new password has passed the policy. Secrets are not hashed yet.
pub struct ProfileChanges {
    pub nickname: Option<String>,
    pub email: Option<String>,
    pub customer_account: Option<String>,
    pub passphrase: Option<String>,
    pub password: Option<String>,
}

impl ProfileChanges {
    pub fn validate(
        policy: &crate::config::PasswordSettings,
        current: &crate::store::models::User,
        nickname: Option<&str>,
        email: Option<&str>,
        customer_account: Option<&str>,
        passphrase: Option<&str>,
        password: Option<&str>,
    ) -> Result<ProfileChanges, Error> {
        let nickname = nickname.map(self::nickname).transpose()?;
        let email = email.map(self::email).transpose()?;
        let customer_account = customer_account.map(self::customer_account).transpose()?;
        let passphrase = passphrase.map(self::passphrase).transpose()?;
        let password = match password {
            Some(p) => {
                password_size(p, policy.max_length)?;
                let p = crate::auth::password::normalize_password(p);
                let context = [
                    email.as_deref().unwrap_or(&current.email),
                    nickname.as_deref().unwrap_or(&current.nickname),
                ];
                crate::auth::password::check_policy(policy, &p, &context)
                    .map_err(Error::Invalid)?;
                Some(p)
            }
            None => None,
        };
        Ok(ProfileChanges {
            nickname,
            email,
            customer_account,
            passphrase,
            password,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert!(email(" Alice@Example.com ").is_ok());
        for bad in [
            "",
            "a",
            "a@b",
            "@example.com",
            "a@@example.com",
            "a b@example.com",
            "a@example.com\r\nBcc: x@y.z",
            "a@.com",
            "a@example..com",
            "<a@example.com>",
        ] {
            assert!(email(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passphrases_are_normalized() {
        assert_eq!(passphrase("  Correct   Horse ").unwrap(), "correct horse");
        assert!(passphrase("short").is_err());
    }
}
