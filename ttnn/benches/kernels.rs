//! Micro-benchmarks of the host backend's main kernels on BitNet b1.58 2B-4T shapes, through
//! the public ops (so op overhead is included, as in the model).
//!
//! `cargo bench -p ttnn --bench kernels` (add `-- <filter>` to pick one). Weight-streaming
//! kernels report bytes of weights read per second (GB/s: compare with the machine's memory
//! bandwidth); compute-bound ones report operations per second (2 per multiply-add; criterion
//! prints them as elem/s, i.e. Gelem/s = GOP/s). `BITNET_HOST_ISA=scalar|avx2|avx512vnni`
//! forces a kernel path; `BITNET_HOST_TERNARY_LAYOUT=bits2|lut3|base3` the ternary weights'
//! layout (GB/s counts the bytes stored in it); `BITNET_BENCH_THREADS` sets the device's
//! threads (default 1).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ttnn::experimental::{BitLinearArgs, InputRmsNorm, bitlinear};
use ttnn::transformer::{
    ChunkedSdpaArgs, PagedSdpaDecodeArgs, chunked_scaled_dot_product_attention,
    paged_scaled_dot_product_attention_decode,
};
use ttnn::{
    DRAM_MEMORY_CONFIG, DataType, Device, DeviceSpec, Layout, LinearArgs, RmsNormArgs, Tensor,
    begin_trace_capture, end_trace_capture, execute_trace, linear, rms_norm,
};

const HIDDEN: usize = 2560;
const FFN: usize = 6912;

fn device() -> Device {
    let threads = std::env::var("BITNET_BENCH_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    Device::open(DeviceSpec::default().with_threads(threads)).expect("open the host device")
}

/// Deterministic values in [-1, 1).
fn vals(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn upload<T: ttnn::Element>(dev: &Device, v: &[T], shape: &[usize], dtype: DataType) -> Tensor {
    Tensor::from_slice(v, shape, dtype, Layout::Tile)
        .and_then(|t| t.to_device(dev, &DRAM_MEMORY_CONFIG))
        .expect("upload")
}

/// Ternary x int8 GEMV (decode, bandwidth) and GEMM (prefill of 128 tokens, compute) on the
/// FFN gate shape.
fn ternary(c: &mut Criterion) {
    let dev = device();
    let t: Vec<i8> = vals(FFN * HIDDEN, 3)
        .iter()
        .map(|&v| (v * 1.5).round().clamp(-1.0, 1.0) as i8)
        .collect();
    let w = upload(&dev, &t, &[FFN, HIDDEN], DataType::Ternary);
    let args = BitLinearArgs {
        weight_scale: 0.5,
        ..Default::default()
    };
    let layout = dev.host_ternary_layout().unwrap_or_default();
    let bytes = |rows: usize| Throughput::BytesDecimal(layout.stored_bytes(rows, HIDDEN) as u64);
    let mut g = c.benchmark_group("bitlinear_gemv_GBps");
    g.throughput(bytes(FFN));
    let x = upload(&dev, &vals(HIDDEN, 1), &[1, HIDDEN], DataType::Float32);
    g.bench_function(BenchmarkId::new("ffn_gate", "m1"), |b| {
        b.iter(|| black_box(bitlinear(&x, &w, &args).expect("bitlinear")))
    });
    // 48 times that (about 180 MB, several times any L3): streamed from DRAM, as the model's
    // weights are at every decode step (the case above stays in L3 after the first iteration).
    // Eight times (30 MB as `Lut3`, `dram_8x` before) still partly hit a 32 MB L3.
    let big_t: Vec<i8> = t.iter().cycle().take(FFN * HIDDEN * 48).copied().collect();
    let big = upload(&dev, &big_t, &[FFN * 48, HIDDEN], DataType::Ternary);
    g.throughput(bytes(48 * FFN));
    g.bench_function(BenchmarkId::new("dram_48x_ffn_gate", "m1"), |b| {
        b.iter(|| black_box(bitlinear(&x, &big, &args).expect("bitlinear")))
    });
    // A weight that stays in L2 (410 KB at 2 bits): the kernel's compute rate, without DRAM.
    let small = upload(&dev, &t[..640 * HIDDEN], &[640, HIDDEN], DataType::Ternary);
    g.throughput(bytes(640));
    g.bench_function(BenchmarkId::new("in_cache_640", "m1"), |b| {
        b.iter(|| black_box(bitlinear(&x, &small, &args).expect("bitlinear")))
    });
    g.finish();
    let mut g = c.benchmark_group("bitlinear_gemm_GOPs");
    g.sample_size(10);
    for m in [32usize, 128] {
        g.throughput(Throughput::Elements((2 * m * FFN * HIDDEN) as u64));
        let x = upload(&dev, &vals(m * HIDDEN, 2), &[m, HIDDEN], DataType::Float32);
        g.bench_function(BenchmarkId::new("ffn_gate", format!("m{m}")), |b| {
            b.iter(|| black_box(bitlinear(&x, &w, &args).expect("bitlinear")))
        });
    }
    g.finish();
}

/// Layers in [`ffn_chain`].
const CHAIN_LAYERS: usize = 24;

/// A decode step's FFN projections as the model runs them: `CHAIN_LAYERS` layers of gate
/// (2560 -> 6912) then down (6912 -> 2560), each with its fused RMSNorm, bf16 activations, every
/// op's input the previous op's output, replayed from a captured trace. The weights (about 180
/// MB) stream from DRAM as in the model, in ops of 3.7 MB: unlike `dram_48x_ffn_gate` (one op
/// over all of it), this counts each op's fixed cost (norm and quantization, tables, the
/// hand-over to the pool and the wait at its end). Here, alternated with one big op, it ran
/// 10-35 % slower per byte.
fn ffn_chain(c: &mut Criterion) {
    let dev = device();
    let ternary_values = |n: usize, seed: u64| -> Vec<i8> {
        vals(n, seed)
            .iter()
            .map(|&v| (v * 1.5).round().clamp(-1.0, 1.0) as i8)
            .collect()
    };
    let (tg, td) = (
        ternary_values(FFN * HIDDEN, 11),
        ternary_values(HIDDEN * FFN, 12),
    );
    let layers: Vec<(Tensor, Tensor)> = (0..CHAIN_LAYERS)
        .map(|_| {
            (
                upload(&dev, &tg, &[FFN, HIDDEN], DataType::Ternary),
                upload(&dev, &td, &[HIDDEN, FFN], DataType::Ternary),
            )
        })
        .collect();
    let gamma_h = upload(&dev, &vals(HIDDEN, 13), &[HIDDEN], DataType::Bfloat16);
    let gamma_f = upload(&dev, &vals(FFN, 14), &[FFN], DataType::Bfloat16);
    let x = upload(&dev, &vals(HIDDEN, 15), &[1, HIDDEN], DataType::Bfloat16);
    let args = |gamma| BitLinearArgs {
        weight_scale: 0.5,
        input_rms_norm: Some(InputRmsNorm {
            weight: Some(gamma),
            epsilon: 1e-5,
            memory_config: None,
        }),
        ..Default::default()
    };
    let (ag, ad) = (args(&gamma_h), args(&gamma_f));
    let tid = begin_trace_capture(&dev, 0).expect("begin capture");
    let mut h = x.clone();
    for (g, d) in &layers {
        let y = bitlinear(&h, g, &ag).expect("gate");
        h = bitlinear(&y, d, &ad).expect("down");
    }
    let trace = end_trace_capture(&dev, tid, 0).expect("end capture");
    let layout = dev.host_ternary_layout().unwrap_or_default();
    let bytes = layout.stored_bytes(FFN, HIDDEN) + layout.stored_bytes(HIDDEN, FFN);
    let mut g = c.benchmark_group("bitlinear_decode_GBps");
    g.throughput(Throughput::BytesDecimal((CHAIN_LAYERS * bytes) as u64));
    g.bench_function(BenchmarkId::new("ffn_chain", CHAIN_LAYERS), |b| {
        b.iter(|| execute_trace(&dev, &trace, 0, true).expect("replay"))
    });
    g.finish();
    black_box(h);
}

/// The lm_head GEMV (B stored [N, K], as the tied embedding) on a quarter of the vocabulary
/// (larger than any cache, so it streams from memory as the full one does).
fn lm_head(c: &mut Criterion) {
    let dev = device();
    let n = 128256 / 4;
    let wv = vals(n * HIDDEN, 5);
    let x = upload(&dev, &vals(HIDDEN, 6), &[1, HIDDEN], DataType::Float32);
    let args = LinearArgs {
        transpose_b: true,
        ..Default::default()
    };
    let mut g = c.benchmark_group("lm_head_gemv_GBps");
    g.sample_size(20);
    for (name, dtype, bytes_per_value) in [
        ("bfp8_b", DataType::Bfloat8B, 1.0 + 1.0 / 16.0),
        ("bfp4_b", DataType::Bfloat4B, 1.0 + 1.0 / 16.0),
        ("bf16", DataType::Bfloat16, 2.0),
    ] {
        let w = upload(&dev, &wv, &[n, HIDDEN], dtype);
        let stored = (n * HIDDEN) as f64 * bytes_per_value;
        g.throughput(Throughput::BytesDecimal(stored as u64));
        g.bench_function(name, |b| {
            b.iter(|| black_box(linear(&x, &w, &args).expect("linear")))
        });
    }
    // 4096 rows (11 MB) stay in L3: the kernel's compute rate, without DRAM.
    let rows = 4096;
    let w = upload(
        &dev,
        &wv[..rows * HIDDEN],
        &[rows, HIDDEN],
        DataType::Bfloat8B,
    );
    g.throughput(Throughput::BytesDecimal(
        (rows * HIDDEN + rows * HIDDEN / 16) as u64,
    ));
    g.bench_function("bfp8_b_in_l3_4096", |b| {
        b.iter(|| black_box(linear(&x, &w, &args).expect("linear")))
    });
    g.finish();
}

/// RMSNorm of one decode row and of a 128-token prefill.
fn norm(c: &mut Criterion) {
    let dev = device();
    let gamma = upload(&dev, &vals(HIDDEN, 7), &[1, HIDDEN], DataType::Float32);
    let args = RmsNormArgs {
        weight: Some(&gamma),
        ..Default::default()
    };
    let mut g = c.benchmark_group("rms_norm_GBps");
    for m in [1usize, 128] {
        g.throughput(Throughput::BytesDecimal((m * HIDDEN * 4) as u64));
        let x = upload(&dev, &vals(m * HIDDEN, 8), &[m, HIDDEN], DataType::Float32);
        g.bench_function(BenchmarkId::from_parameter(m), |b| {
            b.iter(|| black_box(rms_norm(&x, &args).expect("rms_norm")))
        });
    }
    g.finish();
}

/// An f32 paged K/V cache of `shape` (`[blocks, nkv, block, hd]`, K and V alike) and the page
/// table of one user holding every block in order.
fn paged_kv(dev: &Device, shape: [usize; 4], seed: u64) -> (Tensor, Tensor, Tensor) {
    let kv = vals(shape.iter().product(), seed);
    let k = upload(dev, &kv, &shape, DataType::Float32);
    let v = upload(dev, &kv, &shape, DataType::Float32);
    let pt: Vec<i32> = (0..shape[0] as i32).collect();
    let pt = Tensor::from_slice(&pt, [1, shape[0]], DataType::Int32, Layout::RowMajor)
        .and_then(|t| t.to_device(dev, &DRAM_MEMORY_CONFIG))
        .expect("page table");
    (k, v, pt)
}

/// Paged SDPA decode for one user: 20 query heads over 5 KV heads of 128, f32 cache, at two
/// sequence lengths (bytes = the K and V read).
fn attention(c: &mut Criterion) {
    let dev = device();
    let (nh, nkv, hd, block) = (20usize, 5usize, 128usize, 32usize);
    let mut g = c.benchmark_group("paged_sdpa_decode_GBps");
    for len in [256usize, 2048] {
        let (k, v, pt) = paged_kv(&dev, [len / block, nkv, block, hd], 9);
        let cur = Tensor::from_slice(&[len as i32 - 1], [1], DataType::Int32, Layout::RowMajor)
            .and_then(|t| t.to_device(&dev, &DRAM_MEMORY_CONFIG))
            .expect("cur_pos");
        let q = upload(&dev, &vals(nh * hd, 10), &[1, 1, nh, hd], DataType::Float32);
        let args = PagedSdpaDecodeArgs {
            cur_pos_tensor: Some(&cur),
            ..Default::default()
        };
        g.throughput(Throughput::BytesDecimal((2 * len * nkv * hd * 4) as u64));
        g.bench_function(BenchmarkId::from_parameter(len), |b| {
            b.iter(|| {
                black_box(
                    paged_scaled_dot_product_attention_decode(&q, &k, &v, &pt, &args)
                        .expect("sdpa"),
                )
            })
        });
    }
    g.finish();
}

/// Chunked prefill SDPA, as the model runs it: a chunk of 128 query rows (20 heads over 5 KV
/// heads of 128, f32 paged cache) at the start of a prompt (causal within the chunk) and after
/// 896 cached positions. Reported as attention operations per second (2 per multiply-add of
/// the scores and of the values, over the causal positions each row attends).
fn prefill_attention(c: &mut Criterion) {
    let dev = device();
    let (nh, nkv, hd, block, sq) = (20usize, 5usize, 128usize, 32usize, 128usize);
    let mut g = c.benchmark_group("chunked_sdpa_prefill_GOPs");
    g.sample_size(20);
    for start in [0usize, 896] {
        let len = start + sq;
        let (k, v, pt) = paged_kv(&dev, [len / block, nkv, block, hd], 17);
        let q = upload(
            &dev,
            &vals(nh * sq * hd, 18),
            &[1, nh, sq, hd],
            DataType::Float32,
        );
        // Row i attends start + i + 1 positions.
        let attended: usize = (0..sq).map(|i| start + i + 1).sum();
        g.throughput(Throughput::Elements((4 * nh * hd * attended) as u64));
        g.bench_function(BenchmarkId::new("chunk128_at", start), |b| {
            b.iter(|| {
                black_box(
                    chunked_scaled_dot_product_attention(
                        &q,
                        &k,
                        &v,
                        &pt,
                        start,
                        &ChunkedSdpaArgs::default(),
                    )
                    .expect("chunked sdpa"),
                )
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    ternary,
    ffn_chain,
    lm_head,
    norm,
    attention,
    prefill_attention
);
criterion_main!(benches);
