//! multilingual-e5-small: a 12-layer BERT encoder over XLM-R's vocabulary, in one of two
//! [`Kernel`]s. On CPUs with AVX-512 VNNI, the file's 4-bit weights (requantized to 8 bits)
//! times 8-bit inputs ([`crate::kernels`]), over the batch's tokens laid end to end in plain
//! vectors; elsewhere, candle's f32 tensors on weights dequantized at load (about 90 MB), over
//! a padded batch. The word embeddings stay 4-bit (250k rows) and are dequantized per token
//! looked up.
//! e5 conventions: `passage: ` before documents, `query: ` before queries, mean pooling over
//! the tokens, L2 normalisation.

use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{LayerNorm, Linear, Module};

use crate::format::{self, BLOCK, BLOCK_BYTES, Dims, FormatError, ModelFile};
use crate::kernels;
use crate::tokenize::{TokenizeError, Tokenizer};

/// Why the model cannot load or embed.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read model {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error("tensor computation failed: {0}")]
    Compute(#[from] candle_core::Error),
    #[error("the int8 kernel needs AVX-512 VNNI, which this CPU does not have")]
    Unsupported,
}

/// How the encoder's linear layers multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// candle's f32 matmul on weights dequantized at load: any CPU.
    F32,
    /// The file's 4-bit weights times inputs quantized to 8 bits per 32 values, on AVX-512
    /// VNNI: several times faster; its vectors match f32's to a cosine of about 0.999.
    Int8,
}

impl Kernel {
    /// Int8 where this CPU has it, else f32.
    pub fn best() -> Kernel {
        if kernels::available() { Kernel::Int8 } else { Kernel::F32 }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kernel::F32 => "f32",
            Kernel::Int8 => "int8 (AVX-512 VNNI)",
        }
    }
}

/// Whether a text is a document to find or a query to find it with (e5's prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Passage,
    Query,
}

impl Role {
    fn prefix(self) -> &'static str {
        match self {
            Role::Passage => "passage: ",
            Role::Query => "query: ",
        }
    }
}

/// Texts embedded in one forward pass at most; longer lists are split (bounded memory).
const BATCH: usize = 32;

/// One encoder layer, with `D` its linear layers and `N` its layer norms in a kernel's form.
struct Layer<D, N> {
    /// Query, key and value stacked: one pass over the input for all three.
    qkv: D,
    attention_out: D,
    attention_norm: N,
    /// Followed by GELU.
    intermediate: D,
    output: D,
    output_norm: N,
}

/// The weights after the word embeddings, with `V` a vector, `D` a linear layer and `N` a
/// layer norm in a kernel's form.
struct Weights<V, D, N> {
    /// `max_positions` rows of `hidden`.
    positions: V,
    /// Token type 0's row: every text is one segment.
    token_type: V,
    embedding_norm: N,
    layers: Vec<Layer<D, N>>,
}

/// The weights as each kernel runs them.
enum Body {
    /// Tensors for candle's matmul, attention and norms.
    F32(Weights<Tensor, Linear, LayerNorm>),
    /// Plain vectors for [`kernels`] and this module's loops: the texts' tokens end to end,
    /// no padding and no tensors.
    Int8(Weights<Vec<f32>, kernels::Matrix, Norm>),
}

impl<V, D, N> Weights<V, D, N> {
    /// Reads the weights from `file` into a kernel's form: `vector` takes values and their
    /// shape, `dense` a linear layer's Q4_0 blocks, its bias and its size (outputs, inputs),
    /// `norm` a layer norm's weight and bias.
    fn load(
        file: &ModelFile,
        vector: impl Fn(Vec<f32>, &[usize]) -> Result<V, ModelError>,
        dense: impl Fn(&[u8], Vec<f32>, usize, usize) -> Result<D, ModelError>,
        norm: impl Fn(Vec<f32>, Vec<f32>) -> Result<N, ModelError>,
    ) -> Result<Self, ModelError> {
        let d = file.dims;
        let read_norm = |prefix: &str| {
            norm(file.f32s(&format!("{prefix}.w"), d.hidden)?, file.f32s(&format!("{prefix}.b"), d.hidden)?)
        };
        // The named layers stacked (same inputs), each `rows` outputs by `cols` inputs.
        let read_dense = |names: &[String], rows: usize, cols: usize| -> Result<D, ModelError> {
            let mut blocks = Vec::new();
            let mut bias = Vec::new();
            for name in names {
                // Checked against the file before anything is allocated for it.
                blocks.extend_from_slice(file.q4(&format!("{name}.w"), rows, cols)?);
                bias.extend(file.f32s(&format!("{name}.b"), rows)?);
            }
            dense(&blocks, bias, rows * names.len(), cols)
        };
        let mut layers = Vec::with_capacity(d.layers);
        for l in 0..d.layers {
            let one = |s: &str| vec![format!("l{l}.{s}")];
            let qkv: Vec<String> = ["q", "k", "v"].iter().map(|s| format!("l{l}.{s}")).collect();
            layers.push(Layer {
                qkv: read_dense(&qkv, d.hidden, d.hidden)?,
                attention_out: read_dense(&one("ao"), d.hidden, d.hidden)?,
                attention_norm: read_norm(&format!("l{l}.aln"))?,
                intermediate: read_dense(&one("fi"), d.feed_forward, d.hidden)?,
                output: read_dense(&one("fo"), d.hidden, d.feed_forward)?,
                output_norm: read_norm(&format!("l{l}.oln"))?,
            });
        }
        let positions = vector(file.f32s("emb.pos", d.max_positions * d.hidden)?, &[d.max_positions, d.hidden])?;
        let mut token_type = file.f32s("emb.type", d.token_types * d.hidden)?;
        token_type.truncate(d.hidden);
        let token_type = vector(token_type, &[d.hidden])?;
        Ok(Weights { positions, token_type, embedding_norm: read_norm("emb.ln")?, layers })
    }
}

/// A layer norm over rows of `hidden` values, in plain loops (the int8 path's).
struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl Norm {
    /// Normalises every row of `x` in place.
    fn apply(&self, x: &mut [f32]) {
        for row in x.chunks_exact_mut(self.weight.len()) {
            self.normalise(row);
        }
    }

    /// Adds `residual` to `x`, then normalises every row of `x` in place.
    fn add_apply(&self, x: &mut [f32], residual: &[f32]) {
        let width = self.weight.len();
        for (row, residual) in x.chunks_exact_mut(width).zip(residual.chunks_exact(width)) {
            row.iter_mut().zip(residual).for_each(|(v, r)| *v += r);
            self.normalise(row);
        }
    }

    /// Mean 0 and variance 1 (computed from the centred values: no cancellation), then the
    /// weight and bias.
    fn normalise(&self, row: &mut [f32]) {
        let n = row.len() as f32;
        let mean = sum(row) / n;
        row.iter_mut().for_each(|v| *v -= mean);
        let variance = sum_squares(row) / n;
        let inverse = 1.0 / (variance + self.eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
            // Not `mul_add`: outside the kernels' target features it is a libm call.
            *v = *v * inverse * w + b;
        }
    }
}

/// Sums in 16 lanes, so the loop vectorizes (a plain float sum may not be reordered).
fn sum(values: &[f32]) -> f32 {
    lanes(values, |v| v)
}

fn sum_squares(values: &[f32]) -> f32 {
    lanes(values, |v| v * v)
}

#[inline(always)]
fn lanes(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = values.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (a, &v) in acc.iter_mut().zip(chunk) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The sentence encoder. Immutable after load: share it behind an `Arc`.
pub struct Encoder {
    dims: Dims,
    tokenizer: Tokenizer,
    /// The word embeddings, still Q4_0: `vocab_rows` rows of `hidden / 32` blocks.
    words: Vec<u8>,
    body: Body,
    /// BLAKE3 of the model file: a vector store records which model built its vectors.
    fingerprint: String,
}

impl Encoder {
    /// Loads the packed model file (`e5-small-q4.bin`) for this CPU's fastest kernel.
    pub fn load(path: &Path) -> Result<Encoder, ModelError> {
        Encoder::load_with(path, Kernel::best())
    }

    pub fn load_with(path: &Path, kernel: Kernel) -> Result<Encoder, ModelError> {
        let bytes =
            std::fs::read(path).map_err(|source| ModelError::Read { path: path.display().to_string(), source })?;
        Encoder::from_bytes_with(&bytes, kernel)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Encoder, ModelError> {
        Encoder::from_bytes_with(bytes, Kernel::best())
    }

    pub fn from_bytes_with(bytes: &[u8], kernel: Kernel) -> Result<Encoder, ModelError> {
        if kernel == Kernel::Int8 && !kernels::available() {
            return Err(ModelError::Unsupported);
        }
        let file = ModelFile::parse(bytes)?;
        let d = file.dims;
        let body = match kernel {
            Kernel::Int8 => Body::Int8(Weights::load(
                &file,
                |values, _| Ok(values),
                |blocks, bias, rows, cols| Ok(kernels::Matrix::from_q4(blocks, rows, cols, bias)?),
                |weight, bias| Ok(Norm { weight, bias, eps: d.eps as f32 }),
            )?),
            Kernel::F32 => Body::F32(Weights::load(
                &file,
                |values, shape| Ok(Tensor::from_vec(values, shape, &Device::Cpu)?),
                |blocks, bias, rows, cols| {
                    let mut weights = vec![0.0; rows * cols];
                    format::dequantize(blocks, &mut weights);
                    let weight = Tensor::from_vec(weights, (rows, cols), &Device::Cpu)?;
                    Ok(Linear::new(weight, Some(Tensor::from_vec(bias, rows, &Device::Cpu)?)))
                },
                |weight, bias| {
                    let (weight, bias) = (Tensor::new(weight, &Device::Cpu)?, Tensor::new(bias, &Device::Cpu)?);
                    Ok(LayerNorm::new(weight, bias, d.eps))
                },
            )?),
        };
        let words = file.q4("emb.word", d.vocab_rows, d.hidden)?.to_vec();
        let tokenizer = Tokenizer::new(file.vocab)?;
        let fingerprint = format!("e5:{}", blake3::hash(bytes).to_hex());
        let encoder = Encoder { dims: d, tokenizer, words, body, fingerprint };
        // Fail at load, not on the first lot, if the weights cannot run.
        encoder.embed(Role::Query, &["model check"])?;
        Ok(encoder)
    }

    /// Identifies the model file (its BLAKE3).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The kernel the linear layers run in.
    pub fn kernel(&self) -> Kernel {
        match self.body {
            Body::F32(_) => Kernel::F32,
            Body::Int8(_) => Kernel::Int8,
        }
    }

    /// The embedding size (384).
    pub fn dim(&self) -> usize {
        self.dims.hidden
    }

    /// One unit vector per text. Texts longer than the model's 512 positions are cut to their
    /// head (lot texts are far shorter; the title and artist come first).
    pub fn embed(&self, role: Role, texts: &[&str]) -> Result<Vec<Vec<f32>>, ModelError> {
        let max = self.dims.max_positions - 2;
        let mut tokenized = Vec::with_capacity(texts.len());
        for text in texts {
            let mut ids = Vec::with_capacity(max);
            ids.push(self.tokenizer.bos);
            ids.extend(self.tokenizer.ids(&format!("{}{text}", role.prefix()), max)?);
            ids.push(self.tokenizer.eos);
            tokenized.push(ids);
        }
        // Similar lengths together: less padding computed and thrown away (f32), shorter
        // attention buffers (int8).
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| tokenized[i].len());
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(BATCH) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| tokenized[i].as_slice()).collect();
            let vectors = match &self.body {
                Body::F32(weights) => self.forward_f32(weights, &batch)?,
                Body::Int8(weights) => self.forward_int8(weights, &batch)?,
            };
            for (&i, vector) in chunk.iter().zip(vectors) {
                out[i] = vector;
            }
        }
        Ok(out)
    }

    /// The tokens the model reads for `text`, `<s>` and `</s>` included.
    pub fn token_count(&self, role: Role, text: &str) -> Result<usize, ModelError> {
        let max = self.dims.max_positions - 2;
        Ok(self.tokenizer.ids(&format!("{}{text}", role.prefix()), max)?.len() + 2)
    }

    /// One query vector.
    pub fn embed_query(&self, text: &str) -> Result<Vec<f32>, ModelError> {
        Ok(self.embed(Role::Query, &[text])?.pop().unwrap_or_default())
    }

    /// Token `id`'s word embedding into `out` (`hidden` values).
    fn word(&self, id: u32, out: &mut [f32]) -> Result<(), ModelError> {
        let row_bytes = self.dims.hidden / BLOCK * BLOCK_BYTES;
        let from = id as usize * row_bytes;
        let row = self
            .words
            .get(from..from + row_bytes)
            .ok_or_else(|| ModelError::Format(FormatError::Invalid(format!("token id {id} has no embedding row"))))?;
        format::dequantize(row, out);
        Ok(())
    }

    /// The int8 path: the batch's tokens end to end in one matrix, through the kernels.
    fn forward_int8(
        &self,
        w: &Weights<Vec<f32>, kernels::Matrix, Norm>,
        batch: &[&[u32]],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let h = self.dims.hidden;
        let lens: Vec<usize> = batch.iter().map(|ids| ids.len()).collect();
        if lens.iter().any(|&len| len > self.dims.max_positions) {
            // `embed` cuts texts to fit: a longer one here would shift every text after it.
            return Err(ModelError::Format(FormatError::Invalid("a text longer than the model's positions".into())));
        }
        let mut x = vec![0.0f32; lens.iter().sum::<usize>() * h];
        let mut rows = x.chunks_exact_mut(h);
        for ids in batch {
            for ((&id, row), position) in ids.iter().zip(rows.by_ref()).zip(w.positions.chunks_exact(h)) {
                self.word(id, row)?;
                for ((v, p), t) in row.iter_mut().zip(position).zip(&w.token_type) {
                    *v += p + t;
                }
            }
        }
        w.embedding_norm.apply(&mut x);

        let (heads, head_dim) = (self.dims.heads, h / self.dims.heads);
        // Reused across layers: one allocation each per batch.
        let (mut qkv, mut y, mut mid) = (Vec::new(), Vec::new(), Vec::new());
        for layer in &w.layers {
            layer.qkv.forward_into(&x, false, &mut qkv);
            let context = kernels::attention(&qkv, &lens, heads, head_dim);
            layer.attention_out.forward_into(&context, false, &mut y);
            layer.attention_norm.add_apply(&mut x, &y);
            layer.intermediate.forward_into(&x, true, &mut mid);
            layer.output.forward_into(&mid, false, &mut y);
            layer.output_norm.add_apply(&mut x, &y);
        }

        // Mean pooling then unit length: the sum over each text's tokens, scaled to unit
        // length (dividing by the count first would change nothing).
        let mut vectors = Vec::with_capacity(batch.len());
        let mut rows = x.chunks_exact(h);
        for &len in &lens {
            let mut sum = vec![0.0f32; h];
            for row in rows.by_ref().take(len) {
                sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
            }
            let norm = sum_squares(&sum).sqrt().max(1e-12);
            sum.iter_mut().for_each(|s| *s /= norm);
            vectors.push(sum);
        }
        Ok(vectors)
    }

    /// The f32 path: a padded batch through candle's tensors.
    fn forward_f32(
        &self,
        w: &Weights<Tensor, Linear, LayerNorm>,
        batch: &[&[u32]],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let h = self.dims.hidden;
        let device = Device::Cpu;
        let (n, len) = (batch.len(), batch.iter().map(|ids| ids.len()).max().unwrap_or(0));
        // Padded positions embed the pad row; the mask keeps them out of attention and pooling.
        let mut words = vec![0.0f32; n * len * h];
        let mut mask = vec![0.0f32; n * len];
        for (b, ids) in batch.iter().enumerate() {
            for (t, &id) in ids.iter().enumerate() {
                self.word(id, &mut words[(b * len + t) * h..(b * len + t + 1) * h])?;
                mask[b * len + t] = 1.0;
            }
        }
        let words = Tensor::from_vec(words, (n, len, h), &device)?;
        let mask = Tensor::from_vec(mask, (n, len), &device)?;
        let positions = w.positions.narrow(0, 0, len)?;
        let x = words.broadcast_add(&positions)?.broadcast_add(&w.token_type)?;
        let mut x = w.embedding_norm.forward(&x)?;

        // Additive attention bias: 0 for real tokens, a large negative for padding.
        let bias = ((mask.clone() - 1.0)? * 1e9)?.reshape((n, 1, 1, len))?;
        let (heads, head_dim) = (self.dims.heads, h / self.dims.heads);
        let scale = 1.0 / (head_dim as f64).sqrt();
        let split = |t: Tensor| t.reshape((n, len, heads, head_dim))?.transpose(1, 2)?.contiguous();
        for layer in &w.layers {
            let qkv = layer.qkv.forward(&x)?;
            let q = split(qkv.narrow(2, 0, h)?)?;
            let k = split(qkv.narrow(2, h, h)?)?;
            let v = split(qkv.narrow(2, 2 * h, h)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((n, len, h))?;
            x = layer.attention_norm.forward(&(x + layer.attention_out.forward(&context)?)?)?;
            let mid = layer.intermediate.forward(&x)?.gelu_erf()?;
            x = layer.output_norm.forward(&(x + layer.output.forward(&mid)?)?)?;
        }

        // Mean over the real tokens, then unit length.
        let mask = mask.unsqueeze(2)?;
        let summed = x.broadcast_mul(&mask)?.sum(1)?;
        let pooled = summed.broadcast_div(&mask.sum(1)?)?;
        let norm = pooled.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(pooled.broadcast_div(&norm)?.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }
}

/// Cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
