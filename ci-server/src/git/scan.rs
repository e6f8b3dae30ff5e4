//! The git side of a scan: read the branch values, compare them with the known
//! ones, walk only from the branches that moved, and put what is new parents
//! first.
//!
//! # Deciding what is new
//!
//! A commit is known when it is an ancestor of a *stop* ([`Stops`]: the known
//! tips and the known branch values). The walk goes from the moved branches,
//! newest commit first, and stops at stops. A commit met on the way that is not
//! a stop may still be known (a branch created at an old commit, a branch reset
//! to an older one): before deciding, the stops no older than that commit's time
//! minus [`CLOCK_SLOP`] are painted *known* down to that time. A commit's
//! children are never older than it unless clocks were wrong, so a commit still
//! unpainted then is new. The cost is the commits newer than the oldest new
//! commit, not the history: for a push on top of a branch, the old value of the
//! branch is a stop and the walk ends at once.
//!
//! A clock skew larger than [`CLOCK_SLOP`] (a child committed more than that
//! before its parent) can make a known commit look new: it is handed out again,
//! and the source drops it when it already has a run.
//!
//! Everything here blocks on the file system; [`GitSource`](super::GitSource)
//! runs it through `tokio::task::spawn_blocking`.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use gix::ObjectId;
use gix::hashtable::hash_map::Entry;
use tracing::warn;

use super::InitialPolicy;
use super::known::Known;
use super::stops::Stops;

/// Maps and sets keyed by commit id, hashed by the id's first bytes (ids are
/// hashes already).
type IdMap<V> = gix::hashtable::HashMap<ObjectId, V>;
type IdSet = gix::hashtable::HashSet<ObjectId>;

/// How far, in seconds of commit time, painting goes below a commit before it
/// is called new: the clock skew between a commit and its children that the
/// walk tolerates.
pub(crate) const CLOCK_SLOP: i64 = 300;

/// The object cache of the source's repository handle: a walk reads the new
/// commits, and handing them out reads them again to decode them. Each scan
/// starts with an empty one: the commits of earlier scans are not read again
/// (painting reads [`NodeCache`]), so a cache kept across scans would only fill
/// up to this size with commits of the past.
pub(crate) const OBJECT_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// A walk that reads more commits than this turns the object cache off for the
/// rest of the scan: a large push would only churn it, and copying every object
/// into it costs more than reading a batch's commits twice.
const OBJECT_CACHE_WALK_LIMIT: usize = 2_000;

/// How many commits [`NodeCache`] keeps at most.
const NODE_CACHE_LIMIT: usize = 50_000;

/// The commit times and parents of the commits the last scan met. Painting
/// goes over the newest known commits at every scan, mostly the ones the scan
/// before went over; with the cache it reads them from the repository once.
///
/// Only what the last scan met is kept (the first [`NODE_CACHE_LIMIT`] it met,
/// a walk meeting the newest first), so commits that painting has left behind
/// are dropped: a source that runs for months holds what one scan needs, not
/// every commit it has seen. A scan that meets no commit (no branch moved)
/// leaves the cache as it is.
#[derive(Debug, Default)]
pub(crate) struct NodeCache {
    /// What the last scan that met commits met.
    map: IdMap<(i64, Parents)>,
    /// What the scan in progress has met so far.
    next: IdMap<(i64, Parents)>,
}

impl NodeCache {
    fn get(&self, id: &ObjectId) -> Option<&(i64, Parents)> {
        self.map.get(id)
    }

    /// Records that the scan in progress met `id`.
    fn met(&mut self, id: ObjectId, time: i64, parents: &Parents) {
        if self.next.len() < NODE_CACHE_LIMIT {
            self.next.insert(id, (time, parents.clone()));
        }
    }

    /// Starts a scan: forgets what a scan that did not finish had met.
    fn begin(&mut self) {
        self.next = IdMap::default();
    }

    /// Ends a scan: what it met becomes the cache, unless it met nothing.
    fn end(&mut self) {
        if !self.next.is_empty() {
            self.map = std::mem::take(&mut self.next);
        }
    }

    /// How many commits the cache holds.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// The parents of a commit: most have one, kept inline.
#[derive(Clone, Debug)]
enum Parents {
    One(ObjectId),
    /// None (a root commit), or a merge's.
    Other(Box<[ObjectId]>),
}

impl Parents {
    fn new(mut ids: impl Iterator<Item = ObjectId>) -> Self {
        match (ids.next(), ids.next()) {
            (Some(a), None) => Self::One(a),
            (None, _) => Self::Other(Box::default()),
            (Some(a), Some(b)) => Self::Other([a, b].into_iter().chain(ids).collect()),
        }
    }

    fn as_slice(&self) -> &[ObjectId] {
        match self {
            Self::One(id) => std::slice::from_ref(id),
            Self::Other(ids) => ids,
        }
    }
}

/// A commit found by a scan, decoded for handing out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NewCommit {
    pub id: ObjectId,
    pub parents: Vec<ObjectId>,
    pub summary: String,
    pub author: String,
    pub time: i64,
}

/// A new commit waiting to be handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Pending {
    pub id: ObjectId,
    /// Its commit time (for the stops once it is handed out).
    pub time: i64,
    /// Index into [`ScanOutput::labels`]: the branches it was found through.
    pub label: u32,
}

/// What a scan starts from.
#[derive(Clone, Debug)]
pub(crate) struct ScanInput {
    /// The known tips and branch values.
    pub known: Arc<Known>,
    /// Where walks stop.
    pub stops: Arc<Stops>,
    /// Tips to walk from besides the moved branches (handed out before a restart
    /// and not recorded), with the branches they were found through.
    pub extra: Vec<(ObjectId, Vec<String>)>,
    /// `Some` on the very first scan of a repository (no saved state).
    pub first_start: Option<InitialPolicy>,
    /// Branches at a missing object, already warned about.
    pub broken: HashMap<String, ObjectId>,
    /// What the last scan read of the refs.
    pub refs_seen: RefsSeen,
    /// Commits met by earlier scans.
    pub cache: Arc<Mutex<NodeCache>>,
}

/// What a scan found.
#[derive(Debug, Default)]
pub(crate) struct ScanOutput {
    /// Branch values to change at once (`None`: the branch is gone): branches
    /// now at known commits or at objects that are not commits.
    pub refs_now: Vec<(String, Option<ObjectId>)>,
    /// Commit times of the values in `refs_now` that are commits.
    pub ref_times: HashMap<ObjectId, i64>,
    /// Branch values to set once the commit they point at is handed out.
    pub refs_later: HashMap<ObjectId, Vec<String>>,
    /// New commits, parents first.
    pub pending: Vec<Pending>,
    /// The branch lists of `pending`, sorted.
    pub labels: Vec<Vec<String>>,
    /// Stops whose commit time was not known, with their times.
    pub resolved: Vec<(ObjectId, i64)>,
    /// Stops whose objects are gone from the repository, or are no commits.
    pub dropped_stops: Vec<ObjectId>,
    /// First start only: commits deliberately not built, to be known as
    /// baseline, with their times.
    pub baseline: Vec<(ObjectId, i64)>,
    /// Branches at a missing object (warned about once).
    pub broken: HashMap<String, ObjectId>,
    /// What this scan read of the refs, for the next one.
    pub refs_seen: RefsSeen,
}

/// Reads the branch values, compares them with the known ones, and walks what
/// is new. Errors are the repository's (an unreadable object, a broken pack):
/// the caller reports them as transient.
pub(crate) fn scan(repo: &mut gix::Repository, input: ScanInput) -> Result<ScanOutput, gix::Error> {
    let mut out = ScanOutput::default();

    // Stops without a time (after a restart): look them up once.
    let unresolved = input.stops.unresolved();
    let mut local_stops;
    let stops: &Stops = if unresolved.is_empty() {
        &input.stops
    } else {
        local_stops = (*input.stops).clone();
        for id in unresolved {
            match commit_time(repo, id)? {
                Some(t) => {
                    local_stops.resolve(id, t);
                    out.resolved.push((id, t));
                }
                None => {
                    local_stops.forget(&id);
                    out.dropped_stops.push(id);
                }
            }
        }
        &local_stops
    };

    let (moved, refs_seen) = compare_branches(repo, &input, &mut out)?;
    out.refs_seen = refs_seen;
    let mut visible: Vec<(ObjectId, Vec<String>)> = moved.into_iter().collect();
    for (id, branches) in input.extra {
        if visible.iter().any(|(v, _)| *v == id) {
            continue;
        }
        if repo.has_object(id) {
            visible.push((id, branches));
        } else {
            warn!(commit = %id, "a commit handed out before the restart is gone from the repository");
        }
    }

    let mut cache = input.cache.lock().unwrap_or_else(PoisonError::into_inner);
    cache.begin();
    let mut painter = Painter::new(repo, stops, &mut cache);
    match input.first_start {
        Some(InitialPolicy::None) => {
            for (id, branches) in visible {
                out.baseline.push((id, painter.node(id)?.time));
                for b in branches {
                    out.refs_now.push((b, Some(id)));
                }
            }
        }
        Some(InitialPolicy::Tips) => {
            let tips: HashSet<ObjectId> = visible.iter().map(|(id, _)| *id).collect();
            let mut baseline = BTreeSet::new();
            for (id, _) in &visible {
                for &p in painter.node(*id)?.parents.clone().as_slice() {
                    if !tips.contains(&p) {
                        baseline.insert(p);
                    }
                }
            }
            for p in baseline {
                out.baseline.push((p, painter.node(p)?.time));
            }
            let new: Vec<ObjectId> = visible.iter().map(|(id, _)| *id).collect();
            finish(&painter, new, visible, false, &mut out);
        }
        Some(InitialPolicy::All) | None => {
            let tips: Vec<ObjectId> = visible.iter().map(|(id, _)| *id).collect();
            let new = painter.walk(&tips)?;
            finish(&painter, new, visible, true, &mut out);
        }
    }
    out.dropped_stops.append(&mut painter.missing);
    drop(painter);
    cache.end();
    Ok(out)
}

/// What the last scan read of the branch refs, so that the next one reads only
/// the loose refs while `packed-refs` is unchanged: with many branches, most are
/// packed, and parsing them all at every scan would cost in proportion to the
/// number of branches.
#[derive(Clone, Default)]
pub(crate) struct RefsSeen {
    /// The `packed-refs` snapshot that was read (`None`: there was none).
    packed: Option<gix::refs::file::packed::SharedBufferSnapshot>,
    /// The short names of the loose branch refs.
    loose: HashSet<String>,
    /// Whether the fields describe a completed scan.
    valid: bool,
}

impl std::fmt::Debug for RefsSeen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefsSeen")
            .field("packed", &self.packed.is_some())
            .field("loose", &self.loose.len())
            .field("valid", &self.valid)
            .finish()
    }
}

/// Sorts the branches as read by one scan into unchanged, moved, and changed
/// without a walk.
struct Comparison<'a> {
    repo: &'a gix::Repository,
    input: &'a ScanInput,
    moved: HashMap<ObjectId, Vec<String>>,
    /// Branches read at their known value.
    unchanged: usize,
    /// Every branch read (full reads only).
    names: Vec<String>,
}

impl Comparison<'_> {
    /// Compares branch `name` (short) at `id` with its known value.
    fn branch(
        &mut self,
        name: String,
        id: ObjectId,
        out: &mut ScanOutput,
    ) -> Result<(), gix::Error> {
        let known = &self.input.known;
        let old = known.ref_value(&name);
        if old == Some(id) {
            self.unchanged += 1;
            return Ok(());
        }
        if old.is_none() && known.legacy_seen.contains(&id) {
            // Saved by format version 1: the tip was seen, under some name.
            if let Some(t) = commit_time(self.repo, id)? {
                out.ref_times.insert(id, t);
            }
            out.refs_now.push((name, Some(id)));
            return Ok(());
        }
        let kind = match self.repo.try_find_header(id)? {
            Some(header) => header.kind(),
            None => {
                if self.input.broken.get(&name) != Some(&id) {
                    warn!(branch = %name, object = %id, "branch points at a missing object; skipped");
                }
                out.broken.insert(name, id);
                return Ok(());
            }
        };
        if kind != gix::object::Kind::Commit {
            warn!(branch = %name, object = %id, %kind, "branch does not point at a commit; skipped");
            // Remembered, so it is reported once, not at every scan.
            out.refs_now.push((name, Some(id)));
            return Ok(());
        }
        self.moved.entry(id).or_default().push(name);
        Ok(())
    }

    /// Compares the branch whose ref is `r`.
    fn reference(
        &mut self,
        r: gix::refs::Reference,
        out: &mut ScanOutput,
    ) -> Result<(), gix::Error> {
        let name = r.name.as_ref().shorten().to_string();
        let id = match r.target {
            gix::refs::Target::Object(id) => id,
            gix::refs::Target::Symbolic(_) => {
                let peeled = self
                    .repo
                    .find_reference(r.name.as_ref())
                    .and_then(|mut r| r.peel_to_id().map(|id| id.detach()));
                match peeled {
                    Ok(id) => id,
                    Err(e) => {
                        warn!(branch = %name, error = %e, "branch does not point at an object; skipped");
                        return Ok(());
                    }
                }
            }
        };
        self.names.push(name.clone());
        self.branch(name, id, out)
    }
}

/// Compares the branches with the known values. Returns the moved branches at
/// commits, grouped by commit, and what was read; fills in the branch changes
/// that need no walk.
///
/// While `packed-refs` is the snapshot the last scan read, only the loose
/// branch refs are read (and the packed values of loose refs that are gone):
/// the packed ones were compared then, and what they changed was handed out or
/// queued.
fn compare_branches(
    repo: &gix::Repository,
    input: &ScanInput,
    out: &mut ScanOutput,
) -> Result<(HashMap<ObjectId, Vec<String>>, RefsSeen), gix::Error> {
    let packed = repo.refs.cached_packed_buffer()?;
    let seen = &input.refs_seen;
    let same_packed = seen.valid
        && match (&packed, &seen.packed) {
            (Some(now), Some(then)) => Arc::ptr_eq(now, then),
            (None, None) => true,
            _ => false,
        };
    let mut cmp = Comparison {
        repo,
        input,
        moved: HashMap::new(),
        unchanged: 0,
        names: Vec::new(),
    };
    let heads: &gix::path::RelativePath = "refs/heads/"
        .try_into()
        .map_err(|e| gix::Error::from_error(e))?;
    let mut loose = HashSet::new();
    for r in repo
        .refs
        .loose_iter_prefixed(heads)
        .map_err(gix::Error::from_error)?
    {
        match r {
            Ok(r) => {
                loose.insert(r.name.as_ref().shorten().to_string());
                if same_packed {
                    cmp.reference(r, out)?;
                }
            }
            Err(e) => warn!(error = %e, "unreadable branch ref; skipped"),
        }
    }
    if same_packed {
        // Loose refs gone since: the branch is back at its packed value, or gone.
        let mut recheck: Vec<&String> = seen.loose.difference(&loose).collect();
        // Branches at missing objects: the object may have arrived.
        recheck.extend(input.broken.keys().filter(|b| !loose.contains(*b)));
        for name in recheck {
            let full = format!("refs/heads/{name}");
            let value = match &packed {
                Some(buffer) => buffer.try_find(full.as_str())?.map(|r| r.target()),
                None => None,
            };
            match value {
                Some(id) => cmp.branch(name.clone(), id, out)?,
                None if input.known.ref_value(name).is_some() => {
                    out.refs_now.push((name.clone(), None));
                }
                None => {}
            }
        }
    } else {
        for r in repo.references()?.local_branches()? {
            match r {
                Ok(r) => cmp.reference(r.detach(), out)?,
                Err(e) => warn!(error = %e, "unreadable branch ref; skipped"),
            }
        }
        let known = &input.known;
        let moved_count: usize = cmp.moved.values().map(Vec::len).sum();
        if cmp.unchanged + moved_count < known.ref_count() {
            // Some known branches may be gone.
            let now: HashSet<&str> = cmp.names.iter().map(String::as_str).collect();
            for (name, _) in known.refs() {
                if !now.contains(name.as_str()) {
                    out.refs_now.push((name.clone(), None));
                }
            }
        }
    }
    let seen = RefsSeen {
        packed,
        loose,
        valid: true,
    };
    Ok((cmp.moved, seen))
}

/// Commit time of `id`; `None` when it is missing or not a commit.
fn commit_time(repo: &gix::Repository, id: ObjectId) -> Result<Option<i64>, gix::Error> {
    match repo.try_find_header(id)? {
        Some(h) if h.kind() == gix::object::Kind::Commit => {
            Ok(Some(repo.find_commit(id)?.time()?.seconds))
        }
        _ => Ok(None),
    }
}

/// Orders the new commits, attributes them to the branches they were reached
/// through, and sorts out which branch values change now and which later.
fn finish(
    painter: &Painter<'_>,
    new: Vec<ObjectId>,
    visible: Vec<(ObjectId, Vec<String>)>,
    through_parents: bool,
    out: &mut ScanOutput,
) {
    let is_new: IdSet = new.iter().copied().collect();
    for (id, branches) in &visible {
        if is_new.contains(id) {
            out.refs_later
                .entry(*id)
                .or_default()
                .extend(branches.iter().cloned());
        } else {
            if let Some(n) = painter.nodes.get(id) {
                out.ref_times.insert(*id, n.time);
            }
            for b in branches {
                out.refs_now.push((b.clone(), Some(*id)));
            }
        }
    }
    let order = parents_first(
        new.iter()
            .filter_map(|id| {
                painter
                    .nodes
                    .get(id)
                    .map(|n| (*id, n.time, n.parents.as_slice()))
            })
            .collect(),
    );
    let mut labels = Labels::default();
    let mut label_of: IdMap<u32> = IdMap::default();
    let new_tips: Vec<usize> = (0..visible.len())
        .filter(|&i| is_new.contains(&visible[i].0))
        .collect();
    // One tip (a push to one branch): every new commit was reached from it.
    let single = through_parents && new_tips.len() == 1;
    if single {
        labels.with(None, new_tips[0]);
    }
    for &tip_index in new_tips.iter().filter(|_| !single) {
        let tip = visible[tip_index].0;
        let mut stack = vec![tip];
        let mut seen = IdSet::default();
        while let Some(id) = stack.pop() {
            if !is_new.contains(&id) || !seen.insert(id) {
                continue;
            }
            let old = label_of.get(&id).copied();
            label_of.insert(id, labels.with(old, tip_index));
            if through_parents && let Some(n) = painter.nodes.get(&id) {
                stack.extend(n.parents.as_slice().iter().copied());
            }
        }
    }
    out.labels = labels
        .sets
        .iter()
        .map(|set| {
            let names: BTreeSet<&String> = set.iter().flat_map(|&i| &visible[i].1).collect();
            names.into_iter().cloned().collect()
        })
        .collect();
    out.pending = order
        .into_iter()
        .map(|(id, time)| Pending {
            id,
            time,
            label: label_of.get(&id).copied().unwrap_or(0),
        })
        .collect();
}

/// Interned sets of tip indices: each new commit carries one (a `u32`), not a
/// list of branch names.
#[derive(Default)]
struct Labels {
    sets: Vec<Vec<usize>>,
    index: HashMap<Vec<usize>, u32>,
    memo: HashMap<(Option<u32>, usize), u32>,
}

impl Labels {
    /// The set `old` (none: empty) with `tip` added.
    fn with(&mut self, old: Option<u32>, tip: usize) -> u32 {
        if let Some(&l) = self.memo.get(&(old, tip)) {
            return l;
        }
        let mut set = old
            .and_then(|l| self.sets.get(l as usize).cloned())
            .unwrap_or_default();
        if let Err(at) = set.binary_search(&tip) {
            set.insert(at, tip);
        }
        let l = match self.index.get(&set) {
            Some(&l) => l,
            None => {
                let l = u32::try_from(self.sets.len()).unwrap_or(u32::MAX);
                self.sets.push(set.clone());
                self.index.insert(set, l);
                l
            }
        };
        self.memo.insert((old, tip), l);
        l
    }
}

const VISIBLE: u8 = 1;
const HIDDEN: u8 = 2;

/// A commit met by a walk.
struct Node {
    time: i64,
    parents: Parents,
    flags: u8,
}

/// Walks from moved branches and paints known commits down from the stops.
struct Painter<'a> {
    repo: &'a mut gix::Repository,
    /// Commits read from the repository by this scan.
    loaded: usize,
    stops: &'a Stops,
    cache: &'a mut NodeCache,
    nodes: IdMap<Node>,
    /// Known commits whose parents are still to be painted, newest first.
    hidden: BinaryHeap<(i64, ObjectId)>,
    /// Stops with a commit time at or above this are painted.
    seeded_down_to: i64,
    /// Stops whose objects are gone.
    missing: Vec<ObjectId>,
}

impl<'a> Painter<'a> {
    fn new(repo: &'a mut gix::Repository, stops: &'a Stops, cache: &'a mut NodeCache) -> Self {
        Self {
            repo,
            loaded: 0,
            stops,
            cache,
            nodes: IdMap::default(),
            hidden: BinaryHeap::new(),
            seeded_down_to: i64::MAX,
            missing: Vec::new(),
        }
    }

    fn node(&mut self, id: ObjectId) -> Result<&mut Node, gix::Error> {
        match self.nodes.entry(id) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                let node = match self.cache.get(&id) {
                    Some((time, parents)) => Node {
                        time: *time,
                        parents: parents.clone(),
                        flags: 0,
                    },
                    None => {
                        let node = {
                            let commit = self.repo.find_commit(id)?;
                            Node {
                                time: commit.time()?.seconds,
                                parents: Parents::new(commit.parent_ids().map(|p| p.detach())),
                                flags: 0,
                            }
                        };
                        self.loaded += 1;
                        if self.loaded == OBJECT_CACHE_WALK_LIMIT {
                            self.repo.object_cache_size(None);
                        }
                        node
                    }
                };
                self.cache.met(id, node.time, &node.parents);
                Ok(e.insert(node))
            }
        }
    }

    fn flags(&self, id: &ObjectId) -> u8 {
        self.nodes.get(id).map_or(0, |n| n.flags)
    }

    /// Paints every commit reachable from a stop and at least as new as
    /// `threshold`.
    fn paint_down_to(&mut self, threshold: i64) -> Result<(), gix::Error> {
        if threshold < self.seeded_down_to {
            let mut seeds = self
                .stops
                .between(threshold, self.seeded_down_to)
                .peekable();
            let seeds: Vec<(i64, ObjectId)> = if seeds.peek().is_some() {
                seeds.collect()
            } else {
                Vec::new()
            };
            self.seeded_down_to = threshold;
            for (_, id) in seeds {
                if let Err(e) = self.node(id) {
                    if self.repo.has_object(id) {
                        return Err(e);
                    }
                    warn!(commit = %id, "a known commit is gone from the repository; forgetting it");
                    self.missing.push(id);
                    continue;
                }
                let node = self.node(id)?;
                if node.flags & HIDDEN == 0 {
                    node.flags |= HIDDEN;
                    let time = node.time;
                    self.hidden.push((time, id));
                }
            }
        }
        while let Some(&(time, id)) = self.hidden.peek() {
            if time < threshold {
                break;
            }
            self.hidden.pop();
            for k in 0..self.node(id)?.parents.as_slice().len() {
                let p = self.node(id)?.parents.as_slice()[k];
                let node = self.node(p)?;
                if node.flags & HIDDEN == 0 {
                    node.flags |= HIDDEN;
                    let time = node.time;
                    self.hidden.push((time, p));
                }
            }
        }
        Ok(())
    }

    /// The commits reachable from `tips` that are not known, newest first.
    fn walk(&mut self, tips: &[ObjectId]) -> Result<Vec<ObjectId>, gix::Error> {
        let mut queue = BinaryHeap::new();
        for &tip in tips {
            if self.stops.contains(&tip) {
                continue;
            }
            let node = self.node(tip)?;
            if node.flags & VISIBLE == 0 {
                node.flags |= VISIBLE;
                let time = node.time;
                queue.push((time, tip));
            }
        }
        let mut new = Vec::new();
        while let Some((time, id)) = queue.pop() {
            if self.flags(&id) & HIDDEN != 0 {
                continue;
            }
            self.paint_down_to(time.saturating_sub(CLOCK_SLOP))?;
            if self.flags(&id) & HIDDEN != 0 {
                continue;
            }
            new.push(id);
            for k in 0..self.node(id)?.parents.as_slice().len() {
                let p = self.node(id)?.parents.as_slice()[k];
                if self.stops.contains(&p) {
                    continue;
                }
                let node = self.node(p)?;
                if node.flags & (VISIBLE | HIDDEN) == 0 {
                    node.flags |= VISIBLE;
                    let time = node.time;
                    queue.push((time, p));
                }
            }
        }
        Ok(new)
    }
}

/// Decodes `ids` for handing out.
pub(crate) fn decode_all(
    repo: &gix::Repository,
    ids: Vec<ObjectId>,
) -> Result<Vec<NewCommit>, gix::Error> {
    ids.into_iter().map(|id| decode(repo, id)).collect()
}

fn decode(repo: &gix::Repository, id: ObjectId) -> Result<NewCommit, gix::Error> {
    let commit = repo.find_commit(id)?;
    let summary = commit.message()?.summary().to_string();
    let author = commit.author()?.trim();
    Ok(NewCommit {
        id,
        parents: commit.parent_ids().map(|p| p.detach()).collect(),
        summary,
        author: format!("{} <{}>", author.name, author.email),
        time: commit.time()?.seconds,
    })
}

/// Orders commits `(id, time, parents)` so each comes after its parents in the
/// set; among those ready, the oldest (commit time, then id) first. Returns
/// `(id, time)`.
pub(crate) fn parents_first(commits: Vec<(ObjectId, i64, &[ObjectId])>) -> Vec<(ObjectId, i64)> {
    const NONE: usize = usize::MAX;
    let index: IdMap<usize> = commits.iter().enumerate().map(|(i, c)| (c.0, i)).collect();
    let mut waiting_on = vec![0usize; commits.len()];
    // Children as linked lists of edges: `first_child[p]`, then `edges[e].1`.
    let mut first_child = vec![NONE; commits.len()];
    let mut edges: Vec<(usize, usize)> = Vec::with_capacity(commits.len());
    for (i, c) in commits.iter().enumerate() {
        for (k, p) in c.2.iter().enumerate() {
            if c.2[..k].contains(p) {
                continue;
            }
            if let Some(&pi) = index.get(p) {
                waiting_on[i] += 1;
                edges.push((i, first_child[pi]));
                first_child[pi] = edges.len() - 1;
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<(i64, ObjectId, usize)>> = commits
        .iter()
        .enumerate()
        .filter(|(i, _)| waiting_on[*i] == 0)
        .map(|(i, c)| Reverse((c.1, c.0, i)))
        .collect();
    let mut order = Vec::with_capacity(commits.len());
    while let Some(Reverse((time, id, i))) = ready.pop() {
        order.push((id, time));
        let mut e = first_child[i];
        while e != NONE {
            let (child, next) = edges[e];
            waiting_on[child] -= 1;
            if waiting_on[child] == 0 {
                let c = &commits[child];
                ready.push(Reverse((c.1, c.0, child)));
            }
            e = next;
        }
    }
    // A commit graph has no cycles, so every commit was placed.
    debug_assert_eq!(order.len(), commits.len());
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[n; 20])
    }

    fn ids(order: &[(ObjectId, i64)]) -> Vec<ObjectId> {
        order.iter().map(|(id, _)| *id).collect()
    }

    #[test]
    fn parents_come_first_even_when_their_clock_is_later() {
        // 3 merges 1 and 2; 2's parent is 1; times are skewed against the graph.
        let (p3, p2, p1) = ([id(1), id(2)], [id(1)], [id(9)]);
        let out = parents_first(vec![(id(3), 5, &p3), (id(2), 1, &p2), (id(1), 10, &p1)]);
        assert_eq!(ids(&out), vec![id(1), id(2), id(3)]);
    }

    #[test]
    fn independent_commits_go_oldest_first() {
        let out = parents_first(vec![(id(1), 30, &[]), (id(2), 10, &[]), (id(3), 20, &[])]);
        assert_eq!(ids(&out), vec![id(2), id(3), id(1)]);
    }

    #[test]
    fn labels_are_shared_sets_of_tips() {
        let mut labels = Labels::default();
        let a = labels.with(None, 0);
        let ab = labels.with(Some(a), 1);
        let b = labels.with(None, 1);
        let ba = labels.with(Some(b), 0);
        assert_eq!(ab, ba);
        assert_ne!(a, b);
        assert_eq!(labels.sets.len(), 3);
    }
}
