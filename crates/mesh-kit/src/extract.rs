//! axum's `Path` and `Query` with the one JSON error shape: axum's own
//! rejections answer `text/plain` (`/v2/models/%FF`, `?features=a&features=b`),
//! which every client of an mlmesh API would then have to special-case. As
//! in axum's `customize-extractor-error` example, these wrap the originals
//! and turn the rejection into an [`ApiError`] with the same status.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// [`axum::extract::Path`], rejecting with a JSON [`ApiError`].
#[derive(Debug, Clone)]
pub struct Path<T>(pub T);

/// [`axum::extract::Query`], rejecting with a JSON [`ApiError`].
#[derive(Debug, Clone)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(r) => Err(ApiError::new(r.status(), r.body_text())),
        }
    }
}

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(r) => Err(ApiError::from(r)),
        }
    }
}
