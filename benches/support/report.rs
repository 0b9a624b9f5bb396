//! Results: samples per figure and peer, the printed table (median, each with its
//! ratio to Distribution's proxy and to nginx), the JSON file and the SVG plot.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

pub const FERRY: &str = "ferry";
pub const DIST: &str = "distribution-proxy";
pub const NGINX: &str = "nginx";
pub const DIRECT: &str = "direct";

/// Column headings.
pub fn peer_title(peer: &str) -> &'static str {
    match peer {
        FERRY => "Ferry",
        DIST => "Distribution proxy",
        NGINX => "nginx (sendfile)",
        DIRECT => "direct (upstream)",
        _ => "?",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

pub struct Metric {
    pub id: String,
    pub label: String,
    pub unit: String,
    pub better: Better,
    pub samples: BTreeMap<String, Vec<f64>>,
}

impl Metric {
    pub fn median(&self, peer: &str) -> Option<f64> {
        self.samples.get(peer).and_then(|v| median(v))
    }

    pub fn min(&self, peer: &str) -> Option<f64> {
        self.samples
            .get(peer)
            .and_then(|v| v.iter().copied().reduce(f64::min))
    }

    pub fn max(&self, peer: &str) -> Option<f64> {
        self.samples
            .get(peer)
            .and_then(|v| v.iter().copied().reduce(f64::max))
    }

    /// This peer's median over `reference`'s.
    pub fn ratio(&self, peer: &str, reference: &str) -> Option<f64> {
        let (a, b) = (self.median(peer)?, self.median(reference)?);
        (b != 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
    }
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Every figure of the run, in the order first recorded.
#[derive(Default)]
pub struct Results {
    pub metrics: Vec<Metric>,
}

impl Results {
    pub fn add(&mut self, id: &str, label: &str, unit: &str, better: Better, peer: &str, v: f64) {
        let m = match self.metrics.iter_mut().position(|m| m.id == id) {
            Some(i) => &mut self.metrics[i],
            None => {
                self.metrics.push(Metric {
                    id: id.to_owned(),
                    label: label.to_owned(),
                    unit: unit.to_owned(),
                    better,
                    samples: BTreeMap::new(),
                });
                self.metrics.last_mut().unwrap()
            }
        };
        m.samples.entry(peer.to_owned()).or_default().push(v);
    }

    pub fn get(&self, id: &str) -> Option<&Metric> {
        self.metrics.iter().find(|m| m.id == id)
    }

    pub fn median(&self, id: &str, peer: &str) -> Option<f64> {
        self.get(id).and_then(|m| m.median(peer))
    }

    /// The median table with ratios, then the min/max table.
    pub fn table(&self, peers: &[&str]) -> String {
        let label_w = self
            .metrics
            .iter()
            .map(|m| m.label.len() + m.unit.len() + 3)
            .max()
            .unwrap_or(20)
            .max(24);
        let cells: Vec<Vec<String>> = self
            .metrics
            .iter()
            .map(|m| {
                peers
                    .iter()
                    .map(|p| match m.median(p) {
                        None => "-".to_owned(),
                        Some(v) => format!(
                            "{} D{} N{}",
                            fmt_num(v),
                            fmt_ratio(m.ratio(p, DIST)),
                            fmt_ratio(m.ratio(p, NGINX))
                        ),
                    })
                    .collect()
            })
            .collect();
        let col_w: Vec<usize> = (0..peers.len())
            .map(|i| {
                cells
                    .iter()
                    .map(|r| r[i].len())
                    .chain([peer_title(peers[i]).len()])
                    .max()
                    .unwrap_or(10)
            })
            .collect();
        let mut out = String::new();
        out += &format!(
            "{:<label_w$}",
            "median (D = / Distribution proxy, N = / nginx)"
        );
        for (i, p) in peers.iter().enumerate() {
            out += &format!("  {:>w$}", peer_title(p), w = col_w[i]);
        }
        out += "\n";
        for (m, row) in self.metrics.iter().zip(&cells) {
            out += &format!("{:<label_w$}", format!("{} ({})", m.label, m.unit));
            for (i, c) in row.iter().enumerate() {
                out += &format!("  {:>w$}", c, w = col_w[i]);
            }
            out += "\n";
        }
        out += "\n";
        let spread: Vec<Vec<String>> = self
            .metrics
            .iter()
            .map(|m| {
                peers
                    .iter()
                    .map(|p| match (m.min(p), m.max(p)) {
                        (Some(a), Some(b)) => format!("{} .. {}", fmt_num(a), fmt_num(b)),
                        _ => "-".to_owned(),
                    })
                    .collect()
            })
            .collect();
        let col_w: Vec<usize> = (0..peers.len())
            .map(|i| {
                spread
                    .iter()
                    .map(|r| r[i].len())
                    .chain([peer_title(peers[i]).len()])
                    .max()
                    .unwrap_or(10)
            })
            .collect();
        out += &format!("{:<label_w$}", "min .. max over the repetitions");
        for (i, p) in peers.iter().enumerate() {
            out += &format!("  {:>w$}", peer_title(p), w = col_w[i]);
        }
        out += "\n";
        for (m, row) in self.metrics.iter().zip(&spread) {
            out += &format!("{:<label_w$}", format!("{} ({})", m.label, m.unit));
            for (i, c) in row.iter().enumerate() {
                out += &format!("  {:>w$}", c, w = col_w[i]);
            }
            out += "\n";
        }
        out
    }

    /// Every figure with its samples, min, median, max and ratios.
    pub fn to_json(&self, peers: &[&str]) -> Value {
        let metrics: Vec<Value> = self
            .metrics
            .iter()
            .map(|m| {
                let mut per_peer = serde_json::Map::new();
                for p in peers {
                    let Some(samples) = m.samples.get(*p) else {
                        continue;
                    };
                    per_peer.insert(
                        (*p).to_owned(),
                        json!({
                            "samples": samples,
                            "min": m.min(p),
                            "median": m.median(p),
                            "max": m.max(p),
                            "ratio_to_distribution_proxy": m.ratio(p, DIST),
                            "ratio_to_nginx": m.ratio(p, NGINX),
                            "ratio_to_direct": m.ratio(p, DIRECT),
                        }),
                    );
                }
                json!({
                    "id": m.id,
                    "label": m.label,
                    "unit": m.unit,
                    "better": match m.better { Better::Higher => "higher", Better::Lower => "lower" },
                    "peers": per_peer,
                })
            })
            .collect();
        json!(metrics)
    }
}

pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".to_owned()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else if a >= 0.01 {
        format!("{v:.3}")
    } else {
        format!("{v:.4}")
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 100.0 => format!("{r:.0}"),
        Some(r) if r >= 10.0 => format!("{r:.1}"),
        Some(r) => format!("{r:.2}"),
        None => "-".to_owned(),
    }
}

/// One line per peer: (parallel GETs, median value) points.
pub type Series = Vec<(String, Vec<(usize, f64)>)>;

/// Two panels side by side: aggregate MB/s and server CPU-s per GB against the number
/// of parallel GETs of a warm blob.
pub fn plot(
    path: &Path,
    title: &str,
    levels: &[usize],
    throughput: &Series,
    cpu: &Series,
) -> Result<(), String> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let root = root
        .titled(title, ("sans-serif", 18))
        .map_err(|e| e.to_string())?;
    let (left, right) = root.split_horizontally(550);
    let colors = [
        RGBColor(0xd6, 0x27, 0x28),
        RGBColor(0x1f, 0x77, 0xb4),
        RGBColor(0x2c, 0xa0, 0x2c),
        RGBColor(0x7f, 0x7f, 0x7f),
    ];
    let n = levels.len() as i32;
    for (area, series, caption, unit) in [
        (&left, throughput, "aggregate throughput", "MB/s"),
        (&right, cpu, "server CPU per GB served", "CPU-s / GB"),
    ] {
        let ymax = series
            .iter()
            .flat_map(|(_, pts)| pts.iter().map(|p| p.1))
            .fold(0.0f64, f64::max)
            * 1.45;
        let ymax = if ymax > 0.0 { ymax } else { 1.0 };
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..ymax)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("parallel GETs of one warm blob")
            .y_desc(unit)
            .light_line_style(WHITE)
            .y_labels(8)
            .y_label_formatter(&|v| {
                if ymax >= 10.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.2}")
                }
            })
            .x_labels(levels.len())
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => levels
                    .get(*i as usize)
                    .map(|l| l.to_string())
                    .unwrap_or_default(),
                SegmentValue::Last => String::new(),
            })
            .draw()
            .map_err(|e| e.to_string())?;
        for (name, pts) in series.iter() {
            // The same color for a peer in every plot, whichever peers ran.
            let color = colors[[FERRY, DIST, NGINX, DIRECT]
                .iter()
                .position(|p| peer_title(p) == name)
                .unwrap_or(3)];
            let points: Vec<(SegmentValue<i32>, f64)> = pts
                .iter()
                .filter_map(|(level, v)| {
                    levels
                        .iter()
                        .position(|l| l == level)
                        .map(|x| (SegmentValue::CenterOf(x as i32), *v))
                })
                .collect();
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(
                    points
                        .into_iter()
                        .map(|p| Circle::new(p, 4, color.filled())),
                )
                .map_err(|e| e.to_string())?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
    }
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}
