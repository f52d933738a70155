//! Files made to hurt (issue 25): each kind of hostile checkpoint, image and image folder gets a
//! clear error that names the file, within the stated limits, and nothing is written — no run
//! directory, no cache. The limits and their flags are in the README (*Files from outside*).
mod common;

use common::{kdlab_cpu, text};
use kdlab::data::imagefolder::{self, Options};
use kdlab::data::Shape;
use kdlab::train::pth::{self, Limits};
use std::io::Write;
use std::path::Path;

/// A zip of `entries` (name, bytes, deflated?).
fn zip_of(entries: &[(&str, &[u8], bool)]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes, deflate) in entries {
        let method = if *deflate { zip::CompressionMethod::Deflated } else { zip::CompressionMethod::Stored };
        let opts =
            zip::write::FileOptions::default().compression_method(method).large_file(bytes.len() > u32::MAX as usize);
        zip.start_file(*name, opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

/// A checkpoint whose pickle is `pkl` (with one small float storage `0`).
fn checkpoint_with(pkl: &[u8]) -> Vec<u8> {
    zip_of(&[("archive/data.pkl", pkl, false), ("archive/data/0", &[0u8; 16], false)])
}

fn pickle(body: &[u8]) -> Vec<u8> {
    [&[0x80u8, 2][..], body, b"."].concat()
}

/// `kdlab import` of `file` into `out`: it must fail, name the file, say `want`, and write nothing.
fn import_refused(dir: &Path, file: &str, bytes: &[u8], extra: &[&str], want: &str) {
    std::fs::write(dir.join(file), bytes).unwrap();
    let out = format!("out-{file}");
    let mut args = vec!["import", "--checkpoint", file, "--model", "resnet8", "--classes", "10", "--input", "3x32x32"];
    args.extend(["--out", &out]);
    args.extend(extra);
    let o = kdlab_cpu(&args, dir);
    let t = text(&o);
    assert!(!o.status.success(), "{file}: accepted\n{t}");
    assert!(
        t.contains(&format!("{file}: ")) && t.contains(want),
        "{file}: expected an error naming it with '{want}':\n{t}"
    );
    assert!(!t.contains("panicked"), "{file}: {t}");
    assert!(!dir.join(&out).exists(), "{file}: the refused import wrote {out}");
    eprintln!("{}", t.trim());
}

#[test]
fn hostile_checkpoints_are_refused_by_name_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();

    // A pickle nested 100,000 deep: 100,000 empty lists, each appended to the one below.
    let deep = pickle(&[vec![b']'; 100_000], vec![b'a'; 99_999]].concat());
    import_refused(d, "deep.pth", &checkpoint_with(&deep), &[], "nests containers more than 1000 deep");
    // The same through the memo: one list, put, then [memo] built over and over.
    let mut memo_deep = b"]q\x00".to_vec();
    for _ in 0..2000 {
        memo_deep.extend_from_slice(b"]h\x00aq\x00");
    }
    import_refused(d, "memo_deep.pth", &checkpoint_with(&pickle(&memo_deep)), &[], "more than 1000 deep");

    // A storage record that claims 10^12 elements (a 10^6 × 10^6 tensor over 4 floats).
    let huge = pickle(
        b"}(X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu\x8a\x05\x00\x10\xa5\xd4\xe8tQK\x00J\x40\x42\x0f\x00J\x40\x42\x0f\x00\x86J\x40\x42\x0f\x00K\x01\x86\x89)tRu",
    );
    import_refused(
        d,
        "huge.pth",
        &checkpoint_with(&huge),
        &[],
        "past the 4096 MiB kdlab allows (--max-pickle-mib 4096)",
    );

    // A zip bomb: 256 MiB of zeros deflated to a quarter of a MiB, against a 64 MiB limit…
    let zeros = vec![0u8; 256 << 20];
    let sd = pth::encode_state_dict(&[("w", &[2], &[1.0, 2.0])]);
    let pkl = {
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(&sd)).unwrap();
        let mut b = vec![];
        std::io::Read::read_to_end(&mut z.by_name("archive/data.pkl").unwrap(), &mut b).unwrap();
        b
    };
    let bomb = zip_of(&[("archive/data.pkl", &pkl, false), ("archive/data/0", &zeros, true)]);
    assert!(bomb.len() < 1 << 20, "the bomb is {} bytes", bomb.len());
    import_refused(d, "bomb.pth", &bomb, &["--max-archive-mib", "64"], "more than the 64 MiB the archive may hold");
    // …and one whose directory lies, declaring 1 KiB: caught after 1 KiB, not after 256 MiB.
    let mut liar = bomb.clone();
    let declared = (zeros.len() as u32).to_le_bytes();
    let mut patched = 0;
    for i in 0..liar.len() - 4 {
        let sig = &liar[i..i + 4];
        let at = if sig == b"PK\x03\x04" {
            i + 22
        } else if sig == b"PK\x01\x02" {
            i + 24
        } else {
            continue;
        };
        if liar[at..at + 4] == declared {
            liar[at..at + 4].copy_from_slice(&1024u32.to_le_bytes());
            patched += 1;
        }
    }
    assert_eq!(patched, 2, "the bomb's local and central sizes");
    import_refused(d, "liar.pth", &liar, &[], "more bytes than the zip directory declares (1024)");

    // A zip entry whose name climbs out of the archive.
    let climb = zip_of(&[
        ("archive/data.pkl", &pkl, false),
        ("archive/data/0", &[0u8; 8], false),
        ("../../evil.sh", b"rm -rf ~", false),
    ]);
    import_refused(d, "climb.pth", &climb, &[], "the zip entry '../../evil.sh' names a path outside the archive");

    // A pickle that asks for os.system, by GLOBAL (protocol 2) and by STACK_GLOBAL (protocol 4).
    let system = pickle(b"cos\nsystem\nX\x04\x00\x00\x00true\x85R");
    import_refused(d, "system.pth", &checkpoint_with(&system), &[], "asks for the Python global 'os.system'");
    let stack_system = pickle(b"\x8c\x05posix\x8c\x06system\x93X\x04\x00\x00\x00true\x85R");
    import_refused(d, "posix.pth", &checkpoint_with(&stack_system), &[], "'posix.system'");

    // The limits are what the flags say: the deep pickle passes the depth check at 100,000
    // levels… and is then refused as a file without a state dict, not as a crash.
    let limits = Limits { pickle_depth: pth::MAX_PICKLE_DEPTH, ..Limits::default() };
    let e = pth::read_state_dict_with(&d.join("memo_deep.pth"), &limits).unwrap_err();
    assert!(format!("{e:#}").contains("holds no state dict"), "{e:#}");
}

/// A PNG of `w`×`h` grey pixels that holds only its first row (the header's claim is what counts).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let chunk = |kind: &[u8], data: &[u8]| -> Vec<u8> {
        let mut crc = crc32fast::Hasher::new();
        crc.update(kind);
        crc.update(data);
        [&(data.len() as u32).to_be_bytes()[..], kind, data, &crc.finalize().to_be_bytes()].concat()
    };
    let ihdr = [&w.to_be_bytes()[..], &h.to_be_bytes(), &[8, 0, 0, 0, 0]].concat();
    let mut z = flate2::write::ZlibEncoder::new(vec![], flate2::Compression::default());
    z.write_all(&vec![0u8; 1 + w.min(1 << 20) as usize]).unwrap();
    let idat = z.finish().unwrap();
    [&b"\x89PNG\r\n\x1a\n"[..], &chunk(b"IHDR", &ihdr), &chunk(b"IDAT", &idat), &chunk(b"IEND", &[])].concat()
}

/// A small image folder (two classes, PNG and JPEG) at `root`.
fn folder(root: &Path) {
    for split in ["train", "val"] {
        for (c, class) in ["a", "b"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            let px: Vec<u8> = (0..3 * 16 * 16).map(|i| (i * 7 + c * 50) as u8).collect();
            let shape = Shape { c: 3, h: 16, w: 16 };
            imagefolder::write_image(&dir.join("0.png"), &px, shape, false).unwrap();
            imagefolder::write_image(&dir.join("1.jpg"), &px, shape, true).unwrap();
        }
    }
}

/// Loading `root` with `opts` fails naming `file` and saying `want`, and leaves no cache.
fn load_refused(root: &Path, opts: &str, file: &Path, want: &str) {
    let cache = root.parent().unwrap().join("cache");
    let e = match imagefolder::load_with(root, &Options::parse(opts).unwrap(), &cache) {
        Ok(_) => panic!("{}: loaded", file.display()),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains(&file.display().to_string()) && e.contains(want),
        "expected '{want}' naming {}: {e}",
        file.display()
    );
    let left: Vec<_> = std::fs::read_dir(&cache).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "a refused load left {left:?}");
    eprintln!("{e}");
}

#[test]
fn hostile_images_and_folders_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("images");
    folder(&root);

    // A PNG that declares 100,000 × 100,000 pixels (30 GB as RGB) in a few hundred bytes: refused
    // from its header, in the fixed transform and in the ImageNet recipe's in-memory store…
    let huge = root.join("train/a/huge.png");
    std::fs::write(&huge, png_claiming(100_000, 100_000)).unwrap();
    for opts in ["size=16", "transform=imagenet,size=8,store=memory"] {
        load_refused(&root, opts, &huge, "declares 100000x100000 pixels, more than the 67108864 kdlab decodes");
    }
    // …and decoding it directly (the streamed store's path) too.
    let e = imagefolder::decode_bytes(&std::fs::read(&huge).unwrap(), imagefolder::MAX_PIXELS).unwrap_err();
    assert!(format!("{e:#}").contains("declares 100000x100000"), "{e:#}");
    // The limit is the flag's: a 3000 × 3000 claim passes max_pixels=3000x3000 (and fails on its
    // missing rows), but not max_pixels=1000000.
    let e = imagefolder::decode_bytes(&png_claiming(3000, 3000), 9_000_000).unwrap_err();
    assert!(!format!("{e:#}").contains("declares"), "{e:#}");
    assert!(format!("{:#}", imagefolder::decode_bytes(&png_claiming(3000, 3000), 1_000_000).unwrap_err())
        .contains("declares 3000x3000"));
    // With bad=skip the image is left out and the rest loads.
    let cache = tmp.path().join("cache");
    let (ds, _) =
        imagefolder::load_with(&root, &Options::parse("size=16,bad=skip,cache=off").unwrap(), &cache).unwrap();
    assert_eq!(ds.train.len(), 4);
    std::fs::remove_file(&huge).unwrap();

    // A truncated JPEG: the decoder would fill the rest with grey; kdlab refuses it.
    let good = std::fs::read(root.join("train/b/1.jpg")).unwrap();
    assert!(imagefolder::decode_bytes(&good, imagefolder::MAX_PIXELS).is_ok());
    let cut = root.join("train/b/cut.jpg");
    // Cut in the middle of the image data (after the last start-of-scan marker).
    let sos = good.windows(2).rposition(|w| w == [0xFF, 0xDA]).unwrap();
    std::fs::write(&cut, &good[..(sos + good.len()) / 2]).unwrap();
    load_refused(&root, "size=16", &cut, "a truncated JPEG");
    std::fs::remove_file(&cut).unwrap();

    // A symbolic-link loop: train/a/sub/loop → ../.. (train/), which holds train/a again.
    let link = root.join("train/a/sub/loop");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("../..", &link).unwrap();
    load_refused(&root, "size=16", &link, "a symbolic-link loop");
    // A link to a folder that is not above it is followed as before.
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("../../b", &link).unwrap();
    let (ds, _) = imagefolder::load_with(&root, &Options::parse("size=16,cache=off").unwrap(), &cache).unwrap();
    assert_eq!(ds.train.len(), 6);
}
