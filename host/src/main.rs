//! The `authkit-host` binary: everything lives in the library (see `authkit_host::cli`).

/// mimalloc instead of the system allocator: requests are parsed on the runtime's
/// workers and their buffers freed on the ingest writer's thread, a cross-thread
/// pattern glibc's allocator serves slowly (measured with `bench-ingest`: about a
/// third more acknowledged webhooks per second).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    authkit_host::cli::main()
}
