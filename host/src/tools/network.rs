//! A grant's network rules and secrets as the outbound client's policy ([`NetPolicy`]).

use maestro_core::policy::Grant;

use super::{CallError, Tools};
use crate::outbound::NetPolicy;

impl Tools {
    /// The network policy of a call under `grant`, with the grant's secrets read by the
    /// host and bound to their scheme, host and port.
    pub(super) fn network(&self, grant: &Grant) -> Result<NetPolicy, CallError> {
        NetPolicy::from_grant(grant, |source| self.secrets.get(source))
            .map_err(|unavailable| CallError::SecretMissing(unavailable.secret))
    }
}
