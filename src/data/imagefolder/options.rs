//! The options of an image folder (`DIR:size=HxW,channels=1|3,…`): parsed once, where the data
//! spec enters, into `Options`.
use super::*;

pub(crate) const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

pub(super) const CACHE_MAGIC: &[u8; 8] = b"KDLABIMG";
pub(super) const CACHE_VERSION: u32 = 1;

/// The options that may follow the directory in a data spec (`DIR:key=value,…`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Resize every image to (height, width); None: all images must have the first one's size.
    pub size: Option<(usize, usize)>,
    /// 1 or 3; None: 3 when any image is in colour, else 1.
    pub channels: Option<usize>,
    /// Leave undecodable images out (with a warning naming each) instead of failing.
    pub skip_bad: bool,
    /// Random horizontal flips (default off, as for every directory kdlab does not know).
    pub flip: Option<bool>,
    /// Zero padding of the random crops (default: 2 px up to 28×28, an eighth of the side above).
    pub pad: Option<usize>,
    /// Read and write the decoded-image cache.
    pub cache: bool,
    /// How images become network inputs: one fixed size with discrete views, or the ImageNet recipe.
    pub transform: Transform,
    /// The ImageNet recipe's evaluation resize (shorter side), default size · 256/224.
    pub resize: Option<usize>,
    /// The ImageNet recipe's pixel store (see [`crate::data::stream`]).
    pub store: Store,
    /// The most pixels (width × height) an image may declare (`max_pixels=`, default
    /// [`MAX_PIXELS`]); a larger one is refused, as undecodable, before its pixels are allocated.
    pub max_pixels: u64,
}

/// `transform=`: how images become network inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transform {
    /// Every image resized to `size` once, decoded into memory (and the cache); training views
    /// are the profile's pad-and-crop offsets and flips.
    Fixed,
    /// torchvision's ImageNet recipe: random-resized crop and flip in training, resize and centre
    /// crop in evaluation, from images of any size, decoded per batch or held in memory.
    Imagenet,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            size: None,
            channels: None,
            skip_bad: false,
            flip: None,
            pad: None,
            cache: true,
            transform: Transform::Fixed,
            resize: None,
            store: Store::Auto,
            max_pixels: MAX_PIXELS,
        }
    }
}

pub(super) const KEYS: [&str; 10] =
    ["size", "channels", "bad", "flip", "pad", "cache", "transform", "resize", "store", "max_pixels"];

/// The most pixels an image may declare by default: 8192 × 8192 (ImageNet's largest images are
/// far smaller). A header is a claim, not a promise: a 1 KB PNG can declare 100,000 × 100,000
/// pixels (30 GB decoded), so the claim is checked before anything is allocated. Decoding one
/// such image takes up to 8 bytes per pixel (16-bit RGBA) on each decoding thread.
pub const MAX_PIXELS: u64 = 1 << 26;

/// The ImageNet recipe's default output side.
pub(crate) const IMAGENET_SIZE: usize = 224;

impl Options {
    /// Parses `key=value,key=value` (the part of a data spec after the directory's colon).
    pub fn parse(text: &str) -> Result<Options> {
        let mut o = Options::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((key, value)) = item.split_once('=') else {
                bail!("image-folder option '{item}' needs a value (key=value; keys: {})", KEYS.join(", "))
            };
            let (key, value) = (key.trim(), value.trim());
            let bad = |what: &str| anyhow::anyhow!("image-folder option {key}={value}: {what}");
            match key {
                "size" => {
                    let parts: Vec<usize> = value.split('x').map(|p| p.parse().unwrap_or(0)).collect();
                    o.size = match parts[..] {
                        [s] if s > 0 => Some((s, s)),
                        [h, w] if h > 0 && w > 0 => Some((h, w)),
                        _ => return Err(bad("expected a side (32) or HxW (32x48) in pixels")),
                    }
                }
                "channels" => {
                    o.channels = match value {
                        "1" => Some(1),
                        "3" => Some(3),
                        _ => return Err(bad("expected 1 (grey) or 3 (colour)")),
                    }
                }
                "bad" => {
                    o.skip_bad = match value {
                        "fail" => false,
                        "skip" => true,
                        _ => return Err(bad("expected fail (the default) or skip")),
                    }
                }
                "flip" => o.flip = Some(parse_bool(value).ok_or_else(|| bad("expected true or false"))?),
                "cache" => o.cache = parse_bool(value).ok_or_else(|| bad("expected on or off"))?,
                "pad" => o.pad = Some(value.parse().map_err(|_| bad("expected a number of pixels"))?),
                "transform" => {
                    o.transform = match value {
                        "fixed" => Transform::Fixed,
                        "imagenet" => Transform::Imagenet,
                        _ => return Err(bad("expected fixed (one size, pad-and-crop views; the default) or imagenet (random-resized crops for training, resize and centre crop for evaluation)")),
                    }
                }
                "resize" => match value.parse::<usize>() {
                    Ok(r) if r > 0 => o.resize = Some(r),
                    _ => return Err(bad("expected the evaluation resize's shorter side in pixels (256 for size=224)")),
                },
                "store" => {
                    o.store = match value {
                        "auto" => Store::Auto,
                        "memory" => Store::Memory,
                        "stream" => Store::Stream,
                        _ => return Err(bad("expected auto (the default), memory (decode every image once and keep it) or stream (decode each batch from the files)")),
                    }
                }
                "max_pixels" => {
                    let n = match value.split_once('x') {
                        Some((w, h)) => w.parse::<u64>().ok().zip(h.parse::<u64>().ok()).and_then(|(w, h)| w.checked_mul(h)),
                        None => value.parse::<u64>().ok(),
                    };
                    o.max_pixels = n.filter(|&n| n > 0).ok_or_else(|| {
                        bad("expected a number of pixels (67108864) or WxH (8192x8192): the largest image to decode")
                    })?;
                }
                other => {
                    let keys: Vec<String> = KEYS.iter().map(|k| k.to_string()).collect();
                    let hint = crate::util::text::did_you_mean(other, &keys);
                    bail!("unknown image-folder option '{other}'{hint}; options: {}", KEYS.join(", "))
                }
            }
        }
        o.check_transform()?;
        Ok(o)
    }

    /// Refuses keys that the chosen transform does not use, and settles the recipe's sizes.
    fn check_transform(&mut self) -> Result<()> {
        match self.transform {
            Transform::Fixed => {
                if self.resize.is_some() || self.store != Store::Auto {
                    bail!("image-folder options resize= and store= are for transform=imagenet (the fixed transform decodes every image at size= into memory)");
                }
            }
            Transform::Imagenet => {
                if self.pad.is_some() {
                    bail!("image-folder option pad= is the fixed transform's padding; transform=imagenet crops at random instead (drop pad=)");
                }
                let size = match self.size {
                    None => IMAGENET_SIZE,
                    Some((h, w)) if h == w => h,
                    Some((h, w)) => bail!("image-folder option size={h}x{w}: transform=imagenet makes square inputs; give one side (size=224)"),
                };
                let resize = self.resize.unwrap_or_else(|| (size as f64 * 256.0 / 224.0).round() as usize);
                if resize < size {
                    bail!("image-folder option resize={resize} is smaller than size={size}: evaluation resizes the shorter side to resize= and then crops size x size from the centre");
                }
                self.size = Some((size, size));
                self.resize = Some(resize);
            }
        }
        Ok(())
    }

    /// The ImageNet recipe these options give (transform=imagenet).
    pub fn recipe(&self) -> Recipe {
        let size = self.size.map_or(IMAGENET_SIZE, |(h, _)| h);
        Recipe {
            size,
            resize: self.resize.unwrap_or(size),
            flip: self.flip.unwrap_or(true),
            range: crate::data::transform::CropRange::default(),
        }
    }

    /// The options that change the decoded pixels, as they enter the cache key.
    pub(super) fn content_key(&self) -> String {
        format!("size={:?};channels={:?};skip_bad={}", self.size, self.channels, self.skip_bad)
    }
}

pub(super) fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" | "on" | "yes" | "1" => Some(true),
        "false" | "off" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// Whether `dir` is laid out as an image folder (it has a `train/` folder).
pub(crate) fn is_image_folder(dir: &Path) -> bool {
    dir.join("train").is_dir()
}

/// Splits a data spec into an image folder and its options: `DIR` when DIR is an image folder,
/// `DIR:options` when DIR is a directory. None when the spec names no image folder.
pub(crate) fn parse_spec(spec: &str) -> Result<Option<(PathBuf, Options)>> {
    let whole = Path::new(spec);
    if whole.is_dir() {
        return Ok(is_image_folder(whole).then(|| (whole.to_path_buf(), Options::default())));
    }
    let Some((dir, opts)) = spec.rsplit_once(':') else { return Ok(None) };
    let dir = Path::new(dir);
    if !dir.is_dir() {
        return Ok(None);
    }
    if !is_image_folder(dir) {
        bail!("{}: options after ':' are for image folders (DIR/train/<class>/…), and this directory has no train/ folder", dir.display());
    }
    Ok(Some((dir.to_path_buf(), Options::parse(opts)?)))
}
