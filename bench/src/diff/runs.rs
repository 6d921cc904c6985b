//! The runs `bench diff` compares, read from what earlier runs left: a results folder
//! (`report.json`, else its `.hgrm` files) with one curve per system in it, or one `.hgrm`
//! file written by any tool that prints HdrHistogram's percentile distribution (wrk2
//! `--latency`, `outputPercentileDistribution`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::report::figures::Figures;
use crate::report::{hgrm, LatencyBlock, Report, SystemResult};

/// One run argument, read.
#[derive(Clone, Debug)]
pub struct Run {
    /// As given on the command line.
    pub arg: String,
    /// The folder's or file's name, the prefix of its curves' labels.
    pub name: String,
    /// The bench's report, for a results folder that has one.
    pub report: Option<Report>,
    pub curves: Vec<Curve>,
}

impl Run {
    /// The run a bench report read from `source` is: one curve per system, `NAME:label`.
    pub fn of_report(arg: String, name: String, report: Report, source: &Path) -> Run {
        let curves = report
            .systems
            .iter()
            .map(|s| Curve {
                label: format!("{name}:{}", s.label),
                system: s.label.clone(),
                source: source.to_path_buf(),
                result: s.clone(),
                from_bench: true,
            })
            .collect();
        Run {
            arg,
            name,
            report: Some(report),
            curves,
        }
    }
}

/// One latency curve: a system of a bench run, or an `.hgrm` file.
#[derive(Clone, Debug)]
pub struct Curve {
    /// `FOLDER:system1`, or the `.hgrm` file's name without `.hgrm`.
    pub label: String,
    /// Which system it is (`system1`, or the file's name): curves of two runs with the same
    /// system are compared with each other.
    pub system: String,
    pub source: PathBuf,
    /// The bench's result; for an `.hgrm` file one with its latency only.
    pub result: SystemResult,
    /// Whether `result` is a whole bench result (else latency only).
    pub from_bench: bool,
}

impl Curve {
    pub fn figures(&self) -> Figures {
        if self.from_bench {
            Figures::of_result(&self.result)
        } else {
            Figures::of_latency(&self.result.latency_us.corrected)
        }
    }
}

/// The unit of the values in `.hgrm` files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HgrmUnit {
    /// Milliseconds (wrk2, and the bench's own files).
    Ms,
    /// Microseconds.
    Us,
}

impl HgrmUnit {
    fn to_us(self) -> f64 {
        match self {
            HgrmUnit::Ms => 1000.0,
            HgrmUnit::Us => 1.0,
        }
    }
}

/// Reads every run argument; curve labels are made unique (`#2`) where names repeat.
pub fn load(args: &[PathBuf], unit: HgrmUnit) -> anyhow::Result<Vec<Run>> {
    let mut runs = args
        .iter()
        .map(|a| load_one(a, unit))
        .collect::<anyhow::Result<Vec<Run>>>()?;
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for c in runs.iter_mut().flat_map(|r| r.curves.iter_mut()) {
        let n = seen.entry(c.label.clone()).or_default();
        *n += 1;
        if *n > 1 {
            c.label = format!("{}#{n}", c.label);
        }
        c.result.name = c.label.clone();
    }
    Ok(runs)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

fn load_one(arg: &Path, unit: HgrmUnit) -> anyhow::Result<Run> {
    let shown = arg.display().to_string();
    if arg.is_dir() {
        return load_folder(arg, shown, unit);
    }
    if !arg.exists() {
        if let Some(run) = one_system(&shown, unit)? {
            return Ok(run);
        }
        bail!("{shown}: no such results folder or .hgrm file");
    }
    if arg.file_name().is_some_and(|n| n == "report.json") {
        let dir = arg.parent().filter(|p| !p.as_os_str().is_empty());
        return load_folder(dir.unwrap_or(Path::new(".")), shown, unit);
    }
    let name = file_name(arg);
    let stem = name.strip_suffix(".hgrm").unwrap_or(&name).to_string();
    let curve = hgrm_curve(arg, stem.clone(), stem, unit)?;
    Ok(Run {
        arg: shown,
        name,
        report: None,
        curves: vec![curve],
    })
}

/// `FOLDER:SYSTEM`: one system of a results folder (to set it against one `.hgrm` file, say),
/// or `None` when the text before the last `:` is not a folder.
fn one_system(shown: &str, unit: HgrmUnit) -> anyhow::Result<Option<Run>> {
    let Some((dir, system)) = shown.rsplit_once(':') else {
        return Ok(None);
    };
    if system.is_empty() || !Path::new(dir).is_dir() {
        return Ok(None);
    }
    let mut run = load_folder(Path::new(dir), shown.to_string(), unit)?;
    let has: Vec<String> = run.curves.iter().map(|c| c.system.clone()).collect();
    run.curves.retain(|c| c.system == system);
    if run.curves.is_empty() {
        bail!(
            "{shown}: {dir} has no system `{system}`; it has {}",
            has.join(", ")
        );
    }
    if let Some(r) = run.report.as_mut() {
        r.systems.retain(|s| s.label == system);
    }
    Ok(Some(run))
}

fn load_folder(dir: &Path, arg: String, unit: HgrmUnit) -> anyhow::Result<Run> {
    let name = file_name(&std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()));
    let json = dir.join("report.json");
    if json.is_file() {
        let text = std::fs::read_to_string(&json)
            .with_context(|| format!("reading {}", json.display()))?;
        let report: Report = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a bench report", json.display()))?;
        if report.systems.is_empty() {
            bail!("{}: the report has no systems", json.display());
        }
        return Ok(Run::of_report(arg, name, report, &json));
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = file_name(p);
            n.ends_with(".hgrm") && !n.ends_with("-uncorrected.hgrm")
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "{arg}: has neither a report.json nor .hgrm files: give a folder `bench compare` or `bench run` wrote, or an .hgrm file"
        );
    }
    let curves = files
        .iter()
        .map(|f| {
            let n = file_name(f);
            let stem = n.trim_end_matches(".hgrm").to_string();
            hgrm_curve(f, format!("{name}:{stem}"), stem, unit)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Run {
        arg,
        name,
        report: None,
        curves,
    })
}

fn hgrm_curve(path: &Path, label: String, system: String, unit: HgrmUnit) -> anyhow::Result<Curve> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let parsed = hgrm::parse(&text, unit.to_us()).with_context(|| path.display().to_string())?;
    let result = SystemResult {
        name: label.clone(),
        label: system.clone(),
        description: "an .hgrm file: latency only".into(),
        target: path.display().to_string(),
        transport: String::new(),
        stopped_early: false,
        duration_s: 0.0,
        throughput: Default::default(),
        counts: Default::default(),
        reasons: Default::default(),
        dashboard_errors: Vec::new(),
        latency_us: LatencyBlock {
            corrected: parsed.summary(),
            uncorrected: Default::default(),
        },
        ack_latency_us: None,
        timeline: Vec::new(),
        cpu: Default::default(),
        repeats: None,
        vs_relay: None,
    };
    Ok(Curve {
        label,
        system,
        source: path.to_path_buf(),
        result,
        from_bench: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Hist;

    #[test]
    fn a_folder_without_a_report_is_read_from_its_hgrm_files() {
        let dir = std::env::temp_dir().join(format!(
            "bench-runs-test-{}-{}",
            std::process::id(),
            metrics_model::now_us()
        ));
        std::fs::create_dir_all(&dir).expect("folder");
        let mut h = Hist::new();
        for v in 100..=2000u64 {
            h.record(v);
        }
        let text = hgrm::render(&h, 1000.0);
        for name in ["system2.hgrm", "system2-uncorrected.hgrm", "notes.txt"] {
            std::fs::write(dir.join(name), &text).expect("write");
        }
        let runs = load(&[dir.clone(), dir.join("system2.hgrm")], HgrmUnit::Ms).expect("loads");
        let folder = file_name(&dir);
        assert_eq!(
            runs[0].curves.len(),
            1,
            "the uncorrected file is not a curve"
        );
        assert_eq!(runs[0].curves[0].label, format!("{folder}:system2"));
        assert_eq!(runs[1].curves[0].label, "system2");
        assert_eq!(runs[1].curves[0].system, "system2");
        let f = runs[0].curves[0].figures();
        assert_eq!(f.max, Some(h.max() as f64));
        assert_eq!(f.lost, None);
        // One system of a folder: FOLDER:SYSTEM.
        let one = load(
            &[PathBuf::from(format!("{}:system2", dir.display()))],
            HgrmUnit::Ms,
        )
        .expect("FOLDER:SYSTEM loads");
        assert_eq!(one[0].curves.len(), 1);
        assert_eq!(one[0].curves[0].system, "system2");
        let e = load(
            &[PathBuf::from(format!("{}:system9", dir.display()))],
            HgrmUnit::Ms,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("has no system `system9`; it has system2"),
            "{e}"
        );
        let e = load(
            &[dir.join("notes.txt").with_extension("nope")],
            HgrmUnit::Ms,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("no such results folder or .hgrm file"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
