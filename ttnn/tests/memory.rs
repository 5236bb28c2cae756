//! Modelled device memory: interleaving, sharding, tile padding, out-of-memory errors, release.

mod common;

use common::{device, upload};
use ttnn::{
    BufferType, ChipSpec, CoreCoord, CoreRange, CoreRangeSet, DRAM_MEMORY_CONFIG, DataType, Device,
    DeviceSpec, Error, L1_MEMORY_CONFIG, Layout, MemoryConfig, ShardOrientation, ShardSpec, Tensor,
    TensorMemoryLayout,
};

fn sharded(layout: TensorMemoryLayout, cores: usize, shard: [usize; 2]) -> MemoryConfig {
    MemoryConfig::sharded(
        layout,
        BufferType::L1,
        ShardSpec::new(
            CoreRangeSet::num_cores_to_corerangeset(cores, CoreCoord::new(8, 8)),
            shard,
            ShardOrientation::RowMajor,
        ),
    )
}

#[test]
fn dram_interleaving_counts_whole_tiles_in_every_bank() {
    let dev = device();
    let banks = dev.spec().chip.dram_banks as u64;
    let base = dev.memory_report().dram.in_use;
    // One f32 value is one padded 32x32 tile (4096 B); interleaving reserves a page in each bank.
    let t = upload(
        &dev,
        &[1.0],
        &[1, 1],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert_eq!(dev.memory_report().dram.in_use - base, 4096 * banks);
    drop(t);
    assert_eq!(dev.memory_report().dram.in_use, base);
    // 25 bf16 tiles over 12 banks: 3 pages per bank.
    let t = upload(
        &dev,
        &vec![0.5; 5 * 32 * 5 * 32],
        &[160, 160],
        DataType::Bfloat16,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert_eq!(
        dev.memory_report().dram.in_use - base,
        25u64.div_ceil(banks) * 2048 * banks
    );
    // Block floats: 1088 B per bfp8 tile.
    let b = upload(
        &dev,
        &vec![0.5; 32 * 32 * 12],
        &[32, 32 * 12],
        DataType::Bfloat8B,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    assert_eq!(
        dev.memory_report().dram.in_use - base,
        25u64.div_ceil(banks) * 2048 * banks + 1088 * banks
    );
    drop((t, b));
    assert_eq!(dev.memory_report().dram.in_use, base);
    assert!(dev.memory_report().dram.peak >= base + 1088 * banks);
}

#[test]
fn l1_interleaved_pages_spread_over_cores() {
    let dev = device();
    let cores = dev.spec().chip.num_cores() as u64;
    // 128 bf16 tiles over 64 cores: 2 pages (4096 B) on each core.
    let t = upload(
        &dev,
        &vec![1.0; 128 * 1024],
        &[32, 128 * 32],
        DataType::Bfloat16,
        Layout::Tile,
        &L1_MEMORY_CONFIG,
    );
    let r = dev.memory_report();
    assert_eq!(r.l1.in_use, 2 * 2048 * cores);
    assert_eq!(r.l1_max_core.in_use, 2 * 2048);
    drop(t);
    assert_eq!(dev.memory_report().l1.in_use, 0);
}

#[test]
fn shards_land_on_the_cores_of_the_shard_spec() {
    let dev = device();
    // [64, 256] f32 width-sharded over 8 cores: [64, 32] = 2 tiles = 8192 B on each of 8 cores.
    let mc = sharded(TensorMemoryLayout::WidthSharded, 8, [64, 32]);
    let t = upload(
        &dev,
        &vec![1.0; 64 * 256],
        &[64, 256],
        DataType::Float32,
        Layout::Tile,
        &mc,
    );
    let r = dev.memory_report();
    assert_eq!(r.l1.in_use, 8 * 8192);
    assert_eq!(r.l1_max_core.in_use, 8192);
    assert_eq!(t.memory_config(), Some(&mc));
    drop(t);
    // Height sharding with a shard width that is not the tensor's width is rejected.
    let bad = sharded(TensorMemoryLayout::HeightSharded, 2, [32, 64]);
    let e = Tensor::from_slice(
        &vec![1.0f32; 64 * 128],
        [64, 128],
        DataType::Float32,
        Layout::Tile,
    )
    .expect("host")
    .to_device(&dev, &bad)
    .unwrap_err();
    assert!(matches!(e, Error::InvalidMemoryConfig { .. }), "{e}");
    assert!(e.to_string().contains("shard width 128"), "{e}");
    // A sharded config needs a spec.
    let e = Tensor::from_slice(&[1.0f32; 4], [2, 2], DataType::Float32, Layout::Tile)
        .expect("host")
        .to_device(&dev, &ttnn::L1_WIDTH_SHARDED_MEMORY_CONFIG)
        .unwrap_err();
    assert!(e.to_string().contains("needs a shard spec"), "{e}");
    // Tile layout needs whole-tile shards.
    let e = Tensor::from_slice(
        &vec![1.0f32; 64 * 64],
        [64, 64],
        DataType::Float32,
        Layout::Tile,
    )
    .expect("host")
    .to_device(
        &dev,
        &sharded(TensorMemoryLayout::HeightSharded, 4, [16, 64]),
    )
    .unwrap_err();
    assert!(e.to_string().contains("whole 32x32 tiles"), "{e}");
}

#[test]
fn a_shard_larger_than_l1_is_out_of_memory_naming_the_op() {
    let dev = device();
    let per_core = dev.memory_report().l1_max_core.capacity;
    // One core holding [rows, 1024] f32 where rows * 4 KiB exceeds the core's L1.
    let rows = ((per_core / 4096) as usize / 32 + 1) * 32;
    let mc = MemoryConfig::sharded(
        TensorMemoryLayout::HeightSharded,
        BufferType::L1,
        ShardSpec::new(
            CoreRangeSet::from_range(CoreRange::new(CoreCoord::new(2, 3), CoreCoord::new(2, 3))),
            [rows, 1024],
            ShardOrientation::RowMajor,
        ),
    );
    let host = Tensor::zeros([rows, 1024], DataType::Float32, Layout::Tile).expect("host");
    let e = host.to_device(&dev, &mc).unwrap_err();
    match &e {
        Error::OutOfMemory {
            op,
            buffer_type,
            requested,
            available,
            core,
        } => {
            assert_eq!(*op, "Tensor::to_device");
            assert_eq!(*buffer_type, BufferType::L1);
            assert_eq!(*requested, rows as u64 * 4096);
            assert_eq!(*available, per_core);
            assert_eq!(*core, Some(CoreCoord::new(2, 3)));
        }
        other => panic!("expected OutOfMemory, got {other}"),
    }
    assert!(e.to_string().contains("core (2, 3)"), "{e}");
    // Nothing was reserved by the failed request.
    assert_eq!(dev.memory_report().l1.in_use, 0);
}

#[test]
fn dram_exhaustion_is_an_error_not_a_panic() {
    let chip = ChipSpec {
        dram_size: 1 << 20,
        ..ChipSpec::wormhole_n150()
    };
    let dev = Device::open(DeviceSpec {
        chip,
        trace_region_size: 0,
        num_threads: Some(1),
        ..Default::default()
    })
    .expect("open");
    let a = upload(
        &dev,
        &vec![0.0; 32 * 32 * 12 * 16],
        &[32 * 16, 32 * 12],
        DataType::Float32,
        Layout::Tile,
        &DRAM_MEMORY_CONFIG,
    );
    let e = ttnn::add(&a, &a, &Default::default()).unwrap_err();
    assert!(
        matches!(
            e,
            Error::OutOfMemory {
                op: "ttnn::add",
                buffer_type: BufferType::Dram,
                ..
            }
        ),
        "{e}"
    );
    drop(a);
    assert_eq!(dev.memory_report().dram.in_use, 0);
}

#[test]
fn device_open_rejects_impossible_reservations() {
    let e = Device::open(DeviceSpec {
        l1_small_size: 2 << 20,
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("l1_small_size"), "{e}");
    let e = Device::open(DeviceSpec {
        trace_region_size: 64 << 30,
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("trace_region_size"), "{e}");
    let e = Device::open(DeviceSpec {
        num_threads: Some(0),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("num_threads"), "{e}");
}

#[test]
fn both_modelled_chips_open() {
    for chip in [ChipSpec::wormhole_n150(), ChipSpec::blackhole_p150a()] {
        let grid = chip.grid;
        let dev =
            Device::open(DeviceSpec::default().with_chip(chip).with_threads(1)).expect("open");
        assert_eq!(dev.compute_with_storage_grid_size(), grid);
        let r = dev.memory_report();
        assert!(
            r.dram.capacity > 10 << 30 && r.l1.capacity > 64 << 20,
            "{r:?}"
        );
    }
}
