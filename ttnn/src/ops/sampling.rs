//! Token selection on the device: `argmax`, `topk`, `sampling`, `plus_one`.
