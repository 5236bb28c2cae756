//! Host kernels for token selection on the device: `argmax`, `topk`, `sampling`, `plus_one`.
