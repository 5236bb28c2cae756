//! The model's decode step allocates nothing on the heap once captured: replaying the decode
//! trace (embedding, 30-layer-style stack of bitlinear, RoPE, paged cache update, paged SDPA,
//! MLP, norm, lm_head) and the sampling trace (greedy: argmax into the token input; sampling:
//! top-k, top-p/temperature with seeds) makes zero allocations, with the worker pool in use.
//! The runtime's generator replays exactly these ops (`Bucket::decode_ops` / `sample_ops`).
//!
//! Its own test binary without the libtest harness (`harness = false`), so no harness thread
//! allocates while the counter is on.

// Shared with ttnn's allocation tests.
#[path = "../../ttnn/tests/common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{Counting, allocations_in_process};

#[global_allocator]
static GLOBAL: Counting = Counting;

use bitnet_layers::{BitNetModel, DecodeInputs, KvCache, ModelOptions, PlanOptions};
use bitnet_tests::model_dir;
use ttnn::ops::sampling::{ArgmaxArgs, PlusOneArgs, SamplingArgs, TopkArgs};
use ttnn::{
    DRAM_MEMORY_CONFIG, DataType, Device, DeviceSpec, Layout, Tensor, begin_trace_capture,
    end_trace_capture, execute_trace,
};

fn main() {
    // The counter sees allocations (so a zero below means none happened).
    counting_alloc::assert_counting();
    for greedy in [true, false] {
        decode_replay_does_not_allocate(greedy);
        println!("decode_alloc: decode_replay_does_not_allocate (greedy: {greedy}) ... ok");
    }
}

fn up<T: ttnn::Element>(dev: &Device, v: &[T], shape: &[usize], dtype: DataType) -> Tensor {
    Tensor::from_slice(v, shape, dtype, Layout::RowMajor)
        .and_then(|t| t.to_device(dev, &DRAM_MEMORY_CONFIG))
        .expect("upload")
}

fn decode_replay_does_not_allocate(greedy: bool) {
    let dev = Device::open(DeviceSpec::default().with_threads(2)).expect("device");
    let opts = ModelOptions {
        plan: PlanOptions {
            max_batch: 4,
            ..Default::default()
        },
        max_seq_len: Some(256),
    };
    let model =
        BitNetModel::load(&model_dir("tiny-2b4t-format"), &dev, &opts).expect("load the model");
    let cache = KvCache::allocate(&dev, model.config(), 8, 32, DataType::Float32).expect("cache");
    let b = 2;
    let tokens = up(&dev, &[17u32, 342], &[1, b], DataType::Uint32);
    let pos = up(&dev, &[0i32, 0], &[b], DataType::Int32);
    let rot = ttnn::reshape(&pos, [1, b]).expect("rot view");
    let page_table = up(&dev, &[0i32, 1, 2, 3, 4, 5], &[b, 3], DataType::Int32);
    let k = up(&dev, &[5u32, 8], &[b], DataType::Uint32);
    let p = up(&dev, &[0.9f32, 1.0], &[b], DataType::Float32);
    let temp = up(&dev, &[0.7f32, 1.2], &[b], DataType::Float32);
    let seeds = up(&dev, &[1u32, 2], &[b], DataType::Uint32);
    let inputs = DecodeInputs {
        tokens: &tokens,
        cur_pos: &pos,
        rot_idxs: &rot,
        page_table: &page_table,
    };
    let sample = |logits: &Tensor| {
        if greedy {
            let ids = ttnn::argmax(
                logits,
                &ArgmaxArgs {
                    dim: Some(-1),
                    ..Default::default()
                },
            )?;
            ttnn::copy(&ttnn::reshape(&ids, [1, b])?, &tokens)?;
        } else {
            let (vals, idx) = ttnn::topk(logits, 32, &TopkArgs::default())?;
            ttnn::sampling(
                &vals,
                &idx,
                &k,
                &p,
                &temp,
                &SamplingArgs {
                    user_seeds: Some(&seeds),
                    user_offsets: Some(&pos),
                    output_tensor: Some(&tokens),
                    ..Default::default()
                },
            )?;
        }
        ttnn::plus_one(
            &pos,
            &PlusOneArgs {
                skip_negative_entries: true,
            },
        )
    };

    // The compile run, then the captures (as the generator does).
    let logits = model.decode(&inputs, &cache).expect("eager decode");
    sample(&logits).expect("eager sample");
    drop(logits);
    let tid = begin_trace_capture(&dev, 0).expect("begin");
    let logits = model.decode(&inputs, &cache);
    let decode_trace = end_trace_capture(&dev, tid, 0).expect("end");
    let logits = logits.expect("captured decode");
    let tid = begin_trace_capture(&dev, 0).expect("begin");
    let sampled = sample(&logits);
    let sample_trace = end_trace_capture(&dev, tid, 0).expect("end");
    sampled.expect("captured sample");

    // Steady state: every replay runs the whole step with the counter on.
    let steps: i32 = 4;
    let allocs = allocations_in_process(|| {
        for _ in 0..steps {
            execute_trace(&dev, &decode_trace, 0, false).expect("replay decode");
            execute_trace(&dev, &sample_trace, 0, true).expect("replay sample");
        }
    });
    assert_eq!(
        allocs, 0,
        "{allocs} heap allocations in {steps} decode steps"
    );

    // The replays did the work: positions advanced once per step (the eager step, then the
    // replays; a capture records without running, as on a TT device), and the tokens are
    // valid ids.
    let pos_now = pos.to_vec::<i32>().expect("pos");
    assert_eq!(pos_now, vec![1 + steps; b]);
    let vocab = model.config().vocab_size;
    let ids = tokens.to_vec::<u32>().expect("tokens");
    assert!(ids.iter().all(|&t| (t as usize) < vocab), "{ids:?}");
}
