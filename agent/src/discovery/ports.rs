//! `PortSet`: the `--open-ports` criterion, e.g. `80,443,8000-8999`.
use std::{fmt, str::FromStr};

/// Why a port list did not parse. Every variant names the offending item.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortSetError {
    #[error("empty port list")]
    EmptyList,
    #[error("empty item at position {position} in port list {list:?}")]
    EmptyItem { list: String, position: usize },
    #[error("invalid port {item:?}: not a number")]
    NotANumber { item: String },
    #[error("invalid port {item:?}: port 0 is not allowed")]
    PortZero { item: String },
    #[error("invalid port {item:?}: ports go up to 65535")]
    OutOfRange { item: String },
    #[error("invalid port range {item:?}: start is greater than end")]
    ReversedRange { item: String },
}

/// A set of TCP ports, stored as sorted, merged, inclusive ranges.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct PortSet {
    ranges: Vec<(u16, u16)>,
}

impl PortSet {
    /// A set from explicit inclusive ranges (normalised: sorted and merged).
    /// Reversed ranges are swapped.
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u16, u16)>) -> Self {
        let mut v: Vec<(u16, u16)> = ranges.into_iter().map(|(a, b)| if a <= b { (a, b) } else { (b, a) }).collect();
        v.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(v.len());
        for (lo, hi) in v {
            match merged.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Self { ranges: merged }
    }

    pub fn contains(&self, port: u16) -> bool {
        // Ranges are sorted and disjoint: find the last range starting <= port.
        let idx = self.ranges.partition_point(|&(lo, _)| lo <= port);
        idx > 0 && port <= self.ranges[idx - 1].1
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The normalised inclusive ranges.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.ranges
    }
}

fn parse_port(s: &str, item: &str) -> Result<u16, PortSetError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PortSetError::NotANumber { item: item.to_owned() });
    }
    // All digits: only overflow can fail here.
    let n: u64 = s.parse().map_err(|_| PortSetError::OutOfRange { item: item.to_owned() })?;
    match n {
        0 => Err(PortSetError::PortZero { item: item.to_owned() }),
        1..=65535 => Ok(n as u16),
        _ => Err(PortSetError::OutOfRange { item: item.to_owned() }),
    }
}

impl FromStr for PortSet {
    type Err = PortSetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err(PortSetError::EmptyList);
        }
        let mut ranges = Vec::new();
        for (i, raw) in s.split(',').enumerate() {
            let item = raw.trim();
            if item.is_empty() {
                return Err(PortSetError::EmptyItem { list: s.to_owned(), position: i + 1 });
            }
            let range = match item.split_once('-') {
                Some((a, b)) => {
                    let lo = parse_port(a.trim(), item)?;
                    let hi = parse_port(b.trim(), item)?;
                    if lo > hi {
                        return Err(PortSetError::ReversedRange { item: item.to_owned() });
                    }
                    (lo, hi)
                }
                None => {
                    let p = parse_port(item, item)?;
                    (p, p)
                }
            };
            ranges.push(range);
        }
        Ok(Self::from_ranges(ranges))
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PortSet({self})")
    }
}

impl serde::Serialize for PortSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Accepts a string (`"80,443,8000-8999"`) or a bare integer (`8080`, as YAML
/// gives for `open_ports: 8080`).
impl<'de> serde::Deserialize<'de> for PortSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PortSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port list like \"80,443,8000-8999\" or a port number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortSet, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortSet, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortSet, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_singles_and_ranges() {
        let p: PortSet = " 80, 443 ,8000-8999, 9000 - 9001".parse().unwrap();
        for port in [80, 443, 8000, 8500, 8999, 9000, 9001] {
            assert!(p.contains(port), "{port}");
        }
        for port in [1, 79, 81, 442, 444, 7999, 9002, 65535] {
            assert!(!p.contains(port), "{port}");
        }
        // 8000-8999 and 9000-9001 are adjacent and merge.
        assert_eq!(p.to_string(), "80,443,8000-9001");
        assert_eq!(p.ranges(), &[(80, 80), (443, 443), (8000, 9001)]);
    }

    #[test]
    fn edges() {
        let p: PortSet = "1,65535".parse().unwrap();
        assert!(p.contains(1) && p.contains(65535) && !p.contains(2) && !p.contains(0));
        let p: PortSet = "1-65535".parse().unwrap();
        assert!(p.contains(1) && p.contains(65535) && p.contains(3000));
        let p: PortSet = "10-20,15-30,5".parse().unwrap();
        assert_eq!(p.to_string(), "5,10-30");
        let p: PortSet = "8080-8080".parse().unwrap();
        assert_eq!(p.to_string(), "8080");
    }

    #[test]
    fn rejects_bad_items_naming_them() {
        let cases: &[(&str, PortSetError, &str)] = &[
            ("", PortSetError::EmptyList, "empty port list"),
            ("80,,443", PortSetError::EmptyItem { list: "80,,443".into(), position: 2 }, "position 2"),
            ("80,", PortSetError::EmptyItem { list: "80,".into(), position: 2 }, "position 2"),
            ("0", PortSetError::PortZero { item: "0".into() }, "\"0\""),
            ("65536", PortSetError::OutOfRange { item: "65536".into() }, "\"65536\""),
            (
                "80,99999999999999999999999",
                PortSetError::OutOfRange { item: "99999999999999999999999".into() },
                "99999999999999999999999",
            ),
            ("9000-8000", PortSetError::ReversedRange { item: "9000-8000".into() }, "\"9000-8000\""),
            ("0-10", PortSetError::PortZero { item: "0-10".into() }, "\"0-10\""),
            ("http", PortSetError::NotANumber { item: "http".into() }, "\"http\""),
            ("-5", PortSetError::NotANumber { item: "-5".into() }, "\"-5\""),
            ("80-", PortSetError::NotANumber { item: "80-".into() }, "\"80-\""),
            ("1-2-3", PortSetError::NotANumber { item: "1-2-3".into() }, "\"1-2-3\""),
            ("+80", PortSetError::NotANumber { item: "+80".into() }, "\"+80\""),
        ];
        for (input, want, text) in cases {
            let err = input.parse::<PortSet>().unwrap_err();
            assert_eq!(&err, want, "input {input:?}");
            assert!(err.to_string().contains(text), "{input:?}: {err}");
        }
    }

    #[test]
    fn serde_string_or_number() {
        let p: PortSet = serde_json::from_str("\"80, 8000-8001\"").unwrap();
        assert_eq!(p.to_string(), "80,8000-8001");
        let p: PortSet = serde_json::from_str("8080").unwrap();
        assert!(p.contains(8080));
        assert!(serde_json::from_str::<PortSet>("\"9-1\"").is_err());
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"8080\"");
    }
}
