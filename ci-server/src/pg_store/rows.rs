//! Runs to rows and back: the SQL behind each [`RunStore`](ci_engine::RunStore)
//! method, run on a connection or transaction the caller holds.
//!
//! Every statement is prepared once per connection (`prepare_cached`). A run's
//! steps and attempts are written with one statement per table (arrays
//! `unnest`ed into rows) and read with one per table for a whole page of
//! runs, so the round trips of a write or a listing do not grow with the
//! number of steps or runs.

use std::collections::HashMap;

use ci_engine::{
    Attempt, AttemptOutcome, Commit, CommitId, Run, RunQuery, RunStatus, StepRecord, StepStatus,
};
use deadpool_postgres::GenericClient;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// What went wrong in a store operation, before it is given the database URL.
#[derive(Debug)]
pub(super) enum Fault {
    /// No run matches.
    NotFound(String),
    /// Several runs match a prefix.
    Ambiguous { prefix: String, matches: usize },
    /// A stored value could not be turned back into a run.
    Corrupt(String),
    /// A `u64` (or a count) does not fit a PostgreSQL integer.
    OutOfRange { what: &'static str, value: u64 },
    /// A text value holds NUL, which PostgreSQL text cannot.
    Nul(String),
    /// Another run has this `seq`.
    SeqTaken(u64),
    /// PostgreSQL or the connection failed.
    Postgres(tokio_postgres::Error),
    /// No connection could be had from the pool.
    Pool(String),
    /// The write carries lease term `held` (0: none) and the database's
    /// lease is at `current`: another server is the active one.
    Fenced { held: i64, current: i64 },
}

impl From<tokio_postgres::Error> for Fault {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Postgres(e)
    }
}

type Result<T> = std::result::Result<T, Fault>;

/// Parameters of a statement, as the driver takes them.
type Params<'a> = Vec<&'a (dyn ToSql + Sync)>;

fn to_i64(what: &'static str, value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| Fault::OutOfRange { what, value })
}

fn opt_to_i64(what: &'static str, value: Option<u64>) -> Result<Option<i64>> {
    value.map(|v| to_i64(what, v)).transpose()
}

fn to_i32(what: &'static str, value: usize) -> Result<i32> {
    i32::try_from(value).map_err(|_| Fault::OutOfRange {
        what,
        value: value as u64,
    })
}

fn to_u64(what: &str, value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| Fault::Corrupt(format!("{what} is negative ({value})")))
}

fn to_u32(what: &str, value: i64) -> Result<u32> {
    u32::try_from(value).map_err(|_| Fault::Corrupt(format!("{what} is out of range ({value})")))
}

/// A limit or offset as SQL takes it (at most `i64::MAX`).
fn count_param(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Refuses text PostgreSQL cannot store (NUL) before the server does, with
/// the field named.
fn text(what: impl FnOnce() -> String, value: &str) -> Result<&str> {
    if value.contains('\0') {
        return Err(Fault::Nul(what()));
    }
    Ok(value)
}

fn utf8(what: impl FnOnce() -> String, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| Fault::Corrupt(format!("{} is not UTF-8", what())))
}

fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Fault::Corrupt(format!("cannot encode: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Fault::Corrupt(format!("{what}: {e}")))
}

// ----- writing ------------------------------------------------------------------

/// The `runs` row of a run, as parameters `$1`..`$14`: seq, id, status,
/// branches, parents, summary, author, commit time, failed steps, created,
/// started, finished, retry seq, actions.
struct HeadRow<'a> {
    seq: i64,
    id: &'a str,
    status: &'static str,
    branches: Vec<&'a str>,
    parents: Vec<&'a str>,
    summary: &'a [u8],
    author: &'a [u8],
    failed_steps: Vec<&'a str>,
    retry_seq: Option<i64>,
    actions: String,
    run: &'a Run,
}

impl<'a> HeadRow<'a> {
    fn new(run: &'a Run) -> Result<Self> {
        let id = run.id().as_str();
        let list = |what: &'static str, items: Vec<&'a str>| {
            items
                .into_iter()
                .map(|item| text(|| format!("{what} of run {id}"), item))
                .collect::<Result<Vec<_>>>()
        };
        Ok(Self {
            seq: to_i64("seq", run.seq)?,
            id: text(|| format!("the id of run {id:?}"), id)?,
            status: run.status.as_str(),
            branches: list(
                "a branch",
                run.commit.branches.iter().map(String::as_str).collect(),
            )?,
            parents: list(
                "a parent",
                run.commit.parents.iter().map(CommitId::as_str).collect(),
            )?,
            summary: run.commit.summary.as_bytes(),
            author: run.commit.author.as_bytes(),
            failed_steps: list(
                "a failed step",
                run.failed_steps.iter().map(String::as_str).collect(),
            )?,
            retry_seq: opt_to_i64("retry_seq", run.retry_seq)?,
            actions: json(&run.actions)?,
            run,
        })
    }

    fn params(&self) -> Params<'_> {
        vec![
            &self.seq,
            &self.id,
            &self.status,
            &self.branches,
            &self.parents,
            &self.summary,
            &self.author,
            &self.run.commit.time,
            &self.failed_steps,
            &self.run.created_at,
            &self.run.started_at,
            &self.run.finished_at,
            &self.retry_seq,
            &self.actions,
        ]
    }
}

/// Inserts each of `runs` in order as [`insert_run`] does; for each, whether
/// it was stored.
pub(super) async fn insert_runs<C: GenericClient>(tx: &C, runs: &[Run]) -> Result<Vec<bool>> {
    let mut stored = Vec::with_capacity(runs.len());
    for run in runs {
        stored.push(insert_run(tx, run).await?);
    }
    Ok(stored)
}

/// Inserts `run` unless its commit has one; `false` (and no change) if it
/// has. Any unique index is an arbiter, so two inserts racing on one commit
/// never fail: the loser waits for the winner and does nothing. A `seq`
/// another commit has is then told apart by the id it lacks
/// ([`Fault::SeqTaken`]).
pub(super) async fn insert_run<C: GenericClient>(tx: &C, run: &Run) -> Result<bool> {
    let head = HeadRow::new(run)?;
    let inserted = tx
        .execute(
            &tx.prepare_cached(
                "INSERT INTO runs (seq, id, status, branches, parents, summary, author,
                                   commit_time, failed_steps, created_at, started_at,
                                   finished_at, retry_seq, actions)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                 ON CONFLICT DO NOTHING",
            )
            .await?,
            &head.params(),
        )
        .await?;
    if inserted == 0 {
        return if has_run(tx, head.id).await? {
            Ok(false)
        } else {
            Err(Fault::SeqTaken(run.seq))
        };
    }
    write_children(tx, head.seq, run).await?;
    Ok(true)
}

/// Replaces the stored state of `run`; `NotFound` if its commit has no run.
/// Rows equal to what they would be replaced with are left alone (no new
/// row version, no trigger). The caller makes it one transaction.
pub(super) async fn update_run<C: GenericClient>(tx: &C, run: &Run) -> Result<()> {
    let head = HeadRow::new(run)?;
    let found: bool = tx
        .query_one(
            &tx.prepare_cached(
                "WITH changed AS (
                     UPDATE runs SET seq = $1, status = $3, branches = $4, parents = $5,
                         summary = $6, author = $7, commit_time = $8, failed_steps = $9,
                         created_at = $10, started_at = $11, finished_at = $12,
                         retry_seq = $13, actions = $14
                     WHERE id = $2
                       AND (seq, status, branches, parents, summary, author, commit_time,
                            failed_steps, created_at, started_at, finished_at, retry_seq,
                            actions)
                           IS DISTINCT FROM
                           ($1, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                     RETURNING 1
                 )
                 SELECT EXISTS (SELECT 1 FROM runs WHERE id = $2)",
            )
            .await?,
            &head.params(),
        )
        .await?
        .try_get(0)?;
    if !found {
        return Err(Fault::NotFound(run.id().to_string()));
    }
    write_children(tx, head.seq, run).await
}

/// Brings the branch, step and attempt rows of run `seq` in line with `run`.
async fn write_children<C: GenericClient>(tx: &C, seq: i64, run: &Run) -> Result<()> {
    let id = run.id().as_str();
    let branches = run
        .commit
        .branches
        .iter()
        .map(|b| text(|| format!("a branch of run {id}"), b))
        .collect::<Result<Vec<_>>>()?;
    tx.execute(
        &tx.prepare_cached(
            "DELETE FROM run_branches WHERE seq = $1 AND branch <> ALL ($2::text[])",
        )
        .await?,
        &[&seq, &branches],
    )
    .await?;
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO run_branches (seq, branch) SELECT $1, b FROM unnest($2::text[]) b
             ON CONFLICT DO NOTHING",
        )
        .await?,
        &[&seq, &branches],
    )
    .await?;

    let steps = StepColumns::new(run)?;
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO steps AS s (seq, position, name, status, reason, budget_from)
             SELECT $1, t.* FROM unnest($2::integer[], $3::text[], $4::text[], $5::bytea[],
                                        $6::bigint[])
                 AS t (position, name, status, reason, budget_from)
             ON CONFLICT (seq, position) DO UPDATE SET
                 name = excluded.name, status = excluded.status, reason = excluded.reason,
                 budget_from = excluded.budget_from
             WHERE (s.name, s.status, s.reason, s.budget_from) IS DISTINCT FROM
                   (excluded.name, excluded.status, excluded.reason, excluded.budget_from)",
        )
        .await?,
        &[
            &seq,
            &steps.position,
            &steps.name,
            &steps.status,
            &steps.reason,
            &steps.budget_from,
        ],
    )
    .await?;

    let a = AttemptColumns::new(run)?;
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO attempts AS a (seq, step, position, number, outcome, reason, logs,
                                        started_at, finished_at, duration_ms,
                                        runner_duration_ms, runner)
             SELECT $1, t.* FROM unnest($2::integer[], $3::integer[], $4::bigint[],
                                        $5::text[], $6::bytea[], $7::bytea[], $8::bigint[],
                                        $9::bigint[], $10::bigint[], $11::bigint[],
                                        $12::text[])
                 AS t (step, position, number, outcome, reason, logs, started_at, finished_at,
                       duration_ms, runner_duration_ms, runner)
             ON CONFLICT (seq, step, position) DO UPDATE SET
                 number = excluded.number, outcome = excluded.outcome,
                 reason = excluded.reason, logs = excluded.logs,
                 started_at = excluded.started_at, finished_at = excluded.finished_at,
                 duration_ms = excluded.duration_ms,
                 runner_duration_ms = excluded.runner_duration_ms, runner = excluded.runner
             WHERE (a.number, a.outcome, a.reason, a.logs, a.started_at, a.finished_at,
                    a.duration_ms, a.runner_duration_ms, a.runner)
                   IS DISTINCT FROM
                   (excluded.number, excluded.outcome, excluded.reason, excluded.logs,
                    excluded.started_at, excluded.finished_at, excluded.duration_ms,
                    excluded.runner_duration_ms, excluded.runner)",
        )
        .await?,
        &[
            &seq,
            &a.step,
            &a.position,
            &a.number,
            &a.outcome,
            &a.reason,
            &a.logs,
            &a.started_at,
            &a.finished_at,
            &a.duration_ms,
            &a.runner_duration_ms,
            &a.runner,
        ],
    )
    .await?;

    // The attempts past each step's count ($2[step + 1]; steps past the
    // array lose all theirs, and go below anyway), then the steps past the
    // run's (their attempts follow by ON DELETE CASCADE).
    tx.execute(
        &tx.prepare_cached(
            "DELETE FROM attempts
             WHERE seq = $1 AND position >= coalesce(($2::integer[])[step + 1], 0)",
        )
        .await?,
        &[&seq, &steps.attempt_count],
    )
    .await?;
    let step_count = to_i32("step count", run.steps.len())?;
    tx.execute(
        &tx.prepare_cached("DELETE FROM steps WHERE seq = $1 AND position >= $2")
            .await?,
        &[&seq, &step_count],
    )
    .await?;
    Ok(())
}

/// A run's steps as one array per column.
struct StepColumns<'a> {
    position: Vec<i32>,
    name: Vec<&'a str>,
    status: Vec<&'static str>,
    reason: Vec<Option<&'a [u8]>>,
    budget_from: Vec<i64>,
    attempt_count: Vec<i32>,
}

impl<'a> StepColumns<'a> {
    fn new(run: &'a Run) -> Result<Self> {
        let mut c = Self {
            position: Vec::with_capacity(run.steps.len()),
            name: Vec::with_capacity(run.steps.len()),
            status: Vec::with_capacity(run.steps.len()),
            reason: Vec::with_capacity(run.steps.len()),
            budget_from: Vec::with_capacity(run.steps.len()),
            attempt_count: Vec::with_capacity(run.steps.len()),
        };
        for (i, step) in run.steps.iter().enumerate() {
            c.position.push(to_i32("step position", i)?);
            c.name.push(text(
                || format!("the name of step {i} of run {}", run.id()),
                &step.name,
            )?);
            c.status.push(step.status.as_str());
            c.reason.push(step.reason.as_deref().map(str::as_bytes));
            c.budget_from.push(i64::from(step.budget_from));
            c.attempt_count
                .push(to_i32("attempt count", step.attempts.len())?);
        }
        Ok(c)
    }
}

/// A run's attempts (of every step) as one array per column.
#[derive(Default)]
struct AttemptColumns<'a> {
    step: Vec<i32>,
    position: Vec<i32>,
    number: Vec<i64>,
    outcome: Vec<&'static str>,
    reason: Vec<Option<&'a [u8]>>,
    logs: Vec<&'a [u8]>,
    started_at: Vec<i64>,
    finished_at: Vec<Option<i64>>,
    duration_ms: Vec<Option<i64>>,
    runner_duration_ms: Vec<Option<i64>>,
    runner: Vec<Option<&'a str>>,
}

impl<'a> AttemptColumns<'a> {
    fn new(run: &'a Run) -> Result<Self> {
        let mut c = Self::default();
        for (i, step) in run.steps.iter().enumerate() {
            for (j, a) in step.attempts.iter().enumerate() {
                c.step.push(to_i32("step position", i)?);
                c.position.push(to_i32("attempt position", j)?);
                c.number.push(i64::from(a.number));
                c.outcome.push(a.outcome.as_str());
                c.reason.push(a.reason.as_deref().map(str::as_bytes));
                c.logs.push(a.logs.as_bytes());
                c.started_at.push(a.started_at);
                c.finished_at.push(a.finished_at);
                c.duration_ms
                    .push(opt_to_i64("duration_ms", a.duration_ms)?);
                c.runner_duration_ms
                    .push(opt_to_i64("runner_duration_ms", a.runner_duration_ms)?);
                c.runner.push(
                    a.runner
                        .as_deref()
                        .map(|r| text(|| format!("the runner of run {}", run.id()), r))
                        .transpose()?,
                );
            }
        }
        Ok(c)
    }
}

/// Saves a named value, replacing the old one.
pub(super) async fn save_state<C: GenericClient>(tx: &C, key: &str, value: &str) -> Result<()> {
    let key = text(|| format!("the state key {key:?}"), key)?;
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO engine_state (key, value) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .await?,
        &[&key, &value.as_bytes()],
    )
    .await?;
    Ok(())
}

// ----- reading ------------------------------------------------------------------

/// The `runs` columns [`read_head`] expects, from a table aliased `r`.
const RUN_COLUMNS: &str = "r.seq, r.id, r.status, r.branches, r.parents, r.summary, r.author, \
                           r.commit_time, r.failed_steps, r.created_at, r.started_at, \
                           r.finished_at, r.retry_seq, r.actions";

/// A `runs` row, before its steps are read.
fn read_head(row: &Row) -> Result<Run> {
    let seq: i64 = row.try_get(0)?;
    let id: String = row.try_get(1)?;
    let status: String = row.try_get(2)?;
    let actions: String = row.try_get(13)?;
    let parents: Vec<String> = row.try_get(4)?;
    Ok(Run {
        commit: Commit {
            branches: row.try_get(3)?,
            parents: parents.into_iter().map(CommitId::new).collect(),
            summary: utf8(|| format!("the summary of run {id}"), row.try_get(5)?)?,
            author: utf8(|| format!("the author of run {id}"), row.try_get(6)?)?,
            time: row.try_get(7)?,
            id: CommitId::new(id.clone()),
        },
        seq: to_u64("seq", seq)?,
        status: RunStatus::parse(&status)
            .ok_or_else(|| Fault::Corrupt(format!("run {id} has unknown status {status:?}")))?,
        failed_steps: row.try_get(8)?,
        steps: Vec::new(),
        created_at: row.try_get(9)?,
        started_at: row.try_get(10)?,
        finished_at: row.try_get(11)?,
        retry_seq: row
            .try_get::<_, Option<i64>>(12)?
            .map(|v| to_u64("retry_seq", v))
            .transpose()?,
        actions: from_json(&format!("actions of run {id}"), &actions)?,
    })
}

/// Whether attempts are read with their logs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Logs {
    /// Read them.
    Read,
    /// Leave them out (empty): listings show none.
    Skip,
}

/// Runs `sql` (whose columns are [`RUN_COLUMNS`]) and reads each run's own
/// row only: no steps.
async fn read_heads<C: GenericClient>(
    tx: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Run>> {
    let rows = tx.query(&tx.prepare_cached(sql).await?, params).await?;
    rows.iter().map(read_head).collect()
}

/// Runs `sql` (whose columns are [`RUN_COLUMNS`]) and reads each run whole,
/// with logs.
async fn read_runs<C: GenericClient>(
    tx: &C,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Run>> {
    let mut runs = read_heads(tx, sql, params).await?;
    read_steps(tx, &mut runs, Logs::Read).await?;
    Ok(runs)
}

/// Fills in the steps and attempts of runs read by [`read_head`]: one
/// statement for the steps of them all, one for their attempts.
async fn read_steps<C: GenericClient>(tx: &C, runs: &mut [Run], logs: Logs) -> Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let mut index = HashMap::with_capacity(runs.len());
    let mut seqs = Vec::with_capacity(runs.len());
    for (i, run) in runs.iter().enumerate() {
        let seq = to_i64("seq", run.seq)?;
        index.insert(seq, i);
        seqs.push(seq);
    }
    let run_of = |seq: i64| {
        index
            .get(&seq)
            .copied()
            .ok_or_else(|| Fault::Corrupt(format!("a row of run {seq} that was not asked for")))
    };
    let steps = tx
        .query(
            &tx.prepare_cached(
                "SELECT seq, name, status, reason, budget_from FROM steps
                 WHERE seq = ANY ($1) ORDER BY seq, position",
            )
            .await?,
            &[&seqs],
        )
        .await?;
    for row in &steps {
        let run = &mut runs[run_of(row.try_get(0)?)?];
        let status: String = row.try_get(2)?;
        let id = run.id().clone();
        run.steps.push(StepRecord {
            name: row.try_get(1)?,
            status: StepStatus::parse(&status).ok_or_else(|| {
                Fault::Corrupt(format!("run {id} has a step of status {status:?}"))
            })?,
            attempts: Vec::new(),
            reason: row
                .try_get::<_, Option<Vec<u8>>>(3)?
                .map(|r| utf8(|| format!("a step reason of run {id}"), r))
                .transpose()?,
            budget_from: to_u32("budget_from", row.try_get(4)?)?,
        });
    }
    let attempts = tx
        .query(
            &tx.prepare_cached(match logs {
                Logs::Read => {
                    "SELECT seq, step, number, outcome, reason, logs, started_at, finished_at,
                            duration_ms, runner_duration_ms, runner
                     FROM attempts WHERE seq = ANY ($1) ORDER BY seq, step, position"
                }
                Logs::Skip => {
                    "SELECT seq, step, number, outcome, reason, ''::bytea, started_at,
                            finished_at, duration_ms, runner_duration_ms, runner
                     FROM attempts WHERE seq = ANY ($1) ORDER BY seq, step, position"
                }
            })
            .await?,
            &[&seqs],
        )
        .await?;
    for row in &attempts {
        let run = &mut runs[run_of(row.try_get(0)?)?];
        let step: i32 = row.try_get(1)?;
        let outcome: String = row.try_get(3)?;
        let id = run.id().clone();
        let corrupt = |what: String| Fault::Corrupt(format!("run {id}: {what}"));
        let attempt = Attempt {
            number: to_u32("attempt number", row.try_get(2)?)?,
            outcome: AttemptOutcome::parse(&outcome)
                .ok_or_else(|| corrupt(format!("unknown attempt outcome {outcome:?}")))?,
            reason: row
                .try_get::<_, Option<Vec<u8>>>(4)?
                .map(|r| utf8(|| format!("an attempt reason of run {id}"), r))
                .transpose()?,
            logs: utf8(|| format!("the logs of run {id}"), row.try_get(5)?)?,
            started_at: row.try_get(6)?,
            finished_at: row.try_get(7)?,
            duration_ms: row
                .try_get::<_, Option<i64>>(8)?
                .map(|v| to_u64("duration_ms", v))
                .transpose()?,
            runner_duration_ms: row
                .try_get::<_, Option<i64>>(9)?
                .map(|v| to_u64("runner_duration_ms", v))
                .transpose()?,
            runner: row.try_get(10)?,
        };
        usize::try_from(step)
            .ok()
            .and_then(|i| run.steps.get_mut(i))
            .ok_or_else(|| corrupt(format!("an attempt belongs to missing step {step}")))?
            .attempts
            .push(attempt);
    }
    Ok(())
}

/// The smallest string greater than every string that starts with `prefix`,
/// or `None` when there is none. The id column compares bytewise
/// (`COLLATE "C"`) and UTF-8 keeps code-point order, so "starts with
/// `prefix`" is `id >= prefix AND id < bound`.
pub(super) fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let next = match last {
            '\u{D7FF}' => Some('\u{E000}'),
            c => char::from_u32(u32::from(c) + 1),
        };
        if let Some(next) = next {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// The run of the commit whose id is, or uniquely starts with, `id_or_prefix`.
///
/// One range on the id index finds the first two ids that start with it (a
/// full id sorts before every longer id it begins); only an ambiguous prefix
/// costs a count, for the error's message.
pub(super) async fn get_run<C: GenericClient>(tx: &C, id_or_prefix: &str) -> Result<Run> {
    if id_or_prefix.contains('\0') {
        // No stored id has one (text cannot hold it).
        return Err(Fault::NotFound(id_or_prefix.to_owned()));
    }
    let upper = prefix_upper_bound(id_or_prefix);
    let mut params: Params<'_> = vec![&id_or_prefix];
    if let Some(upper) = &upper {
        params.push(upper);
    }
    let range = if upper.is_some() {
        "r.id >= $1 AND r.id < $2"
    } else {
        "r.id >= $1"
    };
    let first_two = format!("SELECT {RUN_COLUMNS} FROM runs r WHERE {range} ORDER BY r.id LIMIT 2");
    let mut found = read_heads(tx, &first_two, &params).await?;
    let exact = found
        .first()
        .is_some_and(|r| r.id().as_str() == id_or_prefix);
    if found.len() > 1 && !exact {
        let count: i64 = tx
            .query_one(
                &tx.prepare_cached(&format!("SELECT count(*) FROM runs r WHERE {range}"))
                    .await?,
                &params,
            )
            .await?
            .try_get(0)?;
        return Err(Fault::Ambiguous {
            prefix: id_or_prefix.to_owned(),
            matches: usize::try_from(count).unwrap_or(usize::MAX),
        });
    }
    found.truncate(1);
    if found.is_empty() {
        return Err(Fault::NotFound(id_or_prefix.to_owned()));
    }
    read_steps(tx, &mut found, Logs::Read).await?;
    found
        .pop()
        .ok_or_else(|| Fault::NotFound(id_or_prefix.to_owned()))
}

/// The highest `seq` a listing with cursor `after` shows (`-1`: none).
fn highest_listed(after: Option<u64>) -> i64 {
    match after {
        None => i64::MAX,
        // Every stored seq fits an i64, so a larger cursor lists them all.
        Some(after) => i64::try_from(after).map_or(i64::MAX, |a| a - 1),
    }
}

/// The statement that selects a page for `query`'s filters: the filters'
/// parameters first (branch, then status, when given), then the highest
/// `seq`, the limit and the offset. Each filter walks an index newest first:
/// all runs the primary key, a status `runs_by_status`, a branch
/// `run_branches_by_branch` (the status checked on the run's row).
pub(super) fn page_sql(query: &RunQuery) -> String {
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    let mut filters = Vec::new();
    let (from, seq) = if query.branch.is_some() {
        filters.push(format!("b.branch = {}", next()));
        ("runs r JOIN run_branches b ON b.seq = r.seq", "b.seq")
    } else {
        ("runs r", "r.seq")
    };
    if query.status.is_some() {
        filters.push(format!("r.status = {}", next()));
    }
    filters.push(format!("{seq} <= {}", next()));
    let (limit, offset) = (next(), next());
    format!(
        "SELECT {RUN_COLUMNS} FROM {from} WHERE {} ORDER BY {seq} DESC LIMIT {limit} OFFSET {offset}",
        filters.join(" AND ")
    )
}

/// The page of runs `query` asks for, how many match in all (from the kept
/// counts of `run_counts`), and the cursor of the next page. The caller runs
/// it in one snapshot.
pub(super) async fn list_runs<C: GenericClient>(
    tx: &C,
    query: &RunQuery,
) -> Result<(u64, Vec<Run>, Option<u64>)> {
    if query.branch.as_deref().is_some_and(|b| b.contains('\0')) {
        return Ok((0, Vec::new(), None));
    }
    let branch = query.branch.as_deref().unwrap_or("");
    let status = query.status.map(RunStatus::as_str);
    let total: i64 = match status {
        Some(status) => {
            tx.query_one(
                &tx.prepare_cached(
                    "SELECT coalesce(sum(n), 0)::bigint FROM run_counts
                     WHERE branch = $1 AND status = $2",
                )
                .await?,
                &[&branch, &status],
            )
            .await?
        }
        None => {
            tx.query_one(
                &tx.prepare_cached(
                    "SELECT coalesce(sum(n), 0)::bigint FROM run_counts WHERE branch = $1",
                )
                .await?,
                &[&branch],
            )
            .await?
        }
    }
    .try_get(0)?;
    let total = to_u64("count", total)?;
    let highest = highest_listed(query.after);
    if query.limit == 0 || highest < 0 {
        return Ok((total, Vec::new(), None));
    }
    // One run more than the page, to tell whether another page follows.
    let limit = count_param(query.limit.saturating_add(1));
    let offset = count_param(query.offset);
    let mut params: Params<'_> = Vec::new();
    if let Some(branch) = &query.branch {
        params.push(branch);
    }
    if let Some(status) = &status {
        params.push(status);
    }
    params.extend([&highest as &(dyn ToSql + Sync), &limit, &offset]);
    let mut runs = read_heads(tx, &page_sql(query), &params).await?;
    let more = runs.len() > query.limit;
    runs.truncate(query.limit);
    if query.with_steps {
        let logs = if query.with_logs {
            Logs::Read
        } else {
            Logs::Skip
        };
        read_steps(tx, &mut runs, logs).await?;
    }
    let next = runs.last().filter(|_| more).map(|r| r.seq);
    Ok((total, runs, next))
}

/// Queued and running runs, oldest first.
pub(super) async fn unfinished_runs<C: GenericClient>(tx: &C) -> Result<Vec<Run>> {
    read_runs(
        tx,
        &format!(
            "SELECT {RUN_COLUMNS} FROM runs r WHERE r.status IN ('queued', 'running')
             ORDER BY r.seq ASC"
        ),
        &[],
    )
    .await
}

/// The statement behind [`unfinished_after`]: `$1` the first position, `$2`
/// the limit. Its filter and order are those of the partial index
/// `runs_unfinished`, so it is a range on it.
pub(super) fn unfinished_after_sql() -> String {
    format!(
        "SELECT {RUN_COLUMNS} FROM runs r
         WHERE r.status IN ('queued', 'running') AND coalesce(r.retry_seq, r.seq) >= $1
         ORDER BY coalesce(r.retry_seq, r.seq) ASC LIMIT $2"
    )
}

/// Up to `limit` queued and running runs whose queue position is `from` or
/// later, lowest position first.
pub(super) async fn unfinished_after<C: GenericClient>(
    tx: &C,
    from: u64,
    limit: usize,
) -> Result<Vec<Run>> {
    // A position past every stored one: nothing (seqs fit an i64).
    let Ok(from) = i64::try_from(from) else {
        return Ok(Vec::new());
    };
    let limit = count_param(limit);
    read_runs(tx, &unfinished_after_sql(), &[&from, &limit]).await
}

/// Whether commit `id` (a full id) has a run.
pub(super) async fn has_run<C: GenericClient>(tx: &C, id: &str) -> Result<bool> {
    if id.contains('\0') {
        return Ok(false);
    }
    Ok(tx
        .query_opt(
            &tx.prepare_cached("SELECT 1 FROM runs WHERE id = $1")
                .await?,
            &[&id],
        )
        .await?
        .is_some())
}

/// The highest queue position, if any run exists: the highest `seq` or
/// `retry_seq` (each the last entry of an index).
pub(super) async fn max_seq<C: GenericClient>(tx: &C) -> Result<Option<u64>> {
    let max: Option<i64> = tx
        .query_one(
            &tx.prepare_cached(
                "SELECT greatest((SELECT max(seq) FROM runs), (SELECT max(retry_seq) FROM runs))",
            )
            .await?,
            &[],
        )
        .await?
        .try_get(0)?;
    max.map(|m| to_u64("seq", m)).transpose()
}

/// A named value saved by [`save_state`].
pub(super) async fn load_state<C: GenericClient>(tx: &C, key: &str) -> Result<Option<String>> {
    if key.contains('\0') {
        return Ok(None);
    }
    tx.query_opt(
        &tx.prepare_cached("SELECT value FROM engine_state WHERE key = $1")
            .await?,
        &[&key],
    )
    .await?
    .map(|row| utf8(|| format!("the state {key:?}"), row.try_get(0)?))
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_bound_is_the_next_string_after_every_extension() {
        assert_eq!(prefix_upper_bound("abc").as_deref(), Some("abd"));
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
        assert_eq!(prefix_upper_bound(""), None);
    }

    #[test]
    fn each_filter_gets_its_own_page_statement() {
        let q = |status: Option<RunStatus>, branch: Option<&str>| RunQuery {
            status,
            branch: branch.map(str::to_owned),
            ..RunQuery::default()
        };
        let all = page_sql(&q(None, None));
        assert!(
            all.ends_with("FROM runs r WHERE r.seq <= $1 ORDER BY r.seq DESC LIMIT $2 OFFSET $3"),
            "{all}"
        );
        let by_status = page_sql(&q(Some(RunStatus::Success), None));
        assert!(
            by_status.contains("WHERE r.status = $1 AND r.seq <= $2"),
            "{by_status}"
        );
        let both = page_sql(&q(Some(RunStatus::Success), Some("main")));
        assert!(
            both.contains("WHERE b.branch = $1 AND r.status = $2 AND b.seq <= $3")
                && both.ends_with("ORDER BY b.seq DESC LIMIT $4 OFFSET $5"),
            "{both}"
        );
    }
}
