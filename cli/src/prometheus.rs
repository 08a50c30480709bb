//! The few Prometheus text-format samples `status` reads from sidecars.

use std::collections::BTreeMap;

/// Samples of one or more scrapes, summed on demand.
#[derive(Debug, Default)]
pub struct Samples {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Samples {
    /// Adds a scrape's `name{label="value",...} number` lines (comments skipped).
    pub fn add(&mut self, text: &str) {
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, labels(rest.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            self.samples.push((name.to_string(), labels, value));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The sum of `name`'s samples carrying every label of `with`.
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, labels, _)| {
                n == name
                    && with
                        .iter()
                        .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, value)| value)
            .sum()
    }
}

fn labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_of_several_scrapes_sum_by_label() {
        let mut samples = Samples::default();
        let scrape = "# HELP x y\n# TYPE streamgate_sidecar_forward_requests counter\nstreamgate_sidecar_forward_requests_total{upstream=\"upload\",code=\"OK\"} 3\nstreamgate_sidecar_forward_requests_total{upstream=\"upload\",code=\"UNAVAILABLE\"} 1\nstreamgate_sidecar_forward_requests_total{upstream=\"auth\",code=\"OK\"} 7\nstreamgate_sidecar_event_spool_events 2\n";
        samples.add(scrape);
        samples.add(scrape);
        let name = "streamgate_sidecar_forward_requests_total";
        assert_eq!(samples.sum(name, &[("upstream", "upload")]), 8.0);
        assert_eq!(
            samples.sum(name, &[("upstream", "upload"), ("code", "OK")]),
            6.0
        );
        assert_eq!(
            samples.sum("streamgate_sidecar_event_spool_events", &[]),
            4.0
        );
        assert_eq!(samples.sum("missing", &[]), 0.0);
    }

    #[test]
    fn quoted_label_values_may_hold_commas_quotes_and_braces() {
        let mut samples = Samples::default();
        samples.add("m{a=\"x,y\",b=\"say \\\"hi\\\" {}\"} 1\n");
        assert_eq!(
            samples.sum("m", &[("a", "x,y"), ("b", "say \"hi\" {}")]),
            1.0
        );
    }
}
