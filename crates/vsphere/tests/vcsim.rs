//! Integration tests against the govmomi simulator harness (deskpool-testkit).

use std::time::Duration;

use deskpool_testkit::vcsim::{Vcsim, VcsimOptions};
use deskpool_vsphere::{
    Client, ClientOptions, Error, FaultKind, LinkedCloneSpec, MoRef, PowerState, TaskState,
};
use secrecy::SecretString;

fn options(sim: &Vcsim) -> ClientOptions {
    let mut o = ClientOptions::new(
        sim.sdk_url.parse().unwrap(),
        sim.username.clone(),
        SecretString::from(sim.password.clone()),
    );
    o.call_timeout = Duration::from_secs(15);
    o
}

async fn connect(sim: &Vcsim) -> Client {
    Client::connect(options(sim)).await.expect("connect")
}

struct Placement {
    golden: MoRef,
    snapshot: MoRef,
    folder: MoRef,
    pool: MoRef,
}

async fn placement(vc: &Client, sim: &Vcsim, folder: &str) -> Placement {
    let golden = vc
        .find_by_inventory_path(&sim.golden_path)
        .await
        .unwrap()
        .expect("golden");
    Placement {
        snapshot: vc.resolve_snapshot(&golden, "current").await.unwrap(),
        golden,
        folder: vc
            .find_by_inventory_path(folder)
            .await
            .unwrap()
            .expect("folder"),
        pool: vc
            .find_by_inventory_path("DC0/host/DC0_C0/Resources")
            .await
            .unwrap()
            .expect("resource pool"),
    }
}

fn spec(p: &Placement, name: &str) -> LinkedCloneSpec {
    LinkedCloneSpec {
        name: name.into(),
        folder: p.folder.clone(),
        resource_pool: p.pool.clone(),
        datastore: None,
        host: None,
        snapshot: p.snapshot.clone(),
        instance_uuid: uuid::Uuid::new_v4().to_string(),
        extra_config: vec![
            ("deskpool.pool".into(), "lab".into()),
            ("deskpool.desktop".into(), name.into()),
        ],
        customization: None,
        power_on: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_lookups_and_logout() {
    let sim = Vcsim::start(VcsimOptions::default()).await;
    let vc = connect(&sim).await;
    assert!(vc.is_connected());
    assert_eq!(vc.about().api_type, "VirtualCenter");
    assert!(!vc.about().instance_uuid.is_empty());

    let golden = vc
        .find_by_inventory_path(&sim.golden_path)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(golden.kind, "VirtualMachine");
    assert_eq!(golden.value, sim.golden_moref);
    assert_eq!(
        vc.find_by_inventory_path("DC0/vm/nope").await.unwrap(),
        None
    );
    // Hostile input is escaped, not interpreted.
    assert_eq!(
        vc.find_by_inventory_path("</inventoryPath><x>&")
            .await
            .unwrap(),
        None
    );

    let info = vc.vm_info(&golden).await.unwrap().unwrap();
    assert_eq!(info.name, "golden");
    let uuid = info.instance_uuid.clone().unwrap();
    assert_eq!(
        vc.find_vm_by_instance_uuid(&uuid).await.unwrap(),
        Some(golden.clone())
    );
    assert_eq!(
        vc.find_vm_by_instance_uuid("00000000-0000-0000-0000-000000000000")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        vc.vm_info(&MoRef::new("VirtualMachine", "vm-99999"))
            .await
            .unwrap(),
        None
    );

    let before = vc.soap_calls();
    vc.find_by_inventory_path(&sim.golden_path).await.unwrap();
    assert_eq!(vc.soap_calls(), before + 1);

    vc.logout().await.unwrap();
    assert!(!vc.is_connected());
    assert!(matches!(
        vc.find_by_inventory_path("DC0").await,
        Err(Error::Closed)
    ));
    let stats = sim.stats().await;
    assert_eq!(stats.calls("Login"), 1);
    assert_eq!(stats.calls("Logout"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_invalid_login() {
    let sim = Vcsim::start(VcsimOptions::default()).await;
    let mut o = options(&sim);
    o.password = SecretString::from("wrong".to_string());
    let err = Client::connect(o).await.unwrap_err();
    assert_eq!(err.fault_kind(), Some(&FaultKind::InvalidLogin), "{err}");
    // The vCenter connection's problem (retried with backoff), not a request's.
    assert!(err.is_login_failure());
    assert!(err.is_transient());
    assert!(!format!("{err:?}").contains("wrong"));
}

/// A password rotated on vCenter while deskpool runs: the session expires, every caller
/// needs a new login and each one fails. The callers share one login attempt at a time with
/// backoff, so the account sees a handful of failed logins a minute, not one per call (which
/// can lock it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_password_costs_at_most_6_logins_a_minute() {
    let sim = Vcsim::start(VcsimOptions::default()).await;
    let vc = connect(&sim).await;
    sim.set_password("rotated-elsewhere").await;
    sim.expire_sessions().await;
    sim.reset_stats().await;
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let vc = vc.clone();
            let path = sim.golden_path.clone();
            tokio::spawn(async move {
                let mut invalid_logins = 0u32;
                while tokio::time::Instant::now() < until {
                    match vc.find_by_inventory_path(&path).await {
                        Err(e) if e.fault_kind() == Some(&FaultKind::InvalidLogin) => {
                            invalid_logins += 1
                        }
                        other => panic!("expected InvalidLogin, got {other:?}"),
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                invalid_logins
            })
        })
        .collect();
    let mut answered = 0;
    for c in callers {
        answered += c.await.unwrap();
    }
    let logins = sim.stats().await.calls("Login");
    assert!(answered > 100, "callers got {answered} answers");
    assert!(
        (1..=6).contains(&logins),
        "{logins} Login calls in a minute for {answered} failed calls"
    );
    assert!(!vc.is_connected());
    let why = vc
        .login_failure()
        .expect("the client says why it is not connected");
    assert!(why.contains("InvalidLogin"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_vcenter_is_a_transient_transport_error() {
    let mut o = ClientOptions::new(
        "http://127.0.0.1:9/sdk".parse().unwrap(),
        "u",
        SecretString::from("p".to_string()),
    );
    o.connect_timeout = Duration::from_secs(2);
    let err = Client::connect(o).await.unwrap_err();
    assert!(matches!(err, Error::Transport { .. }), "{err}");
    assert!(err.is_transient());
    assert_eq!(err.kind(), "transport");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_clone_power_and_destroy() {
    let sim = Vcsim::start(VcsimOptions {
        clone_delay: Duration::from_millis(300),
        power_delay: Duration::from_millis(100),
        folders: vec!["pool-a".into()],
        ..Default::default()
    })
    .await;
    let vc = connect(&sim).await;
    let p = placement(&vc, &sim, "DC0/vm/pool-a").await;
    let s = spec(&p, "desk-001");

    let task = vc.clone_linked(&p.golden, &s).await.unwrap();
    assert_eq!(task.kind, "Task");
    let vm = vc.wait_task(&task).await.unwrap().expect("clone result");
    assert_eq!(vm.kind, "VirtualMachine");

    let info = vc.vm_info(&vm).await.unwrap().unwrap();
    assert_eq!(info.name, "desk-001");
    assert_eq!(info.power_state, PowerState::PoweredOff);
    assert_eq!(
        info.instance_uuid.as_deref(),
        Some(s.instance_uuid.as_str())
    );
    let mut ec = info.extra_config.clone();
    ec.sort();
    assert_eq!(
        ec,
        vec![
            ("deskpool.desktop".to_string(), "desk-001".to_string()),
            ("deskpool.pool".to_string(), "lab".to_string())
        ]
    );
    assert_eq!(
        vc.find_vm_by_instance_uuid(&s.instance_uuid).await.unwrap(),
        Some(vm.clone())
    );
    let stats = sim.stats().await;
    assert_eq!(
        stats.non_linked_clones, 0,
        "the clone must be a linked clone"
    );
    assert_eq!(stats.clones_succeeded, 1);

    // A finished task read once, and a second wait on it, both report the result.
    let ti = vc.task_info(&task).await.unwrap();
    assert_eq!(ti.state, TaskState::Success);
    assert_eq!(ti.result, Some(vm.clone()));
    assert_eq!(ti.entity, Some(p.golden.clone()));
    assert_eq!(vc.wait_task(&task).await.unwrap(), Some(vm.clone()));

    vc.wait_task(&vc.power_on(&vm).await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        vc.vm_info(&vm).await.unwrap().unwrap().power_state,
        PowerState::PoweredOn
    );
    let listed = vc.list_vms(&p.folder).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].moref, vm);
    assert_eq!(listed[0].power_state, PowerState::PoweredOn);

    // Destroying a powered-on VM fails with InvalidPowerState saying the VM is on, as on a
    // real vCenter, and leaves the VM as it was: deskpool powers off before it destroys.
    let e = vc
        .wait_task(&vc.destroy(&vm).await.unwrap())
        .await
        .expect_err("Destroy_Task of a powered-on VM must fail");
    assert_eq!(
        e.fault_kind(),
        Some(&FaultKind::InvalidPowerState {
            existing: Some(PowerState::PoweredOn)
        }),
        "{e}"
    );
    let still = vc.vm_info(&vm).await.unwrap().expect("the VM must survive");
    assert_eq!(still.power_state, PowerState::PoweredOn);
    vc.wait_task(&vc.power_off(&vm).await.unwrap())
        .await
        .unwrap();
    vc.wait_task(&vc.destroy(&vm).await.unwrap()).await.unwrap();
    assert_eq!(vc.vm_info(&vm).await.unwrap(), None);
    assert!(sim.vms(Some("pool-a")).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_name_is_a_permanent_fault() {
    let sim = Vcsim::start(VcsimOptions {
        folders: vec!["pool-a".into()],
        ..Default::default()
    })
    .await;
    let vc = connect(&sim).await;
    let p = placement(&vc, &sim, "DC0/vm/pool-a").await;
    let first = vc
        .clone_linked(&p.golden, &spec(&p, "desk-dup"))
        .await
        .unwrap();
    vc.wait_task(&first).await.unwrap();
    let second = vc
        .clone_linked(&p.golden, &spec(&p, "desk-dup"))
        .await
        .unwrap();
    let err = vc.wait_task(&second).await.unwrap_err();
    assert_eq!(
        err.fault_kind(),
        Some(&FaultKind::DuplicateName {
            name: "desk-dup".into()
        }),
        "{err}"
    );
    assert_eq!(err.kind(), "duplicate_name");
    assert!(!err.is_transient());
    let ti = vc.task_info(&second).await.unwrap();
    assert_eq!(ti.state, TaskState::Error);
    assert_eq!(sim.stats().await.duplicate_name_errors, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_clone_failures_are_transient_faults() {
    let sim = Vcsim::start(VcsimOptions {
        clone_delay: Duration::from_millis(100),
        clone_fail_rate: 1.0,
        ..Default::default()
    })
    .await;
    let vc = connect(&sim).await;
    let p = placement(&vc, &sim, "DC0/vm").await;
    for i in 0..3 {
        let t = vc
            .clone_linked(&p.golden, &spec(&p, &format!("fail-{i}")))
            .await
            .unwrap();
        let err = vc.wait_task(&t).await.unwrap_err();
        assert_eq!(
            err.fault_kind(),
            Some(&FaultKind::InsufficientResources),
            "{err}"
        );
        assert!(err.is_transient());
    }
    assert_eq!(sim.stats().await.injected_clone_failures, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_session_relogs_in_transparently_and_the_watcher_recovers() {
    let sim = Vcsim::start(VcsimOptions {
        clone_delay: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let vc = connect(&sim).await;
    let mut reconnects = vc.subscribe_reconnects();
    let p = placement(&vc, &sim, "DC0/vm").await;

    sim.expire_sessions().await;
    // The next call hits NotAuthenticated, logs in once and is retried.
    assert!(vc
        .find_by_inventory_path(&sim.golden_path)
        .await
        .unwrap()
        .is_some());
    assert!(vc.is_connected());
    assert_eq!(*reconnects.borrow_and_update(), 1);
    assert_eq!(sim.stats().await.calls("Login"), 2);

    // Expire while the watcher long-polls: it rebuilds its filter on the new session and
    // still sees the task finish.
    let task = vc
        .clone_linked(&p.golden, &spec(&p, "desk-exp"))
        .await
        .unwrap();
    let waiter = {
        let vc = vc.clone();
        let task = task.clone();
        tokio::spawn(async move { vc.wait_task(&task).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    sim.expire_sessions().await;
    let vm = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("wait_task finished")
        .unwrap()
        .unwrap();
    assert!(vm.is_some());
    // Later tasks are watched through filters of the new session.
    let task = vc
        .clone_linked(&p.golden, &spec(&p, "desk-exp2"))
        .await
        .unwrap();
    assert!(vc.wait_task(&task).await.unwrap().is_some());
    let stats = sim.stats().await;
    assert!(stats.calls("Login") >= 3, "{:?}", stats.soap_calls);
    assert!(
        stats.calls("CreatePropertyCollector") >= 2,
        "watcher rebuilt: {:?}",
        stats.soap_calls
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_vcenter_relogs_in() {
    let mut sim = Vcsim::start(VcsimOptions::default()).await;
    let vc = connect(&sim).await;
    sim.restart().await;
    assert!(vc
        .find_by_inventory_path(&sim.golden_path)
        .await
        .unwrap()
        .is_some());
    assert!(vc.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_task_is_managed_object_not_found() {
    let sim = Vcsim::start(VcsimOptions::default()).await;
    let vc = connect(&sim).await;
    let gone = MoRef::new("Task", "task-999999");
    let err = vc.wait_task(&gone).await.unwrap_err();
    assert!(
        matches!(
            err.fault_kind(),
            Some(FaultKind::ManagedObjectNotFound { .. })
        ),
        "{err}"
    );
    let err = vc.task_info(&gone).await.unwrap_err();
    assert!(
        matches!(
            err.fault_kind(),
            Some(FaultKind::ManagedObjectNotFound { .. })
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_resolution() {
    let sim = Vcsim::start(VcsimOptions {
        snapshots: [
            "base",
            "base/v2",
            "v2",
            "base/v2/v2",
            "dup",
            "dup",
            "base/v3",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
    .await;
    let vc = connect(&sim).await;
    let golden = vc
        .find_by_inventory_path(&sim.golden_path)
        .await
        .unwrap()
        .unwrap();
    let base_v2 = vc.resolve_snapshot(&golden, "base/v2").await.unwrap();
    let v2 = vc.resolve_snapshot(&golden, "v2").await.unwrap();
    let deep = vc.resolve_snapshot(&golden, "base/v2/v2").await.unwrap();
    assert_eq!(base_v2.kind, "VirtualMachineSnapshot");
    assert_ne!(
        base_v2, v2,
        "same name at another depth is another snapshot"
    );
    assert_ne!(base_v2, deep);
    let current = vc.resolve_snapshot(&golden, "current").await.unwrap();
    assert_eq!(
        current,
        vc.resolve_snapshot(&golden, "base/v3").await.unwrap()
    );

    let err = vc.resolve_snapshot(&golden, "base/v4").await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Snapshot { .. }));
    assert!(msg.contains("'base/v4' not found on VM 'golden"), "{msg}");
    assert!(msg.contains("base/v2/v2"), "lists candidates: {msg}");

    let err = vc.resolve_snapshot(&golden, "dup").await.unwrap_err();
    match &err {
        Error::Snapshot {
            problem,
            candidates,
            ..
        } => {
            assert!(problem.contains("ambiguous"), "{problem}");
            assert_eq!(candidates.len(), 2);
        }
        other => panic!("expected ambiguity, got {other}"),
    }

    sim.remove_snapshots().await;
    let err = vc.resolve_snapshot(&golden, "current").await.unwrap_err();
    assert!(err.to_string().contains("no snapshots"), "{err}");
    assert_eq!(err.kind(), "snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_vms_reads_every_page() {
    let sim = Vcsim::start(VcsimOptions {
        folders: vec!["pool-p".into()],
        ..Default::default()
    })
    .await;
    let mut o = options(&sim);
    o.page_size = 10;
    let vc = Client::connect(o).await.unwrap();
    let p = placement(&vc, &sim, "DC0/vm/pool-p").await;
    let tasks: Vec<_> = futures::future::join_all((0..25).map(|i| {
        let (vc, p) = (&vc, &p);
        async move {
            vc.clone_linked(&p.golden, &spec(p, &format!("page-{i:02}")))
                .await
        }
    }))
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    for r in futures::future::join_all(tasks.iter().map(|t| vc.wait_task(t))).await {
        r.unwrap();
    }
    let mut names: Vec<String> = vc
        .list_vms(&p.folder)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        (0..25).map(|i| format!("page-{i:02}")).collect::<Vec<_>>()
    );
    let stats = sim.stats().await;
    assert_eq!(
        stats.calls("DestroyView"),
        1,
        "the container view is destroyed"
    );
    // Non-recursive: the golden VM in DC0/vm is not listed from DC0/vm/pool-p, and the
    // clones are not listed from DC0/vm.
    let root = vc.find_by_inventory_path("DC0/vm").await.unwrap().unwrap();
    assert!(vc
        .list_vms(&root)
        .await
        .unwrap()
        .iter()
        .all(|v| !v.name.starts_with("page-")));
    // The whole inventory, recursively: the golden VM and every clone.
    let all = vc.list_all_vms().await.unwrap();
    assert_eq!(
        all.iter().filter(|v| v.name.starts_with("page-")).count(),
        25
    );
    assert!(all.iter().any(|v| v.name == "golden"));
    assert_eq!(sim.stats().await.calls("DestroyView"), 3);
}

/// The harness pages RetrievePropertiesEx like vCenter (at most `maxObjects` objects and a
/// token): the client follows ContinueRetrievePropertiesEx and sees every VM exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_vms_follows_continuation_tokens() {
    let sim = Vcsim::start(VcsimOptions {
        folders: vec!["many".into()],
        ..Default::default()
    })
    .await;
    let mut o = options(&sim);
    o.page_size = 10;
    let vc = Client::connect(o).await.unwrap();
    let p = placement(&vc, &sim, "DC0/vm/many").await;
    for r in futures::future::join_all((0..25).map(|i| {
        let (vc, p) = (&vc, &p);
        async move {
            let t = vc
                .clone_linked(&p.golden, &spec(p, &format!("many-{i:02}")))
                .await?;
            vc.wait_task(&t).await
        }
    }))
    .await
    {
        assert!(r.unwrap().is_some());
    }
    sim.reset_stats().await;

    let mut names: Vec<String> = vc
        .list_vms(&p.folder)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    names.sort();
    let want: Vec<String> = (0..25).map(|i| format!("many-{i:02}")).collect();
    assert_eq!(names, want, "every VM of the folder exactly once");
    let stats = sim.stats().await;
    assert_eq!(
        stats.calls("RetrievePropertiesEx"),
        1,
        "{:?}",
        stats.soap_calls
    );
    // 25 objects in pages of 10: 10 + 10 + 5.
    assert_eq!(
        stats.calls("ContinueRetrievePropertiesEx"),
        2,
        "{:?}",
        stats.soap_calls
    );

    // The whole inventory: every VM exactly once (compared by moref with the harness's view).
    let mut all: Vec<String> = vc
        .list_all_vms()
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.moref.value)
        .collect();
    all.sort();
    let mut expected: Vec<String> = sim.vms(None).await.into_iter().map(|v| v.moref).collect();
    expected.sort();
    assert!(expected.len() > 25, "{expected:?}");
    assert_eq!(all, expected, "every VM of the inventory exactly once");
    let stats = sim.stats().await;
    assert!(
        stats.calls("ContinueRetrievePropertiesEx") >= 4,
        "{:?}",
        stats.soap_calls
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customization_spec_round_trips_into_a_clone() {
    let sim = Vcsim::start(VcsimOptions::default()).await;
    let vc = connect(&sim).await;
    let cs = vc.customization_spec("vcsim-linux").await.unwrap();
    assert!(
        cs.as_str().contains("CustomizationLinuxPrep"),
        "{}",
        cs.as_str()
    );
    let err = vc.customization_spec("nope").await.unwrap_err();
    assert!(err.fault().is_some(), "{err}");

    let p = placement(&vc, &sim, "DC0/vm").await;
    let mut s = spec(&p, "desk-cust");
    s.customization = Some(cs);
    let vm = vc
        .wait_task(&vc.clone_linked(&p.golden, &s).await.unwrap())
        .await
        .unwrap();
    assert!(vm.is_some());
}

/// 100 concurrent clone tasks are watched with a bounded number of SOAP calls: one long
/// poll for all of them, never one call per task per tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_follows_100_clones_with_bounded_calls() {
    const N: u64 = 100;
    let sim = Vcsim::start(VcsimOptions {
        clone_delay: Duration::from_millis(1500),
        folders: vec!["pool-w".into()],
        ..Default::default()
    })
    .await;
    let vc = connect(&sim).await;
    let p = placement(&vc, &sim, "DC0/vm/pool-w").await;
    sim.reset_stats().await;

    let results = futures::future::join_all((0..N).map(|i| {
        let (vc, p) = (&vc, &p);
        async move {
            let t = vc
                .clone_linked(&p.golden, &spec(p, &format!("w-{i:03}")))
                .await?;
            vc.wait_task(&t).await
        }
    }))
    .await;
    assert!(results.iter().all(|r| matches!(r, Ok(Some(_)))));
    let stats = sim.stats().await;
    assert_eq!(stats.calls("CloneVM_Task"), N);
    assert!(stats.max_clones_in_flight > 1, "clones overlapped");
    let watch = stats.soap_calls_total - N;
    println!(
        "watching {N} clone tasks took {watch} SOAP calls: {:?}",
        stats.soap_calls
    );
    // The README promises "a few calls, not N": one collector, one view, batched
    // ModifyListView and long polls that each report many completions. 12 on a quiet
    // machine; the bound leaves room for a loaded one (completions spread over more
    // answers) but stays far below one call per task.
    const FEW: u64 = 30;
    assert!(
        watch <= FEW,
        "watching {N} tasks took {watch} calls, more than {FEW}: {:?}",
        stats.soap_calls
    );
    assert_eq!(
        stats.calls("CreatePropertyCollector"),
        1,
        "{:?}",
        stats.soap_calls
    );
    assert_eq!(stats.calls("CreateListView"), 1, "{:?}", stats.soap_calls);
    assert_eq!(
        stats.calls("RetrievePropertiesEx"),
        0,
        "no per-task polling"
    );
    assert_eq!(sim.vms(Some("pool-w")).await.len(), N as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keepalive_prevents_idle_expiry() {
    let sim = Vcsim::start(VcsimOptions {
        session_idle: Some(Duration::from_secs(2)),
        ..Default::default()
    })
    .await;
    let mut o = options(&sim);
    o.keepalive_interval = Duration::from_millis(500);
    let vc = Client::connect(o).await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(vc
        .find_by_inventory_path(&sim.golden_path)
        .await
        .unwrap()
        .is_some());
    let stats = sim.stats().await;
    assert!(stats.calls("CurrentTime") >= 3, "{:?}", stats.soap_calls);
    assert_eq!(stats.calls("Login"), 1, "the session never expired");
}

/// Waits for the next batch of the VM watch that mentions `vm` with something other than
/// `Present` (the restatement after a start), `Guest` or `Customization` (what VMware Tools
/// report as the guest boots, tested on their own), up to a few seconds.
async fn next_changes(
    rx: &mut deskpool_vsphere::VmWatch,
    vm: &MoRef,
) -> Vec<deskpool_vsphere::VmChange> {
    use deskpool_vsphere::VmChange;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while seen.is_empty() {
        let batch = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("the VM watch reported nothing in 10 s")
            .expect("the VM watch ended");
        seen.extend(
            batch
                .into_iter()
                .filter(|e| {
                    &e.vm == vm
                        && !matches!(
                            e.change,
                            VmChange::Present(_) | VmChange::Guest(_) | VmChange::Customization(_)
                        )
                })
                .map(|e| e.change),
        );
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_watch_reports_power_changes_and_removal_made_by_someone_else() {
    use deskpool_vsphere::VmChange;
    let sim = Vcsim::start(VcsimOptions::default()).await;
    let vc = connect(&sim).await;
    let p = placement(&vc, &sim, "DC0/vm").await;
    let vm = vc
        .wait_task(
            &vc.clone_linked(&p.golden, &spec(&p, "watched"))
                .await
                .unwrap(),
        )
        .await
        .unwrap()
        .expect("clone result");
    let mut rx = vc.watch_vms();
    // Someone else, in another session, powers the VM on, off, and removes it, faster than
    // the watch asks again: every change still arrives, in order.
    let admin = connect(&sim).await;
    admin
        .wait_task(&admin.power_on(&vm).await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        next_changes(&mut rx, &vm).await,
        vec![VmChange::Power(PowerState::PoweredOn)]
    );
    admin
        .wait_task(&admin.power_off(&vm).await.unwrap())
        .await
        .unwrap();
    admin
        .wait_task(&admin.destroy(&vm).await.unwrap())
        .await
        .unwrap();
    let mut changes = next_changes(&mut rx, &vm).await;
    if changes == vec![VmChange::Power(PowerState::PoweredOff)] {
        changes.extend(next_changes(&mut rx, &vm).await);
    }
    assert_eq!(
        changes,
        vec![VmChange::Power(PowerState::PoweredOff), VmChange::Gone]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_watch_reports_an_announced_vm_removed_before_the_watch_saw_it() {
    use deskpool_vsphere::VmChange;
    let sim = Vcsim::start(VcsimOptions::default()).await;
    let vc = connect(&sim).await;
    let p = placement(&vc, &sim, "DC0/vm").await;
    let mut rx = vc.watch_vms();
    // The first batch (every VM, as Present): the watch now waits a moment before asking
    // again, so what happens next falls between two answers of the collector.
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("first batch")
        .expect("watch running");
    let vm = vc
        .wait_task(
            &vc.clone_linked(&p.golden, &spec(&p, "brief"))
                .await
                .unwrap(),
        )
        .await
        .unwrap()
        .expect("clone result");
    rx.expecter().expect(vm.clone());
    vc.wait_task(&vc.destroy(&vm).await.unwrap()).await.unwrap();
    assert_eq!(next_changes(&mut rx, &vm).await, vec![VmChange::Gone]);
}

/// Waits until the simulator's session objects stop changing as expected (destroy calls run
/// in the background), then returns them.
async fn settled_session_objects(
    sim: &Vcsim,
    want: &std::collections::BTreeMap<String, u64>,
) -> std::collections::BTreeMap<String, u64> {
    let mut now = sim.session_objects().await;
    for _ in 0..100 {
        if &now == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        now = sim.session_objects().await;
    }
    now
}

/// A leadership change aborts the task that owns the VM watch; its PropertyCollector and
/// ContainerView must not stay behind on vCenter (which keeps them up to date for the whole
/// session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_aborted_vm_watches_leave_no_collector_or_view_behind() {
    let sim = Vcsim::start(VcsimOptions::default()).await;
    let vc = connect(&sim).await;
    // The first use of the session's default PropertyCollector gives the session its own
    // copy of it (a simulator detail): count from after that.
    let golden = vc.find_by_inventory_path(&sim.golden_path).await.unwrap();
    vc.vm_info(&golden.unwrap()).await.unwrap();
    let before = sim.session_objects().await;
    for round in 0..10 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let vc2 = vc.clone();
        let owner = tokio::spawn(async move {
            let mut watch = vc2.watch_vms();
            let first = watch.recv().await;
            let _ = tx.send(first);
            std::future::pending::<()>().await;
        });
        let first = rx.await.unwrap().expect("first batch");
        assert!(
            !first.is_empty(),
            "round {round}: the first batch lists the VMs"
        );
        let during = sim.session_objects().await;
        assert!(during.get("PropertyCollector") >= Some(&1), "{during:?}");
        assert!(during.get("ContainerView") >= Some(&1), "{during:?}");
        owner.abort();
        let _ = owner.await;
    }
    let after = settled_session_objects(&sim, &before).await;
    let calls = sim.stats().await.soap_calls;
    assert_eq!(
        after, before,
        "objects left after 10 aborted watches; calls: {calls:?}"
    );
}

/// A datastore outage as vCenter shows it: the VM stays in the inventory but its `config.*`
/// cannot be read. It is reported inaccessible, with the faults, never as gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inaccessible_vm_is_reported_inaccessible_not_dropped() {
    use deskpool_vsphere::VmChange;
    let sim = Vcsim::start(VcsimOptions::default()).await;
    let vc = connect(&sim).await;
    let p = placement(&vc, &sim, "DC0/vm").await;
    let s = spec(&p, "outage");
    let vm = vc
        .wait_task(&vc.clone_linked(&p.golden, &s).await.unwrap())
        .await
        .unwrap()
        .expect("clone result");
    let mut watch = vc.watch_vms();
    sim.set_vm_inaccessible(&vm.value, true).await;
    assert_eq!(
        next_changes(&mut watch, &vm).await,
        vec![VmChange::Inaccessible]
    );

    let listed = vc.list_all_vms().await.unwrap();
    let info = listed
        .iter()
        .find(|v| v.moref == vm)
        .expect("an inaccessible VM is still listed");
    assert!(info.inaccessible, "{info:?}");
    assert_eq!(info.instance_uuid, None);
    assert!(
        info.missing.iter().any(|m| m.path == "config.instanceUuid"),
        "{info:?}"
    );
    assert_eq!(
        vc.vm_info(&vm).await.unwrap().map(|v| v.inaccessible),
        Some(true)
    );

    sim.set_vm_inaccessible(&vm.value, false).await;
    let info = vc.vm_info(&vm).await.unwrap().unwrap();
    assert!(!info.inaccessible && info.missing.is_empty(), "{info:?}");
    assert_eq!(
        info.instance_uuid.as_deref(),
        Some(s.instance_uuid.as_str())
    );
}

/// vSphere without DRS (Standard, Essentials) refuses a clone into a cluster unless it names
/// a host: the placement picks the connected host outside maintenance mode with the lowest
/// memory use, and the clone naming it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_drs_gets_the_least_loaded_usable_host() {
    use deskpool_vsphere::PlacementRule;
    let sim = Vcsim::start(VcsimOptions::default()).await;
    let vc = connect(&sim).await;
    let p = placement(&vc, &sim, "DC0/vm").await;
    let with_drs = vc.placement(&p.pool, &p.golden, None).await.unwrap();
    assert_eq!(with_drs.host, None);
    assert_eq!(
        with_drs.rule,
        PlacementRule::Drs {
            cluster: "DC0_C0".into()
        }
    );

    sim.set_cluster_drs("DC0_C0", false).await;
    // Without a host vCenter refuses the clone.
    let err = vc
        .wait_task(
            &vc.clone_linked(&p.golden, &spec(&p, "no-host"))
                .await
                .unwrap(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("InvalidArgument"), "{err}");

    sim.set_host_state("DC0_C0_H0", serde_json::json!({ "memory_mb": 900 }))
        .await;
    sim.set_host_state(
        "DC0_C0_H1",
        serde_json::json!({ "memory_mb": 100, "maintenance": true }),
    )
    .await;
    sim.set_host_state("DC0_C0_H2", serde_json::json!({ "memory_mb": 500 }))
        .await;
    let chosen = vc.placement(&p.pool, &p.golden, None).await.unwrap();
    match &chosen.rule {
        PlacementRule::LeastLoadedHost {
            cluster,
            host,
            memory_mb,
            usable,
            hosts,
        } => {
            assert_eq!(
                (cluster.as_str(), host.as_str(), *memory_mb, *usable, *hosts),
                ("DC0_C0", "DC0_C0_H2", 500, 2, 3)
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(
        chosen.rule.to_string().contains("DRS off"),
        "{}",
        chosen.rule
    );
    let mut s = spec(&p, "with-host");
    s.host = chosen.host.clone();
    let vm = vc
        .wait_task(&vc.clone_linked(&p.golden, &s).await.unwrap())
        .await
        .unwrap();
    assert!(vm.is_some());

    // No usable host left: a clear error, not a clone doomed to fail.
    for h in ["DC0_C0_H0", "DC0_C0_H2"] {
        sim.set_host_state(h, serde_json::json!({ "connected": false }))
            .await;
    }
    let err = vc.placement(&p.pool, &p.golden, None).await.unwrap_err();
    assert!(
        matches!(err, Error::Placement(_)) && err.to_string().contains("DRS off"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_with_power_on_runs_the_vm_when_the_task_ends() {
    const CLONE_DELAY: Duration = Duration::from_millis(100);
    const POWER_DELAY: Duration = Duration::from_millis(150);
    let sim = Vcsim::start(VcsimOptions {
        folders: vec!["lab".into()],
        clone_delay: CLONE_DELAY,
        power_delay: POWER_DELAY,
        ..Default::default()
    })
    .await;
    let vc = connect(&sim).await;
    let p = placement(&vc, &sim, "DC0/vm/lab").await;

    let on = LinkedCloneSpec {
        power_on: true,
        ..spec(&p, "on-1")
    };
    let vm = vc
        .wait_task(&vc.clone_linked(&p.golden, &on).await.unwrap())
        .await
        .unwrap()
        .expect("clone result");
    assert_eq!(
        vc.vm_info(&vm).await.unwrap().unwrap().power_state,
        PowerState::PoweredOn,
        "spec.powerOn: the VM runs once the clone task has ended"
    );
    let off = vc
        .wait_task(
            &vc.clone_linked(&p.golden, &spec(&p, "off-1"))
                .await
                .unwrap(),
        )
        .await
        .unwrap()
        .expect("clone result");
    assert_eq!(
        vc.vm_info(&off).await.unwrap().unwrap().power_state,
        PowerState::PoweredOff
    );
    assert_eq!(sim.stats().await.calls("PowerOnVM_Task"), 0);

    let clones = sim.clones().await;
    assert_eq!(
        clones
            .iter()
            .map(|c| (c.name.as_str(), c.folder.as_str(), c.power_on, c.ok))
            .collect::<Vec<_>>(),
        [("on-1", "lab", true, true), ("off-1", "lab", false, true)]
    );
    // The power-on is part of the clone task, as on vCenter: it ends no sooner than both
    // delays (a lower bound, whatever the machine's load).
    let took = |c: &deskpool_testkit::vcsim::CloneRecord| {
        Duration::from_micros((c.done_us - c.received_us) as u64)
    };
    assert!(took(&clones[0]) >= CLONE_DELAY + POWER_DELAY, "{clones:?}");
    assert!(took(&clones[1]) >= CLONE_DELAY, "{clones:?}");
    sim.reset_stats().await;
    assert!(sim.clones().await.is_empty());
}

/// The watch reports what VMware Tools say of a guest as it boots (Tools running, then an
/// address), a customization's outcome from vCenter's events, and a power-off clearing Tools
/// and the address; all without a call per VM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_watch_reports_guest_tools_address_and_customization_outcome() {
    use deskpool_vsphere::{Customization, GuestReport, VmChange};
    let sim = Vcsim::start(VcsimOptions::default()).await;
    sim.set_guest(serde_json::json!({"rules": [
        {"pattern": "cust-bad", "customization_failure": "sysprep exited with code 31"},
    ]}))
    .await;
    let vc = connect(&sim).await;
    let p = placement(&vc, &sim, "DC0/vm").await;
    let cs = vc.customization_spec("vcsim-linux").await.unwrap();
    let mut watch = vc.watch_vms();
    let mut vms = Vec::new();
    for name in ["plain", "cust-ok", "cust-bad"] {
        let mut s = spec(&p, name);
        if name != "plain" {
            s.customization = Some(cs.clone());
        }
        let vm = vc
            .wait_task(&vc.clone_linked(&p.golden, &s).await.unwrap())
            .await
            .unwrap()
            .expect("clone result");
        vms.push(vm);
    }
    let calls_before = sim.stats().await.soap_calls;
    for vm in &vms {
        vc.wait_task(&vc.power_on(vm).await.unwrap()).await.unwrap();
    }
    let (plain, ok, bad) = (&vms[0], &vms[1], &vms[2]);
    let mut ip = std::collections::HashMap::new();
    let mut tools = std::collections::HashMap::new();
    let mut outcome = std::collections::HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while ip.len() < 3 || outcome.len() < 2 {
        let batch = tokio::time::timeout_at(deadline, watch.recv())
            .await
            .unwrap_or_else(|_| panic!("guests never came up: ip {ip:?} outcome {outcome:?}"))
            .expect("watch running");
        for e in batch {
            match e.change {
                VmChange::Guest(g) => {
                    if let Some(t) = g.tools_running_status {
                        tools.insert(e.vm.clone(), t);
                    }
                    if let Some(a) = g.ip_address.filter(|a| !a.is_empty()) {
                        ip.insert(e.vm.clone(), a);
                    }
                }
                VmChange::Customization(c) if c != Customization::Started => {
                    outcome.insert(e.vm.clone(), c);
                }
                _ => {}
            }
        }
    }
    for vm in &vms {
        assert_eq!(tools[vm], "guestToolsRunning");
        assert!(ip[vm].starts_with("127."), "{}", ip[vm]);
    }
    assert!(!outcome.contains_key(plain), "no customization, no event");
    assert_eq!(outcome[ok], Customization::Succeeded);
    match &outcome[bad] {
        Customization::Failed(msg) => {
            assert!(msg.contains("sysprep exited with code 31"), "{msg}")
        }
        other => panic!("cust-bad: {other:?}"),
    }
    let calls = sim.stats().await.soap_calls;
    for m in [
        "RetrieveProperties",
        "RetrievePropertiesEx",
        "QueryEvents",
        "ReadNextEvents",
    ] {
        assert_eq!(
            calls.get(m).copied().unwrap_or(0),
            calls_before.get(m).copied().unwrap_or(0),
            "{m}: the guest was polled"
        );
    }

    vc.wait_task(&vc.power_off(plain).await.unwrap())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let batch = tokio::time::timeout_at(deadline, watch.recv())
            .await
            .expect("no guest change after the power-off")
            .expect("watch running");
        let cleared = batch.iter().any(|e| {
            &e.vm == plain
                && e.change
                    == VmChange::Guest(GuestReport {
                        tools_running_status: Some("guestToolsNotRunning".into()),
                        ip_address: Some(String::new()),
                    })
        });
        if cleared {
            break;
        }
    }
}

/// Watches dropped while VMs power on and off (every power change posts events to the
/// watches' event collectors) never wedge the simulator: govmomi 0.24.2 locks the
/// EventManager then a collector to post, the collector then the EventManager to destroy it;
/// the harness takes a destroyed collector off the EventManager's list first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_vm_watches_during_power_changes_never_wedges_the_simulator() {
    let sim = Vcsim::start(VcsimOptions::default()).await;
    let vc = connect(&sim).await;
    let p = placement(&vc, &sim, "DC0/vm").await;
    let mut vms = Vec::new();
    for i in 0..4 {
        let vm = vc
            .wait_task(
                &vc.clone_linked(&p.golden, &spec(&p, &format!("flip-{i}")))
                    .await
                    .unwrap(),
            )
            .await
            .unwrap()
            .expect("clone result");
        vms.push(vm);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flippers = Vec::new();
    for vm in vms {
        let (admin, stop) = (connect(&sim).await, std::sync::Arc::clone(&stop));
        flippers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = admin.wait_task(&admin.power_on(&vm).await.unwrap()).await;
                let _ = admin.wait_task(&admin.power_off(&vm).await.unwrap()).await;
            }
        }));
    }
    for _ in 0..30 {
        let mut watch = vc.watch_vms();
        tokio::time::timeout(Duration::from_secs(20), watch.recv())
            .await
            .expect("the simulator stopped answering (deadlocked?)")
            .expect("watch running");
        drop(watch);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flippers {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .expect("power changes stopped finishing: the simulator is wedged")
            .unwrap();
    }
}
