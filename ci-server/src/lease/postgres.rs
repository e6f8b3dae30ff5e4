//! [`PgLease`]: the lease of servers sharing one PostgreSQL database, the
//! row of `ci_lease`, renewed by a heartbeat on a connection of its own.
//!
//! Times are the database's (`clock_timestamp()`), so the servers' clocks
//! never matter; only the local monotonic clock measures how long the holder
//! may go on without a renewal.

use std::time::Duration;

use tokio::time::{Instant, timeout};
use tokio_postgres::{Client, NoTls};
use tracing::{debug, warn};

use super::{LeaseConfig, LeaseError, Lost, Seen};
use crate::pg_store::{DatabaseUrl, SCHEMA_VERSION, WRITE_LOCK};

/// Takes the lease when it has expired (or was released), raising its
/// term, after the writes in flight (the write lock): a write that began
/// under the old term is committed before the new term is, and every write
/// after it reads the new term. Refuses a database of a newer schema.
const TAKE: &str = "
    WITH version AS (SELECT coalesce(max(version), 0)::bigint AS v FROM schema_version)
    UPDATE ci_lease
       SET term = term + 1, holder = $1,
           expires_at = clock_timestamp() + make_interval(secs => $2)
     WHERE id = 1 AND expires_at < clock_timestamp()
       AND (SELECT v FROM version) <= $3
    RETURNING term";

/// Renews the lease while it is still this term's.
const RENEW: &str = "
    UPDATE ci_lease SET expires_at = clock_timestamp() + make_interval(secs => $2)
     WHERE id = 1 AND term = $1
    RETURNING term";

/// Gives the lease up at once, if it is still this term's.
const RELEASE: &str = "
    UPDATE ci_lease SET holder = '', expires_at = '-infinity' WHERE id = 1 AND term = $1";

/// Who holds the lease, whether it is still valid, and the schema version.
const LOOK: &str = "
    SELECT holder, term, expires_at >= clock_timestamp(),
           (SELECT coalesce(max(version), 0)::bigint FROM schema_version)
      FROM ci_lease WHERE id = 1";

/// The lease row of a PostgreSQL database, and the connection that keeps it.
pub struct PgLease {
    url: DatabaseUrl,
    config: LeaseConfig,
    client: Option<Client>,
    /// When the statement that last took or renewed the lease was sent: the
    /// lease lasts at least `ttl` from then, in the database's clock.
    sent_at: Option<Instant>,
}

impl std::fmt::Debug for PgLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgLease")
            .field("url", &self.url.redacted())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// One attempt's failure: the connection is dropped and made again.
#[derive(Debug)]
struct Failed(String);

impl From<tokio_postgres::Error> for Failed {
    fn from(e: tokio_postgres::Error) -> Self {
        Self(crate::pg_store::describe_error(&e))
    }
}

impl PgLease {
    /// A lease on the database at `url`; nothing is connected yet. The
    /// database's schema must have `ci_lease` (the store opened it first).
    pub fn new(url: DatabaseUrl, config: LeaseConfig) -> Self {
        Self {
            url,
            config,
            client: None,
            sent_at: None,
        }
    }

    /// Sets the lease's timing from now on.
    pub fn set_config(&mut self, config: LeaseConfig) {
        self.config = config;
    }

    /// The lease's own connection, made when there is none. Every statement
    /// on it is bounded by [`LeaseConfig::statement_timeout`]; so is
    /// connecting.
    async fn client(&mut self) -> Result<&mut Client, Failed> {
        if self.client.is_none() {
            let mut config = self.url.config().clone();
            config.connect_timeout(self.config.statement_timeout);
            config.keepalives(true);
            // Whole seconds: the system refuses a keepalive time of zero.
            config.keepalives_idle(self.config.ttl.max(Duration::from_secs(1)));
            config.application_name("ci-server lease");
            let (client, connection) =
                timeout(self.config.statement_timeout, config.connect(NoTls))
                    .await
                    .map_err(|_| Failed("connecting timed out".to_owned()))??;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    debug!(error = %e, "the lease's connection ended");
                }
            });
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or_else(|| Failed("no connection".to_owned()))
    }

    /// Runs `attempt` on the connection within the statement timeout; on
    /// any failure drops the connection, so the next call makes a new one.
    async fn bounded<T>(
        &mut self,
        attempt: impl AsyncFnOnce(&mut Client) -> Result<T, Failed>,
    ) -> Result<T, Failed> {
        let limit = self.config.statement_timeout;
        let result = async {
            let client = self.client().await?;
            timeout(limit, attempt(client))
                .await
                .map_err(|_| Failed(format!("no answer within {limit:?}")))?
        }
        .await;
        if result.is_err() {
            self.client = None;
        }
        result
    }

    /// One try at taking the lease: `Ok(Some(term))` when taken, `Ok(None)`
    /// when another server holds it (`seen` tells who).
    ///
    /// # Errors
    /// [`LeaseError::NewerSchema`] when the database's schema is newer than
    /// this build's; connection trouble is only logged (and tried again).
    pub async fn try_take(&mut self, holder: &str, seen: &Seen) -> Result<Option<u64>, LeaseError> {
        let ttl = self.config.ttl.as_secs_f64();
        let lock_timeout = format!(
            "SET LOCAL lock_timeout = {}",
            self.config.statement_timeout.as_millis() / 2
        );
        let sent = Instant::now();
        let taken = self
            .bounded(async |client| {
                let tx = client.transaction().await?;
                tx.batch_execute(&lock_timeout).await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
                    .await?;
                let row = tx
                    .query_opt(TAKE, &[&holder, &ttl, &SCHEMA_VERSION])
                    .await?;
                let term = row.map(|r| r.try_get::<_, i64>(0)).transpose()?;
                tx.commit().await?;
                Ok(term)
            })
            .await;
        match taken {
            Ok(Some(term)) => {
                self.sent_at = Some(sent);
                return Ok(Some(u64::try_from(term).unwrap_or(0)));
            }
            Ok(None) => {}
            Err(Failed(reason)) => {
                debug!(%reason, "could not try the lease");
                seen.unreachable(&reason);
                return Ok(None);
            }
        }
        let look = self
            .bounded(async |client| {
                let row = client.query_one(LOOK, &[]).await?;
                Ok((
                    row.try_get::<_, String>(0)?,
                    row.try_get::<_, i64>(1)?,
                    row.try_get::<_, bool>(2)?,
                    row.try_get::<_, i64>(3)?,
                ))
            })
            .await;
        match look {
            Ok((_, _, _, version)) if version > SCHEMA_VERSION => Err(LeaseError::NewerSchema {
                url: self.url.redacted(),
                found: version,
                supported: SCHEMA_VERSION,
            }),
            Ok((holder, term, valid, _)) => {
                seen.held_by(valid.then_some(holder), u64::try_from(term).unwrap_or(0));
                Ok(None)
            }
            Err(Failed(reason)) => {
                seen.unreachable(&reason);
                Ok(None)
            }
        }
    }

    /// Renews the lease of `term` with a heartbeat every
    /// [`LeaseConfig::renew_every`] until it is lost: another server took it
    /// (its term moved), or no renewal succeeded before the local deadline,
    /// which falls [`LeaseConfig::margin`] before the lease can expire in
    /// the database. Returns at that deadline at the latest, so that the
    /// caller stops dispatching while the lease is still its own.
    pub async fn keep(&mut self, term: u64) -> Lost {
        let ttl = self.config.ttl.as_secs_f64();
        let held = i64::try_from(term).unwrap_or(i64::MAX);
        // Counted from when the statement that took it was sent (it cannot
        // have expired earlier than `ttl` after that).
        let taken = self.sent_at.unwrap_or_else(Instant::now);
        let mut valid_until = taken + self.config.ttl - self.config.margin;
        loop {
            let next = (Instant::now() + self.config.renew_every).min(valid_until);
            tokio::time::sleep_until(next).await;
            if Instant::now() >= valid_until {
                warn!(term, "the lease could not be renewed in time");
                return Lost::NotRenewed;
            }
            let sent = Instant::now();
            // A renewal that has not answered by the deadline is too late.
            let renewed = tokio::time::timeout_at(
                valid_until,
                self.bounded(async |client| {
                    Ok(client.query_opt(RENEW, &[&held, &ttl]).await?.is_some())
                }),
            )
            .await;
            let Ok(renewed) = renewed else {
                self.client = None;
                warn!(term, "the lease could not be renewed in time");
                return Lost::NotRenewed;
            };
            match renewed {
                Ok(true) => {
                    self.sent_at = Some(sent);
                    valid_until = sent + self.config.ttl - self.config.margin;
                }
                Ok(false) => return Lost::TakenOver,
                Err(Failed(reason)) => {
                    warn!(term, %reason, "the lease's heartbeat failed; trying again");
                }
            }
        }
    }

    /// Gives the lease of `term` up, so that a standby takes over at once
    /// rather than when it expires. Best effort: if it fails, the lease
    /// expires by itself.
    pub async fn release(&mut self, term: u64) {
        let held = i64::try_from(term).unwrap_or(i64::MAX);
        if let Err(Failed(reason)) = self
            .bounded(async |client| {
                client.execute(RELEASE, &[&held]).await?;
                Ok(())
            })
            .await
        {
            warn!(term, %reason, "could not give the lease up; it expires by itself");
        }
    }
}
