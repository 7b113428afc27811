//! XLM-R's SentencePiece tokenization: the model file's per-code-point normalisation, runs of
//! spaces collapsed, the metaspace marker, then a `tokenizers` Unigram model (Viterbi over the
//! file's pieces and scores) over the whole normalised text, as `tok_content()` in e5.c does.

use tokenizers::Model;
use tokenizers::models::unigram::Unigram;

use crate::format::Vocab;

/// SentencePiece's word-boundary marker, U+2581.
const METASPACE: char = '\u{2581}';

#[derive(Debug, thiserror::Error)]
#[error("tokenizer: {0}")]
pub struct TokenizeError(String);

/// Text to token ids.
pub struct Tokenizer {
    unigram: Unigram,
    normalize: std::collections::HashMap<char, Vec<char>>,
    pub bos: u32,
    pub eos: u32,
    unk: u32,
}

impl Tokenizer {
    pub fn new(vocab: Vocab) -> Result<Tokenizer, TokenizeError> {
        let unk = usize::try_from(vocab.unk).map_err(|e| TokenizeError(e.to_string()))?;
        // No byte fallback: XLM-R maps an unknown character to <unk>, as e5.c does.
        let unigram = Unigram::from(vocab.pieces, Some(unk), false).map_err(|e| TokenizeError(e.to_string()))?;
        Ok(Tokenizer { unigram, normalize: vocab.normalize, bos: vocab.bos, eos: vocab.eos, unk: vocab.unk })
    }

    /// The content ids of `text` (without `<s>` and `</s>`), at most `max` of them (the head).
    pub fn ids(&self, text: &str, max: usize) -> Result<Vec<u32>, TokenizeError> {
        let normalized = self.normalized(text);
        let tokens = self.unigram.tokenize(&normalized).map_err(|e| TokenizeError(e.to_string()))?;
        // `tokenizers` fuses a run of unknown characters into one <unk>; SentencePiece (and
        // e5.c) give each its own, which is what the model was trained on.
        let mut ids = Vec::with_capacity(tokens.len());
        for token in tokens {
            if token.id == self.unk {
                ids.extend(std::iter::repeat_n(self.unk, token.value.chars().count().max(1)));
            } else {
                ids.push(token.id);
            }
        }
        ids.truncate(max);
        Ok(ids)
    }

    /// The text as the model saw it in training: mapped, spaces collapsed, metaspaced.
    fn normalized(&self, text: &str) -> String {
        let mut mapped: Vec<char> = Vec::with_capacity(text.len());
        for c in text.chars() {
            let out = self.normalize.get(&c).map_or(std::slice::from_ref(&c), Vec::as_slice);
            for &m in out {
                // A run of spaces counts as one.
                if !(m == ' ' && mapped.last() == Some(&' ')) {
                    mapped.push(m);
                }
            }
        }
        let mut out = String::with_capacity(mapped.len() * 2 + 3);
        if mapped.first() != Some(&' ') {
            out.push(METASPACE);
        }
        out.extend(mapped.into_iter().map(|c| if c == ' ' { METASPACE } else { c }));
        out
    }
}
