//! Tensor entry points: creation from host bytes, moves, readback, accessors, reshape.

use std::ffi::{c_int, c_void};

use half::bf16;
use ttnn::{DRAM_MEMORY_CONFIG, DataType, Layout, Shape, Tensor};
use ttnn_sys::{ttnn_c_device, ttnn_c_memory_config, ttnn_c_tensor};

use crate::convert::{self, Out};
use crate::handles;
use crate::status::{Failure, Res, guard, guard_void, invalid};

/// The element type of the bytes exchanged with the caller for a tensor of `dtype`: the dtype
/// itself, except block floats, which go as FLOAT32 (the header's rule).
fn host_dtype(dtype: DataType) -> Res<DataType> {
    Ok(match dtype {
        DataType::Bfloat8B | DataType::Bfloat4B => DataType::Float32,
        DataType::Ternary => {
            return Err(Failure::Unsupported(
                "a Ternary tensor has no ttnn_c_dtype to read it as".into(),
            ));
        }
        d => d,
    })
}

fn element_size(host: DataType) -> usize {
    host.element_size().unwrap_or(4)
}

/// Splits `bytes` into native-endian elements (the caller's buffer may be unaligned).
fn elements<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            f(a)
        })
        .collect()
}

/// A host tensor from the caller's bytes (`bytes.len()` already checked against the shape).
fn host_tensor(bytes: &[u8], dtype: DataType, shape: Shape, layout: Layout) -> Res<Tensor> {
    let t = match dtype {
        DataType::Bfloat16 => Tensor::from_vec(
            elements(bytes, |b| bf16::from_bits(u16::from_ne_bytes(b))),
            shape,
            dtype,
            layout,
        ),
        DataType::Float32 | DataType::Bfloat8B | DataType::Bfloat4B => {
            Tensor::from_vec(elements(bytes, f32::from_ne_bytes), shape, dtype, layout)
        }
        DataType::Uint32 => {
            Tensor::from_vec(elements(bytes, u32::from_ne_bytes), shape, dtype, layout)
        }
        DataType::Int32 => {
            Tensor::from_vec(elements(bytes, i32::from_ne_bytes), shape, dtype, layout)
        }
        DataType::Uint16 => {
            Tensor::from_vec(elements(bytes, u16::from_ne_bytes), shape, dtype, layout)
        }
        DataType::Uint8 => Tensor::from_vec(bytes.to_vec(), shape, dtype, layout),
        DataType::Ternary => unreachable!("no ttnn_c_dtype converts to Ternary"),
    }?;
    Ok(t)
}

/// The logical elements of `t`, row-major, as the caller's bytes.
fn tensor_bytes(t: &Tensor) -> Res<Vec<u8>> {
    fn flat<T, const N: usize>(v: Vec<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
        v.into_iter().flat_map(f).collect()
    }
    Ok(match host_dtype(t.dtype())? {
        DataType::Bfloat16 => flat(t.to_vec::<bf16>()?, |x| x.to_bits().to_ne_bytes()),
        DataType::Float32 => flat(t.to_vec::<f32>()?, f32::to_ne_bytes),
        DataType::Uint32 => flat(t.to_vec::<u32>()?, u32::to_ne_bytes),
        DataType::Int32 => flat(t.to_vec::<i32>()?, i32::to_ne_bytes),
        DataType::Uint16 => flat(t.to_vec::<u16>()?, u16::to_ne_bytes),
        DataType::Uint8 => t.to_vec::<u8>()?,
        other => unreachable!("host_dtype never gives {other:?}"),
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_tensor_from_host(
    data: *const c_void,
    nbytes: usize,
    dtype: u32,
    shape: *const u32,
    rank: u32,
    layout: u32,
    device: *mut ttnn_c_device,
    memory_config: *const ttnn_c_memory_config,
    out: *mut *mut ttnn_c_tensor,
) -> c_int {
    guard("ttnn_c_tensor_from_host", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable; `shape` holds `rank` entries;
        // `memory_config` is NULL or readable.
        let (out, s, mc) = unsafe {
            (
                Out::new(out, "out")?,
                convert::shape(shape, rank, "shape")?,
                convert::opt_memory_config(memory_config)?,
            )
        };
        let dt = convert::dtype(dtype)?;
        let lay = convert::layout(layout)?;
        let size = element_size(host_dtype(dt)?);
        let count = s.volume();
        if nbytes != count * size {
            return Err(invalid(format!(
                "nbytes {nbytes} != {count} elements of {size} bytes"
            )));
        }
        // SAFETY: per ttnn_c.h, `data` holds `nbytes` readable bytes (checked non-null when
        // `nbytes > 0`).
        let bytes = unsafe { convert::array(data.cast::<u8>(), nbytes, "data") }?;
        let dev = if device.is_null() {
            if mc.is_some() {
                return Err(invalid(
                    "a host tensor (device NULL) takes no memory config",
                ));
            }
            None
        } else {
            Some(handles::device(device, "device")?)
        };
        let t = host_tensor(bytes, dt, s, lay)?;
        let t = match dev {
            Some(d) => t.to_device(&d.device, mc.as_ref().unwrap_or(&DRAM_MEMORY_CONFIG))?,
            None => t,
        };
        out.set(handles::new_tensor(t));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_tensor_free(tensor: *mut ttnn_c_tensor) {
    guard_void(|| handles::free_tensor(tensor));
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_tensor_clone(
    tensor: *const ttnn_c_tensor,
    out: *mut *mut ttnn_c_tensor,
) -> c_int {
    guard("ttnn_c_tensor_clone", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable.
        let out = unsafe { Out::new(out, "out") }?;
        let t = handles::tensor(tensor, "tensor")?;
        out.set(handles::new_tensor(t));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_tensor_to_device(
    tensor: *const ttnn_c_tensor,
    device: *mut ttnn_c_device,
    memory_config: *const ttnn_c_memory_config,
    out: *mut *mut ttnn_c_tensor,
) -> c_int {
    guard("ttnn_c_tensor_to_device", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable, `memory_config` NULL or readable.
        let (out, mc) = unsafe {
            (
                Out::new(out, "out")?,
                convert::opt_memory_config(memory_config)?,
            )
        };
        let t = handles::tensor(tensor, "tensor")?;
        let d = handles::device(device, "device")?;
        let on = t.to_device(&d.device, mc.as_ref().unwrap_or(&DRAM_MEMORY_CONFIG))?;
        out.set(handles::new_tensor(on));
        Ok(())
    })
}

/// The host backend completes every op before returning, so `blocking` changes nothing.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_tensor_from_device(
    tensor: *const ttnn_c_tensor,
    _blocking: u8,
    out: *mut *mut ttnn_c_tensor,
) -> c_int {
    guard("ttnn_c_tensor_from_device", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable.
        let out = unsafe { Out::new(out, "out") }?;
        let t = handles::tensor(tensor, "tensor")?;
        out.set(handles::new_tensor(t.to_host()?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_tensor_to_layout(
    tensor: *const ttnn_c_tensor,
    layout: u32,
    out: *mut *mut ttnn_c_tensor,
) -> c_int {
    guard("ttnn_c_tensor_to_layout", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable.
        let out = unsafe { Out::new(out, "out") }?;
        let t = handles::tensor(tensor, "tensor")?;
        let r = ttnn::to_layout(&t, convert::layout(layout)?)?;
        out.set(handles::new_tensor(r));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_copy_host_to_device(
    host_tensor: *const ttnn_c_tensor,
    device_tensor: *mut ttnn_c_tensor,
) -> c_int {
    guard("ttnn_c_copy_host_to_device", || {
        let host = handles::tensor(host_tensor, "host_tensor")?;
        // A new reference to the device tensor's buffer: writing through it writes the buffer
        // every handle of that tensor (and any trace using it) sees.
        let mut dev = handles::tensor(device_tensor, "device_tensor")?;
        ttnn::copy_host_to_device(&host, &mut dev)?;
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_tensor_read_info(
    tensor: *const ttnn_c_tensor,
    out_dtype: *mut u32,
    out_num_elements: *mut u64,
    out_nbytes: *mut u64,
) -> c_int {
    guard("ttnn_c_tensor_read_info", || {
        // SAFETY: per ttnn_c.h, each out-parameter is NULL or writable.
        let (od, on, ob) = unsafe {
            (
                Out::new(out_dtype, "out_dtype")?,
                Out::new(out_num_elements, "out_num_elements")?,
                Out::new(out_nbytes, "out_nbytes")?,
            )
        };
        let t = handles::tensor(tensor, "tensor")?;
        let hd = host_dtype(t.dtype())?;
        let count = t.shape().volume() as u64;
        od.set(convert::from_dtype(hd)?);
        on.set(count);
        ob.set(count * element_size(hd) as u64);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_tensor_read(
    tensor: *const ttnn_c_tensor,
    dst: *mut c_void,
    nbytes: usize,
) -> c_int {
    guard("ttnn_c_tensor_read", || {
        let t = handles::tensor(tensor, "tensor")?;
        let expected = t.shape().volume() * element_size(host_dtype(t.dtype())?);
        if nbytes != expected {
            return Err(Failure::BufferSize(format!(
                "buffer of {nbytes} bytes; the tensor reads {expected}"
            )));
        }
        if expected > 0 && dst.is_null() {
            return Err(invalid("dst is NULL"));
        }
        let bytes = tensor_bytes(&t)?;
        debug_assert_eq!(bytes.len(), expected);
        // SAFETY: per ttnn_c.h, `dst` holds `nbytes` writable bytes (non-null, checked above);
        // `bytes` is our own buffer of exactly that length, so the ranges cannot overlap.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst.cast::<u8>(), expected) };
        Ok(())
    })
}

/// The header's `out_shape` (TTNN_C_MAX_RANK entries) as one array.
///
/// # Safety
/// `p` is NULL or valid for writes of `TTNN_C_MAX_RANK` `u32`s.
unsafe fn shape_out(p: *mut u32) -> Res<Out<[u32; 8]>> {
    // SAFETY: `[u32; 8]` has `u32`'s alignment, and the caller provides 8 entries.
    unsafe { Out::new(p.cast::<[u32; 8]>(), "out_shape") }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_tensor_shape(
    tensor: *const ttnn_c_tensor,
    out_shape: *mut u32,
    out_rank: *mut u32,
) -> c_int {
    guard("ttnn_c_tensor_shape", || {
        // SAFETY: per ttnn_c.h, `out_shape` holds TTNN_C_MAX_RANK entries, `out_rank` one.
        let (os, or) = unsafe { (shape_out(out_shape)?, Out::new(out_rank, "out_rank")?) };
        let t = handles::tensor(tensor, "tensor")?;
        convert::write_shape(t.shape(), os, or)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_tensor_padded_shape(
    tensor: *const ttnn_c_tensor,
    out_shape: *mut u32,
    out_rank: *mut u32,
) -> c_int {
    guard("ttnn_c_tensor_padded_shape", || {
        // SAFETY: as in ttnn_c_tensor_shape.
        let (os, or) = unsafe { (shape_out(out_shape)?, Out::new(out_rank, "out_rank")?) };
        let t = handles::tensor(tensor, "tensor")?;
        convert::write_shape(t.padded_shape(), os, or)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_tensor_dtype(tensor: *const ttnn_c_tensor, out: *mut u32) -> c_int {
    guard("ttnn_c_tensor_dtype", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable.
        let out = unsafe { Out::new(out, "out") }?;
        let t = handles::tensor(tensor, "tensor")?;
        out.set(convert::from_dtype(t.dtype())?);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_tensor_layout(
    tensor: *const ttnn_c_tensor,
    out: *mut u32,
) -> c_int {
    guard("ttnn_c_tensor_layout", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable.
        let out = unsafe { Out::new(out, "out") }?;
        let t = handles::tensor(tensor, "tensor")?;
        out.set(convert::from_layout(t.layout()));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_tensor_is_on_device(
    tensor: *const ttnn_c_tensor,
    out: *mut u8,
) -> c_int {
    guard("ttnn_c_tensor_is_on_device", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable.
        let out = unsafe { Out::new(out, "out") }?;
        let t = handles::tensor(tensor, "tensor")?;
        out.set(u8::from(t.is_on_device()));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_tensor_memory_config(
    tensor: *const ttnn_c_tensor,
    out: *mut ttnn_c_memory_config,
) -> c_int {
    guard("ttnn_c_tensor_memory_config", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable.
        let out = unsafe { Out::new(out, "out") }?;
        let t = handles::tensor(tensor, "tensor")?;
        let mc = t
            .memory_config()
            .ok_or_else(|| invalid("a host tensor has no memory config"))?;
        out.set(convert::from_memory_config(mc)?);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn ttnn_c_reshape(
    tensor: *const ttnn_c_tensor,
    shape: *const u32,
    rank: u32,
    padded_shape: *const u32,
    out: *mut *mut ttnn_c_tensor,
) -> c_int {
    guard("ttnn_c_reshape", || {
        // SAFETY: per ttnn_c.h, `out` is NULL or writable; `shape` and (when not NULL)
        // `padded_shape` hold `rank` entries.
        let (out, s, p) = unsafe {
            (
                Out::new(out, "out")?,
                convert::shape(shape, rank, "shape")?,
                if padded_shape.is_null() {
                    None
                } else {
                    Some(convert::shape(padded_shape, rank, "padded_shape")?)
                },
            )
        };
        let t = handles::tensor(tensor, "tensor")?;
        let r = match p {
            Some(p) => ttnn::reshape_padded(&t, s, p)?,
            None => ttnn::reshape(&t, s)?,
        };
        out.set(handles::new_tensor(r));
        Ok(())
    })
}
