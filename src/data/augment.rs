//! Augmentation as an explicit *view* of an image: a crop offset inside the zero-padded image and
//! a horizontal flip. Naming views lets the loader record which view each sample got, and lets a
//! teacher-logit cache enumerate every view of every image (e.g. 9×9 offsets × 2 flips = 162 views
//! of a 32×32 image with padding 4).
use super::{Profile, Shape};
use crate::util::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    /// Crop offset in the padded image, 0..=2·pad; (pad, pad) is the centred, unshifted image.
    pub dy: u16,
    pub dx: u16,
    pub flip: bool,
}

/// The augmentation of one run: which views exist and how pixels become network inputs.
#[derive(Clone, Debug)]
pub struct Augment {
    pub pad: usize,
    pub flip: bool,
    /// Per channel, the normalised value of each of the 256 pixel levels.
    lut: Vec<[f32; 256]>,
    /// Per channel, the normalised value of a padding pixel (raw 0, as torchvision pads).
    zero: Vec<f32>,
}

impl Augment {
    /// `enabled = false` keeps normalisation but uses only the identity view (evaluation).
    pub fn new(profile: &Profile, enabled: bool) -> Self {
        let lut = profile
            .mean
            .iter()
            .zip(&profile.std)
            .map(|(&m, &s)| std::array::from_fn(|v| (v as f32 / 255.0 - m) / s))
            .collect::<Vec<[f32; 256]>>();
        let zero = lut.iter().map(|l| l[0]).collect();
        let (pad, flip) = if enabled { (profile.pad, profile.flip) } else { (0, false) };
        Augment { pad, flip, lut, zero }
    }

    /// Number of distinct views: (2·pad + 1)² offsets × (2 if flipping).
    pub(crate) fn view_count(&self) -> usize {
        let side = 2 * self.pad + 1;
        side * side * if self.flip { 2 } else { 1 }
    }

    /// The view with index `id` (0..view_count): offsets row-major, flip as the fastest digit.
    pub fn view(&self, id: usize) -> View {
        let flips = if self.flip { 2 } else { 1 };
        let side = 2 * self.pad + 1;
        let (pos, f) = (id / flips, id % flips);
        View { dy: (pos / side) as u16, dx: (pos % side) as u16, flip: f == 1 }
    }

    /// Index of a view (inverse of `view`).
    pub(crate) fn view_id(&self, v: View) -> usize {
        let flips = if self.flip { 2 } else { 1 };
        ((v.dy as usize) * (2 * self.pad + 1) + v.dx as usize) * flips + v.flip as usize
    }

    /// The unshifted, unflipped view.
    pub fn identity(&self) -> View {
        View { dy: self.pad as u16, dx: self.pad as u16, flip: false }
    }

    /// A uniformly random view.
    pub fn random_view(&self, rng: &mut Rng) -> View {
        self.view(rng.below(self.view_count() as u64) as usize)
    }

    /// Writes the normalised view of `img` (C×H×W bytes) into `out` (C×H×W floats).
    pub fn apply(&self, img: &[u8], shape: Shape, v: View, out: &mut [f32]) {
        let (h, w, pad) = (shape.h as isize, shape.w as isize, self.pad as isize);
        let (oy, ox) = (v.dy as isize - pad, v.dx as isize - pad);
        let plane = (h * w) as usize;
        for c in 0..shape.c {
            let (lut, zero) = (&self.lut[c], self.zero[c]);
            let src = &img[c * plane..(c + 1) * plane];
            let dst = &mut out[c * plane..(c + 1) * plane];
            for y in 0..h {
                let sy = y + oy;
                let row = &mut dst[(y * w) as usize..((y + 1) * w) as usize];
                if sy < 0 || sy >= h {
                    row.fill(zero);
                    continue;
                }
                let srow = &src[(sy * w) as usize..((sy + 1) * w) as usize];
                for (x, o) in row.iter_mut().enumerate() {
                    // A flip mirrors the cropped window: output column x reads window column w-1-x.
                    let wx = if v.flip { w - 1 - x as isize } else { x as isize };
                    let sx = wx + ox;
                    *o = if sx < 0 || sx >= w { zero } else { lut[srow[sx as usize] as usize] };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(pad: usize, flip: bool) -> Profile {
        Profile { mean: vec![0.0], std: vec![1.0 / 255.0], pad, flip }
    }

    #[test]
    fn views_enumerate_and_invert() {
        let a = Augment::new(&profile(4, true), true);
        assert_eq!(a.view_count(), 162);
        assert_eq!(Augment::new(&profile(2, true), true).view_count(), 50);
        assert_eq!(Augment::new(&profile(2, false), true).view_count(), 25);
        for id in 0..a.view_count() {
            assert_eq!(a.view_id(a.view(id)), id);
        }
        assert_eq!(a.view(a.view_id(a.identity())), a.identity());
    }

    #[test]
    fn crop_and_flip_move_pixels_as_expected() {
        // 1×3×3 image with values 1..9; mean 0 and std 1/255 make outputs equal raw pixel values.
        let img: Vec<u8> = (1..=9).collect();
        let shape = Shape { c: 1, h: 3, w: 3 };
        let a = Augment::new(&profile(1, true), true);
        let mut raw = vec![0f32; 9];
        let mut out = vec![0f32; 9];
        let mut apply = |v: View, out: &mut Vec<f32>| {
            a.apply(&img, shape, v, &mut raw);
            *out = raw.iter().map(|x| x.round()).collect();
        };
        apply(a.identity(), &mut out);
        assert_eq!(out, vec![1., 2., 3., 4., 5., 6., 7., 8., 9.]);
        // Offset (0,0): the window starts one pixel up and left, so a zero row and column enter.
        apply(View { dy: 0, dx: 0, flip: false }, &mut out);
        assert_eq!(out, vec![0., 0., 0., 0., 1., 2., 0., 4., 5.]);
        apply(View { dy: 1, dx: 1, flip: true }, &mut out);
        assert_eq!(out, vec![3., 2., 1., 6., 5., 4., 9., 8., 7.]);
        apply(View { dy: 2, dx: 2, flip: true }, &mut out);
        assert_eq!(out, vec![0., 6., 5., 0., 9., 8., 0., 0., 0.]);
    }

    #[test]
    fn normalises_per_channel() {
        let p = Profile { mean: vec![0.5, 0.0], std: vec![0.5, 2.0], pad: 0, flip: false };
        let a = Augment::new(&p, false);
        let mut out = vec![0f32; 2];
        a.apply(&[255, 255], Shape { c: 2, h: 1, w: 1 }, a.identity(), &mut out);
        assert!((out[0] - 1.0).abs() < 1e-6 && (out[1] - 0.5).abs() < 1e-6, "{out:?}");
    }
}
