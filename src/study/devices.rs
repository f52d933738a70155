//! Where a sweep's workers run: the devices (the CPU, or CUDA GPUs by index), how many workers
//! each takes, and the scheduler that places runs on them.
//!
//! A worker on GPU `N` is started with `CUDA_VISIBLE_DEVICES=N` and `--device cuda`, so it sees
//! exactly one GPU (as `cuda:0`) and cannot allocate on another worker's card by accident; its
//! run record names the physical GPU. The scheduler itself never touches CUDA: it places runs on a
//! list of device ids, which is what the tests simulate on a machine without a GPU.
use anyhow::{bail, Context, Result};
use std::fmt;

/// The kind of device a sweep's runs train on. A study's runs all get the same kind, so a run
/// resumed by a later sweep continues on the kind of device it started on (the numbers of a CPU
/// and a GPU differ in the last bits, and bf16 autocast differs more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
        }
    }

    /// The kind a run record's `device` field names ("cpu (2 threads)", "cuda:0 (…)").
    pub(crate) fn of_record(device: &str) -> Option<DeviceKind> {
        if device.starts_with("cpu") {
            Some(DeviceKind::Cpu)
        } else if device.starts_with("cuda") {
            Some(DeviceKind::Cuda)
        } else {
            None
        }
    }
}

/// `kdlab sweep --device`: cpu, cuda (every visible GPU), cuda:N (that one), auto (cuda when
/// LibTorch sees a GPU, else cpu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SweepDevice {
    Cpu,
    Cuda(Option<usize>),
    Auto,
}

impl std::str::FromStr for SweepDevice {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<SweepDevice> {
        match s {
            "cpu" => Ok(SweepDevice::Cpu),
            "cuda" | "gpu" => Ok(SweepDevice::Cuda(None)),
            "auto" => Ok(SweepDevice::Auto),
            _ => match s.strip_prefix("cuda:") {
                Some(n) => Ok(SweepDevice::Cuda(Some(
                    n.parse().with_context(|| format!("device '{s}': the GPU index after 'cuda:' must be a number"))?,
                ))),
                None => bail!("device '{s}': expected cpu, cuda, cuda:N or auto"),
            },
        }
    }
}

/// Parses `--devices`: GPU indices as `0,1,3` or `cuda:0,cuda:1`; each once.
pub(crate) fn parse_device_list(s: &str) -> Result<Vec<usize>> {
    let mut out: Vec<usize> = vec![];
    for part in s.split(',').map(str::trim) {
        let n = part.strip_prefix("cuda:").unwrap_or(part);
        let id: usize = n
            .parse()
            .with_context(|| format!("--devices '{s}': '{part}' is not a GPU index (use e.g. 0,1 or cuda:0,cuda:1)"))?;
        if out.contains(&id) {
            bail!("--devices '{s}': GPU {id} is listed twice (use --workers-per-device for more workers on one GPU)");
        }
        out.push(id);
    }
    if out.is_empty() {
        bail!("--devices is empty");
    }
    Ok(out)
}

/// The devices a sweep places its workers on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevicePlan {
    pub kind: DeviceKind,
    /// GPU indices (as `CUDA_VISIBLE_DEVICES` numbers them); empty on the CPU.
    pub gpus: Vec<usize>,
    /// Workers at once on each GPU, or in all on the CPU.
    pub per_device: usize,
}

impl DevicePlan {
    /// `workers` workers on the CPU.
    pub fn cpu(workers: usize) -> DevicePlan {
        DevicePlan { kind: DeviceKind::Cpu, gpus: vec![], per_device: workers.max(1) }
    }

    /// Resolves the sweep's flags. `device`: `--device` (else the study file's `device`, else
    /// cpu); `devices`: `--devices`; `per_device`: `--workers-per-device`; `workers`: `--workers`
    /// (the CPU's worker count); `gpu_count`: how many GPUs LibTorch sees, asked only for `cuda`
    /// without an index and for `auto`.
    pub fn resolve(
        device: Option<SweepDevice>,
        devices: Option<&str>,
        per_device: Option<usize>,
        workers: usize,
        gpu_count: impl FnOnce() -> usize,
    ) -> Result<DevicePlan> {
        if per_device == Some(0) {
            bail!("--workers-per-device must be at least 1");
        }
        let listed = devices.map(parse_device_list).transpose()?;
        let device = device.unwrap_or(if listed.is_some() { SweepDevice::Cuda(None) } else { SweepDevice::Cpu });
        let cuda = |gpus: Vec<usize>| DevicePlan { kind: DeviceKind::Cuda, gpus, per_device: per_device.unwrap_or(1) };
        match (device, listed) {
            (SweepDevice::Cpu, Some(_)) => bail!("--devices lists GPUs, but --device is cpu"),
            (SweepDevice::Cpu, None) => {
                if per_device.is_some() {
                    bail!("--workers-per-device places workers on GPUs; on the CPU use --workers");
                }
                Ok(DevicePlan::cpu(workers))
            }
            (SweepDevice::Cuda(Some(n)), Some(l)) if l != [n] => {
                bail!("--device cuda:{n} and --devices {} disagree; give one of them", devices.unwrap_or_default())
            }
            (SweepDevice::Cuda(Some(n)), _) => Ok(cuda(vec![n])),
            (SweepDevice::Cuda(None) | SweepDevice::Auto, Some(l)) => Ok(cuda(l)),
            (SweepDevice::Cuda(None), None) => match gpu_count() {
                0 => bail!(
                    "--device cuda: LibTorch sees no CUDA GPU (is the NVIDIA driver loaded?); \
                     use --device cpu, or --devices to name GPUs explicitly"
                ),
                n => Ok(cuda((0..n).collect())),
            },
            (SweepDevice::Auto, None) => match gpu_count() {
                0 if per_device.is_some() => {
                    bail!("--device auto found no GPU, so --workers-per-device has nothing to place workers on")
                }
                0 => Ok(DevicePlan::cpu(workers)),
                n => Ok(cuda((0..n).collect())),
            },
        }
    }

    /// Workers at once in all.
    pub fn workers(&self) -> usize {
        match self.kind {
            DeviceKind::Cpu => self.per_device,
            DeviceKind::Cuda => self.per_device * self.gpus.len(),
        }
    }
}

impl fmt::Display for DevicePlan {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.kind {
            DeviceKind::Cpu => write!(f, "cpu"),
            DeviceKind::Cuda => {
                let ids: Vec<String> = self.gpus.iter().map(|g| format!("cuda:{g}")).collect();
                write!(f, "{} × {} worker(s)", ids.join(","), self.per_device)
            }
        }
    }
}

/// A slot a worker holds: the device index in the plan (always 0 on the CPU).
pub(crate) type Slot = usize;

/// Places runs on devices: at most `per_device` workers on each, the least busy device first
/// (ties: the lowest index), so that K workers on N GPUs spread as N×K rather than piling onto
/// GPU 0. A worker that dies (killed by a signal: the GPU fell off the bus, the kernel's OOM
/// killer) gives its run back to the queue; a device whose workers die `RETIRE_AFTER` times in a
/// row gets no more workers, so one broken GPU does not eat the whole queue.
#[derive(Clone, Debug)]
pub(crate) struct Scheduler {
    per_device: usize,
    busy: Vec<usize>,
    deaths_in_a_row: Vec<usize>,
    retired: Vec<bool>,
}

/// Deaths in a row after which a device is retired.
pub(crate) const RETIRE_AFTER: usize = 2;

impl Scheduler {
    pub fn new(plan: &DevicePlan) -> Scheduler {
        let n = plan.gpus.len().max(1);
        Scheduler {
            per_device: plan.per_device,
            busy: vec![0; n],
            deaths_in_a_row: vec![0; n],
            retired: vec![false; n],
        }
    }

    /// A free slot, if any device has room.
    pub(crate) fn acquire(&mut self) -> Option<Slot> {
        let slot = (0..self.busy.len())
            .filter(|&d| !self.retired[d] && self.busy[d] < self.per_device)
            .min_by_key(|&d| (self.busy[d], d))?;
        self.busy[slot] += 1;
        Some(slot)
    }

    /// A worker on `slot` ended; `died`: killed rather than exited. Returns true when this retired
    /// the device.
    pub fn release(&mut self, slot: Slot, died: bool) -> bool {
        self.busy[slot] -= 1;
        if !died {
            self.deaths_in_a_row[slot] = 0;
            return false;
        }
        self.deaths_in_a_row[slot] += 1;
        if self.deaths_in_a_row[slot] >= RETIRE_AFTER && !self.retired[slot] {
            self.retired[slot] = true;
            return true;
        }
        false
    }

    /// Workers running on each device.
    #[cfg(test)]
    fn busy(&self) -> &[usize] {
        &self.busy
    }

    /// True when every device is retired: nothing can run any more.
    pub(crate) fn all_retired(&self) -> bool {
        self.retired.iter().all(|&r| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(device: Option<&str>, devices: Option<&str>, k: Option<usize>, gpus: usize) -> Result<DevicePlan> {
        DevicePlan::resolve(device.map(|d| d.parse().unwrap()), devices, k, 3, || gpus)
    }

    #[test]
    fn flags_resolve_to_devices() {
        assert_eq!(
            plan(None, None, None, 4).unwrap(),
            DevicePlan { kind: DeviceKind::Cpu, gpus: vec![], per_device: 3 }
        );
        assert_eq!(plan(Some("cuda"), None, Some(2), 3).unwrap().gpus, vec![0, 1, 2]);
        assert_eq!(plan(Some("cuda:2"), None, None, 0).unwrap().gpus, vec![2]);
        assert_eq!(plan(None, Some("1,cuda:3"), Some(4), 0).unwrap().workers(), 8);
        assert_eq!(plan(Some("auto"), None, None, 0).unwrap().kind, DeviceKind::Cpu);
        assert_eq!(plan(Some("auto"), None, None, 2).unwrap().gpus, vec![0, 1]);
        for (d, l, k, want) in [
            (Some("cpu"), Some("0"), None, "--device is cpu"),
            (Some("cuda"), None, None, "sees no CUDA GPU"),
            (Some("cpu"), None, Some(2), "--workers-per-device"),
            (None, Some("0,0"), None, "listed twice"),
            (None, Some("0,x"), None, "'x' is not a GPU index"),
            (Some("cuda:1"), Some("0"), None, "disagree"),
            (None, Some("0"), Some(0), "at least 1"),
        ] {
            let e = format!("{:#}", plan(d, l, k, 0).unwrap_err());
            assert!(e.contains(want), "{d:?} {l:?} {k:?}: {e}");
        }
        let e = format!("{:#}", "cuda:x".parse::<SweepDevice>().unwrap_err());
        assert!(e.contains("cuda:x"), "{e}");
        assert!("tpu".parse::<SweepDevice>().is_err());
    }

    /// A simulated run of many short jobs: every placement keeps each device at ≤ K workers, the
    /// load spreads evenly, and a device whose workers die twice in a row is retired while its
    /// runs go back to the queue and finish on the others.
    #[test]
    fn places_at_most_k_per_device_and_retires_a_dying_one() {
        let p = DevicePlan { kind: DeviceKind::Cuda, gpus: vec![0, 1, 2], per_device: 2 };
        let mut s = Scheduler::new(&p);
        let slots: Vec<Slot> = std::iter::from_fn(|| s.acquire()).collect();
        assert_eq!(slots, vec![0, 1, 2, 0, 1, 2], "spread over the devices first");
        assert_eq!(s.busy(), &[2, 2, 2]);
        assert_eq!(s.acquire(), None, "every device is full");
        // Device 1's workers die; its runs are requeued (by the caller) and go elsewhere.
        let mut queue: Vec<usize> = (0..10).collect();
        let mut running: Vec<(usize, Slot)> = slots.into_iter().map(|sl| (queue.remove(0), sl)).collect();
        let mut done = vec![];
        let mut retired = vec![];
        while !running.is_empty() {
            let (run, slot) = running.remove(0);
            let died = slot == 1;
            if s.release(slot, died) {
                retired.push(slot);
            }
            if died {
                queue.push(run);
            } else {
                done.push(run);
            }
            while let Some(sl) = (!queue.is_empty()).then(|| s.acquire()).flatten() {
                assert!(s.busy().iter().all(|&b| b <= 2), "{:?}", s.busy());
                running.push((queue.remove(0), sl));
            }
        }
        assert_eq!(retired, vec![1]);
        done.sort();
        assert_eq!(done, (0..10).collect::<Vec<_>>(), "every run finished once");
        assert!(!s.all_retired());
        // A worker that exits (even with a failure) resets the count of deaths in a row.
        let mut s = Scheduler::new(&p);
        let a = s.acquire().unwrap();
        assert!(!s.release(a, true));
        let a = s.acquire().unwrap();
        assert_eq!(a, 0);
        assert!(!s.release(a, false));
        let a = s.acquire().unwrap();
        assert!(!s.release(a, true), "one death after an exit does not retire");
    }

    #[test]
    fn the_cpu_is_one_device_with_every_worker() {
        let p = DevicePlan::resolve(None, None, None, 2, || unreachable!("the CPU never asks CUDA")).unwrap();
        let mut s = Scheduler::new(&p);
        assert_eq!((s.acquire(), s.acquire(), s.acquire()), (Some(0), Some(0), None));
        assert_eq!(DeviceKind::of_record("cpu (2 threads)"), Some(DeviceKind::Cpu));
        assert_eq!(DeviceKind::of_record("cuda:0 (CUDA_VISIBLE_DEVICES=3)"), Some(DeviceKind::Cuda));
    }
}
