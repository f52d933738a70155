//! The model zoo: one file per family, and a registry that turns a name such as `resnet20`,
//! `wrn_40_2` or `cnn_w4` into a network for any input shape and class count.
pub mod cnn;
pub mod imagenet_resnet;
pub mod layers;
pub mod mlp;
pub mod mobilenetv2;
pub mod resnet;
pub mod taps;
pub mod vgg;
pub mod wrn;

use crate::data::Shape;
use anyhow::{bail, Result};
pub use taps::{Network, Taps};
use tch::nn;

/// A network: `forward_t(x, train)` maps (N, C, H, W) inputs to (N, classes) logits, and
/// `forward_taps` records its intermediate outputs too (see `taps`).
pub(crate) type Net = Box<dyn Network>;

/// A family of architectures and how its names are spelled.
pub(crate) struct Family {
    pub name: &'static str,
    pub pattern: &'static str,
    pub about: &'static str,
    /// Members listed by `kdlab models`.
    pub examples: &'static [&'static str],
}

pub(crate) const FAMILIES: &[Family] = &[
    Family {
        name: "CIFAR ResNet",
        pattern: "resnet<D> (D = 6n+2, not 50 or 152), resnet<D>x4",
        about: "basic blocks, widths 16/32/64 (x4: 32/64/128/256 after a 32-wide stem)",
        examples: &[
            "resnet8",
            "resnet14",
            "resnet20",
            "resnet32",
            "resnet44",
            "resnet56",
            "resnet110",
            "resnet8x4",
            "resnet32x4",
        ],
    },
    Family {
        name: "ImageNet ResNet",
        pattern: "resnet18, resnet34, resnet50, resnet101, resnet152",
        about: "torchvision's: 7x7 stem + max-pool, basic (18, 34) or bottleneck blocks, its parameter names",
        examples: &["resnet18", "resnet34", "resnet50"],
    },
    Family {
        name: "Wide ResNet",
        pattern: "wrn_<D>_<W> (D = 6n+4)",
        about: "pre-activation blocks, widths 16W/32W/64W",
        examples: &[
            "wrn_16_1", "wrn_16_2", "wrn_28_1", "wrn_28_2", "wrn_28_4", "wrn_28_8", "wrn_40_1", "wrn_40_2", "wrn_40_4",
        ],
    },
    Family {
        name: "VGG-BN",
        pattern: "vgg8, vgg11, vgg13",
        about: "conv-BN-ReLU stages, global pooling",
        examples: &["vgg8", "vgg11", "vgg13"],
    },
    Family {
        name: "MobileNetV2",
        pattern: "mobilenetv2, mobilenetv2_x<A>_<B> (width A.B)",
        about: "RepDistiller's CIFAR MobileNetV2 (stride-2 stem, ReLU); x0_5 is the light KD student",
        examples: &["mobilenetv2_x0_5", "mobilenetv2"],
    },
    Family {
        name: "plain CNN",
        pattern: "cnn_w<M>",
        about: "two conv-BN-ReLU-pool blocks of 8M and 16M channels, linear head",
        examples: &["cnn_w1", "cnn_w2", "cnn_w4", "cnn_w8", "cnn_w16"],
    },
    Family {
        name: "MLP",
        pattern: "mlp_<width>x<depth>",
        about: "depth hidden ReLU layers",
        examples: &["mlp_256x1", "mlp_512x2", "mlp_1024x2"],
    },
];

/// A parsed architecture name.
#[derive(Clone, Debug, PartialEq)]
pub enum Arch {
    ResNet { depth: usize, wide4: bool },
    ImageNetResNet { depth: usize },
    Wrn { depth: usize, width: i64 },
    Vgg { depth: usize },
    MobileNetV2 { width: f64 },
    Cnn { m: i64 },
    Mlp { width: i64, depth: usize },
}

impl Arch {
    /// The ladder this architecture is a rung of: the report compares teachers' capacity within a
    /// family (ResNet depth, WRN width, CNN width), where size is the only thing that changes.
    /// ResNets with 4× channels are their own family: depth and width both differ from the plain ones.
    pub fn family(&self) -> &'static str {
        match self {
            Arch::ResNet { wide4: false, .. } => "resnet",
            Arch::ResNet { wide4: true, .. } => "resnet x4",
            Arch::ImageNetResNet { .. } => "imagenet resnet",
            Arch::Wrn { .. } => "wrn",
            Arch::Vgg { .. } => "vgg",
            Arch::MobileNetV2 { .. } => "mobilenetv2",
            Arch::Cnn { .. } => "cnn",
            Arch::Mlp { .. } => "mlp",
        }
    }
}

/// The family of a teacher known by name: its architecture's, or [`IMPORTED`] for a name the zoo
/// does not know (an imported or TorchScript teacher, or an existing run known by its directory).
pub fn family(name: &str) -> &'static str {
    parse(name).map_or(IMPORTED, |a| a.family())
}

/// The family of teachers that are not the zoo's architectures.
pub(crate) const IMPORTED: &str = "imported";

fn num<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses an architecture name, explaining what is wrong with a bad one.
pub fn parse(name: &str) -> Result<Arch> {
    let arch = if let Some(rest) = name.strip_prefix("resnet") {
        let (d, wide4) = match rest.strip_suffix("x4") {
            Some(d) => (d, true),
            None => (rest, false),
        };
        let depth: usize = num(d).ok_or_else(|| unknown(name))?;
        // torchvision's depths name the ImageNet ResNets; 50 and 152 are also 6n+2, so those two
        // CIFAR depths cannot be named (18, 34 and 101 are not 6n+2: no other name is taken).
        if !wide4 && imagenet_resnet::config(depth).is_some() {
            return Ok(Arch::ImageNetResNet { depth });
        }
        if depth < 8 || (depth - 2) % 6 != 0 {
            bail!(
                "model '{name}': a CIFAR ResNet's depth is 6n+2 with n ≥ 1 (8, 14, 20, 32, 44, 56, 110, …); \
                 the ImageNet ResNets are resnet18, resnet34, resnet50, resnet101 and resnet152"
            );
        }
        Arch::ResNet { depth, wide4 }
    } else if let Some(rest) = name.strip_prefix("wrn_") {
        let (d, w) = rest.split_once('_').ok_or_else(|| unknown(name))?;
        let (depth, width): (usize, i64) = (num(d).ok_or_else(|| unknown(name))?, num(w).ok_or_else(|| unknown(name))?);
        if depth < 10 || (depth - 4) % 6 != 0 || width < 1 {
            bail!("model '{name}': a Wide ResNet's depth is 6n+4 with n ≥ 1 (10, 16, 22, 28, 40, …) and its width ≥ 1");
        }
        Arch::Wrn { depth, width }
    } else if let Some(d) = name.strip_prefix("vgg") {
        let depth: usize = num(d).ok_or_else(|| unknown(name))?;
        if vgg::config(depth).is_none() {
            bail!("model '{name}': VGG depths are 8, 11 and 13");
        }
        Arch::Vgg { depth }
    } else if let Some(rest) = name.strip_prefix("mobilenetv2") {
        let width = match rest {
            "" => 1.0,
            r => {
                let (a, b) = r.strip_prefix("_x").and_then(|w| w.split_once('_')).ok_or_else(|| unknown(name))?;
                let w: f64 = format!("{a}.{b}").parse().map_err(|_| unknown(name))?;
                if w.is_nan() || w <= 0.0 || num::<u32>(a).is_none() || num::<u32>(b).is_none() {
                    return Err(unknown(name));
                }
                w
            }
        };
        Arch::MobileNetV2 { width }
    } else if let Some(m) = name.strip_prefix("cnn_w") {
        Arch::Cnn { m: num(m).filter(|&m: &i64| m >= 1).ok_or_else(|| unknown(name))? }
    } else if let Some(rest) = name.strip_prefix("mlp_") {
        let (w, d) = rest.split_once('x').ok_or_else(|| unknown(name))?;
        let width: i64 = num(w).filter(|&w: &i64| w >= 1).ok_or_else(|| unknown(name))?;
        Arch::Mlp { width, depth: num(d).ok_or_else(|| unknown(name))? }
    } else {
        return Err(unknown(name));
    };
    Ok(arch)
}

fn unknown(name: &str) -> anyhow::Error {
    let patterns: Vec<&str> = FAMILIES.iter().map(|f| f.pattern).collect();
    anyhow::anyhow!("unknown model '{name}': names look like {} (`kdlab models` lists them)", patterns.join("; "))
}

/// Builds the network `name` under `p` for inputs of `input` and `classes` outputs.
pub fn build(p: &nn::Path, name: &str, input: Shape, classes: usize) -> Result<Net> {
    let (cin, classes) = (input.c as i64, classes as i64);
    if classes < 1 {
        bail!("model '{name}': needs at least one class");
    }
    let net: Net = match parse(name)? {
        Arch::ResNet { depth, wide4: false } => {
            Box::new(resnet::CifarResNet::new(p, depth, &[16, 16, 32, 64], cin, classes))
        }
        Arch::ResNet { depth, wide4: true } => {
            Box::new(resnet::CifarResNet::new(p, depth, &[32, 64, 128, 256], cin, classes))
        }
        Arch::ImageNetResNet { depth } => Box::new(imagenet_resnet::ImageNetResNet::new(p, depth, cin, classes)),
        Arch::Wrn { depth, width } => Box::new(wrn::WideResNet::new(p, depth, width, cin, classes)),
        Arch::Vgg { depth } => Box::new(vgg::Vgg::new(p, &vgg::config(depth).unwrap(), cin, classes)),
        Arch::MobileNetV2 { width } => Box::new(mobilenetv2::MobileNetV2::new(p, width, cin, classes)),
        Arch::Cnn { m } => {
            if input.h < 4 || input.w < 4 {
                bail!("model '{name}': inputs must be at least 4x4 (two 2x2 poolings), got {input}");
            }
            Box::new(cnn::PlainCnn::new(p, m, cin, input.h as i64, input.w as i64, classes))
        }
        Arch::Mlp { width, depth } => Box::new(mlp::Mlp::new(p, width, depth, input.numel() as i64, classes)),
    };
    Ok(net)
}

/// Number of trainable parameters of `name` for the given input and class count.
pub fn param_count(name: &str, input: Shape, classes: usize) -> Result<u64> {
    let _guard = tch::no_grad_guard();
    let vs = nn::VarStore::new(tch::Device::Cpu);
    build(&vs.root(), name, input, classes)?;
    Ok(vs.trainable_variables().iter().map(|t| t.numel() as u64).sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    const CIFAR: Shape = Shape { c: 3, h: 32, w: 32 };
    const FMNIST: Shape = Shape { c: 1, h: 28, w: 28 };

    fn close(name: &str, classes: usize, expected: f64, tol: f64) {
        let n = param_count(name, CIFAR, classes).unwrap() as f64;
        assert!((n - expected).abs() <= tol * expected, "{name}: {n} parameters, expected about {expected}");
    }

    #[test]
    fn a_ladder_is_one_family_and_families_differ() {
        // Depth, width and cardinality ladders each stay in one family; a zoo name never falls
        // through to "imported", and an unknown name always does.
        for (ladder, fam) in [
            (&["resnet8", "resnet56", "resnet110"][..], "resnet"),
            (&["resnet8x4", "resnet32x4"], "resnet x4"),
            (&["resnet18", "resnet50"], "imagenet resnet"),
            (&["wrn_28_1", "wrn_28_8", "wrn_40_2"], "wrn"),
            (&["cnn_w1", "cnn_w8"], "cnn"),
            (&["mlp_32x1", "mlp_512x2"], "mlp"),
            (&["vgg8", "vgg13"], "vgg"),
            (&["mobilenetv2_x0_5", "mobilenetv2"], "mobilenetv2"),
        ] {
            for m in ladder {
                assert_eq!(family(m), fam, "{m}");
            }
        }
        for f in FAMILIES {
            for e in f.examples {
                assert_ne!(family(e), IMPORTED, "{e}");
            }
        }
        assert_eq!(family("my_torchscript_teacher"), IMPORTED);
    }

    #[test]
    fn parameter_counts_match_the_literature() {
        // Published sizes of these CIFAR-100 models (CRD / mdistiller tables).
        close("resnet20", 100, 0.28e6, 0.03);
        close("resnet110", 100, 1.74e6, 0.03);
        close("wrn_40_2", 100, 2.26e6, 0.03);
        close("resnet56", 100, 0.86e6, 0.03);
        close("resnet32x4", 100, 7.43e6, 0.03);
        close("wrn_16_2", 100, 0.70e6, 0.03);
        close("vgg13", 100, 9.46e6, 0.03);
        close("mobilenetv2_x0_5", 100, 0.81e6, 0.03);
    }

    #[test]
    fn imagenet_resnets_have_torchvisions_parameter_counts() {
        // sum(p.numel() for p in torchvision.models.resnetD().parameters()), torchvision 0.26.0.
        let imagenet = Shape { c: 3, h: 224, w: 224 };
        for (name, torchvision) in [("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032)] {
            assert_eq!(param_count(name, imagenet, 1000).unwrap(), torchvision, "{name}");
        }
    }

    #[test]
    fn exact_counts_of_small_models() {
        // cnn_w1 on 1x28x28: conv 1→8 (72+8), BN 16, conv 8→16 (1152+16), BN 32, fc 16·7·7→10 (7840+10).
        assert_eq!(param_count("cnn_w1", FMNIST, 10).unwrap(), 72 + 8 + 16 + 1152 + 16 + 32 + 7840 + 10);
        // mlp_256x1 on 1x28x28: 784·256+256 + 256·10+10.
        assert_eq!(param_count("mlp_256x1", FMNIST, 10).unwrap(), 784 * 256 + 256 + 2570);
    }

    #[test]
    fn every_listed_model_runs_on_both_input_shapes() {
        let _g = tch::no_grad_guard();
        for fam in FAMILIES {
            for &name in fam
                .examples
                .iter()
                .filter(|n| !["wrn_28_8", "wrn_40_4", "resnet110", "resnet32x4", "resnet34"].contains(n))
            {
                for (shape, classes) in [(FMNIST, 10usize), (CIFAR, 100)] {
                    let vs = nn::VarStore::new(tch::Device::Cpu);
                    let net = build(&vs.root(), name, shape, classes).unwrap();
                    let x = Tensor::randn(
                        [2, shape.c as i64, shape.h as i64, shape.w as i64],
                        (Kind::Float, tch::Device::Cpu),
                    );
                    for train in [true, false] {
                        let y = net.forward_t(&x, train);
                        assert_eq!(y.size(), vec![2, classes as i64], "{name} on {shape}");
                    }
                }
            }
        }
    }

    #[test]
    fn batchnorm_starts_at_one() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        build(&vs.root(), "resnet8", CIFAR, 10).unwrap();
        let vars = vs.variables();
        let w = &vars["bn1.weight"];
        assert_eq!(w.min().double_value(&[]), 1.0);
        assert_eq!(w.max().double_value(&[]), 1.0);
    }

    #[test]
    fn bad_names_explain_themselves() {
        let e = |n: &str| format!("{:#}", parse(n).unwrap_err());
        assert!(e("resnet21").contains("6n+2"));
        assert!(e("resnet21").contains("resnet18, resnet34"));
        // torchvision's depths are the ImageNet ResNets, 50 and 152 included (both also 6n+2).
        for d in [18, 34, 50, 101, 152] {
            assert_eq!(parse(&format!("resnet{d}")).unwrap(), Arch::ImageNetResNet { depth: d });
        }
        assert_eq!(parse("resnet56").unwrap(), Arch::ResNet { depth: 56, wide4: false });
        assert_eq!(parse("resnet50x4").unwrap(), Arch::ResNet { depth: 50, wide4: true });
        assert!(e("wrn_40").contains("unknown model"));
        assert!(e("vgg16").contains("8, 11 and 13"));
        assert!(e("transformer").contains("kdlab models"));
        assert_eq!(parse("mobilenetv2_x0_5").unwrap(), Arch::MobileNetV2 { width: 0.5 });
        assert_eq!(parse("mlp_512x2").unwrap(), Arch::Mlp { width: 512, depth: 2 });
    }
}
