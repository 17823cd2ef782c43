//! gRPC calls (HTTP/2 streams of `application/grpc`) -> SERVER and CLIENT
//! spans of the RPC semantic conventions: `{service}/{method}`, `rpc.*`.
use crate::model::{Attr, Signal, Span, SpanKind, SpanStatus};
use crate::protocols::{http1::Exchange, http2::GrpcCall};
use crate::semconv;

use super::{clock::Clock, http::HttpContext};

/// gRPC status codes a server reports as its own error (semantic
/// conventions, gRPC span status): UNKNOWN, DEADLINE_EXCEEDED,
/// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS. A client reports every
/// code but OK.
const SERVER_ERRORS: [u32; 6] = [2, 4, 12, 13, 14, 15];

/// The name of a gRPC status code (`error.type`).
pub fn status_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "_OTHER",
    }
}

pub fn build(ex: &Exchange, call: &GrpcCall, ctx: &HttpContext<'_>, clock: &Clock) -> Span {
    let name = if call.method.is_empty() { call.service.clone() } else { format!("{}/{}", call.service, call.method) };
    let mut attrs = Vec::with_capacity(12);
    attrs.push(Attr::new(semconv::RPC_SYSTEM, "grpc"));
    attrs.push(Attr::new(semconv::RPC_SERVICE, call.service.as_str()));
    attrs.push(Attr::new(semconv::RPC_METHOD, call.method.as_str()));
    // No grpc-status seen (trailers not captured, a table entry we never
    // saw, a reset stream): no code, and no error claimed.
    if let Some(code) = call.status {
        attrs.push(Attr::new(semconv::RPC_GRPC_STATUS_CODE, i64::from(code)));
    }
    attrs.push(Attr::new(semconv::NETWORK_PROTOCOL_NAME, "http"));
    attrs.push(Attr::new(semconv::NETWORK_PROTOCOL_VERSION, "2"));
    attrs.push(Attr::new(semconv::NETWORK_PEER_ADDRESS, ctx.remote.ip().to_string()));
    attrs.push(Attr::new(semconv::NETWORK_PEER_PORT, ctx.remote.port()));
    let (kind, start, server) = if ctx.server_side {
        attrs.push(Attr::new(semconv::CLIENT_ADDRESS, ctx.remote.ip().to_string()));
        (SpanKind::Server, ex.request_start_exit, ctx.local)
    } else {
        (SpanKind::Client, ex.request_start_enter, ctx.remote)
    };
    let authority = ex.request.headers.host.as_deref().map(|h| h.rsplit_once(':').map_or(h, |(h, _)| h));
    let address = authority.filter(|h| !h.is_empty()).map_or_else(|| server.ip().to_string(), str::to_owned);
    attrs.push(Attr::new(semconv::SERVER_ADDRESS, address));
    attrs.push(Attr::new(semconv::SERVER_PORT, server.port()));
    let code = call.status.unwrap_or(0);
    let error = if ctx.server_side { SERVER_ERRORS.contains(&code) } else { code != 0 };
    if error {
        attrs.push(Attr::new(semconv::ERROR_TYPE, status_name(code)));
    }
    let signal = if ctx.server_side { Signal::RpcServer } else { Signal::RpcClient };
    let status = if error { SpanStatus::Error(format!("gRPC {}", status_name(code))) } else { SpanStatus::Unset };
    let end = ex.response_end.max(start);
    Span::new(ctx.service, kind, signal, name, clock.to_unix(start), clock.to_unix(end), attrs, status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttrValue, Service, ServiceRef};
    use crate::protocols::http1::head::{Headers, RequestHead, ResponseHead};
    use std::sync::Arc;

    fn exchange() -> Exchange {
        Exchange {
            request: RequestHead {
                method: "POST".into(),
                target: "/shop.Cart/Add".into(),
                version: 2,
                headers: Headers { host: Some("cart:50051".into()), ..Headers::default() },
                truncated: false,
            },
            response: ResponseHead { status: 200, version: 2, headers: Headers::default(), truncated: false },
            request_start_enter: 1_000,
            request_start_exit: 2_000,
            request_end: 2_000,
            response_start_enter: 5_000,
            response_end: 9_000,
            request_body_bytes: 5,
            response_body_bytes: 7,
        }
    }

    fn span(server_side: bool, status: Option<u32>) -> Span {
        let svc: ServiceRef =
            Arc::new(Service { name: "cart".into(), namespace: None, instance_id: "i".into(), attributes: vec![] });
        let ctx = HttpContext {
            service: &svc,
            local: "10.0.0.1:50051".parse().unwrap(),
            remote: "10.0.0.2:40000".parse().unwrap(),
            server_side,
        };
        let call = GrpcCall { service: "shop.Cart".into(), method: "Add".into(), status };
        build(&exchange(), &call, &ctx, &Clock::with_offset(0))
    }

    #[test]
    fn names_attributes_and_status_follow_the_rpc_conventions() {
        let s = span(true, Some(0));
        assert_eq!(s.name, "shop.Cart/Add");
        assert_eq!((s.kind, s.signal), (SpanKind::Server, Signal::RpcServer));
        assert_eq!(s.attr("rpc.system"), Some(&AttrValue::Str("grpc".into())));
        assert_eq!(s.attr("rpc.service"), Some(&AttrValue::Str("shop.Cart".into())));
        assert_eq!(s.attr("rpc.method"), Some(&AttrValue::Str("Add".into())));
        assert_eq!(s.attr("rpc.grpc.status_code"), Some(&AttrValue::Int(0)));
        assert_eq!(s.attr("server.address"), Some(&AttrValue::Str("cart".into())));
        assert_eq!(s.status, SpanStatus::Unset);
        assert_eq!((s.start_unix_nanos, s.end_unix_nanos), (2_000, 9_000));
    }

    #[test]
    fn not_found_is_a_client_error_only_and_internal_is_both() {
        assert_eq!(span(true, Some(5)).status, SpanStatus::Unset);
        assert!(matches!(span(false, Some(5)).status, SpanStatus::Error(_)));
        let s = span(true, Some(13));
        assert!(matches!(s.status, SpanStatus::Error(_)));
        assert_eq!(s.attr("error.type"), Some(&AttrValue::Str("INTERNAL".into())));
        let unknown = span(false, None);
        assert_eq!(unknown.attr("rpc.grpc.status_code"), None);
        assert_eq!(unknown.status, SpanStatus::Unset, "a status not seen is no error");
    }
}
