//! Workspace-level integration tests (in `tests/`): golden tests against the HF oracle and CLI
//! end-to-end tests. This library holds what those tests share: fixture paths and comparisons.

use std::path::PathBuf;

/// `tests/fixtures/` of this workspace.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}
