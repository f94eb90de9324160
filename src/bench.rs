//! `ecc bench`: timings measured in one process, reported as medians after a warm-up,
//! never asserted by tests.

use crate::analysis::{analyze, RuleSet};
use crate::error::Result;
use crate::ir::Graph;
use crate::zoo::{build, Spec};
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct AnalysisCase {
    pub name: String,
    pub nodes: usize,
    pub units: usize,
    pub rescalings: usize,
    /// Median wall time of `analyze` (import excluded), milliseconds.
    pub ms: f64,
    pub us_per_node: f64,
}

/// Median of `runs` timings of `f`, after one warm-up call.
fn median_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).expect("finite timings"));
    t[t.len() / 2]
}

fn case(name: &str, g: &Graph, rules: &RuleSet, runs: usize) -> AnalysisCase {
    let a = analyze(g, rules);
    let ms = median_ms(runs, || {
        std::hint::black_box(analyze(g, rules));
    });
    AnalysisCase {
        name: name.to_string(),
        nodes: g.nodes.len(),
        units: a.walk.units.len(),
        rescalings: a.rescalings(),
        ms,
        us_per_node: ms * 1e3 / g.nodes.len() as f64,
    }
}

/// Analysis time of the zoo models found in `zoo` (if any) and of plain MLPs and CNNs of
/// 10, 100 and 1000 layers.
pub fn analysis(
    zoo: Option<&Path>,
    runs: usize,
    mut progress: impl FnMut(&AnalysisCase),
) -> Result<Vec<AnalysisCase>> {
    let rules = RuleSet::default_rules();
    let mut out = vec![];
    if let Some(dir) = zoo {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| crate::Error::new(crate::ErrorKind::Io(e.to_string())).in_file(dir))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "onnx"))
            .collect();
        files.sort();
        for f in files {
            let g = crate::import::load_file(&f, &Default::default())?;
            let name = f
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            out.push(case(&name, &g, &rules, runs));
            progress(out.last().expect("pushed"));
        }
    }
    for layers in [10, 100, 1000] {
        let mlp = format!("mlp:64-{}10", "64-".repeat(layers - 1));
        let cnn = format!("cnn:4x8x8-{}p-10", "c8-".repeat(layers - 1));
        for (kind, spec) in [("mlp", mlp), ("cnn", cnn)] {
            let g = build(&Spec::parse(&spec)?, 0, true)?;
            out.push(case(&format!("{kind}-{layers}-layers"), &g, &rules, runs));
            progress(out.last().expect("pushed"));
        }
    }
    Ok(out)
}
