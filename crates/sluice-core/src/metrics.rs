//! Prometheus metrics, registered in one place.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Every metric Sluice exports. One instance per process, shared by all roles.
pub struct Metrics {
    pub registry: Registry,
    names: Vec<String>,
    pub connections: IntGauge,
    pub frames_in: IntCounterVec,
    pub frames_out: IntCounter,
    pub errors: IntCounterVec,
    pub slow_consumers: IntCounter,
    pub persist_seconds: Histogram,
    pub persisted: IntCounterVec,
    pub duplicates: IntCounter,
    pub queue_visible: IntGauge,
    pub queue_in_flight: IntGauge,
    pub queue_oldest_age_seconds: prometheus::Gauge,
    pub dead_lettered: IntCounter,
    pub dead_letter_depth: IntGauge,
    pub enqueued: IntCounter,
    pub drained: IntCounter,
    /// Queue messages that took their place in the drain budget (the governor's, and the
    /// fleet's): those the worker went on to persist, not those it held or dead-lettered.
    pub drain_admitted: IntCounter,
    pub conflicts: IntCounter,
    pub retries: IntCounter,
    /// Reads of a large room's members from a lagging index (fewer than the room's count).
    pub members_index_lagging: IntCounter,
    pub fanout_failures: IntCounter,
    pub events_dropped: IntCounter,
    /// AWS API calls, by service and operation (the request count behind the bill).
    pub aws_requests: IntCounterVec,
    /// DynamoDB capacity units consumed (from ConsumedCapacity), by kind (read, write).
    pub dynamodb_capacity: prometheus::CounterVec,
    /// DynamoDB items written, by kind (transactional: 2 WCU per KB on AWS; standard: 1).
    /// DynamoDB Local reports ConsumedCapacity per table rather than per item, so this is
    /// what the AWS price follows.
    pub dynamodb_items_written: IntCounterVec,
    /// DynamoDB write request units by AWS's rule, from the items written: 1 per started KB
    /// of an item put (updates and condition checks count as 1 KB), twice in a transaction.
    pub dynamodb_write_units: IntCounter,
    /// AWS calls answered with throttling or a transaction conflict, by service and reason.
    pub aws_retryable: IntCounterVec,
    /// Analytics records written to the event stream.
    pub events_written: IntCounter,
    /// Interactive persist latencies of the last second: the signal the drain governor of a
    /// worker in this process reads.
    pub interactive_persist: crate::governor::LatencyWindow,
    /// How late short timers fire on this process's runtime, over the last second (sampled
    /// where chat and the drain share the process): the governor's CPU signal.
    pub runtime_lag: crate::governor::LatencyWindow,
    pub runtime_lag_p99_seconds: prometheus::Gauge,
    /// The drain governor's admitted rate (messages/s) in this process's worker.
    pub drain_limit: prometheus::Gauge,
    /// The accept gate's rate (messages/s) for EnqueueBulk in this process while chat flows;
    /// 0 while it is open (no chat).
    pub accept_limit: prometheus::Gauge,
    /// Times the accept gate cut its rate.
    pub accept_cuts: IntCounter,
    /// The interactive persist p99 the governor saw at its last tick, in seconds.
    pub interactive_persist_p99_seconds: prometheus::Gauge,
    /// Times the governor cut the drain rate.
    pub drain_cuts: IntCounter,
    /// Bulk-lane store calls that failed retryably (throttling, conflicts), as the governor counts them.
    pub bulk_store_failures: IntCounter,
    /// Waits the store made before trying a call again after throttling or a transient failure
    /// (the store absorbs them; the drain governor counts them as the store's distress).
    pub store_backoffs: IntCounter,
    /// Queue messages acked after commit, by tenant (tenants are companies: a bounded set).
    pub tenant_drained: IntCounterVec,
    /// Messages in the queue by tenant, where the queue counts them (the embedded queue).
    pub tenant_backlog: prometheus::IntGaugeVec,
    /// Queue messages moved to the held area by an operator's pause.
    pub held: IntCounter,
    /// Queue messages moved to the held area because their tenant or campaign was over the
    /// operator's rate for it, and released back to the queue at that rate.
    pub rate_held: IntCounter,
    pub rate_released: IntCounter,
    /// Campaign bodies a worker read from the store (queued one-offs refer to their
    /// campaign's body; each worker reads it once while it stays cached).
    pub campaign_body_reads: IntCounter,
    /// Spike queue: messages in the held area.
    pub queue_held: IntGauge,
    /// 1 while an operator has paused the whole drain.
    pub drain_paused: IntGauge,
    /// Bytes of queued messages EnqueueBulk calls hold in memory right now, and the most
    /// ever held (bounded by the chunking, whatever recipients x body a call brings).
    pub enqueue_bytes_held: IntGauge,
    pub enqueue_bytes_peak: IntGauge,
    /// EnqueueBulk calls refused in whole or part by a tenant's queue quota.
    pub quota_refusals: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("sluice".into()), None).expect("valid prefix");
        let mut names = Vec::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("valid metric");
                names.extend(prometheus::core::Collector::desc(&m).iter().map(|d| format!("sluice_{}", d.fq_name)));
                registry.register(Box::new(m.clone())).expect("unique metric");
                m
            }};
        }
        Metrics {
            connections: reg!(IntGauge::new("connections", "Open WebSocket connections")),
            frames_in: reg!(IntCounterVec::new(Opts::new("frames_in_total", "Client frames received, by type"), &["type"])),
            frames_out: reg!(IntCounter::new("frames_out_total", "Frames sent to clients")),
            errors: reg!(IntCounterVec::new(Opts::new("errors_total", "Errors answered to clients, by code"), &["code"])),
            slow_consumers: reg!(IntCounter::new("slow_consumer_closes_total", "Connections closed because their outbound buffer filled")),
            persist_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new("persist_seconds", "Store persist latency per call")
                    .buckets(vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
            )),
            persisted: reg!(IntCounterVec::new(Opts::new("persisted_total", "Messages persisted, by lane"), &["lane"])),
            duplicates: reg!(IntCounter::new("duplicates_total", "Persists of an already persisted msg_id")),
            queue_visible: reg!(IntGauge::new("queue_visible", "Spike queue: messages waiting")),
            queue_in_flight: reg!(IntGauge::new("queue_in_flight", "Spike queue: messages being processed")),
            queue_oldest_age_seconds: reg!(prometheus::Gauge::new("queue_oldest_age_seconds", "Spike queue: age of the oldest message")),
            dead_lettered: reg!(IntCounter::new("dead_lettered_total", "Messages moved to the dead-letter queue")),
            dead_letter_depth: reg!(IntGauge::new("dead_letter_depth", "Messages in the dead-letter queue")),
            enqueued: reg!(IntCounter::new("enqueued_total", "Messages accepted into the spike queue")),
            drained: reg!(IntCounter::new("drained_total", "Queue messages acked after commit (drain rate = rate of this)")),
            drain_admitted: reg!(IntCounter::new("drain_admitted_total", "Queue messages admitted by the drain budget to be persisted")),
            conflicts: reg!(IntCounter::new("conflicts_total", "Optimistic-lock conflicts")),
            retries: reg!(IntCounter::new("retries_total", "Retried store or queue calls")),
            members_index_lagging: reg!(IntCounter::new(
                "members_index_lagging_total",
                "Reads of a large room's members that found fewer than the room counts (a lagging index)"
            )),
            fanout_failures: reg!(IntCounter::new("fanout_failures_total", "Live pushes the hub failed to deliver")),
            events_dropped: reg!(IntCounter::new(
                "analytics_events_dropped_total",
                "Analytics events dropped because the sink buffer was full"
            )),
            aws_requests: reg!(IntCounterVec::new(
                Opts::new("aws_requests_total", "AWS API calls, by service and operation"),
                &["service", "op"]
            )),
            dynamodb_capacity: reg!(prometheus::CounterVec::new(
                Opts::new("dynamodb_capacity_units_total", "DynamoDB capacity units consumed, by kind (read, write)"),
                &["kind"]
            )),
            dynamodb_items_written: reg!(IntCounterVec::new(
                Opts::new("dynamodb_items_written_total", "DynamoDB items written, by kind (transactional, standard)"),
                &["kind"]
            )),
            dynamodb_write_units: reg!(IntCounter::new(
                "dynamodb_write_units_total",
                "DynamoDB write request units by AWS's rule from the sizes of the items written (twice in a transaction)"
            )),
            aws_retryable: reg!(IntCounterVec::new(
                Opts::new("aws_retryable_errors_total", "AWS calls answered with throttling or a transaction conflict"),
                &["service", "reason"]
            )),
            interactive_persist: crate::governor::LatencyWindow::new(std::time::Duration::from_secs(1), 4096),
            runtime_lag: crate::governor::LatencyWindow::new(std::time::Duration::from_secs(1), 4096),
            runtime_lag_p99_seconds: reg!(prometheus::Gauge::new(
                "runtime_lag_p99_seconds",
                "How late short timers fire on the runtime, p99 over the last second (where chat and the drain share a process)"
            )),
            drain_limit: reg!(prometheus::Gauge::new("drain_limit", "Bulk messages per second the drain governor admits")),
            accept_limit: reg!(prometheus::Gauge::new(
                "accept_limit",
                "One-offs per second EnqueueBulk queues while chat flows in this process (0: open, no chat)"
            )),
            accept_cuts: reg!(IntCounter::new("accept_cuts_total", "Times the accept gate cut EnqueueBulk's rate")),
            interactive_persist_p99_seconds: reg!(prometheus::Gauge::new(
                "interactive_persist_p99_seconds",
                "Interactive persist latency p99 over the last second, as the drain governor sees it"
            )),
            drain_cuts: reg!(IntCounter::new("drain_cuts_total", "Times the drain governor cut the admitted rate")),
            bulk_store_failures: reg!(IntCounter::new(
                "bulk_store_failures_total",
                "Bulk-lane store calls that failed retryably (throttling, conflicts)"
            )),
            store_backoffs: reg!(IntCounter::new(
                "store_backoffs_total",
                "Waits the store made before retrying a call after throttling or a transient failure"
            )),
            tenant_drained: reg!(IntCounterVec::new(
                Opts::new("tenant_drained_total", "Queue messages acked after commit, by tenant"),
                &["tenant"]
            )),
            tenant_backlog: reg!(prometheus::IntGaugeVec::new(
                Opts::new("tenant_backlog", "Messages in the queue by tenant (embedded queue)"),
                &["tenant"]
            )),
            held: reg!(IntCounter::new("held_total", "Queue messages moved aside by an operator's pause of their tenant or campaign")),
            rate_held: reg!(IntCounter::new("rate_held_total", "Queue messages held while their tenant or campaign was over its rate")),
            rate_released: reg!(IntCounter::new(
                "rate_released_total",
                "Rate-held queue messages released back to the queue at their tenant's or campaign's rate"
            )),
            campaign_body_reads: reg!(IntCounter::new(
                "campaign_body_reads_total",
                "Campaign bodies read from the store by workers (queued one-offs refer to them)"
            )),
            queue_held: reg!(IntGauge::new(
                "queue_held",
                "Spike queue: messages held by an operator's pause or a tenant's or campaign's rate"
            )),
            enqueue_bytes_held: reg!(IntGauge::new("enqueue_bytes_held", "Bytes of queued messages EnqueueBulk calls hold in memory")),
            enqueue_bytes_peak: reg!(IntGauge::new(
                "enqueue_bytes_peak",
                "The most bytes of queued messages EnqueueBulk calls held at once"
            )),
            quota_refusals: reg!(IntCounter::new("quota_refusals_total", "EnqueueBulk calls refused in whole or part by a tenant quota")),
            drain_paused: reg!(IntGauge::new("drain_paused", "1 while an operator has paused the whole drain")),
            events_written: reg!(IntCounter::new("analytics_events_written_total", "Analytics events written to the sink")),
            registry,
            names,
        }
    }

    /// The name of every metric this process can export (a labelled family appears in
    /// `/metrics` only once it has a sample): what dashboards and alerts may refer to.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new().encode_to_string(&self.registry.gather()).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_what_the_exposition_shows() {
        let m = Metrics::new();
        m.persisted.with_label_values(&["queue"]).inc();
        m.persist_seconds.observe(0.001);
        let text = m.render();
        for name in ["sluice_connections", "sluice_persisted_total", "sluice_persist_seconds"] {
            assert!(m.names().iter().any(|n| n == name), "{name} in {:?}", m.names());
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} in the exposition");
        }
        // A labelled family without samples is not shown, but is a name all the same.
        assert!(!text.contains("sluice_tenant_backlog") && m.names().iter().any(|n| n == "sluice_tenant_backlog"));
    }
}
