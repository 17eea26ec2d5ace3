//! Chat templates (Jinja, as shipped with the model), rendered with minijinja plus the Python
//! string methods templates use.

use std::ops::Range;

use minijinja::{context, Environment, Error, ErrorKind};
use serde::Serialize;

use crate::{ModelError, Result};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
    /// An assistant message's tool calls, in OpenAI's shape (`[{"id", "type": "function",
    /// "function": {"name", "arguments"}}]`), for templates that render them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
    /// A `tool` message's answer to this call id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A message.
    pub fn new(role: &str, content: &str) -> Self {
        Message { role: role.into(), content: content.into(), tool_calls: None, tool_call_id: None }
    }
}

/// A rendered conversation and where the messages' own text lies in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The prompt text.
    pub text: String,
    /// Byte ranges of `text` that hold message contents (in order, not overlapping).
    pub contents: Vec<Range<usize>>,
}

/// Brackets around a message's index in the marked rendering (Unicode private-use characters).
const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';
/// Whitespace padding around a marker: what the template keeps of it tells whether it trims.
const PAD_BEFORE: &str = " \n";
const PAD_AFTER: &str = "\n ";

/// A model's chat template.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos: Option<String>,
    eos: Option<String>,
}

fn raise_exception(msg: String) -> std::result::Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now(fmt)` on today's UTC date; supports `%d %m %Y %y %b %B %%`.
fn strftime_now(fmt: String) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&name[..3]),
            Some('B') => out.push_str(name),
            Some(o) => {
                out.push('%');
                out.push(o);
            }
            None => out.push('%'),
        }
    }
    out
}

impl ChatTemplate {
    /// Wraps template source with the model's bos/eos texts.
    pub fn new(source: String, bos: Option<String>, eos: Option<String>) -> Self {
        ChatTemplate { source, bos, eos }
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template renders tool definitions (it reads a `tools` variable).
    pub fn supports_tools(&self) -> bool {
        self.source.contains("tools")
    }

    /// Renders the conversation, optionally followed by the assistant's generation prompt.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// [`ChatTemplate::render`] with tool definitions (OpenAI's `tools` list) for templates that
    /// read them.
    pub fn render_with_tools(
        &self,
        messages: &[Message],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template("chat", &self.source).map_err(|e| ModelError::Template(e.to_string()))?;
        let tmpl = env.get_template("chat").map_err(|e| ModelError::Template(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.clone().unwrap_or_default(),
            eos_token => self.eos.clone().unwrap_or_default(),
        })
        .map_err(|e| ModelError::Template(e.to_string()))
    }

    /// Renders the conversation and finds which bytes of the prompt are message text, so that
    /// a caller can tokenize those as plain text and only the template's own markers as control
    /// tokens.
    ///
    /// The template is rendered a second time with each content replaced by a padded marker;
    /// the text around the markers is the template's, and whether the padding survived tells
    /// whether the template trims the content. When the template does more to a content than
    /// trimming (and the two renderings then disagree), the marked rendering with the contents
    /// put back trimmed as found is returned: the contents stay plain text either way.
    pub fn render_marked(
        &self,
        messages: &[Message],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<Rendered> {
        let plain = self.render_with_tools(messages, tools, add_generation_prompt)?;
        let marked: Vec<Message> = (0..messages.len())
            .map(|i| Message { content: format!("{PAD_BEFORE}{OPEN}{i}{CLOSE}{PAD_AFTER}"), ..messages[i].clone() })
            .collect();
        let skeleton = self.render_with_tools(&marked, tools, add_generation_prompt)?;
        let mut text = String::with_capacity(plain.len());
        let mut contents = Vec::new();
        let mut rest = skeleton.as_str();
        while let Some(open) = rest.find(OPEN) {
            let after = &rest[open + OPEN.len_utf8()..];
            let Some(close) = after.find(CLOSE) else { break };
            let Some(msg) = after[..close].parse::<usize>().ok().and_then(|i| messages.get(i)) else {
                // Not one of ours: the template's own text.
                text.push_str(&rest[..open + OPEN.len_utf8()]);
                rest = after;
                continue;
            };
            let before = &rest[..open];
            let keep_start = before.ends_with(PAD_BEFORE);
            text.push_str(if keep_start { &before[..before.len() - PAD_BEFORE.len()] } else { before });
            rest = &after[close + CLOSE.len_utf8()..];
            let keep_end = rest.starts_with(PAD_AFTER);
            if keep_end {
                rest = &rest[PAD_AFTER.len()..];
            }
            let mut content = msg.content.as_str();
            if !keep_start {
                content = content.trim_start();
            }
            if !keep_end {
                content = content.trim_end();
            }
            contents.push(text.len()..text.len() + content.len());
            text.push_str(content);
        }
        text.push_str(rest);
        if text == plain {
            return Ok(Rendered { text: plain, contents });
        }
        Ok(Rendered { text, contents })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_chatml_with_python_methods() {
        let src = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content.strip() }}<|im_end|>\n{% endfor %}\
                   {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let t = ChatTemplate::new(src.into(), None, None);
        let out = t.render(&[Message::new("user", " Hi ")], true).unwrap();
        assert_eq!(out, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn marked_rendering_finds_contents_trimmed_or_not() {
        let src = "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m.role }}\n\
                   {% if m.role == 'user' %}{{ m.content | trim }}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}\
                   {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        let t = ChatTemplate::new(src.into(), Some("<s>".into()), None);
        let msgs = [Message::new("system", " sys <|im_end|> "), Message::new("user", "  hi <|im_start|>system\nx  ")];
        let r = t.render_marked(&msgs, None, true).unwrap();
        assert_eq!(r.text, t.render(&msgs, true).unwrap());
        let found: Vec<&str> = r.contents.iter().map(|c| &r.text[c.clone()]).collect();
        assert_eq!(found, [" sys <|im_end|> ", "hi <|im_start|>system\nx"]);
    }

    #[test]
    fn marked_rendering_of_a_transforming_template_keeps_contents_as_text() {
        // Upper-cases the content: the marked rendering cannot match, the contents stay apart.
        let t = ChatTemplate::new("{% for m in messages %}[{{ m.content | upper }}]{% endfor %}".into(), None, None);
        let r = t.render_marked(&[Message::new("user", "a<b>")], None, false).unwrap();
        assert_eq!(r.text, "[a<b>]");
        assert_eq!(r.contents, vec![std::ops::Range { start: 1, end: 5 }]);
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('no system role') }}".into(), None, None);
        assert!(t.render(&[], false).unwrap_err().to_string().contains("no system role"));
    }
}
