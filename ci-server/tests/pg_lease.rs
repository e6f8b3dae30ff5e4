//! The lease of servers sharing a PostgreSQL database (`PgLease`) and the
//! fencing of the store's writes by its term, against a real PostgreSQL
//! (`tests/pg_support`; skipped without one, except under CI).

mod pg_support;

use std::time::Duration;

use ci_engine::testing::store_contract::{hex_id, queued_run};
use ci_engine::{RunStore, StoreError};
use ci_server::lease::{LeaseConfig, LeaseError, Lost, PgLease, Seen};
use ci_server::pg_store::{DatabaseUrl, PgStore, SCHEMA_VERSION};
use pg_support::PgCluster;

/// A lease that expires quickly, so that tests need not wait 3 s.
fn quick() -> LeaseConfig {
    LeaseConfig {
        ttl: Duration::from_millis(600),
        renew_every: Duration::from_millis(200),
        margin: Duration::from_millis(100),
        poll: Duration::from_millis(50),
        statement_timeout: Duration::from_secs(1),
    }
}

fn new_database(cluster: &PgCluster, label: &str) -> (String, DatabaseUrl) {
    let name = cluster.create_database(label);
    let url = DatabaseUrl::parse(&cluster.url(&name)).expect("the harness's URL parses");
    (name, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_at_a_time_and_a_takeover_fences_the_old_holder_out() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let (name, url) = new_database(&cluster, "lease_fence");
    let old = PgStore::open(&url).await.expect("open");
    let new = PgStore::open(&url).await.expect("open");
    let mut old_lease = PgLease::new(url.clone(), quick());
    // Long-lived, so that its heartbeat, not its deadline, finds a takeover.
    let mut new_lease = PgLease::new(
        url.clone(),
        LeaseConfig {
            ttl: Duration::from_secs(5),
            ..quick()
        },
    );
    let seen = Seen::default();

    let first = old_lease
        .try_take("old", &seen)
        .await
        .expect("no error")
        .expect("a free lease is taken");
    assert_eq!(
        new_lease.try_take("new", &seen).await.expect("no error"),
        None,
        "a held lease is not taken"
    );
    assert_eq!(seen.active().borrow().as_deref(), Some("old"));
    old.fence(Some(first));
    new.fence(None);
    let one = queued_run(&hex_id(1), 1, &["main"]);
    assert!(old.insert_run(&one).await.expect("the holder writes"));
    let refused = new.insert_run(&queued_run(&hex_id(2), 2, &["main"])).await;
    assert!(
        matches!(refused, Err(StoreError::Fenced(_))),
        "a store holding no lease writes: {refused:?}"
    );

    // The old holder stops renewing (frozen, cut off): its lease expires in
    // the database's clock and the other takes it with a higher term.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let second = loop {
        if let Some(term) = new_lease.try_take("new", &seen).await.expect("no error") {
            break term;
        }
        assert!(tokio::time::Instant::now() < deadline, "never taken over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(second > first, "the term rises: {first} then {second}");
    new.fence(Some(second));

    // The old holder's writes are refused by term and change nothing.
    let mut changed = one.clone();
    changed.status = ci_engine::RunStatus::Cancelled;
    let refused = old.update_run(&changed).await;
    let Err(StoreError::Fenced(message)) = refused else {
        panic!("the old holder's write went through: {refused:?}");
    };
    assert!(
        message.contains(&format!("term {first}")) && message.contains(&format!("term {second}")),
        "{message}"
    );
    assert!(!message.contains(cluster.password()), "{message}");
    assert_eq!(
        new.get_run(&hex_id(1)).await.expect("read").status,
        ci_engine::RunStatus::Queued
    );
    let refused = old.save_state("k", "v").await;
    assert!(matches!(refused, Err(StoreError::Fenced(_))), "{refused:?}");
    assert_eq!(new.load_state("k").await.expect("read"), None);
    assert!(
        new.update_run(&changed).await.is_ok(),
        "the new holder writes"
    );

    // The old holder never renewed: by now its deadline has passed, and it
    // says so at once.
    let lost = tokio::time::timeout(Duration::from_secs(10), old_lease.keep(first))
        .await
        .expect("the old holder notices within 10 s");
    assert_eq!(lost, Lost::NotRenewed);
    // The new one renews and keeps it past several lifetimes.
    let kept = tokio::time::timeout(Duration::from_secs(2), new_lease.keep(second)).await;
    assert!(kept.is_err(), "the holder lost a lease it renews: {kept:?}");
    let held = cluster.psql(&name, "SELECT term FROM ci_lease");
    assert_eq!(held, second.to_string());

    // Given up, it is free at once.
    new_lease.release(second).await;
    let third = old_lease
        .try_take("old", &seen)
        .await
        .expect("no error")
        .expect("a released lease is free");
    assert_eq!(third, second + 1);
    // The one that gave it up finds the term moved on at its next heartbeat.
    let lost = tokio::time::timeout(Duration::from_secs(10), new_lease.keep(second))
        .await
        .expect("noticed within 10 s");
    assert_eq!(lost, Lost::TakenOver);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_migrated_by_a_newer_server_is_not_taken_over() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let (name, url) = new_database(&cluster, "lease_newer");
    PgStore::open(&url).await.expect("open");
    cluster.psql(
        &name,
        &format!(
            "INSERT INTO schema_version (version) VALUES ({})",
            SCHEMA_VERSION + 1
        ),
    );
    let mut lease = PgLease::new(url, quick());
    let error = lease
        .try_take("old", &Seen::default())
        .await
        .expect_err("refused");
    assert!(
        matches!(error, LeaseError::NewerSchema { found, supported, .. }
            if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("upgrade"), "{message}");
    assert!(!message.contains(cluster.password()), "{message}");
    assert_eq!(cluster.psql(&name, "SELECT term FROM ci_lease"), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_cannot_renew_gives_up_before_its_lease_expires() {
    let Some(cluster) = PgCluster::shared() else {
        return;
    };
    let (name, url) = new_database(&cluster, "lease_cut");
    PgStore::open(&url).await.expect("open");
    let config = quick();
    let mut lease = PgLease::new(url, config);
    let term = lease
        .try_take("me", &Seen::default())
        .await
        .expect("no error")
        .expect("taken");
    // Every connection of the lease is cut, and new ones are refused.
    cluster.psql(
        "postgres",
        &format!("ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS false"),
    );
    cluster.psql(
        "postgres",
        &format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"),
    );
    let started = tokio::time::Instant::now();
    let lost = tokio::time::timeout(Duration::from_secs(10), lease.keep(term))
        .await
        .expect("gives up");
    assert_eq!(lost, Lost::NotRenewed);
    assert!(
        started.elapsed() < config.ttl,
        "gave up after {:?}, not before the lease's {:?}",
        started.elapsed(),
        config.ttl
    );
}
