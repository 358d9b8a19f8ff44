//! One Sigma field condition (`field|modifier|...: value or list`) as SQL over `audit_events`.

use serde_yaml::Value as Yaml;

use super::column_of;

#[derive(Default)]
struct Modifiers {
    contains: bool,
    startswith: bool,
    endswith: bool,
    all: bool,
    re: bool,
    cidr: bool,
    cased: bool,
    exists: bool,
    compare: Option<&'static str>,
}

/// `key` is `field|mod|mod`; `value` a scalar, a list (any of them, or all with `|all`) or null.
pub fn field_sql(key: &str, value: &Yaml) -> Result<String, String> {
    let mut parts = key.split('|');
    let field = parts.next().unwrap_or_default();
    let col = column_of(field).ok_or_else(|| format!("field `{field}` is not an audit column"))?;
    let mut m = Modifiers::default();
    for modifier in parts {
        match modifier {
            "contains" => m.contains = true,
            "startswith" => m.startswith = true,
            "endswith" => m.endswith = true,
            "all" => m.all = true,
            "re" => m.re = true,
            "cidr" => m.cidr = true,
            "cased" => m.cased = true,
            "exists" => m.exists = true,
            "gt" => m.compare = Some(">"),
            "gte" => m.compare = Some(">="),
            "lt" => m.compare = Some("<"),
            "lte" => m.compare = Some("<="),
            other => return Err(format!("modifier `{other}` (on `{field}`) cannot be converted")),
        }
    }
    let values: Vec<&Yaml> = match value {
        Yaml::Sequence(items) => items.iter().collect(),
        v => vec![v],
    };
    if values.is_empty() {
        return Err(format!("`{key}` has an empty list"));
    }
    let each = values
        .iter()
        .map(|v| value_sql(col, v, &m))
        .collect::<Result<Vec<_>, _>>()?;
    let joiner = if m.all { " AND " } else { " OR " };
    Ok(if each.len() == 1 {
        each[0].clone()
    } else {
        each.iter().map(|e| format!("({e})")).collect::<Vec<_>>().join(joiner)
    })
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A piece of a Sigma string: literal text, or a wildcard.
#[derive(Debug, PartialEq)]
enum Piece {
    Text(String),
    Any,
    One,
}

/// Splits a Sigma string into literal text and wildcards (`*`, `?`; `\` escapes).
fn pieces(s: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some('*' | '?' | '\\')) => text.extend(chars.next()),
            '*' | '?' => {
                if !text.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut text)));
                }
                out.push(if c == '*' { Piece::Any } else { Piece::One });
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    out
}

fn value_sql(col: &str, v: &Yaml, m: &Modifiers) -> Result<String, String> {
    if m.exists {
        return match v {
            Yaml::Bool(true) => Ok(format!("{col} IS NOT NULL")),
            Yaml::Bool(false) => Ok(format!("{col} IS NULL")),
            _ => Err(format!("`{col}|exists` takes true or false")),
        };
    }
    if let Some(op) = m.compare {
        return match v {
            Yaml::Number(n) => Ok(format!("{col} {op} {n}")),
            _ => Err(format!("`{col}|{op}` compares with a number")),
        };
    }
    let s = match v {
        Yaml::Null => return Ok(format!("{col} IS NULL")),
        Yaml::Bool(b) => return Ok(format!("{col} = {b}")),
        Yaml::Number(n) => return Ok(format!("{col} = {n}")),
        Yaml::String(s) => s.clone(),
        _ => return Err(format!("`{col}`: a value is a string, number, boolean or null")),
    };
    if m.re {
        return Ok(format!("{col} ~ {}", quote(&s)));
    }
    if m.cidr {
        return cidr_sql(col, &s);
    }
    let mut p = pieces(&s);
    if m.contains || m.endswith {
        p.insert(0, Piece::Any);
    }
    if m.contains || m.startswith {
        p.push(Piece::Any);
    }
    // Case-insensitive unless `|cased`, as Sigma matches strings.
    let (subject, fold): (String, fn(&str) -> String) = if m.cased {
        (col.to_owned(), |t: &str| t.to_owned())
    } else {
        (format!("lower({col})"), |t: &str| t.to_lowercase())
    };
    Ok(match p.as_slice() {
        [] => format!("{col} = ''"),
        [Piece::Text(t)] => format!("{subject} = {}", quote(&fold(t))),
        [Piece::Any, Piece::Text(t), Piece::Any] => format!("strpos({subject}, {}) > 0", quote(&fold(t))),
        [Piece::Text(t), Piece::Any] => format!("starts_with({subject}, {})", quote(&fold(t))),
        [Piece::Any, Piece::Text(t)] => format!("ends_with({subject}, {})", quote(&fold(t))),
        [Piece::Any] => format!("{col} IS NOT NULL"),
        pieces => {
            let mut re = String::from("^");
            for piece in pieces {
                match piece {
                    Piece::Text(t) => re.push_str(&regex_escape(t)),
                    Piece::Any => re.push_str(".*"),
                    Piece::One => re.push('.'),
                }
            }
            re.push('$');
            let op = if m.cased { "~" } else { "~*" };
            format!("{col} {op} {}", quote(&re))
        }
    })
}

fn regex_escape(t: &str) -> String {
    let mut out = String::new();
    for c in t.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// An IPv4 CIDR as prefixes of the dotted address (exact: a partial octet becomes the list of
/// its values).
fn cidr_sql(col: &str, cidr: &str) -> Result<String, String> {
    let bad = || format!("`{cidr}` is not an IPv4 CIDR (IPv6 ranges cannot be converted)");
    let (addr, bits) = cidr.split_once('/').ok_or_else(bad)?;
    let ip: std::net::Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let bits: u32 = bits.parse().map_err(|_| bad())?;
    if bits > 32 {
        return Err(bad());
    }
    let o = ip.octets();
    if bits == 32 {
        return Ok(format!("{col} = {}", quote(&ip.to_string())));
    }
    if bits == 0 {
        return Ok(format!("{col} IS NOT NULL"));
    }
    let full = (bits / 8) as usize;
    let rest = bits % 8;
    let head: Vec<String> = o[..full].iter().map(u8::to_string).collect();
    let prefix = |extra: Option<u8>| {
        let mut p = head.clone();
        p.extend(extra.map(|e| e.to_string()));
        format!("{}.", p.join("."))
    };
    let prefixes: Vec<String> = if rest == 0 {
        vec![prefix(None)]
    } else {
        let mask = 0xffu8 << (8 - rest);
        let base = o[full] & mask;
        (0..(1u16 << (8 - rest)))
            .map(|i| prefix(Some(base + i as u8)))
            .collect()
    };
    Ok(prefixes
        .iter()
        .map(|p| format!("starts_with({col}, {})", quote(p)))
        .collect::<Vec<_>>()
        .join(" OR "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sql(key: &str, yaml: &str) -> String {
        let value: Yaml = serde_yaml::from_str(yaml).unwrap();
        field_sql(key, &value).unwrap_or_else(|e| panic!("{key}: {yaml}: {e}"))
    }

    #[test]
    fn values_and_modifiers_become_sql() {
        assert_eq!(
            sql("data.methodName", "kafka.DeleteTopics"),
            "lower(method) = 'kafka.deletetopics'"
        );
        assert_eq!(
            sql("method|cased", "kafka.DeleteTopics"),
            "method = 'kafka.DeleteTopics'"
        );
        assert_eq!(sql("granted", "false"), "granted = false");
        assert_eq!(sql("principal", "null"), "principal IS NULL");
        assert_eq!(
            sql("principal|contains", "mallory"),
            "strpos(lower(principal), 'mallory') > 0"
        );
        assert_eq!(
            sql("principal|startswith", "'User:'"),
            "starts_with(lower(principal), 'user:')"
        );
        assert_eq!(
            sql("resource_name|endswith", "-orders"),
            "ends_with(lower(resource_name), '-orders')"
        );
        assert_eq!(sql("principal", "User:*-admin?"), "principal ~* '^User:.*-admin.$'");
        assert_eq!(sql("principal", "'a\\*b'"), "lower(principal) = 'a*b'");
        assert_eq!(sql("client_port|gte", "1024"), "client_port >= 1024");
        assert_eq!(sql("principal|re", "^User:sa-"), "principal ~ '^User:sa-'");
        assert_eq!(sql("client_id|exists", "true"), "client_id IS NOT NULL");
        assert_eq!(
            sql("method", "[a, b]"),
            "(lower(method) = 'a') OR (lower(method) = 'b')"
        );
        assert_eq!(
            sql("principal|contains|all", "[x, y]"),
            "(strpos(lower(principal), 'x') > 0) AND (strpos(lower(principal), 'y') > 0)"
        );
        assert_eq!(sql("principal", "\"O'Brien\""), "lower(principal) = 'o''brien'");
    }

    #[test]
    fn cidr_ranges_are_exact_prefixes() {
        assert_eq!(sql("client_ip|cidr", "10.1.0.0/16"), "starts_with(client_ip, '10.1.')");
        let s = sql("client_ip|cidr", "192.0.2.0/23");
        assert_eq!(
            s,
            "starts_with(client_ip, '192.0.2.') OR starts_with(client_ip, '192.0.3.')"
        );
        assert!(
            field_sql("client_ip|cidr", &Yaml::from("2001:db8::/32"))
                .unwrap_err()
                .contains("IPv6")
        );
    }

    #[test]
    fn what_cannot_convert_says_so() {
        assert!(
            field_sql("CommandLine", &Yaml::from("x"))
                .unwrap_err()
                .contains("not an audit column")
        );
        assert!(
            field_sql("method|base64", &Yaml::from("x"))
                .unwrap_err()
                .contains("`base64`")
        );
    }
}
