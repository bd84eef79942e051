//! Kubernetes' syntax rules for names and label selectors, as far as the exporter checks
//! them before the API server does.

/// RFC 1123 label: lowercase alphanumerics and '-', 1..=63, alphanumeric at both ends.
pub fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// RFC 1123 subdomain (most object names): dot-separated labels, at most 253 characters.
pub fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// A light syntax check of a label selector, so that a typo fails at start-up rather
/// than as an endless stream of 400s from the API server. The API server remains the
/// judge of the full grammar.
pub fn check_label_selector(selector: &str) -> Result<(), &'static str> {
    if selector.trim().is_empty() {
        return Ok(());
    }
    let mut depth = 0i32;
    let mut requirement = String::new();
    let mut requirements = Vec::new();
    for c in selector.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                requirements.push(std::mem::take(&mut requirement));
                continue;
            }
            _ => {}
        }
        if depth < 0 {
            return Err("unbalanced parentheses");
        }
        requirement.push(c);
    }
    if depth != 0 {
        return Err("unbalanced parentheses");
    }
    requirements.push(requirement);
    for requirement in requirements {
        let requirement = requirement.trim();
        let key = requirement
            .split(['=', '!', ' '])
            .find(|part| !part.is_empty())
            .unwrap_or("");
        let valid_key = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !valid_key {
            return Err("each requirement needs a valid label key");
        }
    }
    Ok(())
}
