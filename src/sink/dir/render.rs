//! A manifest's bytes, rendered in two parts: the head (`apiVersion`, `kind`,
//! `metadata`, `spec`) and the `status:` block after it.
//!
//! A status write changes the status, and the metadata only when a label follows a
//! condition (`tidegate.dev/flapping`); the spec never changes. Rendering the whole
//! manifest with `serde_norway` for every write rendered the same head again each
//! time, so the index keeps each request's head as rendered bytes beside the
//! request ([`super::index::Written`]), and a write renders only the status after
//! it. The status is rendered by `serde_norway` too, as the one field of a mapping,
//! which is exactly how it appears under the manifest's top level: head and status
//! together are byte for byte what rendering the whole request gives (tests below,
//! and every write of a debug build checks it).
//!
//! Never let a head outlive a change to the metadata or spec it was rendered from.

use serde::Serialize;

use crate::remediation::{RemediationRequest, RemediationRequestStatus};

/// A request's manifest without its status, rendered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head(String);

impl Head {
    /// Renders the head of `request`.
    pub fn of(request: &mut RemediationRequest) -> Head {
        // The status is taken out for the rendering and put back, so that the
        // head is rendered by the same code as the whole manifest.
        let status = request.status.take();
        let head = super::to_yaml(request);
        request.status = status;
        Head(head)
    }
}

/// The status as the one field of a mapping: rendered, `status:` and the block
/// under it, indented as under the manifest's top level.
#[derive(Serialize)]
struct StatusBlock<'a> {
    status: &'a RemediationRequestStatus,
}

/// Renders `request`'s manifest into `out` (cleared first): `head`, which must be
/// `request`'s, then its status.
pub fn manifest(head: &Head, request: &RemediationRequest, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(head.0.as_bytes());
    if let Some(status) = &request.status {
        serde_norway::to_writer(&mut *out, &StatusBlock { status }).expect("a status always serialises");
    }
    debug_assert_eq!(
        std::str::from_utf8(out).ok(),
        Some(super::to_yaml(request).as_str()),
        "a head and a status rendered apart must be the whole manifest"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remediation::{self, Classification, FlapUpdate, InhibitedUpdate, StatusUpdate};
    use crate::signal::TargetResource;

    fn pod(name: &str) -> TargetResource {
        TargetResource { kind: "Pod".into(), name: name.into(), namespace: "shop".into(), cluster: String::new() }
    }

    /// A request with the kinds of text YAML renders in more than one way: a
    /// multi-line annotation, quotes, a long line with spaces, a value that looks
    /// like a number.
    fn request() -> RemediationRequest {
        let mut signal = crate::signal::test_signal("HighMemory", "shop", pod("web-0"), &[("severity", "critical")]);
        // Whole seconds, as the manifest keeps them, so that it parses back equal.
        signal.received_time = jiff::Timestamp::new(1_700_000_000, 0).unwrap();
        let long = "the memory of the pod has been above ninety percent of its limit for a long while now, see the runbook and the dashboard linked below before restarting anything";
        signal.annotations = [
            ("summary".to_string(), "memory: \"high\"\nsee runbook\n\n  indented line".to_string()),
            ("description".to_string(), long.to_string()),
            ("value".to_string(), "0.95".to_string()),
        ]
        .into_iter()
        .collect();
        let class = Classification { environment: "production".into(), priority: "P1".into(), rule: "default".into() };
        remediation::build(&signal, "shop", 1_700_000_000, &class, &StatusUpdate::seen(1_700_000_000, 1_700_000_000))
    }

    /// Updates that fill every part of the status a write changes.
    fn updates() -> Vec<StatusUpdate> {
        let seen = |writer, count, s| StatusUpdate { writer, count, ..StatusUpdate::seen(1_700_000_000, s) };
        vec![
            seen(7, 1, 1_700_000_001),
            StatusUpdate {
                flap: Some(FlapUpdate::Flapping { transitions: 4, at_s: 1_700_000_003, window_s: 1800 }),
                ..seen(7, 2, 1_700_000_003)
            },
            StatusUpdate {
                inhibited: Some(InhibitedUpdate { count: 3, resources: vec![pod("web-1"), pod("web-2")], cap: 10 }),
                ..seen(9, 1, 1_700_000_004)
            },
            StatusUpdate {
                flap: Some(FlapUpdate::Settled { last_s: 1_700_000_003, at_s: 1_700_000_005, window_s: 1800 }),
                ..seen(7, 3, 1_700_000_005)
            },
        ]
    }

    #[test]
    fn a_head_and_a_status_rendered_apart_are_the_whole_manifest_and_parse_back_to_the_request() {
        let mut request = request();
        let mut head = Head::of(&mut request);
        let mut out = Vec::new();
        for update in updates() {
            request.status.get_or_insert_with(Default::default).apply(&update);
            if remediation::label_flapping(&mut request) {
                head = Head::of(&mut request);
            }
            manifest(&head, &request, &mut out);
            let whole = super::super::to_yaml(&request);
            assert_eq!(std::str::from_utf8(&out).unwrap(), whole);
            let parsed: RemediationRequest = serde_norway::from_slice(&out).unwrap();
            assert_eq!(
                (parsed.metadata, parsed.spec, parsed.status),
                (request.metadata.clone(), request.spec.clone(), request.status.clone())
            );
        }
    }

    #[test]
    fn a_head_follows_the_flapping_label() {
        let mut request = request();
        let calm = Head::of(&mut request);
        let flapping = &updates()[1];
        request.status.get_or_insert_with(Default::default).apply(flapping);
        assert!(remediation::label_flapping(&mut request), "the label flips with the condition");
        let head = Head::of(&mut request);
        assert_ne!(head, calm, "the label is in the head");
        assert!(head.0.contains(remediation::labels::FLAPPING));
    }
}
