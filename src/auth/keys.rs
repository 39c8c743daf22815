//! The token signing key: the configured secret, or one generated once and kept in the data dir.

use crate::config::Config;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where a generated key lives.
pub fn generated_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("secret.key")
}

/// The signing key bytes. Without `auth.secret_key`, read `data_dir/secret.key`, creating it
/// (256 random bits, mode 0600) on first start, and warn that the key is generated.
pub fn load_or_generate(config: &Config) -> Result<Vec<u8>, String> {
    if let Some(key) = &config.auth.secret_key {
        return Ok(key.clone());
    }
    let path = generated_key_path(&config.data_dir);
    let min = config.auth.algorithm.min_key_bytes();
    match fs::read_to_string(&path) {
        Ok(text) => {
            let key = text.trim().as_bytes().to_vec();
            if key.len() < min {
                return Err(format!(
                    "{} holds a key shorter than {min} bytes; remove it to generate a new one",
                    path.display()
                ));
            }
            let mode = fs::metadata(&path)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "signing key file is readable by other users; chmod 600 it");
            }
            tracing::warn!(path = %path.display(), "auth.secret_key (SECRET_KEY) is unset: using the generated key kept in the data dir");
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(&config.data_dir).map_err(|e| {
                format!("cannot create data dir {}: {e}", config.data_dir.display())
            })?;
            let mut bytes = vec![0u8; min];
            rand::fill(&mut bytes[..]);
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            file.write_all(hex.as_bytes())
                .and_then(|_| file.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            tracing::warn!(path = %path.display(), "auth.secret_key (SECRET_KEY) is unset: generated a signing key and stored it in the data dir; set SECRET_KEY to share one key between instances");
            Ok(hex.into_bytes())
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}
