//! The no_std proof, run by `cargo test`: builds `nostd-check/`, a `#![no_std]` staticlib with its
//! own `#[panic_handler]` that links tdp-core (default features off) and every architecture crate.
//! If any of them pulled in `std`, the build fails with a duplicate `panic_impl` lang item.

use std::path::Path;
use std::process::Command;

#[test]
fn every_library_crate_links_into_a_no_std_staticlib() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let manifest = root.join("nostd-check/Cargo.toml");
    let out = Command::new(env!("CARGO"))
        .args(["build", "--release", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(root.join("target/nostd-check"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "no_std staticlib failed to build:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = root.join("target/nostd-check/release/libtdp_nostd_check.a");
    assert!(lib.exists(), "{} was not produced", lib.display());
}
