//! Sampling parameters and how they map onto TT-NN's on-device `sampling` op.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How to choose each next token. `temperature == 0` (or `top_k == 1`) is greedy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0: no limit beyond the candidate set of 32).
    pub top_k: u32,
    /// Keep the smallest set of tokens whose probability exceeds `top_p` (1: all).
    pub top_p: f32,
    /// Seed of this sequence's random stream.
    pub seed: u32,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

/// Candidates the device sampler draws from (tt_transformers' `max_top_k`).
pub const MAX_TOP_K: u32 = 32;

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        Self::default()
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// Rejects values out of range, naming the parameter.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Sampling {
                name: "temperature",
                reason: format!("{} must be >= 0", self.temperature),
            });
        }
        if !(self.top_p.is_finite() && self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::Sampling {
                name: "top_p",
                reason: format!("{} must be in (0, 1]", self.top_p),
            });
        }
        if self.top_k > MAX_TOP_K {
            return Err(Error::Sampling {
                name: "top_k",
                reason: format!(
                    "{} exceeds the {MAX_TOP_K} candidates sampled on the device",
                    self.top_k
                ),
            });
        }
        Ok(())
    }

    /// The `(k, p, temp)` values of TT-NN's `sampling` op: `temp` is the inverse temperature;
    /// greedy becomes `k = 1` (tt_transformers' `format_sampling_params`).
    pub fn device_values(&self) -> (u32, f32, f32) {
        if self.is_greedy() {
            (1, 1.0, 1.0)
        } else {
            (
                if self.top_k == 0 {
                    MAX_TOP_K
                } else {
                    self.top_k
                },
                self.top_p,
                1.0 / self.temperature,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_parameter() {
        let bad = SamplingParams {
            temperature: -1.0,
            ..Default::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("temperature")
        );
        let bad = SamplingParams {
            top_p: 0.0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("top_p"));
        let bad = SamplingParams {
            top_k: 64,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("top_k"));
        assert_eq!(SamplingParams::greedy().device_values(), (1, 1.0, 1.0));
        let s = SamplingParams {
            temperature: 0.5,
            top_k: 0,
            top_p: 0.9,
            seed: 1,
        };
        assert_eq!(s.device_values(), (32, 0.9, 2.0));
    }
}
