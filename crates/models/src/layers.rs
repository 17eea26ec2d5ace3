//! The pre-norm decoder shared by the Llama family (Llama, Mistral, Qwen2): RMSNorm, fused QKV
//! projection (optional bias), rotary embedding, paged attention (optional sliding window),
//! SwiGLU MLP, tied or separate LM head.

use turbine_core::{Act, AttnParams, Epilogue, KvPages, NormKind, Ops, QkvLayout, RopeTable, Tensor};

use crate::config::HfConfig;
use crate::model::{ModelSpec, Step, Workspace};
use crate::rope::RopeSpec;
use crate::weights::Weights;
use crate::{ModelError, Result};

/// Settings of a Llama-family decoder, read from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderSpec {
    /// The part every model has.
    pub base: ModelSpec,
    /// MLP width.
    pub intermediate: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// Rotary settings.
    pub rope: RopeSpec,
    /// Sliding attention window, if any.
    pub window: Option<usize>,
    /// Whether the LM head is the embedding matrix.
    pub tied: bool,
}

impl DecoderSpec {
    /// Reads the Llama-family keys; `tied_default` is the architecture's default for
    /// `tie_word_embeddings`, `window` the sliding window it uses (if any).
    pub fn from_hf(cfg: &HfConfig, tied_default: bool, window: Option<usize>) -> Result<Self> {
        let arch = cfg.arch()?.to_string();
        let hidden = cfg.usize("hidden_size")?;
        let q_heads = cfg.usize("num_attention_heads")?;
        let kv_heads = cfg.opt_usize("num_key_value_heads")?.unwrap_or(q_heads);
        if q_heads == 0 || kv_heads == 0 || q_heads % kv_heads != 0 {
            return Err(ModelError::Config(format!(
                "num_attention_heads {q_heads} must be a positive multiple of num_key_value_heads {kv_heads}"
            )));
        }
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
        if let Some(act) = cfg.opt_str("hidden_act") {
            if act != "silu" {
                return Err(ModelError::Config(format!("hidden_act {act:?} is not supported for {arch} (silu is)")));
            }
        }
        let mut eos = cfg.ids("eos_token_id");
        eos.dedup();
        let base = ModelSpec {
            arch,
            hidden,
            layers: cfg.usize("num_hidden_layers")?,
            q_heads,
            kv_heads,
            head_dim,
            vocab: cfg.usize("vocab_size")?,
            max_positions: cfg.opt_usize("max_position_embeddings")?.unwrap_or(2048),
            bos: cfg.ids("bos_token_id").first().copied(),
            eos,
        };
        Ok(DecoderSpec {
            intermediate: cfg.usize("intermediate_size")?,
            rms_eps: cfg.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope: RopeSpec::from_hf(cfg, head_dim)?,
            window: window.filter(|&w| w > 0),
            tied: cfg.opt_bool("tie_word_embeddings")?.unwrap_or(tied_default),
            base,
        })
    }

    fn layout(&self) -> QkvLayout {
        QkvLayout { q_heads: self.base.q_heads, kv_heads: self.base.kv_heads, head_dim: self.base.head_dim }
    }
}

struct Block<B: Ops> {
    ln1: Tensor<B>,
    wqkv: Tensor<B>,
    bqkv: Option<Tensor<B>>,
    wo: Tensor<B>,
    ln2: Tensor<B>,
    w_gate_up: Tensor<B>,
    w_down: Tensor<B>,
}

/// The Llama-family decoder.
pub struct Decoder<B: Ops> {
    spec: DecoderSpec,
    embed: Tensor<B>,
    layers: Vec<Block<B>>,
    norm: Tensor<B>,
    lm_head: Option<Tensor<B>>,
    rope: RopeTable<B>,
}

impl<B: Ops> Decoder<B> {
    /// Loads the weights (Hugging Face names), fusing Q/K/V and gate/up.
    pub fn load(spec: DecoderSpec, w: &Weights<'_, B>) -> Result<Self> {
        let s = &spec.base;
        let (h, f, d) = (s.hidden, spec.intermediate, s.head_dim);
        let (qd, kd) = (s.q_heads * d, s.kv_heads * d);
        let embed = w.get("model.embed_tokens.weight", &[s.vocab, h])?;
        let layers = (0..s.layers)
            .map(|i| {
                let p = |n: &str| format!("model.layers.{i}.{n}");
                let (q, k, v) = (p("self_attn.q_proj"), p("self_attn.k_proj"), p("self_attn.v_proj"));
                Ok(Block {
                    ln1: w.get(&p("input_layernorm.weight"), &[h])?,
                    wqkv: w.fused(&[
                        (&format!("{q}.weight"), &[qd, h]),
                        (&format!("{k}.weight"), &[kd, h]),
                        (&format!("{v}.weight"), &[kd, h]),
                    ])?,
                    bqkv: w.fused_opt(&[
                        (&format!("{q}.bias"), &[qd]),
                        (&format!("{k}.bias"), &[kd]),
                        (&format!("{v}.bias"), &[kd]),
                    ])?,
                    wo: w.get(&p("self_attn.o_proj.weight"), &[h, qd])?,
                    ln2: w.get(&p("post_attention_layernorm.weight"), &[h])?,
                    w_gate_up: w
                        .fused(&[(&p("mlp.gate_proj.weight"), &[f, h]), (&p("mlp.up_proj.weight"), &[f, h])])?,
                    w_down: w.get(&p("mlp.down_proj.weight"), &[h, f])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let norm = w.get("model.norm.weight", &[h])?;
        let lm_head = if spec.tied { None } else { Some(w.get("lm_head.weight", &[s.vocab, h])?) };
        let rope = spec.rope.table(w.backend(), s.max_positions)?;
        Ok(Decoder { spec, embed, layers, norm, lm_head, rope })
    }

    /// The normalised spec.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec.base
    }

    /// One forward pass over a packed batch.
    pub fn forward(&self, b: &B, step: &Step<B>, kv: &mut [KvPages<B>], ws: &mut Workspace<B>) -> Result<()> {
        let s = &self.spec.base;
        let (t, h, f) = (step.ids.shape().numel(), s.hidden, self.spec.intermediate);
        let l = self.spec.layout();
        let norm = NormKind::Rms { eps: self.spec.rms_eps, offset: 0.0 };
        let attn_p = AttnParams { scale: 1.0 / (s.head_dim as f32).sqrt(), window: self.spec.window };
        let mut x = ws.take(b, "x", t, h)?;
        let mut xn = ws.take(b, "xn", t, h)?;
        let mut qkv = ws.take(b, "qkv", t, l.width())?;
        let mut attn = ws.take(b, "attn", t, s.q_heads * s.head_dim)?;
        let mut gu = ws.take(b, "gate_up", t, 2 * f)?;
        let mut act = ws.take(b, "act", t, f)?;
        b.gather_rows(&self.embed, &step.ids, &mut x)?;
        for (blk, pages) in self.layers.iter().zip(kv.iter_mut()) {
            b.norm(&x, &blk.ln1, None, norm, None, &mut xn)?;
            b.matmul(&xn, &blk.wqkv, Epilogue::bias(blk.bqkv.as_ref()), &mut qkv)?;
            b.rope(&mut qkv, &step.meta.positions, &self.rope, l)?;
            b.kv_store(&qkv, l, &step.meta, pages)?;
            b.paged_attention(&qkv, l, pages, &step.meta, &attn_p, &mut attn)?;
            b.matmul(&attn, &blk.wo, Epilogue::accumulate(), &mut x)?;
            b.norm(&x, &blk.ln2, None, norm, None, &mut xn)?;
            b.matmul(&xn, &blk.w_gate_up, Epilogue::none(), &mut gu)?;
            b.gated_act(&gu, Act::Silu, &mut act)?;
            b.matmul(&act, &blk.w_down, Epilogue::accumulate(), &mut x)?;
        }
        let r = step.logit_rows.shape().numel();
        let mut last = ws.take(b, "last", r, h)?;
        let mut lastn = ws.take(b, "last_norm", r, h)?;
        let mut logits = ws.take(b, "logits", r, s.vocab)?;
        b.gather_rows(&x, &step.logit_rows, &mut last)?;
        b.norm(&last, &self.norm, None, norm, None, &mut lastn)?;
        b.matmul(&lastn, self.lm_head.as_ref().unwrap_or(&self.embed), Epilogue::none(), &mut logits)?;
        for (name, tensor) in [("x", x), ("xn", xn), ("qkv", qkv), ("attn", attn), ("gate_up", gu), ("act", act)] {
            ws.put(name, tensor);
        }
        ws.put("last", last);
        ws.put("last_norm", lastn);
        ws.put("logits", logits);
        Ok(())
    }
}
