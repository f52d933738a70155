//! Results that must not depend on the number of decoding threads (issue 25): streamed loading
//! (`store=stream`, a file decoded per batch) with 1, 2 and 4 threads gives the same batches —
//! samples, crops, labels and pixels — including when an undecodable file is skipped; and the
//! in-memory decodes (the fixed transform, `store=memory`) give the same pixels with 1, 2 and 4
//! threads (`KDLAB_LOADER_THREADS`). docs/reliability.md says which results do depend on
//! `--threads` (LibTorch's, not the decoders').
mod common;

use common::{feed_with_threads, write_folder};
use kdlab::data::loader::{Batch, Feed, Loader, LoaderSpec};

fn epoch(feed: Feed, epoch: u64) -> Vec<Batch> {
    let spec = LoaderSpec { batch_size: 7, shuffle: true, seed: 5, drop_last: false };
    let mut loader = Loader::from_feed(feed, spec, epoch);
    let batches: Vec<Batch> = loader.by_ref().collect();
    loader.finish().unwrap();
    batches
}

/// What a batch is, all of it.
fn key(b: &Batch) -> (Vec<u32>, String, Vec<i64>, Vec<u32>) {
    (b.indices.clone(), format!("{:?}", b.crops), b.labels.clone(), b.images.iter().map(|x| x.to_bits()).collect())
}

#[test]
fn decoding_threads_change_no_batch_and_no_pixel() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("imgs");
    write_folder(&root, 9, 3);
    // An undecodable file, left out with bad=skip by whichever thread meets it.
    std::fs::write(root.join("train/bag/zz-broken.jpg"), b"\xff\xd8\xff\xe0 not a jpeg").unwrap();
    let spec = |store: &str| format!("{}:transform=imagenet,size=20,channels=3,bad=skip,store={store}", root.display());
    let streamed = kdlab::data::source::load(&spec("stream")).unwrap();
    for e in [0, 1] {
        let one: Vec<_> = epoch(feed_with_threads(&streamed, "train", true, 1), e).iter().map(key).collect();
        assert_eq!(one.iter().map(|k| k.0.len()).sum::<usize>(), 27, "the broken file is skipped");
        for threads in [2, 4] {
            let other: Vec<_> =
                epoch(feed_with_threads(&streamed, "train", true, threads), e).iter().map(key).collect();
            assert!(one == other, "epoch {e}: {threads} decoding threads gave other batches than 1");
        }
    }
    // The in-memory decodes, on the pool of KDLAB_LOADER_THREADS threads.
    let fixed = format!("{}:size=24,channels=1,bad=skip,cache=off", root.display());
    let load_with = |threads: &str, spec: &str| {
        std::env::set_var("KDLAB_LOADER_THREADS", threads);
        kdlab::data::source::load(spec).unwrap()
    };
    let base = load_with("1", &fixed);
    let held = load_with("1", &spec("memory"));
    let held_batches: Vec<_> = epoch(feed_with_threads(&held, "train", true, 1), 0).iter().map(key).collect();
    for threads in ["2", "4"] {
        let d = load_with(threads, &fixed);
        assert!(d.train.images == base.train.images && d.test.images == base.test.images, "{threads} threads");
        assert_eq!(d.train.labels, base.train.labels);
        let h = load_with(threads, &spec("memory"));
        let b: Vec<_> = epoch(feed_with_threads(&h, "train", true, 1), 0).iter().map(key).collect();
        assert!(b == held_batches, "store=memory decoded with {threads} threads gave other batches");
    }
}
