"""The telemetry fast path: what Rillet does beside the OpenTelemetry SDK, because the SDK's way costs too much.

Three parts, each measured against the SDK's own way with `bench/telemetry_cpu.py` (the server's CPU per request
with traces and metrics all on went from ≈178-183 µs to ≈29-35 µs with all three; README "Observability"):

- histograms.py, the histogram store. A Distribution's measurement is a dict look-up and a bisection under a
  lock; an SDK Histogram's copies and hashes its attributes once per reader (≈6 µs with one reader, ≈9 with the
  OTLP and Prometheus readers both on). `WithHistograms`, mixed into each SDK reader class, joins the store to
  every collection of that reader.
- spans.py, the request-span recorder. A request span is sampled and given its ids by the TracerProvider's own
  sampler and id generator, then recorded as plain values (SpanData) and handed to a sink when it ends: ≈8 µs a
  request, where the SDK's Span, which cleans and bounds every attribute, event and link as it is set, took ≈40.
- offload.py, the exporter child. Spans (RPC spans too) are pickled to a child process (≈1 µs a span), which
  rebuilds the SDK's ReadableSpans and exports them with the SDK's BatchSpanProcessor and OTLPSpanExporter; the
  OTLP encoding (≈50 µs a span) never holds the server's GIL.

What of the SDK they skip, and what stands in for it:

- Views: none apply to the histograms (Rillet's MeterProvider is built without views, and a View would not see
  them). Their buckets are the conventions' advised ones (semconv.py), as the SDK would take them from the advisory.
- A reader's preferred aggregation: honoured only when it is the default or explicit buckets; any other (e.g.
  OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION=base2_exponential_bucket_histogram) is refused when the
  reader is joined, at start-up. Explicit boundaries set on a reader's aggregation are not read (Rillet's have none).
- A reader's preferred temporality: honoured (DELTA: what was recorded since that reader's previous collection).
- Exemplars: none (the MeterProvider's exemplar filter is AlwaysOff too: its own instruments are all observable).
- Cardinality limits (2,000 attribute sets a stream, then `otel.metric.overflow`): not applied; the attribute values
  are bounded by construction (served models and engines, registered methods, status codes and reasons; never a
  client's string).
- Attribute cleaning and copying, per measurement or per span: attributes are Rillet's own values, built once.
- Span limits (OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT, OTEL_*ATTRIBUTE_VALUE_LENGTH_LIMIT, event and link limits): not
  applied to request spans (at most 22 attributes of Rillet's, 4 events, 2 links; a client's text only in the request
  id and stop strings, bounded by validation, a clipped unknown model name, and the opt-in content capture). RPC
  spans are SDK spans: the limits apply to them.
- Span processors' `on_start`: never called for request spans; `on_end` is, in the child (its BatchSpanProcessor).
  The server's only span processor is OffloadedExport, whose `on_start` does nothing.
- A recording, unsampled span (the sampler's RECORD_ONLY): a request span is recorded only when sampled, as only
  sampled spans are exported. Request spans are never made current (nothing is their child; a chained synthesis
  links to its source's ids).

Each collection of the histograms carries the same data the SDK's Histogram would: buckets, count, sum, min and max
by attribute set, in the reader's temporality, in the ResourceMetrics of the MeterProvider's Resource (the SDK's
collection holds one); start times follow the SDK's rules (cumulative: the attribute set's first measurement;
delta: the reader's previous collection). Sums can differ in the last bits when readers collect at different times
(the same measurements, added in another order). tests/unit/test_telemetry_fastpath.py holds all of this to the SDK.

The SDK's private parts used, pinned with opentelemetry-sdk==1.45.2 (pyproject.toml) and held by that test:
`MetricReader._receive_metrics` (overridden by WithHistograms; the SDK's docstring calls it "intended to be
overridden by subclass"), and the reader's `_instrument_class_temporality` and `_instrument_class_aggregation` tables
(read at join, as the SDK's own measurement consumer reads them). The SDK calls `_receive_metrics` only when its own
instruments have a point: the engines' slot gauges (Instruments.observe_slots, set up by Telemetry.watch before
serving) report every engine at every collection.

When the override can go: when an opentelemetry-sdk release ships MetricProducer (the specification's way to add
metrics from outside the SDK to a reader's collections): then Histograms becomes a producer given to each reader, and
WithHistograms, with its private reads, goes. Verified from source: neither opentelemetry-sdk 1.45.2 nor
opentelemetry-python's main at 0a5d76b (2026-08-21, 1.45.0.dev) has one (there, opentelemetry-configuration warns
that MetricProducer configuration is not yet supported for pull readers). It is tracked in
open-telemetry/opentelemetry-python#4768 (open) and proposed in #5419 (open; it merges the producers' metrics into
the collection in the SDK's SynchronousMeasurementConsumer.collect, with the MeterProvider's Resource); an earlier
attempt, #4770, was closed.
"""
