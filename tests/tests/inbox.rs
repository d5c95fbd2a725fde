//! Reads of the inbox, driven directly on both backends: which tenants have
//! an event due now, what a claim reads on Postgres, what listing a tenant's
//! newest events reads however long its history, and what pruning the
//! history deletes and reads.

use authkit_host::pipeline::retention::prune_once;
use authkit_host::store::inbox::{self, PRUNE_STEP_ROWS, Status};
use authkit_tests::{Backend, TestDb, on_both_backends};
use serde_json::Value;

on_both_backends!(
    due_tenants_are_those_with_an_event_due_now,
    listing_a_tenants_newest_events_reads_as_many_as_it_lists,
    pruning_deletes_only_done_events_processed_before_the_cutoff_and_reads_little_more
);

/// The worker's clock in this test (unix ms).
const NOW: i64 = 1_000;

const COLUMNS: &str = "INSERT INTO inbox (tenant_id, event_id, event_type, subject, occurred_at, received_at, payload, next_attempt_at, \
     status)";

async fn due_tenants_are_those_with_an_event_due_now(db: TestDb) {
    let store = db.store().await;
    // t1: 500 pending events, so the walk from tenant to tenant crosses index pages.
    db.execute(&format!(
        "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) \
         {COLUMNS} SELECT 't1', 'e' || i, 'user.updated', 'user:u', i, i, '{{}}', i, 'pending' FROM n"
    ))
    .await;
    db.execute(&format!(
        "{COLUMNS} VALUES \
         ('t0', 'a', 'user.updated', 'user:u', 1, 1, '{{}}', 1, 'done'), \
         ('t2', 'b', 'user.updated', 'user:u', 1, 1, '{{}}', 1, 'done'), \
         ('t2', 'c', 'user.updated', 'user:u', 2, 2, '{{}}', 2, 'dead'), \
         ('t3', 'd', 'user.updated', 'user:u', 1, 1, '{{}}', 5000, 'failed'), \
         ('t3', 'e', 'user.updated', 'user:u', 2, 2, '{{}}', 6000, 'failed'), \
         ('t4', 'f', 'user.updated', 'user:u', 1, 1, '{{}}', 5000, 'failed'), \
         ('t4', 'g', 'user.updated', 'user:v', 2, 2, '{{}}', 2, 'pending'), \
         ('t5', 'h', 'user.updated', 'user:u', 1, 1, '{{}}', 900, 'failed'), \
         ('t6', 'i', 'user.updated', 'user:u', 1, 1, '{{}}', 2000, 'pending')"
    ))
    .await;
    let sync = store.sync_db(tokio::runtime::Handle::current()).unwrap();
    let due = tokio::task::spawn_blocking(move || {
        let mut tx = sync.begin().unwrap();
        inbox::due_tenants(&mut tx, NOW).unwrap()
    })
    .await
    .unwrap();
    // t0 and t2 have nothing unfinished, t3 only retries not yet due, t6 an
    // event not due before 2000; t4 has a due event behind a waiting one.
    assert_eq!(due, ["t1", "t4", "t5"]);
}

/// Postgres: a claim checks each candidate for an older unfinished event of
/// its subject with one probe of the subject index, also while the table's
/// statistics are stale (nothing has analyzed it since it was filled, as after
/// a burst of webhooks). Counted in the buffers the claim reads (EXPLAIN
/// ANALYZE), not in time: written as `NOT EXISTS`, the check was planned to
/// read every unfinished event of the tenant for each candidate, 846 ms for
/// one claim with 10,000 events queued, during which every other tenant waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_claim_reads_one_probe_per_candidate_with_stale_statistics() {
    let Some(db) = TestDb::create(Backend::Postgres, "claim_reads").await else { return };
    let _store = db.store().await; // migrated
    db.execute(&format!(
        "{COLUMNS} SELECT 'noisy', 'e' || i, 'user.updated', 'user:' || i, i, i, '{{}}', i, 'pending' \
         FROM generate_series(1, 10000) AS i"
    ))
    .await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let (plan,): (Value,) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}",
        inbox::CLAIM_SQL_POSTGRES
    )))
    .bind(20_000_i64)
    .bind(100_i64)
    .bind("noisy")
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    let top = &plan[0]["Plan"];
    assert_eq!(top["Actual Rows"], 100, "{plan:#}");
    let read = top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap();
    eprintln!("one claim of 100 with 10,000 queued read {read} buffers");
    assert!(read < 5_000, "one claim of 100 read {read} buffers: {plan:#}");
}

/// `events list` (and `GET /admin/events`) shows a tenant's newest events.
/// Done events stay in the inbox, so a tenant's history only grows; the
/// listing must read about as many rows as it lists, not the whole history:
/// it took 1.3 s on SQLite for a tenant with 1,000,000 events, which read and
/// sorted all of them. Counted in SQLite's virtual-machine steps and in
/// Postgres's buffers (EXPLAIN ANALYZE, statistics never gathered), for each
/// filter the command has, with 100,000 events of one tenant beside a few of
/// another (`$n` parameters in order: tenant, type, limit).
async fn listing_a_tenants_newest_events_reads_as_many_as_it_lists(db: TestDb) {
    let store = db.store().await;
    let rows = match db.backend {
        Backend::Sqlite => {
            "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) SELECT i FROM n"
        }
        Backend::Postgres => "SELECT i FROM generate_series(1, 100000) AS i",
    };
    // Most done; every 1,000th dead, every 100th of another type, the newest 300 pending.
    db.execute(&format!(
        "{COLUMNS} SELECT 'big', 'e' || i, CASE WHEN i % 100 = 0 THEN 'session.created' ELSE 'user.updated' END, \
         'user:' || (i % 5000), i, i, '{{}}', i, \
         CASE WHEN i > 99700 THEN 'pending' WHEN i % 1000 = 0 THEN 'dead' ELSE 'done' END FROM ({rows}) AS n"
    ))
    .await;
    db.execute(&format!("{COLUMNS} SELECT 'small', 's' || i, 'user.created', 'user:s', i, i, '{{}}', i, 'done' FROM ({rows}) AS n WHERE i <= 20")).await;
    let cases = [
        (None, None, 50),
        (Some(Status::Done), None, 50),
        (Some(Status::Dead), None, 50),
        (Some(Status::Pending), None, 50),
        (None, Some("session.created"), 50),
    ];
    for (status, event_type, expected) in cases {
        let sql = inbox::list_events_sql(status, event_type.is_some());
        let work = match db.backend {
            Backend::Sqlite => {
                let path = db.dir.path().join("authkit.db");
                let conn =
                    rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
                let mut statement = conn.prepare(&sql).unwrap();
                let mut params: Vec<&dyn rusqlite::ToSql> = vec![&"big"];
                if let Some(t) = &event_type {
                    params.push(t);
                }
                params.push(&50_i64);
                let listed = statement.query_map(params.as_slice(), |_| Ok(())).unwrap().count();
                assert_eq!(listed, expected, "{status:?} {event_type:?}");
                i64::from(statement.get_status(rusqlite::StatementStatus::VmStep))
            }
            Backend::Postgres => {
                let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
                let explain = format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}");
                let mut query = sqlx::query_as::<_, (Value,)>(sqlx::AssertSqlSafe(explain)).bind("big");
                if let Some(t) = event_type {
                    query = query.bind(t);
                }
                let (plan,) = query.bind(50_i64).fetch_one(&pool).await.unwrap();
                pool.close().await;
                let top = &plan[0]["Plan"];
                assert_eq!(top["Actual Rows"], expected, "{status:?} {event_type:?}: {plan:#}");
                top["Shared Hit Blocks"].as_i64().unwrap() + top["Shared Read Blocks"].as_i64().unwrap()
            }
        };
        eprintln!("listing {status:?} {event_type:?} of 100,000 events: {work}");
        // Read and sorted whole, the history took 2,240,807 steps on SQLite
        // and 2,160 buffers on Postgres to list all statuses (14,187 and 15
        // now). A type filter reads past the other types (here 99 in 100),
        // in order, unsorted.
        let bound = match (db.backend, event_type.is_some()) {
            (Backend::Sqlite, false) => 50_000,
            (Backend::Sqlite, true) => 200_000,
            (Backend::Postgres, false) => 200,
            (Backend::Postgres, true) => 1_000,
        };
        assert!(work < bound, "listing {status:?} {event_type:?} took {work} (bound {bound})");
    }
    // What the store lists: each tenant's own, newest first, the statuses
    // merged in order (the newest 1,500 cross pending, done and one dead).
    let filter = |tenant: &str, status, event_type: Option<&str>, limit| inbox::EventFilter {
        tenant: tenant.into(),
        status,
        event_type: event_type.map(String::from),
        limit,
    };
    let occurred = |events: &[inbox::InboxEvent]| events.iter().map(|e| e.occurred_at).collect::<Vec<i64>>();
    let newest = store.list_events(&filter("big", None, None, 1_500)).await.unwrap();
    assert_eq!(occurred(&newest), (98_501..=100_000).rev().collect::<Vec<i64>>());
    let status_of = |at: i64| newest.iter().find(|e| e.occurred_at == at).unwrap().status.as_str();
    assert_eq!([status_of(100_000), status_of(99_001), status_of(99_000)], ["pending", "done", "dead"]);
    let dead = store.list_events(&filter("big", Some(Status::Dead), None, 2)).await.unwrap();
    assert_eq!(occurred(&dead), [99_000, 98_000]);
    let sessions = store.list_events(&filter("big", None, Some("session.created"), 5)).await.unwrap();
    assert_eq!(occurred(&sessions), [100_000, 99_900, 99_800, 99_700, 99_600]);
    let small = store.list_events(&filter("small", None, None, 50)).await.unwrap();
    assert_eq!(occurred(&small), (1..=20).rev().collect::<Vec<i64>>());
    assert!(small.iter().all(|e| e.tenant_id == "small"));
}

/// Pruning (`inbox.keep_done_days`) deletes the done events processed before
/// the cut-off, and nothing else: not unfinished or dead events however old,
/// nor old events processed late. It walks the history from its oldest event
/// and stops at the first step that reaches events received after the
/// cut-off, so it reads the old events and at most one step more, however
/// many newer ones there are.
async fn pruning_deletes_only_done_events_processed_before_the_cutoff_and_reads_little_more(db: TestDb) {
    let store = db.store().await;
    const CUTOFF: i64 = 1_000_000;
    const OLD: i64 = 1_500;
    const NEW: i64 = 5_000;
    let numbers = match db.backend {
        Backend::Sqlite => {
            "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 6500) SELECT i FROM n"
        }
        Backend::Postgres => "SELECT i FROM generate_series(1, 6500) AS i",
    };
    // Received in seq order. The old ones: by i % 10, 0 dead, 1 pending,
    // 2 failed, 3 done but processed after the cut-off (a backlog), the rest
    // done before it. The new ones: done just after they were received.
    db.execute(&format!(
        "INSERT INTO inbox (tenant_id, event_id, event_type, subject, occurred_at, received_at, payload, \
         next_attempt_at, status, processed_at) \
         SELECT CASE WHEN i % 2 = 0 THEN 'a' ELSE 'b' END, 'e' || i, 'user.updated', 'user:u', i, r, '{{}}', r, \
         CASE WHEN i > {OLD} THEN 'done' WHEN i % 10 = 0 THEN 'dead' WHEN i % 10 = 1 THEN 'pending' \
              WHEN i % 10 = 2 THEN 'failed' ELSE 'done' END, \
         CASE WHEN i > {OLD} THEN r + 1 WHEN i % 10 = 3 THEN {CUTOFF} + 5 WHEN i % 10 >= 4 THEN r + 5 END \
         FROM (SELECT i, CASE WHEN i > {OLD} THEN {CUTOFF} + i ELSE i END AS r FROM ({numbers}) AS n) AS m ORDER BY i"
    ))
    .await;
    let remaining = || async {
        let mut kept = Vec::new();
        for tenant in ["a", "b"] {
            for status in [Status::Pending, Status::Failed, Status::Done, Status::Dead] {
                let filter =
                    inbox::EventFilter { tenant: tenant.into(), status: Some(status), event_type: None, limit: 10_000 };
                kept.extend(store.list_events(&filter).await.unwrap().into_iter().map(|e| e.occurred_at));
            }
        }
        kept.sort_unstable();
        kept
    };
    let stop = tokio_util::sync::CancellationToken::new();

    let first = prune_once(&store, CUTOFF, &stop).await.unwrap();
    let expected: Vec<i64> = (1..=OLD + NEW).filter(|i| *i > OLD || i % 10 <= 3).collect();
    assert_eq!(remaining().await, expected);
    assert_eq!(first.deleted, (OLD as u64) * 6 / 10);
    // Without the stop it reads all 6,500.
    assert!(first.rows <= (OLD + PRUNE_STEP_ROWS) as u64, "the first pass read {} rows", first.rows);

    let second = prune_once(&store, CUTOFF, &stop).await.unwrap();
    assert_eq!(second.deleted, 0);
    assert!(second.rows <= (OLD * 4 / 10 + PRUNE_STEP_ROWS) as u64, "the second pass read {} rows", second.rows);
    assert_eq!(remaining().await, expected);

    // A later cut-off reaches the backlog's events and the newer ones.
    let later = prune_once(&store, CUTOFF + 3_000, &stop).await.unwrap();
    let expected: Vec<i64> = (1..=OLD + NEW)
        .filter(|i| (*i > OLD && CUTOFF + i + 1 >= CUTOFF + 3_000) || (*i <= OLD && i % 10 <= 2))
        .collect();
    assert_eq!(later.deleted, (OLD as u64) / 10 + 1_498);
    assert_eq!(remaining().await, expected);

    // A pass asked to stop does nothing more.
    stop.cancel();
    assert_eq!(prune_once(&store, i64::MAX, &stop).await.unwrap().deleted, 0);
    assert_eq!(remaining().await, expected);
}
