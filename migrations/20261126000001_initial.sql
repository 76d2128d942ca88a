-- deskpool initial schema. Migrations are append-only: never edit this file once applied;
-- add a new one instead.

CREATE TABLE pools (
    id                    uuid PRIMARY KEY,
    name                  text NOT NULL,
    vcenter               text NOT NULL CHECK (vcenter <> ''),
    datacenter            text NOT NULL CHECK (datacenter <> ''),
    golden_vm             text NOT NULL CHECK (golden_vm <> ''),
    snapshot              text NOT NULL CHECK (snapshot <> ''),
    folder                text NOT NULL CHECK (folder <> ''),
    resource_pool         text NOT NULL CHECK (resource_pool <> ''),
    datastore             text CHECK (datastore <> ''),
    customization_spec    text CHECK (customization_spec <> ''),
    naming_pattern        text NOT NULL CHECK (naming_pattern LIKE '%{n%}%'),
    guest_os              text NOT NULL DEFAULT 'windows' CHECK (guest_os IN ('windows', 'other')),
    target_size           integer NOT NULL CHECK (target_size >= 0),
    min_size              integer NOT NULL DEFAULT 0 CHECK (min_size >= 0),
    max_size              integer NOT NULL CHECK (max_size >= 1),
    power_on              boolean NOT NULL DEFAULT true,
    max_concurrent_clones integer NOT NULL DEFAULT 8 CHECK (max_concurrent_clones >= 1),
    enabled               boolean NOT NULL DEFAULT true,
    -- Status, owned by the reconciler (and resume/delete through the API).
    state                 text NOT NULL DEFAULT 'ok'
                          CHECK (state IN ('ok', 'error', 'stopped', 'deleting')),
    last_error            text,
    consecutive_failures  integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    -- The snapshot `snapshot` resolved to, recorded by the reconciler.
    snapshot_moref        text,
    -- Bumped on every spec change: the ETag, and the optimistic-concurrency check.
    version               bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pools_name_key UNIQUE (name),
    CONSTRAINT pools_name_slug CHECK (name ~ '^[a-z][a-z0-9-]{0,62}$' AND name !~ '-$'),
    CONSTRAINT pools_size_bounds CHECK (min_size <= max_size AND target_size BETWEEN min_size AND max_size)
);

CREATE TABLE desktops (
    id             uuid PRIMARY KEY,
    pool_id        uuid NOT NULL REFERENCES pools (id) ON DELETE CASCADE,
    name           text NOT NULL CHECK (name <> ''),
    idx            integer NOT NULL CHECK (idx >= 1),
    -- Generated and committed before any vCenter call: finds the VM again after a crash.
    instance_uuid  uuid NOT NULL,
    vm_moref       text,
    state          text NOT NULL
                   CHECK (state IN ('pending', 'cloning', 'powering_on', 'ready', 'failed', 'deleting')),
    -- The last task started for this desktop: a hint only, tasks expire in vCenter.
    task_moref     text,
    -- The snapshot this desktop was cloned from.
    snapshot_moref text,
    powered_on     boolean NOT NULL DEFAULT false,
    last_error     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    ready_at       timestamptz,
    CONSTRAINT desktops_name_key UNIQUE (name),
    CONSTRAINT desktops_pool_idx_key UNIQUE (pool_id, idx),
    CONSTRAINT desktops_instance_uuid_key UNIQUE (instance_uuid)
);
CREATE INDEX desktops_pool_state ON desktops (pool_id, state);

-- Audit trail. Pool and desktop are kept by name so events outlive what they describe.
CREATE TABLE events (
    id      bigserial PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    pool    text,
    desktop text,
    actor   text NOT NULL CHECK (actor <> ''),
    kind    text NOT NULL CHECK (kind <> ''),
    message text NOT NULL
);
CREATE INDEX events_pool_id ON events (pool, id DESC);

CREATE TABLE api_tokens (
    id           uuid PRIMARY KEY,
    name         text NOT NULL CHECK (name <> ''),
    role         text NOT NULL CHECK (role IN ('admin', 'helpdesk', 'viewer')),
    -- SHA-256 of the secret; the secret itself is shown once and never stored.
    secret_hash  bytea NOT NULL CHECK (length(secret_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CONSTRAINT api_tokens_secret_hash_key UNIQUE (secret_hash)
);
CREATE UNIQUE INDEX api_tokens_active_name_key ON api_tokens (name) WHERE revoked_at IS NULL;

-- Leader lease: one active reconciler. `token` is the fencing token, bumped on every
-- change of owner; every reconciler write checks it.
CREATE TABLE leases (
    name       text PRIMARY KEY,
    owner      text NOT NULL,
    token      bigint NOT NULL CHECK (token >= 1),
    expires_at timestamptz NOT NULL
);

-- Wake the reconciler when a pool's spec changes (the API bumps `version`), whoever wrote it.
CREATE FUNCTION deskpool_notify_pool() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('deskpool_pools', NEW.name);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER pools_notify_insert AFTER INSERT ON pools
    FOR EACH ROW EXECUTE FUNCTION deskpool_notify_pool();
CREATE TRIGGER pools_notify_update AFTER UPDATE ON pools
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version OR OLD.state IS DISTINCT FROM NEW.state
                       OR OLD.enabled IS DISTINCT FROM NEW.enabled)
    EXECUTE FUNCTION deskpool_notify_pool();
