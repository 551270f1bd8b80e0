//! Decides whether the lockdep-style validator is compiled in: always in
//! builds with debug assertions, and in any build with the `lockdep` feature.
//! Without it the validator's hooks on the lock paths are compiled out.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(krcu_lockdep)");
    let debug = std::env::var_os("CARGO_CFG_DEBUG_ASSERTIONS").is_some();
    let feature = std::env::var_os("CARGO_FEATURE_LOCKDEP").is_some();
    if debug || feature {
        println!("cargo::rustc-cfg=krcu_lockdep");
    }
    println!("cargo::rerun-if-changed=build.rs");
}
