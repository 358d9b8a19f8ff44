use std::path::Path;

use super::*;
use crate::sinks::SinkItem;
use crate::source::committer::Pending;

const DENIED: &str =
    include_str!("../../../tests/fixtures/samples/audit/cloud-authorization-denied-cross-namespace.json");
const RULE: &str = "groups:\n  - name: g\n    rules:\n      - id: denied\n        kind: match\n        where: \"granted = false\"\n        severity: low\n        summary: s\n";

fn polled(offset: i64, id: &str, time: &str) -> Polled {
    let topic: Arc<str> = Arc::from("audit");
    let payload = DENIED
        .replace("e51a8c3d-7b90-4f2e-8d16-3a9c5b7e1f02", id)
        .replace("2026-11-24T09:18:11.907Z", time);
    let record = Record {
        stream: Stream::Audit,
        topic: topic.clone(),
        partition: 0,
        offset,
        timestamp_ms: None,
        key: None,
        payload: Some(crate::event::Raw::from(payload.into_bytes())),
        headers: Vec::new(),
    };
    let mut positions = Positions::default();
    positions.record(&topic, 0, offset, None);
    Polled {
        bytes: 2048,
        records: vec![record],
        positions,
        assigned: None,
    }
}

/// Issue 14: a poll's events go to the sinks before its rows are evaluated, with the poll's
/// share of the in-flight budget; its positions reach the committer only behind the alerts
/// that evaluation raised.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_go_out_first_and_positions_wait_behind_the_alerts() {
    let config = Config::parse("[kafka]\nbootstrap_servers = \"x:1\"\n", "test.toml").unwrap();
    let ctx = datafusion::execution::context::SessionContext::new();
    let rules = RuleEngine::new(rules::parse_rules(&ctx, RULE, Path::new("r.yaml")).unwrap());
    let (alerts_tx, _) = broadcast::channel(16);
    let processor = Processor::new(
        &config,
        Ownership::default(),
        Arc::default(),
        rules,
        Window::new(std::time::Duration::from_secs(60)),
        Telemetry::new(),
        alerts_tx,
    );
    let (sink_tx, mut sink_rx) = mpsc::channel::<SinkItem>(16);
    let (commit_tx, mut commit_rx) = mpsc::channel::<Pending>(16);
    let budget = Arc::new(tokio::sync::Semaphore::new(1024));
    let dispatcher = Dispatcher {
        sinks: vec![sink_tx],
        committer: commit_tx,
        record_ids: false,
        inflight: budget.clone(),
        inflight_kib: 1024,
    };
    let (tx, rx) = mpsc::channel(4);
    // The second event is three seconds later on the same partition: its clock completes
    // the first one's second, whose row the match rule then evaluates.
    tx.send(polled(7, "a", "2026-11-24T09:18:11.907Z")).await.unwrap();
    tx.send(polled(8, "b", "2026-11-24T09:18:14.907Z")).await.unwrap();
    drop(tx);
    let idle = Arc::new(std::sync::atomic::AtomicBool::new(true));
    run_processor(processor, dispatcher, rx, idle).await.unwrap();

    let mut items = Vec::new();
    while let Ok(item) = sink_rx.try_recv() {
        items.push(item);
    }
    let mut pendings = Vec::new();
    while let Ok(p) = commit_rx.try_recv() {
        pendings.push(p);
    }
    let events: Vec<usize> = items.iter().map(|i| i.batch.audit.len()).collect();
    let alerts: Vec<&str> = items
        .iter()
        .flat_map(|i| i.batch.alerts.iter().map(|a| a.rule_id.as_str()))
        .collect();
    assert_eq!(events.iter().sum::<usize>(), 2, "both events delivered: {events:?}");
    assert_eq!(alerts, ["denied"]);
    assert!(
        items
            .iter()
            .all(|i| i.batch.audit.is_empty() || i.batch.alerts.is_empty())
    );
    // Two event batches (budget, no positions) and two evaluated ones (positions, no
    // budget); the first poll raised nothing, so its evaluated batch went to no sink.
    assert_eq!(pendings.len(), 4);
    let offsets: Vec<Option<i64>> = pendings
        .iter()
        .map(|p| p.positions.max_offsets.values().next().copied())
        .collect();
    let where_of = |offset| offsets.iter().position(|o| *o == Some(offset)).unwrap();
    let (first, second) = (where_of(7), where_of(8));
    assert!(first < second, "positions in poll order: {offsets:?}");
    assert!(pendings[first].acks.is_empty());
    assert_eq!(pendings[second].acks.len(), 1, "the alerts' acknowledgement");
    assert!(
        pendings
            .iter()
            .all(|p| p.inflight.is_some() == p.positions.max_offsets.is_empty())
    );
    // The event batches were dispatched before their positions.
    let dispatched_events: Vec<usize> = (0..4).filter(|i| offsets[*i].is_none()).collect();
    assert!(dispatched_events[0] < first && dispatched_events[1] < second);
    // The budget is given back with the events' pendings.
    assert_eq!(budget.available_permits(), 1024 - 4);
    pendings.retain(|p| p.inflight.is_none());
    assert_eq!(budget.available_permits(), 1024);
    drop(pendings);
    assert_eq!(budget.available_permits(), 1024);
}

/// A poll's rows keep record order with their own origins, whichever thread decoded them:
/// undecodable and empty records go to the dead letters and repeats are dropped, in either
/// half of a poll large enough to be split between threads.
#[test]
fn rows_keep_their_records_through_failures_and_repeats() {
    let config = Config::parse("[kafka]\nbootstrap_servers = \"x:1\"\n", "test.toml").unwrap();
    let (alerts_tx, _) = broadcast::channel(16);
    let mut processor = Processor::new(
        &config,
        Ownership::default(),
        Arc::default(),
        RuleEngine::new(Vec::new()),
        Window::new(std::time::Duration::from_secs(60)),
        Telemetry::new(),
        alerts_tx,
    );
    // 0..1200: every 97th is not JSON, every 89th has no payload, every 50th repeats the id of
    // the record before it.
    let id_of = |offset: i64| {
        if offset % 50 == 0 && offset > 0 {
            offset - 1
        } else {
            offset
        }
    };
    let records: Vec<Record> = (0..1200)
        .map(|offset| {
            let mut record = polled(offset, &format!("id-{}", id_of(offset)), "2026-11-24T09:18:11.907Z")
                .records
                .remove(0);
            if offset % 97 == 5 {
                record.payload = Some(crate::event::Raw::from(b"{not json".to_vec()));
            } else if offset % 89 == 7 {
                record.payload = None;
            }
            record
        })
        .collect();
    let failed = |offset: i64| offset % 97 == 5 || offset % 89 == 7;
    // Four threads of 300 records each, whatever this machine's cores.
    processor.intake.audit_helpers = (0..3)
        .map(|_| DecodeHelper::new(processor.intake.audit.clone()))
        .collect();
    let (batch, _) = processor.intake.take_rows(&records);

    let dead: Vec<i64> = batch.dead_letters.iter().map(|d| d.offset).collect();
    assert_eq!(dead, (0..1200).filter(|o| failed(*o)).collect::<Vec<_>>());
    // A repeat whose original failed is not a repeat.
    let repeat = |offset: i64| id_of(offset) != offset && !failed(offset) && !failed(offset - 1);
    let duplicates: Vec<i64> = batch.duplicates.iter().map(|o| o.offset).collect();
    assert_eq!(duplicates, (0..1200).filter(|o| repeat(*o)).collect::<Vec<_>>());
    let kept: Vec<i64> = (0..1200).filter(|o| !failed(*o) && !repeat(*o)).collect();
    let origins: Vec<i64> = batch.audit.iter().map(|r| r.origin.as_ref().unwrap().offset).collect();
    assert_eq!(origins, kept);
    for row in &batch.audit {
        assert_eq!(row.id, format!("id-{}", id_of(row.origin.as_ref().unwrap().offset)));
    }
}
