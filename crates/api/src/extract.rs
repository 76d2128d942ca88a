//! Extractors whose rejections are `ApiError`s, so every bad request gets the JSON error shape
//! and names what is wrong.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use http::request::Parts;
use http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body parsed with serde's message and the path of the offending field.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

fn is_json(headers: &HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct.split(';').next().unwrap_or_default().trim();
    mime.eq_ignore_ascii_case("application/json")
        || (mime.len() > 5
            && mime.is_char_boundary(mime.len() - 5)
            && mime[mime.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// Pulls a field name out of serde's "missing field `x`" / "unknown field `x`" messages, which
/// serde reports at the enclosing object rather than at the field.
fn field_in_message(message: &str) -> Option<&str> {
    for prefix in ["missing field `", "unknown field `"] {
        if let Some(rest) = message.strip_prefix(prefix) {
            return rest.split('`').next();
        }
    }
    None
}

fn malformed(e: serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "malformed_json",
        format!("request body is not valid JSON: {e}"),
    )
}

/// Parses a JSON body: syntax errors are 400 `malformed_json`, well-formed JSON of the wrong
/// shape is 422 `invalid_field` naming the field.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de);
    match value {
        Ok(v) => {
            // Trailing data after the value is a syntax error too.
            de.end().map_err(malformed)?;
            Ok(v)
        }
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    let message = inner.to_string();
                    let mut field = if path == "." { String::new() } else { path };
                    if let Some(f) = field_in_message(&message) {
                        if !field.ends_with(f) {
                            field = if field.is_empty() {
                                f.to_owned()
                            } else {
                                format!("{field}.{f}")
                            };
                        }
                    }
                    let err =
                        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message);
                    Err(if field.is_empty() {
                        err
                    } else {
                        err.with_field(field)
                    })
                }
                _ => Err(malformed(inner)),
            }
        }
    }
}

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with 'Content-Type: application/json'",
            )
            .with_field("Content-Type"));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "request body is larger than the server accepts",
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "unreadable_body",
                    format!("cannot read request body: {e}"),
                )
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Path parameters with a JSON rejection.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_path", e.body_text()))
    }
}

/// The raw query string's `key=value` pairs (percent-decoded), for hand-checked parameters:
/// each parameter gets a precise message, unknown and repeated ones are refused.
#[derive(Debug, Clone, Default)]
pub struct QueryPairs(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or_default();
        Ok(QueryPairs(
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect(),
        ))
    }
}

impl QueryPairs {
    /// Checks that only `allowed` keys appear, each at most once.
    pub(crate) fn only(&self, allowed: &[&str]) -> Result<(), ApiError> {
        for (i, (k, _)) in self.0.iter().enumerate() {
            if !allowed.contains(&k.as_str()) {
                return Err(ApiError::bad_query(
                    k,
                    format!(
                        "unknown query parameter '{k}'; expected one of: {}",
                        allowed.join(", ")
                    ),
                ));
            }
            if self.0[..i].iter().any(|(prev, _)| prev == k) {
                return Err(ApiError::bad_query(
                    k,
                    format!("query parameter '{k}' given more than once"),
                ));
            }
        }
        Ok(())
    }

    /// The value of `key`, if present.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Parses `key` with `parse`, naming the parameter on failure.
    pub(crate) fn parse<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        parse: impl FnOnce(&'a str) -> Option<T>,
    ) -> Result<Option<T>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => parse(v).map(Some).ok_or_else(|| {
                ApiError::bad_query(key, format!("query parameter '{key}': expected {expected}"))
            }),
        }
    }

    /// The page size: 1..=`max`, `default` when absent.
    pub(crate) fn limit(&self, default: u32, max: u32) -> Result<u32, ApiError> {
        Ok(self
            .parse("limit", &format!("an integer from 1 to {max}"), |v| {
                v.parse::<u32>().ok().filter(|n| (1..=max).contains(n))
            })?
            .unwrap_or(default))
    }
}

/// The version an `If-Match` header asks for: `None` when absent or `*`.
pub(crate) fn if_match(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            "If-Match must be an ETag from GET, like \"3\" (or its number, 3), or *",
        )
        .with_field("If-Match")
    };
    let v = v.to_str().map_err(|_| bad())?.trim();
    if v == "*" {
        return Ok(None);
    }
    let v = v.strip_prefix("W/").unwrap_or(v);
    // A quoted ETag as GET sent it, or (leniently) its bare version number.
    let v = v
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v);
    Some(v)
        .filter(|v| (1..=18).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<i64>().ok())
        .map(Some)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
        n: u32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        a: u32,
    }

    fn err(body: &str) -> ApiError {
        parse_json::<Outer>(body.as_bytes()).unwrap_err()
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = err(r#"{"inner":{"a":"x"},"n":1}"#);
        assert_eq!(
            (e.status.as_u16(), e.field.as_deref()),
            (422, Some("inner.a"))
        );
        let e = err(r#"{"inner":{"a":1,"b":2},"n":1}"#);
        assert_eq!(
            (e.status.as_u16(), e.field.as_deref()),
            (422, Some("inner.b"))
        );
        let e = err(r#"{"inner":{"a":1}}"#);
        assert_eq!((e.status.as_u16(), e.field.as_deref()), (422, Some("n")));
        let e = err(r#"{"inner":{"a":1},"n":-1}"#);
        assert_eq!((e.status.as_u16(), e.field.as_deref()), (422, Some("n")));
        let e = err(r#"{"inner":{"a":1},"n":1"#);
        assert_eq!((e.status.as_u16(), e.code), (400, "malformed_json"));
        let e = err(r#"{"inner":{"a":1},"n":1} x"#);
        assert_eq!((e.status.as_u16(), e.code), (400, "malformed_json"));
        let e = err("[]");
        assert_eq!(e.status.as_u16(), 422);
    }

    #[test]
    fn if_match_forms() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::IF_MATCH, v.parse().unwrap());
            if_match(&m)
        };
        assert_eq!(h("\"3\"").unwrap(), Some(3));
        assert_eq!(h("W/\"3\"").unwrap(), Some(3));
        assert_eq!(h("*").unwrap(), None);
        assert_eq!(h("3").unwrap(), Some(3));
        assert_eq!(h("\"3").unwrap_err().status.as_u16(), 400);
        assert_eq!(h("\"+3\"").unwrap_err().status.as_u16(), 400);
        assert_eq!(h("\"-3\"").unwrap_err().status.as_u16(), 400);
        assert_eq!(if_match(&HeaderMap::new()).unwrap(), None);
    }
}
