//! The document tables behind the WIT `db` interface: named tables of JSON
//! objects per tenant, with host-assigned ids and times, and declared equality
//! indexes.
//!
//! Owns: table-name and document validation, the id scheme, the canonical form
//! of indexed values, index maintenance and backfill, paging cursors, and every
//! statement on `documents`, `document_indexes` and `document_index_entries`.
//! Must not: commit (the caller's transaction decides), or ever put a name the
//! guest chose into SQL text: names are bound as values, so no name reaches
//! another table, and the tenant id comes from the host, never the guest.
//!
//! Indexes: a handler declares `(table, field)` pairs. For each, every document
//! whose top-level `field` is a string, number, boolean or null has one row in
//! `document_index_entries`, keyed by the value's canonical form, so `find` is
//! one B-tree range however large the table is. Each entry records its
//! document's `seq` too, which SQLite reads the row by (see `FIND`). `find` on
//! an undeclared field is the typed error [`DocError::NotIndexed`]: no silent
//! full scans.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

use super::StoreError;
use super::exec::{SyncTx, Value};
use crate::clock;

/// Per-call limits (the WIT `db` interface documents the defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Largest document, in bytes of JSON.
    pub max_document_bytes: usize,
    /// Most documents in one page.
    pub max_page: u32,
    /// The tenant's document quota: most documents in all its tables
    /// together (`None`: no quota).
    pub max_documents: Option<u64>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { max_document_bytes: 1024 * 1024, max_page: 100, max_documents: None }
    }
}

/// Why a call did nothing. Each maps to a variant of the WIT `db.error`.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("invalid table name: {0}")]
    InvalidTableName(String),
    #[error("invalid document: {0}")]
    InvalidDocument(String),
    #[error("document larger than {0} bytes")]
    DocumentTooLarge(u32),
    #[error("no such document")]
    NotFound,
    #[error("field `{0}` is not a declared index of this table")]
    NotIndexed(String),
    #[error("invalid value: {0}")]
    InvalidValue(String),
    #[error("invalid cursor")]
    InvalidCursor,
    /// The tenant already has its quota of documents (carried).
    #[error("the tenant's document quota of {0} documents is used up")]
    QuotaExceeded(u64),
    /// A host fault, not the guest's: the invocation traps.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A stored document.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub id: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// A JSON object.
    pub body: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub documents: Vec<Document>,
    pub next_cursor: Option<String>,
}

/// The declared indexes of one handler: table → fields.
#[derive(Debug, Clone, Default)]
pub struct Indexes(HashMap<String, Vec<String>>);

impl Indexes {
    /// Validates the declarations (names follow the table-name rule).
    pub fn new(declared: impl IntoIterator<Item = (String, String)>) -> Result<Indexes, String> {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (table, field) in declared {
            check_name(&table).map_err(|e| format!("index on table `{table}`: {e}"))?;
            check_name(&field).map_err(|e| format!("index on field `{field}` of `{table}`: {e}"))?;
            let fields = map.entry(table).or_default();
            if !fields.contains(&field) {
                fields.push(field);
            }
        }
        Ok(Indexes(map))
    }

    pub fn contains(&self, table: &str, field: &str) -> bool {
        self.fields(table).iter().any(|f| f == field)
    }

    fn fields(&self, table: &str) -> &[String] {
        self.0.get(table).map_or(&[], Vec::as_slice)
    }

    /// Every `(table, field)` pair.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().flat_map(|(t, fs)| fs.iter().map(move |f| (t.as_str(), f.as_str())))
    }

    /// Whether every index of `other` is one of these.
    pub fn covers(&self, other: &Indexes) -> bool {
        other.pairs().all(|(t, f)| self.contains(t, f))
    }

    /// The same set of indexes, whatever the order they were declared in.
    pub fn same_as(&self, other: &Indexes) -> bool {
        self.covers(other) && other.covers(self)
    }
}

/// One tenant's view of the document tables, inside one transaction.
pub struct Documents<'a> {
    pub tx: &'a mut SyncTx,
    pub tenant: &'a str,
    pub indexes: &'a Indexes,
    pub limits: Limits,
}

const MAX_NAME_LEN: usize = 64;

/// Table and field names: 1 to 64 characters, an ASCII letter, then ASCII
/// letters, digits or `_`.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    match chars.next() {
        None => return Err("the name is empty".into()),
        Some(c) if !c.is_ascii_alphabetic() => return Err("the name must start with an ASCII letter".into()),
        _ => {}
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("the name is longer than {MAX_NAME_LEN} characters"));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err("the name may hold only ASCII letters, digits and `_`".into());
    }
    Ok(())
}

/// Ids: 16 hex digits of (unix ms << 20 | sequence), strictly increasing in this
/// process, then 4 random hex digits so processes sharing a database do not collide.
pub fn new_id() -> String {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = (clock::now_ms().max(0) as u64) << 20;
    let mut last = LAST.load(Ordering::Relaxed);
    let stamp = loop {
        let next = now.max(last + 1);
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => break next,
            Err(seen) => last = seen,
        }
    };
    format!("{stamp:016x}{:04x}", rand::random::<u16>())
}

fn looks_like_id(s: &str) -> bool {
    s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Longest value key kept as is; longer ones are replaced by their SHA-256.
const MAX_PLAIN_KEY: usize = 256;

/// The canonical form of an indexable value: equal JSON scalars get equal keys
/// (`1`, `1.0` and `1e0` included). Objects and arrays have none.
pub fn value_key(value: &Json) -> Option<String> {
    let key = match value {
        Json::Null => "z".to_string(),
        Json::Bool(b) => format!("b:{}", u8::from(*b)),
        Json::String(s) => format!("s:{s}"),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                format!("n:{i}")
            } else if let Some(u) = n.as_u64() {
                format!("n:{u}")
            } else {
                let f = n.as_f64()?;
                if f.fract() == 0.0 && f.abs() < 9.0e15 { format!("n:{}", f as i64) } else { format!("n:{f:e}") }
            }
        }
        Json::Array(_) | Json::Object(_) => return None,
    };
    if key.len() <= MAX_PLAIN_KEY {
        Some(key)
    } else {
        Some(format!("h:{}", hex::encode(Sha256::digest(key.as_bytes()))))
    }
}

/// The columns [`document`] reads, then `seq` (which index entries record).
const SELECT_DOC: &str =
    "SELECT id, created_at, updated_at, body, seq FROM documents WHERE tenant_id = $1 AND tbl = $2 AND id = $3";
const INSERT_DOC: &str = "INSERT INTO documents (tenant_id, tbl, id, body, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $5) RETURNING seq";
const UPDATE_DOC: &str =
    "UPDATE documents SET body = $4, updated_at = $5 WHERE tenant_id = $1 AND tbl = $2 AND id = $3";
const DELETE_DOC: &str = "DELETE FROM documents WHERE tenant_id = $1 AND tbl = $2 AND id = $3";
/// Counts one more document, unless the tenant already has `$2`: no row changes then.
const COUNT_INSERT: &str = "INSERT INTO document_counts (tenant_id, documents) VALUES ($1, 1) \
     ON CONFLICT (tenant_id) DO UPDATE SET documents = document_counts.documents + 1 \
     WHERE document_counts.documents < $2";
const COUNT_DELETE: &str = "UPDATE document_counts SET documents = documents - 1 WHERE tenant_id = $1";
const INSERT_ENTRY: &str = "INSERT INTO document_index_entries (tenant_id, tbl, field, value_key, doc_id, doc_seq) \
     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";
const DELETE_ENTRY: &str = "DELETE FROM document_index_entries \
     WHERE tenant_id = $1 AND tbl = $2 AND field = $3 AND value_key = $4 AND doc_id = $5";
// `find` and `list` end with a literal `LIMIT n`, not a parameter: SQLite's
// planner reads a bound LIMIT, which marks the statement to be prepared again
// whenever it is rebound (measured: a third of a handler's time went there).
// `find` joins on `seq` and on the document's key. SQLite goes by `seq`, the
// rowid: one shallow descent (see migration 0011). Postgres, which has no index
// on `seq`, goes by its primary key. Either way only the entry's own document
// can match.
const FIND: &str = "SELECT d.id, d.created_at, d.updated_at, d.body FROM document_index_entries i \
     JOIN documents d ON d.seq = i.doc_seq AND d.tenant_id = i.tenant_id AND d.tbl = i.tbl AND d.id = i.doc_id \
     WHERE i.tenant_id = $1 AND i.tbl = $2 AND i.field = $3 AND i.value_key = $4 AND i.doc_id > $5 \
     ORDER BY i.doc_id LIMIT ";
const LIST: &str = "SELECT id, created_at, updated_at, body FROM documents \
     WHERE tenant_id = $1 AND tbl = $2 AND id > $3 ORDER BY id LIMIT ";

impl Documents<'_> {
    pub fn insert(&mut self, table: &str, body: &str) -> Result<String, DocError> {
        check_table(table)?;
        let object = self.parse_object(body)?;
        let quota = self.limits.max_documents;
        let room = quota.map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX));
        if self.tx.execute(COUNT_INSERT, &[self.tenant.into(), room.into()])? == 0 {
            return Err(DocError::QuotaExceeded(quota.unwrap_or(u64::MAX)));
        }
        let id = new_id();
        let now = clock::now_ms();
        let row = self
            .tx
            .query_one(INSERT_DOC, &[self.tenant.into(), table.into(), id.as_str().into(), body.into(), now.into()])?;
        let seq = row
            .and_then(|row| row.into_iter().next()?.as_i64())
            .ok_or_else(|| DocError::Store(StoreError::Corrupt("inserting a document returned no seq".into())))?;
        self.add_entries(table, &id, seq, &object)?;
        Ok(id)
    }

    pub fn get(&mut self, table: &str, id: &str) -> Result<Option<Document>, DocError> {
        Ok(self.stored(table, id)?.map(|(document, _)| document))
    }

    /// A document and its `seq`.
    fn stored(&mut self, table: &str, id: &str) -> Result<Option<(Document, i64)>, DocError> {
        check_table(table)?;
        if !looks_like_id(id) {
            return Ok(None);
        }
        let Some(row) = self.tx.query_one(SELECT_DOC, &[self.tenant.into(), table.into(), id.into()])? else {
            return Ok(None);
        };
        let seq = row.get(4).and_then(Value::as_i64);
        let seq = seq.ok_or_else(|| DocError::Store(StoreError::Corrupt("a document has no seq".into())))?;
        Ok(Some((document(row)?, seq)))
    }

    pub fn patch(&mut self, table: &str, id: &str, fields: &str) -> Result<Document, DocError> {
        let fields = self.parse_object(fields)?;
        let (old, seq) = self.stored(table, id)?.ok_or(DocError::NotFound)?;
        let mut merged = parse_stored(&old.body)?;
        for (name, value) in fields {
            if value.is_null() {
                merged.remove(&name);
            } else {
                merged.insert(name, value);
            }
        }
        let body = Json::Object(merged).to_string();
        self.write(table, old, seq, body)
    }

    pub fn replace(&mut self, table: &str, id: &str, body: &str) -> Result<Document, DocError> {
        self.parse_object(body)?;
        let (old, seq) = self.stored(table, id)?.ok_or(DocError::NotFound)?;
        self.write(table, old, seq, body.to_string())
    }

    pub fn delete(&mut self, table: &str, id: &str) -> Result<bool, DocError> {
        let Some(old) = self.get(table, id)? else {
            return Ok(false);
        };
        let old_body = parse_stored(&old.body)?;
        self.remove_entries(table, id, &old_body)?;
        self.tx.execute(DELETE_DOC, &[self.tenant.into(), table.into(), id.into()])?;
        self.tx.execute(COUNT_DELETE, &[self.tenant.into()])?;
        Ok(true)
    }

    pub fn find(
        &mut self,
        table: &str,
        field: &str,
        value: &str,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<Page, DocError> {
        check_table(table)?;
        if !self.indexes.fields(table).iter().any(|f| f == field) {
            return Err(DocError::NotIndexed(field.to_string()));
        }
        let value: Json = serde_json::from_str(value).map_err(|e| DocError::InvalidValue(e.to_string()))?;
        let key = value_key(&value)
            .ok_or_else(|| DocError::InvalidValue("only a string, number, boolean or null can be looked up".into()))?;
        let (after, limit) = self.page_bounds(limit, cursor)?;
        let rows = self.tx.query(
            &format!("{FIND}{}", limit + 1),
            &[self.tenant.into(), table.into(), field.into(), key.into(), after.into()],
        )?;
        page(rows, limit)
    }

    pub fn list(&mut self, table: &str, limit: u32, cursor: Option<&str>) -> Result<Page, DocError> {
        check_table(table)?;
        let (after, limit) = self.page_bounds(limit, cursor)?;
        let rows = self.tx.query(&format!("{LIST}{}", limit + 1), &[self.tenant.into(), table.into(), after.into()])?;
        page(rows, limit)
    }

    /// Brings the tenant's index entries in line with `indexes`: builds the
    /// entries of newly declared indexes from the documents already stored, and
    /// drops indexes no longer declared (their entries would go stale).
    pub fn sync_indexes(&mut self) -> Result<(), DocError> {
        let existing: Vec<(String, String)> = self
            .tx
            .query("SELECT tbl, field FROM document_indexes WHERE tenant_id = $1", &[self.tenant.into()])?
            .into_iter()
            .filter_map(|row| {
                let mut row = row.into_iter();
                Some((row.next()?.into_string()?, row.next()?.into_string()?))
            })
            .collect();
        for (table, field) in &existing {
            if !self.indexes.fields(table).contains(field) {
                let params = [self.tenant.into(), table.as_str().into(), field.as_str().into()];
                self.tx.execute(
                    "DELETE FROM document_index_entries WHERE tenant_id = $1 AND tbl = $2 AND field = $3",
                    &params,
                )?;
                self.tx.execute(
                    "DELETE FROM document_indexes WHERE tenant_id = $1 AND tbl = $2 AND field = $3",
                    &params,
                )?;
            }
        }
        let indexes = self.indexes;
        for (table, field) in indexes.pairs() {
            if existing.iter().any(|(t, f)| t == table && f == field) {
                continue;
            }
            self.tx.execute(
                "INSERT INTO document_indexes (tenant_id, tbl, field, created_at) VALUES ($1, $2, $3, $4)",
                &[self.tenant.into(), table.into(), field.into(), clock::now_ms().into()],
            )?;
            let rows = self.tx.query(
                "SELECT id, body, seq FROM documents WHERE tenant_id = $1 AND tbl = $2",
                &[self.tenant.into(), table.into()],
            )?;
            for row in rows {
                let mut row = row.into_iter();
                let (Some(Value::Text(id)), Some(Value::Text(body)), Some(Value::Int(seq))) =
                    (row.next(), row.next(), row.next())
                else {
                    continue;
                };
                if let Some(key) = parse_stored(&body)?.get(field).and_then(value_key) {
                    self.add_entry(table, field, key, &id, seq)?;
                }
            }
        }
        Ok(())
    }

    fn parse_object(&self, text: &str) -> Result<Map<String, Json>, DocError> {
        if text.len() > self.limits.max_document_bytes {
            return Err(DocError::DocumentTooLarge(self.limits.max_document_bytes as u32));
        }
        match serde_json::from_str(text) {
            Ok(Json::Object(map)) => Ok(map),
            Ok(_) => Err(DocError::InvalidDocument("a document must be a JSON object".into())),
            Err(e) => Err(DocError::InvalidDocument(format!("not valid JSON: {e}"))),
        }
    }

    fn write(&mut self, table: &str, old: Document, seq: i64, body: String) -> Result<Document, DocError> {
        if body.len() > self.limits.max_document_bytes {
            return Err(DocError::DocumentTooLarge(self.limits.max_document_bytes as u32));
        }
        let old_body = parse_stored(&old.body)?;
        let new_body = parse_stored(&body)?;
        for field in self.indexes.fields(table) {
            let (before, after) = (old_body.get(field).and_then(value_key), new_body.get(field).and_then(value_key));
            if before == after {
                continue;
            }
            if let Some(key) = before {
                self.remove_entry(table, field, key, &old.id)?;
            }
            if let Some(key) = after {
                self.add_entry(table, field, key, &old.id, seq)?;
            }
        }
        let now = clock::now_ms();
        self.tx.execute(
            UPDATE_DOC,
            &[self.tenant.into(), table.into(), old.id.as_str().into(), body.as_str().into(), now.into()],
        )?;
        Ok(Document { id: old.id, created_at: old.created_at, updated_at: now, body })
    }

    fn add_entries(&mut self, table: &str, id: &str, seq: i64, body: &Map<String, Json>) -> Result<(), DocError> {
        for field in self.indexes.fields(table) {
            if let Some(key) = body.get(field).and_then(value_key) {
                self.add_entry(table, field, key, id, seq)?;
            }
        }
        Ok(())
    }

    fn remove_entries(&mut self, table: &str, id: &str, body: &Map<String, Json>) -> Result<(), DocError> {
        for field in self.indexes.fields(table) {
            if let Some(key) = body.get(field).and_then(value_key) {
                self.remove_entry(table, field, key, id)?;
            }
        }
        Ok(())
    }

    fn add_entry(&mut self, table: &str, field: &str, key: String, id: &str, seq: i64) -> Result<(), DocError> {
        self.tx.execute(
            INSERT_ENTRY,
            &[self.tenant.into(), table.into(), field.into(), key.into(), id.into(), seq.into()],
        )?;
        Ok(())
    }

    fn remove_entry(&mut self, table: &str, field: &str, key: String, id: &str) -> Result<(), DocError> {
        self.tx.execute(DELETE_ENTRY, &[self.tenant.into(), table.into(), field.into(), key.into(), id.into()])?;
        Ok(())
    }

    fn page_bounds(&self, limit: u32, cursor: Option<&str>) -> Result<(String, i64), DocError> {
        let after = match cursor {
            None => String::new(),
            Some(c) if looks_like_id(c) => c.to_string(),
            Some(_) => return Err(DocError::InvalidCursor),
        };
        Ok((after, i64::from(limit.clamp(1, self.limits.max_page))))
    }
}

fn check_table(table: &str) -> Result<(), DocError> {
    check_name(table).map_err(DocError::InvalidTableName)
}

/// A stored body is an object the host wrote itself; anything else is a fault.
fn parse_stored(body: &str) -> Result<Map<String, Json>, DocError> {
    match serde_json::from_str(body) {
        Ok(Json::Object(map)) => Ok(map),
        _ => Err(DocError::Store(StoreError::Corrupt("a stored document is not a JSON object".into()))),
    }
}

fn document(row: Vec<Value>) -> Result<Document, DocError> {
    let mut row = row.into_iter();
    match (row.next(), row.next(), row.next(), row.next()) {
        (
            Some(Value::Text(id)),
            Some(Value::Int(created_at)),
            Some(Value::Int(updated_at)),
            Some(Value::Text(body)),
        ) => Ok(Document { id, created_at, updated_at, body }),
        _ => Err(DocError::Store(StoreError::Corrupt("a documents row has unexpected types".into()))),
    }
}

fn page(rows: Vec<Vec<Value>>, limit: i64) -> Result<Page, DocError> {
    let more = rows.len() as i64 > limit;
    let documents: Vec<Document> = rows.into_iter().take(limit as usize).map(document).collect::<Result<_, _>>()?;
    let next_cursor = if more { documents.last().map(|d| d.id.clone()) } else { None };
    Ok(Page { documents, next_cursor })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What makes `find` cheap in a large table on SQLite: the entry's own
    /// B-tree, then the document by rowid, not a second descent by key.
    #[test]
    fn sqlite_finds_the_document_by_its_rowid() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for (_, sql) in crate::store::tests::sqlite_migrations() {
            conn.execute_batch(&sql).unwrap();
        }
        let mut plan = conn.prepare(&format!("EXPLAIN QUERY PLAN {FIND}11")).unwrap();
        let steps: Vec<String> = plan
            .query_map(rusqlite::params!["t", "users", "authId", "s:x", ""], |row| row.get(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert!(steps[0].starts_with("SEARCH i USING PRIMARY KEY (tenant_id=? AND tbl=? AND field=? AND value_key=?"));
        assert_eq!(steps[1], "SEARCH d USING INTEGER PRIMARY KEY (rowid=?)");
    }

    #[test]
    fn names_follow_the_rule() {
        for good in ["users", "todoLists", "a", "A_1", &"x".repeat(64)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1users", "_x", "users; DROP TABLE users", "inbox\"", "a-b", "é", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn equal_scalars_share_a_key() {
        let key = |s: &str| value_key(&serde_json::from_str(s).unwrap());
        assert_eq!(key("1"), key("1.0"));
        assert_eq!(key("1"), key("1e0"));
        assert_ne!(key("1"), key("\"1\""));
        assert_ne!(key("true"), key("1"));
        assert_eq!(key("null"), Some("z".into()));
        assert_eq!(key("[1]"), None);
        assert_eq!(key("{}"), None);
        let long = format!("\"{}\"", "x".repeat(1000));
        assert!(key(&long).unwrap().starts_with("h:"));
        assert_ne!(key(&long), key(&format!("\"{}\"", "x".repeat(1001))));
    }

    #[test]
    fn ids_increase() {
        let ids: Vec<String> = (0..1000).map(|_| new_id()).collect();
        assert!(ids.windows(2).all(|w| w[0][..16] < w[1][..16]));
        assert!(ids.iter().all(|id| looks_like_id(id)));
    }
}
