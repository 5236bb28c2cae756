//! Shared helpers for `ttnn`'s integration tests: a device, uploads, comparisons, random data.
#![allow(dead_code)]

use ttnn::{DataType, Device, DeviceSpec, Layout, MemoryConfig, Shape, Tensor};

/// A host-backend device modelling a Wormhole n150, two kernel threads (so the parallel paths
/// run even on one core).
pub fn device() -> Device {
    Device::open(DeviceSpec::default().with_threads(2)).expect("open host device")
}

/// Uploads f32 `values` as `dtype`/`layout` under `mc`.
pub fn upload(
    device: &Device,
    values: &[f32],
    shape: &[usize],
    dtype: DataType,
    layout: Layout,
    mc: &MemoryConfig,
) -> Tensor {
    Tensor::from_slice(values, Shape::new(shape), dtype, layout)
        .expect("host tensor")
        .to_device(device, mc)
        .expect("to_device")
}

/// Uploads f32 values as a Float32 tile tensor in DRAM.
pub fn upload_f32(device: &Device, values: &[f32], shape: &[usize]) -> Tensor {
    upload(
        device,
        values,
        shape,
        DataType::Float32,
        Layout::Tile,
        &ttnn::DRAM_MEMORY_CONFIG,
    )
}

/// Asserts `|got - want| <= atol + rtol * |want|` elementwise, naming the first failure.
pub fn assert_close(got: &[f32], want: &[f64], atol: f64, rtol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(
            err <= atol + rtol * w.abs(),
            "{what}: element {i}: got {g}, want {w} (|diff| {err:e} > atol {atol:e} + rtol {rtol:e} * |want|)"
        );
    }
}

/// Deterministic pseudo-random numbers for test data (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// `n` values uniform in [-scale, scale).
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }

    /// Uniform integer in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
