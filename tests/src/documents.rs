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
    with_tenant_documents(store, "default", indexes, f).await
}

/// Like [`with_documents`], on `tenant`'s documents.
pub async fn with_tenant_documents<T: Send + 'static>(
    store: &Store,
    tenant: &str,
    indexes: Indexes,
    f: impl FnOnce(&mut Documents) -> T + Send + 'static,
) -> T {
    let sync = store.sync_db(tokio::runtime::Handle::current()).expect("a synchronous connection");
    let tenant = tenant.to_string();
    tokio::task::spawn_blocking(move || {
        let mut tx = sync.begin().expect("begin");
        let out = f(&mut Documents { tx: &mut tx, tenant: &tenant, indexes: &indexes, limits: Limits::default() });
        tx.commit().expect("commit");
        out
    })
    .await
    .expect("the documents task")
}

/// Every document of `table`, in id order: (id, body).
pub async fn documents(store: &Store, table: &str) -> Vec<(String, Value)> {
    tenant_documents(store, "default", table).await
}

/// Every document of `tenant`'s `table`, in id order: (id, body).
pub async fn tenant_documents(store: &Store, tenant: &str, table: &str) -> Vec<(String, Value)> {
    let table = table.to_string();
    with_tenant_documents(store, tenant, Indexes::default(), move |docs| {
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
