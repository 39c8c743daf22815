//! `portcullis backup` and `portcullis restore`: a consistent copy of the data taken by the
//! running server (copying a live database file is not consistent), and putting one back into
//! an empty data dir with the server stopped.

use crate::config::Config;
use std::fs;
use std::path::Path;

/// Have the running server write a backup, then move its files into `out` (created if needed;
/// files of the same names there are refused).
pub fn backup(config: &Config, out: &Path) -> Result<(), String> {
    if config.storage.database.is_postgres() {
        return Err(crate::store::postgres::BACKUP_ADVICE.to_string());
    }
    let written = crate::admin_client::request_backup(config.server.admin_listen)?;
    let written = Path::new(&written);
    let files: Vec<_> = fs::read_dir(written)
        .map_err(|e| format!("cannot read {}: {e}", written.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    for name in &files {
        if out.join(name).exists() {
            let _ = fs::remove_dir_all(written);
            return Err(format!("{} already exists", out.join(name).display()));
        }
    }
    fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    for name in &files {
        let (from, to) = (written.join(name), out.join(name));
        if fs::rename(&from, &to).is_err() {
            fs::copy(&from, &to)
                .and_then(|_| fs::File::open(&to)?.sync_all())
                .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))?;
        }
    }
    let _ = fs::remove_dir_all(written);
    Ok(())
}

/// Put a backup back into the configured (empty) store, with the server stopped.
pub fn restore(config: &Config, from: &Path) -> Result<(), String> {
    crate::store::restore(&config.storage, from).map_err(|e| e.to_string())
}
