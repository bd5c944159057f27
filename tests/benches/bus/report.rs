//! The results: a table with pidbus's ratio to each rival, the issue's
//! targets with what this run reached, the JSON file, and an SVG chart of
//! the ratios.

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

/// Column order: pidbus first, then the client stacks the SDK is compared
/// with (the thin client, zbus), then the rivals from the physical limit
/// up.
const ORDER: [&str; 9] = [
    "pidbus",
    "pidbus_unchecked",
    "thin_client",
    "zbus",
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

/// A column's heading.
fn heading(key: &str) -> &str {
    match key {
        "pidbus_unchecked" => "unchecked",
        other => other,
    }
}

/// Prints the table on stdout: a column for each rival measured in any
/// scenario, in [`ORDER`].
pub fn print_table(scenarios: &[Scenario], machine: &str) {
    let columns: Vec<&str> = ORDER
        .into_iter()
        .filter(|key| scenarios.iter().any(|s| s.samples.contains_key(key)))
        .collect();
    let width = |key: &str| heading(key).len().max(10);
    let mut out = String::new();
    let _ = writeln!(out, "machine: {machine}");
    let _ = writeln!(
        out,
        "ratio = pidbus ÷ rival; latency and memory: lower is better, throughput: higher is better"
    );
    let _ = writeln!(
        out,
        "sdk_* rows: pidbus = the pidbus SDK on both ends (sdk_on_dbus_broker_*: on dbus-broker, beside zbus)"
    );
    let mut header = format!("{:<42}", "scenario");
    for key in &columns {
        let _ = write!(header, " {:>w$}", heading(key), w = width(key));
    }
    let _ = writeln!(out, "{header}   ratios");
    for s in scenarios {
        let results: BTreeMap<_, _> = s.results().into_iter().collect();
        let mut line = format!("{:<42}", s.label());
        for key in &columns {
            let cell = results
                .get(key)
                .map_or_else(|| "-".to_owned(), |v| fmt_value(*v));
            let _ = write!(line, " {cell:>w$}", w = width(key));
        }
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
        let _ = writeln!(out, "{line}   {}{face}", ratios.join(", "));
    }
    print!("{out}");
}

/// One of the targets: `ours ÷ against` in a scenario's metric is
/// at most `bound` where lower is better, at least `bound` where higher is.
struct Target {
    scenario: &'static str,
    metric: &'static str,
    ours: &'static str,
    against: &'static str,
    bound: f64,
}

/// The targets. The native socket must be at least as good as
/// pidbus's D-Bus socket in every scenario both run (same broker, same
/// client, only the socket differs); the rest are ratios to dbus-broker,
/// of the SDK to the thin client, and of the SDK to zbus on dbus-broker.
fn targets() -> Vec<Target> {
    let target = |scenario, metric, ours, against, bound| Target {
        scenario,
        metric,
        ours,
        against,
        bound,
    };
    let mut list: Vec<Target> = [
        ("roundtrip_64", "p50_us"),
        ("roundtrip_64", "p99_us"),
        ("roundtrip_4k", "p50_us"),
        ("roundtrip_4k", "p99_us"),
        ("pipelined_64", "calls_per_s"),
        ("connect", "connections_per_s"),
        ("conn_memory", "bytes_per_connection"),
        ("broadcast_100", "deliveries_per_s"),
        ("match_scale", "p50_us"),
        ("match_scale_empty", "p50_us"),
    ]
    .into_iter()
    .map(|(scenario, metric)| target(scenario, metric, "pidbus", "pidbus_dbus", 1.0))
    .collect();
    list.extend([
        target("roundtrip_64", "p50_us", "pidbus", "dbus_broker", 0.8),
        target("roundtrip_4k", "p50_us", "pidbus", "dbus_broker", 0.8),
        target("pipelined_64", "calls_per_s", "pidbus", "dbus_broker", 1.8),
        target(
            "broadcast_100",
            "deliveries_per_s",
            "pidbus",
            "dbus_broker",
            1.5,
        ),
        target(
            "conn_memory",
            "bytes_per_connection",
            "pidbus",
            "dbus_broker",
            0.8,
        ),
        target("connect", "connections_per_s", "pidbus", "dbus_broker", 1.0),
        target(
            "connect",
            "connections_per_s",
            "pidbus_dbus",
            "dbus_broker",
            1.0,
        ),
        target("sdk_roundtrip", "p50_us", "pidbus", "thin_client", 1.3),
        target(
            "sdk_on_dbus_broker_roundtrip",
            "p50_us",
            "pidbus",
            "zbus",
            1.0,
        ),
        target(
            "sdk_on_dbus_broker_pipelined",
            "calls_per_s",
            "pidbus",
            "zbus",
            1.0,
        ),
    ]);
    list
}

/// A target of a scenario this run measured, with the ratio it reached
/// (`None`: one side was not measured, e.g. a rival missing).
struct Verdict {
    target: Target,
    better: Better,
    reached: Option<f64>,
}

impl Verdict {
    fn met(&self) -> Option<bool> {
        let reached = self.reached?;
        Some(match self.better {
            Better::Lower => reached <= self.target.bound,
            Better::Higher => reached >= self.target.bound,
        })
    }

    fn comparison(&self) -> &'static str {
        match self.better {
            Better::Lower => "≤",
            Better::Higher => "≥",
        }
    }

    /// Who the ratio's numerator is: in the `sdk_*` scenarios the
    /// `pidbus` column is the SDK, elsewhere the native socket.
    fn ours(&self) -> &'static str {
        match self.target.ours {
            "pidbus" if self.target.scenario.starts_with("sdk_") => "sdk",
            "pidbus" => "native",
            other => other,
        }
    }
}

/// The targets of the scenarios in `scenarios` (those not run are left
/// out), with this run's ratios.
fn verdicts(scenarios: &[Scenario]) -> Vec<Verdict> {
    targets()
        .into_iter()
        .filter_map(|target| {
            let s = scenarios
                .iter()
                .find(|s| s.name == target.scenario && s.metric == target.metric)?;
            let results = s.results();
            let value = |key: &str| results.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
            let reached = match (value(target.ours), value(target.against)) {
                (Some(ours), Some(against)) if against > 0.0 => Some(ours / against),
                _ => None,
            };
            Some(Verdict {
                target,
                better: s.better,
                reached,
            })
        })
        .collect()
}

/// `ratio` with two decimals, or three when two would print the bound
/// itself for a ratio on the other side of it.
fn fmt_ratio(ratio: f64, bound: f64) -> String {
    let two = format!("{ratio:.2}");
    if ratio != bound && two == format!("{bound:.2}") {
        format!("{ratio:.3}")
    } else {
        two
    }
}

/// Prints the targets, each with the ratio this run reached and
/// whether it is met.
pub fn print_targets(scenarios: &[Scenario]) {
    let mut out = String::new();
    for v in verdicts(scenarios) {
        let t = &v.target;
        let what = format!("{} {} {} ÷ {}", t.scenario, t.metric, v.ours(), t.against);
        let (reached, status) = match (v.reached, v.met()) {
            (Some(r), Some(true)) => (format!("{}×", fmt_ratio(r, t.bound)), "met"),
            (Some(r), _) => (format!("{}×", fmt_ratio(r, t.bound)), "NOT met"),
            (None, _) => ("-".to_owned(), "not measured"),
        };
        let _ = writeln!(
            out,
            "target  {what:<54} {} {:.2}×  reached {reached:>7}  {status}",
            v.comparison(),
            t.bound
        );
    }
    print!("{out}");
}

/// The JSON document: `{"scenarios":[{"name","metric","better","results"}],
/// "targets":[{"scenario","metric","ours","against","comparison","bound",
/// "reached","met"}]}`. The latency scenarios report p50 under their name
/// and p99 as `<name>_p99`; a target's `reached` and `met` are null when
/// one side was not measured.
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
    let targets: Vec<_> = verdicts(scenarios)
        .iter()
        .map(|v| {
            json!({
                "scenario": v.target.scenario,
                "metric": v.target.metric,
                "ours": v.ours(),
                "against": v.target.against,
                "comparison": match v.better { Better::Lower => "<=", Better::Higher => ">=" },
                "bound": v.target.bound,
                "reached": v.reached,
                "met": v.met(),
            })
        })
        .collect();
    serde_json::to_string_pretty(&json!({ "scenarios": list, "targets": targets }))
        .unwrap_or_default()
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
