//! The worker's reads of the inbox, driven directly on both backends: which
//! tenants have an event due now, and what a claim reads on Postgres.

use authkit_host::store::inbox;
use authkit_tests::{Backend, TestDb, on_both_backends};
use serde_json::Value;

on_both_backends!(due_tenants_are_those_with_an_event_due_now);

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
