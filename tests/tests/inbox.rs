//! The worker's reads of the inbox, driven directly on both backends: which
//! tenants have an event due now.

use authkit_host::store::inbox;
use authkit_tests::{TestDb, on_both_backends};

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
