"""schemathesis hooks for deskpool's API test (crates/deskpool/tests/schema.rs)."""

import schemathesis

# Operations whose bodies have rules JSON Schema cannot state (see schemathesis.toml), and the
# fields such a rule names when it refuses schema-valid data.
# `min_spare <= max_size` is one such rule; `vcenter` must name a configured connection, which
# the schema cannot list.
CROSS_FIELD = {
    "POST /api/v1/pools": {"target_size", "min_size", "naming_pattern", "min_spare", "vcenter", "max_unavailable"},
    # `max_unavailable <= max_size`; a changed `snapshot` is resolved in vCenter (422 when the
    # golden VM has no such snapshot).
    "PUT /api/v1/pools/{name}": {"target_size", "min_size", "naming_pattern", "name", "min_spare", "vcenter", "max_unavailable", "snapshot"},
    # The snapshot must exist on the golden VM, which the schema cannot know.
    "POST /api/v1/pools/{name}/image": {"snapshot"},
    "PATCH /api/v1/pools/{name}": {"target_size", "min_spare"},
}
# As for every other operation: what schema-valid data may get.
ACCEPTED = {200, 201, 202, 204, 401, 403, 404, 409, 412, 429}


@schemathesis.check
def only_cross_field_rules_refuse_valid_data(ctx, response, case):
    fields = CROSS_FIELD.get(case.operation.label)
    meta = case.meta
    if fields is None or meta is None or not meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if status in ACCEPTED:
        return None
    if status == 422:
        try:
            field = response.json()["error"]["field"]
        except Exception as e:  # noqa: BLE001 - any shape other than ErrorBody is a failure
            raise AssertionError(f"422 without an ErrorBody naming the field: {response.text}") from e
        if field in fields:
            return None
        raise AssertionError(
            f"schema-valid data refused for field {field!r}, which the schema should describe: "
            f"{response.text}"
        )
    raise AssertionError(f"schema-valid data refused with {status}: {response.text}")
