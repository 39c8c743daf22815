//! The messages the accounts domain sends: what each says, to whom. Links are built from the
//! configured public URL, never from request headers.

use super::Accounts;
use crate::email::compose;
use crate::store::models::{Mail, User, Verification};

/// A random token of 256 bits, URL-safe, and the SHA-256 (hex) it is stored under.
pub fn random_token() -> (String, String) {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    (token.clone(), token_hash(&token))
}

pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

impl Accounts {
    /// A verification link for `user`'s current address: the mail to send and what to store
    /// under the token's hash.
    pub(super) fn verification_mail(
        &self,
        user: &User,
        now: i64,
    ) -> (Mail, (String, Verification)) {
        let (token, hash) = random_token();
        let link = format!("{}/verify-email?token={}", self.settings.link_base, token);
        let ttl = self.settings.accounts.verification_ttl.as_secs();
        let mail = compose(
            &user.email,
            "Verify your email address",
            &format!(
                "Hello {},\n\nplease confirm your email address by opening this link within {} hours:\n\n{link}\n\nIf you did not create this account, ignore this message.\n",
                user.nickname,
                ttl / 3600
            ),
            now,
        );
        let v = Verification {
            user_id: user.id.clone(),
            email: user.email.clone(),
            expires_at: now + ttl as i64,
        };
        (mail, (hash, v))
    }
}

pub fn password_reset(user: &User, now: i64) -> Mail {
    compose(
        &user.email,
        "Your password was reset",
        &format!(
            "Hello {},\n\nthe password of your account was reset with your recovery passphrase, and every session was signed out.\nIf this was not you, contact your administrator at once.\n",
            user.nickname
        ),
        now,
    )
}

pub fn password_changed(user: &User, now: i64) -> Mail {
    compose(
        &user.email,
        "Your password was changed",
        &format!("Hello {},\n\nthe password of your account was changed and your other sessions were signed out.\nIf this was not you, recover your account at once.\n", user.nickname),
        now,
    )
}

pub fn email_changed(user: &User, now: i64) -> Mail {
    compose(
        &user.email,
        "Your email address was changed",
        &format!("Hello {},\n\nthe email address of your account was changed. If this was not you, contact your administrator.\n", user.nickname),
        now,
    )
}

pub fn account_deleted(user: &User, now: i64) -> Mail {
    compose(
        &user.email,
        "Your account was deleted",
        &format!(
            "Hello {},\n\nyour account and its data were deleted.\n",
            user.nickname
        ),
        now,
    )
}
