//! Tests of the vSphere simulator harness (tests/vcsim + deskpool_testkit::vcsim).

use std::time::{Duration, Instant};

use deskpool_testkit::vcsim::{Vcsim, VcsimOptions};

/// Minimal raw SOAP client (cookie session), enough to drive the simulator.
struct Soap {
    http: reqwest::Client,
    url: String,
}

impl Soap {
    fn new(sim: &Vcsim) -> Soap {
        Soap {
            http: reqwest::Client::builder()
                .cookie_store(true)
                .build()
                .unwrap(),
            url: sim.sdk_url.clone(),
        }
    }

    async fn call(&self, body: &str) -> (u16, String) {
        let env = format!(
            r#"<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"#
        );
        let resp = self
            .http
            .post(&self.url)
            .header("Content-Type", "text/xml; charset=utf-8")
            .header("SOAPAction", "urn:vim25/6.5")
            .body(env)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    async fn login(&self, user: &str, pass: &str) -> (u16, String) {
        self.call(&format!(
            r#"<Login xmlns="urn:vim25"><_this type="SessionManager">SessionManager</_this><userName>{user}</userName><password>{pass}</password></Login>"#
        ))
        .await
    }

    /// Starts a linked clone; returns the task moref.
    async fn linked_clone(
        &self,
        golden: &str,
        folder: &str,
        snapshot: &str,
        name: &str,
        uuid: &str,
    ) -> String {
        let (code, body) = self
            .call(&format!(
                r#"<CloneVM_Task xmlns="urn:vim25"><_this type="VirtualMachine">{golden}</_this><folder type="Folder">{folder}</folder><name>{name}</name><spec><location><diskMoveType>createNewChildDiskBacking</diskMoveType></location><template>false</template><config><instanceUuid>{uuid}</instanceUuid><extraConfig xsi:type="OptionValue"><key>deskpool.pool</key><value xsi:type="xsd:string" xmlns:xsd="http://www.w3.org/2001/XMLSchema">pool-a</value></extraConfig></config><powerOn>false</powerOn><snapshot type="VirtualMachineSnapshot">{snapshot}</snapshot></spec></CloneVM_Task>"#
            ))
            .await;
        assert_eq!(code, 200, "{body}");
        between(&body, r#"<returnval type="Task">"#, "</returnval>").to_owned()
    }

    /// `info` of a task, as raw XML.
    async fn task_info(&self, task: &str) -> String {
        let (code, body) = self
            .call(&format!(
                r#"<RetrievePropertiesEx xmlns="urn:vim25"><_this type="PropertyCollector">propertyCollector</_this><specSet><propSet><type>Task</type><pathSet>info</pathSet></propSet><objectSet><obj type="Task">{task}</obj></objectSet></specSet><options/></RetrievePropertiesEx>"#
            ))
            .await;
        assert_eq!(code, 200, "{body}");
        body
    }

    async fn wait_task(&self, task: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info = self.task_info(task).await;
            if info.contains("<state>success</state>") || info.contains("<state>error</state>") {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "task {task} did not finish: {info}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn between<'a>(s: &'a str, start: &str, end: &str) -> &'a str {
    let i = s
        .find(start)
        .unwrap_or_else(|| panic!("{start} not in {s}"))
        + start.len();
    let j = s[i..].find(end).unwrap() + i;
    &s[i..j]
}

#[tokio::test]
async fn starts_with_golden_vm_and_folders() {
    let sim = Vcsim::start(VcsimOptions {
        folders: vec!["pool-a".into()],
        snapshots: vec!["base".into(), "base/v2".into()],
        ..Default::default()
    })
    .await;
    assert_eq!(sim.golden_path, "DC0/vm/golden");
    assert!(sim.sdk_url.starts_with("http://127.0.0.1:") && sim.sdk_url.ends_with("/sdk"));

    let stats = sim.stats().await;
    assert_eq!(stats.soap_calls_total, 0);
    assert_eq!(stats.clone_requests, 0);
    assert_eq!(stats.vm_count, 4, "VPX model: 4 VMs");

    let golden = sim.golden().await;
    assert_eq!(golden.moref, sim.golden_moref);
    assert_eq!(golden.snapshots, 2);
    assert!(!golden.current_snapshot.is_empty());
    assert_eq!(golden.power_state, "poweredOff");

    assert!(sim.vms(Some("pool-a")).await.is_empty());
    let moref = sim.create_folder("pool-b").await;
    assert!(moref.starts_with("folder-"), "{moref}");
    assert_eq!(sim.create_folder("pool-b").await, moref, "idempotent");
    assert!(sim.vms(Some("pool-b")).await.is_empty());

    sim.remove_snapshots().await;
    let golden = sim.golden().await;
    assert_eq!(golden.snapshots, 0);
    assert!(golden.current_snapshot.is_empty());
}

#[tokio::test]
async fn linked_clone_duplicate_name_and_session_expiry() {
    let sim = Vcsim::start(VcsimOptions {
        clone_delay: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let folder = sim.create_folder("pool-a").await;
    let snapshot = sim.golden().await.current_snapshot;

    let soap = Soap::new(&sim);
    let (code, body) = soap.login(&sim.username, "wrong").await;
    assert_eq!(code, 500);
    assert!(body.contains("InvalidLogin"), "{body}");
    let (code, body) = soap.login(&sim.username, &sim.password).await;
    assert_eq!(code, 200, "{body}");

    let uuid = "5b1a9c1e-0000-4000-8000-000000000001";
    let task = soap
        .linked_clone(&sim.golden_moref, &folder, &snapshot, "desk-001", uuid)
        .await;
    let dup = soap
        .linked_clone(&sim.golden_moref, &folder, &snapshot, "desk-001", uuid)
        .await;
    let info = soap.task_info(&task).await;
    assert!(
        info.contains("<state>running</state>"),
        "asynchronous: {info}"
    );

    let info = soap.wait_task(&task).await;
    assert!(info.contains("<state>success</state>"), "{info}");
    assert!(
        info.contains(r#"type="VirtualMachine">vm-"#),
        "result moref: {info}"
    );
    let info = soap.wait_task(&dup).await;
    assert!(
        info.contains(r#"<fault XMLSchema-instance:type="DuplicateName"><name>desk-001</name>"#),
        "{info}"
    );

    let vms = sim.vms(Some("pool-a")).await;
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0].name, "desk-001");
    assert_eq!(vms[0].instance_uuid, uuid);
    assert_eq!(
        vms[0].extra_config.get("deskpool.pool").map(String::as_str),
        Some("pool-a")
    );

    let stats = sim.stats().await;
    assert_eq!(stats.clone_requests, 2);
    assert_eq!(stats.non_linked_clones, 0);
    assert_eq!(stats.duplicate_name_errors, 1);
    assert_eq!(stats.max_clones_in_flight_by_folder.get("pool-a"), Some(&2));
    assert_eq!(stats.calls("CloneVM_Task"), 2);
    assert_eq!(stats.calls("Login"), 2);

    sim.expire_sessions().await;
    let (code, body) = soap.call(&format!(
        r#"<RetrievePropertiesEx xmlns="urn:vim25"><_this type="PropertyCollector">propertyCollector</_this><specSet><propSet><type>Task</type><pathSet>info</pathSet></propSet><objectSet><obj type="Task">{task}</obj></objectSet></specSet><options/></RetrievePropertiesEx>"#
    ))
    .await;
    assert_eq!(code, 500);
    assert!(body.contains("NotAuthenticated"), "{body}");
    let (code, body) = soap
        .linked_clone_raw_status(&sim.golden_moref, &folder, &snapshot)
        .await;
    assert_eq!(code, 500);
    assert!(body.contains("NotAuthenticated"), "{body}");

    sim.reset_stats().await;
    assert_eq!(sim.stats().await.soap_calls_total, 0);
}

impl Soap {
    async fn linked_clone_raw_status(
        &self,
        golden: &str,
        folder: &str,
        snapshot: &str,
    ) -> (u16, String) {
        self.call(&format!(
            r#"<CloneVM_Task xmlns="urn:vim25"><_this type="VirtualMachine">{golden}</_this><folder type="Folder">{folder}</folder><name>x</name><spec><location><diskMoveType>createNewChildDiskBacking</diskMoveType></location><template>false</template><powerOn>false</powerOn><snapshot type="VirtualMachineSnapshot">{snapshot}</snapshot></spec></CloneVM_Task>"#
        ))
        .await
    }
}

#[tokio::test]
async fn clones_run_concurrently_and_failures_are_injected() {
    let sim = Vcsim::start(VcsimOptions {
        // Long enough that issuing 30 clones on a loaded machine never outlasts the first.
        clone_delay: Duration::from_millis(3000),
        folders: vec!["pool-a".into()],
        ..Default::default()
    })
    .await;
    let folder = sim.vms(None).await; // warm-up, also checks the listing
    assert!(folder.iter().any(|v| v.name == "golden"));
    let folder = sim.create_folder("pool-a").await;
    let snapshot = sim.golden().await.current_snapshot;
    let soap = Soap::new(&sim);
    soap.login(&sim.username, &sim.password).await;

    let mut tasks = Vec::new();
    for i in 0..30 {
        let uuid = format!("5b1a9c1e-0000-4000-8000-{i:012}");
        tasks.push(
            soap.linked_clone(
                &sim.golden_moref,
                &folder,
                &snapshot,
                &format!("c-{i:03}"),
                &uuid,
            )
            .await,
        );
    }
    // Behaviour, not speed: every clone was started before the first one finished, so all
    // 30 were in flight at once (a harness that ran clones one by one would show 1).
    let stats = sim.stats().await;
    assert_eq!(stats.clones_in_flight, 30, "{stats:?}");
    for t in &tasks {
        assert!(soap.wait_task(t).await.contains("<state>success</state>"));
    }
    let stats = sim.stats().await;
    assert_eq!(stats.max_clones_in_flight, 30);
    assert_eq!(stats.clones_in_flight, 0);
    assert_eq!(stats.vm_count, 34);

    sim.set_config(
        serde_json::json!({"clone_delay_ms": 0, "clone_fail_rate": 1.0, "fail_leave_vm_rate": 0.0}),
    )
    .await;
    let t = soap
        .linked_clone(
            &sim.golden_moref,
            &folder,
            &snapshot,
            "f-1",
            "5b1a9c1e-0000-4000-8000-ffffffffffff",
        )
        .await;
    let info = soap.wait_task(&t).await;
    assert!(
        info.contains(r#"XMLSchema-instance:type="InsufficientResourcesFault""#),
        "{info}"
    );
    assert!(!sim
        .vms(Some("pool-a"))
        .await
        .iter()
        .any(|v| v.name == "f-1"));

    sim.set_config(serde_json::json!({"clone_fail_rate": 0.0}))
        .await;
    sim.remove_snapshots().await;
    let t = soap
        .linked_clone(
            &sim.golden_moref,
            &folder,
            &snapshot,
            "s-1",
            "5b1a9c1e-0000-4000-8000-eeeeeeeeeeee",
        )
        .await;
    let info = soap.wait_task(&t).await;
    assert!(info.contains(r#"type="ManagedObjectNotFound""#), "{info}");
}

#[tokio::test]
async fn restart_keeps_the_ports() {
    let mut sim = Vcsim::start(VcsimOptions {
        folders: vec!["pool-a".into()],
        ..Default::default()
    })
    .await;
    let (sdk, control) = (sim.sdk_url.clone(), sim.control_url.clone());
    sim.create_folder("extra").await;
    let soap = Soap::new(&sim);
    assert_eq!(soap.login(&sim.username, &sim.password).await.0, 200);
    assert!(sim.stats().await.soap_calls_total > 0);

    sim.restart().await;
    assert_eq!(sim.sdk_url, sdk);
    assert_eq!(sim.control_url, control);
    assert_eq!(sim.stats().await.soap_calls_total, 0, "fresh simulator");
    // The old session is gone: a call that needs one fails, a new login works.
    let (code, body) = soap
        .call(r#"<CurrentTime xmlns="urn:vim25"><_this type="ServiceInstance">ServiceInstance</_this></CurrentTime>"#)
        .await;
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("NotAuthenticated"), "{body}");
    assert_eq!(soap.login(&sim.username, &sim.password).await.0, 200);
    // Options survive a restart, run-time changes do not.
    assert_eq!(sim.golden().await.snapshots, 1);
    let folders: Vec<String> = sim.vms(None).await.into_iter().map(|v| v.folder).collect();
    assert!(folders.iter().all(|f| f == "vm"), "{folders:?}");
    assert!(!sim.create_folder("pool-a").await.is_empty());
}

/// A real vCenter copies the source VM's extraConfig into a clone (under the CloneSpec's own
/// settings); an admin's copy of a desktop therefore carries deskpool's markers.
#[tokio::test]
async fn a_clone_keeps_the_source_extra_config() {
    let sim = Vcsim::start(VcsimOptions::default()).await;
    let folder = sim.create_folder("pool-a").await;
    let snapshot = sim.golden().await.current_snapshot;
    let soap = Soap::new(&sim);
    let (code, body) = soap.login(&sim.username, &sim.password).await;
    assert_eq!(code, 200, "{body}");
    let markers = |v: &deskpool_testkit::vcsim::VmInfo| -> Vec<(String, String)> {
        v.extra_config
            .iter()
            .filter(|(k, _)| k.starts_with("deskpool."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    assert!(markers(&sim.golden().await).is_empty());

    // A clone of the golden VM (no markers) has exactly its spec's markers.
    let uuid = "5b1a9c1e-0000-4000-8000-000000000002";
    let task = soap
        .linked_clone(&sim.golden_moref, &folder, &snapshot, "desk-001", uuid)
        .await;
    assert!(soap
        .wait_task(&task)
        .await
        .contains("<state>success</state>"));
    let desktop = sim.vms(Some("pool-a")).await.remove(0);
    assert_eq!(
        markers(&desktop),
        [("deskpool.pool".to_owned(), "pool-a".to_owned())]
    );

    // A full clone of the desktop through SOAP keeps its markers under the spec's own.
    let (code, body) = soap
        .call(&format!(
            r#"<CloneVM_Task xmlns="urn:vim25"><_this type="VirtualMachine">{}</_this><folder type="Folder">{folder}</folder><name>desk-001-copy</name><spec><location/><template>false</template><config><extraConfig xsi:type="OptionValue"><key>note</key><value xsi:type="xsd:string" xmlns:xsd="http://www.w3.org/2001/XMLSchema">copy</value></extraConfig></config><powerOn>false</powerOn></spec></CloneVM_Task>"#,
            desktop.moref
        ))
        .await;
    assert_eq!(code, 200, "{body}");
    let task = between(&body, r#"<returnval type="Task">"#, "</returnval>").to_owned();
    assert!(soap
        .wait_task(&task)
        .await
        .contains("<state>success</state>"));
    let vms = sim.vms(Some("pool-a")).await;
    let copy = vms.iter().find(|v| v.name == "desk-001-copy").unwrap();
    assert_eq!(markers(copy), markers(&desktop));
    assert_eq!(
        copy.extra_config.get("note").map(String::as_str),
        Some("copy")
    );
    assert_ne!(copy.instance_uuid, desktop.instance_uuid);
    assert_eq!(
        copy.extra_config.keys().filter(|k| *k == "govcsim").count(),
        1,
        "the simulator's own key is not doubled"
    );

    // The control API's copy, into another folder, with a setting of its own that wins.
    sim.create_folder("elsewhere").await;
    let copy = sim
        .copy_vm(
            "desk-001",
            "golden-v3",
            Some("elsewhere"),
            &[("deskpool.extra", "x")],
        )
        .await;
    assert_eq!(copy.folder, "elsewhere");
    assert_eq!(copy.name, "golden-v3");
    assert_ne!(copy.instance_uuid, desktop.instance_uuid);
    assert_eq!(
        copy.extra_config.get("deskpool.pool").map(String::as_str),
        Some("pool-a")
    );
    assert_eq!(
        copy.extra_config.get("deskpool.extra").map(String::as_str),
        Some("x")
    );
    let listed = sim.vms(Some("elsewhere")).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].extra_config, copy.extra_config);
}

/// Destroy faults and a held-back clone answer, for the reconciler's failure tests.
#[tokio::test]
async fn injected_destroy_fault_and_clone_answer_delay() {
    let sim = Vcsim::start(VcsimOptions::default()).await;
    let folder = sim.create_folder("pool-a").await;
    let snapshot = sim.golden().await.current_snapshot;
    let soap = Soap::new(&sim);
    soap.login(&sim.username, &sim.password).await;
    sim.set_faults(serde_json::json!({"clone_response_delay_ms": 600}))
        .await;
    let started = Instant::now();
    let task = soap
        .linked_clone(
            &sim.golden_moref,
            &folder,
            &snapshot,
            "desk-001",
            "5b1a9c1e-0000-4000-8000-000000000003",
        )
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "answer not held back"
    );
    assert!(soap
        .wait_task(&task)
        .await
        .contains("<state>success</state>"));
    let vm = sim.vms(Some("pool-a")).await.remove(0);

    sim.set_faults(
        serde_json::json!({"destroy_fault": "NoPermission", "destroy_fault_vms": [vm.moref]}),
    )
    .await;
    let (code, body) = soap
        .call(&format!(
            r#"<Destroy_Task xmlns="urn:vim25"><_this type="VirtualMachine">{}</_this></Destroy_Task>"#,
            vm.moref
        ))
        .await;
    assert_eq!(code, 200, "{body}");
    let task = between(&body, r#"<returnval type="Task">"#, "</returnval>").to_owned();
    let info = soap.wait_task(&task).await;
    assert!(info.contains("NoPermission"), "{info}");
    assert_eq!(
        sim.vms(Some("pool-a")).await.len(),
        1,
        "VM destroyed anyway"
    );
    assert_eq!(sim.faults().await["destroy_faults_raised"], 1);

    sim.set_faults(serde_json::json!({"destroy_fault": ""}))
        .await;
    let (_, body) = soap
        .call(&format!(
            r#"<Destroy_Task xmlns="urn:vim25"><_this type="VirtualMachine">{}</_this></Destroy_Task>"#,
            vm.moref
        ))
        .await;
    let task = between(&body, r#"<returnval type="Task">"#, "</returnval>").to_owned();
    assert!(soap
        .wait_task(&task)
        .await
        .contains("<state>success</state>"));
    assert!(sim.vms(Some("pool-a")).await.is_empty());
}

#[tokio::test]
async fn chosen_clone_faults_by_snapshot_and_name_once_or_always() {
    use deskpool_testkit::vcsim::{CloneFault, CloneFaultKind};
    let sim = Vcsim::start(VcsimOptions {
        snapshots: vec!["base".into(), "base/v2".into()],
        ..Default::default()
    })
    .await;
    let folder = sim.create_folder("pool-a").await;
    let v2 = sim.golden().await.current_snapshot;
    let soap = Soap::new(&sim);
    soap.login(&sim.username, &sim.password).await;
    let mut n = 0;
    let mut clone = async |name: &str| {
        n += 1;
        let task = soap
            .linked_clone(
                &sim.golden_moref,
                &folder,
                &v2,
                name,
                &format!("5b1a9c1e-0000-4000-8000-{n:012}"),
            )
            .await;
        soap.wait_task(&task).await
    };

    // A rule for another snapshot never fires; the first clone from v2 fails once.
    sim.add_clone_fault(CloneFault::new(CloneFaultKind::VmConfigFault).snapshot("base"))
        .await;
    sim.add_clone_fault(
        CloneFault::new(CloneFaultKind::InvalidDatastore)
            .snapshot("v2")
            .message("Datastore LocalDS_0 is not valid for this VM"),
    )
    .await;
    let info = clone("desk-001").await;
    assert!(info.contains("<state>error</state>"), "{info}");
    assert!(info.contains(r#":type="InvalidDatastore""#), "{info}");
    assert!(
        info.contains(
            "<localizedMessage>Datastore LocalDS_0 is not valid for this VM</localizedMessage>"
        ),
        "{info}"
    );
    assert!(clone("desk-002").await.contains("<state>success</state>"));

    // By name, always; others succeed.
    sim.add_clone_fault(
        CloneFault::new(CloneFaultKind::CustomizationFault)
            .name("bad-*")
            .always(),
    )
    .await;
    for name in ["bad-1", "bad-2"] {
        let info = clone(name).await;
        assert!(info.contains(r#":type="CustomizationFault""#), "{info}");
    }
    assert!(clone("good-1").await.contains("<state>success</state>"));

    // leave_vm: the task fails and the VM stays.
    sim.add_clone_fault(
        CloneFault::new(CloneFaultKind::Transient)
            .name("half-1")
            .leave_vm(),
    )
    .await;
    let info = clone("half-1").await;
    assert!(info.contains(r#":type="SystemError""#), "{info}");

    let names: Vec<String> = sim
        .vms(Some("pool-a"))
        .await
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(names, ["desk-002", "good-1", "half-1"]);
    let raised: Vec<u64> = sim.clone_faults().await.iter().map(|r| r.raised).collect();
    assert_eq!(raised, [0, 1, 2, 1]);
    sim.clear_clone_faults().await;
    assert!(sim.clone_faults().await.is_empty());
}
