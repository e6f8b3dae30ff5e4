//! Writes of many runs at once, for bulk copies (`ci-server migrate-store`):
//! one transaction, and so one commit, for a whole batch instead of one per
//! run.

use ci_engine::{CommitId, Run, StoreError};

use super::PgStore;
use super::rows::{self, Fault};

impl PgStore {
    /// Inserts `runs` in one transaction, each as
    /// [`insert_run`](ci_engine::RunStore::insert_run) does (every field
    /// kept, `seq` and retry position included; the kept counts follow):
    /// all of them, or none. When a run's commit already has one, nothing
    /// is written and that commit's id is returned; `None` when every run
    /// was written.
    ///
    /// # Errors
    /// [`StoreError::Backend`] as for `insert_run` (a `seq` another run
    /// has, a NUL where PostgreSQL text cannot hold it, a failed
    /// connection); nothing is written.
    pub async fn copy_runs(&self, runs: &[Run]) -> Result<Option<CommitId>, StoreError> {
        if runs.is_empty() {
            return Ok(None);
        }
        let written = self
            .write("copy_runs", runs, |tx, runs| {
                Box::pin(async move {
                    for run in runs {
                        if !rows::insert_run(tx, run).await? {
                            // An error rolls the batch back; `insert_run`
                            // never fails with NotFound, so it stands for
                            // "already there" alone.
                            return Err(Fault::NotFound(run.id().to_string()));
                        }
                    }
                    Ok(())
                })
            })
            .await;
        match written {
            Ok(()) => Ok(None),
            Err(StoreError::NotFound(id)) => Ok(Some(CommitId::new(id))),
            Err(other) => Err(other),
        }
    }
}
