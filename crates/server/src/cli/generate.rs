//! `turbine generate`.

use std::io::Write;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use turbine_batcher::{ConstraintSpec, GenOutput, Request};
use turbine_core::sampling::SamplingParams;
use turbine_models::chat::Message;
use turbine_server::setup::Session;

use super::{parse_ids, ModelArgs, SpecArgs};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt text (tokenized with the model's special tokens, e.g. BOS).
    #[arg(long, group = "input")]
    prompt: Option<String>,
    /// Prompt as comma-separated token ids.
    #[arg(long, group = "input")]
    prompt_ids: Option<String>,
    /// A user message, wrapped in the model's chat template with the generation prompt.
    #[arg(long, group = "input")]
    chat: Option<String>,
    /// A system message for --chat.
    #[arg(long, requires = "chat")]
    system: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256, allow_negative_numbers = true)]
    max_tokens: i64,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8, allow_negative_numbers = true)]
    temperature: f32,
    /// Keep only the K most likely tokens (0: all).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    top_k: i64,
    /// Nucleus sampling: keep the most likely tokens up to this probability mass, in (0, 1].
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f32,
    /// Drop tokens less likely than this fraction of the most likely one (0: off).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    min_p: f32,
    /// Penalise tokens already in the prompt or output (1: off; transformers' definition).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    repetition_penalty: f32,
    /// Subtract from the logits of tokens already generated (-2..2).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    presence_penalty: f32,
    /// Subtract per occurrence from the logits of generated tokens (-2..2).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    frequency_penalty: f32,
    /// Seed for reproducible sampling.
    #[arg(long)]
    seed: Option<u64>,
    /// Do not stop at end-of-sequence tokens.
    #[arg(long)]
    ignore_eos: bool,
    /// Generate at least this many tokens before EOS or a stop string may end the output.
    #[arg(long, default_value_t = 0)]
    min_tokens: usize,
    /// Stop when the output contains this text (not printed); repeat for several.
    #[arg(long)]
    stop: Vec<String>,
    /// Report the N most likely tokens' log-probabilities at each step (with --json).
    #[arg(long)]
    logprobs: Option<usize>,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    spec: SpecArgs,
    /// The output is JSON valid under this JSON Schema (a file).
    #[arg(long, value_name = "FILE", group = "constraint")]
    json_schema: Option<std::path::PathBuf>,
    /// The output matches this regular expression, whole.
    #[arg(long, value_name = "REGEX", group = "constraint")]
    regex: Option<String>,
    /// The output is one of these comma-separated strings.
    #[arg(long, value_name = "A,B,…", group = "constraint")]
    choice: Option<String>,
    /// The output follows this Lark grammar (a file).
    #[arg(long, value_name = "FILE.lark", group = "constraint")]
    grammar: Option<std::path::PathBuf>,
}

/// The output constraint the flags ask for.
fn constraint(a: &GenerateArgs) -> Result<Option<ConstraintSpec>> {
    let read = |p: &std::path::Path| std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()));
    Ok(if let Some(p) = &a.json_schema {
        Some(ConstraintSpec::JsonSchema(read(p)?))
    } else if let Some(r) = &a.regex {
        Some(ConstraintSpec::Regex(r.clone()))
    } else if let Some(c) = &a.choice {
        Some(ConstraintSpec::Choice(c.split(',').map(str::to_string).collect()))
    } else if let Some(p) = &a.grammar {
        Some(ConstraintSpec::Grammar(read(p)?))
    } else {
        None
    })
}

fn prompt_ids(a: &GenerateArgs, s: &Session) -> Result<Vec<u32>> {
    if let Some(text) = &a.prompt {
        if text.is_empty() {
            bail!("the prompt is empty");
        }
        return Ok(s.tok.encode(text, true)?);
    }
    if let Some(ids) = &a.prompt_ids {
        let ids = parse_ids(ids).context("--prompt-ids")?;
        if ids.is_empty() {
            bail!("the prompt is empty");
        }
        return Ok(ids);
    }
    if let Some(user) = &a.chat {
        s.tok.chat.as_ref().context("this model has no chat template; use --prompt")?;
        let mut msgs = Vec::new();
        if let Some(sys) = &a.system {
            msgs.push(Message::new("system", sys));
        }
        msgs.push(Message::new("user", user));
        return Ok(s.tok.encode_chat(&msgs, true)?);
    }
    bail!("give a prompt: --prompt TEXT, --prompt-ids 1,2,3 or --chat TEXT")
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if a.prompt.is_none() && a.prompt_ids.is_none() && a.chat.is_none() {
        bail!("give a prompt: --prompt TEXT, --prompt-ids 1,2,3 or --chat TEXT");
    }
    if a.top_k < 0 {
        bail!("--top-k must be >= 0 (0 keeps every token), got {}", a.top_k);
    }
    let params = SamplingParams {
        temperature: a.temperature,
        top_k: a.top_k as usize,
        top_p: a.top_p,
        seed: a.seed,
        logprobs: a.logprobs.unwrap_or(0),
        min_p: a.min_p,
        repetition_penalty: a.repetition_penalty,
        presence_penalty: a.presence_penalty,
        frequency_penalty: a.frequency_penalty,
    };
    // Flags are checked before the model loads, so a typo fails at once; `Request::new` below is
    // the same check (the one the engine relies on).
    params.check()?;
    if a.max_tokens < 1 {
        bail!("--max-tokens must be at least 1, got {}", a.max_tokens);
    }
    let spec = a.spec.apply(Default::default());
    spec.validate()?;
    let policy = a.model.policy()?;
    let mut s =
        turbine_server::speculation::load(a.model.model.as_deref(), &a.model.backend, a.model.kv(), &policy, &spec)?;
    let prompt = prompt_ids(&a, &s)?;
    let constraint = constraint(&a)?;
    if constraint.is_some() {
        let c = turbine_server::constraint::LlgCompiler::new(&s.tok, &s.eos)?;
        s.engine.set_constraints(Box::new(c));
    }
    // As llama.cpp's CLI does, generation stops at the end of the context rather than refusing a
    // --max-tokens that reaches past it (a prompt that leaves no room is still an error).
    let room = s.engine.max_len().saturating_sub(prompt.len()).max(1);
    let req = Request::new(prompt.clone(), params, (a.max_tokens as usize).min(room))?
        .with_ignore_eos(a.ignore_eos)
        .with_stop_ids(s.eos.clone())
        .with_stop(a.stop.clone())?
        .with_min_tokens(a.min_tokens)?;
    let req = match constraint {
        Some(c) => req.with_constraint(c),
        None => req,
    };
    let out = if a.json {
        turbine_batcher::generate(&mut s.engine, req, &mut |_, _| {})?
    } else {
        let (mut err, mut printed) = (None, 0);
        let out = turbine_batcher::generate(&mut s.engine, req, &mut |_, text| {
            printed += text.len();
            if err.is_none() && !text.is_empty() {
                let mut out = std::io::stdout().lock();
                err = out.write_all(text.as_bytes()).and_then(|()| out.flush()).err();
            }
        });
        if let Some(e) = err {
            return Err(e.into());
        }
        let out = out?;
        // What the engine held back until the end (an incomplete character).
        print!("{}", out.text.get(printed..).unwrap_or_default());
        println!();
        out
    };
    report(&a, &s, &prompt, &out)
}

fn report(a: &GenerateArgs, s: &Session, prompt: &[u32], out: &GenOutput) -> Result<()> {
    let t = &out.timings;
    let ids: Vec<u32> = out.tokens.iter().map(|t| t.id).collect();
    if a.json {
        let mut obj = json!({
            "prompt_ids": prompt,
            "ids": ids,
            "text": out.text,
            "finish_reason": out.finish.as_str(),
            "timings": {
                "load_ms": s.load_ms,
                "prefill_ms": t.prefill_ms,
                "decode_ms": t.decode_ms,
                "prefill_tok_s": t.prefill_tok_s(),
                "decode_tok_s": t.decode_tok_s(),
            },
        });
        if let Some(method) = s.engine.speculation() {
            let st = s.engine.stats();
            obj["speculative"] =
                json!({"method": method, "proposed": st.drafted_tokens, "accepted": st.accepted_tokens});
        }
        if a.logprobs.is_some() {
            obj["logprobs"] = out
                .tokens
                .iter()
                .map(|t| json!({"id": t.id, "logprob": t.logprob, "top": t.top.iter().map(|(i, l)| json!([i, l])).collect::<Vec<_>>()}))
                .collect();
        }
        println!("{obj}");
    } else {
        let st = s.engine.stats();
        let spec = match s.engine.speculation() {
            Some(m) => format!("; {m} drafts: {} of {} accepted", st.accepted_tokens, st.drafted_tokens),
            None => String::new(),
        };
        eprintln!(
            "[{} prompt tokens, {:.1} tok/s prefill; {} generated, {:.1} tok/s decode; finish: {}{spec}]",
            t.prompt_tokens,
            t.prefill_tok_s(),
            ids.len(),
            t.decode_tok_s(),
            out.finish.as_str()
        );
    }
    Ok(())
}
