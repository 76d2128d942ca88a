//! Watching VMs: one ContainerView over the whole inventory on a dedicated PropertyCollector,
//! followed with `WaitForUpdatesEx` long polls. Changes to any VM (appeared, power state
//! changed, gone) reach the caller in batches, without polling any VM.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::client::{Client, Inner};
use crate::error::Error;
use crate::soap::{self, req};
use crate::types::{MoRef, PowerState};
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
}

/// One VM's change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmEvent {
    /// The VM.
    pub vm: MoRef,
    /// What changed.
    pub change: VmChange,
}

impl Client {
    /// Streams changes to the VMs of the whole inventory, in batches, until the receiver is
    /// dropped. The first batch after a start or a re-login lists every VM as
    /// [`VmChange::Present`]. While nothing changes this costs one long poll per
    /// `maxWaitSeconds` (two thirds of the call timeout).
    pub fn watch_vms(&self) -> mpsc::Receiver<Vec<VmEvent>> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run(Arc::clone(&self.inner), tx));
        rx
    }
}

struct Watch {
    pc: MoRef,
    version: String,
    generation: u64,
}

async fn setup(inner: &Inner) -> Result<Watch, Error> {
    let generation = inner.session_generation();
    let content = &inner.content;
    const CPC: &str = "CreatePropertyCollector";
    let mut w = Writer::new();
    w.moref("_this", &content.property_collector);
    let pc = soap::parse_moref(CPC, &inner.call(CPC, w.finish()).await?.body()?)?;

    const CCV: &str = "CreateContainerView";
    let mut w = Writer::new();
    w.moref("_this", &content.view_manager)
        .moref("container", &content.root_folder)
        .text("type", "VirtualMachine")
        .boolean("recursive", true);
    let view = soap::parse_moref(CCV, &inner.call(CCV, w.finish()).await?.body()?)?;

    const CF: &str = "CreateFilter";
    let mut w = Writer::new();
    w.moref("_this", &pc).open("spec");
    req::filter_spec_view(&mut w, "VirtualMachine", &["runtime.powerState"], &view);
    w.close("spec").boolean("partialUpdates", false);
    inner.call(CF, w.finish()).await?;
    Ok(Watch {
        pc,
        version: String::new(),
        generation,
    })
}

async fn poll(inner: &Inner, watch: &mut Watch) -> Result<Vec<VmEvent>, Error> {
    const M: &str = "WaitForUpdatesEx";
    let max_wait = (inner.call_timeout.as_secs() * 2 / 3).clamp(1, 60);
    let mut w = Writer::new();
    w.moref("_this", &watch.pc);
    if !watch.version.is_empty() {
        w.text("version", &watch.version);
    }
    w.open("options")
        .text("maxWaitSeconds", &max_wait.to_string())
        .close("options");
    let resp = inner.call(M, w.finish()).await?;
    let (version, updates) = soap::parse_update_set(resp.body()?)?;
    if let Some(v) = version {
        watch.version = v;
    }
    Ok(updates
        .into_iter()
        .map(|u| {
            let power = u
                .changes
                .iter()
                .find(|(name, _)| name == "runtime.powerState")
                .and_then(|(_, v)| v.as_ref())
                .and_then(|v| PowerState::parse(&v.text));
            let change = match u.kind.as_ref() {
                "leave" => VmChange::Gone,
                "enter" => VmChange::Present(power),
                _ => match power {
                    Some(p) => VmChange::Power(p),
                    None => VmChange::Present(None),
                },
            };
            VmEvent { vm: u.obj, change }
        })
        .collect())
}

async fn run(inner: Arc<Inner>, tx: mpsc::Sender<Vec<VmEvent>>) {
    let mut delay = Duration::from_millis(500);
    let mut watch: Option<Watch> = None;
    loop {
        let step = async {
            if watch
                .as_ref()
                .is_none_or(|w| w.generation != inner.session_generation())
            {
                watch = Some(setup(&inner).await?);
            }
            match watch.as_mut() {
                Some(w) => poll(&inner, w).await,
                None => Ok(Vec::new()),
            }
        };
        let result = tokio::select! {
            _ = tx.closed() => return,
            r = step => r,
        };
        match result {
            Ok(events) => {
                delay = Duration::from_millis(500);
                if !events.is_empty() && tx.send(events).await.is_err() {
                    return;
                }
            }
            Err(Error::Closed) => return,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "VM watch failed; starting it again");
                // Rebuild from scratch: the collector may belong to an expired session.
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
