//! The committed CRD is generated, never hand-edited: fail when it drifts from the Rust types.

#[test]
fn committed_crd_matches_the_rust_types() {
    let root = env!("CARGO_MANIFEST_DIR");
    for (file, crd) in tlsid::crds() {
        let generated = tlsid::crd_file_yaml(&crd).expect("generate CRD");
        for dir in ["crds", "charts/tlsid/files/crds"] {
            let path = format!("{root}/{dir}/{file}");
            let committed = std::fs::read_to_string(&path).expect(&path);
            assert!(
                committed == generated,
                "{dir}/{file} is stale: run `make crds`"
            );
        }
    }
}
