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

/// mimalloc's arenas committed on demand rather than eagerly. Linux overcommits, so by default
/// mimalloc treats its arena as committed and only resets (not decommits) what it frees; the
/// load balancer's anonymous memory was about 3.4 MB larger that way, at idle and after the
/// benchmark's load (docs/benchmarks.md, issue 13 step 18). A default, so that the environment
/// variable `MIMALLOC_ARENA_EAGER_COMMIT` still overrides it.
///
/// Run from `.init_array`, before `main`: mimalloc reserves its first arena at the first
/// allocation, which Rust's runtime makes before `main` is called.
#[cfg(target_os = "linux")]
extern "C" fn allocator_options() {
    /// `mi_option_arena_eager_commit` in mimalloc.h's `mi_option_e` (libmimalloc-sys does not
    /// name it).
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    // SAFETY: sets the default of one of mimalloc's options; no memory of ours is involved.
    unsafe { libmimalloc_sys::mi_option_set_default(ARENA_EAGER_COMMIT, 0) };
}

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static ALLOCATOR_OPTIONS: extern "C" fn() = allocator_options;

fn main() -> ExitCode {
    no_transparent_huge_pages();
    // Two rustls providers are compiled in (ring, aws-lc-rs); code that asks for the process
    // default (etcd's and other libraries' clients) gets ring, as before.
    let _ = rustls::crypto::ring::default_provider().install_default();
    cli::run()
}
