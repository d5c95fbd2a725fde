//! A fresh database per test: a SQLite file in a temporary directory, or a
//! uniquely named Postgres database created on the server named by
//! `AUTHKIT_TEST_POSTGRES_URL` and dropped when the test ends.

use std::io::Write;
use std::str::FromStr;

use authkit_host::settings::DatabaseUrl;
use authkit_host::store::Store;
use authkit_host::store::tenants::TenantRow;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// The variable naming the Postgres server tests create their databases on.
pub const POSTGRES_URL_VAR: &str = "AUTHKIT_TEST_POSTGRES_URL";

/// A tenant row with nothing configured, for tests that store tenants
/// through the library rather than the admin API.
pub fn bare_tenant(slug: &str) -> TenantRow {
    let now = crate::workos::now_ms();
    TenantRow {
        slug: slug.into(),
        webhook_secret: None,
        action_secret: None,
        client_id: None,
        options: "{}".into(),
        created_at: now,
        updated_at: now,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct TestDb {
    pub backend: Backend,
    /// The URL the host is started with.
    pub url: String,
    /// Working directory for the server (and the SQLite file).
    pub dir: tempfile::TempDir,
    postgres: Option<(String, String)>, // (admin url, database name)
}

impl TestDb {
    /// Creates the database, or returns `None` (after saying so on the terminal)
    /// for Postgres when no server is configured.
    pub async fn create(backend: Backend, test: &str) -> Option<TestDb> {
        let dir = tempfile::Builder::new().prefix("authkit-test-").tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => {
                let url = format!("sqlite://{}", dir.path().join("authkit.db").display());
                Some(TestDb { backend, url, dir, postgres: None })
            }
            Backend::Postgres => {
                let Ok(admin) = std::env::var(POSTGRES_URL_VAR) else {
                    // Written straight to stderr so the test harness does not swallow it.
                    let _ = writeln!(
                        std::io::stderr(),
                        "\n*** SKIPPED (Postgres): {test}: {POSTGRES_URL_VAR} is not set. \
                         tests/run.sh and CI set it; the Postgres half of the suite did not run. ***\n"
                    );
                    return None;
                };
                let name = format!("authkit_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = PgConnectOptions::from_str(&admin)
                    .expect("AUTHKIT_TEST_POSTGRES_URL is not a Postgres URL")
                    .connect()
                    .await
                    .unwrap_or_else(|e| panic!("cannot reach the test Postgres server at {admin}: {e}"));
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("create database");
                conn.close().await.ok();
                let url = with_database(&admin, &name);
                Some(TestDb { backend, url, dir, postgres: Some((admin, name)) })
            }
        }
    }

    /// A store on this database, for inspecting what the server wrote.
    pub async fn store(&self) -> Store {
        let url = DatabaseUrl::parse(&self.url).unwrap();
        Store::connect(&url).await.expect("connect to the test database")
    }

    /// Runs raw SQL against the test database (fault injection in tests).
    pub async fn execute(&self, sql: &str) {
        match self.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(&mut conn).await.unwrap();
                conn.close().await.ok();
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.url).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(&mut conn).await.unwrap();
                conn.close().await.ok();
            }
        }
    }
}

impl TestDb {
    /// Postgres only: makes the database refuse new connections and cuts the
    /// existing ones (`available = false`), or lets it accept them again.
    pub async fn set_postgres_available(&self, available: bool) {
        let (admin, name) = self.postgres.as_ref().expect("a Postgres test database");
        let mut conn = PgConnectOptions::from_str(admin).unwrap().connect().await.unwrap();
        let sql = format!("ALTER DATABASE {name} WITH ALLOW_CONNECTIONS {available}");
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&mut conn).await.unwrap();
        if !available {
            let cut = format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'");
            sqlx::query(sqlx::AssertSqlSafe(cut)).execute(&mut conn).await.unwrap();
        }
        conn.close().await.ok();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin, name)) = self.postgres.take() else { return };
        // Drop runs outside any runtime we can block on: use a thread with its own.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let mut conn = PgConnectOptions::from_str(&admin).unwrap().connect().await?;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                    .execute(&mut conn)
                    .await?;
                conn.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            let _ = writeln!(std::io::stderr(), "warning: could not drop a test database: {dropped:?}");
        }
    }
}

/// `admin` with its database name replaced by `name`.
fn with_database(admin: &str, name: &str) -> String {
    let (base, query) = admin.split_once('?').map_or((admin, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_database_name_is_replaced_and_the_rest_kept() {
        assert_eq!(super::with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(
            super::with_database("postgres://u@h/postgres?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(super::with_database("postgres://u@h:5432", "x"), "postgres://u@h:5432/x");
    }
}
