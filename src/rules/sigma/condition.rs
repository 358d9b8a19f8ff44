//! Sigma's `condition:` language: selection names, `and`, `or`, `not`, parentheses, and
//! `1 of X*` / `all of X*` / `1 of them` / `all of them`. Precedence as Sigma's: `not` binds
//! tightest, then `and`, then `or`. Pipes (the deprecated aggregations) are refused.

/// A parsed condition over selection names.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Selection(String),
    Not(Box<Condition>),
    And(Vec<Condition>),
    Or(Vec<Condition>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Open,
    Close,
}

fn tokens(text: &str) -> Result<Vec<Token>, String> {
    if text.contains('|') {
        return Err(
            "aggregations in a condition (`| count() ...`) are deprecated Sigma: use a correlation rule".into(),
        );
    }
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        match c {
            '(' | ')' | ' ' | '\t' | '\n' => {
                if !word.is_empty() {
                    out.push(Token::Word(std::mem::take(&mut word)));
                }
                match c {
                    '(' => out.push(Token::Open),
                    ')' => out.push(Token::Close),
                    _ => {}
                }
            }
            _ => word.push(c),
        }
    }
    if !word.is_empty() {
        out.push(Token::Word(word));
    }
    Ok(out)
}

/// Parses `text` given the detection's selection names.
pub fn parse(text: &str, selections: &[String]) -> Result<Condition, String> {
    let tokens = tokens(text)?;
    let mut p = Parser {
        tokens,
        at: 0,
        selections,
    };
    let c = p.or()?;
    if p.at != p.tokens.len() {
        return Err(format!("unexpected `{}` in condition `{text}`", p.describe()));
    }
    Ok(c)
}

struct Parser<'a> {
    tokens: Vec<Token>,
    at: usize,
    selections: &'a [String],
}

impl Parser<'_> {
    fn peek_word(&self, w: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(x)) if x.eq_ignore_ascii_case(w))
    }

    fn describe(&self) -> String {
        match self.tokens.get(self.at) {
            Some(Token::Word(w)) => w.clone(),
            Some(Token::Open) => "(".into(),
            Some(Token::Close) => ")".into(),
            None => "end".into(),
        }
    }

    fn or(&mut self) -> Result<Condition, String> {
        let mut parts = vec![self.and()?];
        while self.peek_word("or") {
            self.at += 1;
            parts.push(self.and()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Condition::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Condition, String> {
        let mut parts = vec![self.not()?];
        while self.peek_word("and") {
            self.at += 1;
            parts.push(self.not()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Condition::And(parts)
        })
    }

    fn not(&mut self) -> Result<Condition, String> {
        if self.peek_word("not") {
            self.at += 1;
            return Ok(Condition::Not(Box::new(self.not()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Condition, String> {
        match self.tokens.get(self.at).cloned() {
            Some(Token::Open) => {
                self.at += 1;
                let c = self.or()?;
                if self.tokens.get(self.at) != Some(&Token::Close) {
                    return Err(format!("expected `)`, found `{}`", self.describe()));
                }
                self.at += 1;
                Ok(c)
            }
            Some(Token::Word(w)) if w == "1" || w.eq_ignore_ascii_case("all") || w.eq_ignore_ascii_case("any") => {
                self.at += 1;
                if !self.peek_word("of") {
                    return Err(format!("expected `of` after `{w}`"));
                }
                self.at += 1;
                let Some(Token::Word(pattern)) = self.tokens.get(self.at).cloned() else {
                    return Err(format!("expected a selection pattern after `{w} of`"));
                };
                self.at += 1;
                let names: Vec<Condition> = self
                    .selections
                    .iter()
                    .filter(|s| pattern == "them" || glob(&pattern, s))
                    .map(|s| Condition::Selection(s.clone()))
                    .collect();
                if names.is_empty() {
                    return Err(format!("`{w} of {pattern}` matches no selection"));
                }
                Ok(if w == "1" || w.eq_ignore_ascii_case("any") {
                    Condition::Or(names)
                } else {
                    Condition::And(names)
                })
            }
            Some(Token::Word(w)) => {
                if !self.selections.contains(&w) {
                    return Err(format!("condition names `{w}`, which is not a selection"));
                }
                self.at += 1;
                Ok(Condition::Selection(w))
            }
            Some(Token::Close) => Err("unexpected `)` in condition".into()),
            None => Err("the condition ends too early".into()),
        }
    }
}

/// Sigma's selection-name patterns: `*` for any run of characters.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            name.starts_with(head) && (0..=name.len() - head.len()).any(|i| glob(rest, &name[head.len() + i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> Condition {
        Condition::Selection(s.into())
    }

    #[test]
    fn precedence_groups_and_of() {
        let names: Vec<String> = ["a", "b", "filter_x", "filter_y"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            parse("a and not b or a", &names).unwrap(),
            Condition::Or(vec![
                Condition::And(vec![sel("a"), Condition::Not(Box::new(sel("b")))]),
                sel("a")
            ])
        );
        assert_eq!(
            parse("a and not 1 of filter_*", &names).unwrap(),
            Condition::And(vec![
                sel("a"),
                Condition::Not(Box::new(Condition::Or(vec![sel("filter_x"), sel("filter_y")])))
            ])
        );
        assert_eq!(
            parse("all of them", &names[..2]).unwrap(),
            Condition::And(vec![sel("a"), sel("b")])
        );
        assert_eq!(
            parse("(a or b) and a", &names).unwrap(),
            Condition::And(vec![Condition::Or(vec![sel("a"), sel("b")]), sel("a")])
        );
        assert!(parse("a | count() > 5", &names).unwrap_err().contains("correlation"));
        assert!(parse("c", &names).unwrap_err().contains("not a selection"));
        assert!(parse("(a", &names).is_err());
        assert!(parse("1 of nothing*", &names).is_err());
    }
}
