//! Tensor creation on the device: `zeros`.

use crate::device::{BackendImpl, Device};
use crate::error::Result;
use crate::tensor::{Tensor, check_tile_dtype};
use crate::types::{DataType, Layout, MemoryConfig, Shape};

/// A zero-filled tensor allocated directly on `device` (TT-NN's `ttnn.zeros(shape, dtype,
/// layout, device, memory_config)`): no host copy, so large buffers such as a KV cache cost
/// their size once. Like any device write, an error during trace capture.
pub fn zeros(
    shape: impl Into<Shape>,
    dtype: DataType,
    layout: Layout,
    device: &Device,
    memory_config: &MemoryConfig,
) -> Result<Tensor> {
    let op = "ttnn::zeros";
    check_tile_dtype(op, dtype, layout)?;
    device.ensure_not_capturing(op)?;
    let shape = shape.into();
    let mc = crate::ops::resolve_shard_spec(op, device, memory_config.clone(), shape, layout)?;
    match device.backend_impl() {
        BackendImpl::Host(_) => Tensor::allocate(device, op, shape, dtype, layout, &mc),
        // With the shard spec resolved as the host does: TT-NN's zeros takes no hint form.
        BackendImpl::Tt(tt) => crate::tt::ops::zeros(
            &crate::tt::Tt::new(tt, device),
            op,
            shape,
            dtype,
            layout,
            &mc,
        ),
    }
}
