#!/usr/bin/env python3
"""A stand-in for Alloy's OTLP/gRPC receiver (:4317): accepts the trace and
metrics Export calls without decoding them, and appends each request body to
OUT_DIR/traces.bin or OUT_DIR/metrics.bin as an 8-byte big-endian length
followed by the protobuf bytes (an ExportTraceServiceRequest /
ExportMetricsServiceRequest) for the test to decode. Answers with an empty
response message (a valid Export*ServiceResponse)."""
import os
import struct
import sys
import threading
from concurrent import futures

import grpc

OUT_DIR = os.environ.get("OUT_DIR", "/out")
LOCK = threading.Lock()


def recorder(name):
    path = os.path.join(OUT_DIR, name)

    def export(body, context):
        with LOCK, open(path, "ab") as f:
            f.write(struct.pack(">Q", len(body)))
            f.write(body)
        return b""

    return grpc.unary_unary_rpc_method_handler(export)


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    for service, name in [
        ("opentelemetry.proto.collector.trace.v1.TraceService", "traces.bin"),
        ("opentelemetry.proto.collector.metrics.v1.MetricsService", "metrics.bin"),
    ]:
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {"Export": recorder(name)})])
    server.add_insecure_port("0.0.0.0:4317")
    server.start()
    print("otlp-receiver: listening on :4317, writing to " + OUT_DIR, file=sys.stderr, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
