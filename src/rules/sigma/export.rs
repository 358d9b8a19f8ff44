//! auditflow `match` and `count` rules as Sigma: the `where:` expression becomes a detection
//! (one selection per comparison, combined in the condition), a `count` rule becomes that base
//! rule plus an `event_count` (or, with `distinct`, `value_count`) correlation rule.

use std::path::Path;

use datafusion::sql::sqlparser::ast::{BinaryOperator, Expr, UnaryOperator, Value};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use serde_yaml::{Mapping, Value as Yaml};

use super::{PRODUCT, SERVICE, SigmaError, audit_column, level_of, uuid_for};
use crate::rules::load::{RawRule, RawRuleFile};

/// A detection under construction: comparisons combined with and, or, not.
#[derive(Debug, Clone)]
enum Node {
    /// One field condition: `field[|modifier]` -> value.
    Leaf(String, Yaml),
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
}

/// One exported rule: its file name and the Sigma YAML (one or two documents).
pub struct Exported {
    pub file_name: String,
    pub yaml: String,
}

/// Exports every `match` and `count` rule on `audit` of a rule file; other rules are listed in
/// the second value with why they have no Sigma form.
pub fn export_file(path: &Path) -> Result<(Vec<Exported>, Vec<String>), SigmaError> {
    let text = std::fs::read_to_string(path).map_err(|source| SigmaError::Io {
        path: path.to_owned(),
        source,
    })?;
    let raw: RawRuleFile = serde_yaml::from_str(&text).map_err(|e| SigmaError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for rule in raw.groups.iter().flat_map(|g| &g.rules) {
        let source = rule.source.as_deref().unwrap_or("audit");
        if !matches!(rule.kind.as_str(), "match" | "count") || source != "audit" {
            skipped.push(format!(
                "{}: a {} rule on {source} has no Sigma form",
                rule.id, rule.kind
            ));
            continue;
        }
        let err = |message: String| SigmaError::Convert {
            path: path.to_owned(),
            rule: rule.id.clone(),
            message,
        };
        out.push(export_rule(rule).map_err(err)?);
    }
    Ok((out, skipped))
}

fn export_rule(rule: &RawRule) -> Result<Exported, String> {
    let detection = match rule.where_.as_deref() {
        Some(w) => detection_of(&parse_where(w)?),
        // Every event: a selection no audit event fails (every event has an id).
        None => detection_of(&Node::Not(Box::new(Node::Leaf("id".into(), Yaml::Null)))),
    };
    let mut base = Mapping::new();
    let is_count = rule.kind == "count";
    let base_name = if is_count {
        format!("{}-events", rule.id)
    } else {
        rule.id.clone()
    };
    base.insert("title".into(), Yaml::from(title_of(rule, is_count)));
    base.insert("id".into(), Yaml::from(uuid_for(&base_name)));
    base.insert("name".into(), Yaml::from(base_name.clone()));
    base.insert("status".into(), "experimental".into());
    if let Some(d) = rule.description.as_ref().or(Some(&rule.summary)) {
        base.insert("description".into(), Yaml::from(d.clone()));
    }
    if let Some(r) = &rule.runbook {
        base.insert("references".into(), Yaml::Sequence(vec![Yaml::from(r.clone())]));
    }
    base.insert("author".into(), "auditflow rules export".into());
    let mut logsource = Mapping::new();
    logsource.insert("product".into(), PRODUCT.into());
    logsource.insert("service".into(), SERVICE.into());
    base.insert("logsource".into(), Yaml::Mapping(logsource));
    base.insert("detection".into(), Yaml::Mapping(detection));
    base.insert("level".into(), level_of(&rule.severity).into());
    // What Sigma cannot say, for a faithful round trip.
    let mut extra = Mapping::new();
    extra.insert("id".into(), Yaml::from(rule.id.clone()));
    extra.insert("summary".into(), Yaml::from(rule.summary.clone()));
    if !is_count && !rule.group_by.is_empty() {
        extra.insert("group_by".into(), strings(&rule.group_by));
    }
    if let Some(r) = &rule.repeat_interval {
        extra.insert("repeat_interval".into(), Yaml::from(r.clone()));
    }
    if let Some(r) = &rule.runbook {
        extra.insert("runbook".into(), Yaml::from(r.clone()));
    }
    if !is_count {
        base.insert("auditflow".into(), Yaml::Mapping(extra.clone()));
    }
    let mut yaml = serde_yaml::to_string(&base).map_err(|e| e.to_string())?;
    if is_count {
        let mut c = Mapping::new();
        c.insert("title".into(), Yaml::from(title_of(rule, false)));
        c.insert("id".into(), Yaml::from(uuid_for(&rule.id)));
        c.insert("name".into(), Yaml::from(rule.id.clone()));
        c.insert("status".into(), "experimental".into());
        c.insert("author".into(), "auditflow rules export".into());
        let mut corr = Mapping::new();
        corr.insert(
            "type".into(),
            if rule.distinct.is_some() {
                "value_count"
            } else {
                "event_count"
            }
            .into(),
        );
        corr.insert("rules".into(), Yaml::Sequence(vec![Yaml::from(base_name)]));
        if !rule.group_by.is_empty() {
            corr.insert("group-by".into(), strings(&rule.group_by));
        }
        let window = rule.window.clone().ok_or("a count rule needs `window`")?;
        corr.insert("timespan".into(), Yaml::from(timespan(&window)?));
        let threshold = rule.threshold.ok_or("a count rule needs `threshold`")?;
        let mut cond = Mapping::new();
        if let Some(field) = &rule.distinct {
            cond.insert("field".into(), Yaml::from(field.clone()));
        }
        cond.insert("gte".into(), Yaml::from(threshold.ceil() as u64));
        corr.insert("condition".into(), Yaml::Mapping(cond));
        c.insert("correlation".into(), Yaml::Mapping(corr));
        c.insert("level".into(), level_of(&rule.severity).into());
        c.insert("auditflow".into(), Yaml::Mapping(extra));
        yaml.push_str("---\n");
        yaml.push_str(&serde_yaml::to_string(&c).map_err(|e| e.to_string())?);
    }
    Ok(Exported {
        file_name: format!("{}.yml", rule.id),
        yaml,
    })
}

fn title_of(rule: &RawRule, events: bool) -> String {
    // Titles are plain text: the summary without its template markup.
    let mut t = rule.id.replace('-', " ");
    if let Some(first) = t.get(..1) {
        t = first.to_uppercase() + &t[1..];
    }
    if events { format!("{t} (events counted)") } else { t }
}

fn strings(items: &[String]) -> Yaml {
    Yaml::Sequence(items.iter().map(|s| Yaml::from(s.clone())).collect())
}

/// Sigma timespans are a number and one of s, m, h, d.
fn timespan(window: &str) -> Result<String, String> {
    let d = humantime::parse_duration(window).map_err(|e| format!("window `{window}`: {e}"))?;
    let s = d.as_secs();
    Ok(match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    })
}

fn parse_where(text: &str) -> Result<Node, String> {
    let expr = Parser::new(&GenericDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| format!("`where`: {e}"))?;
    node_of(&expr)
}

fn column(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => audit_column(&i.value).map(str::to_owned),
        _ => None,
    }
}

fn literal(e: &Expr) -> Option<Yaml> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) => Some(Yaml::from(escape(s))),
            Value::Number(n, _) => serde_yaml::from_str(n).ok(),
            Value::Boolean(b) => Some(Yaml::from(*b)),
            Value::Null => Some(Yaml::Null),
            _ => None,
        },
        Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => match literal(expr)? {
            Yaml::Number(n) => serde_yaml::from_str(&format!("-{n}")).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// A literal string as a Sigma value: `*`, `?` and `\` are wildcards and escapes there.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('*', "\\*").replace('?', "\\?")
}

/// A LIKE pattern as a Sigma value with wildcards.
fn like_pattern(p: &str) -> String {
    escape(p).replace('%', "*").replace('_', "?")
}

fn node_of(e: &Expr) -> Result<Node, String> {
    let unsupported = || format!("`{e}` has no Sigma form");
    Ok(match e {
        Expr::Nested(inner) => node_of(inner)?,
        Expr::UnaryOp {
            op: UnaryOperator::Not,
            expr,
        } => Node::Not(Box::new(node_of(expr)?)),
        Expr::BinaryOp { left, op, right } => match op {
            BinaryOperator::And => Node::And(flatten(node_of(left)?, node_of(right)?, true)),
            BinaryOperator::Or => Node::Or(flatten(node_of(left)?, node_of(right)?, false)),
            _ => {
                let (col, value, op) = match (column(left), literal(right), column(right), literal(left)) {
                    (Some(c), Some(v), _, _) => (c, v, op.clone()),
                    // `'x' = col`: the comparison mirrored.
                    (_, _, Some(c), Some(v)) => (c, v, mirror(op).ok_or_else(unsupported)?),
                    _ => return Err(unsupported()),
                };
                let leaf = |modifier: &str, v: Yaml| {
                    Node::Leaf(
                        if modifier.is_empty() {
                            col.clone()
                        } else {
                            format!("{col}|{modifier}")
                        },
                        v,
                    )
                };
                match op {
                    BinaryOperator::Eq => leaf("", value),
                    BinaryOperator::NotEq => Node::Not(Box::new(leaf("", value))),
                    BinaryOperator::Gt => leaf("gt", value),
                    BinaryOperator::GtEq => leaf("gte", value),
                    BinaryOperator::Lt => leaf("lt", value),
                    BinaryOperator::LtEq => leaf("lte", value),
                    BinaryOperator::PGRegexMatch => match &**right {
                        Expr::Value(v) => match &v.value {
                            Value::SingleQuotedString(s) => leaf("re", Yaml::from(s.clone())),
                            _ => return Err(unsupported()),
                        },
                        _ => return Err(unsupported()),
                    },
                    _ => return Err(unsupported()),
                }
            }
        },
        Expr::InList { expr, list, negated } => {
            let col = column(expr).ok_or_else(unsupported)?;
            let values: Option<Vec<Yaml>> = list.iter().map(literal).collect();
            let leaf = Node::Leaf(col, Yaml::Sequence(values.ok_or_else(unsupported)?));
            if *negated { Node::Not(Box::new(leaf)) } else { leaf }
        }
        Expr::Like {
            negated,
            expr,
            pattern,
            escape_char: None,
            any: false,
        }
        | Expr::ILike {
            negated,
            expr,
            pattern,
            escape_char: None,
            any: false,
        } => {
            let col = column(expr).ok_or_else(unsupported)?;
            let p = match &**pattern {
                Expr::Value(v) => match &v.value {
                    Value::SingleQuotedString(s) => s.clone(),
                    _ => return Err(unsupported()),
                },
                _ => return Err(unsupported()),
            };
            // `%x%`, `x%`, `%x` as Sigma's modifiers; other patterns as wildcards.
            let inner = |t: &str| !t.is_empty() && !t.contains(['%', '_']);
            let (key, value) = match (p.strip_prefix('%'), p.strip_suffix('%')) {
                (Some(rest), Some(_)) if rest.strip_suffix('%').is_some_and(inner) => (
                    format!("{col}|contains"),
                    escape(rest.strip_suffix('%').unwrap_or_default()),
                ),
                (None, Some(head)) if inner(head) => (format!("{col}|startswith"), escape(head)),
                (Some(tail), None) if inner(tail) => (format!("{col}|endswith"), escape(tail)),
                _ => (col, like_pattern(&p)),
            };
            let leaf = Node::Leaf(key, Yaml::from(value));
            if *negated { Node::Not(Box::new(leaf)) } else { leaf }
        }
        Expr::IsNull(inner) => Node::Leaf(column(inner).ok_or_else(unsupported)?, Yaml::Null),
        Expr::IsNotNull(inner) => Node::Not(Box::new(Node::Leaf(column(inner).ok_or_else(unsupported)?, Yaml::Null))),
        Expr::IsTrue(inner) => Node::Leaf(column(inner).ok_or_else(unsupported)?, Yaml::from(true)),
        Expr::IsFalse(inner) => Node::Leaf(column(inner).ok_or_else(unsupported)?, Yaml::from(false)),
        Expr::Identifier(_) => Node::Leaf(column(e).ok_or_else(unsupported)?, Yaml::from(true)),
        _ => return Err(unsupported()),
    })
}

fn mirror(op: &BinaryOperator) -> Option<BinaryOperator> {
    Some(match op {
        BinaryOperator::Eq => BinaryOperator::Eq,
        BinaryOperator::NotEq => BinaryOperator::NotEq,
        BinaryOperator::Gt => BinaryOperator::Lt,
        BinaryOperator::GtEq => BinaryOperator::LtEq,
        BinaryOperator::Lt => BinaryOperator::Gt,
        BinaryOperator::LtEq => BinaryOperator::GtEq,
        _ => return None,
    })
}

fn flatten(a: Node, b: Node, and: bool) -> Vec<Node> {
    let mut out = Vec::new();
    for n in [a, b] {
        match (n, and) {
            (Node::And(v), true) | (Node::Or(v), false) => out.extend(v),
            (n, _) => out.push(n),
        }
    }
    out
}

/// The detection mapping: positive comparisons ANDed together share one selection (Sigma's map
/// is an AND), everything else gets a selection of its own, combined in the condition.
fn detection_of(root: &Node) -> Mapping {
    let mut selections: Vec<(String, Mapping)> = Vec::new();
    let condition = render(root, &mut selections, true);
    let mut d = Mapping::new();
    for (name, m) in selections {
        d.insert(Yaml::from(name), Yaml::Mapping(m));
    }
    d.insert("condition".into(), Yaml::from(condition));
    d
}

fn render(n: &Node, selections: &mut Vec<(String, Mapping)>, top: bool) -> String {
    let mut new_selection = |m: Mapping| {
        let name = if selections.is_empty() && top {
            "selection".to_owned()
        } else {
            format!("selection_{}", selections.len() + 1)
        };
        selections.push((name.clone(), m));
        name
    };
    match n {
        Node::Leaf(k, v) => {
            let mut m = Mapping::new();
            m.insert(Yaml::from(k.clone()), v.clone());
            new_selection(m)
        }
        Node::And(parts) => {
            // The leaves with distinct fields merge into one selection.
            let mut merged = Mapping::new();
            let mut rest = Vec::new();
            for p in parts {
                match p {
                    Node::Leaf(k, v) if !merged.contains_key(k.as_str()) => {
                        merged.insert(Yaml::from(k.clone()), v.clone());
                    }
                    other => rest.push(other),
                }
            }
            let mut terms = Vec::new();
            if !merged.is_empty() {
                terms.push(new_selection(merged));
            }
            for p in rest {
                let t = render(p, selections, false);
                terms.push(if matches!(p, Node::Or(_)) { format!("({t})") } else { t });
            }
            terms.join(" and ")
        }
        Node::Or(parts) => parts
            .iter()
            .map(|p| render(p, selections, false))
            .collect::<Vec<_>>()
            .join(" or "),
        Node::Not(inner) => {
            let t = render(inner, selections, false);
            match **inner {
                Node::Leaf(..) | Node::Not(_) => format!("not {t}"),
                _ => format!("not ({t})"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detection(sql: &str) -> String {
        serde_yaml::to_string(&detection_of(&parse_where(sql).unwrap())).unwrap()
    }

    #[test]
    fn where_expressions_become_selections_and_a_condition() {
        let d = detection("type = 'io.confluent.kafka.server/authentication' AND result_status <> 'SUCCESS'");
        assert_eq!(
            d,
            "selection:\n  type: io.confluent.kafka.server/authentication\nselection_2:\n  result_status: SUCCESS\ncondition: selection and not selection_2\n"
        );
        let d = detection("method IN ('kafka.CreateAcls', 'kafka.DeleteAcls') AND (granted IS NULL OR granted)");
        assert!(d.contains("method:\n  - kafka.CreateAcls\n  - kafka.DeleteAcls"), "{d}");
        assert!(
            d.contains("condition: selection and (selection_2 or selection_3)"),
            "{d}"
        );
        let d = detection("method LIKE '%RoleBinding%' AND client_port > 1024");
        assert!(d.contains("method|contains: RoleBinding"), "{d}");
        assert!(detection("principal LIKE 'User:sa-%'").contains("principal|startswith: User:sa-"));
        assert!(detection("principal LIKE 'a%b'").contains("principal: a*b"));
        assert!(d.contains("client_port|gt: 1024"), "{d}");
        assert!(detection("principal = 'a*b'").contains("principal: a\\*b"));
        assert!(
            parse_where("lower(principal) = 'x'")
                .unwrap_err()
                .contains("no Sigma form")
        );
        assert!(parse_where("raw = 'x'").unwrap_err().contains("no Sigma form"));
    }

    #[test]
    fn timespans_are_sigma_units() {
        assert_eq!(timespan("5m").unwrap(), "5m");
        assert_eq!(timespan("90s").unwrap(), "90s");
        assert_eq!(timespan("120m").unwrap(), "2h");
        assert_eq!(timespan("1day").unwrap(), "1d");
    }
}
