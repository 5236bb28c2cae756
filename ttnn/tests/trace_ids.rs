//! Trace ids are process-wide, as tt-metal issues them (`MeshTrace::next_id()`): consecutive
//! over devices, consumed by a failed begin, never reused after a release. One test in its own
//! binary, so no other capture interleaves.

use ttnn::{Device, DeviceSpec, begin_trace_capture, end_trace_capture, release_trace};

#[test]
fn trace_ids_are_process_wide_and_never_reused() {
    let a = Device::open(DeviceSpec::default().with_threads(1)).expect("open a");
    let b = Device::open(DeviceSpec::default().with_threads(1)).expect("open b");
    let first = begin_trace_capture(&a, 0).expect("begin on a");
    // Nested capture fails, and still uses an id.
    assert!(begin_trace_capture(&a, 0).is_err());
    let ta = end_trace_capture(&a, first, 0).expect("end on a");
    let second = begin_trace_capture(&b, 0).expect("begin on b");
    assert_eq!(second.0, first.0 + 2);
    let tb = end_trace_capture(&b, second, 0).expect("end on b");
    release_trace(ta);
    let third = begin_trace_capture(&a, 0).expect("begin again on a");
    assert_eq!(third.0, second.0 + 1, "a released id is not reused");
    drop(end_trace_capture(&a, third, 0).expect("end"));
    drop(tb);
}
