#![no_main]
//! Any bytes given to the image-folder decoder (PNG, JPEG) give an image, converted to grey and
//! colour network inputs, or an error; within 2^20 pixels.
use kdlab::data::imagefolder::{convert_into, decode_bytes};
use kdlab::data::Shape;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = decode_bytes(data, 1 << 20) {
        for c in [1, 3] {
            let shape = Shape { c, h: 8, w: 8 };
            convert_into(img.clone(), shape, &mut vec![0; shape.numel()]);
        }
    }
});
