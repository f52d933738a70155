//! The data sets kdlab knows by name: their files, official download locations, checksums, class
//! names and the conventional normalisation and augmentation for each.
use super::cifar::Variant;
use super::Profile;

/// How a data set's files are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Four IDX files: train images/labels, test images/labels.
    Idx,
    Cifar(Variant),
}

/// One downloadable file with the sha256 values it is known to have. Some files circulate in more
/// than one gzip encoding of the same contents (e.g. Fashion-MNIST from its S3 bucket and from
/// Debian's `dataset-fashion-mnist`), so several checksums may be accepted.
#[derive(Clone, Debug)]
pub struct RemoteFile {
    pub name: &'static str,
    pub urls: Vec<&'static str>,
    pub sha256: Vec<&'static str>,
}

fn remote(name: &'static str, urls: &[&'static str], sha256: &[&'static str]) -> RemoteFile {
    RemoteFile { name, urls: urls.to_vec(), sha256: sha256.to_vec() }
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub name: &'static str,
    pub title: &'static str,
    pub format: Format,
    pub files: Vec<RemoteFile>,
    /// For CIFAR: the downloaded archive is unpacked into the files the reader needs.
    pub archive: bool,
    pub class_names: Vec<String>,
    pub profile: Profile,
    /// Other places where a system package installs the files (read in place, never copied).
    pub system_dirs: &'static [&'static str],
    /// sha256 of the unpacked training-label file: recognises the data set in any directory,
    /// whatever the files are called or however they are compressed.
    pub train_labels_sha256: Option<&'static str>,
}

/// The standard IDX file names, in the order train images, train labels, test images, test labels.
pub const IDX_FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];

pub(crate) const FASHION_CLASSES: [&str; 10] =
    ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

const CIFAR10_CLASSES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

const CIFAR100_FINE: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

const CIFAR100_COARSE: [&str; 20] = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
];

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// The catalogue. Checksums: Fashion-MNIST from its S3 bucket (as TensorFlow Datasets records
/// them) and from Debian's package; MNIST and CIFAR as TensorFlow Datasets records them.
pub fn all() -> Vec<Entry> {
    let fashion = |name: &'static str, s3: &'static str, debian: &'static str, url: &'static str| {
        remote(name, &[url], &[s3, debian])
    };
    vec![
        Entry {
            name: "fashion-mnist",
            title: "Fashion-MNIST (Zalando), 60,000 + 10,000 grey 28x28 images of clothing, 10 classes",
            format: Format::Idx,
            files: vec![
                fashion(
                    "train-images-idx3-ubyte.gz",
                    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                    "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
                    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz",
                ),
                fashion(
                    "train-labels-idx1-ubyte.gz",
                    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                    "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
                    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-labels-idx1-ubyte.gz",
                ),
                fashion(
                    "t10k-images-idx3-ubyte.gz",
                    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                    "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
                    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-images-idx3-ubyte.gz",
                ),
                fashion(
                    "t10k-labels-idx1-ubyte.gz",
                    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                    "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
                    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-labels-idx1-ubyte.gz",
                ),
            ],
            archive: false,
            class_names: names(&FASHION_CLASSES),
            profile: Profile { mean: vec![0.2860], std: vec![0.3530], pad: 2, flip: true },
            system_dirs: &["/usr/share/datasets/fashion-mnist"],
            train_labels_sha256: Some("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        },
        Entry {
            name: "mnist",
            title: "MNIST handwritten digits, 60,000 + 10,000 grey 28x28 images, 10 classes",
            format: Format::Idx,
            files: vec![
                remote(
                    "train-images-idx3-ubyte.gz",
                    &[
                        "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
                        "https://storage.googleapis.com/cvdf-datasets/mnist/train-images-idx3-ubyte.gz",
                    ],
                    &["440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"],
                ),
                remote(
                    "train-labels-idx1-ubyte.gz",
                    &[
                        "https://ossci-datasets.s3.amazonaws.com/mnist/train-labels-idx1-ubyte.gz",
                        "https://storage.googleapis.com/cvdf-datasets/mnist/train-labels-idx1-ubyte.gz",
                    ],
                    &["3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"],
                ),
                remote(
                    "t10k-images-idx3-ubyte.gz",
                    &[
                        "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz",
                        "https://storage.googleapis.com/cvdf-datasets/mnist/t10k-images-idx3-ubyte.gz",
                    ],
                    &["8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"],
                ),
                remote(
                    "t10k-labels-idx1-ubyte.gz",
                    &[
                        "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz",
                        "https://storage.googleapis.com/cvdf-datasets/mnist/t10k-labels-idx1-ubyte.gz",
                    ],
                    &["f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"],
                ),
            ],
            archive: false,
            class_names: (0..10).map(|d| d.to_string()).collect(),
            profile: Profile { mean: vec![0.1307], std: vec![0.3081], pad: 2, flip: false },
            system_dirs: &[],
            train_labels_sha256: None,
        },
        Entry {
            name: "cifar10",
            title: "CIFAR-10, 50,000 + 10,000 colour 32x32 images, 10 classes",
            format: Format::Cifar(Variant::Cifar10),
            files: vec![remote(
                "cifar-10-binary.tar.gz",
                &["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"],
                &["c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"],
            )],
            archive: true,
            class_names: names(&CIFAR10_CLASSES),
            profile: Profile {
                mean: vec![0.4914, 0.4822, 0.4465],
                std: vec![0.2470, 0.2435, 0.2616],
                pad: 4,
                flip: true,
            },
            system_dirs: &[],
            train_labels_sha256: None,
        },
        Entry {
            name: "cifar100",
            title: "CIFAR-100 (fine labels), 50,000 + 10,000 colour 32x32 images, 100 classes",
            format: Format::Cifar(Variant::Cifar100Fine),
            files: vec![cifar100_archive()],
            archive: true,
            class_names: names(&CIFAR100_FINE),
            profile: cifar100_profile(),
            system_dirs: &[],
            train_labels_sha256: None,
        },
        Entry {
            name: "cifar100-coarse",
            title: "CIFAR-100 with its 20 coarse super-class labels",
            format: Format::Cifar(Variant::Cifar100Coarse),
            files: vec![cifar100_archive()],
            archive: true,
            class_names: names(&CIFAR100_COARSE),
            profile: cifar100_profile(),
            system_dirs: &[],
            train_labels_sha256: None,
        },
    ]
}

fn cifar100_archive() -> RemoteFile {
    remote(
        "cifar-100-binary.tar.gz",
        &["https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz"],
        &["58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec"],
    )
}

fn cifar100_profile() -> Profile {
    Profile { mean: vec![0.5071, 0.4865, 0.4409], std: vec![0.2673, 0.2564, 0.2762], pad: 4, flip: true }
}

/// The entry called `name`, if any.
pub fn find(name: &str) -> Option<Entry> {
    all().into_iter().find(|e| e.name == name)
}

/// The catalogue's names, for help texts and errors.
pub(crate) fn names_list() -> String {
    let mut v: Vec<&str> = all().iter().map(|e| e.name).collect();
    v.push(super::embedded::NAME);
    v.join(", ")
}

/// Default augmentation for data sets that are not in the catalogue: the usual crop padding
/// (2 px up to 28×28, an eighth of the side above: 4 px at 32) and no flips (the safe choice when
/// the content is unknown, e.g. digits).
pub(crate) fn generic_profile(split: &super::Split) -> Profile {
    let (mean, std) = split.channel_stats();
    let h = split.shape.h;
    Profile { mean, std, pad: if h <= 28 { 2.min(h / 4).max(1) } else { h / 8 }, flip: false }
}
