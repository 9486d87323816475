//! DRF-style page-number pagination: `{"count", "next", "previous", "results"}` with
//! `?page=` (1-based) and `?page_size=` (default [`DEFAULT_PAGE_SIZE`], at most
//! [`MAX_PAGE_SIZE`]; larger values are capped, as DRF's `max_page_size` does).
//!
//! `next` and `previous` are absolute URLs on `http.public_url`, built like DRF's: the
//! request's path and query with `page` replaced (parameters sorted by name), `page` removed
//! for the first page, or null. A `page` or `page_size` that is not a positive integer is a
//! 400 naming the parameter; a page past the end is 404 `{"detail": "Invalid page."}` (the
//! first page of an empty list exists).

use std::convert::Infallible;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::error::ApiError;

/// Items per page when the request names no `page_size`.
pub const DEFAULT_PAGE_SIZE: i64 = 25;
/// The largest `page_size` honoured.
pub const MAX_PAGE_SIZE: i64 = 100;

/// A list request's path and decoded query parameters, in the order sent.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    path: String,
    pairs: Vec<(String, String)>,
}

impl<S: Send + Sync> FromRequestParts<S> for ListQuery {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        // The API's routers are merged, never nested: this is the path as requested.
        let uri = &parts.uri;
        Ok(ListQuery {
            path: uri.path().to_string(),
            pairs: uri.query().map(decode_query).unwrap_or_default(),
        })
    }
}

impl ListQuery {
    /// A query for `path` with these parameters (tests and callers outside a request).
    pub fn new(path: &str, query: &str) -> Self {
        ListQuery {
            path: path.to_string(),
            pairs: decode_query(query),
        }
    }

    /// The last value of `key`, as Django's `QueryDict.get`; an empty value counts as absent.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// `key` as a boolean filter (`true`/`false`, also `1`/`0`, any case); 400 otherwise.
    pub fn bool_param(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(_) => Err(ApiError::field(key, "Must be true or false.")),
        }
    }

    /// `key` as an object id (a positive integer); 400 otherwise.
    pub fn id_param(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.parse::<i64>() {
                Ok(id) if id > 0 => Ok(Some(id)),
                _ => Err(ApiError::field(key, "Enter a whole number (an id).")),
            },
        }
    }

    /// The requested page and page size; 400 naming the parameter when either is malformed.
    pub fn page_request(&self) -> Result<PageRequest, ApiError> {
        let size = match self.get("page_size") {
            None => DEFAULT_PAGE_SIZE,
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n >= 1 => n.min(MAX_PAGE_SIZE),
                // Digits too many for an integer: a (capped) big number all the same.
                Err(_) if v.bytes().all(|b| b.is_ascii_digit()) => MAX_PAGE_SIZE,
                _ => {
                    return Err(ApiError::field(
                        "page_size",
                        "A positive whole number is required.",
                    ));
                }
            },
        };
        let number = match self.get("page") {
            None => PageNumber::Number(1),
            Some("last") => PageNumber::Last,
            Some(v) => match v.parse::<i64>() {
                Ok(n) if n >= 1 => PageNumber::Number(n),
                Err(_) if v.bytes().all(|b| b.is_ascii_digit()) => PageNumber::Number(i64::MAX),
                _ => {
                    return Err(ApiError::field(
                        "page",
                        "A positive whole number (or \"last\") is required.",
                    ));
                }
            },
        };
        Ok(PageRequest { number, size })
    }

    /// The absolute URL of this list with `page` set (`None`: removed).
    fn url_with_page(&self, public_url: &str, page: Option<i64>) -> String {
        let mut pairs: Vec<(&str, String)> = self
            .pairs
            .iter()
            .filter(|(k, _)| k != "page")
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        if let Some(page) = page {
            pairs.push(("page", page.to_string()));
        }
        // Stable: repeated keys keep their order, as Python's sorted() over parse_qs does.
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        let query = pairs
            .iter()
            .map(|(k, v)| format!("{}={}", encode_component(k), encode_component(v)))
            .collect::<Vec<_>>()
            .join("&");
        let base = public_url.trim_end_matches('/');
        if query.is_empty() {
            format!("{base}{}", self.path)
        } else {
            format!("{base}{}?{query}", self.path)
        }
    }
}

/// Which page a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageNumber {
    Number(i64),
    /// `?page=last`, as DRF accepts.
    Last,
}

/// A page number and size, not yet checked against the list's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub number: PageNumber,
    pub size: i64,
}

/// A page that exists: which rows to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub page: i64,
    pub pages: i64,
    pub count: i64,
    pub limit: i64,
    pub offset: i64,
}

impl PageRequest {
    /// The rows of the requested page of a list of `count`; 404 "Invalid page." past the end.
    pub fn window(&self, count: i64) -> Result<Window, ApiError> {
        let count = count.max(0);
        // An empty list still has its first page.
        let pages = ((count + self.size - 1) / self.size).max(1);
        let page = match self.number {
            PageNumber::Last => pages,
            PageNumber::Number(n) if n <= pages => n,
            PageNumber::Number(_) => return Err(ApiError::InvalidPage),
        };
        Ok(Window {
            page,
            pages,
            count,
            limit: self.size,
            offset: (page - 1) * self.size,
        })
    }
}

/// `count`, `next` and `previous` of a page; the results go beside them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageMeta {
    pub count: i64,
    pub next: Option<String>,
    pub previous: Option<String>,
}

impl PageMeta {
    /// The links of page `w` of the list `q` asked for.
    pub fn new(q: &ListQuery, public_url: &str, w: &Window) -> Self {
        PageMeta {
            count: w.count,
            next: (w.page < w.pages).then(|| q.url_with_page(public_url, Some(w.page + 1))),
            previous: (w.page > 1).then(|| {
                let prev = w.page - 1;
                q.url_with_page(public_url, (prev > 1).then_some(prev))
            }),
        }
    }
}

/// Defines a concrete page type `$name` holding `$item`s, with its OpenAPI schema.
macro_rules! page_type {
    ($name:ident, $item:ty, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
        pub struct $name {
            /// How many items the whole list has.
            pub count: i64,
            /// The next page's absolute URL, or null on the last page.
            pub next: Option<String>,
            /// The previous page's absolute URL, or null on the first page.
            pub previous: Option<String>,
            pub results: Vec<$item>,
        }

        impl $name {
            /// The page with `meta`'s count and links.
            pub fn new(meta: $crate::api::pagination::PageMeta, results: Vec<$item>) -> Self {
                Self {
                    count: meta.count,
                    next: meta.next,
                    previous: meta.previous,
                    results,
                }
            }
        }
    };
}
pub(crate) use page_type;

/// Splits an `application/x-www-form-urlencoded` query into decoded pairs.
fn decode_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode_component(k), decode_component(v))
        })
        .collect()
}

fn decode_component(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(byte) => {
                        out.push(byte);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Python's `quote_plus`: unreserved characters as they are, space as `+`, the rest `%XX`.
fn encode_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(path: &str, query: &str, count: i64) -> Result<PageMeta, ApiError> {
        let q = ListQuery::new(path, query);
        let w = q.page_request()?.window(count)?;
        Ok(PageMeta::new(&q, "http://gw.test/", &w))
    }

    #[test]
    fn first_middle_last_pages_link_like_drf() {
        let m = meta("/t/", "", 60).unwrap();
        assert_eq!(m.count, 60);
        assert_eq!(m.next.as_deref(), Some("http://gw.test/t/?page=2"));
        assert_eq!(m.previous, None);

        let m = meta("/t/", "status=active&page=2&page_size=20", 60).unwrap();
        assert_eq!(
            m.next.as_deref(),
            Some("http://gw.test/t/?page=3&page_size=20&status=active")
        );
        assert_eq!(
            m.previous.as_deref(),
            Some("http://gw.test/t/?page_size=20&status=active")
        );

        let m = meta("/t/", "page=3&page_size=20", 60).unwrap();
        assert_eq!(m.next, None);
        assert_eq!(
            m.previous.as_deref(),
            Some("http://gw.test/t/?page=2&page_size=20")
        );
    }

    #[test]
    fn bad_and_past_the_end_pages() {
        assert!(matches!(
            meta("/t/", "page=0", 10),
            Err(ApiError::BadRequest { field, .. }) if field == "page"
        ));
        assert!(matches!(
            meta("/t/", "page=abc", 10),
            Err(ApiError::BadRequest { field, .. }) if field == "page"
        ));
        assert!(matches!(
            meta("/t/", "page_size=-1", 10),
            Err(ApiError::BadRequest { field, .. }) if field == "page_size"
        ));
        assert!(matches!(
            meta("/t/", "page=2", 10),
            Err(ApiError::InvalidPage)
        ));
        assert!(matches!(
            meta("/t/", "page=99999999999999999999999", 10),
            Err(ApiError::InvalidPage)
        ));
        // The first page of nothing exists.
        assert_eq!(meta("/t/", "page=1", 0).unwrap().count, 0);
        // `last` and an empty value work as DRF's do.
        assert_eq!(
            meta("/t/", "page=last&page_size=10", 25)
                .unwrap()
                .previous
                .as_deref(),
            Some("http://gw.test/t/?page=2&page_size=10")
        );
        assert!(meta("/t/", "page=", 25).unwrap().previous.is_none());
    }

    #[test]
    fn page_size_is_capped() {
        let q = ListQuery::new("/t/", "page_size=1000");
        assert_eq!(q.page_request().unwrap().size, MAX_PAGE_SIZE);
        let q = ListQuery::new("/t/", "");
        assert_eq!(q.page_request().unwrap().size, DEFAULT_PAGE_SIZE);
    }

    #[test]
    fn query_round_trips_through_encoding() {
        let q = ListQuery::new("/c/", "email=a%2Bb%40x.test&page=1&x=%E2%82%AC+y&bad=%zz");
        assert_eq!(q.get("email"), Some("a+b@x.test"));
        assert_eq!(q.get("x"), Some("€ y"));
        assert_eq!(q.get("bad"), Some("%zz"));
        assert_eq!(
            q.url_with_page("http://h", Some(2)),
            "http://h/c/?bad=%25zz&email=a%2Bb%40x.test&page=2&x=%E2%82%AC+y"
        );
    }
}
