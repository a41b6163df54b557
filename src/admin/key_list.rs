//! `GET /admin/keys`: one page of keys, filtered, searched and sorted on the server, so that the
//! console stays fast with 100,000 keys. What does not change while a policy serves (the
//! lower-cased text a search looks in) is computed once per policy snapshot; the figures that do
//! (last use, today's requests and spend) are read from the activity figures for the page's
//! keys only, or for every matching key when the page is sorted by one of them.

use super::keys::{key_view, status_of};
use super::{error, AdminApi, Reply};
use crate::accounting::activity::KeyFigures;
use crate::policy::{Key, Policy};
use chrono::{DateTime, Utc};
use http::StatusCode;
use serde_json::json;
use std::cmp::Ordering;
use std::sync::{Arc, Mutex, Weak};

/// Keys per page unless asked otherwise, and at most.
const PER_PAGE: usize = 50;
const MAX_PER_PAGE: usize = 1000;

/// What a search looks in, per key of one policy snapshot, in the policy's id order.
pub struct SearchIndex {
    policy: Weak<Policy>,
    /// Id, owner, description and workload, lower-cased, separated by NUL.
    haystacks: Vec<Box<str>>,
}

/// The index of the snapshot last listed.
#[derive(Default)]
pub struct SearchCache(Mutex<Option<Arc<SearchIndex>>>);

impl SearchCache {
    fn index(&self, policy: &Arc<Policy>) -> Arc<SearchIndex> {
        let mut cached = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(index) = cached
            .as_ref()
            .filter(|i| i.policy.as_ptr() == Arc::as_ptr(policy))
        {
            return index.clone();
        }
        let haystacks = policy
            .keys_by_id
            .values()
            .map(|k| {
                let text = [
                    &*k.id,
                    k.owner.as_deref().unwrap_or(""),
                    k.description.as_deref().unwrap_or(""),
                    &k.workload.name,
                ]
                .join("\0");
                text.to_lowercase().into_boxed_str()
            })
            .collect();
        let index = Arc::new(SearchIndex {
            policy: Arc::downgrade(policy),
            haystacks,
        });
        *cached = Some(index.clone());
        index
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SortBy {
    Id,
    Workload,
    Owner,
    CreatedAt,
    UpdatedAt,
    LastUsedAt,
    ExpiresAt,
    RequestsToday,
    SpendToday,
}

impl SortBy {
    fn parse(text: &str) -> Option<SortBy> {
        Some(match text {
            "id" => SortBy::Id,
            "workload" => SortBy::Workload,
            "owner" => SortBy::Owner,
            "created_at" => SortBy::CreatedAt,
            "updated_at" => SortBy::UpdatedAt,
            "last_used_at" => SortBy::LastUsedAt,
            "expires_at" => SortBy::ExpiresAt,
            "requests_today" => SortBy::RequestsToday,
            "spend_today" => SortBy::SpendToday,
            _ => return None,
        })
    }
}

struct Query {
    workload: Option<String>,
    owner: Option<String>,
    status: Option<&'static str>,
    q: Option<String>,
    sort: SortBy,
    descending: bool,
    page: usize,
    per_page: usize,
}

fn parse_query(query: &str) -> Result<Query, Reply> {
    let mut out = Query {
        workload: None,
        owner: None,
        status: None,
        q: None,
        sort: SortBy::Id,
        descending: false,
        page: 1,
        per_page: PER_PAGE,
    };
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        let bad = |what: &str| {
            error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "invalid_request",
                format!("`{k}` must be {what}, not `{v}`"),
            )
        };
        let number = |max: usize| {
            v.parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| bad(&format!("a whole number from 1 to {max}")))
        };
        match &*k {
            "workload" => out.workload = Some(v.into_owned()),
            "owner" => out.owner = Some(v.into_owned()),
            "status" => {
                out.status = Some(match &*v {
                    "active" => "active",
                    "paused" => "paused",
                    "expired" => "expired",
                    _ => return Err(bad("active, paused or expired")),
                })
            }
            "q" => out.q = Some(v.to_lowercase()).filter(|q| !q.is_empty()),
            "sort" => {
                out.sort = SortBy::parse(&v).ok_or_else(|| {
                    bad("id, workload, owner, created_at, updated_at, last_used_at, expires_at, requests_today or spend_today")
                })?
            }
            "order" => {
                out.descending = match &*v {
                    "asc" => false,
                    "desc" => true,
                    _ => return Err(bad("asc or desc")),
                }
            }
            "page" => out.page = number(usize::MAX)?,
            "per_page" => out.per_page = number(MAX_PER_PAGE)?,
            _ => {
                return Err(bad(
                    "one of workload, owner, status, q, sort, order, page, per_page (unknown parameter)",
                ))
            }
        }
    }
    Ok(out)
}

/// Orders two optional values so that a missing one comes last whatever the direction.
fn last_if_none<T: Ord>(a: Option<T>, b: Option<T>, descending: bool) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) if descending => b.cmp(&a),
        (Some(a), Some(b)) => a.cmp(&b),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => Ordering::Equal,
    }
}

impl AdminApi {
    /// `matching` (in id order) sorted by a live figure. Only keys with activity have one; the
    /// others (zero requests and spend, never used) keep their id order, after the keys with a
    /// figure, or before them for an ascending sort by a count, where their zero is the least.
    fn sort_by_figures<'k>(
        &self,
        matching: Vec<&'k Arc<Key>>,
        sort: SortBy,
        descending: bool,
        now_ms: u64,
    ) -> Vec<&'k Arc<Key>> {
        let value = |f: &KeyFigures| -> Option<u64> {
            let v = match sort {
                SortBy::LastUsedAt => f.last_used_ms,
                SortBy::RequestsToday => f.periods.today.requests,
                _ => f.periods.today.cost.0,
            };
            (v > 0).then_some(v)
        };
        let valued = self.activity.valued(now_ms, value);
        // Both lists are in id order: one walk splits the matching keys without a lookup each.
        let (mut with, mut without) = (Vec::new(), Vec::with_capacity(matching.len()));
        let mut next = valued.iter().peekable();
        for key in matching {
            while next.next_if(|(id, _)| **id < *key.id).is_some() {}
            match next.next_if(|(id, _)| **id == *key.id) {
                Some((_, f)) => with.push((key, value(f).unwrap_or(0))),
                None => without.push(key),
            }
        }
        with.sort_by(|a, b| {
            if descending {
                b.1.cmp(&a.1)
            } else {
                a.1.cmp(&b.1)
            }
        });
        let with = with.into_iter().map(|(k, _)| k);
        if !descending && sort != SortBy::LastUsedAt {
            without.extend(with);
            without
        } else {
            with.chain(without).collect()
        }
    }

    pub(super) fn list_keys(&self, query: &str) -> Reply {
        let query = match parse_query(query) {
            Ok(q) => q,
            Err(reply) => return reply,
        };
        let policy = self.reloader.store().load_full();
        let now = Utc::now();
        let now_ms = crate::limits::now_ms();
        let index = query.q.as_ref().map(|_| self.search.index(&policy));
        let mut matching: Vec<&Arc<Key>> = policy
            .keys_by_id
            .values()
            .enumerate()
            .filter(|(i, k)| {
                query
                    .workload
                    .as_deref()
                    .is_none_or(|w| k.workload.name == w)
                    && query
                        .owner
                        .as_deref()
                        .is_none_or(|o| k.owner.as_deref() == Some(o))
                    && query.status.is_none_or(|s| status_of(k, now) == s)
                    && match (&query.q, &index) {
                        (Some(q), Some(index)) => index.haystacks[*i].contains(q.as_str()),
                        _ => true,
                    }
            })
            .map(|(_, k)| k)
            .collect();
        let descending = query.descending;
        // Stable sorts over the id order the policy keeps: ties stay in id order.
        match query.sort {
            SortBy::Id => {
                if descending {
                    matching.reverse();
                }
            }
            SortBy::LastUsedAt | SortBy::RequestsToday | SortBy::SpendToday => {
                matching = self.sort_by_figures(matching, query.sort, descending, now_ms);
            }
            sort => {
                let text = |k: &Key| -> Option<Box<str>> {
                    match sort {
                        SortBy::Workload => Some(k.workload.name.as_str().into()),
                        _ => k.owner.clone(),
                    }
                };
                let time = |k: &Key| -> Option<DateTime<Utc>> {
                    match sort {
                        SortBy::CreatedAt => k.created_at,
                        SortBy::UpdatedAt => k.updated_at,
                        _ => k.expires_at,
                    }
                };
                match sort {
                    SortBy::Workload | SortBy::Owner => {
                        matching.sort_by(|a, b| last_if_none(text(a), text(b), descending))
                    }
                    _ => matching.sort_by(|a, b| last_if_none(time(a), time(b), descending)),
                }
            }
        }
        let total = matching.len();
        let start = query.page.saturating_sub(1).saturating_mul(query.per_page);
        let page: Vec<&Arc<Key>> = matching
            .into_iter()
            .skip(start)
            .take(query.per_page)
            .collect();
        let figures = self.activity.figures(page.iter().map(|k| &*k.id), now_ms);
        let data: Vec<_> = page
            .iter()
            .zip(&figures)
            .map(|(k, f)| key_view(&policy, k, f, now))
            .collect();
        (
            StatusCode::OK,
            json!({
                "object": "list",
                "total": total,
                "page": query.page,
                "per_page": query.per_page,
                "data": data,
            }),
        )
    }
}
