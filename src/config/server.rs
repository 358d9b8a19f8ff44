//! `[server]`: the SQL front ends (HTTP and Postgres), their limits, TLS and credentials.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Check, ConfigError, Secret};

/// `[server]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address of the HTTP endpoints (`/v1/sql`, `/metrics`, `/healthz`, `/readyz`). Optional.
    pub http_listen: Option<String>,
    /// Address of the PostgreSQL wire protocol endpoint (`psql`, Grafana, drivers). Optional.
    pub pg_listen: Option<String>,
    /// Bearer token `POST /v1/sql` asks for (`Authorization: Bearer ...`); `${VAR}` and
    /// `${file:PATH}` expand. Default: none (no token asked).
    pub token: Option<Secret>,
    /// Password the Postgres endpoint asks for (any user name); expands like `token`. Default:
    /// none (any user and database are accepted).
    pub pg_password: Option<Secret>,
    /// Longest a query may run. Default `30s`.
    pub sql_timeout: Option<String>,
    /// Most rows one query may return; more is an error asking for a LIMIT. Default 1000000.
    pub sql_max_rows: Option<usize>,
    /// Memory all running queries may use together (DataFusion memory pool), bytes. Default
    /// 1073741824.
    pub sql_memory_limit: Option<usize>,
    /// Threads of the runtime queries run on (apart from the pipeline's). Default 2.
    pub sql_threads: Option<usize>,
    /// Largest value a function may build (`repeat`, `lpad`, `range`, ...), bytes. Default
    /// 16777216.
    pub sql_max_value_bytes: Option<usize>,
    /// Longest SQL text accepted, bytes. Default 262144.
    pub sql_max_query_bytes: Option<usize>,
    /// Open connections each endpoint (HTTP, Postgres) accepts; more wait in the kernel's
    /// backlog. Default 64.
    pub max_connections: Option<usize>,
    /// A client that takes longer than this to send a request's headers, to finish the
    /// Postgres startup and authentication, or to take the bytes of an answer, is disconnected.
    /// Default `30s`.
    pub client_timeout: Option<String>,
    /// A connection with nothing asked for this long is closed. Default `5m`.
    pub idle_timeout: Option<String>,
    /// Largest Postgres protocol message accepted, bytes. Default 1048576.
    pub pg_max_message_bytes: Option<usize>,
    /// TLS for both endpoints: a PEM certificate chain and its PEM private key. Postgres then
    /// offers SSL (clients choose it, `sslmode=require`); HTTP serves HTTPS only.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// Whether `/metrics` asks for the bearer token when one is set. Default true.
    pub metrics_require_token: Option<bool>,
    /// Host names `POST /v1/sql` answers under when no token is set, besides the listen
    /// address (and `localhost` when that is loopback). Default none.
    pub allowed_hosts: Option<Vec<String>>,
}

/// What the SQL front ends need besides the HTTP address.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    pub pg_listen: Option<SocketAddr>,
    pub token: Option<Secret>,
    pub pg_password: Option<Secret>,
    pub limits: SqlLimits,
    pub connections: ConnectionLimits,
    pub tls: Option<TlsFiles>,
    pub metrics_require_token: bool,
    pub allowed_hosts: Vec<String>,
}

/// How much of the process one endpoint's clients may hold.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    pub client_timeout: Duration,
    pub idle_timeout: Duration,
    pub pg_max_message_bytes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 64,
            client_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            pg_max_message_bytes: 1 << 20,
        }
    }
}

/// `server.tls_cert_file` and `server.tls_key_file`.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Query limits (`[server] sql_timeout`, `sql_max_rows`, `sql_memory_limit`, `sql_threads`).
#[derive(Debug, Clone)]
pub struct SqlLimits {
    pub timeout: Duration,
    pub max_rows: usize,
    /// Bytes all running queries may hold together (sorts, joins, aggregations).
    pub memory_limit: usize,
    /// Threads of the runtime queries run on, apart from the pipeline's.
    pub threads: usize,
    /// Bytes one value built by a function (`repeat`, `lpad`, `range`, ...) may take
    /// (`server.sql_max_value_bytes`); one call's whole output may take a quarter of
    /// `memory_limit`.
    pub max_value_bytes: usize,
    /// What the statement gate lets through (`server.sql_max_query_bytes` and fixed bounds).
    pub gate: GateLimits,
}

impl Default for SqlLimits {
    fn default() -> Self {
        SqlLimits {
            timeout: Duration::from_secs(30),
            max_rows: 1_000_000,
            memory_limit: 1 << 30,
            threads: 2,
            max_value_bytes: 16 << 20,
            gate: GateLimits::default(),
        }
    }
}

/// What the statement gate lets through.
#[derive(Debug, Clone)]
pub struct GateLimits {
    /// Bytes of SQL text (`server.sql_max_query_bytes`).
    pub max_query_bytes: usize,
    /// Tokens of SQL text: an upper bound of any nesting, checked without recursion.
    pub max_tokens: usize,
    /// Nesting of expressions and subqueries in the parsed statement.
    pub max_depth: usize,
    /// Nodes of the logical plan, counted as a tree.
    pub max_plan_nodes: usize,
}

impl Default for GateLimits {
    fn default() -> Self {
        GateLimits {
            max_query_bytes: 256 * 1024,
            max_tokens: 10_000,
            max_depth: 200,
            max_plan_nodes: 20_000,
        }
    }
}

impl RawServer {
    /// The HTTP address and everything else the front ends need.
    pub(super) fn validate(&self, check: Check<'_>) -> Result<(Option<SocketAddr>, ServerConfig), ConfigError> {
        let address = |key: &str, a: &Option<String>| -> Result<Option<SocketAddr>, ConfigError> {
            a.as_deref()
                .map(|a| a.parse().map_err(|e| check.invalid(key, format!("`{a}`: {e}"))))
                .transpose()
        };
        let http_listen = address("server.http_listen", &self.http_listen)?;
        let pg_listen = address("server.pg_listen", &self.pg_listen)?;
        let server = ServerConfig {
            pg_listen,
            token: self
                .token
                .as_ref()
                .map(|s| check.secret("server.token", s))
                .transpose()?,
            pg_password: self
                .pg_password
                .as_ref()
                .map(|s| check.secret("server.pg_password", s))
                .transpose()?,
            limits: self.sql_limits(check)?,
            connections: self.connection_limits(check)?,
            tls: match (&self.tls_cert_file, &self.tls_key_file) {
                (None, None) => None,
                (Some(cert), Some(key)) => Some(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => {
                    return Err(check.invalid(
                        "server.tls_cert_file",
                        "tls_cert_file and tls_key_file must be given together",
                    ));
                }
            },
            metrics_require_token: self.metrics_require_token.unwrap_or(true),
            allowed_hosts: self.allowed_hosts.clone().unwrap_or_default(),
        };
        if server.connections.pg_max_message_bytes < server.limits.gate.max_query_bytes.max(8192) {
            return Err(check.invalid(
                "server.pg_max_message_bytes",
                "must be at least server.sql_max_query_bytes (and 8192)",
            ));
        }
        Ok((http_listen, server))
    }

    fn sql_limits(&self, check: Check<'_>) -> Result<SqlLimits, ConfigError> {
        let defaults = SqlLimits::default();
        let limits = SqlLimits {
            timeout: match &self.sql_timeout {
                Some(t) => check.duration("server.sql_timeout", t)?,
                None => defaults.timeout,
            },
            max_rows: self.sql_max_rows.unwrap_or(defaults.max_rows),
            memory_limit: self.sql_memory_limit.unwrap_or(defaults.memory_limit),
            threads: self.sql_threads.unwrap_or(defaults.threads),
            max_value_bytes: self.sql_max_value_bytes.unwrap_or(defaults.max_value_bytes),
            gate: GateLimits {
                max_query_bytes: self.sql_max_query_bytes.unwrap_or(defaults.gate.max_query_bytes),
                ..defaults.gate
            },
        };
        if limits.max_value_bytes < 1024 {
            return Err(check.invalid("server.sql_max_value_bytes", "must be at least 1024"));
        }
        if !(64..=16 << 20).contains(&limits.gate.max_query_bytes) {
            return Err(check.invalid("server.sql_max_query_bytes", "must be between 64 and 16777216"));
        }
        if !(1..=64).contains(&limits.threads) {
            return Err(check.invalid("server.sql_threads", "must be between 1 and 64"));
        }
        if limits.max_rows == 0 {
            return Err(check.invalid("server.sql_max_rows", "must be at least 1"));
        }
        if limits.memory_limit < 1 << 20 {
            return Err(check.invalid("server.sql_memory_limit", "must be at least 1048576"));
        }
        Ok(limits)
    }

    fn connection_limits(&self, check: Check<'_>) -> Result<ConnectionLimits, ConfigError> {
        let defaults = ConnectionLimits::default();
        let connections = ConnectionLimits {
            max_connections: self.max_connections.unwrap_or(defaults.max_connections),
            client_timeout: match &self.client_timeout {
                Some(t) => check.duration("server.client_timeout", t)?,
                None => defaults.client_timeout,
            },
            idle_timeout: match &self.idle_timeout {
                Some(t) => check.duration("server.idle_timeout", t)?,
                None => defaults.idle_timeout,
            },
            pg_max_message_bytes: self.pg_max_message_bytes.unwrap_or(defaults.pg_max_message_bytes),
        };
        if !(1..=10_000).contains(&connections.max_connections) {
            return Err(check.invalid("server.max_connections", "must be between 1 and 10000"));
        }
        if connections.client_timeout.is_zero() || connections.idle_timeout.is_zero() {
            return Err(check.invalid(
                "server.client_timeout",
                "client_timeout and idle_timeout must be above zero",
            ));
        }
        Ok(connections)
    }
}
