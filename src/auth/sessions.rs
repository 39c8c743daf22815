//! The live-session table: which sessions exist, whose they are (the user's current role,
//! email and nickname), until when, and when they were last active. The gate asks it on every
//! request (memory only, no database access); activity is written behind to the store in
//! batches by the session flusher.

use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

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
    /// Logged out or revoked (recently, here), or never existed.
    Ended,
    /// Not in the table and not known to have ended: on a replica, possibly opened elsewhere
    /// moments ago.
    Unseen,
    Expired,
    Idle,
    /// The table may be missing revocations (its change feed was lost): no session can be
    /// vouched for until it is resynchronized.
    Unknown,
}

impl Dead {
    pub fn reason(self) -> &'static str {
        match self {
            Dead::Ended | Dead::Unseen => "session_ended",
            Dead::Expired => "session_expired",
            Dead::Idle => "session_idle",
            Dead::Unknown => "sessions_unknown",
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
    /// False while the table may be missing changes made elsewhere (replicas).
    trusted: AtomicBool,
    /// Other replicas open sessions too: a fresh token may reach this one before the news of
    /// its session does.
    shared: AtomicBool,
    /// Woken whenever sessions arrive.
    arrived: tokio::sync::Notify,
    /// Sessions removed lately, and when: such a session is known to have ended, not merely
    /// unseen (kept for `ENDED_MEMORY`).
    ended: Mutex<HashMap<String, Instant>>,
}

/// How long an ended session is remembered as ended (longer than a fresh token is waited for).
const ENDED_MEMORY: Duration = Duration::from_secs(30);
/// At most this many ended sessions are remembered; past that the oldest half is forgotten.
const ENDED_CAP: usize = 100_000;

impl SessionTable {
    pub fn new(idle_secs: i64) -> SessionTable {
        SessionTable {
            idle_secs,
            live: RwLock::new(HashMap::new()),
            owners: RwLock::new(HashMap::new()),
            trusted: AtomicBool::new(true),
            shared: AtomicBool::new(false),
            arrived: tokio::sync::Notify::new(),
            ended: Mutex::new(HashMap::new()),
        }
    }

    /// Remember that these sessions ended.
    fn remember_ended<'a>(&self, ids: impl Iterator<Item = &'a String>) {
        let now = Instant::now();
        if let Ok(mut ended) = self.ended.lock() {
            if ended.len() >= ENDED_CAP {
                let mut ages: Vec<Instant> = ended.values().copied().collect();
                ages.sort();
                let cut = ages[ages.len() / 2];
                ended.retain(|_, at| *at > cut);
            }
            for id in ids {
                ended.insert(id.clone(), now);
            }
        }
    }

    /// The table is kept by a store shared with other replicas (and starts distrusted until
    /// its first resynchronization).
    pub fn set_shared(&self) {
        self.shared.store(true, Ordering::SeqCst);
        self.distrust();
    }

    pub fn is_shared(&self) -> bool {
        self.shared.load(Ordering::Relaxed)
    }

    /// Wait (at most `limit`) until session `id` is in the table; true if it is.
    pub async fn wait_for(&self, id: &str, limit: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let arrived = self.arrived.notified();
            if self.live.read().is_ok_and(|m| m.contains_key(id)) {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return self.live.read().is_ok_and(|m| m.contains_key(id));
            }
        }
    }

    /// Stop vouching for any session (fail closed) until `trust`.
    pub fn distrust(&self) {
        self.trusted.store(false, Ordering::SeqCst);
    }

    pub fn trust(&self) {
        self.trusted.store(true, Ordering::SeqCst);
    }

    pub fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::SeqCst)
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

    /// Put a session into the table (a session already there keeps its state); returns the
    /// principal it answers with (the user's current one if the user has other live sessions).
    pub fn insert(&self, s: NewSession<'_>) -> Arc<Principal> {
        let owner = self.owner(s.principal);
        let principal = owner.principal.load_full();
        if let Ok(mut map) = self.live.write() {
            map.entry(s.id.to_string()).or_insert_with(|| Live {
                owner,
                expires_at: s.expires_at,
                last_seen: AtomicI64::new(s.last_seen),
                dirty: AtomicBool::new(false),
            });
        }
        self.arrived.notify_waiters();
        principal
    }

    /// Make the table hold exactly `sessions` (a resynchronization); sessions already here keep
    /// activity not yet written behind.
    pub fn replace_all<'a>(&self, sessions: impl Iterator<Item = NewSession<'a>>) {
        let mut fresh = HashMap::new();
        let mut new_owners: HashMap<String, Arc<Owner>> = HashMap::new();
        let Ok(mut map) = self.live.write() else {
            return;
        };
        for s in sessions {
            let owner = new_owners
                .entry(s.principal.user_id.clone())
                .or_insert_with(|| {
                    Arc::new(Owner {
                        user_id: s.principal.user_id.clone(),
                        principal: ArcSwap::from_pointee(s.principal.clone()),
                    })
                })
                .clone();
            let (last_seen, dirty) = match map.get(s.id) {
                Some(old) => (
                    old.last_seen.load(Ordering::Relaxed).max(s.last_seen),
                    old.dirty.load(Ordering::Relaxed),
                ),
                None => (s.last_seen, false),
            };
            fresh.insert(
                s.id.to_string(),
                Live {
                    owner,
                    expires_at: s.expires_at,
                    last_seen: AtomicI64::new(last_seen),
                    dirty: AtomicBool::new(dirty),
                },
            );
        }
        let gone: Vec<String> = map
            .keys()
            .filter(|id| !fresh.contains_key(*id))
            .cloned()
            .collect();
        *map = fresh;
        drop(map);
        self.remember_ended(gone.iter());
        if let Ok(mut owners) = self.owners.write() {
            *owners = new_owners
                .iter()
                .map(|(id, o)| (id.clone(), Arc::downgrade(o)))
                .collect();
        }
        self.arrived.notify_waiters();
    }

    /// End every session of `user_id` but `keep`.
    pub fn revoke_user(&self, user_id: &str, keep: Option<&str>) {
        let mut ended = Vec::new();
        if let Ok(mut map) = self.live.write() {
            map.retain(|id, s| {
                let stays = s.owner.user_id != user_id || Some(id.as_str()) == keep;
                if !stays {
                    ended.push(id.clone());
                }
                stays
            });
        }
        self.remember_ended(ended.iter());
    }

    /// Activity seen elsewhere (other replicas): the newest wins.
    pub fn merge_activity(&self, seen: &[(String, i64)]) {
        if let Ok(map) = self.live.read() {
            for (id, at) in seen {
                if let Some(s) = map.get(id) {
                    s.last_seen.fetch_max(*at, Ordering::Relaxed);
                }
            }
        }
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
        self.remember_ended(ids.iter());
    }

    /// Is session `id` of `user_id` usable at `now`? If so, record the activity and return
    /// whose it is.
    pub fn check_and_touch(
        &self,
        id: &str,
        user_id: &str,
        now: i64,
    ) -> Result<Arc<Principal>, Dead> {
        if !self.trusted.load(Ordering::Relaxed) {
            return Err(Dead::Unknown);
        }
        let map = self.live.read().map_err(|_| Dead::Ended)?;
        let Some(s) = map.get(id) else {
            let ended = self.ended.lock().is_ok_and(|e| e.contains_key(id));
            return Err(if ended { Dead::Ended } else { Dead::Unseen });
        };
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
        if let Ok(mut ended) = self.ended.lock() {
            ended.retain(|_, at| at.elapsed() < ENDED_MEMORY);
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
        assert_eq!(t.check_and_touch("x", "u", 2000), Err(Dead::Unseen));
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
    fn a_distrusted_table_vouches_for_nothing_until_resynchronized() {
        let t = SessionTable::new(600);
        t.insert(session("s1", "u", 1000));
        t.insert(session("s2", "u", 1000));
        t.check_and_touch("s1", "u", 1100).unwrap();
        t.distrust();
        assert_eq!(t.check_and_touch("s1", "u", 1101), Err(Dead::Unknown));
        // The database has s1 (seen earlier elsewhere) and s3; s2 ended meanwhile.
        t.replace_all(
            [
                NewSession {
                    last_seen: 1050,
                    ..session("s1", "u", 1000)
                },
                session("s3", "v", 1000),
            ]
            .into_iter(),
        );
        t.trust();
        assert!(t.check_and_touch("s3", "v", 1102).is_ok());
        assert_eq!(t.check_and_touch("s2", "u", 1102), Err(Dead::Ended));
        // The local activity of s1 (1100) survived the resync and is still to be written.
        let mut dirty = t.take_dirty();
        dirty.sort();
        assert_eq!(
            dirty,
            vec![("s1".to_string(), 1100), ("s3".to_string(), 1102)]
        );
    }

    #[test]
    fn revocations_and_activity_from_elsewhere() {
        let t = SessionTable::new(600);
        t.insert(session("a", "u", 1000));
        t.insert(session("b", "u", 1000));
        t.insert(session("c", "v", 1000));
        t.revoke_user("u", Some("b"));
        assert_eq!(t.check_and_touch("a", "u", 1001), Err(Dead::Ended));
        assert!(t.check_and_touch("b", "u", 1001).is_ok());
        assert!(t.check_and_touch("c", "v", 1001).is_ok());
        // Used on another replica until 1500: not idle here at 1700 (idle is 600).
        t.merge_activity(&[("c".to_string(), 1500)]);
        assert!(t.check_and_touch("c", "v", 1700).is_ok());
        assert_eq!(t.check_and_touch("b", "u", 1700), Err(Dead::Idle));
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
