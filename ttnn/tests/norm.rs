//! Integration tests for `rms_norm`.

mod common;

use common::{Rng, assert_close, device, upload};
use proptest::prelude::*;
use ttnn::ops::norm::{LayerNormProgramConfig, RmsNormArgs, rms_norm};
use ttnn::{
    BufferType, CoreCoord, CoreRange, CoreRangeSet, DRAM_MEMORY_CONFIG, DataType, Device,
    DeviceSpec, L1_MEMORY_CONFIG, L1_WIDTH_SHARDED_MEMORY_CONFIG, Layout, MemoryConfig,
    ShardOrientation, ShardSpec, Tensor, TensorMemoryLayout,
};

/// Naive f64 RMSNorm over the last dim: `w * (x / sqrt(mean(x^2) + eps)) + b`.
fn reference(
    x: &[f32],
    res: Option<&[f32]>,
    w: Option<&[f32]>,
    b: Option<&[f32]>,
    width: usize,
    eps: f32,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for (r, row) in x.chunks(width).enumerate() {
        let vals: Vec<f64> = row
            .iter()
            .enumerate()
            .map(|(i, &v)| v as f64 + res.map_or(0.0, |rr| rr[r * width + i] as f64))
            .collect();
        let ms = vals.iter().map(|v| v * v).sum::<f64>() / width as f64;
        let inv = 1.0 / (ms + eps as f64).sqrt();
        for (i, v) in vals.iter().enumerate() {
            let g = w.map_or(1.0, |w| w[i] as f64);
            let c = b.map_or(0.0, |b| b[i] as f64);
            out.push(g * (v * inv) + c);
        }
    }
    out
}

fn width_sharded(cores: usize, shard: [usize; 2]) -> MemoryConfig {
    MemoryConfig::sharded(
        TensorMemoryLayout::WidthSharded,
        BufferType::L1,
        ShardSpec::new(
            CoreRangeSet::num_cores_to_corerangeset(cores, CoreCoord::new(8, 8)),
            shard,
            ShardOrientation::RowMajor,
        ),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random shapes (widths not multiples of 32 included), f32/bf16 inputs, optional gamma (both
    /// TT layouts), beta and residual, against the f64 reference.
    ///
    /// Tolerances: f32 output — the host computes in f32 with a handful of roundings per value
    /// (residual add, square, mean, rsqrt, two products), each <= 2^-24 relative, so 1e-5
    /// relative plus 1e-5 absolute (for values near zero after cancellation in `x + res`) has a
    /// wide margin. bf16 output — one final rounding to 8 mantissa bits, <= 2^-9 relative, so
    /// 4e-3 relative plus the same small absolute slack. The reference reads the inputs back as
    /// stored (already rounded to bf16), so input rounding is not part of the error.
    #[test]
    fn matches_f64_reference(
        rows in 1usize..40,
        width in 1usize..200,
        bf16_in in any::<bool>(),
        gamma_kind in 0u8..3,
        with_beta in any::<bool>(),
        with_res in any::<bool>(),
        eps in prop_oneof![Just(1e-12f32), Just(1e-6f32), Just(1e-2f32)],
        seed in any::<u64>(),
    ) {
        let dev = device();
        let mut rng = Rng::new(seed);
        let dtype = if bf16_in { DataType::Bfloat16 } else { DataType::Float32 };
        let shape = [1, rows, width];
        let x = upload(&dev, &rng.vec(rows * width, 3.0), &shape, dtype, Layout::Tile, &DRAM_MEMORY_CONFIG);
        let res = with_res.then(|| upload(&dev, &rng.vec(rows * width, 2.0), &shape, dtype, Layout::Tile, &DRAM_MEMORY_CONFIG));
        let padded_w = width.div_ceil(32) * 32;
        let gvals = rng.vec(padded_w, 1.5);
        let gamma = match gamma_kind {
            // tt_transformers' layout: ROW_MAJOR [1, 1, padded / 32, 32].
            0 => Some(upload(&dev, &gvals, &[1, 1, padded_w / 32, 32], DataType::Bfloat16, Layout::RowMajor, &DRAM_MEMORY_CONFIG)),
            1 => Some(upload(&dev, &gvals[..width], &[1, 1, 1, width], DataType::Float32, Layout::Tile, &DRAM_MEMORY_CONFIG)),
            _ => None,
        };
        // Beta in gamma's layout (TT-NN requires them to match).
        let bvals = rng.vec(width, 0.5);
        let beta = with_beta.then(|| if gamma_kind == 1 {
            upload(&dev, &bvals, &[1, 1, 1, width], DataType::Float32, Layout::Tile, &DRAM_MEMORY_CONFIG)
        } else {
            upload(&dev, &bvals, &[width], DataType::Float32, Layout::RowMajor, &DRAM_MEMORY_CONFIG)
        });
        let args = RmsNormArgs {
            epsilon: eps,
            weight: gamma.as_ref(),
            bias: beta.as_ref(),
            residual_input_tensor: res.as_ref(),
            ..Default::default()
        };
        let out = rms_norm(&x, &args).expect("rms_norm");
        prop_assert_eq!(out.shape(), x.shape());
        prop_assert_eq!(out.dtype(), dtype);
        let xs = x.to_vec::<f32>().expect("x");
        let rs = res.as_ref().map(|r| r.to_vec::<f32>().expect("res"));
        let gs = gamma.as_ref().map(|g| g.to_vec::<f32>().expect("gamma")[..width].to_vec());
        let bs = beta.as_ref().map(|b| b.to_vec::<f32>().expect("beta"));
        let want = reference(&xs, rs.as_deref(), gs.as_deref(), bs.as_deref(), width, eps);
        let rtol = if bf16_in { 4e-3 } else { 1e-5 };
        assert_close(&out.to_vec::<f32>().expect("out"), &want, 1e-5, rtol, "rms_norm");
    }
}

/// The host formula is HF BitNet's in f32: normalize first, then scale by gamma.
#[test]
fn follows_hf_operation_order() {
    let dev = device();
    let w = 64;
    let mut rng = Rng::new(7);
    let xv = rng.vec(w, 10.0);
    let gv = rng.vec(w, 3.0);
    let x = upload(
        &dev,
        &xv,
        &[1, 1, 1, w],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let g = upload(
        &dev,
        &gv,
        &[1, 1, 2, 32],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let args = RmsNormArgs {
        epsilon: 1e-5,
        weight: Some(&g),
        ..Default::default()
    };
    let got = rms_norm(&x, &args)
        .expect("rms_norm")
        .to_vec::<f32>()
        .expect("out");
    // f32 as HF computes it: variance = mean(x^2); h = x * rsqrt(variance + eps); w * h.
    let sum: f64 = xv.iter().map(|&v| f64::from(v * v)).sum();
    let var = (sum / w as f64) as f32;
    let inv = 1.0 / (var + 1e-5f32).sqrt();
    let want: Vec<f32> = xv.iter().zip(&gv).map(|(&x, &g)| g * (x * inv)).collect();
    assert_eq!(got, want);
}

/// A row's result does not depend on how many rows are normalized together or on threads.
#[test]
fn batch_and_thread_invariant() {
    let (rows, w) = (64, 1024); // 64K values: above the parallel threshold
    let mut rng = Rng::new(11);
    let xv = rng.vec(rows * w, 4.0);
    let gv = rng.vec(w, 1.0);
    let run = |dev: &Device, rows: usize| {
        let x = upload(
            dev,
            &xv[..rows * w],
            &[1, 1, rows, w],
            DataType::Float32,
            Layout::Tile,
            &DRAM_MEMORY_CONFIG,
        );
        let g = upload(
            dev,
            &gv,
            &[1, 1, w / 32, 32],
            DataType::Float32,
            Layout::RowMajor,
            &DRAM_MEMORY_CONFIG,
        );
        let args = RmsNormArgs {
            epsilon: 1e-6,
            weight: Some(&g),
            ..Default::default()
        };
        rms_norm(&x, &args)
            .expect("rms_norm")
            .to_vec::<f32>()
            .expect("out")
    };
    let one = Device::open(DeviceSpec::default().with_threads(1)).expect("device");
    let four = Device::open(DeviceSpec::default().with_threads(4)).expect("device");
    let full1 = run(&one, rows);
    let full4 = run(&four, rows);
    assert_eq!(full1, full4, "thread count changed results");
    let single = run(&four, 1);
    assert_eq!(&full4[..w], &single[..], "batch size changed row 0");
}

/// tt_transformers' decode norm: width-sharded L1 in and out, the output taking the input's
/// shard spec when the requested config has none, and a sharded program config.
#[test]
fn sharded_input_and_output() {
    let dev = device();
    let (rows, w) = (32, 256);
    let mut rng = Rng::new(3);
    let xv = rng.vec(rows * w, 2.0);
    let gv = rng.vec(w, 1.0);
    let in_mc = width_sharded(4, [32, 64]);
    let x = upload(
        &dev,
        &xv,
        &[1, 1, rows, w],
        DataType::Bfloat16,
        Layout::Tile,
        &in_mc,
    );
    let xi = upload(
        &dev,
        &xv,
        &[1, 1, rows, w],
        DataType::Bfloat16,
        Layout::Tile,
        &L1_MEMORY_CONFIG,
    );
    let g = upload(
        &dev,
        &gv,
        &[1, 1, w / 32, 32],
        DataType::Bfloat16,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let pc = LayerNormProgramConfig::ShardedMultiCore {
        compute_with_storage_grid_size: CoreCoord::new(8, 8),
        subblock_w: 2,
        block_h: 1,
        block_w: 2,
        inplace: false,
        use_welford: false,
    };
    let args = RmsNormArgs {
        epsilon: 1e-5,
        weight: Some(&g),
        memory_config: Some(L1_WIDTH_SHARDED_MEMORY_CONFIG),
        program_config: Some(pc),
        ..Default::default()
    };
    let out = rms_norm(&x, &args).expect("sharded rms_norm");
    assert_eq!(out.memory_config(), Some(&in_mc));
    let args_i = RmsNormArgs {
        epsilon: 1e-5,
        weight: Some(&g),
        ..Default::default()
    };
    let outi = rms_norm(&xi, &args_i).expect("interleaved rms_norm");
    assert_eq!(outi.memory_config(), Some(&L1_MEMORY_CONFIG));
    assert_eq!(
        out.to_vec::<f32>().expect("out"),
        outi.to_vec::<f32>().expect("outi")
    );
    // Default output config for a sharded input: the input's.
    let args_d = RmsNormArgs {
        epsilon: 1e-5,
        ..Default::default()
    };
    assert_eq!(
        rms_norm(&x, &args_d).expect("default mc").memory_config(),
        Some(&in_mc)
    );
}

fn err_of(r: ttnn::Result<Tensor>) -> String {
    let e = r.expect_err("expected an error").to_string();
    assert!(
        e.contains("ttnn::rms_norm"),
        "error does not name the op: {e}"
    );
    e
}

#[test]
fn validation_errors() {
    let dev = device();
    let v = vec![0.5f32; 32 * 64];
    let x = upload(
        &dev,
        &v,
        &[1, 1, 32, 64],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let d = RmsNormArgs::default;

    // Input layout, dtype, storage.
    let rm = upload(
        &dev,
        &v,
        &[1, 1, 32, 64],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(err_of(rms_norm(&rm, &d())).contains("layout"));
    let ints = Tensor::from_slice(
        &vec![1u32; 32 * 64],
        [1, 1, 32, 64],
        DataType::Uint32,
        Layout::Tile,
    )
    .expect("host")
    .to_device(&dev, &DRAM_MEMORY_CONFIG)
    .expect("upload");
    assert!(err_of(rms_norm(&ints, &d())).contains("Uint32"));
    let host =
        Tensor::from_slice(&v, [1, 1, 32, 64], DataType::Float32, Layout::Tile).expect("host");
    assert!(err_of(rms_norm(&host, &d())).contains("device"));
    assert!(
        err_of(rms_norm(
            &x,
            &RmsNormArgs {
                epsilon: -1.0,
                ..d()
            }
        ))
        .contains("epsilon")
    );

    // Residual: layout and shape.
    let r_small = upload(
        &dev,
        &v[..64 * 8],
        &[1, 1, 8, 64],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let e = err_of(rms_norm(
        &x,
        &RmsNormArgs {
            residual_input_tensor: Some(&r_small),
            ..d()
        },
    ));
    assert!(e.contains("residual"), "{e}");
    let e = err_of(rms_norm(
        &x,
        &RmsNormArgs {
            residual_input_tensor: Some(&rm),
            ..d()
        },
    ));
    assert!(e.contains("residual") && e.contains("layout"), "{e}");

    // Gamma: RM shape, RM dtype, tile width, gamma/beta layouts differ.
    let g_bad = upload(
        &dev,
        &v[..64],
        &[1, 1, 4, 16],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let e = err_of(rms_norm(
        &x,
        &RmsNormArgs {
            weight: Some(&g_bad),
            ..d()
        },
    ));
    assert!(e.contains("Gamma's last padded dim"), "{e}");
    let g_tile_bad = upload(
        &dev,
        &v[..32],
        &[1, 1, 1, 32],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert!(
        err_of(rms_norm(
            &x,
            &RmsNormArgs {
                weight: Some(&g_tile_bad),
                ..d()
            }
        ))
        .contains("weight")
    );
    let g_rm = upload(
        &dev,
        &v[..64],
        &[1, 1, 2, 32],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    let b_tile = upload(
        &dev,
        &v[..64],
        &[1, 1, 1, 64],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let e = err_of(rms_norm(
        &x,
        &RmsNormArgs {
            weight: Some(&g_rm),
            bias: Some(&b_tile),
            ..d()
        },
    ));
    assert!(e.contains("same layout"), "{e}");
    let g_int = Tensor::from_slice(
        &[1u32; 64],
        [1, 1, 2, 32],
        DataType::Uint32,
        Layout::RowMajor,
    )
    .expect("host")
    .to_device(&dev, &DRAM_MEMORY_CONFIG)
    .expect("upload");
    assert!(
        err_of(rms_norm(
            &x,
            &RmsNormArgs {
                weight: Some(&g_int),
                ..d()
            }
        ))
        .contains("Uint32")
    );

    // Sharding: height-sharded input; sharded input with interleaved output.
    let hs = MemoryConfig::sharded(
        TensorMemoryLayout::HeightSharded,
        BufferType::L1,
        ShardSpec::new(
            CoreRangeSet::from_range(CoreRange::new(CoreCoord::new(0, 0), CoreCoord::new(0, 0))),
            [32, 64],
            ShardOrientation::RowMajor,
        ),
    );
    let xh = upload(
        &dev,
        &v,
        &[1, 1, 32, 64],
        DataType::Float32,
        Layout::Tile,
        &hs,
    );
    assert!(err_of(rms_norm(&xh, &d())).contains("Height sharded inputs are not supported"));
    let xw = upload(
        &dev,
        &v,
        &[1, 1, 32, 64],
        DataType::Float32,
        Layout::Tile,
        &width_sharded(2, [32, 32]),
    );
    let e = err_of(rms_norm(
        &xw,
        &RmsNormArgs {
            memory_config: Some(DRAM_MEMORY_CONFIG),
            ..d()
        },
    ));
    assert!(e.contains("Sharded inputs require sharded outputs"), "{e}");

    // Program configs: Welford; block sizes against the shard; sharded config on interleaved.
    let welford = LayerNormProgramConfig::Default { use_welford: true };
    assert!(
        err_of(rms_norm(
            &x,
            &RmsNormArgs {
                program_config: Some(welford),
                ..d()
            }
        ))
        .contains("Welford")
    );
    let pc = |block_w| LayerNormProgramConfig::ShardedMultiCore {
        compute_with_storage_grid_size: CoreCoord::new(8, 8),
        subblock_w: 1,
        block_h: 1,
        block_w,
        inplace: false,
        use_welford: false,
    };
    assert!(
        rms_norm(
            &xw,
            &RmsNormArgs {
                program_config: Some(pc(1)),
                ..d()
            }
        )
        .is_ok()
    );
    assert!(
        err_of(rms_norm(
            &xw,
            &RmsNormArgs {
                program_config: Some(pc(2)),
                ..d()
            }
        ))
        .contains("shard shape")
    );
    assert!(
        err_of(rms_norm(
            &x,
            &RmsNormArgs {
                program_config: Some(pc(1)),
                ..d()
            }
        ))
        .contains("sharded input")
    );

    // Sharded program config details: block_w % subblock_w, inplace (host), output layout.
    let pc_sub = LayerNormProgramConfig::ShardedMultiCore {
        compute_with_storage_grid_size: CoreCoord::new(8, 8),
        subblock_w: 2,
        block_h: 1,
        block_w: 1,
        inplace: false,
        use_welford: false,
    };
    let e = err_of(rms_norm(
        &xw,
        &RmsNormArgs {
            program_config: Some(pc_sub),
            ..d()
        },
    ));
    assert!(e.contains("divisible by subblock_w"), "{e}");
    let pc_inplace = LayerNormProgramConfig::ShardedMultiCore {
        compute_with_storage_grid_size: CoreCoord::new(8, 8),
        subblock_w: 1,
        block_h: 1,
        block_w: 1,
        inplace: true,
        use_welford: false,
    };
    let e = err_of(rms_norm(
        &xw,
        &RmsNormArgs {
            program_config: Some(pc_inplace),
            ..d()
        },
    ));
    assert!(e.contains("inplace"), "{e}");
    let block = MemoryConfig {
        shard_spec: None,
        ..ttnn::L1_BLOCK_SHARDED_MEMORY_CONFIG
    };
    let e = err_of(rms_norm(
        &xw,
        &RmsNormArgs {
            program_config: Some(pc(1)),
            memory_config: Some(block),
            ..d()
        },
    ));
    assert!(
        e.contains("memory layouts and buffer types must match"),
        "{e}"
    );
    // A sharded input's residual must share its memory config.
    let e = err_of(rms_norm(
        &xw,
        &RmsNormArgs {
            residual_input_tensor: Some(&x),
            ..d()
        },
    ));
    assert!(e.contains("residual") && e.contains("memory config"), "{e}");
}
