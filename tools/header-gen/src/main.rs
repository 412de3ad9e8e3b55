//! Writes the C header of the crate in DIR (default: the current directory)
//! to OUT, from its `cbindgen.toml` and the doc comments of its C API.
//!
//!     aioctx-header-gen [DIR] OUT
//!
//! The version macros come from the `[package]` version of DIR/Cargo.toml,
//! so the header, `aioctx_version()` and the pkg-config file cannot disagree
//! (the drift check and the install test compare them).

use std::{env, fs, path::PathBuf, process::exit};

fn package_version(manifest: &str) -> Option<(u64, u64, u64)> {
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            if let Some(v) = line.strip_prefix("version") {
                let v = v.trim_start().strip_prefix('=')?.trim().trim_matches('"');
                // "1.2.3" or "1.2.3-rc.1": the pre-release part is not in the macros.
                let mut parts = v.split(['.', '-', '+']).map(|p| p.parse::<u64>());
                return Some((
                    parts.next()?.ok()?,
                    parts.next()?.ok()?,
                    parts.next()?.ok()?,
                ));
            }
        }
    }
    None
}

fn version_block((major, minor, micro): (u64, u64, u64)) -> String {
    format!(
        r#"
/**
 * The version of this header: {major}.{minor}.{micro}. aioctx_version() gives the
 * version of the library loaded at run time, which may be newer.
 */
#define AIOCTX_VERSION_MAJOR {major}
#define AIOCTX_VERSION_MINOR {minor}
#define AIOCTX_VERSION_MICRO {micro}

/**
 * True (1) when this header is version major.minor.micro or newer, for code
 * that builds against several versions: `#if AIOCTX_CHECK_VERSION(0, 2, 0)`.
 * Functions added after 0.1 say "Since: X.Y" in their documentation.
 */
#define AIOCTX_CHECK_VERSION(major, minor, micro) \
    (AIOCTX_VERSION_MAJOR > (major) || \
     (AIOCTX_VERSION_MAJOR == (major) && AIOCTX_VERSION_MINOR > (minor)) || \
     (AIOCTX_VERSION_MAJOR == (major) && AIOCTX_VERSION_MINOR == (minor) && \
      AIOCTX_VERSION_MICRO >= (micro)))"#
    )
}

fn main() {
    let args: Vec<String> = env::args().skip(1).collect();
    let (dir, out) = match args.as_slice() {
        [out] => (PathBuf::from("."), PathBuf::from(out)),
        [dir, out] => (PathBuf::from(dir), PathBuf::from(out)),
        _ => {
            eprintln!("usage: aioctx-header-gen [CRATE_DIR] OUT");
            exit(2);
        }
    };
    let manifest = fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_else(|e| {
        eprintln!(
            "aioctx-header-gen: {}: {e}",
            dir.join("Cargo.toml").display()
        );
        exit(1);
    });
    let Some(version) = package_version(&manifest) else {
        eprintln!("aioctx-header-gen: no MAJOR.MINOR.MICRO version in [package] of Cargo.toml");
        exit(1);
    };
    let mut config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).unwrap_or_else(|e| {
        eprintln!("aioctx-header-gen: cbindgen.toml: {e}");
        exit(1);
    });
    config.after_includes = Some(version_block(version));
    let bindings = cbindgen::Builder::new()
        .with_crate(&dir)
        .with_config(config)
        .generate()
        .unwrap_or_else(|e| {
            eprintln!("aioctx-header-gen: {e}");
            exit(1);
        });
    bindings.write_to_file(&out);
}
