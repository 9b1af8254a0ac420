//! The `AuthUser` extractor: a handler that takes an [`AuthUser`] runs only
//! for a request whose token is signed by this deployment (`auth`) and
//! whose session is still open (`sessions`).

use actix_web::{dev::Payload, web, FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;

use super::auth;
use super::error::ApiError;
use super::sessions::AuthUser;
use super::state::AppState;

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let claims = auth::token(req).and_then(|token| match &state {
            Some(state) => state.auth.verify(&token),
            None => Err(ApiError::internal("authentication is not configured")),
        });
        Box::pin(async move {
            let (Some(state), claims) = (state, claims?) else {
                return Err(ApiError::internal("authentication is not configured"));
            };
            state.sessions.check(&claims).await
        })
    }
}
