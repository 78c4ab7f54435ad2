//! Metrics against a real `aicore run`: calls arriving over NATS (as every game server's
//! do) are counted per domain, rpc and status on the gateway's one `/metrics`, and the
//! dashboard and alert rules in `ops/` name only metrics a live `/metrics` has — the
//! Grafana JSON loads, the alert YAML parses into rules, and every metric name in their
//! PromQL exists with samples, with histogram suffixes read against the family's type.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aicore_e2e::{Appliance, workspace};
use aicore_proto::aicore::auth::v1 as auth;
use aicore_proto::aicore::state_manager::v1 as sm;
use aicore_proto::{CallOptions, Code};
use bytes::Bytes;
use serde::Deserialize;

use crate::gateway::http::Http;

/// Series Prometheus makes itself for every scrape (not on the page).
const SYNTHETIC: &[&str] = &["up"];

/// The metric names a PromQL expression reads: identifiers that are neither functions or
/// aggregations (followed by `(`), keywords, label names of grouping clauses (`by`,
/// `without`, `on`, `ignoring`, `group_left`, `group_right`), nor inside label matchers
/// (`{…}`), range or subquery brackets (`[…]`), strings or Grafana variables (`$x`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: &[&str] = &[
        "and", "or", "unless", "bool", "offset", "inf", "nan", "atan2",
    ];
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let c: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let skip_ws = |mut i: usize| {
        while i < c.len() && c[i].is_whitespace() {
            i += 1;
        }
        i
    };
    // Index past the bracket closing the one at `i` (strings inside skipped).
    let close = |i: usize, open: char, shut: char| {
        let (mut depth, mut j) = (0usize, i);
        while j < c.len() {
            match c[j] {
                '"' | '\'' | '`' => {
                    let q = c[j];
                    j += 1;
                    while j < c.len() && c[j] != q {
                        j += if c[j] == '\\' { 2 } else { 1 };
                    }
                }
                x if x == open => depth += 1,
                x if x == shut => {
                    depth -= 1;
                    if depth == 0 {
                        return j + 1;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        c.len()
    };
    let ident = |x: char| x.is_ascii_alphanumeric() || x == '_' || x == ':';
    // The word starting at `i`, if one does.
    let word_at = |i: usize| -> String { c[i..].iter().take_while(|x| ident(**x)).collect() };
    let mut i = 0;
    while i < c.len() {
        match c[i] {
            '"' | '\'' | '`' => {
                let q = c[i];
                i += 1;
                while i < c.len() && c[i] != q {
                    i += if c[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
            }
            '{' => i = close(i, '{', '}'),
            '[' => i = close(i, '[', ']'),
            '$' => {
                i += 1;
                while i < c.len() && ident(c[i]) {
                    i += 1;
                }
            }
            x if x.is_ascii_digit() || x == '.' => {
                // A number or a duration (5m, 1e3, 0.99).
                while i < c.len() && (ident(c[i]) || c[i] == '.') {
                    i += 1;
                }
            }
            x if x.is_ascii_alphabetic() || x == '_' || x == ':' => {
                let start = i;
                while i < c.len() && ident(c[i]) {
                    i += 1;
                }
                let word: String = c[start..i].iter().collect();
                let next = skip_ws(i);
                // `sum by (…) (…)`: an aggregation with its grouping first.
                let grouped = AGGREGATIONS.contains(&word.as_str())
                    && matches!(word_at(next).as_str(), "by" | "without");
                let called = grouped || (next < c.len() && c[next] == '(');
                if GROUPING.contains(&word.as_str()) {
                    if called {
                        i = close(next, '(', ')');
                    }
                } else if !called && !KEYWORDS.contains(&word.to_lowercase().as_str()) {
                    names.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// A `/metrics` page: each family's type (`# TYPE`), and the names that have samples.
struct Page {
    families: BTreeMap<String, String>,
    samples: BTreeSet<String>,
}

fn parse_page(text: &str) -> Page {
    let mut families = BTreeMap::new();
    let mut samples = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            let before = families.insert(name.to_string(), kind.to_string());
            assert!(before.is_none(), "family {name} declared twice");
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line
                .split(['{', ' '])
                .next()
                .expect("a sample line starts with its name");
            samples.insert(name.to_string());
        }
    }
    Page { families, samples }
}

impl Page {
    /// The family a sample name belongs to: itself, or a histogram's `_bucket`, `_sum`
    /// or `_count` series (only when the family is a histogram).
    fn family_of(&self, name: &str) -> Option<&str> {
        if let Some((n, _)) = self.families.get_key_value(name) {
            return Some(n);
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let base = name.strip_suffix(suffix)?;
            let (n, kind) = self.families.get_key_value(base)?;
            (kind == "histogram").then_some(n.as_str())
        })
    }

    /// Why `name` cannot be read from this page, if it cannot.
    fn missing(&self, name: &str) -> Option<String> {
        match self.family_of(name) {
            None => Some(format!("{name}: no such family")),
            Some(f) if self.families[f] == "histogram" && f == name => {
                Some(format!("{name}: a histogram is read through _bucket/_sum/_count"))
            }
            Some(_) if !self.samples.contains(name) => Some(format!("{name}: no samples")),
            Some(_) => None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for", default)]
    for_: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

/// Every `expr` of the dashboard's panels (rows' nested panels too).
fn dashboard_exprs(panels: &serde_json::Value, out: &mut Vec<String>) {
    for p in panels.as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push(e.to_string());
            }
        }
        dashboard_exprs(&p["panels"], out);
    }
}

fn alert_rules() -> RuleFile {
    let text = std::fs::read_to_string(workspace().join("ops/prometheus/alerts.yml"))
        .expect("ops/prometheus/alerts.yml");
    serde_yaml_ng::from_str(&text).expect("alerts.yml parses into rule groups")
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(workspace().join("ops/grafana/aicore.json"))
        .expect("ops/grafana/aicore.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

#[test]
fn promql_names_are_read_past_functions_labels_and_grouping() {
    let names = metric_names(
        r#"sum by (domain, le) (rate(a_total{status=~"x|y}", rpc!="b_total"}[5m] offset 1h))
             / on(instance) group_left(role) b_info > bool 0.5 * 1e3 or vector(0)
             unless c:recorded + $__rate_interval_var - sum(d) without (le)"#,
    );
    let want: BTreeSet<String> = ["a_total", "b_info", "c:recorded", "d"]
        .map(String::from)
        .into();
    assert_eq!(names, want);
}

#[test]
fn histogram_suffixes_count_only_for_histograms() {
    let page = parse_page(
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n\
         # TYPE c_count counter\nc_count 2\n# TYPE g gauge\n",
    );
    assert_eq!(page.missing("h_bucket"), None);
    assert_eq!(page.missing("h_count"), None);
    assert_eq!(page.missing("c_count"), None);
    assert!(page.missing("h").is_some(), "a histogram's bare name");
    assert!(page.missing("c").is_some(), "a counter is no histogram");
    assert!(page.missing("g").is_some(), "a family with no samples");
    assert!(page.missing("nope_total").is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_over_nats_are_counted_and_ops_files_name_only_live_metrics() {
    let app = Appliance::start_serving(&["auth", "state_manager"]).await;
    let http = Http::new(&app.http_url);
    let opts = CallOptions::timeout(Duration::from_secs(10));

    // Over NATS, as a game server calls: a write, a read that finds it, one that does not.
    let state = sm::StateManagerClient::new(app.client().await);
    state
        .put(
            sm::PutRequest {
                player_id: "p1".into(),
                key: "k".into(),
                data: Bytes::from_static(b"v"),
                content_type: "application/octet-stream".into(),
                expected_version: None,
                idempotency_key: String::new(),
            },
            &opts,
        )
        .await
        .expect("put over NATS");
    let get = |key: &str| sm::GetRequest {
        player_id: "p1".into(),
        key: key.into(),
        version: 0,
    };
    for _ in 0..3 {
        state.get(get("k"), &opts).await.expect("get over NATS");
    }
    let missing = state.get(get("absent"), &opts).await.expect_err("absent");
    assert_eq!(missing.code, Code::NotFound);
    // Over HTTP: a registration (auth writes and queues events) and a bad request.
    let r = http
        .post(
            "/v1/auth/register",
            r#"{"username":"metrics_player","password":"violet-otter-lantern"}"#,
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = http.post("/v1/auth/login", r#"{"username":""}"#, &[]).await;
    assert_eq!(r.status, 400);
    auth::AuthClient::new(app.client().await)
        .validate(
            auth::ValidateRequest {
                access_token: "not-a-token".into(),
            },
            &opts,
        )
        .await
        .ok();

    let reply = http.get("/metrics").await;
    assert_eq!(reply.status, 200);
    let text = String::from_utf8_lossy(&reply.body).to_string();
    let page = parse_page(&text);
    for line in [
        r#"aicore_rpc_requests_total{domain="state_manager",rpc="put",status="ok"} 1"#,
        r#"aicore_rpc_requests_total{domain="state_manager",rpc="get",status="ok"} 3"#,
        r#"aicore_rpc_requests_total{domain="state_manager",rpc="get",status="not_found"} 1"#,
        r#"aicore_rpc_requests_total{domain="auth",rpc="login",status="invalid_argument"} 1"#,
        r#"aicore_rpc_duration_seconds_count{domain="state_manager",rpc="get"} 4"#,
        "aicore_nats_monitor_up 1",
        "aicore_store_read_only 0",
        r#"aicore_nats_child_state{state="running"} 1"#,
    ] {
        assert!(text.contains(line), "{line} not in /metrics:\n{text}");
    }
    // Every sample belongs to a declared family.
    for s in &page.samples {
        assert!(page.family_of(s).is_some(), "sample {s} has no # TYPE");
    }

    let mut exprs: Vec<(String, String)> = Vec::new();
    let dash = dashboard();
    assert!(dash["title"].is_string() && dash["uid"].is_string());
    let mut panel_exprs = Vec::new();
    dashboard_exprs(&dash["panels"], &mut panel_exprs);
    assert!(panel_exprs.len() >= 20, "the dashboard has its panels");
    exprs.extend(panel_exprs.into_iter().map(|e| ("dashboard".to_string(), e)));
    let rules = alert_rules();
    let mut alerts = BTreeSet::new();
    for g in &rules.groups {
        assert!(!g.name.is_empty());
        for r in &g.rules {
            assert!(alerts.insert(r.alert.clone()), "alert {} twice", r.alert);
            assert!(r.labels.contains_key("severity"), "{} has no severity", r.alert);
            assert!(r.annotations.contains_key("summary"), "{} has no summary", r.alert);
            if let Some(f) = &r.for_ {
                assert!(f.ends_with('m') || f.ends_with('s'), "{}: for {f}", r.alert);
            }
            exprs.push((format!("alert {}", r.alert), r.expr.clone()));
        }
    }
    for wanted in [
        "AicoreHighErrorRate",
        "AicoreHighLatencyP99",
        "AicoreStoreReadOnly",
        "AicoreDiskSpaceLow",
        "AicoreNatsCrashLoop",
        "AicoreDlqGrowing",
        "AicoreConsumerLag",
        "AicoreCertificateExpiringSoon",
    ] {
        assert!(alerts.contains(wanted), "no alert {wanted}");
    }

    let mut missing = Vec::new();
    let mut named = BTreeSet::new();
    for (whose, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{whose}: no metric in {expr:?}");
        for n in names {
            if SYNTHETIC.contains(&n.as_str()) {
                continue;
            }
            if let Some(why) = page.missing(&n) {
                missing.push(format!("{whose}: {why}"));
            }
            named.insert(n);
        }
    }
    assert!(
        missing.is_empty(),
        "named by ops/ but not live:\n{}\n\n/metrics:\n{text}",
        missing.join("\n")
    );
    // The files cover each part of the appliance.
    for prefix in [
        "aicore_rpc_",
        "aicore_gateway_",
        "aicore_store_",
        "aicore_outbox_",
        "aicore_nats_child_",
        "aicore_nats_stream_",
        "aicore_nats_consumer_",
        "aicore_cert_",
        "aicore_data_dir_",
    ] {
        assert!(
            named.iter().any(|n| n.starts_with(prefix)),
            "ops/ names nothing of {prefix}*"
        );
    }
}
