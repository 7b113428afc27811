//! API.md "Auth": sign up, sign in, and an admin setting a user's role.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ledger::pb::command::Body;
use ledger::pb::outcome::Result as Res;
use ledger::pb::{self, Role};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{id, new_id, run};
use crate::auth::{Admin, check_password, role_name};
use crate::error::{AppError, code};
use crate::extract::{ApiJson, ApiPath};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    username: String,
    password: String,
}

fn user_of(res: Res) -> Result<pb::UserView, AppError> {
    match res {
        Res::User(v) => Ok(v),
        _ => Err(AppError::internal("the cluster answered with something other than a user")),
    }
}

/// `POST /v1/users`: a new user with the `user` role.
pub async fn sign_up(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<(StatusCode, Json<Value>), AppError> {
    id("username", &body.username)?;
    check_password(&body.password)?;
    let hash = state.passwords.hash(body.password).await?;
    let create = pb::CreateUser {
        user_id: new_id("u-"),
        username: body.username,
        role: Role::User as i32,
        password_hash: hash.into_bytes(),
    };
    // The gateway itself signs users up (empty actor); the role is always `user` here.
    let (_, res) = run(&state, "", Body::CreateUser(create)).await?;
    Ok((StatusCode::CREATED, Json(ledger::view::user(&user_of(res)?))))
}

/// `POST /v1/sessions`: a token for a username and password.
pub async fn sign_in(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Credentials>,
) -> Result<Json<Value>, AppError> {
    let wrong = || AppError::new(StatusCode::UNAUTHORIZED, code::INVALID_CREDENTIALS, "wrong username or password");
    let stored = if ledger::checks::check_id("username", &body.username).is_ok() {
        let answer = state.client.read_user("", &body.username, false).await?;
        answer.user.map(|user| (user, String::from_utf8_lossy(&answer.password_hash).into_owned()))
    } else {
        None
    };
    let (user, hash) = match stored {
        Some((user, hash)) => (Some(user), Some(hash)),
        None => (None, None),
    };
    if !state.passwords.verify(body.password, hash).await? {
        return Err(wrong());
    }
    let user = user.ok_or_else(wrong)?;
    let role = Role::try_from(user.role).unwrap_or(Role::Unspecified);
    let (token, exp) = state.jwt.mint(&user.user_id, role).map_err(|e| AppError::internal(e.to_string()))?;
    let expires_at = ledger::time::format_time(i64::try_from(exp).unwrap_or(i64::MAX).saturating_mul(1000));
    Ok(Json(json!({"token": token, "user_id": user.user_id, "role": role_name(role), "expires_at": expires_at})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleChange {
    role: String,
}

/// `POST /v1/users/{user_id}/role` (admin).
pub async fn set_role(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiPath(user_id): ApiPath<String>,
    ApiJson(body): ApiJson<RoleChange>,
) -> Result<Json<Value>, AppError> {
    id("user_id", &user_id)?;
    let role = ledger::state::parse_role(&body.role)
        .ok_or_else(|| AppError::invalid(format!("unknown role {:?} (user, curator or admin)", body.role)))?;
    let change = pb::SetUserRole { user_id, role: role as i32 };
    let (_, res) = run(&state, &admin.user_id, Body::SetUserRole(change)).await?;
    Ok(Json(ledger::view::user(&user_of(res)?)))
}
