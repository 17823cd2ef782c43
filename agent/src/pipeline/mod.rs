//! The running agent: one task owns the stages and moves every kernel event
//! through them (docs/architecture.md):
//!
//! ```text
//! ring buffer -> capture::decode -> Event
//!   Data/ConnOpen/ConnClose -> ConnectionTable (+ Tracker: span ids, parents) -> Outcome
//!   Outcome -> Linker (trace links) / spans.rs (Span) -> Tracker (trace ids) -> Sinks
//!   ProcFork/Exec/Exit      -> Registry (via the discovery thread for /proc)
//! ```
//!
//! Each stage is a field of [`Pipeline`], side by side; none reaches
//! through another.
mod db_names;
mod discovery;
mod link;
mod registry;
mod sinks;
mod spans;

use std::{sync::mpsc as std_mpsc, sync::Arc, time::Duration};

use tokio::sync::mpsc;

use db_names::DbNames;
use discovery::{Answer, Request, TlsRescan, Worker, MAX_ANSWERS, MAX_REQUESTS};
use link::Linker;
use registry::{Found, Refresh, Registry};
pub use registry::{TargetView, TargetsView};
use sinks::Sinks;
pub use sinks::SpanSink;

use crate::{
    capture::{self, reader::RingReader, Event},
    config::Settings,
    connections::{ConnKey, ConnectionTable, Outcome},
    conntrack::{self, Translation},
    context::{assembly::AssemblyOptions, Assembler, ThreadKey, Tracker},
    discovery::{runtime_hooks::Runtime, tls_libraries::TlsLibrary, ProcessInfo, Scanner},
    kubernetes::KubernetesMetadata,
    probes::{self, wire::periscope_counter, Probes},
    spans::{
        clock::{monotonic_now, Clock},
        http::HttpSpanOptions,
        routes::Router,
        sql::SqlSpanOptions,
    },
    telemetry::{Counter, Telemetry},
};

/// Connections idle this long end their open-ended responses.
const IDLE_NS: u64 = 2_000_000_000;
/// Connections idle this long are forgotten.
const EXPIRE_NS: u64 = 600_000_000_000;
/// Threads whose current request is remembered at once.
const MAX_THREADS: usize = 65_536;

pub struct Pipeline {
    settings: Settings,
    probes: Probes,
    telemetry: Arc<Telemetry>,
    /// Connections and their parsers (protocols).
    table: ConnectionTable,
    /// Span ids, in-process parents, trace ids (context).
    tracker: Tracker,
    /// Trace links across processes and messages.
    linker: Linker,
    /// The watched processes and their Resources.
    registry: Registry,
    /// Where spans go.
    sinks: Sinks,
    /// Databases of PostgreSQL connections adopted after their startup.
    db_names: DbNames,
    /// Span building.
    router: Router,
    clock: Clock,
    http_opts: HttpSpanOptions,
    sql_opts: SqlSpanOptions,
    /// The table's output, reused (no allocation per record).
    outcomes: Vec<Outcome>,
    /// Requests to the discovery thread (set once it runs).
    requests: Option<std_mpsc::SyncSender<Request>>,
    /// For the discovery thread's scanner.
    kubernetes: Option<KubernetesMetadata>,
    /// Questions to the conntrack thread (set once it runs).
    conntrack: Option<std_mpsc::SyncSender<conntrack::Message>>,
    /// Pids for the Go executable inspector (set once it runs, when the Go
    /// runtime hooks are on and loaded).
    go_inspector: Option<std_mpsc::SyncSender<u32>>,
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
        let context = settings.context;
        let assembly = Assembler::new(
            AssemblyOptions { max_wait_ns: context.max_wait.as_nanos() as u64, ..AssemblyOptions::default() },
            context.sampler,
        );
        Self {
            linker: Linker::new(context.link_wait.as_nanos() as u64),
            registry: Registry::new(settings.service.clone(), view, kubernetes.clone()),
            kubernetes,
            db_names: DbNames::default(),
            table: ConnectionTable::new(settings.agent.max_connections),
            tracker: Tracker::new(assembly, MAX_THREADS),
            sinks: Sinks::new(sinks),
            router: Router::from_config(settings.spans.router.clone()),
            http_opts: settings.spans.http,
            sql_opts: settings.spans.sql,
            settings,
            probes,
            clock: Clock::new(),
            telemetry,
            outcomes: Vec::new(),
            requests: None,
            conntrack: None,
            go_inspector: None,
        }
    }

    /// Runs until `shutdown` resolves. /proc is read on the discovery thread.
    pub async fn run(
        mut self,
        mut reader: RingReader,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let mut scanner = Scanner::new();
        if let Some(k) = self.kubernetes.clone() {
            scanner = scanner.with_kubernetes(k);
        }
        let (requests_tx, requests) = std_mpsc::sync_channel(MAX_REQUESTS);
        let (answers, mut answers_rx) = mpsc::channel(MAX_ANSWERS);
        let resolver = self.db_names.connect(scanner.backend_directory(), requests_tx.clone());
        self.requests = Some(requests_tx);
        let worker = Worker {
            scanner,
            selector: self.settings.selector.clone(),
            interval: self.settings.agent.discovery_interval.max(Duration::from_millis(50)),
            requests,
            answers,
            resolver,
            tls: TlsRescan::default(),
        };
        std::thread::Builder::new().name("discovery".into()).spawn(move || worker.run())?;
        let (queries, queries_rx) = std_mpsc::sync_channel(conntrack::MAX_QUERIES);
        let (nat_answers, mut nat_rx) = mpsc::channel(conntrack::MAX_ANSWERS);
        conntrack::spawn(queries_rx, nat_answers)?;
        self.conntrack = Some(queries);
        // Processes tracked before the conntrack thread ran.
        for pid in self.registry.pids() {
            self.watch_namespace(pid, None);
        }
        let (go_answers, mut go_rx) = mpsc::channel(probes::go::MAX_INSPECTIONS);
        if self.settings.context.go_runtime && self.probes.go_runtime_available() {
            self.go_inspector = Some(probes::go::spawn_inspector(go_answers)?);
            // Processes tracked before the inspector ran.
            for pid in self.registry.pids() {
                self.inspect_go(pid);
            }
        }

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
                Some(answer) = answers_rx.recv() => {
                    // What the kernel sent before goes first: a process found
                    // gone from /proc still has its last events waiting in the
                    // ring buffer (a data event wakes no one below the
                    // threshold), and forgetting it first would drop them
                    // (a short-lived client's last response: no span).
                    if matches!(answer, Answer::Gone(_)) {
                        reader.drain(|record| self.on_record(record));
                    }
                    self.on_answer(answer);
                }
                Some(found) = go_rx.recv() => self.on_go_inspected(found),
                Some(answer) = nat_rx.recv() => {
                    let now = monotonic_now();
                    self.linker.on_translation(answer.server, answer.translation, now);
                    self.on_links(now, false);
                }
                _ = tick.tick() => self.on_tick(),
                () = &mut shutdown => break,
            }
        }
        // Last records, then everything the close of the agent completes.
        reader.drain(|record| self.on_record(record));
        for pid in self.registry.pids() {
            self.table.forget_process(pid, &mut self.tracker, &mut self.outcomes, &self.telemetry);
        }
        self.flush_outcomes();
        self.on_links(monotonic_now(), true);
        self.tracker.flush(&self.telemetry);
        self.on_tick();
        Ok(())
    }

    /// One kernel record, through the data path.
    fn on_record(&mut self, record: &[u8]) {
        self.telemetry.inc(Counter::EventsReceived);
        let event = match capture::decode(record) {
            Ok(e) => e,
            Err(_) => {
                self.telemetry.inc(Counter::EventsMalformed);
                return;
            }
        };
        if matches!(event, Event::ConnClose(_)) {
            // The client end of a waiting link may be closing: its request
            // is in the table now and never again.
            self.retry_waiting_links();
        }
        let (table, tracker, out, t) = (&mut self.table, &mut self.tracker, &mut self.outcomes, &*self.telemetry);
        match event {
            Event::Data(d) => {
                if !self.registry.contains(d.header.pid) {
                    t.inc(Counter::EventsUntracked);
                    return;
                }
                let key = ConnKey { pid: d.header.pid, fd: d.header.fd };
                let h = &d.header;
                let thread = ThreadKey::of(h.pid, h.tid, h.loop_seq, h.goid);
                if d.tls {
                    table.tls_plaintext(key, t);
                }
                // A prefix is one chunk; a segmented capture (AMQP frames)
                // one per segment, with the bytes not captured between them.
                for chunk in d.chunks() {
                    table.data(key, d.tuple, d.role, thread, &chunk, tracker, out, t);
                }
                if d.tls {
                    table.tls_plaintext_seen(key);
                }
            }
            Event::ConnOpen(c) => {
                let key = ConnKey { pid: c.header.pid, fd: c.header.fd };
                let h = &c.header;
                let thread = ThreadKey::of(h.pid, h.tid, h.loop_seq, h.goid);
                table.open(key, c.tuple, c.role, thread, c.header.ts_exit, tracker, out, t);
            }
            Event::ConnClose(c) => table.close(ConnKey { pid: c.header.pid, fd: c.header.fd }, tracker, out, t),
            Event::ProcFork(p) => self.on_fork(p.header.pid, p.ppid, p.start_time_ticks()),
            Event::ProcExit(p) => self.forget(p.header.pid),
            Event::ProcExec(p) => self.on_exec(p.header.pid),
            Event::Async(a) => {
                if self.registry.contains(a.header.pid) {
                    let h = &a.header;
                    tracker.on_async(ThreadKey::of(h.pid, h.tid, h.loop_seq, h.goid), a.key, a.phase, t);
                }
            }
            Event::Goroutine(g) => self.on_goroutine(g),
        }
        self.flush_outcomes();
    }

    /// A request to the discovery thread; dropped (counted) when its queue is full.
    fn ask(&self, request: Request) {
        let sent = self.requests.as_ref().is_some_and(|r| r.try_send(request).is_ok());
        if !sent {
            self.telemetry.inc(Counter::DiscoveryRequestsDropped);
        }
    }

    /// Questions the link stage has for the conntrack thread; one that
    /// cannot be sent (queue full) is a failed lookup.
    fn ask_conntrack(&mut self, now: u64) {
        if !self.linker.has_queries() {
            return;
        }
        let queries: Vec<conntrack::Query> = self.linker.take_queries().collect();
        for query in queries {
            let server = query.server;
            let sent = self.conntrack.as_ref().is_some_and(|c| c.try_send(conntrack::Message::Query(query)).is_ok());
            if !sent {
                self.linker.on_translation(server, Translation::Failed, now);
            }
        }
    }

    /// What the discovery thread found.
    fn on_answer(&mut self, answer: Answer) {
        let execed = matches!(answer, Answer::Execed { tracked: true, .. });
        match answer {
            Answer::Scan(found) => self.on_scan(found),
            Answer::Forked(Some(info)) | Answer::Execed { info: Some(info), tracked: true } => {
                if self.registry.contains(info.pid) {
                    // An exec'd process may run another runtime now.
                    self.hook_runtimes(&info);
                }
                if execed {
                    // A watched process became another program: its TLS libraries.
                    self.ask(Request::TlsLibraries { pid: info.pid });
                }
                self.inspect_go(info.pid);
                match self.registry.refresh(&info) {
                    Refresh::NotTracked => {}
                    Refresh::Same => self.registry.publish_view(),
                    Refresh::Renamed { old } => {
                        self.router.forget(&old);
                        self.sinks.departed(old);
                        self.registry.publish_view();
                    }
                }
            }
            Answer::Execed { info: Some(info), tracked: false } => {
                if !self.registry.contains(info.pid) && self.track(&info) {
                    self.registry.publish_view();
                }
            }
            Answer::Forked(None) | Answer::Execed { info: None, .. } => {}
            Answer::Gone(pids) => {
                for pid in pids {
                    self.forget(pid);
                }
            }
            Answer::TlsLibraries(libraries) => {
                for library in libraries {
                    self.on_tls_library(&library);
                }
            }
            Answer::Database(answer) => {
                if let Some((key, tuple, backend)) = self.db_names.on_answer(answer, &self.telemetry) {
                    self.table.tell_database(key, &tuple, &backend.user, &backend.database);
                }
            }
        }
    }

    fn on_scan(&mut self, found: Vec<ProcessInfo>) {
        let mut changed = false;
        for info in found {
            match self.registry.on_found(&info) {
                Found::Known { changed: c } => {
                    changed |= c;
                    // A runtime library loaded since (import asyncio) is hooked now.
                    self.hook_runtimes(&info);
                }
                Found::Exited => {}
                Found::Reused => {
                    self.forget(info.pid);
                    changed |= self.track(&info);
                }
                Found::New => changed |= self.track(&info),
            }
        }
        if changed {
            self.registry.publish_view();
        }
    }

    /// Starts watching a process: the kernel map, then its Resource.
    fn track(&mut self, info: &ProcessInfo) -> bool {
        if let Err(e) = self.probes.track(info.pid) {
            tracing::warn!(pid = info.pid, "cannot track process: {e}");
            return false;
        }
        let service = self.registry.adopt(info);
        tracing::info!(pid = info.pid, exe = %info.exe_name, service = %service.name, "watching process");
        self.ask(Request::TlsLibraries { pid: info.pid });
        self.watch_namespace(info.pid, info.netns_inode);
        self.telemetry.inc(Counter::ProcessesTracked);
        self.hook_runtimes(info);
        self.inspect_go(info.pid);
        true
    }

    /// The conntrack thread opens its socket in a tracked process's network
    /// namespace while the process lives (a full queue skips it: the first
    /// question about the namespace opens it then).
    fn watch_namespace(&self, pid: u32, inode: Option<u64>) {
        let inode = inode.and_then(|i| u32::try_from(i).ok()).unwrap_or(0);
        if let Some(c) = &self.conntrack {
            let _ = c.try_send(conntrack::Message::Watch(conntrack::Namespace { inode, pid }));
        }
    }

    /// Runtime uprobes for a tracked process, once per process and runtime
    /// (one line per failure; the process keeps the syscall-only context
    /// rules without them).
    fn hook_runtimes(&mut self, info: &ProcessInfo) {
        for hooks in &info.runtime_hooks {
            let on = match hooks.runtime {
                Runtime::Libuv => self.settings.context.libuv_uprobes,
                Runtime::Asyncio => self.settings.context.asyncio_uprobes,
            };
            if !on {
                continue;
            }
            let runtime = hooks.runtime.as_str();
            match self.probes.hook(info.pid, hooks) {
                Ok(true) => {
                    tracing::info!(pid = info.pid, file = %hooks.path.display(), functions = hooks.points.len(), "{runtime} uprobes attached");
                    self.telemetry.add_for(Counter::UprobeAttach, runtime, "attached", 1);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(pid = info.pid, "{runtime} not followed: {e}");
                    self.telemetry.add_for(Counter::UprobeAttach, runtime, "failed", 1);
                }
            }
        }
    }

    /// A TLS library of a watched process: the uprobes go on its file once.
    fn on_tls_library(&mut self, library: &TlsLibrary) {
        if self.probes.tls_attached(library) {
            return;
        }
        let label = library.kind.label();
        if let Some(problem) = &library.problem {
            self.telemetry.add_for(Counter::TlsAttachFailed, "tls", label, 1);
            tracing::warn!(library = %library.mapped_as.display(), "TLS uprobes not attached: {problem}");
            return;
        }
        match self.probes.attach_tls(library) {
            Ok(programs) => {
                self.telemetry.add_for(Counter::TlsLibrariesAttached, "tls", label, 1);
                tracing::info!(library = %library.mapped_as.display(), programs, "TLS plaintext capture attached");
            }
            Err(e) => {
                self.telemetry.add_for(Counter::TlsAttachFailed, "tls", label, 1);
                tracing::warn!(library = %library.mapped_as.display(), "TLS uprobes not attached: {e}");
            }
        }
    }

    /// Asks whether a tracked process runs Go (answered in `on_go_inspected`).
    fn inspect_go(&self, pid: u32) {
        if let Some(inspector) = &self.go_inspector {
            if inspector.try_send(pid).is_err() {
                self.telemetry.add_for(Counter::GoRuntimeProcesses, "go", "inspector busy", 1);
            }
        }
    }

    /// What a tracked process's executable is: a Go program gets the
    /// runtime hooks; any other answer keeps per-thread context.
    fn on_go_inspected(&mut self, found: probes::go::Inspected) {
        if !self.registry.contains(found.pid) {
            return;
        }
        let t = &self.telemetry;
        match found.result {
            Ok(binary) => match self.probes.instrument_go(found.pid, &binary) {
                Ok((uprobes, tls)) => {
                    t.add_for(Counter::GoRuntimeProcesses, "go", "instrumented", 1);
                    if tls {
                        t.add_for(Counter::TlsLibrariesAttached, "tls", "go crypto/tls", 1);
                    }
                    tracing::info!(pid = found.pid, version = %binary.version, stripped = binary.stripped, uprobes, tls,
                        "Go runtime hooks attached: goroutines carry the current request");
                }
                Err(e) => {
                    t.add_for(Counter::GoRuntimeProcesses, "go", "attach failed", 1);
                    tracing::warn!(pid = found.pid, "Go runtime hooks not attached, per-thread context: {e}");
                }
            },
            Err(probes::go::InspectError::NotGo) => t.add_for(Counter::GoRuntimeProcesses, "go", "not go", 1),
            Err(e) => {
                t.add_for(Counter::GoRuntimeProcesses, "go", e.reason(), 1);
                tracing::warn!(pid = found.pid, "Go runtime hooks not attached, per-thread context: {e}");
            }
        }
    }

    /// A goroutine created, woken up or gone (Go runtime hooks).
    fn on_goroutine(&mut self, g: capture::GoroutineEvent) {
        let pid = g.header.pid;
        if !self.registry.contains(pid) {
            return;
        }
        self.telemetry.inc(Counter::GoroutineEvents);
        let t = &*self.telemetry;
        match g.relation {
            capture::GoroutineRelation::Created => self.tracker.on_goroutine_created(pid, g.from, g.to, t),
            capture::GoroutineRelation::Readied => self.tracker.on_goroutine_readied(pid, g.from, g.to, t),
            capture::GoroutineRelation::Exited => self.tracker.on_goroutine_exited(pid, g.to),
        }
    }

    /// The kernel tracks a child of a tracked process from its fork: it is
    /// its parent's copy until the discovery thread has read it.
    fn on_fork(&mut self, pid: u32, ppid: u32, start_time_ticks: u64) {
        if self.registry.adopt_child(pid, ppid, start_time_ticks) {
            self.telemetry.inc(Counter::ProcessesTracked);
            self.registry.publish_view();
            self.ask(Request::Fork { pid });
        }
    }

    fn on_exec(&mut self, pid: u32) {
        let tracked = self.registry.contains(pid);
        if tracked {
            // A new executable: the Go hooks of the old one are void.
            self.probes.forget_go(pid);
            // Its fds may have been closed by O_CLOEXEC without close().
            self.table.forget_process(pid, &mut self.tracker, &mut self.outcomes, &self.telemetry);
            self.flush_outcomes();
            self.probes.purge_connections(pid);
            // Its uprobes went with its old image; the new one is hooked
            // when the discovery thread has read it.
            self.probes.unhook(pid);
        } else if self.settings.selector.exe_globs.is_none() {
            return;
        }
        self.ask(Request::Exec { pid, tracked });
    }

    /// A watched process exited: what its exit completes still becomes its
    /// spans, then it is forgotten.
    fn forget(&mut self, pid: u32) {
        if !self.registry.contains(pid) {
            return;
        }
        self.table.forget_process(pid, &mut self.tracker, &mut self.outcomes, &self.telemetry);
        self.flush_outcomes();
        self.tracker.forget_process(pid);
        let Some(service) = self.registry.remove(pid) else { return };
        self.probes.untrack(pid);
        self.router.forget(&service.instance_id);
        self.sinks.departed(service.instance_id.clone());
        self.telemetry.inc(Counter::ProcessesForgotten);
        tracing::info!(pid, service = %service.name, "process exited");
        self.registry.publish_view();
    }

    fn on_tick(&mut self) {
        self.clock = Clock::new();
        self.copy_kernel_counters();
        let now = monotonic_now();
        self.table.sweep(now, IDLE_NS, EXPIRE_NS, &mut self.tracker, &mut self.outcomes, &self.telemetry);
        self.flush_outcomes();
        self.tracker.sweep(now, &self.telemetry);
        self.on_links(now, false);
        // Exits whose event was lost (ring buffer full) are caught here.
        self.ask(Request::Alive(self.registry.pids()));
        self.sinks.tick();
    }

    /// The kernel's per-CPU counters, summed, into the agent's.
    fn copy_kernel_counters(&self) {
        let k = self.probes.kernel_counters();
        let t = &self.telemetry;
        let c = |c: periscope_counter| k[c as usize];
        t.set(Counter::EventsLostRingbuf, c(periscope_counter::PERISCOPE_CNT_RINGBUF_FULL));
        t.set(Counter::EventsLostPending, c(periscope_counter::PERISCOPE_CNT_PENDING_FULL));
        t.set(Counter::KernelConnMapFull, c(periscope_counter::PERISCOPE_CNT_CONN_FULL));
        t.set(Counter::KernelIovTruncated, c(periscope_counter::PERISCOPE_CNT_IOV_TRUNCATED));
        t.set(Counter::KernelReadFailed, c(periscope_counter::PERISCOPE_CNT_READ_FAILED));
        t.set_for(
            Counter::KernelCaptureIncomplete,
            "amqp",
            "framing unknown",
            c(periscope_counter::PERISCOPE_CNT_AMQP_UNALIGNED),
        );
        t.set_for(
            Counter::KernelCaptureIncomplete,
            "amqp",
            "limits",
            c(periscope_counter::PERISCOPE_CNT_AMQP_TRUNCATED),
        );
        t.set_for(
            Counter::KernelCaptureIncomplete,
            "http2",
            "framing unknown",
            c(periscope_counter::PERISCOPE_CNT_H2_UNALIGNED),
        );
        t.set_for(
            Counter::KernelCaptureIncomplete,
            "http2",
            "limits",
            c(periscope_counter::PERISCOPE_CNT_H2_TRUNCATED),
        );
        t.set(Counter::TlsCiphertextDropped, c(periscope_counter::PERISCOPE_CNT_TLS_CIPHERTEXT));
        t.set_for(
            Counter::TlsPlaintextDropped,
            "tls",
            "socket unknown",
            c(periscope_counter::PERISCOPE_CNT_TLS_NO_SOCKET),
        );
        t.set(Counter::TlsPlaintextEvents, c(periscope_counter::PERISCOPE_CNT_TLS_DATA_EVENTS));
    }
}
