//! Loading the configuration from the process environment: `.env`, then `NAME_FILE` secrets,
//! then core's parser.

use std::collections::BTreeMap;

use dbguard_core::{ConfigError, DbConfig};

/// Variables that may instead be given as a file path in `NAME_FILE` (Docker/Kubernetes secrets).
pub const FILE_VARIABLES: [&str; 3] = ["DATABASE_URL", "JWT_SECRET", "DB_TEST_URL"];

/// Why the environment could not be turned into a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnvError {
    /// A value is invalid (names the variable).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `NAME_FILE` names a file that cannot be read.
    #[error("{variable}: cannot read {path:?}: {cause}")]
    UnreadableFile {
        /// The `_FILE` variable.
        variable: String,
        /// The path it names.
        path: String,
        /// The I/O error.
        cause: String,
    },
    /// Both `NAME` and `NAME_FILE` are set.
    #[error("{variable} and {variable}_FILE are both set; set only one")]
    Ambiguous {
        /// The variable.
        variable: &'static str,
    },
    /// The `.env` file exists but cannot be parsed.
    #[error(".env: {0}")]
    DotEnv(String),
}

/// Reads `.env` (if present, without overriding the real environment), resolves `NAME_FILE`
/// secrets, and parses the configuration.
pub fn load_config() -> Result<DbConfig, EnvError> {
    match dotenvy::dotenv() {
        Ok(_) => {}
        Err(err) if err.not_found() => {}
        Err(err) => return Err(EnvError::DotEnv(err.to_string())),
    }
    config_from_vars(std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))))
}

/// Resolves `NAME_FILE` secrets in `vars` and parses the configuration.
pub fn config_from_vars(vars: impl IntoIterator<Item = (String, String)>) -> Result<DbConfig, EnvError> {
    let mut env: BTreeMap<String, String> = vars.into_iter().collect();
    for variable in FILE_VARIABLES {
        let file_variable = format!("{variable}_FILE");
        let Some(path) = env.remove(&file_variable) else { continue };
        if env.contains_key(variable) {
            return Err(EnvError::Ambiguous { variable });
        }
        let contents = std::fs::read_to_string(&path).map_err(|err| EnvError::UnreadableFile {
            variable: file_variable.clone(),
            path: path.clone(),
            cause: err.to_string(),
        })?;
        // Secret files conventionally end with a newline that is not part of the secret.
        env.insert(variable.to_owned(), contents.trim_end_matches(['\n', '\r']).to_owned());
    }
    Ok(DbConfig::from_vars(env)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn file_secrets_are_read_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("dbguard-env-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("url");
        std::fs::write(&path, "postgres://app:pw@db/x\n").expect("write");
        let config = config_from_vars(vars(&[("DATABASE_URL_FILE", path.to_str().expect("utf-8"))])).expect("valid");
        assert_eq!(config.url.expose_secret(), "postgres://app:pw@db/x");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn missing_file_names_the_variable() {
        let err = config_from_vars(vars(&[("JWT_SECRET_FILE", "/nonexistent/secret")])).expect_err("unreadable");
        assert!(err.to_string().starts_with("JWT_SECRET_FILE: cannot read \"/nonexistent/secret\""), "{err}");
    }

    #[test]
    fn both_forms_are_ambiguous() {
        let err = config_from_vars(vars(&[("DATABASE_URL", "sqlite::memory:"), ("DATABASE_URL_FILE", "/x")]))
            .expect_err("ambiguous");
        assert!(matches!(err, EnvError::Ambiguous { variable: "DATABASE_URL" }));
    }
}
