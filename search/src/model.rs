//! multilingual-e5-small on candle: a 12-layer BERT encoder over XLM-R's vocabulary. The
//! linear layers run in one of two [`Kernel`]s: on CPUs with AVX-512 VNNI, the file's 4-bit
//! weights times 8-bit inputs ([`crate::kernels`]); elsewhere, candle's f32 matmul on weights
//! dequantized at load (about 90 MB). The word embeddings stay 4-bit (250k rows) and are
//! dequantized per token looked up.
//! e5 conventions: `passage: ` before documents, `query: ` before queries, mean pooling over
//! the tokens, L2 normalisation.

use std::path::Path;

use candle_core::{CpuStorage, CustomOp1, D, DType, Device, Layout, Shape, Tensor};
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

struct Layer {
    /// Query, key and value stacked: one pass over the input for all three.
    qkv: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    /// With GELU applied.
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
}

/// A linear layer in the encoder's kernel, optionally followed by GELU (erf form).
enum Dense {
    F32 { linear: Linear, gelu: bool },
    Int8 { matrix: kernels::Matrix, gelu: bool },
}

impl Dense {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Dense::F32 { linear, gelu } => {
                let y = linear.forward(x)?;
                if *gelu { y.gelu_erf() } else { Ok(y) }
            }
            Dense::Int8 { .. } => x.contiguous()?.apply_op1_no_bwd(self),
        }
    }
}

impl CustomOp1 for Dense {
    fn name(&self) -> &'static str {
        "int8-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let Dense::Int8 { matrix, gelu } = self else {
            candle_core::bail!("int8-linear applied with f32 weights");
        };
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("int8-linear takes contiguous f32 input");
        };
        let mut dims = layout.shape().dims().to_vec();
        match dims.last_mut() {
            Some(last) if *last == matrix.cols() => *last = matrix.rows(),
            _ => candle_core::bail!("int8-linear: input {dims:?} does not end in {} values", matrix.cols()),
        }
        Ok((CpuStorage::F32(matrix.forward(&data[start..end], *gelu)), Shape::from(dims)))
    }
}

/// Self-attention over the stacked query, key and value projection of a padded batch
/// ([`kernels::attention`]), for the int8 kernel: one pass, padding skipped.
struct Attention {
    lens: Vec<usize>,
    heads: usize,
    head_dim: usize,
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("attention takes a contiguous f32 input");
        };
        let hidden = self.heads * self.head_dim;
        let &[texts, seq, width] = layout.shape().dims() else {
            candle_core::bail!("attention takes (texts, tokens, 3 x hidden), not {:?}", layout.shape());
        };
        if texts != self.lens.len() || width != 3 * hidden || self.lens.iter().any(|&len| len > seq) {
            candle_core::bail!(
                "attention: {:?} does not fit lengths {:?} of width {hidden}",
                layout.shape(),
                self.lens
            );
        }
        let context = kernels::attention(&data[start..end], &self.lens, seq, self.heads, self.head_dim);
        Ok((CpuStorage::F32(context), Shape::from((texts, seq, hidden))))
    }
}

/// The sentence encoder. Immutable after load: share it behind an `Arc`.
pub struct Encoder {
    dims: Dims,
    kernel: Kernel,
    tokenizer: Tokenizer,
    /// The word embeddings, still Q4_0: `vocab_rows` rows of `hidden / 32` blocks.
    words: Vec<u8>,
    positions: Tensor,
    token_type: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    device: Device,
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
        let device = Device::Cpu;
        let vector = |name: &str, len: usize| -> Result<Tensor, ModelError> {
            Ok(Tensor::from_vec(file.f32s(name, len)?, len, &device)?)
        };
        let norm = |prefix: &str| -> Result<LayerNorm, ModelError> {
            Ok(LayerNorm::new(
                vector(&format!("{prefix}.w"), d.hidden)?,
                vector(&format!("{prefix}.b"), d.hidden)?,
                d.eps,
            ))
        };
        // The named layers stacked (same inputs), each `rows` outputs by `cols` inputs.
        let dense = |prefixes: &[String], rows: usize, cols: usize, gelu: bool| -> Result<Dense, ModelError> {
            let mut blocks = Vec::new();
            let mut bias = Vec::new();
            for prefix in prefixes {
                // Checked against the file before anything is allocated for it.
                blocks.extend_from_slice(file.q4(&format!("{prefix}.w"), rows, cols)?);
                bias.extend(file.f32s(&format!("{prefix}.b"), rows)?);
            }
            let rows = rows * prefixes.len();
            Ok(match kernel {
                Kernel::Int8 => Dense::Int8 { matrix: kernels::Matrix::from_q4(&blocks, rows, cols, bias)?, gelu },
                Kernel::F32 => {
                    let mut weights = vec![0.0; rows * cols];
                    format::dequantize(&blocks, &mut weights);
                    let weight = Tensor::from_vec(weights, (rows, cols), &device)?;
                    let bias = Tensor::from_vec(bias, rows, &device)?;
                    Dense::F32 { linear: Linear::new(weight, Some(bias)), gelu }
                }
            })
        };
        let mut layers = Vec::with_capacity(d.layers);
        for l in 0..d.layers {
            let p = |s: &str| vec![format!("l{l}.{s}")];
            let qkv: Vec<String> = ["q", "k", "v"].iter().map(|s| format!("l{l}.{s}")).collect();
            layers.push(Layer {
                qkv: dense(&qkv, d.hidden, d.hidden, false)?,
                attention_out: dense(&p("ao"), d.hidden, d.hidden, false)?,
                attention_norm: norm(&format!("l{l}.aln"))?,
                intermediate: dense(&p("fi"), d.feed_forward, d.hidden, true)?,
                output: dense(&p("fo"), d.hidden, d.feed_forward, false)?,
                output_norm: norm(&format!("l{l}.oln"))?,
            });
        }
        let positions =
            Tensor::from_vec(file.f32s("emb.pos", d.max_positions * d.hidden)?, (d.max_positions, d.hidden), &device)?;
        // Every text is one segment: token type 0.
        let token_type =
            Tensor::from_vec(file.f32s("emb.type", d.token_types * d.hidden)?, (d.token_types, d.hidden), &device)?
                .get(0)?;
        let words = file.q4("emb.word", d.vocab_rows, d.hidden)?.to_vec();
        let embedding_norm = norm("emb.ln")?;
        let tokenizer = Tokenizer::new(file.vocab)?;
        let fingerprint = format!("e5:{}", blake3::hash(bytes).to_hex());
        let encoder = Encoder {
            dims: d,
            kernel,
            tokenizer,
            words,
            positions,
            token_type,
            embedding_norm,
            layers,
            device,
            fingerprint,
        };
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
        self.kernel
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
        // Similar lengths together: less padding computed and thrown away.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| tokenized[i].len());
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(BATCH) {
            let batch: Vec<&[u32]> = chunk.iter().map(|&i| tokenized[i].as_slice()).collect();
            for (&i, vector) in chunk.iter().zip(self.forward(&batch)?) {
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

    fn forward(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        let h = self.dims.hidden;
        let (n, len) = (batch.len(), batch.iter().map(|ids| ids.len()).max().unwrap_or(0));
        // Padded positions embed the pad row; the mask keeps them out of attention and pooling.
        let mut words = vec![0.0f32; n * len * h];
        let mut mask = vec![0.0f32; n * len];
        let row_bytes = h / BLOCK * BLOCK_BYTES;
        for (b, ids) in batch.iter().enumerate() {
            for (t, &id) in ids.iter().enumerate() {
                let from = id as usize * row_bytes;
                let row = self.words.get(from..from + row_bytes).ok_or_else(|| {
                    ModelError::Format(FormatError::Invalid(format!("token id {id} has no embedding row")))
                })?;
                format::dequantize(row, &mut words[(b * len + t) * h..(b * len + t + 1) * h]);
                mask[b * len + t] = 1.0;
            }
        }
        let words = Tensor::from_vec(words, (n, len, h), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
        let positions = self.positions.narrow(0, 0, len)?;
        let x = words.broadcast_add(&positions)?.broadcast_add(&self.token_type)?;
        let mut x = self.embedding_norm.forward(&x)?;

        // Additive attention bias: 0 for real tokens, a large negative for padding.
        let bias = ((mask.clone() - 1.0)? * 1e9)?.reshape((n, 1, 1, len))?;
        let (heads, head_dim) = (self.dims.heads, h / self.dims.heads);
        let scale = 1.0 / (head_dim as f64).sqrt();
        let split = |t: Tensor| t.reshape((n, len, heads, head_dim))?.transpose(1, 2)?.contiguous();
        let attention = Attention { lens: batch.iter().map(|ids| ids.len()).collect(), heads, head_dim };
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?;
            let context = match self.kernel {
                Kernel::Int8 => qkv.contiguous()?.apply_op1_no_bwd(&attention)?,
                Kernel::F32 => {
                    let q = split(qkv.narrow(2, 0, h)?)?;
                    let k = split(qkv.narrow(2, h, h)?)?;
                    let v = split(qkv.narrow(2, 2 * h, h)?)?;
                    let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&bias)?;
                    let probs = candle_nn::ops::softmax_last_dim(&scores)?;
                    probs.matmul(&v)?.transpose(1, 2)?.reshape((n, len, h))?
                }
            };
            x = layer.attention_norm.forward(&(x + layer.attention_out.forward(&context)?)?)?;
            let mid = layer.intermediate.forward(&x)?;
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
