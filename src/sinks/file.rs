//! File sink: JSON lines, one object per audit event, metric sample and alert. For the demo and
//! air-gapped sites. A batch is acknowledged after its lines are written and synced to disk.

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::{SinkItem, alert_json, audit_fields, fields_object, time_value};
use crate::config::FileSinkConfig;
use crate::event::Batch;
use crate::telemetry::{SinkLabel, Telemetry};

/// Encodes a batch as JSON lines.
pub fn encode(batch: &Batch, out: &mut Vec<u8>) {
    for row in &batch.audit {
        // `raw` is the original event: embed it verbatim so large integers keep every digit.
        out.extend_from_slice(b"{\"kind\":\"audit\",\"time\":");
        out.extend_from_slice(time_value(row.time_us).to_string().as_bytes());
        out.extend_from_slice(b",\"id\":");
        out.extend_from_slice(serde_json::to_string(&row.id).unwrap_or_default().as_bytes());
        out.extend_from_slice(b",\"fields\":");
        out.extend_from_slice(
            serde_json::Value::Object(fields_object(audit_fields(row)))
                .to_string()
                .as_bytes(),
        );
        out.extend_from_slice(b",\"event\":");
        // Re-indent nothing: a pretty-printed raw event is still one JSON value; strip newlines
        // so the file stays one object per line.
        out.extend(row.raw.iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
        out.extend_from_slice(b"}\n");
    }
    for m in &batch.metrics {
        let line = json!({
            "kind": "metric",
            "time": time_value(m.time_us),
            "name": m.name,
            "value": m.value,
            "metric_kind": m.kind.as_str(),
            "cluster_id": m.cluster_id,
            "topic": m.topic,
            "partition": m.partition,
            "labels": m.labels,
            "resource_app": m.resource_app,
        });
        out.extend_from_slice(line.to_string().as_bytes());
        out.push(b'\n');
    }
    for a in &batch.alerts {
        let mut v = alert_json(a);
        v["kind"] = json!("alert");
        out.extend_from_slice(v.to_string().as_bytes());
        out.push(b'\n');
    }
}

/// Runs the file sink until its channel closes.
pub async fn run(
    config: FileSinkConfig,
    mut rx: mpsc::Receiver<SinkItem>,
    telemetry: Telemetry,
) -> Result<(), std::io::Error> {
    if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent).await?;
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&config.path)
        .await?;
    let label = SinkLabel { sink: "file" };
    let mut buf = Vec::with_capacity(1 << 20);
    while let Some(item) = rx.recv().await {
        buf.clear();
        encode(&item.batch, &mut buf);
        let mut attempt = 0;
        loop {
            let written = async {
                file.write_all(&buf).await?;
                file.flush().await?;
                file.sync_data().await
            }
            .await;
            match written {
                Ok(()) => break,
                Err(e) => {
                    // A full disk or a read-only mount: retry, holding the batch (nothing lost).
                    tracing::error!(path = %config.path.display(), error = %e, "file sink cannot write; retrying");
                    telemetry.sink_retries.get_or_create(&label).inc();
                    tokio::time::sleep(crate::retry::backoff(attempt, crate::retry::RETRY_CAP)).await;
                    attempt += 1;
                }
            }
        }
        telemetry
            .sink_events
            .get_or_create(&label)
            .inc_by(item.batch.len() as u64);
        item.ack.accept();
    }
    Ok(())
}
