//! The committed CRD is generated, never hand-edited: fail when it drifts from the Rust types.

#[test]
fn committed_crd_matches_the_rust_types() {
    let root = env!("CARGO_MANIFEST_DIR");
    let generated = tlsid::crd_yaml().expect("generate CRD");
    for path in [
        "crds/tlsid.dev_tlsidentities.yaml",
        "charts/tlsid/files/crds/tlsid.dev_tlsidentities.yaml",
    ] {
        let committed = std::fs::read_to_string(format!("{root}/{path}")).expect(path);
        assert!(committed == generated, "{path} is stale: run `make crds`");
    }
}
