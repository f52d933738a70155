//! `fitnet` (Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015): the student's hint
//! layer, through a trainable regressor, regresses the teacher's hint layer.
//! ce = α·CE(s, y); feat = β·MSE(r(f_s), f_t), the mean over every element.
//!
//! Defaults are mdistiller's CIFAR-100 setting (single-stage training, as every current table
//! reports FitNet): the hint is the second stage's output (`stage2`, mdistiller's `feats[2]`),
//! α = 1, β = 100. The regressor is mdistiller's `ConvReg`: a convolution chosen by the two maps'
//! sizes (stride 2 when the student's map is twice the teacher's, a transposed convolution when it
//! is half, otherwise a valid convolution of size 1 + s − t), then BatchNorm and ReLU. For vector
//! taps (`embedding`) it is a linear layer.
use super::common::cross_entropy;
use super::{incompatible, weight, LossInput, Method, MethodParams, Setup, TapNeeds};
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::nn;
use tch::Tensor;

/// fitnet's hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Params {
    /// The tap regressed, the same name on student and teacher (`kdlab models --taps MODEL`).
    pub hint: String,
    /// Weight of the cross-entropy term.
    pub ce_weight: f64,
    /// Weight of the hint (feature regression) term.
    pub feat_weight: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params { hint: "stage2".into(), ce_weight: 1.0, feat_weight: 100.0 }
    }
}

impl MethodParams for Params {
    fn build(self) -> Result<Box<dyn Method>> {
        if self.hint.is_empty() || self.hint == "logits" {
            return incompatible("hint names an intermediate tap (stage2, prepool, embedding, …)", &self.hint);
        }
        weight("ce_weight", self.ce_weight)?;
        weight("feat_weight", self.feat_weight)?;
        Ok(Box::new(FitNet { p: self, regressor: None }))
    }
}

pub struct FitNet {
    p: Params,
    regressor: Option<Regressor>,
}

/// Maps the student's hint onto the teacher's shape.
#[derive(Debug)]
enum Regressor {
    Conv(nn::Conv2D, nn::BatchNorm),
    Transposed(nn::ConvTranspose2D, nn::BatchNorm),
    Linear(nn::Linear),
}

impl Regressor {
    /// mdistiller's ConvReg for (C, H, W) maps; a linear layer for vectors.
    fn new(p: nn::Path, s: &[i64], t: &[i64]) -> Result<Regressor> {
        let bn = |p: nn::Path| nn::batch_norm2d(p / "bn", t[0], Default::default());
        match (s, t) {
            ([cs, hs, _], [ct, ht, _]) if *hs == 2 * ht => {
                let cfg = nn::ConvConfig { stride: 2, padding: 1, ..Default::default() };
                Ok(Regressor::Conv(nn::conv2d(&p / "conv", *cs, *ct, 3, cfg), bn(p)))
            }
            ([cs, hs, _], [ct, ht, _]) if 2 * hs == *ht => {
                let cfg = nn::ConvTransposeConfig { stride: 2, padding: 1, ..Default::default() };
                Ok(Regressor::Transposed(nn::conv_transpose2d(&p / "conv", *cs, *ct, 4, cfg), bn(p)))
            }
            ([cs, hs, ws], [ct, ht, wt]) if hs >= ht && ws >= wt => {
                let k = [1 + hs - ht, 1 + ws - wt];
                Ok(Regressor::Conv(nn::conv(&p / "conv", *cs, *ct, k, Default::default()), bn(p)))
            }
            ([cs], [ct]) => Ok(Regressor::Linear(nn::linear(&p / "linear", *cs, *ct, Default::default()))),
            _ => bail!(
                "FitNet's regressor maps (C, H, W) onto (C', H', W') with H ≥ H' or H = H'/2, or vectors onto \
                 vectors; the student's hint has shape {s:?} and the teacher's {t:?}"
            ),
        }
    }

    /// Checks that the regressor maps a student hint of shape `s` onto `t` (in eval mode, so
    /// BatchNorm's running statistics are untouched).
    fn check(self, s: &[i64], t: &[i64], device: tch::Device) -> Result<Regressor> {
        let got = tch::no_grad(|| {
            let x = Tensor::zeros([&[2], s].concat(), (tch::Kind::Float, device));
            self.forward_t(&x, false).size()
        });
        if got[1..] != *t {
            bail!("FitNet's regressor maps the student's hint {s:?} to {:?}, not the teacher's {t:?}", &got[1..]);
        }
        Ok(self)
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Regressor::Conv(conv, bn) => x.apply(conv).apply_t(bn, train).relu(),
            Regressor::Transposed(conv, bn) => x.apply(conv).apply_t(bn, train).relu(),
            Regressor::Linear(l) => x.apply(l),
        }
    }
}

impl Method for FitNet {
    fn name(&self) -> &'static str {
        "fitnet"
    }
    fn taps(&self) -> TapNeeds {
        TapNeeds { student: vec![self.p.hint.clone()], teacher: vec![self.p.hint.clone()] }
    }
    fn setup(&mut self, s: &Setup) -> Result<()> {
        let (st, te) = (s.student_shape(&self.p.hint), s.teacher_shape(&self.p.hint));
        self.regressor = Some(Regressor::new(&s.vars / "regressor", st, te)?.check(st, te, s.vars.device())?);
        Ok(())
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)> {
        let regressor = self.regressor.as_ref().expect("the trainer calls setup before the first step");
        let fs = regressor.forward_t(x.student_tap(&self.p.hint), true);
        let ft = x.teacher_tap(&self.p.hint).to_kind(fs.kind());
        let mse = (fs - ft).square().mean(x.student.kind());
        vec![
            ("ce".into(), self.p.ce_weight * cross_entropy(x.student, x.labels)),
            ("feat".into(), self.p.feat_weight * mse),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::Taps;
    use tch::Kind;

    /// Vector hints through the linear regressor, against a plain-f64 computation from the
    /// regressor's weights: the loss and its gradient with respect to the student's hint.
    #[test]
    fn linear_hint_loss_and_gradient_by_hand() {
        let (n, ds, dt) = (3usize, 4usize, 2usize);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mut m = Params { hint: "embedding".into(), ..Default::default() }.build().unwrap();
        let shapes_s = [("embedding".to_string(), vec![ds as i64])];
        let shapes_t = [("embedding".to_string(), vec![dt as i64])];
        m.setup(&Setup {
            vars: vs.root(),
            student: &shapes_s,
            teacher: &shapes_t,
            classes: 3,
            samples: n,
            labels: None,
        })
        .unwrap();
        let mut vs = vs;
        vs.double();
        let vars = vs.variables();
        let w: Vec<f64> = Vec::try_from(vars["regressor.linear.weight"].flatten(0, -1)).unwrap();
        let b: Vec<f64> = Vec::try_from(&vars["regressor.linear.bias"]).unwrap();

        let xs: Vec<f64> = (0..n * ds).map(|i| ((i * 7 % 11) as f64 - 5.0) / 3.0).collect();
        let xt: Vec<f64> = (0..n * dt).map(|i| ((i * 5 % 7) as f64 - 3.0) / 2.0).collect();
        let hs = Tensor::from_slice(&xs).view([n as i64, ds as i64]).set_requires_grad(true);
        let ht = Tensor::from_slice(&xt).view([n as i64, dt as i64]);
        let logits = Tensor::zeros([n as i64, 3], (Kind::Double, tch::Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, 1, 2]);
        let (mut ts, mut tt) = (Taps::only(&["embedding"]), Taps::only(&["embedding"]));
        ts.put("embedding", &hs);
        tt.put("embedding", &ht);
        let mut x = LossInput::logits(&logits, &logits, &labels, 1.0);
        x.student_taps = Some(&ts);
        x.teacher_taps = Some(&tt);
        let terms = m.terms(&x);
        let feat = &terms.iter().find(|(k, _)| k == "feat").unwrap().1;

        // By hand: r = W x + b; feat = 100 · mean((r − t)²); ∂feat/∂x = 100 · 2/(N·Dt) · Wᵀ (r − t).
        let mut want = 0.0;
        let mut grad = vec![0.0; n * ds];
        for i in 0..n {
            for o in 0..dt {
                let r: f64 = b[o] + (0..ds).map(|k| w[o * ds + k] * xs[i * ds + k]).sum::<f64>();
                let e = r - xt[i * dt + o];
                want += e * e;
                for k in 0..ds {
                    grad[i * ds + k] += 100.0 * 2.0 / (n * dt) as f64 * e * w[o * ds + k];
                }
            }
        }
        want *= 100.0 / (n * dt) as f64;
        let got = feat.double_value(&[]);
        assert!((got - want).abs() <= 1e-12 * want.abs(), "{got} vs {want}");
        feat.backward();
        let g: Vec<f64> = Vec::try_from(hs.grad().flatten(0, -1)).unwrap();
        for (a, b) in g.iter().zip(&grad) {
            assert!((a - b).abs() <= 1e-12 * b.abs().max(1e-12), "{g:?} vs {grad:?}");
        }
        // CE on zero logits is ln 3 per sample, weighted by 1.
        let ce = terms.iter().find(|(k, _)| k == "ce").unwrap().1.double_value(&[]);
        assert!((ce - 3f64.ln()).abs() < 1e-12);
    }

    /// mdistiller's ConvReg choices: strided (student map twice the teacher's), transposed
    /// (half), valid convolution (larger by a few pixels); anything else is refused.
    #[test]
    fn the_regressor_follows_the_map_sizes() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let ok = |s: &[i64], t: &[i64]| Regressor::new(vs.root(), s, t).and_then(|r| r.check(s, t, tch::Device::Cpu));
        assert!(matches!(ok(&[16, 14, 14], &[32, 7, 7]).unwrap(), Regressor::Conv(..)));
        assert!(matches!(ok(&[16, 7, 7], &[32, 14, 14]).unwrap(), Regressor::Transposed(..)));
        assert!(matches!(ok(&[16, 9, 9], &[32, 7, 7]).unwrap(), Regressor::Conv(..)));
        let e = format!("{:#}", ok(&[16, 5, 5], &[32, 7, 7]).unwrap_err());
        assert!(e.contains("FitNet's regressor maps"), "{e}");
        assert!(ok(&[16, 7, 7], &[32]).is_err());
    }
}
