//! A scenario's results: figures (with their targets), series for plots, and notes, written
//! as `<scenario>.json`, `<scenario>.md` and one `<scenario>-<plot>.png` per series.

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Once;

/// How a figure compares with its target.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
}

impl Target {
    pub fn met(self, value: f64) -> bool {
        match self {
            Target::AtLeast(t) => value >= t,
            Target::AtMost(t) => value <= t,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub unit: String,
    pub target: Option<Target>,
    pub met: Option<bool>,
}

/// One line of a plot.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// One plot: `<scenario>-<name>.png`.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub name: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub lines: Vec<Line>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub memory_gib: f64,
    pub cpu: String,
    pub os: String,
}

impl Machine {
    pub fn this() -> Machine {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kb: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|v| v.trim_start_matches([' ', '\t', ':']).to_string());
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            cpu: cpu.unwrap_or_else(|| "unknown".into()),
            os: std::env::consts::OS.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub command: String,
    pub finished_at: String,
    pub machine: Machine,
    pub params: serde_json::Value,
    pub figures: Vec<Figure>,
    pub series: Vec<Series>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(scenario: &str, params: serde_json::Value) -> Report {
        let args: Vec<String> = std::env::args().skip(1).collect();
        Report {
            scenario: scenario.into(),
            command: format!("sluice-bench {}", redact(&args).join(" ")),
            finished_at: String::new(),
            machine: Machine::this(),
            params,
            figures: vec![],
            series: vec![],
            notes: vec![],
        }
    }

    pub fn figure(&mut self, name: &str, value: f64, unit: &str, target: Option<Target>) {
        let met = target.map(|t| t.met(value));
        self.figures.push(Figure { name: name.into(), value, unit: unit.into(), target, met });
    }

    pub fn value(&self, name: &str) -> Option<f64> {
        self.figures.iter().find(|f| f.name == name).map(|f| f.value)
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// Writes the JSON, Markdown and PNG files into `dir` and prints the table.
    pub fn write(mut self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        self.finished_at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let mut written = vec![];
        for s in &self.series {
            let path = dir.join(format!("{}-{}.png", self.scenario, s.name));
            plot(&path, s).with_context(|| format!("cannot draw {}", path.display()))?;
            written.push(path);
        }
        let json = dir.join(format!("{}.json", self.scenario));
        std::fs::write(&json, serde_json::to_string_pretty(&self)?)?;
        let md = dir.join(format!("{}.md", self.scenario));
        let text = self.markdown();
        std::fs::write(&md, &text)?;
        println!("{text}");
        written.extend([json, md]);
        Ok(written)
    }

    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = format!(
            "## {}\n\n`{}`\n\n{} cores, {} GiB, {} ({}), finished {}\n\n| figure | value | target |\n|---|---:|---|\n",
            self.scenario, self.command, m.cores, m.memory_gib, m.cpu, m.os, self.finished_at
        );
        for f in &self.figures {
            let target = match (f.target, f.met) {
                (Some(Target::AtLeast(t)), Some(met)) => format!("≥ {} {}", number(t), verdict(met)),
                (Some(Target::AtMost(t)), Some(met)) => format!("≤ {} {}", number(t), verdict(met)),
                _ => String::new(),
            };
            out += &format!("| {} | {} {} | {} |\n", f.name, number(f.value), f.unit, target);
        }
        for s in &self.series {
            out += &format!("\n![{}]({}-{}.png)\n", s.title, self.scenario, s.name);
        }
        if !self.notes.is_empty() {
            out += "\n";
            for n in &self.notes {
                out += &format!("- {n}\n");
            }
        }
        out
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "(met)" } else { "(**missed**)" }
}

/// A figure as people read it: thousands separated, three significant digits below 100.
pub fn number(v: f64) -> String {
    if v.abs() >= 100.0 {
        let digits = format!("{:.0}", v.abs());
        let mut grouped = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(c);
        }
        if v < 0.0 { format!("-{grouped}") } else { grouped }
    } else if v == v.trunc() {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 6] = [BLUE, RED, RGBColor(0, 150, 0), MAGENTA, RGBColor(230, 140, 0), BLACK];

fn plot(path: &Path, s: &Series) -> anyhow::Result<()> {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, epaint_default_fonts::UBUNTU_LIGHT);
    });
    let points = s.lines.iter().flat_map(|l| l.points.iter());
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0f64);
    for &(x, y) in points {
        (x0, x1, y1) = (x0.min(x), x1.max(x), y1.max(y));
    }
    if x0 > x1 {
        (x0, x1) = (0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    let y1 = if y1 > 0.0 { y1 * 1.1 } else { 1.0 };
    let root = BitMapBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&s.title, (FONT, 24))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, 0f64..y1)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc(&s.x_label)
        .y_desc(&s.y_label)
        .label_style((FONT, 15))
        .y_label_formatter(&|v| number(*v))
        .draw()
        .map_err(draw_err)?;
    for (i, line) in s.lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), color.stroke_width(2)))
            .map_err(draw_err)?
            .label(&line.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(2)));
        if line.points.len() <= 40 {
            chart.draw_series(line.points.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(draw_err)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 15))
        .draw()
        .map_err(draw_err)?;
    root.present().map_err(draw_err)?;
    Ok(())
}

fn draw_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(1_234_567.4), "1,234,567");
        assert_eq!(number(250.0), "250");
        assert_eq!(number(42.0), "42");
        assert_eq!(number(4.567), "4.57");
        assert_eq!(number(0.3912), "0.391");
        assert_eq!(number(-1500.0), "-1,500");
    }

    #[test]
    fn targets_and_files() {
        assert!(Target::AtLeast(5.0).met(5.0) && !Target::AtLeast(5.0).met(4.9));
        assert!(Target::AtMost(5.0).met(1.0) && !Target::AtMost(5.0).met(6.0));
        let dir = tempfile::tempdir().unwrap();
        let mut r = Report::new("unit", serde_json::json!({"n": 1}));
        r.figure("drain rate", 51_000.0, "msg/s", Some(Target::AtLeast(50_000.0)));
        r.figure("p99", 7.5, "ms", Some(Target::AtMost(5.0)));
        r.series.push(Series {
            name: "depth".into(),
            title: "Queue depth".into(),
            x_label: "s".into(),
            y_label: "messages".into(),
            lines: vec![Line { name: "depth".into(), points: vec![(0.0, 0.0), (1.0, 10.0), (2.0, 3.0)] }],
        });
        let md = r.markdown();
        assert!(md.contains("| drain rate | 51,000 msg/s | ≥ 50,000 (met) |"), "{md}");
        assert!(md.contains("| p99 | 7.50 ms | ≤ 5 (**missed**) |"), "{md}");
        let files = r.write(dir.path()).unwrap();
        assert_eq!(files.len(), 3);
        let png = std::fs::read(dir.path().join("unit-depth.png")).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("unit.json")).unwrap()).unwrap();
        assert_eq!(json["figures"][1]["met"], false);
    }
}

/// The command line with the values of secret flags replaced, so reports can be published.
fn redact(args: &[String]) -> Vec<String> {
    const SECRET: [&str; 2] = ["--jwt-secret", "--service-token"];
    let mut out = Vec::with_capacity(args.len());
    let mut hide_next = false;
    for a in args {
        if hide_next {
            out.push("***".to_string());
            hide_next = false;
        } else if let Some((flag, _)) = a.split_once('=').filter(|(f, _)| SECRET.contains(f)) {
            out.push(format!("{flag}=***"));
        } else {
            hide_next = SECRET.contains(&a.as_str());
            out.push(a.clone());
        }
    }
    out
}

#[cfg(test)]
mod redact_tests {
    #[test]
    fn secret_flags_are_hidden() {
        let args: Vec<String> =
            ["spike", "--jwt-secret", "s1", "--service-token=s2", "--grpc", "x"].iter().map(|s| s.to_string()).collect();
        assert_eq!(super::redact(&args).join(" "), "spike --jwt-secret *** --service-token=*** --grpc x");
    }
}
