//! Stored handler versions and their activation history.
//!
//! Owns: the `modules` and `module_activations` tables: version numbering (per
//! tenant, never reused), the activation stack behind activate and roll back,
//! and the union of the indexes every stored version declares. Must not:
//! compile, validate or run a component (see [`crate::runtime`] and
//! [`crate::deploy`]), or commit: the caller's transaction decides.

use serde::Serialize;

use super::exec::{Row, SyncTx, Value};
use super::{Result, StoreError};
use crate::runtime::ModuleLimits;

/// A version as `modules list` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ModuleInfo {
    pub version: i64,
    /// SHA-256 of the component's bytes, hex.
    pub hash: String,
    pub size: i64,
    /// The handler interfaces it exports (`events`, `actions`, `schema`).
    pub exports: Vec<String>,
    pub wit_version: String,
    pub created_at: i64,
    pub active: bool,
    /// The limits this version sets over its tenant's (empty: none).
    pub limits: ModuleLimits,
}

/// A version about to be stored.
pub struct NewModule<'a> {
    pub tenant: &'a str,
    pub hash: &'a str,
    pub exports: &'a [&'a str],
    pub wit_version: &'a str,
    /// The `(table, field)` indexes it declares.
    pub indexes: &'a [(String, String)],
    pub bytes: &'a [u8],
    pub now: i64,
    pub limits: ModuleLimits,
}

const INFO: &str = "SELECT version, hash, size, exports, wit_version, created_at, limits FROM modules";

/// Serializes version changes of one tenant across host processes (Postgres;
/// on SQLite the write gate already does), and says whether the tenant still
/// exists as the tenant created at `created_at`, holding it until the commit
/// (see [`super::tenants::hold`]): a change that began before the
/// tenant's deletion must not write its rows back, nor give them to a new
/// tenant of the same slug.
pub fn lock_tenant(tx: &mut SyncTx, tenant: &str, created_at: i64) -> Result<bool> {
    if tx.is_postgres() {
        tx.execute("SELECT pg_advisory_xact_lock(hashtext('authkit-modules:' || $1))", &[tenant.into()])?;
    }
    Ok(super::tenants::hold(tx, tenant)? == Some(created_at))
}

/// The live (not deleted) version with these exact bytes and limits, if any.
pub fn find_by_hash(tx: &mut SyncTx, tenant: &str, hash: &str, limits: &ModuleLimits) -> Result<Option<ModuleInfo>> {
    let row = tx.query_one(
        &format!(
            "{INFO} WHERE tenant_id = $1 AND hash = $2 AND limits = $3 AND deleted_at IS NULL \
             ORDER BY version DESC LIMIT 1"
        ),
        &[tenant.into(), hash.into(), limits_json(limits).into()],
    )?;
    row.map(|r| info(r, None)).transpose()
}

/// Stores a new version; returns its number (one more than any before, deleted or not).
pub fn insert(tx: &mut SyncTx, m: &NewModule) -> Result<i64> {
    let next = tx
        .query_one("SELECT COALESCE(MAX(version), 0) + 1 FROM modules WHERE tenant_id = $1", &[m.tenant.into()])?
        .and_then(|r| r.into_iter().next())
        .and_then(|v| v.as_i64())
        .ok_or_else(|| StoreError::Corrupt("no next module version".into()))?;
    let indexes = serde_json::to_string(m.indexes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    tx.execute(
        "INSERT INTO modules (tenant_id, version, hash, size, exports, wit_version, indexes, bytes, created_at, limits) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            m.tenant.into(),
            next.into(),
            m.hash.into(),
            (m.bytes.len() as i64).into(),
            m.exports.join(",").into(),
            m.wit_version.into(),
            indexes.into(),
            Value::Bytes(m.bytes.to_vec()),
            m.now.into(),
            limits_json(&m.limits).into(),
        ],
    )?;
    Ok(next)
}

/// Every live version, oldest first, with the active one marked.
pub fn list(tx: &mut SyncTx, tenant: &str) -> Result<Vec<ModuleInfo>> {
    let active = active(tx, tenant)?;
    tx.query(&format!("{INFO} WHERE tenant_id = $1 AND deleted_at IS NULL ORDER BY version"), &[tenant.into()])?
        .into_iter()
        .map(|r| info(r, active))
        .collect()
}

/// One live version.
pub fn get(tx: &mut SyncTx, tenant: &str, version: i64) -> Result<Option<ModuleInfo>> {
    let active = active(tx, tenant)?;
    let row = tx.query_one(
        &format!("{INFO} WHERE tenant_id = $1 AND version = $2 AND deleted_at IS NULL"),
        &[tenant.into(), version.into()],
    )?;
    row.map(|r| info(r, active)).transpose()
}

/// Whether any tenant has a live (not deleted) version with these bytes: if
/// not, their compiled code is no longer needed.
pub fn hash_in_use(tx: &mut SyncTx, hash: &str) -> Result<bool> {
    let sql = "SELECT 1 FROM modules WHERE hash = $1 AND deleted_at IS NULL LIMIT 1";
    Ok(tx.query_one(sql, &[hash.into()])?.is_some())
}

/// The content hashes of every stored version, of every tenant.
pub fn hashes_in_use(tx: &mut SyncTx) -> Result<std::collections::HashSet<String>> {
    let rows = tx.query("SELECT DISTINCT hash FROM modules WHERE deleted_at IS NULL", &[])?;
    Ok(rows.into_iter().filter_map(|row| row.into_iter().next().and_then(Value::into_string)).collect())
}

/// The bytes and the limits of a live version: what loading it needs.
pub fn load(tx: &mut SyncTx, tenant: &str, version: i64) -> Result<Option<(Vec<u8>, ModuleLimits)>> {
    let row = tx.query_one(
        "SELECT bytes, limits FROM modules WHERE tenant_id = $1 AND version = $2 AND deleted_at IS NULL",
        &[tenant.into(), version.into()],
    )?;
    let Some(mut row) = row.map(Vec::into_iter) else { return Ok(None) };
    let bytes = row.next().and_then(Value::into_bytes);
    let limits = parse_limits(row.next().and_then(Value::into_string))?;
    Ok(bytes.map(|b| (b, limits)))
}

/// Canonical JSON (fields in declaration order, unset ones left out), so equal
/// limits are equal text.
fn limits_json(limits: &ModuleLimits) -> String {
    serde_json::to_string(limits).expect("limits serialize")
}

fn parse_limits(text: Option<String>) -> Result<ModuleLimits> {
    let text = text.ok_or_else(|| StoreError::Corrupt("a module's limits are missing".into()))?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("a module's limits do not parse: {e}")))
}

/// The active version: the newest activation not rolled back.
pub fn active(tx: &mut SyncTx, tenant: &str) -> Result<Option<i64>> {
    let row = tx.query_one(
        "SELECT version FROM module_activations WHERE tenant_id = $1 AND rolled_back_at IS NULL \
         ORDER BY seq DESC LIMIT 1",
        &[tenant.into()],
    )?;
    Ok(row.and_then(|r| r.into_iter().next()).and_then(|v| v.as_i64()))
}

/// Makes `version` the active one.
pub fn push_activation(tx: &mut SyncTx, tenant: &str, version: i64, now: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO module_activations (tenant_id, version, activated_at) VALUES ($1, $2, $3)",
        &[tenant.into(), version.into(), now.into()],
    )
    .map(drop)
}

/// What a roll back would do: the version that becomes active again and the
/// activations to mark rolled back (the newest, and any below it whose version
/// is gone or is the one being rolled back). `None` when there is no earlier
/// version to go back to. Reads only.
pub fn plan_rollback(tx: &mut SyncTx, tenant: &str) -> Result<Option<(i64, Vec<i64>)>> {
    let stack: Vec<(i64, i64, bool)> = tx
        .query(
            "SELECT a.seq, a.version, m.deleted_at IS NULL AND m.version IS NOT NULL FROM module_activations a \
             LEFT JOIN modules m ON m.tenant_id = a.tenant_id AND m.version = a.version \
             WHERE a.tenant_id = $1 AND a.rolled_back_at IS NULL ORDER BY a.seq DESC",
            &[tenant.into()],
        )?
        .into_iter()
        .filter_map(|r| match r.as_slice() {
            [Value::Int(seq), Value::Int(version), Value::Int(live)] => Some((*seq, *version, *live != 0)),
            _ => None,
        })
        .collect();
    let Some(&(_, current, _)) = stack.first() else { return Ok(None) };
    let Some(position) = stack.iter().position(|&(_, version, live)| version != current && live) else {
        return Ok(None);
    };
    Ok(Some((stack[position].1, stack[..position].iter().map(|&(seq, _, _)| seq).collect())))
}

/// Applies a [`plan_rollback`]: marks its activations rolled back.
pub fn pop_activations(tx: &mut SyncTx, seqs: &[i64], now: i64) -> Result<()> {
    for &seq in seqs {
        tx.execute("UPDATE module_activations SET rolled_back_at = $2 WHERE seq = $1", &[seq.into(), now.into()])?;
    }
    Ok(())
}

/// Deletes an inactive version's bytes; its number stays taken. Returns whether it existed.
pub fn delete(tx: &mut SyncTx, tenant: &str, version: i64, now: i64) -> Result<bool> {
    let n = tx.execute(
        "UPDATE modules SET bytes = NULL, deleted_at = $3 WHERE tenant_id = $1 AND version = $2 AND deleted_at IS NULL",
        &[tenant.into(), version.into(), now.into()],
    )?;
    Ok(n > 0)
}

/// Every `(table, field)` index some live version declares.
pub fn declared_indexes(tx: &mut SyncTx, tenant: &str) -> Result<Vec<(String, String)>> {
    let mut all = Vec::new();
    for row in tx.query("SELECT indexes FROM modules WHERE tenant_id = $1 AND deleted_at IS NULL", &[tenant.into()])? {
        let Some(Value::Text(text)) = row.into_iter().next() else { continue };
        let pairs: Vec<(String, String)> =
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("modules.indexes: {e}")))?;
        for pair in pairs {
            if !all.contains(&pair) {
                all.push(pair);
            }
        }
    }
    Ok(all)
}

fn info(row: Row, active: Option<i64>) -> Result<ModuleInfo> {
    let mut row = row.into_iter();
    let mut next = || row.next().unwrap_or(Value::Null);
    let corrupt = || StoreError::Corrupt("a modules row is not as the host wrote it".into());
    let version = next().as_i64().ok_or_else(corrupt)?;
    let hash = next().into_string().ok_or_else(corrupt)?;
    let size = next().as_i64().ok_or_else(corrupt)?;
    let exports = next().into_string().ok_or_else(corrupt)?;
    let wit_version = next().into_string().ok_or_else(corrupt)?;
    let created_at = next().as_i64().ok_or_else(corrupt)?;
    let limits = parse_limits(next().into_string())?;
    Ok(ModuleInfo {
        version,
        hash,
        size,
        exports: exports.split(',').filter(|s| !s.is_empty()).map(str::to_string).collect(),
        wit_version,
        created_at,
        active: active == Some(version),
        limits,
    })
}
