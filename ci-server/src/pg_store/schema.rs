//! The PostgreSQL schema, its versions, and the checks made before anything
//! is written to a database that is opened.
//!
//! The versions applied are rows of the table `schema_version` (one per
//! migration, with when it was applied); the schema's version is the highest.
//! `migrate` takes a transaction-scoped advisory lock
//! ([`MIGRATION_LOCK`]) so that several servers starting at once against one
//! database migrate it once, refuses a database of another program or of a
//! newer ci-server, and applies the missing migrations in the same
//! transaction: PostgreSQL's DDL is transactional, so a failure half-way
//! leaves the old version.
//!
//! The tables live in the connection's current schema (the first of its
//! `search_path`, `public` by default): give the URL
//! `?options=-csearch_path%3Dci` to keep them in a schema `ci`.

use tokio_postgres::Client;
use tracing::info;

use super::PgStoreError;
use super::error::describe;

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 2;

/// The key of the advisory lock taken while migrating ("CIRS", as the SQLite
/// store's application id).
pub const MIGRATION_LOCK: i64 = 0x4349_5253;

/// `MIGRATIONS[i]` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 2] = [V1, V2];

/// Version 1, the whole of what the SQLite store reached in its four.
///
/// - `runs`: one row per run. `seq` is the primary key, so newest-first
///   listing walks its index backwards and `max(seq)` is one lookup. `id` is
///   unique and compared bytewise (`COLLATE "C"`), so a prefix lookup is a
///   range on its index (`id >= $1 AND id < $2`) whatever the database's
///   collation. Branches, parents and failed steps are text arrays in the
///   commit's order.
/// - Text that comes from outside (commit summary and author, reasons, logs,
///   saved values) is `bytea` holding UTF-8: PostgreSQL text cannot hold NUL,
///   and a runner's log may. Ids, branch names, step names and runner ids are
///   `text` (a NUL in one is refused).
/// - `runs_by_status`, `run_branches_by_branch`: listing by status, by branch,
///   newest first, without sorting.
/// - `runs_unfinished`: the queued and running runs by queue position (a
///   retried run's `retry_seq`, else its `seq`), so the engine pages through
///   them without reading the others; `runs_by_retry_seq`: `max(retry_seq)`
///   in one lookup.
/// - `steps`, `attempts`: a run's steps in pipeline order, and their attempts.
///   Child rows follow their run when its `seq` changes (`ON UPDATE CASCADE`).
/// - `run_counts`: how many runs have each status, over all runs (`branch` is
///   `''`, which no git branch can be) and per branch, kept by triggers in the
///   transaction of every change, so a listing's total is one or a few
///   lookups instead of a count over every run.
/// - `engine_state`: small named values (a source's cursor).
const V1: &str = r#"
CREATE TABLE runs (
    seq          bigint   PRIMARY KEY,
    id           text     COLLATE "C" NOT NULL UNIQUE,
    status       text     NOT NULL,
    branches     text[]   NOT NULL,
    parents      text[]   NOT NULL,
    summary      bytea    NOT NULL,
    author       bytea    NOT NULL,
    commit_time  bigint   NOT NULL,
    failed_steps text[]   NOT NULL,
    created_at   bigint   NOT NULL,
    started_at   bigint,
    finished_at  bigint,
    retry_seq    bigint,
    actions      text     NOT NULL
);
CREATE INDEX runs_by_status ON runs (status, seq);
CREATE INDEX runs_unfinished ON runs ((coalesce(retry_seq, seq)))
    WHERE status IN ('queued', 'running');
CREATE INDEX runs_by_retry_seq ON runs (retry_seq);

CREATE TABLE run_branches (
    seq    bigint NOT NULL REFERENCES runs (seq) ON DELETE CASCADE ON UPDATE CASCADE,
    branch text   COLLATE "C" NOT NULL,
    PRIMARY KEY (seq, branch)
);
CREATE INDEX run_branches_by_branch ON run_branches (branch, seq);

CREATE TABLE steps (
    seq         bigint  NOT NULL REFERENCES runs (seq) ON DELETE CASCADE ON UPDATE CASCADE,
    position    integer NOT NULL,
    name        text    NOT NULL,
    status      text    NOT NULL,
    reason      bytea,
    budget_from bigint  NOT NULL,
    PRIMARY KEY (seq, position)
);

CREATE TABLE attempts (
    seq                bigint  NOT NULL,
    step               integer NOT NULL,
    position           integer NOT NULL,
    number             bigint  NOT NULL,
    outcome            text    NOT NULL,
    reason             bytea,
    logs               bytea   NOT NULL,
    started_at         bigint  NOT NULL,
    finished_at        bigint,
    duration_ms        bigint,
    runner_duration_ms bigint,
    runner             text,
    PRIMARY KEY (seq, step, position),
    FOREIGN KEY (seq, step) REFERENCES steps (seq, position)
        ON DELETE CASCADE ON UPDATE CASCADE
);

CREATE TABLE engine_state (
    key   text  COLLATE "C" PRIMARY KEY,
    value bytea NOT NULL
);

CREATE TABLE run_counts (
    branch text   COLLATE "C" NOT NULL,
    status text   NOT NULL,
    n      bigint NOT NULL,
    PRIMARY KEY (branch, status)
);

-- Adds `delta` to the count of (branch, status).
CREATE FUNCTION ci_count(p_branch text, p_status text, delta bigint) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO run_counts AS c (branch, status, n) VALUES (p_branch, p_status, delta)
        ON CONFLICT (branch, status) DO UPDATE SET n = c.n + excluded.n;
$$;

CREATE FUNCTION ci_run_counted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM ci_count('', NEW.status, 1);
    ELSIF TG_OP = 'UPDATE' THEN
        IF OLD.status IS DISTINCT FROM NEW.status THEN
            -- Its branch rows may already follow the new seq (ON UPDATE CASCADE).
            PERFORM ci_count(b.branch, s.status, s.delta)
            FROM (SELECT DISTINCT branch FROM run_branches WHERE seq IN (OLD.seq, NEW.seq)
                  UNION ALL SELECT '') b,
                 (VALUES (OLD.status, -1), (NEW.status, 1)) s (status, delta);
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        -- Its branches first, while the row their trigger reads is still there.
        DELETE FROM run_branches WHERE seq = OLD.seq;
        PERFORM ci_count('', OLD.status, -1);
        RETURN OLD;
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER run_counted AFTER INSERT OR UPDATE OF status ON runs
    FOR EACH ROW EXECUTE FUNCTION ci_run_counted();
CREATE TRIGGER run_uncounted BEFORE DELETE ON runs
    FOR EACH ROW EXECUTE FUNCTION ci_run_counted();

CREATE FUNCTION ci_branch_counted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM ci_count(NEW.branch, r.status, 1) FROM runs r WHERE r.seq = NEW.seq;
    ELSE
        PERFORM ci_count(OLD.branch, r.status, -1) FROM runs r WHERE r.seq = OLD.seq;
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER branch_counted AFTER INSERT OR DELETE ON run_branches
    FOR EACH ROW EXECUTE FUNCTION ci_branch_counted();
"#;

/// Version 2: `ci_lease`, the lease that makes one server of those sharing
/// the database the active one (see `crate::lease`). One row: the lease's
/// `term` (raised by one at every takeover; every write of the active server
/// checks it), who holds it (`holder`, for people and standbys) and when it
/// expires unless renewed, in the database's clock, so that the servers'
/// clocks never matter.
const V2: &str = r#"
CREATE TABLE ci_lease (
    id         smallint    PRIMARY KEY CHECK (id = 1),
    term       bigint      NOT NULL,
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL
);
INSERT INTO ci_lease (id, term, holder, expires_at) VALUES (1, 0, '', '-infinity');
"#;

/// Checks the database and brings its schema to [`SCHEMA_VERSION`], all in
/// one transaction under [`MIGRATION_LOCK`].
///
/// Refuses, changing nothing: a database whose encoding is not UTF-8, one
/// with a `runs` table but no `schema_version` (another program's), and one
/// whose schema is newer than this build's.
pub(super) async fn migrate(client: &mut Client, url: &str) -> Result<(), PgStoreError> {
    let postgres = |e: tokio_postgres::Error| PgStoreError::Postgres {
        url: url.to_owned(),
        reason: describe(&e),
    };
    let encoding: String = client
        .query_one("SHOW server_encoding", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(postgres)?;
    if !encoding.eq_ignore_ascii_case("UTF8") {
        return Err(PgStoreError::Encoding {
            url: url.to_owned(),
            encoding,
        });
    }
    let tx = client.transaction().await.map_err(postgres)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(postgres)?;
    // Tables of the current schema only: another schema's `runs` is not ours
    // to judge.
    let row = tx
        .query_one(
            "SELECT to_regclass(quote_ident(current_schema()) || '.schema_version') IS NOT NULL,
                    to_regclass(quote_ident(current_schema()) || '.runs') IS NOT NULL",
            &[],
        )
        .await
        .map_err(postgres)?;
    let (versioned, has_runs): (bool, bool) = (
        row.try_get(0).map_err(postgres)?,
        row.try_get(1).map_err(postgres)?,
    );
    let current: i64 = if versioned {
        tx.query_one(
            "SELECT coalesce(max(version), 0)::bigint FROM schema_version",
            &[],
        )
        .await
        .and_then(|row| row.try_get(0))
        .map_err(postgres)?
    } else if has_runs {
        return Err(PgStoreError::ForeignDatabase {
            url: url.to_owned(),
        });
    } else {
        tx.batch_execute(
            "CREATE TABLE schema_version (
                 version    bigint      PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await
        .map_err(postgres)?;
        0
    };
    if current > SCHEMA_VERSION {
        return Err(PgStoreError::NewerSchema {
            url: url.to_owned(),
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    let from = usize::try_from(current).unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(from) {
        let to = i64::try_from(i + 1).unwrap_or(i64::MAX);
        tx.batch_execute(sql).await.map_err(postgres)?;
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&to])
            .await
            .map_err(postgres)?;
        info!(url, from = i, to, "migrated run database schema");
    }
    tx.commit().await.map_err(postgres)
}
