//! How a step ends a case other than by passing or failing: "not applicable" (the case
//! does not apply to the subject: a capability it lacks, an object it does not announce)
//! and "not supported" (the subject correctly refused an optional feature). Both unwind
//! with a payload the collector and the writers recognise.

/// The panic payload of a step that found the case not applicable to the subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotApplicable(pub String);

/// Ends the scenario as "not applicable" with `reason`. Unwinds without the panic hook,
/// so nothing is printed; the collector and the writers recognise the payload.
pub fn not_applicable(reason: impl Into<String>) -> ! {
    std::panic::resume_unwind(Box::new(NotApplicable(reason.into())))
}

/// The panic payload of a step that found the subject correctly refusing an optional
/// feature the case exercises (the code the specification requires for the refusal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotSupported(pub String);

/// Ends the scenario as "not supported" with `reason` (which names the refusal and the
/// clause that allows it); see [`not_applicable`].
pub fn not_supported(reason: impl Into<String>) -> ! {
    std::panic::resume_unwind(Box::new(NotSupported(reason.into())))
}
