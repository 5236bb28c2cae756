//! Model resolution: a local directory or a Hugging Face repo id (hf-hub, standard HF cache).
//!
//! [`resolve_model`] turns what the user passed as `--model` into a directory holding
//! `config.json`, the tokenizer files and the safetensors weights:
//!
//! - an existing directory is used as it is (it must hold `config.json`);
//! - an `owner/name` repo id (`microsoft/bitnet-b1.58-2B-4T`) is looked up in the Hugging Face
//!   cache (the layout `huggingface_hub` and `hf-hub` share, so caches filled by Python work),
//!   and files missing there are downloaded into it, unless offline. The result is the
//!   snapshot directory `<cache>/models--owner--name/snapshots/<commit>/`, which holds every
//!   file of one commit side by side.
//!
//! Files a repo lacks are remembered the way `huggingface_hub` does it, with an empty marker
//! `<repo dir>/.no_exist/<commit>/<file>`, so a fully cached model resolves without the network
//! even when the repo has no `generation_config.json`, say.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use hf_hub::api::sync::{Api, ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use serde::Deserialize;

use crate::error::{Error, Result};

/// The hub used when neither [`ResolveOptions::endpoint`] nor `HF_ENDPOINT` says otherwise.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// The revision used when [`ResolveOptions::revision`] is `None`.
pub const DEFAULT_REVISION: &str = "main";

const CONFIG: &str = "config.json";
const GENERATION_CONFIG: &str = "generation_config.json";
const TOKENIZER: &str = "tokenizer.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const WEIGHTS: &str = "model.safetensors";
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// How [`resolve_model`] finds a model given as a Hugging Face repo id. `Default` is online,
/// the default cache, revision `main`, no progress bar.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolveOptions {
    /// Use only the cache, never the network. Also on when the environment has
    /// `HF_HUB_OFFLINE` set to `1`/`true`/`yes`/`on` (as in `huggingface_hub`).
    pub offline: bool,
    /// The hub cache root (the directory holding `models--owner--name`). `None`:
    /// [`default_cache_dir`].
    pub cache_dir: Option<PathBuf>,
    /// Branch, tag or commit hash. `None`: [`DEFAULT_REVISION`].
    pub revision: Option<String>,
    /// Show a progress bar on stderr while downloading (drawn only when stderr is a terminal).
    pub progress: bool,
    /// The hub to download from. `None`: `HF_ENDPOINT` if set, else [`DEFAULT_ENDPOINT`].
    pub endpoint: Option<String>,
}

/// Resolves `spec` to a model directory: `spec` itself if it is a directory (which must hold
/// `config.json`), else the cache snapshot directory of the Hugging Face repo `spec`
/// (`owner/name`), downloading what the cache lacks unless offline.
///
/// From a repo it takes `config.json`, `tokenizer.json`, `generation_config.json` and
/// `tokenizer_config.json` (these two if the repo has them), and the weights: `model.safetensors`,
/// or `model.safetensors.index.json` with every shard it lists. A fully cached model never
/// touches the network, online or not.
///
/// Errors: [`Error::ModelNotFound`] for a spec that is neither a directory nor a repo id, a
/// directory without `config.json`, or a repo without the weights; [`Error::ModelNotCached`]
/// offline when the cache lacks a file; [`Error::Download`] when a download fails;
/// [`Error::ModelFile`] for a malformed shard index.
pub fn resolve_model(spec: &str, opts: &ResolveOptions) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        if !path.join(CONFIG).is_file() {
            return Err(not_found(
                spec,
                format!(
                    "directory {} has no {CONFIG} (a model directory holds {CONFIG}, \
                     {TOKENIZER} and the safetensors weights)",
                    path.display()
                ),
            ));
        }
        return Ok(path.to_path_buf());
    }
    if let Err(why) = validate_repo_id(spec) {
        let reason = if path.exists() {
            "a file, not a model directory: pass the directory that holds config.json and the \
             weights"
                .to_owned()
        } else {
            format!("not a directory and not a Hugging Face repo id (owner/name): {why}")
        };
        return Err(not_found(spec, reason));
    }
    let revision = opts.revision.as_deref().unwrap_or(DEFAULT_REVISION);
    validate_revision(revision).map_err(|why| not_found(spec, why))?;
    let cache_dir = match &opts.cache_dir {
        Some(dir) => dir.clone(),
        None => default_cache_dir().ok_or_else(|| {
            not_found(
                spec,
                "cannot tell where the Hugging Face cache is (no home directory): set \
                 HF_HUB_CACHE or HF_HOME"
                    .to_owned(),
            )
        })?,
    };
    let endpoint = opts
        .endpoint
        .clone()
        .or_else(|| env_nonempty("HF_ENDPOINT"))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
    let mut hub = HubRepo {
        repo_id: spec,
        revision,
        repo_dir: cache_dir.join(Repo::model(spec.to_owned()).folder_name()),
        cache_dir,
        offline: opts.offline || env_flag("HF_HUB_OFFLINE"),
        endpoint: endpoint.trim_end_matches('/').to_owned(),
        progress: opts.progress,
        commit: None,
        api: None,
    };
    hub.resolve()
}

/// The hub cache root `huggingface_hub` uses: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
/// `XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`. `None` without a home
/// directory.
pub fn default_cache_dir() -> Option<PathBuf> {
    // hf-hub's own `Cache::from_env` reads only HF_HOME (and panics without a home directory);
    // following huggingface_hub's order shares caches with Python tools.
    env_nonempty("HF_HUB_CACHE")
        .or_else(|| env_nonempty("HUGGINGFACE_HUB_CACHE"))
        .map(PathBuf::from)
        .or_else(|| env_nonempty("HF_HOME").map(|home| PathBuf::from(home).join("hub")))
        .or_else(|| {
            env_nonempty("XDG_CACHE_HOME").map(|c| PathBuf::from(c).join("huggingface/hub"))
        })
        .or_else(|| std::env::home_dir().map(|home| home.join(".cache/huggingface/hub")))
}

fn not_found(spec: &str, reason: String) -> Error {
    Error::ModelNotFound {
        spec: spec.to_owned(),
        reason,
    }
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `huggingface_hub`'s truthy values for boolean environment variables.
fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_uppercase().as_str(),
            "1" | "ON" | "YES" | "TRUE"
        )
    })
}

/// The Hub's rules for `owner/name` (huggingface_hub's `validate_repo_id`), so a typo in a
/// path is reported here rather than as a failed download. Bare names (`gpt2`) are not taken:
/// they are too easily a mistyped local directory.
fn validate_repo_id(spec: &str) -> std::result::Result<(), String> {
    let Some((owner, name)) = spec.split_once('/') else {
        return Err("a repo id has the form owner/name".to_owned());
    };
    if name.contains('/') {
        return Err("a repo id has exactly one '/'".to_owned());
    }
    for (what, part) in [("owner", owner), ("name", name)] {
        if part.is_empty() || part.len() > 96 {
            return Err(format!("the {what} must have 1 to 96 characters"));
        }
        if let Some(c) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(format!(
                "the {what} may hold only letters, digits, '-', '_' and '.', not {c:?}"
            ));
        }
        if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
            return Err(format!("the {what} must not start or end with '-' or '.'"));
        }
        if part.contains("--") || part.contains("..") {
            return Err(format!("the {what} must not contain '--' or '..'"));
        }
    }
    Ok(())
}

/// A revision names a file under `refs/` and goes into URLs: keep it inside the cache and
/// URL-safe.
fn validate_revision(revision: &str) -> std::result::Result<(), String> {
    let bad = revision.is_empty()
        || revision.starts_with('/')
        || revision
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        || revision
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '\\' | '?' | '#' | '%'));
    if bad {
        Err(format!("invalid revision {revision:?}"))
    } else {
        Ok(())
    }
}

fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A file name from a shard index must stay inside the snapshot directory.
fn is_safe_relative(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('\\')
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
}

/// The HTTP status of a failed hub request, if the server answered.
fn http_status(err: &ApiError) -> Option<u16> {
    match err {
        ApiError::RequestError(e) => match e.as_ref() {
            ureq::Error::Status(code, _) => Some(*code),
            ureq::Error::Transport(_) => None,
        },
        ApiError::TooManyRetries(inner) => http_status(inner),
        _ => None,
    }
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// One repo being resolved. `commit` is the snapshot everything comes from: the cached one if
/// the cache has the revision, else the one the first download lands in. Pinning it keeps all
/// files in one snapshot directory even if the branch moves while we download.
struct HubRepo<'a> {
    repo_id: &'a str,
    revision: &'a str,
    cache_dir: PathBuf,
    repo_dir: PathBuf,
    offline: bool,
    endpoint: String,
    progress: bool,
    commit: Option<String>,
    /// Built on the first download, so a cached model never reads a token or opens a client.
    api: Option<Api>,
}

/// Whether a file must be there.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    Required,
    Optional,
}

impl HubRepo<'_> {
    fn resolve(&mut self) -> Result<PathBuf> {
        self.commit = self.cached_commit();
        self.fetch(CONFIG, Need::Required)?;
        self.fetch(GENERATION_CONFIG, Need::Optional)?;
        self.fetch(TOKENIZER, Need::Required)?;
        self.fetch(TOKENIZER_CONFIG, Need::Optional)?;
        self.fetch_weights()?;
        match &self.commit {
            Some(commit) => Ok(self.snapshot_dir(commit)),
            // Unreachable in practice: config.json resolved, so a commit is known.
            None => Err(not_found(
                self.repo_id,
                "no snapshot in the cache".to_owned(),
            )),
        }
    }

    /// The commit the cache holds for the revision: `refs/<revision>` (written by both
    /// `huggingface_hub` and hf-hub), or the revision itself when it is a commit hash, which
    /// Python's cache stores under `snapshots/` without a ref.
    fn cached_commit(&self) -> Option<String> {
        // Read and trimmed here rather than through hf-hub's `CacheRepo::get`, which does not
        // trim the ref (a hand-written ref with a newline would read as missing), ignores
        // commit-hash revisions, and does not tell which commit it found.
        let ref_path = self.repo_dir.join("refs").join(self.revision);
        match std::fs::read_to_string(ref_path) {
            Ok(commit) if !commit.trim().is_empty() => Some(commit.trim().to_owned()),
            _ => is_commit_hash(self.revision).then(|| self.revision.to_owned()),
        }
    }

    fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.repo_dir.join("snapshots").join(commit)
    }

    fn no_exist_marker(&self, commit: &str, file: &str) -> PathBuf {
        self.repo_dir.join(".no_exist").join(commit).join(file)
    }

    fn cached(&self, file: &str) -> Option<PathBuf> {
        let path = self.snapshot_dir(self.commit.as_deref()?).join(file);
        // `is_file` follows the snapshot's symlinks into `blobs/`: a dangling one is missing.
        path.is_file().then_some(path)
    }

    fn known_absent(&self, file: &str) -> bool {
        self.commit
            .as_deref()
            .is_some_and(|commit| self.no_exist_marker(commit, file).exists())
    }

    /// The path of `file` in the snapshot, downloading it if needed and allowed; `None` if the
    /// repo lacks an optional file, or offline and the cache lacks it.
    fn fetch(&mut self, file: &str, need: Need) -> Result<Option<PathBuf>> {
        if let Some(path) = self.cached(file) {
            return Ok(Some(path));
        }
        if self.known_absent(file) {
            return match need {
                Need::Optional => Ok(None),
                Need::Required => Err(self.repo_lacks(file)),
            };
        }
        if self.offline {
            return match need {
                Need::Optional => Ok(None),
                Need::Required => Err(self.not_cached(file)),
            };
        }
        match self.download(file) {
            Ok(path) => Ok(Some(path)),
            Err(err) if need == Need::Optional && http_status(&err) == Some(404) => {
                if let Some(commit) = &self.commit {
                    let marker = self.no_exist_marker(commit, file);
                    // Best effort: without the marker we only ask the hub again next time.
                    if let Some(dir) = marker.parent() {
                        let _ = std::fs::create_dir_all(dir)
                            .and_then(|()| std::fs::File::create(&marker));
                    }
                }
                Ok(None)
            }
            Err(err) => Err(self.download_error(file, &err)),
        }
    }

    /// `model.safetensors`, else `model.safetensors.index.json` and its shards.
    fn fetch_weights(&mut self) -> Result<()> {
        // A cached index means a sharded repo: don't ask the hub for a single file first.
        let index = if self.cached(WEIGHTS).is_some() {
            None
        } else if let Some(index) = self.cached(WEIGHTS_INDEX) {
            Some(index)
        } else if self.fetch(WEIGHTS, Need::Optional)?.is_some() {
            None
        } else if let Some(index) = self.fetch(WEIGHTS_INDEX, Need::Optional)? {
            Some(index)
        } else if self.offline {
            return Err(self.not_cached(&format!("{WEIGHTS} (or {WEIGHTS_INDEX} with its shards)")));
        } else {
            return Err(self.repo_lacks(&format!("{WEIGHTS} or {WEIGHTS_INDEX}")));
        };
        let Some(index) = index else {
            return Ok(());
        };
        for shard in read_shard_names(&index)? {
            self.fetch(&shard, Need::Required)?;
        }
        Ok(())
    }

    fn download(&mut self, file: &str) -> std::result::Result<PathBuf, ApiError> {
        // `Api` is a handle on shared connection pools: cloning it is cheap.
        let api = match &self.api {
            Some(api) => api.clone(),
            None => {
                let mut builder = ApiBuilder::from_cache(Cache::new(self.cache_dir.clone()))
                    .with_endpoint(self.endpoint.clone())
                    .with_progress(self.progress)
                    // A dropped connection on a multi-GB file resumes from the `.part` file.
                    .with_retries(3);
                // hf-hub reads only the token file; huggingface_hub also honours HF_TOKEN.
                if let Some(token) = env_nonempty("HF_TOKEN") {
                    builder = builder.with_token(Some(token));
                }
                let api = builder.build()?;
                self.api = Some(api.clone());
                api
            }
        };
        let pinned = self.commit.as_deref().unwrap_or(self.revision);
        let repo = Repo::with_revision(self.repo_id.to_owned(), RepoType::Model, pinned.to_owned());
        let path = api.repo(repo).download(file)?;
        let snapshots = self.repo_dir.join("snapshots");
        let landed = path
            .strip_prefix(&snapshots)
            .ok()
            .and_then(|rel| rel.components().next())
            .and_then(|c| c.as_os_str().to_str())
            .map(str::to_owned);
        match (&self.commit, landed) {
            (None, Some(commit)) => self.commit = Some(commit),
            (Some(commit), _) if commit != self.revision => {
                // Downloading at a pinned commit makes hf-hub write `refs/<commit>`, a ref
                // huggingface_hub never writes; drop it so the cache keeps its usual shape.
                let _ = std::fs::remove_file(self.repo_dir.join("refs").join(commit));
            }
            _ => {}
        }
        Ok(path)
    }

    fn not_cached(&self, file: &str) -> Error {
        Error::ModelNotCached {
            repo: self.repo_id.to_owned(),
            revision: self.revision.to_owned(),
            file: file.to_owned(),
            cache_dir: self.cache_dir.clone(),
        }
    }

    fn repo_lacks(&self, file: &str) -> Error {
        not_found(
            self.repo_id,
            format!(
                "the Hugging Face repo has no {file} at revision {}",
                self.revision
            ),
        )
    }

    fn download_error(&self, file: &str, err: &ApiError) -> Error {
        let mut reason = err.to_string();
        if let Some(401 | 403 | 404) = http_status(err) {
            reason.push_str(
                " (the repo or file does not exist, or the repo is private or gated: set \
                 HF_TOKEN to a token with access)",
            );
        }
        Error::Download {
            repo: self.repo_id.to_owned(),
            file: file.to_owned(),
            reason,
            cache_dir: self.cache_dir.clone(),
        }
    }
}

/// The shard files an index lists, each once, in name order.
fn read_shard_names(index: &Path) -> Result<BTreeSet<String>> {
    let bad = |reason: String| Error::ModelFile {
        path: index.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(index).map_err(|e| bad(e.to_string()))?;
    let parsed: ShardIndex =
        serde_json::from_str(&text).map_err(|e| bad(format!("not a shard index: {e}")))?;
    let shards: BTreeSet<String> = parsed.weight_map.into_values().collect();
    if shards.is_empty() {
        return Err(bad("weight_map lists no shard".to_owned()));
    }
    if let Some(name) = shards.iter().find(|name| !is_safe_relative(name)) {
        return Err(bad(format!(
            "shard name {name:?} is not a relative path inside the repo"
        )));
    }
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids() {
        for good in [
            "microsoft/bitnet-b1.58-2B-4T",
            "microsoft/bitnet-b1.58-2B-4T-bf16",
            "a/b",
            "Org_1/name.v2",
        ] {
            assert!(validate_repo_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "gpt2",
            "a/b/c",
            "/abs",
            "owner/",
            "-owner/name",
            "owner/name.",
            "owner/na--me",
            "owner/na..me",
            "own er/name",
            "owner/näme",
            "./x",
            "../x",
        ] {
            assert!(validate_repo_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn revisions() {
        for good in ["main", "v1.0", "refs/pr/1", &"a".repeat(40)] {
            assert!(validate_revision(good).is_ok(), "{good}");
        }
        for bad in [
            "", "../x", "a/../b", "/main", "a//b", "a b", "a\\b", "a?b", "a#b",
        ] {
            assert!(validate_revision(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shard_names() {
        assert!(is_safe_relative("model-00001-of-00002.safetensors"));
        assert!(is_safe_relative("sub/model.safetensors"));
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./x", "a\\b"] {
            assert!(!is_safe_relative(bad), "{bad}");
        }
    }
}
