//! Reports of a suite run: the summary table for the terminal, JSON (the contract
//! keys and more), JUnit XML for CI dashboards, and one self-contained HTML file with inline
//! SVG plots (no script, no external resource).

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::metrics::{round, AttackWindow, ScenarioMetrics, Timeline};
use super::spec::Scenario;

/// One scenario's result.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub name: String,
    /// The file it came from.
    pub file: String,
    /// Its description.
    pub description: String,
    /// The seed it ran with.
    pub seed: u64,
    /// Its duration.
    pub duration_s: f64,
    /// `in-process`, the external rampart server's address, or `tcp://ADDR (DRIVER)`.
    pub target: String,
    /// Every connection of the run (legit, control and attacker) went through TLS.
    pub tls: bool,
    /// Attack kinds, in file order.
    pub attacks: Vec<String>,
    /// Every expectation held (true for a skipped scenario, which judged nothing).
    pub passed: bool,
    /// Why the scenario did not run (a fleet scenario without a database, say); absent when
    /// it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// One line per broken expectation (or the setup error).
    pub failures: Vec<String>,
    /// The numbers (block metrics `null` for a target without a firewall).
    #[serde(serialize_with = "super::metrics::serialize_metrics")]
    pub metrics: ScenarioMetrics,
    /// Per-second series for plots.
    pub timeline: Timeline,
    /// Wall-clock time of the whole run, setup and read-back included.
    pub wall_s: f64,
    /// The kept data directory (`--record`), if any.
    pub data_dir: Option<String>,
    /// How the simulation ran (`--sim`); absent on real sockets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sim: Option<SimReport>,
    /// The faults a simulated run injected (`[[sim.fault]]`), in order; absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<super::faults::FaultReport>,
}

/// What a simulated run used, and how to run it again.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SimReport {
    /// The argon2 memory cost the run hashed with, KiB.
    pub argon2_memory_kib: u32,
    /// The argon2 passes.
    pub argon2_iterations: u32,
    /// The argon2 lanes.
    pub argon2_parallelism: u32,
    /// Virtual milliseconds one verification took.
    pub argon2_virtual_ms: u64,
    /// How the simulated network's links behaved.
    pub network: super::spec::NetworkSpec,
    /// Links of their own for some hosts (`[[sim.link]]`); absent when none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<super::spec::LinkSpec>,
    /// The command that replays this run exactly.
    pub replay: String,
}

/// Report fields measured on the host rather than in the scenario: a simulated run with the
/// same seed reproduces every other field exactly (docs/SIMULATION.md). `rss_mb` is the
/// timeline's series.
pub const HOST_FIELDS: &[&str] = &[
    "wall_s",
    "rss_start_mb",
    "peak_rss_mb",
    "rss_growth_mb",
    "rss_mb",
];

impl ScenarioReport {
    /// A report from measurements and failures.
    pub fn new(
        scenario: &Scenario,
        metrics: ScenarioMetrics,
        timeline: Timeline,
        failures: Vec<String>,
    ) -> ScenarioReport {
        ScenarioReport {
            name: scenario.name().to_string(),
            file: scenario.file().display().to_string(),
            description: scenario.description().to_string(),
            seed: scenario.seed(),
            duration_s: round(scenario.duration().as_secs_f64(), 3),
            target: "in-process".into(),
            tls: scenario.tls(),
            attacks: scenario
                .attack_kinds()
                .iter()
                .map(|k| k.as_str().to_string())
                .collect(),
            passed: failures.is_empty(),
            skipped: None,
            failures,
            metrics,
            timeline,
            wall_s: 0.0,
            data_dir: None,
            sim: None,
            faults: Vec::new(),
        }
    }

    /// A report for a scenario that did not run, and why: passed, judging nothing.
    pub fn skipped(scenario: &Scenario, why: String) -> ScenarioReport {
        let mut report = ScenarioReport::new(
            scenario,
            ScenarioMetrics::default(),
            Timeline::default(),
            Vec::new(),
        );
        report.skipped = Some(why);
        report
    }

    /// A failed report for a scenario that could not be set up.
    pub fn setup_failed(scenario: &Scenario, why: String) -> ScenarioReport {
        ScenarioReport::new(
            scenario,
            ScenarioMetrics::default(),
            Timeline::default(),
            vec![why],
        )
    }
}

/// The result of a suite.
#[derive(Debug, Clone, Serialize)]
pub struct SuiteReport {
    /// Every scenario passed.
    pub passed: bool,
    /// Wall-clock time of the suite.
    pub wall_s: f64,
    /// Per scenario, in run order.
    pub scenarios: Vec<ScenarioReport>,
}

impl SuiteReport {
    /// Collects scenario reports.
    pub fn new(scenarios: Vec<ScenarioReport>, wall: Duration) -> SuiteReport {
        SuiteReport {
            passed: scenarios.iter().all(|s| s.passed),
            wall_s: round(wall.as_secs_f64(), 2),
            scenarios,
        }
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    /// Writes [`SuiteReport::to_json`] to `path`.
    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_json() + "\n")
    }

    /// Writes [`SuiteReport::to_junit`] to `path`.
    pub fn write_junit(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_junit())
    }

    /// Writes [`SuiteReport::to_html`] to `path`.
    pub fn write_html(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_html())
    }

    /// The terminal summary: one row per scenario, then the failures.
    pub fn summary_table(&self) -> String {
        let header = [
            "SCENARIO", "ATTACKS", "GOODPUT", "P50 MS", "P99 MS", "LOST", "BLOCK S", "BLOCKED",
            "FALSE", "MODEL", "SHED", "RSS MIB", "VERDICT",
        ];
        let mut rows: Vec<[String; 13]> = vec![header.map(String::from)];
        // A seed sweep runs a scenario several times: its rows carry their seeds.
        let mut runs: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for s in &self.scenarios {
            *runs.entry(s.name.as_str()).or_default() += 1;
        }
        for s in &self.scenarios {
            let m = &s.metrics;
            let mut name = s.name.clone();
            if runs.get(s.name.as_str()).is_some_and(|&n| n > 1) {
                name.push_str(&format!(" #{}", s.seed));
            }
            rows.push([
                if s.tls { format!("{name} (tls)") } else { name },
                if s.attacks.is_empty() {
                    "-".into()
                } else {
                    s.attacks.join(",")
                },
                format!("{:.3}", m.legit_goodput),
                format!("{:.1}", m.latency_p50_ms),
                format!("{:.1}", m.latency_p99_ms),
                m.legit_lost.to_string(),
                m.block_text(|| m.time_to_block_s.map_or("-".into(), |t| format!("{t:.2}"))),
                m.block_text(|| {
                    if m.attack_sources == 0 {
                        "-".into()
                    } else {
                        format!("{}/{}", m.blocked_sources, m.attack_sources)
                    }
                }),
                m.block_text(|| m.false_blocks.to_string()),
                // Blocks the model contributed to, or `-` without an in-process model.
                m.model_blocks.map_or("-".into(), |n| n.to_string()),
                m.recorder_shed.map_or("-".into(), |n| n.to_string()),
                m.peak_rss_mb.map_or("-".into(), |r| format!("{r:.0}")),
                if s.skipped.is_some() {
                    "skip".into()
                } else if s.passed {
                    "pass".into()
                } else {
                    "FAIL".into()
                },
            ]);
        }
        let mut widths = [0usize; 13];
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in &rows {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                // Text columns left-aligned, numbers right-aligned.
                if i < 2 || i == 12 {
                    let _ = write!(line, "{cell:<w$}  ");
                } else {
                    let _ = write!(line, "{cell:>w$}  ");
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        let ran = self.scenarios.iter().find(|s| s.skipped.is_none());
        if let Some(first) = ran.filter(|s| !s.metrics.blocks_unknown) {
            let _ = writeln!(
                out,
                "\ndetection model: {} (MODEL: blocks it had a hand in; SHED: activity events the recorder shed)",
                first.metrics.model
            );
        }
        if self.scenarios.iter().any(|s| s.metrics.blocks_unknown) {
            let _ = writeln!(
                out,
                "\nn/a: a tcp:// target has no firewall or detection model to ask"
            );
        }
        let failed: Vec<&ScenarioReport> = self.scenarios.iter().filter(|s| !s.passed).collect();
        let skipped: Vec<&ScenarioReport> = self
            .scenarios
            .iter()
            .filter(|s| s.skipped.is_some())
            .collect();
        let _ = writeln!(
            out,
            "\n{} of {} scenarios passed in {:.1} s",
            self.scenarios.len() - failed.len() - skipped.len(),
            self.scenarios.len() - skipped.len(),
            self.wall_s
        );
        let mut notes: Vec<(&str, &str)> = skipped
            .iter()
            .filter_map(|s| Some((s.name.as_str(), s.skipped.as_deref()?)))
            .collect();
        // A seed sweep skips a scenario once per seed: one line says it.
        notes.dedup();
        for (name, why) in notes {
            let _ = writeln!(out, "SKIP {name}: {why}");
        }
        for s in failed {
            for f in &s.failures {
                let _ = writeln!(out, "FAIL {}: {f}", s.name);
            }
            if let Some(sim) = &s.sim {
                let _ = writeln!(out, "REPLAY {}: {}", s.name, sim.replay);
            }
        }
        out
    }

    /// JUnit XML: one testsuite, one testcase per scenario with its failures and metrics.
    pub fn to_junit(&self) -> String {
        let failures = self.scenarios.iter().filter(|s| !s.passed).count();
        let skipped = self
            .scenarios
            .iter()
            .filter(|s| s.skipped.is_some())
            .count();
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            x,
            "<testsuites name=\"rampart scenarios\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{:.3}\">",
            self.scenarios.len(),
            self.wall_s
        );
        let _ = writeln!(
            x,
            "  <testsuite name=\"rampart.scenario\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"{skipped}\" time=\"{:.3}\">",
            self.scenarios.len(),
            self.wall_s
        );
        for s in &self.scenarios {
            let _ = writeln!(
                x,
                "    <testcase name=\"{}\" classname=\"rampart.scenario\" file=\"{}\" time=\"{:.3}\">",
                xml(&s.name),
                xml(&s.file),
                s.wall_s
            );
            if let Some(why) = &s.skipped {
                let _ = writeln!(x, "      <skipped message=\"{}\"/>", xml(why));
            }
            if !s.passed {
                let first = s.failures.first().map(String::as_str).unwrap_or("failed");
                let _ = writeln!(
                    x,
                    "      <failure type=\"expectation\" message=\"{}\">{}</failure>",
                    xml(first),
                    xml(&s.failures.join("\n"))
                );
            }
            let metrics = s.metrics.to_json_value().to_string();
            let _ = writeln!(
                x,
                "      <system-out>seed {} attacks [{}]\n{}</system-out>",
                s.seed,
                xml(&s.attacks.join(", ")),
                xml(&metrics)
            );
            x.push_str("    </testcase>\n");
        }
        x.push_str("  </testsuite>\n</testsuites>\n");
        x
    }

    /// One self-contained HTML page: a summary table, then per scenario its failures, key
    /// numbers and plots (goodput, latency, memory, blocked sources) with attack windows shaded.
    pub fn to_html(&self) -> String {
        let mut h = String::new();
        h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>rampart scenario report</title>\n");
        h.push_str(STYLE);
        h.push_str("</head>\n<body>\n<h1>rampart scenario report</h1>\n");
        let passed = self.scenarios.iter().filter(|s| s.passed).count();
        let _ = writeln!(
            h,
            "<p class=\"lead {}\">{passed} of {} scenarios passed &middot; {:.1} s</p>",
            if self.passed { "pass" } else { "fail" },
            self.scenarios.len(),
            self.wall_s
        );
        h.push_str("<table class=\"summary\">\n<tr><th>scenario</th><th>attacks</th><th>goodput</th><th>p50 ms</th><th>p99 ms</th><th>lost</th><th>time to block s</th><th>blocked</th><th>false blocks</th><th>peak RSS MiB</th><th>verdict</th></tr>\n");
        for s in &self.scenarios {
            let m = &s.metrics;
            let _ = writeln!(
                h,
                "<tr><td><a href=\"#s-{}\">{}</a></td><td>{}</td><td>{:.3}</td><td>{:.1}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
                xml(&s.name),
                xml(&s.name),
                xml(&if s.attacks.is_empty() { "-".to_string() } else { s.attacks.join(", ") }),
                m.legit_goodput,
                m.latency_p50_ms,
                m.latency_p99_ms,
                m.legit_lost,
                m.block_text(|| m.time_to_block_s.map_or("-".into(), |t| format!("{t:.2}"))),
                m.block_text(|| if m.attack_sources == 0 { "-".into() } else { format!("{}/{}", m.blocked_sources, m.attack_sources) }),
                m.block_text(|| m.false_blocks.to_string()),
                m.peak_rss_mb.map_or("-".into(), |r| format!("{r:.0}")),
                if s.passed { "pass" } else { "fail" },
                if s.passed { "pass" } else { "FAIL" },
            );
        }
        h.push_str("</table>\n");
        for s in &self.scenarios {
            scenario_html(&mut h, s);
        }
        h.push_str("<p class=\"foot\">Latency is measured from each operation's scheduled time (open loop). Shaded bands are attack windows.</p>\n</body>\n</html>\n");
        h
    }
}

const STYLE: &str = "<style>
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1d2330;background:#fbfbfd}
h1{margin:0 0 4px 0;font-size:24px}
h2{font-size:19px;margin:0 0 4px 0}
.lead{font-size:15px;margin:0 0 14px 0}
.lead.pass{color:#177245}.lead.fail{color:#b3261e}
table{border-collapse:collapse;font-size:13px}
td,th{padding:3px 9px;border-bottom:1px solid #e3e5ea;text-align:right}
td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left}
th{background:#eef0f4}
td.pass{color:#177245;font-weight:600}td.fail{color:#b3261e;font-weight:700}
section{background:#fff;border:1px solid #e3e5ea;border-radius:8px;padding:14px 16px;margin:18px 0}
.badge{font-size:12px;padding:2px 8px;border-radius:10px;color:#fff;vertical-align:middle}
.badge.pass{background:#1f8a50}.badge.fail{background:#c0392b}
.desc{color:#555c6b;margin:2px 0 8px 0;font-size:13px}
ul.failures{color:#b3261e;font-size:13px;margin:6px 0}
.kv{display:flex;flex-wrap:wrap;gap:6px 18px;font-size:13px;margin:6px 0 10px 0}
.kv b{font-weight:600}
.charts{display:flex;flex-wrap:wrap;gap:10px}
svg{background:#fff;border:1px solid #eceef2;border-radius:4px}
.foot{color:#777;font-size:12px}
details{font-size:13px;margin-top:8px}
</style>
";

fn scenario_html(h: &mut String, s: &ScenarioReport) {
    let m = &s.metrics;
    let (cls, verdict) = if s.passed {
        ("pass", "PASS")
    } else {
        ("fail", "FAIL")
    };
    let _ = writeln!(h, "<section id=\"s-{}\">", xml(&s.name));
    let _ = writeln!(
        h,
        "<h2>{} <span class=\"badge {cls}\">{verdict}</span></h2>",
        xml(&s.name)
    );
    let _ = writeln!(
        h,
        "<p class=\"desc\">{} &middot; {} &middot; seed {} &middot; {} s &middot; {}{}</p>",
        xml(&s.description),
        xml(&s.file),
        s.seed,
        s.duration_s,
        xml(&s.target),
        if s.tls { " &middot; TLS" } else { "" }
    );
    if !s.failures.is_empty() {
        h.push_str("<ul class=\"failures\">");
        for f in &s.failures {
            let _ = write!(h, "<li>{}</li>", xml(f));
        }
        h.push_str("</ul>\n");
    }
    let kv = [
        (
            "legit",
            format!("{}/{} delivered", m.legit_delivered, m.legit_attempted),
        ),
        ("goodput", format!("{:.3}", m.legit_goodput)),
        (
            "latency p50/p99",
            format!("{:.1} / {:.1} ms", m.latency_p50_ms, m.latency_p99_ms),
        ),
        ("lost", m.legit_lost.to_string()),
        (
            "legit logins",
            format!("{} refused of {}", m.legit_login_refusals, m.legit_logins),
        ),
        (
            "blocked",
            m.block_text(|| {
                format!(
                    "{}/{} sources, slowest {}",
                    m.blocked_sources,
                    m.attack_sources,
                    m.time_to_block_s
                        .map_or("-".into(), |t| format!("{t:.2} s"))
                )
            }),
        ),
        ("false blocks", m.block_text(|| m.false_blocks.to_string())),
        (
            "peak RSS",
            m.peak_rss_mb.map_or("-".into(), |r| format!("{r:.1} MiB")),
        ),
        (
            "panics",
            m.panics_contained.map_or("-".into(), |p| p.to_string()),
        ),
        ("canary leaks", m.canary_leaks.to_string()),
        (
            "refused at accept",
            m.connections_refused.map_or("-".into(), |r| r.to_string()),
        ),
        ("server alive", m.server_alive.to_string()),
    ];
    h.push_str("<div class=\"kv\">");
    for (k, v) in kv {
        let _ = write!(h, "<span>{k}: <b>{}</b></span>", xml(&v));
    }
    h.push_str("</div>\n<div class=\"charts\">\n");
    let t = &s.timeline;
    let x_max = s.duration_s.max(1.0);
    let centers = |v: &[f64]| -> Vec<(f64, f64)> {
        v.iter()
            .enumerate()
            .map(|(i, y)| (i as f64 + 0.5, *y))
            .collect()
    };
    h.push_str(&chart(
        "legit goodput (delivered / attempted, per second)",
        x_max,
        Some(1.05),
        &[Series {
            label: "goodput",
            color: "#1f77b4",
            points: centers(&t.goodput),
        }],
        &t.attack_windows,
    ));
    h.push_str(&chart(
        "legit latency (ms, from scheduled time)",
        x_max,
        None,
        &[
            Series {
                label: "p50",
                color: "#2ca02c",
                points: centers(&t.latency_p50_ms),
            },
            Series {
                label: "p99",
                color: "#d62728",
                points: centers(&t.latency_p99_ms),
            },
        ],
        &t.attack_windows,
    ));
    h.push_str(&chart(
        "memory (RSS, MiB)",
        x_max,
        None,
        &[Series {
            label: "RSS",
            color: "#9467bd",
            points: t.rss_mb.clone(),
        }],
        &t.attack_windows,
    ));
    if !t.attack_windows.is_empty() {
        h.push_str(&chart(
            "attack sources refused at accept",
            x_max,
            None,
            &[Series {
                label: "blocked",
                color: "#ff7f0e",
                points: t
                    .blocked_sources
                    .iter()
                    .map(|(x, y)| (*x, *y as f64))
                    .collect(),
            }],
            &t.attack_windows,
        ));
    }
    h.push_str("</div>\n");
    if !m.attacks.is_empty() {
        h.push_str("<details open><summary>attacks</summary><table><tr><th>kind</th><th>start s</th><th>sources</th><th>blocked</th><th>time to block p50 / max s</th><th>connects</th><th>refused</th><th>frames</th><th>bytes</th><th>leaks</th><th>notes</th></tr>\n");
        for a in &m.attacks {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td style=\"text-align:left\">{}</td></tr>",
                xml(&a.kind),
                a.start_s,
                a.sources_used,
                m.block_text(|| a.sources_blocked.to_string()),
                m.block_text(|| a.time_to_block_p50_s.map_or("-".into(), |t| format!("{t:.2}"))),
                m.block_text(|| a.time_to_block_max_s.map_or("-".into(), |t| format!("{t:.2}"))),
                a.connects,
                a.refused,
                a.frames_sent,
                a.bytes_sent,
                a.canary_leaks,
                xml(&a.notes.join("; "))
            );
        }
        h.push_str("</table></details>\n");
    }
    if let Some(rejected) = &m.frames_rejected {
        if !rejected.is_empty() {
            let list: Vec<String> = rejected.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let _ = writeln!(
                h,
                "<p class=\"desc\">server rejected: {}</p>",
                xml(&list.join(", "))
            );
        }
    }
    if !m.legit_errors.is_empty() {
        let list: Vec<String> = m
            .legit_errors
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            h,
            "<p class=\"desc\">legit errors: {}</p>",
            xml(&list.join(", "))
        );
    }
    h.push_str("</section>\n");
}

/// One line on a chart.
struct Series<'a> {
    label: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

const W: f64 = 440.0;
const H: f64 = 220.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 30.0;

/// A "nice" tick step (1, 2 or 5 times a power of ten) for about `ticks` ticks over `range`.
fn nice_step(range: f64, ticks: f64) -> f64 {
    if !(range.is_finite() && range > 0.0) {
        return 1.0;
    }
    let raw = range / ticks;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn fmt_tick(v: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{v:.0}")
    } else if step >= 0.1 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// An SVG line chart with axes, grid, legend and shaded attack windows.
fn chart(
    title: &str,
    x_max: f64,
    y_max: Option<f64>,
    series: &[Series<'_>],
    windows: &[AttackWindow],
) -> String {
    let data_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|y| y.is_finite())
        .fold(0.0f64, f64::max);
    let y_top = match y_max {
        Some(y) => y,
        None => {
            let step = nice_step(data_max.max(1e-9) * 1.1, 4.0);
            ((data_max * 1.1) / step).ceil().max(1.0) * step
        }
    };
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let sx = |x: f64| LEFT + (x / x_max).clamp(0.0, 1.0) * pw;
    let sy = |y: f64| TOP + ph - (y / y_top).clamp(0.0, 1.0) * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"system-ui,sans-serif\" font-size=\"10\">"
    );
    let _ = writeln!(s, "<text x=\"{LEFT}\" y=\"15\" font-size=\"12\" font-weight=\"600\" fill=\"#1d2330\">{}</text>", xml(title));
    for (i, w) in windows.iter().enumerate() {
        let x0 = sx(w.start_s);
        let x1 = sx(w.stop_s).max(x0 + 1.0);
        let _ = writeln!(
            s,
            "<rect x=\"{x0:.1}\" y=\"{TOP}\" width=\"{:.1}\" height=\"{ph}\" fill=\"#e4572e\" fill-opacity=\"0.10\"/>",
            x1 - x0
        );
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#c0392b\" font-size=\"9\">{}</text>",
            x0 + 2.0,
            TOP + 10.0 + 10.0 * (i % 4) as f64,
            xml(&w.kind)
        );
    }
    let y_step = nice_step(y_top, 4.0);
    let mut y = 0.0;
    while y <= y_top + 1e-9 {
        let py = sy(y);
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{py:.1}\" x2=\"{:.1}\" y2=\"{py:.1}\" stroke=\"#e6e8ee\"/><text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#555\">{}</text>",
            LEFT + pw,
            LEFT - 5.0,
            py + 3.5,
            fmt_tick(y, y_step)
        );
        y += y_step;
    }
    let x_step = nice_step(x_max, 6.0).max(1.0);
    let mut x = 0.0;
    while x <= x_max + 1e-9 {
        let px = sx(x);
        let _ = writeln!(
            s,
            "<line x1=\"{px:.1}\" y1=\"{:.1}\" x2=\"{px:.1}\" y2=\"{:.1}\" stroke=\"#999\"/><text x=\"{px:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#555\">{}</text>",
            TOP + ph,
            TOP + ph + 4.0,
            TOP + ph + 15.0,
            fmt_tick(x, x_step)
        );
        x += x_step;
    }
    let _ = writeln!(
        s,
        "<line x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#888\"/><line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{:.1}\" stroke=\"#888\"/>",
        TOP + ph,
        LEFT + pw,
        TOP + ph,
        TOP + ph
    );
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#777\">seconds</text>",
        LEFT + pw,
        H - 3.0
    );
    for (i, se) in series.iter().enumerate() {
        let pts: Vec<String> = se
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        if pts.len() == 1 {
            let _ = writeln!(
                s,
                "<circle cx=\"{}\" r=\"2.5\" fill=\"{}\"/>",
                pts[0].replacen(',', "\" cy=\"", 1),
                se.color
            );
        } else if !pts.is_empty() {
            let _ = writeln!(
                s,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.8\" stroke-linejoin=\"round\"/>",
                pts.join(" "),
                se.color
            );
        }
        // The legend: one row under the title, right-aligned.
        let lx = LEFT + pw - 64.0 * (series.len() - i) as f64 + 8.0;
        let _ = writeln!(
            s,
            "<rect x=\"{lx:.1}\" y=\"21\" width=\"12\" height=\"3\" fill=\"{}\"/><text x=\"{:.1}\" y=\"26\" fill=\"#333\">{}</text>",
            se.color,
            lx + 15.0,
            xml(se.label)
        );
    }
    if series.iter().all(|se| se.points.is_empty()) {
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#999\">no data</text>",
            LEFT + pw / 2.0,
            TOP + ph / 2.0
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Escapes text for XML and HTML content and attribute values.
pub fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 forbids outright.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\r' | '\t') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(passed: bool) -> ScenarioReport {
        ScenarioReport {
            name: "flood<1>".into(),
            file: "scenarios/flood.toml".into(),
            description: "a & b".into(),
            seed: 1,
            duration_s: 3.0,
            target: "in-process".into(),
            tls: false,
            attacks: vec!["flood".into()],
            passed,
            skipped: None,
            failures: if passed {
                vec![]
            } else {
                vec!["legit_goodput 0.5 < legit_goodput_min 0.95".into()]
            },
            metrics: ScenarioMetrics {
                legit_goodput: 0.5,
                ..ScenarioMetrics::default()
            },
            timeline: Timeline {
                goodput: vec![1.0, 0.5, 0.0],
                latency_p50_ms: vec![1.0, 2.0, 3.0],
                latency_p99_ms: vec![2.0, 9.0, 30.0],
                rss_mb: vec![(0.0, 10.0), (1.0, 12.0)],
                attack_windows: vec![AttackWindow {
                    kind: "flood".into(),
                    start_s: 1.0,
                    stop_s: 3.0,
                }],
                ..Timeline::default()
            },
            wall_s: 4.0,
            data_dir: None,
            sim: None,
            faults: Vec::new(),
        }
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            xml("a<b & \"c\"\u{1}"),
            "a&lt;b &amp; &quot;c&quot;\u{fffd}"
        );
    }

    #[test]
    fn junit_has_one_testcase_per_scenario_and_failures() {
        let suite = SuiteReport::new(vec![report(true), report(false)], Duration::from_secs(8));
        let x = suite.to_junit();
        assert_eq!(x.matches("<testcase ").count(), 2);
        assert_eq!(x.matches("<failure ").count(), 1);
        assert!(x.contains("name=\"flood&lt;1&gt;\""), "{x}");
        assert!(x.contains("failures=\"1\""));
        assert!(x.contains("legit_goodput 0.5 &lt; legit_goodput_min 0.95"));
    }

    #[test]
    fn html_is_self_contained_with_plots() {
        let suite = SuiteReport::new(vec![report(false)], Duration::from_secs(8));
        let h = suite.to_html();
        assert_eq!(h.matches("<svg ").count(), 4);
        assert!(h.contains("<polyline"));
        assert!(h.contains("fill-opacity=\"0.10\""), "attack window shaded");
        for external in ["<script", "src=", "href=\"http", "@import", "url("] {
            assert!(!h.contains(external), "external resource: {external}");
        }
    }

    #[test]
    fn summary_lists_failures() {
        let suite = SuiteReport::new(vec![report(true), report(false)], Duration::from_secs(8));
        let t = suite.summary_table();
        assert!(t.starts_with("SCENARIO"));
        assert!(t.contains("1 of 2 scenarios passed"));
        assert!(t.contains("FAIL flood<1>: legit_goodput 0.5 < legit_goodput_min 0.95"));
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(10.0, 5.0), 2.0);
        assert_eq!(nice_step(1.05, 4.0), 0.5);
        assert_eq!(nice_step(700.0, 4.0), 200.0);
    }
}
