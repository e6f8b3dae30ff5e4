//! Runs to rows and back: the SQL behind each [`RunStore`](ci_engine::RunStore)
//! method, run on a connection the caller holds.

use ci_engine::model::UnixMillis;
use ci_engine::{
    Attempt, AttemptOutcome, Commit, CommitId, Run, RunQuery, RunStatus, StepRecord, StepStatus,
};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};

/// What went wrong in a store operation, before it is given the database path.
#[derive(Debug)]
pub(super) enum Fault {
    /// No run matches.
    NotFound(String),
    /// Several runs match a prefix.
    Ambiguous { prefix: String, matches: usize },
    /// A stored value could not be turned back into a run.
    Corrupt(String),
    /// A `u64` does not fit an SQLite integer.
    OutOfRange { what: &'static str, value: u64 },
    /// SQLite failed.
    Sqlite(rusqlite::Error),
}

impl From<rusqlite::Error> for Fault {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sqlite(e)
    }
}

type Result<T> = std::result::Result<T, Fault>;

fn to_i64(what: &'static str, value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| Fault::OutOfRange { what, value })
}

fn opt_to_i64(what: &'static str, value: Option<u64>) -> Result<Option<i64>> {
    value.map(|v| to_i64(what, v)).transpose()
}

fn to_u64(what: &str, value: i64) -> Result<u64> {
    u64::try_from(value).map_err(|_| Fault::Corrupt(format!("{what} is negative ({value})")))
}

fn json<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Fault::Corrupt(format!("cannot encode: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Fault::Corrupt(format!("{what}: {e}")))
}

// ----- writing ------------------------------------------------------------------

/// Runs `sql` (an insert or update of the `runs` row) with the run's columns
/// bound as `?1`..`?14`: seq, id, status, branches, parents, summary, author,
/// commit time, failed steps, created, started, finished, retry seq, actions.
/// Returns rows changed.
fn execute_run_row(conn: &Connection, sql: &str, seq: i64, run: &Run) -> Result<usize> {
    Ok(conn.prepare_cached(sql)?.execute(params![
        seq,
        run.id().as_str(),
        run.status.as_str(),
        json(&run.commit.branches)?,
        json(&run.commit.parents)?,
        run.commit.summary,
        run.commit.author,
        run.commit.time,
        json(&run.failed_steps)?,
        run.created_at,
        run.started_at,
        run.finished_at,
        opt_to_i64("retry_seq", run.retry_seq)?,
        json(&run.actions)?,
    ])?)
}

/// Inserts `run` unless its commit has one; `false` (and no change) if it has.
pub(super) fn insert_run(conn: &Connection, run: &Run) -> Result<bool> {
    let seq = to_i64("seq", run.seq)?;
    let inserted = execute_run_row(
        conn,
        "INSERT INTO runs (seq, id, status, branches, parents, summary, author, commit_time,
                           failed_steps, created_at, started_at, finished_at, retry_seq,
                           actions)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
         ON CONFLICT (id) DO NOTHING",
        seq,
        run,
    )?;
    if inserted == 0 {
        return Ok(false);
    }
    write_children(conn, seq, run, true)?;
    Ok(true)
}

/// Replaces the stored state of `run`; `NotFound` if its commit has no run.
///
/// `before` is the state this connection last wrote for the run, when the
/// caller kept it: then only the rows that differ from it are written (a
/// run changes by one attempt or one step at a time, and offering every
/// step and attempt row to SQLite costs most of a write). Without it, every
/// row is offered and SQLite leaves the unchanged ones alone. The caller
/// makes the whole replacement one transaction.
pub(super) fn update_run(conn: &Connection, run: &Run, before: Option<&Run>) -> Result<()> {
    let seq = to_i64("seq", run.seq)?;
    let before = before.filter(|b| b.seq == run.seq && b.id() == run.id());
    if let Some(before) = before
        && same_head(before, run)
    {
        return write_changed_children(conn, seq, run, before);
    }
    // A run's branches rarely change: their rows (and the counts their
    // triggers keep) are rewritten only when they do.
    let branches_changed = match before {
        Some(before) => before.commit.branches != run.commit.branches,
        None => conn
            .prepare_cached("SELECT branches FROM runs WHERE id = ?1")?
            .query_row([run.id().as_str()], |r| r.get::<_, String>(0))
            .optional()?
            .is_none_or(|b| b != json(&run.commit.branches).unwrap_or_default()),
    };
    let changed = execute_run_row(
        conn,
        "UPDATE runs SET seq = ?1, status = ?3, branches = ?4, parents = ?5, summary = ?6,
            author = ?7, commit_time = ?8, failed_steps = ?9, created_at = ?10,
            started_at = ?11, finished_at = ?12, retry_seq = ?13, actions = ?14
         WHERE id = ?2",
        seq,
        run,
    )?;
    if changed == 0 {
        return Err(Fault::NotFound(run.id().to_string()));
    }
    match before {
        Some(before) => {
            write_branches(conn, seq, run, branches_changed)?;
            write_changed_children(conn, seq, run, before)
        }
        None => write_children(conn, seq, run, branches_changed),
    }
}

/// Whether the `runs` row of `a` and `b` is the same (steps aside).
fn same_head(a: &Run, b: &Run) -> bool {
    a.seq == b.seq
        && a.status == b.status
        && a.commit == b.commit
        && a.failed_steps == b.failed_steps
        && a.created_at == b.created_at
        && a.started_at == b.started_at
        && a.finished_at == b.finished_at
        && a.retry_seq == b.retry_seq
        && a.actions == b.actions
}

/// Rewrites the branch rows of run `seq` when `changed` says they differ.
fn write_branches(conn: &Connection, seq: i64, run: &Run, changed: bool) -> Result<()> {
    if changed {
        conn.prepare_cached("DELETE FROM run_branches WHERE seq = ?1")?
            .execute([seq])?;
        let mut add_branch = conn
            .prepare_cached("INSERT OR IGNORE INTO run_branches (seq, branch) VALUES (?1, ?2)")?;
        for branch in &run.commit.branches {
            add_branch.execute(params![seq, branch])?;
        }
    }
    Ok(())
}

/// The statement that writes one step row (`?1`..`?6`: seq, position, name,
/// status, reason, budget).
const PUT_STEP: &str = "INSERT INTO steps (seq, position, name, status, reason, budget_from)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
     ON CONFLICT (seq, position) DO UPDATE SET
         name = excluded.name, status = excluded.status, reason = excluded.reason,
         budget_from = excluded.budget_from
     WHERE name IS NOT excluded.name OR status IS NOT excluded.status
        OR reason IS NOT excluded.reason OR budget_from IS NOT excluded.budget_from";

/// The statement that writes one attempt row (`?1`..`?12`).
const PUT_ATTEMPT: &str = "INSERT INTO attempts (seq, step, position, number, outcome, reason,
                           logs, started_at, finished_at, duration_ms, runner_duration_ms, runner)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
     ON CONFLICT (seq, step, position) DO UPDATE SET
         number = excluded.number, outcome = excluded.outcome, reason = excluded.reason,
         logs = excluded.logs, started_at = excluded.started_at,
         finished_at = excluded.finished_at, duration_ms = excluded.duration_ms,
         runner_duration_ms = excluded.runner_duration_ms, runner = excluded.runner
     WHERE number IS NOT excluded.number OR outcome IS NOT excluded.outcome
        OR reason IS NOT excluded.reason OR logs IS NOT excluded.logs
        OR started_at IS NOT excluded.started_at OR finished_at IS NOT excluded.finished_at
        OR duration_ms IS NOT excluded.duration_ms
        OR runner_duration_ms IS NOT excluded.runner_duration_ms
        OR runner IS NOT excluded.runner";

fn put_step(conn: &Connection, seq: i64, position: i64, step: &StepRecord) -> Result<()> {
    conn.prepare_cached(PUT_STEP)?.execute(params![
        seq,
        position,
        step.name,
        step.status.as_str(),
        step.reason,
        step.budget_from
    ])?;
    Ok(())
}

fn put_attempt(conn: &Connection, seq: i64, step: i64, position: usize, a: &Attempt) -> Result<()> {
    conn.prepare_cached(PUT_ATTEMPT)?.execute(params![
        seq,
        step,
        to_i64("attempt position", position as u64)?,
        a.number,
        a.outcome.as_str(),
        a.reason,
        a.logs,
        a.started_at,
        a.finished_at,
        opt_to_i64("duration_ms", a.duration_ms)?,
        opt_to_i64("runner_duration_ms", a.runner_duration_ms)?,
        a.runner,
    ])?;
    Ok(())
}

/// Deletes the attempts of step `step` of run `seq` from `position` on.
fn trim_attempts(conn: &Connection, seq: i64, step: i64, position: usize) -> Result<()> {
    conn.prepare_cached("DELETE FROM attempts WHERE seq = ?1 AND step = ?2 AND position >= ?3")?
        .execute(params![
            seq,
            step,
            to_i64("attempt count", position as u64)?
        ])?;
    Ok(())
}

/// Deletes the steps of run `seq` from `position` on (and, by `ON DELETE
/// CASCADE`, their attempts).
fn trim_steps(conn: &Connection, seq: i64, position: usize) -> Result<()> {
    conn.prepare_cached("DELETE FROM steps WHERE seq = ?1 AND position >= ?2")?
        .execute(params![seq, to_i64("step count", position as u64)?])?;
    Ok(())
}

/// Writes the step and attempt rows of run `seq` that differ from
/// `before`, the state last written.
fn write_changed_children(conn: &Connection, seq: i64, run: &Run, before: &Run) -> Result<()> {
    for (i, step) in run.steps.iter().enumerate() {
        let position = to_i64("step position", i as u64)?;
        let old = before.steps.get(i);
        let same_row = old.is_some_and(|o| {
            o.name == step.name
                && o.status == step.status
                && o.reason == step.reason
                && o.budget_from == step.budget_from
        });
        if !same_row {
            put_step(conn, seq, position, step)?;
        }
        let old_attempts = old.map_or(&[][..], |o| &o.attempts[..]);
        for (j, a) in step.attempts.iter().enumerate() {
            if old_attempts.get(j) != Some(a) {
                put_attempt(conn, seq, position, j, a)?;
            }
        }
        if old_attempts.len() > step.attempts.len() {
            trim_attempts(conn, seq, position, step.attempts.len())?;
        }
    }
    if before.steps.len() > run.steps.len() {
        trim_steps(conn, seq, run.steps.len())?;
    }
    Ok(())
}

/// Brings the step and attempt rows of run `seq` in line with `run`, and its
/// branch rows when `branches` says they changed.
fn write_children(conn: &Connection, seq: i64, run: &Run, branches: bool) -> Result<()> {
    write_branches(conn, seq, run, branches)?;
    for (i, step) in run.steps.iter().enumerate() {
        let position = to_i64("step position", i as u64)?;
        put_step(conn, seq, position, step)?;
        for (j, a) in step.attempts.iter().enumerate() {
            put_attempt(conn, seq, position, j, a)?;
        }
        trim_attempts(conn, seq, position, step.attempts.len())?;
    }
    trim_steps(conn, seq, run.steps.len())
}

/// Saves a named value, replacing the old one.
pub(super) fn save_state(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO engine_state (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([key, value])?;
    Ok(())
}

// ----- reading ------------------------------------------------------------------

/// The `runs` columns [`read_run`] expects, from a table aliased `r`.
const RUN_COLUMNS: &str = "r.seq, r.id, r.status, r.branches, r.parents, r.summary, r.author, \
                           r.commit_time, r.failed_steps, r.created_at, r.started_at, r.finished_at, \
                           r.retry_seq, r.actions";

/// A `runs` row, before its steps are read.
fn read_head(row: &Row<'_>) -> Result<Run> {
    let seq: i64 = row.get(0)?;
    let id: String = row.get(1)?;
    let status: String = row.get(2)?;
    let branches: String = row.get(3)?;
    let parents: String = row.get(4)?;
    let failed: String = row.get(8)?;
    let actions: String = row.get(13)?;
    Ok(Run {
        commit: Commit {
            branches: from_json(&format!("branches of run {id}"), &branches)?,
            parents: from_json::<Vec<CommitId>>(&format!("parents of run {id}"), &parents)?,
            summary: row.get(5)?,
            author: row.get(6)?,
            time: row.get(7)?,
            id: CommitId::new(id.clone()),
        },
        seq: to_u64("seq", seq)?,
        status: RunStatus::parse(&status)
            .ok_or_else(|| Fault::Corrupt(format!("run {id} has unknown status {status:?}")))?,
        failed_steps: from_json(&format!("failed steps of run {id}"), &failed)?,
        steps: Vec::new(),
        created_at: row.get(9)?,
        started_at: row.get(10)?,
        finished_at: row.get(11)?,
        retry_seq: row
            .get::<_, Option<i64>>(12)?
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

/// Fills in the steps and attempts of a run read by [`read_head`].
fn read_steps(conn: &Connection, run: &mut Run, logs: Logs) -> Result<()> {
    let seq = to_i64("seq", run.seq)?;
    let mut steps = conn.prepare_cached(
        "SELECT position, name, status, reason, budget_from FROM steps WHERE seq = ?1
         ORDER BY position",
    )?;
    let mut rows = steps.query([seq])?;
    while let Some(row) = rows.next()? {
        let status: String = row.get(2)?;
        run.steps.push(StepRecord {
            name: row.get(1)?,
            status: StepStatus::parse(&status).ok_or_else(|| {
                Fault::Corrupt(format!("run {} has a step of status {status:?}", run.id()))
            })?,
            attempts: Vec::new(),
            reason: row.get(3)?,
            budget_from: row.get(4)?,
        });
    }
    let mut attempts = conn.prepare_cached(match logs {
        Logs::Read => {
            "SELECT step, number, outcome, reason, logs, started_at, finished_at,
                        duration_ms, runner_duration_ms, runner
                 FROM attempts WHERE seq = ?1 ORDER BY step, position"
        }
        Logs::Skip => {
            "SELECT step, number, outcome, reason, '', started_at, finished_at,
                        duration_ms, runner_duration_ms, runner
                 FROM attempts WHERE seq = ?1 ORDER BY step, position"
        }
    })?;
    let mut rows = attempts.query([seq])?;
    while let Some(row) = rows.next()? {
        let step: i64 = row.get(0)?;
        let outcome: String = row.get(2)?;
        let id = run.id().clone();
        let corrupt = |what: String| Fault::Corrupt(format!("run {id}: {what}"));
        let attempt = Attempt {
            number: row.get(1)?,
            outcome: AttemptOutcome::parse(&outcome)
                .ok_or_else(|| corrupt(format!("unknown attempt outcome {outcome:?}")))?,
            reason: row.get(3)?,
            logs: row.get(4)?,
            started_at: row.get::<_, UnixMillis>(5)?,
            finished_at: row.get(6)?,
            duration_ms: row
                .get::<_, Option<i64>>(7)?
                .map(|v| to_u64("duration_ms", v))
                .transpose()?,
            runner_duration_ms: row
                .get::<_, Option<i64>>(8)?
                .map(|v| to_u64("runner_duration_ms", v))
                .transpose()?,
            runner: row.get(9)?,
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

/// Runs the query (whose columns are [`RUN_COLUMNS`]) and reads each run whole.
fn read_runs(conn: &Connection, sql: &str, params: &[Value], logs: Logs) -> Result<Vec<Run>> {
    let mut runs = read_heads(conn, sql, params)?;
    for run in &mut runs {
        read_steps(conn, run, logs)?;
    }
    Ok(runs)
}

/// Runs the query (whose columns are [`RUN_COLUMNS`]) and reads each run's
/// own row only: no steps.
fn read_heads(conn: &Connection, sql: &str, params: &[Value]) -> Result<Vec<Run>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params_from_iter(params))?;
    let mut runs = Vec::new();
    while let Some(row) = rows.next()? {
        runs.push(read_head(row)?);
    }
    Ok(runs)
}

/// The smallest string greater than every string that starts with `prefix`, or
/// `None` when there is none. SQLite compares text bytewise and UTF-8 keeps
/// code-point order, so "starts with `prefix`" is `id >= prefix AND id < bound`.
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

/// SQL that counts (`COUNT`) or selects (`SELECT`) the runs whose id starts with
/// the first parameter (the second is the upper bound, when there is one).
pub(super) fn prefix_sql(select: &str, bounded: bool) -> String {
    let upper = if bounded { " AND r.id < ?2" } else { "" };
    format!("SELECT {select} FROM runs r WHERE r.id >= ?1{upper}")
}

/// The run of the commit whose id is, or uniquely starts with, `id_or_prefix`.
///
/// One range on the id index finds the first two ids that start with it (a
/// full id sorts before every longer id it begins); only an ambiguous
/// prefix costs a count, for the error's message.
pub(super) fn get_run(conn: &Connection, id_or_prefix: &str) -> Result<Run> {
    let upper = prefix_upper_bound(id_or_prefix);
    let mut params = vec![Value::Text(id_or_prefix.to_owned())];
    params.extend(upper.clone().map(Value::Text));
    let first_two = format!(
        "{} ORDER BY r.id LIMIT 2",
        prefix_sql(RUN_COLUMNS, upper.is_some())
    );
    let mut found = read_heads(conn, &first_two, &params)?;
    let exact = found
        .first()
        .is_some_and(|r| r.id().as_str() == id_or_prefix);
    if found.len() > 1 && !exact {
        let count: i64 = conn
            .prepare_cached(&prefix_sql("count(*)", upper.is_some()))?
            .query_row(params_from_iter(&params), |r| r.get(0))?;
        return Err(Fault::Ambiguous {
            prefix: id_or_prefix.to_owned(),
            matches: usize::try_from(count).unwrap_or(usize::MAX),
        });
    }
    found.truncate(1);
    let mut run = found
        .pop()
        .ok_or_else(|| Fault::NotFound(id_or_prefix.to_owned()))?;
    read_steps(conn, &mut run, Logs::Read)?;
    Ok(run)
}

/// The statements behind a [`RunQuery`]: the page, the total, and the two
/// that find where a page at an `offset` starts.
pub(super) struct ListSql {
    /// Selects the page: [`RUN_COLUMNS`], newest first
    /// ([`page_params`](Self::page_params)).
    pub page: String,
    /// Counts every match.
    pub count: String,
    /// Parameters of `count`, and the first ones of `buckets`: the branch
    /// (`''` for all), then the status when filtered.
    pub count_params: Vec<Value>,
    /// Counts the matches in a range of `seq`
    /// ([`range_params`](Self::range_params)).
    pub range_count: String,
    /// Sums the matches per bucket of `seq`, newest bucket first
    /// ([`bucket_params`](Self::bucket_params)).
    pub buckets: String,
    /// The filters' parameters, the first ones of `page` and `range_count`.
    filter_params: Vec<Value>,
}

impl ListSql {
    /// The filters' parameters followed by `more`.
    fn filtered(&self, more: impl IntoIterator<Item = Value>) -> Vec<Value> {
        self.filter_params.iter().cloned().chain(more).collect()
    }

    /// Parameters of `page`: the highest `seq` to list, at most `limit`
    /// runs, after skipping `skip` matches.
    pub fn page_params(&self, highest: i64, limit: usize, skip: u64) -> Vec<Value> {
        self.filtered([
            Value::Integer(highest),
            Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)),
            Value::Integer(i64::try_from(skip).unwrap_or(i64::MAX)),
        ])
    }

    /// Parameters of `range_count`: the lowest and the highest `seq`.
    pub fn range_params(&self, low: i64, high: i64) -> Vec<Value> {
        self.filtered([Value::Integer(low), Value::Integer(high)])
    }

    /// Parameters of `buckets`: its filters, then the highest bucket.
    pub fn bucket_params(&self, highest_bucket: i64) -> Vec<Value> {
        let mut params = self.count_params.clone();
        params.push(Value::Integer(highest_bucket));
        params
    }
}

/// Builds the SQL for `query`. Each filter has an index that yields runs newest
/// first, so no variant sorts: all runs walk `runs` by rowid, a status walks
/// `runs_by_status`, a branch walks `run_branches_by_branch` (and checks the
/// status on the run's row); the page starts at a `seq` bound, a range on the
/// same index. The total is read from `run_counts`, the buckets that place
/// an offset from `run_buckets`.
pub(super) fn list_sql(query: &RunQuery) -> ListSql {
    let mut filters = Vec::new();
    let mut params = Vec::new();
    let (from, seq) = if let Some(branch) = &query.branch {
        filters.push("b.branch = ?");
        params.push(Value::Text(branch.clone()));
        ("FROM run_branches b JOIN runs r ON r.seq = b.seq", "b.seq")
    } else {
        ("FROM runs r", "r.seq")
    };
    if let Some(status) = query.status {
        filters.push("r.status = ?");
        params.push(Value::Text(status.as_str().to_owned()));
    }
    let filter = filters
        .iter()
        .map(|f| format!("{f} AND "))
        .collect::<String>();
    // The total comes from `run_counts` (kept by triggers): one lookup, or
    // the sum of a branch's (or all runs') few statuses.
    let mut count_params = vec![Value::Text(query.branch.clone().unwrap_or_default())];
    let (count, buckets) = match query.status {
        Some(status) => {
            count_params.push(Value::Text(status.as_str().to_owned()));
            (
                "SELECT coalesce(sum(n), 0) FROM run_counts WHERE branch = ? AND status = ?",
                "SELECT bucket, sum(n) FROM run_buckets WHERE branch = ? AND status = ?
                 AND bucket <= ? GROUP BY bucket ORDER BY bucket DESC",
            )
        }
        None => (
            "SELECT coalesce(sum(n), 0) FROM run_counts WHERE branch = ?",
            "SELECT bucket, sum(n) FROM run_buckets WHERE branch = ?
             AND bucket <= ? GROUP BY bucket ORDER BY bucket DESC",
        ),
    };
    let page = format!(
        "SELECT {RUN_COLUMNS} {from} WHERE {filter}{seq} <= ? ORDER BY {seq} DESC LIMIT ? OFFSET ?"
    );
    let range_count = format!("SELECT count(*) {from} WHERE {filter}{seq} >= ? AND {seq} <= ?");
    ListSql {
        page,
        count: count.to_owned(),
        count_params,
        range_count,
        buckets: buckets.to_owned(),
        filter_params: params,
    }
}

/// The highest `seq` a listing with cursor `after` shows (`-1`: none).
pub(super) fn highest_listed(after: Option<u64>) -> i64 {
    match after {
        None => i64::MAX,
        // Every stored seq fits an i64, so a larger cursor lists them all.
        Some(after) => i64::try_from(after).map_or(i64::MAX, |a| a - 1),
    }
}

/// Where a page starts: the highest `seq` it may show, and how many matches
/// at or below that to skip first (fewer than one bucket holds), or `None`
/// when the offset is past every match.
///
/// Instead of walking `offset` rows, it sums the kept counts of whole
/// buckets newest first (the bucket the cursor cuts is counted row by row).
fn page_start(conn: &Connection, sql: &ListSql, query: &RunQuery) -> Result<Option<(i64, u64)>> {
    let mut highest = highest_listed(query.after);
    let mut skip = u64::try_from(query.offset).unwrap_or(u64::MAX);
    if skip == 0 || highest < 0 {
        return Ok(Some((highest, skip)));
    }
    let bucket_of = |seq: i64| seq >> super::schema::BUCKET_BITS;
    if query.after.is_some() {
        // The cursor's own bucket, below the cursor.
        let low = bucket_of(highest) << super::schema::BUCKET_BITS;
        let n: i64 = conn
            .prepare_cached(&sql.range_count)?
            .query_row(params_from_iter(&sql.range_params(low, highest)), |r| {
                r.get(0)
            })?;
        let n = u64::try_from(n).unwrap_or(0);
        if n > skip {
            return Ok(Some((highest, skip)));
        }
        skip -= n;
        highest = low - 1;
        if highest < 0 {
            return Ok(None);
        }
    }
    let mut stmt = conn.prepare_cached(&sql.buckets)?;
    let mut rows = stmt.query(params_from_iter(&sql.bucket_params(bucket_of(highest))))?;
    while let Some(row) = rows.next()? {
        let bucket: i64 = row.get(0)?;
        let n = u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0);
        if n > skip {
            let top =
                (bucket << super::schema::BUCKET_BITS) | ((1 << super::schema::BUCKET_BITS) - 1);
            return Ok(Some((top.min(highest), skip)));
        }
        skip -= n;
    }
    Ok(None)
}

/// The page of runs `query` asks for, how many match in all, and the cursor
/// of the next page.
pub(super) fn list_runs(
    conn: &Connection,
    query: &RunQuery,
) -> Result<(u64, Vec<Run>, Option<u64>)> {
    let sql = list_sql(query);
    let total: i64 = conn
        .prepare_cached(&sql.count)?
        .query_row(params_from_iter(&sql.count_params), |r| r.get(0))?;
    let total = to_u64("count", total)?;
    if query.limit == 0 {
        return Ok((total, Vec::new(), None));
    }
    let Some((highest, skip)) = page_start(conn, &sql, query)? else {
        return Ok((total, Vec::new(), None));
    };
    // One run more than the page, to tell whether another page follows.
    let params = sql.page_params(highest, query.limit.saturating_add(1), skip);
    let mut runs = read_heads(conn, &sql.page, &params)?;
    let more = runs.len() > query.limit;
    runs.truncate(query.limit);
    if query.with_steps {
        let logs = if query.with_logs {
            Logs::Read
        } else {
            Logs::Skip
        };
        for run in &mut runs {
            read_steps(conn, run, logs)?;
        }
    }
    let next = runs.last().filter(|_| more).map(|r| r.seq);
    Ok((total, runs, next))
}

/// Queued and running runs, oldest first.
pub(super) fn unfinished_runs(conn: &Connection) -> Result<Vec<Run>> {
    let sql =
        format!("SELECT {RUN_COLUMNS} FROM runs r WHERE r.status IN (?1, ?2) ORDER BY r.seq ASC");
    read_runs(
        conn,
        &sql,
        &[
            Value::Text(RunStatus::Queued.as_str().to_owned()),
            Value::Text(RunStatus::Running.as_str().to_owned()),
        ],
        Logs::Read,
    )
}

/// Up to `limit` queued and running runs whose queue position is `from` or
/// later, lowest position first: a range on the partial index
/// `runs_unfinished` (named, because the planner would rather take
/// `runs_by_status` and sort).
pub(super) fn unfinished_after(conn: &Connection, from: u64, limit: usize) -> Result<Vec<Run>> {
    read_runs(
        conn,
        &unfinished_after_sql(),
        &[
            Value::Integer(to_i64("position", from)?),
            Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)),
        ],
        Logs::Read,
    )
}

/// The statement behind [`unfinished_after`]: `?1` the first position, `?2`
/// the limit.
pub(super) fn unfinished_after_sql() -> String {
    format!(
        "SELECT {RUN_COLUMNS} FROM runs r INDEXED BY runs_unfinished
         WHERE r.status IN ('queued', 'running') AND coalesce(r.retry_seq, r.seq) >= ?1
         ORDER BY coalesce(r.retry_seq, r.seq) ASC LIMIT ?2"
    )
}

/// Whether commit `id` (a full id) has a run.
pub(super) fn has_run(conn: &Connection, id: &str) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM runs WHERE id = ?1")?
        .query_row([id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The highest queue position, if any run exists: the highest `seq` or
/// `retry_seq` (each the last entry of an index).
pub(super) fn max_seq(conn: &Connection) -> Result<Option<u64>> {
    let (seq, retry): (Option<i64>, Option<i64>) = conn
        .prepare_cached("SELECT (SELECT max(seq) FROM runs), (SELECT max(retry_seq) FROM runs)")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    seq.max(retry).map(|m| to_u64("seq", m)).transpose()
}

/// A named value saved by [`save_state`].
pub(super) fn load_state(conn: &Connection, key: &str) -> Result<Option<String>> {
    Ok(conn
        .prepare_cached("SELECT value FROM engine_state WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()?)
}

/// The keys of every saved value, in byte order.
pub(super) fn state_keys(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT key FROM engine_state ORDER BY key")?;
    let keys = stmt
        .query_map([], |r| r.get(0))?
        .collect::<std::result::Result<_, _>>()?;
    Ok(keys)
}

/// The lines of SQLite's `EXPLAIN QUERY PLAN` for `sql`.
pub(super) fn explain(conn: &Connection, sql: &str, params: &[Value]) -> Result<Vec<String>> {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
    let lines = stmt
        .query_map(params_from_iter(params), |r| r.get::<_, String>(3))?
        .collect::<std::result::Result<_, _>>()?;
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::prefix_upper_bound;

    #[test]
    fn upper_bound_is_the_next_string_after_every_extension() {
        assert_eq!(prefix_upper_bound("abc").as_deref(), Some("abd"));
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
        assert_eq!(prefix_upper_bound("\u{D7FF}").as_deref(), Some("\u{E000}"));
        assert_eq!(prefix_upper_bound("\u{10FFFF}"), None);
        assert_eq!(prefix_upper_bound(""), None);
        for (prefix, inside) in [
            ("ab", "ab\u{10FFFF}\u{10FFFF}"),
            ("é", "éz"),
            ("a\u{7F}", "a\u{7F}\u{80}"),
        ] {
            let bound = prefix_upper_bound(prefix).expect("bound");
            assert!(
                inside.as_bytes() < bound.as_bytes(),
                "{inside:?} < {bound:?}"
            );
            assert!(prefix.as_bytes() < bound.as_bytes());
        }
    }
}
