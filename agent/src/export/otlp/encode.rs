//! A batch of spans straight to the protobuf bytes of an
//! `ExportTraceServiceRequest`: no intermediate OTLP structs (one `String`
//! and `Vec` per span, per attribute, per key), no clone for a retry. Sizes
//! are computed first, so every nested message is written once, in place,
//! into one buffer allocated at its final size. The field numbers are
//! opentelemetry-proto's (`trace/v1/trace.proto`, `common/v1/common.proto`);
//! tests decode the bytes with the generated types and compare them with
//! [`super::build_request`].
use bytes::{BufMut, Bytes};
use prost::{
    encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType},
    Message,
};

use super::{
    convert::{resource, scope},
    traces::{otlp_kind, span_flags},
};
use crate::model::{Attr, AttrValue, Span, SpanStatus};

/// Bytes of a length-delimited field `tag` whose content is `len` bytes.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn write_delimited_head(tag: u32, len: usize, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// A string/bytes field, left out when empty (proto3 defaults).
fn bytes_field_len(tag: u32, b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        delimited_len(tag, b.len())
    }
}

fn write_bytes_field(tag: u32, b: &[u8], buf: &mut Vec<u8>) {
    if !b.is_empty() {
        write_delimited_head(tag, b.len(), buf);
        buf.put_slice(b);
    }
}

fn varint_field_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(v)
    }
}

fn write_varint_field(tag: u32, v: u64, buf: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(v, buf);
    }
}

fn fixed64_field_len(tag: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(tag) + 8
    }
}

fn write_fixed64_field(tag: u32, v: u64, buf: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::SixtyFourBit, buf);
        buf.put_u64_le(v);
    }
}

/// `AnyValue`: the set member of the oneof is always written, even when it
/// holds its type's default.
fn any_value_len(v: &AttrValue) -> usize {
    match v {
        AttrValue::Str(s) => delimited_len(1, s.len()),
        AttrValue::Bool(_) => key_len(2) + 1,
        AttrValue::Int(i) => key_len(3) + encoded_len_varint(*i as u64),
        AttrValue::Double(_) => key_len(4) + 8,
    }
}

fn write_any_value(v: &AttrValue, buf: &mut Vec<u8>) {
    match v {
        AttrValue::Str(s) => {
            write_delimited_head(1, s.len(), buf);
            buf.put_slice(s.as_bytes());
        }
        AttrValue::Bool(b) => {
            encode_key(2, WireType::Varint, buf);
            buf.put_u8(u8::from(*b));
        }
        AttrValue::Int(i) => {
            encode_key(3, WireType::Varint, buf);
            encode_varint(*i as u64, buf);
        }
        AttrValue::Double(d) => {
            encode_key(4, WireType::SixtyFourBit, buf);
            buf.put_f64_le(*d);
        }
    }
}

/// `KeyValue { key = 1, value = 2 }`.
fn key_value_len(a: &Attr) -> usize {
    bytes_field_len(1, a.key.as_bytes()) + delimited_len(2, any_value_len(&a.value))
}

fn write_key_value(a: &Attr, buf: &mut Vec<u8>) {
    write_bytes_field(1, a.key.as_bytes(), buf);
    write_delimited_head(2, any_value_len(&a.value), buf);
    write_any_value(&a.value, buf);
}

/// `Status { message = 2, code = 3 }`.
fn status_len(message: &str) -> usize {
    bytes_field_len(2, message.as_bytes()) + varint_field_len(3, STATUS_ERROR)
}

/// `StatusCode::Error`.
const STATUS_ERROR: u64 = 2;

/// `Span`'s content (without its own tag and length).
fn span_len(span: &Span) -> usize {
    let mut n = delimited_len(1, 16) + delimited_len(2, 8);
    n += bytes_field_len(3, span.trace_state.as_deref().unwrap_or_default().as_bytes());
    if span.parent_span_id.is_some() {
        n += delimited_len(4, 8);
    }
    n += bytes_field_len(5, span.name.as_bytes());
    n += varint_field_len(6, otlp_kind(span.kind) as u64);
    n += fixed64_field_len(7, span.start_unix_nanos) + fixed64_field_len(8, span.end_unix_nanos);
    n += span.attributes.iter().map(|a| delimited_len(9, key_value_len(a))).sum::<usize>();
    if let SpanStatus::Error(message) = &span.status {
        n += delimited_len(15, status_len(message));
    }
    if span_flags(span) != 0 {
        n += key_len(16) + 4;
    }
    n
}

fn write_span(span: &Span, buf: &mut Vec<u8>) {
    write_delimited_head(1, 16, buf);
    buf.put_slice(&span.trace_id.0);
    write_delimited_head(2, 8, buf);
    buf.put_slice(&span.span_id.0);
    write_bytes_field(3, span.trace_state.as_deref().unwrap_or_default().as_bytes(), buf);
    if let Some(parent) = span.parent_span_id {
        write_delimited_head(4, 8, buf);
        buf.put_slice(&parent.0);
    }
    write_bytes_field(5, span.name.as_bytes(), buf);
    write_varint_field(6, otlp_kind(span.kind) as u64, buf);
    write_fixed64_field(7, span.start_unix_nanos, buf);
    write_fixed64_field(8, span.end_unix_nanos, buf);
    for a in &span.attributes {
        write_delimited_head(9, key_value_len(a), buf);
        write_key_value(a, buf);
    }
    if let SpanStatus::Error(message) = &span.status {
        write_delimited_head(15, status_len(message), buf);
        write_bytes_field(2, message.as_bytes(), buf);
        write_varint_field(3, STATUS_ERROR, buf);
    }
    let flags = span_flags(span);
    if flags != 0 {
        encode_key(16, WireType::ThirtyTwoBit, buf);
        buf.put_u32_le(flags);
    }
}

/// One `ResourceSpans` per service instance, in first-seen order, each with
/// one `ScopeSpans`: the same request as [`super::build_request`], as bytes.
pub fn encode_request(spans: &[Span]) -> Bytes {
    // Groups by instance: few per batch, so a linear search beats hashing.
    struct Group<'a> {
        instance: &'a str,
        resource: Vec<u8>,
        spans: Vec<(&'a Span, usize)>,
        spans_len: usize,
    }
    let mut groups: Vec<Group<'_>> = Vec::new();
    for span in spans {
        let instance = span.service.instance_id.as_str();
        let i = match groups.iter().position(|g| g.instance == instance) {
            Some(i) => i,
            None => {
                // Once per service per batch: the generated types are fine here.
                groups.push(Group {
                    instance,
                    resource: resource(&span.service).encode_to_vec(),
                    spans: Vec::new(),
                    spans_len: 0,
                });
                groups.len() - 1
            }
        };
        let len = span_len(span);
        groups[i].spans_len += delimited_len(2, len);
        groups[i].spans.push((span, len));
    }
    let scope = scope().encode_to_vec();
    let scope_spans_len = |g: &Group<'_>| delimited_len(1, scope.len()) + g.spans_len;
    let resource_spans_len = |g: &Group<'_>| delimited_len(1, g.resource.len()) + delimited_len(2, scope_spans_len(g));
    let total: usize = groups.iter().map(|g| delimited_len(1, resource_spans_len(g))).sum();

    let mut buf = Vec::with_capacity(total);
    for g in &groups {
        write_delimited_head(1, resource_spans_len(g), &mut buf);
        write_delimited_head(1, g.resource.len(), &mut buf);
        buf.put_slice(&g.resource);
        write_delimited_head(2, scope_spans_len(g), &mut buf);
        write_delimited_head(1, scope.len(), &mut buf);
        buf.put_slice(&scope);
        for (span, len) in &g.spans {
            write_delimited_head(2, *len, &mut buf);
            write_span(span, &mut buf);
        }
    }
    debug_assert_eq!(buf.len(), total, "sizes computed and bytes written disagree");
    buf.into()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;

    use super::*;
    use crate::{
        export::otlp::build_request,
        model::{Service, Signal, SpanId, SpanKind, TraceId},
    };

    fn service(name: &str) -> Arc<Service> {
        Arc::new(Service {
            name: name.into(),
            namespace: Some("ns".into()),
            instance_id: format!("{name}-1"),
            attributes: vec![("process.pid".into(), AttrValue::Int(7))],
        })
    }

    /// Every shape a field can take: defaults (left out), negatives, empty
    /// strings in a oneof, unicode, errors with and without a message, remote parents.
    fn spans() -> Vec<Span> {
        let (a, b) = (service("front"), service("back"));
        let mut out = Vec::new();
        for (i, kind) in
            [SpanKind::Server, SpanKind::Client, SpanKind::Producer, SpanKind::Consumer, SpanKind::Internal]
                .into_iter()
                .enumerate()
        {
            let svc = if i % 2 == 0 { &a } else { &b };
            let mut s = Span::new(
                svc,
                kind,
                Signal::HttpServer,
                format!("GET /é/{i}"),
                1_700_000_000_000_000_000 + i as u64,
                1_700_000_000_000_001_000 + i as u64,
                vec![
                    Attr::new("str", "v"),
                    Attr::new("empty", ""),
                    Attr::new("int", -5i64),
                    Attr::new("zero", 0i64),
                    Attr::new("bool", i % 2 == 0),
                    Attr::new("double", AttrValue::Double(-0.25)),
                ],
                if i == 1 {
                    SpanStatus::Error("boom".into())
                } else if i == 3 {
                    SpanStatus::Error(String::new())
                } else {
                    SpanStatus::Unset
                },
            );
            s.trace_id = TraceId([i as u8 + 1; 16]);
            s.span_id = SpanId([i as u8 + 2; 8]);
            s.parent_span_id = (i != 2).then_some(SpanId([9; 8]));
            s.trace_flags = (i % 2) as u8;
            s.trace_state = (i == 4).then(|| "k=v".to_owned());
            out.push(s);
        }
        out
    }

    #[test]
    fn decodes_to_what_the_generated_types_build() {
        let spans = spans();
        let bytes = encode_request(&spans);
        let decoded = ExportTraceServiceRequest::decode(bytes.clone()).expect("valid protobuf");
        assert_eq!(decoded, build_request(&spans));
        assert_eq!(decoded.resource_spans.len(), 2);
        // Same size as prost's own encoding: nothing extra written, no default left in.
        assert_eq!(bytes.len(), build_request(&spans).encoded_len());
    }

    #[test]
    fn an_empty_batch_is_an_empty_request() {
        assert!(encode_request(&[]).is_empty());
    }
}
