//! Desktop naming patterns such as `lab-{n:3}`.

use std::fmt;
use std::str::FromStr;

/// Why a naming pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NamingError {
    /// No `{n}` placeholder.
    #[error("naming pattern '{0}' has no index placeholder: add '{{n}}' or '{{n:3}}' (zero-padded to 3 digits)")]
    NoPlaceholder(String),
    /// More than one placeholder.
    #[error("naming pattern '{0}' has more than one '{{n}}' placeholder")]
    ManyPlaceholders(String),
    /// A placeholder that is not `{n}` or `{n:W}` with W in 1..=9.
    #[error("naming pattern '{0}': placeholder must be '{{n}}' or '{{n:W}}' with W from 1 to 9")]
    BadPlaceholder(String),
    /// A character that a VM (or Windows computer) name cannot hold.
    #[error(
        "naming pattern '{pattern}': character '{ch}' is not allowed (use letters, digits and '-')"
    )]
    BadChar {
        /// The pattern.
        pattern: String,
        /// The offending character.
        ch: char,
    },
    /// The pattern starts or ends with '-'.
    #[error("naming pattern '{0}' must not start or end with '-'")]
    EdgeHyphen(String),
}

/// A parsed naming pattern: a prefix, a zero-padded index and a suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamingPattern {
    prefix: String,
    width: usize,
    suffix: String,
}

impl NamingPattern {
    /// The desktop name for a 1-based index.
    pub fn render(&self, index: u32) -> String {
        format!(
            "{}{:0width$}{}",
            self.prefix,
            index,
            self.suffix,
            width = self.width
        )
    }

    /// The length of the longest name this pattern yields for indexes up to `max_index`.
    pub fn max_len(&self, max_index: u32) -> usize {
        let digits = max_index.max(1).to_string().len().max(self.width);
        self.prefix.len() + digits + self.suffix.len()
    }

    /// The index a name was rendered from, if it matches this pattern.
    pub fn index_of(&self, name: &str) -> Option<u32> {
        let digits = name
            .strip_prefix(&self.prefix)?
            .strip_suffix(&self.suffix)?;
        if digits.len() < self.width || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let index: u32 = digits.parse().ok()?;
        (self.render(index) == name).then_some(index)
    }
}

impl FromStr for NamingPattern {
    type Err = NamingError;

    fn from_str(pattern: &str) -> Result<Self, Self::Err> {
        let open = pattern
            .find('{')
            .ok_or_else(|| NamingError::NoPlaceholder(pattern.to_owned()))?;
        let close = pattern[open..]
            .find('}')
            .map(|i| open + i)
            .ok_or_else(|| NamingError::BadPlaceholder(pattern.to_owned()))?;
        let (prefix, inner, suffix) = (
            &pattern[..open],
            &pattern[open + 1..close],
            &pattern[close + 1..],
        );
        if suffix.contains(['{', '}']) || prefix.contains('}') {
            return Err(NamingError::ManyPlaceholders(pattern.to_owned()));
        }
        let width = match inner {
            "n" => 1,
            _ => match inner.strip_prefix("n:").map(str::parse::<usize>) {
                Some(Ok(w)) if (1..=9).contains(&w) => w,
                _ => return Err(NamingError::BadPlaceholder(pattern.to_owned())),
            },
        };
        if let Some(ch) = prefix
            .chars()
            .chain(suffix.chars())
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(NamingError::BadChar {
                pattern: pattern.to_owned(),
                ch,
            });
        }
        if prefix.starts_with('-') || suffix.ends_with('-') {
            return Err(NamingError::EdgeHyphen(pattern.to_owned()));
        }
        Ok(Self {
            prefix: prefix.to_owned(),
            width,
            suffix: suffix.to_owned(),
        })
    }
}

impl fmt::Display for NamingPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.width == 1 {
            write!(f, "{}{{n}}{}", self.prefix, self.suffix)
        } else {
            write!(f, "{}{{n:{}}}{}", self.prefix, self.width, self.suffix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn renders_zero_padded() {
        let p: NamingPattern = "lab-{n:3}".parse().unwrap();
        assert_eq!(p.render(7), "lab-007");
        assert_eq!(p.render(1234), "lab-1234");
        assert_eq!(p.max_len(200), 7);
        assert_eq!(p.max_len(1000), 8);
        assert_eq!(p.to_string(), "lab-{n:3}");
        let q: NamingPattern = "{n}-x".parse().unwrap();
        assert_eq!(q.render(12), "12-x");
    }

    #[test]
    fn rejects_bad_patterns() {
        for (bad, want) in [
            ("lab", "no index placeholder"),
            ("lab-{n}-{n}", "more than one"),
            ("lab-{x}", "placeholder must be"),
            ("lab-{n:0}", "placeholder must be"),
            ("lab-{n:3", "placeholder must be"),
            ("lab_{n}", "character '_'"),
            ("lab {n}", "character ' '"),
            ("-lab{n}", "must not start or end"),
        ] {
            let err = bad.parse::<NamingPattern>().unwrap_err().to_string();
            assert!(err.contains(want), "{bad}: {err}");
        }
    }

    #[test]
    fn index_of_inverts_render_only() {
        let p: NamingPattern = "lab-{n:3}".parse().unwrap();
        assert_eq!(p.index_of("lab-007"), Some(7));
        assert_eq!(p.index_of("lab-07"), None);
        assert_eq!(p.index_of("lab-0007"), None);
        assert_eq!(p.index_of("lab-abc"), None);
        assert_eq!(p.index_of("other-007"), None);
    }

    proptest! {
        #[test]
        fn render_then_index_of_round_trips(index in 0u32..10_000_000, width in 1usize..6) {
            let p: NamingPattern = format!("vd{{n:{width}}}x").parse().unwrap();
            let name = p.render(index);
            prop_assert_eq!(p.index_of(&name), Some(index));
            prop_assert!(name.len() <= p.max_len(index));
        }
    }
}
