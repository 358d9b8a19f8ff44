//! The `auditflow` command line.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use auditflow::config::Config;
use auditflow::query::http::ARROW_STREAM;
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

/// `--features mimalloc`: mimalloc as the global allocator instead of the system's (measured
/// with the drain benchmark; the README has the figures).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `--features jemalloc`: jemalloc instead (measured the same way).
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Kafka audit logs and metrics in; security alerts, Splunk HEC, OTLP and SQL out.
#[derive(Parser)]
#[command(name = "auditflow", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline with a config file.
    Run {
        /// TOML config file (see deploy/).
        #[arg(long, short)]
        config: PathBuf,
        /// Longest wait for sinks to drain on shutdown.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        drain_timeout: Duration,
    },
    /// Run everything in one process: in-process Kafka, generator, pipeline, SQL endpoint.
    Demo {
        /// Stop after this many seconds (default: run until Ctrl-C).
        #[arg(long)]
        duration: Option<u64>,
        /// Address of the SQL and metrics endpoint.
        #[arg(long, default_value = "127.0.0.1:9464")]
        http_listen: SocketAddr,
        /// Address of the PostgreSQL wire protocol endpoint.
        #[arg(long, default_value = "127.0.0.1:5433")]
        pg_listen: SocketAddr,
        /// File sink output.
        #[arg(long, default_value = "out/demo-events.jsonl")]
        output: PathBuf,
        /// Audit events per second of normal traffic.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// Take the sinks (Splunk HEC, OTLP, file) from this config file instead.
        #[arg(long)]
        sinks_from: Option<PathBuf>,
    },
    /// Run a SQL query against a running auditflow.
    Sql {
        /// The query; `-` or nothing reads it from standard input.
        query: Option<String>,
        /// Base URL of the service.
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        url: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = SqlFormat::Table)]
        format: SqlFormat,
        /// Bearer token, when the service asks for one (`server.token`).
        #[arg(long, env = "AUDITFLOW_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Ask a running auditflow whether it is healthy (`/healthz`, or `/readyz` with
    /// `--ready`): exits 0 on 200, 1 otherwise. For container health checks (no curl needed).
    Health {
        /// Base URL of the service's HTTP endpoint.
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        url: String,
        /// Ask `/readyz` (consuming and delivering) instead of `/healthz` (alive).
        #[arg(long)]
        ready: bool,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Rule tools.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Check a compliance archive or an export: every file, manifest, signature and offset.
    /// Exits 0 only when everything checks.
    Verify {
        /// The archive or export: a directory, `file:///dir`, `az://container/prefix` or
        /// `s3://bucket/prefix` (credentials from the environment).
        target: String,
        /// The signer's public key (PEM), held apart from the archive; without it the key
        /// published beside the archive is used.
        #[arg(long)]
        public_key: Option<PathBuf>,
    },
    /// Export archived audit events of a time range, with a manifest `verify` checks.
    Export {
        /// Start, RFC 3339 (included).
        #[arg(long)]
        from: String,
        /// End, RFC 3339 (excluded).
        #[arg(long)]
        to: String,
        /// A SQL condition on the audit_events columns (and kafka_topic, kafka_partition,
        /// kafka_offset).
        #[arg(long = "where")]
        filter: Option<String>,
        #[arg(long, value_enum, default_value_t = ArchiveFormat::Parquet)]
        format: ArchiveFormat,
        /// A new (or empty) directory for the export.
        #[arg(long)]
        out: PathBuf,
        /// The archive to read (a directory or URL)…
        #[arg(long, conflicts_with = "config")]
        archive: Option<String>,
        /// …or the config file whose `[archive]` names it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Sign the export's manifest with this PKCS#8 PEM Ed25519 key.
        #[arg(long)]
        signing_key: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ArchiveFormat {
    Parquet,
    Jsonl,
    Csv,
}

#[derive(Clone, Copy, ValueEnum)]
enum SqlFormat {
    Table,
    Json,
    Csv,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file (secrets are masked in the output).
    Check {
        /// TOML config file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Validate every rule file under a directory (errors name file, line and field).
    Check {
        /// Rule directory.
        dir: PathBuf,
    },
    /// Run every NAME.test.yaml under a directory against the rules beside it.
    Test {
        /// Rule directory.
        dir: PathBuf,
    },
    /// Write the match and count rules of a directory as Sigma rules (and correlation rules).
    Export {
        /// Output format; `sigma` is the one there is.
        #[arg(long, value_enum, default_value_t = ExportFormat::Sigma)]
        format: ExportFormat,
        /// Rule directory.
        dir: PathBuf,
        /// Directory to write `ID.yml` files into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Convert Sigma rules and correlation rules (a file or a directory) into auditflow rules.
    Import {
        /// A Sigma file, or a directory of them.
        path: PathBuf,
        /// Directory to write the auditflow rule files into.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Sigma,
}

/// `auditflow verify`: the report on standard output; an error when anything is wrong.
async fn verify(target: &str, public_key: Option<&std::path::Path>) -> Result<(), String> {
    let public_key = public_key
        .map(|p| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display())))
        .transpose()?;
    let options = auditflow::archive::verify::VerifyOptions {
        public_key,
        progress: true,
    };
    let report = auditflow::archive::verify::verify(target, &options)
        .await
        .map_err(|e| e.to_string())?;
    println!("{report}");
    if report.is_clean() {
        Ok(())
    } else {
        Err(format!("{target}: {} problems", report.problems.len()))
    }
}

/// The span exporter's layer, installed once the config says to (`telemetry.otlp.traces`).
type TraceLayer =
    tracing_opentelemetry::OpenTelemetryLayer<tracing_subscriber::Registry, opentelemetry_sdk::trace::Tracer>;
type TraceHandle = tracing_subscriber::reload::Handle<Option<TraceLayer>, tracing_subscriber::Registry>;

/// Logs to stderr; returns the handle that turns span export on after the config is read.
fn init_logging(format: LogFormat) -> TraceHandle {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_env("AUDITFLOW_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,librdkafka=warn,rdkafka=warn"));
    let (traces, handle) = tracing_subscriber::reload::Layer::new(None::<TraceLayer>);
    let registry = tracing_subscriber::registry().with(traces).with(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    match format {
        LogFormat::Human => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json()).init(),
    }
    handle
}

/// Starts exporting spans when `[telemetry.otlp] traces = true`.
fn start_traces(
    config: &Config,
    handle: &TraceHandle,
) -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, String> {
    use opentelemetry::trace::TracerProvider as _;
    let Some(otlp) = &config.telemetry_otlp else {
        return Ok(None);
    };
    let Some(ratio) = otlp.traces else { return Ok(None) };
    let settings = auditflow::pipeline::otlp_export_settings(otlp);
    let provider = auditflow::telemetry::otlp::tracer_provider(&settings, ratio).map_err(|e| e.to_string())?;
    let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("auditflow"));
    handle
        .reload(Some(layer))
        .map_err(|e| format!("turning on span export: {e}"))?;
    tracing::info!(ratio, "exporting batch spans over OTLP");
    Ok(Some(provider))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let traces = init_logging(cli.log_format);
    raise_descriptor_limit();
    match run(cli.command, traces).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Lifts the soft limit on open files to the hard one: the SQL endpoints' connections are
/// capped (`server.max_connections`) well below it, so the Kafka client and sinks always find
/// descriptors.
fn raise_descriptor_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

async fn run(command: Command, traces: TraceHandle) -> Result<(), String> {
    match command {
        Command::Run { config, drain_timeout } => {
            let config = Config::load(&config).map_err(|e| e.to_string())?;
            let tracer = start_traces(&config, &traces)?;
            let shutdown = CancellationToken::new();
            let running = auditflow::pipeline::start(config, shutdown.clone())
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(rules = running.num_rules, http = ?running.http_addr, "auditflow running");
            let token = running.shutdown_token();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutdown requested");
                token.cancel();
            });
            let result = running.wait(drain_timeout).await.map_err(|e| e.to_string());
            if let Some(provider) = tracer {
                // The last spans go out before exit; the flush waits on the runtime.
                tokio::task::spawn_blocking(move || provider.shutdown()).await.ok();
            }
            result
        }
        Command::Demo {
            duration,
            http_listen,
            pg_listen,
            output,
            rate,
            sinks_from,
        } => {
            let sinks_from = sinks_from
                .map(|p| Config::load(&p))
                .transpose()
                .map_err(|e| e.to_string())?;
            let options = auditflow::demo::DemoOptions {
                duration: duration.map(Duration::from_secs),
                http_listen,
                pg_listen,
                output,
                rate,
                sinks_from,
            };
            auditflow::demo::run(options).await.map_err(|e| e.to_string())
        }
        Command::Sql {
            query,
            url,
            format,
            token,
        } => sql(query, &url, format, token.as_deref()).await,
        Command::Health { url, ready } => health(&url, ready).await,
        Command::Verify { target, public_key } => verify(&target, public_key.as_deref()).await,
        Command::Export {
            from,
            to,
            filter,
            format,
            out,
            archive,
            config,
            signing_key,
        } => {
            let archive_url = match (archive, config) {
                (Some(url), _) => url,
                (None, Some(config)) => Config::load(&config)
                    .map_err(|e| e.to_string())?
                    .archive
                    .map(|a| a.url)
                    .ok_or_else(|| format!("{}: has no [archive] section", config.display()))?,
                (None, None) => return Err("name the archive: --archive URL or --config FILE".into()),
            };
            let time = |flag: &str, text: &str| {
                chrono::DateTime::parse_from_rfc3339(text)
                    .map(|t| t.timestamp_micros())
                    .map_err(|e| format!("--{flag} {text:?}: not an RFC 3339 time ({e})"))
            };
            let request = auditflow::archive::export::ExportRequest {
                archive_url,
                from_us: time("from", &from)?,
                to_us: time("to", &to)?,
                filter,
                format: match format {
                    ArchiveFormat::Parquet => auditflow::archive::export::ExportFormat::Parquet,
                    ArchiveFormat::Jsonl => auditflow::archive::export::ExportFormat::Jsonl,
                    ArchiveFormat::Csv => auditflow::archive::export::ExportFormat::Csv,
                },
                out,
                signing_key,
                progress: true,
            };
            let summary = auditflow::archive::export::export(&request)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "exported {} rows in {} files ({} bytes); manifest {}",
                summary.rows,
                summary.files,
                summary.bytes,
                summary.manifest.display()
            );
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            let config = Config::load(&file).map_err(|e| e.to_string())?;
            println!("{}: ok", file.display());
            println!("{}", config.describe());
            Ok(())
        }
        Command::Rules {
            command: RulesCommand::Check { dir },
        } => {
            let rules = auditflow::rules::load_dirs(std::slice::from_ref(&dir)).map_err(|e| e.to_string())?;
            for r in &rules {
                println!(
                    "{:<28} {:<10} {:<8} {}",
                    r.meta.id,
                    r.kind.name(),
                    r.meta.severity,
                    r.meta.file.display()
                );
            }
            println!("{}: {} rules ok", dir.display(), rules.len());
            Ok(())
        }
        Command::Rules {
            command:
                RulesCommand::Export {
                    format: ExportFormat::Sigma,
                    dir,
                    out,
                },
        } => {
            let report = auditflow::rules::sigma::export_dir(&dir, &out).map_err(|e| e.to_string())?;
            for path in &report.written {
                println!("wrote {}", path.display());
            }
            for s in &report.skipped {
                println!("skipped {s}");
            }
            println!(
                "{} Sigma rules written, {} skipped",
                report.written.len(),
                report.skipped.len()
            );
            Ok(())
        }
        Command::Rules {
            command: RulesCommand::Import { path, out },
        } => {
            let written = auditflow::rules::sigma::import_path(&path, &out).map_err(|e| e.to_string())?;
            for path in &written {
                println!("wrote {}", path.display());
            }
            println!("{} rule files written", written.len());
            Ok(())
        }
        Command::Rules {
            command: RulesCommand::Test { dir },
        } => {
            let report = auditflow::rules::testing::run_dir(&dir).map_err(|e| e.to_string())?;
            for r in &report.results {
                if r.failures.is_empty() {
                    println!("ok    {} / {}", r.file.display(), r.name);
                } else {
                    println!("FAIL  {} / {}", r.file.display(), r.name);
                    for f in &r.failures {
                        println!("        {f}");
                    }
                }
            }
            let failed = report.results.iter().filter(|r| !r.failures.is_empty()).count();
            println!(
                "{} passed, {} failed; alerts fired {}/{} expected, rules silent {}/{} expected",
                report.results.len() - failed,
                failed,
                report.fired,
                report.expected_fired,
                report.silent,
                report.expected_silent
            );
            if failed == 0 {
                Ok(())
            } else {
                Err(format!("{failed} rule test(s) failed"))
            }
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn sql(query: Option<String>, url: &str, format: SqlFormat, token: Option<&str>) -> Result<(), String> {
    let query = match query.as_deref() {
        Some("-") | None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| format!("reading the query from stdin: {e}"))?;
            text
        }
        Some(q) => q.to_owned(),
    };
    let accept = match format {
        SqlFormat::Table => ARROW_STREAM,
        SqlFormat::Json => "application/json",
        SqlFormat::Csv => "text/csv",
    };
    let endpoint = format!("{}/v1/sql", url.trim_end_matches('/'));
    let mut request = reqwest::Client::new()
        .post(&endpoint)
        .header("Accept", accept)
        .json(&serde_json::json!({ "sql": query }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| {
        format!("cannot reach auditflow at {endpoint}: {e} (is `auditflow run` or `auditflow demo` running?)")
    })?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("reading the answer from {endpoint}: {e}"))?;
    if !status.is_success() {
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return Err(format!("query failed ({status}): {message}"));
    }
    match format {
        SqlFormat::Table => {
            let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)
                .map_err(|e| format!("decoding the Arrow answer: {e}"))?;
            let batches: Vec<_> = reader
                .collect::<Result<_, _>>()
                .map_err(|e| format!("decoding the Arrow answer: {e}"))?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let table = datafusion::arrow::util::pretty::pretty_format_batches(&batches).map_err(|e| e.to_string())?;
            println!("{table}");
            println!("({rows} row{})", if rows == 1 { "" } else { "s" });
        }
        SqlFormat::Json | SqlFormat::Csv => {
            print!("{}", String::from_utf8_lossy(&body));
            if !body.ends_with(b"\n") {
                println!();
            }
        }
    }
    Ok(())
}

/// `auditflow health`: one GET with a short timeout; the answer's status decides.
async fn health(url: &str, ready: bool) -> Result<(), String> {
    let path = if ready { "readyz" } else { "healthz" };
    let target = format!("{}/{path}", url.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(&target)
        .send()
        .await
        .map_err(|e| format!("{}: {e}", auditflow::config::redact_url(&target)))?;
    if response.status().is_success() {
        println!("{path}: ok");
        Ok(())
    } else {
        Err(format!("{path}: {}", response.status()))
    }
}
