//! Head sampling as the OpenTelemetry SDKs configure it
//! (`OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`).
//!
//! The decision is made once per trace, when periscope fixes the trace id
//! of a group of local spans, and applies to the spans only: RED metrics,
//! span metrics and service graph metrics count every request.
//!
//! An incoming `traceparent` marked not-sampled: with a `parentbased_*`
//! sampler (the default, as in the SDKs) the caller's decision is kept and
//! the spans are not exported. A caller that marks requests not-sampled has
//! decided for the whole trace; exporting our part anyway would produce
//! traces whose root is missing. Users running periscope as their only
//! instrumentation behind such a caller choose `always_on` or
//! `traceidratio`, which ignore the flag.
use std::fmt;

use crate::model::TraceId;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    AlwaysOn,
    AlwaysOff,
    /// Keep traces whose id falls under `ratio` (0.0..=1.0), by the trace id
    /// so every agent on the way decides alike.
    TraceIdRatio(f64),
    /// Follow the incoming sampled flag when there is one, else the root sampler.
    ParentBased(Root),
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::ParentBased(Root::AlwaysOn)
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct SamplerError(String);

impl fmt::Display for SamplerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SamplerError {}

fn ratio(arg: Option<&str>) -> Result<f64, SamplerError> {
    let Some(arg) = arg.map(str::trim).filter(|a| !a.is_empty()) else { return Ok(1.0) };
    match arg.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(SamplerError(format!("OTEL_TRACES_SAMPLER_ARG must be a number between 0 and 1, got {arg:?}"))),
    }
}

impl Sampler {
    /// Parses the SDK environment variables' values.
    pub fn parse(name: &str, arg: Option<&str>) -> Result<Self, SamplerError> {
        Ok(match name.trim() {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatio(ratio(arg)?),
            "parentbased_always_on" => Sampler::ParentBased(Root::AlwaysOn),
            "parentbased_always_off" => Sampler::ParentBased(Root::AlwaysOff),
            "parentbased_traceidratio" => Sampler::ParentBased(Root::TraceIdRatio(ratio(arg)?)),
            other => {
                return Err(SamplerError(format!(
                    "unknown OTEL_TRACES_SAMPLER {other:?}: use always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                )))
            }
        })
    }

    /// Should a trace be exported? `parent_sampled` is the incoming
    /// traceparent's sampled flag, when the trace came with one.
    pub fn sample(&self, trace_id: &TraceId, parent_sampled: Option<bool>) -> bool {
        match *self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::TraceIdRatio(r) => by_ratio(trace_id, r),
            Sampler::ParentBased(root) => match parent_sampled {
                Some(sampled) => sampled,
                None => match root {
                    Root::AlwaysOn => true,
                    Root::AlwaysOff => false,
                    Root::TraceIdRatio(r) => by_ratio(trace_id, r),
                },
            },
        }
    }
}

/// The W3C / OTel ratio rule: the last 8 bytes of the trace id as an integer,
/// compared with ratio * 2^64 (random trace ids have random low bytes).
fn by_ratio(trace_id: &TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let low = u64::from_be_bytes(trace_id.0[8..].try_into().unwrap_or([0; 8]));
    (low as f64) < ratio * (u64::MAX as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_sdk_name_and_rejects_the_rest() {
        assert_eq!(Sampler::parse("always_on", None), Ok(Sampler::AlwaysOn));
        assert_eq!(Sampler::parse("always_off", None), Ok(Sampler::AlwaysOff));
        assert_eq!(Sampler::parse("traceidratio", Some("0.25")), Ok(Sampler::TraceIdRatio(0.25)));
        assert_eq!(Sampler::parse("traceidratio", None), Ok(Sampler::TraceIdRatio(1.0)));
        assert_eq!(Sampler::parse("parentbased_always_off", None), Ok(Sampler::ParentBased(Root::AlwaysOff)));
        assert_eq!(
            Sampler::parse("parentbased_traceidratio", Some("0.5")),
            Ok(Sampler::ParentBased(Root::TraceIdRatio(0.5)))
        );
        assert!(Sampler::parse("traceidratio", Some("2")).unwrap_err().to_string().contains("between 0 and 1"));
        assert!(Sampler::parse("jaeger_remote", None).unwrap_err().to_string().contains("unknown"));
    }

    #[test]
    fn parent_based_follows_the_incoming_flag_and_roots_follow_the_root_sampler() {
        let id = TraceId([7; 16]);
        let s = Sampler::default();
        assert!(s.sample(&id, None));
        assert!(!s.sample(&id, Some(false)));
        assert!(Sampler::AlwaysOn.sample(&id, Some(false)), "always_on ignores the caller");
        assert!(!Sampler::ParentBased(Root::AlwaysOff).sample(&id, None));
        assert!(Sampler::ParentBased(Root::AlwaysOff).sample(&id, Some(true)));
    }

    #[test]
    fn ratio_keeps_about_that_share_of_random_traces() {
        let s = Sampler::TraceIdRatio(0.25);
        let kept = (0..20_000).filter(|_| s.sample(&TraceId::random(), None)).count();
        assert!((4_300..5_700).contains(&kept), "kept {kept} of 20000 at 0.25");
        assert!(!Sampler::TraceIdRatio(0.0).sample(&TraceId([0xff; 16]), None));
        assert!(Sampler::TraceIdRatio(1.0).sample(&TraceId([0xff; 16]), None));
    }
}
