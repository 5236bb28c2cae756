//! Errors of `bitnet-layers`: config and checkpoint problems name the field or the full tensor
//! path; op failures come from `ttnn`.

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong building or running the model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `config.json` (or the memory-plan TOML) has a missing, malformed or unsupported value.
    #[error("invalid config: {field}: {reason}")]
    InvalidConfig { field: String, reason: String },
    /// A checkpoint file could not be read or parsed.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
    /// A tensor the model needs is not in the checkpoint.
    #[error("missing tensor {name} in {location}")]
    MissingTensor { name: String, location: String },
    /// A tensor has the wrong shape.
    #[error("tensor {name}: expected shape {expected:?}, found {found:?}")]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor has a dtype the loader does not take for it.
    #[error("tensor {name}: expected dtype {expected}, found {found}")]
    TensorDtype {
        name: String,
        expected: String,
        found: String,
    },
    /// A tensor's values are unusable (e.g. a packed ternary code 3, a non-finite scale).
    #[error("tensor {name}: {reason}")]
    TensorValue { name: String, reason: String },
    /// The memory plan does not fit the device, or an override is invalid.
    #[error("memory plan: {0}")]
    MemoryPlan(String),
    /// A call with arguments the model cannot take (e.g. a token id past the vocabulary).
    #[error("{0}")]
    InvalidInput(String),
    /// A TT-NN op failed.
    #[error(transparent)]
    Ttnn(#[from] ttnn::Error),
}

impl Error {
    pub(crate) fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
