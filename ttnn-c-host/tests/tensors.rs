//! Tensor entry points: creation from host bytes for every dtype (host and device), readback,
//! accessors, memory configs with shard specs, clone, moves, layout changes, copy_host_to_device,
//! reshape, and the handle checks (NULL, freed, double free, wrong kind).

mod common;

use std::ptr;

use common::{
    CDevice, CTensor, Devices, Dual, c_dtype, c_layout, c_mc, host_bytes, session, ttnn_bytes, u32s,
};
use ttnn::{
    BufferType, CoreCoord, CoreRange, CoreRangeSet, DataType, Layout, MemoryConfig,
    ShardOrientation, ShardSpec, Tensor, TensorMemoryLayout,
};
use ttnn_sys as sys;
use ttnn_sys::{ttnn_c_device, ttnn_c_tensor};

const INVALID: i32 = sys::TTNN_C_STATUS_INVALID_ARGUMENT as i32;
const TTNN_ERROR: i32 = sys::TTNN_C_STATUS_TTNN_ERROR as i32;

/// `ttnn_c_tensor_from_host` with explicit arguments.
fn from_host(
    bytes: &[u8],
    dtype: u32,
    shape: &[u32],
    layout: u32,
    device: *mut ttnn_c_device,
    mc: Option<&sys::ttnn_c_memory_config>,
) -> Result<CTensor, (i32, String)> {
    let p = common::provider();
    CTensor::try_make(|o| {
        // SAFETY: the slices outlive the call; `o` is a valid out-parameter.
        unsafe {
            (p.c.ttnn_c_tensor_from_host)(
                bytes.as_ptr().cast(),
                bytes.len(),
                dtype,
                shape.as_ptr(),
                shape.len() as u32,
                layout,
                device,
                mc.map_or(ptr::null(), |m| m as *const _),
                o,
            )
        }
    })
}

/// Values exact in every dtype (small non-negative integers).
fn exact_values(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i % 7) as f32).collect()
}

#[test]
fn every_dtype_round_trips_on_host_and_device() {
    let s = session();
    let devs = Devices::open();
    let cases = [
        (DataType::Float32, Layout::RowMajor),
        (DataType::Float32, Layout::Tile),
        (DataType::Bfloat16, Layout::RowMajor),
        (DataType::Bfloat16, Layout::Tile),
        (DataType::Bfloat8B, Layout::Tile),
        (DataType::Bfloat4B, Layout::Tile),
        (DataType::Uint32, Layout::RowMajor),
        (DataType::Int32, Layout::RowMajor),
        (DataType::Uint16, Layout::RowMajor),
        (DataType::Uint8, Layout::RowMajor),
        (DataType::Uint32, Layout::Tile),
    ];
    let shape = [2usize, 3, 40];
    let n = 240;
    let mut rng = common::Rng::new(5);
    for (dtype, layout) in cases {
        let values = if dtype.is_float() {
            rng.vec(n, 3.0)
        } else {
            exact_values(n)
        };
        let bytes = host_bytes(&values, dtype);
        let dims = u32s(&shape);
        // Host tensor: what ttnn's host tensor holds, bit for bit.
        let h = from_host(
            &bytes,
            c_dtype(dtype),
            &dims,
            c_layout(layout),
            ptr::null_mut(),
            None,
        )
        .expect("host tensor");
        let want = Tensor::from_slice(&values, [2, 3, 40], dtype, layout).expect("ttnn");
        assert!(!h.is_on_device());
        assert_eq!(h.shape(), shape);
        assert_eq!(h.dtype(), c_dtype(dtype));
        assert_eq!(h.layout(), c_layout(layout));
        assert_eq!(h.padded_shape(), want.padded_shape().dims());
        let (rd, count, nbytes) = h.read_info();
        let expect_rd = if matches!(dtype, DataType::Bfloat8B | DataType::Bfloat4B) {
            sys::TTNN_C_DTYPE_FLOAT32
        } else {
            c_dtype(dtype)
        };
        assert_eq!((rd, count), (expect_rd, n as u64), "{dtype:?}");
        assert_eq!(h.read(), ttnn_bytes(&want), "{dtype:?} {layout:?} host");
        assert_eq!(nbytes as usize, ttnn_bytes(&want).len());
        // Plain dtypes read back exactly what was written.
        if !matches!(dtype, DataType::Bfloat8B | DataType::Bfloat4B) {
            assert_eq!(h.read(), bytes, "{dtype:?} exact");
        }
        let e = h
            .memory_config()
            .expect_err("host tensors have no memory config");
        assert_eq!(e.0, INVALID);
        assert!(e.1.contains("host tensor"), "{}", e.1);

        // On the device, directly and through to_device; back through from_device.
        let d = Dual::upload(&devs, &values, &shape, dtype, layout, None);
        d.assert_same(&format!("{dtype:?} {layout:?} device"));
        let p = s.p;
        let moved = CTensor::make(|o| {
            // SAFETY: live handles, NULL memory config (DRAM), valid out-parameter.
            unsafe { (p.c.ttnn_c_tensor_to_device)(h.ptr(), devs.c.0, ptr::null(), o) }
        });
        assert!(moved.is_on_device());
        assert_eq!(moved.read(), d.c.read());
        let back = CTensor::make(|o| {
            // SAFETY: live handle, valid out-parameter.
            unsafe { (p.c.ttnn_c_tensor_from_device)(moved.ptr(), 1, o) }
        });
        assert!(!back.is_on_device());
        assert_eq!(back.read(), h.read());
    }
    drop(devs);
    s.finish();
}

#[test]
fn from_host_and_read_errors() {
    let s = session();
    let p = s.p;
    let dev = CDevice::open();
    let dims = u32s(&[2, 2]);
    let f32s = host_bytes(&[1.0, 2.0, 3.0, 4.0], DataType::Float32);
    let f = c_dtype(DataType::Float32);
    let rm = c_layout(Layout::RowMajor);
    let err = |r: Result<CTensor, (i32, String)>| r.expect_err("must fail");

    let (st, m) = err(from_host(&f32s[..12], f, &dims, rm, ptr::null_mut(), None));
    assert_eq!(st, INVALID);
    assert_eq!(
        m,
        "ttnn_c_tensor_from_host: nbytes 12 != 4 elements of 4 bytes"
    );
    let (st, m) = err(from_host(&f32s, 99, &dims, rm, ptr::null_mut(), None));
    assert_eq!(
        (st, m.as_str()),
        (INVALID, "ttnn_c_tensor_from_host: unknown dtype 99")
    );
    let (st, m) = err(from_host(&f32s, f, &dims, 7, ptr::null_mut(), None));
    assert_eq!(
        (st, m.as_str()),
        (INVALID, "ttnn_c_tensor_from_host: unknown layout 7")
    );
    let (st, m) = err(from_host(&f32s, f, &[], rm, ptr::null_mut(), None));
    assert_eq!(st, INVALID);
    assert!(m.contains("shape: rank must be 1..8, got 0"), "{m}");
    let mc = c_mc(&ttnn::DRAM_MEMORY_CONFIG);
    let (st, m) = err(from_host(&f32s, f, &dims, rm, ptr::null_mut(), Some(&mc)));
    assert_eq!(st, INVALID);
    assert!(m.contains("takes no memory config"), "{m}");
    // Block floats need TILE: the ttnn error text, after the entry point.
    let (st, m) = err(from_host(
        &f32s,
        c_dtype(DataType::Bfloat8B),
        &dims,
        rm,
        ptr::null_mut(),
        None,
    ));
    assert_eq!(st, TTNN_ERROR);
    assert!(
        m.starts_with("ttnn_c_tensor_from_host: Tensor::from_vec:") && m.contains("Tile"),
        "{m}"
    );
    // An integer out of range for the dtype is not a C concern: the bytes are the elements.
    // A TRACE buffer type is not for tensors.
    let mut trace_mc = c_mc(&ttnn::DRAM_MEMORY_CONFIG);
    trace_mc.buffer_type = sys::TTNN_C_BUFFER_TYPE_TRACE;
    let (st, m) = err(from_host(&f32s, f, &dims, rm, dev.0, Some(&trace_mc)));
    assert_eq!(st, INVALID);
    assert!(m.contains("TRACE"), "{m}");
    // NULL data with bytes promised.
    let r = CTensor::try_make(|o| {
        // SAFETY: NULL data is the error tested; the other pointers are valid.
        unsafe {
            (p.c.ttnn_c_tensor_from_host)(
                ptr::null(),
                16,
                f,
                dims.as_ptr(),
                2,
                rm,
                ptr::null_mut(),
                ptr::null(),
                o,
            )
        }
    });
    assert!(err(r).1.contains("data is NULL"));

    // Reads: a wrong size is BUFFER_SIZE; NULL dst is INVALID_ARGUMENT.
    let t = from_host(&f32s, f, &dims, rm, dev.0, None).expect("tensor");
    let mut small = [0u8; 8];
    // SAFETY: `small` is 8 writable bytes (we pass its true size).
    let st = unsafe { (p.c.ttnn_c_tensor_read)(t.ptr(), small.as_mut_ptr().cast(), 8) };
    assert_eq!(st, sys::TTNN_C_STATUS_BUFFER_SIZE as i32);
    assert_eq!(
        p.last_error(),
        "ttnn_c_tensor_read: buffer of 8 bytes; the tensor reads 16"
    );
    // SAFETY: NULL dst is the error tested.
    let st = unsafe { (p.c.ttnn_c_tensor_read)(t.ptr(), ptr::null_mut(), 16) };
    assert_eq!(st, INVALID);
    // Out-parameters left NULL.
    // SAFETY: NULL out-parameters are the errors tested.
    unsafe {
        let mut d = 0u32;
        let mut n = 0u64;
        assert_eq!(
            (p.c.ttnn_c_tensor_read_info)(t.ptr(), &mut d, &mut n, ptr::null_mut()),
            INVALID
        );
        assert_eq!(
            p.last_error(),
            "ttnn_c_tensor_read_info: out_nbytes is NULL"
        );
        assert_eq!((p.c.ttnn_c_tensor_dtype)(t.ptr(), ptr::null_mut()), INVALID);
        assert_eq!(
            (p.c.ttnn_c_tensor_layout)(t.ptr(), ptr::null_mut()),
            INVALID
        );
        assert_eq!(
            (p.c.ttnn_c_tensor_is_on_device)(t.ptr(), ptr::null_mut()),
            INVALID
        );
        assert_eq!(
            (p.c.ttnn_c_tensor_memory_config)(t.ptr(), ptr::null_mut()),
            INVALID
        );
        let mut rank = 0;
        assert_eq!(
            (p.c.ttnn_c_tensor_shape)(t.ptr(), ptr::null_mut(), &mut rank),
            INVALID
        );
        assert_eq!(p.last_error(), "ttnn_c_tensor_shape: out_shape is NULL");
        let mut dims8 = [0u32; 8];
        assert_eq!(
            (p.c.ttnn_c_tensor_padded_shape)(t.ptr(), dims8.as_mut_ptr(), ptr::null_mut()),
            INVALID
        );
    }
    drop((t, dev));
    s.finish();
}

fn sharded_mc() -> MemoryConfig {
    // Two core rectangles, so the C struct carries more than one range.
    let grid = CoreRangeSet::new(vec![
        CoreRange::new(CoreCoord::new(0, 0), CoreCoord::new(3, 0)),
        CoreRange::new(CoreCoord::new(0, 1), CoreCoord::new(3, 1)),
    ])
    .expect("disjoint");
    MemoryConfig::sharded(
        TensorMemoryLayout::HeightSharded,
        BufferType::L1,
        ShardSpec::new(grid, [32, 64], ShardOrientation::RowMajor),
    )
}

#[test]
fn memory_configs_with_shard_specs_round_trip() {
    let s = session();
    let devs = Devices::open();
    let mc = sharded_mc();
    let values = common::Rng::new(1).vec(8 * 32 * 64, 1.0);
    let t = Dual::upload(
        &devs,
        &values,
        &[1, 1, 256, 64],
        DataType::Bfloat16,
        Layout::Tile,
        Some(&mc),
    );
    t.assert_same("sharded upload");
    let got = t.c.memory_config().expect("device tensor");
    assert_eq!(
        got.memory_layout,
        sys::TTNN_C_TENSOR_MEMORY_LAYOUT_HEIGHT_SHARDED
    );
    assert_eq!(got.buffer_type, sys::TTNN_C_BUFFER_TYPE_L1);
    assert_eq!(got.has_shard_spec, 1);
    assert_eq!(got.shard_spec.num_core_ranges, 2);
    assert_eq!(got.shard_spec.shape, [32, 64]);
    assert_eq!(got.shard_spec.core_ranges[1].start.y, 1);
    assert_eq!(got.shard_spec.core_ranges[1].end.x, 3);

    // Bad shard specs are the provider's argument errors.
    let p = s.p;
    let bytes = host_bytes(&values, DataType::Bfloat16);
    let dims = u32s(&[1, 1, 256, 64]);
    let mut bad = c_mc(&mc);
    bad.shard_spec.num_core_ranges = 17;
    let e = from_host(
        &bytes,
        c_dtype(DataType::Bfloat16),
        &dims,
        1,
        devs.c.0,
        Some(&bad),
    )
    .expect_err("too many ranges");
    assert_eq!(e.0, INVALID);
    assert!(e.1.contains("1..16 core ranges, got 17"), "{}", e.1);
    let mut overlap = c_mc(&mc);
    overlap.shard_spec.core_ranges[1].start.y = 0;
    let e = from_host(
        &bytes,
        c_dtype(DataType::Bfloat16),
        &dims,
        1,
        devs.c.0,
        Some(&overlap),
    )
    .expect_err("overlap");
    assert!(e.1.contains("core ranges overlap"), "{}", e.1);
    // A shard spec that does not tile the tensor: ttnn's error.
    let mut wrong = c_mc(&mc);
    wrong.shard_spec.shape = [32, 32];
    let e = from_host(
        &bytes,
        c_dtype(DataType::Bfloat16),
        &dims,
        1,
        devs.c.0,
        Some(&wrong),
    )
    .expect_err("wrong shard");
    assert_eq!(e.0, TTNN_ERROR);
    assert!(
        e.1.starts_with("ttnn_c_tensor_from_host: Tensor::to_device: invalid memory config"),
        "{}",
        e.1
    );
    let _ = p;
    drop((t, devs));
    s.finish();
}

#[test]
fn clone_shares_and_copy_host_to_device_overwrites() {
    let s = session();
    let p = s.p;
    let devs = Devices::open();
    let t = Dual::upload(
        &devs,
        &[1.0, 2.0, 3.0, 4.0],
        &[2, 2],
        DataType::Float32,
        Layout::Tile,
        None,
    );
    let alias = t.c.try_clone();
    assert_ne!(alias.ptr(), t.c.ptr(), "a clone is a new handle");
    let fresh = from_host(
        &host_bytes(&[5.0, 6.0, 7.0, 8.0], DataType::Float32),
        c_dtype(DataType::Float32),
        &u32s(&[2, 2]),
        c_layout(Layout::Tile),
        ptr::null_mut(),
        None,
    )
    .expect("host");
    // SAFETY: live handles.
    p.ok(unsafe { (p.c.ttnn_c_copy_host_to_device)(fresh.ptr(), t.c.ptr()) });
    // Both handles see the write: one buffer.
    assert_eq!(alias.read_f32(), vec![5.0, 6.0, 7.0, 8.0]);
    assert_eq!(t.c.read_f32(), vec![5.0, 6.0, 7.0, 8.0]);
    // Freeing one handle leaves the other working.
    drop(alias);
    assert_eq!(t.c.read_f32()[3], 8.0);
    // Mismatched shape: ttnn's error.
    let wrong = from_host(
        &host_bytes(&[1.0; 6], DataType::Float32),
        c_dtype(DataType::Float32),
        &u32s(&[2, 3]),
        c_layout(Layout::Tile),
        ptr::null_mut(),
        None,
    )
    .expect("host");
    // SAFETY: live handles.
    let st = unsafe { (p.c.ttnn_c_copy_host_to_device)(wrong.ptr(), t.c.ptr()) };
    assert_eq!(st, TTNN_ERROR);
    let e = p.last_error();
    assert!(
        e.starts_with(
            "ttnn_c_copy_host_to_device: copy_host_to_device: the source: expected shape [2, 2]"
        ),
        "{e}"
    );
    // The destination must be on a device.
    // SAFETY: live handles.
    let st = unsafe { (p.c.ttnn_c_copy_host_to_device)(fresh.ptr(), wrong.ptr()) };
    assert_eq!(st, TTNN_ERROR);
    assert!(p.last_error().contains("must be on a device"));
    drop((t, fresh, wrong, devs));
    s.finish();
}

#[test]
fn to_layout_and_reshape_match_ttnn() {
    let s = session();
    let p = s.p;
    let devs = Devices::open();
    let values = common::Rng::new(3).vec(5 * 70, 1.0);
    let t = Dual::upload(
        &devs,
        &values,
        &[1, 5, 70],
        DataType::Bfloat16,
        Layout::Tile,
        None,
    );
    // Device untilize and tilize.
    let rm = Dual::of(
        CTensor::make(|o| {
            // SAFETY: live handle, valid out-parameter.
            unsafe { (p.c.ttnn_c_tensor_to_layout)(t.c.ptr(), sys::TTNN_C_LAYOUT_ROW_MAJOR, o) }
        }),
        ttnn::to_layout(&t.r, Layout::RowMajor).expect("ttnn"),
    );
    rm.assert_same("untilize");
    // A host tensor converts too.
    let host = CTensor::make(|o| {
        // SAFETY: live handle, valid out-parameter.
        unsafe { (p.c.ttnn_c_tensor_from_device)(t.c.ptr(), 0, o) }
    });
    let host_rm = CTensor::make(|o| {
        // SAFETY: live handle, valid out-parameter.
        unsafe { (p.c.ttnn_c_tensor_to_layout)(host.ptr(), sys::TTNN_C_LAYOUT_ROW_MAJOR, o) }
    });
    assert_eq!(host_rm.layout(), sys::TTNN_C_LAYOUT_ROW_MAJOR);
    assert!(!host_rm.is_on_device());
    assert_eq!(host_rm.read(), t.c.read());

    // Reshape: a view; with the layout's own padding; other padding is refused.
    let shape = u32s(&[5, 70]);
    let v = Dual::of(
        CTensor::make(|o| {
            // SAFETY: live handle, `shape` holds 2 entries, valid out-parameter.
            unsafe { (p.c.ttnn_c_reshape)(t.c.ptr(), shape.as_ptr(), 2, ptr::null(), o) }
        }),
        ttnn::reshape(&t.r, [5, 70]).expect("ttnn"),
    );
    v.assert_same("reshape");
    let padded = u32s(&[32, 96]);
    let v2 = CTensor::make(|o| {
        // SAFETY: as above, with a 2-entry padded shape.
        unsafe { (p.c.ttnn_c_reshape)(t.c.ptr(), shape.as_ptr(), 2, padded.as_ptr(), o) }
    });
    assert_eq!(v2.padded_shape(), vec![32, 96]);
    let other = u32s(&[64, 96]);
    let e = CTensor::try_make(|o| {
        // SAFETY: as above.
        unsafe { (p.c.ttnn_c_reshape)(t.c.ptr(), shape.as_ptr(), 2, other.as_ptr(), o) }
    })
    .expect_err("host padding only");
    assert_eq!(e.0, TTNN_ERROR);
    assert!(
        e.1.starts_with("ttnn_c_reshape: ttnn::reshape: invalid argument: padded shape [64, 96]"),
        "{}",
        e.1
    );
    let bad = u32s(&[7, 7]);
    let e = CTensor::try_make(|o| {
        // SAFETY: as above.
        unsafe { (p.c.ttnn_c_reshape)(t.c.ptr(), bad.as_ptr(), 2, ptr::null(), o) }
    })
    .expect_err("volume");
    assert!(e.1.contains("volumes must match"), "{}", e.1);
    drop((t, rm, host, host_rm, v, v2, devs));
    s.finish();
}

#[test]
fn dead_and_foreign_handles_are_errors_not_ub() {
    let s = session();
    let p = s.p;
    let dev = CDevice::open();
    let t = from_host(
        &host_bytes(&[1.0], DataType::Float32),
        c_dtype(DataType::Float32),
        &[1],
        c_layout(Layout::RowMajor),
        dev.0,
        None,
    )
    .expect("tensor");
    let raw = t.ptr();
    drop(t); // freed once, through the RAII wrapper
    assert_eq!(s.bad_frees(), 0);
    // Use after free.
    let mut d = 0;
    // SAFETY: a freed handle is the error tested; the provider never dereferences handles.
    let st = unsafe { (p.c.ttnn_c_tensor_dtype)(raw, &mut d) };
    assert_eq!(st, INVALID);
    let e = p.last_error();
    assert!(
        e.starts_with("ttnn_c_tensor_dtype: tensor (0x")
            && e.contains("is not a live tensor handle"),
        "{e}"
    );
    // Double free: ignored, counted.
    // SAFETY: as above.
    unsafe { (p.c.ttnn_c_tensor_free)(raw) };
    assert_eq!(s.bad_frees(), 1);
    // A device handle where a tensor is expected, and the reverse.
    // SAFETY: wrong-kind handles are the error tested.
    unsafe {
        let st = (p.c.ttnn_c_tensor_dtype)(dev.0.cast::<ttnn_c_tensor>(), &mut d);
        assert_eq!(st, INVALID);
        let mut g = sys::ttnn_c_core_coord { x: 0, y: 0 };
        let st = (p.c.ttnn_c_device_compute_grid)(raw.cast::<ttnn_c_device>(), &mut g);
        assert_eq!(st, INVALID);
        assert!(p.last_error().contains("is not a live device handle"));
        // A garbage pointer.
        let st = (p.c.ttnn_c_tensor_dtype)(0xdead_beef_usize as *const ttnn_c_tensor, &mut d);
        assert_eq!(st, INVALID);
        // NULL.
        let st = (p.c.ttnn_c_tensor_dtype)(ptr::null(), &mut d);
        assert_eq!(st, INVALID);
        assert_eq!(p.last_error(), "ttnn_c_tensor_dtype: tensor is NULL");
        // Freeing a tensor as a device (and NULL frees) changes nothing.
        (p.c.ttnn_c_tensor_free)(ptr::null_mut());
        (p.c.ttnn_c_device_close)(raw.cast::<ttnn_c_device>());
    }
    assert_eq!(s.bad_frees(), 2);
    // The device still works; its close is the real one.
    let mut g = sys::ttnn_c_core_coord { x: 0, y: 0 };
    // SAFETY: live handle.
    p.ok(unsafe { (p.c.ttnn_c_device_compute_grid)(dev.0, &mut g) });
    let dev_raw = dev.0;
    drop(dev);
    // SAFETY: a closed device is the error tested.
    unsafe {
        let st = (p.c.ttnn_c_device_compute_grid)(dev_raw, &mut g);
        assert_eq!(st, INVALID);
        (p.c.ttnn_c_device_close)(dev_raw);
    }
    assert_eq!(s.bad_frees(), 3);
    // Handles are never reused: a new tensor gets a new token.
    let again = from_host(
        &host_bytes(&[1.0], DataType::Float32),
        c_dtype(DataType::Float32),
        &[1],
        c_layout(Layout::RowMajor),
        ptr::null_mut(),
        None,
    )
    .expect("tensor");
    assert_ne!(again.ptr(), raw);
    drop(again);
    // The dead-handle frees were deliberate.
    s.finish_with_bad_frees(3);
}
