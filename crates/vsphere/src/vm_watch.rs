//! Watching VMs: one ContainerView over the whole inventory on a dedicated PropertyCollector,
//! followed with `WaitForUpdatesEx` long polls. Changes to any VM (appeared, power state
//! changed, gone) reach the caller in batches, without polling any VM.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

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
}

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

/// Announces VMs to a [`VmWatch`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct VmExpect(mpsc::UnboundedSender<MoRef>);

impl VmExpect {
    /// Tells the watch that `vm` exists now (the caller just made it). A VM made and removed
    /// between two answers of the property collector is never reported, neither its arrival
    /// nor its removal; an announced VM that the answer after this call does not know is
    /// reported [`VmChange::Gone`].
    pub fn expect(&self, vm: MoRef) {
        let _ = self.0.send(vm);
    }
}

/// After a batch, the watch waits this long before asking again, so a burst of changes (a pool
/// filling: every clone adds a VM and powers it on) arrives in a few answers instead of one
/// `WaitForUpdatesEx` per change. Nothing is lost meanwhile: the next answer holds every change
/// since the last version. The VM watch only catches changes made outside deskpool (a VM
/// destroyed or powered off by hand), where a second does not matter.
const COALESCE: Duration = Duration::from_secs(1);

/// VM properties the watch follows.
const WATCHED: &[&str] = &["runtime.powerState", "runtime.connectionState"];

struct Watch {
    /// Destroys the collector and the view whichever way the watch ends.
    objects: ServerObjects,
    pc: MoRef,
    version: String,
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
    Ok(Watch {
        objects,
        pc,
        version: String::new(),
    })
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
    let events = set
        .updates
        .iter()
        .map(|u| VmEvent {
            vm: u.obj.clone(),
            change: change_of(u),
        })
        .collect();
    Ok((events, set.truncated))
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

async fn run(
    session: Arc<Session>,
    tx: mpsc::Sender<Vec<VmEvent>>,
    mut expect_rx: mpsc::UnboundedReceiver<MoRef>,
) {
    let mut delay = Duration::from_millis(500);
    let mut watch: Option<Watch> = None;
    // Every VM the collector has told us of (since the last (re)start of the watch).
    let mut known: HashSet<MoRef> = HashSet::new();
    // Announced VMs, judged by the first answer to a request sent after the announcement.
    let mut to_check: Vec<MoRef> = Vec::new();
    loop {
        while let Ok(vm) = expect_rx.try_recv() {
            to_check.push(vm);
        }
        let step = async {
            if watch
                .as_ref()
                .is_none_or(|w| w.objects.generation() != session.session_generation())
            {
                watch = Some(setup(&session).await?);
                known.clear();
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
                    match e.change {
                        VmChange::Gone => known.remove(&e.vm),
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
                // Changes made meanwhile wait on the server and come in the next answer.
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(COALESCE) => {}
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
}
