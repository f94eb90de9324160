//! Rules as data: the `rules/*.rules` files, their parser, and their conversion into egg
//! rewrites. The default set is embedded in the binary; `--rules DIR` adds a user's files.
//!
//! One rule per line: `NAME: LHS => RHS [if COND(?var) ...]`, `#` starts a comment. LHS and
//! RHS are egg patterns over the language in [`super::lang`]. Conditions are small named
//! checks on a bound variable: `zero` (the constant 0), `inf` (+infinity), `ninf`
//! (-infinity).

use super::lang::Ec;
use crate::error::{Error, ErrorKind, Result};
use egg::{ConditionalApplier, EGraph, Id, Pattern, Rewrite, Subst, Symbol, Var};
use std::path::Path;

/// The default rule files, embedded.
pub const DEFAULT_RULES: &[(&str, &str)] = &[
    (
        "rules/activations.rules",
        include_str!("../../rules/activations.rules"),
    ),
    (
        "rules/pooling.rules",
        include_str!("../../rules/pooling.rules"),
    ),
    (
        "rules/layout.rules",
        include_str!("../../rules/layout.rules"),
    ),
    (
        "rules/arithmetic.rules",
        include_str!("../../rules/arithmetic.rules"),
    ),
    (
        "rules/linear.rules",
        include_str!("../../rules/linear.rules"),
    ),
    (
        "rules/normalization.rules",
        include_str!("../../rules/normalization.rules"),
    ),
];

/// A named condition on a bound variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CondKind {
    Zero,
    Inf,
    NegInf,
}

impl CondKind {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "zero" => Some(CondKind::Zero),
            "inf" => Some(CondKind::Inf),
            "ninf" => Some(CondKind::NegInf),
            _ => None,
        }
    }
    /// The leaf that satisfies the condition.
    pub fn leaf(self) -> &'static str {
        match self {
            CondKind::Zero => "0",
            CondKind::Inf => "inf",
            CondKind::NegInf => "-inf",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub lhs: Pattern<Ec>,
    pub rhs: Pattern<Ec>,
    pub conds: Vec<(CondKind, Var)>,
    /// Where it was written, for messages.
    pub origin: String,
}

#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
}

fn rule_error(file: &str, line: usize, why: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Usage(format!("rules {file}:{line}: {why}")))
}

/// Parse one rule file's text. `file` names it in errors.
pub fn parse_rules(file: &str, text: &str) -> Result<Vec<Rule>> {
    let mut out = vec![];
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let body = raw.split('#').next().unwrap_or("").trim();
        if body.is_empty() {
            continue;
        }
        let err = |why: String| rule_error(file, line, why);
        let (name, rest) = body
            .split_once(':')
            .ok_or_else(|| err("expected 'NAME: LHS => RHS [if COND(?var) ...]'".into()))?;
        let name = name.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(err(format!(
                "bad rule name '{name}' (letters, digits, '-' and '_')"
            )));
        }
        let (lhs_src, rest) = rest
            .split_once("=>")
            .ok_or_else(|| err("missing '=>'".into()))?;
        let (rhs_src, conds_src) = match rest.split_once(" if ") {
            Some((r, c)) => (r, c),
            None => (rest, ""),
        };
        let lhs: Pattern<Ec> = lhs_src
            .trim()
            .parse()
            .map_err(|e| err(format!("left side: {e}")))?;
        let rhs: Pattern<Ec> = rhs_src
            .trim()
            .parse()
            .map_err(|e| err(format!("right side: {e}")))?;
        let bound = lhs.vars();
        if let Some(v) = rhs.vars().into_iter().find(|v| !bound.contains(v)) {
            return Err(err(format!(
                "variable {v} on the right side is not bound on the left"
            )));
        }
        let mut conds = vec![];
        for c in conds_src.split_whitespace() {
            let (cname, var) = c
                .strip_suffix(')')
                .and_then(|c| c.split_once('('))
                .ok_or_else(|| err(format!("bad condition '{c}', expected NAME(?var)")))?;
            let kind = CondKind::parse(cname)
                .ok_or_else(|| err(format!("unknown condition '{cname}' (zero, inf, ninf)")))?;
            let var: Var = var
                .parse()
                .map_err(|_| err(format!("bad variable '{var}' in condition")))?;
            if !bound.contains(&var) {
                return Err(err(format!(
                    "condition variable {var} is not bound on the left"
                )));
            }
            conds.push((kind, var));
        }
        out.push(Rule {
            name: name.to_string(),
            lhs,
            rhs,
            conds,
            origin: format!("{file}:{line}"),
        });
    }
    Ok(out)
}

impl RuleSet {
    /// The embedded default rules.
    pub fn default_rules() -> Self {
        let mut set = RuleSet::default();
        for (file, text) in DEFAULT_RULES {
            set.extend(
                parse_rules(file, text).expect("the embedded rules parse (checked by tests)"),
            )
            .expect("no duplicate names in the embedded rules");
        }
        set
    }

    /// Add rules, rejecting a name used twice.
    pub fn extend(&mut self, rules: Vec<Rule>) -> Result<()> {
        for r in rules {
            if let Some(prev) = self.rules.iter().find(|p| p.name == r.name) {
                return Err(Error::new(ErrorKind::Usage(format!(
                    "{}: rule name '{}' is already used at {}",
                    r.origin, r.name, prev.origin
                ))));
            }
            self.rules.push(r);
        }
        Ok(())
    }

    /// Add every `*.rules` file of a directory (sorted by name), each rule checked
    /// numerically first.
    pub fn load_dir(&mut self, dir: &Path) -> Result<()> {
        let io = |e: std::io::Error| Error::new(ErrorKind::Io(e.to_string())).in_file(dir);
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "rules"))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(Error::usage(format!("{}: no *.rules files", dir.display())));
        }
        for f in files {
            let text = std::fs::read_to_string(&f)
                .map_err(|e| Error::new(ErrorKind::Io(e.to_string())).in_file(&f))?;
            let before = self.rules.len();
            self.extend(parse_rules(&f.display().to_string(), &text)?)?;
            // A user rule is checked numerically, as the embedded ones are by the tests
            // (both sides evaluated on random instances): an unsound one is refused.
            for r in &self.rules[before..] {
                if let Some(why) = super::check::refute(r, 12) {
                    return Err(Error::usage(format!(
                        "rules {}: rule '{}' is unsound: {why}",
                        r.origin, r.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// The egg rewrites.
    pub fn rewrites(&self) -> Vec<Rewrite<Ec, ()>> {
        self.rules
            .iter()
            .map(|r| {
                let conds = r.conds.clone();
                let applier = ConditionalApplier {
                    condition: move |eg: &mut EGraph<Ec, ()>, _: Id, subst: &Subst| {
                        conds.iter().all(|(k, v)| has_leaf(eg, subst[*v], k.leaf()))
                    },
                    applier: r.rhs.clone(),
                };
                Rewrite::new(r.name.as_str(), r.lhs.clone(), applier)
                    .expect("a parsed rule is a valid rewrite")
            })
            .collect()
    }
}

fn has_leaf(eg: &EGraph<Ec, ()>, id: Id, leaf: &str) -> bool {
    let sym = Symbol::from(leaf);
    eg[id]
        .nodes
        .iter()
        .any(|n| matches!(n, Ec::Leaf(s) if *s == sym))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_rules_parse() {
        let set = RuleSet::default_rules();
        assert!(set.rules.len() > 30);
        assert_eq!(set.rewrites().len(), set.rules.len());
    }

    #[test]
    fn malformed_rules_name_file_and_line() {
        let cases = [
            ("relu (relu ?x) => ?x", "expected 'NAME"),
            ("r: (relu ?x) ?x", "missing '=>'"),
            ("r: (relu ?x => ?x", "left side"),
            ("r: (relu ?x) => (frobnicate ?x ?x)", "right side"),
            ("r: (relu ?x) => ?y", "variable ?y"),
            (
                "r: (relu ?x) => ?x if positive(?x)",
                "unknown condition 'positive'",
            ),
            ("r: (relu ?x) => ?x if zero(?q)", "not bound"),
            ("bad name: (relu ?x) => ?x", "bad rule name"),
        ];
        for (text, want) in cases {
            let e = parse_rules("my.rules", &format!("# header\n\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("my.rules:3: ") && e.contains(want),
                "{text}: {e}"
            );
        }
        let mut set = RuleSet::default_rules();
        let dup = parse_rules("x.rules", "relu: (relu ?x) => ?x").unwrap();
        assert!(set
            .extend(dup)
            .unwrap_err()
            .to_string()
            .contains("already used at rules/activations.rules"));
    }
}
