//! [`ListingCache`]: encoded answers of `GET /runs`, kept until the runs
//! change.
//!
//! An idle server is asked the same few listings over and over, and each
//! answer is the same until a run changes. The cache keeps the encoded JSON
//! of the last [`CAPACITY`] distinct queries, each with the store's
//! [generation](ci_engine::RunStore::generation) read before the store was.
//! An answer is served only while that generation is still the store's, so
//! the cache never answers with an older state than the store holds; under
//! a steady stream of writes it simply misses. A store without a
//! generation is never cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use ci_engine::RunQuery;

/// How many distinct queries are kept at once.
pub const CAPACITY: usize = 64;

/// Encoded listings by query, each with the generation it was read at.
/// Cloning shares the cache.
#[derive(Clone, Default, Debug)]
pub struct ListingCache {
    entries: Arc<Mutex<HashMap<RunQuery, (u64, Bytes)>>>,
}

impl ListingCache {
    /// The kept answer to `query`, if it was read at `generation` (the
    /// store's current one).
    pub fn get(&self, query: &RunQuery, generation: u64) -> Option<Bytes> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, body) = entries.get(query)?;
        (*at == generation).then(|| body.clone())
    }

    /// Keeps `body`, the answer to `query` read at `generation`. Answers
    /// read at another generation than the newest kept one make room
    /// first; past [`CAPACITY`] the cache starts over.
    pub fn put(&self, query: &RunQuery, generation: u64, body: Bytes) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= CAPACITY && !entries.contains_key(query) {
            entries.retain(|_, (at, _)| *at == generation);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(query.clone(), (generation, body));
    }

    /// How many answers are kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(offset: usize) -> RunQuery {
        RunQuery {
            offset,
            ..RunQuery::default()
        }
    }

    #[test]
    fn an_answer_is_served_only_at_its_generation() {
        let cache = ListingCache::default();
        cache.put(&query(0), 7, Bytes::from_static(b"a"));
        assert_eq!(cache.get(&query(0), 7).as_deref(), Some(&b"a"[..]));
        assert_eq!(cache.get(&query(1), 7), None, "another query");
        assert_eq!(cache.get(&query(0), 8), None, "stale after a write");
    }

    #[test]
    fn it_keeps_at_most_its_capacity() {
        let cache = ListingCache::default();
        for offset in 0..CAPACITY * 3 {
            let generation = (offset / 100) as u64;
            cache.put(&query(offset), generation, Bytes::from(offset.to_string()));
            assert!(cache.len() <= CAPACITY, "{} kept", cache.len());
        }
        let last = CAPACITY * 3 - 1;
        let generation = (last / 100) as u64;
        assert_eq!(
            cache.get(&query(last), generation),
            Some(Bytes::from(last.to_string()))
        );
    }
}
