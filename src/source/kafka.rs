//! The Kafka source.
//!
//! Contract:
//! - One consumer group reads the audit and metrics topics. `enable.auto.offset.store=false`:
//!   an offset is *stored* only when every record at or below it in its partition is finalised
//!   (accepted by every enabled sink, or durably in the dead-letter topic); librdkafka's
//!   auto-commit then commits stored offsets every second, and shutdown commits synchronously.
//! - Batches are finalised in poll order (the committer awaits them first-in first-out), so the
//!   stored offset of a partition is always a contiguous prefix: a later batch that finishes
//!   early waits for the earlier one.
//! - If a sink gives a batch up without accepting it, nothing after it is ever stored.
//! - Channels to sinks and to the committer are bounded: when a sink is slow or down, the poll
//!   loop waits, and the consumer's memory stays bounded.
//! - Rebalance: on revoke librdkafka commits what is stored (auto-commit does so before the
//!   partitions go); batches already processed for a revoked partition are finalised (their
//!   storing is refused once it is no longer assigned, so they can never move its new owner's
//!   offset), and records read but not yet processed (carried while paused) are abandoned,
//!   for the new owner to read from the committed offset. On assign, fetching starts from the
//!   committed offset. A rebalance during a pause pauses the new assignment too.

mod backpressure;

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, ClientContext, TopicPartitionList};

use tokio_util::sync::CancellationToken;

pub use self::backpressure::Backpressure;
use super::{Record, Stream};
use crate::config::{Config, TopicsConfig};
use crate::decode::intern::Interner;
use crate::event::RawChunker;
use crate::telemetry::{PartitionLabel, Telemetry};

/// Logs rebalances and notes that one happened; librdkafka does the rest. Its statistics give
/// the consumer lag per partition.
pub struct SourceContext {
    /// Set by every rebalance (and at start), taken by [`changed_assignment`].
    rebalanced: std::sync::atomic::AtomicBool,
    telemetry: Telemetry,
}

impl ClientContext for SourceContext {
    /// Every `statistics.interval.ms`: the lag of each assigned partition (high watermark minus
    /// committed offset); partitions no longer assigned (lag -1) leave the gauge.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 {
                    continue; // librdkafka's internal "unassigned" partition
                }
                let label = PartitionLabel {
                    topic: topic.clone(),
                    partition: *partition,
                };
                if p.consumer_lag >= 0 {
                    self.telemetry.consumer_lag.get_or_create(&label).set(p.consumer_lag);
                } else {
                    self.telemetry.consumer_lag.remove(&label);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, _consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => tracing::info!(partitions = tpl.count(), "partitions revoked"),
            Rebalance::Assign(tpl) => tracing::info!(partitions = tpl.count(), "partitions assigned"),
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, _consumer: &rdkafka::consumer::BaseConsumer<Self>, _rebalance: &Rebalance<'_>) {
        self.rebalanced.store(true, std::sync::atomic::Ordering::Release);
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => tracing::debug!(partitions = offsets.count(), "offsets committed"),
            Err(e) => tracing::warn!(error = %e, "offset commit failed; the next commit retries"),
        }
    }
}

/// The group consumer. Dropping it closes it (leave the group, commit on revoke) with a bound:
/// rdkafka's own drop polls until librdkafka says closed, with no limit, so a broker that is gone
/// (a test's mock cluster dropped first, a network cut at shutdown) would hang the process at
/// exit. The close runs on a thread of its own and is waited for at most [`CLOSE_TIMEOUT`];
/// past it the process goes on (and may exit) without it.
pub struct KafkaConsumer(Option<StreamConsumer<SourceContext>>);

/// How long dropping the consumer waits for librdkafka to close it.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

impl std::ops::Deref for KafkaConsumer {
    type Target = StreamConsumer<SourceContext>;

    fn deref(&self) -> &Self::Target {
        self.0.as_ref().expect("present until dropped")
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        let Some(inner) = self.0.take() else { return };
        let (closed_tx, closed_rx) = std::sync::mpsc::channel::<()>();
        let closing = std::thread::Builder::new().name("kafka-close".into()).spawn(move || {
            drop(inner);
            let _ = closed_tx.send(());
        });
        // If no thread could be started, the closure (and the consumer in it) was dropped here.
        if closing.is_ok() && closed_rx.recv_timeout(CLOSE_TIMEOUT).is_err() {
            tracing::warn!(timeout = ?CLOSE_TIMEOUT, "the Kafka consumer did not close in time; going on without it");
        }
    }
}

/// A batch closes when no record arrived for this long (or at `kafka.batch_linger`).
const BATCH_IDLE: Duration = Duration::from_millis(5);

/// The same while the processor waits for work: a fetch response's records arrive together,
/// microseconds apart, so this only ends the batch with the burst.
const BATCH_IDLE_DOWNSTREAM_IDLE: Duration = Duration::from_millis(1);

/// With nothing to read, [`poll_batch`] returns an empty batch this often, so event-time clocks
/// whose partitions went idle move on and what they held back is evaluated.
pub const IDLE_TICK: Duration = Duration::from_secs(1);

/// Builds the consumer and subscribes it to every audit and metrics topic.
pub fn consumer(config: &Config, telemetry: Telemetry) -> KafkaResult<KafkaConsumer> {
    let mut client = ClientConfig::new();
    // Our defaults first; `[kafka.properties]` (already in client_properties) override them.
    client
        .set("enable.auto.offset.store", "false")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Brokers answer a fetch as soon as data is there; this caps the wait when they do not
        // (an idle partition, librdkafka's mock cluster), which bounds added latency.
        .set("fetch.wait.max.ms", "100")
        // Bound what librdkafka prefetches per partition: memory stays flat while draining a
        // backlog (docs/PRODUCT.md §9), and throughput is still set by our batch size.
        .set("queued.max.messages.kbytes", "16384")
        // Once that bound is reached librdkafka postpones the partition's next fetch by this
        // much (default 1 s): draining a backlog, the queue then ran dry for ~0.7 s every
        // ~15,000 records, and the pipeline idled two thirds of the time.
        .set("fetch.queue.backoff.ms", "10")
        // Consumer lag per partition (`auditflow_consumer_lag`) comes from these statistics.
        .set("statistics.interval.ms", "10000");
    for (k, v) in &config.kafka.client_properties {
        client.set(k, v.expose());
    }
    // At-least-once depends on these two; a pass-through property may not undo them.
    client.set("enable.auto.offset.store", "false");
    let consumer: StreamConsumer<SourceContext> = client.create_with_context(SourceContext {
        rebalanced: std::sync::atomic::AtomicBool::new(true),
        telemetry,
    })?;
    let topics: Vec<&str> = config
        .topics
        .audit
        .iter()
        .chain(config.topics.metrics.iter())
        .map(String::as_str)
        .collect();
    consumer.subscribe(&topics)?;
    Ok(KafkaConsumer(Some(consumer)))
}

/// How long a batch waits for one more record before it closes.
fn batch_idle(downstream_idle: &std::sync::atomic::AtomicBool) -> Duration {
    if downstream_idle.load(std::sync::atomic::Ordering::Acquire) {
        BATCH_IDLE_DOWNSTREAM_IDLE
    } else {
        BATCH_IDLE
    }
}

/// Reads up to `max` records, waiting at most `linger` after the first.
///
/// `carried` holds records received while the assignment was paused (see [`Backpressure`]);
/// they come first. While `downstream_idle` is set (the processor waits for work), the batch
/// closes as soon as what was fetched has been read: lingering for more only pays while the
/// processor is busy, and costs latency when it is not.
pub async fn poll_batch(
    consumer: &KafkaConsumer,
    topics: &TopicsConfig,
    max: usize,
    linger: Duration,
    shutdown: &CancellationToken,
    carried: &mut Vec<Record>,
    downstream_idle: &std::sync::atomic::AtomicBool,
) -> Option<Vec<Record>> {
    if shutdown.is_cancelled() {
        return None;
    }
    if !carried.is_empty() {
        drop_revoked(consumer, carried);
    }
    if !carried.is_empty() {
        let take = carried.len().min(max);
        return Some(carried.drain(..take).collect());
    }
    let tick = tokio::time::sleep(IDLE_TICK);
    tokio::pin!(tick);
    // One stream for the whole poll: `consumer.recv()` registers and drops a waker slot (a
    // mutex each way) for every record.
    let mut stream = consumer.stream();
    let first = loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = &mut tick => return Some(Vec::new()),
            m = stream.next() => match m {
                Some(Ok(m)) => break m,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "kafka consumer error");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                None => return None, // librdkafka's stream does not end; shut down if it does
            }
        }
    };
    // Held until the poll ends, so their payloads are copied into one chunk of the exact size.
    let mut messages = Vec::with_capacity(max.min(4096));
    messages.push(first);
    // Take what is ready, up to `max`: stop at `linger`, or sooner when nothing more arrives
    // within BATCH_IDLE (records come in fetch-sized bursts; waiting out the whole linger at a
    // low rate would only add latency).
    let deadline = tokio::time::Instant::now() + linger;
    while messages.len() < max {
        // A record already fetched is taken as it is: reading the clock and arming a timeout
        // for each one only pays when the queue is empty.
        let next = match stream.next().now_or_never() {
            Some(next) => next,
            None => {
                let idle = tokio::time::Instant::now() + batch_idle(downstream_idle);
                match tokio::time::timeout_at(deadline.min(idle), stream.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                }
            }
        };
        match next {
            Some(Ok(m)) => messages.push(m),
            Some(Err(e)) => tracing::warn!(error = %e, "kafka consumer error"),
            None => break,
        }
    }
    Some(detach_all(&messages, topics))
}

/// The partitions assigned now, each with the table its topic feeds, if a rebalance changed them.
/// Read only after a rebalance (the context's flag), not on every poll.
pub fn changed_assignment(consumer: &KafkaConsumer, topics: &TopicsConfig) -> Option<Vec<(Arc<str>, i32, Stream)>> {
    let flag = &consumer.context().rebalanced;
    if !flag.swap(false, std::sync::atomic::Ordering::AcqRel) {
        return None;
    }
    let Ok(tpl) = consumer.assignment() else {
        flag.store(true, std::sync::atomic::Ordering::Release); // try again next poll
        return None;
    };
    Some(
        tpl.elements()
            .iter()
            .map(|e| (Arc::from(e.topic()), e.partition(), stream_of(topics, e.topic())))
            .collect(),
    )
}

/// Which decoder a topic's records need.
fn stream_of(topics: &TopicsConfig, topic: &str) -> Stream {
    if topics.metrics.iter().any(|t| t == topic) {
        Stream::Metrics
    } else {
        Stream::Audit
    }
}

/// Abandons carried records of partitions no longer assigned (a rebalance happened while the
/// assignment was paused): nothing of them was processed or stored, so their new owner reads
/// them from the committed offset, and processing them here would only make duplicates.
fn drop_revoked(consumer: &KafkaConsumer, carried: &mut Vec<Record>) {
    let assignment = match consumer.assignment() {
        Ok(tpl) => tpl,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the assignment; keeping carried records");
            return;
        }
    };
    let assigned: std::collections::HashSet<(String, i32)> = assignment
        .elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect();
    let before = carried.len();
    carried.retain(|r| assigned.contains(&(r.topic.to_string(), r.partition)));
    if carried.len() < before {
        tracing::info!(
            records = before - carried.len(),
            "carried records of revoked partitions abandoned; their new owner reads them"
        );
    }
}

/// A topic's name, shared: one allocation per topic and thread instead of one per record.
fn topic_name(topic: &str) -> Arc<str> {
    thread_local! {
        static NAMES: std::cell::RefCell<Interner> = std::cell::RefCell::new(Interner::default());
    }
    NAMES.with_borrow_mut(|names| names.text(topic))
}

/// Detaches a poll's messages. Each stream's payloads are copied into one chunk of their exact
/// total size (a `malloc` per poll, not per record; see [`Raw`]); audit and metrics apart, so the
/// window, which keeps audit chunks, keeps no metrics bytes.
fn detach_all(messages: &[BorrowedMessage<'_>], topics: &TopicsConfig) -> Vec<Record> {
    let mut records: Vec<Record> = messages
        .iter()
        .map(|m| detach(m, stream_of(topics, m.topic())))
        .collect();
    for stream in [Stream::Audit, Stream::Metrics] {
        let payloads: Vec<(usize, &[u8])> = messages
            .iter()
            .enumerate()
            .filter(|(i, _)| records[*i].stream == stream)
            .filter_map(|(i, m)| Some((i, m.payload()?)))
            .collect();
        let bytes = payloads.iter().map(|(_, p)| p.len()).sum();
        let mut chunker = RawChunker::with_capacity(bytes, payloads.len());
        for (_, payload) in &payloads {
            chunker.push(payload);
        }
        for ((i, _), raw) in payloads.iter().zip(chunker.finish()) {
            records[*i].payload = Some(raw);
        }
    }
    records
}

/// A message without its payload, which [`detach_all`] adds.
fn detach(m: &BorrowedMessage<'_>, stream: Stream) -> Record {
    let topic = m.topic();
    // Only metrics records are read by their headers (content type, metric name, cluster);
    // parsing an audit record's headers was 1.5% of a drain's CPU for nothing.
    let headers = match stream {
        Stream::Metrics => m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec).unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default(),
        Stream::Audit => Vec::new(),
    };
    Record {
        stream,
        topic: topic_name(topic),
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        key: m.key().map(<[u8]>::to_vec),
        payload: None,
        headers,
    }
}

/// Commits stored offsets synchronously (shutdown).
pub fn commit_now(consumer: &KafkaConsumer) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => tracing::info!("final offsets committed"),
        // Nothing stored since the last auto-commit is not an error worth alarming about.
        Err(e) => tracing::debug!(error = %e, "final commit"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};

    /// A mock cluster with the audit and metrics topics, and a producer to it.
    fn cluster_with_producer() -> (MockCluster<'static, DefaultProducerContext>, FutureProducer) {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("confluent-audit-log-events", 1, 1).unwrap();
        cluster.create_topic("confluent-metrics", 1, 1).unwrap();
        let producer = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .create()
            .unwrap();
        (cluster, producer)
    }

    /// The service's configuration for `cluster` and its consumer, in group `group`.
    fn consumer_of(cluster: &MockCluster<'_, DefaultProducerContext>, group: &str) -> (Config, KafkaConsumer) {
        let text = format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{group}\"\n[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n",
            cluster.bootstrap_servers()
        );
        let config = Config::parse(&text, "t.toml").unwrap();
        let consumer = consumer(&config, Telemetry::new()).unwrap();
        (config, consumer)
    }

    /// A poll's audit payloads share one chunk, its metrics payloads another, and every record
    /// reads back its own bytes, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_polls_payloads_share_one_chunk_per_stream() {
        let (cluster, producer) = cluster_with_producer();
        let sent = [
            ("confluent-audit-log-events", "audit-0"),
            ("confluent-metrics", "metric-0"),
            ("confluent-audit-log-events", "audit-1 longer"),
            ("confluent-metrics", "metric-1"),
            ("confluent-audit-log-events", "audit-2"),
        ];
        for (topic, payload) in sent {
            let record = FutureRecord::<(), str>::to(topic).payload(payload);
            producer.send(record, Duration::from_secs(5)).await.unwrap();
        }
        let (config, consumer) = consumer_of(&cluster, "chunk-test");
        let (shutdown, idle) = (CancellationToken::new(), std::sync::atomic::AtomicBool::new(false));
        let mut read = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while read.len() < sent.len() && std::time::Instant::now() < deadline {
            let mut carried = Vec::new();
            let poll = poll_batch(
                &consumer,
                &config.topics,
                100,
                Duration::from_millis(500),
                &shutdown,
                &mut carried,
                &idle,
            )
            .await
            .unwrap();
            let chunk_of = |r: &Record| r.payload.as_ref().unwrap().chunk().0.as_ptr();
            for stream in [Stream::Audit, Stream::Metrics] {
                let chunks: std::collections::BTreeSet<_> =
                    poll.iter().filter(|r| r.stream == stream).map(chunk_of).collect();
                assert!(
                    chunks.len() <= 1,
                    "{stream:?} records of one poll in {} chunks",
                    chunks.len()
                );
            }
            let audit = poll.iter().find(|r| r.stream == Stream::Audit).map(chunk_of);
            let metrics = poll.iter().find(|r| r.stream == Stream::Metrics).map(chunk_of);
            assert!(
                audit.is_none() || audit != metrics,
                "audit and metrics bytes kept apart"
            );
            read.extend(poll);
        }
        let mut by_stream: Vec<(Stream, String)> = read
            .iter()
            .map(|r| {
                (
                    r.stream,
                    String::from_utf8(r.payload.as_deref().unwrap().to_vec()).unwrap(),
                )
            })
            .collect();
        by_stream.sort_by_key(|(stream, _)| *stream == Stream::Metrics);
        let expected: Vec<(Stream, String)> = [
            (Stream::Audit, "audit-0"),
            (Stream::Audit, "audit-1 longer"),
            (Stream::Audit, "audit-2"),
            (Stream::Metrics, "metric-0"),
            (Stream::Metrics, "metric-1"),
        ]
        .into_iter()
        .map(|(s, p)| (s, p.to_owned()))
        .collect();
        assert_eq!(by_stream, expected);
    }

    /// The consumer closes within its bound even when the cluster went away first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_the_consumer_is_bounded_with_the_cluster_gone() {
        let (cluster, producer) = cluster_with_producer();
        producer
            .send(
                FutureRecord::<(), [u8]>::to("confluent-audit-log-events").payload(b"x"),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        let (_, consumer) = consumer_of(&cluster, "close-test");
        // In the group, with a partition assigned and a record read.
        tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a record within 30 s")
            .unwrap();
        drop(producer);
        drop(cluster);
        let started = std::time::Instant::now();
        tokio::task::spawn_blocking(move || drop(consumer)).await.unwrap();
        assert!(
            started.elapsed() < CLOSE_TIMEOUT + Duration::from_secs(5),
            "closing took {:?}",
            started.elapsed()
        );
    }
}
