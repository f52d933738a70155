//! `crd` (Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020): the
//! student's and the teacher's embeddings, each through a trainable head (linear, then L2
//! normalisation, to `feat_dim`), are contrasted with memory banks that hold one embedding per
//! training sample: a sample's own row is the positive, K rows of other classes the negatives.
//! ce = α·CE(s, y); crd = β·(L(student anchor, teacher bank) + L(teacher anchor, student bank)).
//!
//! Conventions settled against the authors' code (RepDistiller `crd/`, and mdistiller's `CRD.py`,
//! which repeats it), read, not copied:
//! - Taps: each network's pooled embedding (`embedding`, the vector the classifier reads:
//!   RepDistiller's `feat[-1]`, mdistiller's `pooled_feat`). The teacher's is read without
//!   gradient; both heads are trained with the student (weight decay included, as mdistiller's
//!   learnable parameters).
//! - Scores: P(i, j) = exp(v_i · m_j / τ) / Z with the other network's bank rows m_j detached;
//!   Z = mean(exp(v·m/τ)) · n, estimated once, from the first batch, per direction, and then a
//!   constant (no gradient); it is state, checkpointed with the banks (`z`: student anchor,
//!   teacher anchor; −1 until set, as the authors' `params` buffer).
//! - Loss (their `ContrastLoss`, NCE with a uniform noise distribution P_n = 1/n, m = K):
//!   L = −(1/N)·Σ_i [log(P_i0 / (P_i0 + m·P_n + ε)) + Σ_{j≥1} log(m·P_n / (P_ij + m·P_n + ε))],
//!   ε = 10⁻⁷; the two directions are summed.
//! - Banks: initialised uniform in ±1/√(feat_dim/3); after the scores are taken, each batch
//!   sample's row becomes normalise(μ·row + (1 − μ)·v) with the detached embedding (μ = 0.5).
//! - Negatives: the authors' data set draws them ("exact" mode, their default): the positive is the
//!   sample's own row; K rows from the *other classes*, without replacement where there are at
//!   least K such samples, with replacement otherwise (`np.random.choice(..., replace=k > len)`).
//!   kdlab draws the same distribution by rejection from its own generator, seeded from the run's
//!   seed, the epoch and the step (`LossInput::draw_seed`), so a resumed run draws the same
//!   negatives. K is not capped on small sets: the authors' rule already handles K above the
//!   number of other-class samples (draws with replacement), and m = K enters the loss, so
//!   capping it would change the objective. `kdlab loss --negatives` gives them instead.
//!
//! Defaults as the authors and mdistiller: feat_dim 128, K = 16384, τ = 0.07, μ = 0.5, CE weight
//! 1, CRD weight 0.8 (mdistiller's `CRD.LOSS.FEAT_WEIGHT`; RepDistiller's `-b 0.8`).
//!
//! Memory: the banks hold samples × feat_dim × 2 floats, measured for Fashion-MNIST's 60,000
//! training images (`the_banks_of_fashion_mnist_take_61_mb`): 60,000 × 128 × 2 × 4 bytes =
//! 61.44 MB (58.6 MiB) in the method's VarStore and in every checkpoint. A step also holds a
//! snapshot of both banks (the scores read them before the in-place update, and autograd keeps
//! what it read: another 61.44 MB) and the N × samples scores per direction (computed as one
//! matrix product, then gathered: 64 × 60,000 × 2 × 4 bytes = 30.7 MB at batch 64, cheaper than
//! gathering N·(K+1) rows of 128, 1.07 GB, as the authors' `index_select` does).
use super::common::cross_entropy;
use super::{positive, weight, LossInput, Method, MethodParams, Setup, TapNeeds};
use crate::util::device::upload;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

/// The tap both networks are read at.
const TAP: &str = "embedding";
/// The authors' ε in the NCE loss.
const EPS: f64 = 1e-7;

/// crd's hyper-parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Dimension of the embedding heads' output (and of the banks' rows).
    pub feat_dim: i64,
    /// Negatives per anchor, K.
    pub nce_k: usize,
    /// Temperature τ of the scores.
    pub nce_t: f64,
    /// Momentum μ of the banks' update.
    pub nce_m: f64,
    /// Weight of the cross-entropy term.
    pub ce_weight: f64,
    /// Weight of the contrastive term.
    pub feat_weight: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params { feat_dim: 128, nce_k: 16384, nce_t: 0.07, nce_m: 0.5, ce_weight: 1.0, feat_weight: 0.8 }
    }
}

impl MethodParams for Params {
    fn build(self) -> Result<Box<dyn Method>> {
        if self.feat_dim < 1 {
            bail!("feat_dim must be ≥ 1, got {}", self.feat_dim);
        }
        if self.nce_k < 1 {
            bail!("nce_k must be ≥ 1, got {}", self.nce_k);
        }
        positive("nce_t", self.nce_t)?;
        if !(0.0..1.0).contains(&self.nce_m) {
            bail!("nce_m must be in [0, 1), got {}", self.nce_m);
        }
        weight("ce_weight", self.ce_weight)?;
        weight("feat_weight", self.feat_weight)?;
        Ok(Box::new(Crd { p: self, state: None }))
    }
}

pub struct Crd {
    p: Params,
    state: Option<State>,
}

/// The modules and state `setup` creates (handles into the method's VarStore).
struct State {
    embed_s: nn::Linear,
    embed_t: nn::Linear,
    /// (samples, feat_dim): the student's embeddings (the authors' `memory_v1`) and the teacher's.
    bank_s: Tensor,
    bank_t: Tensor,
    /// (2,): Z of the student-anchored and of the teacher-anchored scores; −1 until estimated.
    z: Tensor,
    /// Whether `z` was read since setup (it is then known to be set: estimated or restored).
    z_checked: bool,
    negatives: Option<Negatives>,
}

impl Method for Crd {
    fn name(&self) -> &'static str {
        "crd"
    }
    fn taps(&self) -> TapNeeds {
        TapNeeds { student: vec![TAP.into()], teacher: vec![TAP.into()] }
    }
    fn setup(&mut self, s: &Setup) -> Result<()> {
        let dim = |shape: &[i64]| shape.iter().product::<i64>();
        let (ds, dt, d) = (dim(s.student_shape(TAP)), dim(s.teacher_shape(TAP)), self.p.feat_dim);
        if s.samples == 0 {
            bail!("CRD keeps one bank row per training sample, and there are none");
        }
        let negatives = match s.labels {
            Some(labels) => Some(Negatives::new(labels, s.samples)?),
            None => None,
        };
        // The order of creation is the authors': the two heads, then the banks (from the seed).
        let embed_s = nn::linear(&s.vars / "embed_s", ds, d, Default::default());
        let embed_t = nn::linear(&s.vars / "embed_t", dt, d, Default::default());
        let n = s.samples as i64;
        let stdv = 1.0 / (d as f64 / 3.0).sqrt();
        let bank = |name: &str| {
            let mut b = s.vars.zeros_no_train(name, &[n, d]);
            tch::no_grad(|| b.copy_(&(Tensor::rand([n, d], (b.kind(), b.device())) * (2.0 * stdv) - stdv)));
            b
        };
        let (bank_s, bank_t) = (bank("bank_s"), bank("bank_t"));
        let mut z = s.vars.zeros_no_train("z", &[2]);
        let _ = tch::no_grad(|| z.fill_(-1.0));
        self.state = Some(State { embed_s, embed_t, bank_s, bank_t, z, z_checked: false, negatives });
        Ok(())
    }
    fn terms(&mut self, x: &LossInput) -> Vec<(String, Tensor)> {
        let p = &self.p;
        let st = self.state.as_mut().expect("the trainer calls setup before the first step");
        let (kind, device) = (st.bank_s.kind(), st.bank_s.device());
        let samples = st.bank_s.size()[0];
        let vs = embed(&st.embed_s, &x.student_tap(TAP).to_kind(kind));
        let vt = embed(&st.embed_t, &x.teacher_tap(TAP).to_kind(kind).detach());

        let indices = x.indices.expect("CRD reads each sample's index in the training set (LossInput::indices)");
        let idx = Vec::<i64>::try_from(indices.to_kind(Kind::Int64).view(-1)).expect("indices are int64");
        let n = idx.len();
        let negatives = match x.negatives {
            Some(t) => {
                assert!(t.dim() == 2 && t.size()[0] == n as i64, "negatives must be (N, K), got {:?}", t.size());
                Vec::<i64>::try_from(t.to_kind(Kind::Int64).view(-1)).expect("negatives are int64")
            }
            None => st
                .negatives
                .as_ref()
                .expect("CRD draws negatives from every sample's label; where they are unknown, give the negatives")
                .draw(&idx, p.nce_k, x.draw_seed),
        };
        let k = negatives.len() / n.max(1);
        // Each anchor's row of contrast indices: its own bank row (the positive) first, as the
        // authors' `contrast_idx`.
        let mut contrast = Vec::with_capacity(n * (k + 1));
        for (i, &a) in idx.iter().enumerate() {
            contrast.push(a);
            contrast.extend_from_slice(&negatives[i * k..(i + 1) * k]);
        }
        // Drawn on the host, uploaded without waiting for the device (pinned, asynchronous).
        let contrast = upload(&Tensor::from_slice(&contrast).view([n as i64, k as i64 + 1]), device);

        // The banks are updated in place below, after this step's scores have read them; the
        // scores read a snapshot, which autograd keeps for the backward pass.
        let (bank_s, bank_t) = tch::no_grad(|| (st.bank_s.copy(), st.bank_t.copy()));
        let score = |v: &Tensor, bank: &Tensor| (v.matmul(&bank.tr()).gather(1, &contrast, false) / p.nce_t).exp();
        let out_s = score(&vs, &bank_t);
        let out_t = score(&vt, &bank_s);

        if !st.z_checked {
            // Z is estimated once, from the first batch, as the authors do; a restored run reads
            // the value it saved.
            let z = Vec::<f64>::try_from(st.z.to_kind(Kind::Double)).expect("z is a vector");
            tch::no_grad(|| {
                for (i, out) in [&out_s, &out_t].into_iter().enumerate() {
                    if z[i] < 0.0 {
                        st.z.get(i as i64).copy_(&(out.mean(kind) * samples as f64));
                    }
                }
            });
            st.z_checked = true;
        }
        let z = st.z.detach();
        let loss_s = nce(&(out_s / z.get(0)), samples);
        let loss_t = nce(&(out_t / z.get(1)), samples);

        tch::no_grad(|| {
            let idx = upload(&indices.to_kind(Kind::Int64), device);
            for (bank, v) in [(&st.bank_s, &vs), (&st.bank_t, &vt)] {
                let rows = bank.index_select(0, &idx) * p.nce_m + v.detach() * (1.0 - p.nce_m);
                let rows = &rows / rows.square().sum_dim_intlist(1, true, kind).sqrt();
                let _ = bank.shallow_clone().index_copy_(0, &idx, &rows);
            }
        });
        vec![
            ("ce".into(), p.ce_weight * cross_entropy(x.student, x.labels)),
            ("crd".into(), p.feat_weight * (loss_s + loss_t)),
        ]
    }
    fn end_epoch(&mut self) -> Option<serde_json::Value> {
        // The normalisation constants, once estimated: what the scores are divided by.
        let st = self.state.as_ref()?;
        let z = Vec::<f64>::try_from(st.z.to_kind(Kind::Double)).ok()?;
        Some(serde_json::json!({ "crd": { "z_student": z[0], "z_teacher": z[1] } }))
    }
}

/// The authors' `Embed`: linear, then division by the L2 norm (no ε, as theirs).
fn embed(head: &nn::Linear, x: &Tensor) -> Tensor {
    let z = x.flatten(1, -1).apply(head);
    let norm = z.square().sum_dim_intlist(1, true, z.kind()).sqrt();
    z / norm
}

/// The authors' `ContrastLoss` on (N, K+1) normalised scores, the positive first.
fn nce(p: &Tensor, samples: i64) -> Tensor {
    let (b, k1) = p.size2().expect("scores are (N, K+1)");
    let mpn = (k1 - 1) as f64 / samples as f64;
    let pos = p.select(1, 0);
    let neg = p.narrow(1, 1, k1 - 1);
    let d1 = (&pos / (&pos + (mpn + EPS))).log();
    let d0 = ((neg + (mpn + EPS)).reciprocal() * mpn).log();
    -(d1.sum(p.kind()) + d0.sum(p.kind())) / b as f64
}

/// Draws each anchor's negatives from the other classes' samples (the authors' "exact" mode).
pub struct Negatives {
    labels: Vec<u16>,
    /// Samples per class, by label.
    count: Vec<usize>,
}

impl Negatives {
    pub fn new(labels: &[u16], samples: usize) -> Result<Negatives> {
        if labels.len() != samples {
            bail!("CRD's bank has {samples} rows but {} labels were given", labels.len());
        }
        let mut count = vec![0usize; labels.iter().map(|&c| c as usize + 1).max().unwrap_or(0)];
        for &c in labels {
            count[c as usize] += 1;
        }
        if count.contains(&samples) {
            bail!("CRD draws its negatives from the other classes, and the training set has a single class");
        }
        Ok(Negatives { labels: labels.to_vec(), count })
    }

    /// K negatives for each anchor (row-major, N × K) from the generator seeded with `seed`:
    /// uniform over the samples of other classes, distinct within a row where there are at least
    /// K of them, with replacement otherwise.
    pub fn draw(&self, anchors: &[i64], k: usize, seed: u64) -> Vec<i64> {
        let n = self.labels.len();
        let mut rng = crate::util::rng::Rng::new(seed);
        // stamp[r] == row + 1: r was drawn for this row (no clearing between rows).
        let mut stamp = vec![0u32; n];
        let mut out = Vec::with_capacity(anchors.len() * k);
        for (row, &a) in anchors.iter().enumerate() {
            let c = self.labels[a as usize];
            let distinct = k <= n - self.count[c as usize];
            let mark = row as u32 + 1;
            let mut got = 0;
            while got < k {
                let r = rng.below(n as u64) as usize;
                if self.labels[r] == c || (distinct && stamp[r] == mark) {
                    continue;
                }
                stamp[r] = mark;
                out.push(r as i64);
                got += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(samples: usize, labels: Option<&[u16]>, p: Params) -> (nn::VarStore, Box<dyn Method>) {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mut m = p.build().unwrap();
        let s = [(TAP.to_string(), vec![6])];
        let t = [(TAP.to_string(), vec![4])];
        m.setup(&Setup { vars: vs.root(), student: &s, teacher: &t, classes: 3, samples, labels }).unwrap();
        (vs, m)
    }

    /// The memory the doc comment states: both banks of Fashion-MNIST's 60,000 training images,
    /// measured from the VarStore setup creates (the heads are small beside them).
    #[test]
    fn the_banks_of_fashion_mnist_take_61_mb() {
        let labels: Vec<u16> = (0..60_000).map(|i| (i % 10) as u16).collect();
        let (vs, _) = setup(60_000, Some(&labels), Params::default());
        let vars = vs.variables();
        let bytes = |k: &str| vars[k].numel() * vars[k].kind().elt_size_in_bytes();
        assert_eq!(bytes("bank_s") + bytes("bank_t"), 61_440_000);
        assert!(
            !vars["bank_s"].requires_grad() && !vars["z"].requires_grad() && vars["embed_s.weight"].requires_grad()
        );
        // Initialised uniform in ±1/√(128/3), and Z unset.
        let b = &vars["bank_t"];
        let lim = 1.0 / (128f64 / 3.0).sqrt();
        // (float32: the largest value may round a few ulps past the float64 bound.)
        let max = b.abs().max().double_value(&[]);
        assert!(max <= lim * (1.0 + 1e-6) && max > 0.99 * lim, "{max} vs {lim}");
        assert_eq!(Vec::<f64>::try_from(vars["z"].to_kind(Kind::Double)).unwrap(), [-1.0, -1.0]);
    }

    /// Negatives come from other classes, distinct within a row when there are enough, with
    /// replacement when K exceeds them; the same seed draws the same, another seed not.
    #[test]
    fn negatives_are_other_classes_and_follow_the_seed() {
        let labels: Vec<u16> = (0..40).map(|i| (i % 4) as u16).collect();
        let neg = Negatives::new(&labels, 40).unwrap();
        let anchors = [0i64, 5, 10, 39];
        let a = neg.draw(&anchors, 30, 7);
        assert_eq!(a, neg.draw(&anchors, 30, 7));
        assert_ne!(a, neg.draw(&anchors, 30, 8));
        for (row, &anchor) in a.chunks(30).zip(&anchors) {
            let mut seen = row.to_vec();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), 30, "30 distinct of the 30 other-class samples");
            assert!(row.iter().all(|&r| labels[r as usize] != labels[anchor as usize]));
        }
        // K = 100 > 30 other-class samples: drawn with replacement, still never the same class.
        let b = neg.draw(&anchors, 100, 7);
        assert_eq!(b.len(), 400);
        assert!(b.chunks(100).zip(&anchors).all(|(r, &a)| r.iter().all(|&x| labels[x as usize] != labels[a as usize])));
        assert!(Negatives::new(&[2, 2, 2], 3).is_err(), "one class: no negatives");
    }

    /// The banks' momentum update by hand, Z estimated once (then kept), and the terms finite.
    #[test]
    fn the_banks_move_by_momentum_and_z_is_estimated_once() {
        let labels = [0u16, 1, 2, 0, 1, 2, 0, 1];
        let p = Params { nce_k: 4, ..Default::default() };
        let (mut vs, mut m) = setup(8, Some(&labels), p);
        vs.double();
        let vars = vs.variables();
        let fs = Tensor::randn([3, 6], (Kind::Double, tch::Device::Cpu));
        let ft = Tensor::randn([3, 4], (Kind::Double, tch::Device::Cpu));
        let (mut ts, mut tt) = (crate::models::Taps::only(&[TAP]), crate::models::Taps::only(&[TAP]));
        ts.put(TAP, &fs);
        tt.put(TAP, &ft);
        let logits = Tensor::zeros([3, 3], (Kind::Double, tch::Device::Cpu));
        let y = Tensor::from_slice(&[1i64, 0, 2]);
        let idx = Tensor::from_slice(&[4i64, 0, 5]);
        let step = |m: &mut Box<dyn Method>, seed: u64| {
            let x = LossInput {
                student_taps: Some(&ts),
                teacher_taps: Some(&tt),
                indices: Some(&idx),
                draw_seed: seed,
                ..LossInput::logits(&logits, &logits, &y, 1.0)
            };
            m.terms(&x)
        };
        let before = vars["bank_s"].copy();
        let terms = step(&mut m, 1);
        assert!(terms.iter().all(|(_, v)| v.double_value(&[]).is_finite()), "{terms:?}");
        let z1 = Vec::<f64>::try_from(&vars["z"]).unwrap();
        assert!(z1.iter().all(|&z| z > 0.0), "{z1:?}");
        // Row 4 of the student's bank: normalise(0.5·old + 0.5·v), v = the embedded student row 0.
        let w = &vars["embed_s.weight"];
        let e = fs.get(0).matmul(&w.tr()) + &vars["embed_s.bias"];
        let v = &e / e.norm();
        let r = before.get(4) * 0.5 + v * 0.5;
        let want = &r / r.norm();
        let diff = (vars["bank_s"].get(4) - want).abs().max().double_value(&[]);
        assert!(diff < 1e-12, "{diff}");
        assert_eq!(Vec::<f64>::try_from(vars["bank_s"].get(1)).unwrap(), Vec::<f64>::try_from(before.get(1)).unwrap());
        // A second step keeps Z.
        step(&mut m, 2);
        assert_eq!(Vec::<f64>::try_from(&vars["z"]).unwrap(), z1);
    }
}
