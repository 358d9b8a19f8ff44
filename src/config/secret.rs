//! Secrets and what may be shown of them: [`Secret`] never prints its value, `${VAR}` and
//! `${file:PATH}` expand into it, and URLs lose their `user:password@` in every message.

use std::fmt;

use serde::Deserialize;

/// A secret string (token, password): never shown by `Debug`, logs or `config check`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// Whether `given` is this secret, in time independent of where they differ.
    pub fn matches(&self, given: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        // Lengths are compared in the open (they leak only the length); the bytes never are.
        self.0.len() == given.len() && bool::from(self.0.as_bytes().ct_eq(given))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// A URL for messages and logs: any `user:password@` is replaced by `***@`.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..scheme_end], &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// `text` with the `user:password@` of every URL in it replaced by `***@`.
pub fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c == '"' || c.is_whitespace())
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***@");
                rest = &tail[at + 1..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// Expands `${VAR}` from the environment and `${file:PATH}` from a file's contents (trailing
/// newline removed; for mounted secrets). A missing variable or file is an error naming it.
pub fn expand_env(text: &str) -> Result<String, String> {
    expand_vars(text, |name| match name.strip_prefix("file:") {
        Some(path) => std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned()),
        None => std::env::var(name).ok(),
    })
}

/// Expands `${VAR}` through `lookup`.
pub fn expand_vars(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            // The value may be a secret: say where, never what.
            .ok_or_else(|| format!("unterminated `${{` at character {} of the value", out.len() + start + 1))?;
        let name = &after[..end];
        let value = lookup(name).ok_or_else(|| match name.strip_prefix("file:") {
            Some(path) => format!("secret file `{path}` cannot be read"),
            None => format!("environment variable `{name}` is not set"),
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_expansion_and_missing_variable() {
        let lookup = |name: &str| (name == "TOKEN").then(|| "s3cret".to_owned());
        assert_eq!(expand_vars("a-${TOKEN}-b", lookup).unwrap(), "a-s3cret-b");
        let err = expand_vars("${MISSING}", lookup).unwrap_err();
        assert!(err.contains("MISSING"), "{err}");
        assert!(expand_vars("${TOKEN", lookup).is_err());
    }

    #[test]
    fn secrets_from_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "from-a-file\n").unwrap();
        assert_eq!(
            expand_env(&format!("${{file:{}}}", path.display())).unwrap(),
            "from-a-file"
        );
        let err = expand_env("${file:/no/such/secret}").unwrap_err();
        assert!(err.contains("/no/such/secret"), "{err}");
    }
}
