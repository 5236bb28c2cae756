//! `cargo xtask test-hw`: the device test suite and the benchmark on a Tenstorrent card.
//!
//! 1. Checks for a card (`/dev/tenstorrent`) and a tt-metal build (`TT_METAL_HOME`); without
//!    either it lists what is missing and fails, building nothing.
//! 2. Builds the TT-NN shim (`libttnn_c.so`, by ttnn-sys's build script, which compiles
//!    `ttnn-sys/csrc/ttnn_c.cpp` when `TT_METAL_HOME` is set) and the `bitnet` binary, release.
//! 3. Runs the device test suite (`tests/tests/device.rs`) on the card: `BITNET_DEVICE=tt`,
//!    `TTNN_C_LIB` at the shim just built, one test at a time (each opens the card).
//! 4. Runs `bitnet bench --device tt` on `--model`, else on a random checkpoint of the 2B-4T
//!    shape written once into `.cache/synth-2b4t` (`cargo xtask synth-model`).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::{cargo, run, synth, workspace_root};

/// The device node the Tenstorrent kernel driver (tt-kmd) creates for the cards.
pub const CARD_PATH: &str = "/dev/tenstorrent";

/// What `test-hw` needs that is missing here, one sentence each (empty: ready to run).
pub fn missing(card: &Path, tt_metal_home: Option<&OsStr>) -> Vec<String> {
    let mut out = Vec::new();
    if !card.exists() {
        out.push(format!(
            "no Tenstorrent card: {} does not exist (install a card and its kernel driver, tt-kmd)",
            card.display()
        ));
    }
    match tt_metal_home.filter(|h| !h.is_empty()) {
        None => out.push(
            "TT_METAL_HOME is not set: point it at a tt-metal v0.74.0 source build (./build_metal.sh; see ttnn-sys/README.md)"
                .to_string(),
        ),
        Some(h) if !Path::new(h).join("tt_metal").is_dir() => out.push(format!(
            "TT_METAL_HOME={} is not a tt-metal checkout (it has no tt_metal/ directory)",
            Path::new(h).display()
        )),
        Some(_) => {}
    }
    out
}

/// Arguments of `cargo xtask test-hw`.
#[derive(Debug, clap::Args)]
pub struct TestHwArgs {
    /// Checkpoint for `bitnet bench --device tt` (default: a random 2B-4T-shape checkpoint in
    /// .cache/synth-2b4t, written on first use, about 1.2 GB).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Skip the benchmark.
    #[arg(long)]
    pub no_bench: bool,
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").filter(|d| !d.is_empty()) {
        Some(d) => workspace_root().join(d),
        None => workspace_root().join("target"),
    }
}

pub fn test_hw(a: &TestHwArgs) -> anyhow::Result<()> {
    let home: Option<OsString> = std::env::var_os("TT_METAL_HOME");
    let gaps = missing(Path::new(CARD_PATH), home.as_deref());
    if !gaps.is_empty() {
        eprintln!("cargo xtask test-hw cannot run on this machine:");
        for g in &gaps {
            eprintln!("  - {g}");
        }
        eprintln!(
            "It runs on a machine with a Tenstorrent card and a tt-metal build (README: \"Tenstorrent backend\"); CI covers the FFI path with the host-backed provider instead."
        );
        bail!("{} prerequisite(s) missing", gaps.len());
    }

    // The shim (ttnn-sys's build script, TT_METAL_HOME set) and the CLI, release.
    run(cargo().args(["build", "--release", "-p", "ttnn-sys", "-p", "bitnet-cli"]))?;
    let release = target_dir().join("release");
    let shim = release.join("libttnn_c.so");
    if !shim.is_file() {
        bail!(
            "the build did not produce {} (ttnn-sys/build.rs copies it there when TT_METAL_HOME is set)",
            shim.display()
        );
    }

    // The device test suite on the card (release: the same profile as the shim just built).
    run(cargo()
        .args([
            "test",
            "--release",
            "-p",
            "bitnet-tests",
            "--test",
            "device",
            "--",
            "--test-threads=1",
        ])
        .env("BITNET_DEVICE", "tt")
        .env("TTNN_C_LIB", &shim))?;

    if a.no_bench {
        return Ok(());
    }
    let model = match &a.model {
        Some(m) => m.clone(),
        None => {
            let dir = workspace_root().join(".cache").join("synth-2b4t");
            if !dir.join("model.safetensors").is_file() {
                eprintln!(
                    "writing a random 2B-4T-shape checkpoint to {}",
                    dir.display()
                );
                synth::synth_model(&synth::ModelShape::named("2b4t")?, &dir, 1)?;
            }
            dir
        }
    };
    let bitnet = release.join("bitnet");
    run(std::process::Command::new(&bitnet)
        .arg("bench")
        .arg("--device")
        .arg("tt")
        .arg("--tt-lib")
        .arg(&shim)
        .arg("--model")
        .arg(&model))
    .with_context(|| format!("{} bench --device tt", bitnet.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_names_the_card_and_tt_metal_home() {
        let tmp = std::env::temp_dir();
        let nowhere = tmp.join("xtask-no-such-card");
        let m = missing(&nowhere, None);
        assert_eq!(m.len(), 2, "{m:?}");
        assert!(m[0].contains("xtask-no-such-card") && m[0].contains("no Tenstorrent card"));
        assert!(m[1].contains("TT_METAL_HOME is not set"));
        // Empty counts as unset.
        assert_eq!(missing(&nowhere, Some(OsStr::new(""))).len(), 2);
        // A directory that is not a tt-metal checkout.
        let m = missing(&tmp, Some(tmp.as_os_str()));
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].contains("not a tt-metal checkout"));
        // Ready: the card node exists and TT_METAL_HOME has tt_metal/.
        let home = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(home.path().join("tt_metal")).expect("mkdir");
        assert!(missing(&tmp, Some(home.path().as_os_str())).is_empty());
    }
}
