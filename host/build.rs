//! Builds the Heroku plugin component so the host can embed it as its default plugin.

use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let wasm = pulse_wasm_build::build_component(
        "heroku-component",
        &[
            &root.join("plugin/src"),
            &root.join("plugin/Cargo.toml"),
            &root.join("plugin/component/src"),
            &root.join("plugin/component/Cargo.toml"),
            &root.join("wit"),
            // The `plugin` profile the component is built with.
            &root.join("Cargo.toml"),
        ],
    );
    println!(
        "cargo:rustc-env=PULSE_HEROKU_PLUGIN_WASM={}",
        wasm.display()
    );
}
