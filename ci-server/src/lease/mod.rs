//! The lease that makes exactly one of the servers sharing a store the
//! active one: only its holder takes commits and dispatches steps; the
//! others are standbys that serve reads and wait to take over.
//!
//! - [`Lease::Sole`]: a store no other process can open (in memory): the
//!   server is always active.
//! - [`Lease::File`] ([`FileLease`]): servers on one SQLite file, one
//!   machine; an exclusive lock on `<file>.lock`, let go by the system when
//!   the holder's process ends however it ends.
//! - [`Lease::Postgres`] ([`PgLease`]): servers on one PostgreSQL database,
//!   any machines; a row with a term and an expiry in the database's clock,
//!   renewed by a heartbeat. Each takeover raises the term, and every write
//!   of the store checks it ([`PgStore::fence`](crate::pg_store::PgStore::fence)),
//!   so a server that lost the lease without knowing it (frozen, cut off)
//!   cannot write over its successor's work.

pub mod file;
pub mod postgres;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tracing::info;

pub use file::FileLease;
pub use postgres::PgLease;

/// The timing of a [`PgLease`].
///
/// A takeover after the holder vanished takes at most `ttl + poll` from its
/// last renewal, plus one statement. The holder stops dispatching `margin`
/// before its lease can expire, measured on its own monotonic clock from
/// when it sent the renewal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long the lease lasts after its last renewal. Default 3 s.
    pub ttl: Duration,
    /// How often the holder renews it. Default 1 s (a third of `ttl`, so two
    /// heartbeats may fail before it is lost).
    pub renew_every: Duration,
    /// How long before the lease can expire its holder gives up on it.
    /// Default 500 ms.
    pub margin: Duration,
    /// How often a standby tries to take the lease. Default 500 ms.
    pub poll: Duration,
    /// How long one statement of the lease's (or connecting) may take.
    /// Default 1 s.
    pub statement_timeout: Duration,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3),
            renew_every: Duration::from_secs(1),
            margin: Duration::from_millis(500),
            poll: Duration::from_millis(500),
            statement_timeout: Duration::from_secs(1),
        }
    }
}

/// Why a server cannot (or must not) hold the lease. Each message is one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// The lock file beside a SQLite database cannot be opened or locked.
    #[error("the lock file {path}: {reason}")]
    LockFile {
        /// The lock file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A newer ci-server migrated the database since this one started: this
    /// one must not write it, so it will not take over.
    #[error(
        "will not take over: the run database {url} has schema version {found}, newer than \
         the {supported} this ci-server supports (a newer ci-server migrated it); upgrade \
         this server"
    )]
    NewerSchema {
        /// The database URL, password masked.
        url: String,
        /// The database's schema version.
        found: i64,
        /// This build's.
        supported: i64,
    },
}

/// How a held lease ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lost {
    /// Another server took it over: the database's term moved on.
    TakenOver,
    /// No renewal succeeded before the local deadline (the database is
    /// unreachable or too slow); it may still be taken by another.
    NotRenewed,
}

/// Who a standby last saw holding the lease, for `/healthz` and the pointer
/// standbys give to what only the active server can answer.
#[derive(Clone, Debug)]
pub struct Seen {
    active: watch::Sender<Option<String>>,
}

impl Default for Seen {
    fn default() -> Self {
        Self {
            active: watch::channel(None).0,
        }
    }
}

impl Seen {
    /// The active server as last seen: `None` when none holds the lease (or
    /// none is known yet).
    pub fn active(&self) -> watch::Receiver<Option<String>> {
        self.active.subscribe()
    }

    /// Notes the lease's holder (`None`: expired or given up), logging a
    /// change.
    pub fn held_by(&self, holder: Option<String>, term: u64) {
        let holder = holder.filter(|h| !h.is_empty());
        self.active.send_if_modified(|seen| {
            if *seen == holder {
                return false;
            }
            match &holder {
                Some(h) => info!(active = %h, term, "standby: another server holds the lease"),
                None => info!(term, "standby: the lease is free"),
            }
            *seen = holder;
            true
        });
    }

    /// Notes this server as the holder.
    pub fn me(&self, holder: &str) {
        self.active.send_replace(Some(holder.to_owned()));
    }

    /// Notes that the lease could not be read (the previous holder stays as
    /// last seen).
    pub fn unreachable(&self, reason: &str) {
        tracing::debug!(%reason, "standby: cannot read the lease");
    }
}

/// The lease of one server.
#[derive(Debug)]
#[non_exhaustive]
pub enum Lease {
    /// Nothing to share: always held.
    Sole,
    /// A lock on a file beside a SQLite database.
    File(FileLease),
    /// The lease row of a PostgreSQL database.
    Postgres(Box<PgLease>),
}

impl Lease {
    /// One try at taking the lease as `holder` (a description: where this
    /// server listens, its host and process id). `Ok(Some(term))` when taken;
    /// the term is the database's for [`Postgres`](Self::Postgres), 0 for the
    /// others (which cannot lose it while the process lives).
    ///
    /// # Errors
    /// [`LeaseError::NewerSchema`] when the database is of a newer
    /// ci-server; [`LeaseError::LockFile`] when the lock file cannot be
    /// locked.
    pub async fn try_take(&mut self, holder: &str, seen: &Seen) -> Result<Option<u64>, LeaseError> {
        match self {
            Self::Sole => Ok(Some(0)),
            Self::File(lease) => {
                if lease.try_take(holder)? {
                    Ok(Some(0))
                } else {
                    let who = lease.holder();
                    seen.held_by(Some(who).filter(|w| !w.is_empty()), 0);
                    Ok(None)
                }
            }
            Self::Postgres(lease) => lease.try_take(holder, seen).await,
        }
    }

    /// Waits until this server holds the lease, trying every `poll` (the
    /// file lock every [`file::FILE_POLL`]); returns its term.
    ///
    /// # Errors
    /// As [`try_take`](Self::try_take).
    pub async fn acquire(
        &mut self,
        holder: &str,
        seen: &Seen,
        poll: Duration,
    ) -> Result<u64, LeaseError> {
        let wait = match self {
            Self::File(_) => file::FILE_POLL,
            _ => poll,
        };
        loop {
            if let Some(term) = self.try_take(holder, seen).await? {
                return Ok(term);
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Resolves when the held lease of `term` is lost: never for a lease
    /// that cannot be lost while the process lives.
    pub async fn keep(&mut self, term: u64) -> Lost {
        match self {
            Self::Postgres(lease) => lease.keep(term).await,
            Self::Sole | Self::File(_) => std::future::pending().await,
        }
    }

    /// Gives the lease of `term` up, so that a standby takes over at once.
    pub async fn release(&mut self, term: u64) {
        match self {
            Self::Sole => {}
            Self::File(lease) => lease.release(),
            Self::Postgres(lease) => lease.release(term).await,
        }
    }
}
