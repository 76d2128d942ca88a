//! `/api/v1/tokens` (admin): create, list and revoke API tokens over HTTP; and
//! `/api/v1/whoami`: the caller's own token and what it may do, so the web page shows only
//! the controls the token may use.
//!
//! The command line (`deskpool token ...`) keeps working on the same store functions; here
//! the actor of the events is the admin's token name instead of `cli`.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use deskpool_domain::EventKind;
use deskpool_store::events::{self, NewEvent};
use deskpool_store::tokens::{self, Role, Token};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::ToSchema;

use crate::auth::{Admin, Broker, Caller, Helpdesk, MinRole, Viewer};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiJson, ApiPath};
use crate::AppState;

/// A token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    /// Who holds it; recorded as the actor of its API actions.
    pub name: String,
    /// `admin`, `helpdesk`, `broker` or `viewer`.
    #[schema(value_type = String, example = "helpdesk")]
    pub role: Role,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it was last used (updated at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked; absent while active.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<Token> for TokenView {
    fn from(t: Token) -> Self {
        Self {
            name: t.name,
            role: t.role,
            created_at: t.created_at,
            last_used_at: t.last_used_at,
            revoked_at: t.revoked_at,
        }
    }
}

/// Every token, active ones first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TokenList {
    /// Active tokens by name, then revoked ones.
    pub tokens: Vec<TokenView>,
}

/// A request for a new token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Name of the holder, 1-100 printable characters, unique among active tokens.
    #[schema(
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$",
        max_length = 100
    )]
    pub name: String,
    /// `admin`, `helpdesk`, `broker` or `viewer`.
    #[schema(value_type = String, pattern = "^(?:admin|helpdesk|broker|viewer)$", example = "helpdesk")]
    pub role: Role,
}

/// A new token with its secret, which is shown this once and never again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedToken {
    /// The stored token.
    pub token: TokenView,
    /// The secret (`dpt_` + 64 hex digits) to send as `Authorization: Bearer`.
    pub secret: String,
}

/// What the caller's token may do, derived from the roles the handlers require.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Permissions {
    /// `POST /api/v1/pools/{name}/claim` and `.../desktops/{desktop}/release`.
    pub claim_desktops: bool,
    /// `PATCH /api/v1/pools/{name}` (within the pool's bounds).
    pub resize_pools: bool,
    /// `DELETE /api/v1/pools/{name}/desktops/{desktop}`.
    pub replace_desktops: bool,
    /// Define, change, pause, resume and delete pools.
    pub manage_pools: bool,
    /// `/api/v1/tokens`.
    pub manage_tokens: bool,
}

/// The caller's own token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Whoami {
    /// The token's name.
    pub name: String,
    /// Its role.
    #[schema(value_type = String, example = "viewer")]
    pub role: Role,
    /// What it may do.
    pub may: Permissions,
}

fn permissions(role: Role) -> Permissions {
    Permissions {
        claim_desktops: role >= Broker::ROLE,
        resize_pools: role >= Helpdesk::ROLE,
        replace_desktops: role >= Helpdesk::ROLE,
        manage_pools: role >= Admin::ROLE,
        manage_tokens: role >= Admin::ROLE,
    }
}

/// Answers that hold a secret or the token list must not sit in any cache.
fn no_store(status: StatusCode, body: impl Serialize) -> Response {
    let mut res = (status, Json(body)).into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

async fn record(
    conn: &mut PgConnection,
    actor: &str,
    kind: EventKind,
    message: &str,
) -> ApiResult<()> {
    events::record(
        conn,
        &NewEvent {
            pool: None,
            desktop: None,
            actor,
            kind,
            message,
        },
    )
    .await?;
    Ok(())
}

/// The caller's token name, role and permissions.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "tokens",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's token", body = Whoami),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub(crate) async fn whoami(caller: Caller<Viewer>) -> Json<Whoami> {
    Json(Whoami {
        may: permissions(caller.role),
        name: caller.name,
        role: caller.role,
    })
}

/// Every token (admin), never their secrets.
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every token", body = TokenList),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub(crate) async fn list(
    State(state): State<AppState>,
    _caller: Caller<Admin>,
) -> ApiResult<Response> {
    let mut conn = state.db.acquire().await?;
    let all = tokens::list(&mut conn).await?;
    Ok(no_store(
        StatusCode::OK,
        TokenList {
            tokens: all.into_iter().map(TokenView::from).collect(),
        },
    ))
}

/// Makes a token (admin) and returns its secret, this once.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens",
    security(("bearer" = [])),
    request_body = NewToken,
    responses(
        (status = 201, description = "Created; the secret is in the body and cannot be shown again", body = CreatedToken),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 409, description = "An active token has that name", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Body is not JSON", body = ErrorBody),
        (status = 422, description = "Invalid name or role; `field` names it", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller<Admin>,
    ApiJson(req): ApiJson<NewToken>,
) -> ApiResult<Response> {
    let mut tx = state.db.begin().await?;
    let (token, secret) = tokens::create(&mut tx, &req.name, req.role)
        .await
        .map_err(|e| match ApiError::from(e) {
            // The store's two rules on names, answered against the field.
            e if e.code == "invalid" || e.code == "conflict" => e.with_field("name"),
            e => e,
        })?;
    record(
        &mut tx,
        &caller.name,
        EventKind::TokenCreated,
        &format!("token '{}' created with role {}", token.name, token.role),
    )
    .await?;
    tx.commit().await?;
    Ok(no_store(
        StatusCode::CREATED,
        CreatedToken {
            token: token.into(),
            secret,
        },
    ))
}

/// Revokes the active token named `name` (admin). Its requests fail with 401 from then on.
#[utoipa::path(delete, path = "/api/v1/tokens/{name}", tag = "tokens",
    security(("bearer" = [])),
    params(("name" = String, Path, description = "Token name")),
    responses(
        (status = 200, description = "Revoked", body = TokenView),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No active token of that name", body = ErrorBody),
        (status = 409, description = "The token is the one this request uses (code `own_token`)", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ))]
pub(crate) async fn revoke(
    State(state): State<AppState>,
    caller: Caller<Admin>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Response> {
    if name == caller.name {
        // Revoking the token in use locks this client out, perhaps the last admin with it.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "own_token",
            format!(
                "this request is authenticated by token '{name}': revoke it with another admin token, or with `deskpool token revoke --name {name}` on the server"
            ),
        ));
    }
    let mut tx = state.db.begin().await?;
    let token = tokens::revoke(&mut tx, &name).await?;
    record(
        &mut tx,
        &caller.name,
        EventKind::TokenRevoked,
        &format!("token '{}' revoked", token.name),
    )
    .await?;
    tx.commit().await?;
    Ok(no_store(StatusCode::OK, TokenView::from(token)))
}
