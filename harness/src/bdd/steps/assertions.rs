//! Assertions on what the last operation got back: codes, formats, values, link lists,
//! findings; and on the run: latency percentiles and bytes on the wire.
//!
//! ```gherkin
//! Then the response code is 2.05
//! And the response is in TLV
//! And the value of /3/0/16 is "U"
//! And the value of /3/0/0 is configured as "Open Mobile Alliance"
//! And the response holds /3/0/0, /3/0/1
//! And the response holds only /3/0/11/0, /3/0/16, /1/0
//! And the response does not hold /1/0/8
//! And the response lists "</3/0/7>;dim=2, </3/0/11>"
//! And the response location is /16/1
//! And the response is flagged "legacy"
//! Then the operation fails with "composite operations are LwM2M 1.1+"
//! Then the 99th percentile of the "register" latency is below 2s
//! Then the last operation took at most 250 bytes
//! ```

use anyhow::anyhow;
use cucumber::then;
use lwm2m_proto::codec::link::{Link, parse_links};
use lwm2m_proto::server::Content;
use lwm2m_proto::{Lwm2mPath, Record};

use crate::bdd::backend::ServerView;
use crate::bdd::params::{Code, DurationParam, FormatParam, PathParam, Paths, format_label};
use crate::bdd::world::{Lwm2mWorld, Outcome, not_supported, show_value, value_matches};
use lwm2m_proto::registration::Lwm2mVersion;
use lwm2m_proto::server::Response;
use lwm2m_proto::{ContentFormat, Schema as _};

/// The expected links (`"</3/0/7>;dim=2, </3/0/11>"`) that `actual` lacks: a link counts
/// as present when its target matches and it has at least the expected parameters.
pub(crate) fn links_missing(expected: &str, actual: &[Link]) -> anyhow::Result<Vec<String>> {
    Ok(missing_links(expected, actual)?
        .iter()
        .map(ToString::to_string)
        .collect())
}

/// [`links_missing`], as links.
fn missing_links(expected: &str, actual: &[Link]) -> anyhow::Result<Vec<Link>> {
    let expected =
        parse_links(expected).map_err(|e| anyhow!("expected links {expected:?}: {e}"))?;
    Ok(expected
        .into_iter()
        .filter(|e| {
            !actual
                .iter()
                .any(|a| a.target == e.target && e.params.iter().all(|p| a.params.contains(p)))
        })
        .collect())
}

fn show_links(links: &[Link]) -> String {
    links
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A CoAP response code with its name (RFC 7252 §12.1.2).
fn named(code: (u8, u8)) -> String {
    let name = match code {
        (2, 1) => "Created",
        (2, 2) => "Deleted",
        (2, 3) => "Valid",
        (2, 4) => "Changed",
        (2, 5) => "Content",
        (2, 31) => "Continue",
        (4, 0) => "Bad Request",
        (4, 1) => "Unauthorized",
        (4, 2) => "Bad Option",
        (4, 3) => "Forbidden",
        (4, 4) => "Not Found",
        (4, 5) => "Method Not Allowed",
        (4, 6) => "Not Acceptable",
        (4, 8) => "Request Entity Incomplete",
        (4, 12) => "Precondition Failed",
        (4, 13) => "Request Entity Too Large",
        (4, 15) => "Unsupported Content-Format",
        (5, 0) => "Internal Server Error",
        (5, 1) => "Not Implemented",
        (5, 3) => "Service Unavailable",
        _ => "",
    };
    format!("{} {name}", Code(code)).trim_end().to_owned()
}

/// The CoAP code of the last response.
#[then(expr = "the response code is {code}")]
fn response_code(w: &mut Lwm2mWorld, code: Code) -> anyhow::Result<()> {
    let (outcome, response) = w.response()?;
    if response.code == code.0 {
        return Ok(());
    }
    if code.0.0 == 2 {
        refused_optional(w, &outcome, &response);
    }
    let diagnostic = response
        .diagnostic
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    let deviation = if response.code.0 == 2 && code.0.0 == 2 {
        "; a success code, but the wrong one for this operation (Core TS 1.1 §5.4, the \
         CoAP mapping of each operation)"
    } else {
        ""
    };
    Err(w.fail_since(
        outcome.log_mark,
        format!(
            "{} was answered {}{diagnostic}, expected {}{deviation}",
            outcome.description,
            named(response.code),
            named(code.0)
        ),
    ))
}

/// The formats every client of `version` must read and write, whatever it announces
/// (Core TS 1.0 §6.4: plain text, opaque, TLV; 1.1 §7.1: plain text and opaque for single
/// resources, CoRE Link Format for Discover, and at least one of the others, which the
/// client names with `ct=` in its Register, §6.2.1).
fn mandatory_format(version: Lwm2mVersion, format: ContentFormat) -> bool {
    matches!(
        format,
        ContentFormat::Text | ContentFormat::Opaque | ContentFormat::LinkFormat
    ) || (version == Lwm2mVersion::V1_0 && format == ContentFormat::Tlv)
}

/// Ends the case as "not supported" when the subject refused an optional feature with the
/// code the specification requires for the refusal: 4.06 Not Acceptable (or 4.15
/// Unsupported Content-Format) for a format it does not have to support and did not announce
/// in its Register's `ct=`, and 4.04 or 4.05 for an operation on a resource the object
/// definition marks optional (Disable 1/x/4, Bootstrap-Request Trigger 1/x/9, ...).
/// A feature the device description declares (`features:`) is no longer optional for the
/// device: its refusal falls through to the failure, as anything else does.
fn refused_optional(w: &mut Lwm2mWorld, outcome: &Outcome, response: &Response) {
    let Ok(endpoint) = w.current() else { return };
    let Some(registration) = w.backend().registration(&endpoint) else {
        return;
    };
    let code = named(response.code);
    if let (Some(format), (4, 6) | (4, 15)) = (
        crate::bdd::adapter::requested_format(&outcome.operation),
        response.code,
    ) {
        let announced = registration.links.content_formats.contains(&format.code());
        let declared = w
            .ctx()
            .device
            .as_ref()
            .is_some_and(|d| d.declares_format(format));
        if !announced && !declared && !mandatory_format(registration.version, format) {
            not_supported(format!(
                "{} was refused with {code}: {} is optional for a LwM2M {} client and the \
                 device does not announce it (ct= {:?} in its Register, Core TS 1.1 §6.2.1, \
                 §7.1)",
                outcome.description,
                format_label(format),
                registration.version,
                registration.links.content_formats
            ));
        }
    }
    if matches!(response.code, (4, 4) | (4, 5))
        && let (Some(o), Some(r)) = (outcome.target.object_id(), outcome.target.resource_id())
    {
        let registry = w.ctx().library.registry.clone();
        let declared = w
            .ctx()
            .device
            .as_ref()
            .is_some_and(|d| d.declares_resource(&outcome.target));
        if let Some(def) = registry.resource(o, r)
            && !def.mandatory
            && !declared
        {
            not_supported(format!(
                "{} was refused with {code}: resource {} of object {} ({}) is optional \
                 (its object definition, Core TS 1.1 Appendix D/E)",
                outcome.description, r.0, o.0, def.name
            ));
        }
    }
}

/// The Content-Format of the last response.
#[then(expr = "the response is in {format}")]
fn response_format(w: &mut Lwm2mWorld, format: FormatParam) -> anyhow::Result<()> {
    let (outcome, response) = w.response()?;
    w.require_our_server(ServerView::ResponseFormat, "the answer's Content-Format");
    if response.format == Some(format.0) {
        return Ok(());
    }
    let got = response
        .format
        .map_or_else(|| "no Content-Format".to_owned(), format_label);
    let deviation = match response.format {
        Some(f) if f.is_legacy() && f.canonical() == format.0 => {
            "; a pre-1.0 Content-Format number (Core TS 1.0 §6.4 moved them)"
        }
        Some(_) if outcome.description.contains(&format_label(format.0)) => {
            "; the client ignored Accept (Core TS 1.1 §5.4.1: the requested format, \
             or 4.06 Not Acceptable)"
        }
        _ => "",
    };
    Err(w.fail_since(
        outcome.log_mark,
        format!(
            "{} came back in {got}, expected {}{deviation}",
            outcome.description,
            format_label(format.0)
        ),
    ))
}

fn show_records(records: &[Record]) -> String {
    let shown: Vec<String> = records
        .iter()
        .take(24)
        .map(|r| match &r.value {
            Some(v) => format!("{}={}", r.path, show_value(v)),
            None => r.path.to_string(),
        })
        .collect();
    let more = if records.len() > shown.len() {
        ", ..."
    } else {
        ""
    };
    format!("{}{more}", shown.join(", "))
}

/// A value the last response carried.
#[then(expr = "the value of {path} is {string}")]
fn value_is(w: &mut Lwm2mWorld, path: PathParam, expected: String) -> anyhow::Result<()> {
    let (outcome, records) = w.response_records()?;
    match records.iter().find(|r| r.path == path.0) {
        Some(Record { value: Some(v), .. }) if value_matches(v, &expected) => Ok(()),
        Some(Record { value: Some(v), .. }) => Err(w.fail_since(
            outcome.log_mark,
            format!(
                "{} gave {} = {}, expected {expected:?}",
                outcome.description,
                path.0,
                show_value(v)
            ),
        )),
        _ => Err(w.fail_since(
            outcome.log_mark,
            format!(
                "{} gave no value for {}; it gave {}",
                outcome.description,
                path.0,
                show_records(&records)
            ),
        )),
    }
}

/// A configuration value of the device (the ETS's is `ets`, from its configuration C.6):
/// the value its device description (`--device-profile`) declares for the path, if any;
/// without one, the value must be present (its type is the registry's, or the response
/// carries a finding). The ETS's own values are not conformance: a device configured with
/// manufacturer "ACME" or binding "UQ" is right.
#[then(expr = "the value of {path} is configured as {string}")]
fn value_configured(w: &mut Lwm2mWorld, path: PathParam, ets: String) -> anyhow::Result<()> {
    let declared = w.ctx().device.as_ref().and_then(|d| d.value(&path.0));
    if let Some(expected) = declared {
        return value_is(w, path, expected).map_err(|e| {
            e.context("the value differs from the one the device description declares")
        });
    }
    let (outcome, records) = w.response_records()?;
    let optional = optional_on_device(w, &path.0);
    match records.iter().find(|r| r.path == path.0) {
        Some(Record { value: Some(_), .. }) => Ok(()),
        _ if optional => Ok(()),
        _ => Err(w.fail_since(
            outcome.log_mark,
            format!(
                "{} gave no value for {} (configured in the ETS as {ets:?}); it gave {}",
                outcome.description,
                path.0,
                show_records(&records)
            ),
        )),
    }
}

/// True if `path` is a resource its object definition makes optional and the client is a
/// device under test: the ETS device has optional resources a device need not have (C.6:
/// the Manufacturer 3/0/0, the Firmware Version 3/0/3, the power sources 3/0/6-8), and
/// their absence is configuration, not conformance.
fn optional_on_device(w: &Lwm2mWorld, path: &Lwm2mPath) -> bool {
    !w.client_is_ours()
        && matches!((path.object_id(), path.resource_id()), (Some(o), Some(r))
            if w.ctx().library.registry.resource(o, r).is_some_and(|d| !d.mandatory))
}

fn holds(records: &[Record], path: &Lwm2mPath) -> bool {
    records.iter().any(|r| path.is_prefix_of(&r.path))
}

/// The last response carried values at (or below) each of these paths (for a device under
/// test, resources its object definition makes optional may be absent).
#[then(expr = "the response holds {paths}")]
fn response_holds(w: &mut Lwm2mWorld, paths: Paths) -> anyhow::Result<()> {
    let (outcome, records) = w.response_records()?;
    let missing: Vec<String> = paths
        .0
        .iter()
        .filter(|p| !holds(&records, p) && !optional_on_device(w, p))
        .map(ToString::to_string)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(w.fail_since(
            outcome.log_mark,
            format!(
                "{} gave nothing at {}; it gave {}",
                outcome.description,
                missing.join(", "),
                show_records(&records)
            ),
        ))
    }
}

/// The last response carried values at each of these paths and nothing elsewhere.
#[then(expr = "the response holds only {paths}")]
fn response_holds_only(w: &mut Lwm2mWorld, paths: Paths) -> anyhow::Result<()> {
    response_holds(w, paths.clone())?;
    let (outcome, records) = w.response_records()?;
    let extra: Vec<Record> = records
        .into_iter()
        .filter(|r| !paths.0.iter().any(|p| p.is_prefix_of(&r.path)))
        .collect();
    if extra.is_empty() {
        Ok(())
    } else {
        Err(w.fail_since(
            outcome.log_mark,
            format!("{} also gave {}", outcome.description, show_records(&extra)),
        ))
    }
}

/// The last response carried nothing at or below these paths.
#[then(expr = "the response does not hold {paths}")]
fn response_lacks(w: &mut Lwm2mWorld, paths: Paths) -> anyhow::Result<()> {
    let (outcome, records) = w.response_records()?;
    let present: Vec<Record> = records
        .into_iter()
        .filter(|r| paths.0.iter().any(|p| p.is_prefix_of(&r.path)))
        .collect();
    if present.is_empty() {
        Ok(())
    } else {
        Err(w.fail_since(
            outcome.log_mark,
            format!("{} gave {}", outcome.description, show_records(&present)),
        ))
    }
}

/// The links of the last (Discover) response.
fn response_links(w: &mut Lwm2mWorld) -> anyhow::Result<(String, usize, Vec<Link>)> {
    let (outcome, response) = w.response()?;
    match response.content {
        Some(Content::Links(entries)) => Ok((
            outcome.description,
            outcome.log_mark,
            entries.iter().map(|e| e.to_link()).collect(),
        )),
        other => Err(w.fail_since(
            outcome.log_mark,
            format!("{} gave no link list: {other:?}", outcome.description),
        )),
    }
}

/// The last Discover answer holds these links, with at least these parameters.
#[then(expr = "the response lists {string}")]
fn response_lists(w: &mut Lwm2mWorld, expected: String) -> anyhow::Result<()> {
    let (description, mark, links) = response_links(w)?;
    let mut missing = missing_links(&expected, &links)?;
    if !w.client_is_ours() {
        // What the ETS device has and a device under test need not: an optional resource
        // it lacks, or another number of instances (`dim`) of a multiple resource.
        missing.retain(|link| {
            let listed: Vec<&Link> = links.iter().filter(|a| a.target == link.target).collect();
            let optional = link
                .target
                .parse::<Lwm2mPath>()
                .is_ok_and(|p| optional_on_device(w, &p));
            let only_dim = !listed.is_empty()
                && link
                    .params
                    .iter()
                    .all(|p| p.name == "dim" || listed.iter().any(|a| a.params.contains(p)));
            !(only_dim || (optional && listed.is_empty()))
        });
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(w.fail_since(
            mark,
            format!(
                "{description} lacks {}; it gave {}",
                missing
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                show_links(&links)
            ),
        ))
    }
}

/// The last Discover answer is exactly these links with exactly these parameters (in any
/// order).
#[then(expr = "the response lists exactly {string}")]
fn response_lists_exactly(w: &mut Lwm2mWorld, expected: String) -> anyhow::Result<()> {
    let (description, mark, links) = response_links(w)?;
    let wanted = parse_links(&expected).map_err(|e| anyhow!("expected links {expected:?}: {e}"))?;
    let same = |a: &Link, b: &Link| {
        a.target == b.target
            && a.params.len() == b.params.len()
            && a.params.iter().all(|p| b.params.contains(p))
    };
    let matched =
        wanted.len() == links.len() && wanted.iter().all(|e| links.iter().any(|a| same(a, e)));
    if matched {
        Ok(())
    } else {
        Err(w.fail_since(
            mark,
            format!(
                "{description} gave {}, expected exactly {}",
                show_links(&links),
                show_links(&wanted)
            ),
        ))
    }
}

/// The Location-Path of the last (Create) response.
#[then(expr = "the response location is {path}")]
fn response_location(w: &mut Lwm2mWorld, path: PathParam) -> anyhow::Result<()> {
    let (outcome, response) = w.response()?;
    if response.location == Some(path.0) {
        Ok(())
    } else {
        Err(w.fail_since(
            outcome.log_mark,
            format!(
                "{} gave the location {:?}, expected {}",
                outcome.description, response.location, path.0
            ),
        ))
    }
}

/// The decoder noticed nothing odd in the last response.
#[then("the response has no findings")]
fn no_findings(w: &mut Lwm2mWorld) -> anyhow::Result<()> {
    let (outcome, response) = w.response()?;
    w.require_our_server(ServerView::Findings, "the decoder's findings");
    if response.findings.is_empty() {
        Ok(())
    } else {
        Err(w.fail_since(
            outcome.log_mark,
            format!(
                "{} has findings: {:?}",
                outcome.description, response.findings
            ),
        ))
    }
}

/// The decoder flagged the last response (a finding whose text contains `text`).
#[then(expr = "the response is flagged {string}")]
fn flagged(w: &mut Lwm2mWorld, text: String) -> anyhow::Result<()> {
    let (outcome, response) = w.response()?;
    w.require_our_server(ServerView::Findings, "the decoder's findings");
    let findings: Vec<String> = response
        .findings
        .iter()
        .map(|f| format!("{f:?} {f}"))
        .collect();
    if findings.iter().any(|f| f.contains(&text)) {
        Ok(())
    } else {
        Err(w.fail_since(
            outcome.log_mark,
            format!(
                "{} is not flagged {text:?}; findings: {findings:?}",
                outcome.description
            ),
        ))
    }
}

/// The last operation got no response, for a reason whose text contains `text`.
#[then(expr = "the operation fails with {string}")]
fn operation_fails(w: &mut Lwm2mWorld, text: String) -> anyhow::Result<()> {
    let outcome = w.outcome()?;
    match &outcome.result {
        Err(e) if e.to_string().contains(&text) => Ok(()),
        Err(e) => Err(w.fail_since(
            outcome.log_mark,
            format!("{} failed with {e}, not {text:?}", outcome.description),
        )),
        Ok(r) => Err(w.fail_since(
            outcome.log_mark,
            format!(
                "{} was answered {}, expected a failure {text:?}",
                outcome.description,
                Code(r.code)
            ),
        )),
    }
}

/// A latency percentile of one operation (`register`, `read`, ...), on the run's clock.
#[then(expr = "the {int}th percentile of the {string} latency is below {duration}")]
fn latency_percentile(
    w: &mut Lwm2mWorld,
    percentile: u32,
    operation: String,
    limit: DurationParam,
) -> anyhow::Result<()> {
    let Some(h) = w.latencies.histogram(&operation) else {
        return Err(w.fail(format!("no {operation:?} latency was recorded")));
    };
    let micros = h.value_at_quantile(f64::from(percentile) / 100.0);
    let value = std::time::Duration::from_micros(micros);
    if value < limit.0 {
        Ok(())
    } else {
        Err(w.fail(format!(
            "the {percentile}th percentile of {operation:?} is {value:?} over {} samples, not below {:?}",
            h.len(),
            limit.0
        )))
    }
}

/// The bytes of CoAP the last operation put on the wire (requests, responses, ACKs,
/// retransmissions).
#[then(expr = "the last operation took at most {int} bytes")]
fn operation_bytes(w: &mut Lwm2mWorld, limit: u64) -> anyhow::Result<()> {
    let outcome = w.outcome()?;
    let (datagrams, bytes) = w.backend().exchange_log().totals_since(outcome.log_mark);
    if bytes <= limit {
        Ok(())
    } else {
        Err(w.fail_since(
            outcome.log_mark,
            format!(
                "{} took {bytes} bytes in {datagrams} datagrams, more than {limit}",
                outcome.description
            ),
        ))
    }
}
