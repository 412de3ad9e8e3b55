//! Generates the C header from the Rust doc comments of `src/capi/`.
//!
//! The header is written to `$OUT_DIR/aioctx.h`; `include/aioctx.h` is the
//! committed copy, and the test `header_is_current` fails when they differ
//! (`tools/update-header.sh` refreshes it). Writing only into `OUT_DIR` keeps
//! `cargo package` and read-only source trees working.

use std::{env, path::PathBuf};

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("aioctx.h");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=src/capi");

    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is valid");
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("the C API generates a header")
        .write_to_file(&out);

    // A proper SONAME, so C programs record the ABI major version.
    let major = env::var("CARGO_PKG_VERSION_MAJOR").unwrap();
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libaioctx.so.{major}");
}
