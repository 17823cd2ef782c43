//! HTTP/1 exchanges -> SERVER and CLIENT spans (semantic conventions 1.2x,
//! plus the old names when OTEL_SEMCONV_STABILITY_OPT_IN says `http/dup`).
use crate::model::{Attr, ServiceRef, Signal, Span, SpanKind, SpanStatus};
use crate::semconv;
use std::net::SocketAddr;

use super::{clock::Clock, routes::Route};
use crate::protocols::http1::Exchange;

#[derive(Clone, Copy, Debug, Default)]
pub struct HttpSpanOptions {
    /// Also emit http.method, http.target, http.status_code, http.url, net.peer.name.
    pub old_semconv: bool,
    /// Keep the query string in url.query / url.full / http.target.
    pub include_query: bool,
}

/// Where the exchange happened.
#[derive(Clone, Debug)]
pub struct HttpContext<'a> {
    pub service: &'a ServiceRef,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The tracked process answered (SERVER) rather than asked (CLIENT).
    pub server_side: bool,
}

/// Splits a request target into path and query; absolute-form targets
/// (`http://host/path?q`) lose their scheme and authority.
pub fn split_target(target: &str) -> (&str, Option<&str>) {
    let path = match target.find("://") {
        Some(i) => {
            let rest = &target[i + 3..];
            rest.find('/').map_or("/", |j| &rest[j..])
        }
        None => target,
    };
    match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    }
}

/// Host and port from a Host header, if it has them.
fn host_port(host: &str) -> (&str, Option<u16>) {
    if let Some(rest) = host.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once(']') {
            return (h, p.strip_prefix(':').and_then(|p| p.parse().ok()));
        }
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().ok()),
        _ => (host, None),
    }
}

pub fn build(ex: &Exchange, ctx: &HttpContext<'_>, route: &Route, clock: &Clock, opts: HttpSpanOptions) -> Span {
    let method = ex.request.method.as_str();
    let status = ex.response.status;
    let (path, query) = split_target(&ex.request.target);
    let query = query.filter(|_| opts.include_query);
    let target_shown = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let route_str = match route {
        Route::Some(r) => Some(r.as_str()),
        Route::Overflow => Some(super::routes::OVERFLOW_ROUTE),
        Route::None | Route::Ignored => None,
    };
    let name = match route_str {
        Some(r) => format!("{method} {r}"),
        None => method.to_owned(),
    };
    let host_header = ex.request.headers.host.as_deref().map(host_port);

    let mut attrs = Vec::with_capacity(20);
    attrs.push(Attr::new(semconv::HTTP_REQUEST_METHOD, method));
    attrs.push(Attr::new(semconv::HTTP_RESPONSE_STATUS_CODE, i64::from(status)));
    attrs.push(Attr::new(semconv::NETWORK_PROTOCOL_NAME, "http"));
    let version = match ex.request.version {
        0 => "1.0",
        crate::protocols::http2::VERSION => "2",
        _ => "1.1",
    };
    attrs.push(Attr::new(semconv::NETWORK_PROTOCOL_VERSION, version));
    if let Some(r) = route_str {
        attrs.push(Attr::new(semconv::HTTP_ROUTE, r));
    }
    attrs.push(Attr::new(semconv::HTTP_REQUEST_BODY_SIZE, ex.request_body_bytes as i64));
    attrs.push(Attr::new(semconv::HTTP_RESPONSE_BODY_SIZE, ex.response_body_bytes as i64));
    if let Some(ua) = &ex.request.headers.user_agent {
        attrs.push(Attr::new(semconv::USER_AGENT_ORIGINAL, ua.as_str()));
    }

    let (kind, start, end, server_addr, server_port) = if ctx.server_side {
        attrs.push(Attr::new(semconv::URL_PATH, path));
        attrs.push(Attr::new(semconv::URL_SCHEME, "http"));
        if let Some(q) = query {
            attrs.push(Attr::new(semconv::URL_QUERY, q));
        }
        attrs.push(Attr::new(semconv::CLIENT_ADDRESS, ctx.remote.ip().to_string()));
        attrs.push(Attr::new(semconv::NETWORK_PEER_ADDRESS, ctx.remote.ip().to_string()));
        attrs.push(Attr::new(semconv::NETWORK_PEER_PORT, ctx.remote.port()));
        let addr = host_header.map_or_else(|| ctx.local.ip().to_string(), |(h, _)| h.to_owned());
        // The request starts when its first byte was read (exit of that read:
        // a blocking read may have waited long before anything arrived).
        (SpanKind::Server, ex.request_start_exit, ex.response_end, addr, ctx.local.port())
    } else {
        let addr = host_header.map_or_else(|| ctx.remote.ip().to_string(), |(h, _)| h.to_owned());
        let port = host_header.and_then(|(_, p)| p).unwrap_or(ctx.remote.port());
        let full = format!("http://{}{target_shown}", ex.request.headers.host.as_deref().unwrap_or(&addr));
        attrs.push(Attr::new(semconv::URL_FULL, full.as_str()));
        attrs.push(Attr::new(semconv::NETWORK_PEER_ADDRESS, ctx.remote.ip().to_string()));
        attrs.push(Attr::new(semconv::NETWORK_PEER_PORT, ctx.remote.port()));
        if opts.old_semconv {
            attrs.push(Attr::new(semconv::old::HTTP_URL, full));
        }
        (SpanKind::Client, ex.request_start_enter, ex.response_end, addr, port)
    };
    attrs.push(Attr::new(semconv::SERVER_ADDRESS, server_addr.as_str()));
    attrs.push(Attr::new(semconv::SERVER_PORT, server_port));

    let error = if ctx.server_side { status >= 500 } else { status >= 400 };
    if error {
        attrs.push(Attr::new(semconv::ERROR_TYPE, status.to_string()));
    }
    if opts.old_semconv {
        attrs.push(Attr::new(semconv::old::HTTP_METHOD, method));
        attrs.push(Attr::new(semconv::old::HTTP_STATUS_CODE, i64::from(status)));
        attrs.push(Attr::new(semconv::old::HTTP_TARGET, target_shown.as_str()));
        attrs.push(Attr::new(semconv::old::HTTP_SCHEME, "http"));
        if ctx.server_side {
            // Old conventions: on a server span the server is the host and
            // the peer is the client (whose name is not known, only its address).
            attrs.push(Attr::new(semconv::old::NET_HOST_NAME, server_addr.as_str()));
            attrs.push(Attr::new(semconv::old::NET_HOST_PORT, server_port));
            attrs.push(Attr::new(semconv::old::NET_SOCK_PEER_ADDR, ctx.remote.ip().to_string()));
            attrs.push(Attr::new(semconv::old::NET_SOCK_PEER_PORT, ctx.remote.port()));
        } else {
            attrs.push(Attr::new(semconv::old::NET_PEER_NAME, server_addr.as_str()));
            attrs.push(Attr::new(semconv::old::NET_PEER_PORT, server_port));
        }
    }

    let signal = if ctx.server_side { Signal::HttpServer } else { Signal::HttpClient };
    let status = if error { SpanStatus::Error(format!("HTTP {status}")) } else { SpanStatus::Unset };
    Span::new(ctx.service, kind, signal, name, clock.to_unix(start), clock.to_unix(end.max(start)), attrs, status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttrValue, Service};
    use crate::protocols::http1::head::{Headers, RequestHead, ResponseHead};
    use std::sync::Arc;

    fn exchange(target: &str, status: u16, traceparent: Option<&str>) -> Exchange {
        Exchange {
            request: RequestHead {
                method: "GET".into(),
                target: target.into(),
                version: 1,
                headers: Headers {
                    host: Some("shop:8080".into()),
                    traceparent: traceparent.and_then(crate::model::TraceParent::parse),
                    ..Headers::default()
                },
                truncated: false,
            },
            response: ResponseHead { status, version: 1, headers: Headers::default(), truncated: false },
            request_start_enter: 1_000,
            request_start_exit: 2_000,
            request_end: 2_000,
            response_start_enter: 5_000,
            response_end: 9_000,
            request_body_bytes: 0,
            response_body_bytes: 42,
        }
    }

    fn service() -> ServiceRef {
        Arc::new(Service { name: "shop".into(), namespace: None, instance_id: "i".into(), attributes: vec![] })
    }

    fn ctx(svc: &ServiceRef, server_side: bool) -> HttpContext<'_> {
        HttpContext {
            service: svc,
            local: "10.0.0.1:8080".parse().unwrap(),
            remote: "10.0.0.2:40000".parse().unwrap(),
            server_side,
        }
    }

    #[test]
    fn server_span_from_exchange() {
        let svc = service();
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let ex = exchange("/users/7?token=secret", 503, Some(tp));
        let route = Route::Some("/users/*".into());
        let span = build(&ex, &ctx(&svc, true), &route, &Clock::with_offset(0), HttpSpanOptions::default());
        assert_eq!(span.name, "GET /users/*");
        assert_eq!(span.kind, SpanKind::Server);
        assert_eq!((span.start_unix_nanos, span.end_unix_nanos), (2_000, 9_000));
        assert_eq!(span.signal, Signal::HttpServer);
        assert_eq!(span.parent_span_id, None, "ids and parents are the context layer's");
        assert_eq!(span.attr("url.path"), Some(&AttrValue::Str("/users/7".into())));
        assert_eq!(span.attr("server.address"), Some(&AttrValue::Str("shop".into())));
        assert_eq!(span.attr("client.address"), Some(&AttrValue::Str("10.0.0.2".into())));
        assert_eq!(span.attr("http.response.status_code"), Some(&AttrValue::Int(503)));
        assert!(matches!(span.status, SpanStatus::Error(_)));
        assert!(span.attributes.iter().all(|a| !a.value.to_string().contains("secret")));
        assert!(span.attr("http.target").is_none(), "old names only when opted in");
    }

    #[test]
    fn old_semconv_names_the_host_on_server_spans_and_the_peer_on_client_spans() {
        let svc = service();
        let ex = exchange("/q", 200, None);
        let opts = HttpSpanOptions { old_semconv: true, include_query: false };
        let server = build(&ex, &ctx(&svc, true), &Route::None, &Clock::with_offset(0), opts);
        assert_eq!(server.attr("net.host.name"), Some(&AttrValue::Str("shop".into())));
        assert_eq!(server.attr("net.host.port"), Some(&AttrValue::Int(8080)));
        assert_eq!(server.attr("net.sock.peer.addr"), Some(&AttrValue::Str("10.0.0.2".into())));
        assert_eq!(server.attr("net.peer.name"), None, "the client's name is not known");
        let client = build(&ex, &ctx(&svc, false), &Route::None, &Clock::with_offset(0), opts);
        assert_eq!(client.attr("net.peer.name"), Some(&AttrValue::Str("shop".into())));
        assert_eq!(client.attr("net.peer.port"), Some(&AttrValue::Int(8080)));
        assert_eq!(client.attr("net.host.name"), None);
    }

    #[test]
    fn client_span_and_old_semconv() {
        let svc = service();
        let ex = exchange("/q?x=1", 404, None);
        let opts = HttpSpanOptions { old_semconv: true, include_query: true };
        let span = build(&ex, &ctx(&svc, false), &Route::None, &Clock::with_offset(10), opts);
        assert_eq!(span.name, "GET");
        assert_eq!(span.kind, SpanKind::Client);
        assert_eq!(span.start_unix_nanos, 1_010, "client spans start when the request is written");
        assert!(span.parent_span_id.is_none());
        assert_eq!(span.attr("url.full"), Some(&AttrValue::Str("http://shop:8080/q?x=1".into())));
        assert_eq!(span.attr("server.port"), Some(&AttrValue::Int(8080)));
        assert_eq!(span.attr("http.target"), Some(&AttrValue::Str("/q?x=1".into())));
        assert_eq!(span.attr("http.status_code"), Some(&AttrValue::Int(404)));
        assert!(matches!(span.status, SpanStatus::Error(_)), "4xx is an error for clients");
    }

    #[test]
    fn targets_split() {
        assert_eq!(split_target("/a?b=c"), ("/a", Some("b=c")));
        assert_eq!(split_target("http://h:1/p/q?z"), ("/p/q", Some("z")));
        assert_eq!(split_target("http://h"), ("/", None));
        assert_eq!(host_port("[::1]:80"), ("::1", Some(80)));
        assert_eq!(host_port("h"), ("h", None));
    }
}
