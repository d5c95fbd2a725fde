//! Compiled components on disk, so a restart or a re-activation does not compile again.
//!
//! Owns: the cache directory's files, named by the component's content hash and
//! the engine's fingerprint, their integrity check, and the hit/compile/discard
//! counters the admin API shows. Must not: decide what is valid to run (the
//! runtime validates the component itself) or fail a load: any cache problem
//! (unreadable, corrupt, written by another engine or version) means compiling
//! again, with a warning.
//!
//! A file is `MAGIC`, the SHA-256 of the payload, then the payload (wasmtime's
//! serialized component). Wasmtime checks that a payload suits this engine, but
//! not that its bytes are intact; the digest does, before the bytes are trusted.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{debug, warn};
use wasmtime::Engine;
use wasmtime::component::Component;

const MAGIC: &[u8; 8] = b"AKCC\x01\0\0\0";
const HEADER: usize = MAGIC.len() + 32;

/// What the cache did since the process started.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CacheStats {
    /// Components loaded from a cached file, without compiling.
    pub hits: u64,
    /// Components compiled (nothing cached, or the cache was off or unusable).
    pub compiled: u64,
    /// Cached files found corrupt or foreign, deleted and rebuilt.
    pub discarded: u64,
}

pub struct CodeCache {
    /// `None`: compile every time.
    dir: Option<PathBuf>,
    /// Identifies the engine's code format: its settings, wasmtime's version and this host's.
    fingerprint: String,
    hits: AtomicU64,
    compiled: AtomicU64,
    discarded: AtomicU64,
}

impl CodeCache {
    pub fn new(engine: &Engine, dir: Option<PathBuf>) -> CodeCache {
        let mut hasher = std::hash::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        env!("CARGO_PKG_VERSION").hash(&mut hasher);
        if let Some(dir) = &dir
            && let Err(e) = std::fs::create_dir_all(dir)
        {
            warn!(dir = %dir.display(), error = %e, "cannot create the compiled-code cache; components will be compiled on every load");
        }
        CodeCache {
            dir,
            fingerprint: format!("{:016x}", hasher.finish()),
            hits: AtomicU64::new(0),
            compiled: AtomicU64::new(0),
            discarded: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            compiled: self.compiled.load(Ordering::Relaxed),
            discarded: self.discarded.load(Ordering::Relaxed),
        }
    }

    /// The file holding the compiled form of the component with this content hash.
    pub fn path(&self, hash: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{hash}-{}.cwasm", self.fingerprint)))
    }

    /// Deletes the compiled form of the component with this content hash, for
    /// every engine fingerprint (no host version needs code of a component
    /// no stored version has). Returns how many files it deleted; a file that
    /// cannot be deleted is logged and left (it is only a cache).
    pub fn forget(&self, hash: &str) -> usize {
        if hash.is_empty() || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            warn!(hash, "not a content hash; nothing deleted from the compiled-code cache");
            return 0;
        }
        self.delete_where(|file, _| file.hash == hash && matches!(file.kind, FileKind::Entry))
    }

    /// Deletes what the cache directory holds that no one will read: every
    /// entry of a component that no stored version has (`in_use` holds the
    /// content hashes of those that do), entries of other engine fingerprints
    /// (left by earlier host versions or engine settings; a process of another
    /// version sharing the directory compiles again), and temporary files of
    /// writes that never finished. This collects what [`CodeCache::forget`]
    /// missed: a crash between a deletion's commit and its files, or bytes
    /// deleted while the cache belonged to another fingerprint. Only files
    /// named as this cache names them are touched, and only once they are
    /// [`SWEEP_AFTER`] old: a file written just now may be for a version whose
    /// upload has not committed yet. Returns how many files it deleted.
    /// Blocking: it reads the directory.
    pub fn sweep(&self, in_use: &HashSet<String>) -> usize {
        self.delete_where(|file, entry| {
            let keep = match file.kind {
                FileKind::Entry => file.fingerprint == self.fingerprint && in_use.contains(file.hash),
                FileKind::Unfinished => false,
            };
            let young = entry
                .metadata()
                .and_then(|m| m.modified())
                .map_or(true, |at| at.elapsed().map_or(true, |age| age < SWEEP_AFTER));
            !keep && !young
        })
    }

    /// Deletes each file of the cache directory named as this cache names
    /// them (see [`CacheFile`]) for which `doomed` says so; others are never
    /// touched. Returns how many it deleted; a file that cannot be deleted is
    /// logged and left (it is only a cache). Blocking.
    fn delete_where(&self, doomed: impl Fn(&CacheFile, &std::fs::DirEntry) -> bool) -> usize {
        let Some(dir) = &self.dir else { return 0 };
        let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
        let mut deleted = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !CacheFile::parse(name).is_some_and(|file| doomed(&file, &entry)) {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                Ok(()) => deleted += 1,
                Err(e) => warn!(file = name, error = %e, "cannot delete unused compiled code"),
            }
        }
        deleted
    }

    /// The compiled component: from the cache when a sound entry exists, else
    /// compiled with `compile` and stored.
    pub fn load(
        &self,
        engine: &Engine,
        hash: &str,
        compile: impl FnOnce() -> wasmtime::Result<Component>,
    ) -> wasmtime::Result<Component> {
        let Some(path) = self.path(hash) else {
            self.compiled.fetch_add(1, Ordering::Relaxed);
            return compile();
        };
        match read_entry(engine, &path) {
            Ok(Some(component)) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                debug!(path = %path.display(), "compiled component loaded from the cache");
                return Ok(component);
            }
            Ok(None) => {}
            Err(reason) => {
                self.discarded.fetch_add(1, Ordering::Relaxed);
                warn!(path = %path.display(), %reason, "discarding a compiled-code cache entry; compiling again");
                let _ = std::fs::remove_file(&path);
            }
        }
        let component = compile()?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = component.serialize().map_err(|e| e.to_string()).and_then(|c| write_entry(&path, &c)) {
            warn!(path = %path.display(), error = %e, "cannot write to the compiled-code cache");
        }
        Ok(component)
    }
}

/// How old a file must be before [`CodeCache::sweep`] may delete it: longer
/// than an upload takes from writing its compiled code to committing its
/// version (compiling a component takes seconds, not minutes).
pub const SWEEP_AFTER: Duration = Duration::from_secs(10 * 60);

/// A file named as this cache names them: `<content hash>-<fingerprint>.cwasm`,
/// or `.tmp<pid>` instead of `.cwasm` while being written.
struct CacheFile<'a> {
    hash: &'a str,
    fingerprint: &'a str,
    kind: FileKind,
}

enum FileKind {
    Entry,
    Unfinished,
}

impl<'a> CacheFile<'a> {
    fn parse(name: &'a str) -> Option<CacheFile<'a>> {
        let (stem, extension) = name.split_once('.')?;
        let kind = if extension == "cwasm" {
            FileKind::Entry
        } else if extension
            .strip_prefix("tmp")
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
        {
            FileKind::Unfinished
        } else {
            return None;
        };
        let (hash, fingerprint) = stem.split_once('-')?;
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        (hex(hash, 64) && hex(fingerprint, 16)).then_some(CacheFile { hash, fingerprint, kind })
    }
}

/// `Ok(None)`: no entry. `Err`: an entry that must not be used, and why.
fn read_entry(engine: &Engine, path: &Path) -> Result<Option<Component>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("unreadable: {e}")),
    };
    if bytes.len() < HEADER || &bytes[..MAGIC.len()] != MAGIC {
        return Err("not a cache entry of this host".into());
    }
    let (digest, payload) = bytes[MAGIC.len()..].split_at(32);
    if Sha256::digest(payload).as_slice() != digest {
        return Err("its contents do not match their digest (corrupt)".into());
    }
    // SAFETY: wasmtime requires that the bytes come from `Component::serialize`
    // of a compatible engine and are intact. This host wrote them (the magic),
    // they are exactly what it wrote (the digest), and the file name carries
    // this engine's fingerprint; wasmtime itself checks the engine settings too.
    let component = unsafe { Component::deserialize(engine, payload) }.map_err(|e| format!("{e:#}"))?;
    Ok(Some(component))
}

/// Writes a temporary file and renames it over the entry, so a reader never sees half a file.
fn write_entry(path: &Path, payload: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(MAGIC)?;
        file.write_all(&Sha256::digest(payload))?;
        file.write_all(payload)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    /// A file in `dir`, last modified `age` ago.
    fn file(dir: &Path, name: &str, age: Duration) -> PathBuf {
        let path = dir.join(name);
        let file = std::fs::File::create(&path).unwrap();
        file.set_modified(SystemTime::now() - age).unwrap();
        path
    }

    #[test]
    fn a_sweep_deletes_only_old_files_of_this_cache_that_nothing_can_use() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CodeCache::new(&Engine::default(), Some(dir.path().to_path_buf()));
        let (used, unused, just_uploaded) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        let ours = cache.fingerprint.clone();
        let other = if ours == "0".repeat(16) { "1".repeat(16) } else { "0".repeat(16) };
        let old = SWEEP_AFTER + Duration::from_secs(60);
        let young = Duration::from_secs(5);
        let at = |name: String, age| file(dir.path(), &name, age);
        let kept = [
            at(format!("{used}-{ours}.cwasm"), old),
            // Maybe for an upload about to commit, or a write under way.
            at(format!("{just_uploaded}-{ours}.cwasm"), young),
            at(format!("{just_uploaded}-{ours}.tmp42"), young),
            // Not named as this cache names its files.
            at("notes.txt".into(), old),
            at(format!("{unused}-{ours}.cwasm.bak"), old),
            at(format!("{unused}.cwasm"), old),
            at(format!("{}-{ours}.cwasm", "g".repeat(64)), old),
            at(format!("{unused}-{ours}.tmp"), old),
        ];
        let deleted = [
            at(format!("{unused}-{ours}.cwasm"), old),
            at(format!("{used}-{other}.cwasm"), old),
            at(format!("{used}-{ours}.tmp1234"), old),
        ];

        let in_use: HashSet<String> = [used.clone()].into();
        assert_eq!(cache.sweep(&in_use), deleted.len());
        for path in &deleted {
            assert!(!path.exists(), "{} should be deleted", path.display());
        }
        for path in &kept {
            assert!(path.exists(), "{} should be kept", path.display());
        }
        assert_eq!(cache.sweep(&in_use), 0, "nothing left to delete");
    }

    #[test]
    fn without_a_directory_a_sweep_does_nothing() {
        let cache = CodeCache::new(&Engine::default(), None);
        assert_eq!(cache.sweep(&HashSet::new()), 0);
    }
}
