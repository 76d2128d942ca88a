//! The OpenAPI document, generated from the handlers' annotations, and its route.

use std::sync::OnceLock;

use axum::response::{IntoResponse as _, Response};
use http::header;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{claims, desktops, error, events, model, ops, pools, tokens};

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Attaches the spec's text-field rules ([`deskpool_domain::patterns`]) to `PoolSpec`'s schema,
/// so the document states exactly what `PoolSpec::validate` accepts.
struct SpecPatterns;

impl Modify for SpecPatterns {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, Schema};
        let Some(components) = doc.components.as_mut() else {
            return;
        };
        let Some(RefOr::T(Schema::Object(spec))) = components.schemas.get_mut("PoolSpec") else {
            return;
        };
        for (field, pattern) in deskpool_domain::patterns::FIELDS {
            if let Some(RefOr::T(Schema::Object(prop))) = spec.properties.get_mut(*field) {
                prop.pattern = Some((*pattern).to_owned());
            }
        }
    }
}

/// An optional query or header parameter is absent or has a value, never `null` (which a
/// client would have to send as the text "null"): drops the `null` type utoipa gives `Option`.
struct NoNullParameters;

impl Modify for NoNullParameters {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::schema::{SchemaType, Type};
        use utoipa::openapi::{RefOr, Schema};
        for item in doc.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                for param in op.parameters.iter_mut().flatten() {
                    let Some(RefOr::T(Schema::Object(obj))) = param.schema.as_mut() else {
                        continue;
                    };
                    if let SchemaType::Array(types) = &obj.schema_type {
                        let kept: Vec<Type> = types
                            .iter()
                            .filter(|t| **t != Type::Null)
                            .cloned()
                            .collect();
                        if let [only] = kept.as_slice() {
                            obj.schema_type = SchemaType::Type(only.clone());
                        }
                    }
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "deskpool", description = "Keeps VMware vSphere desktop pools at their target size with linked clones."),
    paths(
        pools::list, pools::create, pools::get, pools::replace, pools::resize, pools::delete,
        pools::pause, pools::resume, pools::push_image, pools::resume_rollout,
        desktops::list, desktops::get, desktops::delete,
        claims::claim, claims::release,
        events::list,
        tokens::whoami, tokens::list, tokens::create, tokens::revoke,
        ops::healthz, ops::readyz, ops::metrics, openapi_json,
    ),
    components(schemas(
        error::ErrorBody, error::ErrorDetail,
        deskpool_domain::PoolSpec, deskpool_domain::GuestOs, deskpool_domain::LogoffPolicy,
        deskpool_domain::PoolSpec, deskpool_domain::GuestOs, deskpool_domain::OnRelease,
        model::PoolView, model::PoolStatus, model::PoolStateView, model::PoolList, model::Resize,
        model::RolloutView, model::ImageCount, model::ImagePush,
        model::DesktopView, model::DesktopStateView, model::DesktopPage,
        model::ClaimRequest, model::ClaimAnswer,
        model::EventView, model::EventPage,
        tokens::TokenView, tokens::TokenList, tokens::NewToken, tokens::CreatedToken,
        tokens::Permissions, tokens::Whoami,
        model::Alive, model::Readiness, model::DbHealth, model::ReplicaRole, model::VcenterHealth,
    )),
    modifiers(&BearerAuth, &SpecPatterns, &NoNullParameters),
    tags(
        (name = "pools", description = "Pool definitions and sizing"),
        (name = "desktops", description = "Desktops of a pool"),
        (name = "claims", description = "Handing desktops to users and taking them back"),
        (name = "events", description = "Audit trail"),
        (name = "tokens", description = "API tokens (admin) and the caller's own"),
        (name = "ops", description = "Health, readiness, metrics"),
    )
)]
struct ApiDoc;

/// The API's OpenAPI 3 document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// This API's OpenAPI 3 document.
#[utoipa::path(get, path = "/openapi.json", tag = "ops",
    responses((status = 200, description = "OpenAPI 3 document", body = Object)))]
pub(crate) async fn openapi_json() -> Response {
    static DOC: OnceLock<String> = OnceLock::new();
    let doc = DOC.get_or_init(|| {
        openapi()
            .to_json()
            .expect("the OpenAPI document serializes")
    });
    ([(header::CONTENT_TYPE, "application/json")], doc.clone()).into_response()
}
