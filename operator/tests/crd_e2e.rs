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

    // The CRD's source rule (CEL, evaluated by the server) and `arrayjob_spec::validate` give the same verdict
    // on the same manifests: none or two source kinds are refused by both, naming spec.source; one is taken.
    let job = |name: &str, source: &str| {
        format!(
            "apiVersion: arrayjob.dev/v1alpha1\nkind: ArrayJob\nmetadata: {{name: {name}}}\nspec:\n  \
             storage: {{s3: {{bucket: data}}}}\n  source: {{{source}}}\n  \
             stages: [{{name: m, input: source, reduce: {{op: mean, axes: [0]}}}}]\n"
        )
    };
    let cases = [
        ("none", "", false),
        (
            "two",
            "synthetic: {slices: 2, height: 8, width: 8}, tiff: {path: a.tif}",
            false,
        ),
        ("one", "tiff: {path: a.tif}", true),
    ];
    for (name, source, valid) in cases {
        let manifest = job(name, source);
        let by_validate = arrayjob_spec::validate::parse_manifest(&manifest, name);
        let by_server = env.kubectl_with_input(&["apply", "-n", &ns, "-f", "-"], Some(&manifest));
        assert_eq!(by_validate.is_ok(), valid, "{name}: {by_validate:?}");
        assert_eq!(by_server.is_ok(), valid, "{name}: {by_server:?}");
        if let (Err(local), Err(server)) = (by_validate, by_server) {
            assert!(
                local.to_string().contains("spec.source: exactly one of"),
                "{name}: {local}"
            );
            assert!(
                server.to_string().contains("spec.source: exactly one of"),
                "{name}: {server}"
            );
        }
    }
    env.helm(&["uninstall", "arrayjob", "--namespace", &ns])?;
    Ok(())
}

/// `kubectl explain` shows the types' doc comments, and the status the operator writes for a job of 100,000
/// tasks per stage (12 stages, 1000 worker pods, a failure quoting a long log) is accepted by the API server
/// and stays under 16 KB as stored.
#[tokio::test]
async fn explain_documents_the_fields_and_a_100k_task_status_stays_small() -> anyhow::Result<()> {
    use arrayjob_operator::status::{self, Observed};
    use arrayjob_operator::v1alpha1::ArrayJob;

    let env = TestEnv::shared()?;
    env.kubectl(&["apply", "--server-side", "-f", &repo("crds/arrayjob.yaml")])?;
    env.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/arrayjobs.arrayjob.dev",
        "--timeout=30s",
    ])?;
    // The API server publishes a new CRD's OpenAPI schema (what `explain` reads) a few seconds after it is
    // established.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while env.kubectl(&["explain", "arrayjob.spec"]).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "explain never knew arrayjob"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let explain = env.kubectl(&["explain", "arrayjob.spec.workers.replicas"])?;
    assert!(
        explain.contains("Worker pods (lost ones are replaced while the job runs)."),
        "{explain}"
    );
    let explain = env.kubectl(&["explain", "arrayjob.status.stages"])?;
    for doc in [
        "Per stage",
        "bytes",
        "completionTime",
        "Pending (no task started)",
    ] {
        assert!(explain.contains(doc), "{doc}: {explain}");
    }

    let ns = env.namespace("big").await?;
    let manifest = std::fs::read_to_string(repo("examples/quickstart-k8s.yaml"))?
        .replace("name: quickstart-k8s", "name: big");
    env.kubectl_with_input(&["apply", "-n", &ns, "-f", "-"], Some(&manifest))?;
    let job: ArrayJob =
        serde_json::from_str(&env.kubectl(&["get", "aj", "big", "-n", &ns, "-o", "json"])?)?;
    let stages: Vec<serde_json::Value> = (0..12)
        .map(|i| {
            serde_json::json!({"name": format!("stage-{i:02}-named-as-long-as-a-user-might"),
                "tasksDone": 99_999, "tasksTotal": 100_000, "bytesOut": 987_654_321_012_u64,
                "startSeconds": 12.5, "endSeconds": null})
        })
        .collect();
    let pods: Vec<k8s_openapi::api::core::v1::Pod> = (0..1000)
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("aj-big-worker-{i}"), "labels": {"arrayjob.dev/role": "worker"}},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}))
        })
        .collect::<Result<_, _>>()?;
    let observed = Observed {
        pods,
        created: 1400,
        progress: Some(arrayjob_operator::progress::parse_progress(
            serde_json::json!({"phase": "failed", "startedAtUnix": 1.8e9, "stages": stages,
            "failure": format!("stage-03, chunk 7: {}", "a long log line ".repeat(500))})
            .to_string()
            .as_bytes(),
        )?),
        unreadable: None,
        now: k8s_openapi::jiff::Timestamp::now(),
    };
    let mut next = status::observe(&job, &job.status.clone().unwrap_or_default(), &observed);
    status::bound_messages(&mut next);
    let patch = serde_json::json!({"status": next}).to_string();
    env.kubectl(&[
        "patch",
        "aj",
        "big",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ])?;
    let stored: serde_json::Value =
        serde_json::from_str(&env.kubectl(&["get", "aj", "big", "-n", &ns, "-o", "json"])?)?;
    let st = &stored["status"];
    let bytes = st.to_string().len();
    assert!(bytes < 16 * 1024, "{bytes} bytes of status");
    assert_eq!(st["progress"], "1199988/1200000");
    assert_eq!(st["stages"].as_array().map(Vec::len), Some(12));
    assert_eq!(st["stages"][11]["bytes"], 987_654_321_012_u64);
    assert_eq!(st["stages"][0]["phase"], "Running");
    assert_eq!(st["workerPods"]["lost"], 1397);
    assert_eq!(st["workers"], "1000/3");
    assert!(
        st["message"]
            .as_str()
            .is_some_and(|m| m.len() <= 1024 && m.ends_with("...")),
        "{}",
        st["message"]
    );
    Ok(())
}
