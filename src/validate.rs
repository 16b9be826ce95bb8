//! Checks on user-supplied text shared by keys and endpoints (pure).

use crate::error::{Error, Result};

/// Organization ids come from the host: 1 to 200 bytes, no control characters.
pub(crate) fn org(org: &str) -> Result<()> {
    if org.is_empty() || org.len() > 200 || org.chars().any(char::is_control) {
        return Err(Error::invalid(
            "org",
            "must be 1 to 200 bytes without control characters",
        ));
    }
    Ok(())
}

/// A display name: trimmed, 1 to 100 characters, no control characters.
pub(crate) fn name(name: &str) -> Result<String> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(Error::invalid("name", "must not be empty"));
    }
    if trimmed.chars().count() > 100 {
        return Err(Error::invalid("name", "must be at most 100 characters"));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(Error::invalid(
            "name",
            "must not contain control characters",
        ));
    }
    Ok(trimmed.to_owned())
}

/// A description: at most 1,000 characters; newlines and tabs allowed, other controls not.
pub(crate) fn description(d: &str) -> Result<()> {
    if d.chars().count() > 1000 {
        return Err(Error::invalid(
            "description",
            "must be at most 1,000 characters",
        ));
    }
    if d.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
        return Err(Error::invalid(
            "description",
            "must not contain control characters other than newline and tab",
        ));
    }
    Ok(())
}

/// Scopes: at most 50, each 1 to 100 printable characters without whitespace;
/// duplicates removed, order kept.
pub(crate) fn scopes(scopes: Vec<String>) -> Result<Vec<String>> {
    if scopes.len() > 50 {
        return Err(Error::invalid("scopes", "at most 50 scopes"));
    }
    let mut out: Vec<String> = Vec::with_capacity(scopes.len());
    for s in scopes {
        if s.is_empty()
            || s.chars().count() > 100
            || s.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Error::invalid(
                "scopes",
                format!(
                    "{s:?} must be 1 to 100 characters without whitespace or control characters"
                ),
            ));
        }
        if !out.contains(&s) {
            out.push(s);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name("  Zapier ").unwrap(), "Zapier");
        assert!(name("").is_err());
        assert!(name("   ").is_err());
        assert!(name(&"é".repeat(100)).is_ok());
        assert!(name(&"é".repeat(101)).is_err());
        assert!(name("a\u{0}b").is_err());
        assert!(name("a\nb").is_err());
    }

    #[test]
    fn scope_rules() {
        assert_eq!(
            scopes(vec!["a".into(), "b".into(), "a".into()]).unwrap(),
            vec!["a", "b"]
        );
        assert!(scopes(vec!["has space".into()]).is_err());
        assert!(scopes(vec![String::new()]).is_err());
        assert!(scopes((0..51).map(|i| i.to_string()).collect()).is_err());
    }

    #[test]
    fn orgs_and_descriptions() {
        assert!(org("").is_err());
        assert!(org("org\u{7}").is_err());
        assert!(org("org_1").is_ok());
        assert!(description("line\nline").is_ok());
        assert!(description("bell\u{7}").is_err());
    }
}
