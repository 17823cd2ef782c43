//! Model -> OTLP protobuf conversions shared by both signals.
use opentelemetry_proto::tonic::{
    common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue},
    resource::v1::Resource,
};

use crate::model::{AttrValue, Service};

/// Instrumentation scope name of everything the agent produces.
pub const SCOPE_NAME: &str = "periscope";

pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    }
}

pub fn any_value(v: &AttrValue) -> AnyValue {
    let value = match v {
        AttrValue::Str(s) => any_value::Value::StringValue(s.clone()),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
        AttrValue::Double(d) => any_value::Value::DoubleValue(*d),
    };
    AnyValue { value: Some(value) }
}

pub fn key_value(k: &str, v: &AttrValue) -> KeyValue {
    KeyValue { key: k.to_owned(), value: Some(any_value(v)), ..Default::default() }
}

/// The service's Resource.
pub fn resource(service: &Service) -> Resource {
    let attributes = service.resource_attributes().map(|(k, v)| key_value(k, &v)).collect();
    Resource { attributes, ..Default::default() }
}
