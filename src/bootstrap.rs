//! Creating an admin from the command line (`portcullis admin create`), so no deployment needs
//! a default admin with a known password. Works on the configured store while the server is
//! stopped.

use crate::accounts::{create_admin as create, Registration};
use crate::auth::password::{HashMetrics, Hasher};
use crate::config::Config;

/// Create an admin account; returns its id. Secrets come from the caller (stdin or environment).
pub fn create_admin(
    config: &Config,
    email: &str,
    nickname: &str,
    password: &str,
    passphrase: &str,
    now: i64,
) -> Result<String, String> {
    let store =
        crate::store::open(&config.storage, Default::default()).map_err(|e| e.to_string())?;
    let hasher = Hasher::new(&config.passwords, HashMetrics::default())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let registration = Registration {
        email,
        nickname,
        password,
        passphrase,
        customer_account: None,
    };
    let user = runtime
        .block_on(create(
            store.as_ref(),
            &config.passwords,
            &hasher,
            registration,
            now,
        ))
        .map_err(|e| crate::error::Error::from(e).public_message().into_owned())?;
    Ok(user.id)
}
