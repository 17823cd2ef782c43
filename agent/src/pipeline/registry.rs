//! The watched processes: their Resources (`service.*`, `process.*`,
//! Kubernetes metadata), the ones that exited lately, and the `/targets`
//! view. Reads nothing from /proc itself: the discovery thread does, and
//! its answers come here.
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    discovery::{self, ProcessInfo, ServiceOptions},
    kubernetes::KubernetesMetadata,
    model::{AttrValue, Service, ServiceRef},
    semconv,
};

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
    /// From /proc/PID/stat; 0 for a forked child not read yet.
    start_time: u64,
    exe: String,
    /// The process is in a pod whose metadata had not arrived at this
    /// generation of the metadata store: resolve its Resource again once the
    /// store has changed.
    awaiting_kubernetes: Option<u64>,
}

/// What a scan's match is to the registry.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// Tracked already (`changed`: its Resource was resolved again).
    Known { changed: bool },
    /// Its pid now belongs to another process: forget the old one first.
    Reused,
    /// Not tracked: to adopt.
    New,
    /// It exited since the scan read /proc: leave it.
    Exited,
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
    list: VecDeque<(Instant, u32, u64)>,
}

impl Exited {
    fn remember(&mut self, pid: u32, start_time: u64) {
        let now = Instant::now();
        while self.list.front().is_some_and(|(at, ..)| now.duration_since(*at) > EXITED_KEEP)
            || self.list.len() >= MAX_EXITED
        {
            self.list.pop_front();
        }
        self.list.push_back((now, pid, start_time));
    }

    fn contains(&self, pid: u32, start_time: u64) -> bool {
        let now = Instant::now();
        self.list
            .iter()
            .rev()
            .any(|(at, p, s)| *p == pid && (*s == start_time || *s == 0) && now.duration_since(*at) <= EXITED_KEEP)
    }
}

pub struct Registry {
    targets: HashMap<u32, Target>,
    exited: Exited,
    view: TargetsView,
    opts: ServiceOptions,
    kubernetes: Option<KubernetesMetadata>,
}

impl Registry {
    pub fn new(opts: ServiceOptions, view: TargetsView, kubernetes: Option<KubernetesMetadata>) -> Self {
        Self { targets: HashMap::new(), exited: Exited::default(), view, opts, kubernetes }
    }

    pub fn service(&self, pid: u32) -> Option<&ServiceRef> {
        self.targets.get(&pid).map(|t| &t.service)
    }

    pub fn contains(&self, pid: u32) -> bool {
        self.targets.contains_key(&pid)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.targets.keys().copied().collect()
    }

    /// What to do with one process a scan matched.
    pub fn on_found(&mut self, info: &ProcessInfo) -> Found {
        if self.exited.contains(info.pid, info.start_time_ticks) {
            return Found::Exited;
        }
        match self.targets.get_mut(&info.pid) {
            Some(t) if t.start_time == info.start_time_ticks => Found::Known { changed: self.retry_kubernetes(info) },
            // A child tracked from its fork before /proc could be read.
            Some(t) if t.start_time == 0 => {
                t.start_time = info.start_time_ticks;
                Found::Known { changed: false }
            }
            Some(_) => Found::Reused,
            None => Found::New,
        }
    }

    /// A process the kernel now tracks: its Resource.
    pub fn adopt(&mut self, info: &ProcessInfo) -> ServiceRef {
        let (service, awaiting_kubernetes) = self.resolve(info);
        let service = Arc::new(service);
        let target = Target {
            service: service.clone(),
            start_time: info.start_time_ticks,
            exe: info.exe_name.clone(),
            awaiting_kubernetes,
        };
        self.targets.insert(info.pid, target);
        service
    }

    /// A child of tracked `ppid` (the kernel tracks it from its fork): its
    /// parent's Resource with its own pid and instance id (from the start
    /// time the kernel gave with the fork), until /proc tells more
    /// ([`Registry::refresh`]). False when the parent is not tracked.
    /// `start_time` stays unconfirmed (0) until a scan or the refresh reads it.
    pub fn adopt_child(&mut self, pid: u32, ppid: u32, start_time_ticks: u64) -> bool {
        let Some(parent) = self.targets.get(&ppid) else { return false };
        let service = Arc::new(child_service(&parent.service, pid, &self.opts.host_name, start_time_ticks));
        let exe = parent.exe.clone();
        self.targets.insert(pid, Target { service, start_time: 0, exe, awaiting_kubernetes: None });
        true
    }

    /// What /proc says a tracked process is now (after its fork or exec):
    /// its Resource again.
    pub fn refresh(&mut self, info: &ProcessInfo) -> Refresh {
        let Some(before) = self.targets.get(&info.pid).map(|t| t.service.instance_id.clone()) else {
            return Refresh::NotTracked;
        };
        let after = self.adopt(info);
        if after.instance_id == before {
            Refresh::Same
        } else {
            Refresh::Renamed { old: before }
        }
    }

    /// The process exited: forgotten, and remembered as exited.
    pub fn remove(&mut self, pid: u32) -> Option<ServiceRef> {
        let target = self.targets.remove(&pid)?;
        self.exited.remember(pid, target.start_time);
        Some(target.service)
    }

    /// The Resource of a process; with the metadata store's generation when
    /// its pod's metadata has not arrived yet.
    fn resolve(&self, info: &ProcessInfo) -> (Service, Option<u64>) {
        let generation = self.kubernetes.as_ref().map_or(0, KubernetesMetadata::generation);
        let r = discovery::resolve_service(info, &self.opts, self.kubernetes.as_ref());
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

    /// Publishes the `/targets` view.
    pub fn publish_view(&self) {
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

/// What [`Registry::refresh`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Refresh {
    /// The process is not tracked (any more).
    NotTracked,
    /// Its Resource was rebuilt; same instance id.
    Same,
    /// Its instance id changed (the start time /proc gives differs from the
    /// one derived at fork: an agent in a time namespace): what was kept
    /// under `old` is to be retired like a departed service's.
    Renamed { old: String },
}

/// The Resource of a forked child: its parent's, with its own pid and instance id.
fn child_service(parent: &Service, pid: u32, host: &str, start_time_ticks: u64) -> Service {
    let mut service = parent.clone();
    service.instance_id = discovery::instance_id(host, pid, start_time_ticks);
    for (key, value) in &mut service.attributes {
        if key == semconv::PROCESS_PID {
            *value = AttrValue::Int(i64::from(pid));
        }
    }
    service
}

#[cfg(test)]
mod tests {
    use super::*;

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
            instance_id: "box-10-500".into(),
            attributes: vec![("process.pid".into(), AttrValue::Int(10))],
        };
        let child = child_service(&parent, 11, "box", 777);
        assert_eq!(child.instance_id, "box-11-777");
        assert_eq!(child.attributes[0].1, AttrValue::Int(11));
        assert_eq!(child.name, "postgres");
        let resource: Vec<_> = child.resource_attributes().map(|(k, v)| (k.to_owned(), v.into_owned())).collect();
        assert_eq!(resource[1], ("service.instance.id".to_owned(), AttrValue::Str("box-11-777".into())));
    }

    /// A forked child keeps the instance id the kernel's start time gave it
    /// when /proc confirms that time; a differing one renames it, and the
    /// old id is handed back to be retired.
    #[test]
    fn a_childs_instance_id_survives_the_refresh_from_proc() {
        let opts = ServiceOptions { host_name: "box".into(), ..Default::default() };
        let mut r = Registry::new(opts, TargetsView::default(), None);
        let parent = ProcessInfo { pid: 10, start_time_ticks: 500, exe_name: "gunicorn".into(), ..Default::default() };
        r.adopt(&parent);
        assert!(r.adopt_child(11, 10, 777));
        assert!(!r.adopt_child(12, 99, 1), "the parent is not tracked");
        assert_eq!(r.service(11).unwrap().instance_id, "box-11-777");
        let child = ProcessInfo { pid: 11, ppid: 10, start_time_ticks: 777, ..parent.clone() };
        assert_eq!(r.on_found(&child), Found::Known { changed: false }, "start time confirmed by a scan");
        assert_eq!(r.refresh(&child), Refresh::Same);
        let shifted = ProcessInfo { start_time_ticks: 778, ..child.clone() };
        assert_eq!(r.refresh(&shifted), Refresh::Renamed { old: "box-11-777".into() });
        assert_eq!(r.service(11).unwrap().instance_id, "box-11-778");
        assert_eq!(r.refresh(&ProcessInfo { pid: 13, ..child }), Refresh::NotTracked);
    }
}
