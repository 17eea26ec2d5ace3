//! Errors of loading and running models. Every message names the file, key or value at fault.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// What can go wrong between a path on disk and a logit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// A file or folder could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The model path does not exist.
    #[error("model path {0} does not exist")]
    NotFound(PathBuf),
    /// A model folder lacks `config.json`.
    #[error("{0} has no config.json: not a Hugging Face model folder")]
    NoConfig(PathBuf),
    /// `config.json` is malformed or inconsistent.
    #[error("config: {0}")]
    Config(String),
    /// The architecture is not one Turbine implements.
    #[error("unsupported architecture {name:?}; supported: {supported}")]
    UnknownArch {
        /// The name found in the checkpoint.
        name: String,
        /// Comma-separated supported names.
        supported: String,
    },
    /// A weights file is truncated or corrupt.
    #[error("{path}: corrupt or truncated weights: {msg}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A weight the architecture needs is absent.
    #[error("missing weight {key}")]
    MissingWeight {
        /// The tensor name.
        key: String,
    },
    /// A weight's shape disagrees with the config.
    #[error("weight {key} has shape {got}, the config implies {expected}")]
    WeightShape {
        /// The tensor name.
        key: String,
        /// Shape implied by the config.
        expected: String,
        /// Shape in the file.
        got: String,
    },
    /// The checkpoint holds tensors the architecture does not read.
    #[error(
        "the checkpoint holds {count} tensors the {arch} architecture does not use ({names}): it does not match \
         its config (more layers than num_hidden_layers? another architecture's modules?); \
         --allow-unused-weights loads it anyway"
    )]
    UnusedWeights {
        /// The architecture built.
        arch: String,
        /// How many tensors went unread.
        count: usize,
        /// The first few of their names.
        names: String,
    },
    /// The tokenizer could not be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template is missing or failed to render.
    #[error("chat template: {0}")]
    Template(String),
    /// A request the model cannot serve (prompt too long, id outside the vocabulary, …).
    #[error("{0}")]
    Input(String),
    /// Fetching a known model failed.
    #[error("pull: {0}")]
    Pull(String),
    /// A kernel-layer error.
    #[error(transparent)]
    Core(#[from] turbine_core::Error),
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }

    pub(crate) fn corrupt(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        ModelError::Corrupt { path: path.into(), msg: msg.into() }
    }
}

/// A model error as the runner interface reports it ([`turbine_core::runner::ModelRunner`]):
/// kernel-layer errors as they are, the others with their message.
impl From<ModelError> for turbine_core::Error {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::Core(c) => c,
            other => turbine_core::Error::Invalid { op: "model", msg: other.to_string() },
        }
    }
}
