//! A bounded, sharded map from hashed keys to per-key state, for the limiters: an entry already
//! tracked is never displaced by new keys; a new key takes the place of the stalest entry that
//! can go without losing anything, and when none can, the caller decides what the new key gets.
//! Every operation on the request path does a bounded amount of work under one shard's lock.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

/// Most shards a map is split into (fewer when it may hold fewer keys).
const SHARDS: usize = 16;
/// How many of the stalest entries a new key may look at for one that can go.
const EVICTION_PROBES: usize = 8;

struct Slot<V> {
    value: V,
    /// Which insertion of this key the slot is (so an old queue entry of a key removed and
    /// inserted again is recognised as stale).
    seq: u64,
}

struct Shard<V> {
    map: HashMap<u64, Slot<V>>,
    /// Keys in the order they were inserted (or last passed over by eviction), oldest first;
    /// entries whose `seq` no longer matches the map are stale and skipped.
    order: VecDeque<(u64, u64)>,
    next_seq: u64,
}

impl<V> Shard<V> {
    fn insert(&mut self, key: u64, value: V) -> &mut V {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((key, seq));
        &mut self
            .map
            .entry(key)
            .insert_entry(Slot { value, seq })
            .into_mut()
            .value
    }

    /// Look at up to `EVICTION_PROBES` of the oldest entries and remove the first one that
    /// `evictable` allows; the others go to the back of the line. True if one was removed.
    fn evict_one(&mut self, evictable: &impl Fn(&V) -> bool) -> bool {
        let mut probes = 0;
        while probes < EVICTION_PROBES {
            let Some((key, seq)) = self.order.pop_front() else {
                return false;
            };
            let Some(slot) = self.map.get(&key).filter(|s| s.seq == seq) else {
                continue; // stale: the key was removed (or inserted again later)
            };
            probes += 1;
            if evictable(&slot.value) {
                self.map.remove(&key);
                return true;
            }
            self.order.push_back((key, seq));
        }
        false
    }

    /// Drop stale queue entries once they outnumber live ones (amortised over the removals
    /// that made them).
    fn compact(&mut self) {
        if self.order.len() > 2 * self.map.len() + 16 {
            let map = &self.map;
            self.order
                .retain(|(key, seq)| map.get(key).is_some_and(|s| s.seq == *seq));
        }
    }
}

/// What `BoundedMap::update` found for a key.
pub enum Entry<'a, V> {
    /// The key's own state (tracked before, or inserted now).
    Own(&'a mut V),
    /// The map is full of entries that cannot go: the key has no state of its own.
    Full,
}

pub struct BoundedMap<V> {
    shards: Box<[Mutex<Shard<V>>]>,
    per_shard: usize,
}

impl<V> BoundedMap<V> {
    /// A map holding at most `max_keys` keys (at least one per shard).
    pub fn new(max_keys: usize) -> BoundedMap<V> {
        let max_keys = max_keys.max(1);
        let shards = SHARDS.min(max_keys);
        BoundedMap {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                        order: VecDeque::new(),
                        next_seq: 0,
                    })
                })
                .collect(),
            per_shard: max_keys / shards,
        }
    }

    fn shard(&self, key: u64) -> MutexGuard<'_, Shard<V>> {
        // The high bits pick the shard; HashMap uses the low ones.
        let i = ((key >> 48) as usize) % self.shards.len();
        self.shards[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Run `f` on the state of `key`: its own if tracked; else a new one from `new` if there is
    /// room or one of the stalest entries is `evictable`; else `Entry::Full`.
    pub fn update<R>(
        &self,
        key: u64,
        evictable: impl Fn(&V) -> bool,
        new: impl FnOnce() -> V,
        f: impl FnOnce(Entry<'_, V>) -> R,
    ) -> R {
        let mut shard = self.shard(key);
        if shard.map.contains_key(&key) {
            let slot = shard.map.get_mut(&key).map(|s| &mut s.value);
            return f(slot.map_or(Entry::Full, Entry::Own));
        }
        if shard.map.len() >= self.per_shard && !shard.evict_one(&evictable) {
            return f(Entry::Full);
        }
        shard.compact();
        f(Entry::Own(shard.insert(key, new())))
    }

    /// Read the state of `key`, if tracked.
    pub fn get<R>(&self, key: u64, f: impl FnOnce(&V) -> R) -> Option<R> {
        self.shard(key).map.get(&key).map(|s| f(&s.value))
    }

    pub fn remove(&self, key: u64) {
        let mut shard = self.shard(key);
        shard.map.remove(&key);
        shard.compact();
    }

    /// Keep only the entries `keep` allows (the periodic clean-up, off the request path).
    pub fn retain(&self, keep: impl Fn(&V) -> bool) {
        for shard in self.shards.iter() {
            let mut shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            shard.map.retain(|_, s| keep(&s.value));
            shard.map.shrink_to_fit();
            shard.compact();
            shard.order.shrink_to_fit();
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .map
                    .len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.per_shard * self.shards.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(map: &BoundedMap<u32>, key: u64, evictable: impl Fn(&u32) -> bool) -> bool {
        map.update(
            key,
            evictable,
            || 0,
            |e| match e {
                Entry::Own(v) => {
                    *v += 1;
                    true
                }
                Entry::Full => false,
            },
        )
    }

    #[test]
    fn tracked_keys_keep_their_state_when_full() {
        let map = BoundedMap::new(64);
        let mut tracked = Vec::new();
        let mut key = 0u64;
        while map.len() < map.capacity() {
            key += 1 << 40;
            if touch(&map, key, |_| false) {
                tracked.push(key);
            }
        }
        // A flood of new keys gets nothing of its own and displaces nobody.
        for i in 0..10_000u64 {
            let _ = touch(&map, i.wrapping_mul(0x9E37_79B9_7F4A_7C15), |_| false);
        }
        for k in &tracked {
            assert!(touch(&map, *k, |_| false), "tracked key lost its state");
            assert_eq!(map.get(*k, |v| *v), Some(2));
        }
        assert!(map.len() <= 64);
    }

    #[test]
    fn new_keys_replace_entries_that_can_go_oldest_first() {
        let map = BoundedMap::new(1);
        assert!(touch(&map, 1, |_| false));
        assert!(!touch(&map, 2, |_| false), "nothing may go");
        assert!(touch(&map, 2, |_| true), "the stale entry made room");
        assert_eq!(map.get(1, |v| *v), None);
        assert_eq!(map.get(2, |v| *v), Some(1));
    }

    #[test]
    fn removals_do_not_grow_the_queue() {
        let map = BoundedMap::new(4);
        for i in 0..100_000u64 {
            touch(&map, i, |_| true);
            map.remove(i);
        }
        let queued: usize = map
            .shards
            .iter()
            .map(|s| s.lock().unwrap().order.len())
            .sum();
        assert!(queued < 100, "{queued}");
    }
}
