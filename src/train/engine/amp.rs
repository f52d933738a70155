//! Mixed precision: LibTorch's autocast around the model's forward pass, in bf16 or fp16, and
//! dynamic loss scaling for fp16.
//!
//! What stays float32, and why:
//! - **the weights, their gradients, the momentum buffers and checkpoints**: autocast casts a
//!   copy of each weight for the operation; the parameters themselves never change kind, so a
//!   checkpoint of a bf16 run loads like any other (and teaches like any other);
//! - **the logits the losses see**: the forward pass's output is cast back to float32 before any
//!   loss term. Distillation losses take softmaxes of logits divided by τ (up to 8 and more in
//!   the studies); bf16 keeps 8 significant bits, so at τ = 8 logits 0.06 apart round to the
//!   same value and the wrong classes' probabilities — the dark knowledge the methods transfer —
//!   lose their order. The teacher's logits come from the cache (stored f16, read as float32) or
//!   from the teacher run outside autocast, in float32;
//! - **evaluation**: test and validation accuracy are computed in float32, so runs with and
//!   without autocast are measured alike.
//!
//! tch 0.24 exposes `tch::autocast`, which switches CUDA's autocast only (LibTorch's deprecated
//! `at::autocast::set_enabled`), and cannot choose the dtype. The device-aware functions
//! (`at::autocast::set_autocast_enabled(DeviceType, bool)`, `set_autocast_dtype`) are exported by
//! libtorch_cpu.so, which kdlab links; they are found by their (Itanium ABI) symbol names at run
//! time, so no C++ shim is compiled. A LibTorch without them makes `--amp` an error, never a
//! silent float32 run.
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

/// `amp`: the precision of the forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Amp {
    /// float32 throughout.
    #[default]
    Off,
    /// bfloat16 autocast: float32's range, no loss scaling needed.
    Bf16,
    /// float16 autocast with dynamic loss scaling (fp16's range is too small for small gradients).
    Fp16,
}

impl Amp {
    pub fn as_str(self) -> &'static str {
        match self {
            Amp::Off => "off",
            Amp::Bf16 => "bf16",
            Amp::Fp16 => "fp16",
        }
    }

    fn kind(self) -> Option<Kind> {
        match self {
            Amp::Off => None,
            Amp::Bf16 => Some(Kind::BFloat16),
            Amp::Fp16 => Some(Kind::Half),
        }
    }
}

/// c10::DeviceType and c10::ScalarType are `enum class : int8_t`.
type SetEnabled = unsafe extern "C" fn(i8, bool);
type IsEnabled = unsafe extern "C" fn(i8) -> bool;
type SetDtype = unsafe extern "C" fn(i8, i8);
type GetDtype = unsafe extern "C" fn(i8) -> i8;
type Nesting = unsafe extern "C" fn() -> i32;
type ClearCache = unsafe extern "C" fn();

struct Api {
    set_enabled: SetEnabled,
    is_enabled: IsEnabled,
    set_dtype: SetDtype,
    get_dtype: GetDtype,
    increment: Nesting,
    decrement: Nesting,
    clear_cache: ClearCache,
}

fn api() -> Result<&'static Api> {
    static API: OnceLock<Option<Api>> = OnceLock::new();
    let found = API.get_or_init(|| {
        fn sym(name: &std::ffi::CStr) -> Option<*mut libc::c_void> {
            // SAFETY: dlsym over the symbols already loaded into the process.
            let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            (!p.is_null()).then_some(p)
        }
        // SAFETY: each symbol is the LibTorch 2.x function of the signature named in its type.
        unsafe {
            Some(Api {
                set_enabled: std::mem::transmute::<*mut libc::c_void, SetEnabled>(sym(
                    c"_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb",
                )?),
                is_enabled: std::mem::transmute::<*mut libc::c_void, IsEnabled>(sym(
                    c"_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE",
                )?),
                set_dtype: std::mem::transmute::<*mut libc::c_void, SetDtype>(sym(
                    c"_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE",
                )?),
                get_dtype: std::mem::transmute::<*mut libc::c_void, GetDtype>(sym(
                    c"_ZN2at8autocast18get_autocast_dtypeEN3c1010DeviceTypeE",
                )?),
                increment: std::mem::transmute::<*mut libc::c_void, Nesting>(sym(
                    c"_ZN2at8autocast17increment_nestingEv",
                )?),
                decrement: std::mem::transmute::<*mut libc::c_void, Nesting>(sym(
                    c"_ZN2at8autocast17decrement_nestingEv",
                )?),
                clear_cache: std::mem::transmute::<*mut libc::c_void, ClearCache>(sym(
                    c"_ZN2at8autocast11clear_cacheEv",
                )?),
            })
        }
    });
    match found {
        Some(api) => Ok(api),
        None => bail!(
            "--amp: this LibTorch does not export at::autocast's device-aware functions (LibTorch 2.4 or later does)"
        ),
    }
}

/// c10::DeviceType's numbers.
fn device_type(device: Device) -> Result<i8> {
    match device {
        Device::Cpu => Ok(0),
        Device::Cuda(_) => Ok(1),
        other => bail!("--amp: autocast on {other:?} is not supported (cpu and cuda are)"),
    }
}

/// c10::ScalarType's numbers.
fn scalar_type(kind: Kind) -> i8 {
    match kind {
        Kind::Half => 5,
        Kind::BFloat16 => 15,
        _ => 6, // Float
    }
}

#[cfg(test)]
fn kind_of(code: i8) -> Kind {
    match code {
        5 => Kind::Half,
        15 => Kind::BFloat16,
        _ => Kind::Float,
    }
}

/// Autocast on one device for as long as the value lives (on this thread: LibTorch keeps the
/// state thread-locally); the previous state comes back when it drops.
pub(crate) struct Autocast {
    api: &'static Api,
    device: i8,
    was_enabled: bool,
    was_dtype: i8,
}

impl Autocast {
    /// Autocast in `amp`'s precision on `device`; None for `Amp::Off`.
    pub(crate) fn enter(amp: Amp, device: Device) -> Result<Option<Autocast>> {
        let Some(kind) = amp.kind() else { return Ok(None) };
        let api = api()?;
        let dt = device_type(device)?;
        // SAFETY: plain calls into LibTorch with valid enum values.
        unsafe {
            let guard = Autocast { api, device: dt, was_enabled: (api.is_enabled)(dt), was_dtype: (api.get_dtype)(dt) };
            (api.set_dtype)(dt, scalar_type(kind));
            (api.set_enabled)(dt, true);
            (api.increment)();
            Ok(Some(guard))
        }
    }

    /// Whether autocast is on for `device` on this thread, and in which precision.
    #[cfg(test)]
    fn current(device: Device) -> Result<Option<Kind>> {
        let api = api()?;
        let dt = device_type(device)?;
        // SAFETY: plain calls into LibTorch.
        unsafe { Ok((api.is_enabled)(dt).then(|| kind_of((api.get_dtype)(dt)))) }
    }
}

impl Drop for Autocast {
    fn drop(&mut self) {
        // SAFETY: undoes `enter`; the cast weights cached for this region are freed when the
        // outermost region ends, as torch.autocast does.
        unsafe {
            if (self.api.decrement)() == 0 {
                (self.api.clear_cache)();
            }
            (self.api.set_enabled)(self.device, self.was_enabled);
            (self.api.set_dtype)(self.device, self.was_dtype);
        }
    }
}

/// Runs `f` under autocast (nothing changes for `Amp::Off`) and hands its output back as float32.
pub fn forward(amp: Amp, device: Device, f: impl FnOnce() -> Tensor) -> Result<Tensor> {
    let out = {
        let _guard = Autocast::enter(amp, device)?;
        f()
    };
    Ok(if out.kind() == Kind::Float { out } else { out.to_kind(Kind::Float) })
}

/// A step's backward pass: of the loss itself, or (fp16, with a scaler) of the scaled loss, the
/// gradients (`grads`) unscaled after it. Returns whether the update may be taken (false: fp16
/// gradients overflowed and the step is skipped).
pub fn backward(loss: &Tensor, scaler: Option<&mut LossScaler>, grads: impl FnOnce() -> Vec<Tensor>) -> bool {
    match scaler {
        None => {
            loss.backward();
            true
        }
        Some(s) => {
            (loss * s.scale).backward();
            s.unscale(&grads())
        }
    }
}

/// Dynamic loss scaling for fp16 (as torch.amp.GradScaler): the loss is multiplied by `scale`
/// before the backward pass so that small gradients do not flush to zero in fp16; the gradients
/// are divided by it again before clipping and the update. A step whose gradients overflowed
/// (inf or NaN) is skipped and the scale halved; after `GROWTH_INTERVAL` good steps in a row it
/// doubles. Its state is not checkpointed: a resumed fp16 run starts from the initial scale and
/// finds its level again within a few steps (torch's scaler behaves the same unless saved).
#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    pub scale: f64,
    good_steps: usize,
    /// Steps skipped because their gradients overflowed.
    pub skipped: usize,
}

pub(crate) const INITIAL_SCALE: f64 = 65536.0;
pub(crate) const GROWTH_INTERVAL: usize = 2000;

impl Default for LossScaler {
    fn default() -> Self {
        LossScaler { scale: INITIAL_SCALE, good_steps: 0, skipped: 0 }
    }
}

impl LossScaler {
    /// Divides the gradients by the scale in place; returns whether the step may be taken (all
    /// finite), and updates the scale.
    pub(crate) fn unscale(&mut self, grads: &[Tensor]) -> bool {
        let _g = tch::no_grad_guard();
        let inv = 1.0 / self.scale;
        let flags: Vec<Tensor> = grads
            .iter()
            .filter(|g| g.defined())
            .map(|g| {
                let _ = g.shallow_clone().g_mul_scalar_(inv);
                g.isfinite().all()
            })
            .collect();
        // One read-back per step (torch's GradScaler reads its found-inf flag once too).
        let finite = flags.is_empty() || Tensor::stack(&flags, 0).all().int64_value(&[]) != 0;
        self.update(finite);
        finite
    }

    /// The scale after a step whose gradients were (`finite`) or were not finite.
    pub fn update(&mut self, finite: bool) {
        if finite {
            self.good_steps += 1;
            if self.good_steps >= GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.good_steps = 0;
            }
        } else {
            self.scale *= 0.5;
            self.good_steps = 0;
            self.skipped += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// bf16 autocast on the CPU: a matrix product inside the region runs in bf16 (its result
    /// differs from float32's by bf16's rounding, and not more), the region's end restores float32,
    /// and the parameters keep their kind.
    #[test]
    fn cpu_bf16_autocast_switches_on_and_off() {
        let a = Tensor::randn([64, 64], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([64, 64], (Kind::Float, Device::Cpu));
        let exact = a.matmul(&b);
        assert_eq!(Autocast::current(Device::Cpu).unwrap(), None);
        let inside = {
            let _g = Autocast::enter(Amp::Bf16, Device::Cpu).unwrap();
            assert_eq!(Autocast::current(Device::Cpu).unwrap(), Some(Kind::BFloat16));
            a.matmul(&b)
        };
        assert_eq!(inside.kind(), Kind::BFloat16);
        assert_eq!(a.kind(), Kind::Float);
        assert_eq!(Autocast::current(Device::Cpu).unwrap(), None);
        assert_eq!(a.matmul(&b).kind(), Kind::Float);
        // bf16 keeps 8 significant bits: products of 64 terms of N(0,1)·N(0,1) agree to a few
        // percent of their scale, and are not identical.
        let err = (inside.to_kind(Kind::Float) - &exact).abs().max().double_value(&[]);
        let scale = exact.abs().max().double_value(&[]);
        assert!(err > 0.0 && err < 0.05 * scale, "err {err} scale {scale}");
        // Off does nothing at all.
        assert!(Autocast::enter(Amp::Off, Device::Cpu).unwrap().is_none());
        let f = forward(Amp::Bf16, Device::Cpu, || a.matmul(&b)).unwrap();
        assert_eq!(f.kind(), Kind::Float);
    }

    #[test]
    fn nested_regions_restore_the_outer_state() {
        let _outer = Autocast::enter(Amp::Bf16, Device::Cpu).unwrap();
        {
            let _inner = Autocast::enter(Amp::Fp16, Device::Cpu).unwrap();
            assert_eq!(Autocast::current(Device::Cpu).unwrap(), Some(Kind::Half));
        }
        assert_eq!(Autocast::current(Device::Cpu).unwrap(), Some(Kind::BFloat16));
    }

    /// The scaler against torch.amp.GradScaler's rule, step by step.
    #[test]
    fn loss_scaler_skips_overflow_halves_and_grows() {
        let mut s = LossScaler::default();
        let g = Tensor::from_slice(&[2.0f32 * INITIAL_SCALE as f32, -INITIAL_SCALE as f32]);
        assert!(s.unscale(&[g.shallow_clone()]));
        assert_eq!(Vec::<f32>::try_from(&g).unwrap(), vec![2.0, -1.0], "divided by the scale in place");
        let inf = Tensor::from_slice(&[1.0f32, f32::INFINITY]);
        assert!(!s.unscale(&[inf]));
        assert_eq!((s.scale, s.skipped), (INITIAL_SCALE / 2.0, 1));
        for _ in 0..GROWTH_INTERVAL - 1 {
            s.update(true);
        }
        assert_eq!(s.scale, INITIAL_SCALE / 2.0);
        s.update(true);
        assert_eq!(s.scale, INITIAL_SCALE);
        assert!(!s.unscale(&[Tensor::from_slice(&[f32::NAN])]));
        assert_eq!(s.scale, INITIAL_SCALE / 2.0);
    }
}
