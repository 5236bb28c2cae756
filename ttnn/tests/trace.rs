//! Trace capture and replay: replay equals eager bit for bit, inputs refresh through
//! copy_host_to_device, capture-time restrictions, release on drop.

mod common;

use common::{Rng, device, upload};
use ttnn::ops::sampling::{ArgmaxArgs, PlusOneArgs, argmax, plus_one};
use ttnn::{
    BinaryArgs, DRAM_MEMORY_CONFIG, DataType, Device, Error, L1_MEMORY_CONFIG, Layout, Tensor,
    TraceId, UnaryOp, begin_trace_capture, copy_host_to_device, end_trace_capture, execute_trace,
};

struct Inputs {
    a: Tensor,
    b: Tensor,
    pos: Tensor,
}

fn host_inputs(seed: u64) -> (Tensor, Tensor, Tensor) {
    let mut rng = Rng::new(seed);
    let a = Tensor::from_slice(
        &rng.vec(3 * 40, 2.0),
        [3, 40],
        DataType::Float32,
        Layout::Tile,
    )
    .expect("a");
    let b =
        Tensor::from_slice(&rng.vec(40, 2.0), [1, 40], DataType::Float32, Layout::Tile).expect("b");
    let pos =
        Tensor::from_slice(&[3i32, -1, 7], [3], DataType::Int32, Layout::RowMajor).expect("pos");
    (a, b, pos)
}

fn upload_inputs(dev: &Device, seed: u64) -> Inputs {
    let (a, b, pos) = host_inputs(seed);
    Inputs {
        a: a.to_device(dev, &DRAM_MEMORY_CONFIG).expect("a"),
        b: b.to_device(dev, &L1_MEMORY_CONFIG).expect("b"),
        pos: pos.to_device(dev, &DRAM_MEMORY_CONFIG).expect("pos"),
    }
}

/// A small decode-like step: fused relu^2 multiply, add, bf16 typecast, argmax, plus_one.
fn step(x: &Inputs) -> (Tensor, Tensor) {
    let m = ttnn::multiply(
        &x.a,
        &x.b,
        &BinaryArgs {
            input_tensor_a_activations: vec![UnaryOp::Relu, UnaryOp::Square],
            ..Default::default()
        },
    )
    .expect("multiply");
    let s = ttnn::add(
        &m,
        &x.a,
        &BinaryArgs {
            dtype: Some(DataType::Bfloat16),
            ..Default::default()
        },
    )
    .expect("add");
    let am = argmax(
        &s,
        &ArgmaxArgs {
            dim: Some(-1),
            ..Default::default()
        },
    )
    .expect("argmax");
    plus_one(
        &x.pos,
        &PlusOneArgs {
            skip_negative_entries: true,
        },
    )
    .expect("plus_one");
    (s, am)
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.to_vec::<f32>()
        .expect("read")
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

#[test]
fn replay_equals_eager_and_follows_new_inputs() {
    let dev = device();
    // Eager reference runs on separate buffers.
    let eager_in = upload_inputs(&dev, 1);
    let (eager_s, eager_am) = step(&eager_in);

    let mut inputs = upload_inputs(&dev, 1);
    let tid = begin_trace_capture(&dev, 0).expect("begin");
    let (s, am) = step(&inputs);
    let trace = end_trace_capture(&dev, tid, 0).expect("end");
    assert_eq!(trace.num_ops(), 4);
    // Capture records without running: outputs are untouched and positions unchanged.
    assert!(bits(&s).iter().all(|&b| b == 0));
    assert_eq!(inputs.pos.to_vec::<i32>().expect("pos"), vec![3, -1, 7]);

    execute_trace(&dev, &trace, 0, true).expect("execute");
    assert_eq!(bits(&s), bits(&eager_s));
    assert_eq!(
        am.to_vec::<u32>().expect("am"),
        eager_am.to_vec::<u32>().expect("am")
    );
    assert_eq!(inputs.pos.to_vec::<i32>().expect("pos"), vec![4, -1, 8]);

    // Each replay advances the in-place state again.
    execute_trace(&dev, &trace, 0, true).expect("execute");
    assert_eq!(inputs.pos.to_vec::<i32>().expect("pos"), vec![5, -1, 9]);

    // New inputs, written in place; the replay follows them.
    let (a2, b2, pos2) = host_inputs(2);
    copy_host_to_device(&a2, &mut inputs.a).expect("refresh a");
    copy_host_to_device(&b2, &mut inputs.b).expect("refresh b");
    copy_host_to_device(&pos2, &mut inputs.pos).expect("refresh pos");
    execute_trace(&dev, &trace, 0, true).expect("execute");
    let fresh = upload_inputs(&dev, 2);
    let (want_s, want_am) = step(&fresh);
    assert_eq!(bits(&s), bits(&want_s));
    assert_eq!(
        am.to_vec::<u32>().expect("am"),
        want_am.to_vec::<u32>().expect("am")
    );
}

#[test]
fn host_io_and_nested_capture_fail_during_capture() {
    let dev = device();
    let mut inputs = upload_inputs(&dev, 3);
    let (a2, _, _) = host_inputs(4);
    let tid = begin_trace_capture(&dev, 0).expect("begin");
    let busy = |e: Error, op: &str| {
        assert!(matches!(e, Error::TraceCaptureActive { .. }), "{e}");
        assert!(e.to_string().contains(op), "{e}");
    };
    busy(
        copy_host_to_device(&a2, &mut inputs.a).unwrap_err(),
        "copy_host_to_device",
    );
    busy(
        a2.to_device(&dev, &DRAM_MEMORY_CONFIG).unwrap_err(),
        "to_device",
    );
    busy(inputs.a.to_vec::<f32>().unwrap_err(), "to_vec");
    busy(
        begin_trace_capture(&dev, 0).unwrap_err(),
        "begin_trace_capture",
    );
    let e = end_trace_capture(&dev, TraceId(tid.0 + 100), 0).unwrap_err();
    assert!(e.to_string().contains("end_trace_capture"), "{e}");
    let trace = end_trace_capture(&dev, tid, 0).expect("end");
    // Nothing is being captured any more.
    let e = end_trace_capture(&dev, tid, 0).unwrap_err();
    assert!(e.to_string().contains("no trace capture is active"), "{e}");
    // A trace replays only on its own device.
    let other = device();
    let e = execute_trace(&other, &trace, 0, true).unwrap_err();
    assert!(e.to_string().contains("another device"), "{e}");
}

#[test]
fn trace_memory_follows_live_tensors_and_dropping_releases_the_trace() {
    let dev = device();
    let inputs = upload_inputs(&dev, 5);
    let before = dev.memory_report();
    let tid = begin_trace_capture(&dev, 0).expect("begin");
    let (s, am) = step(&inputs);
    let trace = end_trace_capture(&dev, tid, 0).expect("end");
    let during = dev.memory_report();
    assert_eq!(during.live_traces, 1);
    assert!(
        during.dram.in_use > before.dram.in_use,
        "the outputs are live"
    );
    // Dropping the handles returns their reservations (TT-NN would hand the addresses out
    // again); the trace keeps only the data, so it still replays.
    drop((s, am));
    assert_eq!(dev.memory_report().dram.in_use, before.dram.in_use);
    execute_trace(&dev, &trace, 0, true).expect("replay after the handles dropped");
    drop(trace);
    let after = dev.memory_report();
    assert_eq!(after.live_traces, 0);
    assert_eq!(
        (after.dram.in_use, after.l1.in_use),
        (before.dram.in_use, before.l1.in_use)
    );
}

/// A capture's memory is its working set: intermediates dropped during capture free their
/// space for later ops (as TT-NN reuses addresses), instead of piling up per op.
#[test]
fn intermediates_dropped_during_capture_are_reused() {
    let dev = device();
    let x = upload(
        &dev,
        &vec![0.5; 64 * 64],
        &[64, 64],
        DataType::Float32,
        Layout::Tile,
        &L1_MEMORY_CONFIG,
    );
    let one_buffer = {
        let before = dev.memory_report().l1.in_use;
        let t = ttnn::add(
            &x,
            &x,
            &BinaryArgs {
                memory_config: Some(L1_MEMORY_CONFIG),
                ..Default::default()
            },
        )
        .expect("add");
        let b = dev.memory_report().l1.in_use - before;
        drop(t);
        b
    };
    dev.reset_peak_memory();
    let base = dev.memory_report().l1.in_use;
    let tid = begin_trace_capture(&dev, 0).expect("begin");
    let mut y = x.clone();
    for _ in 0..20 {
        y = ttnn::add(
            &y,
            &x,
            &BinaryArgs {
                memory_config: Some(L1_MEMORY_CONFIG),
                ..Default::default()
            },
        )
        .expect("add");
    }
    let trace = end_trace_capture(&dev, tid, 0).expect("end");
    let r = dev.memory_report();
    assert!(
        r.l1.peak - base <= 2 * one_buffer,
        "peak {} for 20 chained ops of {one_buffer} bytes",
        r.l1.peak - base
    );
    execute_trace(&dev, &trace, 0, true).expect("replay");
    assert!(y.to_vec::<f32>().expect("read").iter().all(|&v| v == 10.5));
}

#[test]
fn capture_needs_a_trace_region() {
    let dev = Device::open(ttnn::DeviceSpec {
        trace_region_size: 0,
        ..Default::default()
    })
    .expect("open");
    let e = begin_trace_capture(&dev, 0).unwrap_err().to_string();
    assert!(e.contains("trace_region_size"), "{e}");
    let e = begin_trace_capture(&device(), 3).unwrap_err().to_string();
    assert!(e.contains("command queue 3"), "{e}");
}

#[test]
fn upload_helper_round_trips() {
    let dev = device();
    let t = upload(
        &dev,
        &[1.0, 2.0],
        &[2],
        DataType::Float32,
        Layout::RowMajor,
        &DRAM_MEMORY_CONFIG,
    );
    assert_eq!(t.to_vec::<f32>().expect("read"), vec![1.0, 2.0]);
}

/// The op profile counts each command of eager runs and of replays under its name, only while
/// on, and starts again from zero after a reset.
#[test]
fn op_profile_counts_eager_and_replayed_commands() {
    let dev = device();
    let inputs = upload_inputs(&dev, 5);
    // Off by default: nothing is recorded.
    step(&inputs);
    assert!(dev.op_profile().is_empty());

    dev.set_op_profiling(true).expect("host backend profiles");
    step(&inputs);
    let calls = |name: &str| {
        dev.op_profile()
            .iter()
            .find(|o| o.name == name)
            .map_or(0, |o| o.calls)
    };
    assert_eq!(calls("Binary Multiply"), 1);
    assert_eq!(calls("Binary Add"), 1);
    assert_eq!(calls("Argmax"), 1);
    assert_eq!(calls("PlusOne"), 1);

    let tid = begin_trace_capture(&dev, 0).expect("begin");
    step(&inputs);
    let trace = end_trace_capture(&dev, tid, 0).expect("end");
    // Capture records without running: no new calls.
    assert_eq!(calls("Argmax"), 1);
    for _ in 0..3 {
        execute_trace(&dev, &trace, 0, true).expect("execute");
    }
    let ops = dev.op_profile();
    assert_eq!(ops.len(), 4, "{ops:?}");
    assert!(ops.iter().all(|o| o.calls == 4), "{ops:?}");
    assert!(ops.iter().all(|o| o.total > std::time::Duration::ZERO));

    dev.reset_op_profile();
    assert!(dev.op_profile().is_empty());
    dev.set_op_profiling(false).expect("off");
    execute_trace(&dev, &trace, 0, true).expect("execute");
    assert!(dev.op_profile().is_empty());
    dev.set_op_profiling(true).expect("on");
    execute_trace(&dev, &trace, 0, true).expect("execute");
    assert_eq!(calls("Binary Multiply"), 1);
}
