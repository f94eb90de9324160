//! `ecc inspect`: what a model file holds, as a report value that prints as text or JSON.

use crate::ir::{DimDecl, Graph};
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
pub struct TensorSummary {
    pub name: String,
    /// As declared in the file (`N` for a symbolic dim).
    pub declared: String,
    /// The static shape ecc works with (`N` marks the batch axis).
    pub shape: String,
}

#[derive(Debug, Serialize)]
pub struct Opset {
    pub domain: String,
    pub version: i64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub file: String,
    pub ir_version: i64,
    pub opsets: Vec<Opset>,
    pub producer: String,
    pub graph_name: String,
    pub inputs: Vec<TensorSummary>,
    pub outputs: Vec<TensorSummary>,
    pub nodes: usize,
    pub ops: BTreeMap<String, usize>,
    pub param_tensors: usize,
    pub params: usize,
}

fn declared(d: &[DimDecl]) -> String {
    let parts: Vec<String> = d
        .iter()
        .map(|x| match x {
            DimDecl::Value(v) => v.to_string(),
            DimDecl::Param(p) => p.clone(),
            DimDecl::Unknown => "?".into(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

impl Report {
    pub fn new(file: &str, g: &Graph) -> Self {
        let summary = |v: &crate::ir::ValueInfo| TensorSummary {
            name: v.name.clone(),
            declared: declared(&v.declared),
            shape: g
                .shapes
                .get(&v.name)
                .map(|s| s.to_string())
                .unwrap_or_default(),
        };
        let producer = [
            g.meta.producer_name.as_str(),
            g.meta.producer_version.as_str(),
        ]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(" ");
        Report {
            file: file.to_string(),
            ir_version: g.meta.ir_version,
            opsets: g
                .meta
                .opsets
                .iter()
                .map(|(d, v)| Opset {
                    domain: if d.is_empty() {
                        "ai.onnx".to_string()
                    } else {
                        d.clone()
                    },
                    version: *v,
                })
                .collect(),
            producer,
            graph_name: g.meta.graph_name.clone(),
            inputs: g.inputs.iter().map(summary).collect(),
            outputs: g.outputs.iter().map(summary).collect(),
            nodes: g.nodes.len(),
            ops: g
                .op_histogram()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            param_tensors: g.params.len(),
            params: g.param_count(),
        }
    }

    /// The human-readable form, at most ~80 columns wide.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let opsets: Vec<String> = self
            .opsets
            .iter()
            .map(|o| format!("{} {}", o.domain, o.version))
            .collect();
        s += &format!("model      {}\n", self.file);
        s += &format!("ir version {}\n", self.ir_version);
        s += &format!("opsets     {}\n", opsets.join(", "));
        s += &format!(
            "producer   {}\n",
            if self.producer.is_empty() {
                "-"
            } else {
                &self.producer
            }
        );
        s += &format!(
            "graph      {}\n",
            if self.graph_name.is_empty() {
                "-"
            } else {
                &self.graph_name
            }
        );
        for (title, list) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            s += &format!("{title}:\n");
            for t in list.iter() {
                s += &format!(
                    "  {:<28} declared {:<18} shape {}\n",
                    t.name, t.declared, t.shape
                );
            }
        }
        s += &format!("nodes      {}\n", self.nodes);
        s += "ops:\n";
        for (op, n) in &self.ops {
            s += &format!("  {op:<20} {n:>6}\n");
        }
        s += &format!(
            "parameters {} scalars in {} tensors\n",
            group_digits(self.params),
            self.param_tensors
        );
        s
    }
}

/// 1234567 -> "1,234,567".
pub fn group_digits(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
