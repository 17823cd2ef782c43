//! Explicit-bucket histogram with OTel `le` semantics: bucket `i` counts values
//! in `(bounds[i-1], bounds[i]]`; the last bucket counts values above every bound.

/// Bucket bounds (seconds) of every duration histogram.
pub const DURATION_BOUNDS: &[f64] =
    &[0.0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0];

/// Bucket bounds (bytes) of every body-size histogram.
pub const BODY_SIZE_BOUNDS: &[f64] = &[0.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0];

/// Aggregated data of one histogram series.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramData {
    /// Upper bounds; `bucket_counts` has one more element (the `+Inf` bucket).
    pub bounds: &'static [f64],
    /// Per-bucket (non-cumulative) counts, `bounds.len() + 1` of them.
    pub bucket_counts: Vec<u64>,
    pub count: u64,
    pub sum: f64,
    /// `None` until the first measurement.
    pub min: Option<f64>,
    pub max: Option<f64>,
}

impl HistogramData {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, bucket_counts: vec![0; bounds.len() + 1], count: 0, sum: 0.0, min: None, max: None }
    }

    /// Index of the bucket `value` falls in.
    pub fn bucket_index(bounds: &[f64], value: f64) -> usize {
        // First bound >= value; NaN compares false everywhere and lands in +Inf.
        bounds.partition_point(|b| *b < value)
    }

    pub fn record(&mut self, value: f64) {
        if value.is_nan() {
            return;
        }
        let i = Self::bucket_index(self.bounds, value);
        self.bucket_counts[i] += 1;
        self.count += 1;
        self.sum += value;
        self.min = Some(self.min.map_or(value, |m| m.min(value)));
        self.max = Some(self.max.map_or(value, |m| m.max(value)));
    }

    /// Cumulative counts for Prometheus `_bucket{le=..}`, ending with the `+Inf` one.
    pub fn cumulative_counts(&self) -> Vec<u64> {
        self.bucket_counts
            .iter()
            .scan(0u64, |acc, c| {
                *acc += c;
                Some(*acc)
            })
            .collect()
    }
}
