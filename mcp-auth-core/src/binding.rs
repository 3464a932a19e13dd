//! The SEP-2352 policy, in one pure function.
//!
//! Client credentials are unique to the authorization server that issued them. When the
//! protected resource metadata of an MCP server names a different authorization server than the
//! one the server is bound to, what happens depends only on how the client got its identity at
//! the old one:
//!
//! | stored credentials | AS issuer changed → |
//! |---|---|
//! | pre-registered | [`BindingAction::Refuse`]: error, nothing is sent to the new AS |
//! | dynamic (DCR) | [`BindingAction::SwitchAndRegister`]: drop the old AS's tokens for this resource; use (or create by registering) the client at the new AS |
//! | metadata document (CIMD) | [`BindingAction::SwitchKeepClientId`]: drop tokens; the same `client_id` URL is presented to the new AS, no registration |
//!
//! The grants that need no interactive login record their credentials as pre-registered at the
//! AS that issued the tokens, so they follow the first row; with a declared issuer the move is
//! refused before even the new AS's metadata is fetched:
//!
//! | grant | recorded as | AS issuer changed → | why |
//! |---|---|---|---|
//! | client credentials (SEP-1046) | pre-registered | `Refuse` | the client_id and secret (or key) were issued by that AS |
//! | identity assertion (SEP-990: token exchange for an ID-JAG, then JWT bearer) | pre-registered | `Refuse` | the client_secret_basic credentials of the second leg belong to that AS; SEP-990 names no way to follow a move |
//! | JWT bearer (workload identity federation) | pre-registered (the `client_id` if any, else empty) | `Refuse` | the workload JWT's audience is that AS: presenting it elsewhere would hand a bearer credential to a server it was not meant for |
//!
//! Returning to a previous AS finds its registration intact, because every registration is
//! keyed by its own issuer.

use crate::ids::IssuerId;
use crate::model::RegistrationKind;

/// What to do about an MCP server whose discovered authorization server is `discovered`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindingAction {
    /// Not bound yet: use the discovered AS (the binding is recorded after tokens are obtained).
    Bind,
    /// Still the same AS: carry on with its state.
    Unchanged,
    /// Pre-registered credentials belong to `from`: report `AuthorizationServerChanged`, never
    /// present them to `to`.
    Refuse {
        /// The AS the credentials were registered with.
        from: IssuerId,
        /// The AS the MCP server now names.
        to: IssuerId,
    },
    /// Dynamic registration: drop `from`'s tokens for the resource, then use the client
    /// registered at the new AS (registering if there is none).
    SwitchAndRegister {
        /// The previous AS, whose tokens for this resource are dropped.
        from: IssuerId,
    },
    /// Client ID Metadata Document: drop `from`'s tokens for the resource and present the same
    /// portable `client_id` to the new AS.
    SwitchKeepClientId {
        /// The previous AS, whose tokens for this resource are dropped.
        from: IssuerId,
    },
}

/// The SEP-2352 decision. `bound` is the issuer the resource is bound to with the kind of the
/// registration used there; `discovered` is the issuer its metadata names now. Issuers are
/// compared as exact strings.
pub fn decide(
    bound: Option<(&IssuerId, RegistrationKind)>,
    discovered: &IssuerId,
) -> BindingAction {
    match bound {
        None => BindingAction::Bind,
        Some((from, _)) if from == discovered => BindingAction::Unchanged,
        Some((from, RegistrationKind::PreRegistered)) => BindingAction::Refuse {
            from: from.clone(),
            to: discovered.clone(),
        },
        Some((from, RegistrationKind::Dynamic)) => {
            BindingAction::SwitchAndRegister { from: from.clone() }
        }
        Some((from, RegistrationKind::MetadataDocument)) => {
            BindingAction::SwitchKeepClientId { from: from.clone() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sep_2352_table() {
        let a = IssuerId::new("https://as1.example").unwrap();
        let a_slash = IssuerId::new("https://as1.example/").unwrap();
        let b = IssuerId::new("https://as2.example").unwrap();
        use RegistrationKind::*;
        type Row<'a> = (
            Option<(&'a IssuerId, RegistrationKind)>,
            &'a IssuerId,
            BindingAction,
        );
        let table: Vec<Row<'_>> = vec![
            (None, &a, BindingAction::Bind),
            (Some((&a, PreRegistered)), &a, BindingAction::Unchanged),
            (Some((&a, Dynamic)), &a, BindingAction::Unchanged),
            (Some((&a, MetadataDocument)), &a, BindingAction::Unchanged),
            (
                Some((&a, PreRegistered)),
                &b,
                BindingAction::Refuse {
                    from: a.clone(),
                    to: b.clone(),
                },
            ),
            (
                Some((&a, Dynamic)),
                &b,
                BindingAction::SwitchAndRegister { from: a.clone() },
            ),
            (
                Some((&a, MetadataDocument)),
                &b,
                BindingAction::SwitchKeepClientId { from: a.clone() },
            ),
            // No normalisation: a trailing slash is another authorization server.
            (
                Some((&a, PreRegistered)),
                &a_slash,
                BindingAction::Refuse {
                    from: a.clone(),
                    to: a_slash.clone(),
                },
            ),
            (
                Some((&a, Dynamic)),
                &a_slash,
                BindingAction::SwitchAndRegister { from: a.clone() },
            ),
        ];
        for (bound, discovered, want) in table {
            assert_eq!(
                decide(bound, discovered),
                want,
                "bound={bound:?} discovered={discovered}"
            );
        }
    }
}
