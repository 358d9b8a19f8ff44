//! A real OTLP receiver that keeps what it receives: gRPC (tonic + the generated
//! `opentelemetry-proto` services, optionally over TLS) or HTTP/protobuf (axum, decoding the same
//! generated messages, strict about the method, path and content type OTLP/HTTP specifies).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics;
use opentelemetry_proto::tonic::trace::v1::ResourceSpans;
use tonic::{Request, Response, Status};

#[derive(Default)]
pub struct Received {
    pub logs: Vec<LogRecord>,
    pub metrics: Vec<ResourceMetrics>,
    pub spans: Vec<ResourceSpans>,
}

#[derive(Clone, Default)]
pub struct OtlpReceiver {
    pub received: Arc<Mutex<Received>>,
    /// Report this many log records of each request as rejected (partial success).
    pub reject_logs: Arc<std::sync::atomic::AtomicI64>,
    /// Value of the `x-api-key` header (HTTP) or metadata (gRPC) of every request.
    pub api_keys: Arc<Mutex<Vec<String>>>,
    /// HTTP only: statuses to answer (in order) before accepting again, e.g. 503 then 429.
    pub http_failures: Arc<Mutex<std::collections::VecDeque<u16>>>,
}

#[tonic::async_trait]
impl LogsService for OtlpReceiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.note_api_key(request.metadata().get("x-api-key").and_then(|v| v.to_str().ok()));
        Ok(Response::new(self.take_logs(request.into_inner())))
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpReceiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.note_api_key(request.metadata().get("x-api-key").and_then(|v| v.to_str().ok()));
        Ok(Response::new(self.take_metrics(request.into_inner())))
    }
}

#[tonic::async_trait]
impl TraceService for OtlpReceiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.note_api_key(request.metadata().get("x-api-key").and_then(|v| v.to_str().ok()));
        self.received
            .lock()
            .unwrap()
            .spans
            .extend(request.into_inner().resource_spans);
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl OtlpReceiver {
    fn note_api_key(&self, key: Option<&str>) {
        if let Some(k) = key {
            self.api_keys.lock().unwrap().push(k.to_owned());
        }
    }

    fn take_logs(&self, request: ExportLogsServiceRequest) -> ExportLogsServiceResponse {
        let mut r = self.received.lock().unwrap();
        for rl in request.resource_logs {
            for sl in rl.scope_logs {
                r.logs.extend(sl.log_records);
            }
        }
        let rejected = self.reject_logs.load(std::sync::atomic::Ordering::Relaxed);
        let partial_success =
            (rejected > 0).then(
                || opentelemetry_proto::tonic::collector::logs::v1::ExportLogsPartialSuccess {
                    rejected_log_records: rejected,
                    error_message: "test receiver rejects some records".into(),
                },
            );
        ExportLogsServiceResponse { partial_success }
    }

    fn take_metrics(&self, request: ExportMetricsServiceRequest) -> ExportMetricsServiceResponse {
        self.received.lock().unwrap().metrics.extend(request.resource_metrics);
        ExportMetricsServiceResponse { partial_success: None }
    }

    pub async fn start() -> (OtlpReceiver, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        OtlpReceiver::serve(listener).await
    }

    /// Starts on a given port (a receiver that comes up late).
    pub async fn start_on(port: u16) -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        OtlpReceiver::serve(listener).await.0
    }

    async fn serve(listener: tokio::net::TcpListener) -> (OtlpReceiver, SocketAddr) {
        let receiver = OtlpReceiver::default();
        let addr = listener.local_addr().unwrap();
        let service = receiver.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(LogsServiceServer::new(service.clone()))
                .add_service(MetricsServiceServer::new(service.clone()))
                .add_service(TraceServiceServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        (receiver, addr)
    }

    /// Serves gRPC over TLS with the given PEM certificate chain and key.
    pub async fn start_tls(cert_pem: &[u8], key_pem: &[u8]) -> (OtlpReceiver, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = OtlpReceiver::default();
        let addr = listener.local_addr().unwrap();
        let service = receiver.clone();
        let identity = tonic::transport::Identity::from_pem(cert_pem, key_pem);
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
                .unwrap()
                .add_service(LogsServiceServer::new(service.clone()))
                .add_service(MetricsServiceServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        (receiver, addr)
    }

    /// Serves OTLP/HTTP with protobuf bodies: `POST /v1/logs` and `POST /v1/metrics`.
    pub async fn start_http() -> (OtlpReceiver, SocketAddr) {
        use axum::routing::post;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = OtlpReceiver::default();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/v1/logs", post(http_logs))
            .route("/v1/metrics", post(http_metrics))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, addr)
    }

    /// String attribute `key` of a log record.
    pub fn attr(record: &LogRecord, key: &str) -> Option<String> {
        use opentelemetry_proto::tonic::common::v1::any_value::Value;
        record
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                Value::StringValue(s) => Some(s.clone()),
                Value::BoolValue(b) => Some(b.to_string()),
                Value::IntValue(i) => Some(i.to_string()),
                Value::DoubleValue(d) => Some(d.to_string()),
                _ => None,
            })
    }
}

/// Checks what OTLP/HTTP requires of a request; `Some` is the response to give instead.
fn http_precheck(receiver: &OtlpReceiver, headers: &axum::http::HeaderMap) -> Option<axum::response::Response> {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    receiver.note_api_key(headers.get("x-api-key").and_then(|v| v.to_str().ok()));
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/x-protobuf") {
        return Some((StatusCode::UNSUPPORTED_MEDIA_TYPE, "want application/x-protobuf").into_response());
    }
    if let Some(status) = receiver.http_failures.lock().unwrap().pop_front() {
        let status = StatusCode::from_u16(status).unwrap();
        return Some((status, [("retry-after", "1")], "test receiver failing on purpose").into_response());
    }
    None
}

fn protobuf_response(message: impl prost::Message) -> axum::response::Response {
    use axum::response::IntoResponse;
    ([("content-type", "application/x-protobuf")], message.encode_to_vec()).into_response()
}

async fn http_logs(
    axum::extract::State(receiver): axum::extract::State<OtlpReceiver>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Some(response) = http_precheck(&receiver, &headers) {
        return response;
    }
    match <ExportLogsServiceRequest as prost::Message>::decode(body) {
        Ok(request) => protobuf_response(receiver.take_logs(request)),
        Err(e) => (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn http_metrics(
    axum::extract::State(receiver): axum::extract::State<OtlpReceiver>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Some(response) = http_precheck(&receiver, &headers) {
        return response;
    }
    match <ExportMetricsServiceRequest as prost::Message>::decode(body) {
        Ok(request) => protobuf_response(receiver.take_metrics(request)),
        Err(e) => (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}
