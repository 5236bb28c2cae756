//! The library and device entry points: version, implementation, last error, the panic barrier,
//! open/close, compute grid, memory statistics; and that the provider implements exactly the
//! header's entry points.

mod common;

use std::ffi::CStr;
use std::ptr;

use common::{CDevice, CTensor, Devices, Dual, c_dtype, c_layout, host_bytes, session, u32s};
use ttnn::{DataType, Layout};
use ttnn_sys as sys;

/// Function names the header declares (`ttnn_c_name(` outside comments and typedefs).
fn header_functions() -> Vec<String> {
    let header = include_str!("../../ttnn-sys/csrc/ttnn_c.h");
    let mut names = Vec::new();
    for line in header.lines() {
        let line = line.trim_start();
        if line.starts_with("/*") || line.starts_with('*') || line.starts_with('#') {
            continue;
        }
        if line.starts_with("typedef") {
            continue;
        }
        if let Some(pos) = line.find("ttnn_c_") {
            let rest = &line[pos..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if rest[end..].starts_with('(') {
                names.push(rest[..end].to_string());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn implements_exactly_the_header_entry_points() {
    let mut ours: Vec<String> = ttnn_c_host::ENTRY_POINTS
        .iter()
        .map(|s| s.to_string())
        .collect();
    ours.sort();
    assert_eq!(ours, header_functions());
    // And the built library exports them all: TtnnC::new resolves every one or fails.
    let s = session();
    assert!(s.p.live_handles() < u64::MAX);
    s.finish();
}

/// Every entry point is called by some test of this crate (through the loaded library).
#[test]
fn every_entry_point_is_exercised_by_a_test() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut sources = String::new();
    for sub in [dir.clone(), dir.join("common")] {
        for entry in std::fs::read_dir(&sub).expect("tests dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "rs") {
                sources.push_str(&std::fs::read_to_string(&path).expect("read test source"));
            }
        }
    }
    let missing: Vec<&str> = ttnn_c_host::ENTRY_POINTS
        .iter()
        .copied()
        .filter(|name| !sources.contains(&format!("c.{name})(")))
        .collect();
    assert!(
        missing.is_empty(),
        "entry points no test calls: {missing:?}"
    );
}

#[test]
fn version_implementation_and_empty_last_error() {
    let s = session();
    let p = s.p;
    // SAFETY: argument-less entry points.
    unsafe {
        assert_eq!((p.c.ttnn_c_abi_version)(), sys::TTNN_C_ABI_VERSION);
        let imp = CStr::from_ptr((p.c.ttnn_c_implementation)()).to_string_lossy();
        assert!(imp.contains("ttnn-c-host") && imp.contains("host"), "{imp}");
        // A successful call leaves "" behind.
        let mut grid = sys::ttnn_c_core_coord { x: 0, y: 0 };
        let d = CDevice::open();
        p.ok((p.c.ttnn_c_device_compute_grid)(d.0, &mut grid));
        assert_eq!(p.last_error(), "");
        assert_eq!((grid.x, grid.y), (8, 8));
        // A failure sets it; the next successful call clears it.
        let st = (p.c.ttnn_c_device_compute_grid)(d.0, ptr::null_mut());
        assert_eq!(st, sys::TTNN_C_STATUS_INVALID_ARGUMENT as i32);
        assert_eq!(p.last_error(), "ttnn_c_device_compute_grid: out is NULL");
        p.ok((p.c.ttnn_c_device_compute_grid)(d.0, &mut grid));
        assert_eq!(p.last_error(), "");
    }
    s.finish();
}

#[test]
fn a_panic_becomes_a_status_not_an_unwind() {
    let s = session();
    let st = (s.p.test_panic)();
    assert_eq!(st, sys::TTNN_C_STATUS_UNKNOWN_EXCEPTION as i32);
    let e = s.p.last_error();
    assert!(
        e.starts_with("ttnn_c_host_test_panic: panic: deliberate panic"),
        "{e}"
    );
    // The provider still works afterwards.
    let d = CDevice::open();
    drop(d);
    s.finish();
}

#[test]
fn device_open_errors_and_close() {
    let s = session();
    let p = s.p;
    let mut d = ptr::null_mut();
    // SAFETY: valid out-parameter, or NULL to test the check.
    unsafe {
        let st = (p.c.ttnn_c_device_open)(1, 0, 0, 1, &mut d);
        assert_eq!(st, sys::TTNN_C_STATUS_TTNN_ERROR as i32);
        assert!(p.last_error().contains("no device 1"), "{}", p.last_error());
        assert!(d.is_null(), "out is written only on success");
        let st = (p.c.ttnn_c_device_open)(0, 0, 0, 3, &mut d);
        assert_eq!(st, sys::TTNN_C_STATUS_INVALID_ARGUMENT as i32);
        assert!(p.last_error().contains("num_command_queues"));
        let st = (p.c.ttnn_c_device_open)(0, 0, 0, 1, ptr::null_mut());
        assert_eq!(st, sys::TTNN_C_STATUS_INVALID_ARGUMENT as i32);
        // A trace region larger than DRAM: the ttnn error, prefixed by the entry point.
        let st = (p.c.ttnn_c_device_open)(0, 0, 1 << 40, 1, &mut d);
        assert_eq!(st, sys::TTNN_C_STATUS_TTNN_ERROR as i32);
        let e = p.last_error();
        assert!(
            e.starts_with("ttnn_c_device_open: Device::open: invalid argument: trace_region_size"),
            "{e}"
        );
        // Close accepts NULL; two devices are independent.
        (p.c.ttnn_c_device_close)(ptr::null_mut());
    }
    let a = CDevice::open();
    let b = CDevice::open_with(4096, 1 << 20, 2);
    assert_ne!(a.0, b.0);
    assert_eq!(s.live(), 2);
    drop((a, b));
    s.finish();
}

#[test]
fn memory_stats_follow_allocations() {
    let s = session();
    let p = s.p;
    let devs = Devices::open();
    let stats = |bt: u32| {
        let mut m = sys::ttnn_c_memory_stats::default();
        // SAFETY: valid handle and out-parameter.
        p.ok(unsafe { (p.c.ttnn_c_device_memory_stats)(devs.c.0, bt, &mut m) });
        m
    };
    let chip = ttnn::ChipSpec::wormhole_n150();
    let dram0 = stats(sys::TTNN_C_BUFFER_TYPE_DRAM);
    assert_eq!(
        dram0.total_allocatable_size_bytes,
        (chip.dram_size - 30_000_000) / chip.dram_banks as u64
    );
    assert_eq!(dram0.total_allocated_bytes, 0);
    assert_eq!(dram0.total_free_bytes, dram0.total_allocatable_size_bytes);
    let l10 = stats(sys::TTNN_C_BUFFER_TYPE_L1);
    assert_eq!(
        l10.total_allocatable_size_bytes,
        chip.l1_size_per_core - chip.l1_reserved_per_core
    );
    let trace = stats(sys::TTNN_C_BUFFER_TYPE_TRACE);
    assert_eq!(trace.total_allocatable_size_bytes, 30_000_000);
    let small = stats(sys::TTNN_C_BUFFER_TYPE_L1_SMALL);
    assert_eq!(small.total_allocatable_size_bytes, 0);

    // 12 tiles of f32 in DRAM: one 4 KiB tile per bank.
    let t = Dual::upload(
        &devs,
        &vec![1.0; 12 * 1024],
        &[1, 1, 32, 12 * 32],
        DataType::Float32,
        Layout::Tile,
        None,
    );
    let dram1 = stats(sys::TTNN_C_BUFFER_TYPE_DRAM);
    assert_eq!(dram1.total_allocated_bytes, 4096);
    assert_eq!(
        dram1.total_free_bytes + dram1.total_allocated_bytes,
        dram1.total_allocatable_size_bytes
    );
    // In L1 (interleaved over the 64 cores): the fullest core holds one tile.
    let l1 = Dual::upload(
        &devs,
        &vec![1.0; 1024],
        &[32, 32],
        DataType::Float32,
        Layout::Tile,
        Some(&ttnn::L1_MEMORY_CONFIG),
    );
    assert_eq!(
        stats(sys::TTNN_C_BUFFER_TYPE_L1).total_allocated_bytes,
        4096
    );
    drop((t, l1));
    assert_eq!(stats(sys::TTNN_C_BUFFER_TYPE_DRAM).total_allocated_bytes, 0);
    assert_eq!(stats(sys::TTNN_C_BUFFER_TYPE_L1).total_allocated_bytes, 0);

    // SAFETY: valid handle; NULL out and an unknown buffer type are the errors tested.
    unsafe {
        let mut m = sys::ttnn_c_memory_stats::default();
        let st = (p.c.ttnn_c_device_memory_stats)(devs.c.0, 9, &mut m);
        assert_eq!(st, sys::TTNN_C_STATUS_INVALID_ARGUMENT as i32);
        assert_eq!(
            p.last_error(),
            "ttnn_c_device_memory_stats: unknown buffer type 9"
        );
    }
    drop(devs);
    s.finish();
}

/// Tensors keep the host device alive after its handle is closed (TT-NN would require freeing
/// them first; the provider is lenient), and freeing them afterwards is clean.
#[test]
fn tensors_outlive_a_closed_device_handle() {
    let s = session();
    let p = s.p;
    let d = CDevice::open();
    let bytes = host_bytes(&[1.0, 2.0], DataType::Float32);
    let dims = u32s(&[2]);
    let t = CTensor::make(|o| {
        // SAFETY: valid buffers and out-parameter.
        unsafe {
            (p.c.ttnn_c_tensor_from_host)(
                bytes.as_ptr().cast(),
                bytes.len(),
                c_dtype(DataType::Float32),
                dims.as_ptr(),
                1,
                c_layout(Layout::RowMajor),
                d.0,
                ptr::null(),
                o,
            )
        }
    });
    drop(d);
    assert_eq!(t.read_f32(), vec![1.0, 2.0]);
    drop(t);
    s.finish();
}
