//! A Splunk HTTP Event Collector that is strict about the documented protocol: the
//! `Authorization: Splunk <token>` header, gzip bodies, concatenated JSON event objects each with
//! a non-blank `event`, numeric `time`, flat string `fields` (numbers allowed only as
//! `metric_name:*` measurements of metric events), and Splunk's status codes and bodies.

use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use datafusion_postgres::pgwire::tokio::tokio_rustls::TlsAcceptor;
use serde_json::{Value, json};

#[derive(Default)]
pub struct HecState {
    pub token: String,
    /// Accepted events, in order.
    pub events: Vec<Value>,
    /// While true, answer 503 code 9 (server busy).
    pub busy: bool,
    pub num_refused: usize,
    pub num_requests: usize,
    /// Events whose `event.id` is here make their request fail with 400 code 6.
    pub poison_ids: HashSet<String>,
    pub channels: HashSet<String>,
    /// Indexer acknowledgement: answer each accepted request with an `ackId`.
    pub acks_enabled: bool,
    /// Next ackId per channel: as in Splunk, ackIds count per channel from 0.
    pub next_ack_id: std::collections::HashMap<String, u64>,
    /// (channel, ackId) -> ack polls seen so far.
    pub pending_acks: std::collections::HashMap<(String, u64), usize>,
    /// An ackId is acknowledged only after this many polls asked for it (late acks).
    pub ack_after_polls: usize,
    /// These ackIds are never acknowledged.
    pub never_ack: HashSet<u64>,
    pub num_ack_polls: usize,
    /// Time each event request takes (a slow indexer).
    pub delay: std::time::Duration,
}

#[derive(Clone)]
pub struct HecReceiver {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<HecState>>,
    /// Over TLS: the TLS sessions established so far (`None` for plain HTTP).
    pub tls_sessions: Option<Arc<AtomicUsize>>,
}

fn reply(status: StatusCode, code: u64, text: &str) -> Response {
    (
        status,
        [("content-type", "application/json")],
        json!({"text": text, "code": code}).to_string(),
    )
        .into_response()
}

impl HecReceiver {
    fn app(token: &str) -> (Arc<Mutex<HecState>>, Router) {
        let state = Arc::new(Mutex::new(HecState {
            token: token.into(),
            ..HecState::default()
        }));
        let app = Router::new()
            .route("/services/collector/event", post(event))
            .route("/services/collector/ack", post(ack))
            .route("/services/collector/health", get(health))
            .with_state(state.clone());
        (state, app)
    }

    pub async fn start(token: &str) -> HecReceiver {
        let (state, app) = HecReceiver::app(token);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        HecReceiver {
            addr,
            state,
            tls_sessions: None,
        }
    }

    /// The same receiver over HTTPS, on the TLS settings the project's own servers use
    /// (`query::conn::tls_config`) with the PEM certificate chain and key in `files`: each
    /// connection is TLS-accepted, then served HTTP/1.1.
    pub async fn start_tls(token: &str, files: &auditflow::config::TlsFiles) -> HecReceiver {
        let (state, app) = HecReceiver::app(token);
        let acceptor = TlsAcceptor::from(auditflow::query::conn::tls_config(files, &[b"http/1.1"]).unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sessions = Arc::new(AtomicUsize::new(0));
        let counted = sessions.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (acceptor, app, counted) = (acceptor.clone(), app.clone(), counted.clone());
                tokio::spawn(async move {
                    // A client that refuses the certificate ends here, as at a real HEC.
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        HecReceiver {
            addr,
            state,
            tls_sessions: Some(sessions),
        }
    }

    /// The base URL; over TLS by the name the test certificate carries.
    pub fn url(&self) -> String {
        match self.tls_sessions {
            None => format!("http://{}", self.addr),
            Some(_) => format!("https://localhost:{}", self.addr.port()),
        }
    }

    pub fn events(&self) -> Vec<Value> {
        self.state.lock().unwrap().events.clone()
    }

    pub fn set_busy(&self, busy: bool) {
        self.state.lock().unwrap().busy = busy;
    }

    pub fn of_sourcetype(&self, sourcetype: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["sourcetype"] == sourcetype)
            .collect()
    }

    /// Distinct ids of the audit events received.
    pub fn audit_ids(&self) -> HashSet<String> {
        self.of_sourcetype("confluent:audit")
            .iter()
            .filter_map(|e| e["event"]["id"].as_str().map(str::to_owned))
            .collect()
    }

    /// Distinct rule ids of the alerts received.
    pub fn alert_rules(&self) -> HashSet<String> {
        let alerts = self.of_sourcetype("auditflow:alert");
        alerts
            .iter()
            .filter_map(|e| e["event"]["rule_id"].as_str().map(str::to_owned))
            .collect()
    }
}

/// `GET /services/collector/health`: 200 code 17, or 503 code 18 while busy.
async fn health(State(state): State<Arc<Mutex<HecState>>>) -> Response {
    if state.lock().unwrap().busy {
        reply(StatusCode::SERVICE_UNAVAILABLE, 18, "HEC is unhealthy, queues are full")
    } else {
        reply(StatusCode::OK, 17, "HEC is healthy")
    }
}

/// Validates one event object; `Err((code, text))` as Splunk would answer.
fn check_event(e: &Value) -> Result<(), (u64, &'static str)> {
    let obj = e.as_object().ok_or((6, "Invalid data format"))?;
    let event = obj.get("event").ok_or((12, "Event field is required"))?;
    if event.is_null() || event.as_str() == Some("") {
        return Err((13, "Event field cannot be blank"));
    }
    if let Some(t) = obj.get("time")
        && !t.is_number()
    {
        return Err((6, "Invalid data format"));
    }
    for key in ["host", "source", "sourcetype", "index"] {
        if let Some(v) = obj.get(key)
            && !v.is_string()
        {
            return Err((6, "Invalid data format"));
        }
    }
    let is_metric = event.as_str() == Some("metric");
    if let Some(fields) = obj.get("fields") {
        let fields = fields.as_object().ok_or((15, "Error in handling indexed fields"))?;
        for (k, v) in fields {
            let ok = v.is_string()
                || v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
                || (is_metric && k.starts_with("metric_name:") && v.is_number());
            if !ok {
                return Err((15, "Error in handling indexed fields"));
            }
        }
        if is_metric && !fields.keys().any(|k| k.starts_with("metric_name:")) {
            return Err((6, "Invalid data format"));
        }
    }
    Ok(())
}

async fn event(State(state): State<Arc<Mutex<HecState>>>, headers: HeaderMap, body: Bytes) -> Response {
    let delay = state.lock().unwrap().delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut s = state.lock().unwrap();
    s.num_requests += 1;
    let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return reply(StatusCode::UNAUTHORIZED, 2, "Token is required");
    };
    let Some(token) = auth.strip_prefix("Splunk ") else {
        return reply(StatusCode::UNAUTHORIZED, 3, "Invalid authorization");
    };
    if token != s.token {
        return reply(StatusCode::FORBIDDEN, 4, "Invalid token");
    }
    let channel = headers
        .get("x-splunk-request-channel")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(c) = &channel {
        if uuid::Uuid::parse_str(c).is_err() {
            return reply(StatusCode::BAD_REQUEST, 11, "Invalid data channel");
        }
        s.channels.insert(c.clone());
    } else if s.acks_enabled {
        return reply(StatusCode::BAD_REQUEST, 10, "Data channel is missing");
    }
    if s.busy {
        s.num_refused += 1;
        return reply(StatusCode::SERVICE_UNAVAILABLE, 9, "Server is busy");
    }
    let gzip = headers.get("content-encoding").and_then(|v| v.to_str().ok()) == Some("gzip");
    let body = if gzip {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out).is_err() {
            return reply(StatusCode::BAD_REQUEST, 6, "Invalid data format");
        }
        out
    } else {
        body.to_vec()
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return reply(StatusCode::BAD_REQUEST, 5, "No data");
    }
    let mut events = Vec::new();
    for item in serde_json::Deserializer::from_slice(&body).into_iter::<Value>() {
        let Ok(e) = item else {
            return reply(StatusCode::BAD_REQUEST, 6, "Invalid data format");
        };
        if let Err((code, text)) = check_event(&e) {
            return reply(StatusCode::BAD_REQUEST, code, text);
        }
        if e["event"]["id"].as_str().is_some_and(|id| s.poison_ids.contains(id)) {
            return reply(StatusCode::BAD_REQUEST, 6, "Invalid data format");
        }
        events.push(e);
    }
    s.events.extend(events);
    if s.acks_enabled {
        let channel = channel.unwrap_or_default();
        let next = s.next_ack_id.entry(channel.clone()).or_insert(0);
        let id = *next;
        *next += 1;
        s.pending_acks.insert((channel, id), 0);
        return (
            StatusCode::OK,
            [("content-type", "application/json")],
            json!({"text": "Success", "code": 0, "ackId": id}).to_string(),
        )
            .into_response();
    }
    reply(StatusCode::OK, 0, "Success")
}

/// `POST /services/collector/ack` with `{"acks": [ids]}` on a channel: `{"acks": {"id": bool}}`.
async fn ack(State(state): State<Arc<Mutex<HecState>>>, headers: HeaderMap, body: Bytes) -> Response {
    let mut s = state.lock().unwrap();
    match headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.strip_prefix("Splunk "))
    {
        Some(t) if t == s.token => {}
        Some(_) => return reply(StatusCode::FORBIDDEN, 4, "Invalid token"),
        None => return reply(StatusCode::UNAUTHORIZED, 2, "Token is required"),
    }
    if !s.acks_enabled {
        return reply(StatusCode::BAD_REQUEST, 14, "ACK is disabled");
    }
    let Some(channel) = headers
        .get("x-splunk-request-channel")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return reply(StatusCode::BAD_REQUEST, 10, "Data channel is missing");
    };
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return reply(StatusCode::BAD_REQUEST, 6, "Invalid data format");
    };
    let Some(ids) = request["acks"].as_array() else {
        return reply(StatusCode::BAD_REQUEST, 6, "Invalid data format");
    };
    s.num_ack_polls += 1;
    let (after, never) = (s.ack_after_polls, s.never_ack.clone());
    let mut answer = serde_json::Map::new();
    for id in ids.iter().filter_map(Value::as_u64) {
        let done = match s.pending_acks.get_mut(&(channel.clone(), id)) {
            Some(polls) => {
                *polls += 1;
                *polls > after && !never.contains(&id)
            }
            None => false,
        };
        answer.insert(id.to_string(), Value::Bool(done));
    }
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        json!({"acks": answer}).to_string(),
    )
        .into_response()
}
