//! The customer a message comes from: found or created by (organization, From address).

use super::parse::Mailbox;
use crate::store::tickets::{self, Customer};
use crate::store::{StoreError, Tx};

/// Finds or creates the customer for `from`; the display name fills an empty name.
/// Reply-To is deliberately not used: it is trivial to forge into someone else's identity.
pub async fn resolve(
    tx: &mut Tx,
    org_id: i64,
    from: &Mailbox,
    email_norm: &str,
) -> Result<Customer, StoreError> {
    tickets::find_or_create_customer(tx, org_id, from.email.trim(), email_norm, &from.name).await
}
