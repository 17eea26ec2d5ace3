//! OpenAI tool calling on chat completions: the request's `tools` and `tool_choice`, the prompt
//! (the model's chat template renders the tools when it reads a `tools` variable; otherwise a
//! system message describes them, [`system_prompt`]), the constraint that makes a call certain
//! (`required`, or a named function: the output is JSON under a schema built from the tools'
//! parameters), and the parse of the output into `message.tool_calls`.
//!
//! Calls are written, and read back, as in the Hermes / Qwen convention that many open models
//! are trained on: `<tool_call>{"name": …, "arguments": {…}}</tool_call>`. With `required` or a
//! named function the output is the calls' JSON itself (an array, or one object), constrained.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{json, Value};
use turbine_batcher::ConstraintSpec;

use super::ApiError;

/// Ids of returned calls (`call_1`, `call_2`, …), unique in the server's life.
static NEXT_CALL: AtomicU64 = AtomicU64::new(1);

/// How the model may call tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// As it likes: calls are read from `<tool_call>` blocks of its text.
    Auto,
    /// At least one call (the output is a JSON array of calls).
    Required,
    /// A call of this function (the output is one JSON call).
    Named(String),
}

/// A request's tools and how they may be called.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The `function` objects (`name`, `description`, `parameters`), in order.
    pub functions: Vec<Value>,
    /// The mode.
    pub mode: Mode,
    /// Several calls in one answer (`parallel_tool_calls`, default true); false: one call.
    pub parallel: bool,
}

impl Tools {
    /// The request's `tools` and `tool_choice`, checked; `None` when no tool may be called
    /// (none given, or `tool_choice: "none"`).
    pub fn from_request(tools: Option<&Value>, choice: Option<&Value>) -> Result<Option<Tools>, ApiError> {
        let list = match tools {
            None | Some(Value::Null) => {
                return match choice {
                    None | Some(Value::Null) => Ok(None),
                    Some(c) if c == "none" => Ok(None),
                    Some(_) => Err(ApiError::invalid("tool_choice", "tool_choice needs tools")),
                };
            }
            Some(Value::Array(l)) => l,
            Some(_) => return Err(ApiError::invalid("tools", "tools must be a list of {\"type\": \"function\", …}")),
        };
        let mut functions = Vec::with_capacity(list.len());
        for (i, t) in list.iter().enumerate() {
            let f = &t["function"];
            if t["type"] != "function" || !f["name"].is_string() {
                return Err(ApiError::invalid(
                    "tools",
                    format!("tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": …}}}}"),
                ));
            }
            if !(f["parameters"].is_null() || f["parameters"].is_object()) {
                return Err(ApiError::invalid(
                    "tools",
                    format!("tools[{i}].function.parameters must be a JSON Schema object"),
                ));
            }
            functions.push(f.clone());
        }
        let names: Vec<&str> = functions.iter().filter_map(|f| f["name"].as_str()).collect();
        if let Some(dup) = names.iter().enumerate().find(|(i, n)| names[..*i].contains(n)) {
            return Err(ApiError::invalid("tools", format!("two tools are named {:?}", dup.1)));
        }
        let mode = match choice {
            None | Some(Value::Null) => Mode::Auto,
            Some(c) if c == "auto" => Mode::Auto,
            Some(c) if c == "none" => return Ok(None),
            Some(c) if c == "required" => Mode::Required,
            Some(c) => match c["function"]["name"].as_str() {
                Some(n) if c["type"] == "function" && names.contains(&n) => Mode::Named(n.to_string()),
                Some(n) if c["type"] == "function" => {
                    return Err(ApiError::invalid("tool_choice", format!("tool_choice names {n:?}, which is not in tools")))
                }
                _ => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        "tool_choice must be \"none\", \"auto\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}",
                    ))
                }
            },
        };
        if functions.is_empty() && mode != Mode::Auto {
            return Err(ApiError::invalid("tools", "tools is empty"));
        }
        Ok(Some(Tools { functions, mode, parallel: true }))
    }

    /// The JSON Schema of one call of function `f`: `{"name": its name, "arguments": its
    /// parameters}`. The arguments object takes only the declared properties unless the schema
    /// says otherwise (`additionalProperties`), as OpenAI's strict mode does: a model cannot pad
    /// a call with properties the function does not know.
    fn call_schema(f: &Value) -> Value {
        let mut params = if f["parameters"].is_object() { f["parameters"].clone() } else { json!({"type": "object"}) };
        if let Some(p) = params.as_object_mut().filter(|p| p.contains_key("properties")) {
            p.entry("additionalProperties").or_insert(json!(false));
        }
        json!({"type": "object", "properties": {"name": {"const": f["name"]}, "arguments": params},
               "required": ["name", "arguments"], "additionalProperties": false})
    }

    /// The constraint that makes the output a call (`required`: a non-empty array of calls of
    /// any tool; a named function: one call of it); none for `auto`.
    pub fn constraint(&self) -> Option<ConstraintSpec> {
        let mut schema = match &self.mode {
            Mode::Auto => return None,
            Mode::Required => {
                let mut a = json!({"type": "array", "minItems": 1,
                                   "items": {"anyOf": self.functions.iter().map(Self::call_schema).collect::<Vec<_>>()}});
                if !self.parallel {
                    a["maxItems"] = json!(1);
                }
                a
            }
            Mode::Named(n) => Self::call_schema(self.functions.iter().find(|f| f["name"] == n.as_str())?),
        };
        // Calls are data, not prose: one layout, `{"name": "f", "arguments": {"a": 1}}`.
        schema["x-guidance"] = json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "});
        Some(ConstraintSpec::JsonSchema(schema.to_string()))
    }

    /// The calls in a finished output, in OpenAI's shape, and the text left around them (`None`
    /// when only calls were written). No calls (an output that is no call, or an unknown
    /// function): `None`, and the output is the message's content.
    pub fn parse(&self, text: &str) -> Option<(Option<String>, Vec<Value>)> {
        let calls: Vec<Value> = match &self.mode {
            Mode::Required => serde_json::from_str::<Vec<Value>>(text).ok()?,
            Mode::Named(_) => vec![serde_json::from_str::<Value>(text).ok()?],
            Mode::Auto => {
                let (mut calls, mut rest, mut at) = (Vec::new(), String::new(), 0);
                while let Some(open) = text[at..].find("<tool_call>").map(|p| at + p) {
                    let body = open + "<tool_call>".len();
                    let close = text[body..].find("</tool_call>").map_or(text.len(), |p| body + p);
                    calls.push(serde_json::from_str::<Value>(text[body..close].trim()).ok()?);
                    rest.push_str(&text[at..open]);
                    at = (close + "</tool_call>".len()).min(text.len());
                }
                rest.push_str(&text[at..]);
                if calls.is_empty() {
                    return None;
                }
                let rest = rest.trim();
                return self.shaped(calls).map(|c| ((!rest.is_empty()).then(|| rest.to_string()), c));
            }
        };
        self.shaped(calls).map(|c| (None, c))
    }

    /// `{"name", "arguments"}` objects as OpenAI tool calls; `None` if one names no tool.
    fn shaped(&self, calls: Vec<Value>) -> Option<Vec<Value>> {
        calls
            .into_iter()
            .map(|c| {
                let name = c["name"].as_str()?;
                self.functions.iter().find(|f| f["name"] == name)?;
                let args = match &c["arguments"] {
                    Value::Null => "{}".to_string(),
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let id = format!("call_{}", NEXT_CALL.fetch_add(1, Ordering::Relaxed));
                Some(json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}}))
            })
            .collect()
    }
}

/// The system message that describes the tools to a model whose chat template does not render
/// them, with the convention for calling them.
pub fn system_prompt(functions: &[Value]) -> String {
    let list: Vec<String> = functions.iter().map(|f| f.to_string()).collect();
    format!(
        "You can call functions (tools). They are, as JSON:\n{}\n\nTo call one or more of them, answer with one \
         block per call, and nothing else:\n<tool_call>{{\"name\": \"<function name>\", \"arguments\": {{<arguments as \
         JSON>}}}}</tool_call>\nOtherwise answer normally. A function's result comes back in a message from the tool.",
        list.join("\n")
    )
}

/// An assistant message's calls as the text a model without tool support in its template reads
/// (the convention of [`system_prompt`]).
pub fn calls_as_text(calls: &Value) -> String {
    calls
        .as_array()
        .map(|l| {
            l.iter()
                .map(|c| {
                    let f = &c["function"];
                    let args: Value = match &f["arguments"] {
                        Value::String(s) => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
                        other => other.clone(),
                    };
                    format!("<tool_call>{}</tool_call>", json!({"name": f["name"], "arguments": args}))
                })
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> Value {
        json!([
            {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
            {"type": "function", "function": {"name": "time", "description": "The time now"}}
        ])
    }

    #[test]
    fn choices_are_read_and_checked() {
        let t = tools();
        assert_eq!(Tools::from_request(Some(&t), None).unwrap().unwrap().mode, Mode::Auto);
        assert!(Tools::from_request(Some(&t), Some(&json!("none"))).unwrap().is_none());
        assert_eq!(Tools::from_request(Some(&t), Some(&json!("required"))).unwrap().unwrap().mode, Mode::Required);
        let named = json!({"type": "function", "function": {"name": "time"}});
        assert_eq!(Tools::from_request(Some(&t), Some(&named)).unwrap().unwrap().mode, Mode::Named("time".into()));
        for (tools, choice, needle) in [
            (Some(t.clone()), Some(json!({"type": "function", "function": {"name": "nope"}})), "not in tools"),
            (Some(t.clone()), Some(json!("always")), "tool_choice must be"),
            (None, Some(json!("required")), "needs tools"),
            (Some(json!([{"type": "function"}])), None, "tools[0]"),
            (Some(json!({"a": 1})), None, "must be a list"),
            (Some(json!([t[0], t[0]])), None, "two tools are named \"weather\""),
        ] {
            let e = Tools::from_request(tools.as_ref(), choice.as_ref()).unwrap_err();
            assert!(e.message.contains(needle), "{needle}: {}", e.message);
        }
    }

    #[test]
    fn outputs_become_tool_calls() {
        let t = tools();
        let auto = Tools::from_request(Some(&t), None).unwrap().unwrap();
        let (rest, calls) = auto
            .parse("Let me check.\n<tool_call>{\"name\": \"weather\", \"arguments\": {\"city\": \"Oslo\"}}</tool_call>")
            .unwrap();
        assert_eq!(rest.as_deref(), Some("Let me check."));
        assert_eq!(calls[0]["function"]["name"], "weather");
        assert_eq!(calls[0]["type"], "function");
        let args: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Oslo"}));
        assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
        assert!(auto.parse("It is sunny.").is_none());
        assert!(auto.parse("<tool_call>{\"name\": \"unknown\", \"arguments\": {}}</tool_call>").is_none());
        let req = Tools::from_request(Some(&t), Some(&json!("required"))).unwrap().unwrap();
        let (rest, calls) = req
            .parse(r#"[{"name": "time", "arguments": {}}, {"name": "weather", "arguments": {"city": "Rome"}}]"#)
            .unwrap();
        assert!(rest.is_none() && calls.len() == 2);
        assert!(
            matches!(req.constraint(), Some(ConstraintSpec::JsonSchema(s)) if s.contains("minItems") && !s.contains("maxItems"))
        );
        let single = Tools { parallel: false, ..req.clone() };
        assert!(matches!(single.constraint(), Some(ConstraintSpec::JsonSchema(s)) if s.contains("\"maxItems\":1")));
        assert!(auto.constraint().is_none());
        let text = calls_as_text(&Value::Array(calls));
        assert!(text.contains(r#"<tool_call>{"name":"weather","arguments":{"city":"Rome"}}</tool_call>"#), "{text}");
        assert!(system_prompt(&auto.functions).contains("\"name\":\"time\""));
    }
}
