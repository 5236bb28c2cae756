//! Model resolution against fake Hugging Face caches in temporary directories. No test touches
//! the network: "online" tests point the hub at 127.0.0.1:9, where nothing listens.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bitnet_runtime::Error;
use bitnet_runtime::hub::{ResolveOptions, resolve_model};

const REPO: &str = "microsoft/bitnet-b1.58-2B-4T";
const REPO_DIR: &str = "models--microsoft--bitnet-b1.58-2B-4T";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const UNREACHABLE: &str = "http://127.0.0.1:9";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/tiny-2b4t-format")
        .join(name)
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).expect("read a fixture")
}

/// A fake hub cache in the layout huggingface_hub and hf-hub write: `refs/main` holding the
/// commit, content in `blobs/`, and `snapshots/<commit>/<file>` symlinks to the blobs.
struct FakeCache {
    dir: tempfile::TempDir,
}

impl FakeCache {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("write the fake cache"),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    fn repo_dir(&self) -> PathBuf {
        self.dir.path().join(REPO_DIR)
    }

    fn snapshot(&self) -> PathBuf {
        self.repo_dir().join("snapshots").join(COMMIT)
    }

    fn set_ref(&self, name: &str, content: &str) {
        let path = self.repo_dir().join("refs").join(name);
        std::fs::create_dir_all(path.parent().expect("write the fake cache"))
            .expect("write the fake cache");
        std::fs::write(path, content).expect("write the fake cache");
    }

    fn add(&self, file: &str, content: &[u8]) {
        let blobs = self.repo_dir().join("blobs");
        std::fs::create_dir_all(&blobs).expect("write the fake cache");
        std::fs::create_dir_all(self.snapshot()).expect("write the fake cache");
        // Blob names are content hashes in a real cache; any unique name does here.
        let blob = blobs.join(format!("blob-{}", file.replace('/', "_")));
        std::fs::write(&blob, content).expect("write the fake cache");
        let link = self.snapshot().join(file);
        #[cfg(unix)]
        std::os::unix::fs::symlink(
            Path::new("../../blobs").join(blob.file_name().expect("write the fake cache")),
            &link,
        )
        .expect("write the fake cache");
        #[cfg(not(unix))]
        std::fs::copy(&blob, &link).expect("write the fake cache");
    }

    fn mark_absent(&self, file: &str) {
        let marker = self.repo_dir().join(".no_exist").join(COMMIT).join(file);
        std::fs::create_dir_all(marker.parent().expect("write the fake cache"))
            .expect("write the fake cache");
        std::fs::write(marker, b"").expect("write the fake cache");
    }

    /// config and tokenizer files; `optional` adds generation_config.json and
    /// tokenizer_config.json.
    fn with_configs(optional: bool) -> Self {
        let cache = Self::new();
        cache.set_ref("main", COMMIT);
        cache.add("config.json", &fixture_bytes("config.json"));
        cache.add("tokenizer.json", br#"{"version":"1.0","model":{}}"#);
        if optional {
            cache.add(
                "generation_config.json",
                &fixture_bytes("generation_config.json"),
            );
            cache.add(
                "tokenizer_config.json",
                br#"{"bos_token":"<|begin_of_text|>"}"#,
            );
        }
        cache
    }

    /// A repo with a single `model.safetensors`.
    fn single_file() -> Self {
        let cache = Self::with_configs(true);
        cache.add("model.safetensors", &fixture_bytes("model.safetensors"));
        cache
    }

    /// A repo with an index and two shards, and without the optional files (recorded as
    /// absent, as a download by huggingface_hub or this crate leaves it).
    fn sharded(with_second_shard: bool) -> Self {
        let cache = Self::with_configs(false);
        cache.mark_absent("generation_config.json");
        cache.mark_absent("tokenizer_config.json");
        cache.add(
            "model.safetensors.index.json",
            br#"{"metadata": {"total_size": 24}, "weight_map": {
                "model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                "model.norm.weight": "model-00002-of-00002.safetensors",
                "model.layers.0.input_layernorm.weight": "model-00001-of-00002.safetensors"}}"#,
        );
        cache.add("model-00001-of-00002.safetensors", b"shard one");
        if with_second_shard {
            cache.add("model-00002-of-00002.safetensors", b"shard two");
        }
        cache
    }

    fn offline(&self) -> ResolveOptions {
        ResolveOptions {
            offline: true,
            cache_dir: Some(self.root()),
            ..Default::default()
        }
    }

    /// Online options against an unreachable hub; `None` (the test is skipped) when the
    /// environment forces offline mode, which would make these tests moot.
    fn online(&self) -> Option<ResolveOptions> {
        let forced = std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
            matches!(
                v.trim().to_ascii_uppercase().as_str(),
                "1" | "ON" | "YES" | "TRUE"
            )
        });
        if forced {
            eprintln!("HF_HUB_OFFLINE is set: skipping an online-mode test");
            return None;
        }
        Some(ResolveOptions {
            offline: false,
            cache_dir: Some(self.root()),
            endpoint: Some(UNREACHABLE.to_owned()),
            ..Default::default()
        })
    }
}

fn assert_has(dir: &Path, files: &[&str]) {
    for file in files {
        assert!(dir.join(file).is_file(), "{} lacks {file}", dir.display());
    }
}

#[test]
fn offline_single_file_repo_resolves_to_the_snapshot() {
    let cache = FakeCache::single_file();
    let dir = resolve_model(REPO, &cache.offline()).unwrap();
    assert_eq!(dir, cache.snapshot());
    assert_has(
        &dir,
        &[
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "model.safetensors",
        ],
    );
    // Through the symlinks, the bytes are the checkpoint's.
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        fixture_bytes("model.safetensors")
    );
}

#[test]
fn offline_sharded_repo_resolves_with_every_shard() {
    let cache = FakeCache::sharded(true);
    let dir = resolve_model(REPO, &cache.offline()).unwrap();
    assert_eq!(dir, cache.snapshot());
    assert_has(
        &dir,
        &[
            "config.json",
            "tokenizer.json",
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ],
    );
}

fn expect_not_cached(err: Error, cache: &FakeCache, expected_file: &str) {
    let message = err.to_string();
    match err {
        Error::ModelNotCached {
            repo,
            file,
            cache_dir,
            ..
        } => {
            assert_eq!(repo, REPO);
            assert!(file.contains(expected_file), "{file}");
            assert_eq!(cache_dir, cache.root());
        }
        other => panic!("expected ModelNotCached, got {other:?}"),
    }
    for needle in [
        expected_file,
        REPO,
        &cache.root().display().to_string(),
        "offline",
        "HF_HUB_OFFLINE",
        "local model directory",
    ] {
        assert!(message.contains(needle), "{needle:?} not in: {message}");
    }
}

#[test]
fn offline_missing_tokenizer_names_file_repo_and_cache() {
    let cache = FakeCache::new();
    cache.set_ref("main", COMMIT);
    cache.add("config.json", &fixture_bytes("config.json"));
    cache.add("model.safetensors", &fixture_bytes("model.safetensors"));
    let err = resolve_model(REPO, &cache.offline()).unwrap_err();
    expect_not_cached(err, &cache, "tokenizer.json");
}

#[test]
fn offline_missing_shard_names_the_shard() {
    let cache = FakeCache::sharded(false);
    let err = resolve_model(REPO, &cache.offline()).unwrap_err();
    expect_not_cached(err, &cache, "model-00002-of-00002.safetensors");
}

#[test]
fn offline_missing_weights_names_both_layouts() {
    let cache = FakeCache::with_configs(true);
    let err = resolve_model(REPO, &cache.offline()).unwrap_err();
    expect_not_cached(err, &cache, "model.safetensors");
    let err = resolve_model(REPO, &cache.offline()).unwrap_err();
    assert!(
        err.to_string().contains("model.safetensors.index.json"),
        "{err}"
    );
}

#[test]
fn offline_repo_absent_from_cache() {
    let cache = FakeCache::new();
    let err = resolve_model(REPO, &cache.offline()).unwrap_err();
    expect_not_cached(err, &cache, "config.json");
}

#[test]
fn offline_revision_not_in_cache_is_named() {
    let cache = FakeCache::single_file();
    let opts = ResolveOptions {
        revision: Some("v2".to_owned()),
        ..cache.offline()
    };
    let err = resolve_model(REPO, &opts).unwrap_err();
    assert!(matches!(err, Error::ModelNotCached { .. }), "{err:?}");
    assert!(err.to_string().contains("revision v2"), "{err}");
}

#[test]
fn offline_commit_hash_revision_needs_no_ref() {
    let cache = FakeCache::single_file();
    std::fs::remove_dir_all(cache.repo_dir().join("refs")).unwrap();
    let opts = ResolveOptions {
        revision: Some(COMMIT.to_owned()),
        ..cache.offline()
    };
    assert_eq!(resolve_model(REPO, &opts).unwrap(), cache.snapshot());
}

#[test]
fn offline_ref_with_trailing_newline() {
    let cache = FakeCache::single_file();
    cache.set_ref("main", &format!("{COMMIT}\n"));
    assert_eq!(
        resolve_model(REPO, &cache.offline()).unwrap(),
        cache.snapshot()
    );
}

#[test]
fn shard_index_escaping_the_snapshot_is_rejected() {
    let cache = FakeCache::with_configs(false);
    cache.add(
        "model.safetensors.index.json",
        br#"{"weight_map": {"w": "../../../../etc/passwd"}}"#,
    );
    let err = resolve_model(REPO, &cache.offline()).unwrap_err();
    assert!(matches!(err, Error::ModelFile { .. }), "{err:?}");
    assert!(err.to_string().contains("not a relative path"), "{err}");
}

#[test]
fn malformed_shard_index_is_reported() {
    let cache = FakeCache::with_configs(false);
    cache.add("model.safetensors.index.json", b"{not json");
    let err = resolve_model(REPO, &cache.offline()).unwrap_err();
    match &err {
        Error::ModelFile { path, .. } => {
            assert!(path.ends_with("model.safetensors.index.json"), "{path:?}")
        }
        other => panic!("expected ModelFile, got {other:?}"),
    }
}

#[test]
fn local_directory_is_returned_as_given() {
    let dir = fixture("");
    let spec = dir.to_str().unwrap();
    // Even offline and with an empty cache: a directory needs no hub.
    let empty = FakeCache::new();
    assert_eq!(resolve_model(spec, &empty.offline()).unwrap(), dir);
}

#[test]
fn local_directory_wins_over_a_repo_id() {
    // The only test that changes the working directory; every other test uses absolute paths.
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join(REPO);
    std::fs::create_dir_all(&local).unwrap();
    std::fs::copy(fixture("config.json"), local.join("config.json")).unwrap();
    let cache = FakeCache::single_file();
    let before = std::env::current_dir().unwrap();
    std::env::set_current_dir(work.path()).unwrap();
    let resolved = resolve_model(REPO, &cache.offline());
    std::env::set_current_dir(before).unwrap();
    assert_eq!(resolved.unwrap(), PathBuf::from(REPO));
}

#[test]
fn directory_without_config_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().to_str().unwrap();
    let err = resolve_model(spec, &ResolveOptions::default()).unwrap_err();
    assert!(matches!(err, Error::ModelNotFound { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(spec), "{message}");
    assert!(message.contains("has no config.json"), "{message}");
}

#[test]
fn garbage_specs_are_neither_directory_nor_repo_id() {
    let missing = tempfile::tempdir().unwrap().path().join("no-such-model");
    for spec in [
        "",
        "bitnet",
        "not a repo",
        "a/b/c",
        "-owner/name",
        "owner/name.",
        "owner/na..me",
        "owner/",
        missing.to_str().unwrap(),
    ] {
        let err = resolve_model(spec, &ResolveOptions::default()).unwrap_err();
        assert!(
            matches!(err, Error::ModelNotFound { .. }),
            "{spec:?}: {err:?}"
        );
        let message = err.to_string();
        assert!(
            message.contains("not a directory and not a Hugging Face repo id"),
            "{spec:?}: {message}"
        );
    }
    let file = fixture("config.json");
    let err = resolve_model(file.to_str().unwrap(), &ResolveOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("a file, not a model directory"),
        "{err}"
    );
}

#[test]
fn invalid_revision_is_rejected() {
    let cache = FakeCache::single_file();
    let opts = ResolveOptions {
        revision: Some("../../escape".to_owned()),
        ..cache.offline()
    };
    let err = resolve_model(REPO, &opts).unwrap_err();
    assert!(err.to_string().contains("invalid revision"), "{err}");
}

/// Runs a resolution that must fail fast; returns the error.
fn resolve_fails_fast(opts: &ResolveOptions) -> Error {
    let start = Instant::now();
    let err = resolve_model(REPO, opts).expect_err("resolution must fail");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "took {:?}",
        start.elapsed()
    );
    err
}

fn expect_download_error(err: Error, expected_file: &str) {
    let message = err.to_string();
    match err {
        Error::Download { repo, file, .. } => {
            assert_eq!(repo, REPO);
            assert_eq!(file, expected_file);
        }
        other => panic!("expected Download, got {other:?}"),
    }
    let what = format!("download of {expected_file} from {REPO} failed");
    for needle in [
        what.as_str(),
        "127.0.0.1:9",
        "HF_HUB_OFFLINE=1",
        "local model directory",
    ] {
        assert!(message.contains(needle), "{needle:?} not in: {message}");
    }
}

#[test]
fn online_unreachable_hub_fails_clearly() {
    let cache = FakeCache::new();
    let Some(opts) = cache.online() else { return };
    let err = resolve_fails_fast(&opts);
    expect_download_error(err, "config.json");
}

#[test]
fn online_fully_cached_model_needs_no_network() {
    for cache in [FakeCache::single_file(), FakeCache::sharded(true)] {
        let Some(opts) = cache.online() else { return };
        assert_eq!(resolve_model(REPO, &opts).unwrap(), cache.snapshot());
    }
}

#[test]
fn online_partial_cache_downloads_only_what_is_missing() {
    let cache = FakeCache::sharded(false);
    let Some(opts) = cache.online() else { return };
    let err = resolve_fails_fast(&opts);
    // Pinned to the cached commit, not `main`, so the shard would land in the same snapshot.
    let pinned = format!("/resolve/{COMMIT}/model-00002-of-00002.safetensors");
    assert!(err.to_string().contains(&pinned), "{err}");
    expect_download_error(err, "model-00002-of-00002.safetensors");
}

#[test]
fn online_optional_files_marked_absent_need_no_network() {
    let cache = FakeCache::with_configs(false);
    cache.add("model.safetensors", &fixture_bytes("model.safetensors"));
    let Some(opts) = cache.online() else { return };
    // Unknown optional files are asked for...
    let err = resolve_fails_fast(&opts);
    expect_download_error(err, "generation_config.json");
    // ...but not once the cache records that the repo lacks them.
    cache.mark_absent("generation_config.json");
    cache.mark_absent("tokenizer_config.json");
    assert_eq!(resolve_model(REPO, &opts).unwrap(), cache.snapshot());
}

/// A minimal stand-in for the Hub's `resolve` endpoint on a loopback port: answers ranged GETs
/// for the files it holds the way huggingface.co does (`etag`, `x-repo-commit`,
/// `Content-Range`), 404 for the rest, and records every requested path.
struct FakeHub {
    endpoint: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl FakeHub {
    fn start(files: Vec<(&'static str, Vec<u8>)>) -> Self {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("fake hub");
        let endpoint = format!("http://{}", listener.local_addr().expect("fake hub"));
        let requests = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = requests.clone();
        // The thread ends with the test process; each connection is served and closed.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().expect("fake hub"));
                let mut request_line = String::new();
                reader.read_line(&mut request_line).expect("fake hub");
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("")
                    .to_owned();
                let mut range_start = 0usize;
                let mut range_end = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).expect("fake hub") == 0 || line.trim().is_empty()
                    {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(range) = lower.strip_prefix("range: bytes=") {
                        let (a, b) = range.trim().split_once('-').expect("fake hub");
                        range_start = a.parse().expect("fake hub");
                        range_end = b.parse::<usize>().ok();
                    }
                }
                log.lock().expect("fake hub").push(path.clone());
                let file = path.rsplit('/').next().unwrap_or("");
                let response = match files.iter().find(|(name, _)| *name == file) {
                    Some((name, body)) => {
                        let end = range_end.unwrap_or(body.len() - 1).min(body.len() - 1);
                        let slice = &body[range_start..=end];
                        let mut head = format!(
                            "HTTP/1.1 206 Partial Content\r\netag: \"etag-{name}\"\r\n\
                             x-repo-commit: {COMMIT}\r\nContent-Range: bytes {range_start}-{end}/{}\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len(),
                            slice.len()
                        )
                        .into_bytes();
                        head.extend_from_slice(slice);
                        head
                    }
                    None => b"HTTP/1.1 404 Not Found\r\nx-error-code: EntryNotFound\r\n\
                              Content-Length: 0\r\nConnection: close\r\n\r\n"
                        .to_vec(),
                };
                let _ = stream.write_all(&response);
            }
        });
        Self { endpoint, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("fake hub").clone()
    }
}

fn online_at(cache: &FakeCache, endpoint: &str) -> Option<ResolveOptions> {
    cache.online().map(|opts| ResolveOptions {
        endpoint: Some(endpoint.to_owned()),
        ..opts
    })
}

#[test]
fn online_download_fills_the_standard_cache_layout() {
    let hub = FakeHub::start(vec![
        ("config.json", fixture_bytes("config.json")),
        (
            "generation_config.json",
            fixture_bytes("generation_config.json"),
        ),
        ("tokenizer.json", b"{}".to_vec()),
        ("model.safetensors", fixture_bytes("model.safetensors")),
    ]);
    let cache = FakeCache::new();
    let Some(opts) = online_at(&cache, &hub.endpoint) else {
        return;
    };
    let dir = resolve_model(REPO, &opts).unwrap();
    assert_eq!(dir, cache.snapshot());
    assert_has(
        &dir,
        &[
            "config.json",
            "generation_config.json",
            "tokenizer.json",
            "model.safetensors",
        ],
    );
    assert_eq!(
        std::fs::read(dir.join("model.safetensors")).unwrap(),
        fixture_bytes("model.safetensors")
    );
    let refs = cache.repo_dir().join("refs");
    assert_eq!(std::fs::read_to_string(refs.join("main")).unwrap(), COMMIT);
    assert!(
        !refs.join(COMMIT).exists(),
        "a ref named by the commit was left behind"
    );
    // The repo lacks tokenizer_config.json: recorded as huggingface_hub records it.
    let marker = cache.repo_dir().join(".no_exist").join(COMMIT);
    assert!(marker.join("tokenizer_config.json").exists());
    // Only the first file asks for `main`; the rest are pinned to the commit it resolved to.
    let requests = hub.requests();
    let pinned = format!("/resolve/{COMMIT}/");
    for request in &requests {
        let first = request.ends_with("/config.json");
        assert!(
            request.contains(if first { "/resolve/main/" } else { &pinned }),
            "{requests:?}"
        );
    }

    // Now the cache alone serves it, online or offline.
    assert_eq!(resolve_model(REPO, &cache.offline()).unwrap(), dir);
    let before = hub.requests().len();
    assert_eq!(resolve_model(REPO, &opts).unwrap(), dir);
    assert_eq!(
        hub.requests().len(),
        before,
        "a cached model went to the hub"
    );
}

#[test]
fn online_download_of_a_sharded_repo() {
    let hub = FakeHub::start(vec![
        ("config.json", fixture_bytes("config.json")),
        ("tokenizer.json", b"{}".to_vec()),
        (
            "model.safetensors.index.json",
            br#"{"weight_map": {"a": "model-00001-of-00002.safetensors",
                                "b": "model-00002-of-00002.safetensors"}}"#
                .to_vec(),
        ),
        ("model-00001-of-00002.safetensors", b"one".to_vec()),
        ("model-00002-of-00002.safetensors", b"two".to_vec()),
    ]);
    let cache = FakeCache::new();
    let Some(opts) = online_at(&cache, &hub.endpoint) else {
        return;
    };
    // The progress bar draws only on a terminal; here it must merely not get in the way.
    let opts = ResolveOptions {
        progress: true,
        ..opts
    };
    let dir = resolve_model(REPO, &opts).unwrap();
    assert_eq!(dir, cache.snapshot());
    assert_has(
        &dir,
        &[
            "model.safetensors.index.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
        ],
    );
    assert!(
        cache
            .repo_dir()
            .join(".no_exist")
            .join(COMMIT)
            .join("model.safetensors")
            .exists()
    );
}

#[test]
fn online_repo_without_weights_is_a_clear_error() {
    let hub = FakeHub::start(vec![
        ("config.json", fixture_bytes("config.json")),
        ("tokenizer.json", b"{}".to_vec()),
    ]);
    let cache = FakeCache::new();
    let Some(opts) = online_at(&cache, &hub.endpoint) else {
        return;
    };
    let err = resolve_model(REPO, &opts).unwrap_err();
    assert!(matches!(err, Error::ModelNotFound { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("has no model.safetensors or model.safetensors.index.json"),
        "{message}"
    );
}

#[test]
fn online_missing_required_file_reports_the_http_status() {
    let hub = FakeHub::start(vec![("config.json", fixture_bytes("config.json"))]);
    let cache = FakeCache::new();
    let Some(opts) = online_at(&cache, &hub.endpoint) else {
        return;
    };
    let err = resolve_model(REPO, &opts).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, Error::Download { ref file, .. } if file == "tokenizer.json"),
        "{err:?}"
    );
    assert!(message.contains("404"), "{message}");
    assert!(message.contains("HF_TOKEN"), "{message}");
}
