//! The live-session table: which sessions exist, for whom, until when, and when they were last
//! active. The gate asks it on every request (memory only, no database write); activity is
//! written behind to the store in batches by the session flusher.

use crate::store::models::Session;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::RwLock;

struct Live {
    user_id: String,
    expires_at: i64,
    last_seen: AtomicI64,
    dirty: AtomicBool,
}

/// Why a session is not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dead {
    /// Logged out, revoked, or never existed.
    Ended,
    Expired,
    Idle,
}

impl Dead {
    pub fn reason(self) -> &'static str {
        match self {
            Dead::Ended => "session_ended",
            Dead::Expired => "session_expired",
            Dead::Idle => "session_idle",
        }
    }
}

pub struct SessionTable {
    idle_secs: i64,
    live: RwLock<HashMap<String, Live>>,
}

impl SessionTable {
    pub fn new(idle_secs: i64) -> SessionTable {
        SessionTable {
            idle_secs,
            live: RwLock::new(HashMap::new()),
        }
    }

    pub fn insert(&self, s: &Session) {
        let live = Live {
            user_id: s.user_id.clone(),
            expires_at: s.expires_at,
            last_seen: AtomicI64::new(s.last_seen),
            dirty: AtomicBool::new(false),
        };
        if let Ok(mut map) = self.live.write() {
            map.insert(s.id.clone(), live);
        }
    }

    pub fn remove(&self, ids: &[String]) {
        if let Ok(mut map) = self.live.write() {
            for id in ids {
                map.remove(id);
            }
        }
    }

    /// Is session `id` of `user_id` usable at `now`? If so, record the activity.
    pub fn check_and_touch(&self, id: &str, user_id: &str, now: i64) -> Result<(), Dead> {
        let map = self.live.read().map_err(|_| Dead::Ended)?;
        let s = map.get(id).ok_or(Dead::Ended)?;
        if s.user_id != user_id {
            return Err(Dead::Ended);
        }
        if s.expires_at <= now {
            return Err(Dead::Expired);
        }
        if now - s.last_seen.load(Ordering::Relaxed) >= self.idle_secs {
            return Err(Dead::Idle);
        }
        if s.last_seen.fetch_max(now, Ordering::Relaxed) < now {
            s.dirty.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Last activity of a user's most recent session still alive at `now`, if any.
    pub fn last_seen_of(&self, user_id: &str, now: i64) -> Option<i64> {
        let map = self.live.read().ok()?;
        map.values()
            .filter(|s| s.user_id == user_id && s.expires_at > now)
            .map(|s| s.last_seen.load(Ordering::Relaxed))
            .filter(|seen| now - seen < self.idle_secs)
            .max()
    }

    /// Activity recorded since the last call, to write behind.
    pub fn take_dirty(&self) -> Vec<(String, i64)> {
        let Ok(map) = self.live.read() else {
            return Vec::new();
        };
        map.iter()
            .filter(|(_, s)| s.dirty.swap(false, Ordering::Relaxed))
            .map(|(id, s)| (id.clone(), s.last_seen.load(Ordering::Relaxed)))
            .collect()
    }

    /// Forget sessions that can no longer be used; returns how many remain.
    pub fn purge(&self, now: i64) -> usize {
        let Ok(mut map) = self.live.write() else {
            return 0;
        };
        let idle = self.idle_secs;
        map.retain(|_, s| s.expires_at > now && now - s.last_seen.load(Ordering::Relaxed) < idle);
        map.len()
    }

    pub fn len(&self) -> usize {
        self.live.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, user: &str, now: i64) -> Session {
        Session {
            id: id.into(),
            user_id: user.into(),
            created_at: now,
            expires_at: now + 1800,
            last_seen: now,
        }
    }

    #[test]
    fn idle_expiry_and_activity() {
        let t = SessionTable::new(600);
        t.insert(&session("s", "u", 1000));
        assert_eq!(t.check_and_touch("s", "u", 1500), Ok(()));
        assert_eq!(
            t.check_and_touch("s", "u", 2000),
            Ok(()),
            "activity at 1500 extended idle"
        );
        assert_eq!(t.check_and_touch("s", "u", 2600), Err(Dead::Idle));
        assert_eq!(t.check_and_touch("s", "other", 2000), Err(Dead::Ended));
        assert_eq!(t.check_and_touch("x", "u", 2000), Err(Dead::Ended));
    }

    #[test]
    fn absolute_expiry_holds_despite_activity() {
        let t = SessionTable::new(600);
        t.insert(&session("s", "u", 1000));
        for now in (1100..2800).step_by(100) {
            assert_eq!(t.check_and_touch("s", "u", now), Ok(()));
        }
        assert_eq!(t.check_and_touch("s", "u", 2800), Err(Dead::Expired));
    }

    #[test]
    fn dirty_sessions_are_reported_once() {
        let t = SessionTable::new(600);
        t.insert(&session("s", "u", 1000));
        t.check_and_touch("s", "u", 1010).unwrap();
        assert_eq!(t.take_dirty(), vec![("s".to_string(), 1010)]);
        assert!(t.take_dirty().is_empty());
        t.remove(&["s".to_string()]);
        assert_eq!(t.check_and_touch("s", "u", 1020), Err(Dead::Ended));
    }
}
