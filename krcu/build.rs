//! Decides whether the lockdep-style validator is compiled in: always in
//! builds with debug assertions, and in any build with the `lockdep` feature.
//! Without it the validator's hooks on the lock paths are compiled out.
//! Also sets `krcu_asan` in builds with AddressSanitizer (see `src/asan.rs`).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(krcu_lockdep)");
    let debug = std::env::var_os("CARGO_CFG_DEBUG_ASSERTIONS").is_some();
    let feature = std::env::var_os("CARGO_FEATURE_LOCKDEP").is_some();
    if debug || feature {
        println!("cargo::rustc-cfg=krcu_lockdep");
    }
    // AddressSanitizer (nightly `-Zsanitizer=address`): poison free pages
    // and slab objects. `cfg(sanitize = "address")` itself is unstable, so
    // the build derives its own cfg from what cargo reports.
    println!("cargo::rustc-check-cfg=cfg(krcu_asan)");
    let sanitize = std::env::var("CARGO_CFG_SANITIZE").unwrap_or_default();
    if sanitize.split(',').any(|s| s == "address") {
        println!("cargo::rustc-cfg=krcu_asan");
    }
    println!("cargo::rerun-if-changed=build.rs");
}
