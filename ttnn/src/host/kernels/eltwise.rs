//! Elementwise commands: binary ops with broadcasting and fused input activations (tensor or
//! scalar right-hand side), unary ops, clamp, typecast.

use std::sync::Arc;

use super::{OutRows, PAR_THRESHOLD, convert, read_f32, write_f32, write_rows};
use crate::error::Result;
use crate::host::data::HostData;
use crate::host::{HostBuffer, HostCommand, HostCtx};
use crate::ops::eltwise::{BinaryOpType, UnaryOp};
use crate::types::{MAX_RANK, Shape};

/// Maps output indices to an input's indices under numpy broadcasting.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Broadcast {
    out_dims: [usize; MAX_RANK],
    strides: [usize; MAX_RANK],
    rank: usize,
    /// Input equals output shape: index i maps to i.
    identity: bool,
    /// Input is one row broadcast to every output row: index i maps to i % width.
    row: Option<usize>,
}

impl Broadcast {
    /// `input` broadcast to `out` (both padded on the left to the same rank by the caller).
    pub fn new(input: Shape, out: Shape) -> Self {
        let rank = out.rank();
        let mut out_dims = [1; MAX_RANK];
        out_dims[..rank].copy_from_slice(out.dims());
        let mut strides = [0; MAX_RANK];
        let mut s = 1;
        for i in (0..rank).rev() {
            let d = input.dim(i as isize - rank as isize);
            strides[i] = if d == 1 { 0 } else { s };
            s *= d;
        }
        let identity = input.volume() == out.volume();
        let row = (!identity && input.volume() == out.last() && input.last() == out.last())
            .then_some(out.last());
        Self {
            out_dims,
            strides,
            rank,
            identity,
            row,
        }
    }

    #[inline]
    fn index(&self, mut i: usize) -> usize {
        if self.identity {
            return i;
        }
        if let Some(w) = self.row {
            return i % w;
        }
        let mut idx = 0;
        for d in (0..self.rank).rev() {
            let n = self.out_dims[d];
            idx += (i % n) * self.strides[d];
            i /= n;
        }
        idx
    }
}

#[inline]
pub(crate) fn apply_unary(op: UnaryOp, x: f32) -> f32 {
    match op {
        UnaryOp::Relu => x.max(0.0),
        UnaryOp::Square => x * x,
        UnaryOp::Neg => -x,
        UnaryOp::Silu => x / (1.0 + (-x).exp()),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Abs => x.abs(),
        UnaryOp::Reciprocal => 1.0 / x,
        UnaryOp::Round => x.round_ties_even(),
    }
}

#[inline]
fn apply_chain(ops: &[UnaryOp], mut x: f32) -> f32 {
    for &op in ops {
        x = apply_unary(op, x);
    }
    x
}

/// Applies `ops` in order to every element of `o`: one pass per op, with the op fixed outside
/// the loop so that each pass vectorizes (a per-element `match` did not, and made the fused
/// `relu(gate)^2 * up` of a prefill 5 % of its time). Elementwise, so the same values as
/// [`apply_chain`] per element.
fn apply_chain_in_place(ops: &[UnaryOp], o: &mut [f32]) {
    #[inline(always)]
    fn map(o: &mut [f32], f: impl Fn(f32) -> f32) {
        for v in o {
            *v = f(*v);
        }
    }
    for &op in ops {
        match op {
            UnaryOp::Relu => map(o, |x| apply_unary(UnaryOp::Relu, x)),
            UnaryOp::Square => map(o, |x| apply_unary(UnaryOp::Square, x)),
            UnaryOp::Neg => map(o, |x| apply_unary(UnaryOp::Neg, x)),
            UnaryOp::Abs => map(o, |x| apply_unary(UnaryOp::Abs, x)),
            UnaryOp::Round => map(o, |x| apply_unary(UnaryOp::Round, x)),
            UnaryOp::Reciprocal => map(o, |x| apply_unary(UnaryOp::Reciprocal, x)),
            UnaryOp::Silu => map(o, |x| apply_unary(UnaryOp::Silu, x)),
            UnaryOp::Exp => map(o, |x| apply_unary(UnaryOp::Exp, x)),
        }
    }
}

/// `o[i] = o[i] op y[i]`, the op fixed outside the loop (see [`apply_chain_in_place`]).
fn binary_in_place(op: BinaryOpType, o: &mut [f32], y: &[f32]) {
    #[inline(always)]
    fn zip_map(o: &mut [f32], y: &[f32], op: BinaryOpType) {
        for (v, &y) in o.iter_mut().zip(y) {
            *v = apply_binary(op, *v, y);
        }
    }
    match op {
        BinaryOpType::Add => zip_map(o, y, BinaryOpType::Add),
        BinaryOpType::Subtract => zip_map(o, y, BinaryOpType::Subtract),
        BinaryOpType::Multiply => zip_map(o, y, BinaryOpType::Multiply),
    }
}

pub(crate) struct BinaryCmd {
    pub a: Arc<HostBuffer>,
    pub b: Arc<HostBuffer>,
    pub out: Arc<HostBuffer>,
    pub op: BinaryOpType,
    pub a_activations: Vec<UnaryOp>,
    pub a_bcast: Broadcast,
    pub b_bcast: Broadcast,
    pub len: usize,
    pub sa: Vec<f32>,
    pub sb: Vec<f32>,
    pub so: Vec<f32>,
}

impl HostCommand for BinaryCmd {
    fn name(&self) -> String {
        format!("Binary {:?}", self.op)
    }

    fn run(&mut self, ctx: &HostCtx<'_>) -> Result<()> {
        let (a_guard, b_guard) = (self.a.read(), self.b.read());
        // Same shapes with bf16 on either side: one fused pass (for f32 throughout, the
        // general path below borrows the inputs and writes in place, which is faster).
        if self.a_bcast.identity && self.b_bcast.identity {
            let (a, b) = (FloatRun::new(&a_guard), FloatRun::new(&b_guard));
            let mut out = self.out.write();
            let all_f32 = matches!(
                (a, b, &*out),
                (
                    Some(FloatRun::F32(_)),
                    Some(FloatRun::F32(_)),
                    HostData::F32(_)
                )
            );
            if let (Some(a), Some(b), false) = (a, b, all_f32) {
                let (op, acts) = (self.op, &self.a_activations[..]);
                write_rows(&mut out, self.len, &mut self.so, |o| {
                    par_ranges(ctx, self.len, &|range| {
                        binary_runs(op, acts, a, b, range, o);
                    });
                });
                return Ok(());
            }
        }
        let a = read_f32(&a_guard, &mut self.sa);
        let b = read_f32(&b_guard, &mut self.sb);
        let mut out = self.out.write();
        let (op, acts, ab, bb) = (self.op, &self.a_activations[..], self.a_bcast, self.b_bcast);
        write_f32(&mut out, self.len, &mut self.so, |o| {
            let kernel = |range: std::ops::Range<usize>, o: &mut [f32]| {
                if ab.identity && bb.identity {
                    // Same shapes (residual adds, the gated FFN product): whole slices.
                    o.copy_from_slice(&a[range.clone()]);
                    apply_chain_in_place(acts, o);
                    binary_in_place(op, o, &b[range]);
                    return;
                }
                for (k, i) in range.enumerate() {
                    let x = apply_chain(acts, a[ab.index(i)]);
                    let y = b[bb.index(i)];
                    o[k] = apply_binary(op, x, y);
                }
            };
            par_chunks(ctx, o, &kernel);
        });
        Ok(())
    }
}

/// Values per step of [`binary_runs`] (two 2 KiB buffers on the stack).
const RUN: usize = 512;

/// f32 or bf16 storage, read a run at a time as f32.
#[derive(Clone, Copy)]
enum FloatRun<'a> {
    F32(&'a [f32]),
    Bf16(&'a [half::bf16]),
}

impl<'a> FloatRun<'a> {
    fn new(d: &'a HostData) -> Option<Self> {
        match d {
            HostData::F32(v) => Some(Self::F32(v)),
            HostData::Bf16(v) => Some(Self::Bf16(v)),
            _ => None,
        }
    }

    /// Values `at..at + buf.len()` into `buf`.
    fn load(self, at: usize, buf: &mut [f32]) {
        match self {
            Self::F32(v) => buf.copy_from_slice(&v[at..at + buf.len()]),
            Self::Bf16(v) => convert::bf16_to_f32_slice(&v[at..at + buf.len()], buf),
        }
    }
}

/// `out[i] = acts(a[i]) op b[i]` over `range`, [`RUN`] values at a time through the stack:
/// each value read, computed and stored once (the general path widened both inputs into
/// scratch, filled an f32 output scratch and narrowed it afterwards, all cold between decode
/// ops). The same f32 operations per value as [`BinaryCmd`]'s general path: the same bits.
fn binary_runs(
    op: BinaryOpType,
    acts: &[UnaryOp],
    a: FloatRun<'_>,
    b: FloatRun<'_>,
    range: std::ops::Range<usize>,
    o: OutRows,
) {
    let (mut xa, mut xb) = ([0f32; RUN], [0f32; RUN]);
    let mut at = range.start;
    while at < range.end {
        let len = (range.end - at).min(RUN);
        let (x, y) = (&mut xa[..len], &mut xb[..len]);
        a.load(at, x);
        b.load(at, y);
        apply_chain_in_place(acts, x);
        binary_in_place(op, x, y);
        // SAFETY: `range` is this task's part of the output (`par_ranges`), inside its length.
        unsafe { o.store(at, x) };
        at += len;
    }
}

/// Runs `f` over `0..n`: whole on the calling thread when small, else in disjoint ranges,
/// four per thread, across the pool.
fn par_ranges(ctx: &HostCtx<'_>, n: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
    let threads = ctx.pool.num_threads();
    if n < PAR_THRESHOLD || threads == 1 {
        f(0..n);
        return;
    }
    let per = n.div_ceil(threads * 4);
    ctx.pool
        .run(n.div_ceil(per), &|t| f(t * per..((t + 1) * per).min(n)));
}

#[inline]
fn apply_binary(op: BinaryOpType, x: f32, y: f32) -> f32 {
    match op {
        BinaryOpType::Add => x + y,
        BinaryOpType::Subtract => x - y,
        BinaryOpType::Multiply => x * y,
    }
}

/// `act(a) op b` with a scalar `b`.
pub(crate) struct BinaryScalarCmd {
    pub a: Arc<HostBuffer>,
    pub out: Arc<HostBuffer>,
    pub op: BinaryOpType,
    pub b: f32,
    pub a_activations: Vec<UnaryOp>,
    pub len: usize,
    pub sa: Vec<f32>,
    pub so: Vec<f32>,
}

impl HostCommand for BinaryScalarCmd {
    fn name(&self) -> String {
        format!("BinaryScalar {:?}", self.op)
    }

    fn run(&mut self, ctx: &HostCtx<'_>) -> Result<()> {
        let a_guard = self.a.read();
        let a = read_f32(&a_guard, &mut self.sa);
        let mut out = self.out.write();
        let (op, acts, b) = (self.op, &self.a_activations[..], self.b);
        write_f32(&mut out, self.len, &mut self.so, |o| {
            par_chunks(ctx, o, &|range, o: &mut [f32]| {
                o.copy_from_slice(&a[range]);
                apply_chain_in_place(acts, o);
                o.iter_mut().for_each(|v| *v = apply_binary(op, *v, b));
            });
        });
        Ok(())
    }
}

/// `clamp(x, min, max)` with torch's rules (NaN propagates; `min > max` gives `max`).
pub(crate) struct ClampCmd {
    pub input: Arc<HostBuffer>,
    pub out: Arc<HostBuffer>,
    pub min: f32,
    pub max: f32,
    pub len: usize,
    pub si: Vec<f32>,
    pub so: Vec<f32>,
}

impl HostCommand for ClampCmd {
    fn run(&mut self, ctx: &HostCtx<'_>) -> Result<()> {
        let in_guard = self.input.read();
        let x = read_f32(&in_guard, &mut self.si);
        let mut out = self.out.write();
        let (lo, hi) = (self.min, self.max);
        write_f32(&mut out, self.len, &mut self.so, |o| {
            par_chunks(ctx, o, &|range, o: &mut [f32]| {
                for (k, i) in range.enumerate() {
                    // Comparisons (not f32::max/min, which drop NaN) so NaN passes through.
                    let v = if x[i] < lo { lo } else { x[i] };
                    o[k] = if v > hi { hi } else { v };
                }
            });
        });
        Ok(())
    }
}

pub(crate) struct UnaryCmd {
    pub input: Arc<HostBuffer>,
    pub out: Arc<HostBuffer>,
    pub ops: Vec<UnaryOp>,
    pub len: usize,
    pub si: Vec<f32>,
    pub so: Vec<f32>,
}

impl HostCommand for UnaryCmd {
    fn name(&self) -> String {
        format!("Unary {:?}", self.ops)
    }

    fn run(&mut self, ctx: &HostCtx<'_>) -> Result<()> {
        let in_guard = self.input.read();
        let x = read_f32(&in_guard, &mut self.si);
        let mut out = self.out.write();
        let ops = &self.ops[..];
        write_f32(&mut out, self.len, &mut self.so, |o| {
            par_chunks(ctx, o, &|range, o: &mut [f32]| {
                o.copy_from_slice(&x[range]);
                apply_chain_in_place(ops, o);
            });
        });
        Ok(())
    }
}

/// Splits `out` into contiguous chunks across the pool when it is large.
pub(crate) fn par_chunks(
    ctx: &HostCtx<'_>,
    out: &mut [f32],
    kernel: &(dyn Fn(std::ops::Range<usize>, &mut [f32]) + Sync),
) {
    let n = out.len();
    let base = SendPtr(out.as_mut_ptr());
    par_ranges(ctx, n, &|range| {
        // SAFETY: `par_ranges` hands out disjoint ranges within `0..n`, the length of `out`,
        // which outlives the pool run; so each task has exclusive access to its sub-slice.
        let chunk =
            unsafe { std::slice::from_raw_parts_mut(base.get().add(range.start), range.len()) };
        kernel(range, chunk);
    });
}

/// A raw pointer that tasks of one parallel region may share; each task writes a disjoint part.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
// SAFETY: used only to hand disjoint sub-slices of one buffer to the tasks of a parallel region
// (see each use); the buffer outlives the region.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// Method access (rather than the field) makes closures capture the whole `Sync` wrapper.
    #[inline]
    pub fn get(self) -> *mut T {
        self.0
    }
}

/// Typecast: integer to integer exactly (wrapping like a C cast); otherwise through f32, stored
/// in the output's type (float to integer truncates toward zero).
pub(crate) struct TypecastCmd {
    pub input: Arc<HostBuffer>,
    pub out: Arc<HostBuffer>,
    pub si: Vec<f32>,
}

impl HostCommand for TypecastCmd {
    fn run(&mut self, _ctx: &HostCtx<'_>) -> Result<()> {
        let g = self.input.read();
        let mut out = self.out.write();
        if g.cast_ints_into(&mut out) {
            return Ok(());
        }
        let x = read_f32(&g, &mut self.si);
        out.store_f32(x);
        Ok(())
    }
}
