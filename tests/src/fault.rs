//! Faults the durability tests put under the real binary: the shims in
//! `tests/fault/`, built here with the C compiler and loaded with
//! `LD_PRELOAD`, and the power cut that undoes what the power-cut shim
//! journaled.
//!
//! Must not: change a database file except by undoing journaled writes.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use crate::workos::user;
use crate::{ServerOptions, TestDb, TestServer};

/// Builds `tests/fault/<name>.c` into a shared library in `dir`; returns its path.
pub fn build_shim(name: &str, dir: &Path) -> PathBuf {
    let shim = dir.join(format!("lib{name}.so"));
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("fault/{name}.c"));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&shim)
        .arg(&source)
        .args(["-ldl", "-lpthread"])
        .output()
        .unwrap_or_else(|e| panic!("{cc} (needed to build SQLite too) could not run: {e}"));
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    shim
}

/// Marker files in the test database's directory that make its disk fail,
/// while they exist, for a server started with [`failing_disk`]: every sync
/// of the log fails (EIO); every write to any of the database's files fails
/// (ENOSPC, a full disk).
pub const FAILED_SYNC: &str = "the-disk-fails-to-sync";
pub const DISK_FULL: &str = "the-disk-is-full";
pub const SPILL_SYNC_FAILS: &str = "the-spill-file-fails-to-sync";

/// `options`, over a disk that fails on demand: the shim
/// `tests/fault/fail_log_sync.c`, with the markers [`FAILED_SYNC`],
/// [`SPILL_SYNC_FAILS`] and [`DISK_FULL`] in `db`'s directory.
pub fn failing_disk(db: &TestDb, options: ServerOptions) -> ServerOptions {
    let shim = build_shim("fail_log_sync", db.dir.path());
    let marker = |name: &str| db.dir.path().join(name).to_str().unwrap().to_string();
    options
        .env("LD_PRELOAD", shim.to_str().unwrap())
        .env("AUTHKIT_TEST_FAIL_SYNC_WHEN", &marker(FAILED_SYNC))
        .env("AUTHKIT_TEST_FAIL_SPILL_SYNC_WHEN", &marker(SPILL_SYNC_FAILS))
        .env("AUTHKIT_TEST_DISK_FULL_WHEN", &marker(DISK_FULL))
}

/// How many times a power-cut test cuts: `AUTHKIT_TEST_POWER_CUTS`, 3 by
/// default (more for a soak).
pub fn cuts() -> usize {
    std::env::var("AUTHKIT_TEST_POWER_CUTS").map_or(3, |n| n.parse().expect("AUTHKIT_TEST_POWER_CUTS: a number"))
}

/// What a power cut undid: per database file, the writes since its last sync.
#[derive(Debug, Default)]
pub struct Cut {
    pub files: Vec<(String, usize)>,
}

impl Cut {
    /// How many writes were undone, in every file.
    pub fn writes(&self) -> usize {
        self.files.iter().map(|(_, n)| n).sum()
    }
}

/// A disk that keeps only what was synced, under a test database's files:
/// servers started with [`PowerCut::under`] run with the `power_cut` shim,
/// and [`PowerCut::cut`], once such a server is killed, undoes what it wrote
/// and did not sync.
pub struct PowerCut {
    shim: PathBuf,
    journals: PathBuf,
    files: PathBuf,
}

impl PowerCut {
    pub fn new(db: &TestDb) -> PowerCut {
        let journals = db.dir.path().join("power-cut");
        std::fs::create_dir(&journals).unwrap();
        PowerCut { shim: build_shim("power_cut", db.dir.path()), journals, files: db.dir.path().to_path_buf() }
    }

    /// `options`, with the shim journaling every write to the database's files.
    pub fn under(&self, options: ServerOptions) -> ServerOptions {
        options
            .env("LD_PRELOAD", self.shim.to_str().unwrap())
            .env("AUTHKIT_TEST_POWER_CUT_DIR", self.journals.to_str().unwrap())
    }

    /// The cut, once the server is killed: undoes, newest first, every write
    /// journaled after its file's last sync, so that each file holds what a
    /// disk that kept only synced data would hold; then deletes SQLite's
    /// shared-memory index (`-shm`), which does not survive a power cut
    /// either, and the journals.
    pub fn cut(&self) -> Cut {
        let mut cut = Cut::default();
        for entry in std::fs::read_dir(&self.journals).unwrap() {
            let path = entry.unwrap().path();
            let Some(name) = path.file_name().unwrap().to_str().unwrap().strip_suffix(".undo") else { continue };
            let journal = std::fs::read(&path).unwrap();
            let synced = std::fs::read(self.journals.join(format!("{name}.synced")))
                .ok()
                .filter(|bytes| bytes.len() == 8)
                .map_or(0, |bytes| u64::from_ne_bytes(bytes.try_into().unwrap()) as usize);
            let records = records(&journal[synced.min(journal.len())..]);
            let target = self.files.join(name);
            // A file deleted since (SQLite's rollback journal, used once while
            // the database is created) stays deleted.
            if !records.is_empty() && target.exists() {
                let file = OpenOptions::new().write(true).open(&target).unwrap();
                for (offset, size, old) in records.iter().rev() {
                    file.set_len(*size).unwrap();
                    file.write_all_at(old, *offset).unwrap();
                }
                file.sync_all().unwrap();
            }
            cut.files.push((name.to_string(), records.len()));
        }
        for entry in std::fs::read_dir(&self.files).unwrap() {
            let path = entry.unwrap().path();
            if path.to_str().unwrap().ends_with("-shm") {
                std::fs::remove_file(path).unwrap();
            }
        }
        std::fs::remove_dir_all(&self.journals).unwrap();
        std::fs::create_dir(&self.journals).unwrap();
        cut
    }
}

impl PowerCut {
    /// Kills `server` (SIGKILL), waits for `tasks` (which end once their
    /// connections fail) and for the process to be gone, so that it writes
    /// nothing more, then cuts.
    pub async fn kill_and_cut(&self, server: Arc<TestServer>, tasks: Vec<JoinHandle<()>>) -> Cut {
        server.signal("KILL");
        for task in tasks {
            task.await.unwrap();
        }
        Arc::into_inner(server).expect("no task holds the server").wait_exit().await;
        self.cut()
    }
}

/// Webhooks sent to the `default` tenant until the power goes off: each a
/// user.created of a user of its own (`user_<n>`), and which were acknowledged.
#[derive(Clone, Default)]
pub struct Deliveries {
    sent: Arc<AtomicUsize>,
    acknowledged: Arc<Mutex<Vec<String>>>,
}

impl Deliveries {
    /// Starts `senders` tasks delivering to `server` one webhook after
    /// another; each ends when its connection fails (the power is off) and
    /// panics at any answer but 200.
    pub fn start(&self, server: &Arc<TestServer>, senders: usize) -> Vec<JoinHandle<()>> {
        (0..senders)
            .map(|_| {
                let (server, this) = (server.clone(), self.clone());
                tokio::spawn(async move {
                    loop {
                        let n = this.sent.fetch_add(1, Ordering::SeqCst);
                        let at = "2025-01-01T00:00:00.000Z";
                        let data = user(&format!("user_{n}"), &format!("u{n}@example.com"), "U", at);
                        let (id, body) = server.emulator.event("user.created", data, at);
                        match server.try_deliver(&body).await {
                            Ok(reply) if reply.status == 200 => this.acknowledged.lock().unwrap().push(id),
                            Ok(reply) => panic!("{reply:?}"),
                            Err(_) => return,
                        }
                    }
                })
            })
            .collect()
    }

    /// The ids of the events acknowledged so far.
    pub fn acknowledged(&self) -> Vec<String> {
        self.acknowledged.lock().unwrap().clone()
    }

    /// How many were acknowledged so far.
    pub fn acknowledged_count(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    /// How many were sent (acknowledged, refused or cut off).
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }
}

/// The journal's records: (offset, size before, bytes that were there). A
/// record cut short by the kill is dropped: its write never happened.
fn records(mut journal: &[u8]) -> Vec<(u64, u64, &[u8])> {
    let mut records = Vec::new();
    let word = |bytes: &[u8]| u64::from_ne_bytes(bytes.try_into().unwrap());
    while journal.len() >= 24 {
        let (offset, size, length) = (word(&journal[..8]), word(&journal[8..16]), word(&journal[16..24]) as usize);
        let Some(old) = journal.get(24..24 + length) else { break };
        records.push((offset, size, old));
        journal = &journal[24 + length..];
    }
    records
}
