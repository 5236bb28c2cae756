//! Replaying a trace allocates nothing on the heap (a counting global allocator checks it).
//! Its own test binary without the libtest harness (`harness = false`), so no harness thread
//! allocates while the counter is on.

mod common;
#[path = "common/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::{Counting, allocations_in_process};

#[global_allocator]
static GLOBAL: Counting = Counting;

use ttnn::ops::sampling::{ArgmaxArgs, PlusOneArgs, TopkArgs, argmax, plus_one, topk};
use ttnn::{
    BinaryArgs, DRAM_MEMORY_CONFIG, DataType, Layout, Tensor, UnaryOp, begin_trace_capture,
    end_trace_capture, execute_trace,
};

fn main() {
    counting_alloc::assert_counting();
    replay_does_not_allocate();
    println!("trace_alloc: replay_does_not_allocate ... ok");
}

fn replay_does_not_allocate() {
    let dev = common::device();
    let mut rng = common::Rng::new(9);
    // Big enough for the eltwise kernels to use the worker pool.
    let (rows, width) = (64, 1024);
    let up = |v: Vec<f32>, shape: &[usize], dtype| {
        Tensor::from_slice(&v, shape, dtype, Layout::Tile)
            .expect("host")
            .to_device(&dev, &DRAM_MEMORY_CONFIG)
            .expect("dev")
    };
    let a = up(
        rng.vec(rows * width, 1.0),
        &[rows, width],
        DataType::Bfloat16,
    );
    let b = up(rng.vec(width, 1.0), &[1, width], DataType::Float32);
    let pos = Tensor::from_slice(&[1i32, 2], [2], DataType::Int32, Layout::RowMajor)
        .expect("pos")
        .to_device(&dev, &DRAM_MEMORY_CONFIG)
        .expect("pos");
    let tid = begin_trace_capture(&dev, 0).expect("begin");
    let m = ttnn::multiply(
        &a,
        &b,
        &BinaryArgs {
            input_tensor_a_activations: vec![UnaryOp::Relu, UnaryOp::Square],
            ..Default::default()
        },
    )
    .expect("multiply");
    let s = ttnn::add(
        &m,
        &a,
        &BinaryArgs {
            dtype: Some(DataType::Bfloat8B),
            ..Default::default()
        },
    )
    .expect("add");
    let _am = argmax(
        &s,
        &ArgmaxArgs {
            dim: Some(-1),
            ..Default::default()
        },
    )
    .expect("argmax");
    let _tk = topk(&m, 32, &TopkArgs::default()).expect("topk");
    let _tc = ttnn::typecast(&s, DataType::Float32, None).expect("typecast");
    plus_one(&pos, &PlusOneArgs::default()).expect("plus_one");
    let trace = end_trace_capture(&dev, tid, 0).expect("end");
    // Commands reserve their scratch when built, so even the first replay allocates nothing.
    let allocs = allocations_in_process(|| {
        for _ in 0..5 {
            execute_trace(&dev, &trace, 0, true).expect("replay");
        }
    });
    assert_eq!(allocs, 0, "heap allocations during trace replay");
}
