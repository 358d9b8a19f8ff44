//! How requests reach the collector: a gRPC channel or an HTTP client, built from the config,
//! and one export attempt over either, its answer classified by [`super::response`].

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceResponse;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::Signal;
use super::response::{classify_grpc, classify_http};
use crate::config::{OtlpProtocol, OtlpSinkConfig, Secret};
use crate::retry::Verdict;
use crate::sinks::SinkError;

/// Rejected items reported in a partial-success response, and the receiver's message.
pub type Partial = Option<(i64, String)>;

/// How requests reach the collector.
pub enum Transport {
    Grpc {
        logs: Box<LogsServiceClient<Channel>>,
        metrics: Box<MetricsServiceClient<Channel>>,
        headers: BTreeMap<String, Secret>,
    },
    HttpProtobuf {
        client: reqwest::Client,
        logs_url: String,
        metrics_url: String,
        headers: BTreeMap<String, Secret>,
    },
}

impl Transport {
    pub fn new(config: &OtlpSinkConfig) -> Result<Transport, SinkError> {
        Ok(match config.protocol {
            OtlpProtocol::Grpc => {
                let channel = grpc_channel(config)?;
                Transport::Grpc {
                    logs: Box::new(LogsServiceClient::new(channel.clone())),
                    metrics: Box::new(MetricsServiceClient::new(channel)),
                    headers: config.headers.clone(),
                }
            }
            OtlpProtocol::HttpProtobuf => {
                let base = config.endpoint.trim_end_matches('/');
                Transport::HttpProtobuf {
                    client: http_client(config)?,
                    logs_url: format!("{base}/v1/logs"),
                    metrics_url: format!("{base}/v1/metrics"),
                    headers: config.headers.clone(),
                }
            }
        })
    }

    /// One export attempt: what the receiver partly rejected, or the verdict on a failure.
    pub async fn send_once(&mut self, signal: &Signal) -> Result<Partial, Verdict> {
        match (self, signal) {
            (Transport::Grpc { logs, headers, .. }, Signal::Logs(m)) => {
                let mut client = (**logs).clone();
                let response = client
                    .export(grpc_request(headers, m.clone()))
                    .await
                    .map_err(grpc_failure)?;
                Ok(response
                    .into_inner()
                    .partial_success
                    .map(|p| (p.rejected_log_records, p.error_message)))
            }
            (Transport::Grpc { metrics, headers, .. }, Signal::Metrics(m)) => {
                let mut client = (**metrics).clone();
                let response = client
                    .export(grpc_request(headers, m.clone()))
                    .await
                    .map_err(grpc_failure)?;
                Ok(response
                    .into_inner()
                    .partial_success
                    .map(|p| (p.rejected_data_points, p.error_message)))
            }
            (
                Transport::HttpProtobuf {
                    client,
                    logs_url,
                    headers,
                    ..
                },
                Signal::Logs(m),
            ) => http_export::<ExportLogsServiceResponse>(client, logs_url, headers, m.encode_to_vec())
                .await
                .map(|r| r.partial_success.map(|p| (p.rejected_log_records, p.error_message))),
            (
                Transport::HttpProtobuf {
                    client,
                    metrics_url,
                    headers,
                    ..
                },
                Signal::Metrics(m),
            ) => http_export::<ExportMetricsServiceResponse>(client, metrics_url, headers, m.encode_to_vec())
                .await
                .map(|r| r.partial_success.map(|p| (p.rejected_data_points, p.error_message))),
        }
    }
}

/// One OTLP/HTTP export: the decoded response on 2xx, else the verdict.
async fn http_export<R: Message + Default>(
    client: &reqwest::Client,
    url: &str,
    headers: &BTreeMap<String, Secret>,
    body: Vec<u8>,
) -> Result<R, Verdict> {
    let body = http_post(client, url, headers, body).await?;
    R::decode(body.as_ref()).map_err(|e| undecodable(url, e))
}

/// A 200 whose body is not an export response: the receiver is not an OTLP collector, and
/// sending the same again will not change that.
fn undecodable(url: &str, e: prost::DecodeError) -> Verdict {
    Verdict::DeadLetter {
        reason: format!("undecodable response from {url}: {e}"),
    }
}

fn grpc_failure(status: tonic::Status) -> Verdict {
    classify_grpc(status.code(), status.message(), None)
}

/// The message with the configured headers as gRPC metadata.
fn grpc_request<T>(headers: &BTreeMap<String, Secret>, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for (k, v) in headers {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes()),
            v.expose()
                .parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>(),
        ) {
            request.metadata_mut().insert(key, value);
        }
    }
    request
}

/// POSTs a protobuf body as OTLP/HTTP specifies; the response body on 2xx, else the verdict.
async fn http_post(
    client: &reqwest::Client,
    url: &str,
    headers: &BTreeMap<String, Secret>,
    body: Vec<u8>,
) -> Result<bytes::Bytes, Verdict> {
    let mut request = client
        .post(url)
        .header("Content-Type", "application/x-protobuf")
        .body(body);
    for (k, v) in headers {
        request = request.header(k.as_str(), v.expose());
    }
    let transport = |what: String| Verdict::Retry {
        after: None,
        reason: what,
    };
    let response = request
        .send()
        .await
        .map_err(|e| transport(format!("POST {url}: {e}")))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    if response.status().is_success() {
        return response
            .bytes()
            .await
            .map_err(|e| transport(format!("reading the response of {url}: {e}")));
    }
    let text = response.text().await.unwrap_or_default();
    Err(classify_http(status, retry_after, &text).context(&format!("from {url}")))
}

fn read_file(what: &str, path: &std::path::Path) -> Result<Vec<u8>, SinkError> {
    std::fs::read(path).map_err(|e| SinkError::Rejected {
        sink: "otlp",
        message: format!("reading tls.{what} {}: {e}", path.display()),
    })
}

fn grpc_channel(config: &OtlpSinkConfig) -> Result<Channel, SinkError> {
    let error = |message: String| SinkError::Rejected { sink: "otlp", message };
    let mut endpoint = Endpoint::from_shared(config.endpoint.clone())
        .map_err(|e| error(format!("endpoint {}: {e}", config.endpoint)))?
        .timeout(config.timeout)
        .connect_timeout(Duration::from_secs(5));
    if config.endpoint.starts_with("https://") {
        let tls = &config.tls;
        let mut tls_config = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = &tls.ca_file {
            tls_config = tls_config.ca_certificate(Certificate::from_pem(read_file("ca_file", ca)?));
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            tls_config = tls_config.identity(Identity::from_pem(
                read_file("cert_file", cert)?,
                read_file("key_file", key)?,
            ));
        }
        if let Some(name) = &tls.server_name {
            tls_config = tls_config.domain_name(name.clone());
        }
        endpoint = endpoint
            .tls_config(tls_config)
            .map_err(|e| error(format!("TLS settings for {}: {e}", config.endpoint)))?;
    }
    Ok(endpoint.connect_lazy())
}

fn http_client(config: &OtlpSinkConfig) -> Result<reqwest::Client, SinkError> {
    let error = |message: String| SinkError::Rejected { sink: "otlp", message };
    let mut builder = reqwest::Client::builder()
        .timeout(config.timeout)
        .connect_timeout(Duration::from_secs(5));
    let tls = &config.tls;
    if let Some(ca) = &tls.ca_file {
        let cert = reqwest::Certificate::from_pem(&read_file("ca_file", ca)?)
            .map_err(|e| error(format!("tls.ca_file {}: {e}", ca.display())))?;
        builder = builder.add_root_certificate(cert);
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        let identity = reqwest::Identity::from_pkcs8_pem(&read_file("cert_file", cert)?, &read_file("key_file", key)?)
            .map_err(|e| error(format!("tls.cert_file/key_file: {e}")))?;
        builder = builder.identity(identity);
    }
    if tls.server_name.is_some() {
        return Err(error(
            "tls.server_name is supported with protocol = \"grpc\" only; use the server's name in endpoint".into(),
        ));
    }
    builder
        .build()
        .map_err(|e| error(format!("building the HTTP client: {e}")))
}
