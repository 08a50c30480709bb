//! The event relay's metrics, registered beside the sidecar's others on `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub struct EventMetrics {
    /// Events the app published that were accepted (acked or spooled).
    pub published: Counter,
    /// Events acked by JetStream, directly or from the spool.
    pub acked: Counter,
    pub spooled: Counter,
    /// Spooled events acked by JetStream when NATS came back.
    pub flushed: Counter,
    /// Publishes refused because the spool was full.
    pub spool_full: Counter,
    /// Events the app accepted (2xx).
    pub delivered: Counter,
    /// Failed deliveries handed back to JetStream for another attempt.
    pub redelivered: Counter,
    pub dead_lettered: Counter,
    /// Events given up after their dead letter could not be published either (they stay
    /// in the stream until its max age; the log names each id and stream sequence).
    pub dead_letter_failed: Counter,
    /// Spooled events JetStream can never take, moved to the spool's dead-letter file.
    pub unpublishable: Counter,
    /// Deliveries skipped because the same id was delivered within the window.
    pub duplicates: Counter,
    /// From the app's call to the event being durable.
    pub publish_duration: Histogram,
    /// The app's handling of one delivery.
    pub delivery_duration: Histogram,
    /// Bytes waiting in the spool.
    pub spool_bytes: Gauge,
    /// Events waiting in the spool (what a shutdown that cannot flush leaves on disk).
    pub spool_events: Gauge,
}

impl Default for EventMetrics {
    fn default() -> Self {
        // 50 µs .. ~1.6 s: a loopback JetStream ack is well under a millisecond.
        let publish = || Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        EventMetrics {
            published: Counter::default(),
            acked: Counter::default(),
            spooled: Counter::default(),
            flushed: Counter::default(),
            spool_full: Counter::default(),
            delivered: Counter::default(),
            redelivered: Counter::default(),
            dead_lettered: Counter::default(),
            dead_letter_failed: Counter::default(),
            unpublishable: Counter::default(),
            duplicates: Counter::default(),
            publish_duration: publish(),
            // 0.5 ms .. ~8 s: apps take milliseconds; timeouts are seconds.
            delivery_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 15)),
            spool_bytes: Gauge::default(),
            spool_events: Gauge::default(),
        }
    }
}

impl EventMetrics {
    /// Registers every metric under `events_*` in the sidecar's registry.
    pub fn register(&self, registry: &mut Registry) {
        let counters = [
            (
                "events_published",
                "Events accepted from the app",
                &self.published,
            ),
            ("events_acked", "Events acked by JetStream", &self.acked),
            (
                "events_spooled",
                "Events written to the on-disk spool",
                &self.spooled,
            ),
            (
                "events_flushed",
                "Spooled events acked by JetStream",
                &self.flushed,
            ),
            (
                "events_spool_full",
                "Publishes refused because the spool was full",
                &self.spool_full,
            ),
            (
                "events_delivered",
                "Events the app accepted",
                &self.delivered,
            ),
            (
                "events_redelivered",
                "Failed deliveries scheduled again",
                &self.redelivered,
            ),
            (
                "events_dead_lettered",
                "Events sent to the dead-letter subject",
                &self.dead_lettered,
            ),
            (
                "events_dead_letter_failed",
                "Events given up because their dead letter could not be published",
                &self.dead_letter_failed,
            ),
            (
                "events_unpublishable",
                "Spooled events NATS can never take (e.g. over its max_payload), moved to the spool's dead-letter file",
                &self.unpublishable,
            ),
            (
                "events_duplicates",
                "Deliveries skipped as duplicates by id",
                &self.duplicates,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "event_publish_duration_seconds",
            "From the app's publish to the event being durable",
            self.publish_duration.clone(),
        );
        registry.register(
            "event_delivery_duration_seconds",
            "The app's handling of one delivered event",
            self.delivery_duration.clone(),
        );
        registry.register(
            "event_spool_bytes",
            "Bytes of events waiting in the spool",
            self.spool_bytes.clone(),
        );
        registry.register(
            "event_spool_events",
            "Events waiting in the spool",
            self.spool_events.clone(),
        );
    }
}
