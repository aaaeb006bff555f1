//! The `portico` binary: the command line, and the wiring of the parts into one process.

mod cli;
mod cluster;
mod config;
mod node;
mod rfc2136;
mod runtime;
mod server;
mod store;
mod wiring;

use std::process::ExitCode;

/// mimalloc instead of glibc malloc: the proxy allocates small, short-lived buffers per request,
/// and the profile in docs/benchmarks.md showed glibc's malloc/free at about 7 % of CPU time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Transparent huge pages off for this process, before the allocator grows its arena: with the
/// kernel's THP set to `always` (Debian's default here), mimalloc's eagerly committed arena was
/// backed by 2 MiB pages and the load balancer's peak memory was 29 MB instead of 18 MB, with no
/// measurable speed in return (docs/benchmarks.md).
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> ExitCode {
    no_transparent_huge_pages();
    // Two rustls providers are compiled in (ring, aws-lc-rs); code that asks for the process
    // default (etcd's and other libraries' clients) gets ring, as before.
    let _ = rustls::crypto::ring::default_provider().install_default();
    cli::run()
}
