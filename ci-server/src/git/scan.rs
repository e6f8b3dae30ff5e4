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
use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use gix::ObjectId;
use tracing::warn;

use super::InitialPolicy;
use super::known::Known;
use super::stops::Stops;

/// Object cache per scan: walks look each commit up more than once.
const OBJECT_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// How far, in seconds of commit time, painting goes below a commit before it
/// is called new: the clock skew between a commit and its children that the
/// walk tolerates.
pub(crate) const CLOCK_SLOP: i64 = 300;

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
}

/// Reads the branch values, compares them with the known ones, and walks what
/// is new. Errors are the repository's (an unreadable object, a broken pack):
/// the caller reports them as transient.
pub(crate) fn scan(
    repo: &gix::ThreadSafeRepository,
    input: ScanInput,
) -> Result<ScanOutput, gix::Error> {
    let mut repo = repo.to_thread_local();
    repo.object_cache_size_if_unset(OBJECT_CACHE_BYTES);
    let mut out = ScanOutput::default();

    // Stops without a time (after a restart): look them up once.
    let unresolved = input.stops.unresolved();
    let mut local_stops;
    let stops: &Stops = if unresolved.is_empty() {
        &input.stops
    } else {
        local_stops = (*input.stops).clone();
        for id in unresolved {
            match commit_time(&repo, id)? {
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

    let moved = compare_branches(&repo, &input, &mut out)?;
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

    let mut painter = Painter::new(&repo, stops);
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
                for p in painter.node(*id)?.parents.clone() {
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
    Ok(out)
}

/// Compares the branches with the known values. Returns the moved branches at
/// commits, grouped by commit; fills in the branch changes that need no walk.
fn compare_branches(
    repo: &gix::Repository,
    input: &ScanInput,
    out: &mut ScanOutput,
) -> Result<HashMap<ObjectId, Vec<String>>, gix::Error> {
    let known = &input.known;
    let mut moved: HashMap<ObjectId, Vec<String>> = HashMap::new();
    let mut unchanged = 0usize;
    let mut names = Vec::new();
    for r in repo.references()?.local_branches()? {
        let mut r = match r {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "unreadable branch ref; skipped");
                continue;
            }
        };
        let name = r.name().shorten().to_string();
        let id = match r.try_id() {
            Some(id) => id.detach(),
            None => match r.peel_to_id() {
                Ok(id) => id.detach(),
                Err(e) => {
                    warn!(branch = %name, error = %e, "branch does not point at an object; skipped");
                    continue;
                }
            },
        };
        let old = known.ref_value(&name);
        if old == Some(id) {
            unchanged += 1;
            names.push(name);
            continue;
        }
        if old.is_none() && known.legacy_seen.contains(&id) {
            // Saved by format version 1: the tip was seen, under some name.
            if let Some(t) = commit_time(repo, id)? {
                out.ref_times.insert(id, t);
            }
            out.refs_now.push((name.clone(), Some(id)));
            names.push(name);
            continue;
        }
        names.push(name.clone());
        let kind = match repo.try_find_header(id)? {
            Some(header) => header.kind(),
            None => {
                if input.broken.get(&name) != Some(&id) {
                    warn!(branch = %name, object = %id, "branch points at a missing object; skipped");
                }
                out.broken.insert(name, id);
                continue;
            }
        };
        if kind != gix::object::Kind::Commit {
            warn!(branch = %name, object = %id, %kind, "branch does not point at a commit; skipped");
            // Remembered, so it is reported once, not at every scan.
            out.refs_now.push((name, Some(id)));
            continue;
        }
        moved.entry(id).or_default().push(name);
    }
    if unchanged + moved.values().map(Vec::len).sum::<usize>() < known.ref_count() {
        // Some known branches are gone (or broken, or skipped).
        let now: HashSet<&str> = names.iter().map(String::as_str).collect();
        for (name, _) in known.refs() {
            if !now.contains(name.as_str()) {
                out.refs_now.push((name.clone(), None));
            }
        }
    }
    Ok(moved)
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
    let is_new: HashSet<ObjectId> = new.iter().copied().collect();
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
            .filter_map(|id| painter.nodes.get(id).map(|n| (*id, n.time, &n.parents[..])))
            .collect(),
    );
    let mut labels = Labels::default();
    let mut label_of: HashMap<ObjectId, u32> = HashMap::with_capacity(order.len());
    for (tip_index, (tip, _)) in visible.iter().enumerate() {
        if !is_new.contains(tip) {
            continue;
        }
        let mut stack = vec![*tip];
        let mut seen = HashSet::new();
        while let Some(id) = stack.pop() {
            if !is_new.contains(&id) || !seen.insert(id) {
                continue;
            }
            let old = label_of.get(&id).copied();
            label_of.insert(id, labels.with(old, tip_index));
            if through_parents && let Some(n) = painter.nodes.get(&id) {
                stack.extend(n.parents.iter().copied());
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
    parents: Vec<ObjectId>,
    flags: u8,
}

/// Walks from moved branches and paints known commits down from the stops.
struct Painter<'a> {
    repo: &'a gix::Repository,
    stops: &'a Stops,
    nodes: HashMap<ObjectId, Node>,
    /// Known commits whose parents are still to be painted, newest first.
    hidden: BinaryHeap<(i64, ObjectId)>,
    /// Stops with a commit time at or above this are painted.
    seeded_down_to: i64,
    /// Stops whose objects are gone.
    missing: Vec<ObjectId>,
}

impl<'a> Painter<'a> {
    fn new(repo: &'a gix::Repository, stops: &'a Stops) -> Self {
        Self {
            repo,
            stops,
            nodes: HashMap::new(),
            hidden: BinaryHeap::new(),
            seeded_down_to: i64::MAX,
            missing: Vec::new(),
        }
    }

    fn node(&mut self, id: ObjectId) -> Result<&mut Node, gix::Error> {
        match self.nodes.entry(id) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => {
                let commit = self.repo.find_commit(id)?;
                let node = Node {
                    time: commit.time()?.seconds,
                    parents: commit.parent_ids().map(|p| p.detach()).collect(),
                    flags: 0,
                };
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
            let seeds: Vec<(i64, ObjectId)> =
                self.stops.between(threshold, self.seeded_down_to).collect();
            self.seeded_down_to = threshold;
            for (_, id) in seeds {
                if !self.repo.has_object(id) {
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
            let parents = self.node(id)?.parents.clone();
            for p in parents {
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
            let parents = self.node(id)?.parents.clone();
            for p in parents {
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
    repo: &gix::ThreadSafeRepository,
    ids: Vec<ObjectId>,
) -> Result<Vec<NewCommit>, gix::Error> {
    let mut repo = repo.to_thread_local();
    repo.object_cache_size_if_unset(OBJECT_CACHE_BYTES);
    ids.into_iter().map(|id| decode(&repo, id)).collect()
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
    let index: HashMap<ObjectId, usize> =
        commits.iter().enumerate().map(|(i, c)| (c.0, i)).collect();
    let mut waiting_on = vec![0usize; commits.len()];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); commits.len()];
    for (i, c) in commits.iter().enumerate() {
        let parents: BTreeSet<&ObjectId> = c.2.iter().collect();
        for p in parents {
            if let Some(&pi) = index.get(p) {
                waiting_on[i] += 1;
                children[pi].push(i);
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
        for &child in &children[i] {
            waiting_on[child] -= 1;
            if waiting_on[child] == 0 {
                let c = &commits[child];
                ready.push(Reverse((c.1, c.0, child)));
            }
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
