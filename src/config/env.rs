//! `${VAR}` and `${VAR:-default}` substitution in policy strings, so credentials live in the
//! environment (or a secret store that fills it) rather than in git.

/// Replaces every `${NAME}` / `${NAME:-default}` in `text`. On failure returns the name of the
/// first variable that is unset and has no default, or a description of a malformed reference.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated `${` in value".to_owned())?;
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{inner}}}` is not a valid variable reference"));
        }
        match lookup(name).filter(|v| !v.is_empty()) {
            Some(value) => out.push_str(&value),
            None => match default {
                Some(d) => out.push_str(d),
                None => return Err(format!("environment variable {name} is not set")),
            },
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn env(name: &str) -> Option<String> {
        (name == "SET").then(|| "value".to_owned())
    }

    #[test]
    fn substitutes_and_defaults() {
        assert_eq!(expand("a ${SET} b", env).unwrap(), "a value b");
        assert_eq!(expand("${UNSET:-fallback}", env).unwrap(), "fallback");
        assert_eq!(expand("plain", env).unwrap(), "plain");
        assert_eq!(expand("${SET:-x}${SET}", env).unwrap(), "valuevalue");
    }

    #[test]
    fn reports_unset_and_malformed() {
        assert_eq!(
            expand("${UNSET}", env).unwrap_err(),
            "environment variable UNSET is not set"
        );
        assert!(expand("${SET", env).unwrap_err().contains("unterminated"));
        assert!(expand("${bad-name}", env)
            .unwrap_err()
            .contains("not a valid"));
    }
}
