//! Structured outputs: a request may carry a [`ConstraintSpec`] (a JSON Schema, any JSON object,
//! a regular expression, a choice among strings, a grammar). The engine compiles it when the
//! request is queued, with the [`ConstraintCompiler`] it was given (the server's is built on
//! llguidance; this crate holds no grammar engine), and before each of the request's tokens
//! asks the compiled [`Constraint`] which tokens may come next: the others cannot be sampled.
//! The model's end-of-sequence tokens are allowed exactly when the output is complete.
//!
//! Masks change only what is sampled, never the logits or the reported log-probabilities, and
//! are the request's own: batch invariance holds for constrained requests as for any other.

/// What a request's output must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConstraintSpec {
    /// A JSON value valid under this JSON Schema (the schema's text).
    JsonSchema(String),
    /// Any JSON object.
    JsonObject,
    /// Text matching this regular expression, whole.
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// Text of this grammar (Lark syntax, as llguidance and vLLM read it).
    Grammar(String),
}

impl ConstraintSpec {
    /// `json_schema`, `json_object`, `regex`, `choice` or `grammar`.
    pub fn kind(&self) -> &'static str {
        match self {
            ConstraintSpec::JsonSchema(_) => "json_schema",
            ConstraintSpec::JsonObject => "json_object",
            ConstraintSpec::Regex(_) => "regex",
            ConstraintSpec::Choice(_) => "choice",
            ConstraintSpec::Grammar(_) => "grammar",
        }
    }
}

/// Tokens allowed next, one bit per token id: bit `i % 32` of word `i / 32`.
pub type TokenMask = Vec<u32>;

/// A compiled constraint following one request's output, token by token.
pub trait Constraint: Send {
    /// The tokens that may come next (the end-of-sequence tokens when the output may end here).
    fn allowed(&mut self) -> Result<TokenMask, String>;
    /// The next token of the output (one [`Constraint::allowed`] allowed; never an
    /// end-of-sequence token).
    fn consume(&mut self, token: u32) -> Result<(), String>;
    /// Whether the output is complete and nothing may follow: the request ends here.
    fn finished(&mut self) -> bool;
}

/// Compiles specs into constraints (for one tokenizer).
pub trait ConstraintCompiler: Send {
    /// A constraint for a new output; the error says what is wrong with the spec (for a 400).
    fn compile(&self, spec: &ConstraintSpec) -> Result<Box<dyn Constraint>, String>;
}
