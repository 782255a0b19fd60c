//! The committed CRD (crds/arrayjob.yaml, also in the Helm chart) must match the Rust types.

#[test]
fn committed_crds_are_current() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let expected = arrayjob_operator::crd_yaml().expect("serialise CRD");
    for rel in ["crds/arrayjob.yaml", "charts/arrayjob/crds/arrayjob.yaml"] {
        let committed = std::fs::read_to_string(root.join(rel)).unwrap_or_default();
        assert!(
            committed == expected,
            "{rel} is stale: regenerate it with `cargo run -p arrayjob-operator -- crd > {rel}`"
        );
    }
}

#[test]
fn crd_schema_has_the_spec_fields_and_a_status_subresource() {
    let yaml = arrayjob_operator::crd_yaml().expect("serialise CRD");
    let crd: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("parse");
    let version = &crd["spec"]["versions"][0];
    assert_eq!(version["name"].as_str(), Some("v1alpha1"));
    let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let props = spec["properties"].as_mapping().expect("spec properties");
    let names: Vec<&str> = props.keys().filter_map(|k| k.as_str()).collect();
    assert!(
        names.contains(&"source") && names.contains(&"stages"),
        "{names:?}"
    );
    assert!(
        version["subresources"]["status"].is_mapping(),
        "status subresource missing"
    );
}
