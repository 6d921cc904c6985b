"""Sends a gauge, a sum and a histogram through the OpenTelemetry Python SDK's OTLP exporter.

Driven by ingest/tests/clients.rs against a running System 1:

    otel_send.py grpc|http ENDPOINT HOST_NAME

Exits non-zero (naming the result) unless the exporter reports success. The compression
follows OTEL_EXPORTER_OTLP_COMPRESSION, read by both exporters.
"""

import sys

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExportResult, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource


def exporter_class(protocol):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    elif protocol == "http":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    else:
        raise SystemExit(f"unknown protocol {protocol!r}: grpc or http")
    return OTLPMetricExporter


def main():
    protocol, endpoint, host = sys.argv[1:4]
    base = exporter_class(protocol)
    results = []

    class Recording(base):
        """The exporter, remembering what each export returned."""

        def export(self, metrics_data, timeout_millis=10_000, **kwargs):
            result = super().export(metrics_data, timeout_millis=timeout_millis, **kwargs)
            results.append(result)
            return result

    kwargs = {"endpoint": endpoint, "timeout": 5}
    if protocol == "grpc":
        kwargs["insecure"] = True
    reader = PeriodicExportingMetricReader(Recording(**kwargs), export_interval_millis=60_000)
    resource = Resource.create({"host.name": host, "service.name": "otel-client-test"})
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = provider.get_meter("ingest-tests")

    meter.create_gauge("cpu").set(42.5, {"core": "0"})
    requests = meter.create_counter("requests")
    requests.add(3)
    requests.add(4)
    latency = meter.create_histogram("latency", unit="ms")
    for v in (5, 15, 25):
        latency.record(v)

    provider.force_flush()
    provider.shutdown()
    if not results or any(r != MetricExportResult.SUCCESS for r in results):
        raise SystemExit(f"export results: {results}")
    print(f"exported {len(results)} time(s) over {protocol}")


if __name__ == "__main__":
    main()
