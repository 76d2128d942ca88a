//! Integers as JSON Schema defines them: `4` and `4.0` are the same integer. serde's `u32`
//! refuses `4.0`, which a client (or a schema-driven tester) may well send, so the API's integer
//! fields deserialize through here. Fractions and out-of-range values are refused with serde's
//! usual messages.

use serde::de::{Deserializer, Error as _, Unexpected};
use serde::Deserialize as _;

/// A JSON number that is a whole number: an integer, or a float with no fractional part.
fn whole(n: serde_json::Number) -> Result<i128, Unexpected<'static>> {
    if let Some(i) = n.as_i64() {
        return Ok(i128::from(i));
    }
    if let Some(u) = n.as_u64() {
        return Ok(i128::from(u));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e30 => Ok(f as i128),
        Some(f) => Err(Unexpected::Float(f)),
        None => Err(Unexpected::Other("number")),
    }
}

/// Deserializes a `u32` from `7` or `7.0`.
pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    let v = whole(n).map_err(|u| D::Error::invalid_type(u, &"an integer"))?;
    u32::try_from(v)
        .map_err(|_| D::Error::custom(format!("{v} is out of range: expected 0 to {}", u32::MAX)))
}

/// Deserializes an optional `u32` (absent or null is `None`).
pub fn option_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => {
            let v = whole(n).map_err(|u| D::Error::invalid_type(u, &"an integer"))?;
            u32::try_from(v).map(Some).map_err(|_| {
                D::Error::custom(format!("{v} is out of range: expected 0 to {}", u32::MAX))
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, serde::Deserialize)]
    struct T {
        #[serde(deserialize_with = "super::u32")]
        n: u32,
    }

    fn parse(json: &str) -> Result<u32, String> {
        serde_json::from_str::<T>(json)
            .map(|t| t.n)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn whole_floats_are_integers_and_fractions_are_not() {
        assert_eq!(parse(r#"{"n": 7}"#), Ok(7));
        assert_eq!(parse(r#"{"n": 7.0}"#), Ok(7));
        assert_eq!(parse(r#"{"n": 1e3}"#), Ok(1000));
        assert!(parse(r#"{"n": 7.5}"#)
            .unwrap_err()
            .contains("expected an integer"));
        assert!(parse(r#"{"n": -1}"#).unwrap_err().contains("out of range"));
        assert!(parse(r#"{"n": 4294967296}"#)
            .unwrap_err()
            .contains("out of range"));
        assert!(parse(r#"{"n": "7"}"#).is_err());
    }
}
