//! Clone N linked clones concurrently and report how many SOAP calls the client made to
//! watch them to completion (the watcher's cost per task).
//!
//! `cargo run --release -p deskpool-vsphere --example watch_clones -- SDK_URL USER PASS [N] [GOLDEN_PATH] [FOLDER_PATH]`
//! e.g. against the test harness: `tests/vcsim/build.sh` then run it with `-clone-delay 2s`.

use std::time::Instant;

use deskpool_vsphere::{Client, ClientOptions, LinkedCloneSpec};
use secrecy::SecretString;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: watch_clones SDK_URL USER PASS [N] [GOLDEN_PATH] [FOLDER_PATH]");
        std::process::exit(2);
    }
    let n: usize = args.get(4).map(|s| s.parse()).transpose()?.unwrap_or(100);
    let golden_path = args
        .get(5)
        .cloned()
        .unwrap_or_else(|| "DC0/vm/golden".into());
    let folder_path = args.get(6).cloned().unwrap_or_else(|| "DC0/vm".into());
    let opts = ClientOptions::new(
        args[1].parse()?,
        args[2].clone(),
        SecretString::from(args[3].clone()),
    );
    let vc = Client::connect(opts).await?;
    let golden = vc
        .find_by_inventory_path(&golden_path)
        .await?
        .ok_or("golden VM not found")?;
    let folder = vc
        .find_by_inventory_path(&folder_path)
        .await?
        .ok_or("folder not found")?;
    let pool = vc
        .find_by_inventory_path("DC0/host/DC0_C0/Resources")
        .await?
        .ok_or("resource pool not found")?;
    let snapshot = vc.resolve_snapshot(&golden, "current").await?;
    let run = uuid::Uuid::new_v4().simple().to_string();

    // Like the reconciler: every desktop clones and then waits, all concurrently.
    let started = Instant::now();
    let before = vc.soap_calls();
    let results = futures::future::join_all((0..n).map(|i| {
        let (vc, folder, pool, snapshot, golden, run) =
            (&vc, &folder, &pool, &snapshot, &golden, &run);
        async move {
            let spec = LinkedCloneSpec {
                name: format!("bench-{}-{i:04}", &run[..8]),
                folder: folder.clone(),
                resource_pool: pool.clone(),
                datastore: None,
                host: None,
                snapshot: snapshot.clone(),
                instance_uuid: uuid::Uuid::new_v4().to_string(),
                extra_config: vec![("deskpool.bench".into(), run.clone())],
                customization: None,
                power_on: false,
            };
            let task = vc.clone_linked(golden, &spec).await?;
            vc.wait_task(&task).await
        }
    }))
    .await;
    let calls = vc.soap_calls() - before;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let watch_calls = calls.saturating_sub(n as u64);
    println!(
        "{n} concurrent linked clones ({ok} succeeded) in {:.1} s: {calls} SOAP calls = {n} CloneVM_Task + {watch_calls} to watch them ({:.3} watch calls per task)",
        started.elapsed().as_secs_f64(),
        watch_calls as f64 / n as f64
    );
    vc.logout().await?;
    Ok(())
}
