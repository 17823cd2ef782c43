//! The running agent: one task owns the kernel handles, the connection table
//! and the targets, and moves every event through
//! capture -> connections -> protocols -> spans -> sinks.
use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;
use tokio::sync::mpsc;

mod db_names;
mod link;
use db_names::DbNames;
use link::Linker;

use crate::{
    capture::{self, reader::RingReader, CapturePolicy, Event, Tuple},
    config::Settings,
    connections::{ConnKey, ConnectionTable, Outcome},
    context::{
        assembly::{AssemblyOptions, Stamp},
        Assembler, Pin, SpanCtx, Started, ThreadKey, Tracker,
    },
    discovery::{self, ProcessInfo, Scanner, ServiceOptions},
    kubernetes::KubernetesMetadata,
    probes::{wire::periscope_counter, Probes},
    protocols::{amqp::Publish, sql::DbSystem},
    spans::{
        clock::{monotonic_now, Clock},
        http::{self as http_spans, HttpContext, HttpSpanOptions},
        messaging::{self, ConsumedMessage, MessagingContext},
        routes::{Route, Router},
        sql::{self as sql_spans, SqlContext, SqlSpanOptions},
        traceparent::TraceParent,
        Service, ServiceRef, Span,
    },
    telemetry::{Counter, Telemetry},
};

/// Somewhere finished spans go (printer, OTLP queue, metrics). Must not block.
pub trait SpanSink: Send {
    fn submit(&mut self, span: &Span);

    /// Metrics sinks see every span as soon as it finishes, sampled or not,
    /// before its trace id is decided; trace sinks see sampled spans with
    /// their final ids.
    fn sees_every_span(&self) -> bool {
        false
    }

    /// A service's process exited a while ago: drop what is kept for it.
    fn forget_service(&mut self, _instance_id: &str) {}
}

/// How long a dead process's metric series stay, so that the last values are
/// exported and scraped before they go.
const SERVICE_GRACE: Duration = Duration::from_secs(120);

/// The Resource of a forked child: its parent's, with its own pid and instance id.
fn child_service(parent: &Service, pid: u32, host: &str) -> Service {
    let mut service = parent.clone();
    service.instance_id = format!("{host}-{pid}");
    for (key, value) in &mut service.attributes {
        match key.as_str() {
            "service.instance.id" => *value = service.instance_id.clone().into(),
            "process.pid" => *value = i64::from(pid).into(),
            _ => {}
        }
    }
    service
}

/// Exited processes remembered (the scan that may still list them is at
/// most a discovery interval old).
const EXITED_KEEP: Duration = Duration::from_secs(30);
const MAX_EXITED: usize = 4096;

/// Processes that exited lately, by pid and start time (a pid reused by a
/// new process has another start time). A start time of 0 (a forked child
/// tracked before /proc could be read) matches any.
#[derive(Debug, Default)]
struct Exited {
    list: std::collections::VecDeque<(std::time::Instant, u32, u64)>,
}

impl Exited {
    fn remember(&mut self, pid: u32, start_time: u64) {
        let now = std::time::Instant::now();
        while self.list.front().is_some_and(|(at, ..)| now.duration_since(*at) > EXITED_KEEP) || self.list.len() >= MAX_EXITED {
            self.list.pop_front();
        }
        self.list.push_back((now, pid, start_time));
    }

    fn contains(&self, pid: u32, start_time: u64) -> bool {
        let now = std::time::Instant::now();
        self.list.iter().rev().any(|(at, p, s)| {
            *p == pid && (*s == start_time || *s == 0) && now.duration_since(*at) <= EXITED_KEEP
        })
    }
}

/// A watched process, as shown on /targets.
#[derive(Clone, Debug, Serialize)]
pub struct TargetView {
    pub pid: u32,
    pub service_name: String,
    pub service_namespace: Option<String>,
    pub instance_id: String,
    pub exe: String,
}

pub type TargetsView = Arc<Mutex<Vec<TargetView>>>;

struct Target {
    service: ServiceRef,
    start_time: u64,
    exe: String,
    /// The process is in a pod whose metadata had not arrived at this
    /// generation of the metadata store: resolve its Resource again once the
    /// store has changed.
    awaiting_kubernetes: Option<u64>,
}

/// Connections idle this long end their open-ended responses.
const IDLE_NS: u64 = 2_000_000_000;
/// Connections idle this long are forgotten.
const EXPIRE_NS: u64 = 600_000_000_000;
/// Threads whose current request is remembered at once.
const MAX_THREADS: usize = 65_536;

pub struct Pipeline {
    settings: Settings,
    probes: Probes,
    table: ConnectionTable,
    /// In-process trace context and late trace ids.
    tracker: Tracker,
    targets: HashMap<u32, Target>,
    router: Router,
    clock: Clock,
    telemetry: Arc<Telemetry>,
    sinks: Vec<Box<dyn SpanSink>>,
    outcomes: Vec<Outcome>,
    view: TargetsView,
    service_opts: ServiceOptions,
    http_opts: HttpSpanOptions,
    sql_opts: SqlSpanOptions,
    /// Instance ids of exited processes, with when they exited.
    departed: std::collections::VecDeque<(std::time::Instant, String)>,
    /// Processes that exited lately: a scan that read /proc just before
    /// the exit must not adopt them again.
    exited: Exited,
    /// Trace links of requests and deliveries (cross-process, AMQP).
    linker: Linker,
    kubernetes: Option<KubernetesMetadata>,
    /// Databases of PostgreSQL connections adopted after their startup.
    db_names: DbNames,
}

impl Pipeline {
    pub fn new(
        settings: Settings,
        probes: Probes,
        telemetry: Arc<Telemetry>,
        sinks: Vec<Box<dyn SpanSink>>,
        view: TargetsView,
        kubernetes: Option<KubernetesMetadata>,
    ) -> Self {
        let router = Router::from_config(settings.spans.router.clone());
        let service_opts = settings.service.clone();
        let http_opts = settings.spans.http;
        let sql_opts = settings.spans.sql;
        let context = settings.context;
        let assembly = Assembler::new(
            AssemblyOptions { max_wait_ns: context.max_wait.as_nanos() as u64, ..AssemblyOptions::default() },
            context.sampler,
        );
        Self {
            departed: std::collections::VecDeque::new(),
            exited: Exited::default(),
            linker: Linker::new(context.link_wait.as_nanos() as u64),
            kubernetes,
            db_names: DbNames::default(),
            sql_opts,
            table: ConnectionTable::new(settings.agent.max_connections),
            tracker: Tracker::new(assembly, MAX_THREADS),
            settings,
            probes,
            targets: HashMap::new(),
            router,
            clock: Clock::new(),
            telemetry,
            sinks,
            outcomes: Vec::new(),
            view,
            service_opts,
            http_opts,
        }
    }

    /// Runs until `shutdown` resolves. Discovery scans run on their own thread.
    pub async fn run(
        mut self,
        mut reader: RingReader,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let (scan_tx, mut scan_rx) = mpsc::channel::<Vec<ProcessInfo>>(2);
        let selector = self.settings.selector.clone();
        let interval = self.settings.agent.discovery_interval.max(Duration::from_millis(50));
        let mut scanner = Scanner::new();
        if let Some(k) = self.kubernetes.clone() {
            scanner = scanner.with_kubernetes(k);
        }
        let (db_tx, mut db_rx) = mpsc::channel(db_names::MAX_LOOKUPS_IN_FLIGHT);
        let mut db_resolver = self.db_names.connect(scanner.backend_directory(), db_tx);
        std::thread::Builder::new().name("discovery".into()).spawn(move || loop {
            let found = scanner.scan(&selector).matched;
            if scan_tx.blocking_send(found).is_err() {
                return; // the pipeline is gone
            }
            // Between scans: the databases of adopted PostgreSQL connections.
            db_resolver.serve_until(&mut scanner, std::time::Instant::now() + interval);
        })?;

        let mut tick = tokio::time::interval(Duration::from_secs(1));
        // Data events wake us only when many are waiting; the rest is drained here.
        let mut drain = tokio::time::interval(self.settings.capture.drain_interval);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                ready = reader.wait() => {
                    ready?;
                    reader.drain(|record| self.on_record(record));
                }
                _ = drain.tick() => {
                    reader.drain(|record| self.on_record(record));
                    self.on_links(monotonic_now(), false);
                }
                Some(found) = scan_rx.recv() => self.on_scan(found),
                Some(answer) = db_rx.recv() => {
                    if let Some((key, tuple, backend)) = self.db_names.on_answer(answer, &self.telemetry) {
                        self.table.tell_database(key, &tuple, &backend.user, &backend.database);
                    }
                }
                _ = tick.tick() => self.on_tick(),
                () = &mut shutdown => break,
            }
        }
        // Last records, then everything the close of the agent completes.
        reader.drain(|record| self.on_record(record));
        let pids: Vec<u32> = self.targets.keys().copied().collect();
        for pid in pids {
            self.table.forget_process(pid, &mut self.tracker, &mut self.outcomes, &self.telemetry);
        }
        self.flush_outcomes();
        self.on_links(monotonic_now(), true);
        self.tracker.assembly.flush(&self.telemetry);
        self.on_tick();
        Ok(())
    }

    fn on_record(&mut self, record: &[u8]) {
        self.telemetry.inc(Counter::EventsReceived);
        let event = match capture::decode(record) {
            Ok(e) => e,
            Err(_) => {
                self.telemetry.inc(Counter::EventsMalformed);
                return;
            }
        };
        match event {
            Event::Data(d) => {
                if !self.targets.contains_key(&d.header.pid) {
                    self.telemetry.inc(Counter::EventsUntracked);
                    return;
                }
                let key = ConnKey { pid: d.header.pid, fd: d.header.fd };
                let thread = ThreadKey { pid: d.header.pid, tid: d.header.tid, loop_seq: d.header.loop_seq };
                // A prefix is one chunk; a segmented capture (AMQP frames)
                // one per segment, with the bytes not captured between them.
                for chunk in d.chunks() {
                    self.table.data(key, d.tuple, d.role, thread, &chunk, &mut self.tracker, &mut self.outcomes, &self.telemetry);
                }
            }
            Event::ConnOpen(c) => {
                let key = ConnKey { pid: c.header.pid, fd: c.header.fd };
                let thread = ThreadKey { pid: c.header.pid, tid: c.header.tid, loop_seq: c.header.loop_seq };
                self.table.open(key, c.tuple, c.role, thread, c.header.ts_exit, &mut self.tracker, &mut self.outcomes, &self.telemetry);
            }
            Event::ConnClose(c) => {
                let key = ConnKey { pid: c.header.pid, fd: c.header.fd };
                self.table.close(key, &mut self.tracker, &mut self.outcomes, &self.telemetry);
            }
            Event::ProcFork(p) => self.on_fork(p.header.pid, p.ppid),
            Event::ProcExit(p) => self.forget(p.header.pid),
            Event::ProcExec(p) => self.on_exec(p.header.pid),
        }
        self.flush_outcomes();
    }

    fn flush_outcomes(&mut self) {
        // Reuse the buffer: no allocation per record on the hot path.
        let mut pending = std::mem::take(&mut self.outcomes);
        let now = monotonic_now();
        for outcome in pending.drain(..) {
            match outcome {
                Outcome::RequestStarted { tuple, started, traceparent, tracestate, .. } => {
                    self.linker.on_request_started(
                        &self.table,
                        &mut self.tracker.assembly,
                        &started,
                        tuple,
                        traceparent.as_ref(),
                        tracestate,
                        now,
                        &self.telemetry,
                    );
                    self.finish_linked();
                }
                Outcome::Delivered { started, link, .. } => {
                    self.linker.on_delivered(&mut self.tracker.assembly, &started, link, &self.telemetry);
                }
                Outcome::Capture { key, tuple, policy } => self.set_capture_policy(key, &tuple, policy),
                Outcome::Published { key, tuple, started, publish } => self.on_published(key, tuple, started, &publish),
                Outcome::Consumed { key, tuple, started, message } => self.on_consumed(key, tuple, started, &message),
                Outcome::DatabaseUnknown { key, tuple, server_side } => {
                    if let Some(backend) = self.db_names.on_adopted(key, tuple, server_side, &self.telemetry) {
                        self.table.tell_database(key, &tuple, &backend.user, &backend.database);
                    }
                }
                Outcome::Sql { key, tuple, server_side, started, call } => {
                    if call.namespace.is_none() && call.system == DbSystem::Postgresql {
                        self.db_names.on_unnamed_span(key, &tuple, &self.telemetry);
                    }
                    let Some(target) = self.targets.get(&key.pid) else {
                        self.tracker.assembly.abandon(started.ctx.group);
                        continue;
                    };
                    let ctx = SqlContext { service: &target.service, local: tuple.local, remote: tuple.remote, server_side };
                    let span = sql_spans::build(&call, &ctx, &self.clock, self.sql_opts);
                    self.place(span, started, tuple, server_side, None);
                }
                Outcome::Http { key, tuple, server_side, started, exchange } => {
                    let Some(target) = self.targets.get(&key.pid) else {
                        self.tracker.assembly.abandon(started.ctx.group);
                        continue;
                    };
                    let (path, _) = http_spans::split_target(&exchange.request.target);
                    let route = self.router.route(&target.service.instance_id, path);
                    match route {
                        Route::Ignored => {
                            self.tracker.assembly.abandon(started.ctx.group);
                            continue;
                        }
                        Route::Overflow => self.telemetry.inc(Counter::RouteOverflow),
                        _ => {}
                    }
                    let ctx = HttpContext { service: &target.service, local: tuple.local, remote: tuple.remote, server_side };
                    let span = http_spans::build(&exchange, &ctx, &route, &self.clock, self.http_opts);
                    let tp = exchange.request.headers.traceparent.as_deref().and_then(TraceParent::parse);
                    let tracestate = exchange.request.headers.tracestate.clone();
                    self.place(span, started, tuple, server_side, tp.map(|tp| (tp, tracestate)));
                }
            }
        }
        if self.outcomes.is_empty() {
            self.outcomes = pending;
        }
        if !self.tracker.assembly.out.is_empty() {
            self.emit_assembled();
        }
    }

    /// Tells the kernel how to capture a connection the table classified.
    fn set_capture_policy(&mut self, key: ConnKey, tuple: &Tuple, policy: CapturePolicy) {
        match self.probes.set_capture_policy(key.pid, key.fd, tuple, policy) {
            Ok(true) => {}
            Ok(false) => self.telemetry.inc(Counter::CapturePolicyFailed),
            Err(e) => {
                tracing::debug!(pid = key.pid, fd = key.fd, "cannot set the capture policy: {e}");
                self.telemetry.inc(Counter::CapturePolicyFailed);
            }
        }
    }

    /// PRODUCER span: a child of the request that published; remembered by the
    /// message's fingerprint, so a consumer on this host can find it.
    fn on_published(&mut self, key: ConnKey, tuple: Tuple, started: Started, publish: &Publish) {
        let Some(target) = self.targets.get(&key.pid) else {
            self.tracker.assembly.abandon(started.ctx.group);
            return;
        };
        let ctx = MessagingContext { service: &target.service, local: tuple.local, remote: tuple.remote };
        let mut span = messaging::build_publish(publish, &ctx, &self.clock).span;
        self.telemetry.inc(Counter::SpansProduced);
        // A traceparent the process put in the message names this span,
        // unless that id already named another one.
        let mut started = started;
        let pin = publish.traceparent.as_deref().and_then(TraceParent::parse).map(|tp| {
            let pin = self.tracker.pin(&tp);
            if pin.header_parent.is_none() {
                started.ctx.span_id = tp.parent_id;
            }
            pin
        });
        let stamp = self.identify(&mut span, &started, pin);
        self.linker.on_published(publish, SpanCtx { span_id: span.span_id, group: started.ctx.group });
        self.finish(started.ctx.group, span, stamp);
    }

    /// CONSUMER span: its parent is the message's traceparent, else the
    /// PRODUCER span of the same message when it was published on this host
    /// (both settled at the delivery).
    fn on_consumed(&mut self, key: ConnKey, tuple: Tuple, started: Started, message: &ConsumedMessage) {
        let Some(target) = self.targets.get(&key.pid) else {
            self.tracker.assembly.abandon(started.ctx.group);
            return;
        };
        let ctx = MessagingContext { service: &target.service, local: tuple.local, remote: tuple.remote };
        let mut span = messaging::build_consumed(message, &ctx, &self.clock, None).span;
        self.telemetry.inc(Counter::SpansProduced);
        span.span_id = started.ctx.span_id;
        if let Some(producer) = self.linker.take_parent(started.ctx.span_id) {
            span.parent_span_id = Some(producer);
        }
        self.finish(started.ctx.group, span, Stamp::Group);
    }

    /// Gives a span its id, trace and parent from its exchange's identity
    /// (`pin`: the traceparent the process wrote for it); how the group's
    /// trace applies to it.
    fn identify(&self, span: &mut Span, started: &Started, pin: Option<Pin>) -> Stamp {
        span.span_id = started.ctx.span_id;
        span.parent_span_id = started.parent.map(|p| p.span_id);
        match pin {
            None => Stamp::Group,
            Some(pin) => {
                span.trace_id = pin.trace_id;
                span.trace_flags = pin.flags;
                if let Some(header_parent) = pin.header_parent {
                    span.parent_span_id = Some(header_parent);
                }
                Stamp::Pinned { keep_parent: pin.header_parent.is_some() }
            }
        }
    }

    /// Gives a finished span its ids and parent, and hands it to its trace
    /// group. `explicit`: the request carried a traceparent (the builder
    /// already used it).
    fn place(
        &mut self,
        mut span: Span,
        started: Started,
        tuple: Tuple,
        server_side: bool,
        explicit: Option<(TraceParent, Option<String>)>,
    ) {
        self.telemetry.inc(Counter::SpansProduced);
        let group = started.ctx.group;
        if !server_side {
            let stamp = self.identify(&mut span, &started, started.pin);
            self.finish(group, span, stamp);
            return;
        }
        span.span_id = started.ctx.span_id;
        let asm = &mut self.tracker.assembly;
        if !asm.is_decided(group) && !self.linker.is_waiting(span.span_id) {
            // Its start was never announced (its head was not seen): settle now.
            let (tp, state) = explicit.map_or((None, None), |(tp, s)| (Some(tp), s));
            let now = monotonic_now();
            self.linker.on_request_started(&self.table, asm, &started, tuple, tp.as_ref(), state, now, &self.telemetry);
        }
        // The exact client span of a tracked caller wins over the header's
        // parent id (a header reused for two requests names only one).
        if let Some(caller) = self.linker.take_parent(span.span_id) {
            span.parent_span_id = Some(caller);
        }
        // Finished before its caller's request event arrived: it leaves
        // once the link is known.
        if let Some(span) = self.linker.park(span) {
            self.finish(group, span, Stamp::Group);
        }
        self.finish_linked();
    }

    /// Server spans parked until their link was known, now with their parent.
    fn finish_linked(&mut self) {
        let ready: Vec<_> = self.linker.take_ready().collect();
        for (group, span) in ready {
            self.finish(group, span, Stamp::Group);
        }
    }

    /// A span with its final span id and parent: metrics see it now, the
    /// trace sinks once its trace id is decided.
    fn finish(&mut self, group: crate::context::GroupId, span: Span, stamp: Stamp) {
        for sink in self.sinks.iter_mut().filter(|s| s.sees_every_span()) {
            sink.submit(&span);
        }
        self.tracker.assembly.finish(group, span, stamp, &self.telemetry);
    }

    /// Retries waiting links; those past their time (or all, at the end) start traces of their own.
    fn on_links(&mut self, now: u64, all: bool) {
        self.linker.retry(&self.table, &mut self.tracker.assembly, now, all, &self.telemetry);
        self.finish_linked();
        self.emit_assembled();
    }

    /// Spans whose trace is decided go to the trace sinks.
    fn emit_assembled(&mut self) {
        let mut out = std::mem::take(&mut self.tracker.assembly.out);
        for span in out.drain(..) {
            for sink in self.sinks.iter_mut().filter(|s| !s.sees_every_span()) {
                sink.submit(&span);
            }
        }
        if self.tracker.assembly.out.is_empty() {
            self.tracker.assembly.out = out;
        }
    }

    fn on_scan(&mut self, found: Vec<ProcessInfo>) {
        let mut changed = false;
        for info in found {
            if self.exited.contains(info.pid, info.start_time_ticks) {
                continue;
            }
            match self.targets.get_mut(&info.pid) {
                Some(t) if t.start_time == info.start_time_ticks => {
                    changed |= self.retry_kubernetes(&info);
                    continue;
                }
                // A child tracked from its fork before /proc could be read.
                Some(t) if t.start_time == 0 => {
                    t.start_time = info.start_time_ticks;
                    continue;
                }
                Some(_) => self.forget(info.pid), // pid reused by a new process
                None => {}
            }
            changed |= self.track(&info);
        }
        if changed {
            self.publish_view();
        }
    }

    fn track(&mut self, info: &ProcessInfo) -> bool {
        if let Err(e) = self.probes.track(info.pid) {
            tracing::warn!(pid = info.pid, "cannot track process: {e}");
            return false;
        }
        let (service, awaiting_kubernetes) = self.resolve(info);
        let service = Arc::new(service);
        tracing::info!(
            pid = info.pid,
            exe = %info.exe_name,
            service = %service.name,
            "watching process"
        );
        self.telemetry.inc(Counter::ProcessesTracked);
        self.targets.insert(
            info.pid,
            Target { service, start_time: info.start_time_ticks, exe: info.exe_name.clone(), awaiting_kubernetes },
        );
        true
    }

    /// The Resource of a process; with the metadata store's generation when
    /// its pod's metadata has not arrived yet.
    fn resolve(&self, info: &ProcessInfo) -> (Service, Option<u64>) {
        let generation = self.kubernetes.as_ref().map_or(0, KubernetesMetadata::generation);
        let r = discovery::resolve_service(info, &self.service_opts, self.kubernetes.as_ref());
        (r.service, r.awaiting_kubernetes.then_some(generation))
    }

    /// A tracked process still waiting for its pod's metadata: once the store
    /// changed, resolve its Resource again (same instance id).
    fn retry_kubernetes(&mut self, info: &ProcessInfo) -> bool {
        let Some(k) = &self.kubernetes else { return false };
        let Some(target) = self.targets.get(&info.pid) else { return false };
        match target.awaiting_kubernetes {
            Some(seen) if seen != k.generation() => {}
            _ => return false,
        }
        let (service, awaiting) = self.resolve(info);
        if let Some(t) = self.targets.get_mut(&info.pid) {
            t.service = Arc::new(service);
            t.awaiting_kubernetes = awaiting;
        }
        true
    }

    fn on_fork(&mut self, pid: u32, ppid: u32) {
        // The kernel already tracks the child; give it a service of its own.
        match discovery::read_process(pid) {
            Ok(info) => {
                self.track(&info);
            }
            Err(_) => {
                // Too early or too late to read /proc: the child is its parent's copy.
                let Some(parent) = self.targets.get(&ppid) else { return };
                let service = child_service(&parent.service, pid, &self.service_opts.host_name);
                let exe = parent.exe.clone();
                self.telemetry.inc(Counter::ProcessesTracked);
                self.targets.insert(pid, Target { service: Arc::new(service), start_time: 0, exe, awaiting_kubernetes: None });
            }
        }
        self.publish_view();
    }

    fn on_exec(&mut self, pid: u32) {
        if self.targets.contains_key(&pid) {
            // Its fds may have been closed by O_CLOEXEC without close().
            self.table.forget_process(pid, &mut self.tracker, &mut self.outcomes, &self.telemetry);
            self.probes.purge_connections(pid);
            if let Ok(info) = discovery::read_process(pid) {
                let (service, awaiting_kubernetes) = self.resolve(&info);
                let target =
                    Target { service: Arc::new(service), start_time: info.start_time_ticks, exe: info.exe_name, awaiting_kubernetes };
                self.targets.insert(pid, target);
                self.publish_view();
            }
            return;
        }
        if self.settings.selector.exe_globs.is_none() {
            return;
        }
        let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) else { return };
        if self.settings.selector.matches_exe(&exe) {
            if let Ok(info) = discovery::read_process(pid) {
                if self.track(&info) {
                    self.publish_view();
                }
            }
        }
    }

    fn forget(&mut self, pid: u32) {
        if !self.targets.contains_key(&pid) {
            return;
        }
        // What the exit completes still becomes spans of this target.
        self.table.forget_process(pid, &mut self.tracker, &mut self.outcomes, &self.telemetry);
        self.flush_outcomes();
        self.tracker.forget_process(pid);
        let Some(target) = self.targets.remove(&pid) else { return };
        self.exited.remember(pid, target.start_time);
        self.probes.untrack(pid);
        self.router.forget(&target.service.instance_id);
        self.departed.push_back((std::time::Instant::now(), target.service.instance_id.clone()));
        self.telemetry.inc(Counter::ProcessesForgotten);
        tracing::info!(pid, service = %target.service.name, "process exited");
        self.publish_view();
    }

    fn on_tick(&mut self) {
        self.clock = Clock::new();
        let k = self.probes.kernel_counters();
        let t = &self.telemetry;
        t.set(Counter::EventsLostRingbuf, k[periscope_counter::PERISCOPE_CNT_RINGBUF_FULL as usize]);
        t.set(Counter::EventsLostPending, k[periscope_counter::PERISCOPE_CNT_PENDING_FULL as usize]);
        t.set(Counter::KernelConnMapFull, k[periscope_counter::PERISCOPE_CNT_CONN_FULL as usize]);
        t.set(Counter::KernelIovTruncated, k[periscope_counter::PERISCOPE_CNT_IOV_TRUNCATED as usize]);
        t.set(Counter::KernelReadFailed, k[periscope_counter::PERISCOPE_CNT_READ_FAILED as usize]);
        let amqp = |c: periscope_counter| k[c as usize];
        t.set_for(Counter::KernelCaptureIncomplete, "amqp", "framing unknown", amqp(periscope_counter::PERISCOPE_CNT_AMQP_UNALIGNED));
        t.set_for(Counter::KernelCaptureIncomplete, "amqp", "limits", amqp(periscope_counter::PERISCOPE_CNT_AMQP_TRUNCATED));

        let now = monotonic_now();
        self.table.sweep(now, IDLE_NS, EXPIRE_NS, &mut self.tracker, &mut self.outcomes, &self.telemetry);
        self.flush_outcomes();
        self.tracker.assembly.sweep(now, &self.telemetry);
        self.on_links(now, false);

        // Exits whose event was lost (ring buffer full) are caught here.
        let gone: Vec<u32> =
            self.targets.keys().copied().filter(|pid| !Path::new(&format!("/proc/{pid}")).exists()).collect();
        for pid in gone {
            self.forget(pid);
        }
        while let Some((since, _)) = self.departed.front() {
            if since.elapsed() < SERVICE_GRACE {
                break;
            }
            let Some((_, instance)) = self.departed.pop_front() else { break };
            for sink in &mut self.sinks {
                sink.forget_service(&instance);
            }
        }
    }

    fn publish_view(&self) {
        let mut v: Vec<TargetView> = self
            .targets
            .iter()
            .map(|(pid, t)| TargetView {
                pid: *pid,
                service_name: t.service.name.clone(),
                service_namespace: t.service.namespace.clone(),
                instance_id: t.service.instance_id.clone(),
                exe: t.exe.clone(),
            })
            .collect();
        v.sort_by_key(|t| t.pid);
        if let Ok(mut view) = self.view.lock() {
            *view = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spans::AttrValue;

    #[test]
    fn an_exited_process_is_not_adopted_again_but_its_pid_reused_is() {
        let mut e = Exited::default();
        e.remember(42, 1000);
        assert!(e.contains(42, 1000), "the scan read /proc before the exit");
        assert!(!e.contains(42, 2000), "a new process with the same pid");
        assert!(!e.contains(43, 1000));
        e.remember(7, 0);
        assert!(e.contains(7, 555), "a child forgotten before /proc told its start time");
    }

    #[test]
    fn a_forked_child_gets_its_own_pid_and_instance() {
        let parent = Service {
            name: "postgres".into(),
            namespace: None,
            instance_id: "box-10".into(),
            attributes: vec![
                ("service.name".into(), "postgres".into()),
                ("service.instance.id".into(), "box-10".into()),
                ("process.pid".into(), AttrValue::Int(10)),
            ],
        };
        let child = child_service(&parent, 11, "box");
        assert_eq!(child.instance_id, "box-11");
        assert_eq!(child.attributes[1].1, AttrValue::Str("box-11".into()));
        assert_eq!(child.attributes[2].1, AttrValue::Int(11));
        assert_eq!(child.name, "postgres");
    }
}
