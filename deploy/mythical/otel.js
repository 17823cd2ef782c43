// OpenTelemetry Node SDK preload, as the intro-to-mltp lab instruments its
// Mythical services: `node --require ./otel.js server.js`. Only
// `cargo xtask compare` uses it, to put the SDK's spans next to periscope's;
// the services themselves contain no OpenTelemetry code.
// Auto-instrumentations for http, express, pg and amqplib (the lab's set);
// spans go over OTLP/HTTP protobuf to OTEL_EXPORTER_OTLP_ENDPOINT (the lab
// uses OTLP/gRPC to Alloy; the transport does not change the spans).
process.env.OTEL_NODE_ENABLED_INSTRUMENTATIONS ??= 'http,express,pg,amqplib';
process.env.OTEL_METRICS_EXPORTER ??= 'none';
process.env.OTEL_LOGS_EXPORTER ??= 'none';

const { NodeSDK } = require('@opentelemetry/sdk-node');
const { getNodeAutoInstrumentations } = require('@opentelemetry/auto-instrumentations-node');
const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');

const sdk = new NodeSDK({
  traceExporter: new OTLPTraceExporter(),
  instrumentations: [getNodeAutoInstrumentations()],
});
sdk.start();

// Flush what is buffered before exiting on SIGTERM/SIGINT.
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.once(signal, () => {
    sdk
      .shutdown()
      .catch((e) => console.error(`otel.js: shutdown: ${e.message}`))
      .finally(() => process.exit(0));
  });
}
