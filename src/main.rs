//! The `selfheal-exporter` binary: sets up the allocator and the TLS provider, then hands
//! over to [`selfheal_exporter::app::main`].

use std::process::ExitCode;

/// mimalloc rather than glibc's malloc: the watch path allocates and frees a decoded pod
/// per event, and glibc spent about 9 % of the daemon's CPU on that (measured with
/// `cargo bench --bench scale`; see README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's defaults favour speed over resident memory: arenas committed eagerly and
/// freed pages returned to the OS after a delay. At 100,000 pods that meant 129 MiB peak
/// RSS against 108 MiB with both turned off, at no measurable cost in the drain bench
/// (`cargo bench --bench scale`).
///
/// The first arena is reserved at the process's first allocation, before `main`, so the
/// options are set from a constructor that the loader runs before Rust's runtime starts.
/// (`MIMALLOC_*` environment variables cannot change these two: a set option wins.)
#[cfg(target_os = "linux")]
#[allow(unsafe_code)] // a constructor entry: see the SAFETY note in tune_allocator
#[used]
#[unsafe(link_section = ".init_array")]
static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;

#[cfg(target_os = "linux")]
extern "C" fn tune_allocator() {
    // mimalloc v3's `mi_option_e` values (libmimalloc-sys 0.1.49, pinned in Cargo.lock;
    // `MIMALLOC_VERBOSE=1 selfheal-exporter --version` lists them in order), which its
    // Rust bindings do not name.
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    #[allow(unsafe_code)]
    // SAFETY: setting an option is a plain store in mimalloc's option table, valid at
    // any time, and any value is valid for these two.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

fn main() -> ExitCode {
    // Two TLS providers in one process make kube panic: choose ring before anything else.
    let _ = rustls::crypto::ring::default_provider().install_default();
    selfheal_exporter::app::main()
}
