//! What a [`GitSource`](super::GitSource) already knows, and how it is kept in the
//! store across restarts.
//!
//! The source keeps a small set of *known tips*: commits every ancestor of which
//! was either handed out or deliberately left out (the *baseline* of the
//! [`InitialPolicy`](super::InitialPolicy)). A scan walks from the current branch
//! tips and hides all known tips, so it only visits new commits.
//!
//! To keep that walk cheap the set is kept free of tips that are ancestors of
//! other known tips: when new commits are built on a known tip, the old tip is
//! *pruned*. A prune waits until every tip of the batch that supersedes it has a
//! run in the store; until then a crash could lose that batch, and the old tip is
//! what stops the walk after a restart.
//!
//! After a restart only tips that are *confirmed* (baseline, or with a run in the
//! store) are hidden; tips handed out but never recorded are walked again. The
//! branch tips of the last scan are saved too, so after a restart an unchanged
//! branch costs no walk.

use std::collections::{BTreeMap, BTreeSet};

use gix::ObjectId;
use serde::{Deserialize, Serialize};

/// The store key under which the source keeps its state.
pub(crate) const STATE_KEY: &str = "git-source";

/// The version of the saved state's format.
const STATE_VERSION: u32 = 1;

/// One known tip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct KnownTip {
    /// The branches through which it was found (for a resumed tip whose branch is gone).
    pub branches: Vec<String>,
    /// Left out on purpose by the initial policy: never handed out, always hidden.
    pub baseline: bool,
    /// Baseline, or known to have a run in the store.
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

/// The known tips and the prunes waiting for confirmation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Known {
    /// Every known tip; all of them are hidden from walks within one process.
    pub tips: BTreeMap<ObjectId, KnownTip>,
    /// Prunes waiting for their batch to be recorded.
    pub prunes: Vec<PendingPrune>,
    /// The branch tips of the last scan. Everything reachable from them is covered
    /// by the known tips (and, after a restart, by the unrecorded tips walked
    /// again), so a tip still among them needs no walk, even after a restart.
    pub seen: BTreeSet<ObjectId>,
}

#[derive(Serialize, Deserialize)]
struct SavedState {
    version: u32,
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

fn hex_ids(ids: &[ObjectId]) -> Vec<String> {
    ids.iter().map(ObjectId::to_string).collect()
}

impl Known {
    /// Serializes the state for [`RunStore::save_state`](ci_engine::RunStore::save_state).
    /// Confirmation is not saved: it is asked of the store again on load.
    pub fn to_json(&self) -> String {
        let saved = SavedState {
            version: STATE_VERSION,
            tips: self
                .tips
                .iter()
                .map(|(id, t)| SavedTip {
                    id: id.to_string(),
                    branches: t.branches.clone(),
                    baseline: t.baseline,
                })
                .collect(),
            prunes: self
                .prunes
                .iter()
                .map(|p| SavedPrune {
                    after: hex_ids(&p.after),
                    remove: hex_ids(&p.remove),
                })
                .collect(),
            seen: self.seen.iter().map(ObjectId::to_string).collect(),
        };
        serde_json::to_string(&saved).expect("a map of strings and bools always serializes")
    }

    /// Parses saved state; every tip comes back unconfirmed except the baseline.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let saved: SavedState = serde_json::from_str(json).map_err(|e| e.to_string())?;
        if saved.version != STATE_VERSION {
            return Err(format!(
                "format version {} is not the supported version {STATE_VERSION}",
                saved.version
            ));
        }
        let mut tips = BTreeMap::new();
        for t in saved.tips {
            tips.insert(
                parse_id(&t.id)?,
                KnownTip {
                    branches: t.branches,
                    baseline: t.baseline,
                    confirmed: t.baseline,
                },
            );
        }
        let prunes = saved
            .prunes
            .iter()
            .map(|p| {
                Ok(PendingPrune {
                    after: parse_ids(&p.after)?,
                    remove: parse_ids(&p.remove)?,
                })
            })
            .collect::<Result<_, String>>()?;
        let seen = parse_ids(&saved.seen)?.into_iter().collect();
        Ok(Self { tips, prunes, seen })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ObjectId {
        ObjectId::from_bytes_or_panic(&[n; 20])
    }

    #[test]
    fn state_round_trips_with_only_the_baseline_confirmed() {
        let mut known = Known::default();
        known.tips.insert(
            id(1),
            KnownTip {
                branches: vec!["main".into()],
                baseline: false,
                confirmed: true,
            },
        );
        known.tips.insert(
            id(2),
            KnownTip {
                branches: vec![],
                baseline: true,
                confirmed: true,
            },
        );
        known.prunes.push(PendingPrune {
            after: vec![id(1)],
            remove: vec![id(2)],
        });
        known.seen.insert(id(3));
        let back = Known::from_json(&known.to_json()).expect("own output parses");
        assert_eq!(back.prunes, known.prunes);
        assert_eq!(back.seen, known.seen);
        assert_eq!(back.tips[&id(1)].branches, vec!["main".to_owned()]);
        assert!(
            !back.tips[&id(1)].confirmed,
            "handed-out tips are re-checked"
        );
        assert!(back.tips[&id(2)].confirmed && back.tips[&id(2)].baseline);
    }

    #[test]
    fn bad_state_is_rejected_with_a_reason() {
        assert!(Known::from_json("not json").is_err());
        let wrong_version = r#"{"version":99,"tips":[]}"#;
        assert!(Known::from_json(wrong_version).unwrap_err().contains("99"));
        let bad_id = r#"{"version":1,"tips":[{"id":"xyz"}]}"#;
        assert!(Known::from_json(bad_id).unwrap_err().contains("xyz"));
    }
}
