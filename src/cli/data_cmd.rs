//! `kdlab data fetch` and `kdlab data info`.
use crate::data::{fetch, imagefolder, source};
use crate::util::fmt;
use anyhow::Result;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub(crate) enum DataCommand {
    /// Download a data set (sha256-checked) into kdlab's data directory, or import local files.
    Fetch {
        /// fashion-mnist, mnist, cifar10, cifar100 or cifar100-coarse.
        name: String,
        /// Import the files from this directory instead of downloading them.
        #[arg(long)]
        from: Option<PathBuf>,
        /// Data directory (default: $KDLAB_DATA, else ~/.cache/kdlab/data).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Write a data set as an image folder (train/<class>/*.png|jpg, val/<class>/…), class folders
    /// named NN-<class name> so that their sorted order is the data set's class order.
    Export {
        /// A catalogue name, fashion-mnist-mini, or a directory.
        name: String,
        /// The folder to create (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// Training images per class (0: all), the first of each class.
        #[arg(long, default_value_t = 0)]
        train_per_class: usize,
        /// Test images per class (0: all), written to val/.
        #[arg(long, default_value_t = 0)]
        test_per_class: usize,
        #[arg(long, value_enum, default_value = "png")]
        format: imagefolder::ImageFormat,
    },
    /// Sizes, shape, classes and per-class counts of a data set (a name or any directory).
    Info {
        /// A catalogue name, fashion-mnist-mini, a directory with IDX or CIFAR binary files, or an
        /// image folder (DIR or DIR:size=HxW,channels=1|3,…).
        name: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: DataCommand) -> Result<()> {
    match cmd {
        DataCommand::Fetch { name, from, dir } => {
            let root = dir.unwrap_or_else(source::data_dir);
            let at = fetch::fetch(&name, from.as_deref(), &root)?;
            println!("{name} is ready in {}", at.display());
            Ok(())
        }
        DataCommand::Info { name, json } => info(&name, json),
        DataCommand::Export { name, out, train_per_class, test_per_class, format } => {
            let ds = source::load(&name)?;
            let n = imagefolder::export(&ds, &out, train_per_class, test_per_class, format)?;
            println!(
                "wrote {n} images of {} to {} (train/, val/; {} class folders)",
                ds.name,
                out.display(),
                ds.classes
            );
            Ok(())
        }
    }
}

fn info(name: &str, json: bool) -> Result<()> {
    let ds = source::load(name)?;
    let train = ds.train.class_counts(ds.classes);
    let test = ds.test.class_counts(ds.classes);
    if json {
        let classes: Vec<serde_json::Value> = (0..ds.classes)
            .map(|c| serde_json::json!({"class": c, "name": ds.class_names[c], "train": train[c], "test": test[c]}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"name": ds.name, "source": ds.source, "shape": ds.shape().to_string(),
                "classes": ds.classes, "train": ds.train.len(), "test": ds.test.len(),
                "per_class": classes, "fingerprint": ds.fingerprint(), "profile": ds.profile})
        );
        return Ok(());
    }
    println!("{} ({})", ds.name, ds.source);
    println!(
        "  {} train + {} test images of {} (C x H x W), {} classes; normalise mean {:?} std {:?}; crops pad {} px, flips {}",
        ds.train.len(),
        ds.test.len(),
        ds.shape(),
        ds.classes,
        ds.profile.mean,
        ds.profile.std,
        ds.profile.pad,
        if ds.profile.flip { "on" } else { "off" }
    );
    let rows: Vec<Vec<String>> = (0..ds.classes)
        .map(|c| vec![format!("{c} {}", ds.class_names[c]), train[c].to_string(), test[c].to_string()])
        .collect();
    print!("{}", fmt::table(&["class", "train", "test"], &rows));
    println!("fingerprint {}", ds.fingerprint());
    Ok(())
}
