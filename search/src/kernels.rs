//! The encoder's hot loops for CPUs with AVX-512 VNNI: its linear layers in integer
//! arithmetic ([`Matrix`]) and its attention ([`attention`]).
//!
//! The model file's weights (4-bit values in blocks of 32, each block with an fp16 scale) are
//! requantized at load to 8 bits per output row with one f32 scale per row: finer steps than
//! the file's for all but a row's smallest blocks, and no per-block weight scale left to apply
//! in the inner loop. Each input row is quantized per 32 values to i8 with an f32 scale (the
//! scheme llama.cpp calls Q8_0). A block's product is then an exact integer sum, scaled once
//! by the input block's scale; `vpdpbusd` does 64 of those byte products per instruction,
//! several times cheaper than the f32 matmul it replaces (BENCHMARKS.md, search).
//!
//! [`reference`] computes the same float operations in the same order without SIMD; the tests
//! hold the kernel to it bit for bit, and it is the answer on any other CPU (the encoder
//! prefers candle's f32 matmul there, see `model::Kernel`). Attention runs over the batch's
//! texts laid end to end (no padding), in SIMD with plain loops as its reference.
//!
//! This is the one module in Gavel with `unsafe`: unaligned SIMD loads and stores on slices
//! whose length is checked just before, and the call into the kernel after the CPU said it has
//! the features.
#![allow(unsafe_code)]

use crate::format::{BLOCK, BLOCK_BYTES, FormatError};

/// Outputs per SIMD lane group: one 512-bit register of i32 or f32.
const LANES: usize = 16;
/// Outputs per kernel tile: two lane groups.
const TILE: usize = 2 * LANES;

/// Whether this CPU runs the int8 kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A weight matrix (`rows` outputs by `cols` inputs) in 8 bits per weight, and its bias, laid
/// out for the kernel: outputs in groups of 16, and within a group, for every 4 inputs, the 16
/// outputs' 4 values side by side (one 64-byte load feeds one `vpdpbusd`).
pub struct Matrix {
    rows: usize,
    cols: usize,
    /// `rows` rounded up to whole tiles; the padding has zero scales, so it adds nothing.
    padded: usize,
    /// The stored values: the weight is `scale * (value - 128)`, with `value` in 1..=255
    /// (unsigned, as `vpdpbusd` takes one operand): `[group][cols / 4][16][4]`.
    values: Vec<u8>,
    /// One scale per row, `padded` long.
    scales: Vec<f32>,
    /// `padded` long.
    bias: Vec<f32>,
}

impl Matrix {
    /// From the file's Q4_0 blocks, row after row (`rows * cols / 32` blocks of 18 bytes).
    pub fn from_q4(blocks: &[u8], rows: usize, cols: usize, bias: Vec<f32>) -> Result<Matrix, FormatError> {
        if cols == 0 || !cols.is_multiple_of(BLOCK) || blocks.len() != rows * cols / BLOCK * BLOCK_BYTES {
            return Err(FormatError::Invalid(format!("a {rows}x{cols} Q4_0 matrix cannot be {} bytes", blocks.len())));
        }
        if bias.len() != rows {
            return Err(FormatError::Invalid(format!("{} biases for {rows} rows", bias.len())));
        }
        let padded = rows.div_ceil(TILE) * TILE;
        let mut values = vec![128u8; padded * cols];
        let mut scales = vec![0.0f32; padded];
        let mut row_weights = vec![0.0f32; cols];
        for (row, row_blocks) in blocks.chunks_exact(cols / BLOCK * BLOCK_BYTES).enumerate() {
            crate::format::dequantize(row_blocks, &mut row_weights);
            let max = row_weights.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = max / 127.0;
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let (group, lane) = (row / LANES, row % LANES);
            for (col, weight) in row_weights.iter().enumerate() {
                let q = (weight * inverse).round_ties_even().clamp(-127.0, 127.0) as i32;
                values[((group * cols / 4 + col / 4) * LANES + lane) * 4 + col % 4] = (q + 128) as u8;
            }
            scales[row] = scale;
        }
        let mut bias = bias;
        bias.resize(padded, 0.0);
        Ok(Matrix { rows, cols, padded, values, scales, bias })
    }

    /// [`Matrix::forward_into`] into a new vector.
    #[cfg(test)]
    pub fn forward(&self, x: &[f32], gelu: bool) -> Vec<f32> {
        let mut out = Vec::new();
        self.forward_into(x, gelu, &mut out);
        out
    }

    /// `x` (`x.len() / cols` rows of `cols`) times the transposed weights plus the bias, into
    /// `out`: `x.len() / cols` rows of `rows`. GELU (erf form) applied when `gelu`. `out`'s
    /// allocation is reused (the encoder calls this 4 times a layer, 48 times a batch: fresh
    /// buffers cost page faults).
    pub fn forward_into(&self, x: &[f32], gelu: bool, out: &mut Vec<f32>) {
        out.clear();
        out.resize(x.len() / self.cols * self.rows, 0.0);
        #[cfg(target_arch = "x86_64")]
        if available() {
            // SAFETY: the CPU has every feature the kernel is compiled for (checked above).
            return unsafe { avx512::forward(self, x, gelu, out) };
        }
        reference(self, &Quantized::new(x, self.cols), out);
        if gelu {
            gelu_all(out);
        }
    }
}

/// Input rows quantized per block of 32: `value * scale` approximates the input.
struct Quantized {
    rows: usize,
    cols: usize,
    /// The i8 values four to a little-endian word: one word is what `vpdpbusd` broadcasts.
    words: Vec<i32>,
    /// `[row][cols / 32]`.
    scales: Vec<f32>,
    /// Per row, what the weights' stored offset (+128) adds to the scaled sum of its blocks'
    /// products: `sum over blocks of 128 * block sum * block scale`, subtracted at the end.
    offsets: Vec<f32>,
}

impl Quantized {
    fn new(x: &[f32], cols: usize) -> Quantized {
        Quantized::build(x, cols, |block, out| {
            let max = block.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = max / 127.0;
            let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
            let mut sum = 0i32;
            for (word, four) in out.iter_mut().zip(block.chunks_exact(4)) {
                // `as` saturates, and |v * inverse| <= 127 up to rounding.
                let q = [0, 1, 2, 3].map(|i| (four[i] * inverse).round_ties_even() as i8);
                sum += q.iter().map(|&v| i32::from(v)).sum::<i32>();
                *word = i32::from_le_bytes(q.map(|v| v as u8));
            }
            (scale, sum)
        })
    }

    /// The input cut into blocks of 32, each quantized by `block` into its 8 words, which
    /// answers the block's scale and the sum of its values. Inlined into the caller, so that
    /// the kernel's block function is compiled with the kernel's target features.
    #[inline(always)]
    fn build(x: &[f32], cols: usize, mut block: impl FnMut(&[f32], &mut [i32]) -> (f32, i32)) -> Quantized {
        let rows = x.len() / cols;
        let blocks = rows * cols / BLOCK;
        let mut words = vec![0i32; rows * cols / 4];
        let mut scales = Vec::with_capacity(blocks);
        let mut sums = Vec::with_capacity(blocks);
        for (values, out) in x[..rows * cols].chunks_exact(BLOCK).zip(words.chunks_exact_mut(BLOCK / 4)) {
            let (scale, sum) = block(values, out);
            scales.push(scale);
            sums.push(sum);
        }
        let offsets = offsets(&scales, &sums, cols / BLOCK);
        Quantized { rows, cols, words, scales, offsets }
    }

    /// The `col`th value of row `row`.
    fn value(&self, row: usize, col: usize) -> i8 {
        self.words[(row * self.cols + col) / 4].to_le_bytes()[col % 4] as i8
    }
}

/// [`Quantized::offsets`] from the block scales and sums (shared by both paths, so both get
/// the same floats).
#[inline(always)]
fn offsets(scales: &[f32], sums: &[i32], per_row: usize) -> Vec<f32> {
    scales
        .chunks_exact(per_row)
        .zip(sums.chunks_exact(per_row))
        .map(|(scales, sums)| scales.iter().zip(sums).fold(0.0f32, |c, (s, sum)| ((128 * sum) as f32).mul_add(*s, c)))
        .collect()
}

/// The kernel's arithmetic in plain Rust, operation for operation: per output, over blocks in
/// order, `acc = dot as f32 * input_scale + acc` (fused; the integer `dot` is exact), then
/// `(acc - offset) * weight_scale + bias` (fused).
fn reference(w: &Matrix, x: &Quantized, out: &mut [f32]) {
    let per_row = w.cols / BLOCK;
    for m in 0..x.rows {
        for n in 0..w.rows {
            let (group, lane) = (n / LANES, n % LANES);
            let mut acc = 0.0f32;
            for b in 0..per_row {
                let mut dot = 0i32;
                for j in 0..BLOCK {
                    let col = b * BLOCK + j;
                    let weight = w.values[((group * w.cols / 4 + col / 4) * LANES + lane) * 4 + col % 4];
                    dot += i32::from(weight) * i32::from(x.value(m, col));
                }
                acc = (dot as f32).mul_add(x.scales[m * per_row + b], acc);
            }
            out[m * w.rows + n] = (acc - x.offsets[m]).mul_add(w.scales[n], w.bias[n]);
        }
    }
}

/// Self-attention of one layer for a batch of texts laid end to end: `qkv` is the stacked
/// query, key and value projection (one row of `3 * heads * head_dim` per token, the texts'
/// tokens one after another), `lens` each text's token count. Returns the context, one row of
/// `heads * head_dim` per token: its softmax-weighted sum of its own text's values (scores
/// scaled by `1 / sqrt(head_dim)`). No padding: nothing is computed for tokens that are not
/// there.
///
/// Panics if `qkv` holds fewer rows than `lens` adds up to.
pub fn attention(qkv: &[f32], lens: &[usize], heads: usize, head_dim: usize) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    if available() {
        // SAFETY: the CPU has every feature the kernel is compiled for (checked above).
        return unsafe { avx512::attention(qkv, lens, heads, head_dim) };
    }
    attention_loops(qkv, lens, heads, head_dim)
}

/// [`attention`] in plain loops: the reference the SIMD code is tested against, and the path
/// for heads it does not take.
fn attention_loops(qkv: &[f32], lens: &[usize], heads: usize, head_dim: usize) -> Vec<f32> {
    let hidden = heads * head_dim;
    let stride = 3 * hidden;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut out = vec![0.0f32; lens.iter().sum::<usize>() * hidden];
    let mut scores = Vec::new();
    let mut first = 0;
    for &len in lens {
        let rows = &qkv[first * stride..(first + len) * stride];
        let text_out = &mut out[first * hidden..(first + len) * hidden];
        first += len;
        for head in 0..heads {
            let (q_at, k_at, v_at) = (head * head_dim, hidden + head * head_dim, 2 * hidden + head * head_dim);
            for (i, row) in rows.chunks_exact(stride).enumerate() {
                let query = &row[q_at..][..head_dim];
                scores.clear();
                scores
                    .extend(rows.chunks_exact(stride).map(|key| {
                        query.iter().zip(&key[k_at..][..head_dim]).map(|(q, k)| q * k).sum::<f32>() * scale
                    }));
                let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                scores.iter_mut().for_each(|s| *s = exp(*s - max));
                let inverse = 1.0 / scores.iter().sum::<f32>();
                let context = &mut text_out[i * hidden + q_at..][..head_dim];
                for (p, value) in scores.iter().zip(rows.chunks_exact(stride)) {
                    context.iter_mut().zip(&value[v_at..][..head_dim]).for_each(|(c, v)| *c += p * v);
                }
                context.iter_mut().for_each(|c| *c *= inverse);
            }
        }
    }
    out
}

/// e^x for the softmax, the method the SIMD attention uses 16 lanes at a time: x = n ln 2 + r
/// with |r| <= ln 2 / 2, e^r by its Taylor series to the 7th power (relative error below
/// 2e-7), times 2^n built in the exponent bits. Arguments are clamped to [-87, 88] (f32's
/// normal range): the softmax only asks for e^x with x <= 0, where e^-87 is as good as 0.
fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round_ties_even();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = EXP_TAYLOR.iter().rev().fold(0.0, |p, &c| p * r + c);
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// ln 2 in two parts: `n * LN2_HI` is exact for the n the softmax meets.
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// 1 / k! for k = 0..=7.
const EXP_TAYLOR: [f32; 8] = [1.0, 1.0, 0.5, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0, 1.0 / 5040.0];

/// GELU on every value (inlined like [`Quantized::build`], so the kernel's caller vectorizes it
/// for AVX-512).
#[inline(always)]
fn gelu_all(values: &mut [f32]) {
    values.iter_mut().for_each(|v| *v = gelu_erf(*v));
}

/// GELU, erf form: `0.5 x (1 + erf(x / sqrt 2))`.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf by Abramowitz and Stegun 7.1.28, |error| <= 3e-7: no `exp` and no branch, so loops
/// over it vectorize (libm's `erff`, which candle calls, was a tenth of the encoder's time).
#[inline(always)]
fn erf(x: f32) -> f32 {
    const A: [f32; 6] = [0.070_523_08, 0.042_282_01, 0.009_270_527, 0.000_152_014_3, 0.000_276_567_2, 0.000_043_063_8];
    let a = x.abs();
    let p = 1.0 + a * (A[0] + a * (A[1] + a * (A[2] + a * (A[3] + a * (A[4] + a * A[5])))));
    let p2 = p * p;
    let p4 = p2 * p2;
    let p8 = p4 * p4;
    (1.0 - 1.0 / (p8 * p8)).copysign(x)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{BLOCK, LANES, Matrix, Quantized, TILE, gelu_all};

    /// Rows of the input per tile: with two lane groups, 8 i32 and 8 f32 accumulators.
    const ROWS: usize = 4;
    /// Input rows swept against all of the weights before the next ones: they stay in L1.
    const CHUNK: usize = 32;

    /// [`Matrix::forward`] in AVX-512: the quantization in SIMD, the GELU loop the same scalar
    /// code compiled for AVX-512 (so the results are the reference path's).
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn forward(w: &Matrix, x: &[f32], gelu: bool, out: &mut [f32]) {
        product(w, &quantize(x, w.cols), out);
        if gelu {
            gelu_all(out);
        }
    }

    /// [`super::attention`] in AVX-512, head by head: the scores of 4 queries against 16 keys
    /// at a time (keys transposed, so one load serves the 4), a masked softmax 16 scores at a
    /// time, then the context of 4 queries, 32 of a head's dimensions at a time. Heads whose
    /// size is not a multiple of 32 take the plain loops.
    ///
    /// # Safety
    /// The CPU must have AVX-512 F, BW and VNNI.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn attention(qkv: &[f32], lens: &[usize], heads: usize, head_dim: usize) -> Vec<f32> {
        if head_dim == 0 || !head_dim.is_multiple_of(TILE) {
            return super::attention_loops(qkv, lens, heads, head_dim);
        }
        let hidden = heads * head_dim;
        let stride = 3 * hidden;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut out = vec![0.0f32; lens.iter().sum::<usize>() * hidden];
        let padded = lens.iter().max().map_or(0, |&len| len.div_ceil(LANES) * LANES);
        // `[dim][token]`, zeros past the text's end.
        let mut keys = vec![0.0f32; head_dim * padded];
        // `[query][key]`: e^(score - max), then zero past the text's end.
        let mut probs = vec![0.0f32; padded * padded];
        let mut inverses = vec![0.0f32; padded];
        let mut first = 0;
        for &len in lens {
            let rows = &qkv[first * stride..(first + len) * stride];
            let text_out = &mut out[first * hidden..(first + len) * hidden];
            first += len;
            let chunks = len.div_ceil(LANES);
            for head in 0..heads {
                let k_at = hidden + head * head_dim;
                keys.fill(0.0);
                for (t, row) in rows.chunks_exact(stride).enumerate() {
                    for (d, &k) in row[k_at..][..head_dim].iter().enumerate() {
                        keys[d * padded + t] = k;
                    }
                }
                let head = Head { rows, stride, hidden, head_dim, len, padded, q_at: head * head_dim };
                let mut i = 0;
                while i < len {
                    let r = (len - i).min(ROWS);
                    match r {
                        4 => head.scores::<4>(i, &keys, &mut probs),
                        3 => head.scores::<3>(i, &keys, &mut probs),
                        2 => head.scores::<2>(i, &keys, &mut probs),
                        _ => head.scores::<1>(i, &keys, &mut probs),
                    }
                    i += r;
                }
                for (row, inverse) in probs.chunks_exact_mut(padded).zip(inverses.iter_mut()).take(len) {
                    *inverse = softmax(&mut row[..chunks * LANES], len, scale);
                }
                let mut i = 0;
                while i < len {
                    let r = (len - i).min(ROWS);
                    match r {
                        4 => head.context::<4>(i, &probs, &inverses, text_out),
                        3 => head.context::<3>(i, &probs, &inverses, text_out),
                        2 => head.context::<2>(i, &probs, &inverses, text_out),
                        _ => head.context::<1>(i, &probs, &inverses, text_out),
                    }
                    i += r;
                }
            }
        }
        out
    }

    /// One query's raw scores (`len` real, then padding to whole chunks) to `e^(scale *
    /// (score - max))`, padding to zero; answers 1 / their sum.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn softmax(row: &mut [f32], len: usize, scale: f32) -> f32 {
        let mask = |chunk: usize| -> __mmask16 {
            let valid = len.saturating_sub(chunk * LANES).min(LANES);
            ((1u32 << valid) - 1) as __mmask16
        };
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        for (chunk, scores) in row.chunks_exact(LANES).enumerate() {
            max = _mm512_mask_max_ps(max, mask(chunk), max, load_f32s(scores));
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(max));
        let scale = _mm512_set1_ps(scale);
        let mut sum = _mm512_setzero_ps();
        for (chunk, scores) in row.chunks_exact_mut(LANES).enumerate() {
            let e = _mm512_maskz_mov_ps(mask(chunk), exp(_mm512_mul_ps(_mm512_sub_ps(load_f32s(scores), max), scale)));
            sum = _mm512_add_ps(sum, e);
            store_f32s(scores, e);
        }
        1.0 / _mm512_reduce_add_ps(sum)
    }

    /// [`super::exp`]'s method 16 lanes at a time (fused where it is not; the 2^n factor by
    /// `vscalefps`): within the same bound.
    #[target_feature(enable = "avx512f")]
    fn exp(x: __m512) -> __m512 {
        let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0)), _mm512_set1_ps(88.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r =
            _mm512_fnmadd_ps(n, _mm512_set1_ps(super::LN2_LO), _mm512_fnmadd_ps(n, _mm512_set1_ps(super::LN2_HI), x));
        let mut p = _mm512_set1_ps(super::EXP_TAYLOR[7]);
        for &c in super::EXP_TAYLOR[..7].iter().rev() {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }

    /// [`exp`] on 16 values, for the tests.
    #[cfg(test)]
    #[target_feature(enable = "avx512f")]
    pub(super) fn exp_lanes(x: &[f32; LANES]) -> [f32; LANES] {
        let mut out = [0.0; LANES];
        store_f32s(&mut out, exp(load_f32s(x)));
        out
    }

    /// One head of one text: where its queries, keys and values sit in the text's rows of the
    /// stacked projection, and the shape of the buffers its steps share.
    struct Head<'a> {
        /// The text's rows of the stacked projection.
        rows: &'a [f32],
        stride: usize,
        hidden: usize,
        head_dim: usize,
        /// The text's tokens.
        len: usize,
        /// `len` of the batch's longest text, rounded up to whole chunks of 16: the row length
        /// of the transposed keys and of the probabilities.
        padded: usize,
        /// The head's first column among the queries (and in the output rows).
        q_at: usize,
    }

    impl Head<'_> {
        /// Raw scores of queries `i..i + R` against all of the text's keys (`keys` transposed,
        /// in chunks of 16, the last padded with zero keys), into `probs`.
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        fn scores<const R: usize>(&self, i: usize, keys: &[f32], probs: &mut [f32]) {
            let queries: [&[f32]; R] =
                std::array::from_fn(|r| &self.rows[(i + r) * self.stride + self.q_at..][..self.head_dim]);
            for chunk in 0..self.len.div_ceil(LANES) {
                let mut acc = [_mm512_setzero_ps(); R];
                for d in 0..self.head_dim {
                    let k = load_f32s(&keys[d * self.padded + chunk * LANES..]);
                    for (acc, query) in acc.iter_mut().zip(&queries) {
                        *acc = _mm512_fmadd_ps(_mm512_set1_ps(query[d]), k, *acc);
                    }
                }
                for (r, acc) in acc.into_iter().enumerate() {
                    store_f32s(&mut probs[(i + r) * self.padded + chunk * LANES..], acc);
                }
            }
        }

        /// Queries `i..i + R`: their probabilities times the values, 32 of the head's
        /// dimensions at a time, scaled by 1 / the probabilities' sum, into `out`.
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
        fn context<const R: usize>(&self, i: usize, probs: &[f32], inverses: &[f32], out: &mut [f32]) {
            let probs: [&[f32]; R] = std::array::from_fn(|r| &probs[(i + r) * self.padded..][..self.len]);
            let v_at = 2 * self.hidden + self.q_at;
            for part in (0..self.head_dim).step_by(TILE) {
                let mut acc = [[_mm512_setzero_ps(); 2]; R];
                for (j, value) in self.rows.chunks_exact(self.stride).enumerate() {
                    let value = &value[v_at + part..][..TILE];
                    let (v0, v1) = (load_f32s(value), load_f32s(&value[LANES..]));
                    for ([a0, a1], probs) in acc.iter_mut().zip(&probs) {
                        let p = _mm512_set1_ps(probs[j]);
                        *a0 = _mm512_fmadd_ps(p, v0, *a0);
                        *a1 = _mm512_fmadd_ps(p, v1, *a1);
                    }
                }
                for (r, [a0, a1]) in acc.into_iter().enumerate() {
                    let inverse = _mm512_set1_ps(inverses[i + r]);
                    let at = (i + r) * self.hidden + self.q_at + part;
                    store_f32s(&mut out[at..], _mm512_mul_ps(a0, inverse));
                    store_f32s(&mut out[at + LANES..], _mm512_mul_ps(a1, inverse));
                }
            }
        }
    }

    /// [`Quantized::new`] 16 values at a time: the same operations, so the same values for
    /// any finite input (a NaN is not ignored by the maximum here, as it is there).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn quantize(x: &[f32], cols: usize) -> Quantized {
        Quantized::build(x, cols, |block, out| {
            let (low, high) = (load_f32s(&block[..LANES]), load_f32s(&block[LANES..]));
            // Non-negative floats order as their bit patterns do: an integer maximum, which
            // reduces in a few instructions (a float one must order NaNs).
            let bits =
                _mm512_max_epu32(_mm512_castps_si512(_mm512_abs_ps(low)), _mm512_castps_si512(_mm512_abs_ps(high)));
            let max = f32::from_bits(_mm512_reduce_max_epu32(bits));
            let scale = max / 127.0;
            let inverse = _mm512_set1_ps(if scale > 0.0 { 1.0 / scale } else { 0.0 });
            // Rounded to nearest, ties to even (the default rounding mode), then saturated.
            let low = _mm512_cvtps_epi32(_mm512_mul_ps(low, inverse));
            let high = _mm512_cvtps_epi32(_mm512_mul_ps(high, inverse));
            let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(low, high));
            let out = &mut out[..BLOCK / 4];
            // SAFETY: `out` is 8 writable i32s, 32 bytes: two unaligned 16-byte stores.
            unsafe {
                _mm_storeu_si128(out.as_mut_ptr().cast(), _mm512_cvtsepi32_epi8(low));
                _mm_storeu_si128(out.as_mut_ptr().add(4).cast(), _mm512_cvtsepi32_epi8(high));
            }
            (scale, sum)
        })
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn product(w: &Matrix, x: &Quantized, out: &mut [f32]) {
        for start in (0..x.rows).step_by(CHUNK) {
            let end = (start + CHUNK).min(x.rows);
            for tile in 0..w.padded / TILE {
                let mut row = start;
                while row + ROWS <= end {
                    product_tile::<ROWS>(w, x, row, tile, out);
                    row += ROWS;
                }
                match end - row {
                    3 => product_tile::<3>(w, x, row, tile, out),
                    2 => product_tile::<2>(w, x, row, tile, out),
                    1 => product_tile::<1>(w, x, row, tile, out),
                    _ => {}
                }
            }
        }
    }

    /// `R` input rows times the 32 outputs of `tile`, written to `out`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    fn product_tile<const R: usize>(w: &Matrix, x: &Quantized, row: usize, tile: usize, out: &mut [f32]) {
        let (cols, blocks, words_per_row) = (w.cols, w.cols / BLOCK, w.cols / 4);
        let group_bytes = cols * LANES;
        // Everything the loop reads, sliced (so bounds-checked) once, here.
        let values = &w.values[2 * tile * group_bytes..(2 * tile + 2) * group_bytes];
        let words = &x.words[row * words_per_row..(row + R) * words_per_row];
        let input_scales = &x.scales[row * blocks..(row + R) * blocks];

        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for b in 0..blocks {
            let mut dot = [[_mm512_setzero_si512(); 2]; R];
            for step in 0..BLOCK / 4 {
                let at = (b * BLOCK / 4 + step) * 64;
                // SAFETY: `at + 64 <= group_bytes` (b < blocks, step < 8, 64 bytes a step),
                // so both 64-byte loads are inside `values` (two groups long); the loads are
                // unaligned.
                let (w0, w1) = unsafe {
                    let v = values.as_ptr();
                    (_mm512_loadu_si512(v.add(at).cast()), _mm512_loadu_si512(v.add(group_bytes + at).cast()))
                };
                for (r, [dot0, dot1]) in dot.iter_mut().enumerate() {
                    // SAFETY: r < R and b * 8 + step < words_per_row: inside `words`.
                    let word = unsafe { *words.as_ptr().add(r * words_per_row + b * BLOCK / 4 + step) };
                    let broadcast = _mm512_set1_epi32(word);
                    *dot0 = _mm512_dpbusd_epi32(*dot0, w0, broadcast);
                    *dot1 = _mm512_dpbusd_epi32(*dot1, w1, broadcast);
                }
            }
            for (r, ([acc0, acc1], [dot0, dot1])) in acc.iter_mut().zip(dot).enumerate() {
                // SAFETY: r < R and b < blocks: inside `input_scales`.
                let scale = _mm512_set1_ps(unsafe { *input_scales.as_ptr().add(r * blocks + b) });
                *acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot0), scale, *acc0);
                *acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot1), scale, *acc1);
            }
        }

        let first = tile * TILE;
        let (bias0, bias1) = (load_f32s(&w.bias[first..]), load_f32s(&w.bias[first + LANES..]));
        let (scale0, scale1) = (load_f32s(&w.scales[first..]), load_f32s(&w.scales[first + LANES..]));
        let width = w.rows.saturating_sub(first).min(TILE);
        for (r, [a0, a1]) in acc.into_iter().enumerate() {
            let offset = _mm512_set1_ps(x.offsets[row + r]);
            let mut line = [0.0f32; TILE];
            store_f32s(&mut line[..LANES], _mm512_fmadd_ps(_mm512_sub_ps(a0, offset), scale0, bias0));
            store_f32s(&mut line[LANES..], _mm512_fmadd_ps(_mm512_sub_ps(a1, offset), scale1, bias1));
            let at = (row + r) * w.rows + first;
            out[at..at + width].copy_from_slice(&line[..width]);
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load_f32s(values: &[f32]) -> __m512 {
        let values = &values[..LANES];
        // SAFETY: `values` is 16 readable f32s (sliced just above); the load is unaligned.
        unsafe { _mm512_loadu_ps(values.as_ptr()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn store_f32s(into: &mut [f32], v: __m512) {
        let into = &mut into[..LANES];
        // SAFETY: `into` is 16 writable f32s (sliced just above); the store is unaligned.
        unsafe { _mm512_storeu_ps(into.as_mut_ptr(), v) }
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    /// A deterministic pseudo-random stream (xorshift), enough for test matrices.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn float(&mut self) -> f32 {
            (self.next() % 2_000_001) as f32 / 1_000_000.0 - 1.0
        }
    }

    /// Random Q4_0 blocks with scales of varied size, and their dequantized f32 values.
    fn q4(rng: &mut Rng, rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>) {
        let mut blocks = Vec::new();
        let mut dense = Vec::new();
        for _ in 0..rows * cols / BLOCK {
            let scale = f16::from_f32(rng.float().abs() * 0.05 + 0.001);
            blocks.extend(scale.to_le_bytes());
            let nibbles: Vec<u8> = (0..BLOCK).map(|_| (rng.next() % 16) as u8).collect();
            for j in 0..16 {
                blocks.push(nibbles[j] | (nibbles[j + 16] << 4));
            }
            dense.extend(nibbles.iter().map(|&v| scale.to_f32() * (f32::from(v) - 8.0)));
        }
        (blocks, dense)
    }

    #[test]
    fn the_kernel_matches_the_reference_bit_for_bit() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 VNNI, so only the reference runs here");
            return;
        }
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        // Row counts that leave every tail size; an output count that is not whole tiles.
        for (m, n, k) in [(1, 32, 32), (3, 40, 64), (7, 96, 384), (33, 64, 128), (66, 48, 1536)] {
            let (blocks, _) = q4(&mut rng, n, k);
            let bias: Vec<f32> = (0..n).map(|_| rng.float()).collect();
            let w = Matrix::from_q4(&blocks, n, k, bias).unwrap();
            let x: Vec<f32> = (0..m * k).map(|_| rng.float() * 3.0).collect();
            let input = Quantized::new(&x, k);
            let mut expected = vec![0.0; m * n];
            reference(&w, &input, &mut expected);
            let got = w.forward(&x, false);
            assert_eq!(got.len(), m * n);
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert_eq!(g.to_bits(), e.to_bits(), "{m}x{n}x{k}: output {i}: {g} vs {e}");
            }
            // The quantization and GELU loops, vectorized in the kernel's caller, too.
            gelu_all(&mut expected);
            for (i, (g, e)) in w.forward(&x, true).iter().zip(&expected).enumerate() {
                assert_eq!(g.to_bits(), e.to_bits(), "{m}x{n}x{k} with GELU: output {i}: {g} vs {e}");
            }
        }
    }

    #[test]
    fn the_product_is_close_to_the_f32_product() {
        let mut rng = Rng(7);
        let (m, n, k) = (5, 64, 384);
        let (blocks, dense) = q4(&mut rng, n, k);
        let w = Matrix::from_q4(&blocks, n, k, vec![0.5; n]).unwrap();
        let x: Vec<f32> = (0..m * k).map(|_| rng.float()).collect();
        let got = w.forward(&x, false);
        for row in 0..m {
            for col in 0..n {
                let exact: f32 = 0.5 + (0..k).map(|i| x[row * k + i] * dense[col * k + i]).sum::<f32>();
                // Each input off by at most half a step of its block (1/254 of its largest),
                // each weight by half a step of its row.
                let weight_step = (0..k).map(|i| dense[col * k + i].abs()).fold(0.0f32, f32::max) / 254.0;
                let bound: f32 = (0..k)
                    .map(|i| {
                        let block = &x[row * k + i / BLOCK * BLOCK..][..BLOCK];
                        let input_step = block.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 254.0;
                        dense[col * k + i].abs() * input_step
                            + x[row * k + i].abs() * weight_step
                            + input_step * weight_step
                    })
                    .sum::<f32>()
                    * 1.01
                    + 1e-4;
                let error = (got[row * n + col] - exact).abs();
                assert!(error <= bound, "({row}, {col}): {} vs {exact}, error {error} > {bound}", got[row * n + col]);
            }
        }
    }

    #[test]
    fn zero_rows_and_zero_inputs_are_answered() {
        let mut rng = Rng(11);
        let (blocks, _) = q4(&mut rng, 32, 64);
        let w = Matrix::from_q4(&blocks, 32, 64, vec![1.5; 32]).unwrap();
        assert!(w.forward(&[], false).is_empty());
        // An all-zero input block has scale 0: the output is the bias alone, not NaN.
        assert_eq!(w.forward(&[0.0; 64], false), vec![1.5; 32]);
    }

    #[test]
    fn matrices_of_the_wrong_size_are_refused() {
        assert!(Matrix::from_q4(&[0; 18], 1, 16, vec![0.0]).is_err());
        assert!(Matrix::from_q4(&[0; 18], 2, 32, vec![0.0; 2]).is_err());
        assert!(Matrix::from_q4(&[0; 18], 1, 32, vec![]).is_err());
    }

    #[test]
    fn exp_is_within_its_bound() {
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let (got, expected) = (f64::from(exp(x)), f64::from(x).exp());
            assert!(((got - expected) / expected).abs() < 5e-7, "exp({x}) = {got}, expected {expected}");
        }
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        if available() {
            // The SIMD attention's, 16 at a time.
            for start in (-8700..=8800).step_by(16) {
                let x: [f32; LANES] = std::array::from_fn(|l| (start + l as i32).min(8800) as f32 / 100.0);
                // SAFETY: the CPU has AVX-512 (checked above).
                let got = unsafe { avx512::exp_lanes(&x) };
                for (x, got) in x.iter().zip(got) {
                    let expected = f64::from(*x).exp();
                    assert!(
                        ((f64::from(got) - expected) / expected).abs() < 5e-7,
                        "exp({x}) = {got}, expected {expected}"
                    );
                }
            }
        }
    }

    /// Attention computed the obvious way, in f64, text by text.
    fn attention_f64(qkv: &[f32], lens: &[usize], heads: usize, head_dim: usize) -> Vec<f64> {
        let hidden = heads * head_dim;
        let at = |token: usize, part: usize, head: usize, d: usize| {
            f64::from(qkv[token * 3 * hidden + part * hidden + head * head_dim + d])
        };
        let mut out = vec![0.0; lens.iter().sum::<usize>() * hidden];
        let mut first = 0;
        for &len in lens {
            let text = first..first + len;
            first += len;
            for head in 0..heads {
                for i in text.clone() {
                    let scores: Vec<f64> = text
                        .clone()
                        .map(|j| (0..head_dim).map(|d| at(i, 0, head, d) * at(j, 1, head, d)).sum::<f64>())
                        .map(|s| s / (head_dim as f64).sqrt())
                        .collect();
                    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let total: f64 = weights.iter().sum();
                    for d in 0..head_dim {
                        out[i * hidden + head * head_dim + d] =
                            text.clone().zip(&weights).map(|(j, w)| w / total * at(j, 2, head, d)).sum();
                    }
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_the_obvious_computation_and_keeps_texts_apart() {
        // Heads of one and of two 32-value parts.
        for head_dim in [32, 64] {
            attention_case(head_dim);
        }
    }

    fn attention_case(head_dim: usize) {
        let mut rng = Rng(3);
        let heads = 3;
        let hidden = heads * head_dim;
        // Lengths on both sides of the 16-token chunk, every remainder of the 4-query tile
        // (9, 18, 3, 34), and an empty text.
        let lens = [9, 18, 0, 3, 34, 2];
        let tokens: usize = lens.iter().sum();
        let mut qkv: Vec<f32> = (0..tokens * 3 * hidden).map(|_| rng.float() * 2.0).collect();
        let expected = attention_f64(&qkv, &lens, heads, head_dim);
        let got = attention(&qkv, &lens, heads, head_dim);
        // The plain loops too (the path for heads the SIMD code does not take).
        for (name, got) in [("kernel", &got), ("loops", &attention_loops(&qkv, &lens, heads, head_dim))] {
            assert_eq!(got.len(), expected.len());
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert!((f64::from(*g) - e).abs() < 1e-5, "{name}: value {i}: {g} vs {e}");
            }
        }
        // A text's context does not depend on its neighbours: change every other text.
        let second = lens[0]..lens[0] + lens[1];
        for (token, row) in qkv.chunks_exact_mut(3 * hidden).enumerate() {
            if !second.contains(&token) {
                row.fill(1e30);
            }
        }
        let again = attention(&qkv, &lens, heads, head_dim);
        assert_eq!(again[second.start * hidden..second.end * hidden], got[second.start * hidden..second.end * hidden]);
        assert!(attention(&[], &[], heads, head_dim).is_empty());
    }

    #[test]
    fn erf_is_within_its_bound() {
        // Reference values of erf (to 10 digits).
        for (x, e) in [
            (0.0f32, 0.0f64),
            (0.1, 0.112_462_916_0),
            (0.5, 0.520_499_877_8),
            (1.0, 0.842_700_792_9),
            (1.5, 0.966_105_146_5),
            (2.0, 0.995_322_265_0),
            (3.0, 0.999_977_909_5),
            (-0.7, -0.677_801_193_8),
            (-2.5, -0.999_593_047_98),
        ] {
            let got = f64::from(erf(x));
            assert!((got - e).abs() < 1e-6, "erf({x}) = {got}, expected {e}");
        }
        assert_eq!(erf(f32::INFINITY), 1.0);
        assert_eq!(erf(f32::NEG_INFINITY), -1.0);
    }
}
