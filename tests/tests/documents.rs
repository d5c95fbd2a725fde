//! The document store behind the WIT `db` interface, driven directly (the
//! handler tests drive it through real components): validation, paging, index
//! maintenance and backfill, rollback, and tenant scoping, on both backends.

use authkit_host::store::Store;
use authkit_host::store::documents::{DocError, Documents, Indexes, Limits};
use authkit_host::store::exec::SyncDb;
use authkit_tests::{Backend, TestDb, on_both_backends};
use sqlx::ConnectOptions;

on_both_backends!(
    documents_round_trip_and_validate,
    find_uses_declared_indexes_and_pages,
    indexes_follow_every_write_and_backfill,
    rolled_back_writes_leave_nothing,
    tenants_do_not_see_each_other,
    documents_stored_before_seq_are_found_after_the_upgrade,
);

fn indexes(pairs: &[(&str, &str)]) -> Indexes {
    Indexes::new(pairs.iter().map(|(t, f)| (t.to_string(), f.to_string()))).unwrap()
}

/// Runs `f` on a blocking thread with a synchronous database, as the worker does.
async fn with_sync_db<T: Send + 'static>(store: &Store, f: impl FnOnce(&mut SyncDb) -> T + Send + 'static) -> T {
    let mut db = store.sync_db(tokio::runtime::Handle::current()).unwrap();
    tokio::task::spawn_blocking(move || f(&mut db)).await.unwrap()
}

async fn documents_round_trip_and_validate(db: TestDb) {
    let store = db.store().await;
    with_sync_db(&store, |sync| {
        let idx = Indexes::default();
        let mut tx = sync.begin().unwrap();
        let mut docs = Documents { tx: &mut tx, tenant: "default", indexes: &idx, limits: Limits::default() };
        let id = docs.insert("todoLists", r#"{"name":"Ada's list","items":[1,2]}"#).unwrap();
        let doc = docs.get("todoLists", &id).unwrap().unwrap();
        assert_eq!(doc.body, r#"{"name":"Ada's list","items":[1,2]}"#);
        assert_eq!(doc.created_at, doc.updated_at);

        let patched = docs.patch("todoLists", &id, r#"{"name":"Renamed","items":null,"done":false}"#).unwrap();
        let body: serde_json::Value = serde_json::from_str(&patched.body).unwrap();
        assert_eq!(body, serde_json::json!({"name": "Renamed", "done": false}));
        let replaced = docs.replace("todoLists", &id, r#"{"only":1}"#).unwrap();
        assert_eq!(replaced.body, r#"{"only":1}"#);
        assert_eq!(replaced.created_at, doc.created_at);

        // Bad input: typed errors, nothing written.
        assert!(matches!(docs.insert("1bad", "{}"), Err(DocError::InvalidTableName(_))));
        assert!(matches!(docs.insert("users; DROP TABLE inbox", "{}"), Err(DocError::InvalidTableName(_))));
        assert!(matches!(docs.insert("t", "[1]"), Err(DocError::InvalidDocument(_))));
        assert!(matches!(docs.insert("t", "{not json"), Err(DocError::InvalidDocument(_))));
        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(1024 * 1024));
        assert!(matches!(docs.insert("t", &big), Err(DocError::DocumentTooLarge(1_048_576))));
        assert!(matches!(docs.patch("todoLists", "00000000000000000000", "{}"), Err(DocError::NotFound)));
        assert!(matches!(docs.replace("todoLists", "not-an-id", "{}"), Err(DocError::NotFound)));
        assert!(matches!(docs.find("todoLists", "name", "\"x\"", 10, None), Err(DocError::NotIndexed(_))));
        assert!(matches!(docs.list("todoLists", 10, Some("garbage")), Err(DocError::InvalidCursor)));
        assert_eq!(docs.list("t", 10, None).unwrap().documents.len(), 0);

        assert!(docs.delete("todoLists", &id).unwrap());
        assert!(!docs.delete("todoLists", &id).unwrap());
        assert_eq!(docs.get("todoLists", &id).unwrap(), None);
        tx.commit().unwrap();
    })
    .await;
}

async fn find_uses_declared_indexes_and_pages(db: TestDb) {
    let store = db.store().await;
    with_sync_db(&store, |sync| {
        let idx = indexes(&[("users", "authId"), ("users", "age")]);
        let mut tx = sync.begin().unwrap();
        let mut docs = Documents { tx: &mut tx, tenant: "default", indexes: &idx, limits: Limits::default() };
        docs.sync_indexes().unwrap();
        let mut ids = Vec::new();
        for i in 0..250 {
            let body = serde_json::json!({"authId": format!("user_{}", i % 2), "age": i % 3, "n": i}).to_string();
            ids.push(docs.insert("users", &body).unwrap());
        }
        // Paging through one value returns each match once, in id order.
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = docs.find("users", "authId", "\"user_1\"", 1000, cursor.as_deref()).unwrap();
            assert!(page.documents.len() <= 100, "pages are capped");
            seen.extend(page.documents.into_iter().map(|d| d.id));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let expected: Vec<String> =
            ids.iter().enumerate().filter(|(i, _)| i % 2 == 1).map(|(_, id)| id.clone()).collect();
        assert_eq!(seen, expected);
        // Numbers compare by value.
        let twos = docs.find("users", "age", "2.0", 100, None).unwrap();
        assert_eq!(twos.documents.len(), 83);
        assert!(matches!(docs.find("users", "authId", "{}", 10, None), Err(DocError::InvalidValue(_))));
        assert!(matches!(docs.find("users", "authId", "nope", 10, None), Err(DocError::InvalidValue(_))));
        let listed = docs.list("users", 100, None).unwrap();
        assert_eq!(listed.documents.len(), 100);
        assert_eq!(listed.next_cursor.as_deref(), Some(ids[99].as_str()));
        tx.commit().unwrap();
    })
    .await;
}

async fn indexes_follow_every_write_and_backfill(db: TestDb) {
    let store = db.store().await;
    with_sync_db(&store, |sync| {
        // Documents written before the index is declared.
        let none = Indexes::default();
        let mut tx = sync.begin().unwrap();
        let mut docs = Documents { tx: &mut tx, tenant: "default", indexes: &none, limits: Limits::default() };
        let a = docs.insert("users", r#"{"authId":"a"}"#).unwrap();
        docs.insert("users", r#"{"authId":"b"}"#).unwrap();
        tx.commit().unwrap();

        let idx = indexes(&[("users", "authId")]);
        let mut tx = sync.begin().unwrap();
        let mut docs = Documents { tx: &mut tx, tenant: "default", indexes: &idx, limits: Limits::default() };
        docs.sync_indexes().unwrap();
        let found = |docs: &mut Documents, v: &str| -> Vec<String> {
            docs.find("users", "authId", v, 100, None).unwrap().documents.into_iter().map(|d| d.id).collect()
        };
        assert_eq!(found(&mut docs, "\"a\""), vec![a.clone()]);
        docs.patch("users", &a, r#"{"authId":"c"}"#).unwrap();
        assert!(found(&mut docs, "\"a\"").is_empty());
        assert_eq!(found(&mut docs, "\"c\""), vec![a.clone()]);
        docs.replace("users", &a, r#"{"other":1}"#).unwrap();
        assert!(found(&mut docs, "\"c\"").is_empty());
        docs.replace("users", &a, r#"{"authId":"d"}"#).unwrap();
        assert_eq!(found(&mut docs, "\"d\""), vec![a.clone()]);
        docs.delete("users", &a).unwrap();
        assert!(found(&mut docs, "\"d\"").is_empty());
        tx.commit().unwrap();

        // Dropping the declaration drops its entries; declaring again rebuilds them.
        let mut tx = sync.begin().unwrap();
        Documents { tx: &mut tx, tenant: "default", indexes: &none, limits: Limits::default() }.sync_indexes().unwrap();
        let count = tx.query("SELECT COUNT(*) FROM document_index_entries", &[]).unwrap();
        assert_eq!(count[0][0].as_i64(), Some(0));
        let mut docs = Documents { tx: &mut tx, tenant: "default", indexes: &idx, limits: Limits::default() };
        docs.sync_indexes().unwrap();
        assert_eq!(found(&mut docs, "\"b\"").len(), 1);
        tx.commit().unwrap();
    })
    .await;
}

async fn rolled_back_writes_leave_nothing(db: TestDb) {
    let store = db.store().await;
    with_sync_db(&store, |sync| {
        let idx = indexes(&[("users", "authId")]);
        let mut tx = sync.begin().unwrap();
        let mut docs = Documents { tx: &mut tx, tenant: "default", indexes: &idx, limits: Limits::default() };
        docs.sync_indexes().unwrap();
        let kept = docs.insert("users", r#"{"authId":"kept"}"#).unwrap();
        tx.savepoint("event").unwrap();
        let mut docs = Documents { tx: &mut tx, tenant: "default", indexes: &idx, limits: Limits::default() };
        docs.insert("users", r#"{"authId":"undone"}"#).unwrap();
        docs.delete("users", &kept).unwrap();
        tx.rollback_to("event").unwrap();
        tx.commit().unwrap();

        let mut tx = sync.begin().unwrap();
        let mut docs = Documents { tx: &mut tx, tenant: "default", indexes: &idx, limits: Limits::default() };
        assert!(docs.get("users", &kept).unwrap().is_some());
        assert_eq!(docs.find("users", "authId", "\"kept\"", 10, None).unwrap().documents.len(), 1);
        assert!(docs.find("users", "authId", "\"undone\"", 10, None).unwrap().documents.is_empty());
        docs.insert("users", r#"{"authId":"dropped"}"#).unwrap();
        drop(tx); // never committed

        let mut tx = sync.begin().unwrap();
        let mut docs = Documents { tx: &mut tx, tenant: "default", indexes: &idx, limits: Limits::default() };
        assert_eq!(docs.list("users", 100, None).unwrap().documents.len(), 1);
    })
    .await;
}

async fn tenants_do_not_see_each_other(db: TestDb) {
    let store = db.store().await;
    with_sync_db(&store, |sync| {
        let idx = indexes(&[("users", "authId")]);
        let mut tx = sync.begin().unwrap();
        let mut a = Documents { tx: &mut tx, tenant: "tenant_a", indexes: &idx, limits: Limits::default() };
        a.sync_indexes().unwrap();
        let id = a.insert("users", r#"{"authId":"same"}"#).unwrap();
        assert_eq!(a.find("users", "authId", "\"same\"", 10, None).unwrap().documents.len(), 1);
        let mut b = Documents { tx: &mut tx, tenant: "tenant_b", indexes: &idx, limits: Limits::default() };
        b.sync_indexes().unwrap();
        assert_eq!(b.get("users", &id).unwrap(), None);
        assert!(b.find("users", "authId", "\"same\"", 10, None).unwrap().documents.is_empty());
        assert!(b.list("users", 10, None).unwrap().documents.is_empty());
        assert!(matches!(b.patch("users", &id, "{}"), Err(DocError::NotFound)));
        assert!(!b.delete("users", &id).unwrap());
        let mut a = Documents { tx: &mut tx, tenant: "tenant_a", indexes: &idx, limits: Limits::default() };
        assert!(a.get("users", &id).unwrap().is_some());
        tx.commit().unwrap();
    })
    .await;
}

/// Migration 0011 gave every document a `seq` and every index entry its
/// document's `seq`: a database written by an earlier version must keep every
/// document findable, and drop entries that pointed at nothing.
async fn documents_stored_before_seq_are_found_after_the_upgrade(db: TestDb) {
    // The schema as the previous version left it.
    match db.backend {
        Backend::Sqlite => {
            let options = db.url.parse::<sqlx::sqlite::SqliteConnectOptions>().unwrap().create_if_missing(true);
            let mut conn = options.connect().await.unwrap();
            sqlx::migrate!("../host/migrations/sqlite").run_to(10, &mut conn).await.unwrap();
        }
        Backend::Postgres => {
            let mut conn = db.url.parse::<sqlx::postgres::PgConnectOptions>().unwrap().connect().await.unwrap();
            sqlx::migrate!("../host/migrations/postgres").run_to(10, &mut conn).await.unwrap();
        }
    }
    let (ada, other, orphan) = ("00000000000000010000", "00000000000000020000", "00000000000000030000");
    db.execute(&format!(
        "INSERT INTO documents (tenant_id, tbl, id, body, created_at, updated_at) VALUES \
         ('default', 'users', '{ada}', '{{\"authId\":\"ada\"}}', 1, 1), \
         ('tenant_b', 'users', '{other}', '{{\"authId\":\"ada\"}}', 1, 1); \
         INSERT INTO document_indexes (tenant_id, tbl, field, created_at) VALUES \
         ('default', 'users', 'authId', 1), ('tenant_b', 'users', 'authId', 1); \
         INSERT INTO document_index_entries (tenant_id, tbl, field, value_key, doc_id) VALUES \
         ('default', 'users', 'authId', 's:ada', '{ada}'), ('tenant_b', 'users', 'authId', 's:ada', '{other}'), \
         ('default', 'users', 'authId', 's:gone', '{orphan}');"
    ))
    .await;

    let store = db.store().await; // migrates to the current schema
    with_sync_db(&store, move |sync| {
        let idx = indexes(&[("users", "authId")]);
        let mut tx = sync.begin().unwrap();
        let entries = tx.query("SELECT COUNT(*) FROM document_index_entries", &[]).unwrap();
        assert_eq!(entries[0][0].as_i64(), Some(2), "the orphan entry is dropped, the others kept");
        let mut docs = Documents { tx: &mut tx, tenant: "default", indexes: &idx, limits: Limits::default() };
        let found = docs.find("users", "authId", "\"ada\"", 10, None).unwrap().documents;
        assert_eq!(found.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), [ada]);
        assert!(docs.find("users", "authId", "\"gone\"", 10, None).unwrap().documents.is_empty());
        // Writes after the upgrade keep the entries right.
        docs.patch("users", ada, r#"{"authId":"ada2"}"#).unwrap();
        let new = docs.insert("users", r#"{"authId":"bob"}"#).unwrap();
        assert_eq!(docs.find("users", "authId", "\"ada2\"", 10, None).unwrap().documents[0].id, ada);
        assert!(docs.find("users", "authId", "\"ada\"", 10, None).unwrap().documents.is_empty());
        assert_eq!(docs.find("users", "authId", "\"bob\"", 10, None).unwrap().documents[0].id, new);
        let mut b = Documents { tx: &mut tx, tenant: "tenant_b", indexes: &idx, limits: Limits::default() };
        let found = b.find("users", "authId", "\"ada\"", 10, None).unwrap().documents;
        assert_eq!(found.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(), [other]);
        tx.commit().unwrap();
    })
    .await;
}
