//! The `authkit-host` binary: everything lives in the library (see `authkit_host::cli`).

fn main() -> std::process::ExitCode {
    authkit_host::cli::main()
}
