//! The guest components the tests run, built from `guest-examples/` sources.
//!
//! `tests/run.sh` builds them before the tests; when a test runs on its own
//! (`cargo test`), the first use builds them here (adding the `wasm32-wasip2`
//! target through rustup if it is missing). They land in the same cargo target
//! directory as the tests, under `wasm32-wasip2/release/`. The JavaScript
//! guest is built with componentize-js from npm (installed into
//! `guest-examples/js/node_modules/` on first use) into `guest-examples/js/dist/`,
//! the Python guest with componentize-py from PyPI (installed into
//! `guest-examples/python/.venv/`) into `guest-examples/python/dist/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository's root (the tests crate's parent).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// The cargo target directory this test binary was built in.
fn target_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    // target/<profile>/deps/<test binary>
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors().nth(3).expect("a target directory above the test binary").to_path_buf()
}

/// The path of a Rust guest component (`name` is the crate name with `_`), built if needed.
pub fn rust_guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let dir = target_dir();
        build_rust_guests(&dir);
        dir.join("wasm32-wasip2").join("release")
    });
    let path = dir.join(format!("{name}.wasm"));
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Builds every Rust guest (cargo only rebuilds what changed).
fn build_rust_guests(target_dir: &Path) {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    let has_target = installed.as_ref().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-wasip2"));
    if !has_target {
        let status = Command::new("rustup").args(["target", "add", "wasm32-wasip2"]).status();
        assert!(status.is_ok_and(|s| s.success()), "could not add the wasm32-wasip2 target with rustup");
    }
    let manifest = repo_root().join("guest-examples/rust/Cargo.toml");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "--locked", "--target", "wasm32-wasip2", "--manifest-path"])
        .arg(&manifest)
        .env("CARGO_TARGET_DIR", target_dir)
        .status()
        .expect("run cargo to build the guests");
    assert!(status.success(), "building the Rust guests failed");
}

/// The JavaScript reference handler, built (with `npm ci` first if its tools
/// are not installed yet) when it is missing or older than its sources.
pub fn js_guest() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = repo_root().join("guest-examples/js");
            let wasm = dir.join("dist/handler.wasm");
            let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            let sources = [dir.join("src/handler.js"), dir.join("build.mjs"), repo_root().join("wit/handler.wit")];
            let fresh =
                modified(&wasm).is_some_and(|built| sources.iter().all(|s| modified(s).is_some_and(|m| m <= built)));
            if !fresh {
                if !dir.join("node_modules").exists() {
                    npm(&dir, &["ci", "--no-audit", "--no-fund"]);
                }
                npm(&dir, &["run", "build"]);
            }
            assert!(wasm.exists(), "{} was not built", wasm.display());
            wasm
        })
        .clone()
}

/// The Python reference handler, built by `guest-examples/python/build.sh`
/// when it is missing or older than its sources.
pub fn python_guest() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = repo_root().join("guest-examples/python");
            let sources = [dir.join("app.py"), dir.join("build.sh"), repo_root().join("wit/handler.wit")];
            let wasm = dir.join("dist/handler.wasm");
            if !built_after(&wasm, &sources) {
                let status = Command::new("bash").arg(dir.join("build.sh")).status().expect("run build.sh");
                assert!(status.success(), "building the Python guest failed");
            }
            assert!(wasm.exists(), "{} was not built", wasm.display());
            wasm
        })
        .clone()
}

/// Whether `built` exists and is newer than every one of `sources`.
fn built_after(built: &Path, sources: &[PathBuf]) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    modified(built).is_some_and(|at| sources.iter().all(|s| modified(s).is_some_and(|m| m <= at)))
}

fn npm(dir: &Path, args: &[&str]) {
    let status = Command::new("npm").args(args).current_dir(dir).status().expect("run npm (is Node.js installed?)");
    assert!(status.success(), "npm {} failed in {}", args.join(" "), dir.display());
}
