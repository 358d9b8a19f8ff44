//! The real `psql` client (Debian package postgresql-client) against 127.0.0.1.

use std::process::{Command, Output};

/// `psql -c sql` as user `grafana` on database `auditflow`.
pub fn psql(port: u16, password: Option<&str>, sql: &str) -> Output {
    psql_with(port, password, "", sql)
}

/// The same with more connection options (`sslmode=verify-full sslrootcert=...`); without an
/// `sslmode`, none is used.
pub fn psql_with(port: u16, password: Option<&str>, options: &str, sql: &str) -> Output {
    let mut command = Command::new("psql");
    command
        .arg(format!(
            "host=127.0.0.1 port={port} user=grafana dbname=auditflow connect_timeout=10 {options}"
        ))
        .args(["-w", "-X", "-A", "-t", "-c", sql])
        .env_remove("PGPASSWORD")
        .env("PGSSLMODE", "disable");
    if options.contains("sslmode") {
        command.env_remove("PGSSLMODE");
    }
    if let Some(p) = password {
        command.env("PGPASSWORD", p);
    }
    command.output().expect("psql (Debian package postgresql-client)")
}

/// What psql printed, after checking it succeeded.
pub fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "psql failed: {}", stderr(o));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// [`psql`] from async code: the client runs on a blocking thread.
pub async fn psql_async(port: u16, password: Option<&str>, sql: &str) -> Output {
    let (password, sql) = (password.map(str::to_owned), sql.to_owned());
    tokio::task::spawn_blocking(move || psql(port, password.as_deref(), &sql))
        .await
        .expect("the psql thread ends")
}
