-- Installation identity and the record of every VM this installation made (#12 items 1, 2, 7).
-- Migrations are append-only: never edit this file once applied; add a new one instead.

-- One row: this installation's id, generated once. It goes into every clone's markers
-- (`deskpool.installation`), so two installations on one vCenter never take each other's VMs.
CREATE TABLE installation (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- Always true and unique: the table cannot hold a second row.
    singleton  boolean NOT NULL DEFAULT true UNIQUE CHECK (singleton),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO installation DEFAULT VALUES;

-- Every instance UUID this installation gave a desktop, kept after the desktop's row is gone:
-- deskpool destroys a VM only when its instance UUID is here, so a clone that finishes after
-- its desktop (or pool) was deleted is still recognised as deskpool's, and an admin's copy of a
-- desktop (same markers, new instance UUID) never is.
CREATE TABLE issued_instance_uuids (
    instance_uuid uuid PRIMARY KEY,
    pool          text NOT NULL,
    desktop_id    uuid NOT NULL,
    desktop       text NOT NULL,
    issued_at     timestamptz NOT NULL DEFAULT now()
);

-- Recorded by the database itself, in the transaction that commits the desktop's row (before
-- any vCenter call), whatever code path inserts it.
CREATE FUNCTION deskpool_record_issued_uuid() RETURNS trigger AS $$
BEGIN
    INSERT INTO issued_instance_uuids (instance_uuid, pool, desktop_id, desktop)
    SELECT NEW.instance_uuid, p.name, NEW.id, NEW.name FROM pools p WHERE p.id = NEW.pool_id
    ON CONFLICT (instance_uuid) DO NOTHING;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER desktops_record_issued_uuid AFTER INSERT ON desktops
    FOR EACH ROW EXECUTE FUNCTION deskpool_record_issued_uuid();

-- Upgrade: the desktops that exist now were made by this installation.
INSERT INTO issued_instance_uuids (instance_uuid, pool, desktop_id, desktop)
SELECT d.instance_uuid, p.name, d.id, d.name FROM desktops d JOIN pools p ON p.id = d.pool_id;
