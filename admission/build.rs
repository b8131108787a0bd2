//! Records the commit the webhook is built from, for `orchestration_dedupe_build_info`.
//!
//! `DEDUPE_BUILD_COMMIT` (e.g. set by an image build without `.git`) wins; else
//! `git rev-parse --short HEAD`; else `unknown`. The script reruns only when that variable,
//! `HEAD`, or the branch ref `HEAD` points to changes (a commit, a checkout) — never on every
//! build: each path named is one that exists, since cargo reruns a script whose
//! `rerun-if-changed` path is missing every time.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=DEDUPE_BUILD_COMMIT");
    println!("cargo:rerun-if-changed=build.rs");
    let from_env = std::env::var("DEDUPE_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = from_env.or_else(|| {
        // HEAD (in a worktree: the worktree's own), the ref it names (in the common dir,
        // loose or packed).
        let mut watched: Vec<PathBuf> = Vec::new();
        if let Some(head) = git(&["rev-parse", "--git-path", "HEAD"]) {
            watched.push(head.into());
        }
        if let Some(name) = git(&["symbolic-ref", "-q", "HEAD"]) {
            if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
                watched.push(path.into());
            }
            if let Some(packed) = git(&["rev-parse", "--git-path", "packed-refs"]) {
                watched.push(packed.into());
            }
        }
        for path in watched.iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
        git(&["rev-parse", "--short", "HEAD"])
    });
    println!(
        "cargo:rustc-env=DEDUPE_BUILD_COMMIT={}",
        commit.unwrap_or_else(|| "unknown".to_owned())
    );
}
