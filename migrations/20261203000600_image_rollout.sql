-- Image rollouts (#11): a pool's desktops move to a new golden snapshot, new before old.
-- Migrations are append-only: never edit this file once applied; add a new one instead.

ALTER TABLE pools
    -- Spec: how a rollout runs. NULL max_surge means the pool's max_concurrent_clones.
    ADD COLUMN max_surge          integer CHECK (max_surge BETWEEN 1 AND 256),
    ADD COLUMN max_unavailable    integer NOT NULL DEFAULT 0 CHECK (max_unavailable >= 0),
    ADD COLUMN stop_on_error      boolean NOT NULL DEFAULT true,
    ADD COLUMN logoff_policy      text NOT NULL DEFAULT 'wait' CHECK (logoff_policy IN ('wait', 'force')),
    ADD COLUMN force_after_secs   integer NOT NULL DEFAULT 3600
                                  CHECK (force_after_secs BETWEEN 0 AND 604800),
    -- Status: the rollout to `snapshot_moref` (the pool's pinned image) from the previous one.
    ADD COLUMN rollout_state      text NOT NULL DEFAULT 'idle'
                                  CHECK (rollout_state IN ('idle', 'rolling', 'stopped', 'done')),
    ADD COLUMN rollout_from       text,
    ADD COLUMN rollout_to         text,
    ADD COLUMN rollout_started_at timestamptz,
    ADD COLUMN rollout_last_error text,
    ADD CONSTRAINT pools_rollout_whole CHECK (
        rollout_state = 'idle' OR (rollout_to IS NOT NULL AND rollout_started_at IS NOT NULL));

-- Per-image counts and the outdated gauge group a pool's desktops by moref.
CREATE INDEX desktops_pool_snapshot ON desktops (pool_id, snapshot_moref);
