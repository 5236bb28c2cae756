//! Errors of `bitnet-runtime`, scoped to one request where possible.

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong serving a request.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Sampling parameters out of range (names the parameter).
    #[error("invalid sampling parameter {name}: {reason}")]
    Sampling { name: &'static str, reason: String },
    /// A request the runtime cannot serve as given.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] bitnet_layers::Error),
    /// A model spec that names no usable model: neither a model directory nor a Hugging Face
    /// repo id, a directory without `config.json`, or a repo without the files a model needs.
    #[error("model {spec}: {reason}")]
    ModelNotFound { spec: String, reason: String },
    /// Offline, and the Hugging Face cache lacks a file the model needs.
    #[error(
        "{file} of {repo} (revision {revision}) is not in the Hugging Face cache {} and offline \
         mode is on (HF_HUB_OFFLINE=1 or the offline option): turn it off to download the model, \
         or pass a local model directory",
        .cache_dir.display()
    )]
    ModelNotCached {
        repo: String,
        revision: String,
        file: String,
        /// The hub cache root that was searched.
        cache_dir: std::path::PathBuf,
    },
    /// Downloading a file of the model from the Hugging Face Hub failed.
    #[error(
        "download of {file} from {repo} failed: {reason}; to run without the network, set \
         HF_HUB_OFFLINE=1 with the model in the Hugging Face cache ({}), or pass a local model \
         directory",
        .cache_dir.display()
    )]
    Download {
        repo: String,
        file: String,
        /// The underlying error (HTTP status or transport failure), with a hint where one helps.
        reason: String,
        /// The hub cache root the download was going to.
        cache_dir: std::path::PathBuf,
    },
    /// A file of a resolved model is unreadable or malformed (e.g. a bad shard index).
    #[error("{}: {reason}", .path.display())]
    ModelFile {
        path: std::path::PathBuf,
        reason: String,
    },
    /// A tokenizer file could not be loaded (names the file).
    #[error("cannot load tokenizer {}: {reason}", path.display())]
    TokenizerLoad {
        path: std::path::PathBuf,
        reason: String,
    },
    /// Encoding or decoding failed, or the tokenizer lacks a token the request needs.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A TT-NN op failed.
    #[error(transparent)]
    Ttnn(#[from] ttnn::Error),
}
