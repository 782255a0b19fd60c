//! The CRD and the chart against a real API server (tests/harness): the chart lints and installs, the
//! examples are accepted as ArrayJob objects, and the schema rejects what validation would.

use arrayjob_testenv::TestEnv;

fn repo(rel: &str) -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
        .display()
        .to_string()
}

#[tokio::test]
async fn chart_installs_the_crd_and_examples_apply() -> anyhow::Result<()> {
    let env = TestEnv::shared()?;
    let lint = env.helm(&["lint", "--strict", &repo("charts/arrayjob")])?;
    assert!(
        lint.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{lint}"
    );
    let ns = env.namespace("crd").await?;
    let out = env.helm(&[
        "install",
        "arrayjob",
        &repo("charts/arrayjob"),
        "--namespace",
        &ns,
    ])?;
    assert!(out.contains("STATUS: deployed"), "{out}");
    env.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/arrayjobs.arrayjob.dev",
        "--timeout=30s",
    ])?;

    let out = env.kubectl(&[
        "apply",
        "-n",
        &ns,
        "-f",
        &repo("examples/quickstart-k8s.yaml"),
    ])?;
    assert!(out.contains("created"), "{out}");
    // The laptop examples have no S3 storage: a CEL rule of the CRD refuses them, naming the field.
    for ex in ["examples/quickstart.yaml", "examples/janelia-em.yaml"] {
        let err = env
            .kubectl(&["apply", "-n", &ns, "-f", &repo(ex)])
            .expect_err("no storage");
        assert!(
            err.to_string()
                .contains("spec.storage.s3: required on Kubernetes"),
            "{ex}: {err}"
        );
    }
    let list: serde_json::Value =
        serde_json::from_str(&env.kubectl(&["get", "arrayjobs", "-n", &ns, "-o", "json"])?)?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = items
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, vec!["quickstart-k8s"]);
    let quick = &items[0];
    assert_eq!(quick["spec"]["stages"].as_array().map(Vec::len), Some(6));
    assert_eq!(quick["spec"]["source"]["s3"]["stop"], 160);
    assert_eq!(quick["spec"]["workers"]["replicas"], 3);

    // The short name and printer columns work.
    let table = env.kubectl(&["get", "aj", "-n", &ns])?;
    assert!(
        table.contains("PHASE") && table.contains("WORKERS") && table.contains("quickstart-k8s"),
        "{table}"
    );

    // The schema is enforced by the server: an unknown field and a wrong type are refused, naming the field.
    let bad = "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {name: bad}\nspec:\n  storage: {s3: {bucket: b}}\n  source: {synthetic: {slices: 2, height: 8, width: 8, colour: red}}\n  stages: []\n";
    let err = env
        .kubectl_with_input(&["apply", "-n", &ns, "-f", "-"], Some(bad))
        .expect_err("unknown field");
    assert!(err.to_string().contains("colour"), "{err}");
    let bad = bad
        .replace("slices: 2", "slices: many")
        .replace(", colour: red", "");
    let err = env
        .kubectl_with_input(&["apply", "-n", &ns, "-f", "-"], Some(&bad))
        .expect_err("wrong type");
    assert!(
        err.to_string().contains("spec.source.synthetic.slices"),
        "{err}"
    );
    env.helm(&["uninstall", "arrayjob", "--namespace", &ns])?;
    Ok(())
}
