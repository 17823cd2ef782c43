#!/usr/bin/env python3
"""Writes the Grafana dashboards of this directory (periscope-red.json,
periscope-health.json). Edit this file, not the JSON, then run it;
`--check` exits 1 when the JSON files differ from what it would write
(cargo xtask deploy-check runs that)."""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

DS = {"type": "prometheus", "uid": "${datasource}"}
_id = [0]
def nid():
    _id[0] += 1
    return _id[0]

def target(expr, legend="", ref="A", fmt=None, instant=False):
    t = {"datasource": DS, "expr": expr, "refId": ref, "legendFormat": legend or "__auto"}
    if fmt:
        t["format"] = fmt
    if instant:
        t["instant"] = True
        t["range"] = False
    return t

def ts(title, targets, x, y, w=12, h=8, unit="short", desc="", stack=False):
    return {
        "id": nid(), "type": "timeseries", "title": title, "description": desc, "datasource": DS,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"fillOpacity": 10, "lineWidth": 1,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"}}}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
                    "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": targets,
    }

def row(title, y):
    return {"id": nid(), "type": "row", "title": title, "collapsed": False, "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}

def variable(name, label, query, multi=True, include_all=True):
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": {"query": query, "refId": f"var-{name}"}, "definition": query,
        "refresh": 2, "sort": 1, "multi": multi, "includeAll": include_all,
        "allValue": ".*" if include_all else None,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if include_all else {},
        "options": [], "hide": 0,
    }

def ds_var():
    return {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
            "current": {}, "hide": 0, "refresh": 1, "options": []}

def dashboard(uid, title, desc, panels, variables):
    return {
        "uid": uid, "title": title, "description": desc, "tags": ["periscope", "ebpf"],
        "schemaVersion": 39, "version": 1, "editable": True, "graphTooltip": 1,
        "time": {"from": "now-30m", "to": "now"}, "refresh": "30s", "timezone": "browser",
        "templating": {"list": [ds_var()] + variables},
        "annotations": {"list": []}, "links": [], "panels": panels,
    }

# ---------------------------------------------------------------- RED
SEL = 'service_namespace=~"$namespace", service_name=~"$service"'
H = "http_server_request_duration_seconds"
HC = "http_client_request_duration_seconds"
DB = "db_client_operation_duration_seconds"
MQ = "messaging_client_operation_duration_seconds"
BY_ROUTE = "service_name, http_request_method, http_route"
BY_DB = "service_name, db_system_name, db_operation_name, db_collection_name"

def rate(metric, extra="", by=None):
    sel = SEL + (", " + extra if extra else "")
    inner = f"rate({metric}{{{sel}}}[$__rate_interval])"
    return f"sum by ({by}) ({inner})" if by else f"sum({inner})"

def err_ratio(metric, errsel, by):
    err = rate(metric, errsel, by)
    total = rate(metric, "", by)
    return f"({err} or 0 * {total}) / {total}"

def p(q, metric, by):
    return f"histogram_quantile({q}, {rate(metric + '_bucket', '', 'le, ' + by if by else 'le')})"

route_table = {
    "id": nid(), "type": "table", "title": "HTTP server routes",
    "description": "Per service and route: request rate, share of 5xx responses, 95th percentile duration (periscope's http.server.request.duration).",
    "datasource": DS, "gridPos": {"x": 0, "y": 1, "w": 24, "h": 9},
    "targets": [
        target(rate(H + "_count", "", BY_ROUTE), ref="A", fmt="table", instant=True),
        target(err_ratio(H + "_count", 'http_response_status_code=~"5.."', BY_ROUTE), ref="B", fmt="table", instant=True),
        target(p(0.95, H, BY_ROUTE), ref="C", fmt="table", instant=True),
    ],
    "transformations": [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {"excludeByName": {"Time": True},
            "renameByName": {"service_name": "Service", "http_request_method": "Method", "http_route": "Route",
                             "Value #A": "Requests/s", "Value #B": "Errors", "Value #C": "p95"}}},
    ],
    "fieldConfig": {"defaults": {"custom": {"align": "auto"}}, "overrides": [
        {"matcher": {"id": "byName", "options": "Requests/s"}, "properties": [{"id": "unit", "value": "reqps"}, {"id": "decimals", "value": 2}]},
        {"matcher": {"id": "byName", "options": "Errors"}, "properties": [{"id": "unit", "value": "percentunit"},
            {"id": "custom.cellOptions", "value": {"type": "color-text"}},
            {"id": "thresholds", "value": {"mode": "absolute", "steps": [{"color": "green", "value": None}, {"color": "orange", "value": 0.01}, {"color": "red", "value": 0.05}]}}]},
        {"matcher": {"id": "byName", "options": "p95"}, "properties": [{"id": "unit", "value": "s"}]},
    ]},
    "options": {"showHeader": True, "sortBy": [{"displayName": "Requests/s", "desc": True}]},
}

red_panels = [row("HTTP server", 0), route_table]
y = 10
red_panels += [
    ts("Request rate by service", [target(rate(H + "_count", "", "service_name"), "{{service_name}}")], 0, y, 8, unit="reqps"),
    ts("Error rate (5xx) by service", [target(err_ratio(H + "_count", 'http_response_status_code=~"5.."', "service_name"), "{{service_name}}")], 8, y, 8, unit="percentunit"),
    ts("Duration p50 / p95 / p99", [
        target(p(0.5, H, "service_name"), "p50 {{service_name}}", "A"),
        target(p(0.95, H, "service_name"), "p95 {{service_name}}", "B"),
        target(p(0.99, H, "service_name"), "p99 {{service_name}}", "C"),
    ], 16, y, 8, unit="s"),
]
y += 8
red_panels.append({
    "id": nid(), "type": "heatmap", "title": "HTTP server duration heatmap", "datasource": DS,
    "gridPos": {"x": 0, "y": y, "w": 12, "h": 8},
    "targets": [target(rate(H + "_bucket", "", "le"), "{{le}}", fmt="heatmap")],
    "options": {"calculate": False, "yAxis": {"unit": "s"}, "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
                "cellGap": 1, "tooltip": {"show": True, "yHistogram": True}},
    "fieldConfig": {"defaults": {}, "overrides": []},
})
red_panels.append(ts("Responses by status code", [target(rate(H + "_count", "", "http_response_status_code"), "{{http_response_status_code}}")], 12, y, 12, unit="reqps", stack=True))
y += 8
red_panels += [row("HTTP client", y)]
y += 1
red_panels += [
    ts("Outgoing requests by peer", [target(rate(HC + "_count", "", "service_name, server_address"), "{{service_name}} -> {{server_address}}")], 0, y, 12, unit="reqps"),
    ts("Outgoing p95 by peer", [target(p(0.95, HC, "service_name, server_address"), "{{service_name}} -> {{server_address}}")], 12, y, 12, unit="s"),
]
y += 8
red_panels += [row("SQL", y)]
y += 1
red_panels.append({
    "id": nid(), "type": "table", "title": "SQL operations",
    "description": "Per service, database system, operation and table: rate, share of errors (error.type set: SQLSTATE), p95 (db.client.operation.duration).",
    "datasource": DS, "gridPos": {"x": 0, "y": y, "w": 24, "h": 8},
    "targets": [
        target(rate(DB + "_count", "", BY_DB), ref="A", fmt="table", instant=True),
        target(err_ratio(DB + "_count", 'error_type!=""', BY_DB), ref="B", fmt="table", instant=True),
        target(p(0.95, DB, BY_DB), ref="C", fmt="table", instant=True),
    ],
    "transformations": [
        {"id": "merge", "options": {}},
        {"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": {
            "service_name": "Service", "db_system_name": "System", "db_operation_name": "Operation",
            "db_collection_name": "Table", "Value #A": "Operations/s", "Value #B": "Errors", "Value #C": "p95"}}},
    ],
    "fieldConfig": {"defaults": {}, "overrides": [
        {"matcher": {"id": "byName", "options": "Operations/s"}, "properties": [{"id": "unit", "value": "ops"}, {"id": "decimals", "value": 2}]},
        {"matcher": {"id": "byName", "options": "Errors"}, "properties": [{"id": "unit", "value": "percentunit"}]},
        {"matcher": {"id": "byName", "options": "p95"}, "properties": [{"id": "unit", "value": "s"}]},
    ]},
    "options": {"showHeader": True, "sortBy": [{"displayName": "Operations/s", "desc": True}]},
})
y += 8
red_panels += [
    ts("SQL duration p95 by operation", [target(p(0.95, DB, "service_name, db_operation_name, db_collection_name"), "{{service_name}} {{db_operation_name}} {{db_collection_name}}")], 0, y, 12, unit="s"),
    ts("SQL errors by error type", [target(rate(DB + "_count", 'error_type!=""', "service_name, error_type"), "{{service_name}} {{error_type}}")], 12, y, 12, unit="ops"),
]
y += 8
red_panels += [row("Messaging", y)]
y += 1
red_panels += [
    ts("Messaging operations", [target(rate(MQ + "_count", "", "service_name, messaging_operation_name, messaging_destination_name"), "{{service_name}} {{messaging_operation_name}} {{messaging_destination_name}}")], 0, y, 12, unit="ops"),
    ts("Messaging p95", [target(p(0.95, MQ, "service_name, messaging_operation_name"), "{{service_name}} {{messaging_operation_name}}")], 12, y, 12, unit="s"),
]

red = dashboard("periscope-red", "periscope / RED",
    "Rate, errors and duration of the services periscope watches, from its own histograms (OTel semantic-convention names).",
    red_panels,
    [variable("namespace", "Namespace", f"label_values({H}_count, service_namespace)"),
     variable("service", "Service", f'label_values({H}_count{{service_namespace=~"$namespace"}}, service_name)')])

# ---------------------------------------------------------------- health
_id[0] = 0
I = 'instance=~"$instance"'
def crate(names, legend):
    return [target(f'sum by (instance) (rate({n}{{{I}}}[$__rate_interval]))', f"{legend(n)} {{{{instance}}}}", chr(65 + i)) for i, n in enumerate(names)]
short = lambda n: n.removeprefix("periscope_").removesuffix("_total")
hp = [row("Kernel side", 0)]
hp += [
    ts("Events received", crate(["periscope_events_received_total"], short), 0, 1, 8, unit="cps"),
    ts("Events lost in the kernel", crate(["periscope_events_lost_ringbuf_total", "periscope_events_lost_pending_map_total",
        "periscope_kernel_conn_map_full_total", "periscope_kernel_read_failed_total", "periscope_kernel_iov_truncated_total"], short), 8, 1, 8, unit="cps",
        desc="Non-zero ringbuf losses: raise --ring-buffer-size or lower --capture-size."),
    ts("Processes tracked", [target(f'sum by (instance) (periscope_processes_tracked_total{{{I}}}) - sum by (instance) (periscope_processes_forgotten_total{{{I}}})', "tracked now {{instance}}")], 16, 1, 8),
    row("Pipeline", 9),
    ts("Parsing", crate(["periscope_parse_errors_total", "periscope_protocol_desync_total", "periscope_unknown_protocol_connections_total",
        "periscope_skipped_messages_total", "periscope_requests_unmatched_total", "periscope_events_malformed_total", "periscope_events_untracked_total"], short), 0, 10, 12, unit="cps"),
    ts("Caps reached", crate(["periscope_connections_evicted_total", "periscope_metric_overflow_total", "periscope_route_overflow_total"], short), 12, 10, 12, unit="cps",
        desc="Non-zero: a bound was hit and data was folded or dropped (counted, never silent)."),
    row("Export", 18),
    ts("Spans", crate(["periscope_spans_produced_total", "periscope_spans_exported_total"], short), 0, 19, 8, unit="cps"),
    ts("Spans dropped (export queue full)", crate(["periscope_spans_dropped_total"], short), 8, 19, 8, unit="cps"),
    ts("OTLP export errors", crate(["periscope_export_errors_total", "periscope_export_batches_dropped_total"], short), 16, 19, 8, unit="cps"),
    row("Agent process", 27),
    ts("CPU", [target(f'rate(process_cpu_seconds_total{{{I}}}[$__rate_interval])', "{{instance}}")], 0, 28, 8, unit="percentunit",
       desc="Cores used by the agent (1.0 = one core)."),
    ts("Resident memory", [target(f'process_resident_memory_bytes{{{I}}}', "{{instance}}")], 8, 28, 8, unit="bytes"),
    ts("Open file descriptors", [target(f'process_open_fds{{{I}}}', "{{instance}}")], 16, 28, 8),
    row("Trace context, trace metrics, Kubernetes", 36),
    ts("Trace context", crate(["periscope_spans_linked_total", "periscope_context_missing_total", "periscope_context_expired_total",
        "periscope_context_forced_total", "periscope_link_partner_late_total", "periscope_spans_sampled_out_total"], short), 0, 37, 8, unit="cps"),
    ts("Service graph edges lost", crate(["periscope_service_graph_expired_total", "periscope_service_graph_dropped_total"], short), 8, 37, 8, unit="cps"),
    ts("Kubernetes API", crate(["periscope_kubernetes_api_errors_total", "periscope_kubernetes_objects_dropped_total"], short), 16, 37, 8, unit="cps",
       desc="API errors (watch restarts, refused permissions) and objects dropped at the store's bound."),
]
health = dashboard("periscope-health", "periscope / agent health",
    "The agent's own counters: what the kernel and the pipeline dropped, export failures, CPU and memory.",
    hp, [variable("instance", "Agent", "label_values(periscope_events_received_total, instance)")])

stale = []
for name, d in [("periscope-red.json", red), ("periscope-health.json", health)]:
    path = os.path.join(HERE, name)
    text = json.dumps(d, indent=2) + "\n"
    if "--check" in sys.argv:
        with open(path) as f:
            if f.read() != text:
                stale.append(name)
    else:
        with open(path, "w") as f:
            f.write(text)
if stale:
    sys.exit(f"{', '.join(stale)}: out of date, run deploy/dashboards/generate.py")
