//! Names of topics, queues, subscriptions and rules: 1–120 characters, letters, digits and `-`,
//! starting with a letter or digit (docs/message-service.md), so they are safe in URL paths.

/// The longest name.
pub const MAX_NAME_LEN: usize = 120;

/// Checks a name; the error completes a sentence like "topic `x` ...".
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "name `{name}` must be 1 to {MAX_NAME_LEN} characters long"
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("name `{name}` must start with a letter or digit"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(format!(
            "name `{name}` contains `{c}`; use letters, digits and `-` only"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec() {
        assert!(validate_name("alerts-q").is_ok());
        assert!(validate_name("9lives").is_ok());
        assert!(validate_name(&"a".repeat(120)).is_ok());
        assert!(validate_name(&"a".repeat(121)).is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name("-x").is_err());
        assert!(validate_name("a_b").is_err());
        assert!(validate_name("a b").is_err());
    }
}
