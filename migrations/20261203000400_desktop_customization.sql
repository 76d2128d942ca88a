-- Ready means usable (#10): what vCenter's guest customization events said of a desktop's VM
-- (`CustomizationStartedEvent`, `CustomizationSucceeded`, a `CustomizationFailed`), so a
-- booting desktop of a pool with a customization spec becomes ready only after its success,
-- across restarts of the daemon. NULL: no event seen.
-- Migrations are append-only: never edit this file once applied; add a new one instead.
ALTER TABLE desktops
    ADD COLUMN customization text CHECK (customization IN ('started', 'succeeded', 'failed'));
