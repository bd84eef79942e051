//! The Prometheus text format as the benches read it: [`Exposition`] parses a `/metrics`
//! body into samples and answers the sums, single values and breakdowns the benches
//! print; [`count_series`] counts sample lines without parsing them; [`http_get`] fetches
//! a body (a `/metrics` scrape or `/readyz`) from a process on loopback.
//!
//! Both the daemon's format (prometheus-client's OpenMetrics text, `# EOF` included) and
//! Prometheus 0.0.4 text (blackbox_exporter's) are read. Label values are unescaped
//! (`\\`, `\"`, `\n`), so a value holding `",` or `}` stays one value; a timestamp or an
//! OpenMetrics exemplar after the value is ignored. A line that does not parse is skipped
//! rather than failing the scrape: the benches compare the numbers they need, and a
//! missing series shows there as a mismatch.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    /// In the order of the line.
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `key` (the first, should a line repeat it).
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the sample carries every one of `labels` (it may carry others).
    fn has_all(&self, labels: &[(&str, &str)]) -> bool {
        labels
            .iter()
            .all(|(k, v)| self.labels.iter().any(|(hk, hv)| hk == k && hv == v))
    }
}

/// The samples of a Prometheus text exposition, in the order of the text.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    samples: Vec<Sample>,
}

impl Exposition {
    /// Parses every sample line; comments (`# HELP`, `# TYPE`, `# EOF`), blank lines and
    /// lines that do not parse are left out.
    pub fn parse(text: &str) -> Exposition {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .filter_map(parse_sample)
            .collect();
        Exposition { samples }
    }

    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// The samples of `name` whose labels include all of `labels`, in the text's order.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |sample| sample.name == name && sample.has_all(labels))
    }

    /// Sum of the samples of `name` whose labels include all of `labels` (0 for none; NaN
    /// if one of them is NaN, as in PromQL).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels)
            .fold(0.0, |total, sample| total + sample.value)
    }

    /// The single sample of `name` matching `labels`; `None` for none or several, so that
    /// a filter too loose to name one series is not read as that series.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = self.matching(name, labels);
        let first = found.next()?;
        found.next().is_none().then_some(first.value)
    }

    /// `value=sum, …` over the samples of `name` matching `filter`, grouped by the value
    /// of `label` (empty where a sample lacks it), in order of first appearance; groups
    /// summing to 0 are left out, so that only what happened is printed.
    pub fn breakdown(&self, name: &str, label: &str, filter: &[(&str, &str)]) -> String {
        let mut groups: Vec<(&str, f64)> = Vec::new();
        for sample in self.matching(name, filter) {
            let key = sample.label(label).unwrap_or_default();
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, total)) => *total += sample.value,
                None => groups.push((key, sample.value)),
            }
        }
        groups
            .iter()
            .filter(|(_, total)| *total != 0.0)
            .map(|(key, total)| format!("{key}={total}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The `top` metric families with the most samples, as `name N, …` (most first, ties
    /// by name). A histogram's `_bucket`, `_sum` and `_count` lines count towards one
    /// family, as does a counter's `_total`.
    pub fn largest_families(&self, top: usize) -> String {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for Sample { name, .. } in &self.samples {
            let family = ["_bucket", "_sum", "_count", "_total"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            *counts.entry(family).or_default() += 1;
        }
        let mut counts: Vec<(&str, usize)> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        counts
            .iter()
            .take(top)
            .map(|(name, count)| format!("{name} {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Sample lines of a Prometheus text exposition (each histogram bucket is one series),
/// without parsing them: cheap enough to call on every scrape of 100,000+ series.
pub fn count_series(body: &str) -> usize {
    body.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .count()
}

/// GETs `path` from 127.0.0.1:`port` through the lab's loopback client, allowing
/// `timeout` for the answer (a large `/metrics` under load is slow); the error says what
/// failed, and a truncated chunked body counts as no answer (the daemon aborts a
/// scrape that way).
pub async fn http_get(port: u16, path: &str, timeout: Duration) -> Result<(u16, String)> {
    crate::http_get::get_within(port, path, None, timeout)
        .await
        .with_context(|| {
            format!("GET 127.0.0.1:{port}{path}: no complete HTTP answer within {timeout:?}")
        })
}

/// `name{key="value",…} value [timestamp | # exemplar]`; `None` for anything else.
fn parse_sample(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let (name, mut rest) = line.split_at(name_end);
    if name.is_empty() {
        return None;
    }
    let mut labels = Vec::new();
    if let Some(inside) = rest.strip_prefix('{') {
        (labels, rest) = parse_labels(inside)?;
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// The label pairs after a sample's `{`, and the text after the closing `}`.
fn parse_labels(mut rest: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        rest = rest.trim_start();
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after_key) = rest.split_once('=')?;
        let key = key.trim();
        // A name is letters, digits and `_`; anything else means the line is not one
        // sample's (e.g. an unterminated set running into the next pair).
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return None;
        }
        let (value, after_value) = unquote(after_key.trim_start().strip_prefix('"')?)?;
        labels.push((key.to_owned(), value));
        rest = after_value.trim_start();
        // The text format allows a trailing comma before `}`.
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// A label value from just after its opening quote: the value unescaped, and the text
/// after its closing quote. `None` when the quote is never closed.
fn unquote(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[at + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                escaped @ ('\\' | '"') => value.push(escaped),
                // Not an escape the format defines: kept as written.
                other => {
                    value.push('\\');
                    value.push(other);
                }
            },
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon-like exposition: HELP/TYPE comments, a counter, a histogram, labels
    /// needing escapes, a blank line and OpenMetrics' `# EOF`.
    const TEXT: &str = r#"# HELP selfheal_container_restarts Container restarts.
# TYPE selfheal_container_restarts counter
selfheal_container_restarts_total{namespace="shop",reason="OOMKilled"} 3
selfheal_container_restarts_total{namespace="shop",reason="Error"} 2
selfheal_container_restarts_total{namespace="batch",reason="OOMKilled"} 4
selfheal_container_restarts_total{namespace="batch",reason="Completed"} 0

# HELP selfheal_recovery_seconds Time to recover.
# TYPE selfheal_recovery_seconds histogram
selfheal_recovery_seconds_bucket{le="1.0"} 1
selfheal_recovery_seconds_bucket{le="+Inf"} 5
selfheal_recovery_seconds_sum 12.5
selfheal_recovery_seconds_count 5
selfheal_input_anomalies_total{kind="weird \"quoted\", comma",detail="a\\b}c\nd"} 7
# EOF
"#;

    fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        Sample {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value,
        }
    }

    #[test]
    fn parses_every_sample_line_and_skips_comments() {
        let exposition = Exposition::parse(TEXT);
        let names: Vec<&str> = exposition
            .samples()
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "selfheal_container_restarts_total",
                "selfheal_container_restarts_total",
                "selfheal_container_restarts_total",
                "selfheal_container_restarts_total",
                "selfheal_recovery_seconds_bucket",
                "selfheal_recovery_seconds_bucket",
                "selfheal_recovery_seconds_sum",
                "selfheal_recovery_seconds_count",
                "selfheal_input_anomalies_total",
            ]
        );
        assert_eq!(
            exposition.samples()[0],
            sample(
                "selfheal_container_restarts_total",
                &[("namespace", "shop"), ("reason", "OOMKilled")],
                3.0
            )
        );
        assert_eq!(
            exposition.samples()[6],
            sample("selfheal_recovery_seconds_sum", &[], 12.5)
        );
        // The comments are what count_series skips too, without parsing.
        assert_eq!(count_series(TEXT), 9);
    }

    #[test]
    fn unescapes_quotes_commas_backslashes_and_newlines_in_label_values() {
        let exposition = Exposition::parse(TEXT);
        let anomaly = exposition
            .matching("selfheal_input_anomalies_total", &[])
            .next()
            .expect("the escaped line parses");
        assert_eq!(
            anomaly.labels,
            [
                ("kind".to_owned(), "weird \"quoted\", comma".to_owned()),
                ("detail".to_owned(), "a\\b}c\nd".to_owned()),
            ]
        );
        assert_eq!(anomaly.value, 7.0);
        assert_eq!(
            exposition.sum(
                "selfheal_input_anomalies_total",
                &[("kind", "weird \"quoted\", comma")]
            ),
            7.0
        );
    }

    #[test]
    fn bucket_bounds_are_labels_and_total_is_part_of_the_name() {
        let exposition = Exposition::parse(TEXT);
        assert_eq!(
            exposition.get("selfheal_recovery_seconds_bucket", &[("le", "+Inf")]),
            Some(5.0)
        );
        assert_eq!(
            exposition.get("selfheal_recovery_seconds_bucket", &[("le", "1.0")]),
            Some(1.0)
        );
        // The family name alone matches no line: `_total` is not stripped by the parser.
        assert_eq!(exposition.sum("selfheal_container_restarts", &[]), 0.0);
        assert_eq!(
            exposition.largest_families(2),
            "selfheal_container_restarts 4, selfheal_recovery_seconds 4"
        );
        assert_eq!(
            exposition.largest_families(5),
            "selfheal_container_restarts 4, selfheal_recovery_seconds 4, \
             selfheal_input_anomalies 1"
        );
    }

    #[test]
    fn sum_with_and_without_label_filters() {
        let exposition = Exposition::parse(TEXT);
        let restarts = "selfheal_container_restarts_total";
        assert_eq!(exposition.sum(restarts, &[]), 9.0);
        assert_eq!(exposition.sum(restarts, &[("reason", "OOMKilled")]), 7.0);
        assert_eq!(
            exposition.sum(restarts, &[("reason", "OOMKilled"), ("namespace", "batch")]),
            4.0
        );
        // Every filter must hold, not any.
        assert_eq!(
            exposition.sum(restarts, &[("reason", "Error"), ("namespace", "batch")]),
            0.0
        );
        assert_eq!(exposition.sum(restarts, &[("no_such_label", "x")]), 0.0);
        assert_eq!(exposition.sum("absent_total", &[]), 0.0);
    }

    #[test]
    fn get_wants_exactly_one_sample() {
        let exposition = Exposition::parse(TEXT);
        let restarts = "selfheal_container_restarts_total";
        assert_eq!(exposition.get(restarts, &[("reason", "OOMKilled")]), None);
        assert_eq!(exposition.get(restarts, &[("reason", "Error")]), Some(2.0));
        assert_eq!(exposition.get(restarts, &[("reason", "Unknown")]), None);
    }

    #[test]
    fn breakdown_groups_in_order_of_appearance_and_drops_zeros() {
        let exposition = Exposition::parse(TEXT);
        let restarts = "selfheal_container_restarts_total";
        assert_eq!(
            exposition.breakdown(restarts, "reason", &[]),
            "OOMKilled=7, Error=2"
        );
        assert_eq!(
            exposition.breakdown(restarts, "reason", &[("namespace", "batch")]),
            "OOMKilled=4"
        );
        assert_eq!(
            exposition.breakdown("selfheal_recovery_seconds_sum", "le", &[]),
            "=12.5"
        );
    }

    #[test]
    fn nan_and_infinities_are_values() {
        let exposition = Exposition::parse(
            "up{job=\"a\"} NaN\nup{job=\"b\"} 1\nlimit{side=\"hi\"} +Inf\nlimit{side=\"lo\"} -Inf\n",
        );
        assert!(
            exposition
                .get("up", &[("job", "a")])
                .is_some_and(f64::is_nan)
        );
        assert!(exposition.sum("up", &[]).is_nan());
        assert_eq!(exposition.sum("up", &[("job", "b")]), 1.0);
        assert_eq!(
            exposition.get("limit", &[("side", "hi")]),
            Some(f64::INFINITY)
        );
        assert_eq!(
            exposition.get("limit", &[("side", "lo")]),
            Some(f64::NEG_INFINITY)
        );
    }

    #[test]
    fn timestamps_exemplars_and_odd_spacing_do_not_change_the_value() {
        let exposition = Exposition::parse(concat!(
            "a_total 5 1700000000000\n",
            "b_bucket{le=\"0.5\"} 8 # {trace_id=\"x y\"} 0.25 1700000000.5\n",
            "  c{ k = \"v\" , } 1e+03\n",
            "d{k=\"v\"}\t2\n",
        ));
        assert_eq!(exposition.get("a_total", &[]), Some(5.0));
        assert_eq!(exposition.get("b_bucket", &[("le", "0.5")]), Some(8.0));
        assert_eq!(exposition.get("c", &[("k", "v")]), Some(1000.0));
        assert_eq!(exposition.get("d", &[("k", "v")]), Some(2.0));
    }

    #[test]
    fn malformed_lines_are_skipped_not_misread() {
        let exposition = Exposition::parse(concat!(
            "no_value\n",
            "bad_value{k=\"v\"} twelve\n",
            "unterminated{k=\"v} 3\n",
            "unquoted{k=v} 4\n",
            "{k=\"v\"} 5\n",
            "good{k=\"v\"} 6\n",
        ));
        assert_eq!(
            exposition.samples(),
            [sample("good", &[("k", "v")], 6.0)].as_slice()
        );
    }
}
