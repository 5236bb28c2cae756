//! Data movement: `reshape`, `to_memory_config`, `copy`, and the attention head split/concat ops.
