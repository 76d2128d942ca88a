-- Desktops people use (#10): claims, spares, release policy, and readiness by the guest.
-- Migrations are append-only: never edit this file once applied; add a new one instead.

-- `booting`: powered on, waiting for the guest (Tools running and a usable IPv4 address, and
-- the customization's success event when the pool has a customization spec).
ALTER TABLE desktops DROP CONSTRAINT desktops_state_check;
ALTER TABLE desktops ADD CONSTRAINT desktops_state_check
    CHECK (state IN ('pending', 'cloning', 'powering_on', 'booting', 'ready', 'failed', 'deleting'));

ALTER TABLE desktops
    -- A claim: who holds the desktop, since when, until when. All three or none.
    ADD COLUMN claimed_by       text CHECK (claimed_by <> '' AND length(claimed_by) <= 256),
    ADD COLUMN claimed_at       timestamptz,
    ADD COLUMN lease_expires_at timestamptz,
    -- What vCenter last reported of the guest (the VM watch's `guest.*` properties).
    ADD COLUMN ip_address       text,
    ADD COLUMN guest_state      text,
    -- When the desktop entered `booting`: `ready_timeout_secs` counts from here.
    ADD COLUMN booting_at       timestamptz,
    ADD CONSTRAINT desktops_claim_whole CHECK (
        (claimed_by IS NULL) = (claimed_at IS NULL)
        AND (claimed_by IS NULL) = (lease_expires_at IS NULL));

-- One claim per user per pool: claiming again returns the same desktop.
CREATE UNIQUE INDEX desktops_pool_claimed_by_key ON desktops (pool_id, claimed_by)
    WHERE claimed_by IS NOT NULL;
-- The claim query's candidates, and the lease-expiry sweep.
CREATE INDEX desktops_claimable ON desktops (pool_id, idx) WHERE state = 'ready' AND claimed_by IS NULL;
CREATE INDEX desktops_lease_expiry ON desktops (lease_expires_at) WHERE claimed_by IS NOT NULL;

ALTER TABLE pools
    ADD COLUMN min_spare          integer NOT NULL DEFAULT 0 CHECK (min_spare >= 0),
    ADD COLUMN claim_lease_secs   integer NOT NULL DEFAULT 86400
                                  CHECK (claim_lease_secs BETWEEN 60 AND 604800),
    ADD COLUMN on_release         text NOT NULL DEFAULT 'delete' CHECK (on_release IN ('delete', 'keep')),
    ADD COLUMN ready_timeout_secs integer NOT NULL DEFAULT 1800
                                  CHECK (ready_timeout_secs BETWEEN 1 AND 86400),
    ADD COLUMN ready_when         text NOT NULL DEFAULT 'guest_ip'
                                  CHECK (ready_when IN ('guest_ip', 'powered_on')),
    ADD CONSTRAINT pools_min_spare_bound CHECK (min_spare <= max_size);

-- `broker`: a portal or connection broker; may read, claim and release, nothing else.
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_role_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_role_check
    CHECK (role IN ('admin', 'helpdesk', 'viewer', 'broker'));
