//! Keeps secrets out of config errors.
//!
//! A TOML parse error quotes the offending line (and sometimes the value in its
//! message), and config errors end up in logs, terminals and CI output. Every
//! value whose key looks secret (`*url*`, `*token*`, `*password*`, `*secret*`,
//! `*key*`, case-insensitive) is replaced by `***` in the rendered error, whether
//! it sits on the quoted line, in an inline table, or on the lines of a
//! multi-line array; so is every value of a table whose name looks secret
//! (`[webhooks.secrets]`, keyed by host). The scan is line-based and deliberately over-redacts
//! rather than parse TOML that has just failed to parse.

/// What stands in for a hidden value.
const MASK: &str = "***";
/// Shortest value replaced wherever it appears in an error.
const MIN_REPLACED_CHARS: usize = 4;

/// Whether a key (a bare, quoted or dotted key) names something secret.
pub(crate) fn key_looks_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["url", "token", "password", "secret", "key"]
        .iter()
        .any(|word| key.contains(word))
}

/// `error`, rendered, with every secret value of `text` hidden.
pub(crate) fn redacted_parse_error(text: &str, error: &toml::de::Error) -> String {
    redact_secrets(text, &error.to_string())
}

/// `rendered` with every secret value found in the config `text` replaced by `***`,
/// and every quoted source line (`12 | key = value`) with a secret key masked.
pub(crate) fn redact_secrets(text: &str, rendered: &str) -> String {
    let mut secrets = secret_values(text);
    // Longest first, so a secret that contains another is hidden whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    let lines: Vec<String> = rendered
        .lines()
        .map(|line| mask_quoted_source_line(line).unwrap_or_else(|| line.to_owned()))
        .collect();
    let mut out = lines.join("\n");
    for secret in secrets {
        out = out.replace(&secret, MASK);
    }
    out
}

/// `N | key = value` (how toml quotes a source line) with the value masked
/// when the key looks secret.
fn mask_quoted_source_line(line: &str) -> Option<String> {
    let (gutter, source) = line.split_once(" | ")?;
    if gutter.trim().parse::<u64>().is_err() {
        return None;
    }
    let (key, _) = key_and_value(source)?;
    key_looks_secret(key).then(|| format!("{gutter} | {key} = {MASK}"))
}

/// The key and raw value of a `key = value` line, if it is one.
fn key_and_value(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once('=')?;
    let key = key.trim();
    let bare = key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | '\'' | ' '));
    (bare && !key.is_empty()).then_some((key, value.trim()))
}

/// Every secret value in the config text: the whole value of a secret key, the
/// strings inside it, strings of secret keys in inline tables, and the strings
/// of a secret key's multi-line array.
fn secret_values(text: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    let mut in_secret_array = false;
    let mut in_secret_table = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if !in_secret_array {
            if let Some(table) = table_header(trimmed) {
                in_secret_table = key_looks_secret(table);
                continue;
            }
        }
        if in_secret_array {
            secrets.extend(string_literals(trimmed));
            if trimmed.starts_with(']') || trimmed.ends_with(']') {
                in_secret_array = false;
            }
            continue;
        }
        if let Some((key, value)) = key_and_value(trimmed) {
            if in_secret_table || key_looks_secret(key) {
                secrets.extend(string_literals(value));
                let bare = value.trim_matches(|c| c == '"' || c == '\'');
                if !bare.is_empty() {
                    secrets.push(bare.to_owned());
                }
                in_secret_array = value.starts_with('[') && !value.contains(']');
                continue;
            }
        }
        // Inline tables: `settings = { api_key = "…" }`.
        secrets.extend(inline_secret_strings(trimmed));
    }
    // Shorter values would mangle unrelated text (line numbers, words); the
    // quoted line that holds them is masked by key instead.
    secrets.retain(|s| s.chars().count() >= MIN_REPLACED_CHARS && s != MASK);
    secrets
}

/// The name of a `[table]` or `[[array]]` header line.
fn table_header(line: &str) -> Option<&str> {
    let line = line
        .split_once('#')
        .map_or(line, |(before, _)| before)
        .trim_end();
    let name = line.strip_prefix('[')?.strip_suffix(']')?;
    let name = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name)
        .trim();
    let plain = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"' | '\'' | ' '));
    (plain && !name.is_empty()).then_some(name)
}

/// Contents of the string literals of a line (an unterminated one runs to its end).
fn string_literals(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut chars = line.char_indices();
    while let Some((start, c)) = chars.next() {
        if c != '"' && c != '\'' {
            continue;
        }
        let mut end = line.len();
        let mut escaped = false;
        for (i, d) in chars.by_ref() {
            if escaped {
                escaped = false;
            } else if d == '\\' && c == '"' {
                escaped = true;
            } else if d == c {
                end = i;
                break;
            }
        }
        found.push(line[start + 1..end].to_owned());
    }
    found
}

/// String values of secret keys written `key = "value"` anywhere in a line.
fn inline_secret_strings(line: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (i, _) in line.match_indices('=') {
        let key = line[..i]
            .trim_end()
            .rsplit(|c: char| c == '{' || c == ',' || c.is_whitespace())
            .next()
            .unwrap_or_default();
        if !key_looks_secret(key) {
            continue;
        }
        if let Some(value) = string_literals(line[i + 1..].trim_start())
            .into_iter()
            .next()
        {
            found.push(value);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(text: &str) -> String {
        let error = toml::from_str::<toml::Table>(text).unwrap_err();
        redacted_parse_error(text, &error)
    }

    #[test]
    fn a_parse_error_on_a_url_line_hides_the_url() {
        let text = "namespace = \"x\"\nredis_url = \"redis://:hunter2@db:6379/0\" junk\n";
        let raw = toml::from_str::<toml::Table>(text).unwrap_err().to_string();
        assert!(raw.contains("hunter2"), "toml quotes the line: {raw}");
        let shown = parse_error(text);
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("redis_url = ***"), "{shown}");
        assert!(shown.contains("line 2"), "the position stays: {shown}");
    }

    #[test]
    fn a_parse_error_on_a_token_line_hides_the_token() {
        let text = "[gateway]\ntokens = [\"tok-0123456789abcdef\", oops]\n";
        let shown = parse_error(text);
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        // Unterminated strings too.
        let shown = parse_error("[gateway]\nAPI_TOKEN = \"s3cr3t-value\n");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
    }

    #[test]
    fn a_password_with_slash_at_and_colon_is_hidden_everywhere() {
        let text = "amqp_url = \"amqp://u:p/a@s:s@rabbit/%2f\"\npassword = \"p/a@s:s\"\nbad = \n";
        let shown = parse_error(text);
        assert!(!shown.contains("p/a@s:s"), "{shown}");
    }

    #[test]
    fn secrets_in_multi_line_arrays_and_inline_tables_are_hidden() {
        let text =
            "[gateway]\ntokens = [\n  \"first-secret-token\",\n  \"second-secret-token\" x\n]\n";
        let shown = parse_error(text);
        assert!(!shown.contains("secret-token"), "{shown}");
        let text = "[[models]]\nparams = { api_key = \"sk-live-123\", n = }\n";
        let shown = parse_error(text);
        assert!(!shown.contains("sk-live-123"), "{shown}");
    }

    #[test]
    fn config_errors_never_print_the_secret() {
        let text =
            "amqp_url = \"amqp://gpuq:pa/ss@w:rd@rabbit/%2f\"\n[jobs]\nmax_attempts = \"x\"\n";
        let error = crate::Config::parse(text, None, &crate::ConfigOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("max_attempts"), "{error}");
        assert!(!error.contains("pa/ss@w:rd"), "{error}");
        let text = "redis_url = \"redis://:hunter2hunter2@db/0\" trailing\n";
        let error = crate::Config::parse(text, None, &crate::ConfigOverrides::default())
            .unwrap_err()
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn webhook_secret_table_values_are_hidden() {
        let text = "[webhooks.secrets]\n\"hooks.example.com\" = \"whsec_c2VjcmV0\" x\n";
        let shown = parse_error(text);
        assert!(!shown.contains("whsec_c2VjcmV0"), "{shown}");
        let text = "[webhooks.secrets]\n\"a\" = \"whsec_first1\"\n[jobs]\nname = \"visible\" x\n";
        let shown = parse_error(text);
        assert!(
            shown.contains("visible"),
            "a later table is not secret: {shown}"
        );
    }

    #[test]
    fn other_lines_stay_readable() {
        let shown = parse_error("namespace = \"demo\"\n[jobs]\nmax_attempts = three\n");
        assert!(shown.contains("max_attempts = three"), "{shown}");
        assert!(key_looks_secret("GPUQ_AMQP_URL") && key_looks_secret("Secret_Access_Key"));
        assert!(!key_looks_secret("namespace"));
    }
}
