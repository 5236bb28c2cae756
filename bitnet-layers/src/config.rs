//! `BitNetConfig`: `config.json` of a BitNet b1.58 checkpoint, parsed (serde) and validated.
//!
//! Both spellings are read: the 2B-4T files written by transformers 4.x (top-level `rope_theta`,
//! `torch_dtype`) and transformers 5 (`rope_parameters: {rope_type, rope_theta}`, `dtype`).

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// How the checkpoint's linear layers are quantized (HF `BitNetQuantConfig.linear_class`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinearClass {
    /// `AutoBitLinear`: `y = linear(ActQuant(x), T) * weight_scale` (scale = absmean(W), ≪ 1).
    AutoBitLinear,
    /// `BitLinear`: `y = linear(q, T) / (weight_scale * s)` (scale = 1/absmean(W), ≫ 1).
    BitLinear,
}

/// Whether the checkpoint holds packed ternary weights or latent full-precision ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantizationMode {
    /// uint8 `[out/4, in]` packed ternary codes plus `weight_scale` (the 2B-4T repo).
    Offline,
    /// Latent bf16/f32 weights, ternarized once at load with absmean (the 2B-4T-bf16 repo).
    Online,
}

/// The validated model configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct BitNetConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f32,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub linear_class: LinearClass,
    pub quantization_mode: QuantizationMode,
    /// `torch_dtype` / `dtype` as written (informational; the host computes in f32).
    pub torch_dtype: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize)]
struct RawRope {
    rope_type: Option<String>,
    rope_theta: Option<f64>,
}

#[derive(Deserialize)]
struct RawQuant {
    quant_method: Option<String>,
    linear_class: Option<String>,
    quantization_mode: Option<String>,
}

#[derive(Deserialize)]
struct RawConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<RawRope>,
    rope_scaling: Option<serde_json::Value>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    quantization_config: Option<RawQuant>,
}

fn required(v: Option<usize>, field: &str) -> Result<usize> {
    match v {
        Some(0) => Err(Error::config(field, "must be positive")),
        Some(n) => Ok(n),
        None => Err(Error::config(field, "missing")),
    }
}

impl BitNetConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(path.display().to_string(), format!("cannot read: {e}")))?;
        Self::from_json(&text)
    }

    /// Parses and validates the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| Error::config("config.json", e.to_string()))?;
        Self::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Self> {
        if let Some(mt) = &raw.model_type
            && mt != "bitnet"
        {
            return Err(Error::config(
                "model_type",
                format!("{mt:?} is not \"bitnet\""),
            ));
        }
        let hidden_size = required(raw.hidden_size, "hidden_size")?;
        let num_attention_heads = required(raw.num_attention_heads, "num_attention_heads")?;
        let num_key_value_heads = required(
            raw.num_key_value_heads.or(Some(num_attention_heads)),
            "num_key_value_heads",
        )?;
        if !num_attention_heads.is_multiple_of(num_key_value_heads) {
            return Err(Error::config(
                "num_key_value_heads",
                format!(
                    "{num_key_value_heads} does not divide num_attention_heads {num_attention_heads}"
                ),
            ));
        }
        let head_dim = match raw.head_dim {
            Some(h) => required(Some(h), "head_dim")?,
            None if hidden_size.is_multiple_of(num_attention_heads) => {
                hidden_size / num_attention_heads
            }
            None => {
                return Err(Error::config(
                    "hidden_size",
                    format!(
                        "{hidden_size} is not a multiple of num_attention_heads {num_attention_heads}"
                    ),
                ));
            }
        };
        if head_dim % 2 != 0 {
            return Err(Error::config(
                "head_dim",
                format!("{head_dim} must be even for RoPE"),
            ));
        }
        if let Some(act) = &raw.hidden_act
            && act != "relu2"
        {
            return Err(Error::config(
                "hidden_act",
                format!("{act:?} is not supported (BitNet uses \"relu2\")"),
            ));
        }
        if raw.attention_bias == Some(true) {
            return Err(Error::config(
                "attention_bias",
                "true is not supported (BitNet has no biases)",
            ));
        }
        if let Some(s) = &raw.rope_scaling
            && !s.is_null()
        {
            return Err(Error::config(
                "rope_scaling",
                format!("{s} is not supported (only default RoPE)"),
            ));
        }
        let rope_theta = match (&raw.rope_parameters, raw.rope_theta) {
            (Some(p), top) => {
                if let Some(t) = &p.rope_type
                    && t != "default"
                {
                    return Err(Error::config(
                        "rope_parameters.rope_type",
                        format!("{t:?} is not supported"),
                    ));
                }
                p.rope_theta.or(top).unwrap_or(500_000.0)
            }
            (None, Some(t)) => t,
            (None, None) => 500_000.0,
        };
        if !(rope_theta.is_finite() && rope_theta > 1.0) {
            return Err(Error::config(
                "rope_theta",
                format!("{rope_theta} must be a finite number > 1"),
            ));
        }
        let rms_norm_eps = raw.rms_norm_eps.unwrap_or(1e-5);
        if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
            return Err(Error::config(
                "rms_norm_eps",
                format!("{rms_norm_eps} must be positive"),
            ));
        }
        let q = raw.quantization_config.ok_or_else(|| {
            Error::config(
                "quantization_config",
                "missing: without it a BitNetForCausalLM is a plain full-precision model, not BitNet b1.58",
            )
        })?;
        match q.quant_method.as_deref() {
            Some("bitnet") => {}
            other => {
                return Err(Error::config(
                    "quantization_config.quant_method",
                    format!("{other:?} is not \"bitnet\""),
                ));
            }
        }
        let linear_class = match q.linear_class.as_deref() {
            Some("autobitlinear") => LinearClass::AutoBitLinear,
            None | Some("bitlinear") => LinearClass::BitLinear,
            Some(other) => {
                return Err(Error::config(
                    "quantization_config.linear_class",
                    format!("{other:?} is not supported (autobitlinear or bitlinear)"),
                ));
            }
        };
        let quantization_mode = match q.quantization_mode.as_deref() {
            None | Some("offline") => QuantizationMode::Offline,
            Some("online") => QuantizationMode::Online,
            Some(other) => {
                return Err(Error::config(
                    "quantization_config.quantization_mode",
                    format!("{other:?} is not supported (online or offline)"),
                ));
            }
        };
        if linear_class == LinearClass::BitLinear && quantization_mode == QuantizationMode::Online {
            return Err(Error::config(
                "quantization_config",
                "linear_class bitlinear with quantization_mode online is not a checkpoint form HF writes",
            ));
        }
        let eos_token_ids = match raw.eos_token_id {
            Some(OneOrMany::One(e)) => vec![e],
            Some(OneOrMany::Many(v)) => v,
            None => Vec::new(),
        };
        Ok(Self {
            vocab_size: required(raw.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: required(raw.intermediate_size, "intermediate_size")?,
            num_hidden_layers: required(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            max_position_embeddings: required(
                raw.max_position_embeddings.or(Some(2048)),
                "max_position_embeddings",
            )?,
            rms_norm_eps: rms_norm_eps as f32,
            rope_theta: rope_theta as f32,
            // HF's class default is false, but a BitNet checkpoint without lm_head.weight is tied;
            // the loader checks which one the file holds.
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            bos_token_id: raw.bos_token_id,
            eos_token_ids,
            linear_class,
            quantization_mode,
            torch_dtype: raw.torch_dtype.or(raw.dtype),
        })
    }

    /// Width of the fused Q|K|V projection.
    pub fn qkv_size(&self) -> usize {
        (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim
    }

    /// The BitNet b1.58 2B-4T shape (for synthetic checkpoints and planning).
    pub fn b1_58_2b_4t() -> Self {
        Self {
            vocab_size: 128256,
            hidden_size: 2560,
            intermediate_size: 6912,
            num_hidden_layers: 30,
            num_attention_heads: 20,
            num_key_value_heads: 5,
            head_dim: 128,
            max_position_embeddings: 4096,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            tie_word_embeddings: true,
            bos_token_id: Some(128000),
            eos_token_ids: vec![128001],
            linear_class: LinearClass::AutoBitLinear,
            quantization_mode: QuantizationMode::Offline,
            torch_dtype: Some("bfloat16".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TINY: &str = r#"{
        "architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "hidden_act": "relu2",
        "hidden_size": 256, "intermediate_size": 640, "num_attention_heads": 8,
        "num_hidden_layers": 4, "num_key_value_heads": 2, "vocab_size": 4000,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "tie_word_embeddings": true, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 2,
        "quantization_config": {"linear_class": "autobitlinear", "quant_method": "bitnet", "quantization_mode": "offline"}
    }"#;

    #[test]
    fn reads_the_2b4t_spelling() {
        let c = BitNetConfig::from_json(TINY).expect("valid");
        assert_eq!(c.head_dim, 32);
        assert_eq!(c.qkv_size(), (8 + 4) * 32);
        assert_eq!(c.rope_theta, 500000.0);
        assert_eq!(c.eos_token_ids, vec![2]);
        assert_eq!(c.linear_class, LinearClass::AutoBitLinear);
        assert_eq!(c.quantization_mode, QuantizationMode::Offline);
    }

    #[test]
    fn reads_the_transformers_5_spelling() {
        let t = TINY
            .replace(
                r#""rope_theta": 500000.0,"#,
                r#""rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},"#,
            )
            .replace(r#""torch_dtype""#, r#""dtype""#)
            .replace(r#""eos_token_id": 2"#, r#""eos_token_id": [2, 7]"#);
        let c = BitNetConfig::from_json(&t).expect("valid");
        assert_eq!(c.rope_theta, 10000.0);
        assert_eq!(c.torch_dtype.as_deref(), Some("bfloat16"));
        assert_eq!(c.eos_token_ids, vec![2, 7]);
    }

    #[test]
    fn unsupported_values_name_the_field() {
        let cases = [
            (
                r#""autobitlinear""#,
                r#""fancylinear""#,
                "quantization_config.linear_class",
            ),
            (
                r#""quantization_mode": "offline""#,
                r#""quantization_mode": "sometimes""#,
                "quantization_config.quantization_mode",
            ),
            (r#""relu2""#, r#""silu""#, "hidden_act"),
            (
                r#""bitnet", "hidden_act""#,
                r#""llama", "hidden_act""#,
                "model_type",
            ),
            (
                r#""num_key_value_heads": 2"#,
                r#""num_key_value_heads": 3"#,
                "num_key_value_heads",
            ),
            (
                r#""hidden_size": 256"#,
                r#""hidden_size": 0"#,
                "hidden_size",
            ),
            (
                r#""quant_method": "bitnet""#,
                r#""quant_method": "gptq""#,
                "quant_method",
            ),
        ];
        for (from, to, field) in cases {
            let t = TINY.replace(from, to);
            assert_ne!(t, TINY, "{from}");
            let e = BitNetConfig::from_json(&t).unwrap_err().to_string();
            assert!(e.contains(field), "{field}: {e}");
        }
        let no_quant = TINY
            .replace(r#""bos_token_id": 1,"#, "")
            .split(r#""quantization_config""#)
            .next()
            .map(|s| format!("{}\"bos_token_id\": 1}}", s));
        let e = BitNetConfig::from_json(&no_quant.expect("prefix"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("quantization_config") && e.contains("missing"),
            "{e}"
        );
        let e = BitNetConfig::from_json("{not json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.json"), "{e}");
    }
}
