//! Ready means usable: when a `booting` desktop (powered on, its pool's `ready_when` is
//! `guest_ip`) becomes `ready`, or fails. A pure function of what vCenter last reported of the
//! guest (VMware Tools' status, the guest's address, the customization's events) and of how
//! long the desktop has been booting. Nothing ever connects to the guest: vCenter's report is
//! the signal.

use std::net::Ipv4Addr;

/// `guest.toolsRunningStatus` once VMware Tools run in the guest.
pub const TOOLS_RUNNING: &str = "guestToolsRunning";

/// What vCenter reported of a guest customization (stored with the desktop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CustomizationState {
    /// `CustomizationStartedEvent`.
    Started,
    /// `CustomizationSucceeded`.
    Succeeded,
    /// A `CustomizationFailed` event.
    Failed,
}

impl CustomizationState {
    /// The stable string form, as stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// Parses the stored form.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "started" => Some(Self::Started),
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// What is known of a booting desktop's guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestFacts<'a> {
    /// `guest.toolsRunningStatus` as last reported (None: never reported).
    pub tools_running_status: Option<&'a str>,
    /// `guest.ipAddress` as last reported (None or empty: no address).
    pub ip_address: Option<&'a str>,
    /// The pool clones with a customization spec: its success is awaited too.
    pub needs_customization: bool,
    /// What the customization's events said so far.
    pub customization: Option<CustomizationState>,
    /// The failure event's message, when the customization failed.
    pub customization_message: Option<&'a str>,
    /// Seconds since the desktop started booting (its power-on).
    pub booting_secs: u64,
    /// The pool's `ready_timeout_secs`.
    pub timeout_secs: u32,
}

/// The verdict on a booting desktop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootVerdict {
    /// The guest is usable: the desktop is ready.
    Ready,
    /// Not yet: look again at the latest after this many seconds (the timeout), earlier if
    /// vCenter reports a change.
    Wait {
        /// Seconds until the ready timeout.
        remaining_secs: u64,
    },
    /// The desktop failed: the customization failed (the event's message), or the timeout
    /// passed (a reason naming what never held).
    Failed(String),
}

/// Why an address is not usable, or None when it is a usable IPv4 address.
pub fn unusable_address(addr: &str) -> Option<&'static str> {
    let Ok(ip) = addr.trim().parse::<Ipv4Addr>() else {
        return Some(if addr.contains(':') {
            "not IPv4"
        } else {
            "not an address"
        });
    };
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_link_local() {
        Some("link-local: DHCP has not answered")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else {
        None
    }
}

/// Whether the guest is usable now, and if not, whether it has run out of time.
pub fn judge_boot(f: &GuestFacts<'_>) -> BootVerdict {
    if f.needs_customization && f.customization == Some(CustomizationState::Failed) {
        return BootVerdict::Failed(format!(
            "guest customization failed: {}",
            f.customization_message
                .unwrap_or("vCenter reported CustomizationFailed without a message")
        ));
    }
    let tools = f.tools_running_status == Some(TOOLS_RUNNING);
    let addr = f.ip_address.map(str::trim).filter(|a| !a.is_empty());
    let addr_ok = addr.is_some_and(|a| unusable_address(a).is_none());
    let customized =
        !f.needs_customization || f.customization == Some(CustomizationState::Succeeded);
    if tools && addr_ok && customized {
        return BootVerdict::Ready;
    }
    let timeout = u64::from(f.timeout_secs);
    if f.booting_secs < timeout {
        return BootVerdict::Wait {
            remaining_secs: timeout - f.booting_secs,
        };
    }
    let within = format!("within {timeout} s of power-on");
    let reason = if !tools && addr.is_none() {
        format!(
            "VMware Tools not running {within} (last reported: {}); is Tools installed in the golden image? Use ready_when \"powered_on\" for guests without Tools",
            f.tools_running_status.unwrap_or("nothing")
        )
    } else if !addr_ok {
        match addr {
            None => format!("no IPv4 address reported by VMware Tools {within}"),
            Some(a) => format!(
                "no usable IPv4 address reported by VMware Tools {within} (last: {a}, {})",
                unusable_address(a).unwrap_or("unusable")
            ),
        }
    } else if !customized {
        let last = match f.customization {
            Some(CustomizationState::Started) => "it started, no outcome",
            _ => "no customization event",
        };
        format!("guest customization did not report success {within} ({last})")
    } else {
        format!("VMware Tools not running {within} (they reported an address, then stopped)")
    };
    BootVerdict::Failed(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn facts<'a>(tools: Option<&'a str>, ip: Option<&'a str>) -> GuestFacts<'a> {
        GuestFacts {
            tools_running_status: tools,
            ip_address: ip,
            needs_customization: false,
            customization: None,
            customization_message: None,
            booting_secs: 10,
            timeout_secs: 1800,
        }
    }

    #[test]
    fn ready_once_tools_run_with_a_usable_ipv4_address() {
        let run = Some(TOOLS_RUNNING);
        assert_eq!(
            judge_boot(&facts(run, Some("127.1.0.2"))),
            BootVerdict::Ready
        );
        assert_eq!(
            judge_boot(&facts(run, Some("10.0.0.7"))),
            BootVerdict::Ready
        );
        let wait = BootVerdict::Wait {
            remaining_secs: 1790,
        };
        for ip in [
            None,
            Some(""),
            Some("0.0.0.0"),
            Some("169.254.7.7"),
            Some("fe80::1"),
            Some("255.255.255.255"),
        ] {
            assert_eq!(judge_boot(&facts(run, ip)), wait, "{ip:?}");
        }
        for tools in [
            None,
            Some("guestToolsNotRunning"),
            Some("guestToolsStarting"),
        ] {
            assert_eq!(
                judge_boot(&facts(tools, Some("10.0.0.7"))),
                wait,
                "{tools:?}"
            );
        }
    }

    #[test]
    fn customization_must_succeed_when_the_pool_has_a_spec() {
        let mut f = facts(Some(TOOLS_RUNNING), Some("10.0.0.7"));
        f.needs_customization = true;
        assert!(matches!(judge_boot(&f), BootVerdict::Wait { .. }));
        f.customization = Some(CustomizationState::Started);
        assert!(matches!(judge_boot(&f), BootVerdict::Wait { .. }));
        f.customization = Some(CustomizationState::Succeeded);
        assert_eq!(judge_boot(&f), BootVerdict::Ready);
        f.customization = Some(CustomizationState::Failed);
        f.customization_message = Some("Sysprep failed (code 31)");
        assert_eq!(
            judge_boot(&f),
            BootVerdict::Failed("guest customization failed: Sysprep failed (code 31)".into()),
            "at once, whatever the guest reports"
        );
        f.needs_customization = false;
        assert_eq!(
            judge_boot(&f),
            BootVerdict::Ready,
            "not the pool's customization"
        );
    }

    #[test]
    fn the_timeout_names_the_condition_that_never_held() {
        let failed = |mut f: GuestFacts<'_>| {
            f.booting_secs = 1800;
            match judge_boot(&f) {
                BootVerdict::Failed(r) => r,
                v => panic!("{v:?}"),
            }
        };
        let r = failed(facts(Some(TOOLS_RUNNING), None));
        assert_eq!(
            r,
            "no IPv4 address reported by VMware Tools within 1800 s of power-on"
        );
        let r = failed(facts(Some(TOOLS_RUNNING), Some("169.254.7.7")));
        assert!(r.contains("169.254.7.7") && r.contains("link-local"), "{r}");
        let r = failed(facts(Some("guestToolsNotRunning"), None));
        assert!(
            r.starts_with("VMware Tools not running within 1800 s") && r.contains("powered_on"),
            "{r}"
        );
        let mut f = facts(Some(TOOLS_RUNNING), Some("10.0.0.7"));
        f.needs_customization = true;
        f.customization = Some(CustomizationState::Started);
        let r = failed(f);
        assert!(
            r.starts_with("guest customization did not report success"),
            "{r}"
        );
    }

    #[test]
    fn states_round_trip() {
        for s in [
            CustomizationState::Started,
            CustomizationState::Succeeded,
            CustomizationState::Failed,
        ] {
            assert_eq!(CustomizationState::parse(s.as_str()), Some(s));
        }
    }

    proptest! {
        /// Ready exactly when every condition holds; otherwise a wait that ends at the
        /// timeout, then a failure; never ready with an unusable address.
        #[test]
        fn verdict_is_total_and_consistent(
            tools in prop::option::of(prop::sample::select(vec![TOOLS_RUNNING, "guestToolsNotRunning", "guestToolsStarting"])),
            a in any::<[u8; 4]>(),
            no_ip: bool,
            needs_customization: bool,
            customization in prop::option::of(prop::sample::select(vec![CustomizationState::Started, CustomizationState::Succeeded, CustomizationState::Failed])),
            booting_secs in 0u64..5000,
            timeout_secs in 1u32..=86_400,
        ) {
            let ip = Ipv4Addr::from(a).to_string();
            let f = GuestFacts {
                tools_running_status: tools,
                ip_address: (!no_ip).then_some(ip.as_str()),
                needs_customization,
                customization,
                customization_message: None,
                booting_secs,
                timeout_secs,
            };
            let customization_failed = needs_customization && customization == Some(CustomizationState::Failed);
            let usable = !no_ip && unusable_address(&ip).is_none();
            let all = tools == Some(TOOLS_RUNNING) && usable
                && (!needs_customization || customization == Some(CustomizationState::Succeeded));
            match judge_boot(&f) {
                BootVerdict::Ready => prop_assert!(all),
                BootVerdict::Wait { remaining_secs } => {
                    prop_assert!(!all);
                    prop_assert_eq!(remaining_secs, u64::from(timeout_secs) - booting_secs);
                }
                BootVerdict::Failed(r) if customization_failed => {
                    prop_assert!(!all);
                    prop_assert!(r.starts_with("guest customization failed"), "{}", r);
                }
                BootVerdict::Failed(r) => {
                    prop_assert!(!all && booting_secs >= u64::from(timeout_secs));
                    prop_assert!(r.contains(&format!("within {timeout_secs} s")), "{}", r);
                }
            }
        }
    }
}
