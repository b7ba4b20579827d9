//! The one integration-test binary. Every test that touches a store runs once per
//! backend (module paths `…::sqlite::…` and `…::postgres::…`): SQLite in a temporary
//! file, Postgres in a fresh database on the server named by `TEST_DATABASE_URL` (the
//! README's test command provisions one). Without that variable the Postgres tests fail
//! loudly instead of being skipped.

mod agents;
mod architecture;
mod artifacts;
mod asking;
mod auth_cache;
mod billing;
mod config_files;
mod documents;
mod documents_api;
mod durability;
mod embed;
mod embed_service;
mod exports;
mod fake_embed;
mod fake_llm;
mod first_party;
mod fixtures;
mod harness;
mod http_api;
mod hybrid;
mod jobs;
mod ledger;
mod llm;
mod mcp;
mod mcp_clients;
mod mcp_conformance;
mod mcp_listen;
mod mcp_runs;
mod memories;
mod memory_tools;
mod metering;
mod openapi;
mod orchestrator;
mod outbound;
mod packaging;
mod passages;
mod pipeline;
mod plugin_asks;
mod plugin_models;
mod plugin_resources;
mod process;
mod recall;
mod reload;
mod replicas;
mod retrieval_quality;
mod runs_api;
mod sandbox;
mod sandbox_memory;
mod sandbox_pool;
mod schedules;
mod search;
mod search_crash;
mod server;
mod storage;
mod storage_runs;
mod tools_api;
