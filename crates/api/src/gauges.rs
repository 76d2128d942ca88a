//! Gauges for alerting that are read at scrape time: each pool's state, and this replica's
//! leadership and vCenter sessions. Rendered as Prometheus text like the desktop gauges, so a
//! deleted pool or a vCenter removed from the configuration disappears instead of freezing.

use std::fmt::Write as _;

use deskpool_domain::PoolState;
use deskpool_store::pools::Pool;

use crate::model::{HealthSnapshot, ReplicaRole};

/// Label value escaping of the Prometheus text format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `deskpool_pool_state{pool,state}` (1 for the pool's state, 0 for the others) and
/// `deskpool_pool_paused{pool}`.
pub(crate) fn pool_states(pools: &[Pool]) -> String {
    let mut out = String::from(
        "# HELP deskpool_pool_state 1 for each pool's provisioning state, 0 for the others.\n# TYPE deskpool_pool_state gauge\n",
    );
    for p in pools {
        for s in PoolState::ALL {
            let _ = writeln!(
                out,
                "deskpool_pool_state{{pool=\"{}\",state=\"{s}\"}} {}",
                escape(&p.spec.name),
                u8::from(p.state == *s)
            );
        }
    }
    out.push_str("# HELP deskpool_pool_paused 1 when an admin paused the pool.\n# TYPE deskpool_pool_paused gauge\n");
    for p in pools {
        let _ = writeln!(
            out,
            "deskpool_pool_paused{{pool=\"{}\"}} {}",
            escape(&p.spec.name),
            u8::from(!p.spec.enabled)
        );
    }
    out
}

/// `deskpool_desktops_outdated{pool}`: desktops (provisioning or ready) on another image than
/// the pool's, from the per-image counts of every pool.
pub(crate) fn outdated(
    pools: &[Pool],
    images: &std::collections::HashMap<uuid::Uuid, Vec<(Option<String>, u32)>>,
) -> String {
    let mut out = String::from(
        "# HELP deskpool_desktops_outdated Desktops on another image (snapshot) than their pool's.
# TYPE deskpool_desktops_outdated gauge
",
    );
    for p in pools {
        let n = crate::model::outdated_count(p, images.get(&p.id).map_or(&[][..], Vec::as_slice));
        let _ = writeln!(
            out,
            "deskpool_desktops_outdated{{pool=\"{}\"}} {n}",
            escape(&p.spec.name)
        );
    }
    out
}

/// `deskpool_leader` (1 when this replica holds the leader lease) and
/// `deskpool_vcenter_connected{vcenter}`.
pub(crate) fn health(h: &HealthSnapshot) -> String {
    let mut out = format!(
        "# HELP deskpool_leader 1 when this replica holds the leader lease and reconciles.\n# TYPE deskpool_leader gauge\ndeskpool_leader {}\n",
        u8::from(h.role == ReplicaRole::Leader)
    );
    out.push_str("# HELP deskpool_vcenter_connected 1 when this replica has a vCenter session.\n# TYPE deskpool_vcenter_connected gauge\n");
    for v in &h.vcenters {
        let _ = writeln!(
            out,
            "deskpool_vcenter_connected{{vcenter=\"{}\"}} {}",
            escape(&v.name),
            u8::from(v.connected)
        );
    }
    out
}
