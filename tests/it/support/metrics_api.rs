//! A strict fake of the Confluent Cloud Metrics API's export endpoint: checks the basic-auth
//! header and every query parameter, answers Prometheus text in the exact shape of the real
//! export (HELP and TYPE lines, trailing commas in label sets, millisecond timestamps, a
//! `confluent_scrape_resource_access_error` series for a resource it cannot read), and answers
//! 429 with the rate-limit headers on demand.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;

/// What the fake serves and what it saw.
pub struct FakeState {
    pub key: String,
    pub secret: String,
    /// Resource ids it knows, by kind; any other id gets an access-error series.
    pub known: Vec<(&'static str, String)>,
    /// Timestamp (ms) of the minute every series is exported at.
    pub minute_ms: AtomicI64,
    /// Answer this many requests with 429 before serving again.
    pub rate_limit_next: AtomicUsize,
    pub num_ok: AtomicUsize,
    pub num_rate_limited: AtomicUsize,
    pub num_unauthorized: AtomicUsize,
    /// Requests refused as malformed, with why (a test asserts this stays empty).
    pub bad_requests: Mutex<Vec<String>>,
}

pub struct FakeMetricsApi {
    pub addr: std::net::SocketAddr,
    pub state: Arc<FakeState>,
}

impl FakeMetricsApi {
    pub async fn start(key: &str, secret: &str, known: Vec<(&'static str, String)>, minute_ms: i64) -> FakeMetricsApi {
        let state = Arc::new(FakeState {
            key: key.into(),
            secret: secret.into(),
            known,
            minute_ms: AtomicI64::new(minute_ms),
            rate_limit_next: AtomicUsize::new(0),
            num_ok: AtomicUsize::new(0),
            num_rate_limited: AtomicUsize::new(0),
            num_unauthorized: AtomicUsize::new(0),
            bad_requests: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/v2/metrics/cloud/export", get(export))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeMetricsApi { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn error(status: StatusCode, detail: &str) -> Response {
    let body = serde_json::json!({"errors": [{"status": status.as_u16().to_string(), "detail": detail}]});
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

async fn export(State(state): State<Arc<FakeState>>, uri: Uri, headers: HeaderMap) -> Response {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", state.key, state.secret))
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        state.num_unauthorized.fetch_add(1, Ordering::SeqCst);
        return error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let query = uri.query().unwrap_or_default();
    let mut kind: Option<String> = None;
    let mut ids = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let bad = |why: String| {
            state.bad_requests.lock().unwrap().push(why.clone());
            error(StatusCode::BAD_REQUEST, &why)
        };
        if k == "metric" {
            if !v.starts_with("io.confluent.") {
                return bad(format!("unknown metric {v}"));
            }
            continue;
        }
        let Some(k_kind) = k.strip_prefix("resource.").and_then(|r| r.strip_suffix(".id")) else {
            return bad(format!("unknown parameter {k}"));
        };
        if !["kafka", "schema_registry", "ksql", "connector", "compute_pool"].contains(&k_kind) {
            return bad(format!("unknown resource type {k_kind}"));
        }
        if kind.as_deref().is_some_and(|prev| prev != k_kind) {
            return bad("one resource type per request".into());
        }
        kind = Some(k_kind.to_owned());
        ids.push(v.into_owned());
    }
    let Some(kind) = kind else {
        let why = "at least one resource.<type>.id is required".to_owned();
        state.bad_requests.lock().unwrap().push(why.clone());
        return error(StatusCode::BAD_REQUEST, &why);
    };
    if state
        .rate_limit_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        state.num_rate_limited.fetch_add(1, Ordering::SeqCst);
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
        let h = response.headers_mut();
        h.insert("retry-after", "1".parse().unwrap());
        h.insert("ratelimit-limit", "160".parse().unwrap());
        h.insert("ratelimit-remaining", "0".parse().unwrap());
        h.insert("ratelimit-reset", "1".parse().unwrap());
        return response;
    }
    state.num_ok.fetch_add(1, Ordering::SeqCst);
    let ts = state.minute_ms.load(Ordering::SeqCst);
    let mut body = String::new();
    let known: Vec<&String> = ids
        .iter()
        .filter(|id| state.known.iter().any(|(k, known)| *k == kind && known == *id))
        .collect();
    let family = |body: &mut String, name: &str, help: &str, lines: &[String]| {
        body.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for l in lines {
            body.push_str(&format!("{name}{l} {ts}\n"));
        }
    };
    match kind.as_str() {
        "kafka" => {
            let per_topic = |values: [&str; 2]| -> Vec<String> {
                known
                    .iter()
                    .flat_map(|id| {
                        [("payments", values[0]), ("orders", values[1])]
                            .map(|(topic, v)| format!("{{kafka_id=\"{id}\",topic=\"{topic}\",}} {v}"))
                    })
                    .collect()
            };
            family(
                &mut body,
                "confluent_kafka_server_received_bytes",
                "The delta count of bytes of the customer's data received from the network.",
                &per_topic(["1048576.0", "2048.0"]),
            );
            // 20 GiB out of `payments` in one minute: the shipped egress rule's limit is 10 GiB in 5m.
            family(
                &mut body,
                "confluent_kafka_server_sent_bytes",
                "The delta count of bytes of the customer's data sent over the network.",
                &per_topic(["2.147483648E10", "4096.0"]),
            );
            family(
                &mut body,
                "confluent_kafka_server_retained_bytes",
                "The current count of bytes retained by the cluster.",
                &per_topic(["1.0E9", "5.0E8"]),
            );
            let partitions: Vec<String> = known.iter().map(|id| format!("{{kafka_id=\"{id}\",}} 12.0")).collect();
            family(
                &mut body,
                "confluent_kafka_server_partition_count",
                "The number of partitions.",
                &partitions,
            );
        }
        "schema_registry" => {
            let lines: Vec<String> = known
                .iter()
                .map(|id| format!("{{schema_registry_id=\"{id}\",}} 42.0"))
                .collect();
            family(
                &mut body,
                "confluent_kafka_schema_registry_schema_count",
                "The number of registered schemas.",
                &lines,
            );
        }
        _ => {}
    }
    // One status series per queried resource, as the export writes it (no timestamp): 1 for a
    // resource it cannot read, 0 for one it can.
    let name = "confluent_scrape_resource_access_error";
    body.push_str(&format!("# HELP {name} Error status of resources queried. A value of 1 signifies that the resource was not found, whereas a value of 0 signifies that the resource was successfully found and the user principal was authorized to access it.\n# TYPE {name} gauge\n"));
    for id in &ids {
        let status = if known.contains(&id) { "0.0" } else { "1.0" };
        body.push_str(&format!(
            "{name}{{resource_type=\"resource.{kind}.id\",resource_id=\"{id}\",}} {status}\n"
        ));
    }
    let mut response = (StatusCode::OK, [("content-type", "text/plain; version=0.0.4")], body).into_response();
    let h = response.headers_mut();
    h.insert("ratelimit-limit", "160".parse().unwrap());
    h.insert("ratelimit-remaining", "159".parse().unwrap());
    h.insert("ratelimit-reset", "3600".parse().unwrap());
    response
}
