//! The relay's configuration: a TOML file, overridden by environment variables, overridden by
//! command-line flags (clap reads both of the latter). Unknown keys and bad values are errors
//! that name the key, so a typo never silently runs a relay with defaults.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The `[access]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AccessFile {
    /// "open" or "token".
    pub mode: Option<String>,
    /// HMAC secret for tokens (at least 16 bytes), or…
    pub secret: Option<String>,
    /// …a file holding it (keeps the secret out of the config file).
    pub secret_file: Option<PathBuf>,
}

/// The `[limits]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct LimitsFile {
    pub max_connections: Option<usize>,
    pub max_connections_per_address: Option<usize>,
    pub max_rooms: Option<usize>,
    pub max_room_size: Option<usize>,
    pub max_datagram_bytes: Option<usize>,
    pub packets_per_second: Option<f64>,
    pub bytes_per_second: Option<f64>,
    pub idle_timeout_secs: Option<u64>,
    pub hello_timeout_secs: Option<u64>,
    pub join_timeout_secs: Option<u64>,
    pub control_messages_per_second: Option<f64>,
    pub forward_loudest: Option<usize>,
    pub retry_above: Option<usize>,
}

/// The `[cluster]` table: the directory this relay keeps itself in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ClusterFile {
    /// Redis URL (`redis://:PASSWORD@127.0.0.1:6379`, `redis+unix:///run/redis/redis.sock`).
    pub directory: Option<String>,
    pub id: Option<String>,
    pub region: Option<String>,
    pub ttl_secs: Option<u64>,
    /// Cluster secret for trunks (at least 16 bytes), or…
    pub secret: Option<String>,
    /// …a file holding it.
    pub secret_file: Option<PathBuf>,
    /// This relay's number in the cluster, 1–255.
    pub node: Option<u8>,
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    pub listen: Option<Vec<SocketAddr>>,
    pub data_dir: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub public_host: Option<String>,
    pub metrics: Option<SocketAddr>,
    /// Data-plane loops (`RelayConfig::threads`).
    pub threads: Option<usize>,
    pub log_format: Option<String>,
    pub congestion: Option<String>,
    /// Retired: "batched" is the only data plane ("quinn" is accepted with a warning).
    pub data_plane: Option<String>,
    #[serde(default)]
    pub access: AccessFile,
    #[serde(default)]
    pub limits: LimitsFile,
    #[serde(default)]
    pub cluster: ClusterFile,
}

/// A configuration problem, naming the file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("config file {file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl ConfigFile {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.into(), e))?;
        Self::parse(&text, path)
    }

    /// Parses config text (`origin` names it in errors). toml's messages carry the line,
    /// column and key.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: origin.into(),
            message: e.to_string().trim().replace('\n', " "),
        })
    }
}

/// Reads the token secret from the `[access]` table.
pub fn resolve_secret(access: &AccessFile) -> Result<Option<Vec<u8>>, ConfigError> {
    let secret = match (&access.secret, &access.secret_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Invalid {
                key: "access.secret",
                message: "give either secret or secret-file, not both".into(),
            });
        }
        (Some(s), None) => Some(s.as_bytes().to_vec()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| ConfigError::Invalid {
                    key: "access.secret-file",
                    message: format!("cannot read {}: {e}", path.display()),
                })?
                .trim()
                .as_bytes()
                .to_vec(),
        ),
        (None, None) => None,
    };
    if let Some(s) = &secret
        && s.len() < 16
    {
        return Err(ConfigError::Invalid {
            key: "access.secret",
            message: format!(
                "is {} bytes; use at least 16 (e.g. `openssl rand -hex 32`)",
                s.len()
            ),
        });
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses() {
        let c = ConfigFile::parse(
            r#"
            listen = ["0.0.0.0:4433", "[::]:4433"]
            public-host = "relay.example.org"
            metrics = "127.0.0.1:9100"
            threads = 2
            data-plane = "batched"
            [access]
            mode = "token"
            secret = "0123456789abcdef0123"
            [limits]
            max-room-size = 12
            packets-per-second = 120.0
            forward-loudest = 3
            retry-above = 8
            max-connections-per-address = 16
            join-timeout-secs = 5
            control-messages-per-second = 20.0
            [cluster]
            directory = "redis+unix:///run/redis/redis.sock"
            id = "edge-1"
            region = "eu-west"
            ttl-secs = 15
            "#,
            Path::new("relay.toml"),
        )
        .unwrap();
        assert_eq!(c.listen.unwrap().len(), 2);
        assert_eq!(c.data_plane.as_deref(), Some("batched"));
        assert_eq!(c.limits.max_room_size, Some(12));
        assert_eq!(c.limits.retry_above, Some(8));
        assert_eq!(c.limits.max_connections_per_address, Some(16));
        assert_eq!(c.limits.join_timeout_secs, Some(5));
        assert_eq!(c.limits.control_messages_per_second, Some(20.0));
        assert_eq!(c.access.mode.as_deref(), Some("token"));
        assert_eq!(c.cluster.region.as_deref(), Some("eu-west"));
        assert_eq!(c.cluster.ttl_secs, Some(15));
        assert_eq!(resolve_secret(&c.access).unwrap().unwrap().len(), 20);
    }

    #[test]
    fn errors_name_the_key() {
        let e = ConfigFile::parse("lisen = []", Path::new("relay.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("relay.toml") && e.contains("lisen"), "{e}");
        let e = ConfigFile::parse("[limits]\nmax-room-size = \"ten\"", Path::new("r.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max-room-size"), "{e}");
        let e = ConfigFile::parse("listen = [\"nowhere\"]", Path::new("r.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen"), "{e}");
        let short = AccessFile {
            secret: Some("short".into()),
            ..AccessFile::default()
        };
        let e = resolve_secret(&short).unwrap_err().to_string();
        assert!(e.contains("access.secret") && e.contains("16"), "{e}");
    }
}
