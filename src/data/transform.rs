//! The ImageNet recipe's transforms, as torchvision does them, on decoded images of any size:
//!
//! - **training**: `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))` (torchvision's
//!   ten tries at a random box, then its centre-crop fallback) and `RandomHorizontalFlip()`;
//! - **evaluation**: `Resize(resize)` (shorter side to `resize`, default 256 for 224) and
//!   `CenterCrop(size)`.
//!
//! Both resample with antialiased bilinear filtering (PIL's `BILINEAR`, which torchvision uses for
//! PIL images, and `torch.nn.functional.interpolate(mode="bilinear", antialias=True)`), written
//! here so that the crop window is read in place; the result stays in floating point (PIL rounds
//! to 8 bits, a difference of at most half a level). Every random choice of a sample comes from
//! [`sample_rng`]: the run's seed, the epoch and the sample's index, so a resumed run and any
//! number of loader threads give the same crops.
use crate::util::rng::{self, Rng};

/// Where a training sample was cut from its source image, in source pixels, and whether it was
/// mirrored: what a teacher cache needs to replay the view (FKD).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CropBox {
    pub y: u32,
    pub x: u32,
    pub h: u32,
    pub w: u32,
    pub flip: bool,
}

/// `RandomResizedCrop`'s ranges: the box's share of the image's area and its width/height ratio.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CropRange {
    pub scale: (f64, f64),
    pub ratio: (f64, f64),
}

impl Default for CropRange {
    fn default() -> Self {
        CropRange { scale: (0.08, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0) }
    }
}

/// The random stream of one sample in one epoch (independent of batch and thread).
pub(crate) fn sample_rng(seed: u64, epoch: u64, sample: u64) -> Rng {
    Rng::new(rng::mix(&[seed, rng::stream::CROP, epoch, sample]))
}

/// Python's `round` (half to even), which torchvision's box arithmetic uses.
fn round_py(v: f64) -> i64 {
    v.round_ties_even() as i64
}

/// `RandomResizedCrop.get_params` for an image of `height`×`width`: up to ten tries at a box of
/// random area and log-uniform aspect ratio that fits, then the centre crop of the whole image
/// clamped to the ratio range. Returns (y, x, h, w).
pub(crate) fn random_resized_box(
    height: usize,
    width: usize,
    range: CropRange,
    rng: &mut Rng,
) -> (usize, usize, usize, usize) {
    let area = (height * width) as f64;
    let (lr0, lr1) = (range.ratio.0.ln(), range.ratio.1.ln());
    for _ in 0..10 {
        let target = area * (range.scale.0 + (range.scale.1 - range.scale.0) * rng.unit());
        let aspect = (lr0 + (lr1 - lr0) * rng.unit()).exp();
        let w = round_py((target * aspect).sqrt());
        let h = round_py((target / aspect).sqrt());
        if 0 < w && w as usize <= width && 0 < h && h as usize <= height {
            let (h, w) = (h as usize, w as usize);
            let y = rng.below((height - h + 1) as u64) as usize;
            let x = rng.below((width - w + 1) as u64) as usize;
            return (y, x, h, w);
        }
    }
    centre_fallback(height, width, range)
}

/// torchvision's fallback: the whole image, narrowed to the nearest allowed ratio, centred.
pub(crate) fn centre_fallback(height: usize, width: usize, range: CropRange) -> (usize, usize, usize, usize) {
    let in_ratio = width as f64 / height as f64;
    let (lo, hi) = (range.ratio.0.min(range.ratio.1), range.ratio.0.max(range.ratio.1));
    let (h, w) = if in_ratio < lo {
        ((round_py(width as f64 / lo) as usize).clamp(1, height), width)
    } else if in_ratio > hi {
        (height, (round_py(height as f64 * hi) as usize).clamp(1, width))
    } else {
        (height, width)
    };
    ((height - h) / 2, (width - w) / 2, h, w)
}

/// `Resize(short)` with an integer: the shorter side becomes `short`, the longer one
/// `int(short · long / short_side)` (truncated, as torchvision). Returns (h, w).
pub(crate) fn resize_shorter(height: usize, width: usize, short: usize) -> (usize, usize) {
    if width <= height {
        (((short as f64 * height as f64 / width as f64) as usize).max(1), short)
    } else {
        (short, ((short as f64 * width as f64 / height as f64) as usize).max(1))
    }
}

/// `CenterCrop(size)`'s top-left corner in an image of `height`×`width`: `round((H − size) / 2)`.
pub(crate) fn centre_crop_origin(height: usize, width: usize, size: usize) -> (usize, usize) {
    let at = |side: usize| round_py((side as f64 - size as f64) / 2.0).max(0) as usize;
    (at(height), at(width))
}

/// A decoded image: interleaved 8-bit pixels (H×W×C, C = 1 or 3).
#[derive(Clone, Debug)]
pub struct Decoded {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub pixels: Vec<u8>,
}

/// One axis of an antialiased bilinear resampling: for each output position, the first input
/// index and the normalised weights (PIL's and PyTorch's `antialias=True` arithmetic).
struct Taps {
    start: Vec<usize>,
    weights: Vec<Vec<f32>>,
}

impl Taps {
    /// Resampling `in_len` inputs to `out_len` outputs; only outputs `first..first + count`.
    fn new(in_len: usize, out_len: usize, first: usize, count: usize) -> Taps {
        let scale = in_len as f64 / out_len as f64;
        let filter_scale = scale.max(1.0);
        let support = filter_scale; // the triangle's support is 1 at scale 1
        let mut start = Vec::with_capacity(count);
        let mut weights = Vec::with_capacity(count);
        for i in first..first + count {
            let centre = (i as f64 + 0.5) * scale;
            let lo = ((centre - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((centre + support + 0.5).floor() as usize).min(in_len);
            let mut w: Vec<f64> = (lo..hi)
                .map(|j| {
                    let t = (j as f64 - centre + 0.5) / filter_scale;
                    (1.0 - t.abs()).max(0.0)
                })
                .collect();
            let sum: f64 = w.iter().sum();
            if sum > 0.0 {
                w.iter_mut().for_each(|v| *v /= sum);
            }
            start.push(lo);
            weights.push(w.into_iter().map(|v| v as f32).collect());
        }
        Taps { start, weights }
    }
}

/// What to cut and how to scale it: the window `(y, x, h, w)` of the source resized to
/// `full` = (H, W), of which the `out` × `out` block at `origin` is kept (a centre crop), mirrored
/// when `flip`.
#[derive(Clone, Copy, Debug)]
pub struct Resample {
    pub window: (usize, usize, usize, usize),
    pub full: (usize, usize),
    pub origin: (usize, usize),
    pub out: (usize, usize),
    pub flip: bool,
}

/// Resamples `img` as `r` says into `out` (C×out.h×out.w floats), mapping each value v in 0..=255
/// to `v · gain[c] + bias[c]` (the normalisation).
pub fn resample(img: &Decoded, r: &Resample, gain: &[f32], bias: &[f32], out: &mut [f32]) {
    let (y0, x0, wh, ww) = r.window;
    let (oh, ow) = r.out;
    let c = img.c;
    let cols = Taps::new(ww, r.full.1, r.origin.1, ow);
    let rows = Taps::new(wh, r.full.0, r.origin.0, oh);
    // Only the source rows some output row reads.
    let row_lo = rows.start.first().copied().unwrap_or(0);
    let row_hi = rows.start.iter().zip(&rows.weights).map(|(s, w)| s + w.len()).max().unwrap_or(0);
    // Horizontal pass: rows row_lo..row_hi of the window, each to `ow` columns (interleaved).
    let mut tmp = vec![0f32; (row_hi - row_lo) * ow * c];
    for (k, sy) in (row_lo..row_hi).enumerate() {
        let src = &img.pixels[((y0 + sy) * img.w + x0) * c..((y0 + sy) * img.w + x0 + ww) * c];
        let dst = &mut tmp[k * ow * c..(k + 1) * ow * c];
        for (ox, (s, w)) in cols.start.iter().zip(&cols.weights).enumerate() {
            for ch in 0..c {
                let mut acc = 0f32;
                for (t, &wt) in w.iter().enumerate() {
                    acc += wt * src[(s + t) * c + ch] as f32;
                }
                dst[ox * c + ch] = acc;
            }
        }
    }
    // Vertical pass, normalising and mirroring on the way out (channel-planar).
    let plane = oh * ow;
    let mut acc = vec![0f32; ow * c];
    for (oy, (s, w)) in rows.start.iter().zip(&rows.weights).enumerate() {
        acc.fill(0.0);
        for (t, &wt) in w.iter().enumerate() {
            let row = &tmp[(s + t - row_lo) * ow * c..(s + t - row_lo + 1) * ow * c];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += wt * v;
            }
        }
        for ox in 0..ow {
            let tx = if r.flip { ow - 1 - ox } else { ox };
            for ch in 0..c {
                out[ch * plane + oy * ow + tx] = acc[ox * c + ch] * gain[ch] + bias[ch];
            }
        }
    }
}

/// The ImageNet recipe at one output size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Recipe {
    /// Output side (224).
    pub size: usize,
    /// Evaluation: the shorter side is resized to this before the centre crop (256).
    pub resize: usize,
    /// Random horizontal flips in training.
    pub flip: bool,
    pub range: CropRange,
}

impl Recipe {
    /// The training view of an image of `h`×`w`: a random-resized-crop box and a coin flip.
    pub(crate) fn train_box(&self, h: usize, w: usize, rng: &mut Rng) -> CropBox {
        let (y, x, bh, bw) = random_resized_box(h, w, self.range, rng);
        let flip = self.flip && rng.unit() < 0.5;
        CropBox { y: y as u32, x: x as u32, h: bh as u32, w: bw as u32, flip }
    }

    /// The resampling of a training box: the box scaled to size×size.
    pub(crate) fn train_resample(&self, b: CropBox) -> Resample {
        Resample {
            window: (b.y as usize, b.x as usize, b.h as usize, b.w as usize),
            full: (self.size, self.size),
            origin: (0, 0),
            out: (self.size, self.size),
            flip: b.flip,
        }
    }

    /// The evaluation resampling of an image of `h`×`w`: the whole image resized (shorter side
    /// `resize`), then its centre size×size.
    pub(crate) fn eval_resample(&self, h: usize, w: usize) -> Resample {
        let full = resize_shorter(h, w, self.resize);
        Resample {
            window: (0, 0, h, w),
            full,
            origin: centre_crop_origin(full.0, full.1, self.size),
            out: (self.size, self.size),
            flip: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_boxes_fit_and_keep_area_and_ratio_in_range() {
        let range = CropRange::default();
        for &(h, w) in &[(375usize, 500usize), (500, 375), (224, 224), (32, 1000), (7, 9)] {
            let fallback = centre_fallback(h, w, range);
            let mut fallbacks = 0;
            for s in 0..4000u64 {
                let (y, x, bh, bw) = random_resized_box(h, w, range, &mut sample_rng(1, 0, s));
                assert!(bh >= 1 && bw >= 1 && y + bh <= h && x + bw <= w, "{h}x{w}: box {y},{x},{bh},{bw}");
                if (y, x, bh, bw) == fallback {
                    fallbacks += 1;
                    continue;
                }
                // Each side is rounded to whole pixels: area and ratio move by up to half a pixel a side.
                let share = (bh * bw) as f64 / (h * w) as f64;
                let ratio = bw as f64 / bh as f64;
                let slack_area = (bh + bw + 1) as f64 / (h * w) as f64;
                let slack_ratio = 1.2 / (bh.max(2) - 1) as f64;
                assert!(share >= 0.08 - slack_area && share <= 1.0, "{h}x{w}: share {share}");
                assert!(ratio >= 0.75 - slack_ratio && ratio <= 4.0 / 3.0 + slack_ratio, "{h}x{w}: ratio {ratio}");
            }
            if h * w >= 50_000 {
                assert!(fallbacks < 40, "{h}x{w}: {fallbacks} fallbacks in 4000 draws");
            } else if h == 32 {
                // 8% of 32×1000 needs a box taller than 32 pixels at any allowed ratio: never fits.
                assert_eq!(fallbacks, 4000);
            }
        }
    }

    #[test]
    fn where_every_box_fits_area_is_uniform_and_log_ratio_symmetric() {
        // On a square image, boxes of at most half its area fit at any ratio in [3/4, 4/3], so the
        // first try always succeeds: the area share is uniform on [0.08, 0.5] (mean 0.29, standard
        // deviation 0.121) and ln(ratio) uniform on ±ln(4/3) (mean 0), up to whole-pixel rounding.
        let range = CropRange { scale: (0.08, 0.5), ratio: (0.75, 4.0 / 3.0) };
        let n = 4000;
        let (mut area, mut log_ratio, mut below_mid) = (0.0, 0.0, 0);
        for s in 0..n as u64 {
            let (_, _, bh, bw) = random_resized_box(1000, 1000, range, &mut sample_rng(2, 5, s));
            let share = (bh * bw) as f64 / 1e6;
            area += share;
            log_ratio += (bw as f64 / bh as f64).ln();
            below_mid += usize::from(share < 0.29);
        }
        let (area, log_ratio) = (area / n as f64, log_ratio / n as f64);
        // Four standard errors: 4 · 0.121 / √4000 = 0.0077; ln ratio: 4 · 0.166 / √4000 = 0.0105.
        assert!((area - 0.29).abs() < 0.0077, "mean area share {area}");
        assert!(log_ratio.abs() < 0.0105, "mean ln ratio {log_ratio}");
        assert!((1840..2160).contains(&below_mid), "{below_mid} of {n} below the median");
    }

    #[test]
    fn the_fallback_is_torchvisions_centre_crop() {
        let r = CropRange::default();
        // Too wide (ratio 1000/32 > 4/3): full height, width round(32 · 4/3) = 43, centred.
        assert_eq!(centre_fallback(32, 1000, r), (0, (1000 - 43) / 2, 32, 43));
        // Too tall: full width, height round(30 / 0.75) = 40.
        assert_eq!(centre_fallback(100, 30, r), (30, 0, 40, 30));
        // In range: the whole image.
        assert_eq!(centre_fallback(375, 500, r), (0, 0, 375, 500));
        // A scale range no box can meet forces the fallback on every draw.
        let never = CropRange { scale: (2.0, 3.0), ratio: r.ratio };
        let mut rng = sample_rng(0, 0, 0);
        assert_eq!(random_resized_box(10, 100, never, &mut rng), (0, (100 - 13) / 2, 10, 13));
    }

    #[test]
    fn resize_and_centre_crop_arithmetic_by_hand() {
        // 500 wide × 375 high, Resize(256): height 256, width int(256 · 500/375) = int(341.33) = 341.
        assert_eq!(resize_shorter(375, 500, 256), (256, 341));
        assert_eq!(resize_shorter(500, 375, 256), (341, 256));
        assert_eq!(resize_shorter(100, 100, 256), (256, 256));
        // CenterCrop(224) of 256×341: top round(32/2) = 16, left round(117/2) = round(58.5) = 58 (half to even).
        assert_eq!(centre_crop_origin(256, 341, 224), (16, 58));
        assert_eq!(centre_crop_origin(256, 343, 224), (16, 60)); // round(59.5) = 60
        let recipe = Recipe { size: 224, resize: 256, flip: true, range: CropRange::default() };
        let r = recipe.eval_resample(375, 500);
        assert_eq!((r.full, r.origin, r.out), ((256, 341), (16, 58), (224, 224)));
    }

    #[test]
    fn the_same_sample_epoch_and_seed_give_the_same_box() {
        let recipe = Recipe { size: 224, resize: 256, flip: true, range: CropRange::default() };
        let b = |seed, epoch, s| recipe.train_box(375, 500, &mut sample_rng(seed, epoch, s));
        assert_eq!(b(3, 1, 7), b(3, 1, 7));
        let differ = (0..20u64).filter(|&s| b(3, 1, s) != b(3, 2, s)).count();
        assert!(differ >= 19, "another epoch, other boxes ({differ} of 20 differ)");
        let flips = (0..2000u64).filter(|&s| b(0, 0, s).flip).count();
        assert!((900..1100).contains(&flips), "{flips} flips in 2000");
    }

    fn image(h: usize, w: usize, c: usize) -> Decoded {
        let pixels = (0..h * w * c).map(|i| ((i * 37 + i / 7) % 256) as u8).collect();
        Decoded { h, w, c, pixels }
    }

    #[test]
    fn an_identity_resample_copies_and_a_flip_mirrors() {
        let img = image(5, 6, 3);
        let r = Resample { window: (1, 2, 3, 4), full: (3, 4), origin: (0, 0), out: (3, 4), flip: false };
        let mut out = vec![0f32; 3 * 12];
        resample(&img, &r, &[1.0; 3], &[0.0; 3], &mut out);
        for ch in 0..3 {
            for y in 0..3 {
                for x in 0..4 {
                    let want = img.pixels[((1 + y) * 6 + 2 + x) * 3 + ch] as f32;
                    assert!((out[ch * 12 + y * 4 + x] - want).abs() < 1e-4);
                }
            }
        }
        let mut flipped = vec![0f32; 3 * 12];
        resample(&img, &Resample { flip: true, ..r }, &[1.0; 3], &[0.0; 3], &mut flipped);
        for ch in 0..3 {
            for y in 0..3 {
                for x in 0..4 {
                    assert_eq!(flipped[ch * 12 + y * 4 + x], out[ch * 12 + y * 4 + 3 - x]);
                }
            }
        }
    }

    #[test]
    fn halving_averages_pixel_pairs_and_a_uniform_image_stays_uniform() {
        // Downscaling by exactly 2: the triangle of support 2 centred between two pixels gives
        // weights 1/8, 3/8, 3/8, 1/8 (clamped at the edges and renormalised).
        let img = Decoded { h: 1, w: 8, c: 1, pixels: vec![0, 80, 160, 240, 0, 80, 160, 240] };
        let r = Resample { window: (0, 0, 1, 8), full: (1, 4), origin: (0, 0), out: (1, 4), flip: false };
        let mut out = vec![0f32; 4];
        resample(&img, &r, &[1.0], &[0.0], &mut out);
        // Output 1 is centred at 3.0 − 0.5 = 2.5 between pixels 2 and 3: 80/8 + 3·160/8 + 3·240/8 + 0/8.
        assert!((out[1] - (80.0 + 480.0 + 720.0 + 0.0) / 8.0).abs() < 1e-3, "{out:?}");
        // Output 0: pixels 0, 1, 2 with weights 3/8, 3/8, 1/8, renormalised by 7/8.
        assert!((out[0] - (3.0 * 80.0 + 160.0) / 7.0).abs() < 1e-3, "{out:?}");
        let flat = Decoded { h: 37, w: 53, c: 3, pixels: vec![200; 37 * 53 * 3] };
        let r = Resample { window: (3, 5, 30, 41), full: (17, 17), origin: (0, 0), out: (17, 17), flip: true };
        let mut out = vec![0f32; 3 * 17 * 17];
        resample(&flat, &r, &[0.5, 1.0, 2.0], &[1.0, 0.0, -1.0], &mut out);
        for (ch, want) in [101.0f32, 200.0, 399.0].iter().enumerate() {
            assert!(out[ch * 289..(ch + 1) * 289].iter().all(|v| (v - want).abs() < 1e-3));
        }
    }
}
