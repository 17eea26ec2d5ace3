//! OpenAI request bodies and their translation to engine requests. Unknown fields are ignored.

use serde::Deserialize;
use turbine_batcher::{ConstraintSpec, Request};
use turbine_core::sampling::{InvalidParam, SamplingParams};

use super::{ApiError, AppState};

/// A prompt: text, token ids, or a list of either.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// Token ids.
    Ids(Vec<u32>),
    /// Several prompts (strings or token arrays).
    Many(Vec<Prompt>),
    /// Anything else (refused with a message).
    Other(serde::de::IgnoredAny),
}

/// `stop`: one string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields both endpoints share.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Common {
    /// Model name (must be the served one when given).
    pub model: Option<String>,
    /// Most tokens to generate.
    pub max_tokens: Option<i64>,
    /// Chat's newer name for it.
    pub max_completion_tokens: Option<i64>,
    /// Sampling temperature (default 1).
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Top-k (an extension).
    pub top_k: Option<i64>,
    /// Min-p (an extension).
    pub min_p: Option<f32>,
    /// Choices per prompt.
    pub n: Option<i64>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Seed.
    pub seed: Option<u64>,
    /// Presence penalty.
    pub presence_penalty: Option<f32>,
    /// Frequency penalty.
    pub frequency_penalty: Option<f32>,
    /// Repetition penalty (an extension).
    pub repetition_penalty: Option<f32>,
    /// Keep generating through EOS (an extension).
    pub ignore_eos: Option<bool>,
    /// Generate at least this many tokens before EOS or a stop string may end (vLLM's extension).
    pub min_tokens: Option<i64>,
    /// `{"type": "text" | "json_object" | "json_schema", "json_schema": {"schema": …}}`.
    pub response_format: Option<serde_json::Value>,
    /// vLLM's `{"json" | "regex" | "choice" | "grammar" | "json_object": …}`.
    pub structured_outputs: Option<serde_json::Value>,
    /// vLLM's older names for the same.
    pub guided_json: Option<serde_json::Value>,
    /// A regular expression the output matches.
    pub guided_regex: Option<serde_json::Value>,
    /// Strings the output is one of.
    pub guided_choice: Option<serde_json::Value>,
    /// A Lark grammar of the output.
    pub guided_grammar: Option<serde_json::Value>,
    /// Stream server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// The end user, for the operator's records: checked to be a string, not used for generation.
    #[allow(dead_code)]
    pub user: Option<String>,
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    /// The prompt.
    pub prompt: Prompt,
    /// Top log-probabilities per token (0–20).
    pub logprobs: Option<i64>,
    /// Shared fields.
    #[serde(flatten)]
    pub common: Common,
}

/// One chat message.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text (null for an assistant message that only calls tools).
    #[serde(default)]
    pub content: Option<String>,
    /// An assistant message's tool calls.
    pub tool_calls: Option<serde_json::Value>,
    /// A `tool` message's call id.
    pub tool_call_id: Option<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    /// The conversation.
    pub messages: Vec<ChatMessage>,
    /// Return log-probabilities.
    pub logprobs: Option<bool>,
    /// How many alternatives with each token (0–20).
    pub top_logprobs: Option<i64>,
    /// Functions the model may call.
    pub tools: Option<serde_json::Value>,
    /// `none`, `auto`, `required` or `{"type": "function", "function": {"name": …}}`.
    pub tool_choice: Option<serde_json::Value>,
    /// Whether one answer may make several calls (default true).
    pub parallel_tool_calls: Option<bool>,
    /// Shared fields.
    #[serde(flatten)]
    pub common: Common,
}

impl Common {
    /// One engine request per choice (`n`, default 1); with a seed, choice `i` uses `seed + i`.
    pub fn to_requests(
        &self,
        s: &AppState,
        prompt: Vec<u32>,
        logprobs: usize,
        default_max: usize,
    ) -> Result<Vec<Request>, ApiError> {
        let max_n = s.limits.max_n as i64;
        let n = match self.n.unwrap_or(1) {
            n if (1..=max_n).contains(&n) => n as u64,
            n => return Err(ApiError::invalid("n", format!("n must be 1..={max_n}, got {n}"))),
        };
        let base = self.to_request(s, prompt, logprobs, default_max)?;
        Ok((0..n).map(|i| base.clone().with_seed(base.params().seed.map(|sd| sd.wrapping_add(i)))).collect())
    }

    /// Builds the engine request for `prompt`, checking every field; `default_max` applies when
    /// the client gave no limit.
    pub fn to_request(
        &self,
        s: &AppState,
        prompt: Vec<u32>,
        logprobs: usize,
        default_max: usize,
    ) -> Result<Request, ApiError> {
        if let Some(m) = &self.model {
            if m != &s.model {
                let msg = format!("model {m:?} does not exist; this server serves {:?}", s.model);
                let e = ApiError::new(axum::http::StatusCode::NOT_FOUND, "invalid_request_error", msg);
                return Err(ApiError { param: Some("model".into()), ..e });
            }
        }

        let limit = s.limits.max_prompt_tokens;
        if limit > 0 && prompt.len() > limit {
            return Err(ApiError::invalid(
                "prompt",
                format!("the prompt has {} tokens; this server accepts at most {limit}", prompt.len()),
            ));
        }
        let cap = s.limits.max_tokens;
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            Some(m) if m < 1 => {
                return Err(ApiError::invalid("max_tokens", format!("max_tokens must be at least 1, got {m}")))
            }
            Some(m) if cap > 0 && m as u64 > cap as u64 => {
                return Err(ApiError::invalid(
                    "max_tokens",
                    format!("max_tokens is {m}; this server allows at most {cap}"),
                ))
            }
            Some(m) => m as usize,
            None if cap > 0 => default_max.clamp(1, cap),
            None => default_max.max(1),
        };
        let top_k = match self.top_k {
            Some(k) if k < -1 => {
                return Err(ApiError::invalid("top_k", format!("top_k must be >= 0 (or -1 for all), got {k}")))
            }
            Some(k) if k > 0 => k as usize,
            _ => 0,
        };
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k,
            top_p: self.top_p.unwrap_or(1.0),
            seed: self.seed,
            logprobs,
            min_p: self.min_p.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        // The one check of the request's own values; the engine checks the rest against the
        // model (vocabulary, context) when it queues it.
        let invalid = |e: InvalidParam| ApiError::invalid(e.param, e.message);
        let min_tokens = match self.min_tokens {
            Some(m) if m < 0 => {
                return Err(ApiError::invalid("min_tokens", format!("min_tokens must be >= 0, got {m}")))
            }
            Some(m) => m as usize,
            None => 0,
        };
        Request::new(prompt, params, max_tokens)
            .map_err(invalid)?
            .with_ignore_eos(self.ignore_eos.unwrap_or(false))
            .with_stop_ids(s.eos.clone())
            .with_stop(stop)
            .map_err(invalid)?
            .with_min_tokens(min_tokens)
            .map_err(invalid)
            .map(|r| match self.constraint() {
                Ok(Some(spec)) => Ok(r.with_constraint(spec)),
                Ok(None) => Ok(r),
                Err(e) => Err(e),
            })?
    }
}

/// The schema of a `json_schema` / `json` field: a JSON object, or a string holding one.
fn schema_text(field: &'static str, v: &serde_json::Value) -> Result<String, ApiError> {
    match v {
        serde_json::Value::Object(_) | serde_json::Value::Bool(_) => Ok(v.to_string()),
        serde_json::Value::String(s) => Ok(s.clone()),
        _ => Err(ApiError::invalid(field, "the JSON schema must be an object (or a string holding one)")),
    }
}

fn text_of(field: &'static str, v: &serde_json::Value) -> Result<String, ApiError> {
    v.as_str().map(str::to_string).ok_or_else(|| ApiError::invalid(field, format!("{field} must be a string")))
}

fn choices_of(field: &'static str, v: &serde_json::Value) -> Result<Vec<String>, ApiError> {
    let list = v.as_array().filter(|a| !a.is_empty() && a.iter().all(|x| x.is_string()));
    let list = list.ok_or_else(|| ApiError::invalid(field, format!("{field} must be a non-empty list of strings")))?;
    Ok(list.iter().map(|x| x.as_str().unwrap_or_default().to_string()).collect())
}

impl Common {
    /// What the output must match: `response_format`, `structured_outputs` or a `guided_*`
    /// field (one of them); the error names the field.
    pub fn constraint(&self) -> Result<Option<ConstraintSpec>, ApiError> {
        use serde_json::Value;
        let given: Vec<&str> = [
            ("response_format", self.response_format.as_ref().filter(|f| f["type"] != "text")),
            ("structured_outputs", self.structured_outputs.as_ref()),
            ("guided_json", self.guided_json.as_ref()),
            ("guided_regex", self.guided_regex.as_ref()),
            ("guided_choice", self.guided_choice.as_ref()),
            ("guided_grammar", self.guided_grammar.as_ref()),
        ]
        .into_iter()
        .filter(|(_, v)| v.is_some_and(|v| !v.is_null()))
        .map(|(k, _)| k)
        .collect();
        if given.len() > 1 {
            return Err(ApiError::invalid(
                given[1],
                format!("give one output constraint, not {}", given.join(" and ")),
            ));
        }
        if let Some(f) = &self.response_format {
            match f["type"].as_str() {
                Some("text") => {}
                Some("json_object") => return Ok(Some(ConstraintSpec::JsonObject)),
                Some("json_schema") => {
                    let schema = &f["json_schema"]["schema"];
                    if schema.is_null() {
                        return Err(ApiError::invalid(
                            "response_format",
                            "response_format of type json_schema needs json_schema.schema",
                        ));
                    }
                    return Ok(Some(ConstraintSpec::JsonSchema(schema_text("response_format", schema)?)));
                }
                other => {
                    return Err(ApiError::invalid(
                        "response_format",
                        format!("response_format.type must be text, json_object or json_schema, got {other:?}"),
                    ))
                }
            }
        }
        if let Some(Value::Object(so)) = &self.structured_outputs {
            let field = "structured_outputs";
            let keys: Vec<&String> = so.keys().filter(|k| !so[k.as_str()].is_null()).collect();
            return match keys.as_slice() {
                [k] => Ok(Some(match k.as_str() {
                    "json" => ConstraintSpec::JsonSchema(schema_text(field, &so["json"])?),
                    "json_object" => ConstraintSpec::JsonObject,
                    "regex" => ConstraintSpec::Regex(text_of(field, &so["regex"])?),
                    "choice" => ConstraintSpec::Choice(choices_of(field, &so["choice"])?),
                    "grammar" => ConstraintSpec::Grammar(text_of(field, &so["grammar"])?),
                    other => {
                        return Err(ApiError::invalid(
                            field,
                            format!(
                                "unknown structured_outputs key {other:?} (json, json_object, regex, choice, grammar)"
                            ),
                        ))
                    }
                })),
                _ => Err(ApiError::invalid(
                    field,
                    "structured_outputs needs exactly one of json, json_object, regex, choice, grammar",
                )),
            };
        }
        if self.structured_outputs.as_ref().is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid("structured_outputs", "structured_outputs must be an object"));
        }
        Ok(match (&self.guided_json, &self.guided_regex, &self.guided_choice, &self.guided_grammar) {
            (Some(v), ..) if !v.is_null() => Some(ConstraintSpec::JsonSchema(schema_text("guided_json", v)?)),
            (_, Some(v), ..) if !v.is_null() => Some(ConstraintSpec::Regex(text_of("guided_regex", v)?)),
            (_, _, Some(v), _) if !v.is_null() => Some(ConstraintSpec::Choice(choices_of("guided_choice", v)?)),
            (.., Some(v)) if !v.is_null() => Some(ConstraintSpec::Grammar(text_of("guided_grammar", v)?)),
            _ => None,
        })
    }
}
