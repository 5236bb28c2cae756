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
    /// A TT-NN op failed.
    #[error(transparent)]
    Ttnn(#[from] ttnn::Error),
}
