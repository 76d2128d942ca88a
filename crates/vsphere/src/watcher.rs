//! The task watcher: one background task per client that learns about task completions
//! through a single outstanding `WaitForUpdatesEx` long poll.
//!
//! Layout on the server, rebuilt after every re-login (filters and views belong to the
//! session):
//! - a dedicated PropertyCollector (`CreatePropertyCollector`), so nobody else's filters
//!   show up in our updates and ours can be dropped with the collector;
//! - one ListView holding the watched tasks, changed with batched `ModifyListView` calls;
//! - one filter on that view for `info.state`, `info.result`, `info.error`, `info.entity`.
//!
//! A task added to the view enters the filter with its current properties, so a task that
//! finished before it was registered is still reported. Registrations are therefore batched
//! without hurry: they wait while more keep arriving (up to [`MAX_BATCH`]) and share one
//! `ModifyListView`, while the outstanding `WaitForUpdatesEx` is still answered at once; the
//! next long poll goes out as soon as an answer is in. Watching N tasks costs one
//! `ModifyListView` per batch of registrations plus one `WaitForUpdatesEx` per batch of
//! changes (the tasks entering the view are one); finished tasks leave the view with the next
//! batch of additions instead of a call of their own.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::base::MoRef;
use crate::error::Error;
use crate::fault::{Fault, FaultKind};
use crate::session::{ServerObjects, Session};
use crate::soap::{self, req, ObjectUpdate};
use crate::types::{TaskInfo, TaskState};
use crate::xml::{Node, Writer};

/// Registrations arriving within this window of the first share one `ModifyListView`...
const BATCH_WINDOW: Duration = Duration::from_millis(25);
/// ... and so do later ones while the gap between two stays below this ...
const BATCH_QUIET: Duration = Duration::from_millis(10);
/// ... up to this long after the first.
const MAX_BATCH: Duration = Duration::from_millis(100);
/// While tasks are in flight, the next long poll goes out this long after an answer, so that
/// changes close together share one answer (about the old 25 ms batching's call rate at half
/// its latency; clones started together then stay together).
const ANSWER_GAP: Duration = Duration::from_millis(15);
/// Consecutive failed rounds after which the waiters get the error instead of waiting on.
const MAX_FAILURES: u32 = 3;
/// Finished tasks kept in the view before a dedicated removal call is worth it.
const MAX_STALE_IN_VIEW: usize = 1000;
/// Final states remembered for tasks that left the view. Someone waiting again on such a
/// task is answered from memory: a task re-added to a view may not be reported again (the
/// simulator sends no `leave` on removal, so a re-add is no `enter` either).
const MAX_KNOWN: usize = 50_000;

const TASK_PROPS: &[&str] = &["info.state", "info.result", "info.error", "info.entity"];

pub(crate) enum Cmd {
    Watch {
        task: MoRef,
        reply: oneshot::Sender<Result<TaskInfo, Error>>,
    },
    Shutdown,
}

type Reply = oneshot::Sender<Result<TaskInfo, Error>>;

/// What the filter told us so far about a task.
#[derive(Default, Debug, Clone)]
struct Known {
    state: Option<TaskState>,
    result: Option<MoRef>,
    error: Option<Fault>,
    entity: Option<MoRef>,
}

/// Server-side objects of the current session.
struct ServerSide {
    /// Destroys the collector and the view whichever way the watcher drops them.
    objects: ServerObjects,
    pc: MoRef,
    view: MoRef,
    version: String,
    in_view: HashSet<MoRef>,
}

struct Watcher {
    session: Arc<Session>,
    waiters: HashMap<MoRef, Vec<Reply>>,
    /// When each waited-for task was last heard of (registered, reported, or read directly).
    heard: HashMap<MoRef, tokio::time::Instant>,
    known: HashMap<MoRef, Known>,
    server: Option<ServerSide>,
    failures: u32,
    /// When the first and the last registration not yet in the view arrived.
    unsynced: Option<(Instant, Instant)>,
}

pub(crate) async fn run(session: Arc<Session>, mut rx: mpsc::UnboundedReceiver<Cmd>) {
    let mut reconnects = inner_reconnects(&session);
    let mut w = Watcher {
        session,
        waiters: HashMap::new(),
        heard: HashMap::new(),
        known: HashMap::new(),
        server: None,
        failures: 0,
        unsynced: None,
    };
    loop {
        if w.waiters.is_empty() {
            // Idle: no calls at all until someone waits (the keepalive covers the session).
            match rx.recv().await {
                Some(Cmd::Watch { task, reply }) => w.add_waiter(task, reply),
                Some(Cmd::Shutdown) | None => return w.fail_all(|| Error::Closed),
            }
        }
        if !w.take_queued(&mut rx) {
            return w.fail_all(|| Error::Closed);
        }
        match w.round(&mut rx, &mut reconnects).await {
            Ok(true) if !w.waiters.is_empty() => {
                // Tasks still in flight: let changes that come close together share the next
                // answer (clones started together then end together, and are reported so).
                if !w.pause(&mut rx, Instant::now() + ANSWER_GAP).await {
                    return w.fail_all(|| Error::Closed);
                }
            }
            Ok(_) => {}
            Err(Error::Closed) => return w.fail_all(|| Error::Closed),
            Err(e) => w.on_error(e).await,
        }
    }
}

fn inner_reconnects(session: &Session) -> tokio::sync::watch::Receiver<u64> {
    session.reconnects()
}

impl Watcher {
    fn add_waiter(&mut self, task: MoRef, reply: Reply) {
        // Already known to be finished (a second waiter on the same task): answer at once.
        if let Some(k) = self.known.get(&task) {
            if k.state.is_some_and(TaskState::is_finished) {
                let _ = reply.send(Ok(task_info(&task, k)));
                return;
            }
        }
        let now = Instant::now();
        self.heard.entry(task.clone()).or_insert(now);
        let in_view = self
            .server
            .as_ref()
            .is_some_and(|s| s.in_view.contains(&task));
        if !in_view {
            self.unsynced = Some(self.unsynced.map_or((now, now), |(first, _)| (first, now)));
        }
        self.waiters.entry(task).or_default().push(reply);
    }

    /// When the registrations not yet in the view are to be added: [`BATCH_WINDOW`] after
    /// the first, later while more keep coming, [`MAX_BATCH`] after the first at the latest.
    fn batch_deadline(&self) -> Option<Instant> {
        self.unsynced.map(|(first, last)| {
            (first + BATCH_WINDOW)
                .max(last + BATCH_QUIET)
                .min(first + MAX_BATCH)
        })
    }

    /// Reads every waited-for task that has been silent for `task_silence` directly and
    /// answers those that are finished. A watch can miss an update (seen with the simulator
    /// under load: one clone of 10,000 stayed "running" for minutes after it had finished);
    /// this bounds how long a missed update can hold a worker. Tasks that finish sooner (nearly
    /// all linked clones) never cost this call; a silent one costs one `RetrievePropertiesEx`
    /// per stretch of silence.
    async fn read_silent(&mut self) {
        let now = tokio::time::Instant::now();
        let silence = self.session.task_silence;
        let silent: Vec<MoRef> = self
            .heard
            .iter()
            .filter(|(t, at)| now - **at >= silence && self.waiters.contains_key(*t))
            .map(|(t, _)| t.clone())
            .collect();
        for task in silent {
            self.heard.insert(task.clone(), now);
            match self.session.task_info(&task).await {
                Ok(info) if info.state.is_finished() => {
                    tracing::warn!(%task, state = ?info.state, "task finished without the property collector reporting it; read it directly");
                    self.known.insert(
                        task.clone(),
                        Known {
                            state: Some(info.state),
                            result: info.result.clone(),
                            error: info.error.clone(),
                            entity: info.entity.clone(),
                        },
                    );
                    self.heard.remove(&task);
                    for reply in self.waiters.remove(&task).unwrap_or_default() {
                        let _ = reply.send(Ok(info.clone()));
                    }
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.fault_kind(),
                        Some(FaultKind::ManagedObjectNotFound { .. })
                    ) =>
                {
                    self.fail_task(&task);
                }
                // The long poll notices a broken connection; try again after the next stretch.
                Err(e) => tracing::debug!(%task, error = %e, "direct read of a silent task failed"),
            }
        }
    }

    /// When the longest-silent waited-for task reaches `task_silence`.
    fn next_silence_check(&self) -> tokio::time::Instant {
        let silence = self.session.task_silence;
        self.heard
            .values()
            .min()
            .map_or_else(|| tokio::time::Instant::now() + silence, |at| *at + silence)
    }

    /// Takes registrations until `until`. False on shutdown.
    async fn pause(&mut self, rx: &mut mpsc::UnboundedReceiver<Cmd>, until: Instant) -> bool {
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Watch { task, reply }) => self.add_waiter(task, reply),
                    Some(Cmd::Shutdown) | None => return false,
                },
            }
        }
    }

    /// Takes the registrations already queued, without waiting. False on shutdown.
    fn take_queued(&mut self, rx: &mut mpsc::UnboundedReceiver<Cmd>) -> bool {
        loop {
            match rx.try_recv() {
                Ok(Cmd::Watch { task, reply }) => self.add_waiter(task, reply),
                Ok(Cmd::Shutdown) | Err(mpsc::error::TryRecvError::Disconnected) => return false,
                Err(mpsc::error::TryRecvError::Empty) => return true,
            }
        }
    }

    /// Set up if needed, then long-poll until there is news; registrations meanwhile are
    /// added to the view when their batch is due (see [`Watcher::batch_deadline`]), and the
    /// outstanding long poll then also returns.
    async fn round(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Cmd>,
        reconnects: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Result<bool, Error> {
        let generation = self.session.session_generation();
        if self
            .server
            .as_ref()
            .is_none_or(|s| s.objects.generation() != generation)
        {
            self.setup().await?;
            // A new view holds nothing yet: every waited-for task goes in now.
            self.sync_view().await?;
        } else if self.batch_deadline().is_some_and(|at| at <= Instant::now()) {
            self.sync_view().await?;
        }
        if self.waiters.is_empty() {
            return Ok(false);
        }
        let server = self.server.as_ref().ok_or(Error::Closed)?;
        let pc = server.pc.clone();
        let version = server.version.clone();
        let session = Arc::clone(&self.session);
        // maxWaitSeconds stays well below the HTTP timeout of the call.
        let max_wait = (session.call_timeout.as_secs() * 2 / 3).clamp(1, 60);
        let wait = async move {
            let mut w = Writer::new();
            w.moref("_this", &pc);
            if !version.is_empty() {
                w.text("version", &version);
            }
            w.open("options")
                .text("maxWaitSeconds", &max_wait.to_string())
                .close("options");
            session.call("WaitForUpdatesEx", w.finish()).await
        };
        tokio::pin!(wait);
        loop {
            tokio::select! {
                res = &mut wait => {
                    let resp = res?;
                    // A truncated answer needs no special care here: the next round asks
                    // again at once, and nothing is concluded from what an answer omits.
                    let set = soap::parse_update_set(resp.body()?)?;
                    self.failures = 0;
                    if let (Some(v), Some(s)) = (set.version, self.server.as_mut()) {
                        s.version = v;
                    }
                    self.apply(set.updates);
                    return Ok(true);
                }
                cmd = rx.recv() => {
                    match cmd {
                        Some(Cmd::Watch { task, reply }) => self.add_waiter(task, reply),
                        Some(Cmd::Shutdown) | None => return Err(Error::Closed),
                    }
                }
                _ = sleep_until_some(self.batch_deadline()) => {
                    // The outstanding wait returns once the view change is visible.
                    self.sync_view().await?;
                }
                _ = tokio::time::sleep_until(self.next_silence_check()) => {
                    self.read_silent().await;
                    if self.waiters.is_empty() {
                        return Ok(false);
                    }
                }
                changed = reconnects.changed() => {
                    if changed.is_err() {
                        return Err(Error::Closed);
                    }
                    // The long poll belongs to the old session: drop it and rebuild.
                    return Ok(false);
                }
            }
        }
    }

    async fn setup(&mut self) -> Result<(), Error> {
        self.server = None;
        self.known.clear();
        let content = &self.session.content;
        // A half-done setup drops `objects`, which destroys what was made.
        let mut objects = ServerObjects::new(&self.session);
        let pc = objects.create_collector().await?;
        let body = Session::this_body(&content.view_manager);
        let view = objects.create_view("CreateListView", body).await?;

        const CF: &str = "CreateFilter";
        let mut w = Writer::new();
        w.moref("_this", &pc).open("spec");
        req::filter_spec_view(&mut w, "Task", TASK_PROPS, &view);
        w.close("spec").boolean("partialUpdates", false);
        self.session.call(CF, w.finish()).await?;
        tracing::debug!(collector = %pc, view = %view, "task watcher ready");
        self.server = Some(ServerSide {
            objects,
            pc,
            view,
            version: String::new(),
            in_view: HashSet::new(),
        });
        Ok(())
    }

    /// One `ModifyListView` adding every waited-for task not yet in the view and removing
    /// finished ones (only when something is added anyway, or too many piled up).
    async fn sync_view(&mut self) -> Result<(), Error> {
        const M: &str = "ModifyListView";
        for _attempt in 0..8 {
            let Some(server) = self.server.as_mut() else {
                return Ok(());
            };
            let add: Vec<MoRef> = self
                .waiters
                .keys()
                .filter(|t| !server.in_view.contains(*t))
                .cloned()
                .collect();
            let stale: Vec<MoRef> = server
                .in_view
                .iter()
                .filter(|t| !self.waiters.contains_key(*t))
                .cloned()
                .collect();
            if add.is_empty() && stale.len() < MAX_STALE_IN_VIEW {
                self.unsynced = None;
                return Ok(());
            }
            let mut w = Writer::new();
            w.moref("_this", &server.view);
            for t in &add {
                w.moref("add", t);
            }
            for t in &stale {
                w.moref("remove", t);
            }
            match self.session.call(M, w.finish()).await {
                Ok(resp) => {
                    let body = resp.body()?;
                    for t in &stale {
                        server.in_view.remove(t);
                    }
                    if self.known.len() > MAX_KNOWN {
                        let in_view = &server.in_view;
                        self.known.retain(|t, _| in_view.contains(t));
                    }
                    // vCenter lists the objects it could not add (already deleted).
                    let missing: Vec<MoRef> = body
                        .children_named("returnval")
                        .filter_map(Node::as_moref)
                        .collect();
                    for t in add {
                        if !missing.contains(&t) {
                            server.in_view.insert(t);
                        }
                    }
                    for t in missing {
                        self.fail_task(&t);
                    }
                    self.unsynced = None;
                    return Ok(());
                }
                // The simulator faults instead, naming the first missing task.
                Err(Error::Fault(Fault {
                    kind: FaultKind::ManagedObjectNotFound { obj: Some(obj) },
                    ..
                })) if self.waiters.contains_key(&obj) => {
                    for t in &stale {
                        server.in_view.remove(t);
                    }
                    self.fail_task(&obj);
                }
                Err(e) => return Err(e),
            }
        }
        // Still some left to add: try again after a batch window, not in a tight loop.
        let now = Instant::now();
        self.unsynced = Some((now, now));
        Ok(())
    }

    fn fail_task(&mut self, task: &MoRef) {
        self.heard.remove(task);
        for reply in self.waiters.remove(task).unwrap_or_default() {
            let _ = reply.send(Err(not_found(task)));
        }
    }

    fn apply(&mut self, updates: Vec<ObjectUpdate<'_>>) {
        let mut touched = Vec::new();
        for u in updates {
            if u.kind == "leave" {
                self.known.remove(&u.obj);
                self.fail_task(&u.obj);
                continue;
            }
            let k = self.known.entry(u.obj.clone()).or_default();
            for (name, val) in u.changes {
                match name.as_ref() {
                    "info.state" => {
                        k.state = val.as_ref().and_then(|v| TaskState::parse(&v.text));
                    }
                    "info.result" => k.result = val.as_ref().and_then(Node::as_moref),
                    "info.error" => k.error = val.as_ref().map(soap::parse_localized_fault),
                    "info.entity" => k.entity = val.as_ref().and_then(Node::as_moref),
                    "info" => {
                        if let Some(Ok(ti)) = val
                            .as_ref()
                            .map(|v| soap::parse_task_info("WaitForUpdatesEx", v))
                        {
                            *k = Known {
                                state: Some(ti.state),
                                result: ti.result,
                                error: ti.error,
                                entity: ti.entity,
                            };
                        }
                    }
                    _ => {}
                }
            }
            if let Some(at) = self.heard.get_mut(&u.obj) {
                *at = tokio::time::Instant::now();
            }
            touched.push(u.obj);
        }
        for task in touched {
            let Some(k) = self.known.get(&task) else {
                continue;
            };
            if k.state.is_some_and(TaskState::is_finished) {
                let info = task_info(&task, k);
                self.heard.remove(&task);
                for reply in self.waiters.remove(&task).unwrap_or_default() {
                    let _ = reply.send(Ok(info.clone()));
                }
            }
        }
    }

    async fn on_error(&mut self, e: Error) {
        let relogged = self
            .server
            .as_ref()
            .is_some_and(|s| s.objects.generation() != self.session.session_generation());
        // Whatever failed, the server-side objects are suspect: drop (destroy) and rebuild them.
        self.server = None;
        if relogged {
            tracing::debug!("task watcher rebuilding its filter after a re-login");
            return;
        }
        self.failures += 1;
        tracing::warn!(error = %e, failures = self.failures, "task watcher round failed");
        if self.failures >= MAX_FAILURES {
            let detail = e.to_string();
            let transient = e.is_transient();
            let url = self.session.url_display.clone();
            self.fail_all(|| {
                if transient {
                    Error::Transport {
                        method: "WaitForUpdatesEx",
                        url: url.clone(),
                        detail: detail.clone(),
                        source: None,
                    }
                } else {
                    Error::parse("WaitForUpdatesEx", detail.clone())
                }
            });
            self.failures = 0;
        }
        let backoff = Duration::from_millis(250 * 2u64.pow(self.failures.min(4)));
        tokio::time::sleep(backoff).await;
    }

    fn fail_all(&mut self, err: impl Fn() -> Error) {
        self.heard.clear();
        for (_, replies) in self.waiters.drain() {
            for r in replies {
                let _ = r.send(Err(err()));
            }
        }
    }
}

/// Sleeps until `at`; forever when None.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn task_info(task: &MoRef, k: &Known) -> TaskInfo {
    TaskInfo {
        moref: task.clone(),
        state: k.state.unwrap_or(TaskState::Running),
        result: k.result.clone(),
        error: k.error.clone(),
        entity: k.entity.clone(),
    }
}

fn not_found(task: &MoRef) -> Error {
    Error::Fault(Fault::new(
        FaultKind::ManagedObjectNotFound {
            obj: Some(task.clone()),
        },
        format!("task {task} no longer exists; look the VM up by its instance UUID"),
    ))
}
