//! The live-session table: which sessions exist, whose they are (the user's current role,
//! email and nickname), until when, and when they were last active. The gate asks it on every
//! request (memory only, no database access); activity is written behind to the store in
//! batches by the session flusher.

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, RwLock, Weak};

/// Who a session belongs to, as the gate injects it upstream. Taken from the user record when
/// the session opens and kept current by profile changes (role changes end sessions instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub email: String,
    pub nickname: String,
    pub role: String,
}

/// The caller of an authenticated request: a live session and whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub session_id: String,
    /// The token's expiry.
    pub expires_at: i64,
    pub principal: Arc<Principal>,
}

impl Identity {
    pub fn user_id(&self) -> &str {
        &self.principal.user_id
    }
}

/// One user's principal, shared by all of that user's live sessions.
struct Owner {
    user_id: String,
    principal: ArcSwap<Principal>,
}

struct Live {
    owner: Arc<Owner>,
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

/// A session to put into the table.
#[derive(Debug, Clone)]
pub struct NewSession<'a> {
    pub id: &'a str,
    pub expires_at: i64,
    pub last_seen: i64,
    pub principal: Principal,
}

pub struct SessionTable {
    idle_secs: i64,
    live: RwLock<HashMap<String, Live>>,
    owners: RwLock<HashMap<String, Weak<Owner>>>,
}

impl SessionTable {
    pub fn new(idle_secs: i64) -> SessionTable {
        SessionTable {
            idle_secs,
            live: RwLock::new(HashMap::new()),
            owners: RwLock::new(HashMap::new()),
        }
    }

    /// The user's shared principal: the existing one (kept current by `update_principal`), or
    /// `principal` for a user without live sessions.
    fn owner(&self, principal: Principal) -> Arc<Owner> {
        let Ok(mut owners) = self.owners.write() else {
            return Arc::new(Owner {
                user_id: principal.user_id.clone(),
                principal: ArcSwap::from_pointee(principal),
            });
        };
        if let Some(owner) = owners.get(&principal.user_id).and_then(Weak::upgrade) {
            return owner;
        }
        let owner = Arc::new(Owner {
            user_id: principal.user_id.clone(),
            principal: ArcSwap::from_pointee(principal),
        });
        owners.insert(owner.user_id.clone(), Arc::downgrade(&owner));
        owner
    }

    /// Put a session into the table; returns the principal it now answers with (the user's
    /// current one if the user has other live sessions).
    pub fn insert(&self, s: NewSession<'_>) -> Arc<Principal> {
        let owner = self.owner(s.principal);
        let principal = owner.principal.load_full();
        let live = Live {
            owner,
            expires_at: s.expires_at,
            last_seen: AtomicI64::new(s.last_seen),
            dirty: AtomicBool::new(false),
        };
        if let Ok(mut map) = self.live.write() {
            map.insert(s.id.to_string(), live);
        }
        principal
    }

    /// Replace `user_id`'s principal with `fresh` if it is still `seen` (a login that read the
    /// user before a concurrent profile change never overwrites that change).
    pub fn refresh_principal(&self, seen: &Arc<Principal>, fresh: Principal) {
        if **seen == fresh {
            return;
        }
        if let Some(owner) = self.find_owner(&fresh.user_id) {
            owner.principal.compare_and_swap(seen, Arc::new(fresh));
        }
    }

    /// The user's profile changed: every live session answers with `principal` from now on.
    pub fn update_principal(&self, principal: Principal) {
        if let Some(owner) = self.find_owner(&principal.user_id) {
            owner.principal.store(Arc::new(principal));
        }
    }

    fn find_owner(&self, user_id: &str) -> Option<Arc<Owner>> {
        self.owners
            .read()
            .ok()?
            .get(user_id)
            .and_then(Weak::upgrade)
    }

    pub fn remove(&self, ids: &[String]) {
        if let Ok(mut map) = self.live.write() {
            for id in ids {
                map.remove(id);
            }
        }
    }

    /// Is session `id` of `user_id` usable at `now`? If so, record the activity and return
    /// whose it is.
    pub fn check_and_touch(
        &self,
        id: &str,
        user_id: &str,
        now: i64,
    ) -> Result<Arc<Principal>, Dead> {
        let map = self.live.read().map_err(|_| Dead::Ended)?;
        let s = map.get(id).ok_or(Dead::Ended)?;
        if s.owner.user_id != user_id {
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
        Ok(s.owner.principal.load_full())
    }

    /// Last activity of a user's most recent session still alive at `now`, if any.
    pub fn last_seen_of(&self, user_id: &str, now: i64) -> Option<i64> {
        let map = self.live.read().ok()?;
        map.values()
            .filter(|s| s.owner.user_id == user_id && s.expires_at > now)
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
        let left = {
            let Ok(mut map) = self.live.write() else {
                return 0;
            };
            let idle = self.idle_secs;
            map.retain(|_, s| {
                s.expires_at > now && now - s.last_seen.load(Ordering::Relaxed) < idle
            });
            map.len()
        };
        if let Ok(mut owners) = self.owners.write() {
            owners.retain(|_, o| o.strong_count() > 0);
        }
        left
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

    fn principal(user: &str, role: &str) -> Principal {
        Principal {
            user_id: user.into(),
            email: format!("{user}@example.com"),
            nickname: user.into(),
            role: role.into(),
        }
    }

    fn session<'a>(id: &'a str, user: &str, now: i64) -> NewSession<'a> {
        NewSession {
            id,
            expires_at: now + 1800,
            last_seen: now,
            principal: principal(user, "user"),
        }
    }

    #[test]
    fn idle_expiry_and_activity() {
        let t = SessionTable::new(600);
        t.insert(session("s", "u", 1000));
        assert!(t.check_and_touch("s", "u", 1500).is_ok());
        assert!(
            t.check_and_touch("s", "u", 2000).is_ok(),
            "activity at 1500 extended idle"
        );
        assert_eq!(t.check_and_touch("s", "u", 2600), Err(Dead::Idle));
        assert_eq!(t.check_and_touch("s", "other", 2000), Err(Dead::Ended));
        assert_eq!(t.check_and_touch("x", "u", 2000), Err(Dead::Ended));
    }

    #[test]
    fn absolute_expiry_holds_despite_activity() {
        let t = SessionTable::new(600);
        t.insert(session("s", "u", 1000));
        for now in (1100..2800).step_by(100) {
            assert!(t.check_and_touch("s", "u", now).is_ok());
        }
        assert_eq!(t.check_and_touch("s", "u", 2800), Err(Dead::Expired));
    }

    #[test]
    fn dirty_sessions_are_reported_once() {
        let t = SessionTable::new(600);
        t.insert(session("s", "u", 1000));
        t.check_and_touch("s", "u", 1010).unwrap();
        assert_eq!(t.take_dirty(), vec![("s".to_string(), 1010)]);
        assert!(t.take_dirty().is_empty());
        t.remove(&["s".to_string()]);
        assert_eq!(t.check_and_touch("s", "u", 1020), Err(Dead::Ended));
    }

    #[test]
    fn every_session_of_a_user_answers_with_the_current_principal() {
        let t = SessionTable::new(600);
        t.insert(session("s1", "u", 1000));
        t.insert(NewSession {
            principal: principal("u", "admin"),
            ..session("s2", "u", 1000)
        });
        // The second login did not overwrite what the first established.
        assert_eq!(t.check_and_touch("s2", "u", 1001).unwrap().role, "user");
        let mut renamed = principal("u", "user");
        renamed.email = "new@example.com".into();
        t.update_principal(renamed.clone());
        for s in ["s1", "s2"] {
            assert_eq!(*t.check_and_touch(s, "u", 1002).unwrap(), renamed);
        }
    }

    #[test]
    fn a_stale_refresh_never_overwrites_a_newer_principal() {
        let t = SessionTable::new(600);
        let seen = t.insert(session("s", "u", 1000));
        let mut newer = principal("u", "user");
        newer.nickname = "newer".into();
        t.update_principal(newer.clone());
        let mut stale = principal("u", "user");
        stale.nickname = "stale".into();
        t.refresh_principal(&seen, stale);
        assert_eq!(*t.check_and_touch("s", "u", 1001).unwrap(), newer);
        // Without a concurrent change, the refresh lands.
        let seen = t.check_and_touch("s", "u", 1001).unwrap();
        let mut fresh = newer.clone();
        fresh.nickname = "fresh".into();
        t.refresh_principal(&seen, fresh.clone());
        assert_eq!(*t.check_and_touch("s", "u", 1002).unwrap(), fresh);
    }

    #[test]
    fn owners_of_dead_sessions_are_forgotten() {
        let t = SessionTable::new(600);
        t.insert(session("s", "u", 1000));
        t.remove(&["s".to_string()]);
        t.purge(1000);
        assert!(t.owners.read().unwrap().is_empty());
    }
}
