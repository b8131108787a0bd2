//! What the reconciler knows about the cluster: per labelled run only what its claim needs
//! (the key, the run's name and uid, its creation time), grouped by key. Pure (no I/O), so
//! the rules — oldest holds, conflicts, which runs need a store write, what a run that left
//! before it was written still owes — are unit tests.
//!
//! Memory is the point of its shape: every run is one fixed-size [`Entry`] in a slab, found
//! through two hash tables of slot numbers (by namespace/name, by key) so no string is held
//! twice; namespaces and orchestrations (few, repeated) are interned; a delivery id or uid in
//! the canonical UUID form (the API server's uids, most providers' delivery ids) is 16 bytes.
//! A run costs a fixed few words plus its name, and the objects themselves are never kept
//! ([`crate::orchestration_run`] reads only these fields).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::{Mutex, MutexGuard};

use dedupe_store::{ClaimKey, ClaimScope, KeyRejection, ObservedRun};
use hashbrown::HashTable;
use tokio::sync::Notify;

use crate::orchestration_run::OrchestrationRun;

/// Runs that left the index before they were written, kept to be written: beyond this many
/// (a store down for long under heavy churn) the oldest are dropped and counted.
pub const GONE_MAX: usize = 100_000;

/// A delivery id or uid: 16 bytes when it is a canonical lower-case UUID (the common case),
/// else the text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum CompactId {
    Uuid([u8; 16]),
    Text(Box<str>),
}

impl CompactId {
    fn new(s: &str) -> Self {
        match uuid::Uuid::try_parse(s) {
            Ok(u) if u.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()) == s => {
                CompactId::Uuid(*u.as_bytes())
            }
            _ => CompactId::Text(s.into()),
        }
    }

    fn with_str<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        match self {
            CompactId::Uuid(bytes) => {
                let mut buffer = uuid::Uuid::encode_buffer();
                f(uuid::Uuid::from_bytes(*bytes)
                    .hyphenated()
                    .encode_lower(&mut buffer))
            }
            CompactId::Text(text) => f(text),
        }
    }

    fn to_text(&self) -> String {
        self.with_str(str::to_owned)
    }

    /// In the order of the text (for canonical lower-case UUIDs the bytes' order is the text's).
    fn cmp_text(&self, other: &Self) -> Ordering {
        match (self, other) {
            (CompactId::Uuid(a), CompactId::Uuid(b)) => a.cmp(b),
            _ => self.with_str(|a| other.with_str(|b| a.cmp(b))),
        }
    }
}

/// Reference-counted interned strings (namespaces, orchestrations); id 0 is "".
#[derive(Debug)]
struct Interner {
    ids: HashMap<Box<str>, u32>,
    strings: Vec<Box<str>>,
    counts: Vec<u32>,
    free: Vec<u32>,
}

const EMPTY: u32 = 0;

impl Interner {
    fn new() -> Self {
        Self {
            ids: HashMap::from([("".into(), EMPTY)]),
            strings: vec!["".into()],
            counts: vec![1],
            free: Vec::new(),
        }
    }

    fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    fn acquire(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return EMPTY;
        }
        if let Some(&id) = self.ids.get(s) {
            self.counts[id as usize] += 1;
            return id;
        }
        let id = match self.free.pop() {
            Some(id) => {
                self.strings[id as usize] = s.into();
                self.counts[id as usize] = 1;
                id
            }
            None => {
                self.strings.push(s.into());
                self.counts.push(1);
                u32::try_from(self.strings.len() - 1).unwrap_or(u32::MAX)
            }
        };
        self.ids.insert(s.into(), id);
        id
    }

    fn release(&mut self, id: u32) {
        if id == EMPTY {
            return;
        }
        let count = &mut self.counts[id as usize];
        *count = count.saturating_sub(1);
        if *count == 0 {
            let s = std::mem::take(&mut self.strings[id as usize]);
            self.ids.remove(&s);
            self.free.push(id);
        }
    }

    fn str(&self, id: u32) -> &str {
        self.strings.get(id as usize).map_or("", |s| s)
    }
}

/// One run. `delivery`/`orchestration` are the key's parts (the orchestration only under
/// scope `orchestration`); a `skipped` run (it cannot hold a claim) keeps only its identity,
/// so it is reported once, not at every status update or relist.
#[derive(Debug)]
struct Entry {
    delivery: CompactId,
    name: Box<str>,
    uid: CompactId,
    /// creationTimestamp, unix seconds; `i64::MIN` when absent.
    created: i64,
    namespace: u32,
    orchestration: u32,
    /// The list of its watch in which it was last seen (a relist drops the others).
    epoch: u32,
    watch: u16,
    /// Its key needs a store write.
    dirty: bool,
    skipped: bool,
}

/// The order in which the runs of one key hold it: oldest by creationTimestamp, then name,
/// then namespace (the `cluster` scope spans namespaces).
fn holder_order(interner: &Interner, a: &Entry, b: &Entry) -> Ordering {
    (a.created, &a.name, interner.str(a.namespace)).cmp(&(b.created, &b.name, interner.str(b.namespace)))
}

/// Several live runs on one key: they got in while the webhook was bypassed. Reported,
/// never touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub key: ClaimKey,
    /// `namespace/name`
    pub holder: String,
    pub others: Vec<String>,
}

/// A run that cannot hold a claim, to report once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub namespace: String,
    pub name: String,
    pub rejection: KeyRejection,
}

/// One watch's progress through its (re)lists.
#[derive(Debug, Clone, Default)]
struct WatchProgress {
    epoch: u32,
    listing: bool,
    synced: bool,
}

/// What one flush writes.
#[derive(Debug, Default)]
pub struct WriteBatch {
    pub rows: Vec<ObservedRun>,
    pub conflicts: Vec<Conflict>,
}

/// The watched runs.
#[derive(Debug)]
pub struct Index {
    scope: ClaimScope,
    hasher: RandomState,
    names: Interner,
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    by_run: HashTable<u32>,
    by_key: HashTable<u32>,
    /// Slots whose key needs writing (a slot may appear twice or be stale: its `dirty` flag
    /// decides); sorted by key, descending, when `dirty_sorted`.
    dirty: Vec<u32>,
    dirty_sorted: bool,
    dirty_count: usize,
    /// Runs that left (deleted, or missing from a relist) before their key was written:
    /// seen, so their claim is still confirmed (or back-filled).
    gone: Vec<Entry>,
    gone_dropped: u64,
    live: usize,
    /// Keys with more than one live run, and how many runs were last reported for each.
    conflicts: HashMap<ClaimKey, usize>,
    watches: Vec<WatchProgress>,
    /// A list completed whose runs are not all written yet.
    sync_pending: bool,
}

impl Index {
    /// An index fed by `watches` watches (one per namespace, or one for all).
    pub fn new(scope: ClaimScope, watches: usize) -> Self {
        Self {
            scope,
            hasher: RandomState::new(),
            names: Interner::new(),
            slots: Vec::new(),
            free: Vec::new(),
            by_run: HashTable::new(),
            by_key: HashTable::new(),
            dirty: Vec::new(),
            dirty_sorted: true,
            dirty_count: 0,
            gone: Vec::new(),
            gone_dropped: 0,
            live: 0,
            conflicts: HashMap::new(),
            watches: vec![WatchProgress::default(); watches.max(1)],
            sync_pending: false,
        }
    }

    /// Watch `w` starts a (re)list.
    pub fn init(&mut self, w: usize) {
        if let Some(watch) = self.watches.get_mut(w) {
            watch.epoch = watch.epoch.wrapping_add(1);
            watch.listing = true;
        }
    }

    /// Watch `w` finished its list: its runs not seen in it are gone. Returns how many.
    pub fn init_done(&mut self, w: usize) -> usize {
        let Some(watch) = self.watches.get_mut(w) else {
            return 0;
        };
        watch.listing = false;
        watch.synced = true;
        let epoch = watch.epoch;
        self.sync_pending = true;
        let gone: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, e)| {
                e.as_ref()
                    .filter(|e| usize::from(e.watch) == w && e.epoch != epoch)
                    .and_then(|_| u32::try_from(slot).ok())
            })
            .collect();
        for &slot in &gone {
            self.remove(slot);
        }
        gone.len()
    }

    /// Watch `w` shows `run` (listed, added or changed). A run already known under the same
    /// key changes nothing (status updates are most of the watch's traffic and need no
    /// store write). Returns the run when it cannot hold a claim and was not reported yet.
    pub fn apply(&mut self, w: usize, run: OrchestrationRun) -> Option<Skipped> {
        let existing = self.find_run(
            run.metadata.namespace.as_deref().unwrap_or_default(),
            run.metadata.name.as_deref().unwrap_or_default(),
        );
        let (entry, skipped) = match self.entry_for(w, run) {
            Ok(entry) => (entry, None),
            Err(skipped) => {
                let (entry, skipped) = *skipped;
                (entry, Some(skipped))
            }
        };
        if let Some(slot) = existing {
            let same = self.entry(slot).is_some_and(|e| {
                e.skipped == entry.skipped
                    && (e.skipped
                        || (e.delivery == entry.delivery
                            && e.uid == entry.uid
                            && e.created == entry.created
                            && e.orchestration == entry.orchestration))
            });
            if same {
                let epoch = entry.epoch;
                self.release_names(&entry);
                if let Some(e) = self.entry_mut(slot) {
                    e.epoch = epoch;
                    e.watch = watch_id(w);
                }
                // A relist writes every listed key again, which heals whatever a missed
                // event or a claim pruned under a live run left behind.
                if !entry.skipped && self.watches.get(w).is_some_and(|watch| watch.listing) {
                    self.mark_dirty(slot);
                }
                return None;
            }
            self.remove(slot);
        }
        let claimable = !entry.skipped;
        let slot = self.insert(entry);
        if claimable {
            self.mark_dirty(slot);
        }
        skipped
    }

    /// Watch `w` shows `run` deleted. Its claim stays (deleting a run does not free its
    /// delivery); a run whose key was not written yet still has it written ("seen"), and so
    /// does one the index never saw alive: a delete shows the run existed.
    pub fn delete(&mut self, w: usize, run: OrchestrationRun) {
        let name = run.metadata.name.as_deref().unwrap_or_default();
        let namespace = run.metadata.namespace.as_deref().unwrap_or_default();
        if let Some(slot) = self.find_run(namespace, name) {
            self.remove(slot);
            return;
        }
        match self.entry_for(w, run) {
            Ok(entry) => self.push_gone(entry),
            Err(skipped) => self.release_names(&skipped.0),
        }
    }

    /// The entry for `run` as watch `w` shows it now: claimable, or (with why) skipped,
    /// keeping only its identity. Holds references to its interned names.
    fn entry_for(&mut self, w: usize, run: OrchestrationRun) -> Result<Entry, Box<(Entry, Skipped)>> {
        let created = run.created().unwrap_or(i64::MIN);
        let view = run.into_view();
        let epoch = self.epoch(w);
        match view.checked_key(self.scope) {
            Ok(key) => Ok(Entry {
                delivery: CompactId::new(&key.delivery_id),
                name: view.name.as_str().into(),
                uid: CompactId::new(&view.uid),
                created,
                namespace: self.names.acquire(&view.namespace),
                orchestration: self.names.acquire(&key.orchestration),
                epoch,
                watch: watch_id(w),
                dirty: false,
                skipped: false,
            }),
            Err(rejection) => Err(Box::new((
                Entry {
                    delivery: CompactId::Text("".into()),
                    name: view.name.as_str().into(),
                    uid: CompactId::Text("".into()),
                    created,
                    namespace: self.names.acquire(&view.namespace),
                    orchestration: EMPTY,
                    epoch,
                    watch: watch_id(w),
                    dirty: false,
                    skipped: true,
                },
                Skipped {
                    namespace: view.namespace,
                    name: view.name,
                    rejection,
                },
            ))),
        }
    }

    /// Runs now in the index (skipped ones included).
    pub fn runs(&self) -> usize {
        self.live
    }

    /// Keys with more than one live run now.
    pub fn conflicts(&self) -> usize {
        self.conflicts.len()
    }

    /// Runs whose key is waiting to be written, the gone ones included.
    pub fn unwritten(&self) -> usize {
        self.dirty_count + self.gone.len()
    }

    /// Gone runs dropped because [`GONE_MAX`] was reached, since the last call.
    pub fn take_gone_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.gone_dropped)
    }

    /// True once after every watch has listed and everything listed is written: the moment
    /// the reconciler is in sync with the API server.
    pub fn take_sync(&mut self) -> bool {
        let done =
            self.sync_pending && self.watches.iter().all(|w| w.synced && !w.listing) && self.unwritten() == 0;
        if done {
            self.sync_pending = false;
        }
        done
    }

    /// Takes up to about `max_rows` rows to write: gone runs first (their observation is not
    /// in the index any more), then the keys whose runs changed, in primary-key order (a
    /// (re)list is written in the same order every time, so a restart resumes where it
    /// stopped). Every live run of a key is a row (each may be named by a pending claim);
    /// the oldest holds. A key whose watch has not finished listing waits: an older run may
    /// still be coming. Also returns the conflicts that are new or grew, to report once.
    pub fn take_write_batch(&mut self, max_rows: usize) -> WriteBatch {
        let mut batch = WriteBatch::default();
        while batch.rows.len() < max_rows {
            let Some(entry) = self.gone.pop() else { break };
            let holds = self.key_members(&entry).is_empty();
            batch.rows.push(self.row(&entry, holds));
            self.release_names(&entry);
        }
        if !self.dirty_sorted {
            let (slots, names, scope) = (&self.slots, &self.names, self.scope);
            self.dirty
                .sort_unstable_by(|&a, &b| match (slot_entry(slots, b), slot_entry(slots, a)) {
                    (Some(b), Some(a)) => key_order(names, scope, b, a),
                    (b, a) => b.is_some().cmp(&a.is_some()),
                });
            self.dirty.dedup();
            self.dirty_sorted = true;
        }
        let mut deferred = Vec::new();
        while batch.rows.len() < max_rows {
            let Some(slot) = self.dirty.pop() else { break };
            let Some(entry) = self.entry(slot).filter(|e| e.dirty) else {
                continue;
            };
            if !self.ready(entry) {
                deferred.push(slot);
                continue;
            }
            let mut members = self.key_members(entry);
            members.sort_by(|&a, &b| match (self.entry(a), self.entry(b)) {
                (Some(a), Some(b)) => holder_order(&self.names, a, b),
                _ => Ordering::Equal,
            });
            for (i, &m) in members.iter().enumerate() {
                if let Some(e) = self.slots.get_mut(m as usize).and_then(Option::as_mut) {
                    if e.dirty {
                        e.dirty = false;
                        self.dirty_count -= 1;
                    }
                }
                if let Some(e) = self.entry(m) {
                    batch.rows.push(self.row(e, i == 0));
                }
            }
            if let Some(conflict) = self.conflict_of(&members) {
                batch.conflicts.push(conflict);
            }
        }
        if !deferred.is_empty() {
            deferred.reverse();
            self.dirty.extend(deferred);
            self.dirty_sorted = false;
        }
        batch
    }

    /// Puts rows back after a failed store write, to be written again: a run still in the
    /// index is marked again, one that left meanwhile joins the gone runs.
    pub fn requeue(&mut self, rows: &[ObservedRun]) {
        for row in rows {
            match self.find_run(&row.namespace, &row.name) {
                Some(slot) if self.entry(slot).is_some_and(|e| !e.skipped) => self.mark_dirty(slot),
                _ => {
                    let entry = Entry {
                        delivery: CompactId::new(&row.key.delivery_id),
                        name: row.name.as_str().into(),
                        uid: CompactId::new(&row.uid),
                        created: i64::MIN,
                        namespace: self.names.acquire(&row.namespace),
                        orchestration: self.names.acquire(&row.key.orchestration),
                        epoch: 0,
                        watch: 0,
                        dirty: false,
                        skipped: false,
                    };
                    self.push_gone(entry);
                }
            }
        }
    }

    fn epoch(&self, w: usize) -> u32 {
        self.watches.get(w).map_or(0, |watch| watch.epoch)
    }

    /// A key can be written once every run that can carry it has been listed. Keys of the
    /// `orchestration` and `namespace` scopes live in one namespace, so its watch is
    /// enough (a namespace whose watch cannot list — RBAC missing there — does not hold
    /// the others back); a `cluster` key can span namespaces and waits for every watch.
    fn ready(&self, entry: &Entry) -> bool {
        let done = |w: &WatchProgress| w.synced && !w.listing;
        if self.scope == ClaimScope::Cluster {
            return self.watches.iter().all(done);
        }
        self.watches.get(usize::from(entry.watch)).is_some_and(done)
    }

    fn entry(&self, slot: u32) -> Option<&Entry> {
        slot_entry(&self.slots, slot)
    }

    fn entry_mut(&mut self, slot: u32) -> Option<&mut Entry> {
        self.slots.get_mut(slot as usize).and_then(Option::as_mut)
    }

    fn mark_dirty(&mut self, slot: u32) {
        if let Some(e) = self.entry_mut(slot) {
            if !e.dirty {
                e.dirty = true;
                self.dirty_count += 1;
                self.dirty.push(slot);
                self.dirty_sorted = false;
            }
        }
    }

    fn run_hash(&self, namespace: u32, name: &str) -> u64 {
        let mut h = self.hasher.build_hasher();
        namespace.hash(&mut h);
        name.hash(&mut h);
        h.finish()
    }

    fn key_hash(&self, e: &Entry) -> u64 {
        let mut h = self.hasher.build_hasher();
        e.delivery.hash(&mut h);
        key_namespace(self.scope, e).hash(&mut h);
        e.orchestration.hash(&mut h);
        h.finish()
    }

    fn find_run(&self, namespace: &str, name: &str) -> Option<u32> {
        let ns = self.names.get(namespace)?;
        let hash = self.run_hash(ns, name);
        self.by_run
            .find(hash, |&s| {
                self.entry(s)
                    .is_some_and(|e| e.namespace == ns && *e.name == *name)
            })
            .copied()
    }

    /// The live runs carrying `entry`'s key (`entry` itself included when it is live).
    fn key_members(&self, entry: &Entry) -> Vec<u32> {
        let hash = self.key_hash(entry);
        self.by_key
            .iter_hash(hash)
            .copied()
            .filter(|&s| self.entry(s).is_some_and(|e| same_key(self.scope, e, entry)))
            .collect()
    }

    fn insert(&mut self, entry: Entry) -> u32 {
        let run_hash = self.run_hash(entry.namespace, &entry.name);
        let key_hash = (!entry.skipped).then(|| self.key_hash(&entry));
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(entry);
                slot
            }
            None => {
                self.slots.push(Some(entry));
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let Self {
            slots,
            hasher,
            scope,
            by_run,
            by_key,
            ..
        } = self;
        by_run.insert_unique(run_hash, slot, |&s| {
            slot_entry(slots, s).map_or(0, |e| {
                let mut h = hasher.build_hasher();
                e.namespace.hash(&mut h);
                e.name.hash(&mut h);
                h.finish()
            })
        });
        if let Some(key_hash) = key_hash {
            by_key.insert_unique(key_hash, slot, |&s| {
                slot_entry(slots, s).map_or(0, |e| {
                    let mut h = hasher.build_hasher();
                    e.delivery.hash(&mut h);
                    key_namespace(*scope, e).hash(&mut h);
                    e.orchestration.hash(&mut h);
                    h.finish()
                })
            });
        }
        self.live += 1;
        slot
    }

    /// Takes a run out of the index; if its key was not written since it was seen, it joins
    /// the gone runs. Its key's other runs are written again (the conflict may be over).
    fn remove(&mut self, slot: u32) {
        let Some(entry) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.free.push(slot);
        self.live -= 1;
        let run_hash = self.run_hash(entry.namespace, &entry.name);
        if let Ok(found) = self.by_run.find_entry(run_hash, |&s| s == slot) {
            found.remove();
        }
        if entry.skipped {
            self.names.release(entry.namespace);
            return;
        }
        let key_hash = self.key_hash(&entry);
        if let Ok(found) = self.by_key.find_entry(key_hash, |&s| s == slot) {
            found.remove();
        }
        let others = self.key_members(&entry);
        if others.is_empty() && !self.conflicts.is_empty() {
            self.conflicts.remove(&self.claim_key(&entry));
        }
        for other in others {
            self.mark_dirty(other);
        }
        if entry.dirty {
            self.dirty_count -= 1;
            self.push_gone(entry);
        } else {
            self.release_names(&entry);
        }
    }

    fn push_gone(&mut self, entry: Entry) {
        if self.gone.len() >= GONE_MAX {
            let dropped = self.gone.remove(0);
            self.release_names(&dropped);
            self.gone_dropped += 1;
        }
        self.gone.push(entry);
    }

    fn release_names(&mut self, entry: &Entry) {
        self.names.release(entry.namespace);
        self.names.release(entry.orchestration);
    }

    fn claim_key(&self, e: &Entry) -> ClaimKey {
        e.delivery.with_str(|delivery| {
            ClaimKey::new(
                self.scope,
                self.names.str(e.namespace),
                self.names.str(e.orchestration),
                delivery,
            )
        })
    }

    fn row(&self, e: &Entry, holds: bool) -> ObservedRun {
        ObservedRun {
            key: self.claim_key(e),
            namespace: self.names.str(e.namespace).to_owned(),
            name: e.name.to_string(),
            uid: e.uid.to_text(),
            holds,
        }
    }

    /// The conflict to report for a key's `members` (holder first), when there are several
    /// and more than were last reported; forgets the key when it has one run again.
    fn conflict_of(&mut self, members: &[u32]) -> Option<Conflict> {
        let holder = self.entry(*members.first()?)?;
        if members.len() < 2 && self.conflicts.is_empty() {
            return None;
        }
        let key = self.claim_key(holder);
        if members.len() < 2 {
            self.conflicts.remove(&key);
            return None;
        }
        let reported = self.conflicts.insert(key.clone(), members.len()).unwrap_or(0);
        if members.len() <= reported {
            return None;
        }
        let name = |s: &u32| {
            self.entry(*s)
                .map(|e| format!("{}/{}", self.names.str(e.namespace), e.name))
        };
        Some(Conflict {
            key,
            holder: name(&members[0])?,
            others: members[1..].iter().filter_map(name).collect(),
        })
    }
}

fn watch_id(w: usize) -> u16 {
    u16::try_from(w).unwrap_or(u16::MAX)
}

fn slot_entry(slots: &[Option<Entry>], slot: u32) -> Option<&Entry> {
    slots.get(slot as usize).and_then(Option::as_ref)
}

/// The namespace part of an entry's key: none under the `cluster` scope.
fn key_namespace(scope: ClaimScope, e: &Entry) -> u32 {
    if scope == ClaimScope::Cluster {
        EMPTY
    } else {
        e.namespace
    }
}

fn same_key(scope: ClaimScope, a: &Entry, b: &Entry) -> bool {
    !a.skipped
        && a.delivery == b.delivery
        && key_namespace(scope, a) == key_namespace(scope, b)
        && a.orchestration == b.orchestration
}

/// The claims table's primary-key order: delivery id, then namespace, then orchestration.
fn key_order(names: &Interner, scope: ClaimScope, a: &Entry, b: &Entry) -> Ordering {
    a.delivery.cmp_text(&b.delivery).then_with(|| {
        (names.str(key_namespace(scope, a)), names.str(a.orchestration))
            .cmp(&(names.str(key_namespace(scope, b)), names.str(b.orchestration)))
    })
}

/// The index and the flush task's doorbell, shared by the watch task and the flush task.
pub struct SharedIndex {
    index: Mutex<Index>,
    /// Rung by the watch task after each event; the flush task waits on it.
    pub wake: Notify,
}

impl SharedIndex {
    pub fn new(index: Index) -> Self {
        Self {
            index: Mutex::new(index),
            wake: Notify::new(),
        }
    }

    /// The index, also after a panic elsewhere left the lock poisoned (the index is
    /// consistent between calls, and a missed write is healed by the next relist).
    pub fn index(&self) -> MutexGuard<'_, Index> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests;
