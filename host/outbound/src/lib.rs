//! The one outbound HTTP client: every request the host sends for someone else — a
//! plugin's `wasi:http` request (through `sandbox::net`), and the coming model
//! providers, embedders and webhooks — goes through [`OutboundClient`], each user with
//! its own [`NetPolicy`].
//!
//! Deny by default. Every request, and every redirect hop the client follows for it, is
//! checked the same way: the URL must match an allow-list rule (`scheme://host[:port]`,
//! `*.` wildcards); the host is parsed (IP literals in every form the C resolver accepts)
//! or resolved, and every address is refused if it is loopback, private, link-local
//! (metadata), CGNAT, unique-local or otherwise special ([`maestro_core::net`]) — unless
//! the matching rule explicitly allows private targets (a local model server such as
//! Ollama on 127.0.0.1:11434 needs exactly that). The connection then goes to the
//! address that was checked, never to the name again, so DNS rebinding cannot swap it.
//!
//! Secrets are added here, by the host, to requests whose scheme, host and port match
//! the secret's targets, re-evaluated on every hop: a secret for `https://api.example`
//! never leaves over `http://` nor to another port, and credentials the caller set are
//! dropped when a redirect changes the origin. Requests (over the client's life),
//! request and response size and per-request time are capped. Refusals are recorded in
//! a bounded [`NetLog`] and only the first few are logged, so a caller looping on a
//! denied request cannot grow memory or flood the log.
//!
//! Using it: a plugin call gets `NetPolicy::from_grant` (its grant's entries, secrets and
//! limits) and one client per call. A model provider builds its own allow-list from its
//! configuration — for a local Ollama, `NetRule::parse("http://127.0.0.1:11434", true,
//! "config: llm.ollama")` inside `NetPolicy::allowing(..)` — keeps one client, and calls
//! [`OutboundClient::send`] (whole bodies, response capped),
//! [`OutboundClient::send_streaming`] (a body under the same deadline), or
//! [`OutboundClient::send_stream`] (a model's long stream: connect and head timeouts of
//! its own, no deadline on the body, whose gaps the caller times).
//!
//! hyper and rustls only; no reqwest in production code.

mod body;
mod client;
mod log;
mod policy;

pub use body::{OutboundBody, empty_body, full_body, next_chunk};
pub use client::{MAX_REDIRECTS, OutboundClient, OutboundError, StreamTimeouts};
pub use log::{Denial, LOGGED_DENIALS, MAX_DENIAL_RECORDS, NetLog};
pub use policy::{HostPattern, NetPolicy, NetRule, SecretHeader, SecretTarget, SecretUnavailable};
