//! The SQLite checkpointer: copies committed pages from the write-ahead log
//! into the database file on a thread of its own, off the writers' path.
//!
//! Owns: that thread, its connection, and how often it runs. Must not: write
//! anything itself (a checkpoint only moves pages that are already committed
//! and durable in the log), or wait for readers or writers (it runs SQLite's
//! PASSIVE checkpoint, which copies what no reader still needs and never takes
//! the write lock).
//!
//! Why: SQLite's automatic checkpoint runs inside the commit that takes the
//! log past its threshold, so some writer's commit pays for copying every
//! page changed since the last one. Here that writer is usually the worker,
//! whose transactions hold the write gate: webhooks waited behind the copy.
//! With many tenants it is most of the cost, since each event dirties pages of
//! its own (measured: a tenth of the worker's time with 1,000 tenants).
//!
//! The log only starts over from its beginning (instead of growing) when a
//! writer begins with every page of it already copied. Writers here follow
//! each other without a gap, so once the log has grown past
//! [`RESTART_AFTER_PAGES`], the checkpointer copies again what was committed
//! during its copy, then the last pages while it holds the write gate (a
//! moment: most were copied without it), and the next writer starts the log
//! over, unless a reader still uses it then.
//!
//! Writers keep SQLite's automatic checkpoint only as a fallback, at
//! [`FALLBACK_AUTOCHECKPOINT_PAGES`]: a process without a checkpointer (the
//! CLI) or one that falls behind still keeps the log bounded.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{debug, warn};

use super::{Result, WriteGate};

/// How often the log is copied into the database file. Each run that finds
/// pages to copy costs two fsyncs (log, then database file), off the writers'
/// path; a run that finds none costs a read of the log's header.
///
/// A run writes each page changed since the last one once, however many
/// commits changed it, so the interval sets how much rewriting it saves. With
/// many tenants each event changes pages of its own tenant's key ranges in
/// half a dozen indexes, scattered over the file, so a run has many pages to
/// copy, and a page changed again before the run is copied once. Measured
/// with bench-tenants (1,000 tenants, 20,000 events a turn, third turn): at
/// 100 ms the process wrote 65 KB to disk per event, at 1 s 44 KB, and spread
/// turns went from 59-64% of one tenant's rate to 73-79%, in alternating runs;
/// bench-ingest did not change.
const INTERVAL: Duration = Duration::from_secs(1);

/// A log this long (about 8 MiB with 4 KiB pages) is made to start over.
const RESTART_AFTER_PAGES: i64 = 2_000;

/// Writers' own automatic checkpoint, kept as a fallback for a process without
/// a checkpointer (the CLI) or one that falls behind: about 400 MiB of log with
/// 4 KiB pages. It must stay above what writers add in one [`INTERVAL`]
/// (estimated from bench-tenants' disk writes: up to about 50,000 pages a
/// second with 1,000 tenants on a 2-core machine), or writers copy the log
/// themselves inside their commits, at the write gate. For comparison,
/// Postgres lets its log reach 1 GB by default between checkpoints. While
/// writers are busy the log file keeps the size it reached (it is reused from
/// its start), and [`KEEP_LOG_BYTES`] says when it is cut back.
pub const FALLBACK_AUTOCHECKPOINT_PAGES: i64 = 100_000;

/// A log file larger than this is cut to nothing once nothing has been
/// committed for a whole [`INTERVAL`] and all of it is copied: a burst of
/// writes does not leave hundreds of megabytes behind it. Smaller files are
/// kept, as SQLite does, so a steady load does not pay for growing the file
/// again (which also makes each sync write the file's new size).
const KEEP_LOG_BYTES: u64 = 64 << 20;

/// The running checkpointer. Dropping it stops the thread after a last checkpoint.
pub struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the (already migrated) database file at `path`,
    /// whose writers in this process queue at `gate`.
    pub fn start(path: &Path, gate: WriteGate) -> Result<Checkpointer> {
        Checkpointer::keeping(path, gate, KEEP_LOG_BYTES)
    }

    /// As [`Checkpointer::start`], cutting back a log file larger than `keep_log_bytes` when idle.
    fn keeping(path: &Path, gate: WriteGate, keep_log_bytes: u64) -> Result<Checkpointer> {
        let log = Log { path: super::exec::log_path(path), keep_bytes: keep_log_bytes };
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        // This connection checkpoints on purpose only.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || run(&conn, &gate, &stopped, &log))
            .map_err(|e| super::StoreError::Corrupt(format!("could not start the checkpoint thread: {e}")))?;
        Ok(Checkpointer { stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            warn!("the checkpoint thread panicked");
        }
    }
}

/// The log file, and how large it may stay while idle.
struct Log {
    path: std::path::PathBuf,
    keep_bytes: u64,
}

fn run(conn: &rusqlite::Connection, gate: &WriteGate, stopped: &mpsc::Receiver<()>, log_file: &Log) {
    // The last run's log size and pages copied: the same again, all copied,
    // means nothing was committed for a whole interval.
    let mut previous = None;
    loop {
        let last = match stopped.recv_timeout(INTERVAL) {
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            // The sender is dropped (or sent, which nothing does): one more, then stop.
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => true,
        };
        let done = checkpoint(conn).and_then(|(log, copied)| {
            debug!(log, copied, "checkpoint");
            let idle = previous.replace((log, copied)) == Some((log, copied)) && log == copied;
            if idle {
                return shrink(conn, gate, log_file);
            }
            if log < RESTART_AFTER_PAGES {
                return Ok(());
            }
            // The pages committed during that copy, still without the gate, so
            // that what is left to copy with the writers held back is only
            // what they committed during this shorter one.
            checkpoint(conn)?;
            let _turn = gate.blocking_lock();
            checkpoint(conn).map(drop)
        });
        if let Err(e) = done {
            warn!(error = %e, "could not checkpoint the write-ahead log; writers will, past its fallback size");
        }
        if last {
            return;
        }
    }
}

/// Cuts an idle log file larger than it may stay to nothing. Every page of it
/// is in the database file already, so this only waits for the writers (held
/// back for a moment) and gives up at once if a reader still uses the log.
fn shrink(conn: &rusqlite::Connection, gate: &WriteGate, log: &Log) -> rusqlite::Result<()> {
    let size = std::fs::metadata(&log.path).map(|m| m.len()).unwrap_or(0);
    if size <= log.keep_bytes {
        return Ok(());
    }
    let _turn = gate.blocking_lock();
    let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(0))?;
    debug!(bytes = size, cut = busy == 0, "idle log cut back");
    Ok(())
}

/// One PASSIVE checkpoint: the log's size and how much of it is now in the
/// database file, in pages.
fn checkpoint(conn: &rusqlite::Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| Ok((row.get(1)?, row.get(2)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database file in `dir` whose writer has committed 50 rows of 4,000
    /// bytes to the log, and never checkpoints by itself; and its gate.
    fn fifty_rows_in_the_log(dir: &Path) -> (std::path::PathBuf, rusqlite::Connection, WriteGate) {
        let path = dir.join("db.sqlite");
        let writer = rusqlite::Connection::open(&path).unwrap();
        writer.pragma_update(None, "journal_mode", "WAL").unwrap();
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        writer.execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        for _ in 0..50 {
            writer.execute("INSERT INTO t VALUES (zeroblob(4000))", []).unwrap();
        }
        let gate = std::sync::Arc::new(tokio::sync::Mutex::new(super::super::exec::Writer::new(path.clone())));
        (path, writer, gate)
    }

    #[test]
    fn the_log_is_copied_into_the_database_file_while_the_writer_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (path, writer, gate) = fifty_rows_in_the_log(dir.path());
        let file_size = || std::fs::metadata(&path).unwrap().len();
        // The rows are in the log only: the database file has not grown.
        assert!(file_size() < 50 * 4000, "{} bytes before any checkpoint", file_size());
        let checkpointer = Checkpointer::start(&path, gate).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while file_size() < 50 * 4000 {
            assert!(std::time::Instant::now() < deadline, "the log was not copied ({} bytes)", file_size());
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(checkpointer);
        let rows: i64 = writer.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 50);
    }

    #[test]
    fn an_idle_log_larger_than_it_may_stay_is_cut_back_and_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let (path, writer, gate) = fifty_rows_in_the_log(dir.path());
        let log_size = || std::fs::metadata(super::super::exec::log_path(&path)).unwrap().len();
        let grown = log_size();
        assert!(grown > 50 * 4000, "{grown} bytes of log");
        // Allowed to keep 100 KB: the 200 KB log is cut once idle.
        let checkpointer = Checkpointer::keeping(&path, gate, 100_000).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while log_size() > 0 {
            assert!(std::time::Instant::now() < deadline, "the idle log was not cut back ({} bytes)", log_size());
            std::thread::sleep(Duration::from_millis(50));
        }
        // The rows are all in the database file, and the writer goes on.
        writer.execute("INSERT INTO t VALUES (zeroblob(10))", []).unwrap();
        let rows: i64 = writer.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 51);
        // A log within its allowance is left as it is.
        std::thread::sleep(INTERVAL * 3);
        assert!(log_size() > 0, "a small log is kept");
        drop(checkpointer);
        let fresh = rusqlite::Connection::open(&path).unwrap();
        let rows: i64 = fresh.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 51);
    }
}
