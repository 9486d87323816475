//! Mail loops: a message From one of the gateway's own inbox addresses is never a customer's.

use crate::pipeline::route::RouteCache;
use crate::store::{Store, StoreError};

/// True when `from` is an inbox address of any organization on this gateway.
pub async fn is_own_address(
    routes: &RouteCache,
    store: &Store,
    from: &str,
) -> Result<bool, StoreError> {
    let Some(addr) = crate::address::parse_addr_spec(from) else {
        return Ok(false);
    };
    match routes.org_for_domain(store, &addr.domain, false).await? {
        Some(entry) => Ok(entry.is_inbox_address(from)),
        None => Ok(false),
    }
}
