//! The directory tables the host keeps in sync with WorkOS: users, organizations,
//! organization memberships, and the tombstones deleted records leave behind.
//!
//! Owns: their SQL, including the two ordering guards, in the statements
//! themselves: an upsert never overwrites a newer `updated_at`, and never
//! recreates a tombstoned id. Must not: decide what an event means (the pipeline
//! does) or parse JSON payloads beyond serialising what it is given.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::exec::{self, SyncTx};
use super::{Result, Store, StoreError, on_pool};
use crate::clock;
use crate::workos::event::{Membership, Organization, RecordKind, User};

/// Bookkeeping common to every upsert.
#[derive(Debug, Clone, Copy)]
pub struct Version<'a> {
    pub tenant_id: &'a str,
    /// The record's `updated_at` (or the event's time when the record has none).
    pub updated_at: i64,
    pub event_id: &'a str,
    pub now: i64,
}

const UPSERT_USER: &str = "INSERT INTO users (tenant_id, id, email, email_verified, first_name, last_name, name, \
        profile_picture_url, last_sign_in_at, locale, external_id, metadata, raw, created_at, updated_at, \
        last_event_id, synced_at) \
     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17 \
     WHERE NOT EXISTS (SELECT 1 FROM tombstones WHERE tenant_id = $1 AND kind = 'user' AND id = $2) \
     ON CONFLICT (tenant_id, id) DO UPDATE SET email = excluded.email, email_verified = excluded.email_verified, \
        first_name = excluded.first_name, last_name = excluded.last_name, name = excluded.name, \
        profile_picture_url = excluded.profile_picture_url, last_sign_in_at = excluded.last_sign_in_at, \
        locale = excluded.locale, external_id = excluded.external_id, metadata = excluded.metadata, \
        raw = excluded.raw, created_at = excluded.created_at, updated_at = excluded.updated_at, \
        last_event_id = excluded.last_event_id, synced_at = excluded.synced_at \
     WHERE users.updated_at <= excluded.updated_at";

const UPSERT_ORGANIZATION: &str = "INSERT INTO organizations (tenant_id, id, name, \
        allow_profiles_outside_organization, domains, external_id, stripe_customer_id, metadata, raw, \
        created_at, updated_at, last_event_id, synced_at) \
     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13 \
     WHERE NOT EXISTS (SELECT 1 FROM tombstones WHERE tenant_id = $1 AND kind = 'organization' AND id = $2) \
     ON CONFLICT (tenant_id, id) DO UPDATE SET name = excluded.name, \
        allow_profiles_outside_organization = excluded.allow_profiles_outside_organization, \
        domains = excluded.domains, external_id = excluded.external_id, \
        stripe_customer_id = excluded.stripe_customer_id, metadata = excluded.metadata, raw = excluded.raw, \
        created_at = excluded.created_at, updated_at = excluded.updated_at, \
        last_event_id = excluded.last_event_id, synced_at = excluded.synced_at \
     WHERE organizations.updated_at <= excluded.updated_at";

const UPSERT_MEMBERSHIP: &str = "INSERT INTO organization_memberships (tenant_id, id, user_id, organization_id, \
        organization_name, status, role, roles, directory_managed, custom_attributes, raw, created_at, \
        updated_at, last_event_id, synced_at) \
     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15 \
     WHERE NOT EXISTS (SELECT 1 FROM tombstones WHERE tenant_id = $1 AND kind = 'organization_membership' AND id = $2) \
     ON CONFLICT (tenant_id, id) DO UPDATE SET user_id = excluded.user_id, \
        organization_id = excluded.organization_id, organization_name = excluded.organization_name, \
        status = excluded.status, role = excluded.role, roles = excluded.roles, \
        directory_managed = excluded.directory_managed, custom_attributes = excluded.custom_attributes, \
        raw = excluded.raw, created_at = excluded.created_at, updated_at = excluded.updated_at, \
        last_event_id = excluded.last_event_id, synced_at = excluded.synced_at \
     WHERE organization_memberships.updated_at <= excluded.updated_at";

const TOMBSTONE: &str = "INSERT INTO tombstones (tenant_id, kind, id, deleted_at, event_id) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant_id, kind, id) DO NOTHING";

fn json_text(map: Option<&Map<String, Value>>) -> String {
    map.map_or_else(|| "{}".to_string(), |m| Value::Object(m.clone()).to_string())
}

fn ms(ts: &Option<String>) -> Option<i64> {
    ts.as_deref().and_then(clock::parse_rfc3339_ms)
}

/// Inserts or updates a user unless a newer version is stored or the id is
/// tombstoned. Returns whether a row was written.
pub fn upsert_user(tx: &mut SyncTx, user: &User, raw: &RawValue, v: Version<'_>) -> Result<bool> {
    let params = [
        v.tenant_id.into(),
        user.id.as_str().into(),
        user.email.as_deref().into(),
        user.email_verified.into(),
        user.first_name.as_deref().into(),
        user.last_name.as_deref().into(),
        user.name.as_deref().into(),
        user.profile_picture_url.as_deref().into(),
        ms(&user.last_sign_in_at).into(),
        user.locale.as_deref().into(),
        user.external_id.as_deref().into(),
        json_text(user.metadata.as_ref()).into(),
        raw.get().into(),
        ms(&user.created_at).into(),
        v.updated_at.into(),
        v.event_id.into(),
        v.now.into(),
    ];
    Ok(tx.execute(UPSERT_USER, &params)? > 0)
}

pub fn upsert_organization(tx: &mut SyncTx, org: &Organization, raw: &RawValue, v: Version<'_>) -> Result<bool> {
    let domains = Value::Array(org.domains.clone().unwrap_or_default()).to_string();
    let params = [
        v.tenant_id.into(),
        org.id.as_str().into(),
        org.name.as_deref().into(),
        org.allow_profiles_outside_organization.into(),
        domains.into(),
        org.external_id.as_deref().into(),
        org.stripe_customer_id.as_deref().into(),
        json_text(org.metadata.as_ref()).into(),
        raw.get().into(),
        ms(&org.created_at).into(),
        v.updated_at.into(),
        v.event_id.into(),
        v.now.into(),
    ];
    Ok(tx.execute(UPSERT_ORGANIZATION, &params)? > 0)
}

pub fn upsert_membership(tx: &mut SyncTx, m: &Membership, raw: &RawValue, v: Version<'_>) -> Result<bool> {
    let roles: Vec<Value> = m.roles.iter().flatten().map(|r| Value::String(r.slug.clone())).collect();
    let params = [
        v.tenant_id.into(),
        m.id.as_str().into(),
        m.user_id.as_deref().into(),
        m.organization_id.as_deref().into(),
        m.organization_name.as_deref().into(),
        m.status.as_deref().into(),
        m.role.as_ref().map(|r| r.slug.as_str()).into(),
        Value::Array(roles).to_string().into(),
        m.directory_managed.into(),
        json_text(m.custom_attributes.as_ref()).into(),
        raw.get().into(),
        ms(&m.created_at).into(),
        v.updated_at.into(),
        v.event_id.into(),
        v.now.into(),
    ];
    Ok(tx.execute(UPSERT_MEMBERSHIP, &params)? > 0)
}

/// Deletes a record and leaves a tombstone, so no late create or update for
/// this id can bring it back. Returns whether a row was deleted.
pub fn delete_record(
    tx: &mut SyncTx,
    kind: RecordKind,
    tenant_id: &str,
    id: &str,
    event_id: &str,
    now: i64,
) -> Result<bool> {
    let delete = match kind {
        RecordKind::User => "DELETE FROM users WHERE tenant_id = $1 AND id = $2",
        RecordKind::Organization => "DELETE FROM organizations WHERE tenant_id = $1 AND id = $2",
        RecordKind::Membership => "DELETE FROM organization_memberships WHERE tenant_id = $1 AND id = $2",
    };
    let deleted = tx.execute(delete, &[tenant_id.into(), id.into()])?;
    tx.execute(TOMBSTONE, &[tenant_id.into(), kind.name().into(), id.into(), now.into(), event_id.into()])?;
    Ok(deleted > 0)
}

/// A synced user, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredUser {
    pub id: String,
    pub email: Option<String>,
    pub email_verified: Option<bool>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub name: Option<String>,
    pub profile_picture_url: Option<String>,
    pub last_sign_in_at: Option<i64>,
    pub locale: Option<String>,
    pub external_id: Option<String>,
    pub metadata: String,
    pub created_at: Option<i64>,
    pub updated_at: i64,
    pub last_event_id: String,
    pub synced_at: i64,
}

/// The user as the CLI and API show it: WorkOS's field names and time format.
#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    pub object: &'static str,
    pub id: String,
    pub email: Option<String>,
    pub email_verified: Option<bool>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub name: Option<String>,
    pub profile_picture_url: Option<String>,
    pub last_sign_in_at: Option<String>,
    pub locale: Option<String>,
    pub external_id: Option<String>,
    pub metadata: Value,
    pub created_at: Option<String>,
    pub updated_at: String,
    pub last_event_id: String,
    pub synced_at: String,
}

impl StoredUser {
    pub fn view(self) -> UserView {
        UserView {
            object: "user",
            metadata: serde_json::from_str(&self.metadata).unwrap_or(Value::Null),
            last_sign_in_at: self.last_sign_in_at.map(clock::format_ms),
            created_at: self.created_at.map(clock::format_ms),
            updated_at: clock::format_ms(self.updated_at),
            synced_at: clock::format_ms(self.synced_at),
            id: self.id,
            email: self.email,
            email_verified: self.email_verified,
            first_name: self.first_name,
            last_name: self.last_name,
            name: self.name,
            profile_picture_url: self.profile_picture_url,
            locale: self.locale,
            external_id: self.external_id,
            last_event_id: self.last_event_id,
        }
    }
}

/// `SELECT <every StoredUser column> FROM users`, as a literal so lookups can extend it.
macro_rules! user_columns {
    () => {
        "SELECT id, email, email_verified, first_name, last_name, name, profile_picture_url, \
         last_sign_in_at, locale, external_id, metadata, created_at, updated_at, last_event_id, synced_at FROM users"
    };
}
const USER_COLUMNS: &str = user_columns!();

/// The lookup of one user by `$column` (tenant `$1`, value `$2`). Email and
/// external id are not unique in the table, so the oldest match wins.
macro_rules! const_format_user_sql {
    ($column:literal) => {
        concat!(user_columns!(), " WHERE tenant_id = $1 AND ", $column, " = $2 ORDER BY created_at, id LIMIT 1")
    };
}

impl Store {
    pub async fn get_user(&self, tenant_id: &str, id: &str) -> Result<Option<StoredUser>> {
        let user = on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(USER_COLUMNS);
            q.push(" WHERE tenant_id = ").push_bind(tenant_id.to_string()).push(" AND id = ").push_bind(id.to_string());
            q.build_query_as().fetch_optional(pool).await?
        });
        Ok(user)
    }

    /// Users ordered by id, `limit` at a time, starting after `after`.
    pub async fn list_users(&self, tenant_id: &str, after: Option<&str>, limit: i64) -> Result<Vec<StoredUser>> {
        let users = on_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(USER_COLUMNS);
            q.push(" WHERE tenant_id = ").push_bind(tenant_id.to_string());
            if let Some(after) = after {
                q.push(" AND id > ").push_bind(after.to_string());
            }
            q.push(" ORDER BY id LIMIT ").push_bind(limit);
            q.build_query_as().fetch_all(pool).await?
        });
        Ok(users)
    }

    /// Number of rows in a directory table, for inspection and tests.
    pub async fn count_records(&self, kind: RecordKind, tenant_id: &str) -> Result<i64> {
        let sql = match kind {
            RecordKind::User => "SELECT COUNT(*) FROM users WHERE tenant_id = $1",
            RecordKind::Organization => "SELECT COUNT(*) FROM organizations WHERE tenant_id = $1",
            RecordKind::Membership => "SELECT COUNT(*) FROM organization_memberships WHERE tenant_id = $1",
        };
        let n = on_pool!(self, pool => sqlx::query_scalar(sql).bind(tenant_id.to_string()).fetch_one(pool).await?);
        Ok(n)
    }

    pub async fn is_tombstoned(&self, kind: RecordKind, tenant_id: &str, id: &str) -> Result<bool> {
        let n: i64 = on_pool!(self, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM tombstones WHERE tenant_id = $1 AND kind = $2 AND id = $3",
        )
        .bind(tenant_id.to_string())
        .bind(kind.name())
        .bind(id.to_string())
        .fetch_one(pool)
        .await?);
        Ok(n > 0)
    }
}

/// Which column a handler's user lookup goes by (each has an index).
#[derive(Debug, Clone, Copy)]
pub enum UserKey {
    Id,
    Email,
    ExternalId,
}

/// Looks a user up inside a synchronous transaction (a handler's `users` import).
pub fn find_user(tx: &mut SyncTx, tenant_id: &str, key: UserKey, value: &str) -> Result<Option<StoredUser>> {
    let sql = match key {
        UserKey::Id => const_format_user_sql!("id"),
        UserKey::Email => const_format_user_sql!("email"),
        UserKey::ExternalId => const_format_user_sql!("external_id"),
    };
    let Some(row) = tx.query_one(sql, &[tenant_id.into(), value.into()])? else {
        return Ok(None);
    };
    let mut cols = row.into_iter();
    let mut next = || cols.next().unwrap_or(exec::Value::Null);
    let text = |v: exec::Value| v.into_string();
    let corrupt = || StoreError::Corrupt("a users row has unexpected types".into());
    Ok(Some(StoredUser {
        id: text(next()).ok_or_else(corrupt)?,
        email: text(next()),
        email_verified: next().as_i64().map(|b| b != 0),
        first_name: text(next()),
        last_name: text(next()),
        name: text(next()),
        profile_picture_url: text(next()),
        last_sign_in_at: next().as_i64(),
        locale: text(next()),
        external_id: text(next()),
        metadata: text(next()).ok_or_else(corrupt)?,
        created_at: next().as_i64(),
        updated_at: next().as_i64().ok_or_else(corrupt)?,
        last_event_id: text(next()).ok_or_else(corrupt)?,
        synced_at: next().as_i64().ok_or_else(corrupt)?,
    }))
}
