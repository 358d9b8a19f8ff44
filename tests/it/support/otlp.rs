//! A real OTLP gRPC receiver (tonic + the generated `opentelemetry-proto` services) that keeps
//! what it receives.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics;
use tonic::{Request, Response, Status};

#[derive(Default)]
pub struct Received {
    pub logs: Vec<LogRecord>,
    pub metrics: Vec<ResourceMetrics>,
}

#[derive(Clone, Default)]
pub struct OtlpReceiver {
    pub received: Arc<Mutex<Received>>,
    /// Report this many log records of each request as rejected (partial success).
    pub reject_logs: Arc<std::sync::atomic::AtomicI64>,
}

#[tonic::async_trait]
impl LogsService for OtlpReceiver {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let mut r = self.received.lock().unwrap();
        for rl in request.into_inner().resource_logs {
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
        Ok(Response::new(ExportLogsServiceResponse { partial_success }))
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpReceiver {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.received
            .lock()
            .unwrap()
            .metrics
            .extend(request.into_inner().resource_metrics);
        Ok(Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

impl OtlpReceiver {
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
                .add_service(MetricsServiceServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
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
