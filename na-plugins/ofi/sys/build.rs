//! Finds libfabric with pkg-config, generates bindings with bindgen, and compiles the
//! wrappers of libfabric's `static inline` functions (most of its data path) with cc.

use std::env;
use std::path::PathBuf;

const MIN_VERSION: &str = "1.17";

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    let lib = match pkg_config::Config::new()
        .atleast_version(MIN_VERSION)
        .probe("libfabric")
    {
        Ok(lib) => lib,
        Err(e) => {
            eprintln!(
                "\nerror: libfabric >= {MIN_VERSION} was not found by pkg-config ({e}).\n\
                 The `ofi` transport needs the libfabric headers and library: install the \
                 Debian/Ubuntu packages `libfabric-dev` and `pkg-config` (and `libclang-dev` \
                 for bindgen):\n    apt-get install -y libfabric-dev pkg-config libclang-dev\n\
                 or build without the `ofi` feature.\n"
            );
            panic!(
                "libfabric >= {MIN_VERSION} not found: apt-get install libfabric-dev pkg-config"
            );
        }
    };
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let wrappers = out.join("fi_static_wrappers");
    let mut builder = bindgen::Builder::default()
        .header("wrapper.h")
        .allowlist_function("fi_.*")
        .allowlist_type("fi_.*|fid.*")
        .allowlist_var("FI_.*")
        .wrap_static_fns(true)
        .wrap_static_fns_path(&wrappers)
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for inc in &lib.include_paths {
        builder = builder.clang_arg(format!("-I{}", inc.display()));
    }
    let bindings = match builder.generate() {
        Ok(b) => b,
        Err(e) => panic!(
            "bindgen failed on the libfabric headers ({e}); bindgen needs libclang: \
             apt-get install -y libclang-dev"
        ),
    };
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings");
    let mut cc = cc::Build::new();
    cc.file(wrappers.with_extension("c"))
        .include(env::current_dir().expect("cwd"))
        .flag_if_supported("-Wno-deprecated-declarations");
    for inc in &lib.include_paths {
        cc.include(inc);
    }
    // The generated file includes the header by its path.
    cc.compile("fi_static_wrappers");
}
