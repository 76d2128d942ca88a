-- A desktop whose VM cannot be destroyed, and a desktop whose VM cannot be read (#12 items 6, 3).
-- Migrations are append-only: never edit this file once applied; add a new one instead.

ALTER TABLE desktops
    -- Failed tries to destroy the desktop's VM (a fault such as NoPermission), counted against
    -- this desktop rather than its pool; back to 0 whenever the desktop is marked `deleting`.
    ADD COLUMN destroy_failures    integer NOT NULL DEFAULT 0 CHECK (destroy_failures >= 0),
    -- When deskpool stopped trying (the desktop is then `failed`, the reason in last_error,
    -- and stays until an admin deletes it again).
    ADD COLUMN destroy_given_up_at timestamptz,
    -- vCenter reports the VM inaccessible (a datastore outage: its config cannot be read).
    -- The desktop is kept as it is until the VM is readable again.
    ADD COLUMN inaccessible        boolean NOT NULL DEFAULT false;
