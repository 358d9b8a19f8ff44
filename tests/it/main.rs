//! One integration-test binary (link once): end to end against librdkafka's mock cluster and a
//! tansu broker process, a strict Splunk HEC receiver and real OTLP receivers (gRPC, TLS, HTTP).

mod alert_sinks;
mod architecture;
mod archive;
mod config_examples;
mod dashboards;
mod dead_letters;
mod demo;
mod e2e_mock;
mod e2e_tansu;
mod faults;
mod hec_tls;
mod metrics_api;
mod otlp_transports;
mod replay;
mod self_telemetry;
mod sql_frontends;
mod sql_security;
mod support;
mod teardown;
