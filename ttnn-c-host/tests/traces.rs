//! Traces through the C ABI: capture, replay with inputs refreshed by copy_host_to_device (equal
//! to the same trace run through `ttnn` directly), ids as TT issues them, and every state error
//! with its message.

mod common;

use std::ptr;

use common::{CDevice, CTensor, Devices, Dual, Rng, c_dtype, c_layout, host_bytes, session, u32s};
use ttnn::{ArgmaxArgs, BinaryArgs, DataType, Layout, PlusOneArgs, Tensor, UnaryOp};
use ttnn_sys as sys;
use ttnn_sys::ttnn_c_device;

const TTNN_ERROR: i32 = sys::TTNN_C_STATUS_TTNN_ERROR as i32;

fn begin(dev: *mut ttnn_c_device) -> Result<u32, (i32, String)> {
    let p = common::provider();
    let mut id = u32::MAX;
    // SAFETY: valid out-parameter.
    p.check(unsafe { (p.c.ttnn_c_begin_trace_capture)(dev, 0, &mut id) })?;
    Ok(id)
}

fn end(dev: *mut ttnn_c_device, id: u32) -> Result<(), (i32, String)> {
    let p = common::provider();
    // SAFETY: plain arguments.
    p.check(unsafe { (p.c.ttnn_c_end_trace_capture)(dev, id, 0) })
}

fn execute(dev: *mut ttnn_c_device, id: u32) -> Result<(), (i32, String)> {
    let p = common::provider();
    // SAFETY: plain arguments.
    p.check(unsafe { (p.c.ttnn_c_execute_trace)(dev, id, 0, 1) })
}

fn release(dev: *mut ttnn_c_device, id: u32) -> Result<(), (i32, String)> {
    let p = common::provider();
    // SAFETY: plain arguments.
    p.check(unsafe { (p.c.ttnn_c_release_trace)(dev, id) })
}

/// A host tensor through the C ABI.
fn c_host(values: &[f32], shape: &[usize], dtype: DataType, layout: Layout) -> CTensor {
    let p = common::provider();
    let bytes = host_bytes(values, dtype);
    let dims = u32s(shape);
    CTensor::make(|o| {
        // SAFETY: the buffers outlive the call; NULL device: a host tensor.
        unsafe {
            (p.c.ttnn_c_tensor_from_host)(
                bytes.as_ptr().cast(),
                bytes.len(),
                c_dtype(dtype),
                dims.as_ptr(),
                dims.len() as u32,
                c_layout(layout),
                ptr::null_mut(),
                ptr::null(),
                o,
            )
        }
    })
}

struct Inputs {
    a: Dual,
    b: Dual,
    pos: Dual,
}

fn values(seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    (
        rng.vec(3 * 40, 2.0),
        rng.vec(40, 2.0),
        vec![3.0, -1.0, seed as f32],
    )
}

/// A decode-like step through the C ABI: fused relu^2 multiply, add to bf16, argmax,
/// plus_one on the positions. Returns (sum, argmax).
fn c_step(x: &Inputs) -> (CTensor, CTensor) {
    let p = common::provider();
    let acts = [sys::TTNN_C_UNARY_RELU, sys::TTNN_C_UNARY_SQUARE];
    let m = CTensor::make(|o| {
        // SAFETY: live handles; `acts` holds 2 entries.
        unsafe {
            (p.c.ttnn_c_binary)(
                sys::TTNN_C_BINARY_MULTIPLY,
                x.a.c.ptr(),
                x.b.c.ptr(),
                ptr::null(),
                ptr::null(),
                acts.as_ptr(),
                2,
                o,
            )
        }
    });
    let bf16 = sys::TTNN_C_DTYPE_BFLOAT16;
    let s = CTensor::make(|o| {
        // SAFETY: live handles; `bf16` outlives the call.
        unsafe {
            (p.c.ttnn_c_binary)(
                sys::TTNN_C_BINARY_ADD,
                m.ptr(),
                x.a.c.ptr(),
                &bf16,
                ptr::null(),
                ptr::null(),
                0,
                o,
            )
        }
    });
    let dim = -1i32;
    let am = CTensor::make(|o| {
        // SAFETY: live handle; `dim` outlives the call.
        unsafe { (p.c.ttnn_c_argmax)(s.ptr(), &dim, 0, 0, ptr::null(), o) }
    });
    // SAFETY: live handle, NULL out.
    p.ok(unsafe { (p.c.ttnn_c_plus_one)(x.pos.c.ptr(), 1, ptr::null_mut()) });
    (s, am)
}

/// The same step through `ttnn`.
fn r_step(x: &Inputs) -> (Tensor, Tensor) {
    let m = ttnn::multiply(
        &x.a.r,
        &x.b.r,
        &BinaryArgs {
            input_tensor_a_activations: vec![UnaryOp::Relu, UnaryOp::Square],
            ..Default::default()
        },
    )
    .expect("multiply");
    let s = ttnn::add(
        &m,
        &x.a.r,
        &BinaryArgs {
            dtype: Some(DataType::Bfloat16),
            ..Default::default()
        },
    )
    .expect("add");
    let am = ttnn::argmax(
        &s,
        &ArgmaxArgs {
            dim: Some(-1),
            ..Default::default()
        },
    )
    .expect("argmax");
    ttnn::plus_one(
        &x.pos.r,
        &PlusOneArgs {
            skip_negative_entries: true,
        },
    )
    .expect("plus_one");
    (s, am)
}

/// Writes new input values into both worlds' persistent device inputs.
fn refresh(x: &mut Inputs, seed: u64) {
    let p = common::provider();
    let (a, b, pos) = values(seed);
    for (dst, vals, shape, dtype, layout) in [
        (&mut x.a, a, vec![3, 40], DataType::Float32, Layout::Tile),
        (&mut x.b, b, vec![1, 40], DataType::Float32, Layout::Tile),
        (&mut x.pos, pos, vec![3], DataType::Int32, Layout::RowMajor),
    ] {
        let h = c_host(&vals, &shape, dtype, layout);
        // SAFETY: live handles.
        p.ok(unsafe { (p.c.ttnn_c_copy_host_to_device)(h.ptr(), dst.c.ptr()) });
        let rh = Tensor::from_slice(&vals, &shape[..], dtype, layout).expect("host");
        ttnn::copy_host_to_device(&rh, &mut dst.r).expect("direct write");
    }
}

#[test]
fn replay_matches_the_same_ttnn_trace() {
    let s = session();
    let devs = Devices::open();
    let (a, b, pos) = values(1);
    let mut x = Inputs {
        a: Dual::upload(&devs, &a, &[3, 40], DataType::Float32, Layout::Tile, None),
        b: Dual::upload(
            &devs,
            &b,
            &[1, 40],
            DataType::Float32,
            Layout::Tile,
            Some(&ttnn::L1_MEMORY_CONFIG),
        ),
        pos: Dual::upload(&devs, &pos, &[3], DataType::Int32, Layout::RowMajor, None),
    };
    // Eager first (compiles programs on TT; here it checks eager = direct).
    let (cs, ca) = c_step(&x);
    let (rs, ra) = r_step(&x);
    Dual::of(cs, rs).assert_same("eager sum");
    Dual::of(ca, ra).assert_same("eager argmax");
    x.pos.assert_same("eager positions");

    let id = begin(devs.c.0).expect("begin");
    let (cs, ca) = c_step(&x);
    end(devs.c.0, id).expect("end");
    let rid = ttnn::begin_trace_capture(&devs.r, 0).expect("direct begin");
    let (rs, ra) = r_step(&x);
    let rtrace = ttnn::end_trace_capture(&devs.r, rid, 0).expect("direct end");
    let (sum, amax) = (Dual::of(cs, rs), Dual::of(ca, ra));
    for seed in 2..6 {
        refresh(&mut x, seed);
        execute(devs.c.0, id).expect("execute");
        ttnn::execute_trace(&devs.r, &rtrace, 0, true).expect("direct execute");
        sum.assert_same("replayed sum");
        amax.assert_same("replayed argmax");
        x.pos.assert_same("replayed positions");
        assert_eq!(x.pos.c.read_f32(), vec![4.0, -1.0, seed as f32 + 1.0]);
    }
    // Replays without new inputs keep advancing the positions inside the trace.
    execute(devs.c.0, id).expect("execute");
    execute(devs.c.0, id).expect("execute");
    assert_eq!(x.pos.c.read_f32(), vec![6.0, -1.0, 8.0]);
    release(devs.c.0, id).expect("release");
    let e = execute(devs.c.0, id).expect_err("released");
    assert_eq!(e.0, TTNN_ERROR);
    drop((sum, amax, x, rtrace, devs));
    s.finish();
}

#[test]
fn trace_ids_behave_as_on_tt() {
    let s = session();
    let a = CDevice::open();
    let b = CDevice::open();
    // Ids come from one process-wide counter: consecutive over devices...
    let first = begin(a.0).expect("begin a");
    // ...a failed begin (nested capture) still takes one...
    let e = begin(a.0).expect_err("nested");
    assert_eq!(e.0, TTNN_ERROR);
    assert_eq!(
        e.1,
        format!(
            "ttnn_c_begin_trace_capture: begin_trace_capture: not allowed while trace {first} is being captured"
        )
    );
    end(a.0, first).expect("end a");
    let second = begin(b.0).expect("begin b");
    assert_eq!(second, first + 2);
    end(b.0, second).expect("end b");
    // ...and a released id is never issued again.
    release(a.0, first).expect("release");
    let third = begin(a.0).expect("begin a again");
    assert_eq!(third, second + 1);
    end(a.0, third).expect("end");
    // An id names a trace of one device only.
    let e = execute(b.0, third).expect_err("other device");
    assert_eq!(
        e.1,
        format!(
            "ttnn_c_execute_trace: trace {third} is not a captured trace of this device (never captured, or released)"
        )
    );
    execute(a.0, third).expect("own device");
    // Closing a device releases its traces with it.
    drop((a, b));
    s.finish();
}

#[test]
fn trace_state_errors_carry_their_messages() {
    let s = session();
    let p = s.p;
    let dev = CDevice::open();
    let t = {
        let devs_values = c_host(&[1.0; 4], &[2, 2], DataType::Float32, Layout::Tile);
        CTensor::make(|o| {
            // SAFETY: live handles.
            unsafe { (p.c.ttnn_c_tensor_to_device)(devs_values.ptr(), dev.0, ptr::null(), o) }
        })
    };
    let unknown = 4_000_000_000u32;
    let e = execute(dev.0, unknown).expect_err("unknown");
    assert_eq!(
        (e.0, e.1.as_str()),
        (
            TTNN_ERROR,
            "ttnn_c_execute_trace: trace 4000000000 is not a captured trace of this device (never captured, or released)"
        )
    );
    let e = release(dev.0, unknown).expect_err("unknown");
    assert!(
        e.1.starts_with("ttnn_c_release_trace: trace 4000000000 is not"),
        "{}",
        e.1
    );
    let e = end(dev.0, unknown).expect_err("no capture");
    assert_eq!(
        e.1,
        "ttnn_c_end_trace_capture: no trace capture is active (trace 4000000000)"
    );
    // Releasing on a NULL device is a no-op.
    release(ptr::null_mut(), unknown).expect("NULL device");
    // A queue the device was not opened with.
    let mut id = 0;
    // SAFETY: valid out-parameter.
    let st = unsafe { (p.c.ttnn_c_begin_trace_capture)(dev.0, 1, &mut id) };
    assert_eq!(st, TTNN_ERROR);
    assert_eq!(
        p.last_error(),
        "ttnn_c_begin_trace_capture: command queue 1 does not exist: the device was opened with 1 command queue(s)"
    );
    // SAFETY: NULL out-parameter is the error tested.
    let st = unsafe { (p.c.ttnn_c_begin_trace_capture)(dev.0, 0, ptr::null_mut()) };
    assert_eq!(st, sys::TTNN_C_STATUS_INVALID_ARGUMENT as i32);

    // During a capture: host writes and reads, uploads and zeros fail with the trace named.
    let id = begin(dev.0).expect("begin");
    let h = c_host(&[2.0; 4], &[2, 2], DataType::Float32, Layout::Tile);
    // SAFETY: live handles.
    let st = unsafe { (p.c.ttnn_c_copy_host_to_device)(h.ptr(), t.ptr()) };
    assert_eq!(st, TTNN_ERROR);
    assert_eq!(
        p.last_error(),
        format!(
            "ttnn_c_copy_host_to_device: copy_host_to_device: not allowed while trace {id} is being captured"
        )
    );
    let e = t.try_read().expect_err("read during capture");
    assert_eq!(
        e.1,
        format!(
            "ttnn_c_tensor_read: Tensor::to_vec: not allowed while trace {id} is being captured"
        )
    );
    let e = CTensor::try_make(|o| {
        // SAFETY: live handles.
        unsafe { (p.c.ttnn_c_tensor_to_device)(h.ptr(), dev.0, ptr::null(), o) }
    })
    .expect_err("upload during capture");
    assert!(e.1.contains("not allowed while trace"), "{}", e.1);
    let dims = u32s(&[2, 2]);
    let e = CTensor::try_make(|o| {
        // SAFETY: 2-entry shape, live device.
        unsafe {
            (p.c.ttnn_c_zeros)(
                dims.as_ptr(),
                2,
                sys::TTNN_C_DTYPE_FLOAT32,
                sys::TTNN_C_LAYOUT_TILE,
                dev.0,
                ptr::null(),
                o,
            )
        }
    })
    .expect_err("zeros during capture");
    assert!(
        e.1.starts_with("ttnn_c_zeros: ttnn::zeros: not allowed"),
        "{}",
        e.1
    );
    // The capture itself is not a trace yet; ending it by another id fails.
    let e = execute(dev.0, id).expect_err("still capturing");
    assert_eq!(
        e.1,
        format!("ttnn_c_execute_trace: trace {id} is still being captured")
    );
    let e = release(dev.0, id).expect_err("still capturing");
    assert!(e.1.contains("still being captured"), "{}", e.1);
    let e = end(dev.0, id + 1).expect_err("wrong id");
    assert_eq!(
        e.1,
        format!(
            "ttnn_c_end_trace_capture: trace {id} is being captured, not trace {}",
            id + 1
        )
    );
    end(dev.0, id).expect("end");
    execute(dev.0, id).expect("empty trace replays");
    // After the capture the device takes host writes again.
    // SAFETY: live handles.
    p.ok(unsafe { (p.c.ttnn_c_copy_host_to_device)(h.ptr(), t.ptr()) });
    assert_eq!(t.read_f32(), vec![2.0; 4]);
    release(dev.0, id).expect("release");
    let e = release(dev.0, id).expect_err("double release");
    assert!(e.1.contains("not a captured trace"), "{}", e.1);
    drop((t, h, dev));

    // A device opened without a trace region cannot capture.
    let small = CDevice::open_with(0, 0, 2);
    let e = begin(small.0).expect_err("no trace region");
    assert!(e.1.contains("trace_region_size 0"), "{}", e.1);
    drop(small);
    s.finish();
}
