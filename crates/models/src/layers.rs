//! The one decoder every architecture runs: a stack of pre-norm (or parallel) attention + MLP
//! blocks over the packed batch and paged KV cache. Architectures differ only in how they fill
//! [`Decoder`]: norms and their kind, biases, gated or plain MLP, parallel residual, q/k norms,
//! post-branch norms, rotary tables per layer, ALiBi, learned positions, embedding scale/norm.

use turbine_core::{
    Act, AttnParams, DType, Epilogue, ExactCols, HostTensor, KvPages, NormKind, Ops, QkvLayout, Resid, RopeTable,
    Tensor, XQuant,
};

use crate::config::HfConfig;
use crate::rope::RopeSpec;
use crate::step::{Step, Workspace};
use crate::weights::Weights;
use crate::{ModelError, Result};
use turbine_core::runner::ModelSpec;

/// A norm's weight and optional bias, `[hidden]`.
pub struct Norm<B: Ops> {
    /// Weight.
    pub w: Tensor<B>,
    /// Bias (layer norm).
    pub b: Option<Tensor<B>>,
}

impl<B: Ops> Norm<B> {
    /// Loads `{prefix}.weight` and, if present, `{prefix}.bias`.
    pub fn load(w: &Weights<'_, B>, prefix: &str, h: usize) -> Result<Self> {
        Ok(Norm { w: w.get(&format!("{prefix}.weight"), &[h])?, b: w.get_opt(&format!("{prefix}.bias"), &[h])? })
    }
}

/// A linear layer: weight `[out, in]` (f32, f16, bf16, GGUF blocks, or FP8 E4M3 / INT8 with
/// per-output-channel `scale`), optional bias `[out]`, and optionally FP8 quantisation of its
/// input (W8A8).
pub struct Linear<B: Ops> {
    /// Weight.
    pub w: Tensor<B>,
    /// Bias.
    pub b: Option<Tensor<B>>,
    /// Per-output-channel scales `[out]` (f32) of an FP8 or INT8 weight.
    pub scale: Option<Tensor<B>>,
    /// How the input is quantised to FP8 before the product, if it is.
    pub quant_x: Option<ActQuant<B>>,
    /// With `quant_x`: per-input-channel multipliers `[inp]` (f32) applied to the input before
    /// it is quantised (SmoothQuant; the weight's columns carry the reciprocals).
    pub smooth: Option<Tensor<B>>,
    /// With `quant_x`: per-input-channel values `[inp]` (f32) subtracted from the input before it
    /// is quantised; the bias carries `w · shift` (computed from the unquantised weight).
    pub shift: Option<Tensor<B>>,
    /// Input channels multiplied exactly in f32 beside the 8-bit product (their columns of `w`
    /// are zero; with `quant_x`, `smooth` is zero on them).
    pub exact: Option<ExactWeights<B>>,
    /// The checkpoint's weight `[out, in]` kept on the host while loading, for a precision
    /// policy to convert from ([`crate::weights::Staging`]); `None` once settled.
    pub host: Option<HostTensor<'static>>,
}

/// A projection's outlier input channels and their f32 weights ([`turbine_core::ExactCols`]).
pub struct ExactWeights<B: Ops> {
    /// The channels `[s]` (u32).
    pub idx: Tensor<B>,
    /// Their weights `[out, s]` (f32).
    pub w: Tensor<B>,
}

/// FP8 quantisation of a projection's input.
pub enum ActQuant<B: Ops> {
    /// One scale per token, computed on the fly.
    Dynamic,
    /// One calibrated scale `[1]`.
    Static(Tensor<B>),
}

impl<B: Ops> Linear<B> {
    /// A plain layer (no scales, no input quantisation).
    pub fn new(w: Tensor<B>, b: Option<Tensor<B>>) -> Self {
        Linear { w, b, scale: None, quant_x: None, smooth: None, shift: None, exact: None, host: None }
    }

    /// A plain layer from a host weight `[out, in]`, uploaded (or kept) as the loader's
    /// [`Weights::staging`] says.
    pub fn from_host(w: &Weights<'_, B>, host: HostTensor<'static>, b: Option<Tensor<B>>) -> Result<Self> {
        let (t, host) = w.projection(host)?;
        Ok(Linear { host, ..Linear::new(t, b) })
    }

    /// `(out, in)` of the weight, deferred or not.
    pub fn out_in(&self) -> (usize, usize) {
        match self.host.as_ref().map(|h| h.shape().dims()) {
            Some(&[n, k]) => (n, k),
            _ => (self.w.rows(), self.w.cols()),
        }
    }

    /// Whether `w` is a placeholder: the weight is still only on the host.
    pub fn is_deferred(&self) -> bool {
        self.host.as_ref().is_some_and(|h| h.shape().numel() > 0) && self.w.shape().numel() == 0
    }

    /// Drops the host copy, uploading it first (as stored) if the weight is still deferred.
    pub fn settle(&mut self, b: &B) -> Result<()> {
        if self.is_deferred() {
            self.w = b.upload_weight(self.host.as_ref().expect("deferred weights are on the host"))?;
        }
        self.host = None;
        Ok(())
    }

    /// The product's epilogue: bias, scales and input quantisation of this layer.
    pub fn epilogue(&self) -> Epilogue<'_, B> {
        Epilogue {
            bias: self.b.as_ref(),
            scale: self.scale.as_ref(),
            quant_x: self.quant_x.as_ref().map(|q| match q {
                ActQuant::Dynamic => XQuant::Fp8PerToken,
                ActQuant::Static(s) => XQuant::Fp8Static(s),
            }),
            smooth: self.smooth.as_ref(),
            shift: self.shift.as_ref(),
            exact: self.exact.as_ref().map(|e| ExactCols { idx: &e.idx, w: &e.w }),
            ..Epilogue::none()
        }
    }

    /// Loads `{prefix}.weight` `[out, inp]` and, if present, `{prefix}.bias` (and the scales of an
    /// FP8 or INT8 checkpoint, see [`Linear::fused`]).
    pub fn load(w: &Weights<'_, B>, prefix: &str, out: usize, inp: usize) -> Result<Self> {
        Self::fused(w, &[prefix], &[out], inp)
    }

    /// Stacks several projections with the same input into one (fused QKV, gate/up).
    ///
    /// An 8-bit checkpoint (FP8 E4M3 or INT8 weights, as published for vLLM and TensorRT-LLM)
    /// has beside each `{p}.weight` a `{p}.weight_scale` (one value, or one per output row) and,
    /// with static activation scales, a `{p}.input_scale` (one value; a fused layer takes the
    /// largest of its parts').
    pub fn fused(w: &Weights<'_, B>, prefixes: &[&str], outs: &[usize], inp: usize) -> Result<Self> {
        let wk: Vec<String> = prefixes.iter().map(|p| format!("{p}.weight")).collect();
        let bk: Vec<String> = prefixes.iter().map(|p| format!("{p}.bias")).collect();
        let ws: Vec<[usize; 2]> = outs.iter().map(|&o| [o, inp]).collect();
        let bs: Vec<[usize; 1]> = outs.iter().map(|&o| [o]).collect();
        let bparts: Vec<(&str, &[usize])> = bk.iter().zip(&bs).map(|(k, s)| (k.as_str(), &s[..])).collect();
        let bias = w.fused_opt(&bparts)?;
        let hosts = wk.iter().zip(&ws).map(|(k, s)| w.host(k, s)).collect::<Result<Vec<_>>>()?;
        let eight = |d: DType| matches!(d, DType::F8E4M3 | DType::I8);
        if !hosts.iter().any(|h| eight(h.dtype())) {
            let wparts: Vec<(&str, &[usize])> = wk.iter().zip(&ws).map(|(k, s)| (k.as_str(), &s[..])).collect();
            return Linear::from_host(w, w.stacked(&wparts)?, bias);
        }
        let dtype = hosts[0].dtype();
        if let Some(h) = hosts.iter().position(|h| h.dtype() != dtype) {
            return Err(ModelError::Config(format!(
                "{} is {} but {} is {}: the parts of a fused projection must share one format",
                wk[0],
                dtype,
                wk[h],
                hosts[h].dtype()
            )));
        }
        let mut scales = Vec::with_capacity(outs.iter().sum());
        let mut inputs = Vec::new();
        for (p, &o) in prefixes.iter().zip(outs) {
            let key = format!("{p}.weight_scale");
            let s = w
                .raw(&key)?
                .ok_or_else(|| ModelError::Config(format!("{p}.weight is {dtype} but its scale {key} is missing")))?;
            let v = s.to_f32()?;
            match v.len() {
                1 => scales.extend(std::iter::repeat_n(v[0], o)),
                n if n == o => scales.extend(v),
                _ => {
                    return Err(ModelError::WeightShape {
                        key,
                        expected: format!("[] or [1] (per tensor), or [{o}] or [{o}, 1] (per row)"),
                        got: s.shape().to_string(),
                    })
                }
            }
            if let Some(s) = w.raw(&format!("{p}.input_scale"))? {
                let v = s.to_f32()?;
                if v.len() != 1 {
                    return Err(ModelError::WeightShape {
                        key: format!("{p}.input_scale"),
                        expected: "[] or [1]".into(),
                        got: s.shape().to_string(),
                    });
                }
                inputs.push(v[0]);
            }
        }
        if let Some(bad) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(ModelError::Config(format!("{}: a weight scale is {bad}; scales must be positive", wk[0])));
        }
        let b = w.backend();
        let quant_x = match (dtype, w.fp8_inputs) {
            (DType::I8, _) | (_, crate::weights::Fp8Inputs::None) => None,
            (_, crate::weights::Fp8Inputs::Dynamic) => Some(ActQuant::Dynamic),
            (_, crate::weights::Fp8Inputs::Static) => {
                if inputs.len() != prefixes.len() {
                    return Err(ModelError::Config(format!(
                        "the checkpoint has static activation scales, but {}.input_scale is missing",
                        prefixes[inputs.len().min(prefixes.len() - 1)]
                    )));
                }
                let s = inputs.iter().fold(0f32, |a, &v| a.max(v));
                Some(ActQuant::Static(b.upload(&HostTensor::from_f32([1], &[s])?)?))
            }
        };
        let n = outs.iter().sum::<usize>();
        let codes: Vec<u8> = hosts.iter().flat_map(|h| h.bytes().iter().copied()).collect();
        Ok(Linear {
            w: b.upload_weight(&HostTensor::new([n, inp], dtype, codes)?)?,
            b: bias,
            scale: Some(b.upload(&HostTensor::from_f32([n], &scales)?)?),
            quant_x,
            smooth: None,
            shift: None,
            exact: None,
            host: None,
        })
    }
}

/// Settings shared by every layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecoderOpts {
    /// Kind of every norm.
    pub norm: NormKind,
    /// MLP activation.
    pub act: Act,
    /// `act(gate) * up` (the up projection holds `[gate; up]`) rather than `act(up)`.
    pub gated: bool,
    /// Attention and MLP both read the block input (GPT-NeoX, Falcon) instead of running in turn.
    pub parallel: bool,
    /// Attention score scale.
    pub attn_scale: f32,
    /// ALiBi position biases, with their multiplier (see [`AttnParams::alibi`]).
    pub alibi: Option<f32>,
    /// Embedding multiplier (Gemma: sqrt(hidden)); 1 otherwise.
    pub embed_scale: f32,
}

/// One block's weights and per-layer settings.
pub struct Layer<B: Ops> {
    /// Norm before attention (and before the MLP too when `mlp_norm` is `None` in a parallel block).
    pub attn_norm: Norm<B>,
    /// Norm before the MLP.
    pub mlp_norm: Option<Norm<B>>,
    /// Fused QKV projection, rows `[q heads | k heads | v heads]`.
    pub qkv: Linear<B>,
    /// Per-head q and k norm weights `[head_dim]`.
    pub qk_norm: Option<(Tensor<B>, Tensor<B>)>,
    /// Output projection.
    pub o: Linear<B>,
    /// Norm of the attention output before the residual add (Gemma).
    pub post_attn_norm: Option<Norm<B>>,
    /// Up projection (`[gate; up]` when gated).
    pub up: Linear<B>,
    /// Down projection.
    pub down: Linear<B>,
    /// Norm of the MLP output before the residual add (Gemma).
    pub post_mlp_norm: Option<Norm<B>>,
    /// Sliding window of this layer.
    pub window: Option<usize>,
    /// Index of this layer's rotary table in [`Decoder::ropes`], if it rotates.
    pub rope: Option<usize>,
}

/// A whole model.
pub struct Decoder<B: Ops> {
    /// The spec the engine sees.
    pub spec: ModelSpec,
    /// Shared settings.
    pub opts: DecoderOpts,
    /// Token embeddings `[vocab, hidden]`.
    pub embed: Tensor<B>,
    /// Learned position embeddings `[positions, hidden]` (GPT-2).
    pub pos_embed: Option<Tensor<B>>,
    /// Norm right after the embedding (Bloom).
    pub embed_norm: Option<Norm<B>>,
    /// The blocks.
    pub layers: Vec<Layer<B>>,
    /// Final norm.
    pub final_norm: Norm<B>,
    /// LM head; `None` means tied to `embed`.
    pub lm_head: Option<Linear<B>>,
    /// Rotary tables referenced by the layers.
    pub ropes: Vec<RopeTable<B>>,
    /// Sees every projection's input during forward passes (calibration); normally `None`.
    pub observer: Option<std::sync::Arc<dyn Observer<B>>>,
}

/// Sees the input of every projection of every block during a forward pass, for calibration.
pub trait Observer<B: Ops>: Send + Sync {
    /// `x` (`[tokens, in]`) is about to be multiplied by `role`'s weight in block `layer`.
    fn input(&self, b: &B, layer: usize, role: Role, x: &Tensor<B>) -> Result<()>;

    /// The fused QKV of block `layer` (`[tokens, (q + 2 kv) heads · head_dim]`, rotated) is about
    /// to be stored in the KV cache.
    fn qkv(&self, _b: &B, _layer: usize, _qkv: &Tensor<B>) -> Result<()> {
        Ok(())
    }
}

impl<B: Ops> Decoder<B> {
    /// Bytes of every weight in memory (embeddings, norms, projections and their scales, head).
    pub fn weight_bytes(&self) -> usize {
        let tb = tensor_bytes;
        let norm = |n: &Norm<B>| tb(&n.w) + n.b.as_ref().map_or(0, tb);
        let lin = |l: &Linear<B>| {
            let q = match &l.quant_x {
                Some(ActQuant::Static(s)) => tb(s),
                _ => 0,
            };
            let opt = |t: &Option<Tensor<B>>| t.as_ref().map_or(0, tb);
            let exact = l.exact.as_ref().map_or(0, |e| tb(&e.idx) + tb(&e.w));
            tb(&l.w) + opt(&l.b) + opt(&l.scale) + opt(&l.smooth) + opt(&l.shift) + exact + q
        };
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                norm(&l.attn_norm)
                    + l.mlp_norm.as_ref().map_or(0, norm)
                    + l.post_attn_norm.as_ref().map_or(0, norm)
                    + l.post_mlp_norm.as_ref().map_or(0, norm)
                    + l.qk_norm.as_ref().map_or(0, |(a, c)| tb(a) + tb(c))
                    + lin(&l.qkv)
                    + lin(&l.o)
                    + lin(&l.up)
                    + lin(&l.down)
            })
            .sum();
        tb(&self.embed)
            + self.pos_embed.as_ref().map_or(0, tb)
            + self.embed_norm.as_ref().map_or(0, norm)
            + layers
            + norm(&self.final_norm)
            + self.lm_head.as_ref().map_or(0, lin)
    }

    /// Bytes of weights one decode step of a single sequence reads: every weight except the
    /// rows of the embedding tables it does not look up (the whole token table when it is also
    /// the LM head). Batch-1 decode speed is bounded by this over the memory bandwidth.
    pub fn decode_read_bytes(&self) -> usize {
        let tb = tensor_bytes;
        let unread = |t: &Tensor<B>| tb(t) - tb(t) / t.rows().max(1);
        let table = if self.lm_head.is_some() { unread(&self.embed) } else { 0 };
        self.weight_bytes() - table - self.pos_embed.as_ref().map_or(0, unread)
    }

    fn layout(&self) -> QkvLayout {
        let s = &self.spec;
        QkvLayout { q_heads: s.q_heads, kv_heads: s.kv_heads, head_dim: s.head_dim }
    }

    /// One forward pass over a packed batch.
    pub fn forward(&self, b: &B, step: &Step<B>, kv: &mut [KvPages<B>], ws: &mut Workspace<B>) -> Result<()> {
        let s = &self.spec;
        let o = &self.opts;
        let (t, h) = (step.ids.shape().numel(), s.hidden);
        let l = self.layout();
        let mut x = ws.take(b, "x", t, h)?;
        let mut xn = ws.take(b, "xn", t, h)?;
        let mut xn2 = ws.take(b, "xn2", t, h)?;
        let mut tmp = ws.take(b, "tmp", t, h)?;
        let mut tmp2 = ws.take(b, "tmp2", t, h)?;
        let mut qkv = ws.take(b, "qkv", t, l.width())?;
        let mut attn = ws.take(b, "attn", t, s.q_heads * s.head_dim)?;
        b.gather_rows(&self.embed, &step.ids, o.embed_scale, false, &mut x)?;
        if let Some(pe) = &self.pos_embed {
            b.gather_rows(pe, &step.meta.positions, 1.0, true, &mut x)?;
        }
        if let Some(n) = &self.embed_norm {
            b.norm(&x, &n.w, n.b.as_ref(), o.norm, Resid::None, &mut xn)?;
            std::mem::swap(&mut x, &mut xn);
        }
        let observe = |i: usize, role: Role, x: &Tensor<B>| match &self.observer {
            Some(o) => o.input(b, i, role, x),
            None => Ok(()),
        };
        for (i, (layer, pages)) in self.layers.iter().zip(kv.iter_mut()).enumerate() {
            let f = layer.down.w.cols();
            let mut hid = ws.take(b, "mlp_hidden", t, f)?;
            let norm = |n: &Norm<B>, src: &Tensor<B>, dst: &mut Tensor<B>| {
                b.norm(src, &n.w, n.b.as_ref(), o.norm, Resid::None, dst)
            };
            norm(&layer.attn_norm, &x, &mut xn)?;
            let parallel_mlp_norm = o.parallel && layer.mlp_norm.is_some();
            if let (true, Some(n)) = (parallel_mlp_norm, &layer.mlp_norm) {
                norm(n, &x, &mut xn2)?;
            }
            observe(i, Role::Qkv, &xn)?;
            b.matmul(&xn, &layer.qkv.w, layer.qkv.epilogue(), &mut qkv)?;
            if let Some((wq, wk)) = &layer.qk_norm {
                b.head_norm(&mut qkv, l, wq, wk, o.norm)?;
            }
            match layer.rope {
                Some(r) => b.rope_store(&mut qkv, &self.ropes[r], l, &step.meta, pages)?,
                None => b.kv_store(&qkv, l, &step.meta, pages)?,
            }
            if let Some(obs) = &self.observer {
                obs.qkv(b, i, &qkv)?;
            }
            let p = AttnParams { scale: o.attn_scale, window: layer.window, alibi: o.alibi };
            b.paged_attention(&qkv, l, pages, &step.meta, &p, &mut attn)?;
            observe(i, Role::AttnOut, &attn)?;
            self.branch_out(b, &attn, &layer.o, layer.post_attn_norm.as_ref(), &mut x, &mut tmp, &mut tmp2)?;
            let mlp_in = if o.parallel {
                if parallel_mlp_norm {
                    &xn2
                } else {
                    &xn
                }
            } else {
                let n = layer
                    .mlp_norm
                    .as_ref()
                    .ok_or_else(|| ModelError::Config("sequential block without an MLP norm".into()))?;
                norm(n, &x, &mut xn)?;
                &xn
            };
            observe(i, Role::Up, mlp_in)?;
            // Gated: the stacked gate/up product gives act(gate) * up directly.
            let epi = Epilogue { act: Some(o.act), gated: o.gated, ..layer.up.epilogue() };
            b.matmul(mlp_in, &layer.up.w, epi, &mut hid)?;
            observe(i, Role::Down, &hid)?;
            self.branch_out(b, &hid, &layer.down, layer.post_mlp_norm.as_ref(), &mut x, &mut tmp, &mut tmp2)?;
            ws.put("mlp_hidden", hid);
        }
        let r = step.logit_rows.shape().numel();
        let mut last = ws.take(b, "last", r, h)?;
        let mut lastn = ws.take(b, "last_norm", r, h)?;
        let mut logits = ws.take(b, "logits", r, s.vocab)?;
        b.gather_rows(&x, &step.logit_rows, 1.0, false, &mut last)?;
        let fin = &self.final_norm;
        b.norm(&last, &fin.w, fin.b.as_ref(), o.norm, Resid::None, &mut lastn)?;
        match &self.lm_head {
            Some(lm) => b.matmul(&lastn, &lm.w, lm.epilogue(), &mut logits)?,
            None => b.matmul(&lastn, &self.embed, Epilogue::none(), &mut logits)?,
        }
        for (name, tensor) in
            [("x", x), ("xn", xn), ("xn2", xn2), ("tmp", tmp), ("tmp2", tmp2), ("qkv", qkv), ("attn", attn)]
        {
            ws.put(name, tensor);
        }
        ws.put("last", last);
        ws.put("last_norm", lastn);
        ws.put("logits", logits);
        Ok(())
    }

    /// Projects a branch (`input · projᵀ`) and adds it to the residual `x`, through the
    /// post-branch norm when there is one (`tmp` and `tmp2` are scratch).
    #[allow(clippy::too_many_arguments)]
    fn branch_out(
        &self,
        b: &B,
        input: &Tensor<B>,
        proj: &Linear<B>,
        post: Option<&Norm<B>>,
        x: &mut Tensor<B>,
        tmp: &mut Tensor<B>,
        tmp2: &mut Tensor<B>,
    ) -> Result<()> {
        match post {
            None => {
                let epi = Epilogue { accumulate: true, ..proj.epilogue() };
                b.matmul(input, &proj.w, epi, x)?;
            }
            Some(n) => {
                b.matmul(input, &proj.w, proj.epilogue(), tmp)?;
                b.norm(tmp, &n.w, n.b.as_ref(), self.opts.norm, Resid::After(x), tmp2)?;
            }
        }
        Ok(())
    }
}

/// The configuration keys the Llama-style families share (`hidden_size`, `num_attention_heads`,
/// …), read into a [`ModelSpec`] plus the MLP width, norm epsilon and rotary settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CommonConfig {
    /// Spec.
    pub spec: ModelSpec,
    /// MLP width.
    pub intermediate: usize,
    /// Norm epsilon (`rms_norm_eps`, `layer_norm_eps`, `layer_norm_epsilon`).
    pub eps: f32,
    /// Rotary settings over the whole head.
    pub rope: RopeSpec,
    /// `tie_word_embeddings` (default as given).
    pub tied: bool,
}

impl CommonConfig {
    /// Reads the common keys; `tied_default` is the family's default for `tie_word_embeddings`.
    pub fn from_hf(cfg: &HfConfig, tied_default: bool) -> Result<Self> {
        let arch = cfg.arch()?.to_string();
        let hidden = cfg.usize("hidden_size")?;
        let q_heads = cfg.usize("num_attention_heads")?;
        let kv_heads = cfg.opt_usize("num_key_value_heads")?.unwrap_or(q_heads);
        check_heads(q_heads, kv_heads)?;
        let head_dim = match cfg.opt_usize("head_dim")? {
            Some(d) => d,
            None if hidden % q_heads == 0 => hidden / q_heads,
            None => {
                return Err(ModelError::Config(format!("hidden_size {hidden} is not divisible by {q_heads} heads")))
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(ModelError::Config(format!("head_dim {head_dim} must be even and positive")));
        }
        let spec = ModelSpec {
            arch,
            hidden,
            layers: cfg.usize("num_hidden_layers")?,
            q_heads,
            kv_heads,
            head_dim,
            vocab: cfg.usize("vocab_size")?,
            max_positions: cfg.opt_usize("max_position_embeddings")?.unwrap_or(2048),
            bos: cfg.bos(),
            eos: cfg.eos(),
        };
        let eps = ["rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon"]
            .iter()
            .find_map(|k| cfg.opt_f64(k).transpose())
            .transpose()?
            .unwrap_or(1e-6) as f32;
        // Partial rotary: `partial_rotary_factor` (transformers) or `rotary_pct` (GPT-NeoX).
        // transformers 5 moves it into `rope_parameters`.
        let nested = cfg.get("rope_parameters").and_then(|p| p.get("partial_rotary_factor")).and_then(|v| v.as_f64());
        let frac = match (cfg.opt_f64("partial_rotary_factor")?, nested) {
            (Some(f), _) | (None, Some(f)) => f,
            (None, None) => cfg.opt_f64("rotary_pct")?.unwrap_or(1.0),
        };
        if !(frac > 0.0 && frac <= 1.0) {
            return Err(ModelError::Config(format!("partial_rotary_factor {frac} must be in (0, 1]")));
        }
        let rot_dim = ((head_dim as f64 * frac) as usize) & !1;
        Ok(CommonConfig {
            intermediate: cfg.usize("intermediate_size")?,
            eps,
            rope: RopeSpec::from_hf(cfg, rot_dim)?,
            tied: cfg.opt_bool("tie_word_embeddings")?.unwrap_or(tied_default),
            spec,
        })
    }
}

/// Checks that query heads split evenly over key/value heads.
pub fn check_heads(q_heads: usize, kv_heads: usize) -> Result<()> {
    if q_heads == 0 || kv_heads == 0 || q_heads % kv_heads != 0 {
        return Err(ModelError::Config(format!(
            "num_attention_heads {q_heads} must be a positive multiple of num_key_value_heads {kv_heads}"
        )));
    }
    Ok(())
}

/// Reads the activation at `key`, failing with a message naming the key when it is unknown.
pub fn activation(cfg: &HfConfig, key: &str, default: Act) -> Result<Act> {
    match cfg.opt_str(key) {
        None => Ok(default),
        Some(name) => Act::from_hf(name).ok_or_else(|| {
            ModelError::Config(format!(
                "{key} {name:?} is not supported (silu, gelu, gelu_new, gelu_pytorch_tanh, relu are)"
            ))
        }),
    }
}

/// The projections of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The fused query/key/value projection (`qkv`).
    Qkv,
    /// The attention output projection (`o`).
    AttnOut,
    /// The MLP up projection, gate and up together when gated (`up`).
    Up,
    /// The MLP down projection (`down`).
    Down,
}

impl Role {
    /// Every role with its name in precision exceptions (`qkv`, `o`, `up`, `down`).
    pub const NAMES: [(&'static str, Role); 4] =
        [("qkv", Role::Qkv), ("o", Role::AttnOut), ("up", Role::Up), ("down", Role::Down)];
}

/// Bytes a tensor's values take in memory.
pub fn tensor_bytes<B: Ops>(t: &Tensor<B>) -> usize {
    let n = t.shape().numel();
    t.dtype().bytes_for(n).unwrap_or(n * 4)
}
