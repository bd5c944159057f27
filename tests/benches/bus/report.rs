//! The results: a table with pidbus's ratio to each rival, the JSON file,
//! and an SVG chart of the ratios.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::json;

/// Which way is better for a metric.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

/// One scenario's samples, by rival.
pub struct Scenario {
    pub name: &'static str,
    pub metric: &'static str,
    pub better: Better,
    samples: BTreeMap<&'static str, Vec<f64>>,
}

/// Column order: pidbus first, then the rivals from the physical limit up.
const ORDER: [&str; 8] = [
    "pidbus",
    "pidbus_unchecked",
    "thin_client",
    "raw_relay",
    "batch_relay",
    "pidbus_dbus",
    "dbus_broker",
    "dbus_daemon",
];

impl Scenario {
    pub fn new(name: &'static str, metric: &'static str, better: Better) -> Self {
        Scenario {
            name,
            metric,
            better,
            samples: BTreeMap::new(),
        }
    }

    pub fn add(&mut self, rival: &'static str, value: f64) {
        self.samples.entry(rival).or_default().push(value);
    }

    /// The median of each rival's repetitions, in column order.
    pub fn results(&self) -> Vec<(&'static str, f64)> {
        ORDER
            .iter()
            .filter_map(|key| {
                let mut values = self.samples.get(key)?.clone();
                values.sort_by(f64::total_cmp);
                Some((*key, values[values.len() / 2]))
            })
            .collect()
    }

    /// pidbus's value divided by each other rival's.
    pub fn ratios(&self) -> Vec<(&'static str, f64)> {
        self.ratios_of("pidbus", &ORDER)
    }

    /// pidbus's D-Bus face's value divided by the D-Bus brokers'.
    pub fn dbus_face_ratios(&self) -> Vec<(&'static str, f64)> {
        self.ratios_of("pidbus_dbus", &["dbus_broker", "dbus_daemon"])
    }

    fn ratios_of(&self, key: &str, against: &[&str]) -> Vec<(&'static str, f64)> {
        let results = self.results();
        let Some(&(_, ours)) = results.iter().find(|(k, _)| *k == key) else {
            return Vec::new();
        };
        results
            .iter()
            .filter(|(k, v)| *k != key && against.contains(k) && *v > 0.0)
            .map(|(k, v)| (*k, ours / v))
            .collect()
    }

    fn label(&self) -> String {
        format!("{} {}", self.name, self.metric)
    }
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Prints the table on stdout.
pub fn print_table(scenarios: &[Scenario], machine: &str) {
    let mut out = String::new();
    let _ = writeln!(out, "machine: {machine}");
    let _ = writeln!(
        out,
        "ratio = pidbus ÷ rival; latency and memory: lower is better, throughput: higher is better"
    );
    let _ = writeln!(
        out,
        "{:<36} {:>10} {:>10} {:>10} {:>11} {:>11} {:>11} {:>11}   ratios",
        "scenario",
        "pidbus",
        "unchecked",
        "raw_relay",
        "batch_relay",
        "pidbus_dbus",
        "dbus_broker",
        "dbus_daemon"
    );
    for s in scenarios {
        let results: BTreeMap<_, _> = s.results().into_iter().collect();
        let cell = |k: &str| {
            results
                .get(k)
                .map_or_else(|| "-".to_owned(), |v| fmt_value(*v))
        };
        let ratios: Vec<String> = s
            .ratios()
            .iter()
            .map(|(k, r)| format!("{k} {r:.2}"))
            .collect();
        let face: Vec<String> = s
            .dbus_face_ratios()
            .iter()
            .map(|(k, r)| format!("{k} {r:.2}"))
            .collect();
        let face = if face.is_empty() {
            String::new()
        } else {
            format!("; D-Bus face vs {}", face.join(", "))
        };
        let _ = writeln!(
            out,
            "{:<36} {:>10} {:>10} {:>10} {:>11} {:>11} {:>11} {:>11}   {}{face}",
            s.label(),
            cell("pidbus"),
            cell("pidbus_unchecked"),
            cell("raw_relay"),
            cell("batch_relay"),
            cell("pidbus_dbus"),
            cell("dbus_broker"),
            cell("dbus_daemon"),
            ratios.join(", ")
        );
    }
    print!("{out}");
}

/// The JSON document: `{"scenarios":[{"name","metric","better","results"}]}`.
/// The latency scenarios report p50 under their name and p99 as
/// `<name>_p99`.
pub fn json(scenarios: &[Scenario]) -> String {
    let list: Vec<_> = scenarios
        .iter()
        .map(|s| {
            let name = match s.metric {
                "p99_us" => format!("{}_p99", s.name),
                _ => s.name.to_owned(),
            };
            let results: serde_json::Map<_, _> = s
                .results()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), json!(v)))
                .collect();
            json!({
                "name": name,
                "metric": s.metric,
                "better": match s.better { Better::Lower => "lower", Better::Higher => "higher" },
                "results": results,
            })
        })
        .collect();
    serde_json::to_string_pretty(&json!({ "scenarios": list })).unwrap_or_default()
}

/// A horizontal bar chart of pidbus's ratio to each rival, with the line
/// of parity. Bars are drawn so that longer is better for pidbus.
pub fn svg(scenarios: &[Scenario]) -> String {
    let rows: Vec<(String, &str, f64, f64)> = scenarios
        .iter()
        .flat_map(|s| {
            s.ratios().into_iter().map(move |(k, r)| {
                let advantage = match s.better {
                    Better::Lower => 1.0 / r,
                    Better::Higher => r,
                };
                (s.label(), k, r, advantage)
            })
        })
        .collect();
    let (width, bar_h, left, scale) = (900.0, 18.0, 330.0, 120.0);
    let height = 40.0 + rows.len() as f64 * (bar_h + 4.0) + 20.0;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"10\" y=\"20\" font-size=\"14\">pidbus advantage over each rival (bar: how many times better; line: parity)</text>\n"
    );
    for (i, (label, rival, ratio, advantage)) in rows.iter().enumerate() {
        let y = 36.0 + i as f64 * (bar_h + 4.0);
        let w = (advantage.min(5.0) * scale).max(1.0);
        let colour = if *advantage >= 1.0 { "#3a7" } else { "#d54" };
        let _ = writeln!(
            out,
            "<text x=\"10\" y=\"{:.0}\">{label} vs {rival}</text><rect x=\"{left}\" y=\"{y:.0}\" width=\"{w:.0}\" height=\"{bar_h}\" fill=\"{colour}\"/><text x=\"{:.0}\" y=\"{:.0}\">ratio {ratio:.2} ({advantage:.2}×)</text>",
            y + 13.0,
            left + w + 6.0,
            y + 13.0
        );
    }
    let _ = writeln!(
        out,
        "<line x1=\"{x}\" y1=\"30\" x2=\"{x}\" y2=\"{}\" stroke=\"#000\" stroke-dasharray=\"4\"/>\n</svg>",
        height - 10.0,
        x = left + scale
    );
    out
}
