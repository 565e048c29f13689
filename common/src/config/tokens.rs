//! Gateway bearer tokens (`gateway.tokens`): who may call `gpuq serve`, under
//! which name and with which role.
//!
//! Two spellings are accepted: the old list of strings (each an admin token,
//! named `admin-1`, `admin-2`, ... by position) and `[[gateway.tokens]]` tables
//! with a `token`, a `role` and a unique `name` (the name is what jobs record in
//! `submitted_by`). `GPUQ_GATEWAY_TOKENS` adds admin tokens named `env-1`, ....
//! Validation never prints a token: errors name the key (`gateway.tokens[2].token`,
//! `GPUQ_GATEWAY_TOKENS[0]`) and `Debug` redacts the secret. This module
//! does not authenticate requests; the gateway does, in constant time.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use super::{invalid, ConfigError};

/// Shortest accepted token, characters.
pub const MIN_TOKEN_LEN: usize = 16;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Submit jobs; read, cancel and follow the jobs it submitted; upload
    /// artifacts and download those it owns.
    Submit,
    /// Everything, including every job, `/v1/system`, `/v1/events` and `/metrics`.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Submit => "submit",
            Role::Admin => "admin",
        }
    }
}

/// One entry of `gateway.tokens`.
#[derive(Clone, Deserialize)]
#[serde(untagged)]
pub enum TokenEntry {
    /// The old form: a bare string, an admin token.
    Bare(String),
    /// `{ token = "...", role = "submit", name = "alice" }`.
    Named(NamedToken),
}

/// The table form of a token.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedToken {
    /// The secret: at least 16 characters, no whitespace.
    pub token: String,
    /// `submit` or `admin`.
    pub role: Role,
    /// Unique name, recorded as `submitted_by` on the jobs this token submits.
    pub name: String,
}

impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenEntry::Bare(_) => f.write_str("TokenEntry::Bare(<redacted>)"),
            TokenEntry::Named(named) => f
                .debug_struct("NamedToken")
                .field("name", &named.name)
                .field("role", &named.role)
                .field("token", &"<redacted>")
                .finish(),
        }
    }
}

/// A validated token, ready to compare against a request's.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken {
    pub name: String,
    pub role: Role,
    pub token: String,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Resolves and validates the file's tokens and the environment's: every token
/// long enough, without whitespace, used once; every name valid and unique.
pub(super) fn resolve(
    file: &[TokenEntry],
    env: &[TokenEntry],
) -> Result<Vec<AccessToken>, ConfigError> {
    let mut resolved: Vec<(String, AccessToken)> = Vec::new();
    for (i, entry) in file.iter().enumerate() {
        let (key, token) = match entry {
            TokenEntry::Bare(token) => (
                format!("gateway.tokens[{i}]"),
                AccessToken {
                    name: format!("admin-{}", i + 1),
                    role: Role::Admin,
                    token: token.clone(),
                },
            ),
            TokenEntry::Named(named) => {
                check_name(&format!("gateway.tokens[{i}].name"), &named.name)?;
                (
                    format!("gateway.tokens[{i}].token"),
                    AccessToken {
                        name: named.name.clone(),
                        role: named.role,
                        token: named.token.clone(),
                    },
                )
            }
        };
        resolved.push((key, token));
    }
    for (i, entry) in env.iter().enumerate() {
        let (TokenEntry::Bare(token) | TokenEntry::Named(NamedToken { token, .. })) = entry;
        resolved.push((
            format!("GPUQ_GATEWAY_TOKENS[{i}]"),
            AccessToken {
                name: format!("env-{}", i + 1),
                role: Role::Admin,
                token: token.clone(),
            },
        ));
    }
    let mut names: BTreeMap<&str, &str> = BTreeMap::new();
    let mut secrets: BTreeMap<&str, &str> = BTreeMap::new();
    for (key, token) in &resolved {
        check_secret(key, &token.token)?;
        if let Some(first) = names.insert(&token.name, key) {
            return Err(invalid(
                key.clone(),
                format!("token name '{}' is already used by {first}", token.name),
            ));
        }
        if let Some(first) = secrets.insert(&token.token, key) {
            return Err(invalid(
                key.clone(),
                format!("the same token is already configured as {first}"),
            ));
        }
    }
    Ok(resolved.into_iter().map(|(_, token)| token).collect())
}

/// The secret's rules; the message never quotes it.
fn check_secret(key: &str, token: &str) -> Result<(), ConfigError> {
    if token.is_empty() {
        return Err(invalid(key, "the token is empty"));
    }
    if token.chars().any(char::is_whitespace) {
        return Err(invalid(key, "the token contains whitespace"));
    }
    let length = token.chars().count();
    if length < MIN_TOKEN_LEN {
        return Err(invalid(
            key,
            format!(
                "the token has {length} characters; at least {MIN_TOKEN_LEN} are required \
                 (e.g. `openssl rand -hex 24`)"
            ),
        ));
    }
    Ok(())
}

/// Names travel into job records and artifact owners: 1 to 64 of `A-Z`,
/// `a-z`, `0-9`, `_`, `-`, `.`, `@`.
fn check_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("'{name}' must be 1 to 64 characters of A-Z, a-z, 0-9, '_', '-', '.' or '@'"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, ConfigOverrides};

    const GOOD: &str = "0123456789abcdef+/=";

    fn load(text: &str, env: &[&str]) -> Result<Config, ConfigError> {
        let overrides = ConfigOverrides {
            gateway_tokens: env.iter().map(|t| t.to_string()).collect(),
            ..ConfigOverrides::default()
        };
        Config::parse(text, None, &overrides)
    }

    #[test]
    fn the_list_form_gives_admin_tokens_and_tables_give_roles_and_names() {
        let config = load(
            &format!("[gateway]\ntokens = [\"{GOOD}\", \"{GOOD}x\"]\n",),
            &["from-the-environment-1"],
        )
        .unwrap();
        assert!(!format!("{config:?}").contains("from-the-environment-1"));
        let tokens = config.gateway.access_tokens();
        let names: Vec<(&str, Role)> = tokens.iter().map(|t| (t.name.as_str(), t.role)).collect();
        assert_eq!(
            names,
            [
                ("admin-1", Role::Admin),
                ("admin-2", Role::Admin),
                ("env-1", Role::Admin)
            ]
        );

        let config = load(
            &format!(
                "[[gateway.tokens]]\ntoken = \"{GOOD}\"\nrole = \"submit\"\nname = \"alice\"\n\
                 [[gateway.tokens]]\ntoken = \"{GOOD}x\"\nrole = \"admin\"\nname = \"ops\"\n"
            ),
            &[],
        )
        .unwrap();
        let tokens = config.gateway.access_tokens();
        assert_eq!(tokens[0].name, "alice");
        assert_eq!(tokens[0].role, Role::Submit);
        assert_eq!(tokens[0].token, GOOD);
        assert_eq!(tokens[1].role, Role::Admin);
        assert!(
            !format!("{config:?}").contains(GOOD),
            "Debug redacts tokens"
        );
    }

    #[test]
    fn a_bad_token_names_its_key_and_never_prints_the_token() {
        let cases = [
            ("[gateway]\ntokens = [\"0123456789abcdef\", \"short-secret\"]\n", vec![], "gateway.tokens[1]", "short-secret"),
            ("[gateway]\ntokens = [\"\"]\n", vec![], "gateway.tokens[0]", "\"\""),
            (
                "[[gateway.tokens]]\ntoken = \"0123456789abcdef\"\nrole = \"admin\"\nname = \"a\"\n\
                 [[gateway.tokens]]\ntoken = \"0123456789 abcdef\"\nrole = \"submit\"\nname = \"b\"\n",
                vec![],
                "gateway.tokens[1].token",
                "0123456789 abcdef",
            ),
            ("", vec!["0123456789abcdef", "tiny-env-secret"], "GPUQ_GATEWAY_TOKENS[1]", "tiny-env-secret"),
            (
                "[gateway]\ntokens = [\"0123456789abcdef\"]\n",
                vec!["0123456789abcdef"],
                "GPUQ_GATEWAY_TOKENS[0]",
                "0123456789abcdef",
            ),
        ];
        for (text, env, key, secret) in cases {
            let error = load(text, &env).unwrap_err().to_string();
            assert!(error.contains(&format!("'{key}'")), "{error}");
            assert!(
                !error.contains(secret),
                "the error prints the token: {error}"
            );
        }
    }

    #[test]
    fn token_names_are_required_valid_and_unique() {
        let table = |name: &str, token: &str| {
            format!("[[gateway.tokens]]\ntoken = \"{token}\"\nrole = \"submit\"\n{name}\n")
        };
        let missing = table("", GOOD);
        assert!(load(&missing, &[]).is_err(), "name is required");
        let twice = format!(
            "{}{}",
            table("name = \"alice\"", GOOD),
            table("name = \"alice\"", "another-long-token")
        );
        let error = load(&twice, &[]).unwrap_err().to_string();
        assert!(
            error.contains("gateway.tokens[1]") && error.contains("alice"),
            "{error}"
        );
        let spaced = table("name = \"al ice\"", GOOD);
        let error = load(&spaced, &[]).unwrap_err().to_string();
        assert!(error.contains("'gateway.tokens[0].name'"), "{error}");
    }
}
