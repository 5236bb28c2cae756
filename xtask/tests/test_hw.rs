//! `cargo xtask test-hw` on a machine without TT_METAL_HOME (as CI): it says what is missing
//! and exits non-zero, before building anything.

use std::process::Command;

#[test]
fn test_hw_without_tt_metal_home_says_what_is_missing() {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("test-hw")
        .env_remove("TT_METAL_HOME")
        .output()
        .expect("run xtask");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("cannot run on this machine") && err.contains("TT_METAL_HOME is not set"),
        "{err}"
    );
    if !std::path::Path::new("/dev/tenstorrent").exists() {
        assert!(err.contains("/dev/tenstorrent"), "{err}");
    }
    // Nothing was built: no cargo command was started.
    assert!(!err.contains("$ "), "{err}");
}
