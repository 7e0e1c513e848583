//! Compiled components, kept in the data directory so a restart does not recompile.
//!
//! A file is keyed by the component's SHA-256 and wasmtime's compatibility hash (which covers
//! wasmtime's version and the engine configuration), and stored beside the SHA-256 of its own
//! bytes. A file that is missing, does not match its digest or fails to load is recompiled and
//! replaced; wasmtime is only ever asked to load bytes this host wrote.

use std::fs;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::LoadError;

/// Returns the component for `bytes`, from the cache when a sound copy is there.
pub fn load_or_compile(
    engine: &Engine,
    bytes: &[u8],
    cache_dir: &Path,
) -> Result<Component, LoadError> {
    let path = cache_path(engine, bytes, cache_dir);
    match load(engine, &path) {
        Ok(Some(component)) => {
            tracing::debug!(path = %path.display(), "loaded the compiled plugin from the cache");
            return Ok(component);
        }
        Ok(None) => {}
        Err(reason) => {
            tracing::warn!(path = %path.display(), %reason, "recompiling the plugin");
        }
    }

    let started = std::time::Instant::now();
    let compiled = engine
        .precompile_component(bytes)
        .map_err(LoadError::Compile)?;
    tracing::info!(elapsed = ?started.elapsed(), "compiled the plugin");
    if let Err(err) = store(&path, &compiled) {
        // The cache only saves time: run without it rather than refuse to start.
        tracing::warn!(path = %path.display(), error = %err, "could not cache the compiled plugin");
    }
    // SAFETY: `compiled` was produced just now by this engine.
    unsafe { Component::deserialize(engine, &compiled) }.map_err(LoadError::Compile)
}

fn cache_path(engine: &Engine, bytes: &[u8], cache_dir: &Path) -> PathBuf {
    let digest = hex::encode(Sha256::digest(bytes));
    let mut hasher = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    cache_dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish()))
}

fn digest_path(path: &Path) -> PathBuf {
    path.with_extension("cwasm.sha256")
}

/// `Ok(None)` when nothing is cached; `Err` with a reason when what is cached is unusable.
fn load(engine: &Engine, path: &Path) -> Result<Option<Component>, String> {
    let compiled = match fs::read(path) {
        Ok(compiled) => compiled,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(format!("cannot read the cached file: {err}")),
    };
    let expected = fs::read_to_string(digest_path(path))
        .map_err(|err| format!("cannot read the cached file's digest: {err}"))?;
    if hex::encode(Sha256::digest(&compiled)) != expected.trim() {
        return Err("the cached file does not match its digest".into());
    }
    // SAFETY: the file is one this host wrote (its digest matches the one written beside it,
    // in a directory only this user can write), for an engine with the same compatibility
    // hash, which is part of the file name.
    unsafe { Component::deserialize(engine, &compiled) }
        .map(Some)
        .map_err(|err| format!("wasmtime refused the cached file: {err:#}"))
}

fn store(path: &Path, compiled: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache paths have a directory");
    crate::data_dir::create_private_dir(dir)?;
    write_atomically(
        &digest_path(path),
        hex::encode(Sha256::digest(compiled)).as_bytes(),
    )?;
    write_atomically(path, compiled)
}

/// Writes through a temporary file and a rename, so a crash leaves the old file or the new
/// one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = crate::data_dir::create_private_file(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_changes_with_the_component_bytes() {
        let engine = Engine::default();
        let dir = Path::new("/cache");
        assert_ne!(
            cache_path(&engine, b"one", dir),
            cache_path(&engine, b"two", dir)
        );
        assert_eq!(
            cache_path(&engine, b"one", dir),
            cache_path(&engine, b"one", dir)
        );
    }
}
