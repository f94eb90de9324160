//! Per-op verdicts by equality saturation. The structural walk asks, for one op with a
//! scale on some of its inputs, what happens to the scale: it passes (and how it is laid
//! out after the op), it is absorbed (by dividing some parameters), or it is stuck. The
//! answer is read off the e-graph after the rules have run, and the chain of rule
//! applications that proves it is kept as the explanation. Answers are memoized by query.

use super::lang::{Ec, PlacementCost};
use super::rules::RuleSet;
use egg::{Extractor, RecExpr, Rewrite, Runner};
use std::collections::HashMap;
use std::rc::Rc;

/// How a scale vector is laid out after an op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Same channels.
    Same,
    /// Spread over the reshaped elements of each channel.
    Spread,
    /// Placed at an input's offset of a concatenation.
    Place,
}

/// How a parameter appears in a verdict's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Wrap {
    /// `(pscale s p)`: output-channel slices multiplied.
    PScale,
    /// `(unscale s p)`: output-channel slices divided.
    Unscale,
    /// `(iscale s p)`: the slices reading each input channel multiplied.
    IScale,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `(scale S body)` with no scale left in `body`; `wrapped` lists the parameters (by
    /// query leaf) that appear wrapped in the result.
    Pass {
        layout: Layout,
        wrapped: Vec<(String, Wrap)>,
    },
    /// No scale left at all: the op absorbed it (or is invariant to it).
    Absorb { wrapped: Vec<(String, Wrap)> },
    /// The scale stays inside the op.
    Block,
}

#[derive(Debug, Clone)]
pub struct Verdict {
    pub outcome: Outcome,
    pub query: String,
    pub result: String,
    /// The rewrite chain from `query` to `result` (egg's explanation), or why nothing applies.
    pub explanation: String,
}

pub struct Oracle {
    rewrites: Vec<Rewrite<Ec, ()>>,
    memo: HashMap<String, Rc<Verdict>>,
}

/// The parameters `p` of every `(pscale|unscale|iscale _ (param p))` in a term.
fn wrapped_params(expr: &RecExpr<Ec>) -> Vec<(String, Wrap)> {
    let nodes = expr.as_ref();
    let mut out = vec![];
    for n in nodes {
        let (inner, wrap) = match n {
            Ec::PScale([_, p]) => (*p, Wrap::PScale),
            Ec::Unscale([_, p]) => (*p, Wrap::Unscale),
            Ec::IScale([_, p]) => (*p, Wrap::IScale),
            _ => continue,
        };
        if let Ec::Param(leaf) = &nodes[usize::from(inner)] {
            if let Ec::Leaf(s) = &nodes[usize::from(*leaf)] {
                out.push((s.to_string(), wrap));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

impl Oracle {
    pub fn new(rules: &RuleSet) -> Self {
        Oracle {
            rewrites: rules.rewrites(),
            memo: HashMap::new(),
        }
    }

    /// Number of distinct queries answered so far.
    pub fn queries(&self) -> usize {
        self.memo.len()
    }

    pub fn ask(&mut self, query: &str) -> Rc<Verdict> {
        if let Some(v) = self.memo.get(query) {
            return v.clone();
        }
        let v = Rc::new(self.saturate(query));
        self.memo.insert(query.to_string(), v.clone());
        v
    }

    /// Does `query` equal `target` under the rules? For a producer layer: its output with a
    /// scale pulled out, against the layer with its incoming parameters scaled. The verdict
    /// is `Pass` (with the parameters `pscale`d in `query`) or `Block`.
    pub fn ask_equal(&mut self, query: &str, target: &str) -> Rc<Verdict> {
        let key = format!("{query} == {target}");
        if let Some(v) = self.memo.get(&key) {
            return v.clone();
        }
        let q: RecExpr<Ec> = query
            .parse()
            .unwrap_or_else(|e| panic!("ecc built an invalid query {query}: {e}"));
        let t: RecExpr<Ec> = target
            .parse()
            .unwrap_or_else(|e| panic!("ecc built an invalid query {target}: {e}"));
        let mut runner = self.run(&[&q, &t]);
        let equal = runner.egraph.find(runner.roots[0]) == runner.egraph.find(runner.roots[1]);
        let v = Rc::new(if equal {
            Verdict {
                outcome: Outcome::Pass {
                    layout: Layout::Same,
                    wrapped: wrapped_params(&q),
                },
                query: query.to_string(),
                result: target.to_string(),
                explanation: runner.explain_equivalence(&q, &t).get_flat_string(),
            }
        } else {
            Verdict {
                outcome: Outcome::Block,
                query: query.to_string(),
                result: target.to_string(),
                explanation: format!("no rule shows {query} = {target}"),
            }
        });
        self.memo.insert(key, v.clone());
        v
    }

    /// Equality saturation over the given terms, with explanations kept. The queries are
    /// single ops, so the limits are never reached in practice.
    fn run(&self, exprs: &[&RecExpr<Ec>]) -> Runner<Ec, ()> {
        let mut r = Runner::default()
            .with_explanations_enabled()
            .with_iter_limit(30)
            .with_node_limit(10_000);
        for e in exprs {
            r = r.with_expr(e);
        }
        r.run(&self.rewrites)
    }

    fn saturate(&self, query: &str) -> Verdict {
        let expr: RecExpr<Ec> = query
            .parse()
            .unwrap_or_else(|e| panic!("ecc built an invalid query {query}: {e}"));
        let mut runner = self.run(&[&expr]);
        let root = runner.roots[0];
        let (cost, best) = Extractor::new(&runner.egraph, PlacementCost).find_best(root);
        let wrapped = wrapped_params(&best);
        let outcome = if cost.buried > 0 {
            Outcome::Block
        } else if cost.top {
            let nodes = best.as_ref();
            let Ec::Scale([s, _]) = nodes[nodes.len() - 1] else {
                unreachable!("top scale")
            };
            let layout = match &nodes[usize::from(s)] {
                Ec::Spread(_) => Layout::Spread,
                Ec::Place(_) => Layout::Place,
                _ => Layout::Same,
            };
            Outcome::Pass { layout, wrapped }
        } else {
            Outcome::Absorb { wrapped }
        };
        let explanation = if outcome == Outcome::Block {
            let op = query
                .trim_start_matches('(')
                .split_whitespace()
                .next()
                .unwrap_or("?")
                .to_string();
            format!("no rule moves a scale out of `{op}` here: it blocks")
        } else {
            runner.explain_equivalence(&expr, &best).get_flat_string()
        };
        Verdict {
            outcome,
            query: query.to_string(),
            result: best.to_string(),
            explanation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(q: &str) -> Verdict {
        (*Oracle::new(&RuleSet::default_rules()).ask(q)).clone()
    }

    #[test]
    fn verdicts() {
        let same = Outcome::Pass {
            layout: Layout::Same,
            wrapped: vec![],
        };
        assert_eq!(ask("(relu (scale s x0))").outcome, same);
        assert_eq!(ask("(sigmoid (scale s x0))").outcome, Outcome::Block);
        assert_eq!(ask("(clip (scale s x0) 0 inf)").outcome, same);
        assert_eq!(ask("(clip (scale s x0) 0 6)").outcome, Outcome::Block);
        assert_eq!(
            ask("(flatten (scale s x0))").outcome,
            Outcome::Pass {
                layout: Layout::Spread,
                wrapped: vec![]
            }
        );
        assert_eq!(
            ask("(gemm (scale s x0) (param p1) (param p2))").outcome,
            Outcome::Absorb {
                wrapped: vec![("p1".into(), Wrap::IScale)]
            }
        );
        let mut o = Oracle::new(&RuleSet::default_rules());
        let emit = o.ask_equal(
            "(gemm x0 (pscale s (param p1)) (pscale s none))",
            "(scale s (gemm x0 (param p1) none))",
        );
        assert_eq!(
            emit.outcome,
            Outcome::Pass {
                layout: Layout::Same,
                wrapped: vec![("p1".into(), Wrap::PScale)]
            }
        );
        assert!(
            emit.explanation.contains("gemm-emit"),
            "{}",
            emit.explanation
        );
        let not = o.ask_equal(
            "(gemm x0 (pscale s (param p1)) (param p2))",
            "(scale s (gemm x0 (param p1) (param p2)))",
        );
        assert_eq!(not.outcome, Outcome::Block);
        assert_eq!(ask("(add (scale s x0) x1)").outcome, Outcome::Block);
        assert_eq!(ask("(add (scale s x0) (scale s x1))").outcome, same);
        let bn = ask("(batch-norm (scale s x0) (param p1) (param p2) (param p3) (param p4))");
        let unscaled = vec![("p2".into(), Wrap::Unscale), ("p3".into(), Wrap::Unscale)];
        assert_eq!(
            bn.outcome,
            Outcome::Pass {
                layout: Layout::Same,
                wrapped: unscaled
            }
        );
        assert!(bn.explanation.contains("batch-norm"), "{}", bn.explanation);
        assert_eq!(
            ask("(batch-norm-train (scale s x0))").outcome,
            Outcome::Absorb { wrapped: vec![] }
        );
    }
}
