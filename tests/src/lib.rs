//! Test support for authkit-host: the WorkOS emulator, per-test databases on both
//! backends, and a spawner for the real `authkit-host` binary on a free port.
//!
//! Must not: reuse the host's signing code. The emulator signs with its own HMAC
//! so that a symmetric bug (both sides wrong the same way) cannot pass.

pub mod authkit;
pub mod bench;
pub mod db;
pub mod documents;
pub mod fault;
pub mod guests;
pub mod server;
pub mod workos;

pub use db::{Backend, TestDb};
pub use server::{ServerOptions, TestServer};
pub use workos::Emulator;

/// Generates one `#[tokio::test]` per backend for each listed `async fn name(db: TestDb)`.
/// Postgres variants are skipped, loudly, when `AUTHKIT_TEST_POSTGRES_URL` is unset.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = $crate::TestDb::create($crate::Backend::Sqlite, stringify!($name)).await {
                        super::$name(db).await;
                    }
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(db) = $crate::TestDb::create($crate::Backend::Postgres, stringify!($name)).await {
                        super::$name(db).await;
                    }
                }
            )*
        }
    };
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
