//! Device and thread selection. The same binary runs on the CPU and, where LibTorch was built with
//! CUDA (PyPI's torch wheel is) and a GPU is present, on the GPU.
use anyhow::{bail, Result};
use std::sync::Once;
use tch::Device;

/// What the user asked for with `--device`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    Cpu,
    Cuda,
    Auto,
}

static LOAD_CUDA: Once = Once::new();

/// Rust links with `--as-needed`, which drops libtorch_cuda.so because no symbol of it is used
/// directly; without it LibTorch reports no CUDA. Loading it by hand registers the CUDA backend.
fn load_cuda_backend() {
    LOAD_CUDA.call_once(|| {
        let dir = env!("KDLAB_LIBTORCH_LIB");
        let mut candidates = vec![];
        if !dir.is_empty() {
            candidates.push(format!("{dir}/libtorch_cuda.so"));
        }
        if let Ok(lib) = std::env::var("LIBTORCH") {
            candidates.push(format!("{lib}/lib/libtorch_cuda.so"));
        }
        candidates.push("libtorch_cuda.so".to_string());
        for path in candidates {
            let Ok(c) = std::ffi::CString::new(path) else { continue };
            // SAFETY: dlopen with a valid C string; the handle is deliberately kept for the
            // process's lifetime.
            let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            if !handle.is_null() {
                return;
            }
        }
    });
}

/// True when LibTorch can use a CUDA GPU on this machine.
pub fn cuda_available() -> bool {
    load_cuda_backend();
    tch::Cuda::is_available()
}

/// Resolves `--device` to a tch device; `cuda` without a usable GPU is an error, `auto` falls
/// back to the CPU.
pub fn resolve(choice: DeviceChoice) -> Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => {
            if cuda_available() {
                Ok(Device::Cuda(0))
            } else {
                bail!(
                    "--device cuda: LibTorch sees no CUDA GPU (is the NVIDIA driver loaded, and was \
                     kdlab built against a CUDA build of LibTorch such as PyPI's torch==2.11.0?)"
                )
            }
        }
        DeviceChoice::Auto => Ok(if cuda_available() { Device::Cuda(0) } else { Device::Cpu }),
    }
}

/// How convolution weights and activations are laid out in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MemoryFormat {
    /// Channels-last on the CPU for networks whose convolutions all have at least 16 output
    /// channels (measured faster there; see docs/performance.md), PyTorch's default layout
    /// elsewhere and for narrower networks.
    Auto,
    /// PyTorch's default NCHW layout.
    Contiguous,
    /// NHWC storage, the layout oneDNN's CPU convolutions prefer.
    ChannelsLast,
}

static MEMORY_FORMAT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Sets the memory format for every model this process builds from now on.
pub(crate) fn set_memory_format(f: MemoryFormat) {
    MEMORY_FORMAT.store(f as u8, std::sync::atomic::Ordering::Relaxed);
}

/// The fewest output channels a convolution may have for `auto` to choose channels-last. oneDNN's
/// channels-last CPU kernels work on whole vectors of channels: `cnn_w1`, whose first convolution
/// has 8, trained at 10,300 images/s in channels-last and 16,000 in NCHW, where `cnn_w2` (16) and
/// every ResNet gain from channels-last (docs/performance.md).
const CHANNELS_LAST_MIN_CHANNELS: i64 = 16;

/// Whether a model on `device` whose narrowest convolution has `narrowest` output channels should
/// store its weights channels-last.
pub(crate) fn channels_last_for(device: Device, narrowest: i64) -> bool {
    match MEMORY_FORMAT.load(std::sync::atomic::Ordering::Relaxed) {
        x if x == MemoryFormat::ChannelsLast as u8 => true,
        x if x == MemoryFormat::Contiguous as u8 => false,
        _ => device == Device::Cpu && narrowest >= CHANNELS_LAST_MIN_CHANNELS,
    }
}

/// Sets LibTorch's intra-op threads (0 = every core) and returns the number in use.
pub(crate) fn set_threads(threads: usize) -> usize {
    let n = if threads == 0 { available_cores() } else { threads };
    tch::set_num_threads(n as i32);
    n
}

pub(crate) fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// A host tensor on `device`. On the CPU it is the tensor itself (no copy). On a GPU it is staged
/// in pinned (page-locked) host memory and copied without blocking: the host goes on queueing the
/// step's kernels while the batch crosses the bus, and the copy is ordered before them on the
/// stream. (LibTorch's caching host allocator keeps the pinned block until the copy is done.)
pub fn upload(t: &tch::Tensor, device: Device) -> tch::Tensor {
    match device {
        Device::Cpu => t.shallow_clone(),
        _ => t.pin_memory(device).to_device_(device, t.kind(), true, false),
    }
}

/// A short description of a device for logs and run records.
pub(crate) fn describe(device: Device) -> String {
    match device {
        Device::Cpu => format!("cpu ({} threads)", tch::get_num_threads()),
        // A sweep pins each worker to one GPU with CUDA_VISIBLE_DEVICES, where every GPU is
        // cuda:0: the record names the physical one too.
        Device::Cuda(i) => match std::env::var("CUDA_VISIBLE_DEVICES") {
            Ok(v) if !v.is_empty() => format!("cuda:{i} (CUDA_VISIBLE_DEVICES={v})"),
            _ => format!("cuda:{i}"),
        },
        other => format!("{other:?}"),
    }
}
