//! The C ABI stays consistent: the bindings match the header, the header is C-clean, and every
//! entry point it declares is implemented by the C++ shim and loaded by the generated struct.

use std::path::{Path, PathBuf};
use std::process::Command;

fn csrc(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("csrc")
        .join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(csrc(file)).expect("csrc file is readable")
}

/// Names of the functions the header declares (`<type> ttnn_c_name(` at the start of a
/// declaration).
fn header_functions() -> Vec<String> {
    let header = read("ttnn_c.h");
    let mut names = Vec::new();
    for line in header.lines() {
        let line = line.trim_start();
        if line.starts_with("/*") || line.starts_with('*') || line.starts_with("#") {
            continue;
        }
        if let Some(pos) = line.find("ttnn_c_") {
            let rest = &line[pos..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if rest[end..].starts_with('(') && !line.starts_with("typedef") {
                names.push(rest[..end].to_string());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn abi_version_matches_header() {
    let header = read("ttnn_c.h");
    let value: u32 = header
        .lines()
        .find_map(|l| l.trim().strip_prefix("#define TTNN_C_ABI_VERSION "))
        .expect("the header defines TTNN_C_ABI_VERSION")
        .trim()
        .parse()
        .expect("TTNN_C_ABI_VERSION is an integer");
    assert_eq!(ttnn_sys::TTNN_C_ABI_VERSION, value);
}

#[test]
fn loading_struct_has_the_abi_entry_points() {
    // Compile-time: the generated struct exists with function-pointer fields of the C types.
    let _abi: fn(&ttnn_sys::TtnnC) -> unsafe extern "C" fn() -> u32 = |l| l.ttnn_c_abi_version;
    let _err: fn(&ttnn_sys::TtnnC) -> unsafe extern "C" fn() -> *const std::os::raw::c_char =
        |l| l.ttnn_c_last_error;
    let _free: fn(&ttnn_sys::TtnnC) -> unsafe extern "C" fn(*mut ttnn_sys::ttnn_c_tensor) =
        |l| l.ttnn_c_tensor_free;
    let _begin: fn(
        &ttnn_sys::TtnnC,
    )
        -> unsafe extern "C" fn(*mut ttnn_sys::ttnn_c_device, u32, *mut u32) -> i32 =
        |l| l.ttnn_c_begin_trace_capture;

    // Every declared function is a field the loader resolves (the bindings text names it).
    let bindings: String = include_str!("../src/bindings.rs")
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let names = header_functions();
    assert!(
        names.len() > 40,
        "parsed {} functions from the header",
        names.len()
    );
    for name in &names {
        assert!(
            bindings.contains(&format!("pub{name}:unsafeextern\"C\"fn")),
            "{name} is declared in ttnn_c.h but not loaded by TtnnC"
        );
    }
}

#[test]
fn every_entry_point_is_implemented_by_the_shim() {
    let cpp = read("ttnn_c.cpp");
    for name in header_functions() {
        let defined = cpp
            .lines()
            .any(|l| l.contains(&format!(" {name}(")) && !l.trim_start().starts_with("//"));
        assert!(defined, "{name} has no definition in ttnn_c.cpp");
    }
}

#[test]
fn missing_library_is_an_error_not_a_panic() {
    // SAFETY: loading a path that does not exist runs no library initializer.
    let r = unsafe { ttnn_sys::TtnnC::new("/nonexistent/dir/libttnn_c.so") };
    assert!(r.is_err());
    assert!(ttnn_sys::LIB_NAMES.contains(&"libttnn_c.so"));
}

fn syntax_check(compiler: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(compiler)
        .args(args)
        .arg(csrc("ttnn_c.h"))
        .output()
        .map_err(|e| format!("{compiler}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn header_compiles_as_c() {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    syntax_check(
        &cc,
        &[
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-pedantic",
            "-Werror",
            "-fsyntax-only",
            "-x",
            "c",
        ],
    )
    .unwrap_or_else(|e| panic!("ttnn_c.h is not clean C99:\n{e}"));
}

#[test]
fn header_compiles_as_cpp() {
    // The shim includes the same header; a C++ compiler is optional on a machine without one.
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    match syntax_check(
        &cxx,
        &[
            "-std=c++20",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fsyntax-only",
            "-x",
            "c++",
        ],
    ) {
        Ok(()) => {}
        Err(e) if e.contains("No such file") || e.starts_with(&cxx) => {
            eprintln!("skipped: no C++ compiler ({e})");
        }
        Err(e) => panic!("ttnn_c.h does not compile as C++20:\n{e}"),
    }
}
