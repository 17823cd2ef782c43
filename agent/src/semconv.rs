//! Semantic-convention names, once: attribute keys of the current
//! OpenTelemetry conventions, then the old ones periscope adds when
//! `OTEL_SEMCONV_STABILITY_OPT_IN` asks for them (`http/dup`, `database/dup`).
//! Span builders, metrics and exporters use these, never a literal.

// Current conventions.
pub const SERVER_ADDRESS: &str = "server.address";
pub const SERVER_PORT: &str = "server.port";
pub const CLIENT_ADDRESS: &str = "client.address";
pub const CLIENT_PORT: &str = "client.port";
pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
pub const HTTP_ROUTE: &str = "http.route";
pub const HTTP_REQUEST_BODY_SIZE: &str = "http.request.body.size";
pub const HTTP_RESPONSE_BODY_SIZE: &str = "http.response.body.size";
pub const URL_PATH: &str = "url.path";
pub const URL_FULL: &str = "url.full";
pub const URL_SCHEME: &str = "url.scheme";
pub const URL_QUERY: &str = "url.query";
pub const USER_AGENT_ORIGINAL: &str = "user_agent.original";
pub const NETWORK_PROTOCOL_NAME: &str = "network.protocol.name";
pub const NETWORK_PROTOCOL_VERSION: &str = "network.protocol.version";
pub const NETWORK_PEER_ADDRESS: &str = "network.peer.address";
pub const NETWORK_PEER_PORT: &str = "network.peer.port";
pub const ERROR_TYPE: &str = "error.type";
pub const PEER_SERVICE: &str = "peer.service";
pub const RPC_SYSTEM: &str = "rpc.system";
pub const RPC_SERVICE: &str = "rpc.service";
pub const RPC_METHOD: &str = "rpc.method";
pub const RPC_GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";
pub const DB_SYSTEM_NAME: &str = "db.system.name";
pub const DB_NAMESPACE: &str = "db.namespace";
pub const DB_QUERY_TEXT: &str = "db.query.text";
pub const DB_OPERATION_NAME: &str = "db.operation.name";
pub const DB_COLLECTION_NAME: &str = "db.collection.name";
pub const DB_RESPONSE_STATUS_CODE: &str = "db.response.status_code";
pub const DB_RESPONSE_RETURNED_ROWS: &str = "db.response.returned_rows";
pub const MESSAGING_SYSTEM: &str = "messaging.system";
pub const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
pub const MESSAGING_OPERATION_NAME: &str = "messaging.operation.name";
pub const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
pub const MESSAGING_MESSAGE_ID: &str = "messaging.message.id";
pub const MESSAGING_MESSAGE_CONVERSATION_ID: &str = "messaging.message.conversation_id";
pub const MESSAGING_MESSAGE_BODY_SIZE: &str = "messaging.message.body.size";
pub const MESSAGING_DESTINATION_ANONYMOUS: &str = "messaging.destination.anonymous";
pub const MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG: &str = "messaging.rabbitmq.message.delivery_tag";
pub const MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY: &str = "messaging.rabbitmq.destination.routing_key";
pub const SERVICE_NAME: &str = "service.name";
pub const SERVICE_NAMESPACE: &str = "service.namespace";
pub const SERVICE_INSTANCE_ID: &str = "service.instance.id";
pub const SERVICE_VERSION: &str = "service.version";
pub const DEPLOYMENT_ENVIRONMENT: &str = "deployment.environment";
pub const PROCESS_PID: &str = "process.pid";
pub const PROCESS_EXECUTABLE_NAME: &str = "process.executable.name";
pub const PROCESS_EXECUTABLE_PATH: &str = "process.executable.path";
pub const PROCESS_COMMAND: &str = "process.command";
pub const HOST_NAME: &str = "host.name";
pub const CONTAINER_ID: &str = "container.id";
pub const TELEMETRY_SDK_NAME: &str = "telemetry.sdk.name";
pub const TELEMETRY_SDK_VERSION: &str = "telemetry.sdk.version";
pub const TELEMETRY_SDK_LANGUAGE: &str = "telemetry.sdk.language";
pub const OTEL_METRIC_OVERFLOW: &str = "otel.metric.overflow";

/// The names that the old (pre-1.21 HTTP, pre-1.26 database) conventions used.
pub mod old {
    pub const HTTP_METHOD: &str = "http.method";
    pub const HTTP_STATUS_CODE: &str = "http.status_code";
    pub const HTTP_TARGET: &str = "http.target";
    pub const HTTP_URL: &str = "http.url";
    pub const HTTP_SCHEME: &str = "http.scheme";
    pub const NET_PEER_NAME: &str = "net.peer.name";
    pub const NET_PEER_PORT: &str = "net.peer.port";
    pub const NET_HOST_NAME: &str = "net.host.name";
    pub const NET_HOST_PORT: &str = "net.host.port";
    pub const NET_SOCK_PEER_ADDR: &str = "net.sock.peer.addr";
    pub const NET_SOCK_PEER_PORT: &str = "net.sock.peer.port";
    pub const DB_SYSTEM: &str = "db.system";
    pub const DB_NAME: &str = "db.name";
    pub const DB_STATEMENT: &str = "db.statement";
    pub const DB_OPERATION: &str = "db.operation";
    pub const DB_SQL_TABLE: &str = "db.sql.table";
}
