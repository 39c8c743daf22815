//! The documentation matches the code: every configuration key and every metric is documented.

use portcullis::config::RawConfig;
use portcullis::metrics::Metrics;
use std::path::Path;

fn doc(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(name),
    )
    .unwrap()
}

fn leaf_keys(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaf_keys(&key, v, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

#[test]
fn every_config_key_is_in_the_configuration_reference() {
    let reference = doc("configuration.md");
    let mut keys = Vec::new();
    leaf_keys(
        "",
        &toml::Value::try_from(RawConfig::default()).unwrap(),
        &mut keys,
    );
    keys.extend(
        [
            "routes.path",
            "routes.upstream",
            "routes.auth",
            "routes.roles",
            "routes.rate_limit",
        ]
        .map(String::from),
    );
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| {
            let short = k.rsplit('.').next().unwrap();
            !(reference.contains(&format!("`{k}`"))
                || (k.starts_with("routes.") && reference.contains(&format!("{short} ="))))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from docs/configuration.md: {missing:?}"
    );
}

#[test]
fn every_metric_is_in_the_operations_guide() {
    let guide = doc("operations.md");
    let metrics = Metrics::new().unwrap();
    // Vectors appear in the exposition once they have a label set.
    metrics.requests.with_label_values(&["/api", "2xx"]).inc();
    metrics.latency.with_label_values(&["/api"]).observe(0.001);
    metrics.gate.with_label_values(&["allow", "valid"]).inc();
    metrics
        .upstream_errors
        .with_label_values(&["/api", "timeout"])
        .inc();
    metrics.logins.with_label_values(&["success"]).inc();
    metrics.registrations.with_label_values(&["created"]).inc();
    metrics.mail.with_label_values(&["sent"]).inc();
    metrics
        .rate_limits
        .with_label_values(&["route", "allow"])
        .inc();
    let (_, text) = metrics.render();
    let text = String::from_utf8(text).unwrap();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    let missing: Vec<&&str> = names
        .iter()
        .filter(|n| !guide.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics missing from docs/operations.md: {missing:?}"
    );
}
