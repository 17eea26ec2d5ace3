//! The endpoint handlers.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use turbine_batcher::FinishReason;
use turbine_batcher::{Event, Request, RequestStream, Usage};

use super::tools::{self, Tools};
use turbine_core::sampling::Sampled;
use turbine_models::chat::Message;

use super::protocol::{ChatRequest, CompletionRequest, Prompt};
use super::{ApiError, AppState};

type Shared = State<Arc<AppState>>;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(s): Shared) -> Response {
    let stats = s.engine.stats().await.unwrap_or_default();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render(&stats)).into_response()
}

/// `GET /v1/models`.
pub async fn models(State(s): Shared) -> Json<Value> {
    Json(
        json!({"object": "list", "data": [{"id": s.model, "object": "model", "created": s.created, "owned_by": "turbine", "max_model_len": s.max_len}]}),
    )
}

/// A typed request body. Serde's message for a wrongly typed field does not say which field it
/// was (the shared fields are flattened), so on failure the culprit is found by leaving out one
/// top-level key at a time.
fn typed<T: serde::de::DeserializeOwned>(r: Result<Json<Value>, JsonRejection>) -> Result<T, ApiError> {
    let v = body(r)?;
    let Value::Object(map) = &v else {
        return Err(ApiError::bad_request("the request body must be a JSON object"));
    };
    let err = match serde_json::from_value::<T>(v.clone()) {
        Ok(t) => return Ok(t),
        Err(e) => e.to_string(),
    };
    if let Some(field) = err.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
        return Err(ApiError::invalid(field, format!("missing field {field:?}")));
    }
    // A key whose removal fixes the body is the culprit; failing that, a required key whose
    // removal only makes it missing.
    let without = |key: &str| {
        let mut m = map.clone();
        m.remove(key);
        serde_json::from_value::<T>(Value::Object(m)).map_err(|e| e.to_string())
    };
    let culprit = map
        .keys()
        .find(|k| without(k).is_ok())
        .or_else(|| map.keys().find(|k| without(k).is_err_and(|e| e.contains(&format!("missing field `{k}`")))));
    if let Some(key) = culprit {
        return Err(ApiError::invalid(key.clone(), format!("invalid value for {key:?}: {err}")));
    }
    Err(ApiError::bad_request(format!("invalid request body: {err}")))
}

fn body<T>(r: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    r.map(|Json(v)| v).map_err(|e| {
        // Keep the rejection's status where it is not a plain 400/422 (413 for a body too large).
        let status = match e.status().as_u16() {
            413 | 415 => e.status(),
            _ => axum::http::StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, "invalid_request_error", format!("invalid request body: {}", e.body_text()))
    })
}

/// `POST /tokenize`: `{"prompt": "..."}` (or `"messages"` for a chat) → `{"tokens": [...], "count": n}`.
pub async fn tokenize(State(s): Shared, r: Result<Json<Value>, JsonRejection>) -> Result<Json<Value>, ApiError> {
    let v = body(r)?;
    let ids = if let Some(text) = v["prompt"].as_str() {
        s.tok
            .encode(text, v["add_special_tokens"].as_bool().unwrap_or(true))
            .map_err(|e| ApiError::invalid("prompt", e.to_string()))?
    } else if let Some(msgs) = v["messages"].as_array() {
        if s.tok.chat.is_none() {
            return Err(ApiError::bad_request("this model has no chat template"));
        }
        let msgs: Vec<Message> = msgs
            .iter()
            .map(|m| Message::new(m["role"].as_str().unwrap_or(""), m["content"].as_str().unwrap_or("")))
            .collect();
        s.tok.encode_chat(&msgs, true).map_err(|e| ApiError::invalid("messages", e.to_string()))?
    } else {
        return Err(ApiError::invalid("prompt", "give \"prompt\" (a string) or \"messages\""));
    };
    Ok(Json(json!({"tokens": ids, "count": ids.len(), "max_model_len": s.max_len})))
}

/// `POST /detokenize`: `{"tokens": [...]}` → `{"prompt": "..."}`.
pub async fn detokenize(State(s): Shared, r: Result<Json<Value>, JsonRejection>) -> Result<Json<Value>, ApiError> {
    let v = body(r)?;
    let ids: Vec<u32> = serde_json::from_value(v["tokens"].clone())
        .map_err(|_| ApiError::invalid("tokens", "tokens must be an array of token ids"))?;
    let vocab = s.tok.vocab_size();
    if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::invalid("tokens", format!("token id {bad} is outside the vocabulary (0..{vocab})")));
    }
    Ok(Json(json!({"prompt": s.tok.decode(&ids, false).map_err(|e| ApiError::invalid("tokens", e.to_string()))?})))
}

#[derive(Clone)]
enum Kind {
    Completion,
    /// `tools`: the calls the model may make (their output is parsed into `tool_calls`).
    Chat {
        tools: Option<Arc<Tools>>,
    },
}

/// `POST /v1/completions`.
pub async fn completions(State(s): Shared, r: Result<Json<Value>, JsonRejection>) -> Result<Response, ApiError> {
    let r: CompletionRequest = typed(r)?;
    let encode = |p: &Prompt| -> Result<Vec<u32>, ApiError> {
        match p {
            Prompt::Text(t) if t.is_empty() => Err(ApiError::invalid("prompt", "the prompt is empty")),
            Prompt::Text(t) => s.tok.encode(t, true).map_err(|e| ApiError::invalid("prompt", e.to_string())),
            Prompt::Ids(ids) => Ok(ids.clone()),
            Prompt::Many(_) | Prompt::Other(_) => {
                Err(ApiError::invalid("prompt", "prompt must be a string, an array of token ids, or a list of either"))
            }
        }
    };
    let prompts: Vec<Vec<u32>> = match &r.prompt {
        Prompt::Many(list) if list.is_empty() => return Err(ApiError::invalid("prompt", "the prompt list is empty")),
        Prompt::Many(list) => list.iter().map(&encode).collect::<Result<_, _>>()?,
        single => vec![encode(single)?],
    };
    let logprobs = match r.logprobs {
        Some(n) if !(0..=20).contains(&n) => {
            return Err(ApiError::invalid("logprobs", format!("logprobs must be 0..=20, got {n}")))
        }
        Some(n) => Some(n as usize),
        None => None,
    };
    let mut reqs = Vec::new();
    for p in &prompts {
        reqs.extend(r.common.to_requests(&s, p.clone(), logprobs.unwrap_or(0), 16)?);
    }
    let prompt_tokens = prompts.iter().map(Vec::len).sum();
    let include_usage = r.common.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let counts = (prompts.len(), prompt_tokens);
    run(s, reqs, counts, Kind::Completion, logprobs.is_some(), r.common.stream.unwrap_or(false), include_usage).await
}

/// `POST /v1/chat/completions`.
pub async fn chat(State(s): Shared, r: Result<Json<Value>, JsonRejection>) -> Result<Response, ApiError> {
    let r: ChatRequest = typed(r)?;
    if r.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    if let Some(m) = r.messages.iter().find(|m| !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool")) {
        return Err(ApiError::invalid(
            "messages",
            format!("unknown role {:?} (system, user, assistant, tool)", m.role),
        ));
    }
    let Some(template) = &s.tok.chat else {
        return Err(ApiError::bad_request("this model has no chat template; use /v1/completions"));
    };
    let tools = Tools::from_request(r.tools.as_ref(), r.tool_choice.as_ref())?
        .map(|t| Tools { parallel: r.parallel_tool_calls.unwrap_or(true), ..t });
    // Tools reach the model through its template when it reads them; otherwise through a system
    // message, with calls and results in the history written as text.
    let native = template.supports_tools();
    let mut msgs: Vec<Message> = r
        .messages
        .iter()
        .map(|m| {
            let mut content = m.content.clone().unwrap_or_default();
            if native {
                return Message {
                    tool_calls: m.tool_calls.clone(),
                    tool_call_id: m.tool_call_id.clone(),
                    ..Message::new(&m.role, &content)
                };
            }
            if let Some(calls) = &m.tool_calls {
                content = [content, tools::calls_as_text(calls)].join("\n").trim().to_string();
            }
            match m.role.as_str() {
                "tool" => Message::new("user", &format!("<tool_response>\n{content}\n</tool_response>")),
                role => Message::new(role, &content),
            }
        })
        .collect();
    let rendered_tools = tools
        .as_ref()
        .map(|t| Value::Array(t.functions.iter().map(|f| json!({"type": "function", "function": f})).collect()));
    if let (Some(t), false) = (&tools, native) {
        let about = tools::system_prompt(&t.functions);
        match msgs.first_mut().filter(|m| m.role == "system") {
            Some(sys) => sys.content = format!("{}\n\n{about}", sys.content),
            None => msgs.insert(0, Message::new("system", &about)),
        }
    }
    let prompt = s
        .tok
        .encode_chat_with_tools(&msgs, rendered_tools.as_ref().filter(|_| native), true)
        .map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let want_lp = r.logprobs.unwrap_or(false);
    let top = match r.top_logprobs {
        Some(n) if !(0..=20).contains(&n) => {
            return Err(ApiError::invalid("top_logprobs", format!("top_logprobs must be 0..=20, got {n}")))
        }
        Some(_) if !want_lp => return Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true")),
        Some(n) => n as usize,
        None => 0,
    };
    let room = s.max_len.saturating_sub(prompt.len());
    let prompt_tokens = prompt.len();
    let mut reqs = r.common.to_requests(&s, prompt, top, room)?;
    if let Some(c) = tools.as_ref().and_then(Tools::constraint) {
        if r.common.constraint()?.is_some() {
            return Err(ApiError::invalid(
                "tool_choice",
                "a required or named tool call cannot be combined with response_format or structured_outputs",
            ));
        }
        reqs = reqs.into_iter().map(|q| q.with_constraint(c.clone())).collect();
    }
    let include_usage = r.common.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let stream = r.common.stream.unwrap_or(false);
    let kind = Kind::Chat { tools: tools.map(Arc::new) };
    run(s, reqs, (1, prompt_tokens), kind, want_lp, stream, include_usage).await
}

fn token_text(s: &AppState, id: u32) -> std::borrow::Cow<'_, str> {
    s.token_texts.get(id)
}

/// Log-probabilities of some tokens, in the endpoint's shape.
fn logprobs_json(s: &AppState, kind: &Kind, toks: &[Sampled], offset: &mut usize) -> Value {
    match kind {
        Kind::Completion => {
            let texts: Vec<std::borrow::Cow<'_, str>> = toks.iter().map(|t| token_text(s, t.id)).collect();
            let offsets: Vec<usize> = texts
                .iter()
                .map(|t| {
                    *offset += t.len();
                    *offset - t.len()
                })
                .collect();
            let tops: Vec<Value> = toks
                .iter()
                .map(|t| Value::Object(t.top.iter().map(|(i, l)| (token_text(s, *i).into_owned(), json!(l))).collect()))
                .collect();
            json!({"tokens": texts, "token_logprobs": toks.iter().map(|t| t.logprob).collect::<Vec<_>>(), "top_logprobs": tops, "text_offset": offsets})
        }
        Kind::Chat { .. } => {
            let entry = |id: u32, lp: f32| {
                let text = token_text(s, id);
                json!({"token": text, "logprob": lp, "bytes": text.as_bytes()})
            };
            let content: Vec<Value> = toks
                .iter()
                .map(|t| {
                    let mut e = entry(t.id, t.logprob);
                    e["top_logprobs"] = t.top.iter().map(|(i, l)| entry(*i, *l)).collect();
                    e
                })
                .collect();
            json!({"content": content})
        }
    }
}

/// A chat choice's message and finish reason: with tools, calls found in the output become
/// `tool_calls` (content: what text is left, else null) and the reason `tool_calls`.
fn chat_message(tools: Option<&Tools>, text: String, reason: FinishReason) -> (Value, &'static str) {
    let parsed = tools.filter(|_| reason == FinishReason::Stop).and_then(|t| t.parse(&text));
    match parsed {
        Some((content, calls)) => (json!({"role": "assistant", "content": content, "tool_calls": calls}), "tool_calls"),
        None => (json!({"role": "assistant", "content": text}), reason.as_str()),
    }
}

/// A choice's whole output: text, tokens, why it ended (and the error, for `error`), usage.
type Collected = (String, Vec<Sampled>, FinishReason, Option<String>, Usage);

/// A choice that ended in an error carries it, in OpenAI's error shape, beside its finish
/// reason `error`.
fn with_error(mut choice: Value, error: Option<String>) -> Value {
    if let Some(m) = error {
        let code =
            if m.starts_with("the output constraint failed") { "constraint_failed" } else { "non_finite_logits" };
        choice["error"] = json!({"message": m, "type": "server_error", "param": null, "code": code});
    }
    choice
}

/// One choice's whole output; its timings go to the metrics (`t0`: submission).
async fn collect(s: &AppState, events: &mut RequestStream, t0: Instant) -> Result<Collected, ApiError> {
    let (mut text, mut toks, mut first) = (String::new(), Vec::new(), None);
    loop {
        match events.next().await {
            Some(Event::Token { token, text: t }) => {
                first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
                text.push_str(&t);
                toks.push(token);
            }
            Some(Event::Finished { text: t, reason, usage, error }) => {
                text.push_str(&t);
                s.metrics.choice(usage.prompt_tokens, usage.completion_tokens, first, t0.elapsed().as_secs_f64());
                return Ok((text, toks, reason, error, usage));
            }
            Some(Event::Error(m)) => return Err(ApiError::internal(m)),
            None => return Err(ApiError::from(turbine_batcher::SubmitError::ShutDown)),
        }
    }
}

/// Streams one choice's chunks into `tx`; returns its usage when it finished.
/// What every chunk of a streamed response shares.
#[derive(Clone)]
struct ChunkShape {
    kind: Kind,
    logprobs: bool,
    /// `id`, `object`, `created`, `model`.
    head: Value,
    /// When the request was submitted.
    t0: Instant,
}

async fn forward(
    st: Arc<AppState>,
    mut events: RequestStream,
    index: usize,
    shape: ChunkShape,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) -> Option<Usage> {
    let ChunkShape { kind, logprobs, head, t0 } = shape;
    // With tools the output may be calls: it is sent whole at the end, as content or as calls.
    let tools = match &kind {
        Kind::Chat { tools, .. } => tools.clone(),
        Kind::Completion => None,
    };
    let mut held = String::new();
    let mut first = None;
    let chunk = |choice: Value| {
        let mut c = head.clone();
        c["choices"] = json!([choice]);
        c.to_string()
    };
    if let Kind::Chat { .. } = kind {
        tx.send(chunk(json!({"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": null})))
            .ok()?;
    }
    let mut offset = 0;
    loop {
        let msg = match events.next().await? {
            Event::Token { text, .. } if tools.is_some() => {
                first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
                held.push_str(&text);
                continue;
            }
            Event::Token { token, text } => {
                first.get_or_insert_with(|| t0.elapsed().as_secs_f64());
                let lp = if logprobs {
                    logprobs_json(&st, &kind, std::slice::from_ref(&token), &mut offset)
                } else {
                    Value::Null
                };
                match kind {
                    Kind::Completion => {
                        chunk(json!({"index": index, "text": text, "logprobs": lp, "finish_reason": null}))
                    }
                    Kind::Chat { .. } => chunk(
                        json!({"index": index, "delta": {"content": text}, "logprobs": lp, "finish_reason": null}),
                    ),
                }
            }
            Event::Finished { text, reason, usage, error } => {
                st.metrics.choice(usage.prompt_tokens, usage.completion_tokens, first, t0.elapsed().as_secs_f64());
                let last = match kind {
                    Kind::Completion => {
                        json!({"index": index, "text": text, "logprobs": null, "finish_reason": reason.as_str()})
                    }
                    Kind::Chat { tools: Some(t), .. } => {
                        held.push_str(&text);
                        let (mut message, finish) = chat_message(Some(t.as_ref()), held.clone(), reason);
                        message.as_object_mut().map(|m| m.remove("role"));
                        if let Some(calls) = message["tool_calls"].as_array_mut() {
                            for (i, c) in calls.iter_mut().enumerate() {
                                c["index"] = json!(i);
                            }
                        }
                        json!({"index": index, "delta": message, "finish_reason": finish})
                    }
                    Kind::Chat { .. } => {
                        let delta = if text.is_empty() { json!({}) } else { json!({"content": text}) };
                        json!({"index": index, "delta": delta, "finish_reason": reason.as_str()})
                    }
                };
                let last = chunk(with_error(last, error));
                tx.send(last).ok()?;
                return Some(usage);
            }
            Event::Error(m) => {
                json!({"error": {"message": m, "type": "server_error", "param": null, "code": 500}}).to_string()
            }
        };
        // A closed connection drops the receiver: stop, which drops `events` and cancels.
        tx.send(msg).ok()?;
    }
}

/// Runs the choices (one engine request each) and answers in the endpoint's shape, streamed or
/// not. `prompt_tokens` counts each of the `prompts` distinct prompts once, for the usage.
async fn run(
    s: Arc<AppState>,
    reqs: Vec<Request>,
    (prompts, prompt_tokens): (usize, usize),
    kind: Kind,
    logprobs: bool,
    stream: bool,
    include_usage: bool,
) -> Result<Response, ApiError> {
    let t0 = Instant::now();
    let reqs_len = reqs.len();
    let mut streams = Vec::with_capacity(reqs.len());
    for r in reqs {
        match s.engine.submit(r).await {
            Ok(st) => streams.push(st),
            Err(e) => {
                for st in &streams {
                    s.engine.cancel(st.id);
                }
                return Err(e.into());
            }
        }
    }
    let (prefix, object, chunk_object) = match &kind {
        Kind::Completion => ("cmpl", "text_completion", "text_completion"),
        Kind::Chat { .. } => ("chatcmpl", "chat.completion", "chat.completion.chunk"),
    };
    let id = format!("{prefix}-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let created = now();
    // Choices come `per_prompt` to a prompt; the first of each says how much of its prompt the
    // prefix cache served.
    let per_prompt = (reqs_len / prompts.max(1)).max(1);
    let usage_of = move |completion: usize, cached: usize| {
        json!({"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion,
               "prompt_tokens_details": {"cached_tokens": cached}})
    };
    if !stream {
        let mut choices = Vec::new();
        let (mut completion, mut cached) = (0, 0);
        for (index, events) in streams.iter_mut().enumerate() {
            let (text, toks, reason, error, usage) = collect(&s, events, t0).await?;
            completion += usage.completion_tokens;
            if index % per_prompt == 0 {
                cached += usage.cached_tokens;
            }
            let lp = if logprobs { logprobs_json(&s, &kind, &toks, &mut 0) } else { Value::Null };
            let choice = match &kind {
                Kind::Completion => {
                    json!({"index": index, "text": text, "logprobs": lp, "finish_reason": reason.as_str()})
                }
                Kind::Chat { tools, .. } => {
                    let (message, finish) = chat_message(tools.as_deref(), text, reason);
                    json!({"index": index, "message": message, "logprobs": lp, "finish_reason": finish})
                }
            };
            choices.push(with_error(choice, error));
        }
        let body = json!({"id": id, "object": object, "created": created, "model": s.model, "choices": choices, "usage": usage_of(completion, cached)});
        return Ok(Json(body).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let head = json!({"id": id, "object": chunk_object, "created": created, "model": s.model});
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, ev)| {
            let shape = ChunkShape { kind: kind.clone(), logprobs, head: head.clone(), t0 };
            tokio::spawn(forward(s.clone(), ev, i, shape, tx.clone()))
        })
        .collect();
    tokio::spawn(async move {
        let (mut completion, mut cached) = (0, 0);
        for (index, t) in tasks.into_iter().enumerate() {
            match t.await {
                Ok(Some(u)) => {
                    completion += u.completion_tokens;
                    if index % per_prompt == 0 {
                        cached += u.cached_tokens;
                    }
                }
                _ => return, // the client went away or a choice failed
            }
        }
        if include_usage {
            let mut u = head.clone();
            u["choices"] = json!([]);
            u["usage"] = usage_of(completion, cached);
            let _ = tx.send(u.to_string());
        }
        let _ = tx.send("[DONE]".into());
    });
    let body = UnboundedReceiverStream::new(rx).map(|data| Ok::<_, Infallible>(SseEvent::default().data(data)));
    Ok(Sse::new(body).keep_alive(KeepAlive::default()).into_response())
}
