//! Incremental detokenization: a growing list of ids turned into text at a cost per token that
//! does not grow with the output.

/// Turns generated ids into text (special tokens skipped), for stop strings and text deltas.
pub type Detokenizer = Box<dyn Fn(&[u32]) -> String + Send>;

/// The text of a growing list of ids, decoded the way streaming detokenizers do (TGI's and
/// vLLM's prefix and read offsets): the ids since the last release are decoded together with
/// the ones released last time, and the text beyond what those alone decode to is new. Each
/// update decodes a short window, not the whole output; an id that ends half-way through a
/// character is held until the character is whole (or the stream ends). The concatenation
/// equals the decoding of all ids at once for byte-level and SentencePiece tokenizers (tested
/// on real ones in `tests/tests/golden_real.rs`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextStream {
    text: String,
    /// `ids[prefix..read]` were decoded last time, as context for the next window.
    prefix: usize,
    /// `ids[read..]` are not released yet.
    read: usize,
}

impl TextStream {
    /// Decodes what `ids` (the whole list so far, a prefix of the next call's) added since the
    /// last call, and returns the text released now. With `last`, an incomplete character is
    /// released too (as a replacement character, as a whole decoding would show it).
    pub fn update(&mut self, decode: &dyn Fn(&[u32]) -> String, ids: &[u32], last: bool) -> &str {
        let start = self.text.len();
        if self.read < ids.len() || last {
            let before = decode(&ids[self.prefix..self.read.min(ids.len())]);
            let now = decode(&ids[self.prefix..]);
            let whole = last || !now.ends_with('\u{fffd}');
            if now.len() > before.len() && whole && now.is_char_boundary(before.len()) {
                self.text.push_str(&now[before.len()..]);
                self.prefix = self.read;
                self.read = ids.len();
            }
        }
        &self.text[start..]
    }

    /// All the text released so far.
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A toy tokenizer: id i is the i-th piece; pieces with a leading `_` are words that start
    /// with a space, which the first piece of a decoding drops (SentencePiece's rule); ids 10
    /// and 11 are the two bytes of "é", shown as U+FFFD when alone.
    fn decode(ids: &[u32]) -> String {
        const PIECES: [&str; 5] = ["_Hello", "_world", "!", "_a", "b"];
        let mut bytes = Vec::new();
        for (k, &i) in ids.iter().enumerate() {
            match i {
                10 => bytes.push(0xc3),
                11 => bytes.push(0xa9),
                _ => {
                    let p = PIECES[i as usize].replace('_', " ");
                    let p = if k == 0 { p.trim_start().to_string() } else { p };
                    bytes.extend(p.as_bytes());
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn streamed_text_is_the_whole_decoding() {
        let ids = [0, 1, 10, 11, 2, 3, 4, 10, 11, 1, 10];
        let mut s = TextStream::default();
        let mut streamed = String::new();
        for n in 1..=ids.len() {
            let delta = s.update(&decode, &ids[..n], false).to_string();
            assert!(!delta.contains('\u{fffd}'), "an incomplete character was released: {delta:?}");
            streamed.push_str(&delta);
        }
        streamed.push_str(s.update(&decode, &ids, true));
        assert_eq!(streamed, decode(&ids));
        assert_eq!(s.text(), decode(&ids));
    }
}
