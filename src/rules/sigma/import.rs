//! Sigma rules and correlation rules as auditflow rules. A detection becomes a `match` rule whose
//! `where:` is the detection in SQL; an `event_count` or `value_count` correlation becomes a
//! `count` rule over the OR of its base rules (which, as Sigma's `generate: false` says, are not
//! emitted on their own). Sigma matches strings case-insensitively unless `|cased`; so does the
//! SQL written here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_yaml::{Mapping, Value as Yaml};

use super::condition::{self, Condition};
use super::{PRODUCT, SERVICE, SigmaError, column_of, severity_of};

/// One Sigma detection rule, converted.
struct Base {
    name: String,
    uuid: Option<String>,
    title: String,
    sql: String,
    level: Option<String>,
    description: Option<String>,
    extra: Mapping,
}

/// Converts the Sigma documents of `text` (one file) into an auditflow rule file.
pub fn import_text(text: &str, path: &Path) -> Result<String, SigmaError> {
    let parse = |message: String| SigmaError::Parse {
        path: path.to_owned(),
        message,
    };
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let v = <Yaml as serde::Deserialize>::deserialize(doc).map_err(|e| parse(e.to_string()))?;
        match v {
            Yaml::Mapping(m) => docs.push(m),
            Yaml::Null => {}
            _ => return Err(parse("a Sigma document is a mapping".into())),
        }
    }
    let mut bases = Vec::new();
    let mut correlations = Vec::new();
    for doc in docs {
        let title = text_of(&doc, "title").unwrap_or_default();
        let name = text_of(&doc, "name")
            .or_else(|| extra(&doc).and_then(|e| text_of(e, "id")))
            .unwrap_or_else(|| slug(&title));
        let convert = converting(path, &name);
        if doc.contains_key("correlation") {
            correlations.push((name.clone(), doc));
        } else if let Some(Yaml::Mapping(detection)) = doc.get("detection") {
            check_logsource(&doc).map_err(convert)?;
            let sql = detection_sql(detection).map_err(convert)?;
            bases.push(Base {
                uuid: text_of(&doc, "id"),
                level: text_of(&doc, "level"),
                description: text_of(&doc, "description"),
                extra: extra(&doc).cloned().unwrap_or_default(),
                name,
                title,
                sql,
            });
        } else {
            return Err(convert("neither `detection` nor `correlation`".into()));
        }
    }

    let mut rules = Vec::new();
    let mut used = BTreeSet::new();
    for (name, doc) in &correlations {
        let convert = converting(path, name);
        let c = match doc.get("correlation") {
            Some(Yaml::Mapping(c)) => c,
            _ => return Err(convert("`correlation` is a mapping".into())),
        };
        let kind = text_of(c, "type").unwrap_or_default();
        if !matches!(kind.as_str(), "event_count" | "value_count") {
            return Err(convert(format!(
                "correlation type `{kind}` cannot be converted (event_count and value_count can)"
            )));
        }
        let refs = match c.get("rules") {
            Some(Yaml::Sequence(s)) => s.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect(),
            Some(Yaml::String(s)) => vec![s.clone()],
            _ => return Err(convert("`rules` names the base rules".into())),
        };
        let mut sql = Vec::new();
        for r in &refs {
            let base = bases
                .iter()
                .find(|b| &b.name == r || b.uuid.as_ref() == Some(r))
                .ok_or_else(|| convert(format!("base rule `{r}` is not in this file")))?;
            used.insert(base.name.clone());
            sql.push(format!("({})", base.sql));
        }
        let mut rule = Mapping::new();
        rule.insert("id".into(), Yaml::from(name.clone()));
        rule.insert("kind".into(), "count".into());
        rule.insert("source".into(), "audit".into());
        rule.insert("where".into(), Yaml::from(sql.join(" OR ")));
        let group_by = match c.get("group-by").or_else(|| c.get("group_by")) {
            Some(Yaml::Sequence(s)) => s
                .iter()
                .map(|v| {
                    let f = v.as_str().unwrap_or_default();
                    column_of(f)
                        .map(|c| Yaml::from(c.to_owned()))
                        .ok_or_else(|| convert(format!("group-by field `{f}` is not an audit column")))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
            _ => return Err(convert("`group-by` is a list of fields".into())),
        };
        if !group_by.is_empty() {
            rule.insert("group_by".into(), Yaml::Sequence(group_by));
        }
        let timespan = text_of(c, "timespan").ok_or_else(|| convert("`timespan` is required".into()))?;
        rule.insert("window".into(), Yaml::from(timespan));
        let (threshold, field) = count_condition(c).map_err(convert)?;
        rule.insert("threshold".into(), Yaml::from(threshold));
        match (kind.as_str(), field) {
            ("value_count", Some(f)) => {
                let col = column_of(&f).ok_or_else(|| convert(format!("field `{f}` is not an audit column")))?;
                rule.insert("distinct".into(), Yaml::from(col.to_owned()));
            }
            ("value_count", None) => return Err(convert("a value_count condition names its `field`".into())),
            _ => {}
        }
        finish(
            &mut rule,
            doc,
            text_of(doc, "title").unwrap_or_default(),
            text_of(doc, "level"),
        )
        .map_err(convert)?;
        rules.push(Yaml::Mapping(rule));
    }
    for b in bases.iter().filter(|b| !used.contains(&b.name)) {
        let convert = converting(path, &b.name);
        let mut rule = Mapping::new();
        rule.insert("id".into(), Yaml::from(b.name.clone()));
        rule.insert("kind".into(), "match".into());
        rule.insert("source".into(), "audit".into());
        rule.insert("where".into(), Yaml::from(b.sql.clone()));
        if let Some(g) = b.extra.get("group_by") {
            rule.insert("group_by".into(), g.clone());
        }
        let mut doc = Mapping::new();
        doc.insert("auditflow".into(), Yaml::Mapping(b.extra.clone()));
        if let Some(d) = &b.description {
            doc.insert("description".into(), Yaml::from(d.clone()));
        }
        finish(&mut rule, &doc, b.title.clone(), b.level.clone()).map_err(convert)?;
        rules.push(Yaml::Mapping(rule));
    }
    let mut group = Mapping::new();
    let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("sigma");
    group.insert("name".into(), Yaml::from(format!("sigma-{stem}")));
    group.insert("rules".into(), Yaml::Sequence(rules));
    let mut file = Mapping::new();
    file.insert("groups".into(), Yaml::Sequence(vec![Yaml::Mapping(group)]));
    let body = serde_yaml::to_string(&file).map_err(|e| parse(e.to_string()))?;
    Ok(format!(
        "# Imported from Sigma ({}) by `auditflow rules import`.\n{body}",
        path.display()
    ))
}

/// Errors about converting the rule `rule` of `path`.
fn converting<'a>(path: &'a Path, rule: &'a str) -> impl Fn(String) -> SigmaError + Copy + 'a {
    move |message| SigmaError::Convert {
        path: path.to_owned(),
        rule: rule.to_owned(),
        message,
    }
}

/// Severity, summary, description, runbook and repeat interval, from the `auditflow:` extras
/// of an exported rule when present.
fn finish(rule: &mut Mapping, doc: &Mapping, title: String, level: Option<String>) -> Result<(), String> {
    let severity = match level.as_deref() {
        Some(l) => severity_of(l).ok_or_else(|| format!("level `{l}` is not a Sigma level"))?,
        None => "medium",
    };
    rule.insert("severity".into(), severity.into());
    let extra = extra(doc);
    let summary = extra.and_then(|e| text_of(e, "summary")).unwrap_or_else(|| {
        if title.is_empty() {
            "Sigma rule matched".into()
        } else {
            title
        }
    });
    rule.insert("summary".into(), Yaml::from(summary));
    if let Some(d) = text_of(doc, "description") {
        rule.insert("description".into(), Yaml::from(d));
    }
    for key in ["runbook", "repeat_interval"] {
        if let Some(v) = extra.and_then(|e| text_of(e, key)) {
            rule.insert(Yaml::from(key), Yaml::from(v));
        }
    }
    Ok(())
}

fn extra(doc: &Mapping) -> Option<&Mapping> {
    match doc.get("auditflow") {
        Some(Yaml::Mapping(m)) => Some(m),
        _ => None,
    }
}

fn text_of(m: &Mapping, key: &str) -> Option<String> {
    match m.get(key)? {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn slug(title: &str) -> String {
    let s: String = title
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let parts: Vec<&str> = s.split('-').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        "sigma-rule".into()
    } else {
        parts.join("-")
    }
}

fn check_logsource(doc: &Mapping) -> Result<(), String> {
    let Some(Yaml::Mapping(ls)) = doc.get("logsource") else {
        return Err("`logsource` is required".into());
    };
    let product = text_of(ls, "product");
    let service = text_of(ls, "service");
    if product.as_deref() != Some(PRODUCT) || service.as_deref().is_some_and(|s| s != SERVICE) {
        return Err(format!(
            "logsource {}/{} is not Confluent audit (product: {PRODUCT}, service: {SERVICE})",
            product.unwrap_or_default(),
            service.unwrap_or_default()
        ));
    }
    Ok(())
}

/// `condition: {gte: N}` (or `gt`), with `field` for value_count.
fn count_condition(c: &Mapping) -> Result<(u64, Option<String>), String> {
    let Some(Yaml::Mapping(cond)) = c.get("condition") else {
        return Err("the correlation needs a `condition` mapping".into());
    };
    let field = text_of(cond, "field");
    let number = |k: &str| cond.get(k).and_then(Yaml::as_u64);
    match (number("gte"), number("gt")) {
        (Some(n), None) => Ok((n, field)),
        (None, Some(n)) => Ok((n + 1, field)),
        _ => Err("only `gte` and `gt` conditions convert (count rules fire at a threshold)".into()),
    }
}

/// The detection as one SQL boolean expression.
fn detection_sql(d: &Mapping) -> Result<String, String> {
    let mut selections = BTreeMap::new();
    let mut condition_text = Vec::new();
    for (k, v) in d {
        let key = k.as_str().ok_or("selection names are strings")?;
        match key {
            "condition" => match v {
                Yaml::String(s) => condition_text.push(s.clone()),
                Yaml::Sequence(s) => condition_text.extend(s.iter().filter_map(|c| c.as_str().map(str::to_owned))),
                _ => return Err("`condition` is a string".into()),
            },
            "timeframe" => return Err("`timeframe` is deprecated Sigma: use a correlation rule".into()),
            _ => {
                selections.insert(key.to_owned(), selection_sql(key, v)?);
            }
        }
    }
    if condition_text.is_empty() {
        return Err("the detection has no `condition`".into());
    }
    let names: Vec<String> = selections.keys().cloned().collect();
    let parts = condition_text
        .iter()
        .map(|c| condition::parse(c, &names).map(|c| render(&c, &selections)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("({})", parts.join(") OR ("))
    })
}

fn render(c: &Condition, selections: &BTreeMap<String, String>) -> String {
    match c {
        Condition::Selection(s) => selections.get(s).cloned().unwrap_or_else(|| "false".into()),
        // Sigma: a selection on a field an event lacks does not match, so `not` it does.
        Condition::Not(inner) => format!("(CASE WHEN {} THEN false ELSE true END)", render(inner, selections)),
        Condition::And(parts) => parts
            .iter()
            .map(|p| format!("({})", render(p, selections)))
            .collect::<Vec<_>>()
            .join(" AND "),
        Condition::Or(parts) => parts
            .iter()
            .map(|p| format!("({})", render(p, selections)))
            .collect::<Vec<_>>()
            .join(" OR "),
    }
}

fn selection_sql(name: &str, v: &Yaml) -> Result<String, String> {
    match v {
        Yaml::Mapping(m) => map_sql(m),
        Yaml::Sequence(items) if items.iter().all(|i| matches!(i, Yaml::Mapping(_))) => {
            let parts = items
                .iter()
                .filter_map(|i| match i {
                    Yaml::Mapping(m) => Some(map_sql(m).map(|s| format!("({s})"))),
                    _ => None,
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(parts.join(" OR "))
        }
        _ => Err(format!(
            "selection `{name}`: keyword (full-text) selections cannot be converted; name a field"
        )),
    }
}

/// A Sigma map: every field condition holds.
fn map_sql(m: &Mapping) -> Result<String, String> {
    let mut parts = Vec::new();
    for (k, v) in m {
        let key = k.as_str().ok_or("field names are strings")?;
        parts.push(format!("({})", super::import_value::field_sql(key, v)?));
    }
    if parts.is_empty() {
        return Err("an empty selection".into());
    }
    Ok(parts.join(" AND "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HANDWRITTEN: &str = r#"
title: Topic deletion by a person
name: person-deletes-topic
id: 9f1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d
status: test
logsource: {product: confluent, service: audit}
detection:
  selection:
    data.methodName: kafka.DeleteTopics
    data.authorizationInfo.granted: true
  filter_service_accounts:
    data.authenticationInfo.principal|startswith: 'User:sa-'
  filter_admins:
    principal: [User:admin, User:ops]
  condition: selection and not 1 of filter_*
level: high
---
title: Many keys from one address
name: spray
correlation:
  type: value_count
  rules: [failed-login]
  group-by: [client_ip]
  timespan: 10m
  condition: {field: data.authenticationInfo.metadata.identifier, gte: 10}
level: critical
---
title: A failed login
name: failed-login
logsource: {product: confluent, service: audit}
detection:
  selection:
    type: io.confluent.kafka.server/authentication
  success:
    result_status: SUCCESS
  condition: selection and not success
level: low
"#;

    #[test]
    fn a_handwritten_sigma_file_converts_to_loadable_rules() {
        let out = import_text(HANDWRITTEN, Path::new("h.yml")).unwrap();
        let ctx = datafusion::execution::context::SessionContext::new();
        let rules = crate::rules::parse_rules(&ctx, &out, Path::new("h.yaml")).unwrap();
        let ids: Vec<&str> = rules.iter().map(|r| r.meta.id.as_str()).collect();
        assert_eq!(
            ids,
            ["spray", "person-deletes-topic"],
            "the base of a correlation is not emitted alone"
        );
        assert!(out.contains("distinct: auth_identifier"), "{out}");
        assert!(out.contains("threshold: 10"), "{out}");
        assert!(out.contains("starts_with(lower(principal), 'user:sa-')"), "{out}");
        assert!(out.contains("severity: critical"), "{out}");
    }

    #[test]
    fn what_cannot_convert_names_the_file_the_rule_and_the_construct() {
        let err = |text: &str| import_text(text, Path::new("bad.yml")).unwrap_err().to_string();
        let base = "title: t\nname: r\nlogsource: {product: confluent, service: audit}\n";
        let e = err(&format!("{base}detection:\n  s: {{CommandLine: x}}\n  condition: s\n"));
        assert!(
            e.contains("bad.yml") && e.contains("`r`") && e.contains("CommandLine"),
            "{e}"
        );
        let e = err(&format!("{base}detection:\n  s: [evil, words]\n  condition: s\n"));
        assert!(e.contains("keyword"), "{e}");
        let e = err("title: t\nname: r\nlogsource: {product: windows}\ndetection:\n  s: {method: x}\n  condition: s\n");
        assert!(e.contains("not Confluent audit"), "{e}");
        let e = err("title: c\nname: c\ncorrelation: {type: temporal, rules: [a], timespan: 5m}\n");
        assert!(e.contains("temporal"), "{e}");
        let e = err(&format!(
            "{base}detection:\n  s: {{method|base64offset: x}}\n  condition: s\n"
        ));
        assert!(e.contains("base64offset"), "{e}");
    }
}
