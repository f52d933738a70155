//! Decoding one image, within the pixel limit, into the data set's shape: what the image-folder
//! reader and the streamed (ImageNet-recipe) store share.
use super::Shape;
use anyhow::{bail, Result};
use std::path::Path;

/// What an image file's header says.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Header {
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) colour: bool,
}

pub(crate) fn read_header(path: &Path, max_pixels: u64) -> Result<Header> {
    let mut reader = image::ImageReader::open(path)?.with_guessed_format()?;
    // The size is checked by kdlab, for an error that says what the limit is and how to raise it;
    // the decoder's own allocation limit is set once the size has passed.
    reader.no_limits();
    let mut dec = reader.into_decoder()?;
    let (w, h) = image::ImageDecoder::dimensions(&dec);
    check_pixels(w, h, max_pixels)?;
    image::ImageDecoder::set_limits(&mut dec, decoder_limits(max_pixels))?;
    let colour = image::ImageDecoder::color_type(&dec).has_color();
    Ok(Header { h: h as usize, w: w as usize, colour })
}

/// What the decoder may allocate: the pixels of the largest image allowed at 8 bytes each, and
/// never less than the image crate's own default (512 MiB).
pub(crate) fn decoder_limits(max_pixels: u64) -> image::Limits {
    let mut l = image::Limits::default();
    l.max_alloc = Some(max_pixels.saturating_mul(8).max(512 << 20));
    l
}

pub(crate) fn check_pixels(w: u32, h: u32, max_pixels: u64) -> Result<()> {
    if w as u64 * h as u64 > max_pixels {
        bail!(
            "the image declares {w}x{h} pixels, more than the {max_pixels} kdlab decodes (max_pixels={max_pixels}); \
             if the image is real, raise the limit with DIR:max_pixels=WxH"
        );
    }
    Ok(())
}

/// A JPEG whose last end-of-image marker (FF D9) does not follow its last start-of-scan (FF DA)
/// was cut short. The decoder would fill the missing rows with grey and say nothing, so a
/// truncated download would train as a different image; it is refused instead. (Entropy-coded
/// data never holds FF D9 or FF DA, and an embedded thumbnail ends before the main image's scans
/// start, so the test is exact; bytes after the marker are allowed, as decoders allow them.)
pub(crate) fn check_jpeg_complete(bytes: &[u8]) -> Result<()> {
    let last = |m: u8| bytes.windows(2).rposition(|w| w[0] == 0xFF && w[1] == m);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) if eoi > sos => Ok(()),
        (None, _) => bail!("a JPEG without image data (no start-of-scan marker)"),
        _ => bail!("a truncated JPEG: its image data has no end-of-image marker (the file was cut short)"),
    }
}

/// Decodes an image file, within `max_pixels`. The file is read whole (a JPEG's completeness is
/// checked on its bytes); a file larger than any image within the limit could need is refused
/// unread.
pub(crate) fn decode_image(path: &Path, max_pixels: u64) -> Result<image::DynamicImage> {
    let len = std::fs::metadata(path)?.len();
    let most = max_pixels.saturating_mul(8).saturating_add(1 << 20);
    if len > most {
        bail!("the file has {len} bytes, more than an image of at most {max_pixels} pixels takes (max_pixels={max_pixels})");
    }
    decode_bytes(&std::fs::read(path)?, max_pixels)
}

/// Decodes a PNG or JPEG held in memory, within `max_pixels`: the header's size is checked before
/// the pixels are allocated, and a JPEG must be complete. The image-folder loader's decoder (the
/// fuzz targets call it on mutated files).
pub fn decode_bytes(bytes: &[u8], max_pixels: u64) -> Result<image::DynamicImage> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?;
    if reader.format() == Some(image::ImageFormat::Jpeg) {
        check_jpeg_complete(bytes)?;
    }
    reader.no_limits();
    let mut dec = reader.into_decoder()?;
    let (w, h) = image::ImageDecoder::dimensions(&dec);
    check_pixels(w, h, max_pixels)?;
    image::ImageDecoder::set_limits(&mut dec, decoder_limits(max_pixels))?;
    Ok(image::DynamicImage::from_decoder(dec)?)
}

/// Decodes `path`, converts it to `shape.c` channels, resizes it to `shape.h`×`shape.w`, and
/// writes it channel-planar into `out`.
pub(crate) fn decode_into(path: &Path, shape: Shape, max_pixels: u64, out: &mut [u8]) -> Result<()> {
    convert_into(decode_image(path, max_pixels)?, shape, out);
    Ok(())
}

/// `img` converted to `shape.c` channels, resized to `shape.h`×`shape.w`, channel-planar in `out`.
pub fn convert_into(img: image::DynamicImage, shape: Shape, out: &mut [u8]) {
    let (w, h) = (shape.w as u32, shape.h as u32);
    let filter = image::imageops::FilterType::Triangle;
    if shape.c == 1 {
        let grey = if img.color().has_color() { luma601(&img.to_rgb8()) } else { img.to_luma8() };
        let grey = if grey.dimensions() == (w, h) { grey } else { image::imageops::resize(&grey, w, h, filter) };
        out.copy_from_slice(grey.as_raw());
    } else {
        let rgb = img.to_rgb8();
        let rgb = if rgb.dimensions() == (w, h) { rgb } else { image::imageops::resize(&rgb, w, h, filter) };
        let plane = shape.h * shape.w;
        for (i, px) in rgb.as_raw().chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * plane + i] = px[c];
            }
        }
    }
}

/// Colour to grey as PIL's `convert("L")` (ITU-R 601-2 luma, in fixed point).
pub(crate) fn luma601(rgb: &image::RgbImage) -> image::GrayImage {
    let px = rgb
        .as_raw()
        .chunks_exact(3)
        .map(|p| ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8)
        .collect();
    image::GrayImage::from_raw(rgb.width(), rgb.height(), px).expect("sizes agree")
}
