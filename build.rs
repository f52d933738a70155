//! Embeds LibTorch's library directory as an rpath so that `kdlab` runs without LD_LIBRARY_PATH,
//! and records it so that the binary can load LibTorch's CUDA library on demand (see util::device).
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        println!("cargo:rustc-env=KDLAB_LIBTORCH_LIB={dir}");
    } else {
        println!("cargo:rustc-env=KDLAB_LIBTORCH_LIB=");
    }
}
