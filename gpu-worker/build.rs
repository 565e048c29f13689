//! With the `torch` feature, link the whole libtorch (not only libtorch_cpu, which
//! is all `tch` pulls in: CUDA would be missing at run time) and record its
//! directory as an rpath, so the worker runs without LD_LIBRARY_PATH.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_none() {
        return;
    }
    let lib =
        std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys exports DEP_TCH_LIBTORCH_LIB");
    println!("cargo::rustc-link-arg=-Wl,-rpath={lib}");
    println!("cargo::rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo::rustc-link-arg=-ltorch");
}
