//! Finding the workspace's binaries. Integration tests of this package do not build other
//! packages' binaries, so `cargo build --workspace` comes first (`make test` does it).

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};

/// `target/<profile>/<name>`, next to the running binary: a test runs from
/// `target/<profile>/deps/`, the demo and loadgen from `target/<profile>/`.
///
/// `<NAME>_BIN` (the name upper-cased, `-` as `_`: `DEDUPE_PRUNER_BIN` for `dedupe-pruner`)
/// overrides it, to test a binary built elsewhere.
pub fn binary(name: &str) -> Result<PathBuf> {
    let var = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&var) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("unexpected binary path {}", exe.display()))?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir
            .parent()
            .ok_or_else(|| anyhow!("unexpected test binary path {}", exe.display()))?;
    }
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build it first (`cargo build --workspace`; `make test` does), or set {var}",
            path.display()
        );
    }
    Ok(path)
}
