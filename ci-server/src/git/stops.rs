//! [`Stops`]: the known commits a walk stops at, with their commit times.
//!
//! A walk from a branch that moved stops at a stop at once. Whether a commit
//! that is not a stop is known (an ancestor of one) is decided by painting down
//! from the stops no older than it (see [`scan`](super::scan)), so the stops are
//! kept ordered by commit time.

use std::collections::BTreeSet;

use gix::ObjectId;

/// Why a commit is a stop: it is a known tip, or the value of some branches.
#[derive(Clone, Copy, Debug, Default)]
struct Member {
    /// Commit time, once known.
    time: Option<i64>,
    /// Is it a known tip.
    tip: bool,
    /// How many branches point at it.
    refs: u32,
}

/// Known commits, ordered by commit time. Every stop is a known commit, and
/// every known commit is an ancestor of a stop.
#[derive(Clone, Debug, Default)]
pub(crate) struct Stops {
    members: gix::hashtable::HashMap<ObjectId, Member>,
    by_time: BTreeSet<(i64, ObjectId)>,
}

impl Stops {
    /// Whether `id` is a stop.
    pub fn contains(&self, id: &ObjectId) -> bool {
        self.members.contains_key(id)
    }

    /// How many stops there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// The stops whose commit time is not known yet.
    pub fn unresolved(&self) -> Vec<ObjectId> {
        self.members
            .iter()
            .filter(|(_, m)| m.time.is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    /// The stops with a commit time of at least `from` and below `below`, newest
    /// first.
    pub fn between(&self, from: i64, below: i64) -> impl Iterator<Item = (i64, ObjectId)> + '_ {
        let low = (from, ObjectId::null(gix::hash::Kind::Sha1));
        let high = (below, ObjectId::null(gix::hash::Kind::Sha1));
        // `range` wants its start before its end.
        (from < below)
            .then(|| self.by_time.range(low..high).rev().copied())
            .into_iter()
            .flatten()
    }

    /// Makes `id` a stop as a known tip.
    pub fn add_tip(&mut self, id: ObjectId, time: Option<i64>) {
        let m = self.members.entry(id).or_default();
        m.tip = true;
        Self::set_time(&mut self.by_time, id, m, time);
    }

    /// Makes `id` a stop as the value of one more branch.
    pub fn add_ref(&mut self, id: ObjectId, time: Option<i64>) {
        let m = self.members.entry(id).or_default();
        m.refs += 1;
        Self::set_time(&mut self.by_time, id, m, time);
    }

    /// `id` is no longer a known tip.
    pub fn remove_tip(&mut self, id: &ObjectId) {
        if let Some(m) = self.members.get_mut(id) {
            m.tip = false;
            self.drop_if_unused(id);
        }
    }

    /// One branch less points at `id`.
    pub fn remove_ref(&mut self, id: &ObjectId) {
        if let Some(m) = self.members.get_mut(id) {
            m.refs = m.refs.saturating_sub(1);
            self.drop_if_unused(id);
        }
    }

    /// Records the commit time of stop `id`.
    pub fn resolve(&mut self, id: ObjectId, time: i64) {
        if let Some(m) = self.members.get_mut(&id) {
            Self::set_time(&mut self.by_time, id, m, Some(time));
        }
    }

    /// Forgets `id` altogether (not a commit, or gone from the repository).
    pub fn forget(&mut self, id: &ObjectId) {
        if let Some(m) = self.members.remove(id)
            && let Some(t) = m.time
        {
            self.by_time.remove(&(t, *id));
        }
    }

    fn set_time(
        by_time: &mut BTreeSet<(i64, ObjectId)>,
        id: ObjectId,
        m: &mut Member,
        time: Option<i64>,
    ) {
        if let (None, Some(t)) = (m.time, time) {
            m.time = Some(t);
            by_time.insert((t, id));
        }
    }

    fn drop_if_unused(&mut self, id: &ObjectId) {
        if self.members.get(id).is_some_and(|m| !m.tip && m.refs == 0) {
            self.forget(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[n; 20])
    }

    #[test]
    fn a_stop_stays_while_a_tip_or_a_branch_needs_it() {
        let mut s = Stops::default();
        s.add_tip(id(1), Some(10));
        s.add_ref(id(1), None);
        s.add_ref(id(1), None);
        s.remove_tip(&id(1));
        s.remove_ref(&id(1));
        assert!(s.contains(&id(1)));
        s.remove_ref(&id(1));
        assert!(!s.contains(&id(1)));
        assert_eq!(s.between(0, 100).count(), 0);
    }

    #[test]
    fn stops_come_newest_first_within_the_range() {
        let mut s = Stops::default();
        s.add_tip(id(1), Some(10));
        s.add_tip(id(2), Some(20));
        s.add_tip(id(3), None);
        s.add_tip(id(4), Some(30));
        s.resolve(id(3), 25);
        let got: Vec<i64> = s.between(15, 30).map(|(t, _)| t).collect();
        assert_eq!(got, vec![25, 20]);
        assert!(s.unresolved().is_empty());
    }
}
