//! Ternary weights from either checkpoint form, as plain values before upload.
//!
//! - Offline (packed, the 2B-4T repo): `weight` uint8 `[out/4, in]`, where the byte at `(r, c)`
//!   holds rows `r, r+R, r+2R, r+3R` (`R = out/4`) of column `c` in bits 0-1, 2-3, 4-5, 6-7 as
//!   codes `t + 1`; plus `weight_scale` (`[1]` or `[]`), a multiplier for `autobitlinear` and a
//!   divisor for `bitlinear`.
//! - Online (latent, the 2B-4T-bf16 repo): `weight` float `[out, in]`, ternarized once here with
//!   HF's `WeightQuant`: `scale = 1 / max(mean|W|, 1e-5)`, `t = clamp(round_half_even(W * scale),
//!   -1, 1)`, and the layer multiplies by `1 / scale`.

use safetensors::Dtype;

use crate::checkpoint::{Weights, check_shape, to_f32};
use crate::config::{BitNetConfig, LinearClass, QuantizationMode};
use crate::error::{Error, Result};

/// How the per-tensor scale applies to the integer product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleRule {
    /// `y = acc / s * scale` (AutoBitLinear).
    Multiply,
    /// `y = acc / (scale * s)` (BitLinear).
    Divide,
}

/// A ternary matrix `[out, in]` and its scale.
#[derive(Clone, Debug, PartialEq)]
pub struct TernaryWeight {
    pub out_features: usize,
    pub in_features: usize,
    /// Row-major `[out, in]`, values in {-1, 0, 1}.
    pub values: Vec<i8>,
    pub scale: f32,
    pub rule: ScaleRule,
}

impl TernaryWeight {
    /// Loads `<prefix>.weight` (+ `weight_scale`) in the form `cfg` declares.
    pub fn load(
        w: &Weights<'_>,
        out_features: usize,
        in_features: usize,
        cfg: &BitNetConfig,
    ) -> Result<Self> {
        let t = match cfg.quantization_mode {
            QuantizationMode::Offline => {
                Self::load_packed(w, out_features, in_features, cfg.linear_class)
            }
            QuantizationMode::Online => Self::load_latent(w, out_features, in_features),
        }?;
        // Converted: the checkpoint bytes need not stay resident.
        w.ckpt.release(&w.name("weight"));
        Ok(t)
    }

    fn load_packed(w: &Weights<'_>, out: usize, inp: usize, class: LinearClass) -> Result<Self> {
        let name = w.name("weight");
        if !out.is_multiple_of(4) {
            return Err(Error::TensorShape {
                name,
                expected: vec![out.div_ceil(4), inp],
                found: vec![out, inp],
            });
        }
        let t = w.get("weight")?;
        if t.dtype != Dtype::U8 {
            // A float weight here means a latent checkpoint whose config says offline.
            return Err(Error::TensorDtype {
                name,
                expected: "U8 (packed ternary, quantization_mode offline)".into(),
                found: format!("{:?}", t.dtype),
            });
        }
        check_shape(&name, t.shape, &[out / 4, inp])?;
        let rows = out / 4;
        // A code 3 (both bits of a pair set) is not a ternary value; checked in one pass that
        // vectorizes, then located for the message.
        let bad = t.data[..rows * inp]
            .iter()
            .fold(0u8, |acc, &b| acc | (b & (b >> 1) & 0x55));
        if bad != 0 {
            let at = t.data[..rows * inp]
                .iter()
                .position(|&b| b & (b >> 1) & 0x55 != 0)
                .unwrap_or(0);
            return Err(Error::TensorValue {
                name,
                reason: format!(
                    "packed byte ({}, {}) holds code 3, which is not a ternary value",
                    at / inp,
                    at % inp
                ),
            });
        }
        // Byte (r, c) holds rows i * rows + r (bits 2i..2i+1) of column c: unpack one
        // destination row at a time so both sides stream.
        let mut values = vec![0i8; out * inp];
        for (dst_row, dst) in values.chunks_exact_mut(inp.max(1)).enumerate() {
            let (i, r) = (dst_row / rows, dst_row % rows);
            let src = &t.data[r * inp..(r + 1) * inp];
            for (d, &b) in dst.iter_mut().zip(src) {
                *d = ((b >> (2 * i)) & 3) as i8 - 1;
            }
        }
        let scale_name = w.name("weight_scale");
        let s = w.get("weight_scale")?;
        if s.shape.iter().product::<usize>() != 1 {
            return Err(Error::TensorShape {
                name: scale_name,
                expected: vec![1],
                found: s.shape.to_vec(),
            });
        }
        let scale = to_f32(&scale_name, &s)?[0];
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::TensorValue {
                name: scale_name,
                reason: format!("scale {scale} must be finite and positive"),
            });
        }
        let rule = match class {
            LinearClass::AutoBitLinear => ScaleRule::Multiply,
            LinearClass::BitLinear => ScaleRule::Divide,
        };
        Ok(Self {
            out_features: out,
            in_features: inp,
            values,
            scale,
            rule,
        })
    }

    fn load_latent(w: &Weights<'_>, out: usize, inp: usize) -> Result<Self> {
        let name = w.name("weight");
        let t = w.get("weight")?;
        if t.dtype == Dtype::U8 {
            return Err(Error::TensorDtype {
                name,
                expected: "BF16/F16/F32 (latent weights, quantization_mode online)".into(),
                found: "U8".into(),
            });
        }
        check_shape(&name, t.shape, &[out, inp])?;
        let latent = to_f32(&name, &t)?;
        Ok(Self::ternarize(&latent, out, inp))
    }

    /// HF's `WeightQuant` on latent weights (f32 arithmetic; the mean accumulates in f64 and
    /// rounds once, the closest f32 to the exact mean).
    pub fn ternarize(latent: &[f32], out: usize, inp: usize) -> Self {
        let mean = (latent.iter().map(|&x| x.abs() as f64).sum::<f64>()
            / latent.len().max(1) as f64) as f32;
        let scale = 1.0f32 / mean.max(1e-5);
        let values = latent
            .iter()
            .map(|&x| (x * scale).round_ties_even().clamp(-1.0, 1.0) as i8)
            .collect();
        Self {
            out_features: out,
            in_features: inp,
            values,
            scale: 1.0 / scale,
            rule: ScaleRule::Multiply,
        }
    }

    /// Reorders the rows of a Q or K projection from HF's rotate-half order to the interleaved
    /// pairs `rotary_embedding_llama` rotates (tt_transformers' `reverse_permute`): within each
    /// head, row `i` goes to `2i` and row `i + head_dim/2` to `2i + 1`. Attention scores are
    /// unchanged because Q and K are permuted alike.
    pub fn permute_for_rope(&mut self, head_dim: usize) {
        self.values = permute_rows_for_rope(&self.values, self.in_features, head_dim);
    }
}

/// See [`TernaryWeight::permute_for_rope`]; works on any row-major `[heads * head_dim, cols]`.
pub fn permute_rows_for_rope<T: Copy>(rows: &[T], cols: usize, head_dim: usize) -> Vec<T> {
    let mut out = rows.to_vec();
    let half = head_dim / 2;
    let n_rows = rows.len() / cols.max(1);
    for h in 0..n_rows / head_dim {
        for i in 0..half {
            let base = h * head_dim;
            for (dst, src) in [
                (base + 2 * i, base + i),
                (base + 2 * i + 1, base + half + i),
            ] {
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&rows[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ternarize_matches_weight_quant() {
        // mean |W| = 0.25 -> scale 4: 0.125*4 = 0.5 ties to 0; 0.375*4 = 1.5 -> 2 -> clamp 1.
        let w = [0.125f32, -0.375, 0.25, -0.25, 0.0, 0.5];
        let t = TernaryWeight::ternarize(&w, 2, 3);
        assert_eq!(t.values, vec![0, -1, 1, -1, 0, 1]);
        assert_eq!(t.scale, 0.25);
        let z = TernaryWeight::ternarize(&[0.0; 4], 2, 2);
        assert_eq!(z.values, vec![0; 4]);
        assert_eq!(z.scale, 1e-5);
    }

    #[test]
    fn rope_permutation_interleaves_halves() {
        // Two heads of head_dim 4, one column: rows [a0 a1 b0 b1 | c0 c1 d0 d1].
        let rows = [0, 1, 2, 3, 10, 11, 12, 13];
        assert_eq!(
            permute_rows_for_rope(&rows, 1, 4),
            vec![0, 2, 1, 3, 10, 12, 11, 13]
        );
    }
}
