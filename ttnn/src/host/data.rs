//! `HostData`: the element storage of a tensor on the host (host tensors, and device tensors of
//! the host backend), and conversions between user element types and `DataType`s.

use std::sync::Arc;

use half::bf16;

use super::blockfloat::{BlockFloatData, BlockFormat};
use super::ternary::TernaryData;
use crate::error::{Error, Result};
use crate::types::{DataType, Shape};

/// Read-only bytes owned elsewhere (a memory-mapped checkpoint) that a tensor can borrow.
pub trait SharedSource: Send + Sync {
    /// All the bytes.
    fn bytes(&self) -> &[u8];

    /// Copies the `dst.len()` bytes at `offset` into `dst`. The default copies from
    /// [`Self::bytes`]. A memory-mapped file should read the file instead (`pread`): reading a
    /// few rows of a large table through the mapping makes the kernel map whole page-cache
    /// folios around them into this process (hundreds of KB resident per 5 KB embedding row
    /// on Linux 6.x), while a read copies just the row out of the page cache.
    fn read_at(&self, offset: usize, dst: &mut [u8]) -> std::io::Result<()> {
        let src = offset
            .checked_add(dst.len())
            .and_then(|end| self.bytes().get(offset..end))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        dst.copy_from_slice(src);
        Ok(())
    }
}

/// A shared [`SharedSource`].
pub type SharedBytes = Arc<dyn SharedSource>;

/// bf16 values: owned, or borrowed without a copy from [`SharedBytes`] (how a large embedding
/// table stays in the mapped checkpoint; lookups read rows with [`Bf16Buf::read_into`], so the
/// table does not become resident in this process).
/// Writing to borrowed values first copies them (copy on write).
#[derive(Clone)]
pub enum Bf16Buf {
    Owned(Vec<bf16>),
    Shared {
        owner: SharedBytes,
        offset: usize,
        len: usize,
    },
}

impl Bf16Buf {
    /// Borrows `len` values at byte `offset` of `owner`; `None` if out of bounds or misaligned.
    pub fn shared(owner: SharedBytes, offset: usize, len: usize) -> Option<Self> {
        let bytes = owner.bytes();
        let end = offset.checked_add(len.checked_mul(2)?)?;
        let ok = end <= bytes.len()
            && (bytes.as_ptr() as usize + offset).is_multiple_of(std::mem::align_of::<bf16>());
        ok.then_some(Self::Shared { owner, offset, len })
    }

    /// Copies the values `[start, start + dst.len())` into `dst`; borrowed values are read
    /// through [`SharedSource::read_at`], so a lookup does not make the owner's mapping
    /// resident (see there).
    pub fn read_into(&self, start: usize, dst: &mut [bf16]) -> std::io::Result<()> {
        match self {
            Self::Owned(v) => {
                dst.copy_from_slice(&v[start..start + dst.len()]);
                Ok(())
            }
            Self::Shared { owner, offset, len } => {
                assert!(
                    start + dst.len() <= *len,
                    "read_into past the borrowed values"
                );
                // SAFETY: bf16 is a `#[repr(transparent)]` u16: `dst` is exactly
                // `2 * dst.len()` initialized bytes, u8 has no alignment requirement, every
                // byte pattern is a valid bf16, and the byte view ends with this statement's
                // borrow of `dst`. The bytes are little-endian bf16, as `Deref` also assumes.
                let bytes = unsafe {
                    std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u8>(), 2 * dst.len())
                };
                owner.read_at(offset + 2 * start, bytes)
            }
        }
    }

    /// The values, owned (copying borrowed ones).
    pub fn to_mut(&mut self) -> &mut Vec<bf16> {
        if let Self::Shared { .. } = self {
            *self = Self::Owned(self.to_vec());
        }
        match self {
            Self::Owned(v) => v,
            Self::Shared { .. } => unreachable!("made owned above"),
        }
    }
}

impl std::ops::Deref for Bf16Buf {
    type Target = [bf16];
    fn deref(&self) -> &[bf16] {
        match self {
            Self::Owned(v) => v,
            Self::Shared { owner, offset, len } => {
                let bytes = &owner.bytes()[*offset..*offset + 2 * *len];
                // SAFETY: `shared` checked bounds and 2-byte alignment; bf16 is a
                // `#[repr(transparent)]` u16, valid for every bit pattern; the bytes are
                // read-only and live as long as `owner`, which `self` holds.
                unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<bf16>(), *len) }
            }
        }
    }
}

impl std::ops::DerefMut for Bf16Buf {
    fn deref_mut(&mut self) -> &mut [bf16] {
        self.to_mut()
    }
}

impl From<Vec<bf16>> for Bf16Buf {
    fn from(v: Vec<bf16>) -> Self {
        Self::Owned(v)
    }
}

impl PartialEq for Bf16Buf {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl std::fmt::Debug for Bf16Buf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Owned(v) => write!(f, "Bf16Buf::Owned({} values)", v.len()),
            Self::Shared { len, .. } => write!(f, "Bf16Buf::Shared({len} values)"),
        }
    }
}

/// Element storage, one variant per storage form. Rows are the tensor's last dimension.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    F32(Vec<f32>),
    Bf16(Bf16Buf),
    U32(Vec<u32>),
    I32(Vec<i32>),
    U16(Vec<u16>),
    U8(Vec<u8>),
    Block(BlockFloatData),
    Ternary(TernaryData),
}

impl HostData {
    /// Zero-filled storage for `shape` in `dtype`.
    pub fn zeros(dtype: DataType, shape: Shape) -> Self {
        let n = shape.volume();
        let (rows, len) = (shape.rows(), shape.last());
        match dtype {
            DataType::Float32 => Self::F32(vec![0.0; n]),
            // Through u16: `vec![0u16; n]` is a zeroed allocation whose pages the OS maps on
            // first touch, as for the other types; `vec![bf16::ZERO; n]` writes every element, so a
            // bf16 KV cache sized for 4096 positions would be resident (315 MB for 2B-4T) at once.
            DataType::Bfloat16 => {
                use half::vec::HalfBitsVecExt;
                Self::Bf16(vec![0u16; n].reinterpret_into::<bf16>().into())
            }
            DataType::Uint32 => Self::U32(vec![0; n]),
            DataType::Int32 => Self::I32(vec![0; n]),
            DataType::Uint16 => Self::U16(vec![0; n]),
            DataType::Uint8 => Self::U8(vec![0; n]),
            DataType::Bfloat8B => Self::Block(BlockFloatData::zeros(BlockFormat::Bfp8, rows, len)),
            DataType::Bfloat4B => Self::Block(BlockFloatData::zeros(BlockFormat::Bfp4, rows, len)),
            DataType::Ternary => Self::Ternary(TernaryData::zeros(rows, len)),
        }
    }

    pub fn dtype(&self) -> DataType {
        match self {
            Self::F32(_) => DataType::Float32,
            Self::Bf16(_) => DataType::Bfloat16,
            Self::U32(_) => DataType::Uint32,
            Self::I32(_) => DataType::Int32,
            Self::U16(_) => DataType::Uint16,
            Self::U8(_) => DataType::Uint8,
            Self::Block(b) => match b.format {
                BlockFormat::Bfp8 => DataType::Bfloat8B,
                BlockFormat::Bfp4 => DataType::Bfloat4B,
            },
            Self::Ternary(_) => DataType::Ternary,
        }
    }

    /// Bytes this storage really takes in host memory.
    pub fn host_bytes(&self) -> usize {
        match self {
            Self::F32(v) => v.len() * 4,
            Self::Bf16(v) => v.len() * 2,
            Self::U32(v) => v.len() * 4,
            Self::I32(v) => v.len() * 4,
            Self::U16(v) => v.len() * 2,
            Self::U8(v) => v.len(),
            Self::Block(b) => b.exps.len() + b.mants.len(),
            Self::Ternary(t) => t.packed.len(),
        }
    }

    /// Every element as f32 (integers converted, block floats and ternary decoded).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            Self::F32(v) => v.clone(),
            Self::Bf16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Self::U32(v) => v.iter().map(|&x| x as f32).collect(),
            Self::I32(v) => v.iter().map(|&x| x as f32).collect(),
            Self::U16(v) => v.iter().map(|&x| x as f32).collect(),
            Self::U8(v) => v.iter().map(|&x| x as f32).collect(),
            Self::Block(b) => b.decode(),
            Self::Ternary(t) => t.unpack().into_iter().map(f32::from).collect(),
        }
    }

    /// Writes the f32 values `src` into float storage, rounding to the storage's precision.
    /// Used by kernels that compute in f32 and by typecast.
    pub fn store_f32(&mut self, src: &[f32]) {
        match self {
            Self::F32(v) => v.copy_from_slice(src),
            Self::Bf16(v) => crate::host::kernels::convert::f32_to_bf16(src, v),
            Self::Block(b) => b.encode_from(src),
            Self::U32(v) => v.iter_mut().zip(src).for_each(|(d, &s)| *d = s as u32),
            Self::I32(v) => v.iter_mut().zip(src).for_each(|(d, &s)| *d = s as i32),
            Self::U16(v) => v.iter_mut().zip(src).for_each(|(d, &s)| *d = s as u16),
            Self::U8(v) => v.iter_mut().zip(src).for_each(|(d, &s)| *d = s as u8),
            Self::Ternary(t) => t.pack_from(src.iter().map(|&s| s.round().clamp(-1.0, 1.0) as i8)),
        }
    }

    /// Copies integer storage into integer storage, wrapping like a C cast; false (and nothing
    /// done) unless both are integer storage. No allocation.
    pub fn cast_ints_into(&self, out: &mut HostData) -> bool {
        fn store(out: &mut HostData, src: impl Iterator<Item = i64>) -> bool {
            match out {
                HostData::U32(v) => v.iter_mut().zip(src).for_each(|(d, s)| *d = s as u32),
                HostData::I32(v) => v.iter_mut().zip(src).for_each(|(d, s)| *d = s as i32),
                HostData::U16(v) => v.iter_mut().zip(src).for_each(|(d, s)| *d = s as u16),
                HostData::U8(v) => v.iter_mut().zip(src).for_each(|(d, s)| *d = s as u8),
                _ => return false,
            }
            true
        }
        match self {
            Self::U32(v) => store(out, v.iter().map(|&x| x as i64)),
            Self::I32(v) => store(out, v.iter().map(|&x| x as i64)),
            Self::U16(v) => store(out, v.iter().map(|&x| x as i64)),
            Self::U8(v) => store(out, v.iter().map(|&x| x as i64)),
            _ => false,
        }
    }

    /// Every element as i64 (integer storage only).
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        Some(match self {
            Self::U32(v) => v.iter().map(|&x| x as i64).collect(),
            Self::I32(v) => v.iter().map(|&x| x as i64).collect(),
            Self::U16(v) => v.iter().map(|&x| x as i64).collect(),
            Self::U8(v) => v.iter().map(|&x| x as i64).collect(),
            Self::Ternary(t) => t.unpack().into_iter().map(i64::from).collect(),
            _ => return None,
        })
    }

    /// Storage for `shape` in `dtype` from f32 values (rounding to bf16/block float; integers
    /// and ternary values must be exact).
    pub fn from_f32(
        op: &'static str,
        values: &[f32],
        dtype: DataType,
        shape: Shape,
    ) -> Result<Self> {
        let (rows, len) = (shape.rows(), shape.last());
        Ok(match dtype {
            DataType::Float32 => Self::F32(values.to_vec()),
            DataType::Bfloat16 => Self::Bf16(
                values
                    .iter()
                    .map(|&v| bf16::from_f32(v))
                    .collect::<Vec<_>>()
                    .into(),
            ),
            DataType::Bfloat8B => {
                Self::Block(BlockFloatData::encode(BlockFormat::Bfp8, values, rows, len))
            }
            DataType::Bfloat4B => {
                Self::Block(BlockFloatData::encode(BlockFormat::Bfp4, values, rows, len))
            }
            DataType::Ternary => {
                let mut q = Vec::with_capacity(values.len());
                for &v in values {
                    if v != -1.0 && v != 0.0 && v != 1.0 {
                        return Err(conv(op, "f32", dtype, format!("{v} is not -1, 0 or 1")));
                    }
                    q.push(v as i8);
                }
                Self::Ternary(TernaryData::pack(&q, rows, len))
            }
            int => {
                let mut ints = Vec::with_capacity(values.len());
                for &v in values {
                    if v.fract() != 0.0 || !v.is_finite() {
                        return Err(conv(op, "f32", dtype, format!("{v} is not an integer")));
                    }
                    ints.push(v as i64);
                }
                Self::from_i64(op, "f32", &ints, int, shape)?
            }
        })
    }

    /// Storage for `shape` in `dtype` from little-endian bf16 bytes, converted row by row (no
    /// f32 copy of the whole tensor: a 128256 x 2560 embedding becomes a bfloat8_b lm_head
    /// without a 1.3 GB intermediate).
    pub fn from_bf16_bytes(
        op: &'static str,
        bytes: &[u8],
        dtype: DataType,
        shape: Shape,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Self> {
        if bytes.len() != 2 * shape.volume() {
            return Err(Error::arg(
                op,
                format!(
                    "{} bytes do not hold {} bf16 values",
                    bytes.len(),
                    shape.volume()
                ),
            ));
        }
        let val = |b: &[u8]| bf16::from_le_bytes([b[0], b[1]]);
        Ok(match dtype {
            DataType::Bfloat16 => {
                Self::Bf16(bytes.chunks_exact(2).map(val).collect::<Vec<_>>().into())
            }
            DataType::Float32 => {
                Self::F32(bytes.chunks_exact(2).map(|b| val(b).to_f32()).collect())
            }
            DataType::Bfloat8B | DataType::Bfloat4B => {
                let format = if dtype == DataType::Bfloat8B {
                    BlockFormat::Bfp8
                } else {
                    BlockFormat::Bfp4
                };
                let (rows, len) = (shape.rows(), shape.last());
                let mut b = BlockFloatData::zeros(format, rows, len);
                // On every core (the lm_head of 2B-4T is 328 million values), 16 MiB of source
                // at a time, with progress reported after each.
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                let every = ((16 << 20) / (2 * len.max(1))).max(1);
                for (i, src) in bytes.chunks(2 * len.max(1) * every).enumerate() {
                    b.encode_bf16_rows(i * every, src, threads);
                    progress(i * every * 2 * len + src.len());
                }
                progress(bytes.len());
                Self::Block(b)
            }
            other => {
                let f: Vec<f32> = bytes.chunks_exact(2).map(|b| val(b).to_f32()).collect();
                Self::from_f32(op, &f, other, shape)?
            }
        })
    }

    /// Storage from integers; each must fit `dtype` (floats convert, ternary must be -1/0/1).
    pub fn from_i64(
        op: &'static str,
        from: &'static str,
        values: &[i64],
        dtype: DataType,
        shape: Shape,
    ) -> Result<Self> {
        fn fit<T: TryFrom<i64>>(
            op: &'static str,
            from: &'static str,
            dtype: DataType,
            values: &[i64],
        ) -> Result<Vec<T>> {
            values
                .iter()
                .map(|&v| {
                    T::try_from(v)
                        .map_err(|_| conv(op, from, dtype, format!("{v} is out of range")))
                })
                .collect()
        }
        Ok(match dtype {
            DataType::Uint32 => Self::U32(fit(op, from, dtype, values)?),
            DataType::Int32 => Self::I32(fit(op, from, dtype, values)?),
            DataType::Uint16 => Self::U16(fit(op, from, dtype, values)?),
            DataType::Uint8 => Self::U8(fit(op, from, dtype, values)?),
            DataType::Ternary => {
                let mut q = Vec::with_capacity(values.len());
                for &v in values {
                    if !(-1..=1).contains(&v) {
                        return Err(conv(op, from, dtype, format!("{v} is not -1, 0 or 1")));
                    }
                    q.push(v as i8);
                }
                Self::Ternary(TernaryData::pack(&q, shape.rows(), shape.last()))
            }
            float => {
                let f: Vec<f32> = values.iter().map(|&v| v as f32).collect();
                Self::from_f32(op, &f, float, shape)?
            }
        })
    }
}

fn conv(op: &'static str, from: &'static str, to: DataType, reason: String) -> Error {
    Error::Conversion {
        op,
        from,
        to,
        reason,
    }
}

/// Rust element types that tensors can be built from and read back into.
pub trait Element: Copy + Send + Sync + 'static + sealed::Sealed {
    /// The type's name in error messages.
    const NAME: &'static str;
    #[doc(hidden)]
    fn into_host_data(
        op: &'static str,
        values: &[Self],
        dtype: DataType,
        shape: Shape,
    ) -> Result<HostData>;
    #[doc(hidden)]
    fn into_host_data_owned(
        op: &'static str,
        values: Vec<Self>,
        dtype: DataType,
        shape: Shape,
    ) -> Result<HostData> {
        Self::into_host_data(op, &values, dtype, shape)
    }
    #[doc(hidden)]
    fn from_host_data(op: &'static str, data: &HostData) -> Result<Vec<Self>>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::bf16 {}
    impl Sealed for u32 {}
    impl Sealed for i32 {}
    impl Sealed for u16 {}
    impl Sealed for u8 {}
    impl Sealed for i8 {}
}

impl Element for f32 {
    const NAME: &'static str = "f32";
    fn into_host_data(
        op: &'static str,
        v: &[f32],
        dtype: DataType,
        shape: Shape,
    ) -> Result<HostData> {
        HostData::from_f32(op, v, dtype, shape)
    }
    fn into_host_data_owned(
        op: &'static str,
        v: Vec<f32>,
        dtype: DataType,
        shape: Shape,
    ) -> Result<HostData> {
        if dtype == DataType::Float32 {
            return Ok(HostData::F32(v));
        }
        HostData::from_f32(op, &v, dtype, shape)
    }
    fn from_host_data(_op: &'static str, data: &HostData) -> Result<Vec<f32>> {
        Ok(data.to_f32_vec())
    }
}

impl Element for bf16 {
    const NAME: &'static str = "bf16";
    fn into_host_data(
        op: &'static str,
        v: &[bf16],
        dtype: DataType,
        shape: Shape,
    ) -> Result<HostData> {
        if dtype == DataType::Bfloat16 {
            return Ok(HostData::Bf16(v.to_vec().into()));
        }
        let f: Vec<f32> = v.iter().map(|x| x.to_f32()).collect();
        HostData::from_f32(op, &f, dtype, shape)
    }
    fn from_host_data(op: &'static str, data: &HostData) -> Result<Vec<bf16>> {
        match data {
            HostData::Bf16(v) => Ok(v.to_vec()),
            d if d.dtype().is_float() => {
                Ok(d.to_f32_vec().into_iter().map(bf16::from_f32).collect())
            }
            d => Err(conv(
                op,
                "bf16",
                d.dtype(),
                "read an integer tensor as integers".into(),
            )),
        }
    }
}

fn not_i8<T>(_: &[T]) -> Option<&[i8]> {
    None
}

macro_rules! int_element {
    ($t:ty, $name:literal) => {
        int_element!($t, $name, not_i8::<$t>);
    };
    // `$as_i8` views the values as i8 when they are (the fast ternary packing path).
    ($t:ty, $name:literal, $as_i8:expr) => {
        impl Element for $t {
            const NAME: &'static str = $name;
            fn into_host_data(
                op: &'static str,
                v: &[$t],
                dtype: DataType,
                shape: Shape,
            ) -> Result<HostData> {
                // Ternary straight from the values: no widened copy of a large weight.
                if dtype == DataType::Ternary {
                    let ternary = |x: &$t| (-1..=1).contains(&(*x as i64));
                    let all_ternary = match ($as_i8)(v) {
                        // A chunk at a time without an early exit or widening: a loop the
                        // compiler vectorizes (two billion values at a 2B-4T load).
                        Some(v8) => v8.chunks(1 << 12).all(|c| {
                            c.iter()
                                .fold(true, |ok, &x| ok & (x.wrapping_add(1) as u8 <= 2))
                        }),
                        None => v.iter().all(ternary),
                    };
                    if !all_ternary {
                        if let Some(bad) = v.iter().find(|x| !ternary(x)) {
                            return Err(conv(op, $name, dtype, format!("{bad} is not -1, 0 or 1")));
                        }
                    }
                    let mut t = TernaryData::zeros(shape.rows(), shape.last());
                    match ($as_i8)(v) {
                        Some(v8) => t.pack_slice(v8),
                        None => t.pack_from(v.iter().map(|&x| x as i8)),
                    }
                    return Ok(HostData::Ternary(t));
                }
                let ints: Vec<i64> = v.iter().map(|&x| x as i64).collect();
                HostData::from_i64(op, $name, &ints, dtype, shape)
            }
            fn from_host_data(op: &'static str, data: &HostData) -> Result<Vec<$t>> {
                let ints = data.to_i64_vec().ok_or_else(|| {
                    conv(
                        op,
                        $name,
                        data.dtype(),
                        "read a float tensor as f32 or bf16".into(),
                    )
                })?;
                ints.into_iter()
                    .map(|x| {
                        <$t>::try_from(x).map_err(|_| {
                            conv(
                                op,
                                $name,
                                data.dtype(),
                                format!("{x} does not fit {}", $name),
                            )
                        })
                    })
                    .collect()
            }
        }
    };
}
int_element!(u32, "u32");
int_element!(i32, "i32");
int_element!(u16, "u16");
int_element!(u8, "u8");
int_element!(i8, "i8", Some::<&[i8]>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_range_checks() {
        let s = Shape::new(&[3]);
        assert!(u8::into_host_data("t", &[1, 2, 3], DataType::Uint8, s).is_ok());
        let e = i32::into_host_data("t", &[1, -2, 3], DataType::Uint32, s).unwrap_err();
        assert!(e.to_string().contains("-2 is out of range"), "{e}");
        let e = f32::into_host_data("t", &[0.5, 1.0, 2.0], DataType::Ternary, s).unwrap_err();
        assert!(e.to_string().contains("0.5"), "{e}");
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        let s = Shape::new(&[2]);
        // 1 + 2^-8 is exactly halfway between two bf16 values: ties to even gives 1.0.
        let d = f32::into_host_data(
            "t",
            &[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0],
            DataType::Bfloat16,
            s,
        )
        .expect("convert");
        assert_eq!(d.to_f32_vec(), vec![1.0, 1.0 + 4.0 / 256.0]);
    }
}
