//! Credit limits per user per API (seed 002: "Admins can set credit limits
//! per user under each API, for example a user can have 10K on REST API and
//! 10K on Batch API. Only Admins can control limits. The limits are per
//! user and not per key."): `GET` and `PUT /v1/credits/{owner}/{api}` over
//! the manager's limits bundle.

use std::sync::Arc;

use apikey::limits::{CreditAccount, CreditBalances, Limits, Refill, RefillInterval};
use apikey::{Clock, Error, KeyStoreWrite, UsageStore};
use http::StatusCode;
use http::request::Parts;
use serde::{Deserialize, Serialize};

use crate::api::{Outcome, Shared, json, parse_body};
use crate::caller::{Caller, ResolveCaller};
use crate::error::ApiError;
use crate::wire::CreatedKey;

/// `PUT /v1/credits/{owner}/{api}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreditsRequest {
    /// The balance now, and the amount each refill restores.
    limit: u64,
    /// `month` (default), `day` or `none`.
    #[serde(default)]
    refill: Option<String>,
}

#[derive(Debug, Serialize)]
struct CreditsView<'a> {
    owner: &'a str,
    api: &'a str,
    remaining: Option<u64>,
    limit: Option<u64>,
    refill: Option<&'static str>,
    /// The period of an `every` refill, in seconds.
    refill_every_seconds: Option<u64>,
    next_refill_in_seconds: Option<u64>,
}

/// `/v1/credits/{owner}/{api}` → (owner, api), both checked.
fn owner_api(parts: &Parts, apis: &[String]) -> Result<(String, String), ApiError> {
    let mut segs = parts.uri.path().rsplit('/');
    let api = segs.next().unwrap_or("").to_owned();
    let owner = segs.next().unwrap_or("").to_owned();
    if !apis.contains(&api) {
        return Err(ApiError::field(
            "api",
            "`api` is not one this service meters",
        ));
    }
    Ok((owner, api))
}

fn may_see(caller: &Caller, owner: &str) -> Result<(), ApiError> {
    if caller.may_manage(owner) {
        Ok(())
    } else {
        Err(ApiError::escalation(
            "owner",
            "the caller may not see or set this user's limits",
        ))
    }
}

impl<S, C, L, R> Shared<S, C, L, R>
where
    S: KeyStoreWrite + UsageStore + Send + Sync + 'static,
    C: Clock + Send + Sync + 'static,
    L: Limits + CreditBalances + 'static,
    R: ResolveCaller,
{
    async fn view(&self, owner: &str, api: &str) -> Outcome {
        let status = self
            .manager
            .authenticator()
            .limits()
            .credits(CreditAccount::Owner { owner, api })
            .await
            .map_err(Error::StoreUnavailable)?;
        let refill = status.as_ref().and_then(|s| s.refill);
        Ok(json(
            StatusCode::OK,
            &CreditsView {
                owner,
                api,
                remaining: status.as_ref().map(|s| s.remaining),
                limit: refill.map(|r| r.amount()),
                refill: refill.map(|r| match r.interval() {
                    RefillInterval::UtcDay => "day",
                    RefillInterval::UtcMonth => "month",
                    _ => "every",
                }),
                refill_every_seconds: refill.and_then(|r| match r.interval() {
                    RefillInterval::Every(period) => Some(period.as_secs()),
                    _ => None,
                }),
                next_refill_in_seconds: status.and_then(|s| s.next_refill_in).map(|d| d.as_secs()),
            },
        ))
    }

    /// A derived key with an optional credit budget carved from its
    /// parent's key balance (`KeyManager::derive_with_credits`): the budget
    /// moves credits the parent holds, never mints any, and is refused with
    /// nothing written when the parent holds less.
    pub(crate) async fn op_derive_credits(
        self: Arc<Self>,
        caller: Caller,
        parts: Parts,
        body: Vec<u8>,
    ) -> Outcome {
        let (parent, derivation, credits) = self.plan_derive(&caller, &parts, &body).await?;
        let actor = Self::actor(&caller);
        let (key, child) = match credits {
            Some(budget) => {
                self.manager
                    .derive_with_credits(parent, derivation, budget, &actor)
                    .await?
            }
            None => self.manager.derive(parent, derivation, &actor).await?,
        };
        Ok(json(StatusCode::CREATED, &CreatedKey::new(&key, &child)))
    }

    pub(crate) async fn op_credits_get(
        self: Arc<Self>,
        caller: Caller,
        parts: Parts,
        _: Vec<u8>,
    ) -> Outcome {
        let (owner, api) = owner_api(&parts, &self.config.credit_apis)?;
        may_see(&caller, &owner)?;
        self.view(&owner, &api).await
    }

    /// Account admins only, for users of their account.
    pub(crate) async fn op_credits_put(
        self: Arc<Self>,
        caller: Caller,
        parts: Parts,
        body: Vec<u8>,
    ) -> Outcome {
        let req: CreditsRequest = parse_body(&body)?;
        let (owner, api) = owner_api(&parts, &self.config.credit_apis)?;
        may_see(&caller, &owner)?;
        if !caller.is_admin() {
            return Err(ApiError::escalation(
                "owner",
                "only an account admin may set credit limits",
            ));
        }
        if req.limit > apikey::limits::CreditAccount::MAX_CREDITS {
            return Err(ApiError::field("limit", "`limit` is too large"));
        }
        let refill = match req.refill.as_deref().unwrap_or("month") {
            "month" => Some(Refill::new(req.limit, RefillInterval::UtcMonth)),
            "day" => Some(Refill::new(req.limit, RefillInterval::UtcDay)),
            "none" => None,
            _ => {
                return Err(ApiError::field(
                    "refill",
                    "`refill` must be month, day or none",
                ));
            }
        };
        self.manager
            .authenticator()
            .limits()
            .set_credits(
                CreditAccount::Owner {
                    owner: &owner,
                    api: &api,
                },
                req.limit,
                refill,
            )
            .await
            .map_err(Error::StoreUnavailable)?;
        self.view(&owner, &api).await
    }
}
