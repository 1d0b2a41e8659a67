"""An OTLP/gRPC trace receiver for the tests: the `GrpcSink` of the `oteltest` package
(PyPI), which serves the official OpenTelemetry collector protos with grpcio.

Usage: otlp_sink.py PORT [--count]
Prints `listening PORT` once serving, then one JSON object per exported span on
stdout: the span (OTLP JSON mapping, ids in hex) plus `service` from its resource.
With --count (for benchmarks) it only counts spans and prints `spans N` at the end.
Ends when stdin closes or on SIGTERM.
"""

import base64
import json
import logging
import signal
import sys
import threading

from google.protobuf.json_format import MessageToDict
from oteltest.sink import GrpcSink
from oteltest.sink.handler import RequestHandler

_lock = threading.Lock()


def _hex(b64):
    return base64.b64decode(b64).hex() if b64 else ""


class Count(RequestHandler):
    def __init__(self):
        self.spans = 0

    def handle_logs(self, request, headers):
        pass

    def handle_metrics(self, request, headers):
        pass

    def handle_trace(self, request, headers):
        n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        with _lock:
            self.spans += n


class JsonLines(RequestHandler):
    def handle_logs(self, request, headers):
        pass

    def handle_metrics(self, request, headers):
        pass

    def handle_trace(self, request, headers):
        out = []
        for rs in MessageToDict(request).get("resourceSpans", []):
            service = ""
            for attr in rs.get("resource", {}).get("attributes", []):
                if attr["key"] == "service.name":
                    service = attr["value"].get("stringValue", "")
            for ss in rs.get("scopeSpans", []):
                for span in ss.get("spans", []):
                    span["traceId"] = _hex(span.get("traceId"))
                    span["spanId"] = _hex(span.get("spanId"))
                    span["parentSpanId"] = _hex(span.get("parentSpanId"))
                    attrs = {}
                    for attr in span.get("attributes", []):
                        value = attr.get("value", {})
                        attrs[attr["key"]] = next(iter(value.values()), None)
                    span["attributes"] = attrs
                    span["service"] = service
                    out.append(json.dumps(span))
        with _lock:
            for line in out:
                sys.stdout.write(line + "\n")
            sys.stdout.flush()


def main():
    port = int(sys.argv[1])
    handler = Count() if "--count" in sys.argv[2:] else JsonLines()
    sink = GrpcSink(handler, logging.getLogger("otlp-sink"), port=port)
    sink.start()
    print(f"listening {port}", flush=True)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    done.wait()
    sink.stop()
    if isinstance(handler, Count):
        print(f"spans {handler.spans}", flush=True)


if __name__ == "__main__":
    main()
