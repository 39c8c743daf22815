//! Creating an admin from the command line (`portcullis admin create`), so no deployment needs
//! a default admin with a known password. Works on the data dir while the server is stopped.

use crate::api::new_account;
use crate::auth::password::Hasher;
use crate::config::Config;
use crate::store::models::{AuditEvent, ROLE_ADMIN};
use crate::store::Store;

/// Create an admin account; returns its id. Secrets come from the caller (stdin or environment).
pub fn create_admin(
    config: &Config,
    email: &str,
    nickname: &str,
    password: &str,
    passphrase: &str,
    now: i64,
) -> Result<String, String> {
    let store = Store::open(&config.storage.database, &config.storage.audit_database)
        .map_err(|e| e.to_string())?;
    let hasher = Hasher::new(&config.passwords, Box::new(|_| {}))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let account = runtime
        .block_on(new_account(
            &config.passwords,
            &hasher,
            email,
            nickname,
            password,
            passphrase,
            None,
        ))
        .map_err(|e| e.public_message().into_owned())?;
    let user = account.into_user(ROLE_ADMIN, false, true, now);
    let user = store
        .create_user(user, false, &[], None)
        .map_err(|e| crate::error::Error::from(e).public_message().into_owned())?;
    store
        .append_audit(&[AuditEvent {
            seq: 0,
            at: now,
            kind: "admin_create".into(),
            outcome: "success".into(),
            user_id: Some(user.id.clone()),
            actor: Some("cli".into()),
            request_id: String::new(),
            client_ip: String::new(),
            detail: Some("portcullis admin create".into()),
        }])
        .map_err(|e| e.to_string())?;
    Ok(user.id)
}
