//! Builds a package of this workspace as a `wasm32-wasip2` component from a build script, so
//! that `cargo run` and `cargo test` produce the components they load without a separate step.
//!
//! The nested cargo uses its own target directory (`target/wasm`) so it never waits on the
//! lock of the build that runs it, and a file lock so two build scripts that run at once
//! (the host's and the tests') take turns instead of racing `rustup target add`.

use std::env;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target every component is built for.
pub const TARGET: &str = "wasm32-wasip2";

/// The cargo profile components are built with (see the workspace `Cargo.toml`).
pub const PROFILE: &str = "plugin";

/// Builds `package` (a workspace member) as a component and returns the `.wasm` path.
/// Tells cargo to rerun the calling build script when any of `watch` changes.
///
/// Panics with a message that says what to do when the build cannot run: a build script has
/// no better way to report.
pub fn build_component(package: &str, watch: &[&Path]) -> PathBuf {
    for path in watch {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let workspace = workspace_root();
    let target_dir = workspace.join("target").join("wasm");
    fs::create_dir_all(&target_dir).expect("create target/wasm");
    let lock = File::create(target_dir.join(".pulse-build.lock")).expect("create the build lock");
    lock.lock().expect("take the build lock");

    ensure_target();

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace)
        .args([
            "build",
            "--package",
            package,
            "--target",
            TARGET,
            "--profile",
            PROFILE,
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // Settings meant for the outer (native) build must not leak into the component build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        command.env_remove(var);
    }
    let status = command.status().expect("run cargo to build the component");
    assert!(
        status.success(),
        "building the {package} component failed (see the output above)"
    );

    let file = format!("{}.wasm", package.replace('-', "_"));
    let wasm = target_dir.join(TARGET).join(PROFILE).join(file);
    assert!(
        wasm.is_file(),
        "the component build did not produce {}",
        wasm.display()
    );
    wasm
}

/// Adds the wasm32-wasip2 target through rustup when the toolchain lacks it.
fn ensure_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .expect("ask rustc for its sysroot");
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    let libdir = Path::new(&sysroot).join("lib/rustlib").join(TARGET);
    if libdir.is_dir() {
        return;
    }

    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status();
    match status {
        // Cargo replays this on later builds; it stays true.
        Ok(status) if status.success() => {
            println!("cargo:warning=added the {TARGET} target with rustup (done once)")
        }
        _ => panic!(
            "the {TARGET} target is missing and `rustup target add {TARGET}` failed; \
             install it by hand and build again"
        ),
    }
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("run from a build script"));
    manifest
        .ancestors()
        .find(|dir| {
            fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|text| text.contains("[workspace]"))
        })
        .expect("the package is inside the pulse workspace")
        .to_path_buf()
}
