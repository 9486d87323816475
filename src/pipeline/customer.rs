//! The customer a message comes from: found or created by (organization, From address).

use super::known::Known;
use super::parse::Mailbox;
use crate::store::tickets::{self, Customer};
use crate::store::{StoreError, Tx, clean_text};

/// Finds or creates the customer for `from`; the display name fills an empty name.
/// Reply-To is deliberately not used: it is trivial to forge into someone else's identity.
pub(super) async fn resolve(
    tx: &mut Tx,
    known: &mut Known,
    org_id: i64,
    from: &Mailbox,
    email_norm: &str,
) -> Result<Customer, StoreError> {
    // A known customer needs no statement unless this mail names one still nameless.
    let cached = known.customer(org_id, email_norm);
    if let Some(c) = cached
        && (!c.name.is_empty() || clean_text(from.name.trim()).is_empty())
    {
        return Ok(c.clone());
    }
    let customer = if cached.is_none() {
        let c =
            tickets::create_customer(tx, org_id, from.email.trim(), email_norm, &from.name).await?;
        // A held-back customer is new for sure: had another writer created it meanwhile,
        // the bulk write fails and the batch runs again.
        known.created_customer(org_id, email_norm.to_string(), c.clone(), tx.holds_back());
        c
    } else {
        let c =
            tickets::find_or_create_customer(tx, org_id, from.email.trim(), email_norm, &from.name)
                .await?;
        known.remember_customer(org_id, email_norm.to_string(), c.clone());
        c
    };
    Ok(customer)
}
