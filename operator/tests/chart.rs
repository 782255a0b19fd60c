//! The operator's Helm chart (`charts/arrayjob`) and the image's Dockerfile, with the real tools that
//! `tests/env/setup.sh` installs: Helm 3 and Helm 4 (built from their Go modules), kubectl, hadolint.
//!
//! Without a cluster: `helm lint --strict` with both Helms, what `helm template` renders (the
//! operator's arguments, its security context, the exact RBAC rules), the values schema refusing
//! wrong values, hadolint on the Dockerfile. With the real API server (tests/harness): the chart
//! installs with each Helm, and `kubectl auth can-i` as the chart's ServiceAccount shows what the
//! operator may and may not do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use arrayjob_testenv::{TestEnv, locate};
use serde::Deserialize;
use serde_json::{Value, json};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn chart() -> String {
    repo("charts/arrayjob").display().to_string()
}

/// The two Helms, by the name of their program in the tools folder.
const HELMS: [&str; 2] = ["helm", "helm4"];

/// Runs `helm` (or `helm4`) without a cluster, with its own empty home folders. Returns the exit
/// success, stdout and stderr.
fn helm(which: &str, args: &[&str]) -> Result<(bool, String, String)> {
    let program = locate::tool(which)?;
    let home = std::env::temp_dir().join(format!(
        "arrayjob-chart-test-{}-{which}",
        std::process::id()
    ));
    let out = Command::new(&program)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env_remove("KUBECONFIG")
        .args(args)
        .output()
        .with_context(|| format!("run {}", program.display()))?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `helm template` with the given extra arguments, parsed into its documents.
fn template(which: &str, extra: &[&str]) -> Result<Vec<Value>> {
    let chart = chart();
    let mut args = vec!["template", "aj", &chart, "--namespace", "ops"];
    args.extend_from_slice(extra);
    let (ok, out, err) = helm(which, &args)?;
    ensure!(ok, "{which} template {extra:?} failed: {err}");
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&out) {
        let v = Value::deserialize(doc)?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} rendered"))
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = docs
        .iter()
        .map(|d| {
            format!(
                "{}/{}",
                d["kind"].as_str().unwrap_or("?"),
                d["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect();
    k.sort();
    k
}

/// RBAC rules as `group/resource -> verbs`, failing on a rule that is not a plain
/// apiGroups/resources/verbs triple (resourceNames, nonResourceURLs).
fn rules(role: &Value) -> Result<BTreeMap<String, Vec<String>>> {
    let mut map = BTreeMap::new();
    for rule in role["rules"].as_array().context("rules")? {
        let keys: Vec<&String> = rule.as_object().context("rule")?.keys().collect();
        ensure!(
            keys == ["apiGroups", "resources", "verbs"],
            "unexpected rule fields {keys:?}"
        );
        let verbs: Vec<String> = serde_json::from_value(rule["verbs"].clone())?;
        for group in rule["apiGroups"].as_array().context("apiGroups")? {
            for res in rule["resources"].as_array().context("resources")? {
                let key = format!(
                    "{}/{}",
                    group.as_str().unwrap_or("?"),
                    res.as_str().unwrap_or("?")
                );
                ensure!(
                    map.insert(key.clone(), verbs.clone()).is_none(),
                    "{key} in two rules"
                );
            }
        }
    }
    Ok(map)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The rules the operator gets (ClusterRole, or Role in the watched namespace), exactly: Secrets by name
/// only, nothing listed or watched but pods and ArrayJobs.
fn expected_operator_rules() -> BTreeMap<String, Vec<String>> {
    let mut m = BTreeMap::new();
    m.insert(
        "arrayjob.dev/arrayjobs".to_owned(),
        strings(&["get", "list", "watch", "patch", "update"]),
    );
    m.insert(
        "arrayjob.dev/arrayjobs/status".to_owned(),
        strings(&["get", "patch", "update"]),
    );
    m.insert(
        "arrayjob.dev/arrayjobs/finalizers".to_owned(),
        strings(&["update"]),
    );
    m.insert(
        "/pods".to_owned(),
        strings(&["get", "list", "watch", "create", "delete", "patch"]),
    );
    m.insert("/services".to_owned(), strings(&["get", "create", "patch"]));
    m.insert("/configmaps".to_owned(), strings(&["create", "patch"]));
    m.insert("/secrets".to_owned(), strings(&["get", "create"]));
    m.insert(
        "networking.k8s.io/networkpolicies".to_owned(),
        strings(&["create", "patch"]),
    );
    m.insert("/events".to_owned(), strings(&["create", "patch"]));
    m.insert(
        "events.k8s.io/events".to_owned(),
        strings(&["create", "patch"]),
    );
    m
}

fn assert_least_privilege(rules: &BTreeMap<String, Vec<String>>) {
    for (res, verbs) in rules {
        assert!(!res.contains('*'), "wildcard resource {res}");
        assert!(!verbs.iter().any(|v| v == "*"), "wildcard verb on {res}");
        assert!(!res.contains("nodes"), "access to nodes: {res}");
        assert!(!res.contains("clusterrole"), "RBAC escalation: {res}");
        if res.ends_with("/secrets") {
            assert!(
                !verbs.iter().any(|v| v == "list" || v == "watch"),
                "Secrets listed or watched: {verbs:?}"
            );
        }
    }
}

/// The operator's arguments after `--metrics-addr` with the default cleanup values.
const CLEANUP_ARGS: [&str; 3] = [
    "--cleanup-max-attempts=8",
    "--cleanup-backoff-seconds=5",
    "--cleanup-give-up-after-seconds=900",
];

/// `ARRAYJOB_POLICY` with the default values (Helm's toJson sorts the keys).
const DEFAULT_POLICY: &str = r#"{"allowedImages":[],"allowedServiceAccounts":[],"allowedTolerationKeys":["karpenter.sh/capacity-type"],"s3CredentialsSecrets":"labelled"}"#;

fn args(head: &[&str], tail: &[&str]) -> Value {
    json!(head.iter().chain(tail).collect::<Vec<_>>())
}

#[test]
fn helm_lint_strict_passes_with_helm_3_and_helm_4() -> Result<()> {
    for which in HELMS {
        let (ok, out, err) = helm(which, &["lint", "--strict", &chart()])?;
        assert!(ok, "{which} lint failed:\n{out}\n{err}");
        assert!(
            out.lines()
                .any(|l| l.trim() == "1 chart(s) linted, 0 chart(s) failed"),
            "{which}: {out}"
        );
        assert!(
            !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "{which}: {out}"
        );
    }
    // The versions are the pinned ones, built from the Go modules.
    let (_, v3, _) = helm("helm", &["version", "--short"])?;
    assert!(v3.starts_with(&locate::pinned("HELM3_VERSION")?), "{v3}");
    let (_, v4, _) = helm("helm4", &["version", "--short"])?;
    assert!(v4.starts_with(&locate::pinned("HELM4_VERSION")?), "{v4}");
    Ok(())
}

#[test]
fn template_with_default_values() -> Result<()> {
    let docs = template("helm", &[])?;
    // Helm 4 renders the same objects.
    assert_eq!(template("helm4", &[])?, docs);
    assert_eq!(
        kinds(&docs),
        strings(&[
            "ClusterRole/aj-arrayjob",
            "ClusterRoleBinding/aj-arrayjob",
            "Deployment/aj-arrayjob",
            "Role/aj-arrayjob-leader-election",
            "RoleBinding/aj-arrayjob-leader-election",
            "Service/aj-arrayjob-metrics",
            "ServiceAccount/aj-arrayjob",
        ])
    );

    let dep = find(&docs, "Deployment", "aj-arrayjob")?;
    assert_eq!(dep["metadata"]["namespace"], "ops");
    assert_eq!(dep["spec"]["replicas"], 1);
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "aj-arrayjob");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "arrayjob:0.1.0");
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(c["command"], json!(["arrayjob-operator"]));
    assert_eq!(
        c["args"],
        args(
            &[
                "run",
                "--image=arrayjob:0.1.0",
                "--metrics-addr=$(POD_IP):8080",
                "--leader-election"
            ],
            &CLEANUP_ARGS
        )
    );
    assert_eq!(
        c["env"],
        json!([
            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "RUST_LOG", "value": "info"},
            {"name": "ARRAYJOB_POLICY", "value": DEFAULT_POLICY},
            {"name": "ARRAYJOB_OPERATOR_LABELS", "value":
                "app.kubernetes.io/name=arrayjob,app.kubernetes.io/instance=aj,app.kubernetes.io/component=operator"},
        ])
    );
    // The operator's labels are the ones its pods carry (each job's NetworkPolicy selects them).
    let labels = &dep["spec"]["template"]["metadata"]["labels"];
    for pair in c["env"][5]["value"].as_str().context("labels")?.split(',') {
        let (k, v) = pair.split_once('=').context("k=v")?;
        assert_eq!(labels[k], v, "{k}");
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    assert_eq!(sc["seccompProfile"], json!({"type": "RuntimeDefault"}));
    assert_eq!(
        c["ports"],
        json!([{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "metrics"})
    );
    assert_eq!(
        c["resources"]["requests"],
        json!({"cpu": "100m", "memory": "128Mi"})
    );
    assert_eq!(c["resources"]["limits"], json!({"memory": "512Mi"}));

    let cr = find(&docs, "ClusterRole", "aj-arrayjob")?;
    let r = rules(cr)?;
    assert_eq!(r, expected_operator_rules());
    assert_least_privilege(&r);
    let crb = find(&docs, "ClusterRoleBinding", "aj-arrayjob")?;
    assert_eq!(crb["roleRef"]["name"], "aj-arrayjob");
    assert_eq!(
        crb["subjects"],
        json!([{"kind": "ServiceAccount", "name": "aj-arrayjob", "namespace": "ops"}])
    );

    let lease = find(&docs, "Role", "aj-arrayjob-leader-election")?;
    assert_eq!(lease["metadata"]["namespace"], "ops");
    let mut want = BTreeMap::new();
    want.insert(
        "coordination.k8s.io/leases".to_owned(),
        strings(&["get", "create", "update", "patch"]),
    );
    assert_eq!(rules(lease)?, want);

    let svc = find(&docs, "Service", "aj-arrayjob-metrics")?;
    assert_eq!(
        svc["spec"]["ports"],
        json!([{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}])
    );
    assert_eq!(
        svc["spec"]["selector"], dep["spec"]["selector"]["matchLabels"],
        "the Service selects the operator pods"
    );
    Ok(())
}

#[test]
fn template_with_watch_namespace_and_other_values() -> Result<()> {
    let set = [
        "--set",
        "watchNamespace=x",
        "--set",
        "workerImage=registry.example/arrayjob:dev",
        "--set",
        "image.tag=1.2.3",
        "--set",
        "nodeSelector.pool=system",
        "--set",
        "tolerations[0].key=dedicated,tolerations[0].operator=Exists",
        "--set",
        "policy.allowedImages={registry.example/*},policy.allowedServiceAccounts={arrayjob-s3}",
        "--set",
        "policy.s3CredentialsSecrets=any",
        "--set",
        "cleanup.operatorIdentity=true,cleanup.maxAttempts=3,cleanup.giveUpAfterSeconds=60",
    ];
    let docs = template("helm", &set)?;
    assert_eq!(template("helm4", &set)?, docs);
    assert_eq!(
        kinds(&docs),
        strings(&[
            "Deployment/aj-arrayjob",
            "Role/aj-arrayjob",
            "Role/aj-arrayjob-leader-election",
            "RoleBinding/aj-arrayjob",
            "RoleBinding/aj-arrayjob-leader-election",
            "Service/aj-arrayjob-metrics",
            "ServiceAccount/aj-arrayjob",
        ]),
        "no ClusterRole when one namespace is watched"
    );
    let dep = find(&docs, "Deployment", "aj-arrayjob")?;
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["image"], "arrayjob:1.2.3");
    assert_eq!(
        pod["containers"][0]["args"],
        args(
            &[
                "run",
                "--image=registry.example/arrayjob:dev",
                "--metrics-addr=$(POD_IP):8080",
                "--leader-election",
                "--namespace=x",
                "--cleanup-operator-identity",
                "--cleanup-max-attempts=3",
                "--cleanup-backoff-seconds=5",
                "--cleanup-give-up-after-seconds=60"
            ],
            &[]
        )
    );
    assert_eq!(
        pod["containers"][0]["env"][4],
        json!({"name": "ARRAYJOB_POLICY", "value":
            r#"{"allowedImages":["registry.example/*"],"allowedServiceAccounts":["arrayjob-s3"],"allowedTolerationKeys":["karpenter.sh/capacity-type"],"s3CredentialsSecrets":"any"}"#})
    );
    assert_eq!(pod["nodeSelector"], json!({"pool": "system"}));
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "dedicated", "operator": "Exists"}])
    );

    let role = docs
        .iter()
        .find(|d| d["kind"] == "Role" && d["metadata"]["name"] == "aj-arrayjob")
        .context("Role")?;
    assert_eq!(role["metadata"]["namespace"], "x");
    let r = rules(role)?;
    assert_eq!(r, expected_operator_rules());
    assert_least_privilege(&r);
    let rb = docs
        .iter()
        .find(|d| d["kind"] == "RoleBinding" && d["metadata"]["name"] == "aj-arrayjob")
        .context("RoleBinding")?;
    assert_eq!(rb["metadata"]["namespace"], "x");
    assert_eq!(
        rb["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "aj-arrayjob"})
    );
    assert_eq!(
        rb["subjects"],
        json!([{"kind": "ServiceAccount", "name": "aj-arrayjob", "namespace": "ops"}])
    );
    // The leader-election Lease stays in the release namespace.
    let lease = find(&docs, "Role", "aj-arrayjob-leader-election")?;
    assert_eq!(lease["metadata"]["namespace"], "ops");

    // Without leader election: no flag and no Lease Role.
    let docs = template("helm", &["--set", "leaderElection.enabled=false"])?;
    let args = &find(&docs, "Deployment", "aj-arrayjob")?["spec"]["template"]["spec"]["containers"]
        [0]["args"];
    assert_eq!(
        args,
        &self::args(
            &[
                "run",
                "--image=arrayjob:0.1.0",
                "--metrics-addr=$(POD_IP):8080"
            ],
            &CLEANUP_ARGS
        )
    );
    assert!(find(&docs, "Role", "aj-arrayjob-leader-election").is_err());
    Ok(())
}

#[test]
fn the_values_schema_refuses_wrong_values_naming_the_field() -> Result<()> {
    let cases: [(&[&str], &str); 8] = [
        (
            &["--set-string", "replicaCount=abc"],
            "/replicaCount': got string, want integer",
        ),
        (
            &["--set", "colour=red"],
            "additional properties 'colour' not allowed",
        ),
        (
            &["--set", "image.pullPolicy=Sometimes"],
            "/image/pullPolicy",
        ),
        (&["--set", "metrics.port=70000"], "/metrics/port"),
        (
            &["--set", "leaderElection.enabled=yes-please"],
            "/leaderElection/enabled': got string, want boolean",
        ),
        (
            &["--set", "policy.s3CredentialsSecrets=some"],
            "/policy/s3CredentialsSecrets",
        ),
        (
            &["--set", "policy.allowedImage={x}"],
            "additional properties 'allowedImage' not allowed",
        ),
        (&["--set", "cleanup.maxAttempts=0"], "/cleanup/maxAttempts"),
    ];
    for which in HELMS {
        for (set, want) in cases {
            let chart = chart();
            let mut args = vec!["template", "aj", chart.as_str()];
            args.extend_from_slice(set);
            let (ok, out, err) = helm(which, &args)?;
            assert!(!ok, "{which} {set:?} accepted:\n{out}");
            assert!(
                err.contains("values don't meet the specifications of the schema"),
                "{which} {set:?}: {err}"
            );
            assert!(
                err.contains(want),
                "{which} {set:?}: want {want:?} in {err}"
            );
        }
        // Two replicas without leader election are refused by the template itself.
        let (ok, _, err) = helm(
            which,
            &[
                "template",
                "aj",
                &chart(),
                "--set",
                "replicaCount=2,leaderElection.enabled=false",
            ],
        )?;
        assert!(!ok);
        assert!(
            err.contains("replicaCount > 1 needs leaderElection.enabled=true"),
            "{which}: {err}"
        );
    }
    Ok(())
}

fn hadolint(dockerfile: &Path) -> Result<(bool, String)> {
    let program = locate::tool("hadolint")?;
    let out = Command::new(&program)
        .arg("--no-color")
        .arg(dockerfile)
        .output()
        .with_context(|| format!("run {}", program.display()))?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

#[test]
fn hadolint_finds_nothing_in_the_dockerfile() -> Result<()> {
    let dockerfile = repo("Dockerfile");
    let (ok, out) = hadolint(&dockerfile)?;
    assert!(ok && out.trim().is_empty(), "hadolint Dockerfile:\n{out}");

    // The linter is really looking: a Dockerfile with two classic mistakes gets both reported.
    let bad = std::env::temp_dir().join(format!("arrayjob-bad-{}.Dockerfile", std::process::id()));
    std::fs::write(&bad, "FROM debian:latest\nRUN cd /tmp && echo hi\n")?;
    let (ok, out) = hadolint(&bad)?;
    std::fs::remove_file(&bad)?;
    assert!(!ok, "{out}");
    assert!(out.contains("DL3007"), "latest tag: {out}");
    assert!(out.contains("DL3003"), "cd: {out}");

    // What the image is: the two binaries built with --locked (workers run `arrayjob worker`), run as
    // 65532.
    let text = std::fs::read_to_string(&dockerfile)?;
    assert!(text.contains("cargo build --release --locked"), "{text}");
    for bin in ["arrayjob", "arrayjob-operator"] {
        assert!(
            text.contains(&format!("--bin {bin} ")) || text.contains(&format!("--bin {bin}\n")),
            "{bin}"
        );
        assert!(text.contains(&format!("target/release/{bin}")), "{bin}");
    }
    let last_user = text
        .lines()
        .rfind(|l| l.starts_with("USER "))
        .context("USER")?;
    assert_eq!(last_user, "USER 65532:65532");
    Ok(())
}

/// `kubectl auth can-i VERB RESOURCE[/SUBRESOURCE] [-n NS | -A] --as=SA`: true for "yes", false for "no".
fn can_i(env: &TestEnv, sa: &str, verb: &str, resource: &str, ns: Option<&str>) -> Result<bool> {
    // `kubectl auth can-i VERB TYPE/NAME` reads what follows a slash as an object name, so a
    // subresource (`arrayjobs.arrayjob.dev/status`) goes to --subresource.
    let (resource, sub) = match resource.split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (resource, None),
    };
    let mut cmd = Command::new(&env.binaries().kubectl);
    cmd.arg(format!("--kubeconfig={}", env.kubeconfig().display()))
        .args(["auth", "can-i", verb, resource, &format!("--as={sa}")]);
    if let Some(sub) = sub {
        cmd.arg(format!("--subresource={sub}"));
    }
    match ns {
        Some(ns) => cmd.args(["-n", ns]),
        None => cmd.arg("--all-namespaces"),
    };
    let out = cmd.output()?;
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match answer.as_str() {
        "yes" if out.status.success() => Ok(true),
        "no" if !out.status.success() => Ok(false),
        _ => bail!(
            "kubectl auth can-i {verb} {resource}: {answer} / {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

#[tokio::test]
async fn installed_chart_grants_exactly_what_the_operator_needs() -> Result<()> {
    let env = TestEnv::shared()?;
    let release_guard = env.namespace("aj-system").await?;
    let jobs_guard = env.namespace("aj-jobs").await?;
    let other_guard = env.namespace("aj-other").await?;
    let (release_ns, jobs_ns, other_ns) =
        (release_guard.name(), jobs_guard.name(), other_guard.name());

    // 1. Cluster-wide, with Helm 3. replicaCount 0: the operator image maps to nothing here.
    let out = env.helm(&[
        "install",
        "aj-all",
        &chart(),
        "--namespace",
        release_ns,
        "--set",
        "replicaCount=0",
    ])?;
    assert!(out.contains("STATUS: deployed"), "{out}");
    assert!(out.contains("kubectl get arrayjobs"), "NOTES: {out}");
    assert!(
        out.contains("their S3 Secrets need the label arrayjob.dev/s3-credentials=true"),
        "NOTES: {out}"
    );
    let sa = format!("system:serviceaccount:{}:aj-all-arrayjob", release_ns);
    let dep: Value = serde_json::from_str(&env.kubectl(&[
        "get",
        "deployment",
        "aj-all-arrayjob",
        "-n",
        release_ns,
        "-o",
        "json",
    ])?)?;
    assert_eq!(dep["spec"]["replicas"], 0);
    let svc: Value = serde_json::from_str(&env.kubectl(&[
        "get",
        "service",
        "aj-all-arrayjob-metrics",
        "-n",
        release_ns,
        "-o",
        "json",
    ])?)?;
    assert_eq!(svc["spec"]["ports"][0]["port"], 8080);
    assert_eq!(svc["spec"]["ports"][0]["name"], "metrics");

    for (verb, res) in [
        ("create", "pods"),
        ("delete", "pods"),
        ("watch", "pods"),
        ("create", "services"),
        ("create", "secrets"),
        ("get", "secrets"),
        ("create", "configmaps"),
        ("patch", "networkpolicies.networking.k8s.io"),
        ("create", "networkpolicies.networking.k8s.io"),
        ("patch", "arrayjobs.arrayjob.dev/status"),
        ("update", "arrayjobs.arrayjob.dev/finalizers"),
        ("watch", "arrayjobs.arrayjob.dev"),
        ("create", "events"),
        ("create", "events.events.k8s.io"),
    ] {
        assert!(can_i(env, &sa, verb, res, Some(jobs_ns))?, "{verb} {res}");
    }
    assert!(
        can_i(env, &sa, "get", "secrets", None)?,
        "cluster-wide by default"
    );
    // Secrets by name only: never listed nor watched, here or anywhere.
    for (verb, ns) in [
        ("list", None),
        ("watch", None),
        ("list", Some(jobs_ns)),
        ("watch", Some(jobs_ns)),
        ("update", Some(jobs_ns)),
        ("delete", Some(jobs_ns)),
    ] {
        assert!(
            !can_i(env, &sa, verb, "secrets", ns)?,
            "must not: {verb} secrets in {ns:?}"
        );
    }
    for verb in ["get", "create", "update", "patch"] {
        assert!(
            can_i(
                env,
                &sa,
                verb,
                "leases.coordination.k8s.io",
                Some(release_ns)
            )?,
            "{verb} leases"
        );
    }
    for (verb, res, ns) in [
        ("update", "leases.coordination.k8s.io", Some(jobs_ns)),
        ("delete", "nodes", None),
        ("get", "nodes", None),
        ("*", "*", Some(jobs_ns)),
        ("delete", "arrayjobs.arrayjob.dev", Some(jobs_ns)),
        ("create", "arrayjobs.arrayjob.dev", Some(jobs_ns)),
        ("update", "pods", Some(jobs_ns)),
        ("create", "pods/exec", Some(jobs_ns)),
        ("get", "pods/log", Some(jobs_ns)),
        ("create", "pods/eviction", Some(jobs_ns)),
        ("patch", "pods/status", Some(jobs_ns)),
        ("delete", "arrayjobs.arrayjob.dev/status", Some(jobs_ns)),
        ("create", "deployments.apps", Some(jobs_ns)),
        ("list", "configmaps", Some(jobs_ns)),
        ("list", "services", Some(jobs_ns)),
        ("delete", "networkpolicies.networking.k8s.io", Some(jobs_ns)),
        (
            "create",
            "rolebindings.rbac.authorization.k8s.io",
            Some(jobs_ns),
        ),
        (
            "get",
            "customresourcedefinitions.apiextensions.k8s.io",
            None,
        ),
    ] {
        assert!(
            !can_i(env, &sa, verb, res, ns)?,
            "must not: {verb} {res} in {ns:?}"
        );
    }

    // 2. One namespace only, with Helm 4 (the CRD is there already; Helm leaves it).
    let out = env.helm4(&[
        "install",
        "aj-one",
        &chart(),
        "--namespace",
        release_ns,
        "--set",
        "replicaCount=0",
        "--set",
        &format!("watchNamespace={}", jobs_ns),
    ])?;
    assert!(out.contains("STATUS: deployed"), "{out}");
    let sa = format!("system:serviceaccount:{}:aj-one-arrayjob", release_ns);
    let roles = env.kubectl(&["get", "clusterroles", "-o", "name"])?;
    assert!(
        roles.contains("clusterrole.rbac.authorization.k8s.io/aj-all-arrayjob"),
        "{roles}"
    );
    assert!(
        !roles.contains("aj-one"),
        "no ClusterRole for a one-namespace release: {roles}"
    );
    for (verb, res) in [
        ("create", "pods"),
        ("create", "services"),
        ("create", "secrets"),
        ("get", "secrets"),
        ("patch", "networkpolicies.networking.k8s.io"),
        ("patch", "arrayjobs.arrayjob.dev/status"),
    ] {
        assert!(
            can_i(env, &sa, verb, res, Some(jobs_ns))?,
            "{verb} {res} in the watched namespace"
        );
    }
    assert!(!can_i(env, &sa, "list", "secrets", Some(jobs_ns))?);
    assert!(!can_i(env, &sa, "watch", "secrets", Some(jobs_ns))?);
    assert!(can_i(
        env,
        &sa,
        "update",
        "leases.coordination.k8s.io",
        Some(release_ns)
    )?);
    assert!(
        !can_i(env, &sa, "get", "secrets", None)?,
        "no cluster-wide secrets"
    );
    assert!(!can_i(env, &sa, "get", "secrets", Some(other_ns))?);
    assert!(!can_i(env, &sa, "create", "pods", Some(other_ns))?);
    assert!(!can_i(env, &sa, "list", "arrayjobs.arrayjob.dev", None)?);
    assert!(!can_i(env, &sa, "delete", "nodes", None)?);
    assert!(!can_i(env, &sa, "*", "*", Some(jobs_ns))?);

    let list = env.helm4(&["list", "--namespace", release_ns, "-o", "json"])?;
    let list: Value = serde_json::from_str(&list)?;
    let mut names: Vec<&str> = list
        .as_array()
        .context("helm list")?
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["aj-all", "aj-one"]);
    env.helm4(&["uninstall", "aj-one", "--namespace", release_ns])?;
    env.helm(&["uninstall", "aj-all", "--namespace", release_ns])?;
    // The API server's authorizer follows RBAC objects through a watch: allow it a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while can_i(env, &sa, "create", "pods", Some(jobs_ns))? {
        assert!(
            std::time::Instant::now() < deadline,
            "still allowed after uninstall"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Ok(())
}
