//! Paged listings, the owner version, and the default bulk revocation.

use apikey::Timestamp;
use apikey::{
    Changes, KeyQuery, KeyRecord, KeyStatus, KeyStoreWrite, OsRng, Put, Revocation, StoreErrorKind,
};
use rand_core::Rng;
use std::time::Duration;

use super::{join_all, ok, put_new, revocation, sample_record, unique_owner};

/// A random second in the 1990s (so listings by time window see only this
/// run's records).
fn random_second() -> Timestamp {
    let s = 631_152_000 + i64::from(OsRng.next_u32() % 315_360_000);
    Timestamp::from_unix_secs(s).unwrap_or(Timestamp::MIN)
}

/// Every page of `query`, checked page by page: at most the page size, a
/// short page is the last.
async fn all_pages<S: KeyStoreWrite + ?Sized>(store: &S, query: &KeyQuery) -> Vec<KeyRecord> {
    let mut q = query.clone();
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let page = ok(store.list(&q).await, "list");
        assert!(
            page.records.len() <= q.page_size(),
            "store conformance: a listing returned more than its limit"
        );
        let next = q.next_page(&page);
        out.extend(page.records);
        match next {
            Some(n) => q = n,
            None => return out,
        }
    }
    panic!("store conformance: a listing never ended")
}

async fn insert_all<S: KeyStoreWrite + ?Sized>(store: &S, records: &[KeyRecord]) {
    for chunk in records.chunks(Changes::MAX_ITEMS) {
        let mut c = Changes::new();
        c.puts.extend(chunk.iter().cloned().map(Put::insert));
        ok(store.commit(&c).await, "commit (inserts)");
    }
}

/// Owner and creation-window listings: ordered by `created_at`, then id,
/// paged by a cursor strictly after the last record, at most `limit` a
/// page.
///
/// # Panics
/// When the store breaks the contract.
pub async fn listing_pages_and_cursors<S: KeyStoreWrite + ?Sized>(store: &S) {
    let owner = unique_owner();
    let t = random_second();
    let mut records: Vec<KeyRecord> = (0..7)
        .map(|i| {
            let mut r = sample_record(Some(&owner));
            // Two pairs share a creation time: ties go by id.
            r.created_at = t + Duration::from_millis(100 * (i / 2));
            r
        })
        .collect();
    let mut outside = sample_record(Some(&unique_owner()));
    outside.created_at = t + Duration::from_secs(1);
    let mut shuffled = records.clone();
    shuffled.reverse();
    insert_all(store, &shuffled).await;
    put_new(store, &outside).await;
    records.sort_by_key(|r| (r.created_at, r.id));
    for limit in [1, 3, 7, 1000] {
        let got = all_pages(store, &KeyQuery::owner(&owner).limit(limit)).await;
        assert_eq!(
            got, records,
            "store conformance: the owner listing in pages of {limit} must hold every record once, by created_at then id"
        );
    }
    let first = ok(store.list(&KeyQuery::owner(&owner).limit(3)).await, "list");
    assert_eq!(first.records, records[..3].to_vec());
    let window = t..t + Duration::from_secs(1);
    let by_prefix = KeyQuery::created(records[0].prefix.clone(), window);
    for limit in [2, 1000] {
        assert_eq!(
            all_pages(store, &by_prefix.clone().limit(limit)).await,
            records,
            "store conformance: the creation-window listing must hold exactly the records created in the window (end exclusive), by created_at then id"
        );
    }
    let other = apikey::Prefix::new("sk_live_").unwrap_or_else(|e| panic!("prefix: {e}"));
    assert!(
        all_pages(
            store,
            &KeyQuery::created(other, t..t + Duration::from_secs(1))
        )
        .await
        .is_empty(),
        "store conformance: the creation-window listing must match the prefix"
    );
}

/// The expiry listing: records not revoked whose expiry lies in the
/// window (end exclusive), of one owner or of everyone, by `expires_at`
/// then id.
///
/// # Panics
/// When the store breaks the contract.
pub async fn expiring_listing<S: KeyStoreWrite + ?Sized>(store: &S) {
    let owner = unique_owner();
    // A window of its own, far in the future.
    let t = random_second() + Duration::from_secs((365 * 200) * 86_400);
    let at = |secs: u64, owner: &str| {
        let mut r = sample_record(Some(owner));
        r.expires_at = Some(t + Duration::from_secs(secs));
        r
    };
    let mut want = vec![at(5, &owner), at(1, &owner), at(3, &owner), at(3, &owner)];
    let mut revoked = at(2, &owner);
    revoked.status = KeyStatus::Revoked;
    revoked.revocation = Some(revocation("listing"));
    let after = at(10, &owner);
    let never = sample_record(Some(&owner));
    let theirs = at(4, &unique_owner());
    insert_all(store, &want).await;
    insert_all(store, &[revoked, after, never, theirs.clone()]).await;
    want.sort_by_key(|r| (r.expires_at, r.id));
    let window = t..t + Duration::from_secs(10);
    for limit in [1, 2, 1000] {
        assert_eq!(
            all_pages(
                store,
                &KeyQuery::expiring(Some(&owner), window.clone()).limit(limit)
            )
            .await,
            want,
            "store conformance: the owner's expiry listing (pages of {limit}) must hold the records not revoked expiring in the window, by expires_at then id"
        );
    }
    let mut everyone = want.clone();
    everyone.push(theirs);
    everyone.sort_by_key(|r| (r.expires_at, r.id));
    assert_eq!(
        all_pages(store, &KeyQuery::expiring(None, window).limit(2)).await,
        everyone,
        "store conformance: the expiry listing of everyone must hold every owner's records"
    );
}

/// The owner version is read before the records or in their snapshot:
/// while guarded inserts (each one record, one version) run, no listing
/// shows a version above its number of records.
///
/// # Panics
/// When the store breaks the contract.
pub async fn owner_version_is_read_with_records<S: KeyStoreWrite + ?Sized>(store: &S) {
    let owner = unique_owner();
    let writers = join_all((0..4).map(|_| {
        let owner = owner.clone();
        async move {
            let mut done = 0;
            while done < 5 {
                let v = ok(store.list(&KeyQuery::owner(&owner)).await, "list").owner_version;
                let mut c = Changes::new().guard(owner.clone(), v);
                c.puts.push(Put::insert(sample_record(Some(&owner))));
                match store.commit(&c).await {
                    Ok(()) => done += 1,
                    Err(e) if e.kind() == StoreErrorKind::Conflict => {}
                    Err(e) => panic!("store conformance: guarded insert failed: {e}"),
                }
            }
        }
    }));
    let reader = async {
        for _ in 0..60 {
            let l = ok(store.list(&KeyQuery::owner(&owner)).await, "list");
            assert!(
                l.records.len() as u64 >= l.owner_version,
                "store conformance: a listing showed owner version {} with {} records: the version must be read before the records (or in their snapshot)",
                l.owner_version,
                l.records.len()
            );
        }
    };
    let ((), _) = Join2(Box::pin(reader), Box::pin(writers), None, None).await;
    let l = ok(store.list(&KeyQuery::owner(&owner)).await, "list");
    assert_eq!((l.records.len(), l.owner_version), (20, 20));
}

/// Polls two futures to completion on the current task.
struct Join2<A: std::future::Future, B: std::future::Future>(
    std::pin::Pin<Box<A>>,
    std::pin::Pin<Box<B>>,
    Option<A::Output>,
    Option<B::Output>,
);

impl<A: std::future::Future, B: std::future::Future> Unpin for Join2<A, B> {}

impl<A: std::future::Future, B: std::future::Future> std::future::Future for Join2<A, B> {
    type Output = (A::Output, B::Output);
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.get_mut();
        if this.2.is_none()
            && let std::task::Poll::Ready(v) = this.0.as_mut().poll(cx)
        {
            this.2 = Some(v);
        }
        if this.3.is_none()
            && let std::task::Poll::Ready(v) = this.1.as_mut().poll(cx)
        {
            this.3 = Some(v);
        }
        match (this.2.take(), this.3.take()) {
            (Some(a), Some(b)) => std::task::Poll::Ready((a, b)),
            (a, b) => {
                this.2 = a;
                this.3 = b;
                std::task::Poll::Pending
            }
        }
    }
}

/// [`KeyStoreWrite::revoke_where`] (default or overridden): every matching
/// record not revoked yet is revoked, past one page of
/// [`Changes::MAX_ITEMS`]; ids come back in listing order; records revoked
/// before keep their first revocation; a second call revokes nothing; other
/// owners are untouched.
///
/// # Panics
/// When the store breaks the contract.
pub async fn revoke_where_pages<S: KeyStoreWrite + ?Sized>(store: &S) {
    let owner = unique_owner();
    let t = random_second();
    let first = revocation("revoked before");
    let mut records: Vec<KeyRecord> = (0..(Changes::MAX_ITEMS as u64 + 37))
        .map(|i| {
            let mut r = sample_record(Some(&owner));
            r.created_at = t + Duration::from_micros(i);
            if i % 40 == 0 {
                r.status = KeyStatus::Revoked;
                r.revocation = Some(first.clone());
            }
            r
        })
        .collect();
    records.sort_by_key(|r| (r.created_at, r.id));
    insert_all(store, &records).await;
    let theirs = sample_record(Some(&unique_owner()));
    put_new(store, &theirs).await;
    let now = Revocation {
        at: super::suite_now(),
        reason: "owner removed".into(),
    };
    let ids = ok(
        store.revoke_where(&KeyQuery::owner(&owner), &now).await,
        "revoke_where",
    );
    let want: Vec<_> = records
        .iter()
        .filter(|r| r.status != KeyStatus::Revoked)
        .map(|r| r.id)
        .collect();
    assert_eq!(
        ids, want,
        "store conformance: revoke_where must return the ids it revoked, in listing order"
    );
    for r in all_pages(store, &KeyQuery::owner(&owner)).await {
        let before = records.iter().find(|x| x.id == r.id).map(|x| x.status);
        let expect = if before == Some(KeyStatus::Revoked) {
            &first
        } else {
            &now
        };
        assert_eq!(
            (r.status, r.revocation.as_ref()),
            (KeyStatus::Revoked, Some(expect)),
            "store conformance: revoke_where must revoke every match once and keep a first revocation"
        );
    }
    assert!(
        ok(
            store.revoke_where(&KeyQuery::owner(&owner), &now).await,
            "revoke_where again"
        )
        .is_empty(),
        "store conformance: revoke_where is idempotent: a second call revokes nothing"
    );
    assert_eq!(
        super::must_get(store, theirs.id, "get").await,
        theirs,
        "store conformance: revoke_where touched another owner's key"
    );
    // By prefix and creation window.
    let u = random_second();
    let mut inside = sample_record(Some(&unique_owner()));
    inside.created_at = u;
    let mut outside = sample_record(Some(&unique_owner()));
    outside.created_at = u + Duration::from_secs(1);
    insert_all(store, &[inside.clone(), outside.clone()]).await;
    let ids = ok(
        store
            .revoke_where(
                &KeyQuery::created(inside.prefix.clone(), u..u + Duration::from_secs(1)),
                &now,
            )
            .await,
        "revoke_where (created)",
    );
    assert_eq!(ids, vec![inside.id]);
    assert_eq!(super::must_get(store, outside.id, "get").await, outside);
}
