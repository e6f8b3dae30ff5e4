//! What a [`GitSource`](super::GitSource) already knows, and how it is kept in the
//! store across restarts.
//!
//! Two things are known:
//!
//! - The *known tips*: commits every ancestor of which was either handed out or
//!   deliberately left out (the *baseline* of the
//!   [`InitialPolicy`](super::InitialPolicy)). The known commits are exactly the
//!   ancestors of the known tips. When new commits are built on a known tip, the
//!   old tip is *pruned*; a prune waits until every tip of the batch that
//!   supersedes it has a run in the store, since until then a crash could lose
//!   that batch and the old tip is what stops the walk after a restart.
//! - The *branch values*: for each branch, the commit it pointed at when the
//!   source last handed out everything reachable from it. A scan compares the
//!   branches with these values and walks only from the ones that moved.
//!
//! After a restart only tips that are *confirmed* (baseline, or with a run in the
//! store) hide their history; tips handed out but never recorded are walked
//! again. The saved branch values save a walk from every unchanged branch.
//!
//! # How it is saved
//!
//! The state is spread over a few keys of the store so that a scan rewrites only
//! what it changed: 256 shards of known tips (by the first byte of the commit
//! id, key `git-source/tips/XX`), 256 shards of branch values (by a hash of the
//! branch name, key `git-source/refs/XX`), and the root `git-source`, which holds
//! the format version and the pending prunes. Empty shards are not stored. A
//! change is written tips first, then branch values, then the root, so a crash
//! between two writes leaves a state that loses nothing: a tip is saved before
//! any branch value that relies on it, and a prune is forgotten or applied twice
//! at worst, which only keeps a tip longer.
//!
//! The root of format version 1 held everything in one value, with the ids of
//! the branch tips (not their names); it is read, and the first scan writes the
//! whole state in version 2.

use std::collections::{BTreeMap, BTreeSet};

use ci_engine::{RunStore, StoreError};
use gix::ObjectId;
use serde::{Deserialize, Serialize};

/// The store key of the root of the source's state.
pub(crate) const STATE_KEY: &str = "git-source";

/// The version of the saved state's format.
const STATE_VERSION: u32 = 2;

/// The version that kept the whole state in [`STATE_KEY`].
const LEGACY_VERSION: u32 = 1;

/// Shards of tips and of branch values.
const SHARDS: usize = 256;

/// One known tip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KnownTip {
    /// The branches through which it was found (for a resumed tip whose branch is gone).
    pub branches: Vec<String>,
    /// Left out on purpose by the initial policy: never handed out, always hidden.
    pub baseline: bool,
    /// Baseline, or known to have a run in the store. Not saved: asked of the
    /// store again after a restart.
    pub confirmed: bool,
}

/// Known tips to remove once every tip in `after` has a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PendingPrune {
    /// The tips of the batch that superseded `remove`.
    pub after: Vec<ObjectId>,
    /// Known tips that are ancestors of tips in `after`.
    pub remove: Vec<ObjectId>,
}

type TipShard = BTreeMap<ObjectId, KnownTip>;
type RefShard = BTreeMap<String, ObjectId>;

/// The known tips, the branch values and the prunes waiting for confirmation.
#[derive(Clone, Debug)]
pub(crate) struct Known {
    tips: Vec<TipShard>,
    refs: Vec<RefShard>,
    tip_count: usize,
    ref_count: usize,
    /// Prunes waiting for their batch to be recorded.
    pub prunes: Vec<PendingPrune>,
    /// Tips not (yet) confirmed, for [`confirm`](super::GitSource) to ask about.
    unconfirmed: BTreeSet<ObjectId>,
    /// Loaded from format version 1: the ids of the branch tips of the last scan,
    /// whose names were not saved. A branch without a value that points at one
    /// of these is unchanged. Used by the first scan only.
    pub legacy_seen: BTreeSet<ObjectId>,
    /// Loaded from format version 1: the next save writes every shard.
    pub rewrite_all: bool,
}

impl Default for Known {
    fn default() -> Self {
        Self {
            tips: vec![TipShard::new(); SHARDS],
            refs: vec![RefShard::new(); SHARDS],
            tip_count: 0,
            ref_count: 0,
            prunes: Vec::new(),
            unconfirmed: BTreeSet::new(),
            legacy_seen: BTreeSet::new(),
            rewrite_all: false,
        }
    }
}

/// Why the saved state could not be loaded.
#[derive(Debug)]
pub(crate) enum LoadError {
    /// The store failed.
    Store(StoreError),
    /// The value under `key` is unreadable.
    Bad {
        /// The store key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn tip_shard(id: &ObjectId) -> usize {
    usize::from(id.as_bytes()[0])
}

/// FNV-1a of the branch name: stable across builds and platforms.
fn ref_shard(name: &str) -> usize {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h as usize) % SHARDS
}

fn tips_key(shard: usize) -> String {
    format!("{STATE_KEY}/tips/{shard:02x}")
}

fn refs_key(shard: usize) -> String {
    format!("{STATE_KEY}/refs/{shard:02x}")
}

impl Known {
    /// The known tip `id`, if it is one.
    pub fn tip(&self, id: &ObjectId) -> Option<&KnownTip> {
        self.tips[tip_shard(id)].get(id)
    }

    /// Every known tip.
    pub fn tips(&self) -> impl Iterator<Item = (&ObjectId, &KnownTip)> {
        self.tips.iter().flatten()
    }

    /// How many known tips there are.
    pub fn tip_count(&self) -> usize {
        self.tip_count
    }

    /// The tips not known to have a run (and not baseline).
    pub fn unconfirmed(&self) -> impl Iterator<Item = &ObjectId> {
        self.unconfirmed.iter()
    }

    /// Records that tip `id` has a run (in memory only).
    pub fn confirm(&mut self, id: &ObjectId) {
        if let Some(tip) = self.tips[tip_shard(id)].get_mut(id) {
            tip.confirmed = true;
        }
        self.unconfirmed.remove(id);
    }

    /// The value of branch `name` (a full ref name), if known.
    pub fn ref_value(&self, name: &str) -> Option<ObjectId> {
        self.refs[ref_shard(name)].get(name).copied()
    }

    /// Every known branch value.
    pub fn refs(&self) -> impl Iterator<Item = (&String, &ObjectId)> {
        self.refs.iter().flatten()
    }

    /// How many branches have a known value.
    pub fn ref_count(&self) -> usize {
        self.ref_count
    }

    /// Applies `edit` (after its [`writes`](Edit::writes) were saved).
    pub fn apply(&mut self, edit: Edit) {
        for (shard, tips) in edit.tips {
            for (id, tip) in &tips {
                if tip.confirmed {
                    self.unconfirmed.remove(id);
                } else {
                    self.unconfirmed.insert(*id);
                }
            }
            for id in self.tips[shard].keys() {
                if !tips.contains_key(id) {
                    self.unconfirmed.remove(id);
                }
            }
            self.tip_count = self.tip_count - self.tips[shard].len() + tips.len();
            self.tips[shard] = tips;
        }
        for (shard, refs) in edit.refs {
            self.ref_count = self.ref_count - self.refs[shard].len() + refs.len();
            self.refs[shard] = refs;
        }
        if let Some(prunes) = edit.prunes {
            self.prunes = prunes;
        }
        if edit.rewrite_all {
            self.rewrite_all = false;
            self.legacy_seen.clear();
        }
    }

    /// Loads the state saved in `store`; `None` when there is none (a repository
    /// never seen). Every tip comes back unconfirmed except the baseline.
    pub async fn load(store: &dyn RunStore) -> Result<Option<Self>, LoadError> {
        let Some(root) = store
            .load_state(STATE_KEY)
            .await
            .map_err(LoadError::Store)?
        else {
            return Ok(None);
        };
        let bad = |key: &str, reason: String| LoadError::Bad {
            key: key.to_owned(),
            reason,
        };
        let version: Versioned =
            serde_json::from_str(&root).map_err(|e| bad(STATE_KEY, e.to_string()))?;
        match version.version {
            LEGACY_VERSION => Self::from_v1(&root)
                .map(Some)
                .map_err(|reason| bad(STATE_KEY, reason)),
            STATE_VERSION => {
                let saved: SavedRoot =
                    serde_json::from_str(&root).map_err(|e| bad(STATE_KEY, e.to_string()))?;
                let mut known = Self {
                    prunes: parse_prunes(&saved.prunes).map_err(|r| bad(STATE_KEY, r))?,
                    ..Self::default()
                };
                for shard in 0..SHARDS {
                    let key = tips_key(shard);
                    if let Some(json) = store.load_state(&key).await.map_err(LoadError::Store)? {
                        let tips: Vec<SavedTip> =
                            serde_json::from_str(&json).map_err(|e| bad(&key, e.to_string()))?;
                        for t in tips {
                            let (id, tip) = t.parse().map_err(|r| bad(&key, r))?;
                            known.insert_loaded_tip(id, tip);
                        }
                    }
                    let key = refs_key(shard);
                    if let Some(json) = store.load_state(&key).await.map_err(LoadError::Store)? {
                        let refs: BTreeMap<String, String> =
                            serde_json::from_str(&json).map_err(|e| bad(&key, e.to_string()))?;
                        for (name, id) in refs {
                            let id = parse_id(&id).map_err(|r| bad(&key, r))?;
                            known.refs[ref_shard(&name)].insert(name, id);
                            known.ref_count += 1;
                        }
                    }
                }
                Ok(Some(known))
            }
            other => Err(bad(
                STATE_KEY,
                format!(
                    "format version {other} is not a supported version ({LEGACY_VERSION} or {STATE_VERSION})"
                ),
            )),
        }
    }

    fn insert_loaded_tip(&mut self, id: ObjectId, tip: KnownTip) {
        if !tip.confirmed {
            self.unconfirmed.insert(id);
        }
        if self.tips[tip_shard(&id)].insert(id, tip).is_none() {
            self.tip_count += 1;
        }
    }

    /// Parses the whole state as format version 1 saved it.
    fn from_v1(json: &str) -> Result<Self, String> {
        let saved: SavedV1 = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let mut known = Self {
            prunes: parse_prunes(&saved.prunes)?,
            legacy_seen: parse_ids(&saved.seen)?.into_iter().collect(),
            rewrite_all: true,
            ..Self::default()
        };
        for t in saved.tips {
            let (id, tip) = t.parse()?;
            known.insert_loaded_tip(id, tip);
        }
        Ok(known)
    }
}

/// Changes to a [`Known`], staged shard by shard: what to save, then to apply.
#[derive(Debug, Default)]
pub(crate) struct Edit {
    tips: BTreeMap<usize, TipShard>,
    refs: BTreeMap<usize, RefShard>,
    prunes: Option<Vec<PendingPrune>>,
    rewrite_all: bool,
}

impl Edit {
    /// An edit of `known`; from a state of format version 1, one that rewrites
    /// every shard.
    pub fn new(known: &Known) -> Self {
        Self {
            rewrite_all: known.rewrite_all,
            ..Self::default()
        }
    }

    fn tip_shard<'a>(&'a mut self, known: &Known, id: &ObjectId) -> &'a mut TipShard {
        let shard = tip_shard(id);
        self.tips
            .entry(shard)
            .or_insert_with(|| known.tips[shard].clone())
    }

    /// The tip `id` as this edit leaves it.
    pub fn tip<'a>(&'a self, known: &'a Known, id: &ObjectId) -> Option<&'a KnownTip> {
        match self.tips.get(&tip_shard(id)) {
            Some(shard) => shard.get(id),
            None => known.tip(id),
        }
    }

    /// Adds or replaces a known tip.
    pub fn insert_tip(&mut self, known: &Known, id: ObjectId, tip: KnownTip) {
        self.tip_shard(known, &id).insert(id, tip);
    }

    /// Removes a known tip; `true` if it was one.
    pub fn remove_tip(&mut self, known: &Known, id: &ObjectId) -> bool {
        if self.tip(known, id).is_none() {
            return false;
        }
        self.tip_shard(known, id).remove(id).is_some()
    }

    /// Sets (or, with `None`, forgets) the value of branch `name`.
    pub fn set_ref(&mut self, known: &Known, name: &str, value: Option<ObjectId>) {
        let shard = ref_shard(name);
        let refs = self
            .refs
            .entry(shard)
            .or_insert_with(|| known.refs[shard].clone());
        match value {
            Some(id) => {
                refs.insert(name.to_owned(), id);
            }
            None => {
                refs.remove(name);
            }
        }
    }

    /// The pending prunes, to change.
    pub fn prunes_mut<'a>(&'a mut self, known: &Known) -> &'a mut Vec<PendingPrune> {
        self.prunes.get_or_insert_with(|| known.prunes.clone())
    }

    /// Whether the edit changes nothing.
    pub fn is_empty(&self) -> bool {
        self.tips.is_empty() && self.refs.is_empty() && self.prunes.is_none() && !self.rewrite_all
    }

    /// The store writes that save this edit over `known`, in the order they must
    /// be made: tip shards, then branch-value shards, then the root. A shard
    /// left empty is written as an empty value only if it was stored before
    /// (it is then still read on load), or when the whole state is rewritten.
    pub fn writes(&self, known: &Known) -> Vec<(String, String)> {
        let mut writes = Vec::new();
        let tip_shards: Vec<usize> = if self.rewrite_all {
            (0..SHARDS).collect()
        } else {
            self.tips.keys().copied().collect()
        };
        for shard in tip_shards {
            let tips = self.tips.get(&shard).unwrap_or(&known.tips[shard]);
            if tips.is_empty() && known.tips[shard].is_empty() && !self.rewrite_all {
                continue;
            }
            let saved: Vec<SavedTip> = tips.iter().map(|(id, t)| SavedTip::new(id, t)).collect();
            writes.push((tips_key(shard), to_json(&saved)));
        }
        let ref_shards: Vec<usize> = if self.rewrite_all {
            (0..SHARDS).collect()
        } else {
            self.refs.keys().copied().collect()
        };
        for shard in ref_shards {
            let refs = self.refs.get(&shard).unwrap_or(&known.refs[shard]);
            if refs.is_empty() && known.refs[shard].is_empty() && !self.rewrite_all {
                continue;
            }
            let saved: BTreeMap<&str, String> = refs
                .iter()
                .map(|(name, id)| (name.as_str(), id.to_string()))
                .collect();
            writes.push((refs_key(shard), to_json(&saved)));
        }
        if self.prunes.is_some() || self.rewrite_all {
            let prunes = self.prunes.as_ref().unwrap_or(&known.prunes);
            let root = SavedRoot {
                version: STATE_VERSION,
                prunes: prunes
                    .iter()
                    .map(|p| SavedPrune {
                        after: hex_ids(&p.after),
                        remove: hex_ids(&p.remove),
                    })
                    .collect(),
            };
            writes.push((STATE_KEY.to_owned(), to_json(&root)));
        }
        writes
    }
}

/// Maps of strings, bools and lists of them always serialize.
fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "serializing the git source's state");
        String::new()
    })
}

#[derive(Deserialize)]
struct Versioned {
    version: u32,
}

#[derive(Serialize, Deserialize)]
struct SavedRoot {
    version: u32,
    #[serde(default)]
    prunes: Vec<SavedPrune>,
}

/// Format version 1: everything in the root.
#[derive(Deserialize)]
struct SavedV1 {
    tips: Vec<SavedTip>,
    #[serde(default)]
    prunes: Vec<SavedPrune>,
    #[serde(default)]
    seen: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct SavedTip {
    id: String,
    #[serde(default)]
    branches: Vec<String>,
    #[serde(default)]
    baseline: bool,
}

impl SavedTip {
    fn new(id: &ObjectId, tip: &KnownTip) -> Self {
        Self {
            id: id.to_string(),
            branches: tip.branches.clone(),
            baseline: tip.baseline,
        }
    }

    fn parse(self) -> Result<(ObjectId, KnownTip), String> {
        let id = parse_id(&self.id)?;
        Ok((
            id,
            KnownTip {
                branches: self.branches,
                baseline: self.baseline,
                confirmed: self.baseline,
            },
        ))
    }
}

#[derive(Serialize, Deserialize)]
struct SavedPrune {
    after: Vec<String>,
    remove: Vec<String>,
}

fn parse_id(s: &str) -> Result<ObjectId, String> {
    ObjectId::from_hex(s.as_bytes()).map_err(|e| format!("bad commit id {s:?}: {e}"))
}

fn parse_ids(ids: &[String]) -> Result<Vec<ObjectId>, String> {
    ids.iter().map(|s| parse_id(s)).collect()
}

fn parse_prunes(prunes: &[SavedPrune]) -> Result<Vec<PendingPrune>, String> {
    prunes
        .iter()
        .map(|p| {
            Ok(PendingPrune {
                after: parse_ids(&p.after)?,
                remove: parse_ids(&p.remove)?,
            })
        })
        .collect()
}

fn hex_ids(ids: &[ObjectId]) -> Vec<String> {
    ids.iter().map(ObjectId::to_string).collect()
}

#[cfg(test)]
mod tests {
    use ci_engine::MemoryStore;

    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[n; 20])
    }

    async fn save(store: &MemoryStore, writes: Vec<(String, String)>) {
        for (key, value) in writes {
            store.save_state(&key, &value).await.expect("memory store");
        }
    }

    #[tokio::test]
    async fn state_round_trips_with_only_the_baseline_confirmed() {
        let store = MemoryStore::new();
        let known = Known::default();
        let mut edit = Edit::new(&known);
        edit.insert_tip(
            &known,
            id(1),
            KnownTip {
                branches: vec!["refs/heads/main".into()],
                baseline: false,
                confirmed: true,
            },
        );
        edit.insert_tip(
            &known,
            id(2),
            KnownTip {
                branches: vec![],
                baseline: true,
                confirmed: true,
            },
        );
        edit.prunes_mut(&known).push(PendingPrune {
            after: vec![id(1)],
            remove: vec![id(2)],
        });
        edit.set_ref(&known, "refs/heads/main", Some(id(1)));
        save(&store, edit.writes(&known)).await;
        let back = Known::load(&store)
            .await
            .ok()
            .flatten()
            .expect("saved state loads");
        assert_eq!(back.prunes.len(), 1);
        assert_eq!(back.ref_value("refs/heads/main"), Some(id(1)));
        assert_eq!(back.tip_count(), 2);
        let main = back.tip(&id(1)).expect("tip 1");
        assert_eq!(main.branches, vec!["refs/heads/main".to_owned()]);
        assert!(!main.confirmed, "handed-out tips are re-checked");
        assert!(back.tip(&id(2)).is_some_and(|t| t.confirmed && t.baseline));
        assert_eq!(back.unconfirmed().collect::<Vec<_>>(), vec![&id(1)]);
    }

    #[tokio::test]
    async fn an_edit_writes_only_the_shards_it_changed_and_the_root_last() {
        let store = MemoryStore::new();
        let mut known = Known::default();
        let mut edit = Edit::new(&known);
        for n in 0..10 {
            edit.set_ref(&known, &format!("refs/heads/b{n}"), Some(id(n)));
        }
        edit.prunes_mut(&known);
        let writes = edit.writes(&known);
        assert_eq!(writes.last().map(|w| w.0.as_str()), Some(STATE_KEY));
        save(&store, writes).await;
        known.apply(edit);

        let mut edit = Edit::new(&known);
        edit.set_ref(&known, "refs/heads/b3", Some(id(42)));
        let writes = edit.writes(&known);
        assert_eq!(writes.len(), 1, "{writes:?}");
        assert_eq!(writes[0].0, refs_key(ref_shard("refs/heads/b3")));
        assert!(Edit::new(&known).writes(&known).is_empty());
    }

    #[tokio::test]
    async fn format_version_1_is_read_and_rewritten_whole() {
        let store = MemoryStore::new();
        let v1 = format!(
            r#"{{"version":1,"tips":[{{"id":"{}","branches":["main"],"baseline":false}},{{"id":"{}","branches":[],"baseline":true}}],"prunes":[{{"after":["{}"],"remove":["{}"]}}],"seen":["{}"]}}"#,
            id(1),
            id(2),
            id(1),
            id(2),
            id(1)
        );
        store
            .save_state(STATE_KEY, &v1)
            .await
            .expect("memory store");
        let known = Known::load(&store).await.ok().flatten().expect("v1 loads");
        assert_eq!(known.tip_count(), 2);
        assert_eq!(known.prunes.len(), 1);
        assert!(known.legacy_seen.contains(&id(1)));
        let writes = Edit::new(&known).writes(&known);
        assert_eq!(writes.len(), 2 * SHARDS + 1, "every shard, then the root");
        save(&store, writes).await;
        let back = Known::load(&store).await.ok().flatten().expect("v2 loads");
        assert_eq!(back.tip_count(), 2);
        assert_eq!(back.prunes, known.prunes);
        assert!(!back.rewrite_all && back.legacy_seen.is_empty());
    }

    #[tokio::test]
    async fn bad_state_is_rejected_with_a_reason() {
        async fn reason(root: &str) -> String {
            let store = MemoryStore::new();
            store
                .save_state(STATE_KEY, root)
                .await
                .expect("memory store");
            match Known::load(&store).await {
                Err(LoadError::Bad { reason, .. }) => reason,
                other => panic!("expected a bad state, got {other:?}"),
            }
        }
        assert!(!reason("not json").await.is_empty());
        assert!(reason(r#"{"version":99,"tips":[]}"#).await.contains("99"));
        assert!(
            reason(r#"{"version":1,"tips":[{"id":"xyz"}]}"#)
                .await
                .contains("xyz")
        );
    }
}
