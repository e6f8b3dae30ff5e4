//! The git side of a scan: read the branch tips, walk the commits that are new
//! since the known tips, and put them parents first.
//!
//! Everything here blocks on the file system; [`GitSource`](super::GitSource)
//! runs it through `tokio::task::spawn_blocking`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};

use gix::ObjectId;
use gix::revision::walk::Sorting;
use gix::traverse::commit::simple::CommitTimeOrder;
use tracing::warn;

use super::InitialPolicy;

/// Object cache per scan: walks look each commit up twice (walk, then decode).
const OBJECT_CACHE_BYTES: usize = 4 * 1024 * 1024;

/// A commit found by a scan, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NewCommit {
    pub id: ObjectId,
    pub parents: Vec<ObjectId>,
    pub summary: String,
    pub author: String,
    pub time: i64,
    /// Branches through which the scan reached it.
    pub branches: BTreeSet<String>,
}

/// What a scan starts from.
#[derive(Clone, Debug, Default)]
pub(crate) struct ScanInput {
    /// Known tips: neither they nor their ancestors are new.
    pub hidden: Vec<ObjectId>,
    /// Tip ids of the previous scan: unchanged tips need no walk.
    pub last_tip_ids: BTreeSet<ObjectId>,
    /// Tips to walk from besides the branch tips (handed out before a restart and
    /// not recorded), with the branches they were found through.
    pub extra: Vec<(ObjectId, Vec<String>)>,
    /// `Some` on the very first scan of a repository (no saved state).
    pub first_start: Option<InitialPolicy>,
}

/// What a scan found.
#[derive(Debug, Default)]
pub(crate) struct ScanOutput {
    /// Ids of the current branch tips (unchanged ones need no look next time).
    pub tip_ids: BTreeSet<ObjectId>,
    /// New commits, parents first.
    pub commits: Vec<NewCommit>,
    /// Walked tips that turned out new, with the branches pointing at them: they
    /// become known tips.
    pub new_tips: Vec<(ObjectId, Vec<String>)>,
    /// Every parent of a new commit (known tips among them can be pruned).
    pub parents_of_new: BTreeSet<ObjectId>,
    /// Known tips whose objects are gone from the repository (garbage collected).
    pub missing_hidden: Vec<ObjectId>,
    /// First start only: commits deliberately not built, to be known as baseline.
    pub baseline: Vec<ObjectId>,
    /// First start only: known tips (new or baseline) that are ancestors of others.
    pub redundant: Vec<ObjectId>,
}

/// Reads the branch tips and walks what is new. Errors are the repository's
/// (an unreadable object, a broken pack): the caller reports them as transient.
pub(crate) fn scan(
    repo: &gix::ThreadSafeRepository,
    input: ScanInput,
) -> Result<ScanOutput, gix::Error> {
    let mut repo = repo.to_thread_local();
    repo.object_cache_size_if_unset(OBJECT_CACHE_BYTES);
    let hidden: HashSet<ObjectId> = input.hidden.iter().copied().collect();

    let mut out = ScanOutput::default();
    let mut visible: BTreeMap<ObjectId, Vec<String>> = BTreeMap::new();
    for (id, branches) in branch_tips(&repo)? {
        if input.last_tip_ids.contains(&id) {
            out.tip_ids.insert(id);
            continue;
        }
        // A non-commit tip is remembered as seen, so it is reported once, not every scan.
        out.tip_ids.insert(id);
        if !is_commit(&repo, id, &branches)? {
            continue;
        }
        if !hidden.contains(&id) {
            visible.insert(id, branches);
        }
    }
    for (id, branches) in input.extra {
        if hidden.contains(&id) || visible.contains_key(&id) {
            continue;
        }
        if repo.has_object(id) {
            visible.insert(id, branches);
        } else {
            warn!(commit = %id, "a commit handed out before the restart is gone from the repository");
        }
    }

    match input.first_start {
        Some(InitialPolicy::Tips) => initial_tips(&repo, visible, &mut out)?,
        Some(InitialPolicy::None) => {
            let baseline: Vec<ObjectId> = visible.into_keys().collect();
            out.redundant = strict_ancestors_among(&repo, &baseline)?;
            out.baseline = baseline;
        }
        Some(InitialPolicy::All) | None => walk_new(&repo, visible, &input.hidden, &mut out)?,
    }
    Ok(out)
}

/// Branch tips, peeled to objects: id -> short branch names pointing at it.
/// A broken branch ref is skipped with a warning (the rest still run).
fn branch_tips(repo: &gix::Repository) -> Result<BTreeMap<ObjectId, Vec<String>>, gix::Error> {
    let mut tips: BTreeMap<ObjectId, Vec<String>> = BTreeMap::new();
    let refs = repo.references()?;
    for r in refs.local_branches()?.peeled()? {
        match r {
            Ok(r) => match r.try_id() {
                Some(id) => tips
                    .entry(id.detach())
                    .or_default()
                    .push(r.name().shorten().to_string()),
                None => {
                    warn!(branch = %r.name().as_bstr(), "branch does not point at an object; skipped")
                }
            },
            Err(e) => warn!(error = %e, "unreadable branch ref; skipped"),
        }
    }
    Ok(tips)
}

fn is_commit(
    repo: &gix::Repository,
    id: ObjectId,
    branches: &[String],
) -> Result<bool, gix::Error> {
    let kind = repo.find_header(id)?.kind();
    if kind != gix::object::Kind::Commit {
        warn!(?branches, object = %id, %kind, "branch does not point at a commit; skipped");
        return Ok(false);
    }
    Ok(true)
}

/// The normal scan: every commit reachable from `visible` and not from `hidden`.
fn walk_new(
    repo: &gix::Repository,
    visible: BTreeMap<ObjectId, Vec<String>>,
    hidden: &[ObjectId],
    out: &mut ScanOutput,
) -> Result<(), gix::Error> {
    if visible.is_empty() {
        return Ok(());
    }
    let mut present = Vec::with_capacity(hidden.len());
    for &id in hidden {
        if repo.has_object(id) {
            present.push(id);
        } else {
            out.missing_hidden.push(id);
        }
    }
    let walk = repo
        .rev_walk(visible.keys().copied())
        .with_hidden(present)
        .all()?;
    let mut commits = Vec::new();
    for info in walk {
        commits.push(decode(repo, info?.id)?);
    }
    let index: HashMap<ObjectId, usize> =
        commits.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
    for (tip, branches) in visible {
        if index.contains_key(&tip) {
            attribute(&mut commits, &index, tip, &branches);
            out.new_tips.push((tip, branches));
        }
    }
    out.parents_of_new = commits
        .iter()
        .flat_map(|c| c.parents.iter().copied())
        .collect();
    out.commits = parents_first(commits);
    Ok(())
}

/// First start with [`InitialPolicy::Tips`]: the tip commits themselves; their
/// parents become the baseline.
fn initial_tips(
    repo: &gix::Repository,
    visible: BTreeMap<ObjectId, Vec<String>>,
    out: &mut ScanOutput,
) -> Result<(), gix::Error> {
    let mut commits = Vec::with_capacity(visible.len());
    for (&id, branches) in &visible {
        let mut c = decode(repo, id)?;
        c.branches.extend(branches.iter().cloned());
        commits.push(c);
    }
    let baseline: BTreeSet<ObjectId> = commits
        .iter()
        .flat_map(|c| c.parents.iter().copied())
        .filter(|p| !visible.contains_key(p))
        .collect();
    let mut all: Vec<ObjectId> = visible.keys().copied().collect();
    all.extend(baseline.iter().copied());
    out.redundant = strict_ancestors_among(repo, &all)?;
    out.baseline = baseline.into_iter().collect();
    out.new_tips = visible.into_iter().collect();
    out.commits = parents_first(commits);
    Ok(())
}

/// The members of `ids` that are ancestors of other members. Walks the history
/// below the members back to the oldest member's commit time: a one-time cost at
/// a first start. Clock skew can hide an ancestor; that only costs speed later.
fn strict_ancestors_among(
    repo: &gix::Repository,
    ids: &[ObjectId],
) -> Result<Vec<ObjectId>, gix::Error> {
    let members: HashSet<ObjectId> = ids.iter().copied().collect();
    let mut parents = BTreeSet::new();
    let mut oldest = i64::MAX;
    for &id in ids {
        let commit = repo.find_commit(id)?;
        oldest = oldest.min(commit.time()?.seconds);
        parents.extend(commit.parent_ids().map(|p| p.detach()));
    }
    if parents.is_empty() {
        return Ok(Vec::new());
    }
    let walk = repo
        .rev_walk(parents)
        .sorting(Sorting::ByCommitTimeCutoff {
            order: CommitTimeOrder::NewestFirst,
            seconds: oldest,
        })
        .all()?;
    let mut found = Vec::new();
    for info in walk {
        let id = info?.id;
        if members.contains(&id) {
            found.push(id);
        }
    }
    Ok(found)
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
        branches: BTreeSet::new(),
    })
}

/// Adds `branches` to every new commit reachable from `tip` through new commits.
fn attribute(
    commits: &mut [NewCommit],
    index: &HashMap<ObjectId, usize>,
    tip: ObjectId,
    branches: &[String],
) {
    let mut seen = HashSet::new();
    let mut stack = vec![tip];
    while let Some(id) = stack.pop() {
        let Some(&i) = index.get(&id) else { continue };
        if !seen.insert(i) {
            continue;
        }
        commits[i].branches.extend(branches.iter().cloned());
        stack.extend(commits[i].parents.iter().copied());
    }
}

/// Orders commits so each comes after its parents in the set; among those ready,
/// the oldest (commit time, then id) first.
pub(crate) fn parents_first(commits: Vec<NewCommit>) -> Vec<NewCommit> {
    let index: HashMap<ObjectId, usize> =
        commits.iter().enumerate().map(|(i, c)| (c.id, i)).collect();
    let mut waiting_on = vec![0usize; commits.len()];
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); commits.len()];
    for (i, c) in commits.iter().enumerate() {
        let parents: BTreeSet<&ObjectId> = c.parents.iter().collect();
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
        .map(|(i, c)| Reverse((c.time, c.id, i)))
        .collect();
    let mut order = Vec::with_capacity(commits.len());
    while let Some(Reverse((_, _, i))) = ready.pop() {
        order.push(i);
        for &child in &children[i] {
            waiting_on[child] -= 1;
            if waiting_on[child] == 0 {
                let c = &commits[child];
                ready.push(Reverse((c.time, c.id, child)));
            }
        }
    }
    // A commit graph has no cycles, so every commit was placed.
    debug_assert_eq!(order.len(), commits.len());
    let mut slots: Vec<Option<NewCommit>> = commits.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[n; 20])
    }

    fn commit(n: u8, parents: &[u8], time: i64) -> NewCommit {
        NewCommit {
            id: id(n),
            parents: parents.iter().map(|&p| id(p)).collect(),
            summary: String::new(),
            author: String::new(),
            time,
            branches: BTreeSet::new(),
        }
    }

    #[test]
    fn parents_come_first_even_when_their_clock_is_later() {
        // 3 merges 1 and 2; 2's parent is 1; times are skewed against the graph.
        let out = parents_first(vec![
            commit(3, &[1, 2], 5),
            commit(2, &[1], 1),
            commit(1, &[9], 10),
        ]);
        let ids: Vec<ObjectId> = out.iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![id(1), id(2), id(3)]);
    }

    #[test]
    fn independent_commits_go_oldest_first() {
        let out = parents_first(vec![
            commit(1, &[], 30),
            commit(2, &[], 10),
            commit(3, &[], 20),
        ]);
        let ids: Vec<ObjectId> = out.iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![id(2), id(3), id(1)]);
    }
}
