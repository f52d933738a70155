//! The teacher's taps held in memory for one run, where the transfer set is not augmented: each
//! image has one view, so the teacher's features of every image are computed once, before the
//! first step, instead of on every batch of every epoch (what the logit cache does for logits).
//!
//! The store lives in the run's memory, not on disk: a feature tap is 10²–10⁴ floats per image
//! (FitNet's hint on Fashion-MNIST: 25 KB), so a file per teacher and tap set would grow with every
//! method, and rebuilding it costs one teacher pass over the transfer set (less than one epoch of
//! the student's training). Above `LIMIT_BYTES` the run serves the taps live and says so.
//!
//! Filled in a fixed order (samples in index order, evaluation batches), so a resumed run reads
//! exactly what the uninterrupted one read.
use super::cache::teacher_inputs;
use super::teacher::TeacherModel;
use crate::data::augment::Augment;
use crate::data::Dataset;
use crate::models::taps::TapShapes;
use crate::models::Taps;
use anyhow::Result;
use tch::{Device, Kind, Tensor};

/// The most memory one run's store may take; beyond it the taps are served live.
pub const LIMIT_BYTES: u64 = 2 << 30;

/// Every training sample's teacher taps, `logits` among them: one (N, …) float tensor per tap.
pub struct TapStore {
    taps: Vec<(String, Tensor)>,
}

/// The bytes a store of `names` (with `logits`) would take for `samples` samples.
pub fn bytes(shapes: &TapShapes, names: &[String], samples: usize) -> u64 {
    let per_sample: i64 =
        shapes.iter().filter(|(n, _)| n == "logits" || names.contains(n)).map(|(_, s)| s.iter().product::<i64>()).sum();
    per_sample as u64 * samples as u64 * 4
}

impl TapStore {
    /// Runs `model` over `data`'s training images (the identity view: no augmentation) once,
    /// keeping the taps `names` and the logits on the CPU.
    pub fn build(model: &TeacherModel, data: &Dataset, names: &[String]) -> Result<TapStore> {
        let mut wanted: Vec<String> = names.to_vec();
        if !wanted.iter().any(|n| n == "logits") {
            wanted.push("logits".into());
        }
        let aug = Augment::new(&data.profile, false);
        let identity = aug.identity();
        let mut parts: Vec<Vec<Tensor>> = wanted.iter().map(|_| vec![]).collect();
        teacher_inputs(
            &data.train,
            &aug,
            |_| identity,
            model.device(),
            |_, _, x| {
                let mut taps = Taps::only(&wanted);
                let logits = model.infer_taps(x, &mut taps);
                for (part, name) in parts.iter_mut().zip(&wanted) {
                    let t = if name == "logits" {
                        &logits
                    } else {
                        taps.get(name).expect("the model records every tap it lists")
                    };
                    part.push(t.to_device(Device::Cpu).to_kind(Kind::Float));
                }
                Ok(())
            },
        )?;
        let taps = wanted.into_iter().zip(parts).map(|(n, p)| (n, Tensor::cat(&p, 0))).collect();
        Ok(TapStore { taps })
    }

    /// The taps of samples `indices` ((N,) int64 on the CPU) on `device`, and their logits.
    pub fn lookup(&self, indices: &Tensor, device: Device) -> (Taps, Tensor) {
        let names: Vec<&str> = self.taps.iter().map(|(n, _)| n.as_str()).collect();
        let mut taps = Taps::only(&names);
        let mut logits = None;
        for (name, all) in &self.taps {
            let rows = all.index_select(0, indices).to_device(device);
            taps.put(name, &rows);
            if name == "logits" {
                logits = Some(rows);
            }
        }
        (taps, logits.expect("the store keeps the logits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::model::Model;

    /// The store holds what the teacher computes live on the same images, in any batch.
    #[test]
    fn the_store_serves_the_taps_the_teacher_computes_live() {
        let data = crate::data::embedded::load().unwrap().head(120, 20);
        let model: TeacherModel = Model::new("resnet8", data.shape(), 10, Device::Cpu, 5).unwrap().into();
        let names = vec!["stage2".to_string(), "embedding".to_string()];
        let shapes = model.tap_shapes();
        assert_eq!(bytes(&shapes, &names, 120), 120 * (32 * 14 * 14 + 64 + 10) * 4);
        let store = TapStore::build(&model, &data, &names).unwrap();
        let picked = [7u32, 0, 119, 64, 7];
        let indices = Tensor::from_slice(&picked.map(i64::from));
        let (taps, logits) = store.lookup(&indices, Device::Cpu);
        // The same images, normalised as the loader does with augmentation off, in one batch.
        let aug = Augment::new(&data.profile, false);
        let numel = data.train.shape.numel();
        let mut buf = vec![0f32; picked.len() * numel];
        for (k, &i) in picked.iter().enumerate() {
            aug.apply(
                data.train.image(i as usize),
                data.train.shape,
                aug.identity(),
                &mut buf[k * numel..(k + 1) * numel],
            );
        }
        let s = data.train.shape;
        let x = Tensor::from_slice(&buf).view([picked.len() as i64, s.c as i64, s.h as i64, s.w as i64]);
        let mut live = Taps::only(&names);
        let live_logits = model.infer_taps(&x, &mut live);
        let close = |a: &Tensor, b: &Tensor| {
            assert_eq!(a.size(), b.size());
            let diff = (a - b).abs().max().double_value(&[]);
            let scale = b.abs().max().double_value(&[]);
            assert!(diff <= 1e-5 * scale.max(1.0), "store and live differ by {diff} (scale {scale})");
        };
        close(&logits, &live_logits);
        for n in &names {
            close(taps.get(n).unwrap(), live.get(n).unwrap());
        }
        // A repeated index is served twice, the same.
        close(&logits.get(0), &logits.get(4));
    }
}
