//! The pool spec: what an admin asks for, validated before it is stored.

use crate::naming::NamingPattern;

/// Windows limits computer (NetBIOS) names to 15 characters.
pub const WINDOWS_NAME_LIMIT: usize = 15;
/// Largest pool deskpool accepts (a sanity bound, far above any single pool's real size).
pub const MAX_POOL_SIZE: u32 = 10_000;
/// Largest per-pool clone concurrency accepted.
pub const MAX_CONCURRENT_CLONES: u32 = 256;

/// The rules of the spec's text fields as JSON Schema patterns (ECMA-262), which the OpenAPI
/// document attaches to the fields; [`PoolSpec::validate`] enforces the same rules.
pub mod patterns {
    /// A pool name: see [`super::is_slug`].
    pub const SLUG: &str = "^[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$";
    /// A name (vCenter connection, customization spec): not blank, no control characters.
    pub const NAME: &str =
        "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$";
    /// A relative inventory path: non-blank names joined by single '/', no control characters.
    pub const PATH: &str = "^[^/\\x00-\\x1f\\x7f-\\x9f]*[^/\\s\\x00-\\x1f\\x7f-\\x9f][^/\\x00-\\x1f\\x7f-\\x9f]*(?:/[^/\\x00-\\x1f\\x7f-\\x9f]*[^/\\s\\x00-\\x1f\\x7f-\\x9f][^/\\x00-\\x1f\\x7f-\\x9f]*)*$";
    /// Which pattern each text field of the spec follows.
    pub const FIELDS: &[(&str, &str)] = &[
        ("name", SLUG),
        ("vcenter", NAME),
        ("customization_spec", NAME),
        ("datacenter", PATH),
        ("golden_vm", PATH),
        ("snapshot", PATH),
        ("folder", PATH),
        ("resource_pool", PATH),
        ("datastore", PATH),
    ];
}

/// The guest operating system family, which decides the name length limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum GuestOs {
    /// Windows guests: names are limited to 15 characters.
    #[default]
    Windows,
    /// Any other guest: names up to 63 characters.
    Other,
}

/// What happens to a desktop when its user releases it (or the claim's lease expires).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnRelease {
    /// Destroy it and clone a fresh one, so the next user never sees the last one's session.
    #[default]
    Delete,
    /// Hand it back as it is: ready and unclaimed.
    Keep,
}

impl OnRelease {
    /// The stable string form, as stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Keep => "keep",
        }
    }
}

/// Shortest claim lease accepted, in seconds.
pub const MIN_CLAIM_LEASE_SECS: u32 = 60;
/// Longest claim lease accepted, in seconds (7 days).
pub const MAX_CLAIM_LEASE_SECS: u32 = 604_800;
/// The claim lease a pool gives when its spec names none, in seconds (24 hours).
pub const DEFAULT_CLAIM_LEASE_SECS: u32 = 86_400;

/// A desktop pool as an admin defines it.
///
/// Inventory paths are relative to the datacenter's folders: `golden_vm` and `folder` below
/// `<datacenter>/vm/`, `resource_pool` below `<datacenter>/host/` (a cluster or host name means
/// its root resource pool), `datastore` below `<datacenter>/datastore/`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// Pool name: a lowercase slug (`[a-z0-9-]`, starting with a letter, at most 63 characters).
    pub name: String,
    /// Name of a vCenter connection from the configuration.
    pub vcenter: String,
    /// Datacenter name, e.g. `DC0`.
    pub datacenter: String,
    /// Golden VM path below `<datacenter>/vm/`, e.g. `golden` or `gold/win11`.
    pub golden_vm: String,
    /// `current`, or a snapshot path of names such as `base/v2`.
    #[serde(default = "default_snapshot")]
    pub snapshot: String,
    /// Folder for the desktops, below `<datacenter>/vm/`.
    pub folder: String,
    /// Resource pool, cluster or host below `<datacenter>/host/`, e.g. `DC0_C0` or `DC0_C0/Resources/vdi`.
    pub resource_pool: String,
    /// Datastore below `<datacenter>/datastore/`; the golden VM's datastore when absent.
    #[serde(default)]
    pub datastore: Option<String>,
    /// Name of a guest customization spec stored in vCenter.
    #[serde(default)]
    pub customization_spec: Option<String>,
    /// Desktop naming pattern, e.g. `lab-{n:3}`.
    #[cfg_attr(feature = "openapi", schema(min_length = 1))]
    pub naming_pattern: String,
    /// Guest OS family; Windows limits names to 15 characters.
    #[serde(default)]
    pub guest_os: GuestOs,
    /// Desired number of desktops.
    #[cfg_attr(feature = "openapi", schema(maximum = 10000))]
    #[serde(deserialize_with = "crate::integral::u32")]
    pub target_size: u32,
    /// Lowest target helpdesk may set.
    #[serde(default, deserialize_with = "crate::integral::u32")]
    #[cfg_attr(feature = "openapi", schema(maximum = 10000))]
    pub min_size: u32,
    /// Highest target helpdesk may set.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10000))]
    #[serde(deserialize_with = "crate::integral::u32")]
    pub max_size: u32,
    /// Power desktops on once cloned.
    #[serde(default = "default_true")]
    pub power_on: bool,
    /// At most this many clones of this pool in flight at once.
    #[serde(
        default = "default_concurrency",
        deserialize_with = "crate::integral::u32"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 256))]
    pub max_concurrent_clones: u32,
    /// A disabled (paused) pool is neither grown nor shrunk.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// During an image rollout, at most this many desktops beyond the desired size (1..=256;
    /// default the pool's `max_concurrent_clones`). A surge may pass `max_size` for the
    /// rollout's duration only.
    #[serde(default, deserialize_with = "crate::integral::option_u32")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 256))]
    pub max_surge: Option<u32>,
    /// During an image rollout, claimable desktops may drop this many below what the pool had
    /// (default 0: an outdated desktop is destroyed only once its replacement is ready).
    #[serde(default, deserialize_with = "crate::integral::u32")]
    #[cfg_attr(feature = "openapi", schema(maximum = 10000))]
    pub max_unavailable: u32,
    /// The first failed clone from a new image pauses the rollout (default true).
    #[serde(default = "default_true")]
    pub stop_on_error: bool,
    /// What a rollout does with claimed outdated desktops: `wait` for their release (default)
    /// or `force` their release after `force_after_secs`.
    #[serde(default)]
    pub logoff_policy: LogoffPolicy,
    /// With `logoff_policy: "force"`: the grace, counted from the rollout's start (or the
    /// claim, if later), after which a claimed outdated desktop is released (default 3600).
    #[serde(
        default = "default_force_after",
        deserialize_with = "crate::integral::u32"
    )]
    #[cfg_attr(feature = "openapi", schema(maximum = 604800))]
    pub force_after_secs: u32,
    /// Desktops kept ready and unclaimed on top of the claimed ones (0..=max_size): the
    /// pool's desired size is `min(max_size, max(target_size, claimed + min_spare))`.
    #[serde(default, deserialize_with = "crate::integral::u32")]
    #[cfg_attr(feature = "openapi", schema(maximum = 10000))]
    pub min_spare: u32,
    /// A claim's lease when the claimer asks for none, in seconds (60..=604800).
    #[serde(
        default = "default_claim_lease",
        deserialize_with = "crate::integral::u32"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 60, maximum = 604800))]
    pub claim_lease_secs: u32,
    /// What a release (or an expired lease) does to the desktop.
    #[serde(default)]
    pub on_release: OnRelease,
    /// A powered-on desktop whose guest is not usable this many seconds after power-on is
    /// marked failed (and replaced). 1..=86400.
    #[serde(
        default = "default_ready_timeout",
        deserialize_with = "crate::integral::u32"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 86400))]
    pub ready_timeout_secs: u32,
    /// When a powered-on desktop is ready: `guest_ip` (VMware Tools report a usable IPv4
    /// address) or `powered_on` (at once, for guests without Tools).
    #[serde(default)]
    pub ready_when: ReadyWhen,
}

/// When a powered-on desktop counts as ready (usable, claimable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReadyWhen {
    /// VMware Tools run and report a usable IPv4 address (not 0.0.0.0, not 169.254/16); with
    /// a `customization_spec`, also once vCenter reports the customization succeeded.
    #[default]
    GuestIp,
    /// As soon as the VM is powered on (guests without VMware Tools).
    PoweredOn,
}

impl ReadyWhen {
    /// The stable string form, as stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GuestIp => "guest_ip",
            Self::PoweredOn => "powered_on",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "guest_ip" => Some(Self::GuestIp),
            "powered_on" => Some(Self::PoweredOn),
            _ => None,
        }
    }
}

/// Default `ready_timeout_secs`: half an hour (a Windows guest with sysprep takes minutes).
pub const DEFAULT_READY_TIMEOUT_SECS: u32 = 1800;
/// Largest `ready_timeout_secs` accepted: a day.
pub const MAX_READY_TIMEOUT_SECS: u32 = 86_400;

fn default_ready_timeout() -> u32 {
    DEFAULT_READY_TIMEOUT_SECS
}

/// What an image rollout does with claimed outdated desktops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LogoffPolicy {
    /// Replace a claimed outdated desktop only once its user releases it.
    #[default]
    Wait,
    /// Release it by force after `force_after_secs`, then replace it.
    Force,
}

impl LogoffPolicy {
    /// The stable string form, as stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wait => "wait",
            Self::Force => "force",
        }
    }
}

/// Largest `force_after_secs` accepted (7 days, the longest claim lease).
pub const MAX_FORCE_AFTER_SECS: u32 = 604_800;

fn default_snapshot() -> String {
    "current".to_owned()
}
fn default_true() -> bool {
    true
}
fn default_concurrency() -> u32 {
    8
}
fn default_force_after() -> u32 {
    3600
}
fn default_claim_lease() -> u32 {
    DEFAULT_CLAIM_LEASE_SECS
}

/// Checks a claim lease in seconds against the bounds every lease must keep.
pub fn check_lease_secs(field: &'static str, secs: u32) -> Result<(), SpecError> {
    if !(MIN_CLAIM_LEASE_SECS..=MAX_CLAIM_LEASE_SECS).contains(&secs) {
        return Err(err(
            field,
            format!(
                "{secs} is outside {MIN_CLAIM_LEASE_SECS}..={MAX_CLAIM_LEASE_SECS} seconds (1 minute to 7 days)"
            ),
        ));
    }
    Ok(())
}

/// A spec field that fails validation, with a message that says how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// The offending field, as named in the API.
    pub field: &'static str,
    /// What is wrong and what is expected.
    pub message: String,
}

fn err(field: &'static str, message: impl Into<String>) -> SpecError {
    SpecError {
        field,
        message: message.into(),
    }
}

/// Whether `name` is a lowercase slug: `[a-z][a-z0-9-]*`, no trailing '-', 1..=63 characters.
pub fn is_slug(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=63).contains(&b.len())
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// A name vCenter could hold: not blank, no control characters.
fn check_name(field: &'static str, value: &str, blank: &str) -> Result<(), SpecError> {
    if value.trim().is_empty() {
        return Err(err(field, blank.to_owned()));
    }
    if value.chars().any(char::is_control) {
        return Err(err(field, "must not contain control characters"));
    }
    Ok(())
}

/// A relative inventory path: names separated by single '/', none of them blank.
fn check_path(field: &'static str, value: &str) -> Result<(), SpecError> {
    if value.trim().is_empty() {
        return Err(err(field, "must not be empty"));
    }
    if value.split('/').any(|part| part.trim().is_empty()) {
        return Err(err(
            field,
            format!("'{value}' must be a relative inventory path like 'a/b' (no leading, trailing or double '/', no blank names)"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(err(field, "must not contain control characters"));
    }
    Ok(())
}

impl PoolSpec {
    /// The parsed naming pattern (valid once [`PoolSpec::validate`] passed).
    pub fn naming(&self) -> Result<NamingPattern, SpecError> {
        self.naming_pattern
            .parse()
            .map_err(|e: crate::NamingError| err("naming_pattern", e.to_string()))
    }

    /// The highest index the pool can hand out: the max size plus room for desktops still
    /// being deleted while their replacements are made (and for a rollout's surge).
    pub fn max_index(&self) -> u32 {
        self.max_size.saturating_mul(2).max(1)
    }

    /// How many desktops a rollout may add beyond the desired size: `max_surge`, or
    /// `max_concurrent_clones` when it is not set.
    pub fn surge(&self) -> u32 {
        self.max_surge.unwrap_or(self.max_concurrent_clones)
    }

    /// Checks every rule; the first broken one is returned.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !is_slug(&self.name) {
            return Err(err(
                "name",
                format!("'{}' is not a slug: use 1-63 lowercase letters, digits and '-', starting with a letter", self.name),
            ));
        }
        check_name(
            "vcenter",
            &self.vcenter,
            "must name a configured vCenter connection",
        )?;
        check_path("datacenter", &self.datacenter)?;
        check_path("golden_vm", &self.golden_vm)?;
        check_path("folder", &self.folder)?;
        check_path("resource_pool", &self.resource_pool)?;
        if let Some(ds) = &self.datastore {
            check_path("datastore", ds)?;
        }
        if let Some(cs) = &self.customization_spec {
            check_name("customization_spec", cs, "must not be empty when given")?;
        }
        if self.snapshot.is_empty()
            || self.snapshot.split('/').any(|part| part.trim().is_empty())
            || self.snapshot.chars().any(char::is_control)
        {
            return Err(err(
                "snapshot",
                format!(
                    "'{}' must be 'current' or a path of snapshot names like 'base/v2'",
                    self.snapshot
                ),
            ));
        }
        let naming = self.naming()?;
        if self.max_size == 0 {
            return Err(err("max_size", "must be at least 1"));
        }
        if self.max_size > MAX_POOL_SIZE {
            return Err(err("max_size", format!("must be at most {MAX_POOL_SIZE}")));
        }
        if self.min_size > self.max_size {
            return Err(err(
                "min_size",
                format!("{} is above max_size {}", self.min_size, self.max_size),
            ));
        }
        if self.target_size < self.min_size || self.target_size > self.max_size {
            return Err(err(
                "target_size",
                format!(
                    "{} is outside min_size..=max_size ({}..={})",
                    self.target_size, self.min_size, self.max_size
                ),
            ));
        }
        self.check_min_spare(self.min_spare)?;
        check_lease_secs("claim_lease_secs", self.claim_lease_secs)?;
        if self.max_concurrent_clones == 0 || self.max_concurrent_clones > MAX_CONCURRENT_CLONES {
            return Err(err(
                "max_concurrent_clones",
                format!("must be between 1 and {MAX_CONCURRENT_CLONES}"),
            ));
        }
        if self.ready_timeout_secs == 0 || self.ready_timeout_secs > MAX_READY_TIMEOUT_SECS {
            return Err(err(
                "ready_timeout_secs",
                format!(
                    "{} is outside 1..={MAX_READY_TIMEOUT_SECS} (seconds a powered-on desktop's guest may take to become usable)",
                    self.ready_timeout_secs
                ),
            ));
        }
        if let Some(surge) = self.max_surge {
            if surge == 0 || surge > MAX_CONCURRENT_CLONES {
                return Err(err(
                    "max_surge",
                    format!("must be between 1 and {MAX_CONCURRENT_CLONES} (absent: max_concurrent_clones)"),
                ));
            }
        }
        if self.max_unavailable > self.max_size {
            return Err(err(
                "max_unavailable",
                format!(
                    "{} is above max_size {}",
                    self.max_unavailable, self.max_size
                ),
            ));
        }
        if self.force_after_secs > MAX_FORCE_AFTER_SECS {
            return Err(err(
                "force_after_secs",
                format!("must be at most {MAX_FORCE_AFTER_SECS} (7 days)"),
            ));
        }
        let longest = naming.max_len(self.max_index());
        let limit = match self.guest_os {
            GuestOs::Windows => WINDOWS_NAME_LIMIT,
            GuestOs::Other => 63,
        };
        if longest > limit {
            let hint = match self.guest_os {
                GuestOs::Windows => " (Windows computer names; set guest_os = \"other\" if the guests are not Windows)",
                GuestOs::Other => "",
            };
            return Err(err(
                "naming_pattern",
                format!(
                    "'{}' can produce names of {longest} characters (e.g. '{}'), over the limit of {limit}{hint}",
                    self.naming_pattern,
                    naming.render(self.max_index())
                ),
            ));
        }
        Ok(())
    }

    /// Checks that `target` is within the bounds helpdesk may set.
    pub fn check_target(&self, target: u32) -> Result<(), SpecError> {
        if target < self.min_size || target > self.max_size {
            return Err(err(
                "target_size",
                format!(
                    "{target} is outside this pool's bounds {}..={} (an admin can change min_size/max_size)",
                    self.min_size, self.max_size
                ),
            ));
        }
        Ok(())
    }

    /// Checks that `min_spare` is within `0..=max_size` (the bound helpdesk may set it in).
    pub fn check_min_spare(&self, min_spare: u32) -> Result<(), SpecError> {
        if min_spare > self.max_size {
            return Err(err(
                "min_spare",
                format!(
                    "{min_spare} is above this pool's max_size {} (an admin can raise max_size)",
                    self.max_size
                ),
            ));
        }
        Ok(())
    }

    /// Full inventory path of the golden VM.
    pub fn golden_vm_path(&self) -> String {
        format!("{}/vm/{}", self.datacenter, self.golden_vm)
    }

    /// Full inventory path of the desktops' folder.
    pub fn folder_path(&self) -> String {
        format!("{}/vm/{}", self.datacenter, self.folder)
    }

    /// Full inventory path of the resource pool, cluster or host.
    pub fn resource_pool_path(&self) -> String {
        format!("{}/host/{}", self.datacenter, self.resource_pool)
    }

    /// Full inventory path of the datastore, if one is set.
    pub fn datastore_path(&self) -> Option<String> {
        self.datastore
            .as_ref()
            .map(|ds| format!("{}/datastore/{ds}", self.datacenter))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid spec for tests.
    pub fn sample() -> PoolSpec {
        PoolSpec {
            name: "lab".into(),
            vcenter: "vc1".into(),
            datacenter: "DC0".into(),
            golden_vm: "golden".into(),
            snapshot: "current".into(),
            folder: "lab".into(),
            resource_pool: "DC0_C0".into(),
            datastore: Some("LocalDS_0".into()),
            customization_spec: None,
            naming_pattern: "lab-{n:3}".into(),
            guest_os: GuestOs::Windows,
            target_size: 5,
            min_size: 0,
            max_size: 50,
            power_on: true,
            max_concurrent_clones: 8,
            enabled: true,
            max_surge: None,
            max_unavailable: 0,
            stop_on_error: true,
            logoff_policy: LogoffPolicy::Wait,
            force_after_secs: 3600,
            min_spare: 0,
            claim_lease_secs: DEFAULT_CLAIM_LEASE_SECS,
            on_release: OnRelease::Delete,
            ready_timeout_secs: DEFAULT_READY_TIMEOUT_SECS,
            ready_when: ReadyWhen::GuestIp,
        }
    }

    #[test]
    fn sample_is_valid_and_paths_are_full() {
        let s = sample();
        s.validate().unwrap();
        assert_eq!(s.golden_vm_path(), "DC0/vm/golden");
        assert_eq!(s.folder_path(), "DC0/vm/lab");
        assert_eq!(s.resource_pool_path(), "DC0/host/DC0_C0");
        assert_eq!(s.datastore_path().unwrap(), "DC0/datastore/LocalDS_0");
    }

    #[test]
    fn each_rule_names_its_field() {
        type Mutation = Box<dyn Fn(&mut PoolSpec)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("name", Box::new(|s| s.name = "Lab".into())),
            ("name", Box::new(|s| s.name = "lab-".into())),
            ("name", Box::new(|s| s.name = "".into())),
            ("vcenter", Box::new(|s| s.vcenter = " ".into())),
            ("golden_vm", Box::new(|s| s.golden_vm = "/golden".into())),
            ("folder", Box::new(|s| s.folder = "".into())),
            ("datastore", Box::new(|s| s.datastore = Some("a//b".into()))),
            ("snapshot", Box::new(|s| s.snapshot = "base//v2".into())),
            (
                "naming_pattern",
                Box::new(|s| s.naming_pattern = "lab".into()),
            ),
            ("max_size", Box::new(|s| s.max_size = 0)),
            ("min_size", Box::new(|s| s.min_size = 60)),
            ("target_size", Box::new(|s| s.target_size = 51)),
            (
                "max_concurrent_clones",
                Box::new(|s| s.max_concurrent_clones = 0),
            ),
            (
                "naming_pattern",
                Box::new(|s| s.naming_pattern = "engineering-{n:4}".into()),
            ),
            ("max_surge", Box::new(|s| s.max_surge = Some(0))),
            ("max_surge", Box::new(|s| s.max_surge = Some(257))),
            ("max_unavailable", Box::new(|s| s.max_unavailable = 51)),
            (
                "force_after_secs",
                Box::new(|s| s.force_after_secs = 604_801),
            ),
            ("min_spare", Box::new(|s| s.min_spare = 51)),
            ("claim_lease_secs", Box::new(|s| s.claim_lease_secs = 59)),
            (
                "claim_lease_secs",
                Box::new(|s| s.claim_lease_secs = 604_801),
            ),
            ("ready_timeout_secs", Box::new(|s| s.ready_timeout_secs = 0)),
            (
                "ready_timeout_secs",
                Box::new(|s| s.ready_timeout_secs = 86_401),
            ),
        ];
        for (field, mutate) in cases {
            let mut s = sample();
            mutate(&mut s);
            let e = s.validate().unwrap_err();
            assert_eq!(e.field, field, "{e}");
        }
    }

    #[test]
    fn spare_and_lease_bounds_are_inclusive() {
        let mut s = sample();
        s.min_spare = s.max_size;
        s.claim_lease_secs = 60;
        s.validate().unwrap();
        s.claim_lease_secs = 604_800;
        s.validate().unwrap();
        let e = s.check_min_spare(51).unwrap_err();
        assert!(e.message.contains("max_size 50"), "{e}");
    }

    #[test]
    fn long_names_allowed_for_non_windows() {
        let mut s = sample();
        s.naming_pattern = "engineering-{n:4}".into();
        let e = s.validate().unwrap_err();
        assert!(e.message.contains("guest_os"), "{e}");
        s.guest_os = GuestOs::Other;
        s.validate().unwrap();
    }

    #[test]
    fn index_headroom_counts_in_name_length() {
        // 12-character prefix: max_size 400 -> indexes up to 800 -> 3 digits -> 15, fine;
        // max_size 500 -> indexes up to 1000 -> 4 digits -> 16, over the Windows limit.
        let mut s = sample();
        s.naming_pattern = "desktops-pc-{n:3}".into();
        s.max_size = 400;
        s.validate().unwrap();
        s.max_size = 500;
        assert_eq!(s.validate().unwrap_err().field, "naming_pattern");
    }

    #[test]
    fn spec_json_rejects_unknown_fields_and_fills_defaults() {
        let json = r#"{"name":"lab","vcenter":"vc1","datacenter":"DC0","golden_vm":"golden",
            "folder":"lab","resource_pool":"DC0_C0","naming_pattern":"lab-{n:3}",
            "target_size":2,"max_size":10}"#;
        let s: PoolSpec = serde_json::from_str(json).unwrap();
        assert_eq!(s.snapshot, "current");
        assert!(s.power_on && s.enabled);
        assert_eq!(s.max_concurrent_clones, 8);
        assert_eq!(s.min_spare, 0);
        assert_eq!(s.claim_lease_secs, 86_400);
        assert_eq!(s.on_release, OnRelease::Delete);
        let keep: PoolSpec = serde_json::from_str(
            &json.replace("\"max_size\"", "\"on_release\":\"keep\",\"max_size\""),
        )
        .unwrap();
        assert_eq!(keep.on_release, OnRelease::Keep);
        assert_eq!(s.ready_timeout_secs, 1800);
        assert_eq!(s.ready_when, ReadyWhen::GuestIp);
        let s: PoolSpec = serde_json::from_str(
            &json.replace("\"max_size\"", "\"ready_when\":\"powered_on\",\"max_size\""),
        )
        .unwrap();
        assert_eq!(s.ready_when, ReadyWhen::PoweredOn);
        let bad = json.replace("\"max_size\"", "\"bogus\":1,\"max_size\"");
        assert!(serde_json::from_str::<PoolSpec>(&bad).is_err());
    }
}
