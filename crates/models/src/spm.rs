//! SentencePiece-style BPE tokenizers rebuilt from GGUF metadata (`tokenizer.ggml.model =
//! "llama"`): Llama 2, Mistral, Gemma. GGUF stores the vocabulary but no merges, so the merges are
//! recovered from the vocabulary — every split of a token into two tokens — and ranked by the
//! token's position in the file, the order Hugging Face's converter uses; text gets `▁` for spaces
//! and unknown characters fall back to `<0xXX>` byte tokens.

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormSequence};
use tokenizers::{NormalizerWrapper, Tokenizer};

use crate::{ModelError, Result};

const SPACE: &str = "\u{2581}";

/// How a family's files differ.
pub(crate) struct SpmStyle {
    /// Prepend `▁` to the text (`tokenizer.ggml.add_space_prefix`).
    pub add_space_prefix: bool,
    /// Gemma: tokens made only of spaces are stored with real spaces (respelled as `▁…`), and of
    /// two splits of one token the one with the longer left part merges first.
    pub gemma: bool,
}

fn err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

/// Recovers BPE merges: each token split in two known tokens, ranked by the token's position,
/// then by the lengths of the parts (longer first for Gemma, shorter first otherwise).
fn merges(tokens: &[String], vocab: &HashMap<&str, u32>, gemma: bool) -> Vec<(String, String)> {
    let mut out: Vec<(usize, usize, usize, &str, &str)> = Vec::new();
    for (pos, t) in tokens.iter().enumerate() {
        for (cut, _) in t.char_indices().skip(1) {
            let (l, r) = t.split_at(cut);
            if vocab.contains_key(l) && vocab.contains_key(r) {
                out.push((pos, l.chars().count(), r.chars().count(), l, r));
            }
        }
    }
    out.sort_by(|a, b| {
        let lens = (a.1, a.2).cmp(&(b.1, b.2));
        a.0.cmp(&b.0).then(if gemma { lens.reverse() } else { lens })
    });
    out.into_iter().map(|(_, _, _, l, r)| (l.to_string(), r.to_string())).collect()
}

/// Builds the tokenizer model, normalizer and decoder; special tokens are added by the caller.
pub(crate) fn build(tokens: &[String], unk: &str, style: &SpmStyle) -> Result<Tokenizer> {
    let tokens: Vec<String> = if style.gemma {
        tokens
            .iter()
            .map(|t| if t.contains(' ') && t.trim().is_empty() { SPACE.repeat(t.chars().count()) } else { t.clone() })
            .collect()
    } else {
        tokens.to_vec()
    };
    // Later duplicates win, as in a dictionary built in order.
    let lookup: HashMap<&str, u32> = tokens.iter().enumerate().map(|(i, t)| (t.as_str(), i as u32)).collect();
    let merges = merges(&tokens, &lookup, style.gemma);
    let vocab: Vocab = lookup.iter().map(|(t, &i)| (t.to_string(), i)).collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .unk_token(unk.to_string())
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(err)?;
    let mut tok = Tokenizer::new(bpe);
    let replace = NormalizerWrapper::from(Replace::new(" ", SPACE).map_err(err)?);
    let dec_replace = DecoderWrapper::Replace(Replace::new(SPACE, " ").map_err(err)?);
    let mut decoders = vec![dec_replace, ByteFallback::new().into(), Fuse::new().into()];
    if style.add_space_prefix {
        tok.with_normalizer(Some(NormSequence::new(vec![Prepend::new(SPACE.into()).into(), replace])));
        decoders.push(Strip::new(' ', 1, 0).into());
    } else {
        tok.with_normalizer(Some(replace));
    }
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Vec<String> {
        ["<unk>", "<s>", "a", "b", "c", "▁", "ab", "▁a", "abc", "▁ab", "<0x21>"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn merges_follow_token_order() {
        let t = toy();
        let lookup: HashMap<&str, u32> = t.iter().enumerate().map(|(i, s)| (s.as_str(), i as u32)).collect();
        let m = merges(&t, &lookup, true);
        assert_eq!(m[0], ("a".into(), "b".into()));
        assert_eq!(m[1], ("▁".into(), "a".into()));
        // "abc" splits as "ab"+"c" only ("a"+"bc" has no "bc"); "▁ab": longer left part first.
        assert_eq!(m[2], ("ab".into(), "c".into()));
        assert_eq!(&m[3..], &[("▁a".into(), "b".into()), ("▁".into(), "ab".into())]);
    }

    #[test]
    fn encodes_with_spaces_and_byte_fallback() {
        let tok = build(&toy(), "<unk>", &SpmStyle { add_space_prefix: false, gemma: true }).unwrap();
        let ids = tok.encode("abc ab!", false).unwrap().get_ids().to_vec();
        assert_eq!(ids, vec![8, 9, 10]);
        assert_eq!(tok.decode(&ids, false).unwrap(), "abc ab!");
    }
}
