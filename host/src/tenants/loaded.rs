//! The bounded cache of open deployments: which tenants keep their handler
//! versions loaded, and which close when there is no room for another.
//!
//! Owns: the open entries, how often each was used of late, that count
//! for tenants closed recently, and the hits and loads since the start that
//! `GET /admin/tenants` reports. Must not: open or load a deployment (the
//! caller does, and hands it in), or drop one it closes (they are handed
//! back, so the caller frees their modules after it releases its lock).
//!
//! Bounds: at most `max` entries open, holding at most `max_code` bytes of
//! compiled code (each module once, however many entries hold it). An entry
//! that anything besides the cache holds (a call, an admin change, the version
//! check) is in use and never closed; while such entries fill it, the cache
//! holds more than its bounds until a later opening finds them idle.
//!
//! Which closes first: an idle entry not used again since it was opened,
//! then the one used least often of late; of equals, the most recently
//! opened. Uses are counted up to 15, and every count is halved once per 16
//! uses per open entry (all tenants' uses together), so a count says how often
//! of late, not ever; an entry whose count has fallen to 0 counts as not used
//! again. A closed tenant's count is kept, and halved with the others, among
//! the recently closed (at most four per open entry), so one that comes back
//! soon starts where it left off, and one used often outlasts those used once
//! until its next use finds it open. Against plain least-recently-used, this
//! keeps a tenant in steady use loaded through a burst of events to many
//! tenants used once (least-recently-used closed the busy one first), and
//! when more tenants than fit take turns, a stable part of them stays loaded
//! (least-recently-used closed each one just before its next turn, so every
//! use was a load). A tenant that falls silent loses its count within a few
//! halvings and gives way.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use serde::Serialize;

use crate::deploy::Deployment;

/// The highest use count: a count says "often", not how often exactly, so
/// that a few halvings bring any tenant back to the start.
const MAX_COUNT: u8 = 15;
/// Every count is halved after this many uses per open entry, all tenants' together.
const HALVING_USES_PER_ENTRY: u64 = 16;
/// Closed tenants whose count is kept, per open entry.
const CLOSED_KEPT_PER_ENTRY: usize = 4;

/// What the cache needs to know of what it holds.
pub trait Cached: Clone {
    /// Whether anything besides the cache holds it now.
    fn in_use(&self) -> bool;
    /// Each module it holds: an identity (equal for a shared module) and its code's size in bytes.
    fn code(&self) -> Vec<(usize, usize)>;
}

impl Cached for Arc<Deployment> {
    fn in_use(&self) -> bool {
        Arc::strong_count(self) > 1
    }

    fn code(&self) -> Vec<(usize, usize)> {
        self.loaded_modules().iter().map(|m| (Arc::as_ptr(m) as usize, m.code_bytes)).collect()
    }
}

/// What `GET /admin/tenants` reports about the open deployments.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct LoadedStats {
    /// Tenants with their handler versions loaded, and the most that stay so.
    pub open: usize,
    pub max: usize,
    /// Compiled code those versions hold (each module once), and the most kept.
    pub code_bytes: usize,
    pub max_code_bytes: usize,
    /// Tenants closed to make room since the start.
    pub evicted: u64,
    /// Since the start: uses that found their tenant loaded, and loads (a
    /// tenant's first use, or its first after it was closed). `hits / (hits +
    /// loads)` is the cache's hit rate; loads well past the tenants in use
    /// mean the bounds are too small for them.
    pub hits: u64,
    pub loads: u64,
}

/// Slug → open entry, with the counts that decide which closes first.
pub struct Open<T> {
    entries: HashMap<String, Entry<T>>,
    /// Slug → use count of a tenant closed to make room, recently, and the
    /// `halvings` then (its count is halved as many times as `halvings` has
    /// grown since).
    closed: HashMap<String, (u8, u64)>,
    /// Uses so far, all entries together: the clock of halving and of [`Entry::opened`],
    /// and, less the loads, the hits reported.
    uses: AtomicU64,
    /// The `uses` at which the counts are halved next.
    next_halving: AtomicU64,
    /// How many times the counts were halved.
    halvings: AtomicU64,
    max: usize,
    max_code: usize,
    /// Entries closed to make room since the start.
    evicted: u64,
    /// Entries opened since the start (every other use, of [`Open::uses`], found its entry open).
    loads: u64,
}

struct Entry<T> {
    value: T,
    /// Uses of late, at most [`MAX_COUNT`].
    count: AtomicU8,
    /// Whether it was used again since its opening (found open).
    hit: AtomicBool,
    /// The `uses` tick of its opening.
    opened: u64,
}

impl<T: Cached> Open<T> {
    pub fn new(max: usize, max_code: usize) -> Open<T> {
        Open {
            entries: HashMap::new(),
            closed: HashMap::new(),
            uses: AtomicU64::new(0),
            next_halving: AtomicU64::new(0),
            halvings: AtomicU64::new(0),
            max,
            max_code,
            evicted: 0,
            loads: 0,
        }
    }

    /// The tenant's open entry, counted as a use.
    pub fn get(&self, slug: &str) -> Option<T> {
        let entry = self.entries.get(slug)?;
        self.tick();
        let _ = entry.count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| (c < MAX_COUNT).then_some(c + 1));
        if !entry.hit.load(Ordering::Relaxed) {
            entry.hit.store(true, Ordering::Relaxed);
        }
        Some(entry.value.clone())
    }

    pub fn contains(&self, slug: &str) -> bool {
        self.entries.contains_key(slug)
    }

    /// Every open entry (not counted as a use).
    pub fn values(&self) -> Vec<T> {
        self.entries.values().map(|e| e.value.clone()).collect()
    }

    pub fn stats(&self) -> LoadedStats {
        LoadedStats {
            open: self.entries.len(),
            max: self.max,
            code_bytes: self.held().bytes,
            max_code_bytes: self.max_code,
            evicted: self.evicted,
            hits: self.uses.load(Ordering::Relaxed).saturating_sub(self.loads),
            loads: self.loads,
        }
    }

    /// Whether the open entries are within both bounds.
    pub fn within_bounds(&self) -> bool {
        self.held().within(self.max, self.max_code)
    }

    /// Adds a tenant's newly opened entry, counted as a use (on top of its
    /// count from before it was last closed, if it was recently).
    pub fn insert(&mut self, slug: String, value: T) {
        let now = self.halvings.load(Ordering::Relaxed);
        let before = self.closed.remove(&slug).map_or(0, |(count, at)| aged(count, at, now));
        let count = before.saturating_add(1).min(MAX_COUNT);
        let opened = self.tick();
        self.loads += 1;
        self.entries.insert(slug, Entry { value, count: AtomicU8::new(count), hit: AtomicBool::new(false), opened });
    }

    /// Takes a tenant's entry out and forgets its count (the tenant is gone).
    pub fn remove(&mut self, slug: &str) -> Option<T> {
        self.closed.remove(slug);
        self.entries.remove(slug).map(|e| e.value)
    }

    /// Closes idle entries, in the order the module's comment gives, until
    /// the rest are within both bounds or none of them is idle; returns the
    /// closed ones, for the caller to drop once it has released its lock.
    /// Under an exclusive borrow nobody can take a new handle of one, so an
    /// entry idle now stays unused.
    pub fn close_past_bounds(&mut self) -> Vec<T> {
        let mut held = self.held();
        if held.within(self.max, self.max_code) {
            return Vec::new();
        }
        let mut idle: Vec<(bool, u8, Reverse<u64>, String)> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.value.in_use())
            .map(|(slug, e)| {
                let count = e.count.load(Ordering::Relaxed);
                (e.hit.load(Ordering::Relaxed) && count > 0, count, Reverse(e.opened), slug.clone())
            })
            .collect();
        idle.sort_unstable();
        let mut closed = Vec::new();
        for (_, count, _, slug) in idle {
            if held.within(self.max, self.max_code) {
                break;
            }
            if let Some(entry) = self.entries.remove(&slug) {
                held.release(&entry.value);
                if count > 0 {
                    self.closed.insert(slug, (count, self.halvings.load(Ordering::Relaxed)));
                }
                closed.push(entry.value);
            }
        }
        self.evicted += closed.len() as u64;
        // Past their own bound, the closed tenants used least go first.
        let keep = CLOSED_KEPT_PER_ENTRY * self.entries.len().max(1);
        let now = self.halvings.load(Ordering::Relaxed);
        while self.closed.len() > keep {
            let least = self.closed.values().map(|&(count, at)| aged(count, at, now)).min().unwrap_or(0);
            self.closed.retain(|_, &mut (count, at)| aged(count, at, now) > least);
        }
        closed
    }

    /// Counts a use on the clock, and halves every open entry's count when
    /// [`HALVING_USES_PER_ENTRY`] uses per open entry have passed since the
    /// last time. Returns the use's tick. Runs on the path of every call (under
    /// the map's read lock), so counts are halved on time however long no
    /// tenant has been opened; one of the callers that find it due does it.
    fn tick(&self) -> u64 {
        let tick = self.uses.fetch_add(1, Ordering::Relaxed);
        let due = self.next_halving.load(Ordering::Relaxed);
        if tick >= due {
            let period = HALVING_USES_PER_ENTRY * self.entries.len().max(1) as u64;
            if self.next_halving.compare_exchange(due, tick + period, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                for entry in self.entries.values() {
                    let _ = entry.count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| Some(c >> 1));
                }
                self.halvings.fetch_add(1, Ordering::Relaxed);
            }
        }
        tick
    }

    fn held(&self) -> CodeHeld {
        CodeHeld::of(self.entries.values().map(|e| &e.value))
    }
}

/// A closed tenant's `count`, kept when [`Open::halvings`] was `at`, halved
/// as often as the open ones' counts were since (it is `now`).
fn aged(count: u8, at: u64, now: u64) -> u8 {
    count.checked_shr(u32::try_from(now.saturating_sub(at)).unwrap_or(u32::MAX)).unwrap_or(0)
}

/// The compiled code the open entries hold: each module once (by identity),
/// with how many entries hold it.
#[derive(Default)]
struct CodeHeld {
    open: usize,
    bytes: usize,
    holders: HashMap<usize, (usize, u32)>,
}

impl CodeHeld {
    fn of<'a, T: Cached + 'a>(values: impl Iterator<Item = &'a T>) -> CodeHeld {
        let mut held = CodeHeld::default();
        for value in values {
            held.open += 1;
            for (module, bytes) in value.code() {
                let entry = held.holders.entry(module).or_insert((bytes, 0));
                if entry.1 == 0 {
                    held.bytes += entry.0;
                }
                entry.1 += 1;
            }
        }
        held
    }

    /// Whether at most `max` entries are open, holding at most `max_code` bytes.
    fn within(&self, max: usize, max_code: usize) -> bool {
        self.open <= max && self.bytes <= max_code
    }

    /// Counts a closed entry out; what no open entry holds any more is freed.
    fn release<T: Cached>(&mut self, value: &T) {
        self.open -= 1;
        for (module, _) in value.code() {
            if let Some(entry) = self.holders.get_mut(&module) {
                entry.1 -= 1;
                if entry.1 == 0 {
                    self.bytes -= entry.0;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for a deployment: in use while a clone of it is held.
    #[derive(Clone)]
    struct Fake(Arc<(usize, usize)>);

    impl Cached for Fake {
        fn in_use(&self) -> bool {
            Arc::strong_count(&self.0) > 1
        }

        fn code(&self) -> Vec<(usize, usize)> {
            vec![*self.0]
        }
    }

    /// One use of `slug`, as `Tenants::deployment` makes it: a hit, or an
    /// opening (of a module of `bytes` bytes, shared by every tenant with the
    /// same `module`) that closes what is past the bounds while the new entry
    /// is still in use. The handle, and whether it was a hit.
    fn take(open: &mut Open<Fake>, slug: &str, module: usize, bytes: usize) -> (Fake, bool) {
        if let Some(found) = open.get(slug) {
            return (found, true);
        }
        let fresh = Fake(Arc::new((module, bytes)));
        open.insert(slug.to_string(), fresh.clone());
        drop(open.close_past_bounds());
        (fresh, false)
    }

    /// One use, released at once; whether it was a hit.
    fn use_one(open: &mut Open<Fake>, slug: &str, module: usize, bytes: usize) -> bool {
        take(open, slug, module, bytes).1
    }

    fn hits(open: &mut Open<Fake>, slugs: impl IntoIterator<Item = String>) -> usize {
        slugs.into_iter().enumerate().filter(|(i, slug)| use_one(open, slug, *i, 1)).count()
    }

    /// Uses `slugs` as the worker does: 64 tenants' deployments taken, and
    /// held together, for one transaction. How many were found open.
    fn hits_in_chunks(open: &mut Open<Fake>, slugs: &[usize]) -> usize {
        let mut hits = 0;
        for chunk in slugs.chunks(64) {
            let mut held = Vec::new();
            for &i in chunk {
                let (handle, hit) = take(open, &format!("t{i}"), i, 1);
                hits += usize::from(hit);
                held.push(handle);
            }
        }
        hits
    }

    #[test]
    fn tenants_taking_turns_beyond_the_bound_keep_a_stable_part_loaded() {
        let mut open = Open::new(320, usize::MAX);
        // Every tenant in turn, and every third one again 100 turns later.
        let mut round: Vec<usize> = (0..1000).collect();
        for i in (0..1000).step_by(3).rev() {
            round.insert((i + 101).min(round.len()), i);
        }
        let mut found = hits_in_chunks(&mut open, &round);
        assert!(found < 400, "the first round opens every tenant");
        for turn in 2..=10 {
            let hit = hits_in_chunks(&mut open, &round);
            // Least recently used closed each tenant just before its turn came
            // again: only the second visits 100 turns later found theirs open.
            assert!(hit >= 500, "round {turn}: {hit} of {} found open, with room for 320", round.len());
            assert!(open.stats().open <= 320);
            found += hit;
        }
        // The operator's figures are the same count.
        let stats = open.stats();
        assert_eq!((stats.hits, stats.loads), (found as u64, (10 * round.len() - found) as u64));
    }

    #[test]
    fn a_busy_tenant_stays_loaded_through_a_burst_of_tenants_used_once() {
        let mut open = Open::new(10, usize::MAX);
        for _ in 0..20 {
            for hot in 0..5 {
                use_one(&mut open, &format!("hot{hot}"), hot, 1);
            }
        }
        assert_eq!(hits(&mut open, (0..100).map(|i| format!("once{i}"))), 0);
        for hot in 0..5 {
            assert!(open.contains(&format!("hot{hot}")), "hot{hot} was closed by tenants used once");
        }
        assert_eq!(open.stats().open, 10);
    }

    #[test]
    fn a_tenant_that_falls_silent_gives_way() {
        let mut open = Open::new(4, usize::MAX);
        for _ in 0..50 {
            use_one(&mut open, "old", 0, 1);
        }
        // Four tenants now share the room with `old`, which nothing uses any more.
        let new = || (0..4).map(|i| format!("new{i}"));
        let mut rounds = 0;
        while hits(&mut open, new()) < 4 {
            rounds += 1;
            assert!(rounds < 100, "the four in use never all stayed loaded");
        }
        assert!(!open.contains("old"));
    }

    #[test]
    fn counts_age_while_nothing_is_opened() {
        let mut open = Open::new(3, usize::MAX);
        for slug in ["a", "b", "c"] {
            use_one(&mut open, slug, 0, 1);
        }
        // A long stretch in which everything fits: `a` falls silent, `b` and
        // `c` stay busy.
        for _ in 0..10_000 {
            use_one(&mut open, "b", 0, 1);
            use_one(&mut open, "c", 0, 1);
        }
        use_one(&mut open, "d", 0, 1);
        assert!(!open.contains("a"), "the silent tenant closes, not the busy one opened last");
        assert!(open.contains("b") && open.contains("c") && open.contains("d"));
    }

    #[test]
    fn entries_in_use_stay_open_past_the_bound_until_idle() {
        let mut open = Open::new(2, usize::MAX);
        let held: Vec<Fake> = (0..4)
            .map(|i| {
                let fake = Fake(Arc::new((i, 1)));
                open.insert(format!("t{i}"), fake.clone());
                fake
            })
            .collect();
        assert!(open.close_past_bounds().is_empty(), "all four are in use");
        assert_eq!(open.stats().open, 4);
        drop(held);
        assert_eq!(open.close_past_bounds().len(), 2);
        assert!(open.within_bounds());
        assert_eq!(open.stats().evicted, 2);
    }

    #[test]
    fn shared_code_counts_once_and_the_code_bound_holds() {
        let mut open = Open::new(100, 1000);
        // Three tenants on one 400-byte module, then two with 400 bytes of their own.
        for slug in ["a", "b", "c"] {
            use_one(&mut open, slug, 1, 400);
        }
        assert_eq!(open.stats().code_bytes, 400);
        use_one(&mut open, "d", 2, 400);
        assert_eq!(open.stats().code_bytes, 800);
        use_one(&mut open, "e", 3, 400);
        let stats = open.stats();
        assert!(stats.code_bytes <= 1000, "{stats:?}");
        assert_eq!(stats.evicted, 1);
        assert!(open.contains("e"), "the entry just opened is in use while the bound is restored");
    }

    #[test]
    fn a_removed_tenant_starts_from_nothing() {
        let mut open = Open::new(1, usize::MAX);
        for _ in 0..10 {
            use_one(&mut open, "a", 0, 1);
        }
        use_one(&mut open, "b", 1, 1);
        assert!(open.contains("b") && !open.contains("a"), "the entry in use stays, the idle one closes");
        assert_eq!(open.closed.get("a").map(|&(count, _)| count), Some(10), "the closed tenant's count is kept");
        open.remove("a");
        open.remove("b");
        assert!(open.closed.is_empty() && open.entries.is_empty());
    }
}
