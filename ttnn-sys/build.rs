//! Builds `libttnn_c.so` from `csrc/ttnn_c.cpp` against a tt-metal source build, and only when
//! `TT_METAL_HOME` is set; otherwise prints one warning and builds nothing (the Rust side loads
//! the library at run time, so the crate needs no native code to compile).
//!
//! Variables (each re-runs the script when it changes):
//! - `TT_METAL_HOME`: the tt-metal checkout (tag v0.74.0), built with `./build_metal.sh`.
//! - `TTNN_C_INCLUDE_DIRS`: extra include directories, `:`-separated (third-party headers the
//!   tt-metal build fetched, e.g. fmt, spdlog, magic_enum, reflect, nlohmann_json).
//! - `TTNN_C_LIB_DIR`: where `libtt_metal.so` and the TT-NN library are (default
//!   `$TT_METAL_HOME/build/lib`).
//! - `TTNN_C_LINK_LIBS`: `:`-separated link arguments after `-l` (default `tt_metal::_ttnn.so`,
//!   i.e. `-ltt_metal -l:_ttnn.so`).
//! - `TTNN_C_CXXFLAGS`: extra compiler flags, whitespace-separated (e.g. defines tt-metal's CMake
//!   adds).
//!
//! The library is written to `$OUT_DIR/libttnn_c.so` and copied next to the build's binaries
//! (`target/<profile>/`), where the loader looks.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    for var in [
        "TT_METAL_HOME",
        "TTNN_C_INCLUDE_DIRS",
        "TTNN_C_LIB_DIR",
        "TTNN_C_LINK_LIBS",
        "TTNN_C_CXXFLAGS",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=csrc/ttnn_c.h");
    println!("cargo:rerun-if-changed=csrc/ttnn_c.cpp");

    let Some(home) = env::var_os("TT_METAL_HOME").map(PathBuf::from) else {
        println!(
            "cargo:warning=TT_METAL_HOME is not set: libttnn_c.so (the Tenstorrent TT-NN shim) is not built; the host backend is unaffected"
        );
        return;
    };
    if let Err(e) = build_shim(&home) {
        // A requested build that fails must fail loudly, not be skipped.
        panic!(
            "building libttnn_c.so against TT_METAL_HOME={}: {e}",
            home.display()
        );
    }
}

fn split_list(var: &str) -> Vec<String> {
    env::var(var)
        .map(|v| {
            v.split(':')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

fn build_shim(home: &Path) -> Result<(), String> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let csrc = manifest.join("csrc");
    let lib_dir = env::var("TTNN_C_LIB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| home.join("build").join("lib"));

    let mut includes: Vec<PathBuf> = vec![
        csrc.clone(),
        home.to_path_buf(),
        home.join("ttnn"),
        home.join("ttnn").join("cpp"),
        home.join("ttnn").join("api"),
        home.join("tt_metal"),
        home.join("tt_metal").join("api"),
        home.join("tt_metal").join("include"),
        home.join("tt_metal").join("hostdevcommon").join("api"),
        home.join("tt_metal").join("hw").join("inc"),
        home.join("tt_metal")
            .join("third_party")
            .join("umd")
            .join("device")
            .join("api"),
        home.join("tt_stl"),
        home.join("build").join("include"),
    ];
    includes.extend(
        split_list("TTNN_C_INCLUDE_DIRS")
            .into_iter()
            .map(PathBuf::from),
    );

    let compiler = cc::Build::new()
        .cpp(true)
        .std("c++20")
        .pic(true)
        .opt_level(2)
        .cargo_metadata(false)
        .try_get_compiler()
        .map_err(|e| e.to_string())?;
    let mut cmd: Command = compiler.to_command();
    cmd.arg("-shared").arg("-fvisibility=hidden");
    for inc in &includes {
        cmd.arg(format!("-I{}", inc.display()));
    }
    if let Ok(flags) = env::var("TTNN_C_CXXFLAGS") {
        cmd.args(flags.split_whitespace());
    }
    let lib = out_dir.join("libttnn_c.so");
    cmd.arg(csrc.join("ttnn_c.cpp"))
        .arg("-o")
        .arg(&lib)
        .arg(format!("-L{}", lib_dir.display()))
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()));
    let libs = {
        let l = split_list("TTNN_C_LINK_LIBS");
        if l.is_empty() {
            vec!["tt_metal".to_string(), ":_ttnn.so".to_string()]
        } else {
            l
        }
    };
    for l in libs {
        cmd.arg(format!("-l{l}"));
    }
    let status = cmd.status().map_err(|e| format!("running {cmd:?}: {e}"))?;
    if !status.success() {
        return Err(format!("{cmd:?} failed with {status}"));
    }
    // target/<profile>/build/ttnn-sys-<hash>/out -> target/<profile>/
    if let Some(profile_dir) = out_dir.ancestors().nth(3) {
        std::fs::copy(&lib, profile_dir.join("libttnn_c.so")).map_err(|e| {
            format!(
                "copying {} to {}: {e}",
                lib.display(),
                profile_dir.display()
            )
        })?;
    }
    Ok(())
}
