//! `portcullis backup` and `portcullis restore`: a consistent copy of both databases taken by the
//! running server (copying a live redb file is not consistent), and putting one back into an
//! empty data dir with the server stopped.

use crate::app::{BACKUP_AUDIT, BACKUP_MAIN};
use crate::config::Config;
use crate::store::Store;
use std::fs;
use std::path::Path;

fn copy_synced(from: &Path, to: &Path) -> Result<(), String> {
    fs::copy(from, to)
        .map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))?;
    fs::File::open(to)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("cannot sync {}: {e}", to.display()))
}

/// Have the running server write a backup, then move it into `out` (created if needed; files
/// of the same names there are refused).
pub fn backup(config: &Config, out: &Path) -> Result<(), String> {
    for name in [BACKUP_MAIN, BACKUP_AUDIT] {
        if out.join(name).exists() {
            return Err(format!("{} already exists", out.join(name).display()));
        }
    }
    fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let written = crate::admin_client::request_backup(config.server.admin_listen)?;
    let written = Path::new(&written);
    for name in [BACKUP_MAIN, BACKUP_AUDIT] {
        let (from, to) = (written.join(name), out.join(name));
        if fs::rename(&from, &to).is_err() {
            copy_synced(&from, &to)?;
        }
    }
    let _ = fs::remove_dir_all(written);
    Ok(())
}

/// Put a backup back: the configured database files must not exist yet. The backup is opened
/// (and its schema checked) before anything is copied.
pub fn restore(config: &Config, from: &Path) -> Result<(), String> {
    let (main, audit) = (&config.storage.database, &config.storage.audit_database);
    for target in [main, audit] {
        if target.exists() {
            return Err(format!(
                "{} already exists: restore only into an empty data dir, with the server stopped",
                target.display()
            ));
        }
    }
    let (src_main, src_audit) = (from.join(BACKUP_MAIN), from.join(BACKUP_AUDIT));
    for src in [&src_main, &src_audit] {
        if !src.is_file() {
            return Err(format!("{} is missing", src.display()));
        }
    }
    drop(Store::open(&src_main, &src_audit).map_err(|e| format!("the backup does not open: {e}"))?);
    for (src, target) in [(&src_main, main), (&src_audit, audit)] {
        if let Some(dir) = target.parent() {
            fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        copy_synced(src, target)?;
    }
    Ok(())
}
