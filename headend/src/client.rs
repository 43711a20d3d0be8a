//! The CLI's client of the admin API: finds the daemon and its token from
//! the config (`--config FILE`, or `IODOFORM_CONFIG`), sends one request
//! with a small blocking HTTP client, and turns failures into messages an
//! operator can act on. Request bodies are the [`api`] crate's types, the
//! ones the server reads.

use crate::config::{Config, ConfigError};
use crate::init::{read_token, KeyFileError};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use zeroize::Zeroizing;

/// The environment variable naming the config file.
pub const CONFIG_ENV: &str = "IODOFORM_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no config: pass --config DIR/headend.toml or set {CONFIG_ENV}")]
    NoConfig,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0} (the CLI reads the admin token from the file the config names)")]
    Token(#[from] KeyFileError),
    #[error("the headend is not running at {0} (connection refused); start it with `headend run --config ...`")]
    NotRunning(String),
    #[error("the headend refused the token (401): {0}; check the `token` file of this config")]
    Unauthorized(String),
    /// The API refused the request: its one-line message says what and
    /// how to fix it; a 5xx is the daemon's fault, and its log says more.
    #[error("{message}{}", if *status >= 500 { format!(" (HTTP {status}; the daemon's log says more)") } else { String::new() })]
    Api { status: u16, message: String },
    #[error("request to {url} failed: {message}")]
    Transport { url: String, message: String },
}

impl ClientError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::NoConfig | ClientError::Config(_) => 64,
            ClientError::Token(_) => 66,
            ClientError::NotRunning(_) | ClientError::Transport { .. } => 69,
            ClientError::Unauthorized(_) => 77,
            ClientError::Api { status, .. } if *status < 500 => 65,
            ClientError::Api { .. } => 70,
        }
    }
}

/// An admin API client.
pub struct Client {
    base: String,
    token: Zeroizing<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// The config path: the flag, else the environment variable.
pub fn config_path(flag: Option<&Path>) -> Result<PathBuf, ClientError> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    match std::env::var_os(CONFIG_ENV) {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(ClientError::NoConfig),
    }
}

impl Client {
    /// A client for the daemon that `config` describes.
    pub fn from_config(config: &Path) -> Result<Client, ClientError> {
        let loaded = Config::load(config)?;
        let token = read_token(&loaded.token())?;
        let mut addr = loaded.config.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        Ok(Client::new(&format!("http://{addr}"), token))
    }

    pub fn new(base: &str, token: Zeroizing<String>) -> Client {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(3))
            .timeout(Duration::from_secs(60))
            .build();
        Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let req = self
            .agent
            .request(method, &url)
            .set("Authorization", &format!("Bearer {}", self.token.as_str()));
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match result {
            Ok(resp) => {
                let text = resp.into_string().map_err(|e| ClientError::Transport {
                    url: url.clone(),
                    message: e.to_string(),
                })?;
                if text.trim().is_empty() {
                    return Ok(Value::Null);
                }
                serde_json::from_str(&text).map_err(|e| ClientError::Transport {
                    url,
                    message: format!("answer is not JSON: {e}"),
                })
            }
            Err(ureq::Error::Status(status, resp)) => {
                let text = resp.into_string().unwrap_or_default();
                let message = serde_json::from_str::<api::ErrorBody>(&text)
                    .map(|e| e.error)
                    .unwrap_or(text);
                if status == 401 {
                    Err(ClientError::Unauthorized(message))
                } else {
                    Err(ClientError::Api { status, message })
                }
            }
            Err(ureq::Error::Transport(t)) => {
                if t.kind() == ureq::ErrorKind::ConnectionFailed {
                    Err(ClientError::NotRunning(self.base.clone()))
                } else {
                    Err(ClientError::Transport {
                        url,
                        message: t.to_string(),
                    })
                }
            }
        }
    }

    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &impl Serialize) -> Result<Value, ClientError> {
        self.send("POST", path, Some(&self.body(path, body)?))
    }

    pub fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.send("DELETE", path, None)
    }

    pub fn patch(&self, path: &str, body: &impl Serialize) -> Result<Value, ClientError> {
        self.send("PATCH", path, Some(&self.body(path, body)?))
    }

    fn body(&self, path: &str, body: &impl Serialize) -> Result<Value, ClientError> {
        serde_json::to_value(body).map_err(|e| ClientError::Transport {
            url: format!("{}{path}", self.base),
            message: format!("request body: {e}"),
        })
    }
}
