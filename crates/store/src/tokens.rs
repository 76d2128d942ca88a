//! API tokens: a random 256-bit secret shown once; only its SHA-256 is stored.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::StoreError;

/// Prefix of every secret, so a leaked one is easy to recognise and grep for.
pub const SECRET_PREFIX: &str = "dpt_";

/// What a token may do.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read only.
    Viewer,
    /// Read, claim and release desktops (a portal or connection broker).
    Broker,
    /// Read, claim and release, resize within bounds, replace desktops.
    Helpdesk,
    /// Everything.
    Admin,
}

impl Role {
    /// The stored string form.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Broker => "broker",
            Role::Helpdesk => "helpdesk",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "broker" => Ok(Role::Broker),
            "helpdesk" => Ok(Role::Helpdesk),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role '{other}': use admin, helpdesk, broker or viewer"
            )),
        }
    }
}

/// A stored token (never the secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Token {
    /// Database id.
    pub id: Uuid,
    /// Who holds it; recorded as the actor of events.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was last used (updated at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    id: Uuid,
    name: String,
    role: String,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl TryFrom<TokenRow> for Token {
    type Error = StoreError;
    fn try_from(r: TokenRow) -> Result<Self, StoreError> {
        Ok(Token {
            role: r.role.parse().map_err(StoreError::Corrupt)?,
            id: r.id,
            name: r.name,
            created_at: r.created_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
        })
    }
}

const COLUMNS: &str = "id, name, role, created_at, last_used_at, revoked_at";

/// SHA-256 of a secret, as stored.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Makes a token and returns it with its secret, which is not stored and cannot be shown again.
pub async fn create(
    conn: &mut PgConnection,
    name: &str,
    role: Role,
) -> Result<(Token, String), StoreError> {
    if name.trim().is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(StoreError::Invalid {
            constraint: "api_tokens_name".into(),
            message: "token name must be 1-100 printable characters".into(),
        });
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = format!("{SECRET_PREFIX}{}", hex::encode(bytes));
    let row: TokenRow = sqlx::query_as(&format!(
        "INSERT INTO api_tokens (id, name, role, secret_hash) VALUES ($1, $2, $3, $4)
         RETURNING {COLUMNS}"
    ))
    .bind(Uuid::new_v4())
    .bind(name)
    .bind(role.as_str())
    .bind(&hash_secret(&secret)[..])
    .fetch_one(conn)
    .await?;
    Ok((row.try_into()?, secret))
}

/// Whether `secret` has the shape [`create`] gives every secret (`dpt_` and 64 lowercase hex
/// digits): anything else cannot be a token, so it is refused without a database query.
pub fn is_well_formed(secret: &str) -> bool {
    secret.strip_prefix(SECRET_PREFIX).is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The active token whose secret this is, if any. Marks it used (at most once a minute, so a
/// busy client does not turn every read into a write).
pub async fn authenticate(
    conn: &mut PgConnection,
    secret: &str,
) -> Result<Option<Token>, StoreError> {
    let row: Option<TokenRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM api_tokens WHERE secret_hash = $1 AND revoked_at IS NULL"
    ))
    .bind(&hash_secret(secret)[..])
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let token = Token::try_from(row)?;
    if token
        .last_used_at
        .is_none_or(|t| Utc::now() - t > chrono::Duration::minutes(1))
    {
        sqlx::query("UPDATE api_tokens SET last_used_at = now() WHERE id = $1")
            .bind(token.id)
            .execute(conn)
            .await?;
    }
    Ok(Some(token))
}

/// Every token, active ones first, by name.
pub async fn list(conn: &mut PgConnection) -> Result<Vec<Token>, StoreError> {
    let rows: Vec<TokenRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM api_tokens ORDER BY revoked_at IS NOT NULL, name, created_at"
    ))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(Token::try_from).collect()
}

/// Revokes the active token named `name`.
pub async fn revoke(conn: &mut PgConnection, name: &str) -> Result<Token, StoreError> {
    let row: Option<TokenRow> = sqlx::query_as(&format!(
        "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL
         RETURNING {COLUMNS}"
    ))
    .bind(name)
    .fetch_optional(conn)
    .await?;
    row.ok_or_else(|| StoreError::NotFound {
        what: "active token",
        name: name.to_owned(),
    })?
    .try_into()
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    #[test]
    fn only_the_shape_create_makes_is_well_formed() {
        let good = format!("{SECRET_PREFIX}{}", hex::encode([0xabu8; 32]));
        assert!(is_well_formed(&good));
        for bad in [
            "",
            "dpt_",
            "nope",
            &good[..good.len() - 1],
            &format!("{good}0"),
            &good.to_uppercase(),
            &good.replace("dpt_", "dpx_"),
            &format!("dpt_{}", "g".repeat(64)),
        ] {
            assert!(!is_well_formed(bad), "{bad:?}");
        }
    }
}
