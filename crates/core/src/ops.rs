//! The op set models are written in. Small on purpose, and shaped for fusion: a matrix product
//! carries its epilogue, a norm its residual add, rotary embedding and attention read the fused
//! QKV projection in place.
//!
//! Activations are `[tokens, features]` row-major in the backend's activation dtype
//! ([`crate::Caps::act_dtype`]); `out: &mut` tensors are allocated by the caller.

use crate::sampling::{Sampled, SeqSampler};
use crate::{Backend, Result, Tensor};

/// What a matrix product does around the dot products, in this order: quantise the input rows
/// (`quant_x`), take the dot products in f32, multiply by the scales, add the bias, apply the
/// activation, then store or accumulate into `out`:
///
/// `out[i, j] (+)= act(sx[i] * scale[j] * Σ_k x'[i, k] · w[j, k] + bias[j])`
///
/// where `x' = x` and `sx = 1` without `quant_x`, and `w[j, k]` are the stored weight values (for
/// FP8 E4M3 and INT8 weights the raw 8-bit values, their scales in `scale`). With `quant_x`, each
/// input row is first shifted by `shift` and multiplied channel by channel by `smooth` when
/// given (SmoothQuant: the weight's input columns were multiplied by the reciprocals when it was
/// quantised), then quantised: `x'[i, k] = e4m3((x[i, k] − shift[k]) · smooth[k] · (1 / sx[i]))`.
/// The product of the shift with the weight is the caller's to add back (as part of `bias`).
///
/// With `exact`, a few input channels are also multiplied exactly, in f32, from the unquantised
/// input: `Σ_t x[i, idx[t]] · wx[j, t]` joins the sum before the bias (after the scales). The
/// stored weight's columns `idx` are then zero (the caller's to arrange), and a `smooth` of zero
/// on those channels keeps them out of the quantised row and its scale.
///
/// With `gated` (a gated MLP's `act(gate) · up` fused with its product), the weight stacks the
/// gate rows over the up rows (`[2f, k]`, the fused `gate_up` projection), everything above but
/// the activation applies to that whole `[m, 2f]` product `p` (`bias`, `scale` are `[2f]`), and
/// `out [m, f]` gets `act(p[i, j]) · p[i, f + j]` (the order of [`Ops::gated_act`]).
pub struct Epilogue<'a, B: Backend> {
    /// Adds `bias[n]` to every row.
    pub bias: Option<&'a Tensor<B>>,
    /// Applies an activation element-wise (with `gated`, to the gate half only).
    pub act: Option<Act>,
    /// The output is `act(gate) · up` of the two halves of the product (needs `act`; not with
    /// `accumulate`).
    pub gated: bool,
    /// Adds the result to `out` instead of overwriting it (fused residual add).
    pub accumulate: bool,
    /// Per-output-column weight scales `[n]` (f32), for FP8 and INT8 weights.
    pub scale: Option<&'a Tensor<B>>,
    /// Quantises the input rows to FP8 E4M3 first (W8A8).
    pub quant_x: Option<XQuant<'a, B>>,
    /// With `quant_x`: per-input-channel multipliers `[k]` (f32) applied before quantisation.
    pub smooth: Option<&'a Tensor<B>>,
    /// With `quant_x`: per-input-channel values `[k]` (f32) subtracted before quantisation.
    pub shift: Option<&'a Tensor<B>>,
    /// Input channels multiplied exactly beside the product (outlier channels).
    pub exact: Option<ExactCols<'a, B>>,
}

/// Input channels whose products are taken in f32 from the unquantised input, beside an 8-bit
/// product (LLM.int8()-style outlier decomposition with channels fixed by calibration).
pub struct ExactCols<'a, B: Backend> {
    /// The channels `[s]` (u32), each `< k`.
    pub idx: &'a Tensor<B>,
    /// Their weights `[n, s]` (f32): `w[j, t]` multiplies input channel `idx[t]` into output `j`.
    pub w: &'a Tensor<B>,
}

impl<B: Backend> Clone for ExactCols<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for ExactCols<'_, B> {}

/// How a matrix product's input rows are quantised before the products (W8A8): each row becomes
/// `x' = e4m3(x / sx)` with its scale `sx` applied to the sums ([`crate::fp8`]).
pub enum XQuant<'a, B: Backend> {
    /// One scale per row (token), `amax(row) / 448`, computed on the fly.
    Fp8PerToken,
    /// One calibrated scale `[1]` (f32) for every row; values beyond it saturate.
    Fp8Static(&'a Tensor<B>),
}

impl<B: Backend> Clone for XQuant<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for XQuant<'_, B> {}

impl<B: Backend> Epilogue<'_, B> {
    /// Plain product.
    pub fn none() -> Self {
        Epilogue {
            bias: None,
            act: None,
            gated: false,
            accumulate: false,
            scale: None,
            quant_x: None,
            smooth: None,
            shift: None,
            exact: None,
        }
    }

    /// `out += x · wᵀ`.
    pub fn accumulate() -> Self {
        Epilogue { accumulate: true, ..Self::none() }
    }

    /// Checks a product `x [m, k] · wᵀ ([n, k]) → out [m, n]` with this epilogue: the shapes of
    /// every part (`bias`, `scale` `[n]`; `smooth`, `shift` `[k]`; the exact channels; `out`
    /// `[m, n / 2]` when `gated`), that smoothing and shifts come with input quantisation (they act
    /// on the input as it is quantised), and that a gated product has an activation, an even `n`
    /// and no accumulation. Returns how many exact channels there are (0 without). Element types
    /// are the backend's to check.
    pub fn check(&self, op: &'static str, x: &Tensor<B>, w: &Tensor<B>, out: &Tensor<B>) -> Result<usize> {
        let (m, k, n) = (x.rows(), x.cols(), w.rows());
        if w.cols() != k {
            return Err(crate::Error::Shape { op, expected: [n, k].into(), got: w.shape().clone() });
        }
        if self.gated {
            if self.act.is_none() {
                return Err(crate::Error::invalid(op, "a gated product without an activation"));
            }
            if self.accumulate {
                return Err(crate::Error::invalid(op, "a gated product cannot accumulate into its output"));
            }
            if n % 2 != 0 {
                return Err(crate::Error::invalid(op, format!("a gated product needs an even width, got {n} rows")));
            }
        }
        out.expect_shape(op, &[m, if self.gated { n / 2 } else { n }])?;
        for (t, len) in [(self.bias, n), (self.scale, n), (self.smooth, k), (self.shift, k)] {
            if let Some(t) = t {
                t.expect_shape(op, &[len])?;
            }
        }
        if self.quant_x.is_none() {
            if self.smooth.is_some() {
                return Err(crate::Error::invalid(op, "input smoothing without input quantisation"));
            }
            if self.shift.is_some() {
                return Err(crate::Error::invalid(op, "an input shift without input quantisation"));
            }
        }
        let Some(e) = self.exact else { return Ok(0) };
        let s = e.idx.shape().numel();
        e.idx.expect_shape(op, &[s])?;
        e.w.expect_shape(op, &[n, s])?;
        if e.idx.dtype() != crate::DType::U32 || e.w.dtype() != crate::DType::F32 {
            return Err(crate::Error::invalid(
                op,
                format!("exact channels need u32 indices and f32 weights, got {} and {}", e.idx.dtype(), e.w.dtype()),
            ));
        }
        Ok(s)
    }
}

impl<'a, B: Backend> Epilogue<'a, B> {
    /// `out = x · wᵀ + bias`.
    pub fn bias(bias: Option<&'a Tensor<B>>) -> Self {
        Epilogue { bias, ..Self::none() }
    }
}

/// Normalisation kinds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum NormKind {
    /// `x / sqrt(mean(x²) + eps) * (w + offset)`; `offset` is 1 for Gemma, else 0.
    Rms {
        /// Epsilon.
        eps: f32,
        /// Added to the weight.
        offset: f32,
    },
    /// `(x - mean) / sqrt(var + eps) * w + b`.
    Layer {
        /// Epsilon.
        eps: f32,
    },
}

/// Activations, used gated (`act(gate) * up`) or plain (in a matmul epilogue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// SiLU (swish), as in Llama's SwiGLU.
    Silu,
    /// GELU, tanh approximation (`gelu_new`, `gelu_pytorch_tanh`, Bloom's GELU).
    GeluTanh,
    /// GELU with the exact error function (`gelu`).
    Gelu,
    /// ReLU.
    Relu,
}

impl Act {
    /// The activation of a transformers `hidden_act` / `activation_function` name.
    pub fn from_hf(name: &str) -> Option<Act> {
        Some(match name {
            "silu" | "swish" => Act::Silu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" | "gelu_tanh" => Act::GeluTanh,
            "gelu" => Act::Gelu,
            "relu" => Act::Relu,
            _ => return None,
        })
    }
}

/// How a norm combines with the residual stream.
pub enum Resid<'a, B: Backend> {
    /// Just normalise `x`.
    None,
    /// `r += x`, then `out = norm(r)` (pre-norm blocks: add the branch, normalise for the next).
    Before(&'a mut Tensor<B>),
    /// `out = norm(x)`, then `r += out` (post-norm branches, as in Gemma).
    After(&'a mut Tensor<B>),
}

/// Per-head ALiBi slopes for `heads` heads, as Bloom and transformers define them (a power of two
/// gets the geometric series `2^(-8 i / n)`; other counts interleave a second series).
pub fn alibi_slopes(heads: usize) -> Vec<f32> {
    if heads == 0 {
        return Vec::new();
    }
    let closest = 1usize << (usize::BITS - 1 - heads.leading_zeros());
    let base = 2f64.powf(-(2f64.powf(-((closest as f64).log2() - 3.0))));
    let mut s: Vec<f32> = (1..=closest).map(|i| base.powi(i as i32) as f32).collect();
    if closest != heads {
        let extra = 2f64.powf(-(2f64.powf(-((2.0 * closest as f64).log2() - 3.0))));
        let rest = (heads - closest).min(closest);
        s.extend((0..rest).map(|i| extra.powi(1 + 2 * i as i32) as f32));
    }
    s
}

/// Column layout of a fused QKV projection `[tokens, (q_heads + 2 * kv_heads) * head_dim]`:
/// all query heads, then all key heads, then all value heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QkvLayout {
    /// Query heads.
    pub q_heads: usize,
    /// Key/value heads (divides `q_heads`: MHA, GQA, MQA).
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
}

impl QkvLayout {
    /// Width of the fused projection.
    pub fn width(&self) -> usize {
        (self.q_heads + 2 * self.kv_heads) * self.head_dim
    }
}

/// Precomputed rotary tables, `cos` and `sin` each `[max_positions, rot_dim / 2]` f32.
pub struct RopeTable<B: Backend> {
    /// Cosines.
    pub cos: Tensor<B>,
    /// Sines.
    pub sin: Tensor<B>,
    /// Number of leading dimensions of each head that rotate (even, ≤ head_dim).
    pub rot_dim: usize,
}

/// One layer's paged KV cache: `k` and `v` are `[num_blocks, kv_heads, block_size, head_dim]`, so
/// one head's keys within a block are contiguous. Token `t` of a sequence lives in block
/// `block_table[t / block_size]`, row `t % block_size`.
pub struct KvPages<B: Backend> {
    /// Keys.
    pub k: Tensor<B>,
    /// Values.
    pub v: Tensor<B>,
    /// Tokens per block.
    pub block_size: usize,
    /// FP8 pages: `[kv_heads · head_dim]` subtracted from every key before it is quantised (the
    /// keys' per-channel mean, so that E4M3's relative precision serves what varies). Attention
    /// is unchanged: a query's scores all move by the same `q · shift`, which softmax ignores.
    pub k_shift: Option<Tensor<B>>,
    /// 8-bit pages (ignored for others): the key of position 0 of a sequence, kept unrounded
    /// (minus the shift) in f32, `[num_blocks, kv_heads, head_dim]`, at the index of the block
    /// that holds it. Most heads put much of their attention on the first token (an "attention
    /// sink") and its key lies far from the others, so rounding it costs more than any other
    /// row; `kv_store` writes it for rows at position 0 and attention reads it instead of that
    /// page row.
    pub k_sink: Option<Tensor<B>>,
    /// 8-bit pages (required there): one scale per stored key row (one token of one kv head),
    /// `[num_blocks · kv_heads · block_size]` f32 in the pages' row order. `kv_store` sets it to
    /// the row's largest magnitude (after the shift) over the format's largest value (448 for
    /// E4M3, 127 for INT8) and stores `e4m3(x · (1 / s))` or `round(x / s)`.
    pub k_scales: Option<Tensor<B>>,
    /// 8-bit pages: one scale per stored value row, as `k_scales`.
    pub v_scales: Option<Tensor<B>>,
}

/// Per-step metadata of a packed batch, shared by every layer.
///
/// The step holds `n_tokens` tokens from `n_seqs` sequences, each sequence's tokens contiguous and
/// in position order.
pub struct AttnMeta<B: Backend> {
    /// `[n_seqs, 3]` u32: first row of the sequence's tokens in the step, number of its tokens,
    /// and its context length after the step (cached tokens + new ones).
    pub seqs: Tensor<B>,
    /// `[n_seqs, max_blocks]` u32 block tables (unused entries are ignored).
    pub block_tables: Tensor<B>,
    /// `[n_tokens]` u32 absolute positions.
    pub positions: Tensor<B>,
    /// `[n_tokens]` u32 cache slots (`block * block_size + offset`) where the new keys go.
    pub slots: Tensor<B>,
}

/// Attention settings of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttnParams {
    /// Score scale, usually `1 / sqrt(head_dim)`.
    pub scale: f32,
    /// Sliding window: a query at position `p` sees keys at positions `> p - window`.
    pub window: Option<usize>,
    /// Adds ALiBi biases `m * slope_h * (key_pos - query_pos)` ([`alibi_slopes`]) to the scaled
    /// scores; `Some(m)` gives the multiplier (1 for Bloom, the score scale for Falcon, which
    /// adds the biases before scaling).
    pub alibi: Option<f32>,
}

/// The kernels a model is written in. `T` below is `Tensor<Self>`.
pub trait Ops: Backend {
    /// `out[m, n] = x[m, k] · w[n, k]ᵀ` plus the epilogue. Each output element is reduced in an
    /// order that depends only on `k` (never on `m`, the other rows or the thread count).
    fn matmul(&self, x: &Tensor<Self>, w: &Tensor<Self>, epi: Epilogue<'_, Self>, out: &mut Tensor<Self>)
        -> Result<()>;

    /// Row-wise normalisation of `x [t, h]` with weight `w [h]` (and bias `b [h]`), combined
    /// with the residual stream as [`Resid`] says.
    fn norm(
        &self,
        x: &Tensor<Self>,
        w: &Tensor<Self>,
        b: Option<&Tensor<Self>>,
        kind: NormKind,
        resid: Resid<'_, Self>,
        out: &mut Tensor<Self>,
    ) -> Result<()>;

    /// Normalises, in place, every query head of a fused `qkv` with `wq [head_dim]` and every key
    /// head with `wk [head_dim]` (per-head q/k norm of Qwen3 and Gemma 3).
    fn head_norm(
        &self,
        qkv: &mut Tensor<Self>,
        l: QkvLayout,
        wq: &Tensor<Self>,
        wk: &Tensor<Self>,
        kind: NormKind,
    ) -> Result<()>;

    /// Rotates, in place, the query and key heads of a fused `qkv` (see [`QkvLayout`]) by their
    /// positions `[t]` (u32), rotate-half (NeoX) pairing over the first `rot_dim` dimensions.
    fn rope(&self, qkv: &mut Tensor<Self>, pos: &Tensor<Self>, table: &RopeTable<Self>, l: QkvLayout) -> Result<()>;

    /// Writes the key and value heads of `qkv` to the cache at `meta.slots`.
    fn kv_store(&self, qkv: &Tensor<Self>, l: QkvLayout, meta: &AttnMeta<Self>, kv: &mut KvPages<Self>) -> Result<()>;

    /// [`Ops::rope`] by `meta.positions`, then [`Ops::kv_store`]: the rotated keys and the values
    /// go to the cache, and `qkv` is left rotated. Backends may do both in one pass (CUDA: one
    /// launch, as TensorRT-LLM's QKV preprocessing); the result is that of the two ops.
    fn rope_store(
        &self,
        qkv: &mut Tensor<Self>,
        table: &RopeTable<Self>,
        l: QkvLayout,
        meta: &AttnMeta<Self>,
        kv: &mut KvPages<Self>,
    ) -> Result<()> {
        self.rope(qkv, &meta.positions, table, l)?;
        self.kv_store(qkv, l, meta, kv)
    }

    /// Causal attention of the query heads of `qkv` over the paged cache (which already holds this
    /// step's keys). `out` is `[t, q_heads * head_dim]`. For every query, keys are visited block by
    /// block in position order with the same online-softmax update, so the result does not depend
    /// on how the prompt was chunked or batched.
    fn paged_attention(
        &self,
        qkv: &Tensor<Self>,
        l: QkvLayout,
        kv: &KvPages<Self>,
        meta: &AttnMeta<Self>,
        p: &AttnParams,
        out: &mut Tensor<Self>,
    ) -> Result<()>;

    /// `out[t, f] = act(gate_up[t, :f]) * gate_up[t, f:]`.
    fn gated_act(&self, gate_up: &Tensor<Self>, act: Act, out: &mut Tensor<Self>) -> Result<()>;

    /// `out[i] = src[ids[i]] * scale` (rows dequantised to the activation dtype), or `+=` with
    /// `accumulate`: embedding lookup (scaled for Gemma), learned positions, row selection.
    fn gather_rows(
        &self,
        src: &Tensor<Self>,
        ids: &Tensor<Self>,
        scale: f32,
        accumulate: bool,
        out: &mut Tensor<Self>,
    ) -> Result<()>;

    /// Row-wise softmax in place.
    fn softmax(&self, x: &mut Tensor<Self>) -> Result<()>;

    /// Samples one token per row of `logits [n, vocab]`, row `i` with `seqs[i]` (each sequence
    /// has its own seeded stream). The default downloads the logits and samples on the host.
    fn sample(&self, logits: &Tensor<Self>, seqs: &mut [&mut SeqSampler]) -> Result<Vec<Sampled>> {
        let host = self.download(logits)?.to_f32()?;
        crate::sampling::sample_rows(&host, logits.cols(), seqs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alibi_slopes_match_bloom() {
        assert_eq!(alibi_slopes(4), vec![0.25, 0.0625, 0.015625, 0.00390625]);
        assert_eq!(alibi_slopes(6), vec![0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]);
        assert_eq!(alibi_slopes(8)[0], 0.5);
    }
}
