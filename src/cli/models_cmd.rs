//! `kdlab models`: the zoo with parameter counts for a given input.
use crate::data::Shape;
use crate::models::{self, FAMILIES};
use crate::util::fmt;
use anyhow::Result;
use clap::Args;

#[derive(Args)]
pub(crate) struct ModelsArgs {
    /// Input shape CxHxW.
    #[arg(long, default_value = "3x32x32")]
    pub input: Shape,
    #[arg(long, default_value_t = 100)]
    pub classes: usize,
    /// Count these models instead of the listed examples.
    pub names: Vec<String>,
    /// List the taps (named intermediate outputs, for feature methods) of MODEL with their shapes.
    #[arg(long, value_name = "MODEL")]
    pub taps: Option<String>,
}

pub fn run(a: ModelsArgs) -> Result<()> {
    if let Some(name) = &a.taps {
        return list_taps(name, a.input, a.classes);
    }
    let mut rows = vec![];
    let names: Vec<(String, String)> = if a.names.is_empty() {
        FAMILIES.iter().flat_map(|f| f.examples.iter().map(move |n| (n.to_string(), f.name.to_string()))).collect()
    } else {
        a.names.iter().map(|n| Ok((n.clone(), family_of(n)?))).collect::<Result<_>>()?
    };
    for (name, family) in names {
        let n = models::param_count(&name, a.input, a.classes)?;
        rows.push(vec![name, family, fmt::count(n), n.to_string()]);
    }
    println!("models for {} inputs, {} classes", a.input, a.classes);
    print!("{}", fmt::table(&["model", "family", "params", "exact"], &rows));
    println!("\nname patterns:");
    for f in FAMILIES {
        println!("  {:<15} {:<52} {}", f.name, f.pattern, f.about);
    }
    Ok(())
}

/// `kdlab models --taps MODEL`: each tap's name and shape for one input (batch left out).
fn list_taps(name: &str, input: Shape, classes: usize) -> Result<()> {
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let net = models::build(&vs.root(), name, input, classes)?;
    let rows: Vec<Vec<String>> = models::taps::shapes(net.as_ref(), input, tch::Device::Cpu)
        .into_iter()
        .map(|(n, s)| vec![n, s.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("x")])
        .collect();
    println!("taps of {name} for {input} inputs, {classes} classes");
    print!("{}", fmt::table(&["tap", "shape"], &rows));
    Ok(())
}

fn family_of(name: &str) -> Result<String> {
    Ok(match models::parse(name)? {
        models::Arch::ResNet { .. } => "CIFAR ResNet",
        models::Arch::ImageNetResNet { .. } => "ImageNet ResNet",
        models::Arch::Wrn { .. } => "Wide ResNet",
        models::Arch::Vgg { .. } => "VGG-BN",
        models::Arch::MobileNetV2 { .. } => "MobileNetV2",
        models::Arch::Cnn { .. } => "plain CNN",
        models::Arch::Mlp { .. } => "MLP",
    }
    .to_string())
}
