//! Checkpoint access: safetensors files read through `memmap2`, single-file or sharded
//! (`model.safetensors.index.json`). Tensors are converted straight from the mapping; the
//! files are never copied whole.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use memmap2::{Mmap, UncheckedAdvice};
use safetensors::tensor::TensorInfo;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// A checkpoint file's mapping, and the file itself, from which tensors borrowing the
/// mapping read rows (see [`ttnn::SharedSource::read_at`]).
struct Mapping {
    file: File,
    map: Mmap,
}

impl ttnn::SharedSource for Mapping {
    fn bytes(&self) -> &[u8] {
        &self.map
    }

    #[cfg(unix)]
    fn read_at(&self, offset: usize, dst: &mut [u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, dst, offset as u64)
    }
}

struct MappedFile {
    path: PathBuf,
    /// Shared so that tensors can borrow from it without a copy (see `Checkpoint::shared`).
    mmap: Arc<Mapping>,
    /// Start of the data section (8-byte length + JSON header).
    data_start: usize,
    tensors: HashMap<String, TensorInfo>,
}

/// An opened checkpoint directory.
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<MappedFile>,
    /// Tensor name -> file index.
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("dir", &self.dir)
            .field("tensors", &self.index.len())
            .finish()
    }
}

/// A tensor's raw bytes in the mapping, with its dtype and shape.
#[derive(Clone, Copy, Debug)]
pub struct RawTensor<'a> {
    pub dtype: Dtype,
    pub shape: &'a [usize],
    pub data: &'a [u8],
}

fn map_file(path: &Path) -> Result<MappedFile> {
    let err = |reason: String| Error::Checkpoint {
        path: path.display().to_string(),
        reason,
    };
    let file = File::open(path).map_err(|e| err(format!("cannot open: {e}")))?;
    // SAFETY: the mapping is read-only and private to this process; like every mmap-based model
    // loader we rely on nobody truncating the checkpoint while it is open (a truncation would
    // fault on access rather than corrupt memory).
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| err(format!("cannot map: {e}")))?;
    // Validates the header and that the data section covers every tensor (a truncated file
    // fails here).
    let (header_len, meta) = SafeTensors::read_metadata(&mmap)
        .map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
    let mut tensors = HashMap::new();
    for (name, info) in meta.tensors() {
        tensors.insert(name.clone(), info.clone());
    }
    let mmap = Arc::new(Mapping { file, map: mmap });
    Ok(MappedFile {
        path: path.to_path_buf(),
        data_start: 8 + header_len,
        mmap,
        tensors,
    })
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or the shards listed in `dir/model.safetensors.index.json`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let mut files = Vec::new();
        if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|e| Error::Checkpoint {
                path: index_path.display().to_string(),
                reason: format!("cannot read: {e}"),
            })?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::Checkpoint {
                    path: index_path.display().to_string(),
                    reason: format!("not valid JSON: {e}"),
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::Checkpoint {
                    path: index_path.display().to_string(),
                    reason: "no \"weight_map\" object".into(),
                })?;
            let mut shards: Vec<String> = map
                .values()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect();
            shards.sort();
            shards.dedup();
            for s in shards {
                if s.contains('/') || s.contains("..") {
                    return Err(Error::Checkpoint {
                        path: index_path.display().to_string(),
                        reason: format!("shard name {s:?} is not a plain file name"),
                    });
                }
                files.push(map_file(&dir.join(s))?);
            }
        } else if single.exists() {
            files.push(map_file(&single)?);
        } else {
            return Err(Error::Checkpoint {
                path: dir.display().to_string(),
                reason: "neither model.safetensors nor model.safetensors.index.json is there"
                    .into(),
            });
        }
        let mut index = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            for name in f.tensors.keys() {
                if index.insert(name.clone(), i).is_some() {
                    return Err(Error::Checkpoint {
                        path: f.path.display().to_string(),
                        reason: format!("tensor {name} appears in more than one shard"),
                    });
                }
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            index,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Names of every tensor.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// The raw tensor `name`.
    pub fn get(&self, name: &str) -> Result<RawTensor<'_>> {
        let &fi = self.index.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            location: self.dir.display().to_string(),
        })?;
        let f = &self.files[fi];
        let info = &f.tensors[name];
        let (start, end) = info.data_offsets;
        Ok(RawTensor {
            dtype: info.dtype,
            shape: &info.shape,
            data: &f.mmap.map[f.data_start + start..f.data_start + end],
        })
    }

    /// The mapping holding `name` and the tensor's byte offset in it: for tensors that borrow
    /// checkpoint bytes instead of copying them.
    pub fn shared(&self, name: &str) -> Result<(ttnn::SharedBytes, usize)> {
        let &fi = self.index.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            location: self.dir.display().to_string(),
        })?;
        let f = &self.files[fi];
        let owner: ttnn::SharedBytes = f.mmap.clone();
        Ok((owner, f.data_start + f.tensors[name].data_offsets.0))
    }

    /// Drops `name`'s pages from this process's resident memory once it has been converted:
    /// the mapping stays valid (a later read faults the pages back in from the page cache), but
    /// loading a model no longer holds every checkpoint byte resident at once.
    pub fn release(&self, name: &str) {
        self.release_prefix(name, usize::MAX);
    }

    /// [`Self::release`] for every file of the checkpoint: after loading, what stays resident
    /// of the mappings (headers, small tensors, the edges of released ranges; ~34 MB for
    /// 2B-4T) is dropped. Tensors borrowing a mapping read it through the file (see
    /// [`ttnn::SharedSource::read_at`]), so it is not faulted back in.
    pub fn release_all(&self) {
        for f in &self.files {
            // SAFETY: as in `release_prefix`: a read-only file mapping, whose dropped pages
            // are re-read from the file on the next access.
            let _ = unsafe { f.mmap.map.unchecked_advise(UncheckedAdvice::DontNeed) };
        }
    }

    /// [`Self::release`] for the first `nbytes` bytes of `name` only.
    pub fn release_prefix(&self, name: &str, nbytes: usize) {
        let Some(&fi) = self.index.get(name) else {
            return;
        };
        let f = &self.files[fi];
        let (start, end) = f.tensors[name].data_offsets;
        let end = end.min(start.saturating_add(nbytes));
        let page = 4096;
        let from = (f.data_start + start).div_ceil(page) * page;
        let to = (f.data_start + end) / page * page;
        if to > from {
            // SAFETY: the mapping is a read-only file mapping; MADV_DONTNEED only drops
            // its resident pages, which are re-read from the file on the next access, so no
            // data visible through `self` changes. A failure just leaves the pages resident.
            let _ = unsafe {
                f.mmap
                    .map
                    .unchecked_advise_range(UncheckedAdvice::DontNeed, from, to - from)
            };
        }
    }

    /// `name`, which must have `shape`, as f32 values (bf16/f16/f32 convert exactly).
    pub fn f32_values(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.get(name)?;
        check_shape(name, t.shape, shape)?;
        to_f32(name, &t)
    }
}

/// Fails unless `found` equals `expected`.
pub fn check_shape(name: &str, found: &[usize], expected: &[usize]) -> Result<()> {
    if found != expected {
        return Err(Error::TensorShape {
            name: name.into(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        });
    }
    Ok(())
}

/// Float tensor bytes as f32 (little-endian bf16, f16 or f32).
pub fn to_f32(name: &str, t: &RawTensor<'_>) -> Result<Vec<f32>> {
    let d = t.data;
    Ok(match t.dtype {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::TensorDtype {
                name: name.into(),
                expected: "BF16, F16 or F32".into(),
                found: format!("{other:?}"),
            });
        }
    })
}

/// A name prefix over a checkpoint, like candle's `VarBuilder::pp`: layers load their tensors
/// by leaf name and errors carry the full dotted path.
#[derive(Clone, Debug)]
pub struct Weights<'a> {
    pub ckpt: &'a Checkpoint,
    pub prefix: String,
}

impl<'a> Weights<'a> {
    pub fn root(ckpt: &'a Checkpoint) -> Self {
        Self {
            ckpt,
            prefix: String::new(),
        }
    }

    /// The full name of `leaf` under this prefix.
    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }

    /// A nested prefix.
    pub fn pp(&self, sub: &str) -> Weights<'a> {
        Weights {
            ckpt: self.ckpt,
            prefix: self.name(sub),
        }
    }

    pub fn get(&self, leaf: &str) -> Result<RawTensor<'a>> {
        self.ckpt.get(&self.name(leaf))
    }

    pub fn contains(&self, leaf: &str) -> bool {
        self.ckpt.contains(&self.name(leaf))
    }

    pub fn f32_values(&self, leaf: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.ckpt.f32_values(&self.name(leaf), shape)
    }
}
