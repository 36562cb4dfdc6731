//! The route handlers: one per `/v1/api-keys` operation, each a call frame around a [`KeyManager`] call.

use super::parse::{
    auto_renew_allowed, bounded_expiry, check_text, environment_named, loggable_id,
    parse_allowlist, parse_json, parse_scopes, parse_time, path_id, query_pairs,
};
use super::*;

macro_rules! handler {
    ($name:ident, $action:literal, $op:ident, $with_id:literal) => {
        pub(super) async fn $name<S, C, L, R>(State(st): St<S, C, L, R>, req: Request) -> Response
        where
            S: KeyStoreWrite + UsageStore + Send + Sync + 'static,
            C: Clock + Send + Sync + 'static,
            L: Limits + 'static,
            R: ResolveCaller,
        {
            let id = $with_id.then(|| loggable_id(req.uri())).flatten();
            st.call($action, id, req, Shared::$op).await
        }
    };
}

handler!(list, "list", op_list, false);
handler!(create, "create", op_create, false);
handler!(show, "get", op_show, true);
handler!(update, "update", op_update, true);
handler!(remove, "revoke", op_remove, true);
handler!(disable, "disable", op_disable, true);
handler!(enable, "enable", op_enable, true);
handler!(rotate, "rotate", op_rotate, true);
handler!(derive, "derive", op_derive, true);

impl<S, C, L, R> Shared<S, C, L, R>
where
    S: KeyStoreWrite + UsageStore + Send + Sync + 'static,
    C: Clock + Send + Sync + 'static,
    L: Limits + 'static,
    R: ResolveCaller,
{
    async fn op_list(self: Arc<Self>, caller: Caller, parts: Parts, _body: Vec<u8>) -> Outcome {
        let st = self;
        let mut owner = None;
        let mut status = None;
        let mut within = None;
        let mut cursor = None;
        let mut limit = 50usize;
        for (name, value) in query_pairs(
            &parts,
            &["owner", "status", "expiring_within_days", "cursor", "limit"],
        )? {
            match name.as_str() {
                "owner" => owner = Some(value),
                "status" => {
                    const STATES: [&str; 6] = [
                        "active",
                        "rotation_grace",
                        "disabled",
                        "revoked",
                        "expired",
                        "not_yet_valid",
                    ];
                    if !STATES.contains(&value.as_str()) {
                        return Err(ApiError::field(
                            "status",
                            "`status` must be one of active, rotation_grace, disabled, revoked, expired, not_yet_valid",
                        ));
                    }
                    status = Some(value);
                }
                "expiring_within_days" => {
                    let days: u16 = value
                        .parse()
                        .ok()
                        .filter(|d| (1..=3650).contains(d))
                        .ok_or_else(|| {
                            ApiError::field(
                                "expiring_within_days",
                                "a whole number of days, 1 to 3650",
                            )
                        })?;
                    within = Some(std::time::Duration::from_secs(u64::from(days) * 86_400));
                }
                "cursor" => cursor = Some(value),
                _ => {
                    limit = value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| ApiError::field("limit", "`limit` must be 1 to 100"))?;
                }
            }
        }
        let owners: Vec<String> = match owner {
            Some(o) if caller.may_manage(&o) => vec![o],
            Some(_) => {
                return Err(ApiError::escalation(
                    "owner",
                    "the caller may not manage this owner's keys",
                ));
            }
            None => match caller.account() {
                Some(account) => account.iter().cloned().collect(),
                None => vec![caller.owner().to_owned()],
            },
        };
        let mut keys = Vec::new();
        for o in &owners {
            keys.extend(match within {
                Some(w) => st.manager.expiring_soon(Some(o), w).await?,
                None => st.manager.list(o).await?,
            });
        }
        keys.sort_by_key(|k| (k.created_at, k.id.as_u64()));
        let bounds = caller.bounds();
        keys.retain(|k| {
            bounds.allows_environment(k.environment)
                && status
                    .as_ref()
                    .is_none_or(|s| crate::wire::state_name(k) == *s)
        });
        let start = match cursor {
            None => 0,
            Some(c) => {
                keys.iter()
                    .position(|k| k.id.to_string() == c)
                    .ok_or_else(|| ApiError::field("cursor", "unknown `cursor`"))?
                    + 1
            }
        };
        let page: Vec<&KeySummary> = keys.iter().skip(start).take(limit).collect();
        let has_more = start + page.len() < keys.len();
        let list = KeyList {
            next_cursor: has_more
                .then(|| page.last().map(|k| k.id.to_string()))
                .flatten(),
            has_more,
            may_approve: caller.is_admin(),
            data: page.into_iter().map(KeyItem::new).collect(),
        };
        Ok(json(StatusCode::OK, &list))
    }

    async fn op_create(self: Arc<Self>, caller: Caller, _parts: Parts, body: Vec<u8>) -> Outcome {
        may_mint(&caller)?;
        let st = self;
        st.may_create(&caller).await?;
        let req: CreateRequest = parse_body(&body)?;
        let now = st.now();
        let bounds = caller.bounds();
        check_text("name", &req.name, MAX_NAME_CHARS, false)?;
        if let Some(d) = &req.description {
            check_text("description", d, MAX_DESCRIPTION_CHARS, true)?;
        }
        let env = match &req.environment {
            None => Environment::Live,
            Some(e) => environment_named(e)
                .filter(|e| st.config.prefix_for(*e).is_some())
                .ok_or_else(|| {
                    ApiError::field(
                        "environment",
                        "`environment` is not one this service offers",
                    )
                })?,
        };
        if !bounds.allows_environment(env) {
            return Err(ApiError::escalation(
                "environment",
                "a key cannot be issued in an environment its creator may not use",
            ));
        }
        let scopes = parse_scopes(&req.permissions, &st.config, bounds, false)?;
        let expires = req
            .expires_at
            .as_deref()
            .map(|t| parse_time("expires_at", t, now))
            .transpose()?;
        let expires = bounded_expiry(expires, bounds, true)?;
        // None given: the caller's own (a key minted by a key inherits it).
        let allow = if req.ip_allowlist.is_empty() {
            bounds.ip_allowlist.clone()
        } else {
            parse_allowlist(&req.ip_allowlist, bounds)?
        };
        let owner = match req.owner {
            None => caller.owner().to_owned(),
            Some(o) if caller.is_admin() && caller.may_manage(&o) => o,
            Some(o) if o == caller.owner() => o,
            Some(_) => {
                return Err(ApiError::escalation(
                    "owner",
                    "the caller may not create keys for this owner",
                ));
            }
        };
        if let Some(plan) = &req.plan {
            if !st.config.plans.contains(plan) {
                return Err(ApiError::field(
                    "plan",
                    "`plan` is not one this service offers",
                ));
            }
            if !caller.is_admin() {
                return Err(ApiError::escalation(
                    "plan",
                    "only an account admin may choose a key's plan",
                ));
            }
        }
        let prefix = st.config.prefix_for(env).unwrap_or_default();
        let mut new = NewKey::new(prefix)
            .owner(owner)
            .name(req.name)
            .scopes(scopes);
        new.description = req.description.filter(|d| !d.is_empty());
        new.expires_at = expires;
        new.ip_allowlist = allow;
        // None chosen: a key caller's own plan (a key minted by a key
        // never gets a larger quota than its creator's).
        if let Some(plan) = req.plan.or_else(|| caller.plan().map(str::to_owned)) {
            new = new.metadata(crate::PLAN_KEY, plan);
        }
        if req.auto_renew {
            auto_renew_allowed(bounds, expires.is_some())?;
            new = new.metadata(KeyRecord::AUTO_RENEW, "true");
        }
        let (key, summary) = st.manager.create(new, &Self::actor(&caller)).await?;
        Ok(json(StatusCode::CREATED, &CreatedKey::new(&key, &summary)))
    }

    async fn op_show(self: Arc<Self>, caller: Caller, parts: Parts, _body: Vec<u8>) -> Outcome {
        let st = self;
        let s = st.load(&caller, &path_id(&parts.uri)).await?;
        Ok(json(StatusCode::OK, &KeyDetails::new(&s)))
    }

    async fn op_update(self: Arc<Self>, caller: Caller, parts: Parts, body: Vec<u8>) -> Outcome {
        let st = self;
        let req: PatchRequest = parse_json(&body, false)?;
        let s = st.load_within(&caller, &path_id(&parts.uri)).await?;
        let now = st.now();
        let bounds = caller.bounds();
        let mut update = KeyUpdate::new();
        if let Some(name) = req.name {
            check_text("name", &name, MAX_NAME_CHARS, false)?;
            update = update.name(name);
        }
        if let Some(d) = req.description {
            if let Some(d) = &d {
                check_text("description", d, MAX_DESCRIPTION_CHARS, true)?;
            }
            update = update.description(d.filter(|d| !d.is_empty()));
        }
        if let Some(p) = req.permissions {
            update = update.scopes(parse_scopes(&p, &st.config, bounds, false)?);
        }
        if let Some(e) = req.expires_at {
            let e = e
                .as_deref()
                .map(|t| parse_time("expires_at", t, now))
                .transpose()?;
            update = update.expires_at(bounded_expiry(e, bounds, false)?);
        }
        if let Some(list) = req.ip_allowlist {
            let nets = parse_allowlist(&list, bounds)?;
            update = update.ip_allowlist(nets);
        }
        if let Some(on) = req.auto_renew {
            // One entry, applied to the record as it is when written: the
            // rest of the metadata (a plan the host changed meanwhile) is
            // never overwritten with the copy read above.
            if on {
                let expires = update.expires_at.unwrap_or(s.expires_at);
                auto_renew_allowed(bounds, expires.is_some())?;
            }
            update = update.metadata_entry(KeyRecord::AUTO_RENEW, on.then(|| "true".to_owned()));
        }
        let after = st
            .manager
            .update(s.id, update, &Self::actor(&caller))
            .await?;
        Ok(json(StatusCode::OK, &KeyDetails::new(&after)))
    }

    async fn op_disable(self: Arc<Self>, caller: Caller, parts: Parts, _: Vec<u8>) -> Outcome {
        self.set_active(caller, parts, false).await
    }

    async fn op_enable(self: Arc<Self>, caller: Caller, parts: Parts, _: Vec<u8>) -> Outcome {
        self.set_active(caller, parts, true).await
    }

    /// Enable or disable (seeds 002 and 004): effective for the next
    /// verification. Enabling a key pending approval
    /// ([`KeyPolicy::requires_approval`](apikey::KeyPolicy::requires_approval))
    /// approves it: an account admin's call only.
    async fn set_active(&self, caller: Caller, parts: Parts, active: bool) -> Outcome {
        let s = self.load_within(&caller, &path_id(&parts.uri)).await?;
        if active && s.metadata.contains_key(KeyRecord::PENDING_APPROVAL) && !caller.is_admin() {
            return Err(ApiError::escalation(
                "status",
                "this key is pending approval: only an account admin may enable it",
            ));
        }
        let actor = Self::actor(&caller);
        let after = if active {
            self.manager.enable(s.id, &actor).await?
        } else {
            self.manager.disable(s.id, &actor).await?
        };
        Ok(json(StatusCode::OK, &KeyDetails::new(&after)))
    }

    async fn op_rotate(self: Arc<Self>, caller: Caller, parts: Parts, body: Vec<u8>) -> Outcome {
        may_mint(&caller)?;
        let st = self;
        let req: RotateRequest = parse_json(&body, true)?;
        let s = st.load_within(&caller, &path_id(&parts.uri)).await?;
        Self::within_plan(&caller, &s)?;
        st.within_budget(&caller, &s).await?;
        let bounds = caller.bounds();
        let now = st.now();
        let grace = match req.grace_period_seconds {
            None => st.config.default_grace,
            Some(secs) if secs >= 0 => std::time::Duration::from_secs(secs.unsigned_abs()),
            Some(_) => {
                return Err(ApiError::field(
                    "grace_period_seconds",
                    "`grace_period_seconds` must not be negative",
                ));
            }
        };
        let expires = req
            .expires_at
            .as_deref()
            .map(|t| parse_time("expires_at", t, now))
            .transpose()?;
        // None asked: the old key's lifetime again (the manager's rule),
        // never past the caller's own expiry.
        let mut rotation = Rotation::with_grace(grace);
        if let Some(asked) = expires
            && let Some(e) = bounded_expiry(Some(asked), bounds, true)?
        {
            rotation = rotation.expires_at(e);
        }
        if let Some(latest) = bounds.expires_at {
            rotation = rotation.no_later_than(latest);
        }
        let actor = Self::actor(&caller);
        let (key, new) = st
            .manager
            .rotate(s.id, rotation, &actor)
            .await
            .map_err(|e| {
                let mut api = ApiError::from(e);
                if api.code() == ErrorCode::InvalidRequest {
                    api = ApiError::field("grace_period_seconds", api.message().to_owned());
                }
                api
            })?;
        // The rotation is committed and this answer is the only one that
        // ever carries the new key: a failed read of the old key must not
        // lose it. Without the read, the grace end is the manager's rule
        // (the rotation's time plus the grace, never past the old expiry).
        let old = match st.manager.get(s.id).await {
            Ok(old) => old,
            Err(_) => {
                let mut old = s;
                let end = new.created_at.saturating_add(grace);
                old.expires_at = Some(old.expires_at.map_or(end, |e| e.min(end)));
                old
            }
        };
        Ok(json(
            StatusCode::CREATED,
            &CreatedKey::new(&key, &new).rotation(&old),
        ))
    }

    /// A child of the key that only narrows it (for agents): the rules are
    /// `KeyManager::derive`'s; the caller's own bounds apply as on create.
    /// A credit budget is refused here: this router meters no credits
    /// (`router_with_credits` takes it, see `op_derive_credits`).
    async fn op_derive(self: Arc<Self>, caller: Caller, parts: Parts, body: Vec<u8>) -> Outcome {
        let (parent, derivation, credits) = self.plan_derive(&caller, &parts, &body).await?;
        if credits.is_some() {
            return Err(ApiError::field(
                "credits",
                "this API meters no credits: a budget needs the credits router",
            ));
        }
        let actor = Self::actor(&caller);
        let (key, child) = self.manager.derive(parent, derivation, &actor).await?;
        Ok(json(StatusCode::CREATED, &CreatedKey::new(&key, &child)))
    }

    /// The parent (which the caller may manage), the child's derivation
    /// and the credit budget asked for, from a derive request.
    pub(crate) async fn plan_derive(
        &self,
        caller: &Caller,
        parts: &Parts,
        body: &[u8],
    ) -> Result<(KeyId, Derivation, Option<u64>), ApiError> {
        may_mint(caller)?;
        let st = self;
        let req: DeriveRequest = parse_body(body)?;
        check_text("name", &req.name, MAX_NAME_CHARS, false)?;
        let s = st.load_within(caller, &path_id(&parts.uri)).await?;
        Self::within_plan(caller, &s)?;
        st.within_budget(caller, &s).await?;
        let bounds = caller.bounds();
        let now = st.now();
        let mut derivation = Derivation::new(req.name);
        if let Some(list) = &req.permissions {
            derivation = derivation.scopes(parse_scopes(list, &st.config, bounds, true)?);
        }
        let expires = req
            .expires_at
            .as_deref()
            .map(|t| parse_time("expires_at", t, now))
            .transpose()?;
        // None given: the earlier of the caller's bound and the parent's
        // expiry (a child never outlives its parent), as create and rotate
        // default to the caller's bound.
        let expires = match (expires, bounds.expires_at, s.expires_at) {
            (None, Some(bound), Some(parent)) => Some(bound.min(parent)),
            (asked, _, _) => asked,
        };
        if let Some(e) = bounded_expiry(expires, bounds, true)? {
            derivation = derivation.expires_at(e);
        }
        if let Some(list) = &req.ip_allowlist {
            derivation = derivation.ip_allowlist(parse_allowlist(list, bounds)?);
        }
        Ok((s.id, derivation, req.credits))
    }

    async fn op_remove(self: Arc<Self>, caller: Caller, parts: Parts, _body: Vec<u8>) -> Outcome {
        let st = self;
        let mut permanent = false;
        for (_, value) in query_pairs(&parts, &["permanent"])? {
            permanent = match value.as_str() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(ApiError::field(
                        "permanent",
                        "`permanent` must be true or false",
                    ));
                }
            };
        }
        let s = st.load_within(&caller, &path_id(&parts.uri)).await?;
        let actor = Self::actor(&caller);
        if permanent {
            st.manager.delete(s.id, &actor).await?;
            let mut r = StatusCode::NO_CONTENT.into_response();
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return Ok(r);
        }
        let after = st
            .manager
            .revoke(s.id, "revoked through the management API", &actor)
            .await?;
        Ok(json(StatusCode::OK, &KeyDetails::new(&after)))
    }
}

/// Create, derive and rotate mint keys: refused to a caller whose plan has
/// no API access ([`Caller::needs_upgrade`]).
fn may_mint(caller: &Caller) -> Result<(), ApiError> {
    match caller.upgrade_required() {
        Some(message) => Err(ApiError::escalation("plan", message.to_owned())),
        None => Ok(()),
    }
}
