//! Reading and writing handlers' document tables from a test, through the
//! host's own document store (tenant `default`), as an operator would.

use authkit_host::store::Store;
use authkit_host::store::documents::{Documents, Indexes, Limits};
use serde_json::Value;

/// Runs `f` on the `default` tenant's documents in one transaction on a
/// blocking thread, and commits.
pub async fn with_documents<T: Send + 'static>(
    store: &Store,
    indexes: Indexes,
    f: impl FnOnce(&mut Documents) -> T + Send + 'static,
) -> T {
    let sync = store.sync_db(tokio::runtime::Handle::current()).expect("a synchronous connection");
    tokio::task::spawn_blocking(move || {
        let mut tx = sync.begin().expect("begin");
        let out = f(&mut Documents { tx: &mut tx, tenant: "default", indexes: &indexes, limits: Limits::default() });
        tx.commit().expect("commit");
        out
    })
    .await
    .expect("the documents task")
}

/// Every document of `table`, in id order: (id, body).
pub async fn documents(store: &Store, table: &str) -> Vec<(String, Value)> {
    let table = table.to_string();
    with_documents(store, Indexes::default(), move |docs| {
        let (mut out, mut cursor) = (Vec::new(), None);
        loop {
            let page = docs.list(&table, 100, cursor.as_deref()).expect("list");
            out.extend(page.documents.into_iter().map(|d| (d.id, serde_json::from_str(&d.body).expect("JSON"))));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return out,
            }
        }
    })
    .await
}
