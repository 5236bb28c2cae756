//! `rms_norm`.
