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

    for ex in ["examples/quickstart.yaml", "examples/janelia-em.yaml"] {
        let out = env.kubectl(&["apply", "-n", &ns, "-f", &repo(ex)])?;
        assert!(out.contains("created"), "{ex}: {out}");
    }
    let list: serde_json::Value =
        serde_json::from_str(&env.kubectl(&["get", "arrayjobs", "-n", &ns, "-o", "json"])?)?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = items
        .iter()
        .filter_map(|i| i["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, vec!["janelia-em", "quickstart"]);
    let quick = items
        .iter()
        .find(|i| i["metadata"]["name"] == "quickstart")
        .expect("quickstart");
    assert_eq!(quick["spec"]["stages"].as_array().map(Vec::len), Some(6));
    assert_eq!(quick["spec"]["source"]["synthetic"]["slices"], 200);

    // The short name and printer columns work.
    let table = env.kubectl(&["get", "aj", "-n", &ns])?;
    assert!(
        table.contains("PHASE") && table.contains("quickstart"),
        "{table}"
    );

    // The schema is enforced by the server: an unknown field and a wrong type are refused, naming the field.
    let bad = "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {name: bad}\nspec:\n  source: {synthetic: {slices: 2, height: 8, width: 8, colour: red}}\n  stages: []\n";
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
