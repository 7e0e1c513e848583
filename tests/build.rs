//! Builds the test components the end-to-end tests load with `--plugin`.

use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let faulty = pulse_wasm_build::build_component(
        "faulty-plugin",
        &[
            &root.join("plugins/faulty/src"),
            &root.join("../wit"),
            &root.join("../Cargo.toml"),
        ],
    );
    println!(
        "cargo:rustc-env=PULSE_FAULTY_PLUGIN_WASM={}",
        faulty.display()
    );
}
