//! Reduction commands: max over one dimension.

use std::sync::Arc;

use super::{read_f32, write_f32};
use crate::error::Result;
use crate::host::{HostBuffer, HostCommand, HostCtx};

/// Max over the middle axis of the input viewed as `[outer, reduced, inner]`.
pub(crate) struct ReduceMaxCmd {
    pub input: Arc<HostBuffer>,
    pub out: Arc<HostBuffer>,
    pub outer: usize,
    pub reduced: usize,
    pub inner: usize,
    pub si: Vec<f32>,
    pub so: Vec<f32>,
}

impl HostCommand for ReduceMaxCmd {
    fn run(&mut self, _ctx: &HostCtx<'_>) -> Result<()> {
        let in_guard = self.input.read();
        let x = read_f32(&in_guard, &mut self.si);
        let mut out = self.out.write();
        let (outer, reduced, inner) = (self.outer, self.reduced, self.inner);
        write_f32(&mut out, outer * inner, &mut self.so, |o| {
            for a in 0..outer {
                let base = a * reduced * inner;
                for c in 0..inner {
                    // Start from the first value (not -inf) so an all-NaN slice gives NaN.
                    let mut m = x[base + c];
                    for r in 1..reduced {
                        m = m.max(x[base + r * inner + c]);
                    }
                    o[a * inner + c] = m;
                }
            }
        });
        Ok(())
    }
}
