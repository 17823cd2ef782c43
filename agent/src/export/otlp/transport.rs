//! Sending one OTLP request over gRPC or HTTP/protobuf, and the bounded outbox
//! + retry loop that both the trace and the metrics exporter use.
use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::{
    metrics::v1::{metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest},
    trace::v1::ExportTraceServiceResponse,
};
use prost::Message;
use tokio::sync::Notify;
use tonic::{
    codec::CompressionEncoding,
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use super::{
    config::{Compression, OtlpProtocol, OtlpSignal, SignalConfig},
    tls,
};
use crate::telemetry::{Counter, Telemetry};

/// One request of either signal.
#[derive(Clone, Debug)]
pub enum Payload {
    /// An `ExportTraceServiceRequest`, encoded (`encode.rs`): a retry resends the same bytes.
    Traces(Bytes),
    Metrics(ExportMetricsServiceRequest),
}

/// gRPC with a request already encoded: the bytes go out as they are, the
/// response is decoded with prost.
struct EncodedCodec<R>(std::marker::PhantomData<R>);

struct BytesEncoder;

struct ProstDecoder<R>(std::marker::PhantomData<R>);

impl<R: Message + Default + Send + 'static> tonic::codec::Codec for EncodedCodec<R> {
    type Encode = Bytes;
    type Decode = R;
    type Encoder = BytesEncoder;
    type Decoder = ProstDecoder<R>;
    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }
    fn decoder(&mut self) -> ProstDecoder<R> {
        ProstDecoder(std::marker::PhantomData)
    }
}

impl tonic::codec::Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl<R: Message + Default> tonic::codec::Decoder for ProstDecoder<R> {
    type Item = R;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<R>, tonic::Status> {
        R::decode(src).map(Some).map_err(|e| tonic::Status::internal(format!("undecodable response: {e}")))
    }
}

const TRACE_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth trying again later (endpoint down, 429/502/503/504, UNAVAILABLE, ...).
    #[error("retryable: {0}")]
    Retryable(String),
    /// The endpoint rejected the data itself; retrying would not help.
    #[error("rejected: {0}")]
    Permanent(String),
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("invalid OTLP endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
}

enum Inner {
    Grpc { channel: Channel, metadata: MetadataMap },
    Http { client: reqwest::Client, url: String, headers: reqwest::header::HeaderMap },
}

pub struct Transport {
    inner: Inner,
    timeout: Duration,
    compression: Compression,
}

impl Transport {
    /// Builds the client; no connection is made until the first send.
    pub fn new(cfg: &SignalConfig) -> Result<Self, TransportError> {
        let bad = |reason: String| TransportError::Endpoint { endpoint: cfg.endpoint.clone(), reason };
        let inner = match cfg.protocol {
            OtlpProtocol::Grpc => {
                let mut endpoint = Endpoint::from_shared(cfg.endpoint.clone())
                    .map_err(|e| bad(e.to_string()))?
                    .connect_timeout(cfg.timeout)
                    .timeout(cfg.timeout);
                if let Some(files) = &cfg.tls {
                    let mut tls = ClientTlsConfig::new();
                    tls = match &files.ca_pem {
                        Some(pem) => tls.ca_certificate(Certificate::from_pem(pem)),
                        None => tls.with_native_roots(),
                    };
                    if let Some(id) = &files.client {
                        tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
                    }
                    endpoint = endpoint.tls_config(tls).map_err(|e| bad(format!("TLS: {e}")))?;
                }
                let channel = endpoint.connect_lazy();
                let mut metadata = MetadataMap::new();
                for (k, v) in &cfg.headers {
                    let key = MetadataKey::from_bytes(k.as_bytes()).map_err(|e| bad(format!("header {k:?}: {e}")))?;
                    let value: MetadataValue<_> = v.parse().map_err(|_| bad(format!("header {k:?}: bad value")))?;
                    metadata.insert(key, value);
                }
                Inner::Grpc { channel, metadata }
            }
            OtlpProtocol::HttpProtobuf => {
                let mut headers = reqwest::header::HeaderMap::new();
                for (k, v) in &cfg.headers {
                    let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|e| bad(format!("header {k:?}: {e}")))?;
                    let value =
                        reqwest::header::HeaderValue::from_str(v).map_err(|e| bad(format!("header {k:?}: {e}")))?;
                    headers.insert(name, value);
                }
                let tls = match &cfg.tls {
                    Some(files) => tls::client_config(files).map_err(|e| bad(format!("TLS: {e}")))?,
                    None => tls::plaintext_config(),
                };
                let client = reqwest::Client::builder()
                    .tls_backend_preconfigured(tls)
                    .timeout(cfg.timeout)
                    .connect_timeout(cfg.timeout)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                Inner::Http { client, url: cfg.endpoint.clone(), headers }
            }
        };
        Ok(Self { inner, timeout: cfg.timeout, compression: cfg.compression })
    }

    /// One attempt, bounded by the configured timeout.
    pub async fn send(&self, payload: &Payload) -> Result<(), SendError> {
        match tokio::time::timeout(self.timeout, self.send_inner(payload)).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Retryable(format!("timed out after {:?}", self.timeout))),
        }
    }

    async fn send_inner(&self, payload: &Payload) -> Result<(), SendError> {
        match &self.inner {
            Inner::Grpc { channel, metadata } => {
                let result = match payload {
                    Payload::Traces(bytes) => {
                        let mut req = tonic::Request::new(bytes.clone());
                        *req.metadata_mut() = metadata.clone();
                        let mut grpc = tonic::client::Grpc::new(channel.clone());
                        if self.compression == Compression::Gzip {
                            grpc = grpc.send_compressed(CompressionEncoding::Gzip);
                        }
                        grpc = grpc.accept_compressed(CompressionEncoding::Gzip);
                        let sent = async {
                            grpc.ready().await.map_err(|e| tonic::Status::unavailable(format!("connecting: {e}")))?;
                            let path = tonic::codegen::http::uri::PathAndQuery::from_static(TRACE_EXPORT_PATH);
                            let codec = EncodedCodec::<ExportTraceServiceResponse>(std::marker::PhantomData);
                            grpc.unary(req, path, codec).await
                        };
                        sent.await.map(|resp| {
                            if let Some(p) = resp.into_inner().partial_success.filter(|p| p.rejected_spans > 0) {
                                tracing::warn!(rejected = p.rejected_spans, msg = %p.error_message, "OTLP endpoint rejected spans");
                            }
                        })
                    }
                    Payload::Metrics(r) => {
                        let mut req = tonic::Request::new(r.clone());
                        *req.metadata_mut() = metadata.clone();
                        let mut client = MetricsServiceClient::new(channel.clone());
                        if self.compression == Compression::Gzip {
                            client = client.send_compressed(CompressionEncoding::Gzip);
                        }
                        client.accept_compressed(CompressionEncoding::Gzip).export(req).await.map(|resp| {
                            if let Some(p) = resp.into_inner().partial_success.filter(|p| p.rejected_data_points > 0) {
                                tracing::warn!(rejected = p.rejected_data_points, msg = %p.error_message, "OTLP endpoint rejected data points");
                            }
                        })
                    }
                };
                result.map_err(|status| {
                    use tonic::Code::*;
                    let msg = format!("gRPC {:?}: {}", status.code(), status.message());
                    match status.code() {
                        Cancelled | DeadlineExceeded | ResourceExhausted | Aborted | OutOfRange | Unavailable
                        | DataLoss | Unknown => SendError::Retryable(msg),
                        _ => SendError::Permanent(msg),
                    }
                })
            }
            Inner::Http { client, url, headers } => {
                let body = match payload {
                    Payload::Traces(bytes) => bytes.clone(),
                    Payload::Metrics(r) => r.encode_to_vec().into(),
                };
                let mut request = client
                    .post(url)
                    .headers(headers.clone())
                    .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf");
                let body = match self.compression {
                    Compression::None => body,
                    Compression::Gzip => {
                        request = request.header(reqwest::header::CONTENT_ENCODING, "gzip");
                        gzip(&body).into()
                    }
                };
                let resp = request.body(body).send().await.map_err(|e| SendError::Retryable(format!("HTTP: {e}")))?;
                let status = resp.status();
                if status.is_success() {
                    return Ok(());
                }
                let msg = format!("HTTP status {status}");
                match status.as_u16() {
                    408 | 429 | 502 | 503 | 504 => Err(SendError::Retryable(msg)),
                    _ => Err(SendError::Permanent(msg)),
                }
            }
        }
    }
}

/// `body` gzip-compressed (default level: OTLP bodies shrink 5-10x).
fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(body.len() / 4), flate2::Compression::default());
    encoder.write_all(body).expect("writing to a Vec cannot fail");
    encoder.finish().expect("writing to a Vec cannot fail")
}

/// A sealed request waiting to be delivered.
#[derive(Debug)]
pub struct Pending {
    pub payload: Payload,
    /// Spans or data points it carries (for `SpansExported`).
    pub items: u64,
}

struct OutboxState {
    queue: VecDeque<Pending>,
    closing: bool,
}

/// Bounded queue of sealed requests between a producer (batcher / metrics
/// ticker) and the delivery loop. When full, the oldest request is dropped.
pub struct Outbox {
    state: Mutex<OutboxState>,
    notify: Notify,
    capacity: usize,
    telemetry: Arc<Telemetry>,
    closed: tokio::sync::watch::Sender<bool>,
}

impl Outbox {
    pub fn new(capacity: usize, telemetry: Arc<Telemetry>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(OutboxState { queue: VecDeque::new(), closing: false }),
            notify: Notify::new(),
            capacity: capacity.max(1),
            telemetry,
            closed: tokio::sync::watch::Sender::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, p: Pending) {
        {
            let mut st = self.lock();
            st.queue.push_back(p);
            while st.queue.len() > self.capacity {
                st.queue.pop_front();
                self.telemetry.inc(Counter::ExportBatchesDropped);
            }
        }
        self.notify.notify_one();
    }

    /// Puts a failed request back at the head, unless newer ones already fill the outbox.
    fn requeue(&self, p: Pending) {
        let mut st = self.lock();
        if st.queue.len() < self.capacity {
            st.queue.push_front(p);
        } else {
            self.telemetry.inc(Counter::ExportBatchesDropped);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    /// No more pushes: the delivery loop ends once the outbox is empty.
    pub fn close(&self) {
        self.lock().closing = true;
        self.closed.send_replace(true);
        self.notify.notify_one();
    }

    /// Drops what is left (counted), e.g. when the shutdown deadline passed.
    pub fn discard_all(&self) {
        let mut st = self.lock();
        let n = st.queue.len() as u64;
        st.queue.clear();
        self.telemetry.add(Counter::ExportBatchesDropped, n);
    }

    async fn next(&self) -> Option<Pending> {
        loop {
            let notified = self.notify.notified();
            {
                let mut st = self.lock();
                if let Some(p) = st.queue.pop_front() {
                    return Some(p);
                }
                if st.closing {
                    return None;
                }
            }
            notified.await;
        }
    }
}

/// Exponential backoff with a cap.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max: max.max(initial), current: initial }
    }
    pub fn next_delay(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        d
    }
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

/// Delivers the outbox's requests in order until it is closed and empty.
/// Retryable failures are retried (with backoff) for as long as the request
/// stays in the outbox; permanent ones drop the request.
pub async fn deliver(outbox: Arc<Outbox>, transport: Transport, mut backoff: Backoff, signal: OtlpSignal) {
    while let Some(p) = outbox.next().await {
        match transport.send(&p.payload).await {
            Ok(()) => {
                backoff.reset();
                if signal == OtlpSignal::Traces {
                    outbox.telemetry.add(Counter::SpansExported, p.items);
                }
            }
            Err(SendError::Permanent(e)) => {
                outbox.telemetry.inc(Counter::ExportErrors);
                outbox.telemetry.inc(Counter::ExportBatchesDropped);
                tracing::warn!(signal = signal.as_str(), error = %e, "OTLP export rejected; dropping the batch");
            }
            Err(SendError::Retryable(e)) => {
                outbox.telemetry.inc(Counter::ExportErrors);
                let delay = backoff.next_delay();
                tracing::debug!(signal = signal.as_str(), error = %e, ?delay, "OTLP export failed; will retry");
                outbox.requeue(p);
                let mut closed = outbox.closed.subscribe();
                if *closed.borrow() {
                    // Shutting down: retry quickly until the caller's deadline.
                    tokio::time::sleep(Duration::from_millis(100).min(delay)).await;
                } else {
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = closed.wait_for(|c| *c) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(n: u64) -> Pending {
        Pending { payload: Payload::Traces(Bytes::new()), items: n }
    }

    #[test]
    fn outbox_drops_oldest_when_full() {
        let t = Arc::new(Telemetry::default());
        let o = Outbox::new(2, t.clone());
        o.push(pending(1));
        o.push(pending(2));
        o.push(pending(3));
        assert_eq!(o.len(), 2);
        assert_eq!(t.get(Counter::ExportBatchesDropped), 1);
        let st = o.lock();
        assert_eq!(st.queue.iter().map(|p| p.items).collect::<Vec<_>>(), [2, 3]);
    }

    #[test]
    fn backoff_doubles_up_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let ds: Vec<u64> = (0..7).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(ds, [1, 2, 4, 8, 16, 30, 30]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }
}
