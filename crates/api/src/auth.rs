//! Bearer-token authentication and the role each handler requires.
//!
//! The role check is an extractor that runs before the body is read, so a caller without the
//! role gets 403 whatever it sends.

use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};

use axum::extract::FromRequestParts;
use deskpool_store::tokens::{self, Role};
use http::header;
use http::request::Parts;

use crate::error::ApiError;
use crate::AppState;

/// The least role a handler accepts.
pub(crate) trait MinRole: Send + Sync + 'static {
    /// That role.
    const ROLE: Role;
}

/// Any valid token.
#[derive(Debug)]
pub(crate) struct Viewer;
/// Broker, helpdesk or admin: may claim and release desktops.
#[derive(Debug)]
pub(crate) struct Broker;
/// Helpdesk or admin.
#[derive(Debug)]
pub(crate) struct Helpdesk;
/// Admin only.
#[derive(Debug)]
pub(crate) struct Admin;

impl MinRole for Viewer {
    const ROLE: Role = Role::Viewer;
}
impl MinRole for Broker {
    const ROLE: Role = Role::Broker;
}
impl MinRole for Helpdesk {
    const ROLE: Role = Role::Helpdesk;
}
impl MinRole for Admin {
    const ROLE: Role = Role::Admin;
}

/// The authenticated caller, with at least role `R`.
#[derive(Debug)]
pub(crate) struct Caller<R> {
    /// The token's name: the actor of events.
    pub name: String,
    /// The token's role (at least `R::ROLE`).
    pub role: Role,
    _min: PhantomData<R>,
}

/// Filled in by the auth extractor so the request log line can name the caller.
#[derive(Debug, Clone, Default)]
pub(crate) struct ActorSlot(pub Arc<OnceLock<String>>);

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, secret) = value.split_once(' ')?;
    let secret = secret.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !secret.is_empty()).then_some(secret)
}

impl<R: MinRole> FromRequestParts<AppState> for Caller<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(secret) = bearer(parts) else {
            return Err(ApiError::unauthorized(
                "send an API token as 'Authorization: Bearer <secret>'",
            ));
        };
        // A secret of the wrong shape is refused before it costs a database connection.
        if !tokens::is_well_formed(secret) {
            return Err(ApiError::unauthorized(
                "the API token is unknown or revoked",
            ));
        }
        // Authenticated outside the request's transaction: marking the token used is
        // bookkeeping, not part of the change the request makes.
        let mut conn = state.db.acquire().await?;
        let token = tokens::authenticate(&mut conn, secret)
            .await?
            .ok_or_else(|| ApiError::unauthorized("the API token is unknown or revoked"))?;
        drop(conn);
        if let Some(slot) = parts.extensions.get::<ActorSlot>() {
            let _ = slot.0.set(token.name.clone());
        }
        if token.role < R::ROLE {
            return Err(ApiError::forbidden(format!(
                "token '{}' has role {}; this needs {}",
                token.name,
                token.role,
                R::ROLE
            )));
        }
        Ok(Caller {
            name: token.name,
            role: token.role,
            _min: PhantomData,
        })
    }
}
