//! Watching VMs: one ContainerView over the whole inventory on a dedicated PropertyCollector,
//! followed with `WaitForUpdatesEx` long polls. Changes to any VM (appeared, power state
//! changed, gone, what VMware Tools report of its guest) reach the caller in batches, without
//! polling any VM. The same collector follows the `latestPage` of an EventHistoryCollector
//! filtered to the guest customization events, so their outcome arrives the same way.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::base::{MoRef, PowerState};
use crate::error::Error;
use crate::session::{ServerObjects, Session};
use crate::soap::{self, req, ObjectUpdate};
use crate::xml::Writer;

/// What happened to a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmChange {
    /// The VM is in the inventory (every VM is reported so after each (re)start of the watch).
    Present(Option<PowerState>),
    /// Its power state changed.
    Power(PowerState),
    /// It left the inventory (destroyed, or unregistered).
    Gone,
    /// vCenter cannot read it (datastore outage: `runtime.connectionState` inaccessible or
    /// invalid, or its properties answered with a `missingSet`). It still exists; a later
    /// change reports it readable again (`Present` or `Power`).
    Inaccessible,
    /// What VMware Tools report of the guest changed (reported with `Present` too, after each
    /// (re)start of the watch: what they report then).
    Guest(GuestReport),
    /// vCenter posted a guest customization event for the VM.
    Customization(Customization),
}

/// The `guest.*` properties an update carried. A field is None when the update did not
/// carry that property, `Some("")` when the property is unset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestReport {
    /// `guest.toolsRunningStatus`: `guestToolsRunning` once VMware Tools run.
    pub tools_running_status: Option<String>,
    /// `guest.ipAddress`: the guest's primary address.
    pub ip_address: Option<String>,
}

/// A guest customization event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Customization {
    /// `CustomizationStartedEvent`.
    Started,
    /// `CustomizationSucceeded`.
    Succeeded,
    /// A `CustomizationFailed` event (or one of its subtypes), with vCenter's message.
    Failed(String),
}

/// The customization events the watch follows: every concrete type vim25 has (vCenter
/// matches `eventTypeId` by exact type).
const CUSTOMIZATION_EVENTS: &[&str] = &[
    "CustomizationStartedEvent",
    "CustomizationSucceeded",
    "CustomizationFailed",
    "CustomizationSysprepFailed",
    "CustomizationLinuxIdentityFailed",
    "CustomizationNetworkSetupFailed",
    "CustomizationUnknownFailure",
];

/// Events the collector keeps in `latestPage`: events posted between two answers beyond
/// this many are not seen (a desktop whose success was missed fails at its ready timeout).
const EVENT_PAGE: u32 = 200;

/// One VM's change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmEvent {
    /// The VM.
    pub vm: MoRef,
    /// What changed.
    pub change: VmChange,
}

/// Starts the watch task (see [`crate::Client::watch_vms`]).
pub(crate) fn start(session: Arc<Session>) -> VmWatch {
    let (tx, rx) = mpsc::channel(16);
    let (expect_tx, expect_rx) = mpsc::unbounded_channel();
    tokio::spawn(run(session, tx, expect_rx));
    VmWatch {
        rx,
        expect: VmExpect(expect_tx),
    }
}

/// A running VM watch: its batches of changes, and a way to tell it about VMs made meanwhile.
#[derive(Debug)]
pub struct VmWatch {
    rx: mpsc::Receiver<Vec<VmEvent>>,
    expect: VmExpect,
}

impl VmWatch {
    /// The next batch of changes; None once the watch has ended.
    pub async fn recv(&mut self) -> Option<Vec<VmEvent>> {
        self.rx.recv().await
    }

    /// A handle to announce VMs to this watch (see [`VmExpect::expect`]).
    pub fn expecter(&self) -> VmExpect {
        self.expect.clone()
    }
}

/// What the caller tells the watch of a VM.
#[derive(Debug)]
enum Announce {
    /// The caller just made it (see [`VmExpect::expect`]).
    Made(MoRef),
    /// The caller powered it on and waits for its guest (see [`VmExpect::await_guest`]).
    AwaitGuest(MoRef),
}

/// Announces VMs to a [`VmWatch`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct VmExpect(mpsc::UnboundedSender<Announce>);

impl VmExpect {
    /// Tells the watch that `vm` exists now (the caller just made it). A VM made and removed
    /// between two answers of the property collector is never reported, neither its arrival
    /// nor its removal; an announced VM that the answer after this call does not know is
    /// reported [`VmChange::Gone`].
    pub fn expect(&self, vm: MoRef) {
        let _ = self.0.send(Announce::Made(vm));
    }

    /// Tells the watch that someone waits for `vm`'s guest to come up (it was just powered
    /// on). Until the guest reports an address (or the VM goes, or 10 minutes pass), the
    /// watch asks again 50 ms after each answer instead of 250 ms: a desktop becomes ready
    /// about as soon as its guest is up.
    pub fn await_guest(&self, vm: MoRef) {
        let _ = self.0.send(Announce::AwaitGuest(vm));
    }
}

/// The pause after an answer while some guest is awaited: short, so readiness is noticed at
/// once; not zero, so a pool filling still sees its changes in a few answers per second
/// instead of one per change.
const HURRIED: Duration = Duration::from_millis(50);

/// How long a guest is awaited at most (one that never reports an address, say): the watch
/// then pauses `COALESCE` again.
const AWAIT_GUEST_FOR: Duration = Duration::from_secs(600);

/// After a batch, the watch waits this long before asking again, so a burst of changes (a pool
/// filling: every clone adds a VM and powers it on) arrives in a few answers instead of one
/// `WaitForUpdatesEx` per change. Nothing is lost meanwhile: the next answer holds every change
/// since the last version. The VM watch only catches changes made outside deskpool (a VM
/// destroyed or powered off by hand), where a second does not matter.
///
/// While a guest is awaited ([`VmExpect::await_guest`]: a desktop just powered on) the pause
/// is `HURRIED` instead, so a desktop becomes ready within about 50 ms of its guest
/// reporting an address.
const COALESCE: Duration = Duration::from_millis(250);

/// VM properties the watch follows.
const WATCHED: &[&str] = &[
    "runtime.powerState",
    "runtime.connectionState",
    "guest.toolsRunningStatus",
    "guest.ipAddress",
];

struct Watch {
    /// Destroys the collectors and the view whichever way the watch ends.
    objects: ServerObjects,
    pc: MoRef,
    version: String,
    /// The newest customization event reported (event keys grow).
    last_event: i64,
}

async fn setup(session: &Arc<Session>) -> Result<Watch, Error> {
    let content = &session.content;
    let mut objects = ServerObjects::new(session);
    let pc = objects.create_collector().await?;

    let mut w = Writer::new();
    w.moref("_this", &content.view_manager)
        .moref("container", &content.root_folder)
        .text("type", "VirtualMachine")
        .boolean("recursive", true);
    let view = objects
        .create_view("CreateContainerView", w.finish())
        .await?;

    const CF: &str = "CreateFilter";
    let mut w = Writer::new();
    w.moref("_this", &pc).open("spec");
    req::filter_spec_view(&mut w, "VirtualMachine", WATCHED, &view);
    w.close("spec").boolean("partialUpdates", false);
    session.call(CF, w.finish()).await?;

    if let Some(em) = &content.event_manager {
        // Without it customization outcomes are not learnt (such desktops fail at their ready
        // timeout); the VMs are still watched.
        if let Err(e) = watch_customization(session, &mut objects, &pc, em).await {
            if matches!(e, Error::Closed) {
                return Err(e);
            }
            tracing::warn!(error = %e, "cannot follow guest customization events; desktops of pools with a customization spec will fail at their ready timeout");
        }
    }
    Ok(Watch {
        objects,
        pc,
        version: String::new(),
        last_event: 0,
    })
}

/// Adds the customization events' `latestPage` to the watch's collector.
async fn watch_customization(
    session: &Arc<Session>,
    objects: &mut ServerObjects,
    pc: &MoRef,
    event_manager: &MoRef,
) -> Result<(), Error> {
    let mut w = Writer::new();
    w.moref("_this", event_manager).open("filter");
    for t in CUSTOMIZATION_EVENTS {
        w.text("eventTypeId", t);
    }
    w.close("filter");
    let collector = objects.create_event_collector(w.finish()).await?;
    let mut w = Writer::new();
    w.moref("_this", &collector)
        .text("maxCount", &EVENT_PAGE.to_string());
    session.call("SetCollectorPageSize", w.finish()).await?;
    let mut w = Writer::new();
    w.moref("_this", pc).open("spec");
    req::filter_spec_objects(
        &mut w,
        "EventHistoryCollector",
        &["latestPage"],
        &[&collector],
    );
    w.close("spec").boolean("partialUpdates", false);
    session.call("CreateFilter", w.finish()).await?;
    Ok(())
}

/// `soon`: answer within a second even if nothing changes (announced VMs wait for a verdict).
/// Returns the events and whether the answer was truncated (more changes are pending).
async fn poll(
    session: &Session,
    watch: &mut Watch,
    soon: bool,
) -> Result<(Vec<VmEvent>, bool), Error> {
    const M: &str = "WaitForUpdatesEx";
    let max_wait = if soon {
        1
    } else {
        (session.call_timeout.as_secs() * 2 / 3).clamp(1, 60)
    };
    let mut w = Writer::new();
    w.moref("_this", &watch.pc);
    if !watch.version.is_empty() {
        w.text("version", &watch.version);
    }
    w.open("options")
        .text("maxWaitSeconds", &max_wait.to_string())
        .close("options");
    let resp = session.call(M, w.finish()).await?;
    let set = soap::parse_update_set(resp.body()?)?;
    if let Some(v) = set.version {
        watch.version = v;
    }
    let mut events = Vec::new();
    for u in &set.updates {
        if u.obj.kind == "EventHistoryCollector" {
            customization_events(u, &mut watch.last_event, &mut events);
            continue;
        }
        events.extend(changes_of(u).into_iter().map(|change| VmEvent {
            vm: u.obj.clone(),
            change,
        }));
    }
    Ok((events, set.truncated))
}

/// The customization events of a `latestPage` newer than `last`, oldest first.
fn customization_events(u: &ObjectUpdate<'_>, last: &mut i64, out: &mut Vec<VmEvent>) {
    let Some(Some(page)) = u
        .changes
        .iter()
        .find(|(name, _)| name == "latestPage")
        .map(|(_, v)| v.as_ref())
    else {
        return;
    };
    let mut found: Vec<(i64, VmEvent)> = Vec::new();
    for ev in &page.children {
        let Some(key) = ev
            .child_text("key")
            .and_then(|k| k.trim().parse::<i64>().ok())
        else {
            continue;
        };
        let Some(vm) = ev
            .child("vm")
            .and_then(|v| v.child("vm"))
            .and_then(|v| v.as_moref())
        else {
            continue;
        };
        if key <= *last {
            continue;
        }
        let kind = ev.xsi_type_local().unwrap_or(&ev.name);
        let change = match kind {
            "CustomizationStartedEvent" => Customization::Started,
            "CustomizationSucceeded" => Customization::Succeeded,
            k if (k.starts_with("Customization") && k.ends_with("Failed"))
                || k == "CustomizationUnknownFailure" =>
            {
                let message = ev
                    .child_text("fullFormattedMessage")
                    .filter(|m| !m.trim().is_empty())
                    .or_else(|| ev.child_text("reason").filter(|m| !m.trim().is_empty()))
                    .map_or_else(|| format!("{k} (vCenter gave no message)"), str::to_owned);
                Customization::Failed(message)
            }
            _ => continue,
        };
        found.push((
            key,
            VmEvent {
                vm,
                change: VmChange::Customization(change),
            },
        ));
    }
    found.sort_by_key(|(k, _)| *k);
    if let Some((k, _)) = found.last() {
        *last = *k;
    }
    out.extend(found.into_iter().map(|(_, e)| e));
}

/// What one object update means for the VM: its change, and what Tools report if the update
/// carried `guest.*` properties.
fn changes_of(u: &ObjectUpdate<'_>) -> Vec<VmChange> {
    let guest = |prop: &str| {
        u.changes
            .iter()
            .find(|(name, _)| name == prop)
            .map(|(_, v)| {
                v.as_ref()
                    .map_or_else(String::new, |v| v.text.trim().to_owned())
            })
    };
    let report = GuestReport {
        tools_running_status: guest("guest.toolsRunningStatus"),
        ip_address: guest("guest.ipAddress"),
    };
    let has_guest = report != GuestReport::default();
    let only_guest = u.kind == "modify"
        && u.missing.is_empty()
        && u.changes.iter().all(|(name, _)| name.starts_with("guest."));
    let mut out = Vec::new();
    let change = change_of(u);
    let readable = !matches!(change, VmChange::Gone | VmChange::Inaccessible);
    if !(only_guest && has_guest) {
        out.push(change);
    }
    if has_guest && readable {
        out.push(VmChange::Guest(report));
    }
    out
}

/// What one object update means for the VM.
fn change_of(u: &ObjectUpdate<'_>) -> VmChange {
    let value = |prop: &str| {
        u.changes
            .iter()
            .find(|(name, _)| name == prop)
            .and_then(|(_, v)| v.as_ref())
    };
    let power = value("runtime.powerState").and_then(|v| PowerState::parse(&v.text));
    let unreadable = !u.missing.is_empty()
        || value("runtime.connectionState").is_some_and(|v| soap::connection_unreadable(&v.text));
    match u.kind.as_ref() {
        "leave" => VmChange::Gone,
        _ if unreadable => VmChange::Inaccessible,
        "enter" => VmChange::Present(power),
        _ => match power {
            Some(p) => VmChange::Power(p),
            // E.g. readable again (connectionState back to connected).
            None => VmChange::Present(None),
        },
    }
}

/// How long the watch pauses after an answer at `now`: `HURRIED` while some guest is still
/// awaited, else `COALESCE`. Drops the guests no longer awaited.
fn pause_after_answer(awaiting: &mut HashMap<MoRef, Instant>, now: Instant) -> Duration {
    awaiting.retain(|_, until| *until > now);
    if awaiting.is_empty() {
        COALESCE
    } else {
        HURRIED
    }
}

async fn run(
    session: Arc<Session>,
    tx: mpsc::Sender<Vec<VmEvent>>,
    mut expect_rx: mpsc::UnboundedReceiver<Announce>,
) {
    let mut delay = Duration::from_millis(500);
    let mut watch: Option<Watch> = None;
    // Every VM the collector has told us of (since the last (re)start of the watch).
    let mut known: HashSet<MoRef> = HashSet::new();
    // Announced VMs, judged by the first answer to a request sent after the announcement.
    let mut to_check: Vec<MoRef> = Vec::new();
    // VMs whose guest someone waits for, with when they stop being waited for.
    let mut awaiting: HashMap<MoRef, Instant> = HashMap::new();
    // VMs whose guest reported an address (and has not lost it since): a guest awaited after
    // its address came is not waited for.
    let mut addressed: HashSet<MoRef> = HashSet::new();
    let note = |a: Announce,
                to_check: &mut Vec<MoRef>,
                awaiting: &mut HashMap<MoRef, Instant>,
                addressed: &HashSet<MoRef>| match a {
        Announce::Made(vm) => to_check.push(vm),
        Announce::AwaitGuest(vm) if addressed.contains(&vm) => {}
        Announce::AwaitGuest(vm) => {
            awaiting.insert(vm, Instant::now() + AWAIT_GUEST_FOR);
        }
    };
    loop {
        while let Ok(a) = expect_rx.try_recv() {
            note(a, &mut to_check, &mut awaiting, &addressed);
        }
        let step = async {
            if watch
                .as_ref()
                .is_none_or(|w| w.objects.generation() != session.session_generation())
            {
                watch = Some(setup(&session).await?);
                known.clear();
                addressed.clear();
            }
            match watch.as_mut() {
                Some(w) => poll(&session, w, !to_check.is_empty()).await,
                None => Ok((Vec::new(), false)),
            }
        };
        let result = tokio::select! {
            _ = tx.closed() => return,
            r = step => r,
        };
        match result {
            Ok((mut events, truncated)) => {
                delay = Duration::from_millis(500);
                for e in &events {
                    if let VmChange::Guest(GuestReport {
                        ip_address: Some(ip),
                        ..
                    }) = &e.change
                    {
                        if ip.is_empty() {
                            addressed.remove(&e.vm);
                        } else {
                            addressed.insert(e.vm.clone());
                            awaiting.remove(&e.vm);
                        }
                    }
                    if e.change == VmChange::Gone {
                        addressed.remove(&e.vm);
                        awaiting.remove(&e.vm);
                    }
                    match e.change {
                        VmChange::Gone => known.remove(&e.vm),
                        // Events name VMs that may be long gone.
                        VmChange::Customization(_) => false,
                        _ => known.insert(e.vm.clone()),
                    };
                }
                // A truncated answer (more pending) may not mention VMs that exist: the
                // verdict on announced VMs waits for a complete one.
                if !truncated {
                    for vm in to_check.drain(..) {
                        let reported = events.iter().any(|e| e.vm == vm);
                        if !known.contains(&vm) && !reported {
                            events.push(VmEvent {
                                vm,
                                change: VmChange::Gone,
                            });
                        }
                    }
                }
                if events.is_empty() {
                    continue;
                }
                if tx.send(events).await.is_err() {
                    return;
                }
                if truncated {
                    continue; // the rest is waiting on the server: ask at once
                }
                // Changes made meanwhile wait on the server and come in the next answer. A
                // guest awaited (now, or announced during the pause) shortens the pause.
                let now = Instant::now();
                let mut until = now + pause_after_answer(&mut awaiting, now);
                loop {
                    tokio::select! {
                        _ = tx.closed() => return,
                        _ = tokio::time::sleep_until(until.into()) => break,
                        a = expect_rx.recv() => match a {
                            Some(a) => {
                                note(a, &mut to_check, &mut awaiting, &addressed);
                                until = until.min(now + pause_after_answer(&mut awaiting, now));
                            }
                            None => {
                                tokio::time::sleep_until(until.into()).await;
                                break;
                            }
                        },
                    }
                }
            }
            Err(Error::Closed) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "VM watch failed; starting it again");
                // Rebuild from scratch (dropping the old objects): the collector may belong
                // to an expired session.
                watch = None;
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_hurries_only_while_a_guest_is_awaited() {
        let now = Instant::now();
        let mut awaiting = HashMap::new();
        assert_eq!(pause_after_answer(&mut awaiting, now), COALESCE);
        awaiting.insert(MoRef::new("VirtualMachine", "vm-1"), now + AWAIT_GUEST_FOR);
        awaiting.insert(MoRef::new("VirtualMachine", "vm-2"), now);
        assert_eq!(pause_after_answer(&mut awaiting, now), HURRIED);
        assert_eq!(awaiting.len(), 1, "vm-2's wait is over");
        let later = now + AWAIT_GUEST_FOR;
        assert_eq!(pause_after_answer(&mut awaiting, later), COALESCE);
        assert!(awaiting.is_empty());
    }

    fn update(xml: &str) -> VmChange {
        let doc = format!(
            r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><WaitForUpdatesExResponse xmlns="urn:vim25"><returnval><version>1</version><filterSet><objectSet><obj type="VirtualMachine">vm-1</obj>{xml}</objectSet></filterSet></returnval></WaitForUpdatesExResponse></soapenv:Body></soapenv:Envelope>"#
        );
        let set = soap::parse_update_set(soap::decode("W", doc.as_bytes()).unwrap()).unwrap();
        change_of(&set.updates[0])
    }

    #[test]
    fn unreadable_vms_are_inaccessible_not_gone_or_present() {
        let power = r#"<changeSet><name>runtime.powerState</name><op>assign</op><val>poweredOn</val></changeSet>"#;
        let state = |s: &str| {
            format!(
                r#"<changeSet><name>runtime.connectionState</name><op>assign</op><val>{s}</val></changeSet>"#
            )
        };
        let missing = r#"<missingSet><path>config.instanceUuid</path><fault><fault xsi:type="InaccessibleDatastore"/></fault></missingSet>"#;
        let on = VmChange::Power(PowerState::PoweredOn);
        for (xml, want) in [
            (
                format!("<kind>enter</kind>{power}"),
                VmChange::Present(Some(PowerState::PoweredOn)),
            ),
            (format!("<kind>modify</kind>{power}"), on.clone()),
            ("<kind>leave</kind>".to_owned(), VmChange::Gone),
            (
                format!("<kind>enter</kind>{power}{missing}"),
                VmChange::Inaccessible,
            ),
            (
                format!("<kind>modify</kind>{}", state("inaccessible")),
                VmChange::Inaccessible,
            ),
            (
                format!("<kind>modify</kind>{}", state("invalid")),
                VmChange::Inaccessible,
            ),
            (
                format!("<kind>modify</kind>{}{power}", state("connected")),
                on,
            ),
            (
                format!("<kind>modify</kind>{}", state("connected")),
                VmChange::Present(None),
            ),
            (
                format!("<kind>modify</kind>{}", state("orphaned")),
                VmChange::Present(None),
            ),
        ] {
            assert_eq!(update(&xml), want, "{xml}");
        }
    }

    #[test]
    fn guest_properties_are_reported_with_or_without_a_power_change() {
        let doc = |xml: &str| {
            format!(
                r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><WaitForUpdatesExResponse xmlns="urn:vim25"><returnval><version>1</version><filterSet><objectSet><obj type="VirtualMachine">vm-1</obj>{xml}</objectSet></filterSet></returnval></WaitForUpdatesExResponse></soapenv:Body></soapenv:Envelope>"#
            )
        };
        let changes = |xml: &str| {
            let d = doc(xml);
            let set = soap::parse_update_set(soap::decode("W", d.as_bytes()).unwrap()).unwrap();
            changes_of(&set.updates[0])
        };
        let tools = r#"<changeSet><name>guest.toolsRunningStatus</name><op>assign</op><val>guestToolsRunning</val></changeSet>"#;
        let ip = r#"<changeSet><name>guest.ipAddress</name><op>assign</op></changeSet>"#;
        let power = r#"<changeSet><name>runtime.powerState</name><op>assign</op><val>poweredOn</val></changeSet>"#;
        let guest = VmChange::Guest(GuestReport {
            tools_running_status: Some("guestToolsRunning".into()),
            ip_address: Some(String::new()),
        });
        assert_eq!(
            changes(&format!("<kind>modify</kind>{tools}{ip}")),
            vec![guest.clone()]
        );
        assert_eq!(
            changes(&format!("<kind>enter</kind>{power}{tools}{ip}")),
            vec![VmChange::Present(Some(PowerState::PoweredOn)), guest]
        );
        assert_eq!(
            changes(&format!("<kind>modify</kind>{power}")),
            vec![VmChange::Power(PowerState::PoweredOn)]
        );
        assert_eq!(changes("<kind>leave</kind>"), vec![VmChange::Gone]);
    }

    #[test]
    fn customization_events_are_read_once_oldest_first() {
        let d = r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><WaitForUpdatesExResponse xmlns="urn:vim25"><returnval><version>1</version><filterSet><objectSet><obj type="EventHistoryCollector">session[1]c</obj><kind>modify</kind><changeSet><name>latestPage</name><op>assign</op><val xsi:type="ArrayOfEvent"><Event xsi:type="CustomizationSysprepFailed"><key>9</key><vm><name>d2</name><vm type="VirtualMachine">vm-2</vm></vm><fullFormattedMessage>Sysprep failed</fullFormattedMessage></Event><Event xsi:type="CustomizationSucceeded"><key>7</key><vm><name>d1</name><vm type="VirtualMachine">vm-1</vm></vm></Event><Event xsi:type="CustomizationStartedEvent"><key>5</key><vm><name>d1</name><vm type="VirtualMachine">vm-1</vm></vm></Event></val></changeSet></objectSet></filterSet></returnval></WaitForUpdatesExResponse></soapenv:Body></soapenv:Envelope>"#;
        let set = soap::parse_update_set(soap::decode("W", d.as_bytes()).unwrap()).unwrap();
        let mut last = 5;
        let mut out = Vec::new();
        customization_events(&set.updates[0], &mut last, &mut out);
        let got: Vec<(String, VmChange)> =
            out.into_iter().map(|e| (e.vm.value, e.change)).collect();
        assert_eq!(
            got,
            vec![
                (
                    "vm-1".into(),
                    VmChange::Customization(Customization::Succeeded)
                ),
                (
                    "vm-2".into(),
                    VmChange::Customization(Customization::Failed("Sysprep failed".into()))
                ),
            ]
        );
        assert_eq!(last, 9);
        let mut again = Vec::new();
        customization_events(&set.updates[0], &mut last, &mut again);
        assert!(again.is_empty(), "{again:?}");
    }
}
