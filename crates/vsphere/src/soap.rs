//! vim25 wire format: envelopes, response decoding and the typed readers for the
//! responses this crate uses. Everything here is pure (no I/O) so it is tested on
//! recorded captures.

use std::borrow::Cow;

use crate::base::{MoRef, PowerState};
use crate::error::Error;
use crate::fault::{Fault, FaultKind};
use crate::types::{About, CustomizationSpecXml, MissingProperty, TaskInfo, TaskState, VmInfo};
use crate::xml::{self, Node, Writer};

const ENVELOPE_HEAD: &str = concat!(
    r#"<?xml version="1.0" encoding="UTF-8"?>"#,
    r#"<soapenv:Envelope xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" "#,
    r#"xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" "#,
    r#"xmlns:xsd="http://www.w3.org/2001/XMLSchema" "#,
    r#"xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>"#
);
const ENVELOPE_TAIL: &str = "</soapenv:Body></soapenv:Envelope>";

/// Wrap a method body (built with [`Writer`], so already escaped) in a SOAP envelope.
pub(crate) fn envelope(method: &str, body: &str) -> String {
    let mut s = String::with_capacity(ENVELOPE_HEAD.len() + body.len() + 128);
    s.push_str(ENVELOPE_HEAD);
    s.push('<');
    s.push_str(method);
    s.push_str(r#" xmlns="urn:vim25">"#);
    s.push_str(body);
    s.push_str("</");
    s.push_str(method);
    s.push('>');
    s.push_str(ENVELOPE_TAIL);
    s
}

/// Decode a response body: the element inside `soapenv:Body` (e.g. `FooResponse`), or the
/// fault it carries as `Error::Fault`.
pub(crate) fn decode<'a>(method: &'static str, bytes: &'a [u8]) -> Result<Node<'a>, Error> {
    let root = xml::parse(bytes).map_err(|e| Error::parse(method, e.0))?;
    if root.name != "Envelope" {
        return Err(Error::parse(
            method,
            format!("expected a SOAP Envelope, got <{}>", root.name),
        ));
    }
    let mut body = root
        .children
        .into_iter()
        .find(|c| c.name == "Body")
        .ok_or_else(|| Error::parse(method, "SOAP envelope without a Body"))?;
    if body.children.is_empty() {
        return Err(Error::parse(method, "empty SOAP Body"));
    }
    let first = body.children.swap_remove(0);
    if first.name == "Fault" {
        return Err(Error::Fault(parse_soap_fault(&first)));
    }
    Ok(first)
}

/// `soapenv:Fault` -> Fault: the type from `detail/*` (xsi:type or element name), the message
/// from `faultstring`.
pub(crate) fn parse_soap_fault(fault: &Node) -> Fault {
    let message = fault.child_text("faultstring").unwrap_or_default().trim();
    match fault.child("detail").and_then(|d| d.children.first()) {
        Some(detail) => Fault::from_node(detail, message),
        None => Fault::new(
            FaultKind::Other {
                fault_type: fault
                    .child_text("faultcode")
                    .unwrap_or("SOAPFault")
                    .to_owned(),
            },
            message,
        ),
    }
}

/// `LocalizedMethodFault` (`TaskInfo.error`) -> Fault.
pub(crate) fn parse_localized_fault(error: &Node) -> Fault {
    let message = error.child_text("localizedMessage").unwrap_or_default();
    match error.child("fault") {
        Some(f) => Fault::from_node(f, message),
        None => Fault::new(
            FaultKind::Other {
                fault_type: error.xsi_type_local().unwrap_or("MethodFault").to_owned(),
            },
            message,
        ),
    }
}

/// The managed objects of the ServiceContent this client calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServiceContent {
    pub root_folder: MoRef,
    pub property_collector: MoRef,
    pub view_manager: MoRef,
    pub search_index: MoRef,
    pub session_manager: MoRef,
    pub customization_spec_manager: Option<MoRef>,
    /// Where events are read (vCenter and ESX both have one).
    pub event_manager: Option<MoRef>,
    pub about: About,
}

pub(crate) fn parse_service_content(resp: &Node) -> Result<ServiceContent, Error> {
    const M: &str = "RetrieveServiceContent";
    let rv = resp
        .child("returnval")
        .ok_or_else(|| Error::parse(M, "no returnval"))?;
    let req = |name: &str| {
        rv.child(name)
            .and_then(Node::as_moref)
            .ok_or_else(|| Error::parse(M, format!("ServiceContent has no {name}")))
    };
    let about = rv
        .child("about")
        .ok_or_else(|| Error::parse(M, "ServiceContent has no about"))?;
    let t = |n: &str| about.child_text(n).unwrap_or_default().to_owned();
    Ok(ServiceContent {
        root_folder: req("rootFolder")?,
        property_collector: req("propertyCollector")?,
        view_manager: req("viewManager")?,
        search_index: req("searchIndex")?,
        session_manager: req("sessionManager")?,
        customization_spec_manager: rv
            .child("customizationSpecManager")
            .and_then(Node::as_moref),
        event_manager: rv.child("eventManager").and_then(Node::as_moref),
        about: About {
            full_name: t("fullName"),
            api_version: t("apiVersion"),
            instance_uuid: t("instanceUuid"),
            api_type: t("apiType"),
        },
    })
}

/// A `returnval` that is an optional managed object reference.
pub(crate) fn parse_optional_moref(
    method: &'static str,
    resp: &Node,
) -> Result<Option<MoRef>, Error> {
    match resp.child("returnval") {
        None => Ok(None),
        Some(rv) => rv
            .as_moref()
            .map(Some)
            .ok_or_else(|| Error::parse(method, "returnval is not a managed object reference")),
    }
}

/// A `returnval` that must be a managed object reference (e.g. a Task).
pub(crate) fn parse_moref(method: &'static str, resp: &Node) -> Result<MoRef, Error> {
    parse_optional_moref(method, resp)?.ok_or_else(|| Error::parse(method, "missing returnval"))
}

/// One object of a RetrieveResult: its reference and the requested properties.
#[derive(Debug)]
pub(crate) struct ObjectContent<'a> {
    pub obj: MoRef,
    pub props: Vec<(Cow<'a, str>, Node<'a>)>,
    /// `missingSet`: properties the server could not read, with its fault for each.
    pub missing: Vec<(Cow<'a, str>, Fault)>,
}

impl<'a> ObjectContent<'a> {
    pub fn prop(&self, name: &str) -> Option<&Node<'a>> {
        self.props.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// RetrievePropertiesEx / ContinueRetrievePropertiesEx response: objects and the paging token.
pub(crate) fn parse_retrieve_result<'a>(
    method: &'static str,
    resp: Node<'a>,
) -> Result<(Vec<ObjectContent<'a>>, Option<String>), Error> {
    // Both responses: <returnval><token/>?<objects/>*</returnval>; an empty result has no returnval.
    let Some(rv) = resp.children.into_iter().find(|c| c.name == "returnval") else {
        return Ok((Vec::new(), None));
    };
    let mut token = None;
    let mut objects = Vec::with_capacity(rv.children.len());
    for c in rv.children {
        match c.name.as_ref() {
            "token" if !c.text.is_empty() => token = Some(c.text.into_owned()),
            "objects" => objects.push(parse_object_content(method, c)?),
            _ => {}
        }
    }
    Ok((objects, token))
}

fn parse_object_content<'a>(
    method: &'static str,
    node: Node<'a>,
) -> Result<ObjectContent<'a>, Error> {
    let mut obj = None;
    let mut props = Vec::new();
    let mut missing = Vec::new();
    for c in node.children {
        match c.name.as_ref() {
            "obj" => obj = c.as_moref(),
            "missingSet" => missing.push(parse_missing(c)),
            "propSet" => {
                let mut name = None;
                let mut val = None;
                for p in c.children {
                    match p.name.as_ref() {
                        "name" => name = Some(p.text),
                        "val" => val = Some(p),
                        _ => {}
                    }
                }
                if let (Some(n), Some(v)) = (name, val) {
                    props.push((n, v));
                }
            }
            _ => {}
        }
    }
    let obj = obj.ok_or_else(|| Error::parse(method, "ObjectContent without obj"))?;
    Ok(ObjectContent {
        obj,
        props,
        missing,
    })
}

/// `MissingProperty`: the path and its `LocalizedMethodFault`.
fn parse_missing(node: Node<'_>) -> (Cow<'_, str>, Fault) {
    let fault = node.child("fault").map_or_else(
        || {
            Fault::new(
                FaultKind::Other {
                    fault_type: "MethodFault".into(),
                },
                "",
            )
        },
        parse_localized_fault,
    );
    let path = node
        .children
        .into_iter()
        .find(|c| c.name == "path")
        .map(|c| c.text)
        .unwrap_or_default();
    (path, fault)
}

/// Properties requested for [`VmInfo`].
pub(crate) const VM_PROPS: &[&str] = &[
    "name",
    "runtime.powerState",
    "runtime.connectionState",
    "config.instanceUuid",
    "config.extraConfig",
];

/// Marker prefix of the extraConfig keys deskpool reads back.
pub(crate) const EXTRA_CONFIG_PREFIX: &str = "deskpool.";

pub(crate) fn vm_info_from(oc: &ObjectContent) -> VmInfo {
    let name = oc
        .prop("name")
        .map(|v| v.text.to_string())
        .unwrap_or_default();
    let power_state = oc
        .prop("runtime.powerState")
        .and_then(|v| PowerState::parse(&v.text))
        .unwrap_or(PowerState::PoweredOff);
    let instance_uuid = oc
        .prop("config.instanceUuid")
        .map(|v| v.text.to_string())
        .filter(|s| !s.is_empty());
    let extra_config = oc
        .prop("config.extraConfig")
        .map(|v| {
            v.children
                .iter()
                .filter_map(|ov| {
                    let key = ov.child_text("key")?;
                    key.starts_with(EXTRA_CONFIG_PREFIX).then(|| {
                        (
                            key.to_owned(),
                            ov.child_text("value").unwrap_or_default().to_owned(),
                        )
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let missing: Vec<MissingProperty> = oc
        .missing
        .iter()
        .map(|(path, fault)| MissingProperty {
            path: path.to_string(),
            fault: fault.clone(),
        })
        .collect();
    let inaccessible = oc
        .prop("runtime.connectionState")
        .is_some_and(|v| connection_unreadable(&v.text))
        || missing.iter().any(|m| m.path.starts_with("config"));
    VmInfo {
        moref: oc.obj.clone(),
        name,
        power_state,
        instance_uuid,
        extra_config,
        inaccessible,
        missing,
    }
}

/// `runtime.connectionState` values for which vCenter cannot read the VM's files
/// (`orphaned`, the host is gone, and `disconnected` still leave the configuration known).
pub(crate) fn connection_unreadable(state: &str) -> bool {
    matches!(state, "inaccessible" | "invalid")
}

/// A `TaskInfo` element (Fetch/RetrieveProperties of `info`, or a full `info` update).
pub(crate) fn parse_task_info(method: &'static str, node: &Node) -> Result<TaskInfo, Error> {
    let moref = node
        .child("task")
        .and_then(Node::as_moref)
        .ok_or_else(|| Error::parse(method, "TaskInfo without task"))?;
    let state_text = node.child_text("state").unwrap_or_default();
    let state = TaskState::parse(state_text)
        .ok_or_else(|| Error::parse(method, format!("unknown task state '{state_text}'")))?;
    Ok(TaskInfo {
        moref,
        state,
        result: node.child("result").and_then(Node::as_moref),
        error: node.child("error").map(parse_localized_fault),
        entity: node.child("entity").and_then(Node::as_moref),
    })
}

/// One object change reported by WaitForUpdatesEx.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ObjectUpdate<'a> {
    pub obj: MoRef,
    /// "enter", "modify" or "leave".
    pub kind: Cow<'a, str>,
    /// Property changes: name and value (None for an unset/removed value).
    pub changes: Vec<(Cow<'a, str>, Option<Node<'a>>)>,
    /// `missingSet`: properties the server could not read, with its fault for each.
    pub missing: Vec<(Cow<'a, str>, Fault)>,
}

/// A `WaitForUpdatesEx` answer.
#[derive(Debug, Default)]
pub(crate) struct UpdateSet<'a> {
    /// The version to ask from next; None when the wait timed out without news.
    pub version: Option<String>,
    /// Object changes, in order.
    pub updates: Vec<ObjectUpdate<'a>>,
    /// More changes are pending (`truncated`): ask again at once, and conclude nothing from
    /// what this answer does not mention.
    pub truncated: bool,
}

/// WaitForUpdatesEx response: the new version (None when the wait timed out), the updates,
/// and whether more are pending.
pub(crate) fn parse_update_set(resp: Node<'_>) -> Result<UpdateSet<'_>, Error> {
    const M: &str = "WaitForUpdatesEx";
    let Some(rv) = resp.children.into_iter().find(|c| c.name == "returnval") else {
        return Ok(UpdateSet::default());
    };
    let mut version = None;
    let mut updates = Vec::new();
    let mut truncated = false;
    for c in rv.children {
        match c.name.as_ref() {
            "version" => version = Some(c.text.into_owned()),
            "truncated" => truncated = c.text.trim() == "true",
            "filterSet" => {
                for os in c.children.into_iter().filter(|o| o.name == "objectSet") {
                    let mut obj = None;
                    let mut kind = Cow::Borrowed("");
                    let mut changes = Vec::new();
                    let mut missing = Vec::new();
                    for part in os.children {
                        match part.name.as_ref() {
                            "obj" => obj = part.as_moref(),
                            "missingSet" => missing.push(parse_missing(part)),
                            "kind" => kind = part.text,
                            "changeSet" => {
                                let mut name = Cow::Borrowed("");
                                let mut val = None;
                                let mut op = Cow::Borrowed("");
                                for ch in part.children {
                                    match ch.name.as_ref() {
                                        "name" => name = ch.text,
                                        "op" => op = ch.text,
                                        "val" => val = Some(ch),
                                        _ => {}
                                    }
                                }
                                if op == "remove" || op == "indirectRemove" {
                                    val = None;
                                }
                                changes.push((name, val));
                            }
                            _ => {}
                        }
                    }
                    let obj = obj.ok_or_else(|| Error::parse(M, "objectSet without obj"))?;
                    updates.push(ObjectUpdate {
                        obj,
                        kind,
                        changes,
                        missing,
                    });
                }
            }
            _ => {}
        }
    }
    if version.is_none() {
        return Err(Error::parse(M, "UpdateSet without version"));
    }
    Ok(UpdateSet {
        version,
        updates,
        truncated,
    })
}

/// A node of `snapshot.rootSnapshotList`, flattened to full name paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SnapshotEntry {
    pub path: Vec<String>,
    pub moref: MoRef,
}

/// `VirtualMachineSnapshotInfo` -> (currentSnapshot, every snapshot with its name path).
pub(crate) fn parse_snapshot_info(val: &Node<'_>) -> (Option<MoRef>, Vec<SnapshotEntry>) {
    fn walk(node: &Node<'_>, prefix: &mut Vec<String>, out: &mut Vec<SnapshotEntry>) {
        let name = node.child_text("name").unwrap_or_default().to_owned();
        prefix.push(name);
        if let Some(m) = node.child("snapshot").and_then(Node::as_moref) {
            out.push(SnapshotEntry {
                path: prefix.clone(),
                moref: m,
            });
        }
        for child in node.children_named("childSnapshotList") {
            walk(child, prefix, out);
        }
        prefix.pop();
    }
    let current = val.child("currentSnapshot").and_then(Node::as_moref);
    let mut out = Vec::new();
    for root in val.children_named("rootSnapshotList") {
        walk(root, &mut Vec::new(), &mut out);
    }
    (current, out)
}

/// Select one snapshot: "current" or a full `/`-separated name path from a root snapshot.
/// `Err((problem, candidates))` when nothing or more than one matches.
pub(crate) fn select_snapshot(
    current: Option<&MoRef>,
    entries: &[SnapshotEntry],
    selector: &str,
) -> Result<MoRef, (String, Vec<String>)> {
    let all_paths = || entries.iter().map(|e| e.path.join("/")).collect::<Vec<_>>();
    if selector == "current" {
        return current.cloned().ok_or_else(|| {
            (
                "not found (the VM has no current snapshot)".to_owned(),
                all_paths(),
            )
        });
    }
    let wanted: Vec<&str> = selector.split('/').collect();
    if selector.is_empty() || wanted.iter().any(|s| s.is_empty()) {
        return Err((
            "is not a valid selector (use \"current\" or a path like \"base/v2\")".to_owned(),
            all_paths(),
        ));
    }
    let matches: Vec<&SnapshotEntry> = entries
        .iter()
        .filter(|e| e.path.iter().map(String::as_str).eq(wanted.iter().copied()))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.moref.clone()),
        [] => Err(("not found".to_owned(), all_paths())),
        many => Err((
            format!("is ambiguous ({} snapshots have this path)", many.len()),
            many.iter()
                .map(|e| format!("{} ({})", e.path.join("/"), e.moref.value))
                .collect(),
        )),
    }
}

/// GetCustomizationSpec response -> the `spec` body re-serialised with `xsi:type`
/// attributes (the server's prefix bindings do not travel with a fragment).
pub(crate) fn parse_customization_spec(resp: &Node<'_>) -> Result<CustomizationSpecXml, Error> {
    let spec = resp
        .child("returnval")
        .and_then(|r| r.child("spec"))
        .ok_or_else(|| {
            Error::parse("GetCustomizationSpec", "CustomizationSpecItem without spec")
        })?;
    let mut w = Writer::new();
    spec.write_children(&mut w);
    Ok(CustomizationSpecXml::from_trusted_xml(w.finish()))
}

/// Request-side helpers shared by the client methods.
pub(crate) mod req {
    use super::*;
    use crate::types::LinkedCloneSpec;

    /// PropertyFilterSpec content for properties of one type on explicit objects.
    pub fn filter_spec_objects(w: &mut Writer, kind: &str, paths: &[&str], objs: &[&MoRef]) {
        w.open("propSet").text("type", kind);
        for p in paths {
            w.text("pathSet", p);
        }
        w.close("propSet");
        for o in objs {
            w.open("objectSet").moref("obj", o).close("objectSet");
        }
    }

    /// PropertyFilterSpec content for properties of one type on the members of a view
    /// (ContainerView or ListView).
    pub fn filter_spec_view(w: &mut Writer, kind: &str, paths: &[&str], view: &MoRef) {
        w.open("propSet").text("type", kind);
        for p in paths {
            w.text("pathSet", p);
        }
        w.close("propSet");
        w.open("objectSet")
            .moref("obj", view)
            .boolean("skip", true)
            .open_typed("selectSet", "TraversalSpec")
            .text("name", "view")
            .text("type", &view.kind)
            .text("path", "view")
            .boolean("skip", false)
            .close("selectSet")
            .close("objectSet");
    }

    /// CloneVM_Task body. Element order follows the WSDL (govmomi's types.go):
    /// CloneSpec{location, template, config, customization, powerOn, snapshot},
    /// RelocateSpec{folder, datastore, diskMoveType, pool, host, ...},
    /// ConfigSpec{..., instanceUuid, ..., extraConfig, ...}.
    pub fn clone_vm(golden: &MoRef, spec: &LinkedCloneSpec) -> String {
        let mut w = Writer::new();
        w.moref("_this", golden)
            .moref("folder", &spec.folder)
            .text("name", &spec.name)
            .open("spec")
            .open("location");
        if let Some(ds) = &spec.datastore {
            w.moref("datastore", ds);
        }
        w.text("diskMoveType", "createNewChildDiskBacking")
            .moref("pool", &spec.resource_pool);
        if let Some(host) = &spec.host {
            w.moref("host", host);
        }
        w.close("location")
            .boolean("template", false)
            .open("config")
            .text("instanceUuid", &spec.instance_uuid);
        for (k, v) in &spec.extra_config {
            w.open_typed("extraConfig", "OptionValue")
                .text("key", k)
                .typed_text("value", "xsd:string", v)
                .close("extraConfig");
        }
        w.close("config");
        if let Some(c) = &spec.customization {
            // Produced by Client::customization_spec (re-serialised, escaped) or by the
            // caller through the explicitly trusted constructor.
            w.open("customization")
                .raw_trusted(c.as_str())
                .close("customization");
        }
        w.boolean("powerOn", spec.power_on)
            .moref("snapshot", &spec.snapshot)
            .close("spec");
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_well_formed() {
        let mut w = Writer::new();
        w.moref("_this", &MoRef::new("SessionManager", "SessionManager"))
            .text("userName", "a<b");
        let env = envelope("Login", &w.finish());
        let root = xml::parse(env.as_bytes()).unwrap();
        let body = root.child("Body").unwrap();
        let login = body.child("Login").unwrap();
        assert_eq!(login.child_text("userName"), Some("a<b"));
    }

    #[test]
    fn selector_rules() {
        let e = |p: &[&str], v: &str| SnapshotEntry {
            path: p.iter().map(|s| s.to_string()).collect(),
            moref: MoRef::new("VirtualMachineSnapshot", v),
        };
        let entries = vec![
            e(&["base"], "s1"),
            e(&["base", "v2"], "s2"),
            e(&["v2"], "s3"),
            e(&["base", "v2", "v2"], "s4"),
            e(&["dup"], "s5"),
            e(&["dup"], "s6"),
        ];
        let cur = MoRef::new("VirtualMachineSnapshot", "s4");
        assert_eq!(
            select_snapshot(Some(&cur), &entries, "current").unwrap(),
            cur
        );
        assert_eq!(
            select_snapshot(None, &entries, "base/v2").unwrap().value,
            "s2"
        );
        assert_eq!(select_snapshot(None, &entries, "v2").unwrap().value, "s3");
        assert_eq!(
            select_snapshot(None, &entries, "base/v2/v2").unwrap().value,
            "s4"
        );
        let (p, c) = select_snapshot(None, &entries, "base/v3").unwrap_err();
        assert_eq!(p, "not found");
        assert!(c.contains(&"base/v2/v2".to_string()));
        let (p, c) = select_snapshot(None, &entries, "dup").unwrap_err();
        assert!(p.starts_with("is ambiguous"));
        assert_eq!(c, vec!["dup (s5)", "dup (s6)"]);
        assert!(select_snapshot(None, &entries, "base//v2").is_err());
        assert!(select_snapshot(None, &entries, "").is_err());
        assert!(select_snapshot(None, &[], "current").is_err());
    }
}
