//! The reconciler against a real PostgreSQL and the vcsim harness.

mod common;

use std::time::Duration;

use common::*;
use deskpool_domain::{DesktopState, PoolState};
use deskpool_reconciler::Leadership;
use deskpool_store::pools;
use deskpool_testkit::vcsim::{Vcsim, VcsimOptions};
use rand::Rng;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

fn sim_opts(folders: &[&str], clone_delay_ms: u64) -> VcsimOptions {
    VcsimOptions {
        clone_delay: Duration::from_millis(clone_delay_ms),
        folders: folders.iter().map(|f| f.to_string()).collect(),
        ..Default::default()
    }
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn fills_from_zero_with_linked_clones(pool_opts: PgPoolOptions, opts: PgConnectOptions) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"], 200)).await;
    create_pool(&db, &spec("lab", 10, 4)).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    converged(&db, &sim, "lab", 10).await;
    let stats = sim.stats().await;
    assert!(
        stats.max_clones_in_flight_by_folder["lab"] <= 4,
        "{stats:?}"
    );
    assert_eq!(stats.clone_requests, 10, "exactly one clone per desktop");
    assert_eq!(
        stats.calls("PowerOnVM_Task"),
        10,
        "exactly one power-on per desktop"
    );
    let kinds = event_kinds(&db, "lab").await;
    for k in ["clone_started", "clone_succeeded", "desktop_ready"] {
        assert_eq!(
            kinds.iter().filter(|x| *x == k).count(),
            10,
            "{k}: {kinds:?}"
        );
    }
    // The pool records the snapshot it resolved, and every desktop the one it was cloned from.
    let golden = sim.golden().await;
    let mut c = db.acquire().await.unwrap();
    let p = pools::get(&mut c, "lab").await.unwrap().unwrap();
    assert_eq!(
        p.snapshot_moref.as_deref(),
        Some(golden.current_snapshot.as_str())
    );
    assert!(rows(&db, "lab")
        .await
        .iter()
        .all(|d| d.snapshot_moref == p.snapshot_moref));
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn scales_up_and_down_while_provisioning(pool_opts: PgPoolOptions, opts: PgConnectOptions) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"], 300)).await;
    create_pool(&db, &spec("lab", 12, 4)).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    // The third-lowest index among the desktops ready before the shrink (more may finish
    // before the reconciler acts, never fewer).
    let third_ready = eventually("some desktops ready", || async {
        let r = rows(&db, "lab").await;
        let mut ready: Vec<u32> = r
            .iter()
            .filter(|d| d.state == DesktopState::Ready)
            .map(|d| d.index)
            .collect();
        ready.sort_unstable();
        ready.get(2).copied()
    })
    .await;
    set_target(&db, "lab", 3).await;
    converged(&db, &sim, "lab", 3).await;
    // Scale down removes desktops still provisioning first, then the highest indexes: what is
    // kept are the lowest-indexed ready desktops. Clones in flight finish in any order, so
    // which three that is depends on timing, but never above `third_ready`.
    let kept = rows(&db, "lab").await;
    assert!(kept.iter().all(|d| d.state == DesktopState::Ready));
    assert!(
        kept.iter().all(|d| d.index <= third_ready),
        "kept {:?}, yet {third_ready} was the third-lowest ready index",
        kept.iter().map(|d| d.index).collect::<Vec<_>>()
    );
    // Growing again reuses the freed indexes, lowest first.
    set_target(&db, "lab", 7).await;
    converged(&db, &sim, "lab", 7).await;
    let idx: Vec<u32> = rows(&db, "lab").await.iter().map(|d| d.index).collect();
    assert_eq!(idx, [1, 2, 3, 4, 5, 6, 7]);
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn concurrency_bounds_hold_at_the_harness(pool_opts: PgPoolOptions, opts: PgConnectOptions) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["a", "b", "c"], 400)).await;
    for p in ["a", "b", "c"] {
        create_pool(&db, &spec(p, 8, 3)).await;
    }
    let mut cfg = config("a");
    cfg.max_concurrent_per_vcenter = 5;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], cfg);
    for p in ["a", "b", "c"] {
        converged(&db, &sim, p, 8).await;
    }
    let stats = sim.stats().await;
    assert!(
        stats.max_clones_in_flight <= 5,
        "vCenter bound exceeded: {stats:?}"
    );
    for p in ["a", "b", "c"] {
        assert!(
            stats.max_clones_in_flight_by_folder[p] <= 3,
            "pool bound exceeded: {stats:?}"
        );
    }
    assert!(
        stats.max_clones_in_flight >= 2,
        "no parallelism at all: {stats:?}"
    );
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn injected_failures_converge_and_leave_nothing_behind(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(VcsimOptions {
        clone_fail_rate: 0.3,
        fail_leave_vm_rate: 0.5,
        seed: 7,
        ..sim_opts(&["lab"], 100)
    })
    .await;
    create_pool(&db, &spec("lab", 15, 5)).await;
    let mut cfg = config("a");
    cfg.stop_after_failures = 0; // keep going whatever the failure streak
    let _r = Replica::start(&opts, vec![vcenter(&sim)], cfg);
    converged(&db, &sim, "lab", 15).await;
    let stats = sim.stats().await;
    assert!(
        stats.injected_clone_failures > 0,
        "no failure was injected: {stats:?}"
    );
    let kinds = event_kinds(&db, "lab").await;
    assert!(kinds.iter().any(|k| k == "clone_failed"));
    // Every failed clone's row was replaced and any VM it left was destroyed: the folder
    // holds exactly the 15 desktops (checked by `converged`), and the failure count is back.
    let p = pool(&db, "lab").await;
    assert_eq!(p.state, PoolState::Ok);
    assert_eq!(
        p.consecutive_failures, 0,
        "the last clone succeeded, yet the failure count stayed"
    );
}

/// README, clone faults: another fault raises the pool's `consecutive_failures` and backs
/// off; a successful clone resets the count (no resume involved).
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_successful_clone_resets_the_failure_count(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(VcsimOptions {
        clone_fail_rate: 1.0,
        ..sim_opts(&["lab"], 20)
    })
    .await;
    create_pool(&db, &spec("lab", 2, 1)).await;
    let mut cfg = config("a");
    cfg.stop_after_failures = 0;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], cfg);
    // The failure count is written with the failed clone, the note by the pass after it.
    let seen = eventually("two clone failures in a row, shown on the pool", || async {
        let p = pool(&db, "lab").await;
        (p.consecutive_failures >= 2 && p.last_error.is_some()).then_some(p)
    })
    .await;
    assert_eq!(
        seen.state,
        PoolState::Ok,
        "stop_after_failures = 0 never stops"
    );
    assert!(
        seen.last_error
            .as_deref()
            .is_some_and(|m| m.contains("InsufficientResources")),
        "{:?}",
        seen.last_error
    );
    sim.set_config(serde_json::json!({"clone_fail_rate": 0.0}))
        .await;
    converged(&db, &sim, "lab", 2).await;
    let p = pool(&db, "lab").await;
    assert_eq!(p.consecutive_failures, 0, "a success must reset the count");
    assert_eq!(p.state, PoolState::Ok);
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn stops_after_consecutive_failures_until_resumed(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(VcsimOptions {
        clone_fail_rate: 1.0,
        ..sim_opts(&["lab"], 50)
    })
    .await;
    create_pool(&db, &spec("lab", 4, 1)).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    let msg = eventually("pool to stop provisioning", || async {
        match pool_state(&db, "lab").await {
            (PoolState::Stopped, Some(m)) => Some(m),
            _ => None,
        }
    })
    .await;
    assert!(
        msg.contains("3 clone failures in a row") && msg.contains("resume"),
        "{msg}"
    );
    // With one clone in flight the count stops exactly at the threshold.
    assert_eq!(pool(&db, "lab").await.consecutive_failures, 3);
    let attempts = sim.stats().await.clone_requests;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        sim.stats().await.clone_requests,
        attempts,
        "stopped pool kept cloning"
    );
    // Fix the cause, resume: the pool fills.
    sim.set_config(serde_json::json!({"clone_fail_rate": 0.0}))
        .await;
    let mut c = db.acquire().await.unwrap();
    let resumed = pools::set_enabled(&mut c, "lab", true).await.unwrap();
    assert_eq!(resumed.consecutive_failures, 0, "resume clears the count");
    converged(&db, &sim, "lab", 4).await;
    let p = pool(&db, "lab").await;
    assert_eq!((p.state, p.consecutive_failures), (PoolState::Ok, 0));
    assert!(event_kinds(&db, "lab")
        .await
        .contains(&"provisioning_stopped".to_owned()));
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn removed_snapshot_puts_the_pool_in_error(pool_opts: PgPoolOptions, opts: PgConnectOptions) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"], 100)).await;
    create_pool(&db, &spec("lab", 2, 2)).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    converged(&db, &sim, "lab", 2).await;
    sim.remove_snapshots().await;
    set_target(&db, "lab", 5).await;
    let msg = eventually("pool to go to error", || async {
        match pool_state(&db, "lab").await {
            (PoolState::Error, Some(m)) => Some(m),
            _ => None,
        }
    })
    .await;
    assert!(
        msg.contains("snapshot") && msg.contains("golden"),
        "unclear message: {msg}"
    );
    let before = sim.stats().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = sim.stats().await;
    assert_eq!(
        after.clone_requests, before.clone_requests,
        "kept cloning in error"
    );
    assert_eq!(after.non_linked_clones, 0, "fell back to a full clone");
    assert!(event_kinds(&db, "lab")
        .await
        .contains(&"pool_error".to_owned()));
}

/// #12 item 4: a pass that concludes `error` about a spec the admin has fixed in the meantime
/// must not overwrite the fix (every vCenter call takes over a second here, so the fixing
/// `PUT` lands while the first pass is still resolving the broken snapshot).
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_fix_saved_during_a_slow_pass_is_not_overwritten_by_its_error(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["warm", "lab"], 50)).await;
    let sdk: std::net::SocketAddr = sim
        .sdk_url
        .trim_start_matches("http://")
        .trim_end_matches("/sdk")
        .parse()
        .unwrap();
    let vc_link = deskpool_testkit::proxy::Proxy::start(sdk).await;
    let mut vc = vcenter(&sim);
    vc.options.url = format!("http://{}/sdk", vc_link.addr).parse().unwrap();
    vc.options.call_timeout = Duration::from_secs(30);
    create_pool(&db, &spec("warm", 1, 1)).await;
    let _r = Replica::start(&opts, vec![vc], config("a"));
    converged(&db, &sim, "warm", 1).await;

    vc_link.set_latency(Duration::from_millis(600));
    let mut broken = spec("lab", 2, 2);
    broken.snapshot = "no-such-snapshot".into();
    create_pool(&db, &broken).await;
    // The pass over the broken spec is now resolving it, one slow call after another.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let at_fix = pool(&db, "lab").await;
    assert_eq!(
        (at_fix.state, at_fix.last_error.as_deref()),
        (PoolState::Ok, None),
        "the first pass finished before the fix: the test did not race it"
    );
    {
        let mut c = db.acquire().await.unwrap();
        pools::update_spec(&mut c, "lab", &spec("lab", 2, 2), None)
            .await
            .unwrap();
    }
    // Past the first pass (well over 2 s of calls), vCenter answers quickly again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    vc_link.set_latency(Duration::ZERO);
    converged(&db, &sim, "lab", 2).await;
    let p = pool(&db, "lab").await;
    assert_eq!((p.state, p.last_error), (PoolState::Ok, None));
    assert!(
        !event_kinds(&db, "lab")
            .await
            .contains(&"pool_error".to_owned()),
        "an error about the old spec was recorded"
    );
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn crash_at_random_moments_converges_exactly(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"], 300)).await;
    create_pool(&db, &spec("lab", 16, 6)).await;
    let mut rounds = deskpool_testkit::CrashRounds::new("crash test");
    let mut target = 16;
    for round in 0..10 {
        // A new replica id each time, as after a real restart; a short TTL keeps the test quick.
        let mut r = Replica::start(&opts, vec![vcenter(&sim)], config(&format!("r{round}")));
        // Give every round work to interrupt (the target grows), then kill while the harness
        // reports clones running: the replica first waits for the old lease to run out.
        target += rounds.rng.gen_range(2..5);
        set_target(&db, "lab", target).await;
        rounds.kill_moment(&sim, &format!("target {target}")).await;
        r.crash();
    }
    rounds.assert_most_hit_work();
    set_target(&db, "lab", 16).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("final"));
    converged(&db, &sim, "lab", 16).await;
    // `converged` checked exactly 16 rows and 16 VMs in the folder, one per row by instance
    // UUID, with unique names: no duplicate and no orphan survived the crashes. Which indexes
    // remain depends on the random targets (scale-down removes unfinished desktops first).
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn simulator_restart_mid_fill_converges(pool_opts: PgPoolOptions, opts: PgConnectOptions) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let mut sim = Vcsim::start(sim_opts(&["lab"], 300)).await;
    create_pool(&db, &spec("lab", 8, 4)).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    eventually("some desktops ready", || async {
        let r = rows(&db, "lab").await;
        (r.iter().filter(|d| d.state == DesktopState::Ready).count() >= 2).then_some(())
    })
    .await;
    sim.restart().await; // inventory lost, sessions gone, morefs reused for other objects
    converged(&db, &sim, "lab", 8).await;
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn session_expiry_mid_fill_is_transparent(pool_opts: PgPoolOptions, opts: PgConnectOptions) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"], 400)).await;
    create_pool(&db, &spec("lab", 12, 4)).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        sim.expire_sessions().await;
    }
    converged(&db, &sim, "lab", 12).await;
    assert!(
        sim.stats().await.calls("Login") >= 2,
        "never logged in again"
    );
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn two_replicas_one_leader_and_takeover(pool_opts: PgPoolOptions, opts: PgConnectOptions) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"], 200)).await;
    create_pool(&db, &spec("lab", 10, 5)).await;
    let a = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    let b = Replica::start(&opts, vec![vcenter(&sim)], config("b"));
    converged(&db, &sim, "lab", 10).await;
    assert_eq!(
        sim.stats().await.clone_requests,
        10,
        "two replicas cloned the same desktops"
    );
    let mut replicas = [a, b];
    let roles: Vec<Leadership> = replicas.iter().map(|r| r.status.role()).collect();
    let leader = roles.iter().position(|r| *r == Leadership::Leader);
    let leader = leader.unwrap_or_else(|| panic!("no leader: {roles:?}"));
    assert_eq!(roles[1 - leader], Leadership::Standby, "{roles:?}");
    // Kill the leader like kill -9; the standby takes over and handles the next change.
    replicas[leader].crash();
    let standby = &replicas[1 - leader];
    eventually("standby to take over", || async {
        (standby.status.role() == Leadership::Leader).then_some(())
    })
    .await;
    set_target(&db, "lab", 14).await;
    converged(&db, &sim, "lab", 14).await;
    let leases: i64 = sqlx::query_scalar("SELECT token FROM leases")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(leases >= 2, "takeover did not bump the fencing token");
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn deleting_a_pool_removes_every_vm(pool_opts: PgPoolOptions, opts: PgConnectOptions) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"], 100)).await;
    create_pool(&db, &spec("lab", 6, 3)).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    converged(&db, &sim, "lab", 6).await;
    let mut c = db.acquire().await.unwrap();
    pools::mark_deleting(&mut c, "lab").await.unwrap();
    eventually("pool row to disappear", || async {
        let mut c = db.acquire().await.unwrap();
        pools::get(&mut c, "lab")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(sim.vms(Some("lab")).await.is_empty(), "VMs left behind");
    let kinds = event_kinds(&db, "lab").await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "desktop_destroyed").count(),
        6
    );
    assert_eq!(kinds.last().map(String::as_str), Some("pool_deleted"));
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn orphans_are_destroyed_and_vanished_vms_replaced(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"], 50)).await;
    create_pool(&db, &spec("lab", 3, 3)).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    converged(&db, &sim, "lab", 3).await;
    // Forget one desktop in the database: its VM is now an orphan with this pool's marker.
    let victim = rows(&db, "lab").await.pop().unwrap();
    sqlx::query("DELETE FROM desktops WHERE id = $1")
        .bind(victim.id)
        .execute(&db)
        .await
        .unwrap();
    eventually("orphan destroyed and replaced", || async {
        let kinds = event_kinds(&db, "lab").await;
        kinds.contains(&"orphan_destroyed".to_owned()).then_some(())
    })
    .await;
    converged(&db, &sim, "lab", 3).await;
    assert!(sim
        .vms(Some("lab"))
        .await
        .iter()
        .all(|v| v.instance_uuid != victim.instance_uuid.to_string()));
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_resize_wakes_the_reconciler_without_waiting_for_resync(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"], 0)).await;
    create_pool(&db, &spec("lab", 1, 2)).await;
    let mut cfg = config("a");
    cfg.resync_interval = Duration::from_secs(3600);
    let _r = Replica::start(&opts, vec![vcenter(&sim)], cfg);
    converged(&db, &sim, "lab", 1).await;
    set_target(&db, "lab", 3).await;
    // With the periodic resync an hour away, only the NOTIFY can have woken it.
    converged(&db, &sim, "lab", 3).await;
}

#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_vm_destroyed_by_hand_is_replaced_without_waiting_for_resync(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"], 0)).await;
    create_pool(&db, &spec("lab", 3, 3)).await;
    let mut cfg = config("a");
    cfg.resync_interval = Duration::from_secs(3600);
    let _r = Replica::start(&opts, vec![vcenter(&sim)], cfg);
    converged(&db, &sim, "lab", 3).await;
    // Someone removes a desktop's VM in the vSphere client.
    let victim = rows(&db, "lab").await.remove(1);
    let vm = deskpool_vsphere::MoRef::new("VirtualMachine", victim.vm_moref.clone().unwrap());
    let admin = deskpool_vsphere::Client::connect(vcenter(&sim).options)
        .await
        .unwrap();
    admin
        .wait_task(&admin.power_off(&vm).await.unwrap())
        .await
        .unwrap();
    admin
        .wait_task(&admin.destroy(&vm).await.unwrap())
        .await
        .unwrap();
    // Only vCenter's change report can have told the reconciler (the sweep is an hour away).
    eventually("the vanished desktop to be replaced", || async {
        let r = rows(&db, "lab").await;
        let replaced = r.iter().all(|d| d.id != victim.id) && r.len() == 3;
        replaced.then_some(())
    })
    .await;
    converged(&db, &sim, "lab", 3).await;
}

/// README, pool states: a paused pool is neither grown nor shrunk; resumed, it converges.
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_paused_pool_is_neither_grown_nor_shrunk(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"], 50)).await;
    create_pool(&db, &spec("lab", 2, 2)).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    converged(&db, &sim, "lab", 2).await;
    let mut c = db.acquire().await.unwrap();
    pools::set_enabled(&mut c, "lab", false).await.unwrap();
    let clones = sim.stats().await.clone_requests;
    set_target(&db, "lab", 4).await;
    // Several resync periods (2 s): a pass runs and must do nothing.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        sim.stats().await.clone_requests,
        clones,
        "a paused pool grew"
    );
    assert_eq!(rows(&db, "lab").await.len(), 2);
    set_target(&db, "lab", 1).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(sim.vms(Some("lab")).await.len(), 2, "a paused pool shrank");
    assert!(rows(&db, "lab")
        .await
        .iter()
        .all(|d| d.state == DesktopState::Ready));
    pools::set_enabled(&mut c, "lab", true).await.unwrap();
    converged(&db, &sim, "lab", 1).await;
}

/// README, desktop lifecycle: with `power_on: false` a clone is ready without a power-on.
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn power_on_false_leaves_desktops_off(pool_opts: PgPoolOptions, opts: PgConnectOptions) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"], 50)).await;
    let mut s = spec("lab", 3, 3);
    s.power_on = false;
    create_pool(&db, &s).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    eventually("three ready desktops", || async {
        let r = rows(&db, "lab").await;
        (r.len() == 3 && r.iter().all(|d| d.state == DesktopState::Ready)).then_some(())
    })
    .await;
    let vms = sim.vms(Some("lab")).await;
    assert_eq!(vms.len(), 3);
    assert!(vms.iter().all(|v| v.power_state == "poweredOff"), "{vms:?}");
    assert!(rows(&db, "lab").await.iter().all(|d| !d.powered_on));
    assert_eq!(sim.stats().await.calls("PowerOnVM_Task"), 0);
}

/// README, command line: on SIGINT/SIGTERM serve releases the leader lease so a standby
/// takes over at once. Released means expired in the database the moment the replica stops,
/// whatever the TTL (an hour here, so only the release can explain a takeover).
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_clean_stop_releases_the_lease(pool_opts: PgPoolOptions, opts: PgConnectOptions) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"], 0)).await;
    create_pool(&db, &spec("lab", 1, 1)).await;
    let mut cfg = config("a");
    cfg.lease_ttl = Duration::from_secs(3600);
    let mut a = Replica::start(&opts, vec![vcenter(&sim)], cfg.clone());
    converged(&db, &sim, "lab", 1).await;
    assert_eq!(a.status.role(), Leadership::Leader);
    let live: bool = sqlx::query_scalar("SELECT expires_at > now() FROM leases WHERE owner = 'a'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(live, "the leader's lease is not live");
    a.stop().await;
    let live: bool = sqlx::query_scalar("SELECT expires_at > now() FROM leases WHERE owner = 'a'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(!live, "a clean stop left the lease held for its TTL");
    cfg.replica_id = "b".into();
    let b = Replica::start(&opts, vec![vcenter(&sim)], cfg);
    eventually("b to take the released lease", || async {
        (b.status.role() == Leadership::Leader).then_some(())
    })
    .await;
}

/// README, PostgreSQL restarted: the `LISTEN` connection is re-established. Its backend is
/// killed (pg_terminate_backend, as a restart does); with the resync an hour away, only a new
/// LISTEN can deliver the next resize.
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn listen_is_re_established_after_its_connection_dies(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"], 0)).await;
    create_pool(&db, &spec("lab", 1, 3)).await;
    let mut cfg = config("a");
    cfg.resync_interval = Duration::from_secs(3600);
    let _r = Replica::start(&opts, vec![vcenter(&sim)], cfg);
    converged(&db, &sim, "lab", 1).await;
    let listener_pid = || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()
               AND query ILIKE 'listen%'",
        )
        .fetch_optional(&db)
        .await
        .unwrap()
    };
    let old = eventually("the reconciler's LISTEN backend", listener_pid).await;
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(old)
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(killed);
    eventually("a new LISTEN backend", || async {
        listener_pid().await.filter(|pid| *pid != old)
    })
    .await;
    set_target(&db, "lab", 3).await;
    converged(&db, &sim, "lab", 3).await;
}

/// README, two replicas: every reconciler write checks the fencing token, so a deposed
/// leader cannot write even before it notices. The lease is taken over in the database
/// behind the running leader's back (its TTL is an hour: it has no reason to look).
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_deposed_leader_is_fenced_at_the_reconciler(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"], 0)).await;
    create_pool(&db, &spec("lab", 1, 3)).await;
    let mut cfg = config("a");
    cfg.lease_ttl = Duration::from_secs(3600);
    let a = Replica::start(&opts, vec![vcenter(&sim)], cfg);
    converged(&db, &sim, "lab", 1).await;
    assert_eq!(a.status.role(), Leadership::Leader);
    let taken = sqlx::query(
        "UPDATE leases SET owner = 'usurper', token = token + 1,
             expires_at = now() + interval '1 hour'",
    )
    .execute(&db)
    .await
    .unwrap();
    assert_eq!(taken.rows_affected(), 1);
    let clones = sim.stats().await.clone_requests;
    let reconciler_events = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE actor = 'reconciler'")
            .fetch_one(&db)
            .await
            .unwrap()
    };
    let events = reconciler_events().await;
    set_target(&db, "lab", 4).await; // NOTIFY wakes the old leader at once
                                     // It may not notice it was deposed (its own renewal is 20 min away); what matters is
                                     // that nothing it tries gets written or started.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        rows(&db, "lab").await.len(),
        1,
        "a fenced leader wrote rows"
    );
    assert_eq!(
        sim.stats().await.clone_requests,
        clones,
        "a fenced leader cloned"
    );
    assert_eq!(
        reconciler_events().await,
        events,
        "a fenced leader wrote events"
    );
}

/// A wrong vCenter password at startup: the replica keeps trying, but at most 6 logins a
/// minute reach vCenter (account lockout policies count failed logins).
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn a_wrong_password_costs_at_most_6_logins_a_minute(
    pool_opts: PgPoolOptions,
    opts: PgConnectOptions,
) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"], 0)).await;
    create_pool(&db, &spec("lab", 2, 2)).await;
    let mut vc = vcenter(&sim);
    vc.options.password = secrecy::SecretString::from("not-the-password".to_string());
    let _r = Replica::start(&opts, vec![vc], config("a"));
    tokio::time::sleep(Duration::from_secs(60)).await;
    let logins = sim.stats().await.calls("Login");
    assert!(
        (2..=6).contains(&logins),
        "{logins} Login calls in a minute"
    );
    assert_eq!(sim.stats().await.clone_requests, 0);
}

/// vSphere refuses clones into a cluster without DRS unless they name a host (the harness
/// does too): the pool still fills, every clone on the least loaded usable host.
#[sqlx::test(migrator = "deskpool_store::MIGRATOR")]
async fn fills_a_pool_on_a_cluster_without_drs(pool_opts: PgPoolOptions, opts: PgConnectOptions) {
    let db = pool_opts.connect_with(opts.clone()).await.unwrap();
    let sim = Vcsim::start(sim_opts(&["lab"], 50)).await;
    sim.set_cluster_drs("DC0_C0", false).await;
    sim.set_host_state(
        "DC0_C0_H0",
        serde_json::json!({ "memory_mb": 100, "maintenance": true }),
    )
    .await;
    create_pool(&db, &spec("lab", 3, 2)).await;
    let _r = Replica::start(&opts, vec![vcenter(&sim)], config("a"));
    converged(&db, &sim, "lab", 3).await;
    assert_eq!(sim.stats().await.clone_requests, 3, "no clone was refused");
}
