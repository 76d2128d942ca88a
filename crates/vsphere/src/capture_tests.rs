//! Unit tests on real pyVmomi <-> govmomi-simulator captures (tests/fixtures), plus the same
//! documents rewritten to vCenter's `xsi:type` spelling.

use crate::base::{MoRef, PowerState};
use crate::error::Error;
use crate::fault::FaultKind;
use crate::soap::{self, req};
use crate::types::{LinkedCloneSpec, TaskState};
use crate::xml;

macro_rules! fixture {
    ($name:literal) => {
        include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/",
            $name
        ))
        .as_slice()
    };
}

/// The simulator binds `XMLSchema-instance` on each element; vCenter uses the `xsi` prefix
/// declared on the envelope. Rewrite a capture to the vCenter spelling.
fn vcenter_spelling(doc: &[u8]) -> Vec<u8> {
    let s = std::str::from_utf8(doc).unwrap();
    s.replace(
        r#" xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance""#,
        "",
    )
    .replace("XMLSchema-instance:type", "xsi:type")
    .into_bytes()
}

fn both(doc: &[u8]) -> [Vec<u8>; 2] {
    let v = vcenter_spelling(doc);
    assert_ne!(v, doc, "the rewrite must change something");
    [doc.to_vec(), v]
}

fn m(kind: &str, value: &str) -> MoRef {
    MoRef::new(kind, value)
}

#[test]
fn service_content() {
    let resp = soap::decode(
        "RetrieveServiceContent",
        fixture!("00024-RetrieveServiceContent-resp.xml"),
    )
    .unwrap();
    let sc = soap::parse_service_content(&resp).unwrap();
    assert_eq!(
        sc.property_collector,
        m("PropertyCollector", "propertyCollector")
    );
    assert_eq!(sc.view_manager, m("ViewManager", "ViewManager"));
    assert_eq!(sc.search_index, m("SearchIndex", "SearchIndex"));
    assert_eq!(sc.session_manager, m("SessionManager", "SessionManager"));
    assert_eq!(
        sc.customization_spec_manager,
        Some(m("CustomizationSpecManager", "CustomizationSpecManager"))
    );
    assert_eq!(sc.event_manager, Some(m("EventManager", "EventManager")));
    assert_eq!(
        sc.about.full_name,
        "VMware vCenter Server 6.5.0 build-5973321"
    );
    assert_eq!(sc.about.api_version, "6.5");
    assert_eq!(
        sc.about.instance_uuid,
        "dbed6e0c-bd88-4ef6-b594-21283e1c677f"
    );
    assert_eq!(sc.about.api_type, "VirtualCenter");
}

#[test]
fn login_and_logout_decode() {
    let resp = soap::decode("Login", fixture!("00025-Login-resp.xml")).unwrap();
    assert_eq!(resp.name, "LoginResponse");
    assert_eq!(
        resp.child("returnval").unwrap().child_text("userName"),
        Some("user")
    );
    let resp = soap::decode("Logout", fixture!("00058-Logout-resp.xml")).unwrap();
    assert_eq!(resp.name, "LogoutResponse");
}

#[test]
fn find_by_inventory_path_found_and_missing() {
    let r = soap::decode("F", fixture!("00027-FindByInventoryPath-resp.xml")).unwrap();
    assert_eq!(
        soap::parse_optional_moref("F", &r).unwrap(),
        Some(m("VirtualMachine", "vm-27"))
    );
    let r = soap::decode("F", fixture!("00055-FindByInventoryPath-resp.xml")).unwrap();
    assert_eq!(soap::parse_optional_moref("F", &r).unwrap(), None);
    let r = soap::decode("F", fixture!("00045-FindByUuid-resp.xml")).unwrap();
    assert_eq!(
        soap::parse_optional_moref("F", &r).unwrap(),
        Some(m("VirtualMachine", "vm-39"))
    );
}

#[test]
fn retrieve_properties_vm_and_snapshot_both_spellings() {
    for doc in both(fixture!("00028-RetrievePropertiesEx-resp.xml")) {
        let resp = soap::decode("RetrievePropertiesEx", &doc).unwrap();
        let (objs, token) = soap::parse_retrieve_result("RetrievePropertiesEx", resp).unwrap();
        assert_eq!(token, None);
        assert_eq!(objs.len(), 1);
        let oc = &objs[0];
        assert_eq!(oc.obj, m("VirtualMachine", "vm-27"));
        assert_eq!(
            oc.prop("name").unwrap().xsi_type.as_deref(),
            Some("xsd:string")
        );
        assert_eq!(
            oc.prop("resourcePool").unwrap().as_moref(),
            Some(m("ResourcePool", "resgroup-15"))
        );
        let info = soap::vm_info_from(oc);
        assert_eq!(info.name, "DC0_C0_RP0_VM0");
        assert_eq!(info.power_state, PowerState::PoweredOn);
        assert_eq!(
            info.instance_uuid.as_deref(),
            Some("bfff331f-7f07-572d-951e-edd3701dc061")
        );
        assert!(info.extra_config.is_empty());

        let snap = oc.prop("snapshot").unwrap();
        assert_eq!(snap.xsi_type.as_deref(), Some("VirtualMachineSnapshotInfo"));
        let (current, entries) = soap::parse_snapshot_info(snap);
        assert_eq!(current, Some(m("VirtualMachineSnapshot", "snapshot-33")));
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].path, vec!["golden".to_string()]);
        assert_eq!(
            soap::select_snapshot(current.as_ref(), &entries, "golden").unwrap(),
            m("VirtualMachineSnapshot", "snapshot-33")
        );
        let (problem, candidates) =
            soap::select_snapshot(current.as_ref(), &entries, "golden/v2").unwrap_err();
        assert_eq!(problem, "not found");
        assert_eq!(candidates, vec!["golden".to_string()]);
    }
}

#[test]
fn clone_request_matches_capture_structure() {
    let spec = LinkedCloneSpec {
        name: "desk-001".into(),
        folder: m("Folder", "folder-3"),
        resource_pool: m("ResourcePool", "resgroup-15"),
        datastore: None,
        host: None,
        snapshot: m("VirtualMachineSnapshot", "snapshot-33"),
        instance_uuid: "5b1a9c1e-0000-4000-8000-000000000001".into(),
        extra_config: vec![],
        customization: None,
        power_on: false,
    };
    let ours_text = soap::envelope(
        "CloneVM_Task",
        &req::clone_vm(&m("VirtualMachine", "vm-27"), &spec),
    );
    let ours = xml::parse(ours_text.as_bytes()).unwrap();
    let theirs = xml::parse(fixture!("00032-CloneVM_Task-req.xml")).unwrap();
    fn call<'a>(n: &xml::Node<'a>) -> xml::Node<'a> {
        n.child("Body")
            .unwrap()
            .child("CloneVM_Task")
            .unwrap()
            .clone()
    }
    // Same elements, same order, same values (pyVmomi follows the WSDL order).
    assert_eq!(call(&ours), call(&theirs));
}

#[test]
fn clone_request_full_spec_in_wsdl_order_and_escaped() {
    let spec = LinkedCloneSpec {
        name: "desk<&>\"'".into(),
        folder: m("Folder", "folder-3"),
        resource_pool: m("ResourcePool", "resgroup-15"),
        datastore: Some(m("Datastore", "datastore-1")),
        host: Some(m("HostSystem", "host-21")),
        snapshot: m("VirtualMachineSnapshot", "snapshot-33"),
        instance_uuid: "u".into(),
        extra_config: vec![
            ("deskpool.pool".into(), "lab</value>".into()),
            ("deskpool.owner".into(), "x".into()),
        ],
        customization: Some(crate::types::CustomizationSpecXml::from_trusted_xml(
            "<options xsi:type=\"CustomizationLinuxOptions\"></options>",
        )),
        power_on: false,
    };
    let body = req::clone_vm(&m("VirtualMachine", "vm-27"), &spec);
    let text = soap::envelope("CloneVM_Task", &body);
    let doc = xml::parse(text.as_bytes()).unwrap();
    let call = doc.child("Body").unwrap().child("CloneVM_Task").unwrap();
    let names = |n: &xml::Node<'_>| {
        n.children
            .iter()
            .map(|c| c.name.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(call), ["_this", "folder", "name", "spec"]);
    assert_eq!(call.child_text("name"), Some("desk<&>\"'"));
    let s = call.child("spec").unwrap();
    assert_eq!(
        names(s),
        [
            "location",
            "template",
            "config",
            "customization",
            "powerOn",
            "snapshot"
        ]
    );
    assert_eq!(
        names(s.child("location").unwrap()),
        ["datastore", "diskMoveType", "pool", "host"]
    );
    assert_eq!(
        s.child("location").unwrap().child_text("diskMoveType"),
        Some("createNewChildDiskBacking")
    );
    let config = s.child("config").unwrap();
    assert_eq!(
        names(config),
        ["instanceUuid", "extraConfig", "extraConfig"]
    );
    let ec = &config.children[1];
    assert_eq!(ec.xsi_type.as_deref(), Some("OptionValue"));
    assert_eq!(ec.child_text("key"), Some("deskpool.pool"));
    assert_eq!(
        ec.child("value").unwrap().xsi_type.as_deref(),
        Some("xsd:string")
    );
    assert_eq!(ec.child_text("value"), Some("lab</value>"));
    assert_eq!(
        s.child("customization").unwrap().children[0]
            .xsi_type
            .as_deref(),
        Some("CustomizationLinuxOptions")
    );
}

#[test]
fn task_returning_calls() {
    for (file, task) in [
        (fixture!("00032-CloneVM_Task-resp.xml"), "task-36"),
        (fixture!("00046-PowerOnVM_Task-resp.xml"), "task-41"),
        (fixture!("00048-PowerOffVM_Task-resp.xml"), "task-42"),
        (fixture!("00050-Destroy_Task-resp.xml"), "task-43"),
    ] {
        let r = soap::decode("T", file).unwrap();
        assert_eq!(soap::parse_moref("T", &r).unwrap(), m("Task", task));
    }
    let r = soap::decode("C", fixture!("00033-CreateFilter-resp.xml")).unwrap();
    assert_eq!(soap::parse_moref("C", &r).unwrap().kind, "PropertyFilter");
    let r = soap::decode("C", fixture!("00053-CreateContainerView-resp.xml")).unwrap();
    let view = soap::parse_moref("C", &r).unwrap();
    assert_eq!(view.kind, "ContainerView");
    assert!(view.value.starts_with("session["));
}

#[test]
fn create_filter_request_shape_matches_capture() {
    // Our filter spec for explicit objects serialises like pyVmomi's.
    let mut w = xml::Writer::new();
    w.moref("_this", &m("PropertyCollector", "propertyCollector"))
        .open("spec");
    req::filter_spec_objects(
        &mut w,
        "Task",
        &["info.state", "info.result", "info.error"],
        &[&m("Task", "task-36")],
    );
    w.close("spec").boolean("partialUpdates", true);
    let text = soap::envelope("CreateFilter", &w.finish());
    let ours = xml::parse(text.as_bytes()).unwrap();
    let theirs = xml::parse(fixture!("00033-CreateFilter-req.xml")).unwrap();
    fn call<'a>(n: &xml::Node<'a>) -> xml::Node<'a> {
        n.child("Body")
            .unwrap()
            .child("CreateFilter")
            .unwrap()
            .clone()
    }
    assert_eq!(call(&ours), call(&theirs));
}

#[test]
fn wait_for_updates_running_then_success_both_spellings() {
    for doc in both(fixture!("00034-WaitForUpdatesEx-resp.xml")) {
        let set = soap::parse_update_set(soap::decode("W", &doc).unwrap()).unwrap();
        let (version, updates) = (set.version, set.updates);
        assert_eq!(version.as_deref(), Some("-"));
        assert_eq!(updates.len(), 1);
        let u = &updates[0];
        assert_eq!(u.obj, m("Task", "task-36"));
        assert_eq!(u.kind, "enter");
        assert_eq!(u.changes[0].0, "info.state");
        assert_eq!(u.changes[0].1.as_ref().unwrap().text, "running");
        assert_eq!(
            u.changes[0].1.as_ref().unwrap().xsi_type.as_deref(),
            Some("TaskInfoState")
        );
        assert!(u.changes[1].1.is_none());
    }
    for doc in both(fixture!("00036-WaitForUpdatesEx-resp.xml")) {
        let updates = soap::parse_update_set(soap::decode("W", &doc).unwrap())
            .unwrap()
            .updates;
        let u = &updates[0];
        assert_eq!(u.kind, "modify");
        let val = |n: &str| u.changes.iter().find(|c| c.0 == n).unwrap().1.clone();
        assert_eq!(val("info.state").unwrap().text, "success");
        let result = val("info.result").unwrap();
        assert_eq!(result.xsi_type.as_deref(), Some("ManagedObjectReference"));
        assert_eq!(result.as_moref(), Some(m("VirtualMachine", "vm-39")));
        assert!(val("info.error").is_none());
    }
}

#[test]
fn empty_wait_result_is_a_timeout() {
    let doc = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><WaitForUpdatesExResponse xmlns="urn:vim25"></WaitForUpdatesExResponse></soapenv:Body></soapenv:Envelope>"#;
    let set = soap::parse_update_set(soap::decode("W", doc).unwrap()).unwrap();
    let (version, updates) = (set.version, set.updates);
    assert_eq!(version, None);
    assert!(updates.is_empty());
}

#[test]
fn task_info_success_running_and_duplicate_name_both_spellings() {
    let info = |doc: &[u8]| {
        let r = soap::decode("Fetch", doc).unwrap();
        let rv = r.child("returnval").unwrap();
        assert_eq!(rv.xsi_type.as_deref(), Some("TaskInfo"));
        soap::parse_task_info("Fetch", rv).unwrap()
    };
    for doc in both(fixture!("00037-Fetch-resp.xml")) {
        let ti = info(&doc);
        assert_eq!(ti.moref, m("Task", "task-36"));
        assert_eq!(ti.state, TaskState::Success);
        assert_eq!(ti.result, Some(m("VirtualMachine", "vm-39")));
        assert_eq!(ti.entity, Some(m("VirtualMachine", "vm-27")));
        assert_eq!(ti.error, None);
    }
    for doc in both(fixture!("00042-Fetch-resp.xml")) {
        let ti = info(&doc);
        assert_eq!(ti.state, TaskState::Running);
        assert_eq!(ti.result, None);
    }
    for doc in both(fixture!("00044-Fetch-resp.xml")) {
        let ti = info(&doc);
        assert_eq!(ti.state, TaskState::Error);
        let f = ti.error.unwrap();
        assert_eq!(
            f.kind,
            FaultKind::DuplicateName {
                name: "desk-001".into()
            }
        );
        assert_eq!(f.message, "*types.DuplicateName");
        assert!(!f.is_transient());
        assert_eq!(f.label(), "duplicate_name");
    }
}

#[test]
fn soap_fault_managed_object_not_found() {
    match soap::decode("Fetch", fixture!("00056-Fetch-resp.xml")) {
        Err(Error::Fault(f)) => {
            assert_eq!(
                f.kind,
                FaultKind::ManagedObjectNotFound {
                    obj: Some(m("VirtualMachine", "vm-99999"))
                }
            );
            assert_eq!(
                f.message,
                "The object has already been deleted or has not been completely created"
            );
        }
        other => panic!("expected a fault, got {other:?}"),
    }
}

#[test]
fn soap_fault_not_authenticated() {
    let e = soap::decode("Fetch", fixture!("00059-Fetch-resp.xml")).unwrap_err();
    assert_eq!(e.fault_kind(), Some(&FaultKind::NotAuthenticated));
    assert!(e.is_transient());
    assert_eq!(e.kind(), "not_authenticated");
}

fn soap_fault(detail_elem: &str, xsi_type: Option<&str>, inner: &str) -> String {
    let ty = xsi_type
        .map(|t| format!(r#" xsi:type="{t}""#))
        .unwrap_or_default();
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>msg &amp; more</faultstring><detail><{detail_elem} xmlns="urn:vim25"{ty}>{inner}</{detail_elem}></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#
    )
}

fn task_error(xsi_type: &str, inner: &str) -> String {
    format!(
        r#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><FetchResponse xmlns="urn:vim25"><returnval xsi:type="TaskInfo"><key>task-1</key><task type="Task">task-1</task><state>error</state><error><fault xsi:type="{xsi_type}">{inner}</fault><localizedMessage>it failed</localizedMessage></error></returnval></FetchResponse></soapenv:Body></soapenv:Envelope>"#
    )
}

#[test]
fn only_invalid_power_state_with_the_vm_on_means_already_on() {
    let cases = [
        (
            "InvalidPowerState",
            "<existingState>poweredOn</existingState>",
            true,
        ),
        (
            "InvalidPowerState",
            "<existingState>poweredOff</existingState>",
            false,
        ),
        ("InvalidPowerState", "", false),
        ("InvalidState", "", false),
        ("InvalidHostConnectionState", "", false),
        ("NoActiveHostInCluster", "", false),
        ("QuestionPending", "", false),
    ];
    for (ty, inner, already_on) in cases {
        let e = soap::decode(
            "M",
            soap_fault(&format!("{ty}Fault"), Some(ty), inner).as_bytes(),
        )
        .unwrap_err();
        assert_eq!(
            e.fault().unwrap().means_already_on(),
            already_on,
            "{ty} {inner}"
        );
        assert!(!e.is_login_failure());
    }
    let e = soap::decode(
        "M",
        soap_fault("InvalidLoginFault", Some("InvalidLogin"), "").as_bytes(),
    )
    .unwrap_err();
    assert!(e.is_login_failure());
}

#[test]
fn every_fault_kind_from_soap_fault_and_task_error() {
    let cases: Vec<(&str, &str, FaultKind, bool)> =
        vec![
        ("NotAuthenticated", "", FaultKind::NotAuthenticated, true),
        (
            "ManagedObjectNotFound",
            r#"<obj type="Task">task-9</obj>"#,
            FaultKind::ManagedObjectNotFound {
                obj: Some(m("Task", "task-9")),
            },
            false,
        ),
        (
            "DuplicateName",
            r#"<name>d&lt;1</name><object type="Folder">f</object>"#,
            FaultKind::DuplicateName { name: "d<1".into() },
            false,
        ),
        (
            "InsufficientResourcesFault",
            "",
            FaultKind::InsufficientResources,
            true,
        ),
        (
            "InsufficientMemoryResourcesFault",
            "",
            FaultKind::InsufficientResources,
            true,
        ),
        ("TaskInProgress", "", FaultKind::TaskInProgress, true),
        // Power-on refusals: only InvalidPowerState says what state the VM is in.
        ("InvalidState", "", FaultKind::InvalidState, true),
        (
            "InvalidPowerState",
            "",
            FaultKind::InvalidPowerState { existing: None },
            false,
        ),
        (
            "InvalidPowerState",
            "<requestedState>poweredOn</requestedState><existingState>poweredOn</existingState>",
            FaultKind::InvalidPowerState {
                existing: Some(PowerState::PoweredOn),
            },
            false,
        ),
        (
            "InvalidHostConnectionState",
            "<host type=\"HostSystem\">host-21</host>",
            FaultKind::InvalidState,
            true,
        ),
        ("NoActiveHostInCluster", "", FaultKind::InvalidState, true),
        ("QuestionPending", "<text>Continue?</text>", FaultKind::InvalidState, true),
        // Outages, not settings: retried, never a pool error.
        (
            "InaccessibleDatastore",
            "<datastore type=\"Datastore\">datastore-1</datastore><name>ds1</name>",
            FaultKind::InaccessibleDatastore,
            true,
        ),
        ("HostCommunication", "", FaultKind::HostCommunication, true),
        ("HostNotConnected", "", FaultKind::HostCommunication, true),
        ("HostNotReachable", "", FaultKind::HostCommunication, true),
        ("SystemError", "<reason>vpxd busy</reason>", FaultKind::SystemError, true),
        ("InvalidDatastore", "", FaultKind::InvalidDatastore, false),
        (
            "InvalidDatastorePath",
            "",
            FaultKind::InvalidDatastore,
            false,
        ),
        ("FileFault", "", FaultKind::FileFault, false),
        ("FileNotFound", "", FaultKind::FileFault, false),
        ("VmConfigFault", "", FaultKind::VmConfigFault, false),
        (
            "CustomizationFault",
            "",
            FaultKind::CustomizationFault,
            false,
        ),
        (
            "UncustomizableGuest",
            "",
            FaultKind::CustomizationFault,
            false,
        ),
        // The session's problem (the vCenter is unhealthy), not the request's.
        ("InvalidLogin", "", FaultKind::InvalidLogin, true),
        (
            "MigrationFault",
            "",
            FaultKind::Other {
                fault_type: "MigrationFault".into(),
            },
            false,
        ),
    ];
    for (ty, inner, kind, transient) in cases {
        // vCenter: <XFault xsi:type="X">.
        let e = soap::decode(
            "M",
            soap_fault(&format!("{ty}Fault"), Some(ty), inner).as_bytes(),
        )
        .unwrap_err();
        let f = e.fault().unwrap_or_else(|| panic!("{ty}: {e:?}"));
        assert_eq!(f.kind, kind, "{ty} as SOAP fault");
        assert_eq!(f.message, "msg & more");
        assert_eq!(e.is_transient(), transient, "{ty}");
        // Without a type attribute: the element name decides.
        let e = soap::decode(
            "M",
            soap_fault(&format!("{ty}Fault"), None, inner).as_bytes(),
        )
        .unwrap_err();
        assert_eq!(e.fault().unwrap().kind, kind, "{ty} by element name");
        // In a task's error.
        let doc = task_error(ty, inner);
        let r = soap::decode("Fetch", doc.as_bytes()).unwrap();
        let ti = soap::parse_task_info("Fetch", r.child("returnval").unwrap()).unwrap();
        let f = ti.error.unwrap();
        assert_eq!(f.kind, kind, "{ty} as task error");
        assert_eq!(f.message, "it failed");
    }
}

#[test]
fn fault_without_detail_is_other() {
    let doc = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><soapenv:Fault><faultcode>ServerFaultCode</faultcode><faultstring>boom</faultstring></soapenv:Fault></soapenv:Body></soapenv:Envelope>"#;
    let e = soap::decode("M", doc).unwrap_err();
    assert_eq!(
        e.fault().unwrap().kind,
        FaultKind::Other {
            fault_type: "ServerFaultCode".into()
        }
    );
    assert_eq!(e.kind(), "other_fault");
}

#[test]
fn malformed_and_truncated_captures_are_parse_errors() {
    let full = fixture!("00028-RetrievePropertiesEx-resp.xml");
    for cut in [0, 10, 100, full.len() / 2, full.len() - 20] {
        let e = soap::decode("RetrievePropertiesEx", &full[..cut]).unwrap_err();
        assert!(matches!(e, Error::Parse { .. }), "cut at {cut}: {e:?}");
        assert_eq!(e.kind(), "parse");
    }
    let e = soap::decode("M", b"<html><body>502 Bad Gateway</body></html>").unwrap_err();
    assert!(matches!(e, Error::Parse { .. }));
}

#[test]
fn paging_token_and_extra_config_markers() {
    let doc = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><token>tok-1</token><objects><obj type="VirtualMachine">vm-1</obj><propSet><name>name</name><val xsi:type="xsd:string">a</val></propSet><propSet><name>runtime.powerState</name><val xsi:type="VirtualMachinePowerState">suspended</val></propSet><propSet><name>config.extraConfig</name><val xsi:type="ArrayOfOptionValue"><OptionValue xsi:type="OptionValue"><key>deskpool.pool</key><value xsi:type="xsd:string">lab</value></OptionValue><OptionValue xsi:type="OptionValue"><key>svga.present</key><value xsi:type="xsd:string">TRUE</value></OptionValue></val></propSet></objects></returnval></RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>"#;
    let (objs, token) = soap::parse_retrieve_result("R", soap::decode("R", doc).unwrap()).unwrap();
    assert_eq!(token.as_deref(), Some("tok-1"));
    let vm = soap::vm_info_from(&objs[0]);
    assert_eq!(vm.power_state, PowerState::Suspended);
    assert_eq!(vm.instance_uuid, None);
    assert_eq!(
        vm.extra_config,
        vec![("deskpool.pool".to_string(), "lab".to_string())]
    );
}

#[test]
fn customization_spec_is_reserialised_with_xsi_prefix() {
    let doc = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><GetCustomizationSpecResponse xmlns="urn:vim25"><returnval><info><name>linux</name></info><spec><options xmlns:XMLSchema-instance="http://www.w3.org/2001/XMLSchema-instance" XMLSchema-instance:type="CustomizationLinuxOptions"></options><identity xmlns:q="http://www.w3.org/2001/XMLSchema-instance" q:type="CustomizationLinuxPrep"><hostName q:type="CustomizationVirtualMachineName"></hostName><domain>a&amp;b</domain></identity></spec></returnval></GetCustomizationSpecResponse></soapenv:Body></soapenv:Envelope>"#;
    let spec = soap::parse_customization_spec(&soap::decode("G", doc).unwrap()).unwrap();
    assert_eq!(
        spec.as_str(),
        r#"<options xsi:type="CustomizationLinuxOptions"></options><identity xsi:type="CustomizationLinuxPrep"><hostName xsi:type="CustomizationVirtualMachineName"></hostName><domain>a&amp;b</domain></identity>"#
    );
}

/// An inaccessible VM as vCenter lists it: `runtime.*` readable, `config.*` in `missingSet`.
const INACCESSIBLE_VM: &[u8] = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects><obj type="VirtualMachine">vm-9</obj><propSet><name>name</name><val xsi:type="xsd:string">lab-009</val></propSet><propSet><name>runtime.connectionState</name><val xsi:type="VirtualMachineConnectionState">inaccessible</val></propSet><propSet><name>runtime.powerState</name><val xsi:type="VirtualMachinePowerState">poweredOn</val></propSet><missingSet><path>config.instanceUuid</path><fault><fault xsi:type="InaccessibleDatastore"><datastore type="Datastore">datastore-1</datastore><name>ds1</name></fault><localizedMessage>Datastore ds1 is not accessible</localizedMessage></fault></missingSet><missingSet><path>config.extraConfig</path><fault><fault xsi:type="InaccessibleDatastore"/><localizedMessage></localizedMessage></fault></missingSet></objects></returnval></RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>"#;

#[test]
fn a_missing_set_marks_the_vm_inaccessible_with_the_fault_kept() {
    let (objs, _) =
        soap::parse_retrieve_result("R", soap::decode("R", INACCESSIBLE_VM).unwrap()).unwrap();
    let vm = soap::vm_info_from(&objs[0]);
    assert!(vm.inaccessible);
    assert_eq!(vm.name, "lab-009");
    assert_eq!(vm.power_state, PowerState::PoweredOn);
    assert_eq!(vm.instance_uuid, None);
    let paths: Vec<&str> = vm.missing.iter().map(|m| m.path.as_str()).collect();
    assert_eq!(paths, ["config.instanceUuid", "config.extraConfig"]);
    assert_eq!(vm.missing[0].fault.type_name(), "InaccessibleDatastore");
    assert_eq!(
        vm.missing[0].fault.message,
        "Datastore ds1 is not accessible"
    );
    // A readable VM is not inaccessible.
    let doc = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><RetrievePropertiesExResponse xmlns="urn:vim25"><returnval><objects><obj type="VirtualMachine">vm-9</obj><propSet><name>runtime.connectionState</name><val xsi:type="VirtualMachineConnectionState">connected</val></propSet><propSet><name>config.instanceUuid</name><val xsi:type="xsd:string">u-1</val></propSet></objects></returnval></RetrievePropertiesExResponse></soapenv:Body></soapenv:Envelope>"#;
    let (objs, _) = soap::parse_retrieve_result("R", soap::decode("R", doc).unwrap()).unwrap();
    let vm = soap::vm_info_from(&objs[0]);
    assert!(!vm.inaccessible && vm.missing.is_empty(), "{vm:?}");
    assert_eq!(vm.instance_uuid.as_deref(), Some("u-1"));
}

#[test]
fn update_sets_carry_truncated_and_missing_sets() {
    let doc = br#"<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><WaitForUpdatesExResponse xmlns="urn:vim25"><returnval><version>7</version><filterSet><filter type="PropertyFilter">f-1</filter><objectSet><kind>enter</kind><obj type="VirtualMachine">vm-9</obj><changeSet><name>runtime.powerState</name><op>assign</op><val xsi:type="VirtualMachinePowerState">poweredOn</val></changeSet><missingSet><path>config.instanceUuid</path><fault><fault xsi:type="InaccessibleDatastore"/></fault></missingSet></objectSet></filterSet><truncated>true</truncated></returnval></WaitForUpdatesExResponse></soapenv:Body></soapenv:Envelope>"#;
    let set = soap::parse_update_set(soap::decode("W", doc).unwrap()).unwrap();
    assert!(set.truncated);
    assert_eq!(set.version.as_deref(), Some("7"));
    assert_eq!(set.updates[0].missing.len(), 1);
    assert_eq!(set.updates[0].missing[0].0, "config.instanceUuid");
    assert_eq!(
        set.updates[0].missing[0].1.type_name(),
        "InaccessibleDatastore"
    );
    let plain = String::from_utf8_lossy(doc).replace("<truncated>true</truncated>", "");
    let set = soap::parse_update_set(soap::decode("W", plain.as_bytes()).unwrap()).unwrap();
    assert!(!set.truncated);
}
