//! The memory plan is validated before the first op runs.

use bitnet_layers::{BitNetModel, ModelOptions};
use bitnet_tests::model_dir;
use ttnn::{ChipSpec, Device, DeviceSpec};

#[test]
fn a_small_modelled_l1_fails_before_any_op_runs() {
    // 12 KiB of L1 per core: the decode head split alone needs more on one core.
    let chip = ChipSpec {
        l1_size_per_core: 12 * 1024,
        l1_reserved_per_core: 0,
        ..ChipSpec::wormhole_n150()
    };
    let dev = Device::open(DeviceSpec::default().with_chip(chip).with_threads(1)).expect("open");
    let e = BitNetModel::load(
        &model_dir("tiny-2b4t-format"),
        &dev,
        &ModelOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("memory plan: decode op "), "{e}");
    assert!(e.contains("12288 bytes of L1 per core"), "{e}");
    // Nothing reached the device: no weight was uploaded.
    let r = dev.memory_report();
    assert_eq!((r.dram.peak, r.l1.peak), (0, 0), "{r:?}");
}
