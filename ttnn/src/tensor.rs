//! `Tensor`: a host tensor (data in process memory) or a device tensor (a buffer in a device's
//! memory, freed when the last handle drops).

use std::sync::Arc;

use ndarray::{ArrayD, IxDyn};

use crate::device::{Allocation, BackendImpl, Device};
use crate::error::{Error, Result};
use crate::host::HostBuffer;
use crate::host::data::{Element, HostData};
use crate::tt::TtTensor;
use crate::types::{DataType, Layout, MemoryConfig, Shape};

#[derive(Clone)]
pub(crate) enum Storage {
    Host(Arc<HostData>),
    Device {
        device: Device,
        buffer: DeviceBuffer,
    },
}

/// A device tensor's storage, one variant per backend (the device's backend decides which).
#[derive(Clone)]
pub(crate) enum DeviceBuffer {
    /// The host backend's buffer. `alloc` is its reservation in the modelled memory, owned by
    /// the tensor handles only: a trace that recorded an op keeps the data (`buffer`) but not
    /// the reservation, so memory freed by dropping a tensor during capture can be reused by
    /// later ops of the same capture, as TT-NN's allocator reuses addresses. A trace's working
    /// set is then the peak of what was live, not the sum of every intermediate.
    Host {
        buffer: Arc<HostBuffer>,
        #[allow(dead_code)] // held for its Drop: the reservation lives as long as the handles
        alloc: Arc<Allocation>,
    },
    /// A tensor handle of the TT-NN shim (freed when the last clone drops). No modelled
    /// reservation: the library's allocator owns the device memory.
    Tt(Arc<TtTensor>),
}

impl DeviceBuffer {
    fn memory_config(&self) -> &MemoryConfig {
        match self {
            Self::Host { buffer, .. } => &buffer.memory_config,
            Self::Tt(t) => &t.memory_config,
        }
    }
}

/// A tensor. Cloning shares the data (like a TT-NN tensor handle); a device tensor's memory
/// returns to its device when the last handle is dropped (a trace that used it keeps only the
/// data, see `Storage`).
#[derive(Clone)]
pub struct Tensor {
    shape: Shape,
    dtype: DataType,
    layout: Layout,
    pub(crate) storage: Storage,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Tensor");
        d.field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .field("layout", &self.layout);
        match &self.storage {
            Storage::Host(_) => d.field("storage", &"host"),
            Storage::Device { device, buffer, .. } => d
                .field("device", &device.id())
                .field("memory_config", buffer.memory_config()),
        };
        d.finish()
    }
}

fn check_len(op: &'static str, len: usize, shape: Shape) -> Result<()> {
    if len != shape.volume() {
        return Err(Error::arg(
            op,
            format!(
                "{len} values do not fill shape {shape} ({} elements)",
                shape.volume()
            ),
        ));
    }
    Ok(())
}

/// Block floats and ternary exist only in tile layout.
pub(crate) fn check_tile_dtype(op: &'static str, dtype: DataType, layout: Layout) -> Result<()> {
    if dtype.requires_tile_layout() && layout != Layout::Tile {
        return Err(Error::LayoutMismatch {
            op,
            what: format!("a {dtype:?} tensor"),
            got: layout,
            expected: Layout::Tile,
        });
    }
    Ok(())
}

impl Tensor {
    pub(crate) fn from_parts(
        shape: Shape,
        dtype: DataType,
        layout: Layout,
        storage: Storage,
    ) -> Self {
        Self {
            shape,
            dtype,
            layout,
            storage,
        }
    }

    /// A host tensor from `values` (row-major), converted to `dtype`: bf16 rounds to nearest
    /// even, block floats are encoded as tt-metal packs them, integers and ternary values must
    /// be exact and in range.
    pub fn from_slice<T: Element>(
        values: &[T],
        shape: impl Into<Shape>,
        dtype: DataType,
        layout: Layout,
    ) -> Result<Self> {
        let op = "Tensor::from_slice";
        let shape = shape.into();
        check_len(op, values.len(), shape)?;
        check_tile_dtype(op, dtype, layout)?;
        let data = T::into_host_data(op, values, dtype, shape)?;
        Ok(Self::from_parts(
            shape,
            dtype,
            layout,
            Storage::Host(Arc::new(data)),
        ))
    }

    /// Like [`Tensor::from_slice`], taking ownership (no copy when `T` is already `dtype`'s
    /// storage type, e.g. `f32` for `Float32`).
    pub fn from_vec<T: Element>(
        values: Vec<T>,
        shape: impl Into<Shape>,
        dtype: DataType,
        layout: Layout,
    ) -> Result<Self> {
        let op = "Tensor::from_vec";
        let shape = shape.into();
        check_len(op, values.len(), shape)?;
        check_tile_dtype(op, dtype, layout)?;
        let data = T::into_host_data_owned(op, values, dtype, shape)?;
        Ok(Self::from_parts(
            shape,
            dtype,
            layout,
            Storage::Host(Arc::new(data)),
        ))
    }

    /// A host tensor from an `ndarray` array (any memory order; read in logical order).
    pub fn from_array<T: Element, S: ndarray::Data<Elem = T>, D: ndarray::Dimension>(
        array: &ndarray::ArrayBase<S, D>,
        dtype: DataType,
        layout: Layout,
    ) -> Result<Self> {
        let shape = Shape::try_new(array.shape())
            .ok_or_else(|| Error::arg("Tensor::from_array", "rank exceeds MAX_RANK"))?;
        let values: Vec<T> = array.iter().copied().collect();
        Self::from_slice(&values, shape, dtype, layout)
    }

    /// A bf16 host tensor over `len = shape.volume()` values at byte `offset` of `owner`,
    /// without a copy (e.g. an embedding table in a memory-mapped checkpoint; moved to the
    /// host backend with [`Tensor::into_device`] it stays borrowed). Errors if the range is out
    /// of bounds or not 2-byte aligned (copy the values instead).
    pub fn from_shared_bf16(
        owner: crate::host::data::SharedBytes,
        offset: usize,
        shape: impl Into<Shape>,
        layout: Layout,
    ) -> Result<Self> {
        let op = "Tensor::from_shared_bf16";
        let shape = shape.into();
        let buf =
            crate::host::data::Bf16Buf::shared(owner, offset, shape.volume()).ok_or_else(|| {
                Error::arg(op, "the bf16 range is out of bounds or not 2-byte aligned")
            })?;
        Ok(Self::from_parts(
            shape,
            DataType::Bfloat16,
            layout,
            Storage::Host(Arc::new(HostData::Bf16(buf))),
        ))
    }

    /// A host tensor of `dtype` from little-endian bf16 bytes (a checkpoint tensor), converted
    /// row by row without an f32 copy of the whole.
    pub fn from_bf16_bytes(
        bytes: &[u8],
        shape: impl Into<Shape>,
        dtype: DataType,
        layout: Layout,
    ) -> Result<Self> {
        Self::from_bf16_bytes_with_progress(bytes, shape, dtype, layout, &mut |_| {})
    }

    /// [`Self::from_bf16_bytes`], calling `progress(n)` as the conversion goes once the first
    /// `n` bytes of `bytes` are no longer needed (so a caller converting from a mapped file can
    /// drop those pages from memory while a large table converts).
    pub fn from_bf16_bytes_with_progress(
        bytes: &[u8],
        shape: impl Into<Shape>,
        dtype: DataType,
        layout: Layout,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Self> {
        let op = "Tensor::from_bf16_bytes";
        let shape = shape.into();
        check_tile_dtype(op, dtype, layout)?;
        let data = HostData::from_bf16_bytes(op, bytes, dtype, shape, progress)?;
        Ok(Self::from_parts(
            shape,
            dtype,
            layout,
            Storage::Host(Arc::new(data)),
        ))
    }

    /// A zero-filled host tensor.
    pub fn zeros(shape: impl Into<Shape>, dtype: DataType, layout: Layout) -> Result<Self> {
        let shape = shape.into();
        check_tile_dtype("Tensor::zeros", dtype, layout)?;
        Ok(Self::from_parts(
            shape,
            dtype,
            layout,
            Storage::Host(Arc::new(HostData::zeros(dtype, shape))),
        ))
    }

    /// The same handle described with another dtype (a Tenstorrent handle's BFLOAT4_B holding
    /// a Ternary tensor).
    pub(crate) fn with_dtype(mut self, dtype: DataType) -> Self {
        self.dtype = dtype;
        self
    }

    /// The logical shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The shape as stored (tile layout pads the last two dimensions to 32; on the Tenstorrent
    /// backend, the padded shape TT-NN reports for the tensor).
    pub fn padded_shape(&self) -> Shape {
        match &self.storage {
            Storage::Device {
                buffer: DeviceBuffer::Tt(t),
                ..
            } => t.padded_shape,
            _ => self.shape.padded(self.layout),
        }
    }

    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The memory config of a device tensor; `None` for a host tensor.
    pub fn memory_config(&self) -> Option<&MemoryConfig> {
        match &self.storage {
            Storage::Host(_) => None,
            Storage::Device { buffer, .. } => Some(buffer.memory_config()),
        }
    }

    /// The device a device tensor lives on.
    pub fn device(&self) -> Option<&Device> {
        match &self.storage {
            Storage::Host(_) => None,
            Storage::Device { device, .. } => Some(device),
        }
    }

    pub fn is_on_device(&self) -> bool {
        matches!(self.storage, Storage::Device { .. })
    }

    /// Bytes the backend really keeps for this tensor's values: what a kernel streams when it
    /// reads the whole tensor. On the host, its storage form (e.g. 2 bits per ternary value);
    /// on a Tenstorrent device, the TT buffer's pages (Ternary is stored as BFLOAT4_B there).
    pub fn storage_bytes(&self) -> Option<u64> {
        match &self.storage {
            Storage::Host(d) => Some(d.host_bytes() as u64),
            Storage::Device {
                buffer: DeviceBuffer::Host { buffer, .. },
                ..
            } => Some(buffer.read().host_bytes() as u64),
            Storage::Device {
                buffer: DeviceBuffer::Tt(t),
                ..
            } => {
                let dtype = match self.dtype {
                    DataType::Ternary => DataType::Bfloat4B,
                    d => d,
                };
                Some(crate::device::buffer_bytes(
                    t.padded_shape,
                    dtype,
                    self.layout,
                ))
            }
        }
    }

    /// True if both handles share one buffer (one is a clone or view of the other).
    pub fn shares_buffer_with(&self, other: &Tensor) -> bool {
        match (&self.storage, &other.storage) {
            (Storage::Host(a), Storage::Host(b)) => Arc::ptr_eq(a, b),
            (
                Storage::Device {
                    buffer: DeviceBuffer::Host { buffer: a, .. },
                    ..
                },
                Storage::Device {
                    buffer: DeviceBuffer::Host { buffer: b, .. },
                    ..
                },
            ) => Arc::ptr_eq(a, b),
            (
                Storage::Device {
                    buffer: DeviceBuffer::Tt(a),
                    ..
                },
                Storage::Device {
                    buffer: DeviceBuffer::Tt(b),
                    ..
                },
            ) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    /// Allocates a zero-filled device tensor (an op's output) on the host backend.
    pub(crate) fn allocate(
        device: &Device,
        op: &'static str,
        shape: Shape,
        dtype: DataType,
        layout: Layout,
        mc: &MemoryConfig,
    ) -> Result<Self> {
        let alloc = Arc::new(device.allocate(op, shape, dtype, layout, mc)?);
        let buffer = HostBuffer::new(HostData::zeros(dtype, shape), mc.clone());
        Ok(Self::from_parts(
            shape,
            dtype,
            layout,
            Storage::Device {
                device: device.clone(),
                buffer: DeviceBuffer::Host {
                    buffer: Arc::new(buffer),
                    alloc,
                },
            },
        ))
    }

    /// Moves a host tensor to `device` under `mc` (TT-NN's `to_device`). An error while a trace
    /// is being captured, as on a TT device.
    pub fn to_device(&self, device: &Device, mc: &MemoryConfig) -> Result<Tensor> {
        let op = "Tensor::to_device";
        let data = match &self.storage {
            Storage::Host(d) => d,
            Storage::Device { .. } => {
                return Err(Error::WrongStorage {
                    op,
                    what: "the tensor".into(),
                    expected: "the host",
                });
            }
        };
        match device.backend_impl() {
            BackendImpl::Host(host) => {
                host.ensure_not_capturing(op)?;
                let alloc =
                    Arc::new(device.allocate(op, self.shape, self.dtype, self.layout, mc)?);
                let buffer = HostBuffer::new(host.adopt((**data).clone()), mc.clone());
                Ok(Self::from_parts(
                    self.shape,
                    self.dtype,
                    self.layout,
                    Storage::Device {
                        device: device.clone(),
                        buffer: DeviceBuffer::Host {
                            buffer: Arc::new(buffer),
                            alloc,
                        },
                    },
                ))
            }
            BackendImpl::Tt(tt) => {
                // The library checks the memory config against the tensor (TT-NN's rules).
                tt.dev
                    .upload(device, op, data, self.shape, self.dtype, self.layout, mc)
            }
        }
    }

    /// Like [`Tensor::to_device`], consuming the host tensor: on the host backend its data
    /// moves into the device buffer without a copy when no other handle shares it (how large
    /// weights upload without a second copy in memory); the Tenstorrent backend copies it into
    /// the library's tensor as `to_device` does.
    pub fn into_device(self, device: &Device, mc: &MemoryConfig) -> Result<Tensor> {
        let op = "Tensor::into_device";
        let Storage::Host(data) = self.storage else {
            return Err(Error::WrongStorage {
                op,
                what: "the tensor".into(),
                expected: "the host",
            });
        };
        let host = match device.backend_impl() {
            BackendImpl::Host(host) => host,
            BackendImpl::Tt(tt) => {
                return tt
                    .dev
                    .upload(device, op, &data, self.shape, self.dtype, self.layout, mc);
            }
        };
        host.ensure_not_capturing(op)?;
        let alloc = Arc::new(device.allocate(op, self.shape, self.dtype, self.layout, mc)?);
        let data = host.adopt(Arc::try_unwrap(data).unwrap_or_else(|shared| (*shared).clone()));
        Ok(Self::from_parts(
            self.shape,
            self.dtype,
            self.layout,
            Storage::Device {
                device: device.clone(),
                buffer: DeviceBuffer::Host {
                    buffer: Arc::new(HostBuffer::new(data, mc.clone())),
                    alloc,
                },
            },
        ))
    }

    /// Reads a device tensor back (TT-NN's `cpu()` / `from_device`); a host tensor is returned as is.
    pub fn to_host(&self) -> Result<Tensor> {
        match &self.storage {
            Storage::Host(_) => Ok(self.clone()),
            Storage::Device { device, buffer } => {
                let op = "Tensor::to_host";
                let data = match buffer {
                    DeviceBuffer::Host { buffer, .. } => {
                        device.ensure_not_capturing(op)?;
                        buffer.read().clone()
                    }
                    DeviceBuffer::Tt(t) => t.device().read(op, t, self.shape, self.dtype)?,
                };
                Ok(Self::from_parts(
                    self.shape,
                    self.dtype,
                    self.layout,
                    Storage::Host(Arc::new(data)),
                ))
            }
        }
    }

    /// The values in logical row-major order, converted to `T` (floats to `f32`/`bf16`; integer
    /// and ternary tensors to integer types).
    pub fn to_vec<T: Element>(&self) -> Result<Vec<T>> {
        let op = "Tensor::to_vec";
        match &self.storage {
            Storage::Host(d) => T::from_host_data(op, d),
            Storage::Device { device, buffer } => match buffer {
                DeviceBuffer::Host { buffer, .. } => {
                    device.ensure_not_capturing(op)?;
                    T::from_host_data(op, &buffer.read())
                }
                DeviceBuffer::Tt(t) => {
                    T::from_host_data(op, &t.device().read(op, t, self.shape, self.dtype)?)
                }
            },
        }
    }

    /// The values as an `ndarray` array of the logical shape.
    pub fn to_ndarray<T: Element>(&self) -> Result<ArrayD<T>> {
        let v = self.to_vec::<T>()?;
        ArrayD::from_shape_vec(IxDyn(self.shape.dims()), v)
            .map_err(|e| Error::arg("Tensor::to_ndarray", e.to_string()))
    }

    /// A host tensor in another layout (host tensors only; on a device use an op).
    pub fn to_layout(&self, layout: Layout) -> Result<Tensor> {
        let op = "Tensor::to_layout";
        if self.is_on_device() {
            return Err(Error::WrongStorage {
                op,
                what: "the tensor".into(),
                expected: "the host",
            });
        }
        check_tile_dtype(op, self.dtype, layout)?;
        Ok(Self::from_parts(
            self.shape,
            self.dtype,
            layout,
            self.storage.clone(),
        ))
    }

    /// A handle with another shape over the same buffer (no copy). Host storage only: a
    /// Tenstorrent tensor's shape is its handle's, changed through `ttnn_c_reshape`.
    pub(crate) fn view(&self, shape: Shape) -> Tensor {
        Self::from_parts(shape, self.dtype, self.layout, self.storage.clone())
    }

    /// The device of a device tensor, or an error naming `op` and `what`.
    pub(crate) fn device_of(&self, op: &'static str, what: &str) -> Result<&Device> {
        match &self.storage {
            Storage::Device { device, .. } => Ok(device),
            Storage::Host(_) => Err(Error::WrongStorage {
                op,
                what: what.to_string(),
                expected: "a device",
            }),
        }
    }

    /// The buffer of a host-backend device tensor, or an error naming `op` and `what`.
    pub(crate) fn host_buffer(&self, op: &'static str, what: &str) -> Result<&Arc<HostBuffer>> {
        match &self.storage {
            Storage::Device {
                buffer: DeviceBuffer::Host { buffer: b, .. },
                ..
            } => Ok(b),
            _ => Err(Error::WrongStorage {
                op,
                what: what.to_string(),
                expected: "a host-backend device",
            }),
        }
    }

    /// The handle of a Tenstorrent-backend tensor, or an error naming `op` and `what`.
    pub(crate) fn tt_tensor(&self, op: &'static str, what: &str) -> Result<&Arc<TtTensor>> {
        match &self.storage {
            Storage::Device {
                buffer: DeviceBuffer::Tt(t),
                ..
            } => Ok(t),
            _ => Err(Error::WrongStorage {
                op,
                what: what.to_string(),
                expected: "a Tenstorrent device",
            }),
        }
    }
}

/// Writes a host tensor into an existing device tensor in place (TT-NN's
/// `copy_host_to_device_tensor`): how persistent trace inputs are refreshed between replays.
/// Shape, dtype and layout must match; an error while a trace is being captured.
pub fn copy_host_to_device(host: &Tensor, device_tensor: &mut Tensor) -> Result<()> {
    let op = "copy_host_to_device";
    let src = match &host.storage {
        Storage::Host(d) => d,
        Storage::Device { .. } => {
            return Err(Error::WrongStorage {
                op,
                what: "the source".into(),
                expected: "the host",
            });
        }
    };
    let device = device_tensor.device_of(op, "the destination")?;
    device.ensure_not_capturing(op)?;
    if host.shape != device_tensor.shape {
        return Err(Error::shape(
            op,
            "the source",
            device_tensor.shape.to_string(),
            host.shape,
        ));
    }
    if host.dtype != device_tensor.dtype {
        return Err(Error::dtype(
            op,
            "the source",
            host.dtype,
            format!("{:?}", device_tensor.dtype),
        ));
    }
    if host.layout != device_tensor.layout {
        return Err(Error::LayoutMismatch {
            op,
            what: "the source".into(),
            got: host.layout,
            expected: device_tensor.layout,
        });
    }
    let buffer = match device.backend_impl() {
        BackendImpl::Host(_) => device_tensor.host_buffer(op, "the destination")?,
        BackendImpl::Tt(tt) => {
            let dst = device_tensor.tt_tensor(op, "the destination")?;
            return tt
                .dev
                .write(op, src, host.shape, host.dtype, host.layout, dst);
        }
    };
    let mut dst = buffer.write();
    match (&mut *dst, &**src) {
        (HostData::F32(d), HostData::F32(s)) => d.copy_from_slice(s),
        (HostData::Bf16(d), HostData::Bf16(s)) => d.copy_from_slice(s),
        (HostData::U32(d), HostData::U32(s)) => d.copy_from_slice(s),
        (HostData::I32(d), HostData::I32(s)) => d.copy_from_slice(s),
        (HostData::U16(d), HostData::U16(s)) => d.copy_from_slice(s),
        (HostData::U8(d), HostData::U8(s)) => d.copy_from_slice(s),
        (d, s) => *d = s.clone(),
    }
    Ok(())
}
