//! `cargo xtask synth-model`: a random BitNet b1.58 checkpoint of a given shape, in the packed
//! offline `autobitlinear` format of the real 2B-4T repo (uint8 `[out/4, in]` + bf16
//! `weight_scale`, bf16 embeddings and norms, tied lm_head), loaded through the normal loader.
//! Speed does not depend on the weight values, so this is what the benchmarks run on.
//!
//! The safetensors file is written in one streaming pass (header first, then each tensor's bytes
//! as they are generated), so a 1.2 GB checkpoint needs no 1.2 GB buffer.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, bail};

/// A model shape.
#[derive(Clone, Copy, Debug)]
pub struct ModelShape {
    pub vocab: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
}

impl ModelShape {
    pub fn named(name: &str) -> anyhow::Result<Self> {
        Ok(match name {
            // BitNet b1.58 2B-4T.
            "2b4t" => Self {
                vocab: 128256,
                hidden: 2560,
                intermediate: 6912,
                layers: 30,
                heads: 20,
                kv_heads: 5,
            },
            // The same widths, 4 layers: quick runs of the real kernels.
            "2b4t-4l" => Self {
                vocab: 128256,
                hidden: 2560,
                intermediate: 6912,
                layers: 4,
                heads: 20,
                kv_heads: 5,
            },
            "small" => Self {
                vocab: 32000,
                hidden: 1024,
                intermediate: 2816,
                layers: 8,
                heads: 16,
                kv_heads: 4,
            },
            "tiny" => Self {
                vocab: 4000,
                hidden: 256,
                intermediate: 640,
                layers: 4,
                heads: 8,
                kv_heads: 2,
            },
            other => bail!("unknown shape {other:?} (2b4t, 2b4t-4l, small, tiny)"),
        })
    }

    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// SplitMix64: fast, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Roughly normal with standard deviation `std` (sum of uniforms).
    fn normal(&mut self, std: f32) -> f32 {
        let u: f32 = (0..4)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32)
            .sum();
        (u - 2.0) * std * 1.732
    }
}

enum Fill {
    /// bf16 values ~ N(0, std) + mean.
    Bf16 { std: f32, mean: f32 },
    /// Packed ternary codes (0, 1, 2 per 2 bits).
    Ternary,
    /// One bf16 scale.
    Scale,
}

struct Entry {
    name: String,
    dtype: &'static str,
    shape: Vec<usize>,
    fill: Fill,
}

impl Entry {
    fn bytes(&self) -> usize {
        let n: usize = self.shape.iter().product();
        match self.dtype {
            "U8" => n,
            _ => 2 * n,
        }
    }
}

fn entries(s: &ModelShape) -> Vec<Entry> {
    let (h, i, hd) = (s.hidden, s.intermediate, s.head_dim());
    let mut v = vec![Entry {
        name: "model.embed_tokens.weight".into(),
        dtype: "BF16",
        shape: vec![s.vocab, h],
        fill: Fill::Bf16 {
            std: 0.05,
            mean: 0.0,
        },
    }];
    let norm = |name: String, n: usize| Entry {
        name,
        dtype: "BF16",
        shape: vec![n],
        fill: Fill::Bf16 {
            std: 0.1,
            mean: 1.0,
        },
    };
    for l in 0..s.layers {
        let p = format!("model.layers.{l}");
        v.push(norm(format!("{p}.input_layernorm.weight"), h));
        v.push(norm(format!("{p}.post_attention_layernorm.weight"), h));
        v.push(norm(format!("{p}.self_attn.attn_sub_norm.weight"), h));
        v.push(norm(format!("{p}.mlp.ffn_sub_norm.weight"), i));
        for (name, out, inp) in [
            ("self_attn.q_proj", s.heads * hd, h),
            ("self_attn.k_proj", s.kv_heads * hd, h),
            ("self_attn.v_proj", s.kv_heads * hd, h),
            ("self_attn.o_proj", h, s.heads * hd),
            ("mlp.gate_proj", i, h),
            ("mlp.up_proj", i, h),
            ("mlp.down_proj", h, i),
        ] {
            v.push(Entry {
                name: format!("{p}.{name}.weight"),
                dtype: "U8",
                shape: vec![out / 4, inp],
                fill: Fill::Ternary,
            });
            v.push(Entry {
                name: format!("{p}.{name}.weight_scale"),
                dtype: "BF16",
                shape: vec![1],
                fill: Fill::Scale,
            });
        }
    }
    v.push(norm("model.norm.weight".into(), h));
    v
}

fn bf16_bytes(x: f32) -> [u8; 2] {
    // Round to nearest even on the top 16 bits.
    let b = x.to_bits();
    let r = b.wrapping_add(0x7fff + ((b >> 16) & 1));
    ((r >> 16) as u16).to_le_bytes()
}

/// Writes `config.json` and `model.safetensors` of a random model of `shape` into `out`.
pub fn synth_model(shape: &ModelShape, out: &Path, seed: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let config = serde_json::json!({
        "architectures": ["BitNetForCausalLM"],
        "model_type": "bitnet",
        "hidden_act": "relu2",
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "vocab_size": shape.vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "tie_word_embeddings": true,
        "torch_dtype": "bfloat16",
        "bos_token_id": 128000.min(shape.vocab - 1),
        "eos_token_id": 128001.min(shape.vocab - 1),
        "attention_bias": false,
        "quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"},
    });
    std::fs::write(
        out.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    let list = entries(shape);
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for e in &list {
        header.insert(
            e.name.clone(),
            serde_json::json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [offset, offset + e.bytes()]}),
        );
        offset += e.bytes();
    }
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "synthetic": "cargo xtask synth-model"}),
    );
    let mut json = serde_json::to_string(&header)?;
    // Pad the header so the data section is 8-byte aligned (as safetensors writers do).
    while (8 + json.len()) % 8 != 0 {
        json.push(' ');
    }
    let path = out.join("model.safetensors");
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::with_capacity(1 << 22, file);
    w.write_all(&(json.len() as u64).to_le_bytes())?;
    w.write_all(json.as_bytes())?;
    let mut rng = Rng(seed);
    let mut buf = Vec::with_capacity(1 << 20);
    for e in &list {
        let n: usize = e.shape.iter().product();
        let mut left = n;
        while left > 0 {
            let take = left.min(1 << 19);
            buf.clear();
            match e.fill {
                Fill::Bf16 { std, mean } => {
                    for _ in 0..take {
                        buf.extend_from_slice(&bf16_bytes(mean + rng.normal(std)));
                    }
                }
                Fill::Ternary => {
                    for _ in 0..take {
                        let r = rng.next();
                        let mut b = 0u8;
                        for k in 0..4 {
                            // Codes 0, 1, 2 (t = -1, 0, +1), about a third each.
                            b |= (((((r >> (16 * k)) & 0xffff) * 3) >> 16) as u8) << (2 * k);
                        }
                        buf.push(b);
                    }
                }
                Fill::Scale => {
                    for _ in 0..take {
                        buf.extend_from_slice(&bf16_bytes(
                            0.02 + 0.01 * (rng.next() >> 40) as f32 / (1u64 << 24) as f32,
                        ));
                    }
                }
            }
            w.write_all(&buf)?;
            left -= take;
        }
    }
    w.flush()?;
    eprintln!(
        "wrote {} ({} tensors, {} bytes of data)",
        path.display(),
        list.len(),
        offset
    );
    Ok(())
}
